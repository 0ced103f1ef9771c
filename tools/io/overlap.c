/* SPDX-License-Identifier: MIT */
/*
 * qguard's own qemu-io commands: overlap-stats and overlap-stats-reset,
 * the counters of the metadata overlap protection.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "io.h"

static const char overlap_stats_help[] =
"\n"
" shows the counters of the qcow2 metadata overlap protection\n"
"\n"
" algorithm, enabled checks and the number of checks and refused writes;\n"
" for the windowed map also its conversions between list and bytemap\n"
" windows, inserts, removes, queries, memory use and cache size.\n"
" 'overlap-stats-reset' sets the counters back to zero.\n"
"\n";

static int overlap_stats_f(int argc, char **argv)
{
    QGuardOverlapStats st = QGUARD_SIZED(QGuardOverlapStats);
    GString *checks = g_string_new(NULL);
    int ret, i;

    (void)argc;
    (void)argv;
    ret = qguard_image_overlap_stats(image, &st);
    if (ret < 0) {
        printf("overlap-stats failed: %s\n", strerror(-ret));
        g_string_free(checks, TRUE);
        return ret;
    }
    for (i = 0; i < qguard_overlap_type_count(); i++) {
        if (st.checks_mask & (1u << i)) {
            g_string_append_printf(checks, "%s%s", checks->len ? ", " : "",
                                   qguard_overlap_type_name(i));
        }
    }
    printf("algorithm: %s\n", st.algorithm);
    printf("enabled checks: %s\n", checks->len ? checks->str : "none");
    printf("checks performed: %" PRIu64 "\n", st.checks);
    printf("refused writes: %" PRIu64 "\n", st.refused);
    printf("list->bytemap: %" PRIu64 "\n", st.list_to_bytemap);
    printf("bytemap->list: %" PRIu64 "\n", st.bytemap_to_list);
    printf("bytemaps freed: %" PRIu64 "\n", st.bytemaps_freed);
    printf("inserts: %" PRIu64 "\n", st.inserts);
    printf("removes: %" PRIu64 "\n", st.removes);
    printf("queries: %" PRIu64 "\n", st.queries);
    printf("windows: %" PRIu64 "\n", st.windows);
    printf("map memory current: %" PRIu64 " bytes\n", st.mem_current);
    printf("map memory peak: %" PRIu64 " bytes\n", st.mem_peak);
    printf("cache size: %u\n", st.cache_size);
    g_string_free(checks, TRUE);
    return 0;
}

const Command overlap_stats_cmd = {
    .name = "overlap-stats", .func = overlap_stats_f,
    .oneline = "prints the counters of the metadata overlap protection",
    .help = overlap_stats_help,
};

static int overlap_stats_reset_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    qguard_image_overlap_stats_reset(image);
    return 0;
}

const Command overlap_stats_reset_cmd = {
    .name = "overlap-stats-reset", .func = overlap_stats_reset_f,
    .oneline = "resets the counters of the metadata overlap protection",
};
