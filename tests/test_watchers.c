/*
 * Switch watchers: registration and its limits, the events of enter, exit
 * and run with their contexts, what a watcher may do, and removal that
 * leaves no call under way, from another thread or from the watcher.
 *
 * cmocka is not thread-safe: threads count what they saw and the main
 * thread asserts after joining them.
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
#include <sys/wait.h>
#include <unistd.h>

#define MAX_EVENTS 16

struct event {
    cv_switch_event_t kind;
    cv_context_t *from, *to;
    void *seen; /* what cv_get read inside the watcher */
};

struct recorder {
    struct event events[MAX_EVENTS];
    int count;
    cv_var_t *probe; /* read inside the watcher, if not NULL */
};

static void record(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    struct recorder *rec = data;
    if (rec->count == MAX_EVENTS)
        return;
    rec->events[rec->count++] =
        (struct event){kind, from, to, rec->probe ? cv_get_or(rec->probe, sentinel) : NULL};
}

static void expect_event(const struct recorder *rec, int i, cv_switch_event_t kind,
                         cv_context_t *from, cv_context_t *to)
{
    assert_true(i < rec->count);
    assert_int_equal(rec->events[i].kind, kind);
    assert_ptr_equal(rec->events[i].from, from);
    assert_ptr_equal(rec->events[i].to, to);
}

static void nothing(void *arg)
{
    (void)arg;
}

static void test_add_and_remove_arguments(void **state)
{
    (void)state;
    int id = -1;
    struct recorder rec = {0};
    assert_int_equal(cv_watcher_add(NULL, &rec, &id), CV_EINVAL);
    assert_int_equal(cv_watcher_add(record, &rec, NULL), CV_EINVAL);
    assert_int_equal(id, -1);
    assert_int_equal(cv_watcher_remove(-1), CV_EINVAL);
    assert_int_equal(cv_watcher_remove(CV_MAX_WATCHERS), CV_EINVAL);
    assert_int_equal(cv_watcher_remove(0), CV_EINVAL); /* not registered */
    assert_int_equal(cv_watcher_add(record, &rec, &id), CV_OK);
    assert_int_equal(cv_watcher_remove(id), CV_OK);
    assert_int_equal(cv_watcher_remove(id), CV_EINVAL);
}

static void test_slots_run_out_and_come_back(void **state)
{
    (void)state;
    int ids[CV_MAX_WATCHERS];
    struct recorder rec = {0};
    for (int i = 0; i < CV_MAX_WATCHERS; i++) {
        assert_int_equal(cv_watcher_add(record, &rec, &ids[i]), CV_OK);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(ids[i], ids[j]);
    }
    int extra = -1;
    assert_int_equal(cv_watcher_add(record, &rec, &extra), CV_EBUSY);
    assert_int_equal(extra, -1);
    assert_int_equal(cv_watcher_remove(ids[3]), CV_OK);
    assert_int_equal(cv_watcher_add(record, &rec, &extra), CV_OK);
    assert_int_equal(extra, ids[3]);
    ids[3] = extra;
    for (int i = 0; i < CV_MAX_WATCHERS; i++)
        assert_int_equal(cv_watcher_remove(ids[i]), CV_OK);
}

static void test_enter_and_exit_report_both_contexts(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *base = cv_context_current();
    assert_int_equal(cv_set(var, "base", NULL), CV_OK);
    cv_context_t *ctx = cv_context_new();
    struct recorder rec = {.probe = var};
    int id;
    assert_int_equal(cv_watcher_add(record, &rec, &id), CV_OK);

    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    assert_int_equal(cv_watcher_remove(id), CV_OK);

    assert_int_equal(rec.count, 2);
    expect_event(&rec, 0, CV_SWITCH_ENTER, base, ctx);
    expect_event(&rec, 1, CV_SWITCH_EXIT, ctx, base);
    /* Called after the switch: the watcher reads the new context. */
    assert_ptr_equal(rec.events[0].seen, sentinel);
    assert_string_equal(rec.events[1].seen, "base");
    cv_context_release(ctx);
    cv_var_release(var);
}

struct nested {
    cv_context_t *inner;
    cv_status_t inner_status;
};

static void run_inner(void *arg)
{
    struct nested *n = arg;
    n->inner_status = cv_context_run(n->inner, nothing, NULL);
}

static void test_runs_report_each_switch(void **state)
{
    (void)state;
    cv_context_t *base = cv_context_current();
    cv_context_t *outer = cv_context_new(), *inner = cv_context_new();
    struct recorder rec = {0};
    int id;
    assert_int_equal(cv_watcher_add(record, &rec, &id), CV_OK);
    struct nested n = {inner, CV_EINVAL};
    assert_int_equal(cv_context_run(outer, run_inner, &n), CV_OK);
    assert_int_equal(n.inner_status, CV_OK);
    assert_int_equal(cv_watcher_remove(id), CV_OK);

    assert_int_equal(rec.count, 4);
    expect_event(&rec, 0, CV_SWITCH_ENTER, base, outer);
    expect_event(&rec, 1, CV_SWITCH_ENTER, outer, inner);
    expect_event(&rec, 2, CV_SWITCH_EXIT, inner, outer);
    expect_event(&rec, 3, CV_SWITCH_EXIT, outer, base);
    cv_context_release(outer);
    cv_context_release(inner);
}

static void enter_and_stay(void *arg)
{
    assert_int_equal(cv_context_enter(arg), CV_OK);
}

static void test_contexts_a_run_leaves_entered_are_reported_exited(void **state)
{
    (void)state;
    cv_context_t *base = cv_context_current();
    cv_context_t *ctx = cv_context_new(), *left = cv_context_new();
    struct recorder rec = {0};
    int id;
    assert_int_equal(cv_watcher_add(record, &rec, &id), CV_OK);
    assert_int_equal(cv_context_run(ctx, enter_and_stay, left), CV_ENOTCURRENT);
    assert_int_equal(cv_watcher_remove(id), CV_OK);

    assert_int_equal(rec.count, 4);
    expect_event(&rec, 0, CV_SWITCH_ENTER, base, ctx);
    expect_event(&rec, 1, CV_SWITCH_ENTER, ctx, left);
    expect_event(&rec, 2, CV_SWITCH_EXIT, left, ctx);
    expect_event(&rec, 3, CV_SWITCH_EXIT, ctx, base);
    cv_context_release(ctx);
    cv_context_release(left);
}

static void test_failed_switches_report_nothing(void **state)
{
    (void)state;
    cv_context_t *ctx = cv_context_new(), *other = cv_context_new();
    struct recorder rec = {0};
    int id;
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_watcher_add(record, &rec, &id), CV_OK);
    assert_int_equal(cv_context_enter(ctx), CV_EBUSY);
    assert_int_equal(cv_context_run(ctx, nothing, NULL), CV_EBUSY);
    assert_int_equal(cv_context_exit(other), CV_ENOTCURRENT);
    assert_int_equal(cv_context_exit(cv_context_current()), CV_OK);
    assert_int_equal(cv_context_exit(cv_context_current()), CV_ENOTCURRENT); /* the base */
    assert_int_equal(cv_watcher_remove(id), CV_OK);
    assert_int_equal(rec.count, 1);
    assert_int_equal(rec.events[0].kind, CV_SWITCH_EXIT);
    cv_context_release(ctx);
    cv_context_release(other);
}

static int order[4], order_len;

static void first(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)kind, (void)from, (void)to;
    order[order_len++] = *(int *)data;
}

static void test_watchers_run_in_slot_order_with_their_data(void **state)
{
    (void)state;
    int one = 1, two = 2, id_one, id_two;
    order_len = 0;
    assert_int_equal(cv_watcher_add(first, &one, &id_one), CV_OK);
    assert_int_equal(cv_watcher_add(first, &two, &id_two), CV_OK);
    assert_true(id_one < id_two);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_run(ctx, nothing, NULL), CV_OK);
    assert_int_equal(cv_watcher_remove(id_one), CV_OK);
    assert_int_equal(cv_watcher_remove(id_two), CV_OK);
    assert_int_equal(order_len, 4);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 1);
    assert_int_equal(order[3], 2);
    cv_context_release(ctx);
}

/* What a watcher tried, and what it got. */
struct meddler {
    cv_var_t *var;
    cv_context_t *spare;
    cv_status_t set, reset, enter, exit, run, task_run, remove_other;
    void *value_seen;
    size_t len_seen;
    bool copied;
    int other_id;
    int calls;
    cv_task_t task;
    int task_runs;
};

static void count_runs(void *arg)
{
    (*(int *)arg)++;
}

static void meddle(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)from;
    struct meddler *m = data;
    if (kind != CV_SWITCH_ENTER || m->calls++)
        return;
    cv_token_t tok;
    m->set = cv_set(m->var, "meddled", &tok);
    assert_true(cv_token_used(&tok)); /* a refused set leaves the token empty */
    m->enter = cv_context_enter(m->spare);
    m->exit = cv_context_exit(to);
    m->run = cv_context_run(m->spare, nothing, NULL);
    if (cv_task_init(&m->task, count_runs, &m->task_runs) == CV_OK)
        m->task_run = cv_task_run(&m->task);
    m->value_seen = cv_get_or(m->var, sentinel);
    m->len_seen = cv_context_len(to);
    cv_context_t *copy = cv_copy_context();
    m->copied = copy && cv_context_equal(copy, to);
    cv_context_release(copy);
    m->remove_other = cv_watcher_remove(m->other_id);
}

static void count_calls(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)kind, (void)from, (void)to;
    (*(int *)data)++;
}

static void test_a_watcher_may_read_but_not_switch_or_write(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *ctx = cv_context_new();
    cv_token_t tok;
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(var, "inside", &tok), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    int other_calls = 0, id, other_id;
    struct meddler m = {.var = var, .spare = cv_context_new()};
    assert_int_equal(cv_watcher_add(count_calls, &other_calls, &other_id), CV_OK);
    m.other_id = other_id;
    assert_int_equal(cv_watcher_add(meddle, &m, &id), CV_OK);

    assert_int_equal(cv_context_run(ctx, nothing, NULL), CV_OK);
    assert_int_equal(cv_watcher_remove(id), CV_OK);
    assert_int_equal(m.set, CV_EBUSY);
    assert_int_equal(m.enter, CV_EBUSY);
    assert_int_equal(m.exit, CV_EBUSY);
    assert_int_equal(m.run, CV_EBUSY);
    assert_int_equal(m.task_run, CV_EBUSY);
    /* The refused task was given back whole. */
    assert_int_equal(m.task_runs, 0);
    assert_int_equal(cv_task_run(&m.task), CV_OK);
    assert_int_equal(m.task_runs, 1);
    assert_int_equal(cv_task_run(&m.task), CV_EINVAL);
    assert_string_equal(m.value_seen, "inside");
    assert_int_equal(m.len_seen, 1);
    assert_true(m.copied);
    /* Removing another watcher from inside one works. */
    assert_int_equal(m.remove_other, CV_OK);
    assert_int_equal(cv_watcher_remove(other_id), CV_EINVAL);
    /* It came first in slot order on the enter, and was gone by the exit. */
    assert_int_equal(other_calls, 1);
    /* Nothing changed: the context, and where the thread is. */
    void *out = NULL;
    assert_int_equal(cv_context_get(ctx, var, &out), CV_OK);
    assert_string_equal(out, "inside");
    assert_int_equal(cv_context_len(ctx), 1);
    assert_ptr_not_equal(cv_context_current(), ctx);
    assert_int_equal(cv_context_run(m.spare, nothing, NULL), CV_OK); /* not left entered */
    cv_context_release(m.spare);
    cv_context_release(ctx);
    cv_var_release(var);
}

static void remove_self(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)kind, (void)from, (void)to;
    int *state = data; /* [0]: own id, [1]: calls, [2]: status of the removal */
    state[1]++;
    state[2] = cv_watcher_remove(state[0]);
}

static void test_a_watcher_may_remove_itself(void **state)
{
    (void)state;
    int self[3] = {-1, 0, -1};
    assert_int_equal(cv_watcher_add(remove_self, self, &self[0]), CV_OK);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_run(ctx, nothing, NULL), CV_OK);
    assert_int_equal(self[1], 1);
    assert_int_equal(self[2], CV_OK);
    assert_int_equal(cv_watcher_remove(self[0]), CV_EINVAL);
    cv_context_release(ctx);
}

static void *start_thread(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_new();
    cv_context_run(ctx, nothing, NULL);
    cv_context_release(ctx);
    return NULL;
}

static void test_thread_start_and_exit_are_not_switches(void **state)
{
    (void)state;
    int calls = 0, id;
    assert_int_equal(cv_watcher_add(count_calls, &calls, &id), CV_OK);
    pthread_t thread;
    assert_int_equal(cv_thread_create(&thread, NULL, start_thread, NULL), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(cv_watcher_remove(id), CV_OK);
    assert_int_equal(calls, 2); /* the run's enter and exit only */
}

/* Removal under fire: a thread switches without pause while the main
 * thread adds and removes a watcher (late_calls.h). */
static void check_alive(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)kind, (void)from, (void)to;
    target_called(data);
}

static atomic_bool switching_done;

static void *switch_forever(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_new();
    while (!atomic_load(&switching_done))
        cv_context_run(ctx, nothing, NULL);
    cv_context_release(ctx);
    return NULL;
}

static void test_removal_waits_for_calls_under_way(void **state)
{
    (void)state;
    enum { SWITCHERS = 2, ROUNDS = 300 };
    atomic_store(&switching_done, false);
    pthread_t threads[SWITCHERS];
    for (int i = 0; i < SWITCHERS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, switch_forever, NULL), 0);
    long calls = 0, late = 0;
    for (int round = 0; round < ROUNDS; round++) {
        struct target t;
        target_init(&t);
        int id;
        assert_int_equal(cv_watcher_add(check_alive, &t, &id), CV_OK);
        /* Removed while the switchers are calling it, not before they run. */
        while (atomic_load(&t.calls) == 0)
            sched_yield();
        assert_int_equal(cv_watcher_remove(id), CV_OK);
        long after_removal = target_kill(&t);
        for (volatile int spin = 0; spin < 2000; spin = spin + 1)
            ;
        calls += after_removal;
        late += target_late_calls(&t, after_removal);
    }
    atomic_store(&switching_done, true);
    for (int i = 0; i < SWITCHERS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    assert_int_equal(late, 0);
    assert_true(calls > 0);
}

static __thread bool exit_inside_watcher;

static void exit_thread(cv_switch_event_t kind, cv_context_t *from, cv_context_t *to, void *data)
{
    (void)kind, (void)from, (void)to, (void)data;
    if (exit_inside_watcher)
        pthread_exit(NULL);
}

static void *run_and_exit_inside(void *arg)
{
    exit_inside_watcher = true;
    cv_context_run(arg, nothing, NULL); /* never returns */
    return NULL;
}

static void test_a_thread_may_exit_inside_a_watcher(void **state)
{
    (void)state;
    pthread_t thread;
    int id;
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_watcher_add(exit_thread, NULL, &id), CV_OK);
    assert_int_equal(pthread_create(&thread, NULL, run_and_exit_inside, ctx), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    /* Removal must not wait for the thread that left inside its call. */
    assert_int_equal(cv_watcher_remove(id), CV_OK);
    /* The run was left, not finished: the context was given up. */
    assert_int_equal(cv_context_run(ctx, nothing, NULL), CV_OK);
    cv_context_release(ctx);
}

static atomic_bool churn_done;

static void *churn_watchers(void *arg)
{
    (void)arg;
    int calls = 0;
    while (!atomic_load(&churn_done)) {
        int id;
        if (cv_watcher_add(count_calls, &calls, &id) == CV_OK)
            cv_watcher_remove(id);
    }
    return NULL;
}

/* fork() while another thread registers and removes watchers: the child
 * can register, switch and remove (no lock left held). */
static void test_fork_while_watchers_churn(void **state)
{
    (void)state;
    atomic_store(&churn_done, false);
    pthread_t churner;
    assert_int_equal(pthread_create(&churner, NULL, churn_watchers, NULL), 0);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int calls = 0, id;
            cv_context_t *ctx = cv_context_new();
            bool ok = cv_watcher_add(count_calls, &calls, &id) == CV_OK &&
                      cv_context_run(ctx, nothing, NULL) == CV_OK && calls == 2 &&
                      cv_watcher_remove(id) == CV_OK;
            _exit(ok ? 0 : 1);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    atomic_store(&churn_done, true);
    assert_int_equal(pthread_join(churner, NULL), 0);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_and_remove_arguments),
        cmocka_unit_test(test_slots_run_out_and_come_back),
        cmocka_unit_test(test_enter_and_exit_report_both_contexts),
        cmocka_unit_test(test_runs_report_each_switch),
        cmocka_unit_test(test_contexts_a_run_leaves_entered_are_reported_exited),
        cmocka_unit_test(test_failed_switches_report_nothing),
        cmocka_unit_test(test_watchers_run_in_slot_order_with_their_data),
        cmocka_unit_test(test_a_watcher_may_read_but_not_switch_or_write),
        cmocka_unit_test(test_a_watcher_may_remove_itself),
        cmocka_unit_test(test_thread_start_and_exit_are_not_switches),
        cmocka_unit_test(test_removal_waits_for_calls_under_way),
        cmocka_unit_test(test_a_thread_may_exit_inside_a_watcher),
        cmocka_unit_test(test_fork_while_watchers_churn),
    };
    return cv_test_run_selected("watchers", tests, sizeof(tests) / sizeof(tests[0]));
}
