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
G_DEFINE_QUARK(qguard-check-error-quark, qguard_check_error)

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

int qguard_opts_parse(QGuardOpts *opts, const char *str,
                      const char *implied_key, GError **errp)
{
    const char *p = str;
    bool first = true;

    while (*p) {
        g_autoptr(GString) key = g_string_new(NULL);
        g_autoptr(GString) value = g_string_new(NULL);
        bool has_value;

        if (first && implied_key && !strchr(p, '=')) {
            /*
             * "file.qcow2" alone, or with ",," escapes, is the implied value.
             */
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
            return -EINVAL;
        }
        if (!has_value && first && implied_key) {
            qguard_opts_set(opts, implied_key, key->str);
        } else if (!has_value && g_str_has_prefix(key->str, "no")) {
            /* QemuOpts reads a bare "nokey" as "key=off"... */
            qguard_opts_set(opts, key->str + 2, "off");
        } else if (!has_value) {
            /* ...and any other bare "key" as "key=on". */
            qguard_opts_set(opts, key->str, "on");
        } else {
            qguard_opts_set(opts, key->str, value->str);
        }
        first = false;
    }
    return 0;
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

static int parse_u64(const char *str, const char **end, int base,
                     uint64_t *val);

/*
 * A number option as QEMU reads it (strtoull() in base 0): leading blanks
 * and a sign are accepted and a negative value wraps around, so "-1" is
 * UINT64_MAX.  0, -EINVAL if it is no number, -ERANGE if it overflows.
 */
static int parse_number(const char *str, uint64_t *value)
{
    const char *end;
    int ret = parse_u64(str, &end, 0, value);

    if (ret == 0 && *end != '\0') {
        ret = -EINVAL;
    }
    return ret;
}

bool qguard_parse_number(const char *str, uint64_t *value)
{
    return parse_number(str, value) == 0;
}

bool qguard_check_opt_syntax(const char *name, const char *value,
                             BlockOptType type, GError **errp)
{
    uint64_t n;
    bool b;

    switch (type) {
    case OPT_SIZE:
        return qguard_parse_size_option(name, value, &n, NULL, errp) == 0;
    case OPT_NUMBER:
        switch (parse_number(value, &n)) {
        case 0:
            return true;
        case -ERANGE:
            g_set_error(errp, QGUARD_ERROR, ERANGE,
                        "Value '%s' is too large for parameter '%s'",
                        value, name);
            return false;
        default:
            g_set_error(errp, QGUARD_ERROR, EINVAL,
                        "Parameter '%s' expects a number", name);
            return false;
        }
    case OPT_BOOL:
        return qguard_parse_bool(name, value, &b, errp);
    case OPT_STRING:
        return true;
    }
    return true;
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

/*
 * strtoull() as QEMU's qemu_strtou64() wraps it: an overflow saturates and
 * is -ERANGE, no digits at all is -EINVAL; *@end is where parsing stopped
 * either way, because the caller decides what may follow.
 */
static int parse_u64(const char *str, const char **end, int base,
                     uint64_t *val)
{
    char *ep;
    int err;

    errno = 0;
    *val = strtoull(str, &ep, base);
    err = errno;
    *end = ep;
    if (err == ERANGE) {
        *val = UINT64_MAX;
        return -ERANGE;
    }
    return ep == str ? -EINVAL : -err;
}

/*
 * The decimal fraction at @dot as a 0.64 fixed-point number; *@end is
 * where the number goes on.  -EINVAL for an exponent, which QEMU refuses.
 */
static int parse_fraction(const char *dot, const char **end, uint64_t *frac)
{
    char *ep;
    double f;

    *frac = 0;
    errno = 0;
    f = g_ascii_strtod(dot, &ep);
    if (ep == dot) {
        /* "1." and "1.k": a lone dot is skipped. */
        *end = dot + 1;
    } else if (errno == ERANGE) {
        /*
         * An underflowing fraction counts for nothing, and QEMU 7.2 steps
         * over one more character (a suffix there is lost): the same here.
         */
        *end = *ep ? ep + 1 : ep;
    } else if (memchr(dot, 'e', ep - dot) || memchr(dot, 'E', ep - dot)) {
        return -EINVAL;
    } else {
        *end = ep;
        /*
         * A fraction that rounds to 1.0 does not fit in 0.64; QEMU 7.2's
         * conversion yields 0 for it on x86-64 ("0.99999999999999999999k"
         * is 0 there), and drop-in use means the same result here.
         */
        *frac = f < 1.0 ? (uint64_t)(f * 0x1p64) : 0;
    }
    return 0;
}

/*
 * QEMU 7.2's qemu_strtosz(): an integer in decimal, or in hex with "0x"
 * (then no fraction), a decimal fraction only together with a suffix other
 * than b/B, and one optional suffix b, k, M, G, T, P, E in either case
 * (powers of 1024).  Leading white space and a '+' are accepted, a '-'
 * is not.  The result is exact, with a half byte rounded up.
 */
int qguard_strtosz(const char *str, uint64_t *size, bool *hex_suffix)
{
    const char *end;
    uint64_t val, frac = 0;
    bool hex = false;
    int shift, ret;

    if (hex_suffix) {
        *hex_suffix = false;
    }
    ret = parse_u64(str, &end, 10, &val);
    if (ret < 0) {
        return *end ? -EINVAL : ret;
    }
    if (memchr(str, '-', end - str)) {
        return -EINVAL;
    }
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        ret = parse_u64(str, &end, 16, &val);
        if (ret < 0) {
            return *end ? -EINVAL : ret;
        }
        if (*end == '.') {
            return -EINVAL;
        }
        hex = true;
    } else if (*end == '.' && parse_fraction(end, &end, &frac) < 0) {
        return -EINVAL;
    }

    shift = *end ? suffix_shift(*end) : -1;
    if (shift >= 0) {
        end++;
        if (hex && hex_suffix) {
            *hex_suffix = true;
        }
    }
    if (*end) {
        return -EINVAL;
    }
    if (shift <= 0) {
        /* A fraction of a byte means nothing. */
        if (frac) {
            return -EINVAL;
        }
    } else {
        unsigned __int128 whole = (unsigned __int128)val << shift;
        unsigned __int128 part = (unsigned __int128)frac << shift;

        whole += part >> 64;
        whole += (uint64_t)part >> 63;
        if (whole >> 64) {
            return -ERANGE;
        }
        val = (uint64_t)whole;
    }
    *size = val;
    return 0;
}

int qguard_parse_size(const char *str, uint64_t *size, GError **errp)
{
    int ret = qguard_strtosz(str, size, NULL);

    if (ret == -ERANGE) {
        g_set_error(errp, QGUARD_ERROR, ERANGE, "Size '%s' is too large", str);
    } else if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, EINVAL, "Invalid size '%s'", str);
    }
    return ret;
}

int qguard_parse_size_option(const char *name, const char *value,
                             uint64_t *size, bool *hex_suffix, GError **errp)
{
    int ret = qguard_strtosz(value, size, hex_suffix);

    if (ret == -ERANGE) {
        g_set_error(errp, QGUARD_ERROR, ERANGE,
                    "Value '%s' is out of range for parameter '%s'",
                    value, name);
    } else if (ret < 0) {
        g_set_error(errp, QGUARD_ERROR, EINVAL,
                    "Parameter '%s' expects a non-negative number below "
                    "2^64\nOptional suffix k, M, G, T, P or E means kilo-, "
                    "mega-, giga-, tera-, peta-\nand exabytes, "
                    "respectively.\n", name);
    }
    return ret;
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
