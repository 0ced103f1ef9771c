/* SPDX-License-Identifier: MIT */
/*
 * What the power-cut and I/O-error tests share.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "fault-common.h"

void fault_test_begin(FaultTest *t, int *argc, char ***argv,
                      const char *name, const char *slow_what)
{
    const char *env_seed = g_getenv("QGUARD_TEST_SEED");
    const char *tmp = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR) ?
                      "/dev/shm" : g_get_tmp_dir();
    g_autofree char *base = g_strdup_printf("qguard-%s-XXXXXX", name);
    char **args = g_new0(char *, *argc + 2);

    /* Kept for the rest of the run: g_test_init() keeps pointers into it. */
    memcpy(args, *argv, *argc * sizeof(char *));
    args[(*argc)++] = (char *)"--keep-going";
    *argv = t->argv = args;
    g_test_init(argc, argv, NULL);
    t->slow = g_test_slow() || g_getenv("QGUARD_TEST_SLOW");
    t->seed = env_seed ? (guint32)strtoul(env_seed, NULL, 0)
                       : (guint32)g_random_int();
    printf("# seed %u (set QGUARD_TEST_SEED to repeat)%s%s\n", t->seed,
           t->slow ? ", " : "", t->slow ? slow_what : "");
    t->dir = g_mkdtemp(g_build_filename(tmp, base, NULL));
    g_assert_nonnull(t->dir);
}

void fault_test_end(FaultTest *t)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", t->dir);

    if (system(cmd) != 0) {
        g_printerr("could not remove %s\n", t->dir);
    }
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

void fill_pattern(uint8_t *buf, uint64_t len, uint64_t offset, uint32_t tag)
{
    uint64_t i;

    for (i = 0; i < len; i++) {
        uint64_t x = (offset + i) / 8 * 0x9e3779b97f4a7c15ULL + tag;
        buf[i] = (uint8_t)(x >> (8 * ((offset + i) % 8)));
    }
}

int run_qemu_img(const char *const *argv, char **output)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errs = NULL;
    int status;

    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL,
                               G_SPAWN_SEARCH_PATH |
                               G_SPAWN_LEAVE_DESCRIPTORS_OPEN, NULL, NULL,
                               &out, &errs, &status, &err));
    if (output) {
        *output = g_strconcat(out, errs, NULL);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
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
