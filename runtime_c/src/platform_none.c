/* kiln runtime: weak default platform hooks for bare metal (no OS, no clock). A board port overrides them,
 * at least kiln_platform_ticks/_ticks_per_second (e.g. from a cycle counter) to enable TIME and PROFILE. */
#include <stddef.h>

#include "kiln/platform.h"

#define KILN_WEAK __attribute__((weak))

KILN_WEAK kiln_status_t kiln_platform_init(void) {
  return KILN_OK;
}

KILN_WEAK kiln_status_t kiln_platform_log(const char* message) {
  return message == NULL ? KILN_ERR_ARG_NULL : KILN_OK;
}

KILN_WEAK kiln_status_t kiln_platform_ticks(uint64_t* out_ticks) {
  return out_ticks == NULL ? KILN_ERR_ARG_NULL : KILN_ERR_PLATFORM_UNSUPPORTED;
}

KILN_WEAK kiln_status_t kiln_platform_ticks_per_second(uint64_t* out_ticks_per_second) {
  return out_ticks_per_second == NULL ? KILN_ERR_ARG_NULL : KILN_ERR_PLATFORM_UNSUPPORTED;
}

KILN_WEAK KILN_NORETURN void kiln_platform_abort(kiln_status_t status) {
  (void)status;
  for (;;) {
  }
}
