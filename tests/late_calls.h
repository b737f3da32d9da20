/*
 * Data of a callback that goes dead once the callback is withdrawn
 * (cv_watcher_remove, cv_var_release): a call that sees it dead, or that
 * starts afterwards, is a call the withdrawal should have waited for.
 */
#ifndef CV_TESTS_LATE_CALLS_H
#define CV_TESTS_LATE_CALLS_H

#include <stdatomic.h>
#include <stdbool.h>

struct target {
    atomic_bool dead;
    atomic_long calls, late_calls;
};

static inline void target_init(struct target *t)
{
    atomic_init(&t->dead, false);
    atomic_init(&t->calls, 0);
    atomic_init(&t->late_calls, 0);
}

/* The callback's body. */
static inline void target_called(struct target *t)
{
    atomic_fetch_add(&t->calls, 1);
    /* Give a racing withdrawal time to slip past a call under way. */
    for (volatile int spin = 0; spin < 20000; spin = spin + 1)
        ;
    if (atomic_load(&t->dead))
        atomic_fetch_add(&t->late_calls, 1);
}

/* Right after the withdrawal returned: the calls made so far. */
static inline long target_kill(struct target *t)
{
    atomic_store(&t->dead, true);
    return atomic_load(&t->calls);
}

/* Calls that saw the data dead or started after target_kill. */
static inline long target_late_calls(struct target *t, long calls_at_kill)
{
    return atomic_load(&t->late_calls) + (atomic_load(&t->calls) - calls_at_kill);
}

#endif
