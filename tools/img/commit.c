/* SPDX-License-Identifier: MIT */
/*
 * qemu-img commit: write an image's data into its backing file.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * As QEMU's active commit does: every chunk (the base's cluster size,
 * between 4 KiB and 64 KiB) that an image above the base allocates is
 * read through the top image and written into the base, zeros as zeros.
 * The base grows to the top image's size first if it is smaller.  Then,
 * unless -d (or -b) was given, the top image is emptied so that it reads
 * through to the base.  The chain reads the same at every moment: the
 * base only ever receives what the images above it already show.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

#define MAX_IO_BYTES (1024 * 1024)

typedef struct Commit {
    QGuardImage *top;
    QGuardImage *base;
    uint64_t granularity;
    RateLimit rate;             /* counts the bytes copied */
    Progress *progress;
    uint64_t total;             /* bytes to commit */
    uint64_t done;
} Commit;

static int commit_chunk(Commit *c, uint64_t offset, uint64_t end,
                        uint8_t *buf, uint64_t *len)
{
    g_autoptr(GError) err = NULL;
    uint64_t size = qguard_image_size(c->top);
    uint64_t base_cluster = MAX(qguard_image_cluster_size(c->base), 1);
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
    uint64_t io;
    bool copy = true;
    int ret;

    ret = qguard_image_block_status(c->top, offset, end - offset, &st, &err);
    if (ret < 0) {
        return ret;
    }
    io = st.bytes;
    if (st.flags & QGUARD_BLOCK_DATA) {
        io = MIN(io, (uint64_t)MAX_IO_BYTES);
    }
    io -= io % c->granularity;
    if (io < c->granularity) {
        io = c->granularity;
    } else if (!(st.flags & QGUARD_BLOCK_DATA) &&
               offset % base_cluster == 0 && io % base_cluster == 0) {
        copy = false;
    }
    io = MIN(io, size - offset);
    *len = io;

    if (copy) {
        io = MIN(io, (uint64_t)MAX_IO_BYTES);
        *len = io;
        ret = qguard_image_pread(c->top, offset, io, buf, &err);
        if (ret >= 0) {
            ret = qguard_image_pwrite(c->base, offset, io, buf, 0, &err);
        }
        c->rate.bytes += io;
    } else {
        ret = qguard_image_pwrite_zeroes(c->base, offset, io,
                                         QGUARD_ZERO_MAY_UNMAP, &err);
    }
    return ret;
}

/* The chunks that images above the base allocate, then their copy. */
static int run_commit(Commit *c)
{
    uint64_t size = qguard_image_size(c->top);
    uint64_t nchunks = (size + c->granularity - 1) / c->granularity;
    g_autofree uint8_t *dirty = g_malloc0(MAX(nchunks, 1));
    g_autofree uint8_t *buf = g_malloc(MAX_IO_BYTES + c->granularity);
    uint64_t offset, bytes, i;
    int ret;

    if (qguard_image_size(c->base) < size) {
        g_autoptr(GError) err = NULL;
        ret = qguard_image_truncate(c->base, size, false, "off", &err);
        if (ret < 0) {
            return ret;
        }
    }
    for (offset = 0; offset < size; offset += bytes) {
        bool allocated;

        bytes = size - offset;
        ret = is_allocated_above(c->top, c->base, offset, &bytes,
                                 &allocated);
        if (ret < 0) {
            return ret;
        }
        if (allocated) {
            memset(dirty + offset / c->granularity, 1,
                   (offset + bytes - 1) / c->granularity -
                   offset / c->granularity + 1);
        }
    }
    for (i = 0; i < nchunks; i++) {
        c->total += dirty[i] ? MIN(c->granularity,
                                   size - i * c->granularity) : 0;
    }

    rate_limit_start(&c->rate);
    for (i = 0; i < nchunks; ) {
        uint64_t start, end, len;

        if (!dirty[i]) {
            i++;
            continue;
        }
        start = i * c->granularity;
        while (i < nchunks && dirty[i]) {
            i++;
        }
        end = MIN(i * c->granularity, size);
        for (offset = start; offset < end; offset += len) {
            ret = commit_chunk(c, offset, end, buf, &len);
            if (ret < 0) {
                return ret;
            }
            c->done += len;
            progress_set(c->progress, c->total ?
                         (float)c->done / c->total * 100.f : 0.f);
            rate_limit_wait(&c->rate);
        }
    }
    return 0;
}

/* Open @filename with the image @depth levels down writable. */
static QGuardImage *open_for_commit(bool image_opts, const char *filename,
                                    const char *fmt, int depth)
{
    g_autoptr(GString) key = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts;
    QGuardImage *img = NULL;
    int i, ret;

    for (i = 0; i < depth; i++) {
        g_string_append(key, "backing.");
    }
    g_string_append(key, "read-only");
    if (image_opts) {
        g_autofree char *str = g_strdup_printf("%s,%s=off", filename,
                                               key->str);
        return img_open(true, str, NULL, QGUARD_OPEN_RDWR, false);
    }
    opts = qguard_opts_new();
    qguard_opts_set(opts, key->str, "off");
    ret = qguard_image_open(&img, filename, fmt, opts, QGUARD_OPEN_RDWR,
                            &err);
    qguard_opts_free(opts);
    if (ret < 0) {
        error_report("Could not open '%s': %s", filename, gerr_msg(err, ret));
        return NULL;
    }
    return img;
}

int img_commit(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_IMAGE_OPTS,
        LONGOPT_END
    };
    const char *cache = "writeback", *base = NULL, *filename;
    unsigned cache_flags = 0;
    bool show_progress = false, drop = false;
    ImgOpts o = { 0 };
    int64_t rate_limit = 0;
    g_autofree char *error = NULL;
    QGuardImage *img, *base_img = NULL;
    Progress progress;
    int depth = 1, ret, c;

    while ((c = tool_getopt(argc, argv, ":f:ht:b:dpqr:", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 't':
            cache = optarg;
            break;
        case 'b':
            base = optarg;
            /* An explicit base keeps the top image as it is. */
            drop = true;
            break;
        case 'd':
            drop = true;
            break;
        case 'p':
            show_progress = true;
            break;
        case 'r':
            rate_limit = cvtnum("rate limit", optarg);
            if (rate_limit < 0) {
                return 1;
            }
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename(argc, argv);
    if (!parse_cache_flags(cache, &cache_flags)) {
        error_report("Invalid cache option: %s", cache);
        return 1;
    }

    img = img_open_opts(&o, filename, QGUARD_OPEN_RDWR | cache_flags);
    if (!img) {
        return 1;
    }
    progress_init(&progress, show_progress && !o.quiet, 1.0f);
    progress_set(&progress, 0.0f);

    if (base) {
        base_img = find_backing_image(img, base, &depth);
        if (!base_img) {
            error = g_strdup_printf("Did not find '%s' in the backing chain "
                                    "of '%s'", base, filename);
        }
    } else if (!qguard_image_backing(img)) {
        error = g_strdup("Image does not have a backing file");
    }
    if (!error) {
        /* The base is opened read-only with the chain: open it writable. */
        img_close(img);
        img = open_for_commit(o.image_opts, filename, o.fmt, depth);
        if (!img) {
            progress_end(&progress);
            return 1;
        }
        base_img = img;
        for (c = 0; c < depth; c++) {
            base_img = qguard_image_backing(base_img);
        }
        {
            Commit cm = {
                .top = img, .base = base_img, .progress = &progress,
                .rate = { .bps = rate_limit },
            };
            uint32_t cs = qguard_image_cluster_size(base_img);

            cm.granularity = cs ? MIN(MAX(cs, 4096u), 65536u) : 65536;
            ret = run_commit(&cm);
            if (ret >= 0) {
                g_autoptr(GError) err = NULL;
                ret = qguard_image_flush(base_img, &err);
            }
            if (ret < 0) {
                error = g_strdup_printf("Block job failed: %s",
                                        g_strerror(-ret));
            } else {
                progress_set(&progress, 100.0f);
            }
        }
    }
    if (!error && !drop) {
        g_autoptr(GError) err = NULL;
        ret = qguard_image_make_empty(img, &err);
        if (ret < 0 && ret != -ENOTSUP) {
            error = g_strdup_printf("Failed to empty %s: %s", filename,
                                    g_strerror(-ret));
        }
    }

    progress_end(&progress);
    if (img_close(img) < 0 && !error) {
        return 1;
    }
    if (error) {
        error_report("%s", error);
        return 1;
    }
    qprintf(o.quiet, "Image committed.\n");
    return 0;
}
