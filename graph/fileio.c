/* Atomic file writes: temporary file, fsync, rename. */
#include "fileio.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int qt_write_file_atomic(const char *path, const void *data, size_t len, struct qt_error *e)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return qt_err(e, "cannot write '%s': %s", path, strerror(errno));
    int ok = fwrite(data, 1, len, f) == len;
    ok &= fflush(f) == 0;
    ok &= fsync(fileno(f)) == 0;
    int err = errno;
    ok &= fclose(f) == 0;
    if (ok && rename(tmp, path) == 0) return 0;
    if (!err) err = errno;
    unlink(tmp);
    return qt_err(e, "cannot write '%s': %s", path, strerror(err ? err : EIO));
}
