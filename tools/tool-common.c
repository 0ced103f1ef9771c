/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by qguard-img and qguard-io (see tool-common.h).
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool-common.h"

const char *tool_name = "qguard";
static void (*tool_help)(void);

void tool_init(char **argv, void (*help)(void))
{
    /* Kept for the life of the process, like argv itself. */
    char *base = g_path_get_basename(argv[0]);

    tool_name = base;
    tool_help = help;
    g_set_prgname(base);
    argv[0] = base;
}

/* ---- Messages ----------------------------------------------------------- */

/*
 * "name: @prefix message" on stderr, and a newline unless @msg_newline
 * and the message has one of its own.
 */
static void vreport(const char *prefix, bool msg_newline, const char *fmt,
                    va_list ap)
{
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);

    fprintf(stderr, "%s: %s%s%s", tool_name, prefix, msg,
            msg_newline && strchr(msg, '\n') ? "" : "\n");
}

void error_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("", true, fmt, ap);
    va_end(ap);
}

void warn_report(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("warning: ", false, fmt, ap);
    va_end(ap);
}

const char *gerr_msg(const GError *err, int ret)
{
    return err ? err->message : g_strerror(-ret);
}

void error_report_err(const char *prefix, const GError *err, int ret)
{
    if (prefix) {
        error_report("%s: %s", prefix, gerr_msg(err, ret));
    } else {
        error_report("%s", gerr_msg(err, ret));
    }
}

void error_exit(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("", false, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '%s --help' for more information\n", tool_name);
    exit(EXIT_FAILURE);
}

/*
 * libqguard has no trace events, so every event a -T pattern names does
 * not exist; say so as qemu-io does for unknown ones ("-name" disables,
 * wildcards match nothing, silently).  @where locates a line of an events
 * file.
 */
static void trace_check_pattern(const char *pattern, const char *where)
{
    if (*pattern == '-') {
        pattern++;
    }
    if (!*pattern || strchr(pattern, '*')) {
        return;
    }
    if (where) {
        fprintf(stderr, "%s:%s: warning: trace event '%s' does not exist\n",
                tool_name, where, pattern);
    } else {
        warn_report("trace event '%s' does not exist", pattern);
    }
}

/* -T events=FILE: one pattern a line; '#' starts a comment line. */
static void trace_read_events(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    int lineno = 0;

    if (!f) {
        fprintf(stderr, "%s:%s: %s\n", tool_name, path, strerror(errno));
        exit(1);
    }
    while (fgets(line, sizeof(line), f)) {
        g_autofree char *where = NULL;

        lineno++;
        g_strstrip(line);
        if (line[0] == '#') {
            continue;
        }
        where = g_strdup_printf("%s:%d", path, lineno);
        trace_check_pattern(line, where);
    }
    fclose(f);
}

void tool_trace_option(const char *arg)
{
    g_auto(GStrv) elems = g_strsplit(arg, ",", -1);
    const char *enable = NULL, *events = NULL, *file = NULL;
    guint i;

    /*
     * The whole option string is checked before any of it takes effect;
     * a key given twice keeps its last value.
     */
    for (i = 0; elems[i]; i++) {
        char *eq = strchr(elems[i], '=');
        const char *key = elems[i], *value = "on";

        if (!eq && i == 0) {
            key = "enable";
            value = elems[i];
        } else if (!eq) {
            warn_report("short-form boolean option '%s' deprecated\n"
                        "Please use %s=on instead", elems[i], elems[i]);
        } else {
            *eq = '\0';
            value = eq + 1;
        }
        if (!strcmp(key, "enable")) {
            enable = value;
        } else if (!strcmp(key, "events")) {
            events = value;
        } else if (!strcmp(key, "file")) {
            file = value;
        } else {
            error_report("Invalid parameter '%s'", key);
            exit(1);
        }
    }
    /* QEMU's order: the pattern, the events file, then the log file. */
    if (enable) {
        trace_check_pattern(enable, NULL);
    }
    if (events) {
        trace_read_events(events);
    }
    if (file) {
        /* The log stays empty: there is nothing to trace. */
        FILE *f = fopen(file, "w");

        if (!f) {
            error_report("Error opening logfile %s: %s", file,
                         strerror(errno));
            exit(1);
        }
        fclose(f);
    }
}

/* ---- Numbers ------------------------------------------------------------ */

void warn_hex_suffix(const char *str)
{
    warn_report("Using a multiplier suffix on hex numbers is deprecated: %s",
                str);
}

int tool_strtosz(const char *str, uint64_t *size)
{
    bool hex_suffix;
    int ret = qguard_strtosz(str, size, &hex_suffix);

    if (hex_suffix) {
        warn_hex_suffix(str);
    }
    return ret;
}

/* ---- Time --------------------------------------------------------------- */

struct timespec tool_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

struct timespec tool_elapsed(struct timespec start, struct timespec end)
{
    end.tv_nsec -= start.tv_nsec;
    if (end.tv_nsec < 0) {
        end.tv_nsec += 1000000000L;
        end.tv_sec--;
    }
    end.tv_sec -= start.tv_sec;
    return end;
}

double tool_seconds(struct timespec t)
{
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* ---- qemu-img style option loops ---------------------------------------- */

int tool_getopt(int argc, char **argv, const char *shortopts,
                const struct option *longopts, int *longindex)
{
    int c = getopt_long(argc, argv, shortopts, longopts, longindex);

    switch (c) {
    case ':':
        error_exit("missing argument for option '%s'", argv[optind - 1]);
    case '?':
        error_exit("unrecognized option '%s'", argv[optind - 1]);
    case 'h':
        tool_help();
        exit(EXIT_SUCCESS);
    }
    return c;
}

/* ---- Progress ----------------------------------------------------------- */

void progress_init(Progress *p, bool enabled, float min_skip)
{
    p->enabled = enabled;
    p->current = 0;
    p->last_print = 0;
    p->min_skip = min_skip;
}

void progress_set(Progress *p, float value)
{
    if (value > 100.0f) {
        value = 100.0f;
    }
    p->current = value;
    if (!p->enabled) {
        return;
    }
    if (value > p->last_print + p->min_skip ||
        value < p->last_print - p->min_skip ||
        value == 0 || value == 100) {
        p->last_print = value;
        printf("    (%3.2f/100%%)\r", value);
        fflush(stdout);
    }
}

void progress_end(Progress *p)
{
    if (p->enabled) {
        printf("\n");
    }
}

void progress_cb(void *opaque, double percent)
{
    progress_set(opaque, (float)percent);
}

/* ---- Images ------------------------------------------------------------- */

/* Parse an --image-opts string; NULL after printing why not. */
static QGuardOpts *parse_image_opts(const char *str, bool force_share)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    const char *fs;

    if (qguard_opts_parse(opts, str, "file", &err) < 0) {
        error_report("%s", err->message);
        qguard_opts_free(opts);
        return NULL;
    }
    fs = qguard_opts_get(opts, "force-share");
    if (force_share && fs && strcmp(fs, "on")) {
        error_report("--force-share/-U conflicts with image options");
        qguard_opts_free(opts);
        return NULL;
    }
    return opts;
}

QGuardImage *img_open(bool image_opts, const char *filename,
                      const char *fmt, unsigned flags, bool force_share)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = NULL;
    QGuardImage *img = NULL;
    int ret;

    if (image_opts) {
        if (fmt) {
            error_report("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        opts = parse_image_opts(filename, force_share);
        if (!opts) {
            return NULL;
        }
    }
    /* QEMU refuses to share an image that it opens for writing. */
    if (force_share && (flags & QGUARD_OPEN_RDWR)) {
        error_report("Could not open '%s': force-share=on can only be used "
                     "with read-only images", filename);
        qguard_opts_free(opts);
        return NULL;
    }
    if (force_share) {
        /* Take no locks, so that an image in use elsewhere can be read. */
        if (!opts) {
            opts = qguard_opts_new();
        }
        qguard_opts_set(opts, "force-share", "on");
    }
    ret = qguard_image_open(&img, image_opts ? NULL : filename,
                            image_opts ? NULL : fmt, opts, flags, &err);
    qguard_opts_free(opts);
    if (ret < 0) {
        error_report("Could not open '%s': %s", filename, gerr_msg(err, ret));
        return NULL;
    }
    return img;
}

int img_close(QGuardImage *img)
{
    g_autoptr(GError) err = NULL;

    if (!img) {
        return 0;
    }
    if (qguard_image_close(img, &err) < 0) {
        error_report("%s", err ? err->message : "Failed to close the image");
        return -1;
    }
    return 0;
}
