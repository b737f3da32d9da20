/*
 * The shared library loaded with dlopen() by a program that does not link
 * it, as a plug-in loads it: the reason DESIGN.md gives for never linking
 * jemalloc into it. Its thread-local state is initial-exec TLS, which
 * dlopen() takes from the static TLS surplus and fills, for every thread
 * that already exists, from the library's TLS image. So a thread started
 * before the dlopen() must begin exactly like one started after: in an
 * empty context, reading no value, with a lookup cache that matches
 * nothing. Through the exported functions only (the inline get needs the
 * link-time symbol), on the main thread, on that earlier thread and on a
 * later one.
 *
 *   test_dlopen PATH_TO_LIBCTXVARS_SO
 */
#define _GNU_SOURCE /* pthread barriers in -std=c11 */
#define CV_NO_INLINE
#include <ctxvars.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define VAL(x) ((void *)(uintptr_t)(x))
#define FALLBACK VAL(0xfa11)

static const char *library_path;

static struct {
    cv_var_t *(*var_new)(const char *name, const cv_var_opts_t *opts);
    void (*var_release)(cv_var_t *var);
    cv_status_t (*get)(cv_var_t *var, void **out);
    void *(*get_or)(cv_var_t *var, void *fallback);
    cv_status_t (*set)(cv_var_t *var, void *value, cv_token_t *token);
    cv_status_t (*reset)(cv_var_t *var, cv_token_t *token);
    cv_context_t *(*copy_context)(void);
    cv_status_t (*context_run)(cv_context_t *ctx, void (*fn)(void *arg), void *arg);
    void (*context_release)(cv_context_t *ctx);
} cv;

static void load(void **state)
{
    (void)state;
    void *library = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
    if (!library)
        fail_msg("dlopen(%s): %s", library_path, dlerror());
#define LOOK_UP(field, name)                                                                       \
    do {                                                                                           \
        void *symbol = dlsym(library, name);                                                       \
        if (!symbol)                                                                               \
            fail_msg("dlsym(%s): %s", name, dlerror());                                            \
        memcpy(&cv.field, &symbol, sizeof(symbol));                                                \
    } while (0)
    LOOK_UP(var_new, "cv_var_new");
    LOOK_UP(var_release, "cv_var_release");
    LOOK_UP(get, "cv_get");
    LOOK_UP(get_or, "cv_get_or");
    LOOK_UP(set, "cv_set");
    LOOK_UP(reset, "cv_reset");
    LOOK_UP(copy_context, "cv_copy_context");
    LOOK_UP(context_run, "cv_context_run");
    LOOK_UP(context_release, "cv_context_release");
#undef LOOK_UP
}

/* A thread's first steps: nothing to read, then its own value, then
 * nothing again. Returns what went wrong, or NULL. Safe on any thread. */
static const char *fresh_thread_steps(cv_var_t *var)
{
    void *out = VAL(0x5e7);
    if (cv.get(var, &out) != CV_ENOVALUE || out != VAL(0x5e7))
        return "a value before any set";
    if (cv.get_or(var, FALLBACK) != FALLBACK)
        return "cv_get_or before any set";
    cv_token_t token;
    if (cv.set(var, VAL(7), &token) != CV_OK)
        return "cv_set";
    for (int round = 0; round < 2; round++)
        if (cv.get(var, &out) != CV_OK || out != VAL(7) || cv.get_or(var, FALLBACK) != VAL(7))
            return "the value set";
    if (cv.reset(var, &token) != CV_OK)
        return "cv_reset";
    if (cv.get(var, &out) != CV_ENOVALUE || cv.get_or(var, FALLBACK) != FALLBACK)
        return "a value after the reset";
    return NULL;
}

struct early {
    pthread_barrier_t loaded;
    cv_var_t *var;
    const char *failure;
};

static void *early_main(void *arg)
{
    struct early *early = arg;
    pthread_barrier_wait(&early->loaded);
    early->failure = fresh_thread_steps(early->var);
    return NULL;
}

static void *late_main(void *arg)
{
    return (void *)fresh_thread_steps(arg);
}

static bool set_inside_ok;

static void set_inside(void *arg)
{
    cv_var_t *var = arg;
    void *out = NULL;
    set_inside_ok =
        cv.set(var, VAL(2), NULL) == CV_OK && cv.get(var, &out) == CV_OK && out == VAL(2);
}

static void test_threads_before_and_after_dlopen(void **state)
{
    struct early early = {.failure = "did not run"};
    pthread_barrier_init(&early.loaded, NULL, 2);
    pthread_t before;
    assert_int_equal(pthread_create(&before, NULL, early_main, &early), 0);

    load(state);
    cv_var_t *var = cv.var_new("plugin", NULL);
    assert_non_null(var);
    const char *failure = fresh_thread_steps(var);
    if (failure)
        fail_msg("main thread: %s", failure);

    assert_int_equal(cv.set(var, VAL(1), NULL), CV_OK);
    cv_context_t *copy = cv.copy_context();
    assert_non_null(copy);
    assert_int_equal(cv.context_run(copy, set_inside, var), CV_OK);
    assert_true(set_inside_ok);
    void *out = NULL;
    assert_int_equal(cv.get(var, &out), CV_OK);
    assert_ptr_equal(out, VAL(1));
    cv.context_release(copy);

    early.var = var;
    pthread_barrier_wait(&early.loaded);
    assert_int_equal(pthread_join(before, NULL), 0);
    if (early.failure)
        fail_msg("thread started before dlopen(): %s", early.failure);
    pthread_barrier_destroy(&early.loaded);

    pthread_t after;
    void *late_failure = NULL;
    assert_int_equal(pthread_create(&after, NULL, late_main, var), 0);
    assert_int_equal(pthread_join(after, &late_failure), 0);
    if (late_failure)
        fail_msg("thread started after dlopen(): %s", (const char *)late_failure);
    cv.var_release(var);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH_TO_LIBCTXVARS_SO\n", argv[0]);
        return 2;
    }
    library_path = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_before_and_after_dlopen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
