/* kiln runner for Linux: serves the device protocol (endpoint.h) for the linked model on stdin/stdout.
 *
 * This is platform glue, not runtime core: it allocates the I/O buffers, the workspace and the frame buffer
 * with the C library once at startup, then hands everything to the endpoint. Diagnostics go to stderr.
 * Exit status: 0 after QUIT or end of input, 1 if the byte stream failed, 2 for a usage error, 65 if the
 * linked model descriptor is invalid, 70 if platform init failed, 71 if memory ran out.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kiln/endpoint.h"
#include "kiln/platform.h"

/* The protocol stream: reads from stdin, writes to stdout. */
static kiln_status_t stdin_read(void* context, uint8_t* buffer, size_t capacity, size_t* out_len) {
  (void)context;
  for (;;) {
    ssize_t n = read(STDIN_FILENO, buffer, capacity);
    if (n >= 0) {
      *out_len = (size_t)n;
      return KILN_OK;
    }
    if (errno != EINTR) {
      return KILN_ERR_IO_READ;
    }
  }
}

static kiln_status_t stdout_write(void* context, const uint8_t* data, size_t len) {
  (void)context;
  while (len > 0) {
    ssize_t n = write(STDOUT_FILENO, data, len);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return KILN_ERR_IO_WRITE;
    }
    data += n;
    len -= (size_t)n;
  }
  return KILN_OK;
}

static void log_status(const char* what, kiln_status_t status) {
  const char* name = "unknown status";
  (void)kiln_status_describe(status, &name);
  char line[256];
  (void)snprintf(line, sizeof(line), "kiln runner: %s: %s (0x%04x)", what, name, (unsigned)status);
  (void)kiln_platform_log(line);
}

/* Zeroed, KILN_ALIGNMENT-aligned, at least one alignment unit long (so that empty tensors get a pointer). */
static void* alloc_buffer(uint64_t nbytes) {
  uint64_t size = (nbytes + KILN_ALIGNMENT - 1) / KILN_ALIGNMENT * KILN_ALIGNMENT;
  size = size == 0 ? KILN_ALIGNMENT : size;
  if (size > SIZE_MAX) {
    return NULL;
  }
  void* p = aligned_alloc(KILN_ALIGNMENT, (size_t)size);
  if (p != NULL) {
    memset(p, 0, (size_t)size);
  }
  return p;
}

static int alloc_tensors(const kiln_tensor_info_t* tensors, uint32_t count, void*** out_buffers) {
  void** buffers = calloc(count > 0 ? count : 1, sizeof(void*));
  if (buffers == NULL) {
    return 0;
  }
  for (uint32_t i = 0; i < count; ++i) {
    buffers[i] = alloc_buffer(tensors[i].nbytes);
    if (buffers[i] == NULL) {
      return 0;
    }
  }
  *out_buffers = buffers;
  return 1;
}

static kiln_profile_record_t g_records[KILN_PROFILE_MAX_RECORDS];

int main(int argc, char** argv) {
  if (argc > 1) {
    (void)fprintf(stderr, "usage: %s\nServes the kiln device protocol for model \"%s\" on stdin/stdout.\n",
                  argv[0], kiln_model.name != NULL ? kiln_model.name : "?");
    return KILN_RUNNER_EXIT_USAGE;
  }
  (void)signal(SIGPIPE, SIG_IGN); /* a closed stdout becomes a write error, not a silent death */
  kiln_status_t status = kiln_platform_init();
  if (status != KILN_OK) {
    log_status("platform init failed", status);
    return KILN_RUNNER_EXIT_PLATFORM;
  }
  status = kiln_model_check(&kiln_model);
  if (status != KILN_OK) {
    log_status("the linked model descriptor is invalid", status);
    return KILN_RUNNER_EXIT_MODEL;
  }
  void** inputs = NULL;
  void** outputs = NULL;
  uint8_t* workspace = alloc_buffer(kiln_model.workspace_bytes);
  uint8_t* frame = malloc(KILN_ENDPOINT_MAX_PAYLOAD);
  if (workspace == NULL || frame == NULL ||
      !alloc_tensors(kiln_model.inputs, kiln_model.num_inputs, &inputs) ||
      !alloc_tensors(kiln_model.outputs, kiln_model.num_outputs, &outputs)) {
    (void)kiln_platform_log("kiln runner: out of memory allocating tensors, workspace or frame buffer");
    return KILN_RUNNER_EXIT_MEMORY;
  }
  kiln_profiler_t profiler;
  (void)kiln_profiler_init(g_records, KILN_PROFILE_MAX_RECORDS, &profiler);
  kiln_endpoint_config_t config = {
      .model = &kiln_model,
      .stream = {.context = NULL, .read = stdin_read, .write = stdout_write},
      .frame = frame,
      .frame_bytes = KILN_ENDPOINT_MAX_PAYLOAD,
      .inputs = inputs,
      .outputs = outputs,
      .workspace = workspace,
      .profiler = &profiler,
  };
  kiln_endpoint_t endpoint;
  status = kiln_endpoint_init(&config, &endpoint);
  if (status == KILN_OK) {
    status = kiln_endpoint_serve(&endpoint);
  }
  if (status != KILN_OK) {
    log_status("stopped serving", status);
    return KILN_RUNNER_EXIT_STREAM;
  }
  return 0;
}
