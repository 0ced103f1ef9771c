/* SPDX-License-Identifier: MIT */
/*
 * A small value tree that prints the way QEMU's tools print theirs.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <string.h>

#include "qobject.h"

#define QDICT_BUCKETS 512

typedef enum QObjType {
    QOBJ_DICT,
    QOBJ_LIST,
    QOBJ_STRING,
    QOBJ_INT,
    QOBJ_UINT,
    QOBJ_BOOL,
    QOBJ_DOUBLE,
} QObjType;

typedef struct QObjEntry {
    char *key;
    QObj *value;
    unsigned bucket;
    unsigned seq;
} QObjEntry;

struct QObj {
    QObjType type;
    union {
        GPtrArray *items;       /* dict: QObjEntry*, list: QObj* */
        char *s;
        int64_t i;
        uint64_t u;
        bool b;
        double d;
    };
    unsigned next_seq;
};

/* QEMU's QDict hash: Samba's tdb hash. */
static unsigned tdb_hash(const char *name)
{
    unsigned value = 0x238F13AF * strlen(name);
    unsigned i;

    for (i = 0; name[i]; i++) {
        value = value + (((const unsigned char *)name)[i] << (i * 5 % 24));
    }
    return 1103515243 * value + 12345;
}

static QObj *qobj_new(QObjType type)
{
    QObj *o = g_new0(QObj, 1);

    o->type = type;
    return o;
}

QObj *qobj_dict_new(void)
{
    QObj *o = qobj_new(QOBJ_DICT);

    o->items = g_ptr_array_new();
    return o;
}

QObj *qobj_list_new(void)
{
    QObj *o = qobj_new(QOBJ_LIST);

    o->items = g_ptr_array_new();
    return o;
}

QObj *qobj_string_new(const char *s)
{
    QObj *o = qobj_new(QOBJ_STRING);

    o->s = g_strdup(s);
    return o;
}

QObj *qobj_int_new(int64_t v)
{
    QObj *o = qobj_new(QOBJ_INT);

    o->i = v;
    return o;
}

QObj *qobj_uint_new(uint64_t v)
{
    QObj *o = qobj_new(QOBJ_UINT);

    o->u = v;
    return o;
}

QObj *qobj_bool_new(bool v)
{
    QObj *o = qobj_new(QOBJ_BOOL);

    o->b = v;
    return o;
}

QObj *qobj_double_new(double v)
{
    QObj *o = qobj_new(QOBJ_DOUBLE);

    o->d = v;
    return o;
}

void qobj_free(QObj *o)
{
    guint i;

    if (!o) {
        return;
    }
    switch (o->type) {
    case QOBJ_DICT:
        for (i = 0; i < o->items->len; i++) {
            QObjEntry *e = g_ptr_array_index(o->items, i);
            g_free(e->key);
            qobj_free(e->value);
            g_free(e);
        }
        g_ptr_array_free(o->items, TRUE);
        break;
    case QOBJ_LIST:
        for (i = 0; i < o->items->len; i++) {
            qobj_free(g_ptr_array_index(o->items, i));
        }
        g_ptr_array_free(o->items, TRUE);
        break;
    case QOBJ_STRING:
        g_free(o->s);
        break;
    default:
        break;
    }
    g_free(o);
}

static gint compare_entries(gconstpointer a, gconstpointer b)
{
    const QObjEntry *x = *(QObjEntry *const *)a;
    const QObjEntry *y = *(QObjEntry *const *)b;

    if (x->bucket != y->bucket) {
        return x->bucket < y->bucket ? -1 : 1;
    }
    /* Within a bucket QDict lists the newest entry first. */
    return x->seq > y->seq ? -1 : x->seq < y->seq;
}

void qobj_dict_put(QObj *dict, const char *key, QObj *value)
{
    QObjEntry *e;
    guint i;

    g_assert(dict->type == QOBJ_DICT);
    for (i = 0; i < dict->items->len; i++) {
        e = g_ptr_array_index(dict->items, i);
        if (!strcmp(e->key, key)) {
            qobj_free(e->value);
            e->value = value;
            return;
        }
    }
    e = g_new0(QObjEntry, 1);
    e->key = g_strdup(key);
    e->value = value;
    e->bucket = tdb_hash(key) % QDICT_BUCKETS;
    e->seq = dict->next_seq++;
    g_ptr_array_add(dict->items, e);
    g_ptr_array_sort(dict->items, compare_entries);
}

void qobj_dict_put_str(QObj *dict, const char *key, const char *s)
{
    qobj_dict_put(dict, key, qobj_string_new(s));
}

void qobj_dict_put_int(QObj *dict, const char *key, int64_t v)
{
    qobj_dict_put(dict, key, qobj_int_new(v));
}

void qobj_dict_put_uint(QObj *dict, const char *key, uint64_t v)
{
    qobj_dict_put(dict, key, qobj_uint_new(v));
}

void qobj_dict_put_bool(QObj *dict, const char *key, bool v)
{
    qobj_dict_put(dict, key, qobj_bool_new(v));
}

void qobj_list_append(QObj *list, QObj *value)
{
    g_assert(list->type == QOBJ_LIST);
    g_ptr_array_add(list->items, value);
}

/* JSON string escaping as QEMU's writer does it: non-ASCII as \uXXXX. */
static void append_json_string(GString *out, const char *s)
{
    const char *p = s;

    g_string_append_c(out, '"');
    while (*p) {
        gunichar c = g_utf8_get_char_validated(p, -1);
        if (c == (gunichar)-1 || c == (gunichar)-2) {
            c = 0xfffd;
            p++;
        } else {
            p = g_utf8_next_char(p);
        }
        switch (c) {
        case '"':  g_string_append(out, "\\\""); break;
        case '\\': g_string_append(out, "\\\\"); break;
        case '\b': g_string_append(out, "\\b"); break;
        case '\f': g_string_append(out, "\\f"); break;
        case '\n': g_string_append(out, "\\n"); break;
        case '\r': g_string_append(out, "\\r"); break;
        case '\t': g_string_append(out, "\\t"); break;
        default:
            if (c >= 0x20 && c < 0x7f) {
                g_string_append_c(out, c);
            } else if (c < 0x10000) {
                g_string_append_printf(out, "\\u%04X", c);
            } else {
                c -= 0x10000;
                g_string_append_printf(out, "\\u%04X\\u%04X",
                                       0xd800 | (c >> 10),
                                       0xdc00 | (c & 0x3ff));
            }
        }
    }
    g_string_append_c(out, '"');
}

static void append_scalar(GString *out, const QObj *o)
{
    switch (o->type) {
    case QOBJ_STRING:
        append_json_string(out, o->s);
        break;
    case QOBJ_INT:
        g_string_append_printf(out, "%" PRId64, o->i);
        break;
    case QOBJ_UINT:
        g_string_append_printf(out, "%" PRIu64, o->u);
        break;
    case QOBJ_BOOL:
        g_string_append(out, o->b ? "true" : "false");
        break;
    case QOBJ_DOUBLE:
        g_string_append_printf(out, "%.17g", o->d);
        break;
    default:
        g_assert_not_reached();
    }
}

static void newline_indent(GString *out, bool pretty, int level)
{
    if (pretty) {
        g_string_append_c(out, '\n');
        g_string_append_printf(out, "%*s", level * 4, "");
    }
}

static void to_json(GString *out, const QObj *o, bool pretty, int level)
{
    guint i;

    switch (o->type) {
    case QOBJ_DICT:
        g_string_append_c(out, '{');
        for (i = 0; i < o->items->len; i++) {
            QObjEntry *e = g_ptr_array_index(o->items, i);
            if (i) {
                g_string_append_c(out, ',');
                if (!pretty) {
                    g_string_append_c(out, ' ');
                }
            }
            newline_indent(out, pretty, level + 1);
            append_json_string(out, e->key);
            g_string_append(out, ": ");
            to_json(out, e->value, pretty, level + 1);
        }
        /* QEMU's writer ends even an empty container on its own line. */
        newline_indent(out, pretty, level);
        g_string_append_c(out, '}');
        break;
    case QOBJ_LIST:
        g_string_append_c(out, '[');
        for (i = 0; i < o->items->len; i++) {
            if (i) {
                g_string_append_c(out, ',');
                if (!pretty) {
                    g_string_append_c(out, ' ');
                }
            }
            newline_indent(out, pretty, level + 1);
            to_json(out, g_ptr_array_index(o->items, i), pretty, level + 1);
        }
        newline_indent(out, pretty, level);
        g_string_append_c(out, ']');
        break;
    default:
        append_scalar(out, o);
        break;
    }
}

char *qobj_to_json_pretty(const QObj *o)
{
    GString *out = g_string_new(NULL);

    to_json(out, o, true, 0);
    return g_string_free(out, FALSE);
}

char *qobj_to_json(const QObj *o)
{
    GString *out = g_string_new(NULL);

    to_json(out, o, false, 0);
    return g_string_free(out, FALSE);
}

static bool is_composite(const QObj *o)
{
    return o->type == QOBJ_DICT || o->type == QOBJ_LIST;
}

void qobj_dump_human(GString *out, int indentation, const QObj *o)
{
    guint i;

    switch (o->type) {
    case QOBJ_DICT:
        for (i = 0; i < o->items->len; i++) {
            QObjEntry *e = g_ptr_array_index(o->items, i);
            g_autofree char *key = g_strdup(e->key);
            g_strdelimit(key, "-", ' ');
            g_string_append_printf(out, "%*s%s:%c", indentation * 4, "", key,
                                   is_composite(e->value) ? '\n' : ' ');
            qobj_dump_human(out, indentation + 1, e->value);
        }
        break;
    case QOBJ_LIST:
        for (i = 0; i < o->items->len; i++) {
            const QObj *v = g_ptr_array_index(o->items, i);
            g_string_append_printf(out, "%*s[%u]:%c", indentation * 4, "", i,
                                   is_composite(v) ? '\n' : ' ');
            qobj_dump_human(out, indentation + 1, v);
        }
        break;
    case QOBJ_STRING:
        g_string_append_printf(out, "%s\n", o->s);
        break;
    default: {
        GString *tmp = g_string_new(NULL);
        append_scalar(tmp, o);
        g_string_append_printf(out, "%s\n", tmp->str);
        g_string_free(tmp, TRUE);
        break;
    }
    }
}
