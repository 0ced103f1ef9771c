/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * The directory of the metadata overlap map: where each window's 32-bit
 * slot lives, and where the fragment lists of list windows are kept.
 * The design and its invariants are described at the top of
 * qcow2-overlap.c (THE DIRECTORY, BIT LAYOUTS, invariant D); this file
 * is its storage half:
 *
 *   - a radix tree of 64-way nodes over leaves of 16 chunks;
 *   - chunks of 256 windows: a presence bitmap with per-word ranks so that
 *     finding a slot takes one popcount, and one allocation holding the
 *     pool table (once a window of the chunk has a list; one pool per 16
 *     windows) followed by the packed slot array;
 *   - the table of handles through which slots name cached bytemaps;
 *   - storing a window's canonical fragments in its smallest form at rest
 *     (inline slot, pair slot or list) and dropping a list again.
 *
 * A list slot holds the list's offset in its pool, and the list's first
 * words carry its length in their spare bits (list_len()), so a list is
 * found from its slot alone.  Only an edit that resizes a list walks its
 * pool neighbours, to move their offsets.
 */

#include "qcow2-overlap-int.h"

/* ---- the tree ----------------------------------------------------------- */

/* A leaf appeared or disappeared: the check path's leaf memo may be stale. */
static void leaf_memo_reset(Qcow2MetadataMap *map)
{
    map->leaf_memo_index = NO_LEAF;
    map->leaf_memo = NULL;
    map->leaf_memo_chunks = 0;
}

/* Where the tree points to leaf li, which exists. */
static void **leaf_ref(Qcow2MetadataMap *map, uint64_t li)
{
    void **pp = &map->root;
    unsigned h;

    for (h = map->height; h > 0; h--) {
        pp = &((OvlNode *)*pp)->child[(li >> ((h - 1) * NODE_BITS)) &
                                      (NODE_FANOUT - 1)];
    }
    return pp;
}

/* Resize the leaf at *pp to n chunks; new chunks are empty. */
static OvlLeaf *leaf_resize(Qcow2MetadataMap *map, void **pp, unsigned n)
{
    OvlLeaf *leaf = *pp;
    unsigned old = leaf->chunks;

    leaf = ovl_realloc(map, leaf, leaf_size(old), leaf_size(n));
    if (n > old) {
        memset(&leaf->chunk[old], 0, (n - old) * sizeof(OvlChunk));
    }
    leaf->chunks = n;
    *pp = leaf;
    leaf_memo_reset(map);
    return leaf;
}

/* Leaf li with at least ci + 1 chunks, created or grown as needed. */
static OvlLeaf *leaf_get(Qcow2MetadataMap *map, uint64_t li, unsigned ci)
{
    void **pp = &map->root;
    OvlNode *parent = NULL;
    OvlLeaf *leaf;
    unsigned h;

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
    for (h = map->height;; h--) {
        if (!*pp) {
            *pp = ovl_alloc0(map, h ? sizeof(OvlNode) : leaf_size(ci + 1));
            if (parent) {
                parent->used++;
            }
            if (!h) {
                ((OvlLeaf *)*pp)->chunks = ci + 1;
                leaf_memo_reset(map);
            }
        }
        if (!h) {
            leaf = *pp;
            return ci < leaf->chunks ? leaf : leaf_resize(map, pp, ci + 1);
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
    unsigned h;

    leaf_memo_reset(map);
    for (h = map->height; h > 0; h--, d++) {
        path[d] = p;
        idx[d] = (li >> ((h - 1) * NODE_BITS)) & (NODE_FANOUT - 1);
        p = path[d]->child[idx[d]];
    }
    ovl_free(map, p, leaf_size(((OvlLeaf *)p)->chunks));
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

OvlPos ovl_window_find(const Qcow2MetadataMap *map, uint64_t w)
{
    OvlPos pos = { leaf_find(map, w >> LEAF_SHIFT), NULL,
                   w & (CHUNK_WINDOWS - 1), 0, NULL, w };

    unsigned ci = (w >> CHUNK_BITS) & (LEAF_CHUNKS - 1);

    if (pos.leaf && ci < pos.leaf->chunks) {
        pos.chunk = &pos.leaf->chunk[ci];
        if (chunk_has(pos.chunk, pos.bit)) {
            pos.idx = chunk_slot_index(pos.chunk, pos.bit);
            pos.slot = chunk_slots(pos.chunk) + pos.idx;
        }
    }
    return pos;
}

/* First present leaf at or after relative leaf index *li under p (height h). */
static OvlLeaf *subtree_next(void *p, unsigned h, uint64_t *li)
{
    OvlNode *node = p;
    unsigned shift;
    unsigned i;

    if (!h) {
        return p;
    }
    shift = (h - 1) * NODE_BITS;
    for (i = *li >> shift; i < NODE_FANOUT; i++) {
        if (node->child[i]) {
            uint64_t sub =
                i == *li >> shift ? *li & ((UINT64_C(1) << shift) - 1) : 0;
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
uint64_t ovl_window_next(const Qcow2MetadataMap *map, uint64_t w)
{
    uint64_t li = w >> LEAF_SHIFT;
    unsigned pos = w & ((1u << LEAF_SHIFT) - 1);

    while (map->root && !(li >> (map->height * NODE_BITS))) {
        OvlLeaf *leaf;
        uint64_t found = li;
        unsigned b;

        leaf = subtree_next(map->root, map->height, &found);
        if (!leaf) {
            break;
        }
        if (found != li) {
            pos = 0;
        }
        for (b = pos; b < leaf->chunks << CHUNK_BITS; b = (b | 63) + 1) {
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

/* ---- the flat table ----------------------------------------------------- */

/* The flat table entry (FLAT_*) of window 'bit' of chunk c, slot *slotp. */
static uint64_t flat_entry(const Qcow2MetadataMap *map, const OvlChunk *c,
                           unsigned bit, const uint32_t *slotp)
{
    if (!slotp) {
        return 0;
    }
    if (slot_tag(*slotp) == SLOT_LIST) {
        const uint32_t *p = pool_list(c, bit, *slotp);

        if (pool_is_compact(p)) {
            return (uintptr_t)p | FLAT_COMPACT;
        }
    } else if (slot_tag(*slotp) == SLOT_BYTEMAP) {
        const OvlBytemap *e = map->handles[slot_handle(*slotp)];

        return (uintptr_t)e->bytes | FLAT_BYTES;
    }
    return (uint64_t)*slotp << 32 | FLAT_SLOT;
}

/* After the slot at pos was stored: its window's entry. */
void ovl_flat_sync(Qcow2MetadataMap *map, const OvlPos *pos)
{
    if (pos->window < map->flat_cap) {
        map->flat[pos->window] = flat_entry(map, pos->chunk, pos->bit,
                                            pos->slot);
    }
}

void ovl_flat_fast_update(Qcow2MetadataMap *map)
{
    map->fast_cap = map->hi_count ? 0 : map->flat_cap;
}

static void flat_free(Qcow2MetadataMap *map)
{
    ovl_free(map, map->flat, map->flat_cap * sizeof(uint64_t));
    map->flat = NULL;
    map->flat_cap = 0;
    ovl_flat_fast_update(map);
}

/*
 * Window w appeared past the table: cover it, with a quarter to spare,
 * if a quarter of the windows covered would have metadata.  Otherwise
 * checks of w use the tree.
 */
static void flat_grow(Qcow2MetadataMap *map, uint64_t w)
{
    uint64_t cap = w + 1 + (w + 1) / 4, v;

    if (!map->flat_allowed || map->stats.windows < cap / 4) {
        return;
    }
    map->flat = ovl_realloc(map, map->flat, map->flat_cap * sizeof(uint64_t),
                            cap * sizeof(uint64_t));
    memset(map->flat + map->flat_cap, 0,
           (cap - map->flat_cap) * sizeof(uint64_t));
    for (v = ovl_window_next(map, map->flat_cap); v < cap;
         v = ovl_window_next(map, v + 1)) {
        OvlPos pos = ovl_window_find(map, v);

        map->flat[v] = flat_entry(map, pos.chunk, pos.bit, pos.slot);
    }
    map->flat_cap = cap;
    ovl_flat_fast_update(map);
}

/*
 * The lists of windows [from, end of group g) of chunk c, whose window 0
 * is chunk_w, moved in their pool; window 'skip' is the caller's.
 */
static void flat_sync_group(Qcow2MetadataMap *map, const OvlChunk *c,
                            uint64_t chunk_w, unsigned g, unsigned from,
                            unsigned skip)
{
    unsigned end = (g + 1) * GROUP_WINDOWS;
    const uint32_t *slotp;
    unsigned b;

    if (from >= end || chunk_w + from >= map->flat_cap || !c->mem) {
        return;
    }
    slotp = chunk_slots(c) + chunk_slot_index(c, from);
    for (b = from; b < end && chunk_w + b < map->flat_cap; b++) {
        if (chunk_has(c, b)) {
            if (b != skip) {
                map->flat[chunk_w + b] = flat_entry(map, c, b, slotp);
            }
            slotp++;
        }
    }
}

/* ---- chunks ------------------------------------------------------------- */

static unsigned chunk_count(const OvlChunk *c)
{
    unsigned n = 0;
    unsigned i;

    for (i = 0; i < CHUNK_WORDS; i++) {
        n += popcount64(c->present[i]);
    }
    return n;
}

/* Recompute rank[] after a presence bit changed. */
static void chunk_rerank(OvlChunk *c)
{
    unsigned r = 0;
    unsigned i;

    for (i = 0; i < CHUNK_WORDS; i++) {
        c->rank[i] = r;
        r += popcount64(c->present[i]);
    }
}

/* Bytes of the chunk's allocation: pool table and n slots. */
static size_t chunk_mem_size(const OvlChunk *c, unsigned n)
{
    return c->slots_at + n * sizeof(uint32_t);
}

/* Slot index one past the last slot of group g. */
static unsigned group_end(const OvlChunk *c, unsigned g)
{
    return g + 1 < CHUNK_GROUPS ? chunk_slot_index(c, (g + 1) * GROUP_WINDOWS)
                                : chunk_count(c);
}

OvlPos ovl_window_insert(Qcow2MetadataMap *map, uint64_t w, uint32_t slot)
{
    OvlLeaf *leaf = leaf_get(map, w >> LEAF_SHIFT,
                             (w >> CHUNK_BITS) & (LEAF_CHUNKS - 1));
    OvlChunk *c = &leaf->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)];
    unsigned b = w & (CHUNK_WINDOWS - 1);
    unsigned n = chunk_count(c), i = chunk_slot_index(c, b);
    uint32_t *slots;
    OvlPos pos;

    c->mem = ovl_realloc(map, c->mem, chunk_mem_size(c, n),
                         chunk_mem_size(c, n + 1));
    slots = chunk_slots(c);
    memmove(&slots[i + 1], &slots[i], (n - i) * sizeof(uint32_t));
    slots[i] = slot;
    c->present[b / 64] |= UINT64_C(1) << (b % 64);
    chunk_rerank(c);
    if (!n) {
        leaf->used++;
    }
    map->stats.windows++;
    if (w >= map->flat_cap) {
        flat_grow(map, w);
    }
    pos = (OvlPos){ leaf, c, b, i, &slots[i], w };
    ovl_flat_sync(map, &pos);
    return pos;
}

/* Drop window w's slot; its list or bytemap must already be gone. */
void ovl_window_delete(Qcow2MetadataMap *map, uint64_t w)
{
    OvlLeaf *leaf = leaf_find(map, w >> LEAF_SHIFT);
    OvlChunk *c = &leaf->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)];
    unsigned b = w & (CHUNK_WINDOWS - 1);
    unsigned n = chunk_count(c), i = chunk_slot_index(c, b);
    uint32_t *slots = chunk_slots(c);

    memmove(&slots[i], &slots[i + 1], (n - i - 1) * sizeof(uint32_t));
    c->present[b / 64] &= ~(UINT64_C(1) << (b % 64));
    chunk_rerank(c);
    map->stats.windows--;
    if (map->stats.windows * 8 < map->flat_cap) {
        flat_free(map);
    } else if (w < map->flat_cap) {
        map->flat[w] = 0;
    }
    if (n > 1) {
        c->mem = ovl_realloc(map, c->mem, chunk_mem_size(c, n),
                             chunk_mem_size(c, n - 1));
        return;
    }
    assert(!c->slots_at);
    ovl_free(map, c->mem, chunk_mem_size(c, 1));
    c->mem = NULL;
    if (!--leaf->used) {
        leaf_remove(map, w >> LEAF_SHIFT);
    } else if (c == &leaf->chunk[leaf->chunks - 1]) {
        /* keep the leaf only as long as its last chunk in use */
        unsigned n = leaf->chunks - 1;

        while (!leaf->chunk[n - 1].mem) {
            n--;
        }
        leaf_resize(map, leaf_ref(map, w >> LEAF_SHIFT), n);
    }
}

/* ---- handles ------------------------------------------------------------ */

uint32_t ovl_handle_new(Qcow2MetadataMap *map, void *p)
{
    uint32_t h = map->free_handle;

    if (h != NO_HANDLE) {
        map->free_handle = (uintptr_t)map->handles[h] >> 1;
    } else {
        if (map->handles_next == map->handles_cap) {
            uint32_t cap = MAX(4, map->handles_cap + map->handles_cap / 4);
            cap = MIN(cap, MAX_HANDLES);
            assert(cap > map->handles_cap);
            map->handles = ovl_realloc(map, map->handles,
                                       map->handles_cap * sizeof(void *),
                                       cap * sizeof(void *));
            map->handles_cap = cap;
        }
        h = map->handles_next++;
    }
    map->handles[h] = p;
    map->handles_used++;
    return h;
}

void ovl_handle_free(Qcow2MetadataMap *map, uint32_t h)
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

/* ---- slot forms --------------------------------------------------------- */

/* Slot form of a canonical fragment list, if it has one. */
bool ovl_frags_fit_slot(const uint32_t *f, unsigned n, uint32_t *slot)
{
    if (n == 1) {
        *slot = slot_inline_make(f[0]);
        return true;
    }
    if (n == 2 && frag_len(f[0]) == 1 && frag_len(f[1]) == 1 &&
        one_bit(frag_types(f[0])) && one_bit(frag_types(f[1]))) {
        *slot = slot_pair_make(f[0], f[1]);
        return true;
    }
    return false;
}

/* Runs (window-relative) of an inline or pair slot. */
unsigned ovl_slot_runs(uint32_t slot, OvlRun *runs)
{
    unsigned i;

    if (slot_tag(slot) == SLOT_INLINE) {
        unsigned start = slot_inline_start(slot);

        runs[0] = (OvlRun){ start, start + slot_inline_len(slot),
                            slot_inline_types(slot) };
        return 1;
    }
    assert(slot_tag(slot) == SLOT_PAIR);
    for (i = 0; i < 2; i++) {
        unsigned start = slot_pair_start(slot, i);

        runs[i] = (OvlRun){ start, start + 1, slot_pair_types(slot, i) };
    }
    return 2;
}

/* ---- list pools --------------------------------------------------------- */

/*
 * The list slot of the window whose slot is *slotp if the window owns words
 * in its pool (a list, or a clean cached bytemap that kept its list), else
 * NULL.  Writable, so that moving a list can update its offset.
 */
static uint32_t *owner_rest(const Qcow2MetadataMap *map, uint32_t *slotp)
{
    if (slot_tag(*slotp) == SLOT_LIST) {
        return slotp;
    }
    if (slot_tag(*slotp) == SLOT_BYTEMAP) {
        OvlBytemap *e = map->handles[slot_handle(*slotp)];
        return e->rest ? &e->rest : NULL;
    }
    return NULL;
}

/* Where the list of window 'bit', which owns no words yet, goes in its pool. */
static unsigned pool_insert_offset(const Qcow2MetadataMap *map,
                                   const OvlChunk *c, unsigned bit)
{
    unsigned g = bit / GROUP_WINDOWS, end = group_end(c, g);
    unsigned i;

    for (i = chunk_slot_index(c, bit) + chunk_has(c, bit); i < end; i++) {
        const uint32_t *rest = owner_rest(map, &chunk_slots(c)[i]);
        if (rest) {
            return slot_list_off(*rest);
        }
    }
    return c->slots_at ? chunk_pools(c)->len[g] : 0;
}

/* Write the length marks (list_len()) into the n >= 1 words of a list. */
static void list_mark(uint32_t *p, unsigned n)
{
    const unsigned marks[4] = {
        n < 15 ? n : 15,
        n < 15 ? 0 : n & 15,
        n < 15 ? 0 : (n >> 4) & 15,
        n < 15 ? 0 : n >> 8,
    };
    unsigned i;

    for (i = 0; i < MIN(n, 4u); i++) {
        p[i] = frag_set_mark(p[i], marks[i]);
    }
}

/*
 * Give the chunk a pool table (at the head of its allocation) or take it
 * away.  This moves the slot array, so slot pointers must be looked up
 * again afterwards.
 */
static void chunk_set_pools(Qcow2MetadataMap *map, OvlChunk *c, bool on)
{
    unsigned n = chunk_count(c);
    size_t slot_bytes = n * sizeof(uint32_t);

    assert(n && !c->slots_at == on);
    if (on) {
        c->mem =
            ovl_realloc(map, c->mem, slot_bytes, sizeof(OvlPools) + slot_bytes);
        memmove((char *)c->mem + sizeof(OvlPools), c->mem, slot_bytes);
        memset(c->mem, 0, sizeof(OvlPools));
        c->slots_at = sizeof(OvlPools);
    } else {
        memmove(c->mem, (char *)c->mem + sizeof(OvlPools), slot_bytes);
        c->mem =
            ovl_realloc(map, c->mem, sizeof(OvlPools) + slot_bytes, slot_bytes);
        c->slots_at = 0;
    }
}

/*
 * Replace the old_n words at 'off' in the pool of window 'bit's group by
 * words[0..new_n), and move the offsets of the group's later lists to match.
 * May move the slot array (chunk_set_pools()).
 */
static void pool_splice(Qcow2MetadataMap *map, const OvlPos *pos,
                        unsigned off, unsigned old_n, const uint32_t *words,
                        unsigned new_n)
{
    OvlChunk *c = pos->chunk;
    unsigned bit = pos->bit;
    uint32_t *old_words;
    unsigned g = bit / GROUP_WINDOWS, len, nlen, tail, end;
    OvlPools *p;
    uint32_t *w;

    if (!c->slots_at) {
        chunk_set_pools(map, c, true);
    }
    p = chunk_pools(c);
    len = p->len[g];
    nlen = len - old_n + new_n;
    tail = len - off - old_n;
    w = old_words = p->words[g];
    if (nlen > len) {
        w = ovl_realloc(map, w, len * sizeof(uint32_t),
                        nlen * sizeof(uint32_t));
    }
    if (tail) {
        memmove(w + off + new_n, w + off + old_n, tail * sizeof(uint32_t));
    }
    if (new_n) {
        memcpy(w + off, words, new_n * sizeof(uint32_t));
    }
    if (nlen < len && nlen) {
        w = ovl_realloc(map, w, len * sizeof(uint32_t),
                        nlen * sizeof(uint32_t));
    } else if (!nlen) {
        ovl_free(map, w, len * sizeof(uint32_t));
        w = NULL;
    }
    p->words[g] = w;
    p->len[g] = nlen;

    if (tail && new_n != old_n) {
        unsigned i;

        end = group_end(c, g);
        for (i = chunk_slot_index(c, bit) + chunk_has(c, bit); i < end; i++) {
            uint32_t *rest = owner_rest(map, &chunk_slots(c)[i]);
            if (rest) {
                unsigned moved = slot_list_off(*rest) + new_n - old_n;
                *rest = (*rest & ~LIST_OFF_MASK) | moved;
            }
        }
    }
    if (!nlen) {
        unsigned k;

        for (k = 0; k < CHUNK_GROUPS && !p->len[k]; k++) {
            /* any list left in the chunk? */
        }
        if (k == CHUNK_GROUPS) {
            chunk_set_pools(map, c, false);
        }
    }
    /*
     * The lists after this one moved, or all of them with the pool; the
     * caller stores the slot of pos and syncs its entry.
     */
    flat_sync_group(map, c, pos->window - bit, g,
                    w == old_words ? bit + 1 : g * GROUP_WINDOWS, bit);
}

/*
 * Whether n canonical fragments, which fit no slot, are compact at rest
 * (F4): they make at most COMPACT_MAX_ENTRIES entries, and those take
 * fewer words than the list would.  *entries is then their number.
 */
bool ovl_frags_compact(const uint32_t *f, unsigned n, unsigned *entries)
{
    uint32_t last = f[n - 1];
    unsigned list_words = n - (frag_len(last) == 1 &&
                               one_bit(frag_types(last)));
    unsigned k = 0, i;

    /* each fragment makes an entry at least: stop once k is too many */
    for (i = 0; i < n && compact_words(k + n - i) < list_words &&
                k <= COMPACT_MAX_ENTRIES; i++) {
        unsigned t = frag_types(f[i]);

        k += frag_len(f[i]) * (one_bit(t) ? 1 : popcount64(t));
    }
    *entries = k;
    return i == n && k <= COMPACT_MAX_ENTRIES && compact_words(k) < list_words;
}

/* Write the compact list of n canonical fragments with k entries to out. */
static void compact_build(const uint32_t *f, unsigned n, unsigned k,
                          uint32_t *out)
{
    uint8_t *index = (uint8_t *)(out + 1);
    OvlEntry *ent = (OvlEntry *)(out + COMPACT_HEAD_WORDS);
    unsigned j = 0, i, b;

    out[0] = k;
    for (i = 0; i < n; i++) {
        unsigned start = frag_start(f[i]), end = frag_end(f[i]);
        unsigned types = frag_types(f[i]), c;

        if (end - start == 1 && one_bit(types)) {
            /* a lone L2 table or refcount block, nearly every fragment */
            ent[j++] = compact_key(start, __builtin_ctz(types));
            continue;
        }
        for (c = start; c < end; c++) {
            unsigned t;

            for (t = types; t; t &= t - 1) {
                ent[j++] = compact_key(c, __builtin_ctz(t));
            }
        }
    }
    while (j < (compact_words(k) - COMPACT_HEAD_WORDS) * 2) {
        ent[j++] = COMPACT_END;
    }
    /* the end entries stop the walk: they start past every bucket */
    for (b = 0, j = 0; b < COMPACT_BUCKETS; b++) {
        while (ent[j] >> 3 < b << COMPACT_BUCKET_BITS) {
            j++;
        }
        index[b] = j;
    }
}

/*
 * The canonical fragments of a compact list (at most COMPACT_MAX_ENTRIES);
 * returns their number.
 */
unsigned ovl_compact_to_frags(const uint32_t *p, uint32_t *frags)
{
    const OvlEntry *ent = compact_entries(p);
    unsigned n = compact_len(p), i = 0, k = 0;

    while (i < n) {
        unsigned c = ent[i] >> 3, m = 0;

        for (; i < n && ent[i] >> 3 == c; i++) {
            m |= 1u << (ent[i] & 7);
        }
        if (k && frag_end(frags[k - 1]) == c &&
            frag_types(frags[k - 1]) == m &&
            frag_len(frags[k - 1]) < FRAG_MAX_LEN) {
            frags[k - 1] = frag_make(frag_start(frags[k - 1]),
                                     frag_len(frags[k - 1]) + 1, m);
        } else {
            frags[k++] = frag_make(c, 1, m);
        }
    }
    return k;
}

/*
 * Make n >= 1 canonical fragments the form at rest of the window at pos,
 * which holds nothing in its pool yet, and return the slot to store.  A
 * list's last fragment stays in the slot when it is one cluster of one type
 * (an L2 table or refcount block, nearly always), so that with the slot a
 * list window costs 4 bytes per fragment and nothing more.
 */
uint32_t ovl_rest_store(Qcow2MetadataMap *map, OvlPos *pos,
                        const uint32_t *frags, unsigned n)
{
    uint32_t slot, last = frags[n - 1];
    bool tail = frag_len(last) == 1 && one_bit(frag_types(last));
    unsigned off, k;

    map->stats.fragments += n;
    if (ovl_frags_fit_slot(frags, n, &slot)) {
        return slot;
    }
    off = pool_insert_offset(map, pos->chunk, pos->bit);
    if (ovl_frags_compact(frags, n, &k)) {
        uint32_t words[COMPACT_HEAD_WORDS + COMPACT_MAX_ENTRIES / 2 + 1];

        compact_build(frags, n, k, words);
        pool_splice(map, pos, off, 0, words, compact_words(k));
        pos->slot = chunk_slots(pos->chunk) + pos->idx;
        return slot_list_make(off, NULL);
    }
    n -= tail;
    pool_splice(map, pos, off, 0, frags, n);
    pos->slot = chunk_slots(pos->chunk) + pos->idx;
    list_mark(pool_list(pos->chunk, pos->bit, off), n);
    return slot_list_make(off, tail ? &last : NULL);
}

/* Give back the pool words of the window at pos, whose list slot is 'rest'. */
void ovl_rest_drop(Qcow2MetadataMap *map, OvlPos *pos, uint32_t rest)
{
    const uint32_t *p = pool_list(pos->chunk, pos->bit, rest);
    unsigned n = pool_list_words(p), frags = n + slot_list_tail(rest);

    if (pool_is_compact(p)) {
        uint32_t f[COMPACT_MAX_ENTRIES];

        frags = ovl_compact_to_frags(p, f);
    }
    pool_splice(map, pos, slot_list_off(rest), n, NULL, 0);
    pos->slot = chunk_slots(pos->chunk) + pos->idx;
    map->stats.fragments -= frags;
}

/*
 * The whole canonical list of a window, pool words then tail; returns its
 * length.
 */
unsigned ovl_list_copy(const uint32_t *pool, uint32_t rest, uint32_t *frags)
{
    unsigned n, i;

    if (pool_is_compact(pool)) {
        return ovl_compact_to_frags(pool, frags);
    }
    n = list_len(pool);
    for (i = 0; i < n; i++) {
        frags[i] = frag_set_mark(pool[i], 0);
    }
    if (slot_list_tail(rest)) {
        frags[n++] = slot_list_tail_frag(rest);
    }
    return n;
}

/* ---- teardown ----------------------------------------------------------- */

static void free_subtree(Qcow2MetadataMap *map, void *p, unsigned h)
{
    OvlLeaf *leaf = p;
    unsigned ci;

    if (h) {
        OvlNode *node = p;
        unsigned i;

        for (i = 0; i < NODE_FANOUT; i++) {
            if (node->child[i]) {
                free_subtree(map, node->child[i], h - 1);
            }
        }
        ovl_free(map, node, sizeof(*node));
        return;
    }
    for (ci = 0; ci < leaf->chunks; ci++) {
        OvlChunk *c = &leaf->chunk[ci];
        OvlPools *pools = chunk_pools(c);
        unsigned n = chunk_count(c);
        unsigned i, g;

        for (i = 0; i < n; i++) {
            uint32_t slot = chunk_slots(c)[i];
            if (slot_tag(slot) == SLOT_BYTEMAP) {
                ovl_free(map, map->handles[slot_handle(slot)],
                         sizeof(OvlBytemap));
            }
        }
        for (g = 0; pools && g < CHUNK_GROUPS; g++) {
            if (pools->len[g]) {
                ovl_free(map, pools->words[g],
                         pools->len[g] * sizeof(uint32_t));
            }
        }
        if (n) {
            ovl_free(map, c->mem, chunk_mem_size(c, n));
        }
    }
    ovl_free(map, leaf, leaf_size(leaf->chunks));
}

/* Free the whole directory and every bytemap it names. */
void ovl_dir_free(Qcow2MetadataMap *map)
{
    if (map->flat) {
        flat_free(map);
    }
    if (map->root) {
        free_subtree(map, map->root, map->height);
        map->root = NULL;
        map->height = 0;
    }
    leaf_memo_reset(map);
}

/* ---- verification ------------------------------------------------------- */

/* The length marks of a list of n words are exactly what list_mark() writes. */
static void verify_marks(const uint32_t *p, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        unsigned want = 0;
        if (n < 15) {
            want = i ? 0 : n;
        } else if (i < 4) {
            want = i == 0 ? 15 : (n >> (4 * (i - 1))) & 15;
        }
        g_assert_cmpuint(frag_mark(p[i]), ==, want);
    }
    g_assert_cmpuint(list_len(p), ==, n);
}

static void verify_chunk(const Qcow2MetadataMap *map, OvlVerifyState *vs,
                         const OvlChunk *c, uint64_t first_window)
{
    const OvlPools *pools = chunk_pools(c);
    unsigned n = chunk_count(c), r = 0, groups_used = 0;
    unsigned i, rank, g;

    g_assert_true(!n == !c->mem);
    g_assert_true(c->slots_at == 0 || c->slots_at == sizeof(OvlPools));
    for (i = 0, rank = 0; i < CHUNK_WORDS; i++) {
        g_assert_cmpuint(c->rank[i], ==, rank);
        rank += popcount64(c->present[i]);
    }
    vs->mem += n ? chunk_mem_size(c, n) : 0;
    for (g = 0; g < CHUNK_GROUPS; g++) {
        const uint32_t *words = pools ? pools->words[g] : NULL;
        unsigned len = pools ? pools->len[g] : 0, off = 0;
        unsigned b;

        for (b = g * GROUP_WINDOWS; b < (g + 1) * GROUP_WINDOWS; b++) {
            const uint32_t *list = NULL, *rest;
            uint32_t slot;

            if (!chunk_has(c, b)) {
                continue;
            }
            g_assert_cmpuint(chunk_slot_index(c, b), ==, r);
            slot = chunk_slots(c)[r++];
            rest = owner_rest(map, &slot);
            if (rest) {
                /* lists sit back to back in window order, found by offset */
                unsigned plen;
                g_assert_cmpuint(slot_list_off(*rest), ==, off);
                g_assert_cmpuint(off, <, len);
                list = words + off;
                plen = pool_list_words(list);
                g_assert_cmpuint(plen, >=, 1);
                g_assert_cmpuint(off + plen, <=, len);
                if (!pool_is_compact(list)) {
                    verify_marks(list, plen);
                }
                off += plen;
            }
            ovl_verify_window(map, vs, first_window + b, slot, list);
        }
        g_assert_cmpuint(off, ==, len);            /* pools hold nothing else */
        g_assert_true(!len == !words);
        groups_used += len != 0;
        vs->mem += len * sizeof(uint32_t);
    }
    g_assert_cmpuint(r, ==, n);
    g_assert_true(!groups_used == !pools);  /* a pool table only while needed */
}

static void verify_subtree(const Qcow2MetadataMap *map, OvlVerifyState *vs,
                           const void *p, unsigned h, uint64_t prefix)
{
    const OvlLeaf *leaf = p;
    unsigned used = 0;
    unsigned ci;

    if (h) {
        const OvlNode *node = p;
        unsigned i;

        for (i = 0; i < NODE_FANOUT; i++) {
            if (node->child[i]) {
                used++;
                verify_subtree(map, vs, node->child[i], h - 1,
                               prefix << NODE_BITS | i);
            }
        }
        g_assert_cmpuint(used, ==, node->used);
        g_assert_cmpuint(used, >, 0);
        vs->mem += sizeof(*node);
        return;
    }
    g_assert_cmpuint(leaf->chunks, >=, 1);
    g_assert_cmpuint(leaf->chunks, <=, LEAF_CHUNKS);
    g_assert_cmpuint(chunk_count(&leaf->chunk[leaf->chunks - 1]), >, 0);
    for (ci = 0; ci < leaf->chunks; ci++) {
        used += chunk_count(&leaf->chunk[ci]) != 0;
        verify_chunk(map, vs, &leaf->chunk[ci],
                     prefix << LEAF_SHIFT | (uint64_t)ci << CHUNK_BITS);
    }
    g_assert_cmpuint(used, ==, leaf->used);
    g_assert_cmpuint(used, >, 0);
    vs->mem += leaf_size(leaf->chunks);
}

/*
 * The flat table (D): each entry is what the slot says, it exists only
 * where allowed and while one window in eight below flat_cap is present,
 * and fast_cap follows it and the high types.
 */
static void verify_flat(const Qcow2MetadataMap *map, OvlVerifyState *vs)
{
    uint64_t w;

    g_assert_true(!map->flat == !map->flat_cap);
    g_assert_true(map->flat_allowed || !map->flat_cap);
    g_assert_cmpuint(map->stats.windows * 8, >=, map->flat_cap);
    g_assert_cmpuint(map->fast_cap, ==, map->hi_count ? 0 : map->flat_cap);
    for (w = 0; w < map->flat_cap; w++) {
        OvlPos pos = ovl_window_find(map, w);

        g_assert_cmpuint(map->flat[w], ==,
                         flat_entry(map, pos.chunk, pos.bit, pos.slot));
    }
    vs->mem += map->flat_cap * sizeof(uint64_t);
}

/* Directory invariants (D); every window is handed to ovl_verify_window(). */
void ovl_dir_verify(const Qcow2MetadataMap *map, OvlVerifyState *vs)
{
    verify_flat(map, vs);
    if (map->root) {
        verify_subtree(map, vs, map->root, map->height, 0);
    } else {
        g_assert_cmpuint(map->height, ==, 0);
    }
    /* the leaf memo (Q), if set, names the leaf the tree has at that index */
    if (map->leaf_memo_index != NO_LEAF) {
        g_assert_true(map->leaf_memo == leaf_find(map, map->leaf_memo_index));
        g_assert_cmpuint(map->leaf_memo_chunks, ==,
                         map->leaf_memo ? map->leaf_memo->chunks : 0);
    } else {
        g_assert_null(map->leaf_memo);
    }
}
