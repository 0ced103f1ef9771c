/* SPDX-License-Identifier: MIT */
/*
 * qcow2 external data files (incompatible bit 2): opening, creating and
 * writing the file that holds the guest clusters.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * With a data file, the qcow2 file holds only metadata and every guest
 * cluster lives in the data file at its own guest offset.  The data file
 * is not refcounted: a cluster is allocated by pointing its L2 entry at
 * the guest offset with COPIED set (refcount 1 implied), so offset 0 with
 * COPIED is a valid allocation there.  Freeing a cluster only passes the
 * discard on to the data file.  The overlap check guards the metadata
 * file; the data file has no metadata to protect.
 *
 * The file is named by the "data-file.filename" runtime option or by the
 * header extension; like QEMU 7.2, a relative name in the extension is
 * taken relative to the working directory, not to the image.  It is
 * locked as QEMU locks a data child: the same permissions as the image,
 * but only resizing is denied to others, so another process may write it.
 */
#include <string.h>

#include "qcow2.h"

bool qcow2_is_data_file_option(const char *name)
{
    return !strcmp(name, "data-file") || !strcmp(name, "data-file.filename") ||
           !strcmp(name, "data-file.driver") ||
           !strcmp(name, "data-file.locking");
}

/* Open @name as the data file of @s, with the locks QEMU takes. */
static int open_data_file(BDRVQcow2State *s, const char *name,
                          const QGuardOpts *opts, GError **errp)
{
    QGuardImage *img = s->img;
    const char *driver = qguard_opts_get(opts, "data-file.driver");
    const char *locking = qguard_opts_get(opts, "data-file.locking");
    const char *share = qguard_opts_get(opts, "force-share");
    g_autoptr(GError) local_err = NULL;
    bool no_lock = false, shared = false;
    int ret;

    if (bdrv_file_child_opts(driver, locking, &no_lock, errp) < 0) {
        return -EINVAL;
    }
    /* force-share is inherited by every child, the data file included. */
    if (share && qguard_parse_bool("force-share", share, &shared, NULL) &&
        shared) {
        no_lock = true;
    }
    /* The data file follows the image's cache mode, as QEMU's child does. */
    ret = host_file_open(&s->data_file, name,
                         (img->read_only ? 0 : HOST_FILE_RDWR) |
                         HOST_FILE_NO_LOCK |
                         (img->flags & QGUARD_OPEN_NOCACHE ? HOST_FILE_DIRECT
                                                           : 0) |
                         (img->flags & QGUARD_OPEN_NO_FLUSH ?
                          HOST_FILE_NO_FLUSH : 0), &local_err);
    if (ret < 0) {
        s->data_file = NULL;
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", local_err->message);
        return ret;
    }
    if (!no_lock) {
        ret = host_file_lock_data(s->data_file, !img->read_only, errp);
        if (ret < 0) {
            host_file_close(s->data_file);
            s->data_file = NULL;
            return ret;
        }
    }
    return 0;
}

int qcow2_data_file_open(BDRVQcow2State *s, const QGuardOpts *opts,
                         GError **errp)
{
    const char *ref = qguard_opts_get(opts, "data-file");
    const char *name = qguard_opts_get(opts, "data-file.filename");

    if (ref) {
        /* QEMU reads a plain "data-file" as a reference to a node. */
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cannot find device='%s' nor node-name='%s'", ref, ref);
        return -EINVAL;
    }
    if (!(s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)) {
        if (name) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "'data-file' can only be set for images with an "
                        "external data file");
            return -EINVAL;
        }
        if (s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "data-file-raw requires a data file");
            return -EINVAL;
        }
        s->data_file = s->file;
        return 0;
    }
    if (s->img->flags & QGUARD_OPEN_NO_IO) {
        /* Described, never read: the data file is not needed (nor locked). */
        return 0;
    }
    if (!name) {
        name = s->image_data_file;
    }
    if (!name) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "'data-file' is required for this image");
        return -EINVAL;
    }
    return open_data_file(s, name, opts, errp);
}

void qcow2_data_file_close(BDRVQcow2State *s)
{
    if (s->data_file && s->data_file != s->file) {
        host_file_close(s->data_file);
    }
    s->data_file = NULL;
}

int qcow2_data_file_create(const char *name, GError **errp)
{
    g_autoptr(GError) local_err = NULL;
    HostFile *file;
    int ret;

    ret = host_file_open(&file, name, HOST_FILE_RDWR | HOST_FILE_CREATE,
                         &local_err);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", local_err->message);
        return ret;
    }
    host_file_close(file);
    return 0;
}

int qcow2_flush_data_file(BDRVQcow2State *s)
{
    if (!has_data_file(s) || !s->data_file || s->img->read_only) {
        return 0;
    }
    return host_file_flush(s->data_file);
}

int qcow2_pread_data(BDRVQcow2State *s, uint64_t offset, void *buf,
                     uint64_t bytes)
{
    if (!s->data_file) {
        return -ENOMEDIUM;
    }
    return host_file_pread(s->data_file, offset, buf, bytes);
}

int qcow2_pwritev_data(BDRVQcow2State *s, uint64_t offset,
                       const struct iovec *iov, int iovcnt, uint64_t bytes)
{
    if (!has_data_file(s)) {
        return qcow2_pwritev_checked(s, 0, offset, iov, iovcnt, bytes);
    }
    if (bdrv_is_broken(s->img)) {
        return -EIO;
    }
    if (!s->data_file) {
        return -ENOMEDIUM;
    }
    return host_file_pwritev(s->data_file, offset, iov, iovcnt);
}

/*
 * A raw data file must read as the guest disk by itself, so zeros that the
 * metadata records (the zero flag) are written into it too.
 */
int qcow2_data_file_zero(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                         bool may_unmap)
{
    if (!data_file_is_raw(s)) {
        return 0;
    }
    if (!s->data_file) {
        return -ENOMEDIUM;
    }
    return host_file_write_zeroes(s->data_file, offset, bytes, may_unmap);
}
