/*
 * The lookup cache behind cv_get: the inline fast path of ctxvars.h must
 * never answer with a value that a full lookup in the current context
 * would not give. Every way the answer can change is exercised: set,
 * reset, enter, exit, run entry and return, other threads, variables freed
 * and created again in a reused slot, contexts with the same history or
 * the same map, a map changed in place by another thread.
 *
 * Every read goes through check_get, which asks the inline macro (twice:
 * cold, then warm), the exported function and cv_get_or, and wants the
 * same answer from all. Built twice: test_cache with the inline get, and
 * test_cache_noinline with CV_NO_INLINE, where the macros are gone.
 */
#define _GNU_SOURCE /* pthread barriers in -std=c11 */
#include <ctxvars.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "run_selected.h"
#include "testing.h"

#include <pthread.h>

#define GROUP_NAME "test_cache"
#define VAL(x) ((void *)(uintptr_t)(x))
#define FALLBACK VAL(0xfa11bac)

/* ------------------------------------------------------------- helpers */

static uint64_t rng_state;

static void rng_seed(const char *test)
{
    const char *env = getenv("CV_TEST_SEED");
    rng_state = env ? strtoull(env, NULL, 0) : 0x9e3779b97f4a7c15ull;
    if (!rng_state)
        rng_state = 1;
    print_message("%s: seed 0x%llx\n", test, (unsigned long long)rng_state);
}

static uint32_t rnd_below(uint32_t n)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 33) % n;
}

/* What cv_get should say: a value, the default, or nothing. */
enum expect_kind { HAS_VALUE, HAS_DEFAULT, NO_VALUE };

/* Returns a description of the first disagreement, or NULL. Safe on any
 * thread (no cmocka calls). */
static const char *get_mismatch(cv_var_t *var, enum expect_kind kind, void *expected)
{
    void *want = kind == NO_VALUE ? VAL(0x5e7) : expected;
    cv_status_t want_status = kind == NO_VALUE ? CV_ENOVALUE : CV_OK;
    void *want_or = kind == HAS_VALUE ? expected : FALLBACK;
    for (int round = 0; round < 2; round++) {
        void *out = VAL(0x5e7);
        if (cv_get(var, &out) != want_status || out != want)
            return "cv_get";
        out = VAL(0x5e7);
        if ((cv_get)(var, &out) != want_status || out != want)
            return "(cv_get)";
        if (cv_get_or(var, FALLBACK) != want_or)
            return "cv_get_or";
        if ((cv_get_or)(var, FALLBACK) != want_or)
            return "(cv_get_or)";
    }
    return NULL;
}

static void check_get_at(cv_var_t *var, enum expect_kind kind, void *expected, int line)
{
    const char *what = get_mismatch(var, kind, expected);
    if (what) {
        void *out = NULL;
        cv_status_t st = cv_get(var, &out);
        fail_msg("line %d: %s disagrees: wanted %s %p, cv_get says status %d value %p", line, what,
                 kind == HAS_VALUE     ? "value"
                 : kind == HAS_DEFAULT ? "default"
                                       : "nothing",
                 expected, st, out);
    }
}

#define check_value(var, v) check_get_at((var), HAS_VALUE, (v), __LINE__)
#define check_default(var, v) check_get_at((var), HAS_DEFAULT, (v), __LINE__)
#define check_none(var) check_get_at((var), NO_VALUE, NULL, __LINE__)

static cv_var_t *new_var(const char *name)
{
    cv_var_t *var = cv_var_new(name, NULL);
    assert_non_null(var);
    return var;
}

/* Each test runs in a context of its own, so the main thread's base stays
 * as it was for the next one. */
static cv_context_t *test_ctx;

static int enter_test_ctx(void **state)
{
    (void)state;
    test_ctx = cv_context_new();
    return test_ctx && cv_context_enter(test_ctx) == CV_OK ? 0 : -1;
}

static int exit_test_ctx(void **state)
{
    (void)state;
    cv_status_t st = cv_context_exit(test_ctx);
    cv_context_release(test_ctx);
    return st == CV_OK ? 0 : -1;
}

/* ----------------------------------------------------- deterministic */

static void test_build_flavour(void **state)
{
    (void)state;
#ifdef CV_NO_INLINE
#ifdef cv_get
    fail_msg("CV_NO_INLINE still defines the cv_get macro");
#endif
    print_message("  calling the library for every get (CV_NO_INLINE)\n");
#else
#ifndef cv_get
    fail_msg("the inline cv_get macro is missing");
#endif
#endif
    /* &cv_get names the exported function in both builds. */
    cv_status_t (*fn)(cv_var_t *, void **) = &cv_get;
    cv_var_t *x = new_var("x");
    void *out = NULL;
    assert_int_equal(cv_set(x, VAL(3), NULL), CV_OK);
    assert_int_equal(fn(x, &out), CV_OK);
    assert_ptr_equal(out, VAL(3));
    assert_int_equal(cv_get(NULL, &out), CV_EINVAL);
    assert_int_equal(cv_get(x, NULL), CV_EINVAL);
    assert_ptr_equal(cv_get_or(NULL, FALLBACK), FALLBACK);
    cv_var_release(x);
}

static void test_set_and_reset(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x");
    cv_var_t *d = cv_var_new("d", &(cv_var_opts_t){.default_value = VAL(0xd), .has_default = true});
    check_none(x);
    check_default(d, VAL(0xd));
    cv_token_t t1, t2, t3, td;
    assert_int_equal(cv_set(x, VAL(1), &t1), CV_OK);
    check_value(x, VAL(1));
    assert_int_equal(cv_set(x, VAL(2), &t2), CV_OK);
    check_value(x, VAL(2));
    assert_int_equal(cv_set(x, VAL(2), NULL), CV_OK); /* same value again */
    check_value(x, VAL(2));
    assert_int_equal(cv_set(x, NULL, &t3), CV_OK);
    check_value(x, NULL);
    assert_int_equal(cv_set(d, VAL(4), &td), CV_OK);
    check_value(d, VAL(4));
    /* Out of order: t2 restores 1, then t3 restores 2, then t1 removes. */
    assert_int_equal(cv_reset(x, &t2), CV_OK);
    check_value(x, VAL(1));
    assert_int_equal(cv_reset(x, &t3), CV_OK);
    check_value(x, VAL(2));
    assert_int_equal(cv_reset(x, &t1), CV_OK);
    check_none(x);
    assert_int_equal(cv_reset(d, &td), CV_OK);
    check_default(d, VAL(0xd));
    /* Failed resets change nothing. */
    assert_int_equal(cv_set(x, VAL(5), &t1), CV_OK);
    assert_int_equal(cv_reset(x, &t2), CV_ETOKEN_USED);
    assert_int_equal(cv_reset(d, &t1), CV_ETOKEN_VAR);
    check_value(x, VAL(5));
    check_default(d, VAL(0xd));
    assert_int_equal(cv_reset(x, &t1), CV_OK);
    check_none(x);
    cv_var_release(x);
    cv_var_release(d);
}

static void test_enter_and_exit(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x"), *y = new_var("y");
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
    cv_context_t *a = cv_context_new(), *b = cv_copy_context();
    for (int round = 0; round < 50; round++) {
        check_value(x, VAL(1)); /* warm in the outer context */
        check_none(y);
        assert_int_equal(cv_context_enter(a), CV_OK);
        check_none(x);
        assert_int_equal(cv_set(y, VAL(10 + round), NULL), CV_OK);
        check_value(y, VAL(10 + round));
        assert_int_equal(cv_context_enter(b), CV_OK);
        /* b began as a copy of the outer context; then its own sets. */
        check_value(x, round == 0 ? VAL(1) : VAL(100 + round - 1));
        check_none(y);
        assert_int_equal(cv_set(x, VAL(100 + round), NULL), CV_OK);
        check_value(x, VAL(100 + round));
        assert_int_equal(cv_context_exit(b), CV_OK);
        check_none(x);
        check_value(y, VAL(10 + round));
        assert_int_equal(cv_context_exit(a), CV_OK);
        check_value(x, VAL(1));
        check_none(y);
        /* A refused enter or exit changes nothing either. */
        assert_int_equal(cv_context_enter(test_ctx), CV_EBUSY);
        assert_int_equal(cv_context_exit(a), CV_ENOTCURRENT);
        check_value(x, VAL(1));
    }
    cv_context_release(a);
    cv_context_release(b);
    cv_var_release(x);
    cv_var_release(y);
}

struct run_arg {
    cv_var_t *x;
    int depth;
    cv_context_t *inner;
    bool ok;
};

static void run_body(void *arg)
{
    struct run_arg *r = arg;
    /* Entry: the run's context, where x is 2 (set by an earlier run) or
     * absent (first time in). */
    void *out = NULL;
    bool present = cv_get(r->x, &out) == CV_OK;
    r->ok = !present || out == VAL(2);
    r->ok &= cv_set(r->x, VAL(2), NULL) == CV_OK && cv_get_or(r->x, NULL) == VAL(2);
    if (r->depth == 0 && r->inner) {
        struct run_arg nested = {r->x, 1, NULL, false};
        r->ok &= cv_context_run(r->inner, run_body, &nested) == CV_OK && nested.ok;
        /* Back from the nested run: our own value, not the inner one. */
        r->ok &= cv_get_or(r->x, NULL) == VAL(2);
        r->ok &= cv_set(r->x, VAL(3), NULL) == CV_OK && cv_get_or(r->x, NULL) == VAL(3);
        r->ok &= cv_set(r->x, VAL(2), NULL) == CV_OK;
    }
}

static void test_run_entry_and_return(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x");
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
    cv_context_t *c = cv_context_new(), *inner = cv_context_new();
    for (int round = 0; round < 50; round++) {
        check_value(x, VAL(1));
        struct run_arg r = {x, 0, inner, false};
        assert_int_equal(cv_context_run(c, run_body, &r), CV_OK);
        assert_true(r.ok);
        check_value(x, VAL(1));
    }
    void *out;
    assert_int_equal(cv_context_get(c, x, &out), CV_OK);
    assert_ptr_equal(out, VAL(2));
    cv_context_release(c);
    cv_context_release(inner);
    cv_var_release(x);
}

struct leave {
    cv_context_t *left;
    cv_var_t *x;
    bool ok;
};

static void leave_entered(void *arg)
{
    struct leave *l = arg;
    l->ok = cv_context_enter(l->left) == CV_OK && cv_set(l->x, VAL(9), NULL) == CV_OK &&
            cv_get_or(l->x, NULL) == VAL(9);
}

/* A run whose function leaves a context entered still restores the
 * caller's view, and the cache must follow. */
static void test_run_that_leaves_a_context_entered(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x");
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
    check_value(x, VAL(1));
    cv_context_t *c = cv_context_new(), *left = cv_context_new();
    struct leave l = {left, x, false};
    assert_int_equal(cv_context_run(c, leave_entered, &l), CV_ENOTCURRENT);
    assert_true(l.ok);
    check_value(x, VAL(1));
    assert_int_equal(cv_context_enter(left), CV_OK); /* it was exited */
    check_value(x, VAL(9));
    assert_int_equal(cv_context_exit(left), CV_OK);
    check_value(x, VAL(1));
    cv_context_release(c);
    cv_context_release(left);
    cv_var_release(x);
}

static uint32_t slot_of(const cv_var_t *var)
{
    return ((const struct cv_private_var_head *)(const void *)var)->cache_offset /
           (uint32_t)sizeof(struct cv_private_cache_entry);
}

/* A freed variable's slot goes to the next new variable: the new one must
 * not inherit the cached value of the old. */
static void test_reused_slot(void **state)
{
    (void)state;
    for (int round = 0; round < 20; round++) {
        cv_var_t *old = new_var("old");
        uint32_t slot = slot_of(old);
        cv_token_t tok;
        assert_int_equal(cv_set(old, VAL(0x01d), &tok), CV_OK);
        check_value(old, VAL(0x01d));
        assert_int_equal(cv_reset(old, &tok), CV_OK);
        cv_var_release(old); /* nothing holds it: freed, slot free */
        cv_var_t *fresh = cv_var_new(
            "fresh",
            round & 1 ? &(cv_var_opts_t){.default_value = VAL(7), .has_default = true} : NULL);
        assert_int_equal(slot_of(fresh), slot); /* the case under test */
        if (round & 1)
            check_default(fresh, VAL(7));
        else
            check_none(fresh);
        assert_int_equal(cv_set(fresh, VAL(0xf2e5), NULL), CV_OK);
        check_value(fresh, VAL(0xf2e5));
        cv_token_t ftok;
        assert_int_equal(cv_set(fresh, VAL(0xf2e6), &ftok), CV_OK);
        assert_int_equal(cv_reset(fresh, &ftok), CV_OK);
        check_value(fresh, VAL(0xf2e5));
        cv_var_release(fresh); /* still held by test_ctx: slot stays taken */
    }

    /* The old variable dies with the last context that held it, while the
     * thread's view does not change at all. */
    cv_var_t *old = new_var("old");
    uint32_t slot = slot_of(old);
    cv_context_t *holder = cv_context_new();
    assert_int_equal(cv_context_enter(holder), CV_OK);
    assert_int_equal(cv_set(old, VAL(0x01d), NULL), CV_OK);
    check_value(old, VAL(0x01d));
    assert_int_equal(cv_context_exit(holder), CV_OK);
    cv_var_release(old);
    cv_context_release(holder); /* frees old, at once or after a grace period */
    cv_reclaim_barrier();
    cv_var_t *fresh = new_var("fresh");
    assert_int_equal(slot_of(fresh), slot);
    check_none(fresh);
    cv_var_release(fresh);
}

/* The cache is per thread, keyed by the thread's view, not by context:
 * two contexts with one history must still be told apart. */
static void test_contexts_with_the_same_history(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x"), *y = new_var("y");
    cv_context_t *a = cv_context_new(), *b = cv_context_new();
    cv_token_t tok[2];
    /* The same operations, in lock step, each checked in both. */
    for (int step = 0; step < 4; step++) {
        for (int which = 0; which < 2; which++) {
            cv_context_t *c = which ? b : a;
            assert_int_equal(cv_context_enter(c), CV_OK);
            switch (step) {
            case 0:
                check_none(x);
                assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
                break;
            case 1:
                check_value(x, VAL(1));
                assert_int_equal(cv_set(y, VAL(2), NULL), CV_OK);
                break;
            case 2:
                assert_int_equal(cv_set(x, VAL(3), &tok[which]), CV_OK);
                check_value(x, VAL(3));
                break;
            default:
                check_value(x, VAL(3));
                assert_int_equal(cv_reset(x, &tok[which]), CV_OK);
                check_value(x, VAL(1));
                break;
            }
            check_value(x, step < 2 || step == 3 ? VAL(1) : VAL(3));
            assert_int_equal(cv_context_exit(c), CV_OK);
        }
    }
    assert_true(cv_context_equal(a, b));
    /* Now diverge by one set each and alternate. */
    assert_int_equal(cv_context_enter(a), CV_OK);
    assert_int_equal(cv_set(x, VAL(0xa), NULL), CV_OK);
    assert_int_equal(cv_context_exit(a), CV_OK);
    assert_int_equal(cv_context_enter(b), CV_OK);
    assert_int_equal(cv_set(x, VAL(0xb), NULL), CV_OK);
    assert_int_equal(cv_context_exit(b), CV_OK);
    for (int round = 0; round < 100; round++) {
        cv_context_t *c = round & 1 ? b : a;
        assert_int_equal(cv_context_enter(c), CV_OK);
        check_value(x, c == a ? VAL(0xa) : VAL(0xb));
        check_value(y, VAL(2));
        assert_int_equal(cv_context_exit(c), CV_OK);
        check_none(x);
    }
    cv_context_release(a);
    cv_context_release(b);
    cv_var_release(x);
    cv_var_release(y);
}

static void test_copy_then_modify(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x");
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK);
    check_value(x, VAL(1));
    for (int round = 0; round < 20; round++) {
        cv_context_t *copy = cv_copy_context();
        assert_int_equal(cv_context_enter(copy), CV_OK);
        check_value(x, VAL(1));
        assert_int_equal(cv_set(x, VAL(2 + round), NULL), CV_OK);
        check_value(x, VAL(2 + round));
        assert_int_equal(cv_context_exit(copy), CV_OK);
        check_value(x, VAL(1));
        /* The original changes after the copy; the copy must not follow. */
        cv_token_t tok;
        assert_int_equal(cv_set(x, VAL(0x0a), &tok), CV_OK);
        assert_int_equal(cv_context_enter(copy), CV_OK);
        check_value(x, VAL(2 + round));
        assert_int_equal(cv_context_exit(copy), CV_OK);
        check_value(x, VAL(0x0a));
        assert_int_equal(cv_reset(x, &tok), CV_OK);
        check_value(x, VAL(1));
        cv_context_release(copy);
    }
    cv_var_release(x);
}

/* Entries are keyed by the map they came from, so a switch to another
 * context over the same map (a copy, a task captured here) keeps them. They
 * must still never answer for a map that differs, however the two were
 * reached. */
struct same_map {
    cv_var_t *x, *y;
    const char *failure;
};

static void same_map_task(void *arg)
{
    struct same_map *sm = arg;
    cv_token_t tok;
    if (get_mismatch(sm->x, HAS_VALUE, VAL(1)) || get_mismatch(sm->y, HAS_VALUE, VAL(2)))
        sm->failure = "the captured map";
    else if (cv_set(sm->y, VAL(7), &tok) != CV_OK || get_mismatch(sm->y, HAS_VALUE, VAL(7)))
        sm->failure = "a set in the task";
    /* The same contents as the captured map again, under a new label. */
    else if (cv_reset(sm->y, &tok) != CV_OK || get_mismatch(sm->y, HAS_VALUE, VAL(2)) ||
             get_mismatch(sm->x, HAS_VALUE, VAL(1)))
        sm->failure = "the reset in the task";
}

static void test_contexts_over_the_same_map(void **state)
{
    (void)state;
    struct same_map sm = {new_var("x"), new_var("y"), NULL};
    assert_int_equal(cv_set(sm.x, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_set(sm.y, VAL(2), NULL), CV_OK);
    check_value(sm.x, VAL(1));
    cv_context_t *copy = cv_copy_context();
    assert_non_null(copy);
    for (int round = 0; round < 3; round++) {
        assert_int_equal(cv_context_enter(copy), CV_OK);
        check_value(sm.x, VAL(1));
        check_value(sm.y, VAL(2));
        assert_int_equal(cv_context_exit(copy), CV_OK);
        check_value(sm.x, VAL(1));
        cv_task_t task;
        assert_int_equal(cv_task_init(&task, same_map_task, &sm), CV_OK);
        assert_int_equal(cv_task_run(&task), CV_OK);
        if (sm.failure)
            fail_msg("round %d: %s", round, sm.failure);
        check_value(sm.y, VAL(2));
    }
    /* Here the map moves on; the copy keeps the old one, whose entries the
     * set has just overwritten here. */
    assert_int_equal(cv_set(sm.x, VAL(3), NULL), CV_OK);
    check_value(sm.x, VAL(3));
    assert_int_equal(cv_context_enter(copy), CV_OK);
    check_value(sm.x, VAL(1));
    assert_int_equal(cv_set(sm.y, VAL(4), NULL), CV_OK);
    assert_int_equal(cv_context_exit(copy), CV_OK);
    check_value(sm.x, VAL(3));
    check_value(sm.y, VAL(2));
    cv_context_release(copy);
    cv_var_release(sm.x);
    cv_var_release(sm.y);
}

/* A context left by this thread and changed in place by another: the map
 * under the root this thread saw is not the map it finds on return. */
struct in_place_elsewhere {
    cv_context_t *ctx;
    cv_var_t *x;
    cv_token_t *token;
    const char *failure;
};

static void *remove_elsewhere_main(void *arg)
{
    struct in_place_elsewhere *ie = arg;
    if (cv_context_enter(ie->ctx) != CV_OK)
        ie->failure = "enter";
    else if (cv_reset(ie->x, ie->token) != CV_OK)
        ie->failure = "reset";
    else if (cv_context_exit(ie->ctx) != CV_OK)
        ie->failure = "exit";
    return NULL;
}

static void test_changed_in_place_by_another_thread(void **state)
{
    (void)state;
    cv_token_t token;
    struct in_place_elsewhere ie = {cv_context_new(), new_var("x"), &token, NULL};
    /* Keeps the root: removing x then changes that node in place. */
    cv_var_t *keep = new_var("keep");
    assert_int_equal(cv_context_enter(ie.ctx), CV_OK);
    assert_int_equal(cv_set(keep, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_context_exit(ie.ctx), CV_OK);
    for (int round = 0; round < 20; round++) {
        assert_int_equal(cv_context_enter(ie.ctx), CV_OK);
        assert_int_equal(cv_set(ie.x, VAL(10 + round), &token), CV_OK);
        check_value(ie.x, VAL(10 + round));
        assert_int_equal(cv_context_exit(ie.ctx), CV_OK);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, remove_elsewhere_main, &ie), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        if (ie.failure)
            fail_msg("round %d: %s", round, ie.failure);
        assert_int_equal(cv_context_enter(ie.ctx), CV_OK);
        check_none(ie.x);
        check_value(keep, VAL(1));
        assert_int_equal(cv_context_exit(ie.ctx), CV_OK);
    }
    cv_context_release(ie.ctx);
    cv_var_release(ie.x);
    cv_var_release(keep);
}

/* Variables over more than one page of the cache: entries on pages the
 * thread has not stored to yet start cold. */
static void test_many_variables(void **state)
{
    (void)state;
    enum { N = 300 };
    cv_var_t *vars[N];
    for (int i = 0; i < N; i++)
        vars[i] = new_var("many");
    for (int i = 0; i < N; i++) {
        assert_int_equal(cv_set(vars[i], VAL(i + 1), NULL), CV_OK);
        for (int j = 0; j <= i; j += 17)
            check_value(vars[j], VAL(j + 1));
    }
    cv_context_t *empty = cv_context_new();
    assert_int_equal(cv_context_enter(empty), CV_OK);
    for (int i = 0; i < N; i++)
        check_none(vars[i]);
    assert_int_equal(cv_context_exit(empty), CV_OK);
    for (int i = 0; i < N; i++)
        check_value(vars[i], VAL(i + 1));
    cv_context_release(empty);
    for (int i = 0; i < N; i++)
        cv_var_release(vars[i]);
}

/* The cache has a slot for each of the first 65,535 live variables; the
 * ones past them share the last slot, which must never be stored to: each
 * answers for itself, from the map. */
static void test_more_variables_than_slots(void **state)
{
    (void)state;
    enum { SLOTS = 65536, OVERFLOWING = 4 };
    static cv_var_t *vars[SLOTS + OVERFLOWING];
    static bool slot_seen[SLOTS];
    memset(slot_seen, 0, sizeof(slot_seen));
    /* Other suites' variables may hold slots: go until one repeats. */
    size_t n = 0, first_shared = 0;
    while (!first_shared) {
        assert_true(n < SLOTS);
        vars[n] = new_var("slots");
        uint32_t slot = slot_of(vars[n]);
        assert_true(slot < SLOTS);
        if (slot_seen[slot])
            first_shared = n;
        slot_seen[slot] = true;
        n++;
    }
    uint32_t shared = slot_of(vars[first_shared]);
    assert_int_equal(shared, SLOTS - 1);
    for (int i = 1; i < OVERFLOWING; i++) {
        vars[n] = new_var("past");
        assert_int_equal(slot_of(vars[n]), shared);
        n++;
    }
    cv_var_t *past[OVERFLOWING + 1];
    past[0] = vars[first_shared - 1]; /* the first to get the last slot */
    assert_int_equal(slot_of(past[0]), shared);
    for (int i = 0; i < OVERFLOWING; i++)
        past[i + 1] = vars[n - OVERFLOWING + i];
    cv_var_t *low = vars[0];
    const struct cv_private_cache_entry *shared_entry =
        (const struct cv_private_cache_entry *)(const void *)((const char *)
                                                                  cv_private_lookup_state.cache +
                                                              shared * sizeof(*shared_entry));

    assert_int_equal(cv_set(low, VAL(0x10), NULL), CV_OK);
    for (int i = 0; i <= OVERFLOWING; i++) {
        assert_int_equal(cv_set(past[i], VAL(0x100 + i), NULL), CV_OK);
        assert_true(shared_entry->version != cv_private_lookup_state.version);
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i <= OVERFLOWING; i++) {
            check_value(past[i], VAL(0x100 + i));
            check_value(low, VAL(0x10));
        }
    cv_context_t *empty = cv_context_new();
    assert_int_equal(cv_context_enter(empty), CV_OK);
    for (int i = 0; i <= OVERFLOWING; i++)
        check_none(past[i]);
    assert_int_equal(cv_context_exit(empty), CV_OK);
    cv_context_release(empty);
    for (int i = 0; i <= OVERFLOWING; i++)
        check_value(past[i], VAL(0x100 + i));

    /* Freed, a variable past the slots gives nothing back; so a variable
     * with a slot of its own, freed before it, gives its slot to the next
     * new one. (Neither was ever set: nothing else holds them.) */
    cv_var_t *unset_past = new_var("unset");
    assert_int_equal(slot_of(unset_past), shared);
    uint32_t freed = slot_of(vars[1]);
    cv_var_release(vars[1]);
    cv_var_release(unset_past);
    vars[1] = new_var("reused");
    assert_int_equal(slot_of(vars[1]), freed);
    check_none(vars[1]);
    for (size_t i = 0; i < n; i++)
        cv_var_release(vars[i]);
}

/* ---------------------------------------------------------- threads */

struct switching {
    cv_context_t *shared;
    cv_var_t *x;
    pthread_barrier_t barrier;
    int rounds;
    const char *failure[2];
    int failure_round[2];
};

struct switcher {
    struct switching *s;
    int me;
};

static void record(struct switching *s, int me, int round, const char *what)
{
    if (!s->failure[me]) {
        s->failure[me] = what;
        s->failure_round[me] = round;
    }
}

/* Two threads each keep x warm in their own base context and take turns
 * in a shared one; whatever one sets there, the other must see on its
 * next visit, and neither base may see the shared value. */
static void *switcher_main(void *arg)
{
    struct switcher *sw = arg;
    struct switching *s = sw->s;
    uintptr_t own = 0x100 + (uintptr_t)sw->me;
    if (cv_set(s->x, VAL(own), NULL) != CV_OK)
        record(s, sw->me, -1, "set in base");
    for (int k = 0; k < s->rounds; k++) {
        pthread_barrier_wait(&s->barrier);
        if (k % 2 == sw->me) {
            const char *m = get_mismatch(s->x, HAS_VALUE, VAL(own));
            if (m)
                record(s, sw->me, k, "base before the visit");
            if (cv_context_enter(s->shared) != CV_OK)
                record(s, sw->me, k, "enter");
            /* The other thread's last write, or the first value. */
            uintptr_t expect = k == 0 ? 1 : 1000 + (uintptr_t)k - 1;
            if (get_mismatch(s->x, HAS_VALUE, VAL(expect)))
                record(s, sw->me, k, "the other thread's write");
            if (cv_set(s->x, VAL(1000 + (uintptr_t)k), NULL) != CV_OK)
                record(s, sw->me, k, "set");
            if (get_mismatch(s->x, HAS_VALUE, VAL(1000 + (uintptr_t)k)))
                record(s, sw->me, k, "own write");
            if (cv_context_exit(s->shared) != CV_OK)
                record(s, sw->me, k, "exit");
            if (get_mismatch(s->x, HAS_VALUE, VAL(own)))
                record(s, sw->me, k, "base after the visit");
        } else if (get_mismatch(s->x, HAS_VALUE, VAL(own))) {
            record(s, sw->me, k, "base while the other visits");
        }
    }
    return NULL;
}

static void test_switching_threads(void **state)
{
    (void)state;
    struct switching s = {0};
    s.rounds = 200;
    s.x = new_var("x");
    s.shared = cv_context_new();
    assert_int_equal(cv_context_enter(s.shared), CV_OK);
    assert_int_equal(cv_set(s.x, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_context_exit(s.shared), CV_OK);
    pthread_barrier_init(&s.barrier, NULL, 2);
    struct switcher sw[2] = {{&s, 0}, {&s, 1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, switcher_main, &sw[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < 2; i++) {
        if (s.failure[i])
            fail_msg("thread %d, round %d: %s", i, s.failure_round[i], s.failure[i]);
    }
    void *out;
    assert_int_equal(cv_context_get(s.shared, s.x, &out), CV_OK);
    assert_ptr_equal(out, VAL(1000 + s.rounds - 1));
    check_none(s.x); /* the main thread never set it here */
    pthread_barrier_destroy(&s.barrier);
    cv_context_release(s.shared);
    cv_var_release(s.x);
}

struct inheriting {
    cv_var_t *x;
    const char *failure;
};

static void *inheritor_main(void *arg)
{
    struct inheriting *in = arg;
    if (get_mismatch(in->x, HAS_VALUE, VAL(1)))
        in->failure = "inherited value";
    else if (cv_set(in->x, VAL(2), NULL) != CV_OK || get_mismatch(in->x, HAS_VALUE, VAL(2)))
        in->failure = "own set";
    return NULL;
}

/* A new thread's cache starts empty whatever its creator had cached. */
static void test_thread_starts_with_its_own_cache(void **state)
{
    (void)state;
    struct inheriting in = {new_var("x"), NULL};
    assert_int_equal(cv_set(in.x, VAL(1), NULL), CV_OK);
    check_value(in.x, VAL(1));
    for (int round = 0; round < 10; round++) {
        pthread_t t;
        assert_int_equal(cv_thread_create(&t, NULL, inheritor_main, &in), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        if (in.failure)
            fail_msg("round %d: %s", round, in.failure);
        check_value(in.x, VAL(1));
        /* Changing the creator's value between threads: the next thread
         * inherits the new one. */
        assert_int_equal(cv_set(in.x, VAL(1), NULL), CV_OK);
    }
    cv_var_release(in.x);
}

/* A thread whose cache the kernel will not map reads every value from the
 * map; the next thread, once the kernel agrees, has a cache again. */
struct refused {
    cv_var_t *x;
    const char *failure;
    bool mapped; /* whether the thread's cache moved off the shared zeros */
};

static void *refused_main(void *arg)
{
    struct refused *r = arg;
    struct cv_private_cache_entry *unmapped = cv_private_lookup_state.cache;
    cv_context_t *inner = NULL;
    for (int i = 1; i <= 3 && !r->failure; i++) {
        cv_token_t token;
        if (cv_set(r->x, VAL(i), &token) != CV_OK)
            r->failure = "set";
        else if (get_mismatch(r->x, HAS_VALUE, VAL(i)))
            r->failure = "get after a set";
        else if (!(inner = cv_context_new()) || cv_context_enter(inner) != CV_OK)
            r->failure = "enter";
        else if (get_mismatch(r->x, NO_VALUE, NULL))
            r->failure = "get in an empty context";
        else if (cv_context_exit(inner) != CV_OK)
            r->failure = "exit";
        else if (get_mismatch(r->x, HAS_VALUE, VAL(i)))
            r->failure = "get after the exit";
        else if (cv_reset(r->x, &token) != CV_OK || get_mismatch(r->x, NO_VALUE, NULL))
            r->failure = "get after the reset";
        cv_context_release(inner);
        inner = NULL;
    }
    r->mapped = cv_private_lookup_state.cache != unmapped;
    /* The zeros are every new thread's: nothing may be stored there. */
    const struct cv_private_cache_entry *zeros = unmapped;
    if (!r->failure && (zeros[slot_of(r->x)].version || zeros[slot_of(r->x)].value))
        r->failure = "stored to the shared zeros";
    return NULL;
}

static void test_cache_map_refused(void **state)
{
    (void)state;
    for (int refuse = 1; refuse >= 0; refuse--) {
        struct refused r = {new_var("x"), NULL, false};
        cv_testing_refuse_cache_map(refuse);
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, refused_main, &r), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        cv_testing_refuse_cache_map(false);
        if (r.failure)
            fail_msg("%s: %s", refuse ? "refused" : "mapped", r.failure);
        assert_true(r.mapped == !refuse);
        cv_var_release(r.x);
    }
}

/* The mapping's flags in /proc/self/smaps ("VmFlags: rd wr ..."), for the
 * mapping that holds `address`; false if not found. */
static bool mapping_flags(const void *address, char *flags, size_t size)
{
    FILE *smaps = fopen("/proc/self/smaps", "r");
    if (!smaps)
        return false;
    char line[512];
    bool inside = false, found = false;
    while (!found && fgets(line, sizeof(line), smaps)) {
        unsigned long start, end;
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
            inside = (uintptr_t)address >= start && (uintptr_t)address < end;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(flags, size, "%s", line + 8);
            found = true;
        }
    }
    fclose(smaps);
    return found;
}

/* A thread's own cache is never backed by transparent huge pages, even
 * where they are always on: neighbouring caches may merge into one mapping
 * large enough to hold one, and a store would then fill 2 MiB. */
static void test_cache_never_huge(void **state)
{
    (void)state;
    cv_var_t *x = new_var("x");
    assert_int_equal(cv_set(x, VAL(1), NULL), CV_OK); /* the thread has started */
    char flags[256];
    assert_true(mapping_flags(cv_private_lookup_state.cache, flags, sizeof(flags)));
    /* A kernel built without them refuses the advice, and needs none. */
    FILE *thp = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!thp) {
        print_message("no transparent huge pages in this kernel: nothing to advise\n");
    } else {
        fclose(thp);
        if (!strstr(flags, " nh"))
            fail_msg("the cache's mapping lacks VM_NOHUGEPAGE (nh):%s", flags);
    }
    cv_var_release(x);
}

/* ------------------------------------------------- random, with a model */

#define RV 96     /* variables: entries on more than one cache line */
#define RP 6      /* contexts in the pool */
#define RTOK 24   /* live tokens */
#define RIDS 4096 /* variable identities over the whole run */
#define RMAXDEPTH 3

struct rmodel {
    bool has[RIDS];
    void *val[RIDS];
};

struct rvar {
    cv_var_t *var;
    int id;
    bool has_default;
    void *def;
};

struct rtoken {
    cv_token_t tok;
    int ctx; /* pool index */
    int var; /* index into vars[] */
    int id;
    bool had_old;
    void *old;
};

struct rstate {
    struct rvar vars[RV];
    int next_id;
    cv_context_t *pool[RP + 1]; /* [RP]: the context the test runs in */
    struct rmodel *model[RP + 1];
    bool entered[RP + 1];
    int stack[64];
    int depth;
    struct rtoken toks[RTOK];
    int ntoks;
    uintptr_t next_value;
    long ops;
};

static struct rstate *rs;

static void rcheck_all(void)
{
    struct rmodel *m = rs->model[rs->stack[rs->depth - 1]];
    for (int i = 0; i < RV; i++) {
        struct rvar *v = &rs->vars[i];
        if (m->has[v->id])
            check_value(v->var, m->val[v->id]);
        else if (v->has_default)
            check_default(v->var, v->def);
        else
            check_none(v->var);
    }
}

static void rnew_var(int i)
{
    struct rvar *v = &rs->vars[i];
    assert_true(rs->next_id < RIDS);
    v->id = rs->next_id++;
    v->has_default = rnd_below(3) == 0;
    v->def = VAL(0xdef0000 + (uintptr_t)v->id);
    v->var = cv_var_new("r", v->has_default
                                 ? &(cv_var_opts_t){.default_value = v->def, .has_default = true}
                                 : NULL);
    assert_non_null(v->var);
}

static void rdrop_tokens(bool (*match)(const struct rtoken *, int), int arg)
{
    for (int t = 0; t < rs->ntoks;) {
        if (match(&rs->toks[t], arg)) {
            cv_token_discard(&rs->toks[t].tok);
            rs->toks[t] = rs->toks[--rs->ntoks];
        } else {
            t++;
        }
    }
}

static bool token_of_ctx(const struct rtoken *t, int ctx)
{
    return t->ctx == ctx;
}

static bool token_of_var(const struct rtoken *t, int var)
{
    return t->var == var;
}

static int rpick_free_ctx(void)
{
    int c = (int)rnd_below(RP);
    for (int n = 0; n < RP; n++, c = (c + 1) % RP) {
        if (!rs->entered[c])
            return c;
    }
    return -1;
}

static void rrandom_ops(int n, int floor, int run_depth);

struct rrun {
    int floor;
    int run_depth;
    int left_entered;
};

static void rrun_body(void *arg)
{
    struct rrun *r = arg;
    rcheck_all(); /* on entry */
    rrandom_ops(8 + (int)rnd_below(8), r->floor, r->run_depth);
    /* Sometimes leave contexts entered for the run to clean up. */
    if (rnd_below(4) == 0) {
        int c = rpick_free_ctx();
        if (c >= 0) {
            assert_int_equal(cv_context_enter(rs->pool[c]), CV_OK);
            rs->entered[c] = true;
            rs->stack[rs->depth++] = c;
            rcheck_all();
        }
    }
    r->left_entered = rs->depth - r->floor;
}

static void rone_op(int floor, int run_depth)
{
    int top = rs->stack[rs->depth - 1];
    unsigned op = rnd_below(100);
    rs->ops++;
    if (op < 32) {
        int i = (int)rnd_below(RV);
        struct rvar *v = &rs->vars[i];
        void *value = rnd_below(8) == 0 ? NULL : VAL(rs->next_value++);
        struct rtoken *t = rs->ntoks < RTOK && rnd_below(2) ? &rs->toks[rs->ntoks] : NULL;
        bool had = rs->model[top]->has[v->id];
        void *old = rs->model[top]->val[v->id];
        assert_int_equal(cv_set(v->var, value, t ? &t->tok : NULL), CV_OK);
        if (t) {
            t->ctx = top;
            t->var = i;
            t->id = v->id;
            t->had_old = had;
            t->old = old;
            rs->ntoks++;
        }
        rs->model[top]->has[v->id] = true;
        rs->model[top]->val[v->id] = value;
    } else if (op < 48) {
        if (!rs->ntoks)
            return;
        int k = (int)rnd_below((uint32_t)rs->ntoks);
        struct rtoken *t = &rs->toks[k];
        cv_var_t *var = rs->vars[t->var].var;
        if (t->ctx != top) {
            assert_int_equal(cv_reset(var, &t->tok), CV_ETOKEN_CONTEXT);
            return;
        }
        assert_int_equal(cv_reset(var, &t->tok), CV_OK);
        rs->model[top]->has[t->id] = t->had_old;
        rs->model[top]->val[t->id] = t->had_old ? t->old : NULL;
        rs->toks[k] = rs->toks[--rs->ntoks];
    } else if (op < 60) {
        int c = rpick_free_ctx();
        if (c < 0)
            return;
        assert_int_equal(cv_context_enter(rs->pool[c]), CV_OK);
        rs->entered[c] = true;
        rs->stack[rs->depth++] = c;
        /* Entering what is already entered fails and changes nothing. */
        assert_int_equal(cv_context_enter(rs->pool[top]), CV_EBUSY);
    } else if (op < 72) {
        if (rs->depth - 1 <= floor) {
            assert_int_equal(cv_context_exit(rs->pool[top]), CV_ENOTCURRENT);
            return;
        }
        assert_int_equal(cv_context_exit(rs->pool[top]), CV_OK);
        rs->entered[top] = false;
        rs->depth--;
    } else if (op < 80) {
        if (run_depth >= RMAXDEPTH)
            return;
        int c = rpick_free_ctx();
        if (c < 0)
            return;
        int saved_depth = rs->depth;
        rs->entered[c] = true;
        rs->stack[rs->depth++] = c;
        struct rrun r = {rs->depth - 1, run_depth + 1, 0};
        cv_status_t st = cv_context_run(rs->pool[c], rrun_body, &r);
        assert_int_equal(st, r.left_entered > 1 ? CV_ENOTCURRENT : CV_OK);
        while (rs->depth > saved_depth)
            rs->entered[rs->stack[--rs->depth]] = false;
    } else if (op < 88) {
        int c = rpick_free_ctx();
        if (c < 0)
            return;
        rdrop_tokens(token_of_ctx, c);
        cv_context_release(rs->pool[c]);
        if (op < 85) {
            rs->pool[c] = cv_copy_context();
            *rs->model[c] = *rs->model[top];
        } else {
            rs->pool[c] = cv_context_new();
            memset(rs->model[c], 0, sizeof(*rs->model[c]));
        }
        assert_non_null(rs->pool[c]);
    } else if (op < 94) {
        /* A variable goes and another comes, likely into its slot. */
        int i = (int)rnd_below(RV);
        rdrop_tokens(token_of_var, i);
        cv_var_release(rs->vars[i].var);
        rnew_var(i);
    } else {
        /* A token of one variable does not reset another. */
        if (!rs->ntoks)
            return;
        struct rtoken *t = &rs->toks[rnd_below((uint32_t)rs->ntoks)];
        int other = (t->var + 1) % RV;
        assert_int_equal(cv_reset(rs->vars[other].var, &t->tok), CV_ETOKEN_VAR);
    }
}

static void rrandom_ops(int n, int floor, int run_depth)
{
    for (int k = 0; k < n; k++) {
        rone_op(floor, run_depth);
        rcheck_all();
    }
}

static void rtest_body(void *arg)
{
    (void)arg;
    rrandom_ops(6000, rs->depth - 1, 0);
    /* Leave the run balanced: exit what the body still has entered. */
    while (rs->depth > 1) {
        int top = rs->stack[--rs->depth];
        assert_int_equal(cv_context_exit(rs->pool[top]), CV_OK);
        rs->entered[top] = false;
    }
}

static void test_random_against_model(void **state)
{
    (void)state;
    rng_seed("cache_random");
    rs = calloc(1, sizeof(*rs));
    assert_non_null(rs);
    rs->next_value = 1;
    for (int c = 0; c <= RP; c++) {
        rs->pool[c] = cv_context_new();
        rs->model[c] = calloc(1, sizeof(struct rmodel));
        assert_non_null(rs->model[c]);
    }
    for (int i = 0; i < RV; i++)
        rnew_var(i);
    rs->entered[RP] = true;
    rs->stack[0] = RP;
    rs->depth = 1;
    assert_int_equal(cv_context_run(rs->pool[RP], rtest_body, NULL), CV_OK);
    print_message("  %ld operations, %d variables made\n", rs->ops, rs->next_id);

    for (int t = 0; t < rs->ntoks; t++)
        cv_token_discard(&rs->toks[t].tok);
    for (int c = 0; c <= RP; c++) {
        cv_context_release(rs->pool[c]);
        free(rs->model[c]);
    }
    for (int i = 0; i < RV; i++)
        cv_var_release(rs->vars[i].var);
    free(rs);
    rs = NULL;
    cv_reclaim_barrier();
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, enter_test_ctx, exit_test_ctx)
    struct CMUnitTest tests[] = {
        T(test_build_flavour),
        T(test_set_and_reset),
        T(test_enter_and_exit),
        T(test_run_entry_and_return),
        T(test_run_that_leaves_a_context_entered),
        T(test_reused_slot),
        T(test_contexts_with_the_same_history),
        T(test_copy_then_modify),
        T(test_contexts_over_the_same_map),
        T(test_changed_in_place_by_another_thread),
        T(test_many_variables),
        T(test_more_variables_than_slots),
        T(test_switching_threads),
        T(test_thread_starts_with_its_own_cache),
        T(test_cache_map_refused),
        T(test_cache_never_huge),
        T(test_random_against_model),
    };
#undef T
    return cv_test_run_selected(GROUP_NAME, tests, sizeof(tests) / sizeof(tests[0]));
}
