/* SPDX-License-Identifier: MIT */
/*
 * qemu-img bench: time a run of simple requests.
 *
 * Copyright (c) 2026 The qguard authors
 */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "img.h"

static uint64_t random_below(GRand *rand, uint64_t limit)
{
    /* Rejection sampling keeps the choice uniform for any limit. */
    uint64_t bound = UINT64_MAX - UINT64_MAX % limit;
    uint64_t v;

    do {
        v = ((uint64_t)g_rand_int(rand) << 32) | g_rand_int(rand);
    } while (v >= bound);
    return v % limit;
}

static void print_overlap_stats(QGuardImage *img)
{
    QGuardOverlapStats st;

    if (qguard_image_overlap_stats(img, &st) < 0) {
        return;
    }
    printf("Overlap checks: %s algorithm, %" PRIu64 " checks, %" PRIu64
           " writes refused\n", st.algorithm, st.checks, st.refused);
    printf("Overlap map: %" PRIu64 " inserts, %" PRIu64 " removes, %" PRIu64
           " queries\n", st.inserts, st.removes, st.queries);
    printf("Overlap map conversions: %" PRIu64 " list->bytemap, %" PRIu64
           " bytemap->list, %" PRIu64 " bytemaps freed\n",
           st.list_to_bytemap, st.bytemap_to_list, st.bytemaps_freed);
    printf("Overlap map memory: %" PRIu64 " bytes current, %" PRIu64
           " bytes peak\n", st.mem_current, st.mem_peak);
}

int img_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPTION_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "pattern", required_argument, NULL, OPTION_PATTERN },
        { "no-drain", no_argument, NULL, OPTION_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "random", optional_argument, NULL, OPTION_RANDOM },
        { NULL, 0, NULL, 0 }
    };
    const char *fmt = NULL, *filename, *cache = "writeback";
    bool quiet = false, image_opts = false, force_share = false;
    bool is_write = false, random = false;
    int count = 75000, depth = 64, flush_interval = 0;
    int bufsize = 4096, step = 0, pattern = 0;
    guint32 seed = 0;
    int64_t offset = 0, sval, image_size;
    unsigned flags = 0;
    unsigned long ul;
    struct timespec t1, t2;
    g_autoptr(GRand) rand = NULL;
    QGuardImage *img;
    uint8_t *buf = NULL;
    int ret = 1, i, c;

    while ((c = tool_getopt(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU",
                            long_options, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX) {
                error_report("Invalid request count specified");
                return 1;
            }
            count = ul;
            break;
        case 'd':
            /* qemu-img hangs with depth 0; refuse it instead. */
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX || ul == 0) {
                error_report("Invalid queue depth specified");
                return 1;
            }
            depth = ul;
            break;
        case 'f':
            fmt = optarg;
            break;
        case 'n':
            /* Native AIO: no such thing here, requests are synchronous. */
            break;
        case 'i':
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") &&
                strcmp(optarg, "io_uring")) {
                error_report("Invalid aio option: %s", optarg);
                return 1;
            }
            break;
        case 'o':
            offset = cvtnum("offset", optarg);
            if (offset < 0) {
                return 1;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            sval = cvtnum_full("buffer size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return 1;
            }
            bufsize = sval;
            break;
        case 'S':
            sval = cvtnum_full("step_size", optarg, 0, INT_MAX);
            if (sval < 0) {
                return 1;
            }
            step = sval;
            break;
        case 't':
            cache = optarg;
            break;
        case 'w':
            flags |= QGUARD_OPEN_RDWR;
            is_write = true;
            break;
        case 'U':
            force_share = true;
            break;
        case OPTION_PATTERN:
            if (!parse_ulong(optarg, &ul) || ul > 0xff) {
                error_report("Invalid pattern byte specified");
                return 1;
            }
            pattern = ul;
            break;
        case OPTION_FLUSH_INTERVAL:
            if (!parse_ulong(optarg, &ul) || ul > INT_MAX) {
                error_report("Invalid flush interval specified");
                return 1;
            }
            flush_interval = ul;
            break;
        case OPTION_NO_DRAIN:
            /* Nothing is ever in flight at a flush, drained or not. */
            break;
        case OPTION_IMAGE_OPTS:
            image_opts = true;
            break;
        case OPTION_RANDOM:
            random = true;
            if (optarg) {
                if (!parse_ulong(optarg, &ul) || ul > G_MAXUINT32) {
                    error_report("Invalid random seed specified");
                    return 1;
                }
                seed = ul;
            } else {
                seed = g_random_int();
            }
            break;
        }
    }
    if (!valid_cache_mode(cache)) {
        error_report("Invalid cache mode");
        return 1;
    }
    if (optind != argc - 1) {
        error_exit("Expecting one image file name");
    }
    filename = argv[argc - 1];

    if (!is_write && flush_interval) {
        error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if (flush_interval && flush_interval < depth) {
        error_report("Flush interval can't be smaller than depth");
        return 1;
    }

    img = img_open(image_opts, filename, fmt, flags, force_share);
    if (!img) {
        return 1;
    }
    image_size = qguard_image_size(img);
    if (!step) {
        step = bufsize;
    }

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %d)\n",
           count, is_write ? "write" : "read", bufsize, depth, offset, step);
    if (flush_interval) {
        printf("Sending flush every %d requests\n", flush_interval);
    }
    if (random) {
        printf("Using random buffer-aligned offsets (seed %" G_GUINT32_FORMAT
               ")\n", seed);
        rand = g_rand_new_with_seed(seed);
    }

    buf = g_try_malloc(MAX(bufsize, 1));
    if (!buf) {
        error_report("Could not allocate a buffer of %d bytes", bufsize);
        goto out;
    }
    memset(buf, pattern, bufsize);
    qguard_image_overlap_stats_reset(img);

    t1 = tool_now();
    for (i = 0; i < count; i++) {
        g_autoptr(GError) err = NULL;
        int64_t req = offset;

        if (random) {
            req = 0;
            if (bufsize && image_size > bufsize) {
                req = random_below(rand, image_size / bufsize) * bufsize;
            }
        } else {
            /*
             * The next offset wraps at the image size, as in qemu-img 7.2;
             * where 7.2 would then issue a request past the end and fail
             * with EIO, it starts again at 0.
             */
            offset += step;
            if (image_size <= bufsize) {
                offset = 0;
            } else {
                offset %= image_size;
                if (offset > image_size - bufsize) {
                    offset = 0;
                }
            }
        }
        if (is_write) {
            ret = qguard_image_pwrite(img, req, bufsize, buf, 0, &err);
        } else {
            ret = qguard_image_pread(img, req, bufsize, buf, &err);
        }
        if (ret < 0) {
            error_report("Failed request: %s", g_strerror(-ret));
            goto out;
        }
        if (flush_interval && (count - i - 1) % flush_interval == 0) {
            ret = qguard_image_flush(img, &err);
            if (ret < 0) {
                error_report("Failed flush request: %s", g_strerror(-ret));
                goto out;
            }
        }
    }
    t2 = tool_now();

    printf("Run completed in %3.3f seconds.\n",
           tool_seconds(tool_elapsed(t1, t2)));
    if (!quiet) {
        print_overlap_stats(img);
    }
    ret = 0;

out:
    g_free(buf);
    if (img_close(img) < 0) {
        ret = -1;
    }
    return ret ? 1 : 0;
}
