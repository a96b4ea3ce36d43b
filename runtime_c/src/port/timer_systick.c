/* kiln firmware: ticks from the Cortex-M SysTick timer on the processor clock (KILN_TIMER_HZ), extended to
 * 64 bits by counting its wraps (24-bit reload, one interrupt every 2^24 ticks). */
#include "port.h"

#define SYST_CSR  0xE000E010u
#define SYST_RVR  0xE000E014u
#define SYST_CVR  0xE000E018u
#define SCB_ICSR  0xE000ED04u
#define PENDSTSET (1u << 26)
#define PENDSTCLR (1u << 25)
#define RELOAD    0xFFFFFFu

static volatile uint32_t g_wraps;
static uint64_t g_base;

void kiln_systick_handler(void);

void kiln_systick_handler(void) {
  g_wraps = g_wraps + 1;
}

static uint32_t mask_interrupts(void) {
  uint32_t primask;
  __asm__ volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
  return primask;
}

static void restore_interrupts(uint32_t primask) {
  __asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
}

/* Ticks since the last restart (interrupts masked). Writing the counter clears it; the next tick reloads it
 * without an interrupt, and every later decrement to 0 is a wrap. */
static uint64_t elapsed(void) {
  uint32_t wraps = g_wraps;
  uint32_t value = KILN_REG32(SYST_CVR);
  if ((KILN_REG32(SCB_ICSR) & PENDSTSET) != 0) { /* wrapped, interrupt not taken yet */
    value = KILN_REG32(SYST_CVR);
    ++wraps;
  }
  return (uint64_t)wraps * (RELOAD + 1u) + (value == 0 ? 0u : RELOAD + 1u - value);
}

void kiln_port_timer_init(void) {
  KILN_REG32(SYST_CSR) = 0;
  KILN_REG32(SYST_RVR) = RELOAD;
  KILN_REG32(SYST_CVR) = 0;
  g_wraps = 0;
  g_base = 0;
  KILN_REG32(SYST_CSR) = 0x7u; /* enable, interrupt on wrap, processor clock */
}

void kiln_port_timer_sync(void) {
  uint32_t primask = mask_interrupts();
  g_base += elapsed() + 1u;
  KILN_REG32(SYST_CVR) = 0;
  KILN_REG32(SCB_ICSR) = PENDSTCLR;
  g_wraps = 0;
  restore_interrupts(primask);
}

kiln_status_t kiln_platform_ticks(uint64_t* out_ticks) {
  if (out_ticks == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  uint32_t primask = mask_interrupts();
  *out_ticks = g_base + elapsed();
  restore_interrupts(primask);
  return KILN_OK;
}

kiln_status_t kiln_platform_ticks_per_second(uint64_t* out_ticks_per_second) {
  if (out_ticks_per_second == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  *out_ticks_per_second = KILN_TIMER_HZ;
  return KILN_OK;
}
