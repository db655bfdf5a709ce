/* JPEG (libjpeg-turbo) and PNG (libpng) decoding from memory, with errors caught through
 * setjmp so a corrupt file is reported instead of ending the process, and the collector that
 * decodes batches of images in parallel into one CHW uint8 array. */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#include "internal.h"

#define MAX_SIDE 65535
#define MAX_PIXELS ((size_t)1 << 28)

/* ---- JPEG ---- */

struct jpeg_fail {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
};

struct qt_image_decoder {
    struct jpeg_decompress_struct jpeg;
    struct jpeg_fail jerr;
    int jpeg_ready;
    /* PNG state lives here so that it survives a longjmp. */
    png_structp png;
    png_infop png_info;
    png_bytep *rows;
    const uint8_t *src;
    size_t src_len, src_pos;
    uint8_t *row; /* a CMYK scanline being read (freed after a longjmp) */
    char png_msg[256];
};

static void jpeg_on_error(j_common_ptr ci)
{
    struct jpeg_fail *f = (struct jpeg_fail *)ci->err;
    ci->err->format_message(ci, f->msg);
    longjmp(f->jump, 1);
}

/* Warnings that mean the compressed data is damaged become errors; others are ignored. */
static void jpeg_on_message(j_common_ptr ci, int level)
{
    if (level >= 0) return;
    int code = ci->err->msg_code;
    if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
        code == JWRN_MUST_RESYNC)
        jpeg_on_error(ci);
    ci->err->num_warnings++;
}

static void jpeg_on_output(j_common_ptr ci)
{
    (void)ci;
}

struct qt_image_decoder *qt_image_decoder_new(void)
{
    return calloc(1, sizeof(struct qt_image_decoder));
}

void qt_image_decoder_free(struct qt_image_decoder *d)
{
    if (!d) return;
    if (d->jpeg_ready) jpeg_destroy_decompress(&d->jpeg);
    free(d);
}

static void set_msg(char *msg, size_t cap, const char *fmt, const char *arg)
{
    if (msg && cap) snprintf(msg, cap, fmt, arg);
}

static int check_dims(unsigned w, unsigned h, unsigned c, char *msg, size_t cap)
{
    if (w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || (size_t)w * h * c > MAX_PIXELS) {
        if (msg && cap) snprintf(msg, cap, "unsupported image size %ux%u", w, h);
        return -1;
    }
    return 0;
}

/* The rest of a CMYK (or YCCK) JPEG, as RGB the way PIL converts it: 4-component JPEGs are
 * read with Adobe's inverted convention (stored values are 255 - ink), then each channel is
 * (255 - K) - C * (255 - K) / 255 in PIL's rounding. */
static int read_cmyk(struct qt_image_decoder *d, struct qt_image *out, unsigned w, unsigned h,
                     char *msg, size_t cap)
{
    struct jpeg_decompress_struct *ci = &d->jpeg;
    out->w = (int)w;
    out->h = (int)h;
    out->c = 3;
    out->px = malloc((size_t)w * h * 3);
    uint8_t *row = malloc((size_t)w * 4);
    if (!out->px || !row) {
        free(row);
        free(out->px);
        out->px = NULL;
        jpeg_abort_decompress(ci);
        set_msg(msg, cap, "%s", "out of memory");
        return -1;
    }
    d->row = row;
    while (ci->output_scanline < h) {
        uint8_t *dst = out->px + (size_t)ci->output_scanline * w * 3;
        JSAMPROW rows[1] = {row};
        jpeg_read_scanlines(ci, rows, 1);
        for (unsigned x = 0; x < w; x++) {
            const int nk = row[4 * x + 3]; /* 255 - K */
            for (int k = 0; k < 3; k++) {
                const int ink = 255 - row[4 * x + k], t = ink * nk + 128;
                const int v = nk - (((t >> 8) + t) >> 8);
                dst[3 * x + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
    }
    d->row = NULL;
    free(row);
    jpeg_finish_decompress(ci);
    return 0;
}

static int decode_jpeg(struct qt_image_decoder *d, const uint8_t *data, size_t len,
                       struct qt_image *out, char *msg, size_t cap)
{
    struct jpeg_decompress_struct *ci = &d->jpeg;
    if (!d->jpeg_ready) {
        ci->err = jpeg_std_error(&d->jerr.pub);
        d->jerr.pub.error_exit = jpeg_on_error;
        d->jerr.pub.emit_message = jpeg_on_message;
        d->jerr.pub.output_message = jpeg_on_output;
        if (setjmp(d->jerr.jump)) {
            set_msg(msg, cap, "cannot set up the JPEG decoder: %s", d->jerr.msg);
            return -1;
        }
        jpeg_create_decompress(ci);
        d->jpeg_ready = 1;
    }
    d->jerr.pub.num_warnings = 0;
    if (setjmp(d->jerr.jump)) {
        jpeg_abort_decompress(ci);
        free(d->row);
        d->row = NULL;
        free(out->px);
        out->px = NULL;
        set_msg(msg, cap, "corrupt JPEG: %s", d->jerr.msg);
        return -1;
    }
    jpeg_mem_src(ci, data, (unsigned long)len);
    jpeg_read_header(ci, TRUE);
    const int cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
    if (ci->num_components == 1)
        ci->out_color_space = JCS_GRAYSCALE;
    else
        ci->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(ci);
    unsigned w = ci->output_width, h = ci->output_height;
    unsigned c = cmyk ? 3u : (unsigned)ci->output_components;
    if (check_dims(w, h, c, msg, cap) < 0) {
        jpeg_abort_decompress(ci);
        return -1;
    }
    if (cmyk) return read_cmyk(d, out, w, h, msg, cap);
    out->w = (int)w;
    out->h = (int)h;
    out->c = (int)c;
    out->px = malloc((size_t)w * h * c);
    if (!out->px) {
        jpeg_abort_decompress(ci);
        set_msg(msg, cap, "%s", "out of memory");
        return -1;
    }
    size_t stride = (size_t)w * c;
    while (ci->output_scanline < h) {
        JSAMPROW rows[16];
        unsigned k = 0, y = ci->output_scanline;
        while (k < 16 && y + k < h) {
            rows[k] = out->px + (size_t)(y + k) * stride;
            k++;
        }
        jpeg_read_scanlines(ci, rows, k);
    }
    jpeg_finish_decompress(ci);
    return 0;
}

/* ---- PNG ---- */

static void png_on_error(png_structp png, png_const_charp m)
{
    struct qt_image_decoder *d = png_get_error_ptr(png);
    snprintf(d->png_msg, sizeof d->png_msg, "%s", m);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp m)
{
    (void)png;
    (void)m;
}

static void png_read_mem(png_structp png, png_bytep dst, size_t n)
{
    struct qt_image_decoder *d = png_get_io_ptr(png);
    if (n > d->src_len - d->src_pos) png_error(png, "unexpected end of data (truncated file)");
    memcpy(dst, d->src + d->src_pos, n);
    d->src_pos += n;
}

static void png_cleanup(struct qt_image_decoder *d)
{
    if (d->png) png_destroy_read_struct(&d->png, d->png_info ? &d->png_info : NULL, NULL);
    d->png = NULL;
    d->png_info = NULL;
    free(d->rows);
    d->rows = NULL;
}

static int decode_png(struct qt_image_decoder *d, const uint8_t *data, size_t len,
                      struct qt_image *out, char *msg, size_t cap)
{
    d->src = data;
    d->src_len = len;
    d->src_pos = 0;
    d->png_msg[0] = 0;
    d->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, d, png_on_error, png_on_warning);
    if (!d->png) {
        set_msg(msg, cap, "%s", "cannot set up the PNG decoder");
        return -1;
    }
    d->png_info = png_create_info_struct(d->png);
    if (!d->png_info) {
        png_cleanup(d);
        set_msg(msg, cap, "%s", "cannot set up the PNG decoder");
        return -1;
    }
    if (setjmp(png_jmpbuf(d->png))) {
        png_cleanup(d);
        free(out->px);
        out->px = NULL;
        set_msg(msg, cap, "corrupt PNG: %s", d->png_msg);
        return -1;
    }
    png_set_read_fn(d->png, d, png_read_mem);
    png_set_user_limits(d->png, MAX_SIDE, MAX_SIDE);
    png_read_info(d->png, d->png_info);
    int ct = png_get_color_type(d->png, d->png_info);
    int depth = png_get_bit_depth(d->png, d->png_info);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(d->png);
    if (ct == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(d->png);
    if (depth == 16) png_set_strip_16(d->png);
    if (ct & PNG_COLOR_MASK_ALPHA || png_get_valid(d->png, d->png_info, PNG_INFO_tRNS))
        png_set_strip_alpha(d->png);
    png_set_interlace_handling(d->png);
    png_read_update_info(d->png, d->png_info);
    unsigned w = png_get_image_width(d->png, d->png_info);
    unsigned h = png_get_image_height(d->png, d->png_info);
    unsigned c = png_get_channels(d->png, d->png_info);
    if ((c != 1 && c != 3) || png_get_rowbytes(d->png, d->png_info) != (size_t)w * c) {
        png_cleanup(d);
        set_msg(msg, cap, "%s", "unsupported PNG pixel format");
        return -1;
    }
    if (check_dims(w, h, c, msg, cap) < 0) {
        png_cleanup(d);
        return -1;
    }
    out->px = malloc((size_t)w * h * c);
    d->rows = malloc(sizeof *d->rows * h);
    if (!out->px || !d->rows) {
        png_cleanup(d);
        free(out->px);
        out->px = NULL;
        set_msg(msg, cap, "%s", "out of memory");
        return -1;
    }
    for (unsigned y = 0; y < h; y++) d->rows[y] = out->px + (size_t)y * w * c;
    png_read_image(d->png, d->rows);
    png_read_end(d->png, NULL);
    png_cleanup(d);
    out->w = (int)w;
    out->h = (int)h;
    out->c = (int)c;
    return 0;
}

int qt_image_decode(struct qt_image_decoder *d, const uint8_t *data, size_t len,
                    struct qt_image *out, char *msg, size_t cap)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memset(out, 0, sizeof *out);
    struct qt_image_decoder *own = NULL;
    if (!d) {
        d = own = qt_image_decoder_new();
        if (!d) {
            set_msg(msg, cap, "%s", "out of memory");
            return -1;
        }
    }
    int rc;
    if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff)
        rc = decode_jpeg(d, data, len, out, msg, cap);
    else if (len >= 8 && !memcmp(data, png_sig, 8))
        rc = decode_png(d, data, len, out, msg, cap);
    else {
        set_msg(msg, cap, "%s", len == 0 ? "empty file" : "not a JPEG or PNG file");
        rc = -1;
    }
    qt_image_decoder_free(own);
    return rc;
}

/* ---- collector ---- */

#define PEND_COUNT 4096
#define PEND_BYTES ((size_t)64 << 20)

struct qt_imgset_item {
    char *name;
    uint8_t *data;
    size_t len;
    int label;
};

struct decoded {
    struct qt_image img;
    int rc;
};

static void drop_pending(struct qt_imgset *s)
{
    for (int i = 0; i < s->npend; i++) {
        free(s->pend[i].name);
        free(s->pend[i].data);
    }
    s->npend = 0;
    s->pend_bytes = 0;
}

void qt_imgset_free(struct qt_imgset *s)
{
    drop_pending(s);
    free(s->pend);
    free(s->pixels);
    free(s->labels);
    qt_data_free_names(s->names, s->names ? s->n : 0);
    free(s->first);
    qt_stream_store_free(s->store);
    memset(s, 0, sizeof *s);
}

/* A streamed set: the image is listed (its bytes kept, or its file read later), not decoded. */
static int stream_add(struct qt_imgset *s, char *name, uint8_t *data, size_t len, int label,
                      struct qt_error *e)
{
    if (s->n == s->cap) {
        const int ncap = s->cap ? 2 * s->cap : 1024;
        int32_t *lb = realloc(s->labels, sizeof *lb * (size_t)ncap);
        if (lb) s->labels = lb;
        char **nm = realloc(s->names, sizeof *nm * (size_t)ncap);
        if (nm) s->names = nm;
        if (!lb || !nm || s->n == 0x7fffffff) {
            free(name);
            free(data);
            return qt_err(e, "out of memory listing images");
        }
        s->cap = ncap;
    }
    char *copy = strdup(name);
    if (!copy) {
        free(name);
        free(data);
        return qt_err(e, "out of memory listing images");
    }
    if (qt_stream_store_add(&s->store, copy, data, len, e) < 0) {
        free(name);
        return -1;
    }
    s->labels[s->n] = label;
    s->names[s->n++] = name;
    return 0;
}

int qt_imgset_add(struct qt_imgset *s, char *name, uint8_t *data, size_t len, int label,
                  struct qt_error *e)
{
    if (s->crop > 0) return stream_add(s, name, data, len, label, e);
    if (s->npend == s->pend_cap) {
        int ncap = s->pend_cap ? 2 * s->pend_cap : 256;
        struct qt_imgset_item *np = realloc(s->pend, sizeof *np * ncap);
        if (!np) {
            qt_err(e, "%s: out of memory", name);
            free(name);
            free(data);
            return -1;
        }
        s->pend = np;
        s->pend_cap = ncap;
    }
    s->pend[s->npend++] = (struct qt_imgset_item){name, data, len, label};
    s->pend_bytes += len;
    if (s->npend >= PEND_COUNT || s->pend_bytes >= PEND_BYTES) return qt_imgset_flush(s, e);
    return 0;
}

/* Gray images stored so far become RGB: each plane is copied into three, last image first. */
static int expand_to_rgb(struct qt_imgset *s, struct qt_error *e)
{
    size_t hw = (size_t)s->h * s->w;
    if (s->cap > 0) {
        uint8_t *np = realloc(s->pixels, (size_t)s->cap * 3 * hw);
        if (!np) return qt_err(e, "out of memory expanding images to RGB");
        s->pixels = np;
    }
    for (int i = s->n - 1; i >= 0; i--) {
        const uint8_t *src = s->pixels + (size_t)i * hw;
        uint8_t *dst = s->pixels + (size_t)i * 3 * hw;
        memmove(dst + 2 * hw, src, hw);
        memcpy(dst + hw, dst + 2 * hw, hw);
        memcpy(dst, dst + 2 * hw, hw);
    }
    s->c = 3;
    return 0;
}

static void store_chw(uint8_t *dst, const struct qt_image *im, int c)
{
    size_t hw = (size_t)im->h * im->w;
    const uint8_t *src = im->px;
    if (im->c == 1) {
        memcpy(dst, src, hw);
        for (int k = 1; k < c; k++) memcpy(dst + k * hw, src, hw);
        return;
    }
    uint8_t *r = dst, *g = dst + hw, *b = dst + 2 * hw;
    for (size_t p = 0; p < hw; p++) {
        r[p] = src[3 * p];
        g[p] = src[3 * p + 1];
        b[p] = src[3 * p + 2];
    }
}

int qt_imgset_flush(struct qt_imgset *s, struct qt_error *e)
{
    int np = s->npend, rc = 0;
    if (np == 0) return 0;
    struct decoded *res = calloc((size_t)np, sizeof *res);
    if (!res) {
        drop_pending(s);
        return qt_err(e, "out of memory decoding %d images", np);
    }

#pragma omp parallel if (np > 16)
    {
        struct qt_image_decoder *d = qt_image_decoder_new();
#pragma omp for schedule(dynamic, 32)
        for (int i = 0; i < np; i++)
            res[i].rc = qt_image_decode(d, s->pend[i].data, s->pend[i].len, &res[i].img, NULL, 0);
        qt_image_decoder_free(d);
    }

    int want_c = s->c;
    for (int i = 0; i < np; i++) {
        const char *name = s->pend[i].name;
        if (res[i].rc < 0) {
            char msg[256];
            struct qt_image tmp;
            const struct qt_imgset_item *it = &s->pend[i];
            if (qt_image_decode(NULL, it->data, it->len, &tmp, msg, sizeof msg) == 0) {
                free(tmp.px);
                snprintf(msg, sizeof msg, "%s", "cannot decode (out of memory?)");
            }
            rc = qt_err(e, "%s: %s", name, msg);
            goto done;
        }
        const struct qt_image *im = &res[i].img;
        if (!s->first) {
            s->first = strdup(name);
            if (!s->first) {
                rc = qt_err(e, "out of memory");
                goto done;
            }
            s->h = im->h;
            s->w = im->w;
            want_c = im->c;
        } else if (im->h != s->h || im->w != s->w) {
            rc = qt_err(e,
                        "%s: image is %dx%d (width x height) but %s is %dx%d; images of "
                        "different sizes need --crop S (and --resize R: torchvision's "
                        "Resize(R) and CenterCrop(S))",
                        name, im->w, im->h, s->first, s->w, s->h);
            goto done;
        }
        if (im->c > want_c) want_c = im->c;
    }
    if (s->c == 0) s->c = want_c;
    if (want_c > s->c && expand_to_rgb(s, e) < 0) {
        rc = -1;
        goto done;
    }
    if ((long long)s->n + np > 0x7fffffffLL) {
        rc = qt_err(e, "too many images (more than %d)", 0x7fffffff);
        goto done;
    }
    size_t chw = (size_t)s->c * s->h * s->w;
    if (s->n + np > s->cap) {
        int ncap = s->cap ? s->cap : 1024;
        while (ncap < s->n + np) ncap = ncap > 0x3fffffff ? 0x7fffffff : 2 * ncap;
        uint8_t *px = realloc(s->pixels, (size_t)ncap * chw);
        if (!px) {
            rc = qt_err(e, "out of memory storing %d images of %zu bytes", ncap, chw);
            goto done;
        }
        s->pixels = px;
        int32_t *lb = realloc(s->labels, sizeof *lb * (size_t)ncap);
        if (!lb) {
            rc = qt_err(e, "out of memory storing %d labels", ncap);
            goto done;
        }
        s->labels = lb;
        char **nm = realloc(s->names, sizeof *nm * (size_t)ncap);
        if (!nm) {
            rc = qt_err(e, "out of memory storing %d names", ncap);
            goto done;
        }
        s->names = nm;
        s->cap = ncap;
    }
#pragma omp parallel for schedule(static) if (np > 256)
    for (int i = 0; i < np; i++) {
        store_chw(s->pixels + (size_t)(s->n + i) * chw, &res[i].img, s->c);
        s->labels[s->n + i] = s->pend[i].label;
        s->names[s->n + i] = s->pend[i].name; /* taken from the pending item */
        s->pend[i].name = NULL;
    }
    s->n += np;

done:
    for (int i = 0; i < np; i++) free(res[i].img.px);
    free(res);
    drop_pending(s);
    return rc;
}
