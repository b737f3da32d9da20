/*
 * Tokens (PEP 567's Token): old values and MISSING, the variable, use,
 * reset in any order, the three reset errors in their stated order,
 * discard, and identities that a reused address cannot fake.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "values.h"

#include <ctxvars.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

static char value_a[] = "a", value_b[] = "b", value_c[] = "c", value_d[] = "d";

/* ------------------------------------------------------------- values */

static void test_old_value_is_missing_for_an_unset_variable(void **state)
{
    (void)state;
    /* Even with a default: a default is not a value. */
    cv_var_t *var =
        cv_var_new("v", &(cv_var_opts_t){.default_value = value_d, .has_default = true});
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    void *out = sentinel;
    assert_false(cv_token_old_value(&tok, &out));
    assert_ptr_equal(out, sentinel);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_false(cv_token_old_value(&tok, &out));
    assert_ptr_equal(out, sentinel);
    assert_ptr_equal(current_value(var), value_d);
    assert_false(cv_context_contains(cv_context_current(), var));
    cv_var_release(var);
}

static void test_old_value_reports_the_previous_value(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2, t3;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_set(var, NULL, &t2), CV_OK);
    assert_int_equal(cv_set(var, value_b, &t3), CV_OK);
    void *out = sentinel;
    assert_true(cv_token_old_value(&t2, &out));
    assert_ptr_equal(out, value_a);
    /* An old value of NULL is a value, not MISSING. */
    out = sentinel;
    assert_true(cv_token_old_value(&t3, &out));
    assert_null(out);

    assert_int_equal(cv_reset(var, &t3), CV_OK);
    assert_true(cv_context_contains(cv_context_current(), var));
    out = sentinel;
    assert_int_equal(cv_get(var, &out), CV_OK);
    assert_null(out);
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_ptr_equal(current_value(var), sentinel);
    cv_var_release(var);
}

static void test_token_var_and_old_value_stay_readable_after_use(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL), *other = cv_var_new("other", NULL);
    cv_token_t t1, t2, t3;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_int_equal(cv_set(other, value_c, &t3), CV_OK);
    assert_ptr_equal(cv_token_var(&t1), var);
    assert_ptr_equal(cv_token_var(&t2), var);
    assert_ptr_equal(cv_token_var(&t3), other);

    assert_int_equal(cv_reset(var, &t2), CV_OK);
    cv_token_discard(&t3);
    void *out = NULL;
    assert_ptr_equal(cv_token_var(&t2), var);
    assert_true(cv_token_old_value(&t2, &out));
    assert_ptr_equal(out, value_a);
    assert_ptr_equal(cv_token_var(&t3), other);
    out = sentinel;
    assert_false(cv_token_old_value(&t3, &out));
    assert_ptr_equal(out, sentinel);

    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_ptr_equal(current_value(other), value_c);
    cv_var_release(other);
    cv_var_release(var);
}

static void test_token_used_through_its_life(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_false(cv_token_used(&t1));
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_false(cv_token_used(&t2));
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_true(cv_token_used(&t2));
    assert_false(cv_token_used(&t1));
    cv_token_discard(&t1);
    assert_true(cv_token_used(&t1));
    cv_var_release(var);
}

static void test_set_without_token(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_b, &tok), CV_OK);
    void *out = NULL;
    assert_true(cv_token_old_value(&tok, &out));
    assert_ptr_equal(out, value_a);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    cv_var_release(var);
}

/* -------------------------------------------------------------- resets */

static void test_reset_restores_or_removes(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_context_len(ctx), 1);
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_int_equal(cv_context_len(ctx), 1);
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_len(ctx), 1);
    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_ptr_equal(current_value(var), sentinel);
    assert_false(cv_context_contains(ctx, var));
    assert_int_equal(cv_context_len(ctx), 0);
    cv_var_release(var);
}

static void test_double_reset_is_etoken_used(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_int_equal(cv_set(var, value_c, NULL), CV_OK);
    /* The second reset must not restore value_a again. */
    assert_int_equal(cv_reset(var, &t2), CV_ETOKEN_USED);
    assert_ptr_equal(current_value(var), value_c);
    assert_int_equal(cv_context_len(ctx), 1);
    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_int_equal(cv_reset(var, &t1), CV_ETOKEN_USED);
    assert_ptr_equal(current_value(var), sentinel);
    cv_var_release(var);
}

static void test_reset_with_another_variables_token(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL);
    cv_token_t tx, ty;
    assert_int_equal(cv_set(x, value_a, &tx), CV_OK);
    assert_int_equal(cv_set(y, value_b, &ty), CV_OK);
    assert_int_equal(cv_reset(y, &tx), CV_ETOKEN_VAR);
    assert_int_equal(cv_reset(x, &ty), CV_ETOKEN_VAR);
    assert_ptr_equal(current_value(x), value_a);
    assert_ptr_equal(current_value(y), value_b);
    assert_int_equal(cv_context_len(ctx), 2);
    /* Refused, not used. */
    assert_false(cv_token_used(&tx));
    assert_false(cv_token_used(&ty));
    assert_int_equal(cv_reset(x, &tx), CV_OK);
    assert_int_equal(cv_reset(y, &ty), CV_OK);
    assert_int_equal(cv_context_len(ctx), 0);
    cv_var_release(y);
    cv_var_release(x);
}

struct reset_job {
    cv_var_t *var;
    cv_token_t *token;
    cv_status_t status;
    void *seen_after;
};

static void reset_job_fn(void *arg)
{
    struct reset_job *job = arg;
    job->status = cv_reset(job->var, job->token);
    job->seen_after = cv_get_or(job->var, sentinel);
}

static void test_reset_in_another_context(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);

    /* A copy holds the same values but is another context. */
    cv_context_t *copy = cv_copy_context();
    struct reset_job job = {.var = var, .token = &tok};
    assert_int_equal(cv_context_run(copy, reset_job_fn, &job), CV_OK);
    assert_int_equal(job.status, CV_ETOKEN_CONTEXT);
    assert_ptr_equal(job.seen_after, value_a);
    assert_false(cv_token_used(&tok));

    cv_context_t *empty = cv_context_new();
    job = (struct reset_job){.var = var, .token = &tok};
    assert_int_equal(cv_context_run(empty, reset_job_fn, &job), CV_OK);
    assert_int_equal(job.status, CV_ETOKEN_CONTEXT);
    assert_int_equal(cv_context_len(empty), 0);

    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_false(cv_context_contains(ctx, var));
    assert_true(cv_context_contains(copy, var));
    cv_context_release(empty);
    cv_context_release(copy);
    cv_var_release(var);
}

struct set_job {
    cv_var_t *var;
    cv_token_t *token;
    cv_status_t status;
};

static void set_job_fn(void *arg)
{
    struct set_job *job = arg;
    job->status = cv_set(job->var, value_b, job->token);
}

/* The context is what counts, not the entry: a later run of the same
 * context may reset a token made in an earlier one. */
static void test_reset_in_a_later_run_of_the_same_context(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *ctx = cv_context_new();
    cv_token_t tok;
    struct set_job set = {.var = var, .token = &tok};
    assert_int_equal(cv_context_run(ctx, set_job_fn, &set), CV_OK);
    assert_int_equal(set.status, CV_OK);
    assert_false(cv_token_used(&tok));

    /* Not from the caller's context... */
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_CONTEXT);
    /* ...but from the same context entered again. */
    struct reset_job reset = {.var = var, .token = &tok};
    assert_int_equal(cv_context_run(ctx, reset_job_fn, &reset), CV_OK);
    assert_int_equal(reset.status, CV_OK);
    assert_ptr_equal(reset.seen_after, sentinel);
    assert_int_equal(cv_context_len(ctx), 0);
    cv_context_release(ctx);
    cv_var_release(var);
}

struct thread_token_job {
    cv_var_t *var;
    cv_token_t token;
    cv_status_t set_status;
};

static void *thread_set(void *arg)
{
    struct thread_token_job *job = arg;
    job->set_status = cv_set(job->var, value_c, &job->token);
    return NULL;
}

static void test_reset_of_another_threads_token(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    struct thread_token_job job = {.var = var};
    pthread_t thread;
    assert_int_equal(cv_thread_create(&thread, NULL, thread_set, &job), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(job.set_status, CV_OK);
    /* The thread's context was a copy of ours: still another context. */
    void *out = NULL;
    assert_true(cv_token_old_value(&job.token, &out));
    assert_ptr_equal(out, value_a);
    assert_int_equal(cv_reset(var, &job.token), CV_ETOKEN_CONTEXT);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_len(ctx), 1);
    assert_false(cv_token_used(&job.token));
    cv_token_discard(&job.token);
    assert_true(cv_token_used(&job.token));
    cv_var_release(var);
}

static void test_reset_checks_used_then_var_then_context(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL);
    cv_context_t *elsewhere = cv_context_new();
    cv_token_t live, used;
    struct set_job set = {.var = x, .token = &live};
    assert_int_equal(cv_context_run(elsewhere, set_job_fn, &set), CV_OK);
    set.token = &used;
    assert_int_equal(cv_context_run(elsewhere, set_job_fn, &set), CV_OK);
    struct reset_job reset = {.var = x, .token = &used};
    assert_int_equal(cv_context_run(elsewhere, reset_job_fn, &reset), CV_OK);
    assert_int_equal(reset.status, CV_OK);

    /* Used beats other variable and other context. */
    assert_int_equal(cv_reset(y, &used), CV_ETOKEN_USED);
    assert_int_equal(cv_reset(x, &used), CV_ETOKEN_USED);
    /* Other variable beats other context. */
    assert_int_equal(cv_reset(y, &live), CV_ETOKEN_VAR);
    assert_int_equal(cv_reset(x, &live), CV_ETOKEN_CONTEXT);
    assert_false(cv_token_used(&live));
    cv_token_discard(&live);
    cv_context_release(elsewhere);
    cv_var_release(y);
    cv_var_release(x);
}

static void test_resets_in_any_order(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2, t3;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_int_equal(cv_set(var, value_c, &t3), CV_OK);

    /* As in Python, each reset restores its own token's old value. */
    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_ptr_equal(current_value(var), sentinel);
    assert_int_equal(cv_context_len(ctx), 0);
    assert_int_equal(cv_reset(var, &t3), CV_OK);
    assert_ptr_equal(current_value(var), value_b);
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_len(ctx), 1);

    /* Interleaved over two variables. */
    cv_var_t *other = cv_var_new("other", NULL);
    cv_token_t o1, v4;
    assert_int_equal(cv_set(other, value_d, &o1), CV_OK);
    assert_int_equal(cv_set(var, value_d, &v4), CV_OK);
    assert_int_equal(cv_reset(other, &o1), CV_OK);
    assert_ptr_equal(current_value(var), value_d);
    assert_int_equal(cv_reset(var, &v4), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    assert_ptr_equal(current_value(other), sentinel);
    cv_var_release(other);
    cv_var_release(var);
}

/* ------------------------------------------------------------- discard */

static void test_discard_keeps_the_value_and_spends_the_token(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    cv_token_discard(&tok);
    assert_true(cv_token_used(&tok));
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_USED);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_len(ctx), 1);
    cv_token_discard(&tok); /* a no-op now */
    assert_true(cv_token_used(&tok));
    cv_var_release(var);
}

static void test_token_holds_its_old_value_until_spent(void **state)
{
    (void)state;
    struct tracked a, b;
    tracked_init(&a);
    tracked_init(&b);
    cv_var_t *var = tracked_var("tracked");
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, &a, &t1), CV_OK);
    assert_int_equal(cv_set(var, &b, &t2), CV_OK);
    cv_reclaim_barrier();
    /* The context dropped a; t2 keeps it for a reset. */
    assert_true(atomic_load(&a.live) >= 1);
    assert_true(atomic_load(&b.live) >= 1);

    assert_int_equal(cv_reset(var, &t2), CV_OK);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&b.live), 0);
    assert_true(atomic_load(&a.live) >= 1);

    assert_int_equal(cv_set(var, &b, &t2), CV_OK);
    cv_token_discard(&t2);
    cv_reclaim_barrier();
    /* Discarded: only the context holds b, nothing holds a. */
    assert_true(atomic_load(&b.live) >= 1);
    assert_int_equal(atomic_load(&a.live), 0);
    void *out = NULL;
    assert_true(cv_token_old_value(&t2, &out));
    assert_ptr_equal(out, &a);

    assert_int_equal(cv_reset(var, &t1), CV_OK);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&a.live), 0);
    assert_int_equal(atomic_load(&b.live), 0);
    assert_true(atomic_load(&a.retains) > 0);
    assert_true(atomic_load(&b.retains) > 0);
    assert_int_equal(atomic_load(&underflows), 0);
    cv_var_release(var);
}

/* ---------------------------------------------------------- identities */

static void test_context_identity_survives_address_reuse(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t tok;
    /* Enough rounds that the allocator hands an old address back (it may
     * not, under ASan's quarantine; the result must be the same). */
    for (int round = 0; round < 16; round++) {
        cv_context_t *first = cv_context_new();
        assert_int_equal(cv_context_enter(first), CV_OK);
        assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
        assert_int_equal(cv_context_exit(first), CV_OK);
        cv_context_release(first);

        cv_context_t *second = cv_context_new();
        assert_int_equal(cv_context_enter(second), CV_OK);
        assert_int_equal(cv_set(var, value_b, NULL), CV_OK);
        assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_CONTEXT);
        assert_ptr_equal(current_value(var), value_b);
        assert_int_equal(cv_context_len(second), 1);
        assert_int_equal(cv_context_exit(second), CV_OK);
        cv_context_release(second);
        assert_false(cv_token_used(&tok));
        cv_token_discard(&tok);
    }
    cv_var_release(var);
}

static void test_variable_identity_survives_address_reuse(void **state)
{
    cv_context_t *ctx = *state;
    for (int round = 0; round < 16; round++) {
        cv_var_t *first = cv_var_new("v", NULL);
        cv_token_t t1, t2;
        assert_int_equal(cv_set(first, value_a, &t1), CV_OK);
        assert_int_equal(cv_set(first, value_b, &t2), CV_OK);
        /* t1's MISSING takes the variable out of the context while t2 stays
         * live; without hooks nothing else keeps the variable. */
        assert_int_equal(cv_reset(first, &t1), CV_OK);
        assert_int_equal(cv_context_len(ctx), 0);
        cv_var_release(first);

        cv_var_t *second = cv_var_new("v", NULL);
        assert_int_equal(cv_set(second, value_c, NULL), CV_OK);
        assert_int_equal(cv_reset(second, &t2), CV_ETOKEN_VAR);
        assert_ptr_equal(current_value(second), value_c);
        assert_false(cv_token_used(&t2));
        cv_token_discard(&t2);

        cv_token_t t3;
        assert_int_equal(cv_set(second, value_d, &t3), CV_OK);
        assert_int_equal(cv_reset(second, &t3), CV_OK);
        assert_ptr_equal(current_value(second), value_c);
        cv_var_release(second);
        /* A variable released while set: ctx keeps it; drop it for the
         * next round by starting from an empty map. */
        cv_context_t *fresh = cv_context_new();
        assert_int_equal(cv_context_exit(ctx), CV_OK);
        cv_context_release(ctx);
        ctx = fresh;
        *state = ctx;
        assert_int_equal(cv_context_enter(ctx), CV_OK);
    }
}

static void test_zero_initialised_token(void **state)
{
    cv_context_t *ctx = *state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    cv_token_t tok;
    memset(&tok, 0, sizeof(tok));
    assert_true(cv_token_used(&tok));
    assert_null(cv_token_var(&tok));
    void *out = sentinel;
    assert_false(cv_token_old_value(&tok, &out));
    assert_ptr_equal(out, sentinel);
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_USED);
    cv_token_discard(&tok);
    assert_true(cv_token_used(&tok));
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_len(ctx), 1);
    cv_var_release(var);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_old_value_is_missing_for_an_unset_variable,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_old_value_reports_the_previous_value, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_token_var_and_old_value_stay_readable_after_use,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_token_used_through_its_life, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_set_without_token, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_restores_or_removes, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_double_reset_is_etoken_used, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_with_another_variables_token, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_in_another_context, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_in_a_later_run_of_the_same_context, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_of_another_threads_token, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_reset_checks_used_then_var_then_context, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_resets_in_any_order, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_discard_keeps_the_value_and_spends_the_token,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_token_holds_its_old_value_until_spent, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test(test_context_identity_survives_address_reuse),
        cmocka_unit_test_setup_teardown(test_variable_identity_survives_address_reuse, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_zero_initialised_token, enter_fresh, exit_fresh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
