/* SPDX-License-Identifier: MIT */
/*
 * qemu-img map: where the guest data of an image lives.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

typedef struct MapEntry {
    int64_t start;
    int64_t length;
    int depth;
    bool present;
    bool zero;
    bool data;
    bool has_offset;
    uint64_t offset;
    const char *filename;       /* only with has_offset */
} MapEntry;

static int get_block_status(QGuardImage *img, int64_t offset, int64_t bytes,
                            MapEntry *e)
{
    g_autoptr(GError) err = NULL;
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
    int ret;

    ret = qguard_image_block_status(img, offset, bytes, &st, &err);
    if (ret < 0) {
        return ret;
    }
    *e = (MapEntry) {
        .start = offset,
        .length = st.bytes,
        .depth = st.depth,
        .present = st.flags & QGUARD_BLOCK_ALLOCATED,
        .zero = st.flags & QGUARD_BLOCK_ZERO,
        .data = st.flags & QGUARD_BLOCK_DATA,
        .has_offset = st.flags & QGUARD_BLOCK_OFFSET_VALID,
        .offset = st.host_offset,
    };
    if (e->has_offset && st.image) {
        /* The image's file, or its external data file. */
        e->filename = st.filename ? st.filename
                                  : qguard_image_filename(st.image);
    }
    return 0;
}

static bool entry_mergeable(const MapEntry *curr, const MapEntry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data ||
        curr->depth != next->depth || curr->present != next->present ||
        !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset &&
        curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

static int dump_map_entry(OutputFormat ofmt, const MapEntry *e,
                          MapEntry *next)
{
    switch (ofmt) {
    case OFORMAT_HUMAN:
        if (e->data && !e->has_offset) {
            error_report("File contains external, encrypted or compressed "
                         "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   (uint64_t)e->start, (uint64_t)e->length,
                   e->has_offset ? e->offset : 0,
                   e->filename ? e->filename : "");
        }
        /*
         * The table does not tell zero, unallocated and zero-with-data
         * apart; folding them lets neighbours merge into one row.
         */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        break;
    case OFORMAT_JSON:
        printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ","
               " \"depth\": %d, \"present\": %s, \"zero\": %s,"
               " \"data\": %s", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRId64, (int64_t)e->offset);
        }
        putchar('}');
        if (next) {
            puts(",");
        }
        break;
    }
    return 0;
}

int img_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        LONGOPT_OBJECT,
        LONGOPT_FORMAT,
        LONGOPT_OUTPUT,
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        LONGOPT_IMAGE_OPTS,
        LONGOPT_FORCE_SHARE,
        LONGOPT_END
    };
    ImgOpts o = { 0 };
    const char *filename;
    int64_t start_offset = 0, max_length = -1, length;
    MapEntry curr = { 0 }, next = { 0 };
    OutputFormat ofmt;
    QGuardImage *img;
    int ret = 0, c;

    while ((c = tool_getopt(argc, argv, ":f:s:l:hU", long_options,
                            NULL)) != -1) {
        switch (c) {
        case 's':
            start_offset = cvtnum("start offset", optarg);
            if (start_offset < 0) {
                return 1;
            }
            break;
        case 'l':
            max_length = cvtnum("max length", optarg);
            if (max_length < 0) {
                return 1;
            }
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    filename = img_one_filename_output(argc, argv, &o, &ofmt);
    if (!filename) {
        return 1;
    }

    img = img_open_opts(&o, filename, 0);
    if (!img) {
        return 1;
    }

    if (ofmt == OFORMAT_HUMAN) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    } else {
        putchar('[');
    }

    length = qguard_image_size(img);
    if (max_length != -1) {
        /* Both are below 2^63, so the sum cannot wrap. */
        length = MIN((uint64_t)start_offset + (uint64_t)max_length,
                     (uint64_t)length);
    }

    curr.start = start_offset;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;
        int64_t n = MIN(length - offset, (int64_t)REQUEST_MAX_BYTES);

        ret = get_block_status(img, offset, n, &next);
        if (ret < 0) {
            error_report("Could not read file metadata: %s",
                         g_strerror(-ret));
            goto out;
        }
        if (entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = dump_map_entry(ofmt, &curr, &next);
            if (ret < 0) {
                goto out;
            }
        }
        curr = next;
    }

    ret = dump_map_entry(ofmt, &curr, NULL);
    if (ofmt == OFORMAT_JSON) {
        puts("]");
    }

out:
    img_close(img);
    return ret < 0;
}
