/*
 * Every example of the seed guide (contextvars-guide.md), in C.
 *
 * The thread illustration runs on two real threads and the main thread,
 * moved through the guide's steps in lock step. The asyncio illustration
 * runs two tasks on one thread with a small cooperative scheduler on
 * ucontext: like asyncio, each task runs in its own copy of the context
 * that created it, entered when the loop resumes the task and exited when
 * the task awaits.
 *
 * Where the guide says what Python prints, the C test prints the same text
 * into a buffer and compares.
 */
#define _GNU_SOURCE /* ucontext */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctxvars.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

/* Switching stacks by hand needs telling the sanitizers, or ASan reports
 * false stack overflows and TSan mixes up the two tasks' histories. */
#if defined(__SANITIZE_ADDRESS__)
#define GUIDE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GUIDE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define GUIDE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GUIDE_TSAN 1
#endif
#endif
#ifdef GUIDE_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef GUIDE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

static char sentinel[] = "sentinel";

/* What Python's print() shows for a str-or-None value. */
static const char *show(const void *value)
{
    return value ? (const char *)value : "None";
}

struct transcript {
    char text[1024];
    size_t len;
};

static void say(struct transcript *t, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    int n = vsnprintf(t->text + t->len, sizeof(t->text) - t->len, format, args);
    va_end(args);
    if (n > 0)
        t->len += (size_t)n < sizeof(t->text) - t->len ? (size_t)n : sizeof(t->text) - t->len - 1;
}

static cv_var_t *var_with_default(const char *name, void *default_value)
{
    return cv_var_new(name, &(cv_var_opts_t){.default_value = default_value, .has_default = true});
}

/* var.get(), as a value or the sentinel for LookupError. */
static void *get(cv_var_t *var)
{
    void *out = sentinel;
    cv_status_t status = cv_get(var, &out);
    return status == CV_OK ? out : sentinel;
}

/* ---------------------------------------------- 1. main components */

/* my_var = contextvars.ContextVar("my_var", default=None) */
static void test_guide_context_var_with_default_none(void **state)
{
    (void)state;
    cv_var_t *my_var = var_with_default("my_var", NULL);
    assert_non_null(my_var);
    assert_string_equal(cv_var_name(my_var), "my_var");
    void *out = sentinel;
    assert_int_equal(cv_get(my_var, &out), CV_OK);
    assert_null(out);
    /* None is the default, not a value in the context. */
    assert_false(cv_context_contains(cv_context_current(), my_var));
    cv_var_release(my_var);
}

/* ---------------------------------------------- 2. common methods */

static char anonymous[] = "anonymous", alice[] = "alice", bob[] = "bob", guest[] = "guest";

static void test_guide_get_set_reset(void **state)
{
    (void)state;
    struct transcript out = {.len = 0};
    cv_var_t *user = var_with_default("user", anonymous);

    say(&out, "%s\n", show(get(user))); /* print(user.get()) */
    cv_token_t token;
    assert_int_equal(cv_set(user, alice, &token), CV_OK);
    assert_ptr_equal(cv_token_var(&token), user);
    void *old = sentinel;
    assert_false(cv_token_old_value(&token, &old)); /* Token.MISSING: the default is no value */
    assert_ptr_equal(old, sentinel);
    say(&out, "%s\n", show(get(user)));
    assert_int_equal(cv_reset(user, &token), CV_OK);
    say(&out, "%s\n", show(get(user)));
    assert_string_equal(out.text, "anonymous\nalice\nanonymous\n");
    cv_var_release(user);
}

/* token = user.set("bob"); print(token.old_value); user.reset(token)
 *
 * The guide prints "anonymous" there, but that is the default, which is
 * not a value: by PEP 567 old_value is Token.MISSING for a variable that
 * had no value in the context (and the guide's earlier reset removed it).
 * Only when "anonymous" was really set is it the old value. */
static void test_guide_token_remembers_the_previous_value(void **state)
{
    (void)state;
    cv_var_t *user = var_with_default("user", anonymous);
    cv_token_t token;
    assert_int_equal(cv_set(user, alice, &token), CV_OK);
    assert_int_equal(cv_reset(user, &token), CV_OK);

    assert_int_equal(cv_set(user, bob, &token), CV_OK);
    assert_ptr_equal(cv_token_var(&token), user);
    void *old = sentinel;
    assert_false(cv_token_old_value(&token, &old)); /* Token.MISSING */
    assert_ptr_equal(old, sentinel);
    assert_int_equal(cv_reset(user, &token), CV_OK);
    assert_ptr_equal(get(user), anonymous);

    cv_token_t explicit_token;
    assert_int_equal(cv_set(user, anonymous, &explicit_token), CV_OK);
    assert_int_equal(cv_set(user, bob, &token), CV_OK);
    assert_true(cv_token_old_value(&token, &old));
    assert_string_equal(old, "anonymous");
    assert_int_equal(cv_reset(user, &token), CV_OK);
    assert_ptr_equal(get(user), anonymous);
    assert_true(cv_context_contains(cv_context_current(), user));
    assert_int_equal(cv_reset(user, &explicit_token), CV_OK);
    assert_false(cv_context_contains(cv_context_current(), user));
    cv_var_release(user);
}

/* ----------------------------------------------------- 4. example */

static cv_var_t *user_id;
static struct transcript log_out;

/* def log(): print("User:", user_id.get()) */
static void log_user(void)
{
    say(&log_out, "User: %s\n", show(get(user_id)));
}

static void test_guide_user_id_logging(void **state)
{
    (void)state;
    user_id = var_with_default("user_id", guest);
    log_out.len = 0;
    log_out.text[0] = '\0';

    cv_token_t token;
    assert_int_equal(cv_set(user_id, alice, &token), CV_OK);
    log_user(); /* → User: alice */
    assert_int_equal(cv_reset(user_id, &token), CV_OK);
    log_user(); /* → User: guest */
    assert_string_equal(log_out.text, "User: alice\nUser: guest\n");
    /* "guest" is the default, not a value left in the context. */
    assert_false(cv_context_contains(cv_context_current(), user_id));
    cv_var_release(user_id);
    user_id = NULL;
}

/* ------------------------- illustration: multithreaded (two threads) */

enum ticket_step { BEFORE_ANY_SET, A_SETS, B_SETS, A_RESETS, B_RESETS, STEPS };

static char ticket_123[] = "TICKET-123", ticket_xyz[] = "TICKET-XYZ";
static cv_var_t *current_ticket;

/* The main thread opens each step; both threads act on it and report. */
struct stepper {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int step;
    int arrived;
};

static struct stepper stepper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -1, 0};

static void stepper_await(int step)
{
    pthread_mutex_lock(&stepper.lock);
    while (stepper.step < step)
        pthread_cond_wait(&stepper.cond, &stepper.lock);
    pthread_mutex_unlock(&stepper.lock);
}

static void stepper_arrive(void)
{
    pthread_mutex_lock(&stepper.lock);
    stepper.arrived++;
    pthread_cond_broadcast(&stepper.cond);
    pthread_mutex_unlock(&stepper.lock);
}

/* Opens `step` and waits until `threads` threads report it done. */
static void stepper_open(int step, int threads)
{
    pthread_mutex_lock(&stepper.lock);
    stepper.arrived = 0;
    stepper.step = step;
    pthread_cond_broadcast(&stepper.cond);
    while (stepper.arrived < threads)
        pthread_cond_wait(&stepper.cond, &stepper.lock);
    pthread_mutex_unlock(&stepper.lock);
}

struct ticket_thread {
    char *ticket;
    int set_step, reset_step;
    cv_context_t *ctx; /* its current context, for the main thread to look into */
    void *seen[STEPS]; /* current_ticket.get() once the step is done */
    cv_status_t set_status, reset_status;
    bool old_value_present;
};

static void *ticket_thread_main(void *arg)
{
    struct ticket_thread *t = arg;
    cv_token_t token;
    t->ctx = cv_context_current();
    for (int step = 0; step < STEPS; step++) {
        stepper_await(step);
        if (step == t->set_step) {
            t->set_status = cv_set(current_ticket, t->ticket, &token);
            void *old = NULL;
            t->old_value_present = cv_token_old_value(&token, &old);
        }
        if (step == t->reset_step)
            t->reset_status = cv_reset(current_ticket, &token);
        t->seen[step] = get(current_ticket);
        stepper_arrive();
    }
    /* Stay until the main thread is done looking into our context. */
    stepper_await(STEPS);
    return NULL;
}

/* current_ticket as the main thread sees it in another thread's context:
 * the mapping API ignores defaults, so absent reads as the default None. */
static void *seen_from_main(cv_context_t *ctx)
{
    void *out = sentinel;
    cv_status_t status = cv_context_get(ctx, current_ticket, &out);
    return status == CV_ENOVALUE ? NULL : status == CV_OK ? out : sentinel;
}

static void test_guide_thread_a_thread_b_illustration(void **state)
{
    (void)state;
    current_ticket = var_with_default("current_ticket", NULL);
    stepper.step = -1;
    struct ticket_thread a = {.ticket = ticket_123, .set_step = A_SETS, .reset_step = A_RESETS};
    struct ticket_thread b = {.ticket = ticket_xyz, .set_step = B_SETS, .reset_step = B_RESETS};
    pthread_t thread_a, thread_b;
    /* One thread inherits main's (empty) context, one starts empty: the
     * illustration holds for both. */
    assert_int_equal(cv_thread_create(&thread_a, NULL, ticket_thread_main, &a), 0);
    assert_int_equal(pthread_create(&thread_b, NULL, ticket_thread_main, &b), 0);

    void *main_seen[STEPS], *a_from_main[STEPS], *b_from_main[STEPS];
    for (int step = 0; step < STEPS; step++) {
        stepper_open(step, 2);
        main_seen[step] = get(current_ticket);
        a_from_main[step] = seen_from_main(a.ctx);
        b_from_main[step] = seen_from_main(b.ctx);
    }
    assert_false(cv_context_contains(a.ctx, current_ticket));
    assert_false(cv_context_contains(b.ctx, current_ticket));
    stepper_open(STEPS, 0);
    assert_int_equal(pthread_join(thread_a, NULL), 0);
    assert_int_equal(pthread_join(thread_b, NULL), 0);

    /* The guide's tables, step by step: Thread A, Thread B, Main. */
    static void *const expect_a[STEPS] = {NULL, ticket_123, ticket_123, NULL, NULL};
    static void *const expect_b[STEPS] = {NULL, NULL, ticket_xyz, ticket_xyz, NULL};
    for (int step = 0; step < STEPS; step++) {
        assert_ptr_equal(a.seen[step], expect_a[step]);
        assert_ptr_equal(b.seen[step], expect_b[step]);
        assert_null(main_seen[step]);
        assert_ptr_equal(a_from_main[step], expect_a[step]);
        assert_ptr_equal(b_from_main[step], expect_b[step]);
    }
    assert_int_equal(a.set_status, CV_OK);
    assert_int_equal(a.reset_status, CV_OK);
    assert_int_equal(b.set_status, CV_OK);
    assert_int_equal(b.reset_status, CV_OK);
    /* "token_a -> remembers: None": the None is the default; the token
     * itself remembers MISSING, and reset falls back to the default. */
    assert_false(a.old_value_present);
    assert_false(b.old_value_present);
    cv_var_release(current_ticket);
    current_ticket = NULL;
}

/* ---------------------------- illustration: asyncio (one thread, tasks) */

#define TASK_STACK_SIZE (256 * 1024)
#define MAX_TASKS 2

struct task {
    ucontext_t uc;
    void *stack;
    cv_context_t *ctx;
    char *ticket;
    void *seen_at_start; /* before the task's own set */
    bool done;
    cv_status_t set_status, reset_status;
#ifdef GUIDE_TSAN
    void *fiber;
#endif
};

struct event_loop {
    ucontext_t uc;
    struct task tasks[MAX_TASKS];
    struct transcript out; /* what the tasks print */
    /* What the loop itself sees each time it gets control back. */
    int turns;
    void *loop_seen[8];
    cv_status_t enter_status[8], exit_status[8];
#ifdef GUIDE_ASAN
    const void *stack_bottom;
    size_t stack_size;
#endif
#ifdef GUIDE_TSAN
    void *fiber;
#endif
};

static struct event_loop loop;

static void switch_to_task(struct task *t)
{
#ifdef GUIDE_ASAN
    void *fake_stack = NULL;
    __sanitizer_start_switch_fiber(&fake_stack, t->stack, TASK_STACK_SIZE);
#endif
#ifdef GUIDE_TSAN
    __tsan_switch_to_fiber(t->fiber, 0);
#endif
    swapcontext(&loop.uc, &t->uc);
#ifdef GUIDE_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, NULL, NULL);
#endif
}

static void switch_to_loop(struct task *t, bool finished)
{
#ifdef GUIDE_ASAN
    void *fake_stack = NULL;
    __sanitizer_start_switch_fiber(finished ? NULL : &fake_stack, loop.stack_bottom,
                                   loop.stack_size);
#else
    (void)finished;
#endif
#ifdef GUIDE_TSAN
    __tsan_switch_to_fiber(loop.fiber, 0);
#endif
    swapcontext(&t->uc, &loop.uc);
#ifdef GUIDE_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, &loop.stack_bottom, &loop.stack_size);
#endif
}

/* await asyncio.sleep(0.1): give control back to the event loop. */
static void await_sleep(struct task *t)
{
    switch_to_loop(t, false);
}

/* async def handle_ticket(ticket_id): ... */
static void handle_ticket(struct task *t)
{
    cv_token_t token;
    t->seen_at_start = get(current_ticket);
    t->set_status = cv_set(current_ticket, t->ticket, &token);
    say(&loop.out, "[%s] Before await: %s\n", t->ticket, show(get(current_ticket)));
    await_sleep(t);
    say(&loop.out, "[%s] After await: %s\n", t->ticket, show(get(current_ticket)));
    t->reset_status = cv_reset(current_ticket, &token);
    say(&loop.out, "[%s] After reset: %s\n", t->ticket, show(get(current_ticket)));
}

static void task_entry(int index)
{
    struct task *t = &loop.tasks[index];
#ifdef GUIDE_ASAN
    __sanitizer_finish_switch_fiber(NULL, &loop.stack_bottom, &loop.stack_size);
#endif
    handle_ticket(t);
    t->done = true;
    switch_to_loop(t, true);
}

/* asyncio.gather(): each task gets a copy of the creating context. */
static void create_task(int index, char *ticket)
{
    struct task *t = &loop.tasks[index];
    *t = (struct task){.ticket = ticket};
    t->ctx = cv_copy_context();
    assert_non_null(t->ctx);
    t->stack = malloc(TASK_STACK_SIZE);
    assert_non_null(t->stack);
    assert_int_equal(getcontext(&t->uc), 0);
    t->uc.uc_stack.ss_sp = t->stack;
    t->uc.uc_stack.ss_size = TASK_STACK_SIZE;
    t->uc.uc_link = NULL;
    makecontext(&t->uc, (void (*)(void))task_entry, 1, index);
#ifdef GUIDE_TSAN
    t->fiber = __tsan_create_fiber(0);
#endif
}

static void destroy_task(struct task *t)
{
#ifdef GUIDE_TSAN
    __tsan_destroy_fiber(t->fiber);
#endif
    free(t->stack);
    cv_context_release(t->ctx);
}

/* Resumes tasks in the given order; a task is resumed inside its own
 * context, and the loop's context is current again when it awaits. */
static void run_loop(const int *order, int steps)
{
#ifdef GUIDE_TSAN
    loop.fiber = __tsan_get_current_fiber();
#endif
    for (int i = 0; i < steps; i++) {
        struct task *t = &loop.tasks[order[i]];
        if (t->done)
            continue;
        loop.enter_status[loop.turns] = cv_context_enter(t->ctx);
        switch_to_task(t);
        loop.exit_status[loop.turns] = cv_context_exit(t->ctx);
        loop.loop_seen[loop.turns] = get(current_ticket);
        loop.turns++;
    }
}

static void start_loop(void)
{
    memset(&loop, 0, sizeof(loop));
    current_ticket = var_with_default("current_ticket", NULL);
}

static void check_loop_and_finish(int turns)
{
    assert_int_equal(loop.turns, turns);
    for (int i = 0; i < loop.turns; i++) {
        assert_int_equal(loop.enter_status[i], CV_OK);
        assert_int_equal(loop.exit_status[i], CV_OK);
        assert_null(loop.loop_seen[i]);
    }
    for (int i = 0; i < MAX_TASKS; i++) {
        struct task *t = &loop.tasks[i];
        assert_true(t->done);
        assert_int_equal(t->set_status, CV_OK);
        assert_int_equal(t->reset_status, CV_OK);
        /* Reset is important: nothing left over in the task's context. */
        assert_int_equal(cv_context_len(t->ctx), 0);
        destroy_task(t);
    }
    assert_false(cv_context_contains(cv_context_current(), current_ticket));
    cv_var_release(current_ticket);
    current_ticket = NULL;
}

static char ticket_a[] = "TICKET-A", ticket_b[] = "TICKET-B";

static void test_guide_asyncio_illustration(void **state)
{
    (void)state;
    start_loop();
    create_task(0, ticket_a);
    create_task(1, ticket_b);
    /* The guide's timeline: A runs to its await, B runs to its await,
     * A resumes and finishes, B resumes and finishes. */
    static const int order[] = {0, 1, 0, 1};
    run_loop(order, 4);
    assert_string_equal(loop.out.text, "[TICKET-A] Before await: TICKET-A\n"
                                       "[TICKET-B] Before await: TICKET-B\n"
                                       "[TICKET-A] After await: TICKET-A\n"
                                       "[TICKET-A] After reset: None\n"
                                       "[TICKET-B] After await: TICKET-B\n"
                                       "[TICKET-B] After reset: None\n");
    /* Values do not leak between tasks: B starts after A has set its
     * ticket and still sees None. */
    assert_null(loop.tasks[0].seen_at_start);
    assert_null(loop.tasks[1].seen_at_start);
    check_loop_and_finish(4);
}

/* "Preserved across awaits" holds whatever order the loop resumes in, and
 * tasks start from a copy of what their creator had set. */
static void test_guide_asyncio_any_resume_order(void **state)
{
    (void)state;
    static char from_main[] = "TICKET-MAIN";
    start_loop();
    cv_token_t main_token;
    assert_int_equal(cv_set(current_ticket, from_main, &main_token), CV_OK);
    create_task(0, ticket_a);
    create_task(1, ticket_b);
    assert_int_equal(cv_reset(current_ticket, &main_token), CV_OK);
    static const int order[] = {1, 0, 0, 1};
    run_loop(order, 4);
    /* After reset each task is back to what it inherited, not to None. */
    assert_string_equal(loop.out.text, "[TICKET-B] Before await: TICKET-B\n"
                                       "[TICKET-A] Before await: TICKET-A\n"
                                       "[TICKET-A] After await: TICKET-A\n"
                                       "[TICKET-A] After reset: TICKET-MAIN\n"
                                       "[TICKET-B] After await: TICKET-B\n"
                                       "[TICKET-B] After reset: TICKET-MAIN\n");
    /* A starts after B has set its ticket and sees what main set. */
    assert_ptr_equal(loop.tasks[0].seen_at_start, from_main);
    assert_ptr_equal(loop.tasks[1].seen_at_start, from_main);
    for (int i = 0; i < MAX_TASKS; i++) {
        void *out = NULL;
        assert_int_equal(cv_context_get(loop.tasks[i].ctx, current_ticket, &out), CV_OK);
        assert_ptr_equal(out, from_main);
    }
    assert_int_equal(loop.turns, 4);
    for (int i = 0; i < loop.turns; i++) {
        assert_int_equal(loop.enter_status[i], CV_OK);
        assert_int_equal(loop.exit_status[i], CV_OK);
        assert_null(loop.loop_seen[i]);
    }
    for (int i = 0; i < MAX_TASKS; i++) {
        assert_true(loop.tasks[i].done);
        assert_int_equal(loop.tasks[i].reset_status, CV_OK);
        destroy_task(&loop.tasks[i]);
    }
    cv_var_release(current_ticket);
    current_ticket = NULL;
}

/* ---------------------------------------------- notable limitations */

static char carol[] = "carol", dave[] = "dave", erin[] = "erin";

struct thread_view {
    cv_var_t *var;
    char *set_to;
    void *seen;
    void *seen_after_set;
};

static void *view_thread(void *arg)
{
    struct thread_view *v = arg;
    v->seen = get(v->var);
    cv_set(v->var, v->set_to, NULL);
    v->seen_after_set = get(v->var);
    return NULL;
}

struct pool_task {
    cv_context_t *captured;
    cv_var_t *var;
    cv_status_t run_status;
    void *seen_in_task, *seen_after_run;
};

static void pool_task_fn(void *arg)
{
    struct pool_task *task = arg;
    task->seen_in_task = get(task->var);
    cv_set(task->var, erin, NULL);
}

static void *pool_worker(void *arg)
{
    struct pool_task *task = arg;
    task->run_status = cv_context_run(task->captured, pool_task_fn, task);
    task->seen_after_run = get(task->var);
    return NULL;
}

/* "Not inherited across threads unless explicitly copied." */
static void test_guide_threads_inherit_only_a_copy(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("user_id", guest);
    cv_token_t token;
    assert_int_equal(cv_set(var, alice, &token), CV_OK);

    struct thread_view plain = {.var = var, .set_to = bob};
    struct thread_view copied = {.var = var, .set_to = carol};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, view_thread, &plain), 0);
    assert_int_equal(cv_thread_create(&t2, NULL, view_thread, &copied), 0);
    assert_int_equal(pthread_join(t1, NULL), 0);
    assert_int_equal(pthread_join(t2, NULL), 0);
    assert_ptr_equal(plain.seen, guest);
    assert_ptr_equal(plain.seen_after_set, bob);
    assert_ptr_equal(copied.seen, alice);
    assert_ptr_equal(copied.seen_after_set, carol);
    assert_ptr_equal(get(var), alice);

    /* The explicit copy for a thread pool: captured at submit time. */
    struct pool_task task = {.var = var};
    task.captured = cv_copy_context();
    assert_int_equal(cv_set(var, dave, NULL), CV_OK);
    pthread_t worker;
    assert_int_equal(pthread_create(&worker, NULL, pool_worker, &task), 0);
    assert_int_equal(pthread_join(worker, NULL), 0);
    assert_int_equal(task.run_status, CV_OK);
    assert_ptr_equal(task.seen_in_task, alice);
    assert_ptr_equal(task.seen_after_run, guest);
    void *out = NULL;
    assert_int_equal(cv_context_get(task.captured, var, &out), CV_OK);
    assert_ptr_equal(out, erin);
    assert_ptr_equal(get(var), dave);

    cv_context_release(task.captured);
    assert_int_equal(cv_reset(var, &token), CV_OK);
    assert_ptr_equal(get(var), guest);
    cv_var_release(var);
}

struct handler {
    cv_var_t *var;
    bool resets;
    void *seen_by_later_logic;
};

static void request_handler(void *arg)
{
    struct handler *h = arg;
    cv_token_t token;
    cv_set(h->var, bob, &token);
    if (h->resets)
        cv_reset(h->var, &token);
    else
        cv_token_discard(&token);
}

static void later_logic(void *arg)
{
    struct handler *h = arg;
    h->seen_by_later_logic = get(h->var);
}

/* "Must manually reset values" / "Reset is important: cleanup restores
 * the context so other logic doesn't see leftovers." */
static void test_guide_reset_is_manual(void **state)
{
    (void)state;
    cv_var_t *var = var_with_default("user", anonymous);
    cv_context_t *ctx = cv_context_new();
    struct handler forgetful = {.var = var, .resets = false};
    assert_int_equal(cv_context_run(ctx, request_handler, &forgetful), CV_OK);
    assert_int_equal(cv_context_run(ctx, later_logic, &forgetful), CV_OK);
    assert_ptr_equal(forgetful.seen_by_later_logic, bob);
    cv_context_release(ctx);

    ctx = cv_context_new();
    struct handler tidy = {.var = var, .resets = true};
    assert_int_equal(cv_context_run(ctx, request_handler, &tidy), CV_OK);
    assert_int_equal(cv_context_run(ctx, later_logic, &tidy), CV_OK);
    assert_ptr_equal(tidy.seen_by_later_logic, anonymous);
    assert_int_equal(cv_context_len(ctx), 0);
    cv_context_release(ctx);
    cv_var_release(var);
}

struct counter {
    int hits;
};

static void bump(void *arg)
{
    cv_var_t *var = arg;
    struct counter *c = get(var);
    c->hits++;
}

/* "Not designed for shared mutable state": a context isolates which
 * object a variable names, not the object itself. */
static void test_guide_values_are_shared_not_copied(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("stats", NULL);
    struct counter shared = {0}, own = {0};
    cv_token_t token;
    assert_int_equal(cv_set(var, &shared, &token), CV_OK);
    cv_context_t *copy = cv_copy_context();
    assert_int_equal(cv_context_run(copy, bump, var), CV_OK);
    assert_int_equal(shared.hits, 1); /* the mutation is seen everywhere */

    assert_int_equal(cv_context_enter(copy), CV_OK);
    assert_int_equal(cv_set(var, &own, NULL), CV_OK); /* a rebinding is not */
    assert_int_equal(cv_context_exit(copy), CV_OK);
    assert_ptr_equal(get(var), &shared);
    assert_int_equal(cv_context_run(copy, bump, var), CV_OK);
    assert_int_equal(own.hits, 1);
    assert_int_equal(shared.hits, 1);

    cv_context_release(copy);
    assert_int_equal(cv_reset(var, &token), CV_OK);
    cv_var_release(var);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guide_context_var_with_default_none),
        cmocka_unit_test(test_guide_get_set_reset),
        cmocka_unit_test(test_guide_token_remembers_the_previous_value),
        cmocka_unit_test(test_guide_user_id_logging),
        cmocka_unit_test(test_guide_thread_a_thread_b_illustration),
        cmocka_unit_test(test_guide_asyncio_illustration),
        cmocka_unit_test(test_guide_asyncio_any_resume_order),
        cmocka_unit_test(test_guide_threads_inherit_only_a_copy),
        cmocka_unit_test(test_guide_reset_is_manual),
        cmocka_unit_test(test_guide_values_are_shared_not_copied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
