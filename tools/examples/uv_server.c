/*
 * uv_server: many requests on one event-loop thread, each in its own
 * context, with libuv and ctxvars.
 *
 * A TCP server on 127.0.0.1 (an ephemeral port) and its clients share one
 * libuv loop. Each client sends one line, "req-N user"; the server handles
 * it in steps, one callback each:
 *
 *   accept    the line is read; the request's values are set
 *   auth      after a timer (an auth service, say) whose delay depends on
 *             N, so that requests overtake each other
 *   query_db  on libuv's thread pool (another thread), through a cv_task
 *             captured on the loop thread and run in the pool thread
 *   render    back on the loop thread; starts another timer
 *   respond   the reply is written
 *   done      the write completed
 *
 * Each connection owns a cv_context_t. Every callback runs its step inside
 * that context (cv_context_run; the write callback shows enter/exit), so
 * cv_get returns this request's id whichever request's callback ran just
 * before on the same thread. Log lines read the id and user with cv_get,
 * never from the connection struct; the struct only serves the self-check.
 *
 * Output: one line per step on stdout, e.g. "[req-3] auth: user=carol", in
 * an order that differs from the order of the requests. The program exits 1
 * if any line or reply has the wrong values, if the requests did not
 * interleave, if a value is still referenced by a context at the end (a
 * leaked context), or if the loop does not close cleanly.
 *
 * Build and run, from a build tree of the repository (tests enabled):
 *   cmake --build build --target uv_server && build/tests/uv_server [requests]
 */
#define _POSIX_C_SOURCE 200809L /* uv.h needs POSIX types that -std=c11 hides */

#include <ctxvars.h>
#include <uv.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { DEFAULT_REQUESTS = 12, STEPS = 6 };

static const char *const users[] = {"alice", "bob", "carol", "dave"};

static cv_var_t *request_id; /* const char *, "req-3" */
static cv_var_t *user;       /* const char *, "carol" */

static uv_loop_t loop;
static uv_tcp_t server;
static pthread_t loop_thread;
static int request_count, clients_closed, replies_ok;
static int in_flight, max_in_flight, accepted, finished;
static bool reordered;
static atomic_int lines, errors;
/* References to values held by the library (contexts and tokens), counted
 * by the variables' retain/release hooks: 0 at the end means no context
 * was leaked. */
static atomic_int live_values;

/* A line read from a socket. The first member of struct conn and of struct
 * client, so that one alloc callback and one reader serve both. */
struct line {
    char buf[64];
    size_t len;
};

struct conn {
    struct line line; /* the request */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_work_t work;
    uv_write_t write;
    cv_context_t *ctx; /* this request's context, entered by every step */
    cv_task_t task;    /* the hop to the thread pool */
    void (*after_timer)(void *conn);
    char id[16], user[16]; /* parsed; the context holds pointers to them */
    char reply[64];
    int number; /* N of req-N, to scramble the delays */
    int open_handles;
    int accept_seq;
};

struct client {
    struct line line; /* the reply */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    char request[32], want[64];
};

/* Counts a failed self-check; the exit status reports it. */
static void fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    atomic_fetch_add(&errors, 1);
}

static void uv_check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "%s: %s\n", what, uv_strerror(rc));
        exit(1);
    }
}

static void cv_check(cv_status_t status, const char *what)
{
    if (status != CV_OK) {
        fprintf(stderr, "%s: %s\n", what, cv_strerror(status));
        exit(1);
    }
}

static void count_retain(void *value)
{
    (void)value;
    atomic_fetch_add(&live_values, 1);
}

static void count_release(void *value)
{
    (void)value;
    atomic_fetch_sub(&live_values, 1);
}

/* Logs one step with the values of the current context; `conn` is only the
 * self-check's ground truth. */
static void log_step(const struct conn *conn, const char *step)
{
    void *id = "-", *name = "-";
    bool right = cv_get(request_id, &id) == CV_OK && cv_get(user, &name) == CV_OK &&
                 strcmp(id, conn->id) == 0 && strcmp(name, conn->user) == 0;
    printf("[%s] %s: user=%s\n", (char *)id, step, (char *)name);
    atomic_fetch_add(&lines, 1);
    if (!right)
        fail("wrong context in %s: expected %s\n", step, conn->id);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct line *line = handle->data;
    *buf = uv_buf_init(line->buf + line->len, (unsigned)(sizeof line->buf - 1 - line->len));
}

/* Adds what was read to the stream's line; true once it is complete. EOF
 * before that is an error too. */
static bool read_line(uv_stream_t *stream, ssize_t nread)
{
    struct line *line = stream->data;
    uv_check((int)nread, "read");
    line->len += (size_t)nread;
    line->buf[line->len] = '\0';
    return strchr(line->buf, '\n') != NULL;
}

/* ------------------------------------------------------- server steps */
/* In reverse order, each step above the one that schedules it. */

/* Every callback but on_written enters the request's context here. */
static void run_step(struct conn *conn, void (*step)(void *conn))
{
    cv_check(cv_context_run(conn->ctx, step, conn), "cv_context_run");
}

static void on_timer(uv_timer_t *timer)
{
    struct conn *conn = timer->data;
    run_step(conn, conn->after_timer);
}

/* Runs `step` later, after 5 to 45 ms scrambled by the request number
 * (`mix` is prime to 11): later requests overtake earlier ones while they
 * all wait on the same thread. */
static void run_later(struct conn *conn, int mix, void (*step)(void *conn))
{
    uint64_t delay = 5 + (uint64_t)(conn->number * mix % 11) * 4;
    conn->after_timer = step;
    uv_check(uv_timer_start(&conn->timer, on_timer, delay, 0), "uv_timer_start");
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct conn *conn = handle->data;
    if (--conn->open_handles > 0)
        return;
    /* The last reference to the request's context: its values go with it. */
    cv_context_release(conn->ctx);
    free(conn);
}

static void on_written(uv_write_t *write, int status)
{
    struct conn *conn = write->data;
    uv_check(status, "write reply");
    /* enter/exit instead of run, as a scheduler that cannot wrap the code
     * in a function would do it. */
    cv_check(cv_context_enter(conn->ctx), "cv_context_enter");
    log_step(conn, "done");
    cv_check(cv_context_exit(conn->ctx), "cv_context_exit");

    in_flight--;
    if (conn->accept_seq != finished++)
        reordered = true;
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    uv_close((uv_handle_t *)&conn->tcp, on_handle_closed);
}

static void step_respond(void *arg)
{
    struct conn *conn = arg;
    log_step(conn, "respond");
    /* The reply, too, comes from the context. */
    snprintf(conn->reply, sizeof conn->reply, "%s ok user=%s\n", (char *)cv_get_or(request_id, "-"),
             (char *)cv_get_or(user, "-"));
    uv_buf_t buf = uv_buf_init(conn->reply, (unsigned)strlen(conn->reply));
    conn->write.data = conn;
    uv_check(uv_write(&conn->write, (uv_stream_t *)&conn->tcp, &buf, 1, on_written), "uv_write");
}

/* In a pool thread, in the copy of the request's context that step_auth
 * captured on the loop thread. */
static void query_db(void *arg)
{
    struct conn *conn = arg;
    if (pthread_equal(pthread_self(), loop_thread))
        fail("query_db ran on the loop thread\n");
    log_step(conn, "query_db");
}

static void on_work(uv_work_t *work)
{
    struct conn *conn = work->data;
    cv_check(cv_task_run(&conn->task), "cv_task_run");
}

static void step_render(void *arg)
{
    struct conn *conn = arg;
    log_step(conn, "render");
    run_later(conn, 5, step_respond);
}

static void on_work_done(uv_work_t *work, int status)
{
    struct conn *conn = work->data;
    uv_check(status, "uv_queue_work");
    run_step(conn, step_render);
}

static void step_auth(void *arg)
{
    struct conn *conn = arg;
    log_step(conn, "auth");
    /* Captured here, inside the request's context, on the loop thread. */
    cv_check(cv_task_init(&conn->task, query_db, conn), "cv_task_init");
    conn->work.data = conn;
    int rc = uv_queue_work(&loop, &conn->work, on_work, on_work_done);
    if (rc < 0)
        cv_task_discard(&conn->task);
    uv_check(rc, "uv_queue_work");
}

static void step_accept(void *arg)
{
    struct conn *conn = arg;
    /* No token: the sets belong to this request's context for its whole
     * life, and go when the context is released. */
    cv_check(cv_set(request_id, conn->id, NULL), "cv_set request_id");
    cv_check(cv_set(user, conn->user, NULL), "cv_set user");
    log_step(conn, "accept");
    run_later(conn, 4, step_auth);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct conn *conn = stream->data;
    if (!read_line(stream, nread))
        return;
    uv_read_stop(stream);
    if (sscanf(conn->line.buf, "req-%d %15s", &conn->number, conn->user) != 2) {
        fprintf(stderr, "bad request line: %s", conn->line.buf);
        exit(1);
    }
    snprintf(conn->id, sizeof conn->id, "req-%d", conn->number);
    conn->accept_seq = accepted++;
    if (++in_flight > max_in_flight)
        max_in_flight = in_flight;
    run_step(conn, step_accept);
}

static void on_connection(uv_stream_t *listener, int status)
{
    uv_check(status, "accept");
    struct conn *conn = calloc(1, sizeof *conn);
    /* A fresh, empty context per request, as each asyncio task gets its own. */
    if (!conn || !(conn->ctx = cv_context_new())) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    uv_check(uv_tcp_init(&loop, &conn->tcp), "uv_tcp_init");
    uv_check(uv_timer_init(&loop, &conn->timer), "uv_timer_init");
    conn->tcp.data = conn->timer.data = conn;
    conn->open_handles = 2;
    uv_check(uv_accept(listener, (uv_stream_t *)&conn->tcp), "uv_accept");
    uv_check(uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read), "uv_read_start");
}

/* ------------------------------------------------------------- clients */

static void on_client_closed(uv_handle_t *handle)
{
    free(handle->data);
    if (++clients_closed == request_count)
        uv_close((uv_handle_t *)&server, NULL); /* the last client: the loop can end */
}

static void on_client_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct client *c = stream->data;
    if (!read_line(stream, nread))
        return;
    if (strcmp(c->line.buf, c->want) == 0)
        replies_ok++;
    else
        fail("reply \"%s\", expected \"%s\"\n", c->line.buf, c->want);
    uv_close((uv_handle_t *)stream, on_client_closed);
}

static void on_client_written(uv_write_t *write, int status)
{
    (void)write;
    uv_check(status, "client write");
}

static void on_client_connected(uv_connect_t *connect, int status)
{
    struct client *c = connect->handle->data;
    uv_check(status, "connect");
    uv_buf_t buf = uv_buf_init(c->request, (unsigned)strlen(c->request));
    uv_check(uv_write(&c->write, connect->handle, &buf, 1, on_client_written), "client write");
    uv_check(uv_read_start(connect->handle, on_alloc, on_client_read), "uv_read_start");
}

static void start_client(int i, const struct sockaddr *addr)
{
    struct client *c = calloc(1, sizeof *c);
    if (!c) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    const char *name = users[i % 4];
    snprintf(c->request, sizeof c->request, "req-%d %s\n", i + 1, name);
    snprintf(c->want, sizeof c->want, "req-%d ok user=%s\n", i + 1, name);
    uv_check(uv_tcp_init(&loop, &c->tcp), "uv_tcp_init");
    c->tcp.data = c;
    uv_check(uv_tcp_connect(&c->connect, &c->tcp, addr, on_client_connected), "uv_tcp_connect");
}

int main(int argc, char **argv)
{
    request_count = argc > 1 ? atoi(argv[1]) : DEFAULT_REQUESTS;
    if (request_count < 2) {
        fprintf(stderr, "usage: %s [requests, at least 2]\n", argv[0]);
        return 2;
    }
    cv_var_opts_t opts = {.retain = count_retain, .release = count_release};
    request_id = cv_var_new("request_id", &opts);
    user = cv_var_new("user", &opts);
    if (!request_id || !user) {
        fputs("out of memory\n", stderr);
        return 1;
    }
    loop_thread = pthread_self();

    struct sockaddr_in addr;
    int addr_len = sizeof addr;
    uv_check(uv_loop_init(&loop), "uv_loop_init");
    uv_check(uv_tcp_init(&loop, &server), "uv_tcp_init");
    uv_check(uv_ip4_addr("127.0.0.1", 0, &addr), "uv_ip4_addr");
    uv_check(uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0), "uv_tcp_bind");
    uv_check(uv_listen((uv_stream_t *)&server, 128, on_connection), "uv_listen");
    uv_check(uv_tcp_getsockname(&server, (struct sockaddr *)&addr, &addr_len), "getsockname");
    fprintf(stderr, "uv_server: listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));

    for (int i = 0; i < request_count; i++)
        start_client(i, (const struct sockaddr *)&addr);
    uv_check(uv_run(&loop, UV_RUN_DEFAULT), "uv_run");
    int close_rc = uv_loop_close(&loop);

    /* Every connection has released its context; once the deferred
     * releases have run, no value may be left referenced. */
    cv_var_release(request_id);
    cv_var_release(user);
    cv_reclaim_barrier();

    if (close_rc != 0)
        fail("uv_loop_close: %s\n", uv_strerror(close_rc));
    if (replies_ok != request_count)
        fail("%d of %d replies right\n", replies_ok, request_count);
    if (atomic_load(&lines) != request_count * STEPS)
        fail("%d log lines, expected %d\n", atomic_load(&lines), request_count * STEPS);
    if (!reordered || max_in_flight < 2)
        fail("the requests did not interleave\n");
    if (atomic_load(&live_values) != 0)
        fail("%d values still held: a context leaked\n", atomic_load(&live_values));
    fprintf(stderr, "uv_server: %d requests, up to %d in flight on one thread\n", request_count,
            max_in_flight);
    return atomic_load(&errors) ? 1 : 0;
}
