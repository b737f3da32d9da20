/*
 * The allocator layer: every byte the library owns comes from here, so an
 * application can route it to its own allocator (cv_set_allocator) and the
 * tests can fail any allocation they choose.
 */
#ifndef CV_ALLOC_H
#define CV_ALLOC_H

#include <stddef.h>

/* NULL when memory is short; never for size 0 (callers never ask for 0). */
void *cvi_alloc(size_t size);
/* `size` must be the size that was asked for. NULL is a no-op. */
void cvi_free(void *ptr, size_t size);

#endif
