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
            pattern_count = cvtnum_arg(optarg);
            if (pattern_count < 0) {
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
            pattern_offset = cvtnum_arg(optarg);
            if (pattern_offset < 0) {
                return pattern_offset;
            }
            break;
        case 'v':
            vflag = true;
            break;
        default:
            return command_usage(&read_cmd);
        }
    }
    if (optind != argc - 2) {
        return command_usage(&read_cmd);
    }
    ret = parse_offset_length(&argv[optind], true, "", &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if (!Pflag && (lflag || sflag)) {
        return command_usage(&read_cmd);
    }
    if (!lflag) {
        pattern_count = count - pattern_offset;
    }
    if (pattern_count < 0 || pattern_count + pattern_offset > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (bflag && check_sector_aligned(offset, count) < 0) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, 0xab);
    t1 = tool_now();
    if (bflag) {
        /* libqguard has no access to the VM state area. */
        ret = -ENOTSUP;
    } else {
        ret = do_pread(buf, offset, count);
    }
    t2 = tool_now();
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
    print_report(stdout, "read", t1, t2, offset, count, Cflag);
out:
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
            return command_usage(&readv_cmd);
        }
    }
    if (optind > argc - 2) {
        return command_usage(&readv_cmd);
    }
    offset = cvtnum_arg(argv[optind]);
    if (offset < 0) {
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, 0xab);
    t1 = tool_now();
    ret = do_pread(buf, offset, count);
    t2 = tool_now();
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
    print_report(stdout, "read", t1, t2, offset, count, Cflag);
out:
    g_free(buf);
    return ret;
}

const Command readv_cmd = {
    .name = "readv", .func = readv_f,
    .argmin = 2, .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help = readv_help,
};

/* Formats a completion report into the text aio_flush will print. */
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
            return command_usage(&aio_read_cmd);
        }
    }
    if (optind > argc - 2) {
        return command_usage(&aio_read_cmd);
    }
    offset = cvtnum_arg(argv[optind]);
    if (offset < 0) {
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    immediate = !range_has_data(offset, count);
    buf = alloc_buffer(count, 0xab);
    t1 = tool_now();
    ret = qguard_image_pread(image, offset, count, buf, NULL);
    t2 = tool_now();

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
    print_report(out, "read", t1, t2, offset, count, Cflag);
done:
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
            return command_usage(&write_cmd);
        }
    }
    if (optind != argc - 2) {
        return command_usage(&write_cmd);
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
    ret = parse_offset_length(&argv[optind], !no_fallback, " without -n",
                              &offset, &count);
    if (ret < 0) {
        return ret;
    }
    if ((bflag || cflag) && check_sector_aligned(offset, count) < 0) {
        return -EINVAL;
    }
    if (!zflag) {
        buf = sflag ? alloc_buffer_from_file(count, source)
                    : alloc_buffer(count, pattern);
        if (!buf) {
            return -EINVAL;
        }
    }

    t1 = tool_now();
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
    t2 = tool_now();
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    print_report(stdout, "wrote", t1, t2, offset, count, Cflag);
out:
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
            return command_usage(&writev_cmd);
        }
    }
    if (optind > argc - 2) {
        return command_usage(&writev_cmd);
    }
    offset = cvtnum_arg(argv[optind]);
    if (offset < 0) {
        return offset;
    }
    optind++;
    if (!parse_lengths(&argv[optind], argc - optind, &count)) {
        return -EINVAL;
    }

    buf = alloc_buffer(count, pattern);
    t1 = tool_now();
    ret = do_pwrite(buf, offset, count, fua ? QGUARD_WRITE_FUA : 0);
    t2 = tool_now();
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        goto out;
    }
    ret = 0;
    if (qflag) {
        goto out;
    }
    print_report(stdout, "wrote", t1, t2, offset, count, Cflag);
out:
    g_free(buf);
    return ret;
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
            return command_usage(&aio_write_cmd);
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
                                         (fua ? QGUARD_WRITE_FUA : 0) |
                                         (unmap ? QGUARD_ZERO_MAY_UNMAP : 0),
                                         NULL);
    } else {
        if (!parse_lengths(&argv[optind], argc - optind, &count)) {
            return -EINVAL;
        }
        buf = alloc_buffer(count, pattern);
        t1 = tool_now();
        ret = qguard_image_pwrite(image, offset, count, buf,
                                  fua ? QGUARD_WRITE_FUA : 0, NULL);
    }
    t2 = tool_now();

    out = aio_report_open(&text, &len);
    if (ret < 0) {
        fprintf(out, "aio_write failed: %s\n", strerror(-ret));
    } else if (!qflag) {
        print_report(out, "wrote", t1, t2, offset, count, Cflag);
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
