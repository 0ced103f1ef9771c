/* SPDX-License-Identifier: MIT */
/*
 * qcow2 compressed clusters: the zlib and zstd codecs.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * The L2 entry records a compressed cluster's size only in 512-byte sectors
 * (the first one partly), so a reader hands the codec a buffer that may run
 * past the end of the stream into the next cluster's data.  Both codecs must
 * therefore stop once a whole cluster has been produced and ignore what
 * follows, which is what QEMU 7.2 does:
 *
 *   - zlib: raw deflate (window 2^12, no zlib header); inflate until the
 *     output is full, accepting a stream that did not reach its end marker
 *     within the buffer as long as the cluster is complete.
 *   - zstd: one frame, written by the streaming API with ZSTD_e_end at the
 *     library's default level, so the frame header carries the content
 *     size.  Decoding streams frame by frame until the cluster is full; a
 *     frame that would produce more than a cluster, an error, or a step
 *     that makes no progress is a corrupt cluster.
 *
 * Compression that would not save at least one byte of a cluster reports
 * -ENOSPC and the caller stores the cluster uncompressed, as QEMU does.
 */
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "qcow2.h"

#define QCOW2_ZLIB_WINDOW_BITS (-12)

/* Point a zlib stream at its input and output. */
static void zlib_buffers(z_stream *strm, const uint8_t *in, size_t in_len,
                         uint8_t *out, size_t out_len)
{
    strm->next_in = (uint8_t *)in;
    strm->avail_in = in_len;
    strm->next_out = out;
    strm->avail_out = out_len;
}

static int zlib_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                         size_t out_max, size_t *out_len)
{
    z_stream strm = { 0 };
    int ret;

    if (deflateInit2(&strm, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                     QCOW2_ZLIB_WINDOW_BITS, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
        return -EIO;
    }
    zlib_buffers(&strm, in, in_len, out, out_max);
    ret = deflate(&strm, Z_FINISH);
    *out_len = out_max - strm.avail_out;
    deflateEnd(&strm);
    if (ret == Z_STREAM_END) {
        return 0;
    }
    return ret == Z_OK ? -ENOSPC : -EIO;
}

static int zlib_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_len)
{
    z_stream strm = { 0 };
    int ret, zret;

    if (inflateInit2(&strm, QCOW2_ZLIB_WINDOW_BITS) != Z_OK) {
        return -EIO;
    }
    zlib_buffers(&strm, in, in_len, out, out_len);
    zret = inflate(&strm, Z_FINISH);
    ret = (zret == Z_STREAM_END || zret == Z_BUF_ERROR) &&
          strm.avail_out == 0 ? 0 : -EIO;
    inflateEnd(&strm);
    return ret;
}

static int zstd_compress(const uint8_t *in, size_t in_len, uint8_t *out,
                         size_t out_max, size_t *out_len)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_inBuffer input = { in, in_len, 0 };
    ZSTD_outBuffer output = { out, out_max, 0 };
    int ret = 0;

    if (!cctx) {
        return -ENOMEM;
    }
    /*
     * ZSTD_e_end on the first call tells the library the whole input, so
     * everything goes into one frame; each call flushes what fits, and a
     * remainder larger than the space left means the cluster does not
     * compress.
     */
    while (input.pos < input.size) {
        size_t left;

        do {
            left = ZSTD_compressStream2(cctx, &output, &input, ZSTD_e_end);
            if (ZSTD_isError(left)) {
                ret = -EIO;
                goto out;
            }
            if (left > output.size - output.pos) {
                ret = -ENOSPC;
                goto out;
            }
        } while (left);
    }
    *out_len = output.pos;
out:
    ZSTD_freeCCtx(cctx);
    return ret;
}

static int zstd_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
                           size_t out_len)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer input = { in, in_len, 0 };
    ZSTD_outBuffer output = { out, out_len, 0 };
    size_t hint = 0;
    int ret = 0;

    if (!dctx) {
        return -ENOMEM;
    }
    while (output.pos < output.size) {
        size_t in_pos = input.pos, out_pos = output.pos;

        hint = ZSTD_decompressStream(dctx, &output, &input);
        if (ZSTD_isError(hint) ||
            (input.pos == in_pos && output.pos == out_pos)) {
            ret = -EIO;
            break;
        }
    }
    /* A full cluster with the frame still open: it holds more than that. */
    if (ret == 0 && hint != 0) {
        ret = -EIO;
    }
    ZSTD_freeDCtx(dctx);
    return ret;
}

int qcow2_compress(BDRVQcow2State *s, const uint8_t *in, uint8_t *out,
                   size_t out_max, size_t *out_len)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD) {
        return zstd_compress(in, s->cluster_size, out, out_max, out_len);
    }
    return zlib_compress(in, s->cluster_size, out, out_max, out_len);
}

int qcow2_decompress(BDRVQcow2State *s, const uint8_t *in, size_t in_len,
                     uint8_t *out)
{
    if (s->compression_type == QCOW2_COMPRESSION_ZSTD) {
        return zstd_decompress(in, in_len, out, s->cluster_size);
    }
    return zlib_decompress(in, in_len, out, s->cluster_size);
}

int qcow2_decompress_cluster(BDRVQcow2State *s, uint64_t l2_entry,
                             uint8_t *out)
{
    g_autofree uint8_t *in = NULL;
    uint64_t coffset;
    int csize, ret;

    qcow2_parse_compressed_entry(s, l2_entry, &coffset, &csize);
    in = g_try_malloc(csize);
    if (!in) {
        return -ENOMEM;
    }
    ret = host_file_pread(s->file, coffset, in, csize);
    if (ret < 0) {
        return ret;
    }
    return qcow2_decompress(s, in, csize, out) < 0 ? -EIO : 0;
}
