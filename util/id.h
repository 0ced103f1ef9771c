/* SPDX-License-Identifier: MIT */
/*
 * QEMU's identifiers (node names, object ids): what the library and the
 * tools both check, as QEMU checks them.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_UTIL_ID_H
#define QGUARD_UTIL_ID_H

#include <stdbool.h>
#include <string.h>
#include <glib.h>

/* A letter, then letters, digits, '-', '.' and '_'. */
static inline bool qguard_id_wellformed(const char *id)
{
    size_t i;

    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (i = 1; id[i]; i++) {
        if (!g_ascii_isalnum(id[i]) && !strchr("-._", id[i])) {
            return false;
        }
    }
    return true;
}

#endif
