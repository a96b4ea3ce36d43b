/* kiln runtime: status names. */
#include "kiln/status.h"

#include <stddef.h>

typedef struct {
  kiln_status_t status;
  const char* name;
} status_name_t;

static const status_name_t kNames[] = {
    {KILN_OK, "KILN_OK"},
    {KILN_ERR_ARG_NULL, "KILN_ERR_ARG_NULL"},
    {KILN_ERR_ARG_RANGE, "KILN_ERR_ARG_RANGE"},
    {KILN_ERR_ARG_ALIGNMENT, "KILN_ERR_ARG_ALIGNMENT"},
    {KILN_ERR_ARG_SIZE, "KILN_ERR_ARG_SIZE"},
    {KILN_ERR_MODEL_ABI, "KILN_ERR_MODEL_ABI"},
    {KILN_ERR_MODEL_INVALID, "KILN_ERR_MODEL_INVALID"},
    {KILN_ERR_MODEL_ENTRY, "KILN_ERR_MODEL_ENTRY"},
    {KILN_ERR_PROTO_MAGIC, "KILN_ERR_PROTO_MAGIC"},
    {KILN_ERR_PROTO_VERSION, "KILN_ERR_PROTO_VERSION"},
    {KILN_ERR_PROTO_CRC, "KILN_ERR_PROTO_CRC"},
    {KILN_ERR_PROTO_OVERSIZE, "KILN_ERR_PROTO_OVERSIZE"},
    {KILN_ERR_PROTO_TYPE, "KILN_ERR_PROTO_TYPE"},
    {KILN_ERR_PROTO_PAYLOAD, "KILN_ERR_PROTO_PAYLOAD"},
    {KILN_ERR_PROTO_INDEX, "KILN_ERR_PROTO_INDEX"},
    {KILN_ERR_PROTO_SIZE, "KILN_ERR_PROTO_SIZE"},
    {KILN_ERR_PROTO_UNSUPPORTED, "KILN_ERR_PROTO_UNSUPPORTED"},
    {KILN_ERR_IO_READ, "KILN_ERR_IO_READ"},
    {KILN_ERR_IO_WRITE, "KILN_ERR_IO_WRITE"},
    {KILN_ERR_IO_TRUNCATED, "KILN_ERR_IO_TRUNCATED"},
    {KILN_ERR_PLATFORM_UNSUPPORTED, "KILN_ERR_PLATFORM_UNSUPPORTED"},
    {KILN_ERR_PLATFORM_FAILED, "KILN_ERR_PLATFORM_FAILED"},
    {KILN_ERR_PLATFORM_FAULT, "KILN_ERR_PLATFORM_FAULT"},
};

kiln_status_t kiln_status_describe(kiln_status_t status, const char** out_name) {
  if (out_name == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  for (size_t i = 0; i < sizeof(kNames) / sizeof(kNames[0]); ++i) {
    if (kNames[i].status == status) {
      *out_name = kNames[i].name;
      return KILN_OK;
    }
  }
  return KILN_ERR_ARG_RANGE;
}
