/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * Internals of the metadata overlap map, shared by its files (the list
 * is at the top of qcow2-overlap.c, with the design).  Nothing outside
 * them may include this header.  The lookup helpers are inline here
 * because they are the hot path of every check.
 */

#ifndef QCOW2_OVERLAP_INT_H
#define QCOW2_OVERLAP_INT_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "qcow2-overlap.h"

#define WINDOW_BITS     12
#define WINDOW_CLUSTERS (1u << WINDOW_BITS)
#define FRAG_MAX_LEN    256u
/* beyond LIST_MAX_FRAGS a list outweighs the bytemap */
#define LIST_MAX_FRAGS  (WINDOW_CLUSTERS / 4)
/* the types a byte (and a fragment) holds */
#define LOW_TYPES       0xffu

#define CHUNK_BITS      8
#define CHUNK_WINDOWS   (1u << CHUNK_BITS)
#define CHUNK_WORDS     (CHUNK_WINDOWS / 64)
#define GROUP_WINDOWS   16      /* windows sharing one list pool */
#define CHUNK_GROUPS    (CHUNK_WINDOWS / GROUP_WINDOWS)
#define LEAF_BITS       4
#define LEAF_CHUNKS     (1u << LEAF_BITS)
#define LEAF_SHIFT      (CHUNK_BITS + LEAF_BITS) /* window index -> leaf */
#define NODE_BITS       6
#define NODE_FANOUT     (1u << NODE_BITS)
#define MAX_HEIGHT      8

#define MAX_HANDLES     (UINT32_C(1) << 30)
#define NO_HANDLE       MAX_HANDLES
#define NO_WINDOW       UINT64_MAX
#define NO_LEAF         UINT64_MAX

/* A list slot's pool offset: 14 bits hold 15 lists of 1024 words. */
#define LIST_OFF_BITS   14
#define LIST_OFF_MASK   ((1u << LIST_OFF_BITS) - 1)

G_STATIC_ASSERT(LIST_MAX_FRAGS * sizeof(uint32_t) == WINDOW_CLUSTERS);
G_STATIC_ASSERT(WINDOW_CLUSTERS == QCOW2_OVERLAP_WINDOW_CLUSTERS);
G_STATIC_ASSERT((GROUP_WINDOWS - 1) * LIST_MAX_FRAGS <= LIST_OFF_MASK);
/* a list slot: offset, the has-tail bit, then the tail unit */
G_STATIC_ASSERT(LIST_OFF_BITS + 1 == 15);

enum { SLOT_INLINE, SLOT_PAIR, SLOT_LIST, SLOT_BYTEMAP };

/* Checks have a second copy built for POPCNT, chosen at run time. */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_CHECK_POPCNT 1
#endif

typedef struct OvlRun {         /* [start, end) with one mask; clusters */
    uint64_t start, end;
    unsigned mask;
} OvlRun;

typedef struct OvlBytemap {
    struct OvlBytemap *prev, *next; /* LRU, most recent first */
    uint64_t window;
    uint32_t handle;
    /* clean: the window's list slot, list kept; dirty: 0 */
    uint32_t rest;
    uint16_t population;            /* clusters with a non-zero byte */
    bool permanent;
    uint8_t bytes[WINDOW_CLUSTERS] __attribute__((aligned(8)));
} OvlBytemap;

/*
 * The lists of a chunk: one pool per 16 windows, holding the lists of those
 * windows back to back in window order, so a list costs no pointer and no
 * header, and replacing one moves at most 16 windows' worth of fragments.
 */
typedef struct OvlPools {
    uint32_t *words[CHUNK_GROUPS];
    uint16_t len[CHUNK_GROUPS];
} OvlPools;

/*
 * 256 windows.  'mem' is one allocation: the chunk's pool table (while one
 * of its windows has a list), then one slot per present window, in window
 * order, starting 'slots_at' bytes in.  rank[k] counts the present windows
 * of present[0..k), so window b's slot index is rank[b / 64] plus the rank
 * of b in its word: one popcount, and nothing outside the chunk's own
 * 48 bytes to read before the slot itself.
 */
typedef struct OvlChunk {
    uint64_t present[CHUNK_WORDS];
    void *mem;                      /* NULL while no window is present */
    uint8_t rank[CHUNK_WORDS];
    uint8_t slots_at;               /* 0; sizeof(OvlPools) with a pool table */
} OvlChunk;

G_STATIC_ASSERT(sizeof(OvlPools) < 256 && sizeof(OvlPools) % 8 == 0);
G_STATIC_ASSERT(sizeof(OvlChunk) == 48);

/*
 * Up to 16 chunks, allocated only as far as the last one in use: a host
 * file of a few hundred windows (a few hundred MiB at 512 B clusters) pays
 * for one chunk, not sixteen.
 */
typedef struct OvlLeaf {
    unsigned used;                  /* chunks with a present window */
    unsigned chunks;                /* chunk[chunks - 1] is in use */
    OvlChunk chunk[];
} OvlLeaf;

static inline size_t leaf_size(unsigned chunks)
{
    return offsetof(OvlLeaf, chunk) + chunks * sizeof(OvlChunk);
}

typedef struct OvlNode {
    void *child[NODE_FANOUT];
    unsigned used;                  /* non-NULL children */
} OvlNode;

/*
 * Where a window lives.  'slot' moves when the chunk's pool table comes or
 * goes (ovl_rest_store() and ovl_rest_drop() update it); 'idx' does not.
 */
typedef struct OvlPos {
    OvlLeaf *leaf;                  /* NULL: the window's leaf does not exist */
    OvlChunk *chunk;
    unsigned bit;                   /* window index within the chunk */
    unsigned idx;                   /* index of its slot, if present */
    uint32_t *slot;                 /* NULL if the window is empty */
    uint64_t window;
} OvlPos;

/*
 * A flat table entry: what a check needs of one window, by the low two
 * bits.  0 is an empty window; pool words and bytemaps are 4-aligned.
 */
enum {
    FLAT_SLOT = 1,      /* slot << 32: inline, pair, or a list (not read) */
    FLAT_COMPACT = 2,   /* the address of a compact list's word 0 */
    FLAT_BYTES = 3,     /* the address of a bytemap's bytes */
};
#define FLAT_TAG_MASK   3u

/* No cluster of [lo, hi) holds a type outside 'types'; empty if lo >= hi. */
typedef struct OvlClaim {
    uint64_t lo, hi;
    unsigned types;
} OvlClaim;

struct Qcow2MetadataMap {
    unsigned cluster_bits;
    unsigned cache_max;

    uint64_t memo_window;           /* memo->window, or NO_WINDOW */
    OvlBytemap *memo;
    OvlBytemap *lru_head, *lru_tail;
    unsigned lru_count, permanent_count;

    void *root;                     /* OvlNode, or OvlLeaf when height == 0 */
    unsigned height;
    bool hw_popcount;               /* the CPU has POPCNT: checks use it */
    uint8_t leaf_memo_chunks;       /* leaf_memo->chunks, 0 without one */

    /*
     * The last leaf a check looked up (NULL: known absent), or NO_LEAF.
     * A leaf that grows, shrinks or goes away clears it.
     */
    uint64_t leaf_memo_index;
    OvlLeaf *leaf_memo;

    /*
     * The last window with metadata a check looked up (or NO_WINDOW) and
     * what it found: its slot and, for a list, its pool words and their
     * number or, for a bytemap, the OvlBytemap.  Every edit and flush
     * clears it.
     */
    uint64_t check_window;
    uint32_t check_slot, check_list_len;
    const void *check_data;

    /*
     * No cluster at or after meta_end has held a type since the map was
     * made: where a growing image allocates, and where its data goes.
     * The last enter past it leaves two claims behind: 'fresh', its own
     * range, which then holds only its types, and 'gap', the clusters it
     * skipped, which hold none.  An enter that breaks a claim empties it;
     * removes cannot.  claim_lo is the lower of their starts, so that a
     * check below both costs one compare.
     */
    uint64_t meta_end;
    uint64_t claim_lo;

    /*
     * The flat table: flat[w] for every window w below flat_cap, so that
     * a check finds a window with one load instead of the tree.  Kept
     * only where it is cheap next to what the windows hold (flat_allowed:
     * 512-byte clusters) and while at least one window in eight below
     * flat_cap has metadata.  fast_cap is flat_cap while no high types
     * are stored, else 0, so that the check's fast path costs one compare.
     */
    uint64_t fast_cap;
    uint64_t *flat;
    uint64_t flat_cap;
    bool flat_allowed;

    OvlClaim gap, fresh;

    void **handles;                 /* bytemaps; free entries are odd */
    uint32_t handles_cap, handles_next, handles_used, free_handle;

    OvlRun *hi;                     /* types >= 8, sorted, disjoint, maximal */
    size_t hi_count;

    Qcow2MetadataMapStats stats;
};

/* ---- memory accounting ------------------------------------------------ */

static inline void mem_add(Qcow2MetadataMap *map, size_t n)
{
    map->stats.mem_current += n;
    if (map->stats.mem_current > map->stats.mem_peak) {
        map->stats.mem_peak = map->stats.mem_current;
    }
}

static inline void *ovl_alloc(Qcow2MetadataMap *map, size_t n)
{
    mem_add(map, n);
    return g_malloc(n);
}

static inline void *ovl_alloc0(Qcow2MetadataMap *map, size_t n)
{
    mem_add(map, n);
    return g_malloc0(n);
}

static inline void *ovl_realloc(Qcow2MetadataMap *map, void *p, size_t old_n,
                                size_t new_n)
{
    if (new_n > old_n) {
        mem_add(map, new_n - old_n);
    } else {
        map->stats.mem_current -= old_n - new_n;
    }
    return g_realloc(p, new_n);
}

static inline void ovl_free(Qcow2MetadataMap *map, void *p, size_t n)
{
    map->stats.mem_current -= n;
    g_free(p);
}

/* ---- fragments and slots ------------------------------------------------ */

/*
 * Bit layouts: the table BIT LAYOUTS at the top of qcow2-overlap.c.  No
 * code outside this section shifts a fragment or a slot by hand.
 */
#define FRAG_START_MASK 0xfffu
#define FRAG_MARK_SHIFT 12
#define FRAG_MARK_MASK  (UINT32_C(0xf) << FRAG_MARK_SHIFT)
#define SLOT_TAG_SHIFT  30
#define UNIT_BITS       15          /* one cluster of one type, see unit_*() */

/*
 * A fragment is types (8) | length - 1 (8) | mark (4) | start (12).  In a
 * pool the marks carry the length of the list a fragment belongs to (see
 * list_len()); frag_start() ignores them.
 */
static inline uint32_t frag_make(unsigned start, unsigned len, unsigned types)
{
    return (uint32_t)types << 24 | (uint32_t)(len - 1) << 16 | start;
}

static inline unsigned frag_start(uint32_t f) { return f & FRAG_START_MASK; }
static inline unsigned frag_len(uint32_t f) { return ((f >> 16) & 0xff) + 1; }
static inline unsigned frag_types(uint32_t f) { return f >> 24; }
static inline unsigned frag_end(uint32_t f)
{
    return frag_start(f) + frag_len(f);
}
static inline unsigned frag_mark(uint32_t f)
{
    return (f & FRAG_MARK_MASK) >> FRAG_MARK_SHIFT;
}
static inline uint32_t frag_set_mark(uint32_t f, unsigned mark)
{
    return (f & ~FRAG_MARK_MASK) | (uint32_t)mark << FRAG_MARK_SHIFT;
}

static inline unsigned slot_tag(uint32_t slot)
{
    return slot >> SLOT_TAG_SHIFT;
}
static inline uint32_t slot_handle(uint32_t slot)
{
    return slot & (MAX_HANDLES - 1);
}

static inline uint32_t slot_ref(unsigned tag, uint32_t payload)
{
    return (uint32_t)tag << SLOT_TAG_SHIFT | payload;
}

/*
 * A unit: one cluster of one type (an L2 table or a refcount block) in 15
 * bits, type bit number (3) | start (12).  A pair slot holds two, a list
 * slot's tail is one.  'frag' must be one cluster with one type bit.
 */
static inline uint32_t unit_pack(uint32_t frag)
{
    return frag_start(frag) |
           (uint32_t)__builtin_ctz(frag_types(frag)) << 12;
}

static inline unsigned unit_start(uint32_t unit) { return unit & 0xfff; }
static inline unsigned unit_types(uint32_t unit)
{
    return 1u << ((unit >> 12) & 7);
}

/* An inline slot: 0 (2) | types (8) | length - 1 (8) | start (12). */
static inline uint32_t slot_inline_make(uint32_t frag)
{
    return slot_ref(SLOT_INLINE, frag_start(frag) |
                                 (uint32_t)(frag_len(frag) - 1) << 12 |
                                 (uint32_t)frag_types(frag) << 20);
}

static inline unsigned slot_inline_start(uint32_t slot) { return slot & 0xfff; }
static inline unsigned slot_inline_len(uint32_t slot)
{
    return ((slot >> 12) & 0xff) + 1;
}
static inline unsigned slot_inline_types(uint32_t slot)
{
    return (slot >> 20) & 0xff;
}

/*
 * A pair slot: unit 1 (15) | unit 0 (15), two one-cluster, one-type
 * fragments, unit 0 first in the window.  i is 0 or 1.
 */
static inline uint32_t slot_pair_make(uint32_t frag0, uint32_t frag1)
{
    return slot_ref(SLOT_PAIR, unit_pack(frag1) << UNIT_BITS |
                               unit_pack(frag0));
}

static inline unsigned slot_pair_start(uint32_t slot, unsigned i)
{
    return unit_start(slot >> (UNIT_BITS * i));
}

static inline unsigned slot_pair_types(uint32_t slot, unsigned i)
{
    return unit_types(slot >> (UNIT_BITS * i));
}

/*
 * A list slot: tail unit (15) | has tail (1) | offset of the list in its
 * group's pool (14).  The tail is the list's last fragment when that is one
 * cluster of one type (an L2 table or refcount block, nearly always); it is
 * kept here rather than in the pool.
 */
static inline unsigned slot_list_off(uint32_t slot)
{
    return slot & LIST_OFF_MASK;
}
static inline bool slot_list_tail(uint32_t slot)
{
    return slot >> LIST_OFF_BITS & 1;
}
static inline unsigned slot_tail_start(uint32_t slot)
{
    return unit_start(slot >> UNIT_BITS);
}
static inline unsigned slot_tail_types(uint32_t slot)
{
    return unit_types(slot >> UNIT_BITS);
}

static inline uint32_t slot_list_tail_frag(uint32_t slot)
{
    return frag_make(slot_tail_start(slot), 1, slot_tail_types(slot));
}

static inline uint32_t slot_list_make(unsigned off, const uint32_t *tail)
{
    uint32_t slot = slot_ref(SLOT_LIST, off);

    if (tail) {
        slot |= unit_pack(*tail) << UNIT_BITS | 1u << LIST_OFF_BITS;
    }
    return slot;
}

/*
 * Number of words of a list in its pool, read from the marks of its first
 * words: word 0 holds the length if it is below 15, else 15 and the length
 * is spread over words 1..3 (which exist, as the list has 15 or more).
 */
static inline unsigned list_len(const uint32_t *p)
{
    unsigned n = frag_mark(p[0]);

    if (n == 15) {
        n = frag_mark(p[1]) | frag_mark(p[2]) << 4 | frag_mark(p[3]) << 8;
    }
    return n;
}

/*
 * A compact list: one 16-bit entry per cluster and type, start (12) | type
 * bit number (3) with the top bit clear, sorted, behind an index of the
 * entries that come before each bucket of 64 clusters:
 *
 *   word 0       0 (16) | mark 0 (4) | number of entries (12)
 *   words 1..16  the index: byte k counts the entries starting before
 *                cluster 64 * k
 *   then         the entries, then COMPACT_END to the end of the last word
 *
 * Word 0 of a list never has mark 0 (a list has at least one word), so
 * word 0 tells the two apart.  F4 says when a window is compact.
 */
#define COMPACT_BUCKET_BITS 6
#define COMPACT_BUCKETS     (WINDOW_CLUSTERS >> COMPACT_BUCKET_BITS)
#define COMPACT_HEAD_WORDS  (1 + COMPACT_BUCKETS / 4)
#define COMPACT_MAX_ENTRIES 255u        /* what an index byte can count */
#define COMPACT_END         0xffffu     /* above every entry */

/* Entries are read as 16-bit halves of the pool's 32-bit words. */
typedef uint16_t __attribute__((may_alias)) OvlEntry;

static inline bool pool_is_compact(const uint32_t *p)
{
    return !frag_mark(p[0]);
}

static inline unsigned compact_len(const uint32_t *p)
{
    return p[0] & FRAG_START_MASK;
}

/* Words of a compact list of n entries: the head, the entries, an end. */
static inline unsigned compact_words(unsigned n)
{
    return COMPACT_HEAD_WORDS + (n + 2) / 2;
}

static inline const uint8_t *compact_index(const uint32_t *p)
{
    return (const uint8_t *)p + sizeof(uint32_t);
}

static inline const OvlEntry *compact_entries(const uint32_t *p)
{
    return (const OvlEntry *)(p + COMPACT_HEAD_WORDS);
}

static inline unsigned compact_key(unsigned start, unsigned bit)
{
    return start << 3 | bit;
}

/* Words of the list or compact list at p in its pool. */
static inline unsigned pool_list_words(const uint32_t *p)
{
    return pool_is_compact(p) ? compact_words(compact_len(p)) : list_len(p);
}

/*
 * The types in clusters [s, e) of a compact list (s < e <= 4096): the
 * index byte of s's bucket, the few entries of the bucket before s, then
 * the entries inside the range.  COMPACT_END stops both loops.
 */
static inline unsigned compact_or(const uint32_t *p, unsigned s, unsigned e)
{
    const OvlEntry *ent =
        compact_entries(p) + compact_index(p)[s >> COMPACT_BUCKET_BITS];
    unsigned lo = compact_key(s, 0), hi = compact_key(e, 0), m = 0;

    while (*ent < lo) {
        ent++;
    }
    for (; *ent < hi; ent++) {
        m |= 1u << (*ent & 7);
    }
    return m;
}

static inline bool one_bit(unsigned m)
{
    return m && !(m & (m - 1));
}

/* ---- the directory: lookups --------------------------------------------- */

/*
 * Without -mpopcnt, __builtin_popcountll is a libgcc call; this inline
 * version is several times faster on the lookup path.
 */
static inline unsigned popcount64(uint64_t x)
{
#ifdef __POPCNT__
    return __builtin_popcountll(x);
#else
    x -= (x >> 1) & UINT64_C(0x5555555555555555);
    x = (x & UINT64_C(0x3333333333333333)) +
        ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (x * UINT64_C(0x0101010101010101)) >> 56;
#endif
}

static inline bool chunk_has(const OvlChunk *c, unsigned b)
{
    return c->present[b / 64] >> (b % 64) & 1;
}

/* Index of window b's slot, or where it would be inserted. */
static inline unsigned chunk_slot_index(const OvlChunk *c, unsigned b)
{
    uint64_t below = c->present[b / 64] & ((UINT64_C(1) << (b % 64)) - 1);

    return c->rank[b / 64] + popcount64(below);
}

/*
 * The same for the checks, which choose the popcount: @hw is a constant
 * where it is inlined, true only in code compiled for POPCNT.
 */
static inline __attribute__((always_inline))
unsigned chunk_slot_index_hw(const OvlChunk *c, unsigned b, bool hw)
{
    uint64_t below = c->present[b / 64] & ((UINT64_C(1) << (b % 64)) - 1);

    return c->rank[b / 64] + (hw ? (unsigned)__builtin_popcountll(below)
                                 : popcount64(below));
}

static inline uint32_t *chunk_slots(const OvlChunk *c)
{
    return (uint32_t *)((char *)c->mem + c->slots_at);
}

/* The chunk's pool table, or NULL while none of its windows has a list. */
static inline OvlPools *chunk_pools(const OvlChunk *c)
{
    return c->slots_at ? c->mem : NULL;
}

/* Leaf 'li' (window index >> LEAF_SHIFT), or NULL. */
static inline OvlLeaf *leaf_find(const Qcow2MetadataMap *map, uint64_t li)
{
    void *p = map->root;
    unsigned h = map->height;

    if (li >> (h * NODE_BITS)) {
        return NULL;
    }
    while (h-- && p) {
        p = ((OvlNode *)p)->child[(li >> (h * NODE_BITS)) & (NODE_FANOUT - 1)];
    }
    return p;
}

/* Words of the list of window 'bit' of chunk c, whose list slot is 'rest'. */
static inline uint32_t *pool_list(const OvlChunk *c, unsigned bit,
                                  uint32_t rest)
{
    return ((OvlPools *)c->mem)->words[bit / GROUP_WINDOWS] +
           slot_list_off(rest);
}

/* ---- the directory: qcow2-overlap-dir.c --------------------------------- */

OvlPos ovl_window_find(const Qcow2MetadataMap *map, uint64_t w);
uint64_t ovl_window_next(const Qcow2MetadataMap *map, uint64_t w);
OvlPos ovl_window_insert(Qcow2MetadataMap *map, uint64_t w, uint32_t slot);
void ovl_window_delete(Qcow2MetadataMap *map, uint64_t w);

uint32_t ovl_handle_new(Qcow2MetadataMap *map, void *p);
void ovl_handle_free(Qcow2MetadataMap *map, uint32_t h);

bool ovl_frags_fit_slot(const uint32_t *f, unsigned n, uint32_t *slot);
unsigned ovl_slot_runs(uint32_t slot, OvlRun *runs);
uint32_t ovl_rest_store(Qcow2MetadataMap *map, OvlPos *pos,
                        const uint32_t *frags, unsigned n);
void ovl_rest_drop(Qcow2MetadataMap *map, OvlPos *pos, uint32_t rest);
unsigned ovl_list_copy(const uint32_t *pool, uint32_t rest, uint32_t *frags);
bool ovl_frags_compact(const uint32_t *f, unsigned n, unsigned *entries);
unsigned ovl_compact_to_frags(const uint32_t *p, uint32_t *frags);

void ovl_dir_free(Qcow2MetadataMap *map);

void ovl_flat_sync(Qcow2MetadataMap *map, const OvlPos *pos);
void ovl_flat_fast_update(Qcow2MetadataMap *map);

typedef struct OvlVerifyState {
    uint64_t mem, windows, fragments, bytemaps, handles;
    uint8_t *handle_seen;
} OvlVerifyState;

/* Provided by qcow2-overlap.c for the introspection and the verifier. */
unsigned ovl_runs_to_frags(const OvlRun *runs, size_t n, uint32_t *frags);
unsigned ovl_bytemap_to_frags(const uint8_t *b, uint32_t *frags,
                              unsigned max);
unsigned ovl_list_expand(const uint32_t *pool, uint32_t rest, uint8_t *bytes);
unsigned ovl_list_or(const uint32_t *p, unsigned n, uint32_t rest, unsigned s,
                     unsigned e);
unsigned ovl_hi_check(const Qcow2MetadataMap *map, uint64_t s, uint64_t e);

void ovl_dir_verify(const Qcow2MetadataMap *map, OvlVerifyState *vs);
/* Provided by qcow2-overlap-verify.c; 'list': the window's pool words. */
void ovl_verify_window(const Qcow2MetadataMap *map, OvlVerifyState *vs,
                       uint64_t w, uint32_t slot, const uint32_t *list);

#endif /* QCOW2_OVERLAP_INT_H */
