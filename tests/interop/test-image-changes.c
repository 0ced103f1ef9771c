/* SPDX-License-Identifier: MIT */
/*
 * The library side of qemu-img amend, measure, rebase and commit, checked
 * against QEMU 7.2: images changed by libqguard pass "qemu-img check" and
 * read back through qemu-img exactly as before the change; refusals carry
 * qemu-img's own message; measured sizes are qemu-img's numbers.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Images are built with qemu-img and qemu-io, so each test starts from
 * what QEMU writes.  Every test runs in its own directory.
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qguard.h"
#include "test-lib.h"

static char *test_dir;

/* Run a shell command that must succeed; returns its stdout. */
static char * G_GNUC_PRINTF(1, 2) sh(const char *fmt, ...)
{
    g_autofree char *cmd = NULL;
    g_autofree char *err = NULL;
    char *out = NULL;
    int status;
    va_list ap;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    status = test_sh(test_dir, &out, &err, "%s", cmd);
    if (status) {
        g_error("'%s' exited with %d:\n%s%s", cmd, status, out, err);
    }
    return out;
}

#define SH(...) g_free(sh(__VA_ARGS__))

static char *path(const char *name)
{
    return g_build_filename(test_dir, name, NULL);
}

static QGuardImage *open_rw(const char *name)
{
    g_autofree char *p = path(name);
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    if (qguard_image_open(&img, p, NULL, NULL, QGUARD_OPEN_RDWR, &err) < 0) {
        g_error("open %s: %s", name, err->message);
    }
    return img;
}

static void close_ok(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;

    if (qguard_image_close(img, &err) < 0) {
        g_error("close: %s", err->message);
    }
}

/* Amend @name with @optstr through the library; returns the error or NULL. */
static char *amend(const char *name, const char *optstr)
{
    QGuardOpts *opts = qguard_opts_new();
    g_autoptr(GError) err = NULL;
    QGuardImage *img = open_rw(name);
    char *msg = NULL;

    g_assert_cmpint(qguard_opts_parse(opts, optstr, NULL, &err), ==, 0);
    if (qguard_image_amend(img, opts, false, NULL, NULL, &err) < 0) {
        msg = g_strdup(err->message);
    }
    qguard_opts_free(opts);
    close_ok(img);
    return msg;
}

static void amend_ok(const char *name, const char *optstr)
{
    g_autofree char *msg = amend(name, optstr);

    if (msg) {
        g_error("amend %s %s: %s", name, optstr, msg);
    }
}

/* QEMU finds nothing wrong with the image. */
static void qemu_check_clean(const char *name)
{
    g_autofree char *out = NULL, *err = NULL;
    int status = test_sh(test_dir, &out, &err, "qemu-img check %s", name);

    if (status || !strstr(out, "No errors were found on the image.")) {
        g_error("qemu-img check %s (exit %d):\n%s%s", name, status, out, err);
    }
}

/* QEMU reads @name exactly as the raw file @raw. */
static void qemu_reads_as(const char *name, const char *raw)
{
    g_autofree char *out = NULL, *err = NULL;
    int status = test_sh(test_dir, &out, &err, "qemu-img compare -F raw %s %s",
                         name, raw);

    if (status) {
        g_error("qemu-img compare %s %s (exit %d):\n%s%s", name, raw, status,
                out, err);
    }
}

static char *qemu_info_field(const char *name, const char *field)
{
    g_autofree char *out = sh("qemu-img info -U %s", name);
    g_autofree char *nested = g_strdup_printf("\n    %s: ", field);
    g_autofree char *top = g_strdup_printf("\n%s: ", field);
    const char *p = strstr(out, nested);

    if (p) {
        p += strlen(nested);
    } else if ((p = strstr(out, top))) {
        p += strlen(top);
    } else {
        return NULL;
    }
    return g_strndup(p, strcspn(p, "\n"));
}

static void assert_info(const char *name, const char *field,
                        const char *want)
{
    g_autofree char *got = qemu_info_field(name, field);

    g_assert_cmpstr(got, ==, want);
}

/* qemu-img's message for the same command on a copy, without the prefix. */
static char *qemu_amend_error(const char *name, const char *optstr)
{
    g_autofree char *out = NULL, *err = NULL;
    int status;

    SH("cp %s qemu-copy.qcow2", name);
    status = test_sh(test_dir, &out, &err,
                     "qemu-img amend -o '%s' qemu-copy.qcow2", optstr);
    g_assert_cmpint(status, ==, 1);
    g_assert_true(g_str_has_prefix(err, "qemu-img: "));
    return g_strdup(err + strlen("qemu-img: "));
}

static void assert_same_refusal(const char *name, const char *optstr)
{
    g_autofree char *want = qemu_amend_error(name, optstr);
    g_autofree char *got = amend(name, optstr);
    g_autofree char *printed = NULL;

    g_assert_nonnull(got);
    /* As the tools print it: a message with a hint ends with a newline. */
    printed = g_strdup_printf("%s%s", got, strchr(got, '\n') ? "" : "\n");
    g_assert_cmpstr(printed, ==, want);
    qemu_check_clean(name);
}

/* ---- amend compat ------------------------------------------------------ */

/*
 * Data, a zero cluster without host cluster, a preallocated zero cluster,
 * and a cluster written, then zeroed with unmap.
 */
static void make_zero_image(const char *name, const char *backing)
{
    if (backing) {
        SH("qemu-img create -q -f qcow2 -b %s -F qcow2 %s", backing, name);
    } else {
        SH("qemu-img create -q -f qcow2 %s 4M", name);
    }
    SH("qemu-io -c 'write -P 1 0 64k' -c 'write -z 64k 64k' "
       "-c 'write -P 2 128k 64k' -c 'write -z 128k 64k' "
       "-c 'write -P 3 192k 64k' -c 'write -z -u 192k 64k' "
       "-c 'write -P 4 1M 4k' %s", name);
}

static void test_downgrade_zero_clusters(void)
{
    make_zero_image("a.qcow2", NULL);
    SH("qemu-img convert -O raw a.qcow2 a.raw");
    amend_ok("a.qcow2", "compat=0.10");
    assert_info("a.qcow2", "compat", "0.10");
    qemu_check_clean("a.qcow2");
    qemu_reads_as("a.qcow2", "a.raw");
}

/* Over a backing file, a zero cluster must stay zero, not show the base. */
static void test_downgrade_over_backing(void)
{
    SH("qemu-img create -q -f qcow2 base.qcow2 4M");
    SH("qemu-io -c 'write -P 9 0 4M' base.qcow2");
    make_zero_image("top.qcow2", "base.qcow2");
    SH("qemu-img convert -O raw top.qcow2 top.raw");
    amend_ok("top.qcow2", "compat=0.10");
    assert_info("top.qcow2", "compat", "0.10");
    qemu_check_clean("top.qcow2");
    qemu_reads_as("top.qcow2", "top.raw");
}

/*
 * A preallocated zero cluster whose host cluster a snapshot still uses:
 * QEMU 7.2 writes the zeros into the shared cluster (the snapshot's data
 * is lost and check finds a COPIED flag on a shared cluster).  The zeros
 * must go to a cluster of their own.
 */
static void test_downgrade_shared_zero_cluster(void)
{
    SH("qemu-img create -q -f qcow2 s.qcow2 1M");
    SH("qemu-io -c 'write -P 7 0 64k' s.qcow2");
    SH("qemu-img snapshot -c snap s.qcow2");
    SH("qemu-io -c 'write -z 0 64k' s.qcow2");
    SH("qemu-img convert -O raw s.qcow2 s.raw");
    SH("qemu-img convert -l snap -O raw s.qcow2 snap.raw");
    amend_ok("s.qcow2", "compat=0.10");
    assert_info("s.qcow2", "compat", "0.10");
    qemu_check_clean("s.qcow2");
    qemu_reads_as("s.qcow2", "s.raw");
    SH("qemu-img convert -l snap -O raw s.qcow2 snap2.raw && "
       "cmp snap.raw snap2.raw");
}

static void test_downgrade_snapshot_tables(void)
{
    SH("qemu-img create -q -f qcow2 s.qcow2 1M");
    SH("qemu-io -c 'write -z 0 64k' -c 'write -P 1 64k 64k' s.qcow2");
    SH("qemu-img snapshot -c one s.qcow2");
    SH("qemu-io -c 'write -z 64k 64k' -c 'write -P 2 128k 64k' s.qcow2");
    SH("qemu-img snapshot -c two s.qcow2");
    SH("qemu-io -c 'write -z 128k 64k' s.qcow2");
    SH("qemu-img convert -O raw s.qcow2 s.raw");
    SH("qemu-img convert -l one -O raw s.qcow2 one.raw");
    SH("qemu-img convert -l two -O raw s.qcow2 two.raw");
    amend_ok("s.qcow2", "compat=0.10");
    qemu_check_clean("s.qcow2");
    qemu_reads_as("s.qcow2", "s.raw");
    SH("qemu-img convert -l one -O raw s.qcow2 one2.raw && "
       "cmp one.raw one2.raw");
    SH("qemu-img convert -l two -O raw s.qcow2 two2.raw && "
       "cmp two.raw two2.raw");
}

static void test_downgrade_refusals(void)
{
    SH("qemu-img create -q -f qcow2 -o refcount_bits=8 r.qcow2 1M");
    assert_same_refusal("r.qcow2", "compat=0.10");
    SH("qemu-img create -q -f qcow2 s.qcow2 1M");
    SH("qemu-img snapshot -c snap s.qcow2");
    SH("qemu-img resize -q s.qcow2 2M");
    assert_same_refusal("s.qcow2", "compat=0.10");
    SH("qemu-img create -q -f qcow2 l.qcow2 1M");
    assert_same_refusal("l.qcow2", "compat=0.10,lazy_refcounts=on");
    assert_info("l.qcow2", "compat", "1.1");
}

static void test_downgrade_lazy_dirty(void)
{
    g_autofree char *before_lazy = NULL;

    SH("qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 1M");
    SH("qemu-io -c 'write -P 5 0 128k' l.qcow2");
    SH("qemu-img convert -O raw l.qcow2 l.raw");
    amend_ok("l.qcow2", "compat=0.10");
    assert_info("l.qcow2", "compat", "0.10");
    g_free(before_lazy);
    before_lazy = qemu_info_field("l.qcow2", "lazy refcounts");
    g_assert_null(before_lazy);
    qemu_check_clean("l.qcow2");
    qemu_reads_as("l.qcow2", "l.raw");
}

static void test_upgrade(void)
{
    SH("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M");
    SH("qemu-io -c 'write -P 1 0 64k' v2.qcow2");
    SH("qemu-img snapshot -c snap v2.qcow2");
    SH("qemu-io -c 'write -P 2 0 64k' v2.qcow2");
    SH("qemu-img convert -O raw v2.qcow2 v2.raw");
    amend_ok("v2.qcow2", "compat=1.1");
    assert_info("v2.qcow2", "compat", "1.1");
    qemu_check_clean("v2.qcow2");
    qemu_reads_as("v2.qcow2", "v2.raw");
    SH("qemu-img convert -l snap -O raw v2.qcow2 snap.raw && "
       "qemu-io -f raw -c 'read -P 1 0 64k' snap.raw");
    /* And back: nothing of v3 is left that a v2 reader would miss. */
    amend_ok("v2.qcow2", "compat=0.10");
    assert_info("v2.qcow2", "compat", "0.10");
    qemu_check_clean("v2.qcow2");
    qemu_reads_as("v2.qcow2", "v2.raw");
}

/* ---- amend refcount_bits ---------------------------------------------- */

static void check_refcount_bits(const char *create_opts, int bits)
{
    g_autofree char *opt = g_strdup_printf("refcount_bits=%d", bits);
    g_autofree char *want = g_strdup_printf("%d", bits);

    SH("rm -f r.qcow2 && qemu-img create -q -f qcow2 -o %s r.qcow2 4M",
       create_opts);
    /* Enough clusters for several refcount blocks at small cluster sizes. */
    SH("qemu-io -c 'write -P 1 0 1M' -c 'write -z 1M 64k' "
       "-c 'write -P 3 3M 512k' r.qcow2");
    SH("qemu-img convert -O raw r.qcow2 r.raw");
    amend_ok("r.qcow2", opt);
    assert_info("r.qcow2", "refcount bits", want);
    qemu_check_clean("r.qcow2");
    qemu_reads_as("r.qcow2", "r.raw");
    /* The image stays writable through QEMU with the new width. */
    SH("qemu-io -c 'write -P 4 2M 256k' r.qcow2 && "
       "qemu-io -f raw -c 'write -P 4 2M 256k' r.raw");
    qemu_check_clean("r.qcow2");
    qemu_reads_as("r.qcow2", "r.raw");
    amend_ok("r.qcow2", "refcount_bits=16");
    assert_info("r.qcow2", "refcount bits", "16");
    qemu_check_clean("r.qcow2");
    qemu_reads_as("r.qcow2", "r.raw");
}

static void test_refcount_bits(void)
{
    static const int widths[] = { 1, 2, 4, 8, 32, 64 };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(widths); i++) {
        check_refcount_bits("cluster_size=64k", widths[i]);
        check_refcount_bits("cluster_size=512", widths[i]);
    }
}

/*
 * New clusters allocated after the width changed, in the same open, must
 * be free ones: the allocator's view of free space follows the new
 * refcount blocks.
 */
static void test_refcount_bits_then_write(void)
{
    static const char *const widths[] = {
        "refcount_bits=64", "refcount_bits=1", "refcount_bits=8",
    };
    g_autofree uint8_t *buf = g_malloc(256 * 1024);
    g_autoptr(GError) err = NULL;
    size_t i;

    SH("qemu-img create -q -f qcow2 -o cluster_size=512 w.qcow2 8M");
    SH("qemu-io -c 'write -P 1 0 2M' -c 'write -P 2 6M 1M' w.qcow2");
    SH("qemu-img convert -O raw w.qcow2 w.raw");
    for (i = 0; i < G_N_ELEMENTS(widths); i++) {
        QGuardImage *img = open_rw("w.qcow2");
        QGuardOpts *opts = qguard_opts_new();
        uint64_t off = (2 + i) * (1024 * 1024);

        g_assert_cmpint(qguard_opts_parse(opts, widths[i], NULL, &err), ==, 0);
        g_assert_cmpint(qguard_image_amend(img, opts, false, NULL, NULL,
                                           &err), ==, 0);
        qguard_opts_free(opts);
        memset(buf, 0x10 + i, 256 * 1024);
        for (; off < (3 + i) * (1024 * 1024); off += 256 * 1024) {
            g_assert_cmpint(qguard_image_pwrite(img, off, 256 * 1024, buf, 0,
                                                &err), ==, 0);
        }
        close_ok(img);
        SH("qemu-io -f raw -c 'write -P %zu %zuM 1M' w.raw", 0x10 + i, 2 + i);
        qemu_check_clean("w.qcow2");
        qemu_reads_as("w.qcow2", "w.raw");
    }
}

static void test_refcount_bits_refusals(void)
{
    SH("qemu-img create -q -f qcow2 r.qcow2 1M");
    SH("qemu-io -c 'write -P 1 0 64k' r.qcow2");
    SH("qemu-img snapshot -c snap r.qcow2");
    assert_same_refusal("r.qcow2", "refcount_bits=1");
    assert_info("r.qcow2", "refcount bits", "16");
    assert_same_refusal("r.qcow2", "refcount_bits=3");
    assert_same_refusal("r.qcow2", "refcount_bits=128");
    SH("qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 1M");
    assert_same_refusal("v2.qcow2", "refcount_bits=8");
    /* A snapshot's refcount of 2 fits 2 bits. */
    amend_ok("r.qcow2", "refcount_bits=2");
    qemu_check_clean("r.qcow2");
    /* Upgrade and a new width in one go. */
    amend_ok("v2.qcow2", "compat=1.1,refcount_bits=4");
    assert_info("v2.qcow2", "refcount bits", "4");
    qemu_check_clean("v2.qcow2");
}

/* ---- amend: other options ---------------------------------------------- */

static void test_lazy_refcounts(void)
{
    SH("qemu-img create -q -f qcow2 l.qcow2 1M");
    amend_ok("l.qcow2", "lazy_refcounts=on");
    assert_info("l.qcow2", "lazy refcounts", "true");
    SH("qemu-io -c 'write -P 1 0 64k' l.qcow2");
    amend_ok("l.qcow2", "lazy_refcounts=off");
    assert_info("l.qcow2", "lazy refcounts", "false");
    qemu_check_clean("l.qcow2");
}

static void test_size(void)
{
    SH("qemu-img create -q -f qcow2 z.qcow2 1M");
    SH("qemu-io -c 'write -P 1 0 1M' z.qcow2");
    amend_ok("z.qcow2", "size=3M");
    assert_info("z.qcow2", "virtual size", "3 MiB (3145728 bytes)");
    /* amend shrinks without --shrink, as QEMU's does. */
    amend_ok("z.qcow2", "size=512k");
    assert_info("z.qcow2", "virtual size", "512 KiB (524288 bytes)");
    qemu_check_clean("z.qcow2");
    assert_same_refusal("z.qcow2", "size=1000");
}

static void test_option_errors(void)
{
    static const char *const bad[] = {
        "cluster_size=4k", "cluster_size=4k,foo=1", "foo=1", "compat=0.9",
        "compat=1.1,refcount_bits=0", "backing_file=x", "backing_fmt=raw",
        "lazy_refcounts=maybe", "size=abc", "refcount_bits=x",
        "data_file=x", "data_file_raw=on", "encrypt.state=active",
        "encrypt.keyslot=x", "preallocation=full",
    };
    size_t i;

    SH("qemu-img create -q -f qcow2 e.qcow2 1M");
    for (i = 0; i < G_N_ELEMENTS(bad); i++) {
        assert_same_refusal("e.qcow2", bad[i]);
    }
    assert_info("e.qcow2", "compat", "1.1");
}

static void test_help(void)
{
    g_autofree char *want = sh("qemu-img amend -f qcow2 -o help");
    g_autoptr(GError) err = NULL;
    g_autofree char *got = qguard_amend_help("qcow2", NULL);

    g_assert_cmpstr(got, ==, want);
    g_assert_null(qguard_amend_help("raw", &err));
    g_assert_cmpstr(err->message, ==,
                    "Format driver 'raw' does not support option amendment");
}

/* ---- measure ---------------------------------------------------------- */

/* The number after "key": in qemu-img's JSON, or -1 if it is absent. */
static int64_t json_number(const char *json, const char *key)
{
    g_autofree char *pat = g_strdup_printf("\"%s\": ", key);
    const char *p = strstr(json, pat);

    return p ? (int64_t)g_ascii_strtoull(p + strlen(pat), NULL, 10) : -1;
}

static void measure_like_qemu(const char *in, const char *fmt,
                              const char *optstr, const char *size)
{
    QGuardOpts *opts = qguard_opts_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL;
    QGuardMeasureInfo info = QGUARD_SIZED(QGuardMeasureInfo);
    QGuardImage *img = NULL;

    out = sh("qemu-img measure --output=json -O %s %s%s%s %s%s %s", fmt,
             *optstr ? "-o '" : "", optstr, *optstr ? "'" : "",
             size ? "--size " : "", size ? size : "", in ? in : "");
    g_assert_cmpint(qguard_opts_parse(opts, optstr, NULL, &err), ==, 0);
    if (size) {
        qguard_opts_set(opts, "size", size);
    }
    if (in) {
        g_autofree char *p = path(in);
        g_assert_cmpint(qguard_image_open(&img, p, NULL, NULL, 0, &err), ==,
                        0);
    }
    g_assert_cmpint(qguard_measure_opts_valid(fmt, opts, &err), ==, 0);
    g_assert_cmpint(qguard_measure(fmt, opts, img, &info, &err), ==, 0);
    if (img) {
        close_ok(img);
    }
    qguard_opts_free(opts);

    g_assert_cmpint(json_number(out, "required"), ==, info.required);
    g_assert_cmpint(json_number(out, "fully-allocated"), ==,
                    info.fully_allocated);
    g_assert_cmpint(json_number(out, "bitmaps"), ==,
                    info.has_bitmaps ? (int64_t)info.bitmaps : -1);
}

static void test_measure(void)
{
    static const char *const opts[] = {
        "", "cluster_size=512", "cluster_size=2M", "refcount_bits=1",
        "refcount_bits=64", "compat=0.10", "preallocation=metadata",
        "preallocation=full", "extended_l2=on", "backing_file=x",
        "cluster_size=4k,refcount_bits=8,preallocation=falloc",
    };
    static const char *const sizes[] = { "0", "1", "1M", "100M", "8G" };
    size_t i, j;

    for (i = 0; i < G_N_ELEMENTS(opts); i++) {
        for (j = 0; j < G_N_ELEMENTS(sizes); j++) {
            measure_like_qemu(NULL, "qcow2", opts[i], sizes[j]);
        }
    }
    measure_like_qemu(NULL, "raw", "", "1000");

    SH("qemu-img create -q -f qcow2 d.qcow2 64M");
    SH("qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 5M 1000' "
       "-c 'write -z 8M 1M' -c 'write -P 3 63M 1M' d.qcow2");
    SH("qemu-img create -q -f qcow2 -b d.qcow2 -F qcow2 t.qcow2");
    SH("qemu-io -c 'write -P 4 2M 64k' -c 'write -z 63M 64k' t.qcow2");
    SH("qemu-img convert -O raw d.qcow2 d.raw");
    SH("qemu-img bitmap --add d.qcow2 b0 && "
       "qemu-img bitmap --add -g 512 d.qcow2 another-bitmap");
    for (i = 0; i < G_N_ELEMENTS(opts); i++) {
        measure_like_qemu("d.qcow2", "qcow2", opts[i], NULL);
        measure_like_qemu("t.qcow2", "qcow2", opts[i], NULL);
        measure_like_qemu("d.raw", "qcow2", opts[i], NULL);
    }
    measure_like_qemu("t.qcow2", "raw", "", NULL);
}

static void assert_measure_refusal(const char *fmt, const char *optstr,
                                   const char *size, bool bad_opts)
{
    QGuardOpts *opts = qguard_opts_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *qerr = NULL, *want = NULL;
    QGuardMeasureInfo info = QGUARD_SIZED(QGuardMeasureInfo);

    g_assert_cmpint(test_sh(test_dir, &out, &qerr,
                            "qemu-img measure -O %s -o '%s' --size %s",
                            fmt, optstr, size), ==, 1);
    g_assert_cmpint(qguard_opts_parse(opts, optstr, NULL, &err), ==, 0);
    qguard_opts_set(opts, "size", size);
    if (bad_opts) {
        g_assert_cmpint(qguard_measure_opts_valid(fmt, opts, &err), <, 0);
        want = g_strdup_printf("qemu-img: %s%sqemu-img: Invalid options for "
                               "file format '%s'\n", err->message,
                               strchr(err->message, '\n') ? "" : "\n", fmt);
    } else {
        g_assert_cmpint(qguard_measure_opts_valid(fmt, opts, &err), ==, 0);
        g_assert_cmpint(qguard_measure(fmt, opts, NULL, &info, &err), <, 0);
        want = g_strdup_printf("qemu-img: %s%s", err->message,
                               strchr(err->message, '\n') ? "" : "\n");
    }
    g_assert_cmpstr(qerr, ==, want);
    qguard_opts_free(opts);
}

static void test_measure_refusals(void)
{
    assert_measure_refusal("qcow2", "foo=1", "1M", true);
    assert_measure_refusal("qcow2", "nocow=x", "1M", true);
    assert_measure_refusal("qcow2", "cluster_size=x", "1M", true);
    assert_measure_refusal("raw", "cluster_size=4k", "1M", true);
    assert_measure_refusal("qcow2", "cluster_size=3k", "1M", false);
    assert_measure_refusal("qcow2", "cluster_size=4M", "1M", false);
    assert_measure_refusal("qcow2", "compat=v3", "1M", false);
    assert_measure_refusal("qcow2", "refcount_bits=3", "1M", false);
    assert_measure_refusal("qcow2", "compat=0.10,refcount_bits=8", "1M", false);
    assert_measure_refusal("qcow2", "preallocation=foo", "1M", false);
    assert_measure_refusal("qcow2", "extended_l2=on,cluster_size=8k", "1M",
                           false);
    assert_measure_refusal("qcow2", "cluster_size=512", "1P", false);
}

/* ---- backing file changes and emptying --------------------------------- */

static void change_backing(const char *name, const char *file,
                           const char *fmt, int want_ret)
{
    QGuardImage *img = NULL;
    g_autofree char *p = path(name);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_open(&img, p, g_str_has_suffix(name, ".raw")
                                      ? "raw" : "qcow2", NULL,
                                      QGUARD_OPEN_RDWR |
                                      QGUARD_OPEN_NO_BACKING, &err), ==, 0);
    g_assert_cmpint(qguard_image_change_backing_file(img, file, fmt, true,
                                                     &err), ==, want_ret);
    close_ok(img);
}

static void test_change_backing_file(void)
{
    g_autofree char *field = NULL;
    g_autofree char *long_name = g_strnfill(1024, 'x');

    SH("qemu-img create -q -f qcow2 a.qcow2 1M");
    SH("qemu-io -c 'write -P 1 0 1M' a.qcow2");
    SH("qemu-img create -q -f raw b.raw 1M");
    SH("qemu-io -f raw -c 'write -P 2 0 1M' b.raw");
    SH("qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 t.qcow2");
    SH("qemu-io -c 'write -P 3 64k 64k' t.qcow2");

    change_backing("t.qcow2", "b.raw", "raw", 0);
    assert_info("t.qcow2", "backing file", "b.raw");
    assert_info("t.qcow2", "backing file format", "raw");
    SH("qemu-io -c 'read -P 2 0 64k' -c 'read -P 3 64k 64k' t.qcow2");
    qemu_check_clean("t.qcow2");

    change_backing("t.qcow2", "b.raw", NULL, -EINVAL);
    change_backing("t.qcow2", long_name, "raw", -EINVAL);
    change_backing("t.qcow2", NULL, NULL, 0);
    g_free(field);
    field = qemu_info_field("t.qcow2", "backing file");
    g_assert_null(field);
    SH("qemu-io -c 'read -P 0 0 64k' -c 'read -P 3 64k 64k' t.qcow2");

    /* No room for a long name in a 512-byte header cluster. */
    SH("qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 1M");
    change_backing("small.qcow2", long_name + 600, "raw", -ENOSPC);
    qemu_check_clean("small.qcow2");
    change_backing("b.raw", "a.qcow2", "qcow2", -ENOTSUP);
}

static void make_empty(const char *name)
{
    QGuardImage *img = open_rw(name);
    g_autoptr(GError) err = NULL;

    g_assert_cmpint(qguard_image_make_empty(img, &err), ==, 0);
    close_ok(img);
}

static void test_make_empty(void)
{
    g_autofree char *before = NULL, *after = NULL, *map = NULL;

    SH("qemu-img create -q -f qcow2 base.qcow2 8M");
    SH("qemu-io -c 'write -P 1 0 8M' base.qcow2");
    SH("qemu-img convert -O raw base.qcow2 base.raw");
    SH("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 t.qcow2");
    SH("qemu-io -c 'write -P 2 0 4M' -c 'write -z 5M 1M' t.qcow2");
    before = sh("stat -c %%s t.qcow2");
    make_empty("t.qcow2");
    after = sh("stat -c %%s t.qcow2");
    g_assert_cmpint(atoll(after), <, atoll(before));
    qemu_check_clean("t.qcow2");
    qemu_reads_as("t.qcow2", "base.raw");
    map = sh("qemu-img map --output=json t.qcow2");
    g_assert_null(strstr(map, "\"depth\": 0"));

    /* A snapshot keeps its data; only the active layer empties. */
    SH("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 s.qcow2");
    SH("qemu-io -c 'write -P 3 0 1M' s.qcow2");
    SH("qemu-img snapshot -c snap s.qcow2");
    SH("qemu-io -c 'write -P 4 1M 1M' s.qcow2");
    make_empty("s.qcow2");
    qemu_check_clean("s.qcow2");
    qemu_reads_as("s.qcow2", "base.raw");
    SH("qemu-img snapshot -a snap s.qcow2");
    SH("qemu-io -c 'read -P 3 0 1M' -c 'read -P 1 1M 1M' s.qcow2");
}

/* ---- Reading a snapshot ------------------------------------------------- */

static void test_snapshot_load_tmp(void)
{
    g_autofree char *p = path("s.qcow2");
    g_autofree char *raw = path("r.raw");
    g_autofree uint8_t *buf = g_malloc(2 * 65536);
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    SH("qemu-img create -q -f qcow2 s.qcow2 1M");
    SH("qemu-io -c 'write -P 1 0 128k' s.qcow2");
    SH("qemu-img snapshot -c one s.qcow2");
    SH("qemu-io -c 'write -P 2 64k 64k' s.qcow2");
    SH("qemu-img resize -q s.qcow2 1G");
    SH("qemu-img snapshot -c two s.qcow2");
    SH("qemu-io -c 'write -P 3 0 64k' s.qcow2");
    SH("qemu-img create -q -f raw r.raw 1M");

    g_assert_cmpint(qguard_image_open(&img, p, NULL, NULL, 0, &err), ==, 0);
    g_assert_cmpint(qguard_snapshot_load_tmp(img, NULL, "nope", &err), ==,
                    -ENOENT);
    g_assert_cmpstr(err->message, ==, "Can't find snapshot");
    g_clear_error(&err);
    /* Both given: both must match. */
    g_assert_cmpint(qguard_snapshot_load_tmp(img, "1", "two", &err), ==,
                    -ENOENT);
    g_clear_error(&err);
    g_assert_cmpint(qguard_snapshot_load_tmp(img, "1", NULL, &err), ==, 0);
    g_assert_cmpint(qguard_image_pread(img, 0, 2 * 65536, buf, &err), ==, 0);
    g_assert_true(buf[0] == 1 && buf[65535] == 1 && buf[65536] == 1 &&
                  buf[2 * 65536 - 1] == 1);
    g_assert_cmpint(qguard_snapshot_load_tmp(img, NULL, "two", &err), ==, 0);
    g_assert_cmpint(qguard_image_pread(img, 0, 2 * 65536, buf, &err), ==, 0);
    g_assert_true(buf[0] == 1 && buf[65536] == 2);
    /* The snapshot's disk was smaller: its L1 table is too. */
    g_assert_cmpint(qguard_snapshot_load_tmp(img, "1", NULL, &err), ==, 0);
    g_assert_cmpint(qguard_image_pread(img, 512 << 20, 65536, buf, &err), ==,
                    0);
    g_assert_true(buf[0] == 0 && buf[65535] == 0);
    close_ok(img);

    img = open_rw("s.qcow2");
    g_assert_cmpint(qguard_snapshot_load_tmp(img, "1", NULL, &err), ==,
                    -EINVAL);
    g_assert_cmpstr(err->message, ==, "Device is not readonly");
    g_clear_error(&err);
    close_ok(img);

    g_assert_cmpint(qguard_image_open(&img, raw, "raw", NULL, 0, &err), ==,
                    0);
    g_assert_cmpint(qguard_snapshot_load_tmp(img, "1", NULL, &err), ==,
                    -ENOTSUP);
    close_ok(img);
    /* Nothing was written: the active disk is as QEMU left it. */
    SH("qemu-io -c 'read -P 3 0 64k' -c 'read -P 2 64k 64k' s.qcow2");
}

/* ---- Test driver -------------------------------------------------------- */

typedef void TestFunc(void);

static void run_in_own_dir(gconstpointer data)
{
    TestFunc *fn = (TestFunc *)data;
    g_autofree char *top = test_dir;

    test_dir = g_build_filename(top, "XXXXXX", NULL);
    g_assert_nonnull(g_mkdtemp(test_dir));
    fn();
    test_rm_tree(test_dir);
    g_free(test_dir);
    test_dir = g_steal_pointer(&top);
}

static void add(const char *name, TestFunc *fn)
{
    g_test_add_data_func(name, (gconstpointer)fn, run_in_own_dir);
}

int main(int argc, char **argv)
{
    const char *tmp = g_getenv("TMPDIR");
    int ret;

    g_test_init(&argc, &argv, NULL);
    test_dir = g_build_filename(tmp ? tmp : "/tmp", "qguard-changes-XXXXXX",
                                NULL);
    g_assert_nonnull(g_mkdtemp(test_dir));

    add("/amend/downgrade/zero-clusters", test_downgrade_zero_clusters);
    add("/amend/downgrade/over-backing", test_downgrade_over_backing);
    add("/amend/downgrade/shared-zero-cluster",
        test_downgrade_shared_zero_cluster);
    add("/amend/downgrade/snapshot-tables", test_downgrade_snapshot_tables);
    add("/amend/downgrade/refusals", test_downgrade_refusals);
    add("/amend/downgrade/lazy-refcounts", test_downgrade_lazy_dirty);
    add("/amend/upgrade", test_upgrade);
    add("/amend/refcount-bits/widths", test_refcount_bits);
    add("/amend/refcount-bits/refusals", test_refcount_bits_refusals);
    add("/amend/refcount-bits/then-write", test_refcount_bits_then_write);
    add("/amend/lazy-refcounts", test_lazy_refcounts);
    add("/amend/size", test_size);
    add("/amend/option-errors", test_option_errors);
    add("/amend/help", test_help);
    add("/measure/like-qemu", test_measure);
    add("/measure/refusals", test_measure_refusals);
    add("/backing/change-backing-file", test_change_backing_file);
    add("/backing/make-empty", test_make_empty);
    add("/snapshot/load-tmp", test_snapshot_load_tmp);

    ret = g_test_run();
    test_rm_tree(test_dir);
    g_free(test_dir);
    return ret;
}
