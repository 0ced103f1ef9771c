/* SPDX-License-Identifier: MIT */
/*
 * Keeping qcow2's metadata entered in the windowed overlap map
 * (qcow2-overlap.c): the build at open and the bulk changes made by
 * snapshot operations.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The map expands a window into a bytemap to edit it and keeps only a few
 * expanded, so the order of bulk edits matters.  Tables list their clusters
 * in table order, and the L2 tables of any image written at random places
 * (or copied after a snapshot) lie scattered over the file in that order:
 * entering them one by one expands and compresses a window per entry.
 * Bulk edits therefore collect the clusters, sort them and enter runs in
 * host order, so that each window is expanded once.
 *
 * Inactive L2 tables: the map carries the bit for a cluster while at least
 * one snapshot L1 table names it; s->inactive_l2_refs counts how many do.
 * At open the snapshots' L1 tables are read a slice of indexes at a time,
 * all snapshots side by side: consecutive snapshots mostly share their L2
 * tables, so equal neighbours are counted together and the hash table sees
 * one update per distinct table per slice instead of one per snapshot.
 */
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/*
 * Building inactive L2 counts reads this many L1 entries of all snapshots
 * at a time (at most 8192 per snapshot, at least 16).
 */
#define L1_SLICES_TOTAL_ENTRIES (1024 * 1024)

/*
 * Damaged images can name tables past 2^56, where nothing can ever be
 * written (writes there are refused first): they need no protection.
 */
static bool clamp_to_host_range(uint64_t offset, uint64_t *size)
{
    if (!*size || offset >= QCOW2_MAX_HOST_OFFSET) {
        return false;
    }
    *size = MIN(*size, QCOW2_MAX_HOST_OFFSET - offset);
    return true;
}

void qcow2_map_enter(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                     unsigned type)
{
    if (s->metadata_map && clamp_to_host_range(offset, &size)) {
        qcow2_metadata_map_enter(s->metadata_map, offset, size, type);
    }
}

void qcow2_map_remove(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                      unsigned type)
{
    if (s->metadata_map && clamp_to_host_range(offset, &size)) {
        qcow2_metadata_map_remove(s->metadata_map, offset, size, type);
    }
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/*
 * Enter (or remove) @type for one cluster at each of @offsets, in host
 * order, merging adjacent clusters into runs; duplicates are harmless.
 * Sorts @offsets in place.
 */
static void map_clusters(BDRVQcow2State *s, uint64_t *offsets, size_t n,
                         unsigned type, bool enter)
{
    size_t i = 0;

    if (!n) {
        return;     /* @offsets may be NULL, which qsort() must not see */
    }
    qsort(offsets, n, sizeof(*offsets), compare_u64);
    while (i < n) {
        uint64_t start = offsets[i], end = start + s->cluster_size;

        for (i++; i < n && offsets[i] <= end; i++) {
            end = MAX(end, offsets[i] + s->cluster_size);
        }
        if (enter) {
            qcow2_map_enter(s, start, end - start, type);
        } else {
            qcow2_map_remove(s, start, end - start, type);
        }
    }
}

/* Enter or remove ACTIVE_L2 for every L2 table of @l1. */
void qcow2_map_active_l2(BDRVQcow2State *s, const uint64_t *l1,
                         uint32_t l1_size, bool enter)
{
    g_autofree uint64_t *tables = NULL;
    size_t n = 0;
    uint32_t i;

    if (!s->metadata_map) {
        return;
    }
    tables = g_try_new(uint64_t, MAX(l1_size, 1));
    for (i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & L1E_OFFSET_MASK;

        if (!l2) {
            continue;
        }
        if (tables) {
            tables[n++] = l2;
        } else if (enter) {
            /* No memory to sort: table order is slower but as correct. */
            qcow2_map_enter(s, l2, s->cluster_size, QCOW2_OL_ACTIVE_L2);
        } else {
            qcow2_map_remove(s, l2, s->cluster_size, QCOW2_OL_ACTIVE_L2);
        }
    }
    if (tables) {
        map_clusters(s, tables, n, QCOW2_OL_ACTIVE_L2, enter);
    }
}

/*
 * The snapshot table and the L1 table of every snapshot.  An invalid L1
 * table stays out: check reports it and nothing reads through it.
 */
void qcow2_map_snapshot_tables(BDRVQcow2State *s)
{
    uint32_t i;

    qcow2_map_enter(s, s->snapshots_offset, s->snapshots_size,
                    QCOW2_OL_SNAPSHOT_TABLE);
    for (i = 0; i < s->nb_snapshots; i++) {
        QCowSnapshot *sn = &s->snapshots[i];

        if (qcow2_snapshot_l1_valid(s, sn)) {
            qcow2_map_enter(s, sn->l1_table_offset,
                            (uint64_t)sn->l1_size * 8, QCOW2_OL_INACTIVE_L1);
        }
    }
}

/*
 * Count @refs more (or fewer) snapshot references to the L2 table at @l2.
 * A table whose count leaves or reaches zero is appended to @changed, or
 * mapped at once if @changed is NULL.
 */
static void count_inactive_l2(BDRVQcow2State *s, uint64_t l2, guint refs,
                              bool add, GArray *changed)
{
    gpointer key = GSIZE_TO_POINTER(l2 >> s->cluster_bits);
    guint count = GPOINTER_TO_UINT(g_hash_table_lookup(s->inactive_l2_refs,
                                                       key));
    bool flips;

    if (add) {
        flips = count == 0;
        count += refs;
    } else {
        if (!count) {
            return;
        }
        count = count > refs ? count - refs : 0;
        flips = count == 0;
    }
    if (count) {
        g_hash_table_insert(s->inactive_l2_refs, key, GUINT_TO_POINTER(count));
    } else {
        g_hash_table_remove(s->inactive_l2_refs, key);
    }
    if (!flips) {
        return;
    }
    if (changed) {
        g_array_append_val(changed, l2);
    } else if (add) {
        qcow2_map_enter(s, l2, s->cluster_size, QCOW2_OL_INACTIVE_L2);
    } else {
        qcow2_map_remove(s, l2, s->cluster_size, QCOW2_OL_INACTIVE_L2);
    }
}

static void map_changed(BDRVQcow2State *s, GArray *changed, bool add)
{
    map_clusters(s, (uint64_t *)(void *)changed->data, changed->len,
                 QCOW2_OL_INACTIVE_L2, add);
    g_array_set_size(changed, 0);
}

/*
 * Count one more (or one fewer) snapshot L1 table referencing each L2 table
 * of @l1 (snapshot create and delete).  Only kept when inactive L2 tables
 * are checked.
 */
void qcow2_map_inactive_l2(BDRVQcow2State *s, const uint64_t *l1,
                           uint32_t l1_size, bool add)
{
    g_autoptr(GArray) changed = NULL;
    uint32_t i;

    if (!s->metadata_map || !s->inactive_l2_refs) {
        return;
    }
    changed = g_array_sized_new(false, false, sizeof(uint64_t), 0);
    for (i = 0; i < l1_size; i++) {
        uint64_t l2 = l1[i] & L1E_OFFSET_MASK;

        if (l2) {
            count_inactive_l2(s, l2, 1, add, changed);
        }
    }
    map_changed(s, changed, add);
}

/*
 * Count the references of every valid snapshot's L1 table and enter the
 * tables they name, reading all L1 tables a slice of indexes at a time.
 */
static int map_snapshot_l2_tables(BDRVQcow2State *s, GError **errp)
{
    g_autofree QCowSnapshot **sns = g_new(QCowSnapshot *,
                                          MAX(s->nb_snapshots, 1));
    g_autofree uint64_t *slices = NULL;
    g_autoptr(GArray) changed = g_array_sized_new(false, false,
                                                  sizeof(uint64_t), 0);
    uint32_t nsn = 0, max_l1 = 0, slice_len, base, i, k;

    for (i = 0; i < s->nb_snapshots; i++) {
        if (qcow2_snapshot_l1_valid(s, &s->snapshots[i])) {
            sns[nsn++] = &s->snapshots[i];
            max_l1 = MAX(max_l1, s->snapshots[i].l1_size);
        }
    }
    if (!nsn) {
        return 0;
    }
    slice_len = CLAMP(L1_SLICES_TOTAL_ENTRIES / nsn, 16, 8192);
    slices = g_try_new(uint64_t, (size_t)nsn * slice_len);
    if (!slices) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Could not allocate snapshot L1 table buffers");
        return -ENOMEM;
    }
    for (base = 0; base < max_l1; base += slice_len) {
        uint32_t len = MIN(slice_len, max_l1 - base);

        for (k = 0; k < nsn; k++) {
            uint64_t *slice = slices + (size_t)k * slice_len;
            uint32_t have = sns[k]->l1_size > base
                            ? MIN(len, sns[k]->l1_size - base) : 0;
            int ret = 0;

            if (have) {
                ret = host_file_pread(s->file, sns[k]->l1_table_offset +
                                      (uint64_t)base * 8, slice,
                                      (size_t)have * 8);
            }
            if (ret < 0) {
                return bdrv_error_errno(errp, ret,
                                        "Could not read snapshot L1 table");
            }
            for (i = 0; i < have; i++) {
                slice[i] = GUINT64_FROM_BE(slice[i]) & L1E_OFFSET_MASK;
            }
            memset(slice + have, 0, (size_t)(len - have) * 8);
        }
        for (i = 0; i < len; i++) {
            uint64_t run_l2 = 0;
            guint run = 0;

            /* Equal neighbours (snapshots sharing the table) count once. */
            for (k = 0; k < nsn; k++) {
                uint64_t l2 = slices[(size_t)k * slice_len + i];

                if (l2 != run_l2) {
                    if (run_l2) {
                        count_inactive_l2(s, run_l2, run, true, changed);
                    }
                    run_l2 = l2;
                    run = 0;
                }
                run++;
            }
            if (run_l2) {
                count_inactive_l2(s, run_l2, run, true, changed);
            }
        }
    }
    map_changed(s, changed, true);
    return 0;
}

/*
 * Enter every piece of metadata into the windowed map.  This is the same
 * walk QEMU's scan does on every write, done once.  Inactive L2 tables need
 * the snapshots' L1 tables from disk, so they are only entered when checks
 * for them are enabled.
 */
int qcow2_map_build(BDRVQcow2State *s, GError **errp)
{
    g_autofree uint64_t *blocks = NULL;
    size_t n = 0;
    uint32_t i;

    if (s->overlap_algorithm != QCOW2_OVERLAP_WINDOWED || !s->overlap_check) {
        return 0;
    }
    s->metadata_map = qcow2_metadata_map_new(s->cluster_bits,
                                             s->overlap_cache_size);
    qcow2_overlap_update_check_map(s);
    if (s->overlap_check & QCOW2_OL_INACTIVE_L2) {
        s->inactive_l2_refs = g_hash_table_new(g_direct_hash,
                                               g_direct_equal);
    }
    qcow2_map_enter(s, 0, s->cluster_size, QCOW2_OL_MAIN_HEADER);
    qcow2_map_enter(s, s->l1_table_offset, (uint64_t)s->l1_size * 8,
                    QCOW2_OL_ACTIVE_L1);
    qcow2_map_enter(s, s->refcount_table_offset,
                    (uint64_t)s->refcount_table_size * 8,
                    QCOW2_OL_REFCOUNT_TABLE);
    blocks = g_try_new(uint64_t, MAX(s->refcount_table_size, 1));
    for (i = 0; i < s->refcount_table_size; i++) {
        uint64_t rb = s->refcount_table[i] & REFT_OFFSET_MASK;

        if (!rb) {
            continue;
        }
        if (blocks) {
            blocks[n++] = rb;
        } else {
            qcow2_map_enter(s, rb, s->cluster_size, QCOW2_OL_REFCOUNT_BLOCK);
        }
    }
    if (blocks) {
        map_clusters(s, blocks, n, QCOW2_OL_REFCOUNT_BLOCK, true);
    }
    qcow2_map_active_l2(s, s->l1_table, s->l1_size, true);
    qcow2_map_snapshot_tables(s);
    if (s->inactive_l2_refs) {
        int ret = map_snapshot_l2_tables(s, errp);

        if (ret < 0) {
            return ret;
        }
    }
    qcow2_bitmaps_map(s);
    return 0;
}
