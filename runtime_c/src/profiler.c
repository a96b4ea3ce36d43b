/* kiln runtime: per-kernel profiler (records into a caller-provided buffer). */
#include "kiln/profiler.h"

#include <stddef.h>

#include "kiln/platform.h"

kiln_status_t kiln_profiler_init(kiln_profile_record_t* records, uint32_t capacity,
                                 kiln_profiler_t* out_profiler) {
  if (records == NULL || out_profiler == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  if (capacity == 0) {
    return KILN_ERR_ARG_SIZE;
  }
  out_profiler->records = records;
  out_profiler->capacity = capacity;
  out_profiler->count = 0;
  out_profiler->dropped = 0;
  return KILN_OK;
}

kiln_status_t kiln_profiler_reset(kiln_profiler_t* profiler) {
  if (profiler == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  profiler->count = 0;
  profiler->dropped = 0;
  return KILN_OK;
}

void kiln_profile_begin(void* prof, uint32_t kernel) {
  kiln_profiler_t* p = (kiln_profiler_t*)prof;
  if (p == NULL) {
    return;
  }
  if (p->count >= p->capacity) {
    ++p->dropped;
    return;
  }
  kiln_profile_record_t* r = &p->records[p->count++];
  r->kernel = kernel;
  r->flags = KILN_PROFILE_OPEN;
  r->start = 0; /* stays 0 without a clock */
  r->end = 0;
  (void)kiln_platform_ticks(&r->start);
}

void kiln_profile_end(void* prof, uint32_t kernel) {
  uint64_t t = 0; /* stays 0 without a clock */
  (void)kiln_platform_ticks(&t);
  kiln_profiler_t* p = (kiln_profiler_t*)prof;
  if (p == NULL || p->count == 0) {
    return;
  }
  kiln_profile_record_t* r = &p->records[p->count - 1];
  if (r->kernel == kernel && (r->flags & KILN_PROFILE_OPEN) != 0) {
    r->end = t;
    r->flags &= ~KILN_PROFILE_OPEN;
  }
}
