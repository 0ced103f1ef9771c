/* SPDX-License-Identifier: MIT */
/*
 * qcow2 resize: growing and shrinking the virtual disk (qemu-img resize,
 * qemu-io truncate, and create's preallocation through it).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A grown area reads as zeros, as in QEMU 7.2, even where a backing file
 * reaches into it: the area is written as zero clusters, and a v2 image,
 * which has none, refuses a grow past the cluster of the old end
 * with QEMU's message (inside that cluster it writes zeros, as QEMU does).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/*
 * The data file follows the disk size; falloc and full preallocation
 * reserve or write the added range in it, since that is where the guest
 * clusters go.
 */
static int resize_data_file(BDRVQcow2State *s, uint64_t old_size,
                            uint64_t size, Qcow2PreallocMode mode)
{
    static const uint8_t zeros[64 * 1024];
    uint64_t off;
    int ret;

    if (!has_data_file(s) || !s->data_file) {
        return 0;
    }
    ret = host_file_truncate(s->data_file, size);
    if (ret < 0 || size <= old_size) {
        return ret;
    }
    if (mode == QCOW2_PREALLOC_FALLOC) {
        return host_file_allocate(s->data_file, old_size, size - old_size);
    }
    for (off = old_size; mode == QCOW2_PREALLOC_FULL && off < size;
         off += sizeof(zeros)) {
        ret = host_file_pwrite(s->data_file, off, zeros,
                               MIN(sizeof(zeros), size - off));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * A grown disk must read as zeros even where a longer backing file has
 * data (QEMU's bdrv_co_truncate()): whole clusters get the zero flag, which
 * costs L2 entries but no data, whole subclusters of a partial last cluster
 * their zero bits (extended L2), and the rest real zeros.
 */
static int zero_grown_area(BDRVQcow2State *s, uint64_t old_size,
                           uint64_t size, GError **errp)
{
    uint64_t zero_start = ROUND_UP(old_size, (uint64_t)s->subcluster_size);
    uint64_t full_start = ROUND_UP(zero_start, (uint64_t)s->cluster_size);
    int ret = 0;

    if (size > zero_start && full_start > zero_start) {
        uint64_t head = ROUND_UP(MIN(full_start, size) - zero_start,
                                 (uint64_t)s->subcluster_size);

        ret = qcow2_zero_subcluster_range(s, zero_start, head, false);
    }
    if (ret >= 0 && size > full_start) {
        ret = qcow2_zero_clusters(s, full_start, size - full_start, false);
    }
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Failed to zero out new clusters");
    }
    if (zero_start > old_size) {
        ret = qcow2_write_zero_buffer(s, old_size,
                                      MIN(zero_start, size) - old_size);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to zero out the new area");
        }
    }
    return 0;
}

int qcow2_resize(QGuardImage *img, uint64_t size, bool shrink,
                 const char *prealloc, QGuardProgressFunc *progress,
                 void *opaque, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t old_size = img->total_size;
    Qcow2PreallocMode mode;
    bool zero_new;
    uint8_t buf[8];
    int ret;

    if (!prealloc || !strcmp(prealloc, "off")) {
        mode = QCOW2_PREALLOC_OFF;
    } else if (!strcmp(prealloc, "metadata")) {
        mode = QCOW2_PREALLOC_METADATA;
    } else if (!strcmp(prealloc, "falloc")) {
        mode = QCOW2_PREALLOC_FALLOC;
    } else if (!strcmp(prealloc, "full")) {
        mode = QCOW2_PREALLOC_FULL;
    } else {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Invalid preallocation mode '%s'", prealloc);
        return -EINVAL;
    }
    if (s->nb_snapshots && s->qcow_version < 3) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    if (size % 512) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "The new size must be a multiple of 512");
        return -EINVAL;
    }
    if (data_file_is_raw(s) && mode == QCOW2_PREALLOC_OFF &&
        size > old_size) {
        /* The raw data file stays the whole disk: map what is added. */
        mode = QCOW2_PREALLOC_METADATA;
    }
    if (size < old_size && !shrink) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Use the --shrink option to perform a shrink operation.");
        return -EINVAL;
    }
    /* Only a backing file longer than the disk can show through a grow. */
    zero_new = size > old_size && img->backing &&
               img->backing->total_size > old_size;
    if (zero_new && s->qcow_version < 3 &&
        size > ROUND_UP(old_size, (uint64_t)s->cluster_size)) {
        /*
         * Without the zero flag QEMU refuses a grow that needs zero
         * clusters (one past the old end's cluster), before changing
         * anything.  Inside that cluster it writes zeros.
         */
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Failed to zero out new clusters: %s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    ret = qcow2_bitmaps_prepare_resize(s, size, errp);
    if (ret < 0) {
        return ret;
    }
    if (size < old_size) {
        uint64_t cs = s->cluster_size;

        if (mode != QCOW2_PREALLOC_OFF) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                        "Preallocation can only be used for growing images");
            return -ENOTSUP;
        }
        ret = qcow2_discard_clusters(s, ROUND_UP(size, cs),
                                     ROUND_UP(old_size, cs) -
                                     ROUND_UP(size, cs),
                                     true, QCOW2_DISCARD_ALWAYS);
        if (ret >= 0) {
            ret = qcow2_shrink_l1_table(s, size_to_l1(s, size));
        }
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to discard cropped clusters");
        }
        /* The tables stop naming the cropped clusters before that. */
        ret = qcow2_flush_metadata(s);
        if (ret >= 0) {
            ret = qcow2_shrink_reftable(s);
        }
        if (ret < 0) {
            g_set_error(errp, QGUARD_ERROR, -ret,
                        "Failed to discard unused refblocks: %s",
                        g_strerror(-ret));
            return ret;
        }
    } else if (size > old_size) {
        uint64_t l1_needed = size_to_l1(s, size);
        if (l1_needed > QCOW_MAX_L1_SIZE / 8 || size > INT64_MAX) {
            g_set_error(errp, QGUARD_ERROR, EFBIG,
                        "Failed to grow the L1 table: %s", g_strerror(EFBIG));
            return -EFBIG;
        }
        /* Preallocation writes the grown table once, with its entries. */
        ret = mode == QCOW2_PREALLOC_OFF
              ? qcow2_grow_l1_table(s, l1_needed, true) : 0;
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Failed to grow the L1 table");
        }
    }
    if (size > old_size) {
        uint64_t saved = img->total_size;
        img->total_size = size;
        ret = qcow2_grow_default_l2_cache(s);
        img->total_size = saved;
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Could not flush metadata");
        }
    }
    ret = resize_data_file(s, old_size, size, mode);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret,
                                "Could not resize external data file");
    }
    ret = qcow2_preallocate(s, old_size, size > old_size ? size - old_size : 0,
                            mode, progress, opaque);
    if (ret < 0) {
        /* QEMU's words: data preallocation happens in its file layer. */
        g_set_error(errp, QGUARD_ERROR, -ret, "%s: %s",
                    mode == QCOW2_PREALLOC_METADATA ?
                    "Allocating clusters failed" :
                    mode == QCOW2_PREALLOC_FALLOC ?
                    "Failed to resize underlying file: Could not preallocate "
                    "new data" :
                    "Failed to resize underlying file: Could not write zeros "
                    "for preallocation", g_strerror(-ret));
        return ret;
    }
    if (zero_new) {
        ret = zero_grown_area(s, old_size, size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Could not flush metadata");
    }
    if (size < old_size) {
        /* Give back the space past the last cluster still in use. */
        int64_t end = qcow2_host_end_cluster(s);
        int64_t len = host_file_length(s->file);
        if (end >= 0 && len >= 0 && (end << s->cluster_bits) < len) {
            host_file_truncate(s->file, end << s->cluster_bits);
        }
    }
    be_put64(buf, size);
    ret = qcow2_write_header_field(s, 24, buf, 8);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to update the image "
                    "size: %s", g_strerror(-ret));
        return ret;
    }
    img->total_size = size;
    s->l1_vm_state_index = size_to_l1(s, size);
    qcow2_bitmaps_resized(s, size);
    return 0;
}
