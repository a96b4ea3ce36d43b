/* kiln firmware: ticks from the RISC-V mcycle counter (64 bits as mcycleh:mcycle on RV32) at KILN_TIMER_HZ.
 * It counts instructions' time directly, so no sync is needed. */
#include "port.h"

void kiln_port_timer_init(void) {}

void kiln_port_timer_sync(void) {}

kiln_status_t kiln_platform_ticks(uint64_t* out_ticks) {
  if (out_ticks == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  uint32_t hi = 0;
  uint32_t lo = 0;
  uint32_t again = 0;
  do {
    __asm__ volatile("csrr %0, mcycleh\n csrr %1, mcycle\n csrr %2, mcycleh"
                     : "=r"(hi), "=r"(lo), "=r"(again));
  } while (hi != again);
  *out_ticks = (uint64_t)hi << 32 | lo;
  return KILN_OK;
}

kiln_status_t kiln_platform_ticks_per_second(uint64_t* out_ticks_per_second) {
  if (out_ticks_per_second == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  *out_ticks_per_second = KILN_TIMER_HZ;
  return KILN_OK;
}
