/*
 * Single-thread benchmarks of ctxvars against the physical limit
 * (`__thread`), pthread keys and a hand-written naive context. CPython's
 * rows of each group are registered from cpython.cc right after ours.
 *
 * Naming: "<operation>/<implementation>[/vars:N]". The report script
 * parses these names; keep them stable.
 *
 * Cold get, the method: a thread's lookup cache is keyed by a version that
 * changes on every enter and exit, and a cache entry holds one version, so
 * alternating between two contexts A and B (enter A, get, exit A, enter B,
 * get, exit B) makes every get a full map lookup, whatever the library
 * does to keep entries across an enter of the same context. Enter and exit
 * are timed too, so the same alternation without the gets is measured as
 * its own benchmark (enter_exit_ab) and the report subtracts it:
 * cold get = get_cold - enter_exit_ab, both measured in the same run.
 * CPython's cache (one entry in the variable, keyed by thread state and
 * context version) is defeated the same way. The lookup rows
 * (cv_context_get on a context nobody has entered) are a full lookup with
 * no cache involved and need no subtraction.
 *
 * Sized reads cycle through up to 16 variables of the context (see
 * ProbeCycle in common.h); sized sets set one, probe_var(n).
 */
#include "common.h"
#include "naive.h"

#include <benchmark/benchmark.h>

#include <pthread.h>

#include <map>
#include <memory>
#include <thread>

namespace cvbench
{

/* The physical limit of a thread-local read: initial-exec/local-exec TLS in
 * the executable, a single %fs-relative load. */
static __thread void *tls_value;
static pthread_key_t pthread_value_key;
static __thread NaiveContext *naive_current;

static std::string sized(const char *name, size_t n)
{
    return std::string(name) + "/vars:" + std::to_string(n);
}

/* A small context with request_id and user set, private to the caller. */
static cv_context_t *small_context()
{
    cv_context_t *ctx = cv_context_copy(core_vars().shared);
    if (!ctx)
        die("cv_context_copy: out of memory");
    return ctx;
}

/* A probe: the variable and the value the fixture gave it. */
struct Probe {
    cv_var_t *var;
    void *value;
};

static ProbeCycle<Probe> probes(size_t n)
{
    std::vector<Probe> list;
    for (size_t i : probe_indices(n))
        list.push_back(Probe{sweep_var(i), reinterpret_cast<void *>(i + 1)});
    return ProbeCycle<Probe>(std::move(list));
}

static NaiveContext *naive_fixture(size_t n)
{
    static std::map<size_t, std::unique_ptr<NaiveContext>> built;
    auto &slot = built[n];
    if (!slot) {
        slot = std::make_unique<NaiveContext>();
        for (size_t i = 0; i < n; i++)
            slot->set(sweep_var(i), reinterpret_cast<void *>(i + 1));
    }
    return slot.get();
}

/* ---------------------------------------------------------- get, cached */

static void get_cached_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = small_context();
    CV_CHECK(cv_context_enter(ctx));
    cv_var_t *var = core_vars().request_id;
    void *value = nullptr;
    CV_CHECK(cv_get(var, &value)); /* warms the cache entry */
    for (auto _ : state) {
        cv_get(var, &value);
        keep(value);
    }
    if (value != reinterpret_cast<void *>(1))
        state.SkipWithError("cv_get returned the wrong value");
    CV_CHECK(cv_context_exit(ctx));
    cv_context_release(ctx);
}

static void get_cached_thread_local(benchmark::State &state)
{
    tls_value = reinterpret_cast<void *>(1);
    for (auto _ : state) {
        void *value = tls_value;
        keep(value);
    }
}

static void get_cached_pthread(benchmark::State &state)
{
    pthread_setspecific(pthread_value_key, reinterpret_cast<void *>(1));
    for (auto _ : state) {
        void *value = pthread_getspecific(pthread_value_key);
        keep(value);
    }
}

static void get_cached_naive(benchmark::State &state)
{
    NaiveContext ctx;
    ctx.set(core_vars().request_id, reinterpret_cast<void *>(1));
    ctx.set(core_vars().user, reinterpret_cast<void *>(2));
    naive_current = &ctx;
    const void *key = core_vars().request_id;
    void *value = nullptr;
    for (auto _ : state) {
        naive_current->get(key, &value);
        keep(value);
    }
    naive_current = nullptr;
}

/* ------------------------------------------------------------ get, cold */

static void get_cold_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *a = sweep_context(n, CTX_A), *b = sweep_context(n, CTX_B);
    ProbeCycle<Probe> cycle = probes(n);
    bool wrong = false;
    void *value = nullptr;
    while (state.KeepRunningBatch(2)) {
        const Probe &probe = cycle.current();
        CV_CHECK(cv_context_enter(a));
        cv_get(probe.var, &value);
        wrong |= value != probe.value;
        CV_CHECK(cv_context_exit(a));
        CV_CHECK(cv_context_enter(b));
        cv_get(probe.var, &value);
        wrong |= value != probe.value;
        CV_CHECK(cv_context_exit(b));
        cycle.step();
    }
    if (wrong)
        state.SkipWithError("cold cv_get returned the wrong value");
}

/* The same alternation without the gets: subtracted by the report. */
static void enter_exit_ab_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *a = sweep_context(n, CTX_A), *b = sweep_context(n, CTX_B);
    while (state.KeepRunningBatch(2)) {
        CV_CHECK(cv_context_enter(a));
        benchmark::ClobberMemory();
        CV_CHECK(cv_context_exit(a));
        CV_CHECK(cv_context_enter(b));
        benchmark::ClobberMemory();
        CV_CHECK(cv_context_exit(b));
    }
}

/* A full lookup with no cache: the mapping API on a context nobody has
 * entered. */
static void lookup_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *ctx = sweep_context(n, CTX_LOOKUP);
    ProbeCycle<Probe> cycle = probes(n);
    bool wrong = false;
    void *value = nullptr;
    for (auto _ : state) {
        const Probe &probe = cycle.current();
        cv_context_get(ctx, probe.var, &value);
        wrong |= value != probe.value;
        cycle.step();
    }
    if (wrong)
        state.SkipWithError("cv_context_get returned the wrong value");
}

/* ------------------------------------------------------------ set+reset */

/* With var_was_set the variable had a value before the set, so the set
 * replaces it and the reset puts it back; without, the set inserts it and
 * the reset removes it again. The context is used by its owner only: sets
 * may update the map in place. */
static void set_reset_in(benchmark::State &state, cv_context_t *ctx, cv_var_t *var, void *expected)
{
    if (callbacks_registered())
        state.SkipWithError("a watcher or change handler is still registered");
    CV_CHECK(cv_context_enter(ctx));
    for (auto _ : state) {
        cv_token_t token;
        CV_CHECK(cv_set(var, reinterpret_cast<void *>(42), &token));
        CV_CHECK(cv_reset(var, &token));
    }
    /* Checked by the owner: a read from outside would mark the context. */
    void *value = nullptr;
    cv_status_t status = cv_get(var, &value);
    if (expected ? (status != CV_OK || value != expected) : status != CV_ENOVALUE)
        state.SkipWithError("set+reset did not restore the variable");
    CV_CHECK(cv_context_exit(ctx));
}

static void set_reset_ctxvars(benchmark::State &state, size_t n, bool var_was_set)
{
    if (var_was_set)
        set_reset_in(state, sweep_context(n, CTX_A), probe_var(n),
                     reinterpret_cast<void *>(n / 2 + 1));
    else
        set_reset_in(state, sweep_context(n, CTX_A), unset_var(), nullptr);
}

/* The same on a context that another thread has read once (a copy taken
 * with cv_context_copy by a thread that does not own it, as a pool or a
 * monitor would). The library then can no longer update the map in place:
 * every set copies its path and retires the old nodes through RCU. */
static void set_reset_observed_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *ctx = sweep_context(n, CTX_OBSERVED);
    std::thread reader([ctx] { cv_context_release(cv_context_copy(ctx)); });
    reader.join();
    set_reset_in(state, ctx, probe_var(n), reinterpret_cast<void *>(n / 2 + 1));
}

/* Capture, then set and reset: the copy shares the map, so the set must
 * copy the path to the leaf (the cost that grows with the depth). The copy
 * and release are inside the timed loop; the copy row is their cost. */
static void set_reset_after_copy_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *ctx = sweep_context(n, CTX_A);
    cv_var_t *var = probe_var(n);
    CV_CHECK(cv_context_enter(ctx));
    for (auto _ : state) {
        cv_context_t *copy = cv_copy_context();
        cv_token_t token;
        CV_CHECK(cv_set(var, reinterpret_cast<void *>(42), &token));
        CV_CHECK(cv_reset(var, &token));
        cv_context_release(copy);
    }
    CV_CHECK(cv_context_exit(ctx));
}

static void set_reset_thread_local(benchmark::State &state)
{
    tls_value = reinterpret_cast<void *>(1);
    for (auto _ : state) {
        /* The token's job: remember the old value, store, put it back. */
        void *old = tls_value;
        tls_value = reinterpret_cast<void *>(42);
        benchmark::ClobberMemory();
        tls_value = old;
        benchmark::ClobberMemory();
    }
}

static void set_reset_pthread(benchmark::State &state)
{
    pthread_setspecific(pthread_value_key, reinterpret_cast<void *>(1));
    for (auto _ : state) {
        void *old = pthread_getspecific(pthread_value_key);
        pthread_setspecific(pthread_value_key, reinterpret_cast<void *>(42));
        pthread_setspecific(pthread_value_key, old);
    }
}

static void set_reset_naive(benchmark::State &state, size_t n, bool var_was_set)
{
    naive_current = naive_fixture(n);
    const void *key = var_was_set ? static_cast<const void *>(probe_var(n)) : unset_var();
    for (auto _ : state) {
        NaiveContext::Token token = naive_current->set(key, reinterpret_cast<void *>(42));
        naive_current->reset(token);
    }
    naive_current = nullptr;
}

/* ----------------------------------------------------------------- copy */

static void copy_ctxvars(benchmark::State &state, size_t n)
{
    cv_context_t *ctx = sweep_context(n, CTX_A);
    CV_CHECK(cv_context_enter(ctx));
    for (auto _ : state) {
        cv_context_t *copy = cv_copy_context();
        keep(copy);
        cv_context_release(copy);
    }
    CV_CHECK(cv_context_exit(ctx));
}

static void copy_naive(benchmark::State &state, size_t n)
{
    naive_current = naive_fixture(n);
    for (auto _ : state) {
        NaiveContext *copy = new NaiveContext(*naive_current);
        keep(copy);
        delete copy;
    }
    naive_current = nullptr;
}

/* ------------------------------------------------------------------ run */

static void empty_task(void *arg)
{
    keep(arg);
}

static void run_ctxvars(benchmark::State &state)
{
    /* The comparison for the watcher and handler rows: nothing registered. */
    if (callbacks_registered())
        state.SkipWithError("a watcher or change handler is still registered");
    cv_context_t *ctx = small_context();
    for (auto _ : state)
        CV_CHECK(cv_context_run(ctx, empty_task, nullptr));
    cv_context_release(ctx);
}

static void enter_exit_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = small_context();
    for (auto _ : state) {
        CV_CHECK(cv_context_enter(ctx));
        CV_CHECK(cv_context_exit(ctx));
    }
    cv_context_release(ctx);
}

/* --------------------------------------------------------------- switch */

/* What a scheduler does when task A yields to task B: leave A's context,
 * enter B's, and B reads its request id (a cold get: B's values are not in
 * this thread's cache). One iteration is one switch. */
static void switch_ctxvars(benchmark::State &state)
{
    cv_context_t *a = small_context(), *b = small_context();
    cv_var_t *var = core_vars().request_id;
    struct SetArgs {
        cv_var_t *var;
    } args{var};
    CV_CHECK(cv_context_run(
        b,
        [](void *p) {
            CV_CHECK(cv_set(static_cast<SetArgs *>(p)->var, reinterpret_cast<void *>(7), nullptr));
        },
        &args));
    uintptr_t sum = 0;
    void *value = nullptr;
    CV_CHECK(cv_context_enter(a));
    while (state.KeepRunningBatch(2)) {
        CV_CHECK(cv_context_exit(a));
        CV_CHECK(cv_context_enter(b));
        cv_get(var, &value);
        sum += reinterpret_cast<uintptr_t>(value);
        CV_CHECK(cv_context_exit(b));
        CV_CHECK(cv_context_enter(a));
        cv_get(var, &value);
        sum += reinterpret_cast<uintptr_t>(value);
    }
    CV_CHECK(cv_context_exit(a));
    if (sum != static_cast<uintptr_t>(state.iterations() / 2) * 8)
        state.SkipWithError("a task saw the other task's value");
    cv_context_release(a);
    cv_context_release(b);
}

/* --------------------------------------------------------- registration */

#ifdef CV_BENCH_HAVE_PYTHON
#define CV_REGISTER_CPYTHON(group) register_cpython_group(group)
#else
#define CV_REGISTER_CPYTHON(group) ((void)0)
#endif

void register_single_thread_benchmarks()
{
    if (pthread_key_create(&pthread_value_key, nullptr) != 0)
        die("pthread_key_create failed");
    const std::vector<size_t> &sizes = config().sizes;

    benchmark::RegisterBenchmark("get_cached/ctxvars", get_cached_ctxvars);
    register_noinline_benchmarks();
    benchmark::RegisterBenchmark("get_cached/thread_local", get_cached_thread_local);
    benchmark::RegisterBenchmark("get_cached/pthread", get_cached_pthread);
    benchmark::RegisterBenchmark("get_cached/naive", get_cached_naive);
    CV_REGISTER_CPYTHON(Group::GetCached);

    for (size_t n : sizes) {
        benchmark::RegisterBenchmark(sized("get_cold/ctxvars", n).c_str(), get_cold_ctxvars, n);
        benchmark::RegisterBenchmark(sized("enter_exit_ab/ctxvars", n).c_str(),
                                     enter_exit_ab_ctxvars, n);
        benchmark::RegisterBenchmark(sized("lookup/ctxvars", n).c_str(), lookup_ctxvars, n);
    }
    CV_REGISTER_CPYTHON(Group::GetCold);

    benchmark::RegisterBenchmark("set_reset/thread_local", set_reset_thread_local);
    benchmark::RegisterBenchmark("set_reset/pthread", set_reset_pthread);
    for (size_t n : sizes) {
        benchmark::RegisterBenchmark(sized("set_reset/ctxvars", n).c_str(), set_reset_ctxvars, n,
                                     true);
        if (n == 1) /* its comparison is set_reset/ctxvars/vars:1 */
            register_callback_benchmarks(Group::SetReset);
        benchmark::RegisterBenchmark(sized("set_reset_unset/ctxvars", n).c_str(), set_reset_ctxvars,
                                     n, false);
        benchmark::RegisterBenchmark(sized("set_reset_after_copy/ctxvars", n).c_str(),
                                     set_reset_after_copy_ctxvars, n);
        benchmark::RegisterBenchmark(sized("set_reset_observed/ctxvars", n).c_str(),
                                     set_reset_observed_ctxvars, n);
        benchmark::RegisterBenchmark(sized("set_reset/naive", n).c_str(), set_reset_naive, n, true);
        benchmark::RegisterBenchmark(sized("set_reset_unset/naive", n).c_str(), set_reset_naive, n,
                                     false);
    }
    CV_REGISTER_CPYTHON(Group::SetReset);

    for (size_t n : sizes) {
        benchmark::RegisterBenchmark(sized("copy/ctxvars", n).c_str(), copy_ctxvars, n);
        benchmark::RegisterBenchmark(sized("copy/naive", n).c_str(), copy_naive, n);
    }
    CV_REGISTER_CPYTHON(Group::Copy);

    benchmark::RegisterBenchmark("run/ctxvars", run_ctxvars);
    register_callback_benchmarks(Group::Run);
    benchmark::RegisterBenchmark("enter_exit/ctxvars", enter_exit_ctxvars);
    CV_REGISTER_CPYTHON(Group::Run);

    benchmark::RegisterBenchmark("switch/ctxvars", switch_ctxvars);
    CV_REGISTER_CPYTHON(Group::Switch);
}

} // namespace cvbench
