/* SPDX-License-Identifier: MIT */
/*
 * qcow2 metadata overlap checks on the write path: the entry every write
 * of metadata or data goes through, QEMU's linear scan of the tables (the
 * "linear" algorithm, and the reference the windowed map is tested
 * against), the refusal that marks the image corrupt, and the path for
 * snapshot L1 tables too damaged to enter into the map.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The windowed map itself is in qcow2-overlap*.c; entering the image's
 * metadata into it is in qcow2-map.c.
 */
#include "qcow2.h"

/*
 * The order in which QEMU's scan tests the types; when a write overlaps
 * several, the first in this order is the one reported.
 */
static const int overlap_report_order[] = {
    QCOW2_OL_MAIN_HEADER_BITNR, QCOW2_OL_ACTIVE_L1_BITNR,
    QCOW2_OL_REFCOUNT_TABLE_BITNR, QCOW2_OL_SNAPSHOT_TABLE_BITNR,
    QCOW2_OL_INACTIVE_L1_BITNR, QCOW2_OL_ACTIVE_L2_BITNR,
    QCOW2_OL_REFCOUNT_BLOCK_BITNR, QCOW2_OL_INACTIVE_L2_BITNR,
    QCOW2_OL_BITMAP_DIRECTORY_BITNR,
};

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b,
                           uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/*
 * QEMU's scan, kept faithfully as the baseline and the test oracle: the same
 * tests in the same order, linear in the L1 and refcount tables, and in
 * mode "all" reading every snapshot's L1 table from disk on every call.
 * Returns the first overlapping type as a mask, or a negative errno.
 */
unsigned qcow2_linear_overlap_check(BDRVQcow2State *s, unsigned chk,
                                    uint64_t offset, uint64_t size)
{
    uint32_t i, j;

    if (!size) {
        return 0;
    }
    if ((chk & QCOW2_OL_MAIN_HEADER) && offset < (uint64_t)s->cluster_size) {
        return QCOW2_OL_MAIN_HEADER;
    }
    size = ((offset_into_cluster(s, offset) + size + s->cluster_size - 1) >>
            s->cluster_bits) << s->cluster_bits;
    offset = start_of_cluster(s, offset);

    if ((chk & QCOW2_OL_ACTIVE_L1) && s->l1_size &&
        ranges_overlap(offset, size, s->l1_table_offset,
                       (uint64_t)s->l1_size * 8)) {
        return QCOW2_OL_ACTIVE_L1;
    }
    if ((chk & QCOW2_OL_REFCOUNT_TABLE) && s->refcount_table_size &&
        ranges_overlap(offset, size, s->refcount_table_offset,
                       (uint64_t)s->refcount_table_size * 8)) {
        return QCOW2_OL_REFCOUNT_TABLE;
    }
    if ((chk & QCOW2_OL_SNAPSHOT_TABLE) && s->snapshots_size &&
        ranges_overlap(offset, size, s->snapshots_offset,
                       s->snapshots_size)) {
        return QCOW2_OL_SNAPSHOT_TABLE;
    }
    if ((chk & QCOW2_OL_INACTIVE_L1) && s->snapshots) {
        for (i = 0; i < s->nb_snapshots; i++) {
            if (s->snapshots[i].l1_size &&
                ranges_overlap(offset, size, s->snapshots[i].l1_table_offset,
                               (uint64_t)s->snapshots[i].l1_size * 8)) {
                return QCOW2_OL_INACTIVE_L1;
            }
        }
    }
    if ((chk & QCOW2_OL_ACTIVE_L2) && s->l1_table) {
        for (i = 0; i < s->l1_size; i++) {
            uint64_t l2 = s->l1_table[i] & L1E_OFFSET_MASK;
            if (l2 && ranges_overlap(offset, size, l2, s->cluster_size)) {
                return QCOW2_OL_ACTIVE_L2;
            }
        }
    }
    if ((chk & QCOW2_OL_REFCOUNT_BLOCK) && s->refcount_table) {
        for (i = 0; i <= s->max_refcount_table_index &&
                    i < s->refcount_table_size; i++) {
            uint64_t rb = s->refcount_table[i] & REFT_OFFSET_MASK;
            if (rb && ranges_overlap(offset, size, rb, s->cluster_size)) {
                return QCOW2_OL_REFCOUNT_BLOCK;
            }
        }
    }
    if ((chk & QCOW2_OL_INACTIVE_L2) && s->snapshots) {
        for (i = 0; i < s->nb_snapshots; i++) {
            uint64_t l1_ofs = s->snapshots[i].l1_table_offset;
            uint32_t l1_sz = s->snapshots[i].l1_size;
            uint64_t *l1;
            int ret;

            ret = qcow2_validate_table(s, l1_ofs, l1_sz, 8, QCOW_MAX_L1_SIZE,
                                       "", NULL);
            if (ret < 0) {
                return ret;
            }
            if (!l1_sz) {
                continue;
            }
            ret = qcow2_read_l1_table(s, l1_ofs, l1_sz, &l1);
            if (ret < 0) {
                return ret;
            }
            for (j = 0; j < l1_sz; j++) {
                uint64_t l2 = l1[j] & L1E_OFFSET_MASK;
                if (l2 && ranges_overlap(offset, size, l2, s->cluster_size)) {
                    g_free(l1);
                    return QCOW2_OL_INACTIVE_L2;
                }
            }
            g_free(l1);
        }
    }
    /* The bitmap tables count as part of the directory (docs/bitmaps.md). */
    if ((chk & QCOW2_OL_BITMAP_DIRECTORY) &&
        (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) &&
        (ranges_overlap(offset, size, s->bitmap_directory_offset,
                        s->bitmap_directory_size) ||
         qcow2_bitmaps_overlap(s, offset, size))) {
        return QCOW2_OL_BITMAP_DIRECTORY;
    }
    return 0;
}

/*
 * A snapshot L1 table is not valid (the map leaves it out): QEMU refuses
 * writes to the range it claims when it checks inactive L1 tables, and
 * fails every write with the table's error when it checks inactive L2
 * tables, unless the write overlaps a type that it tests before.
 */
static G_GNUC_NO_INLINE
int overlap_hit_bad_snapshot(BDRVQcow2State *s, unsigned chk,
                             uint64_t offset, uint64_t size)
{
    const unsigned before_l1 = QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 |
                               QCOW2_OL_REFCOUNT_TABLE |
                               QCOW2_OL_SNAPSHOT_TABLE;
    GArray *bad = s->invalid_snapshot_l1s;
    int hit;
    guint i;

    /* the map counts the check; an empty range overlaps nothing */
    hit = qcow2_metadata_map_check_types(s->metadata_map, chk, offset, size);
    if (!size || hit < 0 || (hit & before_l1)) {
        return hit;
    }
    for (i = 0; (chk & QCOW2_OL_INACTIVE_L1) && bad && i < bad->len; i++) {
        const uint64_t *range = &g_array_index(bad, uint64_t, 2 * i);

        if (ranges_overlap(offset, size, range[0], range[1])) {
            return QCOW2_OL_INACTIVE_L1;
        }
    }
    if ((hit & ~(QCOW2_OL_INACTIVE_L2 | QCOW2_OL_BITMAP_DIRECTORY)) ||
        !(chk & QCOW2_OL_INACTIVE_L2) || !s->snapshot_l1_error) {
        return hit;
    }
    return s->snapshot_l1_error;
}

/*
 * Checks without a map to answer them alone: the linear scan, or the map
 * while a snapshot L1 table fails validation.
 */
static G_GNUC_NO_INLINE
int overlap_hit_slow(BDRVQcow2State *s, unsigned chk, uint64_t offset,
                     uint64_t size)
{
    /* only the windowed algorithm builds a map (qcow2_map_build()) */
    if (s->metadata_map) {
        if (s->snapshot_l1_error &&
            (chk & (QCOW2_OL_INACTIVE_L1 | QCOW2_OL_INACTIVE_L2))) {
            return overlap_hit_bad_snapshot(s, chk, offset, size);
        }
        return qcow2_metadata_map_check_types(s->metadata_map, chk, offset,
                                              size);
    }
    s->overlap_checks++;
    return size ? (int)qcow2_linear_overlap_check(s, chk, offset, size) : 0;
}

void qcow2_overlap_update_check_map(BDRVQcow2State *s)
{
    s->check_map = s->snapshot_l1_error ? NULL : s->metadata_map;
}

/*
 * Checks made: the map counts those it answers (its queries), the scan
 * those it makes.
 */
uint64_t qcow2_overlap_checks(BDRVQcow2State *s)
{
    Qcow2MetadataMapStats ms = { 0 };

    if (s->metadata_map) {
        qcow2_metadata_map_get_stats(s->metadata_map, &ms);
    }
    return s->overlap_checks + ms.queries;
}

/*
 * The check before every write, the hot path: the mask of enabled types
 * other than @ignore that [offset, offset + size) overlaps, or a negative
 * errno.  The map is asked with a tail call, and counts the check itself;
 * the caller refuses a non-zero answer with qcow2_refuse_overlap().
 */
int qcow2_overlap_hit(BDRVQcow2State *s, unsigned ignore, uint64_t offset,
                      uint64_t size)
{
    unsigned chk = s->overlap_check & ~ignore;

    if (!chk) {
        return 0;
    }
    if (G_LIKELY(s->check_map)) {
        return qcow2_metadata_map_check_types(s->check_map, chk, offset,
                                              size);
    }
    return overlap_hit_slow(s, chk, offset, size);
}

/* A write would hit metadata (@hit): refuse it as QEMU does, naming it. */
int qcow2_refuse_overlap(BDRVQcow2State *s, int hit, uint64_t offset,
                         uint64_t size)
{
    size_t i;

    if (hit < 0) {
        return hit;
    }
    for (i = 0; i < G_N_ELEMENTS(overlap_report_order); i++) {
        int bitnr = overlap_report_order[i];
        if (hit & (1 << bitnr)) {
            s->overlap_refused++;
            qcow2_signal_corruption(s, true, offset, size,
                                    "Preventing invalid write on metadata "
                                    "(overlaps with %s)",
                                    qcow2_overlap_type_name(bitnr));
            return -EIO;
        }
    }
    g_assert_not_reached();
}

int qcow2_pre_write_overlap_check(BDRVQcow2State *s, unsigned ignore,
                                  uint64_t offset, uint64_t size)
{
    int hit = qcow2_overlap_hit(s, ignore, offset, size);

    return hit ? qcow2_refuse_overlap(s, hit, offset, size) : 0;
}
