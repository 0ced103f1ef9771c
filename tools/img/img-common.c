/* SPDX-License-Identifier: MIT */
/*
 * Helpers that several qemu-img commands share (see img.h).
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"

void qprintf(bool quiet, const char *fmt, ...)
{
    va_list ap;

    if (quiet) {
        return;
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

int64_t cvtnum_full(const char *name, const char *value, int64_t min,
                    int64_t max)
{
    uint64_t res = 0;
    int ret = tool_strtosz(value, &res);

    if (ret < 0 && ret != -ERANGE) {
        error_report("Invalid %s specified. You may use "
                     "k, M, G, T, P or E suffixes for", name);
        error_report("kilobytes, megabytes, gigabytes, terabytes, "
                     "petabytes and exabytes.");
        return ret;
    }
    if (ret < 0 || res > (uint64_t)max || res < (uint64_t)min) {
        error_report("Invalid %s specified. Must be between %" PRId64
                     " and %" PRId64 ".", name, min, max);
        return -ERANGE;
    }
    return (int64_t)res;
}

int64_t cvtnum(const char *name, const char *value)
{
    return cvtnum_full(name, value, 0, INT64_MAX);
}

/* Like qemu_strtoul(), strtoul() wraps a '-' number around. */
bool parse_ulong(const char *str, unsigned long *res)
{
    char *end;

    if (!str || !*str) {
        return false;
    }
    errno = 0;
    *res = strtoul(str, &end, 0);
    return errno == 0 && end != str && *end == '\0';
}

bool parse_output_format(const char *output, OutputFormat *ofmt)
{
    if (!output || !strcmp(output, "human")) {
        *ofmt = OFORMAT_HUMAN;
    } else if (!strcmp(output, "json")) {
        *ofmt = OFORMAT_JSON;
    } else {
        error_report("--output must be used with human or json as argument.");
        return false;
    }
    return true;
}

bool valid_cache_mode(const char *mode)
{
    static const char *const modes[] = {
        "none", "off", "directsync", "writeback", "unsafe", "writethrough",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(modes); i++) {
        if (!strcmp(mode, modes[i])) {
            return true;
        }
    }
    return false;
}

/*
 * qemu-img refuses -o lists that start with a comma, are empty, or end in
 * an odd number of commas (a dangling escape).
 */
static bool is_valid_option_list(const char *list)
{
    size_t len = strlen(list);
    size_t i;

    if (!list[0] || list[0] == ',') {
        return false;
    }
    for (i = len; i > 0 && list[i - 1] == ','; i--) {
    }
    return (len - i) % 2 == 0;
}

bool has_help_option(const char *list)
{
    const char *p = list;

    while (*p) {
        g_autoptr(GString) elem = g_string_new(NULL);

        while (*p) {
            if (*p == ',') {
                if (p[1] != ',') {
                    break;
                }
                p++;
            }
            g_string_append_c(elem, *p++);
        }
        if (*p == ',') {
            p++;
        }
        if (!strcmp(elem->str, "help") || !strcmp(elem->str, "?")) {
            return true;
        }
    }
    return false;
}

bool accumulate_options(GString *raw, const char *list)
{
    if (!is_valid_option_list(list)) {
        error_report("Invalid option list: %s", list);
        return false;
    }
    if (raw->len) {
        g_string_append_c(raw, ',');
    }
    g_string_append(raw, list);
    return true;
}

int print_create_help(const char *fmt)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *text = qguard_create_help(fmt, &err);

    if (!text) {
        error_report("%s", gerr_msg(err, -EINVAL));
        return 1;
    }
    fputs(text, stdout);
    return 0;
}

QGuardOpts *parse_create_options(const char *raw, const char *prefix)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();

    if (*raw && !qguard_opts_parse(opts, raw, NULL, &err)) {
        error_report("%s%s", prefix, err->message);
        qguard_opts_free(opts);
        return NULL;
    }
    return opts;
}

/* One row of qemu's snapshot table (bdrv_snapshot_dump), or its header. */
static void snapshot_dump(GString *out, const QGuardSnapshotInfo *sn)
{
    g_autoptr(GDateTime) date = NULL;
    g_autofree char *date_str = NULL;
    g_autofree char *vm_size = NULL;
    char clock_buf[64];
    char icount_buf[32] = "";
    uint64_t secs;

    if (!sn) {
        g_string_append_printf(out, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG",
                               "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        return;
    }
    date = g_date_time_new_from_unix_local(sn->date_sec);
    date_str = date ? g_date_time_format(date, "%Y-%m-%d %H:%M:%S")
                    : g_strdup("");
    secs = sn->vm_clock_nsec / 1000000000;
    snprintf(clock_buf, sizeof(clock_buf), "%02d:%02d:%02d.%03d",
             (int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000) % 1000));
    vm_size = qguard_size_to_str(sn->vm_state_size);
    if (sn->icount != UINT64_MAX) {
        snprintf(icount_buf, sizeof(icount_buf), "%" PRId64,
                 (int64_t)sn->icount);
    }
    g_string_append_printf(out, "%-9s %-16s %8s%20s%13s%11s",
                           sn->id ? sn->id : "", sn->name ? sn->name : "",
                           vm_size, date_str, clock_buf, icount_buf);
}

void snapshot_table(GString *out, const QGuardSnapshotInfo *sns,
                    guint count)
{
    guint i;

    g_string_append(out, "Snapshot list:\n");
    snapshot_dump(out, NULL);
    g_string_append_c(out, '\n');
    for (i = 0; i < count; i++) {
        snapshot_dump(out, &sns[i]);
        g_string_append_c(out, '\n');
    }
}

