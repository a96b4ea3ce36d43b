/* kiln firmware startup, the part every board shares (startup_cortex_m.c, startup_riscv_c.c): C's memory
 * set-up, then main. Internal to the firmware: not a public header. */
#ifndef KILN_PORT_STARTUP_H_
#define KILN_PORT_STARTUP_H_

#include "port.h"

/* Copies .data's initial values from flash to RAM, zeroes .bss, runs main and halts. A board's reset code
 * calls it once the stack (and what else C needs there: FPU, vector table, trap vector) is set up. The
 * pointers are volatile so that the compiler keeps the loops instead of calling memcpy/memset. */
static inline KILN_NORETURN void kiln_port_start(void) {
  volatile uint32_t* dst = __kiln_data_start;
  const volatile uint32_t* src = __kiln_data_load;
  while (dst < __kiln_data_end) {
    *dst++ = *src++;
  }
  for (volatile uint32_t* p = __kiln_bss_start; p < __kiln_bss_end; ++p) {
    *p = 0;
  }
  (void)main();
  kiln_port_halt();
}

#endif /* KILN_PORT_STARTUP_H_ */
