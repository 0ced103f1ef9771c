/* SPDX-License-Identifier: MIT */
/*
 * Interop with QEMU, both directions.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * qguard -> QEMU: an image created and written through libqguard passes
 * "qemu-img check", and QEMU reads back every byte the test wrote (compared
 * through "qemu-img convert -O raw" plus a few "qemu-io read -P" checks).
 *
 * QEMU -> qguard: an image created by qemu-img and written by qemu-io passes
 * qguard_image_check() and reads back through qguard_image_pread() exactly as
 * QEMU reads it.  Besides the cluster size x refcount width x preallocation x
 * compat matrix this covers compressed images, zero clusters, a three-level
 * backing chain and images grown by "qemu-img resize".
 *
 * Every subtest runs in a child process under a time limit so that a crash
 * or hang in one combination is reported as that combination's failure.
 * Nothing is random: the operation lists come from fixed seeds, printed in
 * failure messages.
 */
#include <errno.h>
#include <fcntl.h>
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

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

#define ALIGN_DOWN(n, d) ((n) / (d) * (d))
#define ALIGN_UP(n, d) (((n) + (d) - 1) / (d) * (d))

/* Per-subtest wall-clock limit; the whole suite needs far less. */
#define SUBTEST_TIMEOUT_SEC 120
/* How long one QEMU tool may run before it is killed. */
#define TOOL_TIMEOUT_SEC "60"

static char *test_dir;

/* ---- Running QEMU's tools ------------------------------------------------ */

typedef struct Cmd {
    GPtrArray *argv;
} Cmd;

static Cmd *cmd_new(const char *tool)
{
    Cmd *c = g_new0(Cmd, 1);

    c->argv = g_ptr_array_new_with_free_func(g_free);
    /* A hung QEMU must not outlive the test. */
    g_ptr_array_add(c->argv, g_strdup("timeout"));
    g_ptr_array_add(c->argv, g_strdup("-k"));
    g_ptr_array_add(c->argv, g_strdup("5"));
    g_ptr_array_add(c->argv, g_strdup(TOOL_TIMEOUT_SEC));
    g_ptr_array_add(c->argv, g_strdup(tool));
    return c;
}

static void G_GNUC_PRINTF(2, 3) cmd_add(Cmd *c, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_ptr_array_add(c->argv, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

static void cmd_free(Cmd *c)
{
    g_ptr_array_free(c->argv, TRUE);
    g_free(c);
}

static char *cmd_string(Cmd *c)
{
    GString *s = g_string_new(NULL);
    guint i;

    /* Skip the "timeout -k 5 N" prefix in messages. */
    for (i = 4; i < c->argv->len; i++) {
        const char *a = g_ptr_array_index(c->argv, i);
        g_autofree char *q = strpbrk(a, " '\"") ? g_shell_quote(a)
                                                 : g_strdup(a);
        g_string_append_printf(s, "%s%s", i > 4 ? " " : "", q);
    }
    return g_string_free(s, FALSE);
}

/* Run @c; returns the exit status (128 + signal if killed). */
static int cmd_run(Cmd *c, char **out, char **err)
{
    g_autofree const char **argv = g_new0(const char *, c->argv->len + 1);
    guint i;

    for (i = 0; i < c->argv->len; i++) {
        argv[i] = g_ptr_array_index(c->argv, i);
    }
    return test_spawn(test_dir, argv, 0, out, err);
}

/* Run @c, which must exit 0; returns its stdout.  Frees @c. */
static char *cmd_run_ok(Cmd *c)
{
    g_autofree char *err = NULL;
    char *out = NULL;
    int status = cmd_run(c, &out, &err);

    if (status != 0) {
        g_autofree char *line = cmd_string(c);
        FAIL("`%s` exited with %d\nstderr: %s\nstdout: %.4000s", line, status,
             err, out);
    }
    cmd_free(c);
    return out;
}

/* ---- A sparse in-memory model of the guest disk -------------------------- */

#define CHUNK (64 * KiB)

typedef struct Model {
    GHashTable *chunks;     /* chunk index -> CHUNK bytes; absent = zeros */
    uint64_t size;
} Model;

static Model *model_new(uint64_t size)
{
    Model *m = g_new0(Model, 1);

    m->chunks = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                      g_free);
    m->size = size;
    return m;
}

static void model_free(Model *m)
{
    g_hash_table_destroy(m->chunks);
    g_free(m);
}

static uint8_t *model_chunk(Model *m, uint64_t idx, bool create)
{
    uint8_t *c = g_hash_table_lookup(m->chunks, GSIZE_TO_POINTER(idx));

    if (!c && create) {
        c = g_malloc0(CHUNK);
        g_hash_table_insert(m->chunks, GSIZE_TO_POINTER(idx), c);
    }
    return c;
}

static bool is_zero(const uint8_t *buf, uint64_t len)
{
    return len == 0 || (buf[0] == 0 && !memcmp(buf, buf + 1, len - 1));
}

static void model_write(Model *m, uint64_t off, const uint8_t *buf,
                        uint64_t len)
{
    g_assert_cmpuint(off + len, <=, m->size);
    while (len) {
        uint64_t in = off % CHUNK, n = MIN(len, CHUNK - in);
        uint8_t *c = model_chunk(m, off / CHUNK, !is_zero(buf, n));

        if (c) {
            memcpy(c + in, buf, n);
        }
        off += n;
        buf += n;
        len -= n;
    }
}

static void model_fill(Model *m, uint64_t off, uint8_t byte, uint64_t len)
{
    g_assert_cmpuint(off + len, <=, m->size);
    while (len) {
        uint64_t in = off % CHUNK, n = MIN(len, CHUNK - in);
        uint8_t *c = model_chunk(m, off / CHUNK, byte != 0);

        if (c) {
            memset(c + in, byte, n);
        }
        off += n;
        len -= n;
    }
}

static void model_read(Model *m, uint64_t off, uint8_t *buf, uint64_t len)
{
    g_assert_cmpuint(off + len, <=, m->size);
    while (len) {
        uint64_t in = off % CHUNK, n = MIN(len, CHUNK - in);
        uint8_t *c = model_chunk(m, off / CHUNK, false);

        if (c) {
            memcpy(buf, c + in, n);
        } else {
            memset(buf, 0, n);
        }
        off += n;
        buf += n;
        len -= n;
    }
}

static gint cmp_u64(gconstpointer a, gconstpointer b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Indexes of the chunks that may hold non-zero bytes, ascending. */
static GArray *model_chunk_list(Model *m)
{
    GArray *list = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    GHashTableIter it;
    gpointer key;

    g_hash_table_iter_init(&it, m->chunks);
    while (g_hash_table_iter_next(&it, &key, NULL)) {
        uint64_t idx = GPOINTER_TO_SIZE(key);
        g_array_append_val(list, idx);
    }
    g_array_sort(list, cmp_u64);
    return list;
}

/* Load a raw file (sparse files are read by their data extents only). */
static Model *model_from_raw(const char *path)
{
    int fd = open(path, O_RDONLY);
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    struct stat st;
    Model *m;
    off_t off = 0;

    if (fd < 0 || fstat(fd, &st) < 0) {
        FAIL("cannot open %s: %s", path, g_strerror(errno));
    }
    m = model_new(st.st_size);
    while (off < st.st_size) {
        off_t data = lseek(fd, off, SEEK_DATA), hole;
        if (data < 0) {
            break;
        }
        hole = lseek(fd, data, SEEK_HOLE);
        off = ALIGN_DOWN(data, (off_t)CHUNK);
        for (; off < hole; off += CHUNK) {
            uint64_t n = MIN((uint64_t)CHUNK, (uint64_t)(st.st_size - off));
            if (pread(fd, buf, n, off) != (ssize_t)n) {
                FAIL("short read from %s", path);
            }
            model_write(m, off, buf, n);
        }
    }
    close(fd);
    return m;
}

static char *hexdump_diff(const uint8_t *got, const uint8_t *want, uint64_t n)
{
    GString *s = g_string_new("got ");
    uint64_t i;

    for (i = 0; i < MIN(n, 16); i++) {
        g_string_append_printf(s, "%02x", got[i]);
    }
    g_string_append(s, ", expected ");
    for (i = 0; i < MIN(n, 16); i++) {
        g_string_append_printf(s, "%02x", want[i]);
    }
    return g_string_free(s, FALSE);
}

static void compare_buffers(const uint8_t *got, const uint8_t *want,
                            uint64_t len, uint64_t base, const char *what)
{
    uint64_t i, j;
    g_autofree char *dump = NULL;

    if (!memcmp(got, want, len)) {
        return;
    }
    for (i = 0; got[i] == want[i]; i++) {
    }
    for (j = i; j < len && got[j] != want[j]; j++) {
    }
    dump = hexdump_diff(got + i, want + i, len - i);
    FAIL("%s: data differs at offset %" PRIu64 " (0x%" PRIx64 "), %" PRIu64
         " bytes differ from there: %s", what, base + i, base + i, j - i,
         dump);
}

/*
 * Every byte of the raw file at @path equals the model: data extents of the
 * file are compared with the model, and every model chunk with the file
 * (holes read as zeros), so bytes in neither are zero on both sides.
 */
static void compare_raw_with_model(const char *path, Model *m,
                                   const char *what)
{
    int fd = open(path, O_RDONLY);
    g_autofree uint8_t *got = g_malloc(CHUNK);
    g_autofree uint8_t *want = g_malloc(CHUNK);
    g_autoptr(GArray) chunks = model_chunk_list(m);
    struct stat st;
    off_t off = 0;
    guint i;

    if (fd < 0 || fstat(fd, &st) < 0) {
        FAIL("cannot open %s: %s", path, g_strerror(errno));
    }
    if ((uint64_t)st.st_size != m->size) {
        FAIL("%s: raw image is %" PRId64 " bytes, expected %" PRIu64, what,
             (int64_t)st.st_size, m->size);
    }
    while (off < st.st_size) {
        off_t data = lseek(fd, off, SEEK_DATA), hole;
        if (data < 0) {
            break;
        }
        hole = lseek(fd, data, SEEK_HOLE);
        for (off = data; off < hole;) {
            uint64_t n = MIN((uint64_t)(hole - off),
                             CHUNK - (uint64_t)off % CHUNK);
            if (pread(fd, got, n, off) != (ssize_t)n) {
                FAIL("short read from %s", path);
            }
            model_read(m, off, want, n);
            compare_buffers(got, want, n, off, what);
            off += n;
        }
    }
    for (i = 0; i < chunks->len; i++) {
        uint64_t start = g_array_index(chunks, uint64_t, i) * CHUNK;
        uint64_t n = MIN((uint64_t)CHUNK, m->size - start);
        ssize_t r = pread(fd, got, n, start);
        if (r < 0 || (uint64_t)r != n) {
            FAIL("short read from %s at %" PRIu64, path, start);
        }
        model_read(m, start, want, n);
        compare_buffers(got, want, n, start, what);
    }
    close(fd);
}

static void compare_image_range(QGuardImage *img, Model *m, uint64_t off,
                                uint64_t len, const char *what)
{
    g_autofree uint8_t *got = g_malloc(MiB);
    g_autofree uint8_t *want = g_malloc(MiB);

    while (len) {
        uint64_t n = MIN(len, MiB);
        g_autoptr(GError) err = NULL;
        int ret = qguard_image_pread(img, off, n, got, &err);

        if (ret < 0) {
            FAIL("%s: qguard_image_pread(%" PRIu64 ", %" PRIu64 ") failed: "
                 "%d (%s)", what, off, n, ret, err ? err->message : "?");
        }
        model_read(m, off, want, n);
        compare_buffers(got, want, n, off, what);
        off += n;
        len -= n;
    }
}

/*
 * Every byte read through qguard_image_pread() equals the model.  Extents
 * qguard reports as reading zeros are read completely up to 64 MiB; larger
 * ones (the 2 MiB-cluster images are over 512 GiB) are read at both ends and
 * wherever the model holds data.
 */
static void compare_image_with_model(QGuardImage *img, Model *m,
                                     const char *what)
{
    g_autoptr(GArray) chunks = model_chunk_list(m);
    uint64_t off = 0;

    if (qguard_image_size(img) != m->size) {
        FAIL("%s: qguard reports %" PRIu64 " bytes, expected %" PRIu64, what,
             qguard_image_size(img), m->size);
    }
    while (off < m->size) {
        g_autoptr(GError) err = NULL;
        QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
        uint64_t end;
        int ret = qguard_image_block_status(img, off, m->size - off, &st,
                                            &err);

        if (ret < 0) {
            FAIL("%s: block status at %" PRIu64 " failed: %s", what, off,
                 err ? err->message : "?");
        }
        if (st.bytes == 0 || st.bytes > m->size - off) {
            FAIL("%s: block status at %" PRIu64 " returned %" PRIu64
                 " bytes", what, off, st.bytes);
        }
        end = off + st.bytes;
        if ((st.flags & QGUARD_BLOCK_DATA) || st.bytes <= 64 * MiB) {
            compare_image_range(img, m, off, st.bytes, what);
        } else {
            guint i;

            compare_image_range(img, m, off, CHUNK, what);
            compare_image_range(img, m, end - CHUNK, CHUNK, what);
            for (i = 0; i < chunks->len; i++) {
                uint64_t s = g_array_index(chunks, uint64_t, i) * CHUNK;
                uint64_t e = MIN(s + CHUNK, m->size);
                s = MAX(s, off);
                e = MIN(e, end);
                if (s < e) {
                    compare_image_range(img, m, s, e - s, what);
                }
            }
        }
        off = end;
    }
}

/* ---- qguard helpers ------------------------------------------------------ */

static void report_to_string(void *opaque, const char *line)
{
    g_string_append_printf(opaque, "%s\n", line);
}

static QGuardImage *open_image(const char *path, unsigned flags)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;
    int ret = qguard_image_open(&img, path, NULL, NULL, flags, &err);

    if (ret < 0 || !img) {
        FAIL("qguard_image_open(%s) failed: %d (%s)", path, ret,
             err ? err->message : "?");
    }
    return img;
}

static void close_image(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;
    int ret = qguard_image_close(img, &err);

    if (ret < 0) {
        FAIL("qguard_image_close failed: %d (%s)", ret,
             err ? err->message : "?");
    }
}

/* qguard_image_check() finds nothing; returns the result for more checks. */
static QGuardCheckResult check_clean(QGuardImage *img, const char *what)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GString) log = g_string_new(NULL);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    int ret = qguard_image_check(img, 0, &res, report_to_string, log, &err);

    if (ret < 0) {
        FAIL("%s: qguard_image_check failed: %d (%s)", what, ret,
             err ? err->message : "?");
    }
    if (res.corruptions || res.leaks || res.check_errors) {
        FAIL("%s: qguard_image_check found %d corruptions, %d leaks, "
             "%d check errors:\n%s", what, res.corruptions, res.leaks,
             res.check_errors, log->str);
    }
    return res;
}

/* "qemu-img check" exits 0 and says so. */
static void qemu_check_clean(const char *path, const char *what)
{
    Cmd *c = cmd_new("qemu-img");
    g_autofree char *out = NULL;

    cmd_add(c, "check");
    cmd_add(c, "-f");
    cmd_add(c, "qcow2");
    cmd_add(c, "%s", path);
    out = cmd_run_ok(c);
    if (!strstr(out, "No errors were found on the image.")) {
        FAIL("%s: qemu-img check did not report a clean image:\n%s", what,
             out);
    }
}

static void qemu_convert_raw(const char *src, const char *fmt,
                             const char *dst)
{
    Cmd *c = cmd_new("qemu-img");

    unlink(dst);
    cmd_add(c, "convert");
    cmd_add(c, "-f");
    cmd_add(c, "%s", fmt);
    cmd_add(c, "-O");
    cmd_add(c, "raw");
    cmd_add(c, "%s", src);
    cmd_add(c, "%s", dst);
    g_free(cmd_run_ok(c));
}

/* The integer or string after "key": in qemu-img's JSON output. */
static const char *json_value(const char *json, const char *key)
{
    g_autofree char *pat = g_strdup_printf("\"%s\": ", key);
    const char *p = strstr(json, pat);

    return p ? p + strlen(pat) : NULL;
}

static uint64_t json_u64(const char *json, const char *key)
{
    const char *v = json_value(json, key);

    if (!v) {
        FAIL("\"%s\" missing in qemu-img output:\n%s", key, json);
    }
    return g_ascii_strtoull(v, NULL, 10);
}

static char *json_str(const char *json, const char *key)
{
    const char *v = json_value(json, key), *end;

    if (!v || *v != '"' || !(end = strchr(v + 1, '"'))) {
        FAIL("\"%s\" missing in qemu-img output:\n%s", key, json);
    }
    return g_strndup(v + 1, end - v - 1);
}

/* Deterministic bytes that differ with offset and tag. */
static void fill_rich(uint8_t *buf, uint64_t off, uint64_t len, uint32_t tag)
{
    uint64_t i;

    for (i = 0; i < len; i++) {
        uint64_t x = off + i;
        buf[i] = (uint8_t)(x * 131 + (x >> 9) * 7 + tag * 29 + 1);
    }
}

/* ---- The operation list -------------------------------------------------- */

typedef enum OpKind {
    OP_WRITE,
    OP_ZERO,            /* write zeros, keep allocation */
    OP_ZERO_UNMAP,      /* write zeros, may deallocate */
    OP_DISCARD,
    OP_RESIZE,
} OpKind;

typedef struct Op {
    OpKind kind;
    uint64_t off;
    uint64_t len;
    uint8_t pattern;    /* byte for constant writes (qemu-io -P) */
    bool rich;          /* qguard writes fill_rich() data instead */
} Op;

typedef struct Combo {
    uint32_t cluster_size;
    int refcount_bits;
    bool prealloc;
    bool v2;
    char *id;           /* cs=512,rb=1,prealloc=off,compat=1.1 */
    char *file_id;      /* the same, usable in a file name */
    uint64_t size0;     /* virtual size at creation */
    uint64_t size1;     /* after the resize */
    guint32 seed;
    int data_file;      /* 0 none, 1 external data file, 2 raw one */
    bool extl2;         /* extended L2 entries */
    bool backing;       /* over a raw backing file with data everywhere */
} Combo;

static void add_op(GArray *ops, OpKind kind, uint64_t off, uint64_t len,
                   uint64_t limit)
{
    Op op = { .kind = kind };

    if (off >= limit || len == 0) {
        return;
    }
    op.off = off;
    op.len = MIN(len, limit - off);
    op.pattern = (uint8_t)(ops->len * 37 + 11);
    op.rich = ops->len % 2 == 0;
    g_array_append_val(ops, op);
}

static void add_random_ops(GArray *ops, GRand *r, uint32_t cs, uint64_t lo,
                           uint64_t hi, int n)
{
    uint64_t max_len = cs <= 64 * KiB ? 3 * (uint64_t)cs + 1000 : 5 * MiB;
    int i;

    for (i = 0; i < n; i++) {
        uint64_t len = 1 + g_rand_int_range(r, 0, (gint32)max_len);
        int align = g_rand_int_range(r, 0, 4);
        int k = g_rand_int_range(r, 0, 10);
        uint64_t off;
        OpKind kind = k < 6 ? OP_WRITE : k < 7 ? OP_ZERO
                      : k < 8 ? OP_ZERO_UNMAP : OP_DISCARD;

        len = MIN(len, hi - lo);
        off = lo + (uint64_t)(g_rand_double(r) * (double)(hi - lo - len));
        if (align == 1) {
            off = ALIGN_DOWN(off, 512);
            len = MAX(ALIGN_DOWN(len, 512), 512);
        } else if (align == 2) {
            off = ALIGN_DOWN(off, cs);
            len = MAX(ALIGN_DOWN(len, cs), cs);
        }
        add_op(ops, kind, off, len, hi);
    }
}

/*
 * The same list drives both directions: aligned and unaligned writes of
 * varied lengths, multi-cluster writes, writes across L2-table boundaries,
 * zero writes with and without unmap, discards, a resize that grows the L1
 * table and writes past the old end.
 */
static GArray *build_ops(const Combo *c)
{
    GArray *ops = g_array_new(FALSE, FALSE, sizeof(Op));
    uint64_t cs = c->cluster_size;
    /* guest bytes per L2 table */
    uint64_t l2 = cs * cs / (c->extl2 ? 16 : 8);
    uint64_t s0 = c->size0, s1 = c->size1, b, grown;
    GRand *r = g_rand_new_with_seed(c->seed);
    Op resize = { .kind = OP_RESIZE, .off = s1 };
    int n;

    /* Phase 1: the image at its created size. */
    add_op(ops, OP_WRITE, 0, 4 * cs, s0);
    add_op(ops, OP_WRITE, cs + 300, 2 * cs + 777, s0);
    add_op(ops, OP_WRITE, 5 * cs + 1, 1, s0);
    add_op(ops, OP_WRITE, 7 * cs - 3, 7, s0);
    add_op(ops, OP_WRITE, 9 * cs + 17, 511, s0);
    add_op(ops, OP_WRITE, 12 * cs, 512, s0);
    for (b = l2, n = 0; b + 2 * cs < s0 && n < 3; b += l2, n++) {
        add_op(ops, OP_WRITE, b - cs - 123, 3 * cs, s0);
    }
    add_op(ops, OP_ZERO, cs / 2, 2 * cs, s0);
    add_op(ops, OP_ZERO_UNMAP, 2 * cs, cs, s0);
    add_op(ops, OP_ZERO_UNMAP, 3 * cs + 100, cs, s0);
    add_op(ops, OP_ZERO, 12 * cs, cs, s0);
    add_op(ops, OP_DISCARD, cs, cs, s0);
    add_op(ops, OP_DISCARD, 5 * cs - 100, 3 * cs + 200, s0);
    if (l2 + 2 * cs < s0) {
        add_op(ops, OP_DISCARD, l2 - cs - 50, 2 * cs + 100, s0);
        add_op(ops, OP_ZERO_UNMAP, l2 - 700, 1400, s0);
    }
    add_random_ops(ops, r, cs, 0, s0, cs >= 2 * MiB ? 12 : 40);
    add_op(ops, OP_WRITE, s0 - 333, 333, s0);

    g_array_append_val(ops, resize);

    /* Phase 2: grown; write across the old end and past it. */
    grown = ALIGN_UP(s0, cs);
    add_op(ops, OP_WRITE, s0 - 1000, 5000, s1);
    for (b = ALIGN_UP(s0 + 1, l2), n = 0; b + 10000 < s1 && n < 3;
         b += l2, n++) {
        add_op(ops, OP_WRITE, b - 5000, 10000, s1);
        add_op(ops, OP_ZERO, b - 100, 200, s1);
    }
    add_op(ops, OP_WRITE, s1 - 700, 700, s1);
    add_op(ops, OP_ZERO, grown + 3 * cs + 5, cs, s1);
    add_op(ops, OP_WRITE, grown + 8 * cs, 2 * cs, s1);
    add_op(ops, OP_DISCARD, grown + 8 * cs, cs, s1);
    add_op(ops, OP_ZERO_UNMAP, grown + 9 * cs + 1, 100, s1);
    add_random_ops(ops, r, cs, s0, s1, 12);
    add_random_ops(ops, r, cs, 0, s1, 8);
    add_op(ops, OP_DISCARD, s1 - 5000, 5000, s1);
    add_op(ops, OP_WRITE, s1 - 3 * cs - 1, 2 * cs, s1);
    g_rand_free(r);
    return ops;
}

static const char *op_name(OpKind k)
{
    static const char *const names[] = {
        "write", "zero", "zero-unmap", "discard", "resize",
    };
    return names[k];
}

/* ---- External data files ------------------------------------------------- */

static void write_file(const char *path, Model *m);

/* The backing file of combo @c in direction @dir, or NULL. */
static char *backing_path(const Combo *c, const char *dir)
{
    return c->backing ? tpath("%s-%s.base", dir, c->file_id) : NULL;
}

static const char *backing_opts(const Combo *c, const char *dir)
{
    static char buf[4096];
    g_autofree char *path = backing_path(c, dir);

    if (!path) {
        return "";
    }
    g_snprintf(buf, sizeof(buf), ",backing_file=%s,backing_fmt=raw", path);
    return buf;
}

/*
 * The disk before any write: zeros, or with a backing file, a pattern in
 * every byte of it (written now), so that every read of a subcluster that
 * should come from the backing file shows whether it did.
 */
static Model *combo_model(const Combo *c, const char *dir)
{
    g_autofree char *path = backing_path(c, dir);
    g_autofree uint8_t *buf = NULL;
    Model *m = model_new(c->size0), *base;
    uint64_t off;

    if (!path) {
        return m;
    }
    base = model_new(c->size0);
    buf = g_malloc(MiB);
    for (off = 0; off < c->size0; off += MiB) {
        uint64_t n = MIN(MiB, c->size0 - off);
        fill_rich(buf, off, n, 0xba5e);
        model_write(base, off, buf, n);
        model_write(m, off, buf, n);
    }
    write_file(path, base);
    model_free(base);
    return m;
}

/* The first @len bytes of @from, holes kept, as @to. */
static void copy_file_prefix(const char *from, const char *to, uint64_t len)
{
    Cmd *c = cmd_new("cp");

    cmd_add(c, "--sparse=always");
    cmd_add(c, "%s", from);
    cmd_add(c, "%s", to);
    g_free(cmd_run_ok(c));
    if (truncate(to, len) < 0) {
        FAIL("cannot truncate %s: %s", to, g_strerror(errno));
    }
}

/* The data file of combo @c in direction @dir, or NULL. */
static char *data_file_path(const Combo *c, const char *dir)
{
    return c->data_file ? tpath("%s-%s.data", dir, c->file_id) : NULL;
}

/* Creation options for @c's data file; absolute, so any cwd finds it. */
static const char *data_file_opts(const Combo *c, const char *dir)
{
    static char buf[4096];
    g_autofree char *path = data_file_path(c, dir);

    if (!path) {
        return "";
    }
    g_snprintf(buf, sizeof(buf), ",data_file=%s,data_file_raw=%s", path,
               c->data_file == 2 ? "on" : "off");
    return buf;
}

/*
 * The data file covers the disk; a write of the last cluster (with its
 * copy-on-write) may take it to the cluster's end.  A raw one reads as the
 * disk by itself.
 */
static void check_data_file(const Combo *c, const char *dir, Model *m,
                            const char *what)
{
    g_autofree char *path = data_file_path(c, dir);
    g_autofree char *copy = NULL;
    struct stat st;

    if (!path) {
        return;
    }
    g_assert_cmpint(stat(path, &st), ==, 0);
    g_assert_cmpuint(st.st_size, >=, m->size);
    g_assert_cmpuint(st.st_size, <=, ALIGN_UP(m->size, c->cluster_size));
    if (c->data_file == 2) {
        copy = g_strdup_printf("%s.disk", path);
        copy_file_prefix(path, copy, m->size);
        compare_raw_with_model(copy, m, what);
        unlink(copy);
    }
}

/* ---- qguard -> QEMU ------------------------------------------------------ */

static void qguard_apply(QGuardImage *img, Model *m, const Op *op, guint i,
                         const Combo *c)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = NULL, *old = NULL;
    uint64_t j;
    int ret = 0;

    switch (op->kind) {
    case OP_WRITE:
        buf = g_malloc(op->len);
        if (op->rich) {
            fill_rich(buf, op->off, op->len, i);
        } else {
            memset(buf, op->pattern, op->len);
        }
        ret = qguard_image_pwrite(img, op->off, op->len, buf, 0, &err);
        if (ret == 0) {
            model_write(m, op->off, buf, op->len);
        }
        break;
    case OP_ZERO:
    case OP_ZERO_UNMAP:
        ret = qguard_image_pwrite_zeroes(img, op->off, op->len,
            op->kind == OP_ZERO_UNMAP ? QGUARD_ZERO_MAY_UNMAP : 0, &err);
        if (ret == 0) {
            model_fill(m, op->off, 0, op->len);
        }
        break;
    case OP_DISCARD:
        /* Discarded bytes read as before or as zeros, nothing else. */
        old = g_malloc(op->len);
        buf = g_malloc(op->len);
        model_read(m, op->off, old, op->len);
        ret = qguard_image_discard(img, op->off, op->len, &err);
        if (ret == 0) {
            ret = qguard_image_pread(img, op->off, op->len, buf, &err);
        }
        if (ret == 0) {
            for (j = 0; j < op->len; j++) {
                if (buf[j] != old[j] && buf[j] != 0) {
                    FAIL("%s seed %u: op %u: after discard %" PRIu64 "+%"
                         PRIu64 " byte %" PRIu64 " reads %02x, neither the "
                         "old %02x nor zero", c->id, c->seed, i, op->off,
                         op->len, op->off + j, buf[j], old[j]);
                }
            }
            model_write(m, op->off, buf, op->len);
        }
        break;
    case OP_RESIZE:
        ret = qguard_image_truncate(img, op->off, false, NULL, &err);
        if (ret == 0) {
            m->size = op->off;
        }
        break;
    }
    if (ret < 0) {
        FAIL("%s seed %u: op %u %s %" PRIu64 "+%" PRIu64 " failed: %d (%s)",
             c->id, c->seed, i, op_name(op->kind), op->off, op->len, ret,
             err ? err->message : "?");
    }
}

static int add_spot_checks(Cmd *io, Model *m, GArray *ops)
{
    g_autofree uint8_t *buf = g_malloc(64 * KiB);
    int found = 0, zeros = 0;
    guint i;

    for (i = ops->len; i-- > 0 && found < 6;) {
        const Op *op = &g_array_index(ops, Op, i);
        uint64_t len = MIN(op->len, 64 * KiB);

        if (op->kind == OP_RESIZE || op->off + len > m->size) {
            continue;
        }
        model_read(m, op->off, buf, len);
        if (buf[0] == 0 && zeros >= 2) {
            continue;
        }
        if (len == 1 || !memcmp(buf, buf + 1, len - 1)) {
            cmd_add(io, "-c");
            cmd_add(io, "read -P 0x%02x %" PRIu64 " %" PRIu64, buf[0],
                    op->off, len);
            found++;
            zeros += buf[0] == 0;
        }
    }
    /* The last sector of the disk, whatever it holds. */
    model_read(m, m->size - 512, buf, 512);
    if (!memcmp(buf, buf + 1, 511)) {
        cmd_add(io, "-c");
        cmd_add(io, "read -P 0x%02x %" PRIu64 " 512", buf[0], m->size - 512);
    }
    return found;
}

static void test_qguard_to_qemu(const Combo *c)
{
    g_autofree char *path = tpath("q2q-%s.qcow2", c->file_id);
    g_autofree char *raw = tpath("q2q-%s.raw", c->file_id);
    g_autoptr(GError) err = NULL;
    g_autoptr(GArray) ops = build_ops(c);
    g_autofree char *info = NULL, *compat = NULL, *io_out = NULL;
    g_autofree char *opts_str = NULL;
    QGuardOpts *opts = qguard_opts_new();
    Model *m = combo_model(c, "q2q");
    QGuardImage *img;
    Cmd *cmd;
    guint i;
    int ret;

    opts_str = g_strdup_printf("size=%" PRIu64 ",cluster_size=%u,"
                               "refcount_bits=%d,compat=%s,preallocation=%s%s"
                               "%s%s", c->size0, c->cluster_size,
                               c->refcount_bits, c->v2 ? "0.10" : "1.1",
                               c->prealloc ? "metadata" : "off",
                               data_file_opts(c, "q2q"),
                               c->extl2 ? ",extended_l2=on" : "",
                               backing_opts(c, "q2q"));
    g_assert_cmpint(qguard_opts_parse(opts, opts_str, NULL, &err), ==, 0);
    ret = qguard_image_create(path, "qcow2", opts, NULL, NULL, &err);
    if (ret < 0) {
        FAIL("qguard_image_create(%s) failed: %s", opts_str,
             err ? err->message : "?");
    }
    qguard_opts_free(opts);

    img = open_image(path, QGUARD_OPEN_RDWR);
    for (i = 0; i < ops->len; i++) {
        const Op *op = &g_array_index(ops, Op, i);

        qguard_apply(img, m, op, i, c);
        if (g_getenv("QGUARD_INTEROP_TRACE")) {
            /* Debugging aid: find the first operation that goes wrong. */
            g_autofree char *what = g_strdup_printf(
                "after op %u %s %" PRIu64 "+%" PRIu64 "%s", i,
                op_name(op->kind), op->off, op->len,
                op->rich ? " rich" : "");
            g_printerr("# %s\n", what);
            compare_image_with_model(img, m, what);
        }
    }
    close_image(img);

    qemu_check_clean(path, "qemu-img check of the qguard-written image");

    cmd = cmd_new("qemu-img");
    cmd_add(cmd, "info");
    cmd_add(cmd, "--output=json");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "qcow2");
    cmd_add(cmd, "%s", path);
    info = cmd_run_ok(cmd);
    g_assert_cmpuint(json_u64(info, "virtual-size"), ==, c->size1);
    g_assert_cmpuint(json_u64(info, "cluster-size"), ==, c->cluster_size);
    g_assert_cmpuint(json_u64(info, "refcount-bits"), ==, c->refcount_bits);
    compat = json_str(info, "compat");
    g_assert_cmpstr(compat, ==, c->v2 ? "0.10" : "1.1");

    qemu_convert_raw(path, "qcow2", raw);
    compare_raw_with_model(raw, m, "QEMU reading the qguard-written image");
    check_data_file(c, "q2q", m, "the raw data file qguard wrote");

    cmd = cmd_new("qemu-io");
    cmd_add(cmd, "-r");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "qcow2");
    if (add_spot_checks(cmd, m, ops) < 3) {
        FAIL("%s: fewer than 3 constant ranges for qemu-io spot checks", c->id);
    }
    cmd_add(cmd, "%s", path);
    io_out = cmd_run_ok(cmd);
    if (strstr(io_out, "Pattern verification failed")) {
        FAIL("qemu-io spot check failed:\n%s", io_out);
    }

    /* And qguard agrees with QEMU and with itself. */
    img = open_image(path, 0);
    check_clean(img, "qguard check of the qguard-written image");
    compare_image_with_model(img, m, "qguard reading its own image");
    close_image(img);

    unlink(path);
    unlink(raw);
    g_free(opts_str);
    opts_str = data_file_path(c, "q2q");
    if (opts_str) {
        unlink(opts_str);
    }
    model_free(m);
}

/* ---- QEMU -> qguard ------------------------------------------------------ */

/* What QEMU's discard does: whole clusters only, plus the tail cluster of
 * an image whose size is not cluster aligned. */
static void model_discard_like_qemu(Model *m, uint64_t off, uint64_t len,
                                    uint64_t cs)
{
    uint64_t start = ALIGN_UP(off, cs), end = ALIGN_DOWN(off + len, cs);

    if (off + len == m->size && (m->size % cs) &&
        ALIGN_DOWN(m->size, cs) >= off) {
        end = m->size;
    }
    if (end > start) {
        model_fill(m, start, 0, end - start);
    }
}

/* Append @op as a qemu-io command and apply it to the model. */
static void qemu_io_op(Cmd *io, Model *m, const Op *op, uint64_t cs)
{
    cmd_add(io, "-c");
    switch (op->kind) {
    case OP_WRITE:
        cmd_add(io, "write -P 0x%02x %" PRIu64 " %" PRIu64, op->pattern,
                op->off, op->len);
        model_fill(m, op->off, op->pattern, op->len);
        break;
    case OP_ZERO:
        cmd_add(io, "write -z %" PRIu64 " %" PRIu64, op->off, op->len);
        model_fill(m, op->off, 0, op->len);
        break;
    case OP_ZERO_UNMAP:
        cmd_add(io, "write -z -u %" PRIu64 " %" PRIu64, op->off, op->len);
        model_fill(m, op->off, 0, op->len);
        break;
    case OP_DISCARD:
        cmd_add(io, "discard %" PRIu64 " %" PRIu64, op->off, op->len);
        model_discard_like_qemu(m, op->off, op->len, cs);
        break;
    case OP_RESIZE:
        g_assert_not_reached();
    }
}

/* qemu-io exits 0 even for some failed commands: look at its output too. */
static void run_qemu_io(Cmd *io)
{
    g_autofree char *line = cmd_string(io);
    g_autofree char *out = cmd_run_ok(io);

    if (strstr(out, "failed") || strstr(out, "error")) {
        FAIL("`%.300s...` reported a failure:\n%.4000s", line, out);
    }
}

static Cmd *qemu_io_rw(void)
{
    Cmd *io = cmd_new("qemu-io");

    cmd_add(io, "-f");
    cmd_add(io, "qcow2");
    return io;
}

static void test_qemu_to_qguard(const Combo *c)
{
    g_autofree char *path = tpath("q2g-%s.qcow2", c->file_id);
    g_autofree char *raw = tpath("q2g-%s.raw", c->file_id);
    g_autoptr(GArray) ops = build_ops(c);
    g_autoptr(GError) err = NULL;
    QGuardImageInfo *info = NULL;
    Model *m = combo_model(c, "q2g");
    QGuardImage *img;
    Cmd *cmd, *io;
    guint i;

    cmd = cmd_new("qemu-img");
    cmd_add(cmd, "create");
    cmd_add(cmd, "-q");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "qcow2");
    cmd_add(cmd, "-o");
    cmd_add(cmd, "cluster_size=%u,refcount_bits=%d,preallocation=%s,"
            "compat=%s%s%s%s", c->cluster_size, c->refcount_bits,
            c->prealloc ? "metadata" : "off", c->v2 ? "0.10" : "1.1",
            data_file_opts(c, "q2g"), c->extl2 ? ",extended_l2=on" : "",
            backing_opts(c, "q2g"));
    cmd_add(cmd, "%s", path);
    cmd_add(cmd, "%" PRIu64, c->size0);
    g_free(cmd_run_ok(cmd));

    io = qemu_io_rw();
    for (i = 0; i < ops->len; i++) {
        const Op *op = &g_array_index(ops, Op, i);

        if (op->kind == OP_RESIZE) {
            cmd_add(io, "%s", path);
            run_qemu_io(io);
            cmd = cmd_new("qemu-img");
            cmd_add(cmd, "resize");
            cmd_add(cmd, "-q");
            cmd_add(cmd, "-f");
            cmd_add(cmd, "qcow2");
            cmd_add(cmd, "%s", path);
            cmd_add(cmd, "%" PRIu64, op->off);
            g_free(cmd_run_ok(cmd));
            m->size = op->off;
            io = qemu_io_rw();
            continue;
        }
        qemu_io_op(io, m, op, c->cluster_size);
    }
    cmd_add(io, "%s", path);
    run_qemu_io(io);

    /* The model must describe what QEMU wrote before qguard is judged. */
    qemu_convert_raw(path, "qcow2", raw);
    compare_raw_with_model(raw, m, "QEMU against the test's model "
                           "(test bug if this fails)");

    check_data_file(c, "q2g", m, "the raw data file QEMU wrote");
    img = open_image(path, 0);
    check_clean(img, "qguard check of the QEMU-written image");
    compare_image_with_model(img, m, "qguard reading the QEMU-written image");
    g_assert_cmpint(qguard_image_get_info(img, &info, &err), ==, 0);
    g_assert_cmpuint(info->virtual_size, ==, c->size1);
    g_assert_cmpuint(info->cluster_size, ==, c->cluster_size);
    g_assert_cmpint(info->refcount_bits, ==, c->refcount_bits);
    g_assert_cmpstr(info->compat, ==, c->v2 ? "0.10" : "1.1");
    g_assert_cmpint(info->has_data_file, ==, c->data_file != 0);
    g_assert_cmpint(info->data_file_raw, ==, c->data_file == 2);
    g_assert_cmpint(info->extended_l2, ==, c->extl2);
    qguard_image_info_free(info);
    close_image(img);

    /* A read-write open and close leaves the image clean for QEMU. */
    img = open_image(path, QGUARD_OPEN_RDWR);
    close_image(img);
    qemu_check_clean(path, "qemu-img check after a qguard read-write open");

    unlink(path);
    unlink(raw);
    {
        g_autofree char *df = data_file_path(c, "q2g");
        if (df) {
            unlink(df);
        }
    }
    model_free(m);
}

/* ---- QEMU -> qguard: special images -------------------------------------- */

static void write_file(const char *path, Model *m)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    g_autofree uint8_t *buf = g_malloc(CHUNK);
    uint64_t off;

    if (fd < 0 || ftruncate(fd, m->size) < 0) {
        FAIL("cannot create %s: %s", path, g_strerror(errno));
    }
    for (off = 0; off < m->size; off += CHUNK) {
        uint64_t n = MIN((uint64_t)CHUNK, m->size - off);
        model_read(m, off, buf, n);
        if (!is_zero(buf, n) && pwrite(fd, buf, n, off) != (ssize_t)n) {
            FAIL("cannot write %s: %s", path, g_strerror(errno));
        }
    }
    close(fd);
}

/*
 * Content for compression: per 4 KiB block one of zeros, a constant, text,
 * a short period, random bytes (incompressible) or half random.  With
 * 2 MiB clusters whole clusters are also made random so that QEMU stores
 * some of them uncompressed.
 */
static Model *compressible_content(uint64_t size, uint32_t cs, guint32 seed)
{
    Model *m = model_new(size);
    g_autofree uint8_t *blk = g_malloc(4 * KiB);
    GRand *r = g_rand_new_with_seed(seed);
    uint64_t off, i;

    for (off = 0; off < size; off += 4 * KiB) {
        uint64_t cl = off / cs;
        int kind = (cs >= 2 * MiB && cl % 4 == 3) ? 4
                   : (int)((off / (4 * KiB) + cl) % 6);

        switch (kind) {
        case 0:
            memset(blk, 0, 4 * KiB);
            break;
        case 1:
            memset(blk, (int)(cl & 0xff) | 1, 4 * KiB);
            break;
        case 2:
            for (i = 0; i < 4 * KiB; i += 32) {
                char line[33];

                g_snprintf(line, sizeof(line), "qguard interop %016" PRIx64
                           "\n", off + i);
                memcpy(blk + i, line, 32);
            }
            break;
        case 3:
            for (i = 0; i < 4 * KiB; i++) {
                blk[i] = (uint8_t)(i % 7 + off / 4096);
            }
            break;
        case 4:
            for (i = 0; i < 4 * KiB; i++) {
                blk[i] = (uint8_t)g_rand_int(r);
            }
            break;
        default:
            for (i = 0; i < 4 * KiB; i++) {
                blk[i] = i < 2 * KiB ? (uint8_t)g_rand_int(r) : 0;
            }
            break;
        }
        model_write(m, off, blk, MIN(4 * KiB, size - off));
    }
    g_rand_free(r);
    return m;
}

typedef struct CompressedCase {
    uint32_t cluster_size;
    uint64_t size;
    const char *type;           /* compression_type */
} CompressedCase;

/* qemu-img convert -c of raw @src into a qcow2 image of the case's kind. */
static void qemu_compress_raw(const CompressedCase *cc, const char *src,
                              const char *dst)
{
    Cmd *cmd = cmd_new("qemu-img");

    cmd_add(cmd, "convert");
    cmd_add(cmd, "-c");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "raw");
    cmd_add(cmd, "-O");
    cmd_add(cmd, "qcow2");
    cmd_add(cmd, "-o");
    cmd_add(cmd, "cluster_size=%u,compression_type=%s", cc->cluster_size,
            cc->type);
    cmd_add(cmd, "%s", src);
    cmd_add(cmd, "%s", dst);
    g_free(cmd_run_ok(cmd));
}

static void test_compressed(const CompressedCase *cc)
{
    g_autofree char *src = tpath("comp-%s-%u.src", cc->type,
                                 cc->cluster_size);
    g_autofree char *path = tpath("comp-%s-%u.qcow2", cc->type,
                                  cc->cluster_size);
    g_autofree char *raw = tpath("comp-%s-%u.raw", cc->type,
                                 cc->cluster_size);
    g_autofree uint8_t *buf = NULL;
    g_autoptr(GError) err = NULL;
    guint32 seed = 0xc0ffee ^ cc->cluster_size;
    Model *m = compressible_content(cc->size, cc->cluster_size, seed);
    Model *qm;
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    uint64_t cs = cc->cluster_size, off;

    write_file(src, m);
    qemu_compress_raw(cc, src, path);

    /* The reference is what QEMU reads from the compressed image. */
    qemu_convert_raw(path, "qcow2", raw);
    qm = model_from_raw(raw);
    compare_raw_with_model(raw, m, "QEMU against the source (test bug)");

    img = open_image(path, 0);
    res = check_clean(img, "qguard check of a compressed QEMU image");
    if (res.compressed_clusters == 0) {
        FAIL("qguard_image_check counts no compressed clusters in an image "
             "written by qemu-img convert -c (cluster size %u)",
             cc->cluster_size);
    }
    compare_image_with_model(img, qm, "qguard reading compressed clusters");
    close_image(img);

    /* Partial writes, zeros and discards over compressed clusters. */
    img = open_image(path, QGUARD_OPEN_RDWR);
    buf = g_malloc(2 * cs);
    for (off = cs / 3; off + 2 * cs < cc->size; off += 5 * cs + 777) {
        fill_rich(buf, off, cs / 2 + 1, (uint32_t)off);
        g_assert_cmpint(qguard_image_pwrite(img, off, cs / 2 + 1, buf, 0,
                                            &err), ==, 0);
        model_write(qm, off, buf, cs / 2 + 1);
    }
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 2 * cs + 5, cs, 0, &err),
                    ==, 0);
    model_fill(qm, 2 * cs + 5, 0, cs);
    g_assert_cmpint(qguard_image_pwrite_zeroes(img, 4 * cs, cs,
                                               QGUARD_ZERO_MAY_UNMAP, &err),
                    ==, 0);
    model_fill(qm, 4 * cs, 0, cs);
    g_assert_no_error(err);
    close_image(img);

    img = open_image(path, 0);
    check_clean(img, "qguard check after rewriting compressed clusters");
    compare_image_with_model(img, qm, "qguard after rewriting compressed "
                             "clusters");
    close_image(img);
    qemu_check_clean(path, "qemu-img check after qguard rewrote compressed "
                     "clusters");
    qemu_convert_raw(path, "qcow2", raw);
    compare_raw_with_model(raw, qm, "QEMU after qguard rewrote compressed "
                           "clusters");

    unlink(src);
    unlink(path);
    unlink(raw);
    model_free(m);
    model_free(qm);
}

/*
 * The compressed stream of guest cluster @index as the L2 entry describes
 * it: the sectors it names (zero-filled past the end of the file), and in
 * *file_len how much of that lies inside the file.  Returns NULL for a
 * cluster that is not compressed.
 */
static uint8_t *compressed_stream(const char *path, uint64_t index,
                                  size_t *len, size_t *file_len)
{
    int fd = open(path, O_RDONLY);
    uint8_t hdr[48], e[8];
    uint32_t cluster_bits;
    uint64_t l1_off, l2_off, entry, host, secs, l2_entries;
    int shift, width;
    uint8_t *buf;
    ssize_t n;

    if (fd < 0 || pread(fd, hdr, sizeof(hdr), 0) != sizeof(hdr)) {
        FAIL("cannot read %s", path);
    }
    cluster_bits = GUINT32_FROM_BE(*(uint32_t *)(hdr + 20));
    l1_off = GUINT64_FROM_BE(*(uint64_t *)(hdr + 40));
    l2_entries = (UINT64_C(1) << cluster_bits) / 8;
    if (pread(fd, e, 8, l1_off + index / l2_entries * 8) != 8) {
        FAIL("cannot read the L1 table of %s", path);
    }
    l2_off = GUINT64_FROM_BE(*(uint64_t *)e) & UINT64_C(0x00fffffffffffe00);
    if (!l2_off ||
        pread(fd, e, 8, l2_off + index % l2_entries * 8) != 8) {
        close(fd);
        return NULL;
    }
    entry = GUINT64_FROM_BE(*(uint64_t *)e);
    if (!(entry & (UINT64_C(1) << 62))) {
        close(fd);
        return NULL;
    }
    shift = 62 - (cluster_bits - 8);
    width = cluster_bits - 8;
    host = entry & ((UINT64_C(1) << shift) - 1);
    secs = ((entry >> shift) & ((UINT64_C(1) << width) - 1)) + 1;
    *len = secs * 512 - host % 512;
    buf = g_malloc0(*len);
    n = pread(fd, buf, *len, host);
    if (n < 0) {
        FAIL("cannot read compressed data of %s", path);
    }
    close(fd);
    *file_len = n;
    return buf;
}

/* A one-cluster image that qemu-img convert -c made from cluster @off. */
static void create_compressed_twin(const char *twin,
                                   const CompressedCase *cc,
                                   const char *src, uint64_t off)
{
    g_autofree char *slice = g_strdup_printf("%s.slice", twin);
    g_autofree uint8_t *buf = g_malloc(cc->cluster_size);
    int in = open(src, O_RDONLY);

    if (in < 0 || pread(in, buf, cc->cluster_size, off) !=
                  (ssize_t)cc->cluster_size) {
        FAIL("cannot read %s", src);
    }
    close(in);
    g_assert_true(g_file_set_contents(slice, (char *)buf, cc->cluster_size,
                                      NULL));
    unlink(twin);
    qemu_compress_raw(cc, slice, twin);
    unlink(slice);
}

/*
 * qguard -> QEMU: clusters that qguard writes compressed with the image's
 * compression type read back identically in QEMU, the image checks clean,
 * and each compressed stream is byte for byte the one qemu-io writes for
 * the same cluster (same framing, same level, same descriptor).
 */
static void test_compressed_by_qguard(const CompressedCase *cc)
{
    g_autofree char *path = tpath("gcomp-%s-%u.qcow2", cc->type,
                                  cc->cluster_size);
    g_autofree char *twin = tpath("gcomp-%s-%u-qemu.qcow2", cc->type,
                                  cc->cluster_size);
    g_autofree char *gtwin = tpath("gcomp-%s-%u-one.qcow2", cc->type,
                                   cc->cluster_size);
    g_autofree char *src = tpath("gcomp-%s-%u.src", cc->type,
                                 cc->cluster_size);
    g_autofree char *raw = tpath("gcomp-%s-%u.raw", cc->type,
                                 cc->cluster_size);
    g_autofree char *opts_str = NULL;
    g_autofree uint8_t *buf = g_malloc(cc->cluster_size);
    g_autofree char *info = NULL, *type = NULL;
    g_autoptr(GError) err = NULL;
    uint64_t cs = cc->cluster_size, off;
    Model *m = compressible_content(cc->size, cc->cluster_size,
                                    0xbadc0de ^ cc->cluster_size);
    QGuardOpts *opts = qguard_opts_new();
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    int compared = 0;
    Cmd *cmd;

    opts_str = g_strdup_printf("size=%" PRIu64 ",cluster_size=%u,"
                               "compression_type=%s", cc->size,
                               cc->cluster_size, cc->type);
    g_assert_cmpint(qguard_opts_parse(opts, opts_str, NULL, &err), ==, 0);
    if (qguard_image_create(path, "qcow2", opts, NULL, NULL, &err) < 0) {
        FAIL("qguard_image_create(%s) failed: %s", opts_str, err->message);
    }
    qguard_opts_free(opts);
    img = open_image(path, QGUARD_OPEN_RDWR);
    for (off = 0; off < cc->size; off += cs) {
        model_read(m, off, buf, cs);
        if (qguard_image_pwrite_compressed(img, off, cs, buf, &err) < 0) {
            FAIL("compressed write at %" PRIu64 " failed: %s", off,
                 err->message);
        }
    }
    close_image(img);

    img = open_image(path, 0);
    res = check_clean(img, "qguard check of its compressed image");
    if (res.compressed_clusters == 0) {
        FAIL("no compressed clusters in the qguard-written image");
    }
    compare_image_with_model(img, m, "qguard reading its compressed image");
    close_image(img);
    qemu_check_clean(path, "qemu-img check of qguard compressed clusters");
    qemu_convert_raw(path, "qcow2", raw);
    compare_raw_with_model(raw, m, "QEMU reading qguard compressed clusters");
    cmd = cmd_new("qemu-img");
    cmd_add(cmd, "info");
    cmd_add(cmd, "--output=json");
    cmd_add(cmd, "%s", path);
    info = cmd_run_ok(cmd);
    type = json_str(info, "compression-type");
    g_assert_cmpstr(type, ==, cc->type);

    /*
     * Framing: one cluster written by qemu-img convert -c and by qguard into
     * fresh one-cluster images.  qguard's file ends where its stream does;
     * qemu-img pads its file to a whole sector, so the rest of QEMU's last
     * sector must be zeros.
     */
    write_file(src, m);
    for (off = 0; off < cc->size && off < 12 * cs; off += cs) {
        g_autofree uint8_t *want = NULL, *got = NULL;
        size_t want_len = 0, got_len = 0, got_end = 0, unused;

        create_compressed_twin(twin, cc, src, off);
        want = compressed_stream(twin, 0, &want_len, &unused);
        unlink(gtwin);
        opts = qguard_opts_new();
        g_free(opts_str);
        opts_str = g_strdup_printf("size=%" PRIu64 ",cluster_size=%u,"
                                   "compression_type=%s", cs,
                                   cc->cluster_size, cc->type);
        g_assert_cmpint(qguard_opts_parse(opts, opts_str, NULL, &err), ==, 0);
        g_assert_cmpint(qguard_image_create(gtwin, "qcow2", opts, NULL, NULL,
                                            &err), ==, 0);
        qguard_opts_free(opts);
        model_read(m, off, buf, cs);
        img = open_image(gtwin, QGUARD_OPEN_RDWR);
        g_assert_cmpint(qguard_image_pwrite_compressed(img, 0, cs, buf,
                                                       &err), ==, 0);
        close_image(img);
        got = compressed_stream(gtwin, 0, &got_len, &got_end);
        if (!want || !got) {
            /*
             * Incompressible data both store as a normal cluster; a zero
             * cluster qemu-img convert leaves unallocated.
             */
            g_assert_true(!got || is_zero(buf, cs));
            continue;
        }
        if (got_end > want_len || memcmp(want, got, got_end) ||
            !is_zero(want + got_end, want_len - got_end)) {
            FAIL("cluster %" PRIu64 ": qguard's compressed stream (%zu "
                 "bytes) differs from qemu-img's (%zu bytes with padding)",
                 off / cs, got_end, want_len);
        }
        compared++;
    }
    g_assert_cmpint(compared, >=, 3);

    unlink(path);
    unlink(twin);
    unlink(gtwin);
    unlink(src);
    unlink(raw);
    model_free(m);
}

static void create_qcow2(const char *path, const char *opts, uint64_t size,
                         const char *backing, const char *backing_fmt)
{
    Cmd *cmd = cmd_new("qemu-img");

    cmd_add(cmd, "create");
    cmd_add(cmd, "-q");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "qcow2");
    if (opts) {
        cmd_add(cmd, "-o");
        cmd_add(cmd, "%s", opts);
    }
    if (backing) {
        cmd_add(cmd, "-b");
        cmd_add(cmd, "%s", backing);
        cmd_add(cmd, "-F");
        cmd_add(cmd, "%s", backing_fmt);
    }
    cmd_add(cmd, "%s", path);
    if (size) {
        cmd_add(cmd, "%" PRIu64, size);
    }
    g_free(cmd_run_ok(cmd));
}

/* Run qemu-io commands given as a NULL-terminated list on @path. */
static void qemu_io_cmds(const char *path, const char *const *cmds)
{
    Cmd *io = qemu_io_rw();

    for (; *cmds; cmds++) {
        cmd_add(io, "-c");
        cmd_add(io, "%s", *cmds);
    }
    cmd_add(io, "%s", path);
    run_qemu_io(io);
}

/* Compare qguard's view of @path (whole chain) with QEMU's. */
static Model *compare_with_qemu_view(const char *path, const char *raw,
                                     const char *what)
{
    QGuardImage *img;
    Model *qm;

    qemu_convert_raw(path, "qcow2", raw);
    qm = model_from_raw(raw);
    img = open_image(path, 0);
    check_clean(img, what);
    compare_image_with_model(img, qm, what);
    close_image(img);
    return qm;
}

static void expect_status(QGuardImage *img, uint64_t off, unsigned want,
                          unsigned mask, const char *what)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);

    g_assert_cmpint(qguard_image_block_status(img, off, 64 * KiB, &st, &err),
                    ==, 0);
    if ((st.flags & mask) != want) {
        FAIL("%s: block status flags at %" PRIu64 " are 0x%x, expected 0x%x "
             "under mask 0x%x", what, off, st.flags, want, mask);
    }
}

/*
 * Zero clusters in all their forms: zero flag over allocated data (kept
 * allocated), zero flag with unmap, zero flag over backing data, and zeros
 * written into part of a cluster.
 */
static void test_zero_clusters(void)
{
    g_autofree char *base = tpath("zero-base.raw");
    g_autofree char *path = tpath("zero.qcow2");
    g_autofree char *raw = tpath("zero.raw");
    g_autofree uint8_t *buf = g_malloc(64 * KiB);
    g_autoptr(GError) err = NULL;
    const char *const cmds[] = {
        "write -P 0x55 0 1M",
        "write -z 128k 128k",           /* ZERO_ALLOC: over data */
        "write -z -u 512k 192k",        /* ZERO_PLAIN: unmapped */
        "write -z 2M 1M",               /* over backing data */
        "write -z -u 4M 64k",
        "write -z 3145828 5000",        /* partial clusters */
        "write -P 0x66 6M 64k",
        "write -z 6M 64k",
        "discard 7M 128k",              /* v3 + backing: zero clusters */
        NULL,
    };
    Model *bm = model_new(8 * MiB), *qm, *expect;
    QGuardImage *img;
    uint64_t off;

    for (off = 0; off < 8 * MiB; off += 64 * KiB) {
        fill_rich(buf, off, 64 * KiB, 7);
        model_write(bm, off, buf, 64 * KiB);
    }
    write_file(base, bm);
    create_qcow2(path, "compat=1.1", 8 * MiB, "zero-base.raw", "raw");
    qemu_io_cmds(path, cmds);

    expect = model_new(8 * MiB);
    for (off = 0; off < 8 * MiB; off += 64 * KiB) {
        model_read(bm, off, buf, 64 * KiB);
        model_write(expect, off, buf, 64 * KiB);
    }
    model_fill(expect, 0, 0x55, MiB);
    model_fill(expect, 128 * KiB, 0, 128 * KiB);
    model_fill(expect, 512 * KiB, 0, 192 * KiB);
    model_fill(expect, 2 * MiB, 0, MiB);
    model_fill(expect, 4 * MiB, 0, 64 * KiB);
    model_fill(expect, 3145828, 0, 5000);
    model_fill(expect, 6 * MiB, 0, 64 * KiB);
    model_fill(expect, 7 * MiB, 0, 128 * KiB);

    qm = compare_with_qemu_view(path, raw, "zero clusters over a backing "
                                "file");
    compare_raw_with_model(raw, expect, "QEMU against the test's model "
                           "(test bug)");

    img = open_image(path, 0);
    expect_status(img, 2 * MiB, QGUARD_BLOCK_ZERO | QGUARD_BLOCK_ALLOCATED,
                  QGUARD_BLOCK_ZERO | QGUARD_BLOCK_ALLOCATED,
                  "zero cluster over backing data");
    expect_status(img, 512 * KiB, QGUARD_BLOCK_ZERO, QGUARD_BLOCK_ZERO,
                  "unmapped zero cluster");
    close_image(img);

    /* Partial writes into zero clusters must not resurrect backing data. */
    img = open_image(path, QGUARD_OPEN_RDWR);
    fill_rich(buf, 0, 1000, 99);
    g_assert_cmpint(qguard_image_pwrite(img, 2 * MiB + 4096 + 1, 1000, buf,
                                        0, &err), ==, 0);
    model_write(qm, 2 * MiB + 4096 + 1, buf, 1000);
    g_assert_cmpint(qguard_image_pwrite(img, 128 * KiB + 7, 1000, buf, 0,
                                        &err), ==, 0);
    model_write(qm, 128 * KiB + 7, buf, 1000);
    g_assert_cmpint(qguard_image_pwrite(img, 7 * MiB + 100, 1000, buf, 0,
                                        &err), ==, 0);
    model_write(qm, 7 * MiB + 100, buf, 1000);
    close_image(img);
    qemu_check_clean(path, "qemu-img check after qguard wrote into zero "
                     "clusters");
    qemu_convert_raw(path, "qcow2", raw);
    compare_raw_with_model(raw, qm, "QEMU after qguard wrote into zero "
                           "clusters");

    model_free(bm);
    model_free(qm);
    model_free(expect);
}

/*
 * qcow2 (64k clusters) over qcow2 (4k clusters) over raw, each level a
 * different size, with data, zeros and discards at every level.
 */
static void test_backing_chain(void)
{
    g_autofree char *base = tpath("chain-base.raw");
    g_autofree char *mid = tpath("chain-mid.qcow2");
    g_autofree char *top = tpath("chain-top.qcow2");
    g_autofree char *raw = tpath("chain.raw");
    g_autofree uint8_t *buf = g_malloc(256 * KiB);
    g_autoptr(GError) err = NULL;
    const char *const mid_cmds[] = {
        "write -P 0x21 0 100k",
        "write -P 0x22 1000000 300000",
        "write -z 2M 64k",
        "discard 3M 64k",
        "write -P 0x23 9M 1M",          /* past the end of the base */
        "write -z -u 10M 4k",
        "write -P 0x24 12582400 512",   /* last sector of mid */
        NULL,
    };
    const char *const top_cmds[] = {
        "write -P 0x31 65000 10000",    /* straddles 64k, over mid data */
        "write -z 1M 128k",
        "write -z -u 3M 1M",
        "write -P 0x32 9437184 4096",
        "discard 5M 128k",
        "write -P 0x33 15M 1M",         /* past the end of mid */
        NULL,
    };
    Model *bm = model_new(8 * MiB), *qm;
    QGuardImage *img, *b1, *b2;
    uint64_t off;

    for (off = 0; off < 8 * MiB; off += 64 * KiB) {
        fill_rich(buf, off, 64 * KiB, 3);
        model_write(bm, off, buf, 64 * KiB);
    }
    write_file(base, bm);
    create_qcow2(mid, "cluster_size=4096", 12 * MiB, "chain-base.raw", "raw");
    qemu_io_cmds(mid, mid_cmds);
    create_qcow2(top, "cluster_size=65536", 16 * MiB, "chain-mid.qcow2",
                 "qcow2");
    qemu_io_cmds(top, top_cmds);

    qm = compare_with_qemu_view(top, raw, "three-level backing chain");

    img = open_image(top, 0);
    b1 = qguard_image_backing(img);
    g_assert_nonnull(b1);
    g_assert_cmpstr(qguard_image_format(b1), ==, "qcow2");
    g_assert_cmpuint(qguard_image_size(b1), ==, 12 * MiB);
    b2 = qguard_image_backing(b1);
    g_assert_nonnull(b2);
    g_assert_cmpstr(qguard_image_format(b2), ==, "raw");
    g_assert_null(qguard_image_backing(b2));
    close_image(img);
    img = open_image(mid, 0);
    check_clean(img, "qguard check of the middle image");
    close_image(img);

    /* Copy-on-write from every level, checked by QEMU. */
    img = open_image(top, QGUARD_OPEN_RDWR);
    for (off = 4000; off < 16 * MiB; off += 1234567) {
        fill_rich(buf, off, 3000, 5);
        g_assert_cmpint(qguard_image_pwrite(img, off, 3000, buf, 0, &err), ==,
                        0);
        model_write(qm, off, buf, 3000);
    }
    close_image(img);
    qemu_check_clean(top, "qemu-img check after qguard copy-on-write");
    qemu_convert_raw(top, "qcow2", raw);
    compare_raw_with_model(raw, qm, "QEMU after qguard copy-on-write "
                           "through the chain");
    model_free(bm);
    model_free(qm);
}

typedef struct ResizeCase {
    const char *name;
    const char *create_opts;
    uint64_t size0;
    uint64_t size1;
    const char *prealloc;       /* qemu-img resize --preallocation */
} ResizeCase;

/* Images grown by qemu-img resize, the L1 table growing and moving. */
static void test_resized(const ResizeCase *rc)
{
    g_autofree char *path = tpath("resize-%s.qcow2", rc->name);
    g_autofree char *raw = tpath("resize-%s.raw", rc->name);
    g_autofree char *w1 = g_strdup_printf("write -P 0x41 %" PRIu64 " 3000",
                                          rc->size0 - 1000);
    g_autofree char *w2 = g_strdup_printf("write -P 0x42 %" PRIu64 " 7777",
                                          rc->size1 - 7777);
    g_autofree char *w3 = g_strdup_printf("write -z %" PRIu64 " 4096",
                                          rc->size0 + 4096);
    g_autofree char *w4 = g_strdup_printf("write -P 0x43 %" PRIu64 " 100000",
                                          rc->size1 / 2 + 3);
    const char *const before[] = {
        "write -P 0x40 0 70000", "write -P 0x44 600 1", NULL,
    };
    const char *const after[] = { w1, w2, w3, w4, NULL };
    Model *qm;
    Cmd *cmd;

    create_qcow2(path, rc->create_opts, rc->size0, NULL, NULL);
    qemu_io_cmds(path, before);
    cmd = cmd_new("qemu-img");
    cmd_add(cmd, "resize");
    cmd_add(cmd, "-q");
    cmd_add(cmd, "-f");
    cmd_add(cmd, "qcow2");
    if (rc->prealloc) {
        cmd_add(cmd, "--preallocation=%s", rc->prealloc);
    }
    cmd_add(cmd, "%s", path);
    cmd_add(cmd, "%" PRIu64, rc->size1);
    g_free(cmd_run_ok(cmd));
    qemu_io_cmds(path, after);
    qm = compare_with_qemu_view(path, raw, "image grown by qemu-img resize");
    g_assert_cmpuint(qm->size, ==, rc->size1);
    model_free(qm);
}

/* ---- Registration -------------------------------------------------------- */

typedef enum Direction { QGUARD_TO_QEMU, QEMU_TO_QGUARD } Direction;

typedef struct Subtest {
    void (*fn)(gconstpointer data);
    gconstpointer data;
} Subtest;

static void matrix_body(gconstpointer data, Direction dir)
{
    if (dir == QGUARD_TO_QEMU) {
        test_qguard_to_qemu(data);
    } else {
        test_qemu_to_qguard(data);
    }
}

static void run_q2q(gconstpointer data)
{
    matrix_body(data, QGUARD_TO_QEMU);
}

static void run_q2g(gconstpointer data)
{
    matrix_body(data, QEMU_TO_QGUARD);
}

static void run_compressed(gconstpointer data)
{
    test_compressed(data);
}

static void run_compressed_by_qguard(gconstpointer data)
{
    test_compressed_by_qguard(data);
}

static void run_zero(gconstpointer data)
{
    (void)data;
    test_zero_clusters();
}

static void run_chain(gconstpointer data)
{
    (void)data;
    test_backing_chain();
}

static void run_resized(gconstpointer data)
{
    test_resized(data);
}

/* Run the subtest in a child so that a crash or hang fails only itself. */
static void isolated(gconstpointer data)
{
    const Subtest *st = data;

    if (g_test_subprocess()) {
        st->fn(st->data);
        return;
    }
    g_test_trap_subprocess(NULL, SUBTEST_TIMEOUT_SEC * G_USEC_PER_SEC,
                           G_TEST_SUBPROCESS_INHERIT_STDERR);
    g_test_trap_assert_passed();
}

static void add_isolated(const char *path, void (*fn)(gconstpointer),
                         gconstpointer data)
{
    Subtest *st = g_new0(Subtest, 1);

    st->fn = fn;
    st->data = data;
    /* GTest frees its suites after the run: it must own @st too. */
    g_test_add_data_func_full(path, st, isolated, g_free);
}

/* Both directions of combination @c. */
static void add_combo(Combo *c)
{
    g_autofree char *p1 = g_strdup_printf("/interop/qguard-to-qemu/%s",
                                          c->id);
    g_autofree char *p2 = g_strdup_printf("/interop/qemu-to-qguard/%s",
                                          c->id);

    add_isolated(p1, run_q2q, c);
    add_isolated(p2, run_q2g, c);
}

static const CompressedCase compressed_cases[] = {
    { 512, 2 * MiB, "zlib" },
    { 4096, 6 * MiB, "zlib" },
    { 65536, 12 * MiB, "zlib" },
    { 2 * 1024 * 1024, 24 * MiB, "zlib" },
    { 512, 2 * MiB, "zstd" },
    { 65536, 12 * MiB, "zstd" },
    { 2 * 1024 * 1024, 24 * MiB, "zstd" },
};

static const CompressedCase compressed_by_qguard_cases[] = {
    { 4096, 2 * MiB, "zlib" },
    { 65536, 4 * MiB, "zlib" },
    { 4096, 2 * MiB, "zstd" },
    { 65536, 4 * MiB, "zstd" },
};

static const ResizeCase resize_cases[] = {
    /* 512-byte clusters: the L1 table grows from 1 to 35 clusters. */
    { "cs512-v3", "cluster_size=512", MiB, 70 * MiB, NULL },
    { "cs4k-v2", "cluster_size=4096,compat=0.10", 3 * MiB + 512,
      300 * MiB + 1536, NULL },
    { "cs4k-prealloc-metadata", "cluster_size=4096", 2 * MiB, 20 * MiB,
      "metadata" },
};

static void combo_sizes(Combo *c)
{
    switch (c->cluster_size) {
    case 512:
        /* 256 L1 entries in 4 clusters, growing to 641 in 11. */
        c->size0 = 8 * MiB;
        c->size1 = 20 * MiB + 1536;
        break;
    case 4096:
        c->size0 = 8 * MiB - 1536;
        c->size1 = 40 * MiB + 512;
        break;
    case 65536:
        /* An L2 table covers 512 MiB: the L1 table grows from 1 entry. */
        c->size0 = 64 * MiB;
        c->size1 = 640 * MiB + 4608;
        break;
    default:
        /* An L2 table covers 512 GiB. */
        c->size0 = 64 * MiB - 512;
        c->size1 = 513 * GiB + 2560;
        break;
    }
}

static char *make_test_dir(void)
{
    const char *env = g_getenv("QGUARD_INTEROP_DIR");
    g_autoptr(GError) err = NULL;
    char *dir;

    if (g_test_subprocess() && env) {
        return g_strdup(env);
    }
    dir = g_dir_make_tmp("qguard-interop-XXXXXX", &err);
    g_assert_no_error(err);
    g_setenv("QGUARD_INTEROP_DIR", dir, TRUE);
    return dir;
}

static void combo_free(gpointer p)
{
    Combo *c = p;

    g_free(c->id);
    g_free(c->file_id);
    g_free(c);
}

int main(int argc, char **argv)
{
    static const uint32_t cluster_sizes[] = {
        512, 4096, 65536, 2 * 1024 * 1024,
    };
    static const int refcount_bits[] = { 1, 16, 64 };
    /* Shared by two subtests each; freed after the run. */
    g_autoptr(GPtrArray) combos = g_ptr_array_new_with_free_func(combo_free);
    size_t ci, ri, i;
    int pi, vi, ret;

    g_test_init(&argc, &argv, NULL);
    if (!g_test_subprocess()) {
        /* A failed child marks its subtest failed; the others still run. */
        g_test_set_nonfatal_assertions();
    }
    test_dir = make_test_dir();
    test_scratch_set(test_dir);

    for (ci = 0; ci < G_N_ELEMENTS(cluster_sizes); ci++) {
        for (ri = 0; ri < G_N_ELEMENTS(refcount_bits); ri++) {
            for (pi = 0; pi < 2; pi++) {
                for (vi = 0; vi < 2; vi++) {
                    Combo *c;

                    /* compat=0.10 requires refcount_bits=16. */
                    if (vi == 0 && refcount_bits[ri] != 16) {
                        continue;
                    }
                    c = g_new0(Combo, 1);
                    g_ptr_array_add(combos, c);
                    c->cluster_size = cluster_sizes[ci];
                    c->refcount_bits = refcount_bits[ri];
                    c->prealloc = pi;
                    c->v2 = vi == 0;
                    c->id = g_strdup_printf("cs=%u,rb=%d,prealloc=%s,"
                                            "compat=%s", c->cluster_size,
                                            c->refcount_bits,
                                            pi ? "metadata" : "off",
                                            c->v2 ? "0.10" : "1.1");
                    c->file_id = g_strdelimit(g_strdup(c->id), "=,", '-');
                    c->seed = 0x9e3779b9u ^ (c->cluster_size * 2654435761u) ^
                              (c->refcount_bits << 8) ^ (pi << 4) ^ vi;
                    combo_sizes(c);
                    add_combo(c);
                }
            }
        }
    }
    /* Extended L2 entries, alone and over a backing file. */
    for (i = 0; i < 8; i++) {
        Combo *c = g_new0(Combo, 1);

        g_ptr_array_add(combos, c);

        c->cluster_size = i & 1 ? 16384 : 65536;
        c->refcount_bits = 16;
        c->prealloc = (i >> 1) & 1;
        c->backing = (i >> 2) & 1;
        c->extl2 = true;
        c->id = g_strdup_printf("extended-l2,cs=%u,prealloc=%s%s",
                                c->cluster_size,
                                c->prealloc ? "metadata" : "off",
                                c->backing ? ",backing" : "");
        c->file_id = g_strdelimit(g_strdup(c->id), "=,", '-');
        c->seed = 0xe712000u ^ (guint32)i;
        if (c->cluster_size == 16384) {
            c->size0 = 16 * MiB - 1536;
            c->size1 = 300 * MiB + 512;
        } else {
            combo_sizes(c);
        }
        add_combo(c);
    }
    /* External data files, plain and raw, with and without preallocation. */
    for (i = 0; i < 4; i++) {
        Combo *c = g_new0(Combo, 1);

        g_ptr_array_add(combos, c);

        c->cluster_size = 65536;
        c->refcount_bits = 16;
        c->prealloc = i & 1;
        c->data_file = 1 + (i >> 1);
        c->id = g_strdup_printf("data-file%s,prealloc=%s",
                                c->data_file == 2 ? "-raw" : "",
                                c->prealloc ? "metadata" : "off");
        c->file_id = g_strdelimit(g_strdup(c->id), "=,", '-');
        c->seed = 0xdada0000u ^ (guint32)i;
        combo_sizes(c);
        add_combo(c);
    }
    for (i = 0; i < G_N_ELEMENTS(compressed_cases); i++) {
        g_autofree char *p = g_strdup_printf(
            "/interop/qemu-to-qguard/compressed/%s/cs=%u",
            compressed_cases[i].type, compressed_cases[i].cluster_size);
        add_isolated(p, run_compressed, &compressed_cases[i]);
    }
    for (i = 0; i < G_N_ELEMENTS(compressed_by_qguard_cases); i++) {
        g_autofree char *p = g_strdup_printf(
            "/interop/qguard-to-qemu/compressed/%s/cs=%u",
            compressed_by_qguard_cases[i].type,
            compressed_by_qguard_cases[i].cluster_size);
        add_isolated(p, run_compressed_by_qguard,
                     &compressed_by_qguard_cases[i]);
    }
    add_isolated("/interop/qemu-to-qguard/zero-clusters-over-backing",
                 run_zero, NULL);
    add_isolated("/interop/qemu-to-qguard/backing-chain-qcow2-qcow2-raw",
                 run_chain, NULL);
    for (i = 0; i < G_N_ELEMENTS(resize_cases); i++) {
        g_autofree char *p = g_strdup_printf(
            "/interop/qemu-to-qguard/resized/%s", resize_cases[i].name);
        add_isolated(p, run_resized, &resize_cases[i]);
    }

    ret = g_test_run();
    if (!g_test_subprocess()) {
        test_scratch_remove();
    }
    g_free(test_dir);
    return ret;
}
