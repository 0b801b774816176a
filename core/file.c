/*
 * file.c — whole-file reads with a size cap, crash-safe replacement of a
 * file (write a temporary, fsync, rename, fsync the directory), mkdir -p,
 * and the two clocks.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/esim.h"

esim_err esim_read_file(const char *path, size_t max_len, esim_buf *out, esim_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return esim_fail(err, errno == ENOENT ? ESIM_ENOTFOUND : ESIM_EIO, "cannot open %s: %s",
                         path, strerror(errno));
    esim_buf buf = {0};
    esim_err rc = ESIM_OK;
    for (;;) {
        if ((rc = esim_buf_reserve(&buf, 65536)) != ESIM_OK)
            break;
        ssize_t n = read(fd, buf.data + buf.len, buf.cap - buf.len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = esim_fail(err, ESIM_EIO, "cannot read %s: %s", path, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        buf.len += (size_t)n;
        buf.data[buf.len] = '\0';
        if (buf.len > max_len) {
            rc = esim_fail(err, ESIM_ETOOBIG, "%s is larger than %zu bytes", path, max_len);
            break;
        }
    }
    close(fd);
    if (rc != ESIM_OK) {
        esim_buf_free(&buf);
        return rc;
    }
    if (!buf.data && esim_buf_reserve(&buf, 0) != ESIM_OK)
        return ESIM_ENOMEM;
    esim_buf_free(out);
    *out = buf;
    return ESIM_OK;
}

static esim_err fsync_dir_of(const char *path, esim_error *err)
{
    char *copy = strdup(path);
    if (!copy)
        return ESIM_ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    esim_err rc = ESIM_OK;
    if (fd < 0 || fsync(fd) != 0)
        rc = esim_fail(err, ESIM_EIO, "cannot sync the directory of %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

esim_err esim_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode,
                                esim_error *err)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return esim_fail(err, ESIM_EINVAL, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return esim_fail(err, ESIM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    const unsigned char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            esim_fail(err, ESIM_EIO, "cannot write %s: %s", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            return ESIM_EIO;
        }
        p += n;
        left -= (size_t)n;
    }
    /* The data must be on disk before the rename makes it visible, or a
     * crash could leave the new name pointing at an empty file. */
    if (fsync(fd) != 0 || close(fd) != 0) {
        esim_fail(err, ESIM_EIO, "cannot sync %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return ESIM_EIO;
    }
    if (rename(tmp, path) != 0) {
        esim_fail(err, ESIM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return ESIM_EIO;
    }
    return fsync_dir_of(path, err);
}

esim_err esim_mkdirs(const char *path, unsigned mode, esim_error *err)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return esim_fail(err, ESIM_EINVAL, "bad directory path '%s'", path);
    memcpy(buf, path, n + 1);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
                return esim_fail(err, ESIM_EIO, "cannot create directory %s: %s", buf,
                                 strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return esim_fail(err, ESIM_EIO, "%s is not a directory", path);
    return ESIM_OK;
}

int64_t esim_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t esim_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
