/* libFuzzer target: arbitrary bytes as a dataset archive (tar.gz image folder, CIFAR or
 * IDX inside a folder) through the dataset readers. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../../runtime/data/dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/qtune_fuzz_%d.tar.gz", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    struct qt_dataset ds;
    struct qt_error e;
    memset(&ds, 0, sizeof ds);
    if (qt_dataset_load(&ds, path, "test", &e) == 0) qt_dataset_free(&ds);
    unlink(path);
    return 0;
}
