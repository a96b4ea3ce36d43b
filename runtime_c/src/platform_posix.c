/* kiln runtime: weak default platform hooks for Linux (POSIX). A port overrides any of them by defining a
 * strong symbol with the same name. */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kiln/platform.h"

#define KILN_WEAK __attribute__((weak))

KILN_WEAK kiln_status_t kiln_platform_init(void) {
  return KILN_OK;
}

KILN_WEAK kiln_status_t kiln_platform_log(const char* message) {
  if (message == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  size_t len = strlen(message);
  if (write(STDERR_FILENO, message, len) != (ssize_t)len || write(STDERR_FILENO, "\n", 1) != 1) {
    return KILN_ERR_PLATFORM_FAILED;
  }
  return KILN_OK;
}

KILN_WEAK kiln_status_t kiln_platform_ticks(uint64_t* out_ticks) {
  if (out_ticks == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
    return KILN_ERR_PLATFORM_FAILED;
  }
  *out_ticks = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  return KILN_OK;
}

KILN_WEAK kiln_status_t kiln_platform_ticks_per_second(uint64_t* out_ticks_per_second) {
  if (out_ticks_per_second == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  *out_ticks_per_second = 1000000000u;
  return KILN_OK;
}

KILN_WEAK KILN_NORETURN void kiln_platform_abort(kiln_status_t status) {
  const char* name = "unknown status";
  (void)kiln_status_describe(status, &name);
  (void)kiln_platform_log("kiln: aborting after an unrecoverable error");
  (void)kiln_platform_log(name);
  _Exit(70);
}
