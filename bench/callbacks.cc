/*
 * What switch watchers, change handlers and cv_task cost, single thread,
 * registered next to the plain rows of single.cc so that the ratios the
 * report prints are made of numbers measured in the same run, minutes
 * apart at most:
 *
 *   run_watcher/ctxvars          run/ctxvars with one switch watcher
 *                                registered (it counts its calls)
 *   run_handler_changes/ctxvars  run/ctxvars with one variable that has a
 *                                change handler, whose value the switch
 *                                changes: two handler calls per run
 *   run_handler_agree/ctxvars    the same, both contexts hold the same
 *                                value: two lookups per switch, no call
 *   run_handler_absent/ctxvars   the same, neither context holds the
 *                                variable: what a handler registered by
 *                                someone else costs every switch
 *   set_reset_handler/ctxvars    set_reset/ctxvars/vars:1 on a variable
 *                                with a change handler (two calls)
 *   copy_run_release/ctxvars     cv_copy_context, cv_context_run,
 *                                cv_context_release of an empty function
 *   task/ctxvars                 the same through cv_task_init and
 *                                cv_task_run
 *
 * Every registration lives in the benchmark function that makes it (RAII
 * below) and is undone before the function returns (cv_watcher_remove,
 * cv_var_release), so the rows measured after it see nothing registered:
 * with anything registered every switch of the process takes the slow
 * path, and a leaked watcher would make the plain rows measure that.
 * callbacks_registered() lets the plain rows check it.
 *
 * The run rows switch from the thread's base context to a context holding
 * request_id and user (plus the handled variable), exactly as run/ctxvars
 * does; the handled variable's value in the base context is set with a
 * token and reset at the end.
 */
#include "common.h"

#include <benchmark/benchmark.h>

namespace cvbench
{

static int live_registrations;

bool callbacks_registered()
{
    return live_registrations != 0;
}

static void count_switch(cv_switch_event_t, cv_context_t *, cv_context_t *, void *data)
{
    ++*static_cast<uint64_t *>(data);
}

static void count_change(const cv_change_t *, void *data)
{
    ++*static_cast<uint64_t *>(data);
}

/* A switch watcher that counts its calls, registered for its lifetime. */
class Watcher
{
  public:
    explicit Watcher(uint64_t *calls)
    {
        check(cv_watcher_add(count_switch, calls, &id_), "cv_watcher_add");
        live_registrations++;
    }
    ~Watcher()
    {
        check(cv_watcher_remove(id_), "cv_watcher_remove");
        live_registrations--;
    }
    Watcher(const Watcher &) = delete;
    Watcher &operator=(const Watcher &) = delete;

  private:
    int id_ = -1;
};

/* A variable whose change handler counts its calls; released (which
 * unregisters the handler) at the end of its scope. */
class HandledVar
{
  public:
    explicit HandledVar(uint64_t *calls)
    {
        cv_var_opts_t opts{};
        opts.on_change = count_change;
        opts.on_change_data = calls;
        var_ = cv_var_new("handled", &opts);
        if (!var_)
            die("cv_var_new: out of memory");
        live_registrations++;
    }
    ~HandledVar()
    {
        cv_var_release(var_);
        live_registrations--;
    }
    HandledVar(const HandledVar &) = delete;
    HandledVar &operator=(const HandledVar &) = delete;
    cv_var_t *get() const
    {
        return var_;
    }

  private:
    cv_var_t *var_;
};

/* single.cc's empty_task: the function every run row runs. */
static void empty_fn(void *arg)
{
    keep(arg);
}

struct SetArgs {
    cv_var_t *var;
    void *value;
};

static void set_fn(void *p)
{
    auto *args = static_cast<SetArgs *>(p);
    CV_CHECK(cv_set(args->var, args->value, nullptr));
}

/* run/ctxvars' context: request_id and user, private to the caller. */
static cv_context_t *request_context()
{
    cv_context_t *ctx = cv_context_copy(core_vars().shared);
    if (!ctx)
        die("cv_context_copy: out of memory");
    return ctx;
}

/* ------------------------------------------------------------ watcher */

static void run_watcher_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = request_context();
    uint64_t calls = 0;
    {
        Watcher watcher(&calls);
        for (auto _ : state)
            CV_CHECK(cv_context_run(ctx, empty_fn, nullptr));
    }
    uint64_t expected = 2 * static_cast<uint64_t>(state.iterations());
    /* Removed: a run now must not call it. */
    CV_CHECK(cv_context_run(ctx, empty_fn, nullptr));
    if (calls != expected)
        state.SkipWithError("the watcher was not called twice per run, or after its removal");
    cv_context_release(ctx);
}

/* ------------------------------------------------------------ handler */

enum class Handled { Changes, Agree, Absent };

static void run_handler_ctxvars(benchmark::State &state, Handled which)
{
    uint64_t calls = 0;
    HandledVar var(&calls);
    cv_context_t *ctx = request_context();
    cv_token_t base_token{};
    if (which != Handled::Absent) {
        /* The base context (the "from" of the run) holds 1; the run's
         * context 2 (a change at every switch) or 1 too (no change). */
        CV_CHECK(cv_set(var.get(), reinterpret_cast<void *>(1), &base_token));
        SetArgs args{var.get(), reinterpret_cast<void *>(which == Handled::Changes ? 2 : 1)};
        CV_CHECK(cv_context_run(ctx, set_fn, &args));
    }
    calls = 0;
    for (auto _ : state)
        CV_CHECK(cv_context_run(ctx, empty_fn, nullptr));
    uint64_t expected =
        which == Handled::Changes ? 2 * static_cast<uint64_t>(state.iterations()) : 0;
    if (calls != expected)
        state.SkipWithError(which == Handled::Changes
                                ? "the handler was not called twice per run"
                                : "the handler was called for a switch that changed nothing");
    if (which != Handled::Absent)
        CV_CHECK(cv_reset(var.get(), &base_token));
    cv_context_release(ctx);
}

/* set_reset/ctxvars/vars:1 (a private context of one variable, entered,
 * set to 42 and reset) on a variable with a handler. */
static void set_reset_handler_ctxvars(benchmark::State &state)
{
    uint64_t calls = 0;
    HandledVar var(&calls);
    cv_context_t *ctx = cv_context_new();
    if (!ctx)
        die("cv_context_new: out of memory");
    SetArgs args{var.get(), reinterpret_cast<void *>(1)};
    CV_CHECK(cv_context_run(ctx, set_fn, &args));
    CV_CHECK(cv_context_enter(ctx));
    calls = 0;
    for (auto _ : state) {
        cv_token_t token;
        CV_CHECK(cv_set(var.get(), reinterpret_cast<void *>(42), &token));
        CV_CHECK(cv_reset(var.get(), &token));
    }
    void *value = nullptr;
    if (cv_get(var.get(), &value) != CV_OK || value != reinterpret_cast<void *>(1))
        state.SkipWithError("set+reset did not restore the variable");
    else if (calls != 2 * static_cast<uint64_t>(state.iterations()))
        state.SkipWithError("the handler was not called once per set and once per reset");
    CV_CHECK(cv_context_exit(ctx));
    cv_context_release(ctx);
}

/* -------------------------------------------------------------- tasks */

/* Reads request_id into *arg: checks, outside the timed loop, that a task
 * runs in the submitter's context. */
static void read_request_id(void *arg)
{
    *static_cast<void **>(arg) = cv_get_or(core_vars().request_id, nullptr);
}

static void check_capture(benchmark::State &state, bool through_task)
{
    void *seen = nullptr;
    if (through_task) {
        cv_task_t task;
        CV_CHECK(cv_task_init(&task, read_request_id, &seen));
        CV_CHECK(cv_task_run(&task));
    } else {
        cv_context_t *copy = cv_copy_context();
        CV_CHECK(cv_context_run(copy, read_request_id, &seen));
        cv_context_release(copy);
    }
    if (seen != reinterpret_cast<void *>(1))
        state.SkipWithError("the task did not run in the submitter's context");
}

/* Capture, run an empty function in the capture, release it: what an
 * executor does per task, by hand. The thread's current context is
 * run/ctxvars' (request_id and user), entered. */
static void copy_run_release_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = request_context();
    CV_CHECK(cv_context_enter(ctx));
    for (auto _ : state) {
        cv_context_t *copy = cv_copy_context();
        CV_CHECK(cv_context_run(copy, empty_fn, nullptr));
        cv_context_release(copy);
    }
    check_capture(state, false);
    CV_CHECK(cv_context_exit(ctx));
    cv_context_release(ctx);
}

/* The same through the executor helper. */
static void task_ctxvars(benchmark::State &state)
{
    cv_context_t *ctx = request_context();
    CV_CHECK(cv_context_enter(ctx));
    for (auto _ : state) {
        cv_task_t task;
        CV_CHECK(cv_task_init(&task, empty_fn, nullptr));
        CV_CHECK(cv_task_run(&task));
    }
    check_capture(state, true);
    CV_CHECK(cv_context_exit(ctx));
    cv_context_release(ctx);
}

/* --------------------------------------------------------- registration */

void register_callback_benchmarks(Group group)
{
    switch (group) {
    case Group::SetReset:
        benchmark::RegisterBenchmark("set_reset_handler/ctxvars", set_reset_handler_ctxvars);
        break;
    case Group::Run:
        benchmark::RegisterBenchmark("run_watcher/ctxvars", run_watcher_ctxvars);
        benchmark::RegisterBenchmark("run_handler_changes/ctxvars", run_handler_ctxvars,
                                     Handled::Changes);
        benchmark::RegisterBenchmark("run_handler_agree/ctxvars", run_handler_ctxvars,
                                     Handled::Agree);
        benchmark::RegisterBenchmark("run_handler_absent/ctxvars", run_handler_ctxvars,
                                     Handled::Absent);
        benchmark::RegisterBenchmark("copy_run_release/ctxvars", copy_run_release_ctxvars);
        benchmark::RegisterBenchmark("task/ctxvars", task_ctxvars);
        break;
    default:
        break;
    }
}

} // namespace cvbench
