/*
 * Spread reference counts: the count of a root that many threads copy at
 * once, spread over per-CPU shards so that the copies do not bounce one
 * cache line between the cores (spread.c's top comment).
 *
 * The life of a spread: a copier that collided with another on the root's
 * count begins it (cvi_spread_begin) and hangs it on the context it copied,
 * the base; copiers then retain and release on their shards; when the base
 * gives the root up (it is released, or a thread claims it), cvi_spread_end
 * folds the shards back into the count, and the root lives on, and dies, as
 * any other.
 */
#ifndef CV_SPREAD_H
#define CV_SPREAD_H

#include "hamt.h"

#include <stdatomic.h>
#include <stdbool.h>

struct cvi_spread;

/* Gives `root`, which the caller holds a reference to, spread counting,
 * unless it has (or had) a spread, the machine has one CPU, or memory is
 * short: the spread if it began here, else NULL. The caller publishes it
 * where the copiers of root will find it (context.c: the base context's
 * spread_for_copies). `dispose` is how a root whose count the fold brings
 * to zero is disposed of, after a grace period. The root is marked shared
 * (hamt.h): it is never updated in place again. */
struct cvi_spread *cvi_spread_begin(cvi_hamt_node *root, void (*dispose)(void *node));

/* Whether `node` has a spread, live or ended. Inline: every release of a
 * root asks. */
static inline bool cvi_spread_attached(const cvi_hamt_node *node)
{
    /* Relaxed: only a hint; cvi_spread_release loads it again with acquire. */
    return atomic_load_explicit(&cvi_hamt_const_head(node)->attachment, memory_order_relaxed) !=
           NULL;
}

/* Takes a reference to `root` on the caller's shard of `spread`, if root is
 * its node and it has not ended; false otherwise, and the caller takes one
 * on the count. Inside a read-side section, with `spread` and `root` loaded
 * inside it. */
bool cvi_spread_retain(struct cvi_spread *spread, const cvi_hamt_node *root);

/* Drops a reference to the spread's node on the caller's shard; false if
 * the spread has ended, and the caller drops it on the count. */
bool cvi_spread_release(struct cvi_spread *spread);

/* The same for a node whose spread, if any, the caller does not know. */
bool cvi_spread_release_node(cvi_hamt_node *node);

/* Ends the spread: folds its shards back into the node's count, which may
 * retire the node. Once only; later calls do nothing. Not inside a
 * read-side section. */
void cvi_spread_end(struct cvi_spread *spread);

/* Frees the spread of a node being disposed of. */
void cvi_spread_free(cvi_hamt_node *node);

#endif
