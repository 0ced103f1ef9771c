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
    }
    qguard_snapshot_list_free(list, count);
    return id;
}

/* Carry out -l, -c, -a or -d; 0 or a negative errno after the message. */
static int snapshot_action(QGuardImage *img, int action, const char *name)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *id = NULL;
    int ret = 0;

    switch (action) {
    case SNAPSHOT_LIST:
        /* As qemu-img, say nothing if the list cannot be read. */
        dump_snapshots(img, NULL);
        break;
    case SNAPSHOT_CREATE:
        ret = qguard_snapshot_create(img, name, &err);
        if (ret < 0) {
            error_report("Could not create snapshot '%s': %d (%s)",
                         name, ret, g_strerror(-ret));
        }
        break;
    case SNAPSHOT_APPLY:
        ret = qguard_snapshot_apply(img, name, &err);
        if (ret < 0) {
            error_report("Could not apply snapshot '%s': %s", name,
                         gerr_msg(err, ret));
        }
        break;
    case SNAPSHOT_DELETE:
        id = find_snapshot_id_by_name(img, name);
        if (!id) {
            error_report("Could not delete snapshot '%s': snapshot not "
                         "found", name);
            return -ENOENT;
        }
        ret = qguard_snapshot_delete(img, id, &err);
        if (ret < 0) {
            error_report("Could not delete snapshot '%s': %s", name,
                         gerr_msg(err, ret));
        }
        break;
    }
    return ret;
}

int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_IMAGE_OPTS,
        LONGOPT_FORCE_SHARE,
        LONGOPT_END
    };
    /* -q: nothing to silence, snapshot prints only the -l table. */
    ImgOpts o = { 0 };
    const char *filename, *snapshot_name = NULL;
    unsigned flags = QGUARD_OPEN_RDWR;
    int action = 0;
    QGuardImage *img;
    int ret, c;

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
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename(argc, argv);

    img = img_open_opts(&o, filename, flags);
    if (!img) {
        return 1;
    }

    ret = snapshot_action(img, action, snapshot_name);
    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
