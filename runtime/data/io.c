/* File helpers for the dataset readers: path joining, file and folder tests, whole-file reads
 * (plain or gzip through zlib), sorted folder listings and small text utilities. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "internal.h"

int qt_data_join(char *out, size_t cap, const char *a, const char *b, struct qt_error *e)
{
    size_t la = strlen(a);
    const char *sep = (la > 0 && a[la - 1] != '/') ? "/" : "";
    int n = snprintf(out, cap, "%s%s%s", a, sep, b);
    if (n < 0 || (size_t)n >= cap) return qt_err(e, "path too long: %s%s%s", a, sep, b);
    return 0;
}

int qt_data_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int qt_data_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

long long qt_data_file_size(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    return (long long)st.st_size;
}

int qt_data_gz_read(gzFile gz, const char *path, void *buf, size_t n, size_t *got,
                    struct qt_error *e)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        size_t want = n - done;
        if (want > (1u << 30)) want = 1u << 30;
        int r = gzread(gz, p + done, (unsigned)want);
        if (r < 0) {
            int errnum = 0;
            const char *msg = gzerror(gz, &errnum);
            if (errnum == Z_ERRNO) return qt_err(e, "%s: read error: %s", path, strerror(errno));
            return qt_err(e, "%s: corrupt compressed data: %s", path, msg ? msg : "unknown");
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    if (done < n) {
        /* A short read is the end of the data; anything but a plain end of file or a
         * truncated gzip stream (reported by the caller as truncation) is an error. */
        int errnum = 0;
        const char *msg = gzerror(gz, &errnum);
        if (errnum != Z_OK && errnum != Z_BUF_ERROR) {
            if (errnum == Z_ERRNO) return qt_err(e, "%s: read error: %s", path, strerror(errno));
            return qt_err(e, "%s: corrupt compressed data: %s", path, msg ? msg : "unknown");
        }
    }
    return 0;
}

/* Reads a file as it is stored: 1 when it starts with the gzip signature (nothing is
 * returned then), 0 with the bytes in *buf, -1 on error. */
static int read_plain(const char *path, uint8_t **buf, size_t *len, struct qt_error *e)
{
    FILE *f = fopen(path, "rb");
    if (!f) return qt_err(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qt_err(e, "%s: not a readable file", path);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *b = malloc(size ? size : 1);
    if (!b) {
        fclose(f);
        return qt_err(e, "%s: out of memory reading %zu bytes", path, size);
    }
    size_t got = fread(b, 1, size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != size) {
        free(b);
        return qt_err(e, "%s: read error (%zu of %zu bytes)", path, got, size);
    }
    if (size >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
        free(b);
        return 1;
    }
    *buf = b;
    *len = size;
    return 0;
}

int qt_data_read_file(const char *path, uint8_t **buf, size_t *len, struct qt_error *e)
{
    *buf = NULL;
    *len = 0;
    int rc = read_plain(path, buf, len, e);
    if (rc <= 0) return rc;
    long long fsize = qt_data_file_size(path);
    if (fsize < 0) return qt_err(e, "%s: not a readable file", path);
    gzFile gz = gzopen(path, "rb");
    if (!gz) return qt_err(e, "%s: cannot open: %s", path, strerror(errno));
    gzbuffer(gz, 1 << 18);
    size_t cap = (size_t)fsize + 1, n = 0;
    uint8_t *b = malloc(cap);
    if (!b) {
        gzclose(gz);
        return qt_err(e, "%s: out of memory reading %lld bytes", path, fsize);
    }
    for (;;) {
        if (n == cap) {
            size_t ncap = cap * 2;
            uint8_t *nb = realloc(b, ncap);
            if (!nb) {
                free(b);
                gzclose(gz);
                return qt_err(e, "%s: out of memory", path);
            }
            b = nb;
            cap = ncap;
        }
        size_t got = 0;
        if (qt_data_gz_read(gz, path, b + n, cap - n, &got, e) < 0) {
            free(b);
            gzclose(gz);
            return -1;
        }
        n += got;
        if (got == 0 || n < cap) break;
    }
    int errnum = 0;
    gzerror(gz, &errnum);
    gzclose(gz);
    if (errnum == Z_BUF_ERROR) {
        free(b);
        return qt_err(e, "%s: truncated gzip file (unexpected end of the compressed data)", path);
    }
    *buf = b;
    *len = n;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void qt_data_free_names(char **names, int n)
{
    if (!names) return;
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

int qt_data_list_dir(const char *path, int dirs_only, char ***names, int *n, struct qt_error *e)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(path);
    if (!d) return qt_err(e, "%s: cannot open folder: %s", path, strerror(errno));
    char **v = NULL;
    int cnt = 0, cap = 0;
    struct dirent *de;
    char full[QT_DATA_PATH_MAX];
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (dirs_only) {
            int isdir;
            if (de->d_type == DT_DIR)
                isdir = 1;
            else if (de->d_type == DT_UNKNOWN || de->d_type == DT_LNK) {
                if (qt_data_join(full, sizeof full, path, de->d_name, e) < 0) goto fail;
                isdir = qt_data_is_dir(full);
            } else
                isdir = 0;
            if (!isdir) continue;
        }
        if (cnt == cap) {
            int ncap = cap ? 2 * cap : 64;
            char **nv = realloc(v, sizeof *v * ncap);
            if (!nv) {
                qt_err(e, "%s: out of memory listing the folder", path);
                goto fail;
            }
            v = nv;
            cap = ncap;
        }
        v[cnt] = strdup(de->d_name);
        if (!v[cnt]) {
            qt_err(e, "%s: out of memory listing the folder", path);
            goto fail;
        }
        cnt++;
    }
    closedir(d);
    if (cnt > 1) qsort(v, cnt, sizeof *v, cmp_str);
    *names = v;
    *n = cnt;
    return 0;
fail:
    closedir(d);
    qt_data_free_names(v, cnt);
    return -1;
}

int qt_data_is_image_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png");
}

int qt_data_split_lines(const char *text, size_t len, char ***lines)
{
    char **v = NULL;
    int n = 0, cap = 0;
    size_t i = 0;
    *lines = NULL;
    while (i < len) {
        size_t s = i;
        while (i < len && text[i] != '\n') i++;
        size_t t = i;
        if (i < len) i++;
        while (s < t && isspace((unsigned char)text[s])) s++;
        while (t > s && isspace((unsigned char)text[t - 1])) t--;
        if (t == s) continue;
        if (n == cap) {
            int ncap = cap ? 2 * cap : 16;
            char **nv = realloc(v, sizeof *v * ncap);
            if (!nv) goto fail;
            v = nv;
            cap = ncap;
        }
        v[n] = malloc(t - s + 1);
        if (!v[n]) goto fail;
        memcpy(v[n], text + s, t - s);
        v[n][t - s] = 0;
        n++;
    }
    *lines = v;
    return n;
fail:
    qt_data_free_names(v, n);
    return -1;
}
