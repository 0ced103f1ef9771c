/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * Tests for the metadata overlap map (block/qcow2-overlap.c).
 *
 * The deterministic tests pin one behaviour each with exact numbers.  The
 * random-vs-model tests run over ten million operations against a plain
 * per-cluster array and compare every answer, the exact per-cluster
 * content, the canonical fragment list of every window and, after each
 * round, that all memory comes back.  Set QGUARD_TEST_SEED to replay a run
 * and QGUARD_TEST_OPS to change the number of operations per cache size.
 */

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "qcow2-overlap.h"

#define WIN QCOW2_OVERLAP_WINDOW_CLUSTERS
#define L2  QCOW2_OL_ACTIVE_L2
#define RB  QCOW2_OL_REFCOUNT_BLOCK
#define BD  QCOW2_OL_BITMAP_DIRECTORY

/*
 * Documented costs (docs/overlap-map.md): slot per window, leaf per 4096
 * windows.
 */
#define SLOT_BYTES  4
#define LEAF_BYTES(chunks)  (8 + 48 * (chunks))

static void enter_c(Qcow2MetadataMap *m, unsigned cb, uint64_t c, uint64_t n,
                    unsigned t)
{
    qcow2_metadata_map_enter(m, c << cb, n << cb, t);
}

static void remove_c(Qcow2MetadataMap *m, unsigned cb, uint64_t c, uint64_t n,
                     unsigned t)
{
    qcow2_metadata_map_remove(m, c << cb, n << cb, t);
}

static unsigned check_c(Qcow2MetadataMap *m, unsigned cb, uint64_t c,
                        uint64_t n, unsigned ign)
{
    return qcow2_metadata_map_check(m, c << cb, n << cb, ign);
}

static Qcow2MetadataMapStats stats_of(const Qcow2MetadataMap *m)
{
    Qcow2MetadataMapStats s;
    qcow2_metadata_map_get_stats(m, &s);
    return s;
}

static Qcow2OverlapWindowForm form(const Qcow2MetadataMap *m, uint64_t w)
{
    return qcow2_metadata_map_window_form(m, w);
}

/*
 * Assert window w holds exactly the fragments given as (start, len, types)
 * triples.
 */
static void assert_frags(const Qcow2MetadataMap *m, uint64_t w, unsigned n,
                         const unsigned *exp)
{
    Qcow2OverlapFragment f[WIN];
    unsigned got = qcow2_metadata_map_window_fragments(m, w, f, WIN);
    unsigned i;

    g_assert_cmpuint(got, ==, n);
    for (i = 0; i < n; i++) {
        g_assert_cmpuint(f[i].start, ==, exp[3 * i]);
        g_assert_cmpuint(f[i].len, ==, exp[3 * i + 1]);
        g_assert_cmpuint(f[i].types, ==, exp[3 * i + 2]);
    }
}

/* Three separate single clusters: the smallest window that must be a list. */
static void make_list_window(Qcow2MetadataMap *m, unsigned cb, uint64_t w)
{
    enter_c(m, cb, w * WIN + 10, 1, L2);
    enter_c(m, cb, w * WIN + 20, 1, L2);
    enter_c(m, cb, w * WIN + 30, 1, RB);
    g_assert_cmpint(form(m, w), ==, QCOW2_OVERLAP_WINDOW_LIST);
}

/*
 * An edit that changes nothing (cluster 10 of a make_list_window() window
 * already holds L2): only edits bring a list window into the cache, so this
 * expands window w into a clean bytemap at the head of the LRU.
 */
static void touch(Qcow2MetadataMap *m, unsigned cb, uint64_t w)
{
    enter_c(m, cb, w * WIN + 10, 1, L2);
}

/* ---- deterministic tests ------------------------------------------------- */

static void test_type_names(void)
{
    int i;

    static const char *const names[] = {
        "qcow2_header", "active L1 table", "active L2 table", "refcount table",
        "refcount block", "snapshot table", "inactive L1 table",
        "inactive L2 table", "bitmap directory",
    };

    for (i = 0; i < QCOW2_OL_MAX_BITNR; i++) {
        g_assert_cmpstr(qcow2_overlap_type_name(i), ==, names[i]);
    }
    g_assert_null(qcow2_overlap_type_name(-1));
    g_assert_null(qcow2_overlap_type_name(QCOW2_OL_MAX_BITNR));
    g_assert_cmpint(QCOW2_OL_ALL, ==, 0x1ff);
    g_assert_cmpint(QCOW2_OL_BITMAP_DIRECTORY, ==, 0x100);
}

static void test_zero_length_is_noop(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 0);
    uint64_t base = stats_of(m).mem_current;

    qcow2_metadata_map_enter(m, 65536, 0, QCOW2_OL_ALL);
    qcow2_metadata_map_remove(m, 65536, 0, QCOW2_OL_ALL);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 0, 0, 0), ==, 0);
    enter_c(m, 16, 1, 1, L2);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 65536, 0, 0), ==, 0);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 65536, 1, 0), ==, L2);
    g_assert_cmpuint(stats_of(m).inserts, ==, 2);
    g_assert_cmpuint(stats_of(m).removes, ==, 1);
    g_assert_cmpuint(stats_of(m).queries, ==, 3);
    g_assert_cmpuint(stats_of(m).mem_current, ==,
                     base + LEAF_BYTES(1) + SLOT_BYTES);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_ranges_round_outward_to_clusters(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 0);

    qcow2_metadata_map_enter(m, 65535, 2, L2);  /* last byte of 0, first of 1 */
    g_assert_cmpuint(qcow2_metadata_map_get(m, 0), ==, L2);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 1), ==, L2);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 2), ==, 0);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 131071, 1, 0), ==, L2);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 131072, 65536, 0), ==, 0);
    g_assert_cmpuint(qcow2_metadata_map_check(m, 131071, 2, L2), ==, 0);
    /* one byte frees cluster 1 */
    qcow2_metadata_map_remove(m, 65536 + 100, 1, L2);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 0), ==, L2);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 1), ==, 0);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_check_empty_window_costs_no_conversion(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 4);
    Qcow2MetadataMapStats s;
    uint64_t mem;
    uint64_t w;

    make_list_window(m, 16, 1);
    mem = stats_of(m).mem_current;
    qcow2_metadata_map_reset_counters(m);
    for (w = 2; w < 1002; w++) {
        g_assert_cmpuint(check_c(m, 16, w * WIN, WIN, 0), ==, 0);
    }
    g_assert_cmpuint(check_c(m, 16, 0, WIN, 0), ==, 0);
    /* far beyond anything entered, including past the directory's reach */
    g_assert_cmpuint(qcow2_metadata_map_check(m, UINT64_C(1) << 55, 1 << 20, 0),
                     ==, 0);
    s = stats_of(m);
    g_assert_cmpuint(s.queries, ==, 1002);
    g_assert_cmpuint(s.list_to_bytemap, ==, 0);
    g_assert_cmpuint(s.cached_bytemaps, ==, 0);
    g_assert_cmpuint(s.mem_current, ==, mem);
    g_assert_cmpuint(s.mem_peak, ==, mem);
    g_assert_cmpint(form(m, 2), ==, QCOW2_OVERLAP_WINDOW_EMPTY);

    g_assert_cmpuint(stats_of(m).list_queries, ==, 0);

    /* a list window is answered in place as well */
    g_assert_cmpuint(check_c(m, 16, WIN, WIN, 0), ==, L2 | RB);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 0);
    g_assert_cmpuint(stats_of(m).list_queries, ==, 1);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_LIST);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_single_fragment_windows_need_no_bytemap(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 16);
    uint64_t base = stats_of(m).mem_current;
    Qcow2MetadataMapStats s;
    uint64_t w;

    for (w = 0; w < 1000; w++) {
        enter_c(m, 16, w * WIN + 7, 1, L2);
        if (w % 8 == 0) {
            /* refblock next to an L2 table */
            enter_c(m, 16, w * WIN + 8, 1, RB);
        }
    }
    for (w = 0; w < 1000; w++) {
        g_assert_cmpint(form(m, w), ==, w % 8 ? QCOW2_OVERLAP_WINDOW_INLINE :
                                                QCOW2_OVERLAP_WINDOW_PAIR);
        g_assert_cmpuint(check_c(m, 16, w * WIN + 6, 1, 0), ==, 0);
        g_assert_cmpuint(check_c(m, 16, w * WIN, 8, 0), ==, L2);
        g_assert_cmpuint(check_c(m, 16, w * WIN + 7, 2, 0), ==,
                         w % 8 ? L2 : L2 | RB);
        g_assert_cmpuint(check_c(m, 16, w * WIN + 7, 2, L2), ==,
                         w % 8 ? 0 : RB);
    }
    s = stats_of(m);
    g_assert_cmpuint(s.windows, ==, 1000);
    g_assert_cmpuint(s.fragments, ==, 1000 + 125);
    g_assert_cmpuint(s.list_to_bytemap, ==, 0);
    g_assert_cmpuint(s.cached_bytemaps, ==, 0);
    /*
     * 4 bytes per window, pair or not, plus the one leaf they share, as far
     * as its fourth chunk (windows 768..999)
     */
    g_assert_cmpuint(s.mem_current - base, ==,
                     1000 * SLOT_BYTES + LEAF_BYTES(4));
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_fragments_merge_up_to_256_clusters(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 1);
    unsigned c;

    for (c = 0; c < 600; c++) {
        enter_c(m, 9, c, 1, L2);
        if (c == 255) {
            assert_frags(m, 0, 1, (const unsigned[]){ 0, 256, L2 });
            g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_INLINE);
        }
    }
    assert_frags(m, 0, 3,
                 (const unsigned[]){ 0, 256, L2, 256, 256, L2, 512, 88, L2 });
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);

    make_list_window(m, 9, 5);
    /* answered in place */
    g_assert_cmpuint(check_c(m, 9, 5 * WIN, WIN, 0), ==, L2 | RB);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    touch(m, 9, 5);                                        /* evicts window 0 */
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpuint(stats_of(m).bytemap_to_list, ==, 1);
    g_assert_cmpuint(stats_of(m).fragments, ==, 3 + 3);

    /* a hole splits, and the pieces are re-cut from the left */
    remove_c(m, 9, 300, 1, L2);
    assert_frags(m, 0, 4, (const unsigned[]){ 0, 256, L2, 256, 44, L2,
                                              301, 256, L2, 557, 43, L2 });
    enter_c(m, 9, 600, 1, RB);
    enter_c(m, 9, 300, 1, L2);
    assert_frags(m, 0, 4, (const unsigned[]){ 0, 256, L2, 256, 256, L2,
                                              512, 88, L2, 600, 1, RB });
    /* touching fragments with different masks stay apart */
    enter_c(m, 9, 601, 2, L2 | RB);
    enter_c(m, 9, 603, 1, RB);
    assert_frags(m, 0, 6, (const unsigned[]){ 0, 256, L2, 256, 256, L2,
                                              512, 88, L2, 600, 1, RB,
                                              601, 2, L2 | RB, 603, 1, RB });
    /* a run of exactly 512 is two full fragments, not three */
    remove_c(m, 9, 0, WIN, QCOW2_OL_ALL);
    enter_c(m, 9, 1000, 512, L2);
    assert_frags(m, 0, 2, (const unsigned[]){ 1000, 256, L2, 1256, 256, L2 });
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_evicted_dirty_bytemap_becomes_list(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);
    Qcow2MetadataMapStats s;

    make_list_window(m, 16, 0);
    make_list_window(m, 16, 1);
    touch(m, 16, 0);
    g_assert_cmpuint(check_c(m, 16, 0, 11, 0), ==, L2);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    /* clean: list still held */
    g_assert_cmpuint(stats_of(m).fragments, ==, 6);
    enter_c(m, 16, 40, 3, QCOW2_OL_INACTIVE_L2);
    /* dirty: stale list freed */
    g_assert_cmpuint(stats_of(m).fragments, ==, 3);

    touch(m, 16, 1);                                    /* evicts window 0 */
    g_assert_cmpuint(check_c(m, 16, WIN + 30, 1, 0), ==, RB);
    s = stats_of(m);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(s.list_to_bytemap, ==, 2);
    g_assert_cmpuint(s.bytemap_to_list, ==, 1);
    g_assert_cmpuint(s.bytemaps_freed, ==, 1);
    g_assert_cmpuint(s.cached_bytemaps, ==, 1);
    g_assert_cmpuint(s.fragments, ==, 4 + 3);
    assert_frags(m, 0, 4, (const unsigned[]){ 10, 1, L2, 20, 1, L2, 30, 1, RB,
                                              40, 3, QCOW2_OL_INACTIVE_L2 });
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_evicted_clean_bytemap_is_dropped(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);
    Qcow2MetadataMapStats s;
    int i;

    make_list_window(m, 16, 0);
    make_list_window(m, 16, 1);
    /* entering what is already there does not dirty the bytemap */
    for (i = 0; i < 5; i++) {
        touch(m, 16, 0);
        g_assert_cmpuint(check_c(m, 16, 0, WIN, 0), ==, L2 | RB);
        touch(m, 16, 1);
        g_assert_cmpuint(check_c(m, 16, WIN, WIN, RB), ==, L2);
    }
    g_assert_cmpuint(check_c(m, 16, 0, 1, 0), ==, 0);
    s = stats_of(m);
    g_assert_cmpuint(s.list_to_bytemap, ==, 10);
    g_assert_cmpuint(s.bytemaps_freed, ==, 9);
    g_assert_cmpuint(s.bytemap_to_list, ==, 0);
    g_assert_cmpuint(s.fragments, ==, 6);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_flush_writes_back_and_empties_cache(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 4);
    Qcow2MetadataMapStats s;
    uint64_t w;
    unsigned c;

    for (w = 0; w < 3; w++) {
        make_list_window(m, 9, w);
    }
    touch(m, 9, 0);                             /* clean */
    enter_c(m, 9, WIN + 40, 2, L2);             /* dirty */
    for (c = 0; c < WIN; c += 2) {     /* permanent once evicted */
        enter_c(m, 9, 3 * WIN + c, 1, RB);
    }
    qcow2_metadata_map_reset_counters(m);
    qcow2_metadata_map_flush(m);
    s = stats_of(m);
    g_assert_cmpuint(s.bytemap_to_list, ==, 1);
    g_assert_cmpuint(s.bytemaps_freed, ==, 2);
    g_assert_cmpuint(s.cached_bytemaps, ==, 1);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 3), ==, QCOW2_OVERLAP_WINDOW_PERMANENT);
    assert_frags(m, 1, 4, (const unsigned[]){ 10, 1, L2, 20, 1, L2, 30, 1, RB,
                                              40, 2, L2 });
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_lru_evicts_least_recently_used(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 2);
    uint64_t w;
    int i;

    for (w = 0; w < 3; w++) {
        make_list_window(m, 16, w);
    }
    touch(m, 16, 0);                    /* A */
    touch(m, 16, 1);                    /* B */
    touch(m, 16, 0);                    /* A again: B is now the oldest */
    touch(m, 16, 2);                    /* C evicts B */
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 2), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 3);
    check_c(m, 16, 0, 1, 0);            /* hit: no conversion */
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 3);
    g_assert_cmpuint(stats_of(m).cached_bytemaps, ==, 2);

    /* the LRU orders edits: checking A does not save it from eviction */
    for (i = 0; i < 3; i++) {
        g_assert_cmpuint(check_c(m, 16, 0, WIN, 0), ==, L2 | RB);
    }
    touch(m, 16, 1);                    /* B evicts A, the oldest edit */
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpint(form(m, 2), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 4);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_dense_window_stays_bytemap_outside_lru(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 1);
    Qcow2MetadataMapStats s;
    unsigned c;

    for (c = 0; c < WIN; c += 2) {
        enter_c(m, 9, c, 1, L2);
        if (c == 2) {
            g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_PAIR);
        }
    }
    g_assert_cmpuint(qcow2_metadata_map_window_fragments(m, 0, NULL, 0), ==,
                     2048);
    make_list_window(m, 9, 1);
    touch(m, 9, 1);                    /* evicts window 0: too many fragments */
    s = stats_of(m);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_PERMANENT);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(s.cached_bytemaps, ==, 2);
    g_assert_cmpuint(s.list_to_bytemap, ==, 2);
    g_assert_cmpuint(s.bytemap_to_list, ==, 0);
    g_assert_cmpuint(s.bytemaps_freed, ==, 0);
    g_assert_cmpuint(check_c(m, 9, 1, 1, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 9, 4094, 1, 0), ==, L2);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 2);

    /* thinned out, it rejoins the LRU and becomes a list when evicted */
    remove_c(m, 9, 20, WIN - 20, L2);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_LIST);
    touch(m, 9, 1);
    s = stats_of(m);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpuint(qcow2_metadata_map_window_fragments(m, 0, NULL, 0), ==,
                     10);
    g_assert_cmpuint(s.bytemap_to_list, ==, 1);
    g_assert_cmpuint(s.bytemaps_freed, ==, 2);
    g_assert_cmpuint(s.cached_bytemaps, ==, 1);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_bitmap_directory_type_is_checked(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);
    uint64_t base = stats_of(m).mem_current;

    enter_c(m, 16, 1000, 3, BD);
    g_assert_cmpuint(check_c(m, 16, 1001, 1, 0), ==, BD);
    g_assert_cmpuint(check_c(m, 16, 990, 11, 0), ==, BD);
    g_assert_cmpuint(check_c(m, 16, 990, 10, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 16, 1003, 1, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 16, 1000, 3, BD), ==, 0);
    g_assert_cmpuint(check_c(m, 16, 0, 1 << 20, QCOW2_OL_ALL & ~BD), ==, BD);
    /* it costs neither a window nor a conversion */
    g_assert_cmpuint(stats_of(m).windows, ==, 0);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 0);

    enter_c(m, 16, 1001, 1, L2);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 1001), ==, L2 | BD);
    g_assert_cmpuint(check_c(m, 16, 1001, 1, 0), ==, L2 | BD);
    g_assert_cmpuint(check_c(m, 16, 1001, 1, L2), ==, BD);
    g_assert_cmpuint(check_c(m, 16, 1001, 1, BD), ==, L2);
    remove_c(m, 16, 1001, 1, BD);                    /* punches a hole */
    g_assert_cmpuint(check_c(m, 16, 1001, 1, 0), ==, L2);
    g_assert_cmpuint(check_c(m, 16, 1002, 1, 0), ==, BD);
    remove_c(m, 16, 1001, 1, L2);

    /* every type at once, on one cluster */
    enter_c(m, 16, 77, 1, QCOW2_OL_ALL);
    g_assert_cmpuint(qcow2_metadata_map_get(m, 77), ==, QCOW2_OL_ALL);
    g_assert_cmpuint(check_c(m, 16, 77, 1, 0), ==, QCOW2_OL_ALL);
    g_assert_cmpuint(check_c(m, 16, 77, 1, QCOW2_OL_MAIN_HEADER), ==,
                     QCOW2_OL_ALL - 1);
    remove_c(m, 16, 0, 1 << 20, QCOW2_OL_ALL);
    g_assert_cmpuint(check_c(m, 16, 0, 1 << 20, 0), ==, 0);
    g_assert_cmpuint(stats_of(m).mem_current, ==, base);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_far_offset_uses_bounded_memory(void)
{
    unsigned cb;

    for (cb = 9; cb <= 21; cb++) {
        Qcow2MetadataMap *m = qcow2_metadata_map_new(cb, 0);
        uint64_t base = stats_of(m).mem_current, far = UINT64_C(1) << 55, used;
        uint64_t last = QCOW2_OVERLAP_MAX_BYTES - (UINT64_C(1) << cb);

        qcow2_metadata_map_enter(m, far, 1, L2);
        used = stats_of(m).mem_current - base;
        g_test_message("cluster_bits %u: one cluster at 2^55 costs %" PRIu64
                       " bytes", cb, used);
        g_assert_cmpuint(used, <, 4096);
        g_assert_cmpuint(qcow2_metadata_map_get(m, far >> cb), ==, L2);
        g_assert_cmpuint(qcow2_metadata_map_check(m, far - 1, 2, 0), ==, L2);
        g_assert_cmpuint(qcow2_metadata_map_check(m, far + (1 << cb), 1, 0), ==,
                         0);

        /* the last cluster below 2^56 is addressable too */
        qcow2_metadata_map_enter(m, last, UINT64_C(1) << cb, RB);
        g_assert_cmpuint(
            qcow2_metadata_map_check(m, last, UINT64_C(1) << cb, 0), ==, RB);
        g_assert_cmpuint(
            qcow2_metadata_map_check(m, 0, QCOW2_OVERLAP_MAX_BYTES, 0), ==,
            L2 | RB);
        g_assert_cmpuint(stats_of(m).mem_current - base, <, 2 * 4096);
        qcow2_metadata_map_verify(m);
        qcow2_metadata_map_remove(m, far, 1, L2);
        qcow2_metadata_map_remove(m, last, 1, RB);
        g_assert_cmpuint(stats_of(m).mem_current, ==, base);
        qcow2_metadata_map_free(m);
    }
}

static void test_counters_match_operations(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(12, 3);
    Qcow2MetadataMapStats s;
    uint64_t mem;
    unsigned i;

    for (i = 0; i < 50; i++) {
        enter_c(m, 12, i * 97, 1 + i % 5, 1u << (i % 9));
    }
    for (i = 0; i < 20; i++) {
        remove_c(m, 12, i * 193, 3, QCOW2_OL_ALL);
    }
    for (i = 0; i < 70; i++) {
        check_c(m, 12, i * 61, 7, 0);
    }
    s = stats_of(m);
    g_assert_cmpuint(s.inserts, ==, 50);
    g_assert_cmpuint(s.removes, ==, 20);
    g_assert_cmpuint(s.queries, ==, 70);
    /* windows 0 and 1 each became lists, then were expanded once, and stayed */
    g_assert_cmpuint(s.list_to_bytemap, ==, 2);
    g_assert_cmpuint(s.cached_bytemaps, ==, 2);
    g_assert_cmpuint(s.bytemaps_freed, ==, 0);
    g_assert_cmpuint(s.windows, ==, 2);

    mem = s.mem_current;
    qcow2_metadata_map_reset_counters(m);
    s = stats_of(m);
    g_assert_cmpuint(s.inserts + s.removes + s.queries, ==, 0);
    g_assert_cmpuint(s.list_to_bytemap + s.bytemap_to_list + s.bytemaps_freed,
                     ==, 0);
    g_assert_cmpuint(s.mem_current, ==, mem);
    g_assert_cmpuint(s.mem_peak, ==, mem);
    g_assert_cmpuint(s.windows, ==, 2);
    g_assert_cmpuint(s.cached_bytemaps, ==, 2);
    check_c(m, 12, 0, 1, 0);
    g_assert_cmpuint(stats_of(m).queries, ==, 1);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_memory_returns_to_baseline_after_remove(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 2);
    uint64_t base = stats_of(m).mem_current;
    Qcow2MetadataMapStats s;
    uint64_t w;
    unsigned c;

    for (w = 0; w < 40; w++) {                 /* lists, pairs, inline */
        for (c = 0; c < w % 7; c++) {
            enter_c(m, 9, w * WIN + c * 3, 1, 1u << (c % 8));
        }
        check_c(m, 9, w * WIN, WIN, 0);
    }
    for (c = 0; c < WIN; c += 2) {             /* a permanent bytemap */
        enter_c(m, 9, 50 * WIN + c, 1, RB);
    }
    make_list_window(m, 9, 51);
    make_list_window(m, 9, 52);
    touch(m, 9, 51);
    touch(m, 9, 52);                                    /* evicts window 50 */
    /* far away, several leaves up */
    enter_c(m, 9, (UINT64_C(1) << 46) + 5, 1000, L2);
    enter_c(m, 9, 123, 4, BD);
    s = stats_of(m);
    g_assert_cmpint(form(m, 50), ==, QCOW2_OVERLAP_WINDOW_PERMANENT);
    g_assert_cmpuint(s.cached_bytemaps, ==, 3);
    qcow2_metadata_map_verify(m);

    qcow2_metadata_map_remove(m, 0, QCOW2_OVERLAP_MAX_BYTES, QCOW2_OL_ALL);
    s = stats_of(m);
    g_assert_cmpuint(s.mem_current, ==, base);
    g_assert_cmpuint(s.windows, ==, 0);
    g_assert_cmpuint(s.fragments, ==, 0);
    g_assert_cmpuint(s.cached_bytemaps, ==, 0);
    g_assert_cmpuint(s.mem_peak, >, base + 3 * 4096);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

/*
 * A qcow2 file grown by sequential guest writes: header, refcount table and
 * L1 table first, then an L2 table before every CS/8 data clusters and a
 * refcount block at the start of every CS/2 clusters it describes.
 */
static uint64_t build_grown_image(Qcow2MetadataMap *m, unsigned cb,
                                  uint64_t virt_size)
{
    uint64_t cs = UINT64_C(1) << cb, per_l2 = cs / 8, per_rb = cs / 2;
    uint64_t l2s = virt_size / cs / per_l2;
    uint64_t rbs = (virt_size / cs * 9 / 8) / per_rb + 2;
    uint64_t l1_clusters = (l2s * 8 + cs - 1) / cs,
             rt_clusters = (rbs * 8 + cs - 1) / cs;
    uint64_t pos = 0, next_rb = 0;
    uint64_t i;

    enter_c(m, cb, pos++, 1, QCOW2_OL_MAIN_HEADER);
    enter_c(m, cb, pos, rt_clusters, QCOW2_OL_REFCOUNT_TABLE);
    pos += rt_clusters;
    enter_c(m, cb, pos, l1_clusters, QCOW2_OL_ACTIVE_L1);
    pos += l1_clusters;
    for (i = 0; i < l2s; i++) {
        uint64_t end;

        for (end = pos + 1 + per_l2; next_rb < end; next_rb += per_rb) {
            enter_c(m, cb, next_rb < pos ? pos++ : next_rb, 1,
                    QCOW2_OL_REFCOUNT_BLOCK);
        }
        enter_c(m, cb, pos++, 1, QCOW2_OL_ACTIVE_L2);
        pos += per_l2;
    }
    return pos << cb;
}

/*
 * The map at rest (flushed) against the 2014 estimate of 40 * IS / CS^2
 * bytes.  The allowances are the documented fixed costs (leaves, pool
 * headers, the map: 1.4-2.4 KiB), which only matter when the whole
 * estimate is 10-20 KiB.
 */
static void test_memory_within_2014_estimate(void)
{
    unsigned i;

    static const struct {
        unsigned cb;
        uint64_t size;
        double factor;
        uint64_t fixed;
    } cases[] = {
        { 9, UINT64_C(2) << 30, 1.0, 0 },
        { 12, UINT64_C(8) << 30, 1.0, 1536 },
        { 16, UINT64_C(1) << 40, 1.0, 1024 },
        { 16, UINT64_C(1) << 50, 1.0, 0 },
    };

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        Qcow2MetadataMap *m = qcow2_metadata_map_new(cases[i].cb, 0);
        uint64_t host = build_grown_image(m, cases[i].cb, cases[i].size);
        uint64_t cs = UINT64_C(1) << cases[i].cb;
        double estimate = 40.0 * host / cs / cs;
        Qcow2MetadataMapStats s;
        uint64_t cache;

        qcow2_metadata_map_flush(m);     /* every list at rest */
        s = stats_of(m);
        g_assert_cmpuint(s.cached_bytemaps, ==, 0);
        cache = s.cached_bytemaps * (WIN + 40);

        g_test_message("cluster %" PRIu64 " B, host %" PRIu64 " MiB: %" PRIu64
                       " bytes + %" PRIu64
                       " in bytemaps, estimate %.0f (x%.3f)",
                       cs, host >> 20, s.mem_current - cache, cache, estimate,
                       (s.mem_current - cache) / estimate);
        g_assert_cmpfloat(s.mem_current - cache, <=,
                          estimate * cases[i].factor + cases[i].fixed);
        qcow2_metadata_map_verify(m);
        qcow2_metadata_map_free(m);
    }
}

/*
 * The exact OR of the types of clusters [c, c + n), from the per-cluster
 * introspection.
 */
static unsigned expected_types(const Qcow2MetadataMap *m, uint64_t c,
                               uint64_t n)
{
    unsigned t = 0;
    uint64_t i;

    for (i = 0; i < n; i++) {
        t |= qcow2_metadata_map_get(m, c + i);
    }
    return t;
}

/*
 * Checks of windows at rest are answered where they rest: no conversion,
 * no cache slot, no allocation, no change of form.  A grown image with
 * 512 B clusters has an L2 table every 65 clusters, which makes its
 * windows compact; with 4 KiB clusters they are lists.
 */
static void windows_answered_in_place(unsigned cb, uint64_t size,
                                      Qcow2OverlapWindowForm at_rest)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(cb, 1);
    uint64_t host = build_grown_image(m, cb, size), windows, mem, n = 0;
    uint64_t rng = 12345;
    Qcow2MetadataMapStats s;
    uint64_t w;
    unsigned i;

    qcow2_metadata_map_flush(m);
    windows = (host >> cb) / WIN;
    g_assert_cmpuint(windows, >=, 4);
    for (w = 0; w < windows; w++) {
        g_assert_cmpint(form(m, w), ==, at_rest);
    }
    qcow2_metadata_map_reset_counters(m);
    mem = stats_of(m).mem_current;
    for (i = 0; i < 20000; i++) {
        uint64_t a, len, r;

        rng =
            rng * UINT64_C(6364136223846793005) + UINT64_C(1442695040888963407);
        r = rng >> 16;
        w = r % windows;
        a = (r >> 8) % WIN;
        len = 1 + (r >> 20) % (i % 4 ? 16 : WIN);
        len = MIN(len, WIN - a);
        g_assert_cmpuint(check_c(m, cb, w * WIN + a, len, 0), ==,
                         expected_types(m, w * WIN + a, len) & 0xff);
        n++;
    }
    s = stats_of(m);
    g_assert_cmpuint(s.queries, ==, n);
    g_assert_cmpuint(s.list_queries, ==, n);
    g_assert_cmpuint(s.list_to_bytemap, ==, 0);
    g_assert_cmpuint(s.bytemap_to_list, ==, 0);
    g_assert_cmpuint(s.bytemaps_freed, ==, 0);
    g_assert_cmpuint(s.cached_bytemaps, ==, 0);
    g_assert_cmpuint(s.mem_current, ==, mem);
    g_assert_cmpuint(s.mem_peak, ==, mem);
    for (w = 0; w < windows; w++) {
        g_assert_cmpint(form(m, w), ==, at_rest);
    }

    /* an edit still expands its window, and a check then reads the bytemap */
    enter_c(m, cb, 3 * WIN + 1, 1, QCOW2_OL_INACTIVE_L2);
    g_assert_cmpint(form(m, 3), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(check_c(m, cb, 3 * WIN, 2, 0), ==,
                     expected_types(m, 3 * WIN, 2) & 0xff);
    g_assert_cmpuint(stats_of(m).list_queries, ==, n);
    g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 1);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_list_windows_answered_in_place(void)
{
    windows_answered_in_place(12, UINT64_C(128) << 20,
                              QCOW2_OVERLAP_WINDOW_LIST);
}

static void test_compact_windows_answered_in_place(void)
{
    windows_answered_in_place(9, UINT64_C(64) << 20,
                              QCOW2_OVERLAP_WINDOW_COMPACT);
}

/*
 * n lone structures spread over window 1, alternately L2 tables and
 * refcount blocks, and cluster 'both' holding both types; 'model' gets
 * the same content.  Returns the number of canonical fragments.
 */
static unsigned spread_window(Qcow2MetadataMap *m, unsigned n, unsigned both,
                              uint8_t *model)
{
    unsigned i;

    memset(model, 0, WIN);
    for (i = 0; i < n; i++) {
        unsigned c = i * (WIN / n), t = i % 2 ? RB : L2;

        enter_c(m, 9, WIN + c, 1, t);
        model[c] |= t;
    }
    if (both < WIN) {
        enter_c(m, 9, WIN + both, 1, L2 | RB);
        model[both] |= L2 | RB;
    }
    for (i = 0, n = 0; i < WIN; i++) {
        n += model[i] && (!i || model[i - 1] != model[i]);
    }
    return n;
}

/*
 * A window is compact at rest exactly when its entries (one per cluster
 * and type) take fewer words than its list and number at most 255 (F4),
 * and a compact window answers every cluster and range as the content
 * says: across its 64-cluster index buckets, at its first and last
 * cluster, and for a cluster of two types.
 */
static void test_compact_form_and_answers(void)
{
    static const struct {
        unsigned n, both;
        Qcow2OverlapWindowForm form;
    } cases[] = {
        /* 17 head words + 19 words of entries = 36 words, list 37 */
        { 38, WIN, QCOW2_OVERLAP_WINDOW_LIST },
        { 39, WIN, QCOW2_OVERLAP_WINDOW_COMPACT },
        { 80, 4095, QCOW2_OVERLAP_WINDOW_COMPACT },
        { 80, 0, QCOW2_OVERLAP_WINDOW_COMPACT },
        { 254, 0, QCOW2_OVERLAP_WINDOW_COMPACT },   /* 255 entries */
        { 255, 0, QCOW2_OVERLAP_WINDOW_LIST },      /* 256 entries */
        { 256, WIN, QCOW2_OVERLAP_WINDOW_LIST },
    };
    static uint8_t model[WIN];
    uint64_t rng = 99;
    unsigned i;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 1);
        uint64_t base = stats_of(m).mem_current;
        unsigned frags = spread_window(m, cases[i].n, cases[i].both, model);
        unsigned c, k;

        qcow2_metadata_map_flush(m);
        qcow2_metadata_map_verify(m);
        qcow2_metadata_map_reset_counters(m);
        g_assert_cmpint(form(m, 1), ==, cases[i].form);
        g_assert_cmpuint(stats_of(m).fragments, ==, frags);
        for (c = 0; c < WIN; c++) {
            g_assert_cmpuint(check_c(m, 9, WIN + c, 1, 0), ==, model[c]);
            g_assert_cmpuint(check_c(m, 9, WIN + c, 1, L2), ==,
                             model[c] & ~L2);
            g_assert_cmpuint(qcow2_metadata_map_get(m, WIN + c), ==,
                             model[c]);
        }
        for (k = 0; k < 4000; k++) {
            unsigned a, len, want = 0;

            rng = rng * UINT64_C(6364136223846793005) +
                  UINT64_C(1442695040888963407);
            a = (rng >> 20) % WIN;
            len = 1 + (rng >> 40) % (k % 8 ? 200 : WIN);
            len = MIN(len, WIN - a);
            for (c = a; c < a + len; c++) {
                want |= model[c];
            }
            g_assert_cmpuint(check_c(m, 9, WIN + a, len, 0), ==, want);
        }
        g_assert_cmpuint(check_c(m, 9, 0, 3 * WIN, 0), ==, L2 | RB);
        g_assert_cmpuint(stats_of(m).list_to_bytemap, ==, 0);
        g_assert_cmpint(form(m, 1), ==, cases[i].form);

        /* an edit expands it; the write-back stores the same form again */
        enter_c(m, 9, WIN + 1, 1, L2);
        model[1] |= L2;
        g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_CACHED);
        remove_c(m, 9, WIN + 1, 1, L2);
        model[1] &= ~L2;
        qcow2_metadata_map_flush(m);
        qcow2_metadata_map_verify(m);
        g_assert_cmpint(form(m, 1), ==, cases[i].form);
        for (c = 0; c < WIN; c++) {
            g_assert_cmpuint(check_c(m, 9, WIN + c, 1, 0), ==, model[c]);
        }
        remove_c(m, 9, 0, 3 * WIN, QCOW2_OL_ALL);
        g_assert_cmpuint(stats_of(m).mem_current, ==, base);
        g_assert_cmpuint(stats_of(m).fragments, ==, 0);
        qcow2_metadata_map_verify(m);
        qcow2_metadata_map_free(m);
    }
}

/*
 * The lists of one pool group are found by the offset in their slot and
 * the length marked in their first words: short and long (>= 15) lists,
 * a list that grows and shrinks in the middle of the group, and lists that
 * come and go around it.
 */
/*
 * The check memo outlives edits that change only the bytes of a cached
 * bytemap, and no other: checks after in-place edits must see the new
 * bytes, and checks after an eviction, a drop or a dense window's return
 * to the LRU must not read what the memo held before (ASan would see a
 * freed bytemap).
 */
/*
 * A leaf holds chunks only up to its last one in use.  It grows when a
 * window appears in a later chunk and shrinks when its last chunk empties;
 * a check that looked at the leaf before must see the change.
 */
static void test_leaf_sized_to_last_chunk(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);
    uint64_t base = stats_of(m).mem_current;
    const uint64_t chunk = 256 * (uint64_t)WIN;     /* clusters per chunk */

    enter_c(m, 16, 5, 1, L2);
    g_assert_cmpuint(stats_of(m).mem_current - base, ==,
                     LEAF_BYTES(1) + SLOT_BYTES);
    /* a check sets the leaf memo while the leaf has one chunk */
    g_assert_cmpuint(check_c(m, 16, 9 * chunk + 3, 1, 0), ==, 0);

    enter_c(m, 16, 9 * chunk + 3, 1, RB);
    g_assert_cmpuint(stats_of(m).mem_current - base, ==,
                     LEAF_BYTES(10) + 2 * SLOT_BYTES);
    g_assert_cmpuint(check_c(m, 16, 9 * chunk + 3, 1, 0), ==, RB);
    g_assert_cmpuint(check_c(m, 16, 5, 1, 0), ==, L2);
    g_assert_cmpuint(check_c(m, 16, 0, 16 * chunk, 0), ==, L2 | RB);
    qcow2_metadata_map_verify(m);

    enter_c(m, 16, 4 * chunk, 1, L2);
    qcow2_metadata_map_remove(m, (9 * chunk + 3) << 16, 1 << 16, RB);
    /* the last chunk in use is now chunk 4 */
    g_assert_cmpuint(stats_of(m).mem_current - base, ==,
                     LEAF_BYTES(5) + 2 * SLOT_BYTES);
    g_assert_cmpuint(check_c(m, 16, 9 * chunk + 3, 1, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 16, 4 * chunk, 1, 0), ==, L2);
    qcow2_metadata_map_verify(m);

    qcow2_metadata_map_remove(m, (4 * chunk) << 16, 1 << 16, L2);
    g_assert_cmpuint(stats_of(m).mem_current - base, ==,
                     LEAF_BYTES(1) + SLOT_BYTES);
    g_assert_cmpuint(check_c(m, 16, 4 * chunk, 1, 0), ==, 0);
    qcow2_metadata_map_remove(m, 5 << 16, 1 << 16, L2);
    g_assert_cmpuint(stats_of(m).mem_current, ==, base);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

/*
 * A check past every cluster entered is answered before any lookup, so
 * each enter must move that end: structures appended one after another,
 * across windows, of the high types, and after the last one was removed,
 * are all found again right after they are entered.
 */
static void test_growth_end_moves_with_enters(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 2);
    uint64_t c;

    for (c = 100; c < 3 * WIN; c += 65) {
        g_assert_cmpuint(check_c(m, 9, c, 1, 0), ==, 0);
        enter_c(m, 9, c, 1, L2);
        g_assert_cmpuint(check_c(m, 9, c, 1, 0), ==, L2);
        g_assert_cmpuint(check_c(m, 9, c + 1, 64, 0), ==, 0);
        g_assert_cmpuint(check_c(m, 9, c - 1, 3, L2), ==, 0);
    }
    qcow2_metadata_map_verify(m);

    /* one enter across windows: its last cluster is found */
    enter_c(m, 9, 4 * WIN - 10, 20, RB);
    g_assert_cmpuint(check_c(m, 9, 4 * WIN + 9, 1, 0), ==, RB);
    g_assert_cmpuint(check_c(m, 9, 4 * WIN + 10, 1, 0), ==, 0);

    /* the bitmap directory lives outside the windows */
    enter_c(m, 9, 9 * WIN + 7, 2, BD);
    g_assert_cmpuint(check_c(m, 9, 9 * WIN + 8, 1, 0), ==, BD);
    qcow2_metadata_map_verify(m);

    /* the end stays where it was after a remove, and grows again after */
    remove_c(m, 9, 9 * WIN + 7, 2, BD);
    g_assert_cmpuint(check_c(m, 9, 9 * WIN + 8, 1, 0), ==, 0);
    enter_c(m, 9, 5 * WIN, 1, L2);          /* below the old end */
    g_assert_cmpuint(check_c(m, 9, 5 * WIN, 1, 0), ==, L2);
    enter_c(m, 9, 12 * WIN, 1, RB);
    g_assert_cmpuint(check_c(m, 9, 12 * WIN - 1, 2, 0), ==, RB);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

/*
 * The last enter past meta_end leaves two claims: its own range holds only
 * its types, and the clusters it skipped hold none.  A later enter inside
 * either must break it, or a write would be let through onto metadata.
 */
static void test_claims_break_on_enter(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 16);

    enter_c(m, 9, 0, 1, QCOW2_OL_MAIN_HEADER);
    enter_c(m, 9, 100, 4, L2);              /* skips clusters 1..99 */
    g_assert_cmpuint(check_c(m, 9, 100, 4, L2), ==, 0);
    g_assert_cmpuint(check_c(m, 9, 100, 4, 0), ==, L2);
    g_assert_cmpuint(check_c(m, 9, 1, 99, 0), ==, 0);
    qcow2_metadata_map_verify(m);

    /* a refcount block in the gap, then one in the fresh range */
    enter_c(m, 9, 50, 1, RB);
    g_assert_cmpuint(check_c(m, 9, 40, 20, 0), ==, RB);
    g_assert_cmpuint(check_c(m, 9, 50, 1, L2), ==, RB);
    enter_c(m, 9, 102, 1, RB);
    g_assert_cmpuint(check_c(m, 9, 100, 4, L2), ==, RB);
    g_assert_cmpuint(check_c(m, 9, 102, 1, L2), ==, RB);
    qcow2_metadata_map_verify(m);

    /* an enter of the claim's own type keeps it */
    enter_c(m, 9, 200, 8, L2);
    enter_c(m, 9, 203, 2, L2);
    g_assert_cmpuint(check_c(m, 9, 200, 8, L2), ==, 0);
    g_assert_cmpuint(check_c(m, 9, 150, 40, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 9, 150, 51, 0), ==, L2);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

/*
 * The check memo of a cached window survives edits elsewhere, and must not
 * survive the window losing its bytemap: with a cache of one, loading
 * another window evicts it, and the new bytemap may take the old one's
 * memory and handle.
 */
static void test_check_memo_of_evicted_bytemap(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);

    make_list_window(m, 16, 0);
    make_list_window(m, 16, 1);
    enter_c(m, 16, 40, 1, QCOW2_OL_ACTIVE_L1);  /* window 0 cached */
    enter_c(m, 16, WIN + 40, 1, RB);            /* window 1 cached */
    touch(m, 16, 0);
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(check_c(m, 16, 40, 1, 0), ==, QCOW2_OL_ACTIVE_L1);
    enter_c(m, 16, 5 * WIN, 1, L2);         /* a new window elsewhere */
    g_assert_cmpuint(check_c(m, 16, 40, 1, 0), ==, QCOW2_OL_ACTIVE_L1);
    touch(m, 16, 1);                        /* evicts window 0 */
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpuint(check_c(m, 16, 40, 1, 0), ==, QCOW2_OL_ACTIVE_L1);
    g_assert_cmpuint(check_c(m, 16, WIN + 40, 1, 0), ==, RB);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_check_memo_follows_edits(void)
{
    Qcow2MetadataMap *m = qcow2_metadata_map_new(16, 1);
    unsigned i;

    make_list_window(m, 16, 0);
    make_list_window(m, 16, 1);
    enter_c(m, 16, 50, 1, L2);              /* window 0 cached and dirty */
    g_assert_cmpuint(check_c(m, 16, 60, 1, 0), ==, 0);
    enter_c(m, 16, 60, 2, RB);              /* in place: the memo stays */
    g_assert_cmpuint(check_c(m, 16, 61, 1, 0), ==, RB);
    g_assert_cmpuint(check_c(m, 16, 55, 10, RB), ==, 0);
    remove_c(m, 16, 60, 2, RB);
    g_assert_cmpuint(check_c(m, 16, 60, 2, 0), ==, 0);
    g_assert_cmpuint(check_c(m, 16, 50, 1, 0), ==, L2);
    qcow2_metadata_map_verify(m);

    touch(m, 16, 1);                        /* evicts window 0 to a list */
    g_assert_cmpint(form(m, 0), ==, QCOW2_OVERLAP_WINDOW_LIST);
    g_assert_cmpuint(check_c(m, 16, 50, 1, 0), ==, L2);
    g_assert_cmpuint(check_c(m, 16, 60, 1, 0), ==, 0);
    qcow2_metadata_map_verify(m);

    /* window 1's last clusters go: its bytemap is freed with the window */
    g_assert_cmpuint(check_c(m, 16, WIN + 30, 1, 0), ==, RB);
    remove_c(m, 16, WIN, WIN, L2 | RB);
    g_assert_cmpint(form(m, 1), ==, QCOW2_OVERLAP_WINDOW_EMPTY);
    g_assert_cmpuint(check_c(m, 16, WIN + 30, 1, 0), ==, 0);
    qcow2_metadata_map_verify(m);

    /* a permanent bytemap back into the LRU, evicting window 0's */
    for (i = 0; i < WIN; i += 2) {
        enter_c(m, 16, 2 * WIN + i, 1, L2);
    }
    touch(m, 16, 0);
    g_assert_cmpint(form(m, 2), ==, QCOW2_OVERLAP_WINDOW_PERMANENT);
    g_assert_cmpuint(check_c(m, 16, 2 * WIN + 2, 1, 0), ==, L2);
    enter_c(m, 16, 2 * WIN + 1, 1, RB);
    g_assert_cmpint(form(m, 2), ==, QCOW2_OVERLAP_WINDOW_CACHED);
    g_assert_cmpuint(check_c(m, 16, 2 * WIN + 1, 1, 0), ==, RB);
    g_assert_cmpuint(check_c(m, 16, 50, 1, 0), ==, L2);
    qcow2_metadata_map_verify(m);
    qcow2_metadata_map_free(m);
}

static void test_pool_lists_found_by_offset(void)
{
    static const unsigned sizes[16] = {
        3, 20, 0, 300, 1, 14, 15, 16, 2, 255, 1000, 0, 4, 7, 50, 3,
    };
    Qcow2MetadataMap *m = qcow2_metadata_map_new(9, 1);
    uint64_t base = 32;         /* windows 32..47: pool group 2 of chunk 0 */
    unsigned i;
    int round;

    for (i = 0; i < 16; i++) {
        unsigned k;

        for (k = 0; k < sizes[i]; k++) {
            enter_c(m, 9, (base + i) * WIN + 4 * k, 1 + k % 2, 1u << (k % 8));
        }
    }
    qcow2_metadata_map_flush(m);
    qcow2_metadata_map_verify(m);
    for (round = 0; round < 6; round++) {
        uint64_t w = base + (round % 2 ? 3 : 10);

        /* grow, shrink or empty a long list in the middle of the group */
        if (round < 2) {
            unsigned k;

            for (k = 0; k < 200; k++) {
                enter_c(m, 9, w * WIN + 4 * k + 2, 1, RB);
            }
        } else if (round < 4) {
            remove_c(m, 9, w * WIN + 100, WIN - 100, QCOW2_OL_ALL);
        } else {
            /* 34 and 43 were empty: a list appears next to one that goes */
            remove_c(m, 9, w * WIN, WIN, QCOW2_OL_ALL);
            make_list_window(m, 9, base + (round == 4 ? 2 : 11));
        }
        qcow2_metadata_map_flush(m);
        qcow2_metadata_map_verify(m);
        for (i = 0; i < 16; i++) {
            unsigned c;

            for (c = 0; c < WIN; c += 37) {
                uint64_t at = (base + i) * WIN + c;
                g_assert_cmpuint(check_c(m, 9, at, 3, 0), ==,
                                 expected_types(m, at, 3) & 0xff);
            }
        }
    }
    g_assert_cmpuint(stats_of(m).cached_bytemaps, ==, 0);
    qcow2_metadata_map_free(m);
}

/* ---- random operations against a per-cluster model ---------------------- */

#define ZONE_CLUSTERS (5 * WIN + 1234)

typedef struct Zone {
    uint64_t base;          /* first cluster */
    uint16_t *m;            /* model: type bits per cluster */
} Zone;

typedef struct Fuzz {
    uint64_t rng, seed;
    unsigned cache, cb, round;
    uint64_t ops, checks, permanent_seen, compact_seen;
    Qcow2MetadataMap *map;
    Zone zone[2];
    unsigned hot_zone;
    uint64_t hot, last[2];
} Fuzz;

static uint64_t rnd64(Fuzz *f)
{
    /* splitmix64: tiny, fast, and the same on every platform */
    uint64_t z = (f->rng += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t rnd(Fuzz *f, uint64_t n)
{
    return rnd64(f) % n;
}

#define FUZZ_ASSERT(f, a, cmp, b) do {                                         \
        uint64_t a_ = (a), b_ = (b);                                           \
        if (!(a_ cmp b_)) {                                                    \
            g_test_message("disagreement: QGUARD_TEST_SEED=%" PRIu64           \
                           " cache %u round %u cluster_bits %u op %" PRIu64,   \
                           (f)->seed, (f)->cache, (f)->round, (f)->cb,         \
                           (f)->ops);                                          \
            g_assert_cmpuint(a_, cmp, b_);                                     \
        }                                                                      \
    } while (0)

static uint64_t clamp_zone(int64_t a)
{
    return a < 0 ? 0 : a >= ZONE_CLUSTERS ? ZONE_CLUSTERS - 1 : (uint64_t)a;
}

/* A range biased toward window boundaries, fragment caps and the last edit. */
static void pick_range(Fuzz *f, unsigned *z, uint64_t *a, uint64_t *len)
{
    unsigned r = rnd(f, 100), l = rnd(f, 1000);
    Zone *zone;

    *z = rnd(f, 100) < 75 ? f->hot_zone : rnd(f, 2);
    zone = &f->zone[*z];
    if (r < 30) {
        uint64_t first_boundary = (WIN - zone->base % WIN) % WIN;
        *a = clamp_zone(first_boundary + WIN * rnd(f, 6) + rnd(f, 601) - 300);
    } else if (r < 50) {
        *a = clamp_zone(f->last[rnd(f, 2)] + rnd(f, 41) - 20);
    } else if (r < 85) {
        *a = clamp_zone(f->hot + rnd(f, 1024) - 512);
    } else {
        *a = rnd(f, ZONE_CLUSTERS);
    }
    if (l < 400) {
        *len = 1;
    } else if (l < 650) {
        *len = 2 + rnd(f, 15);
    } else if (l < 900) {
        *len = 17 + rnd(f, 240);
    } else if (l < 970) {
        *len = 250 + rnd(f, 300);                      /* around the 256 cap */
    } else if (l < 995) {
        *len = 500 + rnd(f, 4000);
    } else {
        *len = 4000 + rnd(f, 9000);                    /* several windows */
    }
    *len = MIN(*len, ZONE_CLUSTERS - *a);
    f->last[0] = *a;
    f->last[1] = *a + *len;
}

static unsigned pick_types(Fuzz *f)
{
    unsigned r = rnd(f, 100);

    if (r < 50) {
        return 1u << rnd(f, QCOW2_OL_MAX_BITNR);
    } else if (r < 70) {
        return 1u << rnd(f, QCOW2_OL_MAX_BITNR) |
               1u << rnd(f, QCOW2_OL_MAX_BITNR);
    } else if (r < 78) {
        return BD | (unsigned)rnd(f, 4);
    } else if (r < 93) {
        return 1 + rnd(f, QCOW2_OL_ALL);
    }
    return QCOW2_OL_ALL;
}

/*
 * Byte range for clusters [c, c + n), with random slack inside the end
 * clusters.
 */
static void cluster_bytes(Fuzz *f, uint64_t c, uint64_t n, uint64_t *off,
                          uint64_t *bytes)
{
    uint64_t cs = UINT64_C(1) << f->cb, r0 = 0, r1 = 0;

    if (rnd(f, 3)) {
        r0 = rnd(f, cs);
        r1 = rnd(f, cs);
        if (n == 1 && r0 + r1 >= cs) {
            r1 = cs - 1 - r0;
        }
    }
    *off = (c << f->cb) + r0;
    *bytes = (n << f->cb) - r0 - r1;
}

/* Canonical fragments of a bytemap, computed the obvious way. */
static unsigned model_frags(const uint8_t *b, Qcow2OverlapFragment *out)
{
    unsigned n = 0;
    unsigned i;

    for (i = 0; i < WIN;) {
        unsigned j = i + 1;
        if (!b[i]) {
            i++;
            continue;
        }
        while (j < WIN && j - i < 256 && b[j] == b[i]) {
            j++;
        }
        out[n++] = (Qcow2OverlapFragment){ i, j - i, b[i] };
        i = j;
    }
    return n;
}

/* Compare every cluster and every window's canonical list of a zone. */
static void compare_zone(Fuzz *f, Zone *z)
{
    static Qcow2OverlapFragment got[WIN], exp[WIN];
    static uint8_t bytes[WIN];
    uint64_t first_w = z->base / WIN,
             last_w = (z->base + ZONE_CLUSTERS - 1) / WIN;
    uint64_t w, i;

    for (w = first_w; w <= last_w; w++) {
        unsigned n, ne;

        for (i = 0; i < WIN; i++) {
            uint64_t c = w * WIN + i;
            bytes[i] = c >= z->base && c < z->base + ZONE_CLUSTERS ?
                       z->m[c - z->base] & 0xff : 0;
        }
        ne = model_frags(bytes, exp);
        n = qcow2_metadata_map_window_fragments(f->map, w, got, WIN);
        FUZZ_ASSERT(f, n, ==, ne);
        for (i = 0; i < n; i++) {
            FUZZ_ASSERT(f, got[i].start, ==, exp[i].start);
            FUZZ_ASSERT(f, got[i].len, ==, exp[i].len);
            FUZZ_ASSERT(f, got[i].types, ==, exp[i].types);
        }
        FUZZ_ASSERT(f, form(f->map, w) == QCOW2_OVERLAP_WINDOW_EMPTY, ==,
                    ne == 0);
        f->permanent_seen += form(f->map, w) == QCOW2_OVERLAP_WINDOW_PERMANENT;
        f->compact_seen += form(f->map, w) == QCOW2_OVERLAP_WINDOW_COMPACT;
    }
    for (i = 0; i < ZONE_CLUSTERS; i++) {
        uint64_t off = (z->base + i) << f->cb;

        /* high types per cluster: ignoring bits 0..7 leaves only them */
        FUZZ_ASSERT(f, qcow2_metadata_map_check(f->map, off, 1, 0xff), ==,
                    z->m[i] & ~0xffu);
    }
    for (i = 0; i < 64; i++) {
        uint64_t c = rnd(f, ZONE_CLUSTERS);
        FUZZ_ASSERT(f, qcow2_metadata_map_get(f->map, z->base + c), ==,
                    z->m[c]);
    }
}

static void fuzz_op(Fuzz *f)
{
    unsigned z, r = rnd(f, 100), types, ignore, expect = 0;
    uint64_t a, len, off, bytes;

    pick_range(f, &z, &a, &len);
    cluster_bytes(f, f->zone[z].base + a, len, &off, &bytes);
    types = pick_types(f);
    if (r < 36) {
        uint64_t i;

        qcow2_metadata_map_enter(f->map, off, bytes, types);
        for (i = a; i < a + len; i++) {
            f->zone[z].m[i] |= types;
        }
    } else if (r < 60) {
        uint64_t i;

        qcow2_metadata_map_remove(f->map, off, bytes, types);
        for (i = a; i < a + len; i++) {
            f->zone[z].m[i] &= ~types;
        }
    } else {
        uint64_t i;

        ignore = rnd(f, 3) ? 0 : types;
        for (i = a; i < a + len; i++) {
            expect |= f->zone[z].m[i];
        }
        FUZZ_ASSERT(f, qcow2_metadata_map_check(f->map, off, bytes, ignore), ==,
                    expect & ~ignore);
        f->checks++;
    }
    f->ops++;
}

/* Checkerboard one window so that it needs more than 1024 fragments. */
static void fuzz_dense_burst(Fuzz *f)
{
    unsigned z = rnd(f, 2);
    Zone *zone = &f->zone[z];
    uint64_t w = zone->base / WIN + 1 + rnd(f, 4);
    unsigned types[3] = { 1u << rnd(f, 8), 1u << rnd(f, 8), 1u << rnd(f, 8) };
    unsigned i;

    for (i = rnd(f, 2); i < WIN; i += 2) {
        uint64_t c = w * WIN + i;
        unsigned t = types[(i / 2) % 3];
        qcow2_metadata_map_enter(f->map, c << f->cb, UINT64_C(1) << f->cb, t);
        zone->m[c - zone->base] |= t;
        f->ops++;
    }
    f->hot_zone = z;
    f->hot = w * WIN - zone->base;
}

/*
 * Clear one window and put n lone structures of one type each into it, as
 * L2 tables and refcount blocks lie with small clusters: with 39..255 of
 * them the window is compact at rest.  Returns the window.
 */
static uint64_t fuzz_spread_burst(Fuzz *f, unsigned z, unsigned n)
{
    Zone *zone = &f->zone[z];
    uint64_t w = zone->base / WIN + 1 + rnd(f, 4), c;
    unsigned step = WIN / n, i;

    qcow2_metadata_map_remove(f->map, (w * WIN) << f->cb,
                              (uint64_t)WIN << f->cb, QCOW2_OL_ALL);
    for (c = w * WIN; c < (w + 1) * WIN; c++) {
        zone->m[c - zone->base] = 0;
    }
    for (i = 0; i < n; i++) {
        /* at least one free cluster between two of them */
        c = w * WIN + i * step + rnd(f, step - 1);
        qcow2_metadata_map_enter(f->map, c << f->cb, UINT64_C(1) << f->cb,
                                 1u << rnd(f, 8));
        zone->m[c - zone->base] = qcow2_metadata_map_get(f->map, c);
        f->ops++;
    }
    return w;
}

static void fuzz_round(Fuzz *f, uint64_t ops)
{
    uint64_t space = QCOW2_OVERLAP_MAX_BYTES >> f->cb, base_mem;
    Qcow2MetadataMapStats s;
    uint64_t i;

    /* 512 B clusters in a third of the rounds: the flat table */
    f->cb = rnd(f, 3) ? 9 + rnd(f, 13) : 9;
    space = QCOW2_OVERLAP_MAX_BYTES >> f->cb;
    f->map = qcow2_metadata_map_new(f->cb, f->cache);
    base_mem = stats_of(f->map).mem_current;
    f->zone[0].base = rnd(f, 2) ? 0 : rnd(f, 1 << 20);
    switch (rnd(f, 3)) {
    case 0:     /* straddling 2^55 bytes */
        f->zone[1].base = ((UINT64_C(1) << 55) >> f->cb) - rnd(f, 3 * WIN);
        break;
    case 1:     /* the very end of the address space */
        f->zone[1].base = space - ZONE_CLUSTERS;
        break;
    default:
        f->zone[1].base = (1 << 22) + rnd(f, space - (1 << 22) - ZONE_CLUSTERS);
        break;
    }
    for (i = 0; i < 2; i++) {
        memset(f->zone[i].m, 0, ZONE_CLUSTERS * sizeof(uint16_t));
    }
    f->hot_zone = 0;
    f->hot = rnd(f, ZONE_CLUSTERS);

    for (i = 0; i < ops; i++) {
        if (!rnd(f, 1500)) {
            f->hot_zone = rnd(f, 2);
            f->hot = rnd(f, ZONE_CLUSTERS);
        }
        if (!rnd(f, 10000)) {
            fuzz_dense_burst(f);
        }
        if (!rnd(f, 3000)) {
            fuzz_spread_burst(f, rnd(f, 2), 20 + rnd(f, 250));
        }
        if (!rnd(f, 5000)) {
            /* only permanent bytemaps stay */
            qcow2_metadata_map_flush(f->map);
        }
        fuzz_op(f);
        if (i % 4096 == 0) {
            int z;

            qcow2_metadata_map_verify(f->map);
            for (z = 0; z < 2; z++) {
                uint64_t w;

                for (w = 0; w <= ZONE_CLUSTERS / WIN + 1; w++) {
                    Qcow2OverlapWindowForm fw =
                        form(f->map, f->zone[z].base / WIN + w);

                    f->permanent_seen += fw == QCOW2_OVERLAP_WINDOW_PERMANENT;
                    f->compact_seen += fw == QCOW2_OVERLAP_WINDOW_COMPACT;
                }
            }
        }
    }
    qcow2_metadata_map_verify(f->map);
    compare_zone(f, &f->zone[0]);
    compare_zone(f, &f->zone[1]);

    /* everything removed: every byte must come back */
    for (i = 0; i < 2; i++) {
        qcow2_metadata_map_remove(f->map, f->zone[i].base << f->cb,
                                  (uint64_t)ZONE_CLUSTERS << f->cb,
                                  QCOW2_OL_ALL);
    }
    s = stats_of(f->map);
    FUZZ_ASSERT(f, s.mem_current, ==, base_mem);
    FUZZ_ASSERT(f, s.windows, ==, 0);
    FUZZ_ASSERT(f, s.fragments, ==, 0);
    FUZZ_ASSERT(f, s.cached_bytemaps, ==, 0);
    qcow2_metadata_map_verify(f->map);
    qcow2_metadata_map_free(f->map);
    f->map = NULL;
}

static uint64_t base_seed;

static void test_random_vs_model(gconstpointer data)
{
    Fuzz f = { .cache = GPOINTER_TO_UINT(data) };
    const char *env = g_getenv("QGUARD_TEST_OPS");
    uint64_t total = env ? g_ascii_strtoull(env, NULL, 0) : 3400000;
    uint64_t per_round = 40000;

    f.seed = base_seed;
    f.rng = base_seed ^ (UINT64_C(0x5851f42d4c957f2d) * f.cache);
    g_test_message("seed %" PRIu64 " (QGUARD_TEST_SEED=%" PRIu64
                   " replays it), cache %u",
                   base_seed, base_seed, f.cache);
    f.zone[0].m = g_new(uint16_t, ZONE_CLUSTERS);
    f.zone[1].m = g_new(uint16_t, ZONE_CLUSTERS);
    while (f.ops < total) {
        fuzz_round(&f, MIN(per_round, total - f.ops));
        f.round++;
    }
    g_test_message("%" PRIu64 " operations (%" PRIu64 " checks) in %u rounds, "
                   "%" PRIu64 " permanent bytemaps and %" PRIu64
                   " compact windows seen in samples, 0 disagreements",
                   f.ops, f.checks, f.round, f.permanent_seen,
                   f.compact_seen);
    g_free(f.zone[0].m);
    g_free(f.zone[1].m);
}

/*
 * Pure queries against the model, with a cache of one window and the map
 * flushed before every batch, so that every window is answered from its
 * form at rest: the conversion counters must stay at zero however the
 * queries fall (one window or many, ignore masks, the check memo).
 */
static void test_random_queries_at_rest(void)
{
    Fuzz f = { .cache = 1 };
    const char *env = g_getenv("QGUARD_TEST_OPS");
    uint64_t total = env ? g_ascii_strtoull(env, NULL, 0) / 4 : 1000000;
    uint64_t list_queries = 0;

    f.seed = base_seed;
    f.rng = base_seed ^ UINT64_C(0x2545f4914f6cdd1d);
    f.zone[0].m = g_new(uint16_t, ZONE_CLUSTERS);
    f.zone[1].m = g_new(uint16_t, ZONE_CLUSTERS);
    while (f.checks < total) {
        uint64_t space;
        int k, batch;

        f.cb = rnd(&f, 3) ? 9 + rnd(&f, 13) : 9;
        space = QCOW2_OVERLAP_MAX_BYTES >> f.cb;
        f.map = qcow2_metadata_map_new(f.cb, 1);
        f.zone[0].base = rnd(&f, 2) ? 0 : rnd(&f, 1 << 20);
        f.zone[1].base = rnd(&f, space - ZONE_CLUSTERS);
        for (k = 0; k < 2; k++) {
            memset(f.zone[k].m, 0, ZONE_CLUSTERS * sizeof(uint16_t));
        }
        for (batch = 0; batch < 8; batch++) {
            Qcow2MetadataMapStats s;
            uint64_t spread;
            int i;

            /* a few hundred edits per window at most: no list outgrows 1024 */
            for (i = 0; i < 300; i++) {
                unsigned z = rnd(&f, 2), types = 1 + rnd(&f, 0xff);
                uint64_t a = rnd(&f, ZONE_CLUSTERS), len, off, bytes;
                int set;
                uint64_t c;

                /* not inside MIN(): twice */
                len = 1 + rnd(&f, rnd(&f, 4) ? 8 : 600);
                len = MIN(len, ZONE_CLUSTERS - a);
                set = rnd(&f, 4);

                cluster_bytes(&f, f.zone[z].base + a, len, &off, &bytes);
                if (set) {
                    qcow2_metadata_map_enter(f.map, off, bytes, types);
                } else {
                    qcow2_metadata_map_remove(f.map, off, bytes, types);
                }
                for (c = a; c < a + len; c++) {
                    f.zone[z].m[c] =
                        set ? f.zone[z].m[c] | types : f.zone[z].m[c] & ~types;
                }
                f.ops++;
            }
            spread = fuzz_spread_burst(&f, 0, 39 + rnd(&f, 217));
            qcow2_metadata_map_flush(f.map);
            qcow2_metadata_map_verify(f.map);
            FUZZ_ASSERT(&f, form(f.map, spread), ==,
                        QCOW2_OVERLAP_WINDOW_COMPACT);
            qcow2_metadata_map_reset_counters(f.map);
            for (i = 0; i < 20000; i++) {
                unsigned z, ignore = rnd(&f, 3) ? 0 : pick_types(&f),
                            expect = 0;
                uint64_t a, len, off, bytes;
                uint64_t c;

                pick_range(&f, &z, &a, &len);
                cluster_bytes(&f, f.zone[z].base + a, len, &off, &bytes);
                for (c = a; c < a + len; c++) {
                    expect |= f.zone[z].m[c];
                }
                FUZZ_ASSERT(&f,
                            qcow2_metadata_map_check(f.map, off, bytes, ignore),
                            ==, expect & 0xff & ~ignore);
                f.checks++;
            }
            s = stats_of(f.map);
            FUZZ_ASSERT(&f, s.list_to_bytemap, ==, 0);
            FUZZ_ASSERT(&f, s.bytemap_to_list, ==, 0);
            FUZZ_ASSERT(&f, s.bytemaps_freed, ==, 0);
            FUZZ_ASSERT(&f, s.cached_bytemaps, ==, 0);
            FUZZ_ASSERT(&f, s.mem_peak, ==, s.mem_current);
            list_queries += s.list_queries;
            qcow2_metadata_map_verify(f.map);
        }
        qcow2_metadata_map_free(f.map);
        f.map = NULL;
        f.round++;
    }
    g_test_message("%" PRIu64 " queries at rest (%" PRIu64
                   " answered from lists) in %u rounds",
                   f.checks, list_queries, f.round);
    g_assert_cmpuint(list_queries, >, f.checks / 10);
    g_free(f.zone[0].m);
    g_free(f.zone[1].m);
}

int main(int argc, char **argv)
{
    const char *env = g_getenv("QGUARD_TEST_SEED");

    g_test_init(&argc, &argv, NULL);
    base_seed = env ? g_ascii_strtoull(env, NULL, 0)
                    : (uint64_t)g_get_real_time() ^ (uint64_t)g_random_int()
                                                        << 32;

    g_test_add_func("/qcow2-overlap/type-names", test_type_names);
    g_test_add_func("/qcow2-overlap/zero-length-is-noop",
                    test_zero_length_is_noop);
    g_test_add_func("/qcow2-overlap/ranges-round-outward-to-clusters",
                    test_ranges_round_outward_to_clusters);
    g_test_add_func("/qcow2-overlap/check-empty-window-costs-no-conversion",
                    test_check_empty_window_costs_no_conversion);
    g_test_add_func("/qcow2-overlap/single-fragment-windows-need-no-bytemap",
                    test_single_fragment_windows_need_no_bytemap);
    g_test_add_func("/qcow2-overlap/fragments-merge-up-to-256-clusters",
                    test_fragments_merge_up_to_256_clusters);
    g_test_add_func("/qcow2-overlap/evicted-dirty-bytemap-becomes-list",
                    test_evicted_dirty_bytemap_becomes_list);
    g_test_add_func("/qcow2-overlap/evicted-clean-bytemap-is-dropped",
                    test_evicted_clean_bytemap_is_dropped);
    g_test_add_func("/qcow2-overlap/flush-writes-back-and-empties-cache",
                    test_flush_writes_back_and_empties_cache);
    g_test_add_func("/qcow2-overlap/lru-evicts-least-recently-used",
                    test_lru_evicts_least_recently_used);
    g_test_add_func("/qcow2-overlap/dense-window-stays-bytemap-outside-lru",
                    test_dense_window_stays_bytemap_outside_lru);
    g_test_add_func("/qcow2-overlap/bitmap-directory-type-is-checked",
                    test_bitmap_directory_type_is_checked);
    g_test_add_func("/qcow2-overlap/far-offset-uses-bounded-memory",
                    test_far_offset_uses_bounded_memory);
    g_test_add_func("/qcow2-overlap/counters-match-operations",
                    test_counters_match_operations);
    g_test_add_func("/qcow2-overlap/memory-returns-to-baseline-after-remove",
                    test_memory_returns_to_baseline_after_remove);
    g_test_add_func("/qcow2-overlap/memory-within-2014-estimate",
                    test_memory_within_2014_estimate);
    g_test_add_func("/qcow2-overlap/list-windows-answered-in-place",
                    test_list_windows_answered_in_place);
    g_test_add_func("/qcow2-overlap/compact-windows-answered-in-place",
                    test_compact_windows_answered_in_place);
    g_test_add_func("/qcow2-overlap/compact-form-and-answers",
                    test_compact_form_and_answers);
    g_test_add_func("/qcow2-overlap/leaf-sized-to-last-chunk",
                    test_leaf_sized_to_last_chunk);
    g_test_add_func("/qcow2-overlap/check-memo-follows-edits",
                    test_check_memo_follows_edits);
    g_test_add_func("/qcow2-overlap/pool-lists-found-by-offset",
                    test_pool_lists_found_by_offset);
    g_test_add_data_func("/qcow2-overlap/random-vs-model/cache-1",
                         GUINT_TO_POINTER(1), test_random_vs_model);
    g_test_add_data_func("/qcow2-overlap/random-vs-model/cache-2",
                         GUINT_TO_POINTER(2), test_random_vs_model);
    g_test_add_data_func("/qcow2-overlap/random-vs-model/cache-16",
                         GUINT_TO_POINTER(16), test_random_vs_model);
    g_test_add_func("/qcow2-overlap/growth-end-moves-with-enters",
                    test_growth_end_moves_with_enters);
    g_test_add_func("/qcow2-overlap/claims-break-on-enter",
                    test_claims_break_on_enter);
    g_test_add_func("/qcow2-overlap/check-memo-of-evicted-bytemap",
                    test_check_memo_of_evicted_bytemap);
    g_test_add_func("/qcow2-overlap/random-queries-at-rest",
                    test_random_queries_at_rest);
    return g_test_run();
}
