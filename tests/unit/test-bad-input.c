/* SPDX-License-Identifier: MIT */
/*
 * Bad-input corpus: malformed qcow2 images made by byte-editing small images
 * that qemu-img created.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * For every image and for a read-only and a read-write open, the library
 * either refuses the image with one clear, single-line message (QEMU's exact
 * wording where QEMU's is known) and leaves the file untouched, or opens it;
 * then reading the whole disk, a consistency check and a few writes finish
 * without crash, hang or unbounded memory, every failure is a negative errno
 * with a one-line message, a write that succeeded reads back, and a
 * read-only session leaves the file untouched.
 *
 * Each case runs in a child process with a wall-clock limit and (outside
 * ASan) an address-space limit, so a hang or a runaway allocation fails that
 * case instead of the run.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zstd.h>

#include "qguard.h"
#include "test-lib.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Per-case limits: a refused image must be refused fast. */
#define CASE_TIMEOUT_SEC 10
#define CASE_ADDRESS_SPACE (1536 * MiB)

static char *test_dir;

/* ---- Building the images ------------------------------------------------- */

static void run_tool(const char *const *args)
{
    g_autofree char *out = NULL, *errout = NULL;
    GPtrArray *argv = g_ptr_array_new();
    int status;

    g_ptr_array_add(argv, (gpointer)"timeout");
    g_ptr_array_add(argv, (gpointer)"30");
    for (; *args; args++) {
        g_ptr_array_add(argv, (gpointer)*args);
    }
    g_ptr_array_add(argv, NULL);
    status = test_spawn(test_dir, (const char *const *)argv->pdata, 0, &out,
                        &errout);
    if (status != 0) {
        g_autofree char *line = g_strjoinv(" ", (char **)argv->pdata + 2);
        FAIL("`%s` failed (status 0x%x): %s%s", line, status, errout, out);
    }
    g_ptr_array_free(argv, TRUE);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    g_autoptr(GError) err = NULL;
    char *data = NULL;

    if (!g_file_get_contents(path, &data, len, &err)) {
        FAIL("cannot read %s: %s", path, err->message);
    }
    return (uint8_t *)data;
}

static void copy_file(const char *from, const char *to)
{
    g_autoptr(GError) err = NULL;
    size_t len;
    g_autofree uint8_t *data = read_whole(from, &len);

    if (!g_file_set_contents(to, (const char *)data, len, &err)) {
        FAIL("cannot write %s: %s", to, err->message);
    }
}

static void put_be(const char *path, uint64_t off, int width, uint64_t v)
{
    uint8_t b[8];
    int fd = open(path, O_WRONLY);
    int i;

    for (i = 0; i < width; i++) {
        b[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
    }
    if (fd < 0 || pwrite(fd, b, width, off) != width) {
        FAIL("cannot poke %s at %" PRIu64 ": %s", path, off,
             g_strerror(errno));
    }
    close(fd);
}

static uint64_t get_be(const char *path, uint64_t off, int width)
{
    uint8_t b[8] = { 0 };
    uint64_t v = 0;
    int fd = open(path, O_RDONLY);
    int i;

    if (fd < 0 || pread(fd, b, width, off) != width) {
        FAIL("cannot peek %s at %" PRIu64 ": %s", path, off,
             g_strerror(errno));
    }
    close(fd);
    for (i = 0; i < width; i++) {
        v = v << 8 | b[i];
    }
    return v;
}

static void put_bytes(const char *path, uint64_t off, const void *buf,
                      size_t len)
{
    int fd = open(path, O_WRONLY);

    if (fd < 0 || pwrite(fd, buf, len, off) != (ssize_t)len) {
        FAIL("cannot write %s: %s", path, g_strerror(errno));
    }
    close(fd);
}

static void truncate_to(const char *path, uint64_t size)
{
    if (truncate(path, size) < 0) {
        FAIL("cannot truncate %s: %s", path, g_strerror(errno));
    }
}

/* Where things are in an image, read from its header and tables. */
typedef struct Layout {
    uint32_t cluster_bits;
    uint64_t l1_offset;
    uint64_t l2_offset;         /* of L1 entry 0 */
    uint64_t l2_entry0;         /* L2 entry 0 of that table */
    uint64_t rt_offset;
    uint64_t rb_offset;         /* refcount block of refcount table entry 0 */
    uint64_t snap_offset;
    uint64_t ext_offset;        /* first header extension */
    uint64_t feat_offset;       /* feature name table data, or 0 */
    uint32_t feat_len;
} Layout;

static Layout layout_of(const char *path)
{
    Layout l = { 0 };
    uint64_t off, end;

    l.cluster_bits = get_be(path, 20, 4);
    l.l1_offset = get_be(path, 40, 8);
    l.rt_offset = get_be(path, 48, 8);
    l.snap_offset = get_be(path, 64, 8);
    l.l2_offset = get_be(path, l.l1_offset, 8) & UINT64_C(0x00fffffffffffe00);
    if (l.l2_offset) {
        l.l2_entry0 = get_be(path, l.l2_offset, 8);
    }
    l.rb_offset = get_be(path, l.rt_offset, 8) & ~UINT64_C(0x1ff);
    l.ext_offset = get_be(path, 4, 4) >= 3 ? get_be(path, 100, 4) : 72;
    end = UINT64_C(1) << l.cluster_bits;
    for (off = l.ext_offset; off + 8 <= end;) {
        uint32_t magic = get_be(path, off, 4), len = get_be(path, off + 4, 4);
        if (magic == 0) {
            break;
        }
        if (magic == 0x6803f857) {
            l.feat_offset = off + 8;
            l.feat_len = len;
        }
        off += 8 + ((len + 7) & ~7u);
    }
    return l;
}

/* Overwrite entry @idx of the feature name table. */
static void set_feature_name(const char *path, int idx, int type, int bit,
                             const char *name)
{
    Layout l = layout_of(path);
    uint8_t e[48] = { 0 };

    g_assert_cmpuint(l.feat_offset, !=, 0);
    g_assert_cmpuint((idx + 1) * 48, <=, l.feat_len);
    e[0] = type;
    e[1] = bit;
    memcpy(e + 2, name, MIN(strlen(name), 46));
    put_bytes(path, l.feat_offset + idx * 48, e, 48);
}

/* ---- Cases --------------------------------------------------------------- */

typedef enum Outcome {
    OPENS,          /* must open */
    REFUSED,        /* must be refused with the given message */
    EITHER,         /* refused with one clean line, or opens */
} Outcome;

typedef enum Base {
    ABS, L1, L2, RT, RB, SNAP, EXT,
} Base;

typedef struct Poke {
    Base base;
    uint64_t off;
    int width;                  /* bytes; 0 ends the list */
    uint64_t value;
} Poke;

typedef struct BadCase BadCase;

struct BadCase {
    const char *name;
    const char *tmpl;           /* template image in the test directory */
    Poke pokes[4];
    uint64_t truncate;          /* TRUNC(file size), or 0 */
    void (*edit)(const char *path, const BadCase *bc);
    const char *format;         /* NULL: "qcow2"; "probe": let it probe */
    Outcome ro, rw;
    const char *msg_ro;         /* exact message; '*' matches anything */
    const char *msg_rw;
    /* After a successful open: */
    int read0_errno;            /* reading [0, 512) fails with this */
    int write0_errno;           /* read-write: writing [0, 512) fails so */
    const char *event_ro;       /* corruption message printed on a read */
    const char *event_rw;       /* ... on a read-write session */
    uint64_t expect_size;       /* virtual size, if non-zero */
    const char *expect_format;
    void (*after_rw)(const char *path, const BadCase *bc);
};

/* ---- Edits that need more than pokes ---- */

static void edit_feature_named_9(const char *path, const BadCase *bc)
{
    (void)bc;
    put_be(path, 78, 1, 0x02);
    set_feature_name(path, 7, 0, 9, "my fancy feature");
}

static void edit_features_9_10_63_one_named(const char *path,
                                            const BadCase *bc)
{
    (void)bc;
    put_be(path, 72, 8, UINT64_C(0x8000000000000600));
    set_feature_name(path, 7, 0, 10, "ten");
}

static void edit_feature_name_46(const char *path, const BadCase *bc)
{
    (void)bc;
    put_be(path, 79, 1, 0x20);
    set_feature_name(path, 7, 0, 5,
                     "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ");
}

static void edit_feature_table_bit_out_of_range(const char *path,
                                                const BadCase *bc)
{
    (void)bc;
    put_be(path, 79, 1, 0x20);
    set_feature_name(path, 6, 0, 200, "bit two hundred");
    set_feature_name(path, 7, 7, 5, "bad type");
}

static void edit_ext_length_overrun(const char *path, const BadCase *bc)
{
    Layout l = layout_of(path);

    (void)bc;
    put_be(path, l.ext_offset + 4, 4, 0x10000);
}

static void edit_ext_length_huge(const char *path, const BadCase *bc)
{
    Layout l = layout_of(path);

    (void)bc;
    put_be(path, l.ext_offset + 4, 4, 0xfffffff8);
}

static void edit_ext_unknown(const char *path, const BadCase *bc)
{
    Layout l = layout_of(path);
    uint64_t end = l.feat_offset + l.feat_len;

    (void)bc;
    put_be(path, end, 4, 0x12345678);
    put_be(path, end + 4, 4, 8);
    put_bytes(path, end + 8, "abcdefgh", 8);
    put_be(path, end + 16, 8, 0);
}

static void edit_ext_feature_table_odd(const char *path, const BadCase *bc)
{
    Layout l = layout_of(path);

    (void)bc;
    put_be(path, l.feat_offset - 4, 4, 47);
    put_be(path, 79, 1, 0x20);
}

static void edit_ext_backing_format_long(const char *path, const BadCase *bc)
{
    Layout l = layout_of(path);

    (void)bc;
    /* Turn the feature table into an over-long backing format name. */
    put_be(path, l.feat_offset - 8, 4, 0xe2792aca);
    put_be(path, l.feat_offset - 4, 4, 16);
}

/* Compressed L2 entry 0: host offset and sector count, 64k clusters. */
static void compressed_desc(const char *path, uint64_t *host, uint64_t *secs)
{
    Layout l = layout_of(path);
    int shift = 62 - (l.cluster_bits - 8);
    uint64_t e = l.l2_entry0;

    g_assert_true(e & (UINT64_C(1) << 62));
    *host = e & ((UINT64_C(1) << shift) - 1);
    *secs = ((e >> shift) & ((UINT64_C(1) << (l.cluster_bits - 8)) - 1)) + 1;
}

static void set_compressed_desc(const char *path, uint64_t host,
                                uint64_t secs)
{
    Layout l = layout_of(path);
    int shift = 62 - (l.cluster_bits - 8);

    put_be(path, l.l2_offset, 8, (UINT64_C(1) << 62) |
           ((secs - 1) << shift) | host);
}

static void edit_compressed_past_eof(const char *path, const BadCase *bc)
{
    uint64_t host, secs;

    (void)bc;
    compressed_desc(path, &host, &secs);
    set_compressed_desc(path, 0x10000000, secs);
}

static void edit_compressed_straddles_eof(const char *path,
                                          const BadCase *bc)
{
    struct stat st;

    (void)bc;
    g_assert_cmpint(stat(path, &st), ==, 0);
    set_compressed_desc(path, st.st_size - 700, 256);
}

static void edit_compressed_garbage(const char *path, const BadCase *bc)
{
    uint64_t host, secs, i;
    g_autofree uint8_t *junk = NULL;
    GRand *r = g_rand_new_with_seed(0x5eed);

    (void)bc;
    compressed_desc(path, &host, &secs);
    junk = g_malloc(secs * 512);
    for (i = 0; i < secs * 512; i++) {
        junk[i] = (uint8_t)g_rand_int(r);
    }
    /* Start with a stored block header that lies about its length. */
    junk[0] = 0x00;
    put_bytes(path, host, junk, secs * 512 - (host % 512));
    g_rand_free(r);
}

static void edit_compressed_into_header(const char *path, const BadCase *bc)
{
    (void)bc;
    set_compressed_desc(path, 8, 2);
}

static void edit_compressed_truncated_stream(const char *path,
                                             const BadCase *bc)
{
    uint64_t host, secs;

    (void)bc;
    compressed_desc(path, &host, &secs);
    /* Keep only the first sector of the deflate stream. */
    set_compressed_desc(path, host, 1);
    put_bytes(path, host + 200, (const uint8_t[312]){ 0 }, 312);
}

/* Text that compresses well: "line N of compressible text", 64 KiB. */
static uint8_t *text_cluster(uint64_t first_line, size_t len)
{
    GString *text = g_string_new(NULL);
    uint64_t i;

    for (i = first_line; text->len < len; i++) {
        g_string_append_printf(text, "line %08" PRIu64 " of compressible "
                               "text\n", i);
    }
    g_string_truncate(text, len);
    return (uint8_t *)g_string_free(text, FALSE);
}

/* Replace compressed cluster 0's stream with @frames (zstd images). */
static void put_zstd_stream(const char *path, const uint8_t *frames,
                            size_t len)
{
    uint64_t host, secs;

    compressed_desc(path, &host, &secs);
    put_bytes(path, host, frames, len);
    set_compressed_desc(path, host, (host % 512 + len + 511) / 512);
}

/* A valid frame that decodes to two clusters: one too many. */
static void edit_zstd_frame_too_long(const char *path, const BadCase *bc)
{
    g_autofree uint8_t *text = text_cluster(0, 2 * 65536);
    size_t cap = ZSTD_compressBound(2 * 65536);
    g_autofree uint8_t *frame = g_malloc(cap);
    size_t n = ZSTD_compress(frame, cap, text, 2 * 65536, 3);

    (void)bc;
    g_assert_false(ZSTD_isError(n));
    put_zstd_stream(path, frame, n);
}

/* A frame that decodes to half a cluster, and nothing after it. */
static void edit_zstd_frame_too_short(const char *path, const BadCase *bc)
{
    g_autofree uint8_t *text = text_cluster(0, 65536 / 2);
    size_t cap = ZSTD_compressBound(65536 / 2);
    g_autofree uint8_t *frame = g_malloc0(cap + 512);
    size_t n = ZSTD_compress(frame, cap, text, 65536 / 2, 3);

    (void)bc;
    g_assert_false(ZSTD_isError(n));
    /* The zeros after the frame are not a frame either. */
    put_zstd_stream(path, frame, n + 512);
}

/* Backing chains, made with qemu-img create -u. */
static void make_overlay(const char *path, const char *backing)
{
    const char *const args[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing,
        "-F", "qcow2", path, "64M", NULL,
    };
    run_tool(args);
}

static void edit_backing_loop(const char *path, const BadCase *bc)
{
    g_autofree char *other = g_strdup_printf("%s.b", path);
    g_autofree char *base = g_path_get_basename(path);
    g_autofree char *obase = g_path_get_basename(other);

    (void)bc;
    make_overlay(path, obase);
    make_overlay(other, base);
}

static void edit_backing_self(const char *path, const BadCase *bc)
{
    g_autofree char *base = g_path_get_basename(path);

    (void)bc;
    make_overlay(path, base);
}

static void edit_backing_missing(const char *path, const BadCase *bc)
{
    (void)bc;
    make_overlay(path, "missing.qcow2");
}

static void edit_backing_to_corrupt(const char *path, const BadCase *bc)
{
    g_autofree char *other = g_strdup_printf("%s.b", path);
    g_autofree char *base = tpath("base.qcow2");
    g_autofree char *obase = g_path_get_basename(other);

    (void)bc;
    copy_file(base, other);
    put_be(other, 36, 4, 0x7fffffff);
    make_overlay(path, obase);
}

/* ---- Checks after a read-write session ---- */

static void after_autoclear_cleared(const char *path, const BadCase *bc)
{
    (void)bc;
    g_assert_cmphex(get_be(path, 88, 8), ==, 0);
}

static void after_dirty_cleared(const char *path, const BadCase *bc)
{
    (void)bc;
    g_assert_cmphex(get_be(path, 72, 8), ==, 0);
}

/* File size after the pokes (0: not truncated). */
#define TRUNC(n) ((n) + 1)

#define REFUSE(m) .ro = REFUSED, .rw = REFUSED, .msg_ro = (m), .msg_rw = (m)

/*
 * A table past the end of the file reads as zeros; written to, such an
 * image would lose data or overwrite clusters in use (docs/design.md):
 * read-only opens only.
 */
#define PAST_EOF(what, hint) .ro = OPENS, .rw = REFUSED, \
    .msg_rw = "qcow2: Image is corrupt: " what " lies past the end of the " \
              "file; cannot be opened read/write (" hint ")"
#define COPY_HINT "it can still be opened read-only, and copied with convert"
#define REPAIR_HINT "repair with 'qemu-img check -r all'"
#define L1_PAST_EOF PAST_EOF("the active L1 table", COPY_HINT)

/*
 * base.qcow2: qemu-img create 64M, qemu-io write -P 0x11 0 128k.  Header in
 * cluster 0, refcount table 0x10000, refcount block 0x20000, L1 0x30000,
 * L2 0x40000, data 0x50000 and 0x60000 (offsets are looked up, not assumed).
 */
static const BadCase cases[] = {
    /* ---- Truncated files ---- */
    { "truncated-0", "base.qcow2", .truncate = TRUNC(0),
      REFUSE("Image is not in qcow2 format") },
    { "truncated-50", "base.qcow2", .truncate = TRUNC(50),
      REFUSE("qcow2 header too short") },
    { "truncated-104", "base.qcow2", .truncate = TRUNC(104), L1_PAST_EOF },
    { "truncated-4096", "base.qcow2", .truncate = TRUNC(4096), L1_PAST_EOF },
    { "truncated-64k-tables-cut-off", "base.qcow2", .truncate = TRUNC(65536),
      L1_PAST_EOF },
    { "truncated-inside-l1", "base.qcow2", .truncate = TRUNC(0x30004),
      .ro = OPENS, .rw = OPENS },
    { "truncated-inside-l2", "base.qcow2", .truncate = TRUNC(0x40008),
      .ro = OPENS, .rw = OPENS },
    { "truncated-inside-data", "base.qcow2", .truncate = TRUNC(0x58000),
      .ro = OPENS, .rw = OPENS },

    /* ---- Magic and version ---- */
    { "bad-magic", "base.qcow2", { { ABS, 0, 1, 0 } },
      REFUSE("Image is not in qcow2 format") },
    { "bad-magic-probed-as-raw", "base.qcow2", { { ABS, 0, 1, 0 } },
      .format = "probe", .ro = OPENS, .rw = OPENS,
      .expect_format = "raw", .expect_size = 0x70000 },
    { "version-0", "base.qcow2", { { ABS, 4, 4, 0 } },
      REFUSE("Unsupported qcow2 version 0") },
    { "version-1", "base.qcow2", { { ABS, 4, 4, 1 } },
      REFUSE("Unsupported qcow2 version 1") },
    { "version-4", "base.qcow2", { { ABS, 4, 4, 4 } },
      REFUSE("Unsupported qcow2 version 4") },
    { "version-2-with-v3-fields", "base.qcow2", { { ABS, 4, 4, 2 } },
      .ro = OPENS, .rw = OPENS },

    /* ---- Cluster size ---- */
    { "cluster-bits-8", "base.qcow2", { { ABS, 20, 4, 8 } },
      REFUSE("Unsupported cluster size: 2^8") },
    { "cluster-bits-22", "base.qcow2", { { ABS, 20, 4, 22 } },
      REFUSE("Unsupported cluster size: 2^22") },
    { "cluster-bits-64", "base.qcow2", { { ABS, 20, 4, 64 } },
      REFUSE("Unsupported cluster size: 2^64") },
    { "cluster-bits-0xffffffff", "base.qcow2",
      { { ABS, 20, 4, 0xffffffff } },
      REFUSE("Unsupported cluster size: 2^4294967295") },
    { "cluster-bits-9-tables-mismatched", "base.qcow2",
      { { ABS, 20, 4, 9 } }, REFUSE("L1 table is too small") },

    /* ---- Header length ---- */
    { "header-length-50", "base.qcow2", { { ABS, 100, 4, 50 } },
      REFUSE("qcow2 header too short") },
    { "header-length-100", "base.qcow2", { { ABS, 100, 4, 100 } },
      REFUSE("qcow2 header too short") },
    { "header-length-104", "base.qcow2", { { ABS, 100, 4, 104 } },
      .ro = OPENS, .rw = OPENS },
    { "header-length-113", "base.qcow2", { { ABS, 100, 4, 113 } },
      REFUSE("Header extension too large") },
    { "header-length-65536", "base.qcow2", { { ABS, 100, 4, 65536 } },
      .ro = OPENS, .rw = OPENS },
    { "header-length-0x10008", "base.qcow2", { { ABS, 100, 4, 0x10008 } },
      REFUSE("qcow2 header exceeds cluster size") },
    { "header-length-0xffffffff", "base.qcow2",
      { { ABS, 100, 4, 0xffffffff } },
      REFUSE("qcow2 header exceeds cluster size") },

    /* ---- Backing file name ---- */
    { "backing-offset-beyond-cluster", "base.qcow2",
      { { ABS, 8, 8, 0x1000000 }, { ABS, 16, 4, 10 } },
      REFUSE("Invalid backing file offset") },
    { "backing-offset-huge", "base.qcow2",
      { { ABS, 8, 8, UINT64_C(0xfffffffffffffff0) }, { ABS, 16, 4, 10 } },
      REFUSE("Invalid backing file offset") },
    { "backing-size-2000", "base.qcow2",
      { { ABS, 8, 8, 0x200 }, { ABS, 16, 4, 2000 } },
      REFUSE("Backing file name too long") },
    { "backing-name-crosses-cluster-end", "base.qcow2",
      { { ABS, 8, 8, 0xfff0 }, { ABS, 16, 4, 100 } },
      REFUSE("Backing file name too long") },
    { "backing-size-0xffffffff", "base.qcow2",
      { { ABS, 8, 8, 0x200 }, { ABS, 16, 4, 0xffffffff } },
      REFUSE("Backing file name too long") },
    { "backing-size-without-offset", "base.qcow2",
      { { ABS, 16, 4, 2000 } }, .ro = OPENS, .rw = OPENS },

    /* ---- L1 table ---- */
    { "l1-size-0x7fffffff", "base.qcow2", { { ABS, 36, 4, 0x7fffffff } },
      REFUSE("Active L1 table too large") },
    { "l1-size-0xffffffff", "base.qcow2", { { ABS, 36, 4, 0xffffffff } },
      REFUSE("Active L1 table too large") },
    { "l1-size-0x2000001", "base.qcow2", { { ABS, 36, 4, 0x2000001 } },
      REFUSE("Active L1 table too large") },
    { "l1-size-just-over-32mib-cap", "base.qcow2",
      { { ABS, 36, 4, 0x400001 } },
      REFUSE("Active L1 table too large") },
    { "l1-size-at-32mib-cap", "base.qcow2", { { ABS, 36, 4, 0x400000 } },
      L1_PAST_EOF },
    { "l1-size-0", "base.qcow2", { { ABS, 36, 4, 0 } },
      REFUSE("L1 table is too small") },
    { "l1-offset-unaligned", "base.qcow2", { { ABS, 40, 8, 0x30001 } },
      REFUSE("Active L1 table offset invalid") },
    { "l1-offset-sector-aligned-only", "base.qcow2",
      { { ABS, 40, 8, 0x30200 } },
      REFUSE("Active L1 table offset invalid") },
    { "l1-offset-huge", "base.qcow2",
      { { ABS, 40, 8, UINT64_C(0xffffffffffff0000) } },
      REFUSE("Active L1 table offset invalid") },
    { "l1-offset-beyond-eof", "base.qcow2", { { ABS, 40, 8, 0x1000000 } },
      L1_PAST_EOF },

    /* ---- Refcount table ---- */
    { "refcount-table-offset-unaligned", "base.qcow2",
      { { ABS, 48, 8, 0x10008 } },
      REFUSE("Reference count table offset invalid") },
    { "refcount-table-offset-huge", "base.qcow2",
      { { ABS, 48, 8, UINT64_C(0xffffffffffff0000) } },
      REFUSE("Reference count table offset invalid") },
    { "refcount-table-offset-beyond-eof", "base.qcow2",
      { { ABS, 48, 8, 0x1000000 } },
      PAST_EOF("the refcount table", REPAIR_HINT) },
    { "refcount-table-clusters-0", "base.qcow2", { { ABS, 56, 4, 0 } },
      REFUSE("Image does not contain a reference count table") },
    { "refcount-table-clusters-0xffffffff", "base.qcow2",
      { { ABS, 56, 4, 0xffffffff } },
      REFUSE("Reference count table too large") },
    { "refcount-table-clusters-0x1000000", "base.qcow2",
      { { ABS, 56, 4, 0x1000000 } },
      REFUSE("Reference count table too large") },
    { "refcount-table-clusters-just-over-8mib-cap", "base.qcow2",
      { { ABS, 56, 4, 129 } },
      REFUSE("Reference count table too large") },
    { "refcount-table-clusters-at-8mib-cap", "base.qcow2",
      { { ABS, 56, 4, 128 } }, PAST_EOF("the refcount table", REPAIR_HINT) },

    /* ---- Snapshot table ---- */
    { "nb-snapshots-0xffffffff", "base.qcow2",
      { { ABS, 60, 4, 0xffffffff } },
      REFUSE("Snapshot table too large") },
    { "nb-snapshots-65537", "base.qcow2", { { ABS, 60, 4, 65537 } },
      REFUSE("Snapshot table too large") },
    { "snapshots-offset-unaligned", "base.qcow2",
      { { ABS, 60, 4, 1 }, { ABS, 64, 8, 0x50001 } },
      REFUSE("Snapshot table offset invalid") },
    { "snapshots-offset-huge", "base.qcow2",
      { { ABS, 60, 4, 1 }, { ABS, 64, 8, UINT64_C(0xffffffffffff0000) } },
      REFUSE("Snapshot table offset invalid") },
    { "snapshots-offset-0", "base.qcow2", { { ABS, 60, 4, 1 } },
      .ro = EITHER, .rw = EITHER },
    { "snapshots-offset-beyond-eof", "base.qcow2",
      { { ABS, 60, 4, 1 }, { ABS, 64, 8, 0x10000000 } },
      .ro = OPENS, .rw = OPENS },
    { "snapshots-offset-at-guest-data", "base.qcow2",
      { { ABS, 60, 4, 1 }, { ABS, 64, 8, 0x50000 } },
      REFUSE("Too much extra metadata in snapshot table entry 0") },
    { "snapshot-extra-data-size-huge", "snap.qcow2",
      { { SNAP, 36, 4, 0xffffffff } },
      REFUSE("Too much extra metadata in snapshot table entry 0") },
    { "snapshot-extra-data-size-1025", "snap.qcow2",
      { { SNAP, 36, 4, 1025 } },
      REFUSE("Too much extra metadata in snapshot table entry 0") },
    { "snapshot-l1-offset-beyond-eof", "snap.qcow2",
      { { SNAP, 0, 8, 0x10000000 } },
      PAST_EOF("the L1 table of snapshot 's1'", COPY_HINT) },
    { "snapshot-id-length-past-table", "snap.qcow2",
      { { SNAP, 12, 2, 0xffff } }, .ro = EITHER, .rw = EITHER },
    { "snapshot-name-length-past-table", "snap.qcow2",
      { { SNAP, 14, 2, 0xffff } }, .ro = EITHER, .rw = EITHER },
    { "snapshot-count-past-table", "snap.qcow2",
      { { ABS, 60, 4, 3000 } },
      REFUSE("Too much extra metadata in snapshot table entry 1637") },
    /*
     * Snapshot L1 tables QEMU cannot validate: nothing reads them, so the
     * image opens read-write, as in QEMU, even where the table would lie
     * past the end of the file; what needs the table fails (iotest 192).
     */
    { "snapshot-l1-size-huge", "snap.qcow2",
      { { SNAP, 8, 4, 0x10000000 } }, .ro = OPENS, .rw = OPENS },
    { "snapshot-l1-offset-unaligned", "snap.qcow2",
      { { SNAP, 0, 8, 0x70200 } }, .ro = OPENS, .rw = OPENS },
    { "snapshot-l1-offset-unaligned-beyond-eof", "snap.qcow2",
      { { SNAP, 0, 8, 0x10000200 } }, .ro = OPENS, .rw = OPENS },

    /* ---- Header extensions ---- */
    { "extension-length-overruns-cluster", "base.qcow2",
      .edit = edit_ext_length_overrun, REFUSE("Header extension too large") },
    { "extension-length-0xfffffff8", "base.qcow2",
      .edit = edit_ext_length_huge, REFUSE("Header extension too large") },
    { "extension-unknown-type", "base.qcow2",
      .edit = edit_ext_unknown, .ro = OPENS, .rw = OPENS },
    { "extension-feature-table-length-47", "base.qcow2",
      .edit = edit_ext_feature_table_odd,
      REFUSE("Unsupported qcow2 feature(s): Unknown incompatible feature: "
             "20") },
    { "extension-backing-format-16-bytes", "base.qcow2",
      .edit = edit_ext_backing_format_long,
      REFUSE("ERROR: ext_backing_format: len=16 too large (>=16)") },

    /* ---- Feature bits ---- */
    { "incompat-bit-9", "base.qcow2", { { ABS, 78, 1, 0x02 } },
      REFUSE("Unsupported qcow2 feature(s): Unknown incompatible feature: "
             "200") },
    { "incompat-bit-5", "base.qcow2", { { ABS, 79, 1, 0x20 } },
      REFUSE("Unsupported qcow2 feature(s): Unknown incompatible feature: "
             "20") },
    { "incompat-bits-9-10-63", "base.qcow2",
      { { ABS, 72, 8, UINT64_C(0x8000000000000600) } },
      REFUSE("Unsupported qcow2 feature(s): Unknown incompatible feature: "
             "8000000000000600") },
    { "incompat-bit-9-named", "base.qcow2", .edit = edit_feature_named_9,
      REFUSE("Unsupported qcow2 feature(s): my fancy feature") },
    { "incompat-bits-9-10-63-one-named", "base.qcow2",
      .edit = edit_features_9_10_63_one_named,
      REFUSE("Unsupported qcow2 feature(s): ten, Unknown incompatible "
             "feature: 8000000000000200") },
    { "incompat-bit-named-46-chars-unterminated", "base.qcow2",
      .edit = edit_feature_name_46,
      REFUSE("Unsupported qcow2 feature(s): "
             "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ") },
    { "incompat-bit-feature-table-junk-entries", "base.qcow2",
      .edit = edit_feature_table_bit_out_of_range,
      REFUSE("Unsupported qcow2 feature(s): Unknown incompatible feature: "
             "20") },
    { "compat-bit-unknown", "base.qcow2", { { ABS, 87, 1, 0x20 } },
      .ro = OPENS, .rw = OPENS },
    { "autoclear-bit-unknown", "base.qcow2", { { ABS, 95, 1, 0x20 } },
      .ro = OPENS, .rw = OPENS,
      .after_rw = after_autoclear_cleared },
    { "dirty-bit", "base.qcow2", { { ABS, 79, 1, 0x01 } },
      .ro = OPENS, .rw = OPENS, .after_rw = after_dirty_cleared },
    { "corrupt-bit", "base.qcow2", { { ABS, 79, 1, 0x02 } },
      .ro = OPENS, .rw = REFUSED,
      .msg_rw = "qcow2: Image is corrupt; cannot be opened read/write" },
    { "crypt-method-1", "base.qcow2", { { ABS, 32, 4, 1 } },
      REFUSE("Encrypted images are not supported (AES encryption)") },
    { "crypt-method-2", "base.qcow2", { { ABS, 32, 4, 2 } },
      REFUSE("Encrypted images are not supported (LUKS encryption)") },
    { "crypt-method-3", "base.qcow2", { { ABS, 32, 4, 3 } },
      REFUSE("Unsupported encryption method 3") },
    { "crypt-method-0xffffffff", "base.qcow2",
      { { ABS, 32, 4, 0xffffffff } },
      REFUSE("Unsupported encryption method -1") },
    { "external-data-file-bit", "base.qcow2", { { ABS, 79, 1, 0x04 } },
      REFUSE("'data-file' is required for this image") },
    { "data-file-raw-bit-without-data-file", "base.qcow2",
      { { ABS, 95, 1, 0x02 } },
      REFUSE("data-file-raw requires a data file") },
    /* 8-byte entries read as 16-byte ones: odd, but valid bitmaps. */
    { "extended-l2-bit", "base.qcow2", { { ABS, 79, 1, 0x10 } },
      .ro = OPENS, .rw = OPENS },
    { "extended-l2-bit-4k-clusters", "cs4k.qcow2", { { ABS, 79, 1, 0x10 } },
      REFUSE("Unsupported subcluster size: 128") },
    { "compression-bit-zstd", "base.qcow2",
      { { ABS, 79, 1, 0x08 }, { ABS, 104, 1, 1 } },
      .ro = OPENS, .rw = OPENS },
    { "compression-bit-with-zlib", "base.qcow2", { { ABS, 79, 1, 0x08 } },
      REFUSE("qcow2: Compression type incompatible feature bit "
                       "must not be set") },
    { "compression-type-without-bit", "base.qcow2",
      { { ABS, 104, 1, 1 } },
      REFUSE("qcow2: Compression type incompatible feature bit must be "
             "set") },
    { "compression-type-2", "base.qcow2",
      { { ABS, 79, 1, 0x08 }, { ABS, 104, 1, 2 } },
      REFUSE("qcow2: unknown compression type: 2") },
    { "refcount-order-7", "base.qcow2", { { ABS, 96, 4, 7 } },
      REFUSE("Reference count entry width too large; may not exceed 64 "
             "bits") },
    { "refcount-order-0xffffffff", "base.qcow2",
      { { ABS, 96, 4, 0xffffffff } },
      REFUSE("Reference count entry width too large; may not exceed 64 "
             "bits") },
    { "refcount-order-3-tables-mismatched", "base.qcow2",
      { { ABS, 96, 4, 3 } }, .ro = OPENS, .rw = OPENS },

    /* ---- Virtual size ---- */
    { "size-int64-max", "base.qcow2",
      { { ABS, 24, 8, UINT64_C(0x7fffffffffffffff) } },
      REFUSE("Image is too big") },
    { "size-2-pow-62", "base.qcow2",
      { { ABS, 24, 8, UINT64_C(0x4000000000000000) } },
      REFUSE("Image is too big") },
    { "size-uint64-max", "base.qcow2",
      { { ABS, 24, 8, UINT64_MAX } }, .ro = REFUSED, .rw = REFUSED },
    { "size-1000-rounds-down-to-512", "base.qcow2",
      { { ABS, 24, 8, 1000 } }, .ro = OPENS, .rw = OPENS,
      .expect_size = 512 },

    /* ---- L1 entries ---- */
    { "l1-entry-unaligned", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x8000000000040200) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO,
      .event_ro = "qcow2: Image is corrupt: L2 table offset 0x40200 "
                  "unaligned (L1 index: 0); further non-fatal corruption "
                  "events will be suppressed",
      .event_rw = "qcow2: Marking image as corrupt: L2 table offset 0x40200 "
                  "unaligned (L1 index: 0); further corruption events will "
                  "be suppressed" },
    { "l1-entry-beyond-eof", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x8000000010000000) } },
      .ro = OPENS, .rw = OPENS },
    { "l1-entry-huge-offset", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x80fffffffffffe00) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO,
      .event_ro = "qcow2: Image is corrupt: L2 table offset "
                  "0xfffffffffffe00 unaligned (L1 index: 0); further "
                  "non-fatal corruption events will be suppressed",
      .event_rw = "qcow2: Marking image as corrupt: L2 table offset "
                  "0xfffffffffffe00 unaligned (L1 index: 0); further "
                  "corruption events will be suppressed" },
    { "l1-entry-huge-aligned-offset", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x80ffffffffff0000) } },
      .ro = OPENS, .rw = OPENS },
    { "l1-entry-reserved-bits", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x8000000000040001) } },
      .ro = OPENS, .rw = OPENS },
    { "l1-entry-at-refcount-table", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x8000000000010000) } },
      .ro = OPENS, .rw = OPENS },
    { "l1-entry-at-l1-table", "base.qcow2",
      { { L1, 0, 8, UINT64_C(0x8000000000030000) } },
      .ro = OPENS, .rw = OPENS, .write0_errno = EIO,
      .event_rw = "qcow2: Marking image as corrupt: Preventing invalid "
                  "write on metadata (overlaps with active L1 table); "
                  "further corruption events will be suppressed" },
    { "l1-entry-second-at-header", "base.qcow2",
      { { L1, 8, 8, UINT64_C(0x8000000000000000) } },
      .ro = OPENS, .rw = OPENS },

    /* ---- L2 entries ---- */
    { "l2-entry-beyond-eof", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000010000000) } },
      .ro = OPENS, .rw = OPENS },
    { "l2-entry-just-past-eof", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000070000) } },
      .ro = OPENS, .rw = OPENS },
    { "l2-entry-huge-offset", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x80fffffffffffe00) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO,
      .event_ro = "qcow2: Image is corrupt: Cluster allocation offset "
                  "0xfffffffffffe00 unaligned (L2 offset: 0x40000, L2 index: "
                  "0); further non-fatal corruption events will be "
                  "suppressed",
      .event_rw = "qcow2: Marking image as corrupt: Cluster allocation "
                  "offset 0xfffffffffffe00 unaligned (L2 offset: 0x40000, L2 "
                  "index: 0); further corruption events will be suppressed" },
    { "l2-entry-huge-aligned-offset", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x80ffffffffff0000) } },
      .ro = OPENS, .rw = OPENS },
    { "l2-entry-unaligned", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000050200) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO,
      .event_ro = "qcow2: Image is corrupt: Cluster allocation offset "
                  "0x50200 unaligned (L2 offset: 0x40000, L2 index: 0); "
                  "further non-fatal corruption events will be suppressed",
      .event_rw = "qcow2: Marking image as corrupt: Cluster allocation "
                  "offset 0x50200 unaligned (L2 offset: 0x40000, L2 index: "
                  "0); further corruption events will be suppressed" },
    { "l2-entry-at-l1-table", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000030000) } },
      .ro = OPENS, .rw = OPENS, .write0_errno = EIO,
      .event_rw = "qcow2: Marking image as corrupt: Preventing invalid "
                  "write on metadata (overlaps with active L1 table); "
                  "further corruption events will be suppressed" },
    { "l2-entry-at-refcount-table", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000010000) } },
      .ro = OPENS, .rw = OPENS, .write0_errno = EIO,
      .event_rw = "qcow2: Marking image as corrupt: Preventing invalid "
                  "write on metadata (overlaps with refcount table); "
                  "further corruption events will be suppressed" },
    { "l2-entry-at-refcount-block", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000020000) } },
      .ro = OPENS, .rw = OPENS, .write0_errno = EIO,
      .event_rw = "qcow2: Marking image as corrupt: Preventing invalid "
                  "write on metadata (overlaps with refcount block); "
                  "further corruption events will be suppressed" },
    { "l2-entry-at-itself", "base.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000040000) } },
      .ro = OPENS, .rw = OPENS, .write0_errno = EIO,
      .event_rw = "qcow2: Marking image as corrupt: Preventing invalid "
                  "write on metadata (overlaps with active L2 table); "
                  "further corruption events will be suppressed" },
    { "l2-entry-at-header", "base.qcow2",
      { { L2, 8, 8, UINT64_C(0x8000000000000000) } },
      .ro = OPENS, .rw = OPENS },
    { "l2-entry-at-header-without-copied", "base.qcow2",
      { { L2, 8, 8, UINT64_C(0x0000000000000200) } },
      .ro = OPENS, .rw = OPENS },
    { "l2-entries-duplicated", "base.qcow2",
      { { L2, 8, 8, UINT64_C(0x8000000000050000) } },
      .ro = OPENS, .rw = OPENS },

    /* ---- Refcount table entries ---- */
    { "refcount-entry-at-l1-table", "base.qcow2",
      { { RT, 0, 8, 0x30000 } }, .ro = OPENS, .rw = OPENS },
    { "refcount-table-entry-empty", "base.qcow2",
      { { RT, 0, 8, 0 } },
      .ro = OPENS, .rw = OPENS },
    { "refcount-entry-at-refcount-table", "base.qcow2",
      { { RT, 0, 8, 0x10000 } }, .ro = OPENS, .rw = OPENS },
    { "refcount-entry-beyond-eof", "base.qcow2",
      { { RT, 0, 8, 0x10000000 } },
      PAST_EOF("refcount block 0", REPAIR_HINT) },
    { "refcount-entry-huge", "base.qcow2",
      { { RT, 0, 8, UINT64_C(0xfffffffffffffe00) } },
      PAST_EOF("refcount block 0", REPAIR_HINT) },
    { "refcount-entry-unaligned", "base.qcow2",
      { { RT, 0, 8, 0x20200 } }, .ro = OPENS, .rw = OPENS },
    { "refcount-block-all-zero", "base.qcow2",
      { { RB, 0, 8, 0 }, { RB, 8, 8, 0 } },
      .ro = OPENS, .rw = OPENS },

    /* ---- Compressed clusters (comp.qcow2: 1 MiB of text, 64k) ---- */
    { "compressed-past-eof", "comp.qcow2",
      .edit = edit_compressed_past_eof, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "compressed-straddles-eof", "comp.qcow2",
      .edit = edit_compressed_straddles_eof, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "compressed-garbage-data", "comp.qcow2",
      .edit = edit_compressed_garbage, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "compressed-into-header", "comp.qcow2",
      .edit = edit_compressed_into_header, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "compressed-stream-cut-short", "comp.qcow2",
      .edit = edit_compressed_truncated_stream, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },

    /* ---- zstd compressed clusters (zstd.qcow2: comp.raw, zstd) ---- */
    { "zstd-garbage-data", "zstd.qcow2",
      .edit = edit_compressed_garbage, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "zstd-stream-cut-short", "zstd.qcow2",
      .edit = edit_compressed_truncated_stream, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "zstd-frame-decodes-to-two-clusters", "zstd.qcow2",
      .edit = edit_zstd_frame_too_long, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "zstd-frame-decodes-to-half-a-cluster", "zstd.qcow2",
      .edit = edit_zstd_frame_too_short, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },
    { "zstd-stream-past-eof", "zstd.qcow2",
      .edit = edit_compressed_past_eof, .ro = OPENS, .rw = OPENS,
      .read0_errno = EIO, .write0_errno = EIO },

    /* ---- Extended L2 entries (extl2.qcow2: 4k at 0, 64k at 128k) ---- */
    { "extl2-subcluster-allocated-and-zero", "extl2.qcow2",
      { { L2, 8, 8, UINT64_C(0x0000000100000001) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },
    { "extl2-unallocated-cluster-with-allocated-subclusters", "extl2.qcow2",
      { { L2, 0, 8, 0 }, { L2, 8, 8, 0xff } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },
    { "extl2-all-bits-set", "extl2.qcow2",
      { { L2, 8, 8, UINT64_MAX } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },
    { "extl2-zero-bits-only", "extl2.qcow2",
      { { L2, 8, 8, UINT64_C(0xffffffff00000000) } },
      .ro = OPENS, .rw = OPENS },
    { "extl2-compressed-entry-with-bitmap", "extl2.qcow2",
      { { L2, 0, 8, UINT64_C(0x4000000000050000) },
        { L2, 8, 8, UINT64_C(0x0000000100000000) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },

    /* ---- External data files (df.qcow2: data in df.raw, absolute) ---- */
    { "data-file-missing", "gone.qcow2",
      REFUSE("Could not open '*gone.raw': No such file or directory") },
    { "data-file-compressed-entry", "df.qcow2",
      { { L2, 0, 8, UINT64_C(0x4000000000050000) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },
    { "data-file-host-offset-mismatch", "df.qcow2",
      { { L2, 0, 8, UINT64_C(0x8000000000010000) } },
      .ro = OPENS, .rw = OPENS, .read0_errno = EIO, .write0_errno = EIO },
    { "data-file-cluster-0-unallocated-without-copied", "df.qcow2",
      { { L2, 0, 8, 0 } }, .ro = OPENS, .rw = OPENS },

    /* ---- Backing chains ---- */
    /*
     * QEMU recurses without end on a read-only open of a looping chain;
     * read-write, its own write lock stops it one level down.
     */
    { "backing-loop-a-b-a", NULL, .edit = edit_backing_loop,
      .ro = REFUSED, .rw = REFUSED,
      .msg_ro = "Could not open backing file: Could not open backing file: "
                "Backing file '*' forms a loop in the backing chain",
      .msg_rw = "Could not open backing file: Could not open backing file: "
                "Backing file '*' forms a loop in the backing chain" },
    { "backing-loop-self", NULL, .edit = edit_backing_self,
      .ro = REFUSED, .rw = REFUSED,
      .msg_ro = "Could not open backing file: "
                "Backing file '*' forms a loop in the backing chain",
      .msg_rw = "Could not open backing file: "
                "Backing file '*' forms a loop in the backing chain" },
    { "backing-missing", NULL, .edit = edit_backing_missing,
      REFUSE("Could not open backing file: Could not open "
             "'*/missing.qcow2': No such file or directory") },
    { "backing-refused", NULL, .edit = edit_backing_to_corrupt,
      REFUSE("Could not open backing file: Active L1 table too large") },
};

/* ---- Running a case ----------------------------------------------------- */

static void capture_message(void *opaque, const char *line)
{
    g_ptr_array_add(opaque, g_strdup(line));
}

static bool message_matches(const char *got, const char *want)
{
    return strchr(want, '*') ? g_pattern_match_simple(want, got)
                             : !strcmp(got, want);
}

/*
 * The error line of a message: where QEMU appends a hint ("You can
 * force-remove ... with qemu-img check -r all"), qguard does too, after
 * the line and ending in a newline, so that the tools print both as QEMU.
 */
static char *error_line(const char *message)
{
    return g_strndup(message, strcspn(message, "\n"));
}

/*
 * A failure the library reports: negative errno, one line of text (and
 * at most QEMU's hint after it).
 */
static void assert_clean_error(int ret, GError *err, const char *what)
{
    const char *nl;

    if (ret >= 0) {
        FAIL("%s: returned %d, expected a negative errno", what, ret);
    }
    if (!err || !err->message || !*err->message) {
        FAIL("%s: failed with %d but no error message", what, ret);
    }
    nl = strchr(err->message, '\n');
    if (nl && (nl == err->message || !g_str_has_suffix(nl + 1, "\n") ||
               strstr(nl + 1, "\n\n") || nl[1] == '\n')) {
        FAIL("%s: error message is not one line (and a hint): \"%s\"",
             what, err->message);
    }
}

static void assert_events_single_line(GPtrArray *events)
{
    guint i;

    for (i = 0; i < events->len; i++) {
        const char *l = g_ptr_array_index(events, i);
        if (strchr(l, '\n') || !*l) {
            FAIL("library message is not a single non-empty line: \"%s\"", l);
        }
    }
}

static char *events_str(GPtrArray *events)
{
    GString *all = g_string_new(NULL);
    guint i;

    for (i = 0; i < events->len; i++) {
        g_string_append_printf(all, "  %s\n",
                               (char *)g_ptr_array_index(events, i));
    }
    return g_string_free(all, FALSE);
}

static void assert_event_seen(GPtrArray *events, const char *want)
{
    GString *all = g_string_new(NULL);
    guint i;

    for (i = 0; i < events->len; i++) {
        if (message_matches(g_ptr_array_index(events, i), want)) {
            g_string_free(all, TRUE);
            return;
        }
        g_string_append_printf(all, "  %s\n",
                               (char *)g_ptr_array_index(events, i));
    }
    FAIL("expected the library message \"%s\"; got:\n%s", want, all->str);
}

static void make_case_file(const BadCase *bc, const char *path)
{
    Layout l;
    int i;

    unlink(path);
    if (bc->tmpl) {
        g_autofree char *t = tpath("%s", bc->tmpl);
        copy_file(t, path);
    }
    l = bc->tmpl ? layout_of(path) : (Layout) { 0 };
    for (i = 0; i < (int)G_N_ELEMENTS(bc->pokes) && bc->pokes[i].width; i++) {
        const Poke *p = &bc->pokes[i];
        uint64_t base[] = {
            [ABS] = 0, [L1] = l.l1_offset, [L2] = l.l2_offset,
            [RT] = l.rt_offset, [RB] = l.rb_offset, [SNAP] = l.snap_offset,
            [EXT] = l.ext_offset,
        };
        put_be(path, base[p->base] + p->off, p->width, p->value);
    }
    if (bc->truncate) {
        truncate_to(path, bc->truncate - 1);
    }
    if (bc->edit) {
        bc->edit(path, bc);
    }
}

/* Read the whole disk; every failure is clean.  Returns the failures. */
static int read_everything(QGuardImage *img)
{
    uint64_t size = qguard_image_size(img), off, chunk = MiB;
    g_autofree uint8_t *buf = g_malloc(chunk);
    int failures = 0;

    for (off = 0; off < size; off += chunk) {
        g_autoptr(GError) err = NULL;
        uint64_t n = MIN(chunk, size - off);
        int ret = qguard_image_pread(img, off, n, buf, &err);

        if (ret != 0) {
            g_autofree char *what = g_strdup_printf("read %" PRIu64 "+%"
                                                    PRIu64, off, n);
            assert_clean_error(ret, err, what);
            failures++;
        }
    }
    return failures;
}

static void run_check(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    int ret;

    res = QGUARD_SIZED(QGuardCheckResult);
    ret = qguard_image_check(img, 0, &res, capture_message, lines, &err);
    if (ret < 0) {
        assert_clean_error(ret, err, "qguard_image_check");
    }
    assert_events_single_line(lines);
}

/* A successful write must read back; a failed one must fail cleanly. */
static void try_write(QGuardImage *img, uint64_t off, uint64_t len,
                      int kind, int expect_errno, GPtrArray *events)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = g_malloc(len);
    g_autofree uint8_t *rb = g_malloc(len);
    g_autofree char *what = NULL;
    uint64_t size = qguard_image_size(img);
    int ret;

    if (off >= size) {
        return;
    }
    len = MIN(len, size - off);
    memset(buf, 0xa5 ^ kind, len);
    what = g_strdup_printf("%s %" PRIu64 "+%" PRIu64,
                           kind == 0 ? "write" : kind == 1 ? "write-zeroes"
                                                           : "discard",
                           off, len);
    if (kind == 0) {
        ret = qguard_image_pwrite(img, off, len, buf, 0, &err);
    } else if (kind == 1) {
        memset(buf, 0, len);
        ret = qguard_image_pwrite_zeroes(img, off, len,
                                         QGUARD_ZERO_MAY_UNMAP, &err);
    } else {
        ret = qguard_image_discard(img, off, len, &err);
    }
    if (expect_errno && ret != -expect_errno) {
        g_autofree char *ev = events_str(events);
        FAIL("%s: returned %d (%s), expected -%s; library messages:\n%s",
             what, ret, err ? err->message : "no error",
             g_strerror(expect_errno), ev);
    }
    if (ret < 0) {
        assert_clean_error(ret, err, what);
        return;
    }
    if (kind == 2) {
        return;
    }
    g_clear_error(&err);
    ret = qguard_image_pread(img, off, len, rb, &err);
    if (ret < 0) {
        assert_clean_error(ret, err, "read after a successful write");
        return;
    }
    if (memcmp(buf, rb, len)) {
        FAIL("%s succeeded but reads back different data", what);
    }
}

static void exercise_writes(QGuardImage *img, GPtrArray *events)
{
    uint64_t size = qguard_image_size(img);

    try_write(img, 0, 512, 0, 0, events);
    try_write(img, 64 * KiB + 100, 3000, 0, 0, events);
    try_write(img, MiB + 7, 70000, 0, 0, events);
    if (size > 4096) {
        try_write(img, size - 4096, 4096, 0, 0, events);
    }
    try_write(img, 2 * MiB, 64 * KiB, 1, 0, events);
    try_write(img, 3 * MiB, 128 * KiB, 2, 0, events);
    try_write(img, 32 * MiB + 5, 200000, 0, 0, events);
}

static void run_case(const BadCase *bc, bool rw)
{
    g_autofree char *name = g_strdup_printf("%s-%s.qcow2", rw ? "rw" : "ro",
                                            bc->name);
    g_autofree char *path = tpath("%s", name);
    g_autofree uint8_t *before = NULL, *after = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) events = g_ptr_array_new_with_free_func(g_free);
    const char *format = bc->format ? bc->format : "qcow2";
    Outcome want = rw ? bc->rw : bc->ro;
    const char *want_msg = rw ? bc->msg_rw : bc->msg_ro;
    const char *want_event = rw ? bc->event_rw : bc->event_ro;
    QGuardImage *img = NULL;
    size_t len_before, len_after;
    int ret;

    make_case_file(bc, path);
    before = read_whole(path, &len_before);
    qguard_set_message_handler(capture_message, events);

    ret = qguard_image_open(&img, path,
                            strcmp(format, "probe") ? format : NULL, NULL,
                            rw ? QGUARD_OPEN_RDWR : 0, &err);
    if (ret < 0) {
        g_autofree char *line = NULL;

        assert_clean_error(ret, err, "qguard_image_open");
        if (img) {
            FAIL("open failed but returned an image");
        }
        if (want == OPENS) {
            FAIL("%s open refused an image QEMU opens: \"%s\"",
                 rw ? "read-write" : "read-only", err->message);
        }
        if (want == EITHER) {
            g_printerr("# %s open refused: %s\n",
                       rw ? "read-write" : "read-only", err->message);
        }
        line = error_line(err->message);
        if (want_msg && !message_matches(line, want_msg)) {
            FAIL("%s open refused with \"%s\", expected \"%s\"",
                 rw ? "read-write" : "read-only", err->message, want_msg);
        }
        /* A refused image is left exactly as it was. */
        after = read_whole(path, &len_after);
        if (len_after != len_before || memcmp(before, after, len_before)) {
            FAIL("refusing the image modified the file");
        }
        assert_events_single_line(events);
        qguard_set_message_handler(NULL, NULL);
        return;
    }

    g_assert_nonnull(img);
    if (want == EITHER) {
        g_printerr("# %s open succeeded\n", rw ? "read-write" : "read-only");
    }
    if (want == REFUSED) {
        FAIL("%s open accepted an image that must be refused with \"%s\"",
             rw ? "read-write" : "read-only", want_msg);
    }
    if (bc->expect_size) {
        g_assert_cmpuint(qguard_image_size(img), ==, bc->expect_size);
    }
    if (bc->expect_format) {
        g_assert_cmpstr(qguard_image_format(img), ==, bc->expect_format);
    }
    if (rw && bc->write0_errno) {
        /* The first request meets the damage, as in a fresh qemu-io. */
        try_write(img, 0, 512, 0, bc->write0_errno, events);
    } else if (bc->read0_errno) {
        uint8_t buf[512];

        g_clear_error(&err);
        ret = qguard_image_pread(img, 0, sizeof(buf), buf, &err);
        if (ret != -bc->read0_errno) {
            g_autofree char *ev = events_str(events);
            FAIL("reading [0, 512) returned %d (%s), expected -%s; library "
                 "messages:\n%s", ret, err ? err->message : "no error",
                 g_strerror(bc->read0_errno), ev);
        }
        assert_clean_error(ret, err, "read [0, 512)");
    }
    if (want_event) {
        assert_event_seen(events, want_event);
    }
    read_everything(img);
    run_check(img);
    if (!rw) {
        uint8_t buf[512] = { 0 };

        g_clear_error(&err);
        ret = qguard_image_pwrite(img, 0, sizeof(buf), buf, 0, &err);
        assert_clean_error(ret, err, "write to a read-only image");
        if (ret != -EPERM) {
            g_autofree char *ev = events_str(events);
            FAIL("writing to a read-only image returned %d (%s), expected "
                 "-EPERM; library messages:\n%s", ret, err->message, ev);
        }
    } else {
        exercise_writes(img, events);
        g_clear_error(&err);
        ret = qguard_image_flush(img, &err);
        if (ret < 0) {
            assert_clean_error(ret, err, "flush");
        }
    }
    assert_events_single_line(events);
    g_clear_error(&err);
    ret = qguard_image_close(img, &err);
    if (ret < 0) {
        assert_clean_error(ret, err, "close");
    }
    qguard_set_message_handler(NULL, NULL);

    if (!rw) {
        /* A read-only session never writes. */
        after = read_whole(path, &len_after);
        if (len_after != len_before || memcmp(before, after, len_before)) {
            FAIL("a read-only session modified the file");
        }
    } else if (bc->after_rw) {
        bc->after_rw(path, bc);
    }
}

/* ---- Cases beyond open/read/write ---------------------------------------- */

/* Repair mode opens a corrupt image read-write. */
static void test_corrupt_bit_check_mode(void)
{
    g_autofree char *path = tpath("corrupt-check.qcow2");
    g_autofree char *t = tpath("base.qcow2");
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    copy_file(t, path);
    put_be(path, 79, 1, 0x02);
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", NULL,
                                      QGUARD_OPEN_RDWR | QGUARD_OPEN_CHECK,
                                      &err), ==, 0);
    g_assert_no_error(err);
    g_assert_false(qguard_image_is_read_only(img));
    run_check(img);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

/*
 * qemu-img check opens an image whose snapshot table entry has a bad L1
 * table (unaligned, too large) and reports one error, which -r all
 * repairs; repair mode must open it too.
 */
static void check_mode_reports(const char *case_name)
{
    g_autofree char *name = g_strdup_printf("check-%s.qcow2", case_name);
    g_autofree char *path = tpath("%s", name);
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img = NULL;
    size_t i;
    int ret;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        if (!strcmp(cases[i].name, case_name)) {
            make_case_file(&cases[i], path);
        }
    }
    ret = qguard_image_open(&img, path, "qcow2", NULL, QGUARD_OPEN_CHECK,
                            &err);
    if (ret < 0) {
        FAIL("repair-mode open refused an image qemu-img check opens: %s",
             err->message);
    }
    res = QGUARD_SIZED(QGuardCheckResult);
    ret = qguard_image_check(img, 0, &res, capture_message, lines, &err);
    g_assert_cmpint(ret, ==, 0);
    g_assert_cmpint(res.corruptions, >=, 1);
    assert_events_single_line(lines);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

static void test_check_mode_snapshot_l1_offset(void)
{
    check_mode_reports("snapshot-l1-offset-unaligned");
}

static void test_check_mode_snapshot_l1_size(void)
{
    check_mode_reports("snapshot-l1-size-huge");
}

/*
 * A check without repair only reports: qemu-img check prints "ERROR ..."
 * lines and leaves the file alone, whatever it finds.
 */
static void check_leaves_file_alone(const char *case_name)
{
    g_autofree char *name = g_strdup_printf("report-%s.qcow2", case_name);
    g_autofree char *path = tpath("%s", name);
    g_autofree uint8_t *before = NULL, *after = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) events = g_ptr_array_new_with_free_func(g_free);
    size_t len_before, len_after, i;
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img = NULL;
    int ret;

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        if (!strcmp(cases[i].name, case_name)) {
            make_case_file(&cases[i], path);
        }
    }
    before = read_whole(path, &len_before);
    qguard_set_message_handler(capture_message, events);
    /* As a repair tool opens it: tables past the end of file are allowed. */
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", NULL,
                                      QGUARD_OPEN_RDWR | QGUARD_OPEN_CHECK,
                                      &err), ==, 0);
    res = QGUARD_SIZED(QGuardCheckResult);
    ret = qguard_image_check(img, 0, &res, capture_message, lines, &err);
    g_assert_cmpint(ret, ==, 0);
    g_assert_cmpint(res.corruptions, >=, 1);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    qguard_set_message_handler(NULL, NULL);
    /*
     * QEMU's check reports what it trips over as a non-fatal event ("Image
     * is corrupt: ..."); it must never mark the image corrupt.
     */
    if (events->len) {
        g_autofree char *ev = events_str(events);
        if (strstr(ev, "Marking image as corrupt")) {
            FAIL("a check without repair raised a fatal corruption "
                 "event:\n%s", ev);
        }
    }
    after = read_whole(path, &len_after);
    if (len_after != len_before || memcmp(before, after, len_before)) {
        FAIL("a check without repair modified the file (incompatible "
             "features now 0x%" PRIx64 ")", get_be(path, 72, 8));
    }
}

static void test_check_only_refcount_entry_unaligned(void)
{
    check_leaves_file_alone("refcount-entry-unaligned");
}

static void test_check_only_refcount_entry_huge(void)
{
    check_leaves_file_alone("refcount-entry-huge");
}

static void test_check_only_l2_entry_unaligned(void)
{
    check_leaves_file_alone("l2-entry-unaligned");
}

/*
 * check -r all repairs corrupt subcluster bitmaps, and QEMU then finds the
 * image clean and reads the repaired subcluster as zeros.
 */
static void repair_bitmap_case(const char *case_name)
{
    g_autofree char *name = g_strdup_printf("repair-%s.qcow2", case_name);
    g_autofree char *path = tpath("%s", name);
    g_autoptr(GError) err = NULL;
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img = NULL;
    size_t i;
    const char *const qemu_check[] = {
        "qemu-img", "check", "-f", "qcow2", path, NULL,
    };
    const char *const qemu_read[] = {
        "qemu-io", "-f", "qcow2", "-c", "read -P 0 0 2k", path, NULL,
    };

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        if (!strcmp(cases[i].name, case_name)) {
            make_case_file(&cases[i], path);
        }
    }
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", NULL,
                                      QGUARD_OPEN_RDWR | QGUARD_OPEN_CHECK,
                                      &err), ==, 0);
    g_assert_cmpint(qguard_image_check(img, 0, &res, NULL, NULL, &err), ==,
                    0);
    g_assert_cmpint(res.corruptions, ==, 1);
    g_assert_cmpint(qguard_image_check(img, QGUARD_CHECK_FIX_ERRORS |
                                       QGUARD_CHECK_FIX_LEAKS, &res, NULL,
                                       NULL, &err), ==, 0);
    g_assert_cmpint(res.corruptions_fixed, ==, 1);
    g_assert_cmpint(res.corruptions, ==, 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    run_tool(qemu_check);
    run_tool(qemu_read);
}

static void test_repair_extl2_allocated_and_zero(void)
{
    repair_bitmap_case("extl2-subcluster-allocated-and-zero");
}

static void test_repair_extl2_unallocated_with_alloc_bits(void)
{
    repair_bitmap_case("extl2-unallocated-cluster-with-allocated-subclusters");
}

static void test_check_only_l1_entry_unaligned(void)
{
    check_leaves_file_alone("l1-entry-unaligned");
}

/*
 * A cluster stored as two zstd frames is valid: QEMU decodes frame after
 * frame until the cluster is full, and so must qguard.
 */
static void test_zstd_two_frames(void)
{
    g_autofree char *tmpl = tpath("zstd.qcow2");
    g_autofree char *path = tpath("zstd-two-frames.qcow2");
    g_autofree uint8_t *text = text_cluster(0, 65536);
    size_t cap = ZSTD_compressBound(65536 / 2);
    g_autofree uint8_t *frames = g_malloc(2 * cap);
    g_autofree uint8_t *got = g_malloc(65536);
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;
    size_t n1, n2;

    n1 = ZSTD_compress(frames, cap, text, 65536 / 2, 3);
    g_assert_false(ZSTD_isError(n1));
    n2 = ZSTD_compress(frames + n1, cap, text + 65536 / 2, 65536 / 2, 3);
    g_assert_false(ZSTD_isError(n2));
    copy_file(tmpl, path);
    put_zstd_stream(path, frames, n1 + n2);
    g_assert_cmpint(qguard_image_open(&img, path, "qcow2", NULL, 0, &err),
                    ==, 0);
    g_assert_cmpint(qguard_image_pread(img, 0, 65536, got, &err), ==, 0);
    g_assert_no_error(err);
    g_assert_true(memcmp(got, text, 65536) == 0);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
}

/* A chain that loops or misses a file still opens without its backing. */
static void test_backing_problems_no_backing_open(void)
{
    const BadCase *picked[3] = { NULL, NULL, NULL };
    int i, n = 0;
    size_t j;

    for (j = 0; j < G_N_ELEMENTS(cases); j++) {
        if (g_str_has_prefix(cases[j].name, "backing-loop") ||
            !strcmp(cases[j].name, "backing-missing")) {
            picked[n++] = &cases[j];
        }
    }
    g_assert_cmpint(n, ==, 3);
    for (i = 0; i < n; i++) {
        g_autofree char *name = g_strdup_printf("nb-%s.qcow2",
                                                picked[i]->name);
        g_autofree char *path = tpath("%s", name);
        g_autoptr(GError) err = NULL;
        QGuardImage *img = NULL;

        make_case_file(picked[i], path);
        g_assert_cmpint(qguard_image_open(&img, path, "qcow2", NULL,
                                          QGUARD_OPEN_NO_BACKING, &err),
                        ==, 0);
        g_assert_no_error(err);
        g_assert_null(qguard_image_backing(img));
        run_check(img);
        g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    }
}

/* ---- Harness ------------------------------------------------------------- */

typedef struct Job {
    const BadCase *bc;
    bool rw;
    void (*fn)(void);
} Job;

static void limit_resources(void)
{
#ifndef UNDER_ASAN
    struct rlimit rl = { CASE_ADDRESS_SPACE, CASE_ADDRESS_SPACE };

    /* A huge table claim must fail, not allocate. */
    setrlimit(RLIMIT_AS, &rl);
#endif
    alarm(CASE_TIMEOUT_SEC + 5);
}

static void isolated(gconstpointer data)
{
    const Job *job = data;

    if (g_test_subprocess()) {
        limit_resources();
        if (job->fn) {
            job->fn();
        } else {
            run_case(job->bc, job->rw);
        }
        return;
    }
    g_test_trap_subprocess(NULL, CASE_TIMEOUT_SEC * G_USEC_PER_SEC,
                           G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_test_trap_assert_passed();
}

static void make_templates(void)
{
    g_autofree char *base = tpath("base.qcow2");
    g_autofree char *snap = tpath("snap.qcow2");
    g_autofree char *src = tpath("comp.raw");
    g_autofree char *comp = tpath("comp.qcow2");
    g_autofree char *zstd = tpath("zstd.qcow2");
    g_autofree char *df = tpath("df.qcow2");
    g_autofree char *extl2 = tpath("extl2.qcow2");
    g_autofree char *cs4k = tpath("cs4k.qcow2");
    g_autofree char *df_opt = g_strdup_printf("data_file=%s/df.raw",
                                              test_dir);
    g_autofree char *gone = tpath("gone.qcow2");
    g_autofree char *gone_raw = tpath("gone.raw");
    g_autofree char *gone_opt = g_strdup_printf("data_file=%s", gone_raw);
    GString *text = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    const char *const create[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", base, "64M", NULL,
    };
    const char *const write[] = {
        "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k", base, NULL,
    };
    const char *const snapshot[] = {
        "qemu-img", "snapshot", "-c", "s1", snap, NULL,
    };
    const char *const write2[] = {
        "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 64k", snap, NULL,
    };
    const char *const convert[] = {
        "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", src, comp,
        NULL,
    };
    const char *const create_df[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", df_opt, df, "64M",
        NULL,
    };
    const char *const write_df[] = {
        "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 128k", df, NULL,
    };
    const char *const create_extl2[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on",
        extl2, "64M", NULL,
    };
    const char *const write_extl2[] = {
        "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4k", "-c",
        "write -P 0x22 128k 64k", extl2, NULL,
    };
    const char *const create_cs4k[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k",
        cs4k, "64M", NULL,
    };
    const char *const create_gone[] = {
        "qemu-img", "create", "-q", "-f", "qcow2", "-o", gone_opt, gone,
        "64M", NULL,
    };
    const char *const convert_zstd[] = {
        "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
        "compression_type=zstd", src, zstd, NULL,
    };
    int i;

    run_tool(create);
    run_tool(write);
    copy_file(base, snap);
    run_tool(snapshot);
    run_tool(write2);
    for (i = 0; text->len < MiB; i++) {
        g_string_append_printf(text, "line %08d of compressible text\n", i);
    }
    g_string_truncate(text, MiB);
    g_assert_true(g_file_set_contents(src, text->str, text->len, &err));
    g_string_free(text, TRUE);
    run_tool(convert);
    run_tool(convert_zstd);
    run_tool(create_df);
    run_tool(write_df);
    run_tool(create_gone);
    unlink(gone_raw);
    run_tool(create_extl2);
    run_tool(write_extl2);
    run_tool(create_cs4k);
}

/*
 * GLib frees its test cases, not their data, at the end of g_test_run():
 * the jobs are kept here so that LeakSanitizer does not see them lost.
 */
static GPtrArray *jobs;

static void add_job(const char *path, const BadCase *bc, bool rw,
                    void (*fn)(void))
{
    Job *job = g_new0(Job, 1);

    if (!jobs) {
        jobs = g_ptr_array_new_with_free_func(g_free);
    }
    g_ptr_array_add(jobs, job);

    job->bc = bc;
    job->rw = rw;
    job->fn = fn;
    g_test_add_data_func(path, job, isolated);
}

int main(int argc, char **argv)
{
    const char *env = g_getenv("QGUARD_BAD_INPUT_DIR");
    g_autoptr(GError) err = NULL;
    size_t i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    if (g_test_subprocess() && env) {
        test_dir = g_strdup(env);
    } else {
        g_test_set_nonfatal_assertions();
        test_dir = g_dir_make_tmp("qguard-bad-input-XXXXXX", &err);
        g_assert_no_error(err);
        g_setenv("QGUARD_BAD_INPUT_DIR", test_dir, TRUE);
    }
    test_scratch_set(test_dir);
    if (!g_test_subprocess() || !env) {
        make_templates();
    }

    for (i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *ro = g_strdup_printf("/bad-input/read-only/%s",
                                              cases[i].name);
        g_autofree char *rw = g_strdup_printf("/bad-input/read-write/%s",
                                              cases[i].name);
        add_job(ro, &cases[i], false, NULL);
        add_job(rw, &cases[i], true, NULL);
    }
    add_job("/bad-input/zstd/two-frames-read-as-one-cluster", NULL, false,
            test_zstd_two_frames);
    add_job("/bad-input/repair/extl2-subcluster-allocated-and-zero", NULL,
            false, test_repair_extl2_allocated_and_zero);
    add_job("/bad-input/repair/extl2-unallocated-with-allocated-subclusters",
            NULL, false, test_repair_extl2_unallocated_with_alloc_bits);
    add_job("/bad-input/corrupt-bit/repair-mode-opens-read-write", NULL,
            false, test_corrupt_bit_check_mode);
    add_job("/bad-input/backing/loop-or-missing-opens-without-backing", NULL,
            false, test_backing_problems_no_backing_open);
    add_job("/bad-input/repair-mode/snapshot-l1-offset-unaligned-opens",
            NULL, false, test_check_mode_snapshot_l1_offset);
    add_job("/bad-input/repair-mode/snapshot-l1-size-huge-opens", NULL,
            false, test_check_mode_snapshot_l1_size);
    add_job("/bad-input/check-only/refcount-entry-unaligned-file-untouched",
            NULL, false, test_check_only_refcount_entry_unaligned);
    add_job("/bad-input/check-only/refcount-entry-huge-file-untouched",
            NULL, false, test_check_only_refcount_entry_huge);
    add_job("/bad-input/check-only/l2-entry-unaligned-file-untouched",
            NULL, false, test_check_only_l2_entry_unaligned);
    add_job("/bad-input/check-only/l1-entry-unaligned-file-untouched",
            NULL, false, test_check_only_l1_entry_unaligned);

    ret = g_test_run();
    g_ptr_array_free(jobs, TRUE);
    if (!g_test_subprocess()) {
        test_scratch_remove();
    }
    g_free(test_dir);
    return ret;
}
