/* SPDX-License-Identifier: MIT */
/*
 * The generic image layer: format probing, open options, backing chains,
 * request validation and the public API in include/qguard.h.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Every public entry point takes the top image's lock, so an image may be
 * shared between threads (the NBD export): reads share it and run in
 * parallel, everything else takes it alone.  Backing images are private to
 * the image above them and are reached only under that lock; their reads
 * may then run in parallel too.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "block_int.h"
#include "qcow2-overlap.h"

#define MAX_BACKING_DEPTH 1024
#define PROBE_BYTES 4096

static const BlockDriver *const drivers[] = { &bdrv_qcow2, &bdrv_raw };

static QGuardReportFunc *message_handler;
static void *message_opaque;

void qguard_set_message_handler(QGuardReportFunc *fn, void *opaque)
{
    message_handler = fn;
    message_opaque = opaque;
}

void qguard_message(const char *fmt, ...)
{
    g_autofree char *line = NULL;
    va_list ap;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (message_handler) {
        message_handler(message_opaque, line);
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

void qguard_report_now(const char *msg)
{
    const char *prog = g_get_prgname();

    qguard_message("%s%s%s", prog ? prog : "", prog ? ": " : "", msg);
}

static const BlockDriver *find_driver(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(drivers); i++) {
        if (!strcmp(drivers[i]->format_name, name)) {
            return drivers[i];
        }
    }
    return NULL;
}

static const BlockDriver *probe_driver(HostFile *file)
{
    uint8_t buf[PROBE_BYTES];
    int64_t len = host_file_length(file);
    const BlockDriver *best = &bdrv_raw;
    int best_score = 0;
    size_t i;

    if (len <= 0 || host_file_pread(file, 0, buf, sizeof(buf)) < 0) {
        return &bdrv_raw;
    }
    for (i = 0; i < G_N_ELEMENTS(drivers); i++) {
        int score = drivers[i]->probe ?
                    drivers[i]->probe(buf, MIN((uint64_t)len, sizeof(buf))) : 0;
        if (score > best_score) {
            best = drivers[i];
            best_score = score;
        }
    }
    return best;
}

/*
 * Would a first sector with these bytes be probed as another format?  A raw
 * image opened by probing refuses such writes, as QEMU does, so that a guest
 * cannot turn its disk into a qcow2 image pointing at host files.
 */
bool bdrv_first_sector_looks_formatted(const uint8_t *buf, size_t len)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(drivers); i++) {
        if (drivers[i] != &bdrv_raw && drivers[i]->probe &&
            drivers[i]->probe(buf, len) > 1) {
            return true;
        }
    }
    return false;
}

/* Options the generic layer consumes itself. */
static bool is_generic_option(const char *key)
{
    /* file.* belongs to the protocol node: see bdrv_protocol_parse(). */
    return !strcmp(key, "driver") || g_str_has_prefix(key, "file.") ||
           !strcmp(key, "force-share") || !strcmp(key, "read-only") ||
           !strcmp(key, "file") || !strcmp(key, "backing") ||
           !strcmp(key, "cache.direct") || !strcmp(key, "cache.no-flush") ||
           !strcmp(key, "discard") || bdrv_node_option(key) ||
           g_str_has_prefix(key, "backing.");
}

int qguard_parse_cache_mode(const char *mode, unsigned *flags)
{
    unsigned cache;

    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        cache = QGUARD_OPEN_NOCACHE;
    } else if (!strcmp(mode, "directsync")) {
        cache = QGUARD_OPEN_NOCACHE | QGUARD_OPEN_WRITETHROUGH;
    } else if (!strcmp(mode, "writeback")) {
        cache = 0;
    } else if (!strcmp(mode, "unsafe")) {
        cache = QGUARD_OPEN_NO_FLUSH;
    } else if (!strcmp(mode, "writethrough")) {
        cache = QGUARD_OPEN_WRITETHROUGH;
    } else {
        return -EINVAL;
    }
    *flags = (*flags & ~QGUARD_OPEN_CACHE_MASK) | cache;
    return 0;
}

/*
 * cache.direct or cache.no-flush: @flag in @flags is the default, the
 * image's option overrides it, and file.<name> overrides that for the
 * image file only (the backing chain inherits the image's value).
 */
static bool parse_cache_option(const QGuardOpts *opts, const char *name,
                               unsigned flags, unsigned flag, bool *image_val,
                               bool *file_val, GError **errp)
{
    g_autofree char *file_key = g_strconcat("file.", name, NULL);
    const char *v = qguard_opts_get(opts, name);

    *image_val = flags & flag;
    if (v && !qguard_parse_bool(name, v, image_val, errp)) {
        return false;
    }
    *file_val = *image_val;
    v = qguard_opts_get(opts, file_key);
    return !v || qguard_parse_bool(name, v, file_val, errp);
}

static int check_options(const BlockDriver *drv, const QGuardOpts *opts,
                         GError **errp)
{
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        if (is_generic_option(key)) {
            continue;
        }
        if (!drv->is_runtime_option || !drv->is_runtime_option(key)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Block format '%s' does not support the option '%s'",
                        drv->format_name, key);
            return -EINVAL;
        }
    }
    return 0;
}

static void image_lock_init(QGuardImage *img)
{
    pthread_rwlockattr_t attr;

    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&img->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
}

/* Exclusive; a request's old error text is forgotten. */
static void image_lock(QGuardImage *img)
{
    pthread_rwlock_wrlock(&img->lock);
    if (img->drv && img->drv->clear_error) {
        img->drv->clear_error(img);
    }
}

/* Shared with other readers (and writers, where the driver allows it). */
static void image_lock_shared(QGuardImage *img)
{
    pthread_rwlock_rdlock(&img->lock);
    __atomic_add_fetch(&img->shared_holders, 1, __ATOMIC_ACQ_REL);
    if (img->drv->clear_error) {
        img->drv->clear_error(img);
    }
}

static void image_unlock_shared(QGuardImage *img)
{
    __atomic_sub_fetch(&img->shared_holders, 1, __ATOMIC_ACQ_REL);
    pthread_rwlock_unlock(&img->lock);
}

static void image_unlock(QGuardImage *img)
{
    pthread_rwlock_unlock(&img->lock);
}

/* The changes done so far: what a FUA request started now will cover. */
static uint64_t changes_seen(QGuardImage *img)
{
    return __atomic_load_n(&img->changes_done, __ATOMIC_ACQUIRE);
}

/*
 * Book-keeping for the close of an image that an error took out of
 * service.  @seen is changes_seen() from before the request ran: a FUA
 * request flushes every change that completed before it started, but not
 * necessarily one that completed beside it, whose count may even land
 * after this one's.
 */
static void note_request_seen(QGuardImage *img, int ret, unsigned flags,
                              uint64_t seen)
{
    uint64_t flushed;

    if (ret < 0) {
        return;
    }
    if (!(flags & QGUARD_WRITE_FUA)) {
        __atomic_add_fetch(&img->changes_done, 1, __ATOMIC_ACQ_REL);
        return;
    }
    flushed = __atomic_load_n(&img->changes_flushed, __ATOMIC_ACQUIRE);
    while (flushed < seen &&
           !__atomic_compare_exchange_n(&img->changes_flushed, &flushed, seen,
                                        false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
        /* Another FUA request moved it; retry unless it went past @seen. */
    }
}

/*
 * note_request_seen() for a request that held the image exclusively: no
 * change completed beside it, so the count has not moved since it began.
 */
static void note_request(QGuardImage *img, int ret, unsigned flags)
{
    note_request_seen(img, ret, flags, changes_seen(img));
}

static bool image_unflushed(QGuardImage *img)
{
    return __atomic_load_n(&img->changes_flushed, __ATOMIC_ACQUIRE) !=
           changes_seen(img);
}

static void image_free(QGuardImage *img)
{
    if (!img) {
        return;
    }
    if (img->drv && img->drv->close && img->opaque) {
        /* Nothing to write back: a backing image, or a failed open. */
        img->drv->close(img, NULL);
    }
    if (img->backing) {
        image_free(img->backing);
    }
    host_file_close(img->file);
    g_free(img->filename);
    g_free(img->backing_file);
    g_free(img->full_backing_file);
    g_free(img->backing_format);
    g_free(img->node_name);
    pthread_rwlock_destroy(&img->lock);
    g_free(img);
}

/* Is @file already open further up the chain that @parent belongs to? */
static bool chain_contains(QGuardImage *parent, HostFile *file)
{
    uint64_t dev, ino, d2, i2;

    host_file_identity(file, &dev, &ino);
    for (; parent; parent = parent->parent) {
        host_file_identity(parent->file, &d2, &i2);
        if (dev == d2 && ino == i2) {
            return true;
        }
    }
    return false;
}

static int open_image(QGuardImage **pimg, const char *filename,
                      const char *format, const QGuardOpts *opts,
                      unsigned flags, QGuardImage *parent, GError **errp)
{
    int depth = parent ? parent->chain_depth + 1 : 0;
    const char *driver_opt = qguard_opts_get(opts, "driver");
    const char *file_opt = qguard_opts_get(opts, "file.filename");
    const char *file_driver = qguard_opts_get(opts, "file.driver");
    const char *ro_opt = qguard_opts_get(opts, "read-only");
    g_auto(BdrvProtocol) proto = { 0 };
    g_autoptr(GError) local_err = NULL;
    const BlockDriver *drv = NULL;
    QGuardImage *img;
    bool read_only;
    bool no_lock = false;
    bool direct, file_direct, no_flush, file_no_flush;
    unsigned file_flags;
    BdrvNodeOptions node, file_node;
    int ret;

    if (!filename && qguard_opts_get(opts, "file")) {
        /* QEMU reads "file" as a reference to an existing node. */
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cannot find device='%s' nor node-name='%s'",
                    qguard_opts_get(opts, "file"),
                    qguard_opts_get(opts, "file"));
        return -EINVAL;
    }
    if (!filename && !file_opt && !driver_opt &&
        !(file_driver && !strcmp(file_driver, "blkdebug"))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Must specify either driver or file");
        return -EINVAL;
    }
    ret = bdrv_protocol_parse(&proto, filename, opts, errp);
    if (ret < 0) {
        return ret;
    }
    if (!proto.path) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "The 'file' block driver requires a file name");
        return -EINVAL;
    }
    filename = proto.path;
    if (driver_opt) {
        if (format && strcmp(format, driver_opt)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Cannot use format '%s' with driver option '%s'",
                        format, driver_opt);
            return -EINVAL;
        }
        format = driver_opt;
    }
    if (format) {
        drv = find_driver(format);
        if (!drv) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "Unknown driver '%s'",
                        format);
            return -EINVAL;
        }
    }
    read_only = !(flags & QGUARD_OPEN_RDWR);
    if (ro_opt && !qguard_parse_bool("read-only", ro_opt, &read_only, errp)) {
        return -EINVAL;
    }
    if (!parse_cache_option(opts, "cache.direct", flags, QGUARD_OPEN_NOCACHE,
                            &direct, &file_direct, errp) ||
        !parse_cache_option(opts, "cache.no-flush", flags,
                            QGUARD_OPEN_NO_FLUSH, &no_flush, &file_no_flush,
                            errp)) {
        return -EINVAL;
    }
    flags &= ~(QGUARD_OPEN_NOCACHE | QGUARD_OPEN_NO_FLUSH);
    flags |= (direct ? QGUARD_OPEN_NOCACHE : 0) |
             (no_flush ? QGUARD_OPEN_NO_FLUSH : 0);
    if (bdrv_file_child_opts(NULL, qguard_opts_get(opts, "file.locking"),
                             &no_lock, errp) < 0) {
        return -EINVAL;
    }
    ret = bdrv_node_options_parse(opts, read_only, file_direct, &node,
                                  &file_node, errp);
    if (ret < 0) {
        return ret;
    }
    /* A reader that shares everything needs no locks at all. */
    no_lock = no_lock || node.force_share || file_node.force_share;

    img = g_new0(QGuardImage, 1);
    image_lock_init(img);
    img->discard_unmap = node.discard_unmap;
    img->force_share = node.force_share;
    img->detect_zeroes = node.detect_zeroes;
    img->node_name = g_strdup(node.node_name);
    img->filename = g_strdup(proto.filename);
    img->flags = read_only ? flags & ~QGUARD_OPEN_RDWR : flags;
    img->read_only = read_only;
    img->chain_depth = depth;
    img->parent = parent;
    if (depth > MAX_BACKING_DEPTH) {
        g_set_error(errp, QGUARD_ERROR, ELOOP,
                    "Backing chain is longer than %d images",
                    MAX_BACKING_DEPTH);
        ret = -ELOOP;
        goto fail;
    }
    file_flags = (read_only ? 0 : HOST_FILE_RDWR) | HOST_FILE_NO_LOCK |
                 (file_direct ? HOST_FILE_DIRECT : 0) |
                 (file_no_flush ? HOST_FILE_NO_FLUSH : 0) |
                 (file_node.discard_unmap ? 0 : HOST_FILE_NO_DISCARD);
    ret = host_file_open(&img->file, filename, file_flags, &local_err);
    if (ret == -EAGAIN) {
        g_propagate_error(errp, g_steal_pointer(&local_err));
        goto fail;
    } else if (ret == -EISDIR) {
        g_set_error(errp, QGUARD_ERROR, EISDIR,
                    "'file' driver requires '%s' to be a regular file",
                    filename);
        goto fail;
    } else if (ret < 0) {
        /* "Could not open '%s': <why>", the why possibly about O_DIRECT. */
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", local_err->message);
        goto fail;
    }
    /* Below INT_MAX: bdrv_protocol_parse() checked them. */
    host_file_set_limits(img->file, proto.align, proto.opt_write_zero);
    /* A loop would also conflict with our own locks: name it first. */
    if (chain_contains(parent, img->file)) {
        g_set_error(errp, QGUARD_ERROR, ELOOP,
                    "Backing file '%s' forms a loop in the backing chain",
                    filename);
        ret = -ELOOP;
        goto fail;
    }
    if (!no_lock) {
        ret = host_file_lock(img->file, !read_only, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    if (!drv) {
        drv = probe_driver(img->file);
        img->probed = true;
        if (drv == &bdrv_raw && !read_only) {
            qguard_message("WARNING: Image format was not specified for '%s' "
                           "and probing guessed raw.", filename);
            qguard_message("         Automatically detecting the format is "
                           "dangerous for raw images, write operations on "
                           "block 0 will be restricted.");
            qguard_message("         Specify the 'raw' format explicitly to "
                           "remove the restrictions.");
        }
    }
    ret = check_options(drv, opts, errp);
    if (ret < 0) {
        goto fail;
    }
    img->drv = drv;
    ret = drv->open(img, opts, errp);
    if (ret < 0) {
        img->drv = NULL;
        goto fail;
    }
    *pimg = img;
    return 0;

fail:
    image_free(img);
    return ret;
}

int qguard_image_open(QGuardImage **pimg, const char *filename,
                      const char *format, const QGuardOpts *opts,
                      unsigned flags, GError **errp)
{
    *pimg = NULL;
    return open_image(pimg, filename, format, opts, flags, NULL, errp);
}

char *bdrv_resolve_backing_path(const char *image_path, const char *backing)
{
    const char *dir_end = image_path;
    const char *slash;

    if (!*backing || bdrv_path_has_protocol(backing) ||
        g_path_is_absolute(backing)) {
        return g_strdup(backing);
    }
    /* A protocol prefix of @image_path stays in front ("file:b"). */
    if (bdrv_path_has_protocol(image_path)) {
        dir_end = strchr(image_path, ':') + 1;
    }
    slash = strrchr(image_path, '/');
    if (slash && slash + 1 > dir_end) {
        dir_end = slash + 1;
    }
    return g_strdup_printf("%.*s%s", (int)(dir_end - image_path), image_path,
                           backing);
}

int bdrv_open_backing(QGuardImage *img, const QGuardOpts *opts,
                      GError **errp)
{
    g_autoptr(GError) local_err = NULL;
    QGuardOpts *backing_opts = bdrv_opts_subset(opts, "backing");
    int ret;

    /* As in QEMU, the chain below a force-share image shares too. */
    if (img->force_share && !qguard_opts_has(backing_opts, "force-share")) {
        qguard_opts_set(backing_opts, "force-share", "on");
    }
    ret = open_image(&img->backing, img->full_backing_file,
                     img->backing_format, backing_opts,
                     img->flags & (QGUARD_OPEN_NOCACHE | QGUARD_OPEN_NO_FLUSH),
                     img, &local_err);
    qguard_opts_free(backing_opts);
    if (ret < 0) {
        img->backing = NULL;
        g_set_error(errp, QGUARD_ERROR, -ret, "Could not open backing file: %s",
                    local_err->message);
    }
    return ret;
}

int bdrv_error_errno(GError **errp, int ret, const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(errp, QGUARD_ERROR, -ret, "%s: %s", msg, g_strerror(-ret));
    return ret;
}

int bdrv_file_child_opts(const char *driver, const char *locking,
                         bool *no_lock, GError **errp)
{
    if (driver && strcmp(driver, "file")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unknown protocol driver '%s' (only 'file' is supported)",
                    driver);
        return -EINVAL;
    }
    if (locking && !strcmp(locking, "off")) {
        *no_lock = true;
    } else if (locking && strcmp(locking, "on") && strcmp(locking, "auto")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Parameter 'locking' does not accept value '%s'",
                    locking);
        return -EINVAL;
    }
    return 0;
}

int bdrv_create_file(HostFile **pfile, const char *filename,
                     const QGuardOpts *opts, GError **errp)
{
    g_autoptr(GError) local_err = NULL;
    const char *nocow = qguard_opts_get(opts, "nocow");
    const char *hint_str = qguard_opts_get(opts, "extent_size_hint");
    uint64_t hint = 1024 * 1024;    /* QEMU's default */
    int ret;

    if (hint_str && qguard_parse_size(hint_str, &hint, NULL) < 0) {
        hint = 0;   /* the format's option check has refused it */
    }
    if (hint > UINT32_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Extent size hint is too large");
        return -EINVAL;
    }
    ret = host_file_open(pfile, filename, HOST_FILE_RDWR | HOST_FILE_CREATE,
                         &local_err);
    if (ret == -EAGAIN) {
        g_propagate_error(errp, g_steal_pointer(&local_err));
        return ret;
    } else if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Could not create '%s': %s",
                    filename, g_strerror(-ret));
        return ret;
    }
    /*
     * Hints only, as in QEMU: a file system without them creates the image
     * all the same (QEMU warns about an explicit extent size hint that
     * does not take; the library has no warnings to give).
     */
    if (nocow && !strcmp(nocow, "on")) {
        (void)host_file_set_nocow(*pfile);
    }
    (void)host_file_set_extent_size_hint(*pfile, hint);
    return 0;
}

int bdrv_backing_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       void *buf)
{
    QGuardImage *b = img->backing;
    uint64_t avail = 0;
    int ret;

    if (offset < b->total_size) {
        avail = MIN(bytes, b->total_size - offset);
        /* A failure's text stays with the backing driver's request. */
        ret = b->drv->pread(b, offset, avail, buf, NULL);
        if (ret < 0) {
            return ret;
        }
    }
    memset((uint8_t *)buf + avail, 0, bytes - avail);
    return 0;
}

int qguard_image_close(QGuardImage *img, GError **errp)
{
    g_autoptr(GError) err = NULL;
    const char *detail = NULL;
    bool whole = false;
    int ret = 0, ret2;

    if (!img) {
        return 0;
    }
    if (img->drv->clear_error) {
        img->drv->clear_error(img);
    }
    /*
     * In writeback mode, what the driver still holds in memory is written
     * here: a failure loses acknowledged writes and must reach the caller.
     */
    if (!img->read_only && !bdrv_is_broken(img) && img->drv->close_flush) {
        ret = img->drv->close_flush(img, &err);
        if (ret < 0) {
            detail = err->message;
            whole = true;
        }
    } else if (!img->read_only && !bdrv_is_broken(img) && img->drv->flush) {
        ret = img->drv->flush(img, &err);
    } else if (!img->read_only && bdrv_is_broken(img) &&
               image_unflushed(img)) {
        /* Nothing may be written any more: the unflushed writes are gone. */
        detail = "writes since the last flush are lost (the image was taken "
                 "out of service after an error)";
        ret = -EIO;
    }
    if (img->drv->close && img->opaque) {
        ret2 = img->drv->close(img, ret < 0 ? NULL : &err);
        ret = ret < 0 ? ret : ret2;
    }
    if (ret < 0) {
        if (!detail && err) {
            detail = err->message;
        }
        g_set_error(errp, QGUARD_ERROR, -ret, "%s%s",
                    whole ? "" : "Failed to flush the image: ",
                    detail ? detail : g_strerror(-ret));
    }
    image_free(img);
    return ret;
}

const char *qguard_image_filename(const QGuardImage *img)
{
    return img->filename;
}

bool qguard_image_takes_option(const QGuardImage *img, const char *key)
{
    return is_generic_option(key) ||
           (img->drv->is_runtime_option && img->drv->is_runtime_option(key));
}

const char *qguard_image_format(const QGuardImage *img)
{
    return img->drv->format_name;
}

uint64_t qguard_image_size(const QGuardImage *img)
{
    return img->total_size;
}

bool qguard_image_is_read_only(const QGuardImage *img)
{
    return img->read_only;
}

QGuardImage *qguard_image_backing(const QGuardImage *img)
{
    return img->backing;
}

/* ---- Caller-allocated structs ------------------------------------------ */

/*
 * The size of the first version of a struct whose last field then was
 * @last: the least a caller may pass.  Fields added later do not move it.
 */
#define SIZE_V1(type, last) (offsetof(type, last) + sizeof(((type *)0)->last))

/* -EINVAL unless the caller's struct is at least the first version. */
static int sized_check(size_t size, size_t v1, GError **errp)
{
    if (size < v1) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Struct size %zu below the library's minimum %zu",
                    size, v1);
        return -EINVAL;
    }
    return 0;
}

/*
 * Copy the library's full struct to the caller's, which starts with its
 * size: only as much as the caller has room for, and its size stays.
 */
static void sized_copy_out(void *out, const void *full, size_t full_size)
{
    size_t n;

    memcpy(&n, out, sizeof(n));
    n = MIN(n, full_size);
    memcpy((char *)out + sizeof(n), (const char *)full + sizeof(n),
           n - sizeof(n));
}

/* ---- Requests ----------------------------------------------------------- */

int bdrv_io_error(int ret, GError **errp)
{
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
    }
    return ret;
}

/*
 * Without a write cache (writethrough) every write is a FUA write: one
 * flush at the end of the request, however many clusters it touches.
 */
static unsigned write_cache_fua(const QGuardImage *img)
{
    return img->flags & QGUARD_OPEN_WRITETHROUGH ? QGUARD_WRITE_FUA : 0;
}

static int check_request(QGuardImage *img, uint64_t offset, uint64_t bytes,
                         bool write, GError **errp)
{
    if (bdrv_is_broken(img)) {
        /* After a fatal corruption QEMU detaches the driver; so do we. */
        g_set_error(errp, QGUARD_ERROR, ENOMEDIUM, "%s",
                    g_strerror(ENOMEDIUM));
        return -ENOMEDIUM;
    }
    if (offset > img->total_size || bytes > img->total_size - offset) {
        g_set_error(errp, QGUARD_ERROR, EIO, "%s", g_strerror(EIO));
        return -EIO;
    }
    if (write && img->read_only) {
        g_set_error(errp, QGUARD_ERROR, EPERM, "%s", g_strerror(EPERM));
        return -EPERM;
    }
    return 0;
}

int qguard_image_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       void *buf, GError **errp)
{
    int ret;

    image_lock_shared(img);
    ret = check_request(img, offset, bytes, false, errp);
    if (ret == 0 && bytes) {
        ret = img->drv->pread(img, offset, bytes, buf, errp);
    }
    image_unlock_shared(img);
    return ret;
}

static bool buffer_is_zero(const void *buf, uint64_t bytes)
{
    const uint8_t *p = buf;

    return !p[0] && !memcmp(p, p + 1, bytes - 1);
}

/*
 * detect-zeroes: QEMU's block layer turns a write of zeros into a zero
 * write, which may deallocate only if discards reach the image.
 */
static int write_detected_zeroes(QGuardImage *img, uint64_t offset,
                                 uint64_t bytes, unsigned flags,
                                 GError **errp)
{
    flags &= QGUARD_WRITE_FUA;
    if (img->detect_zeroes == BDRV_DETECT_ZEROES_UNMAP && img->discard_unmap) {
        flags |= QGUARD_ZERO_MAY_UNMAP;
    }
    return qguard_image_pwrite_zeroes(img, offset, bytes, flags, errp);
}

int qguard_image_pwrite(QGuardImage *img, uint64_t offset, uint64_t bytes,
                        const void *buf, unsigned flags, GError **errp)
{
    bool shared = img->drv->parallel_writes;
    uint64_t seen;
    int ret;

    if (img->detect_zeroes != BDRV_DETECT_ZEROES_OFF && bytes &&
        buffer_is_zero(buf, bytes)) {
        return write_detected_zeroes(img, offset, bytes, flags, errp);
    }

    /* The driver serializes what writes share; see its pwrite. */
    if (shared) {
        image_lock_shared(img);
    } else {
        image_lock(img);
    }
    ret = check_request(img, offset, bytes, true, errp);
    if (ret == 0 && bytes) {
        flags |= write_cache_fua(img);
        seen = changes_seen(img);
        ret = img->drv->pwrite(img, offset, bytes, buf, flags, errp);
        note_request_seen(img, ret, flags, seen);
    }
    if (shared) {
        image_unlock_shared(img);
    } else {
        image_unlock(img);
    }
    return ret;
}

/*
 * As QEMU's bdrv_co_readv_vmstate(): no bounds but the largest request
 * offset; the driver places the area and refuses what it cannot hold.
 */
static int check_vmstate_request(QGuardImage *img, uint64_t pos,
                                  uint64_t bytes, bool write, GError **errp)
{
    int ret = check_request(img, 0, 0, write, errp);

    if (ret < 0) {
        return ret;
    }
    if (pos > INT64_MAX || bytes > INT64_MAX - pos) {
        g_set_error(errp, QGUARD_ERROR, EIO, "%s", g_strerror(EIO));
        return -EIO;
    }
    if (write ? !img->drv->save_vmstate : !img->drv->load_vmstate) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP, "%s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    return 0;
}

int qguard_image_load_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                              void *buf, GError **errp)
{
    int ret;

    image_lock_shared(img);
    ret = check_vmstate_request(img, pos, bytes, false, errp);
    if (ret == 0 && bytes) {
        ret = img->drv->load_vmstate(img, pos, bytes, buf, errp);
    }
    image_unlock_shared(img);
    return ret;
}

int qguard_image_save_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                              const void *buf, GError **errp)
{
    int ret;

    image_lock(img);
    ret = check_vmstate_request(img, pos, bytes, true, errp);
    if (ret == 0 && bytes) {
        unsigned flags = write_cache_fua(img);

        ret = img->drv->save_vmstate(img, pos, bytes, buf, flags, errp);
        note_request(img, ret, flags);
    }
    image_unlock(img);
    return ret;
}

int qguard_image_pwrite_zeroes(QGuardImage *img, uint64_t offset,
                               uint64_t bytes, unsigned flags, GError **errp)
{
    int ret;

    image_lock(img);
    ret = check_request(img, offset, bytes, true, errp);
    if (ret == 0 && bytes) {
        flags |= write_cache_fua(img);
        ret = img->drv->pwrite_zeroes(img, offset, bytes, flags, errp);
        note_request(img, ret, flags);
    }
    image_unlock(img);
    return ret;
}

int qguard_image_pwrite_compressed(QGuardImage *img, uint64_t offset,
                                   uint64_t bytes, const void *buf,
                                   GError **errp)
{
    int ret;

    if (!img->drv->pwrite_compressed) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Compression is not supported for this drive %s",
                    img->filename);
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, offset, bytes, true, errp);
    if (ret == 0 && bytes) {
        ret = img->drv->pwrite_compressed(img, offset, bytes, buf, errp);
        if (ret >= 0 && write_cache_fua(img)) {
            ret = img->drv->flush(img, errp);
        }
        note_request(img, ret, write_cache_fua(img));
    }
    image_unlock(img);
    return ret;
}

uint32_t qguard_image_cluster_size(const QGuardImage *img)
{
    return img->drv->cluster_size ? img->drv->cluster_size(img) : 0;
}

int qguard_image_discard(QGuardImage *img, uint64_t offset, uint64_t bytes,
                         GError **errp)
{
    int ret;

    image_lock(img);
    ret = check_request(img, offset, bytes, true, errp);
    /* discard=ignore (or off): the request succeeds and does nothing. */
    if (ret == 0 && bytes && img->drv->discard && img->discard_unmap) {
        ret = img->drv->discard(img, offset, bytes, errp);
        note_request(img, ret, 0);
    }
    image_unlock(img);
    return ret;
}

int qguard_image_flush(QGuardImage *img, GError **errp)
{
    int ret = 0;

    image_lock(img);
    if (bdrv_is_broken(img)) {
        ret = check_request(img, 0, 0, false, errp);
    } else if (!img->read_only && img->drv->flush) {
        ret = img->drv->flush(img, errp);
        note_request(img, ret, QGUARD_WRITE_FUA);
    }
    image_unlock(img);
    return ret;
}

int qguard_image_truncate(QGuardImage *img, uint64_t size, bool shrink,
                          const char *prealloc, GError **errp)
{
    int ret;

    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        if (!img->drv->truncate) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                        "Image format driver does not support resize");
            ret = -ENOTSUP;
        } else {
            ret = img->drv->truncate(img, size, shrink, prealloc, errp);
            note_request(img, ret, 0);
        }
    }
    image_unlock(img);
    return ret;
}

/* ---- Block status ------------------------------------------------------- */

/*
 * A data extent whose host range is a hole in the file reads as zeros; say
 * so when the driver suspects holes (metadata preallocation), as QEMU does
 * when it asks the protocol layer.
 */
static void add_file_zero_status(QGuardImage *img, QGuardBlockStatus *st)
{
    HostFile *file;
    uint64_t bytes = st->bytes;
    bool hole;

    if (!(st->flags & BDRV_BLOCK_RECURSE)) {
        return;
    }
    st->flags &= ~BDRV_BLOCK_RECURSE;
    file = img->drv->data_file ? img->drv->data_file(img) : img->file;
    if (!file || !(st->flags & QGUARD_BLOCK_OFFSET_VALID) ||
        !(st->flags & QGUARD_BLOCK_DATA) ||
        host_file_is_hole(file, st->host_offset, &bytes, &hole) < 0) {
        return;
    }
    st->bytes = bytes;
    if (hole) {
        st->flags |= QGUARD_BLOCK_ZERO;
    }
}

static int chain_block_status(QGuardImage *img, uint64_t offset,
                              uint64_t bytes, QGuardBlockStatus *st,
                              bool want_zero, GError **errp)
{
    QGuardImage *layer = img;
    int depth = 0;
    int ret;

    for (;;) {
        *st = QGUARD_SIZED(QGuardBlockStatus);
        ret = layer->drv->block_status(layer, offset, bytes, st, errp);
        if (ret < 0) {
            break;
        }
        st->depth = depth;
        st->image = layer;
        if (!st->filename) {
            st->filename = layer->filename;
        }
        if (st->flags & QGUARD_BLOCK_ALLOCATED) {
            if (want_zero) {
                add_file_zero_status(layer, st);
            }
            st->flags &= ~BDRV_BLOCK_RECURSE;
            break;
        }
        bytes = st->bytes;
        if (!layer->backing || offset >= layer->backing->total_size) {
            /*
             * Unallocated all the way down: reads as zeros (a host offset
             * the layer still has, as for unallocated subclusters, stays).
             */
            st->flags = QGUARD_BLOCK_ZERO |
                        (st->flags & QGUARD_BLOCK_OFFSET_VALID);
            break;
        }
        bytes = MIN(bytes, layer->backing->total_size - offset);
        layer = layer->backing;
        depth++;
    }
    return ret;
}

int bdrv_chain_block_status(QGuardImage *img, uint64_t offset,
                            uint64_t bytes, QGuardBlockStatus *st,
                            GError **errp)
{
    return chain_block_status(img, offset, bytes, st, true, errp);
}

int bdrv_chain_block_status_fast(QGuardImage *img, uint64_t offset,
                                 uint64_t bytes, QGuardBlockStatus *st,
                                 GError **errp)
{
    return chain_block_status(img, offset, bytes, st, false, errp);
}

int qguard_image_block_status(QGuardImage *img, uint64_t offset,
                              uint64_t bytes, QGuardBlockStatus *st,
                              GError **errp)
{
    QGuardBlockStatus full = QGUARD_SIZED(QGuardBlockStatus);
    int ret = sized_check(st->size, SIZE_V1(QGuardBlockStatus, image), errp);

    if (ret < 0) {
        return ret;
    }
    image_lock(img);
    ret = check_request(img, offset, bytes, false, errp);
    if (ret == 0 && bytes) {
        ret = bdrv_chain_block_status(img, offset, bytes, &full, errp);
    }
    image_unlock(img);
    sized_copy_out(st, &full, sizeof(full));
    return ret;
}

/* ---- Information, check, overlap statistics ------------------------------ */

int qguard_image_get_info(QGuardImage *img, QGuardImageInfo **pinfo,
                          GError **errp)
{
    QGuardImageInfo *info = g_new0(QGuardImageInfo, 1);
    int ret = 0;

    image_lock(img);
    info->filename = g_strdup(img->filename);
    info->format = g_strdup(img->drv->format_name);
    info->virtual_size = img->total_size;
    info->actual_size = host_file_allocated(img->file);
    info->backing_filename = g_strdup(img->backing_file);
    info->full_backing_filename = g_strdup(img->full_backing_file);
    info->backing_format = g_strdup(img->backing_format);
    if (img->drv->get_info) {
        ret = img->drv->get_info(img, info, errp);
    }
    image_unlock(img);
    if (ret < 0) {
        qguard_image_info_free(info);
        return ret;
    }
    *pinfo = info;
    return 0;
}

void qguard_image_info_free(QGuardImageInfo *info)
{
    if (!info) {
        return;
    }
    qguard_snapshot_list_free(info->snapshots, info->nb_snapshots);
    qguard_bitmap_list_free(info->bitmaps, info->nb_bitmaps);
    g_free(info->filename);
    g_free(info->format);
    g_free(info->backing_filename);
    g_free(info->full_backing_filename);
    g_free(info->backing_format);
    g_free(info->compat);
    g_free(info->compression_type);
    g_free(info->data_file);
    g_free(info);
}

int qguard_image_check(QGuardImage *img, unsigned fix,
                       QGuardCheckResult *out, QGuardReportFunc *report,
                       void *opaque, GError **errp)
{
    QGuardCheckResult full = QGUARD_SIZED(QGuardCheckResult);
    int ret = sized_check(out->size,
                          SIZE_V1(QGuardCheckResult, compressed_clusters),
                          errp);

    if (ret < 0) {
        return ret;
    }
    sized_copy_out(out, &full, sizeof(full));
    if (!img->drv->check) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "This image format does not support checks");
        return -ENOTSUP;
    }
    if (fix && img->read_only) {
        g_set_error(errp, QGUARD_ERROR, EPERM,
                    "Cannot repair an image opened read-only");
        return -EPERM;
    }
    image_lock(img);
    ret = img->drv->check(img, fix, &full, report, opaque, errp);
    image_unlock(img);
    sized_copy_out(out, &full, sizeof(full));
    return ret;
}

int qguard_image_overlap_stats(QGuardImage *img, QGuardOverlapStats *out)
{
    QGuardOverlapStats full = QGUARD_SIZED(QGuardOverlapStats);
    int ret = sized_check(out->size, SIZE_V1(QGuardOverlapStats, cache_size),
                          NULL);

    if (ret < 0) {
        return ret;
    }
    if (!img->drv->overlap_stats) {
        return -ENOTSUP;
    }
    image_lock(img);
    ret = img->drv->overlap_stats(img, &full);
    image_unlock(img);
    sized_copy_out(out, &full, sizeof(full));
    return ret;
}

void qguard_image_overlap_stats_reset(QGuardImage *img)
{
    if (img->drv->overlap_stats_reset) {
        image_lock(img);
        img->drv->overlap_stats_reset(img);
        image_unlock(img);
    }
}

/* ---- Creation ------------------------------------------------------------ */

/* QEMU formats that exist but cannot create images, as QEMU names them. */
static bool is_qemu_readonly_format(const char *format)
{
    static const char *const names[] = {
        "blkdebug", "blkverify", "bochs", "cloop", "compress",
        "copy-before-write", "copy-on-read", "dmg", "null-aio", "null-co",
        "preallocate", "quorum", "snapshot-access", "throttle", "vvfat",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!strcmp(format, names[i])) {
            return true;
        }
    }
    return false;
}

/*
 * QEMU formats and protocols that can create images but have no size
 * measurement (qemu-img measure -O names them with its own message).
 */
static bool is_qemu_unmeasurable_format(const char *format)
{
    static const char *const names[] = {
        "file", "host_cdrom", "host_device", "nbd", "nvme", "parallels",
        "qcow", "qed", "vdi", "vhdx", "vmdk", "vpc",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!strcmp(format, names[i])) {
            return true;
        }
    }
    return false;
}

static const BlockDriver *create_driver(const char *format, GError **errp)
{
    const BlockDriver *drv = find_driver(format ? format : "raw");

    if (!drv || !drv->create) {
        if (format && is_qemu_readonly_format(format)) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP, "Format driver '%s' "
                        "does not support image creation", format);
        } else {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Unknown file format '%s'", format);
        }
        return NULL;
    }
    return drv;
}

char *qguard_create_prepare(const char *filename, const char *format,
                            QGuardOpts *opts, bool unsafe, GError **errp)
{
    const BlockDriver *drv = create_driver(format, errp);
    const char *backing, *backing_fmt;
    g_autofree char *plain = NULL;
    char *desc;

    if (!drv) {
        return NULL;
    }
    plain = bdrv_plain_filename(filename, errp);
    if (!plain) {
        return NULL;
    }
    desc = drv->create_describe(opts, errp);
    if (!desc) {
        return NULL;
    }
    backing = qguard_opts_get(opts, "backing_file");
    backing_fmt = qguard_opts_get(opts, "backing_fmt");
    if ((backing || backing_fmt) && !drv->supports_backing) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Backing file%s not supported for file format '%s'",
                    backing ? "" : " format", drv->format_name);
        goto fail;
    }
    if (backing) {
        g_autofree char *path = bdrv_resolve_backing_path(filename, backing);
        QGuardImage *b = NULL;
        int ret;

        if (!strcmp(filename, backing)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Error: Trying to create an image with the same "
                        "filename as the backing file");
            goto fail;
        }
        if (unsafe) {
            if (!backing_fmt) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "Backing file specified without backing format");
                goto fail;
            }
        } else {
            g_autoptr(GError) local_err = NULL;

            /* As qemu-img: a backing file that cannot be opened comes first. */
            ret = qguard_image_open(&b, path, backing_fmt, NULL, 0,
                                    &local_err);
            if (ret < 0) {
                g_set_error(errp, QGUARD_ERROR, -ret,
                            "%s\nCould not open backing image.\n",
                            local_err->message);
                goto fail;
            }
            if (!backing_fmt) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "Backing file specified without backing format\n"
                            "Detected format of %s.", qguard_image_format(b));
                qguard_image_close(b, NULL);
                goto fail;
            }
            if (!qguard_opts_has(opts, "size")) {
                g_autofree char *size = g_strdup_printf(
                    "%" PRIu64, qguard_image_size(b));
                qguard_opts_set(opts, "size", size);
            }
            qguard_image_close(b, NULL);
            /* The size may have been filled in: describe again. */
            g_free(desc);
            desc = drv->create_describe(opts, errp);
            if (!desc) {
                return NULL;
            }
        }
    }
    if (!qguard_opts_has(opts, "size")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Image creation needs a size parameter");
        goto fail;
    }
    return desc;

fail:
    g_free(desc);
    return NULL;
}

int qguard_image_create(const char *filename, const char *format,
                        const QGuardOpts *opts, QGuardProgressFunc *progress,
                        void *opaque, GError **errp)
{
    const BlockDriver *drv = create_driver(format, errp);
    g_autofree char *plain = NULL;

    if (!drv) {
        return -EINVAL;
    }
    plain = bdrv_plain_filename(filename, errp);
    if (!plain) {
        return -ENOENT;
    }
    return drv->create(plain, opts, progress, opaque, errp);
}

const char *qguard_file_create_help(void)
{
    return "  extent_size_hint=<size> - Extent size hint for the image file, "
           "0 to disable\n"
           "  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only on "
           "btrfs)\n"
           "  preallocation=<str>    - Preallocation mode (allowed values: "
           "off, falloc, full)\n"
           "  size=<size>            - Virtual disk size\n";
}

char *qguard_create_help(const char *format, GError **errp)
{
    const BlockDriver *drv = create_driver(format, errp);

    return drv ? drv->create_help() : NULL;
}

/* ---- Amend, backing file changes, emptying, measuring ------------------- */

int qguard_image_amend(QGuardImage *img, const QGuardOpts *opts, bool force,
                       QGuardProgressFunc *progress, void *opaque,
                       GError **errp)
{
    int ret;

    if (!img->drv->amend) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Format driver '%s' does not support option amendment",
                    img->drv->format_name);
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->amend(img, opts, force, progress, opaque, errp);
    }
    image_unlock(img);
    return ret;
}

char *qguard_amend_help(const char *format, GError **errp)
{
    const BlockDriver *drv = find_driver(format);

    if (!drv) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Unknown file format '%s'",
                    format);
        return NULL;
    }
    if (!drv->amend_help) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Format driver '%s' does not support option amendment",
                    format);
        return NULL;
    }
    return drv->amend_help();
}

int qguard_image_change_backing_file(QGuardImage *img,
                                     const char *backing_file,
                                     const char *backing_fmt, bool require,
                                     GError **errp)
{
    int ret;

    if ((backing_fmt && !backing_file) ||
        (require && backing_file && !backing_fmt)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "%s", g_strerror(EINVAL));
        return -EINVAL;
    }
    if (!img->drv->change_backing_file) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP, "%s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->change_backing_file(img, backing_file, backing_fmt,
                                            errp);
    }
    if (ret == 0) {
        g_free(img->backing_file);
        g_free(img->backing_format);
        g_free(img->full_backing_file);
        img->backing_file = g_strdup(backing_file);
        img->backing_format = g_strdup(backing_fmt);
        img->full_backing_file = backing_file ?
            bdrv_resolve_backing_path(img->filename, backing_file) : NULL;
    }
    image_unlock(img);
    return ret;
}

int qguard_image_make_empty(QGuardImage *img, GError **errp)
{
    int ret;

    if (!img->drv->make_empty) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP, "%s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->make_empty(img, errp);
    }
    image_unlock(img);
    return ret;
}

int qguard_measure_opts_valid(const char *format, const QGuardOpts *opts,
                              GError **errp)
{
    const BlockDriver *drv = find_driver(format);

    return !drv || !drv->measure_check_opts ||
           drv->measure_check_opts(opts, errp) ? 0 : -EINVAL;
}

static int measure(const char *format, const QGuardOpts *opts,
                   QGuardImage *in, QGuardMeasureInfo *info, GError **errp)
{
    const BlockDriver *drv = find_driver(format);

    if (!drv && is_qemu_readonly_format(format)) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP, "Format driver '%s' "
                    "does not support image creation", format);
        return -ENOTSUP;
    }
    if (!drv && !is_qemu_unmeasurable_format(format)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Unknown file format '%s'",
                    format);
        return -EINVAL;
    }
    if (!drv || !drv->measure) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Block driver '%s' does not support size measurement",
                    format);
        return -ENOTSUP;
    }
    return drv->measure(opts, in, info, errp);
}

int qguard_measure(const char *format, const QGuardOpts *opts,
                   QGuardImage *in, QGuardMeasureInfo *out, GError **errp)
{
    QGuardMeasureInfo full = QGUARD_SIZED(QGuardMeasureInfo);
    int ret = sized_check(out->size, SIZE_V1(QGuardMeasureInfo, bitmaps),
                          errp);

    if (ret < 0) {
        return ret;
    }
    ret = measure(format, opts, in, &full, errp);
    sized_copy_out(out, &full, sizeof(full));
    return ret;
}

const char *qguard_overlap_type_name(int bitnr)
{
    return qcow2_overlap_type_name(bitnr);
}

int qguard_overlap_type_count(void)
{
    return QCOW2_OL_MAX_BITNR;
}

/* ---- Internal snapshots -------------------------------------------------- */

static int snapshot_op(QGuardImage *img, int op, const char *name,
                       GError **errp)
{
    int ret;

    if (!img->drv->snapshot) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Block format '%s' used by device '%s' does not support "
                    "internal snapshots", img->drv->format_name,
                    img->filename);
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->snapshot(img, op, name, errp);
        note_request(img, ret, 0);
    }
    image_unlock(img);
    return ret;
}

int qguard_snapshot_create(QGuardImage *img, const char *name, GError **errp)
{
    return snapshot_op(img, BDRV_SNAPSHOT_CREATE, name, errp);
}

int qguard_snapshot_apply(QGuardImage *img, const char *id_or_name,
                          GError **errp)
{
    return snapshot_op(img, BDRV_SNAPSHOT_APPLY, id_or_name, errp);
}

int qguard_snapshot_delete(QGuardImage *img, const char *id_or_name,
                           GError **errp)
{
    return snapshot_op(img, BDRV_SNAPSHOT_DELETE, id_or_name, errp);
}

int qguard_snapshot_load_tmp(QGuardImage *img, const char *id,
                             const char *name, GError **errp)
{
    int ret;

    if (!id && !name) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "snapshot_id and name are both NULL");
        return -EINVAL;
    }
    if (!img->read_only) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Device is not readonly");
        return -EINVAL;
    }
    if (!img->drv->snapshot_load_tmp) {
        /* qemu-img's images have no device name. */
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Block format '%s' used by device '' does not support "
                    "temporarily loading internal snapshots",
                    img->drv->format_name);
        return -ENOTSUP;
    }
    image_lock(img);
    ret = img->drv->snapshot_load_tmp(img, id, name, errp);
    image_unlock(img);
    return ret;
}

int qguard_snapshot_list(QGuardImage *img, QGuardSnapshotInfo **list,
                         guint *count, GError **errp)
{
    QGuardImageInfo *info;
    int ret = qguard_image_get_info(img, &info, errp);

    if (ret < 0) {
        return ret;
    }
    *list = info->snapshots;
    *count = info->nb_snapshots;
    info->snapshots = NULL;
    info->nb_snapshots = 0;
    qguard_image_info_free(info);
    return 0;
}

void qguard_snapshot_list_free(QGuardSnapshotInfo *list, guint count)
{
    guint i;

    for (i = 0; i < count; i++) {
        g_free(list[i].id);
        g_free(list[i].name);
    }
    g_free(list);
}

/* ---- Persistent dirty bitmaps ------------------------------------------- */

/*
 * QEMU names images in some bitmap errors by node name: "#block" and a
 * counter (format nodes get the odd ones) with two random digits.  The
 * digits are fixed here so that messages are reproducible.
 */
static char *node_name(QGuardImage *img)
{
    if (img->node_name) {
        return g_strdup(img->node_name);
    }
    return g_strdup_printf("#block%d00", 2 * img->chain_depth + 1);
}

bool qguard_image_supports_bitmaps(const QGuardImage *img)
{
    return img->drv->supports_bitmaps && img->drv->supports_bitmaps(img);
}

static int bitmap_not_found(const char *name, GError **errp)
{
    g_set_error(errp, QGUARD_ERROR, ENOENT, "Dirty bitmap '%s' not found",
                name);
    return -ENOENT;
}

int qguard_bitmap_add(QGuardImage *img, const char *name,
                      uint32_t granularity, bool disabled, GError **errp)
{
    g_autofree char *node = node_name(img);
    int ret;

    if (!img->drv->bitmap_add) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Can't store persistent bitmaps to %s: %s", node,
                    g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->bitmap_add(img, node, name, granularity, disabled,
                                   errp);
    }
    image_unlock(img);
    return ret;
}

static int bitmap_op(QGuardImage *img, int op, const char *name,
                     GError **errp)
{
    int ret;

    if (!img->drv->bitmap_op) {
        return bitmap_not_found(name, errp);
    }
    image_lock(img);
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0) {
        ret = img->drv->bitmap_op(img, op, name, errp);
    }
    image_unlock(img);
    return ret;
}

int qguard_bitmap_remove(QGuardImage *img, const char *name, GError **errp)
{
    return bitmap_op(img, BDRV_BITMAP_REMOVE, name, errp);
}

int qguard_bitmap_clear(QGuardImage *img, const char *name, GError **errp)
{
    return bitmap_op(img, BDRV_BITMAP_CLEAR, name, errp);
}

int qguard_bitmap_enable(QGuardImage *img, const char *name, GError **errp)
{
    return bitmap_op(img, BDRV_BITMAP_ENABLE, name, errp);
}

int qguard_bitmap_disable(QGuardImage *img, const char *name, GError **errp)
{
    return bitmap_op(img, BDRV_BITMAP_DISABLE, name, errp);
}

int qguard_bitmap_merge(QGuardImage *img, const char *target,
                        QGuardImage *src, const char *source, GError **errp)
{
    /* Two images are locked in address order, whoever merges into whom. */
    QGuardImage *first = src && (uintptr_t)src < (uintptr_t)img ? src : img;
    QGuardImage *second = first == img ? src : img;
    int ret;

    if (!img->drv->bitmap_merge) {
        return bitmap_not_found(target, errp);
    }
    image_lock(first);
    if (second && second != first) {
        image_lock(second);
    }
    ret = check_request(img, 0, 0, true, errp);
    if (ret == 0 && src != img) {
        ret = check_request(src, 0, 0, false, errp);
    }
    if (ret == 0) {
        ret = img->drv->bitmap_merge(img, target, src, source, errp);
    }
    if (second && second != first) {
        image_unlock(second);
    }
    image_unlock(first);
    return ret;
}

int qguard_bitmap_list(QGuardImage *img, QGuardBitmapInfo **list,
                       guint *count, GError **errp)
{
    int ret;

    *list = NULL;
    *count = 0;
    if (!img->drv->bitmap_list) {
        *list = g_new0(QGuardBitmapInfo, 1);
        return 0;
    }
    image_lock(img);
    ret = check_request(img, 0, 0, false, errp);
    if (ret == 0) {
        ret = img->drv->bitmap_list(img, list, count, errp);
    }
    image_unlock(img);
    return ret;
}

void qguard_bitmap_list_free(QGuardBitmapInfo *list, guint count)
{
    guint i;

    for (i = 0; i < count; i++) {
        g_free(list[i].name);
    }
    g_free(list);
}

int qguard_bitmap_status(QGuardImage *img, const char *name,
                         uint64_t offset, uint64_t bytes, bool *dirty,
                         uint64_t *pnum, GError **errp)
{
    int ret;

    if (!img->drv->bitmap_status) {
        return bitmap_not_found(name, errp);
    }
    /* Exclusive: the first look at a bitmap loads it. */
    image_lock(img);
    ret = check_request(img, offset, bytes, false, errp);
    if (ret == 0 && !bytes) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "%s", g_strerror(EINVAL));
        ret = -EINVAL;
    }
    if (ret == 0) {
        ret = img->drv->bitmap_status(img, name, offset, bytes, dirty, pnum,
                                      errp);
    }
    image_unlock(img);
    return ret;
}
