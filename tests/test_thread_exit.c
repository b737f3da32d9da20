/*
 * Threads that use contexts and exit leak nothing.
 *
 * Many short-lived threads set variables and exit: some from their base
 * context only, some with contexts left entered (one, or more than the
 * inline context stack holds), some after runs, some after starting a child
 * with cv_thread_create. At checkpoints, with no worker alive and after
 * cv_reclaim_barrier(), the resident set must not have grown beyond a bound
 * since warm-up, and the values' retain/release hooks must balance except
 * for what the main thread's own template context holds.
 *
 * With --exact, a counting allocator is installed first and the library's
 * live bytes must be back at their value from before the first thread at
 * every checkpoint: exact, where RSS is coarse. (The default allocator's
 * per-thread block cache is then bypassed; the plain run covers it.) In
 * both runs every thread that has exited must have unmapped its lookup
 * cache.
 *
 * A last case has a thread exit inside cv_context_run of a context that
 * another thread holds a reference to: the context must survive.
 *
 *   test_thread_exit [--exact] [threads]   threads also from CV_THREAD_EXIT_COUNT
 *
 * The RSS bound is skipped under sanitizers and valgrind, whose own
 * bookkeeping grows with every thread; everything else still runs.
 */
#define _POSIX_C_SOURCE 200809L /* sysconf */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctxvars.h>

#include "testing.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* About 3 s under TSan, 1-2 s otherwise. */
#define DEFAULT_THREADS 10000
#define BATCH 8         /* threads alive at once */
#define CHECKPOINTS 10  /* the first one ends the warm-up */
#define RSS_BOUND_MIB 4 /* growth allowed after warm-up */
#define NVARS 8
#define DEEP 12 /* more than the inline context stack */

static long thread_count = DEFAULT_THREADS;
static bool exact;

/* ------------------------------------------------------ counting allocator */

struct block_header {
    size_t size;
    uint64_t magic;
};
#define MAGIC 0x74687265616465ull

static atomic_long live_bytes, live_blocks, bad_frees;

static void *counting_alloc(size_t size, void *data)
{
    (void)data;
    struct block_header *header = malloc(sizeof(*header) + size);
    if (!header)
        return NULL;
    *header = (struct block_header){size, MAGIC};
    atomic_fetch_add_explicit(&live_bytes, (long)size, memory_order_relaxed);
    atomic_fetch_add_explicit(&live_blocks, 1, memory_order_relaxed);
    return header + 1;
}

static void counting_free(void *ptr, size_t size, void *data)
{
    (void)data;
    struct block_header *header = (struct block_header *)ptr - 1;
    if (header->magic != MAGIC || header->size != size) {
        atomic_fetch_add(&bad_frees, 1);
        return;
    }
    header->magic = 0;
    atomic_fetch_sub_explicit(&live_bytes, (long)size, memory_order_relaxed);
    atomic_fetch_sub_explicit(&live_blocks, 1, memory_order_relaxed);
    free(header);
}

/* ------------------------------------------------------------------ values */

static cv_var_t *vars[NVARS];
static atomic_long retains, releases;

static void *encode(int var, long n)
{
    return (void *)(uintptr_t)(((uint64_t)n << 8) | ((uint64_t)var << 2) | 2u);
}

static void hook_retain(void *value)
{
    (void)value;
    atomic_fetch_add_explicit(&retains, 1, memory_order_relaxed);
}

static void hook_release(void *value)
{
    (void)value;
    atomic_fetch_add_explicit(&releases, 1, memory_order_relaxed);
}

static atomic_long failures;
static char first_failure[200];
static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;

static void failure(int line, const char *what)
{
    pthread_mutex_lock(&failure_lock);
    if (atomic_fetch_add(&failures, 1) == 0) {
        snprintf(first_failure, sizeof(first_failure), "line %d: %s", line, what);
        fprintf(stderr, "thread_exit: %s\n", first_failure);
    }
    pthread_mutex_unlock(&failure_lock);
}

#define CHECK(cond, what)                                                                          \
    do {                                                                                           \
        if (!(cond))                                                                               \
            failure(__LINE__, (what));                                                             \
    } while (0)

/* --------------------------------------------------------------- workers */

/* Filled once by a setup thread, then only read (and copied) by workers:
 * the main thread itself never gets a context. */
static cv_context_t *template_ctx;
#define TEMPLATE_VARS 4

static void set_and_check(int var, long n)
{
    CHECK(cv_set(vars[var], encode(var, n), NULL) == CV_OK, "set");
    CHECK(cv_get_or(vars[var], NULL) == encode(var, n), "get after set");
}

static void check_template_values(void)
{
    for (int k = 0; k < TEMPLATE_VARS; k++)
        CHECK(cv_get_or(vars[k], NULL) == encode(k, 0), "template value not seen");
}

static void run_body(void *arg)
{
    long n = *(long *)arg;
    check_template_values();
    set_and_check(5, n);
}

static void *child(void *arg)
{
    long n = *(long *)arg;
    CHECK(cv_get_or(vars[6], NULL) == encode(6, n), "child did not inherit");
    set_and_check(6, n + 1);
    set_and_check(7, n);
    cv_context_t *copy = cv_copy_context();
    CHECK(copy && cv_context_len(copy) == 2, "child's copy");
    cv_context_release(copy);
    return NULL; /* with its inherited base still in use */
}

static void *worker(void *arg)
{
    long n = (long)(intptr_t)arg;
    switch (n % 6) {
    case 0: /* base context only */
        for (int k = 0; k < 3; k++)
            set_and_check(k, n);
        break;
    case 1: { /* exits with a context entered whose only reference is the stack's */
        cv_context_t *ctx = cv_context_new();
        CHECK(ctx && cv_context_enter(ctx) == CV_OK, "enter");
        cv_context_release(ctx);
        set_and_check(1, n);
        set_and_check(2, n);
        break;
    }
    case 2: { /* exits with more contexts entered than the inline stack holds */
        set_and_check(0, n);
        for (int i = 0; i < DEEP; i++) {
            cv_context_t *ctx = i % 2 ? cv_context_copy(template_ctx) : cv_copy_context();
            CHECK(ctx && cv_context_enter(ctx) == CV_OK, "deep enter");
            cv_context_release(ctx);
            set_and_check(4, n + i);
        }
        break;
    }
    case 3: { /* a run in a copy of the template, then exit normally */
        cv_context_t *copy = cv_context_copy(template_ctx);
        CHECK(copy && cv_context_run(copy, run_body, &n) == CV_OK, "run");
        void *got = NULL;
        CHECK(cv_context_get(copy, vars[5], &got) == CV_OK && got == encode(5, n),
              "run's set not in its context");
        cv_context_release(copy);
        set_and_check(3, n);
        break;
    }
    case 4: { /* a child that inherits, and exits with its inherited base */
        set_and_check(6, n);
        pthread_t t;
        int err = cv_thread_create(&t, NULL, child, &n);
        CHECK(err == 0, "cv_thread_create");
        if (err == 0)
            pthread_join(t, NULL);
        CHECK(cv_get_or(vars[6], NULL) == encode(6, n), "child's set leaked into parent");
        break;
    }
    default: { /* a run inside an entered context, which stays entered */
        cv_context_t *ctx = cv_context_copy(template_ctx);
        CHECK(ctx && cv_context_enter(ctx) == CV_OK, "enter a copy");
        cv_context_release(ctx);
        set_and_check(4, n);
        cv_context_t *inner = cv_copy_context();
        CHECK(inner && cv_context_run(inner, run_body, &n) == CV_OK, "run inside entered");
        cv_context_release(inner);
        check_template_values();
        break;
    }
    }
    return NULL;
}

static void *fill_template(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_new();
    CHECK(ctx && cv_context_enter(ctx) == CV_OK, "template enter");
    for (int k = 0; k < TEMPLATE_VARS; k++)
        set_and_check(k, 0);
    CHECK(cv_context_exit(ctx) == CV_OK, "template exit");
    template_ctx = ctx;
    return NULL;
}

/* ------------------------------------------------------------------ main */

static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * sysconf(_SC_PAGESIZE);
}

static void run_batch(long first, long count)
{
    pthread_t threads[BATCH];
    for (long i = 0; i < count; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)(first + i)),
                         0);
    for (long i = 0; i < count; i++)
        pthread_join(threads[i], NULL);
}

static void test_threads_exit(void **state)
{
    (void)state;
    for (int k = 0; k < NVARS; k++) {
        char name[8];
        snprintf(name, sizeof(name), "te%d", k);
        vars[k] =
            cv_var_new(name, &(cv_var_opts_t){.retain = hook_retain, .release = hook_release});
        assert_non_null(vars[k]);
    }
    pthread_t setup;
    assert_int_equal(pthread_create(&setup, NULL, fill_template, NULL), 0);
    pthread_join(setup, NULL);
    assert_non_null(template_ctx);
    assert_int_equal(cv_context_len(template_ctx), TEMPLATE_VARS);
    /* Workers that copy the template at once spread its root's count
     * (lib/spread.h), once, for as long as the template holds the root:
     * spread it now, so that the baseline counts it. */
    cv_testing_spread_every_copy(true);
    cv_context_release(cv_context_copy(template_ctx));
    cv_testing_spread_every_copy(false);
    cv_reclaim_barrier();
    long bytes_before = atomic_load(&live_bytes), blocks_before = atomic_load(&live_blocks);
    long caches_before = cv_testing_caches_mapped();

    long done = 0, rss_warm = 0, rss_max = 0;
    for (int checkpoint = 1; checkpoint <= CHECKPOINTS; checkpoint++) {
        long until = thread_count * checkpoint / CHECKPOINTS;
        while (done < until) {
            long count = until - done < BATCH ? until - done : BATCH;
            run_batch(done, count);
            done += count;
        }
        cv_reclaim_barrier();
        long rss = rss_bytes();
        if (checkpoint == 1)
            rss_warm = rss;
        if (rss > rss_max)
            rss_max = rss;
        long held = atomic_load(&retains) - atomic_load(&releases);
        print_message("%7ld threads: RSS %6.2f MiB, library live %ld bytes in %ld blocks%s, "
                      "values held %ld\n",
                      done, rss / 1048576.0, atomic_load(&live_bytes), atomic_load(&live_blocks),
                      exact ? "" : " (not counted)", held);
        /* Only the template's values are still held. */
        assert_int_equal(held, TEMPLATE_VARS);
        /* Every worker stored into its lookup cache and unmapped it at exit. */
        assert_int_equal(cv_testing_caches_mapped(), caches_before);
        if (exact) {
            assert_int_equal(atomic_load(&live_bytes), bytes_before);
            assert_int_equal(atomic_load(&live_blocks), blocks_before);
        }
        if (atomic_load(&failures))
            fail_msg("%ld failures; first: %s", atomic_load(&failures), first_failure);
    }
    long growth = rss_max - rss_warm;
    print_message("RSS growth after warm-up: %.2f MiB (bound %d MiB%s)\n", growth / 1048576.0,
                  RSS_BOUND_MIB,
                  UNDER_SANITIZER || RUNNING_ON_VALGRIND ? ", not applied here" : "");
    if (!UNDER_SANITIZER && !RUNNING_ON_VALGRIND)
        assert_true(growth <= (long)RSS_BOUND_MIB << 20);
    assert_int_equal(atomic_load(&bad_frees), 0);
}

/* -------------------------------------------------- exit inside a run */

struct counted {
    atomic_long refs;
};
static struct counted canary;

static void canary_retain(void *value)
{
    atomic_fetch_add(&((struct counted *)value)->refs, 1);
}

static void canary_release(void *value)
{
    atomic_fetch_sub(&((struct counted *)value)->refs, 1);
}

static cv_var_t *canary_var;

static void set_then_exit(void *arg)
{
    (void)arg;
    CHECK(cv_set(canary_var, &canary, NULL) == CV_OK, "set before exit");
    pthread_exit(NULL);
}

static void *exit_inside_run(void *arg)
{
    cv_context_run(arg, set_then_exit, NULL);
    failure(__LINE__, "pthread_exit returned");
    return NULL;
}

/* A thread that exits inside cv_context_run(ctx) exits with ctx entered;
 * the run borrowed its caller's reference, and others may hold more. Two
 * references are held here: after one is dropped, the context must still
 * hold its value. If the thread's exit dropped a reference it did not own,
 * the context is gone by then (and the second reference is left alone so
 * as not to free it twice). */
static void test_exit_inside_run(void **state)
{
    (void)state;
    canary_var =
        cv_var_new("canary", &(cv_var_opts_t){.retain = canary_retain, .release = canary_release});
    assert_non_null(canary_var);
    cv_context_t *ctx = cv_context_new();
    assert_non_null(ctx);
    cv_context_retain(ctx);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, exit_inside_run, ctx), 0);
    pthread_join(t, NULL);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&failures), 0);
    assert_int_equal(atomic_load(&canary.refs), 1);
    cv_context_release(ctx);
    cv_reclaim_barrier();
    long refs = atomic_load(&canary.refs);
    if (refs != 1) {
        cv_var_release(canary_var);
        fail_msg("the context was freed while a reference to it was still held: a thread that "
                 "exited inside cv_context_run released the reference that the run borrowed "
                 "(value references left: %ld, want 1)",
                 refs);
    }
    void *got = NULL;
    assert_int_equal(cv_context_get(ctx, canary_var, &got), CV_OK);
    assert_ptr_equal(got, &canary);
    cv_context_release(ctx);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&canary.refs), 0);
    cv_var_release(canary_var);
}

/* Last: what the main thread held is released, and then nothing is. */
static void test_everything_released(void **state)
{
    (void)state;
    cv_context_release(template_ctx);
    for (int k = 0; k < NVARS; k++)
        cv_var_release(vars[k]);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&retains), atomic_load(&releases));
    if (exact) {
        /* The variable-slot table lives as long as the process. */
        assert_int_equal(atomic_load(&live_blocks), 1);
    }
}

int main(int argc, char **argv)
{
    const char *count = getenv("CV_THREAD_EXIT_COUNT");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--exact") == 0)
            exact = true;
        else
            count = argv[i];
    }
    if (count) {
        thread_count = atol(count);
        if (thread_count < CHECKPOINTS) {
            fprintf(stderr, "usage: %s [--exact] [threads >= %d]\n", argv[0], CHECKPOINTS);
            return 2;
        }
    }
    if (exact) {
        /* Before anything of the library allocates. */
        cv_allocator_t counting = {counting_alloc, counting_free, NULL};
        if (cv_set_allocator(&counting) != CV_OK) {
            fprintf(stderr, "cv_set_allocator failed\n");
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_exit),
        cmocka_unit_test(test_exit_inside_run),
        cmocka_unit_test(test_everything_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
