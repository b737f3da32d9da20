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
    /* Threads reading the context without owning it (context.c's top
     * comment, the layout below). */
    _Atomic uint64_t foreign;
    /* Set by the owner while it updates nodes in place. */
    atomic_bool writing_in_place;
    /* Owner-only: the arrival count it last saw, and how many updates it has
     * copied since then; enough quiet updates lower the mode again. */
    uint32_t arrivals_seen;
    uint32_t quiet_updates;
    atomic_size_t refs;
    /* Owner-only: the identity its tokens carry, process-unique; 0 until
     * the first token needs one (cvi_context_id), so that copies and task
     * runs, which rarely make tokens, do not take one. */
    uint64_t id;
    /* The spread (spread.h) on which copies count their references to the
     * root, while this context is their base: hung here by the copier that
     * begins it, taken down by whoever ends it (context.c, spread_root). */
    _Atomic(struct cvi_spread *) spread_for_copies;
    /* The spread on which this context's own reference to its root is
     * counted, or NULL (on the root's count): so that releasing a copy of a
     * base touches neither the root nor anything next to it in memory.
     * Cleared with each new root. */
    struct cvi_spread *root_spread;
};

/* A context owning one reference to `root` (NULL: empty); NULL if memory
 * is short, and then the reference to root is dropped. */
cv_context_t *cvi_context_new_with_root(cvi_hamt_node *root);

/* Makes `ctx` a fresh context over `root` (one reference, taken over),
 * whose first token will give it a new identity. Only for memory no other
 * thread can reach. Inline: every copy, capture and task run makes one. */
static inline void cvi_context_init(cv_context_t *ctx, cvi_hamt_node *root)
{
    atomic_init(&ctx->root, root);
    atomic_init(&ctx->owner, NULL);
    atomic_init(&ctx->foreign, 0);
    atomic_init(&ctx->writing_in_place, false);
    ctx->arrivals_seen = 0;
    ctx->quiet_updates = 0;
    atomic_init(&ctx->refs, 1);
    ctx->id = 0;
    atomic_init(&ctx->spread_for_copies, NULL);
    ctx->root_spread = NULL;
}

/* The identity of a context the caller owns, given on first need. No token
 * carries 0, so a context that has none yet matches no token. */
static inline uint64_t cvi_context_id(cv_context_t *ctx)
{
    if (__builtin_expect(!ctx->id, 0))
        ctx->id = cvi_thread_next_id();
    return ctx->id;
}

/* cv_context_run for a context that no other thread can reach before fn
 * is called (a task's private context): claimed without an atomic
 * read-modify-write. */
cv_status_t cvi_context_run_private(cv_context_t *ctx, void (*fn)(void *arg), void *arg);

/* The owner's root: only the owner writes it, so a relaxed load is exact. */
static inline cvi_hamt_node *cvi_context_owned_root(cv_context_t *ctx)
{
    return atomic_load_explicit(&ctx->root, memory_order_relaxed);
}

/* A reference to the root of a context the caller owns (NULL: empty). */
static inline cvi_hamt_node *cvi_context_retain_owned_root(cv_context_t *ctx)
{
    cvi_hamt_node *root = cvi_context_owned_root(ctx);
    if (root)
        cvi_hamt_retain(root);
    return root;
}

/* The label of the map under `root` (var.c's top comment): given to every
 * root a write makes, before it is published. */
static inline uint64_t cvi_map_label(const cvi_hamt_node *root)
{
    return root ? cvi_hamt_label(root) : CVI_EMPTY_MAP_LABEL;
}

/* The calling thread's view is now `ctx`, which it owns. */
static inline void cvi_context_view(cv_context_t *ctx)
{
    cvi_thread_view(cvi_map_label(cvi_context_owned_root(ctx)));
}

/* The foreign word (context.c's top comment), from the low bits: the mode
 * (2 bits), the flag of reads while unowned, grace periods pending since a
 * claim (16 bits), readers inside (24 bits), arrivals (21 bits, wrapping). */
#define CVI_FOREIGN_MODE_MASK UINT64_C(3)
#define CVI_FOREIGN_READ_UNOWNED (UINT64_C(1) << 2)
#define CVI_FOREIGN_ONE_PENDING (UINT64_C(1) << 3)
#define CVI_FOREIGN_PENDING_MASK (UINT64_C(0xffff) << 3)
#define CVI_FOREIGN_ONE_INSIDE (UINT64_C(1) << 19)
#define CVI_FOREIGN_INSIDE_MASK (UINT64_C(0xffffff) << 19)
#define CVI_FOREIGN_ARRIVAL_SHIFT 43
#define CVI_FOREIGN_ONE_ARRIVAL (UINT64_C(1) << CVI_FOREIGN_ARRIVAL_SHIFT)

/* Whether the owner must copy paths: the mode is up, readers are inside,
 * or readers that came while nobody owned the context may still be. */
static inline bool cvi_foreign_readers_about(uint64_t foreign)
{
    return (foreign &
            (CVI_FOREIGN_MODE_MASK | CVI_FOREIGN_PENDING_MASK | CVI_FOREIGN_INSIDE_MASK)) != 0;
}

/* The owner's slow path when foreign readers are about: decides whether
 * they have been gone long enough to update in place again. */
void cvi_context_note_foreign(cv_context_t *ctx, uint64_t foreign);

/* Brackets an update in place by the owner. begin returns false, and the
 * owner must copy paths instead, while foreign readers are about; it waits
 * out a fork() under way. end stores the (possibly new) root.
 *
 * fork() copies the parent's pages at different moments while other
 * threads run on, so an update in place caught halfway would leave the
 * child a torn map and a writing flag nobody clears (a path copy caught
 * halfway only leaks there). The owner stores its thread's flag, fences
 * and loads cvi_fork_pending; fork() stores that, fences and waits for
 * every flag (thread.c): Dekker, with the asymmetric fences of reclaim.h.
 * The context's flag goes up only after that check. */
static inline bool cvi_context_begin_write(cv_context_t *ctx)
{
    struct cvi_thread *thread = &cvi_thread_state;
    /* A thread that fork() cannot wait for never updates in place. */
    if (!thread->registered)
        return false;
    /* Relaxed, this store and the context's below: each fence orders its
     * store before the load that follows it. */
    atomic_store_explicit(&thread->updating_in_place, true, memory_order_relaxed);
    cvi_fence_hot();
    /* Relaxed: ordered by the fence above. */
    while (atomic_load_explicit(&cvi_fork_pending, memory_order_relaxed)) {
        atomic_store_explicit(&thread->updating_in_place, false, memory_order_relaxed);
        cvi_wait_for_fork();
        atomic_store_explicit(&thread->updating_in_place, true, memory_order_relaxed);
        cvi_fence_hot();
    }
    atomic_store_explicit(&ctx->writing_in_place, true, memory_order_relaxed);
    cvi_fence_hot();
    /* Acquire: a zero stored by the owner's own lowering is ordered after
     * the last reader's exit; the fence above does the rest. */
    uint64_t foreign = atomic_load_explicit(&ctx->foreign, memory_order_acquire);
    if (!cvi_foreign_readers_about(foreign))
        return true;
    atomic_store_explicit(&ctx->writing_in_place, false, memory_order_relaxed);
    atomic_store_explicit(&thread->updating_in_place, false, memory_order_relaxed);
    cvi_context_note_foreign(ctx, foreign);
    return false;
}

static inline void cvi_context_end_write(cv_context_t *ctx, cvi_hamt_node *root)
{
    atomic_store_explicit(&ctx->root, root, memory_order_relaxed);
    /* A root with a spread is never updated in place: this one is new, or
     * was ours alone, and counts our reference itself. */
    ctx->root_spread = NULL;
    /* Release, both: a reader that sees the update end sees all of it, and
     * so does a fork() that sees the thread's flag drop. */
    atomic_store_explicit(&ctx->writing_in_place, false, memory_order_release);
    atomic_store_explicit(&cvi_thread_state.updating_in_place, false, memory_order_release);
}

/* Replaces the owner's root with `new_root` (whose reference moves in) and
 * drops the old one. */
void cvi_context_publish(cv_context_t *ctx, cvi_hamt_node *new_root);

/* Makes `thread` the owner of a context nobody has entered; false if some
 * thread has. */
bool cvi_context_claim(cv_context_t *ctx, struct cvi_thread *thread);
void cvi_context_wait_out_unowned_readers(cv_context_t *ctx);

/* The new owner's next step, once nothing can fail any more and before it
 * updates the context: makes sure that readers which found the context
 * unowned are gone before any update in place. Never fails. */
static inline void cvi_context_claimed(cv_context_t *ctx)
{
    /* Seq_cst: after the claim; a plain load in the common case. */
    if (__builtin_expect(atomic_load_explicit(&ctx->foreign, memory_order_seq_cst) &
                             CVI_FOREIGN_READ_UNOWNED,
                         0))
        cvi_context_wait_out_unowned_readers(ctx);
}
/* Gives up ownership. */
void cvi_context_disown(cv_context_t *ctx);
/* Gives up ownership and the stack's reference. */
void cvi_context_leave(cv_context_t *ctx);

/* Drops a reference to a node. The last reference frees it, after a grace
 * period if a reader without a reference may still be walking it. */
void cvi_node_release(cvi_hamt_node *node);

/* Drops a reference to a node that an update in place has unlinked (the
 * map's drop_node): a last reference retires it, never frees it at once. */
void cvi_node_drop_unlinked(cvi_hamt_node *node);

void cvi_context_drop_spread_map(cv_context_t *ctx);

/* Drops the map of a context whose last reference the caller holds, with
 * any spread that copiers hung on it (which would otherwise keep the
 * root's count up for ever). */
static inline void cvi_context_drop_map(cv_context_t *ctx)
{
    /* Relaxed: the last reference is the caller's, taken with an acquire. */
    if (__builtin_expect(
            (uintptr_t)ctx->root_spread |
                (uintptr_t)atomic_load_explicit(&ctx->spread_for_copies, memory_order_relaxed),
            0))
        cvi_context_drop_spread_map(ctx);
    else
        cvi_node_release(cvi_context_owned_root(ctx));
}

#endif
