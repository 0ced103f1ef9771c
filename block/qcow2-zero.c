/* SPDX-License-Identifier: MIT */
/*
 * qcow2 zero writes that cover part of a cluster (of a subcluster, with
 * extended L2 entries), as QEMU 7.2 does them.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Where the rest of the unit already reads as zeros through the whole
 * backing chain (block status, not data: a data cluster full of zeros
 * does not count) and this layer has no data there, the whole unit
 * becomes a zero cluster (subcluster); anything else gets real zeros
 * written over the range, with copy-on-write of the rest.  So a partial
 * zero write over a backing file that reads as zeros there allocates no
 * data cluster, as "qemu-img map" shows.
 */
#include "qcow2.h"

/*
 * Does [offset, offset + bytes) read as zeros by its block status, as
 * QEMU's is_zero() asks it: clamped to the disk's whole sectors, status
 * after status, since zeros of different kinds (a zero cluster, the end
 * of a backing file) come as separate answers.
 */
int qcow2_range_reads_zero(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, bool *zero)
{
    uint64_t disk_end = s->img->total_size & ~511ULL;

    *zero = true;
    if (offset >= disk_end) {
        return 0;
    }
    bytes = MIN(bytes, disk_end - offset);
    while (bytes) {
        QGuardBlockStatus st;
        int ret = bdrv_chain_block_status(s->img, offset, bytes, &st, NULL);

        if (ret < 0) {
            return ret;
        }
        if (!(st.flags & QGUARD_BLOCK_ZERO) || !st.bytes) {
            *zero = false;
            return 0;
        }
        offset += st.bytes;
        bytes -= st.bytes;
    }
    return 0;
}

/*
 * QEMU 7.2's bdrv_co_is_zero_fast(), with which handle_alloc_space()
 * decides whether copy-on-write may make zeros instead of copying: one
 * status over the whole range, files not asked for holes, and nothing at
 * or past the end of the disk counts as zeros.
 */
int qcow2_range_is_zero_fast(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes, bool *zero)
{
    uint64_t disk_end = s->img->total_size & ~511ULL;
    QGuardBlockStatus st;
    int ret;

    *zero = !bytes;
    if (!bytes || offset >= disk_end || bytes > disk_end - offset) {
        return 0;
    }
    ret = bdrv_chain_block_status_fast(s->img, offset, bytes, &st, NULL);
    if (ret < 0) {
        return ret;
    }
    *zero = (st.flags & QGUARD_BLOCK_ZERO) && st.bytes == bytes;
    return 0;
}

static int write_zeros(BDRVQcow2State *s, uint64_t offset, uint64_t bytes)
{
    g_autofree uint8_t *zeros = g_malloc0(bytes);

    return qcow2_write_guest(s, offset, bytes, zeros);
}

int qcow2_zero_partial(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                       bool may_unmap, bool check_only)
{
    uint64_t unit = s->subcluster_size;
    uint64_t start = offset & ~(unit - 1);
    uint64_t end = offset + bytes;
    /* A request up to the end of the disk has no tail to look at. */
    uint64_t unit_end = end == s->img->total_size ? end : start + unit;
    uint64_t n = unit, host;
    QCow2ClusterType type;
    bool zero;
    int ret;

    ret = qcow2_range_reads_zero(s, start, offset - start, &zero);
    if (ret == 0 && zero) {
        ret = qcow2_range_reads_zero(s, end, unit_end - end, &zero);
    }
    if (ret == 0 && zero) {
        ret = qcow2_get_host_offset(s, start, &n, &host, &type);
        zero = type == QCOW2_CLUSTER_UNALLOCATED ||
               type == QCOW2_CLUSTER_ZERO_PLAIN ||
               type == QCOW2_CLUSTER_ZERO_ALLOC;
    }
    if (ret < 0) {
        return ret;
    }
    if (!zero) {
        return check_only ? -ENOTSUP : write_zeros(s, offset, bytes);
    }
    if (check_only) {
        return 0;
    }
    if (has_subclusters(s)) {
        return qcow2_zero_subcluster_range(s, start, unit, false);
    }
    if (s->qcow_version < 3) {
        /* Unallocated without a backing file: zeros already. */
        return 0;
    }
    return qcow2_zero_clusters(s, start, unit, may_unmap);
}
