/* Atomic file writes: a temporary file beside the target, written in full and fsynced, renamed
 * over the target, then the folder fsynced so the rename itself survives a crash. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Writes all of data to fd, retrying short writes and interrupted calls; 0 or an errno. */
static int write_all(int fd, const unsigned char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, data, len > (1u << 30) ? (1u << 30) : len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (w == 0) return EIO;
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* fsync of the folder holding path; 0 or an errno. Filesystems that cannot sync a folder
 * answer EINVAL, which is not an error: there is nothing more to do on them. */
static int sync_parent(const char *path)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int err = fsync(fd) == 0 || errno == EINVAL ? 0 : errno;
    close(fd);
    return err;
}

int qt_write_file_atomic(const char *path, const void *data, size_t len, struct qt_error *e)
{
    char tmp[4200];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return qt_err(e, "cannot write '%s': path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return qt_err(e, "cannot write '%s': %s", path, strerror(errno));
    const char *stage = "writing";
    int err = write_all(fd, data, len);
    if (!err && fsync(fd) != 0) {
        err = errno;
        stage = "syncing";
    }
    if (close(fd) != 0 && !err) {
        err = errno;
        stage = "closing";
    }
    if (!err && rename(tmp, path) != 0) {
        err = errno;
        stage = "renaming";
    }
    if (err) {
        unlink(tmp);
        return qt_err(e, "cannot write '%s' (%s %zu bytes): %s; the file was left as it was", path,
                      stage, len, strerror(err));
    }
    if ((err = sync_parent(path)) != 0)
        return qt_err(e, "wrote '%s' but cannot sync its folder: %s", path, strerror(err));
    return 0;
}
