/* SPDX-License-Identifier: MIT */
/*
 * Image information as both tools print it.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <string.h>

#include "tool-info.h"

QObj *qcow2_format_specific_qobj(const QGuardImageInfo *info)
{
    QObj *data = qobj_dict_new();
    guint i;

    qobj_dict_put_str(data, "compat", info->compat ? info->compat : "");
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
