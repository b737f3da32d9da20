/*
 * Switch watchers and variables' change handlers: who is registered, and
 * the calls made on a thread's context switches, sets and resets.
 */
#ifndef CV_CALLBACKS_H
#define CV_CALLBACKS_H

#include "thread.h"

#include <ctxvars.h>
#include <stdatomic.h>
#include <stdbool.h>

/* One bit per registered watcher slot, and CVI_HANDLERS_ACTIVE while any
 * variable with a change handler is registered: a switch with the word at
 * zero calls nothing and pays this one load. */
#define CVI_HANDLERS_ACTIVE (1u << CV_MAX_WATCHERS)
extern atomic_uint cvi_callbacks_active;

/* True while the calling thread runs watchers or handlers. Relaxed: only
 * this thread writes its own flag. */
static inline bool cvi_in_callbacks(void)
{
    return atomic_load_explicit(&cvi_thread_state.callbacks_seq, memory_order_relaxed) & 1;
}

/* True while the calling thread runs watchers, handlers, or a variable's
 * retain or release hook: it may not switch or write then (CV_EBUSY), as
 * the change it is called from is not finished. */
static inline bool cvi_refuses_changes(void)
{
    return cvi_thread_state.changes_refused != 0;
}

/* Whether any watcher or handler is registered: the switch path's only
 * cost when none is. Relaxed: a registration that this load misses raced
 * with the switch; the slow path fences before it looks again. */
static inline bool cvi_callbacks_registered(void)
{
    return __builtin_expect(atomic_load_explicit(&cvi_callbacks_active, memory_order_relaxed) != 0,
                            0);
}

/* Runs the watchers and handlers for a switch of `thread` from `from` to
 * `to`, while it still owns both (an exited context is disowned only after
 * this). Only after cvi_callbacks_registered(), so that the switch path
 * does not even compute its arguments otherwise. */
__attribute__((cold)) void cvi_switch_notify(struct cvi_thread *thread, cv_switch_event_t event,
                                             cv_context_t *from, cv_context_t *to);

/* Calls var's change handler, if it is still registered, for a change the
 * calling thread made by a set or reset. */
void cvi_change_notify(cv_var_t *var, cv_change_cause_t cause, bool had_old, void *old_value,
                       bool has_new, void *new_value);

/* Registers a variable that has a change handler (allocates nothing).
 * Unregistering waits until no call of the handler is under way on another
 * thread, unless called from inside callbacks. */
void cvi_handler_register(cv_var_t *var);
void cvi_handler_unregister(cv_var_t *var);

/* Waits out the calls that may still use what was unregistered from
 * inside callbacks, and frees it; a no-op inside callbacks. */
void cvi_callbacks_settle(void);

/* Ends the run of callbacks that a thread exits from (thread.c). */
void cvi_callbacks_thread_exit(struct cvi_thread *thread);

/* fork() handlers for the registration lock. */
void cvi_callbacks_before_fork(void);
void cvi_callbacks_after_fork(void);

#endif
