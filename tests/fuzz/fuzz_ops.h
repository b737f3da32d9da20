/*
 * The differential fuzz target (fuzz_ops.c), shared by the libFuzzer
 * binary cv_fuzz and the corpus replay test (tests/test_fuzz_replay.c).
 */
#ifndef CV_FUZZ_OPS_H
#define CV_FUZZ_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Decodes `data` into a sequence of API operations, runs them against the
 * library and the model, and abort()s with a message on stderr at the
 * first difference. Leaves nothing behind: every context, variable, token
 * and iterator the input made is gone when it returns (up to the library's
 * deferred reclamation). Set CV_FUZZ_TRACE=1 to print the decoded
 * operations to stderr. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Waits for the library's deferred releases (cv_reclaim_barrier) and
 * abort()s unless every value reference that the library took through a
 * variable's retain hook has been released and the library holds no more
 * than a handful of blocks (the thread's base context, lookup cache and
 * stack, the variable slot table): what no input owns any more is freed. */
void cv_fuzz_settle_and_check(void);

#endif
