/*
 * Spread reference counts (lib/spread.h): the root of a context that nobody
 * has entered, copied by many threads at once, counts its references on
 * per-thread shards until the context gives the root up. Every test here
 * makes copies spread at once (cv_testing_spread_every_copy), as colliding
 * copies do, and checks what a spread must never change: each copy sees the
 * map it copied, every value's references balance once the contexts are
 * gone, and every byte comes back (an allocator that counts them).
 *
 * cmocka is not thread-safe: threads count what went wrong and the main
 * thread asserts after joining them.
 */
#define _GNU_SOURCE /* pthread barriers, clock_gettime in -std=c11 */
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
#include "values.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------ allocator that counts */

static atomic_long live_bytes;
/* Allocations to refuse, from the next one on. */
static atomic_int refuse_next;

static void *counting_alloc(size_t size, void *data)
{
    (void)data;
    int refuse = atomic_load(&refuse_next);
    while (refuse > 0)
        if (atomic_compare_exchange_weak(&refuse_next, &refuse, refuse - 1))
            return NULL;
    void *p = malloc(size);
    if (p)
        atomic_fetch_add(&live_bytes, (long)size);
    return p;
}

static void counting_free(void *ptr, size_t size, void *data)
{
    (void)data;
    atomic_fetch_sub(&live_bytes, (long)size);
    free(ptr);
}

/* ------------------------------------------------------------- helpers */

static cv_var_t *x;

/* A context nobody has entered, where x is `value`. */
static cv_context_t *base_with(struct tracked *value)
{
    cv_context_t *base = cv_context_new();
    assert_non_null(base);
    assert_int_equal(cv_context_enter(base), CV_OK);
    assert_int_equal(cv_set(x, value, NULL), CV_OK);
    assert_int_equal(cv_context_exit(base), CV_OK);
    return base;
}

static void *value_in(cv_context_t *ctx)
{
    void *out = sentinel;
    cv_status_t status = cv_context_get(ctx, x, &out);
    return read_result(status, out);
}

/* Everything is released and disposed of: values balanced, no spread
 * left, the bytes of `baseline` live. */
static void assert_all_gone(struct tracked *values, size_t n, long baseline)
{
    cv_reclaim_barrier();
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(atomic_load(&values[i].live), 0);
        assert_int_equal(atomic_load(&values[i].retains), atomic_load(&values[i].releases));
    }
    assert_int_equal(atomic_load(&underflows), 0);
    assert_int_equal(cv_testing_spreads(), 0);
    assert_int_equal(atomic_load(&live_bytes), baseline);
}

/* Setup and teardown of the tests that spread every copy: the hook goes
 * off again even when a test fails halfway, so the next test starts
 * without it. */
static int spread_every_copy(void **state)
{
    (void)state;
    cv_testing_spread_every_copy(true);
    return 0;
}

static int spread_on_collision_only(void **state)
{
    (void)state;
    cv_testing_spread_every_copy(false);
    return 0;
}

static long settled_bytes(void)
{
    cv_reclaim_barrier();
    return atomic_load(&live_bytes);
}

/* ---------------------------------------- copies made and dropped apart */

#define COPIES 2000

struct copier {
    cv_context_t *base;
    void *expected;
    cv_context_t *copies[COPIES];
    struct copier *other;
    pthread_barrier_t *made;
    int wrong;
};

/* Copies the base COPIES times, then, once the other thread has too,
 * releases the other thread's copies: every reference taken on one shard
 * is dropped on another. */
static void *copy_then_swap_main(void *arg)
{
    struct copier *c = arg;
    for (int i = 0; i < COPIES; i++) {
        c->copies[i] = cv_context_copy(c->base);
        void *out = NULL;
        if (!c->copies[i] || cv_context_get(c->copies[i], x, &out) != CV_OK || out != c->expected)
            c->wrong++;
    }
    pthread_barrier_wait(c->made);
    for (int i = 0; i < COPIES; i++)
        cv_context_release(c->other->copies[i]);
    return NULL;
}

static void test_copies_fold_back(void **state)
{
    (void)state;
    long baseline = settled_bytes();
    struct tracked v[2];
    tracked_init(&v[0]);
    tracked_init(&v[1]);
    cv_context_t *base = base_with(&v[0]);

    cv_context_t *first = cv_context_copy(base);
    assert_non_null(first);
    assert_int_equal(cv_testing_spreads(), 1);

    static struct copier c[2];
    pthread_barrier_t made;
    pthread_barrier_init(&made, NULL, 2);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        c[i] = (struct copier){.base = base, .expected = &v[0], .other = &c[1 - i], .made = &made};
        assert_int_equal(pthread_create(&t[i], NULL, copy_then_swap_main, &c[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(c[i].wrong, 0);
    }
    pthread_barrier_destroy(&made);

    /* Snapshots for equality and iteration count on the spread too. */
    cv_context_t *again = cv_context_copy(base);
    assert_true(cv_context_equal(base, again));
    assert_only_entry(base, x, &v[0]);
    cv_context_release(again);

    /* A copy of the spread root is a map like any other: a set in it
     * copies the path and leaves the base alone. */
    assert_int_equal(cv_context_enter(first), CV_OK);
    assert_int_equal(cv_set(x, &v[1], NULL), CV_OK);
    assert_ptr_equal(current_value(x), &v[1]);
    assert_int_equal(cv_context_exit(first), CV_OK);
    assert_ptr_equal(value_in(base), &v[0]);

    /* The base goes first: the spread ends while a copy still holds the
     * root, and the fold must leave that reference counted. */
    cv_context_t *late = cv_context_copy(base);
    cv_context_release(base);
    cv_reclaim_barrier();
    assert_true(atomic_load(&v[0].live) > 0);
    assert_ptr_equal(value_in(late), &v[0]);
    cv_context_release(late);
    cv_context_release(first);
    assert_all_gone(v, 2, baseline);
}

/* A thread that enters the base ends the spread before it writes: the
 * copies keep the old map, the base moves on. */
static void test_claim_ends_the_spread(void **state)
{
    (void)state;
    long baseline = settled_bytes();
    struct tracked v[2];
    tracked_init(&v[0]);
    tracked_init(&v[1]);
    cv_context_t *base = base_with(&v[0]);
    cv_context_t *copy = cv_context_copy(base);
    assert_int_equal(cv_testing_spreads(), 1);

    assert_int_equal(cv_context_enter(base), CV_OK);
    assert_int_equal(cv_set(x, &v[1], NULL), CV_OK);
    assert_ptr_equal(current_value(x), &v[1]);
    assert_int_equal(cv_context_exit(base), CV_OK);
    assert_ptr_equal(value_in(copy), &v[0]);
    assert_ptr_equal(value_in(base), &v[1]);

    /* The old root dies with the copy, through its exact count again. */
    cv_context_release(copy);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&v[0].live), 0);
    assert_int_equal(cv_testing_spreads(), 0);
    assert_true(atomic_load(&v[1].live) > 0);

    cv_context_release(base);
    assert_all_gone(v, 2, baseline);
}

/* Memory short for the spread: the copy still succeeds, without one. */
static void test_memory_short(void **state)
{
    (void)state;
    long baseline = settled_bytes();
    struct tracked v;
    tracked_init(&v);
    cv_context_t *base = base_with(&v);

    /* The spread is the copy's first allocation, its context the second. */
    atomic_store(&refuse_next, 1);
    cv_context_t *unspread = cv_context_copy(base);
    assert_int_equal(atomic_load(&refuse_next), 0);
    assert_non_null(unspread);
    assert_int_equal(cv_testing_spreads(), 0);
    assert_ptr_equal(value_in(unspread), &v);

    /* The next copy spreads: the first copy's reference, on the word, and
     * the second's, on a shard, both count. */
    cv_context_t *spread = cv_context_copy(base);
    assert_int_equal(cv_testing_spreads(), 1);
    cv_context_release(base);
    cv_context_release(unspread);
    cv_reclaim_barrier();
    assert_ptr_equal(value_in(spread), &v);
    assert_true(atomic_load(&v.live) > 0);

    cv_context_release(spread);
    assert_all_gone(&v, 1, baseline);
}

/* ------------------------------------------- copies racing with claims */

#define VALUES 16

struct racer {
    cv_context_t *base;
    struct tracked *values;
    atomic_bool *stop;
    long copies;
    int wrong;
};

static bool is_one_of(void *value, struct tracked *values)
{
    for (int i = 0; i < VALUES; i++)
        if (value == &values[i])
            return true;
    return false;
}

static void *copy_until_stopped_main(void *arg)
{
    struct racer *r = arg;
    while (!atomic_load(r->stop)) {
        cv_context_t *copy = cv_context_copy(r->base);
        void *out = NULL;
        if (!copy || cv_context_get(copy, x, &out) != CV_OK || !is_one_of(out, r->values) ||
            atomic_load(&((struct tracked *)out)->live) <= 0)
            r->wrong++;
        cv_context_release(copy);
        r->copies++;
    }
    return NULL;
}

/* Starts two threads copying `base` until *stop. */
static void start_racers(struct racer r[2], pthread_t t[2], cv_context_t *base,
                         struct tracked *values, atomic_bool *stop)
{
    for (int i = 0; i < 2; i++) {
        r[i] = (struct racer){.base = base, .values = values, .stop = stop};
        assert_int_equal(pthread_create(&t[i], NULL, copy_until_stopped_main, &r[i]), 0);
    }
}

/* Stops them: each must have copied, and found a live value every time. */
static void stop_racers(struct racer r[2], pthread_t t[2], atomic_bool *stop)
{
    atomic_store(stop, true);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(r[i].wrong, 0);
        assert_true(r[i].copies > 0);
    }
}

static void init_values(struct tracked values[VALUES])
{
    for (int i = 0; i < VALUES; i++)
        tracked_init(&values[i]);
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Two threads copy the base without pause while the main thread enters it
 * and sets it again and again: every copy must find a live value, and
 * whatever spreads began, ended and folded, nothing may leak or be
 * released twice. */
static void test_copies_race_claims(void **state)
{
    (void)state;
    long baseline = settled_bytes();
    static struct tracked values[VALUES];
    init_values(values);
    cv_context_t *base = base_with(&values[0]);

    atomic_bool stop = false;
    struct racer r[2];
    pthread_t t[2];
    start_racers(r, t, base, values, &stop);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long claims = 0;
    while (claims < 2000 || seconds_since(&start) < 0.5) {
        assert_int_equal(cv_context_enter(base), CV_OK);
        assert_int_equal(cv_set(x, &values[claims % VALUES], NULL), CV_OK);
        assert_int_equal(cv_context_exit(base), CV_OK);
        claims++;
        if (seconds_since(&start) > 10)
            break;
    }
    stop_racers(r, t, &stop);
    cv_context_release(base);
    assert_all_gone(values, VALUES, baseline);
}

/* ------------------------------------------- spreads from real collisions */

/* Without the testing hook: two threads copying one base collide on its
 * root's count, and that alone begins a spread (on a machine with more
 * than one CPU; on one, nothing bounces and nothing spreads). */
static void test_collisions_spread(void **state)
{
    (void)state;
    if (sysconf(_SC_NPROCESSORS_CONF) < 2)
        skip();
    long baseline = settled_bytes();
    static struct tracked values[VALUES];
    init_values(values);
    cv_context_t *base = base_with(&values[0]);
    atomic_bool stop = false;
    struct racer r[2];
    pthread_t t[2];
    start_racers(r, t, base, values, &stop);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (cv_testing_spreads() == 0 && seconds_since(&start) < 20)
        sched_yield();
    long spreads = cv_testing_spreads();
    stop_racers(r, t, &stop);
    cv_context_release(base);
    assert_all_gone(values, VALUES, baseline);
    /* Under valgrind the threads run one at a time and may never collide. */
    if (spreads == 0) {
        print_message("no collision in 20 s: were the threads running one at a time?\n");
        skip();
    }
    assert_int_equal(spreads, 1);
}

/* ------------------------------------------ a task's context, handed out */

static _Atomic(cv_context_t *) handed_out;
static int copies_in_pause;

/* A task's fn that keeps its context and hands it out. */
static void hand_out_own_context(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_current();
    cv_context_retain(ctx);
    atomic_store(&handed_out, ctx);
}

static void do_nothing(void *arg)
{
    (void)arg;
}

/* cv_task_run's pause between the run and its look at the context: the
 * holder copies the context, unowned now, so that the copy hangs a spread
 * on it, and lets both go. */
static void copy_and_let_go(void)
{
    cv_context_t *ctx = atomic_exchange(&handed_out, NULL);
    if (!ctx)
        return;
    cv_context_t *copy = cv_context_copy(ctx);
    copies_in_pause += copy != NULL;
    cv_context_release(copy);
    cv_context_release(ctx);
}

struct task_thread {
    struct tracked *value;
    bool run_another; /* reuse the task context once more before exiting */
    cv_status_t first, second;
    int copies;
};

/* Runs a task that hands its context out and, in the pause after the run,
 * sees it copied and let go, on a thread of its own that then exits. */
static void *task_thread_main(void *arg)
{
    struct task_thread *t = arg;
    cv_context_t *base = cv_context_new();
    cv_task_t task;
    if (!base || cv_context_enter(base) != CV_OK || cv_set(x, t->value, NULL) != CV_OK ||
        cv_task_init(&task, hand_out_own_context, NULL) != CV_OK)
        return NULL;
    cv_context_exit(base);
    cv_context_release(base);
    copies_in_pause = 0;
    cv_testing_pause_after_task(copy_and_let_go);
    t->first = cv_task_run(&task);
    cv_testing_pause_after_task(NULL);
    t->copies = copies_in_pause;
    /* The map and its spread disposed of while the context is kept. */
    cv_reclaim_barrier();
    if (t->run_another && cv_task_init(&task, do_nothing, NULL) == CV_OK)
        t->second = cv_task_run(&task);
    return NULL;
}

/* The task's context object is kept for the thread's next task; the
 * spread that a copy hung on it must end with its map, or the map's count
 * stays up and its values are never released, and end only once, whether
 * the next task reuses the object or the thread's exit frees it. */
static void test_task_context_copied_after_its_run(void **state)
{
    (void)state;
    for (int run_another = 0; run_another < 2; run_another++) {
        long baseline = settled_bytes();
        struct tracked v;
        tracked_init(&v);
        struct task_thread t = {.value = &v, .run_another = run_another, .second = CV_OK};
        pthread_t thread;
        assert_int_equal(pthread_create(&thread, NULL, task_thread_main, &t), 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_int_equal(t.first, CV_OK);
        assert_int_equal(t.second, CV_OK);
        assert_int_equal(t.copies, 1);
        assert_all_gone(&v, 1, baseline);
    }
}

int main(void)
{
    /* Before any other call of the library, as the contract requires. */
    cv_allocator_t counting = {counting_alloc, counting_free, NULL};
    if (cv_set_allocator(&counting) != CV_OK) {
        fprintf(stderr, "cv_set_allocator failed before any other call\n");
        return 1;
    }
    x = tracked_var("x");
    /* What stays for good: the main thread's base context, made at its first
     * switch. */
    cv_context_t *warm = cv_context_new();
    if (cv_context_enter(warm) != CV_OK || cv_context_exit(warm) != CV_OK)
        return 1;
    cv_context_release(warm);
    struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copies_fold_back, spread_every_copy,
                                        spread_on_collision_only),
        cmocka_unit_test_setup_teardown(test_claim_ends_the_spread, spread_every_copy,
                                        spread_on_collision_only),
        cmocka_unit_test_setup_teardown(test_memory_short, spread_every_copy,
                                        spread_on_collision_only),
        cmocka_unit_test_setup_teardown(test_copies_race_claims, spread_every_copy,
                                        spread_on_collision_only),
        cmocka_unit_test(test_collisions_spread),
        cmocka_unit_test_setup_teardown(test_task_context_copied_after_its_run, spread_every_copy,
                                        spread_on_collision_only),
    };
    int failed = cv_test_run_selected("spread", tests, sizeof(tests) / sizeof(tests[0]));
    cv_var_release(x);
    return failed;
}
