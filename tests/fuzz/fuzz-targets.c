/* SPDX-License-Identifier: MIT */
/*
 * Fuzz entry points: image open + check, image I/O, overlap map.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Built twice: with clang and -fsanitize=fuzzer into the libFuzzer binaries
 * (tests/fuzz/Makefile), and with the normal gcc build into
 * test-fuzz-regressions, which replays every file of tests/fuzz/regressions.
 * A violated property ends in fuzz_fail(), i.e. abort(), which both the
 * fuzzer and the GTest runner report as a crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qguard.h"
#include "qcow2-overlap.h"
#include "fuzz-targets.h"

static char *work_dir;
static char *img_path;
static char *copy_path;

static void G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN fuzz_fail(const char *fmt,
                                                          ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "qguard fuzz: property violated: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

static void quiet_messages(void *opaque, const char *line)
{
    (void)opaque;
    (void)line;
}

static void remove_work_dir(void)
{
    GDir *dir;
    const char *name;

    if (!work_dir) {
        return;
    }
    dir = g_dir_open(work_dir, 0, NULL);
    if (dir) {
        while ((name = g_dir_read_name(dir))) {
            g_autofree char *p = g_build_filename(work_dir, name, NULL);
            unlink(p);
        }
        g_dir_close(dir);
    }
    rmdir(work_dir);
}

void qguard_fuzz_cleanup(void)
{
    remove_work_dir();
    g_clear_pointer(&work_dir, g_free);
    g_clear_pointer(&img_path, g_free);
    g_clear_pointer(&copy_path, g_free);
}

static void write_file(const char *path, const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t done = 0;

    if (fd < 0) {
        fuzz_fail("cannot create %s: %s", path, g_strerror(errno));
    }
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            fuzz_fail("cannot write %s: %s", path, g_strerror(errno));
        }
        done += n;
    }
    close(fd);
}

/* A small qcow2 backing file with recognisable data. */
static void create_backing(void)
{
    g_autofree char *path = g_build_filename(work_dir, "base.qcow2", NULL);
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    QGuardImage *img = NULL;
    uint8_t buf[4096];
    int i;

    qguard_opts_set(opts, "size", "1M");
    qguard_opts_set(opts, "cluster_size", "4096");
    if (qguard_image_create(path, "qcow2", opts, NULL, NULL, &err) < 0 ||
        qguard_image_open(&img, path, "qcow2", NULL, QGUARD_OPEN_RDWR,
                          &err) < 0) {
        fuzz_fail("cannot create backing file: %s", err->message);
    }
    for (i = 0; i < 16; i++) {
        memset(buf, 0xb0 + i, sizeof(buf));
        if (qguard_image_pwrite(img, (uint64_t)i * 65536, sizeof(buf), buf,
                                0, &err) < 0) {
            fuzz_fail("cannot write backing file: %s", err->message);
        }
    }
    qguard_image_close(img, NULL);
    qguard_opts_free(opts);
}

void qguard_fuzz_init(void)
{
    const char *tmp = g_getenv("QGUARD_FUZZ_TMPDIR");
    struct rlimit rl;
    char tmpl[256];

    if (work_dir) {
        return;
    }
    /*
     * A crashing input aborts before atexit() runs; tests/fuzz/run points
     * QGUARD_FUZZ_TMPDIR at a directory it removes whatever happens.
     */
    if (!tmp || !*tmp) {
        tmp = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR) ? "/dev/shm"
                                                          : "/tmp";
    }
    if (snprintf(tmpl, sizeof(tmpl), "%s/qguard-fuzz-XXXXXX", tmp) >=
        (int)sizeof(tmpl)) {
        fuzz_fail("temporary directory name too long: %s", tmp);
    }
    if (!mkdtemp(tmpl)) {
        fuzz_fail("mkdtemp: %s", g_strerror(errno));
    }
    work_dir = g_strdup(tmpl);
    img_path = g_build_filename(work_dir, "img", NULL);
    copy_path = g_build_filename(work_dir, "copy", NULL);
    atexit(remove_work_dir);
    /*
     * A fuzzed image may put metadata anywhere in 2^56 bytes; files on
     * tmpfs are sparse, but cap them so a runaway allocator fails with
     * EFBIG instead of filling memory.
     */
    signal(SIGXFSZ, SIG_IGN);
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0) {
        rl.rlim_cur = MIN(rl.rlim_max, (rlim_t)1 << 32);
        setrlimit(RLIMIT_FSIZE, &rl);
    }
    qguard_set_message_handler(quiet_messages, NULL);
    create_backing();
}

/* Is the backing file named in the header our own base.qcow2? */
static bool names_our_backing(const uint8_t *data, size_t size)
{
    static const char name[] = "base.qcow2";
    uint64_t off;
    uint32_t len;

    if (size < 20 || memcmp(data, "QFI\xfb", 4)) {
        return false;
    }
    off = ((uint64_t)data[8] << 56) | ((uint64_t)data[9] << 48) |
          ((uint64_t)data[10] << 40) | ((uint64_t)data[11] << 32) |
          ((uint64_t)data[12] << 24) | ((uint64_t)data[13] << 16) |
          ((uint64_t)data[14] << 8) | data[15];
    len = ((uint32_t)data[16] << 24) | ((uint32_t)data[17] << 16) |
          ((uint32_t)data[18] << 8) | data[19];
    return len == strlen(name) && off < size && size - off >= len &&
           !memcmp(data + off, name, len);
}

/*
 * An image with an external data file is given our own one: the name in a
 * fuzzed header could point anywhere, and the I/O target writes.
 */
static QGuardOpts *data_file_opts(const char *path)
{
    g_autofree char *data = g_build_filename(work_dir, "data.raw", NULL);
    uint8_t hdr[80];
    QGuardOpts *opts;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    bool has;

    has = fd >= 0 && pread(fd, hdr, sizeof(hdr), 0) == sizeof(hdr) &&
          hdr[7] >= 3 && (hdr[79] & 0x04);
    if (fd >= 0) {
        close(fd);
    }
    if (!has) {
        return NULL;
    }
    fd = open(data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fuzz_fail("cannot create %s", data);
    }
    close(fd);
    opts = qguard_opts_new();
    qguard_opts_set(opts, "data-file.filename", data);
    return opts;
}

static bool try_open(QGuardImage **img, const char *path, const char *fmt,
                     unsigned flags)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = data_file_opts(path);
    int ret = qguard_image_open(img, path, fmt, opts, flags, &err);

    if (opts) {
        qguard_opts_free(opts);
    }
    if (ret < 0) {
        if (!err || !err->message || !*err->message) {
            fuzz_fail("open failed (%d) without an error message", ret);
        }
        *img = NULL;
        return false;
    }
    if (err) {
        fuzz_fail("open succeeded but set an error: %s", err->message);
    }
    return true;
}

static int run_check(QGuardImage *img, unsigned fix, QGuardCheckResult *res)
{
    g_autoptr(GError) err = NULL;
    int ret = qguard_image_check(img, fix, res, NULL, NULL, &err);

    if (ret < 0 && !err) {
        fuzz_fail("check failed (%d) without an error", ret);
    }
    if (res->corruptions < 0 || res->leaks < 0 || res->check_errors < 0) {
        fuzz_fail("check returned negative counts");
    }
    return ret;
}

static void check_and_info(QGuardImage *img)
{
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    QGuardImageInfo *info = NULL;

    run_check(img, 0, &res);
    if (qguard_image_get_info(img, &info, NULL) == 0) {
        qguard_image_info_free(info);
    }
}

int qguard_fuzz_image_check(const uint8_t *data, size_t size)
{
    QGuardImage *img;
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    int ret;

    qguard_fuzz_init();
    write_file(img_path, data, size);

    /* qemu-img info / check: read-only, no backing chain. */
    if (try_open(&img, img_path, "qcow2",
                 QGUARD_OPEN_NO_BACKING | QGUARD_OPEN_CHECK)) {
        check_and_info(img);
        qguard_image_close(img, NULL);
    }
    /* Format probing must not trip over anything either. */
    if (try_open(&img, img_path, NULL, QGUARD_OPEN_NO_BACKING)) {
        qguard_image_close(img, NULL);
    }
    if (try_open(&img, img_path, "qcow2", QGUARD_OPEN_RDWR |
                 QGUARD_OPEN_CHECK | QGUARD_OPEN_NO_BACKING)) {
        check_and_info(img);
        qguard_image_close(img, NULL);
    }

    /* qemu-img check -r all on a pristine copy. */
    write_file(copy_path, data, size);
    if (!try_open(&img, copy_path, "qcow2", QGUARD_OPEN_RDWR |
                  QGUARD_OPEN_CHECK | QGUARD_OPEN_NO_BACKING)) {
        return 0;
    }
    ret = run_check(img, QGUARD_CHECK_FIX_LEAKS | QGUARD_CHECK_FIX_ERRORS,
                    &res);
    qguard_image_close(img, NULL);
    if (ret < 0 || res.corruptions || res.check_errors) {
        return 0;
    }
    /* The repair said it fixed everything: a fresh look must agree. */
    if (!try_open(&img, copy_path, "qcow2",
                  QGUARD_OPEN_NO_BACKING | QGUARD_OPEN_CHECK)) {
        fuzz_fail("repaired image no longer opens");
    }
    ret = run_check(img, 0, &res);
    qguard_image_close(img, NULL);
    if (ret < 0 || res.corruptions) {
        fuzz_fail("repair reported success but %d corruptions remain "
                  "(ret %d)", res.corruptions, ret);
    }
    return 0;
}

/* ---- (b) I/O on an arbitrary image -------------------------------------- */

static void fill(uint8_t *buf, size_t len, unsigned tag)
{
    size_t i;

    for (i = 0; i < len; i++) {
        buf[i] = (uint8_t)(i * 7 + tag * 13 + 1);
    }
}

/* A successful write must read back, unless the read itself fails. */
/*
 * Read-back is only a promise for consistent images: in a corrupted one two
 * guest clusters may share a host cluster, and the later write wins (QEMU
 * behaves the same).  Set per input from a check before the writes.
 */
static bool image_consistent;

static void write_and_verify(QGuardImage *img, uint64_t off, uint64_t len,
                             unsigned tag, unsigned flags)
{
    g_autofree uint8_t *buf = g_malloc(len);
    g_autofree uint8_t *rb = g_malloc(len);

    fill(buf, len, tag);
    if (qguard_image_pwrite(img, off, len, buf, flags, NULL) < 0) {
        return;
    }
    if (image_consistent && qguard_image_pread(img, off, len, rb, NULL) == 0 &&
        memcmp(buf, rb, len)) {
        fuzz_fail("write of %" PRIu64 " bytes at %" PRIu64 " (tag %u) does "
                  "not read back", len, off, tag);
    }
}

static void zero_and_verify(QGuardImage *img, uint64_t off, uint64_t len,
                            unsigned flags)
{
    g_autofree uint8_t *rb = g_malloc(len);
    uint64_t i;

    if (qguard_image_pwrite_zeroes(img, off, len, flags, NULL) < 0) {
        return;
    }
    if (image_consistent && qguard_image_pread(img, off, len, rb, NULL) == 0) {
        for (i = 0; i < len; i++) {
            if (rb[i]) {
                fuzz_fail("zero write of %" PRIu64 " bytes at %" PRIu64
                          " reads non-zero at +%" PRIu64, len, off, i);
            }
        }
    }
}

static void read_some(QGuardImage *img, uint64_t off, uint64_t len)
{
    g_autofree uint8_t *rb = g_malloc(len);

    qguard_image_pread(img, off, len, rb, NULL);
}

/* Clamp [off, off + len) into the image; len 0 means nothing to do. */
static uint64_t clamp_len(uint64_t size, uint64_t off, uint64_t len)
{
    if (off >= size) {
        return 0;
    }
    return MIN(len, size - off);
}

int qguard_fuzz_image_io(const uint8_t *data, size_t size)
{
    QGuardImage *img;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
    QGuardCheckResult res = QGUARD_SIZED(QGuardCheckResult);
    uint64_t vsize, off, len;
    unsigned flags = QGUARD_OPEN_RDWR;

    qguard_fuzz_init();
    write_file(img_path, data, size);
    if (!names_our_backing(data, size)) {
        flags |= QGUARD_OPEN_NO_BACKING;
    }
    image_consistent = false;
    if (try_open(&img, img_path, "qcow2",
                 QGUARD_OPEN_NO_BACKING | QGUARD_OPEN_CHECK)) {
        image_consistent = run_check(img, 0, &res) == 0 &&
                           res.corruptions == 0 && res.check_errors == 0;
        qguard_image_close(img, NULL);
    }
    if (!try_open(&img, img_path, "qcow2", flags)) {
        return 0;
    }
    vsize = qguard_image_size(img);
    if (vsize == 0) {
        qguard_image_close(img, NULL);
        return 0;
    }

    /* A fixed sequence: head, middle (unaligned), tail, overlapping ops. */
    read_some(img, 0, clamp_len(vsize, 0, 131072));
    off = (vsize / 3) & ~(uint64_t)511;
    if ((len = clamp_len(vsize, off, 65536))) {
        write_and_verify(img, off, len, 1, 0);
    }
    off = vsize / 2 + 1234;
    if ((len = clamp_len(vsize, off, 70000))) {
        write_and_verify(img, off, len, 2, 0);
    }
    off = (vsize / 3 + 4096) & ~(uint64_t)511;
    if ((len = clamp_len(vsize, off, 131072))) {
        zero_and_verify(img, off, len, QGUARD_ZERO_MAY_UNMAP);
    }
    if ((len = clamp_len(vsize, 0, 8192))) {
        write_and_verify(img, 0, len, 3, QGUARD_WRITE_FUA);
        qguard_image_discard(img, 0, len, NULL);
        zero_and_verify(img, 0, MIN(len, 700), 0);
    }
    off = vsize > 4096 ? vsize - 4096 : 0;
    if ((len = clamp_len(vsize, off, 4096))) {
        write_and_verify(img, off, len, 4, 0);
    }
    qguard_image_flush(img, NULL);
    off = vsize / 2 & ~(uint64_t)65535;
    if ((len = clamp_len(vsize, off, 262144))) {
        qguard_image_discard(img, off, len, NULL);
        if (len > 512) {
            write_and_verify(img, off + 512, MIN(len - 512, 1000), 5, 0);
        }
    }
    if (qguard_image_block_status(img, 0, vsize, &st, NULL) == 0 &&
        (st.bytes == 0 || st.bytes > vsize)) {
        fuzz_fail("block status returned %" PRIu64 " bytes", st.bytes);
    }
    read_some(img, vsize / 3 & ~(uint64_t)511, clamp_len(vsize,
              vsize / 3 & ~(uint64_t)511, 262144));
    qguard_image_flush(img, NULL);
    qguard_image_close(img, NULL);

    /* Whatever happened, a check of the result must not crash. */
    if (try_open(&img, img_path, "qcow2",
                 QGUARD_OPEN_NO_BACKING | QGUARD_OPEN_CHECK)) {
        run_check(img, 0, &res);
        qguard_image_close(img, NULL);
    }
    return 0;
}

/* ---- (c) overlap map against a per-cluster model ------------------------ */

/*
 * Two regions of the host address space are modelled cluster by cluster:
 * one at offset 0 and one ending at QCOW2_OVERLAP_MAX_BYTES, each spanning
 * a few windows so that window edges, the cache and far tree paths are all
 * reachable while the model stays small.
 */
#define OVL_REGION_CLUSTERS (2 * QCOW2_OVERLAP_WINDOW_CLUSTERS + 77)
#define OVL_MAX_OPS 4096

typedef struct OvlModel {
    unsigned cluster_bits;
    uint64_t region_base[2];        /* first cluster index of each region */
    uint16_t types[2][OVL_REGION_CLUSTERS];
} OvlModel;

typedef struct ByteReader {
    const uint8_t *p;
    size_t left;
} ByteReader;

static unsigned take(ByteReader *r, unsigned nbytes)
{
    unsigned v = 0;

    while (nbytes--) {
        v <<= 8;
        if (r->left) {
            v |= *r->p++;
            r->left--;
        }
    }
    return v;
}

static unsigned model_range_types(OvlModel *m, int region, uint64_t first,
                                   uint64_t last)
{
    unsigned acc = 0;
    uint64_t c;

    for (c = first; c <= last; c++) {
        acc |= m->types[region][c];
    }
    return acc;
}

/* Canonical fragment list of one window of the model (F1..F3). */
static unsigned model_window_fragments(OvlModel *m, int region,
                                       uint64_t first, Qcow2OverlapFragment *f)
{
    unsigned n = 0, c = 0;

    while (c < QCOW2_OVERLAP_WINDOW_CLUSTERS) {
        uint64_t idx = first + c;
        unsigned t = idx < OVL_REGION_CLUSTERS ?
                     m->types[region][idx] & 0xff : 0;
        unsigned len = 1;

        if (!t) {
            c++;
            continue;
        }
        while (c + len < QCOW2_OVERLAP_WINDOW_CLUSTERS && len < 256 &&
               first + c + len < OVL_REGION_CLUSTERS &&
               (m->types[region][first + c + len] & 0xff) == t) {
            len++;
        }
        f[n].start = c;
        f[n].len = len;
        f[n].types = t;
        n++;
        c += len;
    }
    return n;
}

static void compare_window(Qcow2MetadataMap *map, OvlModel *m, int region,
                           uint64_t window)
{
    static Qcow2OverlapFragment got[QCOW2_OVERLAP_WINDOW_CLUSTERS];
    static Qcow2OverlapFragment want[QCOW2_OVERLAP_WINDOW_CLUSTERS];
    uint64_t first_cluster = window * QCOW2_OVERLAP_WINDOW_CLUSTERS;
    uint64_t rel = first_cluster - m->region_base[region];
    unsigned n_got, n_want, i;
    Qcow2OverlapWindowForm form;

    n_got = qcow2_metadata_map_window_fragments(map, window, got,
                                                G_N_ELEMENTS(got));
    n_want = model_window_fragments(m, region, rel, want);
    if (n_got != n_want) {
        fuzz_fail("window %" PRIu64 ": %u fragments, model has %u", window,
                  n_got, n_want);
    }
    for (i = 0; i < n_got; i++) {
        if (got[i].start != want[i].start || got[i].len != want[i].len ||
            got[i].types != want[i].types) {
            fuzz_fail("window %" PRIu64 " fragment %u: %u+%u/%#x, model "
                      "%u+%u/%#x", window, i, got[i].start, got[i].len,
                      got[i].types, want[i].start, want[i].len,
                      want[i].types);
        }
    }
    form = qcow2_metadata_map_window_form(map, window);
    switch (form) {
    case QCOW2_OVERLAP_WINDOW_EMPTY:
        if (n_want) {
            fuzz_fail("window %" PRIu64 " empty but has %u fragments",
                      window, n_want);
        }
        break;
    case QCOW2_OVERLAP_WINDOW_INLINE:
        if (n_want != 1) {
            fuzz_fail("window %" PRIu64 " inline with %u fragments", window,
                      n_want);
        }
        break;
    case QCOW2_OVERLAP_WINDOW_PAIR:
        if (n_want != 2 || want[0].len != 1 || want[1].len != 1 ||
            (want[0].types & (want[0].types - 1)) ||
            (want[1].types & (want[1].types - 1))) {
            fuzz_fail("window %" PRIu64 " is a pair but its content is not",
                      window);
        }
        break;
    case QCOW2_OVERLAP_WINDOW_LIST:
    case QCOW2_OVERLAP_WINDOW_COMPACT:
        if (n_want < 2 || n_want > 1024) {
            fuzz_fail("window %" PRIu64 " list of %u fragments", window,
                      n_want);
        }
        break;
    default:
        if (!n_want) {
            fuzz_fail("empty window %" PRIu64 " holds a bytemap", window);
        }
        break;
    }
}

static void compare_all(Qcow2MetadataMap *map, OvlModel *m)
{
    int r;
    uint64_t c, w, first_w, last_w;

    qcow2_metadata_map_verify(map);
    for (r = 0; r < 2; r++) {
        for (c = 0; c < OVL_REGION_CLUSTERS; c++) {
            unsigned got = qcow2_metadata_map_get(map,
                                                  m->region_base[r] + c);
            if (got != m->types[r][c]) {
                fuzz_fail("cluster %" PRIu64 ": map %#x, model %#x",
                          m->region_base[r] + c, got, m->types[r][c]);
            }
        }
        first_w = m->region_base[r] / QCOW2_OVERLAP_WINDOW_CLUSTERS;
        last_w = (m->region_base[r] + OVL_REGION_CLUSTERS - 1) /
                 QCOW2_OVERLAP_WINDOW_CLUSTERS;
        for (w = first_w; w <= last_w; w++) {
            /* Only windows fully described by the model. */
            if (w * QCOW2_OVERLAP_WINDOW_CLUSTERS >= m->region_base[r]) {
                compare_window(map, m, r, w);
            }
        }
    }
}

int qguard_fuzz_overlap_map(const uint8_t *data, size_t size)
{
    ByteReader r = { data, size };
    OvlModel *m = g_new0(OvlModel, 1);
    Qcow2MetadataMap *map;
    Qcow2MetadataMapStats stats;
    unsigned cache_windows;
    int ops = 0, compares = 0;

    m->cluster_bits = 9 + take(&r, 1) % 13;
    cache_windows = take(&r, 1) % 6;
    m->region_base[0] = 0;
    /* High region: ends exactly at the largest offset the map handles. */
    m->region_base[1] = (QCOW2_OVERLAP_MAX_BYTES >> m->cluster_bits) -
                        OVL_REGION_CLUSTERS;
    if (take(&r, 1) & 1) {
        /* Or starts on a window boundary, a tree-path edge of its own. */
        m->region_base[1] = ((QCOW2_OVERLAP_MAX_BYTES >> m->cluster_bits) /
                             2) & ~(uint64_t)(QCOW2_OVERLAP_WINDOW_CLUSTERS -
                                              1);
    }
    map = qcow2_metadata_map_new(m->cluster_bits, cache_windows);

    while (r.left && ops++ < OVL_MAX_OPS) {
        unsigned op = take(&r, 1);
        int region = op >> 7;
        unsigned kind = op & 0x7f;
        uint64_t csize = UINT64_C(1) << m->cluster_bits;
        uint64_t first = take(&r, 2) % OVL_REGION_CLUSTERS;
        uint64_t nclusters = take(&r, 2);
        unsigned in_first = take(&r, 2) & (csize - 1);
        unsigned types = take(&r, 2) & QCOW2_OL_ALL;
        uint64_t offset, bytes, last, c;

        /* Mostly short ranges, sometimes several windows long. */
        nclusters = (nclusters & 0x8000) ? nclusters & 0x7fff
                                         : nclusters & 0x1f;
        nclusters = MIN(nclusters, OVL_REGION_CLUSTERS - first);
        offset = ((m->region_base[region] + first) << m->cluster_bits) +
                 in_first;
        /* A ragged range: it may start and end inside a cluster. */
        bytes = 0;
        if (nclusters) {
            uint64_t span = (nclusters << m->cluster_bits) - in_first;
            bytes = span - take(&r, 1) % MIN(span, 256);
        }
        last = bytes ? (offset + bytes - 1) >> m->cluster_bits : 0;
        last = bytes ? last - m->region_base[region] : 0;

        switch (kind % 8) {
        case 0:
        case 1:
            qcow2_metadata_map_enter(map, offset, bytes, types);
            for (c = first; bytes && c <= last; c++) {
                m->types[region][c] |= types;
            }
            break;
        case 2:
        case 3:
            qcow2_metadata_map_remove(map, offset, bytes, types);
            for (c = first; bytes && c <= last; c++) {
                m->types[region][c] &= ~types;
            }
            break;
        case 4:
        case 5: {
            unsigned got = qcow2_metadata_map_check(map, offset, bytes,
                                                    types);
            unsigned want = bytes ? model_range_types(m, region, first,
                                                      last) & ~types : 0;
            if (got != want) {
                fuzz_fail("check [%#" PRIx64 ", +%#" PRIx64 ") ignore %#x: "
                          "map %#x, model %#x", offset, bytes, types, got,
                          want);
            }
            break;
        }
        case 6:
            if (types & 1) {
                qcow2_metadata_map_flush(map);
            } else if (types & 2) {
                qcow2_metadata_map_reset_counters(map);
            } else {
                qcow2_metadata_map_get_stats(map, &stats);
                if (stats.mem_current > stats.mem_peak) {
                    fuzz_fail("mem_current %" PRIu64 " > mem_peak %" PRIu64,
                              stats.mem_current, stats.mem_peak);
                }
            }
            break;
        case 7:
            /* A full comparison is O(model): a few per input. */
            if (compares++ < 2) {
                compare_all(map, m);
            }
            break;
        }
    }
    compare_all(map, m);
    qcow2_metadata_map_flush(map);
    qcow2_metadata_map_verify(map);
    qcow2_metadata_map_free(map);
    g_free(m);
    return 0;
}
