/*
 * Contexts across real threads: inheritance through cv_thread_create, the
 * empty start of plain pthreads, readers of a context that its owner keeps
 * writing, hand-offs, CV_EBUSY, cleanup at thread exit, value hooks.
 *
 * cmocka is not thread-safe: threads record what they saw in their own
 * struct result and the main thread asserts after joining them.
 *
 * Built twice: test_threads with the default allocator, and
 * test_threads_counted (CV_TEST_COUNTING_ALLOCATOR) with an allocator that
 * counts live bytes and each thread's allocations, so that "allocates
 * nothing" and "a thread's exit frees everything" are exact, sanitizer or
 * not.
 *
 * The reader tests run until every reader has watched many states go by
 * and a set wall-clock time has passed (a few seconds at most, whatever
 * the sanitizer), the other loops are short: the suite takes a couple of
 * seconds normally and a few more under ThreadSanitizer.
 */
#define _GNU_SOURCE /* pthread barriers, clock_gettime, sched_yield in -std=c11 */
#include <ctxvars.h>

#include "testing.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "run_selected.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define GROUP_NAME "test_threads"
#define VAL(x) ((void *)(uintptr_t)(x))

/* ------------------------------------------------- results from threads */

struct result {
    int failures;
    char first[200];
};

static void record_failure(struct result *res, int line, const char *what)
{
    if (res->failures++ == 0)
        snprintf(res->first, sizeof(res->first), "line %d: %s", line, what);
}

#define CHECK(res, cond) ((cond) ? (void)0 : record_failure((res), __LINE__, #cond))

static void assert_clean(const struct result *res, const char *who)
{
    if (res->failures)
        fail_msg("%s: %d failed checks, first at %s", who, res->failures, res->first);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void join(pthread_t thread)
{
    assert_int_equal(pthread_join(thread, NULL), 0);
}

/* ---------------------------------------------------- counting allocator */

#ifdef CV_TEST_COUNTING_ALLOCATOR
static atomic_long live_bytes;
static __thread long thread_allocations;

static void *counting_alloc(size_t size, void *data)
{
    (void)data;
    void *p = malloc(size);
    if (p) {
        atomic_fetch_add(&live_bytes, (long)size);
        thread_allocations++;
    }
    return p;
}

static void counting_free(void *ptr, size_t size, void *data)
{
    (void)data;
    atomic_fetch_sub(&live_bytes, (long)size);
    free(ptr);
}

static long counted_live_bytes(void)
{
    return atomic_load(&live_bytes);
}

static long counted_thread_allocations(void)
{
    return thread_allocations;
}
#else
static long counted_thread_allocations(void)
{
    return 0;
}
#endif

/* ------------------------------------------ inheritance and plain threads */

struct inherit {
    cv_var_t *a, *b;
    pthread_barrier_t barrier;
    cv_context_t *parent_current;
    cv_context_t *parent_snapshot;
    struct result res, grandchild_res;
};

static void *grandchild_main(void *arg)
{
    struct inherit *in = arg;
    void *v = NULL;
    /* Inherits the child's context, not the grandparent's. */
    CHECK(&in->grandchild_res, cv_get(in->a, &v) == CV_OK && v == VAL(2));
    CHECK(&in->grandchild_res, cv_get(in->b, &v) == CV_OK && v == VAL(3));
    CHECK(&in->grandchild_res, cv_set(in->a, VAL(4), NULL) == CV_OK);
    return NULL;
}

static void *inherit_child_main(void *arg)
{
    struct inherit *in = arg;
    struct result *res = &in->res;
    void *v = NULL;
    cv_context_t *mine = cv_context_current();
    CHECK(res, mine != NULL && mine != in->parent_current);
    CHECK(res, cv_context_equal(mine, in->parent_snapshot));
    CHECK(res, cv_get(in->a, &v) == CV_OK && v == VAL(1));
    CHECK(res, cv_get(in->b, &v) == CV_ENOVALUE);
    CHECK(res, cv_set(in->a, VAL(2), NULL) == CV_OK);
    CHECK(res, cv_set(in->b, VAL(3), NULL) == CV_OK);
    pthread_barrier_wait(&in->barrier); /* 1: the child's sets are done */
    pthread_barrier_wait(&in->barrier); /* 2: the parent has set a = 10 */
    CHECK(res, cv_get(in->a, &v) == CV_OK && v == VAL(2));
    CHECK(res, cv_get(in->b, &v) == CV_OK && v == VAL(3));

    pthread_t grandchild;
    CHECK(res, cv_thread_create(&grandchild, NULL, grandchild_main, in) == 0);
    pthread_join(grandchild, NULL);
    /* The grandchild's set stayed in its own copy. */
    CHECK(res, cv_get(in->a, &v) == CV_OK && v == VAL(2));
    return NULL;
}

static void test_create_inherits_a_copy(void **state)
{
    (void)state;
    struct inherit in = {0};
    in.a = cv_var_new("a", NULL);
    in.b = cv_var_new("b", NULL);
    pthread_barrier_init(&in.barrier, NULL, 2);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(in.a, VAL(1), NULL), CV_OK);
    in.parent_current = cv_context_current();
    in.parent_snapshot = cv_copy_context();

    pthread_t child;
    assert_int_equal(cv_thread_create(&child, NULL, inherit_child_main, &in), 0);
    pthread_barrier_wait(&in.barrier);
    void *v = NULL;
    assert_int_equal(cv_get(in.a, &v), CV_OK);
    assert_ptr_equal(v, VAL(1));
    assert_int_equal(cv_get(in.b, &v), CV_ENOVALUE);
    assert_int_equal(cv_set(in.a, VAL(10), NULL), CV_OK);
    pthread_barrier_wait(&in.barrier);
    join(child);
    assert_clean(&in.res, "child");
    assert_clean(&in.grandchild_res, "grandchild");
    assert_int_equal(cv_get(in.a, &v), CV_OK);
    assert_ptr_equal(v, VAL(10));
    assert_int_equal(cv_get(in.b, &v), CV_ENOVALUE);
    assert_int_equal(cv_context_exit(ctx), CV_OK);

    assert_int_equal(cv_thread_create(NULL, NULL, grandchild_main, &in), EINVAL);
    pthread_t unused;
    assert_int_equal(cv_thread_create(&unused, NULL, NULL, &in), EINVAL);

    pthread_barrier_destroy(&in.barrier);
    cv_context_release(in.parent_snapshot);
    cv_context_release(ctx);
    cv_var_release(in.a);
    cv_var_release(in.b);
}

struct plain {
    cv_var_t *a, *with_default;
    long allocations_by_get;
    struct result res;
};

static void *plain_thread_main(void *arg)
{
    struct plain *p = arg;
    struct result *res = &p->res;
    void *v = VAL(0x77);
    /* Nothing before this point has touched the library on this thread. */
    long before = counted_thread_allocations();
    CHECK(res, cv_get(p->a, &v) == CV_ENOVALUE && v == VAL(0x77));
    CHECK(res, (cv_get)(p->a, &v) == CV_ENOVALUE && v == VAL(0x77));
    CHECK(res, cv_get(p->with_default, &v) == CV_OK && v == VAL(0xdef));
    CHECK(res, cv_get_or(p->a, VAL(5)) == VAL(5));
    CHECK(res, cv_get_or(p->with_default, VAL(6)) == VAL(6));
    CHECK(res, (cv_get_or)(p->with_default, VAL(6)) == VAL(6));
    p->allocations_by_get = counted_thread_allocations() - before;

    cv_context_t *base = cv_context_current();
    CHECK(res, base != NULL && cv_context_len(base) == 0);
    CHECK(res, cv_set(p->a, VAL(5), NULL) == CV_OK);
    CHECK(res, cv_get(p->a, &v) == CV_OK && v == VAL(5));
    /* The base context cannot be exited. */
    CHECK(res, cv_context_exit(base) == CV_ENOTCURRENT);
    return NULL;
}

static void test_plain_thread_starts_empty(void **state)
{
    (void)state;
    struct plain p = {0};
    p.a = cv_var_new("a", NULL);
    p.with_default =
        cv_var_new("d", &(cv_var_opts_t){.default_value = VAL(0xdef), .has_default = true});
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(p.a, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_set(p.with_default, VAL(2), NULL), CV_OK);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, plain_thread_main, &p), 0);
    join(t);
    assert_clean(&p.res, "plain thread");
    /* API.md: a thread that never entered a context has an empty base
     * context, "created on first need; cv_get on it allocates nothing". */
    assert_int_equal(p.allocations_by_get, 0);
    void *v;
    assert_int_equal(cv_get(p.a, &v), CV_OK);
    assert_ptr_equal(v, VAL(1));
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_var_release(p.a);
    cv_var_release(p.with_default);
}

/* ---------------------------------------- readers while the owner writes */

#define PAT_MAX 64
#define POS_INVALID (-1L)
#define POS_EMPTY (-2L)

/*
 * The owner's history, round r = 1, 2, ...:
 *   up:   for i ascending,  set var i to 2r-1 (keeping token t_i)
 *   over: for i descending, set var i to 2r
 *   down: for i ascending,  reset t_i (var i had no value: it goes)
 * Every state it ever publishes therefore has one of three shapes, and its
 * position in the history can be read back from the values alone. A mix of
 * two states, a value never written, or a later read that goes back in the
 * history are all caught. The empty state between rounds is ambiguous: it
 * matches the start of any later round.
 */
static long pattern_position(const uintptr_t *v, int n)
{
    int zeros = 0;
    while (zeros < n && v[zeros] == 0)
        zeros++;
    if (zeros == n)
        return POS_EMPTY;
    if (zeros > 0) { /* down: a prefix removed, the rest at 2r */
        uintptr_t e = v[zeros];
        if (e & 1)
            return POS_INVALID;
        for (int i = zeros; i < n; i++) {
            if (v[i] != e)
                return POS_INVALID;
        }
        return (long)(e / 2 - 1) * 3 * n + 2 * n + zeros;
    }
    uintptr_t first = v[0];
    int run = 1;
    while (run < n && v[run] == first)
        run++;
    if (!(first & 1)) { /* all at 2r: the end of "over" */
        return run == n ? (long)(first / 2 - 1) * 3 * n + 2 * n : POS_INVALID;
    }
    long base = (long)((first + 1) / 2 - 1) * 3 * n;
    if (run == n)
        return base + n;
    uintptr_t next = v[run];
    if (next != 0 && next != first + 1)
        return POS_INVALID;
    for (int i = run; i < n; i++) {
        if (v[i] != next)
            return POS_INVALID;
    }
    return next == 0 ? base + run : base + n + (n - run);
}

/* Later reads by one thread never see an earlier state. */
static bool pattern_advance(long *last, long pos, int n)
{
    if (pos == POS_INVALID)
        return false;
    if (pos == POS_EMPTY) {
        long period = 3L * n;
        *last = (*last + period - 1) / period * period;
        return true;
    }
    if (pos < *last)
        return false;
    *last = pos;
    return true;
}

struct pattern_vars {
    cv_var_t *vars[PAT_MAX];
    int n;
};

static void pattern_vars_init(struct pattern_vars *p, int n)
{
    p->n = n;
    for (int i = 0; i < n; i++) {
        p->vars[i] = cv_var_new("pattern", NULL);
        assert_non_null(p->vars[i]);
    }
    /* Collision nodes and deep paths under concurrent readers too. */
    if (n >= 8) {
        for (int i = 0; i < 3; i++)
            cv_testing_set_var_hash(p->vars[i], 0x0f0f0f0fu);
        cv_testing_set_var_hash(p->vars[3], 0x0f0f0f0fu ^ (1u << 31));
        cv_testing_set_var_hash(p->vars[4], 0x0f0f0f0fu ^ (1u << 25));
    }
}

static void pattern_vars_release(struct pattern_vars *p)
{
    for (int i = 0; i < p->n; i++)
        cv_var_release(p->vars[i]);
}

static int pattern_index(const struct pattern_vars *p, const cv_var_t *var)
{
    for (int i = 0; i < p->n; i++) {
        if (p->vars[i] == var)
            return i;
    }
    return -1;
}

/* Values of a snapshot through iteration; false if it names an unknown
 * variable or one twice. */
static bool pattern_iterate(cv_context_t *ctx, const struct pattern_vars *p, uintptr_t *v,
                            size_t *count)
{
    bool ok = true;
    memset(v, 0, sizeof(*v) * (size_t)p->n);
    *count = 0;
    cv_context_iter_t it;
    cv_var_t *var;
    void *value;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, &value)) {
        int i = pattern_index(p, var);
        if (i < 0 || v[i] != 0 || value == NULL)
            ok = false;
        else
            v[i] = (uintptr_t)value;
        ++*count;
    }
    cv_context_iter_fini(&it);
    return ok;
}

static size_t present(const uintptr_t *v, int n)
{
    size_t k = 0;
    for (int i = 0; i < n; i++)
        k += v[i] != 0;
    return k;
}

/* One round of the owner's history, in its current context. */
static void pattern_round(const struct pattern_vars *p, long r, struct result *res)
{
    cv_token_t tok[PAT_MAX];
    void *v;
    for (int i = 0; i < p->n; i++) {
        CHECK(res, cv_set(p->vars[i], VAL(2 * r - 1), &tok[i]) == CV_OK);
        CHECK(res, cv_get(p->vars[i], &v) == CV_OK && v == VAL(2 * r - 1));
    }
    for (int i = p->n - 1; i >= 0; i--) {
        CHECK(res, cv_set(p->vars[i], VAL(2 * r), NULL) == CV_OK);
        CHECK(res, cv_get(p->vars[i], &v) == CV_OK && v == VAL(2 * r));
    }
    for (int i = 0; i < p->n; i++) {
        CHECK(res, cv_reset(p->vars[i], &tok[i]) == CV_OK);
        CHECK(res, cv_get(p->vars[i], &v) == CV_ENOVALUE);
    }
}

/* Copies a reader keeps for a while: a copy is immutable, so long after it
 * was taken (past grace periods that freed what its owner replaced) it
 * must still read exactly as it did. */
#define KEPT 256

struct kept_copy {
    cv_context_t *ctx;
    uintptr_t values[PAT_MAX];
};

struct pattern_reader {
    struct readers_test *t;
    struct result res;
    struct kept_copy kept[KEPT];
    long kept_next;
    long last_pos;
    uintptr_t last_value[PAT_MAX];
    long reads, distinct;
    atomic_long progress; /* distinct states seen; read by the owner */
};

struct readers_test {
    struct pattern_vars p;
    cv_context_t *ctx;
    bool owner_runs; /* each round in cv_context_run, else one enter/exit */
    int only_step;   /* the one kind of read the readers do, or -1: all */
    long min_rounds, target;
    double min_end, deadline;
    int nreaders;
    struct pattern_reader readers[2];
    atomic_int readers_started;
    atomic_bool done;
    struct result owner_res;
    long rounds;
};

static void reader_saw(struct pattern_reader *r, long pos)
{
    long before = r->last_pos;
    if (!pattern_advance(&r->last_pos, pos, r->t->p.n))
        record_failure(&r->res, __LINE__, "a state out of the history, or older than one seen");
    if (r->last_pos != before)
        atomic_store_explicit(&r->progress, ++r->distinct, memory_order_relaxed);
}

/* A copy is immutable: iteration, lookups and length must agree exactly. */
static void reader_check_copy(struct pattern_reader *r, cv_context_t *copy, uintptr_t *v)
{
    const struct pattern_vars *p = &r->t->p;
    size_t count;
    CHECK(&r->res, pattern_iterate(copy, p, v, &count));
    CHECK(&r->res, count == cv_context_len(copy) && count == present(v, p->n));
    for (int i = 0; i < p->n; i++) {
        void *value = NULL;
        cv_status_t st = cv_context_get(copy, p->vars[i], &value);
        CHECK(&r->res, v[i] ? st == CV_OK && value == VAL(v[i]) : st == CV_ENOVALUE);
        CHECK(&r->res, cv_context_contains(copy, p->vars[i]) == (v[i] != 0));
    }
}

static void reader_step(struct pattern_reader *r, long step)
{
    struct readers_test *t = r->t;
    const struct pattern_vars *p = &t->p;
    uintptr_t v[PAT_MAX], w[PAT_MAX];
    size_t count;
    switch (t->only_step >= 0 ? t->only_step : step % 4) {
    case 0: {
        cv_context_t *copy = cv_context_copy(t->ctx);
        CHECK(&r->res, copy != NULL);
        if (!copy)
            return;
        reader_check_copy(r, copy, v);
        reader_saw(r, pattern_position(v, p->n));
        struct kept_copy *k = &r->kept[r->kept_next++ % KEPT];
        if (k->ctx) {
            reader_check_copy(r, k->ctx, w);
            CHECK(&r->res, memcmp(w, k->values, sizeof(*w) * (size_t)p->n) == 0);
            cv_context_release(k->ctx);
        }
        k->ctx = copy;
        memcpy(k->values, v, sizeof(*v) * (size_t)p->n);
        break;
    }
    case 1:
        /* Iteration of the live context walks one snapshot. */
        CHECK(&r->res, pattern_iterate(t->ctx, p, v, &count));
        CHECK(&r->res, count == present(v, p->n));
        reader_saw(r, pattern_position(v, p->n));
        break;
    case 2:
        /* Single lookups on the live context: per variable, the values
         * present only ever grow. */
        for (int i = 0; i < p->n; i++) {
            void *value = NULL;
            cv_status_t st = cv_context_get(t->ctx, p->vars[i], &value);
            CHECK(&r->res, st == CV_OK || st == CV_ENOVALUE);
            if (st != CV_OK)
                continue;
            CHECK(&r->res, value != NULL && (uintptr_t)value >= r->last_value[i]);
            r->last_value[i] = (uintptr_t)value;
        }
        CHECK(&r->res, cv_context_len(t->ctx) <= (size_t)p->n);
        break;
    default: {
        cv_context_t *c1 = cv_context_copy(t->ctx), *c2 = cv_context_copy(t->ctx);
        CHECK(&r->res, c1 && c2);
        if (!c1 || !c2) {
            cv_context_release(c1);
            cv_context_release(c2);
            return;
        }
        reader_check_copy(r, c1, v);
        reader_check_copy(r, c2, w);
        reader_saw(r, pattern_position(v, p->n));
        reader_saw(r, pattern_position(w, p->n));
        CHECK(&r->res, cv_context_equal(c1, c2) == (memcmp(v, w, sizeof(*v) * (size_t)p->n) == 0));
        cv_context_release(c1);
        cv_context_release(c2);
        break;
    }
    }
    r->reads++;
}

static void *pattern_reader_main(void *arg)
{
    struct pattern_reader *r = arg;
    atomic_fetch_add(&r->t->readers_started, 1);
    long step = (long)(r - r->t->readers);
    while (!atomic_load(&r->t->done))
        reader_step(r, step++);
    /* After the owner's last round the context is empty for good. */
    uintptr_t v[PAT_MAX];
    cv_context_t *copy = cv_context_copy(r->t->ctx);
    reader_check_copy(r, copy, v);
    CHECK(&r->res, pattern_position(v, r->t->p.n) == POS_EMPTY);
    cv_context_release(copy);
    for (int i = 0; i < KEPT; i++) {
        if (!r->kept[i].ctx)
            continue;
        reader_check_copy(r, r->kept[i].ctx, v);
        CHECK(&r->res, memcmp(v, r->kept[i].values, sizeof(*v) * (size_t)r->t->p.n) == 0);
        cv_context_release(r->kept[i].ctx);
    }
    return NULL;
}

struct owner_round {
    struct readers_test *t;
    long r;
};

static void owner_round_fn(void *arg)
{
    struct owner_round *o = arg;
    pattern_round(&o->t->p, o->r, &o->t->owner_res);
}

static bool readers_satisfied(struct readers_test *t)
{
    for (int i = 0; i < t->nreaders; i++) {
        if (atomic_load_explicit(&t->readers[i].progress, memory_order_relaxed) < t->target)
            return false;
    }
    return true;
}

static void *pattern_owner_main(void *arg)
{
    struct readers_test *t = arg;
    struct result *res = &t->owner_res;
    while (atomic_load(&t->readers_started) < t->nreaders)
        sched_yield();
    if (!t->owner_runs)
        CHECK(res, cv_context_enter(t->ctx) == CV_OK);
    long r = 1;
    for (;; r++) {
        if (t->owner_runs) {
            struct owner_round o = {t, r};
            CHECK(res, cv_context_run(t->ctx, owner_round_fn, &o) == CV_OK);
        } else {
            pattern_round(&t->p, r, res);
        }
        /* Keep writing until every reader has watched the context change
         * under it many times, so that reads really overlap writes. */
        if (r >= t->min_rounds && readers_satisfied(t) && now_seconds() >= t->min_end)
            break;
        if (now_seconds() > t->deadline)
            break;
    }
    if (!t->owner_runs)
        CHECK(res, cv_context_exit(t->ctx) == CV_OK);
    t->rounds = r;
    atomic_store(&t->done, true);
    return NULL;
}

static void run_readers_test(int nvars, bool owner_runs, bool owner_inherits, int only_step,
                             double min_seconds)
{
    struct readers_test *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    pattern_vars_init(&t->p, nvars);
    t->ctx = cv_context_new();
    t->owner_runs = owner_runs;
    t->only_step = only_step;
    t->min_rounds = 20;
    t->target = 40;
    t->min_end = now_seconds() + min_seconds;
    t->deadline = now_seconds() + 8 + min_seconds;
    t->nreaders = 2;
    pthread_t owner, readers[2];
    for (int i = 0; i < t->nreaders; i++) {
        t->readers[i].t = t;
        assert_int_equal(pthread_create(&readers[i], NULL, pattern_reader_main, &t->readers[i]), 0);
    }
    if (owner_inherits)
        assert_int_equal(cv_thread_create(&owner, NULL, pattern_owner_main, t), 0);
    else
        assert_int_equal(pthread_create(&owner, NULL, pattern_owner_main, t), 0);
    join(owner);
    for (int i = 0; i < t->nreaders; i++)
        join(readers[i]);

    assert_clean(&t->owner_res, "owner");
    for (int i = 0; i < t->nreaders; i++) {
        assert_clean(&t->readers[i].res, "reader");
        /* The reads did overlap the writes: several states were seen. */
        assert_true(t->readers[i].distinct >= 2);
    }
    print_message("  %ld rounds, reads %ld/%ld, distinct states %ld/%ld\n", t->rounds,
                  t->readers[0].reads, t->readers[1].reads, t->readers[0].distinct,
                  t->readers[1].distinct);
    assert_int_equal(cv_context_len(t->ctx), 0);
    cv_context_release(t->ctx);
    pattern_vars_release(&t->p);
    free(t);
    cv_reclaim_barrier();
}

static void test_readers_while_owner_sets(void **state)
{
    (void)state;
    run_readers_test(24, false, false, -1, 0.2);
}

static void test_readers_while_owner_runs(void **state)
{
    (void)state;
    run_readers_test(PAT_MAX, true, true, -1, 0.2);
}

/* Copies only, kept and read again long after (see struct kept_copy): a
 * copy taken while the owner replaces the root must hold a reference that
 * keeps that root alive, not one the reclaimer ignores. */
static void test_kept_copies_stay_valid(void **state)
{
    (void)state;
    run_readers_test(8, false, false, 0, 1.0);
}

/* The first foreign reader of a context meets an owner that has been
 * updating nodes in place: many fresh contexts, each read for the first
 * time while its owner writes. */
struct announce_test {
    struct pattern_vars p;
    pthread_mutex_t lock;
    cv_context_t *published;
    long generation;
    atomic_long taken; /* the generation the reader holds */
    atomic_bool done;
    long generations, rounds_per_generation;
    long contexts_read, reads;
    struct result owner_res, reader_res;
};

static void *announce_owner_main(void *arg)
{
    struct announce_test *t = arg;
    for (long g = 1; g <= t->generations; g++) {
        cv_context_t *c = cv_context_new();
        CHECK(&t->owner_res, cv_context_enter(c) == CV_OK);
        /* A few writes in place before anyone else looks. */
        pattern_round(&t->p, 1, &t->owner_res);
        pthread_mutex_lock(&t->lock);
        cv_context_retain(c);
        t->published = c;
        t->generation = g;
        pthread_mutex_unlock(&t->lock);
        double give_up = now_seconds() + 0.05;
        while (atomic_load(&t->taken) != g && now_seconds() < give_up)
            sched_yield();
        for (long r = 2; r <= t->rounds_per_generation; r++)
            pattern_round(&t->p, r, &t->owner_res);
        pthread_mutex_lock(&t->lock);
        t->published = NULL;
        pthread_mutex_unlock(&t->lock);
        cv_context_release(c); /* the published reference */
        CHECK(&t->owner_res, cv_context_exit(c) == CV_OK);
        cv_context_release(c);
    }
    atomic_store(&t->done, true);
    return NULL;
}

static void *announce_reader_main(void *arg)
{
    struct announce_test *t = arg;
    long seen_generation = 0, last_pos = 0, step = 0;
    uintptr_t v[PAT_MAX];
    while (!atomic_load(&t->done)) {
        pthread_mutex_lock(&t->lock);
        cv_context_t *c = t->published;
        long g = t->generation;
        if (c)
            cv_context_retain(c);
        pthread_mutex_unlock(&t->lock);
        if (!c) {
            sched_yield();
            continue;
        }
        atomic_store(&t->taken, g);
        if (g != seen_generation) {
            seen_generation = g;
            last_pos = 0;
            t->contexts_read++;
        }
        size_t count;
        if (step++ & 1) {
            cv_context_t *copy = cv_context_copy(c);
            CHECK(&t->reader_res, copy != NULL);
            CHECK(&t->reader_res, pattern_iterate(copy, &t->p, v, &count));
            CHECK(&t->reader_res, count == cv_context_len(copy));
            cv_context_release(copy);
        } else {
            CHECK(&t->reader_res, pattern_iterate(c, &t->p, v, &count));
            CHECK(&t->reader_res, count == present(v, t->p.n));
        }
        CHECK(&t->reader_res, pattern_advance(&last_pos, pattern_position(v, t->p.n), t->p.n));
        t->reads++;
        cv_context_release(c);
    }
    return NULL;
}

static void test_first_foreign_reader_meets_writes_in_place(void **state)
{
    (void)state;
    struct announce_test *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    pattern_vars_init(&t->p, 16);
    pthread_mutex_init(&t->lock, NULL);
    t->generations = 150;
    t->rounds_per_generation = 6;
    pthread_t owner, reader;
    assert_int_equal(pthread_create(&reader, NULL, announce_reader_main, t), 0);
    assert_int_equal(pthread_create(&owner, NULL, announce_owner_main, t), 0);
    join(owner);
    join(reader);
    assert_clean(&t->owner_res, "owner");
    assert_clean(&t->reader_res, "reader");
    print_message("  %ld contexts read, %ld reads\n", t->contexts_read, t->reads);
    assert_true(t->contexts_read > 0);
    pthread_mutex_destroy(&t->lock);
    pattern_vars_release(&t->p);
    free(t);
    cv_reclaim_barrier();
}

/* ------------------------------------------------------------- hand-offs */

struct handoff {
    cv_context_t *ctx;
    cv_var_t *x;
    pthread_barrier_t barrier;
    struct result res;
};

static void *handoff_creator_main(void *arg)
{
    struct handoff *h = arg;
    h->ctx = cv_context_new();
    CHECK(&h->res, cv_context_enter(h->ctx) == CV_OK);
    CHECK(&h->res, cv_set(h->x, VAL(1), NULL) == CV_OK);
    CHECK(&h->res, cv_context_exit(h->ctx) == CV_OK);
    return NULL;
}

static void *handoff_taker_main(void *arg)
{
    struct handoff *h = arg;
    void *v = NULL;
    CHECK(&h->res, cv_context_enter(h->ctx) == CV_OK);
    CHECK(&h->res, cv_get(h->x, &v) == CV_OK && v == VAL(1));
    CHECK(&h->res, cv_set(h->x, VAL(2), NULL) == CV_OK);
    CHECK(&h->res, cv_context_exit(h->ctx) == CV_OK);
    return NULL;
}

/* Created, entered and exited on one thread, entered on another, read on a
 * third. */
static void test_context_handed_between_threads(void **state)
{
    (void)state;
    struct handoff h = {0};
    h.x = cv_var_new("x", NULL);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, handoff_creator_main, &h), 0);
    join(t);
    assert_int_equal(pthread_create(&t, NULL, handoff_taker_main, &h), 0);
    join(t);
    assert_clean(&h.res, "hand-off");
    void *v = NULL;
    assert_int_equal(cv_context_get(h.ctx, h.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(2));
    assert_int_equal(cv_context_enter(h.ctx), CV_OK);
    assert_int_equal(cv_get(h.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(2));
    assert_int_equal(cv_context_exit(h.ctx), CV_OK);
    cv_context_release(h.ctx);
    cv_var_release(h.x);
}

/* Owners take turns (enter, a burst of sets, exit) while readers copy,
 * look up and iterate the context: between two owners it is unowned, and
 * its readers then count nothing, so the next owner must copy paths until
 * they are gone. Values encode (sequence << 8 | variable): a reader may
 * never see one that was not issued yet, nor a mixed snapshot. */
#define TURN_VARS 24

struct turns {
    cv_context_t *ctx;
    cv_var_t *vars[TURN_VARS];
    atomic_ulong issued[TURN_VARS];
    atomic_bool stop;
    struct result res[4];
};

struct turns_role {
    struct turns *tt;
    int me;
};

static void *turns_owner_main(void *arg)
{
    struct turns_role *role = arg;
    struct turns *tt = role->tt;
    unsigned seed = (unsigned)role->me * 7919u + 1u;
    while (!atomic_load(&tt->stop)) {
        if (cv_context_enter(tt->ctx) != CV_OK) {
            sched_yield();
            continue;
        }
        for (int k = 0; k < 100; k++) {
            seed = seed * 1103515245u + 12345u;
            int i = (int)((seed >> 16) % TURN_VARS);
            unsigned long seq = atomic_fetch_add(&tt->issued[i], 1) + 1;
            cv_token_t tok;
            CHECK(&tt->res[role->me],
                  cv_set(tt->vars[i], VAL(seq << 8 | (unsigned)i), &tok) == CV_OK);
            if (k % 4 == 0)
                CHECK(&tt->res[role->me], cv_reset(tt->vars[i], &tok) == CV_OK);
            else
                cv_token_discard(&tok);
        }
        CHECK(&tt->res[role->me], cv_context_exit(tt->ctx) == CV_OK);
        /* Pauses leave the context unowned, and without counted readers
         * for long enough that the next owner would update in place. */
        nanosleep(&(struct timespec){0, 200 * 1000}, NULL);
    }
    return NULL;
}

static bool turn_value_ok(struct turns *tt, int i, void *value)
{
    uintptr_t x = (uintptr_t)value;
    return (int)(x & 0xff) == i && (x >> 8) >= 1 && (x >> 8) <= atomic_load(&tt->issued[i]);
}

static int turn_var_index(struct turns *tt, cv_var_t *var)
{
    for (int i = 0; i < TURN_VARS; i++)
        if (tt->vars[i] == var)
            return i;
    return -1;
}

static void *turns_reader_main(void *arg)
{
    struct turns_role *role = arg;
    struct turns *tt = role->tt;
    struct result *res = &tt->res[role->me];
    unsigned seed = (unsigned)role->me;
    while (!atomic_load(&tt->stop)) {
        cv_context_t *copy = cv_context_copy(tt->ctx);
        CHECK(res, copy != NULL);
        if (!copy)
            continue;
        size_t seen = 0;
        cv_context_iter_t it;
        cv_context_iter_init(&it, copy);
        cv_var_t *var;
        void *value;
        while (cv_context_iter_next(&it, &var, &value)) {
            int i = turn_var_index(tt, var);
            CHECK(res, i >= 0 && turn_value_ok(tt, i, value));
            seen++;
        }
        cv_context_iter_fini(&it);
        CHECK(res, seen == cv_context_len(copy));
        for (int i = 0; i < TURN_VARS; i++) {
            if (cv_context_get(tt->ctx, tt->vars[i], &value) == CV_OK)
                CHECK(res, turn_value_ok(tt, i, value));
        }
        cv_context_release(copy);
        nanosleep(&(struct timespec){0, (long)(rand_r(&seed) % 500) * 1000}, NULL);
    }
    return NULL;
}

static void test_readers_while_owners_take_turns(void **state)
{
    (void)state;
    struct turns *tt = calloc(1, sizeof(*tt));
    assert_non_null(tt);
    tt->ctx = cv_context_new();
    for (int i = 0; i < TURN_VARS; i++)
        tt->vars[i] = cv_var_new("turn", NULL);
    struct turns_role roles[4];
    pthread_t threads[4];
    for (int r = 0; r < 4; r++) {
        roles[r] = (struct turns_role){tt, r};
        assert_int_equal(pthread_create(&threads[r], NULL,
                                        r < 2 ? turns_owner_main : turns_reader_main, &roles[r]),
                         0);
    }
    double end = now_seconds() + 1.0;
    while (now_seconds() < end)
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    atomic_store(&tt->stop, true);
    for (int r = 0; r < 4; r++)
        join(threads[r]);
    for (int r = 0; r < 4; r++)
        assert_clean(&tt->res[r], r < 2 ? "owner" : "reader");
    cv_context_release(tt->ctx);
    for (int i = 0; i < TURN_VARS; i++)
        cv_var_release(tt->vars[i]);
    free(tt);
    cv_reclaim_barrier();
}

struct ping_pong {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int turn;
    int rounds;
    cv_context_t *ctx;
    cv_var_t *x;
    struct result res[2];
};

struct ping_pong_player {
    struct ping_pong *pp;
    int me;
};

/* Two threads take turns entering one context and incrementing a counter
 * in it: each must see the other's last write, never its own cached one. */
static void *ping_pong_main(void *arg)
{
    struct ping_pong_player *pl = arg;
    struct ping_pong *pp = pl->pp;
    struct result *res = &pp->res[pl->me];
    for (int k = 0; k < pp->rounds; k++) {
        pthread_mutex_lock(&pp->lock);
        while (pp->turn != pl->me)
            pthread_cond_wait(&pp->cond, &pp->lock);
        pthread_mutex_unlock(&pp->lock);

        void *v = NULL;
        CHECK(res, cv_context_enter(pp->ctx) == CV_OK);
        CHECK(res, cv_get(pp->x, &v) == CV_OK && v == VAL(2 * k + pl->me));
        CHECK(res, cv_set(pp->x, VAL(2 * k + pl->me + 1), NULL) == CV_OK);
        CHECK(res, cv_get(pp->x, &v) == CV_OK && v == VAL(2 * k + pl->me + 1));
        CHECK(res, cv_context_exit(pp->ctx) == CV_OK);

        pthread_mutex_lock(&pp->lock);
        pp->turn = 1 - pl->me;
        pthread_cond_broadcast(&pp->cond);
        pthread_mutex_unlock(&pp->lock);
    }
    return NULL;
}

static void test_ping_pong(void **state)
{
    (void)state;
    struct ping_pong pp = {.rounds = 400};
    pthread_mutex_init(&pp.lock, NULL);
    pthread_cond_init(&pp.cond, NULL);
    pp.ctx = cv_context_new();
    pp.x = cv_var_new("x", NULL);
    assert_int_equal(cv_context_enter(pp.ctx), CV_OK);
    assert_int_equal(cv_set(pp.x, VAL(0), NULL), CV_OK);
    assert_int_equal(cv_context_exit(pp.ctx), CV_OK);
    struct ping_pong_player players[2] = {{&pp, 0}, {&pp, 1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, ping_pong_main, &players[i]), 0);
    for (int i = 0; i < 2; i++)
        join(t[i]);
    assert_clean(&pp.res[0], "ping");
    assert_clean(&pp.res[1], "pong");
    void *v = NULL;
    assert_int_equal(cv_context_get(pp.ctx, pp.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(2 * pp.rounds));
    cv_context_release(pp.ctx);
    cv_var_release(pp.x);
    pthread_mutex_destroy(&pp.lock);
    pthread_cond_destroy(&pp.cond);
}

/* ---------------------------------------------------------------- EBUSY */

struct busy {
    cv_context_t *ctx, *base;
    cv_var_t *x;
    pthread_barrier_t barrier;
    struct result res;
};

static void *busy_holder_main(void *arg)
{
    struct busy *b = arg;
    b->base = cv_context_current();
    cv_context_retain(b->base);
    CHECK(&b->res, cv_set(b->x, VAL(7), NULL) == CV_OK); /* in the base */
    CHECK(&b->res, cv_context_enter(b->ctx) == CV_OK);
    CHECK(&b->res, cv_set(b->x, VAL(8), NULL) == CV_OK);
    pthread_barrier_wait(&b->barrier); /* 1: both entered here */
    pthread_barrier_wait(&b->barrier); /* 2: the main thread tried */
    CHECK(&b->res, cv_context_exit(b->ctx) == CV_OK);
    pthread_barrier_wait(&b->barrier); /* 3: ctx is free, the base is not */
    pthread_barrier_wait(&b->barrier); /* 4 */
    return NULL;
}

static void not_called(void *arg)
{
    *(bool *)arg = true;
}

static void test_busy_in_another_thread(void **state)
{
    (void)state;
    struct busy b = {0};
    b.ctx = cv_context_new();
    b.x = cv_var_new("x", NULL);
    pthread_barrier_init(&b.barrier, NULL, 2);
    cv_context_t *mine = cv_context_new();
    assert_int_equal(cv_context_enter(mine), CV_OK);
    assert_int_equal(cv_set(b.x, VAL(1), NULL), CV_OK);

    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, busy_holder_main, &b), 0);
    pthread_barrier_wait(&b.barrier);
    bool called = false;
    assert_int_equal(cv_context_enter(b.ctx), CV_EBUSY);
    assert_int_equal(cv_context_run(b.ctx, not_called, &called), CV_EBUSY);
    assert_int_equal(cv_context_enter(b.base), CV_EBUSY);
    assert_int_equal(cv_context_run(b.base, not_called, &called), CV_EBUSY);
    assert_false(called);
    assert_int_equal(cv_context_exit(b.ctx), CV_ENOTCURRENT);
    /* Nothing changed for the caller. */
    assert_ptr_equal(cv_context_current(), mine);
    void *v = NULL;
    assert_int_equal(cv_get(b.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(1));
    /* Reading it is fine while it is entered elsewhere. */
    assert_int_equal(cv_context_get(b.ctx, b.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(8));
    pthread_barrier_wait(&b.barrier);
    pthread_barrier_wait(&b.barrier);
    assert_int_equal(cv_context_enter(b.ctx), CV_OK);
    assert_int_equal(cv_get(b.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(8));
    assert_int_equal(cv_context_exit(b.ctx), CV_OK);
    assert_int_equal(cv_context_enter(b.base), CV_EBUSY); /* its thread lives on */
    pthread_barrier_wait(&b.barrier);
    join(t);
    assert_clean(&b.res, "holder");
    /* The thread is gone: its base context is free to enter. */
    assert_int_equal(cv_context_enter(b.base), CV_OK);
    assert_int_equal(cv_get(b.x, &v), CV_OK);
    assert_ptr_equal(v, VAL(7));
    assert_int_equal(cv_context_exit(b.base), CV_OK);

    assert_int_equal(cv_context_exit(mine), CV_OK);
    cv_context_release(mine);
    cv_context_release(b.base);
    cv_context_release(b.ctx);
    cv_var_release(b.x);
    pthread_barrier_destroy(&b.barrier);
}

/* ------------------------------------------------------- thread exit */

struct exiter {
    cv_context_t *c1, *c2, *c3, *c4;
    cv_context_t *base;
    cv_var_t *x;
    struct result res;
};

static void *exit_with_entered_main(void *arg)
{
    struct exiter *e = arg;
    CHECK(&e->res, cv_context_enter(e->c1) == CV_OK);
    CHECK(&e->res, cv_set(e->x, VAL(1), NULL) == CV_OK);
    CHECK(&e->res, cv_context_enter(e->c2) == CV_OK);
    CHECK(&e->res, cv_set(e->x, VAL(2), NULL) == CV_OK);
    return NULL; /* both still entered */
}

static void exit_inside_run_fn(void *arg)
{
    struct exiter *e = arg;
    CHECK(&e->res, cv_set(e->x, VAL(3), NULL) == CV_OK);
    CHECK(&e->res, cv_context_enter(e->c4) == CV_OK);
    CHECK(&e->res, cv_set(e->x, VAL(4), NULL) == CV_OK);
    pthread_exit(NULL);
}

static void *exit_inside_run_main(void *arg)
{
    struct exiter *e = arg;
    cv_context_run(e->c3, exit_inside_run_fn, e);
    record_failure(&e->res, __LINE__, "pthread_exit returned");
    return NULL;
}

static void *exit_from_base_main(void *arg)
{
    struct exiter *e = arg;
    CHECK(&e->res, cv_set(e->x, VAL(5), NULL) == CV_OK);
    e->base = cv_context_current();
    cv_context_retain(e->base);
    return NULL;
}

static void expect_enter_and_value(cv_context_t *ctx, cv_var_t *x, uintptr_t expected)
{
    void *v = NULL;
    assert_int_equal(cv_context_get(ctx, x, &v), CV_OK);
    assert_ptr_equal(v, VAL(expected));
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_get(x, &v), CV_OK);
    assert_ptr_equal(v, VAL(expected));
    assert_int_equal(cv_context_exit(ctx), CV_OK);
}

#ifdef CV_TEST_COUNTING_ALLOCATOR
static void expect_enter_and_value_after_set(cv_context_t *ctx, cv_var_t *x)
{
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    expect_enter_and_value(ctx, x, 1);
}
#endif

/* A thread that ends with contexts still entered gives them up: another
 * thread can enter them and finds what the dead thread set. Each context
 * is held by one reference of the main thread only, so a release too many
 * at exit frees it under our feet (ASan: use after free; counted build:
 * live bytes off). */
static void test_thread_exit_with_entered_contexts(void **state)
{
    (void)state;
    struct exiter e = {0};
    e.x = cv_var_new("x", NULL);
    e.c1 = cv_context_new();
    e.c2 = cv_context_new();
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, exit_with_entered_main, &e), 0);
    join(t);
    assert_clean(&e.res, "exiting thread");
    expect_enter_and_value(e.c1, e.x, 1);
    expect_enter_and_value(e.c2, e.x, 2);
    cv_context_release(e.c1);
    cv_context_release(e.c2);

    assert_int_equal(cv_thread_create(&t, NULL, exit_from_base_main, &e), 0);
    join(t);
    assert_clean(&e.res, "exiting thread");
    expect_enter_and_value(e.base, e.x, 5);
    cv_context_release(e.base);
    cv_var_release(e.x);
    cv_reclaim_barrier();
}

/* The same when the thread ends inside cv_context_run (pthread_exit from
 * fn), with one more context entered on top. */
static void test_thread_exit_inside_run(void **state)
{
    (void)state;
    struct exiter e = {0};
    e.x = cv_var_new("x", NULL);
#ifdef CV_TEST_COUNTING_ALLOCATOR
    /* What stays: the main thread's cache entry for x. */
    e.c3 = cv_context_new();
    expect_enter_and_value_after_set(e.c3, e.x);
    cv_context_release(e.c3);
    cv_reclaim_barrier();
    long baseline = counted_live_bytes();
#endif
    for (int creator = 0; creator < 2; creator++) {
        e.c3 = cv_context_new();
        e.c4 = cv_context_new();
        pthread_t t;
        if (creator)
            assert_int_equal(cv_thread_create(&t, NULL, exit_inside_run_main, &e), 0);
        else
            assert_int_equal(pthread_create(&t, NULL, exit_inside_run_main, &e), 0);
        join(t);
        assert_clean(&e.res, "exiting thread");
        expect_enter_and_value(e.c3, e.x, 3);
        expect_enter_and_value(e.c4, e.x, 4);
        cv_context_release(e.c3);
        cv_context_release(e.c4);
    }
    cv_reclaim_barrier();
#ifdef CV_TEST_COUNTING_ALLOCATOR
    if (counted_live_bytes() != baseline)
        fail_msg("%ld bytes live, %ld before the threads", counted_live_bytes(), baseline);
#endif
    cv_var_release(e.x);
}

/* ------------------------------------------------------------ hooks */

#define NOBJ 32

struct obj {
    atomic_int refs;
};

static struct obj objs[NOBJ];
static struct obj default_obj;
static atomic_int hook_underflows, hook_strangers, hook_retains;

static struct obj *as_obj(void *value)
{
    struct obj *o = value;
    if (o < objs || o >= objs + NOBJ) {
        atomic_fetch_add(&hook_strangers, 1);
        return NULL;
    }
    return o;
}

static void obj_retain(void *value)
{
    struct obj *o = as_obj(value);
    if (o) {
        atomic_fetch_add(&o->refs, 1);
        atomic_fetch_add(&hook_retains, 1);
    }
}

static void obj_release(void *value)
{
    struct obj *o = as_obj(value);
    if (o && atomic_fetch_sub(&o->refs, 1) <= 0)
        atomic_fetch_add(&hook_underflows, 1);
}

/* Every value's count, and the hooks' own counts, back to zero. */
static void reset_hook_counts(void)
{
    for (int i = 0; i < NOBJ; i++)
        atomic_init(&objs[i].refs, 0);
    atomic_store(&hook_underflows, 0);
    atomic_store(&hook_strangers, 0);
    atomic_store(&hook_retains, 0);
}

/* Every reference the hooks counted was dropped, none twice, and no value
 * they did not know came by. */
static void assert_hooks_balanced(void)
{
    for (int i = 0; i < NOBJ; i++) {
        if (atomic_load(&objs[i].refs) != 0)
            fail_msg("value %d still holds %d references", i, atomic_load(&objs[i].refs));
    }
    assert_int_equal(atomic_load(&hook_underflows), 0);
    assert_int_equal(atomic_load(&hook_strangers), 0);
}

struct hooks_test {
    cv_var_t *h;
    pthread_mutex_t lock;
    cv_context_t *shared;
    struct result res[4];
    int index[4];
};

static struct hooks_test hooks_test;

struct hooks_inner_arg {
    int k;
    struct result *res;
};

static void hooks_inner(void *arg)
{
    struct hooks_inner_arg *a = arg;
    cv_token_t tok;
    CHECK(a->res, cv_set(hooks_test.h, &objs[(a->k * 5) % NOBJ], &tok) == CV_OK);
    cv_token_discard(&tok);
}

static void *hooks_worker_main(void *arg)
{
    int i = *(int *)arg;
    struct result *res = &hooks_test.res[i];
    void *v = NULL;
    CHECK(res, cv_get(hooks_test.h, &v) == CV_OK && v == &objs[0]);
    for (int k = 0; k < 120; k++) {
        struct obj *o = &objs[(i * 7 + k) % NOBJ];
        cv_token_t tok;
        CHECK(res, cv_set(hooks_test.h, o, &tok) == CV_OK);
        CHECK(res, cv_get(hooks_test.h, &v) == CV_OK && v == o);
        cv_context_t *copy = cv_copy_context();
        struct hooks_inner_arg inner = {k, res};
        CHECK(res, cv_context_run(copy, hooks_inner, &inner) == CV_OK);
        pthread_mutex_lock(&hooks_test.lock);
        cv_context_t *old = hooks_test.shared;
        hooks_test.shared = copy;
        pthread_mutex_unlock(&hooks_test.lock);
        if (old) {
            /* Another thread's context, read and copied here. */
            cv_context_t *again = cv_context_copy(old);
            CHECK(res, cv_context_equal(again, old));
            cv_context_release(again);
            cv_context_release(old);
        }
        if (k & 1)
            CHECK(res, cv_reset(hooks_test.h, &tok) == CV_OK);
        else
            cv_token_discard(&tok);
    }
    /* Some threads end with a context entered that holds hooked values,
     * and with a live token: exit cleanup must drop the context's share. */
    if (i & 1) {
        cv_context_t *c = cv_context_new();
        CHECK(res, cv_context_enter(c) == CV_OK);
        CHECK(res, cv_set(hooks_test.h, &objs[i], NULL) == CV_OK);
        cv_context_release(c); /* the stack's reference keeps it alive */
    }
    return NULL;
}

static void hooks_spawn(void *arg)
{
    pthread_t *threads = arg;
    for (int i = 0; i < 4; i++) {
        hooks_test.index[i] = i;
        if (cv_thread_create(&threads[i], NULL, hooks_worker_main, &hooks_test.index[i]) != 0)
            threads[i] = 0;
    }
}

/* Every retain the library makes is matched by one release once
 * everything is dropped and cv_reclaim_barrier has returned, wherever the
 * releases ran; the default value is never touched. */
static void test_hook_balance_across_threads(void **state)
{
    (void)state;
    memset(&hooks_test, 0, sizeof(hooks_test));
    pthread_mutex_init(&hooks_test.lock, NULL);
    reset_hook_counts();
    hooks_test.h = cv_var_new("hooked", &(cv_var_opts_t){.default_value = &default_obj,
                                                         .has_default = true,
                                                         .retain = obj_retain,
                                                         .release = obj_release});
    cv_context_t *m = cv_context_new();
    assert_int_equal(cv_context_enter(m), CV_OK);
    assert_int_equal(cv_set(hooks_test.h, &objs[0], NULL), CV_OK);
    assert_int_equal(cv_context_exit(m), CV_OK);
    pthread_t threads[4];
    assert_int_equal(cv_context_run(m, hooks_spawn, threads), CV_OK);
    for (int i = 0; i < 4; i++) {
        assert_true(threads[i] != 0);
        join(threads[i]);
    }
    for (int i = 0; i < 4; i++)
        assert_clean(&hooks_test.res[i], "hooks worker");
    cv_context_release(hooks_test.shared);
    cv_context_release(m);
    cv_reclaim_barrier();
    assert_true(atomic_load(&hook_retains) > 0);
    assert_hooks_balanced();
    cv_var_release(hooks_test.h);
    pthread_mutex_destroy(&hooks_test.lock);
}

/* Barriers while other threads keep retiring: a barrier flushes every
 * thread's pending list, including lists their owners are appending to. */
struct barrier_test {
    cv_context_t *ctx;
    cv_var_t *h;
    atomic_bool stop;
    atomic_long sets;
    long barriers;
    struct result owner_res;
};

struct barrier_reader {
    struct barrier_test *b;
    long reads;
    struct result res;
};

static void *barrier_owner_main(void *arg)
{
    struct barrier_test *b = arg;
    CHECK(&b->owner_res, cv_context_enter(b->ctx) == CV_OK);
    for (long k = 0; !atomic_load(&b->stop); k++) {
        CHECK(&b->owner_res, cv_set(b->h, &objs[k % NOBJ], NULL) == CV_OK);
        atomic_fetch_add_explicit(&b->sets, 1, memory_order_relaxed);
    }
    CHECK(&b->owner_res, cv_context_exit(b->ctx) == CV_OK);
    return NULL;
}

static void *barrier_reader_main(void *arg)
{
    struct barrier_reader *r = arg;
    struct barrier_test *b = r->b;
    while (!atomic_load(&b->stop)) {
        /* Constant lookups keep the owner copying paths, whose old nodes
         * are retired through RCU rather than freed at once. */
        for (int i = 0; i < 64; i++) {
            void *v = NULL;
            cv_status_t st = cv_context_get(b->ctx, b->h, &v);
            CHECK(&r->res, st == CV_ENOVALUE || (st == CV_OK && as_obj(v) != NULL));
        }
        cv_context_t *copy = cv_context_copy(b->ctx);
        CHECK(&r->res, cv_context_len(copy) <= 1);
        cv_context_release(copy);
        r->reads++;
    }
    return NULL;
}

static void *barrier_caller_main(void *arg)
{
    struct barrier_test *b = arg;
    for (int i = 0; i < 12; i++) {
        /* Each barrier overlaps fresh retirements. */
        long target = atomic_load(&b->sets) + 500;
        double give_up = now_seconds() + 5;
        while (atomic_load(&b->sets) < target && now_seconds() < give_up)
            sched_yield();
        cv_reclaim_barrier();
        b->barriers++;
    }
    atomic_store(&b->stop, true);
    return NULL;
}

static void test_barrier_while_others_retire(void **state)
{
    (void)state;
    reset_hook_counts();
    struct barrier_test b = {0};
    b.ctx = cv_context_new();
    b.h = cv_var_new("hooked", &(cv_var_opts_t){.retain = obj_retain, .release = obj_release});
    pthread_t owner, reader[2], caller;
    struct barrier_reader readers[2] = {{.b = &b}, {.b = &b}};
    assert_int_equal(pthread_create(&owner, NULL, barrier_owner_main, &b), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&reader[i], NULL, barrier_reader_main, &readers[i]), 0);
    assert_int_equal(pthread_create(&caller, NULL, barrier_caller_main, &b), 0);
    join(caller);
    join(owner);
    for (int i = 0; i < 2; i++)
        join(reader[i]);
    assert_clean(&b.owner_res, "owner");
    for (int i = 0; i < 2; i++) {
        assert_clean(&readers[i].res, "reader");
        assert_true(readers[i].reads > 0);
    }
    assert_int_equal(b.barriers, 12);
    assert_true(atomic_load(&b.sets) >= 12 * 500);
    cv_context_release(b.ctx);
    cv_reclaim_barrier();
    assert_hooks_balanced();
    cv_var_release(b.h);
}

/* A barrier owes the releases of nodes that a thread has taken off its
 * list to hand over and not handed over yet: the writer's flush pauses in
 * that window, and the barrier called meanwhile must wait for it. */
struct in_hand_test {
    cv_context_t *ctx;
    cv_var_t *h;
    atomic_bool paused, resumed, checked;
    struct result writer_res;
};

static struct in_hand_test *in_hand;
static _Thread_local bool pauses_its_flush;

static void pause_writer_flush(void)
{
    if (!pauses_its_flush || atomic_exchange(&in_hand->paused, true))
        return;
    struct timespec pause = {0, 50 * 1000 * 1000};
    nanosleep(&pause, NULL);
    atomic_store(&in_hand->resumed, true);
}

static void *in_hand_writer_main(void *arg)
{
    struct in_hand_test *t = arg;
    pauses_its_flush = true;
    CHECK(&t->writer_res, cv_context_enter(t->ctx) == CV_OK);
    for (long k = 0; !atomic_load(&t->resumed) && !atomic_load(&t->checked); k++)
        CHECK(&t->writer_res, cv_set(t->h, &objs[k % NOBJ], NULL) == CV_OK);
    /* Nothing more to retire until the main thread has counted. */
    while (!atomic_load(&t->checked))
        sched_yield();
    CHECK(&t->writer_res, cv_context_exit(t->ctx) == CV_OK);
    return NULL;
}

static void *in_hand_reader_main(void *arg)
{
    struct in_hand_test *t = arg;
    /* Reads from outside keep the writer copying paths and retiring the
     * old roots through RCU; they take no reference to a value. */
    while (!atomic_load(&t->checked))
        (void)cv_context_len(t->ctx);
    return NULL;
}

static int live_obj_refs(void)
{
    int live = 0;
    for (int i = 0; i < NOBJ; i++)
        live += atomic_load(&objs[i].refs);
    return live;
}

static void test_barrier_waits_for_lists_in_hand(void **state)
{
    (void)state;
    reset_hook_counts();
    struct in_hand_test t = {0};
    t.ctx = cv_context_new();
    t.h = cv_var_new("hooked", &(cv_var_opts_t){.retain = obj_retain, .release = obj_release});
    in_hand = &t;
    cv_testing_pause_in_flush(pause_writer_flush);
    pthread_t writer, reader;
    assert_int_equal(pthread_create(&reader, NULL, in_hand_reader_main, &t), 0);
    assert_int_equal(pthread_create(&writer, NULL, in_hand_writer_main, &t), 0);
    double give_up = now_seconds() + 20;
    while (!atomic_load(&t.paused) && now_seconds() < give_up)
        sched_yield();
    bool paused = atomic_load(&t.paused);
    cv_reclaim_barrier();
    bool resumed_first = atomic_load(&t.resumed);
    /* Only the writer's current root still holds a value. */
    int live = live_obj_refs();
    atomic_store(&t.checked, true);
    join(writer);
    join(reader);
    cv_testing_pause_in_flush(NULL);
    in_hand = NULL;
    assert_clean(&t.writer_res, "writer");
    assert_true(paused);
    assert_true(resumed_first);
    assert_int_equal(live, 1);
    cv_context_release(t.ctx);
    cv_reclaim_barrier();
    assert_hooks_balanced();
    cv_var_release(t.h);
}

/* --------------------------------------------- counted: exact balance */

#ifdef CV_TEST_COUNTING_ALLOCATOR
static void *churn_main(void *arg)
{
    struct exiter *e = arg;
    for (int k = 0; k < 50; k++) {
        cv_token_t tok;
        CHECK(&e->res, cv_set(e->x, VAL(k + 1), &tok) == CV_OK);
        cv_context_t *copy = cv_copy_context();
        CHECK(&e->res, cv_context_enter(copy) == CV_OK);
        CHECK(&e->res, cv_set(e->x, VAL(1000 + k), NULL) == CV_OK);
        CHECK(&e->res, cv_context_exit(copy) == CV_OK);
        cv_context_release(copy);
        CHECK(&e->res, cv_reset(e->x, &tok) == CV_OK);
    }
    CHECK(&e->res, cv_context_enter(e->c1) == CV_OK); /* left entered */
    CHECK(&e->res, cv_set(e->x, VAL(9), NULL) == CV_OK);
    return NULL;
}

/* Every byte that threads allocated comes back once they have exited,
 * their contexts are released and the grace periods have run. */
static void test_thread_exits_leave_nothing(void **state)
{
    (void)state;
    struct exiter e = {0};
    e.x = cv_var_new("x", NULL);
    /* Warm up what stays: the main thread's cache entry for x, the slot
     * table, liburcu's batch machinery. */
    cv_context_t *warm = cv_context_new();
    assert_int_equal(cv_context_enter(warm), CV_OK);
    assert_int_equal(cv_set(e.x, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_context_exit(warm), CV_OK);
    cv_context_release(warm);
    cv_reclaim_barrier();
    long baseline = counted_live_bytes();

    for (int round = 0; round < 3; round++) {
        e.c1 = cv_context_new();
        e.c2 = cv_context_new();
        e.c3 = cv_context_new();
        e.c4 = cv_context_new();
        pthread_t t[4];
        assert_int_equal(pthread_create(&t[0], NULL, exit_with_entered_main, &e), 0);
        join(t[0]);
        /* (Exits inside a run: test_thread_exit_inside_run.) */
        assert_int_equal(cv_thread_create(&t[2], NULL, exit_from_base_main, &e), 0);
        join(t[2]);
        cv_context_release(e.c1);
        e.c1 = cv_context_new();
        assert_int_equal(cv_thread_create(&t[3], NULL, churn_main, &e), 0);
        join(t[3]);
        assert_clean(&e.res, "exiting threads");
        cv_context_t *all[] = {e.c1, e.c2, e.c3, e.c4, e.base};
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
            cv_context_release(all[i]);
        cv_reclaim_barrier();
        if (counted_live_bytes() != baseline)
            fail_msg("round %d: %ld bytes live, %ld before the threads", round,
                     counted_live_bytes(), baseline);
    }
    cv_var_release(e.x);
}
#endif

int main(void)
{
#ifdef CV_TEST_COUNTING_ALLOCATOR
    /* Before any other call of the library, as the contract requires. */
    cv_allocator_t counting = {counting_alloc, counting_free, NULL};
    if (cv_set_allocator(&counting) != CV_OK) {
        fprintf(stderr, "cv_set_allocator failed before any other call\n");
        return 1;
    }
#endif
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_inherits_a_copy),
        cmocka_unit_test(test_plain_thread_starts_empty),
        cmocka_unit_test(test_readers_while_owner_sets),
        cmocka_unit_test(test_readers_while_owner_runs),
        cmocka_unit_test(test_kept_copies_stay_valid),
        cmocka_unit_test(test_first_foreign_reader_meets_writes_in_place),
        cmocka_unit_test(test_context_handed_between_threads),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_readers_while_owners_take_turns),
        cmocka_unit_test(test_busy_in_another_thread),
        cmocka_unit_test(test_thread_exit_with_entered_contexts),
        cmocka_unit_test(test_thread_exit_inside_run),
        cmocka_unit_test(test_hook_balance_across_threads),
        cmocka_unit_test(test_barrier_while_others_retire),
        cmocka_unit_test(test_barrier_waits_for_lists_in_hand),
#ifdef CV_TEST_COUNTING_ALLOCATOR
        cmocka_unit_test(test_thread_exits_leave_nothing),
#endif
    };
    return cv_test_run_selected(GROUP_NAME, tests, sizeof(tests) / sizeof(tests[0]));
}
