/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * qcow2 metadata overlap map
 * ==========================
 *
 * Before qguard writes to the image file it asks "does [offset, offset +
 * bytes) touch metadata of a type I am not writing?".  QEMU answers by
 * walking the L1 and refcount tables, O(image size) per write.  This map
 * keeps, for every host cluster, the set of QCOW2_OL_* type bits stored
 * there, so that the answer costs a lookup and a short search of one
 * window's fragments: O(1) in practice, O(log fragments) at worst.
 * The design is the one of Max Reitz's 2014 series "qcow2: Add new overlap
 * check functions" (windows, fragment lists, a cache of bytemaps), made
 * sparse so that memory follows the metadata and not the size of the host
 * file, and with checks answered from the form at rest.
 *
 * This comment is the one description of the map's data structure and of
 * every invariant it keeps (F, C, Q, D, H, M below); docs/overlap-map.md
 * explains the choices and measures them, and refers here.
 *
 * FILES
 *
 *   qcow2-overlap.c      this comment; windows, fragments, bytemaps, the
 *                        cache, the growth end and claims, the public
 *                        operations that change the map
 *   qcow2-overlap-query.c  the checks: the growth end, the claims, the
 *                        flat table and the tree answering, each form
 *                        read where it rests
 *   qcow2-overlap-dir.c  the directory: radix tree, chunks, slot arrays,
 *                        the flat table, bytemap handles, list pools,
 *                        storing a window at rest
 *   qcow2-overlap-verify.c  the map read without changing it: the
 *                        introspection and the verifier of every invariant
 *   qcow2-overlap-int.h  the types, the bit-level accessors of fragments
 *                        and slots, and the inline lookups they share
 *
 * GLOSSARY
 *
 *   window      4096 consecutive host clusters; window w holds clusters
 *               [w * 4096, (w + 1) * 4096).  Everything below is per
 *               window except the directory and the high types.
 *   mask, types the OR of QCOW2_OL_* bits stored for a cluster.  Bits 0..7
 *               ("low types") live in the windows; bit 8 and up ("high
 *               types") in a separate array (HIGH TYPES).
 *   fragment    a run of 1..256 clusters of one window with one non-empty
 *               mask, packed in 32 bits (BIT LAYOUTS).
 *   canonical   the one fragment list that F1..F3 allow for a window's
 *   list        content; every form below stands for it.
 *   slot        the 32 bits the directory keeps per window with metadata;
 *               its top two bits say the window's form (BIT LAYOUTS).
 *   form        how a window is held right now: inline, pair, list,
 *               compact list or bytemap (WINDOWS below).
 *   compact     a window's content as one 16-bit entry per cluster and
 *   list        type behind an index of 64 bytes (BIT LAYOUTS): the form
 *               at rest of a window of many lone L2 tables and refcount
 *               blocks.  It lives in the pool like a list, and the code
 *               calls both "lists" where it does not tell them apart.
 *   at rest,    the form a window has when no bytemap of it exists: the
 *   "rest"      smallest of inline, pair, list and compact list that holds
 *               its canonical list (F4).  It is a pure function of the
 *               content.  In the
 *               code a variable or field named 'rest' holds such a form's
 *               slot, in practice a list slot: OvlBytemap.rest is the list
 *               slot a clean bytemap kept (0 once dirty), ovl_rest_store()
 *               and ovl_rest_drop() create and free the form at rest.
 *   tail        a list's last fragment, kept in the list slot instead of
 *               the pool when it is one cluster of one type.
 *   pool        the array holding the lists of 16 neighbouring windows
 *               back to back (THE DIRECTORY).
 *   bytemap     4096 bytes, one mask per cluster: the form being edited.
 *               Cached: in the LRU.  Permanent: outside the LRU because
 *               its list would exceed 1024 fragments (C4).  Clean: equal to
 *               the list it was expanded from, which is kept (C2).  Dirty:
 *               changed since; its list is gone.
 *   handle      a bytemap slot's 30-bit index into the map's table of
 *               bytemap pointers.
 *   the memos   three one-entry caches of a lookup, each a pure shortcut:
 *               edit memo   map->memo / memo_window: the bytemap of the last
 *                           edit, so that the next edit of that window
 *                           skips the lookup and the LRU update (C5);
 *               leaf memo   map->leaf_memo / leaf_memo_index: the last leaf
 *                           a check looked up (or NULL: none there), so
 *                           checks near each other skip the tree walk;
 *               check memo  map->check_window / check_slot / check_data /
 *                           check_list_len: the last window with metadata
 *                           a check found and what it found there, so a
 *                           sequential writer's next check skips the
 *                           lookup altogether.
 *               Checks set the leaf and check memos; edits set the edit
 *               memo, and an edit that loads the check memo's window into
 *               the cache points the check memo at the new bytemap.  A
 *               check memo of a list or slot goes with every edit that
 *               changes a slot or a list, and every flush clears it; a
 *               check memo of a cached window stays for as long as the
 *               window keeps that bytemap, since checks read its bytes
 *               where they are.  Creating, resizing or freeing a leaf
 *               clears the leaf memo.
 *   flat table  map->flat: for each window below flat_cap, what a check
 *               needs of it in one 8-byte word (FLAT_* in
 *               qcow2-overlap-int.h), so that a check of a small-cluster
 *               image skips the tree (THE DIRECTORY).
 *   meta_end    one past the last cluster any enter touched: nothing at
 *               or after it holds a type.
 *   claims      what the last enter past meta_end showed: 'fresh', its
 *               own range, holds only its types; 'gap', the clusters it
 *               skipped, holds none.  An enter that breaks a claim empties
 *               it; a remove cannot break one.
 *
 * WINDOWS
 *
 * A window with no metadata has no storage at all; every question about it
 * is answered "no" after one bit test.  A window with metadata is in
 * exactly one of these forms, all of which name the same per-cluster
 * content:
 *
 *   inline     one fragment, stored in the window's slot
 *   pair       two fragments of one cluster and one type each, in the slot
 *   list       a sorted array of 2..1024 fragments in the pool, its last
 *              fragment possibly in the slot (the tail)
 *   compact    up to 255 sorted 16-bit entries, one per cluster and type,
 *              behind an index of the entries before each 64 clusters, in
 *              the pool; the slot is a list slot without a tail
 *   bytemap    the slot holds a handle; cached in the LRU or permanent
 *
 * At rest (no bytemap) a window is inline if its canonical list has one
 * fragment, pair if it has two of one cluster and one type bit each,
 * compact if its entries number at most 255 and take fewer pool words
 * than its list would, and a list otherwise.  With 512-byte clusters an
 * L2 table lies every 65 clusters: such a window of about 80 lone
 * structures costs 232 bytes compact against 316 as a list, and a check
 * of one of its clusters reads an index byte and a step or two.
 *
 * A bytemap exists only because an edit expanded the list (an inline or
 * pair window is edited in its slot and never becomes a bytemap), and it
 * goes back to its form at rest (possibly inline or pair: the edit may
 * have thinned it out) exactly when it leaves the LRU: evicted as the
 * least recently edited when another window needs the cache, or by
 * qcow2_metadata_map_flush().  A clean one just drops the bytemap and keeps
 * its list; a dirty one is converted, unless the result would exceed 1024
 * fragments, in which case it becomes permanent (C4) until its next change
 * puts it back into the LRU.  A bytemap whose last cluster is cleared
 * deletes the window at once (C3).
 *
 * BIT LAYOUTS
 *
 * Fields from the most significant bit down, each with its width in bits.
 *
 *   fragment  types (8) | len - 1 (8) | mark (4) | start (12)
 *
 * 'start' is relative to the window (< 4096), which leaves the four mark
 * bits spare.  A canonical fragment has mark 0.  In a pool the marks of a
 * list's first words carry its length (list_len()): word 0 holds it if it
 * is below 15, else 15 and the length is spread over words 1..3, low
 * nibble first.  Word 0 of a list therefore never has mark 0, which is
 * how a compact list's word 0 differs:
 *
 *   compact list  word 0: 0 (16) | mark 0 (4) | entries (12)
 *                 words 1..16: index byte k = entries starting before
 *                 cluster 64 * k
 *                 then the entries, 0 (1) | start (12) | type bit (3),
 *                 sorted, then 0xffff up to the end of the last word
 *
 * A flat table entry is 0 for an empty window, else one of (low 2 bits)
 * 1: the slot in the high 32 bits (inline, pair, or a list the check
 * looks up), 2: the address of a compact list, 3: the address of a
 * bytemap's bytes.
 *
 * A slot's top two bits (the tag) say the window's form:
 *
 *   tag  form     the other 30 bits
 *   00   inline   0 (2) | types (8) | len - 1 (8) | start (12)
 *   01   pair     bit1 (3) | start1 (12) | bit0 (3) | start0 (12)
 *   10   list     tbit (3) | tail start (12) | T (1) | pool offset (14)
 *   11   bytemap  handle (30)
 *
 * 'bit0', 'bit1' and 'tbit' are a type's bit number (0..7), not a mask: a
 * pair fragment and a tail are one cluster of one type, which is what an L2
 * table or a refcount block is.  A pair's first fragment starts before its
 * second.  A pair's second fragment and a list's tail use the same bits.
 * T says the list has a tail; without one, bits 29..14 are zero.  The pool
 * offset is the list's first word in its pool, in words.  Code reads and
 * builds slots only through the accessors in qcow2-overlap-int.h
 * (slot_inline_*, slot_pair_*, slot_list_*, slot_handle).
 *
 * CHECKS
 *
 * A check reads whatever form the window is in and changes no form, no cache
 * entry, not the LRU order and not the edit memo; only the leaf and check
 * memos and the list_queries counter (Q).  Three answers come before any
 * lookup and its frame: a range at or after meta_end holds nothing (that
 * is where a growing image puts new clusters, so where most data of a
 * sequential writer goes); a range inside a claim holds nothing outside
 * the claim's types (a structure written after it was entered, data
 * written to clusters reserved before a refcount block); and a range in
 * the cached window the check memo names is read from its bytes (cache
 * flushes, table after table).  Then, where the flat table covers the
 * window, one load names it, and one cluster of a compact list or bytemap
 * is answered without a frame: the random writes of a small-cluster
 * image, whose every window holds L2 tables.  Inline and pair slots are
 * two comparisons each.  A compact list is an index byte, the entries of
 * the bucket before the range, and those inside it.  A list is answered
 * in place: find the last fragment starting at or before the range (F1
 * makes starts and ends both sorted), then OR it if it reaches into the
 * range, the fragments that start inside the range, and the tail kept in
 * the slot.  The search starts where an even
 * spread would put the range (L2 tables and refcount blocks are spread
 * evenly), probes three fragments either way and falls back to a binary
 * search: O(1 + hits) for real images, O(log n + hits) at worst.  A cached
 * or permanent bytemap is a word-wise OR of the range.  Expanding a list to
 * answer one question would cost 4 KiB of writes and an eviction to learn
 * what a few reads already say, and random writes into an image with small
 * clusters would pay that on nearly every check.
 *
 * THE CACHE
 *
 * Edits (enter, remove) of a list window expand it into a bytemap, O(4096),
 * kept in an LRU of at most N bytemaps (default 16), because the next edit
 * usually hits the same window and a sorted array is expensive to edit in
 * place.  Inline and pair windows are edited in their slot.  The LRU orders
 * windows by their last edit; checks do not reorder it.  list_to_bytemap
 * therefore counts expansions for edits only; list_queries counts checks
 * answered from a list.
 *
 * THE DIRECTORY
 *
 * Window w's slot lives in a sparse radix tree.  256 windows form a
 * chunk: a 256-bit presence bitmap, one rank byte per 64-bit word (the
 * present windows of the words before it) and one allocation holding the
 * chunk's pool table, if any, then a packed array with one slot per present
 * window, in window order.  A slot is found with one popcount (index =
 * rank byte + rank in the word) and nothing read outside the chunk's 48
 * bytes but the slot itself; an empty window inside a populated chunk costs
 * one bit and a present one four bytes.  Up to 16 chunks form a leaf,
 * allocated only up to its last chunk in use, so that a host file of a few
 * hundred windows pays for one chunk and not sixteen; interior
 * nodes have 64 children and the tree is only as high as the largest
 * window index needs (at most 4 levels: one cluster at 2^55 with 512-byte
 * clusters costs 4 nodes and a leaf, under 3 KiB).  Chunks, leaves and
 * nodes are freed as soon as they empty.  Checks and removes over a range
 * skip absent subtrees, so a check of the whole 2^56-byte space costs
 * O(present windows + tree nodes), not O(2^35 windows).
 *
 * The flat table sits beside the tree: flat[w] for every window w below
 * flat_cap, kept equal to what the tree says at every slot store and
 * every pool move (ovl_flat_sync(), pool_splice()).  It costs 8 bytes per
 * window, so it exists only where that is at most a 32nd of the 2014
 * estimate's share of a window (512-byte clusters, where a window's share
 * is 320 bytes and its compact list about 232), and only while at least
 * one window in eight below flat_cap has metadata: it grows to cover a
 * new window with a quarter to spare when a quarter would be present,
 * and goes when fewer than an eighth are.  Windows past it use the tree.
 *
 * Lists live in pools: each chunk has, once one of its windows needs a list,
 * one pool per 16 windows holding their lists back to back in window order.
 * Slot (offset) and pool (length marks) together find a list and its length
 * without looking at the neighbours, and a list window costs 4 bytes per
 * fragment with its slot, nothing else: no pointer, no header, no malloc
 * block.  A clean cached window keeps its list in the pool and its list
 * slot in the bytemap.  Resizing a list moves the lists after it in the
 * pool and the offsets in their slots.
 *
 * HIGH TYPES (the bitmap directory)
 *
 * A byte holds eight type bits; QCOW2_OL_BITMAP_DIRECTORY is the ninth.
 * Widening every cluster to 16 bits would double every bytemap and break
 * the 32-bit fragment, for a structure of which an image has one.  Types 8
 * and up are therefore kept apart, in a sorted array of [start, end)
 * cluster ranges on the map (one entry for a normal image), so checking
 * them is a binary search, O(1) in practice, that needs neither a window
 * nor a conversion, and a check that ignores them skips it.
 *
 * INVARIANTS
 *
 * All of these hold whenever no public call is running, i.e. after every
 * enter, remove, check and flush.  qcow2_metadata_map_verify() asserts each
 * one (its asserts carry these names); the randomized unit tests call it
 * every 4096 operations and after each scenario.
 *
 * Lists: every list, and the canonical list a slot or bytemap stands for:
 *
 *   F1  fragments are sorted by start, do not overlap and stay inside the
 *       window;
 *   F2  no fragment has an empty mask (free clusters are not stored);
 *   F3  maximal: two touching fragments with equal masks only exist if the
 *       first is 256 clusters long (equal runs are cut greedily from the left
 *       into 256-cluster pieces);
 *   F4  smallest form: a list or compact list is used only when the
 *       fragments fit neither inline nor pair; compact exactly when its
 *       entries number at most 255 and take fewer pool words than the
 *       list (ovl_frags_compact()); a list is never longer than 1024
 *       fragments, and its last fragment is the tail exactly when it is
 *       one cluster of one type.  A compact list's words are exactly what
 *       storing its canonical list writes.
 *
 * F1..F4 make the form at rest a pure function of the window's content, so
 * list -> bytemap -> list round trips never drift.
 *
 * Cache:
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
 *       the LRU, so a window that thins out returns to a list.  The LRU holds
 *       at most N bytemaps, each once, and no permanent one;
 *   C5  the edit memo is the LRU head or permanent, so a repeated edit needs
 *       no LRU update.  Checks neither use nor set it.
 *
 * Checks:
 *
 *   Q   a check changes no form, list or slot, neither the LRU nor the edit
 *       memo, and allocates nothing (the unit tests assert this through the
 *       counters, the memory figures and the forms).  The leaf memo names
 *       the leaf the tree has at that index (or none) and its chunk count,
 *       and the check memo
 *       holds exactly what a fresh lookup of its window returns.  No
 *       cluster at or after meta_end holds a type (removes leave it where
 *       it is; only enters move it, up).
 *
 * Directory:
 *
 *   D   a presence bit is set exactly when the window has a slot, and each
 *       rank byte counts the presence bits before its word.  Each pool holds
 *       exactly the lists of its list windows and of its clean cached
 *       windows, in window order, and nothing else.  Each list's offset in
 *       its slot is the sum of the lengths before it; the length marks in
 *       its first words are exactly the ones list_mark() writes and every
 *       other mark is zero (a compact list's word 0 has none).  A chunk
 *       has a pool table exactly while one of
 *       its pools is non-empty.  Chunks, leaves and nodes exist only while
 *       they contain a window, and their 'used' counts are exact.  A leaf's
 *       last chunk contains a window.  Every
 *       used handle belongs to exactly one window, every other one is on the
 *       free chain.  The flat table exists only where allowed, covers
 *       at most eight windows per window present, and each of its entries
 *       is what the window's slot says; fast_cap is flat_cap without high
 *       types, else 0.
 *
 * High types:
 *
 *   H   the high-type ranges are sorted, disjoint, non-empty, hold only
 *       types 8 and up, and are maximal: touching ranges differ in mask.
 *
 * Memory:
 *
 *   M   mem_current equals a fresh recount of every allocation, mem_peak >=
 *       mem_current, and the windows, fragments and cached_bytemaps
 *       counters equal a fresh count.
 *
 * COMPLEXITY (c = clusters in the range, w = windows it touches, n =
 * fragments in a window's list)
 *
 *   check          where the flat table covers the window: one load,
 *                  then O(1) for an empty, inline or pair window, O(1 +
 *                  entries in the bucket + hits) for a compact list, O(c)
 *                  for a bytemap; a list takes the lookup below.  Else,
 *                  per window: the check memo compare (a hit skips the
 *                  lookup), the leaf memo compare (else a tree walk of at
 *                  most 4 levels), one bit test and, if the window is
 *                  present, one popcount; then O(1) for an empty, inline
 *                  or pair window, O(1 + hits) for an evenly spread list
 *                  (O(log n + hits) at worst), O(c) word-wise for a
 *                  bytemap.  Never allocates, converts or evicts.  A range
 *                  over several windows visits only the present ones.
 *   enter/remove   per window: the same lookup, plus for a list window not
 *                  in the cache one expansion, O(4096), and possibly one
 *                  eviction: O(1) if clean, a write-back if dirty.  Plus
 *                  O(256) per window that appears or disappears (its
 *                  chunk's slot array is reshaped); inline and pair windows
 *                  are edited in the slot in O(1 + c/256).  A remove visits
 *                  only windows that exist.
 *   write-back     a conversion, O(4096), plus moving the lists of at most
 *                  15 neighbours in the pool and their offsets:
 *                  O(fragments of 16 windows), a few hundred bytes for
 *                  real images, 64 KiB at worst.
 *   high types     O(log h + h) per enter/remove, O(log h) per check, for
 *                  h ranges (h = 1 for a normal image).
 *
 * An edit that hits the cache allocates nothing and updates at most four
 * LRU pointers.
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
 *   + 68 bytes plus 2 per entry and an end entry, rounded up to 4, for a
 *     compact window
 *   + 8 bytes per window below flat_cap (512-byte clusters only)
 *   + 8 bytes per leaf (4096 windows) with any metadata, plus 48 per chunk
 *     (256 windows) up to its last one in use; 520 per interior node
 *   + 160 bytes per chunk with a list window (its pool table)
 *   + 336 bytes for the map, and 8 bytes per cached or permanent bytemap
 *     in the handle table (grown by a quarter, freed when empty).
 *
 * The 2014 estimate charges 4 bytes per metadata cluster, 40 * IS / CS^2
 * bytes for an image of IS bytes with CS-byte clusters.  Here a lone L2
 * table or refcount block costs one inline slot (4 bytes), an adjacent pair
 * of them one pair slot, a list window 4 bytes per fragment and a compact
 * one about 2.9, so the map at rest stays within the estimate or a few
 * percent above it: 24% below it for 2 GiB with 512 B clusters (flat
 * table included) and 2% below for 1 TiB and 1 PiB with 64 KiB clusters;
 * 5% above for 8 GiB with 4 KiB clusters, where a budget of 20 KiB must
 * also carry the fixed cost of leaves, pool tables and the map (1 KiB).
 * docs/overlap-map.md has the worked numbers.
 */

#include "qcow2-overlap-int.h"

/* ---- runs --------------------------------------------------------------- */

static void run_emit(OvlRun *out, size_t *k, uint64_t a, uint64_t b,
                     unsigned mask)
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
    size_t i;

    for (i = 0; i < n; i++) {
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
unsigned ovl_runs_to_frags(const OvlRun *runs, size_t n, uint32_t *frags)
{
    unsigned k = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        uint64_t a;

        for (a = runs[i].start; a < runs[i].end; a += FRAG_MAX_LEN) {
            frags[k++] =
                frag_make(a, MIN(FRAG_MAX_LEN, runs[i].end - a), runs[i].mask);
        }
    }
    return k;
}

/* ---- bytemaps ----------------------------------------------------------- */

/* Expand a list into 'bytes'; returns the number of non-zero clusters. */
static unsigned frags_expand(const uint32_t *f, unsigned n, uint8_t *bytes)
{
    unsigned pop = 0;
    unsigned i;

    memset(bytes, 0, WINDOW_CLUSTERS);
    for (i = 0; i < n; i++) {
        unsigned len = frag_len(f[i]);
        if (len == 1) {
            /* most metadata is one cluster */
            bytes[frag_start(f[i])] = frag_types(f[i]);
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
unsigned ovl_bytemap_to_frags(const uint8_t *b, uint32_t *frags,
                              unsigned max)
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

/* ---- lists at rest ------------------------------------------------------ */

/* Expand a compact list into 'bytes'; returns the non-zero clusters. */
static unsigned compact_expand(const uint32_t *p, uint8_t *bytes)
{
    const OvlEntry *ent = compact_entries(p);
    unsigned n = compact_len(p), pop = 0;
    unsigned i;

    memset(bytes, 0, WINDOW_CLUSTERS);
    for (i = 0; i < n; i++) {
        uint8_t *b = &bytes[ent[i] >> 3];

        pop += !*b;
        *b |= 1u << (ent[i] & 7);
    }
    return pop;
}

/*
 * Expand the list or compact list with list slot 'rest' whose pool words
 * are at 'pool'.
 */
unsigned ovl_list_expand(const uint32_t *pool, uint32_t rest, uint8_t *bytes)
{
    unsigned pop;

    if (pool_is_compact(pool)) {
        return compact_expand(pool, bytes);
    }
    pop = frags_expand(pool, list_len(pool), bytes);
    if (slot_list_tail(rest)) {
        bytes[slot_tail_start(rest)] = slot_tail_types(rest);
        pop++;
    }
    return pop;
}

/* ---- the cache ---------------------------------------------------------- */

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
    OvlPos pos = ovl_window_find(map, e->window);

    lru_unlink(map, e);
    if (map->memo == e) {
        memo_set(map, NULL);
    }
    if (e->rest) {
        *pos.slot = e->rest;
        ovl_flat_sync(map, &pos);
    } else {
        uint32_t frags[LIST_MAX_FRAGS + 1], slot;
        unsigned n = ovl_bytemap_to_frags(e->bytes, frags, LIST_MAX_FRAGS);

        if (n > LIST_MAX_FRAGS) {
            e->permanent = true;
            map->permanent_count++;
            return false;
        }
        slot = ovl_rest_store(map, &pos, frags, n);     /* may move pos.slot */
        *pos.slot = slot;
        ovl_flat_sync(map, &pos);
        map->stats.bytemap_to_list++;
    }
    ovl_handle_free(map, e->handle);
    map->stats.bytemaps_freed++;
    map->stats.cached_bytemaps--;
    return true;
}

/*
 * Expand list window w into the cache for an edit, evicting the LRU tail if
 * full.
 */
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
    /* after the eviction: writing back may have moved this window's list */
    pos = ovl_window_find(map, w);
    e->rest = *pos.slot;
    e->population = ovl_list_expand(pool_list(pos.chunk, pos.bit, e->rest),
                                    e->rest, e->bytes);
    e->window = w;
    e->permanent = false;
    e->handle = ovl_handle_new(map, e);
    *pos.slot = slot_ref(SLOT_BYTEMAP, e->handle);
    ovl_flat_sync(map, &pos);
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
    ovl_handle_free(map, e->handle);
    ovl_window_delete(map, e->window);
    ovl_free(map, e, sizeof(*e));
    map->stats.bytemaps_freed++;
    map->stats.cached_bytemaps--;
}

/*
 * Returns true if only the bytes changed: the window keeps its slot, its
 * bytemap and its place in the cache, so a check memo of it stays valid.
 */
static bool bytemap_edit(Qcow2MetadataMap *map, OvlBytemap *e, unsigned s,
                         unsigned end, unsigned types, bool set)
{
    uint8_t *b = e->bytes;
    unsigned diff = 0, pop = e->population;

    if (set) {
        unsigned i;

        for (i = s; i < end; i++) {
            unsigned o = b[i];
            pop += !o;
            diff |= ~o & types;
            b[i] = o | types;
        }
    } else {
        unsigned i;

        for (i = s; i < end; i++) {
            unsigned o = b[i];
            pop -= o && !(o & ~types);
            diff |= o & types;
            b[i] = o & ~types;
        }
    }
    if (!diff) {
        return true;    /* nothing changed: a clean bytemap stays clean */
    }
    e->population = pop;
    if (!e->rest && pop && !e->permanent) {
        return true;
    }
    if (e->rest) {
        /* the list is stale now (C2): give its words back */
        OvlPos pos = ovl_window_find(map, e->window);
        ovl_rest_drop(map, &pos, e->rest);
        e->rest = 0;
    }
    if (!pop) {
        bytemap_drop(map, e);
        return false;
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
    return false;
}

/* ---- windows ------------------------------------------------------------ */

/* Edit an empty, inline or pair window in place (pos->slot NULL if empty). */
static void slot_edit(Qcow2MetadataMap *map, uint64_t w, OvlPos *pos,
                      unsigned s, unsigned e, unsigned types, bool set)
{
    OvlRun in[2] = { { 0 } }, out[4 * 2 + 1];
    /* at most 9 runs plus one fragment per 256 clusters of the window */
    uint32_t frags[4 * 2 + 1 + WINDOW_CLUSTERS / FRAG_MAX_LEN];
    size_t n = pos->slot ? ovl_slot_runs(*pos->slot, in) : 0;
    size_t k = runs_apply(in, n, s, e, types, set, out);
    uint32_t slot;
    unsigned nf;

    if (k == n) {
        size_t i;
        for (i = 0; i < n && in[i].start == out[i].start &&
                    in[i].end == out[i].end && in[i].mask == out[i].mask;
             i++) {
            /* compare */
        }
        if (i == n) {
            return;
        }
    }
    nf = ovl_runs_to_frags(out, k, frags);
    if (pos->slot) {
        map->stats.fragments -= n;
        if (!nf) {
            ovl_window_delete(map, w);
            return;
        }
    } else {
        /* an inline slot owning no pool words */
        *pos = ovl_window_insert(map, w, 0);
    }
    slot = ovl_rest_store(map, pos, frags, nf); /* may move pos->slot */
    *pos->slot = slot;
    ovl_flat_sync(map, pos);
}

/*
 * Edit clusters [s, e) of window w.  Returns true if the edit changed only
 * the bytes of the bytemap the edit memo holds (see bytemap_edit()).
 */
static bool window_edit(Qcow2MetadataMap *map, uint64_t w, unsigned s,
                        unsigned e, unsigned types, bool set)
{
    OvlBytemap *bm;
    OvlPos pos;

    if (w == map->memo_window) {
        return bytemap_edit(map, map->memo, s, e, types, set);
    }
    pos = ovl_window_find(map, w);
    if (!pos.slot) {
        if (set) {
            slot_edit(map, w, &pos, s, e, types, set);
        }
        return false;
    }
    switch (slot_tag(*pos.slot)) {
    case SLOT_INLINE:
    case SLOT_PAIR:
        slot_edit(map, w, &pos, s, e, types, set);
        return false;
    case SLOT_LIST:
        bm = cache_load(map, w);
        if (w == map->check_window) {
            /* a check's next question is likely about this window again */
            map->check_slot = slot_ref(SLOT_BYTEMAP, bm->handle);
            map->check_data = bm;
        }
        break;
    default:
        bm = map->handles[slot_handle(*pos.slot)];
        cache_touch(map, bm);
        break;
    }
    bytemap_edit(map, bm, s, e, types, set);
    return false;
}

/*
 * After an edit that moved what a check memoized: a slot, a list's words,
 * or the bytemap that holds a window.
 */
static inline void check_memo_reset(Qcow2MetadataMap *map)
{
    map->check_window = NO_WINDOW;
}

/*
 * After an edit that may have moved what the check memo names.  A memo of
 * a cached window reads the bytes where they are, so it stays true for as
 * long as the window keeps that bytemap: its handle still leads to it and
 * it still belongs to the window.  Anything else the edit may have moved
 * (slots, pool words), so the memo goes.
 */
static void check_memo_after_edit(Qcow2MetadataMap *map)
{
    if (map->check_window != NO_WINDOW &&
        slot_tag(map->check_slot) == SLOT_BYTEMAP) {
        uint32_t h = slot_handle(map->check_slot);

        if (h < map->handles_next && map->handles[h] == map->check_data &&
            ((const OvlBytemap *)map->check_data)->window ==
                map->check_window) {
            return;
        }
    }
    check_memo_reset(map);
}

/* ---- high types --------------------------------------------------------- */

unsigned ovl_hi_check(const Qcow2MetadataMap *map, uint64_t s, uint64_t e)
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

static void hi_apply(Qcow2MetadataMap *map, uint64_t s, uint64_t e,
                     unsigned types, bool set)
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
    ovl_flat_fast_update(map);
}

/* ---- public interface --------------------------------------------------- */

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

Qcow2MetadataMap *qcow2_metadata_map_new(unsigned cluster_bits,
                                         unsigned cache_windows)
{
    Qcow2MetadataMap *map;

    assert(cluster_bits >= 9 && cluster_bits <= 21);
    map = g_new0(Qcow2MetadataMap, 1);
    map->cluster_bits = cluster_bits;
    map->cache_max =
        cache_windows ? cache_windows : QCOW2_OVERLAP_DEFAULT_CACHE_WINDOWS;
    map->memo_window = NO_WINDOW;
    map->leaf_memo_index = NO_LEAF;
    map->check_window = NO_WINDOW;
    map->claim_lo = UINT64_MAX;
    map->free_handle = NO_HANDLE;
    /*
     * The flat table costs 8 bytes per window.  The 2014 estimate allows
     * 40 * 4096 / CS bytes per window of host file; the table is kept
     * where it costs at most a 32nd of that, which is 512-byte clusters:
     * there each window holds about 80 L2 tables and refcount blocks, and
     * random writes look up a different window nearly every time.
     */
    map->flat_allowed =
        32 * sizeof(uint64_t) <= (40u * WINDOW_CLUSTERS >> cluster_bits);
#ifdef HAVE_CHECK_POPCNT
    map->hw_popcount = __builtin_cpu_supports("popcnt");
#endif
    mem_add(map, sizeof(*map));
    return map;
}

void qcow2_metadata_map_free(Qcow2MetadataMap *map)
{
    if (!map) {
        return;
    }
    ovl_dir_free(map);
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
static void range_to_clusters(const Qcow2MetadataMap *map, uint64_t offset,
                              uint64_t bytes, uint64_t *first, uint64_t *end)
{
    assert(offset <= QCOW2_OVERLAP_MAX_BYTES &&
           bytes <= QCOW2_OVERLAP_MAX_BYTES - offset);
    *first = offset >> map->cluster_bits;
    *end = ((offset + bytes - 1) >> map->cluster_bits) + 1;
}

/* ---- the growth end and its claims --------------------------------------- */

static inline bool claim_meets(const OvlClaim *cl, uint64_t first,
                               uint64_t end)
{
    return cl->lo < end && first < cl->hi;
}

/*
 * Keep meta_end and the claims true after @types were entered in clusters
 * [first, end).  An image allocates a structure, then writes it: the
 * write of a fresh L2 table or batch of them finds it in 'fresh'.  It
 * reserves data clusters, then a refcount block past them, then writes
 * the data: those writes find it in 'gap'.
 */
static void claims_enter(Qcow2MetadataMap *map, uint64_t first, uint64_t end,
                         unsigned types)
{
    if (first >= map->meta_end) {
        if (first > map->meta_end) {
            map->gap = (OvlClaim){ map->meta_end, first, 0 };
        }
        map->fresh = (OvlClaim){ first, end, types };
        map->meta_end = end;
    } else {
        if (claim_meets(&map->gap, first, end)) {
            map->gap = (OvlClaim){ 0, 0, 0 };
        }
        if (claim_meets(&map->fresh, first, end) &&
            (types & ~map->fresh.types)) {
            map->fresh = (OvlClaim){ 0, 0, 0 };
        }
        map->meta_end = MAX(map->meta_end, end);
    }
    map->claim_lo = MIN(map->gap.lo < map->gap.hi ? map->gap.lo : UINT64_MAX,
                        map->fresh.lo < map->fresh.hi ? map->fresh.lo
                                                      : UINT64_MAX);
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
    if (set) {
        claims_enter(map, first, end, types);
    }
    if (types & LOW_TYPES) {
        uint64_t w = first >> WINDOW_BITS, last_w = (end - 1) >> WINDOW_BITS;

        /* enter visits every window; remove only those that exist */
        for (w = set ? w : ovl_window_next(map, w); w <= last_w;
             w = set ? w + 1 : ovl_window_next(map, w + 1)) {
            uint64_t base = w << WINDOW_BITS;
            if (!window_edit(map, w, first > base ? first - base : 0,
                             MIN(end - base, WINDOW_CLUSTERS),
                             types & LOW_TYPES, set)) {
                check_memo_after_edit(map);
            }
        }
    }
    if (types & ~LOW_TYPES) {
        check_memo_reset(map);
        hi_apply(map, first, end, types & ~LOW_TYPES, set);
    }
}

void qcow2_metadata_map_enter(Qcow2MetadataMap *map, uint64_t offset,
                              uint64_t bytes, unsigned types)
{
    map->stats.inserts++;
    range_apply(map, offset, bytes, types, true);
}

void qcow2_metadata_map_remove(Qcow2MetadataMap *map, uint64_t offset,
                               uint64_t bytes, unsigned types)
{
    map->stats.removes++;
    range_apply(map, offset, bytes, types, false);
}

void qcow2_metadata_map_flush(Qcow2MetadataMap *map)
{
    check_memo_reset(map);
    while (map->lru_tail) {
        OvlBytemap *e = map->lru_tail;
        if (cache_evict(map, e)) {
            ovl_free(map, e, sizeof(*e));
        }
    }
}

void qcow2_metadata_map_get_stats(const Qcow2MetadataMap *map,
                                  Qcow2MetadataMapStats *stats)
{
    *stats = map->stats;
}

void qcow2_metadata_map_reset_counters(Qcow2MetadataMap *map)
{
    map->stats.list_to_bytemap = 0;
    map->stats.bytemap_to_list = 0;
    map->stats.bytemaps_freed = 0;
    map->stats.inserts = map->stats.removes = map->stats.queries = 0;
    map->stats.list_queries = 0;
    map->stats.mem_peak = map->stats.mem_current;
}
