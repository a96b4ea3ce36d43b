/* kiln runtime: device-protocol endpoint.
 *
 * The endpoint serves one model over any reliable byte stream (pipes, an SSH channel, a UART, semihosting).
 * It does no I/O of its own: bytes move through the two function pointers of kiln_stream_t, so the same
 * code runs in the Linux runner and in microcontroller firmware. It never allocates: the caller provides
 * the frame buffer, the tensor buffers, the workspace and the profiler.
 *
 * Frame (all integers little-endian):
 *
 *   offset  size  field
 *   0       4     magic "KILN" (4B 49 4C 4E)
 *   4       1     protocol version, KILN_PROTOCOL_VERSION
 *   5       1     message type
 *   6       2     reserved, 0
 *   8       4     payload length n
 *   12      n     payload
 *   12+n    4     CRC-32 (IEEE 802.3, the zlib/PNG one) of bytes [0, 12+n)
 *
 * The host sends requests; the device answers each with exactly one frame: the reply (type = request type
 * | 0x80) or ERROR. Messages (payload layouts; "str" is u32 length + UTF-8 bytes, no NUL):
 *
 *   INFO 0x01        u32 offset -> u32 total, then bytes [offset, offset+k) of the info record:
 *                    u32 abi_version, u32 max_payload, u64 ticks_per_second, u64 workspace_bytes,
 *                    u64 weights_bytes, str name, u32 num_inputs, tensor*, u32 num_outputs, tensor*,
 *                    u32 num_kernels, str*, u32 num_dims, u32 num_named_dims, i64 dim_bounds[num_dims],
 *                    then, when num_dims > 0, per input and output i8 dims[ndim] (-1: a fixed size; k: run-time
 *                    dimension k);
 *                    tensor = str name, u8 code, u8 bits, u16 lanes, u32 ndim, i64 shape[ndim] (a run-time
 *                    dimension's bound), u64 nbytes (at the bounds). The host asks again from offset+k until it
 *                    has total.
 *   SET_INPUT 0x02   u32 index, u64 nbytes, u64 offset, data -> empty. nbytes must equal the input's size
 *                    and offset + len(data) <= nbytes; large tensors arrive in several chunks.
 *   RUN 0x03         empty -> empty. Runs the model once on the current inputs.
 *   GET_OUTPUT 0x04  u32 index, u64 offset -> u64 nbytes, u64 offset, data (as many bytes as fit).
 *   TIME 0x05        u32 number, u32 repeat, u32 min_repeat_ms -> u64 ticks_per_second, u32 repeat, then
 *                    per repeat: u32 number, u64 ticks. One warm-up run, then `repeat` times: run `number`
 *                    times back to back; while that took less than min_repeat_ms, grow number (to
 *                    max(min_repeat/per_run + 1, 1.5 * number), as TVM's time_evaluator) and measure again.
 *                    Seconds per run of a repeat = ticks / ticks_per_second / number.
 *   PROFILE 0x06     u32 first -> u64 ticks_per_second, u32 total, u32 dropped, u32 first, u32 count, then
 *                    count records of (u32 kernel, u64 start, u64 end). first == 0 runs the model once with
 *                    the profiler on; first > 0 pages through the records of that run.
 *   QUIT 0x07        empty -> empty, then kiln_endpoint_serve returns.
 *   SELECT 0x08      u32 model -> u32 count. Later messages address model `model` of the `count` models the
 *                    device serves (a firmware image may link several; model 0 is selected at start, and a
 *                    device with one model accepts only 0).
 *   DIMS 0x09        u32 count, i64 sizes[count] -> u32 num_dims, i64 dims[num_dims]. Dynamic shapes: count 0
 *                    only asks; count == the model's named dimensions sets them (each 1..its bound) for the
 *                    next inputs and runs. The reply is the model's run-time dimension table: the named sizes,
 *                    then the sizes the last run computed from them (the outputs' shapes). At start, and after
 *                    SELECT, every dimension is at its bound. SET_INPUT and GET_OUTPUT sizes follow the table.
 *   ERROR 0xFF       (reply only) i32 status, u8 request type (0 if unknown), u8 reason (KILN_REASON_*),
 *                    u16 reserved (0), u64 numbers[4], UTF-8 text (up to KILN_ENDPOINT_MESSAGE_BYTES: a
 *                    tensor's name, or the message of kiln_endpoint_send_error). The device sends no
 *                    sentences: the host words the message from the reason, its numbers and the text
 *                    (kiln.runtime_c.abi.ERROR_REASONS says what each number is).
 *
 * Malformed input gets an ERROR reply and the endpoint keeps serving: bad magic (the endpoint then skips
 * bytes until the next magic, replying once), bad version, payload longer than the frame buffer (the
 * payload and CRC are read and dropped first), bad CRC, unknown type, wrong payload length, index out of
 * range, tensor size mismatch. End of stream between frames ends serving cleanly.
 */
#ifndef KILN_ENDPOINT_H_
#define KILN_ENDPOINT_H_

#include <stddef.h>
#include <stdint.h>

#include "kiln/config.h"
#include "kiln/model.h"
#include "kiln/profiler.h"
#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_PROTOCOL_VERSION   3u
#define KILN_FRAME_HEADER_BYTES 12u
#define KILN_FRAME_CRC_BYTES    4u

enum {
  KILN_MSG_INFO = 0x01,
  KILN_MSG_SET_INPUT = 0x02,
  KILN_MSG_RUN = 0x03,
  KILN_MSG_GET_OUTPUT = 0x04,
  KILN_MSG_TIME = 0x05,
  KILN_MSG_PROFILE = 0x06,
  KILN_MSG_QUIT = 0x07,
  KILN_MSG_SELECT = 0x08,
  KILN_MSG_DIMS = 0x09,
  KILN_MSG_REPLY = 0x80, /* or-ed into the request type */
  KILN_MSG_ERROR = 0xFF
};

/* A byte stream. read stores 1..capacity bytes and their count in *out_len, or 0 at end of stream; it may
 * block. write sends all `len` bytes. Both return KILN_OK or an error status (KILN_ERR_IO_*). */
typedef struct kiln_stream {
  void* context;
  kiln_status_t (*read)(void* context, uint8_t* buffer, size_t capacity, size_t* out_len);
  kiln_status_t (*write)(void* context, const uint8_t* data, size_t len);
} kiln_stream_t;

typedef struct kiln_endpoint_config {
  const kiln_model_t* model;
  kiln_stream_t stream;
  uint8_t* frame;            /* frame payload buffer, frame_bytes long */
  size_t frame_bytes;        /* KILN_ENDPOINT_MIN_PAYLOAD..KILN_ENDPOINT_MAX_PAYLOAD; bounds every payload */
  void* const* inputs;       /* model->num_inputs buffers of nbytes each, KILN_ALIGNMENT-aligned */
  void* const* outputs;      /* model->num_outputs buffers, likewise */
  uint8_t* workspace;        /* model->workspace_bytes bytes, KILN_ALIGNMENT-aligned */
  kiln_profiler_t* profiler; /* NULL: PROFILE replies KILN_ERR_PROTO_UNSUPPORTED */
  /* Several models (optional): with num_models > 1, SELECT calls select(config, index) (index <
   * num_models), which points model, inputs, outputs, workspace and profiler at that model. 0 or 1: one. */
  uint32_t num_models;
  kiln_status_t (*select)(struct kiln_endpoint_config* config, uint32_t index);
} kiln_endpoint_config_t;

/* Why the endpoint sent an ERROR reply, and what its numbers are (the host's wording of each is in
 * kiln.runtime_c.abi.ERROR_REASONS). Numbers not listed are 0. */
enum {
  KILN_REASON_TEXT = 0,           /* the text says it all (kiln_endpoint_send_error) */
  KILN_REASON_MAGIC = 1,          /* bytes before a frame's magic were skipped */
  KILN_REASON_VERSION = 2,        /* 0: the frame's protocol version, 1: this device's */
  KILN_REASON_CRC = 3,            /* the frame's CRC-32 does not match */
  KILN_REASON_OVERSIZE = 4,       /* 0: payload bytes, 1: the frame buffer's size */
  KILN_REASON_TYPE = 5,           /* 0: the unknown message type */
  KILN_REASON_PAYLOAD = 6,        /* 0: payload bytes, 1: what the message needs */
  KILN_REASON_INFO_OFFSET = 7,    /* 0: the offset, 1: the info record's size */
  KILN_REASON_INPUT_INDEX = 8,    /* 0: the index, 1: the model's inputs */
  KILN_REASON_INPUT_SIZE = 9,     /* 0: nbytes sent; 2: the input's size, 3: its index, text: its name */
  KILN_REASON_INPUT_RANGE = 10,   /* 0, 1: the bytes [begin, end) sent; 2, 3, text: as INPUT_SIZE */
  KILN_REASON_OUTPUT_INDEX = 11,  /* 0: the index, 1: the model's outputs */
  KILN_REASON_OUTPUT_RANGE = 12,  /* 0: the offset; 2: the output's size, 3: its index, text: its name */
  KILN_REASON_RUN = 13,           /* the model run failed (the status says why) */
  KILN_REASON_TIME_ARGS = 14,     /* 0: the largest repeat this device's frame holds */
  KILN_REASON_NO_CLOCK = 15,      /* the platform has no clock (TIME, PROFILE) */
  KILN_REASON_CLOCK = 16,         /* reading the clock failed (the status says why) */
  KILN_REASON_NO_PROFILER = 17,   /* the endpoint has no profiler buffer */
  KILN_REASON_PROFILE_INDEX = 18, /* 0: the first record asked for, 1: the records of the last run */
  KILN_REASON_MODEL_INDEX = 19,   /* 0: the index, 1: the models the device serves */
  KILN_REASON_SELECT = 20,        /* selecting the model failed (the status says why) */
  KILN_REASON_DIMS_COUNT = 21,    /* 0: the sizes sent, 1: the model's named dimensions */
  KILN_REASON_DIM_RANGE = 22,     /* 0: the dimension's index, 1: the size sent, 2: its bound */
  KILN_REASON_COUNT = 23
};

/* Longest ERROR text, in bytes (longer ones are cut), and where it starts in the ERROR payload. */
#define KILN_ENDPOINT_MESSAGE_BYTES 160u
#define KILN_ERROR_TEXT_OFFSET      40u

/* Endpoint state; treat as opaque. */
typedef struct kiln_endpoint {
  kiln_endpoint_config_t config;
  uint64_t ticks_per_second; /* 0 when the platform has no clock */
  uint64_t numbers[4];       /* the pending ERROR reply's reason, numbers and text */
  const char* text;
  uint8_t reason;
  int64_t dims[KILN_MAX_DIMS]; /* the model's run-time dimensions (DIMS) */
} kiln_endpoint_t;

/* Checks the model (kiln_model_check) and the buffers, and writes a ready endpoint to *out_endpoint.
 * Returns KILN_OK, KILN_ERR_ARG_NULL, KILN_ERR_ARG_SIZE (frame_bytes out of range), KILN_ERR_ARG_ALIGNMENT,
 * or the model check's error. */
kiln_status_t kiln_endpoint_init(const kiln_endpoint_config_t* config, kiln_endpoint_t* out_endpoint);

/* Reads one request frame and writes its reply. *out_more is 1 to keep going, 0 after QUIT or a clean end
 * of stream. Malformed requests are answered with ERROR and still return KILN_OK. Returns an error only when
 * the stream itself fails (KILN_ERR_IO_*); the caller should then stop serving. */
kiln_status_t kiln_endpoint_step(kiln_endpoint_t* endpoint, int* out_more);

/* Sends an unrequested ERROR frame (request type 0) carrying `status` and `message` (cut to
 * KILN_ENDPOINT_MESSAGE_BYTES), e.g. from a fault handler: the host reports it as the device's failure.
 * Returns KILN_OK, KILN_ERR_ARG_NULL, or the stream's error. */
kiln_status_t kiln_endpoint_send_error(kiln_endpoint_t* endpoint, kiln_status_t status, const char* message);

/* Calls kiln_endpoint_step until QUIT, end of stream, or a stream error, which it returns. */
kiln_status_t kiln_endpoint_serve(kiln_endpoint_t* endpoint);

/* CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF; zlib.crc32 in Python) of data[0..len),
 * continuing from `crc` (0 to start). Writes the result to *out_crc. */
kiln_status_t kiln_crc32_update(uint32_t crc, const uint8_t* data, size_t len, uint32_t* out_crc);

#ifdef __cplusplus
}
#endif

#endif /* KILN_ENDPOINT_H_ */
