// tests/cuda_emu: see cuda_runtime.h
#include "cuda_runtime.h"
