/* SPDX-License-Identifier: MIT */
/*
 * What the power-cut and I/O-error tests share: their set-up (seed,
 * scratch directory, slow mode), content hashing, patterns, and running
 * qemu-img as the oracle.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_FAULT_COMMON_H
#define QGUARD_FAULT_COMMON_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "test-lib.h"

typedef struct FaultTest {
    char *dir;          /* scratch directory, removed by fault_test_end() */
    guint32 seed;       /* QGUARD_TEST_SEED, or random */
    bool slow;          /* -m slow or QGUARD_TEST_SLOW: every case */
    char **argv;        /* the arguments g_test_init() was given */
} FaultTest;

/*
 * g_test_init() with --keep-going (workloads are independent: one failure
 * must not hide the others), the seed and the scratch directory
 * qguard-@name-XXXXXX; prints the seed and, in slow mode, @slow_what.
 */
void fault_test_begin(FaultTest *t, int *argc, char ***argv,
                      const char *name, const char *slow_what);
void fault_test_end(FaultTest *t);

uint64_t hash_sector(const uint8_t *p, size_t len);
/* Exit status of qemu-img @argv; its stdout+stderr into @output if set. */
int run_qemu_img(const char *const *argv, char **output);
/* Message handlers: indent into a GString, or drop. */
void report_line(void *opaque, const char *line);
void quiet(void *opaque, const char *line);

#endif /* QGUARD_FAULT_COMMON_H */
