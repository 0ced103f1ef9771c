/* SPDX-License-Identifier: MIT */
/*
 * Several threads on one image, as the NBD export runs it: reads and
 * writes in parallel with each other; and error texts that belong to the
 * request that failed.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * QGUARD_TEST_SEED=N repeats a run.
 */
#include <glib.h>
#include <glib/gstdio.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"
#include "block/host-file.h"

#define IMAGE_SIZE (16 << 20)
#define CLUSTER 512
/* Readers stay below this offset, the writer above it. */
#define WRITE_REGION (12 << 20)
#define READERS 4
#define READS_PER_THREAD 3000
#define WRITES 1500

static guint32 seed;

typedef struct Shared {
    QGuardImage *img;
    const uint8_t *model;       /* below WRITE_REGION; never changes */
    guint32 seed;
    gint failures;
    gint reads_done;
} Shared;

/*
 * A backing file with data in its first half; on top, plain data, zero
 * clusters and compressed clusters, so that a read meets every kind of
 * cluster and, with a tiny L2 cache, misses on most of them.
 */
static QGuardImage *build_image(uint8_t *model)
{
    g_autofree char *base = tpath("base.qcow2");
    g_autofree char *top = tpath("top.qcow2");
    g_autofree char *top_opts = NULL;
    g_autoptr(GError) err = NULL;
    GRand *rand = g_rand_new_with_seed(seed);
    uint8_t buf[4 * CLUSTER];
    QGuardImage *img;
    uint64_t off;
    int i;

    test_image_new(base, "qcow2", "size=16M,cluster_size=512");
    img = test_image_open(base, "qcow2", "l2-cache-size=64k",
                          QGUARD_OPEN_RDWR);
    fill_pattern(model, IMAGE_SIZE / 2, 0, 1);
    g_assert_cmpint(qguard_image_pwrite(img, 0, IMAGE_SIZE / 2, model, 0,
                                        &err), ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);

    top_opts = g_strdup_printf("size=16M,cluster_size=512,backing_file=%s,"
                               "backing_fmt=qcow2", base);
    test_image_new(top, "qcow2", top_opts);
    img = test_image_open(top, "qcow2",
                          "l2-cache-size=4096,refcount-cache-size=4096",
                          QGUARD_OPEN_RDWR);
    for (i = 0; i < 4000; i++) {
        int kind = g_rand_int_range(rand, 0, 4);
        uint64_t len = kind == 3 ? CLUSTER
                                 : CLUSTER * g_rand_int_range(rand, 1, 5);

        off = (uint64_t)g_rand_int_range(rand, 0, (WRITE_REGION - len) /
                                         CLUSTER) * CLUSTER;
        if (kind == 0) {
            g_assert_cmpint(qguard_image_pwrite_zeroes(img, off, len, 0, &err),
                            ==, 0);
            memset(model + off, 0, len);
        } else if (kind == 3) {
            QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);

            /* Compressed writes need an unallocated cluster. */
            g_assert_cmpint(qguard_image_block_status(img, off, len, &st,
                                                      &err), ==, 0);
            if (st.depth == 0 && (st.flags & QGUARD_BLOCK_ALLOCATED)) {
                continue;
            }
            memset(buf, 0x40 + (i & 0xf), len);
            g_assert_cmpint(qguard_image_pwrite_compressed(img, off, len, buf,
                                                           &err), ==, 0);
            memcpy(model + off, buf, len);
        } else {
            fill_pattern(buf, len, off, (uint8_t)i);
            g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err),
                            ==, 0);
            memcpy(model + off, buf, len);
        }
        g_assert_no_error(err);
    }
    g_rand_free(rand);
    return img;
}

static gpointer reader(gpointer opaque)
{
    Shared *sh = opaque;
    GRand *rand = g_rand_new_with_seed(sh->seed);
    g_autofree uint8_t *buf = g_malloc(16 * CLUSTER);
    int i;

    for (i = 0; i < READS_PER_THREAD; i++) {
        g_autoptr(GError) err = NULL;
        uint64_t len = g_rand_int_range(rand, 1, 16 * CLUSTER);
        uint64_t off = g_rand_int_range(rand, 0, WRITE_REGION - len);

        if (qguard_image_pread(sh->img, off, len, buf, &err) < 0 ||
            memcmp(buf, sh->model + off, len)) {
            g_printerr("read [%" PRIu64 ", +%" PRIu64 ") %s\n", off, len,
                       err ? err->message : "returned wrong data");
            g_atomic_int_inc(&sh->failures);
            break;
        }
        g_atomic_int_inc(&sh->reads_done);
    }
    g_rand_free(rand);
    return sh;
}

/*
 * Readers in parallel with a writer: every read returns the model's bytes,
 * while the writer's allocations leave dirty L2 tables and refcount blocks
 * in the caches that the readers' misses then evict and write back.
 */
static void test_parallel_reads_beside_writes(void)
{
    g_autofree uint8_t *model = g_malloc0(IMAGE_SIZE);
    g_autofree uint8_t *buf = g_malloc(IMAGE_SIZE - WRITE_REGION);
    g_autoptr(GError) err = NULL;
    GThread *threads[READERS];
    GRand *rand = g_rand_new_with_seed(seed ^ 0x5eed);
    Shared sh = { 0 };
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    int i;

    sh.img = build_image(model);
    sh.model = model;
    for (i = 0; i < READERS; i++) {
        Shared *mine = g_memdup2(&sh, sizeof(sh));

        mine->seed = seed + i;
        threads[i] = g_thread_new("reader", reader, mine);
    }
    for (i = 0; i < WRITES; i++) {
        uint64_t len = CLUSTER * g_rand_int_range(rand, 1, 9);
        uint64_t off = WRITE_REGION + (uint64_t)g_rand_int_range(rand, 0,
                       (IMAGE_SIZE - WRITE_REGION - len) / CLUSTER) * CLUSTER;

        fill_pattern(model + off, len, off, (uint8_t)(i + 3));
        g_assert_cmpint(qguard_image_pwrite(sh.img, off, len, model + off, 0,
                                            &err), ==, 0);
        if (i % 100 == 99) {
            g_assert_cmpint(qguard_image_flush(sh.img, &err), ==, 0);
        }
    }
    for (i = 0; i < READERS; i++) {
        Shared *mine = g_thread_join(threads[i]);

        g_assert_cmpint(mine->failures, ==, 0);
        g_assert_cmpint(mine->reads_done, ==, READS_PER_THREAD);
        g_free(mine);
    }
    g_assert_cmpint(qguard_image_pread(sh.img, WRITE_REGION,
                                       IMAGE_SIZE - WRITE_REGION, buf, &err),
                    ==, 0);
    g_assert_true(memcmp(buf, model + WRITE_REGION,
                         IMAGE_SIZE - WRITE_REGION) == 0);
    g_assert_cmpint(qguard_image_check(sh.img, 0, &res, NULL, NULL, &err),
                    ==, 0);
    g_assert_cmpint(res.corruptions + res.leaks + res.check_errors, ==, 0);
    g_assert_cmpint(qguard_image_close(sh.img, &err), ==, 0);
    g_rand_free(rand);
}

/* ---- Writes in parallel ------------------------------------------------- */

#define PW_SIZE (2 << 20)
#define PW_BLOCK 4096
#define PW_WRITERS 4
#define PW_WRITES 1500

typedef struct ParallelWrites {
    const char *name;
    const char *create_opts;    /* size added */
    const char *runtime_opts;
    bool backing;               /* half of the disk in a backing file */
    bool snapshot;              /* a snapshot of written data before the race */
    bool bitmap;                /* an enabled dirty bitmap, a bit per block */
} ParallelWrites;

typedef struct Writer {
    QGuardImage *img;
    int id;
    guint32 seed;
    uint32_t *version;          /* per block, only this writer's blocks */
    gint failures;
} Writer;

/* Every byte of a block says which block and which write it holds. */
static void fill_block(uint8_t *buf, uint64_t block, uint32_t version)
{
    fill_pattern(buf, PW_BLOCK, block * PW_BLOCK, (uint8_t)(version * 37 + 5));
}

/*
 * Writer @id owns the blocks b with b % PW_WRITERS == id, so that every
 * cluster, L2 table and refcount block is written by all writers at once
 * (with 64 KiB clusters, sixteen blocks share a cluster), and the final
 * content of every block is known.
 */
static gpointer pw_writer(gpointer opaque)
{
    Writer *w = opaque;
    GRand *rand = g_rand_new_with_seed(w->seed);
    uint8_t buf[PW_BLOCK];
    uint64_t nblocks = PW_SIZE / PW_BLOCK;
    int i;

    for (i = 0; i < PW_WRITES; i++) {
        g_autoptr(GError) err = NULL;
        uint64_t b = (uint64_t)g_rand_int_range(rand, 0,
                                                nblocks / PW_WRITERS) *
                     PW_WRITERS + w->id;
        unsigned flags = i % 97 == 0 ? QGUARD_WRITE_FUA : 0;

        fill_block(buf, b, w->version[b] + 1);
        if (qguard_image_pwrite(w->img, b * PW_BLOCK, PW_BLOCK, buf, flags,
                                &err) < 0) {
            g_printerr("writer %d: block %" PRIu64 ": %s\n", w->id, b,
                       err->message);
            g_atomic_int_inc(&w->failures);
            break;
        }
        w->version[b]++;
        if (w->id == 0 && i % 250 == 249 &&
            qguard_image_flush(w->img, &err) < 0) {
            g_atomic_int_inc(&w->failures);
            break;
        }
    }
    g_rand_free(rand);
    return w;
}

/*
 * Data writes linger, so that a second write to a cluster whose allocation
 * is in flight arrives while the first one's data is still on its way.
 */
static int slow_data_writes(void *opaque, HostFile *file, HostFileOp op,
                            uint64_t offset, uint64_t bytes,
                            const struct iovec *iov, int iovcnt)
{
    (void)opaque;
    (void)file;
    (void)offset;
    (void)iov;
    (void)iovcnt;
    if (op == HOST_FILE_WRITE && bytes >= PW_BLOCK) {
        g_usleep(1000);
    }
    return 0;
}

/*
 * Run @fn in PW_WRITERS threads, one per writers[i], with data writes
 * slowed down so that they overlap; none may have failed.
 */
static void run_writers(Writer *writers, GThreadFunc fn)
{
    GThread *threads[PW_WRITERS];
    int i;

    host_file_set_hook(slow_data_writes, NULL);
    for (i = 0; i < PW_WRITERS; i++) {
        threads[i] = g_thread_new("writer", fn, &writers[i]);
    }
    for (i = 0; i < PW_WRITERS; i++) {
        g_thread_join(threads[i]);
    }
    host_file_set_hook(NULL, NULL);
    for (i = 0; i < PW_WRITERS; i++) {
        g_assert_cmpint(writers[i].failures, ==, 0);
    }
}

/*
 * Exactly the written blocks are dirty: writers that set bits of the same
 * bitmap word at once must not lose each other's.
 */
static void check_dirty(QGuardImage *img, const ParallelWrites *pw,
                        const uint32_t *version)
{
    g_autoptr(GError) err = NULL;
    uint64_t b, pnum;
    bool dirty;

    if (!pw->bitmap) {
        return;
    }
    for (b = 0; b < PW_SIZE / PW_BLOCK; b++) {
        g_assert_cmpint(qguard_bitmap_status(img, "b", b * PW_BLOCK, PW_BLOCK,
                                             &dirty, &pnum, &err), ==, 0);
        if (dirty != (version[b] != 0)) {
            g_error("%s: block %" PRIu64 " (version %u) is %s in the bitmap "
                    "(seed %u)", pw->name, b, version[b],
                    dirty ? "dirty" : "clean", seed);
        }
    }
}

/*
 * Four writers at once on one image: allocating writes into the same
 * clusters, L2 tables and refcount blocks, copy-on-write from a backing
 * file or from clusters a snapshot shares, with caches of a few tables so
 * that write-back and eviction run between them.  Every block must hold
 * the last write of its owner, and the image must check clean.
 */
static void test_parallel_writes(gconstpointer data)
{
    const ParallelWrites *pw = data;
    g_autofree char *path = tpath("pw.qcow2");
    g_autofree char *base = tpath("pw-base.qcow2");
    g_autofree char *opts = NULL;
    g_autofree uint8_t *image = g_malloc(PW_SIZE);
    g_autofree uint8_t *backing = g_malloc0(PW_SIZE);
    g_autofree uint32_t *version = g_new0(uint32_t, PW_SIZE / PW_BLOCK);
    g_autoptr(GError) err = NULL;
    Writer writers[PW_WRITERS];
    uint8_t want[PW_BLOCK];
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    uint64_t b;
    int i;

    unlink(path);
    unlink(base);
    if (pw->backing) {
        test_image_new(base, "qcow2", "size=2M,cluster_size=65536");
        img = test_image_open(base, "qcow2", "",
                          QGUARD_OPEN_RDWR);
        fill_pattern(backing, PW_SIZE / 2, 0, 0x71);
        g_assert_cmpint(qguard_image_pwrite(img, 0, PW_SIZE / 2, backing, 0,
                                            &err), ==, 0);
        g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
        opts = g_strdup_printf("size=2M,%s,backing_file=%s,backing_fmt=qcow2",
                               pw->create_opts, base);
    } else {
        opts = g_strdup_printf("size=2M,%s", pw->create_opts);
    }
    test_image_new(path, "qcow2", opts);
    img = test_image_open(path, "qcow2", pw->runtime_opts,
                          QGUARD_OPEN_RDWR);
    if (pw->snapshot) {
        /* Shared clusters and L2 tables: the writes below copy them. */
        fill_pattern(backing, PW_SIZE, 0, 0x33);
        g_assert_cmpint(qguard_image_pwrite(img, 0, PW_SIZE, backing, 0,
                                            &err), ==, 0);
        g_assert_cmpint(qguard_snapshot_create(img, "s1", &err), ==, 0);
    }
    if (pw->bitmap) {
        g_assert_cmpint(qguard_bitmap_add(img, "b", PW_BLOCK, false, &err),
                        ==, 0);
    }
    for (i = 0; i < PW_WRITERS; i++) {
        writers[i] = (Writer){ .img = img, .id = i, .seed = seed + i * 7919,
                               .version = version };
    }
    run_writers(writers, pw_writer);
    g_assert_cmpint(qguard_image_pread(img, 0, PW_SIZE, image, &err), ==, 0);
    for (b = 0; b < PW_SIZE / PW_BLOCK; b++) {
        if (version[b]) {
            fill_block(want, b, version[b]);
        } else {
            memcpy(want, backing + b * PW_BLOCK, PW_BLOCK);
        }
        if (memcmp(image + b * PW_BLOCK, want, PW_BLOCK)) {
            g_error("%s: block %" PRIu64 " (version %u) holds other data "
                    "(seed %u)", pw->name, b, version[b], seed);
        }
    }
    check_dirty(img, pw, version);
    g_assert_cmpint(qguard_image_check(img, 0, &res, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(res.corruptions + res.leaks + res.check_errors, ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    /* And after a reopen, from the disk. */
    img = test_image_open(path, "qcow2", "",
                          QGUARD_OPEN_RDWR);
    g_assert_cmpint(qguard_image_pread(img, 0, PW_SIZE, backing, &err), ==, 0);
    g_assert_true(memcmp(backing, image, PW_SIZE) == 0);
    check_dirty(img, pw, version);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

static gpointer same_cluster_writer(gpointer opaque)
{
    Writer *w = opaque;
    uint8_t buf[PW_BLOCK];
    uint64_t c;

    for (c = 0; c < PW_SIZE / 65536; c++) {
        g_autoptr(GError) err = NULL;
        uint64_t b = c * (65536 / PW_BLOCK) + w->id;

        fill_block(buf, b, 1);
        if (qguard_image_pwrite(w->img, b * PW_BLOCK, PW_BLOCK, buf, 0,
                                &err) < 0) {
            g_atomic_int_inc(&w->failures);
            break;
        }
    }
    return w;
}

/*
 * The allocation race itself: every writer writes its own 4 KiB of the
 * same fresh 64 KiB clusters, in the same order, while data writes linger.
 * Without the in-flight registry two of them allocate the same cluster and
 * the later L2 update drops the other's data (about half the blocks).
 */
static void test_parallel_writes_same_cluster(void)
{
    g_autofree char *path = tpath("same.qcow2");
    g_autofree uint8_t *image = g_malloc(PW_SIZE);
    g_autoptr(GError) err = NULL;
    Writer writers[PW_WRITERS];
    uint8_t want[PW_BLOCK];
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    uint64_t b;
    int i;

    unlink(path);
    test_image_new(path, "qcow2", "size=2M,cluster_size=65536");
    img = test_image_open(path, "qcow2", "",
                          QGUARD_OPEN_RDWR);
    for (i = 0; i < PW_WRITERS; i++) {
        writers[i] = (Writer){ .img = img, .id = i };
    }
    run_writers(writers, same_cluster_writer);
    g_assert_cmpint(qguard_image_pread(img, 0, PW_SIZE, image, &err), ==, 0);
    for (b = 0; b < PW_SIZE / PW_BLOCK; b++) {
        if (b % (65536 / PW_BLOCK) < PW_WRITERS) {
            fill_block(want, b, 1);
        } else {
            memset(want, 0, PW_BLOCK);
        }
        if (memcmp(image + b * PW_BLOCK, want, PW_BLOCK)) {
            g_error("block %" PRIu64 " lost its write", b);
        }
    }
    g_assert_cmpint(qguard_image_check(img, 0, &res, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(res.corruptions + res.leaks + res.check_errors, ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

static const ParallelWrites parallel_writes[] = {
    { .name = "512-backing", .create_opts = "cluster_size=512",
      .runtime_opts = "l2-cache-size=4096,refcount-cache-size=4096",
      .backing = true },
    { .name = "64k-snapshot", .create_opts = "cluster_size=65536",
      .runtime_opts = "l2-cache-size=65536", .snapshot = true },
    { .name = "64k-extended-l2",
      .create_opts = "cluster_size=65536,extended_l2=on", .runtime_opts = "",
      .backing = true },
    { .name = "4k-lazy-refcounts",
      .create_opts = "cluster_size=4096,lazy_refcounts=on",
      .runtime_opts = "l2-cache-size=8192,refcount-cache-size=8192" },
    { .name = "64k-dirty-bitmap", .create_opts = "cluster_size=65536",
      .runtime_opts = "", .bitmap = true },
};

/* ---- A freed cluster and a read on its way to it ------------------------ */

#define FR_CLUSTER 65536

typedef struct FreedRead {
    QGuardImage *img;
    uint64_t host;              /* the cluster the read is held at */
    GMutex lock;
    GCond cond;
    bool arrived, go;
    uint8_t *buf;
    int ret;
} FreedRead;

/* The read of @host waits there until the test lets it go. */
static int hold_read(void *opaque, HostFile *file, HostFileOp op,
                     uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int iovcnt)
{
    FreedRead *fr = opaque;

    (void)file;
    (void)bytes;
    (void)iov;
    (void)iovcnt;
    if (op == HOST_FILE_READ && offset == fr->host) {
        g_mutex_lock(&fr->lock);
        fr->arrived = true;
        g_cond_broadcast(&fr->cond);
        while (!fr->go) {
            g_cond_wait(&fr->cond, &fr->lock);
        }
        g_mutex_unlock(&fr->lock);
    }
    return 0;
}

static gpointer freed_reader(gpointer opaque)
{
    FreedRead *fr = opaque;
    g_autoptr(GError) err = NULL;

    fr->ret = qguard_image_pread(fr->img, 0, FR_CLUSTER, fr->buf, &err);
    return NULL;
}

static uint64_t be64_at(int fd, uint64_t offset)
{
    uint64_t v;

    g_assert_cmpint(pread(fd, &v, 8, offset), ==, 8);
    return GUINT64_FROM_BE(v);
}

/*
 * Guest cluster 0's L2 entry loses its COPIED flag (refcount 1: "ERROR
 * OFLAG_COPIED data cluster" in a check, which QEMU handles by writing
 * elsewhere and freeing the cluster).  Returns its host offset.
 */
static uint64_t clear_copied_flag(const char *path)
{
    int fd = open(path, O_RDWR);
    uint64_t l1, l2, entry;

    g_assert_cmpint(fd, >=, 0);
    l1 = be64_at(fd, 40);
    l2 = be64_at(fd, l1) & 0x00fffffffffffe00ULL;
    entry = be64_at(fd, l2);
    g_assert_true(entry & (1ULL << 63));
    entry = GUINT64_TO_BE(entry & ~(1ULL << 63));
    g_assert_cmpint(pwrite(fd, &entry, 8, l2), ==, 8);
    g_assert_cmpint(close(fd), ==, 0);
    return GUINT64_FROM_BE(entry) & 0x00fffffffffffe00ULL;
}

/*
 * A read looks its cluster up and reads it outside the metadata mutex.  A
 * write beside it may move the guest cluster elsewhere and free the old
 * one; a FUA write's flush must not make that cluster reusable while the
 * read is still on its way, or a third write's data ends up in the read's
 * buffer.  The read must return the old or the new contents, nothing else.
 */
static void test_freed_cluster_not_reused_under_read(void)
{
    g_autofree char *path = tpath("freed.qcow2");
    g_autofree uint8_t *old = g_malloc(FR_CLUSTER);
    g_autofree uint8_t *new = g_malloc(FR_CLUSTER);
    g_autofree uint8_t *other = g_malloc(FR_CLUSTER);
    g_autoptr(GError) err = NULL;
    FreedRead fr = { .buf = g_malloc(FR_CLUSTER) };
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    GThread *reader;
    GStatBuf st;
    goffset size;

    unlink(path);
    test_image_new(path, "qcow2", "size=1M,cluster_size=65536");
    img = test_image_open(path, "qcow2", "", QGUARD_OPEN_RDWR);
    fill_pattern(old, FR_CLUSTER, 0, 1);
    g_assert_cmpint(qguard_image_pwrite(img, 0, FR_CLUSTER, old, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    fr.host = clear_copied_flag(path);

    fr.img = img = test_image_open(path, "qcow2", "", QGUARD_OPEN_RDWR);
    g_mutex_init(&fr.lock);
    g_cond_init(&fr.cond);
    host_file_set_hook(hold_read, &fr);
    reader = g_thread_new("reader", freed_reader, &fr);
    g_mutex_lock(&fr.lock);
    while (!fr.arrived) {
        g_cond_wait(&fr.cond, &fr.lock);
    }
    g_mutex_unlock(&fr.lock);

    /* Moves guest cluster 0 and frees fr.host. */
    fill_pattern(new, FR_CLUSTER, 0, 2);
    g_assert_cmpint(qguard_image_pwrite(img, 0, FR_CLUSTER, new, 0, &err),
                    ==, 0);
    /* A flush beside the read. */
    g_assert_cmpint(qguard_image_pwrite(img, FR_CLUSTER, 512, new,
                                        QGUARD_WRITE_FUA, &err), ==, 0);
    /* Would take the lowest free cluster: fr.host, were it released. */
    fill_pattern(other, FR_CLUSTER, 0, 3);
    g_assert_cmpint(qguard_image_pwrite(img, 2 * FR_CLUSTER, FR_CLUSTER,
                                        other, 0, &err), ==, 0);

    g_mutex_lock(&fr.lock);
    fr.go = true;
    g_cond_broadcast(&fr.cond);
    g_mutex_unlock(&fr.lock);
    g_thread_join(reader);
    host_file_set_hook(NULL, NULL);
    g_assert_cmpint(fr.ret, ==, 0);
    g_assert_true(memcmp(fr.buf, old, FR_CLUSTER) == 0 ||
                  memcmp(fr.buf, new, FR_CLUSTER) == 0);

    /* Released by a flush that runs alone, and reused: the file stays. */
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    g_assert_cmpint(g_stat(path, &st), ==, 0);
    size = st.st_size;
    g_assert_cmpint(qguard_image_pwrite(img, 3 * FR_CLUSTER, FR_CLUSTER,
                                        other, 0, &err), ==, 0);
    g_assert_cmpint(g_stat(path, &st), ==, 0);
    g_assert_cmpint(st.st_size, ==, size);
    g_assert_cmpint(qguard_image_pread(img, 0, FR_CLUSTER, fr.buf, &err),
                    ==, 0);
    g_assert_true(memcmp(fr.buf, new, FR_CLUSTER) == 0);
    g_assert_cmpint(qguard_image_check(img, 0, &res, NULL, NULL, &err), ==, 0);
    g_assert_cmpint(res.corruptions + res.leaks + res.check_errors, ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    g_cond_clear(&fr.cond);
    g_mutex_clear(&fr.lock);
    g_free(fr.buf);
}

/* A failure's text must not be an earlier, unrelated failure's. */
static void test_error_text_is_fresh(void)
{
    g_autofree char *path = tpath("err.qcow2");
    g_autoptr(GError) err = NULL;
    uint8_t buf[CLUSTER] = { 1 };
    QGuardImage *img;

    test_image_new(path, "qcow2", "size=1M,cluster_size=512");
    img = test_image_open(path, "qcow2", "overlap-check=cached",
                          QGUARD_OPEN_RDWR);
    g_assert_cmpint(qguard_image_pwrite(img, 0, CLUSTER, buf, 0, &err), ==, 0);
    g_assert_cmpint(qguard_image_pwrite_compressed(img, 0, CLUSTER, buf, &err),
                    ==, -EIO);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err->message, "Compression"));
    g_clear_error(&err);
    /* Unaligned: refused without a text of its own. */
    g_assert_cmpint(qguard_image_pwrite_compressed(img, 1, CLUSTER, buf, &err),
                    ==, -EINVAL);
    g_assert_nonnull(err);
    g_assert_cmpstr(err->message, ==, g_strerror(EINVAL));
    g_clear_error(&err);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

int main(int argc, char **argv)
{
    int ret;
    size_t i;

    g_test_init(&argc, &argv, NULL);
    seed = test_seed();
    test_scratch_init("qguard-conc-XXXXXX");
    g_test_add_func("/concurrency/parallel-reads-beside-writes",
                    test_parallel_reads_beside_writes);
    g_test_add_func("/concurrency/error-text-is-fresh",
                    test_error_text_is_fresh);
    g_test_add_func("/concurrency/freed-cluster-not-reused-under-read",
                    test_freed_cluster_not_reused_under_read);
    g_test_add_func("/concurrency/parallel-writes/same-cluster",
                    test_parallel_writes_same_cluster);
    for (i = 0; i < G_N_ELEMENTS(parallel_writes); i++) {
        g_autofree char *name = g_strdup_printf("/concurrency/parallel-writes/"
                                                "%s", parallel_writes[i].name);
        g_test_add_data_func(name, &parallel_writes[i], test_parallel_writes);
    }
    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
