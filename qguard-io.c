/* SPDX-License-Identifier: MIT */
/*
 * qguard-io: exercise the I/O path of libqguard the way qemu-io 7.2 does.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Scripts written for qemu-io must run unchanged, so the command syntax,
 * every report line, the split between stdout and stderr and the exit
 * status follow qemu-io 7.2.  Failures of a command go to stdout and
 * make the exit status 1 (like qemu-io); usage problems detected before a
 * command runs and open errors go to stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qguard.h"
#include "qobject.h"
#include "tool-info.h"

#ifndef QGUARD_VERSION
#define QGUARD_VERSION "0.1.0"
#endif

/* The largest request QEMU's block layer accepts: INT_MAX, sector-aligned. */
#define REQUEST_MAX_BYTES   ((uint64_t)(INT_MAX >> 9) << 9)
#define SECTOR_SIZE         512
#define MAX_INPUT_LINE      1024

#define KIB     (1ULL << 10)
#define MIB     (1ULL << 20)
#define GIB     (1ULL << 30)
#define TIB     (1ULL << 40)
#define PIB     (1ULL << 50)
#define EIB     (1ULL << 60)

/* ---- Command table ------------------------------------------------------- */

enum {
    /* Runs without an image (open, help, sleep, ...). */
    CMD_NOFILE_OK = 1 << 0,
    /* Needs a writable image; checked before the options are parsed. */
    CMD_WRITE     = 1 << 1,
};

typedef int CmdFunc(int argc, char **argv);

typedef struct Command {
    const char *name;
    const char *altname;
    CmdFunc *func;
    int argmin;
    int argmax;             /* -1: unlimited */
    unsigned flags;
    const char *args;       /* NULL: the command takes no arguments */
    const char *oneline;
    void (*help)(void);
} Command;

static const Command *find_command(const char *name);
static void usage_line(const Command *ct);

/* ---- Global state -------------------------------------------------------- */

static const char *progname = "qguard-io";
static QGuardImage *image;
static bool quit_requested;
static bool image_opts_mode;

/*
 * How the current image was opened; "reopen" closes and opens it again
 * with changed parameters.
 */
static struct {
    char *filename;         /* NULL with --image-opts style options */
    char *format;
    QGuardOpts *opts;
    bool read_only;
    bool snapshot;          /* a temporary overlay from -s */
} open_state;

/*
 * aio_read/aio_write run synchronously, but qemu-io prints their reports
 * only when its event loop runs (the next request that waits for I/O,
 * aio_flush, close or exit).  Keep the text until then so that the order
 * of the lines matches.
 */
typedef struct AioReport {
    char *text;
    bool immediate;
} AioReport;

static GPtrArray *aio_reports;

static void error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static void warn_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static void error_report(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/*
 * A library message with a hint ("...\nIs another process using ...")
 * carries its own final newline exactly where QEMU prints one; a one-line
 * message does not.
 */
static void error_report_lib(const char *prefix, const GError *err, int ret)
{
    const char *msg = err ? err->message : strerror(-ret);

    fprintf(stderr, "%s: %s%s%s%s", progname, prefix ? prefix : "",
            prefix ? ": " : "", msg, strchr(msg, '\n') ? "" : "\n");
}

static void warn_report(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: warning: ", progname);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/*
 * qemu-io's event loop completes the newest request first, and requests
 * that finished without I/O (failed checks, reads of clusters without
 * data; completed from a bottom half) before those that waited for I/O.
 * Several outstanding requests can complete in other orders in qemu-io.
 */
static void aio_deliver_reports(void)
{
    guint i;
    int pass;

    if (!aio_reports) {
        return;
    }
    for (pass = 0; pass < 2; pass++) {
        for (i = aio_reports->len; i-- > 0;) {
            AioReport *r = g_ptr_array_index(aio_reports, i);

            if (r->immediate == (pass == 0)) {
                fputs(r->text, stdout);
            }
        }
    }
    g_ptr_array_set_size(aio_reports, 0);
}

static void aio_report_free(gpointer p)
{
    AioReport *r = p;

    free(r->text);
    g_free(r);
}

/* ---- Numbers and their presentation -------------------------------------- */

static int strtou64_checked(const char *nptr, const char **endptr, int base,
                            uint64_t *result)
{
    char *ep;
    int err;

    errno = 0;
    *result = strtoull(nptr, &ep, base);
    err = errno;
    if (err == ERANGE) {
        *result = UINT64_MAX;
    }
    *endptr = ep;
    if (err == 0 && ep == nptr) {
        return -EINVAL;
    }
    return -err;
}

static int64_t suffix_multiplier(char c)
{
    switch (g_ascii_toupper(c)) {
    case 'B': return 1;
    case 'K': return KIB;
    case 'M': return MIB;
    case 'G': return GIB;
    case 'T': return TIB;
    case 'P': return PIB;
    case 'E': return EIB;
    }
    return -1;
}

/*
 * qemu-io's size syntax: decimal or 0x hex, an optional decimal fraction
 * (which needs a unit suffix) and an optional binary suffix.  The result
 * is exact, with halves rounded up, as in QEMU's qemu_strtosz().
 */
static int parse_size(const char *nptr, uint64_t *result)
{
    const char *endptr;
    uint64_t val, valf = 0;
    int64_t mul;
    bool hex = false;
    int ret;

    ret = strtou64_checked(nptr, &endptr, 10, &val);
    if (ret) {
        goto out;
    }
    if (memchr(nptr, '-', endptr - nptr)) {
        endptr = nptr;
        ret = -EINVAL;
        goto out;
    }
    if (val == 0 && (*endptr == 'x' || *endptr == 'X')) {
        ret = strtou64_checked(nptr, &endptr, 16, &val);
        if (ret) {
            goto out;
        }
        if (*endptr == '.') {
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        }
        hex = true;
    } else if (*endptr == '.') {
        const char *f = endptr;
        char *fend;
        double fraction;

        errno = 0;
        fraction = strtod(f, &fend);
        if (fend == f || !isfinite(fraction)) {
            /* "1." and "1.k" are fine: skip the lone dot. */
            endptr = f + 1;
        } else if (errno) {
            /* QEMU steps over one more character after a range error. */
            endptr = *fend ? fend + 1 : fend;
        } else if (memchr(f, 'e', fend - f) || memchr(f, 'E', fend - f)) {
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        } else {
            endptr = fend;
            valf = fraction >= 1.0 ? UINT64_MAX
                                   : (uint64_t)(fraction * 0x1p64);
        }
    }
    mul = suffix_multiplier(*endptr);
    if (mul > 0) {
        if (hex) {
            warn_report("Using a multiplier suffix on hex numbers "
                        "is deprecated: %s", nptr);
        }
        endptr++;
    } else {
        mul = 1;
    }
    if (mul == 1) {
        if (valf != 0) {
            /* A fraction of a byte means nothing. */
            endptr = nptr;
            ret = -EINVAL;
            goto out;
        }
    } else {
        unsigned __int128 whole = (unsigned __int128)val * (uint64_t)mul;
        unsigned __int128 part = (unsigned __int128)valf * (uint64_t)mul;

        whole += part >> 64;
        whole += (uint64_t)part >> 63;
        if (whole >> 64) {
            ret = -ERANGE;
            goto out;
        }
        val = (uint64_t)whole;
    }
    ret = 0;

out:
    if (*endptr) {
        ret = -EINVAL;
    }
    if (ret == 0) {
        *result = val;
    }
    return ret;
}

/* A byte count or offset; negative errno on failure. */
static int64_t cvtnum(const char *s)
{
    uint64_t value;
    int ret = parse_size(s, &value);

    if (ret < 0) {
        return ret;
    }
    if (value > INT64_MAX) {
        return -ERANGE;
    }
    return value;
}

static void print_cvtnum_err(int64_t rc, const char *arg)
{
    switch (rc) {
    case -EINVAL:
        printf("Parsing error: non-numeric argument,"
               " or extraneous/unrecognized suffix -- %s\n", arg);
        break;
    case -ERANGE:
        printf("Parsing error: argument too large -- %s\n", arg);
        break;
    default:
        printf("Parsing error: %s\n", arg);
    }
}

/*
 * "64 KiB", "1.500 KiB", "512 bytes", "276.251183 bytes": three decimals
 * in binary units, six below 1 KiB, and a ".000..." tail cut off.
 */
static void cvtstr(double value, char *str, size_t size)
{
    static const struct {
        double unit;
        const char *suffix;
    } units[] = {
        { (double)EIB, " EiB" }, { (double)PIB, " PiB" },
        { (double)TIB, " TiB" }, { (double)GIB, " GiB" },
        { (double)MIB, " MiB" }, { (double)KIB, " KiB" },
    };
    const char *suffix = " bytes";
    char *trim;
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(units); i++) {
        if (value >= units[i].unit) {
            suffix = units[i].suffix;
            snprintf(str, size - 4, "%.3f", value / units[i].unit);
            break;
        }
    }
    if (i == G_N_ELEMENTS(units)) {
        snprintf(str, size - 6, "%f", value);
    }
    trim = strstr(str, ".000");
    if (trim) {
        *trim = '\0';
    }
    g_strlcat(str, suffix, size);
}

static struct timespec now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static struct timespec tsub(struct timespec t1, struct timespec t2)
{
    t1.tv_nsec -= t2.tv_nsec;
    if (t1.tv_nsec < 0) {
        t1.tv_nsec += 1000000000L;
        t1.tv_sec--;
    }
    t1.tv_sec -= t2.tv_sec;
    return t1;
}

static double tdiv(double value, struct timespec t)
{
    return value / (t.tv_sec + t.tv_nsec / 1e9);
}

/* "00.01 sec" below a second, "H:MM:SS.ss" otherwise or when @fixed. */
static void timestr(const struct timespec *t, char *ts, size_t size,
                    bool fixed)
{
    double frac = t->tv_nsec / 1e9;
    unsigned long secs = t->tv_sec;

    if (fixed || secs) {
        snprintf(ts, size, "%u:%02u:%05.2f", (unsigned)(secs / 3600),
                 (unsigned)(secs % 3600 / 60), (secs % 60) + frac);
    } else {
        snprintf(ts, size, "%05.2f sec", frac);
    }
}

static void print_report(FILE *out, const char *op, const struct timespec *t,
                         int64_t offset, int64_t count, int64_t total,
                         int cnt, bool Cflag)
{
    char s1[64], s2[64], ts[64];

    timestr(t, ts, sizeof(ts), Cflag);
    if (!Cflag) {
        cvtstr((double)total, s1, sizeof(s1));
        cvtstr(tdiv((double)total, *t), s2, sizeof(s2));
        fprintf(out, "%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64
                "\n", op, total, count, offset);
        fprintf(out, "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
                s1, cnt, ts, s2, tdiv((double)cnt, *t));
    } else {
        /* bytes,ops,time,bytes/sec,ops/sec */
        fprintf(out, "%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts,
                tdiv((double)total, *t), tdiv((double)cnt, *t));
    }
}

static void dump_buffer(FILE *out, const uint8_t *buf, int64_t offset,
                        int64_t len)
{
    int64_t i;
    int j;

    for (i = 0; i < len; i += 16) {
        fprintf(out, "%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (j = 0; j < 16 && i + j < len; j++) {
            fprintf(out, "%02x ", buf[i + j]);
        }
        fputc(' ', out);
        for (j = 0; j < 16 && i + j < len; j++) {
            /* qemu-io runs in the C locale: only ASCII letters and digits. */
            fputc(g_ascii_isalnum(buf[i + j]) ? buf[i + j] : '.', out);
        }
        fputc('\n', out);
    }
}

/* A fill byte for -P; -1 after printing why @arg is not one. */
static int parse_pattern(const char *arg)
{
    char *end;
    long pattern;

    pattern = strtol(arg, &end, 0);
    if (pattern < 0 || pattern > UCHAR_MAX || *end != '\0') {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return pattern;
}

/* qemu-io reports that the range differs, not where. */
static bool pattern_matches(const uint8_t *buf, int pattern, int64_t len)
{
    int64_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            return false;
        }
    }
    return true;
}

static uint8_t *alloc_buffer(int64_t len, int pattern)
{
    /* One extra byte keeps zero-length requests from getting NULL. */
    uint8_t *buf = g_malloc(len + 1);

    memset(buf, pattern, len);
    return buf;
}

/*
 * The buffer for "write -s": the file's first @len bytes, repeated if the
 * file is shorter.
 */
static uint8_t *alloc_buffer_from_file(int64_t len, const char *path)
{
    uint8_t *buf = g_malloc(len + 1);
    FILE *f = fopen(path, "r");
    size_t got;
    int64_t pos;

    if (!f) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        g_free(buf);
        return NULL;
    }
    got = fread(buf, 1, len, f);
    if (ferror(f)) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        goto fail;
    }
    if (got == 0) {
        fprintf(stderr, "%s: file is empty\n", path);
        goto fail;
    }
    fclose(f);
    for (pos = got; pos < len; pos += got) {
        memcpy(buf + pos, buf, MIN((int64_t)got, len - pos));
    }
    return buf;

fail:
    fclose(f);
    g_free(buf);
    return NULL;
}

/*
 * The lengths of a readv/writev/aio request; their sum goes to @total.
 * Prints the problem and returns false if one is not acceptable.
 */
static bool parse_lengths(char **argv, int nr, int64_t *total)
{
    int64_t count = 0;
    int i;

    for (i = 0; i < nr; i++) {
        int64_t len = cvtnum(argv[i]);

        if (len < 0) {
            print_cvtnum_err(len, argv[i]);
            return false;
        }
        if ((uint64_t)len > REQUEST_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %" PRIu64 "\n",
                   argv[i], REQUEST_MAX_BYTES);
            return false;
        }
        if ((uint64_t)count > REQUEST_MAX_BYTES - len) {
            printf("The total number of bytes exceed the maximum size %"
                   PRIu64 "\n", REQUEST_MAX_BYTES);
            return false;
        }
        count += len;
    }
    *total = count;
    return true;
}

/* ---- Requests ------------------------------------------------------------ */

/*
 * A request that has to wait for its I/O lets qemu-io's event loop run,
 * which is when earlier aio requests report their completion; one that
 * fails its checks returns at once.  (qemu-io also returns at once from
 * reads of clusters without data; we do not tell those apart.)
 */
static int after_sync_request(int ret)
{
    if (ret >= 0) {
        aio_deliver_reports();
    }
    return ret;
}

static int do_pread(uint8_t *buf, int64_t offset, int64_t bytes)
{
    return after_sync_request(qguard_image_pread(image, offset, bytes, buf,
                                                 NULL));
}

static int do_pwrite(const uint8_t *buf, int64_t offset, int64_t bytes,
                     unsigned flags)
{
    return after_sync_request(qguard_image_pwrite(image, offset, bytes, buf,
                                                  flags, NULL));
}

static int do_pwrite_zeroes(int64_t offset, int64_t bytes, unsigned flags)
{
    return after_sync_request(qguard_image_pwrite_zeroes(image, offset, bytes,
                                                         flags, NULL));
}

/*
 * Compressed writes go one cluster at a time.  qcow2 refuses a request
 * that ends inside a cluster (except at the end of the disk) before it
 * writes anything; otherwise QEMU runs the clusters as parallel tasks, so
 * a cluster that fails does not keep the others from being written.
 */
static int do_pwrite_compressed(const uint8_t *buf, int64_t offset,
                                int64_t bytes)
{
    uint64_t cs = qguard_image_cluster_size(image);
    uint64_t size = qguard_image_size(image);
    int64_t done = 0;
    int ret = 0;

    if (!cs || offset % cs ||
        (bytes % cs && (uint64_t)(offset + bytes) != size)) {
        return after_sync_request(
            qguard_image_pwrite_compressed(image, offset, bytes, buf, NULL));
    }
    while (done < bytes) {
        int64_t chunk = MIN((uint64_t)(bytes - done), cs);
        int r = qguard_image_pwrite_compressed(image, offset + done, chunk,
                                               buf + done, NULL);
        if (r < 0 && ret == 0) {
            ret = r;
        }
        done += chunk;
    }
    return after_sync_request(ret);
}

/*
 * Is [offset, offset + bytes) allocated in the top image?  Stores the
 * length of the extent with the same answer in @pnum (0 at the end).
 */
static int is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    uint64_t size = qguard_image_size(image);
    QGuardBlockStatus st;
    int ret;

    if (bytes <= 0 || (uint64_t)offset >= size) {
        *pnum = 0;
        return 0;
    }
    bytes = MIN((uint64_t)bytes, size - offset);
    ret = qguard_image_block_status(image, offset, bytes, &st, NULL);
    if (ret < 0) {
        return ret;
    }
    *pnum = st.bytes;
    return (st.flags & QGUARD_BLOCK_ALLOCATED) && st.depth == 0;
}

/* Would reading the range touch any data (rather than only metadata)? */
static bool range_has_data(int64_t offset, int64_t bytes)
{
    uint64_t size = qguard_image_size(image);
    QGuardBlockStatus st;

    if ((uint64_t)offset >= size) {
        return false;
    }
    bytes = MIN((uint64_t)bytes, size - offset);
    while (bytes > 0) {
        if (qguard_image_block_status(image, offset, bytes, &st, NULL) < 0 ||
            (st.flags & QGUARD_BLOCK_DATA)) {
            return true;
        }
        offset += st.bytes;
        bytes -= st.bytes;
    }
    return false;
}

/* ---- read / readv / aio_read --------------------------------------------- */

static void read_help(void)
{
    printf(
"\n"
" reads LEN bytes at offset OFF of the image\n"
"\n"
" Example:\n"
" 'read -v 512 1k' - hex-dumps the kilobyte that starts 512 bytes in\n"
"\n"
" The data can be checked against a fill byte (-P) or shown in hex (-v).\n"
" -b, -- read the VM state area instead of the guest disk\n"
" -C, -- print the statistics as one comma-separated line\n"
" -l, -- how many bytes -P checks (default: to the end of the data)\n"
" -p, -- accepted and ignored, as by qemu-io\n"
" -P, -- check that every byte read equals the given pattern\n"
" -q, -- quiet: print no statistics\n"
" -s, -- where in the data -P starts checking (default: 0)\n"
" -v, -- hex-dump the data to standard output\n"
"\n");
}

static const Command read_cmd;

static int read_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, vflag = false;
    bool Pflag = false, sflag = false, lflag = false, bflag = false;
    int64_t offset, count, pattern_offset = 0, pattern_count = 0;
    int pattern = 0;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'C':
            Cflag = true;
            break;
        case 'l':
            lflag = true;
            pattern_count = cvtnum(optarg);
            if (pattern_count < 0) {
                print_cvtnum_err(pattern_count, optarg);
                return pattern_count;
            }
            break;
        case 'p':
            break;
        case 'P':
            Pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            pattern_offset = cvtnum(optarg);
            if (pattern_offset < 0) {
                print_cvtnum_err(pattern_offset, optarg);
                return pattern_offset;
            }
            break;
        case 'v':
            vflag = true;
            break;
        default:
            usage_line(&read_cmd);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_line(&read_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    count = cvtnum(argv[optind]);
    if (count < 0) {
        print_cvtnum_err(count, argv[optind]);
        return count;
    } else if ((uint64_t)count > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }
    if (!Pflag && (lflag || sflag)) {
        usage_line(&read_cmd);
        return -EINVAL;
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    if (pattern_count < 0 || pattern_count + pattern_offset > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag) {
        if (offset % SECTOR_SIZE) {
            printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
                   offset);
            return -EINVAL;
        }
        if (count % SECTOR_SIZE) {
            printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
                   count);
            return -EINVAL;
        }
    }

    buf = alloc_buffer(count, 0xab);
    t1 = now();
    if (bflag) {
        /* libqguard has no access to the VM state area. */
        ret = -ENOTSUP;
    } else {
        ret = do_pread(buf, offset, count);
    }
    t2 = now();
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (Pflag && !pattern_matches(buf + pattern_offset, pattern,
                                  pattern_count)) {
        printf("Pattern verification failed at offset %" PRId64 ", %"
               PRId64 " bytes\n", offset + pattern_offset, pattern_count);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        dump_buffer(stdout, buf, offset, count);
    }
    t2 = tsub(t2, t1);
    print_report(stdout, "read", &t2, offset, count, count, 1, Cflag);
out:
    g_free(buf);
    return ret;
}

static const Command read_cmd = {
    .name = "read", .altname = "r", .func = read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-abCqv] [-P pattern [-s off] [-l len]] off len",
    .oneline = "reads a number of bytes at a specified offset",
    .help = read_help,
};

static void readv_help(void)
{
    printf(
"\n"
" reads from offset OFF into one buffer per LEN argument\n"
"\n"
" Example:\n"
" 'readv -v 512 1k 1k ' - hex-dumps two kilobytes from offset 512\n"
"\n"
" The buffers are filled in order from consecutive parts of the image.\n"
" -C, -- print the statistics as one comma-separated line\n"
" -P, -- check that every byte read equals the given pattern\n"
" -v, -- hex-dump the data to standard output\n"
" -q, -- quiet: print no statistics\n"
"\n");
}

static const Command readv_cmd;

static int readv_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, vflag = false, Pflag = false;
    int64_t offset, count;
    int pattern = 0;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "CP:qv")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'P':
            Pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 'v':
            vflag = true;
            break;
        default:
            usage_line(&readv_cmd);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        usage_line(&readv_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, 0xab);
    t1 = now();
    ret = do_pread(buf, offset, count);
    t2 = now();
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (Pflag && !pattern_matches(buf, pattern, count)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64
               " bytes\n", offset, count);
        ret = -EINVAL;
    }
    if (qflag) {
        goto out;
    }
    if (vflag) {
        dump_buffer(stdout, buf, offset, count);
    }
    t2 = tsub(t2, t1);
    print_report(stdout, "read", &t2, offset, count, count, 1, Cflag);
out:
    g_free(buf);
    return ret;
}

static const Command readv_cmd = {
    .name = "readv", .func = readv_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help = readv_help,
};

/* Formats a completion report into the text aio_flush will print. */
static FILE *aio_report_open(char **text, size_t *len)
{
    FILE *f = open_memstream(text, len);

    if (!f) {
        g_error("open_memstream: %s", strerror(errno));
    }
    return f;
}

/* @text is only valid once @f is closed, hence the indirection. */
static void aio_report_close(FILE *f, char **text, bool immediate)
{
    AioReport *r = g_new0(AioReport, 1);

    fclose(f);
    r->text = *text;
    r->immediate = immediate;
    if (!aio_reports) {
        aio_reports = g_ptr_array_new_with_free_func(aio_report_free);
    }
    g_ptr_array_add(aio_reports, r);
}

static void aio_read_help(void)
{
    printf(
"\n"
" reads from offset OFF into one buffer per LEN argument, asynchronously\n"
"\n"
" Example:\n"
" 'aio_read -v 512 1k 1k ' - hex-dumps two kilobytes from offset 512\n"
"\n"
" The report appears when the request completes; 'aio_flush' waits for\n"
" all outstanding requests.  (qguard-io performs the request at once and\n"
" holds the report back until qemu-io would print it.)\n"
" Because the command only submits the request, I/O errors and pattern\n"
" mismatches do not make it fail.\n"
" -C, -- print the statistics as one comma-separated line\n"
" -P, -- check that every byte read equals the given pattern\n"
" -i, -- only account an invalid request (nothing is read)\n"
" -v, -- hex-dump the data to standard output\n"
" -q, -- quiet: print no statistics\n"
"\n");
}

static const Command aio_read_cmd;

static int aio_read_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, vflag = false, Pflag = false;
    bool immediate;
    int64_t offset, count;
    int pattern = 0;
    uint8_t *buf;
    char *text;
    size_t len;
    FILE *out;
    int c, ret;

    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'P':
            Pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid read request\n");
            return 0;
        case 'q':
            qflag = true;
            break;
        case 'v':
            vflag = true;
            break;
        default:
            usage_line(&aio_read_cmd);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        usage_line(&aio_read_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    immediate = !range_has_data(offset, count);
    buf = alloc_buffer(count, 0xab);
    t1 = now();
    ret = qguard_image_pread(image, offset, count, buf, NULL);
    t2 = now();

    out = aio_report_open(&text, &len);
    if (ret < 0) {
        fprintf(out, "readv failed: %s\n", strerror(-ret));
        goto done;
    }
    if (Pflag && !pattern_matches(buf, pattern, count)) {
        fprintf(out, "Pattern verification failed at offset %" PRId64
                ", %" PRId64 " bytes\n", offset, count);
    }
    if (qflag) {
        goto done;
    }
    if (vflag) {
        dump_buffer(out, buf, offset, count);
    }
    t2 = tsub(t2, t1);
    print_report(out, "read", &t2, offset, count, count, 1, Cflag);
done:
    aio_report_close(out, &text, immediate || ret < 0);
    g_free(buf);
    return 0;
}

static const Command aio_read_cmd = {
    .name = "aio_read", .func = aio_read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Ciqv] [-P pattern] off len [len..]",
    .oneline = "asynchronously reads a number of bytes",
    .help = aio_read_help,
};

/* ---- write / writev / aio_write ------------------------------------------ */

static void write_help(void)
{
    printf(
"\n"
" writes LEN bytes at offset OFF of the image\n"
"\n"
" Example:\n"
" 'write 512 1k' - writes one kilobyte starting 512 bytes in\n"
"\n"
" Unless told otherwise, every byte written is 0xcd.\n"
" -b, -- write the VM state area instead of the guest disk\n"
" -c, -- write the data compressed\n"
" -f, -- Force Unit Access: the data is on stable storage on return\n"
" -n, -- with -z, fail rather than fall back to writing zero buffers\n"
" -p, -- accepted and ignored, as by qemu-io\n"
" -P, -- fill the data with the given pattern byte\n"
" -s, -- take the data from the given file (repeated if it is short)\n"
" -C, -- print the statistics as one comma-separated line\n"
" -q, -- quiet: print no statistics\n"
" -u, -- with -z, the range may be deallocated\n"
" -z, -- write zeroes efficiently instead of a data buffer\n"
"\n");
}

static const Command write_cmd;

static int write_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, bflag = false;
    bool Pflag = false, zflag = false, cflag = false, sflag = false;
    bool fua = false, unmap = false, no_fallback = false;
    const char *source = NULL;
    int64_t offset, count;
    uint8_t *buf = NULL;
    int pattern = 0xcd;
    int c, ret;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'c':
            cflag = true;
            break;
        case 'C':
            Cflag = true;
            break;
        case 'f':
            fua = true;
            break;
        case 'n':
            no_fallback = true;
            break;
        case 'p':
            break;
        case 'P':
            Pflag = true;
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'q':
            qflag = true;
            break;
        case 's':
            sflag = true;
            source = optarg;
            break;
        case 'u':
            unmap = true;
            break;
        case 'z':
            zflag = true;
            break;
        default:
            usage_line(&write_cmd);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_line(&write_cmd);
        return -EINVAL;
    }
    if (bflag && zflag) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (fua && (bflag || cflag)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (unmap && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (no_fallback && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((int)zflag + (int)Pflag + (int)sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same "
               "time\n");
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    count = cvtnum(argv[optind]);
    if (count < 0) {
        print_cvtnum_err(count, argv[optind]);
        return count;
    } else if ((uint64_t)count > REQUEST_MAX_BYTES && !no_fallback) {
        printf("length cannot exceed %" PRIu64 " without -n, given %s\n",
               REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }
    if (bflag || cflag) {
        if (offset % SECTOR_SIZE) {
            printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
                   offset);
            return -EINVAL;
        }
        if (count % SECTOR_SIZE) {
            printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
                   count);
            return -EINVAL;
        }
    }
    if (!zflag) {
        buf = sflag ? alloc_buffer_from_file(count, source)
                    : alloc_buffer(count, pattern);
        if (!buf) {
            return -EINVAL;
        }
    }

    t1 = now();
    if (bflag) {
        /* libqguard has no access to the VM state area. */
        ret = -ENOTSUP;
    } else if (zflag) {
        ret = do_pwrite_zeroes(offset, count,
                               (fua ? QGUARD_WRITE_FUA : 0) |
                               (unmap ? QGUARD_ZERO_MAY_UNMAP : 0) |
                               (no_fallback ? QGUARD_ZERO_FAST : 0));
    } else if (cflag) {
        ret = do_pwrite_compressed(buf, offset, count);
    } else {
        ret = do_pwrite(buf, offset, count, fua ? QGUARD_WRITE_FUA : 0);
    }
    t2 = now();
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    t2 = tsub(t2, t1);
    print_report(stdout, "wrote", &t2, offset, count, count, 1, Cflag);
out:
    g_free(buf);
    return ret;
}

static const Command write_cmd = {
    .name = "write", .altname = "w", .func = write_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-bcCfnquz] [-P pattern | -s source_file] off len",
    .oneline = "writes a number of bytes at a specified offset",
    .help = write_help,
};

static void writev_help(void)
{
    printf(
"\n"
" writes at offset OFF from one buffer per LEN argument\n"
"\n"
" Example:\n"
" 'writev 512 1k 1k' - writes two kilobytes starting 512 bytes in\n"
"\n"
" Unless told otherwise, every byte written is 0xcd.\n"
" -P, -- fill the data with the given pattern byte\n"
" -C, -- print the statistics as one comma-separated line\n"
" -f, -- Force Unit Access: the data is on stable storage on return\n"
" -q, -- quiet: print no statistics\n"
"\n");
}

static const Command writev_cmd;

static int writev_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false, fua = false;
    int64_t offset, count;
    int pattern = 0xcd;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "CfqP:")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'f':
            fua = true;
            break;
        case 'q':
            qflag = true;
            break;
        case 'P':
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        default:
            usage_line(&writev_cmd);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        usage_line(&writev_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, pattern);
    t1 = now();
    ret = do_pwrite(buf, offset, count, fua ? QGUARD_WRITE_FUA : 0);
    t2 = now();
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    t2 = tsub(t2, t1);
    print_report(stdout, "wrote", &t2, offset, count, count, 1, Cflag);
out:
    g_free(buf);
    return ret;
}

static const Command writev_cmd = {
    .name = "writev", .func = writev_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-Cfq] [-P pattern] off len [len..]",
    .oneline = "writes a number of bytes at a specified offset",
    .help = writev_help,
};

static void aio_write_help(void)
{
    printf(
"\n"
" writes at offset OFF from one buffer per LEN argument, asynchronously\n"
"\n"
" Example:\n"
" 'aio_write 512 1k 1k' - writes two kilobytes starting 512 bytes in\n"
"\n"
" Unless told otherwise, every byte written is 0xcd.  The report appears\n"
" when the request completes; 'aio_flush' waits for all outstanding\n"
" requests.  (qguard-io performs the request at once and holds the report\n"
" back until qemu-io would print it.)\n"
" Because the command only submits the request, I/O errors do not make\n"
" it fail.\n"
" -P, -- fill the data with the given pattern byte\n"
" -C, -- print the statistics as one comma-separated line\n"
" -f, -- Force Unit Access: the data is on stable storage on return\n"
" -i, -- only account an invalid request (nothing is written)\n"
" -q, -- quiet: print no statistics\n"
" -u, -- with -z, the range may be deallocated\n"
" -z, -- write zeroes efficiently instead of a data buffer\n"
"\n");
}

static const Command aio_write_cmd;

static int aio_write_f(int argc, char **argv)
{
    struct timespec t1 = { 0, 0 }, t2;
    bool Cflag = false, qflag = false, zflag = false;
    bool fua = false, unmap = false;
    int64_t offset, count;
    int pattern = 0xcd;
    uint8_t *buf = NULL;
    char *text;
    size_t len;
    FILE *out;
    int c, ret;

    while ((c = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'f':
            fua = true;
            break;
        case 'q':
            qflag = true;
            break;
        case 'u':
            unmap = true;
            break;
        case 'P':
            /* qemu-io never rejects -P with -z here: neither do we. */
            pattern = parse_pattern(optarg);
            if (pattern < 0) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid write request\n");
            return 0;
        case 'z':
            zflag = true;
            break;
        default:
            usage_line(&aio_write_cmd);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        usage_line(&aio_write_cmd);
        return -EINVAL;
    }
    if (zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if (unmap && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;

    if (zflag) {
        count = cvtnum(argv[optind]);
        if (count < 0) {
            print_cvtnum_err(count, argv[optind]);
            return count;
        }
        /*
         * qemu-io 7.2 never starts the clock for zero writes, so the
         * elapsed time it reports is the monotonic clock itself; t1
         * stays zero to print the same.
         */
        ret = qguard_image_pwrite_zeroes(image, offset, count,
                                         (fua ? QGUARD_WRITE_FUA : 0) |
                                         (unmap ? QGUARD_ZERO_MAY_UNMAP : 0),
                                         NULL);
    } else {
        if (!parse_lengths(&argv[optind], argc - optind, &count)) {
            return -EINVAL;
        }
        buf = alloc_buffer(count, pattern);
        t1 = now();
        ret = qguard_image_pwrite(image, offset, count, buf,
                                  fua ? QGUARD_WRITE_FUA : 0, NULL);
    }
    t2 = now();

    out = aio_report_open(&text, &len);
    if (ret < 0) {
        fprintf(out, "aio_write failed: %s\n", strerror(-ret));
    } else if (!qflag) {
        t2 = tsub(t2, t1);
        print_report(out, "wrote", &t2, offset, count, count, 1, Cflag);
    }
    aio_report_close(out, &text, ret < 0);
    g_free(buf);
    return 0;
}

static const Command aio_write_cmd = {
    .name = "aio_write", .func = aio_write_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-Cfiquz] [-P pattern] off len [len..]",
    .oneline = "asynchronously writes a number of bytes",
    .help = aio_write_help,
};

static int aio_flush_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    aio_deliver_reports();
    return 0;
}

static const Command aio_flush_cmd = {
    .name = "aio_flush", .func = aio_flush_f,
    .oneline = "completes all outstanding aio requests",
};

/* ---- discard / flush / truncate / length / info -------------------------- */

static void discard_help(void)
{
    printf(
"\n"
" discards LEN bytes at offset OFF of the image\n"
"\n"
" Example:\n"
" 'discard 512 1k' - discards one kilobyte starting 512 bytes in\n"
"\n"
" The guest no longer needs the range; the image may free its clusters.\n"
" -C, -- print the statistics as one comma-separated line\n"
" -q, -- quiet: print no statistics\n"
"\n");
}

static const Command discard_cmd;

static int discard_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false;
    int64_t offset, bytes;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'q':
            qflag = true;
            break;
        default:
            usage_line(&discard_cmd);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_line(&discard_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }
    optind++;
    bytes = cvtnum(argv[optind]);
    if (bytes < 0) {
        print_cvtnum_err(bytes, argv[optind]);
        return bytes;
    } else if ((uint64_t)bytes > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 ", given %s\n",
               REQUEST_MAX_BYTES, argv[optind]);
        return -EINVAL;
    }

    t1 = now();
    ret = after_sync_request(qguard_image_discard(image, offset, bytes,
                                                  NULL));
    t2 = now();
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        t2 = tsub(t2, t1);
        print_report(stdout, "discard", &t2, offset, bytes, bytes, 1, Cflag);
    }
    return 0;
}

static const Command discard_cmd = {
    .name = "discard", .altname = "d", .func = discard_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-Cq] off len",
    .oneline = "discards a number of bytes at a specified offset",
    .help = discard_help,
};

static int flush_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    /* qemu-io says nothing about a failed flush; only the status shows it. */
    return after_sync_request(qguard_image_flush(image, NULL));
}

static const Command flush_cmd = {
    .name = "flush", .altname = "f", .func = flush_f,
    .oneline = "flush all in-core file state to disk",
};

static const Command truncate_cmd;

static int truncate_f(int argc, char **argv)
{
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };
    g_autoptr(GError) err = NULL;
    const char *prealloc = "off";
    int64_t offset;
    int c, ret;
    size_t i;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            for (i = 0; i < G_N_ELEMENTS(modes); i++) {
                if (!strcmp(optarg, modes[i])) {
                    break;
                }
            }
            if (i == G_N_ELEMENTS(modes)) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            prealloc = modes[i];
            break;
        default:
            usage_line(&truncate_cmd);
            return -EINVAL;
        }
    }
    if (optind >= argc) {
        /* qemu-io 7.2 crashes here; print the syntax instead. */
        usage_line(&truncate_cmd);
        return -EINVAL;
    }
    offset = cvtnum(argv[optind]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[optind]);
        return offset;
    }

    ret = qguard_image_truncate(image, offset, true, prealloc, &err);
    if (ret < 0) {
        error_report_lib(NULL, err, ret);
        return ret;
    }
    return 0;
}

static const Command truncate_cmd = {
    .name = "truncate", .altname = "t", .func = truncate_f,
    .argmin = 1, .argmax = 3, .flags = CMD_WRITE,
    .args = "[-m prealloc_mode] off",
    .oneline = "truncates the current file at the given offset",
};

static int length_f(int argc, char **argv)
{
    char s1[64];

    (void)argc;
    (void)argv;
    cvtstr(qguard_image_size(image), s1, sizeof(s1));
    printf("%s\n", s1);
    return 0;
}

static const Command length_cmd = {
    .name = "length", .altname = "l", .func = length_f,
    .oneline = "gets the length of the current file",
};

/*
 * Where qcow2 keeps the VM state: just past the guest range that the
 * L1 table must be able to map.
 */
static uint64_t vm_state_offset(const QGuardImageInfo *info)
{
    uint64_t entry_size = info->extended_l2 ? 16 : 8;
    uint64_t per_l1_entry;

    if (!info->is_qcow2 || !info->cluster_size) {
        return 0;
    }
    per_l1_entry = (uint64_t)info->cluster_size *
                   (info->cluster_size / entry_size);
    return (info->virtual_size + per_l1_entry - 1) / per_l1_entry *
           per_l1_entry;
}

static int info_f(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    QGuardImageInfo *info;
    char s1[64], s2[64];
    int ret;

    (void)argc;
    (void)argv;
    /*
     * qemu-io prints nothing at all once a corruption has detached the
     * driver; the info query is what fails then.
     */
    ret = qguard_image_get_info(image, &info, &err);
    if (ret == -ENOMEDIUM) {
        return ret;
    }
    printf("format name: %s\n", qguard_image_format(image));
    if (ret < 0) {
        return ret;
    }
    cvtstr(info->cluster_size, s1, sizeof(s1));
    cvtstr(vm_state_offset(info), s2, sizeof(s2));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);
    if (info->is_qcow2) {
        QObj *spec = qcow2_format_specific_qobj(info);
        GString *text = g_string_new(NULL);

        qobj_dump_human(text, 1, spec);
        printf("Format specific information:\n%s", text->str);
        g_string_free(text, TRUE);
        qobj_free(spec);
    }
    qguard_image_info_free(info);
    return 0;
}

static const Command info_cmd = {
    .name = "info", .altname = "i", .func = info_f,
    .oneline = "prints information about the current file",
};

/* ---- alloc / map --------------------------------------------------------- */

static int alloc_f(int argc, char **argv)
{
    int64_t offset, start, remaining, count, num, sum_alloc = 0;
    char s1[64];
    int ret;

    start = offset = cvtnum(argv[1]);
    if (offset < 0) {
        print_cvtnum_err(offset, argv[1]);
        return offset;
    }
    if (argc == 3) {
        count = cvtnum(argv[2]);
        if (count < 0) {
            print_cvtnum_err(count, argv[2]);
            return count;
        }
    } else {
        count = SECTOR_SIZE;
    }

    remaining = count;
    while (remaining) {
        ret = is_allocated(offset, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum_alloc += num;
        }
        if (num == 0) {
            /* Past the end: report only the part inside the image. */
            count -= remaining;
            remaining = 0;
        }
    }
    cvtstr(start, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n",
           sum_alloc, count, s1);
    return 0;
}

static const Command alloc_cmd = {
    .name = "alloc", .altname = "a", .func = alloc_f,
    .argmin = 1, .argmax = 2,
    .args = "offset [count]",
    .oneline = "checks if offset is allocated in the file",
};

/* The longest run starting at @offset whose allocation state is the same. */
static int map_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t num;
    int ret, firstret;

    ret = is_allocated(offset, MIN((uint64_t)bytes, REQUEST_MAX_BYTES), &num);
    if (ret < 0) {
        return ret;
    }
    firstret = ret;
    *pnum = num;
    while (bytes > 0 && ret == firstret) {
        offset += num;
        bytes -= num;
        ret = is_allocated(offset, MIN((uint64_t)bytes, REQUEST_MAX_BYTES),
                           &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

static int map_f(int argc, char **argv)
{
    int64_t offset = 0, bytes, num;
    char s1[64], s2[64];
    int ret;

    (void)argc;
    (void)argv;
    bytes = qguard_image_size(image);
    while (bytes) {
        ret = map_is_allocated(offset, bytes, &num);
        if (ret < 0) {
            error_report("Failed to get allocation status: %s",
                         strerror(-ret));
            return ret;
        } else if (!num) {
            error_report("Unexpected end of image");
            return -EIO;
        }
        cvtstr(num, s1, sizeof(s1));
        cvtstr(offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               s1, (uint64_t)num, ret ? "    allocated" : "not allocated",
               s2, (uint64_t)offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

static const Command map_cmd = {
    .name = "map", .func = map_f,
    .args = "",
    .oneline = "prints the allocated areas of a file",
};

/* ---- open / close / reopen ----------------------------------------------- */

static bool parse_cache_mode(const char *mode, bool *nocache)
{
    if (!strcmp(mode, "none") || !strcmp(mode, "off") ||
        !strcmp(mode, "directsync")) {
        *nocache = true;
    } else if (!strcmp(mode, "writeback") || !strcmp(mode, "unsafe") ||
               !strcmp(mode, "writethrough")) {
        *nocache = false;
    } else {
        return false;
    }
    return true;
}

static bool valid_discard_mode(const char *mode)
{
    return !strcmp(mode, "off") || !strcmp(mode, "ignore") ||
           !strcmp(mode, "on") || !strcmp(mode, "unmap");
}

static bool parse_aio_mode(const char *mode, bool *native)
{
    *native = !strcmp(mode, "native");
    return *native || !strcmp(mode, "threads") || !strcmp(mode, "io_uring");
}

/*
 * Parse "-o" style options into @opts.  QemuOpts warns about bare keys
 * ("key" meaning "key=on"), which scripts see on stderr; so do we.
 */
static bool parse_open_options(QGuardOpts *opts, const char *str)
{
    g_autoptr(GError) err = NULL;
    const char *p = str;

    while (*p) {
        g_autoptr(GString) elem = g_string_new(NULL);

        for (; *p && !(*p == ',' && p[1] != ','); p++) {
            if (*p == ',') {
                p++;
            }
            g_string_append_c(elem, *p);
        }
        if (*p == ',') {
            p++;
        }
        if (elem->len && !strchr(elem->str, '=')) {
            warn_report("short-form boolean option '%s' deprecated\n"
                        "Please use %s=on instead", elem->str, elem->str);
        }
    }
    if (!qguard_opts_parse(opts, str, NULL, &err)) {
        error_report_lib(NULL, err, -EINVAL);
        return false;
    }
    return true;
}

typedef struct OpenParams {
    bool read_only;
    bool snapshot;
    bool nocache;
    bool native_aio;
    bool force_share;
    bool copy_on_read;
} OpenParams;

static void forget_open_state(void)
{
    g_free(open_state.filename);
    g_free(open_state.format);
    qguard_opts_free(open_state.opts);
    memset(&open_state, 0, sizeof(open_state));
}

static void close_image(void)
{
    aio_deliver_reports();
    if (image) {
        /* qemu-io does not report a failing flush at close either. */
        qguard_image_close(image, NULL);
        image = NULL;
    }
    forget_open_state();
}

/*
 * -s: writes go to a temporary qcow2 overlay that disappears at close,
 * the way QEMU's snapshot=on works.
 */
static int open_snapshot_overlay(QGuardImage **pimg, const char *name,
                                 const char *format, const QGuardOpts *opts,
                                 GError **errp)
{
    g_autofree char *tmpl = NULL;
    g_autofree char *base_path = NULL;
    g_autofree char *size = NULL;
    QGuardOpts *create_opts = NULL, *overlay_opts = NULL;
    QGuardImage *base = NULL;
    const char *tmpdir = g_getenv("TMPDIR");
    guint i;
    int fd, ret;

    ret = qguard_image_open(&base, name, format, opts, 0, errp);
    if (ret < 0) {
        return ret;
    }
    base_path = realpath(qguard_image_filename(base), NULL);
    if (!base_path) {
        base_path = g_strdup(qguard_image_filename(base));
    }
    tmpl = g_build_filename(tmpdir && *tmpdir ? tmpdir : "/var/tmp",
                            "qguard-io-snapshot.XXXXXX", NULL);
    fd = g_mkstemp(tmpl);
    if (fd < 0) {
        ret = -errno;
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not get temporary filename: %s", strerror(-ret));
        qguard_image_close(base, NULL);
        return ret;
    }
    close(fd);

    create_opts = qguard_opts_new();
    size = g_strdup_printf("%" PRIu64, qguard_image_size(base));
    qguard_opts_set(create_opts, "size", size);
    qguard_opts_set(create_opts, "backing_file", base_path);
    qguard_opts_set(create_opts, "backing_fmt", qguard_image_format(base));
    qguard_image_close(base, NULL);
    ret = qguard_image_create(tmpl, "qcow2", create_opts, NULL, NULL, errp);
    qguard_opts_free(create_opts);
    if (ret < 0) {
        unlink(tmpl);
        return ret;
    }

    /* The runtime options were meant for the image, now the backing file. */
    overlay_opts = qguard_opts_new();
    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        g_autofree char *bkey = NULL;

        if (!strcmp(key, "driver") || g_str_has_prefix(key, "file")) {
            continue;
        }
        bkey = g_strdup_printf("backing.%s", key);
        qguard_opts_set(overlay_opts, bkey, qguard_opts_value(opts, i));
    }
    ret = qguard_image_open(pimg, tmpl, "qcow2", overlay_opts,
                            QGUARD_OPEN_RDWR, errp);
    qguard_opts_free(overlay_opts);
    unlink(tmpl);
    return ret;
}

/*
 * Open the image for the session; @opts is consumed.  Returns 0 or a
 * negative errno after printing the error.
 */
static int open_image(const char *name, const char *format, QGuardOpts *opts,
                      const OpenParams *p)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *prefix = NULL;
    const char *fs;
    int ret;

    if (image) {
        error_report("file open already, try 'help close'");
        qguard_opts_free(opts);
        return -EBUSY;
    }
    if (!opts) {
        opts = qguard_opts_new();
    }
    prefix = name ? g_strdup_printf("can't open device %s", name)
                  : g_strdup("can't open");

    fs = qguard_opts_get(opts, "force-share");
    if (p->force_share) {
        if (fs && strcmp(fs, "on")) {
            error_report("-U conflicts with image options");
            qguard_opts_free(opts);
            return -EINVAL;
        }
        qguard_opts_set(opts, "force-share", "on");
    }
    if (p->native_aio && !p->nocache) {
        error_report("%s: aio=native was specified, but it requires "
                     "cache.direct=on, which was not specified.", prefix);
        qguard_opts_free(opts);
        return -EINVAL;
    }
    if (p->copy_on_read) {
        error_report("%s: copy-on-read is not supported by libqguard",
                     prefix);
        qguard_opts_free(opts);
        return -ENOTSUP;
    }

    if (p->snapshot && !p->read_only) {
        ret = open_snapshot_overlay(&image, name, format, opts, &err);
    } else {
        ret = qguard_image_open(&image, name, format, opts,
                                p->read_only ? 0 : QGUARD_OPEN_RDWR, &err);
    }
    if (ret < 0) {
        error_report_lib(prefix, err, ret);
        image = NULL;
        qguard_opts_free(opts);
        return ret;
    }

    forget_open_state();
    open_state.filename = g_strdup(name);
    open_state.format = g_strdup(format);
    open_state.opts = opts;
    open_state.read_only = p->read_only;
    open_state.snapshot = p->snapshot && !p->read_only;
    return 0;
}

static void open_help(void)
{
    printf(
"\n"
" opens an image for the commands that follow\n"
"\n"
" Example:\n"
" 'open -n -o driver=raw /tmp/data' - opens a raw image read-write, uncached\n"
"\n"
" Only one image can be open at a time; 'close' it first.\n"
" -r, -- open the image read-only\n"
" -s, -- send writes to a temporary overlay that is dropped at close\n"
" -C, -- copy-on-read (not supported by libqguard)\n"
" -n, -- bypass the host page cache, like -t none\n"
" -U, -- force shared permissions (needs -r)\n"
" -k, -- native Linux AIO (needs -n); accepted for compatibility\n"
" -i, -- AIO mode: threads, native or io_uring; accepted for compatibility\n"
" -t, -- cache mode: none, off, writeback, unsafe, directsync, writethrough\n"
" -d, -- discard mode: ignore, off, unmap or on\n"
" -o, -- runtime options for the image, e.g. overlap-check=all or\n"
"        overlap-check.algorithm=linear\n"
"\n");
}

static const Command open_cmd;

static int open_f(int argc, char **argv)
{
    OpenParams p = { 0 };
    QGuardOpts *opts = qguard_opts_new();
    bool native;
    int c;

    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        switch (c) {
        case 's':
            p.snapshot = true;
            break;
        case 'n':
            p.nocache = true;
            break;
        case 'C':
            p.copy_on_read = true;
            break;
        case 'r':
            p.read_only = true;
            break;
        case 'k':
            p.native_aio = true;
            break;
        case 't':
            if (!parse_cache_mode(optarg, &p.nocache)) {
                error_report("Invalid cache option: %s", optarg);
                goto fail;
            }
            break;
        case 'd':
            if (!valid_discard_mode(optarg)) {
                error_report("Invalid discard option: %s", optarg);
                goto fail;
            }
            break;
        case 'i':
            if (!parse_aio_mode(optarg, &native)) {
                error_report("Invalid aio option: %s", optarg);
                goto fail;
            }
            p.native_aio = native;
            break;
        case 'o':
            if (image_opts_mode) {
                printf("--image-opts and 'open -o' are mutually exclusive\n");
                goto fail;
            }
            if (!parse_open_options(opts, optarg)) {
                goto fail;
            }
            break;
        case 'U':
            p.force_share = true;
            break;
        default:
            usage_line(&open_cmd);
            goto fail;
        }
    }
    if (image_opts_mode && optind == argc - 1) {
        if (!parse_open_options(opts, argv[optind])) {
            goto fail;
        }
        optind++;
    }
    if (optind == argc - 1) {
        return open_image(argv[optind], NULL, opts, &p) < 0 ? -EINVAL : 0;
    } else if (optind == argc) {
        return open_image(NULL, NULL, opts, &p) < 0 ? -EINVAL : 0;
    }
    usage_line(&open_cmd);
fail:
    qguard_opts_free(opts);
    return -EINVAL;
}

static const Command open_cmd = {
    .name = "open", .altname = "o", .func = open_f,
    .argmin = 1, .argmax = -1, .flags = CMD_NOFILE_OK,
    .args = "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    .oneline = "open the file specified by path",
    .help = open_help,
};

static int close_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    close_image();
    return 0;
}

static const Command close_cmd = {
    .name = "close", .altname = "c", .func = close_f,
    .oneline = "close the current open file",
};

static void reopen_help(void)
{
    printf(
"\n"
" opens the current image again with changed options\n"
"\n"
" Example:\n"
" 'reopen -o overlap-check=all' - turns on every overlap check\n"
"\n"
" The image is flushed and closed, then opened with the old options plus\n"
" the new ones; if that fails, it is opened as it was.\n"
" -r, -- make the image read-only\n"
" -w, -- make the image writable\n"
" -c, -- cache mode, as for 'open -t' (accepted for compatibility)\n"
" -o, -- runtime options to change (as for 'open -o')\n"
"\n");
}

static const Command reopen_cmd;

/* Options that name the image rather than tune it cannot change. */
static bool is_fixed_option(const char *key)
{
    return !strcmp(key, "driver") || !strcmp(key, "file") ||
           g_str_has_prefix(key, "file.") || !strcmp(key, "backing") ||
           !strcmp(key, "read-only") || !strcmp(key, "force-share");
}

static int reopen_f(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *changes = qguard_opts_new();
    QGuardOpts *merged = NULL;
    char *filename = NULL, *format = NULL;
    bool read_only = open_state.read_only, has_rw = false, nocache;
    unsigned flags;
    guint i;
    int c, ret = -EINVAL;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (!parse_cache_mode(optarg, &nocache)) {
                error_report("Invalid cache option: %s", optarg);
                goto out;
            }
            break;
        case 'o':
            if (!parse_open_options(changes, optarg)) {
                goto out;
            }
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                error_report("Only one -r/-w option may be given");
                goto out;
            }
            read_only = c == 'r';
            has_rw = true;
            break;
        default:
            usage_line(&reopen_cmd);
            goto out;
        }
    }
    if (optind != argc) {
        usage_line(&reopen_cmd);
        goto out;
    }
    for (i = 0; i < qguard_opts_count(changes); i++) {
        const char *key = qguard_opts_key(changes, i);
        const char *old = qguard_opts_get(open_state.opts, key);

        if (is_fixed_option(key) &&
            (!old || strcmp(old, qguard_opts_value(changes, i)))) {
            error_report("Cannot change the option '%s'", key);
            goto out;
        }
    }
    if (open_state.snapshot) {
        error_report("Cannot reopen an image opened with -s");
        goto out;
    }

    merged = qguard_opts_copy(open_state.opts);
    for (i = 0; i < qguard_opts_count(changes); i++) {
        qguard_opts_set(merged, qguard_opts_key(changes, i),
                        qguard_opts_value(changes, i));
    }
    filename = g_strdup(open_state.filename);
    format = g_strdup(open_state.format);
    flags = read_only ? 0 : QGUARD_OPEN_RDWR;

    aio_deliver_reports();
    qguard_image_close(image, NULL);
    image = NULL;
    ret = qguard_image_open(&image, filename, format, merged, flags, &err);
    if (ret < 0) {
        g_autoptr(GError) err2 = NULL;

        error_report_lib(NULL, err, ret);
        image = NULL;
        if (qguard_image_open(&image, filename, format, open_state.opts,
                              open_state.read_only ? 0 : QGUARD_OPEN_RDWR,
                              &err2) < 0) {
            g_autofree char *prefix = filename ?
                g_strdup_printf("can't open device %s", filename) :
                g_strdup("can't open");

            error_report_lib(prefix, err2, -EIO);
            image = NULL;
            forget_open_state();
        }
        qguard_opts_free(merged);
        goto out;
    }
    qguard_opts_free(open_state.opts);
    open_state.opts = merged;
    open_state.read_only = read_only;
    ret = 0;
out:
    g_free(filename);
    g_free(format);
    qguard_opts_free(changes);
    return ret;
}

static const Command reopen_cmd = {
    .name = "reopen", .func = reopen_f,
    .argmin = 0, .argmax = -1,
    .args = "[(-r|-w)] [-c cache] [-o options]",
    .oneline = "reopens an image with new options",
    .help = reopen_help,
};

/* ---- Debugging hooks qemu-io gets from blkdebug -------------------------- */

/* libqguard has no blkdebug: these fail as qemu-io's do without it. */
static int break_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

static const Command break_cmd = {
    .name = "break", .func = break_f,
    .argmin = 2, .argmax = 2,
    .args = "event tag",
    .oneline = "sets a breakpoint on event and tags the stopped request as tag",
};

static int remove_break_f(int argc, char **argv)
{
    (void)argc;
    printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
    return -ENOTSUP;
}

static const Command remove_break_cmd = {
    .name = "remove_break", .func = remove_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "remove a breakpoint by tag",
};

static int resume_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("Could not resume request: %s\n", strerror(ENOTSUP));
    return -ENOTSUP;
}

static const Command resume_cmd = {
    .name = "resume", .func = resume_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "resumes the request tagged as tag",
};

static int wait_break_f(int argc, char **argv)
{
    (void)argc;
    /* qemu-io would wait forever for a breakpoint that cannot exist. */
    printf("Could not wait for breakpoint %s: %s\n", argv[1],
           strerror(ENOTSUP));
    return -ENOTSUP;
}

static const Command wait_break_cmd = {
    .name = "wait_break", .func = wait_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "waits for the suspension of a request",
};

/* ---- abort / sigraise / sleep / quit / help ------------------------------ */

static int abort_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("abort: qguard-io does not crash on request; "
           "'sigraise 6' raises SIGABRT\n");
    return -ENOTSUP;
}

static const Command abort_cmd = {
    .name = "abort", .func = abort_f,
    .flags = CMD_NOFILE_OK,
    .oneline = "simulate a program crash using abort(3)",
};

static void sigraise_help(void)
{
    printf(
"\n"
" raises the given signal in qguard-io itself\n"
"\n"
" Example:\n"
" 'sigraise %d' - raises SIGTERM\n"
"\n"
" Nothing is flushed or closed first, so 'sigraise 9' leaves the image as\n"
" a crashed program would.\n"
"\n", SIGTERM);
}

static int sigraise_f(int argc, char **argv)
{
    int64_t sig = cvtnum(argv[1]);

    (void)argc;
    if (sig < 0) {
        print_cvtnum_err(sig, argv[1]);
        return sig;
    } else if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n",
               argv[1]);
        return -EINVAL;
    }
    /* The process may die: what was printed so far must not be lost. */
    fflush(stdout);
    fflush(stderr);
    raise(sig);
    return 0;
}

static const Command sigraise_cmd = {
    .name = "sigraise", .func = sigraise_f,
    .argmin = 1, .argmax = 1, .flags = CMD_NOFILE_OK,
    .args = "signal",
    .oneline = "raises a signal",
    .help = sigraise_help,
};

static int sleep_f(int argc, char **argv)
{
    char *end;
    long ms;

    (void)argc;
    ms = strtol(argv[1], &end, 0);
    if (ms < 0 || *end != '\0') {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    g_usleep((gulong)ms * 1000);
    return 0;
}

static const Command sleep_cmd = {
    .name = "sleep", .func = sleep_f,
    .argmin = 1, .argmax = 1, .flags = CMD_NOFILE_OK,
    .oneline = "waits for the given value in milliseconds",
};

static int quit_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    quit_requested = true;
    return 0;
}

static const Command quit_cmd = {
    .name = "quit", .altname = "q", .func = quit_f,
    .argmin = -1, .argmax = -1, .flags = CMD_NOFILE_OK,
    .oneline = "exit the program",
};

/* ---- qguard's own commands ----------------------------------------------- */

static void overlap_stats_help(void)
{
    printf(
"\n"
" shows the counters of the qcow2 metadata overlap protection\n"
"\n"
" algorithm, enabled checks and the number of checks and refused writes;\n"
" for the windowed map also its conversions between list and bytemap\n"
" windows, inserts, removes, queries, memory use and cache size.\n"
" 'overlap-stats-reset' sets the counters back to zero.\n"
"\n");
}

static int overlap_stats_f(int argc, char **argv)
{
    QGuardOverlapStats st;
    GString *checks = g_string_new(NULL);
    int ret, i;

    (void)argc;
    (void)argv;
    memset(&st, 0, sizeof(st));
    ret = qguard_image_overlap_stats(image, &st);
    if (ret < 0) {
        printf("overlap-stats failed: %s\n", strerror(-ret));
        g_string_free(checks, TRUE);
        return ret;
    }
    for (i = 0; i < qguard_overlap_type_count(); i++) {
        if (st.checks_mask & (1u << i)) {
            g_string_append_printf(checks, "%s%s", checks->len ? ", " : "",
                                   qguard_overlap_type_name(i));
        }
    }
    printf("algorithm: %s\n", st.algorithm);
    printf("enabled checks: %s\n", checks->len ? checks->str : "none");
    printf("checks performed: %" PRIu64 "\n", st.checks);
    printf("refused writes: %" PRIu64 "\n", st.refused);
    printf("list->bytemap: %" PRIu64 "\n", st.list_to_bytemap);
    printf("bytemap->list: %" PRIu64 "\n", st.bytemap_to_list);
    printf("bytemaps freed: %" PRIu64 "\n", st.bytemaps_freed);
    printf("inserts: %" PRIu64 "\n", st.inserts);
    printf("removes: %" PRIu64 "\n", st.removes);
    printf("queries: %" PRIu64 "\n", st.queries);
    printf("windows: %" PRIu64 "\n", st.windows);
    printf("map memory current: %" PRIu64 " bytes\n", st.mem_current);
    printf("map memory peak: %" PRIu64 " bytes\n", st.mem_peak);
    printf("cache size: %u\n", st.cache_size);
    g_string_free(checks, TRUE);
    return 0;
}

static const Command overlap_stats_cmd = {
    .name = "overlap-stats", .func = overlap_stats_f,
    .oneline = "prints the counters of the metadata overlap protection",
    .help = overlap_stats_help,
};

static int overlap_stats_reset_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    qguard_image_overlap_stats_reset(image);
    return 0;
}

static const Command overlap_stats_reset_cmd = {
    .name = "overlap-stats-reset", .func = overlap_stats_reset_f,
    .oneline = "resets the counters of the metadata overlap protection",
};

static void snapshot_help(void)
{
    printf(
"\n"
" manages the internal snapshots of a qcow2 image\n"
"\n"
" Example:\n"
" 'snapshot_create before' then 'snapshot_apply before' - undoes the\n"
" writes made in between\n"
"\n"
" snapshot_create NAME  records the current disk state as NAME\n"
" snapshot_apply NAME   reverts the disk to the snapshot with that ID or name\n"
" snapshot_delete NAME  removes the snapshot with that ID or name\n"
" snapshot_list         lists the snapshots as 'qemu-img snapshot -l' does\n"
"\n");
}

static int snapshot_op(const char *what, const char *name,
                       int (*fn)(QGuardImage *, const char *, GError **))
{
    g_autoptr(GError) err = NULL;
    int ret;

    aio_deliver_reports();
    ret = fn(image, name, &err);
    if (ret < 0) {
        g_autofree char *prefix = g_strdup_printf("Could not %s snapshot '%s'",
                                                  what, name);

        error_report_lib(prefix, err, ret);
    }
    return ret;
}

static int snapshot_create_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("create", argv[1], qguard_snapshot_create);
}

static int snapshot_apply_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("apply", argv[1], qguard_snapshot_apply);
}

static int snapshot_delete_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("delete", argv[1], qguard_snapshot_delete);
}

static int snapshot_list_f(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    QGuardSnapshotInfo *list = NULL;
    guint count = 0, i;
    int ret;

    (void)argc;
    (void)argv;
    ret = qguard_snapshot_list(image, &list, &count, &err);
    if (ret < 0) {
        error_report_lib("Could not list snapshots", err, ret);
        return ret;
    }
    if (count) {
        printf("Snapshot list:\n");
        printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
               "VM CLOCK", "ICOUNT");
    }
    for (i = 0; i < count; i++) {
        QGuardSnapshotInfo *sn = &list[i];
        g_autofree char *vmsize = qguard_size_to_str(sn->vm_state_size);
        char date[32] = "", clock[32], icount[32] = "";
        time_t t = sn->date_sec;
        uint64_t secs = sn->vm_clock_nsec / 1000000000;
        struct tm tm;

        if (localtime_r(&t, &tm)) {
            strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        }
        snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d",
                 (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
                 (int)(sn->vm_clock_nsec / 1000000 % 1000));
        if (sn->icount != UINT64_MAX) {
            snprintf(icount, sizeof(icount), "%" PRIu64, sn->icount);
        }
        printf("%-9s %-16s %8s%20s%13s%11s\n", sn->id, sn->name, vmsize,
               date, clock, icount);
        qguard_snapshot_info_clear(sn);
    }
    g_free(list);
    return 0;
}

static const Command snapshot_apply_cmd = {
    .name = "snapshot_apply", .func = snapshot_apply_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "reverts the image to an internal snapshot",
    .help = snapshot_help,
};

static const Command snapshot_create_cmd = {
    .name = "snapshot_create", .func = snapshot_create_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "creates an internal snapshot of the image",
    .help = snapshot_help,
};

static const Command snapshot_delete_cmd = {
    .name = "snapshot_delete", .func = snapshot_delete_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "deletes an internal snapshot",
    .help = snapshot_help,
};

static const Command snapshot_list_cmd = {
    .name = "snapshot_list", .func = snapshot_list_f,
    .oneline = "lists the internal snapshots of the image",
    .help = snapshot_help,
};

static int help_f(int argc, char **argv);

static const Command help_cmd = {
    .name = "help", .altname = "?", .func = help_f,
    .argmin = 0, .argmax = 1, .flags = CMD_NOFILE_OK,
    .args = "[command]",
    .oneline = "help for one or all commands",
};

/* Sorted by name: "help" lists them in this order. */
static const Command *const commands[] = {
    &abort_cmd, &aio_flush_cmd, &aio_read_cmd, &aio_write_cmd, &alloc_cmd,
    &break_cmd, &close_cmd, &discard_cmd, &flush_cmd, &help_cmd, &info_cmd,
    &length_cmd, &map_cmd, &open_cmd, &overlap_stats_cmd,
    &overlap_stats_reset_cmd, &quit_cmd, &read_cmd, &readv_cmd,
    &remove_break_cmd, &reopen_cmd, &resume_cmd, &sigraise_cmd, &sleep_cmd,
    &snapshot_apply_cmd, &snapshot_create_cmd, &snapshot_delete_cmd,
    &snapshot_list_cmd, &truncate_cmd, &wait_break_cmd, &write_cmd,
    &writev_cmd,
};

static void help_oneline(const char *name, const Command *ct)
{
    printf("%s ", name);
    if (ct->args) {
        printf("%s ", ct->args);
    }
    printf("-- %s\n", ct->oneline);
}

static void usage_line(const Command *ct)
{
    printf("%s %s -- %s\n", ct->name, ct->args, ct->oneline);
}

static int help_f(int argc, char **argv)
{
    const Command *ct;
    size_t i;

    if (argc == 1) {
        for (i = 0; i < G_N_ELEMENTS(commands); i++) {
            help_oneline(commands[i]->name, commands[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    ct = find_command(argv[1]);
    if (!ct) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], ct);
    if (ct->help) {
        ct->help();
    }
    return 0;
}

/* ---- Command dispatch ---------------------------------------------------- */

static const Command *find_command(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(commands); i++) {
        const Command *ct = commands[i];

        if (!strcmp(ct->name, name) ||
            (ct->altname && !strcmp(ct->altname, name))) {
            return ct;
        }
    }
    return NULL;
}

static int run_command(const Command *ct, int argc, char **argv)
{
    int nargs = argc - 1;

    if (!(ct->flags & CMD_NOFILE_OK) && !image) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (nargs < ct->argmin || (ct->argmax != -1 && nargs > ct->argmax)) {
        if (ct->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least "
                    "%d arguments\n", nargs, argv[0], ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d "
                    "arguments\n", nargs, argv[0], ct->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between "
                    "%d and %d arguments\n", nargs, argv[0], ct->argmin,
                    ct->argmax);
        }
        return -EINVAL;
    }
    if ((ct->flags & CMD_WRITE) && qguard_image_is_read_only(image)) {
        error_report("Block node is read-only");
        return -EPERM;
    }
    /* 0 makes glibc's getopt start over, as for a fresh argv. */
    optind = 0;
    return ct->func(argc, argv);
}

/* Splits at single spaces, as qemu-io does (tabs stay in the words). */
static int execute_line(const char *line)
{
    g_autofree char *input = g_strdup(line);
    g_autoptr(GPtrArray) words = g_ptr_array_new();
    const Command *ct;
    char *p = input, *word;

    while ((word = strsep(&p, " ")) != NULL) {
        if (*word) {
            g_ptr_array_add(words, word);
        }
    }
    if (words->len == 0) {
        return 0;
    }
    g_ptr_array_add(words, NULL);
    ct = find_command(g_ptr_array_index(words, 0));
    if (!ct) {
        fprintf(stderr, "command \"%s\" not found\n",
                (char *)g_ptr_array_index(words, 0));
        return -EINVAL;
    }
    return run_command(ct, words->len - 1, (char **)words->pdata);
}

/* ---- Main ---------------------------------------------------------------- */

static void usage(void)
{
    printf(
"Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
"Exercise the I/O path of libqguard on a qcow2 or raw image (qemu-io 7.2\n"
"compatible).\n"
"\n"
"  --object OBJECTDEF   not supported: libqguard has no secret objects\n"
"  --image-opts         the file argument is an option string\n"
"                       (driver=qcow2,file.filename=...)\n"
"  -c, --cmd STRING     run the command STRING; may be repeated, and\n"
"                       without it commands are read from standard input\n"
"  -f, --format FMT     the image format (qcow2 or raw; default: probe)\n"
"  -r, --read-only      open the image read-only\n"
"  -s, --snapshot       write to a temporary overlay dropped at exit\n"
"  -n, --nocache        bypass the host page cache, like -t none\n"
"  -C, --copy-on-read   copy-on-read (not supported by libqguard)\n"
"  -m, --misalign       accepted for compatibility\n"
"  -k, --native-aio     accepted for compatibility (needs -n)\n"
"  -i, --aio=MODE       threads, native or io_uring; accepted for\n"
"                       compatibility\n"
"  -t, --cache=MODE     none, off, writeback, unsafe, directsync or\n"
"                       writethrough\n"
"  -d, --discard=MODE   ignore, off, unmap or on\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                       accepted; libqguard has no trace events to enable\n"
"  -U, --force-share    force shared permissions (needs -r)\n"
"  -h, --help           print this help and exit\n"
"  -V, --version        print the version and exit\n"
"\n"
"See '%s -c help' for the commands.\n",
    progname, progname);
}

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS = 257,
};

/*
 * libqguard has no trace events, so every event a -T pattern names does
 * not exist; say so as qemu-io does for unknown ones ("-name" disables,
 * wildcards match nothing, silently).  @where locates a line of an events
 * file.
 */
static void trace_check_pattern(const char *pattern, const char *where)
{
    if (*pattern == '-') {
        pattern++;
    }
    if (!*pattern || strchr(pattern, '*')) {
        return;
    }
    if (where) {
        fprintf(stderr, "%s:%s: warning: trace event '%s' does not exist\n",
                progname, where, pattern);
    } else {
        warn_report("trace event '%s' does not exist", pattern);
    }
}

static void trace_option(const char *arg)
{
    g_auto(GStrv) elems = g_strsplit(arg, ",", -1);
    g_autoptr(GPtrArray) keys = g_ptr_array_new();
    g_autoptr(GPtrArray) values = g_ptr_array_new();
    guint i;

    /* The whole option string is checked before any of it takes effect. */
    for (i = 0; elems[i]; i++) {
        char *eq = strchr(elems[i], '=');
        const char *key = elems[i], *value = "on";

        if (!eq && i == 0) {
            key = "enable";
            value = elems[i];
        } else if (!eq) {
            warn_report("short-form boolean option '%s' deprecated\n"
                        "Please use %s=on instead", elems[i], elems[i]);
        } else {
            *eq = '\0';
            value = eq + 1;
        }
        if (strcmp(key, "enable") && strcmp(key, "events") &&
            strcmp(key, "file")) {
            error_report("Invalid parameter '%s'", key);
            exit(1);
        }
        g_ptr_array_add(keys, (char *)key);
        g_ptr_array_add(values, (char *)value);
    }
    for (i = 0; i < keys->len; i++) {
        const char *key = g_ptr_array_index(keys, i);
        const char *value = g_ptr_array_index(values, i);

        if (!strcmp(key, "enable")) {
            trace_check_pattern(value, NULL);
        } else if (!strcmp(key, "events")) {
            FILE *f = fopen(value, "r");
            char line[1024];
            int lineno = 0;

            if (!f) {
                fprintf(stderr, "%s:%s: %s\n", progname, value,
                        strerror(errno));
                exit(1);
            }
            while (fgets(line, sizeof(line), f)) {
                g_autofree char *where = NULL;

                lineno++;
                g_strstrip(line);
                if (line[0] == '#') {
                    continue;
                }
                where = g_strdup_printf("%s:%d", value, lineno);
                trace_check_pattern(line, where);
            }
            fclose(f);
        }
    }
}

static char *prompt(void)
{
    static char text[64];

    if (!text[0]) {
        snprintf(text, sizeof(text), "%s> ", progname);
    }
    return text;
}

static char *fetch_line(void)
{
    char *line = g_malloc(MAX_INPUT_LINE);
    size_t len;

    if (!fgets(line, MAX_INPUT_LINE, stdin)) {
        g_free(line);
        return NULL;
    }
    len = strlen(line);
    if (len && line[len - 1] == '\n') {
        line[len - 1] = '\0';
    }
    return line;
}

static int command_loop(char **cmdline, int ncmdline)
{
    int i, ret, last_error = 0;

    for (i = 0; !quit_requested && i < ncmdline; i++) {
        ret = execute_line(cmdline[i]);
        if (ret < 0) {
            last_error = ret;
        }
    }
    if (ncmdline) {
        return last_error;
    }
    while (!quit_requested) {
        char *line;

        printf("%s", prompt());
        fflush(stdout);
        line = fetch_line();
        if (!line) {
            if (isatty(STDIN_FILENO)) {
                /* End the prompt line when the user types Ctrl-D. */
                printf("\n");
            }
            break;
        }
        ret = execute_line(line);
        g_free(line);
        if (ret < 0) {
            last_error = ret;
        }
    }
    return last_error;
}

int main(int argc, char **argv)
{
    static const struct option lopt[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "copy-on-read", no_argument, NULL, 'C' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "trace", required_argument, NULL, 'T' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    g_autofree char *base = g_path_get_basename(argv[0]);
    g_autofree char **cmdline = g_new0(char *, argc + 1);
    const char *format = NULL;
    OpenParams p = { 0 };
    bool native;
    int ncmdline = 0;
    int c, ret;

    progname = base;
    g_set_prgname(progname);
    /* getopt names the program after argv[0] in its messages. */
    argv[0] = base;
    signal(SIGPIPE, SIG_IGN);

    while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", lopt,
                            NULL)) != -1) {
        switch (c) {
        case 's':
            p.snapshot = true;
            break;
        case 'n':
            p.nocache = true;
            break;
        case 'C':
            p.copy_on_read = true;
            break;
        case 'd':
            if (!valid_discard_mode(optarg)) {
                error_report("Invalid discard option: %s", optarg);
                exit(1);
            }
            break;
        case 'f':
            format = optarg;
            break;
        case 'c':
            cmdline[ncmdline++] = optarg;
            break;
        case 'r':
            p.read_only = true;
            break;
        case 'm':
            break;
        case 'k':
            p.native_aio = true;
            break;
        case 'i':
            if (!parse_aio_mode(optarg, &native)) {
                error_report("Invalid aio option: %s", optarg);
                exit(1);
            }
            p.native_aio = native;
            break;
        case 't':
            if (!parse_cache_mode(optarg, &p.nocache)) {
                error_report("Invalid cache option: %s", optarg);
                exit(1);
            }
            break;
        case 'T':
            trace_option(optarg);
            break;
        case 'V':
            printf("%s version " QGUARD_VERSION "\n"
                   "Copyright (c) 2026 The qguard authors\n", progname);
            exit(0);
        case 'h':
            usage();
            exit(0);
        case 'U':
            p.force_share = true;
            break;
        case OPTION_OBJECT:
            error_report("--object is not supported: libqguard has no "
                         "user-creatable objects");
            exit(1);
        case OPTION_IMAGE_OPTS:
            image_opts_mode = true;
            break;
        default:
            usage();
            exit(1);
        }
    }
    if (argc - optind > 1) {
        usage();
        exit(1);
    }
    if (format && image_opts_mode) {
        error_report("--image-opts and -f are mutually exclusive");
        exit(1);
    }

    if (argc - optind == 1) {
        if (image_opts_mode) {
            QGuardOpts *opts = qguard_opts_new();

            if (!parse_open_options(opts, argv[optind])) {
                exit(1);
            }
            if (open_image(NULL, NULL, opts, &p) < 0) {
                exit(1);
            }
        } else if (open_image(argv[optind], format, NULL, &p) < 0) {
            exit(1);
        }
    }

    ret = command_loop(cmdline, ncmdline);
    close_image();
    return ret < 0 ? 1 : 0;
}
