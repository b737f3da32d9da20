/**
 * @file ctxvars.h
 * ctxvars: context variables for C with the semantics of Python's
 * contextvars (PEP 567), built for multi-core servers.
 *
 * A context is an immutable-looking mapping from variables to values. Each
 * thread has a current context; cv_get/cv_set read and write the current
 * context, cv_context_run/enter/exit switch it, and cv_copy_context captures
 * it in O(1) so that work handed to another thread (a thread pool, a
 * coroutine scheduler) runs with the submitter's values.
 *
 * Every function is thread-safe. Functions that can fail return a
 * cv_status_t; constructors return NULL on allocation failure or on a NULL
 * argument they need. A misuse returns its status and changes nothing.
 *
 * fork(): the library's fork handlers let updates under way in other
 * threads finish first, so the child inherits whole maps and can use
 * everything (what other threads were freeing at that moment may leak in
 * the child). Contexts that other threads had entered stay owned
 * by those (absent) threads in the child: readable and copyable, not
 * enterable. A retain/release hook that waits for the forking thread would
 * deadlock the fork.
 *
 * This header includes only standard and POSIX headers and compiles as C11
 * and as C++.
 */
#ifndef CV_CTXVARS_H
#define CV_CTXVARS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CV_VERSION_MAJOR 0
#define CV_VERSION_MINOR 3
#define CV_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define CV_EXPORT __attribute__((visibility("default")))
#else
#define CV_EXPORT
#endif

/* ---------------------------------------------------------------- status */

typedef enum cv_status {
    CV_OK = 0,
    CV_ENOVALUE,       /**< no value and no default (Python: LookupError) */
    CV_ENOMEM,         /**< allocation failed; nothing was changed */
    CV_EINVAL,         /**< NULL or otherwise invalid argument */
    CV_ETOKEN_VAR,     /**< token was created by a different variable */
    CV_ETOKEN_CONTEXT, /**< token was created in a different context */
    CV_ETOKEN_USED,    /**< token has already been used (or never filled) */
    CV_EBUSY,          /**< context is already entered, here or elsewhere */
    CV_ENOTCURRENT,    /**< exit of a context that is not the current one */
} cv_status_t;

/** A static, human-readable description of `status`; never NULL (unknown
 * values get a generic text). */
CV_EXPORT const char *cv_strerror(cv_status_t status);

/* ------------------------------------------------------------- variables */

typedef struct cv_var cv_var_t;
typedef struct cv_context cv_context_t;

/** Caller-owned; fields are private. A zero-initialised token is "used". */
typedef struct cv_token {
    cv_var_t *cv_private_var;
    void *cv_private_old_value;
    uint64_t cv_private_var_serial;
    uint64_t cv_private_context_id;
    uint32_t cv_private_flags;
} cv_token_t;

/** Why the value of a variable visible to a thread changed. */
typedef enum cv_change_cause {
    CV_CHANGE_SET,    /**< cv_set on this thread */
    CV_CHANGE_RESET,  /**< cv_reset on this thread */
    CV_CHANGE_SWITCH, /**< an enter or exit (cv_context_run included) */
} cv_change_cause_t;

/** One change, as a variable's change handler sees it. had_old / has_new
 * tell whether the context held a value for the variable before / after
 * (false: cv_get would fall back to the default). */
typedef struct cv_change {
    cv_var_t *var;
    cv_change_cause_t cause;
    bool had_old, has_new;
    void *old_value, *new_value;
} cv_change_t;

typedef void (*cv_change_handler_t)(const cv_change_t *change, void *data);

typedef struct cv_var_opts {
    void *default_value;
    bool has_default;
    /** Optional. When set, the library calls retain(value) for every
     * reference to a value it keeps (in a context's map or in a token) and
     * release(value) when it drops one. release may run on another thread
     * and after the call that dropped the value (after the reclamation grace
     * period); cv_reclaim_barrier() waits for all of them. Neither is called
     * for the default value, which the caller keeps alive. A hook may read
     * and copy contexts, the one being changed included, but not switch or
     * write: cv_set, cv_reset, enter, exit and run return CV_EBUSY inside
     * it (and cv_reclaim_barrier must not be called from it). */
    void (*retain)(void *value);
    void (*release)(void *value);
    /** Optional change handler (.NET's AsyncLocal handler, folly's
     * onSet/onUnset): on_change(change, on_change_data) is called on a
     * thread whenever the value that thread sees changes, by a set or reset
     * there or by a context switch, after the change (cv_get inside the
     * handler sees the new value). Nothing is called when presence and
     * value are the same before and after, so a set of the value already
     * held and a switch between contexts that agree on the variable call
     * nothing. While any variable with a handler exists, every switch of
     * every thread looks each such variable up in both contexts (two
     * lookups per handled variable; none for the others), unless the two
     * contexts share one map. The old and new values of a
     * variable with retain/release hooks are held for the call. The handler
     * may read (cv_get, the mapping API, copies) but not switch or write:
     * cv_set, cv_reset, enter, exit and run return CV_EBUSY inside it. Once
     * cv_var_release has returned, the handler is never called again and no
     * call of it is under way on another thread (called from inside a
     * watcher or handler, cv_var_release does not wait for other threads:
     * two callbacks waiting for each other would deadlock). */
    cv_change_handler_t on_change;
    void *on_change_data;
} cv_var_opts_t;

/** A new variable named `name` (copied). `opts` may be NULL: no default, no
 * hooks. Returns NULL if `name` is NULL or memory is short. */
CV_EXPORT cv_var_t *cv_var_new(const char *name, const cv_var_opts_t *opts);

/** Drops the creator's reference. The variable's storage lives on while a
 * context holds a value for it: it can still be read, set and reset where
 * it has a value (a reset that removes its last value may end it), and
 * passed nowhere else. NULL is a no-op. */
CV_EXPORT void cv_var_release(cv_var_t *var);

/** The name given to cv_var_new; NULL if `var` is NULL. */
CV_EXPORT const char *cv_var_name(const cv_var_t *var);

/** The value of `var` in the current context, else its default, else
 * CV_ENOVALUE (with *out untouched). CV_EINVAL if an argument is NULL.
 * Lock-free, no atomic read-modify-write, no shared write: a warm get is a
 * few loads from thread-private memory. The thread's cache stays warm
 * across switches between contexts that hold the same map (copies, tasks
 * captured from one unchanged context); any write, and a switch to another
 * map, costs the next get of each variable one trie lookup. The first
 * 65,535 live variables are cached; gets of any beyond always take the
 * lookup. */
CV_EXPORT cv_status_t cv_get(cv_var_t *var, void **out);

/** The value of `var` in the current context, else `fallback` (the
 * variable's default is not consulted, as in Python's var.get(default)). */
CV_EXPORT void *cv_get_or(cv_var_t *var, void *fallback);

/** Sets `var` to `value` (NULL is an ordinary value) in the current context.
 * `token` (may be NULL) is filled so that cv_reset can undo the set; it
 * needs no allocation and must be reset or discarded. CV_ENOMEM leaves the
 * context unchanged and the token empty (used). */
CV_EXPORT cv_status_t cv_set(cv_var_t *var, void *value, cv_token_t *token);

/** Undoes the cv_set that filled `token`. Checks, in order: used (or never
 * filled) -> CV_ETOKEN_USED; made by another variable -> CV_ETOKEN_VAR; made
 * in a context other than the current one -> CV_ETOKEN_CONTEXT. Then the old
 * value is restored (or the variable removed if it had none) and the token
 * is marked used. Any order of resets is allowed. */
CV_EXPORT cv_status_t cv_reset(cv_var_t *var, cv_token_t *token);

/* ---------------------------------------------------------------- tokens */

/** The variable the token was made by; NULL for an empty token. Like
 * Python's token.var it stays readable after the token is used. While the
 * token is live it holds a reference to the variable if the variable has
 * retain/release hooks; otherwise, and once the token is used, the pointer
 * is only valid while the caller keeps the variable. */
CV_EXPORT cv_var_t *cv_token_var(const cv_token_t *token);

/** The value before the set into *out and true; false for MISSING (the
 * variable had no value), for an empty token or a NULL argument, and *out
 * is then untouched. Like Python's token.old_value it stays readable after
 * the token is used; only a live token keeps the value alive (through the
 * variable's retain hook). */
CV_EXPORT bool cv_token_old_value(const cv_token_t *token, void **out);

/** True once reset or discarded, for an empty token, and for NULL. */
CV_EXPORT bool cv_token_used(const cv_token_t *token);

/** Drops a token that will never be reset: releases what it holds and marks
 * it used. NULL and used tokens are a no-op. */
CV_EXPORT void cv_token_discard(cv_token_t *token);

/* -------------------------------------------------------------- contexts */

/** A new, empty context with one reference for the caller. */
CV_EXPORT cv_context_t *cv_context_new(void);

/** A copy of the calling thread's current context, O(1). */
CV_EXPORT cv_context_t *cv_copy_context(void);

/** A copy of `ctx`, O(1), from any thread, even while `ctx` is entered and
 * written by another thread (the copy is the state before or after each of
 * its sets). NULL if `ctx` is NULL or memory is short.
 *
 * Copies of a context that no thread has entered (a base that every request
 * starts from) scale across cores: once copiers on different CPUs collide,
 * the map's reference count is kept per CPU until the base is released or
 * entered, which costs one block of (CPUs rounded up to a power of two, at
 * most 64, plus 3) x 128 bytes meanwhile. */
CV_EXPORT cv_context_t *cv_context_copy(cv_context_t *ctx);

/** The calling thread's current context, borrowed (retain it to keep it);
 * creates the thread's base context on first need, NULL if memory is
 * short. */
CV_EXPORT cv_context_t *cv_context_current(void);

/** Takes one more reference to `ctx` (one relaxed atomic add). NULL is a
 * no-op. */
CV_EXPORT void cv_context_retain(cv_context_t *ctx);

/** Drops one reference; the last one frees the context, and its map once
 * no other context shares it (after the reclamation grace period if
 * another thread may be reading it). Must not drop a reference that a
 * thread's stack or a run still needs: an entered context stays alive
 * through the enter's own reference. NULL is a no-op. */
CV_EXPORT void cv_context_release(cv_context_t *ctx);

/** Enters `ctx`, calls fn(arg), exits. Sets inside fn land in `ctx`. The
 * caller's current context is always restored; contexts that fn left
 * entered are exited and CV_ENOTCURRENT is returned. CV_EBUSY (fn not
 * called) if `ctx` is entered anywhere; CV_EINVAL for NULL arguments.
 * The run borrows the caller's reference (no reference count traffic):
 * the caller keeps `ctx` referenced until the run returns. Inside fn,
 * `ctx` itself cannot be exited (CV_ENOTCURRENT). */
CV_EXPORT cv_status_t cv_context_run(cv_context_t *ctx, void (*fn)(void *arg), void *arg);

/** Makes `ctx` the current context of the calling thread, on top of a
 * per-thread stack (for schedulers that switch tasks without nesting
 * calls). CV_EBUSY if `ctx` is entered by any thread (this one included). */
CV_EXPORT cv_status_t cv_context_enter(cv_context_t *ctx);

/** Leaves `ctx`, which must be the calling thread's current context and not
 * its base context: CV_ENOTCURRENT otherwise. */
CV_EXPORT cv_status_t cv_context_exit(cv_context_t *ctx);

/* The mapping API works on any context from any thread, lock-free, even
 * while another thread has it entered and sets variables in it; each call
 * sees one state, never a mix. Defaults are not consulted. A lookup costs
 * O(log32 n) loads, plus an RCU read-side section when another thread owns
 * the context. */

/** The value `ctx` holds for `var` into *out: CV_OK; CV_ENOVALUE (with *out
 * untouched) if it holds none; CV_EINVAL if an argument is NULL. */
CV_EXPORT cv_status_t cv_context_get(cv_context_t *ctx, const cv_var_t *var, void **out);

/** Whether `ctx` holds a value for `var`; false for NULL arguments. */
CV_EXPORT bool cv_context_contains(cv_context_t *ctx, const cv_var_t *var);

/** The number of variables `ctx` holds; 0 for NULL. O(1). */
CV_EXPORT size_t cv_context_len(cv_context_t *ctx);

/** Same variables with the same values (compared as pointers); false if
 * either is NULL. O(1) when both share one map. */
CV_EXPORT bool cv_context_equal(cv_context_t *a, cv_context_t *b);

/** Caller-owned iterator over a snapshot of a context taken at init; order
 * is unspecified. fini must be called (it drops the snapshot). The
 * variables returned stay valid until fini. */
struct cv_iter_private {
    void *nodes[9];
    uint32_t pos[9];
    int32_t depth;
};
typedef struct cv_context_iter {
    void *cv_private_snapshot;
    struct cv_iter_private cv_private_walk;
} cv_context_iter_t;

/** Takes the snapshot of `ctx` that `it` walks (O(1): one reference to
 * the map). A NULL `ctx` gives an empty walk; a NULL `it` is a no-op. */
CV_EXPORT void cv_context_iter_init(cv_context_iter_t *it, cv_context_t *ctx);

/** Next pair into *var and *value (either may be NULL); false at the end. */
CV_EXPORT bool cv_context_iter_next(cv_context_iter_t *it, cv_var_t **var, void **value);

/** Drops the snapshot; `it` may be initialised again. NULL is a no-op. */
CV_EXPORT void cv_context_iter_fini(cv_context_iter_t *it);

/* ------------------------------------------------------- switch watchers */

typedef enum cv_switch_event {
    CV_SWITCH_ENTER, /**< `to` was entered on top of `from` */
    CV_SWITCH_EXIT,  /**< `from` was exited, back to `to` */
} cv_switch_event_t;

typedef void (*cv_switch_watcher_t)(cv_switch_event_t event, cv_context_t *from, cv_context_t *to,
                                    void *data);

/** At most this many watchers are registered at once. */
#define CV_MAX_WATCHERS 8

/** Registers `watcher` (CPython's PyContext_AddWatcher, folly's
 * addSetContextWatcher): on every context switch of any thread (enter,
 * exit, and the two switches of cv_context_run) it is called on that
 * thread, after the switch, as watcher(event, from, to, data); `from` and
 * `to` are borrowed for the call. Watchers run in registration slot order,
 * before change handlers; like handlers they may read but not switch or
 * write (CV_EBUSY). A thread's first (base) context and its cleanup at
 * exit are not switches. Writes the watcher's id to *id. CV_EINVAL if
 * `watcher` or `id` is NULL; CV_EBUSY if CV_MAX_WATCHERS are registered.
 * With no watcher and no handler registered, a switch pays a load of one
 * shared, read-mostly word and a branch, besides the thread-local check
 * that refuses switches inside callbacks: cv_context_run executed 102
 * instructions with watchers, against 120 before they existed
 * (bench/ab.sh; 108 since map labels). */
CV_EXPORT cv_status_t cv_watcher_add(cv_switch_watcher_t watcher, void *data, int *id);

/** Unregisters watcher `id`: no call of it starts after this returns, and
 * none is under way on another thread then, so its data may be freed.
 * From inside a watcher or handler it does not wait for other threads (two
 * callbacks waiting for each other would deadlock): their calls under way
 * may still finish, and the slot is reused only after a later wait (any
 * cv_watcher_remove, cv_var_release of a variable with a handler, or
 * cv_reclaim_barrier made outside callbacks). CV_EINVAL if `id` is not
 * registered. Takes microseconds (a membarrier and a scan of the threads
 * that use the library): not for hot paths. Watchers and handlers must not
 * call fork(). */
CV_EXPORT cv_status_t cv_watcher_remove(int id);

/* ------------------------------------------------------ flow and tasks */

/** Suppresses flow (.NET's ExecutionContext.SuppressFlow): while the
 * calling thread has flow suppressed, what it hands to other work carries
 * none of its values: cv_capture_context, cv_task_init and
 * cv_thread_create give a new, empty context instead of a copy of the
 * current one. cv_copy_context is not affected (it is Python's
 * copy_context), nor are the thread's own values. Suppression nests, is
 * per thread, and does not follow the thread's context switches. A
 * thread-local counter: costs nothing else. */
CV_EXPORT void cv_flow_suppress(void);

/** Undoes one cv_flow_suppress of the calling thread; CV_EINVAL if flow is
 * not suppressed there. */
CV_EXPORT cv_status_t cv_flow_restore(void);

/** Whether the calling thread has flow suppressed. */
CV_EXPORT bool cv_flow_is_suppressed(void);

/** The context to hand to work that starts elsewhere: a copy of the current
 * context (O(1)), or a new empty one while flow is suppressed on this
 * thread. NULL if memory is short. */
CV_EXPORT cv_context_t *cv_capture_context(void);

/** Executor integration: a task captured at submit, run at execute, in any
 * thread pool. The struct is caller-owned (embed it in the pool's own task
 * record); a zero-initialised task is empty. */
typedef struct cv_task {
    void (*cv_private_fn)(void *arg);
    void *cv_private_arg;
    void *cv_private_map;
} cv_task_t;

/** Fills `task` with fn, arg and what cv_capture_context() would capture:
 * the current context's map (one atomic increment, no allocation), or the
 * empty map while flow is suppressed. CV_EINVAL if `task` or `fn` is
 * NULL; it needs no memory, so it cannot fail otherwise. */
CV_EXPORT cv_status_t cv_task_init(cv_task_t *task, void (*fn)(void *arg), void *arg);

/** Runs fn(arg) on the calling thread (any thread) in a new context holding
 * the captured map, as cv_context_run would in a context made by
 * cv_capture_context, then drops it: a task runs once, and its sets stay
 * in its own context. The context object is the thread's own, reused from
 * task to task: no allocation and no atomic claim. The task is emptied
 * before fn is called, so fn may free the memory it lives in. Returns what
 * cv_context_run returns: CV_OK, or CV_ENOTCURRENT if fn left contexts
 * entered; CV_ENOMEM (the thread's first task, or its first after fn kept
 * the context) or CV_EBUSY (inside a watcher, change handler or value
 * hook) when fn was not called, and the task is then given back
 * unchanged. CV_EINVAL for NULL or an empty task. */
CV_EXPORT cv_status_t cv_task_run(cv_task_t *task);

/** Drops a task that will not run: releases its context and empties it.
 * NULL and empty tasks are a no-op. */
CV_EXPORT void cv_task_discard(cv_task_t *task);

/* --------------------------------------------------------------- threads */

/** pthread_create, with the new thread starting in a copy of the caller's
 * current context (its base context); in an empty one while the caller has
 * flow suppressed. Returns 0 or an error number
 * (ENOMEM if the copy cannot be made, EINVAL for NULL thread or start). */
CV_EXPORT int cv_thread_create(pthread_t *thread, const pthread_attr_t *attr,
                               void *(*start)(void *), void *arg);

/** Waits until every deferred free and every value release owed so far, by
 * any thread, has run. Takes milliseconds: keep it out of hot paths. Must
 * not be called from a release hook. */
CV_EXPORT void cv_reclaim_barrier(void);

/* ------------------------------------------------------------ allocation */

typedef struct cv_allocator {
    void *(*alloc)(size_t size, void *data);
    void (*free)(void *ptr, size_t size, void *data); /**< size as asked for */
    void *data;
} cv_allocator_t;

/** Replaces malloc/free for all of the library's memory. Only before any
 * other call of the library: CV_EBUSY after one, a first cv_set_allocator
 * included (cv_strerror, and calls that only refuse their arguments, read
 * a token or count flow suppression, leave it open); CV_EINVAL if
 * `allocator` or one of its functions is NULL. */
CV_EXPORT cv_status_t cv_set_allocator(const cv_allocator_t *allocator);

/* ------------------------------------------------- private: inline get */

/* What follows is not API: it lets cv_get and cv_get_or answer from the
 * calling thread's lookup cache without a function call, the way a
 * __thread read does. Its layout is shared with the library; define
 * CV_NO_INLINE to call the library's functions instead. */
#if defined(__GNUC__) || defined(__clang__)

struct cv_private_cache_entry {
    uint64_t version;
    void *value;
};

/* Every variable's entry lies inside every thread's cache: a thread
 * without a cache of its own reads a region of zeros that nobody writes,
 * and version 0 names no map. So the get needs no bounds check. */
struct cv_private_lookup {
    uint64_t version;                     /* names the map cv_get reads from */
    struct cv_private_cache_entry *cache; /* each variable's entry at its cache_offset */
    uint32_t store_limit;                 /* the library's: offsets it may store to are below */
};

struct cv_private_var_head {
    uint32_t hash;
    uint32_t cache_offset; /* in bytes, so that no shift is needed */
};

CV_EXPORT extern __thread struct cv_private_lookup cv_private_lookup_state
    __attribute__((tls_model("initial-exec")));

#ifndef CV_NO_INLINE

static inline bool cv_private_cached(cv_var_t *var, void **value)
{
    const struct cv_private_lookup *lookup = &cv_private_lookup_state;
#ifdef __cplusplus
    const struct cv_private_var_head *head =
        reinterpret_cast<const struct cv_private_var_head *>(var);
    const struct cv_private_cache_entry *entry =
        reinterpret_cast<const struct cv_private_cache_entry *>(
            reinterpret_cast<const char *>(lookup->cache) + head->cache_offset);
#else
    const struct cv_private_var_head *head = (const struct cv_private_var_head *)(const void *)var;
    const struct cv_private_cache_entry *entry =
        (const struct cv_private_cache_entry *)(const void *)((const char *)lookup->cache +
                                                              head->cache_offset);
#endif
    if (__builtin_expect(entry->version == lookup->version, 1)) {
        *value = entry->value;
        return true;
    }
    return false;
}

static inline cv_status_t cv_private_get(cv_var_t *var, void **out)
{
    void *value;
    if (!var || !out)
        return CV_EINVAL;
    cv_status_t status = CV_OK;
    if (!cv_private_cached(var, &value))
        status = (cv_get)(var, &value);
    if (status == CV_OK)
        *out = value;
    return status;
}

static inline void *cv_private_get_or(cv_var_t *var, void *fallback)
{
    void *value;
    if (var && cv_private_cached(var, &value))
        return value;
    return (cv_get_or)(var, fallback);
}

/* Function-like macros: `&cv_get` still names the exported function. */
#define cv_get(var, out) cv_private_get((var), (out))
#define cv_get_or(var, fallback) cv_private_get_or((var), (fallback))

#endif /* CV_NO_INLINE */
#endif /* __GNUC__ */

#ifdef __cplusplus
}
#endif

#endif /* CV_CTXVARS_H */
