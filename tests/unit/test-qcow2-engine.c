/* SPDX-License-Identifier: MIT */
/*
 * Engine tests: data against an in-memory model, write ordering, refcount
 * structure growth, overlap refusal, and the two overlap algorithms agreeing.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Random tests print their seed; QGUARD_TEST_SEED=N repeats a run.  For
 * debugging, QGUARD_TEST_TRACE=1 checks the image after every step of the
 * model tests and QGUARD_TEST_STOP=K closes the image before step K and
 * exits, leaving it in the test directory to be examined with qemu-img.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "block/block_int.h"
#include "block/qcow2.h"
#include "test-lib.h"

static guint32 seed;

static QGuardImage *create_and_open(const char *name, const char *create_opts,
                                    const char *runtime_opts)
{
    g_autofree char *path = tpath("%s", name);

    return test_qcow2_new(path, create_opts, runtime_opts);
}

static QGuardImage *reopen(QGuardImage *img, const char *runtime_opts)
{
    g_autofree char *path = g_strdup(qguard_image_filename(img));

    test_image_close(img);
    return test_image_open(path, "qcow2", runtime_opts, QGUARD_OPEN_RDWR);
}

static void capture_message(void *opaque, const char *line)
{
    g_string_append_printf(opaque, "%s\n", line);
}

static void report_to_test_log(void *opaque, const char *line)
{
    GString *log = opaque;

    g_string_append_printf(log, "%s\n", line);
}

/* The image passes its own check with nothing to report. */
static void assert_check_clean(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GString) log = g_string_new(NULL);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    int ret;

    ret = qguard_image_check(img, 0, &res, report_to_test_log, log, &err);
    g_assert_no_error(err);
    g_assert_cmpint(ret, ==, 0);
    if (res.corruptions || res.leaks || res.check_errors) {
        g_test_message("check output:\n%s", log->str);
    }
    g_assert_cmpint(res.corruptions, ==, 0);
    g_assert_cmpint(res.leaks, ==, 0);
    g_assert_cmpint(res.check_errors, ==, 0);
}

/* Every byte of [offset, offset + len) reads back as @byte. */
static void assert_reads_byte(QGuardImage *img, uint64_t offset, uint64_t len,
                              uint8_t byte)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);
    g_autofree uint8_t *want = g_malloc(len);

    memset(want, byte, len);
    g_assert_cmpint(qguard_image_pread(img, offset, len, buf, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_cmpmem(buf, len, want, len);
}

/* ---- Sized structs of the public API ------------------------------------ */

/*
 * A caller-allocated struct's size bounds what the library writes: a
 * caller built against a longer struct keeps the bytes the library does
 * not know, and a size below the first version's is refused.
 */
static void test_api_sized_structs(void)
{
    struct {
        QGuardCheckResult r;
        uint8_t newer[16];
    } big;
    QGuardOverlapStats st = QGUARD_SIZED(QGuardOverlapStats);
    QGuardBlockStatus bs = { .size = offsetof(QGuardBlockStatus, flags) };
    QGuardImage *img = create_and_open("sized.qcow2", "size=1M", NULL);
    g_autoptr(GError) err = NULL;
    size_t i;

    memset(&big, 0xa5, sizeof(big));
    big.r.size = sizeof(big);
    g_assert_cmpint(qguard_image_check(img, 0, &big.r, NULL, NULL, &err),
                    ==, 0);
    g_assert_cmpuint(big.r.size, ==, sizeof(big));
    g_assert_cmpint(big.r.corruptions, ==, 0);
    g_assert_cmpuint(big.r.total_clusters, ==, 16);
    for (i = 0; i < sizeof(big.newer); i++) {
        g_assert_cmphex(big.newer[i], ==, 0xa5);
    }

    g_assert_cmpint(qguard_image_block_status(img, 0, 4096, &bs, &err), ==,
                    -EINVAL);
    g_assert_error(err, QGUARD_ERROR, EINVAL);
    g_clear_error(&err);

    g_assert_cmpint(qguard_image_overlap_stats(img, &st), ==, 0);
    g_assert_cmpstr(st.algorithm, ==, "windowed");
    st.size = 1;
    g_assert_cmpint(qguard_image_overlap_stats(img, &st), ==, -EINVAL);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

/* ---- Data against a model ------------------------------------------------ */

typedef struct ModelRun {
    const char *create_opts;
    const char *runtime_opts;
    uint64_t size;
    int ops;
    uint64_t max_len;
} ModelRun;

static void verify_against_model(QGuardImage *img, const uint8_t *model,
                                 uint64_t size)
{
    g_autoptr(GError) err = NULL;
    uint64_t chunk = 1 << 20, off;
    g_autofree uint8_t *buf = g_malloc(chunk);

    for (off = 0; off < size; off += chunk) {
        uint64_t len = MIN(chunk, size - off);
        g_assert_cmpint(qguard_image_pread(img, off, len, buf, &err), ==, 0);
        if (memcmp(buf, model + off, len)) {
            uint64_t i = 0;
            while (buf[i] == model[off + i]) {
                i++;
            }
            g_error("data differs at offset %" PRIu64 " (seed %u)", off + i,
                    seed);
        }
    }
}

static void run_model(gconstpointer data)
{
    const ModelRun *run = data;
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *model = g_malloc0(run->size);
    g_autofree uint8_t *buf = g_malloc(run->max_len);
    GRand *rand = g_rand_new_with_seed(seed);
    QGuardImage *img;
    int i;

    img = create_and_open("model.qcow2", run->create_opts, run->runtime_opts);
    for (i = 0; i < run->ops; i++) {
        uint64_t len = 1 + g_rand_int_range(rand, 0, run->max_len);
        uint64_t off = (uint64_t)g_rand_double(rand) * (run->size - len);
        int op = g_rand_int_range(rand, 0, 10);

        if (g_rand_boolean(rand)) {
            /* Aligned requests exercise whole-cluster paths. */
            off &= ~(uint64_t)511;
            len = MAX(512, len & ~(uint64_t)511);
            len = MIN(len, run->size - off);
        }
        if (op < 6) {
            fill_pattern(buf, len, off, i);
            g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err),
                            ==, 0);
            memcpy(model + off, buf, len);
        } else if (op < 8) {
            unsigned flags = g_rand_boolean(rand) ? QGUARD_ZERO_MAY_UNMAP : 0;
            g_assert_cmpint(qguard_image_pwrite_zeroes(img, off, len, flags,
                                                       &err), ==, 0);
            memset(model + off, 0, len);
        } else if (op < 9) {
            /* Discard: whole clusters read as zeros afterwards (no backing). */
            g_assert_cmpint(qguard_image_discard(img, off, len, &err), ==, 0);
            g_assert_cmpint(qguard_image_pread(img, off, len, buf, &err), ==,
                            0);
            memcpy(model + off, buf, len);
        } else {
            g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
        }
        g_assert_no_error(err);
        if (g_getenv("QGUARD_TEST_TRACE")) {
            g_printerr("op %d kind %d off %" PRIu64 " len %" PRIu64 "\n", i,
                       op, off, len);
            verify_against_model(img, model, run->size);
        }
    }
    verify_against_model(img, model, run->size);
    assert_check_clean(img);
    img = reopen(img, run->runtime_opts);
    verify_against_model(img, model, run->size);
    assert_check_clean(img);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    g_rand_free(rand);
}

/* Discard may keep data it cannot drop, but never invent data. */
static void test_discard_reads_zero_or_old(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("discard.qcow2", "size=4M", NULL);
    uint8_t buf[65536], rb[65536];

    memset(buf, 0x5a, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_discard(img, 0, sizeof(buf), &err), ==, 0);
    g_assert_cmpint(qguard_image_pread(img, 0, sizeof(rb), rb, &err), ==, 0);
    memset(buf, 0, sizeof(buf));
    g_assert_cmpmem(rb, sizeof(rb), buf, sizeof(buf));
    assert_check_clean(img);
    qguard_image_close(img, NULL);
}

/* Compressed clusters read back and keep refcounts exact, at any width. */
static void compressed_round_trip(const char *create_opts)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("compressed.qcow2", create_opts, NULL);
    uint32_t cs = qguard_image_cluster_size(img);
    uint64_t size = qguard_image_size(img), off;
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *buf = g_malloc(size);
    GRand *rand = g_rand_new_with_seed(seed);

    for (off = 0; off < size; off += cs) {
        uint64_t len = MIN((uint64_t)cs, size - off), i;
        int kind = g_rand_int_range(rand, 0, 3);
        for (i = 0; i < len; i++) {
            model[off + i] = kind == 0 ? 0 : kind == 1 ? (i / 64) & 0xff
                                                        : g_rand_int(rand);
        }
        g_assert_cmpint(qguard_image_pwrite_compressed(img, off, len,
                                                       model + off, &err),
                        ==, 0);
    }
    /* Overwriting compressed clusters turns them into normal ones. */
    memset(model + cs / 2, 0x99, cs);
    g_assert_cmpint(qguard_image_pwrite(img, cs / 2, cs, model + cs / 2, 0,
                                        &err), ==, 0);
    g_assert_cmpint(qguard_image_pwrite_compressed(img, 0, cs, model, &err),
                    ==, -EIO);
    g_clear_error(&err);
    assert_check_clean(img);
    img = reopen(img, NULL);
    g_assert_cmpint(qguard_image_pread(img, 0, size, buf, &err), ==, 0);
    g_assert_cmpmem(buf, size, model, size);
    assert_check_clean(img);
    g_rand_free(rand);
    qguard_image_close(img, NULL);
}

static void test_compressed_64k(void)
{
    compressed_round_trip("size=4M");
}

static void test_compressed_512_refcount_1(void)
{
    compressed_round_trip("size=1M,cluster_size=512,refcount_bits=1");
}

static void test_compressed_2m_unaligned_size(void)
{
    compressed_round_trip("size=9000000,cluster_size=2M");
}

/*
 * Compressed data is packed after the last compressed bytes, in the same
 * host cluster.  When that cluster is freed and comes back as a data
 * cluster, the next compressed write must go elsewhere: QEMU 7.2 packs it
 * there, over the guest data, and the data cluster ends with refcount 2.
 */
static void test_compressed_after_its_cluster_is_reused(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("compressed-reuse.qcow2", "size=4M",
                                       NULL);
    uint64_t cs = qguard_image_cluster_size(img);
    g_autofree uint8_t *buf = g_malloc(cs);

    memset(buf, 0x11, cs);
    g_assert_cmpint(qguard_image_pwrite_compressed(img, 13 * cs, cs, buf,
                                                   &err), ==, 0);
    /* the compressed cluster's host cluster drops to refcount 0 */
    memset(buf, 0x22, cs);
    g_assert_cmpint(qguard_image_pwrite(img, 13 * cs, cs, buf, 0, &err), ==,
                    0);
    /* once the tables no longer name it, it is free for the next write */
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    memset(buf, 0x33, cs);
    g_assert_cmpint(qguard_image_pwrite(img, 2 * cs, cs, buf, 0, &err), ==,
                    0);
    memset(buf, 0x44, cs);
    g_assert_cmpint(qguard_image_pwrite_compressed(img, 32 * cs, cs, buf,
                                                   &err), ==, 0);
    g_assert_no_error(err);
    assert_reads_byte(img, 2 * cs, cs, 0x33);
    assert_reads_byte(img, 13 * cs, cs, 0x22);
    assert_reads_byte(img, 32 * cs, cs, 0x44);
    assert_check_clean(img);
    img = reopen(img, NULL);
    assert_reads_byte(img, 2 * cs, cs, 0x33);
    assert_check_clean(img);
    qguard_image_close(img, NULL);
}

/* ---- Snapshots against a model ------------------------------------------ */

typedef struct SnapModel {
    char *name;
    uint8_t *data;
    uint64_t size;
} SnapModel;

/*
 * Random writes, zero writes, discards and snapshot create/apply/delete;
 * after every step the active data matches the model and check is clean;
 * at the end every snapshot, applied in turn, holds what it held when
 * created.
 */
static void snapshot_model(const char *create_opts, const char *runtime)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("snap.qcow2", create_opts, runtime);
    uint64_t size = qguard_image_size(img);
    g_autofree uint8_t *model = g_malloc0(size);
    g_autofree uint8_t *buf = g_malloc(size);
    GPtrArray *snaps = g_ptr_array_new();
    GRand *rand = g_rand_new_with_seed(seed);
    int step, next_name = 0;
    guint i;

    for (step = 0; step < 120; step++) {
        int op = g_rand_int_range(rand, 0, 12);
        uint64_t len = 512 * g_rand_int_range(rand, 1, 256);
        uint64_t off = ((uint64_t)(g_rand_double(rand) * (size - len))) &
                       ~(uint64_t)511;

        if (g_getenv("QGUARD_TEST_STOP") &&
            step == atoi(g_getenv("QGUARD_TEST_STOP"))) {
            qguard_image_close(img, NULL);
            g_printerr("stopped before step %d: op %d off %" PRIu64
                       " len %" PRIu64 "\n", step, op, off, len);
            exit(0);
        }
        if (op < 5) {
            fill_pattern(buf, len, off, step);
            g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err),
                            ==, 0);
            memcpy(model + off, buf, len);
        } else if (op < 6) {
            g_assert_cmpint(qguard_image_pwrite_zeroes(img, off, len,
                                                       QGUARD_ZERO_MAY_UNMAP,
                                                       &err), ==, 0);
            memset(model + off, 0, len);
        } else if (op < 7) {
            g_assert_cmpint(qguard_image_discard(img, off, len, &err), ==, 0);
            g_assert_cmpint(qguard_image_pread(img, off, len, buf, &err), ==,
                            0);
            memcpy(model + off, buf, len);
        } else if (op < 9 || snaps->len == 0) {
            SnapModel *sm = g_new0(SnapModel, 1);
            sm->name = g_strdup_printf("s%d", next_name++);
            sm->data = g_memdup2(model, size);
            sm->size = size;
            g_assert_cmpint(qguard_snapshot_create(img, sm->name, &err), ==,
                            0);
            g_ptr_array_add(snaps, sm);
        } else if (op < 11) {
            SnapModel *sm = g_ptr_array_index(snaps,
                g_rand_int_range(rand, 0, snaps->len));
            g_assert_cmpint(qguard_snapshot_apply(img, sm->name, &err), ==,
                            0);
            memcpy(model, sm->data, size);
        } else {
            guint k = g_rand_int_range(rand, 0, snaps->len);
            SnapModel *sm = g_ptr_array_index(snaps, k);
            g_assert_cmpint(qguard_snapshot_delete(img, sm->name, &err), ==,
                            0);
            g_free(sm->name);
            g_free(sm->data);
            g_free(sm);
            g_ptr_array_remove_index(snaps, k);
        }
        g_assert_no_error(err);
        if (g_getenv("QGUARD_TEST_TRACE")) {
            g_printerr("step %d op %d off %" PRIu64 " len %" PRIu64
                       " snaps %u\n", step, op, off, len, snaps->len);
            verify_against_model(img, model, size);
            assert_check_clean(img);
        } else if (step % 10 == 9) {
            verify_against_model(img, model, size);
            assert_check_clean(img);
        }
    }
    img = reopen(img, runtime);
    verify_against_model(img, model, size);
    assert_check_clean(img);
    for (i = 0; i < snaps->len; i++) {
        SnapModel *sm = g_ptr_array_index(snaps, i);
        g_assert_cmpint(qguard_snapshot_apply(img, sm->name, &err), ==, 0);
        verify_against_model(img, sm->data, size);
        g_free(sm->name);
        g_free(sm->data);
        g_free(sm);
    }
    assert_check_clean(img);
    g_ptr_array_free(snaps, TRUE);
    g_rand_free(rand);
    qguard_image_close(img, NULL);
}

/*
 * A snapshot whose references would overflow a refcount fails half-way,
 * after the first L2 table gained its reference: the image must keep
 * only leaks, with COPIED flags that match the counts and the same data.
 */
static void test_snapshot_refcount_overflow_leaves_leaks(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("snap-overflow.qcow2",
                                       "size=1M,cluster_size=1k,"
                                       "refcount_bits=2", NULL);
    g_autoptr(GString) log = g_string_new(NULL);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    uint8_t buf[4096];
    int i;

    memset(buf, 1, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    /* three compressed clusters packed into one host cluster: refcount 3 */
    for (i = 0; i < 3; i++) {
        memset(buf, 2 + i, 1024);
        g_assert_cmpint(qguard_image_pwrite_compressed(img,
                                                       256 * 1024 + i * 1024,
                                                       1024, buf, &err),
                        ==, 0);
    }
    g_assert_cmpint(qguard_snapshot_create(img, "s1", &err), ==, -EINVAL);
    g_clear_error(&err);
    img = reopen(img, NULL);
    g_assert_cmpint(qguard_image_check(img, 0, &res, report_to_test_log, log,
                                       &err), ==, 0);
    if (res.corruptions) {
        g_test_message("check output:\n%s", log->str);
    }
    g_assert_cmpint(res.corruptions, ==, 0);
    g_assert_cmpint(res.check_errors, ==, 0);
    assert_reads_byte(img, 0, 4096, 1);
    for (i = 0; i < 3; i++) {
        assert_reads_byte(img, 256 * 1024 + i * 1024, 1024, 2 + i);
    }
    qguard_image_close(img, NULL);
}

static void test_snapshots_model_64k(void)
{
    snapshot_model("size=8M", NULL);
}

static void test_snapshots_model_512_all(void)
{
    snapshot_model("size=4M,cluster_size=512", "overlap-check=all");
}

static void test_snapshots_model_v2_linear(void)
{
    snapshot_model("size=4M,cluster_size=4096,compat=0.10",
                   "overlap-check=all,overlap-check.algorithm=linear");
}

/*
 * Mode "all" protects inactive L2 tables without reading snapshot L1
 * tables on the write path; "cached" does not protect them.  An active L2
 * entry is pointed at an L2 table only a snapshot still uses.
 */
static void inactive_l2_protection(const char *runtime, bool refused)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("inactive.qcow2", "size=64M",
                                       runtime);
    BDRVQcow2State *s;
    uint8_t buf[4096];
    uint64_t old_l2, new_l2;
    void *l2;
    int ret;

    memset(buf, 0x21, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_snapshot_create(img, "s", &err), ==, 0);
    s = img->opaque;
    old_l2 = s->l1_table[0] & L1E_OFFSET_MASK;
    /* Writing after the snapshot copies the shared L2 table. */
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    new_l2 = s->l1_table[0] & L1E_OFFSET_MASK;
    g_assert_cmpuint(new_l2, !=, old_l2);
    g_assert_cmpint(qcow2_cache_get(s, s->l2_table_cache, new_l2, &l2), ==,
                    0);
    l2_set(s, l2, 16, old_l2 | QCOW_OFLAG_COPIED);
    qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2);
    qcow2_cache_put(s->l2_table_cache, &l2);
    qguard_set_message_handler(capture_message, g_string_new(NULL));
    ret = qguard_image_pwrite(img, 16 * 65536, sizeof(buf), buf, 0, &err);
    qguard_set_message_handler(NULL, NULL);
    g_clear_error(&err);
    g_assert_cmpint(ret, ==, refused ? -EIO : 0);
    qguard_image_close(img, NULL);
}

static void test_inactive_l2_refused_in_all(void)
{
    inactive_l2_protection("overlap-check=all", true);
}

static void test_inactive_l2_refused_in_all_linear(void)
{
    inactive_l2_protection("overlap-check=all,overlap-check.algorithm=linear",
                           true);
}

static void test_inactive_l2_not_checked_in_cached(void)
{
    inactive_l2_protection("overlap-check=cached", false);
}

/*
 * A snapshot L1 table that fails validation refuses writes to the range it
 * claims and fails writes that check inactive L2 tables, as in QEMU, but
 * a write of no bytes overlaps nothing: the write path's entry leaves that
 * answer to the path below it, and the one for damaged snapshots must give
 * it too.
 */
static void empty_range_with_bad_snapshot(const char *runtime)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("badsn.qcow2", "size=4M", runtime);
    BDRVQcow2State *s = img->opaque;
    g_autofree char *path = g_strdup(qguard_image_filename(img));
    uint64_t table;
    uint8_t huge[4] = { 0x10, 0, 0, 0 };       /* l1_size 0x10000000 */
    FILE *f;

    g_assert_cmpint(qguard_snapshot_create(img, "s", &err), ==, 0);
    table = s->snapshots_offset;
    test_image_close(img);
    f = fopen(path, "r+b");
    g_assert_nonnull(f);
    g_assert_cmpint(fseek(f, table + 8, SEEK_SET), ==, 0);
    g_assert_cmpuint(fwrite(huge, 1, sizeof(huge), f), ==, sizeof(huge));
    g_assert_cmpint(fclose(f), ==, 0);

    img = test_image_open(path, "qcow2", runtime, QGUARD_OPEN_RDWR);
    s = img->opaque;
    g_assert_cmpint(s->snapshot_l1_error, <, 0);
    /* past the table's offset: inside the 2 GiB the bad table claims */
    g_assert_cmpint(qcow2_overlap_hit(s, 0, 1 << 20, 512), ==,
                    QCOW2_OL_INACTIVE_L1);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, 1 << 20, 0), ==, 0);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, 0, 0), ==, 0);
    qguard_image_close(img, NULL);
}

static void test_empty_range_with_bad_snapshot(void)
{
    empty_range_with_bad_snapshot("overlap-check=all");
}

static void test_empty_range_with_bad_snapshot_linear(void)
{
    empty_range_with_bad_snapshot("overlap-check=all,"
                                  "overlap-check.algorithm=linear");
}

/* ---- Refcount structures ----------------------------------------------- */

static void test_refcount_accessors_round_trip(void)
{
    BDRVQcow2State s = { .cluster_bits = 9 };
    uint8_t block[512];
    int order;

    for (order = 0; order <= 6; order++) {
        uint64_t entries, i, max;

        s.refcount_order = order;
        qcow2_refcount_setup_order(&s);
        entries = s.refcount_block_size;
        max = s.refcount_max;
        g_assert_cmpuint(entries, ==, 512 * 8 >> order);
        memset(block, 0, sizeof(block));
        for (i = 0; i < entries; i++) {
            s.set_refcount(block, i, (i * 7 + 3) & max);
        }
        for (i = 0; i < entries; i++) {
            g_assert_cmpuint(s.get_refcount(block, i), ==, (i * 7 + 3) & max);
        }
        s.set_refcount(block, entries - 1, max);
        g_assert_cmpuint(s.get_refcount(block, entries - 1), ==, max);
        g_assert_cmpuint(s.get_refcount(block, entries - 2), ==,
                         ((entries - 2) * 7 + 3) & max);
    }
}

/*
 * With 512-byte clusters and 64-bit refcounts a refcount block covers 64
 * clusters and a table cluster 64 blocks: writing 8 MiB forces the table to
 * grow and move several times.
 */
static void test_refcount_table_grows_and_moves(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("grow.qcow2",
                                       "size=64M,cluster_size=512,"
                                       "refcount_bits=64", NULL);
    BDRVQcow2State *s = img->opaque;
    uint64_t old_offset = s->refcount_table_offset;
    uint32_t old_size = s->refcount_table_size;
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    int i;

    for (i = 0; i < 8; i++) {
        fill_pattern(buf, 1 << 20, i << 20, 7);
        g_assert_cmpint(qguard_image_pwrite(img, (uint64_t)i << 20, 1 << 20,
                                            buf, 0, &err), ==, 0);
    }
    g_assert_cmpuint(s->refcount_table_size, >, old_size);
    g_assert_cmpuint(s->refcount_table_offset, !=, old_offset);
    assert_check_clean(img);
    img = reopen(img, NULL);
    for (i = 0; i < 8; i++) {
        g_autofree uint8_t *expect = g_malloc(1 << 20);
        fill_pattern(expect, 1 << 20, i << 20, 7);
        g_assert_cmpint(qguard_image_pread(img, (uint64_t)i << 20, 1 << 20,
                                           buf, &err), ==, 0);
        g_assert_cmpmem(buf, 1 << 20, expect, 1 << 20);
    }
    assert_check_clean(img);
    qguard_image_close(img, NULL);
}

static void test_resize_grows_l1_and_keeps_data(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("resize.qcow2",
                                       "size=1M,cluster_size=512", NULL);
    BDRVQcow2State *s = img->opaque;
    uint32_t old_l1 = s->l1_size;
    uint8_t buf[4096], rb[4096];

    memset(buf, 0x11, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_truncate(img, 256 << 20, false, NULL, &err),
                    ==, 0);
    g_assert_cmpuint(s->l1_size, >, old_l1);
    memset(buf, 0x22, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, (256 << 20) - sizeof(buf),
                                        sizeof(buf), buf, 0, &err), ==, 0);
    img = reopen(img, NULL);
    g_assert_cmpuint(qguard_image_size(img), ==, 256 << 20);
    g_assert_cmpint(qguard_image_pread(img, 0, sizeof(rb), rb, &err), ==, 0);
    memset(buf, 0x11, sizeof(buf));
    g_assert_cmpmem(rb, sizeof(rb), buf, sizeof(buf));
    g_assert_cmpint(qguard_image_pread(img, (256 << 20) - sizeof(rb),
                                       sizeof(rb), rb, &err), ==, 0);
    memset(buf, 0x22, sizeof(buf));
    g_assert_cmpmem(rb, sizeof(rb), buf, sizeof(buf));
    assert_check_clean(img);
    qguard_image_close(img, NULL);
}

/* ---- Write ordering ----------------------------------------------------- */

typedef struct WriteLog {
    GArray *ops;        /* of LoggedOp */
    HostFile *file;
} WriteLog;

typedef struct LoggedOp {
    HostFileOp op;
    uint64_t offset;
    uint64_t bytes;
} LoggedOp;

static int log_hook(void *opaque, HostFile *file, HostFileOp op,
                    uint64_t offset, uint64_t bytes,
                    const struct iovec *iov, int iovcnt)
{
    WriteLog *log = opaque;
    LoggedOp e = { op, offset, bytes };

    (void)iovcnt;
    /* A space reservation (no data) orders nothing. */
    if (file == log->file && ((op == HOST_FILE_WRITE && iov) ||
                              op == HOST_FILE_FLUSH)) {
        g_array_append_val(log->ops, e);
    }
    return 0;
}

static int64_t index_of_write(WriteLog *log, uint64_t offset)
{
    guint i;

    for (i = 0; i < log->ops->len; i++) {
        LoggedOp *e = &g_array_index(log->ops, LoggedOp, i);
        if (e->op == HOST_FILE_WRITE && offset >= e->offset &&
            offset < e->offset + e->bytes) {
            return i;
        }
    }
    return -1;
}

static bool flush_between(WriteLog *log, int64_t a, int64_t b)
{
    int64_t i;

    for (i = a + 1; i < b; i++) {
        if (g_array_index(log->ops, LoggedOp, i).op == HOST_FILE_FLUSH) {
            return true;
        }
    }
    return false;
}

/*
 * An allocating write on a fresh image: the refcount of the new cluster
 * reaches the disk before the L2 table that points at it, and the L2 table
 * before the L1 entry, each separated by a flush.
 */
static void test_allocation_is_ordered_refcount_l2_l1(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("order.qcow2", "size=64M", NULL);
    BDRVQcow2State *s = img->opaque;
    WriteLog log = { g_array_new(FALSE, FALSE, sizeof(LoggedOp)), img->file };
    uint8_t buf[4096];
    uint64_t l2_offset, data_offset, refblock;
    int64_t i_ref, i_l2, i_l1;
    QCow2ClusterType type;
    uint64_t bytes = sizeof(buf);

    memset(buf, 0x33, sizeof(buf));
    host_file_set_hook(log_hook, &log);
    g_assert_cmpint(qguard_image_pwrite(img, 1 << 20, sizeof(buf), buf, 0,
                                        &err), ==, 0);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    host_file_set_hook(NULL, NULL);

    l2_offset = s->l1_table[0] & L1E_OFFSET_MASK;
    g_assert_cmpint(qcow2_get_host_offset(s, 1 << 20, &bytes, &data_offset,
                                          &type), ==, 0);
    g_assert_cmpint(type, ==, QCOW2_CLUSTER_NORMAL);
    refblock = s->refcount_table[0] & REFT_OFFSET_MASK;
    i_ref = index_of_write(&log, refblock);
    i_l2 = index_of_write(&log, l2_offset);
    i_l1 = index_of_write(&log, s->l1_table_offset);
    g_assert_cmpint(i_ref, >=, 0);
    g_assert_cmpint(i_l2, >, i_ref);
    g_assert_cmpint(i_l1, >, i_l2);
    g_assert_true(flush_between(&log, i_ref, i_l2));
    g_assert_true(flush_between(&log, i_l2, i_l1));
    g_array_free(log.ops, TRUE);
    qguard_image_close(img, NULL);
}

/* ---- Overlap protection ------------------------------------------------- */

/*
 * Point a data cluster's L2 entry at the active L1 table (in memory, the
 * way a byte-edited image would) and write through it: refused, corrupt bit
 * set, L1 unchanged on disk.
 */
static void overlap_refusal(const char *algorithm)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *opts = g_strdup_printf("overlap-check.algorithm=%s",
                                            algorithm);
    QGuardImage *img = create_and_open("overlap.qcow2", "size=64M", opts);
    BDRVQcow2State *s = img->opaque;
    g_autoptr(GString) messages = g_string_new(NULL);
    uint8_t buf[512], l1_before[512], l1_after[512], hdr[8];
    uint64_t l2_offset;
    void *l2;

    memset(buf, 0x44, sizeof(buf));
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, 0);
    l2_offset = s->l1_table[0] & L1E_OFFSET_MASK;
    g_assert_cmpint(qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2),
                    ==, 0);
    l2_set(s, l2, 0, s->l1_table_offset | QCOW_OFLAG_COPIED);
    qcow2_cache_put(s->l2_table_cache, &l2);
    g_assert_cmpint(qcow2_flush_metadata(s), ==, 0);
    g_assert_cmpint(host_file_pread(img->file, s->l1_table_offset, l1_before,
                                    sizeof(l1_before)), ==, 0);

    qguard_set_message_handler(capture_message, messages);
    g_assert_cmpint(qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err),
                    ==, -EIO);
    qguard_set_message_handler(NULL, NULL);
    g_clear_error(&err);
    g_assert_cmpstr(messages->str, ==,
                    "qcow2: Marking image as corrupt: Preventing invalid "
                    "write on metadata (overlaps with active L1 table); "
                    "further corruption events will be suppressed\n");
    g_assert_cmpint(host_file_pread(img->file, s->l1_table_offset, l1_after,
                                    sizeof(l1_after)), ==, 0);
    g_assert_cmpmem(l1_before, sizeof(l1_before), l1_after, sizeof(l1_after));
    g_assert_cmpint(host_file_pread(img->file, 72, hdr, 8), ==, 0);
    g_assert_cmpuint(be_get64(hdr) & QCOW2_INCOMPAT_CORRUPT, !=, 0);
    /* The open image now refuses all requests. */
    g_assert_cmpint(qguard_image_pwrite(img, 4096, sizeof(buf), buf, 0, &err),
                    ==, -ENOMEDIUM);
    g_clear_error(&err);
    qguard_image_close(img, NULL);
}

static void test_overlap_refused_windowed(void)
{
    overlap_refusal("windowed");
}

static void test_overlap_refused_linear(void)
{
    overlap_refusal("linear");
}

/*
 * Differential: random workloads with growth of the refcount table and L1;
 * after each step the windowed map and QEMU's scan agree on random ranges.
 */
static void test_linear_and_windowed_agree(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("diff.qcow2",
                                       "size=8M,cluster_size=512,"
                                       "refcount_bits=64", NULL);
    BDRVQcow2State *s = img->opaque;
    GRand *rand = g_rand_new_with_seed(seed);
    g_autofree uint8_t *buf = g_malloc(65536);
    uint64_t queries = 0;
    int step;

    memset(buf, 0x77, 65536);
    for (step = 0; step < 300; step++) {
        uint64_t len = 512 * g_rand_int_range(rand, 1, 128);
        uint64_t size = qguard_image_size(img);
        uint64_t off = ((uint64_t)(g_rand_double(rand) * (size - len))) & ~511;
        int64_t end;
        int k;

        switch (g_rand_int_range(rand, 0, 8)) {
        case 0:
            g_assert_cmpint(qguard_image_discard(img, off, len, &err), ==, 0);
            break;
        case 1:
            if (size < (64 << 20)) {
                g_assert_cmpint(qguard_image_truncate(img, size + (1 << 20),
                                                      false, NULL, &err),
                                ==, 0);
            }
            break;
        default:
            g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err),
                            ==, 0);
            break;
        }
        end = qcow2_host_end_cluster(s) + 8;
        for (k = 0; k < 50; k++) {
            uint64_t qoff = (uint64_t)g_rand_int_range(rand, 0, end) << 9;
            uint64_t qlen = g_rand_int_range(rand, 1, 8192);
            unsigned lin = qcow2_linear_overlap_check(s, QCOW2_OL_CACHED,
                                                      qoff, qlen);
            unsigned win = qcow2_metadata_map_check(s->metadata_map, qoff,
                                                    qlen, ~QCOW2_OL_CACHED);
            /* The scan names the first type it finds; the map all of them. */
            if ((lin == 0) != (win == 0) || (lin && !(win & lin))) {
                g_error("step %d: [%#" PRIx64 ", +%#" PRIx64 ") linear %#x "
                        "windowed %#x (seed %u)", step, qoff, qlen, lin, win,
                        seed);
            }
            queries++;
        }
    }
    g_test_message("%" PRIu64 " ranges compared", queries);
    assert_check_clean(img);
    g_rand_free(rand);
    qguard_image_close(img, NULL);
}

/*
 * The same with snapshots in mode "all": inactive L1 and L2 tables, entered
 * by snapshot create/apply/delete and, after a reopen, by the bulk build
 * from the snapshots' L1 tables, against the scan that reads them from disk.
 */
static void test_linear_and_windowed_agree_snapshots(void)
{
    const unsigned all = QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2;
    const char *runtime = "overlap-check=all";
    g_autoptr(GError) err = NULL;
    QGuardImage *img = create_and_open("diffsn.qcow2",
                                       "size=4M,cluster_size=512", runtime);
    GRand *rand = g_rand_new_with_seed(seed);
    g_autofree uint8_t *buf = g_malloc(65536);
    uint64_t queries = 0, inactive_l2_hits = 0;
    int step, snapshots = 0, next_name = 0;

    memset(buf, 0x5c, 65536);
    for (step = 0; step < 250; step++) {
        uint64_t len = 512 * g_rand_int_range(rand, 1, 128);
        uint64_t size = qguard_image_size(img);
        uint64_t off = ((uint64_t)(g_rand_double(rand) * (size - len))) & ~511;
        int op = g_rand_int_range(rand, 0, 20);
        g_autofree char *name = NULL;
        BDRVQcow2State *s;
        int64_t end;
        int k;

        if (op < 9) {
            g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err),
                            ==, 0);
        } else if (op < 11) {
            g_assert_cmpint(qguard_image_discard(img, off, len, &err), ==, 0);
        } else if (op < 14 || !snapshots) {
            name = g_strdup_printf("s%d", next_name++);
            g_assert_cmpint(qguard_snapshot_create(img, name, &err), ==, 0);
            snapshots++;
        } else {
            QGuardSnapshotInfo *list = NULL;
            guint count = 0, pick;

            g_assert_cmpint(qguard_snapshot_list(img, &list, &count, &err),
                            ==, 0);
            pick = g_rand_int_range(rand, 0, count);
            name = g_strdup(list[pick].name);
            qguard_snapshot_list_free(list, count);
            if (op < 16) {
                g_assert_cmpint(qguard_snapshot_delete(img, name, &err), ==,
                                0);
                snapshots--;
            } else if (op < 19) {
                g_assert_cmpint(qguard_snapshot_apply(img, name, &err), ==,
                                0);
            } else {
                img = reopen(img, runtime);
            }
        }
        g_assert_no_error(err);
        s = img->opaque;
        end = qcow2_host_end_cluster(s) + 8;
        for (k = 0; k < 50; k++) {
            uint64_t qoff = (uint64_t)g_rand_int_range(rand, 0, end) << 9;
            uint64_t qlen = g_rand_int_range(rand, 1, 4096);
            unsigned lin = qcow2_linear_overlap_check(s, all, qoff, qlen);
            unsigned win = qcow2_metadata_map_check(s->metadata_map, qoff,
                                                    qlen, ~all);

            if ((lin == 0) != (win == 0) || (lin && !(win & lin))) {
                g_error("step %d op %d: [%#" PRIx64 ", +%#" PRIx64 ") linear "
                        "%#x windowed %#x (seed %u)", step, op, qoff, qlen,
                        lin, win, seed);
            }
            inactive_l2_hits += !!(win & QCOW2_OL_INACTIVE_L2);
            queries++;
        }
    }
    g_test_message("%" PRIu64 " ranges compared, %" PRIu64 " touching an "
                   "inactive L2 table", queries, inactive_l2_hits);
    /* The comparison must have covered inactive L2 tables at all. */
    g_assert_cmpuint(inactive_l2_hits, >, 0);
    assert_check_clean(img);
    g_rand_free(rand);
    qguard_image_close(img, NULL);
}

static const ModelRun model_runs[] = {
    { "size=32M", NULL, 32 << 20, 400, 300000 },
    { "size=16M,cluster_size=512,refcount_bits=1", NULL, 16 << 20, 400,
      100000 },
    { "size=16M,cluster_size=512,refcount_bits=64", NULL, 16 << 20, 400,
      100000 },
    { "size=16M,cluster_size=4096,refcount_bits=2", NULL, 16 << 20, 400,
      100000 },
    { "size=64M,cluster_size=2M,refcount_bits=8", NULL, 64 << 20, 100,
      5000000 },
    { "size=16M,compat=0.10", NULL, 16 << 20, 300, 200000 },
    { "size=16M,lazy_refcounts=on", NULL, 16 << 20, 300, 200000 },
    { "size=16M,cluster_size=1024,preallocation=metadata", NULL, 16 << 20,
      300, 100000 },
    { "size=16M,cluster_size=512", "overlap-check=all,"
      "overlap-check.cache-size=1", 16 << 20, 300, 100000 },
    { "size=16M,cluster_size=512", "overlap-check.algorithm=linear",
      16 << 20, 200, 100000 },
    { "size=16M,cluster_size=512", "l2-cache-size=1024,"
      "refcount-cache-size=2048", 16 << 20, 300, 100000 },
};

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    seed = test_seed();
    test_scratch_init("qguard-engine-XXXXXX");

    g_test_add_func("/qcow2/api/sized-structs", test_api_sized_structs);
    g_test_add_func("/qcow2/refcount/accessors-round-trip",
                    test_refcount_accessors_round_trip);
    g_test_add_func("/qcow2/refcount/table-grows-and-moves",
                    test_refcount_table_grows_and_moves);
    g_test_add_func("/qcow2/resize/grows-l1-and-keeps-data",
                    test_resize_grows_l1_and_keeps_data);
    g_test_add_func("/qcow2/compressed/64k", test_compressed_64k);
    g_test_add_func("/qcow2/compressed/512-refcount-bits-1",
                    test_compressed_512_refcount_1);
    g_test_add_func("/qcow2/compressed/2m-unaligned-size",
                    test_compressed_2m_unaligned_size);
    g_test_add_func("/qcow2/compressed/after-its-cluster-is-reused",
                    test_compressed_after_its_cluster_is_reused);
    g_test_add_func("/qcow2/snapshots/model-64k", test_snapshots_model_64k);
    g_test_add_func("/qcow2/snapshots/refcount-overflow-leaves-leaks",
                    test_snapshot_refcount_overflow_leaves_leaks);
    g_test_add_func("/qcow2/snapshots/model-512-all",
                    test_snapshots_model_512_all);
    g_test_add_func("/qcow2/snapshots/model-v2-linear",
                    test_snapshots_model_v2_linear);
    g_test_add_func("/qcow2/snapshots/inactive-l2-refused-in-all",
                    test_inactive_l2_refused_in_all);
    g_test_add_func("/qcow2/snapshots/inactive-l2-refused-in-all-linear",
                    test_inactive_l2_refused_in_all_linear);
    g_test_add_func("/qcow2/snapshots/inactive-l2-not-checked-in-cached",
                    test_inactive_l2_not_checked_in_cached);
    g_test_add_func("/qcow2/overlap/empty-range-with-bad-snapshot",
                    test_empty_range_with_bad_snapshot);
    g_test_add_func("/qcow2/overlap/empty-range-with-bad-snapshot-linear",
                    test_empty_range_with_bad_snapshot_linear);
    g_test_add_func("/qcow2/discard/reads-zero",
                    test_discard_reads_zero_or_old);
    g_test_add_func("/qcow2/order/allocation-refcount-l2-l1",
                    test_allocation_is_ordered_refcount_l2_l1);
    g_test_add_func("/qcow2/overlap/write-over-l1-refused-windowed",
                    test_overlap_refused_windowed);
    g_test_add_func("/qcow2/overlap/write-over-l1-refused-linear",
                    test_overlap_refused_linear);
    g_test_add_func("/qcow2/overlap/linear-and-windowed-agree",
                    test_linear_and_windowed_agree);
    g_test_add_func("/qcow2/overlap/linear-and-windowed-agree-snapshots",
                    test_linear_and_windowed_agree_snapshots);
    for (i = 0; i < G_N_ELEMENTS(model_runs); i++) {
        g_autofree char *name = g_strdup_printf("/qcow2/model/%s%s%s",
            model_runs[i].create_opts,
            model_runs[i].runtime_opts ? "/" : "",
            model_runs[i].runtime_opts ? model_runs[i].runtime_opts : "");
        g_test_add_data_func(name, &model_runs[i], run_model);
    }
    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
