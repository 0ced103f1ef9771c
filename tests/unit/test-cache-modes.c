/* SPDX-License-Identifier: MIT */
/*
 * Cache modes and flush errors: what each mode puts on disk and when, and
 * that no failure to make data durable goes unreported.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "block/block_int.h"

static char *test_dir;

static char *test_path(const char *name)
{
    return g_build_filename(test_dir, name, NULL);
}

static void create_image(const char *path, const char *create_opts)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *desc = NULL;
    QGuardOpts *opts = qguard_opts_new();

    g_assert_true(qguard_opts_parse(opts, create_opts, NULL, &err));
    desc = qguard_create_prepare(path, "qcow2", opts, false, &err);
    g_assert_no_error(err);
    g_assert_cmpint(qguard_image_create(path, "qcow2", opts, NULL, NULL,
                                        &err), ==, 0);
    qguard_opts_free(opts);
}

static QGuardImage *open_image(const char *path, const char *runtime_opts,
                               unsigned flags)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;

    if (runtime_opts) {
        g_assert_true(qguard_opts_parse(opts, runtime_opts, NULL, &err));
    }
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", opts, flags, &err),
                    ==, 0);
    g_assert_no_error(err);
    qguard_opts_free(opts);
    return img;
}

/* ---- Fault and counting hook ------------------------------------------- */

typedef struct Hook {
    const char *path;
    uint64_t counts[HOST_FILE_DISCARD + 1];
    HostFileOp fail_op;
    uint64_t fail_nth;      /* fail the n-th operation of fail_op; 0: none */
    int fail_errno;
} Hook;

static int hook_fn(void *opaque, HostFile *file, HostFileOp op,
                   uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int iovcnt)
{
    Hook *h = opaque;

    (void)offset;
    (void)bytes;
    (void)iov;
    (void)iovcnt;
    if (strcmp(host_file_name(file), h->path)) {
        return 0;
    }
    h->counts[op]++;
    if (h->fail_nth && op == h->fail_op && h->counts[op] == h->fail_nth) {
        return -h->fail_errno;
    }
    return 0;
}

/* ---- Tests ---------------------------------------------------------------- */

/*
 * After a failed fdatasync the kernel may have dropped the pages it could
 * not write, and a second fdatasync succeeds: a retry must not turn the
 * lost write into a success, neither in a later flush nor at close.
 */
static void test_flush_error_is_sticky(void)
{
    g_autofree char *path = test_path("sticky.qcow2");
    g_autoptr(GError) err = NULL;
    Hook h = { .path = path, .fail_op = HOST_FILE_FLUSH, .fail_nth = 1,
               .fail_errno = EIO };
    uint8_t buf[4096];
    QGuardImage *img;

    create_image(path, "size=1M");
    img = open_image(path, NULL, QGUARD_OPEN_RDWR);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    host_file_set_hook(hook_fn, &h);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, -EIO);
    g_clear_error(&err);
    host_file_set_hook(NULL, NULL);

    g_assert_cmpint(qguard_image_flush(img, &err), ==, -EIO);
    g_assert_error(err, QGUARD_ERROR, EIO);
    g_clear_error(&err);
    g_assert_cmpint(qguard_image_close(img, &err), ==, -EIO);
    g_assert_error(err, QGUARD_ERROR, EIO);
}

/*
 * A lazy-refcounts image is marked clean at close, after everything else
 * is written: a failure to do so must fail the close as well.
 */
static void test_close_reports_mark_clean_failure(void)
{
    g_autofree char *path = test_path("lazy.qcow2");
    g_autoptr(GError) err = NULL;
    Hook h = { .path = path, .fail_op = HOST_FILE_WRITE, .fail_nth = 1,
               .fail_errno = EIO };
    QGuardImageInfo *info = NULL;
    uint8_t buf[4096];
    QGuardImage *img;

    create_image(path, "size=1M,lazy_refcounts=on");
    img = open_image(path, NULL, QGUARD_OPEN_RDWR);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    host_file_set_hook(hook_fn, &h);
    g_assert_cmpint(qguard_image_close(img, &err), ==, -EIO);
    host_file_set_hook(NULL, NULL);
    g_assert_error(err, QGUARD_ERROR, EIO);
    g_assert_cmpint(h.counts[HOST_FILE_WRITE], ==, 1);

    /* The flushed write is there; the image is still marked dirty. */
    img = open_image(path, NULL, QGUARD_OPEN_NO_BACKING);
    g_assert_cmpint(qguard_image_get_info(img, &info, NULL), ==, 0);
    g_assert_true(info->dirty_flag);
    qguard_image_info_free(info);
    memset(buf, 0, sizeof(buf));
    g_assert_cmpint(qguard_image_pread(img, 0, sizeof(buf), buf, NULL), ==, 0);
    g_assert_cmpint(buf[0], ==, 0x5a);
    g_assert_cmpint(buf[sizeof(buf) - 1], ==, 0x5a);
    g_assert_cmpint(qguard_image_close(img, NULL), ==, 0);
}

int main(int argc, char **argv)
{
    g_autofree char *cmd = NULL;
    int ret;

    g_test_init(&argc, &argv, NULL);
    test_dir = g_dir_make_tmp("qguard-cache-XXXXXX", NULL);
    g_assert_nonnull(test_dir);

    g_test_add_func("/cache/flush-error-is-sticky",
                    test_flush_error_is_sticky);
    g_test_add_func("/cache/close/reports-mark-clean-failure",
                    test_close_reports_mark_clean_failure);

    ret = g_test_run();
    cmd = g_strdup_printf("rm -rf '%s'", test_dir);
    if (system(cmd) != 0) {
        g_printerr("could not remove %s\n", test_dir);
    }
    g_free(test_dir);
    return ret;
}
