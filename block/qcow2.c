/* SPDX-License-Identifier: MIT */
/*
 * qcow2 driver: header, open/close, request entry points.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Header rewrites: the header and its extensions live in cluster 0 and are
 * rewritten with a single write.  Fields that change during normal operation
 * (l1_size/l1_table_offset, refcount_table_offset/clusters, nb_snapshots/
 * snapshots_offset, incompatible_features) are updated with small writes of
 * just those bytes, each within one sector, so a torn write cannot mix an
 * old offset with a new size.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* Names for the feature name table, as QEMU writes it. */
static const struct {
    uint8_t type;
    uint8_t bit;
    const char *name;
} feature_names[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

#define FEATURE_ENTRY_SIZE 48

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

static size_t ext_size(uint32_t len)
{
    return 8 + ROUND_UP(len, 8);
}

static void put_ext(uint8_t *buf, size_t *pos, uint32_t magic,
                    const void *data, uint32_t len)
{
    be_put32(buf + *pos, magic);
    be_put32(buf + *pos + 4, len);
    memcpy(buf + *pos + 8, data, len);
    *pos += ext_size(len);
}

/*
 * Write the whole header cluster: fixed header, extensions, end marker,
 * backing file name.  The feature name table is informational, so it is
 * left out when it does not fit (as QEMU does for small clusters).
 */
int qcow2_update_header(BDRVQcow2State *s)
{
    g_autofree uint8_t *buf = g_malloc0(s->cluster_size);
    size_t hlen = s->qcow_version >= 3 ? s->header_length
                                       : QCOW2_V2_HEADER_LENGTH;
    size_t pos = hlen, need;
    size_t backing_len = s->image_backing_file ?
                         strlen(s->image_backing_file) : 0;
    size_t fmt_len = s->image_backing_format ?
                     strlen(s->image_backing_format) : 0;
    size_t data_len = s->image_data_file ? strlen(s->image_data_file) : 0;
    uint8_t features[G_N_ELEMENTS(feature_names) * FEATURE_ENTRY_SIZE];
    bool with_features = s->qcow_version >= 3;
    uint8_t bitmaps[24];
    guint i;
    int ret;

    need = hlen + 8 + backing_len;
    if (fmt_len) {
        need += ext_size(fmt_len);
    }
    if (data_len) {
        need += ext_size(data_len);
    }
    if (s->has_bitmaps_ext) {
        need += ext_size(sizeof(bitmaps));
    }
    for (i = 0; i < s->unknown_header_ext->len; i++) {
        Qcow2HeaderExt *ext = g_ptr_array_index(s->unknown_header_ext, i);
        need += ext_size(ext->len);
    }
    if (need > (size_t)s->cluster_size) {
        qcow2_set_error(s, "Header extensions do not fit in the first "
                        "cluster");
        return -ENOSPC;
    }
    if (with_features && need + ext_size(sizeof(features)) >
        (size_t)s->cluster_size) {
        with_features = false;
    }

    be_put32(buf, QCOW_MAGIC);
    be_put32(buf + 4, s->qcow_version);
    be_put32(buf + 20, s->cluster_bits);
    be_put64(buf + 24, s->img->total_size);
    be_put32(buf + 32, s->crypt_method_header);
    be_put32(buf + 36, s->l1_size);
    be_put64(buf + 40, s->l1_table_offset);
    be_put64(buf + 48, s->refcount_table_offset);
    be_put32(buf + 56, size_to_clusters(s, (uint64_t)s->refcount_table_size *
                                            8));
    be_put32(buf + 60, s->nb_snapshots);
    be_put64(buf + 64, s->snapshots_offset);
    if (s->qcow_version >= 3) {
        be_put64(buf + 72, s->incompatible_features);
        be_put64(buf + 80, s->compatible_features);
        be_put64(buf + 88, s->autoclear_features);
        be_put32(buf + 96, s->refcount_order);
        be_put32(buf + 100, s->header_length);
        if (s->header_length > 104) {
            buf[104] = s->compression_type;
        }
        if (s->unknown_header_fields_size) {
            memcpy(buf + QCOW2_V3_HEADER_LENGTH, s->unknown_header_fields,
                   s->unknown_header_fields_size);
        }
    }

    if (fmt_len) {
        put_ext(buf, &pos, QCOW2_EXT_MAGIC_BACKING_FORMAT,
                s->image_backing_format, fmt_len);
    }
    if (data_len) {
        put_ext(buf, &pos, QCOW2_EXT_MAGIC_DATA_FILE, s->image_data_file,
                data_len);
    }
    if (with_features) {
        memset(features, 0, sizeof(features));
        for (i = 0; i < G_N_ELEMENTS(feature_names); i++) {
            uint8_t *e = features + i * FEATURE_ENTRY_SIZE;
            e[0] = feature_names[i].type;
            e[1] = feature_names[i].bit;
            strncpy((char *)e + 2, feature_names[i].name,
                    FEATURE_ENTRY_SIZE - 2);
        }
        put_ext(buf, &pos, QCOW2_EXT_MAGIC_FEATURE_TABLE, features,
                sizeof(features));
    }
    if (s->has_bitmaps_ext) {
        be_put32(bitmaps, s->nb_bitmaps);
        be_put32(bitmaps + 4, 0);
        be_put64(bitmaps + 8, s->bitmap_directory_size);
        be_put64(bitmaps + 16, s->bitmap_directory_offset);
        s->bitmaps_ext_offset = pos + 8;
        put_ext(buf, &pos, QCOW2_EXT_MAGIC_BITMAPS, bitmaps, sizeof(bitmaps));
    } else {
        s->bitmaps_ext_offset = 0;
    }
    for (i = 0; i < s->unknown_header_ext->len; i++) {
        Qcow2HeaderExt *ext = g_ptr_array_index(s->unknown_header_ext, i);
        put_ext(buf, &pos, ext->magic, ext->data, ext->len);
    }
    pos += 8;   /* end of extensions: the buffer is already zero */
    if (backing_len) {
        be_put64(buf + 8, pos);
        be_put32(buf + 16, backing_len);
        memcpy(buf + pos, s->image_backing_file, backing_len);
    }
    ret = write_checked(s, QCOW2_OL_MAIN_HEADER, 0, buf, s->cluster_size);
    return ret < 0 ? ret : host_file_flush(s->file);
}

static int write_incompatible_features(BDRVQcow2State *s)
{
    uint8_t buf[8];

    if (s->qcow_version < 3) {
        return 0;
    }
    be_put64(buf, s->incompatible_features);
    return qcow2_write_header_field(s, HDR_OFF_INCOMPAT, buf, 8);
}

int qcow2_mark_dirty(BDRVQcow2State *s)
{
    int ret;

    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    ret = write_incompatible_features(s);
    if (ret < 0) {
        s->incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    }
    return ret;
}

static int flush_metadata(BDRVQcow2State *s, bool refcounts);

int qcow2_mark_clean(BDRVQcow2State *s)
{
    int ret;

    if (!(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    /* Clearing the bit promises that the refcounts on disk are right. */
    ret = flush_metadata(s, true);
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    return write_incompatible_features(s);
}

int qcow2_mark_corrupt(BDRVQcow2State *s)
{
    s->incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    return write_incompatible_features(s);
}

static int mark_consistent(BDRVQcow2State *s)
{
    if (!(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        return 0;
    }
    s->incompatible_features &= ~QCOW2_INCOMPAT_CORRUPT;
    return write_incompatible_features(s);
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

static void header_ext_free(gpointer p)
{
    Qcow2HeaderExt *ext = p;

    g_free(ext->data);
    g_free(ext);
}

static char *feature_list(const uint8_t *table, size_t table_len,
                          uint64_t mask)
{
    GString *str = g_string_new(NULL);
    size_t i;

    /*
     * The table ends at the first entry without a name: QEMU stops there,
     * and the zero padding that find_feature_table() adds guarantees one.
     */
    for (i = 0; table && i + FEATURE_ENTRY_SIZE <= table_len && table[i + 2];
         i += FEATURE_ENTRY_SIZE) {
        const uint8_t *e = table + i;
        if (e[0] == 0 && e[1] < 64 && (mask & (1ULL << e[1]))) {
            if (str->len) {
                g_string_append(str, ", ");
            }
            g_string_append_len(str, (const char *)e + 2,
                                strnlen((const char *)e + 2, 46));
            mask &= ~(1ULL << e[1]);
        }
    }
    if (mask) {
        if (str->len) {
            g_string_append(str, ", ");
        }
        g_string_append_printf(str, "Unknown incompatible feature: %" PRIx64,
                               mask);
    }
    return g_string_free(str, FALSE);
}

/*
 * The feature name table, if one can be found: a first pass that ignores
 * malformed extensions, so that an image with unknown features is reported
 * as such even when its extensions are damaged too (QEMU does the same).
 * The copy is zero-padded by two entries, so that a truncated last entry
 * still names its feature and the table always ends in an empty entry; a
 * later table replaces an earlier one, as in QEMU.
 */
static uint8_t *find_feature_table(const uint8_t *hdr, uint64_t start,
                                   uint64_t end, size_t *len)
{
    uint64_t offset = start;
    uint8_t *table = NULL;

    *len = 0;
    while (offset + 8 <= end) {
        uint32_t magic = be_get32(hdr + offset);
        uint32_t ext_len = be_get32(hdr + offset + 4);

        offset += 8;
        if (magic == QCOW2_EXT_MAGIC_END || ext_len > end - offset) {
            break;
        }
        if (magic == QCOW2_EXT_MAGIC_FEATURE_TABLE) {
            g_free(table);
            *len = ext_len + 2 * FEATURE_ENTRY_SIZE;
            table = g_malloc0(*len);
            memcpy(table, hdr + offset, ext_len);
        }
        offset += ROUND_UP(ext_len, 8);
    }
    return table;
}

static int read_extensions(BDRVQcow2State *s, const uint8_t *hdr,
                           uint64_t start, uint64_t end,
                           uint8_t **feature_table, size_t *feature_len,
                           GError **errp)
{
    uint64_t offset = start;

    while (offset < end) {
        uint32_t magic, len;

        if (offset + 8 > end) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Header extension too large");
            return -EINVAL;
        }
        magic = be_get32(hdr + offset);
        len = be_get32(hdr + offset + 4);
        offset += 8;
        if (len > end - offset) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Header extension too large");
            return -EINVAL;
        }
        switch (magic) {
        case QCOW2_EXT_MAGIC_END:
            return 0;
        case QCOW2_EXT_MAGIC_BACKING_FORMAT:
            if (len >= 16) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "ERROR: ext_backing_format: len=%u too large "
                            "(>=16)", len);
                return -EINVAL;
            }
            g_free(s->image_backing_format);
            s->image_backing_format = g_strndup((const char *)hdr + offset,
                                                len);
            break;
        case QCOW2_EXT_MAGIC_DATA_FILE:
            g_free(s->image_data_file);
            s->image_data_file = g_strndup((const char *)hdr + offset, len);
            break;
        case QCOW2_EXT_MAGIC_FEATURE_TABLE:
            g_free(*feature_table);
            *feature_table = g_memdup2(hdr + offset, len);
            *feature_len = len;
            break;
        case QCOW2_EXT_MAGIC_BITMAPS:
            if (len != 24) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "bitmaps_ext: Invalid extension length");
                return -EINVAL;
            }
            s->has_bitmaps_ext = true;
            s->bitmaps_ext_offset = offset;
            s->nb_bitmaps = be_get32(hdr + offset);
            s->bitmap_directory_size = be_get64(hdr + offset + 8);
            s->bitmap_directory_offset = be_get64(hdr + offset + 16);
            if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                /* Inconsistent bitmaps: nothing to protect or count. */
                break;
            }
            if (be_get32(hdr + offset + 4) != 0) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "bitmaps_ext: Reserved field is not zero");
                return -EINVAL;
            }
            if (s->nb_bitmaps == 0) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "found bitmaps extension with zero bitmaps");
                return -EINVAL;
            }
            if (s->nb_bitmaps > 65535) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "bitmaps_ext: Image has %u bitmaps, exceeding "
                            "the QEMU supported maximum of 65535",
                            s->nb_bitmaps);
                return -EINVAL;
            }
            if (offset_into_cluster(s, s->bitmap_directory_offset) ||
                s->bitmap_directory_offset >= QCOW2_MAX_HOST_OFFSET) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "bitmaps_ext: invalid bitmap directory offset");
                return -EINVAL;
            }
            if (s->bitmap_directory_size > 1024 * 65535) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "bitmaps_ext: bitmap directory size (%" PRIu64
                            ") exceeds the maximum supported size (%d)",
                            s->bitmap_directory_size, 1024 * 65535);
                return -EINVAL;
            }
            break;
        default: {
            /* Kept as is, in order, for header rewrites. */
            Qcow2HeaderExt *ext = g_new0(Qcow2HeaderExt, 1);
            ext->magic = magic;
            ext->len = len;
            ext->data = g_memdup2(hdr + offset, len);
            g_ptr_array_add(s->unknown_header_ext, ext);
            break;
        }
        }
        offset += ROUND_UP(len, 8);
    }
    return 0;
}

/*
 * Parse and validate the header in @hdr (the whole first cluster).  The
 * checks and their messages follow QEMU's, so that a bad image gets the same
 * diagnosis from both.
 */
static int parse_header(BDRVQcow2State *s, const uint8_t *hdr,
                        size_t hdr_len, uint64_t *backing_offset,
                        uint32_t *backing_size, GError **errp)
{
    QGuardImage *img = s->img;
    uint32_t cluster_bits;
    g_autofree uint8_t *feature_table = NULL;
    size_t feature_len = 0;
    uint64_t ext_end;
    int ret;

    if (be_get32(hdr) != QCOW_MAGIC) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Image is not in qcow2 format");
        return -EINVAL;
    }
    s->qcow_version = be_get32(hdr + 4);
    if (s->qcow_version < 2 || s->qcow_version > 3) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Unsupported qcow2 version %d", s->qcow_version);
        return -ENOTSUP;
    }
    cluster_bits = be_get32(hdr + 20);
    if (cluster_bits < MIN_CLUSTER_BITS || cluster_bits > MAX_CLUSTER_BITS) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unsupported cluster size: 2^%u", cluster_bits);
        return -EINVAL;
    }
    s->cluster_bits = cluster_bits;
    s->cluster_size = 1 << cluster_bits;
    g_assert(hdr_len >= (size_t)s->cluster_size);

    *backing_offset = be_get64(hdr + 8);
    *backing_size = be_get32(hdr + 16);
    /* The block layer counts whole 512-byte sectors, as QEMU's does. */
    img->total_size = be_get64(hdr + 24) & ~(uint64_t)511;
    s->crypt_method_header = be_get32(hdr + 32);
    s->l1_size = be_get32(hdr + 36);
    s->l1_table_offset = be_get64(hdr + 40);
    s->refcount_table_offset = be_get64(hdr + 48);
    s->refcount_table_size = 0;
    s->nb_snapshots = be_get32(hdr + 60);
    s->snapshots_offset = be_get64(hdr + 64);

    if (s->qcow_version == 2) {
        s->incompatible_features = 0;
        s->compatible_features = 0;
        s->autoclear_features = 0;
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LENGTH;
    } else {
        s->incompatible_features = be_get64(hdr + 72);
        s->compatible_features = be_get64(hdr + 80);
        s->autoclear_features = be_get64(hdr + 88);
        /* Unsigned on disk: compare before it becomes a shift count. */
        if (be_get32(hdr + 96) > 6) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Reference count entry width too large; may not "
                        "exceed 64 bits");
            return -EINVAL;
        }
        s->refcount_order = be_get32(hdr + 96);
        s->header_length = be_get32(hdr + 100);
        if (s->header_length < QCOW2_V3_MIN_HEADER_LENGTH) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "qcow2 header too short");
            return -EINVAL;
        }
        if (s->header_length > (uint32_t)s->cluster_size) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "qcow2 header exceeds cluster size");
            return -EINVAL;
        }
        if (s->header_length > QCOW2_V3_HEADER_LENGTH) {
            s->unknown_header_fields_size = s->header_length -
                                            QCOW2_V3_HEADER_LENGTH;
            s->unknown_header_fields = g_memdup2(hdr + QCOW2_V3_HEADER_LENGTH,
                                                 s->unknown_header_fields_size);
        }
        s->compression_type = s->header_length > 104 ? hdr[104] : 0;
    }

    if (*backing_offset > (uint64_t)s->cluster_size) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid backing file offset");
        return -EINVAL;
    }
    ext_end = *backing_offset ? *backing_offset : (uint64_t)s->cluster_size;
    if (s->incompatible_features & ~QCOW2_INCOMPAT_MASK) {
        g_autofree uint8_t *names = NULL;
        size_t names_len;
        g_autofree char *list = NULL;

        names = find_feature_table(hdr, s->header_length, ext_end,
                                   &names_len);
        list = feature_list(names, names_len,
                            s->incompatible_features & ~QCOW2_INCOMPAT_MASK);
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Unsupported qcow2 feature(s): %s", list);
        return -ENOTSUP;
    }
    ret = read_extensions(s, hdr, s->header_length, ext_end, &feature_table,
                          &feature_len, errp);
    if (ret < 0) {
        return ret;
    }
    if ((s->incompatible_features & QCOW2_INCOMPAT_CORRUPT) &&
        !img->read_only && !(img->flags & QGUARD_OPEN_CHECK)) {
        g_set_error(errp, QGUARD_ERROR, EACCES,
                    "qcow2: Image is corrupt; cannot be opened read/write");
        return -EACCES;
    }
    if (s->refcount_order > 6) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Reference count entry width too large; may not exceed "
                    "64 bits");
        return -EINVAL;
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (s->compression_type == 0) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "qcow2: Compression type incompatible feature bit "
                        "must not be set");
            return -EINVAL;
        }
    } else if (s->compression_type != 0) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "qcow2: Compression type incompatible feature bit must "
                    "be set");
        return -EINVAL;
    }
    if (s->compression_type > 1) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "qcow2: unknown compression type: %u",
                    s->compression_type);
        return -EINVAL;
    }
    if (s->crypt_method_header > 2) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unsupported encryption method %d",
                    (int32_t)s->crypt_method_header);
        return -EINVAL;
    }
    /* Features qguard knows but does not implement: refuse, never misread. */
    if (s->crypt_method_header) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Encrypted images are not supported (%s encryption)",
                    s->crypt_method_header == 1 ? "AES" : "LUKS");
        return -ENOTSUP;
    }

    s->subclusters = has_subclusters(s) ? QCOW_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->subclusters;
    s->subcluster_bits = s->cluster_bits - (has_subclusters(s) ? 5 : 0);
    if (s->subcluster_size < (1 << MIN_CLUSTER_BITS)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unsupported subcluster size: %d", s->subcluster_size);
        return -EINVAL;
    }
    s->l2_entry_size = has_subclusters(s) ? 16 : 8;
    s->l2_bits = s->cluster_bits - (has_subclusters(s) ? 4 : 3);
    s->l2_size = 1 << s->l2_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1 << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ULL << s->csize_shift) - 1;
    qcow2_refcount_setup_order(s);

    if (s->l1_size > QCOW_MAX_L1_SIZE / 8) {
        g_set_error(errp, QGUARD_ERROR, EFBIG, "Active L1 table too large");
        return -EFBIG;
    }
    {
        uint64_t l1_needed = size_to_l1(s, img->total_size);
        if (img->total_size > INT64_MAX || l1_needed > INT32_MAX) {
            g_set_error(errp, QGUARD_ERROR, EFBIG, "Image is too big");
            return -EFBIG;
        }
        s->l1_vm_state_index = l1_needed;
    }
    if (s->l1_size < (uint32_t)s->l1_vm_state_index) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "L1 table is too small");
        return -EINVAL;
    }
    ret = qcow2_validate_table(s, s->l1_table_offset, s->l1_size, 8,
                               QCOW_MAX_L1_SIZE, "Active L1 table", errp);
    if (ret < 0) {
        return ret;
    }
    {
        uint32_t clusters = be_get32(hdr + 56);
        if (clusters > QCOW_MAX_REFTABLE_SIZE / (uint32_t)s->cluster_size) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Reference count table too large");
            return -EINVAL;
        }
        if (clusters == 0) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Image does not contain a reference count table");
            return -EINVAL;
        }
        s->refcount_table_size = ((uint64_t)clusters << s->cluster_bits) / 8;
        ret = qcow2_validate_table(s, s->refcount_table_offset,
                                   s->refcount_table_size, 8,
                                   QCOW_MAX_REFTABLE_SIZE,
                                   "Reference count table", errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->nb_snapshots > QCOW_MAX_SNAPSHOTS) {
        ret = -EINVAL;
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Snapshot table too large");
    } else {
        ret = qcow2_validate_table(s, s->snapshots_offset, s->nb_snapshots,
                                   40, QCOW_MAX_SNAPSHOTS_SIZE,
                                   "Snapshot table", errp);
    }
    if (ret < 0 && (s->img->flags & QGUARD_OPEN_CHECK)) {
        /* The check reads it, and repairs what it can. */
        g_clear_error(errp);
        s->snapshots_unread = true;
    } else if (ret < 0) {
        return ret;
    }
    if (*backing_offset) {
        if (*backing_size > QCOW2_MAX_BACKING_NAME ||
            *backing_size >= (uint32_t)s->cluster_size ||
            *backing_offset + *backing_size > (uint64_t)s->cluster_size) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Backing file name too long");
            return -EINVAL;
        }
        s->image_backing_file = g_strndup((const char *)hdr + *backing_offset,
                                          *backing_size);
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
    s->unknown_header_ext = g_ptr_array_new_with_free_func(header_ext_free);

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
    ret = parse_header(s, hdr, 1 << MAX_CLUSTER_BITS, &backing_offset,
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
            s->overlap_check, s->overlap_cache_size, s->overlap_checks,
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

/* ---- Requests ------------------------------------------------------------- */

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

static int write_zero_buffer(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes)
{
    g_autofree uint8_t *zeros = g_malloc0(MIN(bytes, (uint64_t)(1 << 20)));

    while (bytes > 0) {
        uint64_t cur = MIN(bytes, (uint64_t)(1 << 20));
        int ret = qcow2_write_guest(s, offset, cur, zeros);
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
            ret = write_zero_buffer(s, offset, bytes);
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
 * QEMU's heuristic: more clusters in use than the file has allocated space
 * for (with a margin) means metadata preallocation, whose data clusters are
 * holes that read as zeros.  Counting stops at the threshold.
 */
static bool detect_metadata_preallocation(BDRVQcow2State *s)
{
    int64_t allocated = host_file_allocated(s->file);
    uint64_t real_clusters, threshold, used = 0, i;
    g_autofree uint64_t *bits = NULL;
    int64_t end = qcow2_host_end_cluster(s);

    if (allocated < 0 || end < 0) {
        return false;
    }
    real_clusters = allocated / s->cluster_size;
    threshold = MAX(real_clusters * 10 / 9, real_clusters + 2);
    /*
     * By refcount block: ranges without one are free and are skipped, so a
     * damaged table that names a far block costs its entries, not clusters.
     */
    bits = g_new(uint64_t, s->refcount_block_size / 64);
    for (i = 0; i < s->refcount_table_size &&
                (i << s->refcount_block_bits) < (uint64_t)end &&
                used <= threshold; i++) {
        uint64_t nfree;

        if (!(s->refcount_table[i] & REFT_OFFSET_MASK)) {
            continue;
        }
        memset(bits, 0, s->refcount_block_size / 8);
        if (qcow2_refblock_free_bits(s, i, bits, &nfree) < 0) {
            return false;
        }
        used += s->refcount_block_size - nfree;
    }
    return used > threshold;
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
        if (has_data_file(s)) {
            /*
             * As QEMU reports it: where the data file has a hole, the
             * cluster reads zeros.
             */
            uint64_t n = st->bytes;
            bool hole;

            if (s->data_file &&
                host_file_is_hole(s->data_file, host, &n, &hole) == 0) {
                st->bytes = n;
                if (hole) {
                    st->flags |= QGUARD_BLOCK_ZERO;
                }
            }
            break;
        }
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

/*
 * The data file follows the disk size; falloc and full preallocation
 * reserve or write the added range in it, since that is where the guest
 * clusters go.
 */
static int resize_data_file(BDRVQcow2State *s, uint64_t old_size,
                            uint64_t size, Qcow2PreallocMode mode)
{
    static const uint8_t zeros[64 * 1024];
    uint64_t off;
    int ret;

    if (!has_data_file(s) || !s->data_file) {
        return 0;
    }
    ret = host_file_truncate(s->data_file, size);
    if (ret < 0 || size <= old_size) {
        return ret;
    }
    if (mode == QCOW2_PREALLOC_FALLOC) {
        return host_file_allocate(s->data_file, old_size, size - old_size);
    }
    for (off = old_size; mode == QCOW2_PREALLOC_FULL && off < size;
         off += sizeof(zeros)) {
        ret = host_file_pwrite(s->data_file, off, zeros,
                               MIN(sizeof(zeros), size - off));
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * A grown disk must read as zeros even where a longer backing file has
 * data (QEMU's bdrv_co_truncate()): whole clusters get the zero flag, which
 * costs L2 entries but no data, whole subclusters of a partial last cluster
 * their zero bits (extended L2), and the rest real zeros.
 */
static int zero_grown_area(BDRVQcow2State *s, uint64_t old_size,
                           uint64_t size, GError **errp)
{
    uint64_t zero_start = ROUND_UP(old_size, (uint64_t)s->subcluster_size);
    uint64_t full_start = ROUND_UP(zero_start, (uint64_t)s->cluster_size);
    int ret = 0;

    if (size > zero_start && full_start > zero_start) {
        ret = qcow2_zero_subcluster_range(s, zero_start,
                                          ROUND_UP(MIN(full_start, size) -
                                                   zero_start,
                                                   (uint64_t)s->subcluster_size),
                                          false);
    }
    if (ret >= 0 && size > full_start) {
        ret = qcow2_zero_clusters(s, full_start, size - full_start, false);
    }
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Failed to zero out new clusters");
    }
    if (zero_start > old_size) {
        ret = write_zero_buffer(s, old_size, MIN(zero_start, size) - old_size);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to zero out the new area");
        }
    }
    return 0;
}

int qcow2_resize(QGuardImage *img, uint64_t size, bool shrink,
                 const char *prealloc, QGuardProgressFunc *progress,
                 void *opaque, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t old_size = img->total_size;
    Qcow2PreallocMode mode;
    bool zero_new;
    uint8_t buf[8];
    int ret;

    if (!prealloc || !strcmp(prealloc, "off")) {
        mode = QCOW2_PREALLOC_OFF;
    } else if (!strcmp(prealloc, "metadata")) {
        mode = QCOW2_PREALLOC_METADATA;
    } else if (!strcmp(prealloc, "falloc")) {
        mode = QCOW2_PREALLOC_FALLOC;
    } else if (!strcmp(prealloc, "full")) {
        mode = QCOW2_PREALLOC_FULL;
    } else {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Invalid preallocation mode '%s'", prealloc);
        return -EINVAL;
    }
    if (s->nb_snapshots && s->qcow_version < 3) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Can't resize a v2 image which has snapshots");
        return -ENOTSUP;
    }
    if (size % 512) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "The new size must be a multiple of 512");
        return -EINVAL;
    }
    if (data_file_is_raw(s) && mode == QCOW2_PREALLOC_OFF) {
        /* The raw data file stays the whole disk: map what is added. */
        mode = QCOW2_PREALLOC_METADATA;
    }
    if (size < old_size && !shrink) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Use the --shrink option to perform a shrink operation.");
        return -EINVAL;
    }
    /* Only a backing file longer than the disk can show through a grow. */
    zero_new = size > old_size && img->backing &&
               img->backing->total_size > old_size;
    if (zero_new && s->qcow_version < 3) {
        /* Without the zero flag QEMU refuses, before changing anything. */
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Failed to zero out new clusters: %s", g_strerror(ENOTSUP));
        return -ENOTSUP;
    }
    ret = qcow2_bitmaps_prepare_resize(s, size, errp);
    if (ret < 0) {
        return ret;
    }
    if (size < old_size) {
        if (mode != QCOW2_PREALLOC_OFF) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                        "Preallocation can only be used for growing images");
            return -ENOTSUP;
        }
        ret = qcow2_discard_clusters(s, ROUND_UP(size, (uint64_t)s->cluster_size),
                                     ROUND_UP(old_size, (uint64_t)s->cluster_size) -
                                     ROUND_UP(size, (uint64_t)s->cluster_size),
                                     true, QCOW2_DISCARD_ALWAYS);
        if (ret >= 0) {
            ret = qcow2_shrink_l1_table(s, size_to_l1(s, size));
        }
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to discard cropped clusters");
        }
        /* The tables stop naming the cropped clusters before that. */
        ret = qcow2_flush_metadata(s);
        if (ret >= 0) {
            ret = qcow2_shrink_reftable(s);
        }
        if (ret < 0) {
            g_set_error(errp, QGUARD_ERROR, -ret,
                        "Failed to discard unused refblocks: %s",
                        g_strerror(-ret));
            return ret;
        }
    } else if (size > old_size) {
        uint64_t l1_needed = size_to_l1(s, size);
        if (l1_needed > QCOW_MAX_L1_SIZE / 8 || size > INT64_MAX) {
            g_set_error(errp, QGUARD_ERROR, EFBIG,
                        "Failed to grow the L1 table: %s", g_strerror(EFBIG));
            return -EFBIG;
        }
        /* Preallocation writes the grown table once, with its entries. */
        ret = mode == QCOW2_PREALLOC_OFF
              ? qcow2_grow_l1_table(s, l1_needed, true) : 0;
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Failed to grow the L1 table");
        }
    }
    if (size > old_size) {
        uint64_t saved = img->total_size;
        img->total_size = size;
        ret = qcow2_grow_default_l2_cache(s);
        img->total_size = saved;
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Could not flush metadata");
        }
    }
    ret = resize_data_file(s, old_size, size, mode);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret,
                                "Could not resize external data file");
    }
    ret = qcow2_preallocate(s, old_size, size > old_size ? size - old_size : 0,
                            mode, progress, opaque);
    if (ret < 0) {
        /* QEMU's words: data preallocation happens in its file layer. */
        g_set_error(errp, QGUARD_ERROR, -ret, "%s: %s",
                    mode == QCOW2_PREALLOC_METADATA ?
                    "Allocating clusters failed" :
                    mode == QCOW2_PREALLOC_FALLOC ?
                    "Failed to resize underlying file: Could not preallocate "
                    "new data" :
                    "Failed to resize underlying file: Could not write zeros "
                    "for preallocation", g_strerror(-ret));
        return ret;
    }
    if (zero_new) {
        ret = zero_grown_area(s, old_size, size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Could not flush metadata");
    }
    if (size < old_size) {
        /* Give back the space past the last cluster still in use. */
        int64_t end = qcow2_host_end_cluster(s);
        int64_t len = host_file_length(s->file);
        if (end >= 0 && len >= 0 && (end << s->cluster_bits) < len) {
            host_file_truncate(s->file, end << s->cluster_bits);
        }
    }
    be_put64(buf, size);
    ret = qcow2_write_header_field(s, 24, buf, 8);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Failed to update the image "
                    "size: %s", g_strerror(-ret));
        return ret;
    }
    img->total_size = size;
    s->l1_vm_state_index = size_to_l1(s, size);
    qcow2_bitmaps_resized(s, size);
    return 0;
}

static int qcow2_truncate(QGuardImage *img, uint64_t size, bool shrink,
                          const char *prealloc, GError **errp)
{
    return qcow2_resize(img, size, shrink, prealloc, NULL, NULL, errp);
}

static void add_check_result(QGuardCheckResult *out,
                             const QGuardCheckResult *in)
{
    out->corruptions += in->corruptions;
    out->leaks += in->leaks;
    out->check_errors += in->check_errors;
    out->corruptions_fixed += in->corruptions_fixed;
    out->leaks_fixed += in->leaks_fixed;
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
            ret = mark_consistent(s);
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
    st->checks = s->overlap_checks;
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
