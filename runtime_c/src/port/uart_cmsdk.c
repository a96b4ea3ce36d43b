/* kiln firmware: Arm CMSDK APB UART (MPS2/MPS3 boards) at KILN_UART_BASE. When the board names the UART's
 * receive interrupt (KILN_UART_RX_IRQ >= 0), waiting for input sleeps in WFI with interrupts masked: the
 * interrupt is enabled in the UART and the NVIC only around the WFI and never taken. */
#include "port.h"

#define UART_DATA    (KILN_UART_BASE + 0x00u)
#define UART_STATE   (KILN_UART_BASE + 0x04u) /* bit 0 TX full, bit 1 RX full */
#define UART_CTRL    (KILN_UART_BASE + 0x08u) /* bit 0 TX on, bit 1 RX on, bit 3 RX interrupt on */
#define UART_INT     (KILN_UART_BASE + 0x0Cu) /* status / clear; bit 1 RX */
#define UART_BAUDDIV (KILN_UART_BASE + 0x10u)

#define NVIC_ISER 0xE000E100u
#define NVIC_ICER 0xE000E180u
#define NVIC_ICPR 0xE000E280u

void kiln_port_uart_init(void) {
  KILN_REG32(UART_CTRL) = 0;
  KILN_REG32(UART_BAUDDIV) = 16;
  KILN_REG32(UART_CTRL) = 0x3u;
}

int kiln_port_uart_try_getc(void) {
  return (KILN_REG32(UART_STATE) & 0x2u) != 0 ? (int)(KILN_REG32(UART_DATA) & 0xFFu) : -1;
}

uint8_t kiln_port_uart_getc(void) {
  for (;;) {
    int c = kiln_port_uart_try_getc();
    if (c >= 0) {
      return (uint8_t)c;
    }
#if defined(KILN_UART_RX_IRQ) && KILN_UART_RX_IRQ >= 0
    uint32_t word = 4u * ((uint32_t)KILN_UART_RX_IRQ / 32u);
    uint32_t bit = 1u << ((uint32_t)KILN_UART_RX_IRQ % 32u);
    __asm__ volatile("cpsid i" ::: "memory");
    KILN_REG32(UART_CTRL) = 0xBu;
    KILN_REG32(NVIC_ISER + word) = bit;
    if ((KILN_REG32(UART_STATE) & 0x2u) == 0) {
      __asm__ volatile("dsb\n wfi" ::: "memory");
    }
    KILN_REG32(UART_CTRL) = 0x3u;
    KILN_REG32(UART_INT) = 0x2u;
    KILN_REG32(NVIC_ICER + word) = bit;
    KILN_REG32(NVIC_ICPR + word) = bit;
    __asm__ volatile("dsb\n isb\n cpsie i" ::: "memory");
#endif
  }
}

void kiln_port_uart_putc(uint8_t byte) {
  while ((KILN_REG32(UART_STATE) & 0x1u) != 0) {
  }
  KILN_REG32(UART_DATA) = byte;
}
