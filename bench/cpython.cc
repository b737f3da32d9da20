/*
 * CPython's own contextvars, driven through its C API: the system whose
 * semantics ctxvars implements, and the reference the DESIGN.md ratios are
 * taken against. Built only when pkg-config finds python3-embed.
 *
 * The interpreter is initialised once, in main, and the main thread keeps
 * the GIL for the whole run: every benchmark here is single-thread and
 * runs on the main thread (google-benchmark runs thread 0 of a benchmark
 * on the calling thread), and no other thread ever touches Python.
 *
 * Each benchmark mirrors its ctxvars twin in single.cc (same names with
 * "cpython" as the implementation, same method); see there for the cold
 * get method. Values are Python ints: PyContextVar_Get returns a new
 * reference, which a C caller must drop, so the Py_DECREF is part of a get.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "common.h"

#include <benchmark/benchmark.h>

#include <map>

namespace cvbench
{

static std::string sized(const char *name, size_t n)
{
    return std::string(name) + "/vars:" + std::to_string(n);
}

[[noreturn]] static void py_die(const char *what)
{
    if (PyErr_Occurred())
        PyErr_Print();
    die(std::string("CPython: ") + what + " failed");
}

void python_init()
{
    Py_InitializeEx(0); /* 0: leave signal handlers to the harness */
    if (!Py_IsInitialized())
        die("Py_InitializeEx failed");
}

const char *python_version()
{
    return PY_VERSION;
}

static PyObject *py_vars_value(size_t i)
{
    PyObject *v = PyLong_FromSize_t(i + 1);
    if (!v)
        py_die("PyLong_FromSize_t");
    return v;
}

/* The Python twin of sweep_var(i). */
static PyObject *py_sweep_var(size_t i)
{
    static std::vector<PyObject *> vars;
    while (vars.size() <= i) {
        PyObject *var = PyContextVar_New("sweep", nullptr);
        if (!var)
            py_die("PyContextVar_New");
        vars.push_back(var);
    }
    return vars[i];
}

static PyObject *py_unset_var()
{
    static PyObject *var = PyContextVar_New("never-set", nullptr);
    return var;
}

static void py_enter(PyObject *ctx)
{
    if (PyContext_Enter(ctx) != 0)
        py_die("PyContext_Enter");
}

static void py_exit(PyObject *ctx)
{
    if (PyContext_Exit(ctx) != 0)
        py_die("PyContext_Exit");
}

static void py_set_discard(PyObject *var, PyObject *value)
{
    PyObject *token = PyContextVar_Set(var, value);
    if (!token)
        py_die("PyContextVar_Set");
    Py_DECREF(token);
}

/* The twin of sweep_context(n, which). */
static PyObject *py_sweep_context(size_t n, int which)
{
    static std::map<std::pair<size_t, int>, PyObject *> built;
    auto key = std::make_pair(n, which);
    auto it = built.find(key);
    if (it != built.end())
        return it->second;
    py_sweep_var(n ? n - 1 : 0);
    PyObject *ctx = PyContext_New();
    if (!ctx)
        py_die("PyContext_New");
    py_enter(ctx);
    for (size_t i = 0; i < n; i++) {
        PyObject *value = py_vars_value(i);
        py_set_discard(py_sweep_var(i), value);
        Py_DECREF(value);
    }
    py_exit(ctx);
    built[key] = ctx;
    return ctx;
}

/* The twins of probe_var(n) and of the read probes. */
static PyObject *py_probe_var(size_t n)
{
    return py_sweep_var(n / 2);
}

static ProbeCycle<PyObject *> py_probes(size_t n)
{
    std::vector<PyObject *> list;
    for (size_t i : probe_indices(n))
        list.push_back(py_sweep_var(i));
    return ProbeCycle<PyObject *>(std::move(list));
}

/* A fresh context holding `var` = value. */
static PyObject *py_small_context(PyObject *var, long value)
{
    PyObject *ctx = PyContext_New();
    if (!ctx)
        py_die("PyContext_New");
    PyObject *v = PyLong_FromLong(value);
    py_enter(ctx);
    py_set_discard(var, v);
    py_exit(ctx);
    Py_DECREF(v);
    return ctx;
}

static PyObject *py_request_id()
{
    static PyObject *var = PyContextVar_New("request_id", nullptr);
    return var;
}

/* ------------------------------------------------------------------ get */

static inline PyObject *py_get(PyObject *var)
{
    PyObject *value = nullptr;
    if (__builtin_expect(PyContextVar_Get(var, nullptr, &value) != 0, 0))
        py_die("PyContextVar_Get");
    return value;
}

static void get_cached_cpython(benchmark::State &state)
{
    PyObject *var = py_request_id();
    PyObject *ctx = py_small_context(var, 1);
    py_enter(ctx);
    Py_XDECREF(py_get(var)); /* fills the variable's cache */
    for (auto _ : state) {
        PyObject *value = py_get(var);
        keep(value);
        Py_XDECREF(value);
    }
    py_exit(ctx);
    Py_DECREF(ctx);
}

static void get_cold_cpython(benchmark::State &state, size_t n)
{
    PyObject *a = py_sweep_context(n, 0), *b = py_sweep_context(n, 1);
    ProbeCycle<PyObject *> cycle = py_probes(n);
    size_t found = 0;
    while (state.KeepRunningBatch(2)) {
        PyObject *var = cycle.current();
        py_enter(a);
        PyObject *value = py_get(var);
        found += value != nullptr;
        Py_XDECREF(value);
        py_exit(a);
        py_enter(b);
        value = py_get(var);
        found += value != nullptr;
        Py_XDECREF(value);
        py_exit(b);
        cycle.step();
    }
    if (found != static_cast<size_t>(state.iterations()))
        state.SkipWithError("cold PyContextVar_Get found nothing");
}

static void enter_exit_ab_cpython(benchmark::State &state, size_t n)
{
    PyObject *a = py_sweep_context(n, 0), *b = py_sweep_context(n, 1);
    while (state.KeepRunningBatch(2)) {
        py_enter(a);
        benchmark::ClobberMemory();
        py_exit(a);
        py_enter(b);
        benchmark::ClobberMemory();
        py_exit(b);
    }
}

/* The mapping API's lookup, ctx[var]: a full lookup with no cache. */
static void lookup_cpython(benchmark::State &state, size_t n)
{
    PyObject *a = py_sweep_context(n, 0);
    ProbeCycle<PyObject *> cycle = py_probes(n);
    for (auto _ : state) {
        PyObject *value = PyObject_GetItem(a, cycle.current());
        if (__builtin_expect(!value, 0))
            py_die("Context.__getitem__");
        keep(value);
        Py_DECREF(value);
        cycle.step();
    }
}

/* ------------------------------------------------------------ set+reset */

static void set_reset_cpython(benchmark::State &state, size_t n, bool var_was_set)
{
    PyObject *ctx = py_sweep_context(n, 0);
    PyObject *var = var_was_set ? py_probe_var(n) : py_unset_var();
    PyObject *value = PyLong_FromLong(42);
    py_enter(ctx);
    for (auto _ : state) {
        PyObject *token = PyContextVar_Set(var, value);
        if (__builtin_expect(!token || PyContextVar_Reset(var, token) != 0, 0))
            py_die("PyContextVar_Set/Reset");
        Py_DECREF(token);
    }
    py_exit(ctx);
    Py_DECREF(value);
}

static void set_reset_after_copy_cpython(benchmark::State &state, size_t n)
{
    PyObject *ctx = py_sweep_context(n, 0);
    PyObject *var = py_probe_var(n);
    PyObject *value = PyLong_FromLong(42);
    py_enter(ctx);
    for (auto _ : state) {
        PyObject *copy = PyContext_CopyCurrent();
        PyObject *token = PyContextVar_Set(var, value);
        if (__builtin_expect(!copy || !token || PyContextVar_Reset(var, token) != 0, 0))
            py_die("PyContext_CopyCurrent/PyContextVar_Set/Reset");
        Py_DECREF(token);
        Py_DECREF(copy);
    }
    py_exit(ctx);
    Py_DECREF(value);
}

/* ----------------------------------------------------------------- copy */

static void copy_cpython(benchmark::State &state, size_t n)
{
    PyObject *ctx = py_sweep_context(n, 0);
    py_enter(ctx);
    for (auto _ : state) {
        PyObject *copy = PyContext_CopyCurrent();
        if (__builtin_expect(!copy, 0))
            py_die("PyContext_CopyCurrent");
        keep(copy);
        Py_DECREF(copy);
    }
    py_exit(ctx);
}

/* ------------------------------------------------------- run and switch */

/* CPython has no C-level run(fn): Context.run is a Python-level call. Its
 * C API runs code in a context with PyContext_Enter/Exit, which is what
 * Context.run does inside, so enter+exit is CPython's row for both run and
 * enter+exit. */
static void enter_exit_cpython(benchmark::State &state)
{
    PyObject *ctx = py_small_context(py_request_id(), 1);
    for (auto _ : state) {
        py_enter(ctx);
        py_exit(ctx);
    }
    Py_DECREF(ctx);
}

static void switch_cpython(benchmark::State &state)
{
    PyObject *var = py_request_id();
    PyObject *a = py_small_context(var, 1), *b = py_small_context(var, 7);
    long sum = 0;
    py_enter(a);
    while (state.KeepRunningBatch(2)) {
        py_exit(a);
        py_enter(b);
        PyObject *value = py_get(var);
        sum += PyLong_AsLong(value);
        Py_DECREF(value);
        py_exit(b);
        py_enter(a);
        value = py_get(var);
        sum += PyLong_AsLong(value);
        Py_DECREF(value);
    }
    py_exit(a);
    if (sum != static_cast<long>(state.iterations() / 2) * 8)
        state.SkipWithError("a task saw the other task's value");
    Py_DECREF(a);
    Py_DECREF(b);
}

/* ---------------------------------------------------------- latency */

/* Used by latency.cc through these two hooks, so that file needs no
 * Python headers. */
static PyObject *latency_ctx, *latency_value;

void cpython_latency_begin()
{
    latency_ctx = py_small_context(py_request_id(), 1);
    latency_value = PyLong_FromLong(42);
    py_enter(latency_ctx);
    Py_XDECREF(py_get(py_request_id()));
}

void cpython_latency_get()
{
    Py_XDECREF(py_get(py_request_id()));
}

void cpython_latency_set_reset()
{
    PyObject *token = PyContextVar_Set(py_request_id(), latency_value);
    if (__builtin_expect(!token || PyContextVar_Reset(py_request_id(), token) != 0, 0))
        py_die("PyContextVar_Set/Reset");
    Py_DECREF(token);
}

void cpython_latency_end()
{
    py_exit(latency_ctx);
    Py_DECREF(latency_ctx);
    Py_DECREF(latency_value);
}

void register_cpython_group(Group group)
{
    const std::vector<size_t> &sizes = config().sizes;
    switch (group) {
    case Group::GetCached:
        benchmark::RegisterBenchmark("get_cached/cpython", get_cached_cpython);
        break;
    case Group::GetCold:
        for (size_t n : sizes) {
            benchmark::RegisterBenchmark(sized("get_cold/cpython", n).c_str(), get_cold_cpython, n);
            benchmark::RegisterBenchmark(sized("enter_exit_ab/cpython", n).c_str(),
                                         enter_exit_ab_cpython, n);
            benchmark::RegisterBenchmark(sized("lookup/cpython", n).c_str(), lookup_cpython, n);
        }
        break;
    case Group::SetReset:
        for (size_t n : sizes) {
            benchmark::RegisterBenchmark(sized("set_reset/cpython", n).c_str(), set_reset_cpython,
                                         n, true);
            benchmark::RegisterBenchmark(sized("set_reset_unset/cpython", n).c_str(),
                                         set_reset_cpython, n, false);
            benchmark::RegisterBenchmark(sized("set_reset_after_copy/cpython", n).c_str(),
                                         set_reset_after_copy_cpython, n);
        }
        break;
    case Group::Copy:
        for (size_t n : sizes)
            benchmark::RegisterBenchmark(sized("copy/cpython", n).c_str(), copy_cpython, n);
        break;
    case Group::Run:
        benchmark::RegisterBenchmark("enter_exit/cpython", enter_exit_cpython);
        break;
    case Group::Switch:
        benchmark::RegisterBenchmark("switch/cpython", switch_cpython);
        break;
    }
}

} // namespace cvbench
