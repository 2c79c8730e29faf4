"""What a process made by fork() inherits from fastnorm, and how it stays usable.

Two things could leave a forked child stuck; each is handled where it lives:

* The OpenMP thread pool.  GNU libgomp's pool does not survive fork(): in the
  child the first parallel region waits forever for workers that were not
  copied.  The kernels' pthread_atfork handlers (fastnorm/_omp_shim.h) end
  the forking thread's pool just before fork(), so the child (and the
  parent) start a fresh one, with the same thread count, on their next
  parallel call.  They run for every fork() of the process, whoever calls it.

* The per-layer update locks (this module).  A training call that updates
  running statistics holds its layer's lock.  Were another thread inside
  such a call when the process forks, the child would inherit the lock held
  by a thread it does not have, and its own training calls on that layer
  would wait forever; the running statistics could also be half-updated.
  So every update lock is made here and registered, and an
  os.register_at_fork hook takes all of them just before the fork and gives
  them back just after, in the parent and in the child: fork() waits for the
  training calls in flight in other threads (at most one call per layer) and
  the child gets every layer in a consistent state, its locks free.  The
  locks are re-entrant, so a thread that forks while it holds one (from a
  signal handler, say) does not wait for itself.  These hooks run for
  Python's os.fork (multiprocessing, gunicorn, ...); a fork() made by C code
  does not run them, only the OpenMP handlers above.

The output pool needs nothing: it is used with the GIL held, and the thread
that forks holds the GIL, so the child's copy is consistent.
"""
import os
import threading
import weakref

_locks = weakref.WeakSet()         # every live update lock
_registry = threading.RLock()      # guards _locks; held across fork() too
_held = []                         # the locks the running fork took


def update_lock():
    """A new re-entrant lock for a layer's running-statistics updates,
    taken across every os.fork() so that no child inherits it held."""
    lock = threading.RLock()
    with _registry:
        _locks.add(lock)
    return lock


def _before_fork():
    _registry.acquire()             # no lock is made while the fork runs
    locks = list(_locks)
    for lock in locks:
        lock.acquire()
    _held[:] = locks


def _after_fork():
    locks = _held[:]
    _held.clear()
    for lock in reversed(locks):
        lock.release()
    _registry.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)
