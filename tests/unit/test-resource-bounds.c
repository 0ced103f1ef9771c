/* SPDX-License-Identifier: MIT */
/*
 * Resource bounds: an image whose header claims huge tables is refused
 * quickly, with a clear error, and without allocating what it claims.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Each case patches the header of a small, valid image, then opens it (and,
 * if the open succeeds, checks it) in a forked child.  The parent measures
 * the child's peak RSS with wait4() and its wall time.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"

#define MAX_RSS_KIB (256 * 1024)
#define MAX_SECONDS 1.0


typedef struct Field {
    int offset;
    int width;              /* 4 or 8 bytes, big endian */
    uint64_t value;
} Field;

typedef struct BoundsCase {
    const char *name;
    const char *create_opts;
    Field fields[3];
    /* Expected substring of the error; NULL: the open succeeds; "": either
     * outcome is fine. */
    const char *error;
} BoundsCase;

static void put_be(uint8_t *p, int width, uint64_t v)
{
    int i;

    for (i = 0; i < width; i++) {
        p[i] = v >> (8 * (width - 1 - i));
    }
}

static void quiet(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}

/* In the child: 0 refused with the expected message, 1 opened and checked,
 * 2 anything else. */
static int child_open(const char *path, const char *want, int pipe_fd)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    const char *msg;
    int ret;

    qguard_set_message_handler(quiet, NULL);
    ret = qguard_image_open(&img, path, "qcow2", NULL,
                            QGUARD_OPEN_NO_BACKING, &err);
    msg = err ? err->message : "(no error)";
    if (write(pipe_fd, msg, strlen(msg)) < 0) {
        return 2;
    }
    if (ret < 0) {
        return want && strstr(msg, want) ? 0 : 2;
    }
    qguard_image_check(img, 0, &res, NULL, NULL, NULL);
    qguard_image_close(img, NULL);
    return want && *want ? 2 : 1;
}

static void run_case(gconstpointer data)
{
    const BoundsCase *bc = data;
    g_autoptr(GError) err = NULL;
    g_autofree char *path = tpath("bounds.qcow2");
    g_autofree char *hdr_data = NULL;
    char msg[1024];
    struct rusage ru;
    gint64 start, elapsed;
    gsize len;
    pid_t pid;
    int status, i, fds[2];
    ssize_t n;

    test_image_new(path, "qcow2", bc->create_opts);
    g_assert_true(g_file_get_contents(path, &hdr_data, &len, NULL));
    for (i = 0; i < 3 && bc->fields[i].width; i++) {
        put_be((uint8_t *)hdr_data + bc->fields[i].offset,
               bc->fields[i].width, bc->fields[i].value);
    }
    g_assert_true(g_file_set_contents(path, hdr_data, len, NULL));

    g_assert_cmpint(pipe(fds), ==, 0);
    fflush(NULL);
    start = g_get_monotonic_time();
    pid = fork();
    g_assert_cmpint(pid, >=, 0);
    if (pid == 0) {
        close(fds[0]);
        _exit(child_open(path, bc->error, fds[1]));
    }
    close(fds[1]);
    n = read(fds[0], msg, sizeof(msg) - 1);
    msg[MAX(n, 0)] = 0;
    close(fds[0]);
    g_assert_cmpint(wait4(pid, &status, 0, &ru), ==, pid);
    elapsed = g_get_monotonic_time() - start;

    printf("# %s: %s; peak RSS %ld KiB, %.3f s\n", bc->name, msg,
           ru.ru_maxrss, elapsed / 1e6);
    g_assert_true(WIFEXITED(status));
    if (bc->error && !*bc->error) {
        /* Either outcome is fine, as long as it is cheap. */
        g_assert_cmpint(WEXITSTATUS(status), !=, 2);
    } else {
        g_assert_cmpint(WEXITSTATUS(status), ==, bc->error ? 0 : 1);
    }
    g_assert_cmpint(ru.ru_maxrss, <, MAX_RSS_KIB);
    g_assert_cmpfloat(elapsed / 1e6, <, MAX_SECONDS);
}

/* Header offsets (docs/interop/qcow2.txt). */
#define HDR_L1_SIZE          36
#define HDR_L1_OFFSET        40
#define HDR_REFTABLE_OFFSET  48
#define HDR_REFTABLE_CLUSTERS 56
#define HDR_NB_SNAPSHOTS     60
#define HDR_SNAPSHOTS_OFFSET 64

static const BoundsCase cases[] = {
    /* 2^31 L1 entries: 16 GiB of table. */
    { "l1-2^31-entries", "size=1M",
      { { HDR_L1_SIZE, 4, UINT64_C(1) << 31 } }, "Active L1 table too large" },
    /* The largest L1 QEMU accepts (4 Mi entries, 32 MiB), past EOF: the
     * table is read (zeros), memory stays at the table's size. */
    { "l1-max-past-eof", "size=1M",
      { { HDR_L1_SIZE, 4, 4 << 20 }, { HDR_L1_OFFSET, 8, 1ULL << 40 } },
      NULL },
    /* 2^31 refcount-table entries: 2^34 bytes of table in 2^18 clusters. */
    { "reftable-2^31-entries", "size=1M",
      { { HDR_REFTABLE_CLUSTERS, 4, (UINT64_C(1) << 34) >> 16 } },
      "Reference count table too large" },
    { "reftable-2^32-clusters", "size=1M,cluster_size=512",
      { { HDR_REFTABLE_CLUSTERS, 4, UINT32_MAX } },
      "Reference count table too large" },
    /* The largest refcount table QEMU accepts (8 MiB), past EOF. */
    { "reftable-max-past-eof", "size=1M",
      { { HDR_REFTABLE_CLUSTERS, 4, (8 << 20) >> 16 },
        { HDR_REFTABLE_OFFSET, 8, 1ULL << 40 } }, NULL },
    /* Millions of snapshots. */
    { "snapshots-4-million", "size=1M",
      { { HDR_NB_SNAPSHOTS, 4, 4000000 },
        { HDR_SNAPSHOTS_OFFSET, 8, 0x10000 } }, "Snapshot table too large" },
    { "snapshots-2^32-1", "size=1M",
      { { HDR_NB_SNAPSHOTS, 4, UINT32_MAX },
        { HDR_SNAPSHOTS_OFFSET, 8, 0x10000 } }, "Snapshot table too large" },
    /* The most QEMU accepts (65536), all zeros past EOF: each is refused
     * as a snapshot or read cheaply, never 65536 big allocations. */
    { "snapshots-65536-past-eof", "size=1M",
      { { HDR_NB_SNAPSHOTS, 4, 65536 },
        { HDR_SNAPSHOTS_OFFSET, 8, 1ULL << 40 } }, "" },
};

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    test_scratch_init_fast("qguard-bounds-XXXXXX");
    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *name = g_strdup_printf("/resource-bounds/%s",
                                                cases[i].name);
        g_test_add_data_func(name, &cases[i], run_case);
    }
    ret = g_test_run();
    test_scratch_remove();
    return ret;
}
