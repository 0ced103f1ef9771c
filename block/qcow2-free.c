/* SPDX-License-Identifier: MIT */
/*
 * qcow2 free-space index: the free host clusters, kept beside the refcounts
 * so that an allocation never scans them (docs/allocation.md).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * One chunk per refcount-table entry, filled from its refcount block the
 * first time a search reaches it and updated with every refcount change
 * from then on.  A hierarchical bitset over the chunks says which ones may
 * hold a free cluster, so full regions cost nothing to skip.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

#define SUMMARY_MAX_LEVELS 6    /* 64^6 chunks: far past QEMU's table limit */

typedef struct FreeChunk {
    uint64_t nfree;
    uint64_t bits[];            /* one per cluster, 1 = free */
} FreeChunk;

/* Chunk states other than a bitmap. */
#define CHUNK_UNKNOWN NULL                      /* not read since open */
#define CHUNK_FULL    ((FreeChunk *)(uintptr_t)1)
#define CHUNK_EMPTY   ((FreeChunk *)(uintptr_t)2)
#define IS_BITMAP(c)  ((uintptr_t)(c) > 2)

struct Qcow2FreeIndex {
    uint64_t nchunks;
    FreeChunk **chunks;
    unsigned chunk_bits;        /* log2(clusters per chunk) */
    uint64_t chunk_words;       /* bitmap words per chunk */
    int levels;
    uint64_t *summary[SUMMARY_MAX_LEVELS];  /* bit set: chunk not FULL */
    uint64_t summary_words[SUMMARY_MAX_LEVELS];
    uint64_t bitmaps;           /* chunks held as bitmaps */
    uint64_t loads;             /* refcount blocks read into the index */
};

/* ---- The summary: a hierarchical bitset over chunk numbers -------------- */

static void summary_set(Qcow2FreeIndex *fi, uint64_t i)
{
    int k;

    for (k = 0; k < fi->levels; k++) {
        uint64_t *w = &fi->summary[k][i >> 6];
        bool was_zero = *w == 0;

        *w |= 1ULL << (i & 63);
        if (!was_zero) {
            return;
        }
        i >>= 6;
    }
}

static void summary_clear(Qcow2FreeIndex *fi, uint64_t i)
{
    int k;

    for (k = 0; k < fi->levels; k++) {
        uint64_t *w = &fi->summary[k][i >> 6];

        *w &= ~(1ULL << (i & 63));
        if (*w) {
            return;
        }
        i >>= 6;
    }
}

/* The first chunk at or after @i that is not FULL, or nchunks. */
static uint64_t summary_next(const Qcow2FreeIndex *fi, uint64_t i)
{
    uint64_t pos = i;
    int k = 0;

    if (i >= fi->nchunks) {
        return fi->nchunks;
    }
    for (;;) {
        uint64_t w = pos >> 6;
        uint64_t bits;

        if (k == fi->levels || w >= fi->summary_words[k]) {
            return fi->nchunks;
        }
        bits = fi->summary[k][w] & (~0ULL << (pos & 63));
        if (bits) {
            pos = (w << 6) + __builtin_ctzll(bits);
            break;
        }
        pos = w + 1;
        k++;
    }
    while (k > 0) {
        k--;
        pos = (pos << 6) + __builtin_ctzll(fi->summary[k][pos]);
    }
    return pos;
}

static void summary_build(Qcow2FreeIndex *fi)
{
    uint64_t n = fi->nchunks, i;
    int k;

    for (k = 0; k < fi->levels; k++) {
        g_free(fi->summary[k]);
        fi->summary[k] = NULL;
    }
    fi->levels = 0;
    do {
        uint64_t words = MAX((n + 63) / 64, 1);

        g_assert(fi->levels < SUMMARY_MAX_LEVELS);
        fi->summary[fi->levels] = g_new0(uint64_t, words);
        fi->summary_words[fi->levels] = words;
        fi->levels++;
        n = words;
    } while (n > 1);
    for (i = 0; i < fi->nchunks; i++) {
        if (fi->chunks[i] != CHUNK_FULL) {
            summary_set(fi, i);
        }
    }
}

/* ---- Chunks ------------------------------------------------------------- */

static FreeChunk *chunk_new(const Qcow2FreeIndex *fi, bool all_free)
{
    FreeChunk *c = g_malloc(sizeof(*c) + fi->chunk_words * 8);

    memset(c->bits, all_free ? 0xff : 0, fi->chunk_words * 8);
    c->nfree = all_free ? fi->chunk_words * 64 : 0;
    return c;
}

static void chunk_release(Qcow2FreeIndex *fi, uint64_t i)
{
    if (IS_BITMAP(fi->chunks[i])) {
        g_free(fi->chunks[i]);
        fi->bitmaps--;
    }
    fi->chunks[i] = CHUNK_UNKNOWN;
}

/* Store bitmap @c as chunk @i in its canonical form. */
static void chunk_store(Qcow2FreeIndex *fi, uint64_t i, FreeChunk *c)
{
    bool was_full = fi->chunks[i] == CHUNK_FULL;

    chunk_release(fi, i);
    if (c->nfree == 0) {
        g_free(c);
        fi->chunks[i] = CHUNK_FULL;
    } else if (c->nfree == fi->chunk_words * 64) {
        g_free(c);
        fi->chunks[i] = CHUNK_EMPTY;
    } else {
        fi->chunks[i] = c;
        fi->bitmaps++;
    }
    if (fi->chunks[i] == CHUNK_FULL) {
        if (!was_full) {
            summary_clear(fi, i);
        }
    } else if (was_full) {
        summary_set(fi, i);
    }
}

/* Chunk @i, read from its refcount block if the index has not seen it. */
static int chunk_get(BDRVQcow2State *s, uint64_t i, FreeChunk **out)
{
    Qcow2FreeIndex *fi = s->free_index;

    if (fi->chunks[i] == CHUNK_UNKNOWN) {
        FreeChunk *c = chunk_new(fi, false);
        int ret = qcow2_refblock_free_bits(s, i, c->bits, &c->nfree);

        if (ret < 0) {
            g_free(c);
            return ret;
        }
        fi->loads++;
        chunk_store(fi, i, c);
    }
    *out = fi->chunks[i];
    return 0;
}

/* Bits [from, to) of @words: set or clear them; returns how many changed. */
static uint64_t bits_assign(uint64_t *words, uint64_t from, uint64_t to,
                            bool set)
{
    uint64_t changed = 0;

    while (from < to) {
        uint64_t w = from >> 6;
        unsigned lo = from & 63;
        uint64_t len = MIN(to - from, 64 - (uint64_t)lo);
        uint64_t mask = (len == 64 ? ~0ULL : ((1ULL << len) - 1)) << lo;
        uint64_t diff = set ? ~words[w] & mask : words[w] & mask;

        changed += __builtin_popcountll(diff);
        words[w] ^= diff;
        from += len;
    }
    return changed;
}

static void mark(BDRVQcow2State *s, uint64_t first, uint64_t n, bool free)
{
    Qcow2FreeIndex *fi = s->free_index;
    uint64_t per_chunk;

    if (!fi) {
        return;
    }
    per_chunk = 1ULL << fi->chunk_bits;
    while (n > 0) {
        uint64_t i = first >> fi->chunk_bits;
        uint64_t from = first & (per_chunk - 1);
        uint64_t len = MIN(n, per_chunk - from);
        FreeChunk *c;

        if (i >= fi->nchunks) {
            return;     /* past the table: free by definition */
        }
        c = fi->chunks[i];
        if (c != CHUNK_UNKNOWN && c != (free ? CHUNK_EMPTY : CHUNK_FULL)) {
            uint64_t changed;

            if (!IS_BITMAP(c)) {
                c = chunk_new(fi, c == CHUNK_EMPTY);
            } else {
                fi->chunks[i] = CHUNK_EMPTY;    /* detached, stored below */
                fi->bitmaps--;
            }
            changed = bits_assign(c->bits, from, from + len, free);
            c->nfree = free ? c->nfree + changed : c->nfree - changed;
            chunk_store(fi, i, c);
        }
        first += len;
        n -= len;
    }
}

/* ---- Public operations -------------------------------------------------- */

void qcow2_free_index_init(BDRVQcow2State *s)
{
    Qcow2FreeIndex *fi = g_new0(Qcow2FreeIndex, 1);

    fi->chunk_bits = s->refcount_block_bits;
    fi->chunk_words = (1ULL << fi->chunk_bits) / 64;
    fi->nchunks = s->refcount_table_size;
    fi->chunks = g_new0(FreeChunk *, MAX(fi->nchunks, 1));
    summary_build(fi);
    s->free_index = fi;
}

void qcow2_free_index_destroy(BDRVQcow2State *s)
{
    Qcow2FreeIndex *fi = s->free_index;
    uint64_t i;
    int k;

    if (!fi) {
        return;
    }
    for (i = 0; i < fi->nchunks; i++) {
        chunk_release(fi, i);
    }
    for (k = 0; k < fi->levels; k++) {
        g_free(fi->summary[k]);
    }
    g_free(fi->chunks);
    g_free(fi);
    s->free_index = NULL;
}

/* The refcount table changed size; new chunks are read when reached. */
void qcow2_free_index_resize(BDRVQcow2State *s)
{
    Qcow2FreeIndex *fi = s->free_index;
    uint64_t n = s->refcount_table_size, i;

    if (!fi || n == fi->nchunks) {
        return;
    }
    for (i = n; i < fi->nchunks; i++) {
        chunk_release(fi, i);
    }
    fi->chunks = g_renew(FreeChunk *, fi->chunks, MAX(n, 1));
    for (i = fi->nchunks; i < n; i++) {
        fi->chunks[i] = CHUNK_UNKNOWN;
    }
    fi->nchunks = n;
    summary_build(fi);
}

/* Forget everything (the refcount structure was rebuilt). */
void qcow2_free_index_reset(BDRVQcow2State *s)
{
    Qcow2FreeIndex *fi = s->free_index;
    uint64_t i;

    if (!fi) {
        return;
    }
    for (i = 0; i < fi->nchunks; i++) {
        chunk_release(fi, i);
    }
    qcow2_free_index_resize(s);
    summary_build(fi);
    s->free_cluster_index = 0;
}

void qcow2_free_index_mark_used(BDRVQcow2State *s, uint64_t first,
                                uint64_t n)
{
    mark(s, first, n, false);
}

void qcow2_free_index_mark_free(BDRVQcow2State *s, uint64_t first,
                                uint64_t n)
{
    mark(s, first, n, true);
}

/* The first free cluster at or after @pos. */
static int64_t next_free(BDRVQcow2State *s, uint64_t pos)
{
    Qcow2FreeIndex *fi = s->free_index;

    for (;;) {
        uint64_t i = pos >> fi->chunk_bits;
        FreeChunk *c;
        int ret;

        if (i >= fi->nchunks) {
            return pos;
        }
        ret = chunk_get(s, i, &c);
        if (ret < 0) {
            return ret;
        }
        if (c == CHUNK_EMPTY) {
            return pos;
        }
        if (c != CHUNK_FULL) {
            uint64_t off = pos & ((1ULL << fi->chunk_bits) - 1);
            uint64_t w = off >> 6;
            uint64_t bits = c->bits[w] & (~0ULL << (off & 63));

            while (!bits && ++w < fi->chunk_words) {
                bits = c->bits[w];
            }
            if (bits) {
                return (int64_t)((i << fi->chunk_bits) + (w << 6) +
                                 __builtin_ctzll(bits));
            }
        }
        i = summary_next(fi, i + 1);
        pos = i << fi->chunk_bits;
    }
}

/* How many clusters from the free cluster @pos on are free, up to @n. */
static int run_length(BDRVQcow2State *s, uint64_t pos, uint64_t n,
                      uint64_t *run)
{
    Qcow2FreeIndex *fi = s->free_index;
    uint64_t got = 0;

    while (got < n) {
        uint64_t i = pos >> fi->chunk_bits;
        uint64_t end = (i + 1) << fi->chunk_bits;
        FreeChunk *c;
        int ret;

        if (i >= fi->nchunks) {
            got = n;
            break;
        }
        ret = chunk_get(s, i, &c);
        if (ret < 0) {
            return ret;
        }
        if (c == CHUNK_FULL) {
            break;
        }
        if (c == CHUNK_EMPTY) {
            uint64_t take = MIN(n - got, end - pos);
            got += take;
            pos += take;
            continue;
        }
        while (pos < end && got < n) {
            uint64_t off = pos & ((1ULL << fi->chunk_bits) - 1);
            unsigned sh = off & 63;
            uint64_t inv = ~(c->bits[off >> 6] >> sh);
            uint64_t ones = inv ? (uint64_t)__builtin_ctzll(inv) : 64;
            uint64_t take = MIN(ones, n - got);

            got += take;
            pos += take;
            if (ones < 64 - sh) {
                *run = got;     /* stopped at a used cluster */
                return 0;
            }
        }
    }
    *run = MIN(got, n);
    return 0;
}

/*
 * The first run of free clusters at or after @start: up to @n long, or with
 * @exact only a run of exactly @n (shorter holes are skipped).  *got is the
 * run's length, *first_free the first free cluster the search met (nothing
 * between @start and it is free).
 */
int64_t qcow2_free_index_find(BDRVQcow2State *s, uint64_t start, uint64_t n,
                              bool exact, uint64_t *got, uint64_t *first_free)
{
    uint64_t pos = start;
    bool first = true;

    for (;;) {
        int64_t f = next_free(s, pos);
        uint64_t run;
        int ret;

        if (f < 0) {
            return f;
        }
        if (first) {
            *first_free = f;
            first = false;
        }
        ret = run_length(s, f, n, &run);
        if (ret < 0) {
            return ret;
        }
        if (run == n || !exact) {
            *got = run;
            return f;
        }
        pos = f + run;
    }
}

void qcow2_free_index_get_stats(BDRVQcow2State *s, uint64_t *loads,
                                uint64_t *bitmaps, uint64_t *bytes)
{
    Qcow2FreeIndex *fi = s->free_index;
    int k;

    *loads = *bitmaps = *bytes = 0;
    if (!fi) {
        return;
    }
    *loads = fi->loads;
    *bitmaps = fi->bitmaps;
    *bytes = sizeof(*fi) + MAX(fi->nchunks, 1) * sizeof(FreeChunk *) +
             fi->bitmaps * (sizeof(FreeChunk) + fi->chunk_words * 8);
    for (k = 0; k < fi->levels; k++) {
        *bytes += fi->summary_words[k] * 8;
    }
}

/* ---- Verification (tests) ----------------------------------------------- */

/*
 * Check the invariants of docs/allocation.md against the refcounts.  Reads
 * refcount blocks, so it may load the refcount cache; it changes nothing
 * in the index.  Returns false and describes the first violation in @why.
 */
bool qcow2_free_index_verify(BDRVQcow2State *s, GString *why)
{
    Qcow2FreeIndex *fi = s->free_index;
    g_autofree uint64_t *want = NULL;
    uint64_t per_chunk, i, w;
    int k;

    if (!fi) {
        return true;
    }
    per_chunk = 1ULL << fi->chunk_bits;
    want = g_new(uint64_t, fi->chunk_words);
    if (fi->nchunks != s->refcount_table_size) {
        g_string_printf(why, "index has %" PRIu64 " chunks, refcount table "
                        "%" PRIu32 " entries", fi->nchunks,
                        s->refcount_table_size);
        return false;
    }
    for (i = 0; i < fi->nchunks; i++) {
        FreeChunk *c = fi->chunks[i];
        uint64_t nfree = 0, count = 0;
        bool summary = fi->summary[0][i >> 6] & (1ULL << (i & 63));

        if (summary != (c != CHUNK_FULL)) {
            g_string_printf(why, "summary bit of chunk %" PRIu64 " is %d",
                            i, summary);
            return false;
        }
        memset(want, 0, fi->chunk_words * 8);
        if (qcow2_refblock_free_bits(s, i, want, &nfree) < 0) {
            g_string_printf(why, "cannot read refcount block %" PRIu64, i);
            return false;
        }
        if (c == CHUNK_UNKNOWN) {
            continue;
        }
        for (w = 0; w < fi->chunk_words; w++) {
            uint64_t have = c == CHUNK_FULL ? 0 : c == CHUNK_EMPTY ? ~0ULL
                            : c->bits[w];
            uint64_t base = i * per_chunk + w * 64;

            if (have != want[w]) {
                uint64_t bad = __builtin_ctzll(have ^ want[w]);
                g_string_printf(why, "cluster %" PRIu64 ": index says %s, "
                                "refcounts say %s", base + bad,
                                (have >> bad) & 1 ? "free" : "used",
                                (want[w] >> bad) & 1 ? "free" : "used");
                return false;
            }
            count += __builtin_popcountll(have);
        }
        if (IS_BITMAP(c) && (c->nfree != count || count == 0 ||
                             count == per_chunk)) {
            g_string_printf(why, "chunk %" PRIu64 ": bitmap counts %" PRIu64
                            " free of %" PRIu64 " set", i, c->nfree, count);
            return false;
        }
    }
    for (k = 1; k < fi->levels; k++) {
        for (w = 0; w < fi->summary_words[k - 1]; w++) {
            bool up = fi->summary[k][w >> 6] & (1ULL << (w & 63));
            if (up != (fi->summary[k - 1][w] != 0)) {
                g_string_printf(why, "summary level %d bit %" PRIu64
                                " disagrees with the level below", k, w);
                return false;
            }
        }
    }
    return true;
}
