/*
 * Variables, tokens and the per-thread lookup cache.
 *
 * The cache: every thread has an array of (version, value) entries, one
 * per slot, a small integer that each variable gets at creation. An entry's
 * version is the label of the map its value was found in, and the thread's
 * version is the label of the map of its current context. Every write
 * gives the root it leaves a label never used before (also a root changed
 * in place), and a map never changes under a label: so an entry whose
 * version equals the thread's is exactly what a full lookup would return.
 * Switching to a context with the same map (a copy, a task captured from
 * the same context as the last one) keeps the entries; any other switch,
 * and every write, leaves them stale. A warm cv_get is a load of the
 * variable's offset, two TLS loads, one compare and a load from memory no
 * other thread touches.
 *
 * No bounds check: every thread's array covers every slot (CACHE_SLOTS).
 * A thread without a context reads zeros in .bss that no thread writes
 * (version 0 names no map); once it has a context it maps an array of its
 * own, which the kernel backs page by page as entries are stored, so a
 * thread that reads a few variables keeps one page. Past CACHE_SLOTS - 1
 * live variables the rest share the last slot, whose entry is never
 * stored: their gets always look the map up.
 *
 * Only values found in the map are cached, never defaults, and nothing is
 * stored under the empty map's label. That keeps slot reuse safe without
 * generation counts: an entry at the current version was found in the
 * current map, which therefore still holds the variable, which therefore
 * is alive and still owns its slot.
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE and madvise in -std=c11 */
#include "var.h"

#include "alloc.h"
#include "callbacks.h"
#include "context.h"
#include "testing.h"
#include "thread.h"

#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

enum token_flags {
    TOKEN_LIVE = 1u,    /* may still be reset or discarded */
    TOKEN_HAS_OLD = 2u, /* the variable had a value before the set */
    TOKEN_HOLDS = 4u,   /* holds a reference to the variable and its old value */
};

#define VAR_ALLOCATION_SIZE (sizeof(cv_var_t) + 63)

/* ------------------------------------------------------------------ slots */

/* 1 MiB of address space per thread, and of .bss for the shared zeros:
 * less than a huge page, so that the zeros never fill one. */
#define CACHE_SLOTS 65536u
#define OVERFLOW_SLOT (CACHE_SLOTS - 1)
#define CACHE_BYTES (CACHE_SLOTS * sizeof(struct cv_private_cache_entry))
#define OVERFLOW_OFFSET (OVERFLOW_SLOT * (uint32_t)sizeof(struct cv_private_cache_entry))

/* Slots are reused so that the live variables fit in CACHE_SLOTS.
 * free_slots always has room for every slot ever handed out, so giving one
 * back never allocates. */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t slots_handed_out;
static uint32_t *free_slots;
static uint32_t free_slot_count, free_slot_capacity;

static bool slot_take(uint32_t *slot)
{
    bool ok = true;
    pthread_mutex_lock(&slot_lock);
    if (free_slot_count) {
        *slot = free_slots[--free_slot_count];
    } else if (slots_handed_out == OVERFLOW_SLOT) {
        *slot = OVERFLOW_SLOT;
    } else {
        if (slots_handed_out == free_slot_capacity) {
            uint32_t capacity = free_slot_capacity ? free_slot_capacity * 2 : 64;
            uint32_t *grown = cvi_alloc(capacity * sizeof(*grown));
            if (grown) {
                if (free_slots)
                    memcpy(grown, free_slots, free_slot_count * sizeof(*grown));
                cvi_free(free_slots, free_slot_capacity * sizeof(*free_slots));
                free_slots = grown;
                free_slot_capacity = capacity;
            }
            ok = grown != NULL;
        }
        if (ok)
            *slot = slots_handed_out++;
    }
    pthread_mutex_unlock(&slot_lock);
    return ok;
}

static void slot_give(uint32_t slot)
{
    if (slot == OVERFLOW_SLOT)
        return;
    pthread_mutex_lock(&slot_lock);
    free_slots[free_slot_count++] = slot;
    pthread_mutex_unlock(&slot_lock);
}

void cvi_var_before_fork(void)
{
    pthread_mutex_lock(&slot_lock);
}

void cvi_var_after_fork(void)
{
    pthread_mutex_unlock(&slot_lock);
}

/* ------------------------------------------------------------ map entries */

static uint32_t entry_hash(const void *key)
{
    return ((const cv_var_t *)key)->head.hash;
}

/* Calls a variable's retain or release hook. The thread refuses changes
 * meanwhile (cvi_refuses_changes): a hook that set a variable of the map
 * being changed would change it under the change that called the hook. */
static void call_value_hook(void (*hook)(void *value), void *value)
{
    struct cvi_thread *thread = &cvi_thread_state;
    thread->changes_refused++;
    hook(value);
    thread->changes_refused--;
}

/* Gives back a block that deferred calls outgrew the inline array into. */
static void free_deferred_block(struct cvi_thread *thread)
{
    if (!thread->deferred_hooks || thread->deferred_hooks == thread->deferred_inline)
        return;
    cvi_free(thread->deferred_hooks,
             thread->deferred_hook_capacity * sizeof(*thread->deferred_hooks));
    thread->deferred_hooks = thread->deferred_inline;
    thread->deferred_hook_capacity = CVI_DEFERRED_INLINE;
}

/* Keeps a hook's call for later; false if memory is short for it. */
static bool defer_value_hook(struct cvi_thread *thread, void (*hook)(void *value), void *value)
{
    if (!thread->deferred_hook_capacity) {
        thread->deferred_hooks = thread->deferred_inline;
        thread->deferred_hook_capacity = CVI_DEFERRED_INLINE;
    }
    if (thread->deferred_hook_count == thread->deferred_hook_capacity) {
        uint32_t capacity = thread->deferred_hook_capacity * 2;
        struct cvi_deferred_hook *grown = cvi_alloc(capacity * sizeof(*grown));
        if (!grown)
            return false;
        memcpy(grown, thread->deferred_hooks, thread->deferred_hook_count * sizeof(*grown));
        free_deferred_block(thread);
        thread->deferred_hooks = grown;
        thread->deferred_hook_capacity = capacity;
    }
    thread->deferred_hooks[thread->deferred_hook_count++] = (struct cvi_deferred_hook){hook, value};
    return true;
}

/* Calls a hook, or keeps the call for later while the thread updates a map
 * in place: the map is half changed then, and a hook that copied or
 * iterated the context would hold nodes that the update goes on changing
 * or frees. (Only if memory is short for the list is the call made at
 * once.) Out of line, so that a variable without hooks passes through the
 * map's entry functions without a frame. */
__attribute__((noinline)) static void call_or_defer_value_hook(void (*hook)(void *value),
                                                               void *value)
{
    struct cvi_thread *thread = &cvi_thread_state;
    /* Relaxed: only this thread writes its own flag. */
    if (atomic_load_explicit(&thread->updating_in_place, memory_order_relaxed) &&
        defer_value_hook(thread, hook, value))
        return;
    call_value_hook(hook, value);
}

/* The calls kept while an update ran, in their order (a retain before the
 * release of the value it replaced), once the map is whole and the thread
 * reads it; but for one retain that the caller made before the update
 * (pre_retain_hook). Hooks cannot update, so none is kept meanwhile. */
static void call_deferred_value_hooks(struct cvi_thread *thread)
{
    for (uint32_t i = 0; i < thread->deferred_hook_count; i++) {
        struct cvi_deferred_hook call = thread->deferred_hooks[i];
        if (call.hook == thread->pre_retain_hook && call.value == thread->pre_retained) {
            thread->pre_retain_hook = NULL;
            continue;
        }
        call_value_hook(call.hook, call.value);
    }
    thread->deferred_hook_count = 0;
    free_deferred_block(thread);
}

void cvi_var_hooks_thread_exit(struct cvi_thread *thread)
{
    free_deferred_block(thread);
}

/* The value's half: an update in place changes only the value. */
static void value_retain(void *key, void *value)
{
    cv_var_t *var = key;
    if (var->retain)
        call_or_defer_value_hook(var->retain, value);
}

static void value_release(void *key, void *value)
{
    cv_var_t *var = key;
    if (var->release)
        call_or_defer_value_hook(var->release, value);
}

/* A whole entry also holds its variable. */
static void entry_retain(void *key, void *value)
{
    cvi_var_ref(key);
    value_retain(key, value);
}

static void entry_release(void *key, void *value)
{
    value_release(key, value);
    cvi_var_unref(key);
}

const cvi_hamt_ops cvi_var_entry_ops = {
    entry_hash, entry_retain, entry_release, value_retain, value_release, cvi_node_drop_unlinked,
};

/* For updates of a variable without hooks: its value changes hands with
 * no call (the map calls the value hooks for the updated key alone). */
static const cvi_hamt_ops entry_ops_without_value_hooks = {
    entry_hash, entry_retain, entry_release, NULL, NULL, cvi_node_drop_unlinked,
};

/* -------------------------------------------------------------- variables */

/* Mixes the never-reused serial with the address, so that variables made
 * one after another spread over the whole trie instead of sharing long
 * hash prefixes, and no hash depends on user data. */
static uint32_t variable_hash(const cv_var_t *var)
{
    uint64_t x = var->serial ^ ((uint64_t)(uintptr_t)var << 17);
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    x ^= x >> 31;
    return (uint32_t)(x ^ (x >> 32));
}

cv_var_t *cv_var_new(const char *name, const cv_var_opts_t *opts)
{
    static atomic_uint_fast64_t next_serial = 1;
    if (!name)
        return NULL;
    size_t name_size = strlen(name) + 1;
    /* The allocator hook promises no alignment beyond malloc's: carve the
     * 64-byte-aligned struct out of a larger block. */
    void *allocation = cvi_alloc(VAR_ALLOCATION_SIZE);
    char *name_copy = cvi_alloc(name_size);
    uint32_t slot;
    if (!allocation || !name_copy || !slot_take(&slot)) {
        cvi_free(name_copy, name_size);
        cvi_free(allocation, VAR_ALLOCATION_SIZE);
        return NULL;
    }
    cv_var_t *var = (cv_var_t *)(((uintptr_t)allocation + 63) & ~(uintptr_t)63);
    memcpy(name_copy, name, name_size);
    *var = (cv_var_t){
        .head.cache_offset = slot * (uint32_t)sizeof(struct cv_private_cache_entry),
        /* Relaxed: only uniqueness matters, which the RMW gives. */
        .serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed),
        .name = name_copy,
        .name_size = name_size,
        .allocation = allocation,
    };
    if (opts) {
        var->default_value = opts->default_value;
        var->has_default = opts->has_default;
        var->retain = opts->retain;
        var->release = opts->release;
        var->on_change = opts->on_change;
        var->on_change_data = opts->on_change_data;
    }
    var->update_ops =
        var->retain || var->release ? &cvi_var_entry_ops : &entry_ops_without_value_hooks;
    var->head.hash = variable_hash(var);
    atomic_init(&var->refs, 1);
    if (var->on_change)
        cvi_handler_register(var);
    return var;
}

void cvi_var_ref(cv_var_t *var)
{
    /* Relaxed: the caller holds a reference already. */
    atomic_fetch_add_explicit(&var->refs, 1, memory_order_relaxed);
}

void cvi_var_unref(cv_var_t *var)
{
    /* Acq_rel: every use of the variable happens before its free (one
     * instruction on x86, and ThreadSanitizer sees it, unlike a fence). */
    if (atomic_fetch_sub_explicit(&var->refs, 1, memory_order_acq_rel) != 1)
        return;
    slot_give(var->head.cache_offset / (uint32_t)sizeof(struct cv_private_cache_entry));
    cvi_free(var->name, var->name_size);
    cvi_free(var->allocation, VAR_ALLOCATION_SIZE);
}

void cv_var_release(cv_var_t *var)
{
    if (!var)
        return;
    if (var->on_change)
        cvi_handler_unregister(var);
    cvi_var_unref(var);
}

const char *cv_var_name(const cv_var_t *var)
{
    return var ? var->name : NULL;
}

void cv_testing_set_var_hash(cv_var_t *var, uint32_t hash)
{
    var->head.hash = hash;
}

/* ------------------------------------------------------------------ cache */

_Static_assert(offsetof(cv_var_t, head) == 0 &&
                   offsetof(struct cvi_var_head, cache_offset) ==
                       offsetof(struct cv_private_var_head, cache_offset) &&
                   sizeof(struct cvi_var_head) == sizeof(struct cv_private_var_head),
               "the header's inline get reads the cache offset here");

/* Every thread's cache until it first needs a context, and again after its
 * exit (or for good, if the kernel refuses it a cache). Never written. */
static struct cv_private_cache_entry unwritten_cache[CACHE_SLOTS];

/* Initial-exec, as cvi_thread_state. The empty map's label matches no
 * entry, not even the zeros of unwritten_cache; a store limit of 0 keeps
 * every store out of them. */
__thread struct cv_private_lookup cv_private_lookup_state
    __attribute__((tls_model("initial-exec"))) = {
        .version = CVI_EMPTY_MAP_LABEL,
        .cache = unwritten_cache,
};

static bool cache_map_refused_for_testing;
static atomic_long caches_mapped_for_testing;

void cv_testing_refuse_cache_map(bool refuse)
{
    cache_map_refused_for_testing = refuse;
}

long cv_testing_caches_mapped(void)
{
    return atomic_load_explicit(&caches_mapped_for_testing, memory_order_relaxed);
}

/* The cache comes straight from the kernel: it must read as zeros without
 * being written, which the allocator hook cannot promise without touching
 * every page. Mapped when the thread first needs a context, so that no get
 * ever makes a system call. If the kernel refuses, the thread's gets look
 * the map up every time. */
void cvi_var_cache_thread_start(void)
{
    struct cv_private_lookup *lookup = &cv_private_lookup_state;
    if (lookup->cache != unwritten_cache || cache_map_refused_for_testing)
        return;
    void *cache = mmap(NULL, CACHE_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (cache == MAP_FAILED)
        return;
    /* Neighbouring threads' caches may merge into one mapping that spans
     * huge pages: where transparent huge pages are always on, the first
     * store would then fill 2 MiB. Failure only loses that. */
    madvise(cache, CACHE_BYTES, MADV_NOHUGEPAGE);
    /* Relaxed: a statistic; the tests read it after joining threads. */
    atomic_fetch_add_explicit(&caches_mapped_for_testing, 1, memory_order_relaxed);
    lookup->cache = cache;
    lookup->store_limit = OVERFLOW_OFFSET;
}

void cvi_var_cache_thread_exit(void)
{
    struct cv_private_lookup *lookup = &cv_private_lookup_state;
    if (lookup->cache != unwritten_cache) {
        munmap(lookup->cache, CACHE_BYTES);
        atomic_fetch_sub_explicit(&caches_mapped_for_testing, 1, memory_order_relaxed);
    }
    lookup->cache = unwritten_cache;
    lookup->store_limit = 0;
    cvi_thread_view(CVI_EMPTY_MAP_LABEL);
}

/* Inline: every set and every cache miss ends here. `version` is the
 * thread's current one, which a set passes from a register rather than
 * load what it has just stored. */
static inline void cache_store(const cv_var_t *var, void *value, uint64_t version)
{
    struct cv_private_lookup *lookup = &cv_private_lookup_state;
    uint32_t offset = var->head.cache_offset;
    /* Nothing is stored to the shared zeros, nor to the overflow slot. */
    if (__builtin_expect(offset >= lookup->store_limit, 0))
        return;
    *(struct cv_private_cache_entry *)(void *)((char *)lookup->cache + offset) =
        (struct cv_private_cache_entry){version, value};
}

/* The full lookup behind a cache miss. */
static bool lookup(cv_var_t *var, void **value)
{
    cv_context_t *ctx = cvi_thread_current(&cvi_thread_state);
    if (!ctx || !cvi_hamt_find(cvi_context_owned_root(ctx), var, var->head.hash, value))
        return false;
    cache_store(var, *value, cv_private_lookup_state.version);
    return true;
}

cv_status_t(cv_get)(cv_var_t *var, void **out)
{
    if (!var || !out)
        return CV_EINVAL;
    if (cv_private_cached(var, out) || lookup(var, out))
        return CV_OK;
    if (!var->has_default)
        return CV_ENOVALUE;
    *out = var->default_value;
    return CV_OK;
}

void *(cv_get_or)(cv_var_t *var, void *fallback)
{
    void *value;
    return var && (cv_private_cached(var, &value) || lookup(var, &value)) ? value : fallback;
}

/* ------------------------------------------------------------------- sets */

static void token_clear(cv_token_t *token)
{
    if (token)
        *token = (cv_token_t){0};
}

static bool has_hooks(const cv_var_t *var)
{
    return var->update_ops == &cvi_var_entry_ops;
}

/* A variable with hooks may see its old value released as soon as the map
 * changes, so a token for it takes its own reference to the old value (and
 * to the variable, to release it with) before the change. */
static void token_hold(cv_var_t *var, bool had_old, void *old_value)
{
    cvi_var_ref(var);
    if (had_old)
        value_retain(var, old_value);
}

static void token_unhold(cv_var_t *var, bool had_old, void *old_value)
{
    if (had_old)
        value_release(var, old_value);
    cvi_var_unref(var);
}

/* Drops what a live token holds and marks it used; var and old value stay
 * readable, as in Python. */
static void token_spend(cv_token_t *token)
{
    if (token->cv_private_flags & TOKEN_HOLDS)
        token_unhold(token->cv_private_var, token->cv_private_flags & TOKEN_HAS_OLD,
                     token->cv_private_old_value);
    token->cv_private_flags &= ~(uint32_t)(TOKEN_LIVE | TOKEN_HOLDS);
}

/* Sets var to value, or removes it, in the map of the thread's current
 * context: in place while no other thread reads the context (a set of a
 * variable that already has a value then allocates nothing), by path
 * copying otherwise. False when memory is short: nothing changed. Else
 * *view is the label of the map the thread now reads. */
__attribute__((always_inline)) static inline bool update(cv_context_t *ctx, cv_var_t *var,
                                                         bool remove, void *value, void **old_value,
                                                         bool *had_old, uint64_t *view)
{
    cvi_hamt_node *root = cvi_context_owned_root(ctx);
    const cvi_hamt_ops *ops = var->update_ops;
    uint64_t label;
    if (cvi_context_begin_write(ctx)) {
        bool ok = remove ? cvi_hamt_without_in_place(&root, var, var->head.hash, ops)
                         : cvi_hamt_assoc_in_place(&root, var, var->head.hash, value, ops,
                                                   old_value, had_old);
        /* The root may be the same node with other contents: a new label
         * all the same, before end_write publishes it. */
        label = CVI_EMPTY_MAP_LABEL;
        if (ok && root) {
            label = cvi_thread_next_id();
            cvi_hamt_set_label(root, label);
        }
        cvi_context_end_write(ctx, root);
        if (!ok) {
            if (__builtin_expect(cvi_thread_state.deferred_hook_count != 0, 0))
                call_deferred_value_hooks(&cvi_thread_state);
            return false;
        }
    } else {
        cvi_hamt_node *new_root;
        bool ok = remove ? cvi_hamt_without(root, var, var->head.hash, ops, &new_root)
                         : cvi_hamt_assoc(root, var, var->head.hash, value, ops, &new_root,
                                          old_value, had_old);
        if (!ok)
            return false;
        /* An unchanged root keeps its label (and may be shared). */
        if (new_root && new_root != root) {
            label = cvi_thread_next_id();
            cvi_hamt_set_label(new_root, label);
        } else {
            label = cvi_map_label(new_root);
        }
        cvi_context_publish(ctx, new_root);
    }
    cvi_thread_view(label);
    /* Once the map is whole and the thread reads it. */
    if (__builtin_expect(cvi_thread_state.deferred_hook_count != 0, 0))
        call_deferred_value_hooks(&cvi_thread_state);
    *view = label;
    return true;
}

/* update() for a variable with retain/release hooks. The new value's
 * retain comes first, as it would inside the update: a thread that copies
 * the context as soon as the update shows must find the value retained.
 * The update's own retain of it is then skipped, or, if the update made
 * none, this one given back. Without a release hook there is nothing to
 * give back, and the retain waits with the others. Out of line: the
 * common variable has no hooks. */
__attribute__((noinline)) static bool update_deferring_hooks(cv_context_t *ctx, cv_var_t *var,
                                                             bool remove, void *value,
                                                             void **old_value, bool *had_old,
                                                             uint64_t *view)
{
    struct cvi_thread *thread = &cvi_thread_state;
    bool pre_retain = !remove && var->retain && var->release;
    if (pre_retain) {
        call_value_hook(var->retain, value);
        thread->pre_retain_hook = var->retain;
        thread->pre_retained = value;
    }
    bool ok = update(ctx, var, remove, value, old_value, had_old, view);
    if (pre_retain && thread->pre_retain_hook) {
        thread->pre_retain_hook = NULL;
        call_value_hook(var->release, value);
    }
    return ok;
}

/* The update for `var`, hooks deferred if it has them. */
__attribute__((always_inline)) static inline bool update_var(cv_context_t *ctx, cv_var_t *var,
                                                             bool remove, void *value,
                                                             void **old_value, bool *had_old,
                                                             uint64_t *view)
{
    if (__builtin_expect(has_hooks(var), 0))
        return update_deferring_hooks(ctx, var, remove, value, old_value, had_old, view);
    return update(ctx, var, remove, value, old_value, had_old, view);
}

cv_status_t cv_set(cv_var_t *var, void *value, cv_token_t *token)
{
    if (!var) {
        token_clear(token);
        return CV_EINVAL;
    }
    if (cvi_refuses_changes()) {
        token_clear(token);
        return CV_EBUSY;
    }
    struct cvi_thread *thread = cvi_thread_ready();
    cv_context_t *ctx = thread ? cvi_thread_current(thread) : NULL;
    if (!ctx) {
        token_clear(token);
        return CV_ENOMEM;
    }
    void *old_value = NULL;
    bool had_old = false;
    /* The token, and the change handler's call, need the old value alive
     * after the map has dropped it. */
    bool holds = (token || var->on_change) && has_hooks(var);
    if (holds) {
        had_old = cvi_hamt_find(cvi_context_owned_root(ctx), var, var->head.hash, &old_value);
        token_hold(var, had_old, old_value);
    }
    uint64_t view;
    if (!update_var(ctx, var, false, value, &old_value, &had_old, &view)) {
        if (holds)
            token_unhold(var, had_old, old_value);
        token_clear(token);
        return CV_ENOMEM;
    }
    cache_store(var, value, view); /* a get right after a set still hits */
    if (var->on_change)
        cvi_change_notify(var, CV_CHANGE_SET, had_old, old_value, true, value);
    if (holds && !token) {
        token_unhold(var, had_old, old_value);
        return CV_OK;
    }
    if (token)
        *token = (cv_token_t){
            .cv_private_var = var,
            .cv_private_old_value = had_old ? old_value : NULL,
            .cv_private_var_serial = var->serial,
            .cv_private_context_id = cvi_context_id(ctx),
            .cv_private_flags =
                TOKEN_LIVE | (had_old ? TOKEN_HAS_OLD : 0) | (holds ? TOKEN_HOLDS : 0),
        };
    return CV_OK;
}

cv_status_t cv_reset(cv_var_t *var, cv_token_t *token)
{
    if (!var || !token)
        return CV_EINVAL;
    uint32_t flags = token->cv_private_flags;
    if (!(flags & TOKEN_LIVE))
        return CV_ETOKEN_USED;
    if (token->cv_private_var != var || token->cv_private_var_serial != var->serial)
        return CV_ETOKEN_VAR;
    cv_context_t *ctx = cvi_thread_current(&cvi_thread_state);
    if (!ctx || ctx->id != token->cv_private_context_id)
        return CV_ETOKEN_CONTEXT;
    if (cvi_refuses_changes())
        return CV_EBUSY;

    bool restore = flags & TOKEN_HAS_OLD;
    void *old_value = token->cv_private_old_value, *replaced = NULL;
    bool had_value = false;
    /* A removal may drop the last reference to var, whose creator may have
     * released it: after the update var is read only where something holds
     * it (the map, after a restore; the token, if it holds; the reference
     * taken here for the handler's call, which also needs the replaced
     * value alive after the map has dropped it). */
    cv_change_handler_t on_change = var->on_change;
    bool holds = on_change && has_hooks(var);
    if (on_change) {
        cvi_var_ref(var);
        had_value = cvi_hamt_find(cvi_context_owned_root(ctx), var, var->head.hash, &replaced);
    }
    if (holds)
        token_hold(var, had_value, replaced);
    uint64_t view;
    if (!update_var(ctx, var, !restore, old_value, &replaced, &had_value, &view)) {
        if (holds)
            token_unhold(var, had_value, replaced);
        if (on_change)
            cvi_var_unref(var);
        return CV_ENOMEM;
    }
    if (restore)
        cache_store(var, old_value, view);
    if (on_change)
        cvi_change_notify(var, CV_CHANGE_RESET, had_value, replaced, restore, old_value);
    if (holds)
        token_unhold(var, had_value, replaced);
    if (on_change)
        cvi_var_unref(var);
    token_spend(token);
    return CV_OK;
}

/* ----------------------------------------------------------------- tokens */

cv_var_t *cv_token_var(const cv_token_t *token)
{
    return token ? token->cv_private_var : NULL;
}

bool cv_token_old_value(const cv_token_t *token, void **out)
{
    if (!token || !out || !(token->cv_private_flags & TOKEN_HAS_OLD))
        return false;
    *out = token->cv_private_old_value;
    return true;
}

bool cv_token_used(const cv_token_t *token)
{
    return !token || !(token->cv_private_flags & TOKEN_LIVE);
}

void cv_token_discard(cv_token_t *token)
{
    if (token && (token->cv_private_flags & TOKEN_LIVE))
        token_spend(token);
}
