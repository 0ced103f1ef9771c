/* SPDX-License-Identifier: MIT */
/*
 * qcow2 and its backing chain: naming a new backing file (qemu-img rebase)
 * and emptying an image whose data went into its backing file (qemu-img
 * commit).
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

int qcow2_change_backing_file(QGuardImage *img, const char *backing_file,
                              const char *backing_fmt, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    char *old_file = s->image_backing_file;
    char *old_fmt = s->image_backing_format;
    int ret;

    /* A raw data file must stay the whole truth about the disk. */
    if ((backing_file && data_file_is_raw(s)) ||
        (backing_file && strlen(backing_file) > QCOW2_MAX_BACKING_NAME)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "%s", g_strerror(EINVAL));
        return -EINVAL;
    }
    s->image_backing_file = g_strdup(backing_file);
    s->image_backing_format = backing_file ? g_strdup(backing_fmt) : NULL;
    ret = qcow2_update_header(s);
    if (ret < 0) {
        g_free(s->image_backing_file);
        g_free(s->image_backing_format);
        s->image_backing_file = old_file;
        s->image_backing_format = old_fmt;
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
        return ret;
    }
    g_free(old_file);
    g_free(old_fmt);
    return 0;
}

/*
 * QEMU resets the whole file (new empty tables at fixed places) with the
 * dirty bit set, so a crash in between leaves an image that needs repair.
 * Here the image is emptied the way a discard of everything would do it:
 * every L2 entry is cleared in order with the refcounts, then the L2 tables
 * are dropped from the L1 table, and the file is cut after the last cluster
 * in use.  Interrupted, the image keeps some of its data, consistent.
 */
int qcow2_make_empty(QGuardImage *img, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t end = ROUND_UP(img->total_size, (uint64_t)s->cluster_size);
    int64_t end_cluster, len;
    int ret;

    ret = qcow2_discard_clusters(s, 0, end, true, QCOW2_DISCARD_SNAPSHOT);
    if (ret >= 0) {
        ret = qcow2_shrink_l1_table(s, 0);
    }
    if (ret >= 0) {
        ret = qcow2_flush_metadata(s);
    }
    if (ret < 0) {
        return qcow2_error_propagate(ret, errp);
    }
    /* Best effort, as after a shrink: only space is at stake. */
    end_cluster = qcow2_host_end_cluster(s);
    len = host_file_length(s->file);
    if (end_cluster >= 0 && len >= 0 &&
        (end_cluster << s->cluster_bits) < len) {
        host_file_truncate(s->file, end_cluster << s->cluster_bits);
    }
    return 0;
}
