/* SPDX-License-Identifier: MIT */
/*
 * The VM state area of qcow2 internal snapshots.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * QEMU's savevm keeps the VM state in the image's own clusters, at guest
 * offsets past the disk: from the first L1 entry that no part of the disk
 * uses (qcow2_vm_state_offset() in QEMU).  The active L1 table grows to
 * reach them, and a snapshot's copy of it keeps them.  Only the active L1
 * table tells where they are, so they are read and written like guest
 * data, without the bounds of the disk and without marking dirty bitmaps,
 * which track the disk alone (QEMU bypasses them the same way).
 */
#include "qcow2.h"

static int vm_state_offset(BDRVQcow2State *s, uint64_t pos, uint64_t bytes,
                           uint64_t *offset)
{
    int shift = s->cluster_bits + s->l2_bits;
    /* QEMU counts whole sectors of the disk. */
    uint64_t start = size_to_l1(s, s->img->total_size & ~511ULL) << shift;

    /* Past what an L1 table can describe: QEMU's grow would refuse it. */
    if (pos > QCOW_MAX_L1_SIZE / 8 * (1ULL << shift) ||
        bytes > UINT64_MAX - start - pos) {
        return -EFBIG;
    }
    *offset = start + pos;
    return 0;
}

int qcow2_load_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                       void *buf, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t offset;
    int ret = vm_state_offset(s, pos, bytes, &offset);

    if (ret >= 0) {
        ret = qcow2_read_guest(s, offset, bytes, buf);
    }
    return qcow2_error_propagate(ret, errp);
}

int qcow2_save_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                       const void *buf, unsigned flags, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    uint64_t offset;
    int ret = vm_state_offset(s, pos, bytes, &offset);

    if (ret < 0) {
        return qcow2_error_propagate(ret, errp);
    }
    ret = qcow2_write_guest(s, offset, bytes, buf);
    if (ret >= 0 && (flags & QGUARD_WRITE_FUA)) {
        g_mutex_lock(&s->meta_lock);
        ret = qcow2_flush_metadata(s);
        g_mutex_unlock(&s->meta_lock);
    }
    return qcow2_error_propagate(ret, errp);
}
