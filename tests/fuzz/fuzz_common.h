/* Helpers shared by the libFuzzer targets: a per-process scratch folder (in /dev/shm when
 * it exists), writing fuzz bytes to files there (plain or gzip-compressed), and splitting one
 * input into several named files for the readers that take a folder. */
#ifndef QT_FUZZ_COMMON_H
#define QT_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

static char fz_dir[256];

static inline void fz_cleanup(void)
{
    if (fz_dir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", fz_dir);
        if (system(cmd) != 0) fprintf(stderr, "fuzz: could not remove %s\n", fz_dir);
    }
}

/* The scratch folder, created on first use and removed at exit. */
static inline const char *fz_tmpdir(void)
{
    if (fz_dir[0]) return fz_dir;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fz_dir, sizeof fz_dir, "%s/qtune-fuzz-%d-XXXXXX", base, (int)getpid());
    if (!mkdtemp(fz_dir)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(fz_cleanup);
    return fz_dir;
}

/* Writes data to dir/name, gzip-compressed when gz; aborts on I/O failure (the harness,
 * not the code under test, is broken then). */
static inline void fz_write(const char *dir, const char *name, const uint8_t *data, size_t len,
                            int gz)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t *z = NULL;
    if (gz) {
        /* A gzip stream with a small window and little memory: fast to set up per input. */
        z_stream s;
        memset(&s, 0, sizeof s);
        if (deflateInit2(&s, 1, Z_DEFLATED, 16 + 9, 1, Z_DEFAULT_STRATEGY) != Z_OK) abort();
        uLong cap = deflateBound(&s, (uLong)len);
        if (!(z = malloc(cap))) abort();
        s.next_in = (Bytef *)data;
        s.avail_in = (uInt)len;
        s.next_out = z;
        s.avail_out = (uInt)cap;
        if (deflate(&s, Z_FINISH) != Z_STREAM_END) abort();
        len = s.total_out;
        data = z;
        deflateEnd(&s);
    }
    FILE *f = fopen(path, "wb");
    int bad = !f || (len && fwrite(data, 1, len, f) != len);
    if (f && fclose(f) != 0) bad = 1;
    free(z);
    if (bad) {
        fprintf(stderr, "fuzz: cannot write %s\n", path);
        abort();
    }
}

static inline void fz_remove(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unlink(path);
}

/* A folder input: byte 0 holds flags for the target; then up to FZ_MAX_FILES records
 * [selector u8][length u16 little-endian][bytes]. The selector's low 7 bits pick a name from
 * the target's table (modulo its size), bit 7 asks for gzip compression (the name gets
 * ".gz"); a length past the end takes what is left. Later records replace earlier ones. */
#define FZ_MAX_FILES 8

struct fz_file {
    char name[96];
    const uint8_t *data;
    size_t len;
    int gz;
};

/* Writes the records of data[1..size) into dir, returns how many files were written
 * (their names in files[] so that fz_folder_clear removes them). */
static inline int fz_folder_write(const char *dir, const uint8_t *data, size_t size,
                                  const char *const *names, int nnames, int allow_gz,
                                  struct fz_file *files)
{
    size_t pos = 1;
    int n = 0;
    while (pos + 3 <= size && n < FZ_MAX_FILES) {
        int sel = data[pos];
        size_t len = data[pos + 1] | (size_t)data[pos + 2] << 8;
        pos += 3;
        if (len > size - pos) len = size - pos;
        struct fz_file *f = &files[n++];
        f->gz = allow_gz && (sel & 0x80);
        snprintf(f->name, sizeof f->name, "%s%s", names[(sel & 0x7f) % nnames], f->gz ? ".gz" : "");
        f->data = data + pos;
        f->len = len;
        pos += len;
    }
    for (int i = 0; i < n; i++)
        fz_write(dir, files[i].name, files[i].data, files[i].len, files[i].gz);
    return n;
}

static inline void fz_folder_clear(const char *dir, const struct fz_file *files, int n)
{
    for (int i = 0; i < n; i++)
        fz_remove(dir, files[i].name);
}

#endif
