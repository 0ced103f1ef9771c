/* SPDX-License-Identifier: MIT */
/*
 * ThreadSanitizer and GLib's mutexes.
 *
 * GLib 2.74 builds GMutex and GCond on raw futex calls, which TSan cannot
 * see: every access made under meta_lock would be reported as a race, and
 * the real ones would drown in them.  Linked into the unit tests of a
 * -Db_sanitize=thread build only, these definitions take the place of
 * GLib's (the executable's symbols come first), call GLib's own through
 * dlsym(RTLD_NEXT) and tell TSan which lock was taken and given back.
 *
 * Copyright (c) 2026 The qguard authors
 */

#include <dlfcn.h>
#include <glib.h>

void __tsan_acquire(void *addr);
void __tsan_release(void *addr);

static void (*real_lock)(GMutex *);
static gboolean (*real_trylock)(GMutex *);
static void (*real_unlock)(GMutex *);
static void (*real_wait)(GCond *, GMutex *);
static gboolean (*real_wait_until)(GCond *, GMutex *, gint64);

static void *real(const char *name)
{
    void *fn = dlsym(RTLD_NEXT, name);

    if (!fn) {
        g_error("tsan-glib: %s not found in GLib", name);
    }
    return fn;
}

/* Before any thread starts, so that the pointers need no atomics. */
__attribute__((constructor))
static void tsan_glib_init(void)
{
    real_lock = real("g_mutex_lock");
    real_trylock = real("g_mutex_trylock");
    real_unlock = real("g_mutex_unlock");
    real_wait = real("g_cond_wait");
    real_wait_until = real("g_cond_wait_until");
}

void g_mutex_lock(GMutex *mutex)
{
    real_lock(mutex);
    __tsan_acquire(mutex);
}

gboolean g_mutex_trylock(GMutex *mutex)
{
    gboolean ok = real_trylock(mutex);

    if (ok) {
        __tsan_acquire(mutex);
    }
    return ok;
}

void g_mutex_unlock(GMutex *mutex)
{
    __tsan_release(mutex);
    real_unlock(mutex);
}

void g_cond_wait(GCond *cond, GMutex *mutex)
{
    __tsan_release(mutex);
    real_wait(cond, mutex);
    __tsan_acquire(mutex);
}

gboolean g_cond_wait_until(GCond *cond, GMutex *mutex, gint64 end_time)
{
    gboolean ok;

    __tsan_release(mutex);
    ok = real_wait_until(cond, mutex, end_time);
    __tsan_acquire(mutex);
    return ok;
}
