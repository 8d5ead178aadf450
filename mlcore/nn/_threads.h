/* mlcore's one thread pool: every parallel loop of the kernels runs on it.

   Why not OpenMP: libgomp's idle threads spin on their core for milliseconds after every
   parallel loop unless OMP_WAIT_POLICY=passive is set before it loads, which a library cannot
   do. On a shared or loaded machine (a sweep, a Dask worker beside others, a CI box) those
   spinning threads took the CPU the training needed: a digits training ran 5x slower than
   with the variable set. These workers sleep on a condition variable as soon as a loop ends.

   mlcore_parallel(fn, arg, n, nthreads) runs fn(arg, i, tid) for every item i in [0, n),
   the caller being thread 0 and up to nthreads - 1 pool workers the others; items are handed
   out one by one (a shared counter) to whoever is awake, so a worker the machine does not
   schedule in time is not waited for (the caller takes its items). Which thread runs an item
   varies, and no kernel lets
   that change a result: an item writes only its own outputs, and every sum lies inside one
   item. tid (0 .. nthreads-1) indexes per-thread scratch. While one caller uses the pool,
   another (a second Python thread) runs its loop on its own thread: the same results. The
   workers start on first use and are forgotten in a forked child (pthread_atfork). */
#ifndef MLCORE_THREADS_H
#define MLCORE_THREADS_H

#include <Python.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#define MLT_MAX 256

typedef void (*mlcore_item)(void* arg, Py_ssize_t i, int tid);

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    pthread_mutex_t busy; /* held by the caller using the pool */
    int started;          /* workers running */
    unsigned long gen;    /* one per loop */
    int active;           /* workers that may join the current loop: ids 1..active */
    int running;          /* workers that joined it and are still working */
    int closed;           /* the caller ran out of items: nobody joins any more */
    mlcore_item fn;
    void* arg;
    Py_ssize_t n;
    Py_ssize_t next;
} mlcore_pool_t;

static mlcore_pool_t mlcore_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                                    PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                                    0, 0, 0, 0, 0, NULL, NULL, 0, 0};
static int mlcore_pool_atfork = 0;

static void mlcore_run_items(int tid) {
    mlcore_pool_t* p = &mlcore_pool;
    for (;;) {
        Py_ssize_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= p->n) break;
        p->fn(p->arg, i, tid);
    }
}

static void* mlcore_worker(void* id_) {
    int id = (int)(intptr_t)id_;
    mlcore_pool_t* p = &mlcore_pool;
    pthread_mutex_lock(&p->mu);
    unsigned long seen = p->gen;
    for (;;) {
        while (p->gen == seen) pthread_cond_wait(&p->work, &p->mu);
        seen = p->gen;
        if (p->closed || id > p->active) continue; /* woke too late: the caller did it */
        p->running++;
        pthread_mutex_unlock(&p->mu);
        mlcore_run_items(id);
        pthread_mutex_lock(&p->mu);
        if (--p->running == 0 && p->closed) pthread_cond_signal(&p->done);
    }
    return NULL;
}

static void mlcore_pool_child(void) {
    /* a forked child has none of the parent's workers: start afresh */
    mlcore_pool_t fresh = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                           PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                           0, 0, 0, 0, 0, NULL, NULL, 0, 0};
    mlcore_pool = fresh;
}

static int mlcore_default_threads(void) {
    /* OMP_NUM_THREADS when set (its first number, as OpenMP reads it: Dask workers and users
       set it), else the CPUs this process may run on */
    const char* s = getenv("OMP_NUM_THREADS");
    if (s != NULL) {
        long v = strtol(s, NULL, 10);
        if (v >= 1) return v > MLT_MAX ? MLT_MAX : (int)v;
    }
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c >= 1) return c > MLT_MAX ? MLT_MAX : c;
    }
#endif
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c >= 1 ? (c > MLT_MAX ? MLT_MAX : (int)c) : 1;
}

static void mlcore_parallel(mlcore_item fn, void* arg, Py_ssize_t n, int nthreads) {
    mlcore_pool_t* p = &mlcore_pool;
    if (n <= 0) return;
    if (nthreads > n) nthreads = (int)n;
    if (nthreads > MLT_MAX) nthreads = MLT_MAX;
    if (nthreads <= 1 || pthread_mutex_trylock(&p->busy) != 0) {
        for (Py_ssize_t i = 0; i < n; i++) fn(arg, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (!mlcore_pool_atfork) {
        pthread_atfork(NULL, NULL, mlcore_pool_child);
        mlcore_pool_atfork = 1;
    }
    while (p->started < nthreads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, mlcore_worker, (void*)(intptr_t)(p->started + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        p->started++;
    }
    int helpers = nthreads - 1 < p->started ? nthreads - 1 : p->started;
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->next = 0;
    p->active = helpers;
    p->running = 0;
    p->closed = 0;
    p->gen++;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    mlcore_run_items(0);
    /* every item is taken: wait only for the workers that joined (one that has not woken up
       yet, on a busy machine, is not waited for) */
    pthread_mutex_lock(&p->mu);
    p->closed = 1;
    while (p->running > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->busy);
}

#endif
