/* SPDX-License-Identifier: MIT */
/*
 * qemu-img info: what an image (and its backing chain) is.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

static QObj *snapshot_to_qobj(const QGuardSnapshotInfo *sn)
{
    QObj *d = qobj_dict_new();

    qobj_dict_put_str(d, "id", sn->id ? sn->id : "");
    qobj_dict_put_str(d, "name", sn->name ? sn->name : "");
    qobj_dict_put_uint(d, "vm-state-size", sn->vm_state_size);
    qobj_dict_put_int(d, "date-sec", sn->date_sec);
    qobj_dict_put_int(d, "date-nsec", sn->date_nsec);
    qobj_dict_put_int(d, "vm-clock-sec", sn->vm_clock_nsec / 1000000000);
    qobj_dict_put_int(d, "vm-clock-nsec", sn->vm_clock_nsec % 1000000000);
    if (sn->icount != UINT64_MAX) {
        qobj_dict_put_uint(d, "icount", sn->icount);
    }
    return d;
}

/* qemu-img's ImageInfo as a value tree, for --output=json. */
static QObj *image_info_to_qobj(const QGuardImageInfo *info)
{
    QObj *d = qobj_dict_new();
    guint i;

    qobj_dict_put_str(d, "filename", info->filename);
    qobj_dict_put_str(d, "format", info->format);
    qobj_dict_put_bool(d, "dirty-flag", info->dirty_flag);
    if (info->actual_size >= 0) {
        qobj_dict_put_int(d, "actual-size", info->actual_size);
    }
    qobj_dict_put_uint(d, "virtual-size", info->virtual_size);
    if (info->cluster_size) {
        qobj_dict_put_uint(d, "cluster-size", info->cluster_size);
    }
    if (info->encrypted) {
        qobj_dict_put_bool(d, "encrypted", true);
    }
    if (info->backing_filename) {
        qobj_dict_put_str(d, "backing-filename", info->backing_filename);
        if (info->full_backing_filename) {
            qobj_dict_put_str(d, "full-backing-filename",
                              info->full_backing_filename);
        }
        if (info->backing_format) {
            qobj_dict_put_str(d, "backing-filename-format",
                              info->backing_format);
        }
    }
    if (info->nb_snapshots) {
        QObj *list = qobj_list_new();

        for (i = 0; i < info->nb_snapshots; i++) {
            qobj_list_append(list, snapshot_to_qobj(&info->snapshots[i]));
        }
        qobj_dict_put(d, "snapshots", list);
    }
    if (info->is_qcow2) {
        QObj *spec = qobj_dict_new();

        qobj_dict_put_str(spec, "type", "qcow2");
        qobj_dict_put(spec, "data", qcow2_format_specific_qobj(info));
        qobj_dict_put(d, "format-specific", spec);
    }
    return d;
}

static void dump_human_image_info(GString *out, const QGuardImageInfo *info)
{
    g_autofree char *vsize = qguard_size_to_str(info->virtual_size);
    g_autofree char *dsize = info->actual_size >= 0 ?
                             qguard_size_to_str(info->actual_size) :
                             g_strdup("unavailable");

    g_string_append_printf(out, "image: %s\n"
                           "file format: %s\n"
                           "virtual size: %s (%" PRIu64 " bytes)\n"
                           "disk size: %s\n",
                           info->filename, info->format, vsize,
                           info->virtual_size, dsize);
    if (info->encrypted) {
        g_string_append(out, "encrypted: yes\n");
    }
    if (info->cluster_size) {
        g_string_append_printf(out, "cluster_size: %" PRIu32 "\n",
                               info->cluster_size);
    }
    if (info->dirty_flag) {
        g_string_append(out, "cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        g_string_append_printf(out, "backing file: %s",
                               info->backing_filename);
        if (!info->full_backing_filename) {
            g_string_append(out, " (cannot determine actual path)");
        } else if (strcmp(info->backing_filename,
                          info->full_backing_filename)) {
            g_string_append_printf(out, " (actual path: %s)",
                                   info->full_backing_filename);
        }
        g_string_append_c(out, '\n');
        if (info->backing_format) {
            g_string_append_printf(out, "backing file format: %s\n",
                                   info->backing_format);
        }
    }
    if (info->nb_snapshots) {
        snapshot_table(out, info->snapshots, info->nb_snapshots);
    }
    if (info->is_qcow2) {
        QObj *data = qcow2_format_specific_qobj(info);

        g_string_append(out, "Format specific information:\n");
        qobj_dump_human(out, 1, data);
        qobj_free(data);
    }
}

static void free_info_list(GPtrArray *list)
{
    guint i;

    for (i = 0; i < list->len; i++) {
        qguard_image_info_free(g_ptr_array_index(list, i));
    }
    g_ptr_array_free(list, TRUE);
}

/*
 * Like qemu-img, --backing-chain opens each image on its own (without its
 * backing file) and follows the backing file names, so a broken link is
 * reported with the name of the file that is missing and loops are caught
 * by name.
 */
static GPtrArray *collect_image_info_list(const ImgOpts *o,
                                          const char *filename, bool chain)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal,
                                                       g_free, NULL);
    GPtrArray *list = g_ptr_array_new();
    g_autofree char *next_name = g_strdup(filename);
    g_autofree char *next_fmt = g_strdup(o->fmt);
    bool first = true;

    while (next_name) {
        g_autoptr(GError) err = NULL;
        QGuardImageInfo *info;
        QGuardImage *img;

        if (g_hash_table_contains(seen, next_name)) {
            error_report("Backing file '%s' creates an infinite loop.",
                         next_name);
            goto fail;
        }
        g_hash_table_add(seen, g_strdup(next_name));

        /* As qemu-img 7.2: described only, so no external data file. */
        img = img_open(o->image_opts && first, next_name, next_fmt,
                       QGUARD_OPEN_NO_BACKING | QGUARD_OPEN_NO_IO,
                       o->force_share);
        if (!img) {
            goto fail;
        }
        if (qguard_image_get_info(img, &info, &err) < 0) {
            error_report("%s", gerr_msg(err, -EIO));
            qguard_image_close(img, NULL);
            goto fail;
        }
        qguard_image_close(img, NULL);
        g_ptr_array_add(list, info);
        first = false;

        g_clear_pointer(&next_name, g_free);
        g_clear_pointer(&next_fmt, g_free);
        if (chain) {
            if (info->full_backing_filename) {
                next_name = g_strdup(info->full_backing_filename);
            } else if (info->backing_filename) {
                error_report("Could not determine absolute backing filename,"
                             " but backing filename '%s' present",
                             info->backing_filename);
                goto fail;
            }
            next_fmt = g_strdup(info->backing_format);
        }
    }
    return list;

fail:
    free_info_list(list);
    return NULL;
}

int img_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_FORMAT,
        LONGOPT_OUTPUT,
        { "backing-chain", no_argument, NULL, OPTION_BACKING_CHAIN },
        LONGOPT_IMAGE_OPTS,
        LONGOPT_FORCE_SHARE,
        LONGOPT_END
    };
    ImgOpts o = { 0 };
    const char *filename;
    bool chain = false;
    OutputFormat ofmt;
    GPtrArray *list;
    guint i;
    int c;

    while ((c = tool_getopt(argc, argv, ":f:hU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case OPTION_BACKING_CHAIN:
            chain = true;
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename_output(argc, argv, &o, &ofmt);
    if (!filename) {
        return 1;
    }

    list = collect_image_info_list(&o, filename, chain);
    if (!list) {
        return 1;
    }
    if (ofmt == OFORMAT_JSON) {
        QObj *obj;
        g_autofree char *json = NULL;

        if (chain) {
            obj = qobj_list_new();
            for (i = 0; i < list->len; i++) {
                qobj_list_append(obj, image_info_to_qobj(
                                          g_ptr_array_index(list, i)));
            }
        } else {
            obj = image_info_to_qobj(g_ptr_array_index(list, 0));
        }
        json = qobj_to_json_pretty(obj);
        printf("%s\n", json);
        qobj_free(obj);
    } else {
        g_autoptr(GString) out = g_string_new(NULL);

        for (i = 0; i < list->len; i++) {
            if (i) {
                g_string_append_c(out, '\n');
            }
            dump_human_image_info(out, g_ptr_array_index(list, i));
        }
        fputs(out->str, stdout);
    }
    free_info_list(list);
    return 0;
}
