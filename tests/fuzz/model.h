/*
 * The reference model for the differential fuzzer (fuzz_ops.c): a
 * trivially correct, array-based picture of what API.md says the library
 * must do. It knows nothing of ctxvars' internals; fuzz_ops.c keeps one
 * model object beside each library object and compares after every step.
 *
 *  - A variable is an index into mvar[]; ids are never reused within an
 *    input, so a recreated variable is a different variable.
 *  - A context object is an index into mctx[]: a map (present/value per
 *    variable id), a reference count (slot references, one per
 *    cv_context_enter on the stack, the harness's own for the root), and
 *    whether it is entered. Ids are never reused, so a token that names a
 *    dead context can never match a new one.
 *  - The stack of entered contexts of the (single) fuzzing thread, with the
 *    floor of the innermost cv_context_run: only entries above the floor
 *    can be exited.
 *  - A token remembers the variable id, the context id and the old value or
 *    MISSING, and whether it is live.
 */
#ifndef CV_FUZZ_MODEL_H
#define CV_FUZZ_MODEL_H

#include <ctxvars.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define M_NCTX 4       /* context slots */
#define M_NVAR 6       /* variable slots */
#define M_NTOK 4       /* token slots */
#define M_NITER 2      /* iterator slots */
#define M_MAXC 96      /* context objects per input */
#define M_MAXV 96      /* variables per input: more than one lookup cache block (64) */
#define M_MAXSTACK 128 /* > M_MAXC: every object is entered at most once */
#define M_NVALUES 16   /* values are the pointers 0 (NULL) .. 15 */

typedef struct mmap {
    bool present[M_MAXV];
    uint8_t value[M_MAXV];
} mmap_t;

typedef struct mctx {
    bool alive;
    int refs;
    bool entered; /* on the stack */
    bool in_run;  /* entered by a cv_context_run, which borrows the caller's reference */
    mmap_t map;
} mctx_t;

typedef struct mvar {
    bool has_default;
    uint8_t default_value;
    bool hooks;
    uint8_t hash_mode; /* 0: the library's own hash; else forced (fuzz_ops.c) */
    bool released;     /* the creator's reference was dropped */
} mvar_t;

typedef struct mtok {
    bool filled; /* false: empty (zeroed or cleared by a failed set) */
    bool live;
    int var;
    int ctx;
    bool has_old;
    uint8_t old_value;
} mtok_t;

typedef struct model {
    mctx_t ctx[M_MAXC];
    int nctx;
    mvar_t var[M_MAXV];
    int nvar;
    int stack[M_MAXSTACK];
    int depth;
    int floor; /* index in stack of the innermost run's context */
} model_t;

static inline void model_init(model_t *m)
{
    memset(m, 0, sizeof(*m));
    m->floor = -1;
}

/* ---------------------------------------------------------------- maps */

static inline int mmap_len(const mmap_t *map)
{
    int n = 0;
    for (int i = 0; i < M_MAXV; i++)
        n += map->present[i];
    return n;
}

static inline bool mmap_equal(const mmap_t *a, const mmap_t *b)
{
    for (int i = 0; i < M_MAXV; i++) {
        if (a->present[i] != b->present[i])
            return false;
        if (a->present[i] && a->value[i] != b->value[i])
            return false;
    }
    return true;
}

/* ------------------------------------------------------------ contexts */

static inline bool model_ctx_room(const model_t *m)
{
    return m->nctx < M_MAXC;
}

/* A new object with one reference and the given map (NULL: empty). */
static inline int model_ctx_new(model_t *m, const mmap_t *map)
{
    int id = m->nctx++;
    mctx_t *c = &m->ctx[id];
    memset(c, 0, sizeof(*c));
    c->alive = true;
    c->refs = 1;
    if (map)
        c->map = *map;
    return id;
}

/* Drops one reference; true when it was the last (the object is dead). */
static inline bool model_ctx_unref(model_t *m, int id)
{
    mctx_t *c = &m->ctx[id];
    if (--c->refs > 0)
        return false;
    c->alive = false;
    return true;
}

static inline int model_top(const model_t *m)
{
    return m->depth ? m->stack[m->depth - 1] : -1;
}

/* cv_context_enter(id): the status API.md prescribes (CV_OK: entered). */
static inline cv_status_t model_enter_status(const model_t *m, int id)
{
    if (id < 0)
        return CV_EINVAL;
    if (m->ctx[id].entered)
        return CV_EBUSY;
    return CV_OK;
}

static inline void model_enter(model_t *m, int id)
{
    m->ctx[id].entered = true;
    m->ctx[id].refs++; /* the stack's reference */
    m->stack[m->depth++] = id;
}

/* cv_context_exit(id): only the current context, and only above the
 * innermost run (the base and a run's context cannot be exited). */
static inline cv_status_t model_exit_status(const model_t *m, int id)
{
    if (id < 0)
        return CV_EINVAL;
    if (m->depth - 1 <= m->floor || model_top(m) != id)
        return CV_ENOTCURRENT;
    return CV_OK;
}

/* Pops an entry pushed by model_enter. */
static inline void model_pop_entered(model_t *m)
{
    int id = m->stack[--m->depth];
    m->ctx[id].entered = false;
    model_ctx_unref(m, id);
}

/* cv_context_run, before fn: status if fn must not be called. */
static inline cv_status_t model_run_status(const model_t *m, int id, bool null_fn)
{
    if (null_fn || id < 0)
        return CV_EINVAL;
    if (m->ctx[id].entered)
        return CV_EBUSY;
    return CV_OK;
}

/* Enters for a run; returns the floor to restore. */
static inline int model_run_push(model_t *m, int id)
{
    int outer = m->floor;
    m->ctx[id].entered = true;
    m->ctx[id].in_run = true;
    m->stack[m->depth++] = id;
    m->floor = m->depth - 1;
    return outer;
}

/* After fn: exits what fn left entered, then the run's own context. */
static inline cv_status_t model_run_pop(model_t *m, int outer_floor)
{
    cv_status_t status = CV_OK;
    while (m->depth - 1 > m->floor) {
        model_pop_entered(m);
        status = CV_ENOTCURRENT;
    }
    int id = m->stack[--m->depth];
    m->ctx[id].entered = false;
    m->ctx[id].in_run = false;
    m->floor = outer_floor;
    return status;
}

/* -------------------------------------------------------- get, set, reset */

/* cv_get in the current context. */
static inline cv_status_t model_get(const model_t *m, int var, uint8_t *out)
{
    if (var < 0)
        return CV_EINVAL;
    const mctx_t *c = &m->ctx[model_top(m)];
    if (c->map.present[var]) {
        *out = c->map.value[var];
        return CV_OK;
    }
    if (m->var[var].has_default) {
        *out = m->var[var].default_value;
        return CV_OK;
    }
    return CV_ENOVALUE;
}

/* cv_set in the current context, filling `tok` if not NULL. */
static inline void model_set(model_t *m, int var, uint8_t value, mtok_t *tok)
{
    mctx_t *c = &m->ctx[model_top(m)];
    if (tok)
        *tok = (mtok_t){
            .filled = true,
            .live = true,
            .var = var,
            .ctx = model_top(m),
            .has_old = c->map.present[var],
            .old_value = c->map.present[var] ? c->map.value[var] : 0,
        };
    c->map.present[var] = true;
    c->map.value[var] = value;
}

/* cv_reset: the checks in API.md's order. */
static inline cv_status_t model_reset_status(const model_t *m, int var, const mtok_t *tok)
{
    if (var < 0 || !tok)
        return CV_EINVAL;
    if (!tok->live)
        return CV_ETOKEN_USED;
    if (tok->var != var)
        return CV_ETOKEN_VAR;
    if (tok->ctx != model_top(m))
        return CV_ETOKEN_CONTEXT;
    return CV_OK;
}

static inline void model_reset(model_t *m, mtok_t *tok)
{
    mctx_t *c = &m->ctx[model_top(m)];
    c->map.present[tok->var] = tok->has_old;
    c->map.value[tok->var] = tok->has_old ? tok->old_value : 0;
    tok->live = false;
}

#endif
