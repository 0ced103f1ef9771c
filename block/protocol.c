/* SPDX-License-Identifier: MIT */
/*
 * Image file names as QEMU reads them: an optional protocol prefix before
 * the first colon that comes before any slash ("file:", "blkdebug:"), and
 * the protocol node's options (file.*).
 *
 * Copyright (c) 2026 The qguard authors
 *
 * qguard has one protocol that does I/O, the host file.  blkdebug is
 * accepted without rules: what it keeps is its limits, which the host
 * file applies as QEMU's block layer does (host-file.c).
 */
#include <inttypes.h>
#include <limits.h>
#include <string.h>

#include "block_int.h"

bool bdrv_path_has_protocol(const char *path)
{
    return path[strcspn(path, ":/")] == ':';
}

/*
 * @path with no protocol prefix, as a name that still opens the same file:
 * "./" goes in front of one that would otherwise look like a protocol
 * prefix, as in QEMU's names for such files ("file:a:b" is "./a:b").
 */
static char *unambiguous_path(const char *path)
{
    if (bdrv_path_has_protocol(path)) {
        return g_strconcat("./", path, NULL);
    }
    return g_strdup(path);
}

/* "file:NAME", or an error for any other prefix. */
static char *file_path(const char *filename, GError **errp)
{
    size_t len;

    if (!bdrv_path_has_protocol(filename)) {
        return g_strdup(filename);
    }
    if (g_str_has_prefix(filename, "file:")) {
        return unambiguous_path(filename + strlen("file:"));
    }
    len = strcspn(filename, ":");
    g_set_error(errp, QGUARD_ERROR, ENOENT, "Unknown protocol '%.*s'",
                (int)len, filename);
    return NULL;
}

char *bdrv_plain_filename(const char *filename, GError **errp)
{
    if (g_str_has_prefix(filename, "blkdebug:")) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Protocol driver 'blkdebug' does not support image "
                    "creation");
        return NULL;
    }
    return file_path(filename, errp);
}

/*
 * blkdebug's config file holds its rules.  Without a rule engine the only
 * honest answer for one is a refusal, after the check QEMU makes first.
 */
static int check_blkdebug_config(const char *config, GError **errp)
{
    if (!config || !*config) {
        return 0;
    }
    if (!g_file_test(config, G_FILE_TEST_EXISTS)) {
        g_set_error(errp, QGUARD_ERROR, ENOENT,
                    "Could not read blkdebug config file: %s",
                    g_strerror(ENOENT));
        return -ENOENT;
    }
    g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                "blkdebug config file '%s': blkdebug rules are not "
                "supported", config);
    return -ENOTSUP;
}

static bool is_file_option(const char *key)
{
    return !strcmp(key, "filename") || !strcmp(key, "driver") ||
           !strcmp(key, "locking") || !strcmp(key, "cache.direct") ||
           !strcmp(key, "cache.no-flush") || bdrv_file_node_option(key);
}

static bool is_blkdebug_option(const char *key)
{
    return !strcmp(key, "driver") || !strcmp(key, "align") ||
           !strcmp(key, "max-transfer") || !strcmp(key, "opt-write-zero") ||
           !strcmp(key, "max-write-zero") || !strcmp(key, "opt-discard") ||
           !strcmp(key, "max-discard") ||
           !strcmp(key, "config") || !strcmp(key, "image.filename") ||
           !strcmp(key, "image.driver") || !strcmp(key, "image.locking") ||
           !strcmp(key, "locking") || !strcmp(key, "cache.direct") ||
           !strcmp(key, "cache.no-flush") || bdrv_node_option(key);
}

/* Every file.* option must be one the protocol node understands. */
static int check_protocol_options(const char *protocol,
                                  const QGuardOpts *opts, GError **errp)
{
    bool blkdebug = !strcmp(protocol, "blkdebug");
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);

        if (!g_str_has_prefix(key, "file.")) {
            continue;
        }
        key += strlen("file.");
        if (blkdebug ? !is_blkdebug_option(key) : !is_file_option(key)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Block protocol '%s' doesn't support the option '%s'",
                        protocol, key);
            return -EINVAL;
        }
    }
    return 0;
}

/*
 * One of blkdebug's limits: a size below INT_MAX and a multiple of @unit
 * (and a power of two for the request alignment), as QEMU's blkdebug
 * requires.  0 if not given.
 */
static int parse_blkdebug_limit(const QGuardOpts *opts, const char *name,
                                uint64_t unit, bool pow2, uint64_t *value,
                                GError **errp)
{
    g_autofree char *key = g_strconcat("file.", name, NULL);
    const char *str = qguard_opts_get(opts, key);

    *value = 0;
    if (!str) {
        return 0;
    }
    if (qguard_parse_size_option(name, str, value, NULL, errp) < 0) {
        return -EINVAL;
    }
    if (*value && (*value >= INT_MAX || *value % MAX(unit, 1) ||
                   (pow2 && (*value & (*value - 1))))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cannot meet constraints with %s %" PRIu64, name,
                    *value);
        return -EINVAL;
    }
    return 0;
}

static int parse_blkdebug_limits(BdrvProtocol *p, const QGuardOpts *opts,
                                 GError **errp)
{
    if (parse_blkdebug_limit(opts, "align", 1, true, &p->align, errp) < 0 ||
        parse_blkdebug_limit(opts, "max-transfer", p->align, false,
                             &p->max_transfer, errp) < 0 ||
        parse_blkdebug_limit(opts, "opt-write-zero", p->align, false,
                             &p->opt_write_zero, errp) < 0 ||
        parse_blkdebug_limit(opts, "max-write-zero",
                             MAX(p->opt_write_zero, p->align), false,
                             &p->max_write_zero, errp) < 0 ||
        parse_blkdebug_limit(opts, "opt-discard", p->align, false,
                             &p->opt_discard, errp) < 0 ||
        parse_blkdebug_limit(opts, "max-discard",
                             MAX(p->opt_discard, p->align), false,
                             &p->max_discard, errp) < 0) {
        return -EINVAL;
    }
    return 0;
}

static int parse_blkdebug(BdrvProtocol *p, const char *spec,
                          const QGuardOpts *opts, GError **errp)
{
    const char *image_driver = qguard_opts_get(opts, "file.image.driver");
    g_autofree char *config = NULL;
    const char *image;
    int ret;

    if (spec) {
        /* "CONFIG:IMAGE" after "blkdebug:" */
        const char *colon = strchr(spec, ':');

        if (!colon) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "blkdebug requires both config file and image path");
            return -EINVAL;
        }
        config = g_strndup(spec, colon - spec);
        image = colon + 1;
    } else {
        config = g_strdup(qguard_opts_get(opts, "file.config"));
        image = qguard_opts_get(opts, "file.image.filename");
        if (!image) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "A block device must be specified for \"image\"");
            return -EINVAL;
        }
    }
    ret = check_blkdebug_config(config, errp);
    if (ret < 0) {
        return ret;
    }
    if (image_driver && strcmp(image_driver, "file")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unknown protocol driver '%s' (only 'file' is supported)",
                    image_driver);
        return -EINVAL;
    }
    ret = parse_blkdebug_limits(p, opts, errp);
    if (ret < 0) {
        return ret;
    }
    if (spec) {
        p->path = file_path(image, errp);
        if (!p->path) {
            return -ENOENT;
        }
    } else {
        p->path = g_strdup(image);
    }
    return 0;
}

int bdrv_protocol_parse(BdrvProtocol *p, const char *filename,
                        const QGuardOpts *opts, GError **errp)
{
    const char *driver = qguard_opts_get(opts, "file.driver");
    const char *spec = NULL;
    int ret;

    memset(p, 0, sizeof(*p));
    if (filename && g_str_has_prefix(filename, "blkdebug:") &&
        (!driver || !strcmp(driver, "blkdebug"))) {
        driver = "blkdebug";
        spec = filename + strlen("blkdebug:");
    }
    if (!driver) {
        driver = "file";
    }
    if (strcmp(driver, "file") && strcmp(driver, "blkdebug")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Unknown protocol driver '%s' (only 'file' is supported)",
                    driver);
        return -EINVAL;
    }
    p->protocol = driver;
    ret = check_protocol_options(driver, opts, errp);
    if (ret < 0) {
        return ret;
    }
    if (!strcmp(driver, "blkdebug")) {
        ret = parse_blkdebug(p, spec, opts, errp);
        if (ret < 0) {
            bdrv_protocol_clear(p);
            return ret;
        }
        p->filename = g_strdup(filename ? filename : p->path);
        return 0;
    }
    if (filename) {
        /* Only a name given as a string has a prefix (QEMU alike). */
        p->path = file_path(filename, errp);
        if (!p->path) {
            return -ENOENT;
        }
    } else {
        p->path = g_strdup(qguard_opts_get(opts, "file.filename"));
    }
    p->filename = g_strdup(p->path);
    return 0;
}

void bdrv_protocol_clear(BdrvProtocol *p)
{
    g_free(p->path);
    g_free(p->filename);
    memset(p, 0, sizeof(*p));
}
