/*
 * Switch watchers and change handlers.
 *
 * Registrations change rarely and switches happen all the time, so the
 * switch path takes no lock and, with nothing registered, only loads one
 * read-mostly word. Watchers sit in a fixed array of slots; variables with
 * handlers in a list that callers walk without a lock.
 *
 * Unregistering must guarantee that no call is under way afterwards: the
 * caller frees the watcher's data, or the handler's variable goes away.
 * RCU cannot cover it, because callbacks are user code that may release
 * contexts, and retiring inside a read-side section is forbidden (and
 * would deadlock under back-pressure). Instead each thread makes its
 * callbacks_seq odd while it runs callbacks, fences, and only then loads
 * the registrations; an unregisterer first withdraws the registration,
 * fences, and waits for every thread whose count is odd to move on (a
 * Dekker handshake with the asymmetric fences of reclaim.h: the switch
 * side's fence is free).
 *
 * What was withdrawn stays unsettled until such a wait has passed: a
 * watcher's slot is not reused, an unlinked variable is not dropped. The
 * wait happens outside the registration lock, and never inside callbacks:
 * two threads whose callbacks each waited for the other would deadlock. So
 * a withdrawal made from inside a callback returns at once, and what it
 * leaves unsettled is settled by the next wait made outside one (another
 * withdrawal, or cv_reclaim_barrier).
 */
#include "callbacks.h"

#include "alloc.h"
#include "context.h"
#include "reclaim.h"
#include "var.h"

#include <pthread.h>

atomic_uint cvi_callbacks_active;

/* Guards registrations and the unsettled state; never held while waiting
 * or calling out. */
static pthread_mutex_t registration_lock = PTHREAD_MUTEX_INITIALIZER;

struct watcher_slot {
    _Atomic(cv_switch_watcher_t) watcher;
    _Atomic(void *) data;
};
static struct watcher_slot watchers[CV_MAX_WATCHERS];

/* The variables with handlers, linked through next_handler (newest
 * first); the list holds a reference to each. Registering and
 * unregistering allocate nothing, so neither can fail for lack of memory:
 * an unlinked variable keeps its own next pointer, so a caller standing on
 * it walks on, and it stays allocated until it is settled. */
static _Atomic(cv_var_t *) handlers;

static unsigned unsettled_slots;
static cv_var_t *unsettled_vars; /* linked through next_unsettled */

static void unref_vars(cv_var_t *var)
{
    while (var) {
        cv_var_t *next = var->next_unsettled;
        cvi_var_unref(var);
        var = next;
    }
}

/* ------------------------------------------------------------- the calls */

static void begin_callbacks(struct cvi_thread *thread)
{
    /* Relaxed: only this thread writes it; the fence orders the store
     * before the loads of the registrations (Dekker with settle()). */
    unsigned seq = atomic_load_explicit(&thread->callbacks_seq, memory_order_relaxed);
    atomic_store_explicit(&thread->callbacks_seq, seq + 1, memory_order_relaxed);
    cvi_fence_hot();
    thread->changes_refused++;
}

static void end_callbacks(struct cvi_thread *thread)
{
    thread->changes_refused--;
    unsigned seq = atomic_load_explicit(&thread->callbacks_seq, memory_order_relaxed);
    /* Release: the calls happen before a waiter in settle() frees what
     * they used. */
    atomic_store_explicit(&thread->callbacks_seq, seq + 1, memory_order_release);
}

static void call_handler(cv_var_t *var, cv_change_cause_t cause, bool had_old, void *old_value,
                         bool has_new, void *new_value)
{
    if (had_old == has_new && (!had_old || old_value == new_value))
        return;
    cv_change_t change = {var, cause, had_old, has_new, old_value, new_value};
    var->on_change(&change, var->on_change_data);
}

/* Both contexts are owned by the calling thread and cannot change during
 * the calls (callbacks may not write), so their roots are read directly. */
static void diff_handlers(cv_context_t *from, cv_context_t *to)
{
    cvi_hamt_node *from_root = cvi_context_owned_root(from);
    cvi_hamt_node *to_root = cvi_context_owned_root(to);
    if (from_root == to_root)
        return;
    /* Acquire: a variable's fields were written before it was linked. */
    for (cv_var_t *var = atomic_load_explicit(&handlers, memory_order_acquire); var;
         var = atomic_load_explicit(&var->next_handler, memory_order_acquire)) {
        void *old_value = NULL, *new_value = NULL;
        bool had_old = cvi_hamt_find(from_root, var, var->head.hash, &old_value);
        bool has_new = cvi_hamt_find(to_root, var, var->head.hash, &new_value);
        call_handler(var, CV_CHANGE_SWITCH, had_old, old_value, has_new, new_value);
    }
}

void cvi_switch_notify(struct cvi_thread *thread, cv_switch_event_t event, cv_context_t *from,
                       cv_context_t *to)
{
    begin_callbacks(thread);
    /* Acquire: a slot's watcher and data were stored before its bit. */
    unsigned active = atomic_load_explicit(&cvi_callbacks_active, memory_order_acquire);
    for (unsigned bits = active & ~CVI_HANDLERS_ACTIVE; bits; bits &= bits - 1) {
        unsigned slot = (unsigned)__builtin_ctz(bits);
        /* Relaxed: ordered by the acquire load of the bit above. */
        cv_switch_watcher_t watcher =
            atomic_load_explicit(&watchers[slot].watcher, memory_order_relaxed);
        void *data = atomic_load_explicit(&watchers[slot].data, memory_order_relaxed);
        watcher(event, from, to, data);
    }
    if (active & CVI_HANDLERS_ACTIVE)
        diff_handlers(from, to);
    end_callbacks(thread);
}

void cvi_change_notify(cv_var_t *var, cv_change_cause_t cause, bool had_old, void *old_value,
                       bool has_new, void *new_value)
{
    struct cvi_thread *thread = &cvi_thread_state;
    begin_callbacks(thread);
    /* Relaxed: read after begin_callbacks' fence, cleared before settle()'s
     * (the Dekker handshake above). */
    if (atomic_load_explicit(&var->handler_registered, memory_order_relaxed))
        call_handler(var, cause, had_old, old_value, has_new, new_value);
    end_callbacks(thread);
}

/* ---------------------------------------------------------- registration */

/* Waits out every call that may still use what was withdrawn before it,
 * then frees it. Outside callbacks and the lock. */
static void settle(void)
{
    pthread_mutex_lock(&registration_lock);
    unsigned slots = unsettled_slots;
    cv_var_t *vars = unsettled_vars;
    unsettled_vars = NULL;
    pthread_mutex_unlock(&registration_lock);
    cvi_fence_rare();
    cvi_thread_wait_callbacks();
    pthread_mutex_lock(&registration_lock);
    unsettled_slots &= ~slots;
    pthread_mutex_unlock(&registration_lock);
    unref_vars(vars);
}

void cvi_callbacks_settle(void)
{
    if (!cvi_in_callbacks())
        settle();
}

static void update_active(unsigned set_bits, unsigned clear_bits)
{
    unsigned active = atomic_load_explicit(&cvi_callbacks_active, memory_order_relaxed);
    /* Release: pairs with the switch path's acquire load (slot contents,
     * handler set); changed only under registration_lock. */
    atomic_store_explicit(&cvi_callbacks_active, (active | set_bits) & ~clear_bits,
                          memory_order_release);
}

/* A free slot for `watcher`, or -1. Under the lock. */
static int claim_slot(cv_switch_watcher_t watcher, void *data)
{
    unsigned taken =
        atomic_load_explicit(&cvi_callbacks_active, memory_order_relaxed) | unsettled_slots;
    for (int slot = 0; slot < CV_MAX_WATCHERS; slot++) {
        if (taken & (1u << slot))
            continue;
        /* Relaxed: published by the release in update_active. */
        atomic_store_explicit(&watchers[slot].watcher, watcher, memory_order_relaxed);
        atomic_store_explicit(&watchers[slot].data, data, memory_order_relaxed);
        update_active(1u << slot, 0);
        return slot;
    }
    return -1;
}

cv_status_t cv_watcher_add(cv_switch_watcher_t watcher, void *data, int *id)
{
    if (!watcher || !id)
        return CV_EINVAL;
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&registration_lock);
        int slot = claim_slot(watcher, data);
        bool unsettled = unsettled_slots != 0;
        pthread_mutex_unlock(&registration_lock);
        if (slot >= 0) {
            *id = slot;
            cvi_allocator_freeze(); /* the call allocates nothing, but counts */
            return CV_OK;
        }
        /* Slots withdrawn from inside callbacks come free after a wait. */
        if (!unsettled || cvi_in_callbacks())
            break;
        settle();
    }
    return CV_EBUSY;
}

cv_status_t cv_watcher_remove(int id)
{
    if (id < 0 || id >= CV_MAX_WATCHERS)
        return CV_EINVAL;
    pthread_mutex_lock(&registration_lock);
    unsigned active = atomic_load_explicit(&cvi_callbacks_active, memory_order_relaxed);
    bool registered = active & (1u << id);
    if (registered) {
        update_active(0, 1u << id);
        unsettled_slots |= 1u << id;
    }
    pthread_mutex_unlock(&registration_lock);
    if (!registered)
        return CV_EINVAL;
    cvi_callbacks_settle();
    return CV_OK;
}

void cvi_handler_register(cv_var_t *var)
{
    cvi_var_ref(var);
    pthread_mutex_lock(&registration_lock);
    atomic_store_explicit(&var->handler_registered, true, memory_order_relaxed);
    atomic_store_explicit(&var->next_handler, atomic_load_explicit(&handlers, memory_order_relaxed),
                          memory_order_relaxed);
    /* Release: the variable's fields before its link. */
    atomic_store_explicit(&handlers, var, memory_order_release);
    update_active(CVI_HANDLERS_ACTIVE, 0);
    pthread_mutex_unlock(&registration_lock);
}

void cvi_handler_unregister(cv_var_t *var)
{
    pthread_mutex_lock(&registration_lock);
    /* Relaxed: settle()'s fence orders it before the wait. */
    atomic_store_explicit(&var->handler_registered, false, memory_order_relaxed);
    _Atomic(cv_var_t *) *link = &handlers;
    while (atomic_load_explicit(link, memory_order_relaxed) != var)
        link = &atomic_load_explicit(link, memory_order_relaxed)->next_handler;
    /* Release: a reader that follows the new link sees the successor's
     * fields (we hold the lock its registration released). Readers that
     * loaded the old one may still reach var, kept until settled. */
    atomic_store_explicit(link, atomic_load_explicit(&var->next_handler, memory_order_relaxed),
                          memory_order_release);
    if (!atomic_load_explicit(&handlers, memory_order_relaxed))
        update_active(0, CVI_HANDLERS_ACTIVE);
    var->next_unsettled = unsettled_vars;
    unsettled_vars = var;
    pthread_mutex_unlock(&registration_lock);
    cvi_callbacks_settle();
}

void cvi_callbacks_before_fork(void)
{
    pthread_mutex_lock(&registration_lock);
}

void cvi_callbacks_after_fork(void)
{
    pthread_mutex_unlock(&registration_lock);
}

void cvi_callbacks_thread_exit(struct cvi_thread *thread)
{
    /* A thread that exits from inside a callback ends that run here. */
    if (atomic_load_explicit(&thread->callbacks_seq, memory_order_relaxed) & 1)
        end_callbacks(thread);
}
