/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * qcow2 metadata overlap map
 * ==========================
 *
 * Before qguard writes to the image file it asks "does [offset, offset +
 * bytes) touch metadata of a type I am not writing?".  QEMU answers by
 * walking the L1 and refcount tables, O(image size) per write.  This file
 * keeps, for every host cluster, the set of QCOW2_OL_* type bits stored
 * there, so that the answer costs O(clusters in the range).  The design is
 * the one of Max Reitz's 2014 series "qcow2: Add new overlap check
 * functions" (windows, fragment lists, a cache of bytemaps), made sparse so
 * that memory follows the metadata and not the size of the host file.
 *
 * WINDOWS
 *
 * The host file is cut into windows of 4096 clusters.  A window with no
 * metadata has no storage at all; every question about it is answered "no"
 * without touching the cache.  A window with metadata is in exactly one of
 * these forms, all of which name the same per-cluster content:
 *
 *   inline     one fragment, stored in the window's 32-bit slot
 *   pair       two fragments of one cluster and one type each, in the slot
 *   list       a sorted array of 2..1024 fragments (the form at rest)
 *   bytemap    4096 bytes, one per cluster: the OR of its type bits 0..7
 *              (the form in use), either in the LRU cache or permanent
 *
 * A FRAGMENT is 32 bits: types (8) | length - 1 (8) | start (16), a run of
 * 1..256 clusters with one type mask, starting at 'start' in the window.
 * Every list, and the canonical list a bytemap stands for, obeys:
 *
 *   F1  fragments are sorted by start, do not overlap and stay inside the
 *       window;
 *   F2  no fragment has an empty mask (free clusters are not stored);
 *   F3  maximal: two touching fragments with equal masks only exist if the
 *       first is 256 clusters long (equal runs are cut greedily from the left
 *       into 256-cluster pieces);
 *   F4  smallest form: a list is used only when the fragments fit neither
 *       inline nor pair, and it is never longer than 1024 fragments.
 *
 * F1..F4 make the form at rest a pure function of the window's content, so
 * list -> bytemap -> list round trips never drift.
 *
 * THE CACHE
 *
 * Questions about a list window are answered from its bytemap, expanded on a
 * miss (O(4096)) into an LRU of at most N bytemaps (default 16).  Inline and
 * pair windows are answered and edited in their slot: expanding them would
 * cost a conversion and a cache slot to learn what 32 bits already say.
 *
 *   C1  a bytemap is authoritative for its window;
 *   C2  clean: the window's list is kept, byte-for-byte equal to the
 *       bytemap, and eviction just frees the bytemap.  The first change makes
 *       it dirty: the list, now stale, is freed at once; eviction converts
 *       the bytemap back into a list (or inline/pair form);
 *   C3  a bytemap counts its non-zero bytes; at zero the window is deleted on
 *       the spot, so an empty window never holds a cache slot;
 *   C4  a dirty bytemap whose list would exceed 1024 fragments (more bytes
 *       than the bytemap) is not converted: it stays expanded as a permanent
 *       bytemap outside the LRU.  Its next change puts it back at the head of
 *       the LRU, so a window that thins out returns to a list;
 *   C5  the memo (last bytemap used) is the LRU head or permanent, so a
 *       repeated hit needs no LRU update.
 *
 * THE DIRECTORY
 *
 * Window w's 32-bit slot lives in a sparse radix tree.  256 windows form a
 * chunk: a 256-bit presence bitmap plus a packed array with one slot per
 * present window (index = rank of w's bit), so an empty window inside a
 * populated chunk costs one bit and a present one four bytes.  16 chunks
 * form a leaf; interior nodes have 64 children and the tree is only as high
 * as the largest window index needs (at most 4 levels: one cluster at 2^55
 * with 512-byte clusters costs 4 nodes and a leaf, under 3 KiB).  Chunks,
 * leaves and nodes are freed as soon as they empty.  Checks and removes
 * over a range skip absent subtrees, so a check of the whole 2^56-byte space
 * costs O(present windows + tree nodes), not O(2^35 windows).
 *
 * A slot's top two bits say its form.  Inline: start (12) | len - 1 (8) |
 * types (8).  Pair: (start (12) | type bit (3)) twice.  List: the number
 * of its fragments in the pool (11) and, when the last fragment is one
 * cluster of one type (an L2 table or a refcount block, nearly always), that
 * fragment as (start (12) | type bit (3)).  Bytemap: a 30-bit handle into a
 * table of pointers (bytemaps only, so it holds about N entries).
 *
 * Lists live in pools: each chunk has, once one of its windows needs a list,
 * one pool per 16 windows holding their lists back to back in window order.
 * A window's list starts after the lists of its pool's earlier windows, so
 * with its last fragment in the slot a list window costs 4 bytes per
 * fragment and nothing else: no pointer, no header, no malloc block.  A
 * clean cached window keeps its list in the pool and its slot in the
 * bytemap.
 *
 * HIGH TYPES (the bitmap directory)
 *
 * A byte holds eight type bits; QCOW2_OL_BITMAP_DIRECTORY is the ninth.
 * Widening every cluster to 16 bits would double every bytemap and break
 * the 32-bit fragment, for a structure of which an image has one.  Types 8
 * and up are therefore kept apart, in a sorted array of disjoint, maximal
 * [start, end) cluster ranges on the map (one entry for a normal image), so
 * checking them is a binary search, O(1) in practice, that needs neither a
 * window nor a conversion, and a check that ignores them skips it.
 *
 * COMPLEXITY (c = clusters in the range, w = windows it touches)
 *
 *   check          O(c + w): per window a memo compare, else a tree walk
 *                  of at most 4 levels; then a word-wise OR of c bytes, or
 *                  O(1) for an inline/pair slot.  A list window not in the
 *                  cache adds one expansion, O(4096), and possibly one
 *                  eviction: O(1) if clean, a conversion if dirty.
 *   enter/remove   the same, plus O(256) per window that appears or
 *                  disappears (its chunk's slot array is reshaped); inline
 *                  and pair windows are edited in the slot in O(1 + c/256).
 *                  A remove visits only windows that exist.
 *   write-back     a conversion, O(4096), plus moving the lists of at most
 *                  15 neighbours in the pool: O(fragments of 16 windows),
 *                  a few hundred bytes for real images, 64 KiB at worst.
 *   high types     O(log h + h) per enter/remove, O(log h) per check, for
 *                  h ranges (h = 1 for a normal image).
 *
 * A cache hit allocates nothing and updates at most four LRU pointers.
 *
 * MEMORY
 *
 * Every allocation goes through ovl_alloc()/ovl_free(), which keep
 * mem_current and mem_peak exact (bytes requested, not counting malloc's
 * own headers); qcow2_metadata_map_verify() recounts them from scratch.
 * Apart from the cache (at most N * 4136 bytes, plus permanent bytemaps,
 * each of which replaces a list of more than 4 KiB) the map costs
 *
 *     4 bytes per window with metadata (its slot)
 *   + 4 bytes per fragment of a list window, less one when its last
 *     fragment sits in the slot (inline and pair windows: nothing more)
 *   + 776 bytes per leaf (4096 windows) with any metadata, 520 per node
 *   + 160 bytes per chunk (256 windows) with a list window
 *   + 192 bytes for the map, and 8 bytes per cached or permanent bytemap
 *     in the handle table (grown by a quarter, freed when empty).
 *
 * The 2014 estimate charges 4 bytes per metadata cluster, 40 * IS / CS^2
 * bytes for an image of IS bytes with CS-byte clusters.  Here a lone L2
 * table or refcount block costs one inline slot (4 bytes), an adjacent pair
 * of them one pair slot, and a list window 4 bytes per fragment, so the
 * map at rest stays within a few percent of the estimate: 1% below it for
 * 2 GiB with 512 B clusters and 2% below for 1 PiB with 64 KiB clusters; 4%
 * above for 1 TiB with 64 KiB clusters and 7% above for 8 GiB with 4 KiB
 * clusters, where a budget of 10-20 KiB must also carry the fixed cost of
 * leaves, pool headers and the map (1.4-2.4 KiB).  docs/overlap-map.md has
 * the worked numbers.
 */

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <glib.h>

#include "qcow2-overlap.h"

#define WINDOW_BITS     12
#define WINDOW_CLUSTERS (1u << WINDOW_BITS)
#define FRAG_MAX_LEN    256u
#define LIST_MAX_FRAGS  (WINDOW_CLUSTERS / 4)   /* beyond this a list outweighs the bytemap */
#define LOW_TYPES       0xffu                   /* the types a byte (and a fragment) holds */

#define CHUNK_BITS      8
#define CHUNK_WINDOWS   (1u << CHUNK_BITS)
#define CHUNK_WORDS     (CHUNK_WINDOWS / 64)
#define GROUP_WINDOWS   16                      /* windows sharing one list pool */
#define CHUNK_GROUPS    (CHUNK_WINDOWS / GROUP_WINDOWS)
#define LEAF_BITS       4
#define LEAF_CHUNKS     (1u << LEAF_BITS)
#define LEAF_SHIFT      (CHUNK_BITS + LEAF_BITS)  /* window index -> leaf index */
#define NODE_BITS       6
#define NODE_FANOUT     (1u << NODE_BITS)
#define MAX_HEIGHT      8

#define MAX_HANDLES     (UINT32_C(1) << 30)
#define NO_HANDLE       MAX_HANDLES
#define NO_WINDOW       UINT64_MAX

G_STATIC_ASSERT(LIST_MAX_FRAGS * sizeof(uint32_t) == WINDOW_CLUSTERS);
G_STATIC_ASSERT(WINDOW_CLUSTERS == QCOW2_OVERLAP_WINDOW_CLUSTERS);

enum { SLOT_INLINE, SLOT_PAIR, SLOT_LIST, SLOT_BYTEMAP };

typedef struct OvlRun {         /* [start, end) with one mask; clusters */
    uint64_t start, end;
    unsigned mask;
} OvlRun;

typedef struct OvlBytemap {
    struct OvlBytemap *prev, *next; /* LRU, most recent first */
    uint64_t window;
    uint32_t handle;
    uint32_t rest;                  /* clean: the window's list slot, list kept; dirty: 0 */
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

typedef struct OvlChunk {
    uint64_t present[CHUNK_WORDS];
    uint32_t *slots;                /* one per present window, by window */
    OvlPools *pools;                /* NULL while no window of the chunk has a list */
} OvlChunk;

typedef struct OvlPos {             /* where a window lives */
    OvlChunk *chunk;
    unsigned bit;                   /* window index within the chunk */
    uint32_t *slot;                 /* NULL if the window is empty */
} OvlPos;

typedef struct OvlLeaf {
    OvlChunk chunk[LEAF_CHUNKS];
    unsigned used;                  /* chunks with a present window */
} OvlLeaf;

typedef struct OvlNode {
    void *child[NODE_FANOUT];
    unsigned used;                  /* non-NULL children */
} OvlNode;

struct Qcow2MetadataMap {
    unsigned cluster_bits;
    unsigned cache_max;

    uint64_t memo_window;           /* memo->window, or NO_WINDOW */
    OvlBytemap *memo;
    OvlBytemap *lru_head, *lru_tail;
    unsigned lru_count, permanent_count;

    void *root;                     /* OvlNode, or OvlLeaf when height == 0 */
    unsigned height;

    void **handles;                 /* bytemaps; free entries are odd */
    uint32_t handles_cap, handles_next, handles_used, free_handle;

    OvlRun *hi;                     /* types >= 8, sorted, disjoint, maximal */
    size_t hi_count;

    Qcow2MetadataMapStats stats;
};

/* ---- memory accounting ------------------------------------------------ */

static void mem_add(Qcow2MetadataMap *map, size_t n)
{
    map->stats.mem_current += n;
    if (map->stats.mem_current > map->stats.mem_peak) {
        map->stats.mem_peak = map->stats.mem_current;
    }
}

static void *ovl_alloc(Qcow2MetadataMap *map, size_t n)
{
    mem_add(map, n);
    return g_malloc(n);
}

static void *ovl_alloc0(Qcow2MetadataMap *map, size_t n)
{
    mem_add(map, n);
    return g_malloc0(n);
}

static void *ovl_realloc(Qcow2MetadataMap *map, void *p, size_t old_n, size_t new_n)
{
    if (new_n > old_n) {
        mem_add(map, new_n - old_n);
    } else {
        map->stats.mem_current -= old_n - new_n;
    }
    return g_realloc(p, new_n);
}

static void ovl_free(Qcow2MetadataMap *map, void *p, size_t n)
{
    map->stats.mem_current -= n;
    g_free(p);
}

/* ---- fragments, slots and runs ----------------------------------------- */

static inline uint32_t frag_make(unsigned start, unsigned len, unsigned types)
{
    return (uint32_t)types << 24 | (uint32_t)(len - 1) << 16 | start;
}

static inline unsigned frag_start(uint32_t f) { return f & 0xffff; }
static inline unsigned frag_len(uint32_t f) { return ((f >> 16) & 0xff) + 1; }
static inline unsigned frag_types(uint32_t f) { return f >> 24; }

static inline unsigned slot_tag(uint32_t slot) { return slot >> 30; }
static inline uint32_t slot_handle(uint32_t slot) { return slot & (MAX_HANDLES - 1); }
/* A list slot: words in the pool (11) | has tail (1) | tail start (12) | tail bit (3) */
static inline unsigned slot_list_len(uint32_t slot) { return slot & 0x7ff; }
static inline bool slot_list_tail(uint32_t slot) { return slot >> 11 & 1; }

static inline uint32_t slot_list_tail_frag(uint32_t slot)
{
    return frag_make((slot >> 12) & 0xfff, 1, 1u << ((slot >> 24) & 7));
}

static inline unsigned slot_list_frags(uint32_t slot)
{
    return slot_list_len(slot) + slot_list_tail(slot);
}

static inline uint32_t slot_ref(unsigned tag, uint32_t payload)
{
    return (uint32_t)tag << 30 | payload;
}

static inline bool one_bit(unsigned m)
{
    return m && !(m & (m - 1));
}

/* Slot form of a canonical fragment list, if it has one. */
static bool frags_fit_slot(const uint32_t *f, unsigned n, uint32_t *slot)
{
    if (n == 1) {
        *slot = frag_start(f[0]) | (uint32_t)(frag_len(f[0]) - 1) << 12 |
                (uint32_t)frag_types(f[0]) << 20;
        return true;
    }
    if (n == 2 && frag_len(f[0]) == 1 && frag_len(f[1]) == 1 &&
        one_bit(frag_types(f[0])) && one_bit(frag_types(f[1]))) {
        *slot = (uint32_t)SLOT_PAIR << 30 |
                frag_start(f[0]) | (uint32_t)__builtin_ctz(frag_types(f[0])) << 12 |
                (uint32_t)frag_start(f[1]) << 15 |
                (uint32_t)__builtin_ctz(frag_types(f[1])) << 27;
        return true;
    }
    return false;
}

/* Runs (window-relative) of an inline or pair slot. */
static unsigned slot_runs(uint32_t slot, OvlRun *runs)
{
    if (slot_tag(slot) == SLOT_INLINE) {
        unsigned start = slot & 0xfff;
        runs[0] = (OvlRun){ start, start + ((slot >> 12) & 0xff) + 1, (slot >> 20) & 0xff };
        return 1;
    }
    assert(slot_tag(slot) == SLOT_PAIR);
    runs[0] = (OvlRun){ slot & 0xfff, (slot & 0xfff) + 1, 1u << ((slot >> 12) & 7) };
    runs[1] = (OvlRun){ (slot >> 15) & 0xfff, ((slot >> 15) & 0xfff) + 1,
                        1u << ((slot >> 27) & 7) };
    return 2;
}

static void run_emit(OvlRun *out, size_t *k, uint64_t a, uint64_t b, unsigned mask)
{
    if (a >= b || !mask) {
        return;
    }
    if (*k && out[*k - 1].end == a && out[*k - 1].mask == mask) {
        out[*k - 1].end = b;
        return;
    }
    out[(*k)++] = (OvlRun){ a, b, mask };
}

/*
 * Set (or clear) 'mask' on [s, e) in the sorted, disjoint, maximal runs
 * in[0..n) and write the result, in the same form, to out, which needs room
 * for 4 * n + 1 runs.  Shared by slot windows and the high-type ranges.
 */
static size_t runs_apply(const OvlRun *in, size_t n, uint64_t s, uint64_t e,
                         unsigned mask, bool set, OvlRun *out)
{
    uint64_t prev_end = 0;
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        const OvlRun *r = &in[i];
        if (set) {
            run_emit(out, &k, MAX(s, prev_end), MIN(e, r->start), mask);
        }
        run_emit(out, &k, r->start, MIN(r->end, s), r->mask);
        run_emit(out, &k, MAX(r->start, s), MIN(r->end, e),
                 set ? r->mask | mask : r->mask & ~mask);
        run_emit(out, &k, MAX(r->start, e), r->end, r->mask);
        prev_end = r->end;
    }
    if (set) {
        run_emit(out, &k, MAX(s, prev_end), e, mask);
    }
    return k;
}

/* Cut maximal runs into canonical fragments (F3). */
static unsigned runs_to_frags(const OvlRun *runs, size_t n, uint32_t *frags)
{
    unsigned k = 0;

    for (size_t i = 0; i < n; i++) {
        for (uint64_t a = runs[i].start; a < runs[i].end; a += FRAG_MAX_LEN) {
            frags[k++] = frag_make(a, MIN(FRAG_MAX_LEN, runs[i].end - a), runs[i].mask);
        }
    }
    return k;
}

/* ---- bytemaps ------------------------------------------------------------ */

/* OR of bytes[s, e); the hot path of every check. */
static inline unsigned bytemap_or(const uint8_t *b, unsigned s, unsigned e)
{
    uint64_t acc = 0;

    if (e - s < 16) {
        while (s < e) {
            acc |= b[s++];
        }
        return acc;
    }
    while (s & 7) {
        acc |= b[s++];
    }
    for (; s + 8 <= e; s += 8) {
        uint64_t w;
        memcpy(&w, b + s, 8);
        acc |= w;
    }
    while (s < e) {
        acc |= b[s++];
    }
    acc |= acc >> 32;
    acc |= acc >> 16;
    acc |= acc >> 8;
    return acc & 0xff;
}

/* Expand a list into 'bytes'; returns the number of non-zero clusters. */
static unsigned frags_expand(const uint32_t *f, unsigned n, uint8_t *bytes)
{
    unsigned pop = 0;

    memset(bytes, 0, WINDOW_CLUSTERS);
    for (unsigned i = 0; i < n; i++) {
        unsigned len = frag_len(f[i]);
        if (len == 1) {
            bytes[frag_start(f[i])] = frag_types(f[i]);  /* most metadata is one cluster */
        } else {
            memset(bytes + frag_start(f[i]), frag_types(f[i]), len);
        }
        pop += len;
    }
    return pop;
}

/*
 * Canonical fragments of a bytemap.  Stops early and returns max + 1 when
 * there are more than 'max'.
 */
static unsigned bytemap_to_frags(const uint8_t *b, uint32_t *frags, unsigned max)
{
    unsigned n = 0, i = 0;

    while (i < WINDOW_CLUSTERS) {
        unsigned m = b[i], j, lim;
        uint64_t w;

        if (!m) {
            if (!(i & 7) && (memcpy(&w, b + i, 8), !w)) {
                i += 8;
            } else {
                i++;
            }
            continue;
        }
        lim = MIN(i + FRAG_MAX_LEN, WINDOW_CLUSTERS);
        for (j = i + 1; j < lim && b[j] == m; j++) {
            /* extend the run */
        }
        if (n == max) {
            return max + 1;
        }
        frags[n++] = frag_make(i, j - i, m);
        i = j;
    }
    return n;
}

/* ---- the directory --------------------------------------------------------- */

/*
 * Without -mpopcnt, __builtin_popcountll is a libgcc call; this inline
 * version is several times faster on the lookup path.
 */
static inline unsigned popcount64(uint64_t x)
{
    x -= (x >> 1) & UINT64_C(0x5555555555555555);
    x = (x & UINT64_C(0x3333333333333333)) + ((x >> 2) & UINT64_C(0x3333333333333333));
    x = (x + (x >> 4)) & UINT64_C(0x0f0f0f0f0f0f0f0f);
    return (x * UINT64_C(0x0101010101010101)) >> 56;
}

static unsigned chunk_count(const OvlChunk *c)
{
    unsigned n = 0;
    for (unsigned i = 0; i < CHUNK_WORDS; i++) {
        n += popcount64(c->present[i]);
    }
    return n;
}

static inline bool chunk_has(const OvlChunk *c, unsigned b)
{
    return c->present[b / 64] >> (b % 64) & 1;
}

static inline unsigned chunk_rank(const OvlChunk *c, unsigned b)
{
    unsigned r = popcount64(c->present[b / 64] & ((UINT64_C(1) << (b % 64)) - 1));
    for (unsigned i = 0; i < b / 64; i++) {
        r += popcount64(c->present[i]);
    }
    return r;
}

static OvlLeaf *leaf_lookup(const Qcow2MetadataMap *map, uint64_t li)
{
    void *p = map->root;
    unsigned h = map->height;

    if (!p || li >> (h * NODE_BITS)) {
        return NULL;
    }
    while (h--) {
        p = ((OvlNode *)p)->child[(li >> (h * NODE_BITS)) & (NODE_FANOUT - 1)];
        if (!p) {
            return NULL;
        }
    }
    return p;
}

static OvlLeaf *leaf_get(Qcow2MetadataMap *map, uint64_t li)
{
    void **pp = &map->root;
    OvlNode *parent = NULL;

    if (!map->root) {
        map->height = 0;
    }
    while (li >> (map->height * NODE_BITS)) {
        if (map->root) {
            OvlNode *n = ovl_alloc0(map, sizeof(*n));
            n->child[0] = map->root;
            n->used = 1;
            map->root = n;
        }
        map->height++;
    }
    for (unsigned h = map->height;; h--) {
        if (!*pp) {
            *pp = ovl_alloc0(map, h ? sizeof(OvlNode) : sizeof(OvlLeaf));
            if (parent) {
                parent->used++;
            }
        }
        if (!h) {
            return *pp;
        }
        parent = *pp;
        pp = &parent->child[(li >> ((h - 1) * NODE_BITS)) & (NODE_FANOUT - 1)];
    }
}

static void leaf_remove(Qcow2MetadataMap *map, uint64_t li)
{
    OvlNode *path[MAX_HEIGHT];
    unsigned idx[MAX_HEIGHT], d = 0;
    void *p = map->root;

    for (unsigned h = map->height; h > 0; h--, d++) {
        path[d] = p;
        idx[d] = (li >> ((h - 1) * NODE_BITS)) & (NODE_FANOUT - 1);
        p = path[d]->child[idx[d]];
    }
    ovl_free(map, p, sizeof(OvlLeaf));
    while (d--) {
        path[d]->child[idx[d]] = NULL;
        if (--path[d]->used) {
            return;
        }
        ovl_free(map, path[d], sizeof(OvlNode));
    }
    map->root = NULL;
    map->height = 0;
}

static OvlChunk *chunk_lookup(const Qcow2MetadataMap *map, uint64_t w)
{
    OvlLeaf *leaf = leaf_lookup(map, w >> LEAF_SHIFT);
    return leaf ? &leaf->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)] : NULL;
}

static OvlPos window_find(const Qcow2MetadataMap *map, uint64_t w)
{
    OvlPos pos = { chunk_lookup(map, w), w & (CHUNK_WINDOWS - 1), NULL };

    if (pos.chunk && chunk_has(pos.chunk, pos.bit)) {
        pos.slot = &pos.chunk->slots[chunk_rank(pos.chunk, pos.bit)];
    }
    return pos;
}

/* The slot of window w, or NULL if the window is empty. */
static inline uint32_t *slot_lookup(const Qcow2MetadataMap *map, uint64_t w)
{
    return window_find(map, w).slot;
}

/* First present leaf at or after relative leaf index *li under p (height h). */
static OvlLeaf *subtree_next(void *p, unsigned h, uint64_t *li)
{
    OvlNode *node = p;
    unsigned shift;

    if (!h) {
        return p;
    }
    shift = (h - 1) * NODE_BITS;
    for (unsigned i = *li >> shift; i < NODE_FANOUT; i++) {
        if (node->child[i]) {
            uint64_t sub = i == *li >> shift ? *li & ((UINT64_C(1) << shift) - 1) : 0;
            OvlLeaf *leaf = subtree_next(node->child[i], h - 1, &sub);
            if (leaf) {
                *li = (uint64_t)i << shift | sub;
                return leaf;
            }
        }
    }
    return NULL;
}

/*
 * The first present window at or after w, or NO_WINDOW, so that checks and
 * removes over a huge range skip empty space a subtree at a time.
 */
static uint64_t window_next(const Qcow2MetadataMap *map, uint64_t w)
{
    uint64_t li = w >> LEAF_SHIFT;
    unsigned pos = w & ((1u << LEAF_SHIFT) - 1);

    while (map->root && !(li >> (map->height * NODE_BITS))) {
        OvlLeaf *leaf;
        uint64_t found = li;

        leaf = subtree_next(map->root, map->height, &found);
        if (!leaf) {
            break;
        }
        if (found != li) {
            pos = 0;
        }
        for (unsigned b = pos; b < 1u << LEAF_SHIFT; b = (b | 63) + 1) {
            const OvlChunk *c = &leaf->chunk[b >> CHUNK_BITS];
            uint64_t bits = c->present[(b % CHUNK_WINDOWS) / 64] >> (b % 64);
            if (bits) {
                return found << LEAF_SHIFT | (b + __builtin_ctzll(bits));
            }
        }
        li = found + 1;
        pos = 0;
    }
    return NO_WINDOW;
}

static OvlPos window_insert(Qcow2MetadataMap *map, uint64_t w, uint32_t slot)
{
    OvlLeaf *leaf = leaf_get(map, w >> LEAF_SHIFT);
    OvlChunk *c = &leaf->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)];
    unsigned b = w & (CHUNK_WINDOWS - 1);
    unsigned n = chunk_count(c), r = chunk_rank(c, b);

    c->slots = ovl_realloc(map, c->slots, n * sizeof(uint32_t), (n + 1) * sizeof(uint32_t));
    memmove(&c->slots[r + 1], &c->slots[r], (n - r) * sizeof(uint32_t));
    c->slots[r] = slot;
    c->present[b / 64] |= UINT64_C(1) << (b % 64);
    if (!n) {
        leaf->used++;
    }
    map->stats.windows++;
    return (OvlPos){ c, b, &c->slots[r] };
}

/* Drop window w's slot; its list or bytemap must already be gone. */
static void window_delete(Qcow2MetadataMap *map, uint64_t w)
{
    OvlLeaf *leaf = leaf_lookup(map, w >> LEAF_SHIFT);
    OvlChunk *c = &leaf->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)];
    unsigned b = w & (CHUNK_WINDOWS - 1);
    unsigned n = chunk_count(c), r = chunk_rank(c, b);

    memmove(&c->slots[r], &c->slots[r + 1], (n - r - 1) * sizeof(uint32_t));
    c->present[b / 64] &= ~(UINT64_C(1) << (b % 64));
    map->stats.windows--;
    if (n > 1) {
        c->slots = ovl_realloc(map, c->slots, n * sizeof(uint32_t),
                               (n - 1) * sizeof(uint32_t));
        return;
    }
    ovl_free(map, c->slots, sizeof(uint32_t));
    c->slots = NULL;
    assert(!c->pools);
    if (!--leaf->used) {
        leaf_remove(map, w >> LEAF_SHIFT);
    }
}

/* ---- handles ----------------------------------------------------------- */

static uint32_t handle_new(Qcow2MetadataMap *map, void *p)
{
    uint32_t h = map->free_handle;

    if (h != NO_HANDLE) {
        map->free_handle = (uintptr_t)map->handles[h] >> 1;
    } else {
        if (map->handles_next == map->handles_cap) {
            uint32_t cap = MAX(4, map->handles_cap + map->handles_cap / 4);
            cap = MIN(cap, MAX_HANDLES);
            assert(cap > map->handles_cap);
            map->handles = ovl_realloc(map, map->handles, map->handles_cap * sizeof(void *),
                                       cap * sizeof(void *));
            map->handles_cap = cap;
        }
        h = map->handles_next++;
    }
    map->handles[h] = p;
    map->handles_used++;
    return h;
}

static void handle_free(Qcow2MetadataMap *map, uint32_t h)
{
    if (!--map->handles_used) {
        ovl_free(map, map->handles, map->handles_cap * sizeof(void *));
        map->handles = NULL;
        map->handles_cap = map->handles_next = 0;
        map->free_handle = NO_HANDLE;
        return;
    }
    map->handles[h] = (void *)((uintptr_t)map->free_handle << 1 | 1);
    map->free_handle = h;
}

/* ---- lists at rest ------------------------------------------------------ */

/* Words a window holds in its group's pool. */
static unsigned slot_pool_len(const Qcow2MetadataMap *map, uint32_t slot)
{
    if (slot_tag(slot) == SLOT_LIST) {
        return slot_list_len(slot);
    }
    if (slot_tag(slot) == SLOT_BYTEMAP) {
        return slot_list_len(((const OvlBytemap *)map->handles[slot_handle(slot)])->rest);
    }
    return 0;
}

/* A window's list starts after the lists of the earlier windows of its group. */
static unsigned pool_offset(const Qcow2MetadataMap *map, const OvlChunk *c, unsigned bit)
{
    unsigned off = 0, r = chunk_rank(c, bit);

    for (unsigned i = chunk_rank(c, bit & ~(GROUP_WINDOWS - 1)); i < r; i++) {
        off += slot_pool_len(map, c->slots[i]);
    }
    return off;
}

static const uint32_t *pool_list(const Qcow2MetadataMap *map, const OvlPos *pos)
{
    return pos->chunk->pools->words[pos->bit / GROUP_WINDOWS] +
           pool_offset(map, pos->chunk, pos->bit);
}

/* Replace the old_n words the window at pos has in its pool by frags[0..new_n). */
static void pool_replace(Qcow2MetadataMap *map, const OvlPos *pos, unsigned old_n,
                         const uint32_t *frags, unsigned new_n)
{
    OvlChunk *c = pos->chunk;
    unsigned g = pos->bit / GROUP_WINDOWS, off, len, nlen, tail;
    OvlPools *p = c->pools;
    uint32_t *w;

    if (!p) {
        p = c->pools = ovl_alloc0(map, sizeof(*p));
    }
    off = pool_offset(map, c, pos->bit);
    len = p->len[g];
    nlen = len - old_n + new_n;
    tail = len - off - old_n;
    w = p->words[g];
    if (nlen > len) {
        w = ovl_realloc(map, w, len * sizeof(uint32_t), nlen * sizeof(uint32_t));
    }
    if (tail) {
        memmove(w + off + new_n, w + off + old_n, tail * sizeof(uint32_t));
    }
    if (new_n) {
        memcpy(w + off, frags, new_n * sizeof(uint32_t));
    }
    if (nlen < len && nlen) {
        w = ovl_realloc(map, w, len * sizeof(uint32_t), nlen * sizeof(uint32_t));
    } else if (!nlen) {
        ovl_free(map, w, len * sizeof(uint32_t));
        w = NULL;
    }
    p->words[g] = w;
    p->len[g] = nlen;
    if (!nlen) {
        for (g = 0; g < CHUNK_GROUPS && !p->len[g]; g++) {
            /* any list left in the chunk? */
        }
        if (g == CHUNK_GROUPS) {
            ovl_free(map, p, sizeof(*p));
            c->pools = NULL;
        }
    }
}

/*
 * Make n >= 1 canonical fragments the form at rest of the window at pos,
 * which holds nothing in its pool yet, and return the slot to store.  A
 * list's last fragment stays in the slot when it is one cluster of one type
 * (an L2 table or refcount block, nearly always), so that with the slot a
 * list window costs 4 bytes per fragment and nothing more.
 */
static uint32_t rest_store(Qcow2MetadataMap *map, const OvlPos *pos, const uint32_t *frags,
                           unsigned n)
{
    uint32_t slot, last = frags[n - 1];

    map->stats.fragments += n;
    if (frags_fit_slot(frags, n, &slot)) {
        return slot;
    }
    if (frag_len(last) == 1 && one_bit(frag_types(last))) {
        n--;
        slot = slot_ref(SLOT_LIST, n | 1u << 11 | frag_start(last) << 12 |
                                   (uint32_t)__builtin_ctz(frag_types(last)) << 24);
    } else {
        slot = slot_ref(SLOT_LIST, n);
    }
    pool_replace(map, pos, 0, frags, n);
    return slot;
}

/* Expand the list of a window with list slot 'slot' whose pool words are at 'pool'. */
static unsigned list_expand(const uint32_t *pool, uint32_t slot, uint8_t *bytes)
{
    unsigned pop = frags_expand(pool, slot_list_len(slot), bytes);

    if (slot_list_tail(slot)) {
        uint32_t f = slot_list_tail_frag(slot);
        bytes[frag_start(f)] = frag_types(f);
        pop++;
    }
    return pop;
}

/* The whole list of a window, pool words then tail; returns its length. */
static unsigned list_copy(const uint32_t *pool, uint32_t slot, uint32_t *frags)
{
    unsigned n = slot_list_len(slot);

    memcpy(frags, pool, n * sizeof(uint32_t));
    if (slot_list_tail(slot)) {
        frags[n++] = slot_list_tail_frag(slot);
    }
    return n;
}

/* ---- the cache ------------------------------------------------------------ */

static void lru_unlink(Qcow2MetadataMap *map, OvlBytemap *e)
{
    if (e->prev) {
        e->prev->next = e->next;
    } else {
        map->lru_head = e->next;
    }
    if (e->next) {
        e->next->prev = e->prev;
    } else {
        map->lru_tail = e->prev;
    }
    e->prev = e->next = NULL;
    map->lru_count--;
}

static void lru_push(Qcow2MetadataMap *map, OvlBytemap *e)
{
    e->prev = NULL;
    e->next = map->lru_head;
    if (map->lru_head) {
        map->lru_head->prev = e;
    } else {
        map->lru_tail = e;
    }
    map->lru_head = e;
    map->lru_count++;
}

static void memo_set(Qcow2MetadataMap *map, OvlBytemap *e)
{
    map->memo = e;
    map->memo_window = e ? e->window : NO_WINDOW;
}

static void cache_touch(Qcow2MetadataMap *map, OvlBytemap *e)
{
    if (!e->permanent && map->lru_head != e) {
        lru_unlink(map, e);
        lru_push(map, e);
    }
    memo_set(map, e);
}

/*
 * Take e out of the LRU, writing it back if dirty.  Returns true if its
 * storage is free for the caller to reuse or free, false if it stayed as a
 * permanent bytemap (C4).
 */
static bool cache_evict(Qcow2MetadataMap *map, OvlBytemap *e)
{
    OvlPos pos = window_find(map, e->window);

    lru_unlink(map, e);
    if (map->memo == e) {
        memo_set(map, NULL);
    }
    if (e->rest) {
        *pos.slot = e->rest;
    } else {
        uint32_t frags[LIST_MAX_FRAGS + 1];
        unsigned n = bytemap_to_frags(e->bytes, frags, LIST_MAX_FRAGS);

        if (n > LIST_MAX_FRAGS) {
            e->permanent = true;
            map->permanent_count++;
            return false;
        }
        *pos.slot = rest_store(map, &pos, frags, n);
        map->stats.bytemap_to_list++;
    }
    handle_free(map, e->handle);
    map->stats.bytemaps_freed++;
    map->stats.cached_bytemaps--;
    return true;
}

/* Expand list window w into the cache, evicting the LRU tail if it is full. */
static OvlBytemap *cache_load(Qcow2MetadataMap *map, uint64_t w)
{
    OvlBytemap *e = NULL;
    OvlPos pos;

    if (map->lru_count >= map->cache_max) {
        OvlBytemap *victim = map->lru_tail;
        if (cache_evict(map, victim)) {
            e = victim;
        }
    }
    if (!e) {
        e = ovl_alloc(map, sizeof(*e));
    }
    /* after the eviction: it may have moved this group's pool */
    pos = window_find(map, w);
    e->rest = *pos.slot;
    e->population = list_expand(pool_list(map, &pos), e->rest, e->bytes);
    e->window = w;
    e->permanent = false;
    e->handle = handle_new(map, e);
    *pos.slot = slot_ref(SLOT_BYTEMAP, e->handle);
    lru_push(map, e);
    memo_set(map, e);
    map->stats.list_to_bytemap++;
    map->stats.cached_bytemaps++;
    return e;
}

/* The window of e became empty (C3): free everything it had. */
static void bytemap_drop(Qcow2MetadataMap *map, OvlBytemap *e)
{
    if (e->permanent) {
        map->permanent_count--;
    } else {
        lru_unlink(map, e);
    }
    if (map->memo == e) {
        memo_set(map, NULL);
    }
    handle_free(map, e->handle);
    window_delete(map, e->window);
    ovl_free(map, e, sizeof(*e));
    map->stats.bytemaps_freed++;
    map->stats.cached_bytemaps--;
}

static void bytemap_edit(Qcow2MetadataMap *map, OvlBytemap *e, unsigned s, unsigned end,
                         unsigned types, bool set)
{
    uint8_t *b = e->bytes;
    unsigned diff = 0, pop = e->population;

    if (set) {
        for (unsigned i = s; i < end; i++) {
            unsigned o = b[i];
            pop += !o;
            diff |= ~o & types;
            b[i] = o | types;
        }
    } else {
        for (unsigned i = s; i < end; i++) {
            unsigned o = b[i];
            pop -= o && !(o & ~types);
            diff |= o & types;
            b[i] = o & ~types;
        }
    }
    if (!diff) {
        return;     /* nothing changed: a clean bytemap stays clean */
    }
    e->population = pop;
    if (e->rest) {
        /* the list is stale now (C2): give its words back */
        OvlPos pos = window_find(map, e->window);
        pool_replace(map, &pos, slot_list_len(e->rest), NULL, 0);
        map->stats.fragments -= slot_list_frags(e->rest);
        e->rest = 0;
    }
    if (!pop) {
        bytemap_drop(map, e);
        return;
    }
    if (e->permanent) {
        /* back into the LRU so that eviction re-decides its form (C4) */
        e->permanent = false;
        map->permanent_count--;
        lru_push(map, e);
        memo_set(map, e);
        if (map->lru_count > map->cache_max) {
            OvlBytemap *victim = map->lru_tail;
            if (cache_evict(map, victim)) {
                ovl_free(map, victim, sizeof(*victim));
            }
        }
    }
}

/* Edit an empty, inline or pair window in place (pos->slot NULL if empty). */
static void slot_edit(Qcow2MetadataMap *map, uint64_t w, OvlPos *pos, unsigned s,
                      unsigned e, unsigned types, bool set)
{
    OvlRun in[2] = { { 0 } }, out[4 * 2 + 1];
    /* at most 9 runs plus one fragment per 256 clusters of the window */
    uint32_t frags[4 * 2 + 1 + WINDOW_CLUSTERS / FRAG_MAX_LEN];
    size_t n = pos->slot ? slot_runs(*pos->slot, in) : 0;
    size_t k = runs_apply(in, n, s, e, types, set, out);
    unsigned nf;

    if (k == n) {
        size_t i;
        for (i = 0; i < n && in[i].start == out[i].start && in[i].end == out[i].end &&
                    in[i].mask == out[i].mask; i++) {
            /* compare */
        }
        if (i == n) {
            return;
        }
    }
    nf = runs_to_frags(out, k, frags);
    if (pos->slot) {
        map->stats.fragments -= n;
        if (!nf) {
            window_delete(map, w);
            return;
        }
    } else {
        *pos = window_insert(map, w, 0);    /* an inline slot owning no pool words */
    }
    *pos->slot = rest_store(map, pos, frags, nf);
}

static void window_edit(Qcow2MetadataMap *map, uint64_t w, unsigned s, unsigned e,
                        unsigned types, bool set)
{
    OvlBytemap *bm;
    OvlPos pos;

    if (w == map->memo_window) {
        bytemap_edit(map, map->memo, s, e, types, set);
        return;
    }
    pos = window_find(map, w);
    if (!pos.slot) {
        if (set) {
            slot_edit(map, w, &pos, s, e, types, set);
        }
        return;
    }
    switch (slot_tag(*pos.slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        slot_edit(map, w, &pos, s, e, types, set);
        return;
    case SLOT_LIST:
        bm = cache_load(map, w);
        break;
    default:
        bm = map->handles[slot_handle(*pos.slot)];
        cache_touch(map, bm);
        break;
    }
    bytemap_edit(map, bm, s, e, types, set);
}

static unsigned window_check_slow(Qcow2MetadataMap *map, uint64_t w, unsigned s, unsigned e)
{
    uint32_t *slotp = slot_lookup(map, w);
    OvlBytemap *bm;
    OvlRun runs[2];
    unsigned n, m = 0;

    if (!slotp) {
        return 0;
    }
    switch (slot_tag(*slotp)) {
    case SLOT_INLINE: {
        /* the usual slot at 64 KiB clusters: a lone L2 table or refblock */
        unsigned start = *slotp & 0xfff, len = ((*slotp >> 12) & 0xff) + 1;
        return start < e && s < start + len ? (*slotp >> 20) & 0xff : 0;
    }
    case SLOT_PAIR:
        n = slot_runs(*slotp, runs);
        for (unsigned i = 0; i < n; i++) {
            if (runs[i].start < e && s < runs[i].end) {
                m |= runs[i].mask;
            }
        }
        return m;
    case SLOT_LIST:
        bm = cache_load(map, w);
        break;
    default:
        bm = map->handles[slot_handle(*slotp)];
        cache_touch(map, bm);
        break;
    }
    return bytemap_or(bm->bytes, s, e);
}

static inline unsigned window_check(Qcow2MetadataMap *map, uint64_t w, unsigned s, unsigned e)
{
    if (w == map->memo_window) {
        return bytemap_or(map->memo->bytes, s, e);
    }
    return window_check_slow(map, w, s, e);
}

/* ---- high types ------------------------------------------------------------ */

static unsigned hi_check(const Qcow2MetadataMap *map, uint64_t s, uint64_t e)
{
    size_t lo = 0, hi = map->hi_count;
    unsigned m = 0;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (map->hi[mid].end <= s) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    for (; lo < map->hi_count && map->hi[lo].start < e; lo++) {
        m |= map->hi[lo].mask;
    }
    return m;
}

static void hi_apply(Qcow2MetadataMap *map, uint64_t s, uint64_t e, unsigned types, bool set)
{
    size_t n = map->hi_count, out_n = 4 * n + 1, k;
    OvlRun *out, *res = NULL;

    if (!n && !set) {
        return;
    }
    out = ovl_alloc(map, out_n * sizeof(OvlRun));
    k = runs_apply(map->hi, n, s, e, types, set, out);
    if (k) {
        res = ovl_alloc(map, k * sizeof(OvlRun));
        memcpy(res, out, k * sizeof(OvlRun));
    }
    ovl_free(map, out, out_n * sizeof(OvlRun));
    if (map->hi) {
        ovl_free(map, map->hi, n * sizeof(OvlRun));
    }
    map->hi = res;
    map->hi_count = k;
}

/* ---- public interface ---------------------------------------------------------- */

static const char *const type_names[QCOW2_OL_MAX_BITNR] = {
    [QCOW2_OL_MAIN_HEADER_BITNR]      = "qcow2_header",
    [QCOW2_OL_ACTIVE_L1_BITNR]        = "active L1 table",
    [QCOW2_OL_ACTIVE_L2_BITNR]        = "active L2 table",
    [QCOW2_OL_REFCOUNT_TABLE_BITNR]   = "refcount table",
    [QCOW2_OL_REFCOUNT_BLOCK_BITNR]   = "refcount block",
    [QCOW2_OL_SNAPSHOT_TABLE_BITNR]   = "snapshot table",
    [QCOW2_OL_INACTIVE_L1_BITNR]      = "inactive L1 table",
    [QCOW2_OL_INACTIVE_L2_BITNR]      = "inactive L2 table",
    [QCOW2_OL_BITMAP_DIRECTORY_BITNR] = "bitmap directory",
};

const char *qcow2_overlap_type_name(int bitnr)
{
    return bitnr >= 0 && bitnr < QCOW2_OL_MAX_BITNR ? type_names[bitnr] : NULL;
}

Qcow2MetadataMap *qcow2_metadata_map_new(unsigned cluster_bits, unsigned cache_windows)
{
    Qcow2MetadataMap *map;

    assert(cluster_bits >= 9 && cluster_bits <= 21);
    map = g_new0(Qcow2MetadataMap, 1);
    map->cluster_bits = cluster_bits;
    map->cache_max = cache_windows ? cache_windows : QCOW2_OVERLAP_DEFAULT_CACHE_WINDOWS;
    map->memo_window = NO_WINDOW;
    map->free_handle = NO_HANDLE;
    mem_add(map, sizeof(*map));
    return map;
}

static void free_subtree(Qcow2MetadataMap *map, void *p, unsigned h)
{
    if (h) {
        OvlNode *node = p;
        for (unsigned i = 0; i < NODE_FANOUT; i++) {
            if (node->child[i]) {
                free_subtree(map, node->child[i], h - 1);
            }
        }
        ovl_free(map, node, sizeof(*node));
        return;
    }
    OvlLeaf *leaf = p;
    for (unsigned ci = 0; ci < LEAF_CHUNKS; ci++) {
        OvlChunk *c = &leaf->chunk[ci];
        unsigned n = chunk_count(c);
        for (unsigned i = 0; i < n; i++) {
            if (slot_tag(c->slots[i]) == SLOT_BYTEMAP) {
                ovl_free(map, map->handles[slot_handle(c->slots[i])], sizeof(OvlBytemap));
            }
        }
        if (n) {
            ovl_free(map, c->slots, n * sizeof(uint32_t));
        }
        if (c->pools) {
            for (unsigned g = 0; g < CHUNK_GROUPS; g++) {
                if (c->pools->len[g]) {
                    ovl_free(map, c->pools->words[g], c->pools->len[g] * sizeof(uint32_t));
                }
            }
            ovl_free(map, c->pools, sizeof(OvlPools));
        }
    }
    ovl_free(map, leaf, sizeof(*leaf));
}

void qcow2_metadata_map_free(Qcow2MetadataMap *map)
{
    if (!map) {
        return;
    }
    if (map->root) {
        free_subtree(map, map->root, map->height);
    }
    if (map->handles) {
        ovl_free(map, map->handles, map->handles_cap * sizeof(void *));
    }
    if (map->hi) {
        ovl_free(map, map->hi, map->hi_count * sizeof(OvlRun));
    }
    assert(map->stats.mem_current == sizeof(*map));
    g_free(map);
}

/* Clusters [*first, *end) covered by a byte range (bytes > 0). */
static void range_to_clusters(const Qcow2MetadataMap *map, uint64_t offset, uint64_t bytes,
                              uint64_t *first, uint64_t *end)
{
    assert(offset <= QCOW2_OVERLAP_MAX_BYTES && bytes <= QCOW2_OVERLAP_MAX_BYTES - offset);
    *first = offset >> map->cluster_bits;
    *end = ((offset + bytes - 1) >> map->cluster_bits) + 1;
}

static void range_apply(Qcow2MetadataMap *map, uint64_t offset, uint64_t bytes,
                        unsigned types, bool set)
{
    uint64_t first, end;

    if (!bytes) {
        return;
    }
    range_to_clusters(map, offset, bytes, &first, &end);
    assert(!(types & ~QCOW2_OL_ALL));
    if (types & LOW_TYPES) {
        uint64_t w = first >> WINDOW_BITS, last_w = (end - 1) >> WINDOW_BITS;

        /* enter visits every window; remove only those that exist */
        for (w = set ? w : window_next(map, w); w <= last_w;
             w = set ? w + 1 : window_next(map, w + 1)) {
            uint64_t base = w << WINDOW_BITS;
            window_edit(map, w, first > base ? first - base : 0,
                        MIN(end - base, WINDOW_CLUSTERS), types & LOW_TYPES, set);
        }
    }
    if (types & ~LOW_TYPES) {
        hi_apply(map, first, end, types & ~LOW_TYPES, set);
    }
}

void qcow2_metadata_map_enter(Qcow2MetadataMap *map, uint64_t offset, uint64_t bytes,
                              unsigned types)
{
    map->stats.inserts++;
    range_apply(map, offset, bytes, types, true);
}

void qcow2_metadata_map_remove(Qcow2MetadataMap *map, uint64_t offset, uint64_t bytes,
                               unsigned types)
{
    map->stats.removes++;
    range_apply(map, offset, bytes, types, false);
}

unsigned qcow2_metadata_map_check(Qcow2MetadataMap *map, uint64_t offset, uint64_t bytes,
                                  unsigned ignore)
{
    unsigned want = QCOW2_OL_ALL & ~ignore, found = 0;
    uint64_t first, end;

    map->stats.queries++;
    if (!bytes) {
        return 0;
    }
    range_to_clusters(map, offset, bytes, &first, &end);
    if (want & LOW_TYPES) {
        uint64_t w = first >> WINDOW_BITS, last_w = (end - 1) >> WINDOW_BITS;

        if (w == last_w) {
            /* the common case: one window, usually the memo */
            found = window_check(map, w, first & (WINDOW_CLUSTERS - 1),
                                 ((end - 1) & (WINDOW_CLUSTERS - 1)) + 1);
        } else {
            for (w = window_next(map, w); w <= last_w; w = window_next(map, w + 1)) {
                uint64_t base = w << WINDOW_BITS;
                found |= window_check(map, w, first > base ? first - base : 0,
                                      MIN(end - base, WINDOW_CLUSTERS));
            }
        }
    }
    if ((want & ~LOW_TYPES) && map->hi_count) {
        found |= hi_check(map, first, end);
    }
    return found & want;
}

void qcow2_metadata_map_flush(Qcow2MetadataMap *map)
{
    while (map->lru_tail) {
        OvlBytemap *e = map->lru_tail;
        if (cache_evict(map, e)) {
            ovl_free(map, e, sizeof(*e));
        }
    }
}

void qcow2_metadata_map_get_stats(const Qcow2MetadataMap *map, Qcow2MetadataMapStats *stats)
{
    *stats = map->stats;
}

void qcow2_metadata_map_reset_counters(Qcow2MetadataMap *map)
{
    map->stats.list_to_bytemap = 0;
    map->stats.bytemap_to_list = 0;
    map->stats.bytemaps_freed = 0;
    map->stats.inserts = map->stats.removes = map->stats.queries = 0;
    map->stats.mem_peak = map->stats.mem_current;
}

/* ---- introspection ------------------------------------------------------------- */

/* Canonical fragments of window w without touching the cache; 0 if empty. */
static unsigned window_frags(const Qcow2MetadataMap *map, uint64_t w, uint32_t *frags)
{
    OvlPos pos = window_find(map, w);
    OvlRun runs[2];
    unsigned n;

    if (!pos.slot) {
        return 0;
    }
    switch (slot_tag(*pos.slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        n = slot_runs(*pos.slot, runs);
        return runs_to_frags(runs, n, frags);
    case SLOT_LIST:
        return list_copy(pool_list(map, &pos), *pos.slot, frags);
    default:
        return bytemap_to_frags(((OvlBytemap *)map->handles[slot_handle(*pos.slot)])->bytes,
                                frags, WINDOW_CLUSTERS);
    }
}

unsigned qcow2_metadata_map_get(const Qcow2MetadataMap *map, uint64_t cluster_index)
{
    uint64_t w = cluster_index >> WINDOW_BITS;
    unsigned c = cluster_index & (WINDOW_CLUSTERS - 1);
    unsigned m = map->hi_count ? hi_check(map, cluster_index, cluster_index + 1) : 0;
    uint32_t *slotp = slot_lookup(map, w);
    uint32_t frags[WINDOW_CLUSTERS];
    unsigned n;

    if (!slotp) {
        return m;
    }
    if (slot_tag(*slotp) == SLOT_BYTEMAP) {
        return m | ((OvlBytemap *)map->handles[slot_handle(*slotp)])->bytes[c];
    }
    n = window_frags(map, w, frags);
    for (unsigned i = 0; i < n; i++) {
        if (c >= frag_start(frags[i]) && c < frag_start(frags[i]) + frag_len(frags[i])) {
            m |= frag_types(frags[i]);
        }
    }
    return m;
}

Qcow2OverlapWindowForm qcow2_metadata_map_window_form(const Qcow2MetadataMap *map,
                                                      uint64_t window_index)
{
    uint32_t *slotp = slot_lookup(map, window_index);

    if (!slotp) {
        return QCOW2_OVERLAP_WINDOW_EMPTY;
    }
    switch (slot_tag(*slotp)) {
    case SLOT_INLINE:
        return QCOW2_OVERLAP_WINDOW_INLINE;
    case SLOT_PAIR:
        return QCOW2_OVERLAP_WINDOW_PAIR;
    case SLOT_LIST:
        return QCOW2_OVERLAP_WINDOW_LIST;
    default:
        return ((OvlBytemap *)map->handles[slot_handle(*slotp)])->permanent ?
               QCOW2_OVERLAP_WINDOW_PERMANENT : QCOW2_OVERLAP_WINDOW_CACHED;
    }
}

unsigned qcow2_metadata_map_window_fragments(const Qcow2MetadataMap *map, uint64_t window_index,
                                             Qcow2OverlapFragment *out, unsigned max)
{
    uint32_t frags[WINDOW_CLUSTERS];
    unsigned n = window_frags(map, window_index, frags);

    for (unsigned i = 0; i < n && i < max; i++) {
        out[i] = (Qcow2OverlapFragment){ frag_start(frags[i]), frag_len(frags[i]),
                                         frag_types(frags[i]) };
    }
    return n;
}

/* ---- verification ------------------------------------------------------------ */

typedef struct VerifyState {
    uint64_t mem, windows, fragments, bytemaps, handles;
    uint8_t *handle_seen;
} VerifyState;

static void verify_frags(const uint32_t *f, unsigned n)
{
    unsigned prev_end = 0, prev_types = 0, prev_len = 0;

    for (unsigned i = 0; i < n; i++) {
        unsigned s = frag_start(f[i]), len = frag_len(f[i]), t = frag_types(f[i]);
        g_assert_cmpuint(s + len, <=, WINDOW_CLUSTERS);                  /* F1 */
        g_assert_cmpuint(t, !=, 0);                                      /* F2 */
        if (i) {
            g_assert_cmpuint(prev_end, <=, s);                           /* F1 */
            if (prev_end == s && prev_types == t) {
                g_assert_cmpuint(prev_len, ==, FRAG_MAX_LEN);            /* F3 */
            }
        }
        prev_end = s + len;
        prev_types = t;
        prev_len = len;
    }
}

/* A list at rest (F1..F4) with list slot 'slot' and pool words at 'pool'. */
static void verify_list(VerifyState *vs, const uint32_t *pool, uint32_t slot)
{
    uint32_t frags[LIST_MAX_FRAGS], tmp, last;
    unsigned n;

    g_assert_cmpuint(slot_tag(slot), ==, SLOT_LIST);
    g_assert_cmpuint(slot_list_len(slot), >=, 1);
    g_assert_cmpuint(slot_list_frags(slot), <=, LIST_MAX_FRAGS);
    g_assert_cmpuint(slot >> 27 & 7, ==, 0);
    if (!slot_list_tail(slot)) {
        g_assert_cmpuint(slot >> 12 & 0x7fff, ==, 0);
    }
    n = list_copy(pool, slot, frags);
    g_assert_cmpuint(n, >=, 2);
    verify_frags(frags, n);
    g_assert_false(frags_fit_slot(frags, n, &tmp));                      /* F4 */
    last = frags[n - 1];
    g_assert_cmpint(slot_list_tail(slot), ==,                            /* F4 */
                    frag_len(last) == 1 && one_bit(frag_types(last)));
    vs->fragments += n;
}

/* One window; 'list' points at its words in the group's pool. */
static void verify_window(const Qcow2MetadataMap *map, VerifyState *vs, uint64_t w,
                          uint32_t slot, const uint32_t *list)
{
    uint32_t frags[2], tmp;
    OvlRun runs[2];
    unsigned n;

    vs->windows++;
    switch (slot_tag(slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        n = slot_runs(slot, runs);
        g_assert_cmpuint(runs_to_frags(runs, n, frags), ==, n);
        verify_frags(frags, n);
        g_assert_true(frags_fit_slot(frags, n, &tmp));
        g_assert_cmpuint(tmp, ==, slot);
        vs->fragments += n;
        break;
    case SLOT_LIST:
        verify_list(vs, list, slot);
        break;
    default: {
        uint32_t h = slot_handle(slot);
        const OvlBytemap *e;
        unsigned pop = 0;

        g_assert_cmpuint(h, <, map->handles_next);
        g_assert_false((uintptr_t)map->handles[h] & 1);
        g_assert_false(vs->handle_seen[h]);
        vs->handle_seen[h] = 1;
        vs->handles++;
        e = map->handles[h];
        g_assert_cmpuint(e->window, ==, w);
        g_assert_cmpuint(e->handle, ==, h);
        for (unsigned i = 0; i < WINDOW_CLUSTERS; i++) {
            pop += e->bytes[i] != 0;
        }
        g_assert_cmpuint(pop, ==, e->population);                        /* C3 */
        g_assert_cmpuint(pop, >, 0);
        if (e->rest) {                                                   /* C2 */
            uint8_t *copy = g_malloc(WINDOW_CLUSTERS);
            g_assert_false(e->permanent);
            verify_list(vs, list, e->rest);
            g_assert_cmpuint(list_expand(list, e->rest, copy), ==, pop);
            g_assert_cmpint(memcmp(copy, e->bytes, WINDOW_CLUSTERS), ==, 0);
            g_free(copy);
        }
        vs->mem += sizeof(*e);
        vs->bytemaps++;
        break;
    }
    }
}

static void verify_chunk(const Qcow2MetadataMap *map, VerifyState *vs, const OvlChunk *c,
                         uint64_t first_window)
{
    unsigned n = chunk_count(c), r = 0, groups_used = 0;

    g_assert_true(!n == !c->slots);
    vs->mem += n * sizeof(uint32_t);
    for (unsigned g = 0; g < CHUNK_GROUPS; g++) {
        const uint32_t *words = c->pools ? c->pools->words[g] : NULL;
        unsigned len = c->pools ? c->pools->len[g] : 0, off = 0;

        for (unsigned b = g * GROUP_WINDOWS; b < (g + 1) * GROUP_WINDOWS; b++) {
            if (chunk_has(c, b)) {
                uint32_t slot = c->slots[r++];
                unsigned plen = slot_pool_len(map, slot);
                g_assert_cmpuint(off + plen, <=, len);
                verify_window(map, vs, first_window + b, slot, plen ? words + off : NULL);
                off += plen;
            }
        }
        g_assert_cmpuint(off, ==, len);                 /* pools hold nothing else */
        g_assert_true(!len == !words);
        groups_used += len != 0;
        vs->mem += len * sizeof(uint32_t);
    }
    g_assert_true(!groups_used == !c->pools);
    vs->mem += c->pools ? sizeof(OvlPools) : 0;
}

static void verify_subtree(const Qcow2MetadataMap *map, VerifyState *vs, const void *p,
                           unsigned h, uint64_t prefix)
{
    if (h) {
        const OvlNode *node = p;
        unsigned used = 0;
        for (unsigned i = 0; i < NODE_FANOUT; i++) {
            if (node->child[i]) {
                used++;
                verify_subtree(map, vs, node->child[i], h - 1, prefix << NODE_BITS | i);
            }
        }
        g_assert_cmpuint(used, ==, node->used);
        g_assert_cmpuint(used, >, 0);
        vs->mem += sizeof(*node);
        return;
    }
    const OvlLeaf *leaf = p;
    unsigned used = 0;
    for (unsigned ci = 0; ci < LEAF_CHUNKS; ci++) {
        used += chunk_count(&leaf->chunk[ci]) != 0;
        verify_chunk(map, vs, &leaf->chunk[ci],
                     prefix << LEAF_SHIFT | (uint64_t)ci << CHUNK_BITS);
    }
    g_assert_cmpuint(used, ==, leaf->used);
    g_assert_cmpuint(used, >, 0);
    vs->mem += sizeof(*leaf);
}

void qcow2_metadata_map_verify(const Qcow2MetadataMap *map)
{
    VerifyState vs = { .mem = sizeof(*map) };
    unsigned lru = 0, nfree = 0;

    vs.handle_seen = g_malloc0(map->handles_next + 1);
    if (map->root) {
        verify_subtree(map, &vs, map->root, map->height, 0);
    } else {
        g_assert_cmpuint(map->height, ==, 0);
    }

    /* handles: every used one owned by exactly one window, the rest free */
    g_assert_cmpuint(vs.handles, ==, map->handles_used);
    for (uint32_t h = map->free_handle; h != NO_HANDLE; nfree++) {
        g_assert_cmpuint(h, <, map->handles_next);
        g_assert_false(vs.handle_seen[h]);
        g_assert_cmpuint(nfree, <, map->handles_next);
        vs.handle_seen[h] = 1;
        g_assert_true((uintptr_t)map->handles[h] & 1);
        h = (uintptr_t)map->handles[h] >> 1;
    }
    g_assert_cmpuint(map->handles_used + nfree, ==, map->handles_next);
    g_assert_cmpuint(map->handles_next, <=, map->handles_cap);
    g_assert_true(!map->handles_cap == !map->handles);
    vs.mem += map->handles_cap * sizeof(void *);
    g_free(vs.handle_seen);

    /* the LRU (C4, C5) */
    for (const OvlBytemap *e = map->lru_head; e; e = e->next, lru++) {
        const uint32_t *slotp = slot_lookup(map, e->window);
        g_assert_false(e->permanent);
        g_assert_true(e->prev ? e->prev->next == e : map->lru_head == e);
        g_assert_true(e->next ? e->next->prev == e : map->lru_tail == e);
        g_assert_nonnull(slotp);
        g_assert_cmpuint(*slotp, ==, slot_ref(SLOT_BYTEMAP, e->handle));
    }
    g_assert_cmpuint(lru, ==, map->lru_count);
    g_assert_cmpuint(lru, <=, map->cache_max);
    g_assert_cmpuint(lru + map->permanent_count, ==, vs.bytemaps);
    if (map->memo) {
        g_assert_cmpuint(map->memo_window, ==, map->memo->window);
        g_assert_true(map->memo == map->lru_head || map->memo->permanent);
    } else {
        g_assert_cmpuint(map->memo_window, ==, NO_WINDOW);
    }

    /* high types: sorted, disjoint, maximal */
    for (size_t i = 0; i < map->hi_count; i++) {
        const OvlRun *r = &map->hi[i];
        g_assert_cmpuint(r->start, <, r->end);
        g_assert_cmpuint(r->mask, !=, 0);
        g_assert_cmpuint(r->mask & ~(unsigned)QCOW2_OL_ALL & ~LOW_TYPES, ==, 0);
        g_assert_cmpuint(r->mask & LOW_TYPES, ==, 0);
        if (i) {
            g_assert_cmpuint(map->hi[i - 1].end, <=, r->start);
            g_assert_true(map->hi[i - 1].end < r->start || map->hi[i - 1].mask != r->mask);
        }
    }
    g_assert_true(!map->hi_count == !map->hi);
    vs.mem += map->hi_count * sizeof(OvlRun);

    g_assert_cmpuint(vs.windows, ==, map->stats.windows);
    g_assert_cmpuint(vs.fragments, ==, map->stats.fragments);
    g_assert_cmpuint(vs.bytemaps, ==, map->stats.cached_bytemaps);
    g_assert_cmpuint(vs.mem, ==, map->stats.mem_current);
    g_assert_cmpuint(map->stats.mem_current, <=, map->stats.mem_peak);
}
