/* SPDX-License-Identifier: MIT */
/*
 * qemu-img check: consistency check and repair.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

static void check_report(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

/* qemu-img's ImageCheck: the result plus which optional members it has. */
typedef struct ImageCheck {
    QGuardCheckResult r;
    const char *filename;
    const char *format;
} ImageCheck;

static int collect_image_check(QGuardImage *img, ImageCheck *check,
                               unsigned fix)
{
    g_autoptr(GError) err = NULL;
    int ret;

    check->r = QGUARD_SIZED(QGuardCheckResult);
    ret = qguard_image_check(img, fix, &check->r, check_report, NULL, &err);
    if (ret < 0 && err && err->domain == QGUARD_CHECK_ERROR) {
        error_report("%s", err->message);
    }
    return ret;
}

static void dump_human_image_check(const ImageCheck *check, bool quiet)
{
    const QGuardCheckResult *r = &check->r;

    if (!(r->corruptions || r->leaks || r->check_errors)) {
        qprintf(quiet, "No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            qprintf(quiet, "\n%d errors were found on the image.\n"
                    "Data may be corrupted, or further writes to the image "
                    "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            qprintf(quiet, "\n%d leaked clusters were found on the image.\n"
                    "This means waste of disk space, but no harm to data.\n",
                    r->leaks);
        }
        if (r->check_errors) {
            qprintf(quiet, "\n%d internal errors have occurred during the "
                    "check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        qprintf(quiet, "%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, "
                "%0.2f%% fragmented, %0.2f%% compressed clusters\n",
                r->allocated_clusters, r->total_clusters,
                r->allocated_clusters * 100.0 / r->total_clusters,
                r->fragmented_clusters * 100.0 / r->allocated_clusters,
                r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        qprintf(quiet, "Image end offset: %" PRId64 "\n",
                r->image_end_offset);
    }
}

static void dump_json_image_check(const ImageCheck *check, bool quiet)
{
    const QGuardCheckResult *r = &check->r;
    QObj *d = qobj_dict_new();
    g_autofree char *json = NULL;

    /* Optional members are present exactly when they are non-zero. */
    qobj_dict_put_str(d, "filename", check->filename);
    qobj_dict_put_str(d, "format", check->format);
    qobj_dict_put_int(d, "check-errors", r->check_errors);
    if (r->corruptions) {
        qobj_dict_put_int(d, "corruptions", r->corruptions);
    }
    if (r->leaks) {
        qobj_dict_put_int(d, "leaks", r->leaks);
    }
    if (r->corruptions_fixed) {
        qobj_dict_put_int(d, "corruptions-fixed", r->corruptions_fixed);
    }
    if (r->leaks_fixed) {
        qobj_dict_put_int(d, "leaks-fixed", r->leaks_fixed);
    }
    if (r->image_end_offset) {
        qobj_dict_put_int(d, "image-end-offset", r->image_end_offset);
    }
    if (r->total_clusters) {
        qobj_dict_put_uint(d, "total-clusters", r->total_clusters);
    }
    if (r->allocated_clusters) {
        qobj_dict_put_uint(d, "allocated-clusters", r->allocated_clusters);
    }
    if (r->fragmented_clusters) {
        qobj_dict_put_uint(d, "fragmented-clusters", r->fragmented_clusters);
    }
    if (r->compressed_clusters) {
        qobj_dict_put_uint(d, "compressed-clusters", r->compressed_clusters);
    }
    json = qobj_to_json_pretty(d);
    qprintf(quiet, "%s\n", json);
    qobj_free(d);
}

/*
 * Check (and with @fix repair) @img and print the result as qemu-img
 * does; returns qemu-img check's exit status.
 */
static int run_image_check(QGuardImage *img, ImageCheck *check,
                           unsigned fix, OutputFormat ofmt, bool quiet)
{
    int ret = collect_image_check(img, check, fix);

    if (ret == -ENOTSUP) {
        error_report("This image format does not support checks");
        return 63;
    }
    if (check->r.corruptions_fixed || check->r.leaks_fixed) {
        int corruptions_fixed = check->r.corruptions_fixed;
        int leaks_fixed = check->r.leaks_fixed;

        if (ofmt == OFORMAT_HUMAN) {
            qprintf(quiet,
                    "The following inconsistencies were found and "
                    "repaired:\n\n"
                    "    %d leaked clusters\n"
                    "    %d corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    leaks_fixed, corruptions_fixed);
        }
        /* The second pass decides the outcome; it repairs nothing. */
        ret = collect_image_check(img, check, 0);
        check->r.corruptions_fixed = corruptions_fixed;
        check->r.leaks_fixed = leaks_fixed;
    }

    if (!ret) {
        if (ofmt == OFORMAT_JSON) {
            dump_json_image_check(check, quiet);
        } else {
            dump_human_image_check(check, quiet);
        }
    }
    if (ret) {
        error_report("Check failed: %s", g_strerror(-ret));
        return 1;
    } else if (check->r.check_errors) {
        error_report("Check failed");
        return 1;
    }
    return check->r.corruptions ? 2 : check->r.leaks ? 3 : 0;
}

int img_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_FORMAT,
        { "repair", required_argument, NULL, 'r' },
        LONGOPT_OUTPUT,
        LONGOPT_IMAGE_OPTS,
        LONGOPT_FORCE_SHARE,
        LONGOPT_END
    };
    ImgOpts o = { 0 };
    const char *cache = "writeback";
    const char *filename;
    unsigned flags = 0, fix = 0;
    OutputFormat ofmt;
    ImageCheck check = { 0 };
    QGuardImage *img;
    int ret, c;

    /* As qemu-img: opened for a check even without -r. */
    flags |= QGUARD_OPEN_CHECK;

    while ((c = tool_getopt(argc, argv, ":hf:r:T:qU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'r':
            flags |= QGUARD_OPEN_RDWR | QGUARD_OPEN_CHECK;
            if (!strcmp(optarg, "leaks")) {
                fix = QGUARD_CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = QGUARD_CHECK_FIX_LEAKS | QGUARD_CHECK_FIX_ERRORS;
            } else {
                error_exit("Unknown option value for -r "
                           "(expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case 'T':
            cache = optarg;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename_output(argc, argv, &o, &ofmt);
    if (!filename) {
        return 1;
    }
    if (!parse_cache_flags(cache, &flags)) {
        error_report("Invalid source cache option: %s", cache);
        return 1;
    }

    img = img_open_opts(&o, filename, flags);
    if (!img) {
        return 1;
    }
    check.filename = filename;
    check.format = qguard_image_format(img);
    ret = run_image_check(img, &check, fix, ofmt, o.quiet);
    if (img_close(img) < 0 && ret == 0) {
        ret = 1;
    }
    return ret;
}
