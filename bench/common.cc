#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <map>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define CV_BENCH_HAVE_TSC 1
#endif

namespace cvbench
{

Config &config()
{
    static Config instance;
    return instance;
}

const std::vector<int> &cpus()
{
    static const std::vector<int> list = [] {
        std::vector<int> out;
        cpu_set_t set;
        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof(set), &set) == 0) {
            for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
                if (CPU_ISSET(cpu, &set))
                    out.push_back(cpu);
        }
        if (out.empty())
            out.push_back(0);
        return out;
    }();
    return list;
}

bool pin_to_cpu_index(int index)
{
    const std::vector<int> &list = cpus();
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(list[static_cast<size_t>(index) % list.size()], &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

[[noreturn]] void die(const std::string &message)
{
    std::fprintf(stderr, "ctxvars bench: %s\n", message.c_str());
    std::exit(1);
}

void check(cv_status_t status, const char *what)
{
    if (status != CV_OK)
        die(std::string(what) + " failed: " + cv_strerror(status));
}

/* ------------------------------------------------------------ fixtures */

static std::vector<cv_var_t *> &sweep_vars()
{
    static std::vector<cv_var_t *> vars;
    return vars;
}

cv_var_t *sweep_var(size_t i)
{
    std::vector<cv_var_t *> &vars = sweep_vars();
    while (vars.size() <= i) {
        cv_var_t *var = cv_var_new("sweep", nullptr);
        if (!var)
            die("cv_var_new: out of memory");
        vars.push_back(var);
    }
    return vars[i];
}

cv_var_t *unset_var()
{
    static cv_var_t *var = cv_var_new("never-set", nullptr);
    return var;
}

struct FillArgs {
    size_t n;
};

static void fill(void *arg)
{
    size_t n = static_cast<FillArgs *>(arg)->n;
    for (size_t i = 0; i < n; i++)
        check(cv_set(sweep_var(i), reinterpret_cast<void *>(i + 1), nullptr), "cv_set (fixture)");
}

struct VerifyArgs {
    size_t n;
    bool ok;
};

/* Checks the fixture as its owner (inside a run): a check through the
 * mapping API from outside would count as a foreign read, which the
 * library remembers for good and which changes how later sets work. */
static void verify(void *arg)
{
    auto *v = static_cast<VerifyArgs *>(arg);
    void *value = nullptr;
    for (size_t i = 0; i < v->n; i += 1 + v->n / 64)
        v->ok &= cv_get(sweep_var(i), &value) == CV_OK && value == reinterpret_cast<void *>(i + 1);
}

cv_context_t *sweep_context(size_t n, int which)
{
    static std::map<std::pair<size_t, int>, cv_context_t *> built;
    auto key = std::make_pair(n, which);
    auto it = built.find(key);
    if (it != built.end())
        return it->second;
    sweep_var(n ? n - 1 : 0); /* create the variables outside the run */
    cv_context_t *ctx = cv_context_new();
    if (!ctx)
        die("cv_context_new: out of memory");
    FillArgs args{n};
    check(cv_context_run(ctx, fill, &args), "cv_context_run (fixture)");
    VerifyArgs v{n, true};
    check(cv_context_run(ctx, verify, &v), "cv_context_run (fixture check)");
    if (!v.ok)
        die("fixture context does not hold its values");
    built[key] = ctx;
    return ctx;
}

cv_var_t *probe_var(size_t n)
{
    return sweep_var(n / 2);
}

std::vector<size_t> probe_indices(size_t n)
{
    size_t count = n < 16 ? n : 16;
    std::vector<size_t> out;
    for (size_t i = 0; i < count; i++)
        out.push_back(i * n / count);
    return out;
}

CoreVars &core_vars()
{
    static CoreVars vars;
    return vars;
}

static void set_core(void *)
{
    check(cv_set(core_vars().request_id, reinterpret_cast<void *>(1), nullptr), "cv_set");
    check(cv_set(core_vars().user, reinterpret_cast<void *>(2), nullptr), "cv_set");
}

void init_core_vars()
{
    CoreVars &v = core_vars();
    v.request_id = cv_var_new("request_id", nullptr);
    v.user = cv_var_new("user", nullptr);
    v.shared = cv_context_new();
    if (!v.request_id || !v.user || !v.shared)
        die("out of memory creating the core variables");
    check(cv_context_run(v.shared, set_core, nullptr), "cv_context_run");
}

/* ------------------------------------------------------- cycle counter */

static double g_ticks_per_ns = 1.0;

static uint64_t monotonic_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

#ifdef CV_BENCH_HAVE_TSC
/* lfence before and after rdtsc at the start keeps the timed operation
 * from starting before the read or earlier work from leaking into it;
 * rdtscp at the end waits for the operation's instructions to retire. */
uint64_t ticks_begin()
{
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
}

uint64_t ticks_end()
{
    unsigned aux;
    uint64_t t = __rdtscp(&aux);
    _mm_lfence();
    return t;
}

const char *ticks_source()
{
    return "rdtsc";
}
#else
uint64_t ticks_begin()
{
    return monotonic_ns();
}

uint64_t ticks_end()
{
    return monotonic_ns();
}

const char *ticks_source()
{
    return "clock_gettime(CLOCK_MONOTONIC)";
}
#endif

void calibrate_ticks(double seconds)
{
#ifdef CV_BENCH_HAVE_TSC
    uint64_t ns0 = monotonic_ns(), t0 = ticks_begin();
    uint64_t wait = static_cast<uint64_t>(seconds * 1e9);
    while (monotonic_ns() - ns0 < wait) {
    }
    uint64_t ns1 = monotonic_ns(), t1 = ticks_end();
    g_ticks_per_ns = static_cast<double>(t1 - t0) / static_cast<double>(ns1 - ns0);
#else
    (void)seconds;
    g_ticks_per_ns = 1.0;
#endif
}

double timer_step_ns()
{
    /* Some VMs advance the counter in coarse steps (a multiple of some
     * quantum q), which caps the resolution of every sample. The quantum is
     * the largest q that divides nearly all (99%) differences between
     * successive readings; 1 tick on ordinary hardware. */
    std::vector<uint64_t> deltas;
    uint64_t prev = ticks_begin();
    for (size_t i = 0; i < 100000; i++) {
        uint64_t t = ticks_begin();
        if (t != prev)
            deltas.push_back(t - prev);
        prev = t;
    }
    uint64_t quantum = 1;
    for (uint64_t q = 2; q <= 1000 && !deltas.empty(); q++) {
        size_t divisible = 0;
        for (uint64_t d : deltas)
            divisible += d % q == 0;
        if (divisible * 100 >= deltas.size() * 99)
            quantum = q;
    }
    return static_cast<double>(quantum) / g_ticks_per_ns;
}

double ticks_per_ns()
{
    return g_ticks_per_ns;
}

} // namespace cvbench
