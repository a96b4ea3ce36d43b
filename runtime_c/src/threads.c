/* kiln runtime: the worker-thread pool behind `parallel` loops (threads.h). POSIX threads; OS targets only.
 *
 * One kiln_parallel_for call: the caller writes the job (body, context, n, grain), resets `done`, and
 * publishes the job by storing (generation + 1) << 32 in `work` (release; under the mutex, so that a worker
 * about to sleep cannot miss it). The low 32 bits of `work` are the next unclaimed iteration: the caller and
 * every worker that sees the new generation claim `grain` iterations at a time with a compare-and-swap that
 * also checks the generation (so a late worker never runs a chunk of a finished job), run them, and add
 * them to `done`. The caller returns when `done` reaches n; it never waits for a worker that has not
 * started (a sleeping or descheduled worker just finds no work left). No lock is held while chunks run.
 * Idle workers poll for the next generation (spinning briefly, then yielding the CPU), then sleep on the
 * condition variable.
 */
#define _POSIX_C_SOURCE 200809L

#include "kiln/threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* How long an idle worker spins for the next job before it sleeps, and how long the caller spins for the
 * last chunks before it sleeps until they are done (ns; the clock is read every KILN_THREADS_SPIN_POLLS
 * polls). Between the parallel loops of one run the gaps are short, so spinning workers take the next job
 * at once (a woken one takes tens of microseconds, more on a busy machine); between runs they sleep. The
 * caller's budget covers a chunk of a typical loop (waking it costs as much as waking a worker); past it,
 * it sleeps and leaves its core to the worker still running a chunk (on a machine with fewer free cores
 * than threads, that worker may need it). */
#define KILN_THREADS_POLL_NS    300000
#define KILN_THREADS_WAIT_NS    500000
#define KILN_THREADS_SPIN_POLLS 256
/* Chunks per thread a job is cut into (more: better balance when threads are descheduled or uneven). */
#define KILN_THREADS_CHUNKS 8

/* One job. Written by the caller before it publishes the job's generation, read by workers that may be
 * late (a stale read is then discarded by their failed compare-and-swap), hence atomic, relaxed. */
typedef struct {
  _Atomic(kiln_parallel_body_fn) body;
  _Atomic(void*) context;
  _Atomic(int64_t) n;
  _Atomic(int64_t) grain;
} kiln_job_t;

typedef struct {
  _Atomic(uint64_t) work; /* generation << 32 | next unclaimed iteration */
  _Atomic(int64_t) done;  /* iterations finished in this generation */
  _Atomic(int) busy;      /* a kiln_parallel_for call is running */
  _Atomic(int) stop;
  /* the job of generation g is jobs[g % 2]: the next job is written into the other slot, so while `work`
   * still holds generation g (a late worker's compare-and-swap could still succeed), its job is unchanged */
  kiln_job_t jobs[2];
  uint32_t threads;
  uint32_t sleepers;   /* workers waiting on `wake` (under `mutex`) */
  int caller_sleeping; /* the caller waits on `finished` (under `mutex`) */
  pthread_mutex_t mutex;
  pthread_cond_t wake;
  pthread_cond_t finished;
  pthread_t workers[KILN_THREADS_MAX];
} kiln_pool_t;

static kiln_pool_t g_pool = {.threads = 1,
                             .mutex = PTHREAD_MUTEX_INITIALIZER,
                             .wake = PTHREAD_COND_INITIALIZER,
                             .finished = PTHREAD_COND_INITIALIZER};
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

/* Claims and runs chunks of generation `gen` until none is left. */
static void run_chunks(uint32_t gen) {
  uint64_t w = atomic_load_explicit(&g_pool.work, memory_order_acquire);
  for (;;) {
    if ((uint32_t)(w >> 32) != gen) {
      return;
    }
    kiln_job_t* job = &g_pool.jobs[gen % 2];
    int64_t n = atomic_load_explicit(&job->n, memory_order_relaxed);
    int64_t begin = (int64_t)(uint32_t)w;
    if (begin >= n) {
      return;
    }
    int64_t grain = atomic_load_explicit(&job->grain, memory_order_relaxed);
    int64_t end = begin + grain < n ? begin + grain : n;
    kiln_parallel_body_fn body = atomic_load_explicit(&job->body, memory_order_relaxed);
    void* context = atomic_load_explicit(&job->context, memory_order_relaxed);
    if (atomic_compare_exchange_weak_explicit(&g_pool.work, &w, ((uint64_t)gen << 32) | (uint64_t)end,
                                              memory_order_acq_rel, memory_order_acquire)) {
      body(context, begin, end);
      if (atomic_fetch_add_explicit(&g_pool.done, end - begin, memory_order_acq_rel) + (end - begin) == n) {
        (void)pthread_mutex_lock(&g_pool.mutex); /* the last chunk: wake the caller if it sleeps */
        if (g_pool.caller_sleeping) {
          (void)pthread_cond_signal(&g_pool.finished);
        }
        (void)pthread_mutex_unlock(&g_pool.mutex);
      }
      w = atomic_load_explicit(&g_pool.work, memory_order_acquire);
    }
  }
}

/* Waits until the generation differs from `seen`; returns the new one. */
static uint32_t wait_for_job(uint32_t seen) {
  uint64_t deadline = now_ns() + KILN_THREADS_POLL_NS;
  for (uint32_t polls = 1;; ++polls) {
    uint32_t g = (uint32_t)(atomic_load_explicit(&g_pool.work, memory_order_acquire) >> 32);
    if (g != seen) {
      return g;
    }
    cpu_relax();
    if (polls % KILN_THREADS_SPIN_POLLS != 0 || now_ns() < deadline) {
      continue;
    }
    (void)pthread_mutex_lock(&g_pool.mutex);
    g_pool.sleepers++;
    while ((g = (uint32_t)(atomic_load_explicit(&g_pool.work, memory_order_acquire) >> 32)) == seen) {
      (void)pthread_cond_wait(&g_pool.wake, &g_pool.mutex);
    }
    g_pool.sleepers--;
    (void)pthread_mutex_unlock(&g_pool.mutex);
    return g;
  }
}

static void* worker_main(void* arg) {
  uint32_t seen = (uint32_t)(uintptr_t)arg; /* the generation when the pool started */
  t_in_chunk = 1;                           /* a parallel loop inside a chunk runs serially */
  for (;;) {
    seen = wait_for_job(seen);
    if (atomic_load_explicit(&g_pool.stop, memory_order_acquire)) {
      return NULL;
    }
    run_chunks(seen);
  }
}

/* Publishes generation + 1 (a job from iteration 0, or the stop request) and wakes sleeping workers;
 * returns the new generation. */
static uint32_t publish(void) {
  (void)pthread_mutex_lock(&g_pool.mutex);
  uint32_t gen = (uint32_t)(atomic_load_explicit(&g_pool.work, memory_order_relaxed) >> 32) + 1u;
  atomic_store_explicit(&g_pool.work, (uint64_t)gen << 32, memory_order_release);
  if (g_pool.sleepers > 0) {
    (void)pthread_cond_broadcast(&g_pool.wake);
  }
  (void)pthread_mutex_unlock(&g_pool.mutex);
  return gen;
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
  uint32_t gen = (uint32_t)(atomic_load_explicit(&g_pool.work, memory_order_relaxed) >> 32);
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
    if (pthread_create(&g_pool.workers[started], &attr, worker_main, (void*)(uintptr_t)gen) != 0) {
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
  (void)publish();
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
  if (threads <= 1 || n < 2 || n > INT32_MAX || t_in_chunk ||
      atomic_exchange_explicit(&g_pool.busy, 1, memory_order_acquire)) {
    if (n > 0) {
      body(context, 0, n);
    }
    return;
  }
  int64_t grain = n / ((int64_t)threads * KILN_THREADS_CHUNKS);
  uint32_t next = (uint32_t)(atomic_load_explicit(&g_pool.work, memory_order_relaxed) >> 32) + 1u;
  kiln_job_t* job = &g_pool.jobs[next % 2];
  atomic_store_explicit(&job->body, body, memory_order_relaxed);
  atomic_store_explicit(&job->context, context, memory_order_relaxed);
  atomic_store_explicit(&job->n, n, memory_order_relaxed);
  atomic_store_explicit(&job->grain, grain > 0 ? grain : 1, memory_order_relaxed);
  atomic_store_explicit(&g_pool.done, 0, memory_order_relaxed);
  uint32_t gen = publish();
  t_in_chunk = 1;
  run_chunks(gen);
  t_in_chunk = 0;
  uint64_t deadline = 0;
  for (uint32_t polls = 1; atomic_load_explicit(&g_pool.done, memory_order_acquire) < n; ++polls) {
    cpu_relax();
    if (polls % KILN_THREADS_SPIN_POLLS != 0) {
      continue;
    }
    uint64_t t = now_ns();
    deadline = deadline == 0 ? t + KILN_THREADS_WAIT_NS : deadline;
    if (t < deadline) {
      continue;
    }
    (void)pthread_mutex_lock(&g_pool.mutex);
    g_pool.caller_sleeping = 1;
    while (atomic_load_explicit(&g_pool.done, memory_order_acquire) < n) {
      (void)pthread_cond_wait(&g_pool.finished, &g_pool.mutex);
    }
    g_pool.caller_sleeping = 0;
    (void)pthread_mutex_unlock(&g_pool.mutex);
  }
  atomic_store_explicit(&g_pool.busy, 0, memory_order_release);
}
