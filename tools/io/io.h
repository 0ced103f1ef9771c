/* SPDX-License-Identifier: MIT */
/*
 * The qemu-io commands of qguard-io, grouped by family in tools/io/, and
 * what they share.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Adding a command:
 *  1. In the file of its family (or a new one), write
 *     "static int <name>_f(int argc, char **argv)" (QEMU's name in
 *     qemu-io-cmds.c) and "const Command <name>_cmd" with its argument
 *     counts, flags, usage ("args"), one-line summary and optional help
 *     text.  argv[0] is the command name; options are read with getopt(),
 *     and an unknown one ends in "return command_usage(&<name>_cmd);".
 *     Failures are printed to stdout, as qemu-io prints them, and returned
 *     as a negative errno (the exit status becomes 1).
 *  2. Declare the Command below.
 *  3. Add it, in name order, to commands[] in qguard-io.c: "help" lists
 *     that table.
 *  4. A new file goes into io_sources in meson.build.
 */
#ifndef QGUARD_IO_H
#define QGUARD_IO_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <glib.h>

#include "qguard.h"
#include "qobject.h"
#include "tool-common.h"
#include "tool-info.h"

/* The largest request QEMU's block layer accepts: INT_MAX, sector-aligned. */
#define REQUEST_MAX_BYTES   ((uint64_t)(INT_MAX >> 9) << 9)
#define SECTOR_SIZE         512

/* ---- Commands ----------------------------------------------------------- */

enum {
    /* Runs without an image (open, help, sleep, ...). */
    CMD_NOFILE_OK = 1 << 0,
    /* Needs a writable image; checked before the options are parsed. */
    CMD_WRITE     = 1 << 1,
};

typedef int CmdFunc(int argc, char **argv);

typedef struct Command {
    const char *name;
    const char *altname;
    CmdFunc *func;
    int argmin;
    int argmax;             /* -1: unlimited */
    unsigned flags;
    const char *args;       /* NULL: the command takes no arguments */
    const char *oneline;
    const char *help;       /* printed after the usage by "help <name>" */
} Command;

/* rw.c: data transfer */
extern const Command read_cmd, readv_cmd, aio_read_cmd;
extern const Command write_cmd, writev_cmd, aio_write_cmd, aio_flush_cmd;
/* image.c: the open image */
extern const Command discard_cmd, flush_cmd, truncate_cmd, length_cmd;
extern const Command info_cmd, alloc_cmd, map_cmd;
/* open.c */
extern const Command open_cmd, close_cmd, reopen_cmd;
/* debug.c */
extern const Command break_cmd, remove_break_cmd, resume_cmd, wait_break_cmd;
extern const Command abort_cmd, sigraise_cmd, sleep_cmd;
/* snapshot.c */
extern const Command snapshot_apply_cmd, snapshot_create_cmd;
extern const Command snapshot_delete_cmd, snapshot_list_cmd;
/* overlap.c: qguard's own */
extern const Command overlap_stats_cmd, overlap_stats_reset_cmd;

/* Prints "<name> <args> -- <oneline>" (qemuio_command_usage); -EINVAL. */
int command_usage(const Command *ct);

/* ---- The open image (open.c) -------------------------------------------- */

/* NULL when no image is open. */
extern QGuardImage *image;
/* --image-opts: the file argument and "open" take option strings. */
extern bool image_opts_mode;

typedef struct OpenParams {
    bool read_only;
    bool snapshot;
    /* QGUARD_OPEN_CACHE_MASK bits; qemu-io's default is writethrough. */
    unsigned cache_flags;
    bool native_aio;
    bool force_share;
    bool copy_on_read;
    const char *discard;        /* -d, or NULL */
} OpenParams;

/*
 * Open the image for the session; @opts (may be NULL) is consumed.
 * Returns 0 or a negative errno after printing the error.
 */
int open_image(const char *name, const char *format, QGuardOpts *opts,
               const OpenParams *p);
/* What qemu-io starts "open" and the command line with. */
#define OPEN_PARAMS_INIT { .cache_flags = QGUARD_OPEN_WRITETHROUGH }
/*
 * Deliver outstanding aio reports and close the image, if one is open.
 * A failure to write back what the image held (writeback mode) is printed
 * and returned: the run must not end with exit status 0.
 */
int close_image(void);
/*
 * Parse "-o" style options into @opts, warning about bare keys as
 * QemuOpts does; false after printing the error.
 */
bool parse_open_options(QGuardOpts *opts, const char *str);
/*
 * Record option @c (with optarg) in @p if it is one of the open options
 * that "open" and the command line share (-s -n -C -r -k -U -t -d -i): 1.
 * -n is cache mode none with the write cache on, as in qemu-io.
 * 0 if it is not; -EINVAL after printing why its argument is wrong.
 */
int open_param_opt(int c, OpenParams *p);

/* ---- Arguments (io-common.c) -------------------------------------------- */

/* A byte count or offset as qemu-io reads it; negative errno on failure. */
int64_t cvtnum(const char *s);
/* cvtnum(), printing qemu-io's "Parsing error" line on failure. */
int64_t cvtnum_arg(const char *arg);
/*
 * OFF and LEN (@args[0], @args[1]) of a single-buffer request.  With
 * @limit, a LEN above REQUEST_MAX_BYTES is refused with "length cannot
 * exceed N<limit_hint>, given LEN".  0 or a negative errno, printed.
 */
int parse_offset_length(char **args, bool limit, const char *limit_hint,
                        int64_t *offset, int64_t *count);
/*
 * The lengths of a readv/writev/aio request; their sum goes to @total.
 * Prints the problem and returns false if one is not acceptable.
 */
bool parse_lengths(char **argv, int nr, int64_t *total);
/* -b and -c work on whole sectors: 0, or -EINVAL after saying which. */
int check_sector_aligned(int64_t offset, int64_t count);
/* A fill byte for -P; -1 after printing why @arg is not one. */
int parse_pattern(const char *arg);

/* ---- Output (io-common.c) ----------------------------------------------- */

/*
 * "64 KiB", "1.500 KiB", "512 bytes", "276.251183 bytes": three decimals
 * in binary units, six below 1 KiB, and a ".000..." tail cut off.
 */
void cvtstr(double value, char *str, size_t size);
/* The statistics of one request that ran from @t1 to @t2 (-C: as CSV). */
void print_report(FILE *out, const char *op, struct timespec t1,
                  struct timespec t2, int64_t offset, int64_t count,
                  bool Cflag);
/* qemu-io's hex dump (-v). */
void dump_buffer(FILE *out, const uint8_t *buf, int64_t offset,
                 int64_t len);

/* ---- Buffers (io-common.c) ---------------------------------------------- */

/* qemu-io reports that the range differs, not where. */
bool pattern_matches(const uint8_t *buf, int pattern, int64_t len);
/* @len bytes of @pattern; free with g_free(). */
uint8_t *alloc_buffer(int64_t len, int pattern);
/*
 * The buffer for "write -s": the file's first @len bytes, repeated if the
 * file is shorter.  NULL after printing the error.
 */
uint8_t *alloc_buffer_from_file(int64_t len, const char *path);

/* ---- Requests (io-common.c) --------------------------------------------- */

/*
 * A request that has to wait for its I/O lets qemu-io's event loop run,
 * which is when earlier aio requests report their completion: pass the
 * result of a synchronous request through this.
 */
int after_sync_request(int ret);
int do_pread(uint8_t *buf, int64_t offset, int64_t bytes);
int do_load_vmstate(uint8_t *buf, int64_t offset, int64_t bytes);
int do_save_vmstate(const uint8_t *buf, int64_t offset, int64_t bytes);
int do_pwrite(const uint8_t *buf, int64_t offset, int64_t bytes,
              unsigned flags);
int do_pwrite_zeroes(int64_t offset, int64_t bytes, unsigned flags);
int do_pwrite_compressed(const uint8_t *buf, int64_t offset, int64_t bytes);
/*
 * Is [offset, offset + bytes) allocated in the top image?  Stores the
 * length of the extent with the same answer in @pnum (0 at the end).
 */
int is_allocated(int64_t offset, int64_t bytes, int64_t *pnum);
/* Would reading the range touch any data (rather than only metadata)? */
bool range_has_data(int64_t offset, int64_t bytes);

/*
 * aio_read/aio_write run synchronously, but qemu-io prints their reports
 * only when its event loop runs.  A report is written to the FILE from
 * aio_report_open() and queued by aio_report_close(); @immediate marks a
 * request that completed without I/O.  aio_deliver_reports() prints the
 * queue in qemu-io's order.
 */
FILE *aio_report_open(char **text, size_t *len);
void aio_report_close(FILE *f, char **text, bool immediate);
void aio_deliver_reports(void);

#endif /* QGUARD_IO_H */
