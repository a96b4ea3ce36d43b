/* A stand-in for generated code with large tensors and nothing else: no
 * weights, no workspace, no kernels. inputs: x float32[N]; outputs: y
 * float32[N] = x + 1. N is large enough that tensors span several frames. */
#include <stdint.h>

#define N 300000

int32_t kiln_model_entry(void *const *inputs, void *const *outputs,
                         uint8_t *workspace, void *prof, int64_t *dims) {
  (void)dims;
  (void)workspace;
  (void)prof;
  const float *x = (const float *)inputs[0];
  float *y = (float *)outputs[0];
  for (int32_t i = 0; i < N; ++i) {
    y[i] = x[i] + 1.0f;
  }
  return 0;
}
