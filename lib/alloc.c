/*
 * The allocator layer.
 *
 * With the default allocator, small blocks (map nodes, contexts, batch
 * headers) go through a per-thread cache of free blocks in front of
 * malloc: a set allocates one node and frees another, and a pop or push on
 * a thread-private list is a few instructions where glibc's malloc and free
 * take well over a hundred. Blocks are rounded up to 16-byte classes so
 * that any block of a class serves any request of it. A block may be freed
 * on another thread than the one that allocated it (RCU disposal); it then
 * joins that thread's cache, which is bounded, and the rest goes back to
 * malloc. Each thread's cache is emptied at its exit.
 *
 * An allocator installed with cv_set_allocator sees every allocation and
 * every free itself: no cache in front of it, so its accounting is exact.
 * Nor under AddressSanitizer, so that it sees every free too.
 */
#include "alloc.h"

#include <ctxvars.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Two lines, as x86 cores fetch them in adjacent pairs. */
#define BLOCK_CACHE_ALIGN 128
#define BLOCK_CACHE_BYTES                                                                          \
    ((sizeof(struct cvi_block_cache) + BLOCK_CACHE_ALIGN - 1) / BLOCK_CACHE_ALIGN *                \
     BLOCK_CACHE_ALIGN)

static void *default_alloc(size_t size, void *data)
{
    (void)data;
    return malloc(size);
}

static void default_free(void *ptr, size_t size, void *data)
{
    (void)size;
    (void)data;
    free(ptr);
}

static cv_allocator_t allocator = {default_alloc, default_free, NULL};
bool cvi_custom_allocator;

/* Set by the first allocation (from then on the allocator may own memory
 * that only it can free), and by the other calls that end the time for
 * choosing one (cvi_allocator_freeze). */
static atomic_bool allocator_in_use;

void cvi_allocator_freeze(void)
{
    /* Test before storing: callers may be frequent, the line shared. */
    if (!atomic_load_explicit(&allocator_in_use, memory_order_relaxed))
        atomic_store_explicit(&allocator_in_use, true, memory_order_relaxed);
}

__thread struct cvi_block_cache *cvi_thread_blocks __attribute__((tls_model("initial-exec")));
static pthread_key_t cache_exit_key;
static pthread_once_t cache_exit_key_once = PTHREAD_ONCE_INIT;
static bool cache_exit_key_ok;

cv_status_t cv_set_allocator(const cv_allocator_t *replacement)
{
    if (!replacement || !replacement->alloc || !replacement->free)
        return CV_EINVAL;
    /* Relaxed: the contract is "before any other call", so there is no
     * concurrent allocation to order against; this only detects late calls. */
    if (atomic_load_explicit(&allocator_in_use, memory_order_relaxed))
        return CV_EBUSY;
    allocator = *replacement;
    cvi_custom_allocator = true;
    /* A second call comes after another call too. */
    cvi_allocator_freeze();
    return CV_OK;
}

static void empty_cache(void *arg)
{
    struct cvi_block_cache *cache = arg;
    for (int size_class = 0; size_class < CVI_CACHED_CLASSES; size_class++) {
        while (cache->head[size_class]) {
            struct cvi_free_block *block = cache->head[size_class];
            cache->head[size_class] = block->next;
            free(block);
        }
    }
    free(cache);
    cvi_thread_blocks = NULL;
}

static void create_cache_exit_key(void)
{
    cache_exit_key_ok = pthread_key_create(&cache_exit_key, empty_cache) == 0;
}

/* NULL if the cache cannot be made or emptied at exit: then no caching. */
static struct cvi_block_cache *cache_for_this_thread(void)
{
    if (cvi_thread_blocks)
        return cvi_thread_blocks;
    pthread_once(&cache_exit_key_once, create_cache_exit_key);
    if (!cache_exit_key_ok)
        return NULL;
    /* Lines of its own: every allocation and free of the thread writes it,
     * and a neighbour another thread writes would bounce with it. */
    struct cvi_block_cache *cache = aligned_alloc(BLOCK_CACHE_ALIGN, BLOCK_CACHE_BYTES);
    if (cache)
        memset(cache, 0, sizeof(*cache));
    if (cache && pthread_setspecific(cache_exit_key, cache) != 0) {
        free(cache);
        cache = NULL;
    }
    cvi_thread_blocks = cache;
    return cache;
}

/* The rest of cvi_alloc (alloc.h): a miss in the cache, or no cache. */
void *cvi_alloc_slow(size_t size)
{
    cvi_allocator_freeze();
    if (!cvi_cacheable(size))
        return allocator.alloc(size, allocator.data);
    return malloc((cvi_block_class(size) + 1) * CVI_BLOCK_BYTES);
}

/* The rest of cvi_free (alloc.h): no cache yet, a full class, or uncached. */
void cvi_free_slow(void *ptr, size_t size)
{
    if (!ptr)
        return;
    if (!cvi_cacheable(size)) {
        allocator.free(ptr, size, allocator.data);
        return;
    }
    unsigned size_class = cvi_block_class(size);
    struct cvi_block_cache *cache = cache_for_this_thread();
    if (!cache || cache->count[size_class] == CVI_BLOCKS_PER_CLASS) {
        free(ptr);
        return;
    }
    cvi_block_push(cache, size_class, ptr);
}
