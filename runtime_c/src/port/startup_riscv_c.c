/* kiln firmware startup for RV32 boards, the C half (the entry is startup_riscv.S). */
#include "port.h"

void kiln_reset_c(void);

void kiln_trap_c(uint32_t mcause, uint32_t mepc, uint32_t mtval, uint32_t sp);

void kiln_reset_c(void) {
  kiln_port_start();
}

static const char* cause_name(uint32_t mcause) {
  static const char* const kNames[] = {
      "instruction address misaligned",
      "instruction access fault",
      "illegal instruction",
      "breakpoint",
      "load address misaligned",
      "load access fault",
      "store address misaligned",
      "store access fault",
  };
  return mcause < sizeof(kNames) / sizeof(kNames[0]) ? kNames[mcause] : "unexpected trap";
}

void kiln_trap_c(uint32_t mcause, uint32_t mepc, uint32_t mtval, uint32_t sp) {
  char detail[128];
  size_t n = 0;
  kiln_port_text(detail, sizeof(detail), &n, "mcause ");
  kiln_port_hex(detail, sizeof(detail), &n, mcause);
  kiln_port_text(detail, sizeof(detail), &n, ", mtval ");
  kiln_port_hex(detail, sizeof(detail), &n, mtval);
  kiln_port_text(detail, sizeof(detail), &n, ", sp ");
  kiln_port_hex(detail, sizeof(detail), &n, sp);
  if (sp < (uint32_t)(uintptr_t)__kiln_stack_bottom) {
    kiln_port_text(detail, sizeof(detail), &n, ": stack overflow (raise stack_bytes in the board file)");
  }
  detail[n < sizeof(detail) ? n : sizeof(detail) - 1] = '\0';
  kiln_port_fault(cause_name(mcause), mepc, detail);
}

KILN_NORETURN void kiln_port_halt(void) {
  __asm__ volatile("csrw mie, zero" ::: "memory");
  for (;;) {
    __asm__ volatile("wfi");
  }
}
