/* SPDX-License-Identifier: MIT */
/*
 * qcow2 bulk allocation at the tail of the file (docs/allocation.md): the
 * clusters of a large preallocation, with the refcount blocks and the
 * refcount table they need, written in a few large writes and two syncs.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define TAIL_WRITE_BYTES (4 * 1024 * 1024)

/* Past the last cluster in use or freed since the last flush. */
int64_t qcow2_tail_cluster(BDRVQcow2State *s)
{
    int64_t end = qcow2_host_end_cluster(s);
    GArray *a = s->freed_clusters;

    if (end >= 0 && a->len) {
        Qcow2FreedRange *r = &g_array_index(a, Qcow2FreedRange, a->len - 1);
        end = MAX((uint64_t)end, r->first + r->count);
    }
    return end < 0 ? end : MAX(end, 1);
}

static bool has_refblock(BDRVQcow2State *s, uint64_t index)
{
    return index < s->refcount_table_size &&
           (s->refcount_table[index] & REFT_OFFSET_MASK);
}

/* Apply +1 (or undo it) to the part of [first, end) with refcount blocks. */
static int tail_existing_refcounts(BDRVQcow2State *s, uint64_t first,
                                   uint64_t end, bool undo)
{
    uint64_t c = first;

    while (c < end) {
        uint64_t index = c >> s->refcount_block_bits;
        uint64_t next = MIN(end, (index + 1) << s->refcount_block_bits);

        if (has_refblock(s, index)) {
            int ret = qcow2_update_refcount(s, c << s->cluster_bits,
                                            (next - c) << s->cluster_bits, 1,
                                            undo, QCOW2_DISCARD_NEVER);
            if (ret < 0) {
                return ret;
            }
        }
        c = next;
    }
    return 0;
}

/*
 * Cluster @k of the new area: a new refcount block (refcount 1 for the new
 * clusters it describes) or a cluster of the new refcount table.
 */
static void fill_area_cluster(BDRVQcow2State *s, uint8_t *buf, uint64_t k,
                              const uint64_t *new_index, uint64_t nb,
                              const uint8_t *table, const uint8_t *all_ones,
                              uint64_t first, uint64_t end)
{
    uint64_t from, to, c;

    if (k >= nb) {
        memcpy(buf, table + ((k - nb) << s->cluster_bits), s->cluster_size);
        return;
    }
    from = MAX(first, new_index[k] << s->refcount_block_bits);
    to = MIN(end, (new_index[k] + 1) << s->refcount_block_bits);
    if (to - from == (uint64_t)s->refcount_block_size) {
        memcpy(buf, all_ones, s->cluster_size);
        return;
    }
    memset(buf, 0, s->cluster_size);
    for (c = from; c < to; c++) {
        s->set_refcount(buf, c & (s->refcount_block_size - 1), 1);
    }
}

/*
 * Allocate @n contiguous clusters past everything in use, together with
 * the refcount blocks they need: the missing blocks and a complete new
 * refcount table go first in the same run, and the header switches to the
 * new table with one write.  Order: existing blocks, new blocks and table
 * written, one sync, header, one sync.  Returns the offset of the first of
 * the @n clusters, whose refcounts are on disk.
 */
int64_t qcow2_alloc_tail(BDRVQcow2State *s, uint64_t n)
{
    uint64_t epc = s->cluster_size / 8;
    uint64_t limit = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    uint64_t old_size = s->refcount_table_size;
    uint64_t old_offset = s->refcount_table_offset;
    uint64_t old_clusters = size_to_clusters(s, old_size * 8);
    uint64_t nb = 0, tc = 0, entries = old_size, first, end, i, k;
    g_autofree uint64_t *new_index = NULL;
    g_autofree uint64_t *new_table = NULL;
    g_autofree uint8_t *table = NULL;
    g_autofree uint8_t *buf = NULL;
    g_autofree uint8_t *all_ones = NULL;
    uint64_t batch, table_offset;
    int64_t start;
    int ret;

    if (n == 0) {
        return -EINVAL;
    }
    start = qcow2_tail_cluster(s);
    if (start < 0) {
        return start;
    }
    first = start;

    /* Blocks and table describe themselves too: repeat until they fit. */
    for (;;) {
        uint64_t want_nb = 0, want_entries = old_size, want_tc = 0, last;

        end = first + nb + tc + n;
        if (end > limit || end < first) {
            return -EFBIG;
        }
        last = (end - 1) >> s->refcount_block_bits;
        for (i = first >> s->refcount_block_bits; i <= last; i++) {
            want_nb += !has_refblock(s, i);
        }
        if (want_nb) {
            want_entries = ROUND_UP(MAX(old_size, last + 1), epc);
            want_tc = want_entries / epc;
        }
        if (want_nb == nb && want_tc == tc) {
            entries = want_entries;
            break;
        }
        nb = want_nb;
        tc = want_tc;
    }
    if (entries * 8 > QCOW_MAX_REFTABLE_SIZE) {
        qcow2_set_error(s, "Refcount table would exceed the maximum size");
        return -EFBIG;
    }
    ret = tail_existing_refcounts(s, first, end, false);
    if (ret < 0) {
        return ret;
    }
    if (nb == 0) {
        ret = qcow2_flush_refcounts(s);
        if (ret < 0) {
            goto undo;
        }
        return (int64_t)first << s->cluster_bits;
    }

    new_index = g_try_new(uint64_t, nb);
    new_table = g_try_new0(uint64_t, entries);
    table = g_try_malloc0(tc << s->cluster_bits);
    batch = MAX(1u, MIN(nb + tc,
                        (uint64_t)TAIL_WRITE_BYTES >> s->cluster_bits));
    buf = g_try_malloc(batch << s->cluster_bits);
    all_ones = g_try_malloc0(s->cluster_size);
    if (!new_index || !new_table || !table || !buf || !all_ones) {
        ret = -ENOMEM;
        goto undo;
    }
    for (i = 0; i < (uint64_t)s->refcount_block_size; i++) {
        s->set_refcount(all_ones, i, 1);
    }
    memcpy(new_table, s->refcount_table, old_size * 8);
    k = 0;
    for (i = first >> s->refcount_block_bits;
         i <= (end - 1) >> s->refcount_block_bits; i++) {
        if (!has_refblock(s, i)) {
            new_index[k] = i;
            new_table[i] = (first + k) << s->cluster_bits;
            k++;
        }
    }
    for (i = 0; i < entries; i++) {
        be_put64(table + i * 8, new_table[i]);
    }
    table_offset = (first + nb) << s->cluster_bits;

    /* Existing blocks first: the new table names them too. */
    ret = qcow2_cache_write(s, s->refcount_block_cache);
    if (ret < 0) {
        goto undo;
    }
    for (k = 0; k < nb + tc; k += batch) {
        uint64_t cnt = MIN(batch, nb + tc - k), j;

        for (j = 0; j < cnt; j++) {
            fill_area_cluster(s, buf + (j << s->cluster_bits), k + j,
                              new_index, nb, table, all_ones, first, end);
        }
        ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_BLOCK |
                                QCOW2_OL_REFCOUNT_TABLE,
                                (first + k) << s->cluster_bits, buf,
                                cnt << s->cluster_bits);
        if (ret < 0) {
            goto undo;
        }
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        goto undo;
    }
    ret = qcow2_switch_refcount_table(s, &new_table, entries, table_offset,
                                      tc);
    if (ret < 0) {
        return ret;
    }
    for (k = 0; k < nb; k++) {
        uint64_t from = MAX(first, new_index[k] << s->refcount_block_bits);
        uint64_t to = MIN(end, (new_index[k] + 1) << s->refcount_block_bits);
        qcow2_free_index_mark_used(s, from, to - from);
    }
    qcow2_map_enter(s, first << s->cluster_bits, nb << s->cluster_bits,
                    QCOW2_OL_REFCOUNT_BLOCK);
    qcow2_map_enter(s, table_offset, tc << s->cluster_bits,
                    QCOW2_OL_REFCOUNT_TABLE);
    if (old_clusters) {
        /* Unreferenced now; a failure here only leaks it. */
        ret = qcow2_free_clusters(s, old_offset,
                                  old_clusters << s->cluster_bits,
                                  QCOW2_DISCARD_OTHER);
        if (ret < 0) {
            return ret;
        }
    }
    return (int64_t)(first + nb + tc) << s->cluster_bits;

undo:
    (void)tail_existing_refcounts(s, first, end, true);
    return ret;
}
