/*
 * Entry point of the benchmark executables (ctxvars_bench with glibc
 * malloc, ctxvars_bench_jemalloc with jemalloc linked in). Our own main
 * instead of benchmark_main because the benchmarks are registered at run
 * time: the thread counts come from the CPUs this process may use, and the
 * context sizes from --cv_sizes.
 *
 * Extra flags (taken out before google-benchmark sees the rest):
 *   --cv_sizes=1,10,100      context sizes of the size sweeps
 *   --cv_latency_samples=N   timed samples per latency benchmark
 *   --cv_pool_batch=N        tasks per iteration of the pool benchmark
 *   --cv_mt_repetitions=N    repetitions of the multi-core benchmarks
 *   --cv_tsc_calibration=S   seconds spent calibrating the cycle counter
 */
#include "common.h"

#include <benchmark/benchmark.h>

#include <dlfcn.h>
#include <sys/utsname.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

using namespace cvbench;

static bool take_flag(const char *arg, const char *name, std::string *value)
{
    size_t len = std::strlen(name);
    if (std::strncmp(arg, name, len) != 0 || arg[len] != '=')
        return false;
    *value = arg + len + 1;
    return true;
}

static size_t parse_size(const std::string &text, const char *flag)
{
    char *end = nullptr;
    double v = std::strtod(text.c_str(), &end); /* accepts 1e5 */
    if (end == text.c_str() || *end || v < 1)
        die(std::string("bad value for ") + flag + ": " + text);
    return static_cast<size_t>(v);
}

static void parse_own_flags(int *argc, char **argv)
{
    Config &cfg = config();
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        std::string value;
        if (take_flag(argv[i], "--cv_sizes", &value)) {
            cfg.sizes.clear();
            size_t start = 0;
            while (start <= value.size()) {
                size_t comma = value.find(',', start);
                if (comma == std::string::npos)
                    comma = value.size();
                cfg.sizes.push_back(parse_size(value.substr(start, comma - start), "--cv_sizes"));
                start = comma + 1;
            }
        } else if (take_flag(argv[i], "--cv_latency_samples", &value)) {
            cfg.latency_samples = parse_size(value, "--cv_latency_samples");
        } else if (take_flag(argv[i], "--cv_pool_batch", &value)) {
            cfg.pool_batch = parse_size(value, "--cv_pool_batch");
        } else if (take_flag(argv[i], "--cv_mt_repetitions", &value)) {
            cfg.mt_repetitions = static_cast<int>(parse_size(value, "--cv_mt_repetitions"));
        } else if (take_flag(argv[i], "--cv_tsc_calibration", &value)) {
            cfg.tsc_calibration_seconds = std::strtod(value.c_str(), nullptr);
        } else {
            argv[out++] = argv[i];
        }
    }
    *argc = out;
    argv[out] = nullptr;
}

/* Which library actually serves malloc in this process: the jemalloc
 * executable is only worth reporting if the dynamic linker really bound
 * malloc to jemalloc. */
static std::string malloc_provider()
{
    void *sym = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info info;
    if (!sym || !dladdr(sym, &info) || !info.dli_fname)
        return "unknown";
    return info.dli_fname;
}

static std::string cpu_model()
{
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("model name", 0) == 0) {
            size_t colon = line.find(':');
            if (colon != std::string::npos)
                return line.substr(colon + 2);
        }
    }
    return "unknown";
}

int main(int argc, char **argv)
{
    parse_own_flags(&argc, argv);

    /* First, so that these variables get the smallest cache slots. */
    init_core_vars();

    /* The main thread runs every single-thread benchmark and is thread 0
     * of the multi-thread ones: keep it on one CPU for the whole run. */
    pin_to_cpu_index(0);
    calibrate_ticks(config().tsc_calibration_seconds);

#ifdef CV_BENCH_HAVE_PYTHON
    python_init();
#endif

    register_single_thread_benchmarks();
    register_latency_benchmarks();
    register_multi_thread_benchmarks();
    register_pool_benchmarks();

    std::string provider = malloc_provider();
    benchmark::AddCustomContext("cv_malloc_provider", provider);
#ifdef CV_BENCH_ALLOCATOR
    benchmark::AddCustomContext("cv_allocator", CV_BENCH_ALLOCATOR);
    if (std::strcmp(CV_BENCH_ALLOCATOR, "jemalloc") == 0 &&
        provider.find("jemalloc") == std::string::npos)
        std::fprintf(stderr, "warning: built with jemalloc but malloc comes from %s\n",
                     provider.c_str());
#endif
#ifdef CV_BENCH_HAVE_PYTHON
    benchmark::AddCustomContext("cv_cpython", python_version());
#else
    benchmark::AddCustomContext("cv_cpython", "not built (python3-embed not found)");
#endif
    benchmark::AddCustomContext("cv_cpu_model", cpu_model());
    benchmark::AddCustomContext("cv_cpus_used", std::to_string(cpus().size()));
    benchmark::AddCustomContext("cv_ticks_source", ticks_source());
    benchmark::AddCustomContext("cv_ticks_per_ns", std::to_string(ticks_per_ns()));
    benchmark::AddCustomContext("cv_timer_step_ns", std::to_string(timer_step_ns()));
    struct utsname uts;
    if (uname(&uts) == 0)
        benchmark::AddCustomContext("cv_kernel", std::string(uts.sysname) + " " + uts.release);
    benchmark::AddCustomContext("cv_compiler", __VERSION__);

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    /* No Py_Finalize: the process ends here, and finalising after the
     * benchmark threads have come and gone buys nothing. */
    return 0;
}
