/* kiln runtime: platform port hooks.
 *
 * A port to a new board implements some of these functions; every one has a weak default, so a port
 * overrides only what it needs by defining a function with the same signature. Linux builds get defaults
 * based on POSIX (src/platform_posix.c); bare-metal builds get defaults with no OS underneath
 * (src/platform_none.c): no log output, no clock, and an abort that spins forever.
 *
 * The runtime core calls only kiln_platform_ticks and kiln_platform_ticks_per_second (profiler, TIME).
 * init, log and abort are called by the platform glue (the Linux runner, a firmware main).
 */
#ifndef KILN_PLATFORM_H_
#define KILN_PLATFORM_H_

#include <stdint.h>

#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#define KILN_NORETURN [[noreturn]]
#else
#define KILN_NORETURN _Noreturn
#endif

/* Called once at startup before any other runtime function (clocks, UART, ...). Default: KILN_OK. */
kiln_status_t kiln_platform_init(void);

/* Writes one line of diagnostic text (no trailing newline needed). Must not use the byte stream that
 * carries the device protocol. Default: stderr on Linux, discarded on bare metal. */
kiln_status_t kiln_platform_log(const char* message);

/* Writes a monotonic tick count to *out_ticks. Default: CLOCK_MONOTONIC in nanoseconds on Linux;
 * KILN_ERR_PLATFORM_UNSUPPORTED on bare metal (profiling and TIME then reply with that error). */
kiln_status_t kiln_platform_ticks(uint64_t* out_ticks);

/* Writes the tick rate of kiln_platform_ticks (ticks per second, > 0) to *out_ticks_per_second. */
kiln_status_t kiln_platform_ticks_per_second(uint64_t* out_ticks_per_second);

/* Stops the program after an unrecoverable failure of the glue code; never returns. The runtime core never
 * calls it. Default: _Exit with status 70 on Linux (after logging), an endless loop on bare metal. */
KILN_NORETURN void kiln_platform_abort(kiln_status_t status);

#ifdef __cplusplus
}
#endif

#endif /* KILN_PLATFORM_H_ */
