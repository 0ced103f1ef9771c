/* SPDX-License-Identifier: MIT */
/*
 * qemu-img compare: do two images read the same?
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Exit status: 0 identical, 1 different, 2 an image could not be opened,
 * 3 block status failed, 4 a read failed; usage errors exit with 1, as in
 * qemu-img.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "img.h"

/* QEMU's BDRV_BLOCK_* bits: strict mode compares these numbers. */
enum {
    STATUS_DATA         = 0x01,
    STATUS_ZERO         = 0x02,
    STATUS_OFFSET_VALID = 0x04,
    STATUS_ALLOCATED    = 0x10,
    STATUS_EOF          = 0x20,
};

/*
 * The status bdrv_block_status_above() gives for the whole chain, and the
 * length it covers.  Past the end of a shorter backing file QEMU reports
 * zeros "allocated" in that backing file; past the bottom of the chain,
 * zeros that nothing allocates.
 */
static int chain_status(QGuardImage *img, uint64_t offset, uint64_t *pnum)
{
    g_autoptr(GError) err = NULL;
    uint64_t size = qguard_image_size(img);
    QGuardBlockStatus st = QGUARD_SIZED(QGuardBlockStatus);
    int status = 0;

    if (qguard_image_block_status(img, offset, size - offset, &st,
                                  &err) < 0) {
        return -EIO;
    }
    if (st.flags & QGUARD_BLOCK_DATA) {
        status |= STATUS_DATA;
    }
    if (st.flags & QGUARD_BLOCK_ZERO) {
        status |= STATUS_ZERO;
    }
    if (st.flags & QGUARD_BLOCK_OFFSET_VALID) {
        status |= STATUS_OFFSET_VALID;
    }
    if ((st.flags & QGUARD_BLOCK_ALLOCATED) ||
        (st.image && qguard_image_backing(st.image))) {
        status |= STATUS_ALLOCATED;
    }
    if (offset + st.bytes == size) {
        status |= STATUS_EOF;
    }
    *pnum = st.bytes;
    return status;
}

/* Offset of the first 512-byte sector of @buf that is not all zeros. */
static int64_t find_nonzero(const uint8_t *buf, uint64_t n)
{
    uint64_t i, j;

    for (i = 0; i < n; i += SECTOR_SIZE) {
        uint64_t end = MIN(i + SECTOR_SIZE, n);
        for (j = i; j < end; j++) {
            if (buf[j]) {
                return i;
            }
        }
    }
    return -1;
}

/* 0 after reading @bytes at @offset into @buf, 4 on error (reported). */
static int read_chunk(QGuardImage *img, uint64_t offset, uint64_t bytes,
                      uint8_t *buf, const char *filename)
{
    g_autoptr(GError) err = NULL;
    int ret = qguard_image_pread(img, offset, bytes, buf, &err);

    if (ret < 0) {
        error_report("Error while reading offset %" PRIu64 " of %s: %s",
                     offset, filename, g_strerror(-ret));
        return 4;
    }
    return 0;
}

/* 0 if the range reads as zeros, 1 if not (and says where), 4 on error. */
static int check_empty_sectors(QGuardImage *img, uint64_t offset,
                               uint64_t bytes, const char *filename,
                               uint8_t *buf, bool quiet)
{
    int64_t idx;
    int ret = read_chunk(img, offset, bytes, buf, filename);

    if (ret) {
        return ret;
    }
    idx = find_nonzero(buf, bytes);
    if (idx >= 0) {
        qprintf(quiet, "Content mismatch at offset %" PRIu64 "!\n",
                offset + idx);
        return 1;
    }
    return 0;
}

static int compare_images(QGuardImage *img1, QGuardImage *img2,
                          const char *filename1, const char *filename2,
                          bool strict, bool quiet, Progress *progress)
{
    uint64_t size1 = qguard_image_size(img1);
    uint64_t size2 = qguard_image_size(img2);
    uint64_t total = MIN(size1, size2), base = MAX(size1, size2);
    g_autofree uint8_t *buf1 = g_malloc(IO_BUF_SIZE);
    g_autofree uint8_t *buf2 = g_malloc(IO_BUF_SIZE);
    uint64_t offset = 0, chunk;
    int ret;

    progress_set(progress, 0.0f);
    if (strict && size1 != size2) {
        qprintf(quiet, "Strict mode: Image size mismatch!\n");
        return 1;
    }
    while (offset < total) {
        uint64_t pnum1, pnum2;
        int status1 = chain_status(img1, offset, &pnum1);
        int status2;
        bool allocated1, allocated2;

        if (status1 < 0) {
            error_report("Sector allocation test failed for %s", filename1);
            return 3;
        }
        status2 = chain_status(img2, offset, &pnum2);
        if (status2 < 0) {
            error_report("Sector allocation test failed for %s", filename2);
            return 3;
        }
        allocated1 = status1 & STATUS_ALLOCATED;
        allocated2 = status2 & STATUS_ALLOCATED;
        chunk = MIN(pnum1, pnum2);

        if (strict && status1 != status2) {
            qprintf(quiet, "Strict mode: Offset %" PRIu64
                    " block status mismatch!\n", offset);
            return 1;
        }
        if ((status1 & STATUS_ZERO) && (status2 & STATUS_ZERO)) {
            /* Both read as zeros. */
        } else if (allocated1 == allocated2) {
            if (allocated1) {
                uint64_t pnum;
                bool differ;

                chunk = MIN(chunk, (uint64_t)IO_BUF_SIZE);
                ret = read_chunk(img1, offset, chunk, buf1, filename1);
                if (!ret) {
                    ret = read_chunk(img2, offset, chunk, buf2, filename2);
                }
                if (ret) {
                    return ret;
                }
                differ = compare_buffers(buf1, buf2, chunk, &pnum);
                if (differ || pnum != chunk) {
                    qprintf(quiet, "Content mismatch at offset %" PRIu64
                            "!\n", offset + (differ ? 0 : pnum));
                    return 1;
                }
            }
        } else {
            chunk = MIN(chunk, (uint64_t)IO_BUF_SIZE);
            ret = allocated1 ?
                  check_empty_sectors(img1, offset, chunk, filename1, buf1,
                                      quiet) :
                  check_empty_sectors(img2, offset, chunk, filename2, buf1,
                                      quiet);
            if (ret) {
                return ret;
            }
        }
        offset += chunk;
        progress_set(progress, progress->current +
                               (float)chunk / base * 100);
    }

    if (size1 != size2) {
        QGuardImage *over = size1 > size2 ? img1 : img2;
        const char *filename_over = size1 > size2 ? filename1 : filename2;

        qprintf(quiet, "Warning: Image size mismatch!\n");
        while (offset < base) {
            int status = chain_status(over, offset, &chunk);

            if (status < 0) {
                error_report("Sector allocation test failed for %s",
                             filename_over);
                return 3;
            }
            if ((status & STATUS_ALLOCATED) && !(status & STATUS_ZERO)) {
                chunk = MIN(chunk, (uint64_t)IO_BUF_SIZE);
                ret = check_empty_sectors(over, offset, chunk, filename_over,
                                          buf1, quiet);
                if (ret) {
                    return ret;
                }
            }
            offset += chunk;
            progress_set(progress, progress->current +
                                   (float)chunk / base * 100);
        }
    }
    qprintf(quiet, "Images are identical.\n");
    return 0;
}

int img_compare(int argc, char **argv)
{
    const char *fmt2 = NULL, *cache = "writeback";
    unsigned cache_flags = 0;
    const char *filename1, *filename2;
    bool show_progress = false, strict = false;
    ImgOpts o = { 0 };
    QGuardImage *img1 = NULL, *img2 = NULL;
    Progress progress;
    int ret, c;

    while ((c = tool_getopt(argc, argv, ":hf:F:T:pqsU",
                            img_image_long_options, NULL)) != -1) {
        switch (c) {
        case 'F':
            fmt2 = optarg;
            break;
        case 'T':
            cache = optarg;
            break;
        case 'p':
            show_progress = true;
            break;
        case 's':
            strict = true;
            break;
        case OPTION_OBJECT:
            /* compare's errors are exit status 2, this one too */
            tool_object_option(optarg, 2);
            break;
        default:
            img_common_opt(c, &o);
        }
    }
    if (optind != argc - 2) {
        error_exit("Expecting two image file names");
    }
    filename1 = argv[optind];
    filename2 = argv[optind + 1];
    progress_init(&progress, show_progress && !o.quiet, 2.0f);

    if (!parse_cache_flags(cache, &cache_flags)) {
        error_report("Invalid source cache option: %s", cache);
        ret = 2;
        goto out;
    }
    img1 = img_open_opts(&o, filename1, cache_flags);
    if (!img1) {
        ret = 2;
        goto out;
    }
    img2 = img_open(o.image_opts, filename2, fmt2, cache_flags,
                    o.force_share);
    if (!img2) {
        ret = 2;
        goto out;
    }
    ret = compare_images(img1, img2, filename1, filename2, strict, o.quiet,
                         &progress);

out:
    img_close(img2);
    img_close(img1);
    progress_end(&progress);
    return ret;
}
