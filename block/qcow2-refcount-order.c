/* SPDX-License-Identifier: MIT */
/*
 * qcow2: changing the refcount width of an image (amend refcount_bits=N).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The new refcount table and blocks are a complete second set, built next
 * to the old one:
 *
 *   1. Allocate (through the old set) a new refcount block for every range
 *      of clusters that has a non-zero refcount, and a new table.  The
 *      allocations change refcounts, so this repeats until a pass allocates
 *      nothing.
 *   2. Flush, so that the old set on disk counts every new cluster.
 *   3. Write the new blocks (a copy of every refcount in the new width) and
 *      the new table; flush.
 *   4. One header write switches refcount_order and the table together
 *      (they share the first sector).
 *   5. Free the old blocks and table through the new set.
 *
 * A crash before 4 leaves the old set, which counts the new clusters as
 * leaked; after 4, the new set, which counts the old ones as leaked until
 * 5 frees them.  Nothing else changes refcounts in between.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

typedef struct NewRefcounts {
    int order;
    int block_bits;             /* log2(entries per new refcount block) */
    uint64_t *table;            /* new block offsets, host order */
    uint64_t table_size;        /* entries, a multiple of a cluster's worth */
    int64_t table_offset;       /* 0 until allocated */
    uint64_t table_clusters;
    bool *nonempty;             /* by new block index */
    uint64_t nonempty_size;
} NewRefcounts;

static int old_block_offset(BDRVQcow2State *s, uint64_t index,
                            uint64_t *offset, GError **errp)
{
    int ret = qcow2_refblock_offset(s, index, offset);

    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, EIO,
                    "Image is corrupt (unaligned refblock offset)");
    }
    return ret;
}

/*
 * Which new blocks will hold a non-zero refcount?  Also checks that every
 * refcount fits the new width.
 */
static int find_nonempty_blocks(BDRVQcow2State *s, NewRefcounts *n,
                                Qcow2StatusFunc *status, void *opaque,
                                int64_t walk, int64_t walks, GError **errp)
{
    int new_bits = 1 << n->order;
    uint64_t i, j;
    int ret;

    n->nonempty_size = (((uint64_t)s->max_refcount_table_index + 1) <<
                        s->refcount_block_bits >> n->block_bits) + 1;
    g_free(n->nonempty);
    n->nonempty = g_new0(bool, n->nonempty_size);
    for (i = 0; i < s->refcount_table_size; i++) {
        uint64_t block;
        void *refblock;

        if (status) {
            status(opaque, walk * s->refcount_table_size + i,
                   walks * s->refcount_table_size);
        }
        ret = old_block_offset(s, i, &block, errp);
        if (ret < 0) {
            return ret;
        }
        if (!block) {
            continue;
        }
        ret = qcow2_cache_get(s, s->refcount_block_cache, block, &refblock);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Failed to retrieve refblock");
        }
        for (j = 0; j < (uint64_t)s->refcount_block_size; j++) {
            uint64_t refcount = s->get_refcount(refblock, j);
            uint64_t cluster = (i << s->refcount_block_bits) + j;

            if (!refcount) {
                continue;
            }
            if (new_bits < 64 && refcount >> new_bits) {
                qcow2_cache_put(s->refcount_block_cache, &refblock);
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "Cannot decrease refcount entry width to %i "
                            "bits: Cluster at offset %#" PRIx64 " has a "
                            "refcount of %" PRIu64, new_bits,
                            cluster << s->cluster_bits, refcount);
                return -EINVAL;
            }
            n->nonempty[cluster >> n->block_bits] = true;
        }
        qcow2_cache_put(s->refcount_block_cache, &refblock);
    }
    /* A finished walk is reported too, as QEMU does. */
    if (status) {
        status(opaque, (walk + 1) * s->refcount_table_size,
               walks * s->refcount_table_size);
    }
    return 0;
}

/* Give every non-empty new block a cluster; true if any was allocated. */
static int allocate_new_blocks(BDRVQcow2State *s, NewRefcounts *n,
                               bool *allocated, GError **errp)
{
    uint64_t epc = s->cluster_size / 8;
    uint64_t j;

    *allocated = false;
    for (j = 0; j < n->nonempty_size; j++) {
        int64_t offset;

        if (!n->nonempty[j] || (j < n->table_size && n->table[j])) {
            continue;
        }
        if (j >= n->table_size) {
            uint64_t size = ROUND_UP(j + 1, epc);

            if (size > QCOW_MAX_REFTABLE_SIZE / 8) {
                g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                            "This operation would make the refcount table "
                            "grow beyond the maximum size supported by "
                            "QEMU, aborting");
                return -ENOTSUP;
            }
            n->table = g_renew(uint64_t, n->table, size);
            memset(n->table + n->table_size, 0,
                   (size - n->table_size) * 8);
            n->table_size = size;
        }
        offset = qcow2_alloc_clusters_exact(s, 1);
        if (offset < 0) {
            g_set_error(errp, QGUARD_ERROR, (int)-offset,
                        "Failed to allocate refblock: %s",
                        g_strerror((int)-offset));
            return offset;
        }
        n->table[j] = offset;
        *allocated = true;
    }
    return 0;
}

/* The refcounts of clusters [first, first + count), in the old width. */
static int read_refcounts(BDRVQcow2State *s, uint64_t first, uint64_t count,
                          uint64_t *out, GError **errp)
{
    uint64_t c = first, end = first + count;
    int ret;

    while (c < end) {
        uint64_t index = c >> s->refcount_block_bits;
        uint64_t stop = MIN(end, (index + 1) << s->refcount_block_bits);
        uint64_t block;
        void *refblock;

        ret = old_block_offset(s, index, &block, errp);
        if (ret < 0) {
            return ret;
        }
        if (!block) {
            memset(out + (c - first), 0, (stop - c) * 8);
            c = stop;
            continue;
        }
        ret = qcow2_cache_get(s, s->refcount_block_cache, block, &refblock);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Failed to retrieve refblock");
        }
        for (; c < stop; c++) {
            out[c - first] = s->get_refcount(refblock, c &
                                             (s->refcount_block_size - 1));
        }
        qcow2_cache_put(s->refcount_block_cache, &refblock);
    }
    return 0;
}

static int write_new_block(BDRVQcow2State *s, NewRefcounts *n, uint64_t j,
                           uint64_t *counts, uint8_t *block, GError **errp)
{
    Qcow2SetRefcountFunc *set = qcow2_set_refcount_func(n->order);
    uint64_t entries = 1ULL << n->block_bits;
    uint64_t k;
    int ret;

    ret = read_refcounts(s, j << n->block_bits, entries, counts, errp);
    if (ret < 0) {
        return ret;
    }
    memset(block, 0, s->cluster_size);
    for (k = 0; k < entries; k++) {
        set(block, k, counts[k]);
    }
    ret = qcow2_pwrite_meta(s, 0, n->table[j], block, s->cluster_size);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to write refblock: %s",
                    g_strerror(-ret));
    }
    return ret;
}

/*
 * The new blocks go out in the order of the old table's entries, which
 * is what progress is counted in.
 */
static int write_new_structures(BDRVQcow2State *s, NewRefcounts *n,
                                Qcow2StatusFunc *status, void *opaque,
                                int64_t walk, GError **errp)
{
    g_autofree uint64_t *counts = g_new(uint64_t, 1ULL << n->block_bits);
    g_autofree uint8_t *block = g_malloc(s->cluster_size);
    g_autofree uint64_t *table = g_new(uint64_t, n->table_size);
    uint64_t i, j = 0;
    int ret;

    for (i = 0; i <= s->refcount_table_size; i++) {
        /* New blocks that start below the end of old block i. */
        uint64_t limit = i < s->refcount_table_size ?
                         ((i + 1) << s->refcount_block_bits) >> n->block_bits
                         : n->table_size;

        if (status && i < s->refcount_table_size) {
            status(opaque, walk * s->refcount_table_size + i,
                   (walk + 1) * s->refcount_table_size);
        }
        for (; j < n->table_size && j <= limit; j++) {
            if (!n->table[j]) {
                continue;
            }
            ret = write_new_block(s, n, j, counts, block, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (j = 0; j < n->table_size; j++) {
        table[j] = GUINT64_TO_BE(n->table[j]);
    }
    ret = qcow2_pwrite_meta(s, 0, n->table_offset, table, n->table_size * 8);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Failed to write the new reftable");
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Failed to write the new reftable: %s", g_strerror(-ret));
    }
    return ret;
}

/* Free what the old set described, through whichever set is current. */
static void free_refcount_set(BDRVQcow2State *s, const uint64_t *table,
                              uint64_t size, int64_t offset,
                              uint64_t clusters)
{
    uint64_t i;

    for (i = 0; i < size; i++) {
        uint64_t block = table[i] & REFT_OFFSET_MASK;
        if (block && !offset_into_cluster(s, block)) {
            qcow2_free_clusters(s, block, s->cluster_size,
                                QCOW2_DISCARD_OTHER);
        }
    }
    if (offset > 0) {
        qcow2_free_clusters(s, offset, clusters << s->cluster_bits,
                            QCOW2_DISCARD_OTHER);
    }
}

static void update_map(BDRVQcow2State *s, const uint64_t *table,
                       uint64_t size, uint64_t offset, uint64_t clusters,
                       bool enter)
{
    void (*fn)(BDRVQcow2State *, uint64_t, uint64_t, unsigned) =
        enter ? qcow2_map_enter : qcow2_map_remove;
    uint64_t i;

    for (i = 0; i < size; i++) {
        uint64_t block = table[i] & REFT_OFFSET_MASK;
        if (block) {
            fn(s, block, s->cluster_size, QCOW2_OL_REFCOUNT_BLOCK);
        }
    }
    fn(s, offset, clusters << s->cluster_bits, QCOW2_OL_REFCOUNT_TABLE);
}

static int switch_to_new_set(BDRVQcow2State *s, NewRefcounts *n,
                             GError **errp)
{
    int old_order = s->refcount_order;
    uint64_t *old_table = s->refcount_table;
    uint64_t old_size = s->refcount_table_size;
    uint64_t old_offset = s->refcount_table_offset;
    uint64_t old_clusters = size_to_clusters(s, old_size * 8);
    int ret;

    /* Cached blocks are in the old width; none may be written later. */
    ret = qcow2_cache_empty(s, s->refcount_block_cache);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret,
                                "Failed to flush the refblock cache");
    }
    s->refcount_order = n->order;
    s->refcount_table_size = n->table_size;
    s->refcount_table_offset = n->table_offset;
    ret = qcow2_update_header(s);
    if (ret < 0) {
        s->refcount_order = old_order;
        s->refcount_table_size = old_size;
        s->refcount_table_offset = old_offset;
        if (ret != -ENOSPC) {
            /* Either header may be on disk now: stop using the image. */
            qguard_message("qcow2: Failed to switch to new metadata: %s; the "
                           "image refuses further requests until it is "
                           "reopened", g_strerror(-ret));
            bdrv_set_broken(s->img, true);
        }
        return bdrv_error_errno(errp, ret, "Failed to update the qcow2 header");
    }

    s->refcount_table = n->table;
    n->table = NULL;
    qcow2_refcount_setup_order(s);
    qcow2_refcount_table_changed(s);
    /* Its chunks are refcount blocks, which now cover other ranges. */
    qcow2_free_index_destroy(s);
    qcow2_free_index_init(s);
    s->free_cluster_index = 0;
    update_map(s, old_table, old_size, old_offset, old_clusters, false);
    update_map(s, s->refcount_table, s->refcount_table_size,
               s->refcount_table_offset, n->table_clusters, true);

    free_refcount_set(s, old_table, old_size, old_offset, old_clusters);
    g_free(old_table);
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Failed to free the old refcount structures: %s",
                    g_strerror(-ret));
    }
    return ret;
}

int qcow2_change_refcount_order(BDRVQcow2State *s, int refcount_order,
                                Qcow2StatusFunc *status, void *opaque,
                                GError **errp)
{
    NewRefcounts n = {
        .order = refcount_order,
        .block_bits = s->cluster_bits - (refcount_order - 3),
    };
    int64_t walk = 0;
    bool allocated;
    int ret;

    g_assert(s->qcow_version >= 3);
    g_assert(refcount_order >= 0 && refcount_order <= 6);

    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Failed to flush metadata");
    }
    do {
        ret = find_nonempty_blocks(s, &n, status, opaque, walk,
                                   MAX(walk + 2, 3), errp);
        walk++;
        if (ret >= 0) {
            ret = allocate_new_blocks(s, &n, &allocated, errp);
        }
        if (ret < 0) {
            goto fail;
        }
        if (allocated) {
            /* The table grows with the blocks; allocate it anew. */
            if (n.table_offset > 0) {
                qcow2_free_clusters(s, n.table_offset,
                                    n.table_clusters << s->cluster_bits,
                                    QCOW2_DISCARD_NEVER);
                n.table_offset = 0;
            }
            n.table_clusters = size_to_clusters(s, n.table_size * 8);
            n.table_offset = qcow2_alloc_clusters_exact(s, n.table_clusters);
            if (n.table_offset < 0) {
                ret = n.table_offset;
                n.table_offset = 0;
                g_set_error(errp, QGUARD_ERROR, -ret,
                            "Failed to allocate the new reftable: %s",
                            g_strerror(-ret));
                goto fail;
            }
        }
    } while (allocated);

    /* The old set on disk must count every new cluster before step 3. */
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to flush metadata: %s",
                    g_strerror(-ret));
        goto fail;
    }
    ret = write_new_structures(s, &n, status, opaque, walk, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = switch_to_new_set(s, &n, errp);
    if (ret < 0 && !n.table) {
        /* Switched: the failure only left some old clusters leaked. */
        goto out;
    }
    if (ret < 0) {
        goto fail;
    }
    if (status) {
        status(opaque, (walk + 1) * s->refcount_table_size,
               (walk + 1) * s->refcount_table_size);
    }
    goto out;

fail:
    if (!bdrv_is_broken(s->img) && n.table) {
        free_refcount_set(s, n.table, n.table_size, n.table_offset,
                          n.table_clusters);
    }
out:
    g_free(n.table);
    g_free(n.nonempty);
    return ret;
}
