/*
 * The cached get through the exported function rather than the header's
 * inline fast path (CV_NO_INLINE): what code gets that cannot use the
 * inline path (other languages' FFIs, a library reached through dlsym).
 * Its own file because CV_NO_INLINE must be defined before ctxvars.h.
 */
#define CV_NO_INLINE 1
#include "common.h"

#include <benchmark/benchmark.h>

namespace cvbench
{

static void get_cached_ctxvars_call(benchmark::State &state)
{
    cv_context_t *ctx = cv_context_copy(core_vars().shared);
    check(cv_context_enter(ctx), "cv_context_enter");
    cv_var_t *var = core_vars().request_id;
    void *value = nullptr;
    check(cv_get(var, &value), "cv_get");
    for (auto _ : state) {
        cv_get(var, &value);
        keep(value);
    }
    if (value != reinterpret_cast<void *>(1))
        state.SkipWithError("cv_get returned the wrong value");
    check(cv_context_exit(ctx), "cv_context_exit");
    cv_context_release(ctx);
}

void register_noinline_benchmarks()
{
    benchmark::RegisterBenchmark("get_cached/ctxvars_call", get_cached_ctxvars_call);
}

} // namespace cvbench
