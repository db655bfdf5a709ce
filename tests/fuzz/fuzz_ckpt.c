/* libFuzzer target: a training checkpoint through its reader. The input is the file without
 * its trailing CRC-32, which the harness appends, so that mutations reach the parser. */
#include "../../runtime/checkpoint.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *dir = fz_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/run.ckpt", dir);
    FILE *f = fopen(path, "wb");
    uint32_t crc = (uint32_t)crc32(0L, data, (uInt)size);
    if (!f || (size && fwrite(data, 1, size, f) != size) || fwrite(&crc, 4, 1, f) != 1 ||
        fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s\n", path);
        abort();
    }
    struct qt_ckpt c;
    struct qt_error e;
    if (qt_ckpt_load(&c, path, &e) == 0) {
        char v[64];
        qt_ckpt_get(&c, "epoch", v, sizeof v);
        if (c.n > 0) qt_ckpt_find(&c, c.t[c.n - 1].name);
        qt_ckpt_free(&c);
    }
    unlink(path);
    return 0;
}
