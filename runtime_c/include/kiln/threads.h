/* kiln runtime: the worker-thread pool behind `parallel` loops (OS targets only).
 *
 * Generated code runs a loop that a schedule marked `parallel` as one call of kiln_parallel_for: the loop
 * body is outlined into a kiln_parallel_body_fn that runs iterations [begin, end), and the values it needs
 * (buffer pointers, outer loop indices) are packed into a context on the caller's stack. Bare-metal builds
 * emit such loops as ordinary serial loops and do not link this file: a firmware image has no thread code.
 *
 * One pool per process, started by kiln_threads_start (the Linux runner does it once, before serving).
 * kiln_parallel_for cuts [0, n) into chunks of about n / (8 * threads) iterations, wakes the workers, and
 * the calling thread and every worker that is awake claim chunks from one atomic counter until none is
 * left; the call returns when every iteration is done. No lock is held while chunks run, and the caller
 * waits only for chunks already claimed: a worker that is asleep or descheduled when the call starts finds
 * the work taken, so a pool larger than the machine's cores costs little. It runs the whole range on the
 * calling thread, serially, when the pool has one thread or is not started, when n < 2, when called from
 * inside a chunk (nested parallel loops) and when another thread is using the pool at the time.
 *
 * A chunk's stack holds the body's scratch buffers (the generated code allocates them there so that threads
 * never share one): workers get KILN_THREAD_STACK_BYTES of stack, and code generation keeps the scratch of
 * one parallel body below half of it.
 */
#ifndef KILN_THREADS_H_
#define KILN_THREADS_H_

#include <stdint.h>

#include "kiln/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most threads a pool runs (the calling thread included). */
#ifndef KILN_THREADS_MAX
#define KILN_THREADS_MAX 256
#endif

/* Stack of each worker thread, in bytes (a parallel body's scratch lives there). */
#ifndef KILN_THREAD_STACK_BYTES
#define KILN_THREAD_STACK_BYTES (16u << 20)
#endif

/* The environment variable the Linux runner reads for its thread count (kiln.runtime_c.abi.THREADS_ENV). */
#define KILN_THREADS_ENV "KILN_THREADS"

/* An outlined parallel loop body: runs iterations [begin, end) with the captured values in *context. */
typedef void (*kiln_parallel_body_fn)(void* context, int64_t begin, int64_t end);

/* The package's default thread count (0: one per online CPU), defined by the generated model object of an
 * OS target (weak, so several models may define it); the Linux runner reads it when neither `--threads N`
 * nor the KILN_THREADS environment variable gives a count. */
extern const int32_t kiln_threads_default;

/* Starts the pool with `threads` threads in all (threads - 1 workers; the caller of kiln_parallel_for is
 * the other one). 0 means one per online CPU. Returns KILN_ERR_ARG_RANGE if threads > KILN_THREADS_MAX,
 * KILN_ERR_PLATFORM_FAILED if a worker cannot be created (the workers already started keep running, and
 * *out_threads says how many threads the pool has), KILN_ERR_ARG_NULL if out_threads is NULL. A second
 * call while the pool runs changes nothing and reports the running size. */
kiln_status_t kiln_threads_start(uint32_t threads, uint32_t* out_threads);

/* Stops and joins every worker (the pool then runs everything serially until started again). */
void kiln_threads_stop(void);

/* Threads in the pool (1 when it is not started). */
uint32_t kiln_threads_count(void);

/* Runs body(context, begin, end) over [0, n) in chunks (see above); returns after every chunk has returned.
 * Called by generated code; never fails. */
void kiln_parallel_for(kiln_parallel_body_fn body, void* context, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* KILN_THREADS_H_ */
