/* SPDX-License-Identifier: MIT */
/*
 * What every test program shares; see test-lib.h.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include "test-lib.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

static char *scratch_dir;

void test_fail_at(const char *file, int line, const char *func,
                  const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_assertion_message(G_LOG_DOMAIN, file, line, func, msg);
    abort();
}

const char *test_scratch_init(const char *tmpl)
{
    g_autoptr(GError) err = NULL;

    g_free(scratch_dir);
    scratch_dir = g_dir_make_tmp(tmpl, &err);
    if (!scratch_dir) {
        FAIL("cannot make a scratch directory: %s", err->message);
    }
    return scratch_dir;
}

const char *test_scratch_init_fast(const char *tmpl)
{
    g_autofree char *path = NULL;

    if (!g_file_test("/dev/shm", G_FILE_TEST_IS_DIR)) {
        return test_scratch_init(tmpl);
    }
    path = g_build_filename("/dev/shm", tmpl, NULL);
    if (!g_mkdtemp(path)) {
        FAIL("cannot make %s: %s", path, g_strerror(errno));
    }
    test_scratch_set(path);
    return scratch_dir;
}

void test_scratch_set(const char *dir)
{
    g_free(scratch_dir);
    scratch_dir = g_strdup(dir);
}

const char *test_scratch_dir(void)
{
    return scratch_dir;
}

static int remove_entry(const char *path, const struct stat *st, int flag,
                        struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) < 0) {
        g_printerr("could not remove %s\n", path);
    }
    return 0;
}

void test_rm_tree(const char *dir)
{
    nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void test_scratch_remove(void)
{
    if (!scratch_dir) {
        return;
    }
    if (g_getenv("QGUARD_KEEP_TEST_DIR")) {
        g_printerr("# test files kept in %s\n", scratch_dir);
    } else {
        test_rm_tree(scratch_dir);
    }
    g_clear_pointer(&scratch_dir, g_free);
}

char *tpath(const char *fmt, ...)
{
    g_autofree char *name = NULL;
    va_list ap;

    g_assert_nonnull(scratch_dir);
    va_start(ap, fmt);
    name = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return g_build_filename(scratch_dir, name, NULL);
}

int test_spawn(const char *cwd, const char *const *argv, GSpawnFlags flags,
               char **out, char **err)
{
    g_autoptr(GError) gerr = NULL;
    int status;

    if (!g_spawn_sync(cwd, (char **)argv, NULL, G_SPAWN_SEARCH_PATH | flags,
                      NULL, NULL, out, err, &status, &gerr)) {
        FAIL("cannot run %s: %s", argv[0], gerr->message);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int test_shv(const char *cwd, char **out, char **err, const char *fmt,
             va_list ap)
{
    g_autofree char *line = g_strdup_vprintf(fmt, ap);
    const char *argv[] = { "/bin/sh", "-c", line, NULL };

    return test_spawn(cwd, argv, 0, out, err);
}

int test_sh(const char *cwd, char **out, char **err, const char *fmt, ...)
{
    va_list ap;
    int status;

    va_start(ap, fmt);
    status = test_shv(cwd, out, err, fmt, ap);
    va_end(ap);
    return status;
}

int test_image_create(const char *path, const char *format,
                      const char *create_opts, GError **errp)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    g_autofree char *desc = NULL;
    int ret = -EINVAL;

    if (qguard_opts_parse(opts, create_opts, NULL, &err) < 0) {
        FAIL("bad creation options '%s': %s", create_opts, err->message);
    }
    desc = qguard_create_prepare(path, format, opts, false, errp);
    if (desc) {
        ret = qguard_image_create(path, format, opts, NULL, NULL, errp);
    }
    qguard_opts_free(opts);
    return ret;
}

void test_image_new(const char *path, const char *format,
                    const char *create_opts)
{
    g_autoptr(GError) err = NULL;

    if (test_image_create(path, format, create_opts, &err) < 0) {
        FAIL("cannot create %s (%s): %s", path, create_opts, err->message);
    }
}

QGuardImage *test_image_open(const char *path, const char *format,
                             const char *runtime_opts, unsigned flags)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;

    if (runtime_opts && qguard_opts_parse(opts, runtime_opts, NULL, &err) < 0) {
        FAIL("bad runtime options '%s': %s", runtime_opts, err->message);
    }
    if (qguard_image_open(&img, path, format, opts, flags, &err) < 0) {
        FAIL("cannot open %s: %s", path, err->message);
    }
    qguard_opts_free(opts);
    return img;
}

QGuardImage *test_qcow2_new(const char *path, const char *create_opts,
                            const char *runtime_opts)
{
    test_image_new(path, "qcow2", create_opts);
    return test_image_open(path, "qcow2", runtime_opts, QGUARD_OPEN_RDWR);
}

void test_image_close(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;

    if (qguard_image_close(img, &err) < 0) {
        FAIL("close failed: %s", err->message);
    }
}

guint32 test_seed(void)
{
    const char *env = g_getenv("QGUARD_TEST_SEED");
    guint32 seed = env ? (guint32)strtoul(env, NULL, 0) : g_random_int();

    g_test_message("seed %u (QGUARD_TEST_SEED=%u repeats this run)", seed,
                   seed);
    return seed;
}

uint64_t test_xorshift64(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

void fill_pattern(uint8_t *buf, uint64_t len, uint64_t offset, uint32_t tag)
{
    uint64_t i;

    for (i = 0; i < len; i++) {
        uint64_t x = (offset + i) / 8 * 0x9e3779b97f4a7c15ULL + tag;

        buf[i] = (uint8_t)(x >> (8 * ((offset + i) % 8)));
    }
}
