/* SPDX-License-Identifier: MIT */
/*
 * Internal snapshots from qemu-io: snapshot_create, snapshot_apply,
 * snapshot_delete and snapshot_list.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "io.h"

static const char snapshot_help[] =
"\n"
" manages the internal snapshots of a qcow2 image\n"
"\n"
" Example:\n"
" 'snapshot_create before' then 'snapshot_apply before' - undoes the\n"
" writes made in between\n"
"\n"
" snapshot_create NAME  records the current disk state as NAME\n"
" snapshot_apply NAME   reverts the disk to the snapshot with that ID or name\n"
" snapshot_delete NAME  removes the snapshot with that ID or name\n"
" snapshot_list         lists the snapshots as 'qemu-img snapshot -l' does\n"
"\n";

static int snapshot_op(const char *what, const char *name,
                       int (*fn)(QGuardImage *, const char *, GError **))
{
    g_autoptr(GError) err = NULL;
    int ret;

    aio_deliver_reports();
    ret = fn(image, name, &err);
    if (ret < 0) {
        g_autofree char *prefix = g_strdup_printf("Could not %s snapshot '%s'",
                                                  what, name);

        error_report_err(prefix, err, ret);
    }
    return ret;
}

static int snapshot_create_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("create", argv[1], qguard_snapshot_create);
}

static int snapshot_apply_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("apply", argv[1], qguard_snapshot_apply);
}

static int snapshot_delete_f(int argc, char **argv)
{
    (void)argc;
    return snapshot_op("delete", argv[1], qguard_snapshot_delete);
}

static int snapshot_list_f(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    int ret;

    (void)argc;
    (void)argv;
    ret = dump_snapshots(image, &err);
    if (ret < 0) {
        error_report_err("Could not list snapshots", err, ret);
    }
    return ret;
}

const Command snapshot_apply_cmd = {
    .name = "snapshot_apply", .func = snapshot_apply_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "reverts the image to an internal snapshot",
    .help = snapshot_help,
};

const Command snapshot_create_cmd = {
    .name = "snapshot_create", .func = snapshot_create_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "creates an internal snapshot of the image",
    .help = snapshot_help,
};

const Command snapshot_delete_cmd = {
    .name = "snapshot_delete", .func = snapshot_delete_f,
    .argmin = 1, .argmax = 1, .flags = CMD_WRITE,
    .args = "name",
    .oneline = "deletes an internal snapshot",
    .help = snapshot_help,
};

const Command snapshot_list_cmd = {
    .name = "snapshot_list", .func = snapshot_list_f,
    .oneline = "lists the internal snapshots of the image",
    .help = snapshot_help,
};
