/* SPDX-License-Identifier: MIT */
/*
 * The free-space index (block/qcow2-free.c, docs/allocation.md) against
 * the refcounts it summarizes.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Random guest operations (allocating writes, discards, zero writes that
 * unmap, flushes, snapshots, resizes, reopens, repairs) on images of
 * several cluster sizes and refcount widths.  After every operation the
 * index must satisfy its invariants (qcow2_free_index_verify()) and answer
 * "first free run from the search start" exactly as a scan of every
 * refcount from there would.
 *
 * QGUARD_TEST_SEED=N repeats a run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"
#include "block/block_int.h"
#include "block/qcow2.h"

static guint32 seed;

static bool pending_freed(BDRVQcow2State *s, uint64_t c)
{
    guint i;

    for (i = 0; i < s->freed_clusters->len; i++) {
        Qcow2FreedRange *r = &g_array_index(s->freed_clusters,
                                            Qcow2FreedRange, i);
        if (c >= r->first && c < r->first + r->count) {
            return true;
        }
    }
    return false;
}

static bool cluster_free(BDRVQcow2State *s, uint64_t c)
{
    uint64_t refcount;

    g_assert_cmpint(qcow2_get_refcount(s, c, &refcount), ==, 0);
    return refcount == 0 && !pending_freed(s, c);
}

/* The oracle: the first run by scanning every refcount from the hint. */
static uint64_t scan_first_run(BDRVQcow2State *s, uint64_t n, bool exact,
                               uint64_t *got)
{
    uint64_t c = s->free_cluster_index, start = 0, len = 0;

    for (;; c++) {
        if (cluster_free(s, c)) {
            if (!len) {
                start = c;
            }
            if (++len == n) {
                break;
            }
        } else if (len && !exact) {
            break;
        } else {
            len = 0;
        }
    }
    *got = len;
    return start;
}

static void check_index(QGuardImage *img, const char *after, int step)
{
    BDRVQcow2State *s = img->opaque;
    g_autoptr(GString) why = g_string_new(NULL);
    static const uint64_t sizes[] = { 1, 3, 64, 300 };
    size_t i;

    if (!qcow2_free_index_verify(s, why)) {
        g_error("after %s (step %d, seed %u): %s", after, step, seed,
                why->str);
    }
    for (i = 0; i < G_N_ELEMENTS(sizes); i++) {
        uint64_t got, want_got, first_free;
        int64_t have = qcow2_free_index_find(s, s->free_cluster_index,
                                             sizes[i], i & 1, &got,
                                             &first_free);
        uint64_t want = scan_first_run(s, sizes[i], i & 1, &want_got);

        if (have != (int64_t)want || got != want_got) {
            g_error("after %s (step %d, seed %u): first %s run of %" PRIu64
                    ": index %" PRId64 "+%" PRIu64 ", scan %" PRIu64 "+%"
                    PRIu64, after, step, seed, i & 1 ? "exact" : "short",
                    sizes[i], have, got, want, want_got);
        }
    }
    if (!qcow2_free_index_verify(s, why)) {
        g_error("after searching (step %d, seed %u): %s", step, seed,
                why->str);
    }
}

typedef struct IndexRun {
    const char *create_opts;
    uint64_t size;
    uint64_t max_len;
    int ops;
    bool snapshots;     /* 1-bit refcounts cannot count a second reference */
} IndexRun;

static void run_index(gconstpointer data)
{
    const IndexRun *run = data;
    g_autoptr(GError) err = NULL;
    g_autofree char *path = tpath("index.qcow2");
    g_autofree uint8_t *buf = g_malloc(run->max_len);
    GRand *rand = g_rand_new_with_seed(seed ^ g_str_hash(run->create_opts));
    g_autofree char *opts = g_strdup_printf("%s,size=%" PRIu64,
                                            run->create_opts, run->size);
    QGuardImage *img = test_qcow2_new(path, opts, NULL);
    uint64_t size = run->size;
    int snapshots = 0, i;

    check_index(img, "create", -1);
    for (i = 0; i < run->ops; i++) {
        uint64_t len = 1 + g_rand_int_range(rand, 0, run->max_len);
        uint64_t off = (uint64_t)(g_rand_double(rand) * (size - len));
        int op = g_rand_int_range(rand, 0, 100);
        const char *what;
        int ret = 0;

        off &= ~(uint64_t)511;
        len = MIN(MAX(512, len & ~(uint64_t)511), size - off);
        if (op < 45) {
            what = "write";
            memset(buf, i + 1, len);
            ret = qguard_image_pwrite(img, off, len, buf, 0, &err);
        } else if (op < 65) {
            what = "discard";
            ret = qguard_image_discard(img, off, len, &err);
        } else if (op < 72) {
            what = "zero (unmap)";
            ret = qguard_image_pwrite_zeroes(img, off, len,
                                             QGUARD_ZERO_MAY_UNMAP, &err);
        } else if (op < 85) {
            what = "flush";
            ret = qguard_image_flush(img, &err);
        } else if (op < 89 && run->snapshots) {
            g_autofree char *name = g_strdup_printf("s%d", snapshots++);
            what = "snapshot create";
            ret = qguard_snapshot_create(img, name, &err);
        } else if (op >= 89 && op < 92 && snapshots) {
            g_autofree char *name = g_strdup_printf("s%d",
                g_rand_int_range(rand, 0, snapshots));
            what = "snapshot delete";
            ret = qguard_snapshot_delete(img, name, &err);
            if (ret == -ENOENT) {
                g_clear_error(&err);
                ret = 0;
            }
        } else if (op >= 89 && op < 95) {
            /* Grow and shrink: L1 and refcount-table growth, bulk frees. */
            what = "resize";
            size = g_rand_boolean(rand) ? size + run->size / 2
                                        : MAX(run->size / 2, size / 2);
            size &= ~(uint64_t)511;
            ret = qguard_image_truncate(img, size, true, NULL, &err);
        } else if (op < 98) {
            what = "reopen";
            g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
            img = test_image_open(path, "qcow2", NULL, QGUARD_OPEN_RDWR);
        } else {
            QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
            what = "check -r all";
            ret = qguard_image_check(img, QGUARD_CHECK_FIX_ERRORS |
                                     QGUARD_CHECK_FIX_LEAKS, &res, NULL,
                                     NULL, &err);
        }
        g_assert_no_error(err);
        g_assert_cmpint(ret, ==, 0);
        check_index(img, what, i);
    }
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    g_rand_free(rand);
}

static const IndexRun runs[] = {
    { "cluster_size=512", 4 << 20, 40000, 400, true },
    { "cluster_size=512,refcount_bits=64", 2 << 20, 20000, 300, true },
    { "cluster_size=4096,refcount_bits=1", 8 << 20, 200000, 300, false },
    { "cluster_size=65536", 32 << 20, 1 << 20, 200, true },
};

/* Holes freed below the hint are found again, the lowest first. */
static void test_holes_are_reused_lowest_first(void)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = tpath("holes.qcow2");
    g_autofree uint8_t *buf = g_malloc(1 << 20);
    QGuardImage *img = test_qcow2_new(path, "cluster_size=512,size=4M", NULL);
    BDRVQcow2State *s = img->opaque;
    uint64_t got, first_free, host, bytes;
    QCow2ClusterType type;
    int64_t f;

    memset(buf, 0x5a, 1 << 20);
    g_assert_cmpint(qguard_image_pwrite(img, 0, 1 << 20, buf, 0, &err), ==,
                    0);
    /* Free 64 KiB of data clusters (two L2 tables' worth). */
    bytes = 512;
    g_assert_cmpint(qcow2_get_host_offset(s, 256 * 1024, &bytes, &host,
                                          &type), ==, 0);
    g_assert_cmpint(qguard_image_discard(img, 256 * 1024, 64 * 1024, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_flush(img, &err), ==, 0);
    check_index(img, "discard", 0);
    f = qcow2_free_index_find(s, s->free_cluster_index, 1000, false, &got,
                              &first_free);
    g_assert_cmpint(f, ==, (int64_t)(host >> 9));
    g_assert_cmpuint(got, >=, 1);
    /* Rewriting the range takes exactly that hole back. */
    g_assert_cmpint(qguard_image_pwrite(img, 256 * 1024, 64 * 1024, buf, 0,
                                        &err), ==, 0);
    bytes = 512;
    g_assert_cmpint(qcow2_get_host_offset(s, 256 * 1024, &bytes, &host,
                                          &type), ==, 0);
    g_assert_cmpint(host >> 9, ==, f);
    check_index(img, "rewrite", 1);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    seed = test_seed();
    test_scratch_init("qguard-free-index-XXXXXX");
    for (i = 0; i < G_N_ELEMENTS(runs); i++) {
        g_autofree char *name = g_strdup_printf("/free-index/random/%s",
                                                runs[i].create_opts);
        g_test_add_data_func(name, &runs[i], run_index);
    }
    g_test_add_func("/free-index/holes-are-reused-lowest-first",
                    test_holes_are_reused_lowest_first);
    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
