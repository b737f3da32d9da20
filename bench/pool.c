#define _GNU_SOURCE
#define _LGPL_SOURCE /* inline queue operations: no call per enqueue */
#include "pool.h"

#include <urcu/arch.h>
#include <urcu/compiler.h>
#include <urcu/wfcqueue.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>

_Static_assert(offsetof(struct cvb_task, link) == 0 &&
                   sizeof(((struct cvb_task *)0)->link) == sizeof(struct cds_wfcq_node),
               "cvb_task.link must be able to hold a cds_wfcq_node");

/* Spins before a worker starts yielding its CPU when its queue is empty. */
#define IDLE_SPINS 4096

/* Head, tail and the completion counter each on their own cache line: the
 * submitter writes the tail, the worker the head and the counter. */
struct worker {
    _Alignas(64) struct __cds_wfcq_head head;
    _Alignas(64) struct cds_wfcq_tail tail;
    _Alignas(64) _Atomic uint64_t completed;
    _Alignas(64) pthread_t thread;
    int cpu;
    struct cvb_pool *pool;
};

struct cvb_pool {
    struct worker *workers;
    int count;
    int next;
    _Atomic bool stop;
    _Atomic int ready; /* workers past their init */
    void (*init)(void *);
    void *init_arg;
};

static void run_task(struct cvb_task *task)
{
    if (task->propagate) {
        /* Runs fn(arg) in the capture and releases it. Cannot be CV_EBUSY:
         * the capture is a fresh copy nobody entered, and workers run no
         * callbacks. */
        cv_task_run(&task->captured);
    } else {
        task->fn(task->arg);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (w->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(w->cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    if (w->pool->init)
        w->pool->init(w->pool->init_arg);
    atomic_fetch_add_explicit(&w->pool->ready, 1, memory_order_release);
    struct __cds_wfcq_head local_head;
    struct cds_wfcq_tail local_tail;
    __cds_wfcq_init(&local_head, &local_tail);
    unsigned idle = 0;
    /* The worker's own count, kept private: counting on completed's line,
     * which the submitter polls, would pull that line back on every task. */
    uint64_t done = 0;
    for (;;) {
        /* Take everything queued so far in one step (one dequeuer per
         * queue: no lock), then run it from the private list: the shared
         * head is touched once per burst, not once per task. */
        enum cds_wfcq_ret ret =
            __cds_wfcq_splice_blocking(&local_head, &local_tail, &w->head, &w->tail);
        if (ret == CDS_WFCQ_RET_SRC_EMPTY) {
            if (atomic_load_explicit(&w->pool->stop, memory_order_acquire))
                break;
            if (++idle < IDLE_SPINS) {
                caa_cpu_relax();
            } else {
                sched_yield();
            }
            continue;
        }
        idle = 0;
        struct cds_wfcq_node *node;
        while ((node = __cds_wfcq_dequeue_blocking(&local_head, &local_tail))) {
            run_task(caa_container_of((void **)node, struct cvb_task, link));
            done++;
        }
        /* Published once per burst: a counter written per task would
         * bounce its cache line to a polling submitter on every task and
         * make the pool measure that instead of the tasks. */
        atomic_store_explicit(&w->completed, done, memory_order_release);
    }
    return NULL;
}

cvb_pool_t *cvb_pool_start(int workers, const int *cpu_ids, void (*init)(void *), void *init_arg)
{
    struct cvb_pool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return NULL;
    if (posix_memalign((void **)&pool->workers, 64, (size_t)workers * sizeof(struct worker))) {
        free(pool);
        return NULL;
    }
    pool->count = workers;
    pool->init = init;
    pool->init_arg = init_arg;
    atomic_init(&pool->stop, false);
    atomic_init(&pool->ready, 0);
    for (int i = 0; i < workers; i++) {
        struct worker *w = &pool->workers[i];
        __cds_wfcq_init(&w->head, &w->tail);
        atomic_init(&w->completed, 0);
        w->cpu = cpu_ids ? cpu_ids[i] : -1;
        w->pool = pool;
    }
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&pool->workers[i].thread, NULL, worker_main, &pool->workers[i])) {
            pool->count = i;
            cvb_pool_stop(pool);
            return NULL;
        }
    }
    /* Running and initialised before the first task: thread start-up is
     * not what the pool benchmark measures. */
    while (atomic_load_explicit(&pool->ready, memory_order_acquire) < workers)
        sched_yield();
    return pool;
}

bool cvb_pool_submit_batch(cvb_pool_t *pool, struct cvb_task *const *tasks, size_t count,
                           bool capture)
{
    /* Stage each worker's share on a private queue, then hand it over with
     * one splice per worker: the workers see whole bursts, never a queue
     * that the submitter is still writing into. */
    struct __cds_wfcq_head heads[pool->count];
    struct cds_wfcq_tail tails[pool->count];
    for (int i = 0; i < pool->count; i++)
        __cds_wfcq_init(&heads[i], &tails[i]);
    bool ok = true;
    for (size_t i = 0; i < count && ok; i++) {
        struct cvb_task *task = tasks[i];
        task->propagate = capture;
        if (capture && cv_task_init(&task->captured, task->fn, task->arg) != CV_OK) {
            task->propagate = false;
            ok = false;
            break;
        }
        struct cds_wfcq_node *node = (struct cds_wfcq_node *)&task->link;
        cds_wfcq_node_init(node);
        cds_wfcq_enqueue(&heads[pool->next], &tails[pool->next], node);
        if (++pool->next == pool->count)
            pool->next = 0;
    }
    for (int i = 0; i < pool->count; i++)
        __cds_wfcq_splice_blocking(&pool->workers[i].head, &pool->workers[i].tail, &heads[i],
                                   &tails[i]);
    return ok;
}

uint64_t cvb_pool_completed(cvb_pool_t *pool)
{
    uint64_t sum = 0;
    for (int i = 0; i < pool->count; i++)
        sum += atomic_load_explicit(&pool->workers[i].completed, memory_order_acquire);
    return sum;
}

void cvb_pool_stop(cvb_pool_t *pool)
{
    atomic_store_explicit(&pool->stop, true, memory_order_release);
    for (int i = 0; i < pool->count; i++)
        pthread_join(pool->workers[i].thread, NULL);
    free(pool->workers);
    free(pool);
}
