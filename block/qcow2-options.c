/* SPDX-License-Identifier: MIT */
/*
 * qcow2 runtime options: cache sizes, discard passing, lazy refcounts and
 * the overlap-check family, with QEMU's names, defaults and messages.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define DEFAULT_L2_CACHE_MAX_SIZE (32 * 1024 * 1024)
#define MIN_REFCOUNT_CACHE_SIZE 4   /* clusters */
#define DEFAULT_REFCOUNT_CACHE_MIN (64 * 1024)
#define MAX_CACHE_TABLES (1 << 24)

static bool parse_size_opt(const QGuardOpts *opts, const char *name,
                           uint64_t *value, bool *set, GError **errp)
{
    const char *str = qguard_opts_get(opts, name);

    *set = str != NULL;
    if (!str) {
        return true;
    }
    return qguard_parse_size_option(name, str, value, NULL, errp) == 0;
}

/*
 * A QemuOpts number: strtoull's syntax, so "-1" wraps around as it does
 * in QEMU (and is then too big for whatever it sets).
 */
static bool parse_number_opt(const QGuardOpts *opts, const char *name,
                             uint64_t *value, GError **errp)
{
    const char *str = qguard_opts_get(opts, name);
    char *end;

    if (!str) {
        return true;
    }
    errno = 0;
    *value = strtoull(str, &end, 0);
    if (errno || end == str || *end) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Parameter '%s' expects a number", name);
        return false;
    }
    return true;
}

static bool parse_bool_opt(const QGuardOpts *opts, const char *name,
                           bool *value, GError **errp)
{
    const char *str = qguard_opts_get(opts, name);

    return !str || qguard_parse_bool(name, str, value, errp);
}

static const char *const overlap_option_names[QCOW2_OL_MAX_BITNR] = {
    [QCOW2_OL_MAIN_HEADER_BITNR] = "main-header",
    [QCOW2_OL_ACTIVE_L1_BITNR] = "active-l1",
    [QCOW2_OL_ACTIVE_L2_BITNR] = "active-l2",
    [QCOW2_OL_REFCOUNT_TABLE_BITNR] = "refcount-table",
    [QCOW2_OL_REFCOUNT_BLOCK_BITNR] = "refcount-block",
    [QCOW2_OL_SNAPSHOT_TABLE_BITNR] = "snapshot-table",
    [QCOW2_OL_INACTIVE_L1_BITNR] = "inactive-l1",
    [QCOW2_OL_INACTIVE_L2_BITNR] = "inactive-l2",
    [QCOW2_OL_BITMAP_DIRECTORY_BITNR] = "bitmap-directory",
};

/* Options the qcow2 driver understands at open, besides overlap-check.* */
static const char *const runtime_option_names[] = {
    "l2-cache-size", "refcount-cache-size", "cache-size",
    "l2-cache-entry-size", "cache-clean-interval", "lazy-refcounts",
    "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
    "overlap-check", "overlap-check.template", "overlap-check.algorithm",
    "overlap-check.cache-size",
};

bool qcow2_is_runtime_option(const char *name)
{
    size_t i;

    if (qcow2_is_data_file_option(name)) {
        return true;
    }
    for (i = 0; i < G_N_ELEMENTS(runtime_option_names); i++) {
        if (!strcmp(name, runtime_option_names[i])) {
            return true;
        }
    }
    if (g_str_has_prefix(name, "overlap-check.")) {
        for (i = 0; i < QCOW2_OL_MAX_BITNR; i++) {
            if (!strcmp(name + strlen("overlap-check."),
                        overlap_option_names[i])) {
                return true;
            }
        }
    }
    return false;
}

static int parse_overlap_options(BDRVQcow2State *s, const QGuardOpts *opts,
                                 GError **errp)
{
    const char *tmpl = qguard_opts_get(opts, "overlap-check");
    const char *tmpl2 = qguard_opts_get(opts, "overlap-check.template");
    const char *algo = qguard_opts_get(opts, "overlap-check.algorithm");
    const char *csize = qguard_opts_get(opts, "overlap-check.cache-size");
    int i;

    if (tmpl && tmpl2 && strcmp(tmpl, tmpl2)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Conflicting values for qcow2 options 'overlap-check' "
                    "('%s') and 'overlap-check.template' ('%s')", tmpl, tmpl2);
        return -EINVAL;
    }
    if (!tmpl) {
        tmpl = tmpl2 ? tmpl2 : "cached";
    }
    if (!strcmp(tmpl, "none")) {
        s->overlap_check = 0;
    } else if (!strcmp(tmpl, "constant")) {
        s->overlap_check = QCOW2_OL_CONSTANT;
    } else if (!strcmp(tmpl, "cached")) {
        s->overlap_check = QCOW2_OL_CACHED;
    } else if (!strcmp(tmpl, "all")) {
        s->overlap_check = QCOW2_OL_ALL;
    } else {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unsupported value '%s' for qcow2 option "
                    "'overlap-check'. Allowed are any of the following: "
                    "none, constant, cached, all", tmpl);
        return -EINVAL;
    }
    for (i = 0; i < QCOW2_OL_MAX_BITNR; i++) {
        g_autofree char *name = g_strdup_printf("overlap-check.%s",
                                                overlap_option_names[i]);
        bool on = s->overlap_check & (1 << i);
        if (!parse_bool_opt(opts, name, &on, errp)) {
            return -EINVAL;
        }
        s->overlap_check = on ? s->overlap_check | (1 << i)
                              : s->overlap_check & ~(1 << i);
    }

    s->overlap_algorithm = QCOW2_OVERLAP_WINDOWED;
    if (algo) {
        if (!strcmp(algo, "linear")) {
            s->overlap_algorithm = QCOW2_OVERLAP_LINEAR;
        } else if (strcmp(algo, "windowed")) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Unsupported value '%s' for qcow2 option "
                        "'overlap-check.algorithm'. Allowed are any of the "
                        "following: windowed, linear", algo);
            return -EINVAL;
        }
    }
    s->overlap_cache_size = 16;
    if (csize) {
        char *end;
        unsigned long n = strtoul(csize, &end, 10);
        if (*csize == '-' || *end || end == csize || n < 1 || n > 65536) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Parameter 'overlap-check.cache-size' expects a "
                        "number of windows from 1 to 65536");
            return -EINVAL;
        }
        s->overlap_cache_size = n;
    }
    return 0;
}

/* QEMU's default: enough L2 cache to cover the whole disk, up to 32 MiB. */
static uint64_t default_l2_cache_bytes(BDRVQcow2State *s)
{
    uint64_t max_l2_entries = (s->img->total_size + s->cluster_size - 1) >>
                              s->cluster_bits;

    return MIN(ROUND_UP(max_l2_entries * s->l2_entry_size,
                        (uint64_t)s->cluster_size),
               (uint64_t)DEFAULT_L2_CACHE_MAX_SIZE);
}

/*
 * A default-sized L2 cache was sized for the disk at open; when the disk
 * grows (creation starts at size 0), let the cache grow with it.
 */
int qcow2_grow_default_l2_cache(BDRVQcow2State *s)
{
    uint64_t tables = MAX(default_l2_cache_bytes(s) / s->cluster_size, 2);
    Qcow2Cache *cache;
    int ret;

    if (!s->l2_cache_auto ||
        tables <= (uint64_t)qcow2_cache_num_tables(s->l2_table_cache)) {
        return 0;
    }
    ret = qcow2_flush_metadata(s);
    if (ret < 0) {
        return ret;
    }
    cache = qcow2_cache_create(s, tables, QCOW2_OL_ACTIVE_L2);
    if (!cache) {
        /* Only slower: the cache that there is stays. */
        return 0;
    }
    qcow2_cache_destroy(s->l2_table_cache);
    s->l2_table_cache = cache;
    return 0;
}

/*
 * QEMU's read_cache_sizes() and the checks after it.  An L2 cache entry
 * smaller than a table only sets how much of a table QEMU loads at once;
 * qguard caches whole tables, as many as the same number of bytes hold,
 * and takes the entry size for the limits and messages alone.
 */
static int parse_cache_options(BDRVQcow2State *s, const QGuardOpts *opts,
                               int *l2_tables, int *refcount_tables,
                               GError **errp)
{
    uint64_t combined = 0, l2 = 0, refcount = 0, entry = 0, interval = 0;
    bool combined_set, l2_set, refcount_set, entry_set;
    uint64_t max_l2_entries = (s->img->total_size + s->cluster_size - 1) >>
                              s->cluster_bits;
    uint64_t max_l2_cache = ROUND_UP(max_l2_entries * s->l2_entry_size,
                                     (uint64_t)s->cluster_size);
    uint64_t min_refcount = (uint64_t)MIN_REFCOUNT_CACHE_SIZE *
                            s->cluster_size;

    if (!parse_size_opt(opts, "cache-size", &combined, &combined_set, errp) ||
        !parse_size_opt(opts, "l2-cache-size", &l2, &l2_set, errp) ||
        !parse_size_opt(opts, "refcount-cache-size", &refcount,
                        &refcount_set, errp) ||
        !parse_size_opt(opts, "l2-cache-entry-size", &entry, &entry_set,
                        errp) ||
        !parse_number_opt(opts, "cache-clean-interval", &interval, errp)) {
        return -EINVAL;
    }
    if (!entry_set) {
        entry = s->cluster_size;
    }
    if (combined_set) {
        if (l2_set && refcount_set) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "cache-size, l2-cache-size and refcount-cache-size "
                        "may not be set at the same time");
            return -EINVAL;
        } else if (l2_set && l2 > combined) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "l2-cache-size may not exceed cache-size");
            return -EINVAL;
        } else if (refcount_set && refcount > combined) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "refcount-cache-size may not exceed cache-size");
            return -EINVAL;
        }
        l2 = MIN(max_l2_cache, l2_set ? l2 : DEFAULT_L2_CACHE_MAX_SIZE);
        if (l2_set) {
            refcount = combined - l2;
        } else if (refcount_set) {
            l2 = combined - refcount;
        } else if (combined >= max_l2_cache + min_refcount) {
            /* Cover the whole disk first, give the rest to refcounts. */
            l2 = max_l2_cache;
            refcount = combined - l2;
        } else {
            refcount = MIN(combined, min_refcount);
            l2 = combined - refcount;
        }
    } else {
        if (!l2_set) {
            s->l2_cache_auto = true;
        }
        l2 = MIN(max_l2_cache, l2_set ? l2 : DEFAULT_L2_CACHE_MAX_SIZE);
        if (!refcount_set) {
            refcount = MAX(min_refcount, (uint64_t)DEFAULT_REFCOUNT_CACHE_MIN);
        }
    }
    /* A cache that cannot hold the disk's tables loads 4 KiB at a time. */
    if (l2 < max_l2_cache && !entry_set) {
        entry = MIN((uint64_t)s->cluster_size, 4096);
    }
    if (entry < 512 || entry > (uint64_t)s->cluster_size ||
        (entry & (entry - 1))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "L2 cache entry size must be a power of two between 512 "
                    "and the cluster size (%d)", s->cluster_size);
        return -EINVAL;
    }
    if (MAX(l2 / entry, 2) > INT_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "L2 cache size too big");
        return -EINVAL;
    }
    if (MAX(refcount / s->cluster_size, MIN_REFCOUNT_CACHE_SIZE) > INT_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Refcount cache size too big");
        return -EINVAL;
    }
    if (interval > UINT_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cache clean interval too big");
        return -EINVAL;
    }
    l2 = MAX(l2, 2ULL * s->cluster_size);
    refcount = MAX(refcount, min_refcount);
    /* Beyond QEMU's limits, the memory would not be there either. */
    if (l2 / s->cluster_size > MAX_CACHE_TABLES ||
        refcount / s->cluster_size > MAX_CACHE_TABLES) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Could not allocate metadata caches");
        return -ENOMEM;
    }
    *l2_tables = l2 / s->cluster_size;
    *refcount_tables = refcount / s->cluster_size;
    return 0;
}

int qcow2_parse_runtime_options(BDRVQcow2State *s, const QGuardOpts *opts,
                                int *l2_tables, int *refcount_tables,
                                GError **errp)
{
    bool lazy = s->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    bool req = true, snap = true, other = false;
    int ret;

    ret = parse_cache_options(s, opts, l2_tables, refcount_tables, errp);
    if (ret < 0) {
        return ret;
    }
    if (!parse_bool_opt(opts, "lazy-refcounts", &lazy, errp) ||
        !parse_bool_opt(opts, "pass-discard-request", &req, errp) ||
        !parse_bool_opt(opts, "pass-discard-snapshot", &snap, errp) ||
        !parse_bool_opt(opts, "pass-discard-other", &other, errp)) {
        return -EINVAL;
    }
    if (lazy && s->qcow_version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Lazy refcounts require a qcow2 image with at least "
                    "qemu 1.1 compatibility level");
        return -EINVAL;
    }
    s->use_lazy_refcounts = lazy;
    s->discard_passthrough[QCOW2_DISCARD_NEVER] = false;
    s->discard_passthrough[QCOW2_DISCARD_ALWAYS] = true;
    s->discard_passthrough[QCOW2_DISCARD_REQUEST] = req;
    s->discard_passthrough[QCOW2_DISCARD_SNAPSHOT] = snap;
    s->discard_passthrough[QCOW2_DISCARD_OTHER] = other;
    return parse_overlap_options(s, opts, errp);
}
