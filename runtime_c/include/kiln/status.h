/* kiln runtime: status codes.
 *
 * Every public runtime function returns a kiln_status_t. Zero is success; any other value is
 * (category << 8) | code, so a caller can switch on the category without knowing every code.
 * Out-parameters are written only when a function returns KILN_OK.
 */
#ifndef KILN_STATUS_H_
#define KILN_STATUS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int32_t kiln_status_t;

#define KILN_STATUS(category, code)  ((kiln_status_t)(((category) << 8) | (code)))
#define KILN_STATUS_CATEGORY(status) (((status) >> 8) & 0xFF)

/* Categories. */
#define KILN_CATEGORY_OK       0x00
#define KILN_CATEGORY_ARG      0x01 /* the caller passed a bad argument */
#define KILN_CATEGORY_MODEL    0x02 /* the model descriptor or the generated code failed */
#define KILN_CATEGORY_PROTOCOL 0x03 /* a device-protocol frame was malformed or not understood */
#define KILN_CATEGORY_IO       0x04 /* the byte stream under the device protocol failed */
#define KILN_CATEGORY_PLATFORM 0x05 /* a platform hook failed or is not implemented */

#define KILN_OK KILN_STATUS(KILN_CATEGORY_OK, 0x00)

#define KILN_ERR_ARG_NULL      KILN_STATUS(KILN_CATEGORY_ARG, 0x01) /* required pointer is NULL */
#define KILN_ERR_ARG_RANGE     KILN_STATUS(KILN_CATEGORY_ARG, 0x02) /* value out of its valid range */
#define KILN_ERR_ARG_ALIGNMENT KILN_STATUS(KILN_CATEGORY_ARG, 0x03) /* buffer not KILN_ALIGNMENT-aligned */
#define KILN_ERR_ARG_SIZE      KILN_STATUS(KILN_CATEGORY_ARG, 0x04) /* buffer too small */

#define KILN_ERR_MODEL_ABI     KILN_STATUS(KILN_CATEGORY_MODEL, 0x01) /* descriptor built for another ABI */
#define KILN_ERR_MODEL_INVALID KILN_STATUS(KILN_CATEGORY_MODEL, 0x02) /* descriptor is inconsistent */
#define KILN_ERR_MODEL_ENTRY   KILN_STATUS(KILN_CATEGORY_MODEL, 0x03) /* kiln_model_entry returned != 0 */

#define KILN_ERR_PROTO_MAGIC   KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x01) /* frame does not start with magic */
#define KILN_ERR_PROTO_VERSION KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x02) /* unsupported protocol version */
#define KILN_ERR_PROTO_CRC     KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x03) /* CRC-32 mismatch */
#define KILN_ERR_PROTO_OVERSIZE KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x04) /* payload exceeds frame buffer */
#define KILN_ERR_PROTO_TYPE     KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x05) /* unknown message type */
#define KILN_ERR_PROTO_PAYLOAD  KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x06) /* payload has the wrong length */
#define KILN_ERR_PROTO_INDEX \
  KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x07) /* tensor or record index out of range */
#define KILN_ERR_PROTO_SIZE KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x08) /* tensor byte size or range mismatch \
                                                                       */
#define KILN_ERR_PROTO_UNSUPPORTED KILN_STATUS(KILN_CATEGORY_PROTOCOL, 0x09) /* request not available here \
                                                                              */

#define KILN_ERR_IO_READ      KILN_STATUS(KILN_CATEGORY_IO, 0x01) /* the stream's read hook failed */
#define KILN_ERR_IO_WRITE     KILN_STATUS(KILN_CATEGORY_IO, 0x02) /* the stream's write hook failed */
#define KILN_ERR_IO_TRUNCATED KILN_STATUS(KILN_CATEGORY_IO, 0x03) /* end of stream inside a frame */

#define KILN_ERR_PLATFORM_UNSUPPORTED KILN_STATUS(KILN_CATEGORY_PLATFORM, 0x01) /* hook not implemented */
#define KILN_ERR_PLATFORM_FAILED      KILN_STATUS(KILN_CATEGORY_PLATFORM, 0x02) /* hook failed */
#define KILN_ERR_PLATFORM_FAULT       KILN_STATUS(KILN_CATEGORY_PLATFORM, 0x03) /* hardware fault; halted */

/* Exit statuses of the Linux runner (runner_main.c); the host explains them in its error messages. */
#define KILN_RUNNER_EXIT_STREAM   1  /* the protocol stream failed */
#define KILN_RUNNER_EXIT_USAGE    2  /* usage error */
#define KILN_RUNNER_EXIT_MODEL    65 /* the linked model descriptor is invalid */
#define KILN_RUNNER_EXIT_PLATFORM 70 /* platform init failed */
#define KILN_RUNNER_EXIT_MEMORY   71 /* out of memory */

/* Writes a static, NUL-terminated name for `status` (e.g. "KILN_ERR_PROTO_CRC") to *out_name.
 * Returns KILN_ERR_ARG_NULL if out_name is NULL and KILN_ERR_ARG_RANGE for an unknown status. */
kiln_status_t kiln_status_describe(kiln_status_t status, const char** out_name);

#ifdef __cplusplus
}
#endif

#endif /* KILN_STATUS_H_ */
