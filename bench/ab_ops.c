/*
 * Instruction counts for bench/ab.sh: one operation repeated N times, run
 * under callgrind for two values of N, so that the difference divided by
 * the difference of N is the instructions one operation executes,
 * start-up excluded. On a shared virtual machine without hardware
 * counters this is the one figure that does not move with the load: it
 * tells a few instructions more from a busy neighbour.
 *
 * Uses only API that every 0.x version of the library has, so ab.sh can
 * build it against any commit's static library and header; the task mode
 * needs 0.2 and exits with 3 on older headers.
 *
 *   ab_ops MODE N    MODE: run, enter_exit, set_reset, set_reset_unset,
 *                          copy_release, get, task
 */
#include <ctxvars.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void empty(void *arg)
{
    __asm__ volatile("" : : "r"(arg) : "memory");
}

static void fail(const char *what)
{
    fprintf(stderr, "ab_ops: %s failed\n", what);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr,
                "usage: ab_ops run|enter_exit|set_reset|set_reset_unset|copy_release|get|task N\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[2]);
    cv_var_t *var = cv_var_new("x", NULL);
    cv_context_t *ctx = cv_context_new();
    if (!var || !ctx || cv_context_enter(ctx) != CV_OK || cv_set(var, (void *)1, NULL) != CV_OK ||
        cv_context_exit(ctx) != CV_OK)
        fail("setup");
    if (strcmp(mode, "run") == 0) {
        for (long i = 0; i < n; i++)
            if (cv_context_run(ctx, empty, NULL) != CV_OK)
                fail("cv_context_run");
    } else if (strcmp(mode, "enter_exit") == 0) {
        for (long i = 0; i < n; i++)
            if (cv_context_enter(ctx) != CV_OK || cv_context_exit(ctx) != CV_OK)
                fail("enter/exit");
    } else if (strcmp(mode, "set_reset") == 0) {
        if (cv_context_enter(ctx) != CV_OK)
            fail("cv_context_enter");
        for (long i = 0; i < n; i++) {
            cv_token_t token;
            if (cv_set(var, (void *)42, &token) != CV_OK || cv_reset(var, &token) != CV_OK)
                fail("set/reset");
        }
    } else if (strcmp(mode, "set_reset_unset") == 0) {
        /* Python's usual pattern: the reset removes the variable again. */
        cv_var_t *absent = cv_var_new("absent", NULL);
        if (!absent || cv_context_enter(ctx) != CV_OK)
            fail("setup");
        for (long i = 0; i < n; i++) {
            cv_token_t token;
            if (cv_set(absent, (void *)42, &token) != CV_OK || cv_reset(absent, &token) != CV_OK)
                fail("set/reset");
        }
    } else if (strcmp(mode, "copy_release") == 0) {
        if (cv_context_enter(ctx) != CV_OK)
            fail("cv_context_enter");
        for (long i = 0; i < n; i++) {
            cv_context_t *copy = cv_copy_context();
            if (!copy)
                fail("cv_copy_context");
            cv_context_release(copy);
        }
    } else if (strcmp(mode, "get") == 0) {
        if (cv_context_enter(ctx) != CV_OK)
            fail("cv_context_enter");
        void *value = NULL;
        for (long i = 0; i < n; i++) {
            if (cv_get(var, &value) != CV_OK)
                fail("cv_get");
            __asm__ volatile("" : : "r"(value) : "memory");
        }
    } else if (strcmp(mode, "task") == 0) {
#if defined(CV_VERSION_MINOR) && (CV_VERSION_MAJOR > 0 || CV_VERSION_MINOR >= 2)
        /* cv_task_init in the current context, cv_task_run on this thread. */
        if (cv_context_enter(ctx) != CV_OK)
            fail("cv_context_enter");
        for (long i = 0; i < n; i++) {
            cv_task_t task;
            if (cv_task_init(&task, empty, NULL) != CV_OK || cv_task_run(&task) != CV_OK)
                fail("cv_task_init/cv_task_run");
        }
#else
        fprintf(stderr, "ab_ops: this library has no cv_task\n");
        return 3;
#endif
    } else {
        fprintf(stderr, "ab_ops: unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
