/* Embeds the tiny test model through lib/libmodel.a + include/model.h of its
 * package, without the runner. */
#include <stdint.h>
#include <stdio.h>

#include "model.h"

static _Alignas(64) float x[8];
static _Alignas(64) int32_t mode[1];
static _Alignas(64) float y[8];
static _Alignas(64) int64_t probe[1];
static _Alignas(64) uint8_t workspace[KILN_MODEL_WORKSPACE_BYTES];

int main(void) {
  if (kiln_model_check(&kiln_model) != KILN_OK || KILN_MODEL_NUM_INPUTS != 2 ||
      KILN_MODEL_INPUT_0_NBYTES != sizeof(x)) {
    return 1;
  }
  for (int i = 0; i < 8; ++i) {
    x[i] = (float)i;
  }
  void *inputs[KILN_MODEL_NUM_INPUTS] = {x, mode};
  void *outputs[KILN_MODEL_NUM_OUTPUTS] = {y, probe};
  uint32_t index = 99;
  kiln_status_t found = kiln_model_find_tensor(&kiln_model, 1, "probe", &index);
  kiln_status_t status =
      kiln_model_run(&kiln_model, inputs, outputs, workspace, NULL);
  printf("%s %d %d %u", KILN_MODEL_NAME, (int)status, (int)found,
         (unsigned)index);
  for (int i = 0; i < 8; ++i) {
    printf(" %.9g", y[i]);
  }
  printf(" %lld\n", (long long)probe[0]);
  return 0;
}
