/*
 * Spread reference counts.
 *
 * A root's count is one atomic word (hamt.h). When every request copies one
 * base context, every copy and every release of a copy is an atomic add on
 * that word from another core, and its cache line travels with each: two
 * threads copying one context took 2.8 times as long per copy as one.
 *
 * So a root whose copiers collide (a retain that loses its compare-and-swap
 * to another thread's) gets shards: one signed counter per CPU, each on
 * lines of its own. While the spread is live, a copy takes its reference on
 * its CPU's shard and a release drops one on its CPU's shard (a reference
 * may be taken on one shard and dropped on another, or on the word). The
 * word carries SPREAD_BIAS meanwhile, so it never reaches zero and never
 * reads as a sole owner's while the true count lies spread out: the true
 * count is the word, less the bias, plus the shards' sum.
 *
 * The spread ends when the base context gives the root up: when it is
 * released or claimed (a context nobody has entered never changes). Until
 * then the base holds a reference, so a live spread's true count is never
 * zero and nobody needs the sum. Ending takes every shard with an exchange
 * (the fold), leaving far below zero what a later operation's fetch-and-add
 * finds, so that it goes to the word instead; the shards' sum, less the
 * bias, then goes into the word in one add. The count is exact again, and
 * the root dies through it as any other: whichever add brings it to zero
 * (the fold's or a release's) retires it.
 *
 * The spread stays with the node until the node is disposed of: a reader
 * may find it, closed, at any time before.
 */
#define _GNU_SOURCE /* sched_getcpu, sysconf's _SC_NPROCESSORS_CONF */
#include "spread.h"

#include "alloc.h"
#include "reclaim.h" /* cvi_retire */
#include "testing.h"

#include <sched.h>
#include <stdint.h>
#include <unistd.h>
#if __has_include(<sys/rseq.h>) /* glibc 2.35 and later */
#include <sys/rseq.h>
#define CV_HAVE_RSEQ_AREA 1
#endif

/* Two lines: x86 cores fetch lines in adjacent pairs. */
#define CACHE_LINE 128
#define MAX_SLOTS 64
/* Far above any true count a root can have, and far below the word's end. */
#define SPREAD_BIAS (1u << 30)

struct shard {
    _Atomic int64_t count;
    char pad[CACHE_LINE - sizeof(int64_t)];
};

struct cvi_spread {
    cvi_hamt_node *node;
    void (*dispose)(void *node);
    atomic_bool ending;
    unsigned slot_mask;
    void *memory; /* as allocated, with its size */
    size_t size;
    struct shard *shards;
};

/* Shards per spread: the CPUs, rounded up to a power of two, at most
 * MAX_SLOTS; 0 on one CPU, where nothing bounces. Relaxed: every thread
 * computes the same value. */
static atomic_uint slots_per_spread = UINT32_MAX;

static unsigned slots(void)
{
    unsigned slots = atomic_load_explicit(&slots_per_spread, memory_order_relaxed);
    if (slots != UINT32_MAX)
        return slots;
    long cpus = sysconf(_SC_NPROCESSORS_CONF);
    slots = 1;
    while (slots < MAX_SLOTS && slots < cpus)
        slots *= 2;
    if (cpus <= 1)
        slots = 0;
    atomic_store_explicit(&slots_per_spread, slots, memory_order_relaxed);
    return slots;
}

/* The CPU we run on, from the rseq area that glibc registers for every
 * thread (a load, where sched_getcpu is a call into the vDSO); negative if
 * unknown. A thread that migrates meanwhile still counts correctly, on
 * another CPU's shard. */
static int current_cpu(void)
{
#ifdef CV_HAVE_RSEQ_AREA
    if (__rseq_size != 0) {
        const struct rseq *area =
            (const struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
        /* Relaxed: the kernel updates it; any recent value will do. */
        return (int)atomic_load_explicit((const _Atomic uint32_t *)&area->cpu_id,
                                         memory_order_relaxed);
    }
#endif
    return sched_getcpu();
}

static struct shard *my_shard(struct cvi_spread *spread)
{
    int cpu = current_cpu();
    return &spread->shards[(unsigned)(cpu < 0 ? 0 : cpu) & spread->slot_mask];
}

static atomic_long spreads_allocated;

long cv_testing_spreads(void)
{
    return atomic_load_explicit(&spreads_allocated, memory_order_relaxed);
}

static struct cvi_spread *spread_of(const cvi_hamt_node *node)
{
    /* Acquire: pairs with the release in cvi_spread_begin, so the shards are
     * seen initialised. */
    return atomic_load_explicit(&cvi_hamt_const_head(node)->attachment, memory_order_acquire);
}

/* A shard the fold has taken holds SHARD_CLOSED plus whatever late
 * operations added: far below any count (and far above the wrap to the
 * largest), so they see it closed and go to the word, and nothing reads
 * the shard again. */
#define SHARD_CLOSED (INT64_MIN / 2)
#define SHARD_OPEN_MIN (INT64_MIN / 4)

/* Adds `step` to the caller's shard; false if the fold has taken it. */
static bool shard_add(struct cvi_spread *spread, int64_t step, memory_order order)
{
    return atomic_fetch_add_explicit(&my_shard(spread)->count, step, order) >= SHARD_OPEN_MIN;
}

/* Takes every shard, so that no operation can change it any more, and
 * adds their sum to the word, less the bias: the count is exact again. */
static void fold(struct cvi_spread *spread)
{
    int64_t sum = 0;
    /* Acquire: pairs with the release of each decrement, so every holder's
     * use of the node happens before whoever finds the count at zero. */
    for (unsigned i = 0; i <= spread->slot_mask; i++)
        sum +=
            atomic_exchange_explicit(&spread->shards[i].count, SHARD_CLOSED, memory_order_acquire);
    unsigned delta = (unsigned)sum - SPREAD_BIAS;
    /* Acq_rel: as any release of the count; the last one disposes. */
    unsigned before =
        atomic_fetch_add_explicit(&cvi_hamt_head(spread->node)->refs, delta, memory_order_acq_rel);
    if (before + delta == 0)
        cvi_retire(spread->node, spread->dispose);
}

struct cvi_spread *cvi_spread_begin(cvi_hamt_node *root, void (*dispose)(void *node))
{
    unsigned count = slots();
    if (!count || cvi_spread_attached(root))
        return NULL;
    /* The header and each shard on lines of their own, away from whatever
     * the allocator puts next to them, which other threads may be writing:
     * room to align, the header's line, the shards', one spare after. */
    _Static_assert(sizeof(struct cvi_spread) <= CACHE_LINE, "the header fills one line");
    size_t size = (count + 3) * CACHE_LINE;
    void *memory = cvi_alloc(size);
    if (!memory)
        return NULL;
    uintptr_t line = ((uintptr_t)memory + CACHE_LINE - 1) & ~(uintptr_t)(CACHE_LINE - 1);
    struct cvi_spread *spread = (struct cvi_spread *)line;
    spread->shards = (struct shard *)(line + CACHE_LINE);
    spread->memory = memory;
    for (unsigned i = 0; i < count; i++)
        atomic_init(&spread->shards[i].count, 0);
    spread->node = root;
    spread->dispose = dispose;
    atomic_init(&spread->ending, false);
    spread->slot_mask = count - 1;
    spread->size = size;
    cvi_hamt_mark_shared(root);
    /* Relaxed: the caller's reference keeps the node alive, and the
     * compare-and-swap below publishes the bias with the shards. */
    atomic_fetch_add_explicit(&cvi_hamt_head(root)->refs, SPREAD_BIAS, memory_order_relaxed);
    void *none = NULL;
    /* Release: whoever finds the spread on the node finds it whole. */
    if (atomic_compare_exchange_strong_explicit(&cvi_hamt_head(root)->attachment, &none, spread,
                                                memory_order_release, memory_order_relaxed)) {
        /* Relaxed: a count for the tests. */
        atomic_fetch_add_explicit(&spreads_allocated, 1, memory_order_relaxed);
        return spread;
    }
    atomic_fetch_sub_explicit(&cvi_hamt_head(root)->refs, SPREAD_BIAS, memory_order_relaxed);
    cvi_free(memory, size);
    return NULL;
}

bool cvi_spread_retain(struct cvi_spread *spread, const cvi_hamt_node *root)
{
    /* Relaxed: the root stays alive through the read-side section. */
    return spread->node == root && shard_add(spread, 1, memory_order_relaxed);
}

bool cvi_spread_release(struct cvi_spread *spread)
{
    /* Release: pairs with the fold's acquire. */
    return shard_add(spread, -1, memory_order_release);
}

bool cvi_spread_release_node(cvi_hamt_node *node)
{
    struct cvi_spread *spread = spread_of(node);
    return spread && cvi_spread_release(spread);
}

void cvi_spread_end(struct cvi_spread *spread)
{
    /* Relaxed: it only makes one caller the folder. */
    if (!atomic_exchange_explicit(&spread->ending, true, memory_order_relaxed))
        fold(spread);
}

void cvi_spread_free(cvi_hamt_node *node)
{
    struct cvi_spread *spread = spread_of(node);
    if (!spread)
        return;
    atomic_fetch_sub_explicit(&spreads_allocated, 1, memory_order_relaxed);
    cvi_free(spread->memory, spread->size);
}
