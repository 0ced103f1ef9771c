/* SPDX-License-Identifier: MIT */
/*
 * Image information as both tools print it.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_TOOL_INFO_H
#define QGUARD_TOOL_INFO_H

#include "qguard.h"
#include "qobject.h"

/*
 * The qcow2 "Format specific information" (qemu-img info, its JSON "data"
 * member, and qemu-io's info command).
 */
QObj *qcow2_format_specific_qobj(const QGuardImageInfo *info);

/* "Snapshot list:" and the table of snapshots (info, snapshot -l). */
void snapshot_table(GString *out, const QGuardSnapshotInfo *sns,
                    guint count);
/*
 * qemu-img snapshot -l: the table of @img's snapshots on stdout, nothing
 * if there are none.  0, or a negative errno with @errp set.
 */
int dump_snapshots(QGuardImage *img, GError **errp);

#endif /* QGUARD_TOOL_INFO_H */
