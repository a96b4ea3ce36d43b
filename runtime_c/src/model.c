/* kiln runtime: descriptor checks and the run call. */
#include "kiln/model.h"

#include "kiln/config.h"

static int is_aligned(const void* p) {
  return ((uintptr_t)p % KILN_ALIGNMENT) == 0;
}

static int names_equal(const char* a, const char* b) {
  while (*a != '\0' && *a == *b) {
    ++a;
    ++b;
  }
  return *a == *b;
}

static kiln_status_t check_tensor(const kiln_tensor_info_t* t) {
  if (t->name == NULL || t->ndim < 0 || (t->ndim > 0 && t->shape == NULL)) {
    return KILN_ERR_MODEL_INVALID;
  }
  if (t->dtype.bits == 0 || t->dtype.bits % 8 != 0 || t->dtype.lanes == 0) {
    return KILN_ERR_MODEL_INVALID;
  }
  uint64_t nbytes = (uint64_t)(t->dtype.bits / 8) * t->dtype.lanes;
  for (int32_t d = 0; d < t->ndim; ++d) {
    int64_t extent = t->shape[d];
    if (extent < 0) {
      return KILN_ERR_MODEL_INVALID;
    }
    if (extent != 0 && nbytes > UINT64_MAX / (uint64_t)extent) {
      return KILN_ERR_MODEL_INVALID;
    }
    nbytes *= (uint64_t)extent;
  }
  return nbytes == t->nbytes ? KILN_OK : KILN_ERR_MODEL_INVALID;
}

static kiln_status_t check_dims(const kiln_tensor_info_t* t, uint32_t num_dims) {
#if !KILN_DYNAMIC_DIMS
  if (t->dims != NULL) {
    return KILN_ERR_MODEL_INVALID; /* a build without run-time dimensions serves fixed shapes only */
  }
#endif
  for (int32_t d = 0; KILN_DYNAMIC_DIMS && t->dims != NULL && d < t->ndim; ++d) {
    if (t->dims[d] >= (int32_t)num_dims || t->dims[d] < -1) {
      return KILN_ERR_MODEL_INVALID;
    }
  }
  return KILN_OK;
}

uint64_t kiln_tensor_bytes(const kiln_tensor_info_t* t, const int64_t* dims) {
  if (!KILN_DYNAMIC_DIMS || t->dims == NULL || dims == NULL) {
    return t->nbytes;
  }
  uint64_t nbytes = (uint64_t)(t->dtype.bits / 8) * t->dtype.lanes;
  for (int32_t d = 0; d < t->ndim; ++d) {
    nbytes *= (uint64_t)(t->dims[d] < 0 ? t->shape[d] : dims[t->dims[d]]);
  }
  return nbytes;
}

static kiln_status_t check_tensors(const kiln_tensor_info_t* tensors, uint32_t count, uint32_t num_dims) {
  if (count > 0 && tensors == NULL) {
    return KILN_ERR_MODEL_INVALID;
  }
  for (uint32_t i = 0; i < count; ++i) {
    kiln_status_t status = check_tensor(&tensors[i]);
    if (status == KILN_OK) {
      status = check_dims(&tensors[i], num_dims);
    }
    if (status != KILN_OK) {
      return status;
    }
  }
  return KILN_OK;
}

kiln_status_t kiln_model_check(const kiln_model_t* model) {
  if (model == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  if (model->abi_version != KILN_ABI_VERSION) {
    return KILN_ERR_MODEL_ABI;
  }
  if (model->name == NULL || model->entry == NULL || (model->weights_bytes > 0 && model->weights == NULL)) {
    return KILN_ERR_MODEL_INVALID;
  }
  if (model->num_kernels > 0 && model->kernel_names == NULL) {
    return KILN_ERR_MODEL_INVALID;
  }
  for (uint32_t k = 0; k < model->num_kernels; ++k) {
    if (model->kernel_names[k] == NULL) {
      return KILN_ERR_MODEL_INVALID;
    }
  }
  if (model->num_dims > KILN_MAX_DIMS || model->num_named_dims > model->num_dims ||
      (model->num_dims > 0 && model->dim_bounds == NULL)) {
    return KILN_ERR_MODEL_INVALID;
  }
  kiln_status_t status = check_tensors(model->inputs, model->num_inputs, model->num_dims);
  return status != KILN_OK ? status : check_tensors(model->outputs, model->num_outputs, model->num_dims);
}

static kiln_status_t check_buffers(void* const* buffers, uint32_t count) {
  if (count > 0 && buffers == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  for (uint32_t i = 0; i < count; ++i) {
    if (buffers[i] == NULL) {
      return KILN_ERR_ARG_NULL;
    }
    if (!is_aligned(buffers[i])) {
      return KILN_ERR_ARG_ALIGNMENT;
    }
  }
  return KILN_OK;
}

kiln_status_t kiln_model_run(const kiln_model_t* model, void* const* inputs, void* const* outputs,
                             uint8_t* workspace, kiln_profiler_t* prof) {
#if KILN_DYNAMIC_DIMS
  int64_t dims[KILN_MAX_DIMS];
  for (uint32_t k = 0; model != NULL && k < model->num_dims && k < KILN_MAX_DIMS; ++k) {
    dims[k] = model->dim_bounds[k];
  }
  return kiln_model_run_dims(model, inputs, outputs, workspace, prof, dims);
#else
  return kiln_model_run_dims(model, inputs, outputs, workspace, prof, NULL);
#endif
}

kiln_status_t kiln_model_run_dims(const kiln_model_t* model, void* const* inputs, void* const* outputs,
                                  uint8_t* workspace, kiln_profiler_t* prof, int64_t* dims) {
  if (model == NULL || (model->workspace_bytes > 0 && workspace == NULL) ||
      (model->num_dims > 0 && dims == NULL)) {
    return KILN_ERR_ARG_NULL;
  }
  for (uint32_t k = 0; KILN_DYNAMIC_DIMS && k < model->num_named_dims; ++k) {
    if (dims[k] < 1 || dims[k] > model->dim_bounds[k]) {
      return KILN_ERR_ARG_RANGE;
    }
  }
  if (!is_aligned(workspace)) {
    return KILN_ERR_ARG_ALIGNMENT;
  }
  kiln_status_t status = check_buffers(inputs, model->num_inputs);
  if (status == KILN_OK) {
    status = check_buffers(outputs, model->num_outputs);
  }
  if (status != KILN_OK) {
    return status;
  }
  return model->entry(inputs, outputs, workspace, prof, dims) == 0 ? KILN_OK : KILN_ERR_MODEL_ENTRY;
}

kiln_status_t kiln_model_find_tensor(const kiln_model_t* model, int is_output, const char* name,
                                     uint32_t* out_index) {
  if (model == NULL || name == NULL || out_index == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  const kiln_tensor_info_t* tensors = is_output ? model->outputs : model->inputs;
  uint32_t count = is_output ? model->num_outputs : model->num_inputs;
  for (uint32_t i = 0; i < count; ++i) {
    if (names_equal(tensors[i].name, name)) {
      *out_index = i;
      return KILN_OK;
    }
  }
  return KILN_ERR_ARG_RANGE;
}
