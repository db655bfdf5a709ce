/* libFuzzer target: arbitrary bytes as a .npy file through the reader behind `qtune run`. */
#include "../../runtime/npy.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qt_error e;
    struct qt_tensor *t = qt_npy_parse(data, size, "fuzz.npy", &e);
    qt_tensor_free(t);
    return 0;
}
