/*
 * Test-only hooks. They live in the library (hidden in the shared one, so
 * never part of the ABI) and are reached by the tests through the static
 * library.
 */
#ifndef CV_TESTING_H
#define CV_TESTING_H

#include <ctxvars.h>
#include <stdbool.h>
#include <stdint.h>

/* Gives `var` the map hash `hash`, so tests can force collisions. Only for
 * a variable that no context holds yet. */
void cv_testing_set_var_hash(cv_var_t *var, uint32_t hash);

/* With `software` true, the map counts bits without the CPU's POPCNT
 * instruction, as it does on a CPU that lacks it (x86-64 builds for the
 * baseline only; elsewhere a no-op). Single-threaded tests only. */
void cv_testing_software_popcount(bool software);

/* With `refuse` true, threads that start using the library find the
 * kernel refusing their lookup cache, as under an address-space limit:
 * their gets then look the map up every time. Set it only while no other
 * thread uses the library. */
void cv_testing_refuse_cache_map(bool refuse);

/* How many threads have a cache of their own mapped: each thread that
 * exits must unmap its own. */
long cv_testing_caches_mapped(void);

/* With `spread` true, every copy of a context that nobody has entered
 * spreads its root's count (spread.h), as copies that collide do. */
void cv_testing_spread_every_copy(bool spread);

/* How many roots have a spread, live or ended, not yet disposed of. */
long cv_testing_spreads(void);

/* With `pause` set, a thread that hands a list of retired nodes to
 * reclamation calls it between taking the list and handing it over: the
 * window in which cv_reclaim_barrier must wait for that thread. NULL turns
 * it off. */
void cv_testing_pause_in_flush(void (*pause)(void));

/* With `pause` set, cv_task_run calls it between the end of its run and
 * its look at whether fn kept the task's context: the window in which a
 * thread that fn handed the context to may copy it and let it go. NULL
 * turns it off. */
void cv_testing_pause_after_task(void (*pause)(void));

#endif
