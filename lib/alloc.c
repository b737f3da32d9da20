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

#define CLASS_BYTES 16
#define CACHED_CLASSES 16 /* blocks up to 256 bytes */
#define BLOCKS_PER_CLASS 64

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_BLOCKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CACHE_BLOCKS 0
#endif
#endif
#ifndef CACHE_BLOCKS
#define CACHE_BLOCKS 1
#endif

struct free_block {
    struct free_block *next;
};

struct block_cache {
    struct free_block *head[CACHED_CLASSES];
    uint8_t count[CACHED_CLASSES];
};

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
static bool custom_allocator;

/* Set by the first allocation: from then on the allocator may own memory
 * that only it can free, so it can no longer be replaced. */
static atomic_bool allocator_in_use;

static __thread struct block_cache *thread_cache __attribute__((tls_model("initial-exec")));
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
    custom_allocator = true;
    return CV_OK;
}

static void empty_cache(void *arg)
{
    struct block_cache *cache = arg;
    for (int size_class = 0; size_class < CACHED_CLASSES; size_class++) {
        while (cache->head[size_class]) {
            struct free_block *block = cache->head[size_class];
            cache->head[size_class] = block->next;
            free(block);
        }
    }
    free(cache);
    thread_cache = NULL;
}

static void create_cache_exit_key(void)
{
    cache_exit_key_ok = pthread_key_create(&cache_exit_key, empty_cache) == 0;
}

/* NULL if the cache cannot be made or emptied at exit: then no caching. */
static struct block_cache *cache_for_this_thread(void)
{
    if (thread_cache)
        return thread_cache;
    pthread_once(&cache_exit_key_once, create_cache_exit_key);
    if (!cache_exit_key_ok)
        return NULL;
    struct block_cache *cache = calloc(1, sizeof(*cache));
    if (cache && pthread_setspecific(cache_exit_key, cache) != 0) {
        free(cache);
        cache = NULL;
    }
    thread_cache = cache;
    return cache;
}

static bool cacheable(size_t size)
{
    return CACHE_BLOCKS && !custom_allocator && size <= CLASS_BYTES * CACHED_CLASSES;
}

static unsigned class_of(size_t size)
{
    return (unsigned)((size - 1) / CLASS_BYTES);
}

void *cvi_alloc(size_t size)
{
    /* Test before storing so the common path never writes a shared line. */
    if (!atomic_load_explicit(&allocator_in_use, memory_order_relaxed))
        atomic_store_explicit(&allocator_in_use, true, memory_order_relaxed);
    if (!cacheable(size))
        return allocator.alloc(size, allocator.data);
    unsigned size_class = class_of(size);
    struct block_cache *cache = thread_cache;
    if (cache && cache->head[size_class]) {
        struct free_block *block = cache->head[size_class];
        cache->head[size_class] = block->next;
        cache->count[size_class]--;
        return block;
    }
    return malloc((size_class + 1) * CLASS_BYTES);
}

void cvi_free(void *ptr, size_t size)
{
    if (!ptr)
        return;
    if (!cacheable(size)) {
        allocator.free(ptr, size, allocator.data);
        return;
    }
    unsigned size_class = class_of(size);
    struct block_cache *cache = cache_for_this_thread();
    if (!cache || cache->count[size_class] == BLOCKS_PER_CLASS) {
        free(ptr);
        return;
    }
    struct free_block *block = ptr;
    block->next = cache->head[size_class];
    cache->head[size_class] = block;
    cache->count[size_class]++;
}
