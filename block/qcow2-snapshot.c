/* SPDX-License-Identifier: MIT */
/*
 * qcow2 internal snapshots: the snapshot table.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The table is read and validated at open and rewritten as a whole: the new
 * table goes to freshly allocated clusters, is flushed, and only then does
 * the header (nb_snapshots and snapshots_offset, one 12-byte write) switch to
 * it; the old table is freed last.  A crash leaves either table intact.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

#define SNAPSHOT_HEADER_SIZE 40
/* vm_state_size_large, disk_size, icount */
#define SNAPSHOT_EXTRA_KNOWN 24

void qcow2_free_snapshots(BDRVQcow2State *s)
{
    uint32_t i;

    for (i = 0; i < s->nb_snapshots && s->snapshots; i++) {
        g_free(s->snapshots[i].id_str);
        g_free(s->snapshots[i].name);
        g_free(s->snapshots[i].unknown_extra_data);
    }
    g_free(s->snapshots);
    s->snapshots = NULL;
    s->snapshot_l1_error = 0;
    qcow2_overlap_update_check_map(s);
    if (s->invalid_snapshot_l1s) {
        g_array_free(s->invalid_snapshot_l1s, true);
        s->invalid_snapshot_l1s = NULL;
    }
}

/*
 * QEMU's overlap check validates every snapshot's L1 table before it reads
 * it for the inactive L2 tables, on every write, and fails the write with
 * the first table's error; the inactive L1 check refuses writes to the
 * range a table claims, valid or not.  Here the answers for the tables
 * that fail validation are kept with the list, so that a check stays free
 * of per-snapshot work (qcow2_overlap_hit()).
 */
void qcow2_note_invalid_snapshot_l1s(BDRVQcow2State *s)
{
    uint32_t i;

    s->snapshot_l1_error = 0;
    if (s->invalid_snapshot_l1s) {
        g_array_set_size(s->invalid_snapshot_l1s, 0);
    }
    for (i = 0; i < s->nb_snapshots; i++) {
        const QCowSnapshot *sn = &s->snapshots[i];
        uint64_t range[2] = { sn->l1_table_offset,
                              (uint64_t)sn->l1_size * 8 };
        int ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size,
                                       8, QCOW_MAX_L1_SIZE, "", NULL);

        if (ret == 0) {
            continue;
        }
        if (!s->snapshot_l1_error) {
            s->snapshot_l1_error = ret;
        }
        if (range[1]) {
            if (!s->invalid_snapshot_l1s) {
                s->invalid_snapshot_l1s = g_array_new(false, false,
                                                      sizeof(range));
            }
            g_array_append_val(s->invalid_snapshot_l1s, range);
        }
    }
    qcow2_overlap_update_check_map(s);
}

static int read_bytes(BDRVQcow2State *s, uint64_t offset, void *buf,
                      size_t len, GError **errp)
{
    int ret = host_file_pread(s->file, offset, buf, len);

    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Failed to read snapshot table: %s", g_strerror(-ret));
    }
    return ret;
}

/*
 * Read the snapshot table.  With @repair (check -r all), what QEMU's check
 * repairs is taken instead of refused: extra data past the limit is cut
 * (*@extra_dropped counts the entries), and entries that make the table too
 * big are left out (*@reduced counts them); @report gets the lines.
 */
int qcow2_do_read_snapshots(BDRVQcow2State *s, bool repair, int *reduced,
                            int *extra_dropped, QGuardReportFunc *report,
                            void *opaque, GError **errp)
{
    uint64_t offset = s->snapshots_offset, table_length = 0;
    uint32_t i;
    int ret;

    s->snapshots = NULL;
    s->snapshots_size = 0;
    if (!s->nb_snapshots) {
        return 0;
    }
    s->snapshots = g_new0(QCowSnapshot, s->nb_snapshots);
    for (i = 0; i < s->nb_snapshots; i++) {
        QCowSnapshot *sn = &s->snapshots[i];
        uint8_t h[SNAPSHOT_HEADER_SIZE];
        uint8_t extra[SNAPSHOT_EXTRA_KNOWN] = { 0 };
        uint64_t entry_start = offset;
        uint16_t id_len, name_len;
        uint32_t known, on_disk;
        bool truncate = false;

        table_length = ROUND_UP(table_length, 8);
        offset = ROUND_UP(offset, 8);
        ret = read_bytes(s, offset, h, sizeof(h), errp);
        if (ret < 0) {
            goto fail;
        }
        offset += sizeof(h);
        sn->l1_table_offset = be_get64(h);
        sn->l1_size = be_get32(h + 8);
        id_len = be_get16(h + 12);
        name_len = be_get16(h + 14);
        sn->date_sec = be_get32(h + 16);
        sn->date_nsec = be_get32(h + 20);
        sn->vm_clock_nsec = be_get64(h + 24);
        sn->vm_state_size = be_get32(h + 32);
        sn->extra_data_size = be_get32(h + 36);

        if (sn->extra_data_size > QCOW_MAX_SNAPSHOT_EXTRA_DATA) {
            if (!repair) {
                g_set_error(errp, QGUARD_ERROR, EFBIG,
                            "Too much extra metadata in snapshot table entry "
                            "%u\nYou can force-remove this extra metadata "
                            "with qemu-img check -r all\n", i);
                ret = -EFBIG;
                goto fail;
            }
            qcow2_report(report, opaque, "Discarding too much extra metadata "
                         "in snapshot table entry %u (%" PRIu32 " > %u)", i,
                         sn->extra_data_size, QCOW_MAX_SNAPSHOT_EXTRA_DATA);
            (*extra_dropped)++;
            truncate = true;
        }
        on_disk = sn->extra_data_size;
        known = MIN(sn->extra_data_size, (uint32_t)SNAPSHOT_EXTRA_KNOWN);
        ret = read_bytes(s, offset, extra, known, errp);
        if (ret < 0) {
            goto fail;
        }
        if (truncate) {
            sn->extra_data_size = QCOW_MAX_SNAPSHOT_EXTRA_DATA;
        }
        if (sn->extra_data_size > SNAPSHOT_EXTRA_KNOWN) {
            uint32_t unknown = sn->extra_data_size - SNAPSHOT_EXTRA_KNOWN;
            sn->unknown_extra_data = g_malloc(unknown);
            ret = read_bytes(s, offset + SNAPSHOT_EXTRA_KNOWN,
                             sn->unknown_extra_data, unknown, errp);
            if (ret < 0) {
                goto fail;
            }
        }
        /* A cut entry still ends where it does on disk. */
        offset += on_disk;
        if (known >= 8) {
            sn->vm_state_size = be_get64(extra);
        }
        sn->disk_size = known >= 16 ? be_get64(extra + 8)
                                    : s->img->total_size;
        sn->icount = known >= 24 ? be_get64(extra + 16) : UINT64_MAX;

        sn->id_str = g_malloc0(id_len + 1);
        ret = read_bytes(s, offset, sn->id_str, id_len, errp);
        if (ret < 0) {
            goto fail;
        }
        offset += id_len;
        sn->name = g_malloc0(name_len + 1);
        ret = read_bytes(s, offset, sn->name, name_len, errp);
        if (ret < 0) {
            goto fail;
        }
        offset += name_len;

        table_length += SNAPSHOT_HEADER_SIZE + sn->extra_data_size + id_len +
                        name_len;
        if (table_length > QCOW_MAX_SNAPSHOTS_SIZE ||
            offset - s->snapshots_offset > INT32_MAX) {
            uint32_t n;

            if (!repair) {
                g_set_error(errp, QGUARD_ERROR, EFBIG,
                            "Snapshot table is too big\nYou can force-remove "
                            "all %u overhanging snapshots with qemu-img "
                            "check -r all\n", s->nb_snapshots - i);
                ret = -EFBIG;
                goto fail;
            }
            qcow2_report(report, opaque, "Discarding %u overhanging "
                         "snapshots (snapshot table is too big)",
                         s->nb_snapshots - i);
            *reduced += s->nb_snapshots - i;
            for (n = i; n < s->nb_snapshots; n++) {
                g_free(s->snapshots[n].id_str);
                g_free(s->snapshots[n].name);
                g_free(s->snapshots[n].unknown_extra_data);
            }
            s->nb_snapshots = i;
            offset = entry_start;
            break;
        }
        /*
         * A bad L1 table in an entry is not an open error (QEMU opens such
         * images): check reports it and using the snapshot is refused.
         */
    }
    s->snapshots_size = offset - s->snapshots_offset;
    qcow2_note_invalid_snapshot_l1s(s);
    return 0;

fail:
    qcow2_free_snapshots(s);
    return ret;
}

int qcow2_read_snapshots(BDRVQcow2State *s, GError **errp)
{
    return qcow2_do_read_snapshots(s, false, NULL, NULL, NULL, NULL, errp);
}

static uint64_t snapshot_entry_size(const QCowSnapshot *sn)
{
    uint32_t extra = MAX(sn->extra_data_size, (uint32_t)SNAPSHOT_EXTRA_KNOWN);

    return ROUND_UP(SNAPSHOT_HEADER_SIZE + extra + strlen(sn->id_str) +
                    strlen(sn->name), 8);
}

/* Write the in-memory snapshot list as a new table and switch to it. */
int qcow2_write_snapshots(BDRVQcow2State *s)
{
    uint64_t size = 0, pos = 0, old_offset = s->snapshots_offset;
    uint64_t old_size = s->snapshots_size;
    g_autofree uint8_t *buf = NULL;
    int64_t new_offset = 0;
    uint8_t hdr[12];
    uint32_t i;
    int ret;

    for (i = 0; i < s->nb_snapshots; i++) {
        size += snapshot_entry_size(&s->snapshots[i]);
    }
    if (size > QCOW_MAX_SNAPSHOTS_SIZE) {
        qcow2_set_error(s, "Snapshot table too big");
        return -EFBIG;
    }
    if (size) {
        buf = g_malloc0(size);
        for (i = 0; i < s->nb_snapshots; i++) {
            QCowSnapshot *sn = &s->snapshots[i];
            uint32_t extra = MAX(sn->extra_data_size,
                                 (uint32_t)SNAPSHOT_EXTRA_KNOWN);
            size_t id_len = strlen(sn->id_str), name_len = strlen(sn->name);
            uint8_t *p = buf + pos;

            be_put64(p, sn->l1_table_offset);
            be_put32(p + 8, sn->l1_size);
            be_put16(p + 12, id_len);
            be_put16(p + 14, name_len);
            be_put32(p + 16, sn->date_sec);
            be_put32(p + 20, sn->date_nsec);
            be_put64(p + 24, sn->vm_clock_nsec);
            be_put32(p + 32, MIN(sn->vm_state_size, UINT32_MAX));
            be_put32(p + 36, extra);
            be_put64(p + 40, sn->vm_state_size);
            be_put64(p + 48, sn->disk_size);
            be_put64(p + 56, sn->icount);
            if (extra > SNAPSHOT_EXTRA_KNOWN) {
                memcpy(p + 40 + SNAPSHOT_EXTRA_KNOWN, sn->unknown_extra_data,
                       extra - SNAPSHOT_EXTRA_KNOWN);
            }
            memcpy(p + 40 + extra, sn->id_str, id_len);
            memcpy(p + 40 + extra + id_len, sn->name, name_len);
            pos += snapshot_entry_size(sn);
        }
        new_offset = qcow2_write_new_table(s, QCOW2_OL_SNAPSHOT_TABLE, buf,
                                           size, QCOW2_DISCARD_NEVER);
        if (new_offset < 0) {
            return new_offset;
        }
    }
    be_put32(hdr, s->nb_snapshots);
    be_put64(hdr + 4, new_offset);
    ret = qcow2_commit_header_field(s, HDR_OFF_NB_SNAPSHOTS, hdr, 12);
    if (ret < 0) {
        return ret;     /* either table may be the one on disk: keep both */
    }
    /* Every entry went out with all the extra data QEMU knows. */
    for (i = 0; i < s->nb_snapshots; i++) {
        s->snapshots[i].extra_data_size =
            MAX(s->snapshots[i].extra_data_size,
                (uint32_t)SNAPSHOT_EXTRA_KNOWN);
    }
    qcow2_map_remove(s, old_offset, old_size, QCOW2_OL_SNAPSHOT_TABLE);
    qcow2_map_enter(s, new_offset, size, QCOW2_OL_SNAPSHOT_TABLE);
    s->snapshots_offset = new_offset;
    s->snapshots_size = size;
    qcow2_note_invalid_snapshot_l1s(s);
    if (old_size) {
        return qcow2_free_clusters(s, old_offset, old_size,
                                   QCOW2_DISCARD_SNAPSHOT);
    }
    return 0;
}

/* ---- Snapshot operations ------------------------------------------------ */

/* An id match wins over a name match, as in QEMU. */
static int find_snapshot(BDRVQcow2State *s, const char *id_or_name)
{
    uint32_t i;

    for (i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].id_str, id_or_name)) {
            return i;
        }
    }
    for (i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].name, id_or_name)) {
            return i;
        }
    }
    return -1;
}

static char *new_snapshot_id(BDRVQcow2State *s)
{
    uint64_t max = 0;
    uint32_t i;

    for (i = 0; i < s->nb_snapshots; i++) {
        uint64_t id = g_ascii_strtoull(s->snapshots[i].id_str, NULL, 10);
        max = MAX(max, id);
    }
    return g_strdup_printf("%" PRIu64, max + 1);
}

bool qcow2_snapshot_l1_valid(BDRVQcow2State *s, const QCowSnapshot *sn)
{
    return sn->l1_size <= QCOW_MAX_L1_SIZE / 8 &&
           !offset_into_cluster(s, sn->l1_table_offset) &&
           sn->l1_table_offset + (uint64_t)sn->l1_size * 8 <=
           QCOW2_MAX_HOST_OFFSET;
}

/* The L1 table of @size entries at @offset, read into host order. */
int qcow2_read_l1_table(BDRVQcow2State *s, uint64_t offset, uint32_t size,
                        uint64_t **pl1)
{
    uint64_t *l1 = g_try_new0(uint64_t, MAX(size, 1));
    uint32_t i;
    int ret;

    if (!l1) {
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, offset, l1, (size_t)size * 8);
    if (ret < 0) {
        g_free(l1);
        return ret;
    }
    for (i = 0; i < size; i++) {
        l1[i] = GUINT64_FROM_BE(l1[i]);
    }
    *pl1 = l1;
    return 0;
}

/* Write @l1 (host order, COPIED flags cleared) to new clusters. */
static int64_t write_new_l1(BDRVQcow2State *s, const uint64_t *l1,
                            uint32_t size)
{
    g_autofree uint64_t *buf = g_new0(uint64_t, MAX(size, 1));
    int64_t offset;
    uint32_t i;
    int ret;

    if (!size) {
        return 0;
    }
    for (i = 0; i < size; i++) {
        buf[i] = GUINT64_TO_BE(l1[i] & ~QCOW_OFLAG_COPIED);
    }
    offset = qcow2_alloc_clusters_exact(s, size_to_clusters(s, (uint64_t)size
                                                                * 8));
    if (offset < 0) {
        return offset;
    }
    ret = qcow2_pwrite_meta(s, 0, offset, buf, (size_t)size * 8);
    if (ret < 0) {
        (void)qcow2_free_clusters(s, offset, (uint64_t)size * 8,
                                  QCOW2_DISCARD_NEVER);
        return ret;
    }
    return offset;
}

/*
 * Add @addend (+1 or -1) to the refcount of every L2 table and every data
 * cluster reachable from @l1.  Tables shared between L1 tables are counted
 * once per L1 table, as the format counts references.
 */
static int update_tree_refcounts(BDRVQcow2State *s, const uint64_t *l1,
                                 uint32_t l1_size, int addend,
                                 Qcow2DiscardType type, bool clear_copied)
{
    uint64_t amount = 1;
    bool decrease = addend < 0;
    uint32_t i;
    int j, ret;

    if (clear_copied) {
        /* The cleared flags reach the disk after the refcounts. */
        ret = qcow2_cache_set_dependency(s, s->l2_table_cache,
                                         s->refcount_block_cache);
        if (ret < 0) {
            return ret;
        }
    }

    for (i = 0; i < l1_size; i++) {
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK;
        void *l2;

        if (!l2_offset) {
            continue;
        }
        if (offset_into_cluster(s, l2_offset)) {
            qcow2_set_error(s, "L2 table offset %#" PRIx64 " unaligned",
                            l2_offset);
            return -EIO;
        }
        ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2);
        if (ret < 0) {
            return ret;
        }
        for (j = 0; j < s->l2_size; j++) {
            uint64_t entry = l2_get(s, l2, j);
            switch (qcow2_get_cluster_type(s, entry)) {
            case QCOW2_CLUSTER_NORMAL:
            case QCOW2_CLUSTER_ZERO_ALLOC: {
                uint64_t refcount = 0, new_entry;

                if (!clear_copied) {
                    ret = qcow2_update_refcount(s, entry & L2E_OFFSET_MASK,
                                                s->cluster_size, amount,
                                                decrease, type);
                    break;
                }
                ret = qcow2_add_cluster_ref(s, entry & L2E_OFFSET_MASK,
                                            &refcount);
                /*
                 * Shared now, unless nothing counted the cluster before
                 * (damaged refcounts): QEMU sets the flag from the count.
                 */
                new_entry = refcount == 1 ? entry | QCOW_OFLAG_COPIED
                                          : entry & ~QCOW_OFLAG_COPIED;
                if (ret >= 0 && new_entry != entry) {
                    l2_set(s, l2, j, new_entry);
                    qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2);
                }
                break;
            }
            case QCOW2_CLUSTER_COMPRESSED: {
                uint64_t coffset;
                int csize;
                qcow2_parse_compressed_entry(s, entry, &coffset, &csize);
                ret = qcow2_update_refcount(s, coffset, csize, amount,
                                            decrease, type);
                break;
            }
            default:
                ret = 0;
                break;
            }
            if (ret < 0) {
                qcow2_cache_put(s->l2_table_cache, &l2);
                return ret;
            }
        }
        qcow2_cache_put(s->l2_table_cache, &l2);
        ret = qcow2_update_refcount(s, l2_offset, s->cluster_size, amount,
                                    decrease, type);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * Make the COPIED flags of the active L1 table and the L2 tables only it
 * uses say exactly "refcount is 1".  The refcounts they are derived from
 * reach the disk first (the L2 cache depends on the refcount cache).
 */
static int fix_copied_flags(BDRVQcow2State *s)
{
    uint32_t i;
    int j, ret;

    ret = qcow2_cache_set_dependency(s, s->l2_table_cache,
                                     s->refcount_block_cache);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < s->l1_size; i++) {
        uint64_t entry = s->l1_table[i];
        uint64_t l2_offset = entry & L1E_OFFSET_MASK;
        uint64_t refcount, new_entry;
        bool dirty = false;
        void *l2;

        if (!l2_offset) {
            continue;
        }
        ret = qcow2_get_refcount(s, l2_offset >> s->cluster_bits, &refcount);
        if (ret < 0) {
            return ret;
        }
        new_entry = refcount == 1 ? entry | QCOW_OFLAG_COPIED
                                  : entry & ~QCOW_OFLAG_COPIED;
        if (new_entry != entry) {
            s->l1_table[i] = new_entry;
            qcow2_l1_mark_dirty(s, i);
        }
        ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2);
        if (ret < 0) {
            return ret;
        }
        for (j = 0; j < s->l2_size; j++) {
            uint64_t e = l2_get(s, l2, j), n;
            QCow2ClusterType type = qcow2_get_cluster_type(s, e);
            if (type != QCOW2_CLUSTER_NORMAL &&
                type != QCOW2_CLUSTER_ZERO_ALLOC) {
                continue;
            }
            ret = qcow2_get_refcount(s, (e & L2E_OFFSET_MASK) >>
                                     s->cluster_bits, &refcount);
            if (ret < 0) {
                qcow2_cache_put(s->l2_table_cache, &l2);
                return ret;
            }
            n = refcount == 1 ? e | QCOW_OFLAG_COPIED
                              : e & ~QCOW_OFLAG_COPIED;
            if (n != e) {
                l2_set(s, l2, j, n);
                dirty = true;
            }
        }
        if (dirty) {
            qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2);
        }
        qcow2_cache_put(s->l2_table_cache, &l2);
    }
    return 0;
}

/*
 * Snapshot operations change refcounts and COPIED flags together, which no
 * write order can make atomic.  On v3 images the dirty bit covers the
 * window: after a crash, any read-write open rebuilds the refcounts.
 */
static int begin_snapshot_op(BDRVQcow2State *s)
{
    int ret = qcow2_flush_metadata(s);

    if (ret < 0 || s->qcow_version < 3) {
        return ret;
    }
    return qcow2_mark_dirty(s);
}

/*
 * Flush, and mark a v3 image clean again when its tables are consistent.
 * A walk that stopped half-way (a refcount that would overflow, an I/O
 * error) changed some refcounts but not the COPIED flags that follow from
 * them, so after any failure the flags are first set from the counts; QEMU
 * 7.2 leaves such an image corrupt.  @only_leaks: a failure of this
 * operation can only leave counts too high (create adds references and
 * nothing else), so the image is then clean.  Apply and delete also drop
 * references and may have met damaged counts: they keep the dirty bit,
 * and the next read-write open rebuilds the refcounts.
 */
static int end_snapshot_op(BDRVQcow2State *s, int ret, bool only_leaks)
{
    bool consistent = ret >= 0;
    int ret2;

    if (ret < 0) {
        consistent = fix_copied_flags(s) >= 0 && only_leaks;
    }
    ret2 = qcow2_flush_metadata(s);
    if (consistent && ret2 >= 0 && !s->use_lazy_refcounts) {
        ret2 = qcow2_mark_clean(s);
    }
    return ret < 0 ? ret : ret2;
}

int qcow2_snapshot_create(BDRVQcow2State *s, const char *name, GError **errp)
{
    QCowSnapshot sn = { 0 };
    gint64 now = g_get_real_time();
    int64_t l1_offset;
    int ret;

    if (has_data_file(s)) {
        /* Guest clusters cannot be shared with a snapshot in a data file. */
        g_set_error(errp, QGUARD_ERROR, ENOTSUP, "%s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    if (s->nb_snapshots >= QCOW_MAX_SNAPSHOTS) {
        g_set_error(errp, QGUARD_ERROR, EFBIG, "Too many snapshots");
        return -EFBIG;
    }
    if (strlen(name) > UINT16_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Snapshot name too long");
        return -EINVAL;
    }
    ret = begin_snapshot_op(s);
    if (ret < 0) {
        goto out;
    }
    l1_offset = write_new_l1(s, s->l1_table, s->l1_size);
    if (l1_offset < 0) {
        ret = l1_offset;
        goto out;
    }
    /*
     * Everything the active tables reach is now shared with the snapshot,
     * so every COPIED flag goes: cleared during the walk rather than by a
     * second walk that looks each refcount up.
     */
    ret = update_tree_refcounts(s, s->l1_table, s->l1_size, 1,
                                QCOW2_DISCARD_NEVER, true);
    if (ret >= 0) {
        uint32_t i;

        for (i = 0; i < s->l1_size; i++) {
            if (s->l1_table[i] & QCOW_OFLAG_COPIED) {
                s->l1_table[i] &= ~QCOW_OFLAG_COPIED;
                qcow2_l1_mark_dirty(s, i);
            }
        }
        ret = qcow2_flush_metadata(s);
    }
    if (ret < 0) {
        goto out;
    }

    sn.id_str = new_snapshot_id(s);
    sn.name = g_strdup(name);
    sn.l1_table_offset = l1_offset;
    sn.l1_size = s->l1_size;
    sn.disk_size = s->img->total_size;
    sn.date_sec = now / G_USEC_PER_SEC;
    sn.date_nsec = (now % G_USEC_PER_SEC) * 1000;
    sn.icount = 0;
    s->snapshots = g_renew(QCowSnapshot, s->snapshots, s->nb_snapshots + 1);
    s->snapshots[s->nb_snapshots++] = sn;
    ret = qcow2_write_snapshots(s);
    if (ret < 0) {
        /* Not recorded: the refcounts taken above are only leaks. */
        s->nb_snapshots--;
        g_free(sn.id_str);
        g_free(sn.name);
        goto out;
    }
    qcow2_map_enter(s, l1_offset, (uint64_t)sn.l1_size * 8,
                    QCOW2_OL_INACTIVE_L1);
    qcow2_map_inactive_l2(s, s->l1_table, s->l1_size, true);
out:
    return qcow2_error_propagate(end_snapshot_op(s, ret, true), errp);
}

int qcow2_snapshot_apply(BDRVQcow2State *s, const char *id_or_name,
                         GError **errp)
{
    int idx = find_snapshot(s, id_or_name);
    g_autoptr(GError) err = NULL;
    g_autofree uint64_t *new_l1 = NULL;
    uint64_t *old_l1 = NULL;
    uint64_t old_l1_offset = s->l1_table_offset;
    uint32_t old_l1_size = s->l1_size, new_l1_size;
    QCowSnapshot *sn;
    int64_t new_offset;
    int ret;

    /* QEMU refuses a data file image before it looks for the snapshot. */
    if (has_data_file(s) || idx < 0) {
        ret = has_data_file(s) ? -ENOTSUP : -ENOENT;
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to load snapshot: %s",
                    g_strerror(-ret));
        return ret;
    }
    sn = &s->snapshots[idx];
    ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size, 8,
                               QCOW_MAX_L1_SIZE, "Snapshot L1 table", &err);
    if (ret < 0) {
        /* QEMU reports the table, then fails the load with the errno. */
        qguard_report_now(err->message);
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to load snapshot: %s",
                    g_strerror(-ret));
        return ret;
    }
    if (!qcow2_snapshot_l1_valid(s, sn)) {
        g_set_error(errp, QGUARD_ERROR, EIO,
                    "Snapshot L1 table is invalid; run check");
        return -EIO;
    }
    if (sn->disk_size != s->img->total_size && s->qcow_version < 3) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    ret = begin_snapshot_op(s);
    if (ret < 0) {
        goto out;
    }
    new_l1_size = MAX(sn->l1_size, (uint32_t)size_to_l1(s, sn->disk_size));
    new_l1 = g_try_new0(uint64_t, MAX(new_l1_size, 1));
    if (!new_l1) {
        ret = -ENOMEM;
        goto out;
    }
    {
        uint64_t *sn_l1;
        ret = qcow2_read_l1_table(s, sn->l1_table_offset, sn->l1_size, &sn_l1);
        if (ret < 0) {
            goto out;
        }
        memcpy(new_l1, sn_l1, (size_t)sn->l1_size * 8);
        g_free(sn_l1);
    }
    /* The state that becomes active gains its references first. */
    ret = update_tree_refcounts(s, new_l1, new_l1_size, 1,
                                QCOW2_DISCARD_NEVER, false);
    if (ret >= 0) {
        ret = qcow2_flush_metadata(s);
    }
    if (ret < 0) {
        goto out;
    }
    new_offset = write_new_l1(s, new_l1, new_l1_size);
    if (new_offset < 0) {
        ret = new_offset;
        goto out;
    }
    ret = qcow2_flush_refcounts(s);
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_switch_l1_table(s, &new_l1, new_offset, new_l1_size);
    if (ret < 0) {
        goto out;
    }
    old_l1 = g_steal_pointer(&new_l1);
    qcow2_map_active_l2(s, old_l1, old_l1_size, false);
    qcow2_map_active_l2(s, s->l1_table, s->l1_size, true);
    if (sn->disk_size != s->img->total_size) {
        uint8_t size[8];
        be_put64(size, sn->disk_size);
        ret = qcow2_write_header_field(s, 24, size, 8);
        if (ret < 0) {
            goto out;
        }
        s->img->total_size = sn->disk_size;
        s->l1_vm_state_index = size_to_l1(s, sn->disk_size);
    }

    /* The old active state loses its references; then fix COPIED. */
    ret = update_tree_refcounts(s, old_l1, old_l1_size, -1,
                                QCOW2_DISCARD_SNAPSHOT, false);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_free_clusters(s, old_l1_offset, (uint64_t)old_l1_size * 8,
                              QCOW2_DISCARD_SNAPSHOT);
    if (ret >= 0) {
        ret = fix_copied_flags(s);
    }
out:
    g_free(old_l1);
    return qcow2_error_propagate(end_snapshot_op(s, ret, false), errp);
}

int qcow2_snapshot_delete(BDRVQcow2State *s, const char *id_or_name,
                          GError **errp)
{
    int idx = find_snapshot(s, id_or_name);
    g_autofree uint64_t *sn_l1 = NULL;
    QCowSnapshot sn;
    int ret;

    if (idx < 0) {
        g_set_error(errp, QGUARD_ERROR, ENOENT, "%s", g_strerror(ENOENT));
        return -ENOENT;
    }
    ret = qcow2_validate_table(s, s->snapshots[idx].l1_table_offset,
                               s->snapshots[idx].l1_size, 8,
                               QCOW_MAX_L1_SIZE, "Snapshot L1 table", errp);
    if (ret < 0) {
        return ret;
    }
    if (!qcow2_snapshot_l1_valid(s, &s->snapshots[idx])) {
        g_set_error(errp, QGUARD_ERROR, EIO,
                    "Snapshot L1 table is invalid; run check");
        return -EIO;
    }
    ret = begin_snapshot_op(s);
    if (ret < 0) {
        goto out;
    }
    sn = s->snapshots[idx];
    ret = qcow2_read_l1_table(s, sn.l1_table_offset, sn.l1_size, &sn_l1);
    if (ret < 0) {
        goto out;
    }
    /* The snapshot leaves the table first, so what follows can only leak. */
    memmove(&s->snapshots[idx], &s->snapshots[idx + 1],
            (s->nb_snapshots - idx - 1) * sizeof(QCowSnapshot));
    s->nb_snapshots--;
    ret = qcow2_write_snapshots(s);
    if (ret < 0) {
        memmove(&s->snapshots[idx + 1], &s->snapshots[idx],
                (s->nb_snapshots - idx) * sizeof(QCowSnapshot));
        s->snapshots[idx] = sn;
        s->nb_snapshots++;
        goto out;
    }
    qcow2_map_remove(s, sn.l1_table_offset, (uint64_t)sn.l1_size * 8,
                     QCOW2_OL_INACTIVE_L1);
    qcow2_map_inactive_l2(s, sn_l1, sn.l1_size, false);
    g_free(sn.id_str);
    g_free(sn.name);
    g_free(sn.unknown_extra_data);

    ret = update_tree_refcounts(s, sn_l1, sn.l1_size, -1,
                                QCOW2_DISCARD_SNAPSHOT, false);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_free_clusters(s, sn.l1_table_offset, (uint64_t)sn.l1_size * 8,
                              QCOW2_DISCARD_SNAPSHOT);
    if (ret >= 0) {
        ret = fix_copied_flags(s);
    }
out:
    return qcow2_error_propagate(end_snapshot_op(s, ret, false), errp);
}

/*
 * Read the snapshot's L1 table as the active one, for the rest of the
 * image's (read-only) life: qemu-img convert -l and measure -l.
 */
int qcow2_snapshot_load_tmp(BDRVQcow2State *s, const char *id,
                            const char *name, GError **errp)
{
    QCowSnapshot *sn = NULL;
    uint64_t *l1;
    uint32_t i;
    int ret;

    g_assert(s->img->read_only);
    for (i = 0; i < s->nb_snapshots && !sn; i++) {
        if ((!id || !strcmp(s->snapshots[i].id_str, id)) &&
            (!name || !strcmp(s->snapshots[i].name, name))) {
            sn = &s->snapshots[i];
        }
    }
    if (!sn) {
        g_set_error(errp, QGUARD_ERROR, ENOENT, "Can't find snapshot");
        return -ENOENT;
    }
    ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size, 8,
                               QCOW_MAX_L1_SIZE, "Snapshot L1 table", errp);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_read_l1_table(s, sn->l1_table_offset, sn->l1_size, &l1);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret,
                                "Failed to read l1 table for snapshot");
    }
    g_free(s->l1_table);
    s->l1_table = l1;
    s->l1_size = sn->l1_size;
    s->l1_table_offset = sn->l1_table_offset;
    return 0;
}
