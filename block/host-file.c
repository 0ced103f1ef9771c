/* SPDX-License-Identifier: MIT */
/*
 * Host file I/O.
 *
 * Copyright (c) 2026 The qguard authors
 *
 * Every read, write and flush of an image file passes through here, so this
 * is where short transfers and EINTR are dealt with once, and where tests
 * inject faults or record writes (see host_file_set_hook()).
 */
#include "host-file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* Direct I/O alignment when the file system does not say (statx). */
#define DIO_FALLBACK_ALIGN 4096

#define ALIGN_DOWN(n, a) ((n) & ~(uint64_t)((a) - 1))
#define ALIGN_UP(n, a) ALIGN_DOWN((n) + (a) - 1, a)
/* The same for blkdebug's zero alignment, which may be any number. */
#define ROUND_DOWN_TO(n, a) ((n) - (n) % (a))
#define ROUND_UP_TO(n, a) ROUND_DOWN_TO((n) + (a) - 1, a)

struct HostFile {
    int fd;
    char *filename;
    bool read_only;
    bool unsynced;          /* written since the last fdatasync */
    /*
     * The errno of a failed fdatasync.  The kernel may have dropped the
     * dirty pages it could not write and reports that only once, so a
     * retry would succeed although data is lost: every later flush fails
     * with this error (QEMU's file-posix does the same).
     */
    int flush_error;
    /* cache.no-flush: flushes do not reach the disk (cache=unsafe). */
    bool no_flush;
    /* file.discard=ignore: discards leave the file's blocks allocated. */
    bool no_discard;
    /*
     * cache.direct: the file is open with O_DIRECT, whose transfers need
     * file offsets and lengths aligned to @align and buffers (addresses and
     * segment lengths) aligned to @mem_align.  Other requests go through
     * an aligned bounce buffer; a write that covers part of an aligned
     * block reads, modifies and writes the whole block.  Such writes take
     * @rmw_lock exclusively and aligned writes take it shared, so that a
     * concurrent write to another part of the same block is not undone.
     */
    bool direct;
    uint32_t align;
    uint32_t mem_align;
    pthread_rwlock_t rmw_lock;
    /*
     * blkdebug's limits (host_file_set_limits()), 1 when not set.  A
     * write not aligned to @req_align is padded as QEMU's block layer
     * pads it: by read-modify-write under @rmw_lock, and the padding stays
     * (a write at the end of the file leaves it a multiple long).  The
     * parts of a discard that do not fill an aligned block are left; the
     * parts of a zero write that do not fill a block of @zero_align are
     * written as zeros.
     */
    uint32_t req_align;
    uint32_t zero_align;
    /*
     * host_file_zero_alloc() found that fallocate() has no
     * FALLOC_FL_ZERO_RANGE here, no hole punching, or no allocation at
     * all.
     */
    bool no_zero_range;
    bool no_punch_alloc;
    bool no_zero_alloc;
    dev_t dev;
    ino_t ino;
};

static HostFileHookFunc *test_hook;
static void *test_hook_opaque;

void host_file_set_hook(HostFileHookFunc *hook, void *opaque)
{
    test_hook = hook;
    test_hook_opaque = opaque;
}

static int run_hook(HostFile *file, HostFileOp op, uint64_t offset,
                    uint64_t bytes, const struct iovec *iov, int iovcnt)
{
    if (!test_hook) {
        return 0;
    }
    return test_hook(test_hook_opaque, file, op, offset, bytes, iov, iovcnt);
}

/*
 * Image locking, compatible with QEMU's file-posix driver so that qguard
 * and QEMU keep each other from writing an image the other has open.
 * Byte 100 + i, read-locked, says "I hold permission i"; byte 200 + i,
 * read-locked, says "I do not share permission i".  The locks are OFD
 * locks, so they belong to this open file and conflict across processes.
 */
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

enum {
    PERM_CONSISTENT_READ = 1 << 0,
    PERM_WRITE           = 1 << 1,
    PERM_WRITE_UNCHANGED = 1 << 2,
    PERM_RESIZE          = 1 << 3,
    PERM_COUNT           = 4,
};

static const char *const perm_names[PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

static int lock_byte(int fd, off_t off, short type, int cmd)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = off, .l_len = 1, .l_type = type,
    };

    if (fcntl(fd, cmd, &fl) < 0) {
        return -errno;
    }
    if (cmd == F_OFD_GETLK) {
        return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
    }
    return 0;
}

/*
 * Take @perm and deny @unshared (PERM_* masks), unless someone objects.
 * An image denies write and resize (it holds metadata), an external data
 * file only resize (QEMU's data children share writes), a file being
 * created only resize (QEMU's file-posix create).
 */
static int apply_image_locks(int fd, const char *filename, unsigned perm,
                             unsigned unshared, GError **errp)
{
    int i, ret;

    for (i = 0; i < PERM_COUNT; i++) {
        if ((perm & (1 << i)) &&
            (ret = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK,
                             F_OFD_SETLK)) < 0) {
            goto fail;
        }
        if ((unshared & (1 << i)) &&
            (ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK,
                             F_OFD_SETLK)) < 0) {
            goto fail;
        }
    }
    /* Someone must not be denying what we take, nor holding what we deny. */
    for (i = 0; i < PERM_COUNT; i++) {
        if ((perm & (1 << i)) &&
            lock_byte(fd, LOCK_SHARED_BASE + i, F_WRLCK, F_OFD_GETLK) < 0) {
            g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_AGAIN,
                        "Failed to get \"%s\" lock\nIs another process "
                        "using the image [%s]?\n", perm_names[i], filename);
            return -EAGAIN;
        }
    }
    for (i = 0; i < PERM_COUNT; i++) {
        if ((unshared & (1 << i)) &&
            lock_byte(fd, LOCK_PERM_BASE + i, F_WRLCK, F_OFD_GETLK) < 0) {
            g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_AGAIN,
                        "Failed to get shared \"%s\" lock\nIs another "
                        "process using the image [%s]?\n", perm_names[i],
                        filename);
            return -EAGAIN;
        }
    }
    return 0;

fail:
    if (ret == -EINVAL || ret == -ENOLCK || ret == -ENOTSUP) {
        /* A filesystem without OFD locks: QEMU's locking=auto goes on. */
        return 0;
    }
    g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(-ret),
                "Failed to lock byte: %s", g_strerror(-ret));
    return ret;
}

static void probe_dio_alignment(HostFile *file)
{
    struct statx stx;

    file->align = file->mem_align = DIO_FALLBACK_ALIGN;
    if (statx(file->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align &&
        stx.stx_dio_mem_align) {
        file->align = stx.stx_dio_offset_align;
        file->mem_align = stx.stx_dio_mem_align;
    }
}

static int open_fd(const char *filename, int oflags, GError **errp)
{
    int fd, err;

    do {
        fd = open(filename, oflags, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd >= 0) {
        return fd;
    }
    err = errno;
    if (err == EINVAL && (oflags & O_DIRECT)) {
        /* Say so if O_DIRECT is what the file system refuses (QEMU does). */
        fd = open(filename, oflags & ~(O_DIRECT | O_CREAT | O_TRUNC));
        if (fd >= 0) {
            close(fd);
            g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_INVAL,
                        "Could not open '%s': filesystem does not support "
                        "O_DIRECT", filename);
            return -EINVAL;
        }
    }
    g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(err),
                "Could not open '%s': %s", filename, g_strerror(err));
    return -err;
}

int host_file_open(HostFile **pfile, const char *filename, unsigned flags,
                   GError **errp)
{
    int oflags = O_CLOEXEC;
    struct stat st;
    HostFile *file;
    int fd;

    oflags |= (flags & HOST_FILE_RDWR) ? O_RDWR : O_RDONLY;
    /*
     * Not O_TRUNC: an image that another process has open must keep its
     * contents when the lock below is refused.
     */
    if (flags & HOST_FILE_CREATE) {
        oflags |= O_CREAT;
    }
    if (flags & HOST_FILE_DIRECT) {
        oflags |= O_DIRECT;
    }
    fd = open_fd(filename, oflags, errp);
    if (fd < 0) {
        return fd;
    }
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(err),
                    "Could not stat '%s': %s", filename, g_strerror(err));
        return -err;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        g_set_error(errp, G_FILE_ERROR, G_FILE_ERROR_ISDIR,
                    "'file' driver requires '%s' to be a regular file",
                    filename);
        return -EISDIR;
    }
    if (!(flags & HOST_FILE_NO_LOCK)) {
        /*
         * Creating needs write and resize and shares all but resize, as
         * QEMU's file-posix create; a plain open shares neither.
         */
        unsigned perm = flags & HOST_FILE_CREATE ? PERM_WRITE | PERM_RESIZE :
                        PERM_CONSISTENT_READ |
                        (flags & HOST_FILE_RDWR ? PERM_WRITE | PERM_RESIZE : 0);
        unsigned unshared = flags & HOST_FILE_CREATE ? PERM_RESIZE :
                            PERM_WRITE | PERM_RESIZE;
        int ret = apply_image_locks(fd, filename, perm, unshared, errp);
        if (ret < 0) {
            close(fd);
            return ret;
        }
    }
    if (flags & HOST_FILE_CREATE) {
        while (ftruncate(fd, 0) < 0) {
            int err = errno;
            if (err == EINTR) {
                continue;
            }
            close(fd);
            g_set_error(errp, G_FILE_ERROR, g_file_error_from_errno(err),
                        "Could not clear '%s': %s", filename,
                        g_strerror(err));
            return -err;
        }
    }
    file = g_new0(HostFile, 1);
    file->fd = fd;
    file->filename = g_strdup(filename);
    file->read_only = !(flags & HOST_FILE_RDWR);
    file->no_flush = flags & HOST_FILE_NO_FLUSH;
    file->no_discard = flags & HOST_FILE_NO_DISCARD;
    file->direct = flags & HOST_FILE_DIRECT;
    if (file->direct) {
        probe_dio_alignment(file);
    }
    file->req_align = file->zero_align = 1;
    pthread_rwlock_init(&file->rmw_lock, NULL);
    file->dev = st.st_dev;
    file->ino = st.st_ino;
    *pfile = file;
    return 0;
}

int host_file_lock(HostFile *file, bool rdwr, GError **errp)
{
    return apply_image_locks(file->fd, file->filename,
                             PERM_CONSISTENT_READ |
                             (rdwr ? PERM_WRITE | PERM_RESIZE : 0),
                             PERM_WRITE | PERM_RESIZE, errp);
}

int host_file_lock_data(HostFile *file, bool rdwr, GError **errp)
{
    return apply_image_locks(file->fd, file->filename,
                             PERM_CONSISTENT_READ |
                             (rdwr ? PERM_WRITE | PERM_RESIZE : 0),
                             PERM_RESIZE, errp);
}

void host_file_close(HostFile *file)
{
    if (!file) {
        return;
    }
    close(file->fd);
    pthread_rwlock_destroy(&file->rmw_lock);
    g_free(file->filename);
    g_free(file);
}

const char *host_file_name(const HostFile *file)
{
    return file->filename;
}

bool host_file_is_read_only(const HostFile *file)
{
    return file->read_only;
}

void host_file_identity(const HostFile *file, uint64_t *dev, uint64_t *ino)
{
    *dev = file->dev;
    *ino = file->ino;
}

bool host_file_is_direct(const HostFile *file)
{
    return file->direct;
}

void host_file_set_dio_alignment(HostFile *file, uint32_t align,
                                 uint32_t mem_align)
{
    g_assert(file->direct && align % file->align == 0 &&
             mem_align % file->mem_align == 0);
    file->align = align;
    file->mem_align = mem_align;
}

void host_file_set_limits(HostFile *file, uint32_t req_align,
                          uint32_t zero_align)
{
    file->req_align = MAX(req_align, 1);
    file->zero_align = MAX(zero_align, file->req_align);
    g_assert(!(file->req_align & (file->req_align - 1)) &&
             file->zero_align % file->req_align == 0);
}

/*
 * Read @bytes at @offset, zeros past the end of the file.  With O_DIRECT
 * a short read ends inside the last block: that is the end of the file.
 */
static int read_fully(HostFile *file, uint64_t offset, uint8_t *p,
                      size_t bytes)
{
    while (bytes > 0) {
        ssize_t n = pread(file->fd, p, MIN(bytes, (size_t)SSIZE_MAX), offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (n == 0 || (file->direct && n % file->align)) {
            memset(p + n, 0, bytes - n);
            break;
        }
        p += n;
        offset += n;
        bytes -= n;
    }
    return 0;
}

static int write_fully(HostFile *file, uint64_t offset,
                       const struct iovec *iov_in, int iovcnt)
{
    struct iovec local[64];
    struct iovec *copy = local;
    struct iovec *iov;
    int ret = 0;

    /* pwritev may write partially; keep a private copy we can advance. */
    if (iovcnt > (int)G_N_ELEMENTS(local)) {
        copy = g_new(struct iovec, iovcnt);
    }
    memcpy(copy, iov_in, iovcnt * sizeof(*copy));
    iov = copy;
    while (iovcnt > 0) {
        ssize_t n = pwritev(file->fd, iov, MIN(iovcnt, IOV_MAX), offset);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            break;
        }
        if (n == 0) {
            ret = -EIO;
            break;
        }
        offset += n;
        while (n > 0 && iovcnt > 0) {
            if ((size_t)n >= iov->iov_len) {
                n -= iov->iov_len;
                iov++;
                iovcnt--;
            } else {
                iov->iov_base = (uint8_t *)iov->iov_base + n;
                iov->iov_len -= n;
                n = 0;
            }
        }
        /* Skip empty elements so that pwritev never sees zero progress. */
        while (iovcnt > 0 && iov->iov_len == 0) {
            iov++;
            iovcnt--;
        }
    }
    if (copy != local) {
        g_free(copy);
    }
    return ret;
}

/* The alignment a write needs: O_DIRECT's and blkdebug's. */
static uint32_t write_align(const HostFile *file)
{
    return MAX(file->direct ? file->align : 1, file->req_align);
}

/* Can this transfer go to the file as it is? */
static bool transfer_aligned(const HostFile *file, uint64_t offset,
                             const struct iovec *iov, int iovcnt,
                             uint64_t total, uint32_t align)
{
    int i;

    if ((offset | total) & (align - 1)) {
        return false;
    }
    if (!file->direct) {
        return true;
    }
    for (i = 0; i < iovcnt; i++) {
        if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) &
            (file->mem_align - 1)) {
            return false;
        }
    }
    return true;
}

static uint8_t *dio_buffer(const HostFile *file, size_t len)
{
    void *p;

    if (posix_memalign(&p, MAX(file->mem_align, (uint32_t)sizeof(void *)),
                       len)) {
        return NULL;
    }
    return p;
}

/* An unaligned read from an O_DIRECT file, through a bounce buffer. */
static int dio_bounce_read(HostFile *file, uint64_t offset, void *buf,
                           size_t bytes)
{
    uint64_t start = ALIGN_DOWN(offset, file->align);
    uint64_t end = ALIGN_UP(offset + bytes, file->align);
    uint8_t *bounce = dio_buffer(file, end - start);
    int ret;

    if (!bounce) {
        return -ENOMEM;
    }
    ret = read_fully(file, start, bounce, end - start);
    if (ret == 0) {
        memcpy(buf, bounce + (offset - start), bytes);
    }
    free(bounce);
    return ret;
}

/*
 * An unaligned write: read the partial blocks at both ends, copy the data
 * in and write the aligned range.  Writing the last block may extend the
 * file past the end of the request.  O_DIRECT's padding is undone (the
 * file gets its old length, or the end of the request, back); blkdebug's
 * is not, as in QEMU, where the padded request is what reaches the file.
 */
static int rmw_write(HostFile *file, uint64_t offset,
                     const struct iovec *iov, int iovcnt, uint64_t total)
{
    uint32_t align = write_align(file);
    uint64_t start = ALIGN_DOWN(offset, align);
    uint64_t end = ALIGN_UP(offset + total, align);
    uint64_t keep = ALIGN_UP(offset + total, file->req_align);
    uint64_t len = end - start, pos;
    struct iovec whole;
    uint8_t *bounce;
    struct stat st;
    bool tail = offset + total < end;
    int ret = 0, i;

    bounce = dio_buffer(file, len);
    if (!bounce) {
        return -ENOMEM;
    }
    pthread_rwlock_wrlock(&file->rmw_lock);
    if (tail && fstat(file->fd, &st) < 0) {
        ret = -errno;
        goto out;
    }
    if (start < offset) {
        ret = read_fully(file, start, bounce, align);
    }
    if (ret == 0 && tail && (len > align || start == offset)) {
        ret = read_fully(file, end - align, bounce + len - align, align);
    }
    if (ret < 0) {
        goto out;
    }
    pos = offset - start;
    for (i = 0; i < iovcnt; i++) {
        memcpy(bounce + pos, iov[i].iov_base, iov[i].iov_len);
        pos += iov[i].iov_len;
    }
    whole.iov_base = bounce;
    whole.iov_len = len;
    ret = write_fully(file, start, &whole, 1);
    if (ret == 0 && tail && (uint64_t)st.st_size < end && keep < end) {
        while (ftruncate(file->fd, MAX((uint64_t)st.st_size, keep)) < 0) {
            if (errno != EINTR) {
                ret = -errno;
                break;
            }
        }
    }
out:
    pthread_rwlock_unlock(&file->rmw_lock);
    free(bounce);
    return ret;
}

int host_file_pread(HostFile *file, uint64_t offset, void *buf, size_t bytes)
{
    struct iovec iov = { .iov_base = buf, .iov_len = bytes };
    int ret;

    ret = run_hook(file, HOST_FILE_READ, offset, bytes, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    /* blkdebug's alignment changes no byte read: only O_DIRECT's counts. */
    if (file->direct &&
        !transfer_aligned(file, offset, &iov, 1, bytes, file->align)) {
        return dio_bounce_read(file, offset, buf, bytes);
    }
    return read_fully(file, offset, buf, bytes);
}

int host_file_pwrite(HostFile *file, uint64_t offset, const void *buf,
                     size_t bytes)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = bytes };

    return host_file_pwritev(file, offset, &iov, 1);
}

int host_file_pwritev(HostFile *file, uint64_t offset,
                      const struct iovec *iov, int iovcnt)
{
    uint64_t total = 0;
    int ret = 0;
    int i;

    if (file->read_only) {
        return -EBADF;
    }
    for (i = 0; i < iovcnt; i++) {
        total += iov[i].iov_len;
    }
    ret = run_hook(file, HOST_FILE_WRITE, offset, total, iov, iovcnt);
    if (ret < 0) {
        return ret;
    }
    if (!file->direct && file->req_align == 1) {
        ret = write_fully(file, offset, iov, iovcnt);
    } else if (!transfer_aligned(file, offset, iov, iovcnt, total,
                                 write_align(file))) {
        ret = rmw_write(file, offset, iov, iovcnt, total);
    } else {
        pthread_rwlock_rdlock(&file->rmw_lock);
        ret = write_fully(file, offset, iov, iovcnt);
        pthread_rwlock_unlock(&file->rmw_lock);
    }
    /*
     * Marked after the write (even a failed one may have reached the page
     * cache): a flush running meanwhile in another thread clears the mark
     * before its fdatasync, and this one must not be lost.
     */
    __atomic_store_n(&file->unsynced, true, __ATOMIC_RELEASE);
    return ret;
}

int host_file_flush(HostFile *file)
{
    int ret;

    if (file->read_only) {
        return 0;
    }
    if (file->flush_error) {
        return -file->flush_error;
    }
    /* Ordering flushes are frequent; one with nothing to sync is free. */
    if (!__atomic_load_n(&file->unsynced, __ATOMIC_ACQUIRE) ||
        file->no_flush) {
        return 0;
    }
    ret = run_hook(file, HOST_FILE_FLUSH, 0, 0, NULL, 0);
    /*
     * Cleared before the sync: a write of another thread that lands while
     * it runs marks the file again, so the next flush does not skip it.
     */
    if (ret == 0) {
        __atomic_store_n(&file->unsynced, false, __ATOMIC_RELEASE);
    }
    while (ret == 0 && fdatasync(file->fd) < 0) {
        if (errno != EINTR) {
            ret = -errno;
        }
    }
    if (ret < 0) {
        __atomic_store_n(&file->unsynced, true, __ATOMIC_RELEASE);
        /* Without a page cache, nothing was dropped: a retry is honest. */
        if (!file->direct) {
            file->flush_error = -ret;
        }
        return ret;
    }
    return 0;
}

int64_t host_file_length(HostFile *file)
{
    struct stat st;

    if (fstat(file->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

int64_t host_file_allocated(HostFile *file)
{
    struct stat st;

    if (fstat(file->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

/*
 * What every change of the file's content or size does first: refuse on a
 * read-only file, let the test hook see (or fail) it, and note that the
 * file now has something to sync.
 */
static int begin_change(HostFile *file, HostFileOp op, uint64_t offset,
                        uint64_t bytes)
{
    int ret;

    if (file->read_only) {
        return -EBADF;
    }
    ret = run_hook(file, op, offset, bytes, NULL, 0);
    if (ret < 0) {
        return ret;
    }
    __atomic_store_n(&file->unsynced, true, __ATOMIC_RELEASE);
    return 0;
}

int host_file_set_nocow(HostFile *file)
{
    int attr;

    if (ioctl(file->fd, FS_IOC_GETFLAGS, &attr) < 0) {
        return -errno;
    }
    attr |= FS_NOCOW_FL;
    return ioctl(file->fd, FS_IOC_SETFLAGS, &attr) < 0 ? -errno : 0;
}

int host_file_set_extent_size_hint(HostFile *file, uint32_t hint)
{
    struct fsxattr attr;

    if (ioctl(file->fd, FS_IOC_FSGETXATTR, &attr) < 0) {
        return -errno;
    }
    attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
    attr.fsx_extsize = hint;
    return ioctl(file->fd, FS_IOC_FSSETXATTR, &attr) < 0 ? -errno : 0;
}

int host_file_truncate(HostFile *file, uint64_t length)
{
    int ret;

    if (length > INT64_MAX && !file->read_only) {
        return -EFBIG;
    }
    ret = begin_change(file, HOST_FILE_TRUNCATE, length, 0);
    if (ret < 0) {
        return ret;
    }
    while (ftruncate(file->fd, length) < 0) {
        if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

int host_file_allocate(HostFile *file, uint64_t offset, uint64_t bytes)
{
    int ret;

    ret = begin_change(file, HOST_FILE_WRITE, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    ret = posix_fallocate(file->fd, offset, bytes);
    return -ret;
}

int host_file_discard(HostFile *file, uint64_t offset, uint64_t bytes)
{
    int ret;

    ret = begin_change(file, HOST_FILE_DISCARD, offset, bytes);
    if (ret < 0 || file->no_discard) {
        return ret;
    }
    if (file->req_align > 1) {
        /* Discards are advisory: the partial blocks are left alone. */
        uint64_t end = ALIGN_DOWN(offset + bytes, file->req_align);

        offset = ALIGN_UP(offset, file->req_align);
        if (offset >= end) {
            return 0;
        }
        bytes = end - offset;
    }
    if (fallocate(file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  offset, bytes) < 0) {
        return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
    }
    return 0;
}

static int write_zero_data(HostFile *file, uint64_t offset, uint64_t bytes)
{
    static const uint8_t zeros[64 * 1024];
    int ret;

    while (bytes > 0) {
        size_t n = MIN(bytes, sizeof(zeros));
        ret = host_file_pwrite(file, offset, zeros, n);
        if (ret < 0) {
            return ret;
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

/*
 * Make a range read as zeros with fallocate @mode, or with written zeros
 * if @fallback and the file system has no such mode.
 */
static int zero_range(HostFile *file, uint64_t offset, uint64_t bytes,
                      int mode, bool fallback)
{
    uint64_t start = offset, end = offset + bytes;
    int ret;

    /* To a recorder this is a discard: afterwards the range reads zeros. */
    ret = begin_change(file, HOST_FILE_DISCARD, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (file->zero_align > 1) {
        /*
         * As QEMU's block layer under blkdebug: only whole blocks of the
         * zero alignment become a zero range, the ends are written as
         * zeros (by read-modify-write where they cover part of a block).
         */
        start = MIN(ROUND_UP_TO(offset, file->zero_align), end);
        end = MAX(ROUND_DOWN_TO(end, file->zero_align), start);
        ret = write_zero_data(file, offset, start - offset);
        if (ret == 0) {
            ret = write_zero_data(file, end, offset + bytes - end);
        }
        if (ret < 0 || start == end) {
            return ret;
        }
    }
    if (fallocate(file->fd, mode, start, end - start) == 0) {
        return 0;
    }
    if (!fallback) {
        return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
    }
    /* No fallocate mode for it here: write the zeros out. */
    return write_zero_data(file, start, end - start);
}

int host_file_write_zeroes(HostFile *file, uint64_t offset, uint64_t bytes,
                           bool may_unmap)
{
    return zero_range(file, offset, bytes,
                      may_unmap ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                                : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                      true);
}

int host_file_punch_zeroes(HostFile *file, uint64_t offset, uint64_t bytes)
{
    return zero_range(file, offset, bytes,
                      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, false);
}

int host_file_zero_alloc(HostFile *file, uint64_t offset, uint64_t bytes)
{
    int64_t len;
    int ret;

    if (file->zero_align > 1 || file->req_align > 1 ||
        __atomic_load_n(&file->no_zero_alloc, __ATOMIC_RELAXED)) {
        return -ENOTSUP;
    }
    if (!__atomic_load_n(&file->no_zero_range, __ATOMIC_RELAXED)) {
        /* To a recorder: the range reads zeros, and the file covers it. */
        ret = begin_change(file, HOST_FILE_DISCARD, offset, bytes);
        if (ret == 0) {
            ret = begin_change(file, HOST_FILE_WRITE, offset, bytes);
        }
        if (ret < 0) {
            return ret;
        }
        if (fallocate(file->fd, FALLOC_FL_ZERO_RANGE, offset, bytes) == 0) {
            return 0;
        }
        if (errno != EOPNOTSUPP) {
            return -errno;
        }
        __atomic_store_n(&file->no_zero_range, true, __ATOMIC_RELAXED);
    }
    /*
     * Past the end of the file everything reads as zeros: allocating the
     * range only extends the file.  The range is the caller's (a new
     * cluster), so no other write lands in it meanwhile, and a write
     * elsewhere that extends the file past it leaves it a hole.
     */
    len = host_file_length(file);
    if (len < 0) {
        return len;
    }
    if (offset < (uint64_t)len) {
        /*
         * Inside the file, as QEMU's file-posix does where ZERO_RANGE is
         * missing (tmpfs): punch the range, then allocate it again.  The
         * range is the caller's new cluster, so nothing reads it between.
         */
        if (__atomic_load_n(&file->no_punch_alloc, __ATOMIC_RELAXED)) {
            return -ENOTSUP;
        }
        ret = begin_change(file, HOST_FILE_DISCARD, offset, bytes);
        if (ret == 0) {
            ret = begin_change(file, HOST_FILE_WRITE, offset, bytes);
        }
        if (ret < 0) {
            return ret;
        }
        if (fallocate(file->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      offset, bytes) == 0 &&
            fallocate(file->fd, 0, offset, bytes) == 0) {
            return 0;
        }
        if (errno != EOPNOTSUPP) {
            return -errno;
        }
        /* The caller writes the zeros; they read as zeros meanwhile. */
        __atomic_store_n(&file->no_punch_alloc, true, __ATOMIC_RELAXED);
        return -ENOTSUP;
    }
    /* To a recorder, as to host_file_allocate(): the file grows. */
    ret = begin_change(file, HOST_FILE_WRITE, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    if (fallocate(file->fd, 0, offset, bytes) == 0) {
        return 0;
    }
    if (errno != EOPNOTSUPP) {
        return -errno;
    }
    __atomic_store_n(&file->no_zero_alloc, true, __ATOMIC_RELAXED);
    return -ENOTSUP;
}

int host_file_is_hole(HostFile *file, uint64_t offset, uint64_t *bytes,
                      bool *hole)
{
    off_t data, next_hole;

    data = lseek(file->fd, offset, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {
            /* Past the last data extent: the rest is a hole. */
            *hole = true;
            return 0;
        }
        *hole = false;
        return 0;
    }
    if ((uint64_t)data > offset) {
        *hole = true;
        *bytes = MIN(*bytes, (uint64_t)data - offset);
        return 0;
    }
    next_hole = lseek(file->fd, offset, SEEK_HOLE);
    *hole = false;
    if (next_hole > (off_t)offset) {
        *bytes = MIN(*bytes, (uint64_t)next_hole - offset);
    }
    return 0;
}
