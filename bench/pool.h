/*
 * A small thread pool on liburcu's wait-free concurrent queue (wfcqueue):
 * one queue per worker, so each queue has one dequeuer and needs no
 * dequeue lock; enqueue is a wait-free exchange. Submitters spread tasks
 * round-robin; a worker takes its whole queue at once (splice) and runs
 * the tasks from a private list. Workers spin on their queue (then yield), which is what a
 * latency-minded server pool does under load and keeps wake-up costs out
 * of a benchmark about context propagation.
 *
 * A task may carry the submitter's context: captured at submit with
 * cv_task_init, run and released on the worker with cv_task_run, the
 * library's executor helper (cv_capture_context, cv_context_run,
 * cv_context_release in one).
 *
 * The queue headers stay inside pool.c; this header is plain C and C++.
 */
#ifndef CV_BENCH_POOL_H
#define CV_BENCH_POOL_H

#include <ctxvars.h>

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct cvb_task {
    void *link; /* pool-private: the queue node (struct cds_wfcq_node) */
    void (*fn)(void *arg);
    void *arg;
    bool propagate;     /* set at submit: run through `captured` */
    cv_task_t captured; /* fn, arg and the submitter's context (cv_task_init) */
};

typedef struct cvb_pool cvb_pool_t;

/* Starts `workers` threads, worker i pinned to CPU cpu_ids[i] (a negative
 * id leaves it unpinned); each calls init(init_arg) first, if given.
 * Returns once every worker has finished its init; NULL if a thread cannot
 * be started. */
cvb_pool_t *cvb_pool_start(int workers, const int *cpu_ids, void (*init)(void *), void *init_arg);

/* Queues *tasks[0..count-1] as one burst per worker, spread round-robin,
 * capturing the current context into each (cv_task_init) if asked. False
 * if a capture fails for lack of memory; the tasks before it are queued,
 * the rest not. */
bool cvb_pool_submit_batch(cvb_pool_t *pool, struct cvb_task *const *tasks, size_t count,
                           bool capture);

/* Tasks finished so far, over all workers (acquire: their effects are
 * visible to the caller). Workers publish it once per burst of tasks. */
uint64_t cvb_pool_completed(cvb_pool_t *pool);

/* Stops and joins the workers once their queues are empty, and frees the
 * pool. */
void cvb_pool_stop(cvb_pool_t *pool);

#ifdef __cplusplus
}
#endif

#endif
