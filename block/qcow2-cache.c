/* SPDX-License-Identifier: MIT */
/*
 * qcow2 table cache: L2 tables and refcount blocks.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A cache is a fixed array of cluster-sized slots.  Three structures index
 * the same slots, so that no operation walks the whole cache:
 *
 *   - a chained hash from on-disk offset to slot: lookups are O(1);
 *   - an LRU list through all slots, most recently used first, unused slots
 *     at the tail: a victim is the last slot with no references, found in
 *     O(1 + pinned slots);
 *   - a list of dirty slots: write-back costs O(dirty), and dirty tables that
 *     are adjacent on disk are written with a single pwritev.
 *
 * Ordering rules (the reason for dependencies):
 *
 *   - When a cluster is allocated, its new refcount must be on disk before any
 *     table that points at it.  The L2 cache then depends on the refcount-block
 *     cache: before any dirty L2 table is written, every dirty refcount block
 *     is written and the file is flushed.
 *   - When a cluster is freed, the L2 entry that stops pointing at it must be
 *     on disk before its refcount drops to 0 on disk: the refcount-block cache
 *     depends on the L2 cache.
 *   - A cache may depend on at most one other cache.  Setting a dependency that
 *     would form a cycle first flushes the cache depended upon, so the
 *     dependency graph never has a cycle and write-back always terminates.
 *   - "depends on flush" only asks for a flush of the host file before the next
 *     write-back (used after data writes that tables will point at).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

typedef struct Qcow2CacheEntry {
    uint64_t offset;        /* 0: slot holds no table */
    int ref;
    bool dirty;
    bool discard_on_put;    /* freed while pinned: forget it when released */
    int32_t lru_prev;
    int32_t lru_next;
    int32_t hash_next;
} Qcow2CacheEntry;

struct Qcow2Cache {
    int size;
    size_t table_size;
    Qcow2CacheEntry *entries;
    uint8_t *tables;
    int32_t *buckets;
    uint32_t bucket_mask;
    int32_t lru_head;
    int32_t lru_tail;
    GArray *dirty;          /* slot indices; an index appears at most once */
    Qcow2Cache *depends;
    bool depends_on_flush;
    unsigned ol_type;       /* the metadata type these tables are */
};

static inline uint32_t hash_offset(const Qcow2Cache *c, uint64_t offset)
{
    /* Offsets are cluster aligned; mix high bits down (Fibonacci hashing). */
    return (uint32_t)((offset * 0x9e3779b97f4a7c15ULL) >> 32) & c->bucket_mask;
}

static inline void *slot_table(const Qcow2Cache *c, int i)
{
    return c->tables + (size_t)i * c->table_size;
}

static inline int table_slot(const Qcow2Cache *c, const void *table)
{
    return ((const uint8_t *)table - c->tables) / c->table_size;
}

static void lru_unlink(Qcow2Cache *c, int i)
{
    Qcow2CacheEntry *e = &c->entries[i];

    if (e->lru_prev >= 0) {
        c->entries[e->lru_prev].lru_next = e->lru_next;
    } else {
        c->lru_head = e->lru_next;
    }
    if (e->lru_next >= 0) {
        c->entries[e->lru_next].lru_prev = e->lru_prev;
    } else {
        c->lru_tail = e->lru_prev;
    }
    e->lru_prev = e->lru_next = -1;
}

static void lru_push_head(Qcow2Cache *c, int i)
{
    Qcow2CacheEntry *e = &c->entries[i];

    e->lru_prev = -1;
    e->lru_next = c->lru_head;
    if (c->lru_head >= 0) {
        c->entries[c->lru_head].lru_prev = i;
    } else {
        c->lru_tail = i;
    }
    c->lru_head = i;
}

static void lru_push_tail(Qcow2Cache *c, int i)
{
    Qcow2CacheEntry *e = &c->entries[i];

    e->lru_next = -1;
    e->lru_prev = c->lru_tail;
    if (c->lru_tail >= 0) {
        c->entries[c->lru_tail].lru_next = i;
    } else {
        c->lru_head = i;
    }
    c->lru_tail = i;
}

static void hash_insert(Qcow2Cache *c, int i)
{
    uint32_t h = hash_offset(c, c->entries[i].offset);

    c->entries[i].hash_next = c->buckets[h];
    c->buckets[h] = i;
}

static void hash_remove(Qcow2Cache *c, int i)
{
    uint32_t h = hash_offset(c, c->entries[i].offset);
    int32_t *link = &c->buckets[h];

    while (*link >= 0) {
        if (*link == i) {
            *link = c->entries[i].hash_next;
            c->entries[i].hash_next = -1;
            return;
        }
        link = &c->entries[*link].hash_next;
    }
    g_assert_not_reached();
}

static int hash_lookup(const Qcow2Cache *c, uint64_t offset)
{
    int32_t i = c->buckets[hash_offset(c, offset)];

    while (i >= 0 && c->entries[i].offset != offset) {
        i = c->entries[i].hash_next;
    }
    return i;
}

Qcow2Cache *qcow2_cache_create(BDRVQcow2State *s, int num_tables,
                               unsigned ol_type)
{
    Qcow2Cache *c = g_new0(Qcow2Cache, 1);
    uint32_t nbuckets = 16;
    int i;

    g_assert(num_tables >= 2);
    c->size = num_tables;
    c->table_size = s->cluster_size;
    c->ol_type = ol_type;
    c->entries = g_try_new0(Qcow2CacheEntry, num_tables);
    /* Page aligned, so that O_DIRECT (cache.direct) needs no bounce buffer. */
    if (!c->entries || posix_memalign((void **)&c->tables, 4096,
                                      (size_t)num_tables * c->table_size)) {
        /* A size the user asked for: QEMU fails the open, and so do we. */
        c->tables = NULL;
        g_free(c->entries);
        g_free(c);
        return NULL;
    }
    while (nbuckets < (uint32_t)num_tables * 2) {
        nbuckets <<= 1;
    }
    c->buckets = g_new(int32_t, nbuckets);
    memset(c->buckets, 0xff, nbuckets * sizeof(int32_t));
    c->bucket_mask = nbuckets - 1;
    c->lru_head = c->lru_tail = -1;
    for (i = 0; i < num_tables; i++) {
        c->entries[i].hash_next = -1;
        lru_push_tail(c, i);
    }
    c->dirty = g_array_new(FALSE, FALSE, sizeof(int32_t));
    return c;
}

void qcow2_cache_destroy(Qcow2Cache *c)
{
    if (!c) {
        return;
    }
    g_array_free(c->dirty, TRUE);
    g_free(c->buckets);
    free(c->tables);
    g_free(c->entries);
    g_free(c);
}

int qcow2_cache_num_tables(const Qcow2Cache *c)
{
    return c->size;
}

static int flush_dependency(BDRVQcow2State *s, Qcow2Cache *c)
{
    int ret = 0;

    /* Guest data in a data file is not covered by flushing the image. */
    if (c->depends_on_flush) {
        ret = qcow2_flush_data_file(s);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->depends) {
        Qcow2Cache *dep = c->depends;
        ret = qcow2_cache_flush(s, dep);
        if (ret < 0) {
            return ret;
        }
    } else if (c->depends_on_flush) {
        ret = host_file_flush(s->file);
        if (ret < 0) {
            return ret;
        }
    }
    c->depends = NULL;
    c->depends_on_flush = false;
    return 0;
}

static int compare_slot_offsets(const void *a, const void *b, void *opaque)
{
    const Qcow2Cache *c = opaque;
    uint64_t oa = c->entries[*(const int32_t *)a].offset;
    uint64_t ob = c->entries[*(const int32_t *)b].offset;

    return oa < ob ? -1 : oa > ob;
}

/* Write a run of slots that are adjacent on disk with one pwritev. */
static int write_run(BDRVQcow2State *s, Qcow2Cache *c, const int32_t *slots,
                     int n)
{
    struct iovec iov_local[64];
    struct iovec *iov = n <= 64 ? iov_local : g_new(struct iovec, n);
    uint64_t offset = c->entries[slots[0]].offset;
    int ret;
    int i;

    for (i = 0; i < n; i++) {
        iov[i].iov_base = slot_table(c, slots[i]);
        iov[i].iov_len = c->table_size;
    }
    ret = qcow2_pwritev_checked(s, c->ol_type, offset, iov, n,
                                (uint64_t)n * c->table_size);
    if (iov != iov_local) {
        g_free(iov);
    }
    return ret;
}

int qcow2_cache_write(BDRVQcow2State *s, Qcow2Cache *c)
{
    int32_t *slots;
    int n, i, start;
    int ret;

    if (c->dirty->len == 0) {
        return 0;
    }
    ret = flush_dependency(s, c);
    if (ret < 0) {
        return ret;
    }
    n = c->dirty->len;
    slots = (int32_t *)c->dirty->data;
    g_qsort_with_data(slots, n, sizeof(int32_t), compare_slot_offsets, c);

    start = 0;
    for (i = 1; i <= n; i++) {
        bool run_ends = i == n || i - start >= 1024 ||
            c->entries[slots[i]].offset !=
            c->entries[slots[i - 1]].offset + c->table_size;
        if (run_ends) {
            ret = write_run(s, c, slots + start, i - start);
            if (ret < 0) {
                /* Keep the unwritten ones dirty; drop the written ones. */
                int j, k = 0;
                for (j = 0; j < start; j++) {
                    c->entries[slots[j]].dirty = false;
                }
                for (j = start; j < n; j++) {
                    slots[k++] = slots[j];
                }
                g_array_set_size(c->dirty, k);
                return ret;
            }
            start = i;
        }
    }
    for (i = 0; i < n; i++) {
        c->entries[slots[i]].dirty = false;
    }
    g_array_set_size(c->dirty, 0);
    return 0;
}

int qcow2_cache_flush(BDRVQcow2State *s, Qcow2Cache *c)
{
    int ret = qcow2_cache_write(s, c);

    if (ret < 0) {
        return ret;
    }
    return host_file_flush(s->file);
}

int qcow2_cache_set_dependency(BDRVQcow2State *s, Qcow2Cache *c,
                               Qcow2Cache *dependency)
{
    int ret;

    if (dependency->depends) {
        ret = flush_dependency(s, dependency);
        if (ret < 0) {
            return ret;
        }
    }
    if (c->depends && c->depends != dependency) {
        ret = flush_dependency(s, c);
        if (ret < 0) {
            return ret;
        }
    }
    c->depends = dependency;
    return 0;
}

void qcow2_cache_depends_on_flush(Qcow2Cache *c)
{
    c->depends_on_flush = true;
}

static int find_victim(Qcow2Cache *c)
{
    int32_t i;

    for (i = c->lru_tail; i >= 0; i = c->entries[i].lru_prev) {
        if (c->entries[i].ref == 0) {
            return i;
        }
    }
    return -1;
}

static int do_get(BDRVQcow2State *s, Qcow2Cache *c, uint64_t offset,
                  void **table, bool read_from_disk)
{
    Qcow2CacheEntry *e;
    int i;
    int ret;

    if (offset == 0 || offset_into_cluster(s, offset)) {
        /* Only damaged metadata names such a table; never read it. */
        qcow2_signal_corruption(s, true, offset, c->table_size,
                                "Invalid table offset %#" PRIx64, offset);
        return -EIO;
    }
    i = hash_lookup(c, offset);
    if (i >= 0) {
        goto found;
    }

    i = find_victim(c);
    if (i < 0) {
        qcow2_set_error(s, "qcow2 table cache exhausted");
        return -ENOSPC;
    }
    e = &c->entries[i];
    if (e->dirty) {
        /*
         * Writing back every dirty table, not just the victim, amortises the
         * dependency flush over many tables.
         */
        ret = qcow2_cache_write(s, c);
        if (ret < 0) {
            return ret;
        }
    }
    if (e->offset) {
        hash_remove(c, i);
        e->offset = 0;
    }
    if (read_from_disk) {
        ret = host_file_pread(s->file, offset, slot_table(c, i),
                              c->table_size);
        if (ret < 0) {
            return ret;
        }
    }
    e->offset = offset;
    hash_insert(c, i);

found:
    e = &c->entries[i];
    e->ref++;
    lru_unlink(c, i);
    lru_push_head(c, i);
    *table = slot_table(c, i);
    return 0;
}

int qcow2_cache_get(BDRVQcow2State *s, Qcow2Cache *c, uint64_t offset,
                    void **table)
{
    return do_get(s, c, offset, table, true);
}

int qcow2_cache_get_empty(BDRVQcow2State *s, Qcow2Cache *c, uint64_t offset,
                          void **table)
{
    return do_get(s, c, offset, table, false);
}

void qcow2_cache_put(Qcow2Cache *c, void **table)
{
    int i = table_slot(c, *table);

    g_assert(c->entries[i].ref > 0);
    c->entries[i].ref--;
    *table = NULL;
    if (c->entries[i].ref == 0 && c->entries[i].discard_on_put) {
        c->entries[i].discard_on_put = false;
        qcow2_cache_discard(c, c->entries[i].offset);
    }
}

void qcow2_cache_entry_mark_dirty(Qcow2Cache *c, void *table)
{
    int32_t i = table_slot(c, table);

    g_assert(c->entries[i].offset != 0);
    if (!c->entries[i].dirty) {
        c->entries[i].dirty = true;
        g_array_append_val(c->dirty, i);
    }
}

static void remove_from_dirty_list(Qcow2Cache *c, int32_t i)
{
    int32_t *slots = (int32_t *)c->dirty->data;
    guint k;

    for (k = 0; k < c->dirty->len; k++) {
        if (slots[k] == i) {
            g_array_remove_index_fast(c->dirty, k);
            return;
        }
    }
}

/* Forget a table whose cluster was freed: it must never be written back. */
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset)
{
    int i = hash_lookup(c, offset);

    if (i < 0) {
        return;
    }
    if (c->entries[i].dirty) {
        c->entries[i].dirty = false;
        remove_from_dirty_list(c, i);
    }
    if (c->entries[i].ref > 0) {
        /*
         * Only a damaged image frees a table that is in use (an L2 entry
         * pointing at its own table): keep the slot until it is released.
         */
        c->entries[i].discard_on_put = true;
        return;
    }
    hash_remove(c, i);
    c->entries[i].offset = 0;
    lru_unlink(c, i);
    lru_push_tail(c, i);
}

/* Write everything back and drop all tables (used after repairs). */
int qcow2_cache_empty(BDRVQcow2State *s, Qcow2Cache *c)
{
    int ret = qcow2_cache_flush(s, c);
    int i;

    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < c->size; i++) {
        if (c->entries[i].offset && c->entries[i].ref == 0) {
            qcow2_cache_discard(c, c->entries[i].offset);
        }
    }
    return 0;
}
