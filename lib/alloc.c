#include "alloc.h"

#include <ctxvars.h>
#include <stdatomic.h>
#include <stdlib.h>

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

/* Set by the first allocation: from then on the allocator may own memory
 * that only it can free, so it can no longer be replaced. */
static atomic_bool allocator_in_use;

cv_status_t cv_set_allocator(const cv_allocator_t *replacement)
{
    if (!replacement || !replacement->alloc || !replacement->free)
        return CV_EINVAL;
    /* Relaxed: the contract is "before any other call", so there is no
     * concurrent allocation to order against; this only detects late calls. */
    if (atomic_load_explicit(&allocator_in_use, memory_order_relaxed))
        return CV_EBUSY;
    allocator = *replacement;
    return CV_OK;
}

void *cvi_alloc(size_t size)
{
    /* Test before storing so the common path never writes a shared line. */
    if (!atomic_load_explicit(&allocator_in_use, memory_order_relaxed))
        atomic_store_explicit(&allocator_in_use, true, memory_order_relaxed);
    return allocator.alloc(size, allocator.data);
}

void cvi_free(void *ptr, size_t size)
{
    if (ptr)
        allocator.free(ptr, size, allocator.data);
}
