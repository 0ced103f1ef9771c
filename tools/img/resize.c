/* SPDX-License-Identifier: MIT */
/*
 * qemu-img resize: grow or shrink the virtual disk.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <string.h>

#include "img.h"

static bool valid_prealloc_mode(const char *mode)
{
    return !strcmp(mode, "off") || !strcmp(mode, "metadata") ||
           !strcmp(mode, "falloc") || !strcmp(mode, "full");
}

/*
 * "[+ | -]size": *@relative is 1, -1 or 0 (absolute).  qemu-img reads the
 * number as a QemuOpts size, with its messages; false after them.
 */
static bool parse_resize_size(const char *size, int *relative, uint64_t *n)
{
    g_autoptr(GError) err = NULL;
    bool ok, hex_suffix;

    *relative = size[0] == '+' ? 1 : size[0] == '-' ? -1 : 0;
    if (*relative) {
        size++;
    }
    ok = qguard_parse_size_option("size", size, n, &hex_suffix, &err) == 0;
    if (hex_suffix) {
        warn_hex_suffix(size);
    }
    if (!ok) {
        error_report("%s", err->message);
    }
    return ok;
}

/* qemu-img's checks of the new size, with its messages. */
static bool resize_allowed(uint64_t current_size, int64_t total_size,
                           const char *prealloc, bool shrink)
{
    if (total_size <= 0) {
        error_report("New image size must be positive");
        return false;
    }
    if ((uint64_t)total_size <= current_size && prealloc &&
        strcmp(prealloc, "off")) {
        error_report("Preallocation can only be used for growing images");
        return false;
    }
    if ((uint64_t)total_size < current_size && !shrink) {
        error_report("Use the --shrink option to perform a shrink "
                     "operation.");
        warn_report("Shrinking an image will delete all data beyond the "
                    "shrunken image's end. Before performing such an "
                    "operation, make sure there is no important data "
                    "there.");
        return false;
    }
    return true;
}

int img_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_IMAGE_OPTS,
        { "preallocation", required_argument, NULL, OPTION_PREALLOCATION },
        { "shrink", no_argument, NULL, OPTION_SHRINK },
        LONGOPT_END
    };
    g_autoptr(GError) err = NULL;
    ImgOpts o = { 0 };
    const char *filename, *size, *prealloc = NULL;
    bool shrink = false;
    uint64_t n, current_size;
    int64_t total_size;
    int relative;
    QGuardImage *img;
    int ret = -1, c;

    /*
     * The size is taken off the end before option parsing so that a
     * negative size is not mistaken for an option.
     */
    if (argc < 3) {
        error_exit("Not enough arguments");
    }
    size = argv[--argc];

    while ((c = tool_getopt(argc, argv, ":f:hq", long_options,
                            NULL)) != -1) {
        switch (c) {
        case OPTION_PREALLOCATION:
            if (!valid_prealloc_mode(optarg)) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = optarg;
            break;
        case OPTION_SHRINK:
            shrink = true;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting image file name and size");
    }
    filename = argv[optind];

    if (!parse_resize_size(size, &relative, &n)) {
        return 1;
    }

    img = img_open_opts(&o, filename, QGUARD_OPEN_RDWR);
    if (!img) {
        return 1;
    }
    current_size = qguard_image_size(img);

    /* Two's complement, as in qemu-img: 8E and more end up negative. */
    if (relative) {
        total_size = (int64_t)(current_size + n * (uint64_t)(int64_t)relative);
    } else {
        total_size = (int64_t)n;
    }
    if (!resize_allowed(current_size, total_size, prealloc, shrink)) {
        goto out;
    }

    ret = qguard_image_truncate(img, total_size, shrink, prealloc, &err);
    if (ret < 0) {
        error_report("%s", gerr_msg(err, ret));
        goto out;
    }
    ret = 0;

out:
    if (img_close(img) < 0) {
        ret = -1;
    }
    if (ret == 0) {
        qprintf(o.quiet, "Image resized.\n");
    }
    return ret ? 1 : 0;
}
