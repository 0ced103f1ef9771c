/* SPDX-License-Identifier: MIT */
/*
 * qemu-img convert: copy images into a new or existing target.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "img.h"

/* qemu-img's copy buffer and its limits, in bytes. */
#define MAX_BUF_BYTES       (16 * 1024 * 1024)
#define MAX_COROUTINES      16

#define DIV_ROUND_UP(n, d)  (((n) + (d) - 1) / (d))
#define ROUND_UP(n, d)      (DIV_ROUND_UP(n, d) * (d))

typedef enum BlockKind {
    BLK_ZERO,
    BLK_DATA,
    BLK_BACKING_FILE,   /* the target's backing file provides it */
} BlockKind;

typedef struct ConvertState {
    QGuardImage **src;
    uint64_t *src_size;         /* bytes */
    uint64_t *src_sectors;
    uint64_t *src_align;        /* sectors */
    int src_num;
    uint64_t total_sectors;
    QGuardImage *target;
    bool has_zero_init;
    bool target_is_zero;        /* --target-is-zero */
    RateLimit rate;             /* -r: the data written */
    /*
     * With a backing file for the target, only what the top layer of each
     * source allocates is copied; the rest is left to the backing file,
     * which covers target_backing_sectors (-1: unknown).
     */
    bool target_has_backing;
    int64_t target_backing_sectors;
    bool copy_range;            /* -C: data copied as is, zeros too */
    bool salvage;               /* --salvage: unreadable sectors as zeros */
    uint64_t min_sparse;        /* sectors, 0: write everything */
    uint64_t alignment;         /* sectors, zero detection granularity */
    uint64_t buf_sectors;
    uint8_t *buf;
    /* -c: whole target clusters, each written compressed */
    bool compressed;
    uint64_t cluster_sectors;
    Progress *progress;
    uint64_t allocated_sectors;
    uint64_t allocated_done;
    /* Cached status of the source area starting at the current sector. */
    BlockKind status;
    uint64_t sector_next_status;
} ConvertState;

/* Which source holds @sector, and where that source starts. */
static void convert_select_part(const ConvertState *s, uint64_t sector,
                                int *src_cur, uint64_t *src_cur_offset)
{
    uint64_t start = 0;
    int i;

    for (i = 0; i < s->src_num - 1; i++) {
        if (sector < start + s->src_sectors[i]) {
            break;
        }
        start += s->src_sectors[i];
    }
    *src_cur = i;
    *src_cur_offset = start;
}

/*
 * How many sectors from @sector_num on have the same kind, bounded as
 * qemu-img bounds them (source alignment, copy buffer), so that progress
 * figures advance in the same steps.  Returns < 0 on error.
 */
static int64_t convert_iteration_sectors(ConvertState *s,
                                         uint64_t sector_num)
{
    uint64_t src_cur_offset, n;
    bool post_backing_zero = false;
    int src_cur;

    convert_select_part(s, sector_num, &src_cur, &src_cur_offset);
    n = MIN(s->total_sectors - sector_num, REQUEST_MAX_BYTES / SECTOR_SIZE);
    /* Past the end of the target's backing file, zeros need no write. */
    if (s->target_backing_sectors >= 0) {
        if (sector_num >= (uint64_t)s->target_backing_sectors) {
            post_backing_zero = true;
        } else if (sector_num + n > (uint64_t)s->target_backing_sectors) {
            n = s->target_backing_sectors - sector_num;
        }
    }
    n = MIN(n, src_cur_offset + s->src_sectors[src_cur] - sector_num);

    if (s->sector_next_status <= sector_num) {
        uint64_t offset = (sector_num - src_cur_offset) * SECTOR_SIZE;
        uint64_t size = s->src_size[src_cur];
        unsigned flags = QGUARD_BLOCK_ZERO;
        bool below = false;
        uint64_t count, tail;

        if (offset < size) {
            g_autoptr(GError) err = NULL;
            QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
            int ret;

            count = MIN(n * SECTOR_SIZE, size - offset);
            ret = qguard_image_block_status(s->src[src_cur], offset, count,
                                            &st, &err);
            if (ret < 0 && s->salvage) {
                /* Read it and see: sector by sector if need be. */
                warn_report("error while reading block status at offset "
                            "%" PRIu64 ": %s", offset, g_strerror(-ret));
                ret = 0;
                st.flags = QGUARD_BLOCK_DATA;
                st.bytes = MIN(count, SECTOR_SIZE);
                st.depth = 0;
            }
            if (ret < 0) {
                error_report("error while reading block status at offset "
                             "%" PRIu64 ": %s", offset, gerr_msg(err, ret));
                return ret;
            }
            flags = st.flags;
            /* Above the source's backing file is only its top layer. */
            below = st.depth > 0;
            n = DIV_ROUND_UP(st.bytes, SECTOR_SIZE);
            /* The partial sector at the end of a source is copied whole. */
            if (offset + st.bytes == size) {
                n = src_cur_offset + s->src_sectors[src_cur] - sector_num;
            }
        }

        /* Keep the next status query aligned to the source's clusters. */
        tail = (sector_num - src_cur_offset + n) % s->src_align[src_cur];
        if (n > tail) {
            n -= tail;
        }
        if (s->target_has_backing && below) {
            s->status = BLK_BACKING_FILE;
        } else if (flags & QGUARD_BLOCK_ZERO) {
            s->status = post_backing_zero ? BLK_BACKING_FILE : BLK_ZERO;
        } else {
            /* Data, or unallocated without a backing file that knows. */
            s->status = BLK_DATA;
        }
        s->sector_next_status = sector_num + n;
    }

    n = MIN(n, s->sector_next_status - sector_num);
    if (s->status == BLK_DATA || (!s->min_sparse && s->status == BLK_ZERO)) {
        n = MIN(n, s->buf_sectors);
    }
    /*
     * Compressed clusters are written whole: a cluster only partly zero
     * (or unallocated) in the source is copied as data.
     */
    if (s->compressed) {
        if (n < s->cluster_sectors) {
            n = MIN(s->cluster_sectors, s->total_sectors - sector_num);
            s->status = BLK_DATA;
        } else {
            n -= n % s->cluster_sectors;
        }
    }
    return n;
}

/*
 * --salvage: read a failed range again sector by sector; what still
 * cannot be read is copied as zeros, with a warning for each sector.
 */
static int convert_salvage_read(ConvertState *s, int src_cur,
                                uint64_t offset, uint64_t bytes,
                                uint8_t *buf)
{
    uint64_t done;

    for (done = 0; done < bytes; done += SECTOR_SIZE) {
        g_autoptr(GError) err = NULL;
        uint64_t len = MIN(SECTOR_SIZE, bytes - done);
        int ret = qguard_image_pread(s->src[src_cur], offset + done, len,
                                     buf + done, &err);

        if (ret < 0) {
            warn_report("error while reading offset %" PRIu64 ": %s",
                        offset + done, g_strerror(-ret));
            memset(buf + done, 0, len);
        }
    }
    return 0;
}

static int convert_read(ConvertState *s, uint64_t sector_num, uint64_t n)
{
    uint8_t *buf = s->buf;

    while (n > 0) {
        g_autoptr(GError) err = NULL;
        uint64_t src_cur_offset, offset, size, chunk, avail;
        int src_cur, ret;

        convert_select_part(s, sector_num, &src_cur, &src_cur_offset);
        chunk = MIN(n, src_cur_offset + s->src_sectors[src_cur] - sector_num);
        offset = (sector_num - src_cur_offset) * SECTOR_SIZE;
        size = s->src_size[src_cur];
        avail = offset < size ? MIN(chunk * SECTOR_SIZE, size - offset) : 0;
        if (avail) {
            ret = qguard_image_pread(s->src[src_cur], offset, avail, buf,
                                     &err);
            if (ret < 0 && s->salvage) {
                ret = convert_salvage_read(s, src_cur, offset, avail, buf);
            }
            if (ret < 0) {
                /* qemu-img's words: the errno only. */
                error_report("error while reading at byte %" PRIu64 ": %s",
                             sector_num * SECTOR_SIZE, g_strerror(-ret));
                return ret;
            }
        }
        memset(buf + avail, 0, chunk * SECTOR_SIZE - avail);
        buf += chunk * SECTOR_SIZE;
        sector_num += chunk;
        n -= chunk;
    }
    return 0;
}

static bool sectors_are_zero(const uint8_t *buf, uint64_t n)
{
    uint64_t i;

    for (i = 0; i < n * SECTOR_SIZE; i++) {
        if (buf[i]) {
            return false;
        }
    }
    return true;
}

static int convert_write_zeroes(ConvertState *s, uint64_t sector_num,
                                uint64_t n)
{
    g_autoptr(GError) err = NULL;
    int ret;

    if (s->has_zero_init || !n) {
        return 0;
    }
    ret = qguard_image_pwrite_zeroes(s->target, sector_num * SECTOR_SIZE,
                                     n * SECTOR_SIZE, QGUARD_ZERO_MAY_UNMAP,
                                     &err);
    if (ret < 0) {
        error_report("error while writing at byte %" PRIu64 ": %s",
                     sector_num * SECTOR_SIZE, gerr_msg(err, ret));
    }
    return ret;
}

static int convert_write_data(ConvertState *s, uint64_t sector_num,
                              uint64_t n, const uint8_t *buf)
{
    g_autoptr(GError) err = NULL;
    uint64_t bytes = n * SECTOR_SIZE;
    uint64_t size = qguard_image_size(s->target);
    uint64_t offset = sector_num * SECTOR_SIZE;
    int ret;

    if (!n) {
        return 0;
    }
    /* A target whose size is not a sector multiple ends mid-sector. */
    if (offset + bytes > size) {
        bytes = offset < size ? size - offset : 0;
    }
    rate_limit_wait(&s->rate);
    ret = qguard_image_pwrite(s->target, offset, bytes, buf, 0, &err);
    s->rate.bytes += bytes;
    if (ret < 0) {
        error_report("error while writing at byte %" PRIu64 ": %s",
                     offset, gerr_msg(err, ret));
    }
    return ret;
}

/*
 * Whether the first sector of @buf holds data, with in *pnum how many
 * sectors from it are alike, as qemu-img decides it: a run that does not
 * reach the end of the buffer ends on an @alignment boundary, a data run
 * rounded up and a zero run down, and a zero run that does not reach the
 * boundary past its start counts as data (the data after it rewrites
 * that block anyway).
 */
static bool sectors_hold_data(const uint8_t *buf, uint64_t n, uint64_t *pnum,
                              uint64_t sector_num, uint64_t alignment)
{
    bool zero = sectors_are_zero(buf, 1);
    uint64_t i = 1, tail;

    while (i < n && sectors_are_zero(buf + i * SECTOR_SIZE, 1) == zero) {
        i++;
    }
    tail = i < n ? (sector_num + i) & (alignment - 1) : 0;
    if (tail) {
        if (zero && i <= tail) {
            zero = false;
        }
        i = zero ? i - tail : MIN(i + alignment - tail, n);
    }
    *pnum = i;
    return !zero;
}

/*
 * The same, but a data run also takes the zero runs shorter than
 * min_sparse that data follows, so small holes do not split a write.
 */
static bool sectors_hold_data_min(const ConvertState *s, const uint8_t *buf,
                                  uint64_t n, uint64_t *pnum,
                                  uint64_t sector_num)
{
    uint64_t min = MIN(s->min_sparse, n), used, checked, k;

    if (!sectors_hold_data(buf, n, pnum, sector_num, s->alignment)) {
        return false;
    }
    used = checked = *pnum;
    while (checked < n) {
        bool data = sectors_hold_data(buf + checked * SECTOR_SIZE,
                                      n - checked, &k, sector_num + checked,
                                      s->alignment);

        checked += k;
        if (data) {
            used = checked;
        } else if (k >= min) {
            break;
        }
    }
    *pnum = used;
    return true;
}

/*
 * Write a buffer of source data as qemu-img does, piece by piece: data
 * with the short holes inside it, and zeros (left out of a fresh target)
 * where the rest begins with a hole of min_sparse sectors, or ends the
 * buffer.
 */
static int convert_write_sparse(ConvertState *s, uint64_t sector_num,
                                uint64_t n)
{
    const uint8_t *buf = s->buf;
    int ret = 0;

    while (n > 0 && ret >= 0) {
        uint64_t k;

        if (sectors_hold_data_min(s, buf, n, &k, sector_num)) {
            ret = convert_write_data(s, sector_num, k, buf);
        } else {
            ret = convert_write_zeroes(s, sector_num, k);
        }
        sector_num += k;
        n -= k;
        buf += k * SECTOR_SIZE;
    }
    return ret;
}

/*
 * One cluster, compressed with the target's compression type.  A zero
 * cluster of a fresh target is left unallocated, as qemu-img does.
 */
static int convert_write_compressed(ConvertState *s, uint64_t sector_num,
                                    uint64_t n)
{
    g_autoptr(GError) err = NULL;
    uint64_t offset = sector_num * SECTOR_SIZE;
    uint64_t bytes = MIN(n * SECTOR_SIZE,
                         qguard_image_size(s->target) - offset);
    int ret;

    if (s->has_zero_init && s->min_sparse && sectors_are_zero(s->buf, n)) {
        return 0;
    }
    rate_limit_wait(&s->rate);
    ret = qguard_image_pwrite_compressed(s->target, offset, bytes, s->buf,
                                         &err);
    s->rate.bytes += bytes;
    if (ret < 0) {
        /* qemu-img names the errno only, as for any write. */
        error_report("error while writing at byte %" PRIu64 ": %s",
                     offset, g_strerror(-ret));
    }
    return ret;
}

static int convert_do_copy(ConvertState *s)
{
    uint64_t sector_num;
    int64_t n;
    int ret;

    /* A first pass counts the sectors to copy, for the progress meter. */
    s->allocated_sectors = 0;
    s->sector_next_status = 0;
    for (sector_num = 0; sector_num < s->total_sectors; sector_num += n) {
        n = convert_iteration_sectors(s, sector_num);
        if (n < 0) {
            return n;
        }
        if (s->status == BLK_DATA ||
            (!s->min_sparse && s->status == BLK_ZERO)) {
            s->allocated_sectors += n;
        }
    }

    s->sector_next_status = 0;
    for (sector_num = 0; sector_num < s->total_sectors; sector_num += n) {
        BlockKind status;

        n = convert_iteration_sectors(s, sector_num);
        if (n < 0) {
            return n;
        }
        status = s->status;
        if (status == BLK_DATA) {
            ret = convert_read(s, sector_num, n);
            if (ret < 0) {
                return ret;
            }
            ret = s->compressed ? convert_write_compressed(s, sector_num, n)
                  : s->min_sparse && !s->copy_range
                  ? convert_write_sparse(s, sector_num, n)
                  : convert_write_data(s, sector_num, n, s->buf);
        } else if (status == BLK_BACKING_FILE) {
            ret = 0;
        } else if (!s->min_sparse) {
            /* -S 0: zeros are written as data, compressed with -c. */
            memset(s->buf, 0, n * SECTOR_SIZE);
            ret = s->compressed ? convert_write_compressed(s, sector_num, n)
                                : convert_write_data(s, sector_num, n, s->buf);
        } else {
            ret = convert_write_zeroes(s, sector_num, n);
        }
        if (ret < 0) {
            return ret;
        }
        if ((status == BLK_DATA || (!s->min_sparse && status == BLK_ZERO)) &&
            s->allocated_sectors) {
            s->allocated_done += n;
            progress_set(s->progress, 100.0 * s->allocated_done /
                                      s->allocated_sectors);
        }
    }
    return 0;
}

/*
 * The bitmaps of @src in the order qemu-img visits them: it keeps them in
 * a list it prepends to as it loads the directory, so the last comes first.
 */
static QGuardBitmapInfo *source_bitmaps(QGuardImage *src, guint *count)
{
    g_autoptr(GError) err = NULL;
    QGuardBitmapInfo *list = NULL, t;
    guint i;

    if (qguard_bitmap_list(src, &list, count, &err) < 0) {
        error_report("%s", gerr_msg(err, -EINVAL));
        return NULL;
    }
    for (i = 0; i < *count / 2; i++) {
        t = list[i];
        list[i] = list[*count - 1 - i];
        list[*count - 1 - i] = t;
    }
    return list;
}

/* Can the bitmaps be copied?  Says why not. */
static int convert_check_bitmaps(QGuardImage *src, bool skip_broken)
{
    QGuardBitmapInfo *list;
    guint count, i;
    int ret = 0;

    if (!qguard_image_supports_bitmaps(src)) {
        error_report("Source lacks bitmap support");
        return -1;
    }
    list = source_bitmaps(src, &count);
    if (!list) {
        return -1;
    }
    for (i = 0; i < count && !skip_broken; i++) {
        if (list[i].in_use) {
            error_report("Cannot copy inconsistent bitmap '%s'",
                         list[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img "
                    "bitmap --remove' to delete it\n");
            ret = -1;
            break;
        }
    }
    qguard_bitmap_list_free(list, count);
    return ret;
}

/*
 * Each bitmap of @src, with its granularity and state, into @dst.  Added
 * last first, they are stored in the source's order (new bitmaps are
 * stored most recent first, as in QEMU).
 */
static int convert_copy_bitmaps(QGuardImage *src, QGuardImage *dst,
                                bool skip_broken)
{
    QGuardBitmapInfo *list;
    guint count, i;
    int ret = 0;

    list = source_bitmaps(src, &count);
    if (!list) {
        return -1;
    }
    for (i = 0; i < count && ret == 0; i++) {
        const QGuardBitmapInfo *bm = &list[i];
        g_autoptr(GError) err = NULL;
        g_autofree char *prefix = NULL;
        int r;

        if (skip_broken && bm->in_use) {
            warn_report("Skipping inconsistent bitmap '%s'", bm->name);
            continue;
        }
        r = qguard_bitmap_add(dst, bm->name, bm->granularity, !bm->is_auto,
                              &err);
        if (r < 0) {
            prefix = g_strdup_printf("Failed to create bitmap %s", bm->name);
            error_report_err(prefix, err, r);
            ret = -1;
            break;
        }
        r = qguard_bitmap_merge(dst, bm->name, src, bm->name, &err);
        if (r < 0) {
            prefix = g_strdup_printf("Failed to populate bitmap %s",
                                     bm->name);
            error_report_err(prefix, err, r);
            qguard_bitmap_remove(dst, bm->name, NULL);
            ret = -1;
        }
    }
    qguard_bitmap_list_free(list, count);
    return ret;
}

/* Creation options that are not also open-time options of the target. */
static bool is_creation_option(const char *key)
{
    static const char *const names[] = {
        "size", "cluster_size", "refcount_bits", "compat", "preallocation",
        "lazy_refcounts", "backing_file", "backing_fmt", "extended_l2",
        "compression_type", "data_file", "data_file_raw", "encryption",
        "nocow", "extent_size_hint",
    };
    size_t i;

    if (g_str_has_prefix(key, "encrypt.")) {
        return true;
    }
    for (i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!strcmp(key, names[i])) {
            return true;
        }
    }
    return false;
}

/* Are @a and @b the same file on disk (as a lock sees it)? */
static bool same_inode(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* Open the sources, in order, and add up their sizes. */
static bool convert_open_sources(ConvertState *s, const ImgOpts *o,
                                 char **names, unsigned cache_flags)
{
    int i;

    s->src = g_new0(QGuardImage *, s->src_num);
    s->src_size = g_new0(uint64_t, s->src_num);
    s->src_sectors = g_new0(uint64_t, s->src_num);
    s->src_align = g_new0(uint64_t, s->src_num);
    for (i = 0; i < s->src_num; i++) {
        QGuardImageInfo *info = NULL;

        s->src[i] = img_open_opts(o, names[i], cache_flags);
        if (!s->src[i]) {
            return false;
        }
        s->src_size[i] = qguard_image_size(s->src[i]);
        s->src_sectors[i] = DIV_ROUND_UP(s->src_size[i], SECTOR_SIZE);
        s->src_align[i] = 1;
        if (qguard_image_get_info(s->src[i], &info, NULL) == 0) {
            s->src_align[i] = MAX(1, info->cluster_size / SECTOR_SIZE);
            qguard_image_info_free(info);
        }
        s->total_sectors += s->src_sectors[i];
    }
    return true;
}

/*
 * The creation options of the target (-o plus the total size), checked
 * as qemu-img checks them before it creates anything; *@open_opts gets
 * the runtime options among them, which also apply to the copy.
 */
static QGuardOpts *convert_create_options(const ConvertState *s,
                                          const char *raw_opts,
                                          const char *out_filename,
                                          const char *out_fmt,
                                          const char *backing,
                                          const char *backing_fmt,
                                          QGuardOpts **open_opts)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *size_str = NULL;
    g_autofree char *desc = NULL;
    QGuardOpts *opts = parse_create_options(raw_opts, "");
    guint k;

    if (!opts) {
        return NULL;
    }
    size_str = g_strdup_printf("%" PRIu64, s->total_sectors * SECTOR_SIZE);
    qguard_opts_set(opts, "size", size_str);
    /* -B and -F, which win over -o as the later options. */
    if (backing) {
        qguard_opts_set(opts, "backing_file", backing);
    }
    if (backing_fmt) {
        qguard_opts_set(opts, "backing_fmt", backing_fmt);
    }
    if (qguard_opts_get(opts, "backing_file") && s->src_num > 1) {
        error_report("Having a backing file for the target makes no sense "
                     "when concatenating multiple input images");
        goto fail;
    }
    if (qguard_opts_get(opts, "backing_file") &&
        !qguard_opts_get(opts, "backing_fmt")) {
        error_report("Use of backing file requires explicit backing format");
        goto fail;
    }
    /* As bdrv_create(): the backing file is opened with the target. */
    desc = qguard_create_prepare(out_filename, out_fmt, opts, true, &err);
    if (!desc) {
        error_report("%s", gerr_msg(err, -EINVAL));
        goto fail;
    }
    *open_opts = qguard_opts_new();
    for (k = 0; k < qguard_opts_count(opts); k++) {
        const char *key = qguard_opts_key(opts, k);

        if (!is_creation_option(key)) {
            qguard_opts_set(*open_opts, key, qguard_opts_value(opts, k));
        }
    }
    return opts;

fail:
    qguard_opts_free(opts);
    return NULL;
}

static bool convert_create_target(const ConvertState *s, const ImgOpts *o,
                                  char **src_names, const char *out_filename,
                                  const char *out_fmt, const QGuardOpts *opts)
{
    g_autoptr(GError) err = NULL;
    int i;

    /*
     * qemu-img fails here on its image lock; without locks, creating the
     * target would destroy the source.
     */
    for (i = 0; i < s->src_num; i++) {
        if (!o->image_opts && same_inode(src_names[i], out_filename)) {
            error_report("%s: error while converting %s: Failed to get "
                         "\"write\" lock\nIs another process using the "
                         "image [%s]?\n", out_filename, out_fmt,
                         out_filename);
            return false;
        }
    }
    if (qguard_image_create(out_filename, out_fmt, opts, NULL, NULL,
                            &err) < 0) {
        error_report("%s: error while converting %s: %s", out_filename,
                     out_fmt, gerr_msg(err, -EIO));
        return false;
    }
    return true;
}

/*
 * An existing target (-n) is opened as given (an option string with
 * --target-image-opts), a new one with -o's options;
 * both in the cache mode of -t, "unsafe" by default as in qemu-img: no
 * sync at all, the final flush only writes the metadata back to the host.
 */
static QGuardImage *convert_open_target(const char *out_filename,
                                        const char *out_fmt,
                                        bool skip_create,
                                        bool target_image_opts,
                                        const QGuardOpts *open_opts,
                                        unsigned cache_flags)
{
    g_autoptr(GError) err = NULL;
    QGuardImage *target = NULL;
    int ret;

    if (skip_create) {
        return img_open(target_image_opts, out_filename, out_fmt,
                        QGUARD_OPEN_RDWR | cache_flags, false);
    }
    ret = qguard_image_open(&target, out_filename, out_fmt, open_opts,
                            QGUARD_OPEN_RDWR | cache_flags, &err);
    if (ret < 0) {
        error_report("Could not open '%s': %s", out_filename,
                     gerr_msg(err, ret));
        return NULL;
    }
    return target;
}

/* Copy into the open target and flush it; 0 or a negative errno. */
static int convert_run(ConvertState *s, bool fresh_target)
{
    g_autoptr(GError) err = NULL;
    int ret;

    /*
     * A target we just created reads as zeros, unless it has a backing
     * file; an existing one may hold anything, unless the user says it
     * does not (--target-is-zero).  Without -S, qemu-img writes every zero
     * of a fresh target anyway.
     */
    s->has_zero_init = s->target_is_zero ||
                       (fresh_target && s->min_sparse &&
                        !s->target_has_backing);
    s->alignment = MAX(1, s->min_sparse ?
                          1ULL << g_bit_nth_msf(s->min_sparse, -1) : 1);
    s->buf_sectors = IO_BUF_SIZE / SECTOR_SIZE;
    if (s->compressed) {
        /* One cluster at a time, in the target's compression type. */
        s->cluster_sectors = qguard_image_cluster_size(s->target) /
                             SECTOR_SIZE;
        if (!s->cluster_sectors || s->cluster_sectors > s->buf_sectors) {
            error_report("invalid cluster size");
            return -EINVAL;
        }
        s->buf_sectors = s->cluster_sectors;
    }
    s->buf = g_malloc(s->buf_sectors * SECTOR_SIZE);

    rate_limit_start(&s->rate);
    ret = convert_do_copy(s);
    if (ret == 0) {
        ret = qguard_image_flush(s->target, &err);
        if (ret < 0) {
            error_report("error while writing to output image file: %s",
                         gerr_msg(err, ret));
        }
    }
    return ret;
}

static void convert_state_free(ConvertState *s)
{
    int i;

    for (i = 0; i < s->src_num && s->src; i++) {
        img_close(s->src[i]);
    }
    g_free(s->src);
    g_free(s->src_size);
    g_free(s->src_sectors);
    g_free(s->src_align);
    g_free(s->buf);
}

/* What the options ask for. */
typedef struct ConvertParams {
    ImgOpts o;
    GString *raw_opts;      /* -o lists, joined */
    const char *out_fmt;    /* -O */
    const char *cache;      /* -t */
    const char *src_cache;  /* -T */
    bool progress;          /* -p */
    bool skip_create;       /* -n */
    bool compress;          /* -c */
    bool bitmaps;           /* --bitmaps */
    bool skip_broken;       /* --skip-broken-bitmaps */
    uint64_t min_sparse;    /* -S, in sectors */
    bool explicit_min_sparse;
    bool copy_range;        /* -C */
    bool salvage;           /* --salvage */
    bool target_is_zero;    /* --target-is-zero */
    bool target_image_opts; /* --target-image-opts */
    int64_t rate_limit;     /* -r, bytes per second */
    const char *backing;    /* -B */
    const char *backing_fmt;    /* -F */
    /* -l: a snapshot by id or name, or snapshot.id= / snapshot.name= */
    const char *snapshot_name;
    bool sn_opts;
    char *sn_id, *sn_name;
} ConvertParams;

static const struct option convert_long_options[] = {
    LONGOPT_HELP,
    LONGOPT_IMAGE_OPTS,
    LONGOPT_FORCE_SHARE,
    LONGOPT_OBJECT,
    { "target-image-opts", no_argument, NULL, OPTION_TARGET_IMAGE_OPTS },
    { "salvage", no_argument, NULL, OPTION_SALVAGE },
    { "target-is-zero", no_argument, NULL, OPTION_TARGET_IS_ZERO },
    { "bitmaps", no_argument, NULL, OPTION_BITMAPS },
    { "skip-broken-bitmaps", no_argument, NULL, OPTION_SKIP_BROKEN },
    LONGOPT_END
};

/* One option of convert; false: failed. */
static bool convert_option(int c, ConvertParams *p)
{
    unsigned long ul;
    int64_t sval;

    switch (c) {
    case 'O':
        p->out_fmt = optarg;
        break;
    case 'c':
        p->compress = true;
        break;
    case 'o':
        return accumulate_options(p->raw_opts, optarg);
    case 'S':
        sval = cvtnum("buffer size for sparse output", optarg);
        if (sval < 0 || sval % SECTOR_SIZE || sval > MAX_BUF_BYTES) {
            error_report("Invalid buffer size for sparse output specified. "
                         "Valid sizes are multiples of %d up to %d. Select "
                         "0 to disable sparse detection (fully allocates "
                         "output).", SECTOR_SIZE, MAX_BUF_BYTES);
            return false;
        }
        p->min_sparse = sval / SECTOR_SIZE;
        p->explicit_min_sparse = true;
        break;
    case 'p':
        p->progress = true;
        break;
    case 't':
        p->cache = optarg;
        break;
    case 'T':
        p->src_cache = optarg;
        break;
    case 'n':
        p->skip_create = true;
        break;
    case 'm':
        if (!parse_ulong(optarg, &ul) || ul < 1 || ul > MAX_COROUTINES) {
            error_report("Invalid number of coroutines. Allowed number of "
                         "coroutines is between 1 and %d", MAX_COROUTINES);
            return false;
        }
        break;
    case 'W':
        /* Out-of-order writes: requests are sequential here anyway. */
        break;
    case OPTION_BITMAPS:
        p->bitmaps = true;
        break;
    case OPTION_SKIP_BROKEN:
        p->skip_broken = true;
        break;
    case OPTION_SALVAGE:
        p->salvage = true;
        break;
    case 'B':
        p->backing = optarg;
        break;
    case 'F':
        p->backing_fmt = optarg;
        break;
    case 'C':
        p->copy_range = true;
        break;
    case 'l':
        if (g_str_has_prefix(optarg, "snapshot.")) {
            g_clear_pointer(&p->sn_id, g_free);
            g_clear_pointer(&p->sn_name, g_free);
            if (!img_parse_snapshot_param(optarg, &p->sn_id, &p->sn_name)) {
                return false;
            }
            p->sn_opts = true;
        } else {
            p->snapshot_name = optarg;
        }
        break;
    case 'r':
        p->rate_limit = cvtnum("rate limit", optarg);
        return p->rate_limit >= 0;
    case OPTION_TARGET_IMAGE_OPTS:
        p->target_image_opts = true;
        break;
    case OPTION_TARGET_IS_ZERO:
        p->target_is_zero = true;
        break;
    default:
        img_common_opt(c, &p->o);
    }
    return true;
}

int img_convert(int argc, char **argv)
{
    g_autoptr(GString) raw_opts = g_string_new(NULL);
    ConvertParams p = {
        .raw_opts = raw_opts, .cache = "unsafe",
        .src_cache = "writeback", .min_sparse = 8,
    };
    const char *out_filename;
    QGuardOpts *opts = NULL, *open_opts = NULL;
    ConvertState s = { 0 };
    unsigned src_flags = 0, target_flags = 0;
    g_autofree char *sn_id = NULL, *sn_name = NULL;
    Progress prog;
    int ret = -1, c;

    while ((c = tool_getopt(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                            convert_long_options, NULL)) != -1) {
        if (!convert_option(c, &p)) {
            g_free(p.sn_id);
            g_free(p.sn_name);
            return 1;
        }
    }
    sn_id = p.sn_id;
    sn_name = p.sn_name;
    if (!p.out_fmt && !p.target_image_opts) {
        p.out_fmt = "raw";
    }
    if (p.skip_broken && !p.bitmaps) {
        error_report("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (p.compress && p.copy_range) {
        error_report("Cannot enable copy offloading when -c is used");
        return 1;
    }
    if (p.explicit_min_sparse && p.copy_range) {
        error_report("Cannot enable copy offloading when -S is used");
        return 1;
    }
    if (p.copy_range && p.salvage) {
        error_report("Cannot use copy offloading in salvaging mode");
        return 1;
    }
    if (p.target_image_opts && !p.skip_create) {
        error_report("--target-image-opts requires use of -n flag");
        return 1;
    }
    if (p.skip_create && raw_opts->len) {
        error_report("-o has no effect when skipping image creation");
        return 1;
    }
    if (p.target_is_zero && !p.skip_create) {
        error_report("--target-is-zero requires use of -n flag");
        return 1;
    }
    s.min_sparse = p.min_sparse;
    s.src_num = argc - optind - 1;
    out_filename = s.src_num >= 1 ? argv[argc - 1] : NULL;

    if (raw_opts->len && has_help_option(raw_opts->str)) {
        if (!p.out_fmt) {
            error_report("Option help requires a format be specified");
            return 1;
        }
        return print_create_help(p.out_fmt, out_filename);
    }
    if (s.src_num < 1) {
        error_report("Must specify image file name");
        return 1;
    }
    if (!parse_cache_flags(p.src_cache, &src_flags)) {
        error_report("Invalid source cache option: %s", p.src_cache);
        return 1;
    }

    progress_init(&prog, p.progress && !p.o.quiet, 1.0f);
    progress_set(&prog, 0);
    s.progress = &prog;

    if (!convert_open_sources(&s, &p.o, &argv[optind], src_flags)) {
        goto out;
    }
    if (p.sn_opts) {
        if (img_load_snapshot(s.src[0], sn_id, sn_name, NULL) < 0) {
            goto out;
        }
    } else if (p.snapshot_name) {
        if (s.src_num > 1) {
            error_report("No support for concatenating multiple snapshot");
            goto out;
        }
        if (img_load_snapshot(s.src[0], NULL, NULL, p.snapshot_name) < 0) {
            goto out;
        }
    }
    if (!p.skip_create) {
        opts = convert_create_options(&s, raw_opts->str, out_filename,
                                      p.out_fmt, p.backing, p.backing_fmt,
                                      &open_opts);
        if (!opts) {
            goto out;
        }
        s.target_has_backing = qguard_opts_get(opts, "backing_file");
    } else {
        s.target_has_backing = p.backing;
        /*
         * qemu-img 7.2 exits with status 0 after this message; it is an
         * error all the same (docs/qemu-img-commands.md).
         */
        if (p.target_is_zero && s.target_has_backing) {
            error_report("Cannot use --target-is-zero when the destination "
                         "image has a backing file");
            goto out;
        }
        if (s.src_num > 1 && p.backing) {
            error_report("Having a backing file for the target makes no "
                         "sense when concatenating multiple input images");
            goto out;
        }
    }
    s.target_is_zero = p.target_is_zero;
    s.rate.bps = p.rate_limit;
    s.copy_range = p.copy_range;
    s.salvage = p.salvage;
    if (p.compress) {
        const char *prealloc = opts ? qguard_opts_get(opts, "preallocation")
                                    : NULL;

        if (!p.skip_create && !strcmp(p.out_fmt, "raw")) {
            error_report("Compression not supported for this file format");
            goto out;
        }
        if (prealloc && strcmp(prealloc, "off")) {
            error_report("Compression and preallocation not supported at "
                         "the same time");
            goto out;
        }
        s.compressed = true;
    }
    if (p.bitmaps) {
        if (s.src_num > 1) {
            error_report("Copying bitmaps only possible with single source");
            goto out;
        }
        if (convert_check_bitmaps(s.src[0], p.skip_broken) < 0) {
            goto out;
        }
    }
    if (!p.skip_create &&
        !convert_create_target(&s, &p.o, &argv[optind], out_filename,
                               p.out_fmt, opts)) {
        goto out;
    }
    if (!parse_cache_flags(p.cache, &target_flags)) {
        error_report("Invalid cache option: %s", p.cache);
        goto out;
    }

    s.target = convert_open_target(out_filename, p.out_fmt, p.skip_create,
                                   p.target_image_opts, open_opts,
                                   target_flags);
    if (!s.target) {
        goto out;
    }
    if (p.bitmaps && !qguard_image_supports_bitmaps(s.target)) {
        error_report("Format driver '%s' does not support bitmaps",
                     qguard_image_format(s.target));
        goto out;
    }
    /* Only qcow2 writes compressed clusters. */
    if (p.compress && p.skip_create &&
        strcmp(qguard_image_format(s.target), "qcow2")) {
        error_report("Compression not supported for this file format");
        goto out;
    }
    if (p.skip_create &&
        qguard_image_size(s.target) < s.total_sectors * SECTOR_SIZE) {
        error_report("output file is smaller than input file");
        goto out;
    }
    s.target_backing_sectors = -1;
    if (s.target_has_backing && !p.skip_create &&
        qguard_image_backing(s.target)) {
        s.target_backing_sectors =
            DIV_ROUND_UP(qguard_image_size(qguard_image_backing(s.target)),
                         SECTOR_SIZE);
    }
    ret = convert_run(&s, !p.skip_create);
    if (ret == 0 && p.bitmaps) {
        ret = convert_copy_bitmaps(s.src[0], s.target, p.skip_broken);
    }

out:
    if (s.target && ret == 0) {
        if (img_close(s.target) < 0) {
            ret = -1;
        }
    } else if (s.target) {
        /* Failing to write back is the error already reported. */
        qguard_image_close(s.target, NULL);
    }
    if (!ret) {
        progress_set(&prog, 100);
    }
    progress_end(&prog);
    convert_state_free(&s);
    qguard_opts_free(opts);
    qguard_opts_free(open_opts);
    return ret ? 1 : 0;
}
