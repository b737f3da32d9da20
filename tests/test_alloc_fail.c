/*
 * Allocation-failure injection.
 *
 * A counting allocator, installed before the library's first allocation,
 * can fail the Nth allocation of a run (FAIL_NTH) or every allocation from
 * the Nth on (FAIL_FROM_NTH). A scripted scenario that reaches every
 * allocating entry point is run once for every N = 1, 2, ... until a run
 * completes without an injected failure. The scenario keeps a model of
 * every context and token it made; after each call it compares the library
 * against the model: a call that succeeded must have made exactly its
 * change, a call that failed must have returned CV_ENOMEM (or NULL / ENOMEM
 * where API.md says so), must have been caused by an injected failure, must
 * have kept every context and token as it was, and must have given back
 * every byte it took on its own thread. After the runs (checked every
 * SETTLE_EVERY runs, since waiting for deferred frees takes milliseconds;
 * runs are deterministic, so a leak is then pinned to its N by running
 * them again one by one) the allocator's live bytes and blocks are back at
 * the baseline and the values' retain/release hooks balance: nothing
 * leaked.
 *
 * In FAIL_FROM_NTH mode every call after the Nth allocation meets failures
 * to the end of the run, cleanup included. In FAIL_NTH mode the run goes on
 * after the failure through the next phase of the scenario and then cleans
 * up; a call that failed is tried again and must then succeed.
 *
 * The scenario runs on its own thread so that the thread's base context,
 * lookup cache and context stack, which live as long as the thread, are
 * freed at its exit and can be counted as well. The main thread never gets
 * a context.
 *
 * Reproducing one run: CV_ALLOC_FAIL_AT=N [CV_ALLOC_FAIL_MODE=nth|from]
 * runs only that N in that mode (both modes if unset).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctxvars.h>
#include <testing.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ allocator */

enum fail_mode { FAIL_NONE, FAIL_NTH, FAIL_FROM_NTH };

#define HEADER_MAGIC 0x63766865616465ull /* "cvheade" */
#define FREED_MAGIC 0x66726565646564ull  /* "freeded" */

/* Each block carries the size that was asked for, so a free with another
 * size (a contract break that a real sized allocator would turn into heap
 * corruption) is caught. 16 bytes keep malloc's alignment. */
struct block_header {
    size_t size;
    uint64_t magic;
};

static struct {
    atomic_long calls;    /* allocation requests since the last reset */
    atomic_long injected; /* requests failed on purpose */
    atomic_long live_bytes, live_blocks;
    atomic_long bad_frees; /* wrong size, unknown or double free */
    atomic_int mode;
    atomic_long fail_at;
} heap;

/* What the calling thread allocated minus what it freed: a failed call must
 * leave this unchanged, whatever the RCU thread frees meanwhile. */
static __thread long thread_net_bytes, thread_net_blocks;

static void *counting_alloc(size_t size, void *data)
{
    (void)data;
    long n = atomic_fetch_add(&heap.calls, 1) + 1;
    int mode = atomic_load(&heap.mode);
    long at = atomic_load(&heap.fail_at);
    if ((mode == FAIL_NTH && n == at) || (mode == FAIL_FROM_NTH && n >= at)) {
        atomic_fetch_add(&heap.injected, 1);
        return NULL;
    }
    struct block_header *header = malloc(sizeof(*header) + size);
    if (!header)
        return NULL;
    header->size = size;
    header->magic = HEADER_MAGIC;
    atomic_fetch_add(&heap.live_bytes, (long)size);
    atomic_fetch_add(&heap.live_blocks, 1);
    thread_net_bytes += (long)size;
    thread_net_blocks++;
    return header + 1;
}

static void counting_free(void *ptr, size_t size, void *data)
{
    (void)data;
    if (!ptr)
        return;
    struct block_header *header = (struct block_header *)ptr - 1;
    if (header->magic != HEADER_MAGIC || header->size != size) {
        atomic_fetch_add(&heap.bad_frees, 1);
        if (header->magic != HEADER_MAGIC)
            return; /* not ours or freed twice: leave it alone */
    }
    header->magic = FREED_MAGIC;
    atomic_fetch_sub(&heap.live_bytes, (long)header->size);
    atomic_fetch_sub(&heap.live_blocks, 1);
    thread_net_bytes -= (long)header->size;
    thread_net_blocks--;
    free(header);
}

static void arm(int mode, long at)
{
    atomic_store(&heap.mode, FAIL_NONE);
    atomic_store(&heap.calls, 0);
    atomic_store(&heap.injected, 0);
    atomic_store(&heap.fail_at, at);
    atomic_store(&heap.mode, mode);
}

static void disarm(void)
{
    atomic_store(&heap.mode, FAIL_NONE);
}

/* ---------------------------------------------------------------- values */

#define NPLAIN 40
#define NCOLL 6
#define NVARS (NPLAIN + NCOLL)
#define C(k) (NPLAIN + (k)) /* the kth collision variable */
/* Runs are checked for leaks in groups of this many: a barrier costs ~10 ms. */
#define SETTLE_EVERY 16
/* More than the variables of SETTLE_EVERY + 1 runs. */
#define PREGROWN_SLOTS 1024
_Static_assert(PREGROWN_SLOTS >= (SETTLE_EVERY + 1) * NVARS, "slot table grown too little");
#define GENS 8
#define POOL (NVARS * GENS)

/* Values are addresses in this pool; the hooks count references per value,
 * so a value released more often than retained, or still held at the end,
 * is named. */
struct pooled {
    atomic_long refs;
};
static struct pooled pool[POOL];
static atomic_long null_refs, retains, releases, bad_releases;
static int defaults[NVARS];

/* Which variables have hooks and defaults: a mix of each. */
static bool has_hooks(int i)
{
    return i % 7 != 3;
}

static bool has_default(int i)
{
    return i % 5 == 1;
}

static void *value(int var, int gen)
{
    return &pool[(var * GENS + gen) % POOL];
}

static void hook_retain(void *v)
{
    atomic_fetch_add(&retains, 1);
    if (!v)
        atomic_fetch_add(&null_refs, 1);
    else
        atomic_fetch_add(&((struct pooled *)v)->refs, 1);
}

static void hook_release(void *v)
{
    atomic_fetch_add(&releases, 1);
    atomic_long *refs = v ? &((struct pooled *)v)->refs : &null_refs;
    if (atomic_fetch_sub(refs, 1) <= 0)
        atomic_fetch_add(&bad_releases, 1);
}

static bool hooks_balanced(void)
{
    if (atomic_load(&retains) != atomic_load(&releases) || atomic_load(&null_refs) != 0)
        return false;
    for (int i = 0; i < POOL; i++)
        if (atomic_load(&pool[i].refs) != 0)
            return false;
    return true;
}

/* --------------------------------------------------------------- the model */

#define MAX_CTXS 48
#define MAX_TOKENS 128
#define MAX_DEPTH 32
#define MAX_MESSAGES 12

struct mctx {
    cv_context_t *ctx; /* NULL: never made (allocation failed) */
    const char *name;
    bool has[NVARS];
    void *val[NVARS];
};

struct mtok {
    cv_token_t tok;
    int var;
    struct mctx *ctx;
    bool live, had_old;
    void *old;
};

struct run {
    int mode;
    long fail_at;
    cv_var_t *var[NVARS]; /* NULL: creation failed */
    struct mctx ctxs[MAX_CTXS];
    int nctxs;
    struct mtok toks[MAX_TOKENS];
    int ntoks;
    struct mtok *first_tok[NVARS]; /* the token of each variable's first set */
    struct mtok *overwrite5;
    struct mctx *snap1, *new1, *nested_target;
    struct mctx *stack[MAX_DEPTH]; /* what the thread has entered; [0] is the base */
    int depth;
    bool base_known; /* the base context exists, so no call may create it */
    int failed_calls;
    atomic_int children_started;

    pthread_mutex_t lock; /* failures may be recorded by helper threads */
    int failures;
};

static const char *mode_name(int mode)
{
    return mode == FAIL_NTH ? "nth" : mode == FAIL_FROM_NTH ? "from" : "none";
}

static void failure(struct run *r, int line, const char *fmt, ...)
{
    char text[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* Printed at once: a discrepancy often precedes a crash, which would
     * take the recorded messages with it. */
    pthread_mutex_lock(&r->lock);
    if (r->failures < MAX_MESSAGES)
        fprintf(stderr, "  mode=%s N=%ld line %d: %s\n", mode_name(r->mode), r->fail_at, line,
                text);
    r->failures++;
    pthread_mutex_unlock(&r->lock);
}

#define CHECK(r, cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            failure((r), __LINE__, __VA_ARGS__);                                                   \
    } while (0)

static struct mctx *current(struct run *r)
{
    return r->stack[r->depth - 1];
}

static struct mctx *new_model(struct run *r, const char *name, const struct mctx *like)
{
    if (r->nctxs == MAX_CTXS) {
        fprintf(stderr, "the scenario needs more than %d contexts\n", MAX_CTXS);
        abort();
    }
    struct mctx *m = &r->ctxs[r->nctxs++];
    *m = like ? *like : (struct mctx){0};
    m->ctx = NULL;
    m->name = name;
    return m;
}

static int model_len(const struct mctx *m)
{
    int n = 0;
    for (int i = 0; i < NVARS; i++)
        n += m->has[i];
    return n;
}

static bool model_equal(const struct mctx *a, const struct mctx *b)
{
    for (int i = 0; i < NVARS; i++)
        if (a->has[i] != b->has[i] || (a->has[i] && a->val[i] != b->val[i]))
            return false;
    return true;
}

static int var_index(struct run *r, const cv_var_t *var)
{
    for (int i = 0; i < NVARS; i++)
        if (r->var[i] && r->var[i] == var)
            return i;
    return -1;
}

/* The mapping API on `ctx` against the model. Reads allocate nothing: they
 * cannot report a failure, so they must not be able to meet one. */
static void check_mapping(struct run *r, cv_context_t *ctx, const struct mctx *m, const char *what)
{
    if (!ctx)
        return;
    long calls = atomic_load(&heap.calls);
    size_t len = cv_context_len(ctx);
    CHECK(r, len == (size_t)model_len(m), "%s/%s: len %zu, model %d", what, m->name, len,
          model_len(m));
    for (int i = 0; i < NVARS; i++) {
        if (!r->var[i])
            continue;
        void *got = NULL;
        cv_status_t st = cv_context_get(ctx, r->var[i], &got);
        if (m->has[i])
            CHECK(r, st == CV_OK && got == m->val[i], "%s/%s: var %d: status %d, value %p, want %p",
                  what, m->name, i, st, got, m->val[i]);
        else
            CHECK(r, st == CV_ENOVALUE, "%s/%s: var %d should be absent (%d)", what, m->name, i,
                  st);
        CHECK(r, cv_context_contains(ctx, r->var[i]) == m->has[i], "%s/%s: contains var %d", what,
              m->name, i);
    }
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    bool seen[NVARS] = {0};
    size_t n = 0;
    cv_var_t *var;
    void *val;
    while (cv_context_iter_next(&it, &var, &val)) {
        int i = var_index(r, var);
        n++;
        CHECK(r, i >= 0 && !seen[i] && m->has[i] && m->val[i] == val,
              "%s/%s: iteration gave var %d (%p) unexpectedly", what, m->name, i, val);
        if (i >= 0)
            seen[i] = true;
    }
    cv_context_iter_fini(&it);
    CHECK(r, n == len, "%s/%s: iterated %zu, len %zu", what, m->name, n, len);
    CHECK(r, atomic_load(&heap.calls) == calls, "%s/%s: a read allocated %ld times", what, m->name,
          atomic_load(&heap.calls) - calls);
}

/* cv_get and cv_get_or on the thread's current context. These may allocate
 * (the lookup cache grows), but a failed allocation must not change what
 * they return. */
static void check_gets(struct run *r, const char *what)
{
    const struct mctx *m = current(r);
    for (int i = 0; i < NVARS; i++) {
        if (!r->var[i])
            continue;
        void *got = NULL;
        cv_status_t st = cv_get(r->var[i], &got);
        if (m->has[i])
            CHECK(r, st == CV_OK && got == m->val[i], "%s: cv_get var %d: %d %p want %p", what, i,
                  st, got, m->val[i]);
        else if (has_default(i))
            CHECK(r, st == CV_OK && got == &defaults[i], "%s: cv_get var %d: default expected",
                  what, i);
        else
            CHECK(r, st == CV_ENOVALUE, "%s: cv_get var %d: %d, want ENOVALUE", what, i, st);
        void *fallback = &defaults[0];
        got = cv_get_or(r->var[i], fallback);
        CHECK(r, got == (m->has[i] ? m->val[i] : fallback), "%s: cv_get_or var %d", what, i);
    }
}

static void check_current(struct run *r, const char *what)
{
    struct mctx *m = current(r);
    if (m->ctx) {
        /* With a known base, no context is created here. */
        CHECK(r, cv_context_current() == m->ctx, "%s: current is not %s", what, m->name);
        check_mapping(r, m->ctx, m, what);
    }
    check_gets(r, what);
}

static void check_tokens(struct run *r, const char *what)
{
    for (int t = 0; t < r->ntoks; t++) {
        struct mtok *k = &r->toks[t];
        CHECK(r, cv_token_used(&k->tok) == !k->live, "%s: token %d used=%d, model live=%d", what, t,
              cv_token_used(&k->tok), k->live);
        void *old = &defaults[0];
        bool has_old = cv_token_old_value(&k->tok, &old);
        if (k->live) {
            CHECK(r, cv_token_var(&k->tok) == r->var[k->var], "%s: token %d var", what, t);
            CHECK(r, has_old == k->had_old && (!has_old || old == k->old),
                  "%s: token %d old value changed", what, t);
        }
    }
}

/* Everything the run knows about: after a failed call nothing may differ. */
static void check_all(struct run *r, const char *what)
{
    for (int i = 0; i < r->nctxs; i++)
        check_mapping(r, r->ctxs[i].ctx, &r->ctxs[i], what);
    check_tokens(r, what);
    check_current(r, what);
}

/* State taken before a call that may fail. */
struct before {
    long injected, net_bytes, net_blocks;
};

static struct before before(void)
{
    return (struct before){atomic_load(&heap.injected), thread_net_bytes, thread_net_blocks};
}

/* A call failed for lack of memory: it must have met an injected failure,
 * kept what it took (`may_create_base`: except the thread's base context,
 * which a call may create on first need before it fails), and changed
 * nothing. */
static void failed_cleanly(struct run *r, struct before b, bool may_create_base, const char *what)
{
    CHECK(r, atomic_load(&heap.injected) > b.injected, "%s: failed without an injected failure",
          what);
    if (!may_create_base)
        CHECK(r, thread_net_bytes == b.net_bytes && thread_net_blocks == b.net_blocks,
              "%s: failed call kept %ld bytes in %ld blocks", what, thread_net_bytes - b.net_bytes,
              thread_net_blocks - b.net_blocks);
    /* Every context and token after the run's first failure; after later
     * ones (FAIL_FROM_NTH fails every call from then on, and checking all
     * each time would dominate the run) the current context and the
     * tokens, and all of them again before cleanup. */
    if (r->failed_calls++ == 0) {
        check_all(r, what);
    } else {
        check_tokens(r, what);
        check_current(r, what);
    }
}

/* Whether a call that failed with CV_ENOMEM is to be tried again: in
 * FAIL_NTH mode the one injected failure is spent, so the retry must
 * succeed; in FAIL_FROM_NTH mode every retry would fail too. */
static bool retry(struct run *r, int attempt)
{
    return r->mode == FAIL_NTH && attempt == 0;
}

/* Learns the base once a call has created it. */
static void learn_base(struct run *r)
{
    if (r->base_known)
        return;
    r->base_known = true;
    r->ctxs[0].ctx = cv_context_current();
    CHECK(r, r->ctxs[0].ctx != NULL, "base context missing after a successful set");
}

/* ------------------------------------------------------------ operations */

static void op_var_new(struct run *r, int i)
{
    char name[16];
    snprintf(name, sizeof(name), "v%02d", i);
    cv_var_opts_t opts = {0};
    if (has_hooks(i)) {
        opts.retain = hook_retain;
        opts.release = hook_release;
    }
    if (has_default(i)) {
        opts.default_value = &defaults[i];
        opts.has_default = true;
    }
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        r->var[i] = cv_var_new(name, &opts);
        if (r->var[i]) {
            CHECK(r, strcmp(cv_var_name(r->var[i]), name) == 0, "var %d: name", i);
            return;
        }
        failed_cleanly(r, b, false, "cv_var_new");
        if (!retry(r, attempt))
            return;
    }
}

/* Sets var i to v in the current context, with a token if `with_token`. */
static struct mtok *op_set(struct run *r, int i, void *v, bool with_token)
{
    struct mctx *m = current(r);
    if (!r->var[i])
        return NULL;
    if (with_token && r->ntoks == MAX_TOKENS) {
        failure(r, __LINE__, "scenario needs more than %d tokens", MAX_TOKENS);
        return NULL;
    }
    struct mtok *k = with_token ? &r->toks[r->ntoks++] : NULL;
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        if (k)
            memset(&k->tok, 0xa5, sizeof(k->tok)); /* garbage in: the call must fill it */
        cv_status_t st = cv_set(r->var[i], v, k ? &k->tok : NULL);
        if (st == CV_OK) {
            learn_base(r);
            if (k) {
                *k = (struct mtok){k->tok, i, m, true, m->has[i], m->has[i] ? m->val[i] : NULL};
            }
            m->has[i] = true;
            m->val[i] = v;
            check_current(r, "after cv_set");
            if (k)
                check_tokens(r, "after cv_set");
            return k;
        }
        CHECK(r, st == CV_ENOMEM, "cv_set var %d: status %d", i, st);
        if (k) {
            k->live = false;
            k->var = i;
            CHECK(r, cv_token_used(&k->tok) && !cv_token_var(&k->tok),
                  "cv_set var %d failed but filled the token", i);
        }
        failed_cleanly(r, b, !r->base_known, "cv_set");
        if (!retry(r, attempt))
            return k;
    }
}

static void op_reset(struct run *r, struct mtok *k)
{
    if (!k || !r->var[k->var])
        return;
    struct mctx *m = current(r);
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        cv_status_t st = cv_reset(r->var[k->var], &k->tok);
        if (!k->live) {
            CHECK(r, st == CV_ETOKEN_USED, "reset of a used token: %d", st);
            check_all(r, "after reset of a used token");
            return;
        }
        if (k->ctx != m) {
            CHECK(r, st == CV_ETOKEN_CONTEXT, "reset in another context: %d", st);
            check_all(r, "after reset in another context");
            return;
        }
        if (st == CV_OK) {
            m->has[k->var] = k->had_old;
            m->val[k->var] = k->had_old ? k->old : NULL;
            k->live = false;
            check_current(r, "after cv_reset");
            check_tokens(r, "after cv_reset");
            return;
        }
        CHECK(r, st == CV_ENOMEM, "cv_reset var %d: status %d", k->var, st);
        failed_cleanly(r, b, false, "cv_reset");
        if (!retry(r, attempt))
            return;
    }
}

/* Drops a token whose reset may have failed for good. */
static void op_discard(struct run *r, struct mtok *k)
{
    if (!k)
        return;
    long calls = atomic_load(&heap.calls);
    cv_token_discard(&k->tok);
    k->live = false;
    CHECK(r, cv_token_used(&k->tok), "discarded token not used");
    CHECK(r, atomic_load(&heap.calls) == calls, "cv_token_discard allocated");
}

enum make { MAKE_NEW, MAKE_COPY_CURRENT, MAKE_COPY_OF, MAKE_CAPTURE, MAKE_CAPTURE_SUPPRESSED };

static cv_context_t *capture_suppressed(void)
{
    cv_flow_suppress();
    cv_context_t *ctx = cv_capture_context();
    cv_flow_restore();
    return ctx;
}

static struct mctx *op_make(struct run *r, enum make how, struct mctx *src, const char *name)
{
    const struct mctx *like = how == MAKE_NEW || how == MAKE_CAPTURE_SUPPRESSED ? NULL
                              : how == MAKE_COPY_CURRENT || how == MAKE_CAPTURE ? current(r)
                                                                                : src;
    struct mctx *m = new_model(r, name, like);
    if (how == MAKE_COPY_OF && !src->ctx)
        return m;
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        m->ctx = how == MAKE_NEW                  ? cv_context_new()
                 : how == MAKE_COPY_CURRENT       ? cv_copy_context()
                 : how == MAKE_CAPTURE            ? cv_capture_context()
                 : how == MAKE_CAPTURE_SUPPRESSED ? capture_suppressed()
                                                  : cv_context_copy(src->ctx);
        if (m->ctx) {
            check_mapping(r, m->ctx, m, "new context");
            if (like && like->ctx)
                CHECK(r, cv_context_equal(m->ctx, like->ctx), "%s: copy not equal", name);
            return m;
        }
        failed_cleanly(r, b, false, name);
        if (!retry(r, attempt))
            return m;
    }
}

static void op_release(struct run *r, struct mctx *m)
{
    long calls = atomic_load(&heap.calls);
    cv_context_release(m->ctx);
    m->ctx = NULL;
    CHECK(r, atomic_load(&heap.calls) == calls, "cv_context_release allocated");
}

static void op_enter(struct run *r, struct mctx *m)
{
    if (!m->ctx)
        return;
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        cv_status_t st = cv_context_enter(m->ctx);
        if (st == CV_OK) {
            r->stack[r->depth++] = m;
            check_current(r, "after enter");
            return;
        }
        CHECK(r, st == CV_ENOMEM, "cv_context_enter %s: status %d", m->name, st);
        failed_cleanly(r, b, !r->base_known, "cv_context_enter");
        if (!retry(r, attempt))
            return;
    }
}

static void op_exit(struct run *r, struct mctx *m)
{
    if (!m->ctx)
        return;
    long calls = atomic_load(&heap.calls);
    cv_status_t st = cv_context_exit(m->ctx);
    if (r->depth > 1 && current(r) == m) {
        CHECK(r, st == CV_OK, "cv_context_exit %s: %d", m->name, st);
        if (st == CV_OK)
            r->depth--;
    } else {
        /* Its enter failed for good: it must not have been left entered. */
        CHECK(r, st == CV_ENOTCURRENT, "exit of %s, not entered: %d", m->name, st);
    }
    CHECK(r, atomic_load(&heap.calls) == calls, "cv_context_exit allocated");
    check_current(r, "after exit");
}

struct run_call {
    struct run *r;
    void (*body)(struct run *r);
    bool called;
};

static void run_trampoline(void *arg)
{
    struct run_call *call = arg;
    call->called = true;
    check_current(call->r, "inside run");
    call->body(call->r);
}

static void no_body(struct run *r)
{
    (void)r;
}

/* A task captured here and run here: a failed capture leaves an empty task,
 * a failed run gives the task back, and a task runs once. */
static void op_task(struct run *r)
{
    struct mctx *m = new_model(r, "task", current(r));
    struct run_call call = {r, no_body, false};
    cv_task_t task;
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        cv_status_t st = cv_task_init(&task, run_trampoline, &call);
        if (st == CV_OK)
            break;
        CHECK(r, st == CV_ENOMEM, "cv_task_init: status %d", st);
        CHECK(r, cv_task_run(&task) == CV_EINVAL, "a task that failed to capture ran");
        failed_cleanly(r, b, !r->base_known, "cv_task_init");
        if (!retry(r, attempt))
            return;
    }
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        r->stack[r->depth++] = m;
        cv_status_t st = cv_task_run(&task);
        r->depth--;
        if (st == CV_OK) {
            CHECK(r, call.called, "cv_task_run returned OK without calling fn");
            CHECK(r, cv_task_run(&task) == CV_EINVAL, "a task ran twice");
            return;
        }
        CHECK(r, st == CV_ENOMEM, "cv_task_run: status %d", st);
        CHECK(r, !call.called, "cv_task_run failed after calling fn");
        failed_cleanly(r, b, false, "cv_task_run");
        if (!retry(r, attempt)) {
            cv_task_discard(&task);
            return;
        }
    }
}

static void op_run(struct run *r, struct mctx *m, void (*body)(struct run *r))
{
    if (!m->ctx)
        return;
    struct mctx *caller = current(r);
    for (int attempt = 0;; attempt++) {
        struct run_call call = {r, body, false};
        struct before b = before();
        r->stack[r->depth++] = m;
        cv_status_t st = cv_context_run(m->ctx, run_trampoline, &call);
        r->depth--;
        if (st == CV_OK) {
            CHECK(r, call.called, "run %s returned OK without calling fn", m->name);
            if (caller->ctx)
                CHECK(r, cv_context_current() == caller->ctx, "run %s: caller's context lost",
                      m->name);
            check_current(r, "after run");
            check_mapping(r, m->ctx, m, "after run");
            return;
        }
        CHECK(r, st == CV_ENOMEM, "cv_context_run %s: status %d", m->name, st);
        CHECK(r, !call.called, "cv_context_run %s failed after calling fn", m->name);
        failed_cleanly(r, b, !r->base_known, "cv_context_run");
        if (!retry(r, attempt))
            return;
    }
}

/* ------------------------------------------------------- helper threads */

/* A thread that reads (and copies) a context entered by the scenario
 * thread: the first such reader makes the owner copy paths and retire
 * replaced nodes through RCU from then on. */
struct foreign {
    struct run *r;
    struct mctx *src, *copy;
};

static void *foreign_reader(void *arg)
{
    struct foreign *f = arg;
    struct run *r = f->r;
    check_mapping(r, f->src->ctx, f->src, "foreign read");
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        f->copy->ctx = cv_context_copy(f->src->ctx);
        if (f->copy->ctx) {
            check_mapping(r, f->copy->ctx, f->copy, "foreign copy");
            break;
        }
        CHECK(r, atomic_load(&heap.injected) > b.injected, "foreign copy failed, not injected");
        CHECK(r, thread_net_bytes == b.net_bytes, "foreign copy failed and kept memory");
        check_mapping(r, f->src->ctx, f->src, "after failed foreign copy");
        if (!retry(r, attempt))
            break;
    }
    return NULL;
}

static void op_foreign_copy(struct run *r, struct mctx *src, const char *name)
{
    if (!src->ctx)
        return;
    struct foreign f = {r, src, new_model(r, name, src)};
    pthread_t t;
    if (pthread_create(&t, NULL, foreign_reader, &f) != 0) {
        failure(r, __LINE__, "pthread_create failed");
        return;
    }
    pthread_join(t, NULL);
}

/* A thread started by cv_thread_create sees the creator's values and has a
 * context of its own that it can write. */
struct child {
    struct run *r;
    struct mctx expected;
};

static void *child_main(void *arg)
{
    struct child *c = arg;
    struct run *r = c->r;
    atomic_fetch_add(&r->children_started, 1);
    for (int i = 0; i < NVARS; i++) {
        if (!r->var[i])
            continue;
        void *fallback = &defaults[0];
        CHECK(r,
              cv_get_or(r->var[i], fallback) ==
                  (c->expected.has[i] ? c->expected.val[i] : fallback),
              "child: inherited var %d", i);
    }
    cv_context_t *mine = cv_context_current();
    CHECK(r, mine != NULL, "child: no base context");
    check_mapping(r, mine, &c->expected, "child inherited");
    for (int attempt = 0; r->var[0]; attempt++) {
        cv_token_t tok;
        struct before b = before();
        cv_status_t st = cv_set(r->var[0], value(0, 7), &tok);
        if (st == CV_OK) {
            CHECK(r, cv_get_or(r->var[0], NULL) == value(0, 7), "child: set not seen");
            st = cv_reset(r->var[0], &tok);
            CHECK(r, st == CV_OK || st == CV_ENOMEM, "child: reset %d", st);
            if (st == CV_ENOMEM) {
                CHECK(r, !cv_token_used(&tok) && cv_get_or(r->var[0], NULL) == value(0, 7),
                      "child: failed reset changed something");
                cv_token_discard(&tok);
            }
            break;
        }
        CHECK(r, st == CV_ENOMEM && atomic_load(&heap.injected) > b.injected, "child: set %d", st);
        CHECK(r, thread_net_bytes == b.net_bytes, "child: failed set kept memory");
        CHECK(r, cv_token_used(&tok), "child: failed set filled the token");
        check_mapping(r, mine, &c->expected, "child after failed set");
        if (!retry(r, attempt))
            break;
    }
    cv_context_t *copy = cv_copy_context();
    if (copy) {
        CHECK(r, cv_context_len(copy) == cv_context_len(mine), "child: copy len");
        cv_context_release(copy);
    }
    return NULL;
}

static void op_thread_create(struct run *r)
{
    struct child c = {r, *current(r)};
    for (int attempt = 0;; attempt++) {
        int started = atomic_load(&r->children_started);
        struct before b = before();
        pthread_t t;
        int err = cv_thread_create(&t, NULL, child_main, &c);
        if (err == 0) {
            pthread_join(t, NULL);
            CHECK(r, atomic_load(&r->children_started) == started + 1, "child did not run");
            check_all(r, "after child");
            return;
        }
        CHECK(r, err == ENOMEM, "cv_thread_create: %d", err);
        CHECK(r, atomic_load(&r->children_started) == started, "failed create started a thread");
        failed_cleanly(r, b, !r->base_known, "cv_thread_create");
        if (!retry(r, attempt))
            return;
    }
}

/* A plain pthread whose first call is a run: the base context is created
 * on the way in, and that allocation may fail. */
struct fresh {
    struct run *r;
    struct mctx *m;
    bool called;
};

static void fresh_body(void *arg)
{
    struct fresh *f = arg;
    f->called = true;
    if (f->r->var[3]) {
        cv_status_t st = cv_set(f->r->var[3], value(3, 6), NULL);
        CHECK(f->r, st == CV_OK || st == CV_ENOMEM, "fresh: set %d", st);
        if (st == CV_OK) {
            f->m->has[3] = true;
            f->m->val[3] = value(3, 6);
        }
    }
}

static void *fresh_thread(void *arg)
{
    struct fresh *f = arg;
    struct run *r = f->r;
    void *got;
    long calls = atomic_load(&heap.calls);
    CHECK(r, !r->var[0] || cv_get(r->var[0], &got) == CV_ENOVALUE, "fresh: value from nowhere");
    CHECK(r, atomic_load(&heap.calls) == calls, "cv_get on a fresh thread allocated");
    for (int attempt = 0;; attempt++) {
        struct before b = before();
        f->called = false;
        cv_status_t st = cv_context_run(f->m->ctx, fresh_body, f);
        if (st == CV_OK) {
            CHECK(r, f->called, "fresh: run OK, fn not called");
            break;
        }
        CHECK(r, st == CV_ENOMEM && atomic_load(&heap.injected) > b.injected, "fresh: run %d", st);
        CHECK(r, !f->called, "fresh: failed run called fn");
        if (!retry(r, attempt))
            break;
    }
    check_mapping(r, f->m->ctx, f->m, "after fresh thread's run");
    /* The thread's own base, in place: a set, and a reset that empties it. */
    if (r->var[5]) {
        cv_token_t tok;
        cv_status_t st = cv_set(r->var[5], value(5, 6), &tok);
        CHECK(r, st == CV_OK || st == CV_ENOMEM, "fresh: set %d", st);
        if (st == CV_OK) {
            st = cv_reset(r->var[5], &tok);
            CHECK(r, st == CV_OK, "fresh: reset to empty: %d", st);
            CHECK(r, cv_context_len(cv_context_current()) == 0, "fresh: base not empty");
        }
    }
    return NULL;
}

static void op_fresh_thread(struct run *r, struct mctx *m)
{
    if (!m->ctx)
        return;
    struct fresh f = {r, m, false};
    pthread_t t;
    if (pthread_create(&t, NULL, fresh_thread, &f) != 0) {
        failure(r, __LINE__, "pthread_create failed");
        return;
    }
    pthread_join(t, NULL);
}

/* -------------------------------------------------------------- scenario */

static void body_nested(struct run *r)
{
    /* Inside run(new1) inside run(snap1): path copies of a shared root. */
    op_set(r, C(4), value(C(4), 5), false);
    op_set(r, 7, value(7, 5), false);
    struct mtok *k = op_set(r, 8, value(8, 5), true);
    op_reset(r, k);
}

static void body_run(struct run *r)
{
    op_set(r, 0, value(0, 4), false);
    struct mtok *k = op_set(r, 1, value(1, 4), true);
    op_set(r, C(0), value(C(0), 4), false);
    op_run(r, r->nested_target, body_nested);
    op_reset(r, k);
    /* A token of the caller's context cannot be reset here. */
    op_reset(r, r->first_tok[2]);
}

static void body_deep(struct run *r)
{
    op_set(r, 11, value(11, 6), false);
}

/* Hashes are forced so that every run builds the same trie (the library
 * mixes addresses into them) and so that it has every shape an update can
 * meet. Variables 0-31 fill the 32 slots of the root; 32-39 share the first
 * three levels with 0-7 and part at the fourth (pairs merged over three
 * levels); the collision variables share the full hash H (a collision node)
 * except one that differs in the last level and one in the third (a
 * collision node meeting another hash). H's root slot is variable 26's. */
#define H 0x5a5a5a5au
static uint32_t var_hash(int i)
{
    static const uint32_t coll[NCOLL] = {H, H, H, H ^ 0x80000000u, H ^ (1u << 12), H};
    if (i < 32)
        return (uint32_t)i;
    if (i < NPLAIN)
        return (uint32_t)(i - 32) | (1u << 15);
    return coll[i - NPLAIN];
}

static void phase_variables(struct run *r)
{
    for (int i = 0; i < NVARS; i++) {
        op_var_new(r, i);
        if (r->var[i])
            cv_testing_set_var_hash(r->var[i], var_hash(i));
    }

    /* A thread that never set anything allocates nothing to read. */
    if (r->var[0] && r->var[1]) {
        long calls = atomic_load(&heap.calls);
        void *got;
        CHECK(r, cv_get(r->var[0], &got) == CV_ENOVALUE, "fresh thread: value from nowhere");
        CHECK(r, cv_get_or(r->var[1], NULL) == NULL, "fresh thread: cv_get_or");
        CHECK(r, atomic_load(&heap.calls) == calls, "cv_get on a fresh thread allocated");
    }
}

/* The first set creates the base context. Then fill it in place, since
 * nobody else holds or reads it. */
static void phase_in_place(struct run *r)
{
    for (int i = 0; i < 20; i++)
        r->first_tok[i] = op_set(r, i, i == 2 ? NULL : value(i, 0), i % 3 != 0);
    for (int i = 32; i < 36; i++)
        r->first_tok[i] = op_set(r, i, value(i, 0), true); /* pairs merged down three levels */
    op_reset(r, r->first_tok[35]);                         /* the chain collapses again */
    for (int k = 0; k < 3; k++)
        r->first_tok[C(k)] = op_set(r, C(k), value(C(k), 0), true); /* a collision node */
    r->first_tok[C(4)] = op_set(r, C(4), value(C(4), 0), true);     /* meets another hash */
    op_set(r, C(1), value(C(1), 1), false); /* replaced inside the collision node */
    for (int i = 0; i < 10; i++) {
        struct mtok *k = op_set(r, i, value(i, 1), i == 5);
        if (i == 5)
            r->overwrite5 = k;
    }
}

/* A copy shares the root: the same kinds of update now copy paths. */
static void phase_path_copy(struct run *r)
{
    r->snap1 = op_make(r, MAKE_COPY_CURRENT, NULL, "snap1");
    op_set(r, 0, value(0, 1), false); /* the value it has: nothing to copy */
    for (int i = 20; i < 28; i++)
        r->first_tok[i] = op_set(r, i, value(i, 2), i % 3 != 0);
    for (int i = 36; i < 38; i++)
        r->first_tok[i] = op_set(r, i, value(i, 2), true);
    r->first_tok[C(3)] = op_set(r, C(3), value(C(3), 2), true);
    r->first_tok[C(5)] = op_set(r, C(5), value(C(5), 2), true);
    op_set(r, C(1), value(C(1), 2), false);
    for (int i = 10; i < 14; i++)
        op_set(r, i, value(i, 2), false);
    op_reset(r, r->overwrite5);      /* restores a value */
    op_reset(r, r->first_tok[4]);    /* old value MISSING: removes, a chain collapses */
    op_reset(r, r->first_tok[C(0)]); /* removal from a collision node */
    op_reset(r, r->first_tok[32]);
    op_reset(r, r->first_tok[4]); /* used */
}

/* Another thread reads and copies the base while this one has it entered:
 * the owner's replaced roots now go through RCU. */
static void phase_foreign(struct run *r)
{
    op_foreign_copy(r, &r->ctxs[0], "foreign");
    for (int i = 28; i < 32; i++)
        r->first_tok[i] = op_set(r, i, value(i, 3), i % 3 != 0);
    for (int i = 38; i < 40; i++)
        r->first_tok[i] = op_set(r, i, value(i, 3), true);
    op_set(r, C(0), value(C(0), 3), false);
    op_set(r, C(2), value(C(2), 3), false); /* replaced in a shared collision node */
    for (int i = 14; i < 20; i++)
        op_set(r, i, value(i, 3), false);
    op_reset(r, r->first_tok[C(1)]);
    op_reset(r, r->first_tok[C(3)]);
    op_reset(r, r->first_tok[22]);
    op_reset(r, r->first_tok[7]);
    op_reset(r, r->first_tok[36]);
}

/* Runs, nested, with a set in each. */
static void phase_runs(struct run *r)
{
    r->new1 = op_make(r, MAKE_NEW, NULL, "new1");
    r->nested_target = r->snap1;
    op_run(r, r->new1, body_run);
    op_run(r, r->new1, body_run); /* the same context again: now with values */
}

/* Enter deep enough that the thread's context stack must grow twice, on an
 * enter and on a run that needs the slot above a full stack. */
static void phase_deep(struct run *r)
{
    enum { NDEEP = 18 };
    struct mctx *deep[NDEEP];
    for (int i = 0; i < NDEEP; i++)
        deep[i] = op_make(r, i % 2 ? MAKE_COPY_OF : MAKE_NEW, &r->ctxs[0], "deep");
    for (int i = 0; i < 7; i++)
        op_enter(r, deep[i]);
    op_run(r, deep[7], body_deep);
    for (int i = 7; i < 16; i++)
        op_enter(r, deep[i]);
    op_set(r, 12, value(12, 6), false);
    op_run(r, deep[16], body_deep);
    for (int i = 15; i >= 0; i--)
        op_exit(r, deep[i]);
    /* Whatever failed above, deep[7] must not have been left claimed: with
     * the stack shallow again its run needs no memory and must succeed. */
    if (deep[7]->ctx) {
        struct run_call call = {r, body_deep, false};
        r->stack[r->depth++] = deep[7];
        cv_status_t st = cv_context_run(deep[7]->ctx, run_trampoline, &call);
        r->depth--;
        CHECK(r, st == CV_OK || (st == CV_ENOMEM && !r->base_known),
              "deep[7] left claimed? run: %d", st);
    }
}

/* Copies of copies, equality. */
static void phase_copies(struct run *r)
{
    struct mctx *base = &r->ctxs[0], *snap1 = r->snap1;
    if (!snap1)
        return;
    struct mctx *c1 = op_make(r, MAKE_COPY_OF, snap1, "copy of snap1");
    struct mctx *c2 = op_make(r, MAKE_COPY_OF, c1, "copy of copy");
    if (c1->ctx && c2->ctx && snap1->ctx) {
        CHECK(r, cv_context_equal(c2->ctx, snap1->ctx), "copy of a copy differs");
        CHECK(r, !base->ctx || cv_context_equal(base->ctx, snap1->ctx) == model_equal(base, snap1),
              "equal() disagrees with the model");
    }
    r->nested_target = c2;
}

/* Threads that inherit: from the base, and from inside a run. */
static void phase_threads(struct run *r)
{
    op_thread_create(r);
    if (r->new1 && r->nested_target)
        op_run(r, r->new1, body_run);
    struct mctx *inherit = op_make(r, MAKE_NEW, NULL, "for a child");
    if (inherit->ctx) {
        op_enter(r, inherit);
        struct mtok *k = op_set(r, 30, value(30, 5), true);
        op_thread_create(r);
        /* Shared with a copy, the one-variable map is removed to empty. */
        op_make(r, MAKE_COPY_CURRENT, NULL, "copy of one");
        op_reset(r, k);
        op_exit(r, inherit);
    }
}

/* Captures, plain and with flow suppressed, and a task. */
static void phase_tasks(struct run *r)
{
    op_make(r, MAKE_CAPTURE, NULL, "captured");
    op_make(r, MAKE_CAPTURE_SUPPRESSED, NULL, "captured, flow suppressed");
    op_task(r);
}

/* A plain thread whose first call enters a context. */
static void phase_fresh_thread(struct run *r)
{
    struct mctx *fresh = op_make(r, MAKE_NEW, NULL, "fresh");
    op_fresh_thread(r, fresh);
}

/* Resets where they work, discards for the rest, releases. Needs no
 * memory: it must work in FAIL_FROM_NTH mode too. */
static void cleanup(struct run *r)
{
    for (int t = r->ntoks - 1; t >= 0; t -= 2)
        if (r->toks[t].ctx == current(r))
            op_reset(r, &r->toks[t]);
    for (int t = 0; t < r->ntoks; t++)
        op_discard(r, &r->toks[t]);
    check_all(r, "before cleanup");
    for (int i = 1; i < r->nctxs; i++)
        op_release(r, &r->ctxs[i]);
    for (int i = 0; i < NVARS; i++)
        cv_var_release(r->var[i]);
    /* The base context, the lookup cache and the stack go at thread exit. */
}

static void (*const phases[])(struct run *r) = {
    phase_variables, phase_in_place, phase_path_copy, phase_foreign, phase_runs,
    phase_deep,      phase_copies,   phase_tasks,     phase_threads, phase_fresh_thread,
};

static void scenario(struct run *r)
{
    r->stack[0] = new_model(r, "base", NULL);
    r->depth = 1;
    int injected_in = -1;
    for (int p = 0; p < (int)(sizeof(phases) / sizeof(phases[0])); p++) {
        /* In FAIL_NTH mode the one failure is spent once injected: the
         * phase after it shows that the run goes on from a consistent
         * state; later ones would repeat a run without failures, with
         * several thread creations each, slow under the sanitizers. */
        if (injected_in < 0 && atomic_load(&heap.injected) > 0)
            injected_in = p - 1;
        if (r->mode == FAIL_NTH && injected_in >= 0 && p > injected_in + 1)
            break;
        phases[p](r);
    }
    cleanup(r);
}

static void *scenario_thread(void *arg)
{
    scenario(arg);
    return NULL;
}

/* --------------------------------------------------------------- driver */

static long baseline_bytes, baseline_blocks, baseline_values;

static bool at_baseline(void)
{
    return atomic_load(&heap.live_bytes) == baseline_bytes &&
           atomic_load(&heap.live_blocks) == baseline_blocks &&
           atomic_load(&retains) - atomic_load(&releases) == baseline_values;
}

/* A sweep after one that failed starts from what that one left, so that
 * it reports its own first problem; the last test still compares against
 * the first baseline. */
static long first_baseline_bytes;

static void rebaseline(void)
{
    cv_reclaim_barrier();
    baseline_bytes = atomic_load(&heap.live_bytes);
    baseline_blocks = atomic_load(&heap.live_blocks);
    baseline_values = atomic_load(&retains) - atomic_load(&releases);
}

/* Waits for deferred frees only when something is still out: a barrier
 * with work queued costs ~10 ms. One barrier must be enough (it once was
 * not: a cascade's batch queued behind the barrier's own callback, seen
 * here about once in ten TSan runs under a parallel ctest). */
static bool settled(void)
{
    if (at_baseline())
        return true;
    cv_reclaim_barrier();
    return at_baseline();
}

static void report(struct run *r)
{
    if (r->failures > MAX_MESSAGES)
        print_error("  ... and %d more\n", r->failures - MAX_MESSAGES);
}

/* One run with failure mode `mode` at `at`; returns the number of injected
 * failures, or -1 after reporting a discrepancy. Leaks are looked for by
 * the caller, once deferred frees have run. */
static long one_run(int mode, long at)
{
    struct run *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    pthread_mutex_init(&r->lock, NULL);
    r->mode = mode;
    r->fail_at = at;
    arm(mode, at);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, scenario_thread, r), 0);
    pthread_join(t, NULL);
    disarm();
    long injected = atomic_load(&heap.injected);
    CHECK(r, atomic_load(&heap.bad_frees) == 0, "%ld frees with a wrong size or pointer",
          atomic_load(&heap.bad_frees));
    CHECK(r, atomic_load(&bad_releases) == 0, "%ld values released more than retained",
          atomic_load(&bad_releases));
    int failures = r->failures;
    if (failures)
        report(r);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return failures ? -1 : injected;
}

struct outstanding {
    long bytes, blocks, values;
};

static struct outstanding outstanding(void)
{
    cv_reclaim_barrier();
    return (struct outstanding){atomic_load(&heap.live_bytes), atomic_load(&heap.live_blocks),
                                atomic_load(&retains) - atomic_load(&releases)};
}

/* Something leaked in runs first..last: the runs are deterministic, so
 * running each again alone names the first that leaks. */
static void find_leak(int mode, long first, long last)
{
    for (long n = first; n <= last; n++) {
        struct outstanding before = outstanding();
        one_run(mode, n);
        struct outstanding after = outstanding();
        if (after.bytes != before.bytes || after.blocks != before.blocks ||
            after.values != before.values)
            fail_msg("mode=%s N=%ld leaked %ld bytes in %ld blocks and %ld value references "
                     "(reproduce: CV_ALLOC_FAIL_AT=%ld CV_ALLOC_FAIL_MODE=%s)",
                     mode_name(mode), n, after.bytes - before.bytes, after.blocks - before.blocks,
                     after.values - before.values, n, mode_name(mode));
    }
    fail_msg("mode=%s: runs %ld-%ld leaked together but not one by one", mode_name(mode), first,
             last);
}

static void sweep(int mode)
{
    const char *only = getenv("CV_ALLOC_FAIL_AT");
    const char *only_mode = getenv("CV_ALLOC_FAIL_MODE");
    rebaseline();
    if (only) {
        if (only_mode && strcmp(only_mode, mode_name(mode)) != 0)
            skip();
        long injected = one_run(mode, atol(only));
        print_message("mode=%s N=%s: %ld injected failures\n", mode_name(mode), only, injected);
        assert_true(injected >= 0);
        if (!settled())
            find_leak(mode, atol(only), atol(only));
        return;
    }
    long n, unsettled = 1;
    for (n = 1; n < 100000; n++) {
        long injected = one_run(mode, n);
        if (injected < 0)
            fail_msg("discrepancies with mode=%s N=%ld (reproduce: CV_ALLOC_FAIL_AT=%ld "
                     "CV_ALLOC_FAIL_MODE=%s)",
                     mode_name(mode), n, n, mode_name(mode));
        if (injected == 0 || n - unsettled + 1 == SETTLE_EVERY) {
            if (!settled())
                find_leak(mode, unsettled, n);
            unsettled = n + 1;
        }
        if (injected == 0)
            break;
    }
    /* Sanity: the scenario does allocate plenty, so the sweep went through
     * many distinct failure points before a run got through untouched. */
    assert_true(n > 100);
    print_message("mode=%s: %ld runs, the last without an injected failure\n", mode_name(mode), n);
}

static void test_scenario_fail_from_nth(void **state)
{
    (void)state;
    sweep(FAIL_FROM_NTH);
}

static void test_scenario_fail_nth(void **state)
{
    (void)state;
    sweep(FAIL_NTH);
}

/* The very first variable of the process: its allocations include the
 * slot table, which lives for the rest of the process. */
static void test_first_variable(void **state)
{
    (void)state;
    cv_var_t *var = NULL;
    long n;
    for (n = 1; n < 100 && !var; n++) {
        arm(FAIL_NTH, n);
        var = cv_var_new("first", NULL);
        disarm();
        if (!var) {
            assert_int_equal(atomic_load(&heap.injected), 1);
            assert_int_equal(atomic_load(&heap.live_bytes), 0);
            assert_int_equal(atomic_load(&heap.live_blocks), 0);
        }
    }
    assert_non_null(var);
    assert_true(n > 2); /* the variable, its name: at least two sites */
    assert_string_equal(cv_var_name(var), "first");
    cv_var_release(var);
    /* Runs are checked for leaks in groups, so variables of one run may
     * still be held by nodes awaiting their grace period while the next
     * runs make theirs. Grow the slot table, which never shrinks, past
     * that many live variables now, so that it does not grow later. */
    static cv_var_t *many[PREGROWN_SLOTS];
    for (int i = 0; i < PREGROWN_SLOTS; i++)
        assert_non_null(many[i] = cv_var_new("pregrow", NULL));
    for (int i = 0; i < PREGROWN_SLOTS; i++)
        cv_var_release(many[i]);
    rebaseline();
    first_baseline_bytes = baseline_bytes;
    /* What stays is the variable-slot table: one block. */
    assert_int_equal(baseline_blocks, 1);
}

/* Variables beyond the slot table's first capacity make it grow; that
 * allocation may fail too. The table never shrinks, so the baseline grows
 * by exactly the growth of that one block. */
static void test_slot_table_growth(void **state)
{
    (void)state;
    enum { MANY = PREGROWN_SLOTS + 100 };
    static cv_var_t *vars[MANY];
    long grown_by = 0;
    int three_site_vars = 0;
    long typical = -1;
    for (int i = 0; i < MANY; i++) {
        char name[8];
        snprintf(name, sizeof(name), "g%04d", i); /* equal lengths: equal sizes */
        for (long n = 1; !vars[i]; n++) {
            long net = thread_net_bytes;
            arm(FAIL_NTH, n);
            vars[i] = cv_var_new(name, NULL);
            long calls = atomic_load(&heap.calls);
            disarm();
            if (!vars[i]) {
                assert_int_equal(thread_net_bytes, net);
                continue;
            }
            net = thread_net_bytes - net;
            if (calls == 2) {
                if (typical < 0)
                    typical = net;
                assert_int_equal(net, typical);
            } else {
                /* The table grew: the third allocation was the bigger one. */
                assert_int_equal(calls, 3);
                three_site_vars++;
                grown_by += net;
            }
        }
    }
    assert_true(typical > 0);
    assert_true(three_site_vars >= 1); /* more live variables than ever before */
    grown_by -= three_site_vars * typical;
    assert_true(grown_by > 0);
    for (int i = 0; i < MANY; i++)
        cv_var_release(vars[i]);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&heap.live_blocks), 1);
    assert_int_equal(atomic_load(&heap.live_bytes), first_baseline_bytes + grown_by);
    first_baseline_bytes += grown_by;
}

/* The last case: group teardowns cannot fail a run (DESIGN.md, cmocka). */
static void test_nothing_leaked(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    /* Only the variable-slot table. */
    assert_int_equal(atomic_load(&heap.live_bytes), first_baseline_bytes);
    assert_int_equal(atomic_load(&heap.live_blocks), 1);
    assert_int_equal(atomic_load(&heap.bad_frees), 0);
    assert_int_equal(atomic_load(&bad_releases), 0);
    assert_true(hooks_balanced());
    assert_true(atomic_load(&retains) > 0);
    /* The allocator is fixed once the library has allocated. */
    cv_allocator_t again = {counting_alloc, counting_free, NULL};
    assert_int_equal(cv_set_allocator(&again), CV_EBUSY);
}

int main(void)
{
    /* Before anything of the library allocates. */
    cv_allocator_t broken = {counting_alloc, NULL, NULL};
    if (cv_set_allocator(NULL) != CV_EINVAL || cv_set_allocator(&broken) != CV_EINVAL) {
        fprintf(stderr, "cv_set_allocator accepted an invalid allocator\n");
        return 1;
    }
    cv_allocator_t counting = {counting_alloc, counting_free, NULL};
    if (cv_set_allocator(&counting) != CV_OK) {
        fprintf(stderr, "cv_set_allocator failed before the first allocation\n");
        return 1;
    }
    /* API.md: "before any other call": the first cv_set_allocator is one. */
    cv_allocator_t other = {counting_alloc, counting_free, &other};
    if (cv_set_allocator(&other) != CV_EBUSY) {
        fprintf(stderr, "a second cv_set_allocator was accepted\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_variable),    cmocka_unit_test(test_scenario_fail_from_nth),
        cmocka_unit_test(test_scenario_fail_nth), cmocka_unit_test(test_slot_table_growth),
        cmocka_unit_test(test_nothing_leaked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
