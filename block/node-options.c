/* SPDX-License-Identifier: MIT */
/*
 * The runtime options QEMU's block layer takes on every node (node-name,
 * auto-read-only, detect-zeroes) and those of its file protocol node that
 * change nothing qguard writes (aio, aio-max-batch, pr-manager, ...).
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

/*
 * The options every node takes, under @prefix ("" for the format node,
 * "file." for its protocol node).  QEMU names the protocol node first, so
 * a format node-name equal to @taken is the duplicate.
 */
static int parse_common(const QGuardOpts *opts, const char *prefix,
                        const char *taken, BdrvNodeOptions *o, GError **errp)
{
    g_autofree char *name_key = g_strconcat(prefix, "node-name", NULL);
    g_autofree char *aro_key = g_strconcat(prefix, "auto-read-only", NULL);
    g_autofree char *dz_key = g_strconcat(prefix, "detect-zeroes", NULL);
    const char *v;
    int ret;

    o->node_name = qguard_opts_get(opts, name_key);
    if (o->node_name) {
        ret = parse_node_name(o->node_name, taken, errp);
        if (ret < 0) {
            return ret;
        }
    }
    v = qguard_opts_get(opts, aro_key);
    if (v && !qguard_parse_bool("auto-read-only", v, &o->auto_read_only,
                                errp)) {
        return -EINVAL;
    }
    v = qguard_opts_get(opts, dz_key);
    o->detect_zeroes = BDRV_DETECT_ZEROES_OFF;
    return v ? parse_detect_zeroes(v, &o->detect_zeroes, errp) : 0;
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

/* The file node's options beyond those of protocol.c. */
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
    v = qguard_opts_get(opts, "file.force-share");
    if (v) {
        if (!qguard_parse_bool("force-share", v, &o->file_force_share,
                               errp)) {
            return -EINVAL;
        }
        if (o->file_force_share && !read_only) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "force-share=on can only be used with read-only "
                        "images");
            return -EINVAL;
        }
    }
    v = qguard_opts_get(opts, "file.discard");
    o->file_discard_unmap = true;
    if (v && !bdrv_parse_discard_mode(v, &o->file_discard_unmap)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid discard option");
        return -EINVAL;
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
                            bool file_direct, BdrvNodeOptions *o,
                            GError **errp)
{
    BdrvNodeOptions file = { 0 };
    int ret;

    memset(o, 0, sizeof(*o));
    ret = parse_common(opts, "file.", NULL, &file, errp);
    if (ret < 0) {
        return ret;
    }
    ret = parse_file_node(opts, read_only, file_direct, o, errp);
    if (ret < 0) {
        return ret;
    }
    return parse_common(opts, "", file.node_name, o, errp);
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
