/* kiln runtime: device-protocol endpoint (frame format and messages are documented in endpoint.h).
 *
 * Built for size: on a microcontroller it is most of the runtime core. Requests go through one table
 * (handler and payload length per message type); a handler parses its payload into locals first and then
 * builds the reply in the same frame buffer. A failing handler records a reason (KILN_REASON_*), up to four
 * numbers and a text (a tensor name) with fail(), and returns the status; the ERROR reply carries them and
 * the host words the message (kiln.runtime_c.abi.ERROR_REASONS), so the device holds no sentences.
 */
#include "kiln/endpoint.h"

#include "kiln/platform.h"

/* Helpers called from many places stay out of line: the endpoint is built for size on microcontrollers. */
#define KILN_OUTLINE __attribute__((noinline))

static const uint8_t kMagic[4] = {'K', 'I', 'L', 'N'};

/* ---- little-endian encoding ---- */

/* Every kiln target is little-endian, so a wire integer is its bytes in memory. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the device protocol needs a little-endian target");
_Static_assert(sizeof(kiln_dtype_t) == 4, "kiln_dtype_t is u8 code, u8 bits, u16 lanes, as on the wire");

KILN_OUTLINE static void copy_bytes(uint8_t* dst, const uint8_t* src, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    dst[i] = src[i];
  }
}

/* Where an unaligned load or store is one instruction (Armv7-M and up, x86-64, AArch64) the integer helpers
 * are inlined; elsewhere (RV32) they are calls of copy_bytes, out of line. */
#if defined(__ARM_FEATURE_UNALIGNED) || defined(__x86_64__) || defined(__aarch64__)
#define KILN_CODEC             static inline
#define KILN_COPY(dst, src, n) __builtin_memcpy(dst, src, n)
#else
#define KILN_CODEC             KILN_OUTLINE static
#define KILN_COPY(dst, src, n) copy_bytes((uint8_t*)(dst), (const uint8_t*)(src), n)
#endif

KILN_CODEC void put_u32(uint8_t* p, uint32_t v) {
  KILN_COPY(p, &v, sizeof(v));
}

KILN_CODEC void put_u64(uint8_t* p, uint64_t v) {
  KILN_COPY(p, &v, sizeof(v));
}

KILN_CODEC uint32_t get_u32(const uint8_t* p) {
  uint32_t v;
  KILN_COPY(&v, p, sizeof(v));
  return v;
}

KILN_CODEC uint64_t get_u64(const uint8_t* p) {
  uint64_t v;
  KILN_COPY(&v, p, sizeof(v));
  return v;
}

/* ---- ERROR details ---- */

/* The status of each reason (0: the status comes from the call that failed). */
static const uint16_t kReasonStatus[KILN_REASON_COUNT] = {
    [KILN_REASON_MAGIC] = KILN_ERR_PROTO_MAGIC,
    [KILN_REASON_OVERSIZE] = KILN_ERR_PROTO_OVERSIZE,
    [KILN_REASON_CRC] = KILN_ERR_PROTO_CRC,
    [KILN_REASON_VERSION] = KILN_ERR_PROTO_VERSION,
    [KILN_REASON_TYPE] = KILN_ERR_PROTO_TYPE,
    [KILN_REASON_PAYLOAD] = KILN_ERR_PROTO_PAYLOAD,
    [KILN_REASON_INFO_OFFSET] = KILN_ERR_PROTO_INDEX,
    [KILN_REASON_INPUT_INDEX] = KILN_ERR_PROTO_INDEX,
    [KILN_REASON_INPUT_SIZE] = KILN_ERR_PROTO_SIZE,
    [KILN_REASON_INPUT_RANGE] = KILN_ERR_PROTO_SIZE,
    [KILN_REASON_OUTPUT_INDEX] = KILN_ERR_PROTO_INDEX,
    [KILN_REASON_OUTPUT_RANGE] = KILN_ERR_PROTO_SIZE,
    [KILN_REASON_TIME_ARGS] = KILN_ERR_ARG_RANGE,
    [KILN_REASON_NO_CLOCK] = KILN_ERR_PROTO_UNSUPPORTED,
    [KILN_REASON_NO_PROFILER] = KILN_ERR_PROTO_UNSUPPORTED,
    [KILN_REASON_PROFILE_INDEX] = KILN_ERR_PROTO_INDEX,
    [KILN_REASON_MODEL_INDEX] = KILN_ERR_PROTO_INDEX,
    [KILN_REASON_DIMS_COUNT] = KILN_ERR_PROTO_PAYLOAD,
    [KILN_REASON_DIM_RANGE] = KILN_ERR_ARG_RANGE,
};

/* Records the details of the ERROR reply to come and returns the reason's status. */
KILN_OUTLINE static kiln_status_t fail(kiln_endpoint_t* ep, uint32_t reason, uint64_t a, uint32_t b) {
  ep->reason = (uint8_t)reason;
  ep->numbers[0] = a;
  ep->numbers[1] = b;
  ep->numbers[2] = 0;
  ep->numbers[3] = 0;
  ep->text = NULL;
  return kReasonStatus[reason];
}

/* fail() with no numbers. */
KILN_OUTLINE static kiln_status_t fail0(kiln_endpoint_t* ep, uint32_t reason) {
  return fail(ep, reason, 0, 0);
}

/* The size in bytes of tensor t at the current run-time dimensions. */
static uint64_t tensor_size(const kiln_endpoint_t* ep, const kiln_tensor_info_t* t) {
#if KILN_DYNAMIC_DIMS
  return kiln_tensor_bytes(t, ep->dims);
#else
  (void)ep;
  return t->nbytes;
#endif
}

/* Every run-time dimension of the selected model at its bound. */
static void reset_dims(kiln_endpoint_t* ep) {
  const kiln_model_t* m = ep->config.model;
  for (uint32_t k = 0; KILN_DYNAMIC_DIMS && k < m->num_dims && k < KILN_MAX_DIMS; ++k) {
    ep->dims[k] = m->dim_bounds[k];
  }
}

/* fail() about tensor `index`, `t`: its size and index are numbers 2 and 3, its name the text. */
KILN_OUTLINE static kiln_status_t fail_tensor(kiln_endpoint_t* ep, uint32_t reason, uint64_t a, uint64_t b,
                                              const kiln_tensor_info_t* t, uint32_t index) {
  kiln_status_t status = fail(ep, reason, a, 0);
  ep->numbers[1] = b;
  ep->numbers[2] = tensor_size(ep, t);
  ep->numbers[3] = index;
  ep->text = t->name;
  return status;
}

/* fail() for a call that returned `status`: the reason says which call. */
KILN_OUTLINE static kiln_status_t fail_call(kiln_endpoint_t* ep, uint32_t reason, kiln_status_t status) {
  (void)fail0(ep, reason);
  return status;
}

/* ---- stream ---- */

static kiln_status_t read_some(kiln_endpoint_t* ep, uint8_t* buf, size_t n, size_t* out_got) {
  size_t got = 0;
  kiln_status_t status = ep->config.stream.read(ep->config.stream.context, buf, n, &got);
  if (status == KILN_OK && got > n) {
    status = KILN_ERR_IO_READ;
  }
  *out_got = got;
  return status;
}

/* Reads exactly n bytes; end of stream before that is KILN_ERR_IO_TRUNCATED. */
static kiln_status_t read_exact(kiln_endpoint_t* ep, uint8_t* buf, size_t n) {
  while (n > 0) {
    size_t got = 0;
    kiln_status_t status = read_some(ep, buf, n, &got);
    if (status != KILN_OK) {
      return status;
    }
    if (got == 0) {
      return KILN_ERR_IO_TRUNCATED;
    }
    buf += got;
    n -= got;
  }
  return KILN_OK;
}

static kiln_status_t write_all(kiln_endpoint_t* ep, const uint8_t* data, size_t len) {
  return len == 0 ? KILN_OK : ep->config.stream.write(ep->config.stream.context, data, len);
}

/* CRC-32 of a frame: its header and the first `len` bytes of the frame buffer. */
static uint32_t frame_crc(kiln_endpoint_t* ep, const uint8_t* header, size_t len) {
  uint32_t crc = 0;
  (void)kiln_crc32_update(0, header, KILN_FRAME_HEADER_BYTES, &crc);
  (void)kiln_crc32_update(crc, ep->config.frame, len, &crc);
  return crc;
}

/* Sends a frame whose payload is the first `len` bytes of the frame buffer. */
static kiln_status_t write_frame(kiln_endpoint_t* ep, uint32_t type, size_t len) {
  uint8_t header[KILN_FRAME_HEADER_BYTES] = {'K', 'I', 'L', 'N', KILN_PROTOCOL_VERSION, (uint8_t)type};
  put_u32(header + 8, (uint32_t)len);
  uint8_t trailer[KILN_FRAME_CRC_BYTES];
  put_u32(trailer, frame_crc(ep, header, len));
  kiln_status_t status = write_all(ep, header, sizeof(header));
  if (status == KILN_OK) {
    status = write_all(ep, ep->config.frame, len);
  }
  return status == KILN_OK ? write_all(ep, trailer, sizeof(trailer)) : status;
}

/* Sends ERROR with the details fail() recorded (the frame buffer always has room for it). */
_Static_assert(KILN_ERROR_TEXT_OFFSET + KILN_ENDPOINT_MESSAGE_BYTES <= KILN_ENDPOINT_MIN_PAYLOAD,
               "an ERROR reply fits every frame buffer");
static kiln_status_t write_error(kiln_endpoint_t* ep, uint32_t request_type, kiln_status_t error) {
  uint8_t* p = ep->config.frame;
  put_u32(p, (uint32_t)error);
  p[4] = (uint8_t)request_type;
  p[5] = ep->reason;
  p[6] = 0;
  p[7] = 0;
  copy_bytes(p + 8, (const uint8_t*)ep->numbers, sizeof(ep->numbers));
  size_t n = 0;
  for (const char* t = ep->text; t != NULL && t[n] != '\0' && n < KILN_ENDPOINT_MESSAGE_BYTES; ++n) {
    p[KILN_ERROR_TEXT_OFFSET + n] = (uint8_t)t[n];
  }
  return write_frame(ep, KILN_MSG_ERROR, KILN_ERROR_TEXT_OFFSET + n);
}

/* Reads a frame header, skipping bytes until the magic (one ERROR reply per skipped run). *out_eof is set
 * when the stream ends cleanly before a frame starts. */
static kiln_status_t read_header(kiln_endpoint_t* ep, uint8_t header[KILN_FRAME_HEADER_BYTES], int* out_eof) {
  size_t matched = 0;
  int reported = 0;
  while (matched < sizeof(kMagic)) {
    uint8_t byte = 0;
    size_t got = 0;
    kiln_status_t status = read_some(ep, &byte, 1, &got);
    if (status != KILN_OK) {
      return status;
    }
    if (got == 0) {
      *out_eof = 1;
      return matched != 0 ? KILN_ERR_IO_TRUNCATED : KILN_OK;
    }
    if (byte == kMagic[matched]) {
      header[matched++] = byte;
      continue;
    }
    if (!reported) {
      reported = 1;
      status = write_error(ep, 0, fail0(ep, KILN_REASON_MAGIC));
      if (status != KILN_OK) {
        return status;
      }
    }
    matched = byte == kMagic[0] ? 1 : 0;
  }
  return read_exact(ep, header + sizeof(kMagic), KILN_FRAME_HEADER_BYTES - sizeof(kMagic));
}

/* ---- INFO: a byte window over the info record ---- */

typedef struct {
  uint8_t* out;
  size_t capacity;
  uint64_t skip; /* bytes of the record before the window */
  uint64_t pos;  /* bytes of the record produced so far */
  size_t written;
} window_t;

KILN_OUTLINE static void win_bytes(window_t* w, const uint8_t* data, size_t n) {
  for (size_t i = 0; i < n; ++i, ++w->pos) {
    if (w->pos >= w->skip && w->written < w->capacity) {
      w->out[w->written++] = data[i];
    }
  }
}

KILN_OUTLINE static void win_u32(window_t* w, uint32_t v) {
  win_bytes(w, (const uint8_t*)&v, sizeof(v));
}

KILN_OUTLINE static void win_u64(window_t* w, uint64_t v) {
  win_bytes(w, (const uint8_t*)&v, sizeof(v));
}

KILN_OUTLINE static void win_str(window_t* w, const char* s) {
  uint32_t n = 0;
  while (s[n] != '\0') {
    ++n;
  }
  win_u32(w, n);
  win_bytes(w, (const uint8_t*)s, n);
}

static void win_tensors(window_t* w, const kiln_tensor_info_t* tensors, uint32_t count) {
  win_u32(w, count);
  for (uint32_t i = 0; i < count; ++i) {
    const kiln_tensor_info_t* t = &tensors[i];
    win_str(w, t->name);
    win_bytes(w, (const uint8_t*)&t->dtype, 4); /* u8 code, u8 bits, u16 lanes: DLDataType's layout */
    win_u32(w, (uint32_t)t->ndim);
    win_bytes(w, (const uint8_t*)t->shape, 8 * (size_t)t->ndim); /* i64 shape[ndim] */
    win_u64(w, t->nbytes);
  }
}

static kiln_status_t on_info(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  const kiln_model_t* m = ep->config.model;
  window_t w = {ep->config.frame + 4, ep->config.frame_bytes - 4, get_u32(ep->config.frame), 0, 0};
  win_u32(&w, KILN_ABI_VERSION);
  win_u32(&w, (uint32_t)ep->config.frame_bytes);
  win_u64(&w, ep->ticks_per_second);
  win_u64(&w, m->workspace_bytes);
  win_u64(&w, m->weights_bytes);
  win_str(&w, m->name);
  win_tensors(&w, m->inputs, m->num_inputs);
  win_tensors(&w, m->outputs, m->num_outputs);
  win_u32(&w, m->num_kernels);
  for (uint32_t k = 0; k < m->num_kernels; ++k) {
    win_str(&w, m->kernel_names[k]);
  }
  win_u32(&w, m->num_dims);
  win_u32(&w, m->num_named_dims);
#if KILN_DYNAMIC_DIMS
  win_bytes(&w, (const uint8_t*)m->dim_bounds, 8 * (size_t)m->num_dims);
  for (uint32_t i = 0; m->num_dims > 0 && i < m->num_inputs + m->num_outputs; ++i) {
    const kiln_tensor_info_t* t = i < m->num_inputs ? &m->inputs[i] : &m->outputs[i - m->num_inputs];
    for (int32_t d = 0; d < t->ndim; ++d) {
      uint8_t k = t->dims != NULL ? (uint8_t)t->dims[d] : 0xFFu;
      win_bytes(&w, &k, 1);
    }
  }
#endif
  if (w.skip > w.pos) {
    return fail(ep, KILN_REASON_INFO_OFFSET, w.skip, (uint32_t)w.pos);
  }
  put_u32(ep->config.frame, (uint32_t)w.pos);
  *out_reply = 4 + w.written;
  return KILN_OK;
}

/* ---- tensors ---- */

/* KILN_OK if index < count, else fail(reason, index, count). */
KILN_OUTLINE static kiln_status_t check_index(kiln_endpoint_t* ep, uint32_t reason, uint32_t index,
                                              uint32_t count) {
  return index < count ? KILN_OK : fail(ep, reason, index, count);
}

static kiln_status_t on_set_input(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)out_reply;
  const uint8_t* p = ep->config.frame;
  uint32_t index = get_u32(p);
  uint64_t nbytes = get_u64(p + 4);
  uint64_t offset = get_u64(p + 12);
  uint64_t n = len - 20;
  kiln_status_t status = check_index(ep, KILN_REASON_INPUT_INDEX, index, ep->config.model->num_inputs);
  if (status != KILN_OK) {
    return status;
  }
  const kiln_tensor_info_t* t = &ep->config.model->inputs[index];
  if (nbytes != tensor_size(ep, t)) {
    return fail_tensor(ep, KILN_REASON_INPUT_SIZE, nbytes, 0, t, index);
  }
  if (offset > nbytes || n > nbytes - offset) {
    return fail_tensor(ep, KILN_REASON_INPUT_RANGE, offset, offset + n, t, index);
  }
  copy_bytes((uint8_t*)ep->config.inputs[index] + offset, p + 20, (size_t)n);
  return KILN_OK;
}

static kiln_status_t run_model(kiln_endpoint_t* ep, kiln_profiler_t* prof) {
  const kiln_endpoint_config_t* c = &ep->config;
  kiln_status_t status = kiln_model_run_dims(c->model, c->inputs, c->outputs, c->workspace, prof, ep->dims);
  return status == KILN_OK ? KILN_OK : fail_call(ep, KILN_REASON_RUN, status);
}

static kiln_status_t on_run(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  (void)out_reply;
  return run_model(ep, NULL);
}

static kiln_status_t on_get_output(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  uint8_t* p = ep->config.frame;
  uint32_t index = get_u32(p);
  uint64_t offset = get_u64(p + 4);
  kiln_status_t status = check_index(ep, KILN_REASON_OUTPUT_INDEX, index, ep->config.model->num_outputs);
  if (status != KILN_OK) {
    return status;
  }
  const kiln_tensor_info_t* t = &ep->config.model->outputs[index];
  uint64_t size = tensor_size(ep, t);
  if (offset > size) {
    return fail_tensor(ep, KILN_REASON_OUTPUT_RANGE, offset, 0, t, index);
  }
  uint64_t room = ep->config.frame_bytes - 16;
  uint64_t n = size - offset < room ? size - offset : room;
  put_u64(p, size);
  put_u64(p + 8, offset);
  copy_bytes(p + 16, (const uint8_t*)ep->config.outputs[index] + offset, (size_t)n);
  *out_reply = 16 + (size_t)n;
  return KILN_OK;
}

/* ---- TIME and PROFILE ---- */

static kiln_status_t need_clock(kiln_endpoint_t* ep) {
  return ep->ticks_per_second != 0 ? KILN_OK : fail0(ep, KILN_REASON_NO_CLOCK);
}

static kiln_status_t ticks_now(kiln_endpoint_t* ep, uint64_t* out_ticks) {
  kiln_status_t status = kiln_platform_ticks(out_ticks);
  return status == KILN_OK ? KILN_OK : fail_call(ep, KILN_REASON_CLOCK, status);
}

/* n / d (d > 0) by shift and subtract: TIME's few divisions need no 64-bit division routine. */
KILN_OUTLINE static uint64_t udiv64(uint64_t n, uint64_t d) {
  uint64_t q = 0;
  uint64_t r = 0;
  for (int i = 63; i >= 0; --i) {
    r = r << 1 | (n >> i & 1u);
    if (r >= d) {
      r -= d;
      q |= (uint64_t)1 << i;
    }
  }
  return q;
}

/* Runs the model `number` times and writes the elapsed ticks to *out_ticks. */
KILN_OUTLINE static kiln_status_t time_runs(kiln_endpoint_t* ep, uint32_t number, uint64_t* out_ticks) {
  uint64_t start = 0;
  uint64_t end = 0;
  kiln_status_t status = ticks_now(ep, &start);
  for (uint32_t i = 0; i < number && status == KILN_OK; ++i) {
    status = run_model(ep, NULL);
  }
  if (status == KILN_OK) {
    status = ticks_now(ep, &end);
  }
  *out_ticks = end - start;
  return status;
}

static kiln_status_t on_time(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  uint8_t* p = ep->config.frame;
  uint32_t number = get_u32(p);
  uint32_t repeat = get_u32(p + 4);
  uint32_t min_repeat_ms = get_u32(p + 8);
  uint32_t max_repeat = (uint32_t)((ep->config.frame_bytes - 12) / 12);
  /* 1 <= number <= KILN_TIME_MAX_NUMBER, 1 <= repeat <= max_repeat (0 - 1 wraps around) */
  if (number - 1u >= KILN_TIME_MAX_NUMBER || repeat - 1u >= max_repeat ||
      min_repeat_ms > KILN_TIME_MAX_MIN_REPEAT_MS) {
    return fail(ep, KILN_REASON_TIME_ARGS, max_repeat, 0);
  }
  kiln_status_t status = need_clock(ep);
  if (status == KILN_OK) {
    status = run_model(ep, NULL); /* warm-up */
  }
  uint64_t tps = ep->ticks_per_second;
  uint64_t tps_k = udiv64(tps, 1000);
  uint64_t min_ticks = min_repeat_ms * tps_k + udiv64(min_repeat_ms * (tps - tps_k * 1000), 1000);
  uint8_t* q = p + 12;
  for (uint32_t r = 0; r < repeat && status == KILN_OK; ++r, q += 12) {
    uint64_t ticks = 0;
    while ((status = time_runs(ep, number, &ticks)) == KILN_OK && ticks < min_ticks &&
           number < KILN_TIME_MAX_NUMBER) {
      uint64_t per_run = udiv64(ticks, number);
      uint64_t grown = udiv64(min_ticks, per_run > 0 ? per_run : 1) + 1;
      uint64_t at_least = (uint64_t)number + number / 2 + 1;
      grown = grown > at_least ? grown : at_least;
      number = grown < KILN_TIME_MAX_NUMBER ? (uint32_t)grown : KILN_TIME_MAX_NUMBER;
    }
    put_u32(q, number);
    put_u64(q + 4, ticks);
  }
  if (status != KILN_OK) {
    return status;
  }
  put_u64(p, tps);
  put_u32(p + 8, repeat);
  *out_reply = 12 + 12 * (size_t)repeat;
  return KILN_OK;
}

static kiln_status_t on_profile(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  uint8_t* p = ep->config.frame;
  uint32_t first = get_u32(p);
  kiln_profiler_t* prof = ep->config.profiler;
  if (prof == NULL) {
    return fail0(ep, KILN_REASON_NO_PROFILER);
  }
  kiln_status_t status = need_clock(ep);
  if (status == KILN_OK && first == 0) {
    (void)kiln_profiler_reset(prof);
    status = run_model(ep, prof);
  }
  if (status != KILN_OK) {
    return status;
  }
  if (first > prof->count) {
    return fail(ep, KILN_REASON_PROFILE_INDEX, first, prof->count);
  }
  size_t room = (ep->config.frame_bytes - 24) / 20;
  size_t n = prof->count - first < room ? prof->count - first : room;
  put_u64(p, ep->ticks_per_second);
  put_u32(p + 8, prof->count);
  put_u32(p + 12, prof->dropped);
  put_u32(p + 16, first);
  put_u32(p + 20, (uint32_t)n);
  for (size_t i = 0; i < n; ++i) {
    const kiln_profile_record_t* r = &prof->records[first + i];
    uint8_t* q = p + 24 + 20 * i;
    put_u32(q, r->kernel);
    put_u64(q + 4, r->start);
    put_u64(q + 12, (r->flags & KILN_PROFILE_OPEN) != 0 ? r->start : r->end);
  }
  *out_reply = 24 + 20 * n;
  return KILN_OK;
}

/* ---- QUIT and SELECT ---- */

static kiln_status_t on_quit(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)ep;
  (void)len;
  (void)out_reply;
  return KILN_OK;
}

static kiln_status_t on_select(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  (void)len;
  uint32_t index = get_u32(ep->config.frame);
  uint32_t count = ep->config.num_models > 1 && ep->config.select != NULL ? ep->config.num_models : 1;
  kiln_status_t status = check_index(ep, KILN_REASON_MODEL_INDEX, index, count);
  if (status == KILN_OK && count > 1) {
    status = ep->config.select(&ep->config, index);
    if (status != KILN_OK) {
      return fail_call(ep, KILN_REASON_SELECT, status);
    }
  }
  reset_dims(ep);
  put_u32(ep->config.frame, count);
  *out_reply = 4;
  return status;
}

static kiln_status_t on_dims(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
#if KILN_DYNAMIC_DIMS
  uint8_t* p = ep->config.frame;
  const kiln_model_t* m = ep->config.model;
  uint32_t count = get_u32(p);
  if ((count != 0 && count != m->num_named_dims) || len != 4 + 8 * (size_t)count) {
    return fail(ep, KILN_REASON_DIMS_COUNT, count, m->num_named_dims);
  }
  for (uint32_t k = 0; k < count; ++k) {
    int64_t v = (int64_t)get_u64(p + 4 + 8 * k);
    if (v < 1 || v > m->dim_bounds[k]) {
      kiln_status_t status = fail(ep, KILN_REASON_DIM_RANGE, k, (uint64_t)v);
      ep->numbers[2] = (uint64_t)m->dim_bounds[k];
      return status;
    }
  }
  for (uint32_t k = 0; k < count; ++k) {
    ep->dims[k] = (int64_t)get_u64(p + 4 + 8 * k);
  }
  put_u32(p, m->num_dims);
  copy_bytes(p + 4, (const uint8_t*)ep->dims, 8 * (size_t)m->num_dims);
  *out_reply = 4 + 8 * (size_t)m->num_dims;
  return KILN_OK;
#else
  (void)len;
  (void)out_reply;
  return fail(ep, KILN_REASON_TYPE, KILN_MSG_DIMS, 0);
#endif
}

/* ---- dispatch ---- */

typedef kiln_status_t (*handler_t)(kiln_endpoint_t* ep, size_t len, size_t* out_reply);

/* Request type t (KILN_MSG_INFO..KILN_MSG_SELECT) is served by kHandlers[t - 1]; its payload is exactly
 * kPayload[t - 1] bytes long, or at least that many with KILN_AT_LEAST. */
#define KILN_AT_LEAST 0x80u
static const handler_t kHandlers[] = {on_info, on_set_input, on_run,    on_get_output, on_time,
                                      on_profile, on_quit,    on_select, on_dims};
static const uint8_t kPayload[] = {4, 20 | KILN_AT_LEAST, 0, 12, 12, 4, 0, 4, 4 | KILN_AT_LEAST};
_Static_assert(sizeof(kPayload) == KILN_MSG_DIMS && sizeof(kHandlers) / sizeof(kHandlers[0]) == KILN_MSG_DIMS,
               "one handler and one payload length per request type");

static kiln_status_t serve_request(kiln_endpoint_t* ep, uint32_t type, size_t len, size_t* out_reply) {
  uint32_t i = type - 1u;
  if (i >= sizeof(kPayload)) {
    return fail(ep, KILN_REASON_TYPE, type, 0);
  }
  size_t want = kPayload[i] & ~KILN_AT_LEAST;
  if ((kPayload[i] & KILN_AT_LEAST) != 0 ? len < want : len != want) {
    return fail(ep, KILN_REASON_PAYLOAD, len, (uint32_t)want);
  }
  return kHandlers[i](ep, len, out_reply);
}

/* ---- public API ---- */

kiln_status_t kiln_endpoint_init(const kiln_endpoint_config_t* config, kiln_endpoint_t* out_endpoint) {
  if (config == NULL || out_endpoint == NULL || config->model == NULL || config->frame == NULL ||
      config->stream.read == NULL || config->stream.write == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  if (config->frame_bytes < KILN_ENDPOINT_MIN_PAYLOAD || config->frame_bytes > KILN_ENDPOINT_MAX_PAYLOAD) {
    return KILN_ERR_ARG_SIZE;
  }
  kiln_status_t status = kiln_model_check(config->model);
  if (status != KILN_OK) {
    return status;
  }
  const kiln_model_t* m = config->model;
  if ((m->num_inputs > 0 && config->inputs == NULL) || (m->num_outputs > 0 && config->outputs == NULL) ||
      (m->workspace_bytes > 0 && config->workspace == NULL)) {
    return KILN_ERR_ARG_NULL;
  }
  uint64_t tps = 0;
  if (kiln_platform_ticks_per_second(&tps) != KILN_OK) {
    tps = 0;
  }
  out_endpoint->config = *config;
  out_endpoint->ticks_per_second = tps;
  reset_dims(out_endpoint);
  return KILN_OK;
}

kiln_status_t kiln_endpoint_step(kiln_endpoint_t* ep, int* out_more) {
  if (ep == NULL || out_more == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  uint8_t header[KILN_FRAME_HEADER_BYTES];
  int eof = 0;
  kiln_status_t status = read_header(ep, header, &eof);
  if (status != KILN_OK || eof) {
    if (status == KILN_OK) {
      *out_more = 0;
    }
    return status;
  }
  uint32_t type = header[5];
  uint32_t len = get_u32(header + 8);
  /* the payload (through the frame buffer, in pieces if it does not fit: then it is dropped) and the CRC */
  for (size_t left = len; left > 0 && status == KILN_OK;) {
    size_t chunk = left < ep->config.frame_bytes ? left : ep->config.frame_bytes;
    status = read_exact(ep, ep->config.frame, chunk);
    left -= chunk;
  }
  uint8_t trailer[KILN_FRAME_CRC_BYTES];
  if (status == KILN_OK) {
    status = read_exact(ep, trailer, sizeof(trailer));
  }
  if (status != KILN_OK) {
    return status;
  }
  kiln_status_t error = KILN_OK;
  if (len > ep->config.frame_bytes) {
    error = fail(ep, KILN_REASON_OVERSIZE, len, (uint32_t)ep->config.frame_bytes);
  } else if (frame_crc(ep, header, len) != get_u32(trailer)) {
    error = fail0(ep, KILN_REASON_CRC);
  } else if (header[4] != KILN_PROTOCOL_VERSION) {
    error = fail(ep, KILN_REASON_VERSION, header[4], KILN_PROTOCOL_VERSION);
  }
  size_t reply = 0;
  if (error == KILN_OK) {
    error = serve_request(ep, type, len, &reply);
  }
  status = error == KILN_OK ? write_frame(ep, type | KILN_MSG_REPLY, reply) : write_error(ep, type, error);
  if (status == KILN_OK) {
    *out_more = type != KILN_MSG_QUIT || error != KILN_OK;
  }
  return status;
}

kiln_status_t kiln_endpoint_send_error(kiln_endpoint_t* ep, kiln_status_t status, const char* message) {
  if (ep == NULL || message == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  (void)fail0(ep, KILN_REASON_TEXT);
  ep->text = message;
  return write_error(ep, 0, status);
}

kiln_status_t kiln_endpoint_serve(kiln_endpoint_t* ep) {
  int more = 1;
  kiln_status_t status = KILN_OK;
  while (status == KILN_OK && more) {
    status = kiln_endpoint_step(ep, &more);
  }
  return status;
}
