/* kiln runtime: compile-time limits.
 *
 * Every limit the runtime enforces is defined here, once. Override any #ifndef-guarded value with -D on the
 * compiler command line when porting to a device with less memory; the others are protocol constants that
 * host and device must agree on.
 */
#ifndef KILN_CONFIG_H_
#define KILN_CONFIG_H_

/* Alignment in bytes of the workspace and of every input and output buffer (cache line, widest vector). */
#define KILN_ALIGNMENT 64u

/* Largest frame payload, in bytes, that the device protocol allows in either direction. A device may serve
 * with a smaller frame buffer (>= KILN_ENDPOINT_MIN_PAYLOAD) and reports its size in the INFO reply; the host
 * splits tensors into chunks that fit. The Linux runner uses exactly this size. */
#ifndef KILN_ENDPOINT_MAX_PAYLOAD
#define KILN_ENDPOINT_MAX_PAYLOAD (1u << 20)
#endif

/* Smallest frame buffer an endpoint accepts: every fixed-size request and reply fits in it. */
#define KILN_ENDPOINT_MIN_PAYLOAD 256u

/* Number of kernel-call records the runner's profiler buffer holds (24 bytes each, kiln_profile_record_t).
 * Calls beyond it are counted as dropped, never written. */
#ifndef KILN_PROFILE_MAX_RECORDS
#define KILN_PROFILE_MAX_RECORDS 16384u
#endif

/* Upper bounds of the TIME request: runs per repeat (the endpoint never grows `number` past it) and the
 * minimum repeat duration a host may ask for (one hour). */
#define KILN_TIME_MAX_NUMBER        (1u << 30)
#define KILN_TIME_MAX_MIN_REPEAT_MS 3600000u

/* Most run-time dimensions (dynamic shapes) a model may have: named sizes plus the sizes computed from them. */
#define KILN_MAX_DIMS 16u

/* 1: the endpoint serves models with run-time dimensions (the DIMS message). Firmware images of fixed-shape
 * models set 0 to save flash; DIMS is then an unknown message and every run is at the bounds. */
#ifndef KILN_DYNAMIC_DIMS
#define KILN_DYNAMIC_DIMS 1
#endif

#endif /* KILN_CONFIG_H_ */
