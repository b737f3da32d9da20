/*
 * Differential fuzz target: decodes the input into a sequence of ctxvars
 * API operations, runs each against the library and against the model of
 * model.h (a plain-array reading of API.md), and abort()s at the first
 * difference in a status, a value, a token, a mapping or an iteration.
 *
 * Per input: four context slots, six variable slots, four token slots and
 * two iterator slots. The whole input runs inside cv_context_run on a fresh
 * root context, so the thread's base context is never written and nothing
 * carries over from one input to the next; at the end every iterator is
 * finished, every token discarded, every context and variable released.
 *
 * Variables start as: v0 plain; v1 default 7; v2 plain and v3 default NULL
 * with the same forced hash (a collision node); v4 with retain/release
 * hooks and a hash that differs from v2's only in bit 31 (the deepest
 * trie level); v5 hooks and default 3. VAR_NEW makes others.
 *
 * Values are the pointers 0 (NULL, an ordinary value) to 15. Hooked
 * variables count references per value: a release without a retain aborts
 * at once, and cv_fuzz_settle_and_check() requires every count back at
 * zero. The harness installs its own allocator (cv_set_allocator), which
 * checks the size passed to free and can fail the k-th allocation of the
 * next operation (FAULT): the library may then answer CV_ENOMEM (NULL for
 * constructors) and must have changed nothing, or succeed.
 *
 * Encoding: each operation is one opcode byte (low five bits) followed by
 * its operand bytes; a missing byte reads as 0, and the input ends at its
 * last byte. Selectors: context c = 0..3 slot, 4 NULL, 5 the current
 * context (cv_context_current); variable v = 0..5 slot, 6 NULL; token
 * t = 0..3 slot, 4 NULL; value = b % 16.
 *
 *   0 SET       a b   var a%7, token (a/7)%5, value b%16 (a live token
 *                     slot is discarded first)
 *   1 RESET     a     var a%7, token (a/7)%5
 *   2 DISCARD   a     token a%5
 *   3 TOKEN     a     token a%5: cv_token_var/old_value/used
 *   4 GET       a b   var a%7, fallback b%16: cv_get (inline and function),
 *                     cv_get_or, NULL out
 *   5 NEW       a     slot a%4 = cv_context_new()
 *   6 COPY_CUR  a     slot a%4 = cv_copy_context()
 *   7 COPY      a     slot a%4 = cv_context_copy(ctx (a/4)%6)
 *   8 DUP       a     slot a%4 = ctx (a/4)%6 with cv_context_retain
 *   9 RET_CUR   a     slot a%4 = cv_context_current() retained
 *  10 RELEASE   a     cv_context_release(slot a%4)
 *  11 ENTER     a     cv_context_enter(ctx a%6)
 *  12 EXIT      a     cv_context_exit(ctx a%6)
 *  13 RUN       a b   cv_context_run(ctx a%6) on the next b%16 operations
 *                     (fn NULL if b/16 == 15; nesting up to depth 6)
 *  14 MAP       a b   cv_context_get/contains(ctx a%6, var b%7)
 *  15 LEN       a     cv_context_len(ctx a%6)
 *  16 ITER      a     full iteration of ctx a%6, compared as a set
 *  17 EQUAL     a     cv_context_equal(ctx a%6, ctx (a/6)%6), both ways
 *  18 IT_START  a     iterator a%2 = snapshot of ctx (a/2)%6
 *  19 IT_STEP   a     iterator a%2: 1 + (a/2)%4 calls of next
 *  20 IT_END    a     cv_context_iter_fini(iterator a%2)
 *  21 VAR_NEW   a b   slot a%6 (the old one released), default (a/6)%16;
 *                     b: bit 0 has default, bit 1 hooks, (b>>2)&7 hash
 *                     (0-1 the library's, 2-7 one of six forced hashes)
 *  22 VAR_REL   a     cv_var_release(var slot a%6)
 *  23 FAULT     a     fail allocation number a%8+1 of the next operation
 *                     that allocates
 *  24 CHECK           every slot's context: len, get/contains of every
 *                     variable, full iteration; hook reference counts
 *  25-27 SET, 28 RESET, 29 ENTER, 30 EXIT, 31 MAP (weights)
 *
 * Every operation is followed by a check of the current context:
 * cv_context_current, cv_get and cv_get_or of every variable slot
 * (inline and exported), cv_context_len. Those are owner-side reads; the
 * mapping operations on contexts that are not entered exercise the
 * foreign-reader paths.
 */
#include "fuzz_ops.h"

#include "model.h"

#include <ctxvars.h>
#include <testing.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_RUN_DEPTH 6
#define SETTLE_EVERY 1024 /* inputs between two hook and allocation checks */
#define MAX_IDLE_BLOCKS 16

#define P(v) ((void *)(uintptr_t)(v))
#define SENTINEL ((void *)(uintptr_t)0x5e5e5e5)

enum op {
    OP_SET,
    OP_RESET,
    OP_DISCARD,
    OP_TOKEN,
    OP_GET,
    OP_NEW,
    OP_COPY_CUR,
    OP_COPY,
    OP_DUP,
    OP_RET_CUR,
    OP_RELEASE,
    OP_ENTER,
    OP_EXIT,
    OP_RUN,
    OP_MAP,
    OP_LEN,
    OP_ITER,
    OP_EQUAL,
    OP_IT_START,
    OP_IT_STEP,
    OP_IT_END,
    OP_VAR_NEW,
    OP_VAR_REL,
    OP_FAULT,
    OP_CHECK,
    OP_COUNT
};

static const uint8_t opcode_of[32] = {
    OP_SET,   OP_RESET,   OP_DISCARD,  OP_TOKEN,   OP_GET,    OP_NEW,     OP_COPY_CUR, OP_COPY,
    OP_DUP,   OP_RET_CUR, OP_RELEASE,  OP_ENTER,   OP_EXIT,   OP_RUN,     OP_MAP,      OP_LEN,
    OP_ITER,  OP_EQUAL,   OP_IT_START, OP_IT_STEP, OP_IT_END, OP_VAR_NEW, OP_VAR_REL,  OP_FAULT,
    OP_CHECK, OP_SET,     OP_SET,      OP_SET,     OP_RESET,  OP_ENTER,   OP_EXIT,     OP_MAP,
};

static const char *const op_names[OP_COUNT] = {
    "SET",      "RESET",   "DISCARD", "TOKEN",   "GET",     "NEW",   "COPY_CUR", "COPY", "DUP",
    "RET_CUR",  "RELEASE", "ENTER",   "EXIT",    "RUN",     "MAP",   "LEN",      "ITER", "EQUAL",
    "IT_START", "IT_STEP", "IT_END",  "VAR_NEW", "VAR_REL", "FAULT", "CHECK",
};

/* Forced hashes: 0 and 0x80000000 share every 5-bit level but the last
 * (two bits), 0x40000000 too; 0x20 differs at level 1, 1 at level 0. */
static const uint32_t forced_hash[6] = {0x00000000u, 0x80000000u, 0x40000000u,
                                        0x00000020u, 0x00000001u, 0xc0000000u};

/* ------------------------------------------------------------ state */

typedef struct iter_slot {
    bool active;
    bool ended;
    mmap_t snap;
    bool seen[M_MAXV];
    int nseen;
    cv_context_iter_t it;
} iter_slot_t;

typedef struct fuzz_state {
    const uint8_t *data;
    size_t size, pos;
    unsigned step;
    int run_depth;
    const char *op;
    model_t m;
    cv_context_t *lib_ctx[M_MAXC];
    cv_var_t *lib_var[M_MAXV];
    int cslot[M_NCTX];
    int vslot[M_NVAR];
    cv_token_t tok[M_NTOK];
    mtok_t mtok[M_NTOK];
    iter_slot_t iter[M_NITER];
    int root;
    unsigned fault_pending; /* 0: none; k: fail the k-th allocation */
} fuzz_state_t;

static fuzz_state_t state;
static bool tracing;

static void fail(const fuzz_state_t *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));

static void fail(const fuzz_state_t *st, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\nctxvars fuzz MISMATCH at step %u (op %s, run depth %d, input offset %zu): ",
            st->step, st->op ? st->op : "-", st->run_depth, st->pos);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    abort();
}

static void trace(const fuzz_state_t *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void trace(const fuzz_state_t *st, const char *fmt, ...)
{
    if (!tracing)
        return;
    va_list ap;
    fprintf(stderr, "[%4u] %*s", st->step, 2 * st->run_depth, "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void expect_status(const fuzz_state_t *st, const char *call, cv_status_t got,
                          cv_status_t want)
{
    trace(st, "  -> %s: %s", call, cv_strerror(got));
    if (got != want)
        fail(st, "%s returned %d (%s), expected %d (%s)", call, (int)got, cv_strerror(got),
             (int)want, cv_strerror(want));
}

/* ------------------------------------------------- allocator and hooks */

#define BLOCK_MAGIC 0xc7f2a11cu

struct block_header {
    size_t size;
    size_t magic;
};

static int allocator_data;
static atomic_long live_blocks;
/* Only the fuzzing thread fails allocations; the RCU worker never does. */
static _Thread_local unsigned fault_countdown;
static _Thread_local unsigned fault_injected;

static void *fuzz_alloc(size_t size, void *data)
{
    if (data != &allocator_data) {
        fprintf(stderr, "ctxvars fuzz: allocator called with data %p\n", data);
        abort();
    }
    if (fault_countdown && --fault_countdown == 0) {
        fault_injected++;
        return NULL;
    }
    struct block_header *h = malloc(sizeof(*h) + size);
    if (!h)
        return NULL;
    h->size = size;
    h->magic = BLOCK_MAGIC;
    atomic_fetch_add_explicit(&live_blocks, 1, memory_order_relaxed);
    return h + 1;
}

static void fuzz_free(void *ptr, size_t size, void *data)
{
    if (!ptr)
        return;
    struct block_header *h = (struct block_header *)ptr - 1;
    if (data != &allocator_data || h->magic != BLOCK_MAGIC || h->size != size) {
        fprintf(stderr,
                "ctxvars fuzz: free(%p, %zu) of a block allocated with size %zu (magic %zx)\n", ptr,
                size, h->size, (size_t)h->magic);
        abort();
    }
    h->magic = 0;
    atomic_fetch_sub_explicit(&live_blocks, 1, memory_order_relaxed);
    free(h);
}

static atomic_long hook_refs[M_NVALUES];

static uintptr_t hooked_value(void *value)
{
    uintptr_t v = (uintptr_t)value;
    if (v >= M_NVALUES) {
        fprintf(stderr, "ctxvars fuzz: a hook got %p, which no input ever stored\n", value);
        abort();
    }
    return v;
}

static void hook_retain(void *value)
{
    atomic_fetch_add(&hook_refs[hooked_value(value)], 1);
}

static void hook_release(void *value)
{
    uintptr_t v = hooked_value(value);
    if (atomic_fetch_sub(&hook_refs[v], 1) <= 0) {
        fprintf(stderr, "ctxvars fuzz: value %zu released more often than retained\n", (size_t)v);
        abort();
    }
}

/* The next library call that allocates fails its k-th allocation. */
static void lib_begin(fuzz_state_t *st)
{
    fault_injected = 0;
    fault_countdown = st->fault_pending;
    st->fault_pending = 0;
}

/* True if an allocation was failed since lib_begin. */
static bool lib_end(const fuzz_state_t *st)
{
    fault_countdown = 0;
    if (fault_injected)
        trace(st, "  (an allocation was failed)");
    return fault_injected != 0;
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    const char *t = getenv("CV_FUZZ_TRACE");
    tracing = t && *t && strcmp(t, "0") != 0;
    fuzz_state_t *st = &state;
    st->op = "init";
    /* Nothing of the library may have run yet: the allocator goes first. */
    expect_status(st, "cv_set_allocator(NULL)", cv_set_allocator(NULL), CV_EINVAL);
    cv_allocator_t half = {fuzz_alloc, NULL, &allocator_data};
    expect_status(st, "cv_set_allocator(no free)", cv_set_allocator(&half), CV_EINVAL);
    cv_allocator_t allocator = {fuzz_alloc, fuzz_free, &allocator_data};
    expect_status(st, "cv_set_allocator", cv_set_allocator(&allocator), CV_OK);
    for (int s = 0; s <= CV_ENOTCURRENT + 1; s++)
        if (!cv_strerror((cv_status_t)s))
            fail(st, "cv_strerror(%d) is NULL", s);
    if (cv_var_new(NULL, NULL))
        fail(st, "cv_var_new(NULL name) is not NULL");
    if (cv_var_name(NULL))
        fail(st, "cv_var_name(NULL) is not NULL");
    cv_var_release(NULL);
    cv_context_retain(NULL);
    cv_context_release(NULL);
    cv_token_discard(NULL);
    if (cv_context_copy(NULL))
        fail(st, "cv_context_copy(NULL) is not NULL");
}

/* --------------------------------------------------------- input bytes */

static uint8_t u8(fuzz_state_t *st)
{
    return st->pos < st->size ? st->data[st->pos++] : 0;
}

/* ----------------------------------------------------------- selectors */

static const char *ctx_desc(const fuzz_state_t *st, unsigned sel)
{
    static char buf[4][32];
    static int n;
    char *b = buf[n++ & 3];
    if (sel == 4)
        snprintf(b, 32, "NULL");
    else if (sel == 5)
        snprintf(b, 32, "current(c%d)", model_top(&st->m));
    else if (st->cslot[sel] < 0)
        snprintf(b, 32, "slot%u(empty)", sel);
    else
        snprintf(b, 32, "slot%u(c%d)", sel, st->cslot[sel]);
    return b;
}

static int pick_ctx(fuzz_state_t *st, unsigned sel, cv_context_t **lib)
{
    if (sel == 4) {
        *lib = NULL;
        return -1;
    }
    if (sel == 5) {
        int top = model_top(&st->m);
        cv_context_t *cur = cv_context_current();
        if (cur != st->lib_ctx[top])
            fail(st, "cv_context_current() = %p, expected c%d = %p", (void *)cur, top,
                 (void *)st->lib_ctx[top]);
        *lib = cur;
        return top;
    }
    int id = st->cslot[sel];
    *lib = id >= 0 ? st->lib_ctx[id] : NULL;
    return id;
}

static const char *var_desc(const fuzz_state_t *st, unsigned sel)
{
    static char buf[4][32];
    static int n;
    char *b = buf[n++ & 3];
    if (sel == 6)
        snprintf(b, 32, "NULL");
    else if (st->vslot[sel] < 0)
        snprintf(b, 32, "vslot%u(empty)", sel);
    else
        snprintf(b, 32, "v%d", st->vslot[sel]);
    return b;
}

static int pick_var(const fuzz_state_t *st, unsigned sel, cv_var_t **lib)
{
    int id = sel < M_NVAR ? st->vslot[sel] : -1;
    *lib = id >= 0 ? st->lib_var[id] : NULL;
    return id;
}

/* ------------------------------------------------------------- checks */

static void check_get(fuzz_state_t *st, int id)
{
    cv_var_t *var = st->lib_var[id];
    uint8_t want = 0;
    cv_status_t want_status = model_get(&st->m, id, &want);
    const mctx_t *top = &st->m.ctx[model_top(&st->m)];
    for (int exported = 0; exported < 2; exported++) {
        void *out = SENTINEL;
        cv_status_t got = exported ? (cv_get)(var, &out) : cv_get(var, &out);
        const char *call = exported ? "cv_get (exported)" : "cv_get (inline)";
        if (got != want_status)
            fail(st, "%s(v%d) returned %s, expected %s", call, id, cv_strerror(got),
                 cv_strerror(want_status));
        if (want_status == CV_OK && out != P(want))
            fail(st, "%s(v%d) gave %p, expected %p", call, id, out, P(want));
        if (want_status != CV_OK && out != SENTINEL)
            fail(st, "%s(v%d) failed but wrote %p to *out", call, id, out);
        void *want_or = top->map.present[id] ? P(top->map.value[id]) : SENTINEL;
        void *got_or = exported ? (cv_get_or)(var, SENTINEL) : cv_get_or(var, SENTINEL);
        if (got_or != want_or)
            fail(st, "cv_get_or%s(v%d, fallback) gave %p, expected %p",
                 exported ? " (exported)" : "", id, got_or, want_or);
    }
}

/* After every operation: the current context, as its owner sees it. */
static void check_current(fuzz_state_t *st)
{
    int top = model_top(&st->m);
    cv_context_t *cur = cv_context_current();
    if (cur != st->lib_ctx[top])
        fail(st, "cv_context_current() = %p, expected c%d = %p", (void *)cur, top,
             (void *)st->lib_ctx[top]);
    for (int s = 0; s < M_NVAR; s++)
        if (st->vslot[s] >= 0)
            check_get(st, st->vslot[s]);
    size_t len = cv_context_len(cur);
    if (len != (size_t)mmap_len(&st->m.ctx[top].map))
        fail(st, "cv_context_len(current c%d) = %zu, expected %d", top, len,
             mmap_len(&st->m.ctx[top].map));
}

static void check_token(fuzz_state_t *st, int t)
{
    const cv_token_t *tok = t >= 0 ? &st->tok[t] : NULL;
    mtok_t none = {0};
    const mtok_t *mt = t >= 0 ? &st->mtok[t] : &none;
    cv_var_t *want_var = mt->filled ? st->lib_var[mt->var] : NULL;
    if (cv_token_var(tok) != want_var)
        fail(st, "cv_token_var(token %d) = %p, expected %p (v%d)", t, (void *)cv_token_var(tok),
             (void *)want_var, mt->filled ? mt->var : -1);
    void *out = SENTINEL;
    bool has_old = cv_token_old_value(tok, &out);
    bool want_old = mt->filled && mt->has_old;
    if (has_old != want_old)
        fail(st, "cv_token_old_value(token %d) = %d, expected %d", t, has_old, want_old);
    if (has_old && out != P(mt->old_value))
        fail(st, "cv_token_old_value(token %d) gave %p, expected %p", t, out, P(mt->old_value));
    if (!has_old && out != SENTINEL)
        fail(st, "cv_token_old_value(token %d) returned false but wrote %p", t, out);
    if (cv_token_old_value(tok, NULL))
        fail(st, "cv_token_old_value(token %d, NULL) returned true", t);
    if (cv_token_used(tok) != !mt->live)
        fail(st, "cv_token_used(token %d) = %d, expected %d", t, cv_token_used(tok), !mt->live);
}

/* The model variable behind a library pointer among those in `map`. */
static int var_in_map(const fuzz_state_t *st, const mmap_t *map, const cv_var_t *var)
{
    for (int i = 0; i < st->m.nvar; i++)
        if (map->present[i] && st->lib_var[i] == var)
            return i;
    return -1;
}

/* One call of cv_context_iter_next against the snapshot; false at the end. */
static bool iter_step(fuzz_state_t *st, cv_context_iter_t *it, const mmap_t *snap, bool *seen,
                      int *nseen, const char *what)
{
    cv_var_t *var = SENTINEL;
    void *value = SENTINEL;
    if (!cv_context_iter_next(it, &var, &value)) {
        if (*nseen != mmap_len(snap))
            fail(st, "%s ended after %d pairs, expected %d", what, *nseen, mmap_len(snap));
        return false;
    }
    int id = var_in_map(st, snap, var);
    if (id < 0)
        fail(st, "%s gave variable %p, which the snapshot does not hold", what, (void *)var);
    if (seen[id])
        fail(st, "%s gave v%d twice", what, id);
    if (value != P(snap->value[id]))
        fail(st, "%s gave v%d = %p, expected %p", what, id, value, P(snap->value[id]));
    seen[id] = true;
    if (++*nseen > mmap_len(snap))
        fail(st, "%s gave more than %d pairs", what, mmap_len(snap));
    return true;
}

static void check_iteration(fuzz_state_t *st, cv_context_t *lib, int id, const char *what)
{
    mmap_t empty = {0};
    const mmap_t *snap = id >= 0 ? &st->m.ctx[id].map : &empty;
    bool seen[M_MAXV] = {0};
    int nseen = 0;
    cv_context_iter_t it;
    cv_context_iter_init(&it, lib);
    while (iter_step(st, &it, snap, seen, &nseen, what))
        ;
    if (cv_context_iter_next(&it, NULL, NULL))
        fail(st, "%s: next after the end returned true", what);
    cv_context_iter_fini(&it);
}

static void check_mapping(fuzz_state_t *st, cv_context_t *lib, int id, int var_id, cv_var_t *var)
{
    const mmap_t *map = id >= 0 ? &st->m.ctx[id].map : NULL;
    void *out = SENTINEL;
    cv_status_t got = cv_context_get(lib, var, &out);
    cv_status_t want = !map || var_id < 0 ? CV_EINVAL : map->present[var_id] ? CV_OK : CV_ENOVALUE;
    if (got != want)
        fail(st, "cv_context_get(c%d, v%d) returned %s, expected %s", id, var_id, cv_strerror(got),
             cv_strerror(want));
    if (want == CV_OK && out != P(map->value[var_id]))
        fail(st, "cv_context_get(c%d, v%d) gave %p, expected %p", id, var_id, out,
             P(map->value[var_id]));
    bool contains = cv_context_contains(lib, var);
    if (contains != (want == CV_OK))
        fail(st, "cv_context_contains(c%d, v%d) = %d, expected %d", id, var_id, contains,
             want == CV_OK);
    if (lib && var)
        expect_status(st, "cv_context_get(ctx, var, NULL)", cv_context_get(lib, var, NULL),
                      CV_EINVAL);
}

static void check_len(fuzz_state_t *st, cv_context_t *lib, int id)
{
    size_t want = id >= 0 ? (size_t)mmap_len(&st->m.ctx[id].map) : 0;
    size_t got = cv_context_len(lib);
    if (got != want)
        fail(st, "cv_context_len(c%d) = %zu, expected %zu", id, got, want);
}

static void check_context(fuzz_state_t *st, int id, const char *what)
{
    cv_context_t *lib = st->lib_ctx[id];
    check_len(st, lib, id);
    for (int s = 0; s < M_NVAR; s++)
        if (st->vslot[s] >= 0)
            check_mapping(st, lib, id, st->vslot[s], st->lib_var[st->vslot[s]]);
    check_iteration(st, lib, id, what);
}

/* A value that something live holds through a hooked variable must have
 * a reference: the library must not have released it yet. */
static void check_hook_refs(fuzz_state_t *st)
{
    bool held[M_NVALUES] = {0};
    for (int c = 0; c < st->m.nctx; c++)
        if (st->m.ctx[c].alive)
            for (int v = 0; v < st->m.nvar; v++)
                if (st->m.var[v].hooks && st->m.ctx[c].map.present[v])
                    held[st->m.ctx[c].map.value[v]] = true;
    for (int t = 0; t < M_NTOK; t++) {
        const mtok_t *mt = &st->mtok[t];
        if (mt->live && mt->has_old && st->m.var[mt->var].hooks)
            held[mt->old_value] = true;
    }
    for (int i = 0; i < M_NITER; i++)
        if (st->iter[i].active)
            for (int v = 0; v < st->m.nvar; v++)
                if (st->m.var[v].hooks && st->iter[i].snap.present[v])
                    held[st->iter[i].snap.value[v]] = true;
    for (int v = 0; v < M_NVALUES; v++)
        if (held[v] && atomic_load(&hook_refs[v]) <= 0)
            fail(st, "value %d is held by a hooked variable but has %ld references", v,
                 atomic_load(&hook_refs[v]));
}

static void check_all(fuzz_state_t *st)
{
    char what[48];
    for (int s = 0; s < M_NCTX; s++) {
        if (st->cslot[s] < 0)
            continue;
        snprintf(what, sizeof(what), "iteration of slot%d(c%d)", s, st->cslot[s]);
        check_context(st, st->cslot[s], what);
    }
    check_hook_refs(st);
}

/* ------------------------------------------------------- slot helpers */

/* A slot's context can be released unless that would drop the last
 * reference of a context that a cv_context_run is borrowing (a caller
 * error the fuzzer does not commit). */
static bool slot_releasable(const fuzz_state_t *st, int s)
{
    int id = st->cslot[s];
    return id < 0 || !(st->m.ctx[id].refs == 1 && st->m.ctx[id].in_run);
}

static void release_slot(fuzz_state_t *st, int s)
{
    int id = st->cslot[s];
    if (id < 0)
        return;
    cv_context_release(st->lib_ctx[id]);
    model_ctx_unref(&st->m, id);
    st->cslot[s] = -1;
}

static void release_var_slot(fuzz_state_t *st, int s)
{
    int id = st->vslot[s];
    if (id < 0)
        return;
    cv_var_release(st->lib_var[id]);
    st->m.var[id].released = true;
    st->vslot[s] = -1;
}

/* --------------------------------------------------------- operations */

static void run_ops(fuzz_state_t *st, int max_ops);

static void op_set(fuzz_state_t *st, uint8_t a, uint8_t b)
{
    cv_var_t *var;
    unsigned vsel = a % 7, tsel = (a / 7) % 5, value = b % M_NVALUES;
    int id = pick_var(st, vsel, &var);
    int t = tsel < M_NTOK ? (int)tsel : -1;
    trace(st, "SET %s = %u token %d", var_desc(st, vsel), value, t);
    if (t >= 0 && st->mtok[t].live) {
        cv_token_discard(&st->tok[t]);
        st->mtok[t].live = false;
        check_token(st, t);
    }
    cv_token_t *tok = t >= 0 ? &st->tok[t] : NULL;
    lib_begin(st);
    cv_status_t got = cv_set(var, P(value), tok);
    bool injected = lib_end(st);
    if (id < 0) {
        expect_status(st, "cv_set", got, CV_EINVAL);
        /* API.md: a token filled by a failed set holds nothing. Emptied, or
         * left as it was (used: a live one was discarded above). */
        if (t >= 0 && !cv_token_var(tok))
            st->mtok[t] = (mtok_t){0};
    } else if (got == CV_ENOMEM && injected) {
        if (t >= 0)
            st->mtok[t] = (mtok_t){0}; /* ctxvars.h: the token empty (used) */
    } else {
        expect_status(st, "cv_set", got, CV_OK);
        model_set(&st->m, id, (uint8_t)value, t >= 0 ? &st->mtok[t] : NULL);
    }
    if (t >= 0)
        check_token(st, t);
}

static void op_reset(fuzz_state_t *st, uint8_t a)
{
    cv_var_t *var;
    unsigned vsel = a % 7, tsel = (a / 7) % 5;
    int id = pick_var(st, vsel, &var);
    int t = tsel < M_NTOK ? (int)tsel : -1;
    trace(st, "RESET %s token %d", var_desc(st, vsel), t);
    cv_status_t want = model_reset_status(&st->m, id, t >= 0 ? &st->mtok[t] : NULL);
    lib_begin(st);
    cv_status_t got = cv_reset(var, t >= 0 ? &st->tok[t] : NULL);
    bool injected = lib_end(st);
    if (!(want == CV_OK && got == CV_ENOMEM && injected)) {
        expect_status(st, "cv_reset", got, want);
        if (want == CV_OK)
            model_reset(&st->m, &st->mtok[t]);
    }
    if (t >= 0)
        check_token(st, t);
}

static void op_discard(fuzz_state_t *st, uint8_t a)
{
    int t = a % 5 < M_NTOK ? a % 5 : -1;
    trace(st, "DISCARD token %d", t);
    cv_token_discard(t >= 0 ? &st->tok[t] : NULL);
    if (t >= 0)
        st->mtok[t].live = false;
    check_token(st, t);
}

static void op_get(fuzz_state_t *st, uint8_t a, uint8_t b)
{
    cv_var_t *var;
    unsigned vsel = a % 7, fallback = b % M_NVALUES;
    int id = pick_var(st, vsel, &var);
    trace(st, "GET %s or %u", var_desc(st, vsel), fallback);
    if (id >= 0) {
        check_get(st, id);
        const mctx_t *top = &st->m.ctx[model_top(&st->m)];
        void *want = top->map.present[id] ? P(top->map.value[id]) : P(fallback);
        if (cv_get_or(var, P(fallback)) != want)
            fail(st, "cv_get_or(v%d, %u) != %p", id, fallback, want);
    } else {
        void *out = SENTINEL;
        expect_status(st, "cv_get(NULL)", cv_get(NULL, &out), CV_EINVAL);
        expect_status(st, "cv_get(NULL) (exported)", (cv_get)(NULL, &out), CV_EINVAL);
        if (out != SENTINEL)
            fail(st, "cv_get(NULL, &out) wrote *out");
        if (cv_get_or(NULL, P(fallback)) != P(fallback) ||
            (cv_get_or)(NULL, P(fallback)) != P(fallback))
            fail(st, "cv_get_or(NULL, %u) is not the fallback", fallback);
    }
    if (var) {
        expect_status(st, "cv_get(var, NULL)", cv_get(var, NULL), CV_EINVAL);
        expect_status(st, "cv_get(var, NULL) (exported)", (cv_get)(var, NULL), CV_EINVAL);
    }
}

/* Constructors: slot s gets `made` (the model object `id`, allocated by
 * the caller) unless the library returned NULL for lack of memory. */
static void store_made(fuzz_state_t *st, int s, cv_context_t *made, int id, bool injected,
                       const char *call)
{
    if (!made) {
        if (!injected)
            fail(st, "%s returned NULL with no allocation failed", call);
        st->m.nctx--; /* the model object was never born */
        release_slot(st, s);
        return;
    }
    st->lib_ctx[id] = made;
    release_slot(st, s);
    st->cslot[s] = id;
}

static void op_new(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NCTX;
    trace(st, "NEW slot%d = c%d", s, st->m.nctx);
    if (!slot_releasable(st, s) || !model_ctx_room(&st->m))
        return;
    int id = model_ctx_new(&st->m, NULL);
    lib_begin(st);
    cv_context_t *made = cv_context_new();
    store_made(st, s, made, id, lib_end(st), "cv_context_new");
}

static void op_copy_current(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NCTX;
    int top = model_top(&st->m);
    trace(st, "COPY_CUR slot%d = c%d = copy of current c%d", s, st->m.nctx, top);
    if (!slot_releasable(st, s) || !model_ctx_room(&st->m))
        return;
    int id = model_ctx_new(&st->m, &st->m.ctx[top].map);
    lib_begin(st);
    cv_context_t *made = cv_copy_context();
    store_made(st, s, made, id, lib_end(st), "cv_copy_context");
}

static void op_copy(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NCTX;
    unsigned sel = (a / M_NCTX) % 6;
    trace(st, "COPY slot%d = c%d = copy of %s", s, st->m.nctx, ctx_desc(st, sel));
    if (!slot_releasable(st, s) || !model_ctx_room(&st->m))
        return;
    cv_context_t *src;
    int src_id = pick_ctx(st, sel, &src);
    if (src_id < 0) {
        if (cv_context_copy(NULL))
            fail(st, "cv_context_copy(NULL) is not NULL");
        return;
    }
    int id = model_ctx_new(&st->m, &st->m.ctx[src_id].map);
    lib_begin(st);
    cv_context_t *made = cv_context_copy(src);
    store_made(st, s, made, id, lib_end(st), "cv_context_copy");
}

static void op_dup(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NCTX;
    unsigned sel = (a / M_NCTX) % 6;
    trace(st, "DUP slot%d = %s", s, ctx_desc(st, sel));
    cv_context_t *src;
    int src_id = pick_ctx(st, sel, &src);
    if (st->cslot[s] != src_id && !slot_releasable(st, s))
        return;
    if (src_id >= 0) {
        cv_context_retain(src);
        st->m.ctx[src_id].refs++;
    }
    release_slot(st, s);
    st->cslot[s] = src_id;
}

static void op_retain_current(fuzz_state_t *st, uint8_t a)
{
    op_dup(st, (uint8_t)(a % M_NCTX + 5 * M_NCTX));
}

static void op_release(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NCTX;
    trace(st, "RELEASE slot%d (c%d)", s, st->cslot[s]);
    if (slot_releasable(st, s))
        release_slot(st, s);
}

static void op_enter(fuzz_state_t *st, uint8_t a)
{
    unsigned sel = a % 6;
    trace(st, "ENTER %s", ctx_desc(st, sel));
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    cv_status_t want = model_enter_status(&st->m, id);
    lib_begin(st);
    cv_status_t got = cv_context_enter(lib);
    bool injected = lib_end(st);
    if (want == CV_OK && got == CV_ENOMEM && injected)
        return;
    expect_status(st, "cv_context_enter", got, want);
    if (want == CV_OK)
        model_enter(&st->m, id);
}

static void op_exit(fuzz_state_t *st, uint8_t a)
{
    unsigned sel = a % 6;
    trace(st, "EXIT %s", ctx_desc(st, sel));
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    cv_status_t want = model_exit_status(&st->m, id);
    expect_status(st, "cv_context_exit", cv_context_exit(lib), want);
    if (want == CV_OK)
        model_pop_entered(&st->m);
}

struct run_arg {
    fuzz_state_t *st;
    int id;
    int body_ops;
    bool called;
    int outer_floor;
};

static void run_body(void *arg)
{
    struct run_arg *ra = arg;
    fuzz_state_t *st = ra->st;
    lib_end(st); /* a pending failure was for the run's own entering */
    if (ra->called)
        fail(st, "cv_context_run called fn twice");
    ra->called = true;
    if (model_run_status(&st->m, ra->id, false) != CV_OK)
        fail(st, "cv_context_run called fn for c%d, which API.md refuses (%s)", ra->id,
             cv_strerror(model_run_status(&st->m, ra->id, false)));
    ra->outer_floor = model_run_push(&st->m, ra->id);
    st->run_depth++;
    check_current(st);
    run_ops(st, ra->body_ops);
    st->run_depth--;
}

/* cv_context_run(ctx id) over the next body_ops operations (negative: the
 * rest of the input). */
static void do_run(fuzz_state_t *st, cv_context_t *lib, int id, int body_ops, bool null_fn)
{
    cv_status_t want = model_run_status(&st->m, id, null_fn);
    struct run_arg ra = {st, id, body_ops, false, -1};
    lib_begin(st);
    cv_status_t got = cv_context_run(lib, null_fn ? NULL : run_body, &ra);
    bool injected = lib_end(st);
    st->op = body_ops < 0 ? "root run" : "RUN";
    if (want != CV_OK || !ra.called) {
        if (want == CV_OK && got == CV_ENOMEM && injected)
            return;
        expect_status(st, "cv_context_run (fn not called)", got, want);
        return;
    }
    /* The library exits what fn left entered, then the run's context. */
    expect_status(st, "cv_context_run", got, model_run_pop(&st->m, ra.outer_floor));
}

static void op_run(fuzz_state_t *st, uint8_t a, uint8_t b)
{
    unsigned sel = a % 6;
    int body_ops = b % 16;
    bool null_fn = b / 16 == 15;
    if (st->run_depth >= MAX_RUN_DEPTH)
        body_ops = 0;
    trace(st, "RUN %s%s over %d ops", ctx_desc(st, sel), null_fn ? " fn NULL" : "", body_ops);
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    do_run(st, lib, id, body_ops, null_fn);
}

static void op_map(fuzz_state_t *st, uint8_t a, uint8_t b)
{
    unsigned sel = a % 6, vsel = b % 7;
    trace(st, "MAP %s [%s]", ctx_desc(st, sel), var_desc(st, vsel));
    cv_context_t *lib;
    cv_var_t *var;
    int id = pick_ctx(st, sel, &lib);
    int var_id = pick_var(st, vsel, &var);
    check_mapping(st, lib, id, var_id, var);
}

static void op_len(fuzz_state_t *st, uint8_t a)
{
    unsigned sel = a % 6;
    trace(st, "LEN %s", ctx_desc(st, sel));
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    check_len(st, lib, id);
}

static void op_iter(fuzz_state_t *st, uint8_t a)
{
    unsigned sel = a % 6;
    trace(st, "ITER %s", ctx_desc(st, sel));
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    char what[48];
    snprintf(what, sizeof(what), "iteration of c%d", id);
    check_iteration(st, lib, id, what);
}

static void op_equal(fuzz_state_t *st, uint8_t a)
{
    unsigned sx = a % 6, sy = (a / 6) % 6;
    trace(st, "EQUAL %s %s", ctx_desc(st, sx), ctx_desc(st, sy));
    cv_context_t *x, *y;
    int ix = pick_ctx(st, sx, &x), iy = pick_ctx(st, sy, &y);
    bool want =
        ix >= 0 && iy >= 0 && (ix == iy || mmap_equal(&st->m.ctx[ix].map, &st->m.ctx[iy].map));
    if (cv_context_equal(x, y) != want || cv_context_equal(y, x) != want)
        fail(st, "cv_context_equal(c%d, c%d) != %d", ix, iy, want);
}

static void iter_finish(fuzz_state_t *st, int i)
{
    if (!st->iter[i].active)
        return;
    cv_context_iter_fini(&st->iter[i].it);
    st->iter[i].active = false;
}

static void op_it_start(fuzz_state_t *st, uint8_t a)
{
    int i = a % M_NITER;
    unsigned sel = (a / M_NITER) % 6;
    trace(st, "IT_START it%d on %s", i, ctx_desc(st, sel));
    cv_context_t *lib;
    int id = pick_ctx(st, sel, &lib);
    iter_finish(st, i);
    iter_slot_t *it = &st->iter[i];
    memset(it, 0, sizeof(*it));
    if (id >= 0)
        it->snap = st->m.ctx[id].map;
    cv_context_iter_init(&it->it, lib);
    it->active = true;
}

static void op_it_step(fuzz_state_t *st, uint8_t a)
{
    int i = a % M_NITER, n = 1 + (a / M_NITER) % 4;
    trace(st, "IT_STEP it%d x%d", i, n);
    iter_slot_t *it = &st->iter[i];
    if (!it->active)
        return;
    char what[32];
    snprintf(what, sizeof(what), "iterator %d", i);
    for (int k = 0; k < n; k++) {
        if (it->ended) {
            if (cv_context_iter_next(&it->it, NULL, NULL))
                fail(st, "iterator %d: next after the end returned true", i);
        } else if (!iter_step(st, &it->it, &it->snap, it->seen, &it->nseen, what)) {
            it->ended = true;
        }
    }
}

static void op_it_end(fuzz_state_t *st, uint8_t a)
{
    int i = a % M_NITER;
    trace(st, "IT_END it%d", i);
    iter_finish(st, i);
}

/* A variable in slot s; hash_mode 0: the library's hash, k: forced_hash[k-1]. */
static void make_var(fuzz_state_t *st, int s, bool has_default, uint8_t default_value, bool hooks,
                     unsigned hash_mode)
{
    if (st->m.nvar >= M_MAXV)
        return;
    release_var_slot(st, s);
    int id = st->m.nvar;
    char name[16];
    snprintf(name, sizeof(name), "v%d", id);
    cv_var_opts_t opts = {
        .default_value = P(default_value),
        .has_default = has_default,
        .retain = hooks ? hook_retain : NULL,
        .release = hooks ? hook_release : NULL,
    };
    lib_begin(st);
    cv_var_t *var = cv_var_new(name, has_default || hooks ? &opts : NULL);
    bool injected = lib_end(st);
    if (!var) {
        if (!injected)
            fail(st, "cv_var_new returned NULL with no allocation failed");
        return;
    }
    if (!cv_var_name(var) || strcmp(cv_var_name(var), name) != 0 || cv_var_name(var) == name)
        fail(st, "cv_var_name(v%d) is not a copy of \"%s\"", id, name);
    if (hash_mode)
        cv_testing_set_var_hash(var, forced_hash[hash_mode - 1]);
    st->m.nvar++;
    st->m.var[id] = (mvar_t){
        .has_default = has_default,
        .default_value = has_default ? default_value : 0,
        .hooks = hooks,
        .hash_mode = (uint8_t)hash_mode,
    };
    st->lib_var[id] = var;
    st->vslot[s] = id;
}

static void op_var_new(fuzz_state_t *st, uint8_t a, uint8_t b)
{
    int s = a % M_NVAR;
    uint8_t def = (a / M_NVAR) % M_NVALUES;
    bool has_default = b & 1, hooks = b & 2;
    unsigned hash = (b >> 2) & 7;
    unsigned mode = hash < 2 ? 0 : hash - 1;
    trace(st, "VAR_NEW vslot%d = v%d default %d hooks %d hash mode %u", s, st->m.nvar,
          has_default ? def : -1, hooks, mode);
    make_var(st, s, has_default, def, hooks, mode);
}

static void op_var_release(fuzz_state_t *st, uint8_t a)
{
    int s = a % M_NVAR;
    trace(st, "VAR_REL %s", var_desc(st, (unsigned)s));
    release_var_slot(st, s);
}

static void op_fault(fuzz_state_t *st, uint8_t a)
{
    st->fault_pending = a % 8 + 1;
    trace(st, "FAULT allocation %u of the next allocating operation", st->fault_pending);
}

static void do_op(fuzz_state_t *st, unsigned op)
{
    st->op = op_names[op];
    switch (op) {
    case OP_SET: {
        uint8_t a = u8(st);
        op_set(st, a, u8(st));
        break;
    }
    case OP_RESET:
        op_reset(st, u8(st));
        break;
    case OP_DISCARD:
        op_discard(st, u8(st));
        break;
    case OP_TOKEN: {
        uint8_t a = u8(st);
        int t = a % 5 < M_NTOK ? a % 5 : -1;
        trace(st, "TOKEN %d", t);
        check_token(st, t);
        break;
    }
    case OP_GET: {
        uint8_t a = u8(st);
        op_get(st, a, u8(st));
        break;
    }
    case OP_NEW:
        op_new(st, u8(st));
        break;
    case OP_COPY_CUR:
        op_copy_current(st, u8(st));
        break;
    case OP_COPY:
        op_copy(st, u8(st));
        break;
    case OP_DUP:
        op_dup(st, u8(st));
        break;
    case OP_RET_CUR:
        op_retain_current(st, u8(st));
        break;
    case OP_RELEASE:
        op_release(st, u8(st));
        break;
    case OP_ENTER:
        op_enter(st, u8(st));
        break;
    case OP_EXIT:
        op_exit(st, u8(st));
        break;
    case OP_RUN: {
        uint8_t a = u8(st);
        op_run(st, a, u8(st));
        break;
    }
    case OP_MAP: {
        uint8_t a = u8(st);
        op_map(st, a, u8(st));
        break;
    }
    case OP_LEN:
        op_len(st, u8(st));
        break;
    case OP_ITER:
        op_iter(st, u8(st));
        break;
    case OP_EQUAL:
        op_equal(st, u8(st));
        break;
    case OP_IT_START:
        op_it_start(st, u8(st));
        break;
    case OP_IT_STEP:
        op_it_step(st, u8(st));
        break;
    case OP_IT_END:
        op_it_end(st, u8(st));
        break;
    case OP_VAR_NEW: {
        uint8_t a = u8(st);
        op_var_new(st, a, u8(st));
        break;
    }
    case OP_VAR_REL:
        op_var_release(st, u8(st));
        break;
    case OP_FAULT:
        op_fault(st, u8(st));
        break;
    case OP_CHECK:
        trace(st, "CHECK");
        check_all(st);
        break;
    }
}

static void run_ops(fuzz_state_t *st, int max_ops)
{
    for (int n = 0; max_ops < 0 || n < max_ops; n++) {
        if (st->pos >= st->size)
            return;
        unsigned op = opcode_of[st->data[st->pos++] & 31];
        st->step++;
        do_op(st, op);
        st->op = op_names[op];
        check_current(st);
    }
}

/* ------------------------------------------------------------- driver */

static void settle_and_check(void)
{
    cv_reclaim_barrier();
    for (int v = 0; v < M_NVALUES; v++) {
        long refs = atomic_load(&hook_refs[v]);
        if (refs != 0) {
            fprintf(stderr,
                    "ctxvars fuzz: value %d still has %ld hook references after "
                    "everything was released and cv_reclaim_barrier()\n",
                    v, refs);
            abort();
        }
    }
    long blocks = atomic_load(&live_blocks);
    if (tracing)
        fprintf(stderr, "[settle] the library holds %ld blocks\n", blocks);
    if (blocks > MAX_IDLE_BLOCKS) {
        fprintf(stderr,
                "ctxvars fuzz: the library still holds %ld blocks after everything was "
                "released and cv_reclaim_barrier(): a leak in the last %d inputs (rerun "
                "them with -detect_leaks=1 to find which)\n",
                blocks, SETTLE_EVERY);
        abort();
    }
}

void cv_fuzz_settle_and_check(void)
{
    init_once();
    settle_and_check();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned long inputs;
    init_once();
    fuzz_state_t *st = &state;
    memset(st, 0, sizeof(*st));
    model_init(&st->m);
    st->data = data;
    st->size = size;
    st->op = "setup";
    for (int s = 0; s < M_NCTX; s++)
        st->cslot[s] = -1;
    for (int s = 0; s < M_NVAR; s++)
        st->vslot[s] = -1;
    trace(st, "--- input of %zu bytes", size);

    st->root = model_ctx_new(&st->m, NULL);
    st->lib_ctx[st->root] = cv_context_new();
    if (!st->lib_ctx[st->root])
        fail(st, "cv_context_new() failed");
    make_var(st, 0, false, 0, false, 0);
    make_var(st, 1, true, 7, false, 0);
    make_var(st, 2, false, 0, false, 1);
    make_var(st, 3, true, 0, false, 1);
    make_var(st, 4, false, 0, true, 2);
    make_var(st, 5, true, 3, true, 0);

    /* The whole input runs in the root context, like a run body: the
     * thread's base context is never written. */
    do_run(st, st->lib_ctx[st->root], st->root, -1, false);
    st->op = "teardown";
    if (st->m.depth != 0)
        fail(st, "model stack not empty after the root run");

    /* Everything the input left, read from outside (foreign readers). */
    check_all(st);
    check_context(st, st->root, "iteration of the root context");

    for (int i = 0; i < M_NITER; i++)
        iter_finish(st, i);
    for (int t = 0; t < M_NTOK; t++) {
        cv_token_discard(&st->tok[t]);
        st->mtok[t].live = false;
        check_token(st, t);
    }
    for (int s = 0; s < M_NCTX; s++)
        release_slot(st, s);
    cv_context_release(st->lib_ctx[st->root]);
    model_ctx_unref(&st->m, st->root);
    for (int s = 0; s < M_NVAR; s++)
        release_var_slot(st, s);
    for (int c = 0; c < st->m.nctx; c++)
        if (st->m.ctx[c].alive || st->m.ctx[c].refs != 0)
            fail(st, "model: c%d still has %d references after teardown", c, st->m.ctx[c].refs);

    if (inputs == 0) {
        /* The library has allocated: the allocator can no longer change. */
        cv_allocator_t allocator = {fuzz_alloc, fuzz_free, &allocator_data};
        expect_status(st, "cv_set_allocator after use", cv_set_allocator(&allocator), CV_EBUSY);
    }
    if (++inputs % SETTLE_EVERY == 0)
        settle_and_check();
    return 0;
}
