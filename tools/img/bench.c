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
    QGuardOverlapStats st = QGUARD_SIZED(QGuardOverlapStats);

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

/* What the options ask for. */
typedef struct BenchParams {
    ImgOpts o;
    const char *cache;
    bool is_write;
    bool random;
    guint32 seed;
    int count;
    int depth;
    int flush_interval;
    int bufsize;
    int step;               /* 0: bufsize */
    int pattern;
    int64_t offset;
} BenchParams;

/*
 * An unsigned option value in [min, max], base 0 as qemu_strtoul() reads
 * it; false after "Invalid <what> specified".
 */
static bool parse_bench_value(const char *arg, unsigned long min,
                              unsigned long max, const char *what,
                              unsigned long *res)
{
    if (!parse_ulong(arg, res) || *res < min || *res > max) {
        error_report("Invalid %s specified", what);
        return false;
    }
    return true;
}

/* One option of bench; false if the command has failed. */
static bool bench_option(int c, BenchParams *b)
{
    unsigned long ul;
    int64_t sval;

    switch (c) {
    case 'c':
        if (!parse_bench_value(optarg, 0, INT_MAX, "request count", &ul)) {
            return false;
        }
        b->count = ul;
        break;
    case 'd':
        /* qemu-img hangs with depth 0; refuse it instead. */
        if (!parse_bench_value(optarg, 1, INT_MAX, "queue depth", &ul)) {
            return false;
        }
        b->depth = ul;
        break;
    case 'n':
        /* Native AIO: no such thing here, requests are synchronous. */
        break;
    case 'i':
        if (strcmp(optarg, "threads") && strcmp(optarg, "native") &&
            strcmp(optarg, "io_uring")) {
            error_report("Invalid aio option: %s", optarg);
            return false;
        }
        break;
    case 'o':
        b->offset = cvtnum("offset", optarg);
        return b->offset >= 0;
    case 's':
        sval = cvtnum_full("buffer size", optarg, 0, INT_MAX);
        b->bufsize = sval;
        return sval >= 0;
    case 'S':
        sval = cvtnum_full("step_size", optarg, 0, INT_MAX);
        b->step = sval;
        return sval >= 0;
    case 't':
        b->cache = optarg;
        break;
    case 'w':
        b->is_write = true;
        break;
    case OPTION_PATTERN:
        if (!parse_bench_value(optarg, 0, 0xff, "pattern byte", &ul)) {
            return false;
        }
        b->pattern = ul;
        break;
    case OPTION_FLUSH_INTERVAL:
        if (!parse_bench_value(optarg, 0, INT_MAX, "flush interval", &ul)) {
            return false;
        }
        b->flush_interval = ul;
        break;
    case OPTION_NO_DRAIN:
        /* Nothing is ever in flight at a flush, drained or not. */
        break;
    case OPTION_RANDOM:
        b->random = true;
        b->seed = g_random_int();
        if (optarg) {
            if (!parse_bench_value(optarg, 0, G_MAXUINT32, "random seed",
                                   &ul)) {
                return false;
            }
            b->seed = ul;
        }
        break;
    default:
        img_common_opt(c, &b->o);
    }
    return true;
}

/*
 * The offset of the next request.  Sequential offsets wrap at the image
 * size, as in qemu-img 7.2; where 7.2 would then issue a request past the
 * end and fail with EIO, they start again at 0.
 */
static int64_t bench_next_offset(BenchParams *b, GRand *rand,
                                 int64_t image_size)
{
    int64_t req = b->offset;

    if (b->random) {
        if (b->bufsize && image_size > b->bufsize) {
            return random_below(rand, image_size / b->bufsize) * b->bufsize;
        }
        return 0;
    }
    b->offset += b->step;
    if (image_size <= b->bufsize) {
        b->offset = 0;
    } else {
        b->offset %= image_size;
        if (b->offset > image_size - b->bufsize) {
            b->offset = 0;
        }
    }
    return req;
}

/* The timed requests; 0 or a negative errno after printing it. */
static int bench_run(QGuardImage *img, BenchParams *b, GRand *rand,
                     uint8_t *buf)
{
    int64_t image_size = qguard_image_size(img);
    int i, ret;

    for (i = 0; i < b->count; i++) {
        g_autoptr(GError) err = NULL;
        int64_t req = bench_next_offset(b, rand, image_size);

        if (b->is_write) {
            ret = qguard_image_pwrite(img, req, b->bufsize, buf, 0, &err);
        } else {
            ret = qguard_image_pread(img, req, b->bufsize, buf, &err);
        }
        if (ret < 0) {
            error_report("Failed request: %s", g_strerror(-ret));
            return ret;
        }
        if (b->flush_interval &&
            (b->count - i - 1) % b->flush_interval == 0) {
            ret = qguard_image_flush(img, &err);
            if (ret < 0) {
                error_report("Failed flush request: %s", g_strerror(-ret));
                return ret;
            }
        }
    }
    return 0;
}

int img_bench(int argc, char **argv)
{
    static const struct option long_options[] = {
        LONGOPT_HELP,
        { "flush-interval", required_argument, NULL, OPTION_FLUSH_INTERVAL },
        LONGOPT_IMAGE_OPTS,
        { "pattern", required_argument, NULL, OPTION_PATTERN },
        { "no-drain", no_argument, NULL, OPTION_NO_DRAIN },
        LONGOPT_FORCE_SHARE,
        { "random", optional_argument, NULL, OPTION_RANDOM },
        LONGOPT_END
    };
    BenchParams b = {
        .cache = "writeback", .count = 75000, .depth = 64, .bufsize = 4096,
    };
    const char *filename;
    struct timespec t1, t2;
    g_autoptr(GRand) rand = NULL;
    QGuardImage *img;
    uint8_t *buf = NULL;
    unsigned cache_flags = 0;
    int ret = 1, c;

    while ((c = tool_getopt(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU",
                            long_options, NULL)) != -1) {
        if (!bench_option(c, &b)) {
            return 1;
        }
    }
    /* qemu-img bench's default is writeback, as for most commands. */
    if (!parse_cache_flags(b.cache, &cache_flags)) {
        error_report("Invalid cache mode");
        return 1;
    }
    filename = img_one_filename(argc, argv);
    if (!b.is_write && b.flush_interval) {
        error_report("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < b.depth) {
        error_report("Flush interval can't be smaller than depth");
        return 1;
    }

    img = img_open_opts(&b.o, filename,
                        (b.is_write ? QGUARD_OPEN_RDWR : 0) | cache_flags);
    if (!img) {
        return 1;
    }
    if (!b.step) {
        b.step = b.bufsize;
    }

    printf("Sending %d %s requests, %d bytes each, %d in parallel "
           "(starting at offset %" PRId64 ", step size %d)\n",
           b.count, b.is_write ? "write" : "read", b.bufsize, b.depth,
           b.offset, b.step);
    if (b.flush_interval) {
        printf("Sending flush every %d requests\n", b.flush_interval);
    }
    if (b.random) {
        printf("Using random buffer-aligned offsets (seed %" G_GUINT32_FORMAT
               ")\n", b.seed);
        rand = g_rand_new_with_seed(b.seed);
    }

    buf = g_try_malloc(MAX(b.bufsize, 1));
    if (!buf) {
        error_report("Could not allocate a buffer of %d bytes", b.bufsize);
        goto out;
    }
    memset(buf, b.pattern, b.bufsize);
    qguard_image_overlap_stats_reset(img);

    t1 = tool_now();
    if (bench_run(img, &b, rand, buf) < 0) {
        goto out;
    }
    t2 = tool_now();

    printf("Run completed in %3.3f seconds.\n",
           tool_seconds(tool_elapsed(t1, t2)));
    if (!b.o.quiet) {
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
