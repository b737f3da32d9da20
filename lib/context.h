/*
 * Contexts as the rest of the library sees them.
 */
#ifndef CV_CONTEXT_H
#define CV_CONTEXT_H

#include "hamt.h"
#include "thread.h"

#include <ctxvars.h>
#include <stdatomic.h>
#include <stdint.h>

struct cv_context {
    /* Written only by the owner (the thread that has the context entered);
     * read lock-free by any thread. */
    _Atomic(cvi_hamt_node *) root;
    /* The thread that has the context entered, or NULL. */
    _Atomic(struct cvi_thread *) owner;
    /* Raised, for good, by the first thread that reads the context without
     * owning it; until then the owner frees replaced roots at once. */
    atomic_uint foreign_readers; /* enum foreign_readers in context.c */
    atomic_size_t refs;
    uint64_t id;
};

/* A context owning one reference to `root` (NULL: empty); NULL if memory
 * is short, and then the reference to root is dropped. */
cv_context_t *cvi_context_new_with_root(cvi_hamt_node *root);

/* The owner's root: only the owner writes it, so a relaxed load is exact. */
static inline cvi_hamt_node *cvi_context_owned_root(cv_context_t *ctx)
{
    return atomic_load_explicit(&ctx->root, memory_order_relaxed);
}

/* Replaces the owner's root with `new_root` (whose reference moves in) and
 * drops the old one. */
void cvi_context_publish(cv_context_t *ctx, cvi_hamt_node *new_root);

/* Makes `thread` the owner of a context nobody has entered; false if some
 * thread has. */
bool cvi_context_claim(cv_context_t *ctx, struct cvi_thread *thread);
/* Gives up ownership. */
void cvi_context_disown(cv_context_t *ctx);
/* Gives up ownership and the stack's reference. */
void cvi_context_leave(cv_context_t *ctx);

/* Drops a reference to a root. The last reference frees it, after a grace
 * period if a reader without a reference may still be walking it. */
void cvi_root_release(cvi_hamt_node *root);

#endif
