/* kiln runtime: device-protocol endpoint (frame format and messages are documented in endpoint.h).
 *
 * Request handlers parse their payload into locals first and then build the reply in the same frame
 * buffer. On failure a handler fills ep->message and returns the status that goes into the ERROR reply.
 */
#include "kiln/endpoint.h"

#include "kiln/platform.h"

/* Helpers called from many places stay out of line: the endpoint is built for size on microcontrollers. */
#define KILN_OUTLINE __attribute__((noinline))

static const uint8_t kMagic[4] = {'K', 'I', 'L', 'N'};

/* ---- little-endian encoding ---- */

KILN_OUTLINE static void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

KILN_OUTLINE static void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

KILN_OUTLINE static uint32_t get_u32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

KILN_OUTLINE static uint64_t get_u64(const uint8_t* p) {
  return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

KILN_OUTLINE static void copy_bytes(uint8_t* dst, const uint8_t* src, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    dst[i] = src[i];
  }
}

static size_t text_length(const char* s) {
  size_t n = 0;
  while (s[n] != '\0') {
    ++n;
  }
  return n;
}

/* ---- ERROR message text ---- */

KILN_OUTLINE static void msg_str(kiln_endpoint_t* ep, const char* s) {
  while (*s != '\0' && ep->message_len < KILN_ENDPOINT_MESSAGE_BYTES) {
    ep->message[ep->message_len++] = *s++;
  }
}

/* v / 10 (the remainder in *rem) with 32-bit divisions only: no 64-bit division routine linked in. */
KILN_OUTLINE static uint64_t div10(uint64_t v, uint32_t* rem) {
  uint32_t hi = (uint32_t)(v >> 32);
  uint32_t mid = (hi % 10u) << 16 | (uint32_t)(v >> 16 & 0xFFFFu);
  uint32_t lo = (mid % 10u) << 16 | (uint32_t)(v & 0xFFFFu);
  *rem = lo % 10u;
  return (uint64_t)(hi / 10u) << 32 | (uint64_t)(mid / 10u) << 16 | (lo / 10u);
}

KILN_OUTLINE static void msg_u64(kiln_endpoint_t* ep, uint64_t v) {
  char digits[20];
  size_t n = 0;
  do {
    uint32_t r;
    v = div10(v, &r);
    digits[n++] = (char)('0' + r);
  } while (v != 0);
  while (n > 0 && ep->message_len < KILN_ENDPOINT_MESSAGE_BYTES) {
    ep->message[ep->message_len++] = digits[--n];
  }
}

/* "input 0 (x)" */
KILN_OUTLINE static void msg_tensor(kiln_endpoint_t* ep, int is_output, uint32_t index) {
  const kiln_model_t* m = ep->config.model;
  msg_str(ep, is_output ? "output " : "input ");
  msg_u64(ep, index);
  msg_str(ep, " (");
  msg_str(ep, is_output ? m->outputs[index].name : m->inputs[index].name);
  msg_str(ep, ")");
}

KILN_OUTLINE static kiln_status_t fail_payload(kiln_endpoint_t* ep, size_t got, size_t want) {
  msg_str(ep, "payload has ");
  msg_u64(ep, got);
  msg_str(ep, " bytes, this message needs ");
  msg_u64(ep, want);
  return KILN_ERR_PROTO_PAYLOAD;
}

/* The status itself travels in the ERROR frame: the host names it (kiln.runtime_c.abi.status_name). */
static kiln_status_t fail_status(kiln_endpoint_t* ep, const char* what, kiln_status_t status) {
  msg_str(ep, what);
  return status;
}

/* ---- stream ---- */

static kiln_status_t read_some(kiln_endpoint_t* ep, uint8_t* buf, size_t n, size_t* out_got) {
  size_t got = 0;
  kiln_status_t status = ep->config.stream.read(ep->config.stream.context, buf, n, &got);
  if (status != KILN_OK) {
    return status;
  }
  if (got > n) {
    return KILN_ERR_IO_READ;
  }
  *out_got = got;
  return KILN_OK;
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

/* Reads and drops n bytes through the frame buffer. */
static kiln_status_t drain(kiln_endpoint_t* ep, uint64_t n) {
  while (n > 0) {
    size_t chunk = n < ep->config.frame_bytes ? (size_t)n : ep->config.frame_bytes;
    kiln_status_t status = read_exact(ep, ep->config.frame, chunk);
    if (status != KILN_OK) {
      return status;
    }
    n -= chunk;
  }
  return KILN_OK;
}

static kiln_status_t write_all(kiln_endpoint_t* ep, const uint8_t* data, size_t len) {
  return len == 0 ? KILN_OK : ep->config.stream.write(ep->config.stream.context, data, len);
}

/* Sends a frame whose payload is the first `len` bytes of the frame buffer. */
static kiln_status_t write_frame(kiln_endpoint_t* ep, uint8_t type, size_t len) {
  uint8_t header[KILN_FRAME_HEADER_BYTES] = {0};
  copy_bytes(header, kMagic, 4);
  header[4] = (uint8_t)KILN_PROTOCOL_VERSION;
  header[5] = type;
  put_u32(header + 8, (uint32_t)len);
  uint32_t crc = 0;
  (void)kiln_crc32_update(0, header, sizeof(header), &crc);
  (void)kiln_crc32_update(crc, ep->config.frame, len, &crc);
  uint8_t trailer[KILN_FRAME_CRC_BYTES];
  put_u32(trailer, crc);
  kiln_status_t status = write_all(ep, header, sizeof(header));
  if (status == KILN_OK) {
    status = write_all(ep, ep->config.frame, len);
  }
  return status == KILN_OK ? write_all(ep, trailer, sizeof(trailer)) : status;
}

/* Sends ERROR with ep->message (the frame buffer always has room: KILN_ENDPOINT_MIN_PAYLOAD > 5 + 160). */
static kiln_status_t write_error(kiln_endpoint_t* ep, uint8_t request_type, kiln_status_t error) {
  uint8_t* p = ep->config.frame;
  put_u32(p, (uint32_t)error);
  p[4] = request_type;
  copy_bytes(p + 5, (const uint8_t*)ep->message, ep->message_len);
  size_t len = 5 + ep->message_len;
  ep->message_len = 0;
  return write_frame(ep, KILN_MSG_ERROR, len);
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
      if (matched != 0) {
        return KILN_ERR_IO_TRUNCATED;
      }
      *out_eof = 1;
      return KILN_OK;
    }
    if (byte == kMagic[matched]) {
      header[matched++] = byte;
      continue;
    }
    if (!reported) {
      reported = 1;
      msg_str(ep, "frame does not start with the magic \"KILN\"; skipping bytes up to the next frame");
      status = write_error(ep, 0, KILN_ERR_PROTO_MAGIC);
      if (status != KILN_OK) {
        return status;
      }
    }
    matched = byte == kMagic[0] ? 1 : 0;
  }
  *out_eof = 0;
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
  uint8_t b[4];
  put_u32(b, v);
  win_bytes(w, b, sizeof(b));
}

KILN_OUTLINE static void win_u64(window_t* w, uint64_t v) {
  uint8_t b[8];
  put_u64(b, v);
  win_bytes(w, b, sizeof(b));
}

static void win_str(window_t* w, const char* s) {
  size_t n = text_length(s);
  win_u32(w, (uint32_t)n);
  win_bytes(w, (const uint8_t*)s, n);
}

static void win_tensors(window_t* w, const kiln_tensor_info_t* tensors, uint32_t count) {
  win_u32(w, count);
  for (uint32_t i = 0; i < count; ++i) {
    const kiln_tensor_info_t* t = &tensors[i];
    uint8_t dtype[4] = {t->dtype.code, t->dtype.bits, (uint8_t)t->dtype.lanes,
                        (uint8_t)(t->dtype.lanes >> 8)};
    win_str(w, t->name);
    win_bytes(w, dtype, sizeof(dtype));
    win_u32(w, (uint32_t)t->ndim);
    for (int32_t d = 0; d < t->ndim; ++d) {
      win_u64(w, (uint64_t)t->shape[d]);
    }
    win_u64(w, t->nbytes);
  }
}

static kiln_status_t on_info(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len != 4) {
    return fail_payload(ep, len, 4);
  }
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
  if (w.skip > w.pos) {
    msg_str(ep, "info offset ");
    msg_u64(ep, w.skip);
    msg_str(ep, " is past the end of the info record (");
    msg_u64(ep, w.pos);
    msg_str(ep, " bytes)");
    return KILN_ERR_PROTO_INDEX;
  }
  put_u32(ep->config.frame, (uint32_t)w.pos);
  *out_reply = 4 + w.written;
  return KILN_OK;
}

/* ---- tensors ---- */

KILN_OUTLINE static kiln_status_t check_index(kiln_endpoint_t* ep, int is_output, uint32_t index) {
  const kiln_model_t* m = ep->config.model;
  uint32_t count = is_output ? m->num_outputs : m->num_inputs;
  if (index < count) {
    return KILN_OK;
  }
  msg_str(ep, is_output ? "output index " : "input index ");
  msg_u64(ep, index);
  msg_str(ep, " is out of range: the model has ");
  msg_u64(ep, count);
  return KILN_ERR_PROTO_INDEX;
}

static kiln_status_t on_set_input(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len < 20) {
    return fail_payload(ep, len, 20);
  }
  const uint8_t* p = ep->config.frame;
  uint32_t index = get_u32(p);
  uint64_t nbytes = get_u64(p + 4);
  uint64_t offset = get_u64(p + 12);
  uint64_t n = len - 20;
  kiln_status_t status = check_index(ep, 0, index);
  if (status != KILN_OK) {
    return status;
  }
  uint64_t size = ep->config.model->inputs[index].nbytes;
  if (nbytes != size) {
    msg_tensor(ep, 0, index);
    msg_str(ep, " has ");
    msg_u64(ep, size);
    msg_str(ep, " bytes, the request sends ");
    msg_u64(ep, nbytes);
    return KILN_ERR_PROTO_SIZE;
  }
  if (offset > size || n > size - offset) {
    msg_str(ep, "bytes [");
    msg_u64(ep, offset);
    msg_str(ep, ", ");
    msg_u64(ep, offset + n);
    msg_str(ep, ") fall outside ");
    msg_tensor(ep, 0, index);
    msg_str(ep, " of ");
    msg_u64(ep, size);
    msg_str(ep, " bytes");
    return KILN_ERR_PROTO_SIZE;
  }
  copy_bytes((uint8_t*)ep->config.inputs[index] + offset, p + 20, (size_t)n);
  *out_reply = 0;
  return KILN_OK;
}

static kiln_status_t run_model(kiln_endpoint_t* ep, kiln_profiler_t* prof) {
  const kiln_endpoint_config_t* c = &ep->config;
  kiln_status_t status = kiln_model_run(c->model, c->inputs, c->outputs, c->workspace, prof);
  return status == KILN_OK ? KILN_OK : fail_status(ep, "model run failed", status);
}

static kiln_status_t on_run(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len != 0) {
    return fail_payload(ep, len, 0);
  }
  kiln_status_t status = run_model(ep, NULL);
  if (status == KILN_OK) {
    *out_reply = 0;
  }
  return status;
}

static kiln_status_t on_get_output(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len != 12) {
    return fail_payload(ep, len, 12);
  }
  uint8_t* p = ep->config.frame;
  uint32_t index = get_u32(p);
  uint64_t offset = get_u64(p + 4);
  kiln_status_t status = check_index(ep, 1, index);
  if (status != KILN_OK) {
    return status;
  }
  uint64_t size = ep->config.model->outputs[index].nbytes;
  if (offset > size) {
    msg_str(ep, "offset ");
    msg_u64(ep, offset);
    msg_str(ep, " is past the end of ");
    msg_tensor(ep, 1, index);
    msg_str(ep, " of ");
    msg_u64(ep, size);
    msg_str(ep, " bytes");
    return KILN_ERR_PROTO_SIZE;
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
  if (ep->ticks_per_second != 0) {
    return KILN_OK;
  }
  msg_str(ep, "this device has no clock: implement kiln_platform_ticks and kiln_platform_ticks_per_second");
  return KILN_ERR_PROTO_UNSUPPORTED;
}

static kiln_status_t ticks_now(kiln_endpoint_t* ep, uint64_t* out_ticks) {
  kiln_status_t status = kiln_platform_ticks(out_ticks);
  return status == KILN_OK ? KILN_OK : fail_status(ep, "reading the clock failed", status);
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
static kiln_status_t time_runs(kiln_endpoint_t* ep, uint32_t number, uint64_t* out_ticks) {
  uint64_t start = 0;
  uint64_t end = 0;
  kiln_status_t status = ticks_now(ep, &start);
  for (uint32_t i = 0; i < number && status == KILN_OK; ++i) {
    status = run_model(ep, NULL);
  }
  if (status == KILN_OK) {
    status = ticks_now(ep, &end);
  }
  if (status == KILN_OK) {
    *out_ticks = end - start;
  }
  return status;
}

static kiln_status_t on_time(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len != 12) {
    return fail_payload(ep, len, 12);
  }
  uint8_t* p = ep->config.frame;
  uint32_t number = get_u32(p);
  uint32_t repeat = get_u32(p + 4);
  uint32_t min_repeat_ms = get_u32(p + 8);
  uint64_t max_repeat = (ep->config.frame_bytes - 12) / 12;
  if (number == 0 || number > KILN_TIME_MAX_NUMBER || repeat == 0 || repeat > max_repeat ||
      min_repeat_ms > KILN_TIME_MAX_MIN_REPEAT_MS) {
    msg_str(ep, "TIME needs 1 <= number <= ");
    msg_u64(ep, KILN_TIME_MAX_NUMBER);
    msg_str(ep, ", 1 <= repeat <= ");
    msg_u64(ep, max_repeat);
    msg_str(ep, ", min_repeat_ms <= ");
    msg_u64(ep, KILN_TIME_MAX_MIN_REPEAT_MS);
    return KILN_ERR_ARG_RANGE;
  }
  kiln_status_t status = need_clock(ep);
  if (status == KILN_OK) {
    status = run_model(ep, NULL); /* warm-up */
  }
  uint64_t tps = ep->ticks_per_second;
  uint64_t tps_k = udiv64(tps, 1000);
  uint64_t min_ticks = min_repeat_ms * tps_k + udiv64(min_repeat_ms * (tps - tps_k * 1000), 1000);
  for (uint32_t r = 0; r < repeat && status == KILN_OK; ++r) {
    uint64_t ticks = 0;
    for (;;) {
      status = time_runs(ep, number, &ticks);
      if (status != KILN_OK || ticks >= min_ticks || number >= KILN_TIME_MAX_NUMBER) {
        break;
      }
      uint64_t per_run = udiv64(ticks, number);
      uint64_t grown = udiv64(min_ticks, per_run > 0 ? per_run : 1) + 1;
      uint64_t at_least = (uint64_t)number + number / 2 + 1;
      grown = grown > at_least ? grown : at_least;
      number = grown < KILN_TIME_MAX_NUMBER ? (uint32_t)grown : KILN_TIME_MAX_NUMBER;
    }
    put_u32(p + 12 + 12 * (size_t)r, number);
    put_u64(p + 16 + 12 * (size_t)r, ticks);
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
  if (len != 4) {
    return fail_payload(ep, len, 4);
  }
  uint8_t* p = ep->config.frame;
  uint32_t first = get_u32(p);
  kiln_profiler_t* prof = ep->config.profiler;
  if (prof == NULL) {
    msg_str(ep, "this endpoint was started without a profiler buffer");
    return KILN_ERR_PROTO_UNSUPPORTED;
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
    msg_str(ep, "profile record ");
    msg_u64(ep, first);
    msg_str(ep, " is past the last one (");
    msg_u64(ep, prof->count);
    msg_str(ep, " records)");
    return KILN_ERR_PROTO_INDEX;
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

/* ---- SELECT ---- */

static kiln_status_t on_select(kiln_endpoint_t* ep, size_t len, size_t* out_reply) {
  if (len != 4) {
    return fail_payload(ep, len, 4);
  }
  uint32_t index = get_u32(ep->config.frame);
  uint32_t count = ep->config.num_models > 1 && ep->config.select != NULL ? ep->config.num_models : 1;
  if (index >= count) {
    msg_str(ep, "model index ");
    msg_u64(ep, index);
    msg_str(ep, " is out of range: the device has ");
    msg_u64(ep, count);
    return KILN_ERR_PROTO_INDEX;
  }
  if (count > 1) {
    kiln_status_t status = ep->config.select(&ep->config, index);
    if (status != KILN_OK) {
      return fail_status(ep, "selecting the model failed", status);
    }
  }
  put_u32(ep->config.frame, count);
  *out_reply = 4;
  return KILN_OK;
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
  out_endpoint->message_len = 0;
  return KILN_OK;
}

kiln_status_t kiln_endpoint_step(kiln_endpoint_t* ep, int* out_more) {
  if (ep == NULL || out_more == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  ep->message_len = 0;
  uint8_t header[KILN_FRAME_HEADER_BYTES];
  int eof = 0;
  kiln_status_t status = read_header(ep, header, &eof);
  if (status != KILN_OK || eof) {
    if (status == KILN_OK) {
      *out_more = 0;
    }
    return status;
  }
  uint8_t type = header[5];
  uint32_t len = get_u32(header + 8);
  kiln_status_t error = KILN_OK;
  if (len > ep->config.frame_bytes) {
    status = drain(ep, (uint64_t)len + KILN_FRAME_CRC_BYTES);
    msg_str(ep, "frame payload of ");
    msg_u64(ep, len);
    msg_str(ep, " bytes exceeds this device's limit of ");
    msg_u64(ep, ep->config.frame_bytes);
    error = KILN_ERR_PROTO_OVERSIZE;
  } else {
    uint8_t trailer[KILN_FRAME_CRC_BYTES] = {0};
    status = read_exact(ep, ep->config.frame, len);
    if (status == KILN_OK) {
      status = read_exact(ep, trailer, sizeof(trailer));
    }
    if (status != KILN_OK) {
      return status;
    }
    uint32_t crc = 0;
    (void)kiln_crc32_update(0, header, sizeof(header), &crc);
    (void)kiln_crc32_update(crc, ep->config.frame, len, &crc);
    if (crc != get_u32(trailer)) {
      msg_str(ep, "frame CRC-32 mismatch: the frame was corrupted in transit");
      error = KILN_ERR_PROTO_CRC;
    } else if (header[4] != KILN_PROTOCOL_VERSION) {
      msg_str(ep, "protocol version ");
      msg_u64(ep, header[4]);
      msg_str(ep, " is not supported; this device speaks version ");
      msg_u64(ep, KILN_PROTOCOL_VERSION);
      error = KILN_ERR_PROTO_VERSION;
    }
  }
  if (status != KILN_OK) {
    return status;
  }
  int more = 1;
  size_t reply = 0;
  if (error == KILN_OK) {
    switch (type) {
      case KILN_MSG_INFO:
        error = on_info(ep, len, &reply);
        break;
      case KILN_MSG_SET_INPUT:
        error = on_set_input(ep, len, &reply);
        break;
      case KILN_MSG_RUN:
        error = on_run(ep, len, &reply);
        break;
      case KILN_MSG_GET_OUTPUT:
        error = on_get_output(ep, len, &reply);
        break;
      case KILN_MSG_TIME:
        error = on_time(ep, len, &reply);
        break;
      case KILN_MSG_PROFILE:
        error = on_profile(ep, len, &reply);
        break;
      case KILN_MSG_SELECT:
        error = on_select(ep, len, &reply);
        break;
      case KILN_MSG_QUIT:
        error = len == 0 ? KILN_OK : fail_payload(ep, len, 0);
        more = error != KILN_OK;
        break;
      default:
        msg_str(ep, "unknown message type ");
        msg_u64(ep, type);
        error = KILN_ERR_PROTO_TYPE;
        break;
    }
  }
  status = error == KILN_OK ? write_frame(ep, (uint8_t)(type | KILN_MSG_REPLY), reply)
                            : write_error(ep, type, error);
  if (status == KILN_OK) {
    *out_more = more;
  }
  return status;
}

kiln_status_t kiln_endpoint_send_error(kiln_endpoint_t* ep, kiln_status_t status, const char* message) {
  if (ep == NULL || message == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  ep->message_len = 0;
  msg_str(ep, message);
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
