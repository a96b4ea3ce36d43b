/* kiln runtime: per-kernel profiler.
 *
 * Generated code brackets every kernel call with kiln_profile_begin/end when it is given a non-NULL profiler
 * (runtime-abi.md). The profiler stores one record per call, in call order, into a buffer the caller
 * provides; it never allocates. Calls beyond the buffer's capacity are counted in `dropped`, not stored.
 * Kernel calls do not nest: each begin is followed by the end of the same kernel. Timestamps come from
 * kiln_platform_ticks (platform.h); convert with kiln_platform_ticks_per_second.
 */
#ifndef KILN_PROFILER_H_
#define KILN_PROFILER_H_

#include <stdint.h>

#include "kiln/config.h"
#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_profile_record {
  uint32_t kernel; /* index into kiln_model_t.kernel_names */
  uint32_t flags;  /* KILN_PROFILE_OPEN while the call has not ended */
  uint64_t start;  /* ticks at kiln_profile_begin */
  uint64_t end;    /* ticks at kiln_profile_end */
} kiln_profile_record_t;

#define KILN_PROFILE_OPEN 1u

typedef struct kiln_profiler {
  kiln_profile_record_t* records; /* caller-provided, `capacity` entries */
  uint32_t capacity;
  uint32_t count;   /* records written */
  uint32_t dropped; /* calls not recorded because the buffer was full */
} kiln_profiler_t;

/* Initializes *out_profiler to record into records[0..capacity). A buffer of KILN_PROFILE_MAX_RECORDS
 * entries is the documented default size. Returns KILN_OK, KILN_ERR_ARG_NULL, or KILN_ERR_ARG_SIZE if
 * capacity is 0. */
kiln_status_t kiln_profiler_init(kiln_profile_record_t* records, uint32_t capacity,
                                 kiln_profiler_t* out_profiler);

/* Forgets all records (count = dropped = 0). Returns KILN_OK or KILN_ERR_ARG_NULL. */
kiln_status_t kiln_profiler_reset(kiln_profiler_t* profiler);

/* Hooks called by generated code (fixed by runtime-abi.md, hence void). `prof` is a kiln_profiler_t*;
 * `kernel` is the kernel index. They cost one tick read and a few stores. */
void kiln_profile_begin(void* prof, uint32_t kernel);
void kiln_profile_end(void* prof, uint32_t kernel);

#ifdef __cplusplus
}
#endif

#endif /* KILN_PROFILER_H_ */
