/* SPDX-License-Identifier: MIT */
/*
 * nbdkit plugin: export a qcow2 (or raw) image through libqguard.
 *
 * Copyright (c) 2026 The qguard authors
 *
 *   nbdkit -U SOCKET nbdkit-qguard-plugin.so file=IMAGE [format=qcow2|raw]
 *          [readonly=on] [cache=MODE] [overlap-check=...] ...
 *
 * Every key other than file, format, readonly and cache is a runtime option
 * of the image and goes unchanged into the QGuardOpts given to
 * qguard_image_open(), so "-drive ...,overlap-check=cached" in QEMU and
 * "overlap-check=cached" here mean the same thing.
 *
 * cache= is qemu-nbd's --cache, writeback by default: a write is durable
 * once the client's FLUSH (or the write's FUA flag) has succeeded.
 *
 * All connections share one QGuardImage.  It is opened when the first client
 * connects (only then does the plugin know whether nbdkit runs with -r) and
 * stays open until nbdkit shuts down, so that the in-memory state of the
 * image, a corruption event included, is the same for every connection.
 * The library takes the image's lock in every qguard_image_* call, which is
 * what makes the PARALLEL thread model safe.  See docs/nbd-export.md.
 */
#define NBDKIT_API_VERSION 2

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <glib.h>
#include <nbdkit-plugin.h>

#include "qguard.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#ifndef QGUARD_VERSION
#define QGUARD_VERSION "unknown"
#endif

/* Configuration (written only before the first connection). */
static char *image_path;
static char *image_format;
static bool export_readonly;
static unsigned cache_flags;     /* QGUARD_OPEN_CACHE_MASK bits */
static QGuardOpts *image_opts;

/* The shared image; image_lock protects image and image_users. */
static GMutex image_lock;
static QGuardImage *image;
static unsigned image_users;

typedef struct QGuardExport {
    QGuardImage *img;
    bool readonly;
} QGuardExport;

/*
 * The library's diagnostics ("qcow2: Marking image as corrupt: ...") go to
 * nbdkit's log.  Called from any request thread; nbdkit_error is
 * thread-safe.
 */
static void qg_message(void *opaque, const char *line)
{
    (void)opaque;
    nbdkit_error("%s", line);
}

static void qg_load(void)
{
    image_opts = qguard_opts_new();
    qguard_set_message_handler(qg_message, NULL);
}

static void qg_unload(void)
{
    qguard_set_message_handler(NULL, NULL);
    qguard_opts_free(image_opts);
    image_opts = NULL;
    g_free(image_path);
    image_path = NULL;
    g_free(image_format);
    image_format = NULL;
}

static int qg_config(const char *key, const char *value)
{
    if (!strcmp(key, "file")) {
        char *path = nbdkit_realpath(value);

        if (!path) {
            return -1;
        }
        g_free(image_path);
        image_path = g_strdup(path);
        free(path);
    } else if (!strcmp(key, "format")) {
        g_free(image_format);
        image_format = g_strdup(value);
    } else if (!strcmp(key, "readonly")) {
        int r = nbdkit_parse_bool(value);

        if (r < 0) {
            return -1;
        }
        export_readonly = r;
    } else if (!strcmp(key, "cache")) {
        if (qguard_parse_cache_mode(value, &cache_flags) < 0) {
            nbdkit_error("Invalid cache mode `%s'", value);
            return -1;
        }
    } else {
        /* A runtime option of the image; the library validates it. */
        qguard_opts_set(image_opts, key, value);
    }
    return 0;
}

static int qg_config_complete(void)
{
    if (!image_path) {
        nbdkit_error("you must supply the file=<IMAGE> parameter");
        return -1;
    }
    return 0;
}

#define qg_config_help \
    "file=<IMAGE>      (required) The image to export.\n" \
    "format=qcow2|raw  Image format (default: probe; give it for raw\n" \
    "                  images, which a guest could make look like qcow2).\n" \
    "readonly=on|off   Open the image read-only (as does nbdkit -r).\n" \
    "cache=writeback|writethrough|none|directsync|unsafe\n" \
    "                  qemu-nbd's --cache (default writeback: a write is\n" \
    "                  durable once flushed or sent with FUA).\n" \
    "cache.direct=on|off cache.no-flush=on|off\n" \
    "                  O_DIRECT on the image file; flushes that do not\n" \
    "                  sync (both as in QEMU; default from cache=).\n" \
    "overlap-check=none|constant|cached|all\n" \
    "                  Metadata overlap checks before writes (QEMU's\n" \
    "                  option; default cached).\n" \
    "overlap-check.<type>=on|off\n" \
    "                  One check: main-header, active-l1, active-l2,\n" \
    "                  refcount-table, refcount-block, snapshot-table,\n" \
    "                  inactive-l1, inactive-l2, bitmap-directory.\n" \
    "overlap-check.template=none|constant|cached|all\n" \
    "overlap-check.algorithm=windowed|linear\n" \
    "overlap-check.cache-size=<N>\n" \
    "                  Overlap map: algorithm and window cache size.\n" \
    "l2-cache-size=<SIZE> refcount-cache-size=<SIZE> cache-size=<SIZE>\n" \
    "l2-cache-entry-size=<SIZE> cache-clean-interval=<SECS>\n" \
    "lazy-refcounts=on|off pass-discard-request=on|off\n" \
    "pass-discard-snapshot=on|off pass-discard-other=on|off\n" \
    "                  Other qcow2 runtime options, as in QEMU's -drive."

static void qg_dump_plugin(void)
{
    printf("qguard_version=%s\n", QGUARD_VERSION);
    printf("qguard_formats=qcow2,raw\n");
}

/*
 * Open the image once before serving, read-only so that this has no side
 * effect on the file, to report a missing file, an unknown option or a bad
 * value when nbdkit starts rather than when the first client connects.
 */
static int qg_get_ready(void)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *img = NULL;

    if (qguard_image_open(&img, image_path, image_format, image_opts,
                          cache_flags, &err) < 0) {
        nbdkit_error("%s", err->message);
        return -1;
    }
    qguard_image_close(img, NULL);
    return 0;
}

static void qg_cleanup(void)
{
    g_autoptr(GError) err = NULL;

    g_mutex_lock(&image_lock);
    if (image) {
        if (qguard_image_close(image, &err) < 0) {
            nbdkit_error("closing %s: %s", image_path, err->message);
        }
        image = NULL;
    }
    g_mutex_unlock(&image_lock);
}

static void *qg_open(int readonly)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h;

    g_mutex_lock(&image_lock);
    if (!image) {
        unsigned flags = cache_flags |
                         (export_readonly || readonly ? 0 : QGUARD_OPEN_RDWR);

        if (qguard_image_open(&image, image_path, image_format, image_opts,
                              flags, &err) < 0) {
            g_mutex_unlock(&image_lock);
            nbdkit_error("%s", err->message);
            nbdkit_set_error(EIO);
            return NULL;
        }
        nbdkit_debug("opened %s (%s, %s)", image_path,
                     qguard_image_format(image),
                     qguard_image_is_read_only(image) ? "read-only"
                                                      : "read-write");
    }
    image_users++;
    h = g_new0(QGuardExport, 1);
    h->img = image;
    h->readonly = readonly || qguard_image_is_read_only(image);
    g_mutex_unlock(&image_lock);
    return h;
}

/*
 * The image stays open for the next client; when the last one leaves, make
 * everything it wrote durable, so that a disconnected image is consistent
 * on disk even if nbdkit is killed afterwards.
 */
static void qg_close(void *handle)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    int ret;

    g_mutex_lock(&image_lock);
    if (--image_users == 0 && !h->readonly) {
        ret = qguard_image_flush(h->img, &err);
        /* -ENOMEDIUM: marked corrupt, nothing may be written any more. */
        if (ret < 0 && ret != -ENOMEDIUM) {
            nbdkit_error("flush on last disconnect: %s", err->message);
        }
    }
    g_mutex_unlock(&image_lock);
    g_free(h);
}

/*
 * Report a failed request.  The write that the overlap check refuses fails
 * with EIO, and the library marks the image corrupt.  From then on it fails
 * every request with ENOMEDIUM (QEMU detaches the driver): NBD has no such
 * error and nbdkit would send EINVAL, so the client gets EIO.  Not EROFS:
 * reads fail as well, and a read-only export would be a promise that
 * reading still works.
 */
static int qg_fail(const char *what, int ret, GError *err)
{
    int e = -ret;

    if (e == ENOMEDIUM) {
        nbdkit_error("%s: the image is marked corrupt; request refused",
                     what);
        e = EIO;
    } else {
        nbdkit_error("%s: %s", what, err ? err->message : g_strerror(e));
    }
    nbdkit_set_error(e);
    return -1;
}

static int64_t qg_get_size(void *handle)
{
    QGuardExport *h = handle;

    return qguard_image_size(h->img);
}

static int qg_can_write(void *handle)
{
    QGuardExport *h = handle;

    return !h->readonly;
}

static int qg_can_true(void *handle)
{
    (void)handle;
    return 1;
}

static int qg_can_fua(void *handle)
{
    (void)handle;
    return NBDKIT_FUA_NATIVE;
}

static int qg_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
                    uint32_t flags)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    int ret;

    (void)flags;
    ret = qguard_image_pread(h->img, offset, count, buf, &err);
    return ret < 0 ? qg_fail("read", ret, err) : 0;
}

static int qg_pwrite(void *handle, const void *buf, uint32_t count,
                     uint64_t offset, uint32_t flags)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    int ret;

    ret = qguard_image_pwrite(h->img, offset, count, buf,
                              flags & NBDKIT_FLAG_FUA ? QGUARD_WRITE_FUA : 0,
                              &err);
    return ret < 0 ? qg_fail("write", ret, err) : 0;
}

static int qg_flush(void *handle, uint32_t flags)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    int ret;

    (void)flags;
    ret = qguard_image_flush(h->img, &err);
    return ret < 0 ? qg_fail("flush", ret, err) : 0;
}

static int qg_trim(void *handle, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    int ret;

    ret = qguard_image_discard(h->img, offset, count, &err);
    if (ret >= 0 && (flags & NBDKIT_FLAG_FUA)) {
        ret = qguard_image_flush(h->img, &err);
    }
    return ret < 0 ? qg_fail("trim", ret, err) : 0;
}

static int qg_zero(void *handle, uint32_t count, uint64_t offset,
                   uint32_t flags)
{
    g_autoptr(GError) err = NULL;
    QGuardExport *h = handle;
    unsigned qflags = 0;
    int ret;

    if (flags & NBDKIT_FLAG_MAY_TRIM) {
        qflags |= QGUARD_ZERO_MAY_UNMAP;
    }
    if (flags & NBDKIT_FLAG_FAST_ZERO) {
        qflags |= QGUARD_ZERO_FAST;
    }
    if (flags & NBDKIT_FLAG_FUA) {
        qflags |= QGUARD_WRITE_FUA;
    }
    ret = qguard_image_pwrite_zeroes(h->img, offset, count, qflags, &err);
    if (ret == -ENOTSUP) {
        /* Not fast: nbdkit falls back to pwrite unless the client said
         * fast-zero, which must fail with ENOTSUP anyway.  No log line. */
        nbdkit_set_error(ENOTSUP);
        return -1;
    }
    return ret < 0 ? qg_fail("zero", ret, err) : 0;
}

/*
 * NBD_STATE_HOLE means "not backed by data": unallocated clusters that read
 * as zeros and zero clusters.  NBD_STATE_ZERO means "reads as zeros", which
 * also covers data clusters in a hole of the image file.  This is what
 * QEMU's own NBD server reports.
 */
static int qg_extents(void *handle, uint32_t count, uint64_t offset,
                      uint32_t flags, struct nbdkit_extents *extents)
{
    QGuardExport *h = handle;

    while (count > 0) {
        g_autoptr(GError) err = NULL;
        QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
        uint32_t type = 0;
        int ret;

        ret = qguard_image_block_status(h->img, offset, count, &st, &err);
        if (ret < 0) {
            return qg_fail("block status", ret, err);
        }
        if (st.flags & QGUARD_BLOCK_ZERO) {
            type |= NBDKIT_EXTENT_ZERO;
            if (!(st.flags & QGUARD_BLOCK_DATA)) {
                type |= NBDKIT_EXTENT_HOLE;
            }
        }
        if (nbdkit_add_extent(extents, offset, st.bytes, type) < 0) {
            return -1;
        }
        if (flags & NBDKIT_FLAG_REQ_ONE) {
            break;
        }
        offset += st.bytes;
        count -= st.bytes;
    }
    return 0;
}

static struct nbdkit_plugin plugin = {
    .name              = "qguard",
    .longname          = "qguard qcow2 engine",
    .version           = QGUARD_VERSION,
    .description       = "Export a qcow2 or raw image through libqguard, "
                         "with QEMU's metadata overlap checks.",
    .load              = qg_load,
    .unload            = qg_unload,
    .config            = qg_config,
    .config_complete   = qg_config_complete,
    .config_help       = qg_config_help,
    .magic_config_key  = "file",
    .dump_plugin       = qg_dump_plugin,
    .get_ready         = qg_get_ready,
    .cleanup           = qg_cleanup,
    .open              = qg_open,
    .close             = qg_close,
    .get_size          = qg_get_size,
    .can_write         = qg_can_write,
    .can_flush         = qg_can_true,
    .can_trim          = qg_can_true,
    .can_zero          = qg_can_true,
    .can_fast_zero     = qg_can_true,
    .can_extents       = qg_can_true,
    .can_fua           = qg_can_fua,
    .can_multi_conn    = qg_can_true,
    .pread             = qg_pread,
    .pwrite            = qg_pwrite,
    .flush             = qg_flush,
    .trim              = qg_trim,
    .zero              = qg_zero,
    .extents           = qg_extents,
};

NBDKIT_REGISTER_PLUGIN(plugin)
