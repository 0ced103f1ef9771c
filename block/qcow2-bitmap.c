/* SPDX-License-Identifier: MIT */
/*
 * qcow2 persistent dirty bitmaps, the on-disk side: the directory is read
 * and checked at open, bitmaps are loaded when needed, enabled ones are
 * marked in_use before the first write, and everything is stored back at
 * close in an order that a crash cannot turn into a wrong bitmap.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * docs/bitmaps.md has the design; its invariants are referred to as I1..I6.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2-bitmap.h"

/* ---- Sizes -------------------------------------------------------------- */

uint32_t qcow2_bitmap_dir_entry_size(size_t name_len)
{
    return ROUND_UP(BME_HEADER_SIZE + name_len, 8);
}

uint64_t qcow2_bitmap_words_per_cluster(const BDRVQcow2State *s)
{
    return (uint64_t)s->cluster_size / 8;
}

uint64_t qcow2_bitmap_nb_bits(uint64_t size, int granularity_bits)
{
    return (size + (UINT64_C(1) << granularity_bits) - 1) >> granularity_bits;
}

uint64_t qcow2_bitmap_nb_clusters(const BDRVQcow2State *s, uint64_t size,
                                  int granularity_bits)
{
    uint64_t bytes = (qcow2_bitmap_nb_bits(size, granularity_bits) + 7) / 8;

    return size_to_clusters(s, bytes);
}

void qcow2_bitmap_free(Qcow2Bitmap *bm)
{
    if (bm) {
        g_free(bm->name);
        g_free(bm->table);
        g_free(bm->bits);
        g_free(bm->changed);
        g_free(bm);
    }
}

static void bitmap_free_func(gpointer p)
{
    qcow2_bitmap_free(p);
}

/* ---- The directory at open ---------------------------------------------- */

/* QEMU's check_dir_entry(), plus what the spec requires of a name. */
static bool dir_entry_valid(BDRVQcow2State *s, const uint8_t *e)
{
    uint64_t table_offset = be_get64(e);
    uint32_t table_size = be_get32(e + 8);
    uint32_t flags = be_get32(e + BME_OFF_FLAGS);
    uint8_t granularity_bits = e[17];
    uint16_t name_size = be_get16(e + 18);
    uint64_t phys;

    if (table_size == 0 || table_offset == 0 ||
        offset_into_cluster(s, table_offset) ||
        table_size > BME_MAX_TABLE_SIZE ||
        granularity_bits > BME_MAX_GRANULARITY_BITS ||
        granularity_bits < BME_MIN_GRANULARITY_BITS ||
        (flags & BME_RESERVED_FLAGS) || name_size == 0 ||
        name_size > BME_MAX_NAME_SIZE || e[16] != BME_TYPE_DIRTY_TRACKING) {
        return false;
    }
    /* Tables past 2^56 could never be written or protected. */
    if (table_offset >= QCOW2_MAX_HOST_OFFSET ||
        QCOW2_MAX_HOST_OFFSET - table_offset < (uint64_t)table_size * 8) {
        return false;
    }
    phys = (uint64_t)table_size * s->cluster_size;
    if (phys > BME_MAX_PHYS_SIZE) {
        return false;
    }
    /* A table too small for the disk is only allowed for a stale bitmap. */
    if (!(flags & BME_FLAG_IN_USE) &&
        s->img->total_size > ((phys * 8) << granularity_bits)) {
        return false;
    }
    return true;
}

Qcow2Bitmap *qcow2_bitmap_find(GPtrArray *list, const char *name)
{
    guint i;

    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        if (!strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

/* QEMU's bitmap_list_load(): the same checks, in its order. */
static int parse_directory(BDRVQcow2State *s, const uint8_t *dir,
                           uint64_t size, GPtrArray *list, GError **errp)
{
    uint64_t pos = 0;
    uint32_t n = 0;

    while (pos < size) {
        const uint8_t *e = dir + pos;
        uint16_t name_size;
        uint32_t extra, flags;
        uint64_t esize;
        Qcow2Bitmap *bm;

        if (pos + BME_HEADER_SIZE > size) {
            goto broken;
        }
        if (++n > s->nb_bitmaps) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "More bitmaps found than "
                        "specified in header extension");
            return -EINVAL;
        }
        name_size = be_get16(e + 18);
        extra = be_get32(e + 20);
        esize = ROUND_UP(BME_HEADER_SIZE + (uint64_t)extra + name_size, 8);
        if (esize > size - pos) {
            goto broken;
        }
        if (extra) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Bitmap extra data is not supported");
            return -EINVAL;
        }
        if (!dir_entry_valid(s, e)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "Bitmap '%.*s' doesn't "
                        "satisfy the constraints", (int)name_size,
                        (const char *)e + BME_HEADER_SIZE);
            return -EINVAL;
        }
        bm = g_new0(Qcow2Bitmap, 1);
        bm->name = g_strndup((const char *)e + BME_HEADER_SIZE, name_size);
        if (strlen(bm->name) != name_size ||
            qcow2_bitmap_find(list, bm->name)) {
            /* QEMU fails to create the second in-memory bitmap. */
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Bitmap already exists: %s", bm->name);
            qcow2_bitmap_free(bm);
            return -EINVAL;
        }
        flags = be_get32(e + BME_OFF_FLAGS);
        bm->table_offset = be_get64(e);
        bm->table_size = be_get32(e + 8);
        bm->disk_flags = flags;
        bm->granularity_bits = e[17];
        bm->enabled = flags & BME_FLAG_AUTO;
        bm->inconsistent = flags & BME_FLAG_IN_USE;
        g_ptr_array_add(list, bm);
        pos += esize;
    }
    if (n != s->nb_bitmaps) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Less bitmaps found than "
                    "specified in header extension");
        return -EINVAL;
    }
    return 0;

broken:
    g_set_error(errp, QGUARD_ERROR, EINVAL, "Broken bitmap directory");
    return -EINVAL;
}

static bool extension_valid(BDRVQcow2State *s)
{
    return s->has_bitmaps_ext &&
           (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS);
}

static int read_directory(BDRVQcow2State *s, GError **errp)
{
    Qcow2BitmapState *st = s->bm;
    uint64_t size = s->bitmap_directory_size;
    int ret;

    if (size == 0) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Requested bitmap directory size is zero");
        return -EINVAL;
    }
    st->disk_dir = g_try_malloc(size);
    if (!st->disk_dir) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Failed to allocate space for bitmap directory");
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, s->bitmap_directory_offset, st->disk_dir,
                          size);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Failed to read bitmap directory: %s", g_strerror(-ret));
        return ret;
    }
    st->disk_dir_size = size;
    return parse_directory(s, st->disk_dir, size, st->list, errp);
}

/*
 * Every open: read and check the directory.  A read-only open survives a
 * bad one (the data can still be read); the reason is kept for the bitmap
 * operations, which then fail with it.
 */
int qcow2_bitmaps_open(BDRVQcow2State *s, GError **errp)
{
    Qcow2BitmapState *st = g_new0(Qcow2BitmapState, 1);
    GError *err = NULL;
    int ret;

    st->list = g_ptr_array_new_with_free_func(bitmap_free_func);
    st->dropped = g_ptr_array_new_with_free_func(bitmap_free_func);
    s->bm = st;
    if (!extension_valid(s)) {
        return 0;
    }
    ret = read_directory(s, &err);
    if (ret < 0) {
        g_ptr_array_set_size(st->list, 0);
        g_free(st->disk_dir);
        st->disk_dir = NULL;
        st->disk_dir_size = 0;
        if (!s->img->read_only) {
            g_propagate_error(errp, err);
            return ret;
        }
        st->error = g_strdup(err->message);
        g_error_free(err);
    }
    return 0;
}

void qcow2_bitmaps_close(BDRVQcow2State *s)
{
    Qcow2BitmapState *st = s->bm;

    if (st) {
        g_ptr_array_free(st->list, TRUE);
        g_ptr_array_free(st->dropped, TRUE);
        g_free(st->disk_dir);
        g_free(st->error);
        g_free(st);
        s->bm = NULL;
    }
}

/* ---- Loading ------------------------------------------------------------ */

static int read_table(BDRVQcow2State *s, Qcow2Bitmap *bm, uint64_t **ptable)
{
    uint64_t *table = g_try_new(uint64_t, bm->table_size);
    uint32_t i;
    int ret;

    if (!table) {
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, bm->table_offset, table,
                          (size_t)bm->table_size * 8);
    if (ret < 0) {
        g_free(table);
        return ret;
    }
    for (i = 0; i < bm->table_size; i++) {
        uint64_t e = GUINT64_FROM_BE(table[i]);
        uint64_t off = e & BME_TABLE_ENTRY_OFFSET_MASK;

        table[i] = e;
        if ((e & BME_TABLE_ENTRY_RESERVED_MASK) ||
            (off && ((e & BME_TABLE_ENTRY_ALL_ONES) ||
                     offset_into_cluster(s, off)))) {
            g_free(table);
            return -EINVAL;
        }
    }
    *ptable = table;
    return 0;
}

/* Read the data clusters named by @bm->table into @bm->bits. */
static int read_bits(BDRVQcow2State *s, Qcow2Bitmap *bm)
{
    uint8_t *bytes = (uint8_t *)bm->bits;
    uint64_t words = bm->nb_clusters * qcow2_bitmap_words_per_cluster(s);
    uint32_t i = 0;
    uint64_t w;

    while (i < bm->nb_clusters) {
        uint64_t off = bm->table[i] & BME_TABLE_ENTRY_OFFSET_MASK;
        uint32_t run = 1;
        int ret;

        if (!off) {
            if (bm->table[i] & BME_TABLE_ENTRY_ALL_ONES) {
                memset(bytes + (size_t)i * s->cluster_size, 0xff,
                       s->cluster_size);
            }
            i++;
            continue;
        }
        /* Contiguous clusters are read with one call. */
        while (i + run < bm->nb_clusters &&
               (bm->table[i + run] & BME_TABLE_ENTRY_OFFSET_MASK) ==
               off + ((uint64_t)run << s->cluster_bits)) {
            run++;
        }
        ret = host_file_pread(s->file, off, bytes + (size_t)i *
                              s->cluster_size,
                              (size_t)run * s->cluster_size);
        if (ret < 0) {
            return ret;
        }
        i += run;
    }
#if G_BYTE_ORDER == G_BIG_ENDIAN
    for (w = 0; w < words; w++) {
        bm->bits[w] = GUINT64_FROM_LE(bm->bits[w]);
    }
#endif
    /*
     * The spec wants unused tail bits zero; do not trust that they are.
     * Words that are zero are not written: most of a big bitmap is never
     * touched, and stays unbacked by memory.
     */
    if (bm->nb_bits % 64) {
        bm->bits[bm->nb_bits / 64] &= ~(UINT64_MAX << (bm->nb_bits % 64));
    }
    for (w = DIV_ROUND_UP(bm->nb_bits, 64); w < words; w++) {
        if (bm->bits[w]) {
            bm->bits[w] = 0;
        }
    }
    return 0;
}

/*
 * Load the table and bits of a consistent bitmap (no-op when loaded),
 * with QEMU's messages.
 */
int qcow2_bitmap_load(BDRVQcow2State *s, Qcow2Bitmap *bm, GError **errp)
{
    uint64_t nb_clusters;
    int ret;

    if (bm->bits) {
        return 0;
    }
    g_assert(!bm->inconsistent && bm->table_offset);
    ret = read_table(s, bm, &bm->table);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret, "Could not read bitmap_table "
                    "table from image for bitmap '%s': %s", bm->name,
                    g_strerror(-ret));
        return ret;
    }
    nb_clusters = qcow2_bitmap_nb_clusters(s, s->img->total_size,
                                           bm->granularity_bits);
    ret = -EINVAL;
    if (nb_clusters == bm->table_size &&
        s->bm->loaded_bytes + nb_clusters * s->cluster_size >
        QCOW2_BITMAPS_MAX_MEMORY) {
        ret = -ENOMEM;
    } else if (nb_clusters == bm->table_size) {
        bm->nb_clusters = nb_clusters;
        bm->nb_bits = qcow2_bitmap_nb_bits(s->img->total_size,
                                           bm->granularity_bits);
        bm->bits = g_try_malloc0((size_t)nb_clusters * s->cluster_size);
        bm->changed = g_try_new0(uint64_t, DIV_ROUND_UP(nb_clusters, 64));
        ret = bm->bits && bm->changed ? read_bits(s, bm) : -ENOMEM;
    }
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not read bitmap '%s' from image: %s", bm->name,
                    g_strerror(-ret));
        g_clear_pointer(&bm->table, g_free);
        g_clear_pointer(&bm->bits, g_free);
        g_clear_pointer(&bm->changed, g_free);
        return ret;
    }
    bm->bits_len = nb_clusters * s->cluster_size;
    s->bm->loaded_bytes += bm->bits_len;
    return 0;
}

/* ---- Overlap protection ------------------------------------------------- */

/* The directory and every table of the state on disk (I5). */
static void map_bitmaps(BDRVQcow2State *s, bool enter)
{
    void (*fn)(BDRVQcow2State *, uint64_t, uint64_t, unsigned) =
        enter ? qcow2_map_enter : qcow2_map_remove;
    GPtrArray *lists[2];
    guint i, j;

    /* No bitmap state: a map built over tables alone (bench-check-cost). */
    if (!s->bm || !extension_valid(s)) {
        return;
    }
    lists[0] = s->bm->list;
    lists[1] = s->bm->dropped;
    fn(s, s->bitmap_directory_offset, s->bitmap_directory_size,
       QCOW2_OL_BITMAP_DIRECTORY);
    for (j = 0; j < 2; j++) {
        for (i = 0; i < lists[j]->len; i++) {
            Qcow2Bitmap *bm = g_ptr_array_index(lists[j], i);
            if (bm->table_offset) {
                fn(s, bm->table_offset, (uint64_t)bm->table_size * 8,
                   QCOW2_OL_BITMAP_DIRECTORY);
            }
        }
    }
}

void qcow2_bitmaps_map(BDRVQcow2State *s)
{
    map_bitmaps(s, true);
}

/* The linear algorithm's share: does the range hit a bitmap table? */
bool qcow2_bitmaps_overlap(BDRVQcow2State *s, uint64_t offset, uint64_t size)
{
    GPtrArray *lists[2];
    guint i, j;

    if (!s->bm || !extension_valid(s)) {
        return false;
    }
    lists[0] = s->bm->list;
    lists[1] = s->bm->dropped;
    for (j = 0; j < 2; j++) {
        for (i = 0; i < lists[j]->len; i++) {
            Qcow2Bitmap *bm = g_ptr_array_index(lists[j], i);
            uint64_t end = bm->table_offset + (uint64_t)bm->table_size * 8;
            if (bm->table_offset && offset < end &&
                bm->table_offset < offset + size) {
                return true;
            }
        }
    }
    return false;
}

/* ---- Listing (qemu-img info shows the directory on disk) ---------------- */

int qcow2_bitmaps_info(BDRVQcow2State *s, QGuardBitmapInfo **pinfo,
                       guint *count)
{
    Qcow2BitmapState *st = s->bm;
    GArray *list = g_array_new(FALSE, TRUE, sizeof(QGuardBitmapInfo));
    uint64_t pos = 0;

    while (st->disk_dir && pos < st->disk_dir_size) {
        const uint8_t *e = st->disk_dir + pos;
        uint16_t name_size = be_get16(e + 18);
        uint32_t flags = be_get32(e + BME_OFF_FLAGS);
        QGuardBitmapInfo info = {
            .name = g_strndup((const char *)e + BME_HEADER_SIZE, name_size),
            .granularity = 1U << e[17],
            .in_use = flags & BME_FLAG_IN_USE,
            .is_auto = flags & BME_FLAG_AUTO,
        };

        g_array_append_val(list, info);
        pos += qcow2_bitmap_dir_entry_size(name_size);
    }
    *count = list->len;
    *pinfo = (QGuardBitmapInfo *)g_array_free(list, FALSE);
    return 0;
}

/* ---- Storing ------------------------------------------------------------ */

typedef struct FreeRange {
    uint64_t offset;
    uint64_t bytes;
    Qcow2DiscardType type;
} FreeRange;

/* What a store is about to change for one bitmap. */
typedef struct Pending {
    bool new_table;
    uint64_t table_offset;
    uint32_t table_size;
    uint64_t *table;
} Pending;

typedef struct Store {
    Pending *pending;       /* one per list entry */
    GArray *allocated;      /* FreeRange: undone if the store fails */
    GArray *to_free;        /* FreeRange: freed after the switch (I6) */
} Store;

static void add_range(GArray *a, uint64_t offset, uint64_t bytes,
                      Qcow2DiscardType type)
{
    FreeRange r = { offset, bytes, type };

    g_array_append_val(a, r);
}

static bool test_bit(const uint64_t *map, uint64_t i)
{
    return map[i / 64] & (UINT64_C(1) << (i % 64));
}

static int64_t alloc_write(BDRVQcow2State *s, Store *st, const void *buf,
                           uint64_t bytes)
{
    int64_t off = qcow2_alloc_clusters_exact(s, size_to_clusters(s, bytes));
    int ret;

    if (off < 0) {
        return off;
    }
    add_range(st->allocated, off, bytes, QCOW2_DISCARD_NEVER);
    ret = qcow2_pwrite_meta(s, 0, off, buf, bytes);
    return ret < 0 ? ret : off;
}

/*
 * New data clusters for the changed parts of @bm (with @all, for every part
 * that is not zero, as QEMU writes a bitmap) and, if any entry changes, a
 * new table (I1): data clusters first, then the table, as QEMU allocates
 * them.
 */
static int store_bitmap(BDRVQcow2State *s, Qcow2Bitmap *bm, Pending *p,
                        Store *st, bool all)
{
    uint64_t wpc = qcow2_bitmap_words_per_cluster(s);
    g_autofree uint64_t *buf = g_malloc(s->cluster_size);
    uint32_t old_size = bm->table ? bm->table_size : 0;
    bool table_changed = all || bm->table_changed || !bm->table_offset ||
                         bm->nb_clusters != bm->table_size;
    uint32_t i;
    uint64_t w;

    p->table = g_try_new0(uint64_t, MAX(bm->nb_clusters, 1));
    if (!p->table) {
        return -ENOMEM;
    }
    for (i = 0; i < bm->nb_clusters; i++) {
        const uint64_t *words = bm->bits + (uint64_t)i * wpc;
        uint64_t old = i < old_size ? bm->table[i] : 0;
        bool zero = true;
        int64_t off;

        if (!all && i < old_size && !test_bit(bm->changed, i)) {
            p->table[i] = old;
            continue;
        }
        for (w = 0; w < wpc; w++) {
            buf[w] = GUINT64_TO_LE(words[w]);
            zero = zero && !words[w];
        }
        if (!zero) {
            off = alloc_write(s, st, buf, s->cluster_size);
            if (off < 0) {
                return off;
            }
            p->table[i] = off;
        }
        if (p->table[i] != old) {
            table_changed = true;
        }
    }
    if (!table_changed) {
        g_clear_pointer(&p->table, g_free);
        return 0;
    }
    for (i = 0; i < old_size; i++) {
        uint64_t off = bm->table[i] & BME_TABLE_ENTRY_OFFSET_MASK;
        if (off && (i >= bm->nb_clusters || p->table[i] != bm->table[i])) {
            add_range(st->to_free, off, s->cluster_size,
                      QCOW2_DISCARD_ALWAYS);
        }
    }
    if (bm->table_offset) {
        add_range(st->to_free, bm->table_offset,
                  (uint64_t)bm->table_size * 8, QCOW2_DISCARD_OTHER);
    }
    {
        g_autofree uint64_t *be = g_try_new(uint64_t, bm->nb_clusters);
        int64_t off;

        if (!be) {
            return -ENOMEM;
        }
        for (i = 0; i < bm->nb_clusters; i++) {
            be[i] = GUINT64_TO_BE(p->table[i]);
        }
        off = alloc_write(s, st, be, (uint64_t)bm->nb_clusters * 8);
        if (off < 0) {
            return off;
        }
        p->new_table = true;
        p->table_offset = off;
        p->table_size = bm->nb_clusters;
    }
    return 0;
}

/*
 * The flags a bitmap gets on disk now (I2, I3).  After a resize every
 * bitmap is in_use until the close: a table sized for the old disk does
 * not satisfy the constraints of the new one.
 */
static uint32_t stored_flags(BDRVQcow2State *s, const Qcow2Bitmap *bm,
                             bool closing)
{
    uint32_t flags = bm->enabled ? BME_FLAG_AUTO : 0;

    if (bm->inconsistent) {
        return bm->disk_flags;
    }
    if (!closing && (bm->enabled || s->bm->resized)) {
        flags |= BME_FLAG_IN_USE;
    }
    return flags;
}

static uint8_t *build_directory(BDRVQcow2State *s, const Store *st,
                                bool closing, uint64_t *psize)
{
    GPtrArray *list = s->bm->list;
    uint64_t size = 0, pos = 0;
    uint8_t *dir;
    guint i;

    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        size += qcow2_bitmap_dir_entry_size(strlen(bm->name));
    }
    dir = g_malloc0(MAX(size, 1));
    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);
        const Pending *p = &st->pending[i];
        size_t len = strlen(bm->name);
        uint8_t *e = dir + pos;

        be_put64(e, p->new_table ? p->table_offset : bm->table_offset);
        be_put32(e + 8, p->new_table ? p->table_size : bm->table_size);
        be_put32(e + BME_OFF_FLAGS, stored_flags(s, bm, closing));
        e[16] = BME_TYPE_DIRTY_TRACKING;
        e[17] = bm->granularity_bits;
        be_put16(e + 18, len);
        memcpy(e + BME_HEADER_SIZE, bm->name, len);
        pos += qcow2_bitmap_dir_entry_size(len);
    }
    *psize = size;
    return dir;
}

/* Equal apart from flags words: the directory may be rewritten in place. */
static bool same_layout(const uint8_t *a, const uint8_t *b, uint64_t size)
{
    uint64_t pos = 0;

    while (pos < size) {
        uint16_t name_size = be_get16(a + pos + 18);
        uint32_t esize = qcow2_bitmap_dir_entry_size(name_size);

        if (memcmp(a + pos, b + pos, BME_OFF_FLAGS) ||
            memcmp(a + pos + BME_OFF_FLAGS + 4, b + pos + BME_OFF_FLAGS + 4,
                   esize - BME_OFF_FLAGS - 4)) {
            return false;
        }
        pos += esize;
    }
    return true;
}

/*
 * Everything a removed bitmap owns, freed once the switch is on disk.  A
 * damaged table only costs leaked data clusters, as in QEMU; a table that
 * cannot be read fails the store.
 */
static int free_dropped(BDRVQcow2State *s, Qcow2Bitmap *bm, Store *st)
{
    g_autofree uint64_t *table = NULL;
    const uint64_t *t = bm->table;
    uint32_t i;

    if (!bm->table_offset) {
        return 0;
    }
    if (!t) {
        int ret = read_table(s, bm, &table);
        if (ret < 0 && ret != -EINVAL) {
            return ret;
        }
        t = table;
    }
    for (i = 0; t && i < bm->table_size; i++) {
        uint64_t off = t[i] & BME_TABLE_ENTRY_OFFSET_MASK;
        if (off) {
            add_range(st->to_free, off, s->cluster_size,
                      QCOW2_DISCARD_ALWAYS);
        }
    }
    add_range(st->to_free, bm->table_offset, (uint64_t)bm->table_size * 8,
              QCOW2_DISCARD_OTHER);
    return 0;
}

#define HDR_OFF_AUTOCLEAR 88

static int write_autoclear(BDRVQcow2State *s, uint64_t features)
{
    uint8_t buf[8];
    int ret;

    be_put64(buf, features);
    ret = qcow2_commit_header_field(s, HDR_OFF_AUTOCLEAR, buf, 8);
    if (ret >= 0) {
        s->autoclear_features = features;
    }
    return ret;
}

/*
 * The header switch (step 5 of the store).  The extension's 24 bytes are
 * rewritten alone when they lie in one sector; otherwise the autoclear bit
 * is dropped around the change, so that a torn header can only lose the
 * bitmaps, never name a half-written directory.
 */
static int switch_header(BDRVQcow2State *s, uint32_t nb, uint64_t offset,
                         uint64_t size)
{
    uint64_t bit = QCOW2_AUTOCLEAR_BITMAPS;
    uint32_t ext_off = s->bitmaps_ext_offset;
    uint8_t ext[24];
    int ret;

    be_put32(ext, nb);
    be_put32(ext + 4, 0);
    be_put64(ext + 8, size);
    be_put64(ext + 16, offset);
    if (nb && extension_valid(s) && ext_off &&
        ext_off / 512 == (ext_off + 23) / 512) {
        ret = qcow2_commit_header_field(s, ext_off, ext, 24);
        goto out;
    }
    if (s->autoclear_features & bit) {
        ret = write_autoclear(s, s->autoclear_features & ~bit);
        if (ret < 0) {
            return ret;
        }
    }
    if (nb && s->has_bitmaps_ext && ext_off) {
        ret = qcow2_pwrite_meta(s, QCOW2_OL_MAIN_HEADER, ext_off, ext, 24);
        if (ret >= 0) {
            ret = host_file_flush(s->file);
        }
    } else {
        s->has_bitmaps_ext = nb != 0;
        s->nb_bitmaps = nb;
        s->bitmap_directory_size = size;
        s->bitmap_directory_offset = offset;
        ret = qcow2_update_header(s);
    }
    if (ret < 0) {
        qcow2_switch_failed(s, ret);
        return ret;
    }
    if (nb) {
        ret = write_autoclear(s, s->autoclear_features | bit);
    }
out:
    if (ret >= 0) {
        s->has_bitmaps_ext = nb != 0;
        s->nb_bitmaps = nb;
        s->bitmap_directory_size = size;
        s->bitmap_directory_offset = offset;
    }
    return ret;
}

static void store_cleanup(Store *st, guint n)
{
    guint i;

    for (i = 0; i < n; i++) {
        g_free(st->pending[i].table);
    }
    g_free(st->pending);
    g_array_free(st->allocated, TRUE);
    g_array_free(st->to_free, TRUE);
}

static void free_ranges(BDRVQcow2State *s, GArray *ranges, int *pret)
{
    guint i;

    for (i = 0; i < ranges->len; i++) {
        FreeRange *r = &g_array_index(ranges, FreeRange, i);
        int ret = qcow2_free_clusters(s, r->offset, r->bytes, r->type);
        if (ret < 0 && *pret >= 0) {
            *pret = ret;
        }
    }
}

/* After the switch: the in-memory state becomes the state on disk. */
static void commit_store(BDRVQcow2State *s, Store *st, uint8_t *dir,
                         uint64_t dir_size, bool closing)
{
    Qcow2BitmapState *bst = s->bm;
    guint i;

    for (i = 0; i < bst->list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(bst->list, i);
        Pending *p = &st->pending[i];

        if (p->new_table) {
            g_free(bm->table);
            bm->table = g_steal_pointer(&p->table);
            bm->table_offset = p->table_offset;
            bm->table_size = p->table_size;
        }
        if (bm->changed) {
            memset(bm->changed, 0,
                   DIV_ROUND_UP(bm->nb_clusters, 64) * sizeof(uint64_t));
        }
        bm->table_changed = false;
        bm->disk_flags = stored_flags(s, bm, closing);
    }
    g_ptr_array_set_size(bst->dropped, 0);
    g_free(bst->disk_dir);
    bst->disk_dir = dir;
    bst->disk_dir_size = dir_size;
}

/*
 * Bring the bitmaps on disk up to date with memory (docs/bitmaps.md, "The
 * store").  @closing: the last store of a read-write session, which clears
 * in_use; otherwise enabled bitmaps are stored in_use.
 */
int qcow2_bitmaps_store(BDRVQcow2State *s, bool closing)
{
    Qcow2BitmapState *bst = s->bm;
    GPtrArray *list = bst->list;
    g_autofree uint8_t *dir = NULL;
    uint64_t dir_size, old_dir = s->bitmap_directory_offset;
    uint64_t old_dir_size = s->bitmap_directory_size;
    bool new_tables = false;
    int64_t dir_offset;
    Store st;
    guint i;
    int ret = 0;

    if (!bst || !bst->read_write || bdrv_is_broken(s->img)) {
        return 0;
    }
    st.pending = g_new0(Pending, MAX(list->len, 1));
    st.allocated = g_array_new(FALSE, FALSE, sizeof(FreeRange));
    st.to_free = g_array_new(FALSE, FALSE, sizeof(FreeRange));

    for (i = 0; i < list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(list, i);

        if (closing && !bm->inconsistent && !bm->bits) {
            /*
             * QEMU writes every bitmap it loaded anew when it closes the
             * image; one that cannot be read here keeps its place.
             */
            g_autoptr(GError) ignored = NULL;
            (void)qcow2_bitmap_load(s, bm, &ignored);
        }
        if (bm->bits && !bm->inconsistent) {
            ret = store_bitmap(s, bm, &st.pending[i], &st, closing);
            if (ret < 0) {
                qcow2_set_error(s, "Failed to write bitmap '%s' to file: %s",
                                bm->name, g_strerror(-ret));
                goto fail;
            }
            new_tables |= st.pending[i].new_table;
        }
    }
    dir = build_directory(s, &st, closing, &dir_size);

    if (!new_tables && !bst->dropped->len && dir_size == bst->disk_dir_size &&
        (!dir_size || same_layout(dir, bst->disk_dir, dir_size))) {
        /* Only flags words change, each within one sector (I1). */
        if (dir_size && memcmp(dir, bst->disk_dir, dir_size)) {
            ret = qcow2_pwrite_meta(s, QCOW2_OL_BITMAP_DIRECTORY, old_dir,
                                    dir, dir_size);
            if (ret >= 0) {
                ret = host_file_flush(s->file);
            }
            if (ret < 0) {
                qcow2_set_error(s, "Can't update bitmap directory: %s",
                                g_strerror(-ret));
                goto fail;
            }
        }
        commit_store(s, &st, g_steal_pointer(&dir), dir_size, closing);
        store_cleanup(&st, list->len);
        return 0;
    }

    for (i = 0; i < bst->dropped->len; i++) {
        ret = free_dropped(s, g_ptr_array_index(bst->dropped, i), &st);
        if (ret < 0) {
            qcow2_set_error(s, "Failed to update bitmap extension: %s",
                            g_strerror(-ret));
            goto fail;
        }
    }
    if (old_dir_size && extension_valid(s)) {
        add_range(st.to_free, old_dir, old_dir_size, QCOW2_DISCARD_OTHER);
    }
    dir_offset = 0;
    if (dir_size) {
        dir_offset = alloc_write(s, &st, dir, dir_size);
        if (dir_offset < 0) {
            ret = dir_offset;
            qcow2_set_error(s, "Failed to update bitmap extension: %s",
                            g_strerror(-ret));
            goto fail;
        }
    }
    /* New clusters, their refcounts and content before anything names them. */
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        qcow2_set_error(s, "Failed to update bitmap extension: %s",
                        g_strerror(-ret));
        goto fail;
    }
    map_bitmaps(s, false);
    ret = switch_header(s, list->len, dir_offset, dir_size);
    if (ret < 0) {
        /* Either state may be on disk: keep both allocated. */
        qcow2_set_error(s, "Failed to update bitmap extension: %s",
                        g_strerror(-ret));
        store_cleanup(&st, list->len);
        return ret;
    }
    commit_store(s, &st, g_steal_pointer(&dir), dir_size, closing);
    map_bitmaps(s, true);
    free_ranges(s, st.to_free, &ret);
    store_cleanup(&st, list->len);
    return ret;

fail:
    /* Nothing names the new clusters yet. */
    {
        int ignored = 0;
        free_ranges(s, st.allocated, &ignored);
    }
    store_cleanup(&st, list->len);
    return ret;
}

/*
 * Read-write open: drop a stale extension as QEMU does, load the enabled
 * bitmaps and mark them in_use before the first write (I2).
 */
int qcow2_bitmaps_open_rw(BDRVQcow2State *s, GError **errp)
{
    Qcow2BitmapState *st = s->bm;
    guint i;
    int ret;

    if (s->has_bitmaps_ext && !extension_valid(s)) {
        /* Written by a program without bitmap support: nothing is valid. */
        s->has_bitmaps_ext = false;
        s->nb_bitmaps = 0;
        s->bitmap_directory_offset = 0;
        s->bitmap_directory_size = 0;
        ret = qcow2_update_header(s);
        if (ret < 0) {
            g_set_error(errp, QGUARD_ERROR, -ret,
                        "Could not update qcow2 header: %s", g_strerror(-ret));
            return ret;
        }
    }
    for (i = 0; i < st->list->len; i++) {
        Qcow2Bitmap *bm = g_ptr_array_index(st->list, i);

        if (bm->enabled && !bm->inconsistent) {
            ret = qcow2_bitmap_load(s, bm, errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    st->read_write = true;
    ret = qcow2_bitmaps_store(s, false);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Can't update bitmap directory: %s", g_strerror(-ret));
    }
    return ret;
}
