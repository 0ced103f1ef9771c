/* SPDX-License-Identifier: MIT */
/* Copyright (c) 2026 The qguard authors */

/*
 * Metadata overlap map: which host clusters of a qcow2 image hold which
 * kinds of metadata, so that a write can be refused before it lands on the
 * image's own tables.  The data structure, its bit layouts, every
 * invariant and the costs are described in one place, the comment at the
 * top of qcow2-overlap.c; docs/overlap-map.md explains the choices and
 * measures them.
 */

#ifndef QCOW2_OVERLAP_H
#define QCOW2_OVERLAP_H

#include <stdint.h>

/* Metadata types, in QEMU's order so masks mean the same thing in both. */
typedef enum QCow2MetadataOverlapBitnr {
    QCOW2_OL_MAIN_HEADER_BITNR      = 0,
    QCOW2_OL_ACTIVE_L1_BITNR        = 1,
    QCOW2_OL_ACTIVE_L2_BITNR        = 2,
    QCOW2_OL_REFCOUNT_TABLE_BITNR   = 3,
    QCOW2_OL_REFCOUNT_BLOCK_BITNR   = 4,
    QCOW2_OL_SNAPSHOT_TABLE_BITNR   = 5,
    QCOW2_OL_INACTIVE_L1_BITNR      = 6,
    QCOW2_OL_INACTIVE_L2_BITNR      = 7,
    QCOW2_OL_BITMAP_DIRECTORY_BITNR = 8,

    QCOW2_OL_MAX_BITNR              = 9,
} QCow2MetadataOverlapBitnr;

typedef enum QCow2MetadataOverlap {
    QCOW2_OL_NONE             = 0,
    QCOW2_OL_MAIN_HEADER      = 1 << QCOW2_OL_MAIN_HEADER_BITNR,
    QCOW2_OL_ACTIVE_L1        = 1 << QCOW2_OL_ACTIVE_L1_BITNR,
    QCOW2_OL_ACTIVE_L2        = 1 << QCOW2_OL_ACTIVE_L2_BITNR,
    QCOW2_OL_REFCOUNT_TABLE   = 1 << QCOW2_OL_REFCOUNT_TABLE_BITNR,
    QCOW2_OL_REFCOUNT_BLOCK   = 1 << QCOW2_OL_REFCOUNT_BLOCK_BITNR,
    QCOW2_OL_SNAPSHOT_TABLE   = 1 << QCOW2_OL_SNAPSHOT_TABLE_BITNR,
    QCOW2_OL_INACTIVE_L1      = 1 << QCOW2_OL_INACTIVE_L1_BITNR,
    QCOW2_OL_INACTIVE_L2      = 1 << QCOW2_OL_INACTIVE_L2_BITNR,
    QCOW2_OL_BITMAP_DIRECTORY = 1 << QCOW2_OL_BITMAP_DIRECTORY_BITNR,

    QCOW2_OL_ALL              = (1 << QCOW2_OL_MAX_BITNR) - 1,
} QCow2MetadataOverlap;

/* QEMU's name for type 'bitnr' ("qcow2_header", ...); NULL if out of range. */
const char *qcow2_overlap_type_name(int bitnr);

/* Clusters per window; exposed for tests and the benchmark. */
#define QCOW2_OVERLAP_WINDOW_CLUSTERS 4096
/* Bytemaps kept expanded when the caller passes cache_windows == 0. */
#define QCOW2_OVERLAP_DEFAULT_CACHE_WINDOWS 16
/* Host offsets handled: offset + bytes must not exceed this. */
#define QCOW2_OVERLAP_MAX_BYTES (UINT64_C(1) << 56)

typedef struct Qcow2MetadataMap Qcow2MetadataMap;

typedef struct Qcow2MetadataMapStats {
    uint64_t list_to_bytemap;    /* conversions list -> bytemap */
    uint64_t bytemap_to_list;    /* conversions bytemap -> list */
    /* bytemaps that left the cache (written back or dropped) */
    uint64_t bytemaps_freed;
    uint64_t inserts, removes, queries;  /* calls of enter / remove / check */
    uint64_t mem_current, mem_peak;      /* bytes */
    uint64_t windows;            /* non-empty windows */
    /* fragments held in lists (optional but useful) */
    uint64_t fragments;
    uint64_t cached_bytemaps;    /* bytemaps currently expanded */
    /* checks answered from a list in place (no conversion) */
    uint64_t list_queries;
} Qcow2MetadataMapStats;

/*
 * cluster_bits: 9 (512 B) .. 21 (2 MiB).  cache_windows: how many bytemaps
 * the LRU keeps expanded, >= 1; 0 selects QCOW2_OVERLAP_DEFAULT_CACHE_WINDOWS.
 */
Qcow2MetadataMap *qcow2_metadata_map_new(unsigned cluster_bits,
                                         unsigned cache_windows);
void qcow2_metadata_map_free(Qcow2MetadataMap *map);

/*
 * Byte ranges are rounded outward to whole clusters; bytes == 0 does
 * nothing.  offset + bytes must not exceed QCOW2_OVERLAP_MAX_BYTES and
 * 'types' must be a subset of QCOW2_OL_ALL.  enter ORs the type bits into
 * every cluster of the range, remove clears them (clearing absent bits is a
 * no-op).
 */
void qcow2_metadata_map_enter(Qcow2MetadataMap *map, uint64_t offset,
                              uint64_t bytes, unsigned types);
void qcow2_metadata_map_remove(Qcow2MetadataMap *map, uint64_t offset,
                               uint64_t bytes, unsigned types);
/*
 * returns the OR of the types present in any cluster of the range, minus
 * 'ignore'
 */
unsigned qcow2_metadata_map_check(Qcow2MetadataMap *map, uint64_t offset,
                                  uint64_t bytes, unsigned ignore);
/*
 * The same, asked the way a write path asks it: which of the types in
 * @want the range holds.  Its arguments sit where qcow2_overlap_hit()
 * already has them, so that the write path reaches it with a jump.
 */
unsigned qcow2_metadata_map_check_types(Qcow2MetadataMap *map, unsigned want,
                                        uint64_t offset, uint64_t bytes);

/*
 * Write back and free every bytemap in the LRU cache, e.g. when the image
 * goes idle or to measure the map at rest.  Permanent bytemaps stay.
 */
void qcow2_metadata_map_flush(Qcow2MetadataMap *map);

void qcow2_metadata_map_get_stats(const Qcow2MetadataMap *map,
                                  Qcow2MetadataMapStats *stats);
/*
 * zero the op/conversion counters and restart mem_peak from mem_current;
 * keep contents
 */
void qcow2_metadata_map_reset_counters(Qcow2MetadataMap *map);

/*
 * Introspection for tests and debugging.  None of these changes the map,
 * its cache or its counters, and none belongs on the I/O path.
 */

/* Abort (g_assert) unless every invariant listed in qcow2-overlap.c holds
 * (F1-F4, C1-C5, Q, D, H, M: the memory counter included). */
void qcow2_metadata_map_verify(const Qcow2MetadataMap *map);

/*
 * Exact set of type bits stored for one cluster
 * (index = offset >> cluster_bits).
 */
unsigned qcow2_metadata_map_get(const Qcow2MetadataMap *map,
                                uint64_t cluster_index);

typedef enum Qcow2OverlapWindowForm {
    QCOW2_OVERLAP_WINDOW_EMPTY,     /* no metadata: no storage at all */
    QCOW2_OVERLAP_WINDOW_INLINE,    /* one fragment inside the window's slot */
    /* two one-cluster, one-type fragments in the slot */
    QCOW2_OVERLAP_WINDOW_PAIR,
    QCOW2_OVERLAP_WINDOW_LIST,      /* fragment list at rest */
    /* one 16-bit entry per cluster and type at rest, with an index */
    QCOW2_OVERLAP_WINDOW_COMPACT,
    QCOW2_OVERLAP_WINDOW_CACHED,    /* bytemap in the LRU cache */
    /* bytemap kept outside the LRU (> 1024 fragments) */
    QCOW2_OVERLAP_WINDOW_PERMANENT,
} Qcow2OverlapWindowForm;

Qcow2OverlapWindowForm
qcow2_metadata_map_window_form(const Qcow2MetadataMap *map,
                               uint64_t window_index);

typedef struct Qcow2OverlapFragment {
    uint16_t start;     /* first cluster, relative to the window */
    uint16_t len;       /* 1..256 clusters */
    uint8_t types;      /* type bits 0..7 */
} Qcow2OverlapFragment;

/*
 * The canonical fragment list of a window, i.e. what it is (or would be)
 * stored as at rest.  Writes at most 'max' fragments and returns how many
 * there are in total (up to QCOW2_OVERLAP_WINDOW_CLUSTERS).
 */
unsigned qcow2_metadata_map_window_fragments(const Qcow2MetadataMap *map,
                                             uint64_t window_index,
                                             Qcow2OverlapFragment *frags,
                                             unsigned max);

#endif /* QCOW2_OVERLAP_H */
