/*
 * Values that count the references the library takes and drops through a
 * variable's retain/release hooks. Hooks may run on the reclamation
 * thread: everything they touch is atomic.
 */
#ifndef CV_TESTS_TRACKED_VALUES_H
#define CV_TESTS_TRACKED_VALUES_H

#include <stdatomic.h>

/* `live` is retains minus releases. */
struct tracked {
    atomic_int live;
    atomic_int retains;
    atomic_int releases;
};

/* Over every tracked value; underflows counts releases without a retain. */
static atomic_long total_retains, total_releases, underflows;

static inline void tracked_init(struct tracked *t)
{
    atomic_init(&t->live, 0);
    atomic_init(&t->retains, 0);
    atomic_init(&t->releases, 0);
}

static inline void tracked_retain(void *value)
{
    atomic_fetch_add(&total_retains, 1);
    if (!value)
        return;
    struct tracked *t = value;
    atomic_fetch_add(&t->retains, 1);
    atomic_fetch_add(&t->live, 1);
}

static inline void tracked_release(void *value)
{
    atomic_fetch_add(&total_releases, 1);
    if (!value)
        return;
    struct tracked *t = value;
    atomic_fetch_add(&t->releases, 1);
    if (atomic_fetch_sub(&t->live, 1) <= 0)
        atomic_fetch_add(&underflows, 1);
}

#endif
