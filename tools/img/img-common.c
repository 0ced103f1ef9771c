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

const struct option img_image_long_options[] = {
    LONGOPT_HELP,
    LONGOPT_OBJECT,
    LONGOPT_IMAGE_OPTS,
    LONGOPT_FORCE_SHARE,
    LONGOPT_END
};

void img_common_opt(int c, ImgOpts *o)
{
    switch (c) {
    case 'f':
        o->fmt = optarg;
        break;
    case 'q':
        o->quiet = true;
        break;
    case 'U':
        o->force_share = true;
        break;
    case OPTION_IMAGE_OPTS:
        o->image_opts = true;
        break;
    case OPTION_OUTPUT:
        o->output = optarg;
        break;
    case OPTION_OBJECT:
        tool_object_option(optarg, 1);
        break;
    }
}

const char *img_one_filename(int argc, char **argv)
{
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    return argv[optind];
}

const char *img_one_filename_output(int argc, char **argv, const ImgOpts *o,
                                    OutputFormat *ofmt)
{
    const char *filename = img_one_filename(argc, argv);

    return parse_output_format(o->output, ofmt) ? filename : NULL;
}

void rate_limit_start(RateLimit *rl)
{
    rl->start = tool_now();
    rl->bytes = 0;
}

void rate_limit_wait(const RateLimit *rl)
{
    double due, elapsed;

    if (!rl->bps) {
        return;
    }
    due = (double)rl->bytes / rl->bps;
    elapsed = tool_seconds(tool_elapsed(rl->start, tool_now()));
    if (due > elapsed) {
        g_usleep((gulong)((due - elapsed) * G_USEC_PER_SEC));
    }
}

QGuardImage *img_open_opts(const ImgOpts *o, const char *filename,
                           unsigned flags)
{
    return img_open(o->image_opts, filename, o->fmt, flags, o->force_share);
}

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

bool qemu_knows_format(const char *fmt)
{
    static const char *const formats[] = {
        "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop",
        "compress", "copy-before-write", "copy-on-read", "dmg", "file",
        "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http",
        "https", "iscsi", "iser", "luks", "nbd", "nfs", "null-aio",
        "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2",
        "qed", "quorum", "raw", "rbd", "replication", "snapshot-access",
        "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
    };
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(formats); i++) {
        if (!strcmp(fmt, formats[i])) {
            return true;
        }
    }
    return false;
}

bool parse_cache_flags(const char *mode, unsigned *flags)
{
    return qguard_parse_cache_mode(mode, flags) == 0;
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

/* The name in a "  name=<type>  - description" help line. */
static char *help_line_name(const char *line)
{
    const char *start = line + strspn(line, " ");

    return g_strndup(start, strcspn(start, "="));
}

static gint compare_lines(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * As qemu-img: a target file name adds the file protocol's options (the
 * format's own win over a protocol option of the same name), all sorted.
 */
int print_create_help(const char *fmt, const char *filename)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *text = qguard_create_help(fmt, &err);
    g_auto(GStrv) lines = NULL;
    g_auto(GStrv) proto = NULL;
    g_autoptr(GPtrArray) all = g_ptr_array_new();
    g_autoptr(GHashTable) names = g_hash_table_new_full(g_str_hash,
                                                        g_str_equal, g_free,
                                                        NULL);
    guint i;

    if (!text) {
        error_report("%s", gerr_msg(err, -EINVAL));
        return 1;
    }
    if (!filename) {
        printf("Supported %s options:\n%s\n"
               "The protocol level may support further options.\n"
               "Specify the target filename to include those options.\n",
               fmt, text);
        return 0;
    }
    lines = g_strsplit(text, "\n", -1);
    proto = g_strsplit(qguard_file_create_help(), "\n", -1);
    for (i = 0; lines[i]; i++) {
        if (*lines[i]) {
            g_ptr_array_add(all, lines[i]);
            g_hash_table_add(names, help_line_name(lines[i]));
        }
    }
    for (i = 0; proto[i]; i++) {
        g_autofree char *name = help_line_name(proto[i]);

        if (*proto[i] && !g_hash_table_contains(names, name)) {
            g_ptr_array_add(all, proto[i]);
        }
    }
    g_ptr_array_sort(all, compare_lines);
    printf("Supported options:\n");
    for (i = 0; i < all->len; i++) {
        printf("%s\n", (const char *)g_ptr_array_index(all, i));
    }
    return 0;
}

QGuardOpts *parse_create_options(const char *raw, const char *prefix)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();

    if (*raw && qguard_opts_parse(opts, raw, NULL, &err) < 0) {
        error_report("%s%s", prefix, err->message);
        qguard_opts_free(opts);
        return NULL;
    }
    return opts;
}

/* "snapshot.id=..,snapshot.name=..", as QEMU's internal_snapshot_opts. */
bool img_parse_snapshot_param(const char *param, char **id, char **name)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = qguard_opts_new();
    bool ok = qguard_opts_parse(opts, param, NULL, &err) == 0;
    guint i;

    for (i = 0; ok && i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        if (strcmp(key, "snapshot.id") && strcmp(key, "snapshot.name")) {
            error_report("Invalid parameter '%s'", key);
            ok = false;
        }
    }
    if (!ok) {
        if (err) {
            error_report("%s", err->message);
        }
        error_report("Failed in parsing snapshot param '%s'", param);
    } else {
        *id = g_strdup(qguard_opts_get(opts, "snapshot.id"));
        *name = g_strdup(qguard_opts_get(opts, "snapshot.name"));
    }
    qguard_opts_free(opts);
    return ok;
}

/* An id first, then a name, as bdrv_snapshot_load_tmp_by_id_or_name(). */
int img_load_snapshot(QGuardImage *img, const char *id, const char *name,
                         const char *id_or_name)
{
    g_autoptr(GError) err = NULL;
    int ret;

    if (id_or_name) {
        ret = qguard_snapshot_load_tmp(img, id_or_name, NULL, &err);
        if (ret == -ENOENT || ret == -EINVAL) {
            g_clear_error(&err);
            ret = qguard_snapshot_load_tmp(img, NULL, id_or_name, &err);
        }
    } else {
        ret = qguard_snapshot_load_tmp(img, id, name, &err);
    }
    if (ret < 0) {
        error_report("Failed to load snapshot: %s", gerr_msg(err, ret));
    }
    return ret;
}
