/* SPDX-License-Identifier: MIT */
/*
 * qcow2 driver: on-disk constants and in-memory state.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Names follow QEMU's docs/interop/qcow2.txt: L1/L2 tables, refcount table,
 * refcount blocks, COPIED, the zero flag.
 */
#ifndef QGUARD_QCOW2_H
#define QGUARD_QCOW2_H

#include <inttypes.h>
#include <string.h>

#include "block_int.h"
#include "qcow2-overlap.h"

#define QCOW_MAGIC (('Q' << 24) | ('F' << 16) | ('I' << 8) | 0xfb)

#define MIN_CLUSTER_BITS 9
#define MAX_CLUSTER_BITS 21
#define DEFAULT_CLUSTER_BITS 16

/* QEMU's implementation limits; images beyond them are refused. */
#define QCOW_MAX_L1_SIZE        (32 * 1024 * 1024)
#define QCOW_MAX_REFTABLE_SIZE  (8 * 1024 * 1024)
#define QCOW_MAX_SNAPSHOTS      65536
#define QCOW_MAX_SNAPSHOTS_SIZE (1024 * QCOW_MAX_SNAPSHOTS)
#define QCOW_MAX_SNAPSHOT_EXTRA_DATA 1024
#define QCOW2_MAX_BACKING_NAME  1023

#define L1E_OFFSET_MASK     UINT64_C(0x00fffffffffffe00)
#define L2E_OFFSET_MASK     UINT64_C(0x00fffffffffffe00)
#define REFT_OFFSET_MASK    UINT64_C(0xfffffffffffffe00)
#define L1E_RESERVED_MASK   UINT64_C(0x7f000000000001ff)
#define L2E_STD_RESERVED_MASK UINT64_C(0x3f000000000001fe)
#define REFT_RESERVED_MASK  UINT64_C(0x1ff)

#define QCOW_OFLAG_COPIED     (UINT64_C(1) << 63)
#define QCOW_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW_OFLAG_ZERO       (UINT64_C(1) << 0)

/* Extended L2 entries: 32 subclusters, an allocated and a zero bit each. */
#define QCOW_EXTL2_SUBCLUSTERS 32
#define QCOW_OFLAG_SUB_ALLOC(x)   (UINT64_C(1) << (x))
#define QCOW_OFLAG_SUB_ZERO(x)    (QCOW_OFLAG_SUB_ALLOC(x) << 32)
/* Subclusters [x, y), 0 <= x <= y <= 32 */
#define QCOW_OFLAG_SUB_ALLOC_RANGE(x, y) \
    (QCOW_OFLAG_SUB_ALLOC(y) - QCOW_OFLAG_SUB_ALLOC(x))
#define QCOW_OFLAG_SUB_ZERO_RANGE(x, y) (QCOW_OFLAG_SUB_ALLOC_RANGE(x, y) << 32)
#define QCOW_L2_BITMAP_ALL_ALLOC  QCOW_OFLAG_SUB_ALLOC_RANGE(0, 32)
#define QCOW_L2_BITMAP_ALL_ZEROES QCOW_OFLAG_SUB_ZERO_RANGE(0, 32)

#define QCOW2_COMPRESSED_SECTOR_SIZE 512ULL
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1
#define QCOW2_COMPRESSED_SECTOR_MASK (~(QCOW2_COMPRESSED_SECTOR_SIZE - 1))

/* Host offsets must stay below 2^56 (L1/L2 entry offset fields). */
#define QCOW2_MAX_HOST_OFFSET (UINT64_C(1) << 56)

#define QCOW2_INCOMPAT_DIRTY       (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT     (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2       (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_MASK        UINT64_C(0x1f)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_BITMAPS    (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (UINT64_C(1) << 1)
#define QCOW2_AUTOCLEAR_MASK       UINT64_C(0x3)

#define QCOW2_EXT_MAGIC_END             0
#define QCOW2_EXT_MAGIC_BACKING_FORMAT  0xe2792acaU
#define QCOW2_EXT_MAGIC_FEATURE_TABLE   0x6803f857U
#define QCOW2_EXT_MAGIC_CRYPTO_HEADER   0x0537be77U
#define QCOW2_EXT_MAGIC_BITMAPS         0x23852875U
#define QCOW2_EXT_MAGIC_DATA_FILE       0x44415441U

#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_MIN_HEADER_LENGTH 104
#define QCOW2_V3_HEADER_LENGTH 112   /* with compression_type and padding */

/* Byte offsets of header fields we rewrite individually. */
#define HDR_OFF_L1_SIZE          36
#define HDR_OFF_REFTABLE_OFFSET  48
#define HDR_OFF_NB_SNAPSHOTS     60
#define HDR_OFF_INCOMPAT         72

/* QEMU's overlap-check templates. */
#define QCOW2_OL_CONSTANT (QCOW2_OL_MAIN_HEADER | QCOW2_OL_ACTIVE_L1 | \
                           QCOW2_OL_REFCOUNT_TABLE | QCOW2_OL_SNAPSHOT_TABLE | \
                           QCOW2_OL_BITMAP_DIRECTORY)
#define QCOW2_OL_CACHED (QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 | \
                         QCOW2_OL_REFCOUNT_BLOCK | QCOW2_OL_INACTIVE_L1)

typedef enum QCow2ClusterType {
    QCOW2_CLUSTER_UNALLOCATED,
    QCOW2_CLUSTER_ZERO_PLAIN,
    QCOW2_CLUSTER_ZERO_ALLOC,
    QCOW2_CLUSTER_NORMAL,
    QCOW2_CLUSTER_COMPRESSED,
} QCow2ClusterType;

/*
 * What one subcluster of an extended L2 entry is (images without them have
 * one "subcluster" per cluster).  INVALID: the bitmap contradicts itself or
 * the descriptor.
 */
typedef enum QCow2SubclusterType {
    QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN,
    QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC,
    QCOW2_SUBCLUSTER_ZERO_PLAIN,
    QCOW2_SUBCLUSTER_ZERO_ALLOC,
    QCOW2_SUBCLUSTER_NORMAL,
    QCOW2_SUBCLUSTER_COMPRESSED,
    QCOW2_SUBCLUSTER_INVALID,
} QCow2SubclusterType;

typedef enum Qcow2DiscardType {
    QCOW2_DISCARD_NEVER,
    QCOW2_DISCARD_ALWAYS,
    QCOW2_DISCARD_REQUEST,
    QCOW2_DISCARD_SNAPSHOT,
    QCOW2_DISCARD_OTHER,
    QCOW2_DISCARD_MAX,
} Qcow2DiscardType;

typedef enum Qcow2OverlapAlgorithm {
    QCOW2_OVERLAP_WINDOWED,
    QCOW2_OVERLAP_LINEAR,
} Qcow2OverlapAlgorithm;

typedef struct QCowSnapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id_str;
    char *name;
    uint64_t disk_size;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;            /* UINT64_MAX when absent */
    uint32_t extra_data_size;   /* as found on disk */
    uint8_t *unknown_extra_data;
} QCowSnapshot;

typedef struct Qcow2HeaderExt {
    uint32_t magic;
    uint32_t len;
    uint8_t *data;
} Qcow2HeaderExt;

typedef struct Qcow2Cache Qcow2Cache;
typedef struct Qcow2FreeIndex Qcow2FreeIndex;
typedef struct Qcow2BitmapState Qcow2BitmapState;
typedef struct BDRVQcow2State BDRVQcow2State;

typedef uint64_t Qcow2GetRefcountFunc(const void *refcount_array,
                                      uint64_t index);
typedef void Qcow2SetRefcountFunc(void *refcount_array, uint64_t index,
                                  uint64_t value);

struct BDRVQcow2State {
    QGuardImage *img;
    HostFile *file;
    /*
     * Where guest clusters live: @file, or the external data file (NULL
     * when the image was opened with QGUARD_OPEN_NO_IO).
     */
    HostFile *data_file;
    char *image_data_file;      /* the name in the header extension */

    int qcow_version;
    int cluster_bits;
    int cluster_size;
    int l2_bits;
    int l2_size;                /* entries per L2 table */
    int l2_entry_size;          /* 8, or 16 with extended L2 entries */
    int subcluster_bits;
    int subcluster_size;
    int subclusters;            /* per cluster: 32, or 1 */
    int csize_shift;
    int csize_mask;
    uint64_t cluster_offset_mask;

    int refcount_order;
    int refcount_bits;
    int refcount_block_bits;    /* log2(entries per refcount block) */
    int refcount_block_size;    /* entries per refcount block */
    uint64_t refcount_max;
    Qcow2GetRefcountFunc *get_refcount;
    Qcow2SetRefcountFunc *set_refcount;

    /* Active L1 table, host byte order. */
    uint64_t *l1_table;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    int l1_vm_state_index;      /* L1 entries that describe the guest disk */
    /* 512-byte sectors of the L1 table changed in memory, not yet on disk */
    uint64_t *l1_dirty_bits;
    uint64_t l1_dirty_nsectors;
    bool l1_dirty;

    /* Refcount table, host byte order. */
    uint64_t *refcount_table;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_size;   /* entries */
    uint32_t max_refcount_table_index;  /* highest index in use */

    Qcow2Cache *l2_table_cache;
    Qcow2Cache *refcount_block_cache;
    bool l2_cache_auto;         /* sized by default: grows with the disk */
    /* Decided once: are data clusters likely preallocated holes? */
    bool metadata_prealloc_checked;
    bool metadata_prealloc;

    /*
     * Where the next search for free clusters starts, as QEMU's: past the
     * last run taken, down to the lowest cluster freed since.
     */
    uint64_t free_cluster_index;
    Qcow2FreeIndex *free_index;     /* qcow2-free.c */
    uint64_t free_byte_offset;  /* where the next compressed cluster goes */

    uint32_t crypt_method_header;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t header_length;
    uint8_t compression_type;
    /* Header bytes past the fields we know, kept for rewrites. */
    uint8_t *unknown_header_fields;
    uint32_t unknown_header_fields_size;
    GPtrArray *unknown_header_ext;  /* of Qcow2HeaderExt */
    char *image_backing_file;
    char *image_backing_format;
    bool has_feature_table;

    /* Internal snapshots. */
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size;    /* bytes on disk */
    QCowSnapshot *snapshots;
    /*
     * Opened for check with a table that could not be read: the check
     * reads it again (and repairs it), as QEMU's does.
     */
    bool snapshots_unread;

    /* Bitmaps extension; the bitmaps themselves are in bm. */
    bool has_bitmaps_ext;
    uint32_t nb_bitmaps;
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
    uint32_t bitmaps_ext_offset;    /* its data in the header, 0 if none */
    Qcow2BitmapState *bm;

    /* Runtime options. */
    bool use_lazy_refcounts;
    bool discard_passthrough[QCOW2_DISCARD_MAX];
    unsigned overlap_check;         /* QCOW2_OL_* mask of enabled checks */
    Qcow2OverlapAlgorithm overlap_algorithm;
    unsigned overlap_cache_size;
    Qcow2MetadataMap *metadata_map; /* windowed algorithm */
    /*
     * The map a check asks with nothing else to ask: metadata_map, or NULL
     * while a snapshot L1 table fails validation (qcow2_overlap_hit()).
     */
    Qcow2MetadataMap *check_map;
    /* L2 table cluster -> number of snapshot L1 tables referencing it */
    GHashTable *inactive_l2_refs;
    /*
     * Snapshot L1 tables that fail QEMU's validation, which nothing reads
     * and the windowed map leaves out (qcow2_note_invalid_snapshot_l1s()):
     * the error QEMU's check for inactive L2 tables fails every write with
     * (the first table's), or 0, and the ranges they claim (offset, length
     * pairs; empty ones left out), which QEMU's check for inactive L1
     * tables still refuses writes to.
     */
    int snapshot_l1_error;
    GArray *invalid_snapshot_l1s;
    uint64_t overlap_checks;
    uint64_t overlap_refused;
    bool signaled_corruption;
    bool checking_without_repair;

    /*
     * Clusters freed since the last metadata flush (Qcow2FreedRange, sorted,
     * disjoint).  On-disk tables may still point at them, so they are not
     * handed out again, nor punched, until a flush has made the freeing
     * durable (qcow2_release_freed_clusters()).
     */
    GArray *freed_clusters;
    uint64_t freed_cluster_count;

    /*
     * Writes run in parallel under the image's shared lock: an allocating
     * write (or one that changes a cluster's entry) registers its guest
     * clusters here while its data goes to disk outside meta_lock, and a
     * write that would change the same entries waits on inflight_cond.
     * Each keeps its copy-on-write head and tail in a buffer of two
     * clusters from cow_pool.  All of it under meta_lock.
     */
    GArray *inflight;               /* of Qcow2Inflight */
    GCond inflight_cond;
    GPtrArray *cow_pool;
    /* The most recently decompressed cluster, by L2 entry. */
    uint64_t decomp_entry;
    uint8_t *decomp_buf;

    /*
     * Reads and writes run in parallel under the image's shared lock; this
     * serializes what they do to shared state: the L1 table, the L2 and
     * refcount caches (a miss can evict and write back), allocation, the
     * overlap map, the decompression buffer, corruption events, and the
     * in-flight writes above.  Requests that hold the image lock
     * exclusively need not take it (the write path takes it anyway).
     */
    GMutex meta_lock;
};

typedef struct Qcow2Inflight {
    uint64_t first, end;    /* guest clusters [first, end) */
} Qcow2Inflight;

typedef struct Qcow2FreedRange {
    uint64_t first;     /* cluster index */
    uint64_t count;
    bool punch;         /* a discard type that passes through to the file */
} Qcow2FreedRange;

static inline uint64_t start_of_cluster(const BDRVQcow2State *s, uint64_t o)
{
    return o & ~((uint64_t)s->cluster_size - 1);
}

static inline uint64_t offset_into_cluster(const BDRVQcow2State *s,
                                           uint64_t o)
{
    return o & (s->cluster_size - 1);
}

static inline uint64_t size_to_clusters(const BDRVQcow2State *s,
                                        uint64_t size)
{
    return (size + (s->cluster_size - 1)) >> s->cluster_bits;
}

static inline uint64_t offset_to_l1_index(const BDRVQcow2State *s,
                                          uint64_t o)
{
    return o >> (s->l2_bits + s->cluster_bits);
}

static inline int offset_to_l2_index(const BDRVQcow2State *s, uint64_t o)
{
    return (o >> s->cluster_bits) & (s->l2_size - 1);
}

static inline bool is_cluster_aligned(const BDRVQcow2State *s, uint64_t o)
{
    return offset_into_cluster(s, o) == 0;
}

static inline uint64_t l2_entries_to_bytes(const BDRVQcow2State *s)
{
    return (uint64_t)s->l2_size << s->cluster_bits;
}

/* L1 entries needed to describe @size bytes of guest disk. */
static inline uint64_t size_to_l1(const BDRVQcow2State *s, uint64_t size)
{
    int shift = s->cluster_bits + s->l2_bits;
    return (size + (1ULL << shift) - 1) >> shift;
}

static inline bool has_data_file(const BDRVQcow2State *s)
{
    return s->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
}

/* The file guest data lies in (NULL: an external one not open). */
static inline HostFile *qcow2_data_host_file(const BDRVQcow2State *s)
{
    return has_data_file(s) ? s->data_file : s->file;
}

static inline bool has_subclusters(const BDRVQcow2State *s)
{
    return s->incompatible_features & QCOW2_INCOMPAT_EXTL2;
}

static inline bool data_file_is_raw(const BDRVQcow2State *s)
{
    return s->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
}

static inline QCow2ClusterType qcow2_get_cluster_type(const BDRVQcow2State *s,
                                                      uint64_t l2_entry)
{
    if (l2_entry & QCOW_OFLAG_COMPRESSED) {
        return QCOW2_CLUSTER_COMPRESSED;
    }
    if ((l2_entry & QCOW_OFLAG_ZERO) && s->qcow_version >= 3 &&
        !has_subclusters(s)) {
        return (l2_entry & L2E_OFFSET_MASK) ? QCOW2_CLUSTER_ZERO_ALLOC
                                            : QCOW2_CLUSTER_ZERO_PLAIN;
    }
    if (!(l2_entry & L2E_OFFSET_MASK)) {
        /*
         * Offset 0 is a guest cluster like any other in a data file, where
         * every allocated cluster has COPIED (an implied refcount of 1).
         */
        return (l2_entry & QCOW_OFLAG_COPIED) && has_data_file(s)
               ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
    }
    return QCOW2_CLUSTER_NORMAL;
}

/* be_get16/32/64() and be_put16/32/64(): unaligned big-endian fields. */
#define QCOW2_BE_ACCESSORS(bits)                                        \
static inline uint##bits##_t be_get##bits(const void *p)                \
{                                                                       \
    uint##bits##_t v;                                                   \
    memcpy(&v, p, sizeof(v));                                           \
    return GUINT##bits##_FROM_BE(v);                                    \
}                                                                       \
                                                                        \
static inline void be_put##bits(void *p, uint##bits##_t v)              \
{                                                                       \
    v = GUINT##bits##_TO_BE(v);                                         \
    memcpy(p, &v, sizeof(v));                                           \
}

QCOW2_BE_ACCESSORS(16)
QCOW2_BE_ACCESSORS(32)
QCOW2_BE_ACCESSORS(64)

static inline uint64_t l2_get(const BDRVQcow2State *s, const void *l2_table,
                              int index)
{
    return be_get64((const uint8_t *)l2_table +
                    (size_t)index * s->l2_entry_size);
}

static inline void l2_set(const BDRVQcow2State *s, void *l2_table, int index,
                          uint64_t entry)
{
    be_put64((uint8_t *)l2_table + (size_t)index * s->l2_entry_size, entry);
}

/* The subcluster bitmap of an extended entry; 0 without subclusters. */
static inline uint64_t l2_get_bitmap(const BDRVQcow2State *s,
                                     const void *l2_table, int index)
{
    return has_subclusters(s) ?
           be_get64((const uint8_t *)l2_table + (size_t)index * 16 + 8) : 0;
}

static inline void l2_set_bitmap(const BDRVQcow2State *s, void *l2_table,
                                 int index, uint64_t bitmap)
{
    g_assert(has_subclusters(s));
    be_put64((uint8_t *)l2_table + (size_t)index * 16 + 8, bitmap);
}

static inline int offset_to_sc_index(const BDRVQcow2State *s, uint64_t o)
{
    return (o >> s->subcluster_bits) & (s->subclusters - 1);
}

static inline uint64_t offset_into_subcluster(const BDRVQcow2State *s,
                                              uint64_t o)
{
    return o & (s->subcluster_size - 1);
}

/* qcow2-options.c */
bool qcow2_is_runtime_option(const char *name);
int qcow2_grow_default_l2_cache(BDRVQcow2State *s);
/* Cache sizes come back in tables; the rest is stored into @s. */
int qcow2_parse_runtime_options(BDRVQcow2State *s, const QGuardOpts *opts,
                                int *l2_tables, int *refcount_tables,
                                GError **errp);

/* qcow2.c */
/* Write zeros to guest range [@offset, +@bytes) as data. */
int qcow2_write_zero_buffer(BDRVQcow2State *s, uint64_t offset,
                            uint64_t bytes);
int qcow2_resize(QGuardImage *img, uint64_t size, bool shrink,
                 const char *prealloc, QGuardProgressFunc *progress,
                 void *opaque, GError **errp);

/* qcow2-create.c */
int qcow2_create(const char *filename, const QGuardOpts *opts,
                 QGuardProgressFunc *progress, void *opaque, GError **errp);
char *qcow2_create_describe(const QGuardOpts *opts, GError **errp);
char *qcow2_create_help(void);
/*
 * The BlockOptType of the format's creation option @name, or -1 if there is
 * none (the file protocol's options do not count).
 */
int qcow2_create_opt_type(const char *name);

/* qcow2-amend.c */
int qcow2_amend(QGuardImage *img, const QGuardOpts *opts, bool force,
                QGuardProgressFunc *progress, void *opaque, GError **errp);
char *qcow2_amend_help(void);

/* qcow2-refcount-order.c */
/* Progress of a long operation: @done of @total units. */
typedef void Qcow2StatusFunc(void *opaque, int64_t done, int64_t total);
int qcow2_change_refcount_order(BDRVQcow2State *s, int refcount_order,
                                Qcow2StatusFunc *status, void *opaque,
                                GError **errp);

/* qcow2-backing.c */
int qcow2_change_backing_file(QGuardImage *img, const char *backing_file,
                              const char *backing_fmt, GError **errp);
int qcow2_make_empty(QGuardImage *img, GError **errp);

/* qcow2-measure.c */
bool qcow2_measure_check_opts(const QGuardOpts *opts, GError **errp);
int qcow2_measure(const QGuardOpts *opts, QGuardImage *in,
                  QGuardMeasureInfo *info, GError **errp);

/*
 * @count + @n for the int counts of QGuardCheckResult: it stops at INT_MAX
 * (an image can name four billion snapshots too many), where QEMU's
 * counts wrap around to negative ones.
 */
static inline int qcow2_count_add(int count, uint64_t n)
{
    return MIN((uint64_t)count + n, (uint64_t)INT_MAX);
}

/* qcow2-check.c */
int qcow2_check_image(BDRVQcow2State *s, unsigned fix,
                      QGuardCheckResult *res, QGuardReportFunc *report,
                      void *opaque, GError **errp);
/* Refuse (-EACCES) an image whose tables lie past the end of its file. */
int qcow2_check_tables_in_file(BDRVQcow2State *s, GError **errp);
/*
 * The text explaining the current request's failure, kept per thread (reads
 * run in parallel) and cleared when a request starts.
 */
void qcow2_set_error(BDRVQcow2State *s, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);
const char *qcow2_error_message(void);
/*
 * A failure (@ret < 0) into *@errp, unless it holds an error already:
 * this request's text, or strerror.  Returns @ret.
 */
int qcow2_error_propagate(int ret, GError **errp);
void qcow2_signal_corruption(BDRVQcow2State *s, bool fatal, int64_t offset,
                             int64_t size, const char *fmt, ...)
    G_GNUC_PRINTF(5, 6);
int qcow2_mark_dirty(BDRVQcow2State *s);
int qcow2_mark_clean(BDRVQcow2State *s);
int qcow2_mark_corrupt(BDRVQcow2State *s);
int qcow2_update_header(BDRVQcow2State *s);
int qcow2_mark_consistent(BDRVQcow2State *s);
void qcow2_header_ext_free(gpointer p);
int qcow2_parse_header(BDRVQcow2State *s, const uint8_t *hdr,
                       size_t hdr_len, uint64_t *backing_offset,
                       uint32_t *backing_size, GError **errp);
int qcow2_write_header_field(BDRVQcow2State *s, int offset,
                             const void *data, int bytes);
int qcow2_commit_header_field(BDRVQcow2State *s, int offset,
                              const void *data, int bytes);
void qcow2_switch_failed(BDRVQcow2State *s, int ret);
int qcow2_flush_metadata(BDRVQcow2State *s);
int qcow2_flush_all_metadata(BDRVQcow2State *s);
bool qcow2_refcounts_postponed(BDRVQcow2State *s);
int qcow2_validate_table(BDRVQcow2State *s, uint64_t offset,
                         uint64_t entries, size_t entry_len,
                         uint64_t max_size_bytes, const char *table_name,
                         GError **errp);
int qcow2_pwrite_meta(BDRVQcow2State *s, unsigned ol_type, uint64_t offset,
                      const void *buf, size_t bytes);
int qcow2_pwritev_checked(BDRVQcow2State *s, unsigned ignore,
                          uint64_t offset, const struct iovec *iov,
                          int iovcnt, uint64_t bytes);

/* qcow2-refcount.c */
int qcow2_refcount_init(BDRVQcow2State *s, GError **errp);
void qcow2_refcount_close(BDRVQcow2State *s);
void qcow2_refcount_setup_order(BDRVQcow2State *s);
Qcow2GetRefcountFunc *qcow2_get_refcount_func(int order);
Qcow2SetRefcountFunc *qcow2_set_refcount_func(int order);
/* The refcount table was replaced: recompute what is derived from it. */
void qcow2_refcount_table_changed(BDRVQcow2State *s);
int qcow2_get_refcount(BDRVQcow2State *s, uint64_t cluster_index,
                       uint64_t *refcount);
int64_t qcow2_alloc_clusters(BDRVQcow2State *s, uint64_t n,
                             uint64_t *got);
int64_t qcow2_alloc_clusters_exact(BDRVQcow2State *s, uint64_t n);
int64_t qcow2_alloc_data_clusters(BDRVQcow2State *s, uint64_t n,
                                  uint64_t next, uint64_t *got);
/*
 * A free cluster 0 means damaged refcounts; the corruption message names
 * @what is being allocated, as QEMU's does ("L2 table").
 */
int64_t qcow2_alloc_table_cluster(BDRVQcow2State *s, const char *what);
int qcow2_switch_refcount_table(BDRVQcow2State *s, uint64_t **table,
                                uint64_t entries, uint64_t offset,
                                uint64_t tc);
int64_t qcow2_alloc_tail(BDRVQcow2State *s, uint64_t n);
int64_t qcow2_tail_cluster(BDRVQcow2State *s);
int64_t qcow2_first_free_cluster(BDRVQcow2State *s);
int qcow2_free_unreferenced_clusters(BDRVQcow2State *s, uint64_t offset,
                                     uint64_t size);
int64_t qcow2_alloc_bytes(BDRVQcow2State *s, int size);
int qcow2_alloc_clusters_at(BDRVQcow2State *s, uint64_t offset,
                            uint64_t n);
int qcow2_update_refcount(BDRVQcow2State *s, uint64_t offset,
                          uint64_t length, uint64_t amount, bool decrease,
                          Qcow2DiscardType type);
/* One more reference to the cluster at @offset; *@refcount: its new count. */
int qcow2_add_cluster_ref(BDRVQcow2State *s, uint64_t offset,
                          uint64_t *refcount);
int qcow2_free_clusters(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                        Qcow2DiscardType type);
int qcow2_free_any_cluster(BDRVQcow2State *s, uint64_t l2_entry,
                           Qcow2DiscardType type);
/* Give back clusters a failed request allocated and no table points at. */
int qcow2_abort_allocation(BDRVQcow2State *s, uint64_t offset,
                           uint64_t size);
int qcow2_flush_refcounts(BDRVQcow2State *s);
/* The refcount block for @table_index, or 0 if none is allocated. */
int qcow2_refblock_offset(BDRVQcow2State *s, uint64_t table_index,
                          uint64_t *offset);
int qcow2_commit_reftable_location(BDRVQcow2State *s, uint64_t offset,
                                   uint32_t clusters);
void qcow2_release_freed_clusters(BDRVQcow2State *s);
int qcow2_refblock_free_bits(BDRVQcow2State *s, uint64_t index,
                             uint64_t *bits, uint64_t *nfree);
int64_t qcow2_host_end_cluster(BDRVQcow2State *s);
int64_t qcow2_count_used_clusters(BDRVQcow2State *s, uint64_t end,
                                  uint64_t limit);
/* qcow2-refcount-shrink.c: after a shrink, drop blocks that count nothing */
int qcow2_shrink_reftable(BDRVQcow2State *s);

/* Overlap checking (qcow2-overlap-check.c asks the configured algorithm) */
int qcow2_pre_write_overlap_check(BDRVQcow2State *s, unsigned ignore,
                                  uint64_t offset, uint64_t size);
void qcow2_overlap_update_check_map(BDRVQcow2State *s);
uint64_t qcow2_overlap_checks(BDRVQcow2State *s);
int qcow2_overlap_hit(BDRVQcow2State *s, unsigned ignore, uint64_t offset,
                      uint64_t size);
int qcow2_refuse_overlap(BDRVQcow2State *s, int hit, uint64_t offset,
                         uint64_t size);
unsigned qcow2_linear_overlap_check(BDRVQcow2State *s, unsigned chk,
                                    uint64_t offset, uint64_t size);

/* qcow2-free.c: the free-space index (docs/allocation.md) */
void qcow2_free_index_init(BDRVQcow2State *s);
void qcow2_free_index_destroy(BDRVQcow2State *s);
void qcow2_free_index_resize(BDRVQcow2State *s);
void qcow2_free_index_reset(BDRVQcow2State *s);
void qcow2_free_index_mark_used(BDRVQcow2State *s, uint64_t first,
                                uint64_t n);
void qcow2_free_index_mark_free(BDRVQcow2State *s, uint64_t first,
                                uint64_t n);
int64_t qcow2_free_index_find(BDRVQcow2State *s, uint64_t start, uint64_t n,
                              bool exact, uint64_t *got,
                              uint64_t *first_free);
void qcow2_free_index_get_stats(BDRVQcow2State *s, uint64_t *loads,
                                uint64_t *bitmaps, uint64_t *bytes);
bool qcow2_free_index_verify(BDRVQcow2State *s, GString *why);

/* qcow2-map.c */
void qcow2_map_enter(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                     unsigned type);
void qcow2_map_remove(BDRVQcow2State *s, uint64_t offset, uint64_t size,
                      unsigned type);
int qcow2_map_build(BDRVQcow2State *s, GError **errp);
void qcow2_map_active_l2(BDRVQcow2State *s, const uint64_t *l1,
                         uint32_t l1_size, bool enter);
void qcow2_map_snapshot_tables(BDRVQcow2State *s);
void qcow2_map_inactive_l2(BDRVQcow2State *s, const uint64_t *l1,
                           uint32_t l1_size, bool add);

/* qcow2-vmstate.c */
int qcow2_load_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                       void *buf, GError **errp);
int qcow2_save_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                       const void *buf, unsigned flags, GError **errp);

/* qcow2-cluster.c */
int qcow2_get_host_offset(BDRVQcow2State *s, uint64_t offset,
                          uint64_t *bytes, uint64_t *host_offset,
                          QCow2ClusterType *type);
int qcow2_cluster_host(BDRVQcow2State *s, uint64_t offset, uint64_t *host,
                       bool *valid);
int qcow2_read_guest(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                     uint8_t *buf);
int qcow2_write_guest(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                      const uint8_t *buf);
int qcow2_zero_clusters(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                        bool may_unmap);
int qcow2_zero_subcluster_range(BDRVQcow2State *s, uint64_t offset,
                                uint64_t bytes, bool check_only);
int qcow2_discard_clusters(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, bool full_discard,
                           Qcow2DiscardType type);
int64_t qcow2_write_new_table(BDRVQcow2State *s, unsigned type,
                              const void *buf, uint64_t bytes,
                              Qcow2DiscardType discard);
int qcow2_switch_l1_table(BDRVQcow2State *s, uint64_t **table,
                          uint64_t offset, uint32_t size);
int qcow2_grow_l1_table(BDRVQcow2State *s, uint64_t min_size,
                        bool exact_size);
int qcow2_write_l1_dirty(BDRVQcow2State *s);
int qcow2_l2_after_new_refcounts(BDRVQcow2State *s);
int qcow2_get_l2_for_write(BDRVQcow2State *s, uint64_t l1_index,
                           void **l2_table, uint64_t *l2_offset);
int qcow2_mark_dirty_for_lazy_refcounts(BDRVQcow2State *s);
int qcow2_shrink_l1_table(BDRVQcow2State *s, uint64_t new_size);
typedef enum Qcow2PreallocMode {
    QCOW2_PREALLOC_OFF,
    QCOW2_PREALLOC_METADATA,
    QCOW2_PREALLOC_FALLOC,
    QCOW2_PREALLOC_FULL,
} Qcow2PreallocMode;

/* qcow2-prealloc.c */
int qcow2_preallocate(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                      Qcow2PreallocMode mode, QGuardProgressFunc *progress,
                      void *opaque);
void qcow2_l1_mark_dirty(BDRVQcow2State *s, uint64_t index);
void qcow2_parse_compressed_entry(BDRVQcow2State *s, uint64_t l2_entry,
                                  uint64_t *coffset, int *csize);
int qcow2_write_compressed(BDRVQcow2State *s, uint64_t offset,
                           const uint8_t *buf, uint64_t bytes);

/* qcow2-compress.c */
/* -ENOSPC: the cluster does not fit in @out_max bytes compressed. */
int qcow2_compress(BDRVQcow2State *s, const uint8_t *in, uint8_t *out,
                   size_t out_max, size_t *out_len);
int qcow2_decompress(BDRVQcow2State *s, const uint8_t *in, size_t in_len,
                     uint8_t *out);
int qcow2_decompress_cluster(BDRVQcow2State *s, uint64_t l2_entry,
                             uint8_t *out);

/* qcow2-data-file.c */
bool qcow2_is_data_file_option(const char *name);
int qcow2_data_file_open(BDRVQcow2State *s, const QGuardOpts *opts,
                         GError **errp);
void qcow2_data_file_close(BDRVQcow2State *s);
int qcow2_data_file_create(const char *name, GError **errp);
int qcow2_pread_data(BDRVQcow2State *s, uint64_t offset, void *buf,
                     uint64_t bytes);
/* Guest data: to the data file unchecked, or to the image, checked. */
int qcow2_pwritev_data(BDRVQcow2State *s, uint64_t offset,
                       const struct iovec *iov, int iovcnt, uint64_t bytes);
int qcow2_flush_data_file(BDRVQcow2State *s);
int qcow2_data_file_zero(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                         bool may_unmap);

/* qcow2-subcluster.c */
QCow2SubclusterType qcow2_get_subcluster_type(const BDRVQcow2State *s,
                                              uint64_t entry, uint64_t bitmap,
                                              int sc);
int qcow2_subcluster_range(const BDRVQcow2State *s, uint64_t entry,
                           uint64_t bitmap, int sc_from,
                           QCow2SubclusterType *type);
QCow2ClusterType qcow2_subcluster_read_type(QCow2SubclusterType t);
int64_t qcow2_subcluster_extent(BDRVQcow2State *s, uint64_t offset,
                                void *l2_table, uint64_t l2_offset,
                                int l2_index, uint64_t nclusters,
                                QCow2SubclusterType *type);
uint64_t qcow2_cow_start(const BDRVQcow2State *s, uint64_t entry,
                         uint64_t bitmap, uint64_t in_cluster, bool keep_old);
uint64_t qcow2_cow_end(const BDRVQcow2State *s, uint64_t entry,
                       uint64_t bitmap, uint64_t end_in_cluster,
                       bool keep_old);
uint64_t qcow2_bitmap_written(const BDRVQcow2State *s, uint64_t entry,
                              uint64_t bitmap, uint64_t from, uint64_t to);
int qcow2_zero_subclusters(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, void *l2_table, int l2_index);
/*
 * qcow2-zero.c: does [offset, offset + bytes) read as zeros, by block
 * status after block status as QEMU's is_zero(), or by one status without
 * asking files for holes as its bdrv_co_is_zero_fast()?
 */
int qcow2_range_reads_zero(BDRVQcow2State *s, uint64_t offset,
                           uint64_t bytes, bool *zero);
int qcow2_range_is_zero_fast(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes, bool *zero);
/*
 * Zero [offset, offset + bytes), part of one cluster (one subcluster with
 * extended L2 entries), as QEMU does.  @check_only: change nothing,
 * -ENOTSUP if zeros would have to be written.
 */
int qcow2_zero_partial(BDRVQcow2State *s, uint64_t offset, uint64_t bytes,
                       bool may_unmap, bool check_only);
/*
 * Zero [start, end) inside one cluster: unaligned parts as
 * qcow2_zero_partial(), whole subclusters in the bitmap.  @check_only: change
 * nothing, -ENOTSUP if zeros would have to be written.
 */
int qcow2_zero_piece_ext(BDRVQcow2State *s, uint64_t start, uint64_t end,
                         bool check_only);

/* qcow2-cache.c */
/* NULL if the memory for @num_tables tables cannot be had. */
Qcow2Cache *qcow2_cache_create(BDRVQcow2State *s, int num_tables,
                               unsigned ol_type);
void qcow2_cache_destroy(Qcow2Cache *c);
int qcow2_cache_get(BDRVQcow2State *s, Qcow2Cache *c, uint64_t offset,
                    void **table);
int qcow2_cache_get_empty(BDRVQcow2State *s, Qcow2Cache *c, uint64_t offset,
                          void **table);
void qcow2_cache_put(Qcow2Cache *c, void **table);
void qcow2_cache_entry_mark_dirty(Qcow2Cache *c, void *table);
int qcow2_cache_write(BDRVQcow2State *s, Qcow2Cache *c);
int qcow2_cache_flush(BDRVQcow2State *s, Qcow2Cache *c);
int qcow2_cache_set_dependency(BDRVQcow2State *s, Qcow2Cache *c,
                               Qcow2Cache *dependency);
void qcow2_cache_depends_on_flush(Qcow2Cache *c);
void qcow2_cache_discard(Qcow2Cache *c, uint64_t offset);
int qcow2_cache_empty(BDRVQcow2State *s, Qcow2Cache *c);
int qcow2_cache_num_tables(const Qcow2Cache *c);

/* qcow2-bitmap.c: the bitmaps on disk (docs/bitmaps.md) */
int qcow2_bitmaps_open(BDRVQcow2State *s, GError **errp);
int qcow2_bitmaps_open_rw(BDRVQcow2State *s, GError **errp);
int qcow2_bitmaps_store(BDRVQcow2State *s, bool closing);
void qcow2_bitmaps_close(BDRVQcow2State *s);
void qcow2_bitmaps_map(BDRVQcow2State *s);
bool qcow2_bitmaps_overlap(BDRVQcow2State *s, uint64_t offset, uint64_t size);
int qcow2_bitmaps_info(BDRVQcow2State *s, QGuardBitmapInfo **pinfo,
                       guint *count);

/* qcow2-bitmap-ops.c: the bitmaps in memory */
void qcow2_bitmaps_set_dirty(BDRVQcow2State *s, uint64_t offset,
                             uint64_t bytes);
int qcow2_bitmaps_prepare_resize(BDRVQcow2State *s, uint64_t size,
                                 GError **errp);
void qcow2_bitmaps_resized(BDRVQcow2State *s, uint64_t size);
int qcow2_bitmap_add(BDRVQcow2State *s, const char *node, const char *name,
                     uint32_t granularity, bool disabled, GError **errp);
int qcow2_bitmap_remove(BDRVQcow2State *s, const char *name, GError **errp);
int qcow2_bitmap_clear(BDRVQcow2State *s, const char *name, GError **errp);
int qcow2_bitmap_enable(BDRVQcow2State *s, const char *name, bool enable,
                        GError **errp);
int qcow2_bitmap_merge(BDRVQcow2State *s, const char *target,
                       BDRVQcow2State *src_s, const char *source,
                       GError **errp);
int qcow2_bitmap_list(BDRVQcow2State *s, QGuardBitmapInfo **plist,
                      guint *count, GError **errp);
int qcow2_bitmap_status(BDRVQcow2State *s, const char *name, uint64_t offset,
                        uint64_t bytes, bool *dirty, uint64_t *pnum,
                        GError **errp);

/* qcow2-snapshot.c */
int qcow2_read_snapshots(BDRVQcow2State *s, GError **errp);
int qcow2_read_l1_table(BDRVQcow2State *s, uint64_t offset, uint32_t size,
                        uint64_t **pl1);
int qcow2_do_read_snapshots(BDRVQcow2State *s, bool repair, int *reduced,
                            int *extra_dropped, QGuardReportFunc *report,
                            void *opaque, GError **errp);
void qcow2_report(QGuardReportFunc *report, void *opaque, const char *fmt,
                  ...) G_GNUC_PRINTF(3, 4);
/*
 * qemu-img check's reading of the snapshot table (qcow2-snapshot-check.c):
 * errors and repairs counted in @res, lines through @report.
 */
int qcow2_check_read_snapshot_table(BDRVQcow2State *s, QGuardCheckResult *res,
                                    unsigned fix, QGuardReportFunc *report,
                                    void *opaque, GError **errp);
int qcow2_check_fix_snapshot_table(BDRVQcow2State *s, QGuardCheckResult *res,
                                   unsigned fix, QGuardReportFunc *report,
                                   void *opaque, GError **errp);
void qcow2_free_snapshots(BDRVQcow2State *s);
int qcow2_write_snapshots(BDRVQcow2State *s);
bool qcow2_snapshot_l1_valid(BDRVQcow2State *s, const QCowSnapshot *sn);
/* Update snapshot_l1_error and its ranges after the list changed. */
void qcow2_note_invalid_snapshot_l1s(BDRVQcow2State *s);
int qcow2_snapshot_create(BDRVQcow2State *s, const char *name, GError **errp);
int qcow2_snapshot_apply(BDRVQcow2State *s, const char *id_or_name,
                         GError **errp);
int qcow2_snapshot_delete(BDRVQcow2State *s, const char *id_or_name,
                          GError **errp);
int qcow2_snapshot_load_tmp(BDRVQcow2State *s, const char *id,
                            const char *name, GError **errp);

#endif
