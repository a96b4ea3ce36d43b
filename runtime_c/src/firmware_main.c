/* kiln firmware main: serves the device protocol (endpoint.h) for the linked model over the board's UART.
 *
 * Platform glue, like the Linux runner, but with no C library: every buffer is static (the frame buffer here,
 * each model's I/O buffers, arena and profiler records in its `<prefix>_memory`, generated per model). It
 * serves the models of kiln_firmware_models (generated per image): model 0 at start, SELECT picks another.
 * The byte stream is the port's UART (port/port.h). After QUIT it serves the next session; a UART has no end
 * of stream. A hardware fault is reported as an ERROR frame with KILN_ERR_PLATFORM_FAULT, then the core
 * halts.
 */
#include "kiln/endpoint.h"
#include "kiln/firmware.h"
#include "kiln/platform.h"
#include "port/port.h"

#if KILN_FIRMWARE_FRAME_BYTES < KILN_ENDPOINT_MIN_PAYLOAD || \
    KILN_FIRMWARE_FRAME_BYTES > KILN_ENDPOINT_MAX_PAYLOAD
#error "KILN_FIRMWARE_FRAME_BYTES must be within KILN_ENDPOINT_MIN_PAYLOAD..KILN_ENDPOINT_MAX_PAYLOAD"
#endif

static uint8_t g_frame[KILN_FIRMWARE_FRAME_BYTES] __attribute__((aligned(8)));
/* The fault handler's own stack (port.h): the main stack may be what failed, or too small to report from. */
uint64_t kiln_fault_stack[KILN_FAULT_STACK_BYTES / 8];
static kiln_endpoint_t g_endpoint;
static kiln_profiler_t g_profiler;
static int g_ready;

/* Blocks for the first byte, then takes what is already waiting; then restarts the timer's phase (port.h). */
static kiln_status_t uart_read(void* context, uint8_t* buffer, size_t capacity, size_t* out_len) {
  (void)context;
  size_t n = 0;
  buffer[n++] = kiln_port_uart_getc();
  while (n < capacity) {
    int c = kiln_port_uart_try_getc();
    if (c < 0) {
      break;
    }
    buffer[n++] = (uint8_t)c;
  }
  kiln_port_timer_sync();
  *out_len = n;
  return KILN_OK;
}

static kiln_status_t uart_write(void* context, const uint8_t* data, size_t len) {
  (void)context;
  for (size_t i = 0; i < len; ++i) {
    kiln_port_uart_putc(data[i]);
  }
  return KILN_OK;
}

kiln_status_t kiln_platform_init(void) {
  kiln_port_uart_init();
  kiln_port_timer_init();
  return KILN_OK;
}

void kiln_port_text(char* buf, size_t cap, size_t* len, const char* s) {
  while (*s != '\0' && *len + 1 < cap) {
    buf[(*len)++] = *s++;
  }
}

void kiln_port_hex(char* buf, size_t cap, size_t* len, uint32_t v) {
  char digits[11] = {'0', 'x'};
  for (int i = 0; i < 8; ++i) {
    digits[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 0xFu];
  }
  digits[10] = '\0';
  kiln_port_text(buf, cap, len, digits);
}

KILN_NORETURN void kiln_port_fault(const char* what, uint32_t pc, const char* detail) {
  if (g_ready) {
    char text[KILN_ENDPOINT_MESSAGE_BYTES + 1];
    size_t n = 0;
    kiln_port_text(text, sizeof(text), &n, "the board faulted: ");
    kiln_port_text(text, sizeof(text), &n, what);
    if (pc != 0) {
      kiln_port_text(text, sizeof(text), &n, " at pc ");
      kiln_port_hex(text, sizeof(text), &n, pc);
    }
    if (detail != NULL) {
      kiln_port_text(text, sizeof(text), &n, " (");
      kiln_port_text(text, sizeof(text), &n, detail);
      kiln_port_text(text, sizeof(text), &n, ")");
    }
    text[n] = '\0';
    (void)kiln_endpoint_send_error(&g_endpoint, KILN_ERR_PLATFORM_FAULT, text);
  }
  kiln_port_halt();
}

KILN_NORETURN void kiln_platform_abort(kiln_status_t status) {
  char text[24] = "status ";
  size_t n = 7;
  kiln_port_hex(text, sizeof(text), &n, (uint32_t)status);
  text[n] = '\0';
  kiln_port_fault("abort", 0, text);
}

/* Points the endpoint at model `index` of kiln_firmware_models (SELECT, and model 0 at start). */
static kiln_status_t select_model(kiln_endpoint_config_t* config, uint32_t index) {
  const kiln_firmware_model_t* m = &kiln_firmware_models[index];
  const kiln_model_memory_t* mem = m->memory;
  kiln_status_t status = kiln_model_check(m->model);
  if (status != KILN_OK) {
    return status;
  }
  config->model = m->model;
  config->inputs = mem->inputs;
  config->outputs = mem->outputs;
  config->workspace = mem->workspace;
  status = kiln_profiler_init(mem->records, mem->num_records, &g_profiler);
  config->profiler = status == KILN_OK ? &g_profiler : NULL;
  return KILN_OK;
}

int main(void) {
  /* a fault from here on is reported: the fault handler needs only the stream and the frame buffer */
  g_endpoint.config.stream = (kiln_stream_t){.context = NULL, .read = uart_read, .write = uart_write};
  g_endpoint.config.frame = g_frame;
  g_endpoint.config.frame_bytes = sizeof(g_frame);
  (void)kiln_platform_init();
  g_ready = 1;
  kiln_endpoint_config_t config = g_endpoint.config;
  config.num_models = kiln_firmware_num_models;
  config.select = select_model;
  kiln_status_t status = select_model(&config, 0);
  if (status == KILN_OK) {
    status = kiln_endpoint_init(&config, &g_endpoint);
  }
  if (status != KILN_OK) {
    kiln_platform_abort(status);
  }
  for (;;) {
    (void)kiln_endpoint_serve(&g_endpoint);
  }
}
