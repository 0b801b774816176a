/*
 * file.c — whole-file reads with a size cap, crash-safe replacement of a
 * file (write a temporary, fsync, rename, fsync the directory) and the same
 * without the fsyncs for files that can be made again, mkdir -p,
 * and the two clocks.
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/esim.h"

static esim_err private_mode_ok(const char *path, const struct stat *st, esim_error *err)
{
    if (!S_ISREG(st->st_mode))
        return esim_fail(err, ESIM_EAUTH,
                         "%s is not a regular file; a key, token or secret must be "
                         "one",
                         path);
    if (st->st_mode & (S_IRGRP | S_IWGRP | S_IROTH | S_IWOTH))
        return esim_fail(err, ESIM_EAUTH,
                         "%s holds a key, token or secret but other users may read or write it "
                         "(mode %04o); run: chmod 600 %s",
                         path, (unsigned)(st->st_mode & 07777), path);
    return ESIM_OK;
}

esim_err esim_check_private_file(const char *path, esim_error *err)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return esim_fail(err, errno == ENOENT ? ESIM_ENOTFOUND : ESIM_EIO, "cannot open %s: %s",
                         path, strerror(errno));
    return private_mode_ok(path, &st, err);
}

static esim_err read_fd(int fd, const char *path, size_t max_len, esim_buf *out, esim_error *err);

static esim_err read_path(const char *path, bool private_only, size_t max_len, esim_buf *out,
                          esim_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return esim_fail(err, errno == ENOENT ? ESIM_ENOTFOUND : ESIM_EIO, "cannot open %s: %s",
                         path, strerror(errno));
    if (private_only) {
        struct stat st;
        esim_err rc = fstat(fd, &st) != 0
                          ? esim_fail(err, ESIM_EIO, "cannot examine %s: %s", path, strerror(errno))
                          : private_mode_ok(path, &st, err);
        if (rc != ESIM_OK) {
            close(fd);
            return rc;
        }
    }
    return read_fd(fd, path, max_len, out, err);
}

esim_err esim_make_private_db(const char *path, esim_error *err)
{
    if (!path || !*path || strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0)
        return ESIM_OK;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return esim_fail(err, ESIM_EIO, "cannot create %s: %s", path, strerror(errno));
    close(fd);
    static const char *const companions[] = {"", "-wal", "-shm", "-journal"};
    for (size_t k = 0; k < sizeof companions / sizeof companions[0]; k++) {
        char p[4096];
        if (snprintf(p, sizeof p, "%s%s", path, companions[k]) >= (int)sizeof p)
            continue;
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode) || !(st.st_mode & 077))
            continue;
        if (chmod(p, st.st_mode & 0700) != 0)
            fprintf(stderr,
                    "esim-mdm: warning: %s holds push tokens and PushMagic but other users may "
                    "read it (mode %04o) and it cannot be changed (%s); run: chmod 600 %s\n",
                    p, (unsigned)(st.st_mode & 07777), strerror(errno), p);
    }
    return ESIM_OK;
}

esim_err esim_token_parse(const void *data, size_t len, char **out, esim_error *err)
{
    const char *s = data ? data : "";
    const char *end = memchr(s, '\n', len);
    size_t n = end ? (size_t)(end - s) : len;
    if (n && s[n - 1] == '\r')
        n--;
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0)
        return esim_fail(err, ESIM_EINVAL, "the first line is empty");
    if (n > ESIM_TOKEN_MAX)
        return esim_fail(err, ESIM_EINVAL, "the token is %zu bytes, over the %d allowed", n,
                         ESIM_TOKEN_MAX);
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] < 0x20 || s[k] == 0x7F)
            return esim_fail(err, ESIM_EINVAL,
                             "the token holds a control character (byte %zu of its line)", k);
    char *copy = strndup(s, n);
    if (!copy)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    *out = copy;
    return ESIM_OK;
}

esim_err esim_read_token_file(const char *path, char **out, esim_error *err)
{
    esim_buf b = {0};
    esim_err rc = esim_read_private_file(path, 4 * ESIM_TOKEN_MAX, &b, err);
    if (rc == ESIM_OK) {
        esim_error why = {{0}};
        rc = esim_token_parse(b.data, b.len, out, &why);
        if (rc != ESIM_OK)
            esim_fail(err, rc, "%s: %s", path, why.msg);
    }
    esim_buf_free(&b);
    return rc;
}

esim_err esim_read_file(const char *path, size_t max_len, esim_buf *out, esim_error *err)
{
    return read_path(path, false, max_len, out, err);
}

esim_err esim_read_private_file(const char *path, size_t max_len, esim_buf *out, esim_error *err)
{
    return read_path(path, true, max_len, out, err);
}

/* Reads |fd| to its end and closes it. */
static esim_err read_fd(int fd, const char *path, size_t max_len, esim_buf *out, esim_error *err)
{
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

static esim_err write_replace(const char *path, const void *data, size_t len, unsigned mode,
                              bool sync, esim_error *err)
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
    if ((sync && fsync(fd) != 0) || close(fd) != 0) {
        esim_fail(err, ESIM_EIO, "cannot sync %s: %s", tmp, strerror(errno));
        unlink(tmp);
        return ESIM_EIO;
    }
    if (rename(tmp, path) != 0) {
        esim_fail(err, ESIM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return ESIM_EIO;
    }
    return sync ? fsync_dir_of(path, err) : ESIM_OK;
}

esim_err esim_write_file_atomic(const char *path, const void *data, size_t len, unsigned mode,
                                esim_error *err)
{
    return write_replace(path, data, len, mode, true, err);
}

esim_err esim_write_file_replace(const char *path, const void *data, size_t len, unsigned mode,
                                 esim_error *err)
{
    return write_replace(path, data, len, mode, false, err);
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
