/* tests/cuda_emu - runs llmwall_cuda.cu's kernels on the CPU, to test the CUDA backend's logic where no
   GPU exists (not a performance tool, not part of the library)

   `make cuda-emu` rewrites llmwall_cuda.cu with tests/cuda_emu/rewrite.py (each `k<<<grid, block, smem,
   stream>>>(args)` becomes `lw_emu_launch(grid, block, smem, stream)(k, args)`, and the dynamic
   `extern __shared__` array a pointer from lw_emu_dynamic_smem()), compiles the result with the host C++
   compiler against these headers instead of CUDA's, and links tests/test_cuda.c to it: the whole suite
   then runs the backend's real kernels, dispatch and tables against the CPU backend.

   The model of execution: a launch runs its blocks one after another; the threads of a block are fibers
   (ucontext) on the calling thread, switched only at __syncthreads() and at warp shuffles, which are
   rendezvous of the block's live threads / of the 32 lanes of a warp (so divergent barriers or shuffles
   deadlock here, and the emulator stops with a message naming the kernel). Shared memory is one buffer
   per launch; `__shared__` arrays are static (one block runs at a time). Device memory is host memory
   (so AddressSanitizer builds see out-of-bounds device accesses). cuBLAS's GemmEx is a plain loop over
   the 16-bit inputs with float accumulation. Half and bfloat16 conversions round to nearest even.
   What it cannot show: real concurrency between blocks (there is none in these kernels: every output
   has one writer), memory-model and timing effects, and speed.
*/
#ifndef LW_CUDA_EMU_H
#define LW_CUDA_EMU_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <ucontext.h>
#include <functional>
#include <algorithm>
#include <cmath>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::isnan;
using std::min;
using std::max;

// ---- vector types

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
struct float4 { float x, y, z, w; };

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

template <class T> static inline T __ldg(const T* p) { return *p; }

// ---- numbers

static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> 8 * i) * (int)(int8_t)(b >> 8 * i);
    return c;
}
static inline unsigned __vsub4(unsigned a, unsigned b) {
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (((a >> 8 * i) - (b >> 8 * i)) & 0xffu) << 8 * i;
    return r;
}
static inline unsigned atomicMax(unsigned* p, unsigned v) { unsigned o = *p; if (v > o) *p = v; return o; }

struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };
static inline float __half2float(__half h) {
    uint32_t s = (uint32_t)(h.x & 0x8000) << 16, e = (h.x >> 10) & 31, m = h.x & 1023;
    float f;
    if (e == 0) f = ldexpf((float)m, -24);
    else if (e == 31) f = m ? NAN : INFINITY;
    else f = ldexpf((float)(m | 1024), (int)e - 25);
    return __uint_as_float(__float_as_uint(f) | s);
}
static inline __half __float2half_rn(float f) {   // round to nearest even, overflow to infinity
    uint32_t u = __float_as_uint(f), s = (u >> 16) & 0x8000;
    float a = fabsf(f);
    __half h;
    if (isnan(f)) { h.x = (uint16_t)(s | 0x7e00); return h; }
    if (a >= 65520.0f) { h.x = (uint16_t)(s | 0x7c00); return h; }
    if (a < 6.103515625e-05f) {   // subnormal: units of 2^-24
        h.x = (uint16_t)(s | (uint32_t)nearbyintf(a * 16777216.0f));
        return h;
    }
    int e;
    float m = frexpf(a, &e);                          // a = m 2^e, m in [0.5, 1)
    uint32_t q = (uint32_t)nearbyintf(m * 2048.0f);   // 11 significant bits, ties to even
    if (q == 2048) { q = 1024; e++; }
    uint32_t he = (uint32_t)(e - 1 + 15);
    if (he >= 31) { h.x = (uint16_t)(s | 0x7c00); return h; }
    h.x = (uint16_t)(s | he << 10 | (q - 1024));
    return h;
}
static inline __half __ushort_as_half(unsigned short v) { __half h; h.x = v; return h; }
static inline unsigned short __half_as_ushort(__half h) { return h.x; }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    __nv_bfloat16 b;
    b.x = isnan(f) ? (uint16_t)((u >> 16) | 64) : (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    return b;
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.x; }

// ---- the runtime API (what llmwall_cuda.cu calls)

typedef enum cudaError {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100, cudaErrorInsufficientDriver = 35, cudaErrorNoKernelImageForDevice = 209,
    cudaErrorDevicesUnavailable = 46, cudaErrorUnsupportedPtxVersion = 222, cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 } cudaMemcpyKind;
typedef enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
#define cudaStreamNonBlocking 1
typedef struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t sharedMemPerBlockOptin, totalGlobalMem;
} cudaDeviceProp;
typedef struct cudaFuncAttributes { int maxThreadsPerBlock; } cudaFuncAttributes;

extern size_t lw_emu_budget;   // bytes the emulated device may hold (cudaMalloc fails beyond)
cudaError_t lw_emu_malloc(void** p, size_t n);
cudaError_t lw_emu_free(void* p);

static inline const char* cudaGetErrorName(cudaError_t e) { return e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaError"; }
static inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaErrorMemoryAllocation ? "out of memory" : "emulated error"; }
static inline cudaError_t cudaGetLastError(void) { return cudaSuccess; }
static inline cudaError_t cudaPeekAtLastError(void) { return cudaSuccess; }
static inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
static inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
static inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "llmwall cuda_emu (host)");
    p->major = 9; p->minor = 0; p->multiProcessorCount = 8;
    p->sharedMemPerBlockOptin = 227 * 1024; p->totalGlobalMem = lw_emu_budget;
    return cudaSuccess;
}
template <class F> static inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, F) { a->maxThreadsPerBlock = 1024; return cudaSuccess; }
template <class F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
static inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = (cudaStream_t)(uintptr_t)1; return cudaSuccess; }
static inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
static inline cudaError_t cudaMalloc(void** p, size_t n) { return lw_emu_malloc(p, n); }
template <class T> static inline cudaError_t cudaMalloc(T** p, size_t n) { return lw_emu_malloc((void**)p, n); }
static inline cudaError_t cudaFree(void* p) { return lw_emu_free(p); }
static inline cudaError_t cudaMallocHost(void** p, size_t n) { *p = malloc(n); return *p ? cudaSuccess : cudaErrorMemoryAllocation; }
static inline cudaError_t cudaFreeHost(void* p) { free(p); return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b);
static inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = 0) { memmove(d, s, n); return cudaSuccess; }
static inline cudaError_t cudaMemcpy2DAsync(void* d, size_t dp, const void* s, size_t sp, size_t w, size_t h, cudaMemcpyKind, cudaStream_t = 0) {
    for (size_t i = 0; i < h; i++) memcpy((char*)d + i * dp, (const char*)s + i * sp, w);
    return cudaSuccess;
}
static inline cudaError_t cudaMemset(void* p, int v, size_t n) { memset(p, v, n); return cudaSuccess; }
static inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = 0) { memset(p, v, n); return cudaSuccess; }
static inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = (cudaEvent_t)(uintptr_t)1; return cudaSuccess; }
static inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = 0) { return cudaSuccess; }
static inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
static inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) { *ms = 1.0f; return cudaSuccess; }
static inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }

// ---- cuBLAS (GemmEx only)

typedef enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_ALLOC_FAILED = 3, CUBLAS_STATUS_INVALID_VALUE = 7 } cublasStatus_t;
typedef enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 } cudaDataType_t;
typedef enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef struct cublasContext* cublasHandle_t;
static inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = (cublasHandle_t)(uintptr_t)1; return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasDestroy(cublasHandle_t) { return CUBLAS_STATUS_SUCCESS; }
static inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
static inline const char* cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS error"; }
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha, const void* A,
                            cudaDataType_t at, int lda, const void* B, cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct,
                            int ldc, cublasComputeType_t, cublasGemmAlgo_t);

// ---- warp and block primitives: rendezvous of fibers

void  lw_emu_syncthreads(void);
void  lw_emu_warp_exchange(const void* mine, void* all /* [32] of size */, size_t size);   // every lane's value
void* lw_emu_dynamic_smem(void);
#define __syncthreads() lw_emu_syncthreads()

template <class T> static inline T lw_emu_shfl(T v, int src) {
    T all[32];
    lw_emu_warp_exchange(&v, all, sizeof(T));
    return all[src & 31];
}
template <class T> static inline T __shfl_xor_sync(unsigned, T v, int o) { return lw_emu_shfl(v, (int)(threadIdx.x & 31) ^ o); }
template <class T> static inline T __shfl_sync(unsigned, T v, int src) { return lw_emu_shfl(v, src); }

void lw_emu_run(dim3 grid, dim3 block, size_t smem, const char* what, const std::function<void()>& fn);

template <class T> struct lw_emu_same { typedef T type; };
struct lw_emu_launcher {
    dim3 grid, block;
    size_t smem;
    template <class... P> void operator()(void (*k)(P...), typename lw_emu_same<P>::type... a) const {
        lw_emu_run(grid, block, smem, "kernel", [=]() { k(a...); });
    }
};
static inline lw_emu_launcher lw_emu_launch(dim3 g, dim3 b, size_t smem = 0, cudaStream_t = 0) {
    lw_emu_launcher l;
    l.grid = g; l.block = b; l.smem = smem;
    return l;
}

#endif
