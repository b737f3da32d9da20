/*
 * fork(): API.md promises that "the library stays usable in the child".
 * Children copy contexts, set, run, start threads with cv_thread_create
 * and wait for reclamation; they report through a pipe and exit 0 only if
 * every check passed. The parent's values and threads go on unaffected,
 * including threads that were writing, copying, creating variables and
 * waiting for grace periods at the moment of the fork.
 *
 * A child must never call into cmocka (its state is the parent's copy): it
 * checks with CCHECK and ends with _exit. Each child arms alarm() so that a
 * deadlock after fork kills it instead of hanging the suite; the parent
 * then reports the signal.
 */
#define _GNU_SOURCE /* nanosleep, strsignal, strtok_r in -std=c11 */
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

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GROUP_NAME "test_fork"
#define VAL(x) ((void *)(uintptr_t)(x))

/* Under ThreadSanitizer a child of a multi-threaded parent may start
 * threads only with die_after_fork=0 (the parent always has liburcu's
 * call_rcu worker, so it is always multi-threaded). */
#if defined(__SANITIZE_THREAD__)
#define CV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CV_TSAN 1
#endif
#endif
#ifdef CV_TSAN
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

/*
 * clang 14's AddressSanitizer takes no allocator locks around fork(): a
 * child forked while another thread is inside malloc can block for ever
 * in its own first malloc (seen here: every child thread parked in
 * SizeClassAllocator64::GetFromAllocator). Under ASan the parent's busy
 * threads therefore park at a quiet point of their loop for each fork; the
 * children's checks still run there, and the normal and TSan builds keep
 * the forks in the middle of the activity.
 */
#if defined(__SANITIZE_ADDRESS__)
#define CV_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CV_ASAN 1
#endif
#endif

static atomic_int gated_threads;
#ifdef CV_ASAN
static atomic_bool fork_gate;
static atomic_int parked_threads;
#endif

static void park_for_fork(void)
{
#ifdef CV_ASAN
    if (atomic_load(&fork_gate)) {
        atomic_fetch_add(&parked_threads, 1);
        while (atomic_load(&fork_gate))
            sched_yield();
        atomic_fetch_sub(&parked_threads, 1);
    }
#endif
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------- child side */

static int child_report_fd = -1;
static atomic_int child_failures;

static void child_fail(int line, const char *what)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "line %d: %s\n", line, what);
    if (atomic_fetch_add(&child_failures, 1) < 8 && n > 0)
        (void)!write(child_report_fd, buf, (size_t)n);
}

#define CCHECK(cond) ((cond) ? (void)0 : child_fail(__LINE__, #cond))

/* Runs body(arg) in a child, which has `seconds` to finish. Returns NULL
 * if it exited 0 with nothing reported, else a description (static
 * buffer). Callers clean up their threads before failing on it. */
static const char *in_child(void (*body)(void *), void *arg, unsigned seconds)
{
    static char outcome[2560];
    int fds[2];
    if (pipe(fds) != 0)
        return "pipe failed";
    fflush(NULL);
#ifdef CV_ASAN
    atomic_store(&fork_gate, true);
    while (atomic_load(&parked_threads) < atomic_load(&gated_threads))
        sched_yield();
#endif
    pid_t pid = fork();
#ifdef CV_ASAN
    atomic_store(&fork_gate, false);
#endif
    if (pid < 0)
        return "fork failed";
    if (pid == 0) {
        close(fds[0]);
        child_report_fd = fds[1];
        atomic_store(&child_failures, 0);
        alarm(seconds);
        body(arg);
        _exit(atomic_load(&child_failures) ? 1 : 0);
    }
    close(fds[1]);
    char report[2048];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fds[0], report + len, sizeof(report) - 1 - len);
        if (n > 0) {
            len += (size_t)n;
            if (len == sizeof(report) - 1)
                break;
        } else if (n == 0 || errno != EINTR) {
            break;
        }
    }
    report[len] = '\0';
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return "waitpid failed";
    }
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        snprintf(outcome, sizeof(outcome), "child killed by signal %d (%s)%s%s", sig,
                 sig == SIGALRM ? "hung: its alarm went off" : strsignal(sig),
                 len ? "; it reported:\n" : "", report);
        return outcome;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || len) {
        snprintf(outcome, sizeof(outcome), "child exit status %d; it reported:\n%s",
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1, report);
        return outcome;
    }
    return NULL;
}

/* ------------------------------------------- a parent thread that works */

/* Sets a counter in its own base context and checks copies of it, until
 * told to stop: proof that the parent's threads survive forks. */
struct worker {
    cv_var_t *counter;
    atomic_bool stop;
    atomic_long progress;
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (uintptr_t k = 1; !atomic_load(&w->stop); k++) {
        park_for_fork();
        void *v = NULL;
        if (cv_set(w->counter, VAL(k), NULL) != CV_OK)
            w->failures++;
        cv_context_t *copy = cv_copy_context();
        if (!copy || cv_context_get(copy, w->counter, &v) != CV_OK || v != VAL(k))
            w->failures++;
        cv_context_release(copy);
        if (cv_get(w->counter, &v) != CV_OK || v != VAL(k))
            w->failures++;
        atomic_store(&w->progress, (long)k);
    }
    atomic_fetch_sub(&gated_threads, 1);
    return NULL;
}

static void worker_start(struct worker *w, pthread_t *t)
{
    w->counter = cv_var_new("counter", NULL);
    atomic_store(&w->stop, false);
    atomic_store(&w->progress, 0);
    w->failures = 0;
    atomic_fetch_add(&gated_threads, 1);
    assert_int_equal(cv_thread_create(t, NULL, worker_main, w), 0);
}

/* The worker still makes progress after the forks, then stops cleanly. */
static void worker_finish(struct worker *w, pthread_t t)
{
    long before = atomic_load(&w->progress);
    double give_up = now_seconds() + 10;
    while (atomic_load(&w->progress) < before + 100 && now_seconds() < give_up)
        sleep_ms(1);
    bool progressed = atomic_load(&w->progress) >= before + 100;
    atomic_store(&w->stop, true);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_true(progressed);
    assert_int_equal(w->failures, 0);
    cv_var_release(w->counter);
}

/* ------------------------------------------------------------- basic */

struct basic {
    cv_var_t *a, *b;
    cv_var_t *hooked;
    cv_context_t *parked; /* entered by nobody */
};

static atomic_int child_hook_refs, child_hook_underflow;
static int hook_obj[4];

static void hook_retain(void *value)
{
    (void)value;
    atomic_fetch_add(&child_hook_refs, 1);
}

static void hook_release(void *value)
{
    (void)value;
    if (atomic_fetch_sub(&child_hook_refs, 1) <= 0)
        atomic_fetch_add(&child_hook_underflow, 1);
}

struct child_run {
    struct basic *b;
    bool ok;
};

static void child_run_fn(void *arg)
{
    struct child_run *r = arg;
    void *v = NULL;
    r->ok = cv_get(r->b->a, &v) == CV_OK && v == VAL(1) &&
            cv_set(r->b->a, VAL(100), NULL) == CV_OK && cv_get_or(r->b->a, NULL) == VAL(100);
}

struct child_thread {
    struct basic *b;
    cv_var_t *fresh;
    int index;
};

static void *child_thread_main(void *arg)
{
    struct child_thread *ct = arg;
    void *v = NULL;
    /* Inherited from the child's main thread. */
    CCHECK(cv_get(ct->b->a, &v) == CV_OK && v == VAL(1));
    CCHECK(cv_get(ct->fresh, &v) == CV_OK && v == VAL(0xf2e5));
    for (int k = 0; k < 200; k++) {
        cv_token_t tok;
        CCHECK(cv_set(ct->b->a, VAL(1000 + k), &tok) == CV_OK);
        CCHECK(cv_set(ct->b->hooked, &hook_obj[ct->index % 4], NULL) == CV_OK);
        cv_context_t *copy = cv_copy_context();
        CCHECK(cv_context_get(copy, ct->b->a, &v) == CV_OK && v == VAL(1000 + k));
        cv_context_release(copy);
        CCHECK(cv_reset(ct->b->a, &tok) == CV_OK);
    }
    CCHECK(cv_get(ct->b->a, &v) == CV_OK && v == VAL(1));
    return NULL;
}

static void basic_child(void *arg)
{
    struct basic *b = arg;
    void *v = NULL;
    /* The forking thread's view came along. */
    CCHECK(cv_get(b->a, &v) == CV_OK && v == VAL(1));
    CCHECK(cv_get(b->b, &v) == CV_OK && v == VAL(2));

    cv_context_t *copy = cv_copy_context();
    CCHECK(copy != NULL && cv_context_equal(copy, cv_context_current()));
    struct child_run r = {b, false};
    CCHECK(cv_context_run(copy, child_run_fn, &r) == CV_OK && r.ok);
    CCHECK(cv_get(b->a, &v) == CV_OK && v == VAL(1));
    CCHECK(cv_context_get(copy, b->a, &v) == CV_OK && v == VAL(100));

    /* A context nobody had entered: the child may enter and change it. */
    CCHECK(cv_context_get(b->parked, b->a, &v) == CV_OK && v == VAL(10));
    CCHECK(cv_context_enter(b->parked) == CV_OK);
    CCHECK(cv_set(b->a, VAL(11), NULL) == CV_OK);
    CCHECK(cv_context_exit(b->parked) == CV_OK);
    CCHECK(cv_context_get(b->parked, b->a, &v) == CV_OK && v == VAL(11));

    /* New variables (the slot lock is usable) and hooks with their
     * releases run by the child's own reclaimer. */
    cv_var_t *fresh = cv_var_new("fresh", NULL);
    CCHECK(fresh != NULL);
    CCHECK(cv_set(fresh, VAL(0xf2e5), NULL) == CV_OK);
    atomic_store(&child_hook_refs, 0);
    atomic_store(&child_hook_underflow, 0);
    b->hooked =
        cv_var_new("hooked", &(cv_var_opts_t){.retain = hook_retain, .release = hook_release});
    pthread_t t[3];
    struct child_thread ct[3];
    for (int i = 0; i < 3; i++) {
        ct[i] = (struct child_thread){b, fresh, i};
        CCHECK(cv_thread_create(&t[i], NULL, child_thread_main, &ct[i]) == 0);
    }
    for (int i = 0; i < 3; i++)
        CCHECK(pthread_join(t[i], NULL) == 0);
    cv_context_release(copy);
    cv_var_release(b->hooked);
    cv_reclaim_barrier();
    CCHECK(atomic_load(&child_hook_refs) == 0);
    CCHECK(atomic_load(&child_hook_underflow) == 0);
    CCHECK(cv_get(fresh, &v) == CV_OK && v == VAL(0xf2e5));
    cv_var_release(fresh);
}

static void test_child_keeps_working(void **state)
{
    (void)state;
    struct basic b = {0};
    b.a = cv_var_new("a", NULL);
    b.b = cv_var_new("b", NULL);
    cv_context_t *mine = cv_context_new();
    assert_int_equal(cv_context_enter(mine), CV_OK);
    assert_int_equal(cv_set(b.a, VAL(1), NULL), CV_OK);
    assert_int_equal(cv_set(b.b, VAL(2), NULL), CV_OK);
    b.parked = cv_context_new();
    assert_int_equal(cv_context_enter(b.parked), CV_OK);
    assert_int_equal(cv_set(b.a, VAL(10), NULL), CV_OK);
    assert_int_equal(cv_context_exit(b.parked), CV_OK);
    struct worker w;
    pthread_t wt;
    worker_start(&w, &wt);

    const char *failure = NULL;
    for (int round = 0; round < 3 && !failure; round++)
        failure = in_child(basic_child, &b, 20);

    /* The parent saw none of it. */
    worker_finish(&w, wt);
    if (failure)
        fail_msg("basic child: %s", failure);
    void *v = NULL;
    assert_int_equal(cv_get(b.a, &v), CV_OK);
    assert_ptr_equal(v, VAL(1));
    assert_int_equal(cv_context_get(b.parked, b.a, &v), CV_OK);
    assert_ptr_equal(v, VAL(10));
    assert_int_equal(cv_context_exit(mine), CV_OK);
    cv_context_release(mine);
    cv_context_release(b.parked);
    cv_var_release(b.a);
    cv_var_release(b.b);
    cv_reclaim_barrier();
}

/* ----------------------------------------- forks in the middle of work */

#define PN 12

/* The owner's history (as in test_threads): round r sets every variable
 * to 2r-1 ascending with tokens, to 2r descending, then resets the tokens
 * ascending. Any consistent snapshot has one of three shapes. */
static bool pattern_consistent(const uintptr_t *v, int n)
{
    int zeros = 0;
    while (zeros < n && v[zeros] == 0)
        zeros++;
    if (zeros == n)
        return true;
    if (zeros > 0) {
        for (int i = zeros; i < n; i++) {
            if (v[i] != v[zeros] || (v[i] & 1))
                return false;
        }
        return true;
    }
    int run = 1;
    while (run < n && v[run] == v[0])
        run++;
    if (run == n)
        return true;
    if (!(v[0] & 1))
        return false;
    for (int i = run; i < n; i++) {
        if (v[i] != v[run] || (v[run] != 0 && v[run] != v[0] + 1))
            return false;
    }
    return true;
}

struct busy_parent {
    cv_var_t *vars[PN];
    cv_context_t *ctx;    /* entered by the owner thread */
    cv_context_t *parked; /* entered by nobody */
    atomic_bool stop;
    atomic_long owner_rounds, reads, barriers, churns;
    int owner_failures, reader_failures, churn_failures;
};

static void *busy_owner_main(void *arg)
{
    struct busy_parent *bp = arg;
    if (cv_context_enter(bp->ctx) != CV_OK)
        bp->owner_failures++;
    for (long r = 1; !atomic_load(&bp->stop); r++) {
        park_for_fork();
        cv_token_t tok[PN];
        for (int i = 0; i < PN; i++)
            bp->owner_failures += cv_set(bp->vars[i], VAL(2 * r - 1), &tok[i]) != CV_OK;
        for (int i = PN - 1; i >= 0; i--)
            bp->owner_failures += cv_set(bp->vars[i], VAL(2 * r), NULL) != CV_OK;
        for (int i = 0; i < PN; i++)
            bp->owner_failures += cv_reset(bp->vars[i], &tok[i]) != CV_OK;
        atomic_store(&bp->owner_rounds, r);
    }
    if (cv_context_exit(bp->ctx) != CV_OK)
        bp->owner_failures++;
    atomic_fetch_sub(&gated_threads, 1);
    return NULL;
}

static bool snapshot_consistent(struct busy_parent *bp, cv_context_t *ctx)
{
    uintptr_t v[PN] = {0};
    size_t count = 0;
    cv_context_iter_t it;
    cv_var_t *var;
    void *value;
    cv_context_iter_init(&it, ctx);
    while (cv_context_iter_next(&it, &var, &value)) {
        int i = 0;
        while (i < PN && bp->vars[i] != var)
            i++;
        if (i == PN || v[i])
            return false;
        v[i] = (uintptr_t)value;
        count++;
    }
    cv_context_iter_fini(&it);
    return count == cv_context_len(ctx) && pattern_consistent(v, PN);
}

static void *busy_reader_main(void *arg)
{
    struct busy_parent *bp = arg;
    while (!atomic_load(&bp->stop)) {
        park_for_fork();
        cv_context_t *copy = cv_context_copy(bp->ctx);
        if (!copy || !snapshot_consistent(bp, copy))
            bp->reader_failures++;
        cv_context_release(copy);
        atomic_fetch_add(&bp->reads, 1);
    }
    atomic_fetch_sub(&gated_threads, 1);
    return NULL;
}

/* Creates and frees variables (the slot lock) and waits for grace periods
 * (the reclaimer's registry and liburcu) while the forks happen. */
static void *busy_churn_main(void *arg)
{
    struct busy_parent *bp = arg;
    for (long k = 0; !atomic_load(&bp->stop); k++) {
        park_for_fork();
        cv_var_t *v = cv_var_new("churn", NULL);
        cv_token_t tok;
        if (!v || cv_set(v, VAL(k + 1), &tok) != CV_OK || cv_reset(v, &tok) != CV_OK)
            bp->churn_failures++;
        cv_var_release(v);
        if (k % 64 == 0) {
            cv_reclaim_barrier();
            atomic_fetch_add(&bp->barriers, 1);
        }
        atomic_fetch_add(&bp->churns, 1);
    }
    atomic_fetch_sub(&gated_threads, 1);
    return NULL;
}

/* Work in the child that stays off the context the absent owner was
 * writing: its own contexts, a context nobody had entered, new variables,
 * threads, grace periods. */
static void *busy_child_thread_main(void *arg)
{
    struct busy_parent *bp = arg;
    void *v = NULL;
    CCHECK(cv_get(bp->vars[0], &v) == CV_OK && v == VAL(0xc41d)); /* inherited */
    for (int k = 0; k < 50; k++) {
        cv_var_t *var = cv_var_new("child", NULL);
        cv_token_t tok;
        CCHECK(var != NULL && cv_set(var, VAL(k + 1), &tok) == CV_OK);
        cv_context_t *copy = cv_copy_context();
        CCHECK(copy != NULL && cv_context_get(copy, var, &v) == CV_OK && v == VAL(k + 1));
        cv_context_release(copy);
        CCHECK(cv_reset(var, &tok) == CV_OK && cv_get_or(var, NULL) == NULL);
        cv_var_release(var);
        cv_context_t *parked = cv_context_copy(bp->parked);
        CCHECK(parked != NULL && cv_context_len(parked) == PN);
        cv_context_release(parked);
    }
    return NULL;
}

static void busy_child(void *arg)
{
    struct busy_parent *bp = arg;
    CCHECK(cv_set(bp->vars[0], VAL(0xc41d), NULL) == CV_OK);
    cv_context_t *parked = cv_context_copy(bp->parked);
    CCHECK(parked != NULL && cv_context_equal(parked, bp->parked));
    CCHECK(cv_context_enter(bp->parked) == CV_OK);
    CCHECK(cv_set(bp->vars[1], VAL(0xc41d), NULL) == CV_OK);
    CCHECK(cv_context_exit(bp->parked) == CV_OK);
    CCHECK(!cv_context_equal(parked, bp->parked));
    cv_context_release(parked);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        CCHECK(cv_thread_create(&t[i], NULL, busy_child_thread_main, bp) == 0);
    for (int i = 0; i < 2; i++)
        CCHECK(pthread_join(t[i], NULL) == 0);
    cv_reclaim_barrier();
}

/* The child reads the context that a parent thread had entered and was
 * writing when the fork came (its owner is absent in the child). */
static void absent_owner_child(void *arg)
{
    struct busy_parent *bp = arg;
    /* Still owned by the absent thread (the README's fork notes): readable
     * and copyable, not enterable. */
    CCHECK(cv_context_enter(bp->ctx) == CV_EBUSY);
    cv_context_t *copy = cv_context_copy(bp->ctx);
    CCHECK(copy != NULL);
    if (!copy)
        return;
    CCHECK(snapshot_consistent(bp, copy));
    CCHECK(snapshot_consistent(bp, bp->ctx));
    /* The copy belongs to nobody: enter it and go on from that state. */
    CCHECK(cv_context_enter(copy) == CV_OK);
    CCHECK(cv_set(bp->vars[0], VAL(0xc41d), NULL) == CV_OK);
    CCHECK(cv_get_or(bp->vars[0], NULL) == VAL(0xc41d));
    CCHECK(cv_context_exit(copy) == CV_OK);
    cv_context_release(copy);
    cv_reclaim_barrier();
}

static void run_busy_forks(bool readers, bool churn_and_barriers, void (*child)(void *), int forks,
                           const char *what)
{
    struct busy_parent *bp = calloc(1, sizeof(*bp));
    assert_non_null(bp);
    for (int i = 0; i < PN; i++)
        bp->vars[i] = cv_var_new("pattern", NULL);
    bp->ctx = cv_context_new();
    bp->parked = cv_context_new();
    assert_int_equal(cv_context_enter(bp->parked), CV_OK);
    for (int i = 0; i < PN; i++)
        assert_int_equal(cv_set(bp->vars[i], VAL(i + 1), NULL), CV_OK);
    assert_int_equal(cv_context_exit(bp->parked), CV_OK);
    pthread_t owner, reader, churn;
    atomic_fetch_add(&gated_threads, 1 + readers + churn_and_barriers);
    assert_int_equal(pthread_create(&owner, NULL, busy_owner_main, bp), 0);
    if (readers)
        assert_int_equal(pthread_create(&reader, NULL, busy_reader_main, bp), 0);
    if (churn_and_barriers)
        assert_int_equal(pthread_create(&churn, NULL, busy_churn_main, bp), 0);
    while (atomic_load(&bp->owner_rounds) < 10)
        sched_yield();

    const char *failure = NULL;
    int fork_number = 0;
    while (fork_number < forks && !failure) {
        sleep_ms(2);
        fork_number++;
        /* A healthy child needs milliseconds; a hung one costs 5 s, once. */
        failure = in_child(child, bp, 5);
    }

    /* The parent's threads carry on after the forks. */
    long rounds = atomic_load(&bp->owner_rounds), churns = atomic_load(&bp->churns);
    double give_up = now_seconds() + 10;
    while ((atomic_load(&bp->owner_rounds) < rounds + 10 ||
            (churn_and_barriers && atomic_load(&bp->churns) < churns + 10)) &&
           now_seconds() < give_up)
        sleep_ms(1);
    bool parent_progressed = atomic_load(&bp->owner_rounds) >= rounds + 10 &&
                             (!churn_and_barriers || atomic_load(&bp->churns) >= churns + 10);
    atomic_store(&bp->stop, true);
    assert_int_equal(pthread_join(owner, NULL), 0);
    if (readers)
        assert_int_equal(pthread_join(reader, NULL), 0);
    if (churn_and_barriers)
        assert_int_equal(pthread_join(churn, NULL), 0);
    bool final_consistent = snapshot_consistent(bp, bp->ctx);
    void *v = NULL;
    bool parked_unchanged = cv_context_len(bp->parked) == PN &&
                            cv_context_get(bp->parked, bp->vars[1], &v) == CV_OK && v == VAL(2);
    int owner_failures = bp->owner_failures, reader_failures = bp->reader_failures,
        churn_failures = bp->churn_failures;
    long reads = atomic_load(&bp->reads);
    cv_context_release(bp->ctx);
    cv_context_release(bp->parked);
    for (int i = 0; i < PN; i++)
        cv_var_release(bp->vars[i]);
    free(bp);
    cv_reclaim_barrier();

    if (failure)
        fail_msg("fork %d of %d, %s: %s", fork_number, forks, what, failure);
    assert_true(parent_progressed);
    assert_int_equal(owner_failures, 0);
    assert_int_equal(reader_failures, 0);
    assert_int_equal(churn_failures, 0);
    if (readers)
        assert_true(reads > 0);
    assert_true(final_consistent);
    assert_true(parked_unchanged); /* the children's sets stayed theirs */
}

/* Forks while one thread writes a context that another copies, and a
 * third creates variables and waits for grace periods (the library's
 * fork handlers must leave every lock usable in the child). */
static void test_fork_amid_activity(void **state)
{
    (void)state;
    run_busy_forks(true, true, busy_child, 8, "amid a writer, a reader, churn and barriers");
}

/* The child copies and iterates the context that a parent thread had
 * entered and was writing: with a reader in the parent (the owner mostly
 * copies paths) and without (it updates its nodes in place, so a fork can
 * catch it in the middle of an update). */
static void test_child_reads_context_of_absent_owner(void **state)
{
    (void)state;
    run_busy_forks(true, false, absent_owner_child, 8, "owner writing, reader copying");
    run_busy_forks(false, false, absent_owner_child, 8, "owner writing in place");
}

/* ------------------------------------ threads gone, their garbage left */

static atomic_int retired_value_refs;
static int retired_obj;

static void counting_retain(void *value)
{
    if (value == &retired_obj)
        atomic_fetch_add(&retired_value_refs, 1);
}

static void counting_release(void *value)
{
    if (value == &retired_obj)
        atomic_fetch_sub(&retired_value_refs, 1);
}

/* Leaves an old root of a fresh context waiting in the calling thread's
 * list of retired nodes: a read from outside while nobody owns the
 * context makes the next set copy the path and retire the root it
 * replaces, which holds `value` until it is disposed of. */
static bool retire_root_holding(cv_var_t *var, void *value)
{
    cv_context_t *ctx = cv_context_new();
    bool ok = ctx && cv_context_enter(ctx) == CV_OK && cv_set(var, value, NULL) == CV_OK &&
              cv_context_exit(ctx) == CV_OK;
    ok = ok && cv_context_len(ctx) == 1;
    ok = ok && cv_context_enter(ctx) == CV_OK && cv_set(var, VAL(0x2), NULL) == CV_OK &&
         cv_context_exit(ctx) == CV_OK;
    cv_context_release(ctx);
    return ok;
}

struct retirer {
    cv_var_t *hooked;
    atomic_int stage; /* 1: retired; 2: may exit */
    bool ok;
};

static void *retirer_main(void *arg)
{
    struct retirer *r = arg;
    r->ok = retire_root_holding(r->hooked, &retired_obj);
    atomic_store(&r->stage, 1);
    while (atomic_load(&r->stage) != 2)
        sleep_ms(1);
    return NULL;
}

static void *child_retirer_main(void *arg)
{
    CCHECK(retire_root_holding(arg, VAL(0x1)));
    return NULL;
}

/* The child's threads may get the dead parent threads' stacks, and the
 * lists of retired nodes in their TLS with them, from glibc's cache: the
 * child must neither lose those nodes nor link a reused list twice (a
 * cycle, and every barrier spinning in it). */
static void reusing_child(void *arg)
{
    cv_var_t *plain = arg;
    for (int i = 0; i < 4; i++) {
        pthread_t t;
        CCHECK(pthread_create(&t, NULL, child_retirer_main, plain) == 0);
        CCHECK(pthread_join(t, NULL) == 0);
    }
    cv_reclaim_barrier();
    /* The parent thread's retired root, disposed of here. */
    CCHECK(atomic_load(&retired_value_refs) == 0);
}

static void test_child_threads_reuse_dead_threads_lists(void **state)
{
    (void)state;
    cv_var_t *plain = cv_var_new("plain", NULL);
    struct retirer r = {
        .hooked = cv_var_new(
            "hooked", &(cv_var_opts_t){.retain = counting_retain, .release = counting_release}),
    };
    assert_non_null(plain);
    assert_non_null(r.hooked);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, retirer_main, &r), 0);
    while (atomic_load(&r.stage) != 1)
        sleep_ms(1);
    /* Still waiting for its thread's exit or its batch to fill. */
    int refs_at_fork = atomic_load(&retired_value_refs);
    const char *failure = in_child(reusing_child, plain, 5);
    atomic_store(&r.stage, 2);
    assert_int_equal(pthread_join(t, NULL), 0);
    cv_reclaim_barrier();
    int refs_after = atomic_load(&retired_value_refs);
    cv_var_release(plain);
    cv_var_release(r.hooked);
    if (failure)
        fail_msg("%s", failure);
    assert_true(r.ok);
    assert_int_equal(refs_at_fork, 1);
    assert_int_equal(refs_after, 0);
}

/* A fork from inside a flush (as from a release hook that a flush's
 * disposal calls): the child goes on handing over the list it holds, and
 * a barrier there must neither miss it nor wait for the other threads'. */
static pthread_t fork_in_flush_thread;
static pid_t fork_in_flush_child = -1;
static bool in_fork_in_flush_child;

static void fork_in_flush(void)
{
    if (!pthread_equal(pthread_self(), fork_in_flush_thread) || fork_in_flush_child != -1)
        return;
    fflush(NULL);
    fork_in_flush_child = fork();
    if (fork_in_flush_child == 0) {
        alarm(5);
        in_fork_in_flush_child = true;
    }
}

static void test_fork_from_inside_a_flush(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("flushed", NULL);
    assert_non_null(var);
    fork_in_flush_thread = pthread_self();
    fork_in_flush_child = -1;
    cv_testing_pause_in_flush(fork_in_flush);
    /* One retired root each: the thread's batch fills within 128. */
    for (int i = 0; i < 1000 && fork_in_flush_child == -1; i++)
        assert_true(retire_root_holding(var, VAL(0x1)));
    if (in_fork_in_flush_child) {
        /* The child, out of the flush it forked in: no cmocka here. */
        cv_testing_pause_in_flush(NULL);
        cv_reclaim_barrier();
        cv_reclaim_barrier();
        _exit(0);
    }
    cv_testing_pause_in_flush(NULL);
    assert_true(fork_in_flush_child > 0);
    int status;
    while (waitpid(fork_in_flush_child, &status, 0) < 0)
        assert_int_equal(errno, EINTR);
    cv_var_release(var);
    cv_reclaim_barrier();
    if (WIFSIGNALED(status))
        fail_msg("child killed by signal %d (%s)", WTERMSIG(status),
                 WTERMSIG(status) == SIGALRM ? "its barrier hung" : strsignal(WTERMSIG(status)));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    struct CMUnitTest tests[] = {
        cmocka_unit_test(test_child_keeps_working),
        cmocka_unit_test(test_fork_amid_activity),
        cmocka_unit_test(test_child_reads_context_of_absent_owner),
        cmocka_unit_test(test_child_threads_reuse_dead_threads_lists),
        cmocka_unit_test(test_fork_from_inside_a_flush),
    };
    return cv_test_run_selected(GROUP_NAME, tests, sizeof(tests) / sizeof(tests[0]));
}
