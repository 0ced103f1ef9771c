/* SPDX-License-Identifier: MIT */
/*
 * Power-cut simulation: what survives a crash at every point of a workload.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A recording hook (host_file_set_hook) captures every write (offset and
 * data), flush, truncate and hole punch that a workload issues on a copy of
 * a starting image.  For a cut point k (the first k records reached the
 * host), everything up to the last flush before k is durable; the writes
 * after it may have reached the disk in any subset and order, and the last
 * one may be torn at a 512-byte boundary.  For every cut point (or a seeded
 * sample of them) several such crash images are replayed onto a fresh copy
 * of the starting image, and each must
 *
 *   - open read-write (a dirty lazy-refcounts image is repaired on open),
 *   - pass qguard's own check with no corruption and no check error,
 *   - pass qemu-img check with no corruption (exit 0, or 3 for leaks,
 *     which qemu-img check -r leaks then repairs to exit 0),
 *   - read back, for every 512-byte sector, the guest data as it was at the
 *     last flush that completed before the cut, or as a later operation
 *     (started before the cut) made it: acknowledged, flushed writes are
 *     never lost, and no sector holds data that was never there.
 *
 * The guest state after every operation is taken by reading the whole disk
 * back through the open image and kept as one hash per sector.
 *
 * QGUARD_TEST_SEED repeats a run; "-m slow" or QGUARD_TEST_SLOW=1 checks
 * every cut point instead of a sample (make check-slow).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "block/block_int.h"
#include "fault-common.h"

#define SECTOR 512
/* Cut points checked per workload unless in slow mode. */
#define SAMPLED_CUTS 36
/* Random-subset variants per cut point. */
#define RANDOM_VARIANTS 2

static FaultTest ft;
static uint64_t total_cuts, total_variants, total_records;

/* ---- Recording ---------------------------------------------------------- */

typedef enum RecKind {
    REC_WRITE,
    REC_FLUSH,
    REC_TRUNCATE,
    REC_DISCARD,
    REC_ALLOCATE,
} RecKind;

typedef struct Rec {
    RecKind kind;
    uint64_t offset;
    uint64_t bytes;
    uint8_t *data;          /* REC_WRITE */
} Rec;

typedef struct Recorder {
    const char *path;       /* only this file is recorded */
    GArray *recs;           /* of Rec */
} Recorder;

static int record_hook(void *opaque, HostFile *file, HostFileOp op,
                       uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int iovcnt)
{
    Recorder *r = opaque;
    Rec rec = { .offset = offset, .bytes = bytes };
    uint64_t pos = 0;
    int i;

    if (strcmp(host_file_name(file), r->path)) {
        return 0;
    }
    switch (op) {
    case HOST_FILE_READ:
        return 0;
    case HOST_FILE_WRITE:
        if (!iov) {
            rec.kind = REC_ALLOCATE;
            break;
        }
        rec.kind = REC_WRITE;
        rec.data = g_malloc(bytes ? bytes : 1);
        for (i = 0; i < iovcnt; i++) {
            memcpy(rec.data + pos, iov[i].iov_base, iov[i].iov_len);
            pos += iov[i].iov_len;
        }
        g_assert_cmpuint(pos, ==, bytes);
        break;
    case HOST_FILE_FLUSH:
        rec.kind = REC_FLUSH;
        break;
    case HOST_FILE_TRUNCATE:
        rec.kind = REC_TRUNCATE;
        break;
    case HOST_FILE_DISCARD:
        rec.kind = REC_DISCARD;
        break;
    }
    g_array_append_val(r->recs, rec);
    return 0;
}

/* ---- An image file held in memory ---------------------------------------- */

typedef struct MemFile {
    uint8_t *buf;
    size_t len;
    size_t cap;
} MemFile;

static void mem_reserve(MemFile *f, size_t len)
{
    if (len > f->cap) {
        size_t cap = MAX(len, f->cap * 2);
        f->buf = g_realloc(f->buf, cap);
        f->cap = cap;
    }
}

static void mem_set_len(MemFile *f, size_t len)
{
    mem_reserve(f, len);
    if (len > f->len) {
        memset(f->buf + f->len, 0, len - f->len);
    }
    f->len = len;
}

static void mem_copy(MemFile *dst, const MemFile *src)
{
    mem_reserve(dst, src->len);
    memcpy(dst->buf, src->buf, src->len);
    dst->len = src->len;
}

/* Apply a record, or only its first @limit bytes (a torn write). */
static void mem_apply(MemFile *f, const Rec *r, uint64_t limit)
{
    uint64_t n = MIN(r->bytes, limit);

    switch (r->kind) {
    case REC_WRITE:
        if (r->offset + n > f->len) {
            mem_set_len(f, r->offset + n);
        }
        memcpy(f->buf + r->offset, r->data, n);
        break;
    case REC_TRUNCATE:
        mem_set_len(f, r->offset);
        break;
    case REC_DISCARD:
        if (r->offset < f->len) {
            memset(f->buf + r->offset, 0, MIN(n, f->len - r->offset));
        }
        break;
    case REC_ALLOCATE:
        if (r->offset + r->bytes > f->len) {
            mem_set_len(f, r->offset + r->bytes);
        }
        break;
    case REC_FLUSH:
        break;
    }
}

static void mem_load(MemFile *f, const char *path)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    mem_set_len(f, 0);
    mem_set_len(f, len);
    memcpy(f->buf, data, len);
}

static void mem_store(const MemFile *f, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t done = 0;

    g_assert_cmpint(fd, >=, 0);
    while (done < f->len) {
        ssize_t n = write(fd, f->buf + done, f->len - done);
        g_assert_cmpint(n, >, 0);
        done += n;
    }
    close(fd);
}

/* ---- Guest states ------------------------------------------------------- */

static uint64_t zero_sector_hash(void)
{
    static const uint8_t zero[SECTOR];

    return hash_sector(zero, SECTOR);
}

typedef struct GuestState {
    uint64_t size;           /* virtual size */
    uint64_t *hashes;        /* one per sector of the state's size */
} GuestState;

typedef struct GuestOp {
    const char *what;
    bool is_flush;           /* a completed flush: a durability point */
    size_t log_start;        /* records before the operation started */
    size_t log_end;          /* records when it returned */
    GuestState state;        /* guest data after it */
} GuestOp;

static void read_state(QGuardImage *img, GuestState *st)
{
    g_autoptr(GError) err = NULL;
    uint64_t chunk = 1 << 20, off, s;
    g_autofree uint8_t *buf = g_malloc(chunk);

    st->size = qguard_image_size(img);
    st->hashes = g_new(uint64_t, (st->size + SECTOR - 1) / SECTOR);
    for (off = 0; off < st->size; off += chunk) {
        uint64_t len = MIN(chunk, st->size - off);
        g_assert_cmpint(qguard_image_pread(img, off, len, buf, &err), ==, 0);
        for (s = 0; s < len; s += SECTOR) {
            st->hashes[(off + s) / SECTOR] =
                hash_sector(buf + s, MIN(SECTOR, len - s));
        }
    }
}

/* The hash a state gives sector @s (zeros past its size: a grown disk). */
static uint64_t state_hash(const GuestState *st, uint64_t s)
{
    return s * SECTOR < st->size ? st->hashes[s] : zero_sector_hash();
}

/* ---- Workloads ----------------------------------------------------------- */

typedef struct Workload Workload;

typedef struct BitmapState BitmapState;

typedef struct Run {
    const Workload *w;
    QGuardImage *img;
    Recorder rec;
    GArray *ops;             /* of GuestOp */
    GuestState initial;
    GRand *rand;             /* the workload's own, fixed sequence */
    /* Persistent bitmaps before the workload's open and after its close. */
    GPtrArray *bitmaps_before, *bitmaps_after;
} Run;

struct Workload {
    const char *name;
    const char *create_opts;
    void (*prepare)(QGuardImage *img);   /* data already in the base image */
    void (*run)(Run *r);
};

static void op_begin(Run *r, GuestOp *op, const char *what)
{
    memset(op, 0, sizeof(*op));
    op->what = what;
    op->log_start = r->rec.recs->len;
}

static void op_end(Run *r, GuestOp *op)
{
    op->log_end = r->rec.recs->len;
    read_state(r->img, &op->state);
    g_array_append_val(r->ops, *op);
}

static void w_write(Run *r, uint64_t off, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);
    g_autofree uint8_t *rb = g_malloc(len);
    GuestOp op;

    fill_pattern(buf, len, off, r->ops->len + 1);
    op_begin(r, &op, "write");
    g_assert_cmpint(qguard_image_pwrite(r->img, off, len, buf, 0, &err), ==,
                    0);
    op_end(r, &op);
    g_assert_cmpint(qguard_image_pread(r->img, off, len, rb, &err), ==, 0);
    g_assert_cmpmem(rb, len, buf, len);
}

static void w_write_plain(QGuardImage *img, uint64_t off, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);

    fill_pattern(buf, len, off, 0xb17);
    g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err), ==, 0);
}

static void w_zero(Run *r, uint64_t off, uint64_t len, unsigned flags)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, "write-zeroes");
    g_assert_cmpint(qguard_image_pwrite_zeroes(r->img, off, len, flags,
                                               &err), ==, 0);
    op_end(r, &op);
}

static void w_discard(Run *r, uint64_t off, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, "discard");
    g_assert_cmpint(qguard_image_discard(r->img, off, len, &err), ==, 0);
    op_end(r, &op);
}

static void w_flush(Run *r)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, "flush");
    g_assert_cmpint(qguard_image_flush(r->img, &err), ==, 0);
    op.is_flush = true;
    op_end(r, &op);
}

static void w_truncate(Run *r, uint64_t size)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, "truncate");
    g_assert_cmpint(qguard_image_truncate(r->img, size, false, NULL, &err),
                    ==, 0);
    op_end(r, &op);
}

/* Grow with preallocation: the batched table writes of qcow2-prealloc.c. */
static void w_truncate_prealloc(Run *r, uint64_t size, const char *mode)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, "truncate-prealloc");
    g_assert_cmpint(qguard_image_truncate(r->img, size, false, mode, &err),
                    ==, 0);
    g_assert_no_error(err);
    op_end(r, &op);
}

typedef int SnapshotFn(QGuardImage *img, const char *name, GError **errp);

static void w_snapshot(Run *r, SnapshotFn *fn, const char *what,
                       const char *name)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    op_begin(r, &op, what);
    g_assert_cmpint(fn(r->img, name, &err), ==, 0);
    g_assert_no_error(err);
    op_end(r, &op);
}

/* A random write of 1..max_len bytes, sector aligned or not. */
static void w_random_write(Run *r, uint64_t size, uint64_t max_len)
{
    uint64_t len = 1 + g_rand_int_range(r->rand, 0, max_len);
    uint64_t off = (uint64_t)(g_rand_double(r->rand) * (size - len));

    if (g_rand_boolean(r->rand)) {
        off &= ~(uint64_t)(SECTOR - 1);
        len = MIN(MAX(SECTOR, len & ~(uint64_t)(SECTOR - 1)), size - off);
    }
    w_write(r, off, len);
}

static void run_alloc(Run *r, uint64_t size, uint64_t max_len, int nops)
{
    int i;

    for (i = 0; i < nops; i++) {
        w_random_write(r, size, max_len);
        if (i % 4 == 3) {
            w_flush(r);
        }
    }
}

static void run_alloc_64k(Run *r)
{
    /* Partial clusters (COW), cluster-spanning writes, overwrites. */
    w_write(r, 0, 4096);
    w_write(r, 100 * 1024, 8192);
    w_flush(r);
    w_write(r, 60 * 1024, 70 * 1024);
    w_write(r, 2048, 1000);
    run_alloc(r, 8 << 20, 200000, 12);
}

static void run_alloc_512(Run *r)
{
    run_alloc(r, 4 << 20, 20000, 16);
}

static void run_reftable_growth(Run *r)
{
    uint64_t off;
    int i = 0;

    /*
     * 512-byte clusters with 64-bit refcounts: a refcount block covers 32
     * KiB and a table cluster 2 MiB, so 3 MiB of data grows and moves the
     * table (and allocates dozens of refcount blocks).
     */
    for (off = 0; off < (3 << 20); off += 192 * 1024) {
        w_write(r, off, 192 * 1024);
        if (++i % 4 == 0) {
            w_flush(r);
        }
    }
}

static void run_l1_growth(Run *r)
{
    w_write(r, 0, 4096);
    w_flush(r);
    w_truncate(r, 64 << 20);
    w_write(r, (64 << 20) - 4096, 4096);
    w_flush(r);
    w_truncate(r, 96 << 20);
    w_write(r, (96 << 20) - 1536, 1536);
    w_write(r, 32 << 20, 8192);
}

static void prepare_data(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(1 << 20);

    fill_pattern(buf, 1 << 20, 0, 0xbeef);
    g_assert_cmpint(qguard_image_pwrite(img, 0, 1 << 20, buf, 0, &err), ==,
                    0);
    fill_pattern(buf, 1 << 20, 1 << 20, 0xbeef);
    g_assert_cmpint(qguard_image_pwrite(img, 1 << 20, 1 << 20, buf, 0, &err),
                    ==, 0);
}

static void run_discard_zero(Run *r)
{
    w_discard(r, 0, 256 * 1024);
    w_write(r, 64 * 1024, 4096);
    w_zero(r, 512 * 1024, 128 * 1024, QGUARD_ZERO_MAY_UNMAP);
    w_zero(r, 1 << 20, 64 * 1024, 0);
    w_flush(r);
    w_discard(r, 1536 * 1024 + 1000, 100 * 1024);
    w_zero(r, 700 * 1024 + 7, 3000, 0);
    w_write(r, 16 * 1024, 8192);
    w_zero(r, 1800 * 1024, 200 * 1024, QGUARD_ZERO_MAY_UNMAP);
    w_flush(r);
    w_write(r, 1800 * 1024, 4096);
    w_discard(r, 0, 2 << 20);
    w_write(r, 4096, 4096);
}

static void run_snapshots(Run *r)
{
    w_snapshot(r, qguard_snapshot_create, "snapshot-create", "s1");
    w_write(r, 4096, 8192);
    w_flush(r);
    w_snapshot(r, qguard_snapshot_create, "snapshot-create", "s2");
    w_write(r, 0, 4096);
    w_write(r, 1 << 20, 64 * 1024);
    w_snapshot(r, qguard_snapshot_apply, "snapshot-apply", "s1");
    w_write(r, 8192, 4096);
    w_flush(r);
    w_snapshot(r, qguard_snapshot_delete, "snapshot-delete", "s2");
    w_write(r, 12288, 4096);
    w_snapshot(r, qguard_snapshot_delete, "snapshot-delete", "s1");
    w_write(r, 0, 1000);
    w_flush(r);
    w_snapshot(r, qguard_snapshot_create, "snapshot-create", "s3");
}

/*
 * 64-bit refcounts with 512-byte clusters: a refcount block covers 32 KiB,
 * so growing to 6 MiB needs new blocks, a new refcount table and a grown
 * L1 table, all in one bulk allocation.
 */
static void run_prealloc(Run *r)
{
    w_write(r, 0, 64 * 1024);
    w_flush(r);
    w_truncate_prealloc(r, 6 << 20, "metadata");
    w_write(r, 5 << 20, 8192);
    w_flush(r);
    w_truncate_prealloc(r, (6 << 20) + 96 * 1024, "full");
    w_write(r, (6 << 20) + 90 * 1024, 4096);
}

/* Small growths whose refcounts fit the existing blocks, and an L2 table
 * that exists already (the edge of the grown range). */
static void run_prealloc_small(Run *r)
{
    w_write(r, 0, 40 * 1024);
    w_flush(r);
    w_truncate_prealloc(r, 80 * 1024, "metadata");
    w_write(r, 70 * 1024, 4096);
    w_truncate_prealloc(r, 100 * 1024, "falloc");
    w_write(r, 98 * 1024, 1024);
}

static void run_lazy(Run *r)
{
    run_alloc(r, 4 << 20, 100000, 10);
}

/*
 * Persistent bitmaps: long names so that the directory spans sectors (a
 * torn in-place rewrite of flags), 512-byte clusters so that bitmap data
 * and tables span several clusters.
 */
#define BM_NAME(n) n "-------------------------------------------------" \
                     "--------------------------------------------------" \
                     "--------------------------------------------------"

static void bm_ok(int ret)
{
    g_assert_cmpint(ret, ==, 0);
}

static void prepare_bitmaps(QGuardImage *img)
{
    prepare_data(img);
    bm_ok(qguard_bitmap_add(img, BM_NAME("fine"), 512, false, NULL));
    bm_ok(qguard_bitmap_add(img, BM_NAME("coarse"), 65536, false, NULL));
    bm_ok(qguard_bitmap_add(img, BM_NAME("frozen"), 4096, true, NULL));
    w_write_plain(img, 4096, 8192);
    w_write_plain(img, 3 << 20, 100000);
    bm_ok(qguard_bitmap_merge(img, BM_NAME("frozen"), img, BM_NAME("fine"),
                              NULL));
}

static void w_bitmap(Run *r, const char *what, int ret)
{
    GuestOp op;

    /* Bitmap operations change memory only: no records, no new state. */
    op_begin(r, &op, what);
    bm_ok(ret);
    op_end(r, &op);
}

static void run_bitmaps(Run *r)
{
    w_write(r, 0, 4096);
    w_write(r, 1 << 20, 64 * 1024);
    w_flush(r);
    w_zero(r, 2 << 20, 128 * 1024, QGUARD_ZERO_MAY_UNMAP);
    w_discard(r, 3 << 20, 64 * 1024);
    w_bitmap(r, "bitmap-clear", qguard_bitmap_clear(r->img,
                                                    BM_NAME("frozen"), NULL));
    w_bitmap(r, "bitmap-merge", qguard_bitmap_merge(r->img, BM_NAME("frozen"),
                                                    r->img,
                                                    BM_NAME("coarse"), NULL));
    w_bitmap(r, "bitmap-add", qguard_bitmap_add(r->img, BM_NAME("late"), 0,
                                                false, NULL));
    w_write(r, 5 << 20, 4096);
    w_bitmap(r, "bitmap-remove", qguard_bitmap_remove(r->img,
                                                      BM_NAME("coarse"),
                                                      NULL));
    w_flush(r);
    w_truncate(r, 12 << 20);
    w_write(r, (12 << 20) - 4096, 4096);
}

static void run_first_bitmap(Run *r)
{
    w_write(r, 0, 4096);
    w_bitmap(r, "bitmap-add", qguard_bitmap_add(r->img, "on", 0, false,
                                                NULL));
    w_bitmap(r, "bitmap-add", qguard_bitmap_add(r->img, "off", 512, true,
                                                NULL));
    w_write(r, 1 << 20, 8192);
    w_flush(r);
    w_write(r, 100 * 1024, 1000);
}

static void run_remove_bitmaps(Run *r)
{
    w_write(r, 0, 4096);
    w_bitmap(r, "bitmap-remove", qguard_bitmap_remove(r->img,
                                                      BM_NAME("fine"), NULL));
    w_bitmap(r, "bitmap-remove", qguard_bitmap_remove(r->img,
                                                      BM_NAME("coarse"),
                                                      NULL));
    w_bitmap(r, "bitmap-remove", qguard_bitmap_remove(r->img,
                                                      BM_NAME("frozen"),
                                                      NULL));
    w_write(r, 1 << 20, 4096);
}

static void w_amend(Run *r, const char *optstr)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    GuestOp op;

    g_assert_cmpint(qguard_opts_parse(opts, optstr, NULL, &err), ==, 0);
    op_begin(r, &op, optstr);
    g_assert_cmpint(qguard_image_amend(r->img, opts, false, NULL, NULL,
                                       &err), ==, 0);
    g_assert_no_error(err);
    op_end(r, &op);
    qguard_opts_free(opts);
}

/*
 * New refcount widths (the whole refcount structure is rebuilt and
 * switched), lazy refcounts on and off, and a downgrade that turns zero
 * clusters, some shared with a snapshot, into data clusters.
 */
static void run_amend(Run *r)
{
    w_zero(r, 64 * 1024, 64 * 1024, 0);
    w_zero(r, 256 * 1024, 128 * 1024, QGUARD_ZERO_MAY_UNMAP);
    w_snapshot(r, qguard_snapshot_create, "snapshot-create", "s1");
    w_zero(r, 512 * 1024, 64 * 1024, 0);
    w_write(r, 4096, 8192);
    w_amend(r, "refcount_bits=64");
    w_write(r, 1 << 20, 100000);
    w_amend(r, "refcount_bits=2");
    w_amend(r, "lazy_refcounts=on");
    w_write(r, 1536 * 1024, 4096);
    w_amend(r, "lazy_refcounts=off");
    w_amend(r, "refcount_bits=16,compat=0.10");
    w_write(r, 8192, 4096);
    w_amend(r, "compat=1.1");
}

static void run_make_empty(Run *r)
{
    g_autoptr(GError) err = NULL;
    GuestOp op;

    w_snapshot(r, qguard_snapshot_create, "snapshot-create", "s1");
    w_write(r, 4096, 8192);
    op_begin(r, &op, "make-empty");
    g_assert_cmpint(qguard_image_make_empty(r->img, &err), ==, 0);
    op_end(r, &op);
    w_write(r, 0, 4096);
}

static const Workload workloads[] = {
    { "alloc-64k", "size=8M", NULL, run_alloc_64k },
    { "alloc-512", "size=4M,cluster_size=512", NULL, run_alloc_512 },
    { "reftable-growth", "size=8M,cluster_size=512,refcount_bits=64", NULL,
      run_reftable_growth },
    { "l1-growth", "size=1M,cluster_size=512", NULL, run_l1_growth },
    { "discard-zero", "size=2M,cluster_size=4096", prepare_data,
      run_discard_zero },
    { "snapshots", "size=2M,cluster_size=4096", prepare_data,
      run_snapshots },
    { "lazy-refcounts", "size=4M,lazy_refcounts=on", NULL, run_lazy },
    { "bitmaps", "size=8M,cluster_size=512", prepare_bitmaps, run_bitmaps },
    { "bitmap-first", "size=2M,cluster_size=4096", prepare_data,
      run_first_bitmap },
    { "bitmap-remove-all", "size=8M,cluster_size=512", prepare_bitmaps,
      run_remove_bitmaps },
    { "prealloc", "size=1M,cluster_size=512,refcount_bits=64", NULL,
      run_prealloc },
    { "prealloc-v2", "size=1M,cluster_size=512,compat=0.10", NULL,
      run_prealloc },
    { "prealloc-small", "size=48K,cluster_size=512", NULL,
      run_prealloc_small },
    { "amend", "size=2M,cluster_size=4096", prepare_data, run_amend },
    { "make-empty", "size=2M,cluster_size=4096", prepare_data,
      run_make_empty },
};

/* ---- Checking a crash image ---------------------------------------------- */

struct BitmapState {
    char *name;
    uint32_t granularity;
    bool in_use, is_auto;
    char *map;               /* "offset:bytes:dirty" runs; NULL if in_use */
};

static void bitmap_state_free(gpointer p)
{
    BitmapState *b = p;

    g_free(b->name);
    g_free(b->map);
    g_free(b);
}

static char *bitmap_map(QGuardImage *img, const char *name, GString *why)
{
    g_autoptr(GError) err = NULL;
    GString *map = g_string_new(NULL);
    uint64_t size = qguard_image_size(img), off = 0, n;
    bool dirty;

    while (off < size) {
        if (qguard_bitmap_status(img, name, off, size - off, &dirty, &n,
                                 &err) < 0) {
            g_string_append_printf(why, "bitmap %.20s: %s\n", name,
                                   err->message);
            break;
        }
        g_string_append_printf(map, "%" PRIu64 ":%" PRIu64 ":%d ", off, n,
                               dirty);
        off += n;
    }
    return g_string_free(map, FALSE);
}

/* The bitmaps of @path as qguard reads them (read-only). */
static GPtrArray *read_bitmaps(const char *path, GString *why)
{
    g_autoptr(GError) err = NULL;
    GPtrArray *a = g_ptr_array_new_with_free_func(bitmap_state_free);
    QGuardBitmapInfo *list = NULL;
    QGuardImage *img = NULL;
    guint n = 0, i;

    if (qguard_image_open(&img, path, "qcow2", NULL, 0, &err) < 0 ||
        qguard_bitmap_list(img, &list, &n, &err) < 0) {
        g_string_append_printf(why, "bitmaps unreadable: %s\n",
                               err->message);
    }
    for (i = 0; i < n; i++) {
        BitmapState *b = g_new0(BitmapState, 1);
        b->name = g_strdup(list[i].name);
        b->granularity = list[i].granularity;
        b->in_use = list[i].in_use;
        b->is_auto = list[i].is_auto;
        if (!b->in_use) {
            b->map = bitmap_map(img, b->name, why);
        }
        g_ptr_array_add(a, b);
    }
    qguard_bitmap_list_free(list, n);
    if (img) {
        qguard_image_close(img, NULL);
    }
    return a;
}

static const BitmapState *find_bitmap_state(GPtrArray *a, const char *name)
{
    guint i;

    for (i = 0; i < a->len; i++) {
        const BitmapState *b = g_ptr_array_index(a, i);
        if (!strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

static bool same_bitmap_names(GPtrArray *a, GPtrArray *b)
{
    guint i;

    if (a->len != b->len) {
        return false;
    }
    for (i = 0; i < a->len; i++) {
        if (strcmp(((BitmapState *)g_ptr_array_index(a, i))->name,
                   ((BitmapState *)g_ptr_array_index(b, i))->name)) {
            return false;
        }
    }
    return true;
}

static bool bitmap_matches(const BitmapState *x, const BitmapState *ref)
{
    if (!ref || ref->granularity != x->granularity ||
        ref->is_auto != x->is_auto) {
        return false;
    }
    /* A stale bitmap is refused by every reader: allowed after a crash. */
    return x->in_use || (!ref->in_use && !strcmp(ref->map, x->map));
}

/*
 * Each bitmap of a crash image is as it was before the workload opened
 * the image, as the close stored it, or in_use; and an enabled bitmap
 * that is not in_use marks every sector the crash image changed since the
 * start (a missing in_use would leave a stale bitmap that looks valid).
 */
static void check_crash_bitmaps(Run *r, const char *path, GString *why)
{
    g_autoptr(GPtrArray) c = read_bitmaps(path, why);
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;
    guint i;

    if (why->len) {
        return;
    }
    if (!same_bitmap_names(c, r->bitmaps_before) &&
        !same_bitmap_names(c, r->bitmaps_after)) {
        g_string_append_printf(why, "the bitmaps (%u) are neither those "
                               "before (%u) nor after (%u)\n", c->len,
                               r->bitmaps_before->len, r->bitmaps_after->len);
        return;
    }
    for (i = 0; i < c->len; i++) {
        const BitmapState *x = g_ptr_array_index(c, i);
        const BitmapState *b = find_bitmap_state(r->bitmaps_before, x->name);
        const BitmapState *a = find_bitmap_state(r->bitmaps_after, x->name);
        uint64_t size, sector;

        if (!bitmap_matches(x, b) && !bitmap_matches(x, a)) {
            g_string_append_printf(why, "bitmap %.20s (%s%s) matches no "
                                   "state: %.200s\n", x->name,
                                   x->in_use ? "in_use " : "",
                                   x->is_auto ? "auto" : "",
                                   x->map ? x->map : "");
            return;
        }
        if (x->in_use || !x->is_auto || !b) {
            continue;
        }
        if (qguard_image_open(&img, path, "qcow2", NULL, 0, &err) < 0) {
            g_string_append_printf(why, "open: %s\n", err->message);
            return;
        }
        size = qguard_image_size(img);
        for (sector = 0; sector * SECTOR < size && !why->len; sector++) {
            uint8_t buf[SECTOR];
            uint64_t len = MIN(SECTOR, size - sector * SECTOR), n;
            bool dirty = false;

            if (qguard_image_pread(img, sector * SECTOR, len, buf, &err) < 0 ||
                hash_sector(buf, len) == state_hash(&r->initial, sector)) {
                continue;
            }
            if (qguard_bitmap_status(img, x->name, sector * SECTOR, len,
                                     &dirty, &n, &err) < 0 || !dirty) {
                g_string_append_printf(why, "bitmap %.20s misses the change "
                                       "of sector %" PRIu64 "\n", x->name,
                                       sector);
            }
        }
        qguard_image_close(img, NULL);
        img = NULL;
    }
}

typedef struct Verdict {
    GString *why;            /* empty: the image is fine */
} Verdict;

/*
 * Check the crash image at @path.  The allowed guest states are ops[first]
 * .. ops[last] (first == -1: the initial state as well).
 */
static void check_crash_image(Run *r, const char *path, int64_t first,
                              int64_t last, GString *why)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GString) log = g_string_new(NULL);
    g_autofree char *out = NULL;
    g_autofree uint8_t *buf = NULL;
    const char *check[] = { "qemu-img", "check", "-f", "qcow2", path, NULL };
    const char *fix[] = { "qemu-img", "check", "-r", "leaks", "-f", "qcow2",
                          path, NULL };
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img = NULL;
    uint64_t size, off, chunk = 1 << 20, s;
    int64_t j;
    int rc;
    bool size_ok = false;

    /* Before the read-write open below changes them. */
    if (r->bitmaps_before->len || r->bitmaps_after->len) {
        check_crash_bitmaps(r, path, why);
        if (why->len) {
            return;
        }
    }
    qguard_set_message_handler(quiet, NULL);
    rc = qguard_image_open(&img, path, "qcow2", NULL, QGUARD_OPEN_RDWR, &err);
    qguard_set_message_handler(NULL, NULL);
    if (rc < 0) {
        g_string_append_printf(why, "read-write open failed: %s\n",
                               err->message);
        return;
    }
    rc = qguard_image_check(img, 0, &res, report_line, log, &err);
    if (rc < 0 || res.corruptions || res.check_errors) {
        g_string_append_printf(why, "qguard check: ret %d, %d corruptions, "
                               "%d errors, %d leaks\n%s", rc,
                               res.corruptions, res.check_errors, res.leaks,
                               log->str);
    }

    /* Guest data: every sector matches one of the allowed states. */
    size = qguard_image_size(img);
    for (j = first; j <= last; j++) {
        const GuestState *st = j < 0 ? &r->initial :
                               &g_array_index(r->ops, GuestOp, j).state;
        size_ok |= st->size == size;
    }
    if (!size_ok) {
        g_string_append_printf(why, "virtual size %" PRIu64 " was never "
                               "the guest's\n", size);
    }
    buf = g_malloc(chunk);
    for (off = 0; off < size && !why->len; off += chunk) {
        uint64_t len = MIN(chunk, size - off);
        if (qguard_image_pread(img, off, len, buf, &err) < 0) {
            g_string_append_printf(why, "read at %" PRIu64 " failed: %s\n",
                                   off, err->message);
            break;
        }
        for (s = 0; s < len; s += SECTOR) {
            uint64_t sector = (off + s) / SECTOR;
            uint64_t h = hash_sector(buf + s, MIN(SECTOR, len - s));
            bool found = false;
            for (j = first; j <= last && !found; j++) {
                const GuestState *st = j < 0 ? &r->initial :
                    &g_array_index(r->ops, GuestOp, j).state;
                found = state_hash(st, sector) == h;
            }
            if (!found) {
                g_string_append_printf(why, "guest sector %" PRIu64 " (byte "
                                       "%" PRIu64 ") holds data of no "
                                       "allowed state (ops %" PRId64 "..%"
                                       PRId64 ")\n", sector, sector * SECTOR,
                                       first, last);
                break;
            }
        }
    }
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    if (why->len) {
        return;
    }

    rc = run_qemu_img(check, &out);
    if (rc == 3) {
        g_free(out);
        rc = run_qemu_img(fix, &out);
        if (rc != 0) {
            g_string_append_printf(why, "qemu-img check -r leaks: exit %d\n"
                                   "%s", rc, out);
        }
    } else if (rc != 0) {
        g_string_append_printf(why, "qemu-img check: exit %d\n%s", rc, out);
    }
}

/* ---- Replaying cut points ----------------------------------------------- */

typedef struct CutStats {
    uint64_t cuts, variants, failures;
} CutStats;

static void fail_variant(Run *r, CutStats *cs, size_t k, const char *variant,
                         const MemFile *img, GString *why)
{
    g_autofree char *keep = NULL;

    cs->failures++;
    if (cs->failures > 5) {
        return;
    }
    keep = g_strdup_printf("%s/qguard-powercut-%s-cut%zu-%s.qcow2",
                           g_get_tmp_dir(), r->w->name, k, variant);
    mem_store(img, keep);
    g_test_message("FAIL %s: cut point %zu of %u, variant %s (seed %u); "
                   "crash image kept as %s:\n%s", r->w->name, k,
                   r->rec.recs->len, variant, ft.seed, keep, why->str);
}

static void check_cut(Run *r, CutStats *cs, const MemFile *durable,
                      size_t last_flush_end, size_t k, GRand *rand)
{
    g_autofree char *path = g_build_filename(ft.dir, "crash.qcow2", NULL);
    g_autoptr(GArray) unflushed = g_array_new(FALSE, FALSE, sizeof(size_t));
    MemFile img = { 0 };
    int64_t first = -1, last = -1;
    size_t i;
    int v, nvariants;

    /* Allowed states: the last flush completed before k, and later ones. */
    for (i = 0; i < r->ops->len; i++) {
        GuestOp *op = &g_array_index(r->ops, GuestOp, i);
        if (op->is_flush && op->log_end <= k) {
            first = i;
        }
        if (op->log_start < k) {
            last = i;
        }
    }
    if (last < first) {
        last = first;
    }
    for (i = last_flush_end; i < k; i++) {
        if (g_array_index(r->rec.recs, Rec, i).kind != REC_FLUSH) {
            g_array_append_val(unflushed, i);
        }
    }

    /* 0: none of the unflushed writes, 1: all of them in order, then
     * random subsets in random order, then all with the last one torn. */
    nvariants = unflushed->len ? 3 + RANDOM_VARIANTS : 1;
    for (v = 0; v < nvariants; v++) {
        g_autoptr(GString) why = g_string_new(NULL);
        g_autofree char *name = NULL;

        mem_copy(&img, durable);
        if (v == 1) {
            name = g_strdup("all");
            for (i = 0; i < unflushed->len; i++) {
                mem_apply(&img, &g_array_index(r->rec.recs, Rec,
                          g_array_index(unflushed, size_t, i)), UINT64_MAX);
            }
        } else if (v >= 2 && v < 2 + RANDOM_VARIANTS) {
            g_autoptr(GArray) pick = g_array_copy(unflushed);
            name = g_strdup_printf("subset%d", v - 1);
            for (i = pick->len; i > 1; i--) {
                guint j = g_rand_int_range(rand, 0, i);
                size_t t = g_array_index(pick, size_t, i - 1);
                g_array_index(pick, size_t, i - 1) =
                    g_array_index(pick, size_t, j);
                g_array_index(pick, size_t, j) = t;
            }
            for (i = 0; i < pick->len; i++) {
                if (g_rand_boolean(rand)) {
                    mem_apply(&img, &g_array_index(r->rec.recs, Rec,
                              g_array_index(pick, size_t, i)), UINT64_MAX);
                }
            }
        } else if (v == 2 + RANDOM_VARIANTS) {
            const Rec *lastw = &g_array_index(r->rec.recs, Rec,
                g_array_index(unflushed, size_t, unflushed->len - 1));
            /* Tear at a 512-byte boundary of the disk, inside the write. */
            uint64_t head = ROUND_UP(lastw->offset, SECTOR) - lastw->offset;
            uint64_t sectors = lastw->bytes > head ?
                               (lastw->bytes - head) / SECTOR : 0;
            if (lastw->kind != REC_WRITE || sectors < 1 ||
                (head == 0 && sectors < 2)) {
                continue;
            }
            name = g_strdup("torn");
            for (i = 0; i + 1 < unflushed->len; i++) {
                mem_apply(&img, &g_array_index(r->rec.recs, Rec,
                          g_array_index(unflushed, size_t, i)), UINT64_MAX);
            }
            mem_apply(&img, lastw, head + SECTOR *
                      (uint64_t)g_rand_int_range(rand, head ? 0 : 1,
                                                 sectors));
        } else {
            name = g_strdup("none");
        }
        mem_store(&img, path);
        check_crash_image(r, path, first, last, why);
        cs->variants++;
        if (why->len) {
            fail_variant(r, cs, k, name, &img, why);
        }
    }
    cs->cuts++;
    g_free(img.buf);
}

static void run_workload(gconstpointer data)
{
    const Workload *w = data;
    g_autoptr(GError) err = NULL;
    g_autofree char *base = g_build_filename(ft.dir, "base.qcow2", NULL);
    g_autofree char *work = g_build_filename(ft.dir, "work.qcow2", NULL);
    g_autofree uint8_t *cut_set = NULL;
    MemFile durable = { 0 }, final = { 0 }, actual = { 0 };
    CutStats cs = { 0 };
    GRand *rand = g_rand_new_with_seed(ft.seed ^ g_str_hash(w->name));
    Run r = { .w = w };
    size_t nrec, k, last_flush_end = 0, i;


    /* The starting image, with its data already on disk. */
    r.img = test_qcow2_new(base, w->create_opts, NULL);
    if (w->prepare) {
        w->prepare(r.img);
    }
    read_state(r.img, &r.initial);
    g_assert_cmpint(qguard_image_close(r.img, &err), ==, 0);

    /* Record the workload on a copy, its open included. */
    mem_load(&durable, base);
    mem_store(&durable, work);
    {
        g_autoptr(GString) why = g_string_new(NULL);
        r.bitmaps_before = read_bitmaps(work, why);
        g_assert_cmpstr(why->str, ==, "");
    }
    r.rec.path = work;
    r.rec.recs = g_array_new(FALSE, FALSE, sizeof(Rec));
    r.ops = g_array_new(FALSE, FALSE, sizeof(GuestOp));
    r.rand = g_rand_new_with_seed(0x5eed);
    host_file_set_hook(record_hook, &r.rec);
    g_assert_cmpint(qguard_image_open(&r.img, work, "qcow2", NULL,
                                      QGUARD_OPEN_RDWR, &err), ==, 0);
    w->run(&r);
    {
        /* The close flushes: the last durability point. */
        GuestOp op;
        GuestState st;
        read_state(r.img, &st);
        op_begin(&r, &op, "close");
        g_assert_cmpint(qguard_image_close(r.img, &err), ==, 0);
        op.log_end = r.rec.recs->len;
        op.is_flush = true;
        op.state = st;
        g_array_append_val(r.ops, op);
    }
    host_file_set_hook(NULL, NULL);
    nrec = r.rec.recs->len;
    {
        g_autoptr(GString) why = g_string_new(NULL);
        r.bitmaps_after = read_bitmaps(work, why);
        g_assert_cmpstr(why->str, ==, "");
    }
    if (g_getenv("QGUARD_TEST_TRACE")) {
        static const char *const kinds[] = { "write", "flush", "truncate",
                                             "discard", "allocate" };
        for (i = 0; i < r.ops->len; i++) {
            GuestOp *op = &g_array_index(r.ops, GuestOp, i);
            g_printerr("op %zu %s: records %zu..%zu\n", i, op->what,
                       op->log_start, op->log_end);
        }
        for (i = 0; i < nrec; i++) {
            Rec *rc = &g_array_index(r.rec.recs, Rec, i);
            g_printerr("record %zu: %s %#" PRIx64 " +%#" PRIx64 "\n", i,
                       kinds[rc->kind], rc->offset, rc->bytes);
        }
    }

    /* The recorder saw everything: replaying all of it gives the file. */
    mem_copy(&final, &durable);
    for (i = 0; i < nrec; i++) {
        mem_apply(&final, &g_array_index(r.rec.recs, Rec, i), UINT64_MAX);
    }
    mem_load(&actual, work);
    g_assert_cmpuint(final.len, ==, actual.len);
    g_assert_true(memcmp(final.buf, actual.buf, final.len) == 0);

    /* Which cut points: all of them, or a seeded sample. */
    cut_set = g_malloc0(nrec + 1);
    if (ft.slow || nrec + 1 <= SAMPLED_CUTS) {
        memset(cut_set, 1, nrec + 1);
    } else {
        size_t chosen = 2;
        cut_set[0] = cut_set[nrec] = 1;
        while (chosen < SAMPLED_CUTS) {
            k = g_rand_int_range(rand, 1, nrec);
            if (!cut_set[k]) {
                cut_set[k] = 1;
                chosen++;
            }
        }
    }

    for (k = 0; k <= nrec; k++) {
        if (k > 0) {
            const Rec *prev = &g_array_index(r.rec.recs, Rec, k - 1);
            if (prev->kind == REC_FLUSH) {
                /* Everything up to this flush is now durable. */
                for (i = last_flush_end; i < k; i++) {
                    mem_apply(&durable, &g_array_index(r.rec.recs, Rec, i),
                              UINT64_MAX);
                }
                last_flush_end = k;
            }
        }
        if (cut_set[k]) {
            check_cut(&r, &cs, &durable, last_flush_end, k, rand);
        }
    }

    g_test_message("%s: %zu records, %zu guest operations, %" PRIu64
                   " of %zu cut points checked, %" PRIu64 " crash images, "
                   "seed %u", w->name, nrec, (size_t)r.ops->len, cs.cuts,
                   nrec + 1, cs.variants, ft.seed);
    printf("# powercut %s: %" PRIu64 " cut points (of %zu), %" PRIu64
           " crash images, %" PRIu64 " failed\n", w->name, cs.cuts, nrec + 1,
           cs.variants, cs.failures);
    total_cuts += cs.cuts;
    total_variants += cs.variants;
    total_records += nrec;
    if (cs.failures) {
        g_test_fail_printf("%s: %" PRIu64 " of %" PRIu64 " crash images "
                           "failed (seed %u)", w->name, cs.failures,
                           cs.variants, ft.seed);
    }

    for (i = 0; i < nrec; i++) {
        g_free(g_array_index(r.rec.recs, Rec, i).data);
    }
    for (i = 0; i < r.ops->len; i++) {
        g_free(g_array_index(r.ops, GuestOp, i).state.hashes);
    }
    g_array_free(r.rec.recs, TRUE);
    g_array_free(r.ops, TRUE);
    g_ptr_array_free(r.bitmaps_before, TRUE);
    g_ptr_array_free(r.bitmaps_after, TRUE);
    g_free(r.initial.hashes);
    g_free(durable.buf);
    g_free(final.buf);
    g_free(actual.buf);
    g_rand_free(r.rand);
    g_rand_free(rand);
}

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    fault_test_begin(&ft, &argc, &argv, "powercut", "every cut point");
    for (i = 0; i < G_N_ELEMENTS(workloads); i++) {
        g_autofree char *name = g_strdup_printf("/powercut/%s",
                                                workloads[i].name);
        g_test_add_data_func(name, &workloads[i], run_workload);
    }
    ret = g_test_run();
    printf("# powercut total: %" PRIu64 " cut points, %" PRIu64
           " crash images checked, %" PRIu64 " records\n", total_cuts,
           total_variants, total_records);
    fault_test_end(&ft);
    return ret;
}
