/*
 * Shared pieces of the benchmark harness: run-time configuration, the CPU
 * list threads are pinned to, the variable and context fixtures that the
 * single-thread and multi-thread benchmarks share, and the cycle counter
 * used by the latency benchmarks.
 *
 * Fixtures are built lazily and kept for the whole run: google-benchmark
 * calls a benchmark function several times (iteration ramp-up, then once
 * per repetition), and rebuilding a context of 100,000 variables on every
 * call would dominate the run time without measuring anything.
 */
#ifndef CV_BENCH_COMMON_H
#define CV_BENCH_COMMON_H

#include <ctxvars.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cvbench
{

/* ------------------------------------------------------- configuration */

struct Config {
    /* Context sizes (number of variables set) for the size sweeps. */
    std::vector<size_t> sizes{1, 10, 100, 1000, 10000, 100000};
    /* Samples per latency benchmark (each sample is one timed operation). */
    size_t latency_samples = 1000000;
    /* Repetitions of the multi-core benchmarks (0: --benchmark_repetitions).
     * Scaling compares two measurements, so it is the most sensitive to a
     * noisy machine and gets more repetitions than the rest. */
    int mt_repetitions = 0;
    /* Tasks per benchmark iteration of the thread-pool benchmark. */
    size_t pool_batch = 4096;
    /* Seconds spent calibrating the cycle counter against CLOCK_MONOTONIC. */
    double tsc_calibration_seconds = 0.1;
};

Config &config();

/* ---------------------------------------------------------------- sink */

/* Makes the compiler produce `value` in a register, as a reader of it would,
 * and treat memory as changed. Used instead of benchmark::DoNotOptimize:
 * google-benchmark 1.7.1 gives GCC the constraint "+m,r", which lets GCC
 * pass the variable a value was loaded from as the memory operand, so the
 * load vanished and the `__thread` get row timed an empty loop. */
template <typename T> inline void keep(T value)
{
    asm volatile("" : : "r"(value) : "memory");
}

/* ------------------------------------------------------------- threads */

/* The CPUs this process may run on (sched_getaffinity at start-up), so
 * that the harness respects `taskset` and cgroup limits. */
const std::vector<int> &cpus();

/* Pins the calling thread to cpus()[index % cpus().size()]. Returns false
 * (and leaves the thread unpinned) if the kernel refuses. */
bool pin_to_cpu_index(int index);

/* ----------------------------------------------------------- fixtures */

/* The i-th variable of the size-sweep pool, created on first need. The
 * pool is shared by every size: the context of size N holds variables
 * 0..N-1, so variable 0 (the probe) is in every context. */
cv_var_t *sweep_var(size_t i);

/* A context holding sweep variables 0..n-1 (value i+1 for variable i), not
 * entered by any thread. `which` picks one of several independently built
 * contexts of the same size, so that what one benchmark does to a context
 * cannot change another's:
 *   0, 1  the cold-get pair (alternated), also set+reset and copy: only
 *         ever used by their owner;
 *   2     lookups through the mapping API from outside (a foreign reader);
 *   3     set+reset after another thread has copied it.
 * Built once, kept for the run. Main thread only. */
enum { CTX_A = 0, CTX_B = 1, CTX_LOOKUP = 2, CTX_OBSERVED = 3 };
cv_context_t *sweep_context(size_t n, int which);

/* The variable that sized set benchmarks set: sweep variable n/2, present
 * in the context of size n. */
cv_var_t *probe_var(size_t n);

/* Which sweep variables the sized read benchmarks read: up to 16, spread
 * over the context. A variable's hash, and with it its depth in the trie,
 * comes from its address, which changes from run to run; reading one
 * variable made the cold-get figure jump by half between two runs of the
 * same binary. Cycling through several averages over depths. */
std::vector<size_t> probe_indices(size_t n);

/* Steps through a list of probes, moving on every 256 reads, so the branch
 * predictor learns each path as it would for a server that reads the same
 * few variables after every switch. */
template <typename T> class ProbeCycle
{
  public:
    explicit ProbeCycle(std::vector<T> probes) : probes_(std::move(probes))
    {
    }
    const T &current() const
    {
        return probes_[index_];
    }
    void step()
    {
        if (++reads_ == 256) {
            reads_ = 0;
            if (++index_ == probes_.size())
                index_ = 0;
        }
    }

  private:
    std::vector<T> probes_;
    size_t index_ = 0;
    unsigned reads_ = 0;
};

/* A variable that no fixture context ever holds (set+reset of an unset
 * variable inserts and then removes it). */
cv_var_t *unset_var();

/* Variables for the multi-thread and pool benchmarks, created in main()
 * before anything else so that they get the lowest cache slots: a thread
 * that reads only these never grows a per-thread cache sized for the
 * 100,000 sweep variables. */
struct CoreVars {
    cv_var_t *request_id;
    cv_var_t *user;
    cv_context_t *shared; /* holds request_id=1, user=2; never entered */
};
CoreVars &core_vars();
void init_core_vars();

/* Aborts with a message when a library call fails: a benchmark that
 * silently measured an error path would print a wrong number. */
void check(cv_status_t status, const char *what);

/* Checks a status with the failure path out of line, so it can stay in a
 * timed loop: one predicted branch. */
#define CV_CHECK(expr)                                                                             \
    do {                                                                                           \
        cv_status_t cv_check_status_ = (expr);                                                     \
        if (__builtin_expect(cv_check_status_ != CV_OK, 0))                                        \
            check(cv_check_status_, #expr);                                                        \
    } while (0)

[[noreturn]] void die(const std::string &message);

/* ------------------------------------------------------ cycle counter */

/* Ticks of the fastest serialising clock we have: rdtsc on x86-64,
 * CLOCK_MONOTONIC nanoseconds elsewhere. */
uint64_t ticks_begin();
uint64_t ticks_end();
/* Ticks per nanosecond, measured at start-up against CLOCK_MONOTONIC. */
double ticks_per_ns();
void calibrate_ticks(double seconds);
const char *ticks_source();
/* The quantum the cycle counter advances by on this machine, in ns. */
double timer_step_ns();

/* ------------------------------------------------------ registration */

/* Single-thread benchmarks come in groups; within a group every
 * implementation is registered next to the others so that the numbers a
 * ratio is made of are measured minutes apart at most. */
enum class Group { GetCached, GetCold, SetReset, Copy, Run, Switch };

void register_single_thread_benchmarks();
/* The watcher, change handler and cv_task rows of a group (callbacks.cc),
 * registered by register_single_thread_benchmarks next to the plain rows
 * they are compared with. */
void register_callback_benchmarks(Group group);
/* True while a benchmark has a switch watcher or a variable with a change
 * handler registered: the plain rows check that they measure the switch
 * path with nothing registered. */
bool callbacks_registered();
void register_noinline_benchmarks();
void register_multi_thread_benchmarks();
void register_pool_benchmarks();
void register_latency_benchmarks();
#ifdef CV_BENCH_HAVE_PYTHON
void python_init();
const char *python_version();
void register_cpython_group(Group group);
/* Hooks for latency.cc, which stays free of Python headers. begin enters a
 * small context holding the variable that get and set_reset use; end
 * leaves it. */
void cpython_latency_begin();
void cpython_latency_get();
void cpython_latency_set_reset();
void cpython_latency_end();
#endif

} // namespace cvbench

#endif
