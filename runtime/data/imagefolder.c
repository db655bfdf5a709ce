/* Image-folder readers: a tree train/<class>/... and test/<class>/... of JPEG/PNG files, as a
 * folder or inside a tar/tar.gz archive (read in one pass, which also serves CIFAR binary
 * archives). Class ids follow the sorted union of both splits' class names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_DEPTH 32
#define MAX_COMPONENTS 64
#define MAX_ENTRY_BYTES ((uint64_t)1 << 30)

static const char *const split_names[2] = {"train", "test"};

/* 0 for train, 1 for test; ImageNet's val/ is the test split of a tree without test/. */
static int split_index(const char *s)
{
    return !strcmp(s, "train") ? 0 : !strcmp(s, "test") || !strcmp(s, "val") ? 1 : -1;
}

/* The folder of split i under dir: train/, or test/ (val/ where there is no test/). */
static int split_dir(char *out, size_t cap, const char *dir, int i, struct qt_error *e)
{
    if (qt_data_join(out, cap, dir, split_names[i], e) < 0) return -1;
    if (i == 1 && !qt_data_is_dir(out)) {
        char val[QT_DATA_PATH_MAX];
        if (qt_data_join(val, sizeof val, dir, "val", NULL) == 0 && qt_data_is_dir(val))
            snprintf(out, cap, "%s", val);
    }
    return 0;
}

/* ---- class table ---- */

struct classes {
    char **names;
    int n, cap, last;
    int *seen;  /* class folder present in the requested split */
    int *count; /* images of the requested split */
};

static void classes_free(struct classes *t)
{
    qt_data_free_names(t->names, t->n);
    free(t->seen);
    free(t->count);
    memset(t, 0, sizeof *t);
}

static int classes_get(struct classes *t, const char *name, struct qt_error *e)
{
    if (t->last < t->n && !strcmp(t->names[t->last], name)) return t->last;
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->names[i], name)) return t->last = i;
    if (t->n == t->cap) {
        int ncap = t->cap ? 2 * t->cap : 64;
        char **nn = realloc(t->names, sizeof *nn * ncap);
        if (nn) t->names = nn;
        int *ns = realloc(t->seen, sizeof *ns * ncap);
        if (ns) t->seen = ns;
        int *nc = realloc(t->count, sizeof *nc * ncap);
        if (nc) t->count = nc;
        if (!nn || !ns || !nc) return qt_err(e, "out of memory");
        t->cap = ncap;
    }
    t->names[t->n] = strdup(name);
    if (!t->names[t->n]) return qt_err(e, "out of memory");
    t->seen[t->n] = t->count[t->n] = 0;
    return t->last = t->n++;
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Sorts the class names; rank[old id] receives the new id. */
static int classes_sort(struct classes *t, int *rank, struct qt_error *e)
{
    char ***ptrs = malloc(sizeof *ptrs * (t->n ? t->n : 1));
    char **sorted = malloc(sizeof *sorted * (t->n ? t->n : 1));
    if (!ptrs || !sorted) {
        free(ptrs);
        free(sorted);
        return qt_err(e, "out of memory");
    }
    for (int i = 0; i < t->n; i++) ptrs[i] = &t->names[i];
    qsort(ptrs, t->n, sizeof *ptrs, cmp_name_ptr);
    for (int i = 0; i < t->n; i++) {
        int old = (int)(ptrs[i] - t->names);
        rank[old] = i;
        sorted[i] = t->names[old];
    }
    free(t->names);
    free(ptrs);
    t->names = sorted;
    t->cap = t->n;
    return 0;
}

/* Moves the decoded images and the class names into ds. */
static int finish_dataset(struct qt_dataset *ds, struct qt_imgset *s, char **names, int nnames,
                          const char *where, const char *split, struct qt_error *e)
{
    if (qt_imgset_flush(s, e) < 0) return -1;
    if (s->n == 0) return qt_err(e, "%s: no images in the %s split", where, split);
    ds->n = s->n;
    if (s->crop > 0) { /* a stream: RGB, crop x crop */
        if (!(ds->stream = qt_stream_new(s->store, NULL, s->n, s->resize, s->crop)))
            return qt_err(e, "out of memory");
        ds->c = 3;
        ds->h = ds->w = s->crop;
    } else {
        ds->c = s->c;
        ds->h = s->h;
        ds->w = s->w;
        size_t bytes = (size_t)s->n * s->c * s->h * s->w;
        uint8_t *px = realloc(s->pixels, bytes);
        ds->pixels = px ? px : s->pixels;
    }
    ds->labels = s->labels;
    ds->sample_names = s->names;
    s->pixels = NULL;
    s->labels = NULL;
    s->names = NULL;
    ds->class_names = names;
    ds->nclasses = nnames;
    snprintf(ds->kind, sizeof ds->kind, "%s", "imagefolder");
    return 0;
}

/* ---- folder tree ---- */

int qt_data_imagefolder_detect(const char *dir)
{
    char p[QT_DATA_PATH_MAX];
    for (int i = 0; i < 2; i++)
        if (split_dir(p, sizeof p, dir, i, NULL) == 0 && qt_data_is_dir(p)) return 1;
    return 0;
}

/* Adds the image file at path with its label (its bytes now, or, for a stream, when a batch
 * needs them). */
static int add_file(struct qt_imgset *s, const char *path, int label, struct qt_error *e)
{
    uint8_t *data = NULL;
    size_t len = 0;
    if (s->crop <= 0 && qt_data_read_file(path, &data, &len, e) < 0) return -1;
    char *name = strdup(path);
    if (!name) {
        free(data);
        return qt_err(e, "out of memory");
    }
    return qt_imgset_add(s, name, data, len, label, e);
}

/* Adds every image under dir (sorted, recursing into sub-folders); *count is increased. */
static int walk(struct qt_imgset *s, const char *dir, int label, int depth, int *count,
                struct qt_error *e)
{
    if (depth > MAX_DEPTH) return qt_err(e, "%s: folders nested too deeply", dir);
    char **names;
    int n;
    if (qt_data_list_dir(dir, 0, &names, &n, e) < 0) return -1;
    int rc = 0;
    char path[QT_DATA_PATH_MAX];
    for (int i = 0; i < n && rc == 0; i++) {
        if (qt_data_join(path, sizeof path, dir, names[i], e) < 0) {
            rc = -1;
            break;
        }
        if (qt_data_is_dir(path)) {
            rc = walk(s, path, label, depth + 1, count, e);
            continue;
        }
        if (!qt_data_is_image_name(names[i])) continue;
        rc = add_file(s, path, label, e);
        (*count)++;
    }
    qt_data_free_names(names, n);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A test split folder sp holding its images directly: each one's class from the labels file
 * in the dataset's root (classes: the train split's class folders, sorted). */
static int flat_split(struct qt_imgset *s, const char *sp, const char *root, char **classes,
                      int nclasses, struct qt_error *e)
{
    char lp[QT_DATA_PATH_MAX], path[QT_DATA_PATH_MAX];
    if (nclasses == 0)
        return qt_err(e, "%s: no class folders in train/ to name the classes of %s's images", root,
                      sp);
    if (qt_labels_find(lp, sizeof lp, root) < 0)
        return qt_err(e, "%s: no class folders, and no labels file in %s (%s)", sp, root,
                      qt_labels_names());
    struct qt_labels L;
    if (qt_labels_load(&L, lp, classes, nclasses, e) < 0) return -1;
    char **names;
    int n, rc = 0, count = 0;
    if (qt_data_list_dir(sp, 0, &names, &n, e) < 0) {
        qt_labels_free(&L);
        return -1;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        if (!qt_data_is_image_name(names[i])) continue;
        if (qt_data_join(path, sizeof path, sp, names[i], e) < 0) {
            rc = -1;
            break;
        }
        if (qt_data_is_dir(path)) continue;
        const int label = qt_labels_get(&L, names[i]);
        if (label < 0) {
            rc = qt_err(e, "%s: image '%s' has no line in %s", sp, names[i], lp);
            break;
        }
        rc = add_file(s, path, label, e);
        count++;
    }
    if (rc == 0 && count == 0)
        rc = qt_err(e, "%s: no class folders and no images (.jpg, .jpeg or .png)", sp);
    qt_data_free_names(names, n);
    qt_labels_free(&L);
    return rc;
}

int qt_data_imagefolder_load_dir(struct qt_dataset *ds, const char *dir, const char *split,
                                 int resize, int crop, struct qt_error *e)
{
    int want = split_index(split);
    char sp[QT_DATA_PATH_MAX], p[QT_DATA_PATH_MAX];
    if (split_dir(sp, sizeof sp, dir, want, e) < 0) return -1;
    if (!qt_data_is_dir(sp))
        return qt_err(e, "%s: image-folder tree has no %s/ folder", dir,
                      want == 1 ? "test/ (or val/)" : "train/");

    /* Union of both splits' class folders, sorted and unique. */
    char **lists[2] = {NULL, NULL};
    int counts[2] = {0, 0};
    char **all = NULL, **mine = NULL;
    int nall = 0, nmine = 0, rc = 0;
    struct qt_imgset s;
    memset(&s, 0, sizeof s);
    s.resize = resize;
    s.crop = crop;
    for (int i = 0; i < 2 && rc == 0; i++) {
        if (split_dir(p, sizeof p, dir, i, e) < 0)
            rc = -1;
        else if (qt_data_is_dir(p))
            rc = qt_data_list_dir(p, 1, &lists[i], &counts[i], e);
    }
    if (rc < 0) goto done;
    all = malloc(sizeof *all * (size_t)(counts[0] + counts[1] + 1));
    if (!all) {
        rc = qt_err(e, "out of memory");
        goto done;
    }
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < counts[i]; k++) all[nall++] = lists[i][k];
    qsort(all, nall, sizeof *all, cmp_str);
    {
        int u = 0;
        for (int k = 0; k < nall; k++)
            if (u == 0 || strcmp(all[u - 1], all[k])) all[u++] = all[k];
        nall = u;
    }
    /* Own copies of the names: the lists are freed below. */
    for (int k = 0; k < nall; k++) {
        char *c = strdup(all[k]);
        if (!c) {
            for (int j = 0; j < k; j++) free(all[j]);
            nall = 0;
            rc = qt_err(e, "out of memory");
            goto done;
        }
        all[k] = c;
    }
    mine = lists[want];
    nmine = counts[want];
    if (nmine == 0 && want == 1) {
        /* ImageNet's flat val/: the images themselves, classed by a labels file */
        rc = flat_split(&s, sp, dir, all, nall, e);
        if (rc == 0) rc = finish_dataset(ds, &s, all, nall, dir, split, e);
        if (rc == 0) {
            all = NULL;
            nall = 0;
        }
        goto done;
    }
    if (nmine == 0) {
        rc = qt_err(e, "%s: no class folders in the %s split", sp, split);
        goto done;
    }
    for (int k = 0; k < nmine && rc == 0; k++) {
        char **hit = bsearch(&mine[k], all, nall, sizeof *all, cmp_str);
        int label = (int)(hit - all), count = 0;
        if (qt_data_join(p, sizeof p, sp, mine[k], e) < 0) {
            rc = -1;
            break;
        }
        rc = walk(&s, p, label, 0, &count, e);
        if (rc == 0 && count == 0)
            rc = qt_err(e, "%s: empty class folder (no .jpg, .jpeg or .png files)", p);
    }
    if (rc == 0) rc = finish_dataset(ds, &s, all, nall, dir, split, e);
    if (rc == 0) {
        all = NULL;
        nall = 0;
    }
done:
    qt_imgset_free(&s);
    qt_data_free_names(all, nall);
    qt_data_free_names(lists[0], counts[0]);
    qt_data_free_names(lists[1], counts[1]);
    return rc;
}

/* ---- archives ---- */

/* Splits an entry name into components, dropping empty and "." parts; -1 if too deep. */
static int split_path(char *buf, char **comp)
{
    int k = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (!strcmp(t, ".")) continue;
        if (k == MAX_COMPONENTS) return -1;
        comp[k++] = t;
    }
    return k;
}

struct archive {
    struct qt_tar tar;
    const char *path;
    int want; /* requested split: 0 train, 1 test */
    int mode; /* 0 unknown, 1 image folder, 10 CIFAR-10, 100 CIFAR-100 */
    int off;  /* components before the split folder: 0, 1 or -1 (not known yet) */
    struct classes cls;
    struct qt_imgset imgs;
    struct qt_data_blob blobs[6];
    uint8_t *names;
    size_t names_len;
    /* ImageNet's flat val/: images directly in the test split's folder, classed by a labels
     * file beside the split folders (at depth 1 or 2, the preferred name of each kept) */
    int flat;
    struct qt_data_blob labels[2];
    int labels_rank[2];
};

static int read_entry(struct archive *a, const struct qt_tar_entry *ent, uint8_t **data,
                      struct qt_error *e)
{
    if (ent->size > MAX_ENTRY_BYTES)
        return qt_err(e, "%s: entry %s is too large (%llu bytes)", a->path, ent->name,
                      (unsigned long long)ent->size);
    *data = malloc(ent->size ? (size_t)ent->size : 1);
    if (!*data) return qt_err(e, "%s: out of memory reading %s", a->path, ent->name);
    if (qt_tar_read(&a->tar, *data, (size_t)ent->size, e) < 0) {
        free(*data);
        *data = NULL;
        return -1;
    }
    return 0;
}

static char *entry_label(const char *archive, const char *entry)
{
    size_t n = strlen(archive) + strlen(entry) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s:%s", archive, entry);
    return s;
}

static int take_cifar(struct archive *a, const struct qt_tar_entry *ent, int version, int slot,
                      struct qt_error *e)
{
    int need;
    if (slot < 0)
        need = 1;
    else if (version == 10)
        need = a->want == 0 ? slot < 5 : slot == 5;
    else
        need = slot == a->want;
    if (!need) return 0;
    uint8_t *data;
    if (read_entry(a, ent, &data, e) < 0) return -1;
    if (slot < 0) {
        free(a->names);
        a->names = data;
        a->names_len = (size_t)ent->size;
        return 0;
    }
    struct qt_data_blob *b = &a->blobs[slot];
    if (b->data) {
        free(data);
        return qt_err(e, "%s: holds %s twice", a->path, ent->name);
    }
    b->name = entry_label(a->path, ent->name);
    if (!b->name) {
        free(data);
        return qt_err(e, "out of memory");
    }
    b->data = data;
    b->len = (size_t)ent->size;
    return 0;
}

/* Reads image entry ent into the archive's image set with class id `label`. */
static int add_image_entry(struct archive *a, const struct qt_tar_entry *ent, int label,
                           struct qt_error *e)
{
    uint8_t *data;
    if (read_entry(a, ent, &data, e) < 0) return -1;
    char *name = entry_label(a->path, ent->name);
    if (!name) {
        free(data);
        return qt_err(e, "out of memory");
    }
    return qt_imgset_add(&a->imgs, name, data, (size_t)ent->size, label, e);
}

static int take_image_entry(struct archive *a, const struct qt_tar_entry *ent, char **comp, int k,
                            struct qt_error *e)
{
    int o = a->off;
    if (o < 0) {
        int need0 = ent->type == QT_TAR_DIR ? 2 : 3;
        if (k >= need0 && split_index(comp[0]) >= 0)
            o = 0;
        else if (k >= need0 + 1 && split_index(comp[1]) >= 0)
            o = 1;
        else
            return 0;
    }
    if (k < o + 2 || split_index(comp[o]) < 0) return 0;
    if (ent->type == QT_TAR_FILE && k == o + 2) {
        /* an image directly in the split folder: the test split's flat val/ */
        if (split_index(comp[o]) != a->want || a->want != 1 || comp[o + 1][0] == '.' ||
            !qt_data_is_image_name(comp[o + 1]))
            return 0;
        a->off = o;
        a->mode = 1;
        a->flat++;
        return add_image_entry(a, ent, 0, e); /* labelled from the labels file at the end */
    }
    if (ent->type == QT_TAR_FILE && k < o + 3) return 0;
    for (int i = o + 1; i < k; i++)
        if (comp[i][0] == '.') return 0;
    a->off = o;
    a->mode = 1;
    int sp = split_index(comp[o]);
    int id = classes_get(&a->cls, comp[o + 1], e);
    if (id < 0) return -1;
    if (sp != a->want) return 0;
    a->cls.seen[id] = 1;
    if (ent->type != QT_TAR_FILE || !qt_data_is_image_name(comp[k - 1])) return 0;
    a->cls.count[id]++;
    return add_image_entry(a, ent, id, e);
}

/* A labels file entry (depth k, its name the last component): kept when it is the preferred
 * name at its depth. */
static int take_labels_entry(struct archive *a, const struct qt_tar_entry *ent, const char *name,
                             int k, struct qt_error *e)
{
    const int rank = qt_labels_is_name(name);
    if (ent->type != QT_TAR_FILE || rank < 0 || k < 1 || k > 2) return 0;
    struct qt_data_blob *b = &a->labels[k - 1];
    if (b->data && a->labels_rank[k - 1] <= rank) return 0;
    uint8_t *data;
    if (read_entry(a, ent, &data, e) < 0) return -1;
    free(b->name);
    free(b->data);
    b->name = entry_label(a->path, ent->name);
    b->data = data;
    b->len = (size_t)ent->size;
    a->labels_rank[k - 1] = rank;
    return b->name ? 0 : qt_err(e, "out of memory");
}

/* Flat val/: every image's class from the labels file beside the split folders, against the
 * sorted class names of train/. */
static int label_flat(struct archive *a, char **classes, int nclasses, struct qt_error *e)
{
    const struct qt_data_blob *b = &a->labels[a->off > 0 ? 1 : 0];
    if (nclasses == 0)
        return qt_err(e, "%s: no class folders in train/ to name the classes of val/'s images",
                      a->path);
    if (!b->data)
        return qt_err(e, "%s: val/ holds images directly, and there is no labels file beside "
                         "it (%s)", a->path, qt_labels_names());
    struct qt_labels L;
    if (qt_labels_parse(&L, b->name, b->data, b->len, classes, nclasses, e) < 0) return -1;
    int rc = 0;
    for (int i = 0; i < a->imgs.n && rc == 0; i++) {
        const int label = qt_labels_get(&L, a->imgs.names[i]);
        if (label < 0) rc = qt_err(e, "%s: image '%s' has no line in %s", a->path,
                                   a->imgs.names[i], b->name);
        a->imgs.labels[i] = label;
    }
    qt_labels_free(&L);
    return rc;
}

static int finish_images(struct archive *a, struct qt_dataset *ds, struct qt_error *e)
{
    const char *split = split_names[a->want];
    int any = 0;
    for (int i = 0; i < a->cls.n; i++) {
        if (!a->cls.seen[i]) continue;
        any = 1;
        if (a->cls.count[i] == 0)
            return qt_err(e, "%s: %s/%s/ is an empty class folder (no .jpg, .jpeg or .png files)",
                          a->path, split, a->cls.names[i]);
    }
    if (a->flat && any)
        return qt_err(e, "%s: the %s split holds both class folders and images directly",
                      a->path, split);
    if (!any && !a->flat)
        return qt_err(e, "%s: image-folder archive has no %s/<class>/ folders", a->path, split);
    if (qt_imgset_flush(&a->imgs, e) < 0) return -1;
    int *rank = malloc(sizeof *rank * (size_t)(a->cls.n + 1));
    if (!rank) return qt_err(e, "out of memory");
    if (classes_sort(&a->cls, rank, e) < 0) {
        free(rank);
        return -1;
    }
    if (!a->flat)
        for (int i = 0; i < a->imgs.n; i++) a->imgs.labels[i] = rank[a->imgs.labels[i]];
    free(rank);
    if (a->flat && label_flat(a, a->cls.names, a->cls.n, e) < 0) return -1;
    if (finish_dataset(ds, &a->imgs, a->cls.names, a->cls.n, a->path, split, e) < 0) return -1;
    a->cls.names = NULL;
    a->cls.n = 0;
    return 0;
}

static int finish_cifar(struct archive *a, struct qt_dataset *ds, struct qt_error *e)
{
    int first, count;
    if (a->mode == 10) {
        first = a->want == 0 ? 0 : 5;
        count = a->want == 0 ? 5 : 1;
    } else {
        first = a->want;
        count = 1;
    }
    for (int i = first; i < first + count; i++)
        if (!a->blobs[i].data) {
            char want[32];
            if (a->mode == 10 && i < 5)
                snprintf(want, sizeof want, "data_batch_%d.bin", i + 1);
            else
                snprintf(want, sizeof want, "%s",
                         a->mode == 10 ? "test_batch.bin" : (i == 0 ? "train.bin" : "test.bin"));
            return qt_err(e, "%s: CIFAR-%d archive has no %s for the %s split", a->path, a->mode,
                          want, split_names[a->want]);
        }
    return qt_data_cifar_parse(ds, a->mode, a->blobs + first, count, (const char *)a->names,
                               a->names_len, e);
}

int qt_data_archive_load(struct qt_dataset *ds, const char *path, const char *split,
                         int resize, int crop, struct qt_error *e)
{
    struct archive a;
    memset(&a, 0, sizeof a);
    a.imgs.resize = resize;
    a.imgs.crop = crop;
    a.path = path;
    a.want = split_index(split);
    a.off = -1;
    char buf[QT_DATA_PATH_MAX];
    char *comp[MAX_COMPONENTS];
    int rc = qt_tar_open(&a.tar, path, e);
    if (rc < 0) return -1;
    for (;;) {
        struct qt_tar_entry ent;
        rc = qt_tar_next(&a.tar, &ent, e);
        if (rc <= 0) break;
        if (ent.type == QT_TAR_OTHER) continue;
        if (strlen(ent.name) >= sizeof buf) continue;
        strcpy(buf, ent.name);
        int k = split_path(buf, comp);
        if (k <= 0) continue;
        if (ent.type == QT_TAR_FILE && a.mode != 1) {
            int slot;
            int v = qt_data_cifar_file_kind(comp[k - 1], &slot);
            if (v && (a.mode == 0 || a.mode == v)) {
                a.mode = v;
                rc = take_cifar(&a, &ent, v, slot, e);
                if (rc < 0) break;
                continue;
            }
        }
        if (a.mode == 10 || a.mode == 100) continue;
        if ((rc = take_labels_entry(&a, &ent, comp[k - 1], k, e)) < 0) break;
        rc = take_image_entry(&a, &ent, comp, k, e);
        if (rc < 0) break;
    }
    if (rc == 0) {
        if (a.mode == 0)
            rc = qt_err(e,
                        "%s: archive holds no dataset qtune reads (expected train/<class>/ "
                        "and test/<class>/ folders of .jpg/.png files, or CIFAR-10/100 binary "
                        "files)",
                        path);
        else if (a.mode == 1)
            rc = finish_images(&a, ds, e);
        else if (crop)
            rc = qt_err(e, "%s: resizing and cropping apply to image folders; this archive "
                           "holds CIFAR binary files of fixed-size images", path);
        else
            rc = finish_cifar(&a, ds, e);
    }
    qt_tar_close(&a.tar);
    qt_imgset_free(&a.imgs);
    classes_free(&a.cls);
    for (int i = 0; i < 6; i++) {
        free(a.blobs[i].name);
        free(a.blobs[i].data);
    }
    free(a.names);
    for (int i = 0; i < 2; i++) {
        free(a.labels[i].name);
        free(a.labels[i].data);
    }
    return rc;
}
