/* kiln runtime: the model descriptor.
 *
 * The build generates one `kiln_model_t` (symbol `kiln_model`, file model_desc.c) per compiled model from its
 * manifest. It describes the inputs and outputs, the workspace the caller must provide, the kernels the
 * profiler reports, and points at the generated entry function (see docs/topics/runtime-abi.md).
 *
 * Tensors are dense and row-major. Their metadata matches DLPack (DLDataType code/bits/lanes, int64 shape),
 * so a caller can wrap a buffer in a DLTensor without copying: data = the buffer, device = CPU,
 * ndim/shape/dtype from kiln_tensor_info_t, strides = NULL, byte_offset = 0.
 */
#ifndef KILN_MODEL_H_
#define KILN_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#include "kiln/profiler.h"
#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the contract between generated code, model_desc.c and this runtime. */
#define KILN_ABI_VERSION 2u

/* DLPack DLDataTypeCode values. */
#define KILN_DTYPE_INT    0u
#define KILN_DTYPE_UINT   1u
#define KILN_DTYPE_FLOAT  2u
#define KILN_DTYPE_BFLOAT 4u
#define KILN_DTYPE_BOOL   6u

/* Same layout as DLPack's DLDataType. Element size in bytes is bits * lanes / 8. */
typedef struct kiln_dtype {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
} kiln_dtype_t;

typedef struct kiln_tensor_info {
  const char* name; /* NUL-terminated, unique among the model's inputs (resp. outputs) */
  kiln_dtype_t dtype;
  int32_t ndim;         /* 0 for a scalar */
  const int64_t* shape; /* ndim extents, each >= 0; may be NULL when ndim == 0. A run-time dimension's
                           largest size (its bound) */
  uint64_t nbytes;      /* product(shape) * bits * lanes / 8: the size at the bounds */
  const int8_t* dims;   /* NULL when every size is fixed; else ndim entries: -1 for a fixed size, k for the
                           model's run-time dimension k (its size in a run is dims[k] of that run) */
} kiln_tensor_info_t;

/* The generated entry point (runtime-abi.md). Returns 0 on success. `dims` holds the model's num_dims
 * run-time dimensions: the caller writes the first num_named_dims, the entry computes the others. */
typedef int32_t (*kiln_model_entry_fn)(void* const* inputs, void* const* outputs, uint8_t* workspace,
                                       void* prof, int64_t* dims);

typedef struct kiln_model {
  uint32_t abi_version; /* KILN_ABI_VERSION of the build that generated the descriptor */
  const char* name;
  uint32_t num_inputs;
  const kiln_tensor_info_t* inputs;
  uint32_t num_outputs;
  const kiln_tensor_info_t* outputs;
  uint64_t workspace_bytes; /* the caller provides this many bytes, KILN_ALIGNMENT-aligned */
  const uint8_t* weights;   /* kiln_model_weights */
  uint64_t weights_bytes;
  uint32_t num_kernels;
  const char* const* kernel_names; /* kernel index -> name, as passed to kiln_profile_begin/end */
  kiln_model_entry_fn entry;
  /* Dynamic shapes: sizes known only at run time, each between 1 and its bound. The first num_named_dims
   * are the inputs' named sizes (a sequence length, say), set by the caller; the rest are computed from
   * them by the entry (a size that is twice the sequence length). 0 for a model of fixed shapes. */
  uint32_t num_dims; /* <= KILN_MAX_DIMS */
  uint32_t num_named_dims;
  const int64_t* dim_bounds; /* num_dims largest sizes; the run-time dimensions' values by default */
} kiln_model_t;

/* Validates a descriptor once, before first use: ABI version, non-NULL fields, nbytes consistent with dtype
 * and shape. Returns KILN_OK, KILN_ERR_ARG_NULL, KILN_ERR_MODEL_ABI or KILN_ERR_MODEL_INVALID. */
kiln_status_t kiln_model_check(const kiln_model_t* model);

/* Runs the model once. inputs/outputs hold num_inputs/num_outputs buffer pointers in descriptor order, each
 * buffer at least nbytes long; workspace holds workspace_bytes bytes (may be NULL when that is 0). Every
 * buffer must be KILN_ALIGNMENT-aligned. prof is NULL (no profiling) or an initialized profiler; records are
 * appended to it. The model must have passed kiln_model_check. Returns KILN_OK, KILN_ERR_ARG_NULL,
 * KILN_ERR_ARG_ALIGNMENT, or KILN_ERR_MODEL_ENTRY if the generated code reported a failure. */
kiln_status_t kiln_model_run(const kiln_model_t* model, void* const* inputs, void* const* outputs,
                             uint8_t* workspace, kiln_profiler_t* prof);

/* kiln_model_run for a model with run-time dimensions: dims holds model->num_dims values, the first
 * num_named_dims set by the caller (each 1..its bound; the inputs are dense at those sizes), the rest
 * written by the run (the sizes of the outputs' computed dimensions). kiln_model_run runs at the bounds.
 * Returns kiln_model_run's statuses, or KILN_ERR_ARG_RANGE if a named size is out of range. */
kiln_status_t kiln_model_run_dims(const kiln_model_t* model, void* const* inputs, void* const* outputs,
                                  uint8_t* workspace, kiln_profiler_t* prof, int64_t* dims);

/* The size in bytes of tensor t when the model's run-time dimensions are dims (NULL: at the bounds). */
uint64_t kiln_tensor_bytes(const kiln_tensor_info_t* t, const int64_t* dims);

/* Finds the input (is_output == 0) or output (is_output != 0) named `name` and writes its index to
 * *out_index. Returns KILN_OK, KILN_ERR_ARG_NULL, or KILN_ERR_ARG_RANGE if no tensor has that name. */
kiln_status_t kiln_model_find_tensor(const kiln_model_t* model, int is_output, const char* name,
                                     uint32_t* out_index);

/* The descriptor and weights of the model linked into this program (model_desc.c and the weights object). */
extern const kiln_model_t kiln_model;
extern const uint8_t kiln_model_weights[];

#ifdef __cplusplus
}
#endif

#endif /* KILN_MODEL_H_ */
