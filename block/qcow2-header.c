/* SPDX-License-Identifier: MIT */
/*
 * qcow2 header: reading and validating it at open, rewriting it with its
 * extensions, and the incompatible-feature bits (dirty, corrupt).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The header and its extensions live in cluster 0 and are rewritten with a
 * single write.  Fields that change during normal operation (l1_size/
 * l1_table_offset, refcount_table_offset/clusters, nb_snapshots/
 * snapshots_offset, incompatible_features) are updated with small writes of
 * just those bytes, each within one sector (qcow2_write_header_field()), so
 * a torn write cannot mix an old offset with a new size.
 */
#include <inttypes.h>
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

static size_t ext_size(uint32_t len)
{
    return 8 + ROUND_UP(len, 8);
}

static void put_ext(uint8_t *buf, size_t *pos, uint32_t magic,
                    const void *data, uint32_t len)
{
    be_put32(buf + *pos, magic);
    be_put32(buf + *pos + 4, len);
    if (len) {
        /* An empty extension read from the image has no data buffer. */
        memcpy(buf + *pos + 8, data, len);
    }
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
    ret = qcow2_pwrite_meta(s, QCOW2_OL_MAIN_HEADER, 0, buf,
                            s->cluster_size);
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

int qcow2_mark_clean(BDRVQcow2State *s)
{
    int ret;

    if (!(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    /* Clearing the bit promises that the refcounts on disk are right. */
    ret = qcow2_flush_all_metadata(s);
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

int qcow2_mark_consistent(BDRVQcow2State *s)
{
    if (!(s->incompatible_features & QCOW2_INCOMPAT_CORRUPT)) {
        return 0;
    }
    s->incompatible_features &= ~QCOW2_INCOMPAT_CORRUPT;
    return write_incompatible_features(s);
}

void qcow2_header_ext_free(gpointer p)
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
int qcow2_parse_header(BDRVQcow2State *s, const uint8_t *hdr,
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
