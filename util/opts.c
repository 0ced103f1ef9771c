/* SPDX-License-Identifier: MIT */
/*
 * Option lists and value parsing with QEMU's syntax and messages.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qguard.h"
#include "block/block_int.h"

G_DEFINE_QUARK(qguard-error-quark, qguard_error)

typedef struct OptPair {
    char *key;
    char *value;
} OptPair;

struct QGuardOpts {
    GPtrArray *pairs;   /* of OptPair, in insertion order */
};

static void opt_pair_free(gpointer p)
{
    OptPair *pair = p;

    g_free(pair->key);
    g_free(pair->value);
    g_free(pair);
}

QGuardOpts *qguard_opts_new(void)
{
    QGuardOpts *opts = g_new0(QGuardOpts, 1);

    opts->pairs = g_ptr_array_new_with_free_func(opt_pair_free);
    return opts;
}

QGuardOpts *qguard_opts_copy(const QGuardOpts *src)
{
    QGuardOpts *opts = qguard_opts_new();
    guint i;

    if (src) {
        for (i = 0; i < src->pairs->len; i++) {
            OptPair *p = g_ptr_array_index(src->pairs, i);
            qguard_opts_set(opts, p->key, p->value);
        }
    }
    return opts;
}

void qguard_opts_free(QGuardOpts *opts)
{
    if (opts) {
        g_ptr_array_free(opts->pairs, TRUE);
        g_free(opts);
    }
}

static OptPair *find_pair(const QGuardOpts *opts, const char *key)
{
    guint i;

    if (!opts) {
        return NULL;
    }
    for (i = 0; i < opts->pairs->len; i++) {
        OptPair *p = g_ptr_array_index(opts->pairs, i);
        if (strcmp(p->key, key) == 0) {
            return p;
        }
    }
    return NULL;
}

void qguard_opts_set(QGuardOpts *opts, const char *key, const char *value)
{
    OptPair *p = find_pair(opts, key);

    if (p) {
        g_free(p->value);
        p->value = g_strdup(value);
        return;
    }
    p = g_new(OptPair, 1);
    p->key = g_strdup(key);
    p->value = g_strdup(value);
    g_ptr_array_add(opts->pairs, p);
}

const char *qguard_opts_get(const QGuardOpts *opts, const char *key)
{
    OptPair *p = find_pair(opts, key);

    return p ? p->value : NULL;
}

bool qguard_opts_has(const QGuardOpts *opts, const char *key)
{
    return find_pair(opts, key) != NULL;
}

void qguard_opts_del(QGuardOpts *opts, const char *key)
{
    OptPair *p = find_pair(opts, key);

    if (p) {
        g_ptr_array_remove(opts->pairs, p);
    }
}

guint qguard_opts_count(const QGuardOpts *opts)
{
    return opts ? opts->pairs->len : 0;
}

const char *qguard_opts_key(const QGuardOpts *opts, guint i)
{
    return ((OptPair *)g_ptr_array_index(opts->pairs, i))->key;
}

const char *qguard_opts_value(const QGuardOpts *opts, guint i)
{
    return ((OptPair *)g_ptr_array_index(opts->pairs, i))->value;
}

/*
 * QemuOpts syntax: a key ends at '=' or ','; inside a value ",," stands for
 * a literal comma.  Returns the position after the element.
 */
static const char *take_element(const char *p, GString *key, GString *value,
                                bool *has_value)
{
    while (*p && *p != '=' && *p != ',') {
        g_string_append_c(key, *p++);
    }
    *has_value = *p == '=';
    if (!*has_value) {
        return *p == ',' ? p + 1 : p;
    }
    p++;
    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                return p + 1;
            }
            p++;
        }
        g_string_append_c(value, *p++);
    }
    return p;
}

bool qguard_opts_parse(QGuardOpts *opts, const char *str,
                       const char *implied_key, GError **errp)
{
    const char *p = str;
    bool first = true;

    while (*p) {
        g_autoptr(GString) key = g_string_new(NULL);
        g_autoptr(GString) value = g_string_new(NULL);
        bool has_value;

        if (first && implied_key && !strchr(p, '=')) {
            /* "file.qcow2" alone, or with ",," escapes, is the implied value. */
            g_autoptr(GString) v = g_string_new(NULL);
            while (*p) {
                if (*p == ',' && p[1] != ',') {
                    break;
                }
                if (*p == ',') {
                    p++;
                }
                g_string_append_c(v, *p++);
            }
            qguard_opts_set(opts, implied_key, v->str);
            if (*p == ',') {
                p++;
            }
            first = false;
            continue;
        }
        p = take_element(p, key, value, &has_value);
        if (!key->len) {
            g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid parameter ''");
            return false;
        }
        if (!has_value && first && implied_key) {
            qguard_opts_set(opts, implied_key, key->str);
        } else if (!has_value) {
            /* QemuOpts reads a bare "key" as "key=on". */
            qguard_opts_set(opts, key->str, "on");
        } else {
            qguard_opts_set(opts, key->str, value->str);
        }
        first = false;
    }
    return true;
}

bool qguard_parse_bool(const char *name, const char *value, bool *out,
                       GError **errp)
{
    if (!strcmp(value, "on") || !strcmp(value, "yes") ||
        !strcmp(value, "true") || !strcmp(value, "y")) {
        *out = true;
        return true;
    }
    if (!strcmp(value, "off") || !strcmp(value, "no") ||
        !strcmp(value, "false") || !strcmp(value, "n")) {
        *out = false;
        return true;
    }
    g_set_error(errp, QGUARD_ERROR, EINVAL,
                "Parameter '%s' expects 'on' or 'off'", name);
    return false;
}

static int suffix_shift(char c)
{
    switch (g_ascii_toupper(c)) {
    case 'B': return 0;
    case 'K': return 10;
    case 'M': return 20;
    case 'G': return 30;
    case 'T': return 40;
    case 'P': return 50;
    case 'E': return 60;
    default:  return -1;
    }
}

bool qguard_parse_size(const char *str, uint64_t *size, GError **errp)
{
    const char *p = str;
    const char *frac = NULL;
    uint64_t whole = 0;
    double fraction = 0.0;
    int shift = 0;
    bool digits = false;
    bool hex = false;

    while (g_ascii_isspace(*p)) {
        p++;
    }
    /* As qemu_strtosz: hexadecimal integers, decimal otherwise (no octal). */
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X') &&
        g_ascii_isxdigit(p[2])) {
        hex = true;
        p += 2;
        while (g_ascii_isxdigit(*p)) {
            unsigned d = g_ascii_xdigit_value(*p);
            if (whole > (UINT64_MAX - d) / 16) {
                goto too_large;
            }
            whole = whole * 16 + d;
            digits = true;
            p++;
        }
    } else {
        while (g_ascii_isdigit(*p)) {
            unsigned d = *p - '0';
            if (whole > (UINT64_MAX - d) / 10) {
                goto too_large;
            }
            whole = whole * 10 + d;
            digits = true;
            p++;
        }
    }
    if (*p == '.') {
        if (hex) {
            goto invalid;
        }
        frac = p;
        p++;
        while (g_ascii_isdigit(*p)) {
            p++;
        }
        fraction = g_ascii_strtod(frac, NULL);
        if (frac + 1 == p && !digits) {
            goto invalid;
        }
    }
    if (!digits && !frac) {
        goto invalid;
    }
    if (*p) {
        shift = suffix_shift(*p);
        if (shift < 0 || p[1] != '\0') {
            goto invalid;
        }
    }
    if (frac && fraction > 0 && shift == 0) {
        /* A fraction of a byte is meaningless. */
        goto invalid;
    }
    if (shift > 0 && whole > (UINT64_MAX >> shift)) {
        goto too_large;
    }
    {
        double extra = ldexp(fraction, shift);
        uint64_t base = whole << shift;
        if (extra >= 0x1p64 || base > UINT64_MAX - (uint64_t)extra) {
            goto too_large;
        }
        *size = base + (uint64_t)extra;
    }
    return true;

invalid:
    g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid size '%s'", str);
    return false;
too_large:
    g_set_error(errp, QGUARD_ERROR, ERANGE, "Size '%s' is too large", str);
    return false;
}

char *qguard_size_to_str(uint64_t val)
{
    static const char *const suffixes[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"
    };
    uint64_t div;
    int e;

    /*
     * Pick the power of 1024 that keeps the integer part below 1000, so
     * 1000 KiB prints as "0.977 MiB" as QEMU does.
     */
    frexp(val / (1000.0 / 1024.0), &e);
    e = (e - 1) / 10;
    div = 1ULL << (e * 10);
    return g_strdup_printf("%0.3g %s", (double)val / div, suffixes[e]);
}

QGuardOpts *bdrv_opts_subset(const QGuardOpts *opts, const char *prefix)
{
    QGuardOpts *sub = qguard_opts_new();
    size_t plen = strlen(prefix);
    guint i;

    for (i = 0; i < qguard_opts_count(opts); i++) {
        const char *key = qguard_opts_key(opts, i);
        if (!strncmp(key, prefix, plen) && key[plen] == '.') {
            qguard_opts_set(sub, key + plen + 1, qguard_opts_value(opts, i));
        }
    }
    return sub;
}
