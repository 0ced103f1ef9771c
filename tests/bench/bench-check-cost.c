/* SPDX-License-Identifier: MIT */
/*
 * bench-check-cost: what one overlap check costs in the engine, for both
 * algorithms, on images of 1 GiB, 1 TiB and 1 PiB.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The qcow2 state (L1 table, refcount table) is synthetic, laid out the way
 * sequential guest writes lay out a real image: an L2 table in front of
 * every L2-table's worth of data clusters, a refcount block at the start of
 * every refcount block's worth of clusters.  Checks go through the same
 * entry point the write path uses (qcow2_overlap_hit()) with
 * algorithm=linear (QEMU's scan) and algorithm=windowed (the map), for
 * 64 KiB guest writes at random places in the data.
 *
 *   bench-check-cost [--json] [cluster_bits:size_gib ...]
 *
 * Prints one line per case; nothing here asserts a time.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/qcow2.h"
#include "test-lib.h"

typedef struct Case {
    int cluster_bits;
    uint64_t size;          /* guest bytes, fully allocated */
} Case;

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static uint64_t rng = 88172645463325252ULL;

/* Build the in-memory metadata of a fully written image of c->size bytes. */
static void build_state(BDRVQcow2State *s, QGuardImage *img, const Case *c,
                        uint64_t *data_start, uint64_t *host_end)
{
    uint64_t cs, l2_entries, rb_entries, l1_size, rt_size, cluster;
    uint64_t i, l1_clusters, rt_clusters;

    memset(s, 0, sizeof(*s));
    s->img = img;
    img->total_size = c->size;
    s->cluster_bits = c->cluster_bits;
    s->cluster_size = cs = 1ULL << c->cluster_bits;
    s->l2_bits = c->cluster_bits - 3;
    s->l2_size = l2_entries = cs / 8;
    s->refcount_order = 4;
    qcow2_refcount_setup_order(s);
    rb_entries = s->refcount_block_size;

    l1_size = size_to_l1(s, c->size);
    l1_clusters = (l1_size * 8 + cs - 1) / cs;
    /* Host clusters: metadata + data, about (1 + 1/l2 + 1/rb) * data. */
    rt_size = ((c->size / cs) * 11 / 10) / rb_entries + 16;
    rt_size = (rt_size + cs / 8 - 1) / (cs / 8) * (cs / 8);
    rt_clusters = rt_size * 8 / cs;

    s->l1_size = l1_size;
    s->l1_table = g_new0(uint64_t, l1_size);
    s->refcount_table_size = rt_size;
    s->refcount_table = g_new0(uint64_t, rt_size);
    s->refcount_table_offset = cs;
    s->l1_table_offset = (1 + rt_clusters) * cs;
    cluster = 1 + rt_clusters + l1_clusters;
    *data_start = cluster * cs;

    /* Walk the data in order: each L2 table, then the clusters it maps. */
    for (i = 0; i < l1_size; i++) {
        uint64_t n = MIN(l2_entries, c->size / cs - i * l2_entries);
        uint64_t end = cluster + 1 + n;
        uint64_t m = (cluster + rb_entries - 1) / rb_entries * rb_entries;

        s->l1_table[i] = (cluster << c->cluster_bits) | QCOW_OFLAG_COPIED;
        /* A refcount block sits at the start of the range it describes. */
        for (; m < end && m / rb_entries < rt_size; m += rb_entries) {
            s->refcount_table[m / rb_entries] = m << c->cluster_bits;
            end++;
        }
        cluster = end;
    }
    for (i = rt_size; i > 0 && !s->refcount_table[i - 1]; i--) {
        /* find the highest block in use, as the engine tracks it */
    }
    s->max_refcount_table_index = i ? i - 1 : 0;
    *host_end = cluster * cs;
}

static double time_checks(BDRVQcow2State *s, uint64_t data_start,
                          uint64_t host_end, uint64_t n)
{
    volatile unsigned sink = 0;
    double t0 = now_ns();
    uint64_t i;

    for (i = 0; i < n; i++) {
        uint64_t span = (host_end - data_start) >> 16;
        uint64_t off = data_start + ((test_xorshift64(&rng) % span) << 16);
        sink += qcow2_overlap_hit(s, 0, off, 65536);
    }
    (void)sink;
    return (now_ns() - t0) / n;
}

static void run_case(const Case *c, bool json)
{
    BDRVQcow2State s;
    QGuardImage img = { 0 };
    Qcow2MetadataMapStats st;
    uint64_t data_start, host_end, lin_n, win_n = 200000;
    double lin_ns, win_ns, build_ns, t0;
    g_autofree char *size = qguard_size_to_str(c->size);

    build_state(&s, &img, c, &data_start, &host_end);
    s.overlap_check = QCOW2_OL_CACHED;

    s.overlap_algorithm = QCOW2_OVERLAP_LINEAR;
    /* The scan is O(L1 + refcount table): scale the count to keep it short. */
    lin_n = MAX(20, MIN(200000, 2000000000ULL /
                        (s.l1_size + s.refcount_table_size + 1) / 40));
    lin_ns = time_checks(&s, data_start, host_end, lin_n);

    s.overlap_algorithm = QCOW2_OVERLAP_WINDOWED;
    s.overlap_cache_size = 16;
    t0 = now_ns();
    g_assert(qcow2_map_build(&s, NULL) == 0);
    build_ns = now_ns() - t0;
    win_ns = time_checks(&s, data_start, host_end, win_n);
    qcow2_metadata_map_get_stats(s.metadata_map, &st);

    if (json) {
        printf("{\"cluster_size\": %d, \"image_size\": %" PRIu64
               ", \"l1_entries\": %u, \"refcount_table_entries\": %u, "
               "\"linear_ns_per_check\": %.1f, "
               "\"windowed_ns_per_check\": %.1f, "
               "\"map_build_ms\": %.1f, \"map_bytes\": %" PRIu64
               ", \"map_peak_bytes\": %" PRIu64 "}\n",
               s.cluster_size, c->size, s.l1_size, s.refcount_table_size,
               lin_ns, win_ns, build_ns / 1e6, st.mem_current, st.mem_peak);
    } else {
        printf("%-9s clusters %-7d L1 %8u reftable %7u | linear %12.1f ns "
               "| windowed %7.1f ns | speed-up %9.0fx | map %9" PRIu64
               " B (peak %" PRIu64 ") built in %.1f ms\n",
               size, s.cluster_size, s.l1_size, s.refcount_table_size, lin_ns,
               win_ns, lin_ns / win_ns, st.mem_current, st.mem_peak,
               build_ns / 1e6);
    }
    fflush(stdout);
    qcow2_metadata_map_free(s.metadata_map);
    g_free(s.l1_table);
    g_free(s.refcount_table);
}

int main(int argc, char **argv)
{
    static const Case defaults[] = {
        { 16, 1ULL << 30 },
        { 16, 1ULL << 40 },
        { 16, 1ULL << 50 },
        { 9, 1ULL << 30 },
        { 9, 2ULL << 30 },
    };
    bool json = false;
    int i, ncases = 0;
    Case cases[16];

    for (i = 1; i < argc; i++) {
        unsigned bits;
        unsigned long long gib;
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (sscanf(argv[i], "%u:%llu", &bits, &gib) == 2 &&
                   ncases < 16) {
            cases[ncases++] = (Case){ bits, (uint64_t)gib << 30 };
        } else {
            fprintf(stderr, "usage: %s [--json] [cluster_bits:size_gib ...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!ncases) {
        memcpy(cases, defaults, sizeof(defaults));
        ncases = G_N_ELEMENTS(defaults);
    }
    for (i = 0; i < ncases; i++) {
        run_case(&cases[i], json);
    }
    return 0;
}
