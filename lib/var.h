/*
 * Variables as the rest of the library sees them.
 */
#ifndef CV_VAR_H
#define CV_VAR_H

#include "hamt.h"

#include <ctxvars.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct cv_var {
    /* Read by every lookup, written only at creation: kept apart from the
     * reference count so that readers on many cores share the line
     * without invalidations. */
    /* First, so that the header's inline get can read the cache offset. */
    struct cvi_var_head {
        uint32_t hash;         /* map hash: never derived from user data */
        uint32_t cache_offset; /* of its entry in each thread's cache; reused after free */
    } head;
    uint64_t serial; /* never reused: tells a variable from one at a reused address */
    /* How the map treats its entries in updates: without value hooks when
     * the variable has none (var.c). */
    const cvi_hamt_ops *update_ops;
    void *default_value;
    bool has_default;
    void (*retain)(void *value);
    void (*release)(void *value);
    cv_change_handler_t on_change;
    void *on_change_data;
    /* Cleared by cv_var_release: its handler is not called after that. */
    atomic_bool handler_registered;
    _Atomic(struct cv_var *) next_handler; /* the registry's list (callbacks.c) */
    struct cv_var *next_unsettled;
    char *name;
    size_t name_size;
    void *allocation; /* where the cache-line-aligned struct was carved from */
    /* On a line of its own: sets on other cores write it, gets never read it.
     * The creator's reference, one per map entry, one per token that holds
     * the variable. */
    _Alignas(64) atomic_size_t refs;
};

/* How the map keeps references to (variable, value) entries. */
extern const cvi_hamt_ops cvi_var_entry_ops;

/* Reference counting of a variable's storage. */
void cvi_var_ref(cv_var_t *var);
void cvi_var_unref(cv_var_t *var);

/* Maps the calling thread's lookup cache, when it first needs a context,
 * and unmaps it at its exit. */
void cvi_var_cache_thread_start(void);
void cvi_var_cache_thread_exit(void);
/* Frees the thread's list of deferred hook calls. */
struct cvi_thread;
void cvi_var_hooks_thread_exit(struct cvi_thread *thread);

/* fork() handlers for the slot allocator's lock. */
void cvi_var_before_fork(void);
void cvi_var_after_fork(void);

#endif
