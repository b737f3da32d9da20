/*
 * pool_server: a request id through a thread pool, with ctxvars.
 *
 * A few acceptor threads submit requests to a front pool of worker threads;
 * handlers hand follow-up work to a background pool. What it shows:
 *
 *  - Capture at submit, run at execute: every job is a cv_task_t.
 *    cv_task_init captures the submitting thread's context; cv_task_run
 *    runs the job in it on whichever worker picks it up.
 *  - A handler sets the request id and the user once (cv_set). Three calls
 *    down (handle_request -> load_user -> query_db -> log_line) the log line
 *    reads them with cv_get: no function takes them as a parameter.
 *  - Work hops threads: the handler submits a follow-up job (send_receipt)
 *    to the background pool, where it runs on another thread, still with
 *    the request's id and user.
 *  - Flow suppression: the handler of req-1 starts a background cache
 *    refresh between cv_flow_suppress() and cv_flow_restore(); that job is
 *    server work, and sees no request id.
 *
 * Each log event is one line on stdout, e.g. "[req-17] query_db: user=alice":
 * three per request, plus the cache refresh's. Their order varies from run
 * to run, the set of lines does not. The program checks every line against
 * the request that the pool knows the job belongs to, and exits 1 on any
 * mismatch.
 *
 * Build and run, from a build tree of the repository (tests enabled):
 *   cmake --build build --target pool_server && build/tests/pool_server [requests]
 */
#include <ctxvars.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { WORKERS = 3, ACCEPTORS = 2, DEFAULT_REQUESTS = 24, LINES_PER_REQUEST = 3 };

static const char *const users[] = {"alice", "bob", "carol", "dave"};

static cv_var_t *request_id; /* const char *, "req-17" */
static cv_var_t *user;       /* const char *, "alice" */

struct request {
    char id[16];
    const char *user;
    pthread_t handler; /* the thread that ran handle_request */
};

static struct request *requests;
static int request_count;
static atomic_int lines, errors;

/* Counts a failed self-check; the exit status reports it. */
static void fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    atomic_fetch_add(&errors, 1);
}

/* Ends the program on a failure that the example does not try to survive. */
static void check(cv_status_t status, const char *what)
{
    if (status != CV_OK) {
        fprintf(stderr, "%s: %s\n", what, cv_strerror(status));
        exit(1);
    }
}

/* ------------------------------------------------------------ the pools */

struct job {
    cv_task_t task; /* fn, arg, and the context captured at submit */
    /* The request the job works for (NULL: none). Only the self-check in
     * log_line reads it; the log line itself gets the id from ctxvars. */
    const struct request *expected;
    struct job *next;
};

/* A fixed set of worker threads around one FIFO queue. */
struct pool {
    pthread_mutex_t lock;
    pthread_cond_t wake; /* a job was queued, or the pool is stopping */
    pthread_cond_t idle; /* no job queued or running */
    struct job *head, *tail;
    int pending; /* queued or running: a running job may still submit more */
    bool stopping;
    pthread_t threads[WORKERS];
};

#define POOL_INIT                                                                                  \
    {                                                                                              \
        .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,                       \
        .idle = PTHREAD_COND_INITIALIZER                                                           \
    }

/* Handlers run in the front pool; the follow-up work they hand off runs in
 * the background pool, so it always changes threads. */
static struct pool front = POOL_INIT, background = POOL_INIT;

static _Thread_local const struct request *expected; /* of the job running on this thread */

/* Runs on the submitting thread, so the job sees the submitter's values as
 * they are now, whatever the submitter sets or resets afterwards. */
static void pool_submit(struct pool *pool, void (*fn)(void *), void *arg,
                        const struct request *expect)
{
    struct job *job = malloc(sizeof *job);
    if (!job) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    check(cv_task_init(&job->task, fn, arg), "cv_task_init");
    job->expected = expect;
    job->next = NULL;
    pthread_mutex_lock(&pool->lock);
    if (pool->tail)
        pool->tail->next = job;
    else
        pool->head = job;
    pool->tail = job;
    pool->pending++;
    pthread_cond_signal(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
}

/* Workers start with plain pthread_create, so their own context is empty:
 * whatever a job sees, it got from its task. */
static void *worker_main(void *arg)
{
    struct pool *pool = arg;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->head && !pool->stopping)
            pthread_cond_wait(&pool->wake, &pool->lock);
        struct job *job = pool->head;
        if (!job)
            break; /* stopping, and nothing left to run */
        pool->head = job->next;
        if (!pool->head)
            pool->tail = NULL;
        pthread_mutex_unlock(&pool->lock);

        expected = job->expected;
        check(cv_task_run(&job->task), "cv_task_run"); /* runs once, drops the context */
        free(job);
        /* The job's sets stayed in its own context, not the worker's. */
        void *leaked;
        if (cv_get(request_id, &leaked) != CV_ENOVALUE)
            fail("a request id leaked into a worker's context\n");

        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0)
            pthread_cond_broadcast(&pool->idle);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void pool_start(struct pool *pool)
{
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
            fputs("pthread_create failed\n", stderr);
            exit(1);
        }
}

/* Waits until nothing is queued or running, then lets the workers go. The
 * caller makes sure that nobody submits any more. */
static void pool_stop(struct pool *pool)
{
    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0)
        pthread_cond_wait(&pool->idle, &pool->lock);
    pool->stopping = true;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < WORKERS; i++)
        pthread_join(pool->threads[i], NULL);
}

/* ------------------------------------------------------- request layers */

/* The innermost layer, and the only one that reads the request's values. */
static void log_line(const char *where)
{
    void *id, *name;
    bool has_id = cv_get(request_id, &id) == CV_OK;
    bool has_user = cv_get(user, &name) == CV_OK;
    if (has_id)
        printf("[%s] %s: user=%s\n", (char *)id, where, has_user ? (char *)name : "-");
    else
        printf("[-] %s: no request id\n", where);
    atomic_fetch_add(&lines, 1);

    bool right = expected ? has_id && has_user && strcmp(id, expected->id) == 0 &&
                                strcmp(name, expected->user) == 0
                          : !has_id && !has_user;
    if (!right)
        fail("wrong context in %s: expected %s\n", where,
             expected ? expected->id : "no request id");
}

static void query_db(void)
{
    log_line("query_db");
}

static void load_user(void)
{
    query_db();
}

static void render_page(void)
{
    log_line("render_page");
}

/* Runs in the background pool, in a copy of the handler's context. */
static void send_receipt(void *arg)
{
    const struct request *req = arg;
    if (pthread_equal(pthread_self(), req->handler))
        fail("send_receipt for %s did not change threads\n", req->id);
    log_line("send_receipt");
}

/* Runs with flow suppressed at submit: an empty context. */
static void refresh_cache(void *arg)
{
    (void)arg;
    log_line("refresh_cache");
}

/* Runs in the front pool, in the acceptor's context captured at submit. */
static void handle_request(void *arg)
{
    struct request *req = arg;
    req->handler = pthread_self();

    /* No token and no reset: the sets land in this job's own copy of the
     * context, which cv_task_run drops when the handler returns. Neither
     * the acceptor nor the worker ever sees them. */
    check(cv_set(request_id, req->id, NULL), "cv_set request_id");
    check(cv_set(user, (void *)req->user, NULL), "cv_set user");

    load_user();

    if (req == &requests[0]) {
        /* A cache refresh is server work, not this request's: it should
         * not be billed to req-1 nor keep its values alive. */
        cv_flow_suppress();
        pool_submit(&background, refresh_cache, NULL, NULL);
        check(cv_flow_restore(), "cv_flow_restore");
    }

    /* Captured now, with the id and user set above. */
    pool_submit(&background, send_receipt, req, req);
    render_page();
}

/* An acceptor submits every ACCEPTORS-th request, starting at its own. */
static void *acceptor_main(void *arg)
{
    for (int i = (int)(intptr_t)arg; i < request_count; i += ACCEPTORS)
        pool_submit(&front, handle_request, &requests[i], &requests[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    request_count = argc > 1 ? atoi(argv[1]) : DEFAULT_REQUESTS;
    if (request_count < 1) {
        fprintf(stderr, "usage: %s [requests]\n", argv[0]);
        return 2;
    }
    request_id = cv_var_new("request_id", NULL);
    user = cv_var_new("user", NULL);
    requests = calloc((size_t)request_count, sizeof *requests);
    if (!request_id || !user || !requests) {
        fputs("out of memory\n", stderr);
        return 1;
    }
    for (int i = 0; i < request_count; i++) {
        snprintf(requests[i].id, sizeof requests[i].id, "req-%d", i + 1);
        requests[i].user = users[i % 4];
    }

    pool_start(&front);
    pool_start(&background);
    pthread_t acceptors[ACCEPTORS];
    for (int i = 0; i < ACCEPTORS; i++)
        if (pthread_create(&acceptors[i], NULL, acceptor_main, (void *)(intptr_t)i) != 0)
            return 1;
    for (int i = 0; i < ACCEPTORS; i++)
        pthread_join(acceptors[i], NULL);

    /* Every request is submitted. Once the handlers are done, nobody
     * submits to the background pool any more. */
    pool_stop(&front);
    pool_stop(&background);

    int want = request_count * LINES_PER_REQUEST + 1;
    if (atomic_load(&lines) != want)
        fail("%d log lines, expected %d\n", atomic_load(&lines), want);

    /* Every task has run and dropped its context; the values (request
     * strings) are no longer referenced. The barrier lets the library's
     * deferred frees finish, so that leak checkers see nothing. */
    free(requests);
    cv_var_release(request_id);
    cv_var_release(user);
    cv_reclaim_barrier();
    return atomic_load(&errors) ? 1 : 0;
}
