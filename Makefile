# llmwall - make targets
#   make all        the CLI, tools, examples and test programs (in build/)
#   make run        generate Shakespeare with the embedded default model
#   make run-spec   the same greedily, plainly and then speculatively with its draft model (statistics on stderr)
#   make run-diffusion  the diffusion models: masked diffusion step by step (examples/diffusion_view.c),
#                   then masked and block diffusion through the CLI (statistics on stderr)
#   make test       build and run every test; ends with "N passed, N failed, N skipped"
#   make test-asan  the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make test-arm   cross-built for 64-bit ARM (aarch64-linux-gnu-gcc, static) and run under qemu-user
#   make bench      tools/bench on this machine (see bench/)
#   make cuda       the CUDA backend (llmwall_cuda.cu, nvcc) and the CLI, bench and test_cuda built with it, in build/cuda
#   make test-cuda  build/cuda/test_cuda (the GPU against the CPU; its GPU checks report skipped without a device)
#   make test-cuda-emu  test_cuda with llmwall_cuda.cu's kernels run on the CPU by tests/cuda_emu (no GPU needed; slow)

CC      ?= cc
CXX     ?= c++
ARCH    ?= -march=native
OPT     ?= -O3
STB     ?= /usr/include/stb
CFLAGS  ?= $(OPT) $(ARCH) -g
WARN     = -Wall -Wextra
CSTD     = -std=c11
CXXSTD   = -std=c++17
INC      = -I$(STB) -I.
LIBS     = -lm -lpthread
BUILD   ?= build
SAN      = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

MODEL   ?= models/tiny-shakespeare.gguf
PROMPT  ?= ROMEO:

TOOLS    = $(BUILD)/llmwall $(BUILD)/mkmodel $(BUILD)/bench $(BUILD)/skipsearch $(BUILD)/roofline
TESTS    = $(patsubst tests/%.c,$(BUILD)/%,$(wildcard tests/test_*.c)) $(BUILD)/test_cpp
EXAMPLES = $(patsubst examples/%.c,$(BUILD)/example_%,$(wildcard examples/*.c))
HEADERS  = llmwall.h tools/gguf_writer.h tests/lwtest.h tests/lwjson.h

.PHONY: all run run-spec run-diffusion test test-asan test-arm bench clean check-deps
all: check-deps $(TOOLS) $(TESTS) $(EXAMPLES)

check-deps:
	@test -f $(STB)/stb_ds.h || { echo "stb_ds.h not found in $(STB): apt-get install libstb-dev (or make STB=dir)"; exit 1; }

$(BUILD)/%: tools/%.c $(HEADERS) | $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) $< -o $@ $(LIBS)

$(BUILD)/test_%: tests/test_%.c $(HEADERS) | $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) $< -o $@ $(LIBS)

$(BUILD)/test_cpp: tests/test_cpp.cpp $(HEADERS) | $(BUILD)
	$(CXX) $(CXXSTD) $(CFLAGS) $(WARN) $(INC) $< -o $@ $(LIBS)

$(BUILD)/example_%: examples/%.c $(HEADERS) | $(BUILD)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) $< -o $@ $(LIBS)

$(BUILD):
	mkdir -p $(BUILD)

run: check-deps $(BUILD)/llmwall
	$(BUILD)/llmwall -m $(MODEL) -p "$(PROMPT)" -n 200

DRAFT   ?= models/tiny-shakespeare-draft.gguf
run-spec: check-deps $(BUILD)/llmwall
	$(BUILD)/llmwall -m $(MODEL) -p "$(PROMPT)" -n 200 --temp 0
	$(BUILD)/llmwall -m $(MODEL) -p "$(PROMPT)" -n 200 --temp 0 --mode spec --draft $(DRAFT)

MDIFF   ?= models/tiny-shakespeare-mdiff.gguf
BDIFF   ?= models/tiny-shakespeare-bdiff.gguf
run-diffusion: check-deps $(BUILD)/llmwall $(BUILD)/example_diffusion_view
	$(BUILD)/example_diffusion_view $(MDIFF) "$(PROMPT)" diffusion 32 16 16
	$(BUILD)/llmwall -m $(MDIFF) -p "$(PROMPT)" -n 128 --temp 0 --mode diffusion --block-length 16 --steps 128
	$(BUILD)/llmwall -m $(BDIFF) -p "$(PROMPT)" -n 128 --temp 0 --mode block --threshold 0.9

test: check-deps $(TOOLS) $(TESTS) $(EXAMPLES)
	@BUILD=$(BUILD) sh tests/run.sh

test-asan:
	$(MAKE) BUILD=build/asan OPT=-O1 CFLAGS="-O1 -g $(ARCH) $(SAN)" test

# 64-bit ARM: everything is built static into build/arm/bin; build/arm holds one wrapper per program that
# runs it under qemu, so the tests (which run $$BUILD/llmwall, $$BUILD/mkmodel) work unchanged.
ARM_CC   ?= aarch64-linux-gnu-gcc
ARM_CXX  ?= aarch64-linux-gnu-g++
QEMU     ?= qemu-aarch64-static
# (GCC 12's aarch64 loop vectoriser crashes on the tests' fmax reductions: an internal compiler error,
# so this build keeps the straight-line vectoriser only.)
ARM_CFLAGS ?= -O2 -g -fno-tree-loop-vectorize
# Left out under emulation: test_spec (minutes of engine scheduling at qemu's speed; the same C with no
# architecture-specific path, run natively by make test).
ARM_SKIP   ?= test_spec
test-arm: check-deps
	$(MAKE) BUILD=build/arm/bin CC=$(ARM_CC) CXX=$(ARM_CXX) CFLAGS="$(ARM_CFLAGS)" LIBS="-lm -lpthread -static" \
	  $(patsubst $(BUILD)/%,build/arm/bin/%,$(TOOLS) $(TESTS))
	@rm -f build/arm/test_*; for p in build/arm/bin/*; do n=$$(basename $$p); \
	  case " $(ARM_SKIP) " in *" $$n "*) continue;; esac; \
	  printf '#!/bin/sh\nexec %s "%s" "$$@"\n' "$(QEMU)" "$$(realpath $$p)" > build/arm/$$n; chmod +x build/arm/$$n; done
	@BUILD=build/arm sh tests/run.sh

bench: check-deps $(BUILD)/bench $(BUILD)/mkmodel $(BUILD)/llmwall
	@d=$${BENCH_MODELS:-$(BUILD)/bench-models}; mkdir -p $$d; for w in f16 q8_0; do test -f $$d/llama110m-$$w.gguf || \
	  $(BUILD)/mkmodel -o $$d/llama110m-$$w.gguf --dim 768 --layers 12 --heads 12 --ff 2048 --ctx 2048 --tied \
	    --vocab-from ../shared/vocab/ggml-vocab-llama-spm.gguf --type $$w || exit 1; done
	@d=$${BENCH_MODELS:-$(BUILD)/bench-models}; t=$${BENCH_THREADS:-2}; set -e; for w in f16 q8_0; do \
	  $(BUILD)/bench -m $$d/llama110m-$$w.gguf -t $$t --json $(BUILD)/bench-pptg-$$w.json; \
	  $(BUILD)/bench -m $$d/llama110m-$$w.gguf -t $$t --mode sweep --json $(BUILD)/bench-sweep-$$w.json; done; \
	$(BUILD)/bench -m $$d/llama110m-q8_0.gguf -t $$t --mode serve --rate 1,2,4,8 --requests 32 --prompt-len uniform:16:128 \
	  --gen-len 32 --ttft-slo 500 --tpot-slo 50 --json $(BUILD)/bench-serve-q8_0.json

# ---- the CUDA backend: llmwall_cuda.cu compiled once with nvcc (sm_90 code plus compute_90 PTX for later
# GPUs), linked into programs whose implementation file defines LW_CUDA. Builds where nvcc exists; the
# GPU checks need a device (without one they report skipped).
NVCC        ?= /usr/local/cuda/bin/nvcc
CUDA        ?= /usr/local/cuda
CUDA_ARCH   ?= -gencode arch=compute_90,code=[sm_90,compute_90]
NVCCFLAGS   ?= -O3 -std=c++17 $(CUDA_ARCH) -Xcompiler -Wall,-Wextra
CUDA_BUILD   = build/cuda
CUDA_OBJ     = $(CUDA_BUILD)/llmwall_cuda.o
CUDA_LIBS    = $(CUDA_OBJ) -L$(CUDA)/lib64 -Wl,-rpath,$(CUDA)/lib64 -lcublas -lcudart -lstdc++ $(LIBS)

.PHONY: cuda test-cuda
cuda: check-deps $(CUDA_BUILD)/llmwall $(CUDA_BUILD)/bench $(CUDA_BUILD)/test_cuda

$(CUDA_OBJ): llmwall_cuda.cu llmwall.h
	@mkdir -p $(CUDA_BUILD)
	$(NVCC) $(NVCCFLAGS) -I. -c $< -o $@

$(CUDA_BUILD)/llmwall $(CUDA_BUILD)/bench: $(CUDA_BUILD)/%: tools/%.c $(HEADERS) $(CUDA_OBJ)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) -DLW_CUDA $< -o $@ $(CUDA_LIBS)

$(CUDA_BUILD)/test_cuda: tests/test_cuda.c $(HEADERS) $(CUDA_OBJ)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) -DLW_CUDA $< -o $@ $(CUDA_LIBS)

test-cuda: cuda
	@BUILD=$(CUDA_BUILD) sh tests/run.sh

# The same kernels without a GPU: llmwall_cuda.cu rewritten for tests/cuda_emu (fibers for the threads of
# a block, host memory for the device's) and test_cuda linked to it; slow (minutes), for the logic only.
CUDA_EMU     = build/cuda-emu
CUDA_EMU_OBJ = $(CUDA_EMU)/llmwall_cuda_emu.o $(CUDA_EMU)/cuda_emu.o
EMU_HEADERS  = $(wildcard tests/cuda_emu/*.h)

.PHONY: test-cuda-emu
$(CUDA_EMU)/llmwall_cuda_emu.cpp: llmwall_cuda.cu tests/cuda_emu/rewrite.py
	@mkdir -p $(CUDA_EMU)
	python3 tests/cuda_emu/rewrite.py $< $@

$(CUDA_EMU)/llmwall_cuda_emu.o: $(CUDA_EMU)/llmwall_cuda_emu.cpp llmwall.h $(EMU_HEADERS)
	$(CXX) $(CXXSTD) -O1 -g $(WARN) -Wno-unknown-pragmas -ffp-contract=off -Itests/cuda_emu -I. -c $< -o $@

$(CUDA_EMU)/cuda_emu.o: tests/cuda_emu/cuda_emu.cpp $(EMU_HEADERS)
	@mkdir -p $(CUDA_EMU)
	$(CXX) $(CXXSTD) -O1 -g $(WARN) -Itests/cuda_emu -c $< -o $@

$(CUDA_EMU)/test_cuda: tests/test_cuda.c $(HEADERS) $(CUDA_EMU_OBJ)
	$(CC) $(CSTD) $(CFLAGS) $(WARN) $(INC) -DLW_CUDA $< $(CUDA_EMU_OBJ) -o $@ -lstdc++ $(LIBS)

test-cuda-emu: check-deps $(CUDA_EMU)/test_cuda
	@BUILD=$(CUDA_EMU) sh tests/run.sh

clean:
	rm -rf build
