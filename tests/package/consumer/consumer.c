/* A program outside the project: it sees only the installed <ctxvars.h>
 * and links the installed library. It prints one line that
 * tests/package/check_package.sh compares with the expected text. */
#include <ctxvars.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cv_var_t *request_id;
static char seen_in_run[32], seen_in_thread[32];

static void check(cv_status_t status, const char *what)
{
    if (status != CV_OK) {
        fprintf(stderr, "%s: %s\n", what, cv_strerror(status));
        exit(1);
    }
}

static void in_run(void *arg)
{
    (void)arg;
    snprintf(seen_in_run, sizeof seen_in_run, "%s", (const char *)cv_get_or(request_id, "-"));
    check(cv_set(request_id, "inner", NULL), "cv_set in run");
}

static void *in_thread(void *arg)
{
    (void)arg;
    snprintf(seen_in_thread, sizeof seen_in_thread, "%s", (const char *)cv_get_or(request_id, "-"));
    return NULL;
}

int main(void)
{
    request_id = cv_var_new("request_id", &(cv_var_opts_t){.default_value = "none", .has_default = true});
    if (!request_id)
        return 1;

    void *before;
    check(cv_get(request_id, &before), "cv_get");

    cv_token_t token;
    check(cv_set(request_id, "req-42", &token), "cv_set");

    /* A copy runs with the value; its own set stays inside it. */
    cv_context_t *ctx = cv_copy_context();
    if (!ctx)
        return 1;
    check(cv_context_run(ctx, in_run, NULL), "cv_context_run");
    void *in_ctx = NULL;
    check(cv_context_get(ctx, request_id, &in_ctx), "cv_context_get");
    cv_context_release(ctx);

    /* A thread starts in a copy of the caller's context. */
    pthread_t thread;
    if (cv_thread_create(&thread, NULL, in_thread, NULL) != 0 || pthread_join(thread, NULL) != 0)
        return 1;

    void *after_run = cv_get_or(request_id, "-");
    check(cv_reset(request_id, &token), "cv_reset");
    void *after_reset;
    check(cv_get(request_id, &after_reset), "cv_get after reset");

    printf("ctxvars %d.%d.%d: before=%s set=%s run=%s ctx=%s thread=%s reset=%s %s\n", CV_VERSION_MAJOR,
           CV_VERSION_MINOR, CV_VERSION_PATCH, (const char *)before, (const char *)after_run, seen_in_run,
           (const char *)in_ctx, seen_in_thread, (const char *)after_reset,
           strcmp(cv_strerror(CV_ENOVALUE), "") ? "ok" : "no-strerror");

    cv_var_release(request_id);
    cv_reclaim_barrier();
    return 0;
}
