/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * Checks of the metadata overlap map: the question every write asks,
 * "does [offset, offset + bytes) hold a type I am not writing?", answered
 * from whatever form each window is in without changing it (invariant Q
 * at the top of qcow2-overlap.c, which describes the design).  The growth
 * end, the claims and the flat table answer first, the tree after them;
 * lists, compact lists, slots and bytemaps are read where they rest.
 * Nothing here allocates, converts or evicts: only the leaf and check
 * memos and the counters change.
 */

#include "qcow2-overlap-int.h"

/* ---- bytemaps ----------------------------------------------------------- */

/* 16 bytes as one value: plain SSE2 / NEON registers, no intrinsics. */
typedef uint8_t OvlBytes16 __attribute__((vector_size(16)));

/*
 * OR of bytes[s, e): the check of a window held as a bytemap.  A data
 * write of 64 KiB at 512 B clusters asks about 128 bytes, so whole
 * vectors, the last one overlapping the one before if need be.
 */
static inline unsigned bytemap_or(const uint8_t *b, unsigned s, unsigned e)
{
    OvlBytes16 acc = { 0 }, v;
    const uint8_t *p, *last;
    uint64_t half[2], w;

    if (e - s < 16) {
        if (e - s < 8) {
            w = 0;
            while (s < e) {
                w |= b[s++];
            }
            return w;
        }
        memcpy(&half[0], b + s, 8);
        memcpy(&half[1], b + e - 8, 8);
    } else {
        last = b + e - 16;
        for (p = b + s; p < last; p += 16) {
            memcpy(&v, p, 16);
            acc |= v;
        }
        memcpy(&v, last, 16);
        acc |= v;
        memcpy(half, &acc, 16);
    }
    w = half[0] | half[1];
    w |= w >> 32;
    w |= w >> 16;
    w |= w >> 8;
    return w & 0xff;
}

/* ---- lists at rest ------------------------------------------------------ */

/*
 * The number of fragments of p[0..n) that start at or before s (F1: they
 * are sorted), searched outward from the guess g: a few probes around it,
 * then a binary search of what is left, so a good guess costs O(1) and a
 * bad one O(log n).
 */
static inline unsigned list_rank(const uint32_t *p, unsigned n, unsigned s,
                                 unsigned g)
{
    unsigned lo = 0, hi = n;       /* p[0..lo) start <= s, p[hi..n) start > s */
    const uint32_t *base;
    unsigned len;

    if (g && frag_start(p[g - 1]) > s) {
        unsigned k;

        hi = g - 1;
        for (k = 0; k < 3 && hi; k++, hi--) {
            if (frag_start(p[hi - 1]) <= s) {
                return hi;
            }
        }
    } else {
        for (lo = g; lo < g + 3 && lo < n; lo++) {
            if (frag_start(p[lo]) > s) {
                return lo;
            }
        }
    }
    if (lo == hi) {
        return lo;
    }
    /* branch-free lower bound over p[lo..hi) */
    base = p + lo;
    for (len = hi - lo; len > 1;) {
        unsigned half = len / 2;
        base = frag_start(base[half]) <= s ? base + half : base;
        len -= half;
    }
    return base - p + (frag_start(*base) <= s);
}

/*
 * The types in clusters [s, e) of a list, read in place: the check of a
 * list window that is not cached.  O(log n + hits), and O(1 + hits) when
 * the fragments are spread evenly, as L2 tables and refcount blocks are:
 * the search starts where a uniform spread would put s.  Out of line so
 * that the lookup it follows keeps its registers.
 */
__attribute__((noinline))
unsigned ovl_list_or(const uint32_t *p, unsigned n, uint32_t rest, unsigned s,
                     unsigned e)
{
    unsigned i = list_rank(p, n, s, (s * n) >> WINDOW_BITS), m = 0;

    /* the one before may reach into the range; F1: no earlier one does */
    if (i && frag_end(p[i - 1]) > s) {
        m = frag_types(p[i - 1]);
    }
    for (; i < n && frag_start(p[i]) < e; i++) {
        m |= frag_types(p[i]);
    }
    /* the tail comes after every fragment in the pool */
    if (slot_list_tail(rest) && slot_tail_start(rest) - s < e - s) {
        m |= slot_tail_types(rest);
    }
    return m;
}

/* Every type of a list: a check that covers the whole window. */
static __attribute__((noinline))
unsigned list_or_all(const uint32_t *p, unsigned n, uint32_t rest)
{
    uint32_t acc = slot_list_tail(rest) ? slot_tail_types(rest) << 24 : 0;
    unsigned i;

    for (i = 0; i < n; i++) {
        acc |= p[i];
    }
    return acc >> 24;
}

/* ---- one window --------------------------------------------------------- */

/*
 * The answers of the forms that need more than a few instructions, out of
 * line so that the lookup before them keeps few registers and ends in a
 * tail call.
 */
/*
 * One cluster, the usual question of random writes: the last fragment
 * starting at or before s covers it or nothing does.  Walk at most three
 * steps from the guess, as list_rank() does, before giving up on the
 * spread.
 */
static __attribute__((noinline))
unsigned list_check_one(const uint32_t *p, unsigned n, uint32_t rest,
                        unsigned s, unsigned want)
{
    unsigned g = (s * n) >> WINDOW_BITS, k, m = 0;
    uint32_t f = p[g];

    if (frag_start(f) > s) {
        for (k = 0;; k++) {
            if (!g) {
                goto tail;
            }
            f = p[--g];
            if (frag_start(f) <= s) {
                break;
            }
            if (k == 2) {
                return ovl_list_or(p, n, rest, s, s + 1) & want;
            }
        }
    } else {
        for (k = 0; g + 1 < n && frag_start(p[g + 1]) <= s; k++) {
            if (k == 2) {
                return ovl_list_or(p, n, rest, s, s + 1) & want;
            }
            f = p[++g];
        }
    }
    m = frag_end(f) > s ? frag_types(f) : 0;
tail:
    if (slot_list_tail(rest) && slot_tail_start(rest) == s) {
        m |= slot_tail_types(rest);
    }
    return m & want;
}

static __attribute__((noinline))
unsigned bytemap_check(const OvlBytemap *b, unsigned s, unsigned e,
                       unsigned want)
{
    return bytemap_or(b->bytes, s, e) & want;
}

/* The types in clusters [s, e) of an inline or pair slot. */
static inline unsigned slot_types_in(uint32_t slot, unsigned s, unsigned e)
{
    unsigned start;

    if (slot_tag(slot) == SLOT_INLINE) {
        /* the usual slot at 64 KiB clusters: a lone L2 table or refblock */
        start = slot_inline_start(slot);
        return start < e && s < start + slot_inline_len(slot) ?
               slot_inline_types(slot) : 0;
    }
    return (slot_pair_start(slot, 0) - s < e - s ?
            slot_pair_types(slot, 0) : 0) |
           (slot_pair_start(slot, 1) - s < e - s ?
            slot_pair_types(slot, 1) : 0);
}

/* The types of @want in clusters [s, e) of a window with this slot. */
static inline __attribute__((always_inline))
unsigned slot_check(Qcow2MetadataMap *map, uint32_t slot, const void *data,
                    unsigned s, unsigned e, unsigned want)
{
    switch (slot_tag(slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        return slot_types_in(slot, s, e) & want;
    case SLOT_LIST:
        map->stats.list_queries++;
        if (!map->check_list_len) {
            return compact_or(data, s, e) & want;
        }
        if (e - s == 1) {
            return list_check_one(data, map->check_list_len, slot, s, want);
        }
        if (e - s == WINDOW_CLUSTERS) {
            return list_or_all(data, map->check_list_len, slot) & want;
        }
        return ovl_list_or(data, map->check_list_len, slot, s, e) & want;
    default:
        if (e - s == 1) {
            return ((const OvlBytemap *)data)->bytes[s] & want;
        }
        return bytemap_check(data, s, e, want);
    }
}

/*
 * The types of @want in clusters [s, e) of window w: the hot path of every
 * check.  It reads the window in whatever form it is and changes nothing
 * but the memos and the list_queries counter.  An empty window costs the
 * memo compares and one bit test; the leaf memo lets checks near the last
 * one skip the tree, and the check memo lets another check of the same
 * window (a sequential writer) skip the lookup.  @hw (a constant wherever
 * this is inlined) says the code is compiled for POPCNT.
 */
static inline __attribute__((always_inline))
unsigned window_check_hw(Qcow2MetadataMap *map, uint64_t w, unsigned s,
                         unsigned e, unsigned want, bool hw)
{
    const OvlChunk *c;
    const void *data;
    uint32_t slot;
    unsigned b;

    if (w == map->check_window) {
        return slot_check(map, map->check_slot, map->check_data, s, e, want);
    }
    if (G_UNLIKELY(w >> LEAF_SHIFT != map->leaf_memo_index)) {
        map->leaf_memo = leaf_find(map, w >> LEAF_SHIFT);
        map->leaf_memo_index = w >> LEAF_SHIFT;
        map->leaf_memo_chunks = map->leaf_memo ? map->leaf_memo->chunks : 0;
    }
    /* also the test for an absent leaf, which has no chunks */
    if (((w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)) >= map->leaf_memo_chunks) {
        return 0;
    }
    c = &map->leaf_memo->chunk[(w >> CHUNK_BITS) & (LEAF_CHUNKS - 1)];
    b = w & (CHUNK_WINDOWS - 1);
    if (!chunk_has(c, b)) {
        return 0;
    }
    slot = chunk_slots(c)[chunk_slot_index_hw(c, b, hw)];
    data = NULL;
    if (slot_tag(slot) == SLOT_LIST) {
        data = pool_list(c, b, slot);
        map->check_list_len = pool_is_compact(data) ? 0 : list_len(data);
    } else if (slot_tag(slot) == SLOT_BYTEMAP) {
        data = map->handles[slot_handle(slot)];
    }
    map->check_window = w;
    map->check_slot = slot;
    map->check_data = data;
    return slot_check(map, slot, data, s, e, want);
}

static unsigned window_check(Qcow2MetadataMap *map, uint64_t w, unsigned s,
                             unsigned e)
{
    return window_check_hw(map, w, s, e, LOW_TYPES, false);
}

/* ---- the check ---------------------------------------------------------- */

/* Clusters [first, last] lie in a claim with none of the types wanted. */
static inline bool claims_answer(const Qcow2MetadataMap *map, uint64_t first,
                                 uint64_t last, unsigned want)
{
    return (first >= map->gap.lo && last < map->gap.hi) ||
           (first >= map->fresh.lo && last < map->fresh.hi &&
            !(map->fresh.types & want));
}

/*
 * A check of clusters [first, end) that spans windows, or that needs the
 * high types.
 */
static __attribute__((noinline))
unsigned check_range(Qcow2MetadataMap *map, uint64_t first, uint64_t end,
                     unsigned want)
{
    unsigned found = 0;

    if (want & LOW_TYPES) {
        uint64_t w = first >> WINDOW_BITS, last_w = (end - 1) >> WINDOW_BITS;

        if (w == last_w) {
            found = window_check(map, w, first & (WINDOW_CLUSTERS - 1),
                                 ((end - 1) & (WINDOW_CLUSTERS - 1)) + 1);
        } else {
            for (w = ovl_window_next(map, w); w <= last_w;
                 w = ovl_window_next(map, w + 1)) {
                uint64_t base = w << WINDOW_BITS;
                found |= window_check(map, w, first > base ? first - base : 0,
                                      MIN(end - base, WINDOW_CLUSTERS));
            }
        }
    }
    if ((want & ~LOW_TYPES) && map->hi_count) {
        found |= ovl_hi_check(map, first, end);
    }
    return found & want;
}

/*
 * Clusters [first, last] past the growth end and its claims: the lookup.
 * @hw (a constant wherever this is inlined) says the code is compiled for
 * POPCNT.
 */
static inline __attribute__((always_inline))
unsigned check_hw(Qcow2MetadataMap *map, uint64_t first, uint64_t last,
                  unsigned want, bool hw)
{
    if (G_UNLIKELY((first ^ last) >> WINDOW_BITS || map->hi_count)) {
        return check_range(map, first, last + 1, want);
    }
    return window_check_hw(map, first >> WINDOW_BITS,
                           first & (WINDOW_CLUSTERS - 1),
                           (last & (WINDOW_CLUSTERS - 1)) + 1,
                           want & LOW_TYPES, hw);
}

static __attribute__((noinline))
unsigned check_sw(Qcow2MetadataMap *map, uint64_t first, uint64_t last,
                  unsigned want)
{
    return check_hw(map, first, last, want, false);
}

#ifdef HAVE_CHECK_POPCNT
/*
 * Built for POPCNT and chosen at run time: the rank of a slot is one
 * instruction instead of a dozen, and the default build stays baseline.
 */
static __attribute__((noinline, target("popcnt")))
unsigned check_popcnt(Qcow2MetadataMap *map, uint64_t first, uint64_t last,
                      unsigned want)
{
    return check_hw(map, first, last, want, true);
}
#endif

/* The lookup, in the copy this CPU can run; inlined into a tail call. */
static inline __attribute__((always_inline))
unsigned check_lookup(Qcow2MetadataMap *map, uint64_t first, uint64_t last,
                      unsigned want)
{
#ifdef HAVE_CHECK_POPCNT
    if (map->hw_popcount) {
        return check_popcnt(map, first, last, want);
    }
#endif
    return check_sw(map, first, last, want);
}

/*
 * An empty range overlaps nothing; any other range here is a bug, and
 * without assertions it is refused as overlapping everything asked.
 */
static __attribute__((noinline, cold))
unsigned check_empty(uint64_t offset, uint64_t bytes, unsigned want)
{
    assert(!bytes || (offset <= QCOW2_OVERLAP_MAX_BYTES &&
                      bytes <= QCOW2_OVERLAP_MAX_BYTES - offset));
    return bytes ? want : 0;
}

/*
 * A range of window w (s < e) through its flat table entry d, when that
 * is more than one load: a range of a compact list or bytemap, an inline
 * or pair slot.  A list takes the lookup.
 */
static __attribute__((noinline))
unsigned flat_check(Qcow2MetadataMap *map, uint64_t d, uint64_t first,
                    uint64_t last, unsigned want)
{
    unsigned s = first & (WINDOW_CLUSTERS - 1), e = s + (last - first) + 1;

    switch (d & FLAT_TAG_MASK) {
    case FLAT_COMPACT:
        map->stats.list_queries++;
        return compact_or((const uint32_t *)(uintptr_t)(d - FLAT_COMPACT),
                          s, e) & want;
    case FLAT_BYTES:
        return bytemap_or((const uint8_t *)(uintptr_t)(d - FLAT_BYTES), s,
                          e) & want;
    default:
        if (slot_tag(d >> 32) != SLOT_LIST) {
            return slot_types_in(d >> 32, s, e) & want;
        }
        return check_lookup(map, first, last, want);
    }
}

/*
 * The growth end and its claims answer before the lookup and its frame:
 * most writes of a growing image stop here.  Then, with small clusters,
 * the flat table names the window and one cluster of a compact list or
 * bytemap is answered here too: the random writes of an image whose
 * every window holds L2 tables.
 */
unsigned qcow2_metadata_map_check_types(Qcow2MetadataMap *map, unsigned want,
                                        uint64_t offset, uint64_t bytes)
{
    uint64_t end = offset + bytes - 1, first, last;

    map->stats.queries++;
    /*
     * bytes == 0, or a range that ends past MAX without wrapping around;
     * one that wraps starts past MAX, which the meta_end test catches.
     */
    if (G_UNLIKELY((end | (bytes - 1)) >= QCOW2_OVERLAP_MAX_BYTES)) {
        return check_empty(offset, bytes, want);
    }
    first = offset >> map->cluster_bits;
    if (first >= map->meta_end) {
        /* meta_end <= MAX >> cluster_bits: an offset past MAX ends here */
        assert(offset <= QCOW2_OVERLAP_MAX_BYTES);
        return 0;
    }
    last = end >> map->cluster_bits;
    if (G_UNLIKELY(first >= map->claim_lo) &&
        claims_answer(map, first, last, want)) {
        return 0;
    }
    if (first >> WINDOW_BITS < map->fast_cap) {
        uint64_t d = map->flat[first >> WINDOW_BITS];
        unsigned s = first & (WINDOW_CLUSTERS - 1);

        if (first == last) {
            switch (d & FLAT_TAG_MASK) {
            case 0:
                return 0;
            case FLAT_COMPACT:
                map->stats.list_queries++;
                return compact_or((const uint32_t *)(uintptr_t)
                                  (d - FLAT_COMPACT), s, s + 1) & want;
            case FLAT_BYTES:
                return ((const uint8_t *)(uintptr_t)(d - FLAT_BYTES))[s] &
                       want;
            }
        }
        if (!((first ^ last) >> WINDOW_BITS)) {
            return d ? flat_check(map, d, first, last, want) : 0;
        }
    }
    /*
     * The window the last check looked up, when it is cached or one
     * cluster of a list: the writes of a cache flush, table after table,
     * need no frame either.  These are the cases of slot_check() that
     * compile without one; calling slot_check() here would give this
     * function a frame, which costs workload 1 of make bench 7
     * instructions per check and workload 2 9.
     */
    if (first >> WINDOW_BITS == map->check_window && !map->hi_count) {
        if (slot_tag(map->check_slot) == SLOT_BYTEMAP) {
            const uint8_t *b = ((const OvlBytemap *)map->check_data)->bytes;

            if (first == last) {
                return b[first & (WINDOW_CLUSTERS - 1)] & want & LOW_TYPES;
            }
            if (last >> WINDOW_BITS == map->check_window) {
                return bytemap_check((const OvlBytemap *)map->check_data,
                                     first & (WINDOW_CLUSTERS - 1),
                                     (last & (WINDOW_CLUSTERS - 1)) + 1,
                                     want & LOW_TYPES);
            }
        } else if (slot_tag(map->check_slot) == SLOT_LIST && first == last) {
            /* the same flush through a window at rest (a cache of one) */
            map->stats.list_queries++;
            if (!map->check_list_len) {
                return compact_or(map->check_data,
                                  first & (WINDOW_CLUSTERS - 1),
                                  (first & (WINDOW_CLUSTERS - 1)) + 1) &
                       want & LOW_TYPES;
            }
            return list_check_one(map->check_data, map->check_list_len,
                                  map->check_slot,
                                  first & (WINDOW_CLUSTERS - 1),
                                  want & LOW_TYPES);
        }
    }
    return check_lookup(map, first, last, want);
}

unsigned qcow2_metadata_map_check(Qcow2MetadataMap *map, uint64_t offset,
                                  uint64_t bytes, unsigned ignore)
{
    return qcow2_metadata_map_check_types(map, QCOW2_OL_ALL & ~ignore, offset,
                                          bytes);
}
