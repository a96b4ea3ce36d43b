/* kiln firmware: the interface between firmware_main.c and a board's port (startup, UART, timer).
 *
 * A board's firmware is built from the runtime core, firmware_main.c, one startup file (startup_*.c/.S), one
 * UART driver (uart_*.c) and one timer (timer_*.c), chosen by the board file; the port files read the board's
 * addresses from -D flags (KILN_UART_BASE, KILN_UART_RX_IRQ, KILN_TIMER_HZ, KILN_RAM_BASE, KILN_RAM_END). No
 * port function allocates or calls the C library. Internal to the firmware: not a public header. */
#ifndef KILN_PORT_H_
#define KILN_PORT_H_

#include <stddef.h>
#include <stdint.h>

#include "kiln/platform.h"

/* Registers. */
#define KILN_REG32(addr) (*(volatile uint32_t*)(uintptr_t)(addr))
#define KILN_REG8(addr)  (*(volatile uint8_t*)(uintptr_t)(addr))

/* UART (uart_*.c). init: 8N1, receiver and transmitter on, interrupts off. getc blocks until a byte arrives
 * (sleeping in WFI when the board wires a receive interrupt); try_getc returns -1 when none is waiting; putc
 * blocks while the transmitter is full. */
void kiln_port_uart_init(void);
int kiln_port_uart_try_getc(void);
uint8_t kiln_port_uart_getc(void);
void kiln_port_uart_putc(uint8_t byte);

/* Timer (timer_*.c): kiln_platform_ticks and kiln_platform_ticks_per_second, plus init (from
 * kiln_platform_init) and sync, which the firmware calls after every wait for input: it restarts the tick
 * count's sub-period phase so that tick differences within one request depend only on the instructions run
 * (exactly repeatable under QEMU's -icount). Ticks stay monotonic across a sync. */
void kiln_port_timer_init(void);
void kiln_port_timer_sync(void);

/* The firmware's main, called by kiln_port_start after .data was copied and .bss zeroed. */
int main(void);

/* Reports a hardware fault over the UART as a device-protocol ERROR frame (firmware_main.c) and halts.
 * `what` names the fault; `pc` is where it happened (0 if unknown); `detail` is extra text (fault status
 * registers), may be NULL. Never returns. */
KILN_NORETURN void kiln_port_fault(const char* what, uint32_t pc, const char* detail);

/* Halts the core forever (startup_*). */
KILN_NORETURN void kiln_port_halt(void);

/* Text helpers for fault reports (firmware_main.c): appends `s` / `v` as 0x%08x to buf[*len..cap). */
void kiln_port_text(char* buf, size_t cap, size_t* len, const char* s);
void kiln_port_hex(char* buf, size_t cap, size_t* len, uint32_t v);

/* Stack of the fault handler (defined in firmware_main.c, entered by startup_*), separate from the main
 * stack, which may be what overflowed. */
#define KILN_FAULT_STACK_BYTES 768
#define KILN_STR_(x)           #x
#define KILN_STR(x)            KILN_STR_(x)
extern uint64_t kiln_fault_stack[KILN_FAULT_STACK_BYTES / 8];

/* Linker-script symbols. */
extern uint32_t __kiln_stack_bottom[];
extern uint32_t __kiln_stack_top[];
extern uint32_t __kiln_data_start[];
extern uint32_t __kiln_data_end[];
extern const uint32_t __kiln_data_load[];
extern uint32_t __kiln_bss_start[];
extern uint32_t __kiln_bss_end[];

/* The start-up every board shares (startup_cortex_m.c, startup_riscv_c.c): copies .data's initial values
 * from flash to RAM, zeroes .bss, runs main and halts. A board's reset code calls it once the stack (and
 * what else C needs there: FPU, vector table, trap vector) is set up. The pointers are volatile so that the
 * compiler keeps the loops instead of calling memcpy/memset. */
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

#endif /* KILN_PORT_H_ */
