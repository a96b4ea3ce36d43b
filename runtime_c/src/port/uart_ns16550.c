/* kiln firmware: 16550-compatible UART (byte registers) at KILN_UART_BASE, e.g. QEMU's RISC-V virt board.
 * When the board names the receive interrupt (KILN_UART_RX_IRQ >= 0) and its PLIC (KILN_PLIC_BASE), waiting
 * for input sleeps in WFI: machine external interrupts are enabled in mie but never in mstatus, so the
 * interrupt wakes the hart without being taken; the PLIC claim is completed afterwards. */
#include "port.h"

#define UART_RBR (KILN_UART_BASE + 0u) /* receive buffer / transmit holding */
#define UART_IER (KILN_UART_BASE + 1u)
#define UART_LCR (KILN_UART_BASE + 3u)
#define UART_MCR (KILN_UART_BASE + 4u)
#define UART_LSR (KILN_UART_BASE + 5u) /* bit 0 data ready, bit 5 transmit holding empty */

#if defined(KILN_UART_RX_IRQ) && KILN_UART_RX_IRQ >= 0 && defined(KILN_PLIC_BASE)
#define KILN_UART_SLEEPS   1
#define PLIC_PRIORITY(irq) (KILN_PLIC_BASE + 4u * (uint32_t)(irq))
#define PLIC_ENABLE(irq)   (KILN_PLIC_BASE + 0x2000u + 4u * ((uint32_t)(irq) / 32u)) /* context 0 */
#define PLIC_THRESHOLD     (KILN_PLIC_BASE + 0x200000u)
#define PLIC_CLAIM         (KILN_PLIC_BASE + 0x200004u)
#endif

void kiln_port_uart_init(void) {
  KILN_REG8(UART_IER) = 0;
  KILN_REG8(UART_LCR) = 0x03u; /* 8N1 */
  /* FCR untouched: turning the FIFOs on or off clears them, which would drop bytes the host sent before
   * the firmware started (QEMU holds them back only while the receive buffer is full). */
  KILN_REG8(UART_MCR) = 0x08u; /* OUT2: interrupt line on */
#ifdef KILN_UART_SLEEPS
  KILN_REG32(PLIC_PRIORITY(KILN_UART_RX_IRQ)) = 1;
  KILN_REG32(PLIC_ENABLE(KILN_UART_RX_IRQ)) |= 1u << ((uint32_t)KILN_UART_RX_IRQ % 32u);
  KILN_REG32(PLIC_THRESHOLD) = 0;
  __asm__ volatile("csrs mie, %0" ::"r"(1u << 11) : "memory"); /* MEIE; mstatus.MIE stays 0 */
#endif
}

int kiln_port_uart_try_getc(void) {
  return (KILN_REG8(UART_LSR) & 0x1u) != 0 ? (int)KILN_REG8(UART_RBR) : -1;
}

uint8_t kiln_port_uart_getc(void) {
  for (;;) {
    int c = kiln_port_uart_try_getc();
    if (c >= 0) {
      return (uint8_t)c;
    }
#ifdef KILN_UART_SLEEPS
    KILN_REG8(UART_IER) = 0x01u; /* received data available */
    if ((KILN_REG8(UART_LSR) & 0x1u) == 0) {
      __asm__ volatile("wfi" ::: "memory");
    }
    KILN_REG8(UART_IER) = 0;
    uint32_t claim = KILN_REG32(PLIC_CLAIM);
    if (claim != 0) {
      KILN_REG32(PLIC_CLAIM) = claim;
    }
#endif
  }
}

void kiln_port_uart_putc(uint8_t byte) {
  while ((KILN_REG8(UART_LSR) & 0x20u) == 0) {
  }
  KILN_REG8(UART_RBR) = byte;
}
