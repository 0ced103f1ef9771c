/* SPDX-License-Identifier: MIT */
/*
 * qemu-img amend: change the format options of an existing image.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <stdio.h>

#include "img.h"

static int print_amend_option_help(const char *fmt)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *text = qguard_amend_help(fmt, &err);

    if (!text && err->code == EINVAL && qemu_knows_format(fmt)) {
        error_report("Format driver '%s' does not support option amendment",
                     fmt);
        return 1;
    }
    if (!text) {
        error_report("%s", gerr_msg(err, -EINVAL));
        return 1;
    }
    fputs(text, stdout);
    return 0;
}

int img_amend(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_IMAGE_OPTS,
        { "force", no_argument, NULL, OPTION_FORCE },
        LONGOPT_END
    };
    g_autoptr(GString) options = NULL;
    g_autoptr(GError) err = NULL;
    const char *filename, *cache = "writeback";
    unsigned cache_flags = 0;
    bool show_progress = false, force = false;
    ImgOpts o = { 0 };
    QGuardOpts *opts = NULL;
    QGuardImage *img = NULL;
    Progress progress;
    int ret = 0, c;

    while ((c = tool_getopt(argc, argv, ":ho:f:t:pq", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'o':
            if (!options) {
                options = g_string_new(NULL);
            }
            if (!accumulate_options(options, optarg)) {
                return 1;
            }
            break;
        case 't':
            cache = optarg;
            break;
        case 'p':
            show_progress = true;
            break;
        case OPTION_FORCE:
            force = true;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    if (!options) {
        error_exit("Must specify options (-o)");
    }
    progress_init(&progress, show_progress && !o.quiet, 1.0f);

    filename = optind == argc - 1 ? argv[argc - 1] : NULL;
    if (o.fmt && has_help_option(options->str)) {
        /* With a format named, help needs no image. */
        ret = print_amend_option_help(o.fmt) ? -1 : 0;
        goto out;
    }
    if (optind != argc - 1) {
        error_report("Expecting one image file name");
        ret = -1;
        goto out;
    }
    if (!parse_cache_flags(cache, &cache_flags)) {
        error_report("Invalid cache option: %s", cache);
        ret = -1;
        goto out;
    }
    img = img_open_opts(&o, filename, QGUARD_OPEN_RDWR | cache_flags);
    if (!img) {
        ret = -1;
        goto out;
    }
    if (has_help_option(options->str)) {
        ret = print_amend_option_help(qguard_image_format(img)) ? -1 : 0;
        goto out;
    }
    opts = qguard_opts_new();
    if (qguard_opts_parse(opts, options->str, NULL, &err) < 0) {
        error_report("%s", err->message);
        ret = -1;
        goto out;
    }

    progress_set(&progress, 0.0f);
    ret = qguard_image_amend(img, opts, force, progress_cb, &progress, &err);
    progress_set(&progress, 100.0f);
    if (ret < 0) {
        error_report("%s", gerr_msg(err, ret));
    }

out:
    progress_end(&progress);
    qguard_opts_free(opts);
    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
