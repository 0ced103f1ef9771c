/* SPDX-License-Identifier: MIT */
/*
 * qcow2 preallocation (metadata, falloc, full): every guest cluster of a
 * range gets a host cluster and an L2 entry.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * L1 entries without an L2 table (normally all of them) are done in bulk
 * (docs/allocation.md).  A grown L1 table is written first, whole, to the
 * tail of the file, and switched in by one header write; the old one is
 * reusable at once.  Then free clusters below the tail take L2 tables, as
 * QEMU's allocator would, and one contiguous run at the tail takes the
 * rest of the tables and the data; the refcount blocks for tail runs come
 * from qcow2_alloc_tail().  The tables are written in large batches and the
 * syncs are few and fixed:
 *
 *   refcount blocks and table, sync, header (refcount table), sync;
 *   L1 copy, sync, header (L1 table), sync (only when the L1 grows);
 *   the same refcount steps for the tables and data;
 *   L2 tables and any data, the file extended to cover it, sync;
 *   the changed L1 sectors, sync.
 *
 * Nothing on disk names a cluster before its refcount and contents are on
 * disk: the new L2 tables are reachable only through the L1 entries written
 * last.  L1 entries that already have a table (the edge of a grown range)
 * go through the L2 cache with its ordinary dependencies.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define ZERO_CHUNK (1024 * 1024)
#define TABLE_BATCH_BYTES (4 * 1024 * 1024)

static int fill_run(BDRVQcow2State *s, uint64_t host, uint64_t bytes,
                    Qcow2PreallocMode mode)
{
    static const uint8_t zeros[ZERO_CHUNK];
    int ret;

    if (mode == QCOW2_PREALLOC_FALLOC) {
        ret = qcow2_pre_write_overlap_check(s, 0, host, bytes);
        return ret < 0 ? ret : host_file_allocate(s->file, host, bytes);
    }
    if (mode == QCOW2_PREALLOC_FULL) {
        while (bytes > 0) {
            uint64_t cur = MIN(bytes, (uint64_t)ZERO_CHUNK);
            struct iovec iov = { (void *)zeros, cur };
            ret = qcow2_pwritev_checked(s, 0, host, &iov, 1, cur);
            if (ret < 0) {
                return ret;
            }
            host += cur;
            bytes -= cur;
        }
    }
    return 0;
}

/* ---- L1 entries that already have an L2 table: through the cache --------- */

/*
 * Map @n clusters of a data file image to their guest offsets.  The data
 * file was sized (and for falloc/full, allocated) by the resize.
 */
static int map_data_file_run(BDRVQcow2State *s, uint64_t l2_offset,
                             int l2_index, uint64_t guest, uint64_t n)
{
    void *l2_table;
    uint64_t c;
    int ret;

    ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
    if (ret < 0) {
        return ret;
    }
    for (c = 0; c < n; c++) {
        l2_set(s, l2_table, l2_index + c,
               (guest + (c << s->cluster_bits)) | QCOW_OFLAG_COPIED);
    }
    qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
    qcow2_cache_put(s->l2_table_cache, &l2_table);
    return 0;
}

/*
 * Allocate data clusters for the unallocated clusters of one L2 table.
 * Clusters below @zero_end may hold stale data, so on v3 they are entered
 * as preallocated zero clusters.
 */
static int preallocate_l2(BDRVQcow2State *s, uint64_t offset, uint64_t n,
                          Qcow2PreallocMode mode, uint64_t zero_end)
{
    uint64_t l1_index = offset_to_l1_index(s, offset);
    int l2_index = offset_to_l2_index(s, offset);
    uint64_t l2_offset, i = 0;
    void *l2_table;
    int ret;

    while (i < n) {
        uint64_t run = 0, got, c;
        int64_t host;

        ret = qcow2_get_l2_for_write(s, l1_index, &l2_table, &l2_offset);
        if (ret < 0) {
            return ret;
        }
        while (i < n) {
            uint64_t e = l2_get(s, l2_table, l2_index + i);
            QCow2ClusterType t = qcow2_get_cluster_type(s, e);
            if (t == QCOW2_CLUSTER_UNALLOCATED ||
                t == QCOW2_CLUSTER_ZERO_PLAIN) {
                break;
            }
            i++;
        }
        while (i + run < n) {
            QCow2ClusterType t = qcow2_get_cluster_type(
                s, l2_get(s, l2_table, l2_index + i + run));
            if (t != QCOW2_CLUSTER_UNALLOCATED &&
                t != QCOW2_CLUSTER_ZERO_PLAIN) {
                break;
            }
            run++;
        }
        qcow2_cache_put(s->l2_table_cache, &l2_table);
        if (!run) {
            break;
        }
        if (has_data_file(s)) {
            ret = map_data_file_run(s, l2_offset, l2_index + i,
                                    start_of_cluster(s, offset) +
                                    (i << s->cluster_bits), run);
            if (ret < 0) {
                return ret;
            }
            i += run;
            continue;
        }
        host = qcow2_alloc_clusters(s, run, &got);
        if (host < 0) {
            return host;
        }
        /*
         * Clusters below the current end of file may hold old contents
         * (tables moved during this very preallocation): they must read as
         * zeros, by the zero flag on v3 or by writing zeros on v2.
         */
        {
            int64_t len = host_file_length(s->file);
            zero_end = len > 0 ? (uint64_t)len : 0;
        }
        /* check counts an L2 entry past the end of the file as an error. */
        if (host + (got << s->cluster_bits) > zero_end) {
            ret = host_file_truncate(s->file, host + (got << s->cluster_bits));
            if (ret < 0) {
                (void)qcow2_abort_allocation(s, host, got << s->cluster_bits);
                return ret;
            }
        }
        if (s->qcow_version < 3 && mode != QCOW2_PREALLOC_FULL &&
            (uint64_t)host < zero_end) {
            ret = fill_run(s, host, MIN(got << s->cluster_bits,
                                        zero_end - host),
                           QCOW2_PREALLOC_FULL);
            if (ret < 0) {
                (void)qcow2_abort_allocation(s, host, got << s->cluster_bits);
                return ret;
            }
            qcow2_cache_depends_on_flush(s->l2_table_cache);
        }
        ret = fill_run(s, host, got << s->cluster_bits, mode);
        if (ret < 0) {
            (void)qcow2_abort_allocation(s, host, got << s->cluster_bits);
            return ret;
        }
        if (mode == QCOW2_PREALLOC_FULL) {
            qcow2_cache_depends_on_flush(s->l2_table_cache);
        }
        ret = qcow2_l2_after_new_refcounts(s);
        if (ret < 0) {
            return ret;
        }
        ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &l2_table);
        if (ret < 0) {
            return ret;
        }
        for (c = 0; c < got; c++) {
            uint64_t h = host + (c << s->cluster_bits);
            uint64_t e = h | QCOW_OFLAG_COPIED;
            /*
             * With subclusters the bitmap is left alone: unallocated
             * subclusters read from the backing file (or as zeros), never
             * from the host cluster.
             */
            if (h < zero_end && mode != QCOW2_PREALLOC_FULL &&
                s->qcow_version >= 3 && !has_subclusters(s)) {
                e |= QCOW_OFLAG_ZERO;
            }
            l2_set(s, l2_table, l2_index + i + c, e);
        }
        qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_table);
        qcow2_cache_put(s->l2_table_cache, &l2_table);
        i += got;
    }
    return 0;
}

/* ---- L1 entries without an L2 table: in bulk ----------------------------- */

typedef struct FreshPlan {
    uint64_t start, end;        /* guest range, cluster aligned start */
    uint64_t l1_first, l1_last;
    uint64_t new_l1_size;       /* > s->l1_size: the L1 table grows */
    uint64_t tables;            /* new L2 tables */
    uint64_t data;              /* data clusters under them */
} FreshPlan;

static bool l1_entry_fresh(BDRVQcow2State *s, uint64_t i)
{
    return i >= s->l1_size || !(s->l1_table[i] & L1E_OFFSET_MASK);
}

/* Guest clusters of L1 entry @i inside the range. */
static void entry_range(BDRVQcow2State *s, const FreshPlan *p, uint64_t i,
                        uint64_t *first, uint64_t *count)
{
    uint64_t span = l2_entries_to_bytes(s);
    uint64_t from = MAX(p->start, i * span), to = MIN(p->end, (i + 1) * span);

    *first = offset_to_l2_index(s, from);
    *count = size_to_clusters(s, to - from);
}

/*
 * Build the new L2 tables, naming data clusters from @data on in guest
 * order, and write them to @where (one offset per table, in L1 order):
 * tables whose places follow each other go out in one write of up to
 * 4 MiB.
 */
static int write_fresh_tables(BDRVQcow2State *s, const FreshPlan *p,
                              const uint64_t *where, uint64_t data,
                              Qcow2PreallocMode mode, uint64_t zero_end,
                              QGuardProgressFunc *progress, void *opaque)
{
    uint64_t per_batch = (uint64_t)TABLE_BATCH_BYTES >> s->cluster_bits;
    uint64_t batch = MAX(1u, MIN(p->tables, per_batch));
    g_autofree uint8_t *buf = g_try_malloc(batch << s->cluster_bits);
    uint64_t flag_zero_below = 0, host = data, done = 0, in_buf = 0, t = 0, i;
    int ret;

    if (!buf) {
        return -ENOMEM;
    }
    if (s->qcow_version >= 3 && mode != QCOW2_PREALLOC_FULL &&
        !has_subclusters(s) && !has_data_file(s)) {
        /*
         * Data below the old end of file may hold stale bytes.  With
         * subclusters the bitmap says what is allocated instead.
         */
        flag_zero_below = zero_end;
    }
    for (i = p->l1_first; i <= p->l1_last; i++) {
        uint8_t *table;
        uint64_t first, count, k;

        if (!l1_entry_fresh(s, i)) {
            continue;
        }
        if (in_buf && (in_buf == batch ||
                       where[t] != where[t - 1] + s->cluster_size)) {
            ret = qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L2, where[t - in_buf],
                                    buf, in_buf << s->cluster_bits);
            if (ret < 0) {
                return ret;
            }
            done += in_buf;
            in_buf = 0;
            if (progress) {
                progress(opaque, 100.0 * done / p->tables);
            }
        }
        table = buf + (in_buf << s->cluster_bits);
        entry_range(s, p, i, &first, &count);
        if (count < (uint64_t)s->l2_size || s->l2_entry_size != 8) {
            memset(table, 0, s->cluster_size);
        }
        if (has_data_file(s)) {
            /* Guest cluster g lives at offset g of the data file. */
            host = i * l2_entries_to_bytes(s) + (first << s->cluster_bits);
        }
        for (k = 0; k < count && host < flag_zero_below; k++) {
            l2_set(s, table, first + k,
                   host | QCOW_OFLAG_COPIED | QCOW_OFLAG_ZERO);
            host += s->cluster_size;
        }
        if (s->l2_entry_size == 8) {
            for (; k < count; k++) {
                ((uint64_t *)table)[first + k] =
                    GUINT64_TO_BE(host | QCOW_OFLAG_COPIED);
                host += s->cluster_size;
            }
        } else {
            /* Extended entries: the subcluster bitmap stays 0. */
            for (; k < count; k++) {
                l2_set(s, table, first + k, host | QCOW_OFLAG_COPIED);
                host += s->cluster_size;
            }
        }
        in_buf++;
        t++;
    }
    if (in_buf) {
        ret = qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L2, where[t - in_buf], buf,
                                in_buf << s->cluster_bits);
        if (ret < 0) {
            return ret;
        }
        if (progress) {
            progress(opaque, 100.0);
        }
    }
    return 0;
}

/*
 * Grow the L1 table to @new_size: the new copy goes to the tail with the
 * refcount blocks it needs (qcow2_alloc_tail()), is written with every
 * current entry, synced, and switched in by one header write.  The old
 * table is reusable at once, as QEMU reuses it: nothing on disk names it.
 */
static int grow_l1_bulk(BDRVQcow2State *s, uint64_t new_size)
{
    uint64_t new_bytes = new_size * 8, i;
    uint64_t old_offset = s->l1_table_offset;
    uint64_t old_bytes = (uint64_t)s->l1_size * 8;
    g_autofree uint64_t *new_l1 = g_try_new0(uint64_t, new_size);
    g_autofree uint64_t *disk_l1 = g_try_new0(uint64_t, new_size);
    int64_t offset;
    int ret;

    if (!new_l1 || !disk_l1) {
        return -ENOMEM;
    }
    /* The new table carries the dirty entries too: their L2s go first. */
    ret = qcow2_cache_write(s, s->l2_table_cache);
    if (ret < 0) {
        return ret;
    }
    offset = qcow2_alloc_tail(s, size_to_clusters(s, new_bytes));
    if (offset < 0) {
        return offset;
    }
    memcpy(new_l1, s->l1_table, old_bytes);
    for (i = 0; i < new_size; i++) {
        disk_l1[i] = GUINT64_TO_BE(new_l1[i]);
    }
    ret = qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L1, offset, disk_l1, new_bytes);
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        (void)qcow2_abort_allocation(s, offset, new_bytes);
        return ret;
    }
    ret = qcow2_switch_l1_table(s, &new_l1, offset, new_size);
    if (ret < 0) {
        return ret;
    }
    if (!old_bytes) {
        return 0;
    }
    return qcow2_free_unreferenced_clusters(s, old_offset, old_bytes);
}

static int preallocate_fresh(BDRVQcow2State *s, FreshPlan *p,
                             Qcow2PreallocMode mode,
                             QGuardProgressFunc *progress, void *opaque)
{
    int64_t file_len = host_file_length(s->file);
    uint64_t zero_end = file_len > 0 ? (uint64_t)file_len : 0;
    uint64_t holes = 0, tail_tables, data, data_bytes, total, t, i;
    g_autofree uint64_t *where = NULL;
    int64_t run, tail;
    int ret;

    if (p->new_l1_size > s->l1_size) {
        ret = grow_l1_bulk(s, p->new_l1_size);
        if (ret < 0) {
            return ret;
        }
    }
    if (!p->tables) {
        return 0;
    }
    where = g_try_new(uint64_t, p->tables);
    if (!where) {
        return -ENOMEM;
    }
    /*
     * Free clusters below the tail take tables first, one each, as QEMU's
     * allocation does; the rest of the tables and all the data go in one
     * run at the tail.
     */
    tail = qcow2_tail_cluster(s);
    if (tail < 0) {
        return tail;
    }
    while (holes < p->tables) {
        int64_t c = qcow2_first_free_cluster(s);
        if (c < 0) {
            ret = c;
            goto fail_holes;
        }
        if (c >= tail) {
            break;
        }
        c = qcow2_alloc_clusters_exact(s, 1);
        if (c < 0) {
            ret = c;
            goto fail_holes;
        }
        where[holes++] = c;
    }
    tail_tables = p->tables - holes;
    total = tail_tables + p->data;
    run = total ? qcow2_alloc_tail(s, total) : 0;
    if (run < 0) {
        ret = run;
        goto fail_holes;
    }
    for (t = holes; t < p->tables; t++) {
        where[t] = run + ((t - holes) << s->cluster_bits);
    }
    data = run + (tail_tables << s->cluster_bits);
    data_bytes = p->data << s->cluster_bits;

    for (t = 0; t < holes; t++) {
        qcow2_map_enter(s, where[t], s->cluster_size, QCOW2_OL_ACTIVE_L2);
    }
    qcow2_map_enter(s, run, tail_tables << s->cluster_bits,
                    QCOW2_OL_ACTIVE_L2);
    ret = 0;
    if (data_bytes &&
        (mode == QCOW2_PREALLOC_FALLOC || mode == QCOW2_PREALLOC_FULL)) {
        ret = fill_run(s, data, data_bytes, mode);
    }
    if (ret >= 0 && data_bytes && s->qcow_version < 3 &&
        mode != QCOW2_PREALLOC_FULL && data < zero_end) {
        /* v2 has no zero flag: stale bytes below the old end are zeroed. */
        ret = fill_run(s, data, MIN(data_bytes, zero_end - data),
                       QCOW2_PREALLOC_FULL);
    }
    if (ret >= 0) {
        ret = write_fresh_tables(s, p, where, data, mode, zero_end, progress,
                                 opaque);
    }
    /* check counts an L2 entry past the end of the file as an error. */
    if (ret >= 0) {
        file_len = host_file_length(s->file);
        if (file_len < 0) {
            ret = file_len;
        } else if ((uint64_t)file_len < data + data_bytes) {
            ret = host_file_truncate(s->file, data + data_bytes);
        }
    }
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        for (t = 0; t < holes; t++) {
            qcow2_map_remove(s, where[t], s->cluster_size,
                             QCOW2_OL_ACTIVE_L2);
        }
        qcow2_map_remove(s, run, tail_tables << s->cluster_bits,
                         QCOW2_OL_ACTIVE_L2);
        (void)qcow2_abort_allocation(s, run, total << s->cluster_bits);
        goto fail_holes;
    }

    /*
     * The tables are on disk; the L1 entries name them now.  A hole's
     * refcount may still be in the cache: writing the L1 flushes the
     * refcounts first.
     */
    t = 0;
    for (i = p->l1_first; i <= p->l1_last; i++) {
        if (l1_entry_fresh(s, i)) {
            s->l1_table[i] = where[t++] | QCOW_OFLAG_COPIED;
            qcow2_l1_mark_dirty(s, i);
        }
    }
    return qcow2_write_l1_dirty(s);

fail_holes:
    for (t = 0; t < holes; t++) {
        (void)qcow2_abort_allocation(s, where[t], s->cluster_size);
    }
    return ret;
}

/*
 * Allocate L2 tables and data clusters for guest range [offset, end).
 * The tables an existing L1 entry names are filled through the cache; the
 * rest, with the L1 growth, in bulk.  Data windows of the overlap map hold
 * no metadata, so writes into them are checked without touching a list.
 */
int qcow2_preallocate(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                      Qcow2PreallocMode mode, QGuardProgressFunc *progress,
                      void *opaque)
{
    uint64_t l2_span = l2_entries_to_bytes(s);
    FreshPlan p = {
        .start = start_of_cluster(s, offset),
        .end = offset + bytes,
    };
    uint64_t i;
    int ret;

    if (!bytes || mode == QCOW2_PREALLOC_OFF) {
        return 0;
    }
    ret = qcow2_mark_dirty_for_lazy_refcounts(s);
    if (ret < 0) {
        return ret;
    }
    p.l1_first = offset_to_l1_index(s, p.start);
    p.l1_last = offset_to_l1_index(s, p.end - 1);
    p.new_l1_size = MAX((uint64_t)s->l1_size, size_to_l1(s, p.end));
    if (p.new_l1_size > QCOW_MAX_L1_SIZE / 8) {
        qcow2_set_error(s, "L1 table would exceed the maximum size");
        return -EFBIG;
    }
    for (i = p.l1_first; i <= p.l1_last; i++) {
        uint64_t from = MAX(p.start, i * l2_span);
        uint64_t to = MIN(p.end, (i + 1) * l2_span);

        if (l1_entry_fresh(s, i)) {
            p.tables++;
            /* A data file holds the data: the image file gets tables only. */
            if (!has_data_file(s)) {
                p.data += size_to_clusters(s, to - from);
            }
            continue;
        }
        ret = preallocate_l2(s, from, size_to_clusters(s, to - from), mode,
                             0);
        if (ret < 0) {
            return ret;
        }
    }
    return preallocate_fresh(s, &p, mode, progress, opaque);
}
