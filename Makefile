# qtune build: `make` builds build/qtune and build/libqtune.a; `make test` runs the tests.
# `make SAN=1` builds with AddressSanitizer and UndefinedBehaviorSanitizer into build-san/.

CC      ?= gcc
ONNX_INCLUDE ?= /usr/include
ONNX_PROTO := $(ONNX_INCLUDE)/onnx/onnx.proto
BLAS_DIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp

ifeq ($(SAN),1)
BUILD   ?= build-san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDSAN   := -fsanitize=address,undefined
else
BUILD   ?= build
OPT     := -O2 -g -march=x86-64-v3 -mtune=generic
LDSAN   :=
endif

CFLAGS  += -std=c11 -D_DEFAULT_SOURCE -D_FILE_OFFSET_BITS=64 $(OPT) -fopenmp -Wall -Wextra \
           -Wno-unused-parameter -I. -I$(BUILD)/gen
LDLIBS  := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -ldnnl -lprotobuf-c -ljpeg -lpng -lz -lm
LDFLAGS += -fopenmp $(LDSAN)

GEN_C   := $(BUILD)/gen/onnx/onnx.pb-c.c
LIB_SRC := $(wildcard graph/*.c onnx/*.c passes/*.c runtime/*.c runtime/data/*.c \
                      kernels/common/*.c kernels/cpu/*.c)
CLI_SRC := $(wildcard tools/*.c)
TEST_SRC := $(wildcard tests/unit/*.c tests/onnx_node/*.c)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/onnx.pb-c.o
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)

NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)

all: info $(BUILD)/qtune $(BUILD)/qtune-tests

info:
ifneq ($(NVCC),)
	@echo "qtune: nvcc found at $(NVCC) (CUDA backend: not part of this build yet)"
else
	@echo "qtune: nvcc not found; building the CPU backend only"
endif

$(GEN_C): $(ONNX_PROTO)
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -I$(ONNX_INCLUDE) $(ONNX_PROTO)

$(BUILD)/obj/gen/onnx.pb-c.o: $(GEN_C)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Wall -Wextra,$(CFLAGS)) -c $< -o $@

$(BUILD)/obj/%.o: %.c $(GEN_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libqtune.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/qtune: $(CLI_OBJ) $(BUILD)/libqtune.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/qtune-tests: $(TEST_OBJ) $(BUILD)/libqtune.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test: all
	tests/run.sh

# libFuzzer targets (clang): build-fuzz/fuzz_onnx, build-fuzz/fuzz_dataset
FUZZ_SRC := $(filter-out tests/fuzz/%,$(LIB_SRC)) $(GEN_C)
fuzz: $(GEN_C)
	@mkdir -p build-fuzz
	for t in onnx dataset; do \
	  clang -std=c11 -D_DEFAULT_SOURCE -D_FILE_OFFSET_BITS=64 -g -O1 -fopenmp -march=x86-64-v3 \
	    -fsanitize=fuzzer,address,undefined -I. -I$(BUILD)/gen tests/fuzz/fuzz_$$t.c $(FUZZ_SRC) \
	    -o build-fuzz/fuzz_$$t $(LDLIBS) || exit 1; done

clean:
	rm -rf build build-san build-fuzz

.PHONY: all info test clean fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
