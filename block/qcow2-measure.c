/* SPDX-License-Identifier: MIT */
/*
 * qcow2 measure: how large a qcow2 file would have to be (qemu-img measure).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The numbers are QEMU's, computed the way QEMU 7.2 computes them, since
 * scripts size their storage with them: the "fully allocated" size is the
 * header, every L2 and L1 entry, every data cluster and the refcount
 * structures that count all of it; "required" leaves out the data clusters
 * the source does not use.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

#define L2E_SIZE_NORMAL   8
#define L2E_SIZE_EXTENDED 16
#define SUBCLUSTERS_PER_CLUSTER 32
#define BITMAP_DIR_ENTRY_SIZE 24
#define BITMAP_TABLE_ENTRY_SIZE 8

/* Options of the file the image would be created in, besides size. */
static int file_opt_type(const char *name)
{
    if (!strcmp(name, "nocow")) {
        return OPT_BOOL;
    }
    if (!strcmp(name, "extent_size_hint")) {
        return OPT_SIZE;
    }
    return -1;
}

bool qcow2_measure_check_opts(const QGuardOpts *opts, GError **errp)
{
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        int type = qcow2_create_opt_type(key);

        if (type < 0) {
            type = file_opt_type(key);
        }
        if (type < 0) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Invalid parameter '%s'", key);
            return false;
        }
        if (!qguard_check_opt_syntax(key, qguard_opts_value(opts, i), type,
                                    errp)) {
            return false;
        }
    }
    return true;
}

/*
 * Refcount blocks and table clusters for @clusters clusters plus
 * themselves: the fixed point where they count everything, themselves
 * included.
 */
static uint64_t refcount_metadata_size(uint64_t clusters,
                                       uint64_t cluster_size,
                                       int refcount_order)
{
    uint64_t blocks_per_table_cluster = cluster_size / 8;
    uint64_t refcounts_per_block = cluster_size * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks, refcounts_per_block);
        table = DIV_ROUND_UP(blocks, blocks_per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

static uint64_t fully_allocated_size(uint64_t size, uint64_t cluster_size,
                                     int refcount_order, size_t l2e_size)
{
    uint64_t aligned = ROUND_UP(size, cluster_size);
    uint64_t meta = cluster_size;               /* header */
    uint64_t nl2e, nl1e;

    nl2e = ROUND_UP(aligned / cluster_size, cluster_size / l2e_size);
    meta += nl2e * l2e_size;
    nl1e = ROUND_UP(nl2e * l2e_size / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + aligned) / cluster_size,
                                   cluster_size, refcount_order);
    return meta + aligned;
}

/* Data clusters that a copy of @in needs: everything that is not zero. */
static int count_data(QGuardImage *in, uint64_t cluster_size,
                      uint64_t *required, GError **errp)
{
    uint64_t size = qguard_image_size(in);
    uint64_t offset, pnum;

    *required = 0;
    for (offset = 0; offset < size; offset += pnum) {
        QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
        g_autoptr(GError) err = NULL;
        int ret = qguard_image_block_status(in, offset, size - offset, &st,
                                            &err);

        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Unable to get block status");
        }
        pnum = st.bytes;
        if (st.flags & QGUARD_BLOCK_ZERO) {
            continue;
        }
        if ((st.flags & (QGUARD_BLOCK_DATA | QGUARD_BLOCK_ALLOCATED)) ==
            (QGUARD_BLOCK_DATA | QGUARD_BLOCK_ALLOCATED)) {
            /* The rest of the cluster comes with it: skip to its end. */
            pnum = ROUND_UP(offset + pnum, cluster_size) - offset;
            *required += offset % cluster_size + pnum;
        }
    }
    return 0;
}

/* Room for copies of @in's persistent bitmaps (qcow2 v3 sources only). */
static int bitmaps_size(QGuardImage *in, uint64_t cluster_size,
                        bool *supported, uint64_t *bytes, GError **errp)
{
    QGuardImageInfo *info;
    uint64_t dir_size = 0;
    guint i;
    int ret;

    *supported = false;
    *bytes = 0;
    ret = qguard_image_get_info(in, &info, errp);
    if (ret < 0) {
        return ret;
    }
    if (info->is_qcow2 && !g_strcmp0(info->compat, "1.1")) {
        *supported = true;
        for (i = 0; i < info->nb_bitmaps; i++) {
            uint32_t granularity = MAX(info->bitmaps[i].granularity, 1);
            uint64_t bits = DIV_ROUND_UP(info->virtual_size, granularity);
            uint64_t clusters = DIV_ROUND_UP(DIV_ROUND_UP(bits, 8),
                                             cluster_size);

            *bytes += clusters * cluster_size;
            *bytes += ROUND_UP(clusters * BITMAP_TABLE_ENTRY_SIZE,
                               cluster_size);
            dir_size += ROUND_UP(BITMAP_DIR_ENTRY_SIZE +
                                 strlen(info->bitmaps[i].name), 8);
        }
        *bytes += ROUND_UP(dir_size, cluster_size);
    }
    qguard_image_info_free(info);
    return 0;
}

int qcow2_measure(const QGuardOpts *opts, QGuardImage *in,
                  QGuardMeasureInfo *info, GError **errp)
{
    const char *str;
    bool extended_l2 = false, backing, full_prealloc = false;
    uint64_t cluster_size = 65536, refcount_bits = 16, size = 0;
    uint64_t required = 0, l2_tables;
    size_t l2e_size;
    int version = 3, cluster_bits;
    int ret;

    str = qguard_opts_get(opts, "extended_l2");
    if (str) {
        qguard_parse_bool("extended_l2", str, &extended_l2, NULL);
    }
    str = qguard_opts_get(opts, "cluster_size");
    if (str) {
        qguard_parse_size(str, &cluster_size, NULL);
    }
    cluster_bits = cluster_size ? g_bit_nth_lsf(cluster_size, -1) : 32;
    if (cluster_bits < MIN_CLUSTER_BITS || cluster_bits > MAX_CLUSTER_BITS ||
        (1ULL << cluster_bits) != cluster_size) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cluster size must be a power of two between %d and %dk",
                    1 << MIN_CLUSTER_BITS, 1 << (MAX_CLUSTER_BITS - 10));
        return -EINVAL;
    }
    if (extended_l2 &&
        cluster_size < (1 << MIN_CLUSTER_BITS) * SUBCLUSTERS_PER_CLUSTER) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Extended L2 entries are only supported with cluster "
                    "sizes of at least %u bytes",
                    (1 << MIN_CLUSTER_BITS) * SUBCLUSTERS_PER_CLUSTER);
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "compat");
    if (str && !strcmp(str, "0.10")) {
        version = 2;
    } else if (str && strcmp(str, "1.1")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Invalid compatibility level: '%s'", str);
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "refcount_bits");
    if (str) {
        refcount_bits = g_ascii_strtoull(str, NULL, 0);
    }
    if (refcount_bits > 64 || !refcount_bits ||
        (refcount_bits & (refcount_bits - 1))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Refcount width must be a power of two and may not "
                    "exceed 64 bits");
        return -EINVAL;
    }
    if (version < 3 && refcount_bits != 16) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Different refcount widths than 16 bits require "
                    "compatibility level 1.1 or above (use compat=1.1 or "
                    "greater)");
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "preallocation");
    if (str && strcmp(str, "off") && strcmp(str, "metadata")) {
        if (strcmp(str, "falloc") && strcmp(str, "full")) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "invalid parameter value: %s", str);
            return -EINVAL;
        }
        full_prealloc = true;
    }
    backing = qguard_opts_has(opts, "backing_file");
    if (qguard_opts_has(opts, "encrypt.format")) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Encrypted images are not supported by qguard");
        return -ENOTSUP;
    }

    str = qguard_opts_get(opts, "size");
    if (str) {
        qguard_parse_size(str, &size, NULL);
    }
    size = ROUND_UP(size, cluster_size);
    l2e_size = extended_l2 ? L2E_SIZE_EXTENDED : L2E_SIZE_NORMAL;
    l2_tables = DIV_ROUND_UP(size / cluster_size, cluster_size / l2e_size);
    if (l2_tables * 8 > QCOW_MAX_L1_SIZE) {
        g_set_error(errp, QGUARD_ERROR, EFBIG, "The image size is too large "
                    "(try using a larger cluster size)");
        return -EFBIG;
    }

    if (in) {
        size = ROUND_UP(qguard_image_size(in), cluster_size);
        if (backing) {
            /*
             * Nothing says how much the new backing file shares with the
             * source: assume nothing.
             */
            required = size;
        } else {
            ret = count_data(in, cluster_size, &required, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    if (full_prealloc) {
        required = size;
    }

    info->fully_allocated = fully_allocated_size(size, cluster_size,
                                                 g_bit_nth_lsf(refcount_bits,
                                                               -1),
                                                 l2e_size);
    /* Metadata for the full size is still counted: an overestimate. */
    info->required = info->fully_allocated - size + required;
    if (version >= 3 && in) {
        ret = bitmaps_size(in, cluster_size, &info->has_bitmaps,
                           &info->bitmaps, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
