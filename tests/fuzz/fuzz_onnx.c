/* libFuzzer target: arbitrary bytes as an ONNX model through import and canonicalization.
 * Build and run: make fuzz && build-fuzz/fuzz_onnx -max_total_time=60 tests/fuzz/corpus */
#include <stddef.h>
#include <stdint.h>

#include "../../onnx/onnx.h"
#include "../../passes/passes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qt_error e;
    struct qt_graph *g = qt_onnx_load_buffer(data, size, NULL, "fuzz", &e);
    if (!g) return 0;
    qt_pass_canonicalize(g, &e);
    qt_graph_free(g);
    return 0;
}
