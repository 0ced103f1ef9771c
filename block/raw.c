/* SPDX-License-Identifier: MIT */
/*
 * raw driver: the image is the file.  Used for raw backing files and as
 * a convert source and target.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <string.h>

#include "block_int.h"

#define ZERO_CHUNK (1024 * 1024)

static int raw_open(QGuardImage *img, const QGuardOpts *opts, GError **errp)
{
    int64_t len = host_file_length(img->file);

    (void)opts;
    if (len < 0) {
        g_set_error(errp, QGUARD_ERROR, (int)-len,
                    "Could not get the size of '%s': %s", img->filename,
                    g_strerror((int)-len));
        return len;
    }
    /* QEMU's block layer counts 512-byte sectors: a partial one reads 0. */
    img->total_size = ROUND_UP((uint64_t)len, 512);
    img->opaque = img;
    return 0;
}

static int raw_close(QGuardImage *img, GError **errp)
{
    (void)errp;
    img->opaque = NULL;
    return 0;
}

static int raw_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                     void *buf, GError **errp)
{
    return bdrv_io_error(host_file_pread(img->file, offset, buf, bytes), errp);
}

/* A probed raw image must not become something that probes differently. */
static int check_first_sector(QGuardImage *img, uint64_t offset,
                              uint64_t bytes, const void *buf)
{
    uint8_t sector[512];
    int ret;

    if (!img->probed || offset >= sizeof(sector)) {
        return 0;
    }
    ret = host_file_pread(img->file, 0, sector, sizeof(sector));
    if (ret < 0) {
        return ret;
    }
    memcpy(sector + offset, buf, MIN(bytes, sizeof(sector) - offset));
    return bdrv_first_sector_looks_formatted(sector, sizeof(sector)) ? -EPERM
                                                                     : 0;
}

static int raw_pwrite(QGuardImage *img, uint64_t offset, uint64_t bytes,
                      const void *buf, unsigned flags, GError **errp)
{
    int ret = check_first_sector(img, offset, bytes, buf);

    if (ret >= 0) {
        ret = host_file_pwrite(img->file, offset, buf, bytes);
    }
    if (ret >= 0 && (flags & QGUARD_WRITE_FUA)) {
        ret = host_file_flush(img->file);
    }
    return bdrv_io_error(ret, errp);
}

static int write_zeros(HostFile *file, uint64_t offset, uint64_t bytes)
{
    static const uint8_t zeros[ZERO_CHUNK];

    while (bytes > 0) {
        uint64_t cur = MIN(bytes, (uint64_t)ZERO_CHUNK);
        int ret = host_file_pwrite(file, offset, zeros, cur);
        if (ret < 0) {
            return ret;
        }
        offset += cur;
        bytes -= cur;
    }
    return 0;
}

static int raw_pwrite_zeroes(QGuardImage *img, uint64_t offset,
                             uint64_t bytes, unsigned flags, GError **errp)
{
    int ret = -ENOTSUP;

    if (flags & QGUARD_ZERO_MAY_UNMAP) {
        ret = host_file_punch_zeroes(img->file, offset, bytes);
    }
    if (ret == -ENOTSUP && !(flags & QGUARD_ZERO_FAST)) {
        ret = write_zeros(img->file, offset, bytes);
    }
    if (ret >= 0 && (flags & QGUARD_WRITE_FUA)) {
        ret = host_file_flush(img->file);
    }
    return bdrv_io_error(ret, errp);
}

static int raw_discard(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       GError **errp)
{
    int ret = host_file_discard(img->file, offset, bytes);

    /* Discard is advisory: a filesystem without hole punching is fine. */
    return bdrv_io_error(ret == -ENOTSUP ? 0 : ret, errp);
}

static int raw_flush(QGuardImage *img, GError **errp)
{
    return bdrv_io_error(host_file_flush(img->file), errp);
}

/*
 * Change the file length as QEMU's file-posix does: falloc reserves the new
 * range without truncating first, full writes zeros into it and syncs, and
 * a failed preallocation leaves the file at its old length.
 */
static int resize_file(HostFile *file, uint64_t old_size, uint64_t size,
                       const char *prealloc, GError **errp)
{
    const char *what = "Could not resize file";
    int ret;

    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unsupported preallocation mode '%s'", prealloc);
        return -EINVAL;
    }
    if (size > old_size && prealloc && !strcmp(prealloc, "falloc")) {
        what = "Could not preallocate new data";
        ret = host_file_allocate(file, old_size, size - old_size);
    } else {
        ret = host_file_truncate(file, size);
        if (ret >= 0 && size > old_size && prealloc &&
            !strcmp(prealloc, "full")) {
            what = "Could not write zeros for preallocation";
            ret = write_zeros(file, old_size, size - old_size);
            if (ret >= 0) {
                ret = host_file_flush(file);
            }
        }
    }
    if (ret < 0) {
        if (size > old_size) {
            (void)host_file_truncate(file, old_size);
        }
        g_set_error(errp, QGUARD_ERROR, -ret, "%s: %s", what,
                    g_strerror(-ret));
    }
    return ret;
}

static int raw_truncate(QGuardImage *img, uint64_t size, bool shrink,
                        const char *prealloc, GError **errp)
{
    int ret;

    if (size < img->total_size && !shrink) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Use the --shrink option to perform a shrink operation.");
        return -EINVAL;
    }
    ret = resize_file(img->file, img->total_size, size, prealloc, errp);
    if (ret >= 0) {
        img->total_size = size;
    }
    return ret;
}

static int raw_block_status(QGuardImage *img, uint64_t offset,
                            uint64_t bytes, QGuardBlockStatus *st,
                            GError **errp)
{
    bool hole = false;

    (void)errp;
    st->bytes = bytes;
    host_file_is_hole(img->file, offset, &st->bytes, &hole);
    st->flags = QGUARD_BLOCK_ALLOCATED | QGUARD_BLOCK_OFFSET_VALID |
                (hole ? QGUARD_BLOCK_ZERO : QGUARD_BLOCK_DATA);
    st->host_offset = offset;
    return 0;
}

static char *raw_create_describe(const QGuardOpts *opts, GError **errp)
{
    const char *size = qguard_opts_get(opts, "size");
    const char *prealloc = qguard_opts_get(opts, "preallocation");
    const char *nocow = qguard_opts_get(opts, "nocow");
    const char *hint = qguard_opts_get(opts, "extent_size_hint");
    GString *str;
    uint64_t n = 0, h = 0;
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        const char *value = qguard_opts_value(opts, i);

        if (!strcmp(key, "nocow")) {
            if (!qguard_check_opt_syntax(key, value, OPT_BOOL, errp)) {
                return NULL;
            }
        } else if (!strcmp(key, "extent_size_hint")) {
            if (!qguard_check_opt_syntax(key, value, OPT_SIZE, errp)) {
                return NULL;
            }
        } else if (strcmp(key, "size") && strcmp(key, "preallocation")) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Invalid parameter '%s'", key);
            return NULL;
        }
    }
    if (size && qguard_parse_size_option("size", size, &n, NULL, errp) < 0) {
        return NULL;
    }
    /* In the order of QEMU's file protocol options. */
    str = g_string_new("fmt=raw");
    if (size) {
        g_string_append_printf(str, " size=%" PRIu64, n);
    }
    if (nocow) {
        g_string_append_printf(str, " nocow=%s", nocow);
    }
    if (prealloc) {
        g_string_append_printf(str, " preallocation=%s", prealloc);
    }
    if (hint) {
        qguard_parse_size(hint, &h, NULL);
        g_string_append_printf(str, " extent_size_hint=%" PRIu64, h);
    }
    return g_string_free(str, FALSE);
}

/* The raw format's own options; preallocation is the file protocol's. */
static char *raw_create_help(void)
{
    return g_strdup("  size=<size>            - Virtual disk size\n");
}

static int raw_create(const char *filename, const QGuardOpts *opts,
                      QGuardProgressFunc *progress, void *opaque,
                      GError **errp)
{
    const char *size_str = qguard_opts_get(opts, "size");
    g_autoptr(GError) local_err = NULL;
    HostFile *file;
    uint64_t size = 0;
    int ret;

    (void)progress;
    (void)opaque;
    if (size_str && qguard_parse_size(size_str, &size, errp) < 0) {
        return -EINVAL;
    }
    ret = bdrv_create_file(&file, filename, opts, errp);
    if (ret < 0) {
        return ret;
    }
    if (size > INT64_MAX) {
        g_set_error(errp, QGUARD_ERROR, EFBIG,
                    "The image size is too large for file format 'raw'");
        host_file_close(file);
        return -EFBIG;
    }
    /* A failure leaves an empty file, as QEMU's does. */
    /* The file holds whole sectors, as QEMU creates it. */
    size = ROUND_UP(size, 512);
    ret = resize_file(file, 0, size, qguard_opts_get(opts, "preallocation"),
                      &local_err);
    host_file_close(file);
    if (ret == -EFBIG) {
        g_set_error(errp, QGUARD_ERROR, EFBIG,
                    "The image size is too large for file format 'raw'");
    } else if (ret < 0) {
        g_propagate_error(errp, g_steal_pointer(&local_err));
    }
    return ret;
}

/* Options of a raw image and of the file it is. */
static bool raw_measure_check_opts(const QGuardOpts *opts, GError **errp)
{
    static const struct {
        const char *name;
        BlockOptType type;
    } known[] = {
        { "size", OPT_SIZE }, { "nocow", OPT_BOOL },
        { "preallocation", OPT_STRING }, { "extent_size_hint", OPT_SIZE },
    };
    guint i;
    size_t k;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);

        for (k = 0; k < G_N_ELEMENTS(known); k++) {
            if (!strcmp(key, known[k].name)) {
                break;
            }
        }
        if (k == G_N_ELEMENTS(known)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Invalid parameter '%s'", key);
            return false;
        }
        if (!qguard_check_opt_syntax(key, qguard_opts_value(opts, i),
                                     known[k].type, errp)) {
            return false;
        }
    }
    return true;
}

/* Every byte of the disk is a byte of the file, allocated or not. */
static int raw_measure(const QGuardOpts *opts, QGuardImage *in,
                       QGuardMeasureInfo *info, GError **errp)
{
    const char *size = qguard_opts_get(opts, "size");
    uint64_t n = 0;

    (void)errp;
    if (in) {
        n = qguard_image_size(in);
    } else if (size) {
        qguard_parse_size(size, &n, NULL);
        n = ROUND_UP(n, 512);
    }
    info->required = info->fully_allocated = n;
    return 0;
}

static int raw_probe(const uint8_t *buf, size_t len)
{
    (void)buf;
    (void)len;
    return 1;   /* anything is a raw image, as a last resort */
}

const BlockDriver bdrv_raw = {
    .format_name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .close = raw_close,
    .create = raw_create,
    .create_describe = raw_create_describe,
    .create_help = raw_create_help,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .discard = raw_discard,
    .flush = raw_flush,
    .truncate = raw_truncate,
    .block_status = raw_block_status,
    .measure_check_opts = raw_measure_check_opts,
    .measure = raw_measure,
};
