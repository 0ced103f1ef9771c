/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * The metadata overlap map read without being changed: what tests, tools
 * and benchmarks ask of it (the types of one cluster, a window's form and
 * fragments), and qcow2_metadata_map_verify(), which asserts every
 * invariant named at the top of qcow2-overlap.c.  Nothing here sets a
 * memo or a counter.
 */

#include "qcow2-overlap-int.h"

/* ---- introspection ------------------------------------------------------ */

/* Canonical fragments of window w without touching the cache; 0 if empty. */
static unsigned window_frags(const Qcow2MetadataMap *map, uint64_t w,
                             uint32_t *frags)
{
    OvlPos pos = ovl_window_find(map, w);
    const OvlBytemap *bm;
    OvlRun runs[2];
    unsigned n;

    if (!pos.slot) {
        return 0;
    }
    switch (slot_tag(*pos.slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        n = ovl_slot_runs(*pos.slot, runs);
        return ovl_runs_to_frags(runs, n, frags);
    case SLOT_LIST:
        return ovl_list_copy(pool_list(pos.chunk, pos.bit, *pos.slot),
                             *pos.slot, frags);
    default:
        bm = map->handles[slot_handle(*pos.slot)];
        return ovl_bytemap_to_frags(bm->bytes, frags, WINDOW_CLUSTERS);
    }
}

unsigned qcow2_metadata_map_get(const Qcow2MetadataMap *map,
                                uint64_t cluster_index)
{
    uint64_t w = cluster_index >> WINDOW_BITS;
    unsigned c = cluster_index & (WINDOW_CLUSTERS - 1);
    unsigned m =
        map->hi_count ? ovl_hi_check(map, cluster_index, cluster_index + 1) : 0;
    OvlPos pos = ovl_window_find(map, w);
    const uint32_t *data;
    OvlRun runs[2];
    unsigned n, i;

    if (!pos.slot) {
        return m;
    }
    switch (slot_tag(*pos.slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        n = ovl_slot_runs(*pos.slot, runs);
        for (i = 0; i < n; i++) {
            if (c >= runs[i].start && c < runs[i].end) {
                m |= runs[i].mask;
            }
        }
        return m;
    case SLOT_LIST:
        data = pool_list(pos.chunk, pos.bit, *pos.slot);
        if (pool_is_compact(data)) {
            return m | compact_or(data, c, c + 1);
        }
        return m | ovl_list_or(data, list_len(data), *pos.slot, c, c + 1);
    default:
        return m |
               ((OvlBytemap *)map->handles[slot_handle(*pos.slot)])->bytes[c];
    }
}

Qcow2OverlapWindowForm
qcow2_metadata_map_window_form(const Qcow2MetadataMap *map,
                               uint64_t window_index)
{
    OvlPos pos = ovl_window_find(map, window_index);
    uint32_t *slotp = pos.slot;

    if (!slotp) {
        return QCOW2_OVERLAP_WINDOW_EMPTY;
    }
    switch (slot_tag(*slotp)) {
    case SLOT_INLINE:
        return QCOW2_OVERLAP_WINDOW_INLINE;
    case SLOT_PAIR:
        return QCOW2_OVERLAP_WINDOW_PAIR;
    case SLOT_LIST:
        return pool_is_compact(pool_list(pos.chunk, pos.bit, *slotp)) ?
               QCOW2_OVERLAP_WINDOW_COMPACT : QCOW2_OVERLAP_WINDOW_LIST;
    default:
        return ((OvlBytemap *)map->handles[slot_handle(*slotp)])->permanent ?
               QCOW2_OVERLAP_WINDOW_PERMANENT : QCOW2_OVERLAP_WINDOW_CACHED;
    }
}

unsigned qcow2_metadata_map_window_fragments(const Qcow2MetadataMap *map,
                                             uint64_t window_index,
                                             Qcow2OverlapFragment *out,
                                             unsigned max)
{
    uint32_t frags[WINDOW_CLUSTERS];
    unsigned n = window_frags(map, window_index, frags);
    unsigned i;

    for (i = 0; i < n && i < max; i++) {
        out[i] = (Qcow2OverlapFragment){ frag_start(frags[i]),
                                         frag_len(frags[i]),
                                         frag_types(frags[i]) };
    }
    return n;
}

/* ---- verification ------------------------------------------------------- */

static void verify_frags(const uint32_t *f, unsigned n)
{
    unsigned prev_end = 0, prev_types = 0, prev_len = 0;
    unsigned i;

    for (i = 0; i < n; i++) {
        unsigned s = frag_start(f[i]), len = frag_len(f[i]),
                 t = frag_types(f[i]);
        g_assert_cmpuint(frag_mark(f[i]), ==, 0);               /* canonical */
        g_assert_cmpuint(s + len, <=, WINDOW_CLUSTERS);         /* F1 */
        g_assert_cmpuint(t, !=, 0);                             /* F2 */
        if (i) {
            g_assert_cmpuint(prev_end, <=, s);                  /* F1 */
            if (prev_end == s && prev_types == t) {
                g_assert_cmpuint(prev_len, ==, FRAG_MAX_LEN);   /* F3 */
            }
        }
        prev_end = s + len;
        prev_types = t;
        prev_len = len;
    }
}

/*
 * A compact list (F4): its head, index, entries and end are exactly what
 * storing its canonical fragments writes.
 */
static unsigned verify_compact(const uint32_t *pool, uint32_t *frags)
{
    const OvlEntry *ent = compact_entries(pool);
    const uint8_t *index = compact_index(pool);
    unsigned k = compact_len(pool), n, entries, i;

    g_assert_cmpuint(pool[0] >> FRAG_MARK_SHIFT, ==, 0);
    g_assert_cmpuint(k, <=, COMPACT_MAX_ENTRIES);
    for (i = 0; i < k; i++) {
        g_assert_cmpuint(ent[i], <, 1u << 15);
        if (i) {
            g_assert_cmpuint(ent[i - 1], <, ent[i]);        /* sorted, once */
        }
    }
    for (; i < (compact_words(k) - COMPACT_HEAD_WORDS) * 2; i++) {
        g_assert_cmpuint(ent[i], ==, COMPACT_END);
    }
    for (i = 0; i < COMPACT_BUCKETS; i++) {
        unsigned before = 0;

        while (before < k &&
               ent[before] >> 3 < i << COMPACT_BUCKET_BITS) {
            before++;
        }
        g_assert_cmpuint(index[i], ==, before);
    }
    n = ovl_compact_to_frags(pool, frags);
    g_assert_true(ovl_frags_compact(frags, n, &entries));       /* F4 */
    g_assert_cmpuint(entries, ==, k);
    return n;
}

/*
 * A list or compact list at rest (F1..F4) with list slot 'slot' and pool
 * words at 'pool'.
 */
static void verify_list(OvlVerifyState *vs, const uint32_t *pool, uint32_t slot)
{
    uint32_t frags[LIST_MAX_FRAGS + 1], tmp, last;
    unsigned n, entries;

    g_assert_cmpuint(slot_tag(slot), ==, SLOT_LIST);
    if (!slot_list_tail(slot)) {
        g_assert_cmpuint(slot >> LIST_OFF_BITS & 0xffff, ==, 0);
    }
    if (pool_is_compact(pool)) {
        g_assert_false(slot_list_tail(slot));
        n = verify_compact(pool, frags);
        g_assert_cmpuint(n, >=, 2);
        verify_frags(frags, n);
        g_assert_false(ovl_frags_fit_slot(frags, n, &tmp));     /* F4 */
        vs->fragments += n;
        return;
    }
    g_assert_cmpuint(list_len(pool), >=, 1);
    g_assert_cmpuint(list_len(pool), <=, LIST_MAX_FRAGS);
    n = ovl_list_copy(pool, slot, frags);
    g_assert_cmpuint(n, >=, 2);
    g_assert_cmpuint(n, <=, LIST_MAX_FRAGS);                    /* F4 */
    verify_frags(frags, n);
    g_assert_false(ovl_frags_fit_slot(frags, n, &tmp));         /* F4 */
    g_assert_false(ovl_frags_compact(frags, n, &entries));      /* F4 */
    last = frags[n - 1];
    g_assert_cmpint(slot_list_tail(slot), ==,                   /* F4 */
                    frag_len(last) == 1 && one_bit(frag_types(last)));
    vs->fragments += n;
}

/*
 * One window, called by the directory walk; 'list' points at its words in
 * the pool.
 */
void ovl_verify_window(const Qcow2MetadataMap *map, OvlVerifyState *vs,
                       uint64_t w, uint32_t slot, const uint32_t *list)
{
    uint32_t frags[2], tmp;
    OvlRun runs[2];
    unsigned n;

    vs->windows++;
    switch (slot_tag(slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        g_assert_null(list);
        n = ovl_slot_runs(slot, runs);
        g_assert_cmpuint(ovl_runs_to_frags(runs, n, frags), ==, n);
        verify_frags(frags, n);
        g_assert_true(ovl_frags_fit_slot(frags, n, &tmp));
        g_assert_cmpuint(tmp, ==, slot);
        vs->fragments += n;
        break;
    case SLOT_LIST:
        g_assert_nonnull(list);
        verify_list(vs, list, slot);
        break;
    default: {
        uint32_t h = slot_handle(slot);
        const OvlBytemap *e;
        unsigned pop = 0;
        unsigned i;

        g_assert_cmpuint(h, <, map->handles_next);
        g_assert_false((uintptr_t)map->handles[h] & 1);
        g_assert_false(vs->handle_seen[h]);
        vs->handle_seen[h] = 1;
        vs->handles++;
        e = map->handles[h];
        g_assert_cmpuint(e->window, ==, w);
        g_assert_cmpuint(e->handle, ==, h);
        for (i = 0; i < WINDOW_CLUSTERS; i++) {
            pop += e->bytes[i] != 0;
        }
        g_assert_cmpuint(pop, ==, e->population);               /* C3 */
        g_assert_cmpuint(pop, >, 0);
        g_assert_true(!e->rest == !list);
        if (e->rest) {                                          /* C2 */
            uint8_t *copy = g_malloc(WINDOW_CLUSTERS);
            g_assert_false(e->permanent);
            verify_list(vs, list, e->rest);
            g_assert_cmpuint(ovl_list_expand(list, e->rest, copy), ==, pop);
            g_assert_cmpint(memcmp(copy, e->bytes, WINDOW_CLUSTERS), ==, 0);
            g_free(copy);
        }
        vs->mem += sizeof(*e);
        vs->bytemaps++;
        break;
    }
    }
}

/*
 * No cluster of [lo, hi) has a type outside @types.  Read through the
 * introspection, which leaves the memos and counters alone.
 */
static void verify_range_holds(const Qcow2MetadataMap *map, uint64_t lo,
                               uint64_t hi, unsigned types)
{
    uint32_t frags[WINDOW_CLUSTERS];
    uint64_t w;

    if (lo >= hi) {
        return;
    }
    for (w = ovl_window_next(map, lo >> WINDOW_BITS);
         w <= (hi - 1) >> WINDOW_BITS; w = ovl_window_next(map, w + 1)) {
        unsigned n = window_frags(map, w, frags);
        unsigned i;

        for (i = 0; i < n; i++) {
            uint64_t s = (w << WINDOW_BITS) + frag_start(frags[i]);

            if (s < hi && lo < s + frag_len(frags[i])) {
                g_assert_cmpuint(frag_types(frags[i]) & ~types, ==, 0);
            }
        }
    }
    if (map->hi_count) {
        g_assert_cmpuint(ovl_hi_check(map, lo, hi) & ~types, ==, 0);
    }
}

static void verify_claim(const Qcow2MetadataMap *map, const OvlClaim *cl)
{
    if (cl->lo < cl->hi) {
        g_assert_cmpuint(cl->hi, <=, map->meta_end);
        verify_range_holds(map, cl->lo, cl->hi, cl->types);
    }
}

void qcow2_metadata_map_verify(const Qcow2MetadataMap *map)
{
    OvlVerifyState vs = { .mem = sizeof(*map) };
    unsigned lru = 0, nfree = 0;
    uint32_t h;
    const OvlBytemap *e;
    size_t i;

    vs.handle_seen = g_malloc0(map->handles_next + 1);
    ovl_dir_verify(map, &vs);

    /* handles (D): each used one owned by one window, the rest free */
    g_assert_cmpuint(vs.handles, ==, map->handles_used);
    for (h = map->free_handle; h != NO_HANDLE; nfree++) {
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
    for (e = map->lru_head; e; e = e->next, lru++) {
        const uint32_t *slotp = ovl_window_find(map, e->window).slot;
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

    /* the check memo (Q), if set, says what a fresh lookup says */
    if (map->check_window != NO_WINDOW) {
        OvlPos pos = ovl_window_find(map, map->check_window);
        uint32_t slot;
        const void *data = NULL;

        g_assert_nonnull(pos.slot);
        slot = *pos.slot;
        if (slot_tag(slot) == SLOT_LIST) {
            data = pool_list(pos.chunk, pos.bit, slot);
        } else if (slot_tag(slot) == SLOT_BYTEMAP) {
            data = map->handles[slot_handle(slot)];
        }
        g_assert_cmpuint(map->check_slot, ==, slot);
        g_assert_true(map->check_data == data);
        if (slot_tag(slot) == SLOT_LIST) {
            g_assert_cmpuint(map->check_list_len, ==,
                             pool_is_compact(data) ? 0 : list_len(data));
        }
    }

    /*
     * Nothing at or after meta_end, nothing in the gap, nothing but its
     * types in 'fresh' (Q): checks there stop at a compare or two.
     */
    verify_range_holds(map, map->meta_end, UINT64_MAX, 0);
    verify_claim(map, &map->gap);
    verify_claim(map, &map->fresh);
    g_assert_cmpuint(map->claim_lo, ==,
                     MIN(map->gap.lo < map->gap.hi ? map->gap.lo : UINT64_MAX,
                         map->fresh.lo < map->fresh.hi ? map->fresh.lo
                                                       : UINT64_MAX));

    /* high types (H): sorted, disjoint, maximal */
    for (i = 0; i < map->hi_count; i++) {
        const OvlRun *r = &map->hi[i];
        g_assert_cmpuint(r->start, <, r->end);
        g_assert_cmpuint(r->mask, !=, 0);
        g_assert_cmpuint(r->mask & ~(unsigned)QCOW2_OL_ALL & ~LOW_TYPES, ==, 0);
        g_assert_cmpuint(r->mask & LOW_TYPES, ==, 0);
        if (i) {
            g_assert_cmpuint(map->hi[i - 1].end, <=, r->start);
            g_assert_true(map->hi[i - 1].end < r->start ||
                          map->hi[i - 1].mask != r->mask);
        }
    }
    g_assert_true(!map->hi_count == !map->hi);
    vs.mem += map->hi_count * sizeof(OvlRun);

    /* counters and memory (M) */
    g_assert_cmpuint(vs.windows, ==, map->stats.windows);
    g_assert_cmpuint(vs.fragments, ==, map->stats.fragments);
    g_assert_cmpuint(vs.bytemaps, ==, map->stats.cached_bytemaps);
    g_assert_cmpuint(vs.mem, ==, map->stats.mem_current);
    g_assert_cmpuint(map->stats.mem_current, <=, map->stats.mem_peak);
}
