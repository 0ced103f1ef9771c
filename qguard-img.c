/* SPDX-License-Identifier: MIT */
/*
 * qguard-img: a command-line twin of qemu-img (7.2) for qcow2 and raw.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Scripts written for qemu-img must work unchanged, so every command keeps
 * qemu-img's syntax, its stdout/stderr text and its exit codes; the only
 * intended difference is the program name in front of error messages.
 * Where qemu-img's behaviour depends on its buffering (stdout is fully
 * buffered when redirected, stderr is not), we rely on the same stdio
 * defaults and flush only where qemu-img flushes, so that interleaved
 * output comes out in the same order.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <glib.h>

#include "qguard.h"
#include "qobject.h"
#include "tool-info.h"

#define PROG_NAME "qguard-img"
#define PROG_VERSION "0.1.0"

/* qemu-img's copy buffer and its limits, in bytes. */
#define IO_BUF_SIZE         (2 * 1024 * 1024)
#define MAX_BUF_BYTES       (16 * 1024 * 1024)
#define SECTOR_SIZE         512
/* The largest request QEMU's block layer issues at once. */
#define REQUEST_MAX_BYTES   ((uint64_t)(INT_MAX >> 9) << 9)
#define MAX_COROUTINES      16

#define DIV_ROUND_UP(n, d)  (((n) + (d) - 1) / (d))
#define ROUND_UP(n, d)      (DIV_ROUND_UP(n, d) * (d))

typedef enum OutputFormat {
    OFORMAT_HUMAN,
    OFORMAT_JSON,
} OutputFormat;

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
    OPTION_UNSUPPORTED,
};

/* ---- Messages ------------------------------------------------------------ */

/*
 * "qguard-img: message".  A multi-line message is QEMU's message plus its
 * hint, which qemu-img prints verbatim: the library ends such messages with
 * a newline exactly when qemu-img's output has one, so only single-line
 * messages get a newline added here.
 */
static void G_GNUC_PRINTF(1, 2) error_report(const char *fmt, ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG_NAME ": %s%s", msg, strchr(msg, '\n') ? "" : "\n");
}

static void G_GNUC_PRINTF(1, 2) warn_report(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG_NAME ": warning: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Usage errors: qemu-img adds a pointer to --help and exits with 1. */
static G_NORETURN void G_GNUC_PRINTF(1, 2) error_exit(const char *fmt, ...)
{
    va_list ap;

    fputs(PROG_NAME ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry '" PROG_NAME " --help' for more information\n", stderr);
    exit(EXIT_FAILURE);
}

static G_NORETURN void missing_argument(const char *option)
{
    error_exit("missing argument for option '%s'", option);
}

static G_NORETURN void unrecognized_option(const char *option)
{
    error_exit("unrecognized option '%s'", option);
}

static void G_GNUC_PRINTF(2, 3) qprintf(bool quiet, const char *fmt, ...)
{
    va_list ap;

    if (quiet) {
        return;
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

static G_NORETURN void help(void)
{
    static const char text[] =
        PROG_NAME " version " PROG_VERSION "\n"
        "usage: " PROG_NAME " [-h | --help | -V | --version] command "
        "[command options]\n"
        "Inspect, create and modify qcow2 and raw disk images "
        "(qemu-img compatible).\n"
        "\n"
        "Commands:\n"
        "  bench [-c count] [-d depth] [-f fmt] "
        "[--flush-interval=flush_interval]\n"
        "        [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] "
        "[-q]\n"
        "        [-s buffer_size] [-S step_size] [-t cache] [-w] "
        "[--random[=seed]]\n"
        "        [--image-opts] [-U] filename\n"
        "  check [--image-opts] [-q] [-f fmt] [--output=ofmt] "
        "[-r [leaks | all]]\n"
        "        [-T src_cache] [-U] filename\n"
        "  convert [--image-opts] [-U] [-c] [-p] [-q] [-n] [-f fmt] "
        "[-t cache]\n"
        "        [-T src_cache] [-O output_fmt] [-o options] "
        "[-S sparse_size]\n"
        "        [-m num_coroutines] [-W] filename [filename2 [...]] "
        "output_filename\n"
        "  create [-q] [-p] [-f fmt] [-b backing_file [-F backing_fmt]] "
        "[-u]\n"
        "        [-o options] filename [size]\n"
        "  info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] "
        "[-U]\n"
        "        filename\n"
        "  map [--image-opts] [-f fmt] [--start-offset=offset] "
        "[--max-length=len]\n"
        "        [--output=ofmt] [-U] filename\n"
        "  resize [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] "
        "[--shrink]\n"
        "        filename [+ | -]size\n"
        "  snapshot [--image-opts] [-U] [-q] "
        "[-l | -a snapshot | -c snapshot |\n"
        "        -d snapshot] filename\n"
        "\n"
        "Arguments:\n"
        "  'fmt' is 'qcow2' or 'raw'; it is probed when not given.\n"
        "  'size' and the other byte counts take the suffixes k, M, G, T, P "
        "and E\n"
        "    (powers of 1024); 'b' means bytes.\n"
        "  'options' is a comma-separated list of name=value pairs; "
        "'-o help' lists\n"
        "    the creation options of a format.  qcow2 runtime options such "
        "as\n"
        "    overlap-check=all are accepted there too.\n"
        "  --image-opts: 'filename' is an option string such as\n"
        "    driver=qcow2,file.filename=disk.qcow2,overlap-check=all\n"
        "  'ofmt' is 'human' or 'json'.\n"
        "  'cache' modes are accepted for compatibility and have no effect.\n"
        "  -q prints nothing but errors; -p shows progress (convert, "
        "create).\n"
        "  check -r leaks repairs leaked clusters only, -r all repairs every "
        "kind of\n"
        "    error (with a higher risk of choosing the wrong fix).\n"
        "  convert -S sets the run of zero bytes (default 4k) that stays "
        "unallocated\n"
        "    in the target; 0 allocates everything.  -n writes into an "
        "existing\n"
        "    target.  Compressed output (-c) is not supported yet.\n"
        "  bench issues its requests one at a time: the depth (-d) is "
        "accepted and\n"
        "    printed but does not make requests overlap.  --random[=seed] "
        "uses\n"
        "    uniformly random buffer-aligned offsets, the same ones for the "
        "same\n"
        "    seed.  Unless -q, overlap-protection statistics follow the run.\n"
        "\n"
        "Exit status: 0 on success, 1 on error; check also returns 2 "
        "(corruptions),\n"
        "3 (leaked clusters only) and 63 (format without checks).\n";

    fputs(text, stdout);
    exit(EXIT_SUCCESS);
}

/* ---- Value parsing ------------------------------------------------------- */

/*
 * Byte counts with qemu-img's cvtnum() messages: a syntax error gets the
 * two-line suffix hint, a value outside [min, max] the range message.
 */
static int64_t cvtnum_full(const char *name, const char *value, int64_t min,
                           int64_t max)
{
    g_autoptr(GError) err = NULL;
    uint64_t res = 0;
    bool range = false;

    if (!qguard_parse_size(value, &res, &err)) {
        if (err->code != ERANGE) {
            error_report("Invalid %s specified. You may use "
                         "k, M, G, T, P or E suffixes for", name);
            error_report("kilobytes, megabytes, gigabytes, terabytes, "
                         "petabytes and exabytes.");
            return -EINVAL;
        }
        range = true;
    }
    if (range || res > (uint64_t)max || res < (uint64_t)min) {
        error_report("Invalid %s specified. Must be between %" PRId64
                     " and %" PRId64 ".", name, min, max);
        return -ERANGE;
    }
    return (int64_t)res;
}

static int64_t cvtnum(const char *name, const char *value)
{
    return cvtnum_full(name, value, 0, INT64_MAX);
}

/* qemu_strtoul() as qemu-img uses it: base 0, the whole string, wraps '-'. */
static bool parse_ulong(const char *str, unsigned long *res)
{
    char *end;

    if (!str || !*str) {
        return false;
    }
    errno = 0;
    *res = strtoul(str, &end, 0);
    return errno == 0 && end != str && *end == '\0';
}

static bool parse_output_format(const char *output, OutputFormat *ofmt)
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

/* The cache modes QEMU knows; none of them changes what qguard does. */
static bool valid_cache_mode(const char *mode)
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

static bool valid_prealloc_mode(const char *mode)
{
    return !strcmp(mode, "off") || !strcmp(mode, "metadata") ||
           !strcmp(mode, "falloc") || !strcmp(mode, "full");
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

/* Is one element of @list (",," being an escaped comma) "help" or "?"? */
static bool has_help_option(const char *list)
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

/* ---- Progress ------------------------------------------------------------ */

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

static void progress_init(Progress *p, bool enabled, float min_skip)
{
    p->enabled = enabled;
    p->current = 0;
    p->last_print = 0;
    p->min_skip = min_skip;
}

static void progress_set(Progress *p, float value)
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

static void progress_end(Progress *p)
{
    if (p->enabled) {
        printf("\n");
    }
}

static void create_progress_cb(void *opaque, double percent)
{
    progress_set(opaque, (float)percent);
}

/* ---- Opening images ------------------------------------------------------ */

/*
 * Open as qemu-img's img_open() does: a file name with an optional format,
 * or with --image-opts an option string (a bare first element is "file").
 * Errors are printed; NULL means the command has failed.
 */
static QGuardImage *img_open(bool image_opts, const char *filename,
                             const char *fmt, unsigned flags,
                             bool force_share)
{
    g_autoptr(GError) err = NULL;
    QGuardOpts *opts = NULL;
    QGuardImage *img = NULL;
    int ret;

    if (image_opts) {
        const char *fs;

        if (fmt) {
            error_report("--image-opts and --format are mutually exclusive");
            return NULL;
        }
        opts = qguard_opts_new();
        if (!qguard_opts_parse(opts, filename, "file", &err)) {
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
    }
    /*
     * qguard takes no locks, so -U changes nothing, but QEMU refuses to
     * share an image that it opens for writing; keep that behaviour.
     */
    if (force_share && (flags & QGUARD_OPEN_RDWR)) {
        error_report("Could not open '%s': force-share=on can only be used "
                     "with read-only images", filename);
        qguard_opts_free(opts);
        return NULL;
    }
    ret = qguard_image_open(&img, image_opts ? NULL : filename,
                            image_opts ? NULL : fmt, opts, flags, &err);
    qguard_opts_free(opts);
    if (ret < 0) {
        error_report("Could not open '%s': %s", filename,
                     err ? err->message : g_strerror(-ret));
        return NULL;
    }
    return img;
}

/* Close, reporting a failed final flush of an image we wrote to. */
static int img_close(QGuardImage *img)
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

static const char *gerr_msg(const GError *err, int ret)
{
    return err ? err->message : g_strerror(-ret);
}

/* ---- create -------------------------------------------------------------- */

/*
 * Append one -o list; qemu-img joins them with commas and parses the result
 * once, so a later value for the same key wins.
 */
static bool accumulate_options(GString *raw, const char *list)
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

static int print_create_help(const char *fmt)
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

/*
 * Parse the accumulated -o string.  A syntax error is reported with @prefix
 * (qemu-img create puts the file name there, convert nothing).
 */
static QGuardOpts *parse_create_options(const char *raw, const char *prefix)
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

static int img_create(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GString) raw_opts = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *desc = NULL;
    g_autofree char *size_str = NULL;
    g_autofree char *prefix = NULL;
    QGuardOpts *opts = NULL;
    const char *fmt = "raw";
    const char *base_fmt = NULL;
    const char *base_filename = NULL;
    const char *filename;
    bool quiet = false, unsafe = false, progress = false;
    int64_t img_size = -1;
    Progress prog;
    int ret = 1;
    int c;

    for (;;) {
        c = getopt_long(argc, argv, ":F:b:f:ho:pqu", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'F':
            base_fmt = optarg;
            break;
        case 'b':
            base_filename = optarg;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'o':
            if (!accumulate_options(raw_opts, optarg)) {
                goto out;
            }
            break;
        case 'p':
            progress = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            unsafe = true;
            break;
        }
    }

    filename = optind < argc ? argv[optind] : NULL;
    if (raw_opts->len && has_help_option(raw_opts->str)) {
        ret = print_create_help(fmt);
        goto out;
    }
    if (optind >= argc) {
        error_exit("Expecting image file name");
    }
    optind++;
    if (optind < argc) {
        img_size = cvtnum("image size", argv[optind++]);
        if (img_size < 0) {
            goto out;
        }
    }
    if (optind != argc) {
        error_exit("Unexpected argument: %s", argv[optind]);
    }

    prefix = g_strdup_printf("%s: ", filename);
    opts = parse_create_options(raw_opts->str, prefix);
    if (!opts) {
        goto out;
    }
    if (img_size >= 0) {
        if (qguard_opts_has(opts, "size")) {
            error_report("%s: The image size must be specified only once",
                         filename);
            goto out;
        }
        size_str = g_strdup_printf("%" PRId64, img_size);
        qguard_opts_set(opts, "size", size_str);
    }
    if (base_filename) {
        qguard_opts_set(opts, "backing_file", base_filename);
    }
    if (base_fmt) {
        qguard_opts_set(opts, "backing_fmt", base_fmt);
    }

    desc = qguard_create_prepare(filename, fmt, opts, unsafe, &err);
    if (!desc) {
        error_report("%s: %s", filename, gerr_msg(err, -EINVAL));
        goto out;
    }
    if (!quiet) {
        printf("Formatting '%s', %s\n", filename, desc);
        fflush(stdout);
    }
    progress_init(&prog, progress && !quiet, 1.0f);
    if (prog.enabled) {
        progress_set(&prog, 0);
    }
    if (qguard_image_create(filename, fmt, opts,
                            prog.enabled ? create_progress_cb : NULL, &prog,
                            &err) < 0) {
        progress_end(&prog);
        error_report("%s: %s", filename, gerr_msg(err, -EIO));
        goto out;
    }
    if (prog.enabled) {
        progress_set(&prog, 100);
    }
    progress_end(&prog);
    ret = 0;

out:
    qguard_opts_free(opts);
    return ret;
}

/* ---- info ---------------------------------------------------------------- */

static QObj *snapshot_to_qobj(const QGuardSnapshotInfo *sn)
{
    QObj *d = qobj_dict_new();

    qobj_dict_put_str(d, "id", sn->id ? sn->id : "");
    qobj_dict_put_str(d, "name", sn->name ? sn->name : "");
    qobj_dict_put_uint(d, "vm-state-size", sn->vm_state_size);
    qobj_dict_put_int(d, "date-sec", sn->date_sec);
    qobj_dict_put_int(d, "date-nsec", sn->date_nsec);
    qobj_dict_put_int(d, "vm-clock-sec", sn->vm_clock_nsec / 1000000000);
    qobj_dict_put_int(d, "vm-clock-nsec", sn->vm_clock_nsec % 1000000000);
    if (sn->icount != UINT64_MAX) {
        qobj_dict_put_uint(d, "icount", sn->icount);
    }
    return d;
}

/* qemu-img's ImageInfo as a value tree, for --output=json. */
static QObj *image_info_to_qobj(const QGuardImageInfo *info)
{
    QObj *d = qobj_dict_new();
    guint i;

    qobj_dict_put_str(d, "filename", info->filename);
    qobj_dict_put_str(d, "format", info->format);
    qobj_dict_put_bool(d, "dirty-flag", info->dirty_flag);
    if (info->actual_size >= 0) {
        qobj_dict_put_int(d, "actual-size", info->actual_size);
    }
    qobj_dict_put_uint(d, "virtual-size", info->virtual_size);
    if (info->cluster_size) {
        qobj_dict_put_uint(d, "cluster-size", info->cluster_size);
    }
    if (info->encrypted) {
        qobj_dict_put_bool(d, "encrypted", true);
    }
    if (info->backing_filename) {
        qobj_dict_put_str(d, "backing-filename", info->backing_filename);
        if (info->full_backing_filename) {
            qobj_dict_put_str(d, "full-backing-filename",
                              info->full_backing_filename);
        }
        if (info->backing_format) {
            qobj_dict_put_str(d, "backing-filename-format",
                              info->backing_format);
        }
    }
    if (info->nb_snapshots) {
        QObj *list = qobj_list_new();

        for (i = 0; i < info->nb_snapshots; i++) {
            qobj_list_append(list, snapshot_to_qobj(&info->snapshots[i]));
        }
        qobj_dict_put(d, "snapshots", list);
    }
    if (info->is_qcow2) {
        QObj *spec = qobj_dict_new();

        qobj_dict_put_str(spec, "type", "qcow2");
        qobj_dict_put(spec, "data", qcow2_format_specific_qobj(info));
        qobj_dict_put(d, "format-specific", spec);
    }
    return d;
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

static void snapshot_table(GString *out, const QGuardSnapshotInfo *sns,
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

static void dump_human_image_info(GString *out, const QGuardImageInfo *info)
{
    g_autofree char *vsize = qguard_size_to_str(info->virtual_size);
    g_autofree char *dsize = info->actual_size >= 0 ?
                             qguard_size_to_str(info->actual_size) :
                             g_strdup("unavailable");

    g_string_append_printf(out, "image: %s\n"
                           "file format: %s\n"
                           "virtual size: %s (%" PRIu64 " bytes)\n"
                           "disk size: %s\n",
                           info->filename, info->format, vsize,
                           info->virtual_size, dsize);
    if (info->encrypted) {
        g_string_append(out, "encrypted: yes\n");
    }
    if (info->cluster_size) {
        g_string_append_printf(out, "cluster_size: %" PRIu32 "\n",
                               info->cluster_size);
    }
    if (info->dirty_flag) {
        g_string_append(out, "cleanly shut down: no\n");
    }
    if (info->backing_filename) {
        g_string_append_printf(out, "backing file: %s",
                               info->backing_filename);
        if (!info->full_backing_filename) {
            g_string_append(out, " (cannot determine actual path)");
        } else if (strcmp(info->backing_filename,
                          info->full_backing_filename)) {
            g_string_append_printf(out, " (actual path: %s)",
                                   info->full_backing_filename);
        }
        g_string_append_c(out, '\n');
        if (info->backing_format) {
            g_string_append_printf(out, "backing file format: %s\n",
                                   info->backing_format);
        }
    }
    if (info->nb_snapshots) {
        snapshot_table(out, info->snapshots, info->nb_snapshots);
    }
    if (info->is_qcow2) {
        QObj *data = qcow2_format_specific_qobj(info);

        g_string_append(out, "Format specific information:\n");
        qobj_dump_human(out, 1, data);
        qobj_free(data);
    }
}

static void free_info_list(GPtrArray *list)
{
    guint i;

    for (i = 0; i < list->len; i++) {
        qguard_image_info_free(g_ptr_array_index(list, i));
    }
    g_ptr_array_free(list, TRUE);
}

/*
 * Like qemu-img, --backing-chain opens each image on its own (without its
 * backing file) and follows the backing file names, so a broken link is
 * reported with the name of the file that is missing and loops are caught
 * by name.
 */
static GPtrArray *collect_image_info_list(bool image_opts,
                                          const char *filename,
                                          const char *fmt, bool chain,
                                          bool force_share)
{
    g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash,
                                                       g_str_equal,
                                                       g_free, NULL);
    GPtrArray *list = g_ptr_array_new();
    g_autofree char *next_name = g_strdup(filename);
    g_autofree char *next_fmt = g_strdup(fmt);
    bool first = true;

    while (next_name) {
        g_autoptr(GError) err = NULL;
        QGuardImageInfo *info;
        QGuardImage *img;

        if (g_hash_table_contains(seen, next_name)) {
            error_report("Backing file '%s' creates an infinite loop.",
                         next_name);
            goto fail;
        }
        g_hash_table_add(seen, g_strdup(next_name));

        img = img_open(image_opts && first, next_name, next_fmt,
                       QGUARD_OPEN_NO_BACKING, force_share);
        if (!img) {
            goto fail;
        }
        if (qguard_image_get_info(img, &info, &err) < 0) {
            error_report("%s", gerr_msg(err, -EIO));
            qguard_image_close(img, NULL);
            goto fail;
        }
        qguard_image_close(img, NULL);
        g_ptr_array_add(list, info);
        first = false;

        g_clear_pointer(&next_name, g_free);
        g_clear_pointer(&next_fmt, g_free);
        if (chain) {
            if (info->full_backing_filename) {
                next_name = g_strdup(info->full_backing_filename);
            } else if (info->backing_filename) {
                error_report("Could not determine absolute backing filename,"
                             " but backing filename '%s' present",
                             info->backing_filename);
                goto fail;
            }
            next_fmt = g_strdup(info->backing_format);
        }
    }
    return list;

fail:
    free_info_list(list);
    return NULL;
}

static int img_info(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "backing-chain", no_argument, NULL, OPTION_BACKING_CHAIN },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    const char *fmt = NULL, *output = NULL, *filename;
    bool chain = false, image_opts = false, force_share = false;
    OutputFormat ofmt;
    GPtrArray *list;
    guint i;
    int c;

    for (;;) {
        c = getopt_long(argc, argv, ":f:hU", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case OPTION_BACKING_CHAIN:
            chain = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[optind];
    if (!parse_output_format(output, &ofmt)) {
        return 1;
    }

    list = collect_image_info_list(image_opts, filename, fmt, chain,
                                   force_share);
    if (!list) {
        return 1;
    }
    if (ofmt == OFORMAT_JSON) {
        QObj *obj;
        g_autofree char *json = NULL;

        if (chain) {
            obj = qobj_list_new();
            for (i = 0; i < list->len; i++) {
                qobj_list_append(obj, image_info_to_qobj(
                                          g_ptr_array_index(list, i)));
            }
        } else {
            obj = image_info_to_qobj(g_ptr_array_index(list, 0));
        }
        json = qobj_to_json_pretty(obj);
        printf("%s\n", json);
        qobj_free(obj);
    } else {
        g_autoptr(GString) out = g_string_new(NULL);

        for (i = 0; i < list->len; i++) {
            if (i) {
                g_string_append_c(out, '\n');
            }
            dump_human_image_info(out, g_ptr_array_index(list, i));
        }
        fputs(out->str, stdout);
    }
    free_info_list(list);
    return 0;
}

/* ---- check --------------------------------------------------------------- */

static void check_report(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

/* qemu-img's ImageCheck: the result plus which optional members it has. */
typedef struct ImageCheck {
    QGuardCheckResult r;
    const char *filename;
    const char *format;
} ImageCheck;

static int collect_image_check(QGuardImage *img, ImageCheck *check,
                               unsigned fix)
{
    g_autoptr(GError) err = NULL;

    return qguard_image_check(img, fix, &check->r, check_report, NULL, &err);
}

static void dump_human_image_check(const ImageCheck *check, bool quiet)
{
    const QGuardCheckResult *r = &check->r;

    if (!(r->corruptions || r->leaks || r->check_errors)) {
        qprintf(quiet, "No errors were found on the image.\n");
    } else {
        if (r->corruptions) {
            qprintf(quiet, "\n%d errors were found on the image.\n"
                    "Data may be corrupted, or further writes to the image "
                    "may corrupt it.\n", r->corruptions);
        }
        if (r->leaks) {
            qprintf(quiet, "\n%d leaked clusters were found on the image.\n"
                    "This means waste of disk space, but no harm to data.\n",
                    r->leaks);
        }
        if (r->check_errors) {
            qprintf(quiet, "\n%d internal errors have occurred during the "
                    "check.\n", r->check_errors);
        }
    }
    if (r->total_clusters != 0 && r->allocated_clusters != 0) {
        qprintf(quiet, "%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, "
                "%0.2f%% fragmented, %0.2f%% compressed clusters\n",
                r->allocated_clusters, r->total_clusters,
                r->allocated_clusters * 100.0 / r->total_clusters,
                r->fragmented_clusters * 100.0 / r->allocated_clusters,
                r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        qprintf(quiet, "Image end offset: %" PRId64 "\n",
                r->image_end_offset);
    }
}

static void dump_json_image_check(const ImageCheck *check, bool quiet)
{
    const QGuardCheckResult *r = &check->r;
    QObj *d = qobj_dict_new();
    g_autofree char *json = NULL;

    /* Optional members are present exactly when they are non-zero. */
    qobj_dict_put_str(d, "filename", check->filename);
    qobj_dict_put_str(d, "format", check->format);
    qobj_dict_put_int(d, "check-errors", r->check_errors);
    if (r->corruptions) {
        qobj_dict_put_int(d, "corruptions", r->corruptions);
    }
    if (r->leaks) {
        qobj_dict_put_int(d, "leaks", r->leaks);
    }
    if (r->corruptions_fixed) {
        qobj_dict_put_int(d, "corruptions-fixed", r->corruptions_fixed);
    }
    if (r->leaks_fixed) {
        qobj_dict_put_int(d, "leaks-fixed", r->leaks_fixed);
    }
    if (r->image_end_offset) {
        qobj_dict_put_int(d, "image-end-offset", r->image_end_offset);
    }
    if (r->total_clusters) {
        qobj_dict_put_uint(d, "total-clusters", r->total_clusters);
    }
    if (r->allocated_clusters) {
        qobj_dict_put_uint(d, "allocated-clusters", r->allocated_clusters);
    }
    if (r->fragmented_clusters) {
        qobj_dict_put_uint(d, "fragmented-clusters", r->fragmented_clusters);
    }
    if (r->compressed_clusters) {
        qobj_dict_put_uint(d, "compressed-clusters", r->compressed_clusters);
    }
    json = qobj_to_json_pretty(d);
    qprintf(quiet, "%s\n", json);
    qobj_free(d);
}

static int img_check(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    const char *fmt = NULL, *output = NULL, *cache = "writeback";
    const char *filename;
    bool quiet = false, image_opts = false, force_share = false;
    unsigned flags = 0, fix = 0;
    OutputFormat ofmt;
    ImageCheck check = { 0 };
    QGuardImage *img;
    int ret, c;

    for (;;) {
        c = getopt_long(argc, argv, ":hf:r:T:qU", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'r':
            flags |= QGUARD_OPEN_RDWR | QGUARD_OPEN_CHECK;
            if (!strcmp(optarg, "leaks")) {
                fix = QGUARD_CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                fix = QGUARD_CHECK_FIX_LEAKS | QGUARD_CHECK_FIX_ERRORS;
            } else {
                error_exit("Unknown option value for -r "
                           "(expecting 'leaks' or 'all'): %s", optarg);
            }
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[optind];
    if (!parse_output_format(output, &ofmt)) {
        return 1;
    }
    if (!valid_cache_mode(cache)) {
        error_report("Invalid source cache option: %s", cache);
        return 1;
    }

    img = img_open(image_opts, filename, fmt, flags, force_share);
    if (!img) {
        return 1;
    }
    check.filename = filename;
    check.format = qguard_image_format(img);

    ret = collect_image_check(img, &check, fix);
    if (ret == -ENOTSUP) {
        error_report("This image format does not support checks");
        ret = 63;
        goto out;
    }

    if (check.r.corruptions_fixed || check.r.leaks_fixed) {
        int corruptions_fixed = check.r.corruptions_fixed;
        int leaks_fixed = check.r.leaks_fixed;

        if (ofmt == OFORMAT_HUMAN) {
            qprintf(quiet,
                    "The following inconsistencies were found and "
                    "repaired:\n\n"
                    "    %d leaked clusters\n"
                    "    %d corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    leaks_fixed, corruptions_fixed);
        }
        /* The second pass decides the outcome; it repairs nothing. */
        ret = collect_image_check(img, &check, 0);
        check.r.corruptions_fixed = corruptions_fixed;
        check.r.leaks_fixed = leaks_fixed;
    }

    if (!ret) {
        if (ofmt == OFORMAT_JSON) {
            dump_json_image_check(&check, quiet);
        } else {
            dump_human_image_check(&check, quiet);
        }
    }

    if (ret || check.r.check_errors) {
        if (ret) {
            error_report("Check failed: %s", g_strerror(-ret));
        } else {
            error_report("Check failed");
        }
        ret = 1;
        goto out;
    }

    if (check.r.corruptions) {
        ret = 2;
    } else if (check.r.leaks) {
        ret = 3;
    } else {
        ret = 0;
    }

out:
    if (img_close(img) < 0 && ret == 0) {
        ret = 1;
    }
    return ret;
}

/* ---- map ----------------------------------------------------------------- */

typedef struct MapEntry {
    int64_t start;
    int64_t length;
    int depth;
    bool present;
    bool zero;
    bool data;
    bool has_offset;
    uint64_t offset;
    const char *filename;       /* only with has_offset */
} MapEntry;

static int get_block_status(QGuardImage *img, int64_t offset, int64_t bytes,
                            MapEntry *e)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st;
    int ret;

    ret = qguard_image_block_status(img, offset, bytes, &st, &err);
    if (ret < 0) {
        return ret;
    }
    *e = (MapEntry) {
        .start = offset,
        .length = st.bytes,
        .depth = st.depth,
        .present = st.flags & QGUARD_BLOCK_ALLOCATED,
        .zero = st.flags & QGUARD_BLOCK_ZERO,
        .data = st.flags & QGUARD_BLOCK_DATA,
        .has_offset = st.flags & QGUARD_BLOCK_OFFSET_VALID,
        .offset = st.host_offset,
    };
    if (e->has_offset && st.image) {
        e->filename = qguard_image_filename(st.image);
    }
    return 0;
}

static bool entry_mergeable(const MapEntry *curr, const MapEntry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data ||
        curr->depth != next->depth || curr->present != next->present ||
        !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset &&
        curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

static int dump_map_entry(OutputFormat ofmt, const MapEntry *e,
                          MapEntry *next)
{
    switch (ofmt) {
    case OFORMAT_HUMAN:
        if (e->data && !e->has_offset) {
            error_report("File contains external, encrypted or compressed "
                         "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   (uint64_t)e->start, (uint64_t)e->length,
                   e->has_offset ? e->offset : 0,
                   e->filename ? e->filename : "");
        }
        /*
         * The table does not tell zero, unallocated and zero-with-data
         * apart; folding them lets neighbours merge into one row.
         */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        break;
    case OFORMAT_JSON:
        printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ","
               " \"depth\": %d, \"present\": %s, \"zero\": %s,"
               " \"data\": %s", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRId64, (int64_t)e->offset);
        }
        putchar('}');
        if (next) {
            puts(",");
        }
        break;
    }
    return 0;
}

static int img_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    const char *fmt = NULL, *output = NULL, *filename;
    bool image_opts = false, force_share = false;
    int64_t start_offset = 0, max_length = -1, length;
    MapEntry curr = { 0 }, next = { 0 };
    OutputFormat ofmt;
    QGuardImage *img;
    int ret = 0, c;

    for (;;) {
        c = getopt_long(argc, argv, ":f:s:l:hU", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case 's':
            start_offset = cvtnum("start offset", optarg);
            if (start_offset < 0) {
                return 1;
            }
            break;
        case 'l':
            max_length = cvtnum("max length", optarg);
            if (max_length < 0) {
                return 1;
            }
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[optind];
    if (!parse_output_format(output, &ofmt)) {
        return 1;
    }

    img = img_open(image_opts, filename, fmt, 0, force_share);
    if (!img) {
        return 1;
    }

    if (ofmt == OFORMAT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    } else {
        putchar('[');
    }

    length = qguard_image_size(img);
    if (max_length != -1) {
        /* Both are below 2^63, so the sum cannot wrap. */
        length = MIN((uint64_t)start_offset + (uint64_t)max_length,
                     (uint64_t)length);
    }

    curr.start = start_offset;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        int64_t n = MIN(length - offset, (int64_t)REQUEST_MAX_BYTES);

        ret = get_block_status(img, offset, n, &next);
        if (ret < 0) {
            error_report("Could not read file metadata: %s",
                         g_strerror(-ret));
            goto out;
        }
        if (entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = dump_map_entry(ofmt, &curr, &next);
            if (ret < 0) {
                goto out;
            }
        }
        curr = next;
    }

    ret = dump_map_entry(ofmt, &curr, NULL);
    if (ofmt == OFORMAT_JSON) {
        puts("]");
    }

out:
    img_close(img);
    return ret < 0;
}

/* ---- resize -------------------------------------------------------------- */

static int img_resize(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "preallocation", required_argument, NULL, OPTION_PREALLOCATION },
        { "shrink", no_argument, NULL, OPTION_SHRINK },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GError) err = NULL;
    const char *fmt = NULL, *filename, *size, *prealloc = NULL;
    bool quiet = false, image_opts = false, shrink = false;
    uint64_t n, current_size;
    int64_t total_size;
    int relative;
    QGuardImage *img;
    int ret = -1, c;

    /*
     * The size is taken off the end before option parsing so that a
     * negative size is not mistaken for an option.
     */
    if (argc < 3) {
        error_exit("Not enough arguments");
    }
    size = argv[--argc];

    for (;;) {
        c = getopt_long(argc, argv, ":f:hq", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_PREALLOCATION:
            if (!valid_prealloc_mode(optarg)) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            prealloc = optarg;
            break;
        case OPTION_SHRINK:
            shrink = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting image file name and size");
    }
    filename = argv[optind];

    switch (size[0]) {
    case '+':
        relative = 1;
        size++;
        break;
    case '-':
        relative = -1;
        size++;
        break;
    default:
        relative = 0;
        break;
    }
    if (!qguard_parse_size(size, &n, NULL)) {
        error_report("Parameter 'size' expects a non-negative number below "
                     "2^64\nOptional suffix k, M, G, T, P or E means kilo-, "
                     "mega-, giga-, tera-, peta-\nand exabytes, respectively.\n");
        return 1;
    }

    img = img_open(image_opts, filename, fmt, QGUARD_OPEN_RDWR, false);
    if (!img) {
        return 1;
    }
    current_size = qguard_image_size(img);

    /* Two's complement, as in qemu-img: 8E and more end up negative. */
    if (relative) {
        total_size = (int64_t)(current_size + n * (uint64_t)(int64_t)relative);
    } else {
        total_size = (int64_t)n;
    }
    if (total_size <= 0) {
        error_report("New image size must be positive");
        goto out;
    }
    if ((uint64_t)total_size <= current_size && prealloc &&
        strcmp(prealloc, "off")) {
        error_report("Preallocation can only be used for growing images");
        goto out;
    }
    if ((uint64_t)total_size < current_size && !shrink) {
        error_report("Use the --shrink option to perform a shrink "
                     "operation.");
        warn_report("Shrinking an image will delete all data beyond the "
                    "shrunken image's end. Before performing such an "
                    "operation, make sure there is no important data "
                    "there.");
        goto out;
    }

    ret = qguard_image_truncate(img, total_size, shrink, prealloc, &err);
    if (ret < 0) {
        error_report("%s", gerr_msg(err, ret));
        goto out;
    }
    ret = 0;

out:
    if (img_close(img) < 0) {
        ret = -1;
    }
    if (ret == 0) {
        qprintf(quiet, "Image resized.\n");
    }
    return ret ? 1 : 0;
}

/* ---- convert ------------------------------------------------------------- */

typedef enum BlockKind {
    BLK_ZERO,
    BLK_DATA,
} BlockKind;

typedef struct ConvertState {
    QGuardImage **src;
    uint64_t *src_size;         /* bytes */
    uint64_t *src_sectors;
    uint64_t *src_align;        /* sectors */
    int src_num;
    uint64_t total_sectors;
    QGuardImage *target;
    bool has_zero_init;
    uint64_t min_sparse;        /* sectors, 0: write everything */
    uint64_t alignment;         /* sectors, zero detection granularity */
    uint64_t buf_sectors;
    uint8_t *buf;
    Progress *progress;
    uint64_t allocated_sectors;
    uint64_t allocated_done;
    /* Cached status of the source area starting at the current sector. */
    BlockKind status;
    uint64_t sector_next_status;
} ConvertState;

/* Which source holds @sector, and where that source starts. */
static void convert_select_part(const ConvertState *s, uint64_t sector,
                                int *src_cur, uint64_t *src_cur_offset)
{
    uint64_t start = 0;
    int i;

    for (i = 0; i < s->src_num - 1; i++) {
        if (sector < start + s->src_sectors[i]) {
            break;
        }
        start += s->src_sectors[i];
    }
    *src_cur = i;
    *src_cur_offset = start;
}

/*
 * How many sectors from @sector_num on have the same kind, bounded as
 * qemu-img bounds them (source alignment, copy buffer), so that progress
 * figures advance in the same steps.  Returns < 0 on error.
 */
static int64_t convert_iteration_sectors(ConvertState *s,
                                         uint64_t sector_num)
{
    uint64_t src_cur_offset, n;
    int src_cur;

    convert_select_part(s, sector_num, &src_cur, &src_cur_offset);
    n = MIN(s->total_sectors - sector_num, REQUEST_MAX_BYTES / SECTOR_SIZE);
    n = MIN(n, src_cur_offset + s->src_sectors[src_cur] - sector_num);

    if (s->sector_next_status <= sector_num) {
        uint64_t offset = (sector_num - src_cur_offset) * SECTOR_SIZE;
        uint64_t size = s->src_size[src_cur];
        unsigned flags = QGUARD_BLOCK_ZERO;
        uint64_t count, tail;

        if (offset < size) {
            g_autoptr(GError) err = NULL;
            QGuardBlockStatus st;
            int ret;

            count = MIN(n * SECTOR_SIZE, size - offset);
            ret = qguard_image_block_status(s->src[src_cur], offset, count,
                                            &st, &err);
            if (ret < 0) {
                error_report("error while reading block status at offset "
                             "%" PRIu64 ": %s", offset, gerr_msg(err, ret));
                return ret;
            }
            flags = st.flags;
            n = DIV_ROUND_UP(st.bytes, SECTOR_SIZE);
            /* The partial sector at the end of a source is copied whole. */
            if (offset + st.bytes == size) {
                n = src_cur_offset + s->src_sectors[src_cur] - sector_num;
            }
        }

        /* Keep the next status query aligned to the source's clusters. */
        tail = (sector_num - src_cur_offset + n) % s->src_align[src_cur];
        if (n > tail) {
            n -= tail;
        }
        if (flags & QGUARD_BLOCK_ZERO) {
            s->status = BLK_ZERO;
        } else {
            /* Data, or unallocated without a backing file that knows. */
            s->status = BLK_DATA;
        }
        s->sector_next_status = sector_num + n;
    }

    n = MIN(n, s->sector_next_status - sector_num);
    if (s->status == BLK_DATA || (!s->min_sparse && s->status == BLK_ZERO)) {
        n = MIN(n, s->buf_sectors);
    }
    return n;
}

static int convert_read(ConvertState *s, uint64_t sector_num, uint64_t n)
{
    uint8_t *buf = s->buf;

    while (n > 0) {
        g_autoptr(GError) err = NULL;
        uint64_t src_cur_offset, offset, size, chunk, avail;
        int src_cur, ret;

        convert_select_part(s, sector_num, &src_cur, &src_cur_offset);
        chunk = MIN(n, src_cur_offset + s->src_sectors[src_cur] - sector_num);
        offset = (sector_num - src_cur_offset) * SECTOR_SIZE;
        size = s->src_size[src_cur];
        avail = offset < size ? MIN(chunk * SECTOR_SIZE, size - offset) : 0;
        if (avail) {
            ret = qguard_image_pread(s->src[src_cur], offset, avail, buf,
                                     &err);
            if (ret < 0) {
                error_report("error while reading at byte %" PRIu64 ": %s",
                             sector_num * SECTOR_SIZE, gerr_msg(err, ret));
                return ret;
            }
        }
        memset(buf + avail, 0, chunk * SECTOR_SIZE - avail);
        buf += chunk * SECTOR_SIZE;
        sector_num += chunk;
        n -= chunk;
    }
    return 0;
}

static bool sectors_are_zero(const uint8_t *buf, uint64_t n)
{
    uint64_t i;

    for (i = 0; i < n * SECTOR_SIZE; i++) {
        if (buf[i]) {
            return false;
        }
    }
    return true;
}

static int convert_write_zeroes(ConvertState *s, uint64_t sector_num,
                                uint64_t n)
{
    g_autoptr(GError) err = NULL;
    int ret;

    if (s->has_zero_init || !n) {
        return 0;
    }
    ret = qguard_image_pwrite_zeroes(s->target, sector_num * SECTOR_SIZE,
                                     n * SECTOR_SIZE, QGUARD_ZERO_MAY_UNMAP,
                                     &err);
    if (ret < 0) {
        error_report("error while writing at byte %" PRIu64 ": %s",
                     sector_num * SECTOR_SIZE, gerr_msg(err, ret));
    }
    return ret;
}

static int convert_write_data(ConvertState *s, uint64_t sector_num,
                              uint64_t n, const uint8_t *buf)
{
    g_autoptr(GError) err = NULL;
    uint64_t bytes = n * SECTOR_SIZE;
    uint64_t size = qguard_image_size(s->target);
    uint64_t offset = sector_num * SECTOR_SIZE;
    int ret;

    if (!n) {
        return 0;
    }
    /* A target whose size is not a sector multiple ends mid-sector. */
    if (offset + bytes > size) {
        bytes = offset < size ? size - offset : 0;
    }
    ret = qguard_image_pwrite(s->target, offset, bytes, buf, 0, &err);
    if (ret < 0) {
        error_report("error while writing at byte %" PRIu64 ": %s",
                     offset, gerr_msg(err, ret));
    }
    return ret;
}

/*
 * Write a buffer of source data, leaving out runs of zeros that are at
 * least min_sparse long (aligned to the detection granularity): those stay
 * unallocated in a fresh target and are written as zeros otherwise.
 */
static int convert_write_sparse(ConvertState *s, uint64_t sector_num,
                                uint64_t n)
{
    const uint8_t *buf = s->buf;
    uint64_t end = sector_num + n;
    uint64_t run_start = sector_num;
    bool run_zero = false;
    uint64_t pos = sector_num;
    int ret;

    if (sectors_are_zero(buf, n)) {
        return convert_write_zeroes(s, sector_num, n);
    }

    while (pos < end) {
        uint64_t block_end = MIN(end, ROUND_UP(pos + 1, s->alignment));
        uint64_t len = block_end - pos;
        /* Partial blocks are written: the cluster is touched anyway. */
        bool zero = len == s->alignment &&
                    sectors_are_zero(buf + (pos - sector_num) * SECTOR_SIZE,
                                     len);

        if (zero != run_zero && pos > run_start) {
            /* A zero run too short to skip is written with its data. */
            if (run_zero && pos - run_start < s->min_sparse) {
                run_zero = zero;
                pos = block_end;
                continue;
            }
            ret = run_zero ? convert_write_zeroes(s, run_start,
                                                  pos - run_start)
                           : convert_write_data(s, run_start,
                                                pos - run_start,
                                                buf + (run_start -
                                                       sector_num) *
                                                      SECTOR_SIZE);
            if (ret < 0) {
                return ret;
            }
            run_start = pos;
        }
        run_zero = zero;
        pos = block_end;
    }
    if (run_zero && end - run_start >= s->min_sparse) {
        return convert_write_zeroes(s, run_start, end - run_start);
    }
    return convert_write_data(s, run_start, end - run_start,
                              buf + (run_start - sector_num) * SECTOR_SIZE);
}

static int convert_do_copy(ConvertState *s)
{
    uint64_t sector_num;
    int64_t n;
    int ret;

    /* A first pass counts the sectors to copy, for the progress meter. */
    s->allocated_sectors = 0;
    s->sector_next_status = 0;
    for (sector_num = 0; sector_num < s->total_sectors; sector_num += n) {
        n = convert_iteration_sectors(s, sector_num);
        if (n < 0) {
            return n;
        }
        if (s->status == BLK_DATA ||
            (!s->min_sparse && s->status == BLK_ZERO)) {
            s->allocated_sectors += n;
        }
    }

    s->sector_next_status = 0;
    for (sector_num = 0; sector_num < s->total_sectors; sector_num += n) {
        BlockKind status;

        n = convert_iteration_sectors(s, sector_num);
        if (n < 0) {
            return n;
        }
        status = s->status;
        if (status == BLK_DATA) {
            ret = convert_read(s, sector_num, n);
            if (ret < 0) {
                return ret;
            }
            ret = s->min_sparse ? convert_write_sparse(s, sector_num, n)
                                : convert_write_data(s, sector_num, n,
                                                     s->buf);
        } else if (!s->min_sparse) {
            memset(s->buf, 0, n * SECTOR_SIZE);
            ret = convert_write_data(s, sector_num, n, s->buf);
        } else {
            ret = convert_write_zeroes(s, sector_num, n);
        }
        if (ret < 0) {
            return ret;
        }
        if ((status == BLK_DATA || !s->min_sparse) && s->allocated_sectors) {
            s->allocated_done += n;
            progress_set(s->progress, 100.0 * s->allocated_done /
                                      s->allocated_sectors);
        }
    }
    return 0;
}

/* Creation options that are not also open-time options of the target. */
static bool is_creation_option(const char *key)
{
    static const char *const names[] = {
        "size", "cluster_size", "refcount_bits", "compat", "preallocation",
        "lazy_refcounts", "backing_file", "backing_fmt", "extended_l2",
        "compression_type", "data_file", "data_file_raw", "encryption",
    };
    size_t i;

    if (g_str_has_prefix(key, "encrypt.")) {
        return true;
    }
    for (i = 0; i < G_N_ELEMENTS(names); i++) {
        if (!strcmp(key, names[i])) {
            return true;
        }
    }
    return false;
}

/* Are @a and @b the same file on disk? */
static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
           sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int img_convert(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "target-image-opts", no_argument, NULL, OPTION_UNSUPPORTED },
        { "salvage", no_argument, NULL, OPTION_UNSUPPORTED },
        { "target-is-zero", no_argument, NULL, OPTION_UNSUPPORTED },
        { "bitmaps", no_argument, NULL, OPTION_UNSUPPORTED },
        { "skip-broken-bitmaps", no_argument, NULL, OPTION_UNSUPPORTED },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GString) raw_opts = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    const char *fmt = NULL, *out_fmt = NULL, *out_filename;
    const char *cache = "unsafe", *src_cache = "writeback";
    bool quiet = false, progress = false, skip_create = false;
    bool compress = false, image_opts = false, force_share = false;
    int64_t sval;
    QGuardOpts *opts = NULL, *open_opts = NULL;
    ConvertState s = { .min_sparse = 8 };
    Progress prog;
    unsigned long ul;
    int opt_index = 0;
    int ret = -1, i, c;

    for (;;) {
        c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:",
                        long_options, &opt_index);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'f':
            fmt = optarg;
            break;
        case 'O':
            out_fmt = optarg;
            break;
        case 'c':
            compress = true;
            break;
        case 'o':
            if (!accumulate_options(raw_opts, optarg)) {
                return 1;
            }
            break;
        case 'S':
            sval = cvtnum("buffer size for sparse output", optarg);
            if (sval < 0 || sval % SECTOR_SIZE ||
                sval > MAX_BUF_BYTES) {
                error_report("Invalid buffer size for sparse output "
                             "specified. Valid sizes are multiples of %d up "
                             "to %d. Select 0 to disable sparse detection "
                             "(fully allocates output).", SECTOR_SIZE,
                             MAX_BUF_BYTES);
                return 1;
            }
            s.min_sparse = sval / SECTOR_SIZE;
            break;
        case 'p':
            progress = true;
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'n':
            skip_create = true;
            break;
        case 'm':
            if (!parse_ulong(optarg, &ul) || ul < 1 || ul > MAX_COROUTINES) {
                error_report("Invalid number of coroutines. Allowed number "
                             "of coroutines is between 1 and %d",
                             MAX_COROUTINES);
                return 1;
            }
            break;
        case 'W':
            /* Out-of-order writes: requests are sequential here anyway. */
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case 'B':
        case 'C':
        case 'F':
        case 'l':
        case 'r':
            error_report("convert: option '-%c' is not supported", c);
            return 1;
        case OPTION_UNSUPPORTED:
            error_report("convert: option '--%s' is not supported",
                         long_options[opt_index].name);
            return 1;
        }
    }

    if (skip_create && raw_opts->len) {
        error_report("-o has no effect when skipping image creation");
        return 1;
    }
    if (!out_fmt) {
        out_fmt = "raw";
    }
    if (quiet) {
        progress = false;
    }
    s.src_num = argc - optind - 1;
    out_filename = s.src_num >= 1 ? argv[argc - 1] : NULL;

    if (raw_opts->len && has_help_option(raw_opts->str)) {
        return print_create_help(out_fmt);
    }
    if (s.src_num < 1) {
        error_report("Must specify image file name");
        return 1;
    }
    if (!valid_cache_mode(src_cache)) {
        error_report("Invalid source cache option: %s", src_cache);
        return 1;
    }

    progress_init(&prog, progress, 1.0f);
    progress_set(&prog, 0);
    s.progress = &prog;

    s.src = g_new0(QGuardImage *, s.src_num);
    s.src_size = g_new0(uint64_t, s.src_num);
    s.src_sectors = g_new0(uint64_t, s.src_num);
    s.src_align = g_new0(uint64_t, s.src_num);
    for (i = 0; i < s.src_num; i++) {
        QGuardImageInfo *info = NULL;

        s.src[i] = img_open(image_opts, argv[optind + i], fmt, 0,
                            force_share);
        if (!s.src[i]) {
            goto out;
        }
        s.src_size[i] = qguard_image_size(s.src[i]);
        s.src_sectors[i] = DIV_ROUND_UP(s.src_size[i], SECTOR_SIZE);
        s.src_align[i] = 1;
        if (qguard_image_get_info(s.src[i], &info, NULL) == 0) {
            s.src_align[i] = MAX(1, info->cluster_size / SECTOR_SIZE);
            qguard_image_info_free(info);
        }
        s.total_sectors += s.src_sectors[i];
    }

    if (!skip_create) {
        g_autofree char *size_str = NULL;
        g_autofree char *desc = NULL;
        guint k;

        opts = parse_create_options(raw_opts->str, "");
        if (!opts) {
            goto out;
        }
        size_str = g_strdup_printf("%" PRIu64, s.total_sectors * SECTOR_SIZE);
        qguard_opts_set(opts, "size", size_str);
        if (qguard_opts_get(opts, "backing_file") &&
            !qguard_opts_get(opts, "backing_fmt")) {
            error_report("Use of backing file requires explicit backing "
                         "format");
            goto out;
        }
        desc = qguard_create_prepare(out_filename, out_fmt, opts, false,
                                     &err);
        if (!desc) {
            error_report("%s", gerr_msg(err, -EINVAL));
            goto out;
        }
        /* Runtime options given with -o also apply to the copy. */
        open_opts = qguard_opts_new();
        for (k = 0; k < qguard_opts_count(opts); k++) {
            const char *key = qguard_opts_key(opts, k);
            if (!is_creation_option(key)) {
                qguard_opts_set(open_opts, key, qguard_opts_value(opts, k));
            }
        }
    }

    if (compress) {
        if (!strcmp(out_fmt, "raw")) {
            error_report("Compression not supported for this file format");
        } else {
            error_report("Compression (-c) is not supported yet");
        }
        goto out;
    }

    if (!skip_create) {
        /*
         * qemu-img fails here on its image lock; without locks, creating
         * the target would destroy the source.
         */
        for (i = 0; i < s.src_num; i++) {
            if (!image_opts && same_file(argv[optind + i], out_filename)) {
                error_report("%s: error while converting %s: Failed to get "
                             "\"write\" lock\nIs another process using the "
                             "image [%s]?\n", out_filename, out_fmt,
                             out_filename);
                goto out;
            }
        }
        if (qguard_image_create(out_filename, out_fmt, opts, NULL, NULL,
                                &err) < 0) {
            error_report("%s: error while converting %s: %s", out_filename,
                         out_fmt, gerr_msg(err, -EIO));
            goto out;
        }
    }

    if (!valid_cache_mode(cache)) {
        error_report("Invalid cache option: %s", cache);
        goto out;
    }

    if (skip_create) {
        s.target = img_open(false, out_filename, out_fmt, QGUARD_OPEN_RDWR,
                            false);
    } else {
        int r = qguard_image_open(&s.target, out_filename, out_fmt,
                                  open_opts, QGUARD_OPEN_RDWR, &err);
        if (r < 0) {
            error_report("Could not open '%s': %s", out_filename,
                         gerr_msg(err, r));
            s.target = NULL;
        }
    }
    if (!s.target) {
        goto out;
    }
    if (skip_create &&
        qguard_image_size(s.target) < s.total_sectors * SECTOR_SIZE) {
        error_report("output file is smaller than input file");
        goto out;
    }

    /*
     * A target we just created reads as zeros, unless it has a backing
     * file; an existing one may hold anything.  (Everything is copied into
     * a target with a backing file: correct, if not as small as it could
     * be.)
     */
    s.has_zero_init = !skip_create &&
                      !qguard_opts_get(opts, "backing_file");
    s.alignment = MAX(1, s.min_sparse ? 1ULL << g_bit_nth_msf(s.min_sparse,
                                                              -1) : 1);
    s.buf_sectors = IO_BUF_SIZE / SECTOR_SIZE;
    s.buf = g_malloc(s.buf_sectors * SECTOR_SIZE);

    ret = convert_do_copy(&s);
    if (ret == 0) {
        ret = qguard_image_flush(s.target, &err);
        if (ret < 0) {
            error_report("error while writing to output image file: %s",
                         gerr_msg(err, ret));
        }
    }

out:
    if (s.target && img_close(s.target) < 0 && ret == 0) {
        ret = -1;
    }
    if (!ret) {
        progress_set(&prog, 100);
    }
    progress_end(&prog);
    for (i = 0; i < s.src_num && s.src; i++) {
        img_close(s.src[i]);
    }
    g_free(s.src);
    g_free(s.src_size);
    g_free(s.src_sectors);
    g_free(s.src_align);
    g_free(s.buf);
    qguard_opts_free(opts);
    qguard_opts_free(open_opts);
    return ret ? 1 : 0;
}

/* ---- bench --------------------------------------------------------------- */

static uint64_t random_below(GRand *rand, uint64_t limit)
{
    /* Rejection sampling keeps the choice uniform for any limit. */
    uint64_t bound = UINT64_MAX - UINT64_MAX % limit;
    uint64_t v;

    do {
        v = ((uint64_t)g_rand_int(rand) << 32) | g_rand_int(rand);
    } while (v >= bound);
    return v % limit;
}

static void print_overlap_stats(QGuardImage *img)
{
    QGuardOverlapStats st;

    if (qguard_image_overlap_stats(img, &st) < 0) {
        return;
    }
    printf("Overlap checks: %s algorithm, %" PRIu64 " checks, %" PRIu64
           " writes refused\n", st.algorithm, st.checks, st.refused);
    printf("Overlap map: %" PRIu64 " inserts, %" PRIu64 " removes, %" PRIu64
           " queries\n", st.inserts, st.removes, st.queries);
    printf("Overlap map conversions: %" PRIu64 " list->bytemap, %" PRIu64
           " bytemap->list, %" PRIu64 " bytemaps freed\n",
           st.list_to_bytemap, st.bytemap_to_list, st.bytemaps_freed);
    printf("Overlap map memory: %" PRIu64 " bytes current, %" PRIu64
           " bytes peak\n", st.mem_current, st.mem_peak);
}

static int img_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPTION_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPTION_PATTERN },
        { "no-drain", no_argument, NULL, OPTION_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "random", optional_argument, NULL, OPTION_RANDOM },
        { NULL, 0, NULL, 0 }
    };
    const char *fmt = NULL, *filename, *cache = "writeback";
    bool quiet = false, image_opts = false, force_share = false;
    bool is_write = false, random = false;
    int count = 75000, depth = 64, flush_interval = 0;
    int bufsize = 4096, step = 0, pattern = 0;
    guint32 seed = 0;
    int64_t offset = 0, sval, image_size;
    unsigned flags = 0;
    unsigned long ul;
    struct timeval t1, t2;
    g_autoptr(GRand) rand = NULL;
    QGuardImage *img;
    uint8_t *buf = NULL;
    int ret = 1, i, c;

    for (;;) {
        c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_options,
                        NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'c':
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX) {
                error_report("Invalid request count specified");
                return 1;
            }
            count = ul;
            break;
        case 'd':
            /* qemu-img hangs with depth 0; refuse it instead. */
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX || ul == 0) {
                error_report("Invalid queue depth specified");
                return 1;
            }
            depth = ul;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'n':
            /* Native AIO: no such thing here, requests are synchronous. */
            break;
        case 'i':
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") &&
                strcmp(optarg, "io_uring")) {
                error_report("Invalid aio option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            offset = cvtnum("offset", optarg);
            if (offset < 0) {
                return 1;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            sval = cvtnum_full("buffer size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return 1;
            }
            bufsize = sval;
            break;
        case 'S':
            sval = cvtnum_full("step_size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return 1;
            }
            step = sval;
            break;
        case 't':
            cache = optarg;
            break;
        case 'w':
            flags |= QGUARD_OPEN_RDWR;
            is_write = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_PATTERN:
            if (!parse_ulong(optarg, &ul) || ul > 0xff) {
                error_report("Invalid pattern byte specified");
                return 1;
            }
            pattern = ul;
            break;
        case OPTION_FLUSH_INTERVAL:
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX) {
                error_report("Invalid flush interval specified");
                return 1;
            }
            flush_interval = ul;
            break;
        case OPTION_NO_DRAIN:
            /* Nothing is ever in flight at a flush, drained or not. */
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_RANDOM:
            random = true;
            if (optarg) {
                if (!parse_ulong(optarg, &ul) || ul > G_MAXUINT32) {
                    error_report("Invalid random seed specified");
                    return 1;
                }
                seed = ul;
            } else {
                seed = g_random_int();
            }
            break;
        }
    }
    if (!valid_cache_mode(cache)) {
        error_report("Invalid cache mode");
        return 1;
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[argc - 1];

    if (!is_write && flush_interval) {
        error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if (flush_interval && flush_interval < depth) {
        error_report("Flush interval can't be smaller than depth");
        return 1;
    }

    img = img_open(image_opts, filename, fmt, flags, force_share);
    if (!img) {
        return 1;
    }
    image_size = qguard_image_size(img);
    if (!step) {
        step = bufsize;
    }

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %d)\n",
           count, is_write ? "write" : "read", bufsize, depth, offset, step);
    if (flush_interval) {
        printf("Sending flush every %d requests\n", flush_interval);
    }
    if (random) {
        printf("Using random buffer-aligned offsets (seed %" G_GUINT32_FORMAT
               ")\n", seed);
        rand = g_rand_new_with_seed(seed);
    }

    buf = g_try_malloc(MAX(bufsize, 1));
    if (!buf) {
        error_report("Could not allocate a buffer of %d bytes", bufsize);
        goto out;
    }
    memset(buf, pattern, bufsize);
    qguard_image_overlap_stats_reset(img);

    gettimeofday(&t1, NULL);
    for (i = 0; i < count; i++) {
        g_autoptr(GError) err = NULL;
        int64_t req = offset;

        if (random) {
            req = 0;
            if (bufsize && image_size > bufsize) {
                req = random_below(rand, image_size / bufsize) * bufsize;
            }
        } else {
            /*
             * The next offset wraps at the image size, as in qemu-img 7.2;
             * where 7.2 would then issue a request past the end and fail
             * with EIO, it starts again at 0.
             */
            offset += step;
            if (image_size <= bufsize) {
                offset = 0;
            } else {
                offset %= image_size;
                if (offset > image_size - bufsize) {
                    offset = 0;
                }
            }
        }
        if (is_write) {
            ret = qguard_image_pwrite(img, req, bufsize, buf, 0, &err);
        } else {
            ret = qguard_image_pread(img, req, bufsize, buf, &err);
        }
        if (ret < 0) {
            error_report("Failed request: %s", g_strerror(-ret));
            goto out;
        }
        if (flush_interval && (count - i - 1) % flush_interval == 0) {
            ret = qguard_image_flush(img, &err);
            if (ret < 0) {
                error_report("Failed flush request: %s", g_strerror(-ret));
                goto out;
            }
        }
    }
    gettimeofday(&t2, NULL);

    printf("Run completed in %3.3f seconds.\n",
           (t2.tv_sec - t1.tv_sec) +
           ((double)(t2.tv_usec - t1.tv_usec) / 1000000));
    if (!quiet) {
        print_overlap_stats(img);
    }
    ret = 0;

out:
    g_free(buf);
    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}

/* ---- snapshot ------------------------------------------------------------ */

enum {
    SNAPSHOT_LIST = 1,
    SNAPSHOT_CREATE,
    SNAPSHOT_APPLY,
    SNAPSHOT_DELETE,
};

static void dump_snapshots(QGuardImage *img)
{
    g_autoptr(GString) out = NULL;
    QGuardSnapshotInfo *list = NULL;
    guint count = 0, i;

    if (qguard_snapshot_list(img, &list, &count, NULL) < 0 || !count) {
        g_free(list);
        return;
    }
    out = g_string_new(NULL);
    snapshot_table(out, list, count);
    fputs(out->str, stdout);
    for (i = 0; i < count; i++) {
        qguard_snapshot_info_clear(&list[i]);
    }
    g_free(list);
}

/* qemu-img deletes by name only: find the id of the first match. */
static char *find_snapshot_id_by_name(QGuardImage *img, const char *name)
{
    QGuardSnapshotInfo *list = NULL;
    guint count = 0, i;
    char *id = NULL;

    if (qguard_snapshot_list(img, &list, &count, NULL) < 0) {
        return NULL;
    }
    for (i = 0; i < count; i++) {
        if (!id && list[i].name && !strcmp(list[i].name, name)) {
            id = g_strdup(list[i].id);
        }
        qguard_snapshot_info_clear(&list[i]);
    }
    g_free(list);
    return id;
}

static int img_snapshot(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GError) err = NULL;
    g_autofree char *id = NULL;
    const char *filename, *snapshot_name = NULL;
    bool image_opts = false, force_share = false;
    unsigned flags = QGUARD_OPEN_RDWR;
    int action = 0;
    QGuardImage *img;
    int ret = 0, c;

    for (;;) {
        c = getopt_long(argc, argv, ":la:c:d:hqU", long_options, NULL);
        if (c == -1) {
            break;
        }
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'l':
        case 'a':
        case 'c':
        case 'd':
            if (action) {
                error_exit("Cannot mix '-l', '-a', '-c', '-d'");
            }
            action = c == 'l' ? SNAPSHOT_LIST :
                     c == 'a' ? SNAPSHOT_APPLY :
                     c == 'c' ? SNAPSHOT_CREATE : SNAPSHOT_DELETE;
            if (c == 'l') {
                flags &= ~QGUARD_OPEN_RDWR;
            } else {
                snapshot_name = optarg;
            }
            break;
        case 'q':
            /* Nothing to silence: snapshot prints only the -l table. */
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        }
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[optind];

    img = img_open(image_opts, filename, NULL, flags, force_share);
    if (!img) {
        return 1;
    }

    switch (action) {
    case SNAPSHOT_LIST:
        dump_snapshots(img);
        break;
    case SNAPSHOT_CREATE:
        ret = qguard_snapshot_create(img, snapshot_name, &err);
        if (ret < 0) {
            error_report("Could not create snapshot '%s': %d (%s)",
                         snapshot_name, ret, g_strerror(-ret));
        }
        break;
    case SNAPSHOT_APPLY:
        ret = qguard_snapshot_apply(img, snapshot_name, &err);
        if (ret < 0) {
            error_report("Could not apply snapshot '%s': %s", snapshot_name,
                         gerr_msg(err, ret));
        }
        break;
    case SNAPSHOT_DELETE:
        id = find_snapshot_id_by_name(img, snapshot_name);
        if (!id) {
            error_report("Could not delete snapshot '%s': snapshot not "
                         "found", snapshot_name);
            ret = -ENOENT;
            break;
        }
        ret = qguard_snapshot_delete(img, id, &err);
        if (ret < 0) {
            error_report("Could not delete snapshot '%s': %s", snapshot_name,
                         gerr_msg(err, ret));
        }
        break;
    }

    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}

/* ---- main ---------------------------------------------------------------- */

typedef struct ImgCmd {
    const char *name;
    int (*handler)(int argc, char **argv);
} ImgCmd;

static const ImgCmd img_cmds[] = {
    { "bench", img_bench },
    { "check", img_check },
    { "convert", img_convert },
    { "create", img_create },
    { "info", img_info },
    { "map", img_map },
    { "resize", img_resize },
    { "snapshot", img_snapshot },
};

/* Deep backing chains keep one descriptor open per image. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 }
    };
    const char *cmdname;
    size_t i;
    int c;

    raise_fd_limit();

    if (argc < 2) {
        error_exit("Not enough arguments");
    }
    while ((c = getopt_long(argc, argv, "+:hVT:", long_options, NULL)) != -1) {
        switch (c) {
        case ':':
            missing_argument(argv[optind - 1]);
        case '?':
            unrecognized_option(argv[optind - 1]);
        case 'h':
            help();
        case 'V':
            printf(PROG_NAME " version " PROG_VERSION "\n"
                   "Copyright (c) 2026 The qguard authors\n");
            return 0;
        case 'T':
            /* Trace options: there are no trace points to enable. */
            break;
        }
    }
    if (optind >= argc) {
        error_exit("Not enough arguments");
    }
    cmdname = argv[optind];
    argc -= optind;
    argv += optind;
    /* Zero makes glibc's getopt start over for the command's options. */
    optind = 0;

    for (i = 0; i < G_N_ELEMENTS(img_cmds); i++) {
        if (!strcmp(cmdname, img_cmds[i].name)) {
            return img_cmds[i].handler(argc, argv);
        }
    }
    error_exit("Command not found: %s", cmdname);
}
