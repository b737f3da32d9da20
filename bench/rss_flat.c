/*
 * Resident memory over long runs of set/reset and copy/release pairs: the
 * library frees what it replaces (at once, or after an RCU grace period),
 * so the resident set must stay flat after the first second.
 *
 * Phases, each in its own fresh context of 16 variables, in this order:
 *   set_reset         cv_set + cv_reset of one variable, --pairs times
 *                     (default 10^8): the update-in-place path;
 *   copy_release      cv_copy_context + cv_context_release, --copies times
 *                     (default 10^7);
 *   set_reset_shared  set/reset pairs while another thread copies the
 *                     context every millisecond, --shared-pairs times
 *                     (default 5 x 10^7): every set copies a path and the
 *                     replaced nodes go through RCU reclamation, whose
 *                     backlog fills in the first few tenths of a second:
 *                     the phase runs past the 1 s baseline, since a
 *                     baseline taken at 20% of a shorter phase falls in
 *                     that rise (10^7 pairs took 0.6 s with jemalloc, and
 *                     read +2.6 MiB of growth that 10^8 pairs, baselined
 *                     at 1 s, did not show). After it the backlog still
 *                     moves the readings by a few MiB either way, which
 *                     the report allows for. Last, because whatever it
 *                     grows stays in the allocator and would blur the
 *                     readings of a phase after it.
 * Each phase stops early after --max-seconds (default 60; the shared
 * phase after --shared-max-seconds, default the same) and says so.
 *
 * Resident memory is read from /proc/self/statm. The baseline is the
 * reading at 1 s into a phase (for a phase shorter than that, the reading
 * at 20% of its operations); growth is the last reading minus the
 * baseline. Output: a human summary on stdout and, with --json, the
 * numbers and a time series for the report's plot.
 *
 *   rss_flat [--pairs N] [--shared-pairs N] [--copies N] [--max-seconds S]
 *            [--shared-max-seconds S] [--json PATH]
 */
#define _GNU_SOURCE
#include <ctxvars.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CHECK_EVERY 65536 /* operations between clock and RSS readings */

#ifdef CV_BENCH_JEMALLOC
/* jemalloc keeps freed pages resident for up to 10 s by default before it
 * gives them back: over 6 x 10^8 observed pairs its resident set swung
 * between 8.9 and 28.6 MiB (up, then down at each purge), while glibc's
 * stayed between 1.7 and 7.6 MiB. The readings showed jemalloc's purge
 * schedule, not what the program holds. Returned at once, the same pairs
 * stayed within 4.3 to 4.8 MiB. Read by jemalloc at start-up. */
const char *malloc_conf = "dirty_decay_ms:0,muzzy_decay_ms:0";
#endif

#define MAX_POINTS 400

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rss_kib(void)
{
    long pages_total = 0, pages_resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2)
        pages_resident = -1;
    fclose(f);
    return pages_resident < 0 ? -1 : pages_resident * (sysconf(_SC_PAGESIZE) / 1024);
}

struct phase {
    const char *name;
    unsigned long long planned, done;
    double seconds;
    long rss_start, rss_baseline, rss_end, rss_max;
    double baseline_at;
    long rss_at_fifth; /* fallback baseline for phases under a second */
    double fifth_at;
    int stopped_early;
    int points;
    double t[MAX_POINTS];
    long rss[MAX_POINTS];
};

static cv_var_t *vars[16];

static void fill(void *arg)
{
    (void)arg;
    for (int i = 0; i < 16; i++)
        cv_set(vars[i], (void *)(uintptr_t)(i + 1), NULL);
}

static cv_context_t *fresh_context(void)
{
    cv_context_t *ctx = cv_context_new();
    if (!ctx || cv_context_run(ctx, fill, NULL) != CV_OK) {
        fprintf(stderr, "cannot build a context\n");
        exit(1);
    }
    return ctx;
}

/* The other thread of set_reset_shared. */
static _Atomic int observer_stop;
static void *observer(void *arg)
{
    cv_context_t *ctx = arg;
    while (!atomic_load(&observer_stop)) {
        cv_context_t *copy = cv_context_copy(ctx);
        cv_context_release(copy);
        usleep(1000);
    }
    return NULL;
}

enum op { OP_SET_RESET, OP_COPY_RELEASE };

static void run_phase(struct phase *p, enum op op, double max_seconds)
{
    cv_var_t *var = vars[0];
    unsigned long long baseline_ops = p->planned / 5;
    double t0 = now(), next_point = 0;
    double point_step = max_seconds / (MAX_POINTS / 2.0);
    p->rss_start = p->rss_max = rss_kib();
    p->rss_baseline = -1;
    p->rss_at_fifth = -1;
    p->points = 0;
    unsigned long long i = 0;
    while (i < p->planned) {
        unsigned long long chunk = p->planned - i < CHECK_EVERY ? p->planned - i : CHECK_EVERY;
        if (op == OP_SET_RESET) {
            for (unsigned long long k = 0; k < chunk; k++) {
                cv_token_t token;
                if (cv_set(var, (void *)(uintptr_t)(k + 100), &token) != CV_OK ||
                    cv_reset(var, &token) != CV_OK) {
                    fprintf(stderr, "cv_set/cv_reset failed\n");
                    exit(1);
                }
            }
        } else {
            for (unsigned long long k = 0; k < chunk; k++) {
                cv_context_t *copy = cv_copy_context();
                if (!copy) {
                    fprintf(stderr, "cv_copy_context failed\n");
                    exit(1);
                }
                cv_context_release(copy);
            }
        }
        i += chunk;
        double t = now() - t0;
        long rss = rss_kib();
        if (p->rss_at_fifth < 0 && i >= baseline_ops) {
            p->rss_at_fifth = rss;
            p->fifth_at = t;
        }
        if (p->rss_baseline < 0 && t >= 1.0) {
            p->rss_baseline = rss;
            p->baseline_at = t;
        }
        if (rss > p->rss_max)
            p->rss_max = rss;
        if (t >= next_point && p->points < MAX_POINTS) {
            p->t[p->points] = t;
            p->rss[p->points++] = rss;
            next_point = t + point_step;
        }
        if (t > max_seconds && i < p->planned) {
            p->stopped_early = 1;
            break;
        }
    }
    p->done = i;
    p->seconds = now() - t0;
    p->rss_end = rss_kib();
    if (p->rss_baseline < 0) {
        p->rss_baseline = p->rss_at_fifth >= 0 ? p->rss_at_fifth : p->rss_end;
        p->baseline_at = p->rss_at_fifth >= 0 ? p->fifth_at : p->seconds;
    }
    if (p->points < MAX_POINTS) {
        p->t[p->points] = p->seconds;
        p->rss[p->points++] = p->rss_end;
    }
    printf(
        "%-17s %12llu of %12llu ops in %6.2f s (%6.1f ns/op)  RSS KiB: start %ld, at %.2f s %ld, "
        "end %ld, max %ld, growth %+ld%s\n",
        p->name, p->done, p->planned, p->seconds,
        p->seconds * 1e9 / (double)(p->done ? p->done : 1), p->rss_start, p->baseline_at,
        p->rss_baseline, p->rss_end, p->rss_max, p->rss_end - p->rss_baseline,
        p->stopped_early ? "  [stopped early: time budget]" : "");
    fflush(stdout);
}

static void write_phase(FILE *f, const struct phase *p, int last)
{
    fprintf(
        f,
        "  \"%s\": {\"planned\": %llu, \"done\": %llu, \"seconds\": %.3f, \"stopped_early\": %s, "
        "\"rss_start_kib\": %ld, \"rss_baseline_kib\": %ld, \"baseline_at_s\": %.3f, "
        "\"rss_end_kib\": %ld, \"rss_max_kib\": %ld, \"series\": [",
        p->name, p->planned, p->done, p->seconds, p->stopped_early ? "true" : "false", p->rss_start,
        p->rss_baseline, p->baseline_at, p->rss_end, p->rss_max);
    for (int i = 0; i < p->points; i++)
        fprintf(f, "%s[%.3f, %ld]", i ? ", " : "", p->t[i], p->rss[i]);
    fprintf(f, "]}%s\n", last ? "" : ",");
}

int main(int argc, char **argv)
{
    static struct phase phases[3] = {{.name = "set_reset", .planned = 100000000ull},
                                     {.name = "copy_release", .planned = 10000000ull},
                                     {.name = "set_reset_shared", .planned = 50000000ull}};
    struct phase *set_reset = &phases[0], *copy_release = &phases[1], *shared = &phases[2];
    double max_seconds = 60, shared_max_seconds = -1;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--pairs") && i + 1 < argc)
            set_reset->planned = (unsigned long long)strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--shared-pairs") && i + 1 < argc)
            shared->planned = (unsigned long long)strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--copies") && i + 1 < argc)
            copy_release->planned = (unsigned long long)strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--max-seconds") && i + 1 < argc)
            max_seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--shared-max-seconds") && i + 1 < argc)
            shared_max_seconds = strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--pairs N] [--shared-pairs N] [--copies N] [--max-seconds S] "
                    "[--shared-max-seconds S] [--json PATH]\n",
                    argv[0]);
            return 2;
        }
    }
    if (shared_max_seconds < 0)
        shared_max_seconds = max_seconds;
    for (int i = 0; i < 16; i++)
        if (!(vars[i] = cv_var_new("v", NULL)))
            return fprintf(stderr, "cv_var_new failed\n"), 1;

    cv_context_t *ctx = fresh_context();
    cv_context_enter(ctx);
    run_phase(set_reset, OP_SET_RESET, max_seconds);
    cv_context_exit(ctx);
    cv_context_release(ctx);

    ctx = fresh_context();
    cv_context_enter(ctx);
    run_phase(copy_release, OP_COPY_RELEASE, max_seconds);
    cv_context_exit(ctx);
    cv_context_release(ctx);

    ctx = fresh_context();
    cv_context_enter(ctx);
    pthread_t thread;
    atomic_store(&observer_stop, 0);
    if (pthread_create(&thread, NULL, observer, ctx))
        return fprintf(stderr, "pthread_create failed\n"), 1;
    run_phase(shared, OP_SET_RESET, shared_max_seconds);
    atomic_store(&observer_stop, 1);
    pthread_join(thread, NULL);
    cv_context_exit(ctx);
    cv_context_release(ctx);

    cv_reclaim_barrier();
    printf("after all phases and a reclamation barrier: RSS %ld KiB\n", rss_kib());
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f)
            return perror(json), 1;
        fprintf(f, "{\n");
        for (int i = 0; i < 3; i++)
            write_phase(f, &phases[i], i == 2);
        fprintf(f, "}\n");
        fclose(f);
    }
    return 0;
}
