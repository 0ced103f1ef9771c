/* SPDX-License-Identifier: MIT */
/*
 * qcow2 amend: changing the options of an existing image (qemu-img amend).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The operations run in QEMU's order (upgrade, refcount width, header,
 * lazy refcounts, size, downgrade), with QEMU's checks and messages, so
 * that a combination either tool refuses is refused by both.
 *
 * Each step leaves a valid image behind if it is interrupted:
 *
 *   - A downgrade first turns every zero cluster into something a v2
 *     reader understands (an unallocated cluster, or a data cluster of
 *     zeros that is written and refcounted before the L2 entry names it),
 *     flushes everything, and only then writes the version 2 header.
 *   - A new refcount width is written as a complete second set of refcount
 *     structures in clusters the old set counts as used; one header write
 *     switches to it (qcow2-refcount-order.c).  Either set describes the
 *     image; the one left over is a leak at worst.
 *   - Lazy refcounts are switched off only after the image is clean.
 */
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "qcow2.h"

typedef struct AmendOpt {
    const char *name;
    BlockOptType type;
    const char *help;
} AmendOpt;

/* QEMU's amend options, in the order in which it applies them. */
static const AmendOpt amend_opts[] = {
    { "encrypt.state", OPT_STRING,
      "Select new state of affected keyslots (active/inactive)" },
    { "encrypt.keyslot", OPT_NUMBER,
      "Select a single keyslot to modify explicitly" },
    { "encrypt.old-secret", OPT_STRING,
      "Select all keyslots that match this password" },
    { "encrypt.new-secret", OPT_STRING,
      "New secret to set in the matching keyslots. Empty string to erase" },
    { "encrypt.iter-time", OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds" },
    { "size", OPT_SIZE, "Virtual disk size" },
    { "compat", OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])" },
    { "backing_file", OPT_STRING, "File name of a base image" },
    { "backing_fmt", OPT_STRING, "Image format of the base image" },
    { "data_file", OPT_STRING, "File name of an external data file" },
    { "data_file_raw", OPT_BOOL,
      "The external data file must stay valid as a raw image" },
    { "lazy_refcounts", OPT_BOOL, "Postpone refcount updates" },
    { "refcount_bits", OPT_NUMBER, "Width of a reference count entry in bits" },
};

static const AmendOpt *find_amend_opt(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(amend_opts); i++) {
        if (!strcmp(amend_opts[i].name, name)) {
            return &amend_opts[i];
        }
    }
    return NULL;
}

static int compare_opt_names(const void *a, const void *b)
{
    return strcmp((*(const AmendOpt *const *)a)->name,
                  (*(const AmendOpt *const *)b)->name);
}

char *qcow2_amend_help(void)
{
    static const char *const types[] = {
        [OPT_STRING] = "str", [OPT_SIZE] = "size",
        [OPT_NUMBER] = "num", [OPT_BOOL] = "bool (on/off)",
    };
    const AmendOpt *sorted[G_N_ELEMENTS(amend_opts)];
    GString *str = g_string_new("Amend options for 'qcow2':\n");
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(amend_opts); i++) {
        sorted[i] = &amend_opts[i];
    }
    qsort(sorted, G_N_ELEMENTS(sorted), sizeof(sorted[0]), compare_opt_names);
    for (i = 0; i < G_N_ELEMENTS(sorted); i++) {
        g_autofree char *left = g_strdup_printf("%s=<%s>", sorted[i]->name,
                                                types[sorted[i]->type]);
        g_string_append_printf(str, "  %-22s - %s\n", left, sorted[i]->help);
    }
    return g_string_free(str, FALSE);
}

/*
 * Would the options parse as creation options?  Then the user gets QEMU's
 * hint that they only work at creation.
 */
static bool valid_as_create_opts(const QGuardOpts *opts)
{
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        const AmendOpt *opt = find_amend_opt(key);
        int type = opt ? (int)opt->type : qcow2_create_opt_type(key);

        if (type < 0 ||
            !qguard_check_opt_syntax(key, qguard_opts_value(opts, i), type,
                                     NULL)) {
            return false;
        }
    }
    return true;
}

static bool check_amend_syntax(const QGuardOpts *opts, GError **errp)
{
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        const AmendOpt *opt = find_amend_opt(key);

        if (!opt) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Invalid parameter '%s'%s", key,
                        valid_as_create_opts(opts) ?
                        "\nThis option is only supported for image creation\n"
                        : "");
            return false;
        }
        if (!qguard_check_opt_syntax(key, qguard_opts_value(opts, i),
                                    opt->type, errp)) {
            return false;
        }
    }
    return true;
}

/* ---- Progress over several operations ------------------------------------ */

/*
 * QEMU reports the progress of each operation as (done, total) and scales
 * it onto the whole amend, projecting the size of the operations still to
 * come from the ones seen so far; the same arithmetic gives the same
 * percentages.
 */
typedef struct AmendProgress {
    QGuardProgressFunc *fn;
    void *opaque;
    int total_operations;
    int current_operation;      /* 0: none yet */
    int last_operation;
    int operations_completed;
    int64_t offset_completed;
    int64_t last_work_size;
} AmendProgress;

static void amend_progress(AmendProgress *p, int64_t offset, int64_t work)
{
    int64_t current, projected;

    if (p->current_operation != p->last_operation) {
        if (p->last_operation) {
            p->offset_completed += p->last_work_size;
            p->operations_completed++;
        }
        p->last_operation = p->current_operation;
    }
    if (p->total_operations <= p->operations_completed) {
        return;
    }
    p->last_work_size = work;
    current = p->offset_completed + work;
    projected = current * (p->total_operations - p->operations_completed - 1) /
                (p->operations_completed + 1);
    if (p->fn && current + projected > 0) {
        p->fn(p->opaque, 100.0 * (p->offset_completed + offset) /
                         (current + projected));
    }
}

static void refcount_order_progress(void *opaque, int64_t done, int64_t total)
{
    amend_progress(opaque, done, total);
}

/* ---- Upgrade and downgrade ----------------------------------------------- */

/* A v3 snapshot entry records the large VM state size and the disk size. */
#define SNAPSHOT_EXTRA_V3 16

static int qcow2_upgrade(BDRVQcow2State *s, AmendProgress *p, GError **errp)
{
    uint32_t old_header_length = s->header_length;
    uint32_t i;
    int ret;

    amend_progress(p, 0, 2);
    for (i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].extra_data_size < SNAPSHOT_EXTRA_V3) {
            break;
        }
    }
    if (i < s->nb_snapshots) {
        /* The table is always written in the v3 layout. */
        ret = qcow2_write_snapshots(s);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to update the snapshot table");
        }
    }
    amend_progress(p, 1, 2);

    s->qcow_version = 3;
    s->header_length = QCOW2_V3_HEADER_LENGTH;
    ret = qcow2_update_header(s);
    if (ret < 0) {
        s->qcow_version = 2;
        s->header_length = old_header_length;
        return bdrv_error_errno(errp, ret, "Failed to update the image header");
    }
    amend_progress(p, 2, 2);
    return 0;
}

typedef struct OldCluster {
    uint64_t offset;
    uint64_t refs;
} OldCluster;

typedef struct ZeroTarget {
    int index;                  /* in the L2 table */
    uint64_t host;              /* 0: needs a new cluster */
} ZeroTarget;

static int compare_targets(const void *a, const void *b)
{
    uint64_t x = ((const ZeroTarget *)a)->host;
    uint64_t y = ((const ZeroTarget *)b)->host;

    return x < y ? -1 : x > y;
}

/* Write zeros over the (sorted) clusters, one request per contiguous run. */
static int write_zero_clusters(BDRVQcow2State *s, const ZeroTarget *t,
                               int n, const uint8_t *zeros)
{
    enum { MAX_IOV = 1024 };
    struct iovec *iov = g_new(struct iovec, MIN(n, MAX_IOV));
    int i = 0, ret = 0;

    while (i < n) {
        int run = 1;

        iov[0].iov_base = (void *)zeros;
        iov[0].iov_len = s->cluster_size;
        while (i + run < n && run < MAX_IOV &&
               t[i + run].host == t[i].host +
                                  ((uint64_t)run << s->cluster_bits)) {
            iov[run].iov_base = (void *)zeros;
            iov[run].iov_len = s->cluster_size;
            run++;
        }
        ret = qcow2_pwritev_checked(s, 0, t[i].host, iov, run,
                                    (uint64_t)run << s->cluster_bits);
        if (ret < 0) {
            break;
        }
        i += run;
    }
    g_free(iov);
    return ret;
}

/*
 * Turn the zero clusters of one L2 table (@l2, in memory) into clusters a
 * v2 reader understands.  An unbacked image simply forgets them; otherwise
 * each gets a data cluster of zeros: its own preallocated cluster, unless
 * another table shares that one (then writing zeros into it would change
 * the other table's data), or a new one.  Clusters whose last reference
 * from this table goes away are added to @old, to be freed once the table
 * is on disk.  *@changed says whether @l2 was modified.
 */
static int expand_zeros_in_l2(BDRVQcow2State *s, uint8_t *l2,
                              uint64_t l2_offset, uint64_t l2_refcount,
                              const uint8_t *zeros, GArray *old,
                              bool *changed)
{
    bool backed = s->image_backing_file != NULL;
    g_autofree ZeroTarget *targets = g_new(ZeroTarget, s->l2_size);
    g_autofree uint64_t *old_host = g_new0(uint64_t, s->l2_size);
    int n = 0, n_new = 0, i, j;
    int ret = 0;

    for (j = 0; j < s->l2_size; j++) {
        uint64_t entry = l2_get(s, l2, j);
        QCow2ClusterType type = qcow2_get_cluster_type(s, entry);
        uint64_t host = entry & L2E_OFFSET_MASK;
        uint64_t refcount;

        if (type == QCOW2_CLUSTER_ZERO_PLAIN && !backed) {
            l2_set(s, l2, j, 0);
            *changed = true;
            continue;
        }
        if (type == QCOW2_CLUSTER_ZERO_PLAIN) {
            targets[n].index = j;
            targets[n++].host = 0;
            n_new++;
            continue;
        }
        if (type != QCOW2_CLUSTER_ZERO_ALLOC) {
            continue;
        }
        if (offset_into_cluster(s, host)) {
            qcow2_signal_corruption(s, true, -1, -1, "Cluster allocation "
                                    "offset %#" PRIx64 " unaligned (L2 "
                                    "offset: %#" PRIx64 ", L2 index: %#x)",
                                    host, l2_offset, j);
            return -EIO;
        }
        ret = qcow2_get_refcount(s, host >> s->cluster_bits, &refcount);
        if (ret < 0) {
            return ret;
        }
        targets[n].index = j;
        if (refcount > l2_refcount) {
            old_host[j] = host;
            targets[n++].host = 0;
            n_new++;
        } else {
            targets[n++].host = host;
        }
    }
    if (!n) {
        return 0;
    }

    /* New clusters, in runs, counted once for every table sharing @l2. */
    for (i = 0; i < n && n_new; ) {
        uint64_t got, k;
        int64_t first;

        if (targets[i].host) {
            i++;
            continue;
        }
        first = qcow2_alloc_clusters(s, n_new, &got);
        if (first < 0) {
            ret = first;
            goto fail;
        }
        if (l2_refcount > 1) {
            ret = qcow2_update_refcount(s, first, got << s->cluster_bits,
                                        l2_refcount - 1, false,
                                        QCOW2_DISCARD_NEVER);
            if (ret < 0) {
                qcow2_free_clusters(s, first, got << s->cluster_bits,
                                    QCOW2_DISCARD_NEVER);
                goto fail;
            }
        }
        for (k = 0; k < got; i++) {
            if (!targets[i].host) {
                targets[i].host = first + (k++ << s->cluster_bits);
                n_new--;
            }
        }
    }

    qsort(targets, n, sizeof(targets[0]), compare_targets);
    ret = write_zero_clusters(s, targets, n, zeros);
    if (ret < 0) {
        goto fail;
    }
    for (i = 0; i < n; i++) {
        int idx = targets[i].index;

        l2_set(s, l2, idx, targets[i].host |
                        (l2_refcount == 1 ? QCOW_OFLAG_COPIED : 0));
        if (old_host[idx]) {
            OldCluster oc = { old_host[idx], l2_refcount };
            g_array_append_val(old, oc);
        }
    }
    *changed = true;
    return 0;

fail:
    /* Give back what this table was going to use; it still names none. */
    for (i = 0; i < n; i++) {
        uint64_t entry = l2_get(s, l2, targets[i].index);
        if (targets[i].host &&
            targets[i].host != (entry & L2E_OFFSET_MASK)) {
            qcow2_update_refcount(s, targets[i].host, s->cluster_size,
                                  l2_refcount, true, QCOW2_DISCARD_NEVER);
        }
    }
    return ret;
}

static int free_old_clusters(BDRVQcow2State *s, GArray *old)
{
    guint i;
    int ret = 0;

    for (i = 0; i < old->len && ret >= 0; i++) {
        OldCluster *oc = &g_array_index(old, OldCluster, i);
        ret = qcow2_update_refcount(s, oc->offset, s->cluster_size, oc->refs,
                                    true, QCOW2_DISCARD_OTHER);
    }
    g_array_set_size(old, 0);
    return ret;
}

/*
 * Tables reached from the active L1 go through the L2 cache: the cache
 * writes them after the new refcounts and after a flush that makes the
 * zeros durable.  Snapshot tables are read and written directly, with the
 * same order enforced by explicit flushes.
 */
static int expand_zeros_in_l1(BDRVQcow2State *s, const uint64_t *l1,
                              uint32_t l1_size, bool active, int64_t *visited,
                              int64_t total, AmendProgress *p)
{
    g_autofree uint8_t *zeros = g_malloc0(s->cluster_size);
    g_autofree uint8_t *buf = active ? NULL : g_malloc(s->cluster_size);
    g_autoptr(GArray) old = g_array_new(FALSE, FALSE, sizeof(OldCluster));
    uint32_t i;
    int ret;

    for (i = 0; i < l1_size; i++, (*visited)++, amend_progress(p, *visited,
                                                               total)) {
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK;
        uint64_t l2_refcount;
        bool changed = false;
        void *table;

        if (!l2_offset) {
            continue;
        }
        if (offset_into_cluster(s, l2_offset)) {
            qcow2_signal_corruption(s, true, -1, -1, "L2 table offset %#"
                                    PRIx64 " unaligned (L1 index: %#x)",
                                    l2_offset, i);
            return -EIO;
        }
        ret = qcow2_get_refcount(s, l2_offset >> s->cluster_bits,
                                 &l2_refcount);
        if (ret < 0) {
            return ret;
        }
        if (active) {
            ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &table);
            if (ret < 0) {
                return ret;
            }
            ret = expand_zeros_in_l2(s, table, l2_offset, l2_refcount, zeros,
                                     old, &changed);
            if (changed) {
                qcow2_cache_entry_mark_dirty(s->l2_table_cache, table);
                qcow2_cache_depends_on_flush(s->l2_table_cache);
            }
            qcow2_cache_put(s->l2_table_cache, &table);
            if (ret >= 0 && changed &&
                !(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
                ret = qcow2_cache_set_dependency(s, s->l2_table_cache,
                                                 s->refcount_block_cache);
            }
            if (ret >= 0) {
                ret = free_old_clusters(s, old);
            }
            if (ret < 0) {
                return ret;
            }
            continue;
        }

        ret = host_file_pread(s->file, l2_offset, buf, s->cluster_size);
        if (ret < 0) {
            return ret;
        }
        ret = expand_zeros_in_l2(s, buf, l2_offset, l2_refcount, zeros, old,
                                 &changed);
        if (ret < 0) {
            return ret;
        }
        if (!changed) {
            continue;
        }
        ret = qcow2_flush_refcounts(s);
        if (ret >= 0) {
            ret = host_file_flush(s->file);
        }
        if (ret >= 0) {
            ret = qcow2_pwrite_meta(s, QCOW2_OL_ACTIVE_L2 |
                                    QCOW2_OL_INACTIVE_L2, l2_offset, buf,
                                    s->cluster_size);
        }
        if (ret >= 0) {
            ret = host_file_flush(s->file);
        }
        if (ret >= 0) {
            ret = free_old_clusters(s, old);
        }
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static int expand_zero_clusters(BDRVQcow2State *s, AmendProgress *p)
{
    int64_t total = s->l1_size, visited = 0;
    uint32_t i;
    int ret;

    for (i = 0; i < s->nb_snapshots; i++) {
        total += s->snapshots[i].l1_size;
    }
    ret = expand_zeros_in_l1(s, s->l1_table, s->l1_size, true, &visited,
                             total, p);
    if (ret < 0) {
        return ret;
    }
    /*
     * Snapshot L1 tables may share the active L2 tables, which are read
     * from disk below: the cache must be written out and forgotten first.
     */
    ret = qcow2_cache_empty(s, s->l2_table_cache);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < s->nb_snapshots; i++) {
        QCowSnapshot *sn = &s->snapshots[i];
        g_autofree uint64_t *l1 = NULL;
        g_autoptr(GError) err = NULL;

        ret = qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size, 8,
                                   QCOW_MAX_L1_SIZE, "Snapshot L1 table",
                                   &err);
        if (ret < 0) {
            /*
             * QEMU reports the table at once and then fails the downgrade
             * with the errno.
             */
            qguard_report_now(err->message);
            return ret;
        }
        ret = qcow2_read_l1_table(s, sn->l1_table_offset, sn->l1_size, &l1);
        if (ret < 0) {
            return ret;
        }
        ret = expand_zeros_in_l1(s, l1, sn->l1_size, false, &visited, total,
                                 p);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

static bool l2_names_compressed(BDRVQcow2State *s, const void *l2)
{
    int j;

    for (j = 0; j < s->l2_size; j++) {
        if (qcow2_get_cluster_type(s, l2_get(s, l2, j)) ==
            QCOW2_CLUSTER_COMPRESSED) {
            return true;
        }
    }
    return false;
}

/*
 * Whether an L2 table of the active disk or of a snapshot names a
 * compressed cluster.  QEMU 7.2 looks at the active disk only, so a
 * snapshot's zstd clusters would be read as zlib after its downgrade.  A
 * snapshot L1 table that is not valid is left to the zero expansion,
 * which refuses it.
 */
static int find_compressed_clusters(BDRVQcow2State *s, bool *found)
{
    g_autofree uint8_t *buf = g_malloc(s->cluster_size);
    uint32_t i, j;
    int ret;

    *found = false;
    for (i = 0; i < s->l1_size && !*found; i++) {
        uint64_t l2_offset = s->l1_table[i] & L1E_OFFSET_MASK;
        void *table;

        /* An unaligned table is the zero expansion's to report. */
        if (!l2_offset || offset_into_cluster(s, l2_offset)) {
            continue;
        }
        ret = qcow2_cache_get(s, s->l2_table_cache, l2_offset, &table);
        if (ret < 0) {
            return ret;
        }
        *found = l2_names_compressed(s, table);
        qcow2_cache_put(s->l2_table_cache, &table);
    }
    for (i = 0; i < s->nb_snapshots && !*found; i++) {
        QCowSnapshot *sn = &s->snapshots[i];
        g_autofree uint64_t *l1 = NULL;
        g_autoptr(GError) err = NULL;

        if (qcow2_validate_table(s, sn->l1_table_offset, sn->l1_size, 8,
                                 QCOW_MAX_L1_SIZE, "Snapshot L1 table",
                                 &err) < 0) {
            continue;
        }
        ret = qcow2_read_l1_table(s, sn->l1_table_offset, sn->l1_size, &l1);
        if (ret < 0) {
            return ret;
        }
        for (j = 0; j < sn->l1_size && !*found; j++) {
            uint64_t l2_offset = l1[j] & L1E_OFFSET_MASK;

            if (!l2_offset || offset_into_cluster(s, l2_offset)) {
                continue;
            }
            ret = host_file_pread(s->file, l2_offset, buf, s->cluster_size);
            if (ret < 0) {
                return ret;
            }
            *found = l2_names_compressed(s, buf);
        }
    }
    return 0;
}

static int qcow2_downgrade(BDRVQcow2State *s, AmendProgress *p,
                           GError **errp)
{
    uint64_t saved_compat = s->compatible_features;
    uint64_t saved_autoclear = s->autoclear_features;
    uint32_t i;
    int ret;

    if (s->refcount_order != 4) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    if (has_data_file(s)) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Cannot downgrade an image with a data file");
        return -ENOTSUP;
    }
    /*
     * v2 snapshot entries need not carry the disk size nor a 64-bit VM
     * state size, so v2 readers may ignore them.
     */
    for (i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].vm_state_size > UINT32_MAX ||
            s->snapshots[i].disk_size != s->img->total_size) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                        "Internal snapshots prevent downgrade of image");
            return -ENOTSUP;
        }
    }
    /*
     * QEMU keeps the bitmaps extension in the v2 header, where no
     * autoclear bit can vouch for it: the bitmaps become leaked clusters
     * that check reports.  Refuse instead of leaving such an image.
     */
    if (s->has_bitmaps_ext) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Cannot downgrade an image with persistent dirty "
                    "bitmaps\nRemove them first with 'qemu-img bitmap "
                    "--remove'.\n");
        return -ENOTSUP;
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        ret = qcow2_mark_clean(s);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to make the image clean");
        }
    }
    if (s->incompatible_features & ~QCOW2_INCOMPAT_COMPRESSION) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Cannot downgrade an image with incompatible features "
                    "0x%" PRIx64 " set",
                    s->incompatible_features & ~QCOW2_INCOMPAT_COMPRESSION);
        return -ENOTSUP;
    }
    /*
     * A v2 header cannot say that compressed clusters are zstd.  QEMU
     * refuses this after it has expanded the zero clusters; qguard before
     * it changes anything.
     */
    if (s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        bool found;

        ret = find_compressed_clusters(s, &found);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret, "Failed to check block status");
        }
        if (found) {
            g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                        "Cannot downgrade an image with zstd compression "
                        "type and existing compressed clusters");
            return -ENOTSUP;
        }
    }

    /* Lazy refcounts were made good when the image was marked clean. */
    s->compatible_features = 0;
    s->autoclear_features = 0;
    ret = expand_zero_clusters(s, p);
    if (ret >= 0) {
        /* No zero flag may reach a v2 reader. */
        ret = qcow2_flush_metadata(s);
    }
    if (ret < 0) {
        s->compatible_features = saved_compat;
        s->autoclear_features = saved_autoclear;
        return bdrv_error_errno(errp, ret,
                                "Failed to turn zero into data clusters");
    }

    s->qcow_version = 2;
    ret = qcow2_update_header(s);
    if (ret < 0) {
        s->qcow_version = 3;
        s->compatible_features = saved_compat;
        s->autoclear_features = saved_autoclear;
        return bdrv_error_errno(errp, ret, "Failed to update the image header");
    }
    s->use_lazy_refcounts = false;
    /* Nothing is compressed: the image is zlib, as the v2 header says. */
    s->incompatible_features &= ~QCOW2_INCOMPAT_COMPRESSION;
    s->compression_type = 0;
    return 0;
}

/* ---- Lazy refcounts ------------------------------------------------------ */

static int set_lazy_refcounts(BDRVQcow2State *s, bool on, int version,
                              GError **errp)
{
    int ret;

    if (on && version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Lazy refcounts only supported with compatibility level "
                    "1.1 and above (use compat=1.1 or greater)");
        return -EINVAL;
    }
    if (!on) {
        /* The refcounts on disk must be right before nothing excuses them. */
        ret = qcow2_mark_clean(s);
        if (ret < 0) {
            return bdrv_error_errno(errp, ret,
                                    "Failed to make the image clean");
        }
        s->compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    } else {
        s->compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    }
    ret = qcow2_update_header(s);
    if (ret < 0) {
        s->compatible_features ^= QCOW2_COMPAT_LAZY_REFCOUNTS;
        return bdrv_error_errno(errp, ret, "Failed to update the image header");
    }
    s->use_lazy_refcounts = on;
    return 0;
}

/* ---- The amend operation ------------------------------------------------- */

int qcow2_amend(QGuardImage *img, const QGuardOpts *opts, bool force,
                QGuardProgressFunc *progress, void *opaque, GError **errp)
{
    BDRVQcow2State *s = img->opaque;
    int old_version = s->qcow_version, new_version = old_version;
    bool lazy_refcounts = s->use_lazy_refcounts;
    bool data_file_raw = data_file_is_raw(s);
    const char *data_file = NULL;
    int refcount_bits = s->refcount_bits;
    const char *backing_file = NULL, *backing_fmt = NULL;
    uint64_t new_size = 0;
    AmendProgress p = { .fn = progress, .opaque = opaque };
    size_t i;
    int ret;

    (void)force;    /* only encryption changes use it */
    if (!check_amend_syntax(opts, errp)) {
        return -EINVAL;
    }
    for (i = 0; i < G_N_ELEMENTS(amend_opts); i++) {
        const char *name = amend_opts[i].name;
        const char *value = qguard_opts_get(opts, name);
        uint64_t n;
        bool b;

        if (!value) {
            continue;
        }
        if (g_str_has_prefix(name, "encrypt.")) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Can't amend encryption options - encryption not "
                        "present");
            return -EINVAL;
        } else if (!strcmp(name, "size")) {
            qguard_parse_size(value, &new_size, NULL);
        } else if (!strcmp(name, "compat")) {
            if (!strcmp(value, "0.10") || !strcmp(value, "v2")) {
                new_version = 2;
            } else if (!strcmp(value, "1.1") || !strcmp(value, "v3")) {
                new_version = 3;
            } else {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "Unknown compatibility level %s", value);
                return -EINVAL;
            }
        } else if (!strcmp(name, "backing_file")) {
            backing_file = value;
        } else if (!strcmp(name, "backing_fmt")) {
            backing_fmt = value;
        } else if (!strcmp(name, "data_file")) {
            if (!has_data_file(s)) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "data-file can only be set for images that use "
                            "an external data file");
                return -EINVAL;
            }
            data_file = value;
        } else if (!strcmp(name, "data_file_raw")) {
            qguard_parse_bool(name, value, &b, NULL);
            data_file_raw = b;
            if (b && !data_file_is_raw(s)) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "data-file-raw cannot be set on existing images");
                return -EINVAL;
            }
        } else if (!strcmp(name, "lazy_refcounts")) {
            qguard_parse_bool(name, value, &lazy_refcounts, NULL);
        } else if (!strcmp(name, "refcount_bits")) {
            n = g_ascii_strtoull(value, NULL, 0);
            /* QEMU keeps the number in an int. */
            refcount_bits = (int)n;
            if (refcount_bits <= 0 || refcount_bits > 64 ||
                (refcount_bits & (refcount_bits - 1))) {
                g_set_error(errp, QGUARD_ERROR, EINVAL,
                            "Refcount width must be a power of two and may "
                            "not exceed 64 bits");
                return -EINVAL;
            }
        }
    }

    p.total_operations = (new_version != old_version) +
                         (s->refcount_bits != refcount_bits);

    /* Upgrade first: the other changes may need a v3 image. */
    if (new_version > old_version) {
        p.current_operation = 1;
        ret = qcow2_upgrade(s, &p, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->refcount_bits != refcount_bits) {
        if (new_version < 3 && refcount_bits != 16) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Refcount widths other than 16 bits require "
                        "compatibility level 1.1 or above (use compat=1.1 "
                        "or greater)");
            return -EINVAL;
        }
        p.current_operation = 2;
        ret = qcow2_change_refcount_order(s, g_bit_nth_lsf(refcount_bits, -1),
                                          refcount_order_progress, &p, errp);
        if (ret < 0) {
            return ret;
        }
    }

    /* data_file_raw=off may be what lets a backing file in. */
    if (data_file_raw) {
        s->autoclear_features |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    } else {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (data_file) {
        /* Only the name in the header: the open data file stays. */
        g_free(s->image_data_file);
        s->image_data_file = *data_file ? g_strdup(data_file) : NULL;
    }
    ret = qcow2_update_header(s);
    if (ret < 0) {
        return bdrv_error_errno(errp, ret, "Failed to update the image header");
    }
    if ((backing_file || backing_fmt) &&
        (g_strcmp0(backing_file, s->image_backing_file) ||
         g_strcmp0(backing_fmt, s->image_backing_format))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cannot amend the backing file\nYou can use 'qemu-img "
                    "rebase' instead.\n");
        return -EINVAL;
    }
    if (s->use_lazy_refcounts != lazy_refcounts) {
        ret = set_lazy_refcounts(s, lazy_refcounts, new_version, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (new_size) {
        ret = qcow2_resize(img, new_size, true, "off", NULL, NULL, errp);
        if (ret < 0) {
            return ret;
        }
    }
    /* Downgrade last, once nothing else needs v3 any more. */
    if (new_version < old_version) {
        p.current_operation = 3;
        ret = qcow2_downgrade(s, &p, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return qcow2_flush_metadata(s);
}
