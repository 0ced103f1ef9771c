/* SPDX-License-Identifier: MIT */
/*
 * Helpers the qemu-io commands share: argument parsing with qemu-io's
 * messages, the statistics line, buffers and patterns, the synchronous
 * requests and the held-back aio reports.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define KIB     (1ULL << 10)
#define MIB     (1ULL << 20)
#define GIB     (1ULL << 30)
#define TIB     (1ULL << 40)
#define PIB     (1ULL << 50)
#define EIB     (1ULL << 60)

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

/*
 * qemu-io's event loop completes the newest request first, and requests
 * that finished without I/O (failed checks, reads of clusters without
 * data; completed from a bottom half) before those that waited for I/O.
 * Several outstanding requests can complete in other orders in qemu-io.
 */
void aio_deliver_reports(void)
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

int64_t cvtnum(const char *s)
{
    uint64_t value;
    int ret = tool_strtosz(s, &value);

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

int64_t cvtnum_arg(const char *arg)
{
    int64_t value = cvtnum(arg);

    if (value < 0) {
        print_cvtnum_err(value, arg);
    }
    return value;
}

int parse_offset_length(char **args, bool limit, const char *limit_hint,
                        int64_t *offset, int64_t *count)
{
    *offset = cvtnum_arg(args[0]);
    if (*offset < 0) {
        return *offset;
    }
    *count = cvtnum_arg(args[1]);
    if (*count < 0) {
        return *count;
    }
    if (limit && (uint64_t)*count > REQUEST_MAX_BYTES) {
        printf("length cannot exceed %" PRIu64 "%s, given %s\n",
               REQUEST_MAX_BYTES, limit_hint, args[1]);
        return -EINVAL;
    }
    return 0;
}

int check_sector_aligned(int64_t offset, int64_t count)
{
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
    return 0;
}

void cvtstr(double value, char *str, size_t size)
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

void print_report(FILE *out, const char *op, struct timespec t1,
                  struct timespec t2, int64_t offset, int64_t count,
                  bool Cflag)
{
    struct timespec t = tool_elapsed(t1, t2);
    char s1[64], s2[64], ts[64];

    timestr(&t, ts, sizeof(ts), Cflag);
    if (!Cflag) {
        cvtstr((double)count, s1, sizeof(s1));
        cvtstr(tdiv((double)count, t), s2, sizeof(s2));
        fprintf(out, "%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64
                "\n", op, count, count, offset);
        fprintf(out, "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
                s1, 1, ts, s2, tdiv(1.0, t));
    } else {
        /* bytes,ops,time,bytes/sec,ops/sec */
        fprintf(out, "%" PRId64 ",%d,%s,%.3f,%.3f\n", count, 1, ts,
                tdiv((double)count, t), tdiv(1.0, t));
    }
}

void dump_buffer(FILE *out, const uint8_t *buf, int64_t offset,
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

int parse_pattern(const char *arg)
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

bool pattern_matches(const uint8_t *buf, int pattern, int64_t len)
{
    int64_t i;

    for (i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            return false;
        }
    }
    return true;
}

uint8_t *alloc_buffer(int64_t len, int pattern)
{
    /* One extra byte keeps zero-length requests from getting NULL. */
    uint8_t *buf = g_malloc(len + 1);

    memset(buf, pattern, len);
    return buf;
}

uint8_t *alloc_buffer_from_file(int64_t len, const char *path)
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

bool parse_lengths(char **argv, int nr, int64_t *total)
{
    int64_t count = 0;
    int i;

    for (i = 0; i < nr; i++) {
        int64_t len = cvtnum_arg(argv[i]);

        if (len < 0) {
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

/*
 * A request that has to wait for its I/O lets qemu-io's event loop run,
 * which is when earlier aio requests report their completion; one that
 * fails its checks returns at once.  (qemu-io also returns at once from
 * reads of clusters without data; we do not tell those apart.)
 */
int after_sync_request(int ret)
{
    if (ret >= 0) {
        aio_deliver_reports();
    }
    return ret;
}

int do_pread(uint8_t *buf, int64_t offset, int64_t bytes)
{
    return after_sync_request(qguard_image_pread(image, offset, bytes, buf,
                                                 NULL));
}

int do_pwrite(const uint8_t *buf, int64_t offset, int64_t bytes,
                     unsigned flags)
{
    return after_sync_request(qguard_image_pwrite(image, offset, bytes, buf,
                                                  flags, NULL));
}

/* qemu-io's -b: the VM state area, in one request of at most INT_MAX. */
int do_load_vmstate(uint8_t *buf, int64_t offset, int64_t bytes)
{
    if (bytes > INT_MAX) {
        return -ERANGE;
    }
    return after_sync_request(qguard_image_load_vmstate(image, offset, bytes,
                                                        buf, NULL));
}

int do_save_vmstate(const uint8_t *buf, int64_t offset, int64_t bytes)
{
    if (bytes > INT_MAX) {
        return -ERANGE;
    }
    return after_sync_request(qguard_image_save_vmstate(image, offset, bytes,
                                                        buf, NULL));
}

int do_pwrite_zeroes(int64_t offset, int64_t bytes, unsigned flags)
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
int do_pwrite_compressed(const uint8_t *buf, int64_t offset,
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

int is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    uint64_t size = qguard_image_size(image);
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
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

bool range_has_data(int64_t offset, int64_t bytes)
{
    uint64_t size = qguard_image_size(image);
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);

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

FILE *aio_report_open(char **text, size_t *len)
{
    FILE *f = open_memstream(text, len);

    if (!f) {
        g_error("open_memstream: %s", strerror(errno));
    }
    return f;
}

/* @text is only valid once @f is closed, hence the indirection. */
void aio_report_close(FILE *f, char **text, bool immediate)
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

int command_usage(const Command *ct)
{
    printf("%s %s -- %s\n", ct->name, ct->args, ct->oneline);
    return -EINVAL;
}
