/* kiln firmware startup for Arm Cortex-M (Armv7-M, Armv8-M Mainline, Armv8.1-M): vector table, reset
 * handler (FPU/MVE on, stack limit on Armv8-M, .data copy, .bss zeroing, then main), and a fault handler
 * that moves to a fresh stack and reports the fault over the UART. */
#include "port.h"

#define SCB_VTOR  0xE000ED08u
#define SCB_SHCSR 0xE000ED24u
#define SCB_CFSR  0xE000ED28u
#define SCB_HFSR  0xE000ED2Cu
#define SCB_MMFAR 0xE000ED34u
#define SCB_BFAR  0xE000ED38u

void kiln_reset_handler(void);
void kiln_fault_entry(void);
void kiln_reset_c(void);
void kiln_fault_c(const uint32_t* sp, uint32_t exception);
void kiln_systick_handler(void);

typedef void (*kiln_vector_t)(void);

/* Initial stack pointer, then the system exceptions (no device interrupt is ever taken: the UART's receive
 * interrupt only wakes the core from WFI while interrupts are masked): 1 reset, 2 NMI, 3 HardFault, 4
 * MemManage, 5 BusFault, 6 UsageFault, 7 SecureFault (Armv8-M), 11 SVCall, 12 DebugMonitor, 14 PendSV, 15
 * SysTick. */
__attribute__((section(".kiln_vectors"), used)) const kiln_vector_t kiln_vectors[16] = {
    (kiln_vector_t)(uintptr_t)__kiln_stack_top,
    kiln_reset_handler,
    kiln_fault_entry,
    kiln_fault_entry,
    kiln_fault_entry,
    kiln_fault_entry,
    kiln_fault_entry,
    kiln_fault_entry,
    0,
    0,
    0,
    kiln_fault_entry,
    kiln_fault_entry,
    0,
    kiln_fault_entry,
    kiln_systick_handler,
};

/* No C before the FPU (and MVE) is on: the compiler may use its registers anywhere. */
__attribute__((naked)) void kiln_reset_handler(void) {
  __asm__ volatile(
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
      "ldr r0, =0xE000ED88\n" /* CPACR: CP10 and CP11 full access */
      "ldr r1, [r0]\n"
      "orr r1, r1, #0xF00000\n"
      "str r1, [r0]\n"
      "dsb\n"
      "isb\n"
#endif
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
      "ldr r0, =__kiln_stack_bottom\n" /* stack overflow -> UsageFault (STKOF), not corrupted data */
      "msr msplim, r0\n"
#endif
      "ldr r0, =__kiln_stack_top\n"
      "mov sp, r0\n"
      "b kiln_reset_c\n");
}

void kiln_reset_c(void) {
  KILN_REG32(SCB_VTOR) = (uint32_t)(uintptr_t)kiln_vectors;
  /* MemManage, BusFault and UsageFault on: a fault whose stacking fails (stack overflow) then escalates to
   * HardFault, which is taken, instead of a HardFault during HardFault entry, which locks the core up. */
  KILN_REG32(SCB_SHCSR) |= (1u << 16) | (1u << 17) | (1u << 18);
  kiln_port_start();
}

/* Any fault or unexpected exception: move to the fault stack first; r0 = the stack pointer at the fault
 * (the exception frame, if it could be pushed), r1 = IPSR. */
__attribute__((naked)) void kiln_fault_entry(void) {
  __asm__ volatile(
      "mrs r0, msp\n"
      "mrs r1, ipsr\n"
#if defined(__ARM_ARCH_8M_MAIN__) || defined(__ARM_ARCH_8_1M_MAIN__)
      "movs r2, #0\n"
      "msr msplim, r2\n"
#endif
      "ldr r2, =kiln_fault_stack + " KILN_STR(KILN_FAULT_STACK_BYTES) "\n"
      "mov sp, r2\n"
      "b kiln_fault_c\n");
}

static const char* exception_name(uint32_t exception) {
  switch (exception) {
    case 2:
      return "NMI";
    case 3:
      return "HardFault";
    case 4:
      return "MemManage fault";
    case 5:
      return "BusFault";
    case 6:
      return "UsageFault";
    case 7:
      return "SecureFault";
    default:
      return "unexpected exception";
  }
}

void kiln_fault_c(const uint32_t* sp, uint32_t exception) {
  exception &= 0x1FFu;
  uintptr_t s = (uintptr_t)sp;
  int frame_ok = s >= (uintptr_t)__kiln_stack_bottom && s + 32 <= (uintptr_t)__kiln_stack_top;
  uint32_t cfsr = KILN_REG32(SCB_CFSR);
  char detail[128];
  size_t n = 0;
  kiln_port_text(detail, sizeof(detail), &n, "exception ");
  kiln_port_hex(detail, sizeof(detail), &n, exception);
  kiln_port_text(detail, sizeof(detail), &n, ", CFSR ");
  kiln_port_hex(detail, sizeof(detail), &n, cfsr);
  kiln_port_text(detail, sizeof(detail), &n, ", HFSR ");
  kiln_port_hex(detail, sizeof(detail), &n, KILN_REG32(SCB_HFSR));
  if ((cfsr & 0x8000u) != 0) {
    kiln_port_text(detail, sizeof(detail), &n, ", BFAR ");
    kiln_port_hex(detail, sizeof(detail), &n, KILN_REG32(SCB_BFAR));
  }
  kiln_port_text(detail, sizeof(detail), &n, ", sp ");
  kiln_port_hex(detail, sizeof(detail), &n, (uint32_t)s);
  /* stacking failed (BusFault STKERR, MemManage MSTKERR, UsageFault STKOF) or sp left the stack */
  int overflow =
      (cfsr & ((1u << 12) | (1u << 4) | (1u << 20))) != 0 || s < (uintptr_t)__kiln_stack_bottom + 32;
  if (overflow) {
    kiln_port_text(detail, sizeof(detail), &n, ": stack overflow (raise stack_bytes in the board file)");
  }
  detail[n < sizeof(detail) ? n : sizeof(detail) - 1] = '\0';
  kiln_port_fault(exception_name(exception), frame_ok && !overflow ? sp[6] : 0, detail);
}

KILN_NORETURN void kiln_port_halt(void) {
  __asm__ volatile("cpsid i" ::: "memory");
  for (;;) {
    __asm__ volatile("wfi");
  }
}
