/* SPDX-License-Identifier: MIT */
/*
 * qcow2: dropping the refcount blocks that count nothing, after a shrink.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A shrink frees the clusters past the new end, which can leave refcount
 * blocks that hold only zeros (or only their own reference).  QEMU takes
 * them out of the table, so that the file can be cut after the last
 * cluster still in use and no table entry points at a block of zeros (its
 * iotest 163 checks that).  The table without them is written and flushed
 * first; only then are the blocks freed, so a crash in between leaks them
 * and never leaves the table pointing at a block that is reused.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

/*
 * Does the refcount block of table entry @index count nothing but, if it
 * lies in its own range, itself?
 */
static int refblock_unused(BDRVQcow2State *s, uint64_t index, uint64_t block,
                           bool *unused)
{
    uint64_t own = block >> s->cluster_bits;
    bool self = (own >> s->refcount_block_bits) == index;
    uint64_t own_slot = own & (s->refcount_block_size - 1);
    void *refblock;
    uint64_t j;
    int ret;

    ret = qcow2_cache_get(s, s->refcount_block_cache, block, &refblock);
    if (ret < 0) {
        return ret;
    }
    *unused = true;
    for (j = 0; j < (uint64_t)s->refcount_block_size && *unused; j++) {
        if (self && j == own_slot) {
            continue;
        }
        *unused = s->get_refcount(refblock, j) == 0;
    }
    qcow2_cache_put(s->refcount_block_cache, &refblock);
    return 0;
}

/* One pass; *@dropped says whether it took any block out. */
static int shrink_pass(BDRVQcow2State *s, bool *dropped)
{
    uint64_t size = s->refcount_table_size;
    g_autofree uint64_t *disk = g_new0(uint64_t, MAX(size, 1));
    g_autofree bool *drop = g_new0(bool, MAX(size, 1));
    bool any = false;
    uint64_t i;
    int ret;

    for (i = 0; i < size; i++) {
        uint64_t block = s->refcount_table[i] & REFT_OFFSET_MASK;

        if (block && !offset_into_cluster(s, block)) {
            ret = refblock_unused(s, i, block, &drop[i]);
            if (ret < 0) {
                return ret;
            }
            any |= drop[i];
        }
        disk[i] = drop[i] ? 0 : GUINT64_TO_BE(s->refcount_table[i]);
    }
    *dropped = any;
    if (!any) {
        return 0;
    }

    ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_TABLE,
                            s->refcount_table_offset, disk, size * 8);
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        /* The table on disk may be either: freeing nothing is safe. */
        return ret;
    }

    for (i = 0; i < size; i++) {
        uint64_t block = s->refcount_table[i] & REFT_OFFSET_MASK;
        uint64_t own = block >> s->cluster_bits;

        if (!drop[i]) {
            continue;
        }
        qcow2_cache_discard(s->refcount_block_cache, block);
        qcow2_map_remove(s, block, s->cluster_size, QCOW2_OL_REFCOUNT_BLOCK);
        s->refcount_table[i] = 0;
        if ((own >> s->refcount_block_bits) == i) {
            /* Its only reference went with it. */
            qcow2_free_index_mark_free(s, own, 1);
            if (own < s->free_cluster_index) {
                s->free_cluster_index = own;
            }
        } else {
            ret = qcow2_free_clusters(s, block, s->cluster_size,
                                      QCOW2_DISCARD_OTHER);
            if (ret < 0) {
                break;
            }
        }
    }
    qcow2_refcount_table_changed(s);
    return ret < 0 ? ret : 0;
}

/*
 * Freeing a dropped block can leave the block that counted it empty in
 * turn, so passes repeat until one drops nothing (each drops at least one
 * block, so there are at most as many as the table has entries).
 */
int qcow2_shrink_reftable(BDRVQcow2State *s)
{
    bool dropped = true;
    int ret = 0;

    while (dropped && ret == 0) {
        ret = shrink_pass(s, &dropped);
    }
    return ret;
}
