/*
 * Change handlers: calls on set and reset with the old and new state, on
 * switches only where the two contexts disagree, nothing for equal values,
 * what a handler sees and may do, values with hooks held for the call, and
 * cv_var_release that leaves no call under way.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "late_calls.h"
#include "run_selected.h"
#include "values.h"

#include <ctxvars.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#define MAX_CHANGES 16

struct log {
    cv_change_t changes[MAX_CHANGES];
    void *seen[MAX_CHANGES]; /* cv_get inside the handler */
    int count;
};

static void log_change(const cv_change_t *change, void *data)
{
    struct log *log = data;
    if (log->count == MAX_CHANGES)
        return;
    log->seen[log->count] = cv_get_or(change->var, sentinel);
    log->changes[log->count++] = *change;
}

static cv_var_t *logged_var(const char *name, struct log *log)
{
    return cv_var_new(name, &(cv_var_opts_t){.on_change = log_change, .on_change_data = log});
}

static void expect_change(const struct log *log, int i, cv_change_cause_t cause, void *old_value,
                          void *new_value)
{
    assert_true(i < log->count);
    const cv_change_t *c = &log->changes[i];
    assert_int_equal(c->cause, cause);
    assert_int_equal(c->had_old, old_value != NULL);
    assert_int_equal(c->has_new, new_value != NULL);
    if (old_value)
        assert_ptr_equal(c->old_value, old_value);
    if (new_value)
        assert_ptr_equal(c->new_value, new_value);
}

static char a[] = "a", b[] = "b", c[] = "c";

static void nothing(void *arg)
{
    (void)arg;
}

static void test_set_and_reset_report_old_and_new(void **state)
{
    (void)state;
    struct log log = {0};
    cv_var_t *var = logged_var("v", &log);
    cv_token_t first, second;
    assert_int_equal(cv_set(var, a, &first), CV_OK);
    assert_int_equal(cv_set(var, b, &second), CV_OK);
    assert_int_equal(cv_reset(var, &second), CV_OK);
    assert_int_equal(cv_reset(var, &first), CV_OK);

    assert_int_equal(log.count, 4);
    expect_change(&log, 0, CV_CHANGE_SET, NULL, a);
    expect_change(&log, 1, CV_CHANGE_SET, a, b);
    expect_change(&log, 2, CV_CHANGE_RESET, b, a);
    expect_change(&log, 3, CV_CHANGE_RESET, a, NULL); /* back to MISSING */
    for (int i = 0; i < 4; i++)
        assert_ptr_equal(log.changes[i].var, var);
    /* Called after the change: the handler reads the new value. */
    assert_ptr_equal(log.seen[0], a);
    assert_ptr_equal(log.seen[1], b);
    assert_ptr_equal(log.seen[2], a);
    assert_ptr_equal(log.seen[3], sentinel);
    cv_var_release(var);
}

static void test_no_call_when_nothing_changes(void **state)
{
    (void)state;
    struct log log = {0};
    cv_var_t *var = logged_var("v", &log);
    cv_token_t tok;
    assert_int_equal(cv_set(var, NULL, NULL), CV_OK);
    assert_int_equal(cv_set(var, NULL, &tok), CV_OK); /* the same value, NULL included */
    assert_int_equal(cv_reset(var, &tok), CV_OK);     /* restores the same value */
    assert_int_equal(log.count, 1);
    assert_int_equal(log.changes[0].cause, CV_CHANGE_SET);
    assert_false(log.changes[0].had_old);
    assert_true(log.changes[0].has_new);
    assert_null(log.changes[0].new_value);
    cv_var_release(var);
}

static void test_a_failed_reset_calls_nothing(void **state)
{
    (void)state;
    struct log log = {0};
    cv_var_t *var = logged_var("v", &log);
    cv_token_t tok;
    assert_int_equal(cv_set(var, a, &tok), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_USED);
    assert_int_equal(log.count, 2);
    cv_var_release(var);
}

static void test_switches_call_only_where_contexts_disagree(void **state)
{
    (void)state;
    struct log log_x = {0}, log_y = {0};
    cv_var_t *x = logged_var("x", &log_x), *y = logged_var("y", &log_y);
    cv_var_t *plain = cv_var_new("plain", NULL);
    assert_int_equal(cv_set(x, a, NULL), CV_OK);
    assert_int_equal(cv_set(y, a, NULL), CV_OK);
    cv_context_t *same = cv_copy_context();
    cv_context_t *other = cv_copy_context();
    assert_int_equal(cv_context_enter(other), CV_OK);
    assert_int_equal(cv_set(x, b, NULL), CV_OK);
    assert_int_equal(cv_set(plain, c, NULL), CV_OK);
    assert_int_equal(cv_context_exit(other), CV_OK);
    log_x.count = log_y.count = 0;

    /* A copy agrees on everything: nothing is called either way. */
    assert_int_equal(cv_context_run(same, nothing, NULL), CV_OK);
    assert_int_equal(log_x.count + log_y.count, 0);

    /* `other` differs in x only. */
    assert_int_equal(cv_context_enter(other), CV_OK);
    assert_int_equal(log_x.count, 1);
    expect_change(&log_x, 0, CV_CHANGE_SWITCH, a, b);
    assert_ptr_equal(log_x.seen[0], b);
    assert_int_equal(cv_context_exit(other), CV_OK);
    assert_int_equal(log_x.count, 2);
    expect_change(&log_x, 1, CV_CHANGE_SWITCH, b, a);
    assert_ptr_equal(log_x.seen[1], a);
    assert_int_equal(log_y.count, 0);

    /* An empty context: both disappear, then come back. */
    cv_context_t *empty = cv_context_new();
    assert_int_equal(cv_context_run(empty, nothing, NULL), CV_OK);
    assert_int_equal(log_x.count, 4);
    assert_int_equal(log_y.count, 2);
    expect_change(&log_x, 2, CV_CHANGE_SWITCH, a, NULL);
    expect_change(&log_x, 3, CV_CHANGE_SWITCH, NULL, a);
    expect_change(&log_y, 0, CV_CHANGE_SWITCH, a, NULL);
    expect_change(&log_y, 1, CV_CHANGE_SWITCH, NULL, a);

    cv_context_release(empty);
    cv_context_release(same);
    cv_context_release(other);
    cv_var_release(x);
    cv_var_release(y);
    cv_var_release(plain);
}

struct meddler {
    cv_var_t *var;
    cv_context_t *spare;
    cv_status_t set, reset, enter, run;
    cv_token_t *tok;
    bool armed;
    int calls;
};

static void meddle(const cv_change_t *change, void *data)
{
    (void)change;
    struct meddler *m = data;
    m->calls++;
    if (!m->armed)
        return;
    m->armed = false;
    m->set = cv_set(m->var, c, NULL);
    m->reset = cv_reset(m->var, m->tok);
    m->enter = cv_context_enter(m->spare);
    m->run = cv_context_run(m->spare, nothing, NULL);
}

static void test_a_handler_may_not_switch_or_write(void **state)
{
    (void)state;
    struct meddler m = {.spare = cv_context_new()};
    cv_var_t *var = cv_var_new("v", &(cv_var_opts_t){.on_change = meddle, .on_change_data = &m});
    cv_token_t tok;
    m.var = var;
    m.tok = &tok;
    assert_int_equal(cv_set(var, b, &tok), CV_OK);
    m.armed = true;
    assert_int_equal(cv_set(var, a, NULL), CV_OK);
    assert_int_equal(m.calls, 2);
    assert_int_equal(m.set, CV_EBUSY);
    assert_int_equal(m.reset, CV_EBUSY);
    assert_int_equal(m.enter, CV_EBUSY);
    assert_int_equal(m.run, CV_EBUSY);
    assert_ptr_equal(current_value(var), a);
    assert_false(cv_token_used(&tok)); /* the refused reset spent nothing */
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_int_equal(m.calls, 3);
    cv_context_release(m.spare);
    cv_var_release(var);
}

/* With hooks, the old value must be alive while the handler looks at it,
 * though the map has already dropped it. */
static atomic_int live_during_call;

static void check_old_alive(const cv_change_t *change, void *data)
{
    (void)data;
    if (change->had_old)
        atomic_store(&live_during_call, atomic_load(&((struct tracked *)change->old_value)->live));
}

static void test_values_with_hooks_are_held_for_the_call(void **state)
{
    (void)state;
    /* Static: the fresh context drops its reference after the test. */
    static struct tracked first, second;
    tracked_init(&first);
    tracked_init(&second);
    cv_var_t *var = cv_var_new("v", &(cv_var_opts_t){.retain = tracked_retain,
                                                     .release = tracked_release,
                                                     .on_change = check_old_alive});
    cv_token_t tok;
    assert_int_equal(cv_set(var, &first, NULL), CV_OK);
    atomic_store(&live_during_call, -1);
    assert_int_equal(cv_set(var, &second, NULL), CV_OK); /* no token holds `first` */
    assert_true(atomic_load(&live_during_call) >= 1);
    atomic_store(&live_during_call, -1);
    assert_int_equal(cv_set(var, &first, &tok), CV_OK);
    assert_true(atomic_load(&live_during_call) >= 1);
    atomic_store(&live_during_call, -1);
    assert_int_equal(cv_reset(var, &tok), CV_OK); /* drops `first` from the map */
    assert_true(atomic_load(&live_during_call) >= 1);
    cv_var_release(var);
    cv_reclaim_barrier();
    /* Only the map's reference to `second` is left. */
    assert_int_equal(atomic_load(&first.live), 0);
    assert_int_equal(atomic_load(&second.live), 1);
}

static void test_no_call_after_release(void **state)
{
    (void)state;
    struct log log = {0};
    cv_var_t *var = logged_var("v", &log);
    assert_int_equal(cv_set(var, a, NULL), CV_OK);
    cv_context_t *empty = cv_context_new();
    cv_var_release(var); /* the current context still holds it */
    assert_int_equal(cv_context_run(empty, nothing, NULL), CV_OK);
    assert_int_equal(log.count, 1);
    cv_context_release(empty);
}

static void release_self(const cv_change_t *change, void *data)
{
    int *calls = data;
    if ((*calls)++ == 0)
        cv_var_release(change->var);
}

static void test_a_handler_may_release_its_variable(void **state)
{
    (void)state;
    int calls = 0;
    cv_var_t *var =
        cv_var_new("v", &(cv_var_opts_t){.on_change = release_self, .on_change_data = &calls});
    cv_var_t *other = cv_var_new("other", NULL);
    assert_int_equal(cv_set(var, a, NULL), CV_OK);
    assert_int_equal(calls, 1);
    /* The context keeps the variable alive; its handler is gone. */
    assert_ptr_equal(cv_get_or(var, NULL), a);
    cv_context_t *empty = cv_context_new();
    assert_int_equal(cv_context_run(empty, nothing, NULL), CV_OK);
    assert_int_equal(calls, 1);
    cv_context_release(empty);
    cv_var_release(other);
}

static void test_many_variables_with_handlers(void **state)
{
    (void)state;
    enum { N = 40 };
    struct log logs[N];
    cv_var_t *vars[N];
    for (int i = 0; i < N; i++) {
        logs[i].count = 0;
        vars[i] = logged_var("v", &logs[i]);
        assert_non_null(vars[i]);
    }
    cv_context_t *before = cv_copy_context();
    for (int i = 0; i < N; i += 2)
        assert_int_equal(cv_set(vars[i], a, NULL), CV_OK);
    for (int i = 1; i < N; i += 4) /* release some in the middle of the set */
        cv_var_release(vars[i]);
    for (int i = 0; i < N; i++)
        logs[i].count = 0;
    assert_int_equal(cv_context_run(before, nothing, NULL), CV_OK);
    for (int i = 0; i < N; i++)
        assert_int_equal(logs[i].count, i % 2 == 0 ? 2 : 0);
    for (int i = 0; i < N; i++)
        if (i % 4 != 1)
            cv_var_release(vars[i]);
    cv_context_release(before);
}

/* Release under fire: threads switch between two contexts that disagree
 * on the variable while the main thread releases it; after the release
 * returns, the handler must see no call (late_calls.h). */
static void check_alive(const cv_change_t *change, void *data)
{
    (void)change;
    target_called(data);
}

struct switcher {
    cv_context_t *with_value;
    atomic_bool *done;
};

static void *switch_forever(void *arg)
{
    struct switcher *s = arg;
    cv_context_t *mine = cv_context_copy(s->with_value);
    while (!atomic_load(s->done))
        cv_context_run(mine, nothing, NULL);
    cv_context_release(mine);
    return NULL;
}

static void test_release_waits_for_calls_under_way(void **state)
{
    (void)state;
    enum { SWITCHERS = 2, ROUNDS = 100 };
    long calls = 0, late = 0;
    for (int round = 0; round < ROUNDS; round++) {
        struct target t;
        target_init(&t);
        cv_var_t *var =
            cv_var_new("v", &(cv_var_opts_t){.on_change = check_alive, .on_change_data = &t});
        cv_context_t *with_value = cv_context_new();
        assert_int_equal(cv_context_enter(with_value), CV_OK);
        assert_int_equal(cv_set(var, a, NULL), CV_OK);
        assert_int_equal(cv_context_exit(with_value), CV_OK);
        atomic_bool done;
        atomic_init(&done, false);
        struct switcher s = {with_value, &done};
        pthread_t threads[SWITCHERS];
        for (int i = 0; i < SWITCHERS; i++)
            assert_int_equal(pthread_create(&threads[i], NULL, switch_forever, &s), 0);
        while (atomic_load(&t.calls) < 4)
            sched_yield();
        long before = atomic_load(&t.calls);
        cv_var_release(var);
        long at_release = target_kill(&t);
        for (volatile int spin = 0; spin < 20000; spin = spin + 1)
            ;
        atomic_store(&done, true);
        for (int i = 0; i < SWITCHERS; i++)
            assert_int_equal(pthread_join(threads[i], NULL), 0);
        calls += before;
        late += target_late_calls(&t, at_release);
        cv_context_release(with_value);
    }
    assert_int_equal(late, 0);
    assert_true(calls > 0);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_and_reset_report_old_and_new, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_no_call_when_nothing_changes, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_a_failed_reset_calls_nothing, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_switches_call_only_where_contexts_disagree,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_a_handler_may_not_switch_or_write, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_values_with_hooks_are_held_for_the_call, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_no_call_after_release, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_a_handler_may_release_its_variable, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_many_variables_with_handlers, enter_fresh, exit_fresh),
        cmocka_unit_test(test_release_waits_for_calls_under_way),
    };
    return cv_test_run_selected("handlers", tests, sizeof(tests) / sizeof(tests[0]));
}
