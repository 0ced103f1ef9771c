/* SPDX-License-Identifier: MIT */
/*
 * qemu-io's open, close and reopen, and the state of the open image.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"

QGuardImage *image;
bool image_opts_mode;

/*
 * How the current image was opened; "reopen" closes and opens it again
 * with changed parameters.
 */
static struct {
    char *filename;         /* NULL with --image-opts style options */
    char *format;
    QGuardOpts *opts;
    bool read_only;
    bool snapshot;          /* a temporary overlay from -s */
    unsigned cache_flags;
} open_state;

static bool set_cache_mode(unsigned *flags, const char *mode)
{
    if (qguard_parse_cache_mode(mode, flags) < 0) {
        error_report("Invalid cache option: %s", mode);
        return false;
    }
    return true;
}

static bool valid_discard_mode(const char *mode)
{
    return !strcmp(mode, "off") || !strcmp(mode, "ignore") ||
           !strcmp(mode, "on") || !strcmp(mode, "unmap");
}

static bool parse_aio_mode(const char *mode, bool *native)
{
    *native = !strcmp(mode, "native");
    return *native || !strcmp(mode, "threads") || !strcmp(mode, "io_uring");
}

/*
 * Parse "-o" style options into @opts.  QemuOpts warns about bare keys
 * ("key" meaning "key=on"), which scripts see on stderr; so do we.
 */
bool parse_open_options(QGuardOpts *opts, const char *str)
{
    g_autoptr(GError) err = NULL;
    const char *p = str;

    while (*p) {
        g_autoptr(GString) elem = g_string_new(NULL);

        for (; *p && !(*p == ',' && p[1] != ','); p++) {
            if (*p == ',') {
                p++;
            }
            g_string_append_c(elem, *p);
        }
        if (*p == ',') {
            p++;
        }
        if (elem->len && !strchr(elem->str, '=')) {
            warn_report("short-form boolean option '%s' deprecated\n"
                        "Please use %s=on instead", elem->str, elem->str);
        }
    }
    if (qguard_opts_parse(opts, str, NULL, &err) < 0) {
        error_report_err(NULL, err, -EINVAL);
        return false;
    }
    return true;
}

static void forget_open_state(void)
{
    g_free(open_state.filename);
    g_free(open_state.format);
    qguard_opts_free(open_state.opts);
    memset(&open_state, 0, sizeof(open_state));
}

int close_image(void)
{
    g_autoptr(GError) err = NULL;
    int ret = 0;

    aio_deliver_reports();
    if (image) {
        /*
         * qemu-io says nothing when this fails, and exits 0 although
         * writes it reported are lost; qguard-io says so and fails.
         */
        ret = qguard_image_close(image, &err);
        if (ret < 0) {
            /*
             * Not after the buffered reports of the writes that are lost:
             * QEMU's line comes first where stdout is a pipe, too.
             */
            error_report_err(NULL, err, ret);
        }
        image = NULL;
    }
    forget_open_state();
    return ret;
}

/*
 * -s: writes go to a temporary qcow2 overlay that disappears at close,
 * the way QEMU's snapshot=on works.
 */
static int open_snapshot_overlay(QGuardImage **pimg, const char *name,
                                 const char *format, const QGuardOpts *opts,
                                 unsigned cache_flags, GError **errp)
{
    g_autofree char *tmpl = NULL;
    g_autofree char *base_path = NULL;
    g_autofree char *size = NULL;
    QGuardOpts *create_opts = NULL, *overlay_opts = NULL;
    QGuardImage *base = NULL;
    const char *tmpdir = g_getenv("TMPDIR");
    guint i;
    int fd, ret;

    ret = qguard_image_open(&base, name, format, opts,
                            cache_flags & ~QGUARD_OPEN_WRITETHROUGH, errp);
    if (ret < 0) {
        return ret;
    }
    base_path = realpath(qguard_image_filename(base), NULL);
    if (!base_path) {
        base_path = g_strdup(qguard_image_filename(base));
    }
    tmpl = g_build_filename(tmpdir && *tmpdir ? tmpdir : "/var/tmp",
                            "qguard-io-snapshot.XXXXXX", NULL);
    fd = g_mkstemp(tmpl);
    if (fd < 0) {
        ret = -errno;
        g_set_error(errp, QGUARD_ERROR, -ret,
                    "Could not get temporary filename: %s", strerror(-ret));
        qguard_image_close(base, NULL);
        return ret;
    }
    close(fd);

    create_opts = qguard_opts_new();
    size = g_strdup_printf("%" PRIu64, qguard_image_size(base));
    qguard_opts_set(create_opts, "size", size);
    qguard_opts_set(create_opts, "backing_file", base_path);
    qguard_opts_set(create_opts, "backing_fmt", qguard_image_format(base));
    qguard_image_close(base, NULL);
    ret = qguard_image_create(tmpl, "qcow2", create_opts, NULL, NULL, errp);
    qguard_opts_free(create_opts);
    if (ret < 0) {
        unlink(tmpl);
        return ret;
    }

    /* The runtime options were meant for the image, now the backing file. */
    overlay_opts = qguard_opts_new();
    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        g_autofree char *bkey = NULL;

        if (!strcmp(key, "driver") || g_str_has_prefix(key, "file")) {
            continue;
        }
        if (!strcmp(key, "discard")) {
            /* Guest discards go to the overlay. */
            qguard_opts_set(overlay_opts, key, qguard_opts_value(opts, i));
            continue;
        }
        bkey = g_strdup_printf("backing.%s", key);
        qguard_opts_set(overlay_opts, bkey, qguard_opts_value(opts, i));
    }
    ret = qguard_image_open(pimg, tmpl, "qcow2", overlay_opts,
                            QGUARD_OPEN_RDWR | cache_flags, errp);
    qguard_opts_free(overlay_opts);
    unlink(tmpl);
    return ret;
}

int open_image(const char *name, const char *format, QGuardOpts *opts,
                      const OpenParams *p)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *prefix = NULL;
    const char *fs;
    int ret;

    if (image) {
        error_report("file open already, try 'help close'");
        qguard_opts_free(opts);
        return -EBUSY;
    }
    if (!opts) {
        opts = qguard_opts_new();
    }
    prefix = name ? g_strdup_printf("can't open device %s", name)
                  : g_strdup("can't open");

    fs = qguard_opts_get(opts, "force-share");
    if (p->force_share) {
        if (fs && strcmp(fs, "on")) {
            error_report("-U conflicts with image options");
            qguard_opts_free(opts);
            return -EINVAL;
        }
        qguard_opts_set(opts, "force-share", "on");
    }
    /* -d is the default of the "discard" option, as in QEMU. */
    if (p->discard && !qguard_opts_has(opts, "discard")) {
        qguard_opts_set(opts, "discard", p->discard);
    }
    if (p->native_aio && !(p->cache_flags & QGUARD_OPEN_NOCACHE) &&
        g_strcmp0(qguard_opts_get(opts, "cache.direct"), "on")) {
        error_report("%s: aio=native was specified, but it requires "
                     "cache.direct=on, which was not specified.", prefix);
        qguard_opts_free(opts);
        return -EINVAL;
    }
    if (p->copy_on_read) {
        error_report("%s: copy-on-read is not supported by libqguard",
                     prefix);
        qguard_opts_free(opts);
        return -ENOTSUP;
    }

    if (p->snapshot && !p->read_only) {
        ret = open_snapshot_overlay(&image, name, format, opts,
                                    p->cache_flags, &err);
    } else {
        ret = qguard_image_open(&image, name, format, opts,
                                (p->read_only ? 0 : QGUARD_OPEN_RDWR) |
                                p->cache_flags, &err);
    }
    if (ret < 0) {
        error_report_err(prefix, err, ret);
        image = NULL;
        qguard_opts_free(opts);
        return ret;
    }

    forget_open_state();
    open_state.filename = g_strdup(name);
    open_state.format = g_strdup(format);
    open_state.opts = opts;
    open_state.read_only = p->read_only;
    open_state.snapshot = p->snapshot && !p->read_only;
    open_state.cache_flags = p->cache_flags;
    return 0;
}

static const char open_help[] =
"\n"
" opens an image for the commands that follow\n"
"\n"
" Example:\n"
" 'open -n -o driver=raw /tmp/data' - opens a raw image read-write, uncached\n"
"\n"
" Only one image can be open at a time; 'close' it first.\n"
" -r, -- open the image read-only\n"
" -s, -- send writes to a temporary overlay that is dropped at close\n"
" -C, -- copy-on-read (not supported by libqguard)\n"
" -n, -- bypass the host page cache, like -t none\n"
" -U, -- force shared permissions (needs -r)\n"
" -k, -- native Linux AIO (needs -n); accepted for compatibility\n"
" -i, -- AIO mode: threads, native or io_uring; accepted for compatibility\n"
" -t, -- cache mode: none, off, writeback, unsafe, directsync, writethrough\n"
"        (default writethrough: a write is on disk when it is reported)\n"
" -d, -- discard mode: ignore, off, unmap or on\n"
" -o, -- runtime options for the image, e.g. overlap-check=all or\n"
"        overlap-check.algorithm=linear\n"
"\n";

int open_param_opt(int c, OpenParams *p)
{
    bool native;

    switch (c) {
    case 's':
        p->snapshot = true;
        break;
    case 'n':
        p->cache_flags = (p->cache_flags | QGUARD_OPEN_NOCACHE) &
                         ~QGUARD_OPEN_WRITETHROUGH;
        break;
    case 'C':
        p->copy_on_read = true;
        break;
    case 'r':
        p->read_only = true;
        break;
    case 'k':
        p->native_aio = true;
        break;
    case 'U':
        p->force_share = true;
        break;
    case 't':
        if (!set_cache_mode(&p->cache_flags, optarg)) {
            return -EINVAL;
        }
        break;
    case 'd':
        if (!valid_discard_mode(optarg)) {
            error_report("Invalid discard option: %s", optarg);
            return -EINVAL;
        }
        p->discard = optarg;
        break;
    case 'i':
        if (!parse_aio_mode(optarg, &native)) {
            error_report("Invalid aio option: %s", optarg);
            return -EINVAL;
        }
        p->native_aio = native;
        break;
    default:
        return 0;
    }
    return 1;
}

static int open_f(int argc, char **argv)
{
    OpenParams p = OPEN_PARAMS_INIT;
    QGuardOpts *opts = qguard_opts_new();
    int c, ret;

    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        if (c == 'o') {
            if (image_opts_mode) {
                printf("--image-opts and 'open -o' are mutually exclusive\n");
                goto fail;
            }
            if (!parse_open_options(opts, optarg)) {
                goto fail;
            }
            continue;
        }
        ret = open_param_opt(c, &p);
        if (ret < 0) {
            goto fail;
        } else if (ret == 0) {
            command_usage(&open_cmd);
            goto fail;
        }
    }
    if (image_opts_mode && optind == argc - 1) {
        if (!parse_open_options(opts, argv[optind])) {
            goto fail;
        }
        optind++;
    }
    if (optind == argc - 1) {
        return open_image(argv[optind], NULL, opts, &p) < 0 ? -EINVAL : 0;
    } else if (optind == argc) {
        return open_image(NULL, NULL, opts, &p) < 0 ? -EINVAL : 0;
    }
    command_usage(&open_cmd);
fail:
    qguard_opts_free(opts);
    return -EINVAL;
}

const Command open_cmd = {
    .name = "open", .altname = "o", .func = open_f,
    .argmin = 1, .argmax = -1, .flags = CMD_NOFILE_OK,
    .args = "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    .oneline = "open the file specified by path",
    .help = open_help,
};

static int close_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return close_image();
}

const Command close_cmd = {
    .name = "close", .altname = "c", .func = close_f,
    .oneline = "close the current open file",
};

static const char reopen_help[] =
"\n"
" opens the current image again with changed options\n"
"\n"
" Example:\n"
" 'reopen -o overlap-check=all' - turns on every overlap check\n"
"\n"
" The image is flushed and closed, then opened with the old options plus\n"
" the new ones; if that fails, it is opened as it was.\n"
" -r, -- make the image read-only\n"
" -w, -- make the image writable\n"
" -c, -- cache mode, as for 'open -t' (default: unchanged)\n"
" -o, -- runtime options to change (as for 'open -o')\n"
"\n";

/* Options that name the image rather than tune it cannot change. */
static bool is_fixed_option(const char *key)
{
    return !strcmp(key, "driver") || !strcmp(key, "file") ||
           g_str_has_prefix(key, "file.") || !strcmp(key, "backing") ||
           !strcmp(key, "read-only") || !strcmp(key, "force-share") ||
           !strcmp(key, "node-name") || g_str_has_prefix(key, "backing.");
}

/*
 * A fixed option's value now: as given at open or, for the ones QEMU's
 * nodes always have, what the image was opened with.  Repeating it is
 * not a change.
 */
static const char *fixed_option_now(const char *key)
{
    const char *v = qguard_opts_get(open_state.opts, key);

    if (v) {
        return v;
    }
    if (!strcmp(key, "driver")) {
        return qguard_image_format(image);
    }
    if (!strcmp(key, "file.driver")) {
        return "file";
    }
    if (!strcmp(key, "file.filename")) {
        return open_state.filename;
    }
    return NULL;
}

/* QEMU's reason to refuse a change of @key to @value, printed. */
static void refuse_change(const char *key, const char *value)
{
    if (!strcmp(key, "backing") && *value) {
        /* QEMU looks the new backing node up by name */
        error_report("Cannot find device='' nor node-name='%s'", value);
    } else if (!strcmp(key, "read-only") && !strcmp(value, "on") &&
               !open_state.read_only) {
        /* qemu-io still uses the image for writing */
        const char *name = qguard_opts_get(open_state.opts, "node-name");

        error_report("Read-only block node '%s' cannot support read-write "
                     "users", name ? name : "#block100");
    } else {
        /*
         * QEMU reopens the protocol node with the file.* options as its
         * own, so it names them without the prefix.
         */
        error_report("Cannot change the option '%s'",
                     g_str_has_prefix(key, "file.") ? key + 5 : key);
    }
}

/* May @changes be applied to the open image?  Prints why not. */
static bool reopen_changes_allowed(const QGuardOpts *changes)
{
    guint i;

    for (i = 0; i < qguard_opts_count(changes); i++) {
        const char *key = qguard_opts_key(changes, i);
        const char *value = qguard_opts_value(changes, i);
        const char *old = fixed_option_now(key);

        if (!qguard_image_takes_option(image, key)) {
            /* QEMU keeps what the format does not take and compares it */
            error_report("Cannot change the option '%s'", key);
            return false;
        }
        if (is_fixed_option(key) && (!old || strcmp(old, value))) {
            refuse_change(key, value);
            return false;
        }
    }
    if (open_state.snapshot) {
        error_report("Cannot reopen an image opened with -s");
        return false;
    }
    return true;
}

/*
 * Close the image and open it with @opts (consumed); if that fails, open
 * it as it was, and if even that fails, no image is open afterwards.
 */
static int reopen_image(QGuardOpts *opts, bool read_only,
                        unsigned cache_flags)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GError) err2 = NULL;
    const char *filename = open_state.filename;
    int ret;

    aio_deliver_reports();
    /* As QEMU's reopen: what cannot be written back stays open, unchanged. */
    ret = qguard_image_flush(image, &err);
    if (ret < 0) {
        error_report("Error flushing drive: %s", gerr_msg(err, ret));
        qguard_opts_free(opts);
        return ret;
    }
    ret = qguard_image_close(image, &err);
    image = NULL;
    if (ret < 0) {
        /* The flush succeeded: only a failing close of the file is left. */
        error_report_err(NULL, err, ret);
        g_clear_error(&err);
    }
    ret = qguard_image_open(&image, filename, open_state.format, opts,
                            (read_only ? 0 : QGUARD_OPEN_RDWR) | cache_flags,
                            &err);
    if (ret == 0) {
        qguard_opts_free(open_state.opts);
        open_state.opts = opts;
        open_state.read_only = read_only;
        open_state.cache_flags = cache_flags;
        return 0;
    }
    error_report_err(NULL, err, ret);
    qguard_opts_free(opts);
    image = NULL;
    if (qguard_image_open(&image, filename, open_state.format,
                          open_state.opts,
                          (open_state.read_only ? 0 : QGUARD_OPEN_RDWR) |
                          open_state.cache_flags, &err2) < 0) {
        g_autofree char *prefix = filename ?
            g_strdup_printf("can't open device %s", filename) :
            g_strdup("can't open");

        error_report_err(prefix, err2, -EIO);
        image = NULL;
        forget_open_state();
    }
    return ret;
}

/*
 * The options of the last open stay unless @changes names them, except
 * that (as QEMU's qcow2_join_options()) a new overlap-check template drops
 * the old overlap-check flags, a new cache-size drops the old split of
 * the cache, and a new split drops an old cache-size.
 */
static QGuardOpts *join_reopen_options(const QGuardOpts *changes)
{
    static const char *const overlap_keys[] = {
        "overlap-check", "overlap-check.template",
        "overlap-check.main-header", "overlap-check.active-l1",
        "overlap-check.active-l2", "overlap-check.refcount-table",
        "overlap-check.refcount-block", "overlap-check.snapshot-table",
        "overlap-check.inactive-l1", "overlap-check.inactive-l2",
    };
    QGuardOpts *merged = qguard_opts_copy(open_state.opts);
    bool qcow2 = image && !strcmp(qguard_image_format(image), "qcow2");
    bool new_cache_size = qguard_opts_has(changes, "cache-size");
    guint i;

    if (qcow2 && (qguard_opts_has(changes, "overlap-check") ||
                  qguard_opts_has(changes, "overlap-check.template"))) {
        for (i = 0; i < G_N_ELEMENTS(overlap_keys); i++) {
            qguard_opts_del(merged, overlap_keys[i]);
        }
    }
    if (qcow2 && new_cache_size) {
        qguard_opts_del(merged, "l2-cache-size");
        qguard_opts_del(merged, "refcount-cache-size");
    }
    for (i = 0; i < qguard_opts_count(changes); i++) {
        qguard_opts_set(merged, qguard_opts_key(changes, i),
                        qguard_opts_value(changes, i));
    }
    /* QEMU tests for any of the three here, not all of them. */
    if (qcow2 && !new_cache_size &&
        (qguard_opts_has(merged, "l2-cache-size") ||
         qguard_opts_has(merged, "refcount-cache-size"))) {
        qguard_opts_del(merged, "cache-size");
    }
    return merged;
}

static int reopen_f(int argc, char **argv)
{
    QGuardOpts *changes = qguard_opts_new();
    QGuardOpts *merged;
    bool read_only = open_state.read_only, has_rw = false;
    unsigned cache_flags = open_state.cache_flags;
    int c, ret = -EINVAL;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (!set_cache_mode(&cache_flags, optarg)) {
                goto out;
            }
            break;
        case 'o':
            if (!parse_open_options(changes, optarg)) {
                goto out;
            }
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                error_report("Only one -r/-w option may be given");
                goto out;
            }
            read_only = c == 'r';
            has_rw = true;
            break;
        default:
            command_usage(&reopen_cmd);
            goto out;
        }
    }
    if (optind != argc) {
        command_usage(&reopen_cmd);
        goto out;
    }
    if (!reopen_changes_allowed(changes)) {
        goto out;
    }
    merged = join_reopen_options(changes);
    ret = reopen_image(merged, read_only, cache_flags);
out:
    qguard_opts_free(changes);
    return ret;
}

const Command reopen_cmd = {
    .name = "reopen", .func = reopen_f,
    .argmin = 0, .argmax = -1,
    .args = "[(-r|-w)] [-c cache] [-o options]",
    .oneline = "reopens an image with new options",
    .help = reopen_help,
};
