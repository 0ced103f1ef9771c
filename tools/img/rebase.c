/* SPDX-License-Identifier: MIT */
/*
 * qemu-img rebase: give an image a new backing file.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Safe mode first copies into the image every range that it does not
 * allocate and where the old and the new backing file differ, so that its
 * content stays the same; only then does the header name the new backing
 * file.  Interrupted before that, the image reads as it always did.  -u
 * only rewrites the header.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

typedef struct Rebase {
    QGuardImage *img;
    QGuardImage *old_backing;   /* NULL: none */
    QGuardImage *new_backing;   /* NULL: none */
    QGuardImage *prefix;        /* the new backing, if in the old chain */
    uint8_t *buf_old;
    uint8_t *buf_new;
} Rebase;

/* Read @n bytes at @offset of @b, zeros past its end; NULL reads zeros. */
static int read_backing(QGuardImage *b, uint64_t offset, uint64_t *n,
                        uint8_t *buf, bool *zero)
{
    g_autoptr(GError) err = NULL;
    uint64_t size = b ? qguard_image_size(b) : 0;

    *zero = offset >= size;
    if (*zero) {
        memset(buf, 0, *n);
        return 0;
    }
    *n = MIN(*n, size - offset);
    return qguard_image_pread(b, offset, *n, buf, &err);
}

/* Copy what differs between old and new backing file into the image. */
static int copy_differences(Rebase *r, Progress *progress)
{
    uint64_t size = qguard_image_size(r->img);
    uint64_t old_size = r->old_backing ? qguard_image_size(r->old_backing)
                                       : 0;
    float local_progress = 0;
    uint64_t offset, n;
    int ret;

    if (size) {
        local_progress = 100.0f / (size / MIN(size, (uint64_t)IO_BUF_SIZE));
    }
    for (offset = 0; offset < size; offset += n) {
        g_autoptr(GError) err = NULL;
        bool allocated, old_zero, new_zero;
        uint64_t written = 0;

        n = MIN((uint64_t)IO_BUF_SIZE, size - offset);
        ret = is_allocated_above(r->img, qguard_image_backing(r->img), offset,
                                 &n, &allocated);
        if (ret < 0) {
            error_report("error while reading image metadata: %s",
                         g_strerror(-ret));
            return ret;
        }
        if (allocated) {
            continue;   /* the image's own data hides both backing files */
        }
        if (r->prefix && offset < old_size) {
            n = MIN(n, old_size - offset);
            ret = is_allocated_above(r->old_backing, r->prefix, offset, &n,
                                     &allocated);
            if (ret < 0) {
                error_report("error while reading image metadata: %s",
                             g_strerror(-ret));
                return ret;
            }
            if (!allocated) {
                continue;   /* unchanged since the new backing file */
            }
        }

        ret = read_backing(r->old_backing, offset, &n, r->buf_old, &old_zero);
        if (ret < 0) {
            error_report("error while reading from old backing file");
            return ret;
        }
        ret = read_backing(r->new_backing, offset, &n, r->buf_new,
                           &new_zero);
        if (ret < 0) {
            error_report("error while reading from new backing file");
            return ret;
        }
        while (written < n) {
            uint64_t pnum;

            if (compare_buffers(r->buf_old + written, r->buf_new + written,
                                n - written, &pnum)) {
                ret = old_zero ?
                      qguard_image_pwrite_zeroes(r->img, offset + written,
                                                 pnum, 0, &err) :
                      qguard_image_pwrite(r->img, offset + written, pnum,
                                          r->buf_old + written, 0, &err);
                if (ret < 0) {
                    error_report("Error while writing to COW image: %s",
                                 g_strerror(-ret));
                    return ret;
                }
            }
            written += pnum;
        }
        progress_set(progress, progress->current + local_progress);
    }
    return 0;
}

int img_rebase(int argc, char **argv)
{
    const char *cache = "writeback", *src_cache = "writeback";
    unsigned cache_flags = 0, src_cache_flags = 0;
    const char *out_baseimg = NULL, *out_basefmt = NULL, *filename;
    bool unsafe = false, show_progress = false;
    ImgOpts o = { 0 };
    g_autoptr(GError) err = NULL;
    Rebase r = { 0 };
    Progress progress;
    int ret = -1, c;

    while ((c = tool_getopt(argc, argv, ":hf:F:b:upt:T:qU",
                            img_image_long_options, NULL)) != -1) {
        switch (c) {
        case 'F':
            out_basefmt = optarg;
            break;
        case 'b':
            out_baseimg = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            show_progress = true;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename(argc, argv);
    if (!unsafe && !out_baseimg) {
        error_exit("Must specify backing file (-b) or use unsafe mode (-u)");
    }
    progress_init(&progress, show_progress && !o.quiet, 2.0f);
    progress_set(&progress, 0.0f);

    if (!parse_cache_flags(cache, &cache_flags)) {
        error_report("Invalid cache option: %s", cache);
        goto out;
    }
    if (!parse_cache_flags(src_cache, &src_cache_flags)) {
        error_report("Invalid source cache option: %s", src_cache);
        goto out;
    }
    /* -u may fix the name of a backing file that cannot be opened. */
    r.img = img_open(o.image_opts, filename, o.fmt,
                     QGUARD_OPEN_RDWR | cache_flags |
                     (unsafe ? QGUARD_OPEN_NO_BACKING : 0),
                     false);
    if (!r.img) {
        goto out;
    }
    if (out_basefmt && !qemu_knows_format(out_basefmt)) {
        error_report("Invalid format name: '%s'", out_basefmt);
        goto out;
    }

    if (!unsafe) {
        r.old_backing = qguard_image_backing(r.img);
        if (out_baseimg[0]) {
            g_autofree char *path = path_combine(qguard_image_filename(r.img),
                                                 out_baseimg);
            /*
             * The name is relative to the image; made absolute, every
             * image in the chain resolves it to the same file.
             */
            g_autofree char *real = realpath(path, NULL);
            int depth;

            r.prefix = real ? find_backing_image(r.img, real, &depth) : NULL;
            if (r.prefix) {
                r.new_backing = r.prefix;
            } else {
                QGuardOpts *opts = qguard_opts_new();
                int ret2;

                if (o.force_share) {
                    qguard_opts_set(opts, "force-share", "on");
                }
                ret2 = qguard_image_open(&r.new_backing, path, out_basefmt,
                                         opts, src_cache_flags, &err);
                qguard_opts_free(opts);
                if (ret2 < 0) {
                    error_report("Could not open new backing file '%s': %s",
                                 out_baseimg, gerr_msg(err, ret2));
                    goto out;
                }
            }
        }
        r.buf_old = g_malloc(IO_BUF_SIZE);
        r.buf_new = g_malloc(IO_BUF_SIZE);
        if (copy_differences(&r, &progress) < 0) {
            goto out;
        }
    }

    /*
     * Everything that differs is in the image now: switching the backing
     * file changes nothing that a reader sees.
     */
    g_clear_error(&err);
    if (out_baseimg && *out_baseimg) {
        ret = qguard_image_change_backing_file(r.img, out_baseimg,
                                               out_basefmt, true, &err);
    } else {
        ret = qguard_image_change_backing_file(r.img, NULL, NULL, false,
                                               &err);
    }
    if (ret == -ENOSPC) {
        error_report("Could not change the backing file to '%s': No space "
                     "left in the file header", out_baseimg);
    } else if (ret == -EINVAL && out_baseimg && !out_basefmt) {
        error_report("Could not change the backing file to '%s': backing "
                     "format must be specified", out_baseimg);
    } else if (ret < 0) {
        error_report("Could not change the backing file to '%s': %s",
                     out_baseimg ? out_baseimg : "(null)", g_strerror(-ret));
    }
    progress_set(&progress, 100.0f);

out:
    progress_end(&progress);
    if (r.new_backing && !r.prefix) {
        qguard_image_close(r.new_backing, NULL);
    }
    g_free(r.buf_old);
    g_free(r.buf_new);
    if (img_close(r.img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
