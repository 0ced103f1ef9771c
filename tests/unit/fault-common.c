/* SPDX-License-Identifier: MIT */
/*
 * What the power-cut and I/O-error tests share.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault-common.h"
#include "test-lib.h"

void fault_test_begin(FaultTest *t, int *argc, char ***argv,
                      const char *name, const char *slow_what)
{
    g_autofree char *base = g_strdup_printf("qguard-%s-XXXXXX", name);
    char **args = g_new0(char *, *argc + 2);

    /* Kept for the rest of the run: g_test_init() keeps pointers into it. */
    memcpy(args, *argv, *argc * sizeof(char *));
    args[(*argc)++] = (char *)"--keep-going";
    *argv = t->argv = args;
    g_test_init(argc, argv, NULL);
    t->slow = g_test_slow() || g_getenv("QGUARD_TEST_SLOW");
    t->seed = test_seed();
    if (t->slow) {
        printf("# %s\n", slow_what);
    }
    t->dir = g_strdup(test_scratch_init_fast(base));
}

void fault_test_end(FaultTest *t)
{
    test_scratch_remove();
    g_free(t->dir);
    g_free(t->argv);
}

uint64_t hash_sector(const uint8_t *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;

    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
    }
    for (; i < len; i++) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    return h;
}

int run_qemu_img(const char *const *argv, char **output)
{
    g_autofree char *out = NULL, *errs = NULL;
    int status = test_spawn(NULL, argv, G_SPAWN_LEAVE_DESCRIPTORS_OPEN, &out,
                            &errs);

    if (output) {
        *output = g_strconcat(out, errs, NULL);
    }
    return status;
}

void report_line(void *opaque, const char *line)
{
    g_string_append_printf(opaque, "  %s\n", line);
}

void quiet(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}
