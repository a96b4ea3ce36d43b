/* A hand-written stand-in for generated code (runtime-abi.md), used by the
 * runtime and build tests.
 *
 * inputs:  x float32[2, 4], mode int32[1]
 * outputs: y float32[2, 4] = x * 2 + w (w = the first 8 floats of the weights),
 *          probe int64[1]  = the weights byte at PROBE_OFFSET
 * kernels: 0 "scale" (called once per row of x, into the workspace), 1
 * "add_weights" (called once) mode:    0 normal, 1 hang forever, 2 segfault, 3
 * return an error code, 4 probe = address of the weights modulo 64 (their
 * alignment), 5 like 0 but "scale" runs 200 times
 */
#include <stdint.h>

#ifndef PROBE_OFFSET
#define PROBE_OFFSET 32
#endif

extern const uint8_t kiln_model_weights[];
void kiln_profile_begin(void *prof, uint32_t kernel);
void kiln_profile_end(void *prof, uint32_t kernel);

static void scale_row(const float *x, float *t) {
  for (int i = 0; i < 4; ++i) {
    t[i] = x[i] * 2.0f;
  }
}

int32_t kiln_model_entry(void *const *inputs, void *const *outputs,
                         uint8_t *workspace, void *prof, int64_t *dims) {
  (void)dims;
  const float *x = (const float *)inputs[0];
  int32_t mode = *(const int32_t *)inputs[1];
  float *y = (float *)outputs[0];
  int64_t *probe = (int64_t *)outputs[1];
  float *t = (float *)workspace;
  const float *w = (const float *)kiln_model_weights;

  if (mode == 1) {
    volatile int spin = 1;
    while (spin) {
    }
  }
  if (mode == 2) {
    volatile uintptr_t address = 0;
    *(volatile int32_t *)address = 1;
  }
  if (mode == 3) {
    return 7;
  }
  if (mode == 4) {
    probe[0] = (int64_t)((uintptr_t)kiln_model_weights % 64);
    return 0;
  }
  for (uint32_t call = 0; call < (mode == 5 ? 200u : 2u); ++call) {
    uint32_t row = call % 2;
    if (prof)
      kiln_profile_begin(prof, 0);
    scale_row(x + 4 * row, t + 4 * row);
    if (prof)
      kiln_profile_end(prof, 0);
  }
  if (prof)
    kiln_profile_begin(prof, 1);
  for (int i = 0; i < 8; ++i) {
    y[i] = t[i] + w[i];
  }
  probe[0] = kiln_model_weights[PROBE_OFFSET];
  if (prof)
    kiln_profile_end(prof, 1);
  return 0;
}
