/*
 * Per-thread state: the stack of entered contexts, the label that keys the
 * lookup cache, and the block of ids the thread hands out.
 */
#ifndef CV_THREAD_H
#define CV_THREAD_H

#include <ctxvars.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define CVI_INLINE_STACK 8
/* An update in place keeps a retain and a release of its own variable, a
 * merge two more; a shared node copied on the way one per entry. */
#define CVI_DEFERRED_INLINE 8

/* The lookup cache and its version live apart, in cv_private_lookup_state
 * (ctxvars.h), where the header's inline get reads them. */
struct cvi_thread {
    uint32_t depth;       /* entered contexts; stack[0] is the base context */
    cv_context_t **stack; /* entries tagged where lent (CVI_BORROWED, below) */
    uint32_t stack_capacity;
    uint32_t run_floor; /* exit may only pop entries above this index */
    uint64_t next_id, id_block_end;
    bool exit_hook_armed;
    /* Set while the thread updates a map in place: fork() waits until no
     * registered thread has it set (thread.c). Only registered threads
     * update in place. */
    atomic_bool updating_in_place;
    bool registered;
    /* Odd while the thread runs watchers or change handlers: whoever
     * unregisters one waits until it has moved on (callbacks.c). */
    atomic_uint callbacks_seq;
    /* Nonzero while the thread runs callbacks or retain/release hooks (a
     * count of the runs under way): it may not switch or write meanwhile,
     * as the change that called them is not finished. One word, so that
     * switches and writes check it with one load. */
    uint32_t changes_refused;
    /* Calls of retain/release hooks that an update in place made: they
     * wait until the map is whole again (var.c), in the inline array or,
     * past it, in a block allocated until they are made. The new value's
     * retain, made before the update, is skipped once. */
    struct cvi_deferred_hook {
        void (*hook)(void *value);
        void *value;
    } * deferred_hooks, deferred_inline[CVI_DEFERRED_INLINE];
    uint32_t deferred_hook_count, deferred_hook_capacity;
    void (*pre_retain_hook)(void *value);
    void *pre_retained;
    uint32_t flow_suppressed;   /* nesting depth of cv_flow_suppress */
    cv_context_t *task_context; /* reused by cv_task_run (task.c) */
    struct cvi_thread *registry_prev, *registry_next;
    cv_context_t *inline_stack[CVI_INLINE_STACK];
};

/* Tags of stack entries (contexts are at least 8-byte aligned).
 * CVI_BORROWED: pushed by a run, which holds the reference instead of the
 * stack (cv_context_run borrows the caller's). CVI_RUN_OWNED, with it: the
 * run's reference is its own (a task's context), so a thread that exits
 * inside the run drops it. */
#define CVI_BORROWED ((uintptr_t)1)
#define CVI_RUN_OWNED ((uintptr_t)2)

static inline cv_context_t *cvi_stack_context(cv_context_t *entry)
{
    return (cv_context_t *)((uintptr_t)entry & ~(CVI_BORROWED | CVI_RUN_OWNED));
}

static inline bool cvi_stack_borrowed(cv_context_t *entry)
{
    return (uintptr_t)entry & CVI_BORROWED;
}

/* Whether a thread that exits with `entry` on its stack drops a reference. */
static inline bool cvi_stack_holds_reference(cv_context_t *entry)
{
    return !cvi_stack_borrowed(entry) || ((uintptr_t)entry & CVI_RUN_OWNED);
}

/* Initial-exec: one cheap TLS access instead of a call to __tls_get_addr.
 * With cv_private_lookup_state it takes a couple of hundred bytes of the
 * static TLS surplus when the library is dlopen()ed (README,
 * troubleshooting). */
extern __thread struct cvi_thread cvi_thread_state __attribute__((tls_model("initial-exec")));

/* Raised while a fork() is under way: no update in place starts then. */
extern atomic_bool cvi_fork_pending;

/* Returns once the fork() under way is done. */
void cvi_wait_for_fork(void);

/* The calling thread now reads the map labelled `label` (context.h): cache
 * entries stored under any other label stop counting. */
static inline void cvi_thread_view(uint64_t label)
{
    cv_private_lookup_state.version = label;
}

/* cvi_thread_ready's first call on a thread: arms the exit hook and
 * installs the base context. */
struct cvi_thread *cvi_thread_start(void);

/* The calling thread's state with its base context created; NULL if memory
 * is short. Inline: every switch and set starts here. */
static inline struct cvi_thread *cvi_thread_ready(void)
{
    struct cvi_thread *thread = &cvi_thread_state;
    return __builtin_expect(thread->depth != 0, 1) ? thread : cvi_thread_start();
}

static inline cv_context_t *cvi_thread_current(const struct cvi_thread *thread)
{
    return thread->depth ? cvi_stack_context(thread->stack[thread->depth - 1]) : NULL;
}

/* Doubles the thread's stack; false if memory is short. */
bool cvi_thread_grow(struct cvi_thread *thread);

/* Pushes a context the thread now owns, with `tags` (CVI_BORROWED ...);
 * false if memory is short. */
static inline bool cvi_thread_push(struct cvi_thread *thread, cv_context_t *ctx, uintptr_t tags)
{
    if (__builtin_expect(thread->depth == thread->stack_capacity, 0) && !cvi_thread_grow(thread))
        return false;
    thread->stack[thread->depth++] = (cv_context_t *)((uintptr_t)ctx | tags);
    return true;
}

/* Gives the thread its next block of ids (cvi_thread_next_id's slow path). */
void cvi_thread_take_id_block(struct cvi_thread *thread);

/* A process-unique id, for contexts and for the labels of their maps. Never
 * reused, so a token cannot mistake a new context at a reused address for
 * its own, nor a cache entry a new map for an old one. Never 0 (the empty
 * token's) nor CVI_EMPTY_MAP_LABEL. */
static inline uint64_t cvi_thread_next_id(void)
{
    struct cvi_thread *thread = &cvi_thread_state;
    if (__builtin_expect(thread->next_id == thread->id_block_end, 0))
        cvi_thread_take_id_block(thread);
    return thread->next_id++;
}

/* The label of the empty map. No cache entry is ever stored under it, since
 * only values found in a map are cached. */
#define CVI_EMPTY_MAP_LABEL UINT64_C(1)

/* Frees the thread's reusable task context (task.c). */
void cvi_task_thread_exit(struct cvi_thread *thread);

/* Returns once every other registered thread that was running callbacks
 * (an odd callbacks_seq) has finished that run. */
void cvi_thread_wait_callbacks(void);

#endif
