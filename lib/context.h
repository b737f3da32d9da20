/*
 * Contexts as the rest of the library sees them.
 */
#ifndef CV_CONTEXT_H
#define CV_CONTEXT_H

#include "hamt.h"
#include "reclaim.h"
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
    /* Set by the owner while it updates nodes in place. */
    atomic_bool writing_in_place;
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

static inline bool cvi_foreign_readers_announced(cv_context_t *ctx)
{
    /* Relaxed: ordered by the fence before it (see context.c's top comment). */
    return atomic_load_explicit(&ctx->foreign_readers, memory_order_relaxed) != 0;
}

/* Brackets an update in place by the owner. begin returns false, and the
 * owner must copy paths instead, once a foreign reader has announced
 * itself; end stores the (possibly new) root. */
static inline bool cvi_context_begin_write(cv_context_t *ctx)
{
    /* Relaxed: the fence below orders it before the flag load. */
    atomic_store_explicit(&ctx->writing_in_place, true, memory_order_relaxed);
    cvi_fence_hot();
    if (!cvi_foreign_readers_announced(ctx))
        return true;
    atomic_store_explicit(&ctx->writing_in_place, false, memory_order_relaxed);
    return false;
}

static inline void cvi_context_end_write(cv_context_t *ctx, cvi_hamt_node *root)
{
    atomic_store_explicit(&ctx->root, root, memory_order_relaxed);
    /* Release: a reader that sees the update end sees all of it. */
    atomic_store_explicit(&ctx->writing_in_place, false, memory_order_release);
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

/* Drops a reference to a node. The last reference frees it, after a grace
 * period if a reader without a reference may still be walking it. */
void cvi_node_release(cvi_hamt_node *node);

#endif
