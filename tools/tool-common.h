/* SPDX-License-Identifier: MIT */
/*
 * What qguard-img and qguard-io share: the program name in messages,
 * QEMU-style error and warning lines, sizes as QEMU parses them, the
 * clock, the option loop of qemu-img commands, the progress meter and
 * opening an image as qemu-img does.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_TOOL_COMMON_H
#define QGUARD_TOOL_COMMON_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include <glib.h>

#include "qguard.h"

#ifndef QGUARD_VERSION
#define QGUARD_VERSION "0.1.0"
#endif

/*
 * The name the tool was run as (basename of argv[0]): QEMU's iotests run
 * the tools through symlinks named qemu-img and qemu-io and expect that
 * name in every message.
 */
extern const char *tool_name;

/*
 * Set tool_name from argv[0] and remember the function that prints the
 * tool's --help (for tool_getopt).  Also makes getopt's own messages use
 * the short name.
 */
void tool_init(char **argv, void (*help)(void));

/* ---- Messages ----------------------------------------------------------- */

/*
 * "name: message".  Library messages that carry QEMU's hint end with the
 * newline qemu-img prints after the hint; only a message without any
 * newline gets one added.
 */
void error_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void warn_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* "name: prefix: message" for a library error (@err may be NULL). */
void error_report_err(const char *prefix, const GError *err, int ret);
/* A usage error: the message, a pointer to --help, exit status 1. */
G_NORETURN void error_exit(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* The message of @err, or strerror(-ret) when there is none. */
const char *gerr_msg(const GError *err, int ret);

/*
 * -T/--trace [[enable=]PATTERN][,events=FILE][,file=FILE], parsed and
 * checked as QEMU does.  libqguard has no trace events: each event named
 * gets QEMU's "does not exist" warning, and the log file stays empty.
 * Exits after an error.
 */
void tool_trace_option(const char *arg);

/*
 * --object DEF, checked as QEMU 7.2's tools check it (tools/object.c);
 * nothing is created.  "help" and "TYPE,help" print QEMU's lists and exit
 * 0; a definition QEMU refuses exits with @error_status (1, or compare's
 * 2) after its message.
 */
void tool_object_option(const char *def, int error_status);

/* ---- Numbers ------------------------------------------------------------ */

/*
 * QEMU's deprecation warning for a hex number with a suffix, which its
 * size parser prints as it reads one.
 */
void warn_hex_suffix(const char *str);
/* qguard_strtosz() with that warning: 0, -EINVAL or -ERANGE. */
int tool_strtosz(const char *str, uint64_t *size);

/* ---- Time --------------------------------------------------------------- */

struct timespec tool_now(void);
/* @end - @start. */
struct timespec tool_elapsed(struct timespec start, struct timespec end);
double tool_seconds(struct timespec t);

/* ---- qemu-img style option loops ---------------------------------------- */

/*
 * getopt_long() for a command whose @shortopts start with ':' (so that
 * getopt stays silent): a missing argument or an unknown option is a
 * usage error with qemu-img's message, -h prints the help and exits.
 * Returns the next option, or -1 after the last.
 */
int tool_getopt(int argc, char **argv, const char *shortopts,
                const struct option *longopts, int *longindex);

/* ---- Progress ----------------------------------------------------------- */

/*
 * qemu-img's progress meter: "    (NN.NN/100%)\r" whenever the value moved
 * by more than min_skip, or is 0 or 100; a newline at the end.  Floats on
 * purpose, so that rounding in the printed figures is the same.
 */
typedef struct Progress {
    bool enabled;
    float current;
    float last_print;
    float min_skip;
} Progress;

void progress_init(Progress *p, bool enabled, float min_skip);
void progress_set(Progress *p, float value);
void progress_end(Progress *p);
/* A QGuardProgressFunc that feeds a Progress. */
void progress_cb(void *opaque, double percent);

/* ---- Images ------------------------------------------------------------- */

/*
 * Open as qemu-img's img_open() does: a file name with an optional format,
 * or with @image_opts an option string (a bare first element is "file").
 * Errors are printed; NULL means the command has failed.
 */
QGuardImage *img_open(bool image_opts, const char *filename,
                      const char *fmt, unsigned flags, bool force_share);
/* Close, reporting a failed final flush; -1 then, else 0. */
int img_close(QGuardImage *img);

#endif /* QGUARD_TOOL_COMMON_H */
