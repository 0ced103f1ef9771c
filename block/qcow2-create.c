/* SPDX-License-Identifier: MIT */
/*
 * qcow2 image creation.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * A new image starts as three clusters written directly: the header, a
 * one-cluster refcount table and one refcount block that counts those three.
 * Everything after that (the L1 table sized for the disk, the backing file
 * name, preallocation) goes through the normal driver paths on the opened
 * image, so creation exercises the same allocation, ordering and overlap
 * checks as any other write.
 */
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "qcow2.h"

typedef struct CreateOpt {
    const char *name;
    BlockOptType type;
    const char *def;        /* shown in the description when not given */
    const char *help;
} CreateOpt;

/* In the order qemu-img prints them in its "Formatting" line. */
static const CreateOpt qcow2_create_opts[] = {
    { "encryption", OPT_BOOL, NULL, "Encryption (not supported)" },
    { "cluster_size", OPT_SIZE, "65536",
      "qcow2 cluster size (512 B to 2 MiB)" },
    { "extended_l2", OPT_BOOL, "off",
      "Extended L2 entries: 32 subclusters per cluster (v3, 16k clusters)" },
    { "preallocation", OPT_STRING, NULL,
      "Preallocation mode: off, metadata, falloc, full" },
    { "compression_type", OPT_STRING, "zlib",
      "Compression method for compressed clusters (zlib, zstd)" },
    { "size", OPT_SIZE, NULL, "Virtual disk size" },
    { "compat", OPT_STRING, NULL,
      "Compatibility level: 0.10 (v2) or 1.1 (v3, default)" },
    { "backing_file", OPT_STRING, NULL, "File name of a base image" },
    { "backing_fmt", OPT_STRING, NULL, "Image format of the base image" },
    { "data_file", OPT_STRING, NULL,
      "File name of an external data file (v3)" },
    { "data_file_raw", OPT_BOOL, NULL,
      "The external data file reads as the raw disk by itself" },
    { "encrypt.format", OPT_STRING, NULL, "Encryption format (not supported)" },
    { "lazy_refcounts", OPT_BOOL, "off", "Postpone refcount updates (v3)" },
    { "refcount_bits", OPT_NUMBER, "16",
      "Width of a refcount entry in bits: 1, 2, 4, 8, 16, 32 or 64" },
    /* The file protocol's (see is_file_opt()), listed after the format's. */
    { "nocow", OPT_BOOL, NULL, "Turn off copy-on-write (btrfs)" },
    { "extent_size_hint", OPT_SIZE, NULL,
      "Extent size hint for the image file (XFS), 0 for none" },
};

/* Options of the file the image is created in rather than of qcow2. */
static bool is_file_opt(const char *name)
{
    return !strcmp(name, "nocow") || !strcmp(name, "extent_size_hint");
}

static const CreateOpt *find_create_opt(const char *name)
{
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(qcow2_create_opts); i++) {
        if (!strcmp(qcow2_create_opts[i].name, name)) {
            return &qcow2_create_opts[i];
        }
    }
    return NULL;
}

int qcow2_create_opt_type(const char *name)
{
    const CreateOpt *opt = find_create_opt(name);

    return opt && !is_file_opt(name) ? (int)opt->type : -1;
}

static char *escape_commas(const char *value)
{
    g_auto(GStrv) parts = g_strsplit(value, ",", -1);

    return g_strjoinv(",,", parts);
}

char *qcow2_create_describe(const QGuardOpts *opts, GError **errp)
{
    GString *str = g_string_new("fmt=qcow2");
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        const CreateOpt *opt = find_create_opt(key);
        if (!opt && !qcow2_is_runtime_option(key)) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Invalid parameter '%s'", key);
            goto fail;
        }
        if (opt && !qguard_check_opt_syntax(key, qguard_opts_value(opts, i),
                                     opt->type, errp)) {
            goto fail;
        }
    }
    for (i = 0; i < G_N_ELEMENTS(qcow2_create_opts); i++) {
        const CreateOpt *opt = &qcow2_create_opts[i];
        const char *value = qguard_opts_get(opts, opt->name);
        uint64_t n;

        if (!value) {
            value = opt->def;
        }
        if (!value) {
            continue;
        }
        if (opt->type == OPT_SIZE &&
            qguard_parse_size(value, &n, NULL) == 0) {
            g_string_append_printf(str, " %s=%" PRIu64, opt->name, n);
        } else if (opt->type == OPT_NUMBER &&
                   qguard_parse_number(value, &n)) {
            /* As QEMU prints it: signed, so "-1" stays "-1". */
            g_string_append_printf(str, " %s=%" PRId64, opt->name,
                                   (int64_t)n);
        } else if (opt->type == OPT_STRING) {
            g_autofree char *escaped = escape_commas(value);

            /* Commas doubled, so that the line reads back as -o. */
            g_string_append_printf(str, " %s=%s", opt->name, escaped);
        } else {
            g_string_append_printf(str, " %s=%s", opt->name, value);
        }
    }
    return g_string_free(str, FALSE);

fail:
    g_string_free(str, TRUE);
    return NULL;
}

/*
 * -o help, in QEMU's words and order (sorted by name): scripts parse it.
 * The encryption options are listed because QEMU lists them; using them
 * is refused.
 */
char *qcow2_create_help(void)
{
    static const char *const lines[][2] = {
        { "backing_file=<str>", "File name of a base image" },
        { "backing_fmt=<str>", "Image format of the base image" },
        { "cluster_size=<size>", "qcow2 cluster size" },
        { "compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1])" },
        { "compression_type=<str>",
          "Compression method used for image cluster compression" },
        { "data_file=<str>", "File name of an external data file" },
        { "data_file_raw=<bool (on/off)>",
          "The external data file must stay valid as a raw image" },
        { "encrypt.cipher-alg=<str>", "Name of encryption cipher algorithm" },
        { "encrypt.cipher-mode=<str>", "Name of encryption cipher mode" },
        { "encrypt.format=<str>",
          "Encrypt the image, format choices: 'aes', 'luks'" },
        { "encrypt.hash-alg=<str>", "Name of encryption hash algorithm" },
        { "encrypt.iter-time=<num>",
          "Time to spend in PBKDF in milliseconds" },
        { "encrypt.ivgen-alg=<str>", "Name of IV generator algorithm" },
        { "encrypt.ivgen-hash-alg=<str>",
          "Name of IV generator hash algorithm" },
        { "encrypt.key-secret=<str>",
          "ID of secret providing qcow AES key or LUKS passphrase" },
        { "encryption=<bool (on/off)>",
          "Encrypt the image with format 'aes'. (Deprecated in favor of "
          "encrypt.format=aes)" },
        { "extended_l2=<bool (on/off)>", "Extended L2 tables" },
        { "lazy_refcounts=<bool (on/off)>", "Postpone refcount updates" },
        { "preallocation=<str>",
          "Preallocation mode (allowed values: off, metadata, falloc, "
          "full)" },
        { "refcount_bits=<num>", "Width of a reference count entry in bits" },
        { "size=<size>", "Virtual disk size" },
    };
    GString *str = g_string_new(NULL);
    size_t i;

    for (i = 0; i < G_N_ELEMENTS(lines); i++) {
        g_string_append_printf(str, "  %-22s - %s\n", lines[i][0],
                               lines[i][1]);
    }
    return g_string_free(str, FALSE);
}

typedef struct Qcow2CreateParams {
    uint64_t size;
    int cluster_bits;
    int refcount_order;
    int version;
    bool lazy_refcounts;
    bool extended_l2;
    uint8_t compression_type;
    const char *data_file;
    bool data_file_raw;
    Qcow2PreallocMode prealloc;
    const char *prealloc_name;
    const char *backing_file;
    const char *backing_fmt;
} Qcow2CreateParams;

static int parse_create_params(const QGuardOpts *opts, Qcow2CreateParams *p,
                               GError **errp)
{
    const char *str;
    uint64_t n;
    bool b;

    memset(p, 0, sizeof(*p));
    str = qguard_opts_get(opts, "size");
    if (!str || qguard_parse_size(str, &p->size, NULL) < 0) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Image creation needs a size parameter");
        return -EINVAL;
    }
    /* The block layer works in 512-byte sectors; QEMU rounds up likewise. */
    p->size = ROUND_UP(p->size, 512);
    if (p->size > INT64_MAX) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Could not resize image: Image size cannot be negative");
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "extended_l2");
    if (str && !qguard_parse_bool("extended_l2", str, &p->extended_l2,
                                  errp)) {
        return -EINVAL;
    }

    n = 65536;
    str = qguard_opts_get(opts, "cluster_size");
    if (str && qguard_parse_size(str, &n, NULL) < 0) {
        n = 0;
    }
    if (n < 512 || n > (1 << MAX_CLUSTER_BITS) || (n & (n - 1))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Cluster size must be a power of two between 512 and "
                    "2048k");
        return -EINVAL;
    }
    p->cluster_bits = g_bit_nth_lsf(n, -1);
    if (p->extended_l2 && n < (512 << 5)) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Extended L2 entries are only supported with cluster "
                    "sizes of at least %u bytes", 512u << 5);
        return -EINVAL;
    }

    p->version = 3;
    str = qguard_opts_get(opts, "compat");
    if (str) {
        if (!strcmp(str, "0.10") || !strcmp(str, "v2")) {
            p->version = 2;
        } else if (strcmp(str, "1.1") && strcmp(str, "v3")) {
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Parameter 'version' does not accept value '%s'", str);
            return -EINVAL;
        }
    }

    if (p->extended_l2 && p->version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Extended L2 entries are only supported with "
                    "compatibility level 1.1 and above (use version=v3 or "
                    "greater)");
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "refcount_bits");
    n = 16;
    if (str && !qguard_parse_number(str, &n)) {
        n = 0;
    }
    if (n == 0 || n > 64 || (n & (n - 1))) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Refcount width must be a power of two and may not "
                    "exceed 64 bits");
        return -EINVAL;
    }
    p->refcount_order = g_bit_nth_lsf(n, -1);
    if (p->version < 3 && n != 16) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Different refcount widths than 16 bits require "
                    "compatibility level 1.1 or above (use version=v3 or "
                    "greater)");
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "lazy_refcounts");
    if (str && !qguard_parse_bool("lazy_refcounts", str, &p->lazy_refcounts,
                                  errp)) {
        return -EINVAL;
    }
    if (p->lazy_refcounts && p->version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Lazy refcounts only supported with compatibility level "
                    "1.1 and above (use version=v3 or greater)");
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "preallocation");
    p->prealloc_name = str ? str : "off";
    if (!str || !strcmp(str, "off")) {
        p->prealloc = QCOW2_PREALLOC_OFF;
    } else if (!strcmp(str, "metadata")) {
        p->prealloc = QCOW2_PREALLOC_METADATA;
    } else if (!strcmp(str, "falloc")) {
        p->prealloc = QCOW2_PREALLOC_FALLOC;
    } else if (!strcmp(str, "full")) {
        p->prealloc = QCOW2_PREALLOC_FULL;
    } else {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Parameter 'preallocation' does not accept value '%s'",
                    str);
        return -EINVAL;
    }

    str = qguard_opts_get(opts, "compression_type");
    p->compression_type = QCOW2_COMPRESSION_ZLIB;
    if (str && !strcmp(str, "zstd")) {
        p->compression_type = QCOW2_COMPRESSION_ZSTD;
    } else if (str && strcmp(str, "zlib")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Parameter 'compression-type' does not accept value "
                    "'%s'", str);
        return -EINVAL;
    }
    p->data_file = qguard_opts_get(opts, "data_file");
    str = qguard_opts_get(opts, "data_file_raw");
    if (str && !qguard_parse_bool("data_file_raw", str, &p->data_file_raw,
                                  errp)) {
        return -EINVAL;
    }
    str = qguard_opts_get(opts, "encryption");
    if (qguard_opts_get(opts, "encrypt.format") ||
        (str && qguard_parse_bool("encryption", str, &b, NULL) && b)) {
        g_set_error(errp, QGUARD_ERROR, ENOTSUP,
                    "Encrypted images are not supported by qguard");
        return -ENOTSUP;
    }

    if (p->data_file_raw && !p->data_file) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "data-file-raw requires data-file");
        return -EINVAL;
    }
    if (p->data_file_raw && qguard_opts_get(opts, "backing_file")) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Backing file and data-file-raw cannot be used at the "
                    "same time");
        return -EINVAL;
    }
    if (p->data_file && p->version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "External data files are only supported with "
                    "compatibility level 1.1 and above (use version=v3 or "
                    "greater)");
        return -EINVAL;
    }
    /*
     * A raw data file must read as the disk by itself, so the tables map
     * every cluster to its guest offset from the start.
     */
    if (p->data_file_raw && p->prealloc == QCOW2_PREALLOC_OFF) {
        p->prealloc = QCOW2_PREALLOC_METADATA;
        p->prealloc_name = "metadata";
    }
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB && p->version < 3) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Non-zlib compression type is only supported with "
                    "compatibility level 1.1 and above (use version=v3 or "
                    "greater)");
        return -EINVAL;
    }

    p->backing_file = qguard_opts_get(opts, "backing_file");
    p->backing_fmt = qguard_opts_get(opts, "backing_fmt");
    /* Unallocated subclusters still read from the backing file. */
    if (p->backing_file && p->prealloc != QCOW2_PREALLOC_OFF &&
        !p->extended_l2) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Backing file and preallocation can only be used at the "
                    "same time if extended_l2 is on");
        return -EINVAL;
    }
    {
        int l2_bits = p->cluster_bits - (p->extended_l2 ? 4 : 3);
        int shift = p->cluster_bits + l2_bits;
        uint64_t l1 = (p->size >> shift) + !!(p->size & ((1ULL << shift) - 1));
        if (l1 > QCOW_MAX_L1_SIZE / 8 || p->size > INT64_MAX) {
            g_set_error(errp, QGUARD_ERROR, EFBIG,
                        "The image size is too large for file format 'qcow2' "
                        "(try using a larger cluster size)");
            return -EFBIG;
        }
    }
    return 0;
}

/* Header, refcount table and one refcount block: an image with no L1. */
static int write_empty_image(HostFile *file, const Qcow2CreateParams *p,
                             GError **errp)
{
    QGuardImage img = { .total_size = 0, .file = file };
    BDRVQcow2State s = { 0 };
    uint64_t cs = 1ULL << p->cluster_bits;
    g_autofree uint8_t *buf = g_malloc0(2 * cs);
    int ret;

    s.img = &img;
    s.file = file;
    s.qcow_version = p->version;
    s.cluster_bits = p->cluster_bits;
    s.cluster_size = cs;
    s.refcount_order = p->refcount_order;
    qcow2_refcount_setup_order(&s);
    s.header_length = QCOW2_V3_HEADER_LENGTH;
    s.refcount_table_offset = cs;
    s.refcount_table_size = cs / 8;
    s.compatible_features = p->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS
                                              : 0;
    s.compression_type = p->compression_type;
    if (p->data_file) {
        s.incompatible_features |= QCOW2_INCOMPAT_DATA_FILE;
        s.image_data_file = (char *)p->data_file;
    }
    if (p->data_file_raw) {
        s.autoclear_features |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (p->extended_l2) {
        s.incompatible_features |= QCOW2_INCOMPAT_EXTL2;
    }
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB) {
        s.incompatible_features |= QCOW2_INCOMPAT_COMPRESSION;
    }
    s.unknown_header_ext = g_ptr_array_new();
    ret = qcow2_update_header(&s);
    g_ptr_array_free(s.unknown_header_ext, TRUE);
    if (ret < 0) {
        goto fail;
    }
    be_put64(buf, 2 * cs);
    s.set_refcount(buf + cs, 0, 1);
    s.set_refcount(buf + cs, 1, 1);
    s.set_refcount(buf + cs, 2, 1);
    ret = host_file_pwrite(file, cs, buf, 2 * cs);
    if (ret < 0) {
        goto fail;
    }
    ret = host_file_flush(file);
    if (ret >= 0) {
        return 0;
    }
fail:
    g_set_error(errp, QGUARD_ERROR, -ret, "Could not write qcow2 header: %s",
                g_strerror(-ret));
    return ret;
}

int qcow2_create(const char *filename, const QGuardOpts *opts,
                 QGuardProgressFunc *progress, void *opaque, GError **errp)
{
    Qcow2CreateParams p;
    QGuardOpts *runtime = NULL;
    QGuardImage *img = NULL;
    BDRVQcow2State *s;
    HostFile *file;
    guint i;
    int ret;

    ret = parse_create_params(opts, &p, errp);
    if (ret < 0) {
        return ret;
    }
    /* As QEMU: the data file first, named as given (relative to the cwd). */
    if (p.data_file) {
        ret = qcow2_data_file_create(p.data_file, errp);
        if (ret < 0) {
            return ret;
        }
    }
    ret = bdrv_create_file(&file, filename, opts, errp);
    if (ret < 0) {
        return ret;
    }
    ret = write_empty_image(file, &p, errp);
    host_file_close(file);
    if (ret < 0) {
        goto out;
    }

    runtime = qguard_opts_new();
    for (i = 0; i < qguard_opts_count(opts); i++) {
        if (qcow2_is_runtime_option(qguard_opts_key(opts, i))) {
            qguard_opts_set(runtime, qguard_opts_key(opts, i),
                            qguard_opts_value(opts, i));
        }
    }
    ret = qguard_image_open(&img, filename, "qcow2", runtime,
                            QGUARD_OPEN_RDWR | QGUARD_OPEN_NO_BACKING, errp);
    qguard_opts_free(runtime);
    if (ret < 0) {
        goto out;
    }
    s = img->opaque;
    if (p.backing_file) {
        s->image_backing_file = g_strdup(p.backing_file);
        s->image_backing_format = g_strdup(p.backing_fmt);
        ret = qcow2_update_header(s);
        if (ret < 0) {
            g_set_error(errp, QGUARD_ERROR, -ret,
                        "Could not assign backing file '%s': %s",
                        p.backing_file, g_strerror(-ret));
            goto out;
        }
    }
    ret = qcow2_resize(img, p.size, false, p.prealloc_name, progress, opaque,
                       errp);
    if (ret < 0) {
        g_prefix_error(errp, "Could not resize image: ");
    }
out:
    if (img) {
        GError *close_err = NULL;
        int ret2 = qguard_image_close(img, ret < 0 ? NULL : &close_err);
        if (ret >= 0 && ret2 < 0) {
            g_propagate_error(errp, close_err);
            ret = ret2;
        }
    }
    if (ret < 0) {
        /*
         * The old contents are gone already; a half-made image would only
         * mislead.  QEMU deletes it too.
         */
        unlink(filename);
    }
    return ret;
}
