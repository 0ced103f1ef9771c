/* SPDX-License-Identifier: MIT */
/*
 * qcow2: the snapshot table under qemu-img check.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * An image whose snapshot table cannot be read (too many entries, too much
 * extra data in one, a table past the size limit) is refused by a normal
 * open but must still be checkable and repairable, as in QEMU: opened for
 * a check, such a table is left unread (s->snapshots_unread) and read here
 * instead.  A plain check reports it as an error; check -r all cuts what
 * is too much, writes the snapshot count back at once (the refcount check
 * then finds what the dropped entries used as leaks) and, after the
 * refcount check, writes the repaired table.  v3 entries with less than
 * 16 bytes of extra data are incomplete; the repair writes them whole.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>

#include "qcow2.h"

/* Extra data every v3 entry must have: vm_state_size_large, disk_size. */
#define SNAPSHOT_EXTRA_V3_MIN 16

void qcow2_report(QGuardReportFunc *report, void *opaque, const char *fmt,
                  ...)
{
    g_autofree char *line = NULL;
    va_list ap;

    if (!report) {
        return;
    }
    va_start(ap, fmt);
    line = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    report(opaque, line);
}

/* Read the table the open left unread; counts what a repair cuts. */
static int read_unread_table(BDRVQcow2State *s, QGuardCheckResult *res,
                             unsigned fix, QGuardReportFunc *report,
                             void *opaque, GError **errp)
{
    bool repair = fix & QGUARD_CHECK_FIX_ERRORS;
    g_autoptr(GError) local_err = NULL;
    int reduced = 0, dropped = 0;
    uint64_t overhang = 0, cut;
    uint8_t ptr[12];
    uint32_t nb;
    int ret;

    ret = host_file_pread(s->file, 60, ptr, sizeof(ptr));
    if (ret < 0) {
        res->check_errors++;
        qcow2_report(report, opaque, "ERROR failed to read the snapshot "
                     "table pointer from the image header: %s",
                     g_strerror(-ret));
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
        return ret;
    }
    nb = be_get32(ptr);
    s->snapshots_offset = be_get64(ptr + 4);
    if (nb > QCOW_MAX_SNAPSHOTS && repair) {
        qcow2_report(report, opaque, "Discarding %u overhanging snapshots",
                     nb - QCOW_MAX_SNAPSHOTS);
        overhang = nb - QCOW_MAX_SNAPSHOTS;
        nb = QCOW_MAX_SNAPSHOTS;
    }
    ret = qcow2_validate_table(s, s->snapshots_offset, nb, 40,
                               40 * QCOW_MAX_SNAPSHOTS, "snapshot table",
                               &local_err);
    if (ret < 0) {
        res->check_errors++;
        if (nb > QCOW_MAX_SNAPSHOTS) {
            g_set_error(errp, QGUARD_CHECK_ERROR, -ret, "ERROR %s\nYou can "
                        "force-remove all %u overhanging snapshots with "
                        "qemu-img check -r all\n", local_err->message,
                        nb - QCOW_MAX_SNAPSHOTS);
        } else {
            g_set_error(errp, QGUARD_CHECK_ERROR, -ret, "ERROR %s",
                        local_err->message);
        }
        s->snapshots_offset = 0;
        return ret;
    }

    s->nb_snapshots = nb;
    ret = qcow2_do_read_snapshots(s, repair, &reduced, &dropped, report,
                                  opaque, &local_err);
    if (ret < 0) {
        res->check_errors++;
        g_set_error(errp, QGUARD_CHECK_ERROR, -ret,
                    "ERROR failed to read the snapshot table: %s",
                    local_err->message);
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        return ret;
    }
    s->snapshots_unread = false;
    /* A table read only now enters the overlap map as an open's would. */
    qcow2_map_snapshot_tables(s);
    cut = overhang + reduced;
    res->corruptions = qcow2_count_add(res->corruptions, cut + dropped);

    if (cut) {
        uint8_t count[4];

        /*
         * The refcount check counts what the header names: the dropped
         * entries' clusters become leaks it repairs.
         */
        be_put32(count, s->nb_snapshots);
        ret = qcow2_write_header_field(s, 60, count, sizeof(count));
        if (ret < 0) {
            res->check_errors++;
            qcow2_report(report, opaque, "ERROR failed to update the snapshot "
                         "count in the image header: %s", g_strerror(-ret));
            g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
            return ret;
        }
        res->corruptions_fixed = qcow2_count_add(res->corruptions_fixed, cut);
        res->corruptions -= MIN(cut, (uint64_t)res->corruptions);
    }
    return 0;
}

int qcow2_check_read_snapshot_table(BDRVQcow2State *s, QGuardCheckResult *res,
                                    unsigned fix, QGuardReportFunc *report,
                                    void *opaque, GError **errp)
{
    uint32_t i;
    int ret;

    if (s->snapshots_unread) {
        ret = read_unread_table(s, res, fix, report, opaque, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->qcow_version >= 3) {
        for (i = 0; i < s->nb_snapshots; i++) {
            if (s->snapshots[i].extra_data_size < SNAPSHOT_EXTRA_V3_MIN) {
                res->corruptions++;
                qcow2_report(report, opaque, "%s snapshot table entry %u is "
                             "incomplete", fix & QGUARD_CHECK_FIX_ERRORS ?
                             "Repairing" : "ERROR", i);
            }
        }
    }
    return 0;
}

/* Writing the table writes every entry whole and drops what was cut. */
int qcow2_check_fix_snapshot_table(BDRVQcow2State *s, QGuardCheckResult *res,
                                   unsigned fix, QGuardReportFunc *report,
                                   void *opaque, GError **errp)
{
    int ret;

    if (!res->corruptions || !(fix & QGUARD_CHECK_FIX_ERRORS)) {
        return 0;
    }
    ret = qcow2_write_snapshots(s);
    if (ret < 0) {
        res->check_errors++;
        qcow2_report(report, opaque, "ERROR failed to update snapshot table: "
                     "%s", g_strerror(-ret));
        g_set_error(errp, QGUARD_ERROR, -ret, "%s", g_strerror(-ret));
        return ret;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return 0;
}
