/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * bench-overlap-map: what an overlap check costs, and what the map weighs,
 * on synthetic qcow2 layouts from 1 GiB to 1 PiB.
 *
 *   bench-overlap-map [checks-per-case]      (default 2000000)
 *   bench-overlap-map --icount CASE [checks] (default 200000)
 *
 * Two layouts per image.  "grown" is what sequential guest writes produce:
 * header, refcount table and L1 table first, then an L2 table in front of
 * every CS/8 data clusters and a refcount block at the start of every CS/2
 * clusters it describes (CS = cluster size; 16-bit refcounts).  "spread"
 * has the same counts but puts every refcount block alone in a window, the
 * worst case for the map's memory.  Checks are timed on "grown":
 *
 *   random      guest writes of 512 B, 4 KiB or 64 KiB at random offsets
 *   sequential  64 KiB guest writes walking the whole file
 *   l2-write    writing a random L2 table (ignore = L2): always a window
 *               with metadata, so on small clusters a list searched in
 *               place (it used to cost a conversion on nearly every check)
 *   naive       QEMU's approach for comparison: test the range against
 *               every L2 table and refcount block
 *
 * --icount builds one case and runs only its checks, for
 * valgrind --tool=callgrind: the inclusive cost of qcow2_metadata_map_check()
 * divided by the number of checks is the exact instruction count per check.
 * CASE is one of
 *
 *   empty     random 64 KiB checks of windows without metadata
 *             (64 KiB clusters)
 *   inline    random 64 KiB checks of inline windows (1 TiB, 64 KiB clusters)
 *   list      random 512 B checks, 2 GiB with 512 B clusters, nothing cached
 *   cached    512 B checks alternating between two cached (edited) windows
 *   same      random 512 B-64 KiB checks inside one list window
 *             (512 B clusters)
 *   seq       sequential 64 KiB checks, 2 GiB with 512 B clusters
 *   seq64k    sequential 64 KiB checks, 1 TiB with 64 KiB clusters
 *
 * Nothing here asserts a time; docs/overlap-map.md records the results.
 */

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <glib.h>

#include "qcow2-overlap.h"

typedef struct Image {
    unsigned cb;
    uint64_t host_bytes;
    uint64_t *meta;         /* cluster of every L2 table and refcount block */
    size_t n_meta;
    uint64_t *l2;           /* cluster of every L2 table */
    size_t n_l2;
} Image;

static uint64_t rng_state = 42;

static uint64_t rnd64(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void add(Qcow2MetadataMap *m, Image *img, uint64_t c, uint64_t n,
                unsigned types)
{
    qcow2_metadata_map_enter(m, c << img->cb, n << img->cb, types);
    if (types == QCOW2_OL_ACTIVE_L2 || types == QCOW2_OL_REFCOUNT_BLOCK) {
        img->meta[img->n_meta++] = c;
    }
    if (types == QCOW2_OL_ACTIVE_L2) {
        img->l2[img->n_l2++] = c;
    }
}

/*
 * Enter the metadata of an image of 'virt' guest bytes; returns the time
 * spent entering, in ns.
 */
static double build(Qcow2MetadataMap *m, Image *img, uint64_t virt, bool spread)
{
    uint64_t cs = UINT64_C(1) << img->cb, per_l2 = cs / 8, per_rb = cs / 2;
    uint64_t l2s = virt / cs / per_l2;
    uint64_t rbs = (virt / cs * 9 / 8) / per_rb + 2;
    uint64_t l1_clusters = (l2s * 8 + cs - 1) / cs,
             rt_clusters = (rbs * 8 + cs - 1) / cs;
    uint64_t pos = 0, next_rb = 0;
    double t0;

    img->meta = g_new(uint64_t, l2s + rbs + 16);
    img->l2 = g_new(uint64_t, l2s);
    img->n_meta = img->n_l2 = 0;
    t0 = now_ns();
    add(m, img, pos++, 1, QCOW2_OL_MAIN_HEADER);
    add(m, img, pos, rt_clusters, QCOW2_OL_REFCOUNT_TABLE);
    pos += rt_clusters;
    add(m, img, pos, l1_clusters, QCOW2_OL_ACTIVE_L1);
    pos += l1_clusters;
    if (spread) {
        /*
         * L2 tables at a fixed stride and every refcount block halfway
         * between two of them: with 64 KiB clusters that is a window of
         * its own, so no two structures ever share a slot.
         */
        uint64_t first = pos, rb_off;
        uint64_t i, at;

        rb_off = per_rb >= 2 * QCOW2_OVERLAP_WINDOW_CLUSTERS ?
                 QCOW2_OVERLAP_WINDOW_CLUSTERS + 3 : per_l2 / 2 + 1;
        for (i = 0; i < l2s; i++) {
            add(m, img, first + i * per_l2, 1, QCOW2_OL_ACTIVE_L2);
        }
        pos = first + l2s * per_l2;
        for (at = first + rb_off; at < pos; at += per_rb) {
            add(m, img, at, 1, QCOW2_OL_REFCOUNT_BLOCK);
        }
    } else {
        uint64_t i;

        for (i = 0; i < l2s; i++) {
            uint64_t end;

            for (end = pos + 1 + per_l2; next_rb < end; next_rb += per_rb) {
                add(m, img, next_rb < pos ? pos++ : next_rb, 1,
                    QCOW2_OL_REFCOUNT_BLOCK);
            }
            add(m, img, pos++, 1, QCOW2_OL_ACTIVE_L2);
            pos += per_l2;
        }
    }
    img->host_bytes = pos << img->cb;
    return now_ns() - t0;
}

static volatile unsigned sink;

/* ns per check over n checks of (offset, bytes, ignore) produced by gen. */
typedef void (*GenFn)(const Image *img, uint64_t i, uint64_t *off,
                      uint64_t *bytes, unsigned *ignore);

static void gen_random(const Image *img, uint64_t i, uint64_t *off,
                       uint64_t *bytes, unsigned *ignore)
{
    static const uint64_t sizes[] = { 512, 4096, 65536 };
    uint64_t r = rnd64();

    (void)i;
    *bytes = sizes[r % 3];
    *off = (r >> 8) % (img->host_bytes - *bytes) & ~UINT64_C(511);
    *ignore = 0;
}

static void gen_sequential(const Image *img, uint64_t i, uint64_t *off,
                           uint64_t *bytes, unsigned *ignore)
{
    *bytes = 65536;
    *off = (i * 65536) % (img->host_bytes - 65536);
    *ignore = 0;
}

static void gen_l2_write(const Image *img, uint64_t i, uint64_t *off,
                         uint64_t *bytes, unsigned *ignore)
{
    (void)i;
    *off = img->l2[rnd64() % img->n_l2] << img->cb;
    *bytes = UINT64_C(1) << img->cb;
    *ignore = QCOW2_OL_ACTIVE_L2;
}

/*
 * Like gen_random, but all inside one window holding an L2 table: the cache-
 * hit path.
 */
static void gen_same_window(const Image *img, uint64_t i, uint64_t *off,
                            uint64_t *bytes, unsigned *ignore)
{
    static uint64_t base;
    uint64_t win_bytes = (uint64_t)QCOW2_OVERLAP_WINDOW_CLUSTERS << img->cb;
    static const uint64_t sizes[] = { 512, 4096, 65536 };
    uint64_t r = rnd64();

    if (i % 65536 == 0) {
        base = (img->l2[rnd64() % img->n_l2] << img->cb) & ~(win_bytes - 1);
    }
    *bytes = sizes[r % 3];
    *off = base + ((r >> 8) % (win_bytes - *bytes) & ~UINT64_C(511));
    *ignore = 0;
}

typedef struct Access { uint64_t off, bytes; unsigned ignore; } Access;

static double time_checks(Qcow2MetadataMap *m, const Image *img, GenFn gen,
                          uint64_t n)
{
    enum { BATCH = 1 << 16 };
    Access *a = g_new(Access, BATCH);
    double total = 0;
    unsigned acc = 0;
    uint64_t done;

    for (done = 0; done < n; done += BATCH) {
        uint64_t k = MIN(BATCH, n - done);
        double t0;
        uint64_t i;

        for (i = 0; i < k; i++) {
            gen(img, done + i, &a[i].off, &a[i].bytes, &a[i].ignore);
        }
        t0 = now_ns();
        for (i = 0; i < k; i++) {
            acc |=
                qcow2_metadata_map_check(m, a[i].off, a[i].bytes, a[i].ignore);
        }
        total += now_ns() - t0;
    }
    sink = acc;
    g_free(a);
    return total / n;
}

/* QEMU-style: compare the range with every metadata cluster. */
/* time_checks() from fresh counters; *st gets the counts of the run. */
static double counted_checks(Qcow2MetadataMap *m, const Image *img,
                             GenFn gen, uint64_t n, Qcow2MetadataMapStats *st)
{
    double ns;

    qcow2_metadata_map_reset_counters(m);
    ns = time_checks(m, img, gen, n);
    qcow2_metadata_map_get_stats(m, st);
    return ns;
}

static double time_naive(const Image *img, uint64_t n)
{
    uint64_t hits = 0;
    double t0 = now_ns();
    uint64_t i;

    for (i = 0; i < n; i++) {
        uint64_t off, bytes, first, last;
        unsigned ignore;
        size_t j;
        gen_random(img, i, &off, &bytes, &ignore);
        first = off >> img->cb;
        last = (off + bytes - 1) >> img->cb;
        for (j = 0; j < img->n_meta; j++) {
            hits += img->meta[j] >= first && img->meta[j] <= last;
        }
    }
    sink = hits;
    return (now_ns() - t0) / n;
}

static const char *human(uint64_t bytes, char *buf)
{
    static const char *const units[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB"
    };
    double v = bytes;
    unsigned u = 0;

    while (v >= 1024 && u < 5) {
        v /= 1024;
        u++;
    }
    snprintf(buf, 32, v < 10 && u ? "%.2f %s" : "%.0f %s", v, units[u]);
    return buf;
}

static void run_case(const char *name, unsigned cb, uint64_t virt,
                     uint64_t checks)
{
    Qcow2MetadataMapStats st;
    Image img = { .cb = cb }, spread = { .cb = cb };
    Qcow2MetadataMap *m = qcow2_metadata_map_new(cb, 0),
                     *ms = qcow2_metadata_map_new(cb, 0);
    double build_ns = build(m, &img, virt, false), est, rnd, seq, l2w, naive,
           hot;
    uint64_t cs = UINT64_C(1) << cb, cache_bytes, naive_n;
    char b1[32], b2[32], b3[32], b4[32];

    build(ms, &spread, virt, true);
    /* weigh the map at rest: every list written back, no bytemap */
    qcow2_metadata_map_flush(m);
    qcow2_metadata_map_flush(ms);
    est = 40.0 * img.host_bytes / cs / cs;
    qcow2_metadata_map_get_stats(m, &st);
    /* a bytemap is 4096 bytes of map plus 40 of bookkeeping */
    cache_bytes = st.cached_bytemaps * (4096 + 40);

    printf("\n## %s (host file %s, %" PRIu64
           " windows, %zu L2 + refcount blocks)\n",
           name, human(img.host_bytes, b1),
           img.host_bytes / cs / QCOW2_OVERLAP_WINDOW_CLUSTERS, img.n_meta);
    printf("estimate 40*IS/CS^2      %.0f bytes (%s)\n", est, human(est, b1));
    printf("map at rest, grown       %" PRIu64 " bytes (%s, %.3f x estimate)"
           " + %s in %" PRIu64 " cached bytemaps; peak %s\n",
           st.mem_current - cache_bytes,
           human(st.mem_current - cache_bytes, b2),
           (st.mem_current - cache_bytes) / est, human(cache_bytes, b3),
           st.cached_bytemaps, human(st.mem_peak, b4));
    printf("  windows %" PRIu64 ", fragments %" PRIu64
           ", %.2f bytes/fragment\n",
           st.windows, st.fragments,
           (double)(st.mem_current - cache_bytes) / MAX(st.fragments, 1));
    {
        Qcow2MetadataMapStats ss;
        double sest;
        uint64_t sc;

        qcow2_metadata_map_get_stats(ms, &ss);
        sc = ss.cached_bytemaps * (4096 + 40);
        sest = 40.0 * spread.host_bytes / cs / cs;
        printf("map at rest, spread      %" PRIu64
               " bytes (%s, %.3f x estimate) + %s cache;"
               " windows %" PRIu64 ", fragments %" PRIu64 "\n",
               ss.mem_current - sc, human(ss.mem_current - sc, b1),
               (ss.mem_current - sc) / sest, human(sc, b2), ss.windows,
               ss.fragments);
    }
    printf("build                    %.1f ns/enter (%" PRIu64 " enters)\n",
           build_ns / st.inserts, st.inserts);

    rnd = counted_checks(m, &img, gen_random, checks, &st);
    printf("random 512B-64KiB        %6.1f ns/check  (list->bytemap %" PRIu64
           ", from lists %" PRIu64 ")\n",
           rnd, st.list_to_bytemap, st.list_queries);
    hot = counted_checks(m, &img, gen_same_window, checks, &st);
    printf("same window 512B-64KiB   %6.1f ns/check  (list->bytemap %" PRIu64
           ", from lists %" PRIu64 ")\n",
           hot, st.list_to_bytemap, st.list_queries);
    seq = counted_checks(m, &img, gen_sequential, checks, &st);
    printf("sequential 64KiB         %6.1f ns/check  (list->bytemap %" PRIu64
           ", from lists %" PRIu64 ")\n",
           seq, st.list_to_bytemap, st.list_queries);
    l2w = counted_checks(m, &img, gen_l2_write, checks, &st);
    printf("l2-write (ignore L2)     %6.1f ns/check  (list->bytemap %" PRIu64
           ", %.3f per check)\n", l2w, st.list_to_bytemap,
           (double)st.list_to_bytemap / checks);
    naive_n =
        MAX(20, MIN(checks, UINT64_C(4000000000) / MAX(img.n_meta, 1) / 4));
    naive = time_naive(&img, naive_n);
    printf("naive scan (QEMU-like)   %6.0f ns/check  (%" PRIu64 " checks)\n",
           naive, naive_n);

    if (cb == 9) {
        Qcow2MetadataMap *m1 = qcow2_metadata_map_new(cb, 1);
        Image one = { .cb = cb };
        double r1;

        build(m1, &one, virt, false);
        qcow2_metadata_map_flush(m1);
        r1 = counted_checks(m1, &one, gen_random, checks, &st);
        printf("random, cache of 1       %6.1f ns/check  "
               "(list->bytemap %" PRIu64 ", bytemap->list %" PRIu64 ")\n",
               r1, st.list_to_bytemap, st.bytemap_to_list);
        qcow2_metadata_map_free(m1);
        g_free(one.meta);
        g_free(one.l2);
    }
    qcow2_metadata_map_free(m);
    qcow2_metadata_map_free(ms);
    g_free(img.meta);
    g_free(img.l2);
    g_free(spread.meta);
    g_free(spread.l2);
}

static int icount(const char *name, uint64_t n)
{
    static const uint64_t sizes[] = { 512, 4096, 65536 };
    bool small = strcmp(name, "empty") && strcmp(name, "inline") &&
                 strcmp(name, "seq64k");
    unsigned cb = small ? 9 : 16;
    uint64_t win_bytes = (uint64_t)QCOW2_OVERLAP_WINDOW_CLUSTERS << cb, *off,
             *len;
    Qcow2MetadataMap *m = qcow2_metadata_map_new(cb, 0);
    Image img = { .cb = cb };
    unsigned acc = 0;
    uint64_t i;

    build(m, &img, !strcmp(name, "empty") ? UINT64_C(1) << 30 :
                   small ? UINT64_C(2) << 30 : UINT64_C(1) << 40, false);
    qcow2_metadata_map_flush(m);
    if (!strcmp(name, "cached")) {
        uint64_t w;

        for (w = 100; w < 102; w++) {
            qcow2_metadata_map_enter(m, w * win_bytes + 7 * 512, 512,
                                     QCOW2_OL_INACTIVE_L2);
        }
    }
    off = g_new(uint64_t, n);
    len = g_new(uint64_t, n);
    for (i = 0; i < n; i++) {
        uint64_t r = rnd64();

        len[i] = !strcmp(name, "list") || !strcmp(name, "cached") ? 512 :
                 !strcmp(name, "same") ? sizes[r % 3] : 65536;
        if (!strcmp(name, "empty")) {
            /* the image ends in window 3; the leaf goes on to window 4095 */
            off[i] = (8 + r % 4000) * win_bytes + (((r >> 32) % 4096) << 16);
        } else if (!strcmp(name, "inline")) {
            do {
                off[i] = (rnd64() % (img.host_bytes >> 16)) << 16;
            } while (qcow2_metadata_map_window_form(m, off[i] / win_bytes) !=
                     QCOW2_OVERLAP_WINDOW_INLINE);
        } else if (!strcmp(name, "list")) {
            off[i] = (r % (img.host_bytes >> 9)) << 9;
        } else if (!strcmp(name, "cached")) {
            off[i] = (100 + i % 2) * win_bytes + ((r % 4096) << 9);
        } else if (!strcmp(name, "same")) {
            off[i] = 200 * win_bytes +
                     ((r >> 8) % (win_bytes - len[i]) & ~UINT64_C(511));
        } else if (!strcmp(name, "seq") || !strcmp(name, "seq64k")) {
            off[i] = (i * 65536) % (img.host_bytes - 65536);
        } else {
            fprintf(stderr, "unknown case '%s'\n", name);
            return 2;
        }
    }
    for (i = 0; i < n; i++) {
        acc |= qcow2_metadata_map_check(m, off[i], len[i], 0);
    }
    sink = acc;
    printf("%s: %" PRIu64 " checks\n", name, n);
    qcow2_metadata_map_free(m);
    g_free(off);
    g_free(len);
    g_free(img.meta);
    g_free(img.l2);
    return 0;
}

int main(int argc, char **argv)
{
    uint64_t checks;

    if (argc > 2 && !strcmp(argv[1], "--icount")) {
        return icount(argv[2], argc > 3 ? strtoull(argv[3], NULL, 0) : 200000);
    }
    checks = argc > 1 ? strtoull(argv[1], NULL, 0) : 2000000;

    printf("# overlap map benchmark: %" PRIu64 " checks per case, cache 16\n",
           checks);
    run_case("1 GiB, 512 B clusters", 9, UINT64_C(1) << 30, checks);
    run_case("2 GiB, 512 B clusters", 9, UINT64_C(2) << 30, checks);
    run_case("8 GiB, 4 KiB clusters", 12, UINT64_C(8) << 30, checks);
    run_case("1 GiB, 64 KiB clusters", 16, UINT64_C(1) << 30, checks);
    run_case("1 TiB, 64 KiB clusters", 16, UINT64_C(1) << 40, checks);
    run_case("1 PiB, 64 KiB clusters", 16, UINT64_C(1) << 50, checks);
    return 0;
}
