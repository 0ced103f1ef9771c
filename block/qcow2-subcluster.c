/* SPDX-License-Identifier: MIT */
/*
 * qcow2 extended L2 entries (incompatible bit 4): subcluster types, runs
 * of subclusters, the copy-on-write bounds of a write and the bitmap
 * changes of writes and zero writes.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * An extended L2 entry is the standard 64-bit descriptor followed by a
 * 64-bit bitmap: bit x (x < 32) says subcluster x is allocated, bit 32 + x
 * that it reads as zeros.  A cluster is split into 32 subclusters.  The
 * descriptor's zero flag has no meaning; compressed clusters have no
 * subclusters and a bitmap of 0.  An entry whose bitmap says a subcluster
 * is both allocated and zero, or that an unallocated cluster has allocated
 * subclusters, is invalid: reading or writing it is a corruption, as in
 * QEMU.
 *
 * The point of subclusters is the copy-on-write: a write into a cluster
 * only has to fill the subclusters it touches, so a 4 KiB write into a
 * fresh 64 KiB cluster writes 4 KiB, not 64 KiB, and the other subclusters
 * keep reading from the backing file (or as zeros).
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

static int ctz32_or_32(uint32_t v)
{
    return v ? __builtin_ctz(v) : 32;
}

static int clz32_or_32(uint32_t v)
{
    return v ? __builtin_clz(v) : 32;
}

QCow2SubclusterType qcow2_get_subcluster_type(const BDRVQcow2State *s,
                                              uint64_t entry, uint64_t bitmap,
                                              int sc)
{
    switch (qcow2_get_cluster_type(s, entry)) {
    case QCOW2_CLUSTER_COMPRESSED:
        return QCOW2_SUBCLUSTER_COMPRESSED;
    case QCOW2_CLUSTER_NORMAL:
        if ((bitmap >> 32) & bitmap) {
            return QCOW2_SUBCLUSTER_INVALID;
        }
        if (bitmap & QCOW_OFLAG_SUB_ZERO(sc)) {
            return QCOW2_SUBCLUSTER_ZERO_ALLOC;
        }
        if (bitmap & QCOW_OFLAG_SUB_ALLOC(sc)) {
            return QCOW2_SUBCLUSTER_NORMAL;
        }
        return QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC;
    default:
        /* Unallocated: there is no zero cluster type with subclusters. */
        if (bitmap & QCOW_L2_BITMAP_ALL_ALLOC) {
            return QCOW2_SUBCLUSTER_INVALID;
        }
        if (bitmap & QCOW_OFLAG_SUB_ZERO(sc)) {
            return QCOW2_SUBCLUSTER_ZERO_PLAIN;
        }
        return QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
    }
}

int qcow2_subcluster_range(const BDRVQcow2State *s, uint64_t entry,
                           uint64_t bitmap, int sc_from,
                           QCow2SubclusterType *type)
{
    uint32_t below = (uint32_t)QCOW_OFLAG_SUB_ALLOC_RANGE(0, sc_from);

    *type = qcow2_get_subcluster_type(s, entry, bitmap, sc_from);
    switch (*type) {
    case QCOW2_SUBCLUSTER_INVALID:
        return -EIO;
    case QCOW2_SUBCLUSTER_COMPRESSED:
        return QCOW_EXTL2_SUBCLUSTERS - sc_from;
    case QCOW2_SUBCLUSTER_NORMAL:
        return ctz32_or_32(~((uint32_t)bitmap | below)) - sc_from;
    case QCOW2_SUBCLUSTER_ZERO_PLAIN:
    case QCOW2_SUBCLUSTER_ZERO_ALLOC:
        return ctz32_or_32(~((uint32_t)(bitmap >> 32) | below)) - sc_from;
    default:
        return ctz32_or_32(((uint32_t)(bitmap >> 32) | (uint32_t)bitmap) &
                           ~below) - sc_from;
    }
}

QCow2ClusterType qcow2_subcluster_read_type(QCow2SubclusterType t)
{
    switch (t) {
    case QCOW2_SUBCLUSTER_NORMAL:
        return QCOW2_CLUSTER_NORMAL;
    case QCOW2_SUBCLUSTER_ZERO_PLAIN:
        return QCOW2_CLUSTER_ZERO_PLAIN;
    case QCOW2_SUBCLUSTER_ZERO_ALLOC:
        return QCOW2_CLUSTER_ZERO_ALLOC;
    case QCOW2_SUBCLUSTER_COMPRESSED:
        return QCOW2_CLUSTER_COMPRESSED;
    default:
        /* Unallocated subclusters read from the backing file. */
        return QCOW2_CLUSTER_UNALLOCATED;
    }
}

/*
 * The extent of subclusters with one read type from guest @offset, within
 * the @nclusters entries of @l2_table from @l2_index: allocated ones must
 * also be contiguous on the host.  Returns the bytes from @offset, or -EIO
 * for an invalid entry (reported as QEMU does).
 */
int64_t qcow2_subcluster_extent(BDRVQcow2State *s, uint64_t offset,
                                void *l2_table, uint64_t l2_offset,
                                int l2_index, uint64_t nclusters,
                                QCow2SubclusterType *type)
{
    int sc = offset_to_sc_index(s, offset);
    uint64_t entry = l2_get(s, l2_table, l2_index);
    uint64_t host = entry & L2E_OFFSET_MASK;
    uint64_t i, total;
    int n;

    n = qcow2_subcluster_range(s, entry, l2_get_bitmap(s, l2_table, l2_index),
                               sc, type);
    if (n < 0) {
        goto invalid;
    }
    total = n;
    if (*type == QCOW2_SUBCLUSTER_COMPRESSED) {
        return (total << s->subcluster_bits) -
               offset_into_subcluster(s, offset);
    }
    for (i = 1; i < nclusters && sc + total == (uint64_t)s->subclusters *
                                                i; i++) {
        QCow2SubclusterType t;
        uint64_t e = l2_get(s, l2_table, l2_index + i);

        n = qcow2_subcluster_range(s, e, l2_get_bitmap(s, l2_table,
                                                       l2_index + i), 0, &t);
        if (n < 0) {
            l2_index += i;
            goto invalid;
        }
        if (t != *type) {
            break;
        }
        if ((t == QCOW2_SUBCLUSTER_NORMAL ||
             t == QCOW2_SUBCLUSTER_ZERO_ALLOC ||
             t == QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC) &&
            (e & L2E_OFFSET_MASK) != host + (i << s->cluster_bits)) {
            break;
        }
        total += n;
    }
    return (total << s->subcluster_bits) - offset_into_subcluster(s, offset);

invalid:
    qcow2_signal_corruption(s, true, -1, -1, "Invalid cluster entry found  "
                            "(L2 offset: %#" PRIx64 ", L2 index: %#x)",
                            l2_offset, l2_index);
    return -EIO;
}

/*
 * Where the copy-on-write around a write must start, in bytes from the
 * start of the write's first cluster: @in_cluster is where the guest data
 * starts.  @keep_old: the cluster is written in place (no new host
 * cluster); then only the written subclusters that are not yet allocated
 * need their untouched parts filled.  For a new host cluster, untouched
 * subclusters that are unallocated or zero stay so and are not copied.
 */
uint64_t qcow2_cow_start(const BDRVQcow2State *s, uint64_t entry,
                         uint64_t bitmap, uint64_t in_cluster, bool keep_old)
{
    int sc = in_cluster >> s->subcluster_bits;
    uint64_t sc_start = (uint64_t)sc << s->subcluster_bits;

    switch (qcow2_get_subcluster_type(s, entry, bitmap, sc)) {
    case QCOW2_SUBCLUSTER_NORMAL:
        if (keep_old) {
            return in_cluster;
        }
        /* fall through */
    case QCOW2_SUBCLUSTER_ZERO_ALLOC:
    case QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC:
        if (keep_old) {
            return sc_start;
        }
        return (uint64_t)MIN(sc, ctz32_or_32((uint32_t)bitmap)) <<
               s->subcluster_bits;
    case QCOW2_SUBCLUSTER_COMPRESSED:
        return 0;
    default:
        return sc_start;
    }
}

/*
 * Where it ends, in bytes from the start of the write's last cluster;
 * @end_in_cluster is where the guest data ends (1..cluster_size).
 */
uint64_t qcow2_cow_end(const BDRVQcow2State *s, uint64_t entry,
                       uint64_t bitmap, uint64_t end_in_cluster,
                       bool keep_old)
{
    int sc = (end_in_cluster - 1) >> s->subcluster_bits;
    uint64_t sc_end = ROUND_UP(end_in_cluster, (uint64_t)s->subcluster_size);

    switch (qcow2_get_subcluster_type(s, entry, bitmap, sc)) {
    case QCOW2_SUBCLUSTER_NORMAL:
        if (keep_old) {
            return end_in_cluster;
        }
        /* fall through */
    case QCOW2_SUBCLUSTER_ZERO_ALLOC:
    case QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC:
        if (keep_old) {
            return sc_end;
        }
        return s->cluster_size -
               ((uint64_t)MIN(s->subclusters - sc - 1,
                              clz32_or_32((uint32_t)bitmap)) <<
                s->subcluster_bits);
    case QCOW2_SUBCLUSTER_COMPRESSED:
        return s->cluster_size;
    default:
        return sc_end;
    }
}

/* Subclusters [from, to) in bytes of one cluster now hold written data. */
uint64_t qcow2_bitmap_written(const BDRVQcow2State *s, uint64_t entry,
                              uint64_t bitmap, uint64_t from, uint64_t to)
{
    int first = from >> s->subcluster_bits;
    int last = (to - 1) >> s->subcluster_bits;

    if (qcow2_get_cluster_type(s, entry) == QCOW2_CLUSTER_COMPRESSED) {
        bitmap = 0;     /* reserved in a compressed entry */
    }
    bitmap |= QCOW_OFLAG_SUB_ALLOC_RANGE(first, last + 1);
    bitmap &= ~QCOW_OFLAG_SUB_ZERO_RANGE(first, last + 1);
    return bitmap;
}

/*
 * Make whole subclusters [offset, offset + bytes) of one cluster read as
 * zeros.  -ENOTSUP for a compressed cluster, which cannot be zeroed in
 * part: the caller writes the zeros instead.
 */
int qcow2_zero_subclusters(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, void *l2_table, int l2_index)
{
    uint64_t in_cluster = offset_into_cluster(s, offset);
    int first = in_cluster >> s->subcluster_bits;
    int end = (in_cluster + bytes) >> s->subcluster_bits;
    uint64_t entry = l2_get(s, l2_table, l2_index);
    uint64_t old = l2_get_bitmap(s, l2_table, l2_index), bitmap;

    if (qcow2_get_cluster_type(s, entry) == QCOW2_CLUSTER_COMPRESSED) {
        return -ENOTSUP;
    }
    bitmap = (old | QCOW_OFLAG_SUB_ZERO_RANGE(first, end)) &
             ~QCOW_OFLAG_SUB_ALLOC_RANGE(first, end);
    if (bitmap != old) {
        l2_set_bitmap(s, l2_table, l2_index, bitmap);
        qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
    }
    return 0;
}

int qcow2_zero_piece_ext(BDRVQcow2State *s, uint64_t start, uint64_t end,
                         bool check_only)
{
    uint64_t sc = s->subcluster_size;
    uint64_t a = ROUND_UP(start, sc), b = end & ~(sc - 1);
    int ret = 0;

    /* The tail of a disk whose size is not aligned counts whole. */
    if (end == s->img->total_size) {
        b = ROUND_UP(end, sc);
    }
    if (a >= b) {
        uint64_t boundary = (start & ~(sc - 1)) + sc;

        ret = qcow2_zero_partial(s, start, MIN(end, boundary) - start,
                                 false, check_only);
        if (ret >= 0 && end > boundary) {
            ret = qcow2_zero_partial(s, boundary, end - boundary, false,
                                     check_only);
        }
        return ret;
    }
    if (start < a) {
        ret = qcow2_zero_partial(s, start, a - start, false, check_only);
    }
    if (ret >= 0) {
        ret = qcow2_zero_subcluster_range(s, a, b - a, check_only);
    }
    if (ret >= 0 && b < end) {
        ret = qcow2_zero_partial(s, b, end - b, false, check_only);
    }
    return ret;
}
