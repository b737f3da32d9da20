/*
 * What a thread hands to work that runs elsewhere: flow suppression, the
 * captured context, and tasks that carry one from submit to execute.
 *
 * A task owns the reference that the capture made; the run borrows it (no
 * reference count traffic for the switch) and drops it afterwards, so the
 * whole propagation costs one copy, one run and one release.
 */
#include "context.h"
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

cv_context_t *cv_capture_context(void)
{
    return cvi_thread_state.flow_suppressed ? cv_context_new() : cv_copy_context();
}

cv_status_t cv_task_init(cv_task_t *task, void (*fn)(void *arg), void *arg)
{
    if (!task || !fn)
        return CV_EINVAL;
    cv_context_t *captured = cv_capture_context();
    if (!captured) {
        *task = (cv_task_t){0};
        return CV_ENOMEM;
    }
    *task = (cv_task_t){fn, arg, captured};
    return CV_OK;
}

cv_status_t cv_task_run(cv_task_t *task)
{
    if (!task || !task->cv_private_context)
        return CV_EINVAL;
    /* Emptied first: fn may free the memory the task lives in (a pool's
     * task record often frees itself). */
    cv_task_t taken = *task;
    *task = (cv_task_t){0};
    cv_status_t status = cv_context_run(taken.cv_private_context, taken.cv_private_fn,
                                        taken.cv_private_arg);
    if (status == CV_OK || status == CV_ENOTCURRENT) {
        cv_context_release(taken.cv_private_context);
        return status;
    }
    /* fn was not called (no memory to enter, or inside a callback): the
     * task is given back whole, to run later. */
    *task = taken;
    return status;
}

void cv_task_discard(cv_task_t *task)
{
    if (!task)
        return;
    cv_context_release(task->cv_private_context);
    *task = (cv_task_t){0};
}
