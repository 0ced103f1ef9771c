/* SPDX-License-Identifier: MIT */
/*
 * The qemu-img commands of qguard-img, one file each (as git's builtin/),
 * and the helpers more than one of them uses.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Adding a command:
 *  1. Write tools/img/<cmd>.c with "int img_<cmd>(int argc, char **argv)",
 *     QEMU's name for it in qemu-img.c, so both read side by side.  argv[0]
 *     is the command name; parse the options with tool_getopt() (a
 *     shortopts string that starts with ':' and contains 'h', and
 *     LONGOPT_HELP among the long options) so that usage errors and -h
 *     behave as in every other command, and hand the options all commands
 *     share (-f, -q, -U, --image-opts, --output, --object) to
 *     img_common_opt() in the switch's default case.  Return the exit
 *     status.
 *  2. Declare it below.
 *  3. Add its row, with the usage line(s) qemu-img prints for it, to
 *     img_cmds[] in qguard-img.c: --help is generated from that table.
 *  4. Add the file to img_sources in meson.build.
 */
#ifndef QGUARD_IMG_H
#define QGUARD_IMG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "qguard.h"
#include "qobject.h"
#include "tool-common.h"
#include "tool-info.h"

/* The largest request QEMU's block layer issues at once. */
#define REQUEST_MAX_BYTES   ((uint64_t)(INT_MAX >> 9) << 9)
#define SECTOR_SIZE         512
/* The buffer size of qemu-img's convert, compare and rebase. */
#define IO_BUF_SIZE         (2 * 1024 * 1024)

/* Long options without a short equivalent. */
enum {
    OPTION_OUTPUT = 256,
    OPTION_BACKING_CHAIN,
    OPTION_IMAGE_OPTS,
    OPTION_PATTERN,
    OPTION_FLUSH_INTERVAL,
    OPTION_NO_DRAIN,
    OPTION_PREALLOCATION,
    OPTION_SHRINK,
    OPTION_RANDOM,
    OPTION_BITMAPS,
    OPTION_SKIP_BROKEN,
    OPTION_SALVAGE,
    OPTION_TARGET_IMAGE_OPTS,
    OPTION_TARGET_IS_ZERO,
    OPTION_OBJECT,
    OPTION_FORCE,
    OPTION_SIZE,
};

/* The long options several commands share (each also has a short one). */
#define LONGOPT_HELP        { "help", no_argument, NULL, 'h' }
#define LONGOPT_FORMAT      { "format", required_argument, NULL, 'f' }
#define LONGOPT_FORCE_SHARE { "force-share", no_argument, NULL, 'U' }
#define LONGOPT_IMAGE_OPTS  { "image-opts", no_argument, NULL, \
                              OPTION_IMAGE_OPTS }
#define LONGOPT_OUTPUT      { "output", required_argument, NULL, \
                              OPTION_OUTPUT }
#define LONGOPT_OBJECT      { "object", required_argument, NULL, \
                              OPTION_OBJECT }
#define LONGOPT_END         { NULL, 0, NULL, 0 }

/*
 * The options that mean the same in every command that takes them (which
 * ones it takes, its shortopts and long_options say).
 */
typedef struct ImgOpts {
    const char *fmt;        /* -f, --format */
    const char *output;     /* --output */
    bool image_opts;        /* --image-opts */
    bool force_share;       /* -U, --force-share */
    bool quiet;             /* -q */
} ImgOpts;

typedef enum OutputFormat {
    OFORMAT_HUMAN,
    OFORMAT_JSON,
} OutputFormat;

/*
 * The long options of a command that opens images and has no others:
 * --help, --object, --image-opts, --force-share.
 */
extern const struct option img_image_long_options[];

/* ---- The commands ------------------------------------------------------- */

int img_amend(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_bitmap(int argc, char **argv);
int img_check(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_create(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_info(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);

/* ---- Shared by several commands (img-common.c) -------------------------- */

/*
 * Record option @c in @o if it is one of ImgOpts' (--object is accepted
 * and ignored).  Commands call it for the options their own switch does
 * not handle.
 */
void img_common_opt(int c, ImgOpts *o);
/* After the options, exactly one file name: it, or a usage error. */
const char *img_one_filename(int argc, char **argv);
/*
 * The same, then --output parsed into *@ofmt: NULL after printing why it
 * is invalid.
 */
const char *img_one_filename_output(int argc, char **argv, const ImgOpts *o,
                                    OutputFormat *ofmt);
/* img_open() with the file options of @o. */
QGuardImage *img_open_opts(const ImgOpts *o, const char *filename,
                           unsigned flags);

/*
 * -r of commit and convert: QEMU throttles the writes to the target to
 * @bps bytes per second on average.  The caller adds what it writes to
 * @bytes and calls rate_limit_wait() between requests.
 */
typedef struct RateLimit {
    int64_t bps;                /* 0: no limit */
    struct timespec start;
    uint64_t bytes;
} RateLimit;

/* The clock starts now. */
void rate_limit_start(RateLimit *rl);
/* Sleep until the bytes so far are due at the limit. */
void rate_limit_wait(const RateLimit *rl);

/* printf() unless -q was given. */
void qprintf(bool quiet, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/*
 * Byte counts with qemu-img's cvtnum() messages: a syntax error gets the
 * two-line suffix hint, a value outside [min, max] the range message.
 * Returns the value or a negative errno.
 */
int64_t cvtnum_full(const char *name, const char *value, int64_t min,
                    int64_t max);
int64_t cvtnum(const char *name, const char *value);
/* qemu_strtoul() as qemu-img uses it: base 0, the whole string. */
bool parse_ulong(const char *str, unsigned long *res);
/* --output: "human" (also when NULL) or "json"; prints the error. */
bool parse_output_format(const char *output, OutputFormat *ofmt);
/*
 * -t/-T: QEMU's cache mode names into QGUARD_OPEN_CACHE_MASK bits of
 * @flags; false for an unknown one (each command has its own message).
 */
bool parse_cache_flags(const char *mode, unsigned *flags);
/*
 * Is @fmt one of the formats Debian's qemu-img 7.2 knows?  Where QEMU
 * names a format it knows but cannot use for something, qguard gives the
 * same message for formats it does not implement.
 */
bool qemu_knows_format(const char *fmt);

/*
 * -o: append one option list (false after printing why it is invalid);
 * qemu-img joins them with commas and parses the result once, so a later
 * value for the same key wins.
 */
bool accumulate_options(GString *raw, const char *list);
/* Is one element of @list (",," being an escaped comma) "help" or "?"? */
bool has_help_option(const char *list);
/*
 * "-o help": the creation options of @fmt, with the file protocol's if
 * there is a target @filename (may be NULL); returns the exit status.
 */
int print_create_help(const char *fmt, const char *filename);
/*
 * Parse the accumulated -o string.  A syntax error is reported with @prefix
 * (qemu-img create puts the file name there, convert nothing).
 */
QGuardOpts *parse_create_options(const char *raw, const char *prefix);
/* -l "snapshot.id=..,snapshot.name=..": false after reporting an error. */
bool img_parse_snapshot_param(const char *param, char **id, char **name);
/*
 * Read snapshot @id/@name, or @id_or_name (an id first, then a name), from
 * now on instead of the active disk (-l); reports a failure.
 */
int img_load_snapshot(QGuardImage *img, const char *id, const char *name,
                      const char *id_or_name);

/* ---- Backing chains and data (chain.c) -------------------------------- */

/*
 * QEMU's path_combine(): @name relative to the directory of @base (a file
 * name), unless it is absolute.
 */
char *path_combine(const char *base, const char *name);
/* Is @path (a file name to open) the file of @img?  By real path. */
bool same_file(const char *path, QGuardImage *img);
/*
 * The image that @name stands for in @top's chain, as QEMU finds it: each
 * image resolves the name relative to its own directory and compares it
 * with its backing file.  *@depth counts from 1 (the backing file of
 * @top).  NULL if no image in the chain is that file.
 */
QGuardImage *find_backing_image(QGuardImage *top, const char *name,
                                int *depth);
/* Is @layer in @top's chain and above @base (@top itself counts)? */
bool is_above(QGuardImage *top, QGuardImage *layer, QGuardImage *base);
/*
 * QEMU's bdrv_is_allocated_above(): does an image from @top down to, not
 * including, @base (NULL: the whole chain) decide what [offset, +*bytes)
 * reads?  Past the end of a shorter image in between, its zeros count as
 * allocated there.  *@bytes is shortened to the extent with the same
 * answer.  0 or a negative errno.
 */
int is_allocated_above(QGuardImage *top, QGuardImage *base, uint64_t offset,
                       uint64_t *bytes, bool *allocated);
/*
 * Does the first sector of the buffers differ?  *@pnum: the length of the
 * prefix, in whole sectors up to @bytes, that gives the same answer.
 */
bool compare_buffers(const uint8_t *buf1, const uint8_t *buf2,
                     uint64_t bytes, uint64_t *pnum);

#endif /* QGUARD_IMG_H */
