/* SPDX-License-Identifier: MIT */
/*
 * qemu-io's data commands: read, readv, aio_read, write, writev,
 * aio_write and aio_flush.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "io.h"

/* The options the data commands share. */
typedef struct RequestOpts {
    bool Cflag;             /* -C: the statistics as one CSV line */
    bool qflag;             /* -q: no statistics */
    bool vflag;             /* -v: hex dump of the data read */
    bool fua;               /* -f: Force Unit Access */
    bool Pflag;             /* -P given */
    int pattern;            /* -P: fill byte, or the byte a read expects */
    int64_t pattern_offset; /* read -s */
    int64_t pattern_count;  /* read -l; -1: to the end of the data */
} RequestOpts;

#define READ_OPTS   { .pattern_count = -1 }
#define WRITE_OPTS  { .pattern = 0xcd, .pattern_count = -1 }

/*
 * Record option @c in @o if it is one of RequestOpts' (which ones a
 * command takes, its getopt string says): 1.  0 if it is not; a negative
 * errno after printing why its argument is wrong.
 */
static int request_opt(int c, RequestOpts *o)
{
    switch (c) {
    case 'C':
        o->Cflag = true;
        return 1;
    case 'q':
        o->qflag = true;
        return 1;
    case 'v':
        o->vflag = true;
        return 1;
    case 'f':
        o->fua = true;
        return 1;
    case 'P':
        o->Pflag = true;
        o->pattern = parse_pattern(optarg);
        return o->pattern < 0 ? -EINVAL : 1;
    }
    return 0;
}

/* OFF LEN [LEN..] of readv, writev and aio_read, after the options. */
static int parse_vector_args(const Command *ct, int argc, char **argv,
                             int64_t *offset, int64_t *count)
{
    if (optind > argc - 2) {
        return command_usage(ct);
    }
    *offset = cvtnum_arg(argv[optind]);
    if (*offset < 0) {
        return *offset;
    }
    if (!parse_lengths(&argv[optind + 1], argc - optind - 1, count)) {
        return -EINVAL;
    }
    return 0;
}

/* readv and writev: options that are all RequestOpts', then the above. */
static int parse_vector_command(const Command *ct, const char *optstring,
                                int argc, char **argv, RequestOpts *o,
                                int64_t *offset, int64_t *count)
{
    int c, ret;

    while ((c = getopt(argc, argv, optstring)) != -1) {
        ret = request_opt(c, o);
        if (ret <= 0) {
            return ret < 0 ? ret : command_usage(ct);
        }
    }
    return parse_vector_args(ct, argc, argv, offset, count);
}

/*
 * What a read prints once its data is in @buf: -P's verdict on the
 * checked range, -v's dump and, unless -q, the statistics.  -EINVAL if
 * the data differs from the pattern.
 */
static int read_report(FILE *out, const RequestOpts *o, const uint8_t *buf,
                       int64_t offset, int64_t count, struct timespec t1,
                       struct timespec t2)
{
    int64_t poff = o->pattern_offset;
    int64_t plen = o->pattern_count < 0 ? count - poff : o->pattern_count;
    int ret = 0;

    if (o->Pflag && !pattern_matches(buf + poff, o->pattern, plen)) {
        fprintf(out, "Pattern verification failed at offset %" PRId64
                ", %" PRId64 " bytes\n", offset + poff, plen);
        ret = -EINVAL;
    }
    if (o->qflag) {
        return ret;
    }
    if (o->vflag) {
        dump_buffer(out, buf, offset, count);
    }
    print_report(out, "read", t1, t2, offset, count, o->Cflag);
    return ret;
}

/* A write's statistics, unless -q. */
static void write_report(FILE *out, const RequestOpts *o, int64_t offset,
                         int64_t count, struct timespec t1,
                         struct timespec t2)
{
    if (!o->qflag) {
        print_report(out, "wrote", t1, t2, offset, count, o->Cflag);
    }
}

static const char read_help[] =
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
"\n";

static int read_f(int argc, char **argv)
{
    RequestOpts o = READ_OPTS;
    struct timespec t1, t2;
    bool sflag = false, lflag = false, bflag = false;
    int64_t offset, count;
    uint8_t *buf;
    int c, ret;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            bflag = true;
            break;
        case 'l':
            lflag = true;
            o.pattern_count = cvtnum_arg(optarg);
            if (o.pattern_count < 0) {
                return o.pattern_count;
            }
            break;
        case 'p':
            break;
        case 's':
            sflag = true;
            o.pattern_offset = cvtnum_arg(optarg);
            if (o.pattern_offset < 0) {
                return o.pattern_offset;
            }
            break;
        default:
            ret = request_opt(c, &o);
            if (ret <= 0) {
                return ret < 0 ? ret : command_usage(&read_cmd);
            }
        }
    }
    if (optind != argc - 2) {
        return command_usage(&read_cmd);
    }
    ret = parse_offset_length(&argv[optind], true, "", &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if (!o.Pflag && (lflag || sflag)) {
        return command_usage(&read_cmd);
    }
    if (!lflag) {
        o.pattern_count = count - o.pattern_offset;
    }
    if (o.pattern_count < 0 ||
        o.pattern_count + o.pattern_offset > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && check_sector_aligned(offset, count) < 0) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, 0xab);
    t1 = tool_now();
    if (bflag) {
        ret = do_load_vmstate(buf, offset, count);
    } else {
        ret = do_pread(buf, offset, count);
    }
    t2 = tool_now();
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
    } else {
        ret = read_report(stdout, &o, buf, offset, count, t1, t2);
    }
    g_free(buf);
    return ret;
}

const Command read_cmd = {
    .name = "read", .altname = "r", .func = read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-abCqv] [-P pattern [-s off] [-l len]] off len",
    .oneline = "reads a number of bytes at a specified offset",
    .help = read_help,
};

static const char readv_help[] =
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
"\n";

/*
 * readv and writev: the options, OFF LEN [LEN..], one request, its report.
 * Their buffers are one piece here, so the request is read's or write's.
 */
static int vector_f(const Command *ct, const char *optstring, bool write,
                    int argc, char **argv)
{
    RequestOpts o = write ? (RequestOpts)WRITE_OPTS
                          : (RequestOpts)READ_OPTS;
    struct timespec t1, t2;
    int64_t offset, count;
    uint8_t *buf;
    int ret;

    ret = parse_vector_command(ct, optstring, argc, argv, &o, &offset,
                               &count);
    if (ret < 0) {
        return ret;
    }

    buf = alloc_buffer(count, write ? o.pattern : 0xab);
    t1 = tool_now();
    if (write) {
        ret = do_pwrite(buf, offset, count, o.fua ? QGUARD_WRITE_FUA : 0);
    } else {
        ret = do_pread(buf, offset, count);
    }
    t2 = tool_now();
    if (ret < 0) {
        printf("%s failed: %s\n", ct->name, strerror(-ret));
    } else if (write) {
        write_report(stdout, &o, offset, count, t1, t2);
        ret = 0;
    } else {
        ret = read_report(stdout, &o, buf, offset, count, t1, t2);
    }
    g_free(buf);
    return ret;
}

static int readv_f(int argc, char **argv)
{
    return vector_f(&readv_cmd, "CP:qv", false, argc, argv);
}

const Command readv_cmd = {
    .name = "readv", .func = readv_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help = readv_help,
};

static const char aio_read_help[] =
"\n"
" reads from offset OFF into one buffer per LEN argument, asynchronously\n"
"\n"
" Example:\n"
" 'aio_read -v 512 1k 1k ' - hex-dumps two kilobytes from offset 512\n"
"\n"
" The report appears when the request completes; 'aio_flush' waits for\n"
" all outstanding requests.  (The request runs at once; its report is\n"
" held back until the point where QEMU's qemu-io prints it.)\n"
" Because the command only submits the request, I/O errors and pattern\n"
" mismatches do not make it fail.\n"
" -C, -- print the statistics as one comma-separated line\n"
" -P, -- check that every byte read equals the given pattern\n"
" -i, -- only account an invalid request (nothing is read)\n"
" -v, -- hex-dump the data to standard output\n"
" -q, -- quiet: print no statistics\n"
"\n";

static int aio_read_f(int argc, char **argv)
{
    RequestOpts o = READ_OPTS;
    struct timespec t1, t2;
    bool immediate;
    int64_t offset, count;
    uint8_t *buf;
    char *text;
    size_t len;
    FILE *out;
    int c, ret;

    while ((c = getopt(argc, argv, "CP:iqv")) != -1) {
        if (c == 'i') {
            printf("injecting invalid read request\n");
            return 0;
        }
        ret = request_opt(c, &o);
        if (ret <= 0) {
            return ret < 0 ? ret : command_usage(&aio_read_cmd);
        }
    }
    ret = parse_vector_args(&aio_read_cmd, argc, argv, &offset, &count);
    if (ret < 0) {
        return ret;
    }

    immediate = !range_has_data(offset, count);
    buf = alloc_buffer(count, 0xab);
    t1 = tool_now();
    ret = qguard_image_pread(image, offset, count, buf, NULL);
    t2 = tool_now();

    /* Submitted is success: what happened goes into the report only. */
    out = aio_report_open(&text, &len);
    if (ret < 0) {
        fprintf(out, "readv failed: %s\n", strerror(-ret));
    } else {
        read_report(out, &o, buf, offset, count, t1, t2);
    }
    aio_report_close(out, &text, immediate || ret < 0);
    g_free(buf);
    return 0;
}

const Command aio_read_cmd = {
    .name = "aio_read", .func = aio_read_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Ciqv] [-P pattern] off len [len..]",
    .oneline = "asynchronously reads a number of bytes",
    .help = aio_read_help,
};

static const char write_help[] =
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
"\n";

/* write's own options beside RequestOpts'. */
typedef struct WriteOpts {
    RequestOpts o;
    bool bflag;             /* -b: the VM state area */
    bool cflag;             /* -c: compressed */
    bool zflag;             /* -z: write zeroes */
    bool unmap;             /* -u: with -z, may deallocate */
    bool no_fallback;       /* -n: with -z, fail rather than write zeros */
    const char *source;     /* -s: data from this file */
} WriteOpts;

/* Record option @c of write: 1, 0 if unknown, or a negative errno. */
static int write_opt(int c, WriteOpts *w)
{
    switch (c) {
    case 'b':
        w->bflag = true;
        break;
    case 'c':
        w->cflag = true;
        break;
    case 'n':
        w->no_fallback = true;
        break;
    case 'p':
        break;
    case 's':
        w->source = optarg;
        break;
    case 'u':
        w->unmap = true;
        break;
    case 'z':
        w->zflag = true;
        break;
    default:
        return request_opt(c, &w->o);
    }
    return 1;
}

/* The combinations qemu-io refuses, with its messages. */
static bool write_opts_valid(const WriteOpts *w)
{
    if (w->bflag && w->zflag) {
        printf("-b and -z cannot be specified at the same time\n");
    } else if (w->o.fua && (w->bflag || w->cflag)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
    } else if (w->unmap && !w->zflag) {
        printf("-u requires -z to be specified\n");
    } else if (w->no_fallback && !w->zflag) {
        printf("-n requires -z to be specified\n");
    } else if ((int)w->zflag + (int)w->o.Pflag + (int)!!w->source > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same "
               "time\n");
    } else {
        return true;
    }
    return false;
}

static int write_request(const WriteOpts *w, const uint8_t *buf,
                         int64_t offset, int64_t count)
{
    unsigned fua = w->o.fua ? QGUARD_WRITE_FUA : 0;

    if (w->bflag) {
        return do_save_vmstate(buf, offset, count);
    } else if (w->zflag) {
        return do_pwrite_zeroes(offset, count, fua |
                                (w->unmap ? QGUARD_ZERO_MAY_UNMAP : 0) |
                                (w->no_fallback ? QGUARD_ZERO_FAST : 0));
    } else if (w->cflag) {
        return do_pwrite_compressed(buf, offset, count);
    }
    return do_pwrite(buf, offset, count, fua);
}

static int write_f(int argc, char **argv)
{
    WriteOpts w = { .o = WRITE_OPTS };
    struct timespec t1, t2;
    int64_t offset, count;
    uint8_t *buf = NULL;
    int c, ret;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        ret = write_opt(c, &w);
        if (ret <= 0) {
            return ret < 0 ? ret : command_usage(&write_cmd);
        }
    }
    if (optind != argc - 2) {
        return command_usage(&write_cmd);
    }
    if (!write_opts_valid(&w)) {
        return -EINVAL;
    }
    ret = parse_offset_length(&argv[optind], !w.no_fallback, " without -n",
                              &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if ((w.bflag || w.cflag) && check_sector_aligned(offset, count) < 0) {
        return -EINVAL;
    }
    if (!w.zflag) {
        buf = w.source ? alloc_buffer_from_file(count, w.source)
                       : alloc_buffer(count, w.o.pattern);
        if (!buf) {
            return -EINVAL;
        }
    }

    t1 = tool_now();
    ret = write_request(&w, buf, offset, count);
    t2 = tool_now();
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
    } else {
        write_report(stdout, &w.o, offset, count, t1, t2);
        ret = 0;
    }
    g_free(buf);
    return ret;
}

const Command write_cmd = {
    .name = "write", .altname = "w", .func = write_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-bcCfnquz] [-P pattern | -s source_file] off len",
    .oneline = "writes a number of bytes at a specified offset",
    .help = write_help,
};

static const char writev_help[] =
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
"\n";

static int writev_f(int argc, char **argv)
{
    return vector_f(&writev_cmd, "CfqP:", true, argc, argv);
}

const Command writev_cmd = {
    .name = "writev", .func = writev_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-Cfq] [-P pattern] off len [len..]",
    .oneline = "writes a number of bytes at a specified offset",
    .help = writev_help,
};

static const char aio_write_help[] =
"\n"
" writes at offset OFF from one buffer per LEN argument, asynchronously\n"
"\n"
" Example:\n"
" 'aio_write 512 1k 1k' - writes two kilobytes starting 512 bytes in\n"
"\n"
" Unless told otherwise, every byte written is 0xcd.  The report appears\n"
" when the request completes; 'aio_flush' waits for all outstanding\n"
" requests.  (The request runs at once; its report is held back until\n"
" the point where QEMU's qemu-io prints it.)\n"
" Because the command only submits the request, I/O errors do not make\n"
" it fail.\n"
" -P, -- fill the data with the given pattern byte\n"
" -C, -- print the statistics as one comma-separated line\n"
" -f, -- Force Unit Access: the data is on stable storage on return\n"
" -i, -- only account an invalid request (nothing is written)\n"
" -q, -- quiet: print no statistics\n"
" -u, -- with -z, the range may be deallocated\n"
" -z, -- write zeroes efficiently instead of a data buffer\n"
"\n";

static int aio_write_f(int argc, char **argv)
{
    RequestOpts o = WRITE_OPTS;
    struct timespec t1 = { 0, 0 }, t2;
    bool zflag = false, unmap = false;
    int64_t offset, count;
    uint8_t *buf = NULL;
    char *text;
    size_t len;
    FILE *out;
    int c, ret;

    /* qemu-io never rejects -P with -z here: neither do we. */
    while ((c = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (c) {
        case 'u':
            unmap = true;
            break;
        case 'i':
            printf("injecting invalid write request\n");
            return 0;
        case 'z':
            zflag = true;
            break;
        default:
            ret = request_opt(c, &o);
            if (ret <= 0) {
                return ret < 0 ? ret : command_usage(&aio_write_cmd);
            }
        }
    }
    if (optind > argc - 2) {
        return command_usage(&aio_write_cmd);
    }
    if (zflag && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if (unmap && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    offset = cvtnum_arg(argv[optind]);
    if (offset < 0) {
        return offset;
    }
    optind++;

    if (zflag) {
        count = cvtnum_arg(argv[optind]);
        if (count < 0) {
            return count;
        }
        /*
         * qemu-io 7.2 never starts the clock for zero writes, so the
         * elapsed time it reports is the monotonic clock itself; t1
         * stays zero to print the same.
         */
        ret = qguard_image_pwrite_zeroes(image, offset, count,
                                         (o.fua ? QGUARD_WRITE_FUA : 0) |
                                         (unmap ? QGUARD_ZERO_MAY_UNMAP : 0),
                                         NULL);
    } else {
        if (!parse_lengths(&argv[optind], argc - optind, &count)) {
            return -EINVAL;
        }
        buf = alloc_buffer(count, o.pattern);
        t1 = tool_now();
        ret = qguard_image_pwrite(image, offset, count, buf,
                                  o.fua ? QGUARD_WRITE_FUA : 0, NULL);
    }
    t2 = tool_now();

    out = aio_report_open(&text, &len);
    if (ret < 0) {
        fprintf(out, "aio_write failed: %s\n", strerror(-ret));
    } else {
        write_report(out, &o, offset, count, t1, t2);
    }
    aio_report_close(out, &text, ret < 0);
    g_free(buf);
    return 0;
}

const Command aio_write_cmd = {
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

const Command aio_flush_cmd = {
    .name = "aio_flush", .func = aio_flush_f,
    .oneline = "completes all outstanding aio requests",
};
