/* SPDX-License-Identifier: MIT */
/*
 * bench-parallel-reads: read throughput of one image shared by 1, 2 and 4
 * threads, as the NBD export shares it (docs/nbd-export.md).
 *
 * Copyright (c) 2026 The qguard authors
 *
 *   bench-parallel-reads IMAGE [READS]
 *
 * Every thread reads random, aligned 64 KiB blocks; READS (default 40000)
 * is the total per thread count.  Nothing here asserts a time.
 */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>

#include "qguard.h"

#define BLOCK 65536
#define MAX_THREADS 4

typedef struct Reader {
    QGuardImage *img;
    guint32 seed;
    int reads;
    int failed;
} Reader;

static gpointer read_blocks(gpointer opaque)
{
    Reader *r = opaque;
    GRand *rand = g_rand_new_with_seed(r->seed);
    uint64_t blocks = qguard_image_size(r->img) / BLOCK;
    g_autofree char *buf = g_malloc(BLOCK);
    int i;

    for (i = 0; i < r->reads; i++) {
        uint64_t off = (uint64_t)g_rand_int_range(rand, 0, blocks) * BLOCK;

        if (qguard_image_pread(r->img, off, BLOCK, buf, NULL) < 0) {
            r->failed = 1;
            break;
        }
    }
    g_rand_free(rand);
    return NULL;
}

int main(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img;
    int total = argc > 2 ? atoi(argv[2]) : 40000;
    int threads;

    if (argc < 2 || total < MAX_THREADS) {
        fprintf(stderr, "usage: %s IMAGE [READS]\n", argv[0]);
        return 2;
    }
    if (qguard_image_open(&img, argv[1], NULL, NULL, 0, &err) < 0) {
        fprintf(stderr, "bench-parallel-reads: %s\n", err->message);
        return 1;
    }
    if (qguard_image_size(img) < BLOCK) {
        fprintf(stderr, "bench-parallel-reads: image smaller than 64 KiB\n");
        return 1;
    }
    for (threads = 1; threads <= MAX_THREADS; threads *= 2) {
        Reader readers[MAX_THREADS];
        GThread *th[MAX_THREADS];
        gint64 start = g_get_monotonic_time();
        double secs;
        int i, failed = 0;

        for (i = 0; i < threads; i++) {
            readers[i] = (Reader) { img, i + 1, total / threads, 0 };
            th[i] = g_thread_new("reader", read_blocks, &readers[i]);
        }
        for (i = 0; i < threads; i++) {
            g_thread_join(th[i]);
            failed |= readers[i].failed;
        }
        if (failed) {
            fprintf(stderr, "bench-parallel-reads: a read failed\n");
            return 1;
        }
        secs = (g_get_monotonic_time() - start) / 1e6;
        printf("%d thread%s: %.2f GiB/s\n", threads, threads > 1 ? "s" : "",
               (double)(total / threads) * threads * BLOCK / secs /
               (1024.0 * 1024 * 1024));
    }
    qguard_image_close(img, NULL);
    return 0;
}
