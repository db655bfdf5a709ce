# qtune build: `make` builds build/qtune and build/libqtune.a; `make test` runs the tests.
# `make SAN=1` builds with AddressSanitizer and UndefinedBehaviorSanitizer into build-san/.
# The code targets the x86-64 baseline and picks AVX2 loops at run time (kernels/cpu/dispatch.h);
# `make ARCH=-march=x86-64-v3 BUILD=...` builds for one CPU level instead.

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
OPT     := -O2 -g $(ARCH) -mtune=generic
LDSAN   :=
endif

CFLAGS  += -std=c11 -D_DEFAULT_SOURCE -D_FILE_OFFSET_BITS=64 $(OPT) -fopenmp -Wall -Wextra \
           -Wno-unused-parameter -I. -I$(BUILD)/gen
LDLIBS  := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas -ldnnl -lprotobuf-c -ljpeg -lpng -lz -lm
LDFLAGS += -fopenmp $(LDSAN)

GEN_C   := $(BUILD)/gen/onnx/onnx.pb-c.c
# The CUDA backend (runtime/backend_cuda.c, kernels/cuda/) is built when nvcc and cuDNN's
# header are found; CUDA=0 leaves it out, and runtime/backend_cuda_none.c answers for it.
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA ?= $(if $(and $(NVCC),$(wildcard $(CUDA_HOME)/include/cudnn.h)),1,0)
# Hopper machine code, and PTX that the driver compiles for other GPUs (Turing and later).
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_75,code=compute_75
CUDA_C_SRC := runtime/backend_cuda.c $(wildcard kernels/cuda/*.c)
CUDA_CU_SRC := $(wildcard kernels/cuda/*.cu)
BASE_SRC := $(filter-out $(CUDA_C_SRC) runtime/backend_cuda_none.c, \
              $(wildcard util/*.c graph/*.c onnx/*.c passes/*.c runtime/*.c runtime/data/*.c \
                         kernels/common/*.c kernels/cpu/*.c kernels/ref/*.c))
ifeq ($(CUDA),1)
LIB_SRC := $(BASE_SRC) $(CUDA_C_SRC)
CU_OBJ  := $(CUDA_CU_SRC:%.cu=$(BUILD)/obj/%.cu.o)
CFLAGS  += -I$(CUDA_HOME)/include
LDLIBS  += -L$(CUDA_HOME)/lib64 -lcudnn -lcublas -lcudart_static -lstdc++ -ldl -lrt -lpthread
else
LIB_SRC := $(BASE_SRC) runtime/backend_cuda_none.c
CU_OBJ  :=
endif
CLI_SRC := $(wildcard tools/*.c)
TEST_SRC := $(wildcard tests/unit/*.c tests/onnx_node/*.c)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o) $(CU_OBJ) $(BUILD)/obj/gen/onnx.pb-c.o
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)

all: info $(BUILD)/qtune $(BUILD)/qtune-tests

info:
ifeq ($(CUDA),1)
	@echo "qtune: building the CUDA backend with $(NVCC) (CUDA=0 leaves it out)"
else
	@echo "qtune: no nvcc with cuDNN found (or CUDA=0); building the CPU backends only"
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

$(BUILD)/obj/%.cu.o: %.cu $(wildcard kernels/cuda/*.h kernels/cuda/*.cuh kernels/common/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -std=c++17 $(CUDA_ARCH) -I. -Xcompiler -Wall,-Wextra,-Wno-unused-parameter,-Wno-unknown-pragmas \
	    -Werror all-warnings -c $< -o $@

$(BUILD)/libqtune.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/qtune: $(CLI_OBJ) $(BUILD)/libqtune.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/qtune-tests: $(TEST_OBJ) $(BUILD)/libqtune.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test: all
	tests/run.sh

# Every op description on every backend built and usable here, against the ref backend.
test-backends: $(BUILD)/qtune-tests
	$(BUILD)/qtune-tests backends_

# libFuzzer targets (clang, AddressSanitizer + UndefinedBehaviorSanitizer, every report
# fatal): build-fuzz/fuzz_<target>, one per reader; scripts/fuzz.sh runs them.
FUZZ_DIR     := build-fuzz
FUZZ_TARGETS := onnx idx cifar tar npy ckpt
FUZZ_OPT     := -O1
FUZZ_CFLAGS   = -std=c11 -D_DEFAULT_SOURCE -D_FILE_OFFSET_BITS=64 -g $(FUZZ_OPT) -fno-omit-frame-pointer \
                -fopenmp -march=x86-64-v3 -fsanitize=address,undefined -fno-sanitize-recover=all \
                -Wall -Wextra -Wno-unused-parameter -Wno-pass-failed -I. -I$(FUZZ_DIR)/gen
FUZZ_GEN_C   := $(FUZZ_DIR)/gen/onnx/onnx.pb-c.c
FUZZ_OBJ     := $(BASE_SRC:%.c=$(FUZZ_DIR)/obj/%.o) $(FUZZ_DIR)/obj/runtime/backend_cuda_none.o \
                $(FUZZ_DIR)/obj/gen/onnx.pb-c.o
FUZZ_BIN     := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
# The kernels at -O0: UBSan at -O1 takes minutes per kernel file, and fuzz inputs are tiny.
$(FUZZ_DIR)/obj/kernels/%.o: FUZZ_OPT := -O0

fuzz: $(FUZZ_BIN)

$(FUZZ_GEN_C): $(ONNX_PROTO)
	@mkdir -p $(FUZZ_DIR)/gen
	protoc-c --c_out=$(FUZZ_DIR)/gen -I$(ONNX_INCLUDE) $(ONNX_PROTO)

$(FUZZ_DIR)/obj/gen/onnx.pb-c.o: $(FUZZ_GEN_C)
	@mkdir -p $(dir $@)
	clang $(filter-out -Wall -Wextra,$(FUZZ_CFLAGS)) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/obj/%.o: %.c $(FUZZ_GEN_C)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

$(FUZZ_DIR)/libqtune.a: $(FUZZ_OBJ)
	ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h $(FUZZ_DIR)/libqtune.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_DIR)/libqtune.a -o $@ $(LDLIBS)

clean:
	rm -rf build build-san build-fuzz

.PHONY: all info test test-backends clean fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_DIR)/obj -name '*.d' 2>/dev/null)
