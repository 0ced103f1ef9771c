/* SPDX-License-Identifier: MIT */
/*
 * What a guest sees after zero writes, discards and grows, through the
 * library API, by QEMU 7.2's rules: fast zeros that would have to write
 * data fail and change nothing; the "discard" open option; v2 images,
 * which have no zero flag; a grow over a longer backing file; the zeros
 * around a write into a new cluster.
 * tests/qemu-iotests/400 and 401 compare the same cases with QEMU's tools.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"

#define MiB (1024 * 1024)
#define CLUSTER 65536


/* Create @name with @create_opts, raw if @format says so. */
static char *create(const char *name, const char *format,
                    const char *create_opts)
{
    char *path = tpath("%s", name);
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();

    g_assert_cmpint(qguard_opts_parse(opts, create_opts, NULL, &err), ==, 0);
    g_assert_cmpint(qguard_image_create(path, format, opts, NULL, NULL,
                                        &err), ==, 0);
    g_assert_no_error(err);
    qguard_opts_free(opts);
    return path;
}

static void write_pattern(QGuardImage *img, uint64_t offset, uint64_t len,
                          uint8_t byte)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autoptr(GError) err = NULL;

    memset(buf, byte, len);
    g_assert_cmpint(qguard_image_pwrite(img, offset, len, buf, 0, &err), ==,
                    0);
    g_assert_no_error(err);
}

/* Every byte of [offset, offset + len) reads as @byte. */
static void assert_reads(QGuardImage *img, uint64_t offset, uint64_t len,
                         uint8_t byte)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autoptr(GError) err = NULL;
    uint64_t i;

    g_assert_cmpint(qguard_image_pread(img, offset, len, buf, &err), ==, 0);
    g_assert_no_error(err);
    for (i = 0; i < len; i++) {
        if (buf[i] != byte) {
            g_error("byte %" G_GUINT64_FORMAT " reads 0x%02x, expected 0x%02x",
                    offset + i, buf[i], byte);
        }
    }
}

static unsigned status_flags(QGuardImage *img, uint64_t offset)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);

    g_assert_cmpint(qguard_image_block_status(img, offset, CLUSTER, &st,
                                              &err), ==, 0);
    g_assert_no_error(err);
    return st.depth == 0 ? st.flags : 0;
}

/* A v3 image with 0x5a in its first two clusters. */
static QGuardImage *data_image(const char *name, const char *create_opts,
                               const char *runtime)
{
    g_autofree char *path = create(name, "qcow2", create_opts);
    QGuardImage *img = test_image_open(path, "qcow2", runtime,
                                       QGUARD_OPEN_RDWR);

    write_pattern(img, 0, 2 * CLUSTER, 0x5a);
    return img;
}

/* ---- Fast zeros (docs/nbd-export.md, Limits) ---------------------------- */

static void test_fast_zero_partial_data(void)
{
    QGuardImage *img = data_image("fz1.qcow2", "size=1M", NULL);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 4096, 4096,
                                               QGUARD_ZERO_FAST, &err), ==,
                    -ENOTSUP);
    g_clear_error(&err);
    /* A request with whole clusters and a partial one: nothing changes. */
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 0, CLUSTER + 4096,
                                               QGUARD_ZERO_FAST, &err), ==,
                    -ENOTSUP);
    assert_reads(img, 0, 2 * CLUSTER, 0x5a);
    test_image_close(img);
}

static void test_fast_zero_partial_already_zero(void)
{
    QGuardImage *img = data_image("fz2.qcow2", "size=1M", NULL);
    g_autoptr(GError) err = NULL;

    /* The third cluster is unallocated: reads as zeros already. */
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 2 * CLUSTER + 4096, 4096,
                                               QGUARD_ZERO_FAST, &err), ==,
                    0);
    g_assert_no_error(err);
    /* Whole clusters of data: the zero flag, no data written. */
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 0, CLUSTER,
                                               QGUARD_ZERO_FAST, &err), ==,
                    0);
    g_assert_no_error(err);
    assert_reads(img, 0, CLUSTER, 0);
    assert_reads(img, CLUSTER, CLUSTER, 0x5a);
    g_assert_true(status_flags(img, 0) & QGUARD_BLOCK_ZERO);
    test_image_close(img);
}

static void test_fast_zero_v2(void)
{
    QGuardImage *img = data_image("fz3.qcow2", "size=1M,compat=0.10", NULL);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 0, CLUSTER,
                                               QGUARD_ZERO_FAST, &err), ==,
                    -ENOTSUP);
    assert_reads(img, 0, 2 * CLUSTER, 0x5a);
    test_image_close(img);
}

/* ---- The discard option ------------------------------------------------- */

static void test_discard_ignore(gconstpointer mode)
{
    g_autofree char *runtime = g_strdup_printf("discard=%s",
                                               (const char *)mode);
    g_autofree char *name = g_strdup_printf("di-%s.qcow2",
                                            (const char *)mode);
    QGuardImage *img = data_image(name, "size=1M", runtime);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_discard(img, 0, CLUSTER, &err), ==, 0);
    g_assert_no_error(err);
    assert_reads(img, 0, CLUSTER, 0x5a);
    g_assert_cmpuint(status_flags(img, 0) & QGUARD_BLOCK_DATA, ==,
                     QGUARD_BLOCK_DATA);
    /* Zero writes may still unmap (QEMU 7.2 leaves their flag alone). */
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, CLUSTER, CLUSTER,
                                               QGUARD_ZERO_MAY_UNMAP, &err),
                    ==, 0);
    g_assert_no_error(err);
    assert_reads(img, CLUSTER, CLUSTER, 0);
    g_assert_cmpuint(status_flags(img, CLUSTER) &
                     (QGUARD_BLOCK_ZERO | QGUARD_BLOCK_OFFSET_VALID), ==,
                     QGUARD_BLOCK_ZERO);
    test_image_close(img);
}

static void test_discard_unmap(gconstpointer mode)
{
    g_autofree char *runtime = mode ? g_strdup_printf("discard=%s",
                                                      (const char *)mode)
                                    : NULL;
    g_autofree char *name = g_strdup_printf("du-%s.qcow2",
                                            mode ? (const char *)mode : "");
    QGuardImage *img = data_image(name, "size=1M", runtime);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_discard(img, 0, CLUSTER, &err), ==, 0);
    g_assert_no_error(err);
    assert_reads(img, 0, CLUSTER, 0);
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, CLUSTER, CLUSTER,
                                               QGUARD_ZERO_MAY_UNMAP, &err),
                    ==, 0);
    g_assert_no_error(err);
    g_assert_cmpuint(status_flags(img, CLUSTER) &
                     (QGUARD_BLOCK_ZERO | QGUARD_BLOCK_OFFSET_VALID), ==,
                     QGUARD_BLOCK_ZERO);
    test_image_close(img);
}

static void test_discard_bad_mode(void)
{
    g_autofree char *path = create("dbad.qcow2", "qcow2", "size=1M");
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;

    qguard_opts_set(opts, "discard", "sometimes");
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", opts,
                                      QGUARD_OPEN_RDWR, &err), ==, -EINVAL);
    g_assert_cmpstr(err->message, ==, "Invalid discard option");
    g_assert_null(img);
    qguard_opts_free(opts);
}

/* ---- v2 images ---------------------------------------------------------- */

/* A raw backing file full of 0x11 and a @compat overlay over it. */
static QGuardImage *overlay(const char *name, const char *compat,
                            uint64_t size)
{
    g_autofree char *base = create("base.raw", "raw", "size=8M");
    g_autofree char *opts = g_strdup_printf(
        "size=%" G_GUINT64_FORMAT ",compat=%s,backing_file=%s,"
        "backing_fmt=raw", size, compat, base);
    g_autofree char *path = create(name, "qcow2", opts);
    QGuardImage *img = test_image_open(base, "raw", NULL, QGUARD_OPEN_RDWR);

    write_pattern(img, 0, 8 * MiB, 0x11);
    test_image_close(img);
    return test_image_open(path, "qcow2", NULL, QGUARD_OPEN_RDWR);
}

static void test_v2_overlay_discard_ignored(void)
{
    QGuardImage *img = overlay("v2o.qcow2", "0.10", 2 * MiB);
    g_autoptr(GError) err = NULL;

    write_pattern(img, 0, 2 * CLUSTER, 0x5a);
    g_assert_cmpint(qguard_image_discard(img, 0, 2 * CLUSTER, &err), ==, 0);
    g_assert_no_error(err);
    assert_reads(img, 0, 2 * CLUSTER, 0x5a);
    test_image_close(img);
}

static void test_v2_write_zeroes_deallocates(void)
{
    QGuardImage *img = data_image("v2z.qcow2", "size=1M,compat=0.10", NULL);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 0, CLUSTER, 0, &err), ==,
                    0);
    g_assert_no_error(err);
    assert_reads(img, 0, CLUSTER, 0);
    assert_reads(img, CLUSTER, CLUSTER, 0x5a);
    g_assert_false(status_flags(img, 0) & QGUARD_BLOCK_ALLOCATED);
    test_image_close(img);
}

/* ---- Growing over a longer backing file ---------------------------------- */

static void test_grow_over_backing(void)
{
    QGuardImage *img = overlay("grow.qcow2", "1.1", 8 * MiB);
    g_autoptr(GError) err = NULL;

    write_pattern(img, MiB, CLUSTER, 0x22);
    g_assert_cmpint(qguard_image_truncate(img, 2 * MiB + 512, true, NULL,
                                          &err), ==, 0);
    g_assert_cmpint(qguard_image_truncate(img, 8 * MiB, false, NULL, &err),
                    ==, 0);
    g_assert_no_error(err);
    assert_reads(img, 0, MiB, 0x11);
    assert_reads(img, MiB, CLUSTER, 0x22);
    assert_reads(img, 2 * MiB, 512, 0x11);
    assert_reads(img, 2 * MiB + 512, 6 * MiB - 512, 0);
    test_image_close(img);
}

static void test_grow_over_backing_v2(void)
{
    QGuardImage *img = overlay("grow2.qcow2", "0.10", 2 * MiB);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_truncate(img, 8 * MiB, false, NULL, &err),
                    ==, -ENOTSUP);
    g_assert_cmpstr(err->message, ==,
                    "Failed to zero out new clusters: Operation not supported");
    g_assert_cmpuint(qguard_image_size(img), ==, 2 * MiB);
    assert_reads(img, 0, 2 * MiB, 0x11);
    test_image_close(img);
}

/*
 * Inside the cluster of the old end QEMU writes real zeros, which a v2
 * image can hold: only a grow past that cluster is refused.
 */
static void test_grow_over_backing_v2_in_last_cluster(void)
{
    QGuardImage *img = overlay("grow2c.qcow2", "0.10", 2 * MiB - 1024);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_truncate(img, 2 * MiB - 512, false, NULL,
                                          &err), ==, 0);
    g_assert_no_error(err);
    g_assert_cmpuint(qguard_image_size(img), ==, 2 * MiB - 512);
    assert_reads(img, 0, 2 * MiB - 1024, 0x11);
    assert_reads(img, 2 * MiB - 1024, 512, 0);
    g_assert_cmpint(qguard_image_truncate(img, 2 * MiB, false, NULL, &err),
                    ==, 0);
    g_assert_no_error(err);
    assert_reads(img, 2 * MiB - 1024, 1024, 0);
    g_assert_cmpint(qguard_image_truncate(img, 2 * MiB + 512, false, NULL,
                                          &err), ==, -ENOTSUP);
    g_assert_cmpstr(err->message, ==,
                    "Failed to zero out new clusters: Operation not supported");
    g_assert_cmpuint(qguard_image_size(img), ==, 2 * MiB);
    test_image_close(img);
}

/* ---- Copy-on-write of zeros (fallocate instead of written zeros) ------- */

static uint64_t host_offset(QGuardImage *img, uint64_t offset)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);

    g_assert_cmpint(qguard_image_block_status(img, offset, 1, &st, &err), ==,
                    0);
    g_assert_no_error(err);
    g_assert_true(st.flags & QGUARD_BLOCK_OFFSET_VALID);
    return st.host_offset;
}

/*
 * Where a test that also runs on tmpfs puts its images: a new directory
 * under @dir, or the scratch directory when @dir is NULL.  NULL (and the
 * test skipped) when @dir does not exist.
 */
static char *images_dir(gconstpointer dir)
{
    char *tmp;

    if (!dir) {
        return g_strdup(test_scratch_dir());
    }
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        g_test_skip("no such directory");
        return NULL;
    }
    tmp = g_build_filename(dir, "qguard-zero-discard-XXXXXX", NULL);
    g_assert_nonnull(g_mkdtemp(tmp));
    return tmp;
}

/* Remove the images in @tmp, and @tmp itself unless it is the scratch. */
static void images_dir_done(gconstpointer dir, const char *tmp,
                            const char *const *names)
{
    for (; *names; names++) {
        g_autofree char *path = g_build_filename(tmp, *names, NULL);

        g_assert_cmpint(g_unlink(path), ==, 0);
    }
    if (dir) {
        g_assert_cmpint(g_rmdir(tmp), ==, 0);
    }
}

/*
 * A 4 KiB write into an unallocated cluster reads as zeros around it,
 * also when the new cluster is a freed one that still holds old data in
 * the file (kept there by pass-discard-request=off), and after a reopen.
 * On a file system with FALLOC_FL_ZERO_RANGE (ext4, xfs) the zeros are
 * made by it; on tmpfs the reused cluster is punched and allocated again
 * and the one past the end of the file gets an fallocate().  @dir: where
 * the image goes, NULL for the scratch directory.
 */
static void test_cow_zeros(gconstpointer dir)
{
    g_autofree char *tmp = NULL;
    g_autofree char *path = NULL;
    g_autoptr(GError) err = NULL;
    QGuardImage *img;
    uint64_t old_host;
    int pass;

    tmp = images_dir(dir);
    if (!tmp) {
        return;
    }
    path = g_build_filename(tmp, "cz.qcow2", NULL);
    test_image_new(path, "qcow2", "size=1M");
    img = test_image_open(path, "qcow2", "pass-discard-request=off",
                          QGUARD_OPEN_RDWR);
    write_pattern(img, 0, CLUSTER, 0xff);
    old_host = host_offset(img, 0);
    g_assert_cmpint(qguard_image_discard(img, 0, CLUSTER, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    g_assert_no_error(err);

    write_pattern(img, CLUSTER + 4096, 4096, 0xab);
    g_assert_cmpuint(host_offset(img, CLUSTER), ==, old_host);
    write_pattern(img, 3 * CLUSTER + 512, 512, 0xcd);
    for (pass = 0; pass < 2; pass++) {
        assert_reads(img, 0, CLUSTER + 4096, 0);
        assert_reads(img, CLUSTER + 4096, 4096, 0xab);
        assert_reads(img, CLUSTER + 8192, 2 * CLUSTER + 512 - 8192, 0);
        assert_reads(img, 3 * CLUSTER + 512, 512, 0xcd);
        assert_reads(img, 3 * CLUSTER + 1024, CLUSTER - 1024, 0);
        test_image_close(img);
        img = test_image_open(path, "qcow2", NULL, QGUARD_OPEN_RDWR);
    }
    test_image_close(img);
    if (dir) {
        /*
         * tmpfs has no FALLOC_FL_ZERO_RANGE: the reused cluster is punched
         * and allocated again, as QEMU does, so what the write left alone
         * is a hole in the file, which map reports as QEMU's does.
         */
        int fd = open(path, O_RDONLY);

        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(lseek(fd, old_host, SEEK_DATA), ==, old_host + 4096);
        g_assert_cmpint(close(fd), ==, 0);
    }
    images_dir_done(dir, tmp, (const char *const[]){ "cz.qcow2", NULL });
}

/* Does the host file have a hole at [offset, offset + 4096)? */
static bool host_hole(const char *path, uint64_t offset)
{
    int fd = open(path, O_RDONLY);
    off_t data;

    g_assert_cmpint(fd, >=, 0);
    data = lseek(fd, offset, SEEK_DATA);
    g_assert_cmpint(close(fd), ==, 0);
    return data < 0 || (uint64_t)data >= offset + 4096;
}

/*
 * Copy-on-write from a backing file that reads as zeros there makes the
 * new cluster zeros with fallocate() (a hole in the file), as QEMU's
 * handle_alloc_space() asks the backing chain; from backing data it
 * copies.  A zero write that a v2 overlay writes as data is split as
 * QEMU splits it: the piece up to the first cluster boundary decides on
 * its own, so its cluster is zeroed even though the backing file has
 * data after the request's end.  @dir: where the images go, NULL for the
 * scratch directory.
 */
static void test_cow_zeros_over_backing(gconstpointer dir)
{
    static const char *const compat[] = { "1.1", "0.10" };
    g_autofree char *tmp = NULL;
    int i;

    tmp = images_dir(dir);
    if (!tmp) {
        return;
    }
    for (i = 0; i < 2; i++) {
        g_autofree char *base = g_build_filename(tmp, "b.qcow2", NULL);
        g_autofree char *top = g_build_filename(tmp, "t.qcow2", NULL);
        g_autofree char *opts = g_strdup_printf(
            "size=1M,compat=%s,backing_file=%s,backing_fmt=qcow2",
            compat[i], base);
        g_autoptr(GError) err = NULL;
        QGuardImage *img;

        test_image_new(base, "qcow2", "size=1M");
        img = test_image_open(base, "qcow2", NULL, QGUARD_OPEN_RDWR);
        write_pattern(img, 2 * CLUSTER, CLUSTER, 0x22);
        write_pattern(img, 5 * CLUSTER, CLUSTER, 0x22);
        test_image_close(img);
        test_image_new(top, "qcow2", opts);
        img = test_image_open(top, "qcow2", NULL, QGUARD_OPEN_RDWR);

        write_pattern(img, 4096, 4096, 0xab);
        write_pattern(img, 2 * CLUSTER + 4096, 4096, 0xcd);
        if (i == 1) {
            g_assert_cmpint(qguard_image_pwrite_zeroes(
                                img, 4 * CLUSTER + 32768, CLUSTER, 0, &err),
                            ==, 0);
            g_assert_no_error(err);
        }
        /* Before any read: ext4 counts a read page of a hole as data. */
        g_assert_true(host_hole(top, host_offset(img, 0)));
        g_assert_false(host_hole(top, host_offset(img, 2 * CLUSTER)));
        if (i == 1) {
            g_assert_true(host_hole(top, host_offset(img, 4 * CLUSTER)));
        }
        assert_reads(img, 0, 4096, 0);
        assert_reads(img, 4096, 4096, 0xab);
        assert_reads(img, 8192, CLUSTER - 8192, 0);
        assert_reads(img, 2 * CLUSTER, 4096, 0x22);
        assert_reads(img, 2 * CLUSTER + 4096, 4096, 0xcd);
        assert_reads(img, 2 * CLUSTER + 8192, CLUSTER - 8192, 0x22);
        if (i == 1) {
            assert_reads(img, 4 * CLUSTER, CLUSTER + 32768, 0);
            assert_reads(img, 5 * CLUSTER + 32768, 32768, 0x22);
        }
        test_image_close(img);
        images_dir_done(NULL, tmp,
                        (const char *const[]){ "t.qcow2", "b.qcow2", NULL });
    }
    images_dir_done(dir, tmp, (const char *const[]){ NULL });
}

/*
 * The last cluster of a disk that ends inside it: QEMU's status of the
 * part past the end is not zeros, so copy-on-write there copies (writes
 * zeros) instead of zeroing with fallocate(); a cluster inside the disk
 * is zeroed.  @dir: where the image goes, NULL for the scratch directory.
 */
static void test_cow_zeros_disk_end(gconstpointer dir)
{
    g_autofree char *tmp = NULL;
    g_autofree char *path = NULL;
    QGuardImage *img;

    tmp = images_dir(dir);
    if (!tmp) {
        return;
    }
    path = g_build_filename(tmp, "e.qcow2", NULL);
    test_image_new(path, "qcow2", "size=1049088");
    img = test_image_open(path, "qcow2", NULL, QGUARD_OPEN_RDWR);
    write_pattern(img, MiB, 512, 0x01);
    write_pattern(img, 0, 512, 0x02);
    g_assert_false(host_hole(path, host_offset(img, MiB) + 4096));
    g_assert_true(host_hole(path, host_offset(img, 0) + 4096));
    assert_reads(img, 0, 512, 0x02);
    assert_reads(img, 512, MiB - 512, 0);
    assert_reads(img, MiB, 512, 0x01);
    test_image_close(img);
    images_dir_done(dir, tmp, (const char *const[]){ "e.qcow2", NULL });
}

/*
 * Zeroing instead of copying also where QEMU does it with subclusters
 * (only the written subclusters) and in an external data file.  @dir:
 * where the images go, NULL for the scratch directory.
 */
static void test_cow_zeros_extl2_data_file(gconstpointer dir)
{
    g_autofree char *tmp = NULL;
    g_autofree char *ext = NULL, *df = NULL, *data = NULL, *opts = NULL;
    QGuardImage *img;

    tmp = images_dir(dir);
    if (!tmp) {
        return;
    }
    ext = g_build_filename(tmp, "x.qcow2", NULL);
    df = g_build_filename(tmp, "d.qcow2", NULL);
    data = g_build_filename(tmp, "d.data", NULL);

    /* 2 MiB clusters: 64 KiB subclusters, each a whole number of blocks. */
    test_image_new(ext, "qcow2", "size=4M,cluster_size=2M,extended_l2=on");
    img = test_image_open(ext, "qcow2", NULL, QGUARD_OPEN_RDWR);
    write_pattern(img, CLUSTER + 4096, 4096, 0x33);
    g_assert_true(host_hole(ext, host_offset(img, CLUSTER)));
    assert_reads(img, 0, CLUSTER + 4096, 0);
    assert_reads(img, CLUSTER + 4096, 4096, 0x33);
    assert_reads(img, CLUSTER + 8192, 4 * MiB - CLUSTER - 8192, 0);
    test_image_close(img);

    opts = g_strdup_printf("size=1M,data_file=%s", data);
    test_image_new(df, "qcow2", opts);
    img = test_image_open(df, "qcow2", NULL, QGUARD_OPEN_RDWR);
    write_pattern(img, 4096, 4096, 0x44);
    g_assert_true(host_hole(data, 0));
    assert_reads(img, 0, 4096, 0);
    assert_reads(img, 4096, 4096, 0x44);
    assert_reads(img, 8192, MiB - 8192, 0);
    test_image_close(img);

    images_dir_done(dir, tmp, (const char *const[]){ "x.qcow2", "d.qcow2",
                                                     "d.data", NULL });
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    test_scratch_init("qguard-zero-discard-XXXXXX");

    g_test_add_func("/zero-discard/fast-zero/partial-data-enotsup",
                    test_fast_zero_partial_data);
    g_test_add_func("/zero-discard/fast-zero/partial-already-zero",
                    test_fast_zero_partial_already_zero);
    g_test_add_func("/zero-discard/fast-zero/v2-enotsup", test_fast_zero_v2);
    g_test_add_data_func("/zero-discard/option/ignore", "ignore",
                         test_discard_ignore);
    g_test_add_data_func("/zero-discard/option/off", "off",
                         test_discard_ignore);
    g_test_add_data_func("/zero-discard/option/unmap", "unmap",
                         test_discard_unmap);
    g_test_add_data_func("/zero-discard/option/on", "on", test_discard_unmap);
    g_test_add_data_func("/zero-discard/option/default", NULL,
                         test_discard_unmap);
    g_test_add_func("/zero-discard/option/invalid", test_discard_bad_mode);
    g_test_add_func("/zero-discard/v2/overlay-discard-ignored",
                    test_v2_overlay_discard_ignored);
    g_test_add_func("/zero-discard/v2/write-zeroes-deallocates",
                    test_v2_write_zeroes_deallocates);
    g_test_add_func("/zero-discard/grow/over-longer-backing",
                    test_grow_over_backing);
    g_test_add_func("/zero-discard/grow/over-longer-backing-v2-refused",
                    test_grow_over_backing_v2);
    g_test_add_func("/zero-discard/grow/over-longer-backing-v2-last-cluster",
                    test_grow_over_backing_v2_in_last_cluster);
    g_test_add_data_func("/zero-discard/cow-zeros/scratch", NULL,
                         test_cow_zeros);
    g_test_add_data_func("/zero-discard/cow-zeros/dev-shm", "/dev/shm",
                         test_cow_zeros);
    g_test_add_data_func("/zero-discard/cow-zeros/over-backing/scratch", NULL,
                         test_cow_zeros_over_backing);
    g_test_add_data_func("/zero-discard/cow-zeros/over-backing/dev-shm",
                         "/dev/shm", test_cow_zeros_over_backing);
    g_test_add_data_func("/zero-discard/cow-zeros/disk-end/scratch", NULL,
                         test_cow_zeros_disk_end);
    g_test_add_data_func("/zero-discard/cow-zeros/disk-end/dev-shm",
                         "/dev/shm", test_cow_zeros_disk_end);
    g_test_add_data_func("/zero-discard/cow-zeros/extl2-data-file/scratch",
                         NULL, test_cow_zeros_extl2_data_file);
    g_test_add_data_func("/zero-discard/cow-zeros/extl2-data-file/dev-shm",
                         "/dev/shm", test_cow_zeros_extl2_data_file);

    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
