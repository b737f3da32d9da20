/*
 * Test-only hooks. They live in the library (hidden in the shared one, so
 * never part of the ABI) and are reached by the tests through the static
 * library.
 */
#ifndef CV_TESTING_H
#define CV_TESTING_H

#include <ctxvars.h>
#include <stdint.h>

/* Gives `var` the map hash `hash`, so tests can force collisions. Only for
 * a variable that no context holds yet. */
void cv_testing_set_var_hash(cv_var_t *var, uint32_t hash);

#endif
