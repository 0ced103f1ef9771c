/* SPDX-License-Identifier: MIT */
/*
 * qemu-img snapshot: list, create, apply and delete internal snapshots.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

enum {
    SNAPSHOT_LIST = 1,
    SNAPSHOT_CREATE,
    SNAPSHOT_APPLY,
    SNAPSHOT_DELETE,
};

static void dump_snapshots(QGuardImage *img)
{
    g_autoptr(GString) out = NULL;
    QGuardSnapshotInfo *list = NULL;
    guint count = 0, i;

    if (qguard_snapshot_list(img, &list, &count, NULL) < 0 || !count) {
        g_free(list);
        return;
    }
    out = g_string_new(NULL);
    snapshot_table(out, list, count);
    fputs(out->str, stdout);
    for (i = 0; i < count; i++) {
        qguard_snapshot_info_clear(&list[i]);
    }
    g_free(list);
}

/* qemu-img deletes by name only: find the id of the first match. */
static char *find_snapshot_id_by_name(QGuardImage *img, const char *name)
{
    QGuardSnapshotInfo *list = NULL;
    guint count = 0, i;
    char *id = NULL;

    if (qguard_snapshot_list(img, &list, &count, NULL) < 0) {
        return NULL;
    }
    for (i = 0; i < count; i++) {
        if (!id && list[i].name && !strcmp(list[i].name, name)) {
            id = g_strdup(list[i].id);
        }
        qguard_snapshot_info_clear(&list[i]);
    }
    g_free(list);
    return id;
}

int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GError) err = NULL;
    g_autofree char *id = NULL;
    const char *filename, *snapshot_name = NULL;
    bool image_opts = false, force_share = false;
    unsigned flags = QGUARD_OPEN_RDWR;
    int action = 0;
    QGuardImage *img;
    int ret = 0, c;

    while ((c = tool_getopt(argc, argv, ":la:c:d:hqU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action) {
                error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l' ? SNAPSHOT_LIST :
                     c == 'a' ? SNAPSHOT_APPLY :
                     c == 'c' ? SNAPSHOT_CREATE : SNAPSHOT_DELETE;
            if (c == 'l') {
                flags &= ~QGUARD_OPEN_RDWR;
            } else {
                snapshot_name = optarg;
            }
            break;
        case 'q':
            /* Nothing to silence: snapshot prints only the -l table. */
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[optind];

    img = img_open(image_opts, filename, NULL, flags, force_share);
    if (!img) {
        return 1;
    }

    switch (action) {
    case SNAPSHOT_LIST:
        dump_snapshots(img);
        break;
    case SNAPSHOT_CREATE:
        ret = qguard_snapshot_create(img, snapshot_name, &err);
        if (ret < 0) {
            error_report("Could not create snapshot '%s': %d (%s)",
                         snapshot_name, ret, g_strerror(-ret));
        }
        break;
    case SNAPSHOT_APPLY:
        ret = qguard_snapshot_apply(img, snapshot_name, &err);
        if (ret < 0) {
            error_report("Could not apply snapshot '%s': %s", snapshot_name,
                         gerr_msg(err, ret));
        }
        break;
    case SNAPSHOT_DELETE:
        id = find_snapshot_id_by_name(img, snapshot_name);
        if (!id) {
            error_report("Could not delete snapshot '%s': snapshot not "
                         "found", snapshot_name);
            ret = -ENOENT;
            break;
        }
        ret = qguard_snapshot_delete(img, id, &err);
        if (ret < 0) {
            error_report("Could not delete snapshot '%s': %s", snapshot_name,
                         gerr_msg(err, ret));
        }
        break;
    }

    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
