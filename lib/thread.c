/*
 * Per-thread state: the base context, created on first need; the stack of
 * entered contexts; cleanup at thread exit; threads that inherit a copy of
 * their creator's context; fork handlers.
 *
 * The state is a plain __thread struct, so a thread that only reads
 * variables (cv_get on an empty base) allocates nothing. Cleanup runs from
 * a pthread key destructor armed when the thread first gets a context.
 */
#include "thread.h"

#include "alloc.h"
#include "callbacks.h"
#include "context.h"
#include "reclaim.h"
#include "var.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

/* Ids come in blocks so that making contexts and writing maps on many
 * threads at once does not contend on one counter. */
#define ID_BLOCK 1024

__thread struct cvi_thread cvi_thread_state __attribute__((tls_model("initial-exec")));

/* Threads that may update maps in place, for fork() to wait on. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cvi_thread *registry;
atomic_bool cvi_fork_pending;

static void register_thread(struct cvi_thread *thread)
{
    pthread_mutex_lock(&registry_lock);
    thread->registry_prev = NULL;
    thread->registry_next = registry;
    if (registry)
        registry->registry_prev = thread;
    registry = thread;
    thread->registered = true;
    pthread_mutex_unlock(&registry_lock);
}

static void unregister_thread(struct cvi_thread *thread)
{
    if (!thread->registered)
        return;
    pthread_mutex_lock(&registry_lock);
    if (thread->registry_prev)
        thread->registry_prev->registry_next = thread->registry_next;
    else
        registry = thread->registry_next;
    if (thread->registry_next)
        thread->registry_next->registry_prev = thread->registry_prev;
    thread->registered = false;
    pthread_mutex_unlock(&registry_lock);
}

static pthread_key_t thread_exit_key;
static pthread_once_t thread_exit_key_once = PTHREAD_ONCE_INIT;
/* Starts above the ids that are never handed out (thread.h). */
static atomic_uint_fast64_t next_id_block = CVI_EMPTY_MAP_LABEL + 1;

void cvi_thread_take_id_block(struct cvi_thread *thread)
{
    /* Relaxed: only uniqueness matters, which the RMW gives. */
    thread->next_id = atomic_fetch_add_explicit(&next_id_block, ID_BLOCK, memory_order_relaxed);
    thread->id_block_end = thread->next_id + ID_BLOCK;
}

/* Leaves every entered context, the base included, and frees the stack and
 * the cache. */
static void on_thread_exit(void *arg)
{
    struct cvi_thread *thread = arg;
    cvi_callbacks_thread_exit(thread);
    /* Entries lent by runs that the thread never returned from (it exited
     * inside fn) are only disowned: their reference is the caller's, except
     * for a task's, which the run owned. */
    while (thread->depth) {
        cv_context_t *entry = thread->stack[--thread->depth];
        if (cvi_stack_holds_reference(entry))
            cvi_context_leave(cvi_stack_context(entry));
        else
            cvi_context_disown(cvi_stack_context(entry));
    }
    cvi_task_thread_exit(thread);
    if (thread->stack != thread->inline_stack)
        cvi_free(thread->stack, thread->stack_capacity * sizeof(*thread->stack));
    thread->stack = NULL;
    thread->stack_capacity = 0;
    thread->run_floor = 0;
    cvi_var_cache_thread_exit();
    cvi_var_hooks_thread_exit(thread);
    /* Cleared: a thread that exits from inside an update in place (a
     * release hook calling pthread_exit) has abandoned it, and fork(),
     * which holds the registry while it waits, must not wait for it.
     * Release: as in cvi_context_end_write. */
    atomic_store_explicit(&thread->updating_in_place, false, memory_order_release);
    unregister_thread(thread);
    thread->exit_hook_armed = false;
}

static void create_thread_exit_key(void)
{
    /* Without the key, every thread's contexts would leak at its exit. */
    if (pthread_key_create(&thread_exit_key, on_thread_exit) != 0)
        abort();
}

static bool arm_exit_hook(struct cvi_thread *thread)
{
    if (thread->exit_hook_armed)
        return true;
    pthread_once(&thread_exit_key_once, create_thread_exit_key);
    thread->exit_hook_armed = pthread_setspecific(thread_exit_key, thread) == 0;
    /* Only a thread whose exit unregisters it may join the registry. */
    if (thread->exit_hook_armed)
        register_thread(thread);
    return thread->exit_hook_armed;
}

/* Installs `base`, which the thread now owns, at the bottom of its stack. */
static void install_base(struct cvi_thread *thread, cv_context_t *base)
{
    cvi_context_claim(base, thread);
    cvi_context_claimed(base);
    thread->stack = thread->inline_stack;
    thread->stack_capacity = CVI_INLINE_STACK;
    thread->stack[0] = base;
    thread->depth = 1;
    thread->run_floor = 0;
    cvi_context_view(base);
    cvi_var_cache_thread_start();
}

struct cvi_thread *cvi_thread_start(void)
{
    cvi_allocator_freeze();
    struct cvi_thread *thread = &cvi_thread_state;
    if (!arm_exit_hook(thread))
        return NULL;
    cv_context_t *base = cv_context_new();
    if (!base)
        return NULL;
    install_base(thread, base);
    return thread;
}

bool cvi_thread_grow(struct cvi_thread *thread)
{
    uint32_t capacity = thread->stack_capacity * 2;
    cv_context_t **grown = cvi_alloc(capacity * sizeof(*grown));
    if (!grown)
        return false;
    memcpy(grown, thread->stack, thread->depth * sizeof(*grown));
    if (thread->stack != thread->inline_stack)
        cvi_free(thread->stack, thread->stack_capacity * sizeof(*grown));
    thread->stack = grown;
    thread->stack_capacity = capacity;
    return true;
}

cv_context_t *cv_context_current(void)
{
    struct cvi_thread *thread = cvi_thread_ready();
    return thread ? cvi_thread_current(thread) : NULL;
}

/* ---------------------------------------------------------------- threads */

struct thread_start {
    void *(*start)(void *);
    void *arg;
    cv_context_t *inherited;
};

static void *start_with_inherited_context(void *arg)
{
    struct thread_start boot = *(struct thread_start *)arg;
    cvi_free(arg, sizeof(boot));
    struct cvi_thread *thread = &cvi_thread_state;
    /* Without an exit hook (pthread_setspecific out of memory) the thread
     * could neither clean up nor be waited for by whoever unregisters a
     * callback it runs: it goes without the library, whose calls then
     * report memory short, as they would on a plain thread. */
    if (arm_exit_hook(thread))
        install_base(thread, boot.inherited);
    else
        cv_context_release(boot.inherited);
    return boot.start(boot.arg);
}

int cv_thread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *),
                     void *arg)
{
    if (!thread || !start)
        return EINVAL;
    struct thread_start *boot = cvi_alloc(sizeof(*boot));
    cv_context_t *inherited = boot ? cv_capture_context() : NULL;
    if (!inherited) {
        cvi_free(boot, sizeof(*boot));
        return ENOMEM;
    }
    *boot = (struct thread_start){start, arg, inherited};
    int error = pthread_create(thread, attr, start_with_inherited_context, boot);
    if (error) {
        cv_context_release(inherited);
        cvi_free(boot, sizeof(*boot));
    }
    return error;
}

/* ------------------------------------------------------------------- fork */

/* New updates in place wait, and those under way finish, before the fork
 * (context.h, cvi_context_begin_write). This comes first: an update may
 * take the locks below (a dropped variable takes the slot lock). */
static void quiesce_updates_in_place(void)
{
    pthread_mutex_lock(&registry_lock);
    /* Relaxed: the fence below orders it before our loads of the flags. */
    atomic_store_explicit(&cvi_fork_pending, true, memory_order_relaxed);
    cvi_fence_rare();
    struct cvi_thread *self = &cvi_thread_state;
    for (struct cvi_thread *thread = registry; thread; thread = thread->registry_next)
        /* Acquire: pairs with end_write, so the update is whole in the
         * child. A fork() from inside an update (a release hook) does not
         * wait for itself. */
        while (thread != self &&
               atomic_load_explicit(&thread->updating_in_place, memory_order_acquire))
            sched_yield();
}

void cvi_thread_wait_callbacks(void)
{
    struct cvi_thread *self = &cvi_thread_state;
    pthread_mutex_lock(&registry_lock);
    for (struct cvi_thread *thread = registry; thread; thread = thread->registry_next) {
        if (thread == self)
            continue;
        /* Acquire: pairs with the release that ends a run of callbacks, so
         * the calls happen before what the caller frees next. */
        unsigned seq = atomic_load_explicit(&thread->callbacks_seq, memory_order_acquire);
        if (!(seq & 1))
            continue;
        while (atomic_load_explicit(&thread->callbacks_seq, memory_order_acquire) == seq)
            sched_yield();
    }
    pthread_mutex_unlock(&registry_lock);
}

void cvi_wait_for_fork(void)
{
    /* Relaxed: begin_write fences before it looks again. */
    while (atomic_load_explicit(&cvi_fork_pending, memory_order_relaxed))
        sched_yield();
}

static void resume_updates_in_place(void)
{
    /* Relaxed: the registry unlock publishes it to the next fork. */
    atomic_store_explicit(&cvi_fork_pending, false, memory_order_relaxed);
    pthread_mutex_unlock(&registry_lock);
}

/* Lock order: callback registrations are held, updates in place are
 * drained, the RCU worker is paused (its callbacks take the slot lock),
 * then the library's locks; released in reverse. */
static void before_fork(void)
{
    cvi_callbacks_before_fork();
    quiesce_updates_in_place();
    cvi_reclaim_before_fork();
    cvi_var_before_fork();
}

static void after_fork_parent(void)
{
    cvi_var_after_fork();
    cvi_reclaim_after_fork_parent();
    resume_updates_in_place();
    cvi_callbacks_after_fork();
}

static void after_fork_child(void)
{
    cvi_var_after_fork();
    cvi_reclaim_after_fork_child();
    /* Only this thread exists in the child. */
    struct cvi_thread *self = &cvi_thread_state;
    registry = self->registered ? self : NULL;
    if (registry)
        self->registry_prev = self->registry_next = NULL;
    resume_updates_in_place();
    cvi_callbacks_after_fork();
}

__attribute__((constructor)) static void register_fork_handlers(void)
{
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}
