/*
 * PEP 567 behaviour as API.md states it: variables and defaults, contexts,
 * copies, runs, enter/exit, the mapping API, iteration, and who owns values
 * (retain/release hooks). Tokens have their own suite (test_tokens.c),
 * misuse too (test_misuse.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "values.h"

#include <ctxvars.h>

#include "testing.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------- helpers */

static cv_var_t *var_with_default(const char *name, void *default_value)
{
    return cv_var_new(name, &(cv_var_opts_t){.default_value = default_value, .has_default = true});
}

static char value_a[] = "a", value_b[] = "b", value_c[] = "c", value_d[] = "d";
static char fallback[] = "fallback";

/* A run body that sets one variable, and reports what it saw first. */
struct set_job {
    cv_var_t *var;
    void *value;
    cv_status_t get_status;
    void *seen;
    cv_status_t set_status;
    cv_context_t *current;
};

static void set_job_fn(void *arg)
{
    struct set_job *job = arg;
    job->current = cv_context_current();
    job->seen = sentinel;
    job->get_status = cv_get(job->var, &job->seen);
    job->set_status = cv_set(job->var, job->value, NULL);
}

static void run_set(cv_context_t *ctx, cv_var_t *var, void *value)
{
    struct set_job job = {.var = var, .value = value};
    assert_int_equal(cv_context_run(ctx, set_job_fn, &job), CV_OK);
    assert_int_equal(job.set_status, CV_OK);
}

static void *context_value(cv_context_t *ctx, cv_var_t *var)
{
    void *out = sentinel;
    cv_status_t status = cv_context_get(ctx, var, &out);
    return read_result(status, out);
}

/* ----------------------------------------------------------- variables */

static void test_get_without_value_or_default_is_enovalue(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("plain", NULL);
    assert_non_null(var);
    void *out = sentinel;
    assert_int_equal(cv_get(var, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    /* The exported function, not the header's inline fast path. */
    assert_int_equal((cv_get)(var, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    assert_ptr_equal(cv_get_or(var, fallback), fallback);
    assert_ptr_equal((cv_get_or)(var, fallback), fallback);

    /* has_default decides, not a non-NULL default_value. */
    cv_var_t *undecided = cv_var_new("undecided", &(cv_var_opts_t){.default_value = value_a});
    assert_int_equal(cv_get(undecided, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    cv_var_release(undecided);
    cv_var_release(var);
}

static void test_get_returns_default_until_set(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("with_default", value_d);
    void *out = NULL;
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_ptr_equal(out, value_d);

    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_ptr_equal(out, value_a);
    assert_int_equal((cv_get)(var, &out), CV_OK);
    assert_ptr_equal(out, value_a);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_ptr_equal(out, value_d);

    /* default=None: a default that is NULL is still a default. */
    cv_var_t *none = var_with_default("none_default", NULL);
    out = sentinel;
    assert_int_equal(cv_get(none, &out), CV_OK);
    assert_null(out);
    cv_var_release(none);
    cv_var_release(var);
}

static void test_get_or_fallback_beats_default(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("with_default", value_d);
    assert_ptr_equal(cv_get_or(var, fallback), fallback);
    assert_ptr_equal((cv_get_or)(var, fallback), fallback);
    assert_null(cv_get_or(var, NULL));

    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    assert_ptr_equal(cv_get_or(var, fallback), value_a);
    assert_ptr_equal((cv_get_or)(var, fallback), value_a);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_ptr_equal(cv_get_or(var, fallback), fallback);
    cv_var_release(var);
}

static void test_null_is_a_value(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("nullable", value_d);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);

    cv_token_t tok;
    assert_int_equal(cv_set(var, NULL, &tok), CV_OK);
    void *out = sentinel;
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_null(out);
    assert_null(cv_get_or(var, fallback));
    assert_true(cv_context_contains(ctx, var));
    assert_int_equal(cv_context_len(ctx), 1);
    out = sentinel;
    assert_int_equal(cv_context_get(ctx, var, &out), CV_OK);
    assert_null(out);

    assert_only_entry(ctx, var, NULL);

    /* A context holding NULL differs from one that holds nothing. */
    cv_context_t *empty = cv_context_new();
    assert_false(cv_context_equal(ctx, empty));

    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_false(cv_context_contains(ctx, var));
    assert_ptr_equal(cv_get_or(var, fallback), fallback);
    assert_true(cv_context_equal(ctx, empty));

    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(empty);
    cv_context_release(ctx);
    cv_var_release(var);
}

static void test_var_name_is_a_copy(void **state)
{
    (void)state;
    char name[] = "request_id";
    cv_var_t *var = cv_var_new(name, NULL);
    cv_var_t *empty_name = cv_var_new("", NULL);
    memset(name, 'x', sizeof(name) - 1);
    assert_string_equal(cv_var_name(var), "request_id");
    assert_string_equal(cv_var_name(empty_name), "");
    /* Two variables of one name are still two variables. */
    cv_var_t *twin = cv_var_new("request_id", NULL);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    assert_ptr_equal(cv_get_or(twin, fallback), fallback);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_var_release(twin);
    cv_var_release(empty_name);
    cv_var_release(var);
}

/* ------------------------------------------------------------------ run */

static void test_set_in_run_lands_in_that_context(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    cv_context_t *caller = cv_context_current();
    cv_context_t *ctx = cv_copy_context();

    struct set_job job = {.var = var, .value = value_b};
    assert_int_equal(cv_context_run(ctx, set_job_fn, &job), CV_OK);
    /* Inside: the copy's values, and the run's context is current. */
    assert_int_equal(job.get_status, CV_OK);
    assert_ptr_equal(job.seen, value_a);
    assert_ptr_equal(job.current, ctx);
    assert_int_equal(job.set_status, CV_OK);

    assert_ptr_equal(context_value(ctx, var), value_b);
    assert_ptr_equal(current_value(var), value_a);
    assert_ptr_equal(cv_context_current(), caller);
    assert_ptr_equal(context_value(caller, var), value_a);

    /* A second run starts from what the first one left. */
    job = (struct set_job){.var = var, .value = value_c};
    assert_int_equal(cv_context_run(ctx, set_job_fn, &job), CV_OK);
    assert_ptr_equal(job.seen, value_b);
    assert_ptr_equal(context_value(ctx, var), value_c);
    assert_ptr_equal(current_value(var), value_a);

    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_context_release(ctx);
    cv_var_release(var);
}

struct nested_job {
    cv_var_t *var;
    cv_context_t *inner;
    cv_status_t inner_status;
    void *outer_before, *outer_after;
    struct set_job inner_job;
};

static void nested_outer_fn(void *arg)
{
    struct nested_job *job = arg;
    cv_set(job->var, value_b, NULL);
    job->outer_before = cv_get_or(job->var, sentinel);
    job->inner_job = (struct set_job){.var = job->var, .value = value_c};
    job->inner_status = cv_context_run(job->inner, set_job_fn, &job->inner_job);
    job->outer_after = cv_get_or(job->var, sentinel);
}

static void test_nested_runs(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *outer = cv_context_new();
    cv_context_t *inner = cv_context_new();
    run_set(inner, var, value_d);

    struct nested_job job = {.var = var, .inner = inner};
    assert_int_equal(cv_context_run(outer, nested_outer_fn, &job), CV_OK);
    assert_ptr_equal(job.outer_before, value_b);
    assert_int_equal(job.inner_status, CV_OK);
    assert_ptr_equal(job.inner_job.current, inner);
    assert_ptr_equal(job.inner_job.seen, value_d);
    assert_ptr_equal(job.outer_after, value_b);

    assert_ptr_equal(context_value(outer, var), value_b);
    assert_ptr_equal(context_value(inner, var), value_c);
    assert_ptr_equal(current_value(var), sentinel);

    cv_context_release(inner);
    cv_context_release(outer);
    cv_var_release(var);
}

struct reentry_job {
    cv_context_t *self;
    bool inner_called;
    cv_status_t run_status, enter_status;
};

static void mark_called(void *arg)
{
    *(bool *)arg = true;
}

static void reentry_fn(void *arg)
{
    struct reentry_job *job = arg;
    job->run_status = cv_context_run(job->self, mark_called, &job->inner_called);
    job->enter_status = cv_context_enter(job->self);
}

static void test_reentering_an_entered_context_is_ebusy(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *ctx = cv_context_new();
    struct reentry_job job = {.self = ctx};
    assert_int_equal(cv_context_run(ctx, reentry_fn, &job), CV_OK);
    assert_int_equal(job.run_status, CV_EBUSY);
    assert_false(job.inner_called);
    assert_int_equal(job.enter_status, CV_EBUSY);

    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_context_enter(ctx), CV_EBUSY);
    bool called = false;
    assert_int_equal(cv_context_run(ctx, mark_called, &called), CV_EBUSY);
    assert_false(called);
    assert_ptr_equal(cv_context_current(), ctx);
    assert_int_equal(cv_context_exit(ctx), CV_OK);

    /* The thread's base context counts as entered by it. */
    cv_context_t *base = cv_context_current();
    assert_int_equal(cv_context_enter(base), CV_EBUSY);
    assert_int_equal(cv_context_run(base, mark_called, &called), CV_EBUSY);
    assert_false(called);

    /* Once exited, it can be entered again. */
    assert_int_equal(cv_context_run(ctx, mark_called, &called), CV_OK);
    assert_true(called);
    cv_context_release(ctx);
    cv_var_release(var);
}

static void test_enter_exit_switch_the_current_context(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *base = cv_context_current();
    cv_context_t *a = cv_context_new(), *b = cv_context_new();

    assert_int_equal(cv_context_enter(a), CV_OK);
    assert_ptr_equal(cv_context_current(), a);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    assert_int_equal(cv_context_enter(b), CV_OK);
    assert_ptr_equal(cv_context_current(), b);
    assert_ptr_equal(current_value(var), sentinel);
    assert_int_equal(cv_set(var, value_b, NULL), CV_OK);
    assert_ptr_equal(current_value(var), value_b);
    assert_int_equal(cv_context_exit(b), CV_OK);
    assert_ptr_equal(cv_context_current(), a);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_exit(a), CV_OK);
    assert_ptr_equal(cv_context_current(), base);
    assert_ptr_equal(current_value(var), sentinel);

    /* Each context kept what was set while it was current. */
    assert_ptr_equal(context_value(a, var), value_a);
    assert_ptr_equal(context_value(b, var), value_b);
    assert_false(cv_context_contains(base, var));

    cv_context_release(b);
    cv_context_release(a);
    cv_var_release(var);
}

static void test_exit_of_a_non_current_context_is_enotcurrent(void **state)
{
    (void)state;
    cv_context_t *a = cv_context_new(), *b = cv_context_new(), *never = cv_context_new();
    assert_int_equal(cv_context_exit(never), CV_ENOTCURRENT);
    assert_int_equal(cv_context_enter(a), CV_OK);
    assert_int_equal(cv_context_enter(b), CV_OK);
    assert_int_equal(cv_context_exit(a), CV_ENOTCURRENT);
    assert_int_equal(cv_context_exit(never), CV_ENOTCURRENT);
    assert_ptr_equal(cv_context_current(), b);
    assert_int_equal(cv_context_exit(b), CV_OK);
    assert_int_equal(cv_context_exit(a), CV_OK);
    assert_int_equal(cv_context_exit(a), CV_ENOTCURRENT);
    assert_int_equal(cv_context_exit(cv_context_current()), CV_ENOTCURRENT);
    cv_context_release(never);
    cv_context_release(b);
    cv_context_release(a);
}

struct leave_job {
    cv_context_t *left1, *left2;
    cv_var_t *var;
    cv_status_t statuses[3];
};

static void leave_entered_fn(void *arg)
{
    struct leave_job *job = arg;
    job->statuses[0] = cv_context_enter(job->left1);
    job->statuses[1] = cv_set(job->var, value_c, NULL);
    job->statuses[2] = cv_context_enter(job->left2);
}

static void test_run_restores_the_caller_whatever_fn_did(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *run_ctx = cv_context_new(), *left1 = cv_context_new(), *left2 = cv_context_new();
    cv_context_t *caller = cv_context_current();
    struct leave_job job = {.left1 = left1, .left2 = left2, .var = var};

    assert_int_equal(cv_context_run(run_ctx, leave_entered_fn, &job), CV_ENOTCURRENT);
    for (int i = 0; i < 3; i++)
        assert_int_equal(job.statuses[i], CV_OK);
    assert_ptr_equal(cv_context_current(), caller);
    assert_ptr_equal(current_value(var), sentinel);
    assert_ptr_equal(context_value(left1, var), value_c);

    /* What fn left entered has been exited: all three can be entered again. */
    assert_int_equal(cv_context_enter(left2), CV_OK);
    assert_int_equal(cv_context_enter(left1), CV_OK);
    assert_int_equal(cv_context_enter(run_ctx), CV_OK);
    assert_int_equal(cv_context_exit(run_ctx), CV_OK);
    assert_int_equal(cv_context_exit(left1), CV_OK);
    assert_int_equal(cv_context_exit(left2), CV_OK);
    assert_ptr_equal(cv_context_current(), caller);

    cv_context_release(left2);
    cv_context_release(left1);
    cv_context_release(run_ctx);
    cv_var_release(var);
}

/* --------------------------------------------------------------- copies */

static void test_copies_are_independent_both_ways(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL);
    cv_context_t *original = cv_context_new();
    run_set(original, x, value_a);
    cv_context_t *copy = cv_context_copy(original);
    assert_non_null(copy);
    assert_true(copy != original);
    assert_true(cv_context_equal(copy, original));

    run_set(copy, x, value_b);
    run_set(copy, y, value_c);
    assert_ptr_equal(context_value(original, x), value_a);
    assert_false(cv_context_contains(original, y));
    assert_int_equal(cv_context_len(original), 1);

    run_set(original, x, value_d);
    assert_ptr_equal(context_value(copy, x), value_b);
    assert_ptr_equal(context_value(copy, y), value_c);
    assert_int_equal(cv_context_len(copy), 2);

    /* The current context and its copy, too. */
    cv_token_t tok;
    assert_int_equal(cv_set(x, value_a, &tok), CV_OK);
    cv_context_t *snap = cv_copy_context();
    assert_int_equal(cv_set(x, value_b, NULL), CV_OK);
    assert_ptr_equal(context_value(snap, x), value_a);
    run_set(snap, x, value_c);
    assert_ptr_equal(current_value(x), value_b);
    assert_int_equal(cv_reset(x, &tok), CV_OK);
    assert_ptr_equal(current_value(x), sentinel);

    cv_context_release(snap);
    cv_context_release(copy);
    cv_context_release(original);
    cv_var_release(y);
    cv_var_release(x);
}

static void test_copy_context_vs_context_copy_vs_new(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL);
    cv_context_t *other = cv_context_new();
    run_set(other, x, value_b);
    cv_token_t tok;
    assert_int_equal(cv_set(x, value_a, &tok), CV_OK);

    cv_context_t *of_current = cv_copy_context();
    cv_context_t *of_other = cv_context_copy(other);
    cv_context_t *fresh = cv_context_new();
    cv_context_t *of_current_explicit = cv_context_copy(cv_context_current());

    assert_ptr_equal(context_value(of_current, x), value_a);
    assert_true(cv_context_equal(of_current, cv_context_current()));
    assert_true(cv_context_equal(of_current, of_current_explicit));
    assert_ptr_equal(context_value(of_other, x), value_b);
    assert_true(cv_context_equal(of_other, other));
    assert_int_equal(cv_context_len(fresh), 0);
    assert_false(cv_context_contains(fresh, x));
    /* None of them is the context it was made from. */
    assert_true(of_current != cv_context_current());
    assert_true(of_other != other);

    run_set(of_other, x, value_c);
    assert_ptr_equal(context_value(other, x), value_b);

    assert_int_equal(cv_reset(x, &tok), CV_OK);
    /* Copies do not follow the original. */
    assert_ptr_equal(context_value(of_current, x), value_a);

    cv_context_release(of_current_explicit);
    cv_context_release(fresh);
    cv_context_release(of_other);
    cv_context_release(of_current);
    cv_context_release(other);
    cv_var_release(x);
}

static void copy_current_fn(void *arg)
{
    *(cv_context_t **)arg = cv_copy_context();
}

static void test_copy_context_inside_run_copies_the_run_context(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL);
    cv_context_t *ctx = cv_context_new();
    run_set(ctx, x, value_d);
    cv_context_t *copied = NULL;
    assert_int_equal(cv_context_run(ctx, copy_current_fn, &copied), CV_OK);
    assert_non_null(copied);
    assert_ptr_equal(context_value(copied, x), value_d);
    assert_true(cv_context_equal(copied, ctx));
    cv_context_release(copied);
    cv_context_release(ctx);
    cv_var_release(x);
}

/* --------------------------------------------------- current and refs */

static void current_fn(void *arg)
{
    cv_context_t **seen = arg;
    seen[0] = cv_context_current();
    seen[1] = cv_context_current();
}

static void test_context_current_tracks_switches(void **state)
{
    (void)state;
    cv_context_t *base = cv_context_current();
    assert_non_null(base);
    assert_ptr_equal(cv_context_current(), base);

    cv_context_t *ctx = cv_context_new();
    cv_context_t *seen[2] = {NULL, NULL};
    assert_int_equal(cv_context_run(ctx, current_fn, seen), CV_OK);
    assert_ptr_equal(seen[0], ctx);
    assert_ptr_equal(seen[1], ctx);
    assert_ptr_equal(cv_context_current(), base);

    /* Borrowed: retaining it keeps it; the thread still has it. */
    cv_context_retain(base);
    cv_context_release(base);
    assert_ptr_equal(cv_context_current(), base);
    cv_context_release(ctx);
}

static void test_context_retain_release(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL);
    cv_context_t *ctx = cv_context_new();
    run_set(ctx, x, value_a);
    cv_context_retain(ctx);
    cv_context_retain(ctx);
    cv_context_release(ctx);
    cv_context_release(ctx);
    /* Still ours: one reference left. */
    assert_ptr_equal(context_value(ctx, x), value_a);

    /* The thread holds what it has entered, even if the caller lets go. */
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    cv_context_retain(ctx);
    cv_context_release(ctx);
    assert_ptr_equal(current_value(x), value_a);
    assert_int_equal(cv_set(x, value_b, NULL), CV_OK);
    cv_context_t *copy = cv_copy_context();
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    assert_ptr_equal(context_value(copy, x), value_b);
    cv_context_release(copy);
    cv_var_release(x);
}

/* ---------------------------------------------------------- mapping API */

static void test_defaults_are_invisible_to_the_mapping_api(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("defaulted", value_d);
    cv_context_t *ctx = cv_copy_context();
    void *out = sentinel;
    assert_int_equal(cv_context_get(ctx, var, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    assert_false(cv_context_contains(ctx, var));
    assert_int_equal(cv_context_len(ctx), 0);
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    assert_false(cv_context_iter_next(&it, NULL, NULL));
    cv_context_iter_fini(&it);
    /* ...while cv_get in that context does see the default. */
    struct set_job job = {.var = var, .value = value_a};
    assert_int_equal(cv_context_run(ctx, set_job_fn, &job), CV_OK);
    assert_int_equal(job.get_status, CV_OK);
    assert_ptr_equal(job.seen, value_d);
    cv_context_release(ctx);
    cv_var_release(var);
}

#define MANY 40

static void test_mapping_api_reports_every_value(void **state)
{
    (void)state;
    cv_var_t *vars[MANY];
    int values[MANY];
    cv_context_t *ctx = cv_context_new();
    for (int i = 0; i < MANY; i++) {
        char name[16];
        snprintf(name, sizeof(name), "v%d", i);
        vars[i] = cv_var_new(name, NULL);
        run_set(ctx, vars[i], &values[i]);
        assert_int_equal(cv_context_len(ctx), (size_t)i + 1);
    }
    for (int i = 0; i < MANY; i++) {
        assert_true(cv_context_contains(ctx, vars[i]));
        assert_ptr_equal(context_value(ctx, vars[i]), &values[i]);
    }
    bool seen[MANY] = {false};
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    cv_var_t *var;
    void *value;
    int count = 0;
    while (cv_context_iter_next(&it, &var, &value)) {
        int i = (int)((int *)value - values);
        assert_true(i >= 0 && i < MANY);
        assert_ptr_equal(var, vars[i]);
        assert_false(seen[i]);
        seen[i] = true;
        count++;
    }
    cv_context_iter_fini(&it);
    assert_int_equal(count, MANY);

    /* Either output may be left out. */
    count = 0;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, NULL, &value))
        count++;
    cv_context_iter_fini(&it);
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, NULL))
        count++;
    cv_context_iter_fini(&it);
    assert_int_equal(count, 2 * MANY);

    cv_context_release(ctx);
    for (int i = 0; i < MANY; i++)
        cv_var_release(vars[i]);
}

static void test_context_equal(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL);
    cv_context_t *a = cv_context_new(), *b = cv_context_new();
    assert_true(cv_context_equal(a, a));
    assert_true(cv_context_equal(a, b));

    /* Built separately, in different orders: equal by content. */
    run_set(a, x, value_a);
    assert_false(cv_context_equal(a, b));
    assert_false(cv_context_equal(b, a));
    run_set(a, y, value_b);
    run_set(b, y, value_b);
    run_set(b, x, value_a);
    assert_true(cv_context_equal(a, b));
    assert_true(cv_context_equal(b, a));

    /* Same variables, one value differs. */
    run_set(b, x, value_c);
    assert_false(cv_context_equal(a, b));

    /* Values compare as pointers, not by what they point to. */
    char twin_a[] = "a";
    run_set(b, x, twin_a);
    assert_false(cv_context_equal(a, b));
    run_set(b, x, value_a);
    assert_true(cv_context_equal(a, b));

    /* A variable set to NULL is not the same as an absent one. */
    cv_var_t *z = cv_var_new("z", NULL);
    run_set(a, z, NULL);
    assert_false(cv_context_equal(a, b));
    run_set(b, z, NULL);
    assert_true(cv_context_equal(a, b));

    cv_context_t *copy = cv_context_copy(a);
    assert_true(cv_context_equal(copy, a));
    cv_context_release(copy);
    cv_context_release(b);
    cv_context_release(a);
    cv_var_release(z);
    cv_var_release(y);
    cv_var_release(x);
}

static void test_iteration_is_over_a_snapshot(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL), *z = cv_var_new("z", NULL);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    cv_token_t tx;
    assert_int_equal(cv_set(x, value_a, &tx), CV_OK);
    assert_int_equal(cv_set(y, value_b, NULL), CV_OK);

    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    /* Every kind of change after init: replace, add, remove. */
    assert_int_equal(cv_set(y, value_d, NULL), CV_OK);
    assert_int_equal(cv_set(z, value_c, NULL), CV_OK);
    assert_int_equal(cv_reset(x, &tx), CV_OK);

    int count = 0;
    bool saw_x = false, saw_y = false;
    cv_var_t *var;
    void *value;
    while (cv_context_iter_next(&it, &var, &value)) {
        count++;
        if (var == x) {
            saw_x = true;
            assert_ptr_equal(value, value_a);
        } else {
            assert_ptr_equal(var, y);
            saw_y = true;
            assert_ptr_equal(value, value_b);
        }
    }
    assert_int_equal(count, 2);
    assert_true(saw_x && saw_y);
    assert_false(cv_context_iter_next(&it, &var, &value));
    cv_context_iter_fini(&it);

    /* A fresh iterator sees the new state. */
    count = 0;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, &value)) {
        count++;
        assert_true(var == y || var == z);
        assert_ptr_equal(value, var == y ? value_d : value_c);
    }
    cv_context_iter_fini(&it);
    assert_int_equal(count, 2);

    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_var_release(z);
    cv_var_release(y);
    cv_var_release(x);
}

static void test_iterator_outlives_its_context(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL);
    cv_context_t *ctx = cv_context_new();
    run_set(ctx, x, value_a);
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    cv_context_release(ctx);
    cv_var_t *var = NULL;
    void *value = NULL;
    assert_true(cv_context_iter_next(&it, &var, &value));
    assert_ptr_equal(var, x);
    assert_ptr_equal(value, value_a);
    assert_false(cv_context_iter_next(&it, &var, &value));
    cv_context_iter_fini(&it);
    cv_var_release(x);
}

/* Semantics must not depend on how the map stores keys: force every
 * variable onto one hash. */
static void test_colliding_variables_keep_their_semantics(void **state)
{
    (void)state;
    enum { N = 5 };
    cv_var_t *vars[N];
    for (int i = 0; i < N; i++) {
        vars[i] = cv_var_new("collider", NULL);
        cv_testing_set_var_hash(vars[i], 0x5eed);
    }
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    cv_token_t toks[N];
    int values[N];
    for (int i = 0; i < N; i++)
        assert_int_equal(cv_set(vars[i], &values[i], &toks[i]), CV_OK);
    for (int i = 0; i < N; i++)
        assert_ptr_equal(current_value(vars[i]), &values[i]);
    assert_int_equal(cv_context_len(ctx), N);
    cv_context_t *copy = cv_copy_context();

    assert_int_equal(cv_reset(vars[2], &toks[2]), CV_OK);
    assert_int_equal(cv_reset(vars[0], &toks[0]), CV_OK);
    assert_ptr_equal(current_value(vars[0]), sentinel);
    assert_ptr_equal(current_value(vars[1]), &values[1]);
    assert_ptr_equal(current_value(vars[2]), sentinel);
    assert_ptr_equal(current_value(vars[3]), &values[3]);
    assert_int_equal(cv_context_len(ctx), N - 2);
    assert_int_equal(cv_reset(vars[1], &toks[0]), CV_ETOKEN_USED);
    assert_int_equal(cv_reset(vars[1], &toks[3]), CV_ETOKEN_VAR);
    assert_int_equal(cv_context_len(copy), N);
    assert_false(cv_context_equal(copy, ctx));
    for (int i = 1; i < N; i += 2)
        assert_int_equal(cv_reset(vars[i], &toks[i]), CV_OK);
    assert_int_equal(cv_reset(vars[4], &toks[4]), CV_OK);
    assert_int_equal(cv_context_len(ctx), 0);

    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(copy);
    cv_context_release(ctx);
    for (int i = 0; i < N; i++)
        cv_var_release(vars[i]);
}

/* --------------------------------------------------------------- status */

static void test_strerror_is_distinct_for_every_status(void **state)
{
    (void)state;
    const cv_status_t all[] = {CV_OK,          CV_ENOVALUE,   CV_ENOMEM,
                               CV_EINVAL,      CV_ETOKEN_VAR, CV_ETOKEN_CONTEXT,
                               CV_ETOKEN_USED, CV_EBUSY,      CV_ENOTCURRENT};
    const size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n; i++) {
        const char *text = cv_strerror(all[i]);
        assert_non_null(text);
        assert_true(strlen(text) > 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(text, cv_strerror(all[j]));
    }
    assert_non_null(cv_strerror((cv_status_t)-1));
    assert_non_null(cv_strerror((cv_status_t)1000));
}

/* ---------------------------------------------------------------- hooks */

static void test_hooks_balance_after_barrier(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    long retains0 = atomic_load(&total_retains), releases0 = atomic_load(&total_releases);

    struct tracked a, b, c;
    tracked_init(&a);
    tracked_init(&b);
    tracked_init(&c);
    cv_var_t *var = tracked_var("tracked");
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);

    cv_token_t t1, t2, t3;
    assert_int_equal(cv_set(var, &a, &t1), CV_OK);
    cv_reclaim_barrier();
    assert_true(atomic_load(&a.live) >= 1); /* held by ctx */

    cv_context_t *copy = cv_copy_context();
    assert_int_equal(cv_set(var, &b, &t2), CV_OK);
    assert_int_equal(cv_set(var, NULL, &t3), CV_OK);
    cv_reclaim_barrier();
    assert_true(atomic_load(&a.live) >= 1); /* held by copy and by t2 */
    assert_true(atomic_load(&b.live) >= 1); /* held by t3 */

    /* A set without a token, to a value nothing else holds. */
    assert_int_equal(cv_set(var, &c, NULL), CV_OK);
    cv_reclaim_barrier();
    assert_true(atomic_load(&c.live) >= 1);

    assert_int_equal(cv_reset(var, &t2), CV_OK); /* back to a, out of order */
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&c.live), 0);
    assert_true(atomic_load(&b.live) >= 1); /* t3 still holds it */
    assert_true(atomic_load(&a.live) >= 1);

    cv_token_discard(&t3);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&b.live), 0);

    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_false(cv_context_contains(ctx, var));
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_reclaim_barrier();
    assert_true(atomic_load(&a.live) >= 1); /* the copy still holds it */
    void *out = NULL;
    assert_int_equal(cv_context_get(copy, var, &out), CV_OK);
    assert_ptr_equal(out, &a);

    cv_context_release(copy);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&a.live), 0);
    assert_true(atomic_load(&a.retains) > 0);
    assert_int_equal(atomic_load(&a.retains), atomic_load(&a.releases));
    assert_true(atomic_load(&b.retains) > 0);
    assert_int_equal(atomic_load(&b.retains), atomic_load(&b.releases));
    assert_true(atomic_load(&c.retains) > 0);
    assert_int_equal(atomic_load(&c.retains), atomic_load(&c.releases));
    assert_int_equal(atomic_load(&total_retains) - retains0,
                     atomic_load(&total_releases) - releases0);
    assert_int_equal(atomic_load(&underflows), 0);
    cv_var_release(var);
}

struct hook_thread_job {
    cv_var_t *var;
    struct tracked *value;
    cv_status_t status;
};

static void *hook_thread(void *arg)
{
    struct hook_thread_job *job = arg;
    job->status = cv_set(job->var, job->value, NULL);
    return NULL;
}

/* Contexts of exited threads, and inherited copies, drop their values too. */
static void test_hooks_balance_across_threads(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    struct tracked inherited, own;
    tracked_init(&inherited);
    tracked_init(&own);
    cv_var_t *var = tracked_var("tracked");
    cv_token_t tok;
    assert_int_equal(cv_set(var, &inherited, &tok), CV_OK);
    struct hook_thread_job job = {.var = var, .value = &own};
    pthread_t thread;
    assert_int_equal(cv_thread_create(&thread, NULL, hook_thread, &job), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(job.status, CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&own.live), 0);
    assert_true(atomic_load(&own.retains) > 0);
    assert_int_equal(atomic_load(&inherited.live), 0);
    assert_true(atomic_load(&inherited.retains) > 0);
    assert_int_equal(atomic_load(&underflows), 0);
    cv_var_release(var);
}

static void test_default_is_never_passed_to_hooks(void **state)
{
    (void)state;
    struct tracked dflt, value;
    tracked_init(&dflt);
    tracked_init(&value);
    cv_var_t *var = cv_var_new("defaulted", &(cv_var_opts_t){.default_value = &dflt,
                                                             .has_default = true,
                                                             .retain = tracked_retain,
                                                             .release = tracked_release});
    void *out = NULL;
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_ptr_equal(out, &dflt);
    cv_token_t tok;
    assert_int_equal(cv_set(var, &value, &tok), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_ptr_equal(out, &dflt);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&dflt.retains), 0);
    assert_int_equal(atomic_load(&dflt.releases), 0);
    assert_int_equal(atomic_load(&value.live), 0);
    assert_true(atomic_load(&value.retains) > 0);
    cv_var_release(var);
}

struct orphan_job {
    cv_var_t *var;
    struct tracked *replacement;
    cv_status_t get_status, set_status;
    void *seen, *seen_after_set;
};

static void orphan_fn(void *arg)
{
    struct orphan_job *job = arg;
    job->get_status = cv_get(job->var, &job->seen);
    job->set_status = cv_set(job->var, job->replacement, NULL);
    job->seen_after_set = cv_get_or(job->var, sentinel);
}

static void test_released_variable_lives_on_in_contexts(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    struct tracked first, second;
    tracked_init(&first);
    tracked_init(&second);
    cv_var_t *var = tracked_var("orphan");
    cv_context_t *ctx = cv_context_new();
    run_set(ctx, var, &first);
    cv_context_t *copy = cv_context_copy(ctx);
    cv_var_release(var);

    /* The creator let go: reach the variable through the contexts only. */
    cv_context_iter_t it;
    cv_context_iter_init(&it, ctx);
    cv_var_t *held = NULL;
    void *value = NULL;
    assert_true(cv_context_iter_next(&it, &held, &value));
    assert_ptr_equal(value, &first);
    assert_string_equal(cv_var_name(held), "orphan");
    assert_true(cv_context_contains(ctx, held));
    assert_true(cv_context_contains(copy, held));

    struct orphan_job job = {.var = held, .replacement = &second};
    assert_int_equal(cv_context_run(ctx, orphan_fn, &job), CV_OK);
    assert_int_equal(job.get_status, CV_OK);
    assert_ptr_equal(job.seen, &first);
    assert_int_equal(job.set_status, CV_OK);
    assert_ptr_equal(job.seen_after_set, &second);
    void *out = NULL;
    assert_int_equal(cv_context_get(copy, held, &out), CV_OK);
    assert_ptr_equal(out, &first);
    cv_context_iter_fini(&it);

    cv_context_release(ctx);
    cv_reclaim_barrier();
    assert_true(atomic_load(&first.live) >= 1); /* the copy */
    assert_int_equal(atomic_load(&second.live), 0);

    /* The last holder drops it: its release hook still runs. */
    cv_context_release(copy);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&first.live), 0);
    assert_true(atomic_load(&first.retains) > 0);
    assert_true(atomic_load(&second.retains) > 0);
    assert_int_equal(atomic_load(&underflows), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_without_value_or_default_is_enovalue),
        cmocka_unit_test(test_get_returns_default_until_set),
        cmocka_unit_test(test_get_or_fallback_beats_default),
        cmocka_unit_test(test_null_is_a_value),
        cmocka_unit_test(test_var_name_is_a_copy),
        cmocka_unit_test(test_set_in_run_lands_in_that_context),
        cmocka_unit_test(test_nested_runs),
        cmocka_unit_test(test_reentering_an_entered_context_is_ebusy),
        cmocka_unit_test(test_enter_exit_switch_the_current_context),
        cmocka_unit_test(test_exit_of_a_non_current_context_is_enotcurrent),
        cmocka_unit_test(test_run_restores_the_caller_whatever_fn_did),
        cmocka_unit_test(test_copies_are_independent_both_ways),
        cmocka_unit_test(test_copy_context_vs_context_copy_vs_new),
        cmocka_unit_test(test_copy_context_inside_run_copies_the_run_context),
        cmocka_unit_test(test_context_current_tracks_switches),
        cmocka_unit_test(test_context_retain_release),
        cmocka_unit_test(test_defaults_are_invisible_to_the_mapping_api),
        cmocka_unit_test(test_mapping_api_reports_every_value),
        cmocka_unit_test(test_context_equal),
        cmocka_unit_test(test_iteration_is_over_a_snapshot),
        cmocka_unit_test(test_iterator_outlives_its_context),
        cmocka_unit_test(test_colliding_variables_keep_their_semantics),
        cmocka_unit_test(test_strerror_is_distinct_for_every_status),
        cmocka_unit_test(test_hooks_balance_after_barrier),
        cmocka_unit_test(test_hooks_balance_across_threads),
        cmocka_unit_test(test_default_is_never_passed_to_hooks),
        cmocka_unit_test(test_released_variable_lives_on_in_contexts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
