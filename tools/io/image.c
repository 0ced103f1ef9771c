/* SPDX-License-Identifier: MIT */
/*
 * qemu-io commands on the open image other than data transfer: discard,
 * flush, truncate, length, info, alloc and map.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "io.h"

static const char discard_help[] =
"\n"
" discards LEN bytes at offset OFF of the image\n"
"\n"
" Example:\n"
" 'discard 512 1k' - discards one kilobyte starting 512 bytes in\n"
"\n"
" The guest no longer needs the range; the image may free its clusters.\n"
" -C, -- print the statistics as one comma-separated line\n"
" -q, -- quiet: print no statistics\n"
"\n";

static int discard_f(int argc, char **argv)
{
    struct timespec t1, t2;
    bool Cflag = false, qflag = false;
    int64_t offset, bytes;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C':
            Cflag = true;
            break;
        case 'q':
            qflag = true;
            break;
        default:
            return command_usage(&discard_cmd);
        }
    }
    if (optind != argc - 2) {
        return command_usage(&discard_cmd);
    }
    ret = parse_offset_length(&argv[optind], true, "", &offset, &bytes);
    if (ret < 0) {
        return ret;
    }

    t1 = tool_now();
    ret = after_sync_request(qguard_image_discard(image, offset, bytes,
                                                  NULL));
    t2 = tool_now();
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!qflag) {
        print_report(stdout, "discard", t1, t2, offset, bytes, Cflag);
    }
    return 0;
}

const Command discard_cmd = {
    .name = "discard", .altname = "d", .func = discard_f,
    .argmin = 2, .argmax = -1, .flags = CMD_WRITE,
    .args = "[-Cq] off len",
    .oneline = "discards a number of bytes at a specified offset",
    .help = discard_help,
};

static int flush_f(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    /* qemu-io says nothing about a failed flush; only the status shows it. */
    return after_sync_request(qguard_image_flush(image, NULL));
}

const Command flush_cmd = {
    .name = "flush", .altname = "f", .func = flush_f,
    .oneline = "flush all in-core file state to disk",
};

static int truncate_f(int argc, char **argv)
{
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };
    g_autoptr(GError) err = NULL;
    const char *prealloc = "off";
    int64_t offset;
    int c, ret;
    size_t i;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            for (i = 0; i < G_N_ELEMENTS(modes); i++) {
                if (!strcmp(optarg, modes[i])) {
                    break;
                }
            }
            if (i == G_N_ELEMENTS(modes)) {
                error_report("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            prealloc = modes[i];
            break;
        default:
            return command_usage(&truncate_cmd);
        }
    }
    if (optind >= argc) {
        /* qemu-io 7.2 crashes here; print the syntax instead. */
        return command_usage(&truncate_cmd);
    }
    offset = cvtnum_arg(argv[optind]);
    if (offset < 0) {
        return offset;
    }

    ret = qguard_image_truncate(image, offset, true, prealloc, &err);
    if (ret < 0) {
        error_report_err(NULL, err, ret);
        return ret;
    }
    return 0;
}

const Command truncate_cmd = {
    .name = "truncate", .altname = "t", .func = truncate_f,
    .argmin = 1, .argmax = 3, .flags = CMD_WRITE,
    .args = "[-m prealloc_mode] off",
    .oneline = "truncates the current file at the given offset",
};

static int length_f(int argc, char **argv)
{
    char s1[64];

    (void)argc;
    (void)argv;
    cvtstr(qguard_image_size(image), s1, sizeof(s1));
    printf("%s\n", s1);
    return 0;
}

const Command length_cmd = {
    .name = "length", .altname = "l", .func = length_f,
    .oneline = "gets the length of the current file",
};

/*
 * Where qcow2 keeps the VM state: just past the guest range that the
 * L1 table must be able to map.
 */
static uint64_t vm_state_offset(const QGuardImageInfo *info)
{
    uint64_t entry_size = info->extended_l2 ? 16 : 8;
    uint64_t per_l1_entry;

    if (!info->is_qcow2 || !info->cluster_size) {
        return 0;
    }
    per_l1_entry = (uint64_t)info->cluster_size *
                   (info->cluster_size / entry_size);
    return (info->virtual_size + per_l1_entry - 1) / per_l1_entry *
           per_l1_entry;
}

static int info_f(int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    QGuardImageInfo *info;
    char s1[64], s2[64];
    int ret;

    (void)argc;
    (void)argv;
    /*
     * qemu-io prints nothing at all once a corruption has detached the
     * driver; the info query is what fails then.
     */
    ret = qguard_image_get_info(image, &info, &err);
    if (ret == -ENOMEDIUM) {
        return ret;
    }
    printf("format name: %s\n", qguard_image_format(image));
    if (ret < 0) {
        return ret;
    }
    cvtstr(info->cluster_size, s1, sizeof(s1));
    cvtstr(vm_state_offset(info), s2, sizeof(s2));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);
    if (info->is_qcow2) {
        QObj *spec = qcow2_format_specific_qobj(info);
        GString *text = g_string_new(NULL);

        qobj_dump_human(text, 1, spec);
        printf("Format specific information:\n%s", text->str);
        g_string_free(text, TRUE);
        qobj_free(spec);
    }
    qguard_image_info_free(info);
    return 0;
}

const Command info_cmd = {
    .name = "info", .altname = "i", .func = info_f,
    .oneline = "prints information about the current file",
};

static int alloc_f(int argc, char **argv)
{
    int64_t offset, start, remaining, count, num, sum_alloc = 0;
    char s1[64];
    int ret;

    start = offset = cvtnum_arg(argv[1]);
    if (offset < 0) {
        return offset;
    }
    if (argc == 3) {
        count = cvtnum_arg(argv[2]);
        if (count < 0) {
            return count;
        }
    } else {
        count = SECTOR_SIZE;
    }

    remaining = count;
    while (remaining) {
        ret = is_allocated(offset, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum_alloc += num;
        }
        if (num == 0) {
            /* Past the end: report only the part inside the image. */
            count -= remaining;
            remaining = 0;
        }
    }
    cvtstr(start, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n",
           sum_alloc, count, s1);
    return 0;
}

const Command alloc_cmd = {
    .name = "alloc", .altname = "a", .func = alloc_f,
    .argmin = 1, .argmax = 2,
    .args = "offset [count]",
    .oneline = "checks if offset is allocated in the file",
};

/* The longest run starting at @offset whose allocation state is the same. */
static int map_is_allocated(int64_t offset, int64_t bytes, int64_t *pnum)
{
    int64_t num;
    int ret, firstret;

    ret = is_allocated(offset, MIN((uint64_t)bytes, REQUEST_MAX_BYTES), &num);
    if (ret < 0) {
        return ret;
    }
    firstret = ret;
    *pnum = num;
    while (bytes > 0 && ret == firstret) {
        offset += num;
        bytes -= num;
        ret = is_allocated(offset, MIN((uint64_t)bytes, REQUEST_MAX_BYTES),
                           &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

static int map_f(int argc, char **argv)
{
    int64_t offset = 0, bytes, num;
    char s1[64], s2[64];
    int ret;

    (void)argc;
    (void)argv;
    bytes = qguard_image_size(image);
    while (bytes) {
        ret = map_is_allocated(offset, bytes, &num);
        if (ret < 0) {
            error_report("Failed to get allocation status: %s",
                         strerror(-ret));
            return ret;
        } else if (!num) {
            error_report("Unexpected end of image");
            return -EIO;
        }
        cvtstr(num, s1, sizeof(s1));
        cvtstr(offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               s1, (uint64_t)num, ret ? "    allocated" : "not allocated",
               s2, (uint64_t)offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

const Command map_cmd = {
    .name = "map", .func = map_f,
    .args = "",
    .oneline = "prints the allocated areas of a file",
};
