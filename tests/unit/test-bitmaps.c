/* SPDX-License-Identifier: MIT */
/*
 * Persistent dirty bitmaps, with QEMU 7.2 as the oracle.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The content of a bitmap is read from QEMU through its NBD export:
 * "nbdinfo --map=qemu:dirty-bitmap:NAME -- [ qemu-nbd -r -B NAME IMG ]"
 * lists the dirty and clean extents exactly as QEMU loaded them.  The
 * listing (names, granularity, flags) comes from "qemu-img info".
 *
 *   - QEMU -> qguard: bitmaps QEMU made are updated by qguard's writes and
 *     QEMU reads the expected granules back;
 *   - qguard -> QEMU: bitmaps qguard adds are listed and used by QEMU, and
 *     later QEMU writes land in them;
 *   - the same operations done by "qemu-img bitmap" and by the library
 *     leave the same bitmaps;
 *   - in_use after a crash, resize, snapshot apply, repeated sessions
 *     (no leaks), errors with QEMU's messages, damaged directories and
 *     tables, and the overlap map around bitmap tables.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qguard.h"
#include "block/block_int.h"
#include "block/qcow2.h"
#include "test-lib.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

static char *test_dir;

/* ---- Running QEMU's tools ----------------------------------------------- */

/* Run a shell command line in the test directory; its exit status. */
static int sh(char **out, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int sh(char **out, const char *fmt, ...)
{
    g_autofree char *o = NULL, *e = NULL;
    va_list ap;
    int status;

    va_start(ap, fmt);
    status = test_shv(test_dir, &o, &e, fmt, ap);
    va_end(ap);
    if (out) {
        *out = g_strconcat(o, e, NULL);
    }
    return status;
}

static void sh_ok(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static void sh_ok(const char *fmt, ...)
{
    g_autofree char *line = NULL, *out = NULL;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    rc = sh(&out, "%s", line);
    if (rc != 0) {
        g_error("`%s` exited with %d:\n%s", line, rc, out);
    }
}

/* Merge adjacent extents with the same state: "start length dirty|clean". */
static void add_extent(GString *s, uint64_t *run_start, uint64_t *run_len,
                       int *run_dirty, uint64_t start, uint64_t len,
                       int dirty)
{
    if (*run_len && *run_dirty == dirty && *run_start + *run_len == start) {
        *run_len += len;
        return;
    }
    if (*run_len) {
        g_string_append_printf(s, "%" PRIu64 " %" PRIu64 " %s\n", *run_start,
                               *run_len, *run_dirty ? "dirty" : "clean");
    }
    *run_start = start;
    *run_len = len;
    *run_dirty = dirty;
}

static char *end_extents(GString *s, uint64_t run_start, uint64_t run_len,
                         int run_dirty)
{
    add_extent(s, &run_start, &run_len, &run_dirty, UINT64_MAX, 0, -1);
    return g_string_free(s, FALSE);
}

/* A bitmap's extents as QEMU reads them. */
static char *qemu_map(const char *file, const char *name)
{
    g_autofree char *out = NULL;
    g_auto(GStrv) lines = NULL;
    GString *s = g_string_new(NULL);
    uint64_t rs = 0, rl = 0;
    int rd = 0, rc, i;

    rc = sh(&out, "nbdinfo --map=qemu:dirty-bitmap:%s -- "
            "[ qemu-nbd -r -f qcow2 -B %s '%s' ]", name, name, file);
    if (rc != 0) {
        g_error("nbdinfo of bitmap %s in %s: exit %d\n%s", name, file, rc,
                out);
    }
    lines = g_strsplit(out, "\n", -1);
    for (i = 0; lines[i]; i++) {
        uint64_t start, len;
        int type;

        if (sscanf(lines[i], "%" SCNu64 " %" SCNu64 " %d", &start, &len,
                   &type) == 3) {
            add_extent(s, &rs, &rl, &rd, start, len, type & 1);
        }
    }
    return end_extents(s, rs, rl, rd);
}

/* The same, as qguard reads it (the image opened read-only). */
static char *qguard_map(const char *file, const char *name)
{
    g_autoptr(GError) err = NULL;
    GString *s = g_string_new(NULL);
    QGuardImage *img = NULL;
    uint64_t rs = 0, rl = 0, off = 0, size;
    int rd = 0;

    g_assert_cmpint(qguard_image_open(&img, file, "qcow2", NULL,
                                      QGUARD_OPEN_NO_BACKING, &err), ==, 0);
    size = qguard_image_size(img);
    while (off < size) {
        uint64_t n;
        bool dirty;

        g_assert_cmpint(qguard_bitmap_status(img, name, off, size - off,
                                             &dirty, &n, &err), ==, 0);
        g_assert_cmpuint(n, >, 0);
        add_extent(s, &rs, &rl, &rd, off, n, dirty);
        off += n;
    }
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    return end_extents(s, rs, rl, rd);
}

/* The extents expected from dirty byte ranges {start, len, ...}. */
static char *model_map(uint64_t size, uint32_t granularity,
                       const uint64_t *ranges, int n)
{
    uint64_t granules = (size + granularity - 1) / granularity, g;
    g_autofree uint8_t *dirty = g_malloc0(granules);
    GString *s = g_string_new(NULL);
    uint64_t rs = 0, rl = 0;
    int rd = 0, i;

    for (i = 0; i < n; i++) {
        for (g = ranges[2 * i] / granularity;
             g * granularity < ranges[2 * i] + ranges[2 * i + 1]; g++) {
            dirty[g] = 1;
        }
    }
    for (g = 0; g < granules; g++) {
        add_extent(s, &rs, &rl, &rd, g * granularity,
                   MIN(granularity, size - g * granularity), dirty[g]);
    }
    return end_extents(s, rs, rl, rd);
}

/* "name granularity flags" per bitmap, from qemu-img info. */
static char *qemu_list(const char *file)
{
    g_autofree char *out = NULL;
    int rc = sh(&out, "qemu-img info -U --output=json '%s' | python3 -c '"
                "import json,sys\n"
                "d=json.load(sys.stdin)[\"format-specific\"][\"data\"]\n"
                "for b in d.get(\"bitmaps\", []):\n"
                "  print(b[\"name\"], b[\"granularity\"], "
                "\",\".join(b[\"flags\"]))'", file);

    if (rc != 0) {
        g_error("qemu-img info %s: exit %d\n%s", file, rc, out);
    }
    return g_steal_pointer(&out);
}

static char *qguard_list(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;
    GString *s = g_string_new(NULL);
    QGuardBitmapInfo *list;
    guint n, i;

    g_assert_cmpint(qguard_bitmap_list(img, &list, &n, &err), ==, 0);
    for (i = 0; i < n; i++) {
        g_string_append_printf(s, "%s %u %s%s%s\n", list[i].name,
                               list[i].granularity,
                               list[i].in_use ? "in-use" : "",
                               list[i].in_use && list[i].is_auto ? "," : "",
                               list[i].is_auto ? "auto" : "");
    }
    qguard_bitmap_list_free(list, n);
    return g_string_free(s, FALSE);
}

static void qemu_check_clean(const char *file)
{
    g_autofree char *out = NULL;
    int rc = sh(&out, "qemu-img check '%s'", file);

    if (rc != 0 || !strstr(out, "No errors were found")) {
        g_error("qemu-img check %s: exit %d\n%s", file, rc, out);
    }
}

/* ---- qguard helpers ------------------------------------------------------ */

static QGuardImage *open_rw(const char *file)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    g_assert_cmpint(qguard_image_open(&img, file, "qcow2", NULL,
                                      QGUARD_OPEN_RDWR, &err), ==, 0);
    g_assert_no_error(err);
    return img;
}

static void close_ok(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    g_assert_no_error(err);
}

static void write_pattern(QGuardImage *img, uint64_t off, uint64_t len)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);

    memset(buf, 0x5a, len);
    g_assert_cmpint(qguard_image_pwrite(img, off, len, buf, 0, &err), ==, 0);
}

static void create_qemu(const char *file, const char *opts, const char *size)
{
    sh_ok("qemu-img create -q -f qcow2 %s%s '%s' %s", opts ? "-o " : "",
          opts ? opts : "", file, size);
}

#define OK(call) do { \
    g_autoptr(GError) err_ = NULL; \
    int ret_ = (call); \
    if (ret_ < 0) { \
        g_error("%s: %d (%s)", #call, ret_, err_ ? err_->message : "-"); \
    } \
} while (0)

#define E (&err_)

/* Expect @call to fail with exactly @msg. */
#define FAILS(msg, call) do { \
    g_autoptr(GError) err_ = NULL; \
    int ret_ = (call); \
    g_assert_cmpint(ret_, <, 0); \
    g_assert_nonnull(err_); \
    g_assert_cmpstr(err_->message, ==, (msg)); \
} while (0)

/* ---- QEMU -> qguard ------------------------------------------------------ */

static void test_qemu_bitmaps_updated(void)
{
    g_autofree char *f = tpath("q2g.qcow2");
    QGuardImage *img;
    static const uint64_t writes[] = {
        0, 64 * KiB,                /* pwrite */
        MiB + 512, 512,             /* sub-granule pwrite */
        8 * MiB, 128 * KiB,         /* zero write */
        20 * MiB + 100, 64 * KiB,   /* discard, unaligned */
        30 * MiB, 64 * KiB,         /* compressed */
        63 * MiB, MiB,              /* last granules */
    };
    uint32_t grans[] = { 65536, 512, 1 << 20, 65536 };
    const char *names[] = { "b0", "b1", "b2", "off" };
    int i;

    create_qemu(f, NULL, "64M");
    sh_ok("qemu-img bitmap --add '%s' b0 && "
          "qemu-img bitmap --add -g 512 '%s' b1 && "
          "qemu-img bitmap --add -g 1M '%s' b2 && "
          "qemu-img bitmap --add --disable '%s' off && "
          "qemu-io -c 'write 40M 64k' '%s' >/dev/null", f, f, f, f, f);
    {
        g_autofree char *l = qemu_list(f);
        g_assert_cmpstr(l, ==, "b0 65536 auto\nb1 512 auto\nb2 1048576 auto\n"
                        "off 65536 \n");
    }

    img = open_rw(f);
    {
        /* Enabled bitmaps are in_use on disk as soon as the open returns. */
        g_autofree char *l = qemu_list(f);
        g_assert_cmpstr(l, ==, "b0 65536 in-use,auto\nb1 512 in-use,auto\n"
                        "b2 1048576 in-use,auto\noff 65536 \n");
    }
    write_pattern(img, writes[0], writes[1]);
    write_pattern(img, writes[2], writes[3]);
    OK(qguard_image_pwrite_zeroes(img, writes[4], writes[5],
                                  QGUARD_ZERO_MAY_UNMAP, E));
    OK(qguard_image_discard(img, writes[6], writes[7], E));
    {
        g_autofree uint8_t *buf = g_malloc0(64 * KiB);
        OK(qguard_image_pwrite_compressed(img, writes[8], writes[9], buf, E));
    }
    write_pattern(img, writes[10], writes[11]);
    close_ok(img);

    qemu_check_clean(f);
    {
        g_autofree char *l = qemu_list(f);
        g_assert_cmpstr(l, ==, "b0 65536 auto\nb1 512 auto\nb2 1048576 auto\n"
                        "off 65536 \n");
    }
    for (i = 0; i < 4; i++) {
        uint64_t all[G_N_ELEMENTS(writes) + 2];
        g_autofree char *expect = NULL, *got = NULL, *mine = NULL;

        memcpy(all, writes, sizeof(writes));
        all[G_N_ELEMENTS(writes)] = 40 * MiB;
        all[G_N_ELEMENTS(writes) + 1] = 64 * KiB;
        /* "off" records nothing; the others: QEMU's write, then ours. */
        expect = i == 3 ? model_map(64 * MiB, grans[i], NULL, 0)
                        : model_map(64 * MiB, grans[i], all,
                                    G_N_ELEMENTS(all) / 2);
        got = qemu_map(f, names[i]);
        mine = qguard_map(f, names[i]);
        g_assert_cmpstr(got, ==, expect);
        g_assert_cmpstr(mine, ==, expect);
    }

    /* QEMU goes on writing into what qguard stored. */
    sh_ok("qemu-io -c 'write 50M 4k' '%s' >/dev/null", f);
    {
        g_autofree char *got = qemu_map(f, "b2");
        uint64_t r[] = { 0, 2 * MiB, 8 * MiB, MiB, 20 * MiB, MiB,
                         30 * MiB, MiB, 40 * MiB, MiB, 50 * MiB, MiB,
                         63 * MiB, MiB };
        g_autofree char *expect = model_map(64 * MiB, 1 << 20, r, 7);
        g_assert_cmpstr(got, ==, expect);
    }
}

/* A read-write open without writes leaves content and flags as they were. */
static void test_idle_session(void)
{
    g_autofree char *f = tpath("idle.qcow2");
    g_autofree char *before = NULL, *after = NULL;
    g_autofree char *l = NULL;

    create_qemu(f, NULL, "16M");
    sh_ok("qemu-img bitmap --add '%s' b0 && "
          "qemu-io -c 'write 1M 64k' '%s' >/dev/null", f, f);
    before = qemu_map(f, "b0");
    close_ok(open_rw(f));
    after = qemu_map(f, "b0");
    g_assert_cmpstr(after, ==, before);
    l = qemu_list(f);
    g_assert_cmpstr(l, ==, "b0 65536 auto\n");
    qemu_check_clean(f);
}

/* ---- qguard -> QEMU ------------------------------------------------------ */

static void test_qguard_bitmaps_used_by_qemu(void)
{
    g_autofree char *f = tpath("g2q.qcow2");
    QGuardImage *img;

    create_qemu(f, "cluster_size=4096", "32M");
    img = open_rw(f);
    g_assert_true(qguard_image_supports_bitmaps(img));
    OK(qguard_bitmap_add(img, "a", 0, false, E));
    OK(qguard_bitmap_add(img, "fine", 512, false, E));
    OK(qguard_bitmap_add(img, "frozen", 0, true, E));
    write_pattern(img, 3 * MiB + 1000, 10000);
    {
        /* As they will be stored: new ones most recent first (QEMU). */
        g_autofree char *l = qguard_list(img);
        g_assert_cmpstr(l, ==, "frozen 4096 \nfine 512 auto\na 4096 auto\n");
    }
    close_ok(img);

    qemu_check_clean(f);
    {
        g_autofree char *l = qemu_list(f);
        uint64_t r[] = { 3 * MiB + 1000, 10000 };
        g_autofree char *a = qemu_map(f, "a");
        g_autofree char *fine = qemu_map(f, "fine");
        g_autofree char *frozen = qemu_map(f, "frozen");
        g_autofree char *ea = model_map(32 * MiB, 4096, r, 1);
        g_autofree char *efine = model_map(32 * MiB, 512, r, 1);
        g_autofree char *efrozen = model_map(32 * MiB, 4096, NULL, 0);

        /* As QEMU stores bitmaps of one session: most recent first. */
        g_assert_cmpstr(l, ==, "frozen 4096 \nfine 512 auto\na 4096 auto\n");
        g_assert_cmpstr(a, ==, ea);
        g_assert_cmpstr(fine, ==, efine);
        g_assert_cmpstr(frozen, ==, efrozen);
    }

    /* QEMU tracks writes in qguard's bitmaps, and qguard reads them. */
    sh_ok("qemu-io -c 'write 20M 8k' '%s' >/dev/null && "
          "qemu-img bitmap --merge a '%s' frozen", f, f);
    {
        uint64_t r[] = { 3 * MiB + 1000, 10000, 20 * MiB, 8 * KiB };
        g_autofree char *e = model_map(32 * MiB, 4096, r, 2);
        g_autofree char *mine = qguard_map(f, "a");
        g_autofree char *frozen = qguard_map(f, "frozen");
        g_assert_cmpstr(mine, ==, e);
        g_assert_cmpstr(frozen, ==, e);
    }
    sh_ok("qemu-img convert --bitmaps -O qcow2 '%s' '%s.copy'", f, f);
    {
        g_autofree char *copy = g_strdup_printf("%s.copy", f);
        g_autofree char *l = qemu_list(copy);
        g_assert_cmpstr(l, ==, "frozen 4096 \nfine 512 auto\na 4096 auto\n");
    }
}

/* A first bitmap in an image with a backing file and unknown extensions. */
static void test_first_bitmap_header(void)
{
    g_autofree char *base = tpath("hb-base.qcow2");
    g_autofree char *f = tpath("hb.qcow2");
    QGuardImage *img;

    create_qemu(base, NULL, "4M");
    sh_ok("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s' && "
          "qemu-io -c 'write -P 7 0 1M' '%s' >/dev/null", base, f, base);
    img = open_rw(f);
    OK(qguard_bitmap_add(img, "b", 0, false, E));
    write_pattern(img, 2 * MiB, 4096);
    close_ok(img);
    qemu_check_clean(f);
    {
        g_autofree char *l = qemu_list(f);
        g_autofree char *m = qemu_map(f, "b");
        uint64_t r[] = { 2 * MiB, 4096 };
        g_autofree char *e = model_map(4 * MiB, 65536, r, 1);
        g_assert_cmpstr(l, ==, "b 65536 auto\n");
        g_assert_cmpstr(m, ==, e);
    }
    /* The backing file survived the header rewrite. */
    sh_ok("qemu-io -c 'read -P 7 0 1M' -c 'read -P 0x5a 2M 4k' '%s' "
          ">/dev/null", f);
}

/* ---- The same operations in QEMU and in qguard --------------------------- */

typedef struct Step {
    const char *qemu;       /* qemu-img/qemu-io arguments after the tool */
    int (*op)(QGuardImage *img, QGuardImage *other);
} Step;

static int op_add_b1(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_add(i, "b1", 512 * KiB, false, NULL);
}

static int op_add_b2(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_add(i, "b2", 0, true, NULL);
}

static int op_write_3m(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    write_pattern(i, 3 * MiB, MiB);
    return 0;
}

static int op_clear_b1(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_clear(i, "b1", NULL);
}

static int op_write_1m(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    write_pattern(i, MiB, MiB);
    return 0;
}

static int op_disable_b1(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_disable(i, "b1", NULL);
}

static int op_enable_b2(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_enable(i, "b2", NULL);
}

static int op_write_2m(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    write_pattern(i, 2 * MiB, 70000);
    return 0;
}

static int op_add_tmp_merge(QGuardImage *i, QGuardImage *o)
{
    int ret = qguard_bitmap_add(i, "tmp", 4096, true, NULL);
    return ret < 0 ? ret : qguard_bitmap_merge(i, "tmp", o, "other", NULL);
}

static int op_merge_b1_into_tmp(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_merge(i, "tmp", i, "b1", NULL);
}

static int op_merge_tmp_into_b2(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    return qguard_bitmap_merge(i, "b2", i, "tmp", NULL);
}

static int op_remove_b1_readd(QGuardImage *i, QGuardImage *o)
{
    int ret = qguard_bitmap_remove(i, "b1", NULL);
    (void)o;
    return ret < 0 ? ret : qguard_bitmap_add(i, "b1", 0, false, NULL);
}

static int op_write_end(QGuardImage *i, QGuardImage *o)
{
    (void)o;
    write_pattern(i, 10 * MiB - 4096, 4096);
    return 0;
}

/*
 * tests/qemu-img-bitmaps of QEMU 7.2, extended: every step is done by QEMU
 * on one copy and by qguard on another, then the listings and every
 * bitmap's extents must agree.
 */
static void test_same_as_qemu(void)
{
    static const Step steps[] = {
        { "img bitmap --add -g 512k IMG b1", op_add_b1 },
        { "img bitmap --add --disable IMG b2", op_add_b2 },
        { "io -c 'write 3M 1M' IMG", op_write_3m },
        { "img bitmap --clear IMG b1", op_clear_b1 },
        { "io -c 'write 1M 1M' IMG", op_write_1m },
        { "img bitmap --disable IMG b1", op_disable_b1 },
        { "img bitmap --enable IMG b2", op_enable_b2 },
        { "io -c 'write 2M 70000' IMG", op_write_2m },
        { "img bitmap --add --disable -g 4k --merge other -b OTHER -F qcow2 "
          "IMG tmp", op_add_tmp_merge },
        { "img bitmap --merge b1 IMG tmp", op_merge_b1_into_tmp },
        { "img bitmap --merge tmp IMG b2", op_merge_tmp_into_b2 },
        { "img bitmap --remove --add IMG b1", op_remove_b1_readd },
        { "io -c 'write 10236k 4k' IMG", op_write_end },
    };
    g_autofree char *qf = tpath("same-qemu.qcow2");
    g_autofree char *gf = tpath("same-qguard.qcow2");
    g_autofree char *other = tpath("same-other.qcow2");
    QGuardImage *oimg;
    size_t i;

    create_qemu(qf, NULL, "10M");
    create_qemu(gf, NULL, "10M");
    create_qemu(other, NULL, "10M");
    sh_ok("qemu-img bitmap --add -g 128k '%s' other && "
          "qemu-io -c 'write 5M 300k' '%s' >/dev/null", other, other);
    for (i = 0; i < G_N_ELEMENTS(steps); i++) {
        g_autofree char *cmd = g_strdup(steps[i].qemu);
        g_autofree char *c1 = NULL, *c2 = NULL;
        QGuardImage *img;
        GString *s = g_string_new("qemu-");

        /* QEMU, on its copy. */
        g_string_append(s, cmd);
        c1 = g_string_free(s, FALSE);
        {
            g_auto(GStrv) parts = g_strsplit(c1, "OTHER", -1);
            g_autofree char *t = g_strjoinv(other, parts);
            g_auto(GStrv) parts2 = g_strsplit(t, "IMG", -1);
            c2 = g_strjoinv(qf, parts2);
        }
        sh_ok("%s >/dev/null", c2);

        /* qguard, on its copy: one session per step, as the tools do. */
        img = open_rw(gf);
        oimg = NULL;
        g_assert_cmpint(qguard_image_open(&oimg, other, "qcow2", NULL, 0,
                                          NULL), ==, 0);
        g_assert_cmpint(steps[i].op(img, oimg), ==, 0);
        close_ok(oimg);
        close_ok(img);
    }
    qemu_check_clean(gf);
    {
        g_autofree char *lq = qemu_list(qf);
        g_autofree char *lg = qemu_list(gf);
        g_auto(GStrv) lines = NULL;

        g_assert_cmpstr(lg, ==, lq);
        g_assert_cmpstr(lq, ==, "b2 65536 auto\ntmp 4096 \nb1 65536 auto\n");
        lines = g_strsplit(lq, "\n", -1);
        for (i = 0; lines[i] && lines[i][0]; i++) {
            g_autofree char *name = g_strndup(lines[i],
                                              strchr(lines[i], ' ') -
                                              lines[i]);
            g_autofree char *mq = qemu_map(qf, name);
            g_autofree char *mg = qemu_map(gf, name);
            g_autofree char *mine = qguard_map(gf, name);
            g_assert_cmpstr(mg, ==, mq);
            g_assert_cmpstr(mine, ==, mq);
        }
    }
}

/* ---- Crash, resize, snapshots, sessions --------------------------------- */

static void copy_file(const char *from, const char *to)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(from, &data, &len, NULL));
    g_assert_true(g_file_set_contents(to, data, len, NULL));
}

static void test_crash_leaves_in_use(void)
{
    g_autofree char *f = tpath("crash.qcow2");
    g_autofree char *c = tpath("crash-copy.qcow2");
    QGuardImage *img;

    create_qemu(f, NULL, "8M");
    sh_ok("qemu-img bitmap --add '%s' on && "
          "qemu-img bitmap --add --disable '%s' off && "
          "qemu-io -c 'write 0 64k' '%s' >/dev/null && "
          "qemu-img bitmap --merge on '%s' off", f, f, f, f);
    img = open_rw(f);
    write_pattern(img, MiB, 4096);
    OK(qguard_image_flush(img, E));
    /* The file as a power cut would leave it. */
    copy_file(f, c);
    close_ok(img);

    {
        g_autofree char *l = qemu_list(c);
        g_autofree char *off = qemu_map(c, "off");
        uint64_t r[] = { 0, 64 * KiB };
        g_autofree char *e = model_map(8 * MiB, 65536, r, 1);
        QGuardImage *ro = NULL;

        /* The enabled one is stale, the disabled one still valid. */
        g_assert_cmpstr(l, ==, "on 65536 in-use,auto\noff 65536 \n");
        g_assert_cmpstr(off, ==, e);
        qemu_check_clean(c);

        g_assert_cmpint(qguard_image_open(&ro, c, "qcow2", NULL, 0, NULL),
                        ==, 0);
        {
            g_autofree char *gl = qguard_list(ro);
            g_assert_cmpstr(gl, ==, "on 65536 in-use,auto\noff 65536 \n");
        }
        FAILS("Bitmap 'on' is inconsistent and cannot be used\n"
              "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
              qguard_bitmap_status(ro, "on", 0, 512, &(bool){0},
                                   &(uint64_t){0}, E));
        close_ok(ro);
    }

    /* A read-write session keeps it stale, and only removal helps. */
    img = open_rw(c);
    write_pattern(img, 2 * MiB, 4096);
    FAILS("Bitmap 'on' is inconsistent and cannot be used\n"
          "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
          qguard_bitmap_clear(img, "on", E));
    FAILS("Bitmap 'on' is inconsistent and cannot be used\n"
          "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
          qguard_bitmap_enable(img, "on", E));
    FAILS("Bitmap 'on' is inconsistent and cannot be used\n"
          "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
          qguard_bitmap_merge(img, "off", img, "on", E));
    FAILS("Bitmap 'on' is inconsistent and cannot be used\n"
          "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
          qguard_image_truncate(img, 16 * MiB, false, NULL, E));
    close_ok(img);
    {
        g_autofree char *l = qemu_list(c);
        g_assert_cmpstr(l, ==, "on 65536 in-use,auto\noff 65536 \n");
    }
    img = open_rw(c);
    OK(qguard_bitmap_remove(img, "on", E));
    close_ok(img);
    qemu_check_clean(c);
    {
        g_autofree char *l = qemu_list(c);
        g_assert_cmpstr(l, ==, "off 65536 \n");
    }
}

static void test_resize(void)
{
    g_autofree char *qf = tpath("rs-qemu.qcow2");
    g_autofree char *gf = tpath("rs-qguard.qcow2");
    const char *names[] = { "a", "b" };
    QGuardImage *img;
    int i;

    create_qemu(qf, "cluster_size=512", "10M");
    sh_ok("qemu-img bitmap --add -g 512 '%s' a && "
          "qemu-img bitmap --add -g 64k --disable '%s' b && "
          "qemu-io -c 'write 9M 1M' -c 'write 0 4k' '%s' >/dev/null && "
          "qemu-img bitmap --merge a '%s' b", qf, qf, qf, qf);
    copy_file(qf, gf);

    /* Grow past a bitmap cluster's coverage, write, then shrink. */
    sh_ok("qemu-img resize '%s' 40M >/dev/null && "
          "qemu-io -c 'write 39M 512' '%s' >/dev/null && "
          "qemu-img resize --shrink '%s' 9500K >/dev/null", qf, qf, qf);
    img = open_rw(gf);
    OK(qguard_image_truncate(img, 40 * MiB, false, NULL, E));
    write_pattern(img, 39 * MiB, 512);
    close_ok(img);
    img = open_rw(gf);
    OK(qguard_image_truncate(img, 9500 * KiB, true, NULL, E));
    close_ok(img);

    qemu_check_clean(gf);
    for (i = 0; i < 2; i++) {
        g_autofree char *mq = qemu_map(qf, names[i]);
        g_autofree char *mg = qemu_map(gf, names[i]);
        g_assert_cmpstr(mg, ==, mq);
    }
}

static void test_snapshot_apply_marks_all(void)
{
    g_autofree char *f = tpath("snap.qcow2");
    QGuardImage *img;

    create_qemu(f, NULL, "4M");
    sh_ok("qemu-img bitmap --add '%s' on && "
          "qemu-img bitmap --add --disable '%s' off", f, f);
    img = open_rw(f);
    OK(qguard_snapshot_create(img, "s", E));
    OK(qguard_snapshot_apply(img, "s", E));
    close_ok(img);
    {
        g_autofree char *on = qemu_map(f, "on");
        g_autofree char *off = qemu_map(f, "off");
        g_assert_cmpstr(on, ==, "0 4194304 dirty\n");
        g_assert_cmpstr(off, ==, "0 4194304 clean\n");
    }
}

/* Many sessions: stores free what they replace, and the file stays small. */
static void test_repeated_sessions(void)
{
    g_autofree char *f = tpath("rep.qcow2");
    QGuardImage *img;
    struct stat st;
    int i;

    create_qemu(f, "cluster_size=4096", "64M");
    img = open_rw(f);
    OK(qguard_bitmap_add(img, "a", 512, false, E));
    OK(qguard_bitmap_add(img, "b", 0, false, E));
    close_ok(img);
    for (i = 0; i < 40; i++) {
        img = open_rw(f);
        if (i % 10 == 9) {
            OK(qguard_bitmap_clear(img, "b", E));
        }
        write_pattern(img, (uint64_t)i * MiB + 4096 * i, 4096);
        close_ok(img);
    }
    qemu_check_clean(f);
    {
        QGuardImage *ro = NULL;
        QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
        g_assert_cmpint(qguard_image_open(&ro, f, "qcow2", NULL, 0, NULL),
                        ==, 0);
        OK(qguard_image_check(ro, 0, &res, NULL, NULL, E));
        g_assert_cmpint(res.corruptions, ==, 0);
        g_assert_cmpint(res.leaks, ==, 0);
        close_ok(ro);
    }
    g_assert_cmpint(stat(f, &st), ==, 0);
    /* 40 data clusters, metadata and bitmaps: far below 1 MiB. */
    g_assert_cmpint(st.st_size, <, 1 * MiB);
    {
        uint64_t r[] = { 39 * MiB + 4096 * 39, 4096 };
        g_autofree char *b = qemu_map(f, "b");
        g_autofree char *e = model_map(64 * MiB, 4096, r, 1);
        g_assert_cmpstr(b, ==, e);
    }
}

/* ---- Errors ------------------------------------------------------------- */

static void test_errors(void)
{
    g_autofree char *f = tpath("err.qcow2");
    g_autofree char *v2 = tpath("err-v2.qcow2");
    g_autofree char *small = tpath("err-small.qcow2");
    g_autofree char *raw = tpath("err.raw");
    g_autofree char *longname = g_strnfill(1024, 'x');
    g_autofree char *msg = NULL;
    QGuardImage *img, *o = NULL, *r = NULL;

    create_qemu(f, NULL, "16M");
    create_qemu(v2, "compat=0.10", "16M");
    create_qemu(small, NULL, "8M");
    sh_ok("qemu-img create -q -f raw '%s' 1M && "
          "qemu-img bitmap --add '%s' s", raw, small);
    img = open_rw(f);
    OK(qguard_bitmap_add(img, "b", 0, false, E));
    FAILS("Bitmap name cannot be empty", qguard_bitmap_add(img, "", 0, 0, E));
    FAILS("Granularity must be power of 2 and at least 512",
          qguard_bitmap_add(img, "x", 256, false, E));
    FAILS("Granularity must be power of 2 and at least 512",
          qguard_bitmap_add(img, "x", 1536, false, E));
    FAILS("Bitmap already exists: b", qguard_bitmap_add(img, "b", 0, 0, E));
    msg = g_strdup_printf("Can't make bitmap '%s' persistent in '#block100': "
                          "Name length exceeds maximum (1023 characters)",
                          longname);
    FAILS(msg, qguard_bitmap_add(img, longname, 0, false, E));
    FAILS("Dirty bitmap 'nope' not found", qguard_bitmap_remove(img, "nope",
                                                                 E));
    FAILS("Dirty bitmap 'nope' not found", qguard_bitmap_clear(img, "nope",
                                                                E));
    FAILS("Dirty bitmap 'nope' not found", qguard_bitmap_enable(img, "nope",
                                                                 E));
    FAILS("Dirty bitmap 'nope' not found",
          qguard_bitmap_merge(img, "nope", img, "b", E));
    FAILS("Dirty bitmap 'nope' not found",
          qguard_bitmap_merge(img, "b", img, "nope", E));
    g_assert_cmpint(qguard_image_open(&o, small, "qcow2", NULL, 0, NULL), ==,
                    0);
    FAILS("Bitmaps are of different sizes (destination size is 16777216, "
          "source size is 8388608) and can't be merged",
          qguard_bitmap_merge(img, "b", o, "s", E));
    /* A read-only image refuses changes. */
    FAILS("Operation not permitted", qguard_bitmap_add(o, "x", 0, false, E));
    g_assert_cmpint(qguard_image_open(&r, raw, "raw", NULL, QGUARD_OPEN_RDWR,
                                      NULL), ==, 0);
    g_assert_false(qguard_image_supports_bitmaps(r));
    FAILS("Dirty bitmap 's' not found",
          qguard_bitmap_merge(img, "b", r, "s", E));
    FAILS("Can't store persistent bitmaps to #block100: Operation not "
          "supported", qguard_bitmap_add(r, "x", 0, false, E));
    close_ok(r);
    close_ok(o);
    close_ok(img);

    img = open_rw(v2);
    g_assert_false(qguard_image_supports_bitmaps(img));
    FAILS("Can't make bitmap 'b' persistent in '#block100': Cannot store "
          "dirty bitmaps in qcow2 v2 files",
          qguard_bitmap_add(img, "b", 0, false, E));
    close_ok(img);

    /* Too many granules for QEMU's 512 MiB limit. */
    {
        g_autofree char *big = tpath("err-big.qcow2");
        create_qemu(big, NULL, "4T");
        img = open_rw(big);
        FAILS("Can't make bitmap 'b' persistent in '#block100': Too much "
              "space will be occupied by the bitmap. Use larger granularity",
              qguard_bitmap_add(img, "b", 512, false, E));
        close_ok(img);
    }

    /* The same messages from qemu-img (its prefix and node name aside). */
    g_free(msg);
    sh(&msg, "{ qemu-img bitmap --add -g 256 '%s' x; "
       "qemu-img bitmap --add '%s' b; "
       "qemu-img bitmap --merge s -b '%s' '%s' b; } 2>&1", f, f, small, f);
    g_assert_cmpstr(msg, ==,
        "qemu-img: Operation add on bitmap x failed: Granularity must be "
        "power of 2 and at least 512\n"
        "qemu-img: Operation add on bitmap b failed: Bitmap already "
        "exists: b\n"
        "qemu-img: Operation merge on bitmap b failed: Bitmaps are of "
        "different sizes (destination size is 16777216, source size is "
        "8388608) and can't be merged\n");
}

/* ---- Damaged bitmaps --------------------------------------------------- */

static uint64_t peek_be(const char *file, uint64_t off, int width)
{
    g_autofree char *data = NULL;
    gsize len;
    uint64_t v = 0;
    int i;

    g_assert_true(g_file_get_contents(file, &data, &len, NULL));
    g_assert_cmpuint(off + width, <=, len);
    for (i = 0; i < width; i++) {
        v = v << 8 | (uint8_t)data[off + i];
    }
    return v;
}

static void poke_be(const char *file, uint64_t off, int width, uint64_t v)
{
    FILE *fp = fopen(file, "r+b");
    int i;

    g_assert_nonnull(fp);
    g_assert_cmpint(fseek(fp, off, SEEK_SET), ==, 0);
    for (i = width - 1; i >= 0; i--) {
        fputc((int)(v >> (8 * i)) & 0xff, fp);
    }
    fclose(fp);
}

/* Header offset of the bitmaps extension's data. */
static uint64_t ext_offset(const char *file)
{
    uint64_t off = peek_be(file, 100, 4);

    for (;;) {
        uint32_t magic = peek_be(file, off, 4);
        uint32_t len = peek_be(file, off + 4, 4);
        g_assert_cmpuint(magic, !=, 0);
        if (magic == 0x23852875) {
            return off + 8;
        }
        off += 8 + ROUND_UP(len, 8);
    }
}

typedef struct Poke {
    int field;          /* 0: directory entry byte, 1: table entry, 2: ext */
    uint64_t at;
    int width;          /* 0: no poke */
    uint64_t value;
} Poke;

typedef struct Damage {
    const char *what;
    const char *message;
    Poke pokes[3];
} Damage;

#define CONSTRAINTS "Bitmap 'b0' doesn't satisfy the constraints"
#define BAD_TABLE "Could not read bitmap_table table from image for " \
                  "bitmap 'b0': Invalid argument"

static const Damage damages[] = {
    { "table-offset-unaligned", CONSTRAINTS, { { 0, 0, 8, 0x10200 } } },
    { "table-size-zero", CONSTRAINTS, { { 0, 8, 4, 0 } } },
    { "table-size-huge", CONSTRAINTS, { { 0, 8, 4, 0x8000001 } } },
    { "reserved-flag", CONSTRAINTS, { { 0, 12, 4, 0x6 } } },
    { "type", CONSTRAINTS, { { 0, 16, 1, 2 } } },
    { "granularity-8", CONSTRAINTS, { { 0, 17, 1, 8 } } },
    { "granularity-32", CONSTRAINTS, { { 0, 17, 1, 32 } } },
    { "name-size-past-end", "Broken bitmap directory",
      { { 0, 18, 2, 0x7000 } } },
    { "extra-data", "Bitmap extra data is not supported",
      { { 0, 20, 4, 8 } } },
    { "nb-bitmaps-low", "More bitmaps found than specified in header "
      "extension", { { 2, 0, 4, 1 } } },
    { "nb-bitmaps-high", "Less bitmaps found than specified in header "
      "extension", { { 2, 0, 4, 3 } } },
    { "dir-size-short", "Broken bitmap directory", { { 2, 8, 8, 30 } } },
    { "table-entry-reserved", BAD_TABLE, { { 1, 0, 8, 0x2 } } },
    { "table-entry-unaligned", BAD_TABLE, { { 1, 0, 8, 0x10201 } } },
    /* QEMU's largest directory, past the end of the file: read as zeros. */
    { "dir-max-past-eof", "Bitmap '' doesn't satisfy the constraints",
      { { 2, 0, 4, 65535 }, { 2, 8, 8, 1024 * 65535 },
        { 2, 16, 8, UINT64_C(1) << 40 } } },
};

static void test_damaged(gconstpointer data)
{
    const Damage *d = data;
    g_autofree char *f = tpath("damaged.qcow2");
    g_autofree char *out = NULL, *expect = NULL;
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;
    uint64_t ext = 0, dir, table;
    int rc, i;

    create_qemu(f, NULL, "8M");
    sh_ok("qemu-img bitmap --add '%s' b0 && qemu-img bitmap --add '%s' b1 && "
          "qemu-io -c 'write 0 64k' '%s' >/dev/null", f, f, f);
    ext = ext_offset(f);
    dir = peek_be(f, ext + 16, 8);
    table = peek_be(f, dir, 8);
    for (i = 0; i < 3 && d->pokes[i].width; i++) {
        const Poke *p = &d->pokes[i];
        uint64_t base[] = { dir, table, ext };

        poke_be(f, base[p->field] + p->at, p->width, p->value);
    }

    /* QEMU's verdict, as qemu-img info prints it. */
    rc = sh(&out, "qemu-img info '%s' 2>&1 >/dev/null", f);
    expect = g_strdup_printf("qemu-img: Could not open '%s': %s\n", f,
                             d->message);
    g_assert_cmpint(rc, ==, 1);
    g_assert_cmpstr(out, ==, expect);

    /* A read-write open fails with the same message. */
    qguard_set_message_handler(NULL, NULL);
    rc = qguard_image_open(&img, f, "qcow2", NULL, QGUARD_OPEN_RDWR, &err);
    g_assert_cmpint(rc, <, 0);
    g_assert_cmpstr(err->message, ==, d->message);
    g_clear_error(&err);

    /* Read-only: the data stays readable; bitmaps are unavailable. */
    g_assert_cmpint(qguard_image_open(&img, f, "qcow2", NULL, 0, &err), ==,
                    0);
    {
        uint8_t buf[512];
        bool dirty;
        uint64_t n;
        QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);

        OK(qguard_image_pread(img, 0, 512, buf, E));
        g_assert_cmpint(buf[0], ==, 0xcd);
        rc = qguard_bitmap_status(img, "b0", 0, 512, &dirty, &n, &err);
        g_assert_cmpint(rc, <, 0);
        g_assert_cmpstr(err->message, ==, d->message);
        g_clear_error(&err);
        /* check must not crash; whatever it finds is reported. */
        qguard_image_check(img, 0, &res, NULL, NULL, &err);
        g_clear_error(&err);
    }
    close_ok(img);
}

/* ---- Overlap protection of bitmap tables --------------------------------- */

static void test_tables_protected(gconstpointer data)
{
    const char *algorithm = data;
    g_autofree char *f = tpath("ol.qcow2");
    g_autofree char *opts_str = g_strdup_printf("overlap-check.algorithm=%s",
                                                algorithm);
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;
    BDRVQcow2State *s;
    uint64_t ext, dir, table, data_cluster, old_table;

    create_qemu(f, NULL, "8M");
    sh_ok("qemu-img bitmap --add '%s' b0 && "
          "qemu-io -c 'write 0 64k' '%s' >/dev/null", f, f);
    ext = ext_offset(f);
    dir = peek_be(f, ext + 16, 8);
    table = peek_be(f, dir, 8);
    data_cluster = peek_be(f, table, 8) & ~UINT64_C(0x1ff);
    g_assert_cmpuint(data_cluster, !=, 0);

    g_assert_cmpint(qguard_opts_parse(opts, opts_str, NULL, NULL), ==, 0);
    g_assert_cmpint(qguard_image_open(&img, f, "qcow2", opts,
                                      QGUARD_OPEN_RDWR, NULL), ==, 0);
    qguard_opts_free(opts);
    s = img->opaque;
    g_assert_cmpint(qcow2_overlap_hit(s, 0, dir, 8), ==,
                     QCOW2_OL_BITMAP_DIRECTORY);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, table + 8, 8), ==,
                     QCOW2_OL_BITMAP_DIRECTORY);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, data_cluster, 512),
                     ==, 0);

    /* A store moves the table: the map follows. */
    write_pattern(img, MiB, 4096);
    {
        g_autoptr(GError) err = NULL;
        g_assert_cmpint(qcow2_bitmaps_store(s, false), ==, 0);
    }
    old_table = table;
    table = s->bitmap_directory_offset ? peek_be(f, s->bitmap_directory_offset,
                                                 8) : 0;
    g_assert_cmpuint(table, !=, old_table);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, table, 8), ==,
                     QCOW2_OL_BITMAP_DIRECTORY);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, old_table, 8), ==, 0);
    g_assert_cmpint(qcow2_overlap_hit(s, 0, dir, 8), ==, 0);
    g_assert_cmpint(qcow2_overlap_hit(
                         s, 0, s->bitmap_directory_offset, 8), ==,
                     QCOW2_OL_BITMAP_DIRECTORY);
    close_ok(img);
    qemu_check_clean(f);
}

int main(int argc, char **argv)
{
    g_autofree char *tmpl = g_build_filename(g_get_tmp_dir(),
                                             "qguard-bitmaps-XXXXXX", NULL);
    g_autofree char *rm = NULL;
    size_t i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    test_dir = g_mkdtemp(tmpl);
    test_scratch_set(test_dir);
    g_assert_nonnull(test_dir);

    g_test_add_func("/bitmaps/qemu-bitmaps-updated",
                    test_qemu_bitmaps_updated);
    g_test_add_func("/bitmaps/idle-session", test_idle_session);
    g_test_add_func("/bitmaps/qguard-bitmaps-used-by-qemu",
                    test_qguard_bitmaps_used_by_qemu);
    g_test_add_func("/bitmaps/first-bitmap-header", test_first_bitmap_header);
    g_test_add_func("/bitmaps/same-as-qemu", test_same_as_qemu);
    g_test_add_func("/bitmaps/crash-leaves-in-use", test_crash_leaves_in_use);
    g_test_add_func("/bitmaps/resize", test_resize);
    g_test_add_func("/bitmaps/snapshot-apply-marks-all",
                    test_snapshot_apply_marks_all);
    g_test_add_func("/bitmaps/repeated-sessions", test_repeated_sessions);
    g_test_add_func("/bitmaps/errors", test_errors);
    for (i = 0; i < G_N_ELEMENTS(damages); i++) {
        g_autofree char *p = g_strdup_printf("/bitmaps/damaged/%s",
                                             damages[i].what);
        g_test_add_data_func(p, &damages[i], test_damaged);
    }
    g_test_add_data_func("/bitmaps/tables-protected/windowed", "windowed",
                         test_tables_protected);
    g_test_add_data_func("/bitmaps/tables-protected/linear", "linear",
                         test_tables_protected);
    ret = g_test_run();
    rm = g_strdup_printf("rm -rf '%s'", test_dir);
    if (system(rm) != 0) {
        g_printerr("could not remove %s\n", test_dir);
    }
    return ret;
}
