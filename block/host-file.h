/* SPDX-License-Identifier: MIT */
/*
 * Host file I/O: the only place that issues syscalls on image files.
 *
 * Copyright (c) 2026 The qguard authors
 */
#ifndef QGUARD_HOST_FILE_H
#define QGUARD_HOST_FILE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <glib.h>

typedef struct HostFile HostFile;

typedef enum HostFileOp {
    HOST_FILE_READ,
    HOST_FILE_WRITE,
    HOST_FILE_FLUSH,
    HOST_FILE_TRUNCATE,
    HOST_FILE_DISCARD,
} HostFileOp;

/*
 * Test hook: called before every operation reaches the kernel.  A non-zero
 * return (a negative errno) fails the operation without performing it.
 * For writes, @iov/@iovcnt describe the data, so a recorder can keep it.
 */
typedef int HostFileHookFunc(void *opaque, HostFile *file, HostFileOp op,
                             uint64_t offset, uint64_t bytes,
                             const struct iovec *iov, int iovcnt);
void host_file_set_hook(HostFileHookFunc *hook, void *opaque);

enum {
    HOST_FILE_RDWR    = 1 << 0,
    /* Create, or truncate to 0 once the image lock is held. */
    HOST_FILE_CREATE  = 1 << 1,
    /* Take no image locks (QEMU's locking=off / force-share readers). */
    HOST_FILE_NO_LOCK = 1 << 2,
    /*
     * cache.direct: O_DIRECT; requests of any alignment still work (they
     * are bounced), an open that the file system refuses says so.
     */
    HOST_FILE_DIRECT  = 1 << 3,
    /* cache.no-flush: host_file_flush() does not sync (cache=unsafe). */
    HOST_FILE_NO_FLUSH = 1 << 4,
    /* discard=ignore on the file node: host_file_discard() does nothing. */
    HOST_FILE_NO_DISCARD = 1 << 5,
};

int host_file_open(HostFile **pfile, const char *filename, unsigned flags,
                   GError **errp);
void host_file_close(HostFile *file);
/* Take QEMU-compatible image locks (for a file opened with NO_LOCK). */
int host_file_lock(HostFile *file, bool rdwr, GError **errp);
/* The same for an external data file: others may write it, not resize it. */
int host_file_lock_data(HostFile *file, bool rdwr, GError **errp);

const char *host_file_name(const HostFile *file);
bool host_file_is_read_only(const HostFile *file);
bool host_file_is_direct(const HostFile *file);
/* Test hook: pretend an O_DIRECT file needs coarser alignment. */
void host_file_set_dio_alignment(HostFile *file, uint32_t align,
                                 uint32_t mem_align);
/*
 * blkdebug's limits, 0 or 1 for none: @req_align a power of two,
 * @zero_align a multiple of it.  Writes are padded to @req_align and
 * discards skip what does not fill an aligned block; zero writes zero
 * only whole blocks of @zero_align and write zeros elsewhere.
 */
void host_file_set_limits(HostFile *file, uint32_t req_align,
                          uint32_t zero_align);
/* Identity of the underlying file (for backing chain loop detection). */
void host_file_identity(const HostFile *file, uint64_t *dev, uint64_t *ino);

/* Reads past the end of the file return zeros. */
int host_file_pread(HostFile *file, uint64_t offset, void *buf, size_t bytes);
int host_file_pwrite(HostFile *file, uint64_t offset, const void *buf,
                     size_t bytes);
int host_file_pwritev(HostFile *file, uint64_t offset,
                      const struct iovec *iov, int iovcnt);
/*
 * fdatasync if anything was written since the last one.  After a failure,
 * every later flush fails with the same error: the data may be gone.
 */
int host_file_flush(HostFile *file);
int64_t host_file_length(HostFile *file);
/* Allocated bytes on the host (st_blocks * 512). */
int64_t host_file_allocated(HostFile *file);
int host_file_truncate(HostFile *file, uint64_t length);
/*
 * Attributes of a new, empty file, as QEMU's file protocol sets them at
 * creation: no copy-on-write (btrfs), an extent size hint (XFS; 0 for
 * none).  Both are hints: 0, or a negative errno that callers may ignore.
 */
int host_file_set_nocow(HostFile *file);
int host_file_set_extent_size_hint(HostFile *file, uint32_t hint);
/* Reserve blocks (posix_fallocate semantics, keeps zeros). */
int host_file_allocate(HostFile *file, uint64_t offset, uint64_t bytes);
/* Make a range read as zeros, deallocating it if @may_unmap. */
int host_file_write_zeroes(HostFile *file, uint64_t offset, uint64_t bytes,
                           bool may_unmap);
/* Punch a hole; best effort, -ENOTSUP if the filesystem cannot. */
int host_file_discard(HostFile *file, uint64_t offset, uint64_t bytes);
/*
 * Make a range read as zeros by deallocating it, exactly (unlike a
 * discard); -ENOTSUP if the file system cannot.
 */
int host_file_punch_zeroes(HostFile *file, uint64_t offset, uint64_t bytes);
/*
 * Make a range read as zeros without writing them, the file extended to
 * cover it (QEMU's write-zeroes with BDRV_REQ_NO_FALLBACK, as qcow2's
 * handle_alloc_space() uses it): FALLOC_FL_ZERO_RANGE, or where the file
 * system has none, fallocate() of a range that starts at or past the end
 * of the file.  -ENOTSUP when neither applies; the caller writes zeros.
 */
int host_file_zero_alloc(HostFile *file, uint64_t offset, uint64_t bytes);
/*
 * Is [offset, offset + *bytes) a hole?  On return *bytes is shortened to the
 * extent that has the same answer.  Files without SEEK_HOLE report data.
 */
int host_file_is_hole(HostFile *file, uint64_t offset, uint64_t *bytes,
                      bool *hole);

#endif
