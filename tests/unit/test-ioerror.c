/* SPDX-License-Identifier: MIT */
/*
 * I/O-error injection: every failed host read, write or flush is reported
 * and leaves an image that checks clean and keeps the data that was safe.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A workload is a fixed list of guest operations on a copy of a starting
 * image.  A counting run learns how many host writes, flushes and reads it
 * issues; then, for every N (or a seeded sample), the workload runs again
 * with the N-th one failing:
 *
 *   write-eio     the N-th write fails with EIO, later ones succeed;
 *   write-enospc  every write from the N-th on fails with ENOSPC (full disk);
 *   flush-eio     the N-th flush fails with EIO;
 *   read-eio      the N-th read fails with EIO.
 *
 * The workload goes on after a failure, as a guest that gets an error and
 * continues would.  Then:
 *
 *   - the operation during which the failure was injected returned an error;
 *   - the image opens read-write, qguard's check finds no corruption and no
 *     check error, and qemu-img check agrees (exit 0, or 3 for leaks that
 *     qemu-img check -r leaks repairs to exit 0);
 *   - a sector whose last writer succeeded and was followed by a successful
 *     flush holds that data; every other sector holds data it held at some
 *     point of the error-free run.
 *
 * QGUARD_TEST_SEED repeats a run; "-m slow" or QGUARD_TEST_SLOW=1 injects at
 * every N instead of a sample.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qguard.h"
#include "block/block_int.h"
#include "fault-common.h"

#define SECTOR 512
#define SAMPLED_N 14

static FaultTest ft;
static uint64_t total_injected;

/* ---- Workloads ---------------------------------------------------------- */

typedef enum StepKind {
    S_WRITE,
    S_ZERO,
    S_ZERO_UNMAP,
    S_DISCARD,
    S_FLUSH,
    S_TRUNCATE,
    S_TRUNCATE_PREALLOC,
    S_SNAP_CREATE,
    S_SNAP_APPLY,
    S_SNAP_DELETE,
    S_BITMAP_ADD,
    S_BITMAP_CLEAR,
    S_BITMAP_REMOVE,
    S_END,
} StepKind;

typedef struct Step {
    StepKind kind;
    uint64_t off;           /* S_TRUNCATE: the new size */
    uint64_t len;
    const char *name;       /* snapshots, bitmaps; preallocation mode */
} Step;

typedef struct Workload {
    const char *name;
    const char *create_opts;
    bool prepare;           /* the first 2 MiB hold data on disk */
    const Step *steps;
} Workload;

#define K 1024
#define M (1024 * 1024)

#define W(o, l)           { S_WRITE, (o), (l), NULL }
#define ZERO(o, l)        { S_ZERO, (o), (l), NULL }
#define ZERO_UNMAP(o, l)  { S_ZERO_UNMAP, (o), (l), NULL }
#define DISCARD(o, l)     { S_DISCARD, (o), (l), NULL }
#define TRUNCATE(size)    { S_TRUNCATE, (size), 0, NULL }
#define PREALLOC(size, m) { S_TRUNCATE_PREALLOC, (size), 0, (m) }
#define FLUSH             { S_FLUSH, 0, 0, NULL }
#define SNAP_CREATE(n)    { S_SNAP_CREATE, 0, 0, (n) }
#define SNAP_APPLY(n)     { S_SNAP_APPLY, 0, 0, (n) }
#define SNAP_DELETE(n)    { S_SNAP_DELETE, 0, 0, (n) }
/* A persistent bitmap; granularity in .len (0: the default). */
#define BITMAP_ADD(n, g)  { S_BITMAP_ADD, 0, (g), (n) }
#define BITMAP_CLEAR(n)   { S_BITMAP_CLEAR, 0, 0, (n) }
#define BITMAP_REMOVE(n)  { S_BITMAP_REMOVE, 0, 0, (n) }
#define END               { S_END, 0, 0, NULL }

static const Step steps_alloc_64k[] = {
    W(0, 4 * K), W(100 * K, 8 * K), FLUSH,
    W(60 * K, 70 * K), W(2048, 1000),
    W(3 * M + 7, 200 * K), FLUSH, W(5 * M, 64 * K),
    W(7 * M, 4 * K), END,
};

static const Step steps_alloc_512[] = {
    W(0, 4 * K), W(1 * M + 100, 20000), FLUSH,
    W(512, 1024), W(1536 * K, 64 * K), FLUSH,
    W(3 * M, 3 * K), END,
};

static const Step steps_reftable[] = {
    W(0, 512 * K), W(512 * K, 512 * K), FLUSH,
    W(1 * M, 512 * K), W(1536 * K, 512 * K),
    W(2 * M, 512 * K), FLUSH, W(2560 * K, 512 * K),
    END,
};

static const Step steps_l1_growth[] = {
    W(0, 4 * K), FLUSH, TRUNCATE(64 * M),
    W(64 * M - 4 * K, 4 * K), FLUSH, TRUNCATE(96 * M),
    W(96 * M - 1536, 1536), END,
};

static const Step steps_discard_zero[] = {
    DISCARD(0, 256 * K), W(64 * K, 4 * K),
    ZERO_UNMAP(512 * K, 128 * K), ZERO(1 * M, 64 * K),
    FLUSH, DISCARD(1536 * K + 1000, 100 * K),
    ZERO(700 * K + 7, 3000), W(16 * K, 8 * K), FLUSH,
    W(1800 * K, 4 * K), END,
};

static const Step steps_snapshots[] = {
    SNAP_CREATE("s1"), W(4 * K, 8 * K), FLUSH,
    SNAP_CREATE("s2"), W(0, 4 * K),
    SNAP_APPLY("s1"), W(8 * K, 4 * K), FLUSH,
    SNAP_DELETE("s2"), W(12 * K, 4 * K),
    SNAP_DELETE("s1"), END,
};

static const Step steps_prealloc[] = {
    W(0, 64 * K), FLUSH, PREALLOC(6 * M, "metadata"),
    W(5 * M, 8 * K), FLUSH, PREALLOC(6 * M + 96 * K, "full"),
    W(6 * M + 90 * K, 4 * K), END,
};

/*
 * Bitmaps change memory only; what fails is the store at close (data
 * clusters, tables, directory, header switch), which must be reported and
 * leave an image that opens and checks clean.
 */
static const Step steps_bitmaps[] = {
    BITMAP_ADD("on", 512), BITMAP_ADD("coarse", 0), W(0, 4 * K), FLUSH,
    W(1 * M + 100, 20000), BITMAP_ADD("late", 4096), W(3 * M, 64 * K),
    BITMAP_CLEAR("coarse"), W(2 * M, 4 * K), BITMAP_REMOVE("on"), END,
};

static const Workload workloads[] = {
    { "alloc-64k", "size=8M", false, steps_alloc_64k },
    { "alloc-512", "size=4M,cluster_size=512", false, steps_alloc_512 },
    { "reftable-growth", "size=4M,cluster_size=512,refcount_bits=64", false,
      steps_reftable },
    { "l1-growth", "size=1M,cluster_size=512", false, steps_l1_growth },
    { "prealloc", "size=1M,cluster_size=512,refcount_bits=64", false,
      steps_prealloc },
    { "discard-zero", "size=2M,cluster_size=4096", true, steps_discard_zero },
    { "snapshots", "size=2M,cluster_size=4096", true, steps_snapshots },
    { "bitmaps", "size=4M,cluster_size=512", true, steps_bitmaps },
};

/* Run one step; a negative errno if the library reported a failure. */
static int run_step(QGuardImage *img, const Step *st, int index)
{
    g_autoptr(GError) err = NULL;
    g_autofree uint8_t *buf = NULL;
    int ret = 0;

    switch (st->kind) {
    case S_WRITE:
        buf = g_malloc(st->len);
        fill_pattern(buf, st->len, st->off, index + 1);
        ret = qguard_image_pwrite(img, st->off, st->len, buf, 0, &err);
        break;
    case S_ZERO:
    case S_ZERO_UNMAP:
        ret = qguard_image_pwrite_zeroes(img, st->off, st->len,
                                         st->kind == S_ZERO_UNMAP ?
                                         QGUARD_ZERO_MAY_UNMAP : 0, &err);
        break;
    case S_DISCARD:
        ret = qguard_image_discard(img, st->off, st->len, &err);
        break;
    case S_FLUSH:
        ret = qguard_image_flush(img, &err);
        break;
    case S_TRUNCATE:
        ret = qguard_image_truncate(img, st->off, false, NULL, &err);
        break;
    case S_TRUNCATE_PREALLOC:
        ret = qguard_image_truncate(img, st->off, false, st->name, &err);
        break;
    case S_SNAP_CREATE:
        ret = qguard_snapshot_create(img, st->name, &err);
        break;
    case S_SNAP_APPLY:
        ret = qguard_snapshot_apply(img, st->name, &err);
        break;
    case S_SNAP_DELETE:
        ret = qguard_snapshot_delete(img, st->name, &err);
        break;
    case S_BITMAP_ADD:
        ret = qguard_bitmap_add(img, st->name, st->len, false, &err);
        break;
    case S_BITMAP_CLEAR:
        ret = qguard_bitmap_clear(img, st->name, &err);
        break;
    case S_BITMAP_REMOVE:
        ret = qguard_bitmap_remove(img, st->name, &err);
        break;
    case S_END:
        break;
    }
    /* A failure is reported both ways: return value and message. */
    g_assert_true((ret < 0) == (err != NULL));
    return ret;
}

static int nsteps(const Workload *w)
{
    int n = 0;

    while (w->steps[n].kind != S_END) {
        n++;
    }
    return n;
}

/* ---- Fault hook --------------------------------------------------------- */

typedef enum FaultKind {
    FAULT_WRITE_EIO,
    FAULT_WRITE_ENOSPC,
    FAULT_FLUSH_EIO,
    FAULT_READ_EIO,
} FaultKind;

static const char *const fault_names[] = {
    "write-eio", "write-enospc", "flush-eio", "read-eio",
};

typedef struct Fault {
    const char *path;
    FaultKind kind;
    uint64_t n;             /* fail the n-th (1-based); 0: only count */
    uint64_t seen;
    bool fired;
} Fault;

static int fault_hook(void *opaque, HostFile *file, HostFileOp op,
                      uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int iovcnt)
{
    Fault *f = opaque;
    HostFileOp want;

    (void)offset;
    (void)bytes;
    (void)iov;
    (void)iovcnt;
    if (strcmp(host_file_name(file), f->path)) {
        return 0;
    }
    switch (f->kind) {
    case FAULT_FLUSH_EIO:
        want = HOST_FILE_FLUSH;
        break;
    case FAULT_READ_EIO:
        want = HOST_FILE_READ;
        break;
    default:
        want = HOST_FILE_WRITE;
        break;
    }
    if (op != want) {
        return 0;
    }
    f->seen++;
    if (f->n && (f->seen == f->n ||
                 (f->kind == FAULT_WRITE_ENOSPC && f->seen > f->n))) {
        f->fired = true;
        return f->kind == FAULT_WRITE_ENOSPC ? -ENOSPC : -EIO;
    }
    return 0;
}

/* ---- Guest data --------------------------------------------------------- */

typedef struct State {
    uint64_t size;
    uint64_t *hashes;
    uint8_t *data;          /* the whole disk, if asked for */
} State;

static void read_state(QGuardImage *img, State *st, bool keep_data)
{
    uint64_t off, s, chunk = 1 << 20;
    g_autofree uint8_t *buf = g_malloc(chunk);

    st->size = qguard_image_size(img);
    st->hashes = g_new(uint64_t, st->size / SECTOR + 1);
    st->data = keep_data ? g_malloc(st->size) : NULL;
    for (off = 0; off < st->size; off += chunk) {
        uint64_t len = MIN(chunk, st->size - off);
        g_assert_cmpint(qguard_image_pread(img, off, len, buf, NULL), ==, 0);
        for (s = 0; s < len; s += SECTOR) {
            st->hashes[(off + s) / SECTOR] = hash_sector(buf + s, SECTOR);
        }
        if (keep_data) {
            memcpy(st->data + off, buf, len);
        }
    }
}

static uint64_t state_hash(const State *st, uint64_t s)
{
    static const uint8_t zero[SECTOR];

    return s * SECTOR < st->size ? st->hashes[s] : hash_sector(zero, SECTOR);
}

/* ---- Helpers ------------------------------------------------------------ */

static void copy_file(const char *from, const char *to)
{
    g_autofree char *data = NULL;
    gsize len;

    g_assert_true(g_file_get_contents(from, &data, &len, NULL));
    g_assert_true(g_file_set_contents(to, data, len, NULL));
}

static QGuardImage *open_rw(const char *path, GError **errp)
{
    QGuardImage *img = NULL;

    qguard_set_message_handler(quiet, NULL);
    qguard_image_open(&img, path, "qcow2", NULL, QGUARD_OPEN_RDWR, errp);
    qguard_set_message_handler(NULL, NULL);
    return img;
}

/* Does a write step cover all of sector @s? */
static bool covers_sector(const Step *st, uint64_t s)
{
    if (st->kind != S_WRITE && st->kind != S_ZERO &&
        st->kind != S_ZERO_UNMAP && st->kind != S_DISCARD) {
        return true;    /* whole-disk operations */
    }
    return st->off <= s * SECTOR && st->off + st->len >= (s + 1) * SECTOR;
}

/* The bytes write step @index put into sector @s are in @disk. */
static bool write_bytes_match(const Step *st, int index, uint64_t s,
                              const uint8_t *disk)
{
    uint64_t from = MAX(st->off, s * SECTOR);
    uint64_t to = MIN(st->off + st->len, (s + 1) * SECTOR);
    uint8_t want[SECTOR];

    fill_pattern(want, to - from, from, index + 1);
    return memcmp(disk + from, want, to - from) == 0;
}

/* ---- The test ----------------------------------------------------------- */

typedef struct Reference {
    int nsteps;
    State initial;
    State *after;           /* after[i]: the guest after step i, no errors */
    uint64_t counts[4];     /* host operations of each fault kind */
} Reference;

static void make_base(const Workload *w, const char *base)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    test_image_new(base, "qcow2", w->create_opts);
    if (w->prepare) {
        g_autofree uint8_t *buf = g_malloc(2 * M);
        fill_pattern(buf, 2 * M, 0, 0xbeef);
        g_assert_cmpint(qguard_image_open(&img, base, "qcow2", NULL,
                                          QGUARD_OPEN_RDWR, &err), ==, 0);
        g_assert_cmpint(qguard_image_pwrite(img, 0, 2 * M, buf, 0, &err),
                        ==, 0);
        g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
    }
}

static void make_reference(const Workload *w, const char *base,
                           const char *work, Reference *ref)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img;
    Fault f = { .path = work };
    int i, k;

    ref->nsteps = nsteps(w);
    ref->after = g_new0(State, ref->nsteps);
    /* Error-free states, read back after every step. */
    copy_file(base, work);
    img = open_rw(work, &err);
    g_assert_no_error(err);
    read_state(img, &ref->initial, false);
    for (i = 0; i < ref->nsteps; i++) {
        g_assert_cmpint(run_step(img, &w->steps[i], i), ==, 0);
        read_state(img, &ref->after[i], false);
    }
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);

    /* How many host operations of each kind the plain workload issues. */
    for (k = 0; k < 4; k++) {
        copy_file(base, work);
        img = open_rw(work, &err);
        f.kind = k;
        f.seen = 0;
        host_file_set_hook(fault_hook, &f);
        for (i = 0; i < ref->nsteps; i++) {
            g_assert_cmpint(run_step(img, &w->steps[i], i), ==, 0);
        }
        g_assert_cmpint(qguard_image_close(img, &err), ==, 0);
        host_file_set_hook(NULL, NULL);
        ref->counts[k] = f.seen;
    }
}

/*
 * Inject one fault; returns a description of what went wrong, or NULL.
 */
static char *inject(const Workload *w, const Reference *ref,
                    const char *base, const char *work, FaultKind kind,
                    uint64_t n)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GString) log = g_string_new(NULL);
    g_autofree bool *ok = g_new0(bool, ref->nsteps + 1);
    g_autofree char *out = NULL;
    const char *check[] = { "qemu-img", "check", "-f", "qcow2", work, NULL };
    const char *fix[] = { "qemu-img", "check", "-r", "leaks", "-f", "qcow2",
                          work, NULL };
    Fault f = { .path = work, .kind = kind, .n = n };
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImage *img;
    State got = { 0 };
    int i, j, last_flush = -1, fired_at = -2, first_failure = ref->nsteps;
    uint64_t s;
    int rc;
    char *why = NULL;

    copy_file(base, work);
    img = open_rw(work, &err);
    g_assert_no_error(err);
    host_file_set_hook(fault_hook, &f);
    for (i = 0; i <= ref->nsteps; i++) {
        bool fired_before = f.fired;
        if (i < ref->nsteps) {
            ok[i] = run_step(img, &w->steps[i], i) == 0;
        } else {
            /* The close: a flush that may fail too. */
            ok[i] = qguard_image_close(img, NULL) == 0;
        }
        if (f.fired && !fired_before) {
            fired_at = i;
        }
        if (!ok[i] && i < first_failure) {
            first_failure = i;
        }
        if (ok[i] && (i == ref->nsteps || w->steps[i].kind == S_FLUSH)) {
            last_flush = i;
        }
    }
    host_file_set_hook(NULL, NULL);
    if (fired_at == -2) {
        return g_strdup("the fault was never injected");
    }
    if (ok[fired_at]) {
        return g_strdup_printf("step %d (%s) succeeded although a host "
                               "operation failed during it", fired_at,
                               fired_at == ref->nsteps ? "close" : "guest op");
    }

    img = open_rw(work, &err);
    if (!img) {
        return g_strdup_printf("read-write open afterwards failed: %s",
                               err->message);
    }
    rc = qguard_image_check(img, 0, &res, report_line, log, &err);
    if (rc < 0 || res.corruptions || res.check_errors) {
        why = g_strdup_printf("qguard check: ret %d, %d corruptions, %d "
                              "errors (injected during step %d)\n%s", rc,
                              res.corruptions, res.check_errors, fired_at,
                              log->str);
        qguard_image_close(img, NULL);
        return why;
    }
    read_state(img, &got, true);
    g_assert_cmpint(qguard_image_close(img, &err), ==, 0);

    for (s = 0; s < got.size / SECTOR && !why; s++) {
        int last = -1;
        bool partial = false, checked = false, found;
        const char *what = NULL;

        /* The steps that changed this sector in the error-free run. */
        for (i = 0; i < ref->nsteps; i++) {
            const State *prev = i ? &ref->after[i - 1] : &ref->initial;
            if (state_hash(&ref->after[i], s) != state_hash(prev, s)) {
                last = i;
                partial |= !covers_sector(&w->steps[i], s);
            }
        }
        if (got.size != ref->after[ref->nsteps - 1].size) {
            /* A failed resize: only the union check below applies. */
        } else if (last < 0 || (last < first_failure && last_flush > last)) {
            /*
             * Untouched, or last changed before anything failed and
             * flushed since: exactly what the error-free run has.
             */
            if (state_hash(&got, s) !=
                state_hash(&ref->after[ref->nsteps - 1], s)) {
                what = "lost acknowledged, flushed data";
            }
            checked = true;
        } else if (ok[last] && last_flush > last &&
                   w->steps[last].kind == S_WRITE) {
            /* A successful, flushed plain write: its bytes are there. */
            if (!write_bytes_match(&w->steps[last], last, s, got.data)) {
                what = "lost the data of an acknowledged, flushed write";
            }
            checked = true;
        }
        if (!checked && !partial) {
            /* Anything else: data the sector held at some point. */
            found = state_hash(&got, s) == state_hash(&ref->initial, s);
            for (j = 0; j < ref->nsteps && !found; j++) {
                found = state_hash(&got, s) == state_hash(&ref->after[j], s);
            }
            if (!found) {
                what = "holds data it never had";
            }
        }
        if (what) {
            why = g_strdup_printf("guest sector %" PRIu64 " (byte %" PRIu64
                                  ") %s (last changed by step %d, first "
                                  "failure at step %d, injected during "
                                  "step %d)", s, s * SECTOR, what, last,
                                  first_failure, fired_at);
        }
    }
    g_free(got.hashes);
    g_free(got.data);
    if (why) {
        return why;
    }

    rc = run_qemu_img(check, &out);
    if (rc == 3) {
        g_free(out);
        rc = run_qemu_img(fix, &out);
        if (rc != 0) {
            return g_strdup_printf("qemu-img check -r leaks: exit %d\n%s",
                                   rc, out);
        }
    } else if (rc != 0) {
        return g_strdup_printf("qemu-img check: exit %d\n%s", rc, out);
    }
    return NULL;
}

static void run_workload(gconstpointer data)
{
    const Workload *w = data;
    g_autofree char *base = g_build_filename(ft.dir, "base.qcow2", NULL);
    g_autofree char *work = g_build_filename(ft.dir, "work.qcow2", NULL);
    GRand *rand = g_rand_new_with_seed(ft.seed ^ g_str_hash(w->name));
    Reference ref = { 0 };
    uint64_t injected = 0, failures = 0;
    int k, i;


    make_base(w, base);
    make_reference(w, base, work, &ref);
    for (k = 0; k < 4; k++) {
        uint64_t count = ref.counts[k], n;
        g_autofree uint8_t *pick = g_malloc0(count + 1);

        if (ft.slow || count <= SAMPLED_N) {
            memset(pick, 1, count + 1);
        } else {
            uint64_t chosen = 2;
            pick[1] = pick[count] = 1;
            while (chosen < SAMPLED_N) {
                n = 1 + g_rand_int_range(rand, 0, count);
                chosen += !pick[n];
                pick[n] = 1;
            }
        }
        for (n = 1; n <= count; n++) {
            g_autofree char *why = NULL;
            if (!pick[n]) {
                continue;
            }
            why = inject(w, &ref, base, work, k, n);
            injected++;
            if (why) {
                failures++;
                if (failures <= 5) {
                    g_autofree char *keep = g_strdup_printf(
                        "%s/qguard-ioerror-%s-%s-%" PRIu64 ".qcow2",
                        g_get_tmp_dir(), w->name, fault_names[k], n);
                    copy_file(work, keep);
                    g_test_message("FAIL %s: %s at host operation %" PRIu64
                                   " of %" PRIu64 " (seed %u), image kept "
                                   "as %s:\n%s", w->name, fault_names[k], n,
                                   count, ft.seed, keep, why);
                }
            }
        }
    }
    printf("# ioerror %s: %" PRIu64 " errors injected (writes %" PRIu64
           ", flushes %" PRIu64 ", reads %" PRIu64 " in the workload), %"
           PRIu64 " failed\n", w->name, injected, ref.counts[0],
           ref.counts[2], ref.counts[3], failures);
    total_injected += injected;
    if (failures) {
        g_test_fail_printf("%s: %" PRIu64 " of %" PRIu64 " injected errors "
                           "left a problem (seed %u)", w->name, failures,
                           injected, ft.seed);
    }
    g_free(ref.initial.hashes);
    for (i = 0; i < ref.nsteps; i++) {
        g_free(ref.after[i].hashes);
    }
    g_free(ref.after);
    g_rand_free(rand);
}

int main(int argc, char **argv)
{
    size_t i;
    int ret;

    fault_test_begin(&ft, &argc, &argv, "ioerror", "every N");
    for (i = 0; i < G_N_ELEMENTS(workloads); i++) {
        g_autofree char *name = g_strdup_printf("/ioerror/%s",
                                                workloads[i].name);
        g_test_add_data_func(name, &workloads[i], run_workload);
    }
    ret = g_test_run();
    printf("# ioerror total: %" PRIu64 " errors injected\n", total_injected);
    fault_test_end(&ft);
    return ret;
}
