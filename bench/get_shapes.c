/*
 * Shapes of a cached get, timed against a __thread load in one process:
 * what made the header's inline get what it is (bench/HISTORY.md, "No
 * bounds check in the cached get"). Each shape is the loop the harness's
 * get row runs, written out on a stand-in for the library's layout (a
 * thread-local version and cache pointer, a per-variable index) so that
 * the shapes differ in nothing else:
 *
 *   bounded      the get until 0.2: slot < length, then entry[slot]
 *   constant     slot < a constant instead (no length load; 28472a5, 4bbcc95)
 *   unbounded    entry[slot] with no check (every cache covers every slot)
 *   byte_offset  unbounded, with the slot stored pre-multiplied (the get now)
 *
 *   get_shapes [gets]    prints each shape's time per get / a __thread load's
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime in -std=c11 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct entry {
    uint64_t version;
    void *value;
};

struct lookup {
    uint64_t version;
    struct entry *cache;
    uint32_t length;
};

struct variable {
    uint32_t hash;
    uint32_t slot_or_offset;
};

static __thread struct lookup state __attribute__((tls_model("initial-exec")));
static __thread void *plain __attribute__((tls_model("initial-exec")));

/* As the harness's keep(): the value in a register, memory clobbered. */
#define KEEP(v) __asm__ volatile("" : : "r"(v) : "memory")
#define SHAPE __attribute__((noinline, aligned(64))) static void

SHAPE thread_local_load(const struct variable *var, long n)
{
    (void)var;
    for (long i = 0; i < n; i++)
        KEEP(plain);
}

SHAPE bounded(const struct variable *var, long n)
{
    for (long i = 0; i < n; i++) {
        const struct lookup *l = &state;
        void *v = NULL;
        if (__builtin_expect(var->slot_or_offset < l->length, 1)) {
            const struct entry *e = &l->cache[var->slot_or_offset];
            if (__builtin_expect(e->version == l->version, 1))
                v = e->value;
        }
        KEEP(v);
    }
}

SHAPE constant(const struct variable *var, long n)
{
    for (long i = 0; i < n; i++) {
        const struct lookup *l = &state;
        void *v = NULL;
        if (__builtin_expect(var->slot_or_offset < 64, 1)) {
            const struct entry *e = &l->cache[var->slot_or_offset];
            if (__builtin_expect(e->version == l->version, 1))
                v = e->value;
        }
        KEEP(v);
    }
}

SHAPE unbounded(const struct variable *var, long n)
{
    for (long i = 0; i < n; i++) {
        const struct lookup *l = &state;
        void *v = NULL;
        const struct entry *e = &l->cache[var->slot_or_offset];
        if (__builtin_expect(e->version == l->version, 1))
            v = e->value;
        KEEP(v);
    }
}

SHAPE byte_offset(const struct variable *var, long n)
{
    for (long i = 0; i < n; i++) {
        const struct lookup *l = &state;
        void *v = NULL;
        const struct entry *e =
            (const struct entry *)(const void *)((const char *)l->cache + var->slot_or_offset);
        if (__builtin_expect(e->version == l->version, 1))
            v = e->value;
        KEEP(v);
    }
}

static double seconds(void (*shape)(const struct variable *, long), const struct variable *var,
                      long n)
{
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    shape(var, n);
    clock_gettime(CLOCK_MONOTONIC, &end);
    return (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) * 1e-9;
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { SHAPES = 4, ROUNDS = 7 };

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000000L;
    static struct entry entries[64];
    enum { SLOT = 3 };
    state = (struct lookup){.version = 7, .cache = entries, .length = 64};
    entries[SLOT] = (struct entry){7, &entries[SLOT]};
    plain = &entries[SLOT];
    const struct variable by_slot = {0, SLOT};
    const struct variable by_offset = {0, SLOT * (uint32_t)sizeof(struct entry)};
    static const char *names[SHAPES] = {"bounded", "constant", "unbounded", "byte_offset"};
    double ratio[SHAPES][ROUNDS];
    /* Each round times the __thread load right before the shapes, so that a
     * busy neighbour slows both sides of a ratio alike; the median of the
     * rounds drops the rounds it did not. */
    for (int round = 0; round < ROUNDS; round++) {
        double base = seconds(thread_local_load, &by_slot, n);
        ratio[0][round] = seconds(bounded, &by_slot, n) / base;
        ratio[1][round] = seconds(constant, &by_slot, n) / base;
        ratio[2][round] = seconds(unbounded, &by_slot, n) / base;
        ratio[3][round] = seconds(byte_offset, &by_offset, n) / base;
    }
    printf("time per get / __thread load: median, min and max of %d rounds of %ld gets\n", ROUNDS,
           n);
    for (int shape = 0; shape < SHAPES; shape++) {
        qsort(ratio[shape], ROUNDS, sizeof(double), by_value);
        printf("%-12s %5.2fx  (%.2fx to %.2fx)\n", names[shape], ratio[shape][ROUNDS / 2],
               ratio[shape][0], ratio[shape][ROUNDS - 1]);
    }
    return 0;
}
