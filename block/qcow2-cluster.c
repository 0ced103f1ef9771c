/* SPDX-License-Identifier: MIT */
/*
 * qcow2 guest-to-host mapping: lookups, reads, allocating writes with
 * copy-on-write, zero clusters, discard, L1/L2 table management.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Requests are split at L2-table boundaries.  Inside one L2 table, clusters
 * that need the same treatment and are contiguous on the host form one run:
 * one lookup, one allocation, one overlap check and one pwritev per run.
 *
 * Ordering for an allocating write (see qcow2-cache.c for the caches):
 *   1. allocate clusters (refcount +1, in the refcount-block cache);
 *   2. write guest data together with the copy-on-write head and tail;
 *   3. make the L2 cache depend on the refcount-block cache, then point the
 *      L2 entries at the new clusters;
 *   4. release the old clusters (refcount -1; the refcount-block cache then
 *      depends on the L2 cache).
 *
 * A new L2 table is referenced from the in-memory L1 table at once, but the
 * L1 entry reaches the disk only in qcow2_write_l1_dirty(), after the L2
 * cache (and through its dependency the refcount blocks) has been flushed.
 * A crash before that loses only unflushed writes and leaks their clusters.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/*
 * L2 entries are about to name newly allocated clusters: their refcounts
 * must reach the disk first.  A dirty image (lazy refcounts) skips the
 * ordering, because opening it repairs the refcounts anyway.
 */
int qcow2_l2_after_new_refcounts(BDRVQcow2State *s)
{
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    return qcow2_cache_set_dependency(s, s->l2_table_cache,
                                      s->refcount_block_cache);
}

/* ---- L1 table ----------------------------------------------------------- */

#define L1_SECTOR_ENTRIES 64

void qcow2_l1_mark_dirty(BDRVQcow2State *s, uint64_t index)
{
    uint64_t sector = index / L1_SECTOR_ENTRIES;
    uint64_t nsectors = ((uint64_t)s->l1_size + L1_SECTOR_ENTRIES - 1) /
                        L1_SECTOR_ENTRIES;

    if (s->l1_dirty_nsectors < nsectors) {
        uint64_t words = (nsectors + 63) / 64;
        uint64_t old_words = (s->l1_dirty_nsectors + 63) / 64;
        s->l1_dirty_bits = g_renew(uint64_t, s->l1_dirty_bits, words);
        memset(s->l1_dirty_bits + old_words, 0, (words - old_words) * 8);
        s->l1_dirty_nsectors = nsectors;
    }
    s->l1_dirty_bits[sector / 64] |= 1ULL << (sector % 64);
    s->l1_dirty = true;
}

static bool l1_sector_dirty(BDRVQcow2State *s, uint64_t sector)
{
    return sector < s->l1_dirty_nsectors &&
           (s->l1_dirty_bits[sector / 64] & (1ULL << (sector % 64)));
}

static int write_l1_sectors(BDRVQcow2State *s, uint64_t first, uint64_t n)
{
    uint64_t start = first * L1_SECTOR_ENTRIES;
    uint64_t end = MIN((first + n) * L1_SECTOR_ENTRIES, (uint64_t)s->l1_size);
    g_autofree uint64_t *buf = g_new(uint64_t, end - start);
    uint64_t i;

    for (i = start; i < end; i++) {
        buf[i - start] = GUINT64_TO_BE(s->l1_table[i]);
    }
    return qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L1,
                             s->l1_table_offset + start * 8, buf,
                             (end - start) * 8);
}

/*
 * Bring the on-disk L1 table up to date.  Every L2 table a dirty entry
 * points at, and its refcount, reach the disk first.
 */
int qcow2_write_l1_dirty(BDRVQcow2State *s)
{
    uint64_t sector, run_start = 0;
    bool in_run = false;
    int ret;

    if (!s->l1_dirty) {
        return 0;
    }
    ret = qcow2_cache_flush(s, s->l2_table_cache);
    if (ret < 0) {
        return ret;
    }
    /* A dirty image's refcounts are rebuilt when it is opened. */
    if (!qcow2_refcounts_postponed(s)) {
        ret = qcow2_flush_refcounts(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (sector = 0; sector <= s->l1_dirty_nsectors; sector++) {
        bool dirty = sector < s->l1_dirty_nsectors &&
                     l1_sector_dirty(s, sector);
        if (dirty && !in_run) {
            run_start = sector;
            in_run = true;
        } else if (!dirty && in_run) {
            ret = write_l1_sectors(s, run_start, sector - run_start);
            if (ret < 0) {
                return ret;
            }
            in_run = false;
        }
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        return ret;
    }
    memset(s->l1_dirty_bits, 0, ((s->l1_dirty_nsectors + 63) / 64) * 8);
    s->l1_dirty = false;
    return 0;
}

/*
 * A new metadata structure of @bytes in fresh clusters: allocated, written
 * after the refcounts that make the clusters its own, and synced, so that
 * one header write can switch to it.  Returns its offset; on failure the
 * clusters are freed (with @discard) and nothing names them.
 */
int64_t qcow2_write_new_table(BDRVQcow2State *s, unsigned type,
                              const void *buf, uint64_t bytes,
                              Qcow2DiscardType discard)
{
    int64_t offset = qcow2_alloc_clusters_exact(s, size_to_clusters(s, bytes));
    int ret;

    if (offset < 0) {
        return offset;
    }
    ret = qcow2_flush_refcounts(s);
    if (ret >= 0) {
        ret = qcow2_pwrite_meta(s, type, offset, buf, bytes);
    }
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        (void)qcow2_free_clusters(s, offset, bytes, discard);
        return ret;
    }
    return offset;
}

/*
 * One header write makes the new table current; only then do the overlap
 * map and the in-memory table follow.  If the write fails, either table
 * may be the one on disk, so the caller keeps both.  On success *table
 * and the in-memory table trade places: the caller frees or keeps the old
 * one.
 */
int qcow2_switch_l1_table(BDRVQcow2State *s, uint64_t **table,
                          uint64_t offset, uint32_t size)
{
    uint64_t *old = s->l1_table;
    uint8_t hdr[12];
    int ret;

    be_put32(hdr, size);
    be_put64(hdr + 4, offset);
    ret = qcow2_commit_header_field(s, HDR_OFF_L1_SIZE, hdr, 12);
    if (ret < 0) {
        return ret;
    }
    qcow2_map_remove(s, s->l1_table_offset, (uint64_t)s->l1_size * 8,
                     QCOW2_OL_ACTIVE_L1);
    qcow2_map_enter(s, offset, (uint64_t)size * 8, QCOW2_OL_ACTIVE_L1);
    s->l1_table = *table;
    *table = old;
    s->l1_table_offset = offset;
    s->l1_size = size;
    if (s->l1_dirty) {
        memset(s->l1_dirty_bits, 0, ((s->l1_dirty_nsectors + 63) / 64) * 8);
        s->l1_dirty = false;
    }
    return 0;
}

int qcow2_grow_l1_table(BDRVQcow2State *s, uint64_t min_size, bool exact_size)
{
    uint64_t new_size, new_bytes, i;
    int64_t new_offset;
    g_autofree uint64_t *new_table = NULL;
    g_autofree uint64_t *disk_table = NULL;
    uint64_t old_offset = s->l1_table_offset;
    uint64_t old_bytes = (uint64_t)s->l1_size * 8;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if (exact_size) {
        new_size = min_size;
    } else {
        /* Grow by half again, as QEMU does, to amortise relocations. */
        new_size = MAX(s->l1_size, 1);
        while (min_size > new_size) {
            new_size = (new_size * 3 + 1) / 2;
        }
    }
    if (new_size > QCOW_MAX_L1_SIZE / 8) {
        new_size = QCOW_MAX_L1_SIZE / 8;
        if (min_size > new_size) {
            qcow2_set_error(s, "L1 table would exceed the maximum size");
            return -EFBIG;
        }
    }
    new_bytes = new_size * 8;
    new_table = g_try_new0(uint64_t, new_size);
    disk_table = g_try_malloc0(ROUND_UP(new_bytes, s->cluster_size));
    if (!new_table || !disk_table) {
        return -ENOMEM;
    }
    memcpy(new_table, s->l1_table, old_bytes);
    for (i = 0; i < new_size; i++) {
        disk_table[i] = GUINT64_TO_BE(new_table[i]);
    }

    /* The new table carries the dirty entries too: their L2s go first. */
    ret = qcow2_cache_flush(s, s->l2_table_cache);
    if (ret < 0) {
        return ret;
    }
    new_offset = qcow2_write_new_table(s, QCOW2_OL_ACTIVE_L1, disk_table,
                                       new_bytes, QCOW2_DISCARD_OTHER);
    if (new_offset < 0) {
        return new_offset;
    }
    ret = qcow2_switch_l1_table(s, &new_table, new_offset, new_size);
    if (ret < 0) {
        return ret;
    }
    return qcow2_free_clusters(s, old_offset, old_bytes, QCOW2_DISCARD_OTHER);
}

/*
 * Drop the L2 tables of L1 entries from @new_size on (a shrunk disk).  The
 * L1 entries are cleared on disk before the tables lose their references.
 */
int qcow2_shrink_l1_table(BDRVQcow2State *s, uint64_t new_size)
{
    g_autofree uint64_t *freed = NULL;
    uint64_t i, n = 0;
    int ret;

    if (new_size >= s->l1_size) {
        return 0;
    }
    freed = g_new(uint64_t, s->l1_size - new_size);
    for (i = new_size; i < s->l1_size; i++) {
        uint64_t l2 = s->l1_table[i] & L1E_OFFSET_MASK;
        if (s->l1_table[i]) {
            s->l1_table[i] = 0;
            qcow2_l1_mark_dirty(s, i);
        }
        if (l2 && !offset_into_cluster(s, l2)) {
            freed[n++] = l2;
        }
    }
    ret = qcow2_write_l1_dirty(s);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < n; i++) {
        qcow2_map_remove(s, freed[i], s->cluster_size, QCOW2_OL_ACTIVE_L2);
        ret = qcow2_free_clusters(s, freed[i], s->cluster_size,
                                  QCOW2_DISCARD_ALWAYS);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* ---- L2 tables ---------------------------------------------------------- */

static int l2_offset_from_l1(BDRVQcow2State *s, uint64_t l1_index,
                             uint64_t *l2_offset)
{
    uint64_t entry = l1_index < s->l1_size ? s->l1_table[l1_index] : 0;

    *l2_offset = entry & L1E_OFFSET_MASK;
    if (*l2_offset && !is_cluster_aligned(s, *l2_offset)) {
        qcow2_signal_corruption(s, true, -1, -1,
                                "L2 table offset %#" PRIx64 " unaligned "
                                "(L1 index: %#" PRIx64 ")",
                                *l2_offset, l1_index);
        return -EIO;
    }
    return 0;
}

/*
 * Give L1 entry @l1_index a table of its own with refcount 1: a fresh zeroed
 * one if there was none, or a copy of a shared one.
 */
static int l2_allocate(BDRVQcow2State *s, uint64_t l1_index)
{
    uint64_t old_offset = s->l1_table[l1_index] & L1E_OFFSET_MASK;
    int64_t new_offset;
    void *new_table;
    void *old_table;
    int ret;

    new_offset = qcow2_alloc_table_cluster(s, "L2 table");
    if (new_offset < 0) {
        return new_offset;
    }
    /*
     * With inactive-l2 checks on, a snapshot L1 table QEMU cannot validate
     * fails every metadata write.  QEMU writes the new table's refcount at
     * once, and so fails here, before anything in the caches points at
     * the table: so does qguard, though it writes that refcount later.
     */
    if (G_UNLIKELY(s->snapshot_l1_error &&
                   (s->overlap_check & QCOW2_OL_INACTIVE_L2))) {
        ret = s->snapshot_l1_error;
        goto fail;
    }
    /*
     * The table reaches the disk only when the L2 cache is written back:
     * reserve its space now, so that a full disk fails this request (which
     * gives its clusters back) instead of that write-back (which would
     * leave the clusters written meanwhile leaked, and their data lost).
     */
    ret = host_file_allocate(s->file, new_offset, s->cluster_size);
    if (ret < 0) {
        goto fail;
    }
    if (s->use_lazy_refcounts) {
        /*
         * Even with lazy refcounts QEMU writes the refcount of a new table
         * at once (before the write that needs it makes the image dirty),
         * so a crashed image has the same damage to repair as with QEMU.
         */
        ret = qcow2_flush_refcounts(s);
    } else {
        ret = qcow2_l2_after_new_refcounts(s);
    }
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_cache_get_empty(s, s->l2_table_cache, new_offset, &new_table);
    if (ret < 0) {
        goto fail;
    }
    if (old_offset) {
        ret = qcow2_cache_get(s, s->l2_table_cache, old_offset, &old_table);
        if (ret < 0) {
            qcow2_cache_put(s->l2_table_cache, &new_table);
            qcow2_cache_discard(s->l2_table_cache, new_offset);
            goto fail;
        }
        memcpy(new_table, old_table, s->cluster_size);
        qcow2_cache_put(s->l2_table_cache, &old_table);
    } else {
        memset(new_table, 0, s->cluster_size);
    }
    qcow2_cache_entry_mark_dirty(s->l2_table_cache, new_table);
    qcow2_cache_put(s->l2_table_cache, &new_table);
    qcow2_map_enter(s, new_offset, s->cluster_size, QCOW2_OL_ACTIVE_L2);

    s->l1_table[l1_index] = new_offset | QCOW_OFLAG_COPIED;
    qcow2_l1_mark_dirty(s, l1_index);
    if (old_offset) {
        /*
         * The shared table loses a reference: the disk must stop pointing
         * at it from this L1 entry before its refcount drops.
         */
        ret = qcow2_write_l1_dirty(s);
        if (ret < 0) {
            return ret;
        }
        qcow2_map_remove(s, old_offset, s->cluster_size, QCOW2_OL_ACTIVE_L2);
        return qcow2_free_clusters(s, old_offset, s->cluster_size,
                                   QCOW2_DISCARD_OTHER);
    }
    return 0;

fail:
    (void)qcow2_abort_allocation(s, new_offset, s->cluster_size);
    return ret;
}

/* The L2 table for @l1_index, allocated or unshared as needed; pinned. */
int qcow2_get_l2_for_write(BDRVQcow2State *s, uint64_t l1_index,
                           void **l2_table, uint64_t *l2_offset)
{
    int ret;

    if (l1_index >= s->l1_size) {
        ret = qcow2_grow_l1_table(s, l1_index + 1, false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = l2_offset_from_l1(s, l1_index, l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (!*l2_offset || !(s->l1_table[l1_index] & QCOW_OFLAG_COPIED)) {
        ret = l2_allocate(s, l1_index);
        if (ret < 0) {
            return ret;
        }
        *l2_offset = s->l1_table[l1_index] & L1E_OFFSET_MASK;
    }
    return qcow2_cache_get(s, s->l2_table_cache, *l2_offset, l2_table);
}

/* ---- Lookups and reads -------------------------------------------------- */

void qcow2_parse_compressed_entry(BDRVQcow2State *s, uint64_t l2_entry,
                                  uint64_t *coffset, int *csize)
{
    int nb_csectors;

    *coffset = l2_entry & s->cluster_offset_mask;
    nb_csectors = ((l2_entry >> s->csize_shift) & s->csize_mask) + 1;
    *csize = nb_csectors * QCOW2_COMPRESSED_SECTOR_SIZE -
             (*coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
}

/*
 * Map guest @offset.  On return *bytes is shortened to the extent that has
 * the same cluster type and, for allocated clusters, contiguous host
 * offsets; it never crosses an L2 table.
 */
int qcow2_get_host_offset(BDRVQcow2State *s, uint64_t offset,
                          uint64_t *bytes, uint64_t *host_offset,
                          QCow2ClusterType *type)
{
    uint64_t l1_index = offset_to_l1_index(s, offset);
    int l2_index = offset_to_l2_index(s, offset);
    uint64_t in_cluster = offset_into_cluster(s, offset);
    uint64_t avail = ((uint64_t)(s->l2_size - l2_index) << s->cluster_bits) -
                     in_cluster;
    uint64_t nclusters, l2_offset, entry, host, n;
    void *l2_table;
    int ret;

    *bytes = MIN(*bytes, avail);
    *host_offset = 0;
    ret = l2_offset_from_l1(s, l1_index, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    if (!l2_offset) {
        *type = QCOW2_CLUSTER_UNALLOCATED;
        return 0;
    }
    ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
    if (ret < 0) {
        return ret;
    }
    nclusters = size_to_clusters(s, in_cluster + *bytes);
    entry = l2_get(s, l2_table, l2_index);
    *type = qcow2_get_cluster_type(s, entry);
    host = entry & L2E_OFFSET_MASK;

    switch (*type) {
    case QCOW2_CLUSTER_COMPRESSED:
        if (has_data_file(s)) {
            qcow2_cache_put(s->l2_table_cache, &l2_table);
            qcow2_signal_corruption(s, true, -1, -1,
                                    "Compressed cluster entry found in image "
                                    "with external data file (L2 offset: %#"
                                    PRIx64 ", L2 index: %#x)", l2_offset,
                                    l2_index);
            return -EIO;
        }
        *host_offset = entry & s->cluster_offset_mask;
        n = 1;
        break;
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        if (offset_into_cluster(s, host)) {
            qcow2_cache_put(s->l2_table_cache, &l2_table);
            qcow2_signal_corruption(s, true, -1, -1,
                                    "Cluster allocation offset %#" PRIx64
                                    " unaligned (L2 offset: %#" PRIx64
                                    ", L2 index: %#x)", host, l2_offset,
                                    l2_index);
            return -EIO;
        }
        if (has_data_file(s) && host != start_of_cluster(s, offset)) {
            qcow2_cache_put(s->l2_table_cache, &l2_table);
            qcow2_signal_corruption(s, true, -1, -1,
                                    "External data file host cluster offset "
                                    "%#" PRIx64 " does not match guest "
                                    "cluster offset: %#" PRIx64
                                    ", L2 index: %#x)", host,
                                    start_of_cluster(s, offset), l2_index);
            return -EIO;
        }
        for (n = 1; n < nclusters; n++) {
            uint64_t next = l2_get(s, l2_table, l2_index + n);
            if (qcow2_get_cluster_type(s, next) != *type ||
                (next & L2E_OFFSET_MASK) != host + (n << s->cluster_bits)) {
                break;
            }
        }
        *host_offset = host + in_cluster;
        break;
    default:
        for (n = 1; n < nclusters; n++) {
            if (qcow2_get_cluster_type(s, l2_get(s, l2_table, l2_index + n)) !=
                *type) {
                break;
            }
        }
        break;
    }
    if (has_subclusters(s)) {
        QCow2SubclusterType sct;
        int64_t extent = qcow2_subcluster_extent(s, offset, l2_table,
                                                 l2_offset, l2_index,
                                                 nclusters, &sct);

        qcow2_cache_put(s->l2_table_cache, &l2_table);
        if (extent < 0) {
            return extent;
        }
        *type = qcow2_subcluster_read_type(sct);
        if (*type == QCOW2_CLUSTER_UNALLOCATED) {
            *host_offset = 0;
        }
        *bytes = MIN(*bytes, (uint64_t)extent);
        return 0;
    }
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    *bytes = MIN(*bytes, (n << s->cluster_bits) - in_cluster);
    return 0;
}

/* The entry for guest @offset in the L2 table at @l2_offset. */
static int read_l2_entry(BDRVQcow2State *s, uint64_t l2_offset,
                         uint64_t offset, uint64_t *entry)
{
    void *l2_table;
    int ret;

    ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
    if (ret < 0) {
        return ret;
    }
    *entry = l2_get(s, l2_table, offset_to_l2_index(s, offset));
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    return 0;
}

/*
 * The host offset of guest @offset if its cluster has a host cluster, even
 * where the subcluster is unallocated (extended L2); else 0 in *valid.
 */
int qcow2_cluster_host(BDRVQcow2State *s, uint64_t offset, uint64_t *host,
                       bool *valid)
{
    uint64_t l2_offset, entry;
    int ret;

    *valid = false;
    ret = l2_offset_from_l1(s, offset_to_l1_index(s, offset), &l2_offset);
    if (ret < 0 || !l2_offset) {
        return ret;
    }
    ret = read_l2_entry(s, l2_offset, offset, &entry);
    if (ret < 0) {
        return ret;
    }
    if (qcow2_get_cluster_type(s, entry) == QCOW2_CLUSTER_NORMAL) {
        *host = (entry & L2E_OFFSET_MASK) + offset_into_cluster(s, offset);
        *valid = true;
    }
    return 0;
}

static int read_compressed(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                           uint8_t *buf)
{
    uint64_t l1_index = offset_to_l1_index(s, offset);
    uint64_t l2_offset, entry;
    int ret;

    ret = l2_offset_from_l1(s, l1_index, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    ret = read_l2_entry(s, l2_offset, offset, &entry);
    if (ret < 0) {
        return ret;
    }

    if (!s->decomp_buf) {
        s->decomp_buf = g_malloc(s->cluster_size);
    }
    if (s->decomp_entry != entry) {
        s->decomp_entry = 0;
        ret = qcow2_decompress_cluster(s, entry, s->decomp_buf);
        if (ret < 0) {
            qcow2_set_error(s, "Could not decompress cluster at guest offset "
                            "%" PRIu64, start_of_cluster(s, offset));
            return ret;
        }
        s->decomp_entry = entry;
    }
    memcpy(buf, s->decomp_buf + offset_into_cluster(s, offset), bytes);
    return 0;
}

/*
 * Reads may run in several threads at once, beside writes (the image lock
 * is shared): the mapping is looked up under meta_lock, and the data is
 * read outside it, so that reads of different clusters overlap their I/O.
 * A write may change the mapping meanwhile; the cluster read stays what it
 * was, because a cluster freed meanwhile is not reused before a flush that
 * runs alone (qcow2_flush_metadata()).
 */
int qcow2_read_guest(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                     uint8_t *buf)
{
    QGuardImage *img = s->img;

    while (bytes > 0) {
        uint64_t cur = bytes, host;
        QCow2ClusterType type;
        int ret;

        g_mutex_lock(&s->meta_lock);
        ret = qcow2_get_host_offset(s, offset, &cur, &host, &type);
        g_mutex_unlock(&s->meta_lock);
        if (ret < 0) {
            return ret;
        }
        switch (type) {
        case QCOW2_CLUSTER_UNALLOCATED:
            if (img->backing) {
                ret = bdrv_backing_pread(img, offset, cur, buf);
            } else {
                memset(buf, 0, cur);
            }
            break;
        case QCOW2_CLUSTER_ZERO_PLAIN:
        case QCOW2_CLUSTER_ZERO_ALLOC:
            memset(buf, 0, cur);
            break;
        case QCOW2_CLUSTER_NORMAL:
            ret = qcow2_pread_data(s, host, buf, cur);
            break;
        case QCOW2_CLUSTER_COMPRESSED:
            g_mutex_lock(&s->meta_lock);
            ret = read_compressed(s, offset, cur, buf);
            g_mutex_unlock(&s->meta_lock);
            break;
        }
        if (ret < 0) {
            return ret;
        }
        offset += cur;
        buf += cur;
        bytes -= cur;
    }
    return 0;
}

/* ---- Writes ------------------------------------------------------------- */

typedef enum RunKind {
    RUN_IN_PLACE,   /* allocated, refcount 1: overwrite */
    RUN_REUSE,      /* preallocated zero cluster, refcount 1: fill and keep */
    RUN_ALLOCATE,   /* needs a new cluster (and maybe copy-on-write) */
} RunKind;

static RunKind run_kind(BDRVQcow2State *s, uint64_t entry)
{
    switch (qcow2_get_cluster_type(s, entry)) {
    case QCOW2_CLUSTER_NORMAL:
        return (entry & QCOW_OFLAG_COPIED) ? RUN_IN_PLACE : RUN_ALLOCATE;
    case QCOW2_CLUSTER_ZERO_ALLOC:
        return (entry & QCOW_OFLAG_COPIED) ? RUN_REUSE : RUN_ALLOCATE;
    default:
        return RUN_ALLOCATE;
    }
}

int qcow2_mark_dirty_for_lazy_refcounts(BDRVQcow2State *s)
{
    if (s->use_lazy_refcounts &&
        !(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return qcow2_mark_dirty(s);
    }
    return 0;
}

/*
 * The L2 table covering guest @offset, ready for an entry to change; with
 * lazy refcounts the image is marked dirty before the first such change.
 */
static int l2_for_write_at(BDRVQcow2State *s, uint64_t offset,
                           void **l2_table, uint64_t *l2_offset)
{
    int ret = qcow2_mark_dirty_for_lazy_refcounts(s);

    if (ret < 0) {
        return ret;
    }
    return qcow2_get_l2_for_write(s, offset_to_l1_index(s, offset), l2_table,
                                  l2_offset);
}

/*
 * Extended L2 entries of a run about to be written: an invalid one is a
 * corruption (as in QEMU); *meta is set if a written subcluster is not yet
 * allocated, so that even an in-place write must fill it and update the
 * bitmap.
 */
static int check_subcluster_run(BDRVQcow2State *s, void *l2_table,
                                uint64_t l2_offset, int l2_index, uint64_t n,
                                uint64_t in_cluster, uint64_t bytes,
                                bool *meta)
{
    uint64_t i, end = in_cluster + bytes;

    for (i = 0; i < n; i++) {
        uint64_t entry = l2_get(s, l2_table, l2_index + i);
        uint64_t bitmap = l2_get_bitmap(s, l2_table, l2_index + i);
        uint64_t from = MAX(in_cluster, i << s->cluster_bits);
        uint64_t to = MIN(end, (i + 1) << s->cluster_bits);
        int first = (from >> s->subcluster_bits) & (s->subclusters - 1);
        int last = ((to - 1) >> s->subcluster_bits) & (s->subclusters - 1);
        uint64_t want = QCOW_OFLAG_SUB_ALLOC_RANGE(first, last + 1);

        if (qcow2_get_subcluster_type(s, entry, bitmap, 0) ==
            QCOW2_SUBCLUSTER_INVALID) {
            qcow2_signal_corruption(s, true, -1, -1, "Invalid cluster entry "
                                    "found (L2 offset: %#" PRIx64 ", L2 "
                                    "index: %#x)", l2_offset,
                                    l2_index + (int)i);
            return -EIO;
        }
        if ((bitmap & want) != want) {
            *meta = true;
        }
    }
    return 0;
}

/* ---- Writes in parallel ------------------------------------------------- */

/* Does an in-flight write change the entries of guest clusters [first, end)? */
static bool inflight_overlaps(BDRVQcow2State *s, uint64_t first, uint64_t end)
{
    guint i;

    for (i = 0; i < s->inflight->len; i++) {
        Qcow2Inflight *f = &g_array_index(s->inflight, Qcow2Inflight, i);
        if (f->first < end && first < f->end) {
            return true;
        }
    }
    return false;
}

static void inflight_add(BDRVQcow2State *s, uint64_t first, uint64_t end)
{
    Qcow2Inflight f = { first, end };

    g_array_append_val(s->inflight, f);
}

static void inflight_remove(BDRVQcow2State *s, uint64_t first)
{
    guint i;

    for (i = 0; i < s->inflight->len; i++) {
        if (g_array_index(s->inflight, Qcow2Inflight, i).first == first) {
            g_array_remove_index_fast(s->inflight, i);
            break;
        }
    }
    g_cond_broadcast(&s->inflight_cond);
}

typedef enum CowSource {
    COW_SOURCE_ZERO,        /* reads as zeros in this image */
    COW_SOURCE_CHAIN,       /* reads what its block status says */
    COW_SOURCE_DATA,        /* reads data of this image */
} CowSource;

/*
 * Where the @bytes of copy-on-write from a cluster with this entry come
 * from.  QEMU's handle_alloc_space() zeroes the new clusters instead of
 * copying when both ends read as zeros by their block status; an
 * unallocated cluster over a backing file asks the backing file.
 */
static CowSource cow_source(BDRVQcow2State *s, uint64_t bytes,
                            uint64_t entry)
{
    if (!bytes) {
        return COW_SOURCE_ZERO;
    }
    switch (qcow2_get_cluster_type(s, entry)) {
    case QCOW2_CLUSTER_UNALLOCATED:
        return s->img->backing ? COW_SOURCE_CHAIN : COW_SOURCE_ZERO;
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        return COW_SOURCE_ZERO;
    default:
        return COW_SOURCE_DATA;
    }
}

/* Copy-on-write space of two clusters, kept for the next write. */
static uint8_t *cow_get(BDRVQcow2State *s)
{
    if (s->cow_pool->len) {
        return g_ptr_array_steal_index_fast(s->cow_pool, s->cow_pool->len - 1);
    }
    return g_malloc(2 * (size_t)s->cluster_size);
}

static void cow_put(BDRVQcow2State *s, uint8_t *cow)
{
    if (cow) {
        g_ptr_array_add(s->cow_pool, cow);
    }
}

/* Under meta_lock: may a data write to [offset, offset + bytes) go ahead? */
static int data_write_check(BDRVQcow2State *s, uint64_t offset, uint64_t bytes)
{
    int hit;

    if (bdrv_is_broken(s->img)) {
        return -EIO;
    }
    if (has_data_file(s)) {
        return s->data_file ? 0 : -ENOMEDIUM;
    }
    if (offset + bytes > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }
    hit = qcow2_overlap_hit(s, 0, offset, bytes);
    return hit ? qcow2_refuse_overlap(s, hit, offset, bytes) : 0;
}

/* Outside meta_lock: the data, to the file data_write_check() allowed. */
static int data_write(BDRVQcow2State *s, uint64_t offset,
                      const struct iovec *iov, int iovcnt)
{
    return host_file_pwritev(qcow2_data_host_file(s), offset, iov, iovcnt);
}

/*
 * Write one run inside one L2 table.  Returns the number of guest bytes
 * written (at least one cluster's worth or the rest of @bytes), or a
 * negative errno.
 *
 * Several writes may run at once (the image lock is shared).  The mapping
 * is looked up and changed under meta_lock, and the data goes to disk
 * outside it: an overwrite in place needs nothing else, as no other write
 * changes an entry that is allocated and COPIED.  A write that changes
 * entries (allocation, a preallocated zero cluster, subclusters) registers
 * its guest clusters as in flight first, so that a second write to the
 * same clusters waits and then finds the new entries, instead of
 * allocating again and losing one of the two.
 *
 * *@next is the host offset just past the request's previous run (0 for
 * none): new clusters continue there when it is free, as in QEMU.
 */
static int64_t write_run(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                         const uint8_t *buf, uint64_t *next)
{
    uint64_t l1_index = offset_to_l1_index(s, offset);
    int l2_index = offset_to_l2_index(s, offset);
    uint64_t in_cluster = offset_into_cluster(s, offset);
    uint64_t nclusters = size_to_clusters(s, in_cluster + bytes);
    uint64_t gfirst = offset >> s->cluster_bits;
    uint64_t l2_offset, entry, host, n, got, run_bytes = 0, head, tail, i;
    uint64_t last, end_in_last, cow_from, cow_to, last_entry;
    bool sc_meta, zero_cow, registered = false;
    CowSource head_src = COW_SOURCE_ZERO, tail_src = COW_SOURCE_ZERO;
    struct iovec iov[3];
    int iovcnt = 0;
    uint64_t *old_entries = NULL;
    uint64_t old_local[64];
    uint8_t *cow = NULL;
    void *l2_table;
    RunKind kind;
    int ret;

    g_mutex_lock(&s->meta_lock);
retry:
    sc_meta = false;
    ret = qcow2_get_l2_for_write(s, l1_index, &l2_table, &l2_offset);
    if (ret < 0) {
        goto out;
    }
    entry = l2_get(s, l2_table, l2_index);
    kind = run_kind(s, entry);
    host = entry & L2E_OFFSET_MASK;
    zero_cow = kind == RUN_ALLOCATE;
    last_entry = entry;
    for (n = 1; n < nclusters; n++) {
        uint64_t next_entry = l2_get(s, l2_table, l2_index + n);

        if (run_kind(s, next_entry) != kind) {
            break;
        }
        if (kind != RUN_ALLOCATE &&
            (next_entry & L2E_OFFSET_MASK) != host + (n << s->cluster_bits)) {
            break;
        }
        last_entry = next_entry;
    }
    if (has_subclusters(s)) {
        ret = check_subcluster_run(s, l2_table, l2_offset, l2_index, n,
                                   in_cluster, bytes, &sc_meta);
        if (ret < 0) {
            qcow2_cache_put(s->l2_table_cache, &l2_table);
            goto out;
        }
    }
    qcow2_cache_put(s->l2_table_cache, &l2_table);

    if (kind != RUN_ALLOCATE && offset_into_cluster(s, host)) {
        qcow2_signal_corruption(s, true, -1, -1,
                                "Cluster allocation offset %#" PRIx64
                                " unaligned (L2 offset: %#" PRIx64
                                ", L2 index: %#x)", host, l2_offset, l2_index);
        ret = -EIO;
        goto out;
    }
    if (kind != RUN_ALLOCATE && has_data_file(s) &&
        host != start_of_cluster(s, offset)) {
        /* Writing there would overwrite another guest cluster's data. */
        qcow2_signal_corruption(s, true, -1, -1,
                                "External data file host cluster offset %#"
                                PRIx64 " does not match guest cluster "
                                "offset: %#" PRIx64 ", L2 index: %#x)", host,
                                start_of_cluster(s, offset), l2_index);
        ret = -EIO;
        goto out;
    }

    if (kind == RUN_IN_PLACE && !sc_meta) {
        run_bytes = MIN(bytes, (n << s->cluster_bits) - in_cluster);
        *next = host + size_to_clusters(s, in_cluster + run_bytes) *
                       s->cluster_size;
        ret = data_write_check(s, host + in_cluster, run_bytes);
        g_mutex_unlock(&s->meta_lock);
        if (ret < 0) {
            return ret;
        }
        iov[0] = (struct iovec){ (void *)buf, run_bytes };
        ret = data_write(s, host + in_cluster, iov, 1);
        return ret < 0 ? ret : (int64_t)run_bytes;
    }
    if (inflight_overlaps(s, gfirst, gfirst + n)) {
        /* Its entries change under us: wait, then look them up again. */
        g_cond_wait(&s->inflight_cond, &s->meta_lock);
        goto retry;
    }

    ret = qcow2_mark_dirty_for_lazy_refcounts(s);
    if (ret < 0) {
        goto out;
    }
    got = n;
    if (kind == RUN_ALLOCATE && has_data_file(s)) {
        /* A data file cluster sits at its guest offset, unrefcounted. */
        host = start_of_cluster(s, offset);
    } else if (kind == RUN_ALLOCATE) {
        int64_t alloc = qcow2_alloc_data_clusters(s, n, *next, &got);
        if (alloc < 0) {
            ret = alloc;
            goto out;
        }
        host = alloc;
    }
    run_bytes = MIN(bytes, (got << s->cluster_bits) - in_cluster);
    *next = host + size_to_clusters(s, in_cluster + run_bytes) *
                   s->cluster_size;
    last = size_to_clusters(s, in_cluster + run_bytes) - 1;
    end_in_last = in_cluster + run_bytes - (last << s->cluster_bits);
    cow_from = 0;
    cow_to = s->cluster_size;
    if (has_subclusters(s)) {
        /* Only the written subclusters need their other bytes filled. */
        ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
        if (ret < 0) {
            goto fail;
        }
        cow_from = qcow2_cow_start(s, l2_get(s, l2_table, l2_index),
                                   l2_get_bitmap(s, l2_table, l2_index),
                                   in_cluster, kind == RUN_IN_PLACE);
        cow_to = qcow2_cow_end(s, l2_get(s, l2_table, l2_index + last),
                               l2_get_bitmap(s, l2_table, l2_index + last),
                               end_in_last, kind == RUN_IN_PLACE);
        qcow2_cache_put(s->l2_table_cache, &l2_table);
    }
    head = in_cluster - cow_from;
    tail = cow_to - end_in_last;
    if (has_subclusters(s) && (head || tail) && (zero_cow || sc_meta)) {
        /*
         * The ends lie in subclusters that this write allocates, in a new
         * cluster or in place: the chain's block status says what they
         * read, as QEMU asks it for every allocation it makes.
         */
        zero_cow = true;
        head_src = head ? COW_SOURCE_CHAIN : COW_SOURCE_ZERO;
        tail_src = tail ? COW_SOURCE_CHAIN : COW_SOURCE_ZERO;
    } else if (zero_cow && (head || tail)) {
        /* The entries the run was scanned with, unless it was cut short. */
        if (last + 1 != n) {
            ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
            if (ret < 0) {
                goto fail;
            }
            last_entry = l2_get(s, l2_table, l2_index + last);
            qcow2_cache_put(s->l2_table_cache, &l2_table);
        }
        head_src = cow_source(s, head, entry);
        tail_src = cow_source(s, tail, last_entry);
        zero_cow = head_src != COW_SOURCE_DATA && tail_src != COW_SOURCE_DATA;
    }
    if (zero_cow && tail &&
        offset + run_bytes + tail > (s->img->total_size & ~511ULL)) {
        /* QEMU's status of a range past the disk's end is not zeros. */
        zero_cow = false;
    }
    inflight_add(s, gfirst, gfirst + last + 1);
    registered = true;
    ret = data_write_check(s, host + cow_from, head + run_bytes + tail);
    if (ret < 0) {
        goto fail;
    }
    if (head || tail) {
        cow = cow_get(s);
    }
    g_mutex_unlock(&s->meta_lock);

    /*
     * Copy-on-write from clusters that read as zeros: make the new
     * clusters zeros with one fallocate() and write only the request's
     * bytes, as QEMU's handle_alloc_space() does.  The zeros are made
     * durable by the same flush as written ones (rule 2 of the write
     * order in docs/design.md).
     */
    if (zero_cow && head_src == COW_SOURCE_CHAIN) {
        ret = qcow2_range_is_zero_fast(s, offset - head, head, &zero_cow);
    }
    if (zero_cow && tail_src == COW_SOURCE_CHAIN && ret >= 0) {
        ret = qcow2_range_is_zero_fast(s, offset + run_bytes, tail, &zero_cow);
    }
    if (zero_cow && (head || tail) && ret >= 0) {
        ret = host_file_zero_alloc(qcow2_data_host_file(s), host + cow_from,
                                   head + run_bytes + tail);
        if (ret == 0) {
            head = tail = 0;
        } else if (ret == -ENOTSUP) {
            ret = 0;
        }
    }

    /*
     * Copy-on-write: the untouched parts of the first and last cluster.
     * They read what the entries name now, which nothing else changes
     * while this write is in flight.
     */
    if (head && ret >= 0) {
        ret = qcow2_read_guest(s, offset - head, head, cow);
        iov[iovcnt++] = (struct iovec){ cow, head };
    }
    iov[iovcnt++] = (struct iovec){ (void *)buf, run_bytes };
    if (tail && ret >= 0) {
        ret = qcow2_read_guest(s, offset + run_bytes, tail,
                               cow + s->cluster_size);
        iov[iovcnt++] = (struct iovec){ cow + s->cluster_size, tail };
    }
    if (ret >= 0) {
        ret = data_write(s, host + in_cluster - head, iov, iovcnt);
    }
    g_mutex_lock(&s->meta_lock);
    if (ret < 0) {
        goto fail;
    }
    /* The data must be on disk before an L2 table pointing at it is. */
    qcow2_cache_depends_on_flush(s->l2_table_cache);
    ret = qcow2_l2_after_new_refcounts(s);
    if (ret < 0) {
        goto fail;
    }
    /* The L1 entry may name a copy of the table by now (a shared one). */
    ret = qcow2_get_l2_for_write(s, l1_index, &l2_table, &l2_offset);
    if (ret < 0) {
        goto fail;
    }
    nclusters = last + 1;
    old_entries = nclusters <= G_N_ELEMENTS(old_local)
                  ? old_local : g_new(uint64_t, nclusters);
    for (i = 0; i < nclusters; i++) {
        old_entries[i] = l2_get(s, l2_table, l2_index + i);
        if (kind != RUN_IN_PLACE) {
            l2_set(s, l2_table, l2_index + i,
                   (host + (i << s->cluster_bits)) | QCOW_OFLAG_COPIED);
        }
        if (has_subclusters(s)) {
            l2_set_bitmap(s, l2_table, l2_index + i,
                          qcow2_bitmap_written(s, old_entries[i],
                              l2_get_bitmap(s, l2_table, l2_index + i),
                              i ? 0 : cow_from,
                              i == last ? cow_to : (uint64_t)s->cluster_size));
        }
    }
    qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    ret = 0;
    if (kind == RUN_ALLOCATE) {
        for (i = 0; i < nclusters && ret >= 0; i++) {
            ret = qcow2_free_any_cluster(s, old_entries[i],
                                         QCOW2_DISCARD_NEVER);
        }
    }
    if (old_entries != old_local) {
        g_free(old_entries);
    }
    goto out;

fail:
    if (kind == RUN_ALLOCATE && !has_data_file(s)) {
        (void)qcow2_abort_allocation(s, host, got << s->cluster_bits);
    }
out:
    if (registered) {
        inflight_remove(s, gfirst);
    }
    cow_put(s, cow);
    g_mutex_unlock(&s->meta_lock);
    return ret < 0 ? ret : (int64_t)run_bytes;
}

int qcow2_write_guest(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                      const uint8_t *buf)
{
    uint64_t next = 0;

    while (bytes > 0) {
        int l2_index = offset_to_l2_index(s, offset);
        uint64_t in_table = ((uint64_t)(s->l2_size - l2_index) <<
                             s->cluster_bits) - offset_into_cluster(s, offset);
        int64_t done = write_run(s, offset, MIN(bytes, in_table), buf, &next);

        if (done < 0) {
            return done;
        }
        offset += done;
        buf += done;
        bytes -= done;
    }
    return 0;
}

/* ---- Compressed writes --------------------------------------------------- */

/*
 * Write one whole cluster compressed (qemu-img convert -c).  Like QEMU,
 * only unallocated clusters can take compressed data, and data that does
 * not compress is written as a normal cluster.
 */
int qcow2_write_compressed(BDRVQcow2State *s, uint64_t offset,
                           const uint8_t *buf, uint64_t bytes)
{
    g_autofree uint8_t *in = NULL;
    g_autofree uint8_t *out = g_malloc(s->cluster_size);
    uint64_t l2_offset, entry;
    int l2_index = offset_to_l2_index(s, offset);
    size_t out_len;
    int64_t coffset;
    int nb_csectors;
    void *l2_table;
    int ret;

    if (offset_into_cluster(s, offset) ||
        (bytes != (uint64_t)s->cluster_size &&
         offset + bytes != s->img->total_size) ||
        bytes > (uint64_t)s->cluster_size) {
        return -EINVAL;
    }
    if (bytes < (uint64_t)s->cluster_size) {
        /* The last cluster of an unaligned disk is padded with zeros. */
        in = g_malloc0(s->cluster_size);
        memcpy(in, buf, bytes);
        buf = in;
    }
    ret = qcow2_compress(s, buf, out, s->cluster_size - 1, &out_len);
    if (ret == -ENOSPC) {
        return qcow2_write_guest(s, offset, bytes, buf);
    } else if (ret < 0) {
        return ret;
    }
    ret = l2_for_write_at(s, offset, &l2_table, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    entry = l2_get(s, l2_table, l2_index);
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    /* As in QEMU: a zero cluster without host cluster may be replaced. */
    if (entry & L2E_OFFSET_MASK) {
        qcow2_set_error(s, "Compression can't overwrite anything");
        return -EIO;
    }
    coffset = qcow2_alloc_bytes(s, out_len);
    if (coffset < 0) {
        return coffset;
    }
    if ((uint64_t)coffset + out_len > s->cluster_offset_mask) {
        (void)qcow2_abort_allocation(s, coffset, out_len);
        return -EFBIG;
    }
    ret = qcow2_pre_write_overlap_check(s, 0, coffset, out_len);
    if (ret >= 0) {
        ret = host_file_pwrite(s->file, coffset, out, out_len);
    }
    if (ret < 0) {
        (void)qcow2_abort_allocation(s, coffset, out_len);
        return ret;
    }
    qcow2_cache_depends_on_flush(s->l2_table_cache);
    ret = qcow2_l2_after_new_refcounts(s);
    if (ret < 0) {
        return ret;
    }
    nb_csectors = ((coffset + out_len - 1) >> 9) - (coffset >> 9);
    ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
    if (ret < 0) {
        return ret;
    }
    l2_set(s, l2_table, l2_index, (uint64_t)coffset | QCOW_OFLAG_COMPRESSED |
           ((uint64_t)nb_csectors << s->csize_shift));
    if (has_subclusters(s)) {
        /* Compressed clusters have no subclusters: reserved, zero. */
        l2_set_bitmap(s, l2_table, l2_index, 0);
    }
    /*
     * Bytes freed since the last read may come back with new data under
     * an identical L2 entry: the decompressed cluster is no longer valid.
     */
    s->decomp_entry = 0;
    qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    return 0;
}

/* ---- Zero clusters and discard ------------------------------------------ */

static bool cluster_is_allocated(QCow2ClusterType type)
{
    return type == QCOW2_CLUSTER_NORMAL || type == QCOW2_CLUSTER_ZERO_ALLOC ||
           type == QCOW2_CLUSTER_COMPRESSED;
}

/*
 * Both operations below take whole clusters inside one L2 table.  *bitmap
 * holds the subcluster bitmap of an extended entry, in and out.
 */
typedef uint64_t NewEntryFunc(BDRVQcow2State *s, uint64_t old,
                              uint64_t *bitmap, bool flag, bool *free_old);

static uint64_t zero_entry(BDRVQcow2State *s, uint64_t old, uint64_t *bitmap,
                           bool may_unmap, bool *free_old)
{
    QCow2ClusterType type = qcow2_get_cluster_type(s, old);
    bool unmap = type == QCOW2_CLUSTER_COMPRESSED ||
                 (may_unmap && cluster_is_allocated(type));

    *free_old = unmap;
    if (has_subclusters(s)) {
        /* Every subcluster reads as zeros; a kept host cluster stays. */
        *bitmap = QCOW_L2_BITMAP_ALL_ZEROES;
        return unmap ? 0 : old;
    }
    /* Without unmap a preallocated cluster keeps its host offset. */
    return (unmap ? 0 : old) | QCOW_OFLAG_ZERO;
}

static uint64_t discard_entry(BDRVQcow2State *s, uint64_t old,
                              uint64_t *bitmap, bool full_discard,
                              bool *free_old)
{
    QCow2ClusterType type = qcow2_get_cluster_type(s, old);

    *free_old = cluster_is_allocated(type);
    /*
     * A discarded cluster reads as zeros on v3 images; a full discard (or a
     * v2 image, which has no zero flag) lets it fall through to the backing
     * file instead.
     */
    if (full_discard) {
        *bitmap = 0;
        return 0;
    }
    if (!s->img->backing && !cluster_is_allocated(type)) {
        /*
         * It reads as zeros already.  QEMU leaves the entry as it is, so
         * a zero cluster stays one: a backing file added later by an
         * unsafe rebase stays hidden behind it, as behind QEMU's.
         */
        return old;
    }
    if (has_subclusters(s)) {
        *bitmap = QCOW_L2_BITMAP_ALL_ZEROES;
        return 0;
    }
    return s->qcow_version >= 3 ? QCOW_OFLAG_ZERO : 0;
}

static int update_l2_range(BDRVQcow2State *s, uint64_t offset,
                           uint64_t nclusters, NewEntryFunc *fn, bool flag,
                           Qcow2DiscardType type, bool allocate_l2)
{
    uint64_t l1_index = offset_to_l1_index(s, offset);
    int l2_index = offset_to_l2_index(s, offset);
    uint64_t l2_offset, i;
    g_autofree uint64_t *freed = g_new(uint64_t, nclusters);
    uint64_t nfreed = 0;
    void *l2_table;
    bool dirty = false;
    int ret;

    if (!allocate_l2) {
        ret = l2_offset_from_l1(s, l1_index, &l2_offset);
        if (ret < 0 || !l2_offset) {
            return ret;
        }
    }
    ret = qcow2_get_l2_for_write(s, l1_index, &l2_table, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < nclusters; i++) {
        uint64_t old = l2_get(s, l2_table, l2_index + i);
        uint64_t old_bitmap = l2_get_bitmap(s, l2_table, l2_index + i);
        uint64_t bitmap = old_bitmap;
        bool free_old;
        uint64_t new = fn(s, old, &bitmap, flag, &free_old);

        if (new == old && bitmap == old_bitmap) {
            continue;
        }
        l2_set(s, l2_table, l2_index + i, new);
        if (has_subclusters(s)) {
            l2_set_bitmap(s, l2_table, l2_index + i, bitmap);
        }
        dirty = true;
        if (free_old) {
            freed[nfreed++] = old;
        }
    }
    if (dirty) {
        qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
    }
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    /* Entries first, then the refcounts (the caches keep that order). */
    for (i = 0; i < nfreed; i++) {
        ret = qcow2_free_any_cluster(s, freed[i], type);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int for_each_l2_range(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes, NewEntryFunc *fn, bool flag,
                             Qcow2DiscardType type, bool allocate_l2)
{
    uint64_t end = offset + bytes;
    int ret;

    ret = qcow2_mark_dirty_for_lazy_refcounts(s);
    if (ret < 0) {
        return ret;
    }
    while (offset < end) {
        int l2_index = offset_to_l2_index(s, offset);
        uint64_t n = MIN((uint64_t)(s->l2_size - l2_index),
                         size_to_clusters(s, end - offset));
        ret = update_l2_range(s, offset, n, fn, flag, type, allocate_l2);
        if (ret < 0) {
            break;
        }
        offset += n << s->cluster_bits;
    }
    return ret;
}

/* Set the zero flag on whole clusters (v3 only). */
int qcow2_zero_clusters(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                        bool may_unmap)
{
    int ret;

    g_assert(s->qcow_version >= 3);
    ret = qcow2_data_file_zero(s, offset,
                               MIN(bytes, s->img->total_size - offset),
                               may_unmap);
    if (ret < 0) {
        return ret;
    }
    return for_each_l2_range(s, offset, bytes, zero_entry, may_unmap,
                             QCOW2_DISCARD_REQUEST, true);
}

/* Whole subclusters inside one cluster read as zeros (extended L2). */
int qcow2_zero_subcluster_range(BDRVQcow2State *s, uint64_t offset,
                                uint64_t bytes, bool check_only)
{
    uint64_t l2_offset;
    void *l2_table;
    int ret;

    if (check_only) {
        uint64_t n = s->subcluster_size, host;
        QCow2ClusterType type;

        ret = qcow2_get_host_offset(s, offset, &n, &host, &type);
        return ret < 0 ? ret :
               type == QCOW2_CLUSTER_COMPRESSED ? -ENOTSUP : 0;
    }
    ret = qcow2_data_file_zero(s, offset,
                               MIN(bytes, s->img->total_size - offset),
                               false);
    if (ret < 0) {
        return ret;
    }
    ret = l2_for_write_at(s, offset, &l2_table, &l2_offset);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_zero_subclusters(s, offset, bytes, l2_table,
                                 offset_to_l2_index(s, offset));
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    if (ret == -ENOTSUP) {
        /* A compressed cluster cannot be zeroed in part: write zeros. */
        g_autofree uint8_t *zeros = g_malloc0(bytes);
        ret = qcow2_write_guest(s, offset, MIN(bytes, s->img->total_size -
                                                      offset), zeros);
    }
    return ret;
}

int qcow2_discard_clusters(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, bool full_discard,
                           Qcow2DiscardType type)
{
    /* Turning unallocated clusters into zero clusters needs an L2 table. */
    bool allocate_l2 = !full_discard && s->img->backing &&
                       s->qcow_version >= 3;

    return for_each_l2_range(s, offset, bytes, discard_entry, full_discard,
                             type, allocate_l2);
}
