/* SPDX-License-Identifier: MIT */
/*
 * qemu-img measure: the size an image would need, for an existing image or
 * for an empty disk of a given size.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

static void dump_json_measure(const QGuardMeasureInfo *info)
{
    QObj *obj = qobj_dict_new();
    g_autofree char *json = NULL;

    if (info->has_bitmaps) {
        qobj_dict_put_int(obj, "bitmaps", info->bitmaps);
    }
    qobj_dict_put_int(obj, "required", info->required);
    qobj_dict_put_int(obj, "fully-allocated", info->fully_allocated);
    json = qobj_to_json_pretty(obj);
    printf("%s\n", json);
    qobj_free(obj);
}

int img_measure(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_IMAGE_OPTS,
        LONGOPT_OBJECT,
        LONGOPT_OUTPUT,
        { "size", required_argument, NULL, OPTION_SIZE },
        LONGOPT_FORCE_SHARE,
        LONGOPT_END
    };
    g_autoptr(GString) options = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *sn_id = NULL, *sn_name = NULL;
    const char *filename = NULL, *out_fmt = "raw";
    const char *snapshot_name = NULL;
    bool sn_opts = false;
    ImgOpts o = { 0 };
    OutputFormat output_format = OFORMAT_HUMAN;
    uint64_t img_size = UINT64_MAX;
    QGuardOpts *opts = NULL;
    QGuardImage *in = NULL;
    QGuardMeasureInfo info = QGUARD_SIZED(QGuardMeasureInfo);
    int ret = 1, c;

    while ((c = tool_getopt(argc, argv, ":hf:O:o:l:U", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'O':
            out_fmt = optarg;
            break;
        case 'o':
            if (!accumulate_options(options, optarg)) {
                goto out;
            }
            break;
        case 'l':
            if (g_str_has_prefix(optarg, "snapshot.")) {
                g_clear_pointer(&sn_id, g_free);
                g_clear_pointer(&sn_name, g_free);
                if (!img_parse_snapshot_param(optarg, &sn_id, &sn_name)) {
                    goto out;
                }
                sn_opts = true;
            } else {
                snapshot_name = optarg;
            }
            break;
        case OPTION_OUTPUT:
            if (!parse_output_format(optarg, &output_format)) {
                goto out;
            }
            break;
        case OPTION_SIZE: {
            int64_t sval = cvtnum("image size", optarg);
            if (sval < 0) {
                goto out;
            }
            img_size = sval;
            break;
        }
        default:
            img_common_opt(c, &o);
        }
    }

    if (argc - optind > 1) {
        error_report("At most one filename argument is allowed.");
        goto out;
    } else if (argc - optind == 1) {
        filename = argv[optind];
    }
    if (!filename && (o.image_opts || o.fmt || snapshot_name || sn_opts)) {
        error_report("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (filename && img_size != UINT64_MAX) {
        error_report("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && img_size == UINT64_MAX) {
        error_report("Either --size N or one filename must be specified.");
        goto out;
    }

    if (filename) {
        in = img_open_opts(&o, filename, 0);
        if (!in) {
            goto out;
        }
        if ((sn_opts && img_load_snapshot(in, sn_id, sn_name, NULL) < 0) ||
            (snapshot_name && !sn_opts &&
             img_load_snapshot(in, NULL, NULL, snapshot_name) < 0)) {
            goto out;
        }
    }

    opts = qguard_opts_new();
    if (options->len && qguard_opts_parse(opts, options->str, NULL, &err) < 0) {
        error_report("%s", err->message);
        error_report("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    if (qguard_measure_opts_valid(out_fmt, opts, &err) < 0) {
        error_report("%s", err->message);
        error_report("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    if (img_size != UINT64_MAX) {
        g_autofree char *size = g_strdup_printf("%" PRIu64, img_size);
        qguard_opts_set(opts, "size", size);
    }
    if (qguard_measure(out_fmt, opts, in, &info, &err) < 0) {
        error_report("%s", gerr_msg(err, -EINVAL));
        goto out;
    }

    if (output_format == OFORMAT_HUMAN) {
        printf("required size: %" PRIu64 "\n", info.required);
        printf("fully allocated size: %" PRIu64 "\n", info.fully_allocated);
        if (info.has_bitmaps) {
            printf("bitmaps size: %" PRIu64 "\n", info.bitmaps);
        }
    } else {
        dump_json_measure(&info);
    }
    ret = 0;

out:
    qguard_opts_free(opts);
    img_close(in);
    return ret;
}
