/* SPDX-License-Identifier: MIT */
/*
 * Image information as both tools print it.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "tool-info.h"

QObj *qcow2_format_specific_qobj(const QGuardImageInfo *info)
{
    QObj *data = qobj_dict_new();
    guint i;

    qobj_dict_put_str(data, "compat", info->compat ? info->compat : "");
    if (info->data_file) {
        qobj_dict_put_str(data, "data-file", info->data_file);
    }
    if (info->has_data_file) {
        qobj_dict_put_bool(data, "data-file-raw", info->data_file_raw);
    }
    if (info->compat && strcmp(info->compat, "0.10")) {
        qobj_dict_put_bool(data, "lazy-refcounts", info->lazy_refcounts);
        qobj_dict_put_bool(data, "corrupt", info->corrupt);
        qobj_dict_put_bool(data, "extended-l2", info->extended_l2);
    }
    qobj_dict_put_int(data, "refcount-bits", info->refcount_bits);
    if (info->nb_bitmaps) {
        QObj *list = qobj_list_new();

        for (i = 0; i < info->nb_bitmaps; i++) {
            const QGuardBitmapInfo *bm = &info->bitmaps[i];
            QObj *entry = qobj_dict_new();
            QObj *flags = qobj_list_new();

            qobj_dict_put_str(entry, "name", bm->name);
            qobj_dict_put_uint(entry, "granularity", bm->granularity);
            if (bm->in_use) {
                qobj_list_append(flags, qobj_string_new("in-use"));
            }
            if (bm->is_auto) {
                qobj_list_append(flags, qobj_string_new("auto"));
            }
            qobj_dict_put(entry, "flags", flags);
            qobj_list_append(list, entry);
        }
        qobj_dict_put(data, "bitmaps", list);
    }
    qobj_dict_put_str(data, "compression-type",
                      info->compression_type ? info->compression_type
                                             : "zlib");
    return data;
}

/* One row of qemu's snapshot table (bdrv_snapshot_dump), or its header. */
static void snapshot_dump(GString *out, const QGuardSnapshotInfo *sn)
{
    g_autoptr(GDateTime) date = NULL;
    g_autofree char *date_str = NULL;
    g_autofree char *vm_size = NULL;
    char clock_buf[64];
    char icount_buf[32] = "";
    uint64_t secs;

    if (!sn) {
        g_string_append_printf(out, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG",
                               "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        return;
    }
    date = g_date_time_new_from_unix_local(sn->date_sec);
    date_str = date ? g_date_time_format(date, "%Y-%m-%d %H:%M:%S")
                    : g_strdup("");
    secs = sn->vm_clock_nsec / 1000000000;
    snprintf(clock_buf, sizeof(clock_buf), "%02d:%02d:%02d.%03d",
             (int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    vm_size = qguard_size_to_str(sn->vm_state_size);
    if (sn->icount != UINT64_MAX) {
        snprintf(icount_buf, sizeof(icount_buf), "%" PRId64,
                 (int64_t)sn->icount);
    }
    g_string_append_printf(out, "%-9s %-16s %8s%20s%13s%11s",
                           sn->id ? sn->id : "", sn->name ? sn->name : "",
                           vm_size, date_str, clock_buf, icount_buf);
}

void snapshot_table(GString *out, const QGuardSnapshotInfo *sns,
                    guint count)
{
    guint i;

    g_string_append(out, "Snapshot list:\n");
    snapshot_dump(out, NULL);
    g_string_append_c(out, '\n');
    for (i = 0; i < count; i++) {
        snapshot_dump(out, &sns[i]);
        g_string_append_c(out, '\n');
    }
}

int dump_snapshots(QGuardImage *img, GError **errp)
{
    g_autoptr(GString) out = g_string_new(NULL);
    QGuardSnapshotInfo *list = NULL;
    guint count = 0;
    int ret;

    ret = qguard_snapshot_list(img, &list, &count, errp);
    if (ret < 0) {
        return ret;
    }
    if (count) {
        snapshot_table(out, list, count);
        fputs(out->str, stdout);
    }
    qguard_snapshot_list_free(list, count);
    return 0;
}
