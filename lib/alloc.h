/*
 * The allocator layer: every byte the library owns comes from here, so an
 * application can route it to its own allocator (cv_set_allocator) and the
 * tests can fail any allocation they choose.
 */
#ifndef CV_ALLOC_H
#define CV_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The per-thread cache of free blocks (alloc.c's top comment), here so
 * that a hit in it is inline: contexts and nodes come and go on the paths
 * of copies and sets, where a call costs as much as the pop itself. */
#define CVI_BLOCK_BYTES 16
#define CVI_CACHED_CLASSES 16 /* blocks up to 256 bytes */
#define CVI_BLOCKS_PER_CLASS 64

#if defined(__SANITIZE_ADDRESS__)
#define CVI_CACHE_BLOCKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CVI_CACHE_BLOCKS 0
#endif
#endif
#ifndef CVI_CACHE_BLOCKS
#define CVI_CACHE_BLOCKS 1
#endif

struct cvi_free_block {
    struct cvi_free_block *next;
};

struct cvi_block_cache {
    struct cvi_free_block *head[CVI_CACHED_CLASSES];
    uint8_t count[CVI_CACHED_CLASSES];
};

/* NULL until the thread first frees a cacheable block. */
extern __thread struct cvi_block_cache *cvi_thread_blocks
    __attribute__((tls_model("initial-exec")));
/* Set by cv_set_allocator: that allocator sees every call, uncached. */
extern bool cvi_custom_allocator;

/* Ends the time for cv_set_allocator, which is "before any other call":
 * called by every allocation, by cv_set_allocator itself, and by the calls
 * that may allocate nothing but change state all the same (the start of a
 * thread's state, cv_reclaim_barrier). */
void cvi_allocator_freeze(void);

void *cvi_alloc_slow(size_t size);
void cvi_free_slow(void *ptr, size_t size);

static inline bool cvi_cacheable(size_t size)
{
    return CVI_CACHE_BLOCKS && !cvi_custom_allocator &&
           size <= CVI_BLOCK_BYTES * CVI_CACHED_CLASSES;
}

static inline unsigned cvi_block_class(size_t size)
{
    return (unsigned)((size - 1) / CVI_BLOCK_BYTES);
}

/* Puts `ptr` on its class's list; the caller has checked there is room. */
static inline void cvi_block_push(struct cvi_block_cache *cache, unsigned size_class, void *ptr)
{
    struct cvi_free_block *block = ptr;
    block->next = cache->head[size_class];
    cache->head[size_class] = block;
    cache->count[size_class]++;
}

/* NULL when memory is short; never for size 0 (callers never ask for 0). */
static inline void *cvi_alloc(size_t size)
{
    struct cvi_block_cache *cache = cvi_thread_blocks;
    if (cvi_cacheable(size) && cache) {
        unsigned size_class = cvi_block_class(size);
        struct cvi_free_block *block = cache->head[size_class];
        if (block) {
            cache->head[size_class] = block->next;
            cache->count[size_class]--;
            return block;
        }
    }
    return cvi_alloc_slow(size);
}

/* `size` must be the size that was asked for. NULL is a no-op. */
static inline void cvi_free(void *ptr, size_t size)
{
    struct cvi_block_cache *cache = cvi_thread_blocks;
    if (ptr && cvi_cacheable(size) && cache) {
        unsigned size_class = cvi_block_class(size);
        if (cache->count[size_class] != CVI_BLOCKS_PER_CLASS) {
            cvi_block_push(cache, size_class, ptr);
            return;
        }
    }
    cvi_free_slow(ptr, size);
}

#endif
