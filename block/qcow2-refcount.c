/* SPDX-License-Identifier: MIT */
/*
 * qcow2 refcounts: lookup, allocation, freeing, refcount-table growth.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * On-disk ordering rules this file relies on and keeps:
 *
 *   - A new refcount block is written (with its own refcount, if it describes
 *     itself) and flushed before the refcount-table entry that points at it.
 *   - A grown refcount table is written, together with the refcount blocks
 *     that describe it, into clusters past everything the old table covers
 *     (those clusters are free by definition), flushed, and only then does
 *     the header point at it.  The old table is freed last.
 *   - Refcount increments are made before the tables that reference the
 *     clusters (see qcow2-cache.c for the L2 dependency); decrements make the
 *     refcount-block cache depend on the L2 cache.
 *
 * Allocation never has to create a refcount block in the middle of an
 * update: callers find a free run first, then make sure refcount blocks
 * exist for all of it (which may take free clusters, possibly from the run
 * itself, in which case the search starts again), and only then increment.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

/* ---- Refcount entry accessors, one per refcount_order -------------------- */

static uint64_t get_refcount_ro0(const void *a, uint64_t i)
{
    return (((const uint8_t *)a)[i / 8] >> (i % 8)) & 0x1;
}

static void set_refcount_ro0(void *a, uint64_t i, uint64_t v)
{
    uint8_t *p = (uint8_t *)a + i / 8;
    *p = (*p & ~(0x1 << (i % 8))) | (v << (i % 8));
}

static uint64_t get_refcount_ro1(const void *a, uint64_t i)
{
    return (((const uint8_t *)a)[i / 4] >> (2 * (i % 4))) & 0x3;
}

static void set_refcount_ro1(void *a, uint64_t i, uint64_t v)
{
    uint8_t *p = (uint8_t *)a + i / 4;
    *p = (*p & ~(0x3 << (2 * (i % 4)))) | (v << (2 * (i % 4)));
}

static uint64_t get_refcount_ro2(const void *a, uint64_t i)
{
    return (((const uint8_t *)a)[i / 2] >> (4 * (i % 2))) & 0xf;
}

static void set_refcount_ro2(void *a, uint64_t i, uint64_t v)
{
    uint8_t *p = (uint8_t *)a + i / 2;
    *p = (*p & ~(0xf << (4 * (i % 2)))) | (v << (4 * (i % 2)));
}

static uint64_t get_refcount_ro3(const void *a, uint64_t i)
{
    return ((const uint8_t *)a)[i];
}

static void set_refcount_ro3(void *a, uint64_t i, uint64_t v)
{
    ((uint8_t *)a)[i] = v;
}

static uint64_t get_refcount_ro4(const void *a, uint64_t i)
{
    return be_get16((const uint8_t *)a + i * 2);
}

static void set_refcount_ro4(void *a, uint64_t i, uint64_t v)
{
    be_put16((uint8_t *)a + i * 2, v);
}

static uint64_t get_refcount_ro5(const void *a, uint64_t i)
{
    return be_get32((const uint8_t *)a + i * 4);
}

static void set_refcount_ro5(void *a, uint64_t i, uint64_t v)
{
    be_put32((uint8_t *)a + i * 4, v);
}

static uint64_t get_refcount_ro6(const void *a, uint64_t i)
{
    return be_get64((const uint8_t *)a + i * 8);
}

static void set_refcount_ro6(void *a, uint64_t i, uint64_t v)
{
    be_put64((uint8_t *)a + i * 8, v);
}

static Qcow2GetRefcountFunc *const get_refcount_funcs[] = {
    get_refcount_ro0, get_refcount_ro1, get_refcount_ro2, get_refcount_ro3,
    get_refcount_ro4, get_refcount_ro5, get_refcount_ro6,
};

static Qcow2SetRefcountFunc *const set_refcount_funcs[] = {
    set_refcount_ro0, set_refcount_ro1, set_refcount_ro2, set_refcount_ro3,
    set_refcount_ro4, set_refcount_ro5, set_refcount_ro6,
};

void qcow2_refcount_setup_order(BDRVQcow2State *s)
{
    s->refcount_bits = 1 << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (1ULL << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits - (s->refcount_order - 3);
    s->refcount_block_size = 1 << s->refcount_block_bits;
    s->get_refcount = get_refcount_funcs[s->refcount_order];
    s->set_refcount = set_refcount_funcs[s->refcount_order];
}

Qcow2GetRefcountFunc *qcow2_get_refcount_func(int order)
{
    return get_refcount_funcs[order];
}

Qcow2SetRefcountFunc *qcow2_set_refcount_func(int order)
{
    return set_refcount_funcs[order];
}

static void update_max_refcount_table_index(BDRVQcow2State *s)
{
    uint32_t i = s->refcount_table_size;

    while (i > 0 && !(s->refcount_table[i - 1] & REFT_OFFSET_MASK)) {
        i--;
    }
    s->max_refcount_table_index = i ? i - 1 : 0;
}

void qcow2_refcount_table_changed(BDRVQcow2State *s)
{
    update_max_refcount_table_index(s);
}

int qcow2_refcount_init(BDRVQcow2State *s, GError **errp)
{
    uint64_t bytes = (uint64_t)s->refcount_table_size * 8;
    uint32_t i;
    int ret;

    s->refcount_table = g_try_malloc(bytes ? bytes : 1);
    if (!s->refcount_table) {
        g_set_error(errp, QGUARD_ERROR, ENOMEM,
                    "Could not allocate the refcount table");
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, s->refcount_table_offset,
                          s->refcount_table, bytes);
    if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not read the refcount table: %s",
                    g_strerror(-ret));
        return ret;
    }
    for (i = 0; i < s->refcount_table_size; i++) {
        s->refcount_table[i] = GUINT64_FROM_BE(s->refcount_table[i]);
    }
    update_max_refcount_table_index(s);
    s->freed_clusters = g_array_new(FALSE, FALSE, sizeof(Qcow2FreedRange));
    qcow2_free_index_init(s);
    return 0;
}

void qcow2_refcount_close(BDRVQcow2State *s)
{
    qcow2_free_index_destroy(s);
    g_free(s->refcount_table);
    s->refcount_table = NULL;
    if (s->freed_clusters) {
        g_array_free(s->freed_clusters, TRUE);
        s->freed_clusters = NULL;
    }
}

/* The refcount block for @table_index, or 0 if none is allocated. */
int qcow2_refblock_offset(BDRVQcow2State *s, uint64_t table_index,
                          uint64_t *offset)
{
    uint64_t entry;

    *offset = 0;
    if (table_index >= s->refcount_table_size) {
        return 0;
    }
    entry = s->refcount_table[table_index];
    *offset = entry & REFT_OFFSET_MASK;
    if (*offset && !is_cluster_aligned(s, *offset)) {
        qcow2_signal_corruption(s, true, *offset, -1,
                                "Refblock offset %#" PRIx64 " unaligned "
                                "(reftable index: %#" PRIx64 ")",
                                *offset, table_index);
        return -EIO;
    }
    return 0;
}

/*
 * Refcount block @index from the cache (put it back with
 * qcow2_cache_put()), or NULL in *refblock if the table names none.
 */
static int refblock_get(BDRVQcow2State *s, uint64_t index, void **refblock)
{
    uint64_t block;
    int ret;

    *refblock = NULL;
    ret = qcow2_refblock_offset(s, index, &block);
    if (ret < 0 || !block) {
        return ret;
    }
    return qcow2_cache_get(s, s->refcount_block_cache, block, refblock);
}

int qcow2_get_refcount(BDRVQcow2State *s, uint64_t cluster_index,
                       uint64_t *refcount)
{
    uint64_t table_index = cluster_index >> s->refcount_block_bits;
    void *refblock;
    int ret;

    *refcount = 0;
    ret = refblock_get(s, table_index, &refblock);
    if (ret < 0 || !refblock) {
        return ret;
    }
    *refcount = s->get_refcount(refblock, cluster_index &
                                (s->refcount_block_size - 1));
    qcow2_cache_put(s->refcount_block_cache, &refblock);
    return 0;
}

/*
 * The cluster index just past the last cluster with a non-zero refcount:
 * found from the top of the refcount table down, so it costs one refcount
 * block, not a scan of the image.
 */
int64_t qcow2_host_end_cluster(BDRVQcow2State *s)
{
    int64_t i;

    for (i = (int64_t)s->refcount_table_size - 1; i >= 0; i--) {
        void *refblock;
        int64_t j;
        int ret;

        ret = refblock_get(s, i, &refblock);
        if (ret < 0) {
            return ret;
        }
        if (!refblock) {
            continue;
        }
        for (j = s->refcount_block_size - 1; j >= 0; j--) {
            if (s->get_refcount(refblock, j)) {
                break;
            }
        }
        qcow2_cache_put(s->refcount_block_cache, &refblock);
        if (j >= 0) {
            return (i << s->refcount_block_bits) + j + 1;
        }
    }
    return 0;
}

/* ---- Clusters freed since the last metadata flush ------------------------ */

#define FREED_CLUSTERS_MAX 65536    /* then a flush makes them reusable */

/* Index of the first range that ends after @c. */
static guint freed_search(BDRVQcow2State *s, uint64_t c)
{
    guint lo = 0, hi = s->freed_clusters->len;

    while (lo < hi) {
        guint mid = (lo + hi) / 2;
        Qcow2FreedRange *r = &g_array_index(s->freed_clusters,
                                            Qcow2FreedRange, mid);
        if (r->first + r->count <= c) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

static void remember_freed_cluster(BDRVQcow2State *s, uint64_t c, bool punch)
{
    GArray *a = s->freed_clusters;
    guint i = freed_search(s, c);
    Qcow2FreedRange *prev = i ? &g_array_index(a, Qcow2FreedRange, i - 1)
                              : NULL;
    Qcow2FreedRange *next = i < a->len ? &g_array_index(a, Qcow2FreedRange, i)
                                       : NULL;
    Qcow2FreedRange r = { c, 1, punch };

    if (next && next->first <= c) {
        return;     /* already remembered */
    }
    s->freed_cluster_count++;
    if (prev && prev->first + prev->count == c && prev->punch == punch) {
        prev->count++;
        if (next && next->first == c + 1 && next->punch == punch) {
            prev->count += next->count;
            g_array_remove_index(a, i);
        }
        return;
    }
    if (next && next->first == c + 1 && next->punch == punch) {
        next->first--;
        next->count++;
        return;
    }
    g_array_insert_val(a, i, r);
}

/*
 * Clusters [first, first + n) are referenced again (an undone free): they
 * must be neither reused nor punched when the freed clusters are released.
 */
static void forget_freed_clusters(BDRVQcow2State *s, uint64_t first,
                                  uint64_t n)
{
    GArray *a = s->freed_clusters;
    uint64_t end = first + n;
    guint i = freed_search(s, first);

    while (i < a->len) {
        Qcow2FreedRange *r = &g_array_index(a, Qcow2FreedRange, i);
        uint64_t r_end = r->first + r->count;
        uint64_t from = MAX(r->first, first), to = MIN(r_end, end);

        if (r->first >= end) {
            break;
        }
        s->freed_cluster_count -= to - from;
        if (from == r->first && to == r_end) {
            g_array_remove_index(a, i);
            continue;
        }
        if (from == r->first) {
            r->first = to;
            r->count = r_end - to;
        } else {
            Qcow2FreedRange tail = { to, r_end - to, r->punch };
            r->count = from - r->first;
            if (to < r_end) {
                g_array_insert_val(a, i + 1, tail);
                i++;
            }
        }
        i++;
    }
}

/*
 * Called once the tables that stopped pointing at the freed clusters and
 * the refcount blocks that free them are on disk: the clusters may now be
 * reused, and punched where a discard type asks for it.  Every one of them
 * still has refcount 0 (see forget_freed_clusters()).
 */
void qcow2_release_freed_clusters(BDRVQcow2State *s)
{
    GArray *a = s->freed_clusters;
    guint i;

    if (!a || !a->len) {
        return;
    }
    /* Taken out first: the index must not see these as pending any more. */
    s->freed_clusters = g_array_new(FALSE, FALSE, sizeof(Qcow2FreedRange));
    s->freed_cluster_count = 0;
    for (i = 0; i < a->len; i++) {
        Qcow2FreedRange *r = &g_array_index(a, Qcow2FreedRange, i);

        s->free_cluster_index = MIN(s->free_cluster_index, r->first);
        qcow2_free_index_mark_free(s, r->first, r->count);
        if (r->punch) {
            /* Best effort: without hole punching the data just stays. */
            host_file_discard(s->file, r->first << s->cluster_bits,
                              r->count << s->cluster_bits);
        }
    }
    g_array_free(a, TRUE);
}

/*
 * How many of the host clusters below @end have a non-zero refcount, as
 * QEMU's metadata preallocation heuristic counts them: it stops at @limit.
 */
int64_t qcow2_count_used_clusters(BDRVQcow2State *s, uint64_t end,
                                  uint64_t limit)
{
    uint64_t used = 0, i, j;

    for (i = 0; i < s->refcount_table_size &&
                (i << s->refcount_block_bits) < end && used < limit; i++) {
        uint64_t first = i << s->refcount_block_bits;
        uint64_t n = MIN((uint64_t)s->refcount_block_size, end - first);
        void *refblock;
        int ret = refblock_get(s, i, &refblock);

        if (ret < 0) {
            return ret;
        }
        if (!refblock) {
            continue;
        }
        for (j = 0; j < n && used < limit; j++) {
            used += s->get_refcount(refblock, j) != 0;
        }
        qcow2_cache_put(s->refcount_block_cache, &refblock);
    }
    return used;
}

/*
 * The free clusters described by refcount block @index (1 = free in @bits,
 * which the caller zeroed, one bit per entry), for the free-space index:
 * refcount 0 and not freed since the last flush.  No block: all free.
 */
int qcow2_refblock_free_bits(BDRVQcow2State *s, uint64_t index,
                             uint64_t *bits, uint64_t *nfree)
{
    uint64_t n = s->refcount_block_size;
    uint64_t first = index << s->refcount_block_bits;
    uint64_t i, count = 0;
    void *refblock;
    guint k;
    int ret;

    ret = refblock_get(s, index, &refblock);
    if (ret < 0) {
        return ret;
    }
    if (!refblock) {
        memset(bits, 0xff, n / 8);
        count = n;
    } else {
        /* A zero test needs no byte swap: read the widths directly. */
        for (i = 0; i < n; i++) {
            bool zero;
            switch (s->refcount_order) {
            case 4:
                zero = ((const uint16_t *)refblock)[i] == 0;
                break;
            case 3:
                zero = ((const uint8_t *)refblock)[i] == 0;
                break;
            case 5:
                zero = ((const uint32_t *)refblock)[i] == 0;
                break;
            case 6:
                zero = ((const uint64_t *)refblock)[i] == 0;
                break;
            default:
                zero = s->get_refcount(refblock, i) == 0;
                break;
            }
            if (zero) {
                bits[i >> 6] |= 1ULL << (i & 63);
                count++;
            }
        }
        qcow2_cache_put(s->refcount_block_cache, &refblock);
    }
    /* Freed since the last flush: on-disk tables may still name them. */
    for (k = freed_search(s, first); k < s->freed_clusters->len; k++) {
        Qcow2FreedRange *r = &g_array_index(s->freed_clusters,
                                            Qcow2FreedRange, k);
        uint64_t from = MAX(r->first, first), to = MIN(r->first + r->count,
                                                       first + n);
        if (r->first >= first + n) {
            break;
        }
        for (i = from; i < to; i++) {
            uint64_t bit = 1ULL << ((i - first) & 63);
            if (bits[(i - first) >> 6] & bit) {
                bits[(i - first) >> 6] &= ~bit;
                count--;
            }
        }
    }
    *nfree = count;
    return 0;
}

/* The first cluster freed since the last metadata flush at or after @c. */
static uint64_t first_freed_from(BDRVQcow2State *s, uint64_t c)
{
    guint i = freed_search(s, c);
    Qcow2FreedRange *r;

    if (i >= s->freed_clusters->len) {
        return UINT64_MAX;
    }
    r = &g_array_index(s->freed_clusters, Qcow2FreedRange, i);
    return MAX(r->first, c);
}

/*
 * Find the first run of free clusters at or after the search start
 * free_cluster_index, up to @n long.  With @exact, only a run of exactly
 * @n clusters is accepted and shorter holes are skipped over.  Returns the
 * first cluster index; a free cluster 0 means damaged refcounts and is
 * refused here, for every caller.  With @take, the next search starts past
 * the run, as QEMU's does: holes an exact search skipped stay behind until
 * a cluster at or below them is freed.
 *
 * QEMU reuses a freed cluster at once, while on-disk tables may still name
 * it; here it waits for the next metadata flush (design.md, "Freeing").
 * Where QEMU would take a cluster freed since that flush, the flush happens
 * first: the layout is QEMU's, and only a session that frees and then
 * allocates pays for one flush.
 */
static int64_t find_free_run(BDRVQcow2State *s, uint64_t n, bool exact,
                             bool take, uint64_t *got, const char *what)
{
    uint64_t limit = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    bool flushed = false;
    uint64_t first_free, freed;
    int64_t first;
    int ret;

    if (s->freed_cluster_count >= FREED_CLUSTERS_MAX &&
        bdrv_runs_alone(s->img)) {
        /*
         * Make the frees durable so that the space can be reused.  Beside
         * other requests the flush could not release them (see
         * qcow2_flush_metadata()): they wait for a flush that runs alone.
         */
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (;;) {
        first = qcow2_free_index_find(s, s->free_cluster_index, n, exact, got,
                                      &first_free);
        if (first < 0) {
            return first;
        }
        /* QEMU's search start goes down to every cluster it frees. */
        freed = first_freed_from(s, 0);
        if (flushed || !bdrv_runs_alone(s->img) ||
            freed > (uint64_t)first + *got ||
            (freed == (uint64_t)first + *got && (exact || *got == n))) {
            break;
        }
        ret = qcow2_flush_metadata(s);
        if (ret < 0) {
            return ret;
        }
        flushed = true;
    }
    if ((uint64_t)first >= limit || *got > limit - first) {
        return -EFBIG;
    }
    if (first == 0) {
        /* The header always has a refcount: the refcounts are broken. */
        if (what) {
            qcow2_signal_corruption(s, true, -1, -1,
                                    "Preventing invalid allocation of %s at "
                                    "offset 0", what);
        } else {
            qcow2_signal_corruption(s, true, 0, s->cluster_size,
                                    "Preventing invalid allocation of "
                                    "cluster 0 (refcounts are damaged)");
        }
        return -EIO;
    }
    if (take) {
        s->free_cluster_index = first + *got;
    }
    return first;
}

static int write_reftable_entry(BDRVQcow2State *s, uint64_t index)
{
    uint8_t buf[8];
    int ret;

    be_put64(buf, s->refcount_table[index]);
    ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_TABLE,
                            s->refcount_table_offset + index * 8, buf, 8);
    if (ret < 0) {
        return ret;
    }
    return host_file_flush(s->file);
}

static int grow_refcount_table(BDRVQcow2State *s, uint64_t index,
                               uint64_t new_block, uint64_t cluster);

/*
 * Make sure refcount block @index exists.  Returns 0 if it already did,
 * 1 if something was allocated (callers that searched for free clusters
 * must search again), or a negative errno.  @cluster is the first cluster
 * the caller wants a refcount for in that block.
 *
 * The block's own cluster is searched for from free_cluster_index, which
 * the caller's search left past its run: as in QEMU, a block that a run
 * needs goes after the run, into the range it describes when that is free.
 */
static int ensure_refblock(BDRVQcow2State *s, uint64_t index,
                           uint64_t cluster)
{
    uint64_t block, new_cluster, got, own_index;
    void *refblock;
    int64_t found;
    int ret;

    ret = qcow2_refblock_offset(s, index, &block);
    if (ret < 0 || block) {
        return ret;
    }

    found = find_free_run(s, 1, true, true, &got, "refcount block");
    if (found < 0) {
        return found;
    }
    new_cluster = found;
    own_index = new_cluster >> s->refcount_block_bits;
    if (own_index != index) {
        /* The new block's own refcount lives in another block. */
        ret = ensure_refblock(s, own_index, new_cluster);
        if (ret != 0) {
            return ret;     /* made: the caller searches again, as QEMU */
        }
        ret = qcow2_update_refcount(s, new_cluster << s->cluster_bits,
                                    1, 1, false, QCOW2_DISCARD_NEVER);
        if (ret < 0) {
            return ret;
        }
        /* That refcount must be on disk before a table points here. */
        ret = qcow2_flush_refcounts(s);
        if (ret < 0) {
            return ret;
        }
    }

    block = new_cluster << s->cluster_bits;
    ret = qcow2_cache_get_empty(s, s->refcount_block_cache, block, &refblock);
    if (ret < 0) {
        return ret;
    }
    memset(refblock, 0, s->cluster_size);
    if (own_index == index) {
        s->set_refcount(refblock, new_cluster & (s->refcount_block_size - 1),
                        1);
    }
    ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_BLOCK, block, refblock,
                            s->cluster_size);
    qcow2_cache_put(s->refcount_block_cache, &refblock);
    if (ret >= 0) {
        ret = host_file_flush(s->file);
    }
    if (ret < 0) {
        qcow2_cache_discard(s->refcount_block_cache, block);
        return ret;
    }

    if (index >= s->refcount_table_size) {
        /* The new table names the block: it is hooked up with the switch. */
        ret = grow_refcount_table(s, index, block, cluster);
        if (ret < 0) {
            qcow2_cache_discard(s->refcount_block_cache, block);
            return ret;
        }
    } else {
        s->refcount_table[index] = block;
        ret = write_reftable_entry(s, index);
        if (ret < 0) {
            s->refcount_table[index] = 0;
            qcow2_cache_discard(s->refcount_block_cache, block);
            return ret;
        }
        if (index > s->max_refcount_table_index) {
            s->max_refcount_table_index = index;
        }
    }
    qcow2_map_enter(s, block, s->cluster_size, QCOW2_OL_REFCOUNT_BLOCK);
    if (own_index == index) {
        /* Its refcount was set in the block itself, not through an update. */
        qcow2_free_index_mark_used(s, new_cluster, 1);
    }
    return 1;
}

/*
 * Refcount blocks needed to describe @clusters clusters plus the refcount
 * structures themselves, with room for a table half as large again, as
 * QEMU sizes a growing refcount table (qcow2_refcount_metadata_size()).
 */
static uint64_t grown_refblock_count(BDRVQcow2State *s, uint64_t clusters)
{
    uint64_t per_table_cluster = s->cluster_size / 8;
    uint64_t blocks = 0, table = 0, n = 0, last;
    bool generous = true;

    do {
        last = n;
        blocks = DIV_ROUND_UP(clusters + table + blocks,
                              (uint64_t)s->refcount_block_size);
        table = DIV_ROUND_UP(blocks, per_table_cluster);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += DIV_ROUND_UP(table, 2);
            n = 0;
            generous = false;
        }
    } while (n != last);
    return blocks;
}

/*
 * Grow the refcount table so that it names refcount block @index, already
 * written at @new_block (for @cluster and what follows it).
 *
 * As in QEMU, the new structures start at the first refcount-block
 * boundary past @cluster and @new_block, where everything is free: the
 * blocks for that area and beyond, then a table with half as many entries
 * again as needed.  All of it is written and synced before the header
 * switches to the new table with one write (design.md, rule 5).
 */
/* One header write moves the image to the refcount table at @offset. */
int qcow2_commit_reftable_location(BDRVQcow2State *s, uint64_t offset,
                                   uint32_t clusters)
{
    uint8_t hdr[12];

    be_put64(hdr, offset);
    be_put32(hdr + 8, clusters);
    return qcow2_commit_header_field(s, HDR_OFF_REFTABLE_OFFSET, hdr, 12);
}

/*
 * Make the new refcount table (@entries entries, @tc clusters at @offset,
 * written and synced) the image's: the header first, then the in-memory
 * table and the overlap map.  If the header write fails, either table may
 * be the one on disk, so the caller keeps both.
 */
int qcow2_switch_refcount_table(BDRVQcow2State *s, uint64_t **table,
                                uint64_t entries, uint64_t offset,
                                uint64_t tc)
{
    uint64_t old_clusters = size_to_clusters(s, s->refcount_table_size * 8);
    int ret;

    ret = qcow2_commit_reftable_location(s, offset, tc);
    if (ret < 0) {
        return ret;
    }
    qcow2_map_remove(s, s->refcount_table_offset,
                     old_clusters << s->cluster_bits,
                     QCOW2_OL_REFCOUNT_TABLE);
    g_free(s->refcount_table);
    s->refcount_table = g_steal_pointer(table);
    s->refcount_table_size = entries;
    s->refcount_table_offset = offset;
    update_max_refcount_table_index(s);
    qcow2_free_index_resize(s);
    return 0;
}

static int grow_refcount_table(BDRVQcow2State *s, uint64_t index,
                               uint64_t new_block, uint64_t cluster)
{
    uint64_t epc = s->cluster_size / 8;           /* entries per cluster */
    uint64_t rbs = s->refcount_block_size;
    uint64_t old_size = s->refcount_table_size;
    uint64_t old_offset = s->refcount_table_offset;
    uint64_t old_clusters = size_to_clusters(s, old_size * 8);
    uint64_t blocks_used, start, total, entries, tc, nb, end, c, i;
    uint64_t table_offset;
    g_autofree uint8_t *area = NULL;
    g_autofree uint64_t *new_table = NULL;
    int ret;

    blocks_used = DIV_ROUND_UP(MAX(cluster, new_block >> s->cluster_bits) + 1,
                               rbs);
    start = blocks_used * rbs;
    total = grown_refblock_count(s, start);
    for (;;) {
        entries = ROUND_UP(total + DIV_ROUND_UP(total, 2), epc);
        tc = entries / epc;
        nb = total - blocks_used;
        end = start + nb + tc;
        if (end <= total * rbs) {
            break;
        }
        total++;   /* never for QEMU's sizes; keeps every new cluster counted */
    }
    if (entries * 8 > QCOW_MAX_REFTABLE_SIZE ||
        end > (QCOW2_MAX_HOST_OFFSET >> s->cluster_bits)) {
        qcow2_set_error(s, "Refcount table would exceed the maximum size");
        return -EFBIG;
    }

    area = g_try_malloc0((nb + tc) << s->cluster_bits);
    new_table = g_try_new0(uint64_t, entries);
    if (!area || !new_table) {
        return -ENOMEM;
    }
    memcpy(new_table, s->refcount_table, old_size * 8);
    new_table[index] = new_block;
    for (i = 0; i < nb; i++) {
        new_table[blocks_used + i] = (start + i) << s->cluster_bits;
    }
    for (c = start; c < end; c++) {
        uint64_t b = (c >> s->refcount_block_bits) - blocks_used;
        s->set_refcount(area + (b << s->cluster_bits), c & (rbs - 1), 1);
    }
    for (i = 0; i < entries; i++) {
        be_put64(area + ((nb << s->cluster_bits) + i * 8), new_table[i]);
    }
    table_offset = (start + nb) << s->cluster_bits;

    /* Everything the new table needs is on disk before the header moves. */
    ret = qcow2_flush_refcounts(s);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_pwrite_meta(s, QCOW2_OL_REFCOUNT_BLOCK |
                            QCOW2_OL_REFCOUNT_TABLE,
                            start << s->cluster_bits, area,
                            (nb + tc) << s->cluster_bits);
    if (ret < 0) {
        return ret;
    }
    ret = host_file_flush(s->file);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_switch_refcount_table(s, &new_table, entries, table_offset,
                                      tc);
    if (ret < 0) {
        return ret;
    }
    qcow2_free_index_mark_used(s, start, end - start);
    qcow2_map_enter(s, start << s->cluster_bits, nb << s->cluster_bits,
                    QCOW2_OL_REFCOUNT_BLOCK);
    qcow2_map_enter(s, table_offset, tc << s->cluster_bits,
                    QCOW2_OL_REFCOUNT_TABLE);

    /* The old table is unreferenced now; a failure here only leaks it. */
    return qcow2_free_clusters(s, old_offset, old_clusters << s->cluster_bits,
                               QCOW2_DISCARD_OTHER);
}

/*
 * Make sure refcount blocks exist for clusters [first, first + n).  When
 * one had to be made (1), *@missing is the first cluster it describes.
 */
static int ensure_refblocks(BDRVQcow2State *s, uint64_t first, uint64_t n,
                            uint64_t *missing)
{
    uint64_t idx = first >> s->refcount_block_bits;
    uint64_t last = (first + n - 1) >> s->refcount_block_bits;
    int ret;

    for (; idx <= last; idx++) {
        *missing = MAX(first, idx << s->refcount_block_bits);
        ret = ensure_refblock(s, idx, *missing);
        if (ret != 0) {
            return ret;
        }
    }
    return 0;
}

/* The cluster the next allocation would start at (nothing is allocated). */
int64_t qcow2_first_free_cluster(BDRVQcow2State *s)
{
    uint64_t got;

    return find_free_run(s, 1, true, false, &got, NULL);
}

/*
 * Free clusters that nothing on disk names any more (a table the header
 * stopped pointing at, synced): unlike other frees they may be reused at
 * once, so they skip the freed list.  Their refcount drop still goes
 * through the cache, after the writes that depend on it.
 */
int qcow2_free_unreferenced_clusters(BDRVQcow2State *s, uint64_t offset,
                                     uint64_t size)
{
    uint64_t first = offset >> s->cluster_bits;
    uint64_t n = size_to_clusters(s, offset_into_cluster(s, offset) + size);
    uint64_t c;
    int ret;

    ret = qcow2_update_refcount(s, offset, size, 1, true,
                                QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        return ret;
    }
    forget_freed_clusters(s, first, n);
    for (c = first; c < first + n; c++) {
        uint64_t refcount;
        if (qcow2_get_refcount(s, c, &refcount) == 0 && refcount == 0) {
            qcow2_free_index_mark_free(s, c, 1);
            s->free_cluster_index = MIN(s->free_cluster_index, c);
        }
    }
    return 0;
}

static int64_t alloc_clusters(BDRVQcow2State *s, uint64_t n, bool exact,
                              uint64_t *got, const char *what)
{
    uint64_t missing;
    int64_t first;
    int ret;

    if (n == 0) {
        return -EINVAL;
    }
    for (;;) {
        first = find_free_run(s, n, exact, true, got, what);
        if (first < 0) {
            return first;
        }
        ret = ensure_refblocks(s, first, *got, &missing);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0) {
            break;
        }
        /*
         * QEMU searches again from the run once refcount structures were
         * made for it, so the run usually stays where it was found.
         */
        s->free_cluster_index = MIN(s->free_cluster_index, (uint64_t)first);
    }
    ret = qcow2_update_refcount(s, (uint64_t)first << s->cluster_bits,
                                *got << s->cluster_bits, 1, false,
                                QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        return ret;
    }
    return (int64_t)first << s->cluster_bits;
}

/* Allocate up to @n contiguous clusters; *got says how many. */
int64_t qcow2_alloc_clusters(BDRVQcow2State *s, uint64_t n, uint64_t *got)
{
    return alloc_clusters(s, n, false, got, NULL);
}

/* Allocate exactly @n contiguous clusters (tables). */
int64_t qcow2_alloc_clusters_exact(BDRVQcow2State *s, uint64_t n)
{
    uint64_t got;

    return alloc_clusters(s, n, true, &got, NULL);
}

/* One cluster for the table @what names in QEMU's corruption message. */
int64_t qcow2_alloc_table_cluster(BDRVQcow2State *s, const char *what)
{
    uint64_t got;

    return alloc_clusters(s, 1, true, &got, what);
}

/*
 * Host clusters for a run of a guest write, placed as QEMU places them:
 * right after the host clusters of the request's previous run (@next, a
 * host offset, 0 for none), as many of up to @n as are free there;
 * otherwise the first run of exactly @n free clusters.  *got says how
 * many.
 */
int64_t qcow2_alloc_data_clusters(BDRVQcow2State *s, uint64_t n,
                                  uint64_t next, uint64_t *got)
{
    uint64_t c = next >> s->cluster_bits, first_free, missing;
    uint64_t limit = QCOW2_MAX_HOST_OFFSET >> s->cluster_bits;
    int64_t found;
    int ret;

    while (c && c < limit && n) {
        found = qcow2_free_index_find(s, c, MIN(n, limit - c), false, got,
                                      &first_free);
        if (found < 0) {
            return found;
        }
        if ((uint64_t)found != c || !*got) {
            break;
        }
        ret = ensure_refblocks(s, c, *got, &missing);
        if (ret < 0) {
            return ret;
        }
        if (ret > 0) {
            continue;   /* the new block may sit there: look again */
        }
        ret = qcow2_update_refcount(s, next, *got << s->cluster_bits, 1,
                                    false, QCOW2_DISCARD_NEVER);
        return ret < 0 ? ret : (int64_t)next;
    }
    return alloc_clusters(s, n, true, got, NULL);
}

/*
 * Allocate clusters at a given place, which must be free (preallocation of
 * ranges whose position is fixed).  Returns -EAGAIN if any is in use.
 */
int qcow2_alloc_clusters_at(BDRVQcow2State *s, uint64_t offset, uint64_t n)
{
    uint64_t first = offset >> s->cluster_bits;
    uint64_t i, refcount, missing;
    int ret;

    do {
        ret = ensure_refblocks(s, first, n, &missing);
        if (ret < 0) {
            return ret;
        }
    } while (ret > 0);
    for (i = 0; i < n; i++) {
        ret = qcow2_get_refcount(s, first + i, &refcount);
        if (ret < 0) {
            return ret;
        }
        if (refcount) {
            return -EAGAIN;
        }
    }
    return qcow2_update_refcount(s, offset, n << s->cluster_bits, 1, false,
                                 QCOW2_DISCARD_NEVER);
}

/*
 * Allocate @size bytes (at most a cluster) for compressed data, packing
 * consecutive compressed clusters into the same host clusters as QEMU does.
 * Every host cluster the bytes touch gains one reference.
 */
int64_t qcow2_alloc_bytes(BDRVQcow2State *s, int size)
{
    uint64_t offset = s->free_byte_offset;
    uint64_t free_in_cluster = 0;
    int ret;

    g_assert(size > 0 && size <= s->cluster_size);
    if (offset) {
        uint64_t refcount;
        ret = qcow2_get_refcount(s, offset >> s->cluster_bits, &refcount);
        if (ret < 0) {
            return ret;
        }
        if (refcount == s->refcount_max) {
            offset = 0;
        }
    }
    if (offset) {
        free_in_cluster = s->cluster_size - offset_into_cluster(s, offset);
    }
    if (!offset || free_in_cluster < (uint64_t)size) {
        uint64_t got, missing;
        int64_t first;

        for (;;) {
            first = find_free_run(s, 1, true, true, &got,
                                  "compressed cluster");
            if (first < 0) {
                return first;
            }
            ret = ensure_refblocks(s, first, 1, &missing);
            if (ret < 0) {
                return ret;
            }
            if (ret == 0) {
                break;
            }
        }
        /* Continue into the next cluster only if it is the adjacent one. */
        if (!offset || ROUND_UP(offset, (uint64_t)s->cluster_size) !=
                       (uint64_t)first << s->cluster_bits) {
            offset = (uint64_t)first << s->cluster_bits;
        }
    }
    ret = qcow2_update_refcount(s, offset, size, 1, false,
                                QCOW2_DISCARD_NEVER);
    if (ret < 0) {
        s->free_byte_offset = 0;
        return ret;
    }
    s->free_byte_offset = offset + size;
    if (!offset_into_cluster(s, s->free_byte_offset)) {
        s->free_byte_offset = 0;
    }
    return offset;
}

int qcow2_flush_refcounts(BDRVQcow2State *s)
{
    return qcow2_cache_flush(s, s->refcount_block_cache);
}

/*
 * A reference to a cluster that no refcount block covers (a damaged L2
 * entry naming a place past the end of the file; allocations make their
 * blocks first).  QEMU makes the block, hooks it up and fails the update
 * with -EAGAIN, which its callers outside allocation pass on (snapshot -c
 * fails, and succeeds when tried again); past what the largest refcount
 * table can describe it fails with -EFBIG.  So does qguard, except that
 * the -EFBIG comes before anything is allocated (QEMU leaks a block).
 */
static int missing_refblock(BDRVQcow2State *s, uint64_t table_index,
                            uint64_t cluster)
{
    int ret;

    if (table_index >= QCOW_MAX_REFTABLE_SIZE / 8) {
        return -EFBIG;
    }
    ret = ensure_refblock(s, table_index, cluster);
    return ret < 0 ? ret : -EAGAIN;
}

static int update_refcount_range(BDRVQcow2State *s, uint64_t first,
                                 uint64_t last, uint64_t amount,
                                 bool decrease, Qcow2DiscardType type,
                                 uint64_t *done, uint64_t *last_refcount)
{
    uint64_t mask = s->refcount_block_size - 1;
    uint64_t c = first, block_first;
    int ret = 0;

    while (c <= last) {
        uint64_t table_index = c >> s->refcount_block_bits;
        uint64_t block_last = MIN(last, ((table_index + 1) <<
                                         s->refcount_block_bits) - 1);
        void *refblock;

        ret = refblock_get(s, table_index, &refblock);
        if (ret < 0) {
            break;
        }
        if (!refblock && !decrease) {
            ret = missing_refblock(s, table_index, c);
            break;
        }
        if (!refblock) {
            qcow2_set_error(s, "Refcount block for cluster %" G_GUINT64_FORMAT
                            " is missing", c);
            ret = -EINVAL;
            break;
        }
        block_first = c;
        for (; c <= block_last; c++) {
            uint64_t old = s->get_refcount(refblock, c & mask);
            uint64_t new;

            if (decrease ? old < amount : s->refcount_max - old < amount) {
                qcow2_set_error(s, "Refcount of cluster %" G_GUINT64_FORMAT
                                " would %s", c,
                                decrease ? "drop below 0" : "overflow");
                /* QEMU's errno for both, which snapshot -c prints. */
                ret = -EINVAL;
                break;
            }
            new = decrease ? old - amount : old + amount;
            s->set_refcount(refblock, c & mask, new);
            if (last_refcount) {
                *last_refcount = new;
            }
            if (new == 0) {
                uint64_t off = c << s->cluster_bits;
                /* A freed table must never be written back from a cache. */
                qcow2_cache_discard(s->l2_table_cache, off);
                qcow2_cache_discard(s->refcount_block_cache, off);
                /*
                 * Once free, the cluster may come back as anything (a data
                 * cluster, a table): the next compressed bytes must not be
                 * packed after the ones it held.  QEMU 7.2 keeps packing
                 * there and writes compressed data into whatever the
                 * cluster has become.
                 */
                if (s->free_byte_offset &&
                    s->free_byte_offset >> s->cluster_bits == c) {
                    s->free_byte_offset = 0;
                }
                remember_freed_cluster(s, c, type != QCOW2_DISCARD_NEVER &&
                                             s->discard_passthrough[type]);
            }
            (*done)++;
        }
        if (!decrease && c > block_first) {
            qcow2_free_index_mark_used(s, block_first, c - block_first);
            if (s->freed_clusters->len) {
                forget_freed_clusters(s, block_first, c - block_first);
            }
        }
        qcow2_cache_entry_mark_dirty(s->refcount_block_cache, refblock);
        qcow2_cache_put(s->refcount_block_cache, &refblock);
        if (ret < 0) {
            break;
        }
    }
    return ret;
}

/*
 * @after_l2: a decrease must reach the disk after the L2 tables that
 * stopped pointing at the clusters (always, except when undoing an
 * allocation that no table has pointed at).
 */
static int update_refcount(BDRVQcow2State *s, uint64_t offset,
                           uint64_t length, uint64_t amount, bool decrease,
                           Qcow2DiscardType type, bool after_l2,
                           uint64_t *last_refcount)
{
    uint64_t first, last, done = 0;
    int ret;

    if (length == 0 || amount == 0) {
        return 0;
    }
    if (decrease && after_l2 &&
        !(s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        ret = qcow2_cache_set_dependency(s, s->refcount_block_cache,
                                         s->l2_table_cache);
        if (ret < 0) {
            return ret;
        }
    }
    first = offset >> s->cluster_bits;
    last = (offset + length - 1) >> s->cluster_bits;
    ret = update_refcount_range(s, first, last, amount, decrease, type, &done,
                                last_refcount);
    if (ret < 0 && done) {
        /* Undo the part that was applied so the update is all or nothing. */
        uint64_t undone = 0;
        update_refcount_range(s, first, first + done - 1, amount, !decrease,
                              QCOW2_DISCARD_NEVER, &undone, NULL);
    }
    return ret;
}

int qcow2_update_refcount(BDRVQcow2State *s, uint64_t offset,
                          uint64_t length, uint64_t amount, bool decrease,
                          Qcow2DiscardType type)
{
    return update_refcount(s, offset, length, amount, decrease, type, true,
                           NULL);
}

int qcow2_add_cluster_ref(BDRVQcow2State *s, uint64_t offset,
                          uint64_t *refcount)
{
    return update_refcount(s, offset, 1, 1, false, QCOW2_DISCARD_NEVER, true,
                           refcount);
}

/*
 * The decrease waits for no L2 table: on a full disk, where the tables of
 * the failed request cannot be written, the refcounts still go back and
 * the image is left without leaks, as QEMU leaves it.
 */
int qcow2_abort_allocation(BDRVQcow2State *s, uint64_t offset, uint64_t size)
{
    return update_refcount(s, offset, size, 1, true, QCOW2_DISCARD_NEVER,
                           false, NULL);
}

/*
 * A failed free leaves the clusters leaked (check -r reclaims them), never
 * inconsistent; the error still goes back to the request that freed.
 */
int qcow2_free_clusters(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                        Qcow2DiscardType type)
{
    return qcow2_update_refcount(s, offset, size, 1, true, type);
}

int qcow2_free_any_cluster(BDRVQcow2State *s, uint64_t l2_entry,
                           Qcow2DiscardType type)
{
    switch (qcow2_get_cluster_type(s, l2_entry)) {
    case QCOW2_CLUSTER_COMPRESSED: {
        uint64_t coffset;
        int csize;
        qcow2_parse_compressed_entry(s, l2_entry, &coffset, &csize);
        return qcow2_free_clusters(s, coffset, csize, type);
    }
    case QCOW2_CLUSTER_NORMAL:
    case QCOW2_CLUSTER_ZERO_ALLOC:
        if (offset_into_cluster(s, l2_entry & L2E_OFFSET_MASK)) {
            qcow2_signal_corruption(s, false, -1, -1,
                                    "Cannot free unaligned cluster %#" PRIx64,
                                    l2_entry & L2E_OFFSET_MASK);
            return 0;
        }
        if (has_data_file(s)) {
            /*
             * Nothing is refcounted in a data file; a discard is passed on
             * (advisory: the cluster's old contents are no longer wanted).
             */
            if (s->discard_passthrough[type] && s->data_file) {
                (void)host_file_discard(s->data_file,
                                        l2_entry & L2E_OFFSET_MASK,
                                        s->cluster_size);
            }
            return 0;
        }
        return qcow2_free_clusters(s, l2_entry & L2E_OFFSET_MASK,
                                   s->cluster_size, type);
    case QCOW2_CLUSTER_ZERO_PLAIN:
    case QCOW2_CLUSTER_UNALLOCATED:
        break;
    }
    return 0;
}
