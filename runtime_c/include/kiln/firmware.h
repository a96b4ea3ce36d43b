/* kiln runtime: what a firmware image links besides the model descriptor.
 *
 * For a bare-metal target the build generates, next to the descriptor, the model's statically allocated
 * memory (symbol `<prefix>_memory`, kiln_model_memory by default): its input and output buffers (section
 * .kiln_io), its arena (the workspace the memory planner laid out, section .kiln_arena) and one profiler
 * record per kernel call of a run. The firmware's main (src/firmware_main.c) serves the device protocol for
 * that model over the board's UART; nothing is allocated at run time.
 */
#ifndef KILN_FIRMWARE_H_
#define KILN_FIRMWARE_H_

#include <stdint.h>

#include "kiln/model.h"
#include "kiln/profiler.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Frame buffer of the firmware's endpoint, in bytes (KILN_ENDPOINT_MIN_PAYLOAD..KILN_ENDPOINT_MAX_PAYLOAD).
 */
#ifndef KILN_FIRMWARE_FRAME_BYTES
#define KILN_FIRMWARE_FRAME_BYTES 1024u
#endif

typedef struct kiln_model_memory {
  void* const* inputs;            /* num_inputs buffers of nbytes each, KILN_ALIGNMENT-aligned */
  void* const* outputs;           /* num_outputs buffers, likewise */
  uint8_t* workspace;             /* workspace_bytes, KILN_ALIGNMENT-aligned (NULL when 0) */
  kiln_profile_record_t* records; /* one per kernel call of a run */
  uint32_t num_records;           /* >= 1 */
} kiln_model_memory_t;

/* One model a firmware serves. A model's memory is generated as `<prefix>_memory` next to its descriptor
 * `<prefix>` (kiln.runtime_c.abi: the default prefix is kiln_model). */
typedef struct kiln_firmware_model {
  const kiln_model_t* model;
  const kiln_model_memory_t* memory;
} kiln_firmware_model_t;

/* The models linked into this firmware, generated (kiln_firmware_models.c) for a package's image or an
 * exported C project: the device protocol's SELECT picks one, model 0 at start. At least one. */
extern const kiln_firmware_model_t kiln_firmware_models[];
extern const uint32_t kiln_firmware_num_models;

#ifdef __cplusplus
}
#endif

#endif /* KILN_FIRMWARE_H_ */
