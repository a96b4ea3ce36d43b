/* Exercises the thread pool (threads.h) directly: usage `threads_main THREADS
 * [REPEATS]`. Prints one line per check, "name ok" or "name FAILED ...", and
 * exits 0 only if every check passed.
 *
 * - every iteration of loops of many sizes (0, 1, fewer than threads, many)
 * runs exactly once;
 * - chunks are in range, do not overlap, and cover [0, n);
 * - a parallel loop inside a chunk runs serially on that chunk's thread,
 * completely;
 * - two threads calling kiln_parallel_for at once both get every iteration
 * done;
 * - the pool reports its size; stop and start again works. */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln/threads.h"

#define MAX_N 100000

static _Atomic(int) g_hits[MAX_N];
static _Atomic(int) g_bad_range;
static int g_failed;

static void check(const char *name, int ok, const char *detail) {
  printf("%s %s%s%s\n", name, ok ? "ok" : "FAILED ", ok ? "" : detail, "");
  g_failed |= !ok;
}

typedef struct {
  int64_t n;
  _Atomic(int) *hits;
} job_t;

static void count_body(void *context, int64_t begin, int64_t end) {
  job_t *job = context;
  if (begin < 0 || end > job->n || begin >= end) {
    atomic_fetch_add(&g_bad_range, 1);
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    atomic_fetch_add(&job->hits[i], 1);
  }
}

static int run_and_count(int64_t n, _Atomic(int) *hits) {
  for (int64_t i = 0; i < n; ++i) {
    atomic_store(&hits[i], 0);
  }
  job_t job = {n, hits};
  kiln_parallel_for(count_body, &job, n);
  for (int64_t i = 0; i < n; ++i) {
    if (atomic_load(&hits[i]) != 1) {
      return 0;
    }
  }
  return 1;
}

/* nested: each outer iteration runs an inner parallel loop over 64 items of its
 * own row */
static _Atomic(int) g_nested[32 * 64];
static _Atomic(int) g_nested_foreign;

typedef struct {
  int64_t row;
  pthread_t owner;
} inner_t;

static void inner_body(void *context, int64_t begin, int64_t end) {
  inner_t *in = context;
  if (!pthread_equal(pthread_self(), in->owner)) {
    atomic_fetch_add(&g_nested_foreign, 1);
  }
  for (int64_t j = begin; j < end; ++j) {
    atomic_fetch_add(&g_nested[in->row * 64 + j], 1);
  }
}

static void outer_body(void *context, int64_t begin, int64_t end) {
  (void)context;
  for (int64_t r = begin; r < end; ++r) {
    inner_t in = {r, pthread_self()};
    kiln_parallel_for(inner_body, &in, 64);
  }
}

static _Atomic(int) g_concurrent[2][5000];
static int g_repeats;

static void *concurrent_caller(void *arg) {
  int which = (int)(intptr_t)arg;
  int ok = 1;
  for (int rep = 0; rep < g_repeats; ++rep) {
    ok &= run_and_count(5000, g_concurrent[which]);
  }
  return (void *)(intptr_t)ok;
}

int main(int argc, char **argv) {
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: %s THREADS [REPEATS]\n", argv[0]);
    return 2;
  }
  int repeats = argc == 3 ? atoi(argv[2]) : 20;
  g_repeats = 2 * repeats;
  uint32_t want = (uint32_t)strtoul(argv[1], NULL, 10);
  uint32_t got = 0;
  kiln_status_t st = kiln_threads_start(want, &got);
  check("start", st == KILN_OK && got == want && kiln_threads_count() == want,
        "pool size");

  static const int64_t sizes[] = {0,  1,  2,   3,    5,    7,
                                  16, 33, 100, 1000, 4097, MAX_N};
  int all = 1;
  for (int rep = 0; rep < repeats; ++rep) {
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); ++s) {
      all &= run_and_count(sizes[s], g_hits);
    }
  }
  check("each_iteration_once", all && atomic_load(&g_bad_range) == 0,
        "an iteration ran 0 or 2+ times");

  kiln_parallel_for(outer_body, NULL, 32);
  int nested_ok = 1;
  for (int i = 0; i < 32 * 64; ++i) {
    nested_ok &= atomic_load(&g_nested[i]) == 1;
  }
  check("nested_serial", nested_ok && atomic_load(&g_nested_foreign) == 0,
        "inner loop left its thread");

  pthread_t a, b;
  void *ra = NULL;
  void *rb = NULL;
  pthread_create(&a, NULL, concurrent_caller, (void *)(intptr_t)0);
  pthread_create(&b, NULL, concurrent_caller, (void *)(intptr_t)1);
  pthread_join(a, &ra);
  pthread_join(b, &rb);
  check("concurrent_callers", ra != NULL && rb != NULL,
        "a concurrent call lost iterations");

  kiln_threads_stop();
  check("stop", kiln_threads_count() == 1 && run_and_count(1000, g_hits),
        "after stop");
  st = kiln_threads_start(want, &got);
  check("restart", st == KILN_OK && got == want && run_and_count(MAX_N, g_hits),
        "after restart");
  kiln_threads_stop();
  uint32_t none = 0;
  check("too_many",
        kiln_threads_start(KILN_THREADS_MAX + 1, &none) == KILN_ERR_ARG_RANGE,
        "no range error");
  return g_failed;
}
