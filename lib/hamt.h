/*
 * A persistent hash array mapped trie from opaque keys to opaque values.
 * Every update returns a new root and leaves the old one intact; the two
 * share every node off the updated path. Nodes are reference-counted and
 * immutable once returned, so any number of readers may walk a root that
 * they keep alive. The map knows nothing of threads or of what keys are:
 * keys are compared by address, their hash and their references come from
 * the caller's cvi_hamt_ops.
 *
 * The empty map is NULL.
 */
#ifndef CV_HAMT_H
#define CV_HAMT_H

#include <ctxvars.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cvi_hamt_node cvi_hamt_node;

/* The start of every node, public so that the accessors of its label and
 * reference count below are inline (they sit on the paths of context
 * switches and copies); the rest of a node is hamt.c's. */
struct cvi_hamt_node_head {
    void *dead_link; /* the caller's once the node is dead (cvi_hamt_release) */
    _Atomic uint64_t label;
    /* The caller's, like the label: an object it may hang on a node (a
     * root's spread reference count, spread.h). NULL in a new node; the map
     * never reads it, and cvi_hamt_destroy does not free it. */
    _Atomic(void *) attachment;
    atomic_uint refs;
    uint8_t kind;       /* hamt.c's; here to fill the word refs starts */
    atomic_bool shared; /* see cvi_hamt_mark_shared */
};

typedef struct cvi_hamt_ops {
    uint32_t (*hash)(const void *key);
    /* Called for each (key, value) reference a node takes or drops. */
    void (*retain)(void *key, void *value);
    void (*release)(void *key, void *value);
    /* The value's half alone, for an update in place that keeps the key:
     * called only for the key being updated, so a caller may pass NULL
     * for both when that key's values need no references. */
    void (*retain_value)(void *key, void *value);
    void (*release_value)(void *key, void *value);
    /* Drops a reference to a node that an update in place unlinked; the
     * caller decides when a node whose last reference goes can be freed. */
    void (*drop_node)(cvi_hamt_node *node);
} cvi_hamt_ops;

/* The iterator's state is part of the public iterator (ctxvars.h), so that
 * callers can keep it on their stack. */
typedef struct cv_iter_private cvi_hamt_iter;

bool cvi_hamt_find(const cvi_hamt_node *root, const void *key, uint32_t hash, void **value);
size_t cvi_hamt_count(const cvi_hamt_node *root);

/* On success (true) *out is a new reference to a map where key maps to
 * value, and *old_value and *had_old tell what key mapped to before. False when
 * memory is short: nothing changed. */
bool cvi_hamt_assoc(cvi_hamt_node *root, void *key, uint32_t hash, void *value,
                    const cvi_hamt_ops *ops, cvi_hamt_node **out, void **old_value, bool *had_old);
/* On success *out is a new reference to a map without key (possibly NULL,
 * possibly root itself if key was absent). False when memory is short. */
bool cvi_hamt_without(cvi_hamt_node *root, const void *key, uint32_t hash, const cvi_hamt_ops *ops,
                      cvi_hamt_node **out);

/* The same updates, made in place on the nodes that only the caller can
 * reach (one reference, not marked shared) and by path copying from the
 * first node that someone else can reach. The caller's reference to *root
 * is consumed and *root replaced by the new root. Legal only while no other
 * thread can be reading the map. False when memory is short: nothing
 * changed. */
bool cvi_hamt_assoc_in_place(cvi_hamt_node **root, void *key, uint32_t hash, void *value,
                             const cvi_hamt_ops *ops, void **old_value, bool *had_old);
bool cvi_hamt_without_in_place(cvi_hamt_node **root, const void *key, uint32_t hash,
                               const cvi_hamt_ops *ops);

static inline struct cvi_hamt_node_head *cvi_hamt_head(cvi_hamt_node *node)
{
    return (struct cvi_hamt_node_head *)(void *)node;
}

static inline const struct cvi_hamt_node_head *cvi_hamt_const_head(const cvi_hamt_node *node)
{
    return (const struct cvi_hamt_node_head *)(const void *)node;
}

static inline void cvi_hamt_retain(cvi_hamt_node *node)
{
    /* Relaxed: the caller already holds a reference, so the node cannot die
     * meanwhile and there is nothing to publish. */
    atomic_fetch_add_explicit(&cvi_hamt_head(node)->refs, 1, memory_order_relaxed);
}

/* Takes a reference unless the count already reached zero (the node is
 * being retired): for readers that found the node without owning it.
 * *contended is set when another thread changed the count meanwhile. */
bool cvi_hamt_try_retain(cvi_hamt_node *node, bool *contended);

/* True when the caller's reference is the only one. The caller must know
 * that no new reference can appear meanwhile. */
static inline bool cvi_hamt_sole_owner(const cvi_hamt_node *node)
{
    /* Acquire: pairs with the release decrements of the former owners, who
     * are then done with the node. */
    return atomic_load_explicit(&cvi_hamt_const_head(node)->refs, memory_order_acquire) == 1;
}

/* Drops a reference; true when it was the last, and the caller must then
 * dispose of the node with cvi_hamt_destroy (at once, or once no reader can
 * still be walking it). Until then the node's first pointer-sized word is
 * the caller's, to link dead nodes through. NULL is a no-op returning
 * false. */
static inline bool cvi_hamt_release(cvi_hamt_node *node)
{
    if (!node)
        return false;
    /* Acq_rel: every owner's reads of the node happen before the last one
     * frees it (not a release plus an acquire fence: ThreadSanitizer does
     * not model fences). */
    return atomic_fetch_sub_explicit(&cvi_hamt_head(node)->refs, 1, memory_order_acq_rel) == 1;
}
/* Frees a node whose last reference was dropped: releases its entries and
 * its children, destroying at once every child that loses its last
 * reference (only reachable through this node, so no reader can be in it
 * when the node itself is safe to free). */
void cvi_hamt_destroy(cvi_hamt_node *node, const cvi_hamt_ops *ops);

/* A mark for the caller's reclamation scheme: the node may still be walked
 * by readers that hold no reference, so its disposal must wait. Set before
 * dropping a reference; read by whoever drops the last one. */
static inline void cvi_hamt_mark_shared(cvi_hamt_node *node)
{
    /* Relaxed: the owner's release-decrement that follows publishes it to
     * whoever drops the last reference. */
    atomic_store_explicit(&cvi_hamt_head(node)->shared, true, memory_order_relaxed);
}

static inline bool cvi_hamt_is_shared(const cvi_hamt_node *node)
{
    /* Relaxed: read after the acquire of the last release, or by the one
     * holder that marks it. */
    return atomic_load_explicit(&cvi_hamt_const_head(node)->shared, memory_order_relaxed);
}

/* A number the caller may attach to a root, such as the identity of the map
 * it stands for. A new node's is 0; the map never reads it, and updates do
 * not carry it to the nodes they make. Relaxed: the caller orders it as it
 * orders the root's publication. */
static inline uint64_t cvi_hamt_label(const cvi_hamt_node *node)
{
    return atomic_load_explicit(&cvi_hamt_const_head(node)->label, memory_order_relaxed);
}

static inline void cvi_hamt_set_label(cvi_hamt_node *node, uint64_t label)
{
    atomic_store_explicit(&cvi_hamt_head(node)->label, label, memory_order_relaxed);
}

bool cvi_hamt_equal(const cvi_hamt_node *a, const cvi_hamt_node *b, const cvi_hamt_ops *ops);

/* Walks `root`, which the caller keeps alive until the walk ends. */
void cvi_hamt_iter_init(cvi_hamt_iter *it, const cvi_hamt_node *root);
bool cvi_hamt_iter_next(cvi_hamt_iter *it, void **key, void **value);

#endif
