/* kiln runner for Linux: serves the device protocol (endpoint.h) for the linked model on stdin/stdout.
 *
 * Usage: runner [--threads N]. The model's parallel loops run on a pool of N threads (threads.h; 0: one per
 * online CPU); without the option, the KILN_THREADS environment variable, else the package's default
 * (kiln_threads_default, from `kiln compile --threads N`), else 1.
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
#include "kiln/threads.h"

#pragma weak kiln_threads_default /* a model object compiled before threads existed does not define it */

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

/* A thread count: decimal digits only, at most KILN_THREADS_MAX. */
static int parse_threads(const char* text, uint32_t* out_threads) {
  if (text == NULL || *text == '\0') {
    return 0;
  }
  uint32_t value = 0;
  for (const char* p = text; *p != '\0'; ++p) {
    if (*p < '0' || *p > '9' || value > KILN_THREADS_MAX) {
      return 0;
    }
    value = value * 10u + (uint32_t)(*p - '0');
  }
  if (value > KILN_THREADS_MAX) {
    return 0;
  }
  *out_threads = value;
  return 1;
}

static int usage(const char* argv0, const char* problem) {
  (void)fprintf(stderr,
                "%s: %s\nusage: %s [--threads N]\nServes the kiln device protocol for model \"%s\" on "
                "stdin/stdout; N threads run its parallel loops (0: one per online CPU, at most %u; default: "
                "$KILN_THREADS, else the package's default).\n",
                argv0, problem, argv0, kiln_model.name != NULL ? kiln_model.name : "?", KILN_THREADS_MAX);
  return KILN_RUNNER_EXIT_USAGE;
}

int main(int argc, char** argv) {
  uint32_t threads = 1;
  if (&kiln_threads_default != NULL && kiln_threads_default >= 0) {
    threads = (uint32_t)kiln_threads_default;
  }
  const char* env = getenv(KILN_THREADS_ENV);
  if (env != NULL && *env != '\0' && !parse_threads(env, &threads)) {
    return usage(argv[0], "KILN_THREADS is not a thread count");
  }
  if (argc == 3 && strcmp(argv[1], "--threads") == 0) {
    if (!parse_threads(argv[2], &threads)) {
      return usage(argv[0], "--threads takes a number of threads");
    }
  } else if (argc > 1) {
    return usage(argv[0], "unknown arguments");
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
  uint32_t running = 1;
  status = kiln_threads_start(threads, &running);
  if (status != KILN_OK) {
    log_status("starting the thread pool failed", status);
    if (status == KILN_ERR_ARG_RANGE) {
      return KILN_RUNNER_EXIT_USAGE;
    }
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
  kiln_threads_stop();
  if (status != KILN_OK) {
    log_status("stopped serving", status);
    return KILN_RUNNER_EXIT_STREAM;
  }
  return 0;
}
