/*
 * Deferred reclamation on liburcu's bulletproof flavor.
 *
 * Why urcu-bp: a library cannot make its callers register their threads.
 * urcu-bp registers a reader lazily on its first read lock and unregisters
 * it when the thread exits; the memb flavor hangs synchronize_rcu when a
 * registered thread exits unregistered, and aborts when a thread registers
 * twice (as it would if the application also used memb).
 *
 * Why batches: one call_rcu costs about 100 ns, more than a whole set. Each
 * thread links what it retires through the objects' first words into a
 * private list and hands the list to call_rcu once it holds BATCH_SIZE
 * objects, at thread exit, or when cvi_reclaim_barrier asks for it.
 *
 * The lists are reachable from a registry so that a barrier can take the
 * pending objects of every thread, including threads that are idle; that
 * is why the owner pushes with a compare-and-swap (on its own cache line,
 * uncontended but for a barrier) instead of a plain store.
 */
#define _GNU_SOURCE /* syscall(2) */
#include "reclaim.h"

#include "alloc.h"
#include "testing.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <urcu/urcu-bp.h>

#define BATCH_SIZE 128

/* ThreadSanitizer cannot see the ordering that liburcu provides (it is not
 * instrumented): tell it that every read-side section that ended, and every
 * retirement, happens before the disposals that follow a grace period. */
#if defined(__SANITIZE_THREAD__)
#define CV_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CV_TSAN 1
#endif
#endif
#ifdef CV_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char grace_period_order;
#define tsan_release_to_grace_period() __tsan_release(&grace_period_order)
#define tsan_acquire_from_grace_period() __tsan_acquire(&grace_period_order)
#else
#define tsan_release_to_grace_period() ((void)0)
#define tsan_acquire_from_grace_period() ((void)0)
#endif

typedef void (*dispose_fn)(void *obj);

struct pending {
    _Atomic(void *) head;        /* retired objects, linked through their first word */
    _Atomic(dispose_fn) dispose; /* how to dispose of every object in the list */
    /* The owner's estimate of the list's length; a barrier that takes the
     * list zeroes it too, hence atomic (relaxed: only an estimate). */
    atomic_uint count;
    bool registered;
    struct pending *prev, *next; /* registry links, under registry_lock */
};

struct batch {
    struct rcu_head rcu;
    dispose_fn dispose;
    void *list;
};

static __thread struct pending thread_pending __attribute__((tls_model("initial-exec")));

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pending *registry;
static pthread_key_t thread_exit_key;
static pthread_once_t thread_exit_key_once = PTHREAD_ONCE_INIT;

bool cvi_fence_asymmetric;

static bool membarrier_register(void)
{
    long commands = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    return commands > 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
           syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

/* Decided before any other code of the library runs, so that no hot-side
 * fence is ever a compiler barrier without a rare side to match it. */
__attribute__((constructor)) static void choose_fences(void)
{
    cvi_fence_asymmetric = membarrier_register();
}

void cvi_fence_rare(void)
{
    if (!cvi_fence_asymmetric) {
        atomic_thread_fence(memory_order_seq_cst);
        return;
    }
    /* A registered process cannot see this fail; if the kernel ever did,
     * going on would let a hot side free what a reader walks. */
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
        abort();
}

void cvi_read_lock(void)
{
    urcu_bp_read_lock();
}

void cvi_read_unlock(void)
{
    tsan_release_to_grace_period();
    urcu_bp_read_unlock();
}

static void dispose_list(void *list, dispose_fn dispose)
{
    while (list) {
        void *next = *(void **)list;
        dispose(list);
        list = next;
    }
}

/* Work that disposals and deferred calls create (a node's last child, the
 * root of a context a deferred call releases), in RCU callbacks or inline
 * when reclamation is behind: counted when an object is
 * retired and again when a batch is handed to call_rcu, so that the barrier
 * waits for these cascades too. The second count matters: a callback that
 * hands its batch to call_rcu after a barrier queued its own callback puts
 * the batch behind it, and only a count made after that call tells the
 * barrier to go round once more. */
static __thread bool in_callback __attribute__((tls_model("initial-exec")));
static atomic_ulong callback_work;

/* Batches handed to call_rcu and not disposed of yet. On a busy machine
 * the RCU worker can fall behind threads that retire without pause (a
 * context written while others keep reading it); past this many batches
 * (about 64k objects) a retiring thread waits for a grace period itself
 * and disposes of its own batch, so that garbage stays bounded. */
#define MAX_BATCHES_IN_FLIGHT 512
static atomic_long batches_in_flight;

static void dispose_batch(struct rcu_head *rcu)
{
    struct batch *batch = caa_container_of(rcu, struct batch, rcu);
    tsan_acquire_from_grace_period();
    in_callback = true;
    dispose_list(batch->list, batch->dispose);
    in_callback = false;
    cvi_free(batch, sizeof(*batch));
    /* Relaxed: a count for back-pressure, it orders nothing. */
    atomic_fetch_sub_explicit(&batches_in_flight, 1, memory_order_relaxed);
}

static __thread unsigned waiting_forbidden __attribute__((tls_model("initial-exec")));

void cvi_reclaim_forbid_waiting(void)
{
    waiting_forbidden++;
}

void cvi_reclaim_allow_waiting(void)
{
    waiting_forbidden--;
}

static void submit(void *list, dispose_fn dispose)
{
    if (!list)
        return;
    /* Never from a callback: waiting there for a grace period would wait
     * for the worker that runs it; nor where the caller forbids it. Relaxed:
     * see batches_in_flight. */
    bool behind =
        !in_callback && !waiting_forbidden &&
        atomic_load_explicit(&batches_in_flight, memory_order_relaxed) > MAX_BATCHES_IN_FLIGHT;
    struct batch *batch = behind ? NULL : cvi_alloc(sizeof(*batch));
    if (!batch) {
        /* Reclamation is behind, or memory is short for the batch header:
         * wait for the grace period here instead. Slow, but retiring must
         * not fail. */
        cvi_synchronize();
        /* As a callback would: what the disposals retire counts as work
         * that a barrier waits for, and waits for no grace period here. */
        bool outer = in_callback;
        in_callback = true;
        dispose_list(list, dispose);
        in_callback = outer;
        return;
    }
    atomic_fetch_add_explicit(&batches_in_flight, 1, memory_order_relaxed);
    batch->dispose = dispose;
    batch->list = list;
    tsan_release_to_grace_period();
    urcu_bp_call_rcu(&batch->rcu, dispose_batch);
    /* Release: as in cvi_retire. */
    if (in_callback)
        atomic_fetch_add_explicit(&callback_work, 1, memory_order_release);
}

struct deferred {
    struct rcu_head rcu;
    void (*fn)(void *arg);
    void *arg;
};

static void run_deferred(struct rcu_head *rcu)
{
    struct deferred *deferred = caa_container_of(rcu, struct deferred, rcu);
    tsan_acquire_from_grace_period();
    in_callback = true;
    deferred->fn(deferred->arg);
    in_callback = false;
    cvi_free(deferred, sizeof(*deferred));
}

bool cvi_defer(void (*fn)(void *arg), void *arg)
{
    struct deferred *deferred = cvi_alloc(sizeof(*deferred));
    if (!deferred)
        return false;
    deferred->fn = fn;
    deferred->arg = arg;
    tsan_release_to_grace_period();
    urcu_bp_call_rcu(&deferred->rcu, run_deferred);
    return true;
}

void cvi_synchronize(void)
{
    tsan_release_to_grace_period();
    urcu_bp_synchronize_rcu();
    tsan_acquire_from_grace_period();
}

/* Takes the pending list, leaving it empty. */
static void *take(struct pending *pending)
{
    /* Acquire: pairs with the release push, so the links written into the
     * objects are visible before we walk them. Release: a barrier whose
     * take comes after this one sees the flush count that precedes it. */
    void *list = atomic_exchange_explicit(&pending->head, NULL, memory_order_acq_rel);
    atomic_store_explicit(&pending->count, 0, memory_order_relaxed);
    return list;
}

/* Lists that their owners have taken and not yet handed to call_rcu (or
 * disposed of, when reclamation is behind). A barrier cannot take these,
 * so it waits until they are handed over: only those counted under the
 * epoch that it ends after its own takes, so that flushes which begin
 * while it waits (each may wait a grace period, when reclamation is
 * behind) cannot hold it off. Each thread also counts its own: a fork from
 * a release hook that a flush calls, or an exit from one, must leave the
 * global counts true (see after_fork_child and on_thread_exit). */
static atomic_uint flush_epoch;
static atomic_long lists_in_hand[2];
static __thread long own_lists_in_hand[2] __attribute__((tls_model("initial-exec")));

/* Counts a list about to be taken; returns the epoch's parity, for
 * hand_over_list. */
static unsigned hold_list(void)
{
    /* Seq_cst, the three: a Dekker pair with wait_for_lists_in_hand's flip
     * and load. Either the epoch read again is the one the count went
     * under, and a barrier that flips after it sees the count, or a flip
     * came between and the count moves to the new epoch. */
    for (;;) {
        unsigned epoch = atomic_load_explicit(&flush_epoch, memory_order_seq_cst);
        unsigned parity = epoch & 1;
        atomic_fetch_add_explicit(&lists_in_hand[parity], 1, memory_order_seq_cst);
        if (atomic_load_explicit(&flush_epoch, memory_order_seq_cst) == epoch) {
            own_lists_in_hand[parity]++;
            return parity;
        }
        /* Relaxed: no list was taken under it. */
        atomic_fetch_sub_explicit(&lists_in_hand[parity], 1, memory_order_relaxed);
    }
}

static void hand_over_list(unsigned parity)
{
    own_lists_in_hand[parity]--;
    /* Release: the hand-over happens before a barrier that sees the count
     * drop waits for the callbacks queued so far. */
    atomic_fetch_sub_explicit(&lists_in_hand[parity], 1, memory_order_release);
}

static void (*pause_in_flush_for_testing)(void);

void cv_testing_pause_in_flush(void (*pause)(void))
{
    pause_in_flush_for_testing = pause;
}

static void flush(struct pending *pending)
{
    unsigned parity = hold_list();
    void *list = take(pending);
    if (__builtin_expect(pause_in_flush_for_testing != NULL, 0) && list)
        pause_in_flush_for_testing();
    submit(list, atomic_load_explicit(&pending->dispose, memory_order_relaxed));
    hand_over_list(parity);
}

static void unlink_thread(struct pending *pending)
{
    pthread_mutex_lock(&registry_lock);
    if (pending->prev)
        pending->prev->next = pending->next;
    else
        registry = pending->next;
    if (pending->next)
        pending->next->prev = pending->prev;
    pthread_mutex_unlock(&registry_lock);
    pending->registered = false;
}

static void on_thread_exit(void *arg)
{
    struct pending *pending = arg;
    flush(pending);
    unlink_thread(pending);
    /* Lists the thread still holds were abandoned by an exit from inside a
     * flush (a release hook calling pthread_exit): nobody will hand them
     * over, and barriers must not wait for them. */
    for (unsigned parity = 0; parity < 2; parity++) {
        atomic_fetch_sub_explicit(&lists_in_hand[parity], own_lists_in_hand[parity],
                                  memory_order_release);
        own_lists_in_hand[parity] = 0;
    }
}

static void create_thread_exit_key(void)
{
    /* Without the key, retired objects of exiting threads would be lost. */
    if (pthread_key_create(&thread_exit_key, on_thread_exit) != 0)
        abort();
}

/* Links the calling thread's `pending` into the registry, under
 * registry_lock. False if its exit cannot be hooked (no memory for the
 * key's value): the registry's entries must not outlive their threads. */
static bool link_thread(struct pending *pending)
{
    pthread_once(&thread_exit_key_once, create_thread_exit_key);
    if (pthread_setspecific(thread_exit_key, pending) != 0)
        return false;
    pending->prev = NULL;
    pending->next = registry;
    if (registry)
        registry->prev = pending;
    registry = pending;
    pending->registered = true;
    return true;
}

static bool register_thread(struct pending *pending)
{
    pthread_mutex_lock(&registry_lock);
    bool linked = link_thread(pending);
    pthread_mutex_unlock(&registry_lock);
    return linked;
}

/* Hands over the list and gives it another dispose function. Under the
 * registry lock, as a barrier reads the function and takes the list: it
 * must never pair a list with the function of the other. */
static void switch_dispose(struct pending *pending, dispose_fn dispose)
{
    unsigned parity = hold_list();
    pthread_mutex_lock(&registry_lock);
    void *list = take(pending);
    dispose_fn previous = atomic_load_explicit(&pending->dispose, memory_order_relaxed);
    atomic_store_explicit(&pending->dispose, dispose, memory_order_relaxed);
    pthread_mutex_unlock(&registry_lock);
    submit(list, previous);
    hand_over_list(parity);
}

void cvi_retire(void *obj, void (*dispose)(void *obj))
{
    struct pending *pending = &thread_pending;
    if (!pending->registered && !register_thread(pending)) {
        /* A list of its own, handed over at once: slow, but nothing is
         * left where only the thread's exit would find it. */
        *(void **)obj = NULL;
        submit(obj, dispose);
        return;
    }
    if (atomic_load_explicit(&pending->dispose, memory_order_relaxed) != dispose)
        switch_dispose(pending, dispose);
    void *head = atomic_load_explicit(&pending->head, memory_order_relaxed);
    do {
        *(void **)obj = head;
        /* Release: the link must be visible to a barrier that takes the
         * list. Relaxed on failure: we only retry. */
    } while (!atomic_compare_exchange_weak_explicit(&pending->head, &head, obj,
                                                    memory_order_release, memory_order_relaxed));
    /* Load and store, not an RMW: a lost zeroing by a barrier only makes
     * the next batch smaller. */
    unsigned count = atomic_load_explicit(&pending->count, memory_order_relaxed) + 1;
    atomic_store_explicit(&pending->count, count, memory_order_relaxed);
    if (count >= BATCH_SIZE)
        flush(pending);
    /* Counted after the push. Release: a barrier that sees the count
     * (acquire) then takes the list with the object on it. */
    if (in_callback)
        atomic_fetch_add_explicit(&callback_work, 1, memory_order_release);
}

/* The lists a barrier takes, joined by dispose function. */
#define BARRIER_CHAINS 4
struct chain {
    void *head, *tail;
    dispose_fn dispose;
};

/* The chain for `dispose`, started if need be; NULL when all are taken. */
static struct chain *chain_for(struct chain *chains, unsigned *used, dispose_fn dispose)
{
    for (unsigned i = 0; i < *used; i++)
        if (chains[i].dispose == dispose)
            return &chains[i];
    if (*used == BARRIER_CHAINS)
        return NULL;
    chains[*used] = (struct chain){NULL, NULL, dispose};
    return &chains[(*used)++];
}

static void append(struct chain *chain, void *list)
{
    void *tail = list;
    while (*(void **)tail)
        tail = *(void **)tail;
    if (chain->tail)
        *(void **)chain->tail = list;
    else
        chain->head = list;
    chain->tail = tail;
}

/* Lists taken before a fork and not yet adopted by a thread (see fork
 * below), under registry_lock. */
static struct chain fork_chains[BARRIER_CHAINS];
static unsigned fork_chains_used;

/*
 * Takes every thread's pending list under the registry lock but hands them
 * to call_rcu only after dropping it: call_rcu may take liburcu's
 * call_rcu_mutex, which fork() preparation holds while it waits for the
 * registry lock. A pass that meets more dispose functions than it has
 * chains leaves the other lists to the next pass.
 */
static void flush_every_thread(void)
{
    bool again;
    do {
        struct chain chains[BARRIER_CHAINS];
        unsigned used = 0;
        again = false;
        pthread_mutex_lock(&registry_lock);
        for (struct pending *pending = registry; pending; pending = pending->next) {
            dispose_fn dispose = atomic_load_explicit(&pending->dispose, memory_order_relaxed);
            struct chain *chain = chain_for(chains, &used, dispose);
            void *list = chain ? take(pending) : NULL;
            if (list)
                append(chain, list);
            again |= !chain;
        }
        /* What a fork could not give a thread's list (see fork below). */
        for (unsigned i = 0; i < fork_chains_used; i++) {
            struct chain *left = &fork_chains[i];
            struct chain *chain = left->head ? chain_for(chains, &used, left->dispose) : NULL;
            if (chain) {
                append(chain, left->head);
                left->head = left->tail = NULL;
            }
            again |= left->head != NULL;
        }
        pthread_mutex_unlock(&registry_lock);
        for (unsigned i = 0; i < used; i++)
            if (chains[i].head)
                submit(chains[i].head, chains[i].dispose);
    } while (again);
}

/* One barrier at a time flips the epoch and waits: a second one's flip
 * would send new flushes back to the parity that the first waits on, and
 * its own wait would skip lists counted under the first's. */
static pthread_mutex_t epoch_lock = PTHREAD_MUTEX_INITIALIZER;

/* Waits until the lists that threads took before the caller's own takes
 * are handed over. */
static void wait_for_lists_in_hand(void)
{
    pthread_mutex_lock(&epoch_lock);
    /* Seq_cst, this and the loads: see hold_list. The loads also pair
     * with hand_over_list's release, so the lists that other threads had
     * taken are queued before the barrier's callbacks. */
    unsigned parity = atomic_fetch_add_explicit(&flush_epoch, 1, memory_order_seq_cst) & 1;
    while (atomic_load_explicit(&lists_in_hand[parity], memory_order_seq_cst) != 0)
        sched_yield();
    pthread_mutex_unlock(&epoch_lock);
}

/* Rounds of cascading retirements a barrier follows: a cascade goes one
 * trie level (at most 7) or one context per round. Other threads' new
 * retirements are not waited for: the barrier only owes what came before
 * it. */
#define BARRIER_MAX_ROUNDS 16

/* Disposals and deferred calls may retire more; those land on the RCU
 * worker's own list or in batches it queued, so flush and wait again while
 * callbacks made work during the last wait. */
void cvi_reclaim_barrier(void)
{
    for (int round = 0; round < BARRIER_MAX_ROUNDS; round++) {
        /* Read before the flush: work counted later makes another round,
         * work counted earlier is in the lists the flush takes (acquire,
         * pairing with the callbacks' release counts). */
        unsigned long before = atomic_load_explicit(&callback_work, memory_order_acquire);
        flush_every_thread();
        wait_for_lists_in_hand();
        urcu_bp_barrier();
        /* Relaxed: urcu_bp_barrier waited for the callbacks that count. */
        if (atomic_load_explicit(&callback_work, memory_order_relaxed) == before)
            break;
    }
}

/*
 * fork(): pause the call_rcu worker between callbacks first (a callback may
 * take library locks), then hold the registry so no thread is half-linked,
 * then let urcu-bp quiesce its own registry.
 *
 * The registry's entries live in their threads' static TLS, and in the
 * child glibc treats the other threads' stacks, TLS included, as free: it
 * may unmap them or give them to the child's next threads, which zero
 * them (seen here: a new thread's entry at the address of a parent
 * thread's, still linked, and the registry a cycle). So nothing of theirs
 * may be read in the child. Their lists are taken before the fork, and on
 * both sides the forking thread's own list adopts them: no call_rcu inside
 * a fork handler, where liburcu may start its worker thread (under
 * ThreadSanitizer, whose locks are held there, that hangs the child). A
 * list with another dispose function than the forking thread's waits in
 * fork_chains for the next barrier.
 */
/* Under registry_lock. */
static void adopt_fork_chains(void)
{
    struct pending *self = &thread_pending;
    bool any = false;
    for (unsigned i = 0; i < fork_chains_used; i++)
        any |= fork_chains[i].head != NULL;
    if (!any)
        return;
    if (!self->registered && !link_thread(self))
        return;
    for (unsigned i = 0; i < fork_chains_used; i++) {
        struct chain *chain = &fork_chains[i];
        /* Relaxed, all three: only this thread pushes to its list, and no
         * barrier can take it while the registry is held. */
        void *head = atomic_load_explicit(&self->head, memory_order_relaxed);
        if (!chain->head ||
            (head && atomic_load_explicit(&self->dispose, memory_order_relaxed) != chain->dispose))
            continue;
        *(void **)chain->tail = head;
        atomic_store_explicit(&self->dispose, chain->dispose, memory_order_relaxed);
        atomic_store_explicit(&self->head, chain->head, memory_order_relaxed);
        chain->head = chain->tail = NULL;
    }
    /* Handed over at the thread's next retirement. */
    atomic_store_explicit(&self->count, BATCH_SIZE - 1, memory_order_relaxed);
}

void cvi_reclaim_before_fork(void)
{
    urcu_bp_call_rcu_before_fork();
    pthread_mutex_lock(&registry_lock);
    for (struct pending *pending = registry; pending; pending = pending->next) {
        struct chain *chain =
            chain_for(fork_chains, &fork_chains_used,
                      atomic_load_explicit(&pending->dispose, memory_order_relaxed));
        /* A list beyond the chains stays with its thread: in the child,
         * only its nodes' memory is lost. */
        void *list = chain ? take(pending) : NULL;
        if (list)
            append(chain, list);
    }
    urcu_bp_before_fork();
}

void cvi_reclaim_after_fork_parent(void)
{
    urcu_bp_after_fork_parent();
    adopt_fork_chains();
    pthread_mutex_unlock(&registry_lock);
    urcu_bp_call_rcu_after_fork_parent();
}

void cvi_reclaim_after_fork_child(void)
{
    /* The child is a new memory map: its membarrier registration starts
     * empty. Without it, fall back to full fences on both sides; no other
     * thread is running yet, so none is mid-handshake. */
    if (cvi_fence_asymmetric)
        cvi_fence_asymmetric = membarrier_register();
    urcu_bp_after_fork_child();
    struct pending *self = &thread_pending;
    registry = self->registered ? self : NULL;
    if (registry)
        self->prev = self->next = NULL;
    /* Lists that the parent's other threads had in hand are lost with
     * them: a barrier here waits only for this thread's, which it goes on
     * handing over (a fork from a release hook that a flush calls). */
    for (unsigned parity = 0; parity < 2; parity++)
        atomic_store_explicit(&lists_in_hand[parity], own_lists_in_hand[parity],
                              memory_order_relaxed);
    /* A barrier of another thread may have held it, waiting: not fork
     * preparation's to take, since the list that barrier waits for may be
     * the forking thread's own (a fork from a release hook). The forking
     * thread itself never holds it: hooks may not wait for reclamation. */
    pthread_mutex_init(&epoch_lock, NULL);
    adopt_fork_chains();
    pthread_mutex_unlock(&registry_lock);
    urcu_bp_call_rcu_after_fork_child();
}
