/* SPDX-License-Identifier: MIT */
/*
 * qcow2 consistency check and repair (qemu-img check).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The check counts, in memory, how often each host cluster is referenced
 * (header, L1 tables, L2 tables, data clusters, refcount table and blocks,
 * snapshot table, bitmap directory and tables) and compares that with the
 * refcounts on disk.  Messages, counts and the repair strategy follow QEMU's
 * so that both tools give the same verdict on the same image:
 *
 *   - a refcount higher than the references is a leak (fixed by -r leaks);
 *   - a lower one is a corruption (fixed by -r all);
 *   - a referenced cluster without a refcount block, or a broken refcount
 *     table, needs the refcount structure rebuilt (-r all): new refcount
 *     blocks and a new table are written to free clusters, flushed, and only
 *     then does the header point at them;
 *   - COPIED flags that disagree with the refcount are rewritten (-r all).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "qcow2.h"

typedef struct CheckState {
    BDRVQcow2State *s;
    QGuardCheckResult *res;
    QGuardReportFunc *report;
    void *opaque;
    uint8_t *refcounts;     /* computed references, refcount_order wide */
    uint64_t nb_clusters;   /* entries in @refcounts */
    int64_t file_length;
} CheckState;

static void report(CheckState *cs, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void report(CheckState *cs, const char *fmt, ...)
{
    g_autofree char *line = NULL;
    va_list ap;

    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (cs->report) {
        cs->report(cs->opaque, line);
    }
}

static size_t refcount_array_bytes(BDRVQcow2State *s, uint64_t entries)
{
    return ROUND_UP((entries << s->refcount_order) / 8 +
                    (((entries << s->refcount_order) % 8) ? 1 : 0), 8);
}

static int grow_refcount_array(CheckState *cs, uint64_t min_entries)
{
    BDRVQcow2State *s = cs->s;
    uint64_t entries = MAX(min_entries, cs->nb_clusters + cs->nb_clusters / 2);
    size_t old_bytes = refcount_array_bytes(s, cs->nb_clusters);
    size_t new_bytes;
    uint8_t *p;

    /* Bounded by 2^56 host bytes; refuse absurd counts before allocating. */
    if (entries > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits)) {
        return -EFBIG;
    }
    new_bytes = refcount_array_bytes(s, entries);
    p = g_try_realloc(cs->refcounts, new_bytes);
    if (!p) {
        return -ENOMEM;
    }
    memset(p + old_bytes, 0, new_bytes - old_bytes);
    cs->refcounts = p;
    cs->nb_clusters = entries;
    return 0;
}

/* Count one more reference to every cluster in [offset, offset + size). */
static int inc_refcounts(CheckState *cs, uint64_t offset, uint64_t size)
{
    BDRVQcow2State *s = cs->s;
    uint64_t c, first, last;
    int ret;

    if (size == 0) {
        return 0;
    }
    /*
     * The last cluster may be partly past the end of the file (compressed
     * data ends mid-sector), so up to a cluster beyond it is fine, as QEMU
     * judges it against the file length rounded up to whole sectors.
     */
    if (offset + size < offset ||
        (int64_t)(offset + size - ROUND_UP(cs->file_length, 512)) >=
        s->cluster_size) {
        report(cs, "ERROR: counting reference for region exceeding the end "
               "of the file by one cluster or more: offset 0x%" PRIx64
               " size 0x%" PRIx64, offset, size);
        cs->res->corruptions++;
        return 0;
    }
    first = offset >> s->cluster_bits;
    last = (offset + size - 1) >> s->cluster_bits;
    for (c = first; c <= last; c++) {
        uint64_t refcount;
        if (c >= cs->nb_clusters) {
            ret = grow_refcount_array(cs, c + 1);
            if (ret < 0) {
                cs->res->check_errors++;
                return ret;
            }
        }
        refcount = s->get_refcount(cs->refcounts, c);
        if (refcount == s->refcount_max) {
            report(cs, "ERROR: overflow cluster offset=0x%" PRIx64,
                   c << s->cluster_bits);
            report(cs, "Use qemu-img amend to increase the refcount entry "
                   "width or qemu-img convert to create a clean copy if the "
                   "image cannot be opened for writing");
            cs->res->corruptions++;
            continue;
        }
        s->set_refcount(cs->refcounts, c, refcount + 1);
    }
    return 0;
}

/*
 * A preallocated zero cluster at an unaligned offset holds no data: turn it
 * into a plain zero cluster on disk and stop counting it (-r all).
 */
/*
 * Unless @ret already says the write may not go ahead, write the 8 bytes
 * at @word to @pos of the image file and sync them: a repaired L2 entry or
 * subcluster bitmap.  A failure is reported and counted.
 */
static int write_l2_word(CheckState *cs, int ret, uint64_t pos,
                         const void *word)
{
    if (ret >= 0) {
        ret = host_file_pwrite(cs->s->file, pos, word, 8);
    }
    if (ret >= 0) {
        ret = host_file_flush(cs->s->file);
    }
    if (ret < 0) {
        report(cs, "ERROR: Failed to overwrite L2 table entry: %s",
               g_strerror(-ret));
        cs->res->check_errors++;
    }
    return ret;
}

static int fix_l2_entry_by_zero(CheckState *cs, uint64_t l2_offset,
                                uint8_t *l2, int index, bool active)
{
    BDRVQcow2State *s = cs->s;
    uint64_t entry_offset = l2_offset + (uint64_t)index * s->l2_entry_size;
    int ret;

    l2_set(s, l2, index, QCOW_OFLAG_ZERO);
    ret = qcow2_pre_write_overlap_check(s, active ? QCOW2_OL_ACTIVE_L2
                                                  : QCOW2_OL_INACTIVE_L2,
                                        entry_offset, 8);
    if (ret < 0) {
        report(cs, "ERROR: Overlap check failed");
        cs->res->check_errors++;
        return ret;
    }
    ret = write_l2_word(cs, 0, entry_offset,
                        l2 + (size_t)index * s->l2_entry_size);
    if (ret < 0) {
        return ret;
    }
    qcow2_cache_discard(s->l2_table_cache, start_of_cluster(s, l2_offset));
    cs->res->corruptions--;
    cs->res->corruptions_fixed++;
    return 0;
}

/*
 * The subcluster bitmap of extended entry @index.  Repair (-r all) keeps
 * the zero bit where a subcluster is marked both allocated and zero (no
 * stale host data is exposed) and clears allocation bits of an
 * unallocated cluster, which has no host cluster to read them from.  A
 * compressed cluster with a bitmap is reported and not counted, as QEMU
 * does (returns 1).
 */
static int check_l2_bitmap(CheckState *cs, uint64_t l2_offset, uint8_t *l2,
                           int index, unsigned fix, bool active)
{
    BDRVQcow2State *s = cs->s;
    uint64_t entry = l2_get(s, l2, index);
    uint64_t bitmap = l2_get_bitmap(s, l2, index), fixed;
    uint64_t pos = l2_offset + (uint64_t)index * 16 + 8;
    bool repair = fix & QGUARD_CHECK_FIX_ERRORS;
    uint8_t buf[8];
    int ret;

    switch (qcow2_get_cluster_type(s, entry)) {
    case QCOW2_CLUSTER_COMPRESSED:
        if (!bitmap) {
            return 0;
        }
        report(cs, "ERROR compressed cluster %d with non-zero subcluster "
               "allocation bitmap, entry=0x%" PRIx64, index, entry);
        cs->res->corruptions++;
        return 1;
    case QCOW2_CLUSTER_NORMAL:
        if (!((bitmap >> 32) & bitmap)) {
            return 0;
        }
        report(cs, "%s offset=%" PRIx64 ": Allocated cluster has corrupted "
               "subcluster allocation bitmap", repair ? "Repairing" : "ERROR",
               entry & L2E_OFFSET_MASK);
        fixed = bitmap & ~((bitmap >> 32) & bitmap);
        break;
    default:
        if (!(bitmap & QCOW_L2_BITMAP_ALL_ALLOC)) {
            return 0;
        }
        report(cs, "%s: Unallocated cluster has non-zero subcluster "
               "allocation map", repair ? "Repairing" : "ERROR");
        fixed = bitmap & ~QCOW_L2_BITMAP_ALL_ALLOC;
        break;
    }
    cs->res->corruptions++;
    if (!repair) {
        return 0;
    }
    l2_set_bitmap(s, l2, index, fixed);
    be_put64(buf, fixed);
    ret = qcow2_pre_write_overlap_check(s, active ? QCOW2_OL_ACTIVE_L2
                                                  : QCOW2_OL_INACTIVE_L2,
                                        pos, 8);
    ret = write_l2_word(cs, ret, pos, buf);
    if (ret < 0) {
        return ret;
    }
    qcow2_cache_discard(s->l2_table_cache, l2_offset);
    cs->res->corruptions--;
    cs->res->corruptions_fixed++;
    return 0;
}

static int check_l2(CheckState *cs, uint64_t l2_offset, bool frag_info,
                    unsigned fix, bool active)
{
    BDRVQcow2State *s = cs->s;
    g_autofree uint8_t *l2 = g_malloc(s->cluster_size);
    uint64_t next_contiguous = 0;
    bool ext = has_subclusters(s);
    int i, ret;

    ret = host_file_pread(s->file, l2_offset, l2, s->cluster_size);
    if (ret < 0) {
        report(cs, "ERROR: I/O error in check_refcounts_l2");
        cs->res->check_errors++;
        return ret;
    }
    for (i = 0; i < s->l2_size; i++) {
        uint64_t entry = l2_get(s, l2, i);
        QCow2ClusterType type;

        /* Most entries of most tables are unallocated: nothing to count. */
        if (!entry && !ext) {
            continue;
        }
        type = qcow2_get_cluster_type(s, entry);
        if (type != QCOW2_CLUSTER_COMPRESSED &&
            (entry & L2E_STD_RESERVED_MASK)) {
            report(cs, "ERROR found l2 entry with reserved bits set: %"
                   PRIx64, entry);
            cs->res->corruptions++;
        }
        if (ext) {
            ret = check_l2_bitmap(cs, l2_offset, l2, i, fix, active);
            if (ret < 0) {
                return ret;
            }
            if (ret > 0) {
                continue;   /* QEMU counts nothing for such an entry */
            }
        }
        switch (type) {
        case QCOW2_CLUSTER_COMPRESSED: {
            uint64_t coffset;
            int csize;
            if (entry & QCOW_OFLAG_COPIED) {
                report(cs, "ERROR: coffset=0x%" PRIx64 ": copied flag must "
                       "never be set for compressed clusters",
                       entry & s->cluster_offset_mask);
                entry &= ~QCOW_OFLAG_COPIED;
                cs->res->corruptions++;
            }
            qcow2_parse_compressed_entry(s, entry, &coffset, &csize);
            ret = inc_refcounts(cs, coffset, csize);
            if (ret < 0) {
                return ret;
            }
            if (frag_info) {
                cs->res->allocated_clusters++;
                cs->res->compressed_clusters++;
                /* Compressed clusters are fragmented by nature. */
                cs->res->fragmented_clusters++;
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_ALLOC:
        case QCOW2_CLUSTER_NORMAL: {
            uint64_t offset = entry & L2E_OFFSET_MASK;
            if (frag_info) {
                cs->res->allocated_clusters++;
                if (next_contiguous && offset != next_contiguous) {
                    cs->res->fragmented_clusters++;
                }
                next_contiguous = offset + s->cluster_size;
            }
            if (offset_into_cluster(s, offset)) {
                cs->res->corruptions++;
                if (type == QCOW2_CLUSTER_ZERO_ALLOC) {
                    bool repair = fix & QGUARD_CHECK_FIX_ERRORS;
                    report(cs, "%s offset=%" PRIx64 ": Preallocated "
                           "cluster is not properly aligned; L2 entry "
                           "corrupted.", repair ? "Repairing" : "ERROR",
                           offset);
                    if (repair) {
                        ret = fix_l2_entry_by_zero(cs, l2_offset, l2, i,
                                                   active);
                        if (ret < 0) {
                            return ret;
                        }
                        /* The cluster is unused now: do not count it. */
                        break;
                    }
                } else {
                    report(cs, "ERROR offset=%" PRIx64 ": Data cluster is "
                           "not properly aligned; L2 entry corrupted.",
                           offset);
                }
            }
            /* Data file clusters are not refcounted. */
            if (!has_data_file(s)) {
                ret = inc_refcounts(cs, offset, s->cluster_size);
                if (ret < 0) {
                    return ret;
                }
            }
            break;
        }
        case QCOW2_CLUSTER_ZERO_PLAIN:
        case QCOW2_CLUSTER_UNALLOCATED:
            break;
        }
    }
    return 0;
}

static int check_l1(CheckState *cs, uint64_t l1_offset, uint32_t l1_size,
                    bool frag_info, unsigned fix, bool active)
{
    BDRVQcow2State *s = cs->s;
    g_autofree uint64_t *l1 = NULL;
    uint32_t i;
    int ret;

    if (!l1_size) {
        return 0;
    }
    ret = inc_refcounts(cs, l1_offset, (uint64_t)l1_size * 8);
    if (ret < 0) {
        return ret;
    }
    l1 = g_try_new(uint64_t, l1_size);
    if (!l1) {
        cs->res->check_errors++;
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, l1_offset, l1, (size_t)l1_size * 8);
    if (ret < 0) {
        report(cs, "ERROR: I/O error in check_refcounts_l1");
        cs->res->check_errors++;
        return ret;
    }
    for (i = 0; i < l1_size; i++) {
        uint64_t entry = GUINT64_FROM_BE(l1[i]);
        uint64_t l2_offset = entry & L1E_OFFSET_MASK;

        if (!entry) {
            continue;
        }
        if (entry & L1E_RESERVED_MASK) {
            report(cs, "ERROR found L1 entry with reserved bits set: %"
                   PRIx64, entry);
            cs->res->corruptions++;
        }
        ret = inc_refcounts(cs, l2_offset, s->cluster_size);
        if (ret < 0) {
            return ret;
        }
        if (offset_into_cluster(s, l2_offset)) {
            report(cs, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                   "aligned; L1 entry corrupted", l2_offset);
            cs->res->corruptions++;
        }
        ret = check_l2(cs, l2_offset, frag_info, fix, active);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Bitmap directory, bitmap tables and bitmap data clusters. */
static int check_bitmaps(CheckState *cs)
{
    BDRVQcow2State *s = cs->s;
    g_autofree uint8_t *dir = NULL;
    uint64_t pos = 0;
    uint32_t n;
    int ret;

    if (!s->has_bitmaps_ext ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    ret = inc_refcounts(cs, s->bitmap_directory_offset,
                        s->bitmap_directory_size);
    if (ret < 0) {
        return ret;
    }
    dir = g_try_malloc(s->bitmap_directory_size + 1);
    if (!dir) {
        cs->res->check_errors++;
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, s->bitmap_directory_offset, dir,
                          s->bitmap_directory_size);
    if (ret < 0) {
        cs->res->check_errors++;
        return ret;
    }
    for (n = 0; n < s->nb_bitmaps; n++) {
        uint64_t table_offset, entry_size;
        uint32_t table_size, extra, i;
        uint16_t name_size;
        g_autofree uint64_t *table = NULL;

        if (pos + 24 > s->bitmap_directory_size) {
            report(cs, "ERROR bitmap directory is truncated");
            cs->res->corruptions++;
            return 0;
        }
        table_offset = be_get64(dir + pos);
        table_size = be_get32(dir + pos + 8);
        name_size = be_get16(dir + pos + 18);
        extra = be_get32(dir + pos + 20);
        entry_size = ROUND_UP(24 + (uint64_t)extra + name_size, 8);
        pos += entry_size;
        if ((uint64_t)table_size * 8 > QCOW_MAX_L1_SIZE ||
            offset_into_cluster(s, table_offset)) {
            report(cs, "ERROR bitmap table of bitmap %u is invalid", n);
            cs->res->corruptions++;
            continue;
        }
        ret = inc_refcounts(cs, table_offset, (uint64_t)table_size * 8);
        if (ret < 0) {
            return ret;
        }
        table = g_new(uint64_t, MAX(table_size, 1));
        ret = host_file_pread(s->file, table_offset, table,
                              (size_t)table_size * 8);
        if (ret < 0) {
            cs->res->check_errors++;
            return ret;
        }
        for (i = 0; i < table_size; i++) {
            uint64_t data = GUINT64_FROM_BE(table[i]) & L1E_OFFSET_MASK;
            if (data) {
                ret = inc_refcounts(cs, data, s->cluster_size);
                if (ret < 0) {
                    return ret;
                }
            }
        }
    }
    return 0;
}

static int check_refblocks(CheckState *cs, bool *rebuild)
{
    BDRVQcow2State *s = cs->s;
    uint64_t file_clusters = size_to_clusters(s, cs->file_length);
    uint32_t i;
    int ret;

    for (i = 0; i < s->refcount_table_size; i++) {
        uint64_t offset = s->refcount_table[i] & REFT_OFFSET_MASK;
        uint64_t cluster = offset >> s->cluster_bits;

        if (s->refcount_table[i] & REFT_RESERVED_MASK) {
            report(cs, "ERROR refcount table entry %u has reserved bits set",
                   i);
            cs->res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (offset_into_cluster(s, offset)) {
            report(cs, "ERROR refcount block %u is not cluster aligned; "
                   "refcount table entry corrupted", i);
            cs->res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (cluster >= file_clusters) {
            report(cs, "ERROR refcount block %u is outside image", i);
            cs->res->corruptions++;
            *rebuild = true;
            continue;
        }
        if (offset) {
            ret = inc_refcounts(cs, offset, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            if (s->get_refcount(cs->refcounts, cluster) != 1) {
                report(cs, "ERROR refcount block %u refcount=%" PRIu64, i,
                       s->get_refcount(cs->refcounts, cluster));
                cs->res->corruptions++;
                *rebuild = true;
            }
        }
    }
    return 0;
}

static int calculate_refcounts(CheckState *cs, unsigned fix, bool *rebuild)
{
    BDRVQcow2State *s = cs->s;
    uint32_t i;
    int ret;

    ret = inc_refcounts(cs, 0, s->cluster_size);
    if (ret < 0) {
        return ret;
    }
    ret = check_l1(cs, s->l1_table_offset, s->l1_size, true, fix, true);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < s->nb_snapshots; i++) {
        QCowSnapshot *sn = &s->snapshots[i];
        if (offset_into_cluster(s, sn->l1_table_offset)) {
            report(cs, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 "
                   "table is not cluster aligned; snapshot table entry "
                   "corrupted", sn->id_str, sn->name, sn->l1_table_offset);
            cs->res->corruptions++;
            continue;
        }
        if (sn->l1_size > QCOW_MAX_L1_SIZE / 8) {
            report(cs, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 "
                   "table is too large; snapshot table entry corrupted",
                   sn->id_str, sn->name, sn->l1_size);
            cs->res->corruptions++;
            continue;
        }
        ret = check_l1(cs, sn->l1_table_offset, sn->l1_size, false, fix,
                       false);
        if (ret < 0) {
            return ret;
        }
    }
    ret = inc_refcounts(cs, s->snapshots_offset, s->snapshots_size);
    if (ret < 0) {
        return ret;
    }
    ret = inc_refcounts(cs, s->refcount_table_offset,
                        (uint64_t)s->refcount_table_size * 8);
    if (ret < 0) {
        return ret;
    }
    ret = check_bitmaps(cs);
    if (ret < 0) {
        return ret;
    }
    return check_refblocks(cs, rebuild);
}

static void compare_refcounts(CheckState *cs, unsigned fix, bool *rebuild,
                              uint64_t *highest_cluster)
{
    BDRVQcow2State *s = cs->s;
    uint64_t i;

    for (i = 0; i < cs->nb_clusters; i++) {
        uint64_t on_disk, computed;
        int *num_fixed = NULL;
        int ret;

        ret = qcow2_get_refcount(s, i, &on_disk);
        if (ret < 0) {
            report(cs, "Can't get refcount for cluster %" PRIu64 ": %s", i,
                   g_strerror(-ret));
            cs->res->check_errors++;
            continue;
        }
        computed = s->get_refcount(cs->refcounts, i);
        if (on_disk > 0 || computed > 0) {
            *highest_cluster = i;
        }
        if (on_disk == computed) {
            continue;
        }
        if (on_disk == 0) {
            /* No refcount block to fix it in: only a rebuild helps. */
            *rebuild = true;
        } else if (on_disk > computed && (fix & QGUARD_CHECK_FIX_LEAKS)) {
            num_fixed = &cs->res->leaks_fixed;
        } else if (on_disk < computed && (fix & QGUARD_CHECK_FIX_ERRORS)) {
            num_fixed = &cs->res->corruptions_fixed;
        }
        report(cs, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
               PRIu64, num_fixed ? "Repairing" :
                       on_disk < computed ? "ERROR" : "Leaked",
               i, on_disk, computed);
        if (num_fixed) {
            bool decrease = on_disk > computed;
            ret = qcow2_update_refcount(s, i << s->cluster_bits, 1,
                                        decrease ? on_disk - computed
                                                 : computed - on_disk,
                                        decrease, QCOW2_DISCARD_ALWAYS);
            if (ret >= 0) {
                (*num_fixed)++;
                continue;
            }
        }
        if (on_disk < computed) {
            cs->res->corruptions++;
        } else {
            cs->res->leaks++;
        }
    }
}

/* ---- Rebuilding the refcount structure ---------------------------------- */

/* First run of @n clusters with no computed references, from @*first_free. */
static int64_t alloc_in_array(CheckState *cs, uint64_t *first_free,
                              uint64_t n)
{
    BDRVQcow2State *s = cs->s;
    uint64_t start = *first_free, len = 0, c, i;
    int ret;

    for (c = start;; c++) {
        if (c < cs->nb_clusters && s->get_refcount(cs->refcounts, c)) {
            start = c + 1;
            len = 0;
            continue;
        }
        if (++len == n) {
            break;
        }
    }
    if (start + n > cs->nb_clusters) {
        ret = grow_refcount_array(cs, start + n);
        if (ret < 0) {
            return ret;
        }
    }
    for (i = start; i < start + n; i++) {
        s->set_refcount(cs->refcounts, i, 1);
    }
    if (*first_free == start) {
        *first_free = start + n;
    }
    return start;
}

static bool block_has_references(CheckState *cs, uint64_t block)
{
    BDRVQcow2State *s = cs->s;
    uint64_t c = block << s->refcount_block_bits;
    uint64_t end = MIN(cs->nb_clusters, c + s->refcount_block_size);

    for (; c < end; c++) {
        if (s->get_refcount(cs->refcounts, c)) {
            return true;
        }
    }
    return false;
}

/*
 * Write a new refcount structure describing the computed references,
 * including the new structure itself, and switch the header to it.
 */
static int rebuild_refcount_structure(CheckState *cs)
{
    BDRVQcow2State *s = cs->s;
    uint64_t epc = s->cluster_size / 8;
    uint64_t first_free = 0, nblocks = 0, table_clusters = 0, table_entries;
    uint64_t block, i;
    int64_t table_offset = -1;
    g_autofree uint64_t *new_table = NULL;
    g_autofree uint8_t *table_buf = NULL;
    int ret;

    /*
     * Give every block that holds a reference a refcount block, and the
     * blocks a table.  Each placement is itself a reference that may fall
     * into a block without a refcount block yet, or make the table too
     * small, so repeat until nothing changes.
     */
    for (;;) {
        uint64_t need_blocks = (cs->nb_clusters + s->refcount_block_size - 1)
                               >> s->refcount_block_bits;
        uint64_t need_table;
        bool changed = false;

        if (need_blocks > nblocks) {
            new_table = g_renew(uint64_t, new_table, need_blocks);
            memset(new_table + nblocks, 0, (need_blocks - nblocks) * 8);
            nblocks = need_blocks;
        }
        for (block = 0; block < nblocks; block++) {
            if (!new_table[block] && block_has_references(cs, block)) {
                int64_t c = alloc_in_array(cs, &first_free, 1);
                if (c < 0) {
                    return c;
                }
                new_table[block] = (uint64_t)c << s->cluster_bits;
                changed = true;
            }
        }
        need_table = (nblocks * 8 + s->cluster_size - 1) >> s->cluster_bits;
        if (table_offset < 0 || need_table > table_clusters) {
            if (table_offset >= 0) {
                for (i = 0; i < table_clusters; i++) {
                    s->set_refcount(cs->refcounts, table_offset + i, 0);
                }
                first_free = MIN(first_free, (uint64_t)table_offset);
            }
            table_offset = alloc_in_array(cs, &first_free, need_table);
            if (table_offset < 0) {
                return table_offset;
            }
            table_clusters = need_table;
            changed = true;
        }
        if (!changed) {
            break;
        }
    }
    table_entries = table_clusters * epc;
    new_table = g_renew(uint64_t, new_table, table_entries);
    memset(new_table + nblocks, 0, (table_entries - nblocks) * 8);
    table_offset <<= s->cluster_bits;

    /* Nothing may be cached from the old structure. */
    ret = qcow2_cache_empty(s, s->refcount_block_cache);
    if (ret < 0) {
        return ret;
    }
    {
        g_autofree uint8_t *blockbuf = g_malloc(s->cluster_size);
        for (block = 0; block < nblocks; block++) {
            uint64_t first = block << s->refcount_block_bits;
            if (!new_table[block]) {
                continue;
            }
            memset(blockbuf, 0, s->cluster_size);
            for (i = 0; i < (uint64_t)s->refcount_block_size &&
                        first + i < cs->nb_clusters; i++) {
                s->set_refcount(blockbuf, i,
                                s->get_refcount(cs->refcounts, first + i));
            }
            ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_BLOCK,
                                    new_table[block], blockbuf,
                                    s->cluster_size);
            if (ret < 0) {
                return ret;
            }
        }
    }
    table_buf = g_malloc0(table_clusters * s->cluster_size);
    for (i = 0; i < table_entries; i++) {
        be_put64(table_buf + i * 8, new_table[i]);
    }
    ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_TABLE, table_offset,
                            table_buf, table_clusters * s->cluster_size);
    if (ret < 0) {
        return ret;
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_commit_reftable_location(s, table_offset, table_clusters);
    if (ret < 0) {
        return ret;
    }

    /* Switch the in-memory state and the overlap map to the new structure. */
    qcow2_map_remove(s, s->refcount_table_offset,
                     (uint64_t)s->refcount_table_size * 8,
                     QCOW2_OL_REFCOUNT_TABLE);
    for (i = 0; i < s->refcount_table_size; i++) {
        uint64_t old = s->refcount_table[i] & REFT_OFFSET_MASK;
        if (old && !offset_into_cluster(s, old)) {
            qcow2_map_remove(s, old, s->cluster_size,
                             QCOW2_OL_REFCOUNT_BLOCK);
        }
    }
    g_free(s->refcount_table);
    s->refcount_table = g_steal_pointer(&new_table);
    s->refcount_table_size = table_entries;
    s->refcount_table_offset = table_offset;
    s->max_refcount_table_index = 0;
    for (i = 0; i < table_entries; i++) {
        if (s->refcount_table[i]) {
            s->max_refcount_table_index = i;
            qcow2_map_enter(s, s->refcount_table[i], s->cluster_size,
                            QCOW2_OL_REFCOUNT_BLOCK);
        }
    }
    qcow2_map_enter(s, table_offset, table_clusters * s->cluster_size,
                    QCOW2_OL_REFCOUNT_TABLE);
    qcow2_free_index_reset(s);
    return 0;
}

/* ---- COPIED flags -------------------------------------------------------- */

static int check_oflag_copied(CheckState *cs, unsigned fix)
{
    BDRVQcow2State *s = cs->s;
    g_autofree uint8_t *l2 = g_malloc(s->cluster_size);
    bool repair;
    uint32_t i;
    int ret;

    if (fix & QGUARD_CHECK_FIX_ERRORS) {
        repair = true;
    } else if (fix & QGUARD_CHECK_FIX_LEAKS) {
        repair = !cs->res->check_errors && !cs->res->corruptions &&
                 !cs->res->leaks;
    } else {
        repair = false;
    }

    for (i = 0; i < s->l1_size; i++) {
        uint64_t l1_entry = s->l1_table[i];
        uint64_t l2_offset = l1_entry & L1E_OFFSET_MASK;
        uint64_t refcount;
        int l2_dirty = 0, j;

        if (!l2_offset) {
            continue;
        }
        ret = qcow2_get_refcount(s, l2_offset >> s->cluster_bits, &refcount);
        if (ret < 0) {
            continue;
        }
        if ((refcount == 1) != ((l1_entry & QCOW_OFLAG_COPIED) != 0)) {
            cs->res->corruptions++;
            report(cs, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%"
                   PRIx64 " refcount=%" PRIu64,
                   repair ? "Repairing" : "ERROR", i, l1_entry, refcount);
            if (repair) {
                s->l1_table[i] = refcount == 1 ? l1_entry | QCOW_OFLAG_COPIED
                                               : l1_entry & ~QCOW_OFLAG_COPIED;
                qcow2_l1_mark_dirty(s, i);
                ret = qcow2_write_l1_dirty(s);
                if (ret < 0) {
                    cs->res->check_errors++;
                    return ret;
                }
                cs->res->corruptions--;
                cs->res->corruptions_fixed++;
            }
        }
        if (offset_into_cluster(s, l2_offset)) {
            continue;
        }
        ret = host_file_pread(s->file, l2_offset, l2, s->cluster_size);
        if (ret < 0) {
            report(cs, "ERROR: Could not read L2 table: %s",
                   g_strerror(-ret));
            cs->res->check_errors++;
            return ret;
        }
        for (j = 0; j < s->l2_size; j++) {
            uint64_t entry = l2_get(s, l2, j);
            QCow2ClusterType type = qcow2_get_cluster_type(s, entry);
            if (type != QCOW2_CLUSTER_NORMAL &&
                type != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            if (has_data_file(s)) {
                refcount = 1;   /* implied for every data file cluster */
            } else {
                ret = qcow2_get_refcount(s, (entry & L2E_OFFSET_MASK) >>
                                         s->cluster_bits, &refcount);
                if (ret < 0) {
                    continue;
                }
            }
            if ((refcount == 1) != ((entry & QCOW_OFLAG_COPIED) != 0)) {
                cs->res->corruptions++;
                report(cs, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                       " refcount=%" PRIu64, repair ? "Repairing" : "ERROR",
                       entry, refcount);
                if (repair) {
                    l2_set(s, l2, j, refcount == 1 ? entry | QCOW_OFLAG_COPIED
                                                : entry & ~QCOW_OFLAG_COPIED);
                    l2_dirty++;
                }
            }
        }
        if (l2_dirty) {
            /* The table is rewritten directly; drop any cached copy. */
            qcow2_cache_discard(s->l2_table_cache, l2_offset);
            ret = qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L2, l2_offset, l2,
                                    s->cluster_size);
            if (ret < 0) {
                report(cs, "ERROR: Could not write L2 table: %s",
                       g_strerror(-ret));
                cs->res->check_errors++;
                return ret;
            }
            cs->res->corruptions -= l2_dirty;
            cs->res->corruptions_fixed += l2_dirty;
        }
    }
    return 0;
}

int qcow2_check_image(BDRVQcow2State *s, unsigned fix,
                      QGuardCheckResult *res, QGuardReportFunc *report_fn,
                      void *opaque, GError **errp)
{
    CheckState cs = {
        .s = s, .res = res, .report = report_fn, .opaque = opaque,
    };
    QGuardCheckResult pre_compare;
    uint64_t highest_cluster = 0;
    bool rebuild = false;
    int ret;

    memset(res, 0, sizeof(*res));
    s->checking_without_repair = !fix;
    /* The check reads tables from disk: everything cached goes there first. */
    if (!s->img->read_only) {
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Could not flush metadata");
        }
    }
    cs.file_length = host_file_length(s->file);
    if (cs.file_length < 0) {
        res->check_errors++;
        return cs.file_length;
    }
    res->total_clusters = size_to_clusters(s, s->img->total_size);
    cs.nb_clusters = size_to_clusters(s, cs.file_length);
    cs.refcounts = g_try_malloc0(refcount_array_bytes(s, cs.nb_clusters));
    if (!cs.refcounts) {
        res->check_errors++;
        g_set_error(errp, QGUARD_ERROR, ENOMEM, "Out of memory");
        return -ENOMEM;
    }

    ret = calculate_refcounts(&cs, fix, &rebuild);
    if (ret < 0) {
        goto out;
    }
    pre_compare = *res;
    compare_refcounts(&cs, 0, &rebuild, &highest_cluster);

    if (rebuild && (fix & QGUARD_CHECK_FIX_ERRORS)) {
        QGuardCheckResult old_res = *res;
        int fresh_leaks = 0, still_broken = 0;

        report(&cs, "Rebuilding refcount structure");
        ret = rebuild_refcount_structure(&cs);
        if (ret < 0) {
            report(&cs, "ERROR: Could not rebuild refcount structure: %s",
                   g_strerror(-ret));
            res->check_errors++;
            goto out;
        }
        res->corruptions = 0;
        res->leaks = 0;
        /* References changed with the new table: count them again. */
        rebuild = false;
        memset(cs.refcounts, 0, refcount_array_bytes(s, cs.nb_clusters));
        cs.file_length = host_file_length(s->file);
        ret = calculate_refcounts(&cs, 0, &rebuild);
        if (ret < 0) {
            goto out;
        }
        if (fix & QGUARD_CHECK_FIX_LEAKS) {
            /* The old structure is now leaked; reclaim it quietly. */
            QGuardCheckResult saved = *res;
            memset(res, 0, sizeof(*res));
            compare_refcounts(&cs, QGUARD_CHECK_FIX_LEAKS, &rebuild,
                              &highest_cluster);
            if (rebuild) {
                report(&cs, "ERROR rebuilt refcount structure is still "
                       "broken");
                still_broken = res->corruptions;
            }
            fresh_leaks = res->leaks;
            *res = saved;
        }
        if (res->corruptions < old_res.corruptions) {
            res->corruptions_fixed += old_res.corruptions - res->corruptions;
        }
        if (res->leaks < old_res.leaks) {
            res->leaks_fixed += old_res.leaks - res->leaks;
        }
        res->leaks += fresh_leaks;
        /*
         * QEMU counts everything as fixed here and leaves it to qemu-img's
         * second check to find what is left (tables past the end of the
         * file, say); the fixed count stays QEMU's, but the result does
         * not claim a clean image.
         */
        res->corruptions += still_broken;
    } else if (fix) {
        if (rebuild) {
            report(&cs, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            ret = -EIO;
            goto out;
        }
        if (res->leaks || res->corruptions) {
            *res = pre_compare;
            compare_refcounts(&cs, fix, &rebuild, &highest_cluster);
        }
    }

    ret = check_oflag_copied(&cs, fix);
    if (ret < 0) {
        goto out;
    }
    res->image_end_offset = (highest_cluster + 1) << s->cluster_bits;
    if (fix) {
        ret = qcow2_flush_metadata(s);
    }
out:
    s->checking_without_repair = false;
    g_free(cs.refcounts);
    if (ret < 0 && errp && !*errp) {
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
    }
    return ret;
}

/*
 * Does [offset, offset + size) end a cluster or more past the end of the
 * file?  The judgement of qemu-img check (see inc_refcounts()).
 */
static bool past_end_of_file(BDRVQcow2State *s, int64_t file_length,
                             uint64_t offset, uint64_t size)
{
    return size && (offset + size < offset ||
                    (int64_t)(offset + size - ROUND_UP(file_length, 512)) >=
                    s->cluster_size);
}

/*
 * A table past the end of the file reads as zeros: an L1 table loses the
 * guest's data, a refcount table or block makes clusters in use look free,
 * so the allocator would hand them out again and the next write would
 * overwrite live data.  Such an image is not opened read-write (except to
 * be repaired); read-only, its data can still be copied out.
 */
int qcow2_check_tables_in_file(BDRVQcow2State *s, GError **errp)
{
    static const char *const rebuild_hint =
        "repair with 'qemu-img check -r all'";
    static const char *const copy_hint =
        "it can still be opened read-only, and copied with convert";
    int64_t len = host_file_length(s->file);
    g_autofree char *what = NULL;
    const char *hint = copy_hint;
    uint32_t i;

    if (len <= 0) {
        /* Not a regular file (a block device has no length to judge). */
        return 0;
    }
    if (past_end_of_file(s, len, s->l1_table_offset,
                         (uint64_t)s->l1_size * 8)) {
        what = g_strdup("the active L1 table");
    } else if (past_end_of_file(s, len, s->refcount_table_offset,
                                (uint64_t)s->refcount_table_size * 8)) {
        what = g_strdup("the refcount table");
        hint = rebuild_hint;
    }
    for (i = 0; !what && i < s->refcount_table_size; i++) {
        uint64_t block = s->refcount_table[i] & REFT_OFFSET_MASK;
        if (block && past_end_of_file(s, len, block, s->cluster_size)) {
            what = g_strdup_printf("refcount block %" PRIu32, i);
            hint = rebuild_hint;
        }
    }
    for (i = 0; !what && i < s->nb_snapshots; i++) {
        const QCowSnapshot *sn = &s->snapshots[i];
        if (qcow2_snapshot_l1_valid(s, sn) &&
            past_end_of_file(s, len, sn->l1_table_offset,
                             (uint64_t)sn->l1_size * 8)) {
            what = g_strdup_printf("the L1 table of snapshot '%s'",
                                   sn->name);
        }
    }
    if (!what) {
        return 0;
    }
    g_set_error(errp, QGUARD_ERROR, EACCES,
                "qcow2: Image is corrupt: %s lies past the end of the file; "
                "cannot be opened read/write (%s)", what, hint);
    return -EACCES;
}
