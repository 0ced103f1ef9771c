/* SPDX-License-Identifier: MIT */
/*
 * qcow2 driver: checked metadata writes, the metadata flush order, open and
 * close, and the request entry points.  The header itself is read and
 * rewritten in qcow2-header.c, resizing lives in qcow2-resize.c.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
/* ---- Errors and events --------------------------------------------------- */

static GPrivate request_error = G_PRIVATE_INIT(g_free);

void qcow2_set_error(BDRVQcow2State *s G_GNUC_UNUSED, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    g_private_replace(&request_error, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

const char *qcow2_error_message(void)
{
    return g_private_get(&request_error);
}

int qcow2_error_propagate(int ret, GError **errp)
{
    if (ret < 0 && errp && !*errp) {
        const char *detail = qcow2_error_message();

        g_set_error(errp, QGUARD_ERROR, -ret, "%s",
                    detail ? detail : g_strerror(-ret));
    }
    return ret;
}

/*
 * Report a corruption.  A fatal one marks the image corrupt on disk and makes
 * the open image refuse further I/O, as QEMU does, so that nothing more is
 * written on top of damaged metadata.
 */
void qcow2_signal_corruption(BDRVQcow2State *s, bool fatal, int64_t offset,
                             int64_t size, const char *fmt, ...)
{
    g_autofree char *message = NULL;
    va_list ap;

    (void)offset;
    (void)size;
    /*
     * Nothing can be made worse through a read-only image, and a check
     * without repair only reports: the image stays usable, as in QEMU.
     */
    if (s->img->read_only || s->checking_without_repair) {
        fatal = false;
    }
    if (s->signaled_corruption &&
        (!fatal || (s->incompatible_features & QCOW2_INCOMPAT_CORRUPT))) {
        return;
    }
    va_start(ap, fmt);
    message = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* Set first: marking the header corrupt is itself a checked write. */
    s->signaled_corruption = true;
    if (fatal) {
        qguard_message("qcow2: Marking image as corrupt: %s; further "
                       "corruption events will be suppressed", message);
        qcow2_mark_corrupt(s);
        bdrv_set_broken(s->img, true);
    } else {
        qguard_message("qcow2: Image is corrupt: %s; further non-fatal "
                       "corruption events will be suppressed", message);
    }
}

/* ---- Header ------------------------------------------------------------- */

static int write_checked(BDRVQcow2State *s, unsigned ignore, uint64_t offset,
                         const void *buf, size_t bytes)
{
    struct iovec iov = { (void *)buf, bytes };

    return qcow2_pwritev_checked(s, ignore, offset, &iov, 1, bytes);
}

int qcow2_pwrite_meta(BDRVQcow2State *s, unsigned ol_type, uint64_t offset,
                      const void *buf, size_t bytes)
{
    return write_checked(s, ol_type, offset, buf, bytes);
}

int qcow2_pwritev_checked(BDRVQcow2State *s, unsigned ignore,
                          uint64_t offset, const struct iovec *iov,
                          int iovcnt, uint64_t bytes)
{
    int ret;

    if (bdrv_is_broken(s->img)) {
        return -EIO;
    }
    if (offset + bytes > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }
    ret = qcow2_overlap_hit(s, ignore, offset, bytes);
    if (G_UNLIKELY(ret)) {
        return qcow2_refuse_overlap(s, ret, offset, bytes);
    }
    return host_file_pwritev(s->file, offset, iov, iovcnt);
}

/*
 * Rewrite a few header bytes, then flush.  They lie within one sector, so
 * that a crash leaves either the old or the new bytes.
 */
int qcow2_write_header_field(BDRVQcow2State *s, int offset, const void *data,
                             int bytes)
{
    int ret;

    g_assert(bytes > 0 && offset / 512 == (offset + bytes - 1) / 512 &&
             offset + bytes <= s->cluster_size);
    ret = write_checked(s, QCOW2_OL_MAIN_HEADER, offset, data, bytes);
    if (ret < 0) {
        return ret;
    }
    return host_file_flush(s->file);
}

/*
 * The one write that switches the image from old metadata to new (a moved
 * table, a new snapshot table).  When it fails, the disk may hold either
 * version: callers keep both allocated, and the image is taken out of
 * service, so that nothing is written on top of an unknown state.  A
 * reopen finds whichever version is on disk, consistent, with leaks.
 */
int qcow2_commit_header_field(BDRVQcow2State *s, int offset,
                              const void *data, int bytes)
{
    int ret = qcow2_write_header_field(s, offset, data, bytes);

    if (ret < 0) {
        qcow2_switch_failed(s, ret);
    }
    return ret;
}

/* A switch to new metadata failed: see qcow2_commit_header_field(). */
void qcow2_switch_failed(BDRVQcow2State *s, int ret)
{
    if (!bdrv_is_broken(s->img)) {
        qguard_message("qcow2: Failed to switch to new metadata: %s; the "
                       "image refuses further requests until it is reopened",
                       g_strerror(-ret));
        bdrv_set_broken(s->img, true);
    }
}

/*
 * Write back everything in dependency order: refcount blocks and L2 tables
 * (the caches order themselves), then the L1 table, then flush the file.
 * @refcounts false leaves the refcount blocks in the cache.
 */
static int flush_metadata(BDRVQcow2State *s, bool refcounts)
{
    int ret;

    /* Data before the tables that point at it. */
    ret = qcow2_flush_data_file(s);
    if (ret < 0) {
        return ret;
    }

    ret = qcow2_cache_write(s, s->l2_table_cache);
    if (ret < 0) {
        return ret;
    }
    if (refcounts) {
        ret = qcow2_cache_write(s, s->refcount_block_cache);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_write_l1_dirty(s);
    if (ret < 0) {
        return ret;
    }
    ret = host_file_flush(s->file);
    if (ret >= 0 && bdrv_runs_alone(s->img)) {
        /*
         * Every table that stopped naming freed clusters is on disk now.
         * Beside other requests (a FUA write) they stay pending: a read
         * may still be on its way to one of them, looked up before it was
         * freed, and must not find it handed to another write.
         */
        qcow2_release_freed_clusters(s);
    }
    return ret;
}

/* Everything, postponed refcounts included: what marking clean needs. */
int qcow2_flush_all_metadata(BDRVQcow2State *s)
{
    return flush_metadata(s, true);
}

/* Are refcount writes postponed until the image is marked clean? */
bool qcow2_refcounts_postponed(BDRVQcow2State *s)
{
    return s->use_lazy_refcounts &&
           (s->incompatible_features & QCOW2_INCOMPAT_DIRTY);
}

/*
 * The refcounts of an image made dirty by lazy refcounts are rebuilt when
 * it is next opened: as in QEMU, they are written only when it is marked
 * clean, which is what lazy refcounts save.  (A snapshot operation's dirty
 * bit only covers its crash window: its refcounts are written as usual.)
 */
int qcow2_flush_metadata(BDRVQcow2State *s)
{
    return flush_metadata(s, !qcow2_refcounts_postponed(s));
}

/* ---- Open ---------------------------------------------------------------- */

int qcow2_validate_table(BDRVQcow2State *s, uint64_t offset,
                         uint64_t entries, size_t entry_len,
                         uint64_t max_size_bytes, const char *table_name,
                         GError **errp)
{
    if (entries > max_size_bytes / entry_len) {
        g_set_error(errp, QGUARD_ERROR, EFBIG, "%s too large", table_name);
        return -EFBIG;
    }
    /* Offsets go to 64-bit signed file offsets, as in QEMU. */
    if (INT64_MAX - entries * entry_len < offset ||
        offset_into_cluster(s, offset)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "%s offset invalid",
                    table_name);
        return -EINVAL;
    }
    return 0;
}

static int load_l1_table(BDRVQcow2State *s, GError **errp)
{
    uint32_t i;
    int ret;

    s->l1_table = g_try_new0(uint64_t, MAX(s->l1_size, 1));
    if (!s->l1_table) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Could not allocate L1 table");
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, s->l1_table_offset, s->l1_table,
                          (size_t)s->l1_size * 8);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Could not read L1 table");
    }
    for (i = 0; i < s->l1_size; i++) {
        s->l1_table[i] = GUINT64_FROM_BE(s->l1_table[i]);
    }
    return 0;
}

static void qcow2_free_state(BDRVQcow2State *s)
{
    if (s->metadata_map) {
        qcow2_metadata_map_free(s->metadata_map);
        s->metadata_map = NULL;
        qcow2_overlap_update_check_map(s);
    }
    if (s->inactive_l2_refs) {
        g_hash_table_destroy(s->inactive_l2_refs);
    }
    qcow2_cache_destroy(s->l2_table_cache);
    qcow2_cache_destroy(s->refcount_block_cache);
    qcow2_refcount_close(s);
    qcow2_free_snapshots(s);
    qcow2_bitmaps_close(s);
    g_free(s->l1_table);
    g_free(s->l1_dirty_bits);
    g_free(s->unknown_header_fields);
    if (s->unknown_header_ext) {
        g_ptr_array_free(s->unknown_header_ext, TRUE);
    }
    g_free(s->image_backing_file);
    g_free(s->image_backing_format);
    qcow2_data_file_close(s);
    g_free(s->image_data_file);
    if (s->cow_pool) {
        g_ptr_array_free(s->cow_pool, TRUE);
    }
    if (s->inflight) {
        g_array_free(s->inflight, TRUE);
    }
    g_cond_clear(&s->inflight_cond);
    g_free(s->decomp_buf);
    g_mutex_clear(&s->meta_lock);
    g_free(s);
}

static void report_repair_line(void *opaque, const char *line)
{
    (void)opaque;
    qguard_message("%s", line);
}

/* As QEMU does, the repair of a dirty image says what it fixed. */
static int repair_dirty_image(BDRVQcow2State *s, GError **errp)
{
    QGuardCheckResult result = { 0 };
    int ret;

    ret = qcow2_check_image(s, QGUARD_CHECK_FIX_ERRORS |
                            QGUARD_CHECK_FIX_LEAKS, &result,
                            report_repair_line, NULL, errp);
    if (ret < 0) {
        return ret;
    }
    if (result.corruptions || result.check_errors) {
        g_set_error(errp, QGUARD_ERROR, EIO,
                    "Could not repair dirty image: %d corruptions remain",
                    result.corruptions + result.check_errors);
        return -EIO;
    }
    return 0;
}

static int qcow2_open(QGuardImage *img, const QGuardOpts *opts, GError **errp)
{
    BDRVQcow2State *s = g_new0(BDRVQcow2State, 1);
    g_autofree uint8_t *hdr = NULL;
    uint64_t backing_offset;
    uint32_t backing_size;
    int l2_tables, refcount_tables;
    uint8_t first[QCOW2_V3_HEADER_LENGTH];
    uint32_t cluster_bits;
    int ret;

    img->opaque = s;
    s->img = img;
    g_mutex_init(&s->meta_lock);
    g_cond_init(&s->inflight_cond);
    s->inflight = g_array_new(FALSE, FALSE, sizeof(Qcow2Inflight));
    s->cow_pool = g_ptr_array_new_with_free_func(g_free);
    s->file = img->file;
    s->unknown_header_ext =
        g_ptr_array_new_with_free_func(qcow2_header_ext_free);

    ret = host_file_pread(s->file, 0, first, sizeof(first));
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not read qcow2 header: %s", g_strerror(-ret));
        goto fail;
    }
    /* Read the whole first cluster when its size is sane, else just enough. */
    cluster_bits = be_get32(first + 20);
    hdr = g_malloc0(1 << MAX_CLUSTER_BITS);
    ret = host_file_pread(s->file, 0, hdr,
                          cluster_bits >= MIN_CLUSTER_BITS &&
                          cluster_bits <= MAX_CLUSTER_BITS ?
                          1u << cluster_bits : sizeof(first));
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not read qcow2 header: %s", g_strerror(-ret));
        goto fail;
    }
    ret = qcow2_parse_header(s, hdr, 1 << MAX_CLUSTER_BITS, &backing_offset,
                            &backing_size, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_parse_runtime_options(s, opts, &l2_tables, &refcount_tables,
                                      errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_data_file_open(s, opts, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = load_l1_table(s, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_refcount_init(s, errp);
    if (ret < 0) {
        goto fail;
    }
    s->l2_table_cache = qcow2_cache_create(s, l2_tables, QCOW2_OL_ACTIVE_L2);
    s->refcount_block_cache = qcow2_cache_create(s, refcount_tables,
                                                 QCOW2_OL_REFCOUNT_BLOCK);
    if (!s->l2_table_cache || !s->refcount_block_cache) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Could not allocate metadata caches");
        ret = -ENOMEM;
        goto fail;
    }
    if (s->snapshots_unread) {
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        ret = 0;
    } else {
        g_autoptr(GError) local_err = NULL;

        ret = qcow2_read_snapshots(s, &local_err);
        if (ret < 0 && (img->flags & QGUARD_OPEN_CHECK)) {
            s->snapshots_unread = true;
            s->nb_snapshots = 0;
            s->snapshots_offset = 0;
            ret = 0;
        } else if (ret < 0) {
            g_propagate_error(errp, g_steal_pointer(&local_err));
            goto fail;
        }
    }
    if (!img->read_only && !(img->flags & QGUARD_OPEN_CHECK)) {
        ret = qcow2_check_tables_in_file(s, errp);
        if (ret < 0) {
            goto fail;
        }
    }

    if (s->image_backing_file) {
        img->backing_file = g_strdup(s->image_backing_file);
        img->backing_format = g_strdup(s->image_backing_format);
        img->full_backing_file = bdrv_resolve_backing_path(img->filename,
                                                           img->backing_file);
        if (!(img->flags & QGUARD_OPEN_NO_BACKING)) {
            ret = bdrv_open_backing(img, opts, errp);
            if (ret < 0) {
                goto fail;
            }
        }
    }

    ret = qcow2_bitmaps_open(s, errp);
    if (ret < 0) {
        goto fail;
    }
    ret = qcow2_map_build(s, errp);
    if (ret < 0) {
        goto fail;
    }

    if (!img->read_only) {
        /* Autoclear bits we do not maintain must go before we write. */
        if (s->autoclear_features & ~QCOW2_AUTOCLEAR_MASK) {
            s->autoclear_features &= QCOW2_AUTOCLEAR_MASK;
            ret = qcow2_update_header(s);
            if (ret < 0) {
                g_set_error(errp, QGUARD_ERROR, -ret,
                            "Could not update qcow2 header: %s",
                            g_strerror(-ret));
                goto fail;
            }
        }
        ret = qcow2_bitmaps_open_rw(s, errp);
        if (ret < 0) {
            goto fail;
        }
        if ((s->incompatible_features & QCOW2_INCOMPAT_DIRTY) &&
            !(img->flags & QGUARD_OPEN_CHECK)) {
            ret = repair_dirty_image(s, errp);
            if (ret < 0) {
                goto fail;
            }
            ret = qcow2_mark_clean(s);
            if (ret < 0) {
                g_set_error(errp, QGUARD_ERROR, -ret,
                            "Could not mark image clean: %s",
                            g_strerror(-ret));
                goto fail;
            }
        }
    }
    return 0;

fail:
    img->opaque = NULL;
    qcow2_free_state(s);
    return ret;
}

/*
 * Benchmarks need the overlap counters of tools that do not print them
 * (qguard-img create, the NBD export): with QGUARD_OVERLAP_STATS_FILE set,
 * every qcow2 image appends one JSON line to that file when it closes.
 */
static void append_overlap_stats(QGuardImage *img)
{
    BDRVQcow2State *s = img->opaque;
    const char *path = g_getenv("QGUARD_OVERLAP_STATS_FILE");
    Qcow2MetadataMapStats ms = { 0 };
    FILE *f;

    if (!path || !*path || img->chain_depth) {
        return;
    }
    if (s->metadata_map) {
        qcow2_metadata_map_get_stats(s->metadata_map, &ms);
    }
    f = fopen(path, "a");
    if (!f) {
        return;
    }
    fprintf(f, "{\"filename\": \"%s\", \"algorithm\": \"%s\", "
            "\"checks_mask\": %u, \"cache_size\": %u, \"checks\": %" PRIu64
            ", \"refused\": %" PRIu64 ", \"list_to_bytemap\": %" PRIu64
            ", \"bytemap_to_list\": %" PRIu64 ", \"bytemaps_freed\": %"
            PRIu64 ", \"inserts\": %" PRIu64 ", \"removes\": %" PRIu64
            ", \"queries\": %" PRIu64 ", \"list_queries\": %" PRIu64
            ", \"windows\": %" PRIu64
            ", \"mem_current\": %" PRIu64 ", \"mem_peak\": %" PRIu64
            ", \"host_bytes\": %" PRId64 ", \"cluster_size\": %d}\n",
            img->filename,
            s->overlap_algorithm == QCOW2_OVERLAP_LINEAR ? "linear"
                                                         : "windowed",
            s->overlap_check, s->overlap_cache_size, qcow2_overlap_checks(s),
            s->overlap_refused, ms.list_to_bytemap, ms.bytemap_to_list,
            ms.bytemaps_freed, ms.inserts, ms.removes, ms.queries,
            ms.list_queries, ms.windows,
            ms.mem_current, ms.mem_peak, host_file_length(s->file),
            s->cluster_size);
    fclose(f);
}

static int do_close(QGuardImage *img)
{
    BDRVQcow2State *s = img->opaque;
    int ret = 0, ret2;

    if (!s) {
        return 0;
    }
    if (!img->read_only && !bdrv_is_broken(img)) {
        /* Bitmaps first: storing them allocates and frees clusters. */
        ret = qcow2_bitmaps_store(s, true);
        ret2 = qcow2_flush_metadata(s);
        ret = ret < 0 ? ret : ret2;
        /* Lazy refcounts are consistent again once everything is flushed. */
        if (ret == 0 && s->use_lazy_refcounts &&
            !(img->flags & QGUARD_OPEN_CHECK)) {
            ret = qcow2_mark_clean(s);
        }
    }
    /* After the last flush, whose writes are checked too. */
    append_overlap_stats(img);
    qcow2_free_state(s);
    img->opaque = NULL;
    return ret;
}

/* ---- Requests ----------------------------------------------------------- */

static int qcow2_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       void *buf, GError **errp)
{
    return qcow2_error_propagate(qcow2_read_guest(img->opaque, offset, bytes,
                                                  buf), errp);
}

static int qcow2_pwrite(QGuardImage *img, uint64_t offset, uint64_t bytes,
                        const void *buf, unsigned flags, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    int ret;

    qcow2_bitmaps_set_dirty(s, offset, bytes);
    ret = qcow2_write_guest(s, offset, bytes, buf);

    if (ret >= 0 && (flags & QGUARD_WRITE_FUA)) {
        /* Other writes may run beside this one (qcow2_write_guest()). */
        g_mutex_lock(&s->meta_lock);
        ret = qcow2_flush_metadata(s);
        g_mutex_unlock(&s->meta_lock);
    }
    return qcow2_error_propagate(ret, errp);
}

/*
 * Zeros written as data, in the pieces of QEMU's fallback for a zero
 * write: up to the first cluster boundary, the whole clusters, the rest.
 * Each piece decides on its own whether its copy-on-write reads zeros, so
 * a new cluster at either end is zeroed by fallocate() as QEMU zeroes it.
 */
int qcow2_write_zero_buffer(BDRVQcow2State *s, uint64_t offset,
                            uint64_t bytes)
{
    uint64_t cs = s->cluster_size, chunk = MAX((uint64_t)1 << 20, cs);
    g_autofree uint8_t *zeros = g_malloc0(MIN(bytes, chunk));

    while (bytes > 0) {
        uint64_t into = offset_into_cluster(s, offset), cur;
        int ret;

        if (into) {
            cur = MIN(bytes, cs - into);
        } else if (bytes >= cs) {
            cur = MIN(bytes - bytes % cs, chunk);
        } else {
            cur = bytes;
        }
        ret = qcow2_write_guest(s, offset, cur, zeros);
        if (ret < 0) {
            return ret;
        }
        offset += cur;
        bytes -= cur;
    }
    return 0;
}

/*
 * Split [offset, offset + bytes) into the partial clusters at its ends and
 * the whole clusters between them.  A request inside one cluster, or across
 * one cluster boundary without a whole cluster, has only partial pieces.
 */
typedef struct ZeroPlan {
    uint64_t partial[2][2];     /* up to two [start, end) pieces */
    int npartial;
    uint64_t full_start, full_end;
} ZeroPlan;

static void plan_zero_request(BDRVQcow2State *s, uint64_t offset,
                              uint64_t bytes, ZeroPlan *plan)
{
    uint64_t end = offset + bytes;
    uint64_t full_start = ROUND_UP(offset, (uint64_t)s->cluster_size);
    uint64_t full_end = start_of_cluster(s, end);

    /* The tail of a disk whose size is not cluster aligned counts whole. */
    if (end == s->img->total_size) {
        full_end = ROUND_UP(end, (uint64_t)s->cluster_size);
    }
    plan->npartial = 0;
    if (full_start >= full_end) {
        uint64_t boundary = start_of_cluster(s, offset) + s->cluster_size;
        plan->full_start = plan->full_end = 0;
        plan->partial[plan->npartial][0] = offset;
        plan->partial[plan->npartial++][1] = MIN(end, boundary);
        if (end > boundary) {
            plan->partial[plan->npartial][0] = boundary;
            plan->partial[plan->npartial++][1] = end;
        }
        return;
    }
    plan->full_start = full_start;
    plan->full_end = full_end;
    if (offset < full_start) {
        plan->partial[plan->npartial][0] = offset;
        plan->partial[plan->npartial++][1] = full_start;
    }
    if (end > full_end) {
        plan->partial[plan->npartial][0] = full_end;
        plan->partial[plan->npartial++][1] = end;
    }
}

static int do_pwrite_zeroes(QGuardImage *img, uint64_t offset,
                            uint64_t bytes, unsigned flags)
{
    BDRVQcow2State *s = img->opaque;
    ZeroPlan plan;
    int i, ret = 0;

    qcow2_bitmaps_set_dirty(s, offset, bytes);
    if (s->qcow_version < 3) {
        /*
         * No zero flag in v2.  Without a backing file an unallocated
         * cluster reads as zeros, so QEMU deallocates whole clusters;
         * with one, the zeros must be written out.
         */
        if (flags & QGUARD_ZERO_FAST) {
            return -ENOTSUP;
        }
        if (img->backing) {
            ret = qcow2_write_zero_buffer(s, offset, bytes);
            goto out;
        }
    }
    plan_zero_request(s, offset, bytes, &plan);
    if (flags & QGUARD_ZERO_FAST) {
        /* Fail up front, before changing anything, if zeros must be written. */
        for (i = 0; i < plan.npartial; i++) {
            ret = has_subclusters(s)
                  ? qcow2_zero_piece_ext(s, plan.partial[i][0],
                                         plan.partial[i][1], true)
                  : qcow2_zero_partial(s, plan.partial[i][0],
                                       plan.partial[i][1] -
                                       plan.partial[i][0], false, true);
            if (ret < 0) {
                return ret;
            }
        }
    }
    for (i = 0; i < plan.npartial; i++) {
        ret = has_subclusters(s)
              ? qcow2_zero_piece_ext(s, plan.partial[i][0],
                                     plan.partial[i][1], false)
              : qcow2_zero_partial(s, plan.partial[i][0],
                                   plan.partial[i][1] - plan.partial[i][0],
                                   flags & QGUARD_ZERO_MAY_UNMAP, false);
        if (ret < 0) {
            return ret;
        }
    }
    if (plan.full_end > plan.full_start && s->qcow_version < 3) {
        ret = qcow2_discard_clusters(s, plan.full_start,
                                     plan.full_end - plan.full_start, false,
                                     QCOW2_DISCARD_REQUEST);
    } else if (plan.full_end > plan.full_start) {
        ret = qcow2_zero_clusters(s, plan.full_start,
                                  plan.full_end - plan.full_start,
                                  flags & QGUARD_ZERO_MAY_UNMAP);
    }
out:
    if (ret >= 0 && (flags & QGUARD_WRITE_FUA)) {
        ret = qcow2_flush_metadata(s);
    }
    return ret;
}

static int do_pwrite_compressed(QGuardImage *img, uint64_t offset,
                                uint64_t bytes, const void *buf)
{
    BDRVQcow2State *s = img->opaque;

    /* Data files hold guest clusters at their guest offsets: no room. */
    if (has_data_file(s)) {
        return -ENOTSUP;
    }
    qcow2_bitmaps_set_dirty(s, offset, bytes);
    return qcow2_write_compressed(s, offset, buf, bytes);
}

static uint32_t qcow2_cluster_size(const QGuardImage *img)
{
    return ((BDRVQcow2State *)img->opaque)->cluster_size;
}

static int do_discard(QGuardImage *img, uint64_t offset, uint64_t bytes)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t start = ROUND_UP(offset, (uint64_t)s->cluster_size);
    uint64_t end = offset + bytes;

    /* As in QEMU, the whole request counts, even what is left alone. */
    qcow2_bitmaps_set_dirty(s, offset, bytes);
    /*
     * Without the zero flag, a discarded cluster of a v2 image would show
     * the backing file's data: QEMU ignores such discards.
     */
    if (s->qcow_version < 3 && img->backing) {
        return 0;
    }
    /* Only whole clusters can be discarded; partial ones are left alone. */
    end = end == img->total_size ? ROUND_UP(end, (uint64_t)s->cluster_size)
                                 : start_of_cluster(s, end);
    if (start >= end) {
        return 0;
    }
    return qcow2_discard_clusters(s, start, end - start, false,
                                  QCOW2_DISCARD_REQUEST);
}

static int qcow2_flush(QGuardImage *img, GError **errp)
{
    return qcow2_error_propagate(qcow2_flush_metadata(img->opaque), errp);
}

/*
 * QEMU's qcow2 says at close which cache it could not write back, one line
 * each; anything else that fails, QEMU does not report, and qguard does as
 * "Failed to flush the image" (a write reported done may be lost).
 */
static int close_flush_failed(int ret, GError **errp)
{
    g_autoptr(GError) err = NULL;

    qcow2_error_propagate(ret, &err);
    g_set_error(errp, QGUARD_ERROR, -ret, "Failed to flush the image: %s",
                err->message);
    return ret;
}

static int qcow2_close_flush(QGuardImage *img, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    int ret, l2_ret, rc_ret = 0;

    ret = qcow2_flush_data_file(s);
    if (ret < 0) {
        return close_flush_failed(ret, errp);
    }
    l2_ret = qcow2_cache_write(s, s->l2_table_cache);
    if (!qcow2_refcounts_postponed(s)) {
        rc_ret = qcow2_cache_write(s, s->refcount_block_cache);
    }
    if (l2_ret < 0 && rc_ret < 0) {
        g_autofree char *line = g_strdup_printf(
            "Failed to flush the L2 table cache: %s", g_strerror(-l2_ret));

        qguard_report_now(line);
    }
    if (rc_ret < 0) {
        return bdrv_error_errno(errp, rc_ret,
                                "Failed to flush the refcount block cache");
    }
    if (l2_ret < 0) {
        return bdrv_error_errno(errp, l2_ret,
                                "Failed to flush the L2 table cache");
    }
    ret = qcow2_flush_metadata(s);
    return ret < 0 ? close_flush_failed(ret, errp) : 0;
}

/*
 * QEMU's heuristic: as many clusters in use below the end of the qcow2
 * file as it has allocated space for, plus a margin, means metadata
 * preallocation, whose data clusters may be holes that read as zeros.
 * Only then does QEMU ask the file holding the data (the qcow2 file or
 * the external data file) where its holes are, so map reports the same.
 */
static bool detect_metadata_preallocation(BDRVQcow2State *s)
{
    int64_t allocated = host_file_allocated(s->file);
    int64_t length = host_file_length(s->file);
    uint64_t real_clusters, threshold;
    int64_t used;

    if (allocated < 0 || length < 0) {
        return false;
    }
    real_clusters = allocated / s->cluster_size;
    threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    used = qcow2_count_used_clusters(s, DIV_ROUND_UP(length, s->cluster_size),
                                     threshold);
    return used >= 0 && (uint64_t)used >= threshold;
}

static int do_block_status(QGuardImage *img, uint64_t offset,
                           uint64_t bytes, QGuardBlockStatus *st)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t host;
    QCow2ClusterType type;
    int ret;

    ret = qcow2_get_host_offset(s, offset, &bytes, &host, &type);
    if (ret < 0) {
        return ret;
    }
    st->bytes = bytes;
    st->host_offset = 0;
    if (has_data_file(s) && s->data_file) {
        st->filename = host_file_name(s->data_file);
    }
    switch (type) {
    case QCOW2_CLUSTER_UNALLOCATED:
        st->flags = 0;
        if (has_subclusters(s)) {
            /* Unallocated subclusters of a cluster with a host cluster. */
            bool valid;
            ret = qcow2_cluster_host(s, offset, &st->host_offset, &valid);
            if (ret < 0) {
                return ret;
            }
            st->flags = valid ? QGUARD_BLOCK_OFFSET_VALID : 0;
        }
        break;
    case QCOW2_CLUSTER_ZERO_PLAIN:
        st->flags = QGUARD_BLOCK_ZERO | QGUARD_BLOCK_ALLOCATED;
        break;
    case QCOW2_CLUSTER_ZERO_ALLOC:
        st->flags = QGUARD_BLOCK_ZERO | QGUARD_BLOCK_ALLOCATED |
                    QGUARD_BLOCK_OFFSET_VALID;
        st->host_offset = host;
        break;
    case QCOW2_CLUSTER_NORMAL:
        st->flags = QGUARD_BLOCK_DATA | QGUARD_BLOCK_ALLOCATED |
                    QGUARD_BLOCK_OFFSET_VALID;
        st->host_offset = host;
        if (!s->metadata_prealloc_checked) {
            s->metadata_prealloc = detect_metadata_preallocation(s);
            s->metadata_prealloc_checked = true;
        }
        if (s->metadata_prealloc) {
            st->flags |= BDRV_BLOCK_RECURSE;
        }
        break;
    case QCOW2_CLUSTER_COMPRESSED:
        st->flags = QGUARD_BLOCK_DATA | QGUARD_BLOCK_ALLOCATED |
                    QGUARD_BLOCK_COMPRESSED;
        break;
    }
    return 0;
}

static HostFile *qcow2_data_file(QGuardImage *img)
{
    return qcow2_data_host_file(img->opaque);
}

static int qcow2_truncate(QGuardImage *img, uint64_t size, bool shrink,
                          const char *prealloc, GError **errp)
{
    return qcow2_resize(img, size, shrink, prealloc, NULL, NULL, errp);
}

static void add_check_result(QGuardCheckResult *out,
                             const QGuardCheckResult *in)
{
    out->corruptions = qcow2_count_add(out->corruptions, in->corruptions);
    out->leaks = qcow2_count_add(out->leaks, in->leaks);
    out->check_errors = qcow2_count_add(out->check_errors, in->check_errors);
    out->corruptions_fixed = qcow2_count_add(out->corruptions_fixed,
                                             in->corruptions_fixed);
    out->leaks_fixed = qcow2_count_add(out->leaks_fixed, in->leaks_fixed);
}

static int qcow2_check(QGuardImage *img, unsigned fix,
                       QGuardCheckResult *result, QGuardReportFunc *report,
                       void *opaque, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    QGuardCheckResult snap = { 0 };
    int ret;

    /* The snapshot table first: the refcount check counts what it names. */
    ret = qcow2_check_read_snapshot_table(s, &snap, fix, report, opaque,
                                          errp);
    if (ret < 0) {
        memset(result, 0, sizeof(*result));
        add_check_result(result, &snap);
        return ret;
    }
    ret = qcow2_check_image(s, fix, result, report, opaque, errp);
    if (ret >= 0) {
        ret = qcow2_check_fix_snapshot_table(s, &snap, fix, report, opaque,
                                             errp);
    }
    add_check_result(result, &snap);

    if (ret >= 0 && fix && !result->check_errors && !result->corruptions) {
        ret = qcow2_mark_clean(s);
        if (ret >= 0) {
            ret = qcow2_mark_consistent(s);
        }
        if (ret >= 0) {
            bdrv_set_broken(img, false);
        }
    }
    return ret;
}

static int qcow2_get_info(QGuardImage *img, QGuardImageInfo *info,
                          GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint32_t i;

    (void)errp;
    info->cluster_size = s->cluster_size;
    info->dirty_flag = s->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    info->is_qcow2 = true;
    info->compat = g_strdup(s->qcow_version == 2 ? "0.10" : "1.1");
    info->compression_type = g_strdup(s->compression_type ? "zstd" : "zlib");
    info->lazy_refcounts = s->compatible_features &
                           QCOW2_COMPAT_LAZY_REFCOUNTS;
    info->refcount_bits = s->refcount_bits;
    info->corrupt = s->incompatible_features & QCOW2_INCOMPAT_CORRUPT;
    info->extended_l2 = has_subclusters(s);
    info->has_data_file = has_data_file(s);
    info->data_file = g_strdup(s->image_data_file);
    info->data_file_raw = data_file_is_raw(s);
    /* The directory on disk, as QEMU lists it; none if it is damaged. */
    qcow2_bitmaps_info(s, &info->bitmaps, &info->nb_bitmaps);
    info->nb_snapshots = s->nb_snapshots;
    info->snapshots = g_new0(QGuardSnapshotInfo, MAX(s->nb_snapshots, 1));
    for (i = 0; i < s->nb_snapshots; i++) {
        QCowSnapshot *sn = &s->snapshots[i];
        QGuardSnapshotInfo *si = &info->snapshots[i];
        si->id = g_strdup(sn->id_str);
        si->name = g_strdup(sn->name);
        si->vm_state_size = sn->vm_state_size;
        si->date_sec = sn->date_sec;
        si->date_nsec = sn->date_nsec;
        si->vm_clock_nsec = sn->vm_clock_nsec;
        si->disk_size = sn->disk_size;
        si->icount = sn->icount;
    }
    return 0;
}

static int qcow2_overlap_stats(QGuardImage *img, QGuardOverlapStats *st)
{
    BDRVQcow2State *s = img->opaque;

    memset(st, 0, sizeof(*st));
    g_strlcpy(st->algorithm,
              s->overlap_algorithm == QCOW2_OVERLAP_LINEAR ? "linear"
                                                           : "windowed",
              sizeof(st->algorithm));
    st->checks_mask = s->overlap_check;
    st->checks = qcow2_overlap_checks(s);
    st->refused = s->overlap_refused;
    st->cache_size = s->overlap_cache_size;
    if (s->metadata_map) {
        Qcow2MetadataMapStats ms;
        qcow2_metadata_map_get_stats(s->metadata_map, &ms);
        st->list_to_bytemap = ms.list_to_bytemap;
        st->bytemap_to_list = ms.bytemap_to_list;
        st->bytemaps_freed = ms.bytemaps_freed;
        st->inserts = ms.inserts;
        st->removes = ms.removes;
        st->queries = ms.queries;
        st->list_queries = ms.list_queries;
        st->mem_current = ms.mem_current;
        st->mem_peak = ms.mem_peak;
        st->windows = ms.windows;
    }
    return 0;
}

static void qcow2_overlap_stats_reset(QGuardImage *img)
{
    BDRVQcow2State *s = img->opaque;

    s->overlap_checks = 0;
    s->overlap_refused = 0;
    if (s->metadata_map) {
        qcow2_metadata_map_reset_counters(s->metadata_map);
    }
}

static int qcow2_snapshot_op(QGuardImage *img, int op, const char *name,
                             GError **errp)
{
    BDRVQcow2State *s = img->opaque;

    switch (op) {
    case BDRV_SNAPSHOT_CREATE:
        return qcow2_snapshot_create(s, name, errp);
    case BDRV_SNAPSHOT_APPLY: {
        int ret = qcow2_snapshot_apply(s, name, errp);

        /* The guest content may now differ anywhere (spec: "auto"). */
        if (ret >= 0) {
            qcow2_bitmaps_set_dirty(s, 0, img->total_size);
        }
        return ret;
    }
    default:
        return qcow2_snapshot_delete(s, name, errp);
    }
}

static int qcow2_bitmap_add_op(QGuardImage *img, const char *node,
                               const char *name, uint32_t granularity,
                               bool disabled, GError **errp)
{
    return qcow2_bitmap_add(img->opaque, node, name, granularity, disabled,
                            errp);
}

static int qcow2_bitmap_op(QGuardImage *img, int op, const char *name,
                           GError **errp)
{
    BDRVQcow2State *s = img->opaque;

    switch (op) {
    case BDRV_BITMAP_REMOVE:
        return qcow2_bitmap_remove(s, name, errp);
    case BDRV_BITMAP_CLEAR:
        return qcow2_bitmap_clear(s, name, errp);
    default:
        return qcow2_bitmap_enable(s, name, op == BDRV_BITMAP_ENABLE, errp);
    }
}

static int qcow2_bitmap_merge_op(QGuardImage *img, const char *target,
                                 QGuardImage *src, const char *source,
                                 GError **errp)
{
    return qcow2_bitmap_merge(img->opaque, target,
                              src->drv == &bdrv_qcow2 ? src->opaque : NULL,
                              source, errp);
}

static int qcow2_bitmap_list_op(QGuardImage *img, QGuardBitmapInfo **list,
                                guint *count, GError **errp)
{
    return qcow2_bitmap_list(img->opaque, list, count, errp);
}

static int qcow2_bitmap_status_op(QGuardImage *img, const char *name,
                                  uint64_t offset, uint64_t bytes, bool *dirty,
                                  uint64_t *pnum, GError **errp)
{
    return qcow2_bitmap_status(img->opaque, name, offset, bytes, dirty, pnum,
                               errp);
}

static bool qcow2_supports_bitmaps(const QGuardImage *img)
{
    return ((BDRVQcow2State *)img->opaque)->qcow_version >= 3;
}

static int qcow2_snapshot_load_tmp_op(QGuardImage *img, const char *id,
                                      const char *name, GError **errp)
{
    return qcow2_snapshot_load_tmp(img->opaque, id, name, errp);
}

/*
 * The entry points whose engine functions can fail in more than one place:
 * the failure's text (qcow2_set_error()) goes into the error argument.
 */
static int qcow2_close(QGuardImage *img, GError **errp)
{
    return qcow2_error_propagate(do_close(img), errp);
}

static int qcow2_pwrite_zeroes(QGuardImage *img, uint64_t offset,
                               uint64_t bytes, unsigned flags, GError **errp)
{
    return qcow2_error_propagate(do_pwrite_zeroes(img, offset, bytes, flags),
                                 errp);
}

static int qcow2_pwrite_compressed(QGuardImage *img, uint64_t offset,
                                   uint64_t bytes, const void *buf,
                                   GError **errp)
{
    return qcow2_error_propagate(do_pwrite_compressed(img, offset, bytes,
                                                      buf), errp);
}

static int qcow2_discard(QGuardImage *img, uint64_t offset, uint64_t bytes,
                         GError **errp)
{
    return qcow2_error_propagate(do_discard(img, offset, bytes), errp);
}

static int qcow2_block_status(QGuardImage *img, uint64_t offset,
                              uint64_t bytes, QGuardBlockStatus *st,
                              GError **errp)
{
    return qcow2_error_propagate(do_block_status(img, offset, bytes, st),
                                 errp);
}

static void qcow2_clear_error(QGuardImage *img G_GNUC_UNUSED)
{
    g_private_replace(&request_error, NULL);
}

static int qcow2_probe(const uint8_t *buf, size_t len)
{
    return len >= 8 && be_get32(buf) == QCOW_MAGIC && be_get32(buf + 4) >= 2
           ? 100 : 0;
}

const BlockDriver bdrv_qcow2 = {
    .format_name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create = qcow2_create,
    .create_describe = qcow2_create_describe,
    .create_help = qcow2_create_help,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .parallel_writes = true,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .pwrite_compressed = qcow2_pwrite_compressed,
    .cluster_size = qcow2_cluster_size,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .close_flush = qcow2_close_flush,
    .truncate = qcow2_truncate,
    .block_status = qcow2_block_status,
    .data_file = qcow2_data_file,
    .get_info = qcow2_get_info,
    .check = qcow2_check,
    .overlap_stats = qcow2_overlap_stats,
    .overlap_stats_reset = qcow2_overlap_stats_reset,
    .clear_error = qcow2_clear_error,
    .snapshot = qcow2_snapshot_op,
    .bitmap_add = qcow2_bitmap_add_op,
    .bitmap_op = qcow2_bitmap_op,
    .bitmap_merge = qcow2_bitmap_merge_op,
    .bitmap_list = qcow2_bitmap_list_op,
    .bitmap_status = qcow2_bitmap_status_op,
    .supports_bitmaps = qcow2_supports_bitmaps,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp_op,
    .load_vmstate = qcow2_load_vmstate,
    .save_vmstate = qcow2_save_vmstate,
    .is_runtime_option = qcow2_is_runtime_option,
    .amend = qcow2_amend,
    .amend_help = qcow2_amend_help,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .measure_check_opts = qcow2_measure_check_opts,
    .measure = qcow2_measure,
    .supports_backing = true,
};
