/*
 * Values for the suites: reads that check their status, values that count
 * the references the library takes and drops through a variable's
 * retain/release hooks, and a fresh context for each test. Include after
 * <cmocka.h>.
 */
#ifndef CV_TESTS_VALUES_H
#define CV_TESTS_VALUES_H

#include <ctxvars.h>
#include <stdatomic.h>

/* What a read finds where there is no value, if it leaves *out alone. */
static char sentinel[] = "sentinel";

/* The value a read found, or `sentinel` where there was none, in which
 * case the read must have left *out untouched. */
static inline void *read_result(cv_status_t status, void *out)
{
    if (status == CV_ENOVALUE)
        assert_ptr_equal(out, sentinel);
    else
        assert_int_equal(status, CV_OK);
    return status == CV_OK ? out : sentinel;
}

/* The variable's value in the current context, defaults included. */
static inline void *current_value(cv_var_t *var)
{
    void *out = sentinel;
    cv_status_t status = cv_get(var, &out);
    return read_result(status, out);
}

/* Hooks may run on the reclamation thread: everything they touch is
 * atomic. */

/* `live` is retains minus releases. */
struct tracked {
    atomic_int live;
    atomic_int retains;
    atomic_int releases;
};

/* Over every tracked value; underflows counts releases without a retain. */
static atomic_long total_retains, total_releases, underflows;

static inline void tracked_init(struct tracked *t)
{
    atomic_init(&t->live, 0);
    atomic_init(&t->retains, 0);
    atomic_init(&t->releases, 0);
}

static inline void tracked_retain(void *value)
{
    atomic_fetch_add(&total_retains, 1);
    if (!value)
        return;
    struct tracked *t = value;
    atomic_fetch_add(&t->retains, 1);
    atomic_fetch_add(&t->live, 1);
}

static inline void tracked_release(void *value)
{
    atomic_fetch_add(&total_releases, 1);
    if (!value)
        return;
    struct tracked *t = value;
    atomic_fetch_add(&t->releases, 1);
    if (atomic_fetch_sub(&t->live, 1) <= 0)
        atomic_fetch_add(&underflows, 1);
}

/* A variable whose values are tracked by the hooks above. */
static inline cv_var_t *tracked_var(const char *name)
{
    return cv_var_new(name, &(cv_var_opts_t){.retain = tracked_retain, .release = tracked_release});
}

/* Iterating ctx yields exactly one entry, var with value. */
static inline void assert_only_entry(cv_context_t *ctx, cv_var_t *var, void *value)
{
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    cv_var_t *seen_var = NULL;
    void *seen_value = sentinel;
    assert_true(cv_context_iter_next(&it, &seen_var, &seen_value));
    assert_ptr_equal(seen_var, var);
    assert_ptr_equal(seen_value, value);
    assert_false(cv_context_iter_next(&it, &seen_var, &seen_value));
    cv_context_iter_fini(&it);
}

/* Setup and teardown: a fresh context entered for the test, so that no
 * test sees another's leftovers in the thread's base context. */
static inline int enter_fresh(void **state)
{
    cv_context_t *ctx = cv_context_new();
    if (!ctx || cv_context_enter(ctx) != CV_OK)
        return -1;
    *state = ctx;
    return 0;
}

static inline int exit_fresh(void **state)
{
    cv_context_t *ctx = *state;
    int failed = cv_context_exit(ctx) != CV_OK;
    cv_context_release(ctx);
    return failed ? -1 : 0;
}

#endif
