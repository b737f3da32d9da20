/*
 * Soak: sustained library traffic while the resident set is sampled.
 *
 * Threads:
 *  - setter: set/reset pairs, without pause, in a context it keeps entered;
 *  - copier: copies and releases its own context without pause, and the
 *    setter's about once a millisecond (with --hot: every 64th copy, about
 *    once a microsecond). A foreign reader keeps the setter copying paths
 *    and retiring replaced nodes through RCU while it comes back within 64
 *    updates; once a millisecond is the reference load of DESIGN.md (a
 *    server's base context copied now and then), --hot the worst case.
 *  - producer/consumer: the producer enters fresh contexts, sets, and hands
 *    snapshots over a locked mailbox; the consumer runs each one, sets in
 *    it and releases it; every so often the producer starts a short-lived
 *    thread with cv_thread_create.
 *
 * Every second it prints the time, the resident set and the operations so
 * far. At the end it releases everything, waits for reclamation and checks
 * that the values' retain/release hooks balance.
 *
 * The verdict looks at the floor after the warm-up (a quarter of the run,
 * at least two seconds): the lowest sample of the second half against the
 * lowest of the first. A leak raises the floor; memory that waits for
 * reclamation for a while, or that the C allocator keeps, makes peaks that
 * come and go. "flat" when the floor rose by no more than RSS_SLACK_MIB,
 * "GROWTH" otherwise; the peak, the Theil-Sen slope (the median of the
 * slopes between every two samples) and the growth after the first second
 * (the figure DESIGN.md sets a target for) are printed beside it. The exit
 * status is 0 only for flat, balanced and error-free.
 *
 * With --count, the library allocates through a counting allocator and a
 * column shows the bytes it holds: memory waiting for reclamation shows
 * there, memory the C allocator keeps after a free does not. (This
 * bypasses the library's per-thread block cache.)
 *
 *   cv_soak [--count] [--hot] [seconds]    default 20
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime */
#include <ctxvars.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NVARS 16
#define MAILBOX 16
#define RSS_SLACK_MIB 1.0
#define MAX_SECONDS 86400

static cv_var_t *vars[NVARS];
static atomic_bool stop;
static _Atomic(cv_context_t *) setter_ctx;
static atomic_long n_set_reset, n_copies, n_handoffs, n_threads, n_errors;
static atomic_long retains, releases;

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

static atomic_long live_bytes;
static bool counting;

static void *counting_alloc(size_t size, void *data)
{
    (void)data;
    size_t *block = malloc(sizeof(max_align_t) + size);
    if (!block)
        return NULL;
    *block = size;
    atomic_fetch_add_explicit(&live_bytes, (long)size, memory_order_relaxed);
    return (char *)block + sizeof(max_align_t);
}

static void counting_free(void *ptr, size_t size, void *data)
{
    (void)data;
    atomic_fetch_sub_explicit(&live_bytes, (long)size, memory_order_relaxed);
    free((char *)ptr - sizeof(max_align_t));
}

static void *value(int var, uint64_t n)
{
    return (void *)(uintptr_t)((n << 8) | ((uint64_t)var << 2) | 2u);
}

static void expect(bool ok)
{
    if (!ok)
        atomic_fetch_add(&n_errors, 1);
}

/* Counters are published in chunks so the hot loops stay thread-private. */
#define CHUNK 1024

static void *setter(void *arg)
{
    (void)arg;
    cv_context_t *ctx = cv_context_new();
    expect(ctx && cv_context_enter(ctx) == CV_OK);
    for (int k = 0; k < NVARS; k++)
        expect(cv_set(vars[k], value(k, 0), NULL) == CV_OK);
    atomic_store(&setter_ctx, ctx);
    uint64_t n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int i = 0; i < CHUNK; i++) {
            int k = (int)(n % NVARS);
            cv_token_t tok;
            expect(cv_set(vars[k], value(k, ++n), &tok) == CV_OK);
            expect(cv_reset(vars[k], &tok) == CV_OK);
        }
        atomic_fetch_add_explicit(&n_set_reset, CHUNK, memory_order_relaxed);
    }
    expect(cv_context_exit(ctx) == CV_OK);
    return ctx; /* released by main once the copier is done with it */
}

static bool hot;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *copier(void *arg)
{
    (void)arg;
    cv_context_t *shared = atomic_load(&setter_ctx);
    expect(cv_set(vars[0], value(0, 1), NULL) == CV_OK);
    double next_foreign = now();
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        for (int i = 0; i < CHUNK; i++) {
            bool foreign = hot ? i % 64 == 0 : i == 0 && now() >= next_foreign;
            if (foreign && !hot)
                next_foreign += 0.001;
            cv_context_t *copy = foreign ? cv_context_copy(shared) : cv_copy_context();
            expect(copy != NULL);
            cv_context_release(copy);
        }
        atomic_fetch_add_explicit(&n_copies, CHUNK, memory_order_relaxed);
    }
    return NULL;
}

static pthread_mutex_t mailbox_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mailbox_cond = PTHREAD_COND_INITIALIZER;
static cv_context_t *mailbox[MAILBOX];
static int mailbox_count;

static void *child(void *arg)
{
    (void)arg;
    expect(cv_get_or(vars[1], NULL) != NULL);
    expect(cv_set(vars[2], value(2, 1), NULL) == CV_OK);
    atomic_fetch_add(&n_threads, 1);
    return NULL;
}

static void *producer(void *arg)
{
    (void)arg;
    uint64_t n = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        cv_context_t *ctx = cv_context_new();
        expect(ctx && cv_context_enter(ctx) == CV_OK);
        expect(cv_set(vars[1], value(1, ++n), NULL) == CV_OK);
        cv_context_t *snapshot = cv_copy_context();
        if (n % 256 == 0) {
            pthread_t t;
            expect(cv_thread_create(&t, NULL, child, NULL) == 0);
            pthread_join(t, NULL);
        }
        expect(cv_context_exit(ctx) == CV_OK);
        cv_context_release(ctx);
        pthread_mutex_lock(&mailbox_lock);
        while (mailbox_count == MAILBOX && !atomic_load(&stop))
            pthread_cond_wait(&mailbox_cond, &mailbox_lock);
        if (mailbox_count < MAILBOX) {
            mailbox[mailbox_count++] = snapshot;
            snapshot = NULL;
        }
        pthread_cond_broadcast(&mailbox_cond);
        pthread_mutex_unlock(&mailbox_lock);
        cv_context_release(snapshot);
    }
    return NULL;
}

static void set_in_snapshot(void *arg)
{
    expect(cv_get_or(vars[1], NULL) != NULL);
    expect(cv_set(vars[3], arg, NULL) == CV_OK);
}

static void *consumer(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mailbox_lock);
        while (mailbox_count == 0 && !atomic_load(&stop))
            pthread_cond_wait(&mailbox_cond, &mailbox_lock);
        cv_context_t *snapshot = mailbox_count ? mailbox[--mailbox_count] : NULL;
        pthread_cond_broadcast(&mailbox_cond);
        pthread_mutex_unlock(&mailbox_lock);
        if (!snapshot)
            return NULL;
        expect(cv_context_run(snapshot, set_in_snapshot, value(3, 1)) == CV_OK);
        cv_context_release(snapshot);
        atomic_fetch_add_explicit(&n_handoffs, 1, memory_order_relaxed);
    }
}

static double rss_mib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of the slopes between every two samples, in MiB per second. */
static double theil_sen(const double *rss, int first, int last)
{
    int n = last - first + 1;
    if (n < 2)
        return 0;
    double *slopes = malloc(sizeof(double) * (size_t)n * (size_t)(n - 1) / 2);
    if (!slopes)
        return 0;
    size_t count = 0;
    for (int i = first; i <= last; i++)
        for (int j = i + 1; j <= last; j++)
            slopes[count++] = (rss[j] - rss[i]) / (j - i);
    qsort(slopes, count, sizeof(double), compare_doubles);
    double median = count % 2 ? slopes[count / 2] : (slopes[count / 2 - 1] + slopes[count / 2]) / 2;
    free(slopes);
    return median;
}

int main(int argc, char **argv)
{
    int seconds = 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0)
            counting = true;
        else if (strcmp(argv[i], "--hot") == 0)
            hot = true;
        else
            seconds = atoi(argv[i]);
    }
    if (seconds < 4 || seconds > MAX_SECONDS) {
        fprintf(stderr, "usage: %s [--count] [--hot] [seconds: 4..%d]\n", argv[0], MAX_SECONDS);
        return 2;
    }
    if (counting &&
        cv_set_allocator(&(cv_allocator_t){counting_alloc, counting_free, NULL}) != CV_OK) {
        fprintf(stderr, "cv_set_allocator failed\n");
        return 1;
    }
    for (int k = 0; k < NVARS; k++)
        vars[k] =
            cv_var_new("soak", &(cv_var_opts_t){.retain = hook_retain, .release = hook_release});

    pthread_t t_setter, t_copier, t_producer, t_consumer;
    pthread_create(&t_setter, NULL, setter, NULL);
    while (!atomic_load(&setter_ctx))
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    pthread_create(&t_copier, NULL, copier, NULL);
    pthread_create(&t_producer, NULL, producer, NULL);
    pthread_create(&t_consumer, NULL, consumer, NULL);

    double *rss = calloc((size_t)seconds + 1, sizeof(double));
    if (!rss)
        return 1;
    int warmup = seconds / 4 > 2 ? seconds / 4 : 2;
    double start = now();
    printf("%5s %9s %s%14s %12s %10s %8s\n", "t(s)", "RSS(MiB)", counting ? " lib(MiB)" : "",
           "set/reset", "copies", "handoffs", "threads");
    for (int t = 1; t <= seconds; t++) {
        double delay = start + t - now();
        if (delay > 0)
            nanosleep(&(struct timespec){(time_t)delay, (long)((delay - (time_t)delay) * 1e9)},
                      NULL);
        rss[t] = rss_mib();
        printf("%5d %9.2f ", t, rss[t]);
        if (counting)
            printf("%9.2f", (double)atomic_load(&live_bytes) / 1048576.0);
        printf("%14ld %12ld %10ld %8ld\n", atomic_load(&n_set_reset), atomic_load(&n_copies),
               atomic_load(&n_handoffs), atomic_load(&n_threads));
        fflush(stdout);
    }

    atomic_store(&stop, true);
    pthread_mutex_lock(&mailbox_lock);
    pthread_cond_broadcast(&mailbox_cond);
    pthread_mutex_unlock(&mailbox_lock);
    void *ctx;
    pthread_join(t_setter, &ctx);
    pthread_join(t_copier, NULL);
    pthread_join(t_producer, NULL);
    pthread_join(t_consumer, NULL);
    cv_context_release(ctx);
    while (mailbox_count)
        cv_context_release(mailbox[--mailbox_count]);
    for (int k = 0; k < NVARS; k++)
        cv_var_release(vars[k]);
    cv_reclaim_barrier();

    double peak = 0, peak_after_first = 0;
    for (int t = 1; t <= seconds; t++) {
        if (rss[t] > peak)
            peak = rss[t];
        if (t > 1 && rss[t] - rss[1] > peak_after_first)
            peak_after_first = rss[t] - rss[1];
    }
    int middle = warmup + (seconds - warmup) / 2;
    double floor_first = peak, floor_second = peak;
    for (int t = warmup; t <= seconds; t++) {
        if (t < middle && rss[t] < floor_first)
            floor_first = rss[t];
        if (t >= middle && rss[t] < floor_second)
            floor_second = rss[t];
    }
    double floor_growth = floor_second - floor_first;
    double slope = theil_sen(rss, warmup, seconds);
    bool flat = floor_growth <= RSS_SLACK_MIB;
    bool balanced = atomic_load(&retains) == atomic_load(&releases);
    long errors = atomic_load(&n_errors);
    printf("load: %s; %.1f M set/reset pairs, %.1f M copies, %ld hand-offs, %ld threads\n",
           hot ? "hot (the written context copied every ~1 us)"
               : "reference (the written context copied every ~1 ms)",
           atomic_load(&n_set_reset) / 1e6, atomic_load(&n_copies) / 1e6, atomic_load(&n_handoffs),
           atomic_load(&n_threads));
    printf("floor after the %d s warm-up: %.2f MiB, then %.2f MiB (%+.2f MiB, slack %.1f); "
           "slope %+.3f MiB/s\n",
           warmup, floor_first, floor_second, floor_growth, RSS_SLACK_MIB, slope);
    printf("RSS at 1 s %.2f MiB, at the end %.2f MiB, peak %.2f MiB (%.2f MiB above 1 s)\n", rss[1],
           rss[seconds], peak, peak_after_first);
    if (counting)
        printf("library memory after the barrier: %ld bytes\n", atomic_load(&live_bytes));
    printf("value hooks: %ld retains, %ld releases (%s); failed calls: %ld\n",
           atomic_load(&retains), atomic_load(&releases), balanced ? "balanced" : "UNBALANCED",
           errors);
    printf("verdict: %s\n", !flat ? "GROWTH" : balanced && !errors ? "flat" : "ERRORS");
    free(rss);
    return flat && balanced && !errors ? 0 : 1;
}
