/* SPDX-License-Identifier: MIT */
/*
 * Replay every fuzz reproducer in tests/fuzz/regressions through the fuzz
 * entry points (tests/fuzz/fuzz-targets.c), built with the normal compiler.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Each file once made a fuzz target crash, hang or report a broken
 * property.  A file is replayed through all three entry points (any input
 * must be safe for any of them) in a subprocess, so that a crash fails that
 * file's subtest and not the whole binary.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>

#include "fuzz-targets.h"

#ifndef FUZZ_REGRESSIONS_DIR
#error "FUZZ_REGRESSIONS_DIR must name tests/fuzz/regressions"
#endif

typedef int FuzzEntry(const uint8_t *data, size_t size);

static const struct {
    const char *name;
    FuzzEntry *fn;
} entries[] = {
    { "image-check", qguard_fuzz_image_check },
    { "image-io", qguard_fuzz_image_io },
    { "overlap-map", qguard_fuzz_overlap_map },
};

static void replay_file(gconstpointer data)
{
    const char *path = data;
    g_autofree char *base = g_path_get_basename(path);

    if (g_test_subprocess()) {
        g_autofree char *bytes = NULL;
        gsize len;
        size_t i;

        g_assert_true(g_file_get_contents(path, &bytes, &len, NULL));
        for (i = 0; i < G_N_ELEMENTS(entries); i++) {
            g_test_message("%s through %s", path, entries[i].name);
            entries[i].fn((const uint8_t *)bytes, len);
        }
        qguard_fuzz_cleanup();
        return;
    }
    g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC,
                           G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_test_trap_assert_passed();
}

/* The directory is there and holds reproducers: an empty replay proves
 * nothing. */
static void test_corpus_present(gconstpointer data)
{
    g_assert_cmpuint(GPOINTER_TO_UINT(data), >, 0);
}

static int cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    g_autoptr(GPtrArray) paths = g_ptr_array_new_with_free_func(g_free);
    guint i, j;
    int ret;

    g_test_init(&argc, &argv, NULL);
    /* A failed replay marks its subtest failed; the others still run. */
    g_test_set_nonfatal_assertions();
    for (i = 0; i < G_N_ELEMENTS(entries); i++) {
        g_autofree char *dir = g_build_filename(FUZZ_REGRESSIONS_DIR,
                                                entries[i].name, NULL);
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        GDir *d = g_dir_open(dir, 0, NULL);
        const char *name;

        if (!d) {
            continue;
        }
        while ((name = g_dir_read_name(d))) {
            if (name[0] != '.') {
                g_ptr_array_add(names, g_strdup(name));
            }
        }
        g_dir_close(d);
        g_ptr_array_sort(names, cmp_str);
        for (j = 0; j < names->len; j++) {
            const char *n = g_ptr_array_index(names, j);
            char *path = g_build_filename(dir, n, NULL);
            g_autofree char *test = g_strdup_printf("/fuzz-regressions/%s/%s",
                                                    entries[i].name, n);
            g_ptr_array_add(paths, path);
            g_test_add_data_func(test, path, replay_file);
        }
    }
    g_test_add_data_func("/fuzz-regressions/corpus-present",
                         GUINT_TO_POINTER(paths->len), test_corpus_present);
    ret = g_test_run();
    return ret;
}
