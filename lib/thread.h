/*
 * Per-thread state: the stack of entered contexts, the version that keys
 * the lookup cache, and the block of context ids the thread hands out.
 */
#ifndef CV_THREAD_H
#define CV_THREAD_H

#include <ctxvars.h>
#include <stdbool.h>
#include <stdint.h>

#define CVI_INLINE_STACK 8

struct cvi_cache_entry {
    uint64_t version; /* valid while equal to the thread's version */
    void *value;
};

struct cvi_thread {
    /* The hot part, read by every cv_get: first, in one line. */
    uint64_t version; /* changes whenever what cv_get can see changes */
    struct cvi_cache_entry *cache; /* indexed by variable slot */
    uint32_t cache_len;
    uint32_t depth; /* entered contexts; stack[0] is the base context */
    cv_context_t **stack;
    uint32_t stack_capacity;
    uint32_t run_floor; /* exit may only pop entries above this index */
    uint64_t next_context_id, context_id_end;
    bool exit_hook_armed;
    cv_context_t *inline_stack[CVI_INLINE_STACK];
};

/* Initial-exec: one cheap TLS access on the get path instead of a call to
 * __tls_get_addr. It takes a few hundred bytes of the static TLS surplus
 * when the library is dlopen()ed (see README, troubleshooting). */
extern __thread struct cvi_thread cvi_thread_state __attribute__((tls_model("initial-exec")));

/* The calling thread's state with its base context created; NULL if memory
 * is short. */
struct cvi_thread *cvi_thread_ready(void);

static inline cv_context_t *cvi_thread_current(const struct cvi_thread *thread)
{
    return thread->depth ? thread->stack[thread->depth - 1] : NULL;
}

/* Pushes a context the thread now owns; false if memory is short. */
bool cvi_thread_push(struct cvi_thread *thread, cv_context_t *ctx);

/* A process-unique context id; never reused, so a token cannot mistake a
 * new context at a reused address for its own. */
uint64_t cvi_thread_next_context_id(void);

#endif
