/*
 * Flow suppression, cv_capture_context and tasks: capture at submit and
 * run at execute on another thread, sets that stay in the task's context,
 * a task that runs once, and work submitted with flow suppressed that
 * carries no values and keeps none alive.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "run_selected.h"
#include "values.h"

#include <ctxvars.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

static char request[] = "req-1", other[] = "other";

static void test_suppression_nests_and_restore_checks(void **state)
{
    (void)state;
    assert_false(cv_flow_is_suppressed());
    assert_int_equal(cv_flow_restore(), CV_EINVAL);
    cv_flow_suppress();
    cv_flow_suppress();
    assert_true(cv_flow_is_suppressed());
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_true(cv_flow_is_suppressed());
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_false(cv_flow_is_suppressed());
    assert_int_equal(cv_flow_restore(), CV_EINVAL);
}

static void test_capture_copies_unless_suppressed(void **state)
{
    cv_var_t *var = cv_var_new("request", NULL);
    assert_int_equal(cv_set(var, request, NULL), CV_OK);
    cv_context_t *captured = cv_capture_context();
    assert_true(cv_context_equal(captured, *state));
    assert_ptr_not_equal(captured, *state);
    cv_flow_suppress();
    cv_context_t *empty = cv_capture_context();
    cv_context_t *copy = cv_copy_context(); /* Python's copy_context: unaffected */
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_int_equal(cv_context_len(empty), 0);
    assert_true(cv_context_equal(copy, *state));
    /* The thread's own values are untouched by suppression. */
    assert_ptr_equal(current_value(var), request);
    cv_context_release(captured);
    cv_context_release(empty);
    cv_context_release(copy);
    cv_var_release(var);
}

/* Suppression belongs to the thread, not to a context. */
static void check_suppressed(void *arg)
{
    *(bool *)arg = cv_flow_is_suppressed();
}

static void *report_suppressed(void *arg)
{
    *(bool *)arg = cv_flow_is_suppressed();
    return NULL;
}

static void test_suppression_is_per_thread(void **state)
{
    (void)state;
    cv_flow_suppress();
    bool in_run = false, in_thread = true;
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_run(ctx, check_suppressed, &in_run), CV_OK);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, report_suppressed, &in_thread), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_true(in_run);
    assert_false(in_thread);
    cv_context_release(ctx);
}

struct seen {
    cv_var_t *var;
    void *value;
    size_t len;
};

static void *see(void *arg)
{
    struct seen *seen = arg;
    seen->value = cv_get_or(seen->var, sentinel);
    seen->len = cv_context_len(cv_context_current());
    return NULL;
}

static void test_thread_create_honours_suppression(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("request", NULL);
    assert_int_equal(cv_set(var, request, NULL), CV_OK);
    struct seen inherited = {.var = var}, suppressed = {.var = var};
    pthread_t thread;
    assert_int_equal(cv_thread_create(&thread, NULL, see, &inherited), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    cv_flow_suppress();
    assert_int_equal(cv_thread_create(&thread, NULL, see, &suppressed), 0);
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_ptr_equal(inherited.value, request);
    assert_ptr_equal(suppressed.value, sentinel);
    assert_int_equal(suppressed.len, 0);
    cv_var_release(var);
}

/* A task's body: reads the request, sets a value of its own. */
struct job {
    cv_var_t *var;
    bool writes; /* sets var to `other` after reading it */
    void *seen;
    int runs;
};

static void job_body(void *arg)
{
    struct job *job = arg;
    job->runs++;
    job->seen = cv_get_or(job->var, sentinel);
    if (job->writes)
        cv_set(job->var, other, NULL);
}

static void *run_task(void *arg)
{
    return (void *)(intptr_t)cv_task_run(arg);
}

static void test_task_runs_on_another_thread_in_the_submitters_values(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("request", NULL);
    assert_int_equal(cv_set(var, request, NULL), CV_OK);
    struct job job = {.var = var, .writes = true};
    cv_task_t task;
    assert_int_equal(cv_task_init(&task, job_body, &job), CV_OK);
    /* Captured at submit: later sets of the submitter do not reach it. */
    cv_token_t tok;
    assert_int_equal(cv_set(var, "later", &tok), CV_OK);
    pthread_t worker;
    void *status;
    assert_int_equal(pthread_create(&worker, NULL, run_task, &task), 0);
    assert_int_equal(pthread_join(worker, &status), 0);
    assert_int_equal((intptr_t)status, CV_OK);
    assert_int_equal(job.runs, 1);
    assert_ptr_equal(job.seen, request);
    /* The task's set stayed in its own context. */
    assert_string_equal(current_value(var), "later");
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    assert_ptr_equal(current_value(var), request);
    /* A task runs once. */
    assert_int_equal(cv_task_run(&task), CV_EINVAL);
    assert_int_equal(job.runs, 1);
    cv_var_release(var);
}

static void test_task_arguments_and_empty_tasks(void **state)
{
    (void)state;
    cv_task_t task = {0};
    struct job job = {0};
    assert_int_equal(cv_task_init(NULL, job_body, &job), CV_EINVAL);
    assert_int_equal(cv_task_init(&task, NULL, &job), CV_EINVAL);
    assert_int_equal(cv_task_run(NULL), CV_EINVAL);
    assert_int_equal(cv_task_run(&task), CV_EINVAL); /* zero-initialised: empty */
    cv_task_discard(NULL);
    cv_task_discard(&task);
    assert_int_equal(job.runs, 0);
}

static void test_discarded_task_never_runs_and_keeps_nothing(void **state)
{
    (void)state;
    static struct tracked value;
    tracked_init(&value);
    cv_var_t *var = tracked_var("v");
    cv_token_t tok;
    assert_int_equal(cv_set(var, &value, &tok), CV_OK);
    struct job job = {.var = var};
    cv_task_t task;
    assert_int_equal(cv_task_init(&task, job_body, &job), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_task_discard(&task);
    assert_int_equal(cv_task_run(&task), CV_EINVAL);
    assert_int_equal(job.runs, 0);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&value.live), 0);
    cv_var_release(var);
}

/* Background work submitted with flow suppressed sees no request values
 * and holds no reference to them while it waits in a queue. */
static void test_suppressed_task_carries_and_keeps_no_values(void **state)
{
    (void)state;
    static struct tracked value;
    tracked_init(&value);
    cv_var_t *var = tracked_var("v");
    cv_token_t tok;
    assert_int_equal(cv_set(var, &value, &tok), CV_OK);
    struct job job = {.var = var};
    cv_task_t task;
    cv_flow_suppress();
    assert_int_equal(cv_task_init(&task, job_body, &job), CV_OK);
    assert_int_equal(cv_flow_restore(), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&value.live), 0); /* the queued task holds nothing */
    pthread_t worker;
    void *status;
    assert_int_equal(pthread_create(&worker, NULL, run_task, &task), 0);
    assert_int_equal(pthread_join(worker, &status), 0);
    assert_int_equal((intptr_t)status, CV_OK);
    assert_int_equal(job.runs, 1);
    assert_ptr_equal(job.seen, sentinel);
    cv_var_release(var);
}

/* A submitter that captures one context for task after task (the library
 * takes those references in batches): every task sees the map of its
 * capture, through a set between captures and the context's exit, and the
 * values live exactly as long as a task or the context holds them. */
#define MANY_TASKS 100

struct task_batch {
    cv_task_t *tasks;
    int from, to;
    intptr_t failures;
};

static void *run_batch(void *arg)
{
    struct task_batch *batch = arg;
    for (int i = batch->from; i < batch->to; i++)
        batch->failures += cv_task_run(&batch->tasks[i]) != CV_OK;
    return NULL;
}

static void test_many_tasks_from_one_context(void **state)
{
    (void)state;
    static struct tracked first, second;
    tracked_init(&first);
    tracked_init(&second);
    cv_var_t *var = tracked_var("v");
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(var, &first, NULL), CV_OK);
    static struct job jobs[MANY_TASKS];
    static cv_task_t tasks[MANY_TASKS];
    for (int i = 0; i < MANY_TASKS; i++) {
        if (i == MANY_TASKS / 2)
            assert_int_equal(cv_set(var, &second, NULL), CV_OK);
        jobs[i] = (struct job){.var = var};
        assert_int_equal(cv_task_init(&tasks[i], job_body, &jobs[i]), CV_OK);
    }
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    /* Half on another thread, half here, after the context is gone. */
    cv_context_release(ctx);
    struct task_batch there = {tasks, 0, MANY_TASKS / 2, 0};
    struct task_batch here = {tasks, MANY_TASKS / 2, MANY_TASKS, 0};
    pthread_t worker;
    assert_int_equal(pthread_create(&worker, NULL, run_batch, &there), 0);
    run_batch(&here);
    assert_int_equal(pthread_join(worker, NULL), 0);
    assert_int_equal(there.failures + here.failures, 0);
    for (int i = 0; i < MANY_TASKS; i++) {
        assert_int_equal(jobs[i].runs, 1);
        assert_ptr_equal(jobs[i].seen, i < MANY_TASKS / 2 ? &first : &second);
    }
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&first.live), 0);
    assert_int_equal(atomic_load(&second.live), 0);
    cv_var_release(var);
}

static void enter_and_stay(void *arg)
{
    cv_context_enter(arg);
}

static void test_task_that_leaves_a_context_entered(void **state)
{
    (void)state;
    cv_context_t *left = cv_context_new();
    cv_context_t *before = cv_context_current();
    cv_task_t task;
    assert_int_equal(cv_task_init(&task, enter_and_stay, left), CV_OK);
    assert_int_equal(cv_task_run(&task), CV_ENOTCURRENT);
    assert_ptr_equal(cv_context_current(), before);
    assert_int_equal(cv_task_run(&task), CV_EINVAL);
    cv_context_release(left);
}

/* Many tasks from several submitters through one queue-less hand-off: each
 * sees its own submitter's request. */
struct submitter {
    cv_var_t *var;
    char id[16];
    cv_task_t tasks[64];
    struct job jobs[64];
};

static void *submit(void *arg)
{
    struct submitter *s = arg;
    cv_set(s->var, s->id, NULL);
    for (int i = 0; i < 64; i++) {
        s->jobs[i] = (struct job){.var = s->var, .writes = true};
        if (cv_task_init(&s->tasks[i], job_body, &s->jobs[i]) != CV_OK)
            return (void *)1;
    }
    return NULL;
}

static void test_tasks_from_many_submitters(void **state)
{
    (void)state;
    enum { SUBMITTERS = 4 };
    cv_var_t *var = cv_var_new("request", NULL);
    static struct submitter submitters[SUBMITTERS];
    pthread_t threads[SUBMITTERS];
    for (int i = 0; i < SUBMITTERS; i++) {
        submitters[i].var = var;
        snprintf(submitters[i].id, sizeof(submitters[i].id), "req-%d", i);
        assert_int_equal(pthread_create(&threads[i], NULL, submit, &submitters[i]), 0);
    }
    for (int i = 0; i < SUBMITTERS; i++) {
        void *failed;
        assert_int_equal(pthread_join(threads[i], &failed), 0);
        assert_null(failed);
    }
    for (int t = 0; t < 64; t++)
        for (int i = 0; i < SUBMITTERS; i++)
            assert_int_equal(cv_task_run(&submitters[i].tasks[t]), CV_OK);
    for (int i = 0; i < SUBMITTERS; i++)
        for (int t = 0; t < 64; t++)
            assert_ptr_equal(submitters[i].jobs[t].seen, submitters[i].id);
    cv_var_release(var);
}

/* Tasks run on one thread reuse its task context: each must still start
 * from its own capture, with an identity of its own, and a context that fn
 * kept must not be reused under it. */
struct probe {
    cv_var_t *var;
    void *seen;
    cv_token_t token;       /* made by a set inside the task */
    cv_status_t late_reset; /* a reset of the previous task's token */
    cv_token_t *earlier;    /* that token */
    cv_context_t *kept;     /* the task's context, retained */
    bool keep;
};

static void probe_body(void *arg)
{
    struct probe *p = arg;
    p->seen = cv_get_or(p->var, sentinel);
    if (p->earlier)
        p->late_reset = cv_reset(p->var, p->earlier);
    cv_set(p->var, other, &p->token);
    if (p->keep) {
        p->kept = cv_context_current();
        cv_context_retain(p->kept);
    }
}

static void test_tasks_on_one_thread_start_fresh(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, request, NULL), CV_OK);
    struct probe first = {.var = var, .keep = true};
    struct probe second = {.var = var, .earlier = &first.token};
    cv_task_t t1, t2;
    assert_int_equal(cv_task_init(&t1, probe_body, &first), CV_OK);
    assert_int_equal(cv_task_init(&t2, probe_body, &second), CV_OK);
    assert_int_equal(cv_task_run(&t1), CV_OK);
    assert_int_equal(cv_task_run(&t2), CV_OK);
    assert_ptr_equal(first.seen, request);
    assert_ptr_equal(second.seen, request); /* not `other`, the first task's set */
    assert_int_equal(second.late_reset, CV_ETOKEN_CONTEXT);
    /* The kept context is the first task's, untouched by the second. */
    void *out = NULL;
    assert_int_equal(cv_context_get(first.kept, var, &out), CV_OK);
    assert_ptr_equal(out, other);
    assert_int_equal(cv_context_len(first.kept), 1);
    cv_token_discard(&first.token);
    cv_token_discard(&second.token);
    cv_context_release(first.kept);
    cv_var_release(var);
}

struct nest {
    cv_var_t *var;
    cv_task_t inner;
    struct job inner_job;
    void *outer_after;
    cv_status_t inner_status;
};

static void outer_body(void *arg)
{
    struct nest *n = arg;
    cv_set(n->var, "outer", NULL);
    n->inner_status = cv_task_run(&n->inner);
    n->outer_after = cv_get_or(n->var, sentinel);
}

static void test_task_run_inside_a_task(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, request, NULL), CV_OK);
    struct nest n = {.var = var, .inner_job = {.var = var, .writes = true}};
    assert_int_equal(cv_task_init(&n.inner, job_body, &n.inner_job), CV_OK);
    cv_task_t outer;
    assert_int_equal(cv_task_init(&outer, outer_body, &n), CV_OK);
    assert_int_equal(cv_task_run(&outer), CV_OK);
    assert_int_equal(n.inner_status, CV_OK);
    assert_ptr_equal(n.inner_job.seen, request); /* captured before the outer set */
    assert_string_equal(n.outer_after, "outer"); /* the inner set stayed inside */
    assert_ptr_equal(current_value(var), request);
    cv_var_release(var);
}

static void exit_inside(void *arg)
{
    (void)arg;
    pthread_exit(NULL);
}

static void *run_then_exit(void *arg)
{
    cv_task_t *tasks = arg;
    cv_task_run(&tasks[0]); /* leaves a reusable context behind */
    cv_task_run(&tasks[1]); /* never returns */
    return NULL;
}

/* A thread that exits inside a task drops the task's context and map. */
static void test_thread_exit_inside_a_task(void **state)
{
    (void)state;
    static struct tracked value;
    tracked_init(&value);
    cv_var_t *var = tracked_var("v");
    cv_token_t tok;
    assert_int_equal(cv_set(var, &value, &tok), CV_OK);
    cv_task_t tasks[2];
    struct job job = {.var = var};
    assert_int_equal(cv_task_init(&tasks[0], job_body, &job), CV_OK);
    assert_int_equal(cv_task_init(&tasks[1], exit_inside, NULL), CV_OK);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, run_then_exit, tasks), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    cv_reclaim_barrier();
    assert_int_equal(job.runs, 1);
    assert_int_equal(atomic_load(&value.live), 0);
    cv_var_release(var);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_suppression_nests_and_restore_checks),
        cmocka_unit_test_setup_teardown(test_capture_copies_unless_suppressed, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test(test_suppression_is_per_thread),
        cmocka_unit_test_setup_teardown(test_thread_create_honours_suppression, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_task_runs_on_another_thread_in_the_submitters_values,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test(test_task_arguments_and_empty_tasks),
        cmocka_unit_test_setup_teardown(test_discarded_task_never_runs_and_keeps_nothing,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_suppressed_task_carries_and_keeps_no_values,
                                        enter_fresh, exit_fresh),
        cmocka_unit_test(test_task_that_leaves_a_context_entered),
        cmocka_unit_test(test_many_tasks_from_one_context),
        cmocka_unit_test(test_tasks_from_many_submitters),
        cmocka_unit_test_setup_teardown(test_tasks_on_one_thread_start_fresh, enter_fresh,
                                        exit_fresh),
        cmocka_unit_test_setup_teardown(test_task_run_inside_a_task, enter_fresh, exit_fresh),
        cmocka_unit_test_setup_teardown(test_thread_exit_inside_a_task, enter_fresh, exit_fresh),
    };
    return cv_test_run_selected("flow", tests, sizeof(tests) / sizeof(tests[0]));
}
