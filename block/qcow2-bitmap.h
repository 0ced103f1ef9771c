/* SPDX-License-Identifier: MIT */
/*
 * qcow2 persistent dirty bitmaps: the state shared by the on-disk side
 * (qcow2-bitmap.c) and the operations (qcow2-bitmap-ops.c).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * docs/bitmaps.md describes the design: fields, invariants and the order
 * of the writes that store bitmaps.
 */
#ifndef QGUARD_QCOW2_BITMAP_H
#define QGUARD_QCOW2_BITMAP_H

#include "qcow2.h"

/* QEMU's limits (block/qcow2-bitmap.c and qcow2.h in QEMU 7.2). */
#define BME_MAX_TABLE_SIZE       0x8000000U
#define BME_MAX_PHYS_SIZE        0x20000000U
#define BME_MAX_GRANULARITY_BITS 31
#define BME_MIN_GRANULARITY_BITS 9
#define BME_MAX_NAME_SIZE        1023
#define QCOW2_MAX_BITMAPS        65535
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024 * QCOW2_MAX_BITMAPS)

/*
 * Bitmaps of one image held in memory at most (QEMU's own limit is 512 MiB
 * per bitmap, none in total): an image cannot make qguard allocate more by
 * naming the same data cluster from thousands of bitmaps.
 */
#define QCOW2_BITMAPS_MAX_MEMORY (UINT64_C(1) << 30)

#define BME_FLAG_IN_USE     (1U << 0)
#define BME_FLAG_AUTO       (1U << 1)
#define BME_RESERVED_FLAGS  0xfffffffcU
#define BME_TYPE_DIRTY_TRACKING 1
#define BME_HEADER_SIZE     24
#define BME_OFF_FLAGS       12

#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

#define BME_TABLE_ENTRY_RESERVED_MASK UINT64_C(0xff000000000001fe)
#define BME_TABLE_ENTRY_OFFSET_MASK   UINT64_C(0x00fffffffffffe00)
#define BME_TABLE_ENTRY_ALL_ONES      UINT64_C(1)

typedef struct Qcow2Bitmap {
    char *name;
    uint8_t granularity_bits;
    bool enabled;           /* the auto flag as it will be stored */
    bool inconsistent;      /* in_use on disk at open: never loaded */

    /* The directory entry on disk; table_offset 0: not stored yet. */
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t disk_flags;

    /* Loaded state (bits == NULL: not loaded). */
    uint64_t *table;        /* on-disk table entries, host order */
    uint64_t *bits;         /* granule k is bit k % 64 of word k / 64 */
    uint64_t bits_len;      /* bytes allocated for bits */
    uint64_t nb_bits;       /* granules covering the disk */
    uint32_t nb_clusters;   /* data clusters (table entries) for the disk */
    uint64_t *changed;      /* one bit per data cluster that differs */
    bool table_changed;     /* the table must be rewritten (size, new) */
} Qcow2Bitmap;

struct Qcow2BitmapState {
    GPtrArray *list;        /* Qcow2Bitmap *, directory order */
    GPtrArray *dropped;     /* removed bitmaps whose clusters are on disk */
    uint8_t *disk_dir;      /* the directory as on disk */
    uint64_t disk_dir_size;
    char *error;            /* the directory is unusable (read-only open) */
    bool read_write;        /* enabled bitmaps are in_use on disk */
    bool resized;           /* every bitmap is in_use on disk */
    uint64_t loaded_bytes;  /* bits held in memory, all bitmaps */
};

/* qcow2-bitmap.c */
int qcow2_bitmap_load(BDRVQcow2State *s, Qcow2Bitmap *bm, GError **errp);
void qcow2_bitmap_free(Qcow2Bitmap *bm);
uint64_t qcow2_bitmap_words_per_cluster(const BDRVQcow2State *s);
/* Granules and data clusters a bitmap needs for a disk of @size bytes. */
uint64_t qcow2_bitmap_nb_bits(uint64_t size, int granularity_bits);
uint64_t qcow2_bitmap_nb_clusters(const BDRVQcow2State *s, uint64_t size,
                                  int granularity_bits);
uint32_t qcow2_bitmap_dir_entry_size(size_t name_len);
/* The bitmap of @list called @name, or NULL. */
Qcow2Bitmap *qcow2_bitmap_find(GPtrArray *list, const char *name);

#endif
