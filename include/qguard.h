/* SPDX-License-Identifier: MIT */
/*
 * libqguard public API.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Everything a tool (qguard-img, qguard-io, the nbdkit plugin) needs goes
 * through this header.  Its conventions (docs/design.md, "Library API"):
 *
 *   - A call that can fail returns int: 0 or a positive value on success,
 *     a negative errno on failure, and the message through its GError
 *     argument where it has one.  bool is only for questions that cannot
 *     fail (qguard_opts_has(), qguard_image_is_read_only(), ...).
 *   - Getters take a const image.
 *   - A returned string or list is the caller's: strings are freed with
 *     g_free(), every list with its own *_free() function.
 *   - A struct that the caller allocates for the library to fill starts
 *     with 'size', which the caller sets to sizeof the struct (QGUARD_SIZED
 *     does it), so that a newer library with a longer struct writes only
 *     what the caller has room for.  A size below the first version's is
 *     refused with -EINVAL.  Structs the library allocates grow only at
 *     the end; list elements never grow.
 *
 * The shared library's soversion changes with every incompatible change of
 * this header (docs/design.md lists them).
 */
#ifndef QGUARD_H
#define QGUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

#define QGUARD_ERROR qguard_error_quark()
GQuark qguard_error_quark(void);
/*
 * A check failure whose message qemu-img check prints as its own error
 * line before "Check failed: ..." (the code is the errno).
 */
#define QGUARD_CHECK_ERROR qguard_check_error_quark()
GQuark qguard_check_error_quark(void);

/* An initializer for a caller-allocated struct: QGUARD_SIZED(QGuardX). */
#define QGUARD_SIZED(type) ((type){ .size = sizeof(type) })

/* ---- Option lists ------------------------------------------------------ */

/*
 * An ordered list of key=value pairs, as QEMU's command lines use them:
 * "a=1,b=2", with ",," standing for a literal comma inside a value.
 */
typedef struct QGuardOpts QGuardOpts;

QGuardOpts *qguard_opts_new(void);
QGuardOpts *qguard_opts_copy(const QGuardOpts *opts);
void qguard_opts_free(QGuardOpts *opts);
/*
 * Parse @str and append its pairs.  If @implied_key is non-NULL, a first
 * element without '=' is taken as the value of @implied_key.
 */
int qguard_opts_parse(QGuardOpts *opts, const char *str,
                      const char *implied_key, GError **errp);
/* Replaces an existing value of @key. */
void qguard_opts_set(QGuardOpts *opts, const char *key, const char *value);
const char *qguard_opts_get(const QGuardOpts *opts, const char *key);
bool qguard_opts_has(const QGuardOpts *opts, const char *key);
void qguard_opts_del(QGuardOpts *opts, const char *key);
guint qguard_opts_count(const QGuardOpts *opts);
const char *qguard_opts_key(const QGuardOpts *opts, guint i);
const char *qguard_opts_value(const QGuardOpts *opts, guint i);

/*
 * Sizes exactly as QEMU 7.2 reads them (qemu_strtosz): decimal, or hex
 * with "0x"; a decimal fraction needs a suffix; one optional suffix b, k/K,
 * M, G, T, P, E (powers of 1024).  Returns 0, -EINVAL or -ERANGE.  A hex
 * number with a suffix is accepted, but QEMU warns that it is deprecated:
 * *@hex_suffix (if not NULL) says so, for a tool to print the warning.
 */
int qguard_strtosz(const char *str, uint64_t *size, bool *hex_suffix);
/* qguard_strtosz() with a GError ("Invalid size '...'", or too large). */
int qguard_parse_size(const char *str, uint64_t *size, GError **errp);
/*
 * qguard_strtosz() for the option @name, with QemuOpts' messages (the
 * "expects a non-negative number" hint, or "out of range").
 */
int qguard_parse_size_option(const char *name, const char *value,
                             uint64_t *size, bool *hex_suffix, GError **errp);
/* "1 GiB", "512 KiB", "1.5 MiB": QEMU's size_to_str(). Free with g_free. */
char *qguard_size_to_str(uint64_t size);

/* ---- Images ------------------------------------------------------------ */

typedef struct QGuardImage QGuardImage;

enum {
    QGUARD_OPEN_RDWR       = 1 << 0,
    /* Do not open the backing chain (qemu-img info/check/resize do this). */
    QGUARD_OPEN_NO_BACKING = 1 << 1,
    /*
     * Open for repair: a corrupt image may be opened read-write and a dirty
     * image is not repaired automatically.
     */
    QGUARD_OPEN_CHECK      = 1 << 2,
    /*
     * Cache mode (docs/design.md, "Cache modes"), as qguard_parse_cache_mode()
     * sets it from QEMU's names.  WRITETHROUGH turns the image's write cache
     * off: a write, write-zeroes or compressed write returns only once it
     * and the metadata that makes it visible are flushed to stable storage.
     * NOCACHE and NO_FLUSH are the defaults of the runtime options
     * cache.direct (O_DIRECT on the image file) and cache.no-flush (flushes
     * write the image's metadata to the host but do not sync it).  Backing
     * images inherit NOCACHE and NO_FLUSH.
     */
    QGUARD_OPEN_WRITETHROUGH = 1 << 3,
    QGUARD_OPEN_NOCACHE      = 1 << 4,
    QGUARD_OPEN_NO_FLUSH     = 1 << 5,
    /*
     * Describe the image, never read or write guest data (qemu-img info):
     * an external data file is neither needed nor opened.
     */
    QGUARD_OPEN_NO_IO        = 1 << 6,
};
#define QGUARD_OPEN_CACHE_MASK \
    (QGUARD_OPEN_WRITETHROUGH | QGUARD_OPEN_NOCACHE | QGUARD_OPEN_NO_FLUSH)

/*
 * QEMU's cache modes: "writethrough", "writeback", "none" (or "off"),
 * "directsync", "unsafe".  Replaces the QGUARD_OPEN_CACHE_MASK bits of
 * *flags; -EINVAL (and *flags unchanged) for anything else.
 */
int qguard_parse_cache_mode(const char *mode, unsigned *flags);

/*
 * Open @filename (or, with @filename NULL, the file named by the option
 * "file.filename" in @opts).  @format may be NULL to probe.  @opts holds
 * runtime options (overlap-check, l2-cache-size, ...); it may be NULL.
 */
int qguard_image_open(QGuardImage **pimg, const char *filename,
                      const char *format, const QGuardOpts *opts,
                      unsigned flags, GError **errp);
/*
 * Flushes and closes; the image is freed even if the flush fails.  A
 * failure means that writes acknowledged in writeback mode may be lost.
 */
int qguard_image_close(QGuardImage *img, GError **errp);

const char *qguard_image_filename(const QGuardImage *img);
const char *qguard_image_format(const QGuardImage *img);
uint64_t qguard_image_size(const QGuardImage *img);
bool qguard_image_is_read_only(const QGuardImage *img);
/*
 * Does opening @img again take the runtime option @key: one of the block
 * layer's, of its protocol node (file.*) or of its format?
 */
bool qguard_image_takes_option(const QGuardImage *img, const char *key);
/* The image's backing image, or NULL; it belongs to @img. */
QGuardImage *qguard_image_backing(const QGuardImage *img);

enum {
    /* The write is on stable storage when the call returns. */
    QGUARD_WRITE_FUA       = 1 << 0,
    /* pwrite_zeroes: the range may be deallocated. */
    QGUARD_ZERO_MAY_UNMAP  = 1 << 1,
    /* pwrite_zeroes: fail with -ENOTSUP rather than write zeros slowly. */
    QGUARD_ZERO_FAST       = 1 << 2,
};

int qguard_image_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       void *buf, GError **errp);
int qguard_image_pwrite(QGuardImage *img, uint64_t offset, uint64_t bytes,
                        const void *buf, unsigned flags, GError **errp);
int qguard_image_pwrite_zeroes(QGuardImage *img, uint64_t offset,
                               uint64_t bytes, unsigned flags, GError **errp);
int qguard_image_discard(QGuardImage *img, uint64_t offset, uint64_t bytes,
                         GError **errp);
/*
 * Write one whole cluster compressed (qemu-img convert -c): @offset must be
 * cluster aligned and @bytes the cluster size, or the rest of the disk for
 * the last cluster.  The cluster must be unallocated; data that does not
 * compress is stored normally.  -ENOTSUP for formats without compression.
 */
int qguard_image_pwrite_compressed(QGuardImage *img, uint64_t offset,
                                   uint64_t bytes, const void *buf,
                                   GError **errp);
/*
 * The VM state area that QEMU's savevm stores with internal snapshots
 * (qemu-io read -b / write -b): @bytes at @pos in it.  -ENOTSUP for formats
 * without one.
 */
int qguard_image_load_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                              void *buf, GError **errp);
int qguard_image_save_vmstate(QGuardImage *img, uint64_t pos, uint64_t bytes,
                              const void *buf, GError **errp);
/* Cluster size of a qcow2 image, 0 for formats without clusters. */
uint32_t qguard_image_cluster_size(const QGuardImage *img);
int qguard_image_flush(QGuardImage *img, GError **errp);
/*
 * Change the virtual size.  Shrinking is refused unless @shrink is set.
 * @prealloc is "off", "metadata", "falloc" or "full" (NULL means "off").
 */
int qguard_image_truncate(QGuardImage *img, uint64_t size, bool shrink,
                          const char *prealloc, GError **errp);

/* ---- Block status (qemu-img map) ---------------------------------------- */

enum {
    QGUARD_BLOCK_DATA        = 1 << 0, /* reads come from a data cluster */
    QGUARD_BLOCK_ZERO        = 1 << 1, /* reads as zeros */
    QGUARD_BLOCK_ALLOCATED   = 1 << 2, /* this layer decides the content */
    QGUARD_BLOCK_OFFSET_VALID = 1 << 3, /* host_offset is meaningful */
    QGUARD_BLOCK_COMPRESSED  = 1 << 4,
};

typedef struct QGuardBlockStatus {
    size_t size;             /* sizeof(QGuardBlockStatus), set by the caller */
    unsigned flags;
    uint64_t bytes;          /* length of the extent with these properties */
    uint64_t host_offset;    /* in @filename, if OFFSET_VALID */
    /* The file host_offset is in: @image's, or its external data file. */
    const char *filename;
    int depth;               /* 0 = this image, 1 = its backing file, ... */
    QGuardImage *image;      /* the layer that provided the status */
} QGuardBlockStatus;

/*
 * Status of [offset, offset + bytes) in @img, following the backing chain
 * through unallocated extents.  st->bytes is at least 1 and at most @bytes.
 */
int qguard_image_block_status(QGuardImage *img, uint64_t offset,
                              uint64_t bytes, QGuardBlockStatus *st,
                              GError **errp);

/* ---- Information (qemu-img info) --------------------------------------- */

typedef struct QGuardSnapshotInfo {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t disk_size;       /* 0 if the snapshot does not record it */
    uint64_t icount;          /* UINT64_MAX if absent */
} QGuardSnapshotInfo;

typedef struct QGuardBitmapInfo {
    char *name;
    uint32_t granularity;
    bool in_use;
    bool is_auto;
} QGuardBitmapInfo;

typedef struct QGuardImageInfo {
    char *filename;
    char *format;
    uint64_t virtual_size;
    int64_t actual_size;        /* bytes allocated on the host, -1 unknown */
    uint32_t cluster_size;      /* 0 for raw */
    bool encrypted;
    bool dirty_flag;
    char *backing_filename;     /* as written in the image, or NULL */
    char *full_backing_filename;
    char *backing_format;
    /* qcow2 only */
    bool is_qcow2;
    char *compat;               /* "0.10" or "1.1" */
    char *compression_type;     /* "zlib" or "zstd" */
    bool lazy_refcounts;
    int refcount_bits;
    bool corrupt;
    bool extended_l2;
    bool has_data_file;         /* incompatible bit 2 */
    char *data_file;            /* its name in the image, or NULL */
    bool data_file_raw;
    guint nb_snapshots;
    QGuardSnapshotInfo *snapshots;
    guint nb_bitmaps;
    QGuardBitmapInfo *bitmaps;
} QGuardImageInfo;

int qguard_image_get_info(QGuardImage *img, QGuardImageInfo **pinfo,
                          GError **errp);
void qguard_image_info_free(QGuardImageInfo *info);

/* ---- Consistency check (qemu-img check) -------------------------------- */

enum {
    QGUARD_CHECK_FIX_LEAKS  = 1 << 0,
    QGUARD_CHECK_FIX_ERRORS = 1 << 1,
};

typedef struct QGuardCheckResult {
    size_t size;                /* sizeof(QGuardCheckResult), by the caller */
    int corruptions;
    int leaks;
    int check_errors;
    int corruptions_fixed;
    int leaks_fixed;
    int64_t image_end_offset;
    uint64_t total_clusters;
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
} QGuardCheckResult;

/* Receives the per-problem lines qemu-img check prints on stderr. */
typedef void QGuardReportFunc(void *opaque, const char *line);

/*
 * Returns -ENOTSUP for formats without a check.  The image must be open
 * read-write (with QGUARD_OPEN_CHECK) to repair.
 */
int qguard_image_check(QGuardImage *img, unsigned fix,
                       QGuardCheckResult *result,
                       QGuardReportFunc *report, void *opaque,
                       GError **errp);

/* ---- Creation ------------------------------------------------------------ */

/* Progress in percent, 0.0 .. 100.0. */
typedef void QGuardProgressFunc(void *opaque, double percent);

/*
 * Create an image.  @opts holds creation options ("size", "cluster_size",
 * "refcount_bits", "compat", "preallocation", "lazy_refcounts",
 * "backing_file", "backing_fmt") and may also hold runtime options
 * (overlap-check, ...) used while preallocating.
 */
int qguard_image_create(const char *filename, const char *format,
                        const QGuardOpts *opts, QGuardProgressFunc *progress,
                        void *opaque, GError **errp);
/*
 * What qemu-img does before it prints "Formatting": check the options'
 * syntax, check the backing file (unless @unsafe) and take a missing size
 * from it (stored into @opts).  Returns the "fmt=qcow2 cluster_size=..."
 * description, with defaults, in QEMU's order (free with g_free()), or
 * NULL and the error.
 */
char *qguard_create_prepare(const char *filename, const char *format,
                            QGuardOpts *opts, bool unsafe, GError **errp);
/*
 * The format's creation options for -o help, as QEMU prints them: one
 * "  name=<type>  - description" line each, sorted by name.  An unknown
 * format, or one that cannot create images, is an error saying so.  Free
 * with g_free().
 */
char *qguard_create_help(const char *format, GError **errp);
/* The same for the file protocol (what a target file name adds). */
const char *qguard_file_create_help(void);

/* ---- Changing existing images (amend, rebase, commit, measure) ---------- */

/*
 * qemu-img amend: change the options in @opts ("compat", "refcount_bits",
 * "lazy_refcounts", "size", ...) of an image opened read-write.  -ENOTSUP
 * for formats that cannot be amended; the error names the option or the
 * feature that stands in the way.  @progress may be NULL.
 */
int qguard_image_amend(QGuardImage *img, const QGuardOpts *opts, bool force,
                       QGuardProgressFunc *progress, void *opaque,
                       GError **errp);
/*
 * "Amend options for 'qcow2':" and one line per option, as -o help shows
 * (free with g_free()), or NULL and the error.
 */
char *qguard_amend_help(const char *format, GError **errp);

/*
 * Write a new backing file name (NULL: none) and format into the image
 * header; the open backing chain is not changed.  With @require, a backing
 * file needs a format.  Returns -EINVAL for a bad combination or a name
 * that is too long, -ENOSPC if the header cluster has no room, -ENOTSUP
 * for formats without backing files; the GError says which.
 */
int qguard_image_change_backing_file(QGuardImage *img,
                                     const char *backing_file,
                                     const char *backing_fmt, bool require,
                                     GError **errp);

/*
 * Drop all data of the image's active layer, so that it reads from its
 * backing file again (what qemu-img commit does to the committed image).
 * -ENOTSUP for formats that cannot do this.
 */
int qguard_image_make_empty(QGuardImage *img, GError **errp);

typedef struct QGuardMeasureInfo {
    size_t size;                /* sizeof(QGuardMeasureInfo), by the caller */
    uint64_t required;          /* bytes for the data that is present */
    uint64_t fully_allocated;   /* bytes if every cluster is allocated */
    bool has_bitmaps;
    uint64_t bitmaps;           /* bytes for the persistent bitmaps */
} QGuardMeasureInfo;

/*
 * qemu-img measure: the file size an image of @format created with @opts
 * (creation options) would need to hold the data of @in, or, with @in
 * NULL, an empty disk of the size in @opts' "size".  Check @opts with
 * qguard_measure_opts_valid() first.
 */
int qguard_measure(const char *format, const QGuardOpts *opts,
                   QGuardImage *in, QGuardMeasureInfo *info, GError **errp);
/*
 * 0 if @opts are names and values that an image of @format can be created
 * with, else -EINVAL and the error (qemu-img follows it with "Invalid
 * options for file format").  An unknown @format is left to
 * qguard_measure().
 */
int qguard_measure_opts_valid(const char *format, const QGuardOpts *opts,
                              GError **errp);

/* ---- Internal snapshots -------------------------------------------------- */

/*
 * Snapshots are named by id or by name (an id match wins, as in QEMU).
 * Errors: -ENOENT no such snapshot, -EEXIST duplicate name, -ENOTSUP the
 * format has no internal snapshots, -EPERM read-only image.
 */
int qguard_snapshot_create(QGuardImage *img, const char *name, GError **errp);
int qguard_snapshot_apply(QGuardImage *img, const char *id_or_name,
                          GError **errp);
int qguard_snapshot_delete(QGuardImage *img, const char *id_or_name,
                           GError **errp);
/*
 * From now on read the snapshot with id @id and/or name @name (either may
 * be NULL, not both) instead of the active disk, as qemu-img convert -l
 * and measure -l do; the image must be read-only.  -ENOENT if there is no
 * such snapshot.
 */
int qguard_snapshot_load_tmp(QGuardImage *img, const char *id,
                             const char *name, GError **errp);
/*
 * The snapshot table as qemu-img snapshot -l lists it; free it with
 * qguard_snapshot_list_free().
 */
int qguard_snapshot_list(QGuardImage *img, QGuardSnapshotInfo **list,
                         guint *count, GError **errp);
void qguard_snapshot_list_free(QGuardSnapshotInfo *list, guint count);

/* ---- Persistent dirty bitmaps (qcow2 v3) -------------------------------- */

/*
 * While the image is open read-write, every enabled bitmap records each
 * write, zero write, discard and compressed write, in granules.  These
 * calls and the recorded writes change memory; everything is stored when
 * the image is closed, and qguard_image_close() fails if it cannot be
 * (docs/bitmaps.md).  Errors carry the messages of QEMU's
 * block-dirty-bitmap-* commands; -EPERM on a read-only image.
 */
bool qguard_image_supports_bitmaps(const QGuardImage *img);
/* @granularity 0: the default, the cluster size within [4 KiB, 64 KiB]. */
int qguard_bitmap_add(QGuardImage *img, const char *name,
                      uint32_t granularity, bool disabled, GError **errp);
int qguard_bitmap_remove(QGuardImage *img, const char *name, GError **errp);
int qguard_bitmap_clear(QGuardImage *img, const char *name, GError **errp);
int qguard_bitmap_enable(QGuardImage *img, const char *name, GError **errp);
int qguard_bitmap_disable(QGuardImage *img, const char *name,
                          GError **errp);
/* Add the dirty granules of @source in @src (may be @img) to @target. */
int qguard_bitmap_merge(QGuardImage *img, const char *target,
                        QGuardImage *src, const char *source, GError **errp);
/*
 * The bitmaps of the open image (in_use: inconsistent, unusable; is_auto:
 * enabled).  Free with qguard_bitmap_list_free().
 */
int qguard_bitmap_list(QGuardImage *img, QGuardBitmapInfo **list,
                       guint *count, GError **errp);
void qguard_bitmap_list_free(QGuardBitmapInfo *list, guint count);
/*
 * Whether the granules from @offset on are dirty: *pnum bytes (at least 1,
 * at most @bytes) from @offset have the state *dirty.
 */
int qguard_bitmap_status(QGuardImage *img, const char *name,
                         uint64_t offset, uint64_t bytes, bool *dirty,
                         uint64_t *pnum, GError **errp);

/* ---- Overlap protection statistics -------------------------------------- */

typedef struct QGuardOverlapStats {
    size_t size;                /* sizeof(QGuardOverlapStats), by the caller */
    char algorithm[16];         /* "windowed", "linear" */
    unsigned checks_mask;       /* enabled metadata types, bit per type */
    uint64_t checks;            /* overlap checks performed */
    uint64_t refused;           /* writes refused */
    /* windowed map only */
    uint64_t list_to_bytemap;
    uint64_t bytemap_to_list;
    uint64_t bytemaps_freed;
    uint64_t inserts;
    uint64_t removes;
    uint64_t queries;
    uint64_t list_queries;      /* checks answered from a fragment list */
    uint64_t mem_current;
    uint64_t mem_peak;
    uint64_t windows;
    unsigned cache_size;
} QGuardOverlapStats;

/* -ENOTSUP if the format has no overlap protection, -EINVAL for a bad size. */
int qguard_image_overlap_stats(QGuardImage *img, QGuardOverlapStats *stats);
void qguard_image_overlap_stats_reset(QGuardImage *img);
const char *qguard_overlap_type_name(int bitnr);
/* Diagnostics the library prints (corruption events); default: stderr. */
void qguard_set_message_handler(QGuardReportFunc *fn, void *opaque);
int qguard_overlap_type_count(void);

G_END_DECLS

#endif /* QGUARD_H */
