/* SPDX-License-Identifier: MIT */
/*
 * What commit, rebase and compare share: finding images in a backing
 * chain as qemu-img names them, and comparing the data they read.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <stdlib.h>
#include <string.h>

#include "img.h"

char *path_combine(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');

    if (g_path_is_absolute(name) || !slash) {
        return g_strdup(name);
    }
    return g_strdup_printf("%.*s%s", (int)(slash - base + 1), base, name);
}

bool same_file(const char *path, QGuardImage *img)
{
    g_autofree char *a = realpath(path, NULL);
    g_autofree char *b = realpath(qguard_image_filename(img), NULL);

    return a && b && !strcmp(a, b);
}

QGuardImage *find_backing_image(QGuardImage *top, const char *name,
                                int *depth)
{
    QGuardImage *layer, *below;

    *depth = 0;
    for (layer = top; (below = qguard_image_backing(layer)); layer = below) {
        g_autofree char *path = path_combine(qguard_image_filename(layer),
                                             name);
        ++*depth;
        if (same_file(path, below)) {
            return below;
        }
    }
    return NULL;
}

bool is_above(QGuardImage *top, QGuardImage *layer, QGuardImage *base)
{
    QGuardImage *b;

    for (b = top; b && b != base; b = qguard_image_backing(b)) {
        if (b == layer) {
            return true;
        }
    }
    return false;
}

/* One extent of is_allocated_above(): its answer and length. */
static int allocated_extent(QGuardImage *top, QGuardImage *base,
                            uint64_t offset, uint64_t bytes, uint64_t *pnum,
                            bool *allocated)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
    int ret = qguard_image_block_status(top, offset, bytes, &st, &err);

    if (ret < 0) {
        return ret;
    }
    *pnum = st.bytes;
    if (st.flags & QGUARD_BLOCK_ALLOCATED) {
        *allocated = is_above(top, st.image, base);
    } else {
        QGuardImage *below = st.image ? qguard_image_backing(st.image)
                                      : NULL;
        *allocated = below && is_above(top, below, base);
    }
    return 0;
}

int is_allocated_above(QGuardImage *top, QGuardImage *base, uint64_t offset,
                       uint64_t *bytes, bool *allocated)
{
    uint64_t done = 0, n;
    bool answer;
    int ret;

    while (done < *bytes) {
        ret = allocated_extent(top, base, offset + done, *bytes - done, &n,
                               &answer);
        if (ret < 0) {
            return ret;
        }
        if (!done) {
            *allocated = answer;
        } else if (answer != *allocated) {
            break;
        }
        done += n;
    }
    *bytes = done;
    return 0;
}

bool compare_buffers(const uint8_t *buf1, const uint8_t *buf2,
                     uint64_t bytes, uint64_t *pnum)
{
    uint64_t i = MIN(bytes, (uint64_t)SECTOR_SIZE);
    bool res = memcmp(buf1, buf2, i) != 0;

    while (i < bytes) {
        uint64_t len = MIN(bytes - i, (uint64_t)SECTOR_SIZE);
        if ((memcmp(buf1 + i, buf2 + i, len) != 0) != res) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return res;
}
