/*
 * Thread-pool propagation: the same pool running the same tiny tasks
 * (read two variables), as plain tasks and capturing the submitter's
 * context per task with the library's executor helper (cv_task_init at
 * submit: a copy; cv_task_run on the worker: a run and a release). The
 * task record stays one cache line either way, and plain tasks call
 * fn(arg) directly.
 *
 * Shape: the benchmark thread is the submitter, on CPU 0; the workers get
 * the other CPUs (one worker on CPU 0 too when the process has only one).
 * A batch of tasks is staged privately, handed to each worker's queue in
 * one splice, and waited for, so its time includes the submit side (the
 * capture) as well as the worker side (run and release). Handing over
 * whole batches keeps the figure about the tasks: with task-by-task
 * handover on this kind of machine the rate swung by 10x from run to run
 * with how submitter and worker happened to interleave on the queue's
 * cache lines. The submitter sets its request id once per batch, as a
 * server would per request, so captures hold different maps from batch to
 * batch.
 *
 * One iteration runs eight pairs of a plain batch and a propagated batch,
 * back to back, in alternating order, in the same pool. On a shared
 * machine a worker can lose its CPU for milliseconds; with the two kinds
 * measured as separate benchmarks one such stretch once made plain batches
 * 20x slower than propagated ones and the ratio meaningless. Here a
 * stretch lands on neighbouring batches of both kinds, and the counters
 * are medians over the repetition's batches: each kind's tasks per second,
 * and propagation_share, the median over pairs of plain time / propagated
 * time (DESIGN.md: propagation keeps >= 95%).
 *
 * Task records are preallocated and reused rather than malloc'd per task:
 * a per-task malloc would make the pool itself slower and the propagation
 * overhead look smaller than it is. Without propagation the workers read
 * the same two variables from their own base context, where they are set
 * too, so both kinds do two successful gets per task.
 */
#include "common.h"
#include "pool.h"

#include <benchmark/benchmark.h>

#include <urcu/arch.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include <sched.h>

namespace cvbench
{

struct alignas(64) PoolTask {
    cvb_task task;
    uintptr_t seen; /* written by the worker: request id + user */
};
static_assert(sizeof(PoolTask) == 64, "a task record is one cache line");

static void read_two(void *arg)
{
    void *a = nullptr, *b = nullptr;
    cv_get(core_vars().request_id, &a);
    cv_get(core_vars().user, &b);
    static_cast<PoolTask *>(arg)->seen =
        reinterpret_cast<uintptr_t>(a) + reinterpret_cast<uintptr_t>(b);
}

/* Each worker's own values, so that plain tasks find something too. */
static void worker_init(void *)
{
    check(cv_set(core_vars().request_id, reinterpret_cast<void *>(1000), nullptr), "cv_set");
    check(cv_set(core_vars().user, reinterpret_cast<void *>(2), nullptr), "cv_set");
}

/* Pairs of batches per iteration: enough for a median even when a short
 * smoke run (tools/bench.sh --quick) stops after one iteration. */
static constexpr int PAIRS_PER_ITERATION = 8;

/* The median of `v` (which it reorders). */
static double median(std::vector<double> &v)
{
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
}

static void pool_tasks(benchmark::State &state)
{
    const std::vector<int> &cpu_list = cpus();
    int workers = cpu_list.size() > 1 ? static_cast<int>(cpu_list.size()) - 1 : 1;
    std::vector<int> worker_cpus;
    for (int i = 0; i < workers; i++)
        worker_cpus.push_back(cpu_list[static_cast<size_t>(i + 1) % cpu_list.size()]);
    pin_to_cpu_index(0);

    size_t batch = config().pool_batch;
    std::unique_ptr<PoolTask[]> tasks(new PoolTask[batch]);
    std::vector<cvb_task *> task_ptrs(batch);
    for (size_t i = 0; i < batch; i++) {
        tasks[i] = PoolTask{{nullptr, read_two, &tasks[i], false, {}}, 0};
        task_ptrs[i] = &tasks[i].task;
    }

    /* The submitter's request context: its own, entered for the run. */
    cv_context_t *request = cv_context_copy(core_vars().shared);
    check(cv_context_enter(request), "cv_context_enter");

    cvb_pool_t *pool = cvb_pool_start(workers, worker_cpus.data(), worker_init, nullptr);
    if (!pool)
        die("cannot start the thread pool");
    uint64_t submitted = 0;
    uintptr_t request_id = 0;
    /* One batch, submitted and waited for; returns its wall time in ns. */
    auto run_batch = [&](bool propagate) {
        cv_token_t token;
        check(cv_set(core_vars().request_id, reinterpret_cast<void *>(++request_id), &token),
              "cv_set");
        auto start = std::chrono::steady_clock::now();
        if (!cvb_pool_submit_batch(pool, task_ptrs.data(), batch, propagate))
            die("cv_task_init: out of memory");
        submitted += batch;
        /* Spin, then yield: on a one-CPU machine the worker shares the
         * submitter's CPU and needs it to finish the batch. */
        for (unsigned spins = 0; cvb_pool_completed(pool) < submitted; spins++) {
            if (spins < 4096)
                caa_cpu_relax();
            else
                sched_yield();
        }
        auto end = std::chrono::steady_clock::now();
        check(cv_reset(core_vars().request_id, &token), "cv_reset");
        return std::chrono::duration<double, std::nano>(end - start).count();
    };
    /* Whether the batch just run read the submitter's values (propagated)
     * or its worker's (plain). */
    auto batch_read_right_values = [&](bool propagate) {
        uintptr_t expected = propagate ? request_id + 2 : 1002;
        for (size_t i = 0; i < batch; i++)
            if (tasks[i].seen != expected)
                return false;
        return true;
    };
    /* One untimed pair first: the first touches of the task records, the
     * allocator's first blocks and the workers' caches are start-up, not
     * throughput. */
    run_batch(false);
    run_batch(true);
    std::vector<double> plain_ns, propagated_ns, shares;
    for (auto _ : state) {
        /* The order alternates, so neither kind always runs on the caches
         * the other left. */
        for (int pair = 0; pair < PAIRS_PER_ITERATION; pair++) {
            bool propagated_first = pair % 2;
            double first = run_batch(propagated_first);
            double second = run_batch(!propagated_first);
            double plain = propagated_first ? second : first;
            double propagated = propagated_first ? first : second;
            plain_ns.push_back(plain);
            propagated_ns.push_back(propagated);
            shares.push_back(plain / propagated);
        }
    }
    bool right = true;
    run_batch(false);
    right &= batch_read_right_values(false);
    run_batch(true);
    right &= batch_read_right_values(true);
    cvb_pool_stop(pool);
    check(cv_context_exit(request), "cv_context_exit");
    cv_context_release(request);
    if (!right) {
        state.SkipWithError("tasks read the wrong values");
        return;
    }

    double tasks_per_batch = static_cast<double>(batch);
    state.counters["plain_tasks_per_second"] = tasks_per_batch * 1e9 / median(plain_ns);
    state.counters["propagating_tasks_per_second"] = tasks_per_batch * 1e9 / median(propagated_ns);
    state.counters["propagation_share"] = median(shares);
    state.counters["workers"] = workers;
}

void register_pool_benchmarks()
{
    benchmark::RegisterBenchmark("pool/alternating", pool_tasks)->UseRealTime();
}

} // namespace cvbench
