/* SPDX-License-Identifier: MIT */
/*
 * qcow2 persistent dirty bitmaps: kept, listed and protected, not tracked.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * qguard does not update dirty bitmaps.  A bitmap with the "auto" flag must
 * reflect every write, so before the first write of a read-write open such
 * bitmaps get the "in_use" flag, which tells QEMU they may be inconsistent
 * (it then refuses to use them for incremental backups rather than miss
 * changes).  Bitmaps without "auto" stay valid: nothing requires them to
 * follow writes.  The directory and tables stay allocated and are counted
 * by check, and the directory is protected by the overlap map.
 */
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"

#define BME_FLAG_IN_USE (1U << 0)
#define BME_FLAG_AUTO   (1U << 1)
#define BME_HEADER_SIZE 24

static bool bitmaps_valid(BDRVQcow2State *s)
{
    return s->has_bitmaps_ext &&
           (s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) &&
           s->nb_bitmaps && s->bitmap_directory_size;
}

static int read_directory(BDRVQcow2State *s, uint8_t **pdir)
{
    uint8_t *dir = g_try_malloc(s->bitmap_directory_size);
    int ret;

    if (!dir) {
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, s->bitmap_directory_offset, dir,
                          s->bitmap_directory_size);
    if (ret < 0) {
        g_free(dir);
        return ret;
    }
    *pdir = dir;
    return 0;
}

/*
 * Walk the directory; @fn sees each entry.  Returns -EINVAL if an entry
 * runs past the directory, which is then not trusted.
 */
static int for_each_entry(BDRVQcow2State *s, uint8_t *dir,
                          void (*fn)(uint8_t *entry, void *opaque),
                          void *opaque)
{
    uint64_t pos = 0;
    uint32_t i;

    for (i = 0; i < s->nb_bitmaps; i++) {
        uint32_t extra;
        uint16_t name_size;
        uint64_t size;

        if (pos + BME_HEADER_SIZE > s->bitmap_directory_size) {
            return -EINVAL;
        }
        name_size = be_get16(dir + pos + 18);
        extra = be_get32(dir + pos + 20);
        size = ROUND_UP(BME_HEADER_SIZE + (uint64_t)extra + name_size, 8);
        if (name_size == 0 || pos + size > s->bitmap_directory_size) {
            return -EINVAL;
        }
        fn(dir + pos, opaque);
        pos += size;
    }
    return 0;
}

static void collect_info(uint8_t *entry, void *opaque)
{
    GArray *list = opaque;
    uint32_t flags = be_get32(entry + 12);
    uint16_t name_size = be_get16(entry + 18);
    uint32_t extra = be_get32(entry + 20);
    QGuardBitmapInfo info = {
        .name = g_strndup((const char *)entry + BME_HEADER_SIZE + extra,
                          name_size),
        .granularity = entry[17] < 32 ? 1U << entry[17] : 0,
        .in_use = flags & BME_FLAG_IN_USE,
        .is_auto = flags & BME_FLAG_AUTO,
    };

    g_array_append_val(list, info);
}

int qcow2_bitmaps_info(BDRVQcow2State *s, QGuardBitmapInfo **pinfo,
                       guint *count)
{
    g_autofree uint8_t *dir = NULL;
    GArray *list;
    int ret;

    *pinfo = NULL;
    *count = 0;
    if (!bitmaps_valid(s)) {
        return 0;
    }
    ret = read_directory(s, &dir);
    if (ret < 0) {
        return ret;
    }
    list = g_array_new(FALSE, TRUE, sizeof(QGuardBitmapInfo));
    ret = for_each_entry(s, dir, collect_info, list);
    *count = list->len;
    *pinfo = (QGuardBitmapInfo *)g_array_free(list, FALSE);
    return ret;
}

static void set_in_use(uint8_t *entry, void *opaque)
{
    uint32_t flags = be_get32(entry + 12);
    bool *changed = opaque;

    if ((flags & BME_FLAG_AUTO) && !(flags & BME_FLAG_IN_USE)) {
        be_put32(entry + 12, flags | BME_FLAG_IN_USE);
        *changed = true;
    }
}

int qcow2_bitmaps_mark_in_use(BDRVQcow2State *s, GError **errp)
{
    g_autofree uint8_t *dir = NULL;
    bool changed = false;
    int ret;

    if (!bitmaps_valid(s)) {
        return 0;
    }
    ret = read_directory(s, &dir);
    if (ret >= 0) {
        ret = for_each_entry(s, dir, set_in_use, &changed);
    }
    if (ret == -EINVAL) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Bitmap directory is corrupted; cannot open the image "
                    "read/write without losing track of its bitmaps");
        return ret;
    }
    if (ret >= 0 && changed) {
        ret = qcow2_pwrite_meta(s, QCOW2_OL_BITMAP_DIRECTORY,
                                s->bitmap_directory_offset, dir,
                                s->bitmap_directory_size);
        if (ret >= 0) {
            ret = host_file_flush(s->file);
        }
    }
    if (ret < 0 && errp && !*errp) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not mark dirty bitmaps in use: %s",
                    g_strerror(-ret));
    }
    return ret;
}
