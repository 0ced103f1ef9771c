/* SPDX-License-Identifier: MIT */
/*
 * qemu-img dd: copy (part of) an image into a new image, dd(1) style.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "img.h"

/* Copies go through a buffer of whole blocks, about this large. */
#define DD_BUF_SIZE (2 * 1024 * 1024)

enum {
    C_BS    = 1 << 0,
    C_COUNT = 1 << 1,
    C_IF    = 1 << 2,
    C_OF    = 1 << 3,
    C_SKIP  = 1 << 4,
};

typedef struct DdArgs {
    unsigned flags;
    int64_t bsz;        /* block size, for input and output */
    int64_t count;
    int64_t skip;       /* in blocks */
    const char *in;
    const char *out;
} DdArgs;

/* One "name=value" operand; false after printing what is wrong. */
static bool parse_operand(const char *operand, DdArgs *dd)
{
    g_autofree char *arg = g_strdup(operand);
    char *value = strchr(arg, '=');

    if (!value) {
        error_report("unrecognized operand %s", arg);
        return false;
    }
    *value++ = '\0';
    if (!strcmp(arg, "bs")) {
        dd->bsz = cvtnum_full("bs", value, 1, INT_MAX);
        if (dd->bsz < 0) {
            return false;
        }
        dd->flags |= C_BS;
    } else if (!strcmp(arg, "count")) {
        dd->count = cvtnum("count", value);
        if (dd->count < 0) {
            return false;
        }
        dd->flags |= C_COUNT;
    } else if (!strcmp(arg, "if")) {
        dd->in = operand + (value - arg);
        dd->flags |= C_IF;
    } else if (!strcmp(arg, "of")) {
        dd->out = operand + (value - arg);
        dd->flags |= C_OF;
    } else if (!strcmp(arg, "skip")) {
        dd->skip = cvtnum("skip", value);
        if (dd->skip < 0) {
            return false;
        }
        dd->flags |= C_SKIP;
    } else {
        error_report("unrecognized operand %s", arg);
        return false;
    }
    return true;
}

static int copy_blocks(QGuardImage *src, QGuardImage *dst, int64_t in_pos,
                       int64_t size, int64_t bsz)
{
    int64_t chunk = MAX(bsz, DD_BUF_SIZE / bsz * bsz);
    g_autofree uint8_t *buf = g_malloc(MIN(chunk, MAX(size - in_pos, 1)));
    int64_t out_pos = 0;

    while (in_pos < size) {
        g_autoptr(GError) err = NULL;
        int64_t bytes = MIN(chunk, size - in_pos);
        int ret;

        ret = qguard_image_pread(src, in_pos, bytes, buf, &err);
        if (ret < 0) {
            error_report("error while reading from input image file: %s",
                         g_strerror(-ret));
            return ret;
        }
        in_pos += bytes;
        ret = qguard_image_pwrite(dst, out_pos, bytes, buf, 0, &err);
        if (ret < 0) {
            error_report("error while writing to output image file: %s",
                         g_strerror(-ret));
            return ret;
        }
        out_pos += bytes;
    }
    return 0;
}

int img_dd(int argc, char **argv)
{
    DdArgs dd = { .bsz = 512 };
    g_autoptr(GError) err = NULL;
    const char *out_fmt = "raw";
    bool past_end;
    ImgOpts o = { 0 };
    QGuardImage *src = NULL, *dst = NULL;
    QGuardOpts *opts = NULL;
    g_autofree char *size_str = NULL;
    int64_t size, in_pos;
    int ret = -1, c, i;

    while ((c = tool_getopt(argc, argv, ":hf:O:U",
                            img_image_long_options, NULL)) != -1) {
        switch (c) {
        case 'O':
            out_fmt = optarg;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    for (i = optind; i < argc; i++) {
        if (!parse_operand(argv[i], &dd)) {
            goto out;
        }
    }
    if (!(dd.flags & C_IF) || !(dd.flags & C_OF)) {
        error_report("Must specify both input and output files");
        goto out;
    }

    src = img_open_opts(&o, dd.in, 0);
    if (!src) {
        goto out;
    }
    if (strcmp(out_fmt, "qcow2") && strcmp(out_fmt, "raw")) {
        error_report("Unknown file format");
        goto out;
    }

    size = qguard_image_size(src);
    if ((dd.flags & C_COUNT) && dd.count <= INT64_MAX / dd.bsz &&
        dd.count * dd.bsz < size) {
        size = dd.count * dd.bsz;
    }
    /* A skip past the end (or an overflowing one) makes an empty image. */
    past_end = (dd.flags & C_SKIP) &&
               (dd.skip > INT64_MAX / dd.bsz || size < dd.skip * dd.bsz);
    size_str = g_strdup_printf("%" PRId64,
                               past_end ? 0 : size - dd.skip * dd.bsz);
    opts = qguard_opts_new();
    qguard_opts_set(opts, "size", size_str);
    ret = qguard_image_create(dd.out, out_fmt, opts, NULL, NULL, &err);
    if (ret < 0) {
        error_report("%s: error while creating output image: %s", dd.out,
                     gerr_msg(err, ret));
        goto out;
    }
    /* --image-opts does not apply to the target, as in qemu-img. */
    dst = img_open(false, dd.out, out_fmt, QGUARD_OPEN_RDWR, false);
    if (!dst) {
        ret = -1;
        goto out;
    }
    if (past_end) {
        error_report("%s: cannot skip to specified offset", dd.in);
        in_pos = size;
    } else {
        in_pos = dd.skip * dd.bsz;
    }
    ret = copy_blocks(src, dst, in_pos, size, dd.bsz);

out:
    qguard_opts_free(opts);
    if (img_close(src) < 0) {
        ret = -1;
    }
    if (img_close(dst) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
