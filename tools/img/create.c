/* SPDX-License-Identifier: MIT */
/*
 * qemu-img create: make a new image.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>

#include "img.h"

/*
 * -o's options plus the size, backing file and format given on their own;
 * NULL after printing what is wrong.
 */
static QGuardOpts *create_options(const char *raw_opts, const char *filename,
                                  int64_t img_size, const char *base_filename,
                                  const char *base_fmt)
{
    g_autofree char *prefix = g_strdup_printf("%s: ", filename);
    QGuardOpts *opts = parse_create_options(raw_opts, prefix);

    if (!opts) {
        return NULL;
    }
    if (img_size >= 0) {
        g_autofree char *size_str = NULL;

        if (qguard_opts_has(opts, "size")) {
            error_report("%s: The image size must be specified only once",
                         filename);
            qguard_opts_free(opts);
            return NULL;
        }
        size_str = g_strdup_printf("%" PRId64, img_size);
        qguard_opts_set(opts, "size", size_str);
    }
    if (base_filename) {
        qguard_opts_set(opts, "backing_file", base_filename);
    }
    if (base_fmt) {
        qguard_opts_set(opts, "backing_fmt", base_fmt);
    }
    return opts;
}

/* Create the image; the exit status. */
static int create_image(const char *filename, const char *fmt,
                        const QGuardOpts *opts)
{
    g_autoptr(GError) err = NULL;

    if (qguard_image_create(filename, fmt, opts, NULL, NULL, &err) < 0) {
        error_report("%s: %s", filename, gerr_msg(err, -EIO));
        return 1;
    }
    return 0;
}

int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_END
    };
    g_autoptr(GString) raw_opts = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *desc = NULL;
    QGuardOpts *opts = NULL;
    ImgOpts o = { .fmt = "raw" };
    const char *base_fmt = NULL;
    const char *base_filename = NULL;
    const char *filename;
    bool unsafe = false;
    int64_t img_size = -1;
    int ret = 1;
    int c;

    while ((c = tool_getopt(argc, argv, ":F:b:f:ho:qu", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base_filename = optarg;
            break;
        case 'o':
            if (!accumulate_options(raw_opts, optarg)) {
                goto out;
            }
            break;
        case 'u':
            unsafe = true;
            break;
        default:
            img_common_opt(c, &o);
        }
    }

    filename = optind < argc ? argv[optind] : NULL;
    if (raw_opts->len && has_help_option(raw_opts->str)) {
        ret = print_create_help(o.fmt, filename);
        goto out;
    }
    if (optind >= argc) {
        error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        img_size = cvtnum("image size", argv[optind++]);
        if (img_size < 0) {
            goto out;
        }
    }
    if (optind != argc) {
        error_exit("Unexpected argument: %s", argv[optind]);
    }

    opts = create_options(raw_opts->str, filename, img_size, base_filename,
                          base_fmt);
    if (!opts) {
        goto out;
    }
    desc = qguard_create_prepare(filename, o.fmt, opts, unsafe, &err);
    if (!desc) {
        error_report("%s: %s", filename, gerr_msg(err, -EINVAL));
        goto out;
    }
    if (!o.quiet) {
        printf("Formatting '%s', %s\n", filename, desc);
        fflush(stdout);
    }
    ret = create_image(filename, o.fmt, opts);

out:
    qguard_opts_free(opts);
    return ret;
}
