/* Labels files: which class each image of a folder without class sub-folders belongs to
 * (ImageNet's flat val/ folder). Text lines "FILE LABEL" (whitespace or a comma between), LABEL
 * a class name or a 0-based index into the sorted class names; or Kaggle's
 * LOC_val_solution.csv (header ImageId,PredictionString; the class is the prediction string's
 * first word). FILE may omit its extension: images are matched by their names without it. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The names a labels file is looked for under in the dataset's root folder, in this order. */
static const char *const label_files[] = {"val_labels.txt", "val.txt", "LOC_val_solution.csv",
                                          "test_labels.txt"};

int qt_labels_find(char *out, size_t cap, const char *root)
{
    for (size_t i = 0; i < sizeof label_files / sizeof label_files[0]; i++)
        if (qt_data_join(out, cap, root, label_files[i], NULL) == 0 && qt_data_is_file(out))
            return 0;
    return -1;
}

const char *qt_labels_names(void)
{
    return "val_labels.txt, val.txt, LOC_val_solution.csv or test_labels.txt";
}

/* The name without its extension (the last '.' and what follows), into out. */
static void stem_of(char *out, size_t cap, const char *name, size_t len)
{
    size_t n = len;
    for (size_t i = len; i > 0; i--)
        if (name[i - 1] == '.') {
            n = i - 1;
            break;
        }
    if (n == 0) n = len; /* ".jpg" alone: keep it */
    if (n >= cap) n = cap - 1;
    memcpy(out, name, n);
    out[n] = 0;
}

struct entry {
    char *key;
    int label, line;
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->key, ((const struct entry *)b)->key);
}

static int cmp_name(const void *key, const void *elem)
{
    return strcmp((const char *)key, *(char *const *)elem);
}

/* The class of a label word: a name among classes (sorted), or a 0-based index. */
static int class_of(const char *w, char *const *classes, int nclasses)
{
    char *const *hit = bsearch(w, classes, (size_t)nclasses, sizeof *classes, cmp_name);
    if (hit) return (int)(hit - classes);
    if (!*w) return -1;
    for (const char *p = w; *p; p++)
        if (!isdigit((unsigned char)*p)) return -1;
    const long v = strtol(w, NULL, 10);
    return v >= 0 && v < nclasses ? (int)v : -1;
}

void qt_labels_free(struct qt_labels *L)
{
    struct entry *v = L->entries;
    for (int i = 0; i < L->n; i++) free(v[i].key);
    free(v);
    memset(L, 0, sizeof *L);
}

int qt_labels_is_name(const char *name)
{
    for (size_t i = 0; i < sizeof label_files / sizeof label_files[0]; i++)
        if (!strcmp(name, label_files[i])) return (int)i;
    return -1;
}

int qt_labels_load(struct qt_labels *L, const char *path, char *const *classes, int nclasses,
                   struct qt_error *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    memset(L, 0, sizeof *L);
    if (qt_data_read_file(path, &buf, &len, e) < 0) return -1;
    const int rc = qt_labels_parse(L, path, buf, len, classes, nclasses, e);
    free(buf);
    return rc;
}

int qt_labels_parse(struct qt_labels *L, const char *path, const uint8_t *buf, size_t len,
                    char *const *classes, int nclasses, struct qt_error *e)
{
    memset(L, 0, sizeof *L);
    snprintf(L->path, sizeof L->path, "%s", path);
    struct entry *v = NULL;
    int n = 0, cap = 0, rc = 0, line = 0;
    size_t pos = 0;
    while (pos < len && rc == 0) {
        size_t end = pos;
        while (end < len && buf[end] != '\n') end++;
        const char *s = (const char *)buf + pos;
        size_t l = end - pos;
        pos = end + 1;
        line++;
        while (l && (s[l - 1] == '\r' || s[l - 1] == ' ' || s[l - 1] == '\t')) l--;
        while (l && (*s == ' ' || *s == '\t')) {
            s++;
            l--;
        }
        if (!l) continue;
        if (line == 1 && l >= 7 && !strncmp(s, "ImageId", 7)) continue; /* Kaggle's header */
        /* two words: FILE, then LABEL (the first word after the separator) */
        size_t a = 0;
        while (a < l && s[a] != ' ' && s[a] != '\t' && s[a] != ',') a++;
        size_t b = a;
        while (b < l && (s[b] == ' ' || s[b] == '\t' || s[b] == ',')) b++;
        size_t c = b;
        while (c < l && s[c] != ' ' && s[c] != '\t' && s[c] != ',') c++;
        char word[256], key[QT_DATA_PATH_MAX];
        if (a == 0 || c == b || c - b >= sizeof word) {
            rc = qt_err(e, "%s: line %d: expected a file name and a label", path, line);
            break;
        }
        memcpy(word, s + b, c - b);
        word[c - b] = 0;
        const int label = class_of(word, classes, nclasses);
        if (label < 0) {
            rc = qt_err(e, "%s: line %d: label '%s' is neither one of the %d class names nor "
                           "an index below %d", path, line, word, nclasses, nclasses);
            break;
        }
        /* the file's own name, without folders and extension */
        size_t f0 = a;
        while (f0 > 0 && s[f0 - 1] != '/') f0--;
        stem_of(key, sizeof key, s + f0, a - f0);
        if (n == cap) {
            const int ncap = cap ? 2 * cap : 1024;
            struct entry *nv = realloc(v, sizeof *nv * (size_t)ncap);
            if (!nv) {
                rc = qt_err(e, "%s: out of memory", path);
                break;
            }
            v = nv;
            cap = ncap;
        }
        if (!(v[n].key = strdup(key))) {
            rc = qt_err(e, "%s: out of memory", path);
            break;
        }
        v[n].label = label;
        v[n].line = line;
        n++;
    }
    L->entries = v;
    L->n = n;
    if (rc == 0 && n == 0) rc = qt_err(e, "%s: no labels in the file", path);
    if (rc == 0) {
        qsort(v, (size_t)n, sizeof *v, cmp_entry);
        for (int i = 1; i < n && rc == 0; i++)
            if (!strcmp(v[i - 1].key, v[i].key))
                rc = qt_err(e, "%s: '%s' is labelled twice (lines %d and %d)", path, v[i].key,
                            v[i - 1].line < v[i].line ? v[i - 1].line : v[i].line,
                            v[i - 1].line < v[i].line ? v[i].line : v[i - 1].line);
    }
    if (rc) qt_labels_free(L);
    return rc;
}

int qt_labels_get(const struct qt_labels *L, const char *name)
{
    char key[QT_DATA_PATH_MAX];
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    stem_of(key, sizeof key, base, strlen(base));
    const struct entry k = {key, 0, 0};
    const struct entry *hit = bsearch(&k, L->entries, (size_t)L->n, sizeof k, cmp_entry);
    return hit ? hit->label : -1;
}
