/*
 * The C++ wrapper (ctxvars.hpp): handles, guards, runs, captured tasks
 * and flow suppression, with exceptions thrown through all of them.
 *
 * cmocka from C++: its header declares its functions without extern "C",
 * so it is included inside one here, and ctxvars.hpp before it, whose
 * code must not meet cmocka's function-like macros (fail, skip, ...).
 * cmocka reports a failed assertion by longjmp out of the test, which
 * skips the destructors of the test's objects: a failure is reported
 * correctly, but later tests may then run with leftover state (an entered
 * context, a set variable). An exception that escapes a test is caught by
 * its wrapper and reported as a failure, so that it never unwinds through
 * cmocka's C frames. Threads other than the main one assert nothing;
 * they hand their observations back.
 */
#include <ctxvars.hpp>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include <cmocka.h>
}

#include "run_selected.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define GROUP_NAME "test_cpp"

namespace
{

int one = 1, two = 2, three = 3;

struct test_failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/* The status of the ctxvars::error that `f` throws, or -1 if it throws
 * nothing. */
template <class F> int status_thrown(F &&f)
{
    try {
        f();
    } catch (const ctxvars::error &e) {
        return e.status();
    }
    return -1;
}

bool is_current(const ctxvars::context &ctx)
{
    return cv_context_current() == ctx.native_handle();
}

/* ------------------------------------------------------------ errors */

void test_cpp_error_carries_status()
{
    ctxvars::context ctx;
    ctxvars::context_scope scope(ctx);
    try {
        ctxvars::context_scope again(ctx);
        fail_msg("entering an entered context did not throw");
    } catch (const ctxvars::error &e) {
        assert_int_equal(e.status(), CV_EBUSY);
        assert_true(e.code() == ctxvars::make_error_code(CV_EBUSY));
        assert_true(&e.code().category() == &ctxvars::category());
        assert_true(e.code() == std::errc::device_or_resource_busy);
        assert_non_null(std::strstr(e.what(), "cv_context_enter"));
        assert_non_null(std::strstr(e.what(), cv_strerror(CV_EBUSY)));
    }
    assert_true(is_current(ctx));
}

void test_cpp_error_category()
{
    const std::error_category &category = ctxvars::category();
    assert_string_equal(category.name(), "ctxvars");
    assert_string_equal(category.message(CV_ETOKEN_USED).c_str(), cv_strerror(CV_ETOKEN_USED));
    assert_non_null(std::strstr(category.message(1000).c_str(), "1000"));
    assert_true(ctxvars::make_error_code(CV_EINVAL) == std::errc::invalid_argument);
    assert_true(ctxvars::make_error_code(CV_ENOMEM) == std::errc::not_enough_memory);
    assert_false(ctxvars::make_error_code(CV_ENOVALUE) == std::errc::invalid_argument);
    /* A ctxvars::error is a std::system_error and a std::runtime_error. */
    try {
        throw ctxvars::error(CV_ENOVALUE);
    } catch (const std::runtime_error &e) {
        assert_string_equal(e.what(), cv_strerror(CV_ENOVALUE));
    }
}

/* --------------------------------------------------------- variables */

void test_cpp_var_typed_get_set()
{
    ctxvars::var<int> number("number", &one);
    assert_string_equal(number.name(), "number");
    assert_ptr_equal(number.get().value(), &one); /* the default */
    assert_ptr_equal(number.value(), &one);
    assert_ptr_equal(number.get_or(&three), &three); /* not the default */

    ctxvars::token<int> first = number.set(&two);
    assert_ptr_equal(number.value(), &two);
    assert_ptr_equal(number.get_or(&three), &two);
    assert_false(first.used());
    assert_false(first.old_value().has_value()); /* MISSING */

    ctxvars::token<int> second = number.set(nullptr); /* an ordinary value */
    assert_true(number.get().has_value());
    assert_null(*number.get());
    assert_ptr_equal(second.old_value().value(), &two);

    number.reset(second);
    assert_true(second.used());
    assert_ptr_equal(number.value(), &two);
    number.reset(first);
    assert_ptr_equal(number.value(), &one);
    assert_false(ctxvars::context::current().contains(number));

    assert_int_equal(status_thrown([&] { number.reset(first); }), CV_ETOKEN_USED);
    ctxvars::var<int> other("other");
    ctxvars::token<int> foreign = other.set(&one);
    assert_int_equal(status_thrown([&] { number.reset(foreign); }), CV_ETOKEN_VAR);
    other.reset(foreign);
}

void test_cpp_var_without_default()
{
    ctxvars::var<const char> name("name");
    assert_false(name.get().has_value());
    assert_int_equal(status_thrown([&] { name.value(); }), CV_ENOVALUE);
    assert_null(name.get_or(nullptr));
    ctxvars::token<const char> t = name.set("alice");
    assert_string_equal(name.value(), "alice");
    name.reset(t);
    assert_false(name.get().has_value());
}

void test_cpp_var_untyped_and_options()
{
    cv_var_opts_t options{};
    options.default_value = &three;
    options.has_default = true;
    ctxvars::var<void> raw("raw", options);
    assert_ptr_equal(raw.value(), &three);
    ctxvars::scoped_set set(raw, &one);
    assert_ptr_equal(raw.value(), &one);
    void *out = nullptr;
    assert_int_equal(cv_get(raw.native_handle(), &out), CV_OK);
    assert_ptr_equal(out, &one);
    assert_int_equal(status_thrown([] { ctxvars::var<void> unnamed(nullptr); }), CV_EINVAL);
}

void test_cpp_var_and_token_move()
{
    ctxvars::var<int> a("a");
    ctxvars::token<int> t = a.set(&one);
    ctxvars::var<int> b(std::move(a));
    assert_string_equal(b.name(), "a");
    assert_ptr_equal(b.value(), &one);

    ctxvars::token<int> moved(std::move(t));
    assert_true(t.used()); /* the moved-from token is empty */
    assert_false(moved.used());
    ctxvars::token<int> assigned;
    assigned = std::move(moved);
    b.reset(assigned);
    assert_false(b.get().has_value());

    ctxvars::var<int> c("c");
    c = std::move(b);
    assert_string_equal(c.name(), "a");
}

void test_cpp_token_discarded_not_reset()
{
    ctxvars::var<int> v("v");
    ctxvars::context ctx;
    {
        ctxvars::context_scope scope(ctx);
        {
            ctxvars::token<int> t = v.set(&one);
        }
        /* A token going out of scope drops itself; the set stays. */
        assert_ptr_equal(v.value(), &one);
        ctxvars::token<int> t = v.set(&two);
        t.discard();
        assert_true(t.used());
        assert_int_equal(status_thrown([&] { v.reset(t); }), CV_ETOKEN_USED);
    }
    assert_ptr_equal(*ctx.get(v), &two);
    assert_false(v.get().has_value());
}

/* -------------------------------------------------------- scoped_set */

void test_cpp_scoped_set_resets_on_normal_exit()
{
    ctxvars::var<int> v("v", &three);
    {
        ctxvars::scoped_set set(v, &one);
        assert_ptr_equal(v.value(), &one);
    }
    assert_ptr_equal(v.value(), &three);
    assert_false(ctxvars::context::current().contains(v)); /* removed, not set to the default */
}

void test_cpp_scoped_set_resets_on_exception()
{
    ctxvars::var<int> v("v");
    ctxvars::token<int> outer = v.set(&one);
    try {
        ctxvars::scoped_set set(v, &two);
        throw test_failure("boom");
    } catch (const test_failure &) {
        assert_ptr_equal(v.value(), &one);
    }
    v.reset(outer);
}

void test_cpp_scoped_sets_nest()
{
    ctxvars::var<int> v("v");
    ctxvars::var<int> w("w");
    {
        ctxvars::scoped_set a(v, &one);
        {
            ctxvars::scoped_set b(v, &two);
            ctxvars::scoped_set c(w, &three);
            {
                ctxvars::scoped_set d(v, nullptr);
                assert_null(v.value());
            }
            assert_ptr_equal(v.value(), &two);
            assert_ptr_equal(w.value(), &three);
        }
        assert_ptr_equal(v.value(), &one);
        assert_false(w.get().has_value());
    }
    assert_false(v.get().has_value());
}

void test_cpp_scoped_set_outliving_its_context_is_discarded()
{
    ctxvars::var<int> v("v");
    ctxvars::context ctx;
    std::optional<ctxvars::scoped_set> set;
    {
        ctxvars::context_scope scope(ctx);
        set.emplace(v, &one);
    }
    /* Destroyed in another context than its own: no reset, no throw. */
    set.reset();
    assert_false(v.get().has_value());
    assert_ptr_equal(ctx.at(v), &one);
}

/* ----------------------------------------------------- context_scope */

void test_cpp_context_scope_enters_and_exits()
{
    ctxvars::var<int> v("v");
    ctxvars::context before = ctxvars::context::current();
    ctxvars::context ctx;
    {
        ctxvars::context_scope scope(ctx);
        assert_true(is_current(ctx));
        v.set(&one);
        {
            /* A temporary: the scope keeps its own reference. */
            ctxvars::context_scope inner(ctxvars::context::copy_current());
            assert_false(is_current(ctx));
            assert_ptr_equal(v.value(), &one);
            v.set(&two);
        }
        assert_ptr_equal(v.value(), &one);
    }
    assert_true(is_current(before));
    assert_false(v.get().has_value());
    assert_ptr_equal(ctx.at(v), &one);
}

void test_cpp_context_scope_exits_on_exception()
{
    ctxvars::context before = ctxvars::context::current();
    ctxvars::context ctx;
    try {
        ctxvars::context_scope scope(ctx);
        throw test_failure("boom");
    } catch (const test_failure &) {
        assert_true(is_current(before));
    }
    /* Exited: enterable again. */
    ctxvars::context_scope again(ctx);
    assert_true(is_current(ctx));
}

void test_cpp_context_scope_failures()
{
    ctxvars::context moved;
    ctxvars::context taker(std::move(moved));
    assert_false(static_cast<bool>(moved));
    assert_int_equal(status_thrown([&] { ctxvars::context_scope scope(moved); }), CV_EINVAL);
    /* The thread's base context is entered by its thread. */
    ctxvars::context base = ctxvars::context::current();
    int status = -1;
    std::thread thief([&] { status = status_thrown([&] { ctxvars::context_scope scope(base); }); });
    thief.join();
    assert_int_equal(status, CV_EBUSY);
}

/* --------------------------------------------------------------- run */

void test_cpp_run_results()
{
    ctxvars::var<int> v("v");
    ctxvars::context ctx;
    int answer = ctx.run([&] {
        v.set(&two);
        return 42;
    });
    assert_int_equal(answer, 42);
    assert_ptr_equal(ctx.at(v), &two); /* the set landed in ctx */
    assert_false(v.get().has_value());

    bool called = false;
    ctxvars::run(ctx, [&] { called = true; });
    assert_true(called);

    auto prefix = [](const char *s, int n) { return std::string(s, n); };
    std::string text = ctxvars::run(ctx, prefix, "hello", 4);
    assert_string_equal(text.c_str(), "hell");

    int target = 0;
    int &ref = ctxvars::run(ctx, [&]() -> int & { return target; });
    assert_ptr_equal(&ref, &target);

    /* Any callable: a function pointer, a member pointer. */
    struct counter {
        int n = 0;
        int bump()
        {
            return ++n;
        }
    } c;
    assert_int_equal(ctxvars::run(ctx, &counter::bump, c), 1);
    int (*twice)(int) = [](int x) { return x * 2; };
    assert_int_equal(ctxvars::run(ctx, twice, 21), 42);
}

void test_cpp_run_move_only_callable()
{
    ctxvars::context ctx;
    auto owned = std::make_unique<int>(7);
    auto task = [p = std::move(owned)](std::unique_ptr<int> extra) mutable {
        return std::make_unique<int>(*p + *extra);
    };
    std::unique_ptr<int> sum = ctx.run(std::move(task), std::make_unique<int>(5));
    assert_int_equal(*sum, 12);

    /* Invoked as forwarded: an rvalue-only call operator is fine. */
    struct once {
        int operator()() &&
        {
            return 3;
        }
    };
    assert_int_equal(ctxvars::run(ctx, once{}), 3);
}

void test_cpp_run_propagates_exceptions()
{
    ctxvars::var<int> v("v");
    ctxvars::context before = ctxvars::context::current();
    ctxvars::context ctx;
    try {
        ctx.run([&] {
            v.set(&one);
            throw test_failure("from inside");
        });
        fail_msg("the exception was lost");
    } catch (const test_failure &e) {
        assert_string_equal(e.what(), "from inside");
        assert_true(is_current(before));
    }
    assert_ptr_equal(ctx.at(v), &one); /* sets before the throw stay, as in Python */
    assert_false(v.get().has_value());

    /* Through nested runs, each exited on the way out. */
    ctxvars::context outer;
    try {
        outer.run([&] {
            ctxvars::scoped_set set(v, &two);
            ctx.run([] { throw std::out_of_range("deep"); });
        });
    } catch (const std::out_of_range &e) {
        assert_string_equal(e.what(), "deep");
    }
    assert_true(is_current(before));
    assert_false(outer.contains(v)); /* the scoped_set was undone in outer */
    /* Neither is left entered. */
    assert_int_equal(ctxvars::run(ctx, [] { return 1; }) + ctxvars::run(outer, [] { return 1; }),
                     2);
}

void test_cpp_run_busy_and_misuse()
{
    ctxvars::context ctx;
    bool called = false;
    assert_int_equal(status_thrown([&] { ctx.run([&] { ctx.run([&] { called = true; }); }); }),
                     CV_EBUSY);
    assert_false(called);

    /* A run that leaves a context entered reports it, after exiting it. */
    ctxvars::context left;
    ctxvars::context before = ctxvars::context::current();
    cv_status_t entered = CV_EINVAL;
    assert_int_equal(
        status_thrown([&] { ctx.run([&] { entered = cv_context_enter(left.native_handle()); }); }),
        CV_ENOTCURRENT);
    assert_int_equal(entered, CV_OK);
    assert_true(is_current(before));
    ctxvars::context_scope enterable(left);

    ctxvars::context empty = ctxvars::context::adopt(nullptr);
    assert_int_equal(status_thrown([&] { empty.run([] {}); }), CV_EINVAL);
    assert_int_equal(status_thrown([&] { empty.copy(); }), CV_EINVAL);
}

/* ----------------------------------------------------------- context */

void test_cpp_context_handles()
{
    ctxvars::var<int> v("v");
    ctxvars::scoped_set set(v, &one);

    ctxvars::context current = ctxvars::context::current();
    assert_true(is_current(current));
    ctxvars::context shared = current; /* the same context */
    assert_ptr_equal(shared.native_handle(), current.native_handle());

    ctxvars::context copy = ctxvars::context::copy_current();
    ctxvars::context captured = ctxvars::context::capture();
    assert_ptr_not_equal(copy.native_handle(), current.native_handle());
    assert_true(copy == current);
    assert_true(captured == current);
    assert_ptr_equal(*copy.get(v), &one);

    ctxvars::context independent = copy.copy();
    independent.run([&] { v.set(&two); });
    assert_true(independent != copy);
    assert_ptr_equal(copy.at(v), &one);
    assert_ptr_equal(independent.at(v), &two);

    ctxvars::context fresh;
    assert_true(fresh.empty());
    assert_int_equal(fresh.size(), 0);
    assert_false(fresh.get(v).has_value());
    assert_int_equal(status_thrown([&] { fresh.at(v); }), CV_ENOVALUE);
    assert_int_equal(copy.size(), 1);

    /* Assignment shares, swap exchanges, detach and adopt hand a
     * reference over. */
    fresh = copy;
    assert_ptr_equal(fresh.native_handle(), copy.native_handle());
    swap(fresh, independent);
    assert_ptr_equal(independent.native_handle(), copy.native_handle());
    cv_context_t *raw = independent.detach();
    assert_false(static_cast<bool>(independent));
    ctxvars::context back = ctxvars::context::adopt(raw);
    ctxvars::context again = ctxvars::context::retain(raw);
    assert_ptr_equal(back.native_handle(), again.native_handle());
}

void test_cpp_context_iteration()
{
    ctxvars::var<int> a("a"), b("b"), c("c");
    ctxvars::context ctx;
    ctx.run([&] {
        a.set(&one);
        b.set(&two);
        c.set(nullptr);
    });

    std::set<std::pair<cv_var_t *, void *>> seen;
    for (auto [variable, value] : ctx)
        seen.emplace(variable, value);
    std::set<std::pair<cv_var_t *, void *>> expected{
        {a.native_handle(), &one}, {b.native_handle(), &two}, {c.native_handle(), nullptr}};
    assert_true(seen == expected);

    /* The iterator reads a snapshot taken by begin(). */
    ctxvars::context::iterator it = ctx.begin();
    ctx.run([&] {
        a.set(&three);
        b.set(&three);
        c.set(&three);
    });
    int count = 0;
    for (; it != ctx.end(); ++it) {
        count++;
        if (it->is(b))
            assert_ptr_equal(it->value_of(b), &two);
    }
    assert_int_equal(count, 3);

    /* A standard input range. */
    assert_int_equal(
        std::count_if(ctx.begin(), ctx.end(),
                      [&](const ctxvars::context::item &i) { return i.value == &three; }),
        3);
    ctxvars::context empty;
    assert_true(empty.begin() == empty.end());
    std::vector<ctxvars::context::item> items(ctx.begin(), ctx.end());
    assert_int_equal(items.size(), 3);
}

/* -------------------------------------------------- captured, wrap */

/* A thread pool of one: runs the std::function it is given on a thread
 * of its own (started without a copy of anyone's context). */
void run_on_thread(const std::function<void()> &task)
{
    std::thread worker(task);
    worker.join();
}

void test_cpp_captured_on_another_thread()
{
    ctxvars::var<const char> request("request");
    ctxvars::scoped_set set(request, "req-42");

    struct observations {
        std::optional<const char *> before, after_set, after_task;
        bool threw = false;
    } seen;
    std::function<void()> task = ctxvars::wrap([&] {
        seen.before = request.get();
        request.set("changed-by-task");
        seen.after_set = request.get();
    });
    run_on_thread([&] {
        try {
            task();
        } catch (...) {
            seen.threw = true;
        }
        seen.after_task = request.get(); /* the worker's own context */
    });
    assert_false(seen.threw);
    assert_string_equal(seen.before.value(), "req-42");
    assert_string_equal(seen.after_set.value(), "changed-by-task");
    assert_false(seen.after_task.has_value());
    assert_string_equal(request.value(), "req-42"); /* no leak back */

    /* std::thread takes a wrapper directly. */
    std::optional<const char *> direct;
    std::thread t(ctxvars::wrap([&] { direct = request.get(); }));
    t.join();
    assert_string_equal(direct.value(), "req-42");
}

void test_cpp_captured_copies_run_at_once()
{
    ctxvars::var<int> v("v");
    ctxvars::var<int> mine("mine");
    ctxvars::scoped_set set(v, &one);
    constexpr int threads = 4;
    std::atomic<int> inside{0};
    std::atomic<int> bad{0};
    int slots[threads];
    std::function<void(int)> task = ctxvars::wrap([&](int i) {
        if (v.get_or(nullptr) != &one || mine.get().has_value())
            bad++;
        mine.set(&slots[i]);
        /* Wait until every copy is inside its call at the same time; a
         * bound, so that a copy failing to start fails the test instead of
         * hanging it. */
        inside++;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (inside.load() < threads && std::chrono::steady_clock::now() < deadline)
            std::this_thread::yield();
        if (mine.get_or(nullptr) != &slots[i])
            bad++;
    });
    std::vector<std::thread> workers;
    std::atomic<int> threw{0};
    for (int i = 0; i < threads; i++)
        workers.emplace_back([task, i, &threw] {
            try {
                task(i);
            } catch (...) {
                threw++;
            }
        });
    for (std::thread &w : workers)
        w.join();
    assert_int_equal(threw.load(), 0);
    assert_int_equal(bad.load(), 0);
    assert_false(mine.get().has_value());
}

void test_cpp_captured_calls_start_from_capture()
{
    ctxvars::var<int> counter("counter", &one);
    auto task = ctxvars::wrap([&] {
        int *before = counter.value();
        counter.set(&two);
        return before;
    });
    ctxvars::scoped_set later(counter, &three); /* after the capture: not seen */
    assert_ptr_equal(task(), &one);
    assert_ptr_equal(task(), &one); /* the first call's set stayed in its copy */
    assert_false(task.context().contains(counter));
    assert_ptr_equal(counter.value(), &three);

    const auto &const_task = task;
    assert_ptr_equal(const_task(), &one);
}

void test_cpp_captured_move_only_and_exceptions()
{
    ctxvars::var<int> v("v");
    ctxvars::context before = ctxvars::context::current();
    ctxvars::scoped_set set(v, &one);
    auto owned = std::make_unique<int>(5);
    auto task =
        ctxvars::wrap([p = std::move(owned), &v](int add) { return *p + add + *v.value(); });
    static_assert(!std::is_copy_constructible_v<decltype(task)>);
    auto moved = std::move(task);
    assert_int_equal(std::move(moved)(2), 8);

    auto throwing = ctxvars::wrap(
        [](const std::string &message) -> int { throw std::invalid_argument(message); });
    try {
        throwing("bad task");
        fail_msg("the exception was lost");
    } catch (const std::invalid_argument &e) {
        assert_string_equal(e.what(), "bad task");
    }
    assert_true(is_current(before));
}

/* --------------------------------------------------- flow suppression */

void test_cpp_flow_suppression()
{
    ctxvars::var<int> v("v");
    ctxvars::scoped_set set(v, &one);
    assert_false(ctxvars::flow_suppressed());
    std::optional<std::function<std::optional<int *>()>> suppressed;
    {
        ctxvars::flow_suppression guard;
        assert_true(ctxvars::flow_suppressed());
        {
            ctxvars::flow_suppression nested;
            assert_true(ctxvars::flow_suppressed());
        }
        assert_true(ctxvars::flow_suppressed());
        suppressed = ctxvars::wrap([&] { return v.get(); });
        assert_true(ctxvars::context::capture().empty());
        /* The thread's own values are untouched, and so are plain copies. */
        assert_ptr_equal(v.value(), &one);
        assert_true(ctxvars::context::copy_current().contains(v));
    }
    assert_false(ctxvars::flow_suppressed());
    assert_false((*suppressed)().has_value());

    auto flowing = ctxvars::wrap([&] { return v.get(); });
    assert_ptr_equal(flowing().value(), &one);
}

/* Exceptions must not unwind through cmocka's C frames. */
template <void (*Test)()> void guarded(void **state)
{
    (void)state;
    char escaped[256] = "";
    try {
        Test();
    } catch (const std::exception &e) {
        std::snprintf(escaped, sizeof(escaped), "%s", e.what());
    } catch (...) {
        std::snprintf(escaped, sizeof(escaped), "an exception of unknown type");
    }
    if (escaped[0])
        fail_msg("escaped the test: %s", escaped);
}

} // namespace

static struct CMUnitTest cpp_test(const char *name, CMUnitTestFunction function)
{
    struct CMUnitTest test = {};
    test.name = name;
    test.test_func = function;
    return test;
}

#define CPP_TEST(f) cpp_test(#f, guarded<f>)

int main()
{
    struct CMUnitTest tests[] = {
        CPP_TEST(test_cpp_error_carries_status),
        CPP_TEST(test_cpp_error_category),
        CPP_TEST(test_cpp_var_typed_get_set),
        CPP_TEST(test_cpp_var_without_default),
        CPP_TEST(test_cpp_var_untyped_and_options),
        CPP_TEST(test_cpp_var_and_token_move),
        CPP_TEST(test_cpp_token_discarded_not_reset),
        CPP_TEST(test_cpp_scoped_set_resets_on_normal_exit),
        CPP_TEST(test_cpp_scoped_set_resets_on_exception),
        CPP_TEST(test_cpp_scoped_sets_nest),
        CPP_TEST(test_cpp_scoped_set_outliving_its_context_is_discarded),
        CPP_TEST(test_cpp_context_scope_enters_and_exits),
        CPP_TEST(test_cpp_context_scope_exits_on_exception),
        CPP_TEST(test_cpp_context_scope_failures),
        CPP_TEST(test_cpp_run_results),
        CPP_TEST(test_cpp_run_move_only_callable),
        CPP_TEST(test_cpp_run_propagates_exceptions),
        CPP_TEST(test_cpp_run_busy_and_misuse),
        CPP_TEST(test_cpp_context_handles),
        CPP_TEST(test_cpp_context_iteration),
        CPP_TEST(test_cpp_captured_on_another_thread),
        CPP_TEST(test_cpp_captured_copies_run_at_once),
        CPP_TEST(test_cpp_captured_calls_start_from_capture),
        CPP_TEST(test_cpp_captured_move_only_and_exceptions),
        CPP_TEST(test_cpp_flow_suppression),
    };
    return cv_test_run_selected(GROUP_NAME, tests, sizeof(tests) / sizeof(tests[0]));
}
