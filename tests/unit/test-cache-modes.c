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
#include "test-lib.h"

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

/* ---- Tests -------------------------------------------------------------- */

/*
 * After a failed fdatasync the kernel may have dropped the pages it could
 * not write, and a second fdatasync succeeds: a retry must not turn the
 * lost write into a success, neither in a later flush nor at close.
 */
static void test_flush_error_is_sticky(void)
{
    g_autofree char *path = tpath("sticky.qcow2");
    g_autoptr(GError) err = NULL;
    Hook h = { .path = path, .fail_op = HOST_FILE_FLUSH, .fail_nth = 1,
               .fail_errno = EIO };
    uint8_t buf[4096];
    QGuardImage *img;

    test_image_new(path, "qcow2", "size=1M");
    img = test_image_open(path, "qcow2", NULL,
                          QGUARD_OPEN_RDWR);
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
    g_autofree char *path = tpath("lazy.qcow2");
    g_autoptr(GError) err = NULL;
    Hook h = { .path = path, .fail_op = HOST_FILE_WRITE, .fail_nth = 1,
               .fail_errno = EIO };
    QGuardImageInfo *info = NULL;
    uint8_t buf[4096];
    QGuardImage *img;

    test_image_new(path, "qcow2", "size=1M,lazy_refcounts=on");
    img = test_image_open(path, "qcow2", NULL,
                          QGUARD_OPEN_RDWR);
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
    img = test_image_open(path, "qcow2", NULL,
                          QGUARD_OPEN_NO_BACKING);
    g_assert_cmpint(qguard_image_get_info(img, &info, NULL), ==, 0);
    g_assert_true(info->dirty_flag);
    qguard_image_info_free(info);
    memset(buf, 0, sizeof(buf));
    g_assert_cmpint(qguard_image_pread(img, 0, sizeof(buf), buf, NULL), ==, 0);
    g_assert_cmpint(buf[0], ==, 0x5a);
    g_assert_cmpint(buf[sizeof(buf) - 1], ==, 0x5a);
    g_assert_cmpint(qguard_image_close(img, NULL), ==, 0);
}

/* What a second, independent reader of the file sees now. */
static void read_other(const char *path, const char *format, uint64_t offset,
                       uint64_t bytes, void *buf)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;

    qguard_opts_set(opts, "force-share", "on");
    g_assert_cmpint(qguard_image_open(&img, path, format, opts,
                                      QGUARD_OPEN_NO_BACKING, &err), ==, 0);
    g_assert_cmpint(qguard_image_pread(img, offset, bytes, buf, &err), ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    qguard_opts_free(opts);
}

static void assert_filled(const uint8_t *buf, size_t len, uint8_t pattern)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            g_error("byte %zu is %#x, not %#x", i, buf[i], pattern);
        }
    }
}

static uint64_t be64_at(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

/*
 * A write in writeback mode, then an error that takes the image out of
 * service (a FUA write refused by the overlap check): the first write's
 * metadata can no longer be written, so the close must fail.
 */
static void drop_message(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}

static void test_close_of_broken_image_fails(void)
{
    g_autofree char *path = tpath("broken.qcow2");
    g_autoptr(GError) err = NULL;
    uint8_t hdr[56], entry[8], buf[4096];
    uint64_t l1_offset, l2;
    QGuardImage *img;
    int fd, i;

    test_image_new(path, "qcow2", "size=1G");
    fd = open(path, O_RDWR);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(pread(fd, hdr, sizeof(hdr), 0), ==, sizeof(hdr));
    l1_offset = be64_at(hdr + 40);
    /* L1 entry 1 (guest 512 MiB..1 GiB) names the refcount table as L2. */
    l2 = be64_at(hdr + 48) | (1ULL << 63);
    for (i = 0; i < 8; i++) {
        entry[i] = l2 >> (56 - 8 * i);
    }
    g_assert_cmpint(pwrite(fd, entry, 8, l1_offset + 8), ==, 8);
    close(fd);

    img = test_image_open(path, "qcow2", "overlap-check=all",
                          QGUARD_OPEN_RDWR);
    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    qguard_set_message_handler(drop_message, NULL);
    g_assert_cmpint(qguard_image_pwrite(img, 600 << 20, 512, buf,
                                        QGUARD_WRITE_FUA, &err),
                    <, 0);
    g_clear_error(&err);
    g_assert_cmpint(qguard_image_close(img, &err), ==, -EIO);
    qguard_set_message_handler(NULL, NULL);
    g_assert_error(err, QGUARD_ERROR, EIO);
}

typedef struct ErrorCase {
    const char *mode;
    HostFileOp op;
    uint64_t nth;
    int err;
} ErrorCase;

/*
 * A write followed by a close, with one host operation failing: whatever
 * the cache mode, a failed operation is reported by the write or by the
 * close, and if neither reports anything the data is in the image.
 */
static void test_error_reported(gconstpointer data)
{
    const ErrorCase *c = data;
    g_autofree char *path = tpath("err.qcow2");
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    Hook h = { .path = path, .fail_op = c->op, .fail_nth = c->nth,
               .fail_errno = c->err };
    unsigned flags = QGUARD_OPEN_RDWR;
    QGuardImage *img;
    int wret, cret;

    g_assert_cmpint(qguard_parse_cache_mode(c->mode, &flags), ==, 0);
    test_image_new(path, "qcow2", "size=8M");
    img = test_image_open(path, "qcow2", NULL,
                          flags);
    memset(buf, 0x5a, 1 << 20);
    host_file_set_hook(hook_fn, &h);
    wret = qguard_image_pwrite(img, 0, 1 << 20, buf, 0, &err);
    g_assert_true((wret < 0) == (err != NULL));
    g_clear_error(&err);
    cret = qguard_image_close(img, &err);
    g_assert_true((cret < 0) == (err != NULL));
    host_file_set_hook(NULL, NULL);

    if (h.counts[c->op] >= c->nth) {
        g_assert_true(wret < 0 || cret < 0);
    }
    if (wret == 0 && cret == 0) {
        memset(buf, 0, 1 << 20);
        read_other(path, "qcow2", 0, 1 << 20, buf);
        assert_filled(buf, 1 << 20, 0x5a);
    }
}

static const ErrorCase error_cases[] = {
    { "writeback", HOST_FILE_FLUSH, 1, EIO },
    { "writeback", HOST_FILE_WRITE, 2, EIO },
    { "writeback", HOST_FILE_WRITE, 2, ENOSPC },
    { "writethrough", HOST_FILE_FLUSH, 1, EIO },
    { "writethrough", HOST_FILE_WRITE, 2, EIO },
    { "writethrough", HOST_FILE_WRITE, 2, ENOSPC },
    { "none", HOST_FILE_FLUSH, 1, EIO },
    { "none", HOST_FILE_WRITE, 2, EIO },
    { "directsync", HOST_FILE_WRITE, 2, ENOSPC },
    { "unsafe", HOST_FILE_WRITE, 2, EIO },
    { "unsafe", HOST_FILE_WRITE, 3, ENOSPC },
};

typedef struct WriteCase {
    const char *create_opts;
    const char *runtime_opts;
    unsigned flags;
    bool durable_after_write;   /* on the host as soon as the write returns */
    bool syncs;                 /* the host file is fdatasync'ed */
} WriteCase;

/*
 * A write in writethrough mode is on the host when it returns, with one
 * flush for the request however many clusters it allocates; writeback
 * mode writes nothing back until a flush.  cache.no-flush writes the same
 * but never syncs.
 */
static void test_write_cache(gconstpointer data)
{
    const WriteCase *c = data;
    g_autofree char *path = tpath("wc.qcow2");
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    uint64_t small_flushes, big_flushes;
    Hook h = { .path = path };
    QGuardImage *img;

    test_image_new(path, "qcow2", c->create_opts);
    img = test_image_open(path, "qcow2", c->runtime_opts,
                          QGUARD_OPEN_RDWR | c->flags);
    memset(buf, 0x5a, 1 << 20);
    /* The first L2 table: later writes allocate tables only if small. */
    g_assert_cmpint(qguard_image_pwrite(img, 0, 4096, buf, 0, &err), ==, 0);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    host_file_set_hook(hook_fn, &h);
    g_assert_cmpint(qguard_image_pwrite(img, 6 << 20, 4096, buf, 0, &err),
                    ==, 0);
    small_flushes = h.counts[HOST_FILE_FLUSH];
    h.counts[HOST_FILE_FLUSH] = 0;
    g_assert_cmpint(qguard_image_pwrite(img, 2 << 20, 1 << 20, buf, 0, &err),
                    ==, 0);
    big_flushes = h.counts[HOST_FILE_FLUSH];
    host_file_set_hook(NULL, NULL);

    if (c->durable_after_write && c->syncs) {
        g_assert_cmpint(small_flushes, >=, 1);
    } else {
        g_assert_cmpint(small_flushes, ==, 0);
    }
    /* Sixteen clusters or more: still the flushes of one request. */
    g_assert_cmpint(big_flushes, ==, small_flushes);

    memset(buf, 0, 1 << 20);
    read_other(path, "qcow2", 2 << 20, 1 << 20, buf);
    if (c->durable_after_write) {
        assert_filled(buf, 1 << 20, 0x5a);
    }

    h.counts[HOST_FILE_FLUSH] = 0;
    host_file_set_hook(hook_fn, &h);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    host_file_set_hook(NULL, NULL);
    if (c->syncs && !c->durable_after_write) {
        g_assert_cmpint(h.counts[HOST_FILE_FLUSH], >=, 1);
    } else {
        /* Nothing left to sync, or syncs are off. */
        g_assert_cmpint(h.counts[HOST_FILE_FLUSH], ==, 0);
    }
    read_other(path, "qcow2", 2 << 20, 1 << 20, buf);
    assert_filled(buf, 1 << 20, 0x5a);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

static const WriteCase write_cases[] = {
    { "size=8M", NULL, QGUARD_OPEN_WRITETHROUGH, true, true },
    /*
     * No new refcount block (one covers 2 MiB of the file) and caches
     * big enough that no table is evicted during the request: those would
     * flush in writeback mode too.
     */
    { "size=8M,cluster_size=512,refcount_bits=1",
      "l2-cache-size=64k,refcount-cache-size=8k", QGUARD_OPEN_WRITETHROUGH,
      true, true },
    { "size=8M,cluster_size=2M", NULL, QGUARD_OPEN_WRITETHROUGH, true, true },
    { "size=8M", NULL, 0, false, true },
    { "size=8M", "cache.no-flush=on", QGUARD_OPEN_WRITETHROUGH, true, false },
    { "size=8M", NULL, QGUARD_OPEN_WRITETHROUGH | QGUARD_OPEN_NO_FLUSH, true,
      false },
    { "size=8M", "cache.no-flush=on", 0, false, false },
};

static const char *const write_case_names[] = {
    "writethrough-64k", "writethrough-512", "writethrough-2m", "writeback",
    "writethrough-no-flush-option", "writethrough-no-flush-flag", "unsafe",
};

/* ---- O_DIRECT ------------------------------------------------------------ */

typedef struct DirectCase {
    const char *format;
    const char *create_opts;    /* qcow2; raw: the file size */
    uint32_t align;
    uint32_t mem_align;
    /*
     * Both images through blkdebug with this file.align, 0 for none: its
     * padding stays in both files, O_DIRECT's coarser one does not.
     */
    const char *blkdebug_align;
} DirectCase;

static void create_any(const char *path, const DirectCase *c)
{
    if (!strcmp(c->format, "raw")) {
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        g_assert_cmpint(fd, >=, 0);
        g_assert_cmpint(ftruncate(fd, strtoull(c->create_opts, NULL, 0)), ==,
                        0);
        close(fd);
    } else {
        test_image_new(path, "qcow2", c->create_opts);
    }
}

static void assert_same_files(const char *a, const char *b)
{
    g_autofree char *da = NULL, *db = NULL;
    gsize la, lb;

    g_assert_true(g_file_get_contents(a, &da, &la, NULL));
    g_assert_true(g_file_get_contents(b, &db, &lb, NULL));
    g_assert_cmpuint(la, ==, lb);
    g_assert_true(memcmp(da, db, la) == 0);
}

/*
 * With cache.direct=on, requests of any alignment, from buffers of any
 * alignment, do what they do through the page cache: the same guest data
 * and, byte for byte, the same file (a write of the last partial block
 * does not leave the file longer).
 */
static void test_direct_matches_buffered(gconstpointer data)
{
    const DirectCase *c = data;
    g_autofree char *pa = tpath("buffered.img");
    g_autofree char *pb = tpath("direct.img");
    g_autoptr(GError) err = NULL;
    GRand *rand = g_rand_new_with_seed(42);
    size_t max_len = 300 * 1024;
    g_autofree uint8_t *wbuf = g_malloc(max_len + 1);
    g_autofree uint8_t *ra = g_malloc(max_len + 1);
    g_autofree uint8_t *rb = g_malloc(max_len + 1);
    QGuardImage *a = NULL, *b = NULL;
    QGuardOpts *opts = qguard_opts_new();
    g_autofree char *na = NULL, *nb = NULL;
    uint64_t size;
    int i;

    create_any(pa, c);
    create_any(pb, c);
    na = g_strconcat(c->blkdebug_align ? "blkdebug::" : "", pa, NULL);
    nb = g_strconcat(c->blkdebug_align ? "blkdebug::" : "", pb, NULL);
    if (c->blkdebug_align) {
        qguard_opts_set(opts, "file.align", c->blkdebug_align);
    }
    g_assert_cmpint(qguard_image_open(&a, na, c->format, opts,
                                      QGUARD_OPEN_RDWR, &err), ==, 0);
    qguard_opts_set(opts, "cache.direct", "on");
    g_assert_cmpint(qguard_image_open(&b, nb, c->format, opts,
                                      QGUARD_OPEN_RDWR, &err), ==, 0);
    qguard_opts_free(opts);
    g_assert_true(host_file_is_direct(b->file));
    g_assert_false(host_file_is_direct(a->file));
    if (c->align) {
        host_file_set_dio_alignment(b->file, c->align, c->mem_align);
    }
    size = qguard_image_size(a);
    g_assert_cmpuint(size, ==, qguard_image_size(b));

    for (i = 0; i < 300; i++) {
        uint64_t len = 1 + g_rand_int_range(rand, 0, max_len);
        uint64_t off;
        int op = g_rand_int_range(rand, 0, 10);
        int shift = g_rand_int_range(rand, 0, 2);

        len = MIN(len, size);
        off = g_rand_int_range(rand, 0, size - len + 1);
        if (g_rand_boolean(rand)) {
            off &= ~(uint64_t)511;
            len = MIN(MAX(512, len & ~(uint64_t)511), size - off);
        }
        if (op < 5) {
            memset(wbuf + shift, i + 1, len);
            g_assert_cmpint(qguard_image_pwrite(a, off, len, wbuf + shift, 0,
                                                &err), ==, 0);
            g_assert_cmpint(qguard_image_pwrite(b, off, len, wbuf + shift, 0,
                                                &err), ==, 0);
        } else if (op < 6) {
            g_assert_cmpint(qguard_image_pwrite_zeroes(a, off, len, 0, &err),
                            ==, 0);
            g_assert_cmpint(qguard_image_pwrite_zeroes(b, off, len, 0, &err),
                            ==, 0);
        } else if (op < 7) {
            g_assert_cmpint(qguard_image_flush(a, &err), ==, 0);
            g_assert_cmpint(qguard_image_flush(b, &err), ==, 0);
        } else {
            g_assert_cmpint(qguard_image_pread(a, off, len, ra + shift, &err),
                            ==, 0);
            g_assert_cmpint(qguard_image_pread(b, off, len, rb + shift, &err),
                            ==, 0);
            g_assert_true(memcmp(ra + shift, rb + shift, len) == 0);
        }
    }
    g_assert_cmpint(qguard_image_close(a, &err), ==, 0);
    g_assert_cmpint(qguard_image_close(b, &err), ==, 0);
    assert_same_files(pa, pb);
    g_rand_free(rand);
}

static const DirectCase direct_cases[] = {
    { "qcow2", "size=4M,cluster_size=512", 0, 0, NULL },
    { "qcow2", "size=4M,cluster_size=512", 4096, 4096, NULL },
    { "qcow2", "size=4M", 4096, 4096, NULL },
    { "raw", "1049576", 0, 0, NULL },       /* 1 MiB + 1000 */
    { "raw", "1049576", 4096, 4096, NULL },
    { "qcow2", "size=4M,cluster_size=512", 4096, 4096, "512" },
    { "raw", "1049576", 4096, 4096, "1k" },
};

static const char *const direct_case_names[] = {
    "qcow2-512", "qcow2-512-align-4k", "qcow2-64k-align-4k", "raw-odd-size",
    "raw-odd-size-align-4k", "qcow2-512-align-4k-blkdebug-512",
    "raw-odd-size-align-4k-blkdebug-1k",
};

int main(int argc, char **argv)
{
    int ret;
    size_t i;

    g_test_init(&argc, &argv, NULL);
    test_scratch_init("qguard-cache-XXXXXX");

    g_test_add_func("/cache/flush-error-is-sticky",
                    test_flush_error_is_sticky);
    g_test_add_func("/cache/close/reports-mark-clean-failure",
                    test_close_reports_mark_clean_failure);
    g_test_add_func("/cache/close/broken-image-with-unflushed-writes",
                    test_close_of_broken_image_fails);

    for (i = 0; i < G_N_ELEMENTS(write_cases); i++) {
        g_autofree char *name = g_strdup_printf("/cache/write/%s",
                                                write_case_names[i]);
        g_test_add_data_func(name, &write_cases[i], test_write_cache);
    }

    for (i = 0; i < G_N_ELEMENTS(direct_cases); i++) {
        g_autofree char *name = g_strdup_printf("/cache/direct/%s",
                                                direct_case_names[i]);
        g_test_add_data_func(name, &direct_cases[i],
                             test_direct_matches_buffered);
    }

    for (i = 0; i < G_N_ELEMENTS(error_cases); i++) {
        const ErrorCase *c = &error_cases[i];
        g_autofree char *name = g_strdup_printf(
            "/cache/error/%s-%s-%" G_GUINT64_FORMAT "-%s", c->mode,
            c->op == HOST_FILE_FLUSH ? "flush" : "write", c->nth,
            c->err == EIO ? "eio" : "enospc");
        g_test_add_data_func(name, c, test_error_reported);
    }

    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
