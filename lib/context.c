/*
 * Contexts: a reference-counted handle on a map root, plus the thread that
 * has it entered.
 *
 * Only the owner (the thread that has the context entered) replaces the
 * root. Any other thread reads the root inside an RCU read-side critical
 * section, so every node it walks stays allocated until it is done, and it
 * sees one complete map: the one before or the one after each set. A
 * reader that wants to keep the map (copy, iteration, equality) takes a
 * reference to the root while still inside the critical section; if the
 * owner has just dropped that root's last reference, it loads the root
 * again and finds the newer one. A context that no thread has entered never
 * changes.
 *
 * Most contexts are never read by a thread that does not own them. Their
 * owner need not copy paths at all: it updates its nodes in place where it
 * holds the only reference, and frees what it replaces at once (both cost
 * nothing like a cross-thread free through RCU). So a foreign reader
 * announces itself in the context's `foreign` word before it loads the
 * root, and the owner checks the word at the start of each update and
 * after storing each new root:
 *
 *  - before an update, the owner sets writing_in_place, fences and loads
 *    the word; a reader that finds the mode down raises it, fences, and
 *    waits until writing_in_place is clear. Either the owner sees the word
 *    and copies paths, or the reader waits for the update in place to end,
 *    after which the owner sees the word.
 *  - after publishing a new root, the owner fences and loads the word:
 *    with the mode up or readers inside, the old root is marked shared and
 *    its last release retires it through RCU; otherwise the reader loads
 *    the new root and never sees the old one, which is freed at once.
 *
 * Each side stores, fences, then loads the other's location (Dekker). The
 * fences are asymmetric (reclaim.h): the owner's, on every set, is free; the
 * reader's is a membarrier(2) call, paid only by a reader that finds the
 * mode down. Marking the node, not just the context, covers a root shared
 * by several contexts whose last reference another owner drops.
 *
 * The word also counts the readers inside (they enter and leave with one
 * atomic add each) and their arrivals. Once the owner has copied
 * QUIET_UPDATES_TO_LOWER updates in a row with no reader inside and no new
 * arrival, it lowers the mode with a compare-and-swap that succeeds only
 * while nobody is inside: a reader that arrives later finds the mode down
 * and handshakes again. So a context that is copied now and then goes back
 * to updates in place, and one that is read all the time stays in copying
 * mode without a membarrier per read. A mode that stayed up for good made
 * every later update of such a context a path copy retired through RCU,
 * which on a busy machine outran reclamation and grew without bound.
 *
 * A context that nobody has entered cannot change, and is often read by
 * many threads at once (a base context that every request copies). Its
 * readers count nothing: inside the read-side section they raise the
 * word's sticky flag of reads while unowned (once: later readers find it
 * up and only load it) and check that the owner is still nobody. A thread
 * that claims the context then sees the flag (or the reader sees the
 * claim), takes it down, and copies paths until a grace period has passed,
 * when every such reader is done (a pending count in the word, dropped by
 * a deferred call). Counting them would bounce one cache line between
 * all the cores that copy the context.
 */
#include "context.h"

#include "alloc.h"
#include "callbacks.h"
#include "reclaim.h"
#include "spread.h"
#include "testing.h"
#include "var.h"

#include <sched.h>

/* The mode of the foreign word (layout in context.h). A reader that finds
 * ANNOUNCED knows that a rare-side fence ran after the mode went up; one
 * that finds RAISING runs its own. */
enum foreign_mode { FOREIGN_NONE, FOREIGN_RAISING, FOREIGN_ANNOUNCED };
#define QUIET_UPDATES_TO_LOWER 64

cv_context_t *cvi_context_new_with_root(cvi_hamt_node *root)
{
    cv_context_t *ctx = cvi_alloc(sizeof(*ctx));
    if (!ctx) {
        cvi_node_release(root);
        return NULL;
    }
    cvi_context_init(ctx, root);
    return ctx;
}

static void dispose_node(void *node)
{
    cvi_spread_free(node);
    cvi_hamt_destroy(node, &cvi_var_entry_ops);
}

/* Drops a reference to `node` on its count. */
static inline void release_on_count(cvi_hamt_node *node)
{
    /* A sole owner may skip the atomic decrement, since a new reference
     * needs an existing one, but not on a node marked shared: a foreign
     * reader may be taking one with cvi_hamt_try_retain from a root pointer
     * it loaded, and only the decrement decides which of the two wins. The
     * count first: its acquire makes the mark that a former owner set
     * before its release-decrement visible to the load after it. Read in
     * the other order, the mark could be loaded before that owner set it
     * and the count after it dropped its reference, and a reader's retain
     * would then succeed on a node on its way to being freed. */
    bool skip = cvi_hamt_sole_owner(node) && !cvi_hamt_is_shared(node);
    if (!skip && !cvi_hamt_release(node))
        return;
    /* Read the mark only now: the acquire above orders it after the
     * release-decrement of whoever set it. */
    if (cvi_hamt_is_shared(node))
        cvi_retire(node, dispose_node);
    else
        dispose_node(node);
}

/* Out of line, so that cvi_node_release's common path needs no frame. */
__attribute__((noinline)) static void release_spread_node(cvi_hamt_node *node)
{
    if (!cvi_spread_release_node(node))
        release_on_count(node);
}

/* Not inlined: its callers' paths (copies, releases, sets) stay as short
 * as a call. */
__attribute__((noinline)) void cvi_node_release(cvi_hamt_node *node)
{
    if (!node)
        return;
    if (__builtin_expect(cvi_spread_attached(node), 0))
        release_spread_node(node);
    else
        release_on_count(node);
}

static void drop_unlinked(cvi_hamt_node *node)
{
    if (__builtin_expect(cvi_spread_attached(node), 0) && cvi_spread_release_node(node))
        return;
    /* The node is shared (an update in place copies it instead of changing
     * it): only another holder's concurrent release can leave this one the
     * last, and then the node may still be the context's root until the
     * update ends. Disposing of it here would call release hooks, which may
     * copy that root; after a grace period nothing can. */
    if (cvi_hamt_release(node))
        cvi_retire(node, dispose_node);
}

void cvi_node_drop_unlinked(cvi_hamt_node *node)
{
    /* In the middle of an update: a disposal here, if reclamation is
     * behind, would have its release hooks kept until the update ends, out
     * of a barrier's sight. */
    cvi_reclaim_forbid_waiting();
    drop_unlinked(node);
    cvi_reclaim_allow_waiting();
}

void cvi_context_publish(cv_context_t *ctx, cvi_hamt_node *new_root)
{
    cvi_hamt_node *old_root = cvi_context_owned_root(ctx);
    /* Release: the new nodes are complete before readers can reach them. */
    atomic_store_explicit(&ctx->root, new_root, memory_order_release);
    if (!old_root)
        return;
    ctx->root_spread = NULL; /* cvi_node_release finds the old root's spread */
    cvi_fence_hot();
    /* Relaxed: ordered by the fence above (see the top comment). */
    if (cvi_foreign_readers_about(atomic_load_explicit(&ctx->foreign, memory_order_relaxed)))
        cvi_hamt_mark_shared(old_root);
    cvi_node_release(old_root);
}

static void unowned_readers_gone(void *arg)
{
    cv_context_t *ctx = arg;
    /* Release: their walks happen before the owner's next update in place
     * (its acquire load of the word in begin_write). */
    atomic_fetch_sub_explicit(&ctx->foreign, CVI_FOREIGN_ONE_PENDING, memory_order_release);
    cv_context_release(ctx);
}

/* Readers that found the context unowned (read_unowned) counted nothing:
 * the new owner copies paths until a grace period from now, after which
 * every one of them is done. Out of line: a claim rarely needs it, and
 * inlined it cost every enter a larger frame. */
__attribute__((noinline)) void cvi_context_wait_out_unowned_readers(cv_context_t *ctx)
{
    /* Seq_cst: ordered after our claim (see read_unowned). */
    uint64_t foreign =
        atomic_fetch_and_explicit(&ctx->foreign, ~CVI_FOREIGN_READ_UNOWNED, memory_order_seq_cst);
    if (!(foreign & CVI_FOREIGN_READ_UNOWNED))
        return;
    /* We are about to change the root that copiers may be counting on.
     * Seq_cst: the claimer's half of the Dekker pair in spread_root. */
    struct cvi_spread *spread =
        atomic_exchange_explicit(&ctx->spread_for_copies, NULL, memory_order_seq_cst);
    if (spread)
        cvi_spread_end(spread);
    /* Relaxed: only this thread looks at the pending count until the
     * grace period ends. */
    if ((foreign & CVI_FOREIGN_PENDING_MASK) != CVI_FOREIGN_PENDING_MASK) {
        atomic_fetch_add_explicit(&ctx->foreign, CVI_FOREIGN_ONE_PENDING, memory_order_relaxed);
        cv_context_retain(ctx);
        if (cvi_defer(unowned_readers_gone, ctx))
            return;
        cv_context_release(ctx);
        atomic_fetch_sub_explicit(&ctx->foreign, CVI_FOREIGN_ONE_PENDING, memory_order_relaxed);
    }
    /* Out of memory, or the count is full: wait for the grace period here. */
    cvi_synchronize();
}

bool cvi_context_claim(cv_context_t *ctx, struct cvi_thread *thread)
{
    struct cvi_thread *nobody = NULL;
    /* Seq_cst: the Dekker pair of read_unowned's flag store and owner load;
     * it also acquires from cvi_context_disown, so the previous owner's
     * last root is the one we start from. */
    return atomic_compare_exchange_strong_explicit(&ctx->owner, &nobody, thread,
                                                   memory_order_seq_cst, memory_order_relaxed);
}

void cvi_context_disown(cv_context_t *ctx)
{
    /* Release: publishes our sets to the next owner. */
    atomic_store_explicit(&ctx->owner, NULL, memory_order_release);
}

void cvi_context_leave(cv_context_t *ctx)
{
    cvi_context_disown(ctx);
    cv_context_release(ctx);
}

static bool owned_by_caller(cv_context_t *ctx)
{
    /* Relaxed: only this thread can store itself here. */
    return atomic_load_explicit(&ctx->owner, memory_order_relaxed) == &cvi_thread_state;
}

void cvi_context_note_foreign(cv_context_t *ctx, uint64_t foreign)
{
    uint32_t arrivals = (uint32_t)(foreign >> CVI_FOREIGN_ARRIVAL_SHIFT);
    if ((foreign & (CVI_FOREIGN_INSIDE_MASK | CVI_FOREIGN_PENDING_MASK)) ||
        arrivals != ctx->arrivals_seen) {
        ctx->arrivals_seen = arrivals;
        ctx->quiet_updates = 0;
        return;
    }
    if (++ctx->quiet_updates < QUIET_UPDATES_TO_LOWER)
        return;
    ctx->quiet_updates = 0;
    /* Acquire: the walks of every reader that has left (release) happen
     * before our next update in place. Fails harmlessly if one arrived. */
    atomic_compare_exchange_strong_explicit(&ctx->foreign, &foreign,
                                            foreign & ~CVI_FOREIGN_MODE_MASK, memory_order_acquire,
                                            memory_order_relaxed);
}

/* Brings the mode up from `seen` (which counts us already) and runs the
 * reader's half of the handshake. */
static void announce(cv_context_t *ctx, uint64_t seen)
{
    /* Relaxed: the fence below orders it before our loads. */
    while ((seen & CVI_FOREIGN_MODE_MASK) == FOREIGN_NONE &&
           !atomic_compare_exchange_weak_explicit(&ctx->foreign, &seen, seen | FOREIGN_RAISING,
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
    cvi_fence_rare();
    /* Acquire: pairs with end_write, so the nodes it changed in place are
     * seen whole. */
    while (atomic_load_explicit(&ctx->writing_in_place, memory_order_acquire))
        sched_yield();
    /* Release: hands the fence's effect on to readers that find ANNOUNCED.
     * The mode cannot go down meanwhile: we are inside. */
    while ((seen & CVI_FOREIGN_MODE_MASK) != FOREIGN_ANNOUNCED &&
           !atomic_compare_exchange_weak_explicit(
               &ctx->foreign, &seen, (seen & ~CVI_FOREIGN_MODE_MASK) | FOREIGN_ANNOUNCED,
               memory_order_release, memory_order_relaxed))
        ;
}

/* The reader's half: counts us in and, if the mode was down, runs the
 * handshake. Never inside a read-side section: the owner may wait for a
 * grace period in the middle of an update in place (its first call_rcu
 * registers it with liburcu, which waits for the readers), so waiting for
 * the owner inside one could deadlock. */
static void foreign_enter(cv_context_t *ctx)
{
    /* Acquire: finding ANNOUNCED orders our root load after the fence that
     * the announcing reader ran. One add both counts us and reads the mode,
     * so the owner cannot lower it between the two. */
    uint64_t seen =
        atomic_fetch_add_explicit(&ctx->foreign, CVI_FOREIGN_ONE_INSIDE + CVI_FOREIGN_ONE_ARRIVAL,
                                  memory_order_acquire) +
        CVI_FOREIGN_ONE_INSIDE + CVI_FOREIGN_ONE_ARRIVAL;
    if ((seen & CVI_FOREIGN_MODE_MASK) != FOREIGN_ANNOUNCED)
        announce(ctx, seen);
}

/* The root of a context we have entered as a foreign reader, walkable
 * until the read-side section around this call ends. */
static cvi_hamt_node *foreign_root(cv_context_t *ctx)
{
    /* Acquire: pairs with the owner's release store in publish. */
    return atomic_load_explicit(&ctx->root, memory_order_acquire);
}

static void foreign_leave(cv_context_t *ctx)
{
    /* Release: our walk happens before any update in place that follows
     * the owner's lowering of the mode (its acquire compare-and-swap). */
    atomic_fetch_sub_explicit(&ctx->foreign, CVI_FOREIGN_ONE_INSIDE, memory_order_release);
}

/* Inside a read-side section: whether the context has no owner, in which
 * case the caller may read it without counting itself. It raises the
 * word's flag of reads while unowned first, so that a thread that claims
 * the context meanwhile sees the flag (or we see its claim) and copies
 * paths for a grace period (wait_out_unowned_readers). A context that every
 * request copies, and nobody enters, is read this way: the flag goes up
 * once, and readers share its cache line instead of bouncing a count. */
static bool read_unowned(cv_context_t *ctx)
{
    /* Seq_cst, the three of them: the reader's half of the Dekker pair
     * with cvi_context_claim (flag, then owner; claim, then flag). */
    if (!(atomic_load_explicit(&ctx->foreign, memory_order_seq_cst) & CVI_FOREIGN_READ_UNOWNED))
        atomic_fetch_or_explicit(&ctx->foreign, CVI_FOREIGN_READ_UNOWNED, memory_order_seq_cst);
    return atomic_load_explicit(&ctx->owner, memory_order_seq_cst) == NULL;
}

/* Runs walk(ctx, arg) on the current map of a context that the caller
 * does not own, inside a read-side section, announced as the context's
 * state asks: not at all while nobody owns it, counted otherwise. */
static void read_foreign(cv_context_t *ctx, void (*walk)(cv_context_t *ctx, void *arg), void *arg)
{
    cvi_read_lock();
    bool unowned = read_unowned(ctx);
    if (unowned)
        walk(ctx, arg);
    cvi_read_unlock();
    if (unowned)
        return;
    foreign_enter(ctx);
    cvi_read_lock();
    walk(ctx, arg);
    cvi_read_unlock();
    foreign_leave(ctx);
}

struct kept {
    cvi_hamt_node *root;
    struct cvi_spread *spread; /* the one root's reference is counted on */
    bool contended;            /* another thread changed root's count meanwhile */
};

/* Takes a reference to the root into ((struct kept *)arg)->root, on the
 * context's spread if it has one. A failed retain on the count means the
 * owner has just replaced this root and dropped it: the next load finds
 * the new one. */
static void keep_root(cv_context_t *ctx, void *arg)
{
    struct kept *kept = arg;
    /* Acquire: pairs with the release in spread_root, so the spread is seen
     * whole. */
    struct cvi_spread *spread = atomic_load_explicit(&ctx->spread_for_copies, memory_order_acquire);
    for (;;) {
        cvi_hamt_node *root = foreign_root(ctx);
        kept->root = root;
        if (!root)
            return;
        if (spread && cvi_spread_retain(spread, root)) {
            kept->spread = spread;
            return;
        }
        if (cvi_hamt_try_retain(root, &kept->contended))
            return;
    }
}

static bool spread_every_copy_for_testing;

void cv_testing_spread_every_copy(bool spread)
{
    spread_every_copy_for_testing = spread;
}

/* Spreads the count of `root`, which the caller has just copied from `ctx`
 * and holds a reference to (spread.h), and hangs the spread on ctx for its
 * copiers. */
static void spread_root(cv_context_t *ctx, cvi_hamt_node *root)
{
    struct cvi_spread *spread = cvi_spread_begin(root, dispose_node);
    if (!spread)
        return;
    /* Seq_cst, the four: the Dekker pair with a claim of ctx. A thread that
     * claims it from now on finds the flag and ends the spread
     * (cvi_context_wait_out_unowned_readers); one that claimed it earlier,
     * and may already have replaced its root, is seen here. A spread of an
     * earlier root still hanging here is its spreader's to take down. */
    struct cvi_spread *none = NULL;
    if (!atomic_compare_exchange_strong_explicit(&ctx->spread_for_copies, &none, spread,
                                                 memory_order_seq_cst, memory_order_relaxed)) {
        cvi_spread_end(spread);
        return;
    }
    atomic_fetch_or_explicit(&ctx->foreign, CVI_FOREIGN_READ_UNOWNED, memory_order_seq_cst);
    if (!atomic_load_explicit(&ctx->owner, memory_order_seq_cst) &&
        atomic_load_explicit(&ctx->root, memory_order_seq_cst) == root)
        return;
    /* Seq_cst, as the claimer's exchange; only if the claimer missed it. */
    if (atomic_compare_exchange_strong_explicit(&ctx->spread_for_copies, &spread, NULL,
                                                memory_order_seq_cst, memory_order_relaxed))
        cvi_spread_end(spread);
}

/* Out of line, so that the owner's path saves no registers for it. */
__attribute__((noinline)) static cvi_hamt_node *snapshot_foreign(cv_context_t *ctx,
                                                                 struct cvi_spread **spread)
{
    struct kept kept = {NULL, NULL, spread_every_copy_for_testing};
    read_foreign(ctx, keep_root, &kept);
    /* Relaxed: a hint; spread_root checks again. Only the copies of a
     * context nobody has entered are spread: they are the ones that every
     * request makes of one base. */
    if (kept.contended && kept.root && !atomic_load_explicit(&ctx->owner, memory_order_relaxed))
        spread_root(ctx, kept.root);
    *spread = kept.spread;
    return kept.root;
}

/* A reference to the current root of `ctx` (NULL: empty), which another
 * thread may be writing; *spread is the spread it is counted on, if any. */
static cvi_hamt_node *snapshot_counted(cv_context_t *ctx, struct cvi_spread **spread)
{
    *spread = NULL;
    return owned_by_caller(ctx) ? cvi_context_retain_owned_root(ctx)
                                : snapshot_foreign(ctx, spread);
}

/* The same, for a reference that cvi_node_release drops. */
static cvi_hamt_node *snapshot(cv_context_t *ctx)
{
    struct cvi_spread *spread;
    return snapshot_counted(ctx, &spread);
}

cv_context_t *cv_context_new(void)
{
    return cvi_context_new_with_root(NULL);
}

cv_context_t *cv_copy_context(void)
{
    cv_context_t *current = cvi_thread_current(&cvi_thread_state);
    /* Every context on the thread's stack is the thread's own. */
    return current ? cvi_context_new_with_root(cvi_context_retain_owned_root(current))
                   : cv_context_new();
}

cv_context_t *cv_context_copy(cv_context_t *ctx)
{
    if (!ctx)
        return NULL;
    struct cvi_spread *spread;
    cv_context_t *copy = cvi_context_new_with_root(snapshot_counted(ctx, &spread));
    if (copy)
        copy->root_spread = spread;
    return copy;
}

void cv_context_retain(cv_context_t *ctx)
{
    /* Relaxed: the caller holds a reference already. */
    if (ctx)
        atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
}

/* cvi_context_drop_map's case of a context that has a spread: a base ends
 * its copies' spread (they count on the root's word again), a copy drops
 * its reference on its shard. Out of line: most contexts have neither. */
__attribute__((noinline)) void cvi_context_drop_spread_map(cv_context_t *ctx)
{
    struct cvi_spread *spread = atomic_load_explicit(&ctx->spread_for_copies, memory_order_relaxed);
    if (spread)
        cvi_spread_end(spread);
    if (!ctx->root_spread || !cvi_spread_release(ctx->root_spread))
        cvi_node_release(cvi_context_owned_root(ctx));
    /* The spread goes with the root: a context kept for reuse (a task's)
     * must not end it again. Relaxed: nobody else holds ctx. */
    atomic_store_explicit(&ctx->spread_for_copies, NULL, memory_order_relaxed);
    ctx->root_spread = NULL;
}

void cv_context_release(cv_context_t *ctx)
{
    if (!ctx)
        return;
    /* A sole owner skips the atomic decrement: a new reference needs an
     * existing one. Acquire: former owners are done with the context. */
    if (atomic_load_explicit(&ctx->refs, memory_order_acquire) != 1) {
        /* Acq_rel: every use of the context happens before its free. */
        if (atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) != 1)
            return;
    }
    cvi_context_drop_map(ctx);
    cvi_free(ctx, sizeof(*ctx));
}

/* ------------------------------------------------------------- switching */

enum entry {
    ENTER_REFERENCED, /* the stack takes a reference (cv_context_enter) */
    ENTER_BORROWED,   /* the caller lends its own for the run */
    ENTER_PRIVATE,    /* borrowed, and no other thread can reach ctx yet */
};

/* Claims and pushes `ctx`, at the stack index it stores in *pushed_at.
 * Always inline, as run() is. */
__attribute__((always_inline)) static inline cv_status_t enter(cv_context_t *ctx, enum entry entry,
                                                               uint32_t *pushed_at)
{
    if (!ctx)
        return CV_EINVAL;
    if (cvi_refuses_changes())
        return CV_EBUSY;
    struct cvi_thread *thread = cvi_thread_ready();
    if (!thread)
        return CV_ENOMEM;
    if (entry == ENTER_PRIVATE)
        /* Relaxed: nobody else holds ctx; whoever it is handed to from
         * inside the run gets it through a synchronising hand-off. */
        atomic_store_explicit(&ctx->owner, thread, memory_order_relaxed);
    else if (__builtin_expect(!cvi_context_claim(ctx, thread), 0))
        return CV_EBUSY;
    static const uintptr_t tags[] = {
        [ENTER_REFERENCED] = 0,
        [ENTER_BORROWED] = CVI_BORROWED,
        [ENTER_PRIVATE] = CVI_BORROWED | CVI_RUN_OWNED,
    };
    *pushed_at = thread->depth;
    if (!cvi_thread_push(thread, ctx, tags[entry])) {
        cvi_context_disown(ctx);
        return CV_ENOMEM;
    }
    if (entry == ENTER_REFERENCED)
        cv_context_retain(ctx);
    /* A private context has had no reader that could find it unowned. */
    if (entry != ENTER_PRIVATE)
        cvi_context_claimed(ctx);
    cvi_context_view(ctx);
    if (cvi_callbacks_registered())
        cvi_switch_notify(thread, CV_SWITCH_ENTER,
                          cvi_stack_context(thread->stack[thread->depth - 2]), ctx);
    return CV_OK;
}

cv_status_t cv_context_enter(cv_context_t *ctx)
{
    uint32_t pushed_at;
    return enter(ctx, ENTER_REFERENCED, &pushed_at);
}

/* Pops the entry at `top`, the top of the stack, dropping the stack's
 * reference unless the entry was lent by a run. A run passes the index it
 * pushed at, so that back-to-back runs carry the depth from one to the next
 * through one store and one load, not a load of the depth its push has just
 * stored (each such store-to-load round trip is several cycles on the
 * critical path). */
__attribute__((always_inline)) static inline void pop_at(struct cvi_thread *thread, uint32_t top)
{
    cv_context_t *entry = thread->stack[top];
    thread->depth = top;
    /* The base context is never popped: something is left below. */
    cvi_context_view(cvi_stack_context(thread->stack[top - 1]));
    /* Before the context is given up: callbacks read both maps as owned. */
    if (cvi_callbacks_registered())
        cvi_switch_notify(thread, CV_SWITCH_EXIT, cvi_stack_context(entry),
                          cvi_thread_current(thread));
    if (cvi_stack_borrowed(entry))
        cvi_context_disown(cvi_stack_context(entry));
    else
        cvi_context_leave(entry);
}

cv_status_t cv_context_exit(cv_context_t *ctx)
{
    if (!ctx)
        return CV_EINVAL;
    struct cvi_thread *thread = &cvi_thread_state;
    /* The base context, and the context of an enclosing run, are below the
     * floor: only what the caller entered itself can be exited. */
    if (thread->depth <= thread->run_floor + 1 || cvi_thread_current(thread) != ctx)
        return CV_ENOTCURRENT;
    if (cvi_refuses_changes())
        return CV_EBUSY;
    pop_at(thread, thread->depth - 1);
    return CV_OK;
}

/* Always inline: each caller passes a constant `entry`, and an outlined
 * copy costs the run path a second call and its register saves. */
__attribute__((always_inline)) static inline cv_status_t run(cv_context_t *ctx, enum entry entry,
                                                             void (*fn)(void *arg), void *arg)
{
    if (!fn)
        return CV_EINVAL;
    /* The caller's reference keeps ctx alive for the call: no refcount
     * traffic, which keeps runs of one shared context scaling. */
    uint32_t index;
    cv_status_t status = enter(ctx, entry, &index);
    if (status != CV_OK)
        return status;
    struct cvi_thread *thread = &cvi_thread_state;
    uint32_t outer_floor = thread->run_floor;
    thread->run_floor = index;
    fn(arg);
    thread->run_floor = outer_floor;
    /* The depth is loaded here only to decide: the pop's store uses index. */
    while (thread->depth - 1 > index) {
        pop_at(thread, thread->depth - 1); /* left entered by fn */
        status = CV_ENOTCURRENT;
    }
    pop_at(thread, index);
    return status;
}

cv_status_t cv_context_run(cv_context_t *ctx, void (*fn)(void *arg), void *arg)
{
    return run(ctx, ENTER_BORROWED, fn, arg);
}

cv_status_t cvi_context_run_private(cv_context_t *ctx, void (*fn)(void *arg), void *arg)
{
    return run(ctx, ENTER_PRIVATE, fn, arg);
}

/* ---------------------------------------------------------- mapping API */

struct lookup {
    const cv_var_t *var;
    void **value;
    bool found;
};

static void look_up(cv_context_t *ctx, void *arg)
{
    struct lookup *lookup = arg;
    lookup->found =
        cvi_hamt_find(foreign_root(ctx), lookup->var, lookup->var->head.hash, lookup->value);
}

/* Runs a lookup on the context's current map without keeping it. */
static bool find(cv_context_t *ctx, const cv_var_t *var, void **value)
{
    if (owned_by_caller(ctx))
        return cvi_hamt_find(cvi_context_owned_root(ctx), var, var->head.hash, value);
    struct lookup lookup = {var, value, false};
    read_foreign(ctx, look_up, &lookup);
    return lookup.found;
}

static void count_keys(cv_context_t *ctx, void *arg)
{
    *(size_t *)arg = cvi_hamt_count(foreign_root(ctx));
}

cv_status_t cv_context_get(cv_context_t *ctx, const cv_var_t *var, void **out)
{
    if (!ctx || !var || !out)
        return CV_EINVAL;
    return find(ctx, var, out) ? CV_OK : CV_ENOVALUE;
}

bool cv_context_contains(cv_context_t *ctx, const cv_var_t *var)
{
    void *value;
    return ctx && var && find(ctx, var, &value);
}

size_t cv_context_len(cv_context_t *ctx)
{
    if (!ctx)
        return 0;
    if (owned_by_caller(ctx))
        return cvi_hamt_count(cvi_context_owned_root(ctx));
    size_t len;
    read_foreign(ctx, count_keys, &len);
    return len;
}

bool cv_context_equal(cv_context_t *a, cv_context_t *b)
{
    if (!a || !b)
        return false;
    if (a == b)
        return true;
    cvi_hamt_node *root_a = snapshot(a), *root_b = snapshot(b);
    bool equal = cvi_hamt_equal(root_a, root_b, &cvi_var_entry_ops);
    cvi_node_release(root_a);
    cvi_node_release(root_b);
    return equal;
}

void cv_context_iter_init(cv_context_iter_t *it, cv_context_t *ctx)
{
    if (!it)
        return;
    cvi_hamt_node *root = ctx ? snapshot(ctx) : NULL;
    it->cv_private_snapshot = root;
    cvi_hamt_iter_init(&it->cv_private_walk, root);
}

bool cv_context_iter_next(cv_context_iter_t *it, cv_var_t **var, void **value)
{
    void *key, *found;
    if (!it || !cvi_hamt_iter_next(&it->cv_private_walk, &key, &found))
        return false;
    if (var)
        *var = key;
    if (value)
        *value = found;
    return true;
}

void cv_context_iter_fini(cv_context_iter_t *it)
{
    if (!it)
        return;
    cvi_node_release(it->cv_private_snapshot);
    it->cv_private_snapshot = NULL;
    cvi_hamt_iter_init(&it->cv_private_walk, NULL);
}

void cv_reclaim_barrier(void)
{
    cvi_allocator_freeze();
    cvi_callbacks_settle();
    cvi_reclaim_barrier();
}
