/*
 * What a thread hands to work that runs elsewhere: flow suppression, the
 * captured context, and tasks that carry a context from submit to execute.
 *
 * A task carries the captured map itself (one reference to its root), not
 * a context: capture allocates nothing. The executing thread runs it in a
 * context object of its own that it reuses from task to task, made new
 * each time (a fresh identity, so no token outlives its task), and claimed
 * without an atomic read-modify-write, since no other thread can reach it before the
 * task's fn does. Allocating that object at capture and freeing it at
 * execute, on another thread, was most of what propagation cost a pool.
 * If fn keeps the context (retains it), the thread gives it up and makes
 * another next time.
 */
#include "alloc.h"
#include "context.h"
#include "testing.h"
#include "thread.h"

void cv_flow_suppress(void)
{
    cvi_thread_state.flow_suppressed++;
}

cv_status_t cv_flow_restore(void)
{
    struct cvi_thread *thread = &cvi_thread_state;
    if (!thread->flow_suppressed)
        return CV_EINVAL;
    thread->flow_suppressed--;
    return CV_OK;
}

bool cv_flow_is_suppressed(void)
{
    return cvi_thread_state.flow_suppressed != 0;
}

/* A reference to the map to hand over: the current context's (the
 * thread's own, like every context on its stack), or the empty map (NULL)
 * while flow is suppressed or before the thread has a context. */
static cvi_hamt_node *capture_map(void)
{
    struct cvi_thread *thread = &cvi_thread_state;
    cv_context_t *current = cvi_thread_current(thread);
    return current && !thread->flow_suppressed ? cvi_context_retain_owned_root(current) : NULL;
}

cv_context_t *cv_capture_context(void)
{
    return cvi_context_new_with_root(capture_map());
}

/* cv_task_init of the empty map. Out of line, so that the common case
 * stays a leaf: this one may be the process's first call, after which the
 * allocator is fixed like after any other. */
__attribute__((noinline, cold)) static cv_status_t task_init_empty(cv_task_t *task,
                                                                   void (*fn)(void *arg), void *arg)
{
    cvi_allocator_freeze();
    *task = (cv_task_t){fn, arg, NULL};
    return CV_OK;
}

cv_status_t cv_task_init(cv_task_t *task, void (*fn)(void *arg), void *arg)
{
    if (!task || !fn)
        return CV_EINVAL;
    cvi_hamt_node *map = capture_map();
    if (__builtin_expect(!map, 0))
        return task_init_empty(task, fn, arg);
    *task = (cv_task_t){fn, arg, map};
    return CV_OK;
}

/* Keeps `ctx`, which holds no map, for the thread's next task, unless a
 * task nested in the one that used it has already left one there. */
static void keep_task_context(struct cvi_thread *thread, cv_context_t *ctx)
{
    if (thread->task_context)
        cv_context_release(ctx);
    else
        thread->task_context = ctx;
}

static void (*pause_after_task_for_testing)(void);

void cv_testing_pause_after_task(void (*pause)(void))
{
    pause_after_task_for_testing = pause;
}

cv_status_t cv_task_run(cv_task_t *task)
{
    if (!task || !task->cv_private_fn)
        return CV_EINVAL;
    struct cvi_thread *thread = cvi_thread_ready();
    if (!thread)
        return CV_ENOMEM;
    /* Taken out of the thread while it runs: a task that fn runs on this
     * thread gets another. */
    cv_context_t *ctx = thread->task_context;
    thread->task_context = NULL;
    if (!ctx && !(ctx = cvi_context_new_with_root(NULL)))
        return CV_ENOMEM;
    /* Emptied first: fn may free the memory the task lives in (a pool's
     * task record often frees itself). Read field by field (volatile, so
     * that the compiler does not merge them into one wide load again):
     * cv_task_init stores them one by one, and a load spanning two of
     * those stores waits for them to reach the cache instead of taking
     * them from the store buffer. */
    void (*fn)(void *arg) = task->cv_private_fn;
    void *arg = *(void *volatile *)&task->cv_private_arg;
    cvi_hamt_node *map = *(void *volatile *)&task->cv_private_map;
    *task = (cv_task_t){0};
    cvi_context_init(ctx, map);
    cv_status_t status = cvi_context_run_private(ctx, fn, arg);
    if (status != CV_OK && status != CV_ENOTCURRENT) {
        /* fn was not called (no memory to enter, or inside a callback): the
         * task is given back whole, to run later. */
        atomic_store_explicit(&ctx->root, NULL, memory_order_relaxed);
        keep_task_context(thread, ctx);
        *task = (cv_task_t){fn, arg, map};
        return status;
    }
    if (__builtin_expect(pause_after_task_for_testing != NULL, 0))
        pause_after_task_for_testing();
    /* Acquire: if whoever fn handed the context to has let go, their uses
     * are done. */
    if (atomic_load_explicit(&ctx->refs, memory_order_acquire) == 1) {
        cvi_context_drop_map(ctx);
        atomic_store_explicit(&ctx->root, NULL, memory_order_relaxed);
        keep_task_context(thread, ctx);
    } else {
        cv_context_release(ctx); /* kept by fn's doing: the last holder frees it */
    }
    return status;
}

void cv_task_discard(cv_task_t *task)
{
    if (!task)
        return;
    cvi_node_release(task->cv_private_map);
    *task = (cv_task_t){0};
}

void cvi_task_thread_exit(struct cvi_thread *thread)
{
    cv_context_release(thread->task_context);
    thread->task_context = NULL;
}
