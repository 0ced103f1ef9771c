/* SPDX-License-Identifier: MIT */
/*
 * A small value tree that prints the way QEMU's tools print theirs.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * qemu-img prints JSON and "Format specific information" from QEMU's QDict,
 * whose iteration order is its hash-bucket order, not insertion order.  To
 * produce byte-identical output, QObjDict orders its keys the same way:
 * by tdb_hash(key) % 512, later insertions first within a bucket.
 */
#ifndef QGUARD_QOBJECT_H
#define QGUARD_QOBJECT_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

typedef struct QObj QObj;

QObj *qobj_dict_new(void);
QObj *qobj_list_new(void);
QObj *qobj_string_new(const char *s);
QObj *qobj_int_new(int64_t v);
QObj *qobj_uint_new(uint64_t v);
QObj *qobj_bool_new(bool v);
QObj *qobj_double_new(double v);
void qobj_free(QObj *o);

/* Takes ownership of @value. */
void qobj_dict_put(QObj *dict, const char *key, QObj *value);
void qobj_dict_put_str(QObj *dict, const char *key, const char *s);
void qobj_dict_put_int(QObj *dict, const char *key, int64_t v);
void qobj_dict_put_uint(QObj *dict, const char *key, uint64_t v);
void qobj_dict_put_bool(QObj *dict, const char *key, bool v);
void qobj_list_append(QObj *list, QObj *value);

/* Pretty JSON as qemu-img --output=json prints it (no trailing newline). */
char *qobj_to_json_pretty(const QObj *o);
/* One-line JSON with QEMU's spacing ({"a": 1, "b": [1, 2]}). */
char *qobj_to_json(const QObj *o);
/* The human dump used for "Format specific information". */
void qobj_dump_human(GString *out, int indentation, const QObj *o);

#endif
