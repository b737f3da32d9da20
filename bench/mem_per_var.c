/*
 * Bytes per variable in a context of many variables (default 100,000).
 *
 * A separate program because the counting allocator must be installed
 * with cv_set_allocator before any other call of the library. The
 * allocator counts the bytes the library asks for and, through
 * malloc_usable_size (glibc and jemalloc both have it), the bytes the
 * process allocator really hands out.
 *
 * Method: build one context holding all N variables first. That also
 * fills this thread's lookup cache, which is per thread, not per context.
 * Then build a second context with the same N variables and count what
 * that one adds: the map alone, bytes per variable = added / N. Deferred
 * frees are waited for (cv_reclaim_barrier) before each reading. The
 * lookup cache is mapped from the kernel, not allocated, so it is read as
 * the resident size of its mapping (/proc/self/smaps).
 *
 *   mem_per_var [--vars N] [--json PATH]
 */
#define _GNU_SOURCE
#include <ctxvars.h>

#include <malloc.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Atomic: frees after a grace period run on liburcu's call_rcu thread. */
static _Atomic long long live_requested, live_usable, allocations;

static void *count_alloc(size_t size, void *data)
{
    (void)data;
    void *p = malloc(size);
    if (p) {
        atomic_fetch_add(&live_requested, (long long)size);
        atomic_fetch_add(&live_usable, (long long)malloc_usable_size(p));
        atomic_fetch_add(&allocations, 1);
    }
    return p;
}

static void count_free(void *p, size_t size, void *data)
{
    (void)data;
    if (!p)
        return;
    atomic_fetch_sub(&live_requested, (long long)size);
    atomic_fetch_sub(&live_usable, (long long)malloc_usable_size(p));
    atomic_fetch_sub(&allocations, 1);
    free(p);
}

struct snapshot {
    long long requested, usable, blocks;
};

static struct snapshot take(void)
{
    cv_reclaim_barrier();
    return (struct snapshot){atomic_load(&live_requested), atomic_load(&live_usable),
                             atomic_load(&allocations)};
}

/* The resident bytes of the mapping that holds `address`, or -1. */
static long long resident_bytes_at(const void *address)
{
    FILE *smaps = fopen("/proc/self/smaps", "r");
    if (!smaps)
        return -1;
    char line[512];
    bool inside = false;
    long long resident = -1;
    while (resident < 0 && fgets(line, sizeof(line), smaps)) {
        unsigned long start, end;
        long long kib;
        if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
            inside = (uintptr_t)address >= start && (uintptr_t)address < end;
        else if (inside && sscanf(line, "Rss: %lld kB", &kib) == 1)
            resident = kib * 1024;
    }
    fclose(smaps);
    return resident;
}

struct fill_args {
    cv_var_t **vars;
    size_t n;
    int failed;
};

static void fill(void *arg)
{
    struct fill_args *a = arg;
    for (size_t i = 0; i < a->n; i++)
        if (cv_set(a->vars[i], (void *)(i + 1), NULL) != CV_OK)
            a->failed = 1;
}

int main(int argc, char **argv)
{
    size_t n = 100000;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vars") && i + 1 < argc)
            n = (size_t)strtod(argv[++i], NULL);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--vars N] [--json PATH]\n", argv[0]);
            return 2;
        }
    }
    if (n == 0)
        n = 1;
    cv_allocator_t counting = {count_alloc, count_free, NULL};
    if (cv_set_allocator(&counting) != CV_OK) {
        fprintf(stderr, "cv_set_allocator failed\n");
        return 1;
    }

    struct snapshot s0 = take();
    cv_var_t **vars = malloc(n * sizeof(*vars)); /* the harness's own array: not counted */
    for (size_t i = 0; i < n; i++)
        if (!(vars[i] = cv_var_new("v", NULL))) {
            fprintf(stderr, "cv_var_new failed\n");
            return 1;
        }
    struct snapshot s1 = take();

    struct fill_args args = {vars, n, 0};
    cv_context_t *first = cv_context_new();
    if (!first || cv_context_run(first, fill, &args) != CV_OK || args.failed)
        return fprintf(stderr, "filling the first context failed\n"), 1;
    struct snapshot s2 = take();

    cv_context_t *second = cv_context_new();
    if (!second || cv_context_run(second, fill, &args) != CV_OK || args.failed)
        return fprintf(stderr, "filling the second context failed\n"), 1;
    struct snapshot s3 = take();
    if (cv_context_len(second) != n)
        return fprintf(stderr, "the context holds %zu variables, not %zu\n", cv_context_len(second),
                       n),
               1;

    double map_req = (double)(s3.requested - s2.requested) / (double)n;
    double map_use = (double)(s3.usable - s2.usable) / (double)n;
    double var_req = (double)(s1.requested - s0.requested) / (double)n;
    double var_use = (double)(s1.usable - s0.usable) / (double)n;
    /* Not API: the header's private lookup state says where this thread's
     * cache is. */
    long long cache_resident = resident_bytes_at(cv_private_lookup_state.cache);
    if (cache_resident < 0)
        return fprintf(stderr, "the lookup cache's mapping was not found\n"), 1;
    double cache_bytes = (double)cache_resident / (double)n;

    printf("context of %zu variables:\n", n);
    printf("  map:            %7.1f bytes/variable requested, %7.1f bytes/variable from malloc "
           "(usable size), %lld blocks\n",
           map_req, map_use, s3.blocks - s2.blocks);
    printf("  variable object:%7.1f bytes requested, %7.1f from malloc (once per variable, shared "
           "by all contexts)\n",
           var_req, var_use);
    printf("  thread cache:   %7.1f bytes/variable resident (per thread that uses the variables; "
           "mapped, not allocated)\n",
           cache_bytes);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f)
            return perror(json), 1;
        fprintf(f,
                "{\"vars\": %zu, \"map_bytes_per_var_requested\": %.2f, "
                "\"map_bytes_per_var_usable\": %.2f, \"map_blocks\": %lld, "
                "\"var_bytes_requested\": %.2f, \"var_bytes_usable\": %.2f, "
                "\"thread_cache_bytes_per_var\": %.2f}\n",
                n, map_req, map_use, s3.blocks - s2.blocks, var_req, var_use, cache_bytes);
        fclose(f);
    }
    cv_context_release(first);
    cv_context_release(second);
    for (size_t i = 0; i < n; i++)
        cv_var_release(vars[i]);
    free(vars);
    return 0;
}
