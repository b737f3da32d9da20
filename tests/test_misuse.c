/*
 * Every status code provoked, and every misuse that API.md names: each
 * returns its status and changes nothing (current context, its values and
 * length, tokens that stay usable).
 *
 * The suite installs its own allocator before any other call of the
 * library, which is both the one legal use of cv_set_allocator and the way
 * to provoke CV_ENOMEM and to check that every free gets the size that was
 * asked for.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "values.h"

#include <ctxvars.h>

#include <errno.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

extern char **environ;

static char value_a[] = "a", value_b[] = "b", value_c[] = "c";
static char fallback[] = "fallback";

/* ------------------------------------------------------------ allocator */

#define BLOCK_MAGIC 0x6376616c6c6f63u

/* Sixteen bytes in front of every block keep malloc's alignment. */
struct block_header {
    size_t size;
    size_t magic;
};

static char allocator_data;
/* The library may free from its reclamation thread: all atomics. */
static atomic_long allocs, frees, refused, size_mismatches, data_mismatches;
static atomic_bool failing;
static cv_status_t first_set_allocator_status = (cv_status_t)-1;

static void *counting_alloc(size_t size, void *data)
{
    if (data != &allocator_data)
        atomic_fetch_add(&data_mismatches, 1);
    if (atomic_load(&failing)) {
        atomic_fetch_add(&refused, 1);
        return NULL;
    }
    struct block_header *header = malloc(sizeof(*header) + size);
    if (!header)
        return NULL;
    header->size = size;
    header->magic = BLOCK_MAGIC;
    atomic_fetch_add(&allocs, 1);
    return header + 1;
}

static void counting_free(void *ptr, size_t size, void *data)
{
    if (data != &allocator_data)
        atomic_fetch_add(&data_mismatches, 1);
    struct block_header *header = (struct block_header *)ptr - 1;
    if (header->size != size || header->magic != BLOCK_MAGIC)
        atomic_fetch_add(&size_mismatches, 1);
    header->magic = 0;
    atomic_fetch_add(&frees, 1);
    free(header);
}

static const cv_allocator_t counting_allocator = {counting_alloc, counting_free, &allocator_data};

static atomic_long other_allocs;

static void *other_alloc(size_t size, void *data)
{
    (void)data;
    atomic_fetch_add(&other_allocs, 1);
    return malloc(size);
}

static void other_free(void *ptr, size_t size, void *data)
{
    (void)size;
    (void)data;
    free(ptr);
}

/* ------------------------------------------------------------- helpers */

/* What "changes nothing" is checked against: the current context, its
 * length, and its whole content (compared with a copy taken before). */
struct snapshot {
    cv_context_t *current;
    cv_context_t *copy;
    size_t len;
};

static void snapshot_take(struct snapshot *s)
{
    s->current = cv_context_current();
    assert_non_null(s->current);
    s->copy = cv_copy_context();
    assert_non_null(s->copy);
    s->len = cv_context_len(s->current);
}

static void snapshot_check(struct snapshot *s)
{
    assert_ptr_equal(cv_context_current(), s->current);
    assert_int_equal(cv_context_len(s->current), s->len);
    assert_true(cv_context_equal(s->current, s->copy));
    cv_context_release(s->copy);
    s->copy = NULL;
}

static void mark_called(void *arg)
{
    *(bool *)arg = true;
}

static void *mark_called_thread(void *arg)
{
    *(bool *)arg = true;
    return NULL;
}

/* A token that looks live if nobody writes it. */
static void scribble(cv_token_t *token)
{
    memset(token, 0xa5, sizeof(*token));
}

static void assert_token_holds_nothing(const cv_token_t *token)
{
    assert_true(cv_token_used(token));
    assert_null(cv_token_var(token));
    void *out = sentinel;
    assert_false(cv_token_old_value(token, &out));
    assert_ptr_equal(out, sentinel);
}

/* ----------------------------------------------------------- allocator */

static void test_allocator_installed_before_any_call(void **state)
{
    (void)state;
    assert_int_equal(first_set_allocator_status, CV_OK);
    long before = atomic_load(&allocs);
    cv_context_t *ctx = cv_context_new();
    cv_var_t *var = cv_var_new("v", NULL);
    assert_true(atomic_load(&allocs) > before);
    long freed = atomic_load(&frees);
    cv_var_release(var);
    cv_context_release(ctx);
    cv_reclaim_barrier();
    assert_true(atomic_load(&frees) > freed);
    assert_int_equal(atomic_load(&size_mismatches), 0);
    assert_int_equal(atomic_load(&data_mismatches), 0);
}

static void test_set_allocator_late_or_invalid(void **state)
{
    (void)state;
    assert_int_equal(cv_set_allocator(NULL), CV_EINVAL);
    assert_int_equal(cv_set_allocator(&(cv_allocator_t){NULL, other_free, NULL}), CV_EINVAL);
    assert_int_equal(cv_set_allocator(&(cv_allocator_t){other_alloc, NULL, NULL}), CV_EINVAL);
    assert_int_equal(cv_set_allocator(&(cv_allocator_t){other_alloc, other_free, NULL}), CV_EBUSY);
    assert_int_equal(cv_set_allocator(&counting_allocator), CV_EBUSY);

    /* Nothing changed: the first allocator still serves. */
    long before = atomic_load(&allocs);
    cv_context_t *ctx = cv_context_new();
    assert_non_null(ctx);
    assert_true(atomic_load(&allocs) > before);
    assert_int_equal(atomic_load(&other_allocs), 0);
    cv_context_release(ctx);
}

/* ---------------------------------------------------------------- NULL */

static void test_null_arguments(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t tok;
    assert_int_equal(cv_set(var, value_a, &tok), CV_OK);
    cv_context_t *ctx = cv_context_new();
    struct snapshot snap;
    snapshot_take(&snap);

    assert_null(cv_var_new(NULL, NULL));
    assert_null(cv_var_new(NULL, &(cv_var_opts_t){.has_default = true}));
    cv_var_release(NULL);
    assert_null(cv_var_name(NULL));

    void *out = sentinel;
    assert_int_equal(cv_get(NULL, &out), CV_EINVAL);
    assert_int_equal((cv_get)(NULL, &out), CV_EINVAL);
    assert_ptr_equal(out, sentinel);
    assert_int_equal(cv_get(var, NULL), CV_EINVAL);
    assert_int_equal((cv_get)(var, NULL), CV_EINVAL);
    assert_ptr_equal(cv_get_or(NULL, fallback), fallback);
    assert_ptr_equal((cv_get_or)(NULL, fallback), fallback);

    cv_token_t bad;
    scribble(&bad);
    assert_int_equal(cv_set(NULL, value_b, &bad), CV_EINVAL);
    assert_token_holds_nothing(&bad);
    assert_int_equal(cv_set(NULL, value_b, NULL), CV_EINVAL);
    assert_int_equal(cv_reset(NULL, &tok), CV_EINVAL);
    assert_false(cv_token_used(&tok));
    assert_int_equal(cv_reset(var, NULL), CV_EINVAL);

    assert_null(cv_token_var(NULL));
    assert_false(cv_token_old_value(NULL, &out));
    assert_ptr_equal(out, sentinel);
    assert_false(cv_token_old_value(&tok, NULL));
    assert_true(cv_token_used(NULL));
    cv_token_discard(NULL);

    assert_null(cv_context_copy(NULL));
    cv_context_retain(NULL);
    cv_context_release(NULL);
    bool called = false;
    assert_int_equal(cv_context_run(NULL, mark_called, &called), CV_EINVAL);
    assert_false(called);
    assert_int_equal(cv_context_run(ctx, NULL, NULL), CV_EINVAL);
    assert_int_equal(cv_context_enter(NULL), CV_EINVAL);
    assert_int_equal(cv_context_exit(NULL), CV_EINVAL);

    assert_int_equal(cv_context_get(NULL, var, &out), CV_EINVAL);
    assert_int_equal(cv_context_get(ctx, NULL, &out), CV_EINVAL);
    assert_int_equal(cv_context_get(snap.current, var, NULL), CV_EINVAL);
    assert_ptr_equal(out, sentinel);
    assert_false(cv_context_contains(NULL, var));
    assert_false(cv_context_contains(snap.current, NULL));
    assert_int_equal(cv_context_len(NULL), 0);
    assert_false(cv_context_equal(ctx, NULL));
    assert_false(cv_context_equal(NULL, ctx));

    cv_context_iter_t it;
    cv_var_t *it_var = NULL;
    void *it_value = sentinel;
    cv_context_iter_init(&it, NULL);
    assert_false(cv_context_iter_next(&it, &it_var, &it_value));
    cv_context_iter_fini(&it);
    cv_context_iter_init(NULL, ctx);
    assert_false(cv_context_iter_next(NULL, &it_var, &it_value));
    cv_context_iter_fini(NULL);
    assert_null(it_var);
    assert_ptr_equal(it_value, sentinel);

    pthread_t thread;
    assert_int_equal(cv_thread_create(NULL, NULL, mark_called_thread, &called), EINVAL);
    assert_int_equal(cv_thread_create(&thread, NULL, NULL, NULL), EINVAL);
    assert_false(called);

    snapshot_check(&snap);
    /* The context given to the failed run was not left entered. */
    assert_int_equal(cv_context_run(ctx, mark_called, &called), CV_OK);
    assert_true(called);
    assert_int_equal(cv_reset(var, &tok), CV_OK);
    cv_context_release(ctx);
    cv_var_release(var);
}

/* ------------------------------------------------------------- statuses */

static void test_no_value_leaves_out_untouched(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    void *out = sentinel;
    assert_int_equal(cv_get(var, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    assert_int_equal(cv_context_get(cv_context_current(), var, &out), CV_ENOVALUE);
    assert_ptr_equal(out, sentinel);
    cv_var_release(var);
}

static void test_reused_token(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, value_a, &t1), CV_OK);
    assert_int_equal(cv_set(var, value_b, &t2), CV_OK);
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_int_equal(cv_set(var, value_c, NULL), CV_OK);
    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_reset(var, &t2), CV_ETOKEN_USED);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(var), value_c);

    cv_token_discard(&t2);
    snapshot_take(&snap);
    assert_int_equal(cv_reset(var, &t2), CV_ETOKEN_USED);
    snapshot_check(&snap);

    assert_int_equal(cv_reset(var, &t1), CV_OK);
    cv_var_release(var);
}

static void test_never_filled_token(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_token_t keep;
    assert_int_equal(cv_set(var, value_a, &keep), CV_OK);
    cv_token_t zero = {0};
    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_reset(var, &zero), CV_ETOKEN_USED);
    cv_token_discard(&zero);
    assert_token_holds_nothing(&zero);
    snapshot_check(&snap);
    assert_int_equal(cv_reset(var, &keep), CV_OK);
    cv_var_release(var);
}

static void test_token_of_another_variable(void **state)
{
    (void)state;
    cv_var_t *x = cv_var_new("x", NULL), *y = cv_var_new("y", NULL);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    cv_token_t tx;
    assert_int_equal(cv_set(x, value_a, &tx), CV_OK);
    assert_int_equal(cv_set(y, value_b, NULL), CV_OK);
    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_reset(y, &tx), CV_ETOKEN_VAR);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(y), value_b);
    /* Still usable with its own variable. */
    assert_false(cv_token_used(&tx));
    assert_int_equal(cv_reset(x, &tx), CV_OK);
    assert_ptr_equal(current_value(x), sentinel);

    /* Same name, different variable. */
    cv_var_t *twin = cv_var_new("y", NULL);
    cv_token_t ty;
    assert_int_equal(cv_set(y, value_c, &ty), CV_OK);
    snapshot_take(&snap);
    assert_int_equal(cv_reset(twin, &ty), CV_ETOKEN_VAR);
    snapshot_check(&snap);
    assert_int_equal(cv_reset(y, &ty), CV_OK);
    assert_ptr_equal(current_value(y), value_b);

    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_var_release(twin);
    cv_var_release(y);
    cv_var_release(x);
}

static void test_token_of_a_released_context(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    struct tracked old, value;
    tracked_init(&old);
    tracked_init(&value);
    cv_var_t *var = tracked_var("v");
    cv_context_t *gone = cv_context_new();
    assert_int_equal(cv_context_enter(gone), CV_OK);
    assert_int_equal(cv_set(var, &old, NULL), CV_OK);
    cv_token_t tok;
    assert_int_equal(cv_set(var, &value, &tok), CV_OK);
    assert_int_equal(cv_context_exit(gone), CV_OK);
    cv_context_release(gone);

    cv_context_t *here = cv_context_new();
    assert_int_equal(cv_context_enter(here), CV_OK);
    assert_int_equal(cv_set(var, &value, NULL), CV_OK);
    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_CONTEXT);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(var), &value);
    assert_false(cv_token_used(&tok));
    /* The live token still holds its old value for the reset it will
     * never get. */
    cv_reclaim_barrier();
    assert_true(atomic_load(&old.live) >= 1);
    cv_token_discard(&tok);
    assert_true(cv_token_used(&tok));
    assert_int_equal(cv_reset(var, &tok), CV_ETOKEN_USED);

    assert_int_equal(cv_context_exit(here), CV_OK);
    cv_context_release(here);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&old.live), 0);
    assert_int_equal(atomic_load(&value.live), 0);
    assert_int_equal(atomic_load(&underflows), 0);
    cv_var_release(var);
}

/* ------------------------------------------------------- enter and exit */

static void test_exits_in_the_wrong_order(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *a = cv_context_new(), *b = cv_context_new();
    assert_int_equal(cv_context_enter(a), CV_OK);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    assert_int_equal(cv_context_enter(b), CV_OK);
    assert_int_equal(cv_set(var, value_b, NULL), CV_OK);

    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_context_exit(a), CV_ENOTCURRENT);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(var), value_b);

    assert_int_equal(cv_context_exit(b), CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    snapshot_take(&snap);
    assert_int_equal(cv_context_exit(b), CV_ENOTCURRENT);
    snapshot_check(&snap);
    assert_int_equal(cv_context_exit(a), CV_OK);
    assert_ptr_equal(current_value(var), sentinel);
    snapshot_take(&snap);
    assert_int_equal(cv_context_exit(a), CV_ENOTCURRENT);
    snapshot_check(&snap);

    cv_context_release(b);
    cv_context_release(a);
    cv_var_release(var);
}

struct base_exit_job {
    cv_status_t status;
    bool still_current;
};

static void *exit_own_base(void *arg)
{
    struct base_exit_job *job = arg;
    cv_context_t *base = cv_context_current();
    job->status = cv_context_exit(base);
    job->still_current = cv_context_current() == base;
    return NULL;
}

static void test_exit_of_the_base_context(void **state)
{
    (void)state;
    cv_context_t *base = cv_context_current();
    struct snapshot snap;
    snapshot_take(&snap);
    assert_int_equal(cv_context_exit(base), CV_ENOTCURRENT);
    snapshot_check(&snap);

    /* An inherited base is a base too, and so is a plain thread's. */
    struct base_exit_job inherited = {.status = CV_OK}, plain = {.status = CV_OK};
    pthread_t t1, t2;
    assert_int_equal(cv_thread_create(&t1, NULL, exit_own_base, &inherited), 0);
    assert_int_equal(pthread_create(&t2, NULL, exit_own_base, &plain), 0);
    assert_int_equal(pthread_join(t1, NULL), 0);
    assert_int_equal(pthread_join(t2, NULL), 0);
    assert_int_equal(inherited.status, CV_ENOTCURRENT);
    assert_true(inherited.still_current);
    assert_int_equal(plain.status, CV_ENOTCURRENT);
    assert_true(plain.still_current);
}

static void test_enter_an_entered_context_in_this_thread(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);

    struct snapshot snap;
    snapshot_take(&snap);
    bool called = false;
    assert_int_equal(cv_context_enter(ctx), CV_EBUSY);
    assert_int_equal(cv_context_run(ctx, mark_called, &called), CV_EBUSY);
    assert_false(called);
    snapshot_check(&snap);
    /* One exit undoes the one enter that worked. */
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    assert_true(cv_context_current() != ctx);

    cv_context_t *base = cv_context_current();
    snapshot_take(&snap);
    assert_int_equal(cv_context_enter(base), CV_EBUSY);
    assert_int_equal(cv_context_run(base, mark_called, &called), CV_EBUSY);
    assert_false(called);
    snapshot_check(&snap);

    cv_context_release(ctx);
    cv_var_release(var);
}

/* Another thread enters a context and sets in it, then holds still while
 * the main thread tries everything it must not do. */
struct holder {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int phase;
    cv_context_t *held, *base;
    cv_var_t *var;
    cv_status_t enter_status, set_status, exit_status, base_exit_status;
    void *seen_after;
};

static void holder_wait(struct holder *h, int phase)
{
    pthread_mutex_lock(&h->lock);
    while (h->phase < phase)
        pthread_cond_wait(&h->cond, &h->lock);
    pthread_mutex_unlock(&h->lock);
}

static void holder_advance(struct holder *h, int phase)
{
    pthread_mutex_lock(&h->lock);
    h->phase = phase;
    pthread_cond_broadcast(&h->cond);
    pthread_mutex_unlock(&h->lock);
}

static void *holder_thread(void *arg)
{
    struct holder *h = arg;
    h->base = cv_context_current();
    h->enter_status = cv_context_enter(h->held);
    h->set_status = cv_set(h->var, value_c, NULL);
    holder_advance(h, 1);
    holder_wait(h, 2);
    h->seen_after = cv_get_or(h->var, sentinel);
    h->exit_status = cv_context_exit(h->held);
    h->base_exit_status = cv_context_exit(h->base);
    holder_advance(h, 3);
    holder_wait(h, 4);
    return NULL;
}

static void test_enter_a_context_another_thread_holds(void **state)
{
    (void)state;
    struct holder h = {.phase = 0};
    pthread_mutex_init(&h.lock, NULL);
    pthread_cond_init(&h.cond, NULL);
    h.var = cv_var_new("v", NULL);
    h.held = cv_context_new();
    assert_int_equal(cv_set(h.var, value_a, NULL), CV_OK);
    pthread_t thread;
    assert_int_equal(cv_thread_create(&thread, NULL, holder_thread, &h), 0);
    holder_wait(&h, 1);
    assert_int_equal(h.enter_status, CV_OK);
    assert_int_equal(h.set_status, CV_OK);

    struct snapshot snap;
    snapshot_take(&snap);
    bool called = false;
    assert_int_equal(cv_context_enter(h.held), CV_EBUSY);
    assert_int_equal(cv_context_run(h.held, mark_called, &called), CV_EBUSY);
    assert_int_equal(cv_context_exit(h.held), CV_ENOTCURRENT);
    assert_int_equal(cv_context_enter(h.base), CV_EBUSY);
    assert_int_equal(cv_context_run(h.base, mark_called, &called), CV_EBUSY);
    assert_int_equal(cv_context_exit(h.base), CV_ENOTCURRENT);
    assert_false(called);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(h.var), value_a);
    /* Reading it from here is allowed, and sees the holder's set. */
    void *out = NULL;
    assert_int_equal(cv_context_get(h.held, h.var, &out), CV_OK);
    assert_ptr_equal(out, value_c);
    assert_int_equal(cv_context_len(h.held), 1);
    /* The inherited base is a copy of ours. */
    assert_int_equal(cv_context_get(h.base, h.var, &out), CV_OK);
    assert_ptr_equal(out, value_a);

    holder_advance(&h, 2);
    holder_wait(&h, 3);
    assert_ptr_equal(h.seen_after, value_c);
    assert_int_equal(h.exit_status, CV_OK);
    assert_int_equal(h.base_exit_status, CV_ENOTCURRENT);

    /* Released by its holder: ours to enter now, with its values. */
    assert_int_equal(cv_context_enter(h.held), CV_OK);
    assert_ptr_equal(current_value(h.var), value_c);
    assert_int_equal(cv_context_exit(h.held), CV_OK);
    /* The base stays its thread's while the thread lives. */
    assert_int_equal(cv_context_enter(h.base), CV_EBUSY);
    holder_advance(&h, 4);
    assert_int_equal(pthread_join(thread, NULL), 0);

    cv_context_release(h.held);
    cv_var_release(h.var);
    pthread_cond_destroy(&h.cond);
    pthread_mutex_destroy(&h.lock);
}

/* --------------------------------------------------------------- runs */

struct leave_job {
    cv_context_t *left;
    cv_var_t *var;
    cv_status_t enter_status, set_status;
};

static void leave_entered_fn(void *arg)
{
    struct leave_job *job = arg;
    job->enter_status = cv_context_enter(job->left);
    job->set_status = cv_set(job->var, value_c, NULL);
}

static void test_run_fn_leaves_a_context_entered(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    cv_context_t *ctx = cv_context_new(), *left = cv_context_new();
    struct snapshot snap;
    snapshot_take(&snap);
    struct leave_job job = {.left = left, .var = var};
    assert_int_equal(cv_context_run(ctx, leave_entered_fn, &job), CV_ENOTCURRENT);
    snapshot_check(&snap);
    assert_int_equal(job.enter_status, CV_OK);
    assert_int_equal(job.set_status, CV_OK);
    assert_ptr_equal(current_value(var), value_a);
    void *out = NULL;
    assert_int_equal(cv_context_get(left, var, &out), CV_OK);
    assert_ptr_equal(out, value_c);
    assert_false(cv_context_contains(ctx, var));
    /* Both were exited. */
    assert_int_equal(cv_context_enter(left), CV_OK);
    assert_int_equal(cv_context_exit(left), CV_OK);
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(left);
    cv_context_release(ctx);
    cv_var_release(var);
}

struct exit_job {
    cv_context_t *self, *outer;
    cv_var_t *var;
    cv_status_t self_status, outer_status, set_status;
    cv_context_t *current_after;
};

static void exit_fn(void *arg)
{
    struct exit_job *job = arg;
    job->self_status = cv_context_exit(job->self);
    job->outer_status = cv_context_exit(job->outer);
    job->current_after = cv_context_current();
    job->set_status = cv_set(job->var, value_c, NULL);
}

/* A set inside a run must land in the run's context, never the caller's:
 * so fn cannot exit the run's context, nor one entered before the run. */
static void test_run_fn_exits_contexts_it_did_not_enter(void **state)
{
    (void)state;
    cv_var_t *var = cv_var_new("v", NULL);
    cv_context_t *outer = cv_context_new(), *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(outer), CV_OK);
    assert_int_equal(cv_set(var, value_a, NULL), CV_OK);
    struct snapshot snap;
    snapshot_take(&snap);
    struct exit_job job = {.self = ctx, .outer = outer, .var = var};
    cv_status_t status = cv_context_run(ctx, exit_fn, &job);
    snapshot_check(&snap);
    assert_int_equal(status, CV_OK);
    assert_int_equal(job.self_status, CV_ENOTCURRENT);
    assert_int_equal(job.outer_status, CV_ENOTCURRENT);
    assert_ptr_equal(job.current_after, ctx);
    assert_int_equal(job.set_status, CV_OK);
    void *out = NULL;
    assert_int_equal(cv_context_get(ctx, var, &out), CV_OK);
    assert_ptr_equal(out, value_c);
    assert_ptr_equal(current_value(var), value_a);
    assert_int_equal(cv_context_exit(outer), CV_OK);
    cv_context_release(ctx);
    cv_context_release(outer);
    cv_var_release(var);
}

/* --------------------------------------------------------------- ENOMEM */

struct fresh_thread_job {
    cv_var_t *var;
    cv_context_t *current, *copy;
    cv_status_t set_status, get_status;
    void *got;
    cv_token_t token;
};

static void *fresh_thread_while_failing(void *arg)
{
    struct fresh_thread_job *job = arg;
    job->current = cv_context_current();
    job->copy = cv_copy_context();
    scribble(&job->token);
    job->set_status = cv_set(job->var, value_a, &job->token);
    job->got = sentinel;
    job->get_status = cv_get(job->var, &job->got);
    return NULL;
}

#define DEEP 300

static void test_out_of_memory_changes_nothing(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    struct tracked value, old;
    tracked_init(&value);
    tracked_init(&old);
    cv_var_t *var = tracked_var("v");
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);

    /* A set into an empty context needs a node. */
    struct snapshot snap;
    snapshot_take(&snap);
    cv_token_t tok;
    scribble(&tok);
    atomic_store(&failing, true);
    cv_status_t status = cv_set(var, &value, &tok);
    atomic_store(&failing, false);
    assert_int_equal(status, CV_ENOMEM);
    assert_token_holds_nothing(&tok);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(var), sentinel);

    /* A reset of a map shared with a copy must copy a path. */
    cv_token_t t1, t2;
    assert_int_equal(cv_set(var, &old, &t1), CV_OK);
    assert_int_equal(cv_set(var, &value, &t2), CV_OK);
    snapshot_take(&snap);
    atomic_store(&failing, true);
    cv_status_t reset_status = cv_reset(var, &t2);
    cv_status_t set_status = cv_set(var, &old, NULL);
    atomic_store(&failing, false);
    assert_int_equal(reset_status, CV_ENOMEM);
    assert_int_equal(set_status, CV_ENOMEM);
    snapshot_check(&snap);
    assert_ptr_equal(current_value(var), &value);
    assert_false(cv_token_used(&t2));
    assert_int_equal(cv_reset(var, &t2), CV_OK);
    assert_ptr_equal(current_value(var), &old);

    /* Constructors return NULL. */
    atomic_store(&failing, true);
    cv_var_t *no_var = cv_var_new("x", NULL);
    cv_context_t *no_new = cv_context_new();
    cv_context_t *no_copy = cv_context_copy(ctx);
    cv_context_t *no_copy_current = cv_copy_context();
    bool called = false;
    pthread_t thread;
    int create_error = cv_thread_create(&thread, NULL, mark_called_thread, &called);
    atomic_store(&failing, false);
    assert_null(no_var);
    assert_null(no_new);
    assert_null(no_copy);
    assert_null(no_copy_current);
    assert_int_equal(create_error, ENOMEM);
    assert_false(called);

    /* Entering needs room on the thread's stack sooner or later. */
    cv_context_t *deep[DEEP];
    for (int i = 0; i < DEEP; i++)
        deep[i] = cv_context_new();
    int entered = 0;
    snapshot_take(&snap);
    atomic_store(&failing, true);
    for (; entered < DEEP; entered++) {
        status = cv_context_enter(deep[entered]);
        if (status != CV_OK)
            break;
    }
    cv_status_t run_status = CV_OK;
    if (entered < DEEP)
        run_status = cv_context_run(deep[entered], mark_called, &called);
    atomic_store(&failing, false);
    assert_true(entered < DEEP);
    assert_int_equal(status, CV_ENOMEM);
    assert_int_equal(run_status, CV_ENOMEM);
    assert_false(called);
    if (entered > 0)
        assert_ptr_equal(cv_context_current(), deep[entered - 1]);
    /* The refused context was not left claimed. */
    assert_int_equal(cv_context_enter(deep[entered]), CV_OK);
    assert_int_equal(cv_context_exit(deep[entered]), CV_OK);
    for (int i = entered - 1; i >= 0; i--)
        assert_int_equal(cv_context_exit(deep[i]), CV_OK);
    snapshot_check(&snap);
    for (int i = 0; i < DEEP; i++)
        cv_context_release(deep[i]);

    /* A thread's first need of its base context. */
    struct fresh_thread_job job = {.var = var};
    atomic_store(&failing, true);
    int error = pthread_create(&thread, NULL, fresh_thread_while_failing, &job);
    if (error == 0)
        error = pthread_join(thread, NULL);
    atomic_store(&failing, false);
    assert_int_equal(error, 0);
    assert_null(job.current);
    assert_null(job.copy);
    assert_int_equal(job.set_status, CV_ENOMEM);
    assert_token_holds_nothing(&job.token);
    assert_int_equal(job.get_status, CV_ENOVALUE);
    assert_ptr_equal(job.got, sentinel);

    assert_true(atomic_load(&refused) > 0);
    assert_int_equal(cv_reset(var, &t1), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_reclaim_barrier();
    assert_int_equal(atomic_load(&value.live), 0);
    assert_int_equal(atomic_load(&old.live), 0);
    assert_int_equal(atomic_load(&underflows), 0);
    cv_var_release(var);
}

struct reader_job {
    cv_var_t *with_default, *without;
    cv_status_t status_default, status_without;
    void *got_default, *got_without, *got_or;
};

static void *read_only_thread(void *arg)
{
    struct reader_job *job = arg;
    job->got_without = sentinel;
    job->status_default = cv_get(job->with_default, &job->got_default);
    job->status_without = cv_get(job->without, &job->got_without);
    job->got_or = cv_get_or(job->without, fallback);
    return NULL;
}

static void test_get_on_a_fresh_thread_allocates_nothing(void **state)
{
    (void)state;
    cv_var_t *with_default =
        cv_var_new("d", &(cv_var_opts_t){.default_value = value_b, .has_default = true});
    cv_var_t *without = cv_var_new("n", NULL);
    struct reader_job job = {.with_default = with_default, .without = without};
    cv_reclaim_barrier();
    long before = atomic_load(&allocs) + atomic_load(&refused);
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, read_only_thread, &job), 0);
    assert_int_equal(pthread_join(thread, NULL), 0);
    assert_int_equal(atomic_load(&allocs) + atomic_load(&refused), before);
    assert_int_equal(job.status_default, CV_OK);
    assert_ptr_equal(job.got_default, value_b);
    assert_int_equal(job.status_without, CV_ENOVALUE);
    assert_ptr_equal(job.got_without, sentinel);
    assert_ptr_equal(job.got_or, fallback);
    cv_var_release(without);
    cv_var_release(with_default);
}

static void test_strerror_of_an_unknown_status(void **state)
{
    (void)state;
    assert_non_null(cv_strerror((cv_status_t)12345));
    assert_non_null(cv_strerror((cv_status_t)(CV_ENOTCURRENT + 1)));
}

/* ------------------------------------------- hooks calling the library */

/* What a retain or release hook tried, and what it got. */
static struct {
    bool armed;
    cv_var_t *other;
    cv_context_t *elsewhere;
    cv_token_t outside_token;
    int calls;
    cv_status_t set, reset, enter, exit, run;
} in_hook;

static void try_changes(void *value)
{
    (void)value;
    if (!in_hook.armed)
        return;
    in_hook.armed = false;
    in_hook.calls++;
    bool called = false;
    in_hook.set = cv_set(in_hook.other, value_c, NULL);
    in_hook.reset = cv_reset(in_hook.other, &in_hook.outside_token);
    in_hook.enter = cv_context_enter(in_hook.elsewhere);
    in_hook.exit = cv_context_exit(cv_context_current());
    in_hook.run = cv_context_run(in_hook.elsewhere, mark_called, &called);
    if (called)
        in_hook.run = CV_OK;
}

/* A hook may run in the middle of a change to the map it is called from:
 * it may not set, reset, enter, exit or run (CV_EBUSY), and its attempts
 * change nothing. */
static void test_hooks_may_not_change_contexts(void **state)
{
    (void)state;
    cv_var_t *hooked =
        cv_var_new("hooked", &(cv_var_opts_t){.retain = try_changes, .release = try_changes});
    in_hook.other = cv_var_new("other", NULL);
    in_hook.elsewhere = cv_context_new();
    assert_non_null(hooked);
    assert_non_null(in_hook.other);
    assert_non_null(in_hook.elsewhere);
    /* Entered here, so that an exit would be allowed outside the hook. */
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    assert_int_equal(cv_set(in_hook.other, value_a, &in_hook.outside_token), CV_OK);
    cv_token_t token;
    for (int hook = 0; hook < 2; hook++) {
        /* The retain of the new value, then the release of the old one. */
        in_hook.calls = 0;
        in_hook.armed = hook == 0;
        assert_int_equal(cv_set(hooked, value_a, &token), CV_OK);
        in_hook.armed = hook == 1;
        assert_int_equal(cv_reset(hooked, &token), CV_OK);
        cv_reclaim_barrier();
        assert_int_equal(in_hook.calls, 1);
        assert_int_equal(in_hook.set, CV_EBUSY);
        assert_int_equal(in_hook.reset, CV_EBUSY);
        assert_int_equal(in_hook.enter, CV_EBUSY);
        assert_int_equal(in_hook.exit, CV_EBUSY);
        assert_int_equal(in_hook.run, CV_EBUSY);
        assert_ptr_equal(current_value(in_hook.other), value_a);
        assert_ptr_equal(current_value(hooked), sentinel);
        assert_false(cv_token_used(&in_hook.outside_token));
        assert_ptr_equal(cv_context_current(), ctx);
        assert_int_equal(cv_context_len(ctx), 1);
    }
    assert_int_equal(cv_reset(in_hook.other, &in_hook.outside_token), CV_OK);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    cv_context_release(in_hook.elsewhere);
    cv_var_release(in_hook.other);
    cv_var_release(hooked);
}

/* Copies, iterations and comparisons that hooks took of the current
 * context while a set or reset changed it, and iterators they left open. */
#define HOOK_COPIES 512
static struct {
    bool armed;
    int count;
    cv_context_t *copies[HOOK_COPIES];
    size_t len[HOOK_COPIES], iterated[HOOK_COPIES];
    bool equal[HOOK_COPIES];
    cv_context_iter_t open[HOOK_COPIES];
} hook_reads;

static void copy_current(void *value)
{
    (void)value;
    if (!hook_reads.armed || hook_reads.count == HOOK_COPIES)
        return;
    int i = hook_reads.count++;
    cv_context_t *current = cv_context_current();
    hook_reads.copies[i] = cv_copy_context();
    hook_reads.len[i] = cv_context_len(hook_reads.copies[i]);
    cv_context_iter_t it;
    cv_context_iter_init(&it, current);
    size_t n = 0;
    while (cv_context_iter_next(&it, NULL, NULL))
        n++;
    cv_context_iter_fini(&it);
    hook_reads.iterated[i] = n;
    hook_reads.equal[i] = cv_context_equal(current, hook_reads.copies[i]);
    cv_context_iter_init(&hook_reads.open[i], current);
}

/* A hook may read and copy the context it is called from, whatever change
 * called it: a copy holds a whole map, which no later change touches, and
 * an iterator left open walks it after the change. Inserts grow nodes and
 * merge pairs, removals empty them, replacements swap values; a copy taken
 * from outside now and then makes the updates copy shared nodes on their
 * way. Half of the variables have hooks: the others' updates move and copy
 * the hooked ones' entries. */
static void test_hooks_may_copy_the_context_they_change(void **state)
{
    (void)state;
    enum { VARS = 96 };
    cv_var_t *vars[VARS];
    for (int i = 0; i < VARS; i++) {
        vars[i] = cv_var_new(
            "copied",
            i % 2 ? NULL : &(cv_var_opts_t){.retain = copy_current, .release = copy_current});
        assert_non_null(vars[i]);
    }
    cv_context_t *ctx = cv_context_new();
    assert_int_equal(cv_context_enter(ctx), CV_OK);
    hook_reads.count = 0;
    hook_reads.armed = true;
    cv_context_t *outside = NULL;
    cv_token_t tokens[VARS];
    for (int i = 0; i < VARS; i++) {
        assert_int_equal(cv_set(vars[i], value_a, &tokens[i]), CV_OK);
        if (i % 8 == 0) {
            cv_context_release(outside);
            outside = cv_copy_context();
        }
    }
    for (int i = 0; i < VARS; i += 3)
        assert_int_equal(cv_set(vars[i], value_b, NULL), CV_OK);
    for (int i = VARS - 1; i >= 0; i--) {
        if (i % 2)
            assert_int_equal(cv_reset(vars[i], &tokens[i]), CV_OK);
        else
            cv_token_discard(&tokens[i]);
        if (i % 8 == 0) {
            cv_context_release(outside);
            outside = cv_copy_context();
        }
    }
    hook_reads.armed = false;
    cv_context_release(outside);
    assert_true(hook_reads.count > VARS / 2);
    for (int i = 0; i < hook_reads.count; i++) {
        assert_non_null(hook_reads.copies[i]);
        assert_true(hook_reads.equal[i]);
        assert_int_equal(hook_reads.iterated[i], hook_reads.len[i]);
        assert_int_equal(cv_context_len(hook_reads.copies[i]), hook_reads.len[i]);
        size_t n = 0;
        while (cv_context_iter_next(&hook_reads.open[i], NULL, NULL))
            n++;
        cv_context_iter_fini(&hook_reads.open[i]);
        assert_int_equal(n, hook_reads.len[i]);
        cv_context_release(hook_reads.copies[i]);
    }
    assert_int_equal(cv_context_len(ctx), VARS / 2);
    assert_int_equal(cv_context_exit(ctx), CV_OK);
    cv_context_release(ctx);
    for (int i = 0; i < VARS; i++)
        cv_var_release(vars[i]);
    cv_reclaim_barrier();
}

static int handler_calls;

static void count_change(const cv_change_t *change, void *data)
{
    (void)change;
    (void)data;
    handler_calls++;
}

/* API.md: the storage of a released variable lives on while a context
 * holds it. A reset that removes it from the last context holding it ends
 * that, and must not touch the variable after. */
static void test_reset_after_the_creator_released_the_variable(void **state)
{
    (void)state;
    const cv_var_opts_t kinds[] = {
        {0},
        {.retain = tracked_retain, .release = tracked_release},
        {.on_change = count_change},
        {.retain = tracked_retain, .release = tracked_release, .on_change = count_change},
    };
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        cv_context_t *ctx = cv_context_new();
        assert_int_equal(cv_context_enter(ctx), CV_OK);
        cv_var_t *var = cv_var_new("released", &kinds[k]);
        assert_non_null(var);
        struct tracked value;
        tracked_init(&value);
        cv_token_t token;
        handler_calls = 0;
        assert_int_equal(cv_set(var, &value, &token), CV_OK);
        cv_var_release(var);
        assert_ptr_equal(current_value(var), &value);
        assert_int_equal(cv_reset(var, &token), CV_OK);
        assert_int_equal(cv_context_len(ctx), 0);
        /* The set's call only: a released variable's handler is never
         * called again. */
        assert_int_equal(handler_calls, kinds[k].on_change ? 1 : 0);
        assert_int_equal(cv_context_exit(ctx), CV_OK);
        cv_context_release(ctx);
        cv_reclaim_barrier();
        assert_int_equal(atomic_load(&value.live), 0);
    }
}

/* ------------------------------------------- the allocator's window */

static void empty_fn(void *arg)
{
    (void)arg;
}

static void silent_watcher(cv_switch_event_t event, cv_context_t *from, cv_context_t *to,
                           void *data)
{
    (void)event, (void)from, (void)to, (void)data;
}

static void *idle_thread(void *arg)
{
    return arg;
}

/* What a first call made, given back before the process exits (the
 * sanitizers' leak check runs at exit). */
struct first_call_made {
    cv_var_t *var;
    cv_context_t *ctx;
    cv_task_t task;
    int watcher;
};

/* One first call of a fresh process, by name; false for an unknown name. */
static bool make_first_call(const char *name, struct first_call_made *made)
{
    cv_token_t token = {0};
    pthread_t thread;
    if (strcmp(name, "strerror") == 0)
        return cv_strerror(CV_EBUSY) != NULL;
    if (strcmp(name, "flow") == 0) {
        cv_flow_suppress();
        return cv_flow_is_suppressed() && cv_flow_restore() == CV_OK;
    }
    if (strcmp(name, "refused") == 0)
        return cv_set(NULL, value_a, &token) == CV_EINVAL && cv_context_enter(NULL) == CV_EINVAL &&
               cv_task_run(NULL) == CV_EINVAL;
    if (strcmp(name, "token_read") == 0)
        return cv_token_used(&token) && !cv_token_var(&token);
    if (strcmp(name, "var_new") == 0)
        return (made->var = cv_var_new("first", NULL)) != NULL;
    if (strcmp(name, "context_new") == 0)
        return (made->ctx = cv_context_new()) != NULL;
    if (strcmp(name, "copy_context") == 0)
        return (made->ctx = cv_copy_context()) != NULL;
    if (strcmp(name, "capture_context") == 0)
        return (made->ctx = cv_capture_context()) != NULL;
    if (strcmp(name, "context_current") == 0)
        return cv_context_current() != NULL;
    if (strcmp(name, "task_init") == 0)
        return cv_task_init(&made->task, empty_fn, NULL) == CV_OK;
    if (strcmp(name, "watcher_add") == 0)
        return cv_watcher_add(silent_watcher, NULL, &made->watcher) == CV_OK;
    if (strcmp(name, "reclaim_barrier") == 0) {
        cv_reclaim_barrier();
        return true;
    }
    if (strcmp(name, "thread_create") == 0)
        return cv_thread_create(&thread, NULL, idle_thread, NULL) == 0 &&
               pthread_join(thread, NULL) == 0;
    return false;
}

/* This executable, as main was called (not /proc/self/exe, which names
 * valgrind under valgrind). */
static const char *self_path;

/* Run as `test_misuse first-call NAME`: the call, then cv_set_allocator,
 * whose status is the exit code (255: the call itself failed). */
static int first_call_then_set_allocator(const char *name)
{
    struct first_call_made made = {.watcher = -1};
    if (!make_first_call(name, &made))
        return 255;
    int status = (int)cv_set_allocator(&counting_allocator);
    cv_var_release(made.var);
    cv_context_release(made.ctx);
    cv_task_discard(&made.task);
    if (made.watcher >= 0)
        cv_watcher_remove(made.watcher);
    cv_reclaim_barrier();
    return status;
}

/* API.md: cv_set_allocator only "before any other call", CV_EBUSY after.
 * Each first call runs in a fresh process of this executable; those that
 * only refuse their arguments, read a token, count flow suppression or
 * name a status leave the window open (the header says so). */
static void test_any_first_call_closes_the_allocator_window(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int status;
    } cases[] = {
        {"strerror", CV_OK},
        {"flow", CV_OK},
        {"refused", CV_OK},
        {"token_read", CV_OK},
        {"var_new", CV_EBUSY},
        {"context_new", CV_EBUSY},
        {"copy_context", CV_EBUSY},
        {"capture_context", CV_EBUSY},
        {"context_current", CV_EBUSY},
        {"task_init", CV_EBUSY},
        {"watcher_add", CV_EBUSY},
        {"reclaim_barrier", CV_EBUSY},
        {"thread_create", CV_EBUSY},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[] = {(char *)self_path, "first-call", (char *)cases[i].name, NULL};
        pid_t child;
        assert_int_equal(posix_spawn(&child, self_path, NULL, NULL, argv, environ), 0);
        int wait_status;
        assert_int_equal(waitpid(child, &wait_status, 0), child);
        assert_true(WIFEXITED(wait_status));
        if (WEXITSTATUS(wait_status) != cases[i].status)
            fail_msg("first call %s: cv_set_allocator returned %d, expected %d", cases[i].name,
                     WEXITSTATUS(wait_status), cases[i].status);
    }
}

/* Last: everything the suite did went through the allocator. */
static void test_every_free_got_the_size_asked_for(void **state)
{
    (void)state;
    cv_reclaim_barrier();
    assert_true(atomic_load(&frees) > 0);
    assert_true(atomic_load(&frees) <= atomic_load(&allocs));
    assert_int_equal(atomic_load(&size_mismatches), 0);
    assert_int_equal(atomic_load(&data_mismatches), 0);
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc == 3 && strcmp(argv[1], "first-call") == 0)
        return first_call_then_set_allocator(argv[2]);
    /* Before any other call of the library, cmocka's included. */
    first_set_allocator_status = cv_set_allocator(&counting_allocator);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocator_installed_before_any_call),
        cmocka_unit_test(test_set_allocator_late_or_invalid),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_no_value_leaves_out_untouched),
        cmocka_unit_test(test_reused_token),
        cmocka_unit_test(test_never_filled_token),
        cmocka_unit_test(test_token_of_another_variable),
        cmocka_unit_test(test_token_of_a_released_context),
        cmocka_unit_test(test_exits_in_the_wrong_order),
        cmocka_unit_test(test_exit_of_the_base_context),
        cmocka_unit_test(test_enter_an_entered_context_in_this_thread),
        cmocka_unit_test(test_enter_a_context_another_thread_holds),
        cmocka_unit_test(test_run_fn_leaves_a_context_entered),
        cmocka_unit_test(test_run_fn_exits_contexts_it_did_not_enter),
        cmocka_unit_test(test_out_of_memory_changes_nothing),
        cmocka_unit_test(test_get_on_a_fresh_thread_allocates_nothing),
        cmocka_unit_test(test_strerror_of_an_unknown_status),
        cmocka_unit_test(test_hooks_may_not_change_contexts),
        cmocka_unit_test(test_hooks_may_copy_the_context_they_change),
        cmocka_unit_test(test_reset_after_the_creator_released_the_variable),
        cmocka_unit_test(test_any_first_call_closes_the_allocator_window),
        cmocka_unit_test(test_every_free_got_the_size_asked_for),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
