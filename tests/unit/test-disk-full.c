/* SPDX-License-Identifier: MIT */
/*
 * A full file system, and creating an image another process has open:
 * what is left behind must be what QEMU 7.2 leaves.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The host-file hook plays a file system that has room for the image file
 * up to a given length: writes and reservations past it fail with ENOSPC,
 * anything below it succeeds (blocks already allocated can always be
 * rewritten), and so does changing the length.  Then:
 *
 *   - a write that does not fit fails with ENOSPC; the writes before it
 *     and the close succeed, and the image checks clean (no leaked
 *     clusters) with qguard's check and qemu-img's;
 *   - creating an image on a full file system reports "No space left on
 *     device"; a qcow2 image that could not be made is deleted, a raw one
 *     is left empty;
 *   - creating over an image that is open read-write elsewhere fails with
 *     QEMU's lock message and leaves its contents alone.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qguard.h"
#include "block/host-file.h"
#include "fault-common.h"

#define MiB (1024 * 1024)

static FaultTest ft;

typedef struct FullDisk {
    const char *path;       /* only this file is limited */
    uint64_t room;          /* bytes the file may occupy */
    unsigned refused;
} FullDisk;

static int full_disk_hook(void *opaque, HostFile *file, HostFileOp op,
                          uint64_t offset, uint64_t bytes,
                          const struct iovec *iov, int iovcnt)
{
    FullDisk *fd = opaque;

    (void)iov;
    (void)iovcnt;
    if (strcmp(host_file_name(file), fd->path)) {
        return 0;
    }
    /* Extending the length allocates nothing: it succeeds, as on tmpfs. */
    if (op == HOST_FILE_WRITE && offset + bytes > fd->room) {
        fd->refused++;
        return -ENOSPC;
    }
    return 0;
}

static int create_image(const char *path, const char *format,
                        const char *create_opts, GError **errp)
{
    QGuardOpts *opts = qguard_opts_new();
    int ret;

    g_assert_cmpint(qguard_opts_parse(opts, create_opts, NULL, NULL), ==, 0);
    ret = qguard_image_create(path, format, opts, NULL, NULL, errp);
    qguard_opts_free(opts);
    return ret;
}

static QGuardImage *open_rw(const char *path, const char *format)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    g_assert_cmpint(qguard_image_open(&img, path, format, NULL,
                                      QGUARD_OPEN_RDWR, &err), ==, 0);
    g_assert_no_error(err);
    return img;
}

static void assert_clean(const char *path)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL;
    QGuardImage *img = open_rw(path, "qcow2");
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    const char *argv[] = { "qemu-img", "check", "-f", "qcow2", path, NULL };

    g_assert_cmpint(qguard_image_check(img, 0, &res, quiet, NULL, &err), ==,
                    0);
    g_assert_cmpint(res.corruptions, ==, 0);
    g_assert_cmpint(res.leaks, ==, 0);
    g_assert_cmpint(res.check_errors, ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    if (run_qemu_img(argv, &out) != 0) {
        g_error("qemu-img check %s:\n%s", path, out);
    }
}

typedef struct WriteCase {
    int cluster_size;
    uint64_t spare;         /* room beyond the new image, in bytes */
} WriteCase;

/* Sequential 256 KiB writes into an empty image until the disk is full. */
static void test_write_until_full(gconstpointer data)
{
    const WriteCase *wc = data;
    g_autofree char *name = g_strdup_printf("w-%d-%" G_GUINT64_FORMAT
                                            ".qcow2", wc->cluster_size,
                                            wc->spare);
    g_autofree char *path = tpath("%s", name);
    g_autofree char *opts = g_strdup_printf("size=64M,cluster_size=%d",
                                            wc->cluster_size);
    g_autofree uint8_t *buf = g_malloc(256 * 1024);
    g_autoptr(GError) err = NULL;
    FullDisk fd = { .path = path };
    QGuardImage *img;
    uint64_t off, written = 0;
    struct stat st;
    int ret = 0;

    g_assert_cmpint(create_image(path, "qcow2", opts, &err), ==, 0);
    g_assert_cmpint(stat(path, &st), ==, 0);
    fd.room = st.st_size + wc->spare;
    img = open_rw(path, "qcow2");
    host_file_set_hook(full_disk_hook, &fd);
    for (off = 0; off < 64 * MiB; off += 256 * 1024) {
        fill_pattern(buf, 256 * 1024, off, 7);
        ret = qguard_image_pwrite(img, off, 256 * 1024, buf, 0, &err);
        if (ret < 0) {
            break;
        }
        written = off + 256 * 1024;
    }
    g_assert_cmpint(ret, ==, -ENOSPC);
    g_assert_true(g_error_matches(err, QGUARD_ERROR, ENOSPC));
    g_clear_error(&err);
    /* Everything acknowledged is on disk without needing more room. */
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    g_assert_no_error(err);
    host_file_set_hook(NULL, NULL);
    g_assert_cmpuint(fd.refused, >, 0);

    assert_clean(path);
    img = open_rw(path, "qcow2");
    for (off = 0; off < written; off += 256 * 1024) {
        g_autofree uint8_t *want = g_malloc(256 * 1024);
        fill_pattern(want, 256 * 1024, off, 7);
        g_assert_cmpint(qguard_image_pread(img, off, 256 * 1024, buf, &err),
                        ==, 0);
        g_assert_true(memcmp(buf, want, 256 * 1024) == 0);
    }
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

/* Not even the header fits: ENOSPC, not EIO, and no file left behind. */
static void test_create_on_full_disk(gconstpointer format)
{
    g_autofree char *name = g_strdup_printf("full.%s", (const char *)format);
    g_autofree char *path = tpath("%s", name);
    g_autoptr(GError) err = NULL;
    FullDisk fd = { .path = path, .room = 0 };

    host_file_set_hook(full_disk_hook, &fd);
    g_assert_cmpint(create_image(path, format, "size=1M,preallocation=full",
                                 &err), ==, -ENOSPC);
    host_file_set_hook(NULL, NULL);
    g_assert_nonnull(strstr(err->message, "No space left on device"));
    if (!strcmp(format, "qcow2")) {
        g_assert_cmpstr(err->message, ==,
                        "Could not write qcow2 header: No space left on "
                        "device");
        g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
    } else {
        struct stat st;
        g_assert_cmpstr(err->message, ==,
                        "Could not write zeros for preallocation: No space "
                        "left on device");
        g_assert_cmpint(stat(path, &st), ==, 0);
        g_assert_cmpint(st.st_size, ==, 0);
    }
}

/* Room for the metadata, not for the preallocated data. */
static void test_create_prealloc_fails(gconstpointer mode)
{
    g_autofree char *name = g_strdup_printf("pre-%s.qcow2",
                                            (const char *)mode);
    g_autofree char *path = tpath("%s", name);
    g_autofree char *opts = g_strdup_printf("size=16M,preallocation=%s",
                                            (const char *)mode);
    g_autoptr(GError) err = NULL;
    FullDisk fd = { .path = path, .room = 2 * MiB };

    /* An old file of that name is gone too, as with QEMU. */
    g_assert_true(g_file_set_contents(path, "old", 3, NULL));
    host_file_set_hook(full_disk_hook, &fd);
    g_assert_cmpint(create_image(path, "qcow2", opts, &err), ==, -ENOSPC);
    host_file_set_hook(NULL, NULL);
    g_assert_cmpstr(err->message, ==,
                    !strcmp(mode, "full") ?
                    "Could not resize image: Failed to resize underlying "
                    "file: Could not write zeros for preallocation: No space "
                    "left on device" :
                    "Could not resize image: Failed to resize underlying "
                    "file: Could not preallocate new data: No space left on "
                    "device");
    g_assert_false(g_file_test(path, G_FILE_TEST_EXISTS));
}

/* An option error is found before the file is touched. */
static void test_create_bad_option_keeps_file(void)
{
    g_autofree char *path = tpath("keep.qcow2");
    g_autofree char *contents = NULL;
    g_autoptr(GError) err = NULL;
    gsize len;

    g_assert_true(g_file_set_contents(path, "old", 3, NULL));
    g_assert_cmpint(create_image(path, "qcow2", "size=1M,cluster_size=1000",
                                 &err), <, 0);
    g_assert_true(g_file_get_contents(path, &contents, &len, NULL));
    g_assert_cmpstr(contents, ==, "old");
}

/* Another open file description holds the image read-write. */
static void test_create_over_locked_image(gconstpointer format)
{
    g_autofree char *name = g_strdup_printf("locked-%s", (const char *)format);
    g_autofree char *path = tpath("%s", name);
    g_autofree char *want = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(65536);
    QGuardImage *holder;
    struct stat st;

    g_assert_cmpint(create_image(path, "qcow2", "size=4M", &err), ==, 0);
    holder = open_rw(path, "qcow2");
    memset(buf, 0x5a, 65536);
    g_assert_cmpint(qguard_image_pwrite(holder, 0, 65536, buf, 0, &err), ==,
                    0);
    g_assert_cmpint(qguard_image_flush(holder, &err), ==, 0);
    g_assert_cmpint(stat(path, &st), ==, 0);

    g_assert_cmpint(create_image(path, format, "size=8M", &err), ==,
                    -EAGAIN);
    want = g_strdup_printf("Failed to get \"write\" lock\nIs another process "
                           "using the image [%s]?\n", path);
    g_assert_cmpstr(err->message, ==, want);
    g_clear_error(&err);

    /* Untouched: same length, the holder's data still there. */
    {
        struct stat st2;
        g_assert_cmpint(stat(path, &st2), ==, 0);
        g_assert_cmpint(st2.st_size, ==, st.st_size);
    }
    memset(buf, 0, 65536);
    g_assert_cmpint(qguard_image_pread(holder, 0, 65536, buf, &err), ==, 0);
    g_assert_cmpint(buf[0], ==, 0x5a);
    g_assert_cmpint(buf[65535], ==, 0x5a);
    g_assert_cmpint(qguard_image_close(holder, &err), ==, 0);
    g_assert_no_error(err);
    assert_clean(path);
}

static const WriteCase write_cases[] = {
    { 512, 0 }, { 512, 20000 }, { 512, 300000 },
    { 4096, 0 }, { 4096, 65536 }, { 4096, 1000000 },
    { 65536, 0 }, { 65536, 65536 }, { 65536, 100000 }, { 65536, 1500000 },
    { 2 * MiB, 2 * MiB + 4096 },
};

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    fault_test_begin(&ft, &argc, &argv, "disk-full", "");
    for (i = 0; i < G_N_ELEMENTS(write_cases); i++) {
        g_autofree char *p = g_strdup_printf(
            "/disk-full/write/cs%d-room%" G_GUINT64_FORMAT,
            write_cases[i].cluster_size, write_cases[i].spare);
        g_test_add_data_func(p, &write_cases[i], test_write_until_full);
    }
    g_test_add_data_func("/disk-full/create/qcow2-nothing-fits", "qcow2",
                         test_create_on_full_disk);
    g_test_add_data_func("/disk-full/create/raw-nothing-fits", "raw",
                         test_create_on_full_disk);
    g_test_add_data_func("/disk-full/create/prealloc-full-deleted", "full",
                         test_create_prealloc_fails);
    g_test_add_data_func("/disk-full/create/prealloc-falloc-deleted",
                         "falloc", test_create_prealloc_fails);
    g_test_add_func("/disk-full/create/bad-option-keeps-file",
                    test_create_bad_option_keeps_file);
    g_test_add_data_func("/locked/create-qcow2-leaves-image", "qcow2",
                         test_create_over_locked_image);
    g_test_add_data_func("/locked/create-raw-leaves-image", "raw",
                         test_create_over_locked_image);
    ret = g_test_run();
    fault_test_end(&ft);
    return ret;
}
