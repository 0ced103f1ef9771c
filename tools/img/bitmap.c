/* SPDX-License-Identifier: MIT */
/*
 * qemu-img bitmap: add, remove, clear, enable, disable and merge the
 * persistent dirty bitmaps of an image (docs/bitmaps.md).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The actions run in the order given, on one open image; what they change
 * is stored when the image is closed, so the exit status also covers the
 * store.
 */
#include <string.h>

#include "img.h"

/* After img.h's long options, OPTION_OBJECT among them. */
enum {
    OPTION_ADD = OPTION_SIZE + 1,
    OPTION_REMOVE,
    OPTION_CLEAR,
    OPTION_ENABLE,
    OPTION_DISABLE,
    OPTION_MERGE,
};

typedef struct BitmapAction {
    int act;                /* OPTION_ADD .. OPTION_MERGE */
    const char *src;        /* --merge only */
} BitmapAction;

static int run_action(const BitmapAction *a, QGuardImage *img,
                      QGuardImage *src, const char *bitmap,
                      uint32_t granularity, GError **errp)
{
    switch (a->act) {
    case OPTION_ADD:
        return qguard_bitmap_add(img, bitmap, granularity, false, errp);
    case OPTION_REMOVE:
        return qguard_bitmap_remove(img, bitmap, errp);
    case OPTION_CLEAR:
        return qguard_bitmap_clear(img, bitmap, errp);
    case OPTION_ENABLE:
        return qguard_bitmap_enable(img, bitmap, errp);
    case OPTION_DISABLE:
        return qguard_bitmap_disable(img, bitmap, errp);
    default:
        return qguard_bitmap_merge(img, bitmap, src, a->src, errp);
    }
}

static const char *action_name(int act)
{
    static const char *const names[] = {
        "add", "remove", "clear", "enable", "disable", "merge",
    };

    return names[act - OPTION_ADD];
}

int img_bitmap(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_IMAGE_OPTS,
        { "add", no_argument, NULL, OPTION_ADD },
        { "remove", no_argument, NULL, OPTION_REMOVE },
        { "clear", no_argument, NULL, OPTION_CLEAR },
        { "enable", no_argument, NULL, OPTION_ENABLE },
        { "disable", no_argument, NULL, OPTION_DISABLE },
        { "merge", required_argument, NULL, OPTION_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        LONGOPT_END
    };
    g_autoptr(GArray) actions = g_array_new(FALSE, FALSE,
                                            sizeof(BitmapAction));
    ImgOpts o = { 0 };
    const char *src_fmt = NULL, *src_filename = NULL;
    const char *filename, *bitmap;
    QGuardImage *img = NULL, *src = NULL;
    bool add = false, merge = false;
    int64_t granularity = 0;
    uint32_t gran32;
    guint i;
    int ret = 1, c;

    while ((c = tool_getopt(argc, argv, ":b:f:F:g:h", long_options,
                            NULL)) != -1) {
        BitmapAction a = { c, NULL };

        switch (c) {
        case 'b':
            src_filename = optarg;
            break;
        case 'F':
            src_fmt = optarg;
            break;
        case 'g':
            granularity = cvtnum("granularity", optarg);
            if (granularity < 0) {
                return 1;
            }
            break;
        case OPTION_MERGE:
            a.src = optarg;
            merge = true;
            g_array_append_val(actions, a);
            break;
        case OPTION_ADD:
            add = true;
            /* fall through */
        case OPTION_REMOVE:
        case OPTION_CLEAR:
        case OPTION_ENABLE:
        case OPTION_DISABLE:
            g_array_append_val(actions, a);
            break;
        default:
            img_common_opt(c, &o);
        }
    }

    if (!actions->len) {
        error_report("Need at least one of --add, --remove, --clear, "
                     "--enable, --disable, or --merge");
        return 1;
    }
    if (granularity && !add) {
        error_report("granularity only supported with --add");
        return 1;
    }
    if (src_fmt && !src_filename) {
        error_report("-F only supported with -b");
        return 1;
    }
    if (src_filename && !merge) {
        error_report("Merge bitmap source file only supported with "
                     "--merge");
        return 1;
    }
    if (optind != argc - 2) {
        error_report("Expecting filename and bitmap name");
        return 1;
    }
    filename = argv[optind];
    bitmap = argv[optind + 1];

    /* The bitmaps of this image only: its backing chain is not needed. */
    img = img_open_opts(&o, filename,
                        QGUARD_OPEN_RDWR | QGUARD_OPEN_NO_BACKING);
    if (!img) {
        goto out;
    }
    src = img;
    if (src_filename) {
        src = img_open(false, src_filename, src_fmt, QGUARD_OPEN_NO_BACKING,
                       false);
        if (!src) {
            goto out;
        }
    }

    /*
     * qemu-img passes the granularity on as 32 bits: a value that wraps to
     * 0 was still given, and is refused rather than taken as the default.
     */
    gran32 = (uint32_t)granularity;
    if (granularity && !gran32) {
        gran32 = 1;
    }
    for (i = 0; i < actions->len; i++) {
        const BitmapAction *a = &g_array_index(actions, BitmapAction, i);
        g_autoptr(GError) err = NULL;
        int r = run_action(a, img, src, bitmap, gran32, &err);

        if (r < 0) {
            g_autofree char *prefix = g_strdup_printf(
                "Operation %s on bitmap %s failed", action_name(a->act),
                bitmap);
            error_report_err(prefix, err, r);
            goto out;
        }
    }
    ret = 0;

out:
    if (src && src != img) {
        img_close(src);
    }
    if (img && img_close(img) < 0) {
        ret = 1;
    }
    return ret;
}
