/* SPDX-License-Identifier: MIT */
/*
 * qemu-img create: make a new image.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>

#include "img.h"

int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GString) raw_opts = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *size_str = NULL;
    g_autofree char *prefix = NULL;
    QGuardOpts *opts = NULL;
    const char *fmt = "raw";
    const char *base_fmt = NULL;
    const char *base_filename = NULL;
    const char *filename;
    bool quiet = false, unsafe = false, progress = false;
    int64_t img_size = -1;
    Progress prog;
    int ret = 1;
    int c;

    while ((c = tool_getopt(argc, argv, ":F:b:f:ho:pqu", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base_filename = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'o':
            if (!accumulate_options(raw_opts, optarg)) {
                goto out;
            }
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            unsafe = true;
            break;
        }
    }

    filename = optind < argc ? argv[optind] : NULL;
    if (raw_opts->len && has_help_option(raw_opts->str)) {
        ret = print_create_help(fmt);
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

    prefix = g_strdup_printf("%s: ", filename);
    opts = parse_create_options(raw_opts->str, prefix);
    if (!opts) {
        goto out;
    }
    if (img_size >= 0) {
        if (qguard_opts_has(opts, "size")) {
            error_report("%s: The image size must be specified only once",
                         filename);
            goto out;
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

    desc = qguard_create_prepare(filename, fmt, opts, unsafe, &err);
    if (!desc) {
        error_report("%s: %s", filename, gerr_msg(err, -EINVAL));
        goto out;
    }
    if (!quiet) {
        printf("Formatting '%s', %s\n", filename, desc);
        fflush(stdout);
    }
    progress_init(&prog, progress && !quiet, 1.0f);
    if (prog.enabled) {
        progress_set(&prog, 0);
    }
    if (qguard_image_create(filename, fmt, opts,
                            prog.enabled ? progress_cb : NULL, &prog,
                            &err) < 0) {
        progress_end(&prog);
        error_report("%s: %s", filename, gerr_msg(err, -EIO));
        goto out;
    }
    if (prog.enabled) {
        progress_set(&prog, 100);
    }
    progress_end(&prog);
    ret = 0;

out:
    qguard_opts_free(opts);
    return ret;
}
