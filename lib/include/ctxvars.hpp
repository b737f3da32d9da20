/**
 * @file ctxvars.hpp
 * C++17 wrapper for ctxvars (<ctxvars.h>): owning handles, scope guards
 * and exception-safe runs. Header-only; needs only the C library and the
 * standard library, and exceptions enabled.
 *
 * Errors: a C call that fails with CV_ENOMEM throws std::bad_alloc, as
 * standard containers do; any other failing status throws ctxvars::error,
 * which carries the cv_status_t. A constructor of the C API that returns
 * NULL is reported as std::bad_alloc. Destructors never throw.
 *
 * Handles (ctxvars::context, ctxvars::var, ctxvars::token) own one reference, or one
 * token, and release it when destroyed. A moved-from handle holds nothing
 * and may only be assigned to or destroyed. Like std::shared_ptr, a
 * `const` handle can still change what it refers to: const applies to the
 * handle, not to the context's contents. As with std::shared_ptr, distinct
 * handles of one context may be used on different threads at once.
 *
 * Guards (ctxvars::scoped_set, ctxvars::context_scope, ctxvars::flow_suppression) act
 * on the thread that constructs them and must be destroyed on that
 * thread, in reverse order of construction, as a std::lock_guard is.
 *
 * Callables run through ctxvars::run or ctxvars::captured never unwind through the
 * library's C frames: an exception is caught at the C boundary, the C call
 * returns (restoring the caller's context) and the exception is rethrown
 * to the caller. Thread cancellation (pthread_cancel) inside such a
 * callable is not supported: its forced unwind cannot cross C frames.
 */
#ifndef CV_CTXVARS_HPP
#define CV_CTXVARS_HPP

#include <ctxvars.h>

#include <cstddef>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace ctxvars
{

namespace detail
{

/** The std::error_category behind ctxvars::category(). */
class status_category final : public std::error_category
{
  public:
    const char *name() const noexcept override
    {
        return "ctxvars";
    }

    std::string message(int code) const override
    {
        /* Converting an int outside the enumeration's range to the enum
         * type is undefined in C++, so unknown codes stop here. */
        if (code < CV_OK || code > CV_ENOTCURRENT)
            return "unknown ctxvars status " + std::to_string(code);
        return cv_strerror(static_cast<cv_status_t>(code));
    }

    std::error_condition default_error_condition(int code) const noexcept override
    {
        switch (code) {
        case CV_ENOMEM:
            return std::make_error_condition(std::errc::not_enough_memory);
        case CV_EINVAL:
            return std::make_error_condition(std::errc::invalid_argument);
        case CV_EBUSY:
            return std::make_error_condition(std::errc::device_or_resource_busy);
        default:
            return std::error_condition(code, *this);
        }
    }
};

} // namespace detail

/**
 * The error category of cv_status_t values, named "ctxvars". Its
 * messages are cv_strerror's; CV_ENOMEM, CV_EINVAL and CV_EBUSY compare
 * equal to std::errc::not_enough_memory, invalid_argument and
 * device_or_resource_busy.
 */
inline const std::error_category &category() noexcept
{
    /* Never destroyed: destructors of other statics, a thread pool's at
     * exit say, may still throw ctxvars::error. */
    static const detail::status_category *const instance = new detail::status_category;
    return *instance;
}

/** A std::error_code for `status` in ctxvars::category(). */
inline std::error_code make_error_code(cv_status_t status) noexcept
{
    return std::error_code(static_cast<int>(status), category());
}

/**
 * Thrown when a C call fails with a status other than CV_ENOMEM (which
 * throws std::bad_alloc). what() names the C function, when given, and
 * the status.
 */
class error : public std::system_error
{
  public:
    explicit error(cv_status_t status) : std::system_error(make_error_code(status)), status_(status)
    {
    }

    /** @param status the status the C call returned.
     *  @param call the C function that failed, named by what(). */
    error(cv_status_t status, const char *call)
        : std::system_error(make_error_code(status), call), status_(status)
    {
    }

    /** The status the C call returned. */
    cv_status_t status() const noexcept
    {
        return status_;
    }

  private:
    cv_status_t status_;
};

namespace detail
{

[[noreturn]] inline void throw_status(cv_status_t status, const char *call)
{
    if (status == CV_ENOMEM)
        throw std::bad_alloc();
    throw error(status, call);
}

inline void throw_if_failed(cv_status_t status, const char *call)
{
    if (status != CV_OK)
        throw_status(status, call);
}

inline cv_context_t *not_null(cv_context_t *ctx)
{
    if (!ctx)
        throw std::bad_alloc();
    return ctx;
}

/* Values cross the C API as void *; a var<const T> stores const T *. */
template <class T> void *to_void(T *value) noexcept
{
    return const_cast<void *>(static_cast<const volatile void *>(value));
}

/* Keeps a parameter out of template argument deduction, so that
 * scoped_set(v, nullptr) deduces T from `v` alone (std::type_identity in
 * C++20). */
template <class T> struct identity {
    using type = T;
};
template <class T> using identity_t = typename identity<T>::type;

/* Where a run's result waits while cv_context_run returns through C. */
template <class R> class result_slot
{
  public:
    template <class Call> void fill(Call &call)
    {
        value_.emplace(call());
    }
    R take()
    {
        return std::move(*value_);
    }

  private:
    std::optional<R> value_;
};

template <class R> class result_slot<R &>
{
  public:
    template <class Call> void fill(Call &call)
    {
        value_ = std::addressof(call());
    }
    R &take() noexcept
    {
        return *value_;
    }

  private:
    R *value_ = nullptr;
};

template <class R> class result_slot<R &&>
{
  public:
    template <class Call> void fill(Call &call)
    {
        R &&value = call();
        value_ = std::addressof(value);
    }
    R &&take() noexcept
    {
        return static_cast<R &&>(*value_);
    }

  private:
    R *value_ = nullptr;
};

template <> class result_slot<void>
{
  public:
    template <class Call> void fill(Call &call)
    {
        call();
    }
    void take() noexcept
    {
    }
};

template <class Call, class R> struct run_frame {
    Call &call;
    result_slot<R> result;
    std::exception_ptr thrown;
};

/* The function cv_context_run calls: nothing may unwind out of it. */
template <class Frame> void trampoline(void *arg) noexcept
{
    Frame &frame = *static_cast<Frame *>(arg);
    try {
        frame.result.fill(frame.call);
    } catch (...) {
        frame.thrown = std::current_exception();
    }
}

template <class F, class... Args>
std::invoke_result_t<F, Args...> run_in(cv_context_t *ctx, F &&f, Args &&...args)
{
    using result_type = std::invoke_result_t<F, Args...>;
    auto call = [&]() -> result_type {
        return std::invoke(std::forward<F>(f), std::forward<Args>(args)...);
    };
    using frame_type = run_frame<decltype(call), result_type>;
    frame_type frame{call, {}, {}};
    cv_status_t status = cv_context_run(ctx, &trampoline<frame_type>, &frame);
    /* The callable's own exception says more than CV_ENOTCURRENT, the only
     * status a run that called it can return. */
    if (frame.thrown)
        std::rethrow_exception(frame.thrown);
    throw_if_failed(status, "cv_context_run");
    return frame.result.take();
}

} // namespace detail

template <class T> class var;

/**
 * The token of one set of a ctxvars::var<T>, for var<T>::reset (Python's
 * Token). Move-only. Destroying a token that was not used discards it
 * (cv_token_discard): the set stays. To undo a set on scope exit, use
 * ctxvars::scoped_set.
 */
template <class T> class token
{
  public:
    /** An empty token, already used. */
    token() noexcept = default;

    token(token &&other) noexcept : token_(std::exchange(other.token_, cv_token_t{}))
    {
    }

    token &operator=(token &&other) noexcept
    {
        if (this != &other) {
            cv_token_discard(&token_);
            token_ = std::exchange(other.token_, cv_token_t{});
        }
        return *this;
    }

    token(const token &) = delete;
    token &operator=(const token &) = delete;

    ~token()
    {
        cv_token_discard(&token_);
    }

    /** The value before the set; std::nullopt for MISSING (there was none,
     * Python's Token.MISSING) and for an empty token. */
    std::optional<T *> old_value() const noexcept
    {
        void *out;
        if (!cv_token_old_value(&token_, &out))
            return std::nullopt;
        return static_cast<T *>(out);
    }

    /** True once reset or discarded, and for an empty token. */
    bool used() const noexcept
    {
        return cv_token_used(&token_);
    }

    /** Drops the token without resetting (cv_token_discard). */
    void discard() noexcept
    {
        cv_token_discard(&token_);
    }

    /** The C token, for the C API. */
    cv_token_t *native_handle() noexcept
    {
        return &token_;
    }

  private:
    friend class var<T>;
    cv_token_t token_{};
};

/**
 * An owning handle of a context variable whose values are `T *` (Python's
 * ContextVar); var<void> holds untyped pointers. nullptr is an ordinary
 * value, distinct from "no value". Move-only; the destructor drops the
 * creator's reference (cv_var_release), and the variable must outlive the
 * tokens and scoped_sets made from it.
 */
template <class T> class var
{
    static_assert(!std::is_reference_v<T> && !std::is_function_v<T>,
                  "ctxvars::var<T> holds T *: T must be an object type or void");

  public:
    /** A variable without a default (var.get() raises LookupError).
     * @throws ctxvars::error CV_EINVAL if `name` is null; std::bad_alloc */
    explicit var(const char *name) : var(name, cv_var_opts_t{})
    {
    }

    /** A variable whose get() falls back to `default_value`, which the
     * caller keeps alive. @throws ctxvars::error CV_EINVAL if `name` is null;
     * std::bad_alloc */
    var(const char *name, T *default_value) : var(name, default_options(default_value))
    {
    }

    /** A variable with the C options: default, retain/release hooks,
     * change handler. @throws ctxvars::error CV_EINVAL if `name` is null;
     * std::bad_alloc */
    var(const char *name, const cv_var_opts_t &options) : var_(make(name, options))
    {
    }

    var(var &&other) noexcept : var_(std::exchange(other.var_, nullptr))
    {
    }

    var &operator=(var &&other) noexcept
    {
        if (this != &other) {
            cv_var_release(var_);
            var_ = std::exchange(other.var_, nullptr);
        }
        return *this;
    }

    var(const var &) = delete;
    var &operator=(const var &) = delete;

    ~var()
    {
        cv_var_release(var_);
    }

    /** The name given at construction. */
    const char *name() const noexcept
    {
        return cv_var_name(var_);
    }

    /** The value in the current context, else the default, else
     * std::nullopt. Lock-free; allocates nothing. */
    std::optional<T *> get() const noexcept
    {
        void *out;
        if (cv_get(var_, &out) != CV_OK)
            return std::nullopt;
        return static_cast<T *>(out);
    }

    /** Like get(), as Python's var.get(): @throws ctxvars::error CV_ENOVALUE
     * when there is neither a value nor a default. */
    T *value() const
    {
        void *out;
        detail::throw_if_failed(cv_get(var_, &out), "cv_get");
        return static_cast<T *>(out);
    }

    /** The value in the current context, else `fallback`; the default is
     * not consulted (Python's var.get(fallback)). */
    T *get_or(T *fallback) const noexcept
    {
        return static_cast<T *>(cv_get_or(var_, detail::to_void(fallback)));
    }

    /** Sets the variable in the current context; the token can undo it.
     * @throws std::bad_alloc (nothing changed); ctxvars::error CV_EBUSY inside a
     * change handler or switch watcher */
    token<T> set(T *value) const
    {
        token<T> result;
        detail::throw_if_failed(cv_set(var_, detail::to_void(value), &result.token_), "cv_set");
        return result;
    }

    /** Undoes the set that made `used_token` (Python's var.reset).
     * @throws ctxvars::error CV_ETOKEN_USED, CV_ETOKEN_VAR, CV_ETOKEN_CONTEXT (the
     * current context is not the one of the set); std::bad_alloc (nothing
     * changed, the token stays live) */
    void reset(token<T> &used_token) const
    {
        detail::throw_if_failed(cv_reset(var_, &used_token.token_), "cv_reset");
    }

    /** The C variable, for the C API; still owned by this object. */
    cv_var_t *native_handle() const noexcept
    {
        return var_;
    }

  private:
    static cv_var_opts_t default_options(T *default_value) noexcept
    {
        cv_var_opts_t options{};
        options.default_value = detail::to_void(default_value);
        options.has_default = true;
        return options;
    }

    static cv_var_t *make(const char *name, const cv_var_opts_t &options)
    {
        if (!name)
            throw error(CV_EINVAL, "cv_var_new");
        cv_var_t *made = cv_var_new(name, &options);
        if (!made)
            throw std::bad_alloc();
        return made;
    }

    cv_var_t *var_;
};

/**
 * A reference-counted handle of a context (Python's Context). Copying
 * the handle shares the context (cv_context_retain), as assigning a
 * Context does in Python; copy() makes an independent context.
 */
class context
{
  public:
    /** One (variable, value) pair of a context. */
    struct item {
        cv_var_t *variable;
        void *value;

        /** Whether this pair is the value of `v`. */
        template <class T> bool is(const ctxvars::var<T> &v) const noexcept
        {
            return variable == v.native_handle();
        }

        /** The value as `v`'s type; only meaningful when is(v). */
        template <class T> T *value_of(const ctxvars::var<T> &) const noexcept
        {
            return static_cast<T *>(value);
        }
    };

    /**
     * Input iterator over a snapshot of the context taken by begin():
     * later sets do not show. Copies share one position, as input
     * iterators do; the snapshot lives until the last copy is destroyed.
     */
    class iterator
    {
      public:
        using iterator_category = std::input_iterator_tag;
        using value_type = item;
        using difference_type = std::ptrdiff_t;
        using pointer = const item *;
        using reference = const item &;

        /** The end iterator. */
        iterator() noexcept = default;

        reference operator*() const noexcept
        {
            return current_;
        }

        pointer operator->() const noexcept
        {
            return &current_;
        }

        iterator &operator++() noexcept
        {
            advance();
            return *this;
        }

        iterator operator++(int) noexcept
        {
            iterator before = *this;
            advance();
            return before;
        }

        friend bool operator==(const iterator &a, const iterator &b) noexcept
        {
            return a.walk_ == b.walk_;
        }

        friend bool operator!=(const iterator &a, const iterator &b) noexcept
        {
            return !(a == b);
        }

      private:
        friend class context;

        struct walk {
            explicit walk(cv_context_t *ctx) noexcept
            {
                cv_context_iter_init(&it, ctx);
            }
            walk(const walk &) = delete;
            walk &operator=(const walk &) = delete;
            ~walk()
            {
                cv_context_iter_fini(&it);
            }
            cv_context_iter_t it;
        };

        explicit iterator(cv_context_t *ctx) : walk_(std::make_shared<walk>(ctx))
        {
            advance();
        }

        /* At the end the walk is dropped, so an exhausted iterator equals
         * end(). */
        void advance() noexcept
        {
            if (!cv_context_iter_next(&walk_->it, &current_.variable, &current_.value))
                walk_.reset();
        }

        std::shared_ptr<walk> walk_;
        item current_{};
    };

    /** A new, empty context (Python's Context()). @throws std::bad_alloc */
    context() : ctx_(detail::not_null(cv_context_new()))
    {
    }

    /** Takes over one reference the caller owns (nullptr: a handle that
     * holds nothing). */
    static context adopt(cv_context_t *ctx) noexcept
    {
        return context(ctx);
    }

    /** Takes a new reference to `ctx`, which the caller keeps (nullptr: a
     * handle that holds nothing). */
    static context retain(cv_context_t *ctx) noexcept
    {
        cv_context_retain(ctx);
        return context(ctx);
    }

    /** The calling thread's current context itself (not a copy).
     * @throws std::bad_alloc if the thread's base context cannot be made */
    static context current()
    {
        return retain(detail::not_null(cv_context_current()));
    }

    /** A copy of the current context, O(1) (Python's copy_context()).
     * @throws std::bad_alloc */
    static context copy_current()
    {
        return context(detail::not_null(cv_copy_context()));
    }

    /** The context to hand to work that runs elsewhere: a copy of the
     * current context, or an empty one while this thread has flow
     * suppressed (cv_capture_context). @throws std::bad_alloc */
    static context capture()
    {
        return context(detail::not_null(cv_capture_context()));
    }

    context(const context &other) noexcept : ctx_(other.ctx_)
    {
        cv_context_retain(ctx_);
    }

    context(context &&other) noexcept : ctx_(std::exchange(other.ctx_, nullptr))
    {
    }

    /* By value: one operator serves copy and move assignment, and self
     * assignment is safe. */
    context &operator=(context other) noexcept
    {
        swap(other);
        return *this;
    }

    ~context()
    {
        cv_context_release(ctx_);
    }

    void swap(context &other) noexcept
    {
        std::swap(ctx_, other.ctx_);
    }

    friend void swap(context &a, context &b) noexcept
    {
        a.swap(b);
    }

    /** An independent copy, O(1), from any thread, even while the context
     * is entered and written elsewhere (Python's ctx.copy()).
     * @throws ctxvars::error CV_EINVAL for a handle that holds nothing;
     * std::bad_alloc */
    context copy() const
    {
        if (!ctx_)
            throw error(CV_EINVAL, "cv_context_copy");
        return context(detail::not_null(cv_context_copy(ctx_)));
    }

    /** Calls std::invoke(f, args...) in this context and returns its result
     * (Python's ctx.run); see ctxvars::run. */
    template <class F, class... Args>
    std::invoke_result_t<F, Args...> run(F &&f, Args &&...args) const
    {
        return detail::run_in(ctx_, std::forward<F>(f), std::forward<Args>(args)...);
    }

    /** The value of `v` in this context, std::nullopt if it has none;
     * defaults are not consulted (Python's ctx.get(var)). */
    template <class T> std::optional<T *> get(const var<T> &v) const noexcept
    {
        void *out;
        if (cv_context_get(ctx_, v.native_handle(), &out) != CV_OK)
            return std::nullopt;
        return static_cast<T *>(out);
    }

    /** Like get() (Python's ctx[var]): @throws ctxvars::error CV_ENOVALUE if
     * the context holds no value for `v` */
    template <class T> T *at(const var<T> &v) const
    {
        void *out;
        detail::throw_if_failed(cv_context_get(ctx_, v.native_handle(), &out), "cv_context_get");
        return static_cast<T *>(out);
    }

    /** Whether the context holds a value for `v` (Python's `var in ctx`). */
    template <class T> bool contains(const var<T> &v) const noexcept
    {
        return cv_context_contains(ctx_, v.native_handle());
    }

    /** The number of variables with a value (Python's len(ctx)). */
    std::size_t size() const noexcept
    {
        return cv_context_len(ctx_);
    }

    bool empty() const noexcept
    {
        return size() == 0;
    }

    /** Starts an iteration over a snapshot of the context.
     * @throws std::bad_alloc */
    iterator begin() const
    {
        return iterator(ctx_);
    }

    iterator end() const noexcept
    {
        return iterator();
    }

    /** Same variables with the same values, compared as pointers (Python's
     * ctx1 == ctx2); compare native_handle() for identity. */
    friend bool operator==(const context &a, const context &b) noexcept
    {
        return cv_context_equal(a.ctx_, b.ctx_);
    }

    friend bool operator!=(const context &a, const context &b) noexcept
    {
        return !(a == b);
    }

    /** Whether the handle holds a context (false once moved from). */
    explicit operator bool() const noexcept
    {
        return ctx_ != nullptr;
    }

    /** The C context, for the C API; still owned by this handle. */
    cv_context_t *native_handle() const noexcept
    {
        return ctx_;
    }

    /** Gives the handle's reference to the caller, who must release it;
     * the handle then holds nothing (std::unique_ptr::release). */
    cv_context_t *detach() noexcept
    {
        return std::exchange(ctx_, nullptr);
    }

  private:
    explicit context(cv_context_t *ctx) noexcept : ctx_(ctx)
    {
    }

    cv_context_t *ctx_;
};

/**
 * Runs std::invoke(f, args...) in `ctx` (cv_context_run) and returns its
 * result, void and references included. `f` may be any callable,
 * move-only ones too; it is invoked as forwarded. Sets inside land in
 * `ctx`; the caller's context is restored however the call ends. An
 * exception thrown by `f` is caught before it reaches the C frames and
 * rethrown here, after `ctx` has been exited; sets made before the throw
 * stay in `ctx`, as in Python.
 * @throws ctxvars::error CV_EBUSY if `ctx` is entered by any thread (f is not
 * called), CV_EINVAL for a handle that holds nothing, CV_ENOTCURRENT if f
 * returned leaving contexts entered (the run exited them; the result is
 * lost); whatever `f` throws
 */
template <class F, class... Args>
std::invoke_result_t<F, Args...> run(const context &ctx, F &&f, Args &&...args)
{
    return detail::run_in(ctx.native_handle(), std::forward<F>(f), std::forward<Args>(args)...);
}

/**
 * Sets a variable for the rest of a scope: set on construction, reset on
 * destruction. Guards nest, and the innermost is undone first, whether
 * the scope ends normally or by an exception.
 *
 * The destructor never throws. If the reset fails there (the guard is
 * destroyed in another context than the one it set in, e.g. after a
 * cv_context_exit of that context; memory ran out for the reset's copy;
 * or it runs inside a change handler), it discards the token instead:
 * the value then stays set in the context the set was made in. The
 * variable must outlive the guard.
 */
class scoped_set
{
  public:
    /** Sets `v` to `value` in the current context.
     * @throws std::bad_alloc (nothing changed); ctxvars::error CV_EBUSY inside a
     * change handler or switch watcher */
    template <class T>
    scoped_set(const var<T> &v, detail::identity_t<T *> value)
        : scoped_set(v.native_handle(), detail::to_void(value))
    {
    }

    /** The same for a C variable. @throws ctxvars::error CV_EINVAL if `v` is
     * null; as above */
    scoped_set(cv_var_t *v, void *value) : var_(v)
    {
        detail::throw_if_failed(cv_set(v, value, &token_), "cv_set");
    }

    scoped_set(const scoped_set &) = delete;
    scoped_set &operator=(const scoped_set &) = delete;

    ~scoped_set()
    {
        if (cv_reset(var_, &token_) != CV_OK)
            cv_token_discard(&token_);
    }

  private:
    cv_var_t *var_;
    cv_token_t token_{};
};

/**
 * Enters a context for the rest of a scope (cv_context_enter) and exits
 * it on destruction, normally or by an exception. Holds a reference to
 * the context meanwhile, so a temporary will do.
 *
 * The destructor never throws. If the exit fails there (the context is no
 * longer the thread's current one, because of scopes mis-nested with raw
 * cv_context_enter / cv_context_exit or a destruction on another thread;
 * or it runs inside a change handler or switch watcher), the thread's
 * context stack is left as it is.
 */
class context_scope
{
  public:
    /** @throws ctxvars::error CV_EBUSY if `ctx` is already entered, here or on
     * another thread; CV_EINVAL for a handle that holds nothing;
     * std::bad_alloc */
    explicit context_scope(context ctx) : ctx_(std::move(ctx))
    {
        detail::throw_if_failed(cv_context_enter(ctx_.native_handle()), "cv_context_enter");
    }

    context_scope(const context_scope &) = delete;
    context_scope &operator=(const context_scope &) = delete;

    ~context_scope()
    {
        (void)cv_context_exit(ctx_.native_handle());
    }

  private:
    context ctx_;
};

/**
 * A callable bound to the context current where it was made (.NET's
 * ExecutionContext flow, Python's copy_context() + ctx.run for a task):
 * the submitter's values follow the task to whatever thread calls it.
 *
 * Construction captures the context (cv_capture_context: empty while
 * flow is suppressed). The captured context is never entered itself:
 * every call runs `f` in a fresh O(1) copy of it (one allocation), so the
 * call sees the submitter's values as of the capture, its own sets last
 * for that call only, and neither the caller, the submitter nor the next
 * call sees them. As the library copies a context from any number of
 * threads at once, a captured<F> may be copied freely and called from
 * several threads at once, as std::function and thread pools do: copies
 * of the wrapper share the captured context (a reference count, no copy)
 * and no call meets CV_EBUSY. A task that must keep its sets across calls
 * runs with ctxvars::run in a context of its own instead.
 *
 * Copyable when F is, movable when F is. Exceptions from `f` propagate as
 * in ctxvars::run.
 */
template <class F> class captured
{
  public:
    /** Captures the current context. @throws std::bad_alloc */
    explicit captured(F f) : ctx_(ctxvars::context::capture()), f_(std::move(f))
    {
    }

    /** Calls f(args...) in a copy of the captured context.
     * @throws std::bad_alloc; whatever f throws */
    template <class... Args> std::invoke_result_t<F &, Args...> operator()(Args &&...args) &
    {
        return call(f_, std::forward<Args>(args)...);
    }

    template <class... Args>
    std::invoke_result_t<const F &, Args...> operator()(Args &&...args) const &
    {
        return call(f_, std::forward<Args>(args)...);
    }

    template <class... Args> std::invoke_result_t<F, Args...> operator()(Args &&...args) &&
    {
        return call(std::move(f_), std::forward<Args>(args)...);
    }

    /** The captured context, which calls copy. */
    const ctxvars::context &context() const noexcept
    {
        return ctx_;
    }

  private:
    template <class G, class... Args> decltype(auto) call(G &&g, Args &&...args) const
    {
        ctxvars::context fresh = ctx_.copy();
        return detail::run_in(fresh.native_handle(), std::forward<G>(g),
                              std::forward<Args>(args)...);
    }

    ctxvars::context ctx_;
    F f_;
};

/** captured<F> for `f`, capturing the current context now:
 * `pool.submit(ctxvars::wrap([] { ... }))`, `std::thread(ctxvars::wrap(fn))`.
 * @throws std::bad_alloc */
template <class F> captured<std::decay_t<F>> wrap(F &&f)
{
    return captured<std::decay_t<F>>(std::forward<F>(f));
}

/**
 * Suppresses the flow of the calling thread's values for the rest of a
 * scope (cv_flow_suppress / cv_flow_restore): captures made meanwhile
 * (ctxvars::context::capture, ctxvars::wrap, cv_task_init, cv_thread_create) get an
 * empty context. Guards nest. The current context itself, and
 * ctxvars::context::copy_current, are not affected.
 */
class flow_suppression
{
  public:
    flow_suppression() noexcept
    {
        cv_flow_suppress();
    }

    flow_suppression(const flow_suppression &) = delete;
    flow_suppression &operator=(const flow_suppression &) = delete;

    ~flow_suppression()
    {
        (void)cv_flow_restore();
    }
};

/** Whether the calling thread has flow suppressed. */
inline bool flow_suppressed() noexcept
{
    return cv_flow_is_suppressed();
}

} // namespace ctxvars

#endif /* CV_CTXVARS_HPP */
