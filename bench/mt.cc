/*
 * Multi-core benchmarks: the same operation on 1..N threads at once, one
 * thread per CPU (pinned), N read from the process's CPU set at run time.
 *
 * google-benchmark starts the threads afresh for every batch of
 * iterations, so each thread pins itself and builds its context before the
 * timed loop (the loop's first step is a barrier across the threads).
 * With UseRealTime the reported time is wall time over the iterations of
 * all threads together; the report turns it into the per-thread cost
 * (time x threads) and the scaling efficiency (per-thread cost on 1 thread
 * over per-thread cost on N). Perfect scaling is 100%: N threads each do
 * as much per second as one thread alone.
 *
 * Contexts: every thread works in its own copy of one base context (that
 * is how a server runs: each request starts from the same base), so the
 * threads share the base's map nodes read-only. mt_copy_shared is the one
 * benchmark where all threads hammer the same context on purpose.
 */
#include "common.h"
#include "naive.h"

#include <benchmark/benchmark.h>

#include <pthread.h>

namespace cvbench
{

static __thread void *tls_value;
static pthread_key_t mt_key;

/* Per-thread setup shared by the ctxvars benchmarks: pin, then enter a
 * private copy of the base context. */
class ThreadContext
{
  public:
    explicit ThreadContext(benchmark::State &state)
    {
        if (!pin_to_cpu_index(state.thread_index()))
            state.SkipWithError("pthread_setaffinity_np failed");
        ctx_ = cv_context_copy(core_vars().shared);
        if (!ctx_)
            die("cv_context_copy: out of memory");
        CV_CHECK(cv_context_enter(ctx_));
    }
    ~ThreadContext()
    {
        CV_CHECK(cv_context_exit(ctx_));
        cv_context_release(ctx_);
    }

  private:
    cv_context_t *ctx_;
};

static void pin(benchmark::State &state)
{
    if (!pin_to_cpu_index(state.thread_index()))
        state.SkipWithError("pthread_setaffinity_np failed");
}

/* ------------------------------------------------------------------ get */

static void mt_get_ctxvars(benchmark::State &state)
{
    ThreadContext scope(state);
    cv_var_t *var = core_vars().request_id;
    void *value = nullptr;
    cv_get(var, &value);
    for (auto _ : state) {
        cv_get(var, &value);
        keep(value);
    }
    if (value != reinterpret_cast<void *>(1))
        state.SkipWithError("cv_get returned the wrong value");
}

static void mt_get_thread_local(benchmark::State &state)
{
    pin(state);
    tls_value = reinterpret_cast<void *>(1);
    for (auto _ : state) {
        void *value = tls_value;
        keep(value);
    }
}

static void mt_get_pthread(benchmark::State &state)
{
    pin(state);
    pthread_setspecific(mt_key, reinterpret_cast<void *>(1));
    for (auto _ : state) {
        void *value = pthread_getspecific(mt_key);
        keep(value);
    }
}

/* ------------------------------------------------------------ set+reset */

static void mt_set_reset_ctxvars(benchmark::State &state)
{
    ThreadContext scope(state);
    cv_var_t *var = core_vars().request_id;
    for (auto _ : state) {
        cv_token_t token;
        CV_CHECK(cv_set(var, reinterpret_cast<void *>(42), &token));
        CV_CHECK(cv_reset(var, &token));
    }
}

static void mt_set_reset_thread_local(benchmark::State &state)
{
    pin(state);
    tls_value = reinterpret_cast<void *>(1);
    for (auto _ : state) {
        void *old = tls_value;
        tls_value = reinterpret_cast<void *>(42);
        benchmark::ClobberMemory();
        tls_value = old;
        benchmark::ClobberMemory();
    }
}

static void mt_set_reset_pthread(benchmark::State &state)
{
    pin(state);
    pthread_setspecific(mt_key, reinterpret_cast<void *>(1));
    for (auto _ : state) {
        void *old = pthread_getspecific(mt_key);
        pthread_setspecific(mt_key, reinterpret_cast<void *>(42));
        pthread_setspecific(mt_key, old);
    }
}

/* ------------------------------------------------ run in captured context */

struct TaskArgs {
    uintptr_t sum;
};

/* The task of the pool benchmark, without the pool: read two variables. */
static void read_two(void *arg)
{
    void *a = nullptr, *b = nullptr;
    cv_get(core_vars().request_id, &a);
    cv_get(core_vars().user, &b);
    static_cast<TaskArgs *>(arg)->sum +=
        reinterpret_cast<uintptr_t>(a) + reinterpret_cast<uintptr_t>(b);
}

/* Capture the current context, run a task in the capture, release it:
 * what a submitter and a worker do between them for every task. Each
 * thread first sets a variable of its own, so its context has a private
 * map root, as a request's context does once the request has set its
 * values (mt_copy_shared measures the shared-root case). */
static void mt_run_captured_ctxvars(benchmark::State &state)
{
    ThreadContext scope(state);
    CV_CHECK(cv_set(core_vars().user, reinterpret_cast<void *>(3), nullptr));
    TaskArgs args{0};
    for (auto _ : state) {
        cv_context_t *captured = cv_copy_context();
        CV_CHECK(cv_context_run(captured, read_two, &args));
        cv_context_release(captured);
    }
    if (args.sum != static_cast<uintptr_t>(state.iterations()) * 4)
        state.SkipWithError("a task ran in the wrong context");
}

/* --------------------------------------------------------- shared copy */

/* Every thread copies the same context: each request starting from one
 * base context. A reference count shared by all threads would make this
 * the first thing to stop scaling. */
static void mt_copy_shared_ctxvars(benchmark::State &state)
{
    pin(state);
    cv_context_t *shared = core_vars().shared;
    for (auto _ : state) {
        cv_context_t *copy = cv_context_copy(shared);
        keep(copy);
        cv_context_release(copy);
    }
}

static NaiveContext &naive_shared()
{
    static NaiveContext *ctx = [] {
        auto *c = new NaiveContext();
        c->set(core_vars().request_id, reinterpret_cast<void *>(1));
        c->set(core_vars().user, reinterpret_cast<void *>(2));
        return c;
    }();
    return *ctx;
}

static void mt_copy_shared_naive(benchmark::State &state)
{
    pin(state);
    NaiveContext &shared = naive_shared();
    for (auto _ : state) {
        NaiveContext *copy = new NaiveContext(shared);
        keep(copy);
        delete copy;
    }
}

void register_multi_thread_benchmarks()
{
    if (pthread_key_create(&mt_key, nullptr) != 0)
        die("pthread_key_create failed");
    naive_shared(); /* built here, before any thread can race to build it */
    int max_threads = static_cast<int>(cpus().size());
    struct Entry {
        const char *name;
        void (*fn)(benchmark::State &);
    };
    const Entry entries[] = {
        {"mt_get/ctxvars", mt_get_ctxvars},
        {"mt_get/thread_local", mt_get_thread_local},
        {"mt_get/pthread", mt_get_pthread},
        {"mt_set_reset/ctxvars", mt_set_reset_ctxvars},
        {"mt_set_reset/thread_local", mt_set_reset_thread_local},
        {"mt_set_reset/pthread", mt_set_reset_pthread},
        {"mt_run_captured/ctxvars", mt_run_captured_ctxvars},
        {"mt_copy_shared/ctxvars", mt_copy_shared_ctxvars},
        {"mt_copy_shared/naive", mt_copy_shared_naive},
    };
    for (const Entry &e : entries) {
        auto *b =
            benchmark::RegisterBenchmark(e.name, e.fn)->ThreadRange(1, max_threads)->UseRealTime();
        if (config().mt_repetitions > 0)
            b->Repetitions(config().mt_repetitions);
    }
}

} // namespace cvbench
