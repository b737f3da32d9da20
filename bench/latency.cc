/*
 * Latency distribution of single operations: each iteration times one
 * operation with the cycle counter (rdtsc with fences on x86-64,
 * clock_gettime elsewhere), and the benchmark reports the p50, p99 and
 * p99.9 of those samples in nanoseconds as user counters.
 *
 * The timer itself costs tens of cycles, far more than a cached get, so
 * latency_timer/empty measures an empty timed region the same way; the
 * report shows it next to the others (a net figure is raw minus the
 * empty region's p50). Tails are what these benchmarks are for: a set
 * that now and then flushes a batch of retired nodes, a page fault on a
 * fresh node, an interrupt.
 */
#include "common.h"

#include <benchmark/benchmark.h>

#include <pthread.h>

#include <algorithm>

namespace cvbench
{

static double percentile(std::vector<uint32_t> &samples, double p)
{
    size_t index = static_cast<size_t>(p * static_cast<double>(samples.size() - 1));
    std::nth_element(samples.begin(), samples.begin() + static_cast<ptrdiff_t>(index),
                     samples.end());
    return static_cast<double>(samples[index]) / ticks_per_ns();
}

template <typename Op> static void sample(benchmark::State &state, Op op)
{
    std::vector<uint32_t> samples;
    samples.reserve(static_cast<size_t>(state.max_iterations));
    for (auto _ : state) {
        uint64_t t0 = ticks_begin();
        op();
        uint64_t t1 = ticks_end();
        samples.push_back(static_cast<uint32_t>(std::min<uint64_t>(t1 - t0, UINT32_MAX)));
    }
    if (samples.empty())
        return;
    /* Ascending p so each nth_element works on an already split array. */
    state.counters["p50_ns"] = percentile(samples, 0.50);
    state.counters["p99_ns"] = percentile(samples, 0.99);
    state.counters["p999_ns"] = percentile(samples, 0.999);
    state.counters["max_ns"] =
        static_cast<double>(*std::max_element(samples.begin(), samples.end())) / ticks_per_ns();
}

static __thread void *tls_value;
static pthread_key_t latency_key;

static void latency_empty(benchmark::State &state)
{
    sample(state, [] { benchmark::ClobberMemory(); });
}

static void latency_get_thread_local(benchmark::State &state)
{
    tls_value = reinterpret_cast<void *>(1);
    sample(state, [] {
        void *value = tls_value;
        keep(value);
    });
}

static void latency_get_pthread(benchmark::State &state)
{
    pthread_setspecific(latency_key, reinterpret_cast<void *>(1));
    sample(state, [] {
        void *value = pthread_getspecific(latency_key);
        keep(value);
    });
}

static void latency_get_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = cv_context_copy(core_vars().shared);
    check(cv_context_enter(ctx), "cv_context_enter");
    cv_var_t *var = core_vars().request_id;
    void *value = nullptr;
    cv_get(var, &value);
    sample(state, [&] {
        cv_get(var, &value);
        keep(value);
    });
    check(cv_context_exit(ctx), "cv_context_exit");
    cv_context_release(ctx);
}

static void latency_set_reset_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = cv_context_copy(core_vars().shared);
    check(cv_context_enter(ctx), "cv_context_enter");
    cv_var_t *var = core_vars().request_id;
    bool failed = false;
    sample(state, [&] {
        cv_token_t token;
        failed |= cv_set(var, reinterpret_cast<void *>(42), &token) != CV_OK;
        failed |= cv_reset(var, &token) != CV_OK;
    });
    if (failed)
        state.SkipWithError("cv_set/cv_reset failed");
    check(cv_context_exit(ctx), "cv_context_exit");
    cv_context_release(ctx);
}

#ifdef CV_BENCH_HAVE_PYTHON
static void latency_get_cpython(benchmark::State &state)
{
    cpython_latency_begin();
    sample(state, [] { cpython_latency_get(); });
    cpython_latency_end();
}

static void latency_set_reset_cpython(benchmark::State &state)
{
    cpython_latency_begin();
    sample(state, [] { cpython_latency_set_reset(); });
    cpython_latency_end();
}
#endif

void register_latency_benchmarks()
{
    if (pthread_key_create(&latency_key, nullptr) != 0)
        die("pthread_key_create failed");
    auto n = static_cast<benchmark::IterationCount>(config().latency_samples);
    benchmark::RegisterBenchmark("latency_timer/empty", latency_empty)->Iterations(n);
    benchmark::RegisterBenchmark("latency_get/thread_local", latency_get_thread_local)
        ->Iterations(n);
    benchmark::RegisterBenchmark("latency_get/pthread", latency_get_pthread)->Iterations(n);
    benchmark::RegisterBenchmark("latency_get/ctxvars", latency_get_ctxvars)->Iterations(n);
    benchmark::RegisterBenchmark("latency_set_reset/ctxvars", latency_set_reset_ctxvars)
        ->Iterations(n);
#ifdef CV_BENCH_HAVE_PYTHON
    benchmark::RegisterBenchmark("latency_get/cpython", latency_get_cpython)->Iterations(n);
    benchmark::RegisterBenchmark("latency_set_reset/cpython", latency_set_reset_cpython)
        ->Iterations(n);
#endif
}

} // namespace cvbench
