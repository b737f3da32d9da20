/*
 * Deferred reclamation through RCU (liburcu's bulletproof flavor).
 *
 * Objects that a concurrent reader may still be walking are retired here
 * instead of being freed; they are disposed of after a grace period, when
 * every read-side critical section that could have seen them has ended.
 * Retirements are batched per thread: one call_rcu per batch, never one
 * per object. This layer knows nothing of what it reclaims.
 */
#ifndef CV_RECLAIM_H
#define CV_RECLAIM_H

#include <stdatomic.h>
#include <stdbool.h>

/* Read-side critical section around a walk of shared objects. Nests. */
void cvi_read_lock(void);
void cvi_read_unlock(void);

/* Disposes of `obj` after a grace period by calling dispose(obj), on some
 * other thread. The first pointer-sized word of `obj` belongs to this layer
 * from now on. Never fails; must not be called inside a read-side critical
 * section. */
void cvi_retire(void *obj, void (*dispose)(void *obj));

/* Between these, the calling thread's retirements neither wait for a grace
 * period nor dispose of anything on the thread, even when reclamation is
 * behind (only when memory is short for a batch's header do they still):
 * for a caller in the middle of a change that a disposal's release hooks
 * must not see. They nest. */
void cvi_reclaim_forbid_waiting(void);
void cvi_reclaim_allow_waiting(void);

/* Calls fn(arg) on some other thread after a grace period, when every
 * read-side section under way now has ended. False if memory is short:
 * nothing is scheduled then. */
bool cvi_defer(void (*fn)(void *arg), void *arg);

/* Waits for a grace period. Not inside a read-side section. */
void cvi_synchronize(void);

/* Returns once everything retired by any thread before the call has been
 * disposed of. */
void cvi_reclaim_barrier(void);

/* Asymmetric fences, for a store-then-load handshake (Dekker) between a hot
 * side and a rare side. Together they order like two seq_cst fences. Where
 * the kernel offers membarrier(2), the hot side's fence is only a compiler
 * barrier and the rare side makes every running thread of the process
 * execute a full barrier; elsewhere both are full fences. */
extern bool cvi_fence_asymmetric;

static inline void cvi_fence_hot(void)
{
    if (cvi_fence_asymmetric)
        atomic_signal_fence(memory_order_seq_cst);
    else
        atomic_thread_fence(memory_order_seq_cst);
}

void cvi_fence_rare(void);

/* fork() handlers, run by the library's pthread_atfork hooks. */
void cvi_reclaim_before_fork(void);
void cvi_reclaim_after_fork_parent(void);
void cvi_reclaim_after_fork_child(void);

#endif
