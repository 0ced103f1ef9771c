/* SPDX-License-Identifier: MIT */
/*
 * What every test program shares: failing the current test with a
 * message, a scratch directory and paths in it, running other programs,
 * and a data pattern.  Linked into each test (tests/meson.build).
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_TEST_LIB_H
#define QGUARD_TEST_LIB_H

#include <glib.h>
#include <stdarg.h>
#include <stdint.h>

#include "qguard.h"

/* Fail the current test with a printf-style message. */
#define FAIL(...) test_fail_at(__FILE__, __LINE__, G_STRFUNC, __VA_ARGS__)

void test_fail_at(const char *file, int line, const char *func,
                  const char *fmt, ...) G_GNUC_PRINTF(4, 5) G_GNUC_NORETURN;

/*
 * The scratch directory: test_scratch_init() makes it from a
 * g_dir_make_tmp() template ("qguard-NAME-XXXXXX") and returns it; tpath()
 * names a file in it.
 */
const char *test_scratch_init(const char *tmpl);
/* The same in /dev/shm where there is one: for tests that sync a lot. */
const char *test_scratch_init_fast(const char *tmpl);
/* Use @dir, made elsewhere, as the scratch directory. */
void test_scratch_set(const char *dir);
const char *test_scratch_dir(void);
/*
 * Remove the scratch directory and everything in it, unless
 * QGUARD_KEEP_TEST_DIR is set (then say where it is).
 */
void test_scratch_remove(void);
/* Remove @dir and everything in it. */
void test_rm_tree(const char *dir);
char *tpath(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/*
 * Run @argv (searched in PATH) in @cwd (NULL: the current directory) with
 * @flags added to G_SPAWN_SEARCH_PATH; its stdout and stderr into *@out and
 * *@err unless NULL.  Returns its exit status, 128 + the signal that killed
 * it; fails the test if it cannot be started.
 */
int test_spawn(const char *cwd, const char *const *argv, GSpawnFlags flags,
               char **out, char **err);
/* test_spawn() of "/bin/sh -c LINE", LINE formatted from @fmt. */
int test_sh(const char *cwd, char **out, char **err, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
int test_shv(const char *cwd, char **out, char **err, const char *fmt,
             va_list ap) G_GNUC_PRINTF(4, 0);

/*
 * The seed of a randomized test: QGUARD_TEST_SEED if set, else a random
 * one; either way printed, so that a failing run can be repeated.
 */
guint32 test_seed(void);

/*
 * The next number of a xorshift64 sequence kept in *state (never 0): fast
 * and the same on every machine, for benchmarks that want neither GRand's
 * cost nor its per-version sequences.
 */
uint64_t test_xorshift64(uint64_t *state);

/*
 * Deterministic bytes for guest offset @offset.. of a write tagged @tag:
 * two writes differ wherever their tags or offsets do, so a read-back
 * tells which write, and which part of it, landed.
 */
void fill_pattern(uint8_t *buf, uint64_t len, uint64_t offset, uint32_t tag);

/*
 * Create an image of @format at @path from the creation options
 * @create_opts ("size=64M,cluster_size=512"), the way qemu-img create does
 * (qguard_create_prepare(), then qguard_image_create()).  The options must
 * parse; the result of creating is returned, with the error.
 */
int test_image_create(const char *path, const char *format,
                      const char *create_opts, GError **errp);
/* test_image_create() that must succeed. */
void test_image_new(const char *path, const char *format,
                    const char *create_opts);
/* Open @path as @format with @runtime_opts (may be NULL); must succeed. */
QGuardImage *test_image_open(const char *path, const char *format,
                             const char *runtime_opts, unsigned flags);
/* test_image_new() of a qcow2 image, then test_image_open() read-write. */
QGuardImage *test_qcow2_new(const char *path, const char *create_opts,
                            const char *runtime_opts);
/* Close @img; must succeed. */
void test_image_close(QGuardImage *img);

#endif /* QGUARD_TEST_LIB_H */
