/* kiln firmware startup for RV32 boards: stack, global pointer, trap vector, then kiln_reset_c (C: .data
 * copy, .bss zeroing, main). A trap (machine mode, interrupts are never enabled) is a fault: it moves to the
 * fault handler's own stack (kiln_fault_stack, firmware_main.c) and calls kiln_trap_c(mcause, mepc, mtval, sp at the trap). */
  .section .kiln_vectors, "ax", %progbits
  .globl kiln_reset_handler
  .type kiln_reset_handler, %function
kiln_reset_handler:
  .option push
  .option norelax
  la gp, __global_pointer$
  .option pop
  la sp, __kiln_stack_top
  la t0, kiln_trap_entry
  csrw mtvec, t0
  j kiln_reset_c
  .size kiln_reset_handler, . - kiln_reset_handler

  .section .kiln_trap, "ax", %progbits
  .balign 4
  .globl kiln_trap_entry
  .type kiln_trap_entry, %function
kiln_trap_entry:
  mv a3, sp
  la sp, kiln_fault_stack + 768 /* KILN_FAULT_STACK_BYTES (port.h) */
  csrr a0, mcause
  csrr a1, mepc
  csrr a2, mtval
  j kiln_trap_c
  .size kiln_trap_entry, . - kiln_trap_entry
