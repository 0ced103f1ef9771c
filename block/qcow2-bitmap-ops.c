/* SPDX-License-Identifier: MIT */
/*
 * qcow2 persistent dirty bitmaps in memory: marking written granules, and
 * the operations of QEMU's block-dirty-bitmap-* commands (add, remove,
 * clear, enable, disable, merge), with QEMU's checks and messages.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Operations change memory only; qcow2_bitmaps_store() writes the result
 * at close (docs/bitmaps.md).
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2-bitmap.h"

#define INCONSISTENT_HINT "Try block-dirty-bitmap-remove to delete this " \
                          "bitmap from disk\n"

/* ---- Bit runs ----------------------------------------------------------- */

/*
 * Writes run in parallel (qcow2_pwrite() beside other writes, without
 * meta_lock): bits are set with atomic ORs, or two writers setting bits of
 * one word lose one's.  Everything else that reads or changes them runs
 * alone.
 */
static void mark_changed(BDRVQcow2State *s, Qcow2Bitmap *bm, uint64_t word)
{
    uint64_t c = word >> (s->cluster_bits - 3);

    __atomic_fetch_or(&bm->changed[c / 64], UINT64_C(1) << (c % 64),
                      __ATOMIC_RELAXED);
}

/* The bits of word @w that lie in granules [first, end). */
static uint64_t word_mask(uint64_t w, uint64_t first, uint64_t end)
{
    uint64_t mask = UINT64_MAX;

    if (w == first / 64) {
        mask &= UINT64_MAX << (first % 64);
    }
    if (w == (end - 1) / 64) {
        mask &= UINT64_MAX >> (63 - (end - 1) % 64);
    }
    return mask;
}

/* Set granules [first, end); data clusters whose words change are noted. */
static void set_bits(BDRVQcow2State *s, Qcow2Bitmap *bm, uint64_t first,
                     uint64_t end)
{
    uint64_t w = first / 64, last = (end - 1) / 64;

    for (; w <= last; w++) {
        uint64_t mask = word_mask(w, first, end);

        if ((__atomic_load_n(&bm->bits[w], __ATOMIC_RELAXED) & mask) != mask) {
            __atomic_fetch_or(&bm->bits[w], mask, __ATOMIC_RELAXED);
            mark_changed(s, bm, w);
        }
    }
}

/* Clear granules [first, end). */
static void clear_bits(BDRVQcow2State *s, Qcow2Bitmap *bm, uint64_t first,
                       uint64_t end)
{
    uint64_t w = first / 64, last = (end - 1) / 64;

    for (; w <= last; w++) {
        uint64_t mask = word_mask(w, first, end);

        if (bm->bits[w] & mask) {
            bm->bits[w] &= ~mask;
            mark_changed(s, bm, w);
        }
    }
}

static bool get_bit(const Qcow2Bitmap *bm, uint64_t k)
{
    return bm->bits[k / 64] & (UINT64_C(1) << (k % 64));
}

/* The first granule in [k, end) whose bit is not @value, or @end. */
static uint64_t next_different(const Qcow2Bitmap *bm, uint64_t k,
                               uint64_t end, bool value)
{
    while (k < end) {
        uint64_t word = bm->bits[k / 64];
        uint64_t diff = (value ? ~word : word) & (UINT64_MAX << (k % 64));

        if (diff) {
            return MIN(end, (k & ~UINT64_C(63)) + __builtin_ctzll(diff));
        }
        k = (k & ~UINT64_C(63)) + 64;
    }
    return end;
}

/* Mark bytes [offset, offset + bytes) in @bm. */
static void set_bytes(BDRVQcow2State *s, Qcow2Bitmap *bm, uint64_t offset,
                      uint64_t bytes)
{
    uint64_t first = offset >> bm->granularity_bits;
    uint64_t end = ((offset + bytes - 1) >> bm->granularity_bits) + 1;

    end = MIN(end, bm->nb_bits);
    if (first < end) {
        set_bits(s, bm, first, end);
    }
}

/*
 * Every guest write, zero write, discard and compressed write: O(bytes /
 * granularity / 64) per enabled bitmap, no I/O (I4).
 */
void qcow2_bitmaps_set_dirty(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes)
{
    GPtrArray *list = s->bm ? s->bm->list : NULL;
    guint i;

    if (!list || !bytes) {
        return;
    }
    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        if (bm->enabled && bm->bits) {
            set_bytes(s, bm, offset, bytes);
        }
    }
}

/* ---- Lookup and QEMU's checks ------------------------------------------- */

static int directory_usable(BDRVQcow2State *s, GError **errp)
{
    if (s->bm->error) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "%s", s->bm->error);
        return -EINVAL;
    }
    return 0;
}

static Qcow2Bitmap *lookup(BDRVQcow2State *s, const char *name, GError **errp)
{
    Qcow2Bitmap *bm;

    if (directory_usable(s, errp) < 0) {
        return NULL;
    }
    bm = qcow2_bitmap_find(s->bm->list, name);
    if (!bm) {
        g_set_error(errp, QGUARD_ERROR, ENOENT,
                    "Dirty bitmap '%s' not found", name);
    }
    return bm;
}

static int check_consistent(const Qcow2Bitmap *bm, GError **errp)
{
    if (bm->inconsistent) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Bitmap '%s' is inconsistent "
                    "and cannot be used\n" INCONSISTENT_HINT, bm->name);
        return -EINVAL;
    }
    return 0;
}

/* QEMU's check_constraints_on_bitmap(); NULL when they hold. */
static const char *constraint_error(BDRVQcow2State *s, const char *name,
                                    uint64_t size, int granularity_bits)
{
    uint64_t bytes = (qcow2_bitmap_nb_bits(size, granularity_bits) + 7) / 8;

    if (granularity_bits > BME_MAX_GRANULARITY_BITS) {
        return "Granularity exceeds maximum (2147483648 bytes)";
    }
    if (granularity_bits < BME_MIN_GRANULARITY_BITS) {
        return "Granularity is under minimum (512 bytes)";
    }
    if (bytes > BME_MAX_PHYS_SIZE ||
        bytes > (uint64_t)BME_MAX_TABLE_SIZE * s->cluster_size) {
        return "Too much space will be occupied by the bitmap. "
               "Use larger granularity";
    }
    if (strlen(name) > BME_MAX_NAME_SIZE) {
        return "Name length exceeds maximum (1023 characters)";
    }
    return NULL;
}

/* ---- Operations --------------------------------------------------------- */

static Qcow2Bitmap *new_bitmap(BDRVQcow2State *s, const char *name,
                               int granularity_bits)
{
    Qcow2Bitmap *bm = g_new0(Qcow2Bitmap, 1);
    uint64_t size = s->img->total_size;
    uint64_t bytes;

    bm->name = g_strdup(name);
    bm->granularity_bits = granularity_bits;
    bm->nb_bits = qcow2_bitmap_nb_bits(size, granularity_bits);
    bm->nb_clusters = qcow2_bitmap_nb_clusters(s, size, granularity_bits);
    bytes = (uint64_t)bm->nb_clusters * s->cluster_size;
    if (s->bm->loaded_bytes + bytes <= QCOW2_BITMAPS_MAX_MEMORY) {
        bm->bits = g_try_malloc0(MAX(bytes, 8));
        bm->changed = g_try_new0(uint64_t,
                                 MAX(DIV_ROUND_UP(bm->nb_clusters, 64), 1));
    }
    bm->table_changed = true;
    if (!bm->bits || !bm->changed) {
        qcow2_bitmap_free(bm);
        return NULL;
    }
    bm->bits_len = MAX(bytes, 8);
    s->bm->loaded_bytes += bm->bits_len;
    return bm;
}

/*
 * QEMU's qmp_block_dirty_bitmap_add() for a persistent bitmap: its checks
 * in its order.  @granularity 0 picks the default: the cluster size within
 * [4 KiB, 64 KiB].
 */
int qcow2_bitmap_add(BDRVQcow2State *s, const char *node, const char *name,
                     uint32_t granularity, bool disabled, GError **errp)
{
    GPtrArray *list = s->bm->list;
    uint64_t dir_size = qcow2_bitmap_dir_entry_size(strlen(name));
    const char *why = NULL;
    Qcow2Bitmap *bm;
    guint i;

    if (!name[0]) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Bitmap name cannot be empty");
        return -EINVAL;
    }
    if (granularity) {
        if (granularity < 512 || (granularity & (granularity - 1))) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Granularity must be power of 2 and at least 512");
            return -EINVAL;
        }
    } else {
        granularity = MIN(MAX(s->cluster_size, 4096), 65536);
    }
    if (directory_usable(s, errp) < 0) {
        return -EINVAL;
    }
    if (qcow2_bitmap_find(s->bm->list, name)) {
        g_set_error(errp, QGUARD_ERROR, EEXIST, "Bitmap already exists: %s",
                    name);
        return -EEXIST;
    }
    for (i = 0; i < list->len; i++) {
        bm = g_ptr_array_index(list, i);
        dir_size += qcow2_bitmap_dir_entry_size(strlen(bm->name));
    }
    if (s->qcow_version < 3) {
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    } else if (!(why = constraint_error(s, name, s->img->total_size,
                                        __builtin_ctz(granularity)))) {
        if (list->len + 1 > QCOW2_MAX_BITMAPS) {
            why = "Maximum number of persistent bitmaps is already reached";
        } else if (dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
            why = "Not enough space in the bitmap directory";
        } else if (!s->img->total_size) {
            /* QEMU would lose it at close: a table must have entries. */
            why = "Too much space will be occupied by the bitmap. "
                  "Use larger granularity";
        }
    }
    if (why) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Can't make bitmap '%s' persistent in '%s': %s",
                    name, node, why);
        return -EINVAL;
    }
    bm = new_bitmap(s, name, __builtin_ctz(granularity));
    if (!bm) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM, "Could not allocate bitmap "
                    "'%s': %s", name, g_strerror(ENOMEM));
        return -ENOMEM;
    }
    bm->enabled = !disabled;
    /*
     * QEMU appends new bitmaps to the directory most recent first (it
     * walks its in-memory list, which it prepends to): before the others
     * not stored yet.
     */
    for (i = list->len; i > 0; i--) {
        Qcow2Bitmap *prev = g_ptr_array_index(list, i - 1);
        if (prev->table_offset) {
            break;
        }
    }
    g_ptr_array_insert(list, i, bm);
    return 0;
}

int qcow2_bitmap_remove(BDRVQcow2State *s, const char *name, GError **errp)
{
    GPtrArray *list = s->bm->list;
    Qcow2Bitmap *bm = lookup(s, name, errp);
    guint i = 0;

    if (!bm) {
        return -ENOENT;
    }
    while (g_ptr_array_index(list, i) != bm) {
        i++;
    }
    g_ptr_array_steal_index(list, i);
    if (bm->bits) {
        s->bm->loaded_bytes -= bm->bits_len;
        g_clear_pointer(&bm->bits, g_free);
        g_clear_pointer(&bm->changed, g_free);
    }
    if (bm->table_offset) {
        /* Its clusters are freed once a directory without it is on disk. */
        g_ptr_array_add(s->bm->dropped, bm);
    } else {
        qcow2_bitmap_free(bm);
    }
    return 0;
}

/*
 * The bitmap @name into *pbm (NULL and -ENOENT if there is none), checked
 * for consistency and with its bits loaded: 0 or a negative errno.
 */
static int lookup_loaded(BDRVQcow2State *s, const char *name,
                         Qcow2Bitmap **pbm, GError **errp)
{
    Qcow2Bitmap *bm = *pbm = lookup(s, name, errp);
    int ret;

    if (!bm) {
        return -ENOENT;
    }
    ret = check_consistent(bm, errp);
    return ret < 0 ? ret : qcow2_bitmap_load(s, bm, errp);
}

int qcow2_bitmap_clear(BDRVQcow2State *s, const char *name, GError **errp)
{
    Qcow2Bitmap *bm;
    int ret = lookup_loaded(s, name, &bm, errp);

    if (!bm) {
        return ret;
    }
    if (ret >= 0 && bm->nb_bits) {
        clear_bits(s, bm, 0, bm->nb_bits);
    }
    return ret;
}

int qcow2_bitmap_enable(BDRVQcow2State *s, const char *name, bool enable,
                        GError **errp)
{
    Qcow2Bitmap *bm = lookup(s, name, errp);
    int ret;

    if (!bm) {
        return -ENOENT;
    }
    ret = check_consistent(bm, errp);
    if (ret >= 0 && enable) {
        /* From now on it must see every write. */
        ret = qcow2_bitmap_load(s, bm, errp);
    }
    if (ret >= 0) {
        bm->enabled = enable;
    }
    return ret;
}

/* Every dirty run of @src, in bytes, into @dst (granularities differ). */
static void merge_runs(BDRVQcow2State *s, Qcow2Bitmap *dst,
                       const Qcow2Bitmap *src, uint64_t size)
{
    uint64_t k = 0;

    while ((k = next_different(src, k, src->nb_bits, false)) <
           src->nb_bits) {
        uint64_t end = next_different(src, k, src->nb_bits, true);
        uint64_t start_byte = k << src->granularity_bits;
        uint64_t end_byte = MIN(end << src->granularity_bits, size);

        set_bytes(s, dst, start_byte, end_byte - start_byte);
        k = end;
    }
}

/*
 * QEMU's block-dirty-bitmap-merge of one source: @src_s is the image that
 * holds @source (NULL: a format without bitmaps).
 */
int qcow2_bitmap_merge(BDRVQcow2State *s, const char *target,
                       BDRVQcow2State *src_s, const char *source,
                       GError **errp)
{
    Qcow2Bitmap *dst = lookup(s, target, errp), *src = NULL;
    uint64_t dst_size = s->img->total_size;
    uint64_t w, words;
    int ret;

    if (!dst) {
        return -ENOENT;
    }
    if (src_s) {
        src = qcow2_bitmap_find(src_s->bm->list, source);
        if (src_s->bm->error) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "%s", src_s->bm->error);
            return -EINVAL;
        }
    }
    if (!src) {
        g_set_error(errp, QGUARD_ERROR, ENOENT,
                    "Dirty bitmap '%s' not found", source);
        return -ENOENT;
    }
    ret = check_consistent(dst, errp);
    if (ret >= 0) {
        ret = check_consistent(src, errp);
    }
    if (ret < 0) {
        return ret;
    }
    if (src_s->img->total_size != dst_size) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Bitmaps are of different "
                    "sizes (destination size is %" PRIu64 ", source size is %"
                    PRIu64 ") and can't be merged", dst_size,
                    src_s->img->total_size);
        return -EINVAL;
    }
    ret = qcow2_bitmap_load(s, dst, errp);
    if (ret >= 0) {
        ret = qcow2_bitmap_load(src_s, src, errp);
    }
    if (ret < 0 || dst == src) {
        return ret;
    }
    if (dst->granularity_bits != src->granularity_bits) {
        merge_runs(s, dst, src, dst_size);
        return 0;
    }
    words = DIV_ROUND_UP(dst->nb_bits, 64);
    for (w = 0; w < words; w++) {
        if (src->bits[w] & ~dst->bits[w]) {
            dst->bits[w] |= src->bits[w];
            mark_changed(s, dst, w);
        }
    }
    return 0;
}

int qcow2_bitmap_list(BDRVQcow2State *s, QGuardBitmapInfo **plist,
                      guint *count, GError **errp)
{
    GPtrArray *list = s->bm->list;
    QGuardBitmapInfo *info;
    guint i;

    if (directory_usable(s, errp) < 0) {
        return -EINVAL;
    }
    info = g_new0(QGuardBitmapInfo, MAX(list->len, 1));
    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        info[i].name = g_strdup(bm->name);
        info[i].granularity = 1U << bm->granularity_bits;
        info[i].in_use = bm->inconsistent;
        info[i].is_auto = bm->enabled;
    }
    *plist = info;
    *count = list->len;
    return 0;
}

/* Whether [offset, offset + *pnum) is dirty: the longest run from @offset. */
int qcow2_bitmap_status(BDRVQcow2State *s, const char *name, uint64_t offset,
                        uint64_t bytes, bool *dirty, uint64_t *pnum,
                        GError **errp)
{
    Qcow2Bitmap *bm;
    uint64_t k, end, next;
    int ret = lookup_loaded(s, name, &bm, errp);

    if (!bm) {
        return ret;
    }
    if (ret < 0) {
        return ret;
    }
    k = offset >> bm->granularity_bits;
    end = MIN(((offset + bytes - 1) >> bm->granularity_bits) + 1,
              bm->nb_bits);
    *dirty = get_bit(bm, k);
    next = next_different(bm, k, end, *dirty);
    *pnum = MIN(next << bm->granularity_bits, offset + bytes) - offset;
    return 0;
}

/* ---- Resize ------------------------------------------------------------- */

/*
 * Before the disk changes size: QEMU refuses while a bitmap is
 * inconsistent; every other bitmap is loaded and given room for @size, so
 * that nothing can fail after the resize.
 */
int qcow2_bitmaps_prepare_resize(BDRVQcow2State *s, uint64_t size,
                                 GError **errp)
{
    GPtrArray *list = s->bm->list;
    guint i;
    int ret;

    ret = directory_usable(s, errp);
    for (i = 0; ret >= 0 && i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        uint64_t nb_clusters;
        const char *why;
        uint64_t *bits, *changed;
        size_t old_len, new_len;

        ret = check_consistent(bm, errp);
        if (ret < 0) {
            break;
        }
        why = constraint_error(s, bm->name, size, bm->granularity_bits);
        if (why) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "Bitmap '%s' doesn't "
                        "satisfy the constraints: %s", bm->name, why);
            return -EINVAL;
        }
        ret = qcow2_bitmap_load(s, bm, errp);
        if (ret < 0) {
            break;
        }
        nb_clusters = qcow2_bitmap_nb_clusters(s, size, bm->granularity_bits);
        old_len = bm->bits_len;
        new_len = (size_t)nb_clusters * s->cluster_size;
        if (new_len <= old_len) {
            continue;
        }
        if (s->bm->loaded_bytes + (new_len - old_len) >
            QCOW2_BITMAPS_MAX_MEMORY) {
            g_set_error(errp, QGUARD_ERROR, ENOMEM, "Could not resize "
                        "bitmap '%s': %s", bm->name, g_strerror(ENOMEM));
            return -ENOMEM;
        }
        /* Growing: room now, zeroed; the sizes change after the resize. */
        bits = g_try_realloc(bm->bits, new_len);
        if (bits) {
            bm->bits = bits;
            memset((uint8_t *)bits + old_len, 0, new_len - old_len);
        }
        changed = g_try_realloc(bm->changed, DIV_ROUND_UP(nb_clusters, 64) *
                                sizeof(uint64_t));
        if (changed) {
            size_t old_words = DIV_ROUND_UP(bm->nb_clusters, 64);
            bm->changed = changed;
            memset(changed + old_words, 0,
                   (DIV_ROUND_UP(nb_clusters, 64) - old_words) *
                   sizeof(uint64_t));
        }
        if (!bits || !changed) {
            g_set_error(errp, QGUARD_ERROR, ENOMEM, "Could not resize "
                        "bitmap '%s': %s", bm->name, g_strerror(ENOMEM));
            return -ENOMEM;
        }
        s->bm->loaded_bytes += new_len - old_len;
        bm->bits_len = new_len;
    }
    if (ret >= 0 && list->len && !s->bm->resized) {
        /* Before the size on disk changes (docs/bitmaps.md, resize). */
        s->bm->resized = true;
        ret = qcow2_bitmaps_store(s, false);
        if (ret < 0) {
            s->bm->resized = false;
            g_set_error(errp, QGUARD_ERROR, -ret, "Can't update bitmap "
                        "directory: %s", g_strerror(-ret));
        }
    }
    return ret;
}

/*
 * After the disk changed size: granules past the old end are clean, those
 * past a new, smaller end are dropped (the partial granule at the end
 * stays), as QEMU's hbitmap_truncate() does.
 */
void qcow2_bitmaps_resized(BDRVQcow2State *s, uint64_t size)
{
    GPtrArray *list = s->bm->list;
    guint i;

    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        uint64_t nb_bits = qcow2_bitmap_nb_bits(size, bm->granularity_bits);

        if (!bm->bits) {
            continue;
        }
        if (nb_bits < bm->nb_bits) {
            clear_bits(s, bm, nb_bits, bm->nb_bits);
        }
        bm->nb_bits = nb_bits;
        bm->nb_clusters = qcow2_bitmap_nb_clusters(s, size,
                                                   bm->granularity_bits);
    }
}
