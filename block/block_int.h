/* SPDX-License-Identifier: MIT */
/*
 * Internal interface between the generic image layer and format drivers.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_BLOCK_INT_H
#define QGUARD_BLOCK_INT_H

#include <pthread.h>
#include <errno.h>
#include <sys/uio.h>

#include "qguard.h"
#include "host-file.h"

#ifndef ROUND_UP
/* Round @n up to a multiple of @d (any positive @d). */
#define ROUND_UP(n, d) ((((n) + (d) - 1) / (d)) * (d))
#endif
#ifndef DIV_ROUND_UP
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#endif

typedef struct BlockDriver BlockDriver;

/* QEMU's detect-zeroes modes. */
typedef enum BdrvDetectZeroes {
    BDRV_DETECT_ZEROES_OFF,
    BDRV_DETECT_ZEROES_ON,
    BDRV_DETECT_ZEROES_UNMAP,   /* and may deallocate, with discard=unmap */
} BdrvDetectZeroes;

/*
 * Driver-internal block status flag: the data extent may contain holes of
 * the host file that read as zeros; the generic layer asks the file the
 * data lies in when the caller wants zeros found (QEMU's want_zero).
 */
#define BDRV_BLOCK_RECURSE (1u << 16)

struct QGuardImage {
    const BlockDriver *drv;
    void *opaque;               /* driver state */
    HostFile *file;
    char *filename;
    unsigned flags;             /* QGUARD_OPEN_* */
    bool read_only;
    uint64_t total_size;        /* virtual size in bytes */
    QGuardImage *backing;
    /* as the image names it, and resolved relative to the image */
    char *backing_file;
    char *full_backing_file;
    char *backing_format;
    int chain_depth;            /* 0 for the top image */
    QGuardImage *parent;        /* the image this one is the backing of */
    /*
     * Taken by every public entry point: shared by reads, exclusive for
     * everything else, with writers preferred so that a stream of reads
     * cannot starve them.
     */
    pthread_rwlock_t lock;
    /*
     * How many requests hold @lock shared (atomic): a flush that runs
     * beside others must not hand freed clusters out again, as one of them
     * may still be reading one (bdrv_runs_alone()).
     */
    int shared_holders;
    /*
     * Set after a fatal corruption: every further request fails.  Atomic
     * (bdrv_is_broken()): a write sets it while others check it.
     */
    bool broken;
    /*
     * Requests that changed the image and succeeded, and how many of them
     * a flush is known to have made durable; while the two differ, what
     * they wrote is durable only after another flush (writeback mode).
     * Atomic: writes run in parallel and finish in any order.
     */
    uint64_t changes_done;
    uint64_t changes_flushed;
    bool probed;                /* format guessed, not given */
    /*
     * The "discard" option: unmap/on passes guest discards to the driver,
     * ignore/off drops them.  As in QEMU 7.2, zero writes keep their
     * permission to unmap either way.
     */
    bool discard_unmap;
    bool force_share;           /* force-share=on: no image locks */
    /* detect-zeroes: a write of zeros becomes a zero write */
    BdrvDetectZeroes detect_zeroes;
    char *node_name;            /* the node-name option, or NULL */
};

/*
 * Driver entry points.  Requests have been bounds-checked by block.c.  A
 * request that fails returns a negative errno and sets *errp (which may be
 * NULL) to the text the user reads: the driver's own explanation, or
 * strerror.
 */
struct BlockDriver {
    const char *format_name;
    /* Score 0..100 for how sure the driver is that @buf starts its format. */
    int (*probe)(const uint8_t *buf, size_t len);
    int (*open)(QGuardImage *img, const QGuardOpts *opts, GError **errp);
    /*
     * Write back what is still in memory and free the driver state (even
     * if writing fails, which is then returned).
     */
    int (*close)(QGuardImage *img, GError **errp);
    int (*create)(const char *filename, const QGuardOpts *opts,
                  QGuardProgressFunc *progress, void *opaque, GError **errp);
    char *(*create_describe)(const QGuardOpts *opts, GError **errp);
    char *(*create_help)(void);
    /*
     * May run in several threads at once, beside nothing else but other
     * preads and, with parallel_writes, pwrites.
     */
    int (*pread)(QGuardImage *img, uint64_t offset, uint64_t bytes,
                 void *buf, GError **errp);
    int (*pwrite)(QGuardImage *img, uint64_t offset, uint64_t bytes,
                  const void *buf, unsigned flags, GError **errp);
    /* pwrite may run in several threads at once, beside preads. */
    bool parallel_writes;
    int (*pwrite_zeroes)(QGuardImage *img, uint64_t offset, uint64_t bytes,
                         unsigned flags, GError **errp);
    int (*pwrite_compressed)(QGuardImage *img, uint64_t offset,
                             uint64_t bytes, const void *buf, GError **errp);
    uint32_t (*cluster_size)(const QGuardImage *img);
    int (*discard)(QGuardImage *img, uint64_t offset, uint64_t bytes,
                   GError **errp);
    int (*flush)(QGuardImage *img, GError **errp);
    /*
     * The flush before close, if it differs from flush: its error message
     * is the whole line the tool prints (QEMU's wording for what failed).
     */
    int (*close_flush)(QGuardImage *img, GError **errp);
    int (*truncate)(QGuardImage *img, uint64_t size, bool shrink,
                    const char *prealloc, GError **errp);
    /* Status of this layer only; ALLOCATED unset means "ask the backing". */
    int (*block_status)(QGuardImage *img, uint64_t offset, uint64_t bytes,
                        QGuardBlockStatus *st, GError **errp);
    /*
     * The file host offsets of guest data point into (NULL: none open);
     * without this, the image's own file.
     */
    HostFile *(*data_file)(QGuardImage *img);
    int (*get_info)(QGuardImage *img, QGuardImageInfo *info, GError **errp);
    int (*check)(QGuardImage *img, unsigned fix, QGuardCheckResult *result,
                 QGuardReportFunc *report, void *opaque, GError **errp);
    int (*overlap_stats)(QGuardImage *img, QGuardOverlapStats *stats);
    void (*overlap_stats_reset)(QGuardImage *img);
    /*
     * A request starts: the driver forgets what it noted about the calling
     * thread's previous one (its error text).
     */
    void (*clear_error)(QGuardImage *img);
    /* Internal snapshots: BDRV_SNAPSHOT_* on the snapshot named @name. */
    int (*snapshot)(QGuardImage *img, int op, const char *name,
                    GError **errp);
    /*
     * Persistent dirty bitmaps (docs/bitmaps.md); NULL for formats without
     * them.  @node names the image in messages, as QEMU's node names do.
     */
    int (*bitmap_add)(QGuardImage *img, const char *node, const char *name,
                      uint32_t granularity, bool disabled, GError **errp);
    /* BDRV_BITMAP_* on the bitmap named @name. */
    int (*bitmap_op)(QGuardImage *img, int op, const char *name,
                     GError **errp);
    int (*bitmap_merge)(QGuardImage *img, const char *target,
                        QGuardImage *src, const char *source, GError **errp);
    int (*bitmap_list)(QGuardImage *img, QGuardBitmapInfo **list,
                       guint *count, GError **errp);
    int (*bitmap_status)(QGuardImage *img, const char *name, uint64_t offset,
                         uint64_t bytes, bool *dirty, uint64_t *pnum,
                         GError **errp);
    bool (*supports_bitmaps)(const QGuardImage *img);
    /*
     * The VM state area of internal snapshots (qemu-io read -b / write -b):
     * @bytes at @pos in it.  NULL for formats without one.
     */
    int (*load_vmstate)(QGuardImage *img, uint64_t pos, uint64_t bytes,
                        void *buf, GError **errp);
    int (*save_vmstate)(QGuardImage *img, uint64_t pos, uint64_t bytes,
                        const void *buf, unsigned flags, GError **errp);
    /* Read-only images: read this snapshot from now on. */
    int (*snapshot_load_tmp)(QGuardImage *img, const char *id,
                             const char *name, GError **errp);
    /* Is @name an open-time option of this driver? */
    bool (*is_runtime_option)(const char *name);
    /* qemu-img amend; the image is open read-write. */
    int (*amend)(QGuardImage *img, const QGuardOpts *opts, bool force,
                 QGuardProgressFunc *progress, void *opaque, GError **errp);
    char *(*amend_help)(void);
    int (*change_backing_file)(QGuardImage *img, const char *backing_file,
                               const char *backing_fmt, GError **errp);
    int (*make_empty)(QGuardImage *img, GError **errp);
    /* Names and syntax of measure's creation options. */
    bool (*measure_check_opts)(const QGuardOpts *opts, GError **errp);
    /* @in may be NULL: measure an empty image of the size in @opts. */
    int (*measure)(const QGuardOpts *opts, QGuardImage *in,
                   QGuardMeasureInfo *info, GError **errp);
    bool supports_backing;
};

enum {
    BDRV_BITMAP_REMOVE,
    BDRV_BITMAP_CLEAR,
    BDRV_BITMAP_ENABLE,
    BDRV_BITMAP_DISABLE,
};

enum {
    BDRV_SNAPSHOT_CREATE,
    BDRV_SNAPSHOT_APPLY,
    BDRV_SNAPSHOT_DELETE,
};

extern const BlockDriver bdrv_qcow2;
extern const BlockDriver bdrv_raw;

/*
 * Open a backing image for @img (used by drivers at open time).  Detects
 * loops and bounds the chain depth.
 */
int bdrv_open_backing(QGuardImage *img, const QGuardOpts *opts,
                      GError **errp);
bool bdrv_first_sector_looks_formatted(const uint8_t *buf, size_t len);
/*
 * qguard_image_block_status() for a caller that holds the image's lock
 * (a driver in a request); @bytes must be within the disk and non-zero.
 */
int bdrv_chain_block_status(QGuardImage *img, uint64_t offset,
                            uint64_t bytes, QGuardBlockStatus *st,
                            GError **errp);
/*
 * The same without asking the files where their holes are (QEMU's
 * want_zero=false): a data extent is data.
 */
int bdrv_chain_block_status_fast(QGuardImage *img, uint64_t offset,
                                 uint64_t bytes, QGuardBlockStatus *st,
                                 GError **errp);
/* Read from the backing chain; zeros past its end. */
int bdrv_backing_pread(QGuardImage *img, uint64_t offset, uint64_t bytes,
                       void *buf);
/*
 * Resolve a backing file name relative to the directory of @image_path, as
 * QEMU does: a name with a protocol prefix or an absolute one stays as it
 * is, any other goes after the last slash of @image_path.
 */
char *bdrv_resolve_backing_path(const char *image_path, const char *backing);
/*
 * Open @filename for a new image, creating it if need be: a lock held by
 * another process is reported as host_file_open() words it (the file is
 * untouched), anything else as "Could not create".  The file protocol's
 * creation options in @opts (nocow, extent_size_hint) apply to the empty
 * file; the other options are the format's.
 */
int bdrv_create_file(HostFile **pfile, const char *filename,
                     const QGuardOpts *opts, GError **errp);
/*
 * "@fmt: strerror(-@ret)" into *@errp (code -@ret), as QEMU's
 * error_setg_errno(); returns @ret, so that a failure is one statement.
 */
int bdrv_error_errno(GError **errp, int ret, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/* A failure (@ret < 0) as strerror into *@errp; returns @ret. */
int bdrv_io_error(int ret, GError **errp);
/*
 * The options of a file child (the image's own file, an external data
 * file): @driver must be "file" if given; @locking "off" sets *@no_lock,
 * "on" and "auto" leave it.  -EINVAL and the error otherwise.
 */
int bdrv_file_child_opts(const char *driver, const char *locking,
                         bool *no_lock, GError **errp);

/* node-options.c: options of every node, and of the file node. */
typedef struct BdrvNodeOptions {
    const char *node_name;      /* or NULL; points into the opts */
    BdrvDetectZeroes detect_zeroes;
    bool force_share;           /* force-share=on: no image locks */
    bool discard_unmap;         /* discard: passed on (default) */
} BdrvNodeOptions;

/*
 * Check the node options in @opts as QEMU does, for the image and for its
 * file node, and return the ones that change what qguard does.
 * @read_only and @file_direct are the image's access and the file node's
 * cache.direct.
 */
int bdrv_node_options_parse(const QGuardOpts *opts, bool read_only,
                            bool file_direct, BdrvNodeOptions *image,
                            BdrvNodeOptions *file, GError **errp);
/* Is @key an option of every node (format or file)? */
bool bdrv_node_option(const char *key);
/*
 * Is @key, without "file.", an option of the file node that protocol.c
 * does not handle itself?
 */
bool bdrv_file_node_option(const char *key);

/* protocol.c: the protocol node below an image (file:, blkdebug:). */
typedef struct BdrvProtocol {
    const char *protocol;       /* "file" or "blkdebug" */
    char *path;                 /* the host file, without any prefix */
    char *filename;             /* the image's name as QEMU shows it */
    /*
     * blkdebug's limits, 0 if not set: the request alignment and the
     * preferred zero write alignment, as host_file_set_limits() takes
     * them.  The others only change how QEMU splits requests, never a
     * byte of the file: they are checked as QEMU checks them, not used.
     */
    uint64_t align;
    uint64_t max_transfer;
    uint64_t opt_write_zero;
    uint64_t max_write_zero;
    uint64_t opt_discard;
    uint64_t max_discard;
} BdrvProtocol;

/* Is there a colon before any slash in @path (a protocol prefix)? */
bool bdrv_path_has_protocol(const char *path);
/*
 * Parse @filename (NULL if the file is given as file.filename) and check
 * the file.* options in @opts against the protocol they belong to.
 */
int bdrv_protocol_parse(BdrvProtocol *p, const char *filename,
                        const QGuardOpts *opts, GError **errp);
void bdrv_protocol_clear(BdrvProtocol *p);
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(BdrvProtocol, bdrv_protocol_clear)
/* The name of the host file to create for @filename, without "file:". */
char *bdrv_plain_filename(const char *filename, GError **errp);
/* The options in @opts under "prefix." with the prefix stripped. */
QGuardOpts *bdrv_opts_subset(const QGuardOpts *opts, const char *prefix);

static inline bool bdrv_is_broken(const QGuardImage *img)
{
    return __atomic_load_n(&img->broken, __ATOMIC_RELAXED);
}

/* Take @img out of service (or back, for a repair that runs alone). */
static inline void bdrv_set_broken(QGuardImage *img, bool broken)
{
    __atomic_store_n(&img->broken, broken, __ATOMIC_RELAXED);
}

/*
 * No other request can be in flight: the caller holds the image lock
 * exclusively, holds it shared as its only holder, or runs where no lock is
 * taken (open, close).  A request that holds it shared sees itself in the
 * count; one that takes it after this test looks its clusters up after
 * whatever the caller freed, so it cannot be on its way to one of them.
 */
static inline bool bdrv_runs_alone(const QGuardImage *img)
{
    return __atomic_load_n(&img->shared_holders, __ATOMIC_ACQUIRE) <= 1;
}

/* Print a diagnostic line through the message handler (stderr default). */
void qguard_message(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/*
 * A line QEMU prints at once with error_report() before an operation
 * fails with an errno of its own: led by the tool's name, as there.
 */
void qguard_report_now(const char *msg);

/* Option value parsing with QEMU's messages. */
bool qguard_parse_bool(const char *name, const char *value, bool *out,
                       GError **errp);
/* A non-negative integer, decimal, octal or hex, as QEMU's numbers. */
bool qguard_parse_number(const char *str, uint64_t *value);

typedef enum BlockOptType {
    OPT_STRING,
    OPT_SIZE,
    OPT_NUMBER,
    OPT_BOOL,
} BlockOptType;

/* QEMU's message for an option value of the wrong syntax for its type. */
bool qguard_check_opt_syntax(const char *name, const char *value,
                             BlockOptType type, GError **errp);

#endif
