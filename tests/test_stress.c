/*
 * Bounded concurrency stress.
 *
 * One writer keeps a context entered and sets variables in it without
 * pause. Readers read that context from other threads (direct lookups,
 * copies, iteration); shufflers create, enter, copy, run and release
 * contexts of their own, hand snapshots to each other through a small
 * locked mailbox, read copies of the writer's context (directly and as
 * tasks), and start short-lived threads with cv_thread_create. A churner
 * registers and removes a switch watcher and a variable with a change
 * handler without pause, so that every other thread's switches take the
 * callbacks' path while those withdrawals race them.
 *
 * A value encodes its variable and a sequence number. The writer sets its
 * variables in rounds, variable 0 first, each round with the next number,
 * and publishes the number before each set. So every observation can be
 * checked: the value belongs to the variable it was read from; its number
 * was published (never a value that was never written); a reader's numbers
 * per variable never go backwards (reads are linearizable); and in one
 * snapshot (a copy, an iteration) the numbers fall from some variable on by
 * at most one (a state between two sets, never a mix). Iterating a snapshot
 * yields exactly cv_context_len of it. Every variable has retain/release
 * hooks that count; after everything is released and cv_reclaim_barrier()
 * returns, they balance.
 *
 * Workers record failures in atomics; the main thread asserts after
 * joining them (cmocka is not thread-safe).
 *
 *   test_stress [seconds]      default 2 (also CV_STRESS_SECONDS)
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctxvars.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NW 16          /* the writer's monotonic variables: 0..NW-1 */
#define V_SCRATCH NW   /* set and reset by the writer: always present */
#define V_CHURN NW + 1 /* set and reset by the writer: present or absent */
#define NSHUFFLERS 2
#define LOCALS 4 /* per shuffler */
#define V_LOCAL(t, i) (NW + 2 + (t)*LOCALS + (i))
#define NVARS (NW + 2 + NSHUFFLERS * LOCALS)
#define NREADERS 2
#define MAILBOX 8

_Static_assert(NVARS <= 64, "the value encoding has six bits for the variable");

static cv_var_t *vars[NVARS];
static _Atomic(cv_context_t *) writer_ctx;
static atomic_uint_fast64_t written[NVARS]; /* highest number published per variable */
static atomic_bool writer_ready, stop_workers, stop_writer;
static double seconds = 2.0;

/* ---------------------------------------------------------------- values */

static void *encode(int var, uint64_t seq)
{
    return (void *)(uintptr_t)((seq << 8) | ((uint64_t)var << 2) | 2u);
}

static bool decode(const void *value, int *var, uint64_t *seq)
{
    uintptr_t bits = (uintptr_t)value;
    if ((bits & 3u) != 2u)
        return false;
    *var = (int)((bits >> 2) & 63u);
    *seq = bits >> 8;
    return *var < NVARS;
}

static atomic_long retains, releases, bad_hook_values;

static void hook_retain(void *value)
{
    int var;
    uint64_t seq;
    if (!decode(value, &var, &seq))
        atomic_fetch_add(&bad_hook_values, 1);
    atomic_fetch_add_explicit(&retains, 1, memory_order_relaxed);
}

static void hook_release(void *value)
{
    int var;
    uint64_t seq;
    if (!decode(value, &var, &seq))
        atomic_fetch_add(&bad_hook_values, 1);
    atomic_fetch_add_explicit(&releases, 1, memory_order_relaxed);
}

/* -------------------------------------------------------------- failures */

static atomic_long failures;
static atomic_flag first_taken = ATOMIC_FLAG_INIT;
static char first_failure[256];

/* The first few are printed at once: a broken invariant often comes just
 * before a crash, which would take the record with it. */
static void failure(int line, const char *fmt, ...)
{
    long n = atomic_fetch_add(&failures, 1);
    if (n >= 5)
        return;
    char text[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    fprintf(stderr, "stress: line %d: %s\n", line, text);
    if (!atomic_flag_test_and_set(&first_taken))
        snprintf(first_failure, sizeof(first_failure), "line %d: %s", line, text);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            failure(__LINE__, __VA_ARGS__);                                                        \
    } while (0)

static atomic_long n_writes, n_direct, n_copies, n_iterations, n_produced, n_consumed,
    n_foreign_runs, n_task_runs, n_children, n_deep, n_churns, n_watched;

/* ---------------------------------------------------------------- writer */

static void *writer(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_new();
    CHECK(ctx && cv_context_enter(ctx) == CV_OK, "writer: cannot enter its context");
    CHECK(cv_set(vars[V_SCRATCH], encode(V_SCRATCH, 0), NULL) == CV_OK, "writer: scratch");
    uint64_t seq = 0;
    long writes = 0;
    /* Readers start once every monotonic variable has a value. */
    for (bool ready = false; !atomic_load(&stop_writer); ready = true) {
        seq++;
        for (int k = 0; k < NW; k++) {
            /* Release: a reader that sees this number's value and then loads
             * the counter (acquire) finds it published. */
            atomic_store_explicit(&written[k], seq, memory_order_release);
            cv_status_t st = cv_set(vars[k], encode(k, seq), NULL);
            CHECK(st == CV_OK, "writer: set %d", st);
            CHECK(cv_get_or(vars[k], NULL) == encode(k, seq), "writer: own set not seen");
        }
        cv_token_t tok;
        atomic_store_explicit(&written[V_SCRATCH], seq, memory_order_release);
        CHECK(cv_set(vars[V_SCRATCH], encode(V_SCRATCH, seq), &tok) == CV_OK, "writer: scratch");
        CHECK(cv_reset(vars[V_SCRATCH], &tok) == CV_OK, "writer: scratch reset");
        CHECK(cv_get_or(vars[V_SCRATCH], NULL) == encode(V_SCRATCH, 0), "writer: scratch restored");
        atomic_store_explicit(&written[V_CHURN], seq, memory_order_release);
        CHECK(cv_set(vars[V_CHURN], encode(V_CHURN, seq), &tok) == CV_OK, "writer: churn");
        CHECK(cv_reset(vars[V_CHURN], &tok) == CV_OK, "writer: churn reset");
        CHECK(!cv_context_contains(ctx, vars[V_CHURN]), "writer: churn not removed");
        writes += NW + 4;
        if (!ready) {
            atomic_store(&writer_ctx, ctx);
            atomic_store(&writer_ready, true);
        }
    }
    atomic_fetch_add(&n_writes, writes);
    CHECK(cv_context_exit(ctx) == CV_OK, "writer: exit");
    cv_context_release(ctx);
    return NULL;
}

/* ------------------------------------------------------------- checking */

/* One observed value of writer variable k: well formed, of this variable,
 * published, and not older than what this reader saw before. */
static uint64_t check_value(int k, void *value, uint64_t *last)
{
    int var;
    uint64_t seq;
    if (!decode(value, &var, &seq) || var != k) {
        failure(__LINE__, "variable %d: value %p was never written to it", k, value);
        return 0;
    }
    uint64_t published = atomic_load_explicit(&written[k], memory_order_acquire);
    CHECK(seq <= published, "variable %d: number %llu read, only %llu written", k,
          (unsigned long long)seq, (unsigned long long)published);
    if (last) {
        CHECK(seq >= last[k], "variable %d went back from %llu to %llu", k,
              (unsigned long long)last[k], (unsigned long long)seq);
        last[k] = seq;
    }
    return seq;
}

/* The numbers of one snapshot: rounds go from variable 0 up, so they fall
 * by at most one, at one place. */
static void check_snapshot(const uint64_t *seq, const char *what)
{
    for (int k = 1; k < NW; k++)
        CHECK(seq[k] <= seq[k - 1] && seq[0] - seq[k] <= 1,
              "%s is a mix: variable %d at %llu, variable %d at %llu", what, k - 1,
              (unsigned long long)seq[k - 1], k, (unsigned long long)seq[k]);
}

/* A snapshot context (nobody writes it): values by lookup, then by
 * iteration, which must agree with the lookup and with its length. */
static void check_copy(cv_context_t *copy, uint64_t *last, const char *what)
{
    uint64_t seq[NW];
    void *values[NVARS] = {0};
    bool present[NVARS] = {0};
    for (int k = 0; k < NVARS; k++)
        present[k] = cv_context_get(copy, vars[k], &values[k]) == CV_OK;
    for (int k = 0; k < NW; k++) {
        CHECK(present[k], "%s: writer variable %d missing", what, k);
        seq[k] = check_value(k, values[k], last);
    }
    check_snapshot(seq, what);
    CHECK(present[V_SCRATCH], "%s: scratch missing", what);
    if (present[V_SCRATCH])
        check_value(V_SCRATCH, values[V_SCRATCH], NULL);
    if (present[V_CHURN])
        check_value(V_CHURN, values[V_CHURN], NULL);

    size_t len = cv_context_len(copy), n = 0;
    cv_context_iter_t it;
    cv_context_iter_init(&it, copy);
    cv_var_t *var;
    void *value;
    while (cv_context_iter_next(&it, &var, &value)) {
        n++;
        int k = 0;
        while (k < NVARS && vars[k] != var)
            k++;
        CHECK(k < NVARS && present[k] && values[k] == value,
              "%s: iteration gave a pair lookup did not", what);
    }
    cv_context_iter_fini(&it);
    CHECK(n == len, "%s: iterated %zu, len %zu", what, n, len);
    CHECK(cv_context_len(copy) == len, "%s: a copy changed length", what);
}

/* --------------------------------------------------------------- readers */

static void *reader(void *arg)
{
    (void)arg;
    cv_context_t *w = atomic_load(&writer_ctx);
    uint64_t last[NW] = {0};
    long direct = 0, copies = 0, iterations = 0;
    for (unsigned round = 0; !atomic_load_explicit(&stop_workers, memory_order_relaxed); round++) {
        switch (round % 3) {
        case 0: /* lookups on the context the writer is writing */
            for (int k = 0; k < NW; k++) {
                void *value = NULL;
                CHECK(cv_context_get(w, vars[k], &value) == CV_OK, "direct get failed");
                check_value(k, value, last);
            }
            CHECK(cv_context_contains(w, vars[V_SCRATCH]), "scratch missing");
            direct++;
            break;
        case 1: { /* a copy, read at leisure, and a copy of the copy */
            cv_context_t *copy = cv_context_copy(w);
            CHECK(copy != NULL, "copy failed");
            if (!copy)
                break;
            check_copy(copy, last, "copy");
            cv_context_t *again = cv_context_copy(copy);
            CHECK(again && cv_context_equal(again, copy), "a copy of a copy differs");
            cv_context_release(again);
            cv_context_release(copy);
            copies++;
            break;
        }
        default: { /* iteration straight on the written context */
            uint64_t seq[NW] = {0};
            bool seen[NW] = {0};
            size_t n = 0;
            cv_context_iter_t it;
            cv_context_iter_init(&it, w);
            cv_var_t *var;
            void *value;
            while (cv_context_iter_next(&it, &var, &value)) {
                n++;
                int vk;
                uint64_t s;
                CHECK(decode(value, &vk, &s) && vk < NVARS && vars[vk] == var,
                      "iteration: value %p is not its variable's", value);
                if (vk < NW && vars[vk] == var) {
                    seq[vk] = check_value(vk, value, NULL);
                    seen[vk] = true;
                }
            }
            cv_context_iter_fini(&it);
            /* Every writer variable, scratch, and churn when caught set. */
            CHECK(n == NW + 1 || n == NW + 2, "iteration of the written context gave %zu", n);
            for (int k = 0; k < NW; k++) {
                CHECK(seen[k], "iteration missed variable %d", k);
                if (seen[k]) {
                    CHECK(seq[k] >= last[k], "iteration went back on variable %d", k);
                    last[k] = seq[k];
                }
            }
            check_snapshot(seq, "iteration");
            iterations++;
            break;
        }
        }
    }
    atomic_fetch_add(&n_direct, direct);
    atomic_fetch_add(&n_copies, copies);
    atomic_fetch_add(&n_iterations, iterations);
    return NULL;
}

/* --------------------------------------------------------------- mailbox */

struct letter {
    cv_context_t *ctx;
    int var;
    void *value; /* what ctx holds for var */
};

static pthread_mutex_t mailbox_lock = PTHREAD_MUTEX_INITIALIZER;
static struct letter mailbox[MAILBOX];
static int mailbox_count;

/* Takes the sender's reference; drops it when the box is full. */
static void post(struct letter letter)
{
    pthread_mutex_lock(&mailbox_lock);
    bool full = mailbox_count == MAILBOX;
    if (!full)
        mailbox[mailbox_count++] = letter;
    pthread_mutex_unlock(&mailbox_lock);
    if (full)
        cv_context_release(letter.ctx);
}

static bool fetch(struct letter *letter)
{
    pthread_mutex_lock(&mailbox_lock);
    bool got = mailbox_count > 0;
    if (got)
        *letter = mailbox[--mailbox_count];
    pthread_mutex_unlock(&mailbox_lock);
    return got;
}

/* ------------------------------------------------------------- shufflers */

struct shuffler {
    int id;
    uint64_t seq;
};

static void *next_value(struct shuffler *s, int var)
{
    return encode(var, ++s->seq);
}

struct consume_call {
    struct letter letter;
    int set_var;
    void *set_value;
};

static void consume_fn(void *arg)
{
    struct consume_call *c = arg;
    CHECK(cv_get_or(vars[c->letter.var], NULL) == c->letter.value,
          "a handed-over snapshot lost its value");
    CHECK(cv_set(vars[c->set_var], c->set_value, NULL) == CV_OK, "set in a handed-over snapshot");
    CHECK(cv_get_or(vars[c->set_var], NULL) == c->set_value, "set not seen in run");
}

struct foreign_call {
    void *values[NW];
    int set_var;
    void *set_value;
};

static void foreign_fn(void *arg)
{
    struct foreign_call *c = arg;
    for (int k = 0; k < NW; k++)
        CHECK(cv_get_or(vars[k], NULL) == c->values[k], "cv_get in a copy disagrees with lookup");
    CHECK(cv_set(vars[c->set_var], c->set_value, NULL) == CV_OK, "set in a copy");
}

struct capture {
    cv_task_t task;
    struct foreign_call *call;
};

static void capture_task(void *arg)
{
    struct capture *c = arg;
    CHECK(cv_task_init(&c->task, foreign_fn, c->call) == CV_OK, "cv_task_init");
}

struct child_arg {
    int var;
    void *inherited, *own;
};

static void *child(void *arg)
{
    struct child_arg *c = arg;
    CHECK(cv_get_or(vars[c->var], NULL) == c->inherited,
          "child did not inherit its creator's value");
    cv_token_t tok;
    CHECK(cv_set(vars[c->var], c->own, &tok) == CV_OK, "child: set");
    cv_context_t *snap = cv_copy_context();
    CHECK(snap != NULL, "child: copy");
    if (snap)
        post((struct letter){snap, c->var, c->own});
    CHECK(cv_reset(vars[c->var], &tok) == CV_OK, "child: reset");
    CHECK(cv_get_or(vars[c->var], NULL) == c->inherited, "child: reset did not restore");
    atomic_fetch_add(&n_children, 1);
    return NULL;
}

static void deep_fn(void *arg)
{
    int *level = arg;
    CHECK(cv_get_or(vars[V_LOCAL(0, 0)], NULL) == encode(V_LOCAL(0, 0), (uint64_t)*level),
          "deep run: wrong value");
}

static void *shuffler(void *arg)
{
    struct shuffler *s = arg;
    int t = s->id;
    cv_context_t *w = atomic_load(&writer_ctx);
    long produced = 0, consumed = 0, foreign_runs = 0, deep = 0;
    for (unsigned round = 0; !atomic_load_explicit(&stop_workers, memory_order_relaxed); round++) {
        switch (round % 5) {
        case 0: { /* make a context, write it, post a snapshot of it */
            cv_context_t *ctx = cv_context_new();
            CHECK(ctx && cv_context_enter(ctx) == CV_OK, "enter a new context");
            int var = V_LOCAL(t, 0);
            void *value = next_value(s, var);
            CHECK(cv_set(vars[var], value, NULL) == CV_OK, "set in a new context");
            cv_context_t *snap = cv_copy_context();
            CHECK(cv_set(vars[var], next_value(s, var), NULL) == CV_OK, "set after copy");
            CHECK(cv_context_exit(ctx) == CV_OK, "exit a new context");
            cv_context_release(ctx);
            CHECK(snap != NULL, "copy_context");
            if (snap)
                post((struct letter){snap, var, value});
            produced++;
            break;
        }
        case 1: { /* run a snapshot some thread posted, write into it */
            struct letter letter;
            if (!fetch(&letter))
                break;
            void *got = NULL;
            CHECK(cv_context_get(letter.ctx, vars[letter.var], &got) == CV_OK &&
                      got == letter.value,
                  "a posted snapshot changed");
            struct consume_call call = {letter, V_LOCAL(t, 1), next_value(s, V_LOCAL(t, 1))};
            CHECK(cv_context_run(letter.ctx, consume_fn, &call) == CV_OK, "run a posted snapshot");
            CHECK(cv_context_get(letter.ctx, vars[call.set_var], &got) == CV_OK &&
                      got == call.set_value,
                  "a run's set did not land in its context");
            CHECK(cv_get_or(vars[call.set_var], NULL) != call.set_value,
                  "a run's set leaked into the caller");
            cv_context_release(letter.ctx);
            consumed++;
            break;
        }
        case 2: { /* a copy of the written context, run */
            cv_context_t *copy = cv_context_copy(w);
            CHECK(copy != NULL, "copy of the written context");
            if (!copy)
                break;
            struct foreign_call call = {.set_var = V_LOCAL(t, 2)};
            uint64_t seq[NW];
            for (int k = 0; k < NW; k++) {
                CHECK(cv_context_get(copy, vars[k], &call.values[k]) == CV_OK, "lookup in copy");
                seq[k] = check_value(k, call.values[k], NULL);
            }
            check_snapshot(seq, "shuffler's copy");
            call.set_value = next_value(s, call.set_var);
            if (round % 2) {
                CHECK(cv_context_run(copy, foreign_fn, &call) == CV_OK, "run a copy");
                foreign_runs++;
            } else {
                /* The same, as a task captured inside the copy. */
                struct capture capture = {.call = &call};
                CHECK(cv_context_run(copy, capture_task, &capture) == CV_OK, "capture a task");
                CHECK(cv_task_run(&capture.task) == CV_OK, "run a task");
                atomic_fetch_add(&n_task_runs, 1);
            }
            cv_context_release(copy);
            break;
        }
        case 3: { /* a short-lived thread that inherits */
            int var = V_LOCAL(t, 3);
            struct child_arg c = {var, next_value(s, var), next_value(s, var)};
            CHECK(cv_set(vars[var], c.inherited, NULL) == CV_OK, "set before create");
            pthread_t thread;
            int err = cv_thread_create(&thread, NULL, child, &c);
            CHECK(err == 0, "cv_thread_create: %d", err);
            if (err == 0)
                pthread_join(thread, NULL);
            CHECK(cv_get_or(vars[var], NULL) == c.inherited,
                  "a child's set leaked into its parent");
            break;
        }
        default: { /* deeper than the inline context stack; only shuffler 0 */
            if (t != 0)
                break;
            enum { DEPTH = 12 };
            cv_context_t *ctxs[DEPTH];
            int levels[DEPTH];
            for (int i = 0; i < DEPTH; i++) {
                ctxs[i] = i % 2 ? cv_copy_context() : cv_context_new();
                CHECK(ctxs[i] && cv_context_enter(ctxs[i]) == CV_OK, "deep enter");
                levels[i] = i;
                CHECK(cv_set(vars[V_LOCAL(0, 0)], encode(V_LOCAL(0, 0), (uint64_t)i), NULL) ==
                          CV_OK,
                      "deep set");
                cv_context_t *run = cv_copy_context();
                CHECK(run && cv_context_run(run, deep_fn, &levels[i]) == CV_OK, "deep run");
                cv_context_release(run);
            }
            for (int i = DEPTH - 1; i >= 0; i--) {
                CHECK(cv_context_exit(ctxs[i]) == CV_OK, "deep exit");
                cv_context_release(ctxs[i]);
            }
            deep++;
            break;
        }
        }
    }
    atomic_fetch_add(&n_produced, produced);
    atomic_fetch_add(&n_consumed, consumed);
    atomic_fetch_add(&n_foreign_runs, foreign_runs);
    atomic_fetch_add(&n_deep, deep);
    return NULL;
}

/* --------------------------------------------------------------- churner */

static void watch(cv_switch_event_t event, cv_context_t *from, cv_context_t *to, void *data)
{
    CHECK(from && to && from != to && (event == CV_SWITCH_ENTER || event == CV_SWITCH_EXIT),
          "watcher arguments");
    atomic_fetch_add_explicit((atomic_long *)data, 1, memory_order_relaxed);
}

static void handle_change(const cv_change_t *change, void *data)
{
    CHECK(change->var == *(cv_var_t *const *)data, "a handler called for another variable");
}

static void *churner(void *arg)
{
    (void)arg;
    long churns = 0;
    while (!atomic_load_explicit(&stop_workers, memory_order_relaxed)) {
        int id;
        CHECK(cv_watcher_add(watch, &n_watched, &id) == CV_OK, "cv_watcher_add");
        static cv_var_t *handled;
        handled = cv_var_new(
            "handled", &(cv_var_opts_t){.on_change = handle_change, .on_change_data = &handled});
        CHECK(handled && cv_set(handled, &churns, NULL) == CV_OK, "set a handled variable");
        sched_yield();
        cv_var_release(handled);
        CHECK(cv_watcher_remove(id) == CV_OK, "cv_watcher_remove");
        churns++;
    }
    atomic_fetch_add(&n_churns, churns);
    return NULL;
}

/* ------------------------------------------------------------------ main */

static void sleep_seconds(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void test_stress(void **state)
{
    (void)state;
    for (int k = 0; k < NVARS; k++) {
        char name[16];
        snprintf(name, sizeof(name), "stress%d", k);
        vars[k] =
            cv_var_new(name, &(cv_var_opts_t){.retain = hook_retain, .release = hook_release});
        assert_non_null(vars[k]);
    }
    pthread_t w, readers[NREADERS], shufflers[NSHUFFLERS], churn;
    struct shuffler states[NSHUFFLERS];
    assert_int_equal(pthread_create(&w, NULL, writer, NULL), 0);
    while (!atomic_load(&writer_ready) && atomic_load(&failures) == 0)
        sched_yield();
    assert_int_equal(atomic_load(&failures), 0);
    for (int i = 0; i < NREADERS; i++)
        assert_int_equal(pthread_create(&readers[i], NULL, reader, NULL), 0);
    for (int i = 0; i < NSHUFFLERS; i++) {
        states[i] = (struct shuffler){i, 0};
        assert_int_equal(pthread_create(&shufflers[i], NULL, shuffler, &states[i]), 0);
    }
    assert_int_equal(pthread_create(&churn, NULL, churner, NULL), 0);
    sleep_seconds(seconds);
    atomic_store(&stop_workers, true);
    pthread_join(churn, NULL);
    for (int i = 0; i < NREADERS; i++)
        pthread_join(readers[i], NULL);
    for (int i = 0; i < NSHUFFLERS; i++)
        pthread_join(shufflers[i], NULL);
    /* The writer's context outlives every reader that holds no reference. */
    atomic_store(&stop_writer, true);
    pthread_join(w, NULL);
    struct letter letter;
    while (fetch(&letter))
        cv_context_release(letter.ctx);

    print_message("%.1f s: %ld sets by the writer; readers: %ld lookup rounds, %ld copies, %ld "
                  "iterations; shufflers: %ld posted, %ld run, %ld copies run, %ld as tasks, "
                  "%ld children, %ld deep; churner: %ld rounds, %ld watched switches\n",
                  seconds, atomic_load(&n_writes), atomic_load(&n_direct), atomic_load(&n_copies),
                  atomic_load(&n_iterations), atomic_load(&n_produced), atomic_load(&n_consumed),
                  atomic_load(&n_foreign_runs), atomic_load(&n_task_runs), atomic_load(&n_children),
                  atomic_load(&n_deep), atomic_load(&n_churns), atomic_load(&n_watched));
    if (atomic_load(&failures))
        fail_msg("%ld failures; first: %s", atomic_load(&failures), first_failure);
    /* Every kind of traffic happened, so the invariants were exercised. */
    assert_true(atomic_load(&n_writes) > 1000);
    assert_true(atomic_load(&n_direct) > 0 && atomic_load(&n_copies) > 0 &&
                atomic_load(&n_iterations) > 0);
    assert_true(atomic_load(&n_produced) > 0 && atomic_load(&n_consumed) > 0);
    assert_true(atomic_load(&n_foreign_runs) > 0 && atomic_load(&n_task_runs) > 0 &&
                atomic_load(&n_children) > 0 && atomic_load(&n_deep) > 0);
    assert_true(atomic_load(&n_churns) > 0 && atomic_load(&n_watched) > 0);
}

/* Last, since a failing group teardown would not fail the run. */
static void test_everything_released(void **state)
{
    (void)state;
    for (int k = 0; k < NVARS; k++)
        cv_var_release(vars[k]);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&bad_hook_values), 0);
    assert_true(atomic_load(&retains) > 0);
    assert_int_equal(atomic_load(&retains), atomic_load(&releases));
}

int main(int argc, char **argv)
{
    const char *arg = argc > 1 ? argv[1] : getenv("CV_STRESS_SECONDS");
    if (arg) {
        seconds = atof(arg);
        if (seconds <= 0) {
            fprintf(stderr, "usage: %s [seconds]\n", argv[0]);
            return 2;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress),
        cmocka_unit_test(test_everything_released),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
