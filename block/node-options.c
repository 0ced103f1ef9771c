/* SPDX-License-Identifier: MIT */
/*
 * The runtime options QEMU's block layer takes on every node (node-name,
 * auto-read-only, detect-zeroes, force-share, discard), for the image and
 * for its file protocol node, and those of the file node that change
 * nothing qguard writes (aio, aio-max-batch, pr-manager, ...).
 * libvirt and QEMU's own tests pass them in --image-opts and qemu-io's
 * open -o; refusing them would refuse the whole command line.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <string.h>

#include "block_int.h"
#include "util/id.h"

/* QEMU keeps a node name in 32 bytes, its terminator included. */
#define NODE_NAME_MAX 31

static int parse_node_name(const char *name, const char *taken,
                           GError **errp)
{
    if (!qguard_id_wellformed(name)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid node-name: '%s'",
                    name);
        return -EINVAL;
    }
    if (taken && !strcmp(name, taken)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Duplicate nodes with node-name='%s'", name);
        return -EINVAL;
    }
    if (strlen(name) > NODE_NAME_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Node name too long");
        return -EINVAL;
    }
    return 0;
}

static int parse_detect_zeroes(const char *value, BdrvDetectZeroes *out,
                               GError **errp)
{
    if (!strcmp(value, "off")) {
        *out = BDRV_DETECT_ZEROES_OFF;
    } else if (!strcmp(value, "on")) {
        *out = BDRV_DETECT_ZEROES_ON;
    } else if (!strcmp(value, "unmap")) {
        *out = BDRV_DETECT_ZEROES_UNMAP;
    } else {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "invalid parameter value: %s", value);
        return -EINVAL;
    }
    return 0;
}

/* QEMU's bdrv_parse_discard_flags(): does the node pass discards on? */
static bool parse_discard_mode(const char *mode, bool *unmap)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        *unmap = false;
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        *unmap = true;
    } else {
        return false;
    }
    return true;
}

/* The value of option @name of the node whose options start with @prefix. */
static const char *node_opt(const QGuardOpts *opts, const char *prefix,
                            const char *name)
{
    g_autofree char *key = g_strconcat(prefix, name, NULL);

    return qguard_opts_get(opts, key);
}

/*
 * What names a node and how it writes, under @prefix ("" for the format
 * node, "file." for its protocol node).  QEMU names the protocol node
 * first, so a format node-name equal to @taken is the duplicate.
 */
static int parse_identity(const QGuardOpts *opts, const char *prefix,
                          const char *taken, BdrvNodeOptions *o,
                          GError **errp)
{
    const char *v;
    bool auto_read_only;
    int ret;

    o->node_name = node_opt(opts, prefix, "node-name");
    if (o->node_name) {
        ret = parse_node_name(o->node_name, taken, errp);
        if (ret < 0) {
            return ret;
        }
    }
    /* the tools ask for write access anyway: checked, then unused */
    v = node_opt(opts, prefix, "auto-read-only");
    if (v && !qguard_parse_bool("auto-read-only", v, &auto_read_only, errp)) {
        return -EINVAL;
    }
    v = node_opt(opts, prefix, "detect-zeroes");
    o->detect_zeroes = BDRV_DETECT_ZEROES_OFF;
    return v ? parse_detect_zeroes(v, &o->detect_zeroes, errp) : 0;
}

/*
 * What a node shares and passes on, under @prefix: force-share, which
 * only a read-only node may use, and discard (default unmap).
 */
static int parse_sharing(const QGuardOpts *opts, const char *prefix,
                         bool read_only, BdrvNodeOptions *o, GError **errp)
{
    const char *v = node_opt(opts, prefix, "force-share");

    o->force_share = false;
    if (v) {
        if (!qguard_parse_bool("force-share", v, &o->force_share, errp)) {
            return -EINVAL;
        }
        if (o->force_share && !read_only) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "force-share=on can only be used with read-only "
                        "images");
            return -EINVAL;
        }
    }
    v = node_opt(opts, prefix, "discard");
    o->discard_unmap = true;
    if (v && !parse_discard_mode(v, &o->discard_unmap)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid discard option");
        return -EINVAL;
    }
    return 0;
}

/* file.aio: QEMU's three modes; native needs O_DIRECT, as there. */
static int parse_aio(const char *value, bool direct, GError **errp)
{
    if (strcmp(value, "threads") && strcmp(value, "native") &&
        strcmp(value, "io_uring")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "invalid parameter value: %s", value);
        return -EINVAL;
    }
    if (!strcmp(value, "native") && !direct) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "aio=native was specified, but it requires "
                    "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    return 0;
}

/* The file node's options beyond those of protocol.c and every node's. */
static int parse_file_node(const QGuardOpts *opts, bool read_only,
                           bool file_direct, BdrvNodeOptions *o,
                           GError **errp)
{
    const char *v;
    bool b;
    int ret;

    v = qguard_opts_get(opts, "file.read-only");
    if (v) {
        if (!qguard_parse_bool("read-only", v, &b, errp)) {
            return -EINVAL;
        }
        if (b && !read_only) {
            g_set_error(errp, QGUARD_ERROR, EACCES,
                        "Block node is read-only");
            return -EACCES;
        }
    }
    ret = parse_sharing(opts, "file.", read_only, o, errp);
    if (ret < 0) {
        return ret;
    }
    v = qguard_opts_get(opts, "file.aio");
    if (v) {
        ret = parse_aio(v, file_direct, errp);
        if (ret < 0) {
            return ret;
        }
    }
    v = qguard_opts_get(opts, "file.aio-max-batch");
    if (v && !qguard_check_opt_syntax("aio-max-batch", v, OPT_NUMBER, errp)) {
        return -EINVAL;
    }
    v = qguard_opts_get(opts, "file.x-check-cache-dropped");
    if (v && !qguard_parse_bool("x-check-cache-dropped", v, &b, errp)) {
        return -EINVAL;
    }
    v = qguard_opts_get(opts, "file.pr-manager");
    if (v) {
        /* no --object defines one */
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "No persistent reservation manager with id '%s'", v);
        return -EINVAL;
    }
    return 0;
}

int bdrv_node_options_parse(const QGuardOpts *opts, bool read_only,
                            bool file_direct, BdrvNodeOptions *image,
                            BdrvNodeOptions *file, GError **errp)
{
    int ret;

    ret = parse_identity(opts, "file.", NULL, file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = parse_file_node(opts, read_only, file_direct, file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = parse_identity(opts, "", file->node_name, image, errp);
    if (ret < 0) {
        return ret;
    }
    return parse_sharing(opts, "", read_only, image, errp);
}

bool bdrv_node_option(const char *key)
{
    return !strcmp(key, "node-name") || !strcmp(key, "auto-read-only") ||
           !strcmp(key, "detect-zeroes");
}

bool bdrv_file_node_option(const char *key)
{
    return bdrv_node_option(key) || !strcmp(key, "read-only") ||
           !strcmp(key, "force-share") || !strcmp(key, "discard") ||
           !strcmp(key, "aio") || !strcmp(key, "aio-max-batch") ||
           !strcmp(key, "x-check-cache-dropped") ||
           !strcmp(key, "pr-manager");
}
