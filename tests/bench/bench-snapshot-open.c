/* SPDX-License-Identifier: MIT */
/*
 * bench-snapshot-open: what overlap mode "all" costs on an image with many
 * internal snapshots, against "cached".
 *
 * Copyright (c) 2026 The qguard authors
 *
 * "all" adds inactive L2 tables to the protected metadata.  QEMU finds them
 * by reading every snapshot's L1 table from disk on every write; qguard
 * enters them into its overlap map once, at open.  This measures that open
 * cost, the map's memory, all heap memory the open image holds (map, L1
 * table, caches, the per-L2 snapshot reference counts), and the per-write
 * cost afterwards, for both overlap algorithms.
 *
 * The image: SIZE bytes, one data cluster written at the start of every
 * L2 table's range (so every L2 table exists and the L1 table is full),
 * then NSNAP rounds of "create a snapshot, rewrite 1 % of the L2 ranges"
 * so that the snapshots own different L2 tables, then a 4 MiB hot region
 * written once more.  Writes measured after open overwrite the hot region:
 * no allocation, just the check and the data write.  With qemu-io in
 * PATH (and no --no-qemu), QEMU's per-write cost in both modes is measured
 * on the same image: a qemu-io run with 20 writes minus one without.
 *
 *   bench-snapshot-open [--json] [--dir DIR] [--runs N] [--writes N]
 *                       [--no-qemu] [cluster_size:size:snapshots ...]
 *
 * Default cases: 65536:16G:100 and 512:16G:100.  Images are built in DIR
 * (default $TMPDIR or /var/tmp) and removed afterwards.  Nothing here
 * asserts a time.
 */
#include <glib.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"

#define HOT_BYTES (4 * 1024 * 1024)
#define WRITE_BUDGET_MS 3000
#define QEMU_WRITES 20

typedef struct Case {
    uint32_t cluster_size;
    uint64_t size;
    unsigned snapshots;
} Case;

typedef struct Result {
    double open_ms;             /* median */
    double write_us;            /* median per write */
    uint64_t mem;               /* map bytes after open */
    uint64_t heap;              /* all heap bytes the open holds */
    uint64_t checks;
} Result;

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Heap bytes in use, mmap()ed blocks included. */
static uint64_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();

    return mi.uordblks + mi.hblkhd;
}

static void die(const char *what, GError *err)
{
    fprintf(stderr, "bench-snapshot-open: %s: %s\n", what,
            err ? err->message : "failed");
    exit(1);
}

static QGuardImage *open_image(const char *path, const char *runtime)
{
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img;
    GError *err = NULL;

    if (runtime && qguard_opts_parse(opts, runtime, NULL, &err) < 0) {
        die("options", err);
    }
    if (qguard_image_open(&img, path, "qcow2", opts, QGUARD_OPEN_RDWR,
                          &err) < 0) {
        die("open", err);
    }
    qguard_opts_free(opts);
    return img;
}

static void build_image(const char *path, const Case *c)
{
    uint64_t l2_range = (uint64_t)c->cluster_size * (c->cluster_size / 8);
    uint64_t ranges = c->size / l2_range;
    uint64_t churn = ranges / 100 ? ranges / 100 : 1;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img;
    GError *err = NULL;
    char *buf = g_malloc(HOT_BYTES);
    char num[32];
    uint64_t r;
    unsigned i;

    memset(buf, 0xa5, HOT_BYTES);
    snprintf(num, sizeof(num), "%" PRIu64, c->size);
    qguard_opts_set(opts, "size", num);
    snprintf(num, sizeof(num), "%" PRIu32, c->cluster_size);
    qguard_opts_set(opts, "cluster_size", num);
    if (qguard_image_create(path, "qcow2", opts, NULL, NULL, &err) < 0) {
        die("create", err);
    }
    qguard_opts_free(opts);

    img = open_image(path, NULL);
    for (r = 0; r < ranges; r++) {
        if (qguard_image_pwrite(img, r * l2_range, c->cluster_size, buf, 0,
                                &err) < 0) {
            die("fill", err);
        }
    }
    for (i = 0; i < c->snapshots; i++) {
        char name[16];

        snprintf(name, sizeof(name), "s%u", i);
        if (qguard_snapshot_create(img, name, &err) < 0) {
            die("snapshot", err);
        }
        for (r = 0; r < churn; r++) {
            uint64_t range = test_xorshift64(&rng) % ranges;

            buf[0] = (char)i;
            if (qguard_image_pwrite(img, range * l2_range, c->cluster_size,
                                    buf, 0, &err) < 0) {
                die("churn", err);
            }
        }
    }
    if (qguard_image_pwrite(img, 0, HOT_BYTES, buf, 0, &err) < 0) {
        die("hot region", err);
    }
    if (qguard_image_close(img, &err) < 0) {
        die("close", err);
    }
    g_free(buf);
}

static void measure(const char *path, const char *runtime, int runs,
                    int writes, uint32_t cluster_size, Result *res)
{
    double *open_ms = g_new(double, runs);
    double *write_us = g_new(double, runs);
    char *buf = g_malloc0(cluster_size);
    GError *err = NULL;
    int run, w;

    for (run = 0; run < runs; run++) {
        QGuardOverlapStats st = QGUARD_SIZED(QGuardOverlapStats);
        QGuardImage *img;
        uint64_t heap0 = heap_in_use();
        double t0 = now_ms(), t1;

        img = open_image(path, runtime);
        t1 = now_ms();
        open_ms[run] = t1 - t0;
        res->heap = heap_in_use() - heap0;
        qguard_image_overlap_stats(img, &st);
        res->mem = st.mem_current;
        qguard_image_overlap_stats_reset(img);

        /*
         * The linear scan in "all" reads every snapshot's L1 table per
         * write; a time budget keeps that case from taking hours.
         */
        t0 = now_ms();
        for (w = 0; w < writes; w++) {
            uint64_t off = test_xorshift64(&rng) % (HOT_BYTES / cluster_size)
                           * cluster_size;

            if (qguard_image_pwrite(img, off, cluster_size, buf, 0,
                                    &err) < 0) {
                die("write", err);
            }
            if (w >= 10 && now_ms() - t0 > WRITE_BUDGET_MS) {
                w++;
                break;
            }
        }
        t1 = now_ms();
        write_us[run] = (t1 - t0) * 1e3 / w;
        qguard_image_overlap_stats(img, &st);
        res->checks = st.checks;
        if (qguard_image_close(img, &err) < 0) {
            die("close", err);
        }
    }
    res->open_ms = median(open_ms, runs);
    res->write_us = median(write_us, runs);
    g_free(open_ms);
    g_free(write_us);
    g_free(buf);
}

/* Wall time of one qemu-io run: open with @mode, @writes hot writes. */
static double qemu_io_run(const char *qemu_io, const char *path,
                          const char *mode, int writes, uint32_t cluster_size)
{
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    GError *err = NULL;
    int status, w;
    double t0;

    g_ptr_array_add(argv, g_strdup(qemu_io));
    g_ptr_array_add(argv, g_strdup("-c"));
    g_ptr_array_add(argv, g_strdup_printf("open -o %s %s", mode, path));
    for (w = 0; w < writes; w++) {
        uint64_t off = test_xorshift64(&rng) % (HOT_BYTES / cluster_size)
                       * cluster_size;

        g_ptr_array_add(argv, g_strdup("-c"));
        g_ptr_array_add(argv, g_strdup_printf("write -q -P 0x5a %" PRIu64
                                              " %" PRIu32, off,
                                              cluster_size));
    }
    g_ptr_array_add(argv, NULL);
    t0 = now_ms();
    if (!g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_SEARCH_PATH,
                      NULL, NULL, NULL, NULL, &status, &err) ||
        !g_spawn_check_wait_status(status, &err)) {
        die("qemu-io", err);
    }
    t0 = now_ms() - t0;
    g_ptr_array_free(argv, true);
    return t0;
}

/* QEMU's per-write cost with @mode: runs with and without writes. */
static double qemu_io_write_us(const char *qemu_io, const char *path,
                               const char *mode, int runs,
                               uint32_t cluster_size)
{
    double *t = g_new(double, runs);
    double base, with;
    int run;

    for (run = 0; run < runs; run++) {
        t[run] = qemu_io_run(qemu_io, path, mode, 0, cluster_size);
    }
    base = median(t, runs);
    for (run = 0; run < runs; run++) {
        t[run] = qemu_io_run(qemu_io, path, mode, QEMU_WRITES, cluster_size);
    }
    with = median(t, runs);
    g_free(t);
    return (with - base) * 1e3 / QEMU_WRITES;
}

static const char *const modes[][2] = {
    { "cached", "overlap-check=cached" },
    { "all", "overlap-check=all" },
};

static const char *const algorithms[] = { "windowed", "linear" };

static void run_case(const Case *c, const char *dir, int runs, int writes,
                     const char *qemu_io, bool json)
{
    char *path = g_strdup_printf("%s/qguard-snapopen-%d.qcow2", dir,
                                 (int)getpid());
    double t0 = now_ms();
    size_t a, m;

    build_image(path, c);
    if (!json) {
        printf("%u B clusters, %" PRIu64 " GiB, %u snapshots "
               "(image built in %.1f s)\n", c->cluster_size,
               c->size >> 30, c->snapshots, (now_ms() - t0) / 1e3);
    }
    for (a = 0; a < G_N_ELEMENTS(algorithms); a++) {
        for (m = 0; m < G_N_ELEMENTS(modes); m++) {
            char *runtime = g_strdup_printf("%s,overlap-check.algorithm=%s",
                                            modes[m][1], algorithms[a]);
            Result res = { 0 };

            measure(path, runtime, runs, writes, c->cluster_size, &res);
            if (json) {
                printf("{\"cluster_size\": %u, \"image_size\": %" PRIu64
                       ", \"snapshots\": %u, \"algorithm\": \"%s\", "
                       "\"mode\": \"%s\", \"open_ms\": %.2f, "
                       "\"write_us\": %.2f, \"map_bytes\": %" PRIu64
                       ", \"open_heap_bytes\": %" PRIu64
                       ", \"checks\": %" PRIu64 "}\n",
                       c->cluster_size, c->size, c->snapshots,
                       algorithms[a], modes[m][0], res.open_ms,
                       res.write_us, res.mem, res.heap, res.checks);
            } else {
                printf("  %-8s %-6s open %9.2f ms   write %7.2f us   "
                       "map %10" PRIu64 " B   heap %11" PRIu64 " B\n",
                       algorithms[a], modes[m][0], res.open_ms,
                       res.write_us, res.mem, res.heap);
            }
            fflush(stdout);
            g_free(runtime);
        }
    }
    for (m = 0; qemu_io && m < G_N_ELEMENTS(modes); m++) {
        double us = qemu_io_write_us(qemu_io, path, modes[m][1], runs,
                                     c->cluster_size);

        if (json) {
            printf("{\"cluster_size\": %u, \"image_size\": %" PRIu64
                   ", \"snapshots\": %u, \"algorithm\": \"qemu-io\", "
                   "\"mode\": \"%s\", \"write_us\": %.2f}\n",
                   c->cluster_size, c->size, c->snapshots, modes[m][0], us);
        } else {
            printf("  %-8s %-6s %-20s write %7.2f us\n", "qemu-io",
                   modes[m][0], "", us);
        }
        fflush(stdout);
    }
    unlink(path);
    g_free(path);
}

static bool parse_case(const char *arg, Case *c)
{
    char **parts = g_strsplit(arg, ":", 3);
    bool ok = g_strv_length(parts) == 3;
    GError *err = NULL;

    if (ok) {
        c->cluster_size = strtoul(parts[0], NULL, 10);
        ok = qguard_parse_size(parts[1], &c->size, &err) == 0;
        c->snapshots = strtoul(parts[2], NULL, 10);
        ok = ok && c->cluster_size >= 512 && c->cluster_size <= 2 << 20 &&
             !(c->cluster_size & (c->cluster_size - 1)) && c->size > 0;
    }
    g_clear_error(&err);
    g_strfreev(parts);
    return ok;
}

int main(int argc, char **argv)
{
    const char *dir = g_getenv("TMPDIR") ? g_getenv("TMPDIR") : "/var/tmp";
    Case defaults[] = {
        { 65536, 16ULL << 30, 100 },
        { 512, 16ULL << 30, 100 },
    };
    GArray *cases = g_array_new(false, false, sizeof(Case));
    int runs = 5, writes = 20000;
    char *qemu_io = g_find_program_in_path("qemu-io");
    bool json = false;
    guint i;

    for (i = 1; i < (guint)argc; i++) {
        Case c;

        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--dir") && i + 1 < (guint)argc) {
            dir = argv[++i];
        } else if (!strcmp(argv[i], "--runs") && i + 1 < (guint)argc) {
            runs = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--writes") && i + 1 < (guint)argc) {
            writes = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--no-qemu")) {
            g_clear_pointer(&qemu_io, g_free);
        } else if (parse_case(argv[i], &c)) {
            g_array_append_val(cases, c);
        } else {
            fprintf(stderr, "usage: %s [--json] [--dir DIR] [--runs N] "
                    "[--writes N] [--no-qemu] "
                    "[cluster_size:size:snapshots ...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (runs < 1 || writes < 1) {
        fprintf(stderr, "bench-snapshot-open: --runs and --writes must be "
                "positive\n");
        return 2;
    }
    if (!cases->len) {
        g_array_append_vals(cases, defaults, G_N_ELEMENTS(defaults));
    }
    for (i = 0; i < cases->len; i++) {
        run_case(&g_array_index(cases, Case, i), dir, runs, writes, qemu_io,
                 json);
    }
    g_array_free(cases, true);
    g_free(qemu_io);
    return 0;
}
