/* kiln runtime: the worker-thread pool behind `parallel` loops (threads.h). POSIX threads; OS targets only.
 *
 * Protocol of one kiln_parallel_for call: the caller writes the job (body, context, n), sets `pending` to
 * the number of workers and bumps `generation` (release; under the mutex, so that a worker about to sleep
 * cannot miss it). Each worker waits for a new generation (spinning briefly, yielding the CPU, then sleeping
 * on the condition variable), runs its chunk, and decrements `pending`. The caller runs chunk 0 itself and
 * then waits for `pending` to reach 0. No lock is held while chunks run.
 */
#define _POSIX_C_SOURCE 200809L

#include "kiln/threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* How long an idle worker polls for the next job before it sleeps (ns), and how many polls spin without
 * yielding the CPU first. Between the parallel loops of one run the gaps are short, so workers usually catch
 * the next job while polling; between runs they sleep. */
#define KILN_THREADS_POLL_NS    200000
#define KILN_THREADS_SPIN_POLLS 256

typedef struct {
  _Atomic(uint64_t) generation;
  _Atomic(uint32_t) pending;
  _Atomic(int) busy;
  _Atomic(int) stop;
  kiln_parallel_body_fn body;
  void* context;
  int64_t n;
  uint32_t threads;
  uint64_t start_generation;
  uint32_t sleepers;
  pthread_mutex_t mutex;
  pthread_cond_t wake;
  pthread_t workers[KILN_THREADS_MAX];
} kiln_pool_t;

static kiln_pool_t g_pool = {.threads = 1, .mutex = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};
static _Thread_local int t_in_chunk;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || (defined(__arm__) && __ARM_ARCH >= 7)
  __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
  struct timespec ts;
  (void)clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void run_chunk(uint32_t index, uint32_t threads) {
  int64_t n = g_pool.n;
  int64_t begin = n * (int64_t)index / (int64_t)threads;
  int64_t end = n * ((int64_t)index + 1) / (int64_t)threads;
  if (begin < end) {
    g_pool.body(g_pool.context, begin, end);
  }
}

/* Waits until `generation` differs from `seen`; returns the new value. */
static uint64_t wait_for_job(uint64_t seen) {
  uint64_t deadline = 0;
  for (uint32_t polls = 0;; ++polls) {
    uint64_t g = atomic_load_explicit(&g_pool.generation, memory_order_acquire);
    if (g != seen) {
      return g;
    }
    if (polls < KILN_THREADS_SPIN_POLLS) {
      cpu_relax();
      continue;
    }
    uint64_t t = now_ns();
    if (deadline == 0) {
      deadline = t + KILN_THREADS_POLL_NS;
    }
    if (t < deadline) {
      (void)sched_yield();
      continue;
    }
    (void)pthread_mutex_lock(&g_pool.mutex);
    g_pool.sleepers++;
    while ((g = atomic_load_explicit(&g_pool.generation, memory_order_acquire)) == seen) {
      (void)pthread_cond_wait(&g_pool.wake, &g_pool.mutex);
    }
    g_pool.sleepers--;
    (void)pthread_mutex_unlock(&g_pool.mutex);
    return g;
  }
}

static void* worker_main(void* arg) {
  uint32_t index = (uint32_t)(uintptr_t)arg;
  uint64_t seen = g_pool.start_generation;
  t_in_chunk = 1; /* a parallel loop inside a chunk runs serially */
  for (;;) {
    seen = wait_for_job(seen);
    if (atomic_load_explicit(&g_pool.stop, memory_order_acquire)) {
      return NULL;
    }
    run_chunk(index, g_pool.threads);
    atomic_fetch_sub_explicit(&g_pool.pending, 1, memory_order_acq_rel);
  }
}

/* Publishes a new generation (a job, or the stop request) and wakes sleeping workers. */
static void publish(void) {
  (void)pthread_mutex_lock(&g_pool.mutex);
  atomic_fetch_add_explicit(&g_pool.generation, 1, memory_order_release);
  if (g_pool.sleepers > 0) {
    (void)pthread_cond_broadcast(&g_pool.wake);
  }
  (void)pthread_mutex_unlock(&g_pool.mutex);
}

kiln_status_t kiln_threads_start(uint32_t threads, uint32_t* out_threads) {
  if (out_threads == NULL) {
    return KILN_ERR_ARG_NULL;
  }
  if (g_pool.threads > 1) {
    *out_threads = g_pool.threads;
    return KILN_OK;
  }
  if (threads == 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    threads = cpus < 1 ? 1u : cpus > KILN_THREADS_MAX ? KILN_THREADS_MAX : (uint32_t)cpus;
  }
  if (threads > KILN_THREADS_MAX) {
    return KILN_ERR_ARG_RANGE;
  }
  atomic_store_explicit(&g_pool.stop, 0, memory_order_relaxed);
  g_pool.start_generation = atomic_load_explicit(&g_pool.generation, memory_order_relaxed);
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) {
    *out_threads = 1;
    return KILN_ERR_PLATFORM_FAILED;
  }
  kiln_status_t status = KILN_OK;
  uint32_t started = 1;
  if (pthread_attr_setstacksize(&attr, KILN_THREAD_STACK_BYTES) != 0) {
    status = KILN_ERR_PLATFORM_FAILED;
    threads = 1;
  }
  for (; started < threads; ++started) {
    if (pthread_create(&g_pool.workers[started], &attr, worker_main, (void*)(uintptr_t)started) != 0) {
      status = KILN_ERR_PLATFORM_FAILED;
      break;
    }
  }
  (void)pthread_attr_destroy(&attr);
  g_pool.threads = started;
  *out_threads = started;
  return status;
}

void kiln_threads_stop(void) {
  if (g_pool.threads <= 1) {
    return;
  }
  atomic_store_explicit(&g_pool.stop, 1, memory_order_release);
  publish();
  for (uint32_t i = 1; i < g_pool.threads; ++i) {
    (void)pthread_join(g_pool.workers[i], NULL);
  }
  g_pool.threads = 1;
}

uint32_t kiln_threads_count(void) {
  return g_pool.threads;
}

void kiln_parallel_for(kiln_parallel_body_fn body, void* context, int64_t n) {
  uint32_t threads = g_pool.threads;
  if (threads <= 1 || n < 2 || t_in_chunk || atomic_exchange_explicit(&g_pool.busy, 1, memory_order_acquire)) {
    if (n > 0) {
      body(context, 0, n);
    }
    return;
  }
  g_pool.body = body;
  g_pool.context = context;
  g_pool.n = n;
  atomic_store_explicit(&g_pool.pending, threads - 1, memory_order_relaxed);
  publish();
  t_in_chunk = 1;
  run_chunk(0, threads);
  t_in_chunk = 0;
  for (uint32_t polls = 0; atomic_load_explicit(&g_pool.pending, memory_order_acquire) != 0; ++polls) {
    if (polls < KILN_THREADS_SPIN_POLLS) {
      cpu_relax();
    } else {
      (void)sched_yield();
    }
  }
  atomic_store_explicit(&g_pool.busy, 0, memory_order_release);
}
