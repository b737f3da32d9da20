/*
 * Persistent hash array mapped trie.
 *
 * Design
 * ------
 * A key's 32-bit hash is consumed five bits at a time, low bits first: the
 * root uses bits 0-4, its children bits 5-9, and so on down to the seventh
 * level, which uses the last two bits. A level is a *bitmap node*: a 32-bit
 * bitmap says which of the 32 possible slots are present and a dense array
 * holds just those slots, in slot order, so the index of slot s is the
 * number of set bits below s. Each slot holds either one (key, value) pair
 * or a child node (key == NULL marks a child; keys are never NULL).
 *
 * Two keys whose hashes are equal in all 32 bits cannot be told apart by
 * any level: they live in a *collision node*, an unsorted array of pairs
 * that share one hash. A collision node is always a child, never a root;
 * when a key with another hash reaches it, a bitmap node is put above it.
 *
 * Updates copy the path from the root to the changed slot and share every
 * other node, so an update allocates one node per level it passes (usually
 * one or two: a context holds few variables) and the old root stays a
 * complete, valid map. Copying a map is taking a reference to its root.
 *
 * Deletion keeps lookups short: a subtree left with a single pair is
 * replaced by that pair in its parent, and an empty node is removed, so
 * every node except the root holds at least two keys. A collision node
 * is the exception to a canonical shape: it stays at the depth where it
 * was made even when the key that pushed it down is gone (as in CPython),
 * which costs lookups nothing since its keys share one hash.
 *
 * Each node counts the keys below it, so the size of a map is read from its
 * root in O(1).
 *
 * Ownership
 * ---------
 * A node holds one reference to each child and, through the caller's ops,
 * one reference to each key and value it stores. A node is immutable from
 * the moment it is returned; only its reference count changes. A node
 * whose last reference is dropped is not freed here: the caller decides
 * when no reader can still be walking it (see cvi_hamt_release) and then
 * destroys it. Children found dead while destroying a node are freed at
 * once, since the dead parent was their only way in.
 *
 * The layout and the collapsing rules follow CPython's Python/hamt.c; the
 * array node that CPython adds for dense levels is left out: contexts hold
 * few variables, and a bitmap node at full occupancy costs four bytes more.
 */
#include "hamt.h"

#include "alloc.h"
#include "testing.h"

#include <assert.h>
#include <stdatomic.h>
#include <string.h>

#define BITS_PER_LEVEL 5
#define SLOT_MASK 31u
#define MAX_DEPTH 9 /* seven bitmap levels, one collision node, one spare */

_Static_assert(sizeof(((cvi_hamt_iter *)0)->nodes) / sizeof(void *) >= MAX_DEPTH,
               "public iterator too small for the deepest trie");

enum node_kind { BITMAP_NODE, COLLISION_NODE };

struct entry {
    void *key; /* NULL: value is a child node */
    void *value;
};

struct cvi_hamt_node {
    /* First word: the caller's once the node is dead. A separate field, not
     * overlaid on live ones, since readers may still walk a dead node. Then
     * the caller's label, the references and the kind (hamt.h). */
    struct cvi_hamt_node_head head;
    uint32_t len;      /* entries in this node */
    uint32_t capacity; /* entries it has room for: more than len once shrunk in place */
    uint32_t count;    /* keys in this subtree */
    uint32_t bitmap_or_hash;
    struct entry entries[];
};

_Static_assert(offsetof(struct cvi_hamt_node, head) == 0, "the head's accessors assume it");
_Static_assert(sizeof(struct cvi_hamt_node) ==
                   sizeof(struct cvi_hamt_node_head) + 4 * sizeof(uint32_t),
               "no padding between the head and the node's own fields");

static size_t node_size(uint32_t len)
{
    return sizeof(struct cvi_hamt_node) + (size_t)len * sizeof(struct entry);
}

static cvi_hamt_node *node_new(enum node_kind kind, uint32_t len, uint32_t bitmap_or_hash)
{
    cvi_hamt_node *node = cvi_alloc(node_size(len));
    if (!node)
        return NULL;
    atomic_init(&node->head.label, 0);
    atomic_init(&node->head.attachment, NULL);
    atomic_init(&node->head.refs, 1);
    node->head.kind = (uint8_t)kind;
    atomic_init(&node->head.shared, false);
    node->len = len;
    node->capacity = len;
    node->count = 0;
    node->bitmap_or_hash = bitmap_or_hash;
    return node;
}

static unsigned slot_of(uint32_t hash, unsigned shift)
{
    return (hash >> shift) & SLOT_MASK;
}

/* Every level of a lookup waits for this count before its next load, so it
 * sits on the critical path. The x86-64 baseline that distributions build
 * for has no POPCNT instruction, and there __builtin_popcount is a call into
 * libgcc. Every x86-64 CPU since 2008 has the instruction: use it when the
 * CPU says so (a predictable load and branch), else count in software.
 * Elsewhere the builtin is a few instructions. */
#if defined(__x86_64__) && !defined(__POPCNT__)
#define RUNTIME_POPCNT 1
static bool cpu_has_popcnt;

__attribute__((constructor)) static void detect_popcnt(void)
{
    /* A constructor may run before libgcc's own, which fills the model. */
    __builtin_cpu_init();
    cpu_has_popcnt = __builtin_cpu_supports("popcnt");
}
#endif

void cv_testing_software_popcount(bool software)
{
#ifdef RUNTIME_POPCNT
    cpu_has_popcnt = !software && __builtin_cpu_supports("popcnt");
#else
    (void)software;
#endif
}

static unsigned popcount32(uint32_t x)
{
#ifdef RUNTIME_POPCNT
    if (__builtin_expect(cpu_has_popcnt, 1)) {
        uint32_t count;
        __asm__("popcntl %1, %0" : "=r"(count) : "rm"(x) : "cc");
        return count;
    }
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (x * 0x01010101u) >> 24;
#else
    return (unsigned)__builtin_popcount(x);
#endif
}

static unsigned index_of(uint32_t bitmap, uint32_t bit)
{
    return popcount32(bitmap & (bit - 1));
}

bool cvi_hamt_try_retain(cvi_hamt_node *node, bool *contended)
{
    /* Acquire: seeing zero pairs with the release in cvi_hamt_release, so
     * the caller's next load of its root pointer sees the root that replaced
     * this one (C11 wants success at least as strong as failure; on x86
     * both are the same instruction). */
    unsigned refs = atomic_load_explicit(&node->head.refs, memory_order_acquire);
    for (;;) {
        if (refs == 0)
            return false;
        if (atomic_compare_exchange_weak_explicit(&node->head.refs, &refs, refs + 1,
                                                  memory_order_acquire, memory_order_acquire))
            return true;
        *contended = true;
    }
}

static void entry_retain(const struct entry *e, const cvi_hamt_ops *ops)
{
    if (e->key)
        ops->retain(e->key, e->value);
    else
        cvi_hamt_retain(e->value);
}

static void entry_release(const struct entry *e, const cvi_hamt_ops *ops)
{
    if (e->key)
        ops->release(e->key, e->value);
    else if (cvi_hamt_release(e->value))
        cvi_hamt_destroy(e->value, ops);
}

/* Frees a node's memory alone: its entries belong to someone else now. */
static void free_hollow(cvi_hamt_node *node)
{
    cvi_free(node, node_size(node->capacity));
}

void cvi_hamt_destroy(cvi_hamt_node *node, const cvi_hamt_ops *ops)
{
    for (uint32_t i = 0; i < node->len; i++)
        entry_release(&node->entries[i], ops);
    free_hollow(node);
}

/* Frees a node that was built here and never returned. */
static void discard(cvi_hamt_node *node, const cvi_hamt_ops *ops)
{
    if (cvi_hamt_release(node))
        cvi_hamt_destroy(node, ops);
}

static void copy_entries(struct entry *dst, const struct entry *src, uint32_t n,
                         const cvi_hamt_ops *ops)
{
    memcpy(dst, src, n * sizeof(*src));
    for (uint32_t i = 0; i < n; i++)
        entry_retain(&src[i], ops);
}

/* A copy of `node` with entry `index` replaced by `owned` (whose reference
 * moves into the copy), or with `owned` inserted before `index`, or with
 * entry `index` removed. The caller sets the bitmap and count. */
static cvi_hamt_node *copy_replacing(const cvi_hamt_node *node, uint32_t index, struct entry owned,
                                     const cvi_hamt_ops *ops)
{
    cvi_hamt_node *copy = node_new(node->head.kind, node->len, node->bitmap_or_hash);
    if (!copy)
        return NULL;
    copy_entries(copy->entries, node->entries, index, ops);
    copy->entries[index] = owned;
    copy_entries(copy->entries + index + 1, node->entries + index + 1, node->len - index - 1, ops);
    return copy;
}

static cvi_hamt_node *copy_inserting(const cvi_hamt_node *node, uint32_t index, struct entry owned,
                                     const cvi_hamt_ops *ops)
{
    cvi_hamt_node *copy = node_new(node->head.kind, node->len + 1, node->bitmap_or_hash);
    if (!copy)
        return NULL;
    copy_entries(copy->entries, node->entries, index, ops);
    copy->entries[index] = owned;
    copy_entries(copy->entries + index + 1, node->entries + index, node->len - index, ops);
    return copy;
}

static cvi_hamt_node *copy_removing(const cvi_hamt_node *node, uint32_t index,
                                    const cvi_hamt_ops *ops)
{
    cvi_hamt_node *copy = node_new(node->head.kind, node->len - 1, node->bitmap_or_hash);
    if (!copy)
        return NULL;
    copy_entries(copy->entries, node->entries, index, ops);
    copy_entries(copy->entries + index, node->entries + index + 1, node->len - index - 1, ops);
    return copy;
}

static struct entry pair_entry(void *key, void *value, const cvi_hamt_ops *ops)
{
    ops->retain(key, value);
    return (struct entry){key, value};
}

static struct entry child_entry(cvi_hamt_node *owned_child)
{
    return (struct entry){NULL, owned_child};
}

/* A subtree at `shift` holding two distinct keys. */
static cvi_hamt_node *merge_pairs(void *key1, void *value1, uint32_t hash1, void *key2,
                                  void *value2, uint32_t hash2, unsigned shift,
                                  const cvi_hamt_ops *ops)
{
    if (hash1 == hash2) {
        cvi_hamt_node *node = node_new(COLLISION_NODE, 2, hash1);
        if (!node)
            return NULL;
        node->entries[0] = pair_entry(key1, value1, ops);
        node->entries[1] = pair_entry(key2, value2, ops);
        node->count = 2;
        return node;
    }
    unsigned slot1 = slot_of(hash1, shift), slot2 = slot_of(hash2, shift);
    if (slot1 == slot2) {
        /* Distinct hashes differ in some bit, so this recursion ends by the
         * last level. */
        cvi_hamt_node *child =
            merge_pairs(key1, value1, hash1, key2, value2, hash2, shift + BITS_PER_LEVEL, ops);
        if (!child)
            return NULL;
        cvi_hamt_node *node = node_new(BITMAP_NODE, 1, 1u << slot1);
        if (!node) {
            discard(child, ops);
            return NULL;
        }
        node->entries[0] = child_entry(child);
        node->count = 2;
        return node;
    }
    cvi_hamt_node *node = node_new(BITMAP_NODE, 2, (1u << slot1) | (1u << slot2));
    if (!node)
        return NULL;
    bool first_is_1 = slot1 < slot2;
    node->entries[first_is_1 ? 0 : 1] = pair_entry(key1, value1, ops);
    node->entries[first_is_1 ? 1 : 0] = pair_entry(key2, value2, ops);
    node->count = 2;
    return node;
}

/* A subtree at `shift` holding the collision node `group` and a new key
 * whose hash differs from the group's. */
static cvi_hamt_node *merge_group(cvi_hamt_node *group, void *key, void *value, uint32_t hash,
                                  unsigned shift, const cvi_hamt_ops *ops)
{
    unsigned group_slot = slot_of(group->bitmap_or_hash, shift), key_slot = slot_of(hash, shift);
    if (group_slot == key_slot) {
        cvi_hamt_node *child = merge_group(group, key, value, hash, shift + BITS_PER_LEVEL, ops);
        if (!child)
            return NULL;
        cvi_hamt_node *node = node_new(BITMAP_NODE, 1, 1u << key_slot);
        if (!node) {
            discard(child, ops);
            return NULL;
        }
        node->entries[0] = child_entry(child);
        node->count = child->count;
        return node;
    }
    cvi_hamt_node *node = node_new(BITMAP_NODE, 2, (1u << group_slot) | (1u << key_slot));
    if (!node)
        return NULL;
    bool group_first = group_slot < key_slot;
    cvi_hamt_retain(group);
    node->entries[group_first ? 0 : 1] = child_entry(group);
    node->entries[group_first ? 1 : 0] = pair_entry(key, value, ops);
    node->count = group->count + 1;
    return node;
}

struct assoc_result {
    void *old_value;
    bool had_old;
};

static cvi_hamt_node *unchanged(cvi_hamt_node *node)
{
    cvi_hamt_retain(node);
    return node;
}

static cvi_hamt_node *assoc_collision(cvi_hamt_node *node, unsigned shift, void *key, uint32_t hash,
                                      void *value, const cvi_hamt_ops *ops,
                                      struct assoc_result *result)
{
    if (hash != node->bitmap_or_hash)
        return merge_group(node, key, value, hash, shift, ops);
    for (uint32_t i = 0; i < node->len; i++) {
        if (node->entries[i].key != key)
            continue;
        result->had_old = true;
        result->old_value = node->entries[i].value;
        if (node->entries[i].value == value)
            return unchanged(node);
        cvi_hamt_node *copy = node_new(COLLISION_NODE, node->len, hash);
        if (!copy)
            return NULL;
        ops->retain(key, value);
        copy_entries(copy->entries, node->entries, i, ops);
        copy->entries[i] = (struct entry){key, value};
        copy_entries(copy->entries + i + 1, node->entries + i + 1, node->len - i - 1, ops);
        copy->count = node->count;
        return copy;
    }
    cvi_hamt_node *copy = copy_inserting(node, node->len, pair_entry(key, value, ops), ops);
    if (!copy) {
        ops->release(key, value);
        return NULL;
    }
    copy->count = node->count + 1;
    return copy;
}

static cvi_hamt_node *assoc_node(cvi_hamt_node *node, unsigned shift, void *key, uint32_t hash,
                                 void *value, const cvi_hamt_ops *ops, struct assoc_result *result)
{
    if (node->head.kind == COLLISION_NODE)
        return assoc_collision(node, shift, key, hash, value, ops, result);

    uint32_t bit = 1u << slot_of(hash, shift);
    uint32_t index = index_of(node->bitmap_or_hash, bit);
    cvi_hamt_node *copy;
    if (!(node->bitmap_or_hash & bit)) {
        copy = node_new(BITMAP_NODE, node->len + 1, node->bitmap_or_hash | bit);
        if (!copy)
            return NULL;
        copy_entries(copy->entries, node->entries, index, ops);
        copy->entries[index] = pair_entry(key, value, ops);
        copy_entries(copy->entries + index + 1, node->entries + index, node->len - index, ops);
        copy->count = node->count + 1;
        return copy;
    }

    const struct entry *slot = &node->entries[index];
    if (!slot->key) {
        cvi_hamt_node *child = slot->value;
        cvi_hamt_node *new_child =
            assoc_node(child, shift + BITS_PER_LEVEL, key, hash, value, ops, result);
        if (!new_child)
            return NULL;
        if (new_child == child) {
            cvi_hamt_release(new_child); /* node still holds the child */
            return unchanged(node);
        }
        copy = copy_replacing(node, index, child_entry(new_child), ops);
        if (!copy) {
            discard(new_child, ops);
            return NULL;
        }
        copy->count = node->count - child->count + new_child->count;
        return copy;
    }

    if (slot->key == key) {
        result->had_old = true;
        result->old_value = slot->value;
        if (slot->value == value)
            return unchanged(node);
        ops->retain(key, value);
        copy = copy_replacing(node, index, (struct entry){key, value}, ops);
        if (!copy) {
            ops->release(key, value);
            return NULL;
        }
        copy->count = node->count;
        return copy;
    }

    cvi_hamt_node *child = merge_pairs(slot->key, slot->value, ops->hash(slot->key), key, value,
                                       hash, shift + BITS_PER_LEVEL, ops);
    if (!child)
        return NULL;
    copy = copy_replacing(node, index, child_entry(child), ops);
    if (!copy) {
        discard(child, ops);
        return NULL;
    }
    copy->count = node->count + 1;
    return copy;
}

bool cvi_hamt_assoc(cvi_hamt_node *root, void *key, uint32_t hash, void *value,
                    const cvi_hamt_ops *ops, cvi_hamt_node **out, void **old_value, bool *had_old)
{
    struct assoc_result result = {NULL, false};
    cvi_hamt_node *new_root;
    if (root) {
        new_root = assoc_node(root, 0, key, hash, value, ops, &result);
    } else {
        new_root = node_new(BITMAP_NODE, 1, 1u << slot_of(hash, 0));
        if (new_root) {
            new_root->entries[0] = pair_entry(key, value, ops);
            new_root->count = 1;
        }
    }
    if (!new_root)
        return false;
    *out = new_root;
    *old_value = result.old_value;
    *had_old = result.had_old;
    return true;
}

enum without_outcome { WITHOUT_NO_MEMORY, WITHOUT_ABSENT, WITHOUT_EMPTY, WITHOUT_NEW };

/* A non-root subtree left with one key is replaced by that key's pair. */
static bool is_lone_pair(const cvi_hamt_node *node)
{
    return node->count == 1 && node->len == 1 && node->entries[0].key;
}

static enum without_outcome without_node(cvi_hamt_node *node, unsigned shift, const void *key,
                                         uint32_t hash, const cvi_hamt_ops *ops,
                                         cvi_hamt_node **out)
{
    uint32_t index, bit = 0;
    if (node->head.kind == COLLISION_NODE) {
        if (hash != node->bitmap_or_hash)
            return WITHOUT_ABSENT;
        for (index = 0; index < node->len && node->entries[index].key != key; index++)
            ;
        if (index == node->len)
            return WITHOUT_ABSENT;
    } else {
        bit = 1u << slot_of(hash, shift);
        if (!(node->bitmap_or_hash & bit))
            return WITHOUT_ABSENT;
        index = index_of(node->bitmap_or_hash, bit);
        const struct entry *slot = &node->entries[index];
        if (!slot->key) {
            cvi_hamt_node *child = slot->value, *new_child;
            enum without_outcome outcome =
                without_node(child, shift + BITS_PER_LEVEL, key, hash, ops, &new_child);
            if (outcome != WITHOUT_NEW && outcome != WITHOUT_EMPTY)
                return outcome;
            if (outcome == WITHOUT_NEW) {
                struct entry replacement = child_entry(new_child);
                if (is_lone_pair(new_child))
                    replacement =
                        pair_entry(new_child->entries[0].key, new_child->entries[0].value, ops);
                cvi_hamt_node *copy = copy_replacing(node, index, replacement, ops);
                if (replacement.key || !copy)
                    discard(new_child, ops); /* inlined, or nowhere to go */
                if (!copy) {
                    if (replacement.key)
                        ops->release(replacement.key, replacement.value);
                    return WITHOUT_NO_MEMORY;
                }
                copy->count = node->count - 1;
                *out = copy;
                return WITHOUT_NEW;
            }
        } else if (slot->key != key) {
            return WITHOUT_ABSENT;
        }
    }

    /* Remove entry `index`: the key itself, or a child that became empty. */
    if (node->len == 1)
        return WITHOUT_EMPTY;
    cvi_hamt_node *copy = copy_removing(node, index, ops);
    if (!copy)
        return WITHOUT_NO_MEMORY;
    copy->bitmap_or_hash &= ~bit; /* bit is 0 for a collision node */
    copy->count = node->count - 1;
    *out = copy;
    return WITHOUT_NEW;
}

bool cvi_hamt_without(cvi_hamt_node *root, const void *key, uint32_t hash, const cvi_hamt_ops *ops,
                      cvi_hamt_node **out)
{
    if (!root) {
        *out = NULL;
        return true;
    }
    switch (without_node(root, 0, key, hash, ops, out)) {
    case WITHOUT_NO_MEMORY:
        return false;
    case WITHOUT_ABSENT:
        *out = unchanged(root);
        return true;
    case WITHOUT_EMPTY:
        *out = NULL;
        return true;
    case WITHOUT_NEW:
        return true;
    }
    return false;
}

/* ---------------------------------------------------------- in place */

/* A node that only the caller can reach: one reference, and not marked as
 * walked by readers without one. Acquire (in sole_owner) before reading the
 * mark, which its setter wrote before its release-decrement. */
static bool exclusive(const cvi_hamt_node *node)
{
    return cvi_hamt_sole_owner(node) && !cvi_hamt_is_shared(node);
}

/* Puts `owned` at `index` of `node`, exclusive, into the room that a
 * removal in place left (len < capacity): a variable set and reset in
 * turn, as a request handler does, allocates once. */
static void put_into_room(cvi_hamt_node *node, uint32_t index, struct entry owned)
{
    memmove(node->entries + index + 1, node->entries + index,
            (node->len - index) * sizeof(struct entry));
    node->entries[index] = owned;
    node->len++;
}

/* `node`, exclusive, grown by one entry (owned) at `index`: in place if
 * it has room, else its entries move to a new node and the old memory is
 * freed. NULL when memory is short. */
static cvi_hamt_node *grow_in_place(cvi_hamt_node *node, uint32_t index, struct entry owned)
{
    if (node->len < node->capacity) {
        put_into_room(node, index, owned);
        return node;
    }
    cvi_hamt_node *grown = node_new(node->head.kind, node->len + 1, node->bitmap_or_hash);
    if (!grown)
        return NULL;
    memcpy(grown->entries, node->entries, index * sizeof(struct entry));
    grown->entries[index] = owned;
    memcpy(grown->entries + index + 1, node->entries + index,
           (node->len - index) * sizeof(struct entry));
    grown->count = node->count;
    free_hollow(node);
    return grown;
}

static void remove_in_place(cvi_hamt_node *node, uint32_t index)
{
    memmove(node->entries + index, node->entries + index + 1,
            (node->len - index - 1) * sizeof(struct entry));
    node->len--;
}

/* Releases one reference to a node the caller no longer links to. */
static void drop_subtree(cvi_hamt_node *node, const cvi_hamt_ops *ops)
{
    ops->drop_node(node);
}

/* The key's reference stays: only the value changes hands. */
static void change_value(struct entry *slot, void *value, const cvi_hamt_ops *ops)
{
    if (slot->value == value)
        return;
    if (ops->retain_value) {
        ops->retain_value(slot->key, value);
        ops->release_value(slot->key, slot->value);
    }
    slot->value = value;
}

static void replace_value(struct entry *slot, void *value, const cvi_hamt_ops *ops,
                          struct assoc_result *result)
{
    result->had_old = true;
    result->old_value = slot->value;
    change_value(slot, value, ops);
}

/* The subtree that replaces `node`, whose reference it consumes: `node`
 * itself when changed in place, else a new node. NULL when memory is
 * short, and then nothing changed. */
static cvi_hamt_node *assoc_in_place(cvi_hamt_node *node, unsigned shift, void *key, uint32_t hash,
                                     void *value, const cvi_hamt_ops *ops,
                                     struct assoc_result *result)
{
    if (!exclusive(node)) {
        cvi_hamt_node *copy = assoc_node(node, shift, key, hash, value, ops, result);
        if (copy == node)
            cvi_hamt_release(node); /* unchanged: we held one reference too many */
        else if (copy)
            drop_subtree(node, ops);
        return copy;
    }
    if (node->head.kind == COLLISION_NODE) {
        if (hash != node->bitmap_or_hash) {
            cvi_hamt_node *parent = merge_group(node, key, value, hash, shift, ops);
            if (parent)
                cvi_hamt_release(node); /* the parent holds it now */
            return parent;
        }
        for (uint32_t i = 0; i < node->len; i++) {
            if (node->entries[i].key == key) {
                replace_value(&node->entries[i], value, ops, result);
                return node;
            }
        }
        cvi_hamt_node *grown = grow_in_place(node, node->len, pair_entry(key, value, ops));
        if (!grown) {
            ops->release(key, value);
            return NULL;
        }
        grown->count++;
        return grown;
    }

    uint32_t bit = 1u << slot_of(hash, shift);
    uint32_t index = index_of(node->bitmap_or_hash, bit);
    if (!(node->bitmap_or_hash & bit)) {
        cvi_hamt_node *grown = grow_in_place(node, index, pair_entry(key, value, ops));
        if (!grown) {
            ops->release(key, value);
            return NULL;
        }
        grown->bitmap_or_hash |= bit;
        grown->count++;
        return grown;
    }
    struct entry *slot = &node->entries[index];
    if (!slot->key) {
        cvi_hamt_node *child = slot->value;
        cvi_hamt_node *new_child =
            assoc_in_place(child, shift + BITS_PER_LEVEL, key, hash, value, ops, result);
        if (!new_child)
            return NULL;
        slot->value = new_child;
        node->count += result->had_old ? 0 : 1;
        return node;
    }
    if (slot->key == key) {
        replace_value(slot, value, ops, result);
        return node;
    }
    cvi_hamt_node *child = merge_pairs(slot->key, slot->value, ops->hash(slot->key), key, value,
                                       hash, shift + BITS_PER_LEVEL, ops);
    if (!child)
        return NULL;
    ops->release(slot->key, slot->value); /* merge_pairs took its own reference */
    *slot = child_entry(child);
    node->count++;
    return node;
}

/* The common case, kept small and free of recursion: the key has a value
 * and every node down to it is exclusive, so only the value changes. The
 * entry holding it, or NULL. Calls nothing, so that the caller's fast
 * path saves no registers. */
static struct entry *replaceable_entry(cvi_hamt_node *node, const void *key, uint32_t hash)
{
    for (unsigned shift = 0; node && node->head.kind == BITMAP_NODE && exclusive(node);
         shift += BITS_PER_LEVEL) {
        uint32_t bit = 1u << slot_of(hash, shift);
        if (!(node->bitmap_or_hash & bit))
            return NULL;
        struct entry *slot = &node->entries[index_of(node->bitmap_or_hash, bit)];
        if (!slot->key) {
            node = slot->value;
            continue;
        }
        return slot->key == key ? slot : NULL;
    }
    return NULL;
}

/* The common insert: every node down to the one that lacks the key's slot
 * is exclusive, and that one has room left by a removal in place (a
 * variable set and reset in turn). The key goes in there, with no
 * allocation and no recursion. False, with nothing changed, if anything
 * else is needed. */
static bool insert_into_room(cvi_hamt_node *node, void *key, uint32_t hash, void *value,
                             const cvi_hamt_ops *ops)
{
    cvi_hamt_node *path[MAX_DEPTH];
    unsigned depth = 0;
    for (unsigned shift = 0; node && node->head.kind == BITMAP_NODE && exclusive(node);
         shift += BITS_PER_LEVEL) {
        uint32_t bit = 1u << slot_of(hash, shift);
        uint32_t index = index_of(node->bitmap_or_hash, bit);
        path[depth++] = node;
        if (!(node->bitmap_or_hash & bit)) {
            if (node->len == node->capacity)
                return false;
            put_into_room(node, index, pair_entry(key, value, ops));
            node->bitmap_or_hash |= bit;
            for (unsigned i = 0; i < depth; i++)
                path[i]->count++;
            return true;
        }
        if (node->entries[index].key)
            return false; /* another key's pair: merging allocates */
        node = node->entries[index].value;
    }
    return false;
}

/* Out of line and called last, for the same reason. */
static __attribute__((noinline)) bool change_value_with_hooks(struct entry *slot, void *value,
                                                              const cvi_hamt_ops *ops)
{
    change_value(slot, value, ops);
    return true;
}

static __attribute__((noinline)) bool assoc_in_place_general(cvi_hamt_node **root, void *key,
                                                             uint32_t hash, void *value,
                                                             const cvi_hamt_ops *ops,
                                                             void **old_value, bool *had_old)
{
    if (insert_into_room(*root, key, hash, value, ops)) {
        *old_value = NULL;
        *had_old = false;
        return true;
    }
    if (!*root) {
        void *unused_old;
        bool unused_had;
        return cvi_hamt_assoc(NULL, key, hash, value, ops, root, &unused_old, &unused_had) &&
               ((*old_value = NULL), (*had_old = false), true);
    }
    struct assoc_result result = {NULL, false};
    cvi_hamt_node *new_root = assoc_in_place(*root, 0, key, hash, value, ops, &result);
    if (!new_root)
        return false;
    *root = new_root;
    *old_value = result.old_value;
    *had_old = result.had_old;
    return true;
}

bool cvi_hamt_assoc_in_place(cvi_hamt_node **root, void *key, uint32_t hash, void *value,
                             const cvi_hamt_ops *ops, void **old_value, bool *had_old)
{
    struct entry *slot = replaceable_entry(*root, key, hash);
    if (!slot)
        return assoc_in_place_general(root, key, hash, value, ops, old_value, had_old);
    *old_value = slot->value;
    *had_old = true;
    if (slot->value == value)
        return true;
    if (ops->retain_value)
        return change_value_with_hooks(slot, value, ops);
    slot->value = value;
    return true;
}

/* As without_node, consuming the reference to `node` on WITHOUT_NEW (then
 * *out replaces it) and WITHOUT_EMPTY. */
static enum without_outcome without_in_place(cvi_hamt_node *node, unsigned shift, const void *key,
                                             uint32_t hash, const cvi_hamt_ops *ops,
                                             cvi_hamt_node **out)
{
    if (!exclusive(node)) {
        enum without_outcome outcome = without_node(node, shift, key, hash, ops, out);
        if (outcome == WITHOUT_NEW || outcome == WITHOUT_EMPTY)
            drop_subtree(node, ops);
        return outcome;
    }
    uint32_t index, bit = 0;
    if (node->head.kind == COLLISION_NODE) {
        if (hash != node->bitmap_or_hash)
            return WITHOUT_ABSENT;
        for (index = 0; index < node->len && node->entries[index].key != key; index++)
            ;
        if (index == node->len)
            return WITHOUT_ABSENT;
    } else {
        bit = 1u << slot_of(hash, shift);
        if (!(node->bitmap_or_hash & bit))
            return WITHOUT_ABSENT;
        index = index_of(node->bitmap_or_hash, bit);
        struct entry *slot = &node->entries[index];
        if (!slot->key) {
            cvi_hamt_node *new_child;
            enum without_outcome outcome =
                without_in_place(slot->value, shift + BITS_PER_LEVEL, key, hash, ops, &new_child);
            if (outcome == WITHOUT_NEW) {
                if (is_lone_pair(new_child)) {
                    /* We are the only holder of new_child: move its pair up. */
                    *slot = new_child->entries[0];
                    free_hollow(new_child);
                } else {
                    slot->value = new_child;
                }
                node->count--;
                *out = node;
                return WITHOUT_NEW;
            }
            if (outcome != WITHOUT_EMPTY)
                return outcome;
        } else if (slot->key != key) {
            return WITHOUT_ABSENT;
        } else {
            ops->release(slot->key, slot->value);
        }
    }
    if (node->head.kind == COLLISION_NODE)
        ops->release(node->entries[index].key, node->entries[index].value);
    /* Entry `index` is gone: the key (released above) or an emptied child. */
    if (node->len == 1) {
        free_hollow(node);
        return WITHOUT_EMPTY;
    }
    remove_in_place(node, index);
    node->bitmap_or_hash &= ~bit; /* bit is 0 for a collision node */
    node->count--;
    *out = node;
    return WITHOUT_NEW;
}

bool cvi_hamt_without_in_place(cvi_hamt_node **root, const void *key, uint32_t hash,
                               const cvi_hamt_ops *ops)
{
    if (!*root)
        return true;
    cvi_hamt_node *new_root;
    switch (without_in_place(*root, 0, key, hash, ops, &new_root)) {
    case WITHOUT_NO_MEMORY:
        return false;
    case WITHOUT_ABSENT:
        return true;
    case WITHOUT_EMPTY:
        *root = NULL;
        return true;
    case WITHOUT_NEW:
        *root = new_root;
        return true;
    }
    return false;
}

bool cvi_hamt_find(const cvi_hamt_node *node, const void *key, uint32_t hash, void **value)
{
    for (unsigned shift = 0; node; shift += BITS_PER_LEVEL) {
        if (node->head.kind == COLLISION_NODE) {
            if (hash != node->bitmap_or_hash)
                return false;
            for (uint32_t i = 0; i < node->len; i++) {
                if (node->entries[i].key == key) {
                    *value = node->entries[i].value;
                    return true;
                }
            }
            return false;
        }
        uint32_t bit = 1u << slot_of(hash, shift);
        if (!(node->bitmap_or_hash & bit))
            return false;
        const struct entry *slot = &node->entries[index_of(node->bitmap_or_hash, bit)];
        if (!slot->key) {
            node = slot->value;
            continue;
        }
        if (slot->key != key)
            return false;
        *value = slot->value;
        return true;
    }
    return false;
}

size_t cvi_hamt_count(const cvi_hamt_node *root)
{
    return root ? root->count : 0;
}

void cvi_hamt_iter_init(cvi_hamt_iter *it, const cvi_hamt_node *root)
{
    it->depth = root ? 0 : -1;
    it->nodes[0] = (void *)root;
    it->pos[0] = 0;
}

bool cvi_hamt_iter_next(cvi_hamt_iter *it, void **key, void **value)
{
    while (it->depth >= 0) {
        const cvi_hamt_node *node = it->nodes[it->depth];
        if (it->pos[it->depth] >= node->len) {
            it->depth--;
            continue;
        }
        const struct entry *e = &node->entries[it->pos[it->depth]++];
        if (e->key) {
            *key = e->key;
            *value = e->value;
            return true;
        }
        assert(it->depth + 1 < MAX_DEPTH);
        it->depth++;
        it->nodes[it->depth] = e->value;
        it->pos[it->depth] = 0;
    }
    return false;
}

bool cvi_hamt_equal(const cvi_hamt_node *a, const cvi_hamt_node *b, const cvi_hamt_ops *ops)
{
    if (a == b)
        return true;
    if (cvi_hamt_count(a) != cvi_hamt_count(b))
        return false;
    cvi_hamt_iter it;
    void *key, *value, *other;
    cvi_hamt_iter_init(&it, a);
    while (cvi_hamt_iter_next(&it, &key, &value)) {
        if (!cvi_hamt_find(b, key, ops->hash(key), &other) || other != value)
            return false;
    }
    return true;
}
