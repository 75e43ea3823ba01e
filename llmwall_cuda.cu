/* llmwall_cuda.cu - the CUDA backend of llmwall.h (kernels + cuBLAS), compiled once with nvcc

   Build (make cuda does this; see the Makefile):
       nvcc -O3 -std=c++17 -gencode arch=compute_90,code=[sm_90,compute_90] -I. -c llmwall_cuda.cu
   then compile the file that defines LLMWALL_IMPLEMENTATION with -DLW_CUDA and link the object with
   -lcublas -lcudart. This file includes llmwall.h WITHOUT the implementation: it sees the declarations
   and the backend interface (>>backend-i) only, and exports lw__cuda_backend_create, which the header's
   lw_backend_create calls under LW_CUDA, plus lw__cuda_measure_peaks for tools/bench and two helpers for
   tests/test_cuda.c (lw__cuda_last_error, lw__cuda_test_matmul).

   Order: helpers -> dequantisation -> lw__k_* kernels -> launchers -> dispatch -> vtable.

   WHAT RUNS WHERE
     model_prepare  every weight tensor uploaded once into one device allocation, in a GPU layout:
                    rows 16-byte aligned (F32/F16/BF16 rows padded, zeros); Q8_0 and Q4_0 split into
                    quants [m][k] / [m][k/2] and half scales [m][k/32]; Q4_K as GGUF (144-byte blocks
                    are 16-byte multiples); Q6_K as 208-byte blocks (ql, qh, scales) plus half d [m][k/256].
                    Norms, biases and RoPE frequency factors are F32 vectors.
     kv_alloc/...   the paged KV pool is one device allocation (zeroed); kv_copy is a device copy.
     forward        one stream, in data-flow order: embedding rows, per layer RMSNorm -> Q/K/V -> bias,
                    RoPE, K/V to the cache type (committing rows also into their pages) -> attention ->
                    x += att Wo -> RMSNorm -> SwiGLU -> x += h Wdown, then the final norm and the output
                    head for the rows that want logits only; those logits are copied to the host.

   THE NUMBERS (what matches the CPU backend, what does not)
     Matrix products with few rows are matrix-vector kernels (up to 8 rows a launch; up to 32 rows in 8-row
     launches for weights that a GEMM would have to dequantise first, i.e. all but F16) that use the CPU's
     definitions: F32/F16/BF16 weights times F32 activations; Q8_0/Q4_0 weights times activations
     quantised to Q8_0 exactly as lw__q8_0_from_float (d = max|x|/127 rounded to half, q = roundf(x/d)),
     per block (d_w * d_x) * (exact integer dot); Q4_K/Q6_K times Q8_K (float d, clamp, roundf) with the
     exact integer sums of >>quant's K-quant comment. Only the float summation order differs (lanes and
     a warp tree instead of the CPU's), so results agree to float rounding.
     Many rows go to cuBLAS (cublasGemmEx, F16 inputs, F32 accumulation and output): the weights are
     dequantised into an F16 scratch matrix (F16 weights are used in place), the activations are
     quantised as the CPU quantises them (the same Q8_0 / Q8_K values) and then rounded to F16. A
     tensor whose values do not fit F16 (checked once at upload) takes BF16 instead, and so does every
     tensor when LLMWALL_CUDA_GEMM=bf16 is set. F16 rounding of the inputs is the one approximation
     here (relative 2^-11 per element); activations beyond +-65504 saturate.
     So the CUDA backend is NOT bitwise batch invariant: a row computed in a batch large enough for the
     GEMM path differs from the same row alone in the last bits (and cuBLAS may pick other algorithms for
     other shapes). On the matrix-vector path a row's result does not depend on the other rows.
     RMSNorm sums squares in double as the CPU does; RoPE angles are the CPU's (theta_scale computed on
     the host with powf, theta multiplied up pair by pair in float, cosf/sinf, no fused multiply-add in
     the rotation); SiLU is x / (1 + expf(-x)); K/V are rounded to the cache type before attention, as
     on the CPU, and batch rows see each other's rounded K/V.

   KERNELS
     lw__k_matvec<T, NR>   one warp per output row, 4 warps a block; each lane streams 16-byte chunks of
                           the weight row (F32 4, F16/BF16 8 values; a Q8_0 block is two chunks, a Q4_0
                           block one; 4 lanes share a K-quant super-block, 32 + 16 bytes each) with the
                           loop unrolled 4 deep for loads in flight; NR <= 8 activation rows reuse every
                           weight load; integer dots with __dp4a; a warp-shuffle reduction. Up to three
                           matrices of one type and one input in a single launch (Q, K, V), or gate and
                           up together with SwiGLU applied before the store.
     cuBLAS                more rows: lw__k_dequant (weights -> F16/BF16 scratch) and
                           lw__k_act_half (activations, quantised like the CPU's, -> F16/BF16), then
                           cublasGemmEx; Wo and Wdown accumulate into the residual (beta = 1).
     lw__k_rmsnorm         one block a row, double sum of squares, and the Q8_0/Q8_K copies the next
                           matrix-vector products read (fused, so decode runs one kernel fewer).
     lw__k_qkv_post        biases, RoPE (adjacent pairs or NeoX halves, partial rope_dim, frequency
                           factors), K/V to the cache type, committing rows written into their pages.
     lw__k_attn<NI, KV>    paged attention, flash style: a block takes up to 16 queries (R rows of one
                           sequence x up to 16 query heads of one KV head, so K/V tiles serve all of
                           them: GQA), walks the visible positions in tiles of 32 (committed positions
                           from the pages, then the batch rows its mask allows: causal, full, block,
                           explicit), keeps an online softmax per query; tiles past the last visible
                           row of the block's rows are not read. For few blocks (decode) the positions
                           are split over gridDim.z blocks (flash-decoding) and lw__k_attn_combine
                           merges the partial (max, sum, vector) triples.
   CUDA graphs are not used yet: a decode step is ~8 launches per layer; capturing the step (its
   pointers and sizes change with the batch, so one graph per shape and an update of the kernel
   parameters) is left until it can be tested on a GPU.

   Errors: every CUDA and cuBLAS call is checked (LW_CUDA_CHECK returns, never aborts): no device or no
   kernel image for it is LW_BACKEND_UNAVAILABLE, an allocation LW_OUT_OF_MEMORY, anything else
   LW_BACKEND_FAILED; the message is kept in the backend (lw__cuda_last_error) and, at creation, written
   into the caller's buffer.
*/
#ifndef LW_CUDA
#define LW_CUDA   // for the declarations of what this file exports (so the compiler checks them)
#endif
#include "llmwall.h"

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- helpers ----------------------------------------------------------------------------------------

enum {
    LW__CU_MATVEC_ROWS = 8,    // rows one matrix-vector launch takes
    LW__CU_MATVEC_MAX  = 32,   // weights that a GEMM would first dequantise: matrix-vector launches up to this many rows
    LW__CU_ATT_Q       = 16,   // queries per attention block (4 warps x 4)
    LW__CU_ATT_T       = 32,   // positions per attention tile (one per lane)
    LW__CU_MAX_HD      = 256,  // longest head the attention kernel takes
    LW__CU_MAX_SPLITS  = 32,
};

static inline size_t lw__cu_round(size_t x, size_t a) { return (x + a - 1) / a * a; }
static inline int lw__cu_ld(int k) { return (k + 7) & ~7; }   // F32 activation rows: 32-byte multiples

typedef struct lw__cuda {
    int             device;
    cudaStream_t    stream;
    cublasHandle_t  blas;
    int             n_sm;
    size_t          smem_optin;
    bool            force_bf16;       // LLMWALL_CUDA_GEMM=bf16
    char            err[512];
    // forward scratch, grown on demand (nothing is in flight when it grows: forward ends synchronised)
    uint8_t*        scratch;
    size_t          scratch_size;
    uint8_t*        wscratch;         // weights dequantised for a GEMM
    size_t          wscratch_size;
    uint8_t*        meta_host;        // pinned: the batch's tables, copied in one transfer
    uint8_t*        meta_dev;
    size_t          meta_size;
} lw__cuda;

static lw_result lw__cu_fail(lw__cuda* be, lw_result code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(be->err, sizeof be->err, fmt, ap);
    va_end(ap);
    return code;
}

static lw_result lw__cu_code(cudaError_t e) {
    if (e == cudaErrorMemoryAllocation) return LW_OUT_OF_MEMORY;
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorNoKernelImageForDevice ||
        e == cudaErrorInvalidDevice || e == cudaErrorDevicesUnavailable || e == cudaErrorUnsupportedPtxVersion)
        return LW_BACKEND_UNAVAILABLE;
    return LW_BACKEND_FAILED;
}

static lw_result lw__cu_err(lw__cuda* be, cudaError_t e, const char* what, int line) {
    (void)cudaGetLastError();   // clear it unless it is sticky
    return lw__cu_fail(be, lw__cu_code(e), "%s: %s (%s; llmwall_cuda.cu:%d)", what, cudaGetErrorName(e), cudaGetErrorString(e), line);
}

static lw_result lw__cu_blas_err(lw__cuda* be, cublasStatus_t s, const char* what, int line) {
    return lw__cu_fail(be, s == CUBLAS_STATUS_ALLOC_FAILED ? LW_OUT_OF_MEMORY : LW_BACKEND_FAILED, "%s: cuBLAS %s (llmwall_cuda.cu:%d)", what,
                       cublasGetStatusString(s), line);
}

// Returns from the calling function with an lw_result; never aborts.
#define LW_CUDA_CHECK(be, call) \
    do { cudaError_t e__ = (call); if (e__ != cudaSuccess) return lw__cu_err((be), e__, #call, __LINE__); } while (0)
#define LW_CUBLAS_CHECK(be, call) \
    do { cublasStatus_t s__ = (call); if (s__ != CUBLAS_STATUS_SUCCESS) return lw__cu_blas_err((be), s__, #call, __LINE__); } while (0)
// After a launch: a bad configuration shows here, a fault at the next synchronisation.
#define LW_CUDA_LAUNCHED(be, what) \
    do { cudaError_t e__ = cudaGetLastError(); if (e__ != cudaSuccess) return lw__cu_err((be), e__, "launch of " what, __LINE__); } while (0)

static inline unsigned lw__cu_blocks(size_t n, unsigned per) { return (unsigned)((n + per - 1) / per); }

__device__ __forceinline__ float lw__cu_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float lw__cu_b2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
__device__ __forceinline__ uint16_t lw__cu_f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ uint16_t lw__cu_f2b(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__device__ __forceinline__ float lw__cu_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float lw__cu_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double lw__cu_warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One weight matrix in device memory, as the kernels see it: m rows of k values (GGUF: ne[0] = k).
typedef struct lw__cu_mat {
    int             type;      // lw_type
    int             k, m;
    const uint8_t*  q;         // row j at q + j * ld (16-byte aligned)
    size_t          ld;        // bytes per row
    const uint16_t* s;         // Q8_0, Q4_0: half scales [m][k/32]; Q6_K: half d [m][k/256]; else NULL
    int             gemm_bf16; // its GEMM path uses BF16 (values beyond F16's range)
} lw__cu_mat;

// Activations as the matrix-vector kernels read them: F32 rows, or the Q8_0 / Q8_K copies.
typedef struct lw__cu_x {
    const float*    f;         // [r * ldf]
    int             ldf;
    const int8_t*   q;         // [r * ldq] quantised values
    const float*    d;         // [r * (ldq / bs)] scales (Q8_0: the half-rounded d as a float)
    const int32_t*  s;         // Q8_K: [r * (ldq / 32)] sums of each 32 quantised values
    int             ldq;       // elements per row (a multiple of 256)
} lw__cu_x;

// The activation buffers: Q8_0 and Q8_K copies and a 16-bit copy for cuBLAS, rows ldq elements apart.
typedef struct lw__cu_act {
    int8_t*   q8_0; float* d8_0;                  // [n][ldq], [n][ldq/32]
    int8_t*   q8_K; float* d8_K; int32_t* s8_K;   // [n][ldq], [n][ldq/256], [n][ldq/32]
    uint16_t* h;                                  // [n][ldq] F16 or BF16
    int       ldq;
} lw__cu_act;

enum { LW__CU_Q8_0 = 1, LW__CU_Q8_K = 2 };   // which quantised copies a product reads

// Whether a product of n rows with weights of `type` runs as matrix-vector launches (8 rows each) rather
// than cuBLAS: up to 8 rows always; up to 32 for weights a GEMM would first dequantise (all but F16, which
// cuBLAS reads in place), since re-streaming them 4 times still moves fewer bytes than dequantising.
static bool lw__cu_use_mv(int type, int n) {
    return n <= LW__CU_MATVEC_ROWS || (n <= LW__CU_MATVEC_MAX && type != LW_TYPE_F16);
}

static int lw__cu_wants(int type) {
    return type == LW_TYPE_Q8_0 || type == LW_TYPE_Q4_0 ? LW__CU_Q8_0 : type == LW_TYPE_Q4_K || type == LW_TYPE_Q6_K ? LW__CU_Q8_K : 0;
}

// ---- dequantisation --------------------------------------------------------------------------------
// A "unit" is what one thread dequantises at once: F32 4 values, F16/BF16 8, Q8_0/Q4_0 a block of 32,
// Q4_K/Q6_K a quarter super-block of 64. lw__cu_dq writes its values in v[] and lw__cu_dq_at says which
// column v[i] is. The expressions are the CPU's to_float ones.

template <int T> struct lw__cu_ty;
template <> struct lw__cu_ty<LW_TYPE_F32>  { static constexpr int unit = 4, block = 1; };
template <> struct lw__cu_ty<LW_TYPE_F16>  { static constexpr int unit = 8, block = 1; };
template <> struct lw__cu_ty<LW_TYPE_BF16> { static constexpr int unit = 8, block = 1; };
template <> struct lw__cu_ty<LW_TYPE_Q8_0> { static constexpr int unit = 32, block = 32; };
template <> struct lw__cu_ty<LW_TYPE_Q4_0> { static constexpr int unit = 32, block = 32; };
template <> struct lw__cu_ty<LW_TYPE_Q4_K> { static constexpr int unit = 64, block = 256; };
template <> struct lw__cu_ty<LW_TYPE_Q6_K> { static constexpr int unit = 64, block = 256; };

// Q4_K's 6-bit scale and minimum of sub-block j (0..7) from the 12 scale bytes (see lw__q4_K_scales).
__device__ __forceinline__ void lw__cu_q4k_scale(const uint8_t* s, int j, int* sc, int* m) {
    if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}

// Q6_K: the 4 x 4 packed 6-bit values of lane part t (h = t/2, l0 = 16 (t%2)) of a 208-byte block: word i
// of group g holds x[128h + 32g + l0 + 4i .. +3] + 32.
__device__ __forceinline__ void lw__cu_q6k_words(const uint8_t* blk, int t, uint32_t q[4][4]) {
    int h = t >> 1, l0 = 16 * (t & 1);
    uint4 a = __ldg((const uint4*)(blk + 64 * h + l0));
    uint4 b = __ldg((const uint4*)(blk + 64 * h + 32 + l0));
    uint4 c = __ldg((const uint4*)(blk + 128 + 32 * h + l0));
    const uint32_t aw[4] = { a.x, a.y, a.z, a.w }, bw[4] = { b.x, b.y, b.z, b.w }, cw[4] = { c.x, c.y, c.z, c.w };
#pragma unroll
    for (int i = 0; i < 4; i++) {
        q[0][i] = (aw[i] & 0x0f0f0f0fu) | ((cw[i] << 4) & 0x30303030u);
        q[1][i] = (bw[i] & 0x0f0f0f0fu) | ((cw[i] << 2) & 0x30303030u);
        q[2][i] = ((aw[i] >> 4) & 0x0f0f0f0fu) | (cw[i] & 0x30303030u);
        q[3][i] = ((bw[i] >> 4) & 0x0f0f0f0fu) | ((cw[i] >> 2) & 0x30303030u);
    }
}

template <int T>
__device__ __forceinline__ int lw__cu_dq_at(int u, int i) {
    if constexpr (T == LW_TYPE_Q6_K) {
        int t = u & 3;
        return 256 * (u >> 2) + 128 * (t >> 1) + 32 * (i >> 4) + 16 * (t & 1) + (i & 15);
    } else {
        return lw__cu_ty<T>::unit * u + i;
    }
}

template <int T>
__device__ __forceinline__ void lw__cu_dq(const lw__cu_mat& W, int j, int u, float* v) {
    const uint8_t* row = W.q + (size_t)j * W.ld;
    if constexpr (T == LW_TYPE_F32) {
        float4 w = __ldg((const float4*)row + u);
        v[0] = w.x; v[1] = w.y; v[2] = w.z; v[3] = w.w;
    } else if constexpr (T == LW_TYPE_F16 || T == LW_TYPE_BF16) {
        uint4 w = __ldg((const uint4*)row + u);
        const uint32_t ww[4] = { w.x, w.y, w.z, w.w };
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t lo = (uint16_t)(ww[i] & 0xffffu), hi = (uint16_t)(ww[i] >> 16);
            v[2 * i] = T == LW_TYPE_F16 ? lw__cu_h2f(lo) : lw__cu_b2f(lo);
            v[2 * i + 1] = T == LW_TYPE_F16 ? lw__cu_h2f(hi) : lw__cu_b2f(hi);
        }
    } else if constexpr (T == LW_TYPE_Q8_0) {
        float d = lw__cu_h2f(W.s[(size_t)j * (W.k / 32) + u]);
        const int4* p = (const int4*)(row + 32 * (size_t)u);
        int4 w[2] = { __ldg(p), __ldg(p + 1) };
        const int8_t* qs = (const int8_t*)w;
#pragma unroll
        for (int i = 0; i < 32; i++) v[i] = d * (float)qs[i];
    } else if constexpr (T == LW_TYPE_Q4_0) {
        float d = lw__cu_h2f(W.s[(size_t)j * (W.k / 32) + u]);
        int4 w = __ldg((const int4*)(row + 16 * (size_t)u));
        const uint8_t* qs = (const uint8_t*)&w;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            v[i] = d * (float)((qs[i] & 15) - 8);
            v[i + 16] = d * (float)((qs[i] >> 4) - 8);
        }
    } else if constexpr (T == LW_TYPE_Q4_K) {
        const uint8_t* blk = row + 144 * (size_t)(u >> 2);
        int t = u & 3, sa, ma, sb, mb;
        float d = lw__cu_h2f(*(const uint16_t*)blk), dmin = lw__cu_h2f(*(const uint16_t*)(blk + 2));
        lw__cu_q4k_scale(blk + 4, 2 * t, &sa, &ma);
        lw__cu_q4k_scale(blk + 4, 2 * t + 1, &sb, &mb);
        float da = d * (float)sa, mna = dmin * (float)ma, db = d * (float)sb, mnb = dmin * (float)mb;
        const int4* p = (const int4*)(blk + 16 + 32 * t);
        int4 w[2] = { __ldg(p), __ldg(p + 1) };
        const uint8_t* qs = (const uint8_t*)w;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            v[l] = da * (float)(qs[l] & 15) - mna;
            v[32 + l] = db * (float)(qs[l] >> 4) - mnb;
        }
    } else {   // Q6_K
        const uint8_t* blk = row + 208 * (size_t)(u >> 2);
        int t = u & 3, h = t >> 1;
        float d = lw__cu_h2f(W.s[(size_t)j * (W.k / 256) + (u >> 2)]);
        uint32_t q[4][4];
        lw__cu_q6k_words(blk, t, q);
#pragma unroll
        for (int g = 0; g < 4; g++) {
            float ds = d * (float)(int8_t)blk[192 + 8 * h + 2 * g + (t & 1)];
            const uint8_t* qb = (const uint8_t*)q[g];
#pragma unroll
            for (int l = 0; l < 16; l++) v[16 * g + l] = ds * (float)((int)qb[l] - 32);
        }
    }
}

// ---- kernels: upload -------------------------------------------------------------------------------

// GGUF blocks (staging) -> the device layout: quants in rows, scales apart. i is the block index over
// the whole matrix (row-major), so quants of block i sit at i * (bytes of quants per block).
__global__ void lw__k_repack(int type, const uint8_t* src, size_t n_blocks, uint8_t* q, uint16_t* s) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    if (type == LW_TYPE_Q8_0) {
        const uint8_t* b = src + i * 34;
        s[i] = (uint16_t)(b[0] | b[1] << 8);
        for (int j = 0; j < 32; j++) q[i * 32 + j] = b[2 + j];
    } else if (type == LW_TYPE_Q4_0) {
        const uint8_t* b = src + i * 18;
        s[i] = (uint16_t)(b[0] | b[1] << 8);
        for (int j = 0; j < 16; j++) q[i * 16 + j] = b[2 + j];
    } else {   // Q6_K: ql[128] qh[64] scales[16] d
        const uint8_t* b = src + i * 210;
        for (int j = 0; j < 208; j++) q[i * 208 + j] = b[j];
        s[i] = (uint16_t)(b[208] | b[209] << 8);
    }
}

// Largest |value| of a matrix into *out (as float bits: non-negative floats order like their bits).
template <int T>
__global__ void lw__k_absmax(lw__cu_mat W, unsigned* out) {
    constexpr int U = lw__cu_ty<T>::unit;
    size_t units = (size_t)(W.k + U - 1) / U, idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    float mx = 0.0f;
    if (idx < units * (size_t)W.m) {
        int j = (int)(idx / units), u = (int)(idx % units);
        float v[U];
        lw__cu_dq<T>(W, j, u, v);
        for (int i = 0; i < U; i++)
            if (lw__cu_dq_at<T>(u, i) < W.k) mx = fmaxf(mx, isnan(v[i]) ? INFINITY : fabsf(v[i]));
    }
    mx = lw__cu_warp_max(mx);
    if ((threadIdx.x & 31) == 0) atomicMax(out, __float_as_uint(mx));
}

// ---- kernels: dequantisation into rows ---------------------------------------------------------------

// out row r (ldo elements apart) = W row rows[r] (or row r), as float (OUT 0), F16 (1) or BF16 (2).
template <int T, int OUT>
__global__ void lw__k_dequant(lw__cu_mat W, const int32_t* rows, int n, void* out, size_t ldo) {
    constexpr int U = lw__cu_ty<T>::unit;
    size_t units = (size_t)(W.k + U - 1) / U, idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (idx >= units * (size_t)n) return;
    int r = (int)(idx / units), u = (int)(idx % units);
    float v[U];
    lw__cu_dq<T>(W, rows ? rows[r] : r, u, v);
    if constexpr (OUT != 0 && U % 8 == 0) {   // 16-bit rows: 8 values (16 bytes) a store; runs of 8 columns are contiguous
        if (W.k % 8 == 0) {
#pragma unroll
            for (int i = 0; i < U; i += 8) {
                uint32_t w[4];
#pragma unroll
                for (int h = 0; h < 4; h++) {
                    uint16_t lo = OUT == 1 ? lw__cu_f2h(v[i + 2 * h]) : lw__cu_f2b(v[i + 2 * h]);
                    uint16_t hi = OUT == 1 ? lw__cu_f2h(v[i + 2 * h + 1]) : lw__cu_f2b(v[i + 2 * h + 1]);
                    w[h] = (uint32_t)lo | (uint32_t)hi << 16;
                }
                uint4 q = { w[0], w[1], w[2], w[3] };
                *(uint4*)((uint16_t*)out + (size_t)r * ldo + (size_t)lw__cu_dq_at<T>(u, i)) = q;
            }
            return;
        }
    }
#pragma unroll
    for (int i = 0; i < U; i++) {
        int at = lw__cu_dq_at<T>(u, i);
        if (at >= W.k) continue;
        size_t o = (size_t)r * ldo + (size_t)at;
        if (OUT == 0) ((float*)out)[o] = v[i];
        else if (OUT == 1) ((uint16_t*)out)[o] = lw__cu_f2h(v[i]);
        else ((uint16_t*)out)[o] = lw__cu_f2b(v[i]);
    }
}

// ---- kernels: activations ----------------------------------------------------------------------------

// Quantises one row of k values as the CPU's activation quantisers do: Q8_0 (blocks of 32: d = max|x|/127,
// stored rounded to half; q = roundf(x / d) with the unrounded 1/d) and/or Q8_K (blocks of 256: float d,
// x / d clamped to [-127, 127], roundf; plus the sums of each 32 q). The calling block's warps share the
// blocks of the row.
__device__ void lw__cu_quant_row(const float* x, int k, int mask, const lw__cu_act& A, int r) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (mask & LW__CU_Q8_0)
        for (int b = warp; b < k / 32; b += nw) {
            float v = x[32 * b + lane];
            float amax = lw__cu_warp_max(fabsf(v));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            A.q8_0[(size_t)r * A.ldq + 32 * b + lane] = (int8_t)roundf(v * id);
            if (lane == 0) A.d8_0[(size_t)r * (A.ldq / 32) + b] = __half2float(__float2half_rn(d));
        }
    if (mask & LW__CU_Q8_K)
        for (int b = warp; b < k / 256; b += nw) {
            const float* xb = x + 256 * b + 8 * lane;
            float v[8], amax = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) { v[i] = xb[i]; amax = fmaxf(amax, fabsf(v[i])); }
            amax = lw__cu_warp_max(amax);
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            int sum = 0;
            int8_t* q = A.q8_K + (size_t)r * A.ldq + 256 * b + 8 * lane;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int qi = (int)roundf(fminf(fmaxf(v[i] * id, -127.0f), 127.0f));
                q[i] = (int8_t)qi;
                sum += qi;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if ((lane & 3) == 0) A.s8_K[(size_t)r * (A.ldq / 32) + 8 * b + (lane >> 2)] = sum;
            if (lane == 0) A.d8_K[(size_t)r * (A.ldq / 256) + b] = d;
        }
}

// out row r = x row (rows ? rows[r] : r) / rms * w, sum of squares in double as the CPU does; then the
// quantised copies `mask` asks for. One block (256 threads) a row.
__global__ void __launch_bounds__(256) lw__k_rmsnorm(const float* x, int ldx, const int32_t* rows, const float* w, int d, float eps,
                                                     float* out, int ldo, int mask, lw__cu_act A) {
    __shared__ double part[8];
    int r = blockIdx.x;
    const float* xr = x + (size_t)(rows ? rows[r] : r) * ldx;
    float* o = out + (size_t)r * ldo;
    double ss = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += (double)(xr[i] * xr[i]);
    ss = lw__cu_warp_sum_d(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += part[i];
        part[0] = t;
    }
    __syncthreads();
    float mean = (float)(part[0] / d);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = __fmul_rn(__fmul_rn(xr[i], scale), w[i]);
    if (mask) {
        __syncthreads();   // the block's writes of o are visible to the block after this
        lw__cu_quant_row(o, d, mask, A, r);
    }
}

// The quantised copies of rows of x (attention output, SwiGLU output) for the matrix-vector products.
__global__ void __launch_bounds__(256) lw__k_quant(const float* x, int ldx, int k, int mask, lw__cu_act A) {
    lw__cu_quant_row(x + (size_t)blockIdx.x * ldx, k, mask, A, blockIdx.x);
}

// Rows of x -> 16-bit rows for cuBLAS. bs 32 / 256: first quantised to Q8_0 / Q8_K as the CPU quantises
// activations (the values the CPU's integer dots multiply), then rounded; bs 0: rounded as they are.
// Values beyond the 16-bit type's range saturate. One block a row.
__global__ void __launch_bounds__(256) lw__k_act_half(const float* x, int ldx, int k, int bs, int bf16, uint16_t* h, int ldh) {
    const float* xr = x + (size_t)blockIdx.x * ldx;
    uint16_t* hr = h + (size_t)blockIdx.x * ldh;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const float lim = bf16 ? 3.0e38f : 65504.0f;
    if (bs == 0) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            float v = fminf(fmaxf(xr[i], -lim), lim);
            hr[i] = bf16 ? lw__cu_f2b(v) : lw__cu_f2h(v);
        }
        return;
    }
    int per = bs / 32;   // values per lane: 1 (Q8_0) or 8 (Q8_K)
    for (int b = warp; b < k / bs; b += nw) {
        float v[8], amax = 0.0f;
        for (int i = 0; i < per; i++) { v[i] = xr[bs * b + per * lane + i]; amax = fmaxf(amax, fabsf(v[i])); }
        amax = lw__cu_warp_max(amax);
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        float dq = bs == 32 ? __half2float(__float2half_rn(d)) : d;
        for (int i = 0; i < per; i++) {
            float q = bs == 32 ? roundf(v[i] * id) : roundf(fminf(fmaxf(v[i] * id, -127.0f), 127.0f));
            float y = fminf(fmaxf(dq * q, -lim), lim);
            hr[bs * b + per * lane + i] = bf16 ? lw__cu_f2b(y) : lw__cu_f2h(y);
        }
    }
}

// ---- kernels: matrix-vector products -------------------------------------------------------------------

// Lane partial sums of W row j . activation rows 0..nr-1 into acc[NR] (nr <= NR).
template <int T, int NR>
__device__ __forceinline__ void lw__cu_rowdot(const lw__cu_mat& W, int j, const lw__cu_x& X, int nr, float* acc) {
    const int lane = threadIdx.x & 31;
    const uint8_t* row = W.q + (size_t)j * W.ld;
    if constexpr (T == LW_TYPE_F32 || T == LW_TYPE_F16 || T == LW_TYPE_BF16) {
        constexpr int V = lw__cu_ty<T>::unit;
        const int nv = W.k / V;
#pragma unroll 4
        for (int c = lane; c < nv; c += 32) {
            float w[V];
            lw__cu_dq<T>(W, j, c, w);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (r >= nr) break;
                const float4* xr = (const float4*)(X.f + (size_t)r * X.ldf) + c * (V / 4);
#pragma unroll
                for (int h = 0; h < V / 4; h++) {
                    float4 xv = xr[h];
                    acc[r] += w[4 * h] * xv.x;
                    acc[r] += w[4 * h + 1] * xv.y;
                    acc[r] += w[4 * h + 2] * xv.z;
                    acc[r] += w[4 * h + 3] * xv.w;
                }
            }
        }
        for (int i = nv * V + lane; i < W.k; i += 32) {   // a last partial chunk, value by value
            float wv = T == LW_TYPE_F32 ? ((const float*)row)[i]
                     : T == LW_TYPE_F16 ? lw__cu_h2f(((const uint16_t*)row)[i]) : lw__cu_b2f(((const uint16_t*)row)[i]);
#pragma unroll
            for (int r = 0; r < NR; r++)
                if (r < nr) acc[r] += wv * X.f[(size_t)r * X.ldf + i];
        }
    } else if constexpr (T == LW_TYPE_Q8_0 || T == LW_TYPE_Q4_0) {
        const int nb = W.k / 32;
        const uint16_t* sc = W.s + (size_t)j * nb;
#pragma unroll 4
        for (int b = lane; b < nb; b += 32) {
            int w[8];
            if constexpr (T == LW_TYPE_Q8_0) {
                const int4* p = (const int4*)(row + 32 * (size_t)b);
                int4 w0 = __ldg(p), w1 = __ldg(p + 1);
                w[0] = w0.x; w[1] = w0.y; w[2] = w0.z; w[3] = w0.w; w[4] = w1.x; w[5] = w1.y; w[6] = w1.z; w[7] = w1.w;
            } else {   // the low nibbles are values 0..15, the high ones 16..31: unsigned bytes 0..15
                int4 wq = __ldg((const int4*)(row + 16 * (size_t)b));
                const int ww[4] = { wq.x, wq.y, wq.z, wq.w };
#pragma unroll
                for (int i = 0; i < 4; i++) { w[i] = ww[i] & 0x0f0f0f0f; w[4 + i] = (ww[i] >> 4) & 0x0f0f0f0f; }
            }
            float dw = lw__cu_h2f(__ldg(sc + b));
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (r >= nr) break;
                const int4* xp = (const int4*)(X.q + (size_t)r * X.ldq + 32 * (size_t)b);
                int4 x0 = xp[0], x1 = xp[1];
                const int xv[8] = { x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w };
                int isum = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) isum = __dp4a(w[i], xv[i], isum);
                if constexpr (T == LW_TYPE_Q4_0) {   // sum (q - 8) x = sum q x - 8 sum x
                    int sx = 0;
#pragma unroll
                    for (int i = 0; i < 8; i++) sx = __dp4a(0x01010101, xv[i], sx);
                    isum -= 8 * sx;
                }
                float dx = X.d[(size_t)r * (X.ldq / 32) + b];
                acc[r] += dw * dx * (float)isum;
            }
        }
    } else if constexpr (T == LW_TYPE_Q4_K) {
        // 4 lanes a super-block: lane part t reads quant bytes 32t..32t+31 = sub-block 2t (low nibbles,
        // values 64t..64t+31) and 2t+1 (high nibbles, values 64t+32..64t+63)
        const int nsb = W.k / 256, t = lane & 3;
#pragma unroll 2
        for (int b = lane >> 2; b < nsb; b += 8) {
            const uint8_t* blk = row + 144 * (size_t)b;
            const int4* p = (const int4*)(blk + 16 + 32 * t);
            int4 q0 = __ldg(p), q1 = __ldg(p + 1);
            const int qw[8] = { q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w };
            float d = lw__cu_h2f(__ldg((const uint16_t*)blk)), dmin = lw__cu_h2f(__ldg((const uint16_t*)(blk + 2)));
            int sa, ma, sb, mb;
            lw__cu_q4k_scale(blk + 4, 2 * t, &sa, &ma);
            lw__cu_q4k_scale(blk + 4, 2 * t + 1, &sb, &mb);
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (r >= nr) break;
                const int4* xp = (const int4*)(X.q + (size_t)r * X.ldq + 256 * (size_t)b + 64 * t);
                int4 x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
                const int xlo[8] = { x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w };
                const int xhi[8] = { x2.x, x2.y, x2.z, x2.w, x3.x, x3.y, x3.z, x3.w };
                int slo = 0, shi = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    slo = __dp4a(qw[i] & 0x0f0f0f0f, xlo[i], slo);
                    shi = __dp4a((qw[i] >> 4) & 0x0f0f0f0f, xhi[i], shi);
                }
                const int32_t* xs = X.s + (size_t)r * (X.ldq / 32) + 8 * (size_t)b + 2 * t;
                int isum = sa * slo + sb * shi, msum = ma * xs[0] + mb * xs[1];
                float dx = X.d[(size_t)r * (X.ldq / 256) + b];
                acc[r] += (float)isum * (d * dx);
                acc[r] += (float)-msum * (dmin * dx);
            }
        }
    } else {   // Q6_K: 4 lanes a super-block, lane part t = half t/2, columns 16 (t%2) .. +16 of each group
        const int nsb = W.k / 256, t = lane & 3, h = t >> 1, l0 = 16 * (t & 1);
#pragma unroll 2
        for (int b = lane >> 2; b < nsb; b += 8) {
            const uint8_t* blk = row + 208 * (size_t)b;
            uint32_t q[4][4];
            lw__cu_q6k_words(blk, t, q);
            int sc[4];
#pragma unroll
            for (int g = 0; g < 4; g++) sc[g] = (int8_t)__ldg(blk + 192 + 8 * h + 2 * g + (t & 1));
            float d = lw__cu_h2f(__ldg(W.s + (size_t)j * nsb + b));
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (r >= nr) break;
                const int8_t* xr = X.q + (size_t)r * X.ldq + 256 * (size_t)b + 128 * h + l0;
                int isum = 0;
#pragma unroll
                for (int g = 0; g < 4; g++) {
                    int4 xv = *(const int4*)(xr + 32 * g);
                    const int xw[4] = { xv.x, xv.y, xv.z, xv.w };
                    int s = 0;
#pragma unroll
                    for (int i = 0; i < 4; i++) s = __dp4a((int)__vsub4(q[g][i], 0x20202020u), xw[i], s);
                    isum += sc[g] * s;
                }
                float dx = X.d[(size_t)r * (X.ldq / 256) + b];
                acc[r] += (float)isum * (d * dx);
            }
        }
    }
}

typedef struct lw__cu_mv {
    lw__cu_mat  W[3];          // up to three matrices of one type over the same input (Q, K, V)
    float*      y[3];          // their outputs [r * ldy + j]
    int         ldy[3];
    int         n_mats, m_total;
    int         nr;            // activation rows
    int         accumulate;    // y += instead of y =
    int         swiglu;        // W[0] gate, W[1] up (n_mats 1): y[0] = silu(gate) * up
    lw__cu_x    x;
} lw__cu_mv;

__device__ __forceinline__ float lw__cu_silu(float x) { return x / (1.0f + expf(-x)); }

template <int T, int NR>
__global__ void __launch_bounds__(128) lw__k_matvec(lw__cu_mv a) {
    int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (warp >= a.m_total) return;   // the whole warp leaves together
    int mi = 0, j = warp;
    while (mi + 1 < a.n_mats && j >= a.W[mi].m) { j -= a.W[mi].m; mi++; }
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    lw__cu_rowdot<T, NR>(a.W[mi], j, a.x, a.nr, acc);
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = lw__cu_warp_sum(acc[r]);
    if (a.swiglu) {
        float up[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) up[r] = 0.0f;
        lw__cu_rowdot<T, NR>(a.W[1], j, a.x, a.nr, up);
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r] = lw__cu_silu(acc[r]) * lw__cu_warp_sum(up[r]);
    }
    if (lane == 0) {
        float* y = a.y[mi];
        int ldy = a.ldy[mi];
#pragma unroll
        for (int r = 0; r < NR; r++) {
            if (r >= a.nr) break;
            float* o = y + (size_t)r * ldy + j;
            *o = a.accumulate ? *o + acc[r] : acc[r];
        }
    }
}

// hb = silu(hb) * hb2 (the GEMM path's SwiGLU), rows ld apart
__global__ void lw__k_swiglu(float* hb, const float* hb2, int ld, int ff, int n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)n * ff) return;
    size_t o = (i / ff) * ld + i % ff;
    hb[o] = lw__cu_silu(hb[o]) * hb2[o];
}

// ---- kernels: biases, RoPE, K/V into the cache -----------------------------------------------------------

typedef struct lw__cu_post {
    float*          q;  int ldq;           // [n][ldq]
    float*          k;  float* v; int ldk; // [n][ldk]
    const float*    bq; const float* bk; const float* bv;   // or NULL
    const int32_t*  pos;                   // [n]
    const int32_t*  commits;               // [n]
    const int32_t*  rseq;                  // [n] the row's sequence in seqs
    const int32_t*  seq_pages;             // [n_seqs] offset of each sequence's page table in pages
    const int32_t*  pages;
    int             n_head, n_head_kv, hd, rope_dim, neox;
    float           theta_scale;
    const float*    factors;               // [rope_dim / 2] or NULL
    uint8_t*        kb; uint8_t* vb;       // [n][kv_dim] in the KV type
    uint8_t*        pool;
    size_t          page_bytes, plane;     // plane: one layer's K (or V) of a page
    int             page_size, layer, kv_f16;
} lw__cu_post;

__global__ void __launch_bounds__(256) lw__k_qkv_post(lw__cu_post a) {
    int r = blockIdx.x, hd = a.hd, qd = a.n_head * hd, kvd = a.n_head_kv * hd;
    float *q = a.q + (size_t)r * a.ldq, *k = a.k + (size_t)r * a.ldk, *v = a.v + (size_t)r * a.ldk;
    for (int i = threadIdx.x; i < qd; i += blockDim.x)
        if (a.bq) q[i] += a.bq[i];
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        if (a.bk) k[i] += a.bk[i];
        if (a.bv) v[i] += a.bv[i];
    }
    __syncthreads();
    int half = a.rope_dim / 2, pq = a.n_head * half, pk = a.n_head_kv * half, pos = a.pos[r];
    for (int p = threadIdx.x; p < pq + pk; p += blockDim.x) {
        float* base = p < pq ? q : k;
        int pp = p < pq ? p : p - pq, h = pp / half, i = pp % half;
        float theta = (float)pos;   // pos * theta_scale^i, multiplied up as the CPU's table is
        for (int t = 0; t < i; t++) theta = __fmul_rn(theta, a.theta_scale);
        float th = a.factors ? __fdiv_rn(theta, a.factors[i]) : theta;
        float co = cosf(th), si = sinf(th);
        int ia = a.neox ? i : 2 * i, ib = a.neox ? i + half : 2 * i + 1;
        float* x = base + (size_t)h * hd;
        float x0 = x[ia], x1 = x[ib];
        x[ia] = __fsub_rn(__fmul_rn(x0, co), __fmul_rn(x1, si));
        x[ib] = __fadd_rn(__fmul_rn(x0, si), __fmul_rn(x1, co));
    }
    __syncthreads();
    size_t elt = a.kv_f16 ? 2 : 4, row = (size_t)kvd * elt;
    uint8_t *kp = NULL, *vp = NULL;
    if (a.commits[r]) {
        const int32_t* pages = a.pages + a.seq_pages[a.rseq[r]];
        uint8_t* page = a.pool + (size_t)pages[pos / a.page_size] * a.page_bytes + (size_t)(pos % a.page_size) * row;
        kp = page + (size_t)(2 * a.layer) * a.plane;
        vp = page + (size_t)(2 * a.layer + 1) * a.plane;
    }
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        if (a.kv_f16) {
            uint16_t kh = lw__cu_f2h(k[i]), vh = lw__cu_f2h(v[i]);
            ((uint16_t*)(a.kb + (size_t)r * row))[i] = kh;
            ((uint16_t*)(a.vb + (size_t)r * row))[i] = vh;
            if (kp) { ((uint16_t*)kp)[i] = kh; ((uint16_t*)vp)[i] = vh; }
        } else {
            ((float*)(a.kb + (size_t)r * row))[i] = k[i];
            ((float*)(a.vb + (size_t)r * row))[i] = v[i];
            if (kp) { ((float*)kp)[i] = k[i]; ((float*)vp)[i] = v[i]; }
        }
    }
}

// ---- kernels: attention ----------------------------------------------------------------------------------

typedef struct lw__cu_seq {    // one sequence of the batch (device copy of lw__fwd_seq's essentials)
    int32_t kv_len, n_rows, rows_off, pages_off, mask, block_size, allow_off;
} lw__cu_seq;

typedef struct lw__cu_tile {   // R consecutive rows of one sequence and how far their visibility reaches
    int32_t seq, i0, nr, t_end;   // t: committed positions [0, kv_len), then batch rows kv_len + j
} lw__cu_tile;

typedef struct lw__cu_att {
    const float*       q;  int ldq;
    const uint8_t*     kb; const uint8_t* vb;
    const uint8_t*     pool;
    size_t             page_bytes, plane;
    int                page_size, layer, kv_dim;
    const lw__cu_seq*  seqs;
    const int32_t*     seq_rows;   // the sequences' row lists, concatenated
    const int32_t*     pages;
    const uint8_t*     allow;
    const int32_t*     pos;        // [n]
    const lw__cu_tile* tiles;
    int                hd, n_head, G, Gc, hgroups;
    float              scale;
    int                splits;
    int                vec;        // K/V rows can be read in 16-byte pieces
    float*             out; int ldo;
    float*             part;       // [n * n_head][splits][hd + 2] (max, sum, vector) when splits > 1
} lw__cu_att;

__device__ __forceinline__ bool lw__cu_allows(const lw__cu_att& a, const lw__cu_seq& s, int i, int pi, int j) {
    int pj = a.pos[a.seq_rows[s.rows_off + j]];
    switch (s.mask) {
    case LW_MASK_CAUSAL:   return pj <= pi;
    case LW_MASK_FULL:     return true;
    case LW_MASK_BLOCK:    return pj / s.block_size <= pi / s.block_size;
    default:               return a.allow[(size_t)s.allow_off + (size_t)i * s.n_rows + j] != 0;
    }
}

// Where visible position t of sequence s keeps the K (kv 0) or V (kv 1) of KV head kvh.
__device__ __forceinline__ const uint8_t* lw__cu_kv_src(const lw__cu_att& a, const lw__cu_seq& s, int t, int kv, int kvh, size_t elt) {
    size_t head = (size_t)kvh * a.hd * elt, row = (size_t)a.kv_dim * elt;
    if (t < s.kv_len) {
        int page = a.pages[s.pages_off + t / a.page_size];
        return a.pool + (size_t)page * a.page_bytes + (size_t)(2 * a.layer + kv) * a.plane + (size_t)(t % a.page_size) * row + head;
    }
    int br = a.seq_rows[s.rows_off + t - s.kv_len];
    return (kv ? a.vb : a.kb) + (size_t)br * row + head;
}

// NI: 32-value pieces of a head held per lane (head_dim <= 32 NI); KVF16: the cache holds halves.
template <int NI, int KVF16>
__global__ void __launch_bounds__(128) lw__k_attn(lw__cu_att a) {
    extern __shared__ float smem[];
    const int hd = a.hd, kst = hd % 2 ? hd : hd + 1, vst = 32 * NI;
    float* q_s = smem;                             // [16][hd]
    float* k_s = q_s + LW__CU_ATT_Q * hd;          // [32][kst]
    float* v_s = k_s + LW__CU_ATT_T * kst;         // [32][vst]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const lw__cu_tile tile = a.tiles[blockIdx.x];
    const lw__cu_seq s = a.seqs[tile.seq];
    const int kvh = blockIdx.y / a.hgroups, hg = blockIdx.y % a.hgroups;
    const int h0 = kvh * a.G + hg * a.Gc, nh = min(a.Gc, a.G - hg * a.Gc), nq = tile.nr * nh;
    const size_t elt = KVF16 ? 2 : 4;

    for (int e = threadIdx.x; e < LW__CU_ATT_Q * hd; e += blockDim.x) {   // queries (zeros past nq)
        int qi = e / hd, d = e % hd;
        float v = 0.0f;
        if (qi < nq) v = a.q[(size_t)a.seq_rows[s.rows_off + tile.i0 + qi / nh] * a.ldq + (size_t)(h0 + qi % nh) * hd + d];
        q_s[e] = v;
    }
    for (int e = threadIdx.x; e < LW__CU_ATT_T * vst; e += blockDim.x) v_s[e] = 0.0f;   // columns past hd stay 0

    // this warp's queries: slots sl = 0..3 are queries warp + 4 sl
    int qrow[4], qpos[4];
#pragma unroll
    for (int sl = 0; sl < 4; sl++) {
        int qi = warp + 4 * sl;
        qrow[sl] = qi < nq ? tile.i0 + qi / nh : 0;
        qpos[sl] = a.pos[a.seq_rows[s.rows_off + qrow[sl]]];
    }
    float m[4], l[4], acc[4][NI];
#pragma unroll
    for (int sl = 0; sl < 4; sl++) {
        m[sl] = -INFINITY; l[sl] = 0.0f;
#pragma unroll
        for (int i = 0; i < NI; i++) acc[sl][i] = 0.0f;
    }

    const int n_t = (tile.t_end + LW__CU_ATT_T - 1) / LW__CU_ATT_T, chunk = (n_t + a.splits - 1) / a.splits;
    const int tb = blockIdx.z * chunk, te = min(n_t, tb + chunk);
    for (int tt = tb; tt < te; tt++) {
        const int t0 = tt * LW__CU_ATT_T;
        __syncthreads();   // the previous tile is no longer read (and, first time, q_s and v_s are written)
        if (a.vec) {
            const int cpp = (int)(hd * elt / 16), per = 16 / (int)elt;   // 16-byte pieces per position
            for (int e = threadIdx.x; e < 2 * LW__CU_ATT_T * cpp; e += blockDim.x) {
                int kv = e / (LW__CU_ATT_T * cpp), rest = e % (LW__CU_ATT_T * cpp), p = rest / cpp, c = rest % cpp, t = t0 + p;
                float val[8];
                if (t < tile.t_end) {
                    uint4 w = *(const uint4*)(lw__cu_kv_src(a, s, t, kv, kvh, elt) + 16 * (size_t)c);
                    if (KVF16) {
                        const uint16_t* hw = (const uint16_t*)&w;
#pragma unroll
                        for (int i = 0; i < 8; i++) val[i] = lw__cu_h2f(hw[i]);
                    } else {
                        const float* fw = (const float*)&w;
#pragma unroll
                        for (int i = 0; i < 4; i++) val[i] = fw[i];
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++) val[i] = 0.0f;
                }
                float* dst = kv ? v_s + p * vst + c * per : k_s + p * kst + c * per;
                for (int i = 0; i < per; i++) dst[i] = val[i];
            }
        } else {
            for (int e = threadIdx.x; e < 2 * LW__CU_ATT_T * hd; e += blockDim.x) {
                int kv = e / (LW__CU_ATT_T * hd), rest = e % (LW__CU_ATT_T * hd), p = rest / hd, d = rest % hd, t = t0 + p;
                float val = 0.0f;
                if (t < tile.t_end) {
                    const uint8_t* src = lw__cu_kv_src(a, s, t, kv, kvh, elt);
                    val = KVF16 ? lw__cu_h2f(((const uint16_t*)src)[d]) : ((const float*)src)[d];
                }
                if (kv) v_s[p * vst + d] = val;
                else k_s[p * kst + d] = val;
            }
        }
        __syncthreads();

        // scores: lane = position t0 + lane, for the warp's 4 query slots at once
        float dot[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
        const float* kr = k_s + lane * kst;
        for (int d = 0; d < hd; d++) {
            float kv = kr[d];
#pragma unroll
            for (int sl = 0; sl < 4; sl++) dot[sl] += q_s[(warp + 4 * sl) * hd + d] * kv;
        }
        const int t = t0 + lane;
#pragma unroll
        for (int sl = 0; sl < 4; sl++) {
            if (warp + 4 * sl >= nq) break;   // the same for the whole warp
            bool vis = t < tile.t_end && (t < s.kv_len || lw__cu_allows(a, s, qrow[sl], qpos[sl], t - s.kv_len));
            float sc = vis ? dot[sl] * a.scale : -INFINITY;
            float mnew = fmaxf(m[sl], lw__cu_warp_max(sc));
            if (mnew == -INFINITY) continue;   // nothing visible yet (uniform)
            float alpha = expf(m[sl] - mnew), p = vis ? expf(sc - mnew) : 0.0f;
            l[sl] = l[sl] * alpha + lw__cu_warp_sum(p);
#pragma unroll
            for (int i = 0; i < NI; i++) acc[sl][i] *= alpha;
            for (int u = 0; u < LW__CU_ATT_T; u++) {
                float pu = __shfl_sync(0xffffffffu, p, u);
#pragma unroll
                for (int i = 0; i < NI; i++) acc[sl][i] += pu * v_s[u * vst + 32 * i + lane];
            }
            m[sl] = mnew;
        }
    }

#pragma unroll
    for (int sl = 0; sl < 4; sl++) {
        int qi = warp + 4 * sl;
        if (qi >= nq) break;
        int br = a.seq_rows[s.rows_off + qrow[sl]], h = h0 + qi % nh;
        if (a.splits == 1) {
            float inv = l[sl] > 0.0f ? 1.0f / l[sl] : 0.0f;
            float* o = a.out + (size_t)br * a.ldo + (size_t)h * hd;
#pragma unroll
            for (int i = 0; i < NI; i++)
                if (32 * i + lane < hd) o[32 * i + lane] = acc[sl][i] * inv;
        } else {
            float* pp = a.part + (((size_t)br * a.n_head + h) * a.splits + blockIdx.z) * (hd + 2);
            if (lane == 0) { pp[0] = m[sl]; pp[1] = l[sl]; }
#pragma unroll
            for (int i = 0; i < NI; i++)
                if (32 * i + lane < hd) pp[2 + 32 * i + lane] = acc[sl][i];
        }
    }
}

// Merges the split partials of query (row, head) blockIdx.x: out = sum_z e^(m_z - M) acc_z / sum_z e^(m_z - M) l_z.
__global__ void lw__k_attn_combine(const float* part, int splits, int hd, int n_head, float* out, int ldo) {
    const float* p = part + (size_t)blockIdx.x * splits * (hd + 2);
    float M = -INFINITY;
    for (int z = 0; z < splits; z++) M = fmaxf(M, p[(size_t)z * (hd + 2)]);
    float* o = out + (size_t)(blockIdx.x / n_head) * ldo + (size_t)(blockIdx.x % n_head) * hd;
    float L = 0.0f;
    if (M != -INFINITY)
        for (int z = 0; z < splits; z++) L += p[(size_t)z * (hd + 2) + 1] * expf(p[(size_t)z * (hd + 2)] - M);
    float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float v = 0.0f;
        if (M != -INFINITY)
            for (int z = 0; z < splits; z++) {
                const float* pz = p + (size_t)z * (hd + 2);
                if (pz[0] != -INFINITY) v += pz[2 + d] * expf(pz[0] - M);
            }
        o[d] = v * inv;
    }
}

// ---- launchers -------------------------------------------------------------------------------------------

// A prepared model: its matrices and vectors in one device allocation.
typedef struct lw__cu_layer {
    lw__cu_mat   wq, wk, wv, wo, gate, up, down;
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv;
} lw__cu_layer;

typedef struct lw__cu_model {
    lw__config     cfg;
    lw__cu_mat     tok_embd, output;
    const float*   output_norm;
    const float*   factors;
    float          theta_scale;
    lw__cu_layer*  layers;
    uint8_t*       mem;
    size_t         mem_size, gemm_scratch;   // bytes of the largest matrix as 16-bit values
} lw__cu_model;

#define LW__CU_MV_CASE(T) \
    case T: \
        if (nr == 1) lw__k_matvec<T, 1><<<grid, 128, 0, be->stream>>>(*a); \
        else if (nr == 2) lw__k_matvec<T, 2><<<grid, 128, 0, be->stream>>>(*a); \
        else if (nr <= 4) lw__k_matvec<T, 4><<<grid, 128, 0, be->stream>>>(*a); \
        else lw__k_matvec<T, 8><<<grid, 128, 0, be->stream>>>(*a); \
        break;

static lw_result lw__cu_launch_matvec(lw__cuda* be, lw__cu_mv* a) {
    int nr = a->nr;
    unsigned grid = lw__cu_blocks((size_t)a->m_total, 4);
    switch (a->W[0].type) {
        LW__CU_MV_CASE(LW_TYPE_F32)
        LW__CU_MV_CASE(LW_TYPE_F16)
        LW__CU_MV_CASE(LW_TYPE_BF16)
        LW__CU_MV_CASE(LW_TYPE_Q8_0)
        LW__CU_MV_CASE(LW_TYPE_Q4_0)
        LW__CU_MV_CASE(LW_TYPE_Q4_K)
        LW__CU_MV_CASE(LW_TYPE_Q6_K)
    default: return lw__cu_fail(be, LW_MODEL_UNSUPPORTED_TYPE, "matrix type %d has no CUDA kernel", a->W[0].type);
    }
    LW_CUDA_LAUNCHED(be, "matvec");
    return LW_OK;
}

#define LW__CU_DQ_CASE(T) \
    case T: \
        if (out_kind == 0) lw__k_dequant<T, 0><<<grid, 256, 0, be->stream>>>(*W, rows, n, out, ldo); \
        else if (out_kind == 1) lw__k_dequant<T, 1><<<grid, 256, 0, be->stream>>>(*W, rows, n, out, ldo); \
        else lw__k_dequant<T, 2><<<grid, 256, 0, be->stream>>>(*W, rows, n, out, ldo); \
        break;

// n rows of W (rows[r], or r) into out, ldo elements apart: float (out_kind 0), F16 (1), BF16 (2).
static lw_result lw__cu_launch_dequant(lw__cuda* be, const lw__cu_mat* W, const int32_t* rows, int n, int out_kind, void* out, size_t ldo) {
    int unit = W->type == LW_TYPE_F32 ? 4 : W->type == LW_TYPE_F16 || W->type == LW_TYPE_BF16 ? 8 : W->type == LW_TYPE_Q4_K || W->type == LW_TYPE_Q6_K ? 64 : 32;
    unsigned grid = lw__cu_blocks((size_t)(W->k + unit - 1) / unit * (size_t)n, 256);
    if (n <= 0) return LW_OK;
    switch (W->type) {
        LW__CU_DQ_CASE(LW_TYPE_F32)
        LW__CU_DQ_CASE(LW_TYPE_F16)
        LW__CU_DQ_CASE(LW_TYPE_BF16)
        LW__CU_DQ_CASE(LW_TYPE_Q8_0)
        LW__CU_DQ_CASE(LW_TYPE_Q4_0)
        LW__CU_DQ_CASE(LW_TYPE_Q4_K)
        LW__CU_DQ_CASE(LW_TYPE_Q6_K)
    default: return lw__cu_fail(be, LW_MODEL_UNSUPPORTED_TYPE, "matrix type %d has no CUDA kernel", W->type);
    }
    LW_CUDA_LAUNCHED(be, "dequant");
    return LW_OK;
}

// y[n][m] (ldy apart) (+)= x[n][k] (ldx apart) . W^T through cuBLAS: W dequantised to 16 bits (F16 weights
// in place), x quantised as the CPU quantises it and rounded to the same 16-bit type.
static lw_result lw__cu_gemm(lw__cuda* be, const lw__cu_mat* W, const float* x, int ldx, int n, float* y, int ldy, bool accumulate,
                             const lw__cu_act* act) {
    bool bf16 = be->force_bf16 || W->gemm_bf16;
    int k = W->k, m = W->m, bs = lw__cu_wants(W->type) == LW__CU_Q8_0 ? 32 : lw__cu_wants(W->type) == LW__CU_Q8_K ? 256 : 0;
    lw__k_act_half<<<n, 256, 0, be->stream>>>(x, ldx, k, bs, bf16, act->h, act->ldq);
    LW_CUDA_LAUNCHED(be, "act_half");
    const void* A;
    int lda;
    if ((W->type == LW_TYPE_F16 && !bf16) || (W->type == LW_TYPE_BF16 && bf16)) {
        A = W->q;
        lda = (int)(W->ld / 2);
    } else {
        lda = lw__cu_ld(k);
        if ((size_t)lda * m * 2 > be->wscratch_size)
            return lw__cu_fail(be, LW_ERROR, "internal: GEMM scratch of %zu bytes for a %d x %d matrix", be->wscratch_size, m, k);
        lw_result r = lw__cu_launch_dequant(be, W, NULL, m, bf16 ? 2 : 1, be->wscratch, (size_t)lda);
        if (r) return r;
        A = be->wscratch;
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cudaDataType_t t16 = bf16 ? CUDA_R_16BF : CUDA_R_16F;
    // column-major view: Y^T (m x n, ld ldy) = op(A) (W stored k x m, lda, transposed) . X^T (k x n, ld ldq)
    LW_CUBLAS_CHECK(be, cublasGemmEx(be->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, A, t16, lda, act->h, t16, act->ldq, &beta, y,
                                     CUDA_R_32F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return LW_OK;
}

// The activation rows of x as the matrix-vector kernels read them.
static lw__cu_x lw__cu_xview(const float* x, int ldx, const lw__cu_act* act, int type) {
    lw__cu_x v;
    memset(&v, 0, sizeof v);
    v.f = x;
    v.ldf = ldx;
    v.ldq = act->ldq;
    int wants = lw__cu_wants(type);
    if (wants == LW__CU_Q8_0) { v.q = act->q8_0; v.d = act->d8_0; }
    if (wants == LW__CU_Q8_K) { v.q = act->q8_K; v.d = act->d8_K; v.s = act->s8_K; }
    return v;
}

// The matrix-vector launches of y_i (+)= x . W_i^T over rows [0, n), 8 rows at a time (x's quantised copies
// must be in act already); W[0..n_mats) share one type.
static lw_result lw__cu_matvec_rows(lw__cuda* be, const lw__cu_mat* const* W, float* const* y, const int* ldy, int n_mats, const float* x,
                                    int ldx, int n, bool accumulate, bool swiglu, const lw__cu_act* act) {
    int bs = lw__cu_wants(W[0]->type) == LW__CU_Q8_K ? 256 : 32;
    for (int r0 = 0; r0 < n; r0 += LW__CU_MATVEC_ROWS) {
        lw__cu_mv a;
        memset(&a, 0, sizeof a);
        a.nr = n - r0 < LW__CU_MATVEC_ROWS ? n - r0 : LW__CU_MATVEC_ROWS;
        a.accumulate = accumulate;
        a.swiglu = swiglu;
        a.x = lw__cu_xview(x + (size_t)r0 * ldx, ldx, act, W[0]->type);
        if (a.x.q) {
            a.x.q += (size_t)r0 * act->ldq;
            a.x.d += (size_t)r0 * (act->ldq / bs);
            if (a.x.s) a.x.s += (size_t)r0 * (act->ldq / 32);
        }
        for (int i = 0; i < (swiglu ? 2 : n_mats); i++) a.W[i] = *W[i];
        a.n_mats = swiglu ? 1 : n_mats;
        for (int i = 0; i < a.n_mats; i++) {
            a.y[i] = y[i] + (size_t)r0 * ldy[i];
            a.ldy[i] = ldy[i];
            a.m_total += W[i]->m;
        }
        lw_result r = lw__cu_launch_matvec(be, &a);
        if (r) return r;
    }
    return LW_OK;
}

// y_i (+)= x . W_i^T for i < n_mats (one input, n rows), each by lw__cu_use_mv: matrix-vector launches (the
// quantised copies of x must be in act already; matrices of one type share launches) or cuBLAS. swiglu:
// W[0] gate, W[1] up (one type), y[0] = silu(gate) * up (the GEMM path writes gate into y[0] and up into
// y[1] first).
static lw_result lw__cu_matmul(lw__cuda* be, const lw__cu_mat* const* W, float* const* y, const int* ldy, int n_mats, const float* x, int ldx,
                               int n, bool accumulate, bool swiglu, const lw__cu_act* act) {
    lw_result r;
    bool same = true;
    for (int i = 1; i < n_mats; i++) same = same && W[i]->type == W[0]->type;
    if (lw__cu_use_mv(W[0]->type, n) && (same || swiglu))
        return lw__cu_matvec_rows(be, W, y, ldy, n_mats, x, ldx, n, accumulate, swiglu, act);
    for (int i = 0; i < n_mats; i++) {
        if (lw__cu_use_mv(W[i]->type, n)) r = lw__cu_matvec_rows(be, &W[i], &y[i], &ldy[i], 1, x, ldx, n, accumulate, false, act);
        else r = lw__cu_gemm(be, W[i], x, ldx, n, y[i], ldy[i], accumulate, act);
        if (r) return r;
    }
    if (swiglu) {
        lw__k_swiglu<<<lw__cu_blocks((size_t)n * W[0]->m, 256), 256, 0, be->stream>>>(y[0], y[1], ldy[0], W[0]->m, n);
        LW_CUDA_LAUNCHED(be, "swiglu");
    }
    return LW_OK;
}

// The quantised copies of its input that a product of n rows with W reads (none on the GEMM path).
static int lw__cu_mv_wants(const lw__cu_mat* W, int n) { return lw__cu_use_mv(W->type, n) ? lw__cu_wants(W->type) : 0; }

// x += in . W^T (Wo, Wdown): the input's quantised copies first when the matrix-vector kernels read them.
static lw_result lw__cu_residual(lw__cuda* be, const lw__cu_mat* W, const float* in, int ld_in, float* x, int ldx, int n, const lw__cu_act* act) {
    int wants = lw__cu_wants(W->type);
    if (lw__cu_use_mv(W->type, n) && wants) {
        lw__k_quant<<<n, 256, 0, be->stream>>>(in, ld_in, W->k, wants, *act);
        LW_CUDA_LAUNCHED(be, "quant");
    }
    float* y[1] = { x };
    int ldy[1] = { ldx };
    return lw__cu_matmul(be, &W, y, ldy, 1, in, ld_in, n, true, false, act);
}

#define LW__CU_ATT_SMEM(hd, ni) ((size_t)(LW__CU_ATT_Q * (hd) + LW__CU_ATT_T * ((hd) + 1) + LW__CU_ATT_T * 32 * (ni)) * sizeof(float))

static lw_result lw__cu_launch_attn(lw__cuda* be, const lw__cu_att* a, int n_tiles, int n_head_kv, bool kv_f16) {
    int ni = a->hd <= 32 ? 1 : a->hd <= 64 ? 2 : a->hd <= 128 ? 4 : 8;
    size_t smem = LW__CU_ATT_SMEM(a->hd, ni);
    dim3 grid((unsigned)n_tiles, (unsigned)(n_head_kv * a->hgroups), (unsigned)a->splits);
#define LW__CU_ATT(NI) \
    do { if (kv_f16) lw__k_attn<NI, 1><<<grid, 128, smem, be->stream>>>(*a); else lw__k_attn<NI, 0><<<grid, 128, smem, be->stream>>>(*a); } while (0)
    if (ni == 1) LW__CU_ATT(1);
    else if (ni == 2) LW__CU_ATT(2);
    else if (ni == 4) LW__CU_ATT(4);
    else LW__CU_ATT(8);
#undef LW__CU_ATT
    LW_CUDA_LAUNCHED(be, "attention");
    return LW_OK;
}

// ---- dispatch: the forward pass ----------------------------------------------------------------------------

// Carves 256-byte aligned pieces out of one allocation (sizes first, then pointers).
typedef struct lw__cu_carve { size_t off; uint8_t* base; } lw__cu_carve;
static void* lw__cu_take(lw__cu_carve* c, size_t bytes) {
    void* p = c->base ? c->base + c->off : NULL;
    c->off += lw__cu_round(bytes, 256);
    return p;
}

// The activation buffers of n rows of up to ldq values (a multiple of 256).
static lw__cu_act lw__cu_take_act(lw__cu_carve* cv, int n, int ldq) {
    lw__cu_act a;
    a.ldq = ldq;
    a.q8_0 = (int8_t*)lw__cu_take(cv, (size_t)n * ldq);
    a.d8_0 = (float*)lw__cu_take(cv, (size_t)n * (ldq / 32) * 4);
    a.q8_K = (int8_t*)lw__cu_take(cv, (size_t)n * ldq);
    a.d8_K = (float*)lw__cu_take(cv, (size_t)n * (ldq / 256) * 4);
    a.s8_K = (int32_t*)lw__cu_take(cv, (size_t)n * (ldq / 32) * 4);
    a.h = (uint16_t*)lw__cu_take(cv, (size_t)n * ldq * 2);
    return a;
}

static lw_result lw__cu_reserve(lw__cuda* be, uint8_t** buf, size_t* size, size_t need, bool pinned) {
    if (need <= *size) return LW_OK;
    need = lw__cu_round(need + need / 4, 1 << 20);
    if (*buf) {
        if (pinned) cudaFreeHost(*buf); else cudaFree(*buf);
        *buf = NULL;
        *size = 0;
    }
    if (pinned) LW_CUDA_CHECK(be, cudaMallocHost((void**)buf, need));
    else LW_CUDA_CHECK(be, cudaMalloc((void**)buf, need));
    *size = need;
    return LW_OK;
}

static lw_result lw__cuda_forward(void* self, void* prepared, const lw__fwd* f) {
    lw__cuda* be = (lw__cuda*)self;
    const lw__cu_model* pm = (const lw__cu_model*)prepared;
    const lw__config* c = &pm->cfg;
    const lw__kv_layout* L = f->kv;
    lw_result r;
    LW_CUDA_CHECK(be, cudaSetDevice(be->device));
    LW_CUDA_CHECK(be, cudaStreamSynchronize(be->stream));   // a failed forward may have left work queued on the tables
    const int n = f->n_rows, d = c->n_embd, hd = c->head_dim, q_dim = c->n_head * hd, kv_dim = c->n_head_kv * hd, ff = c->n_ff;
    const bool kv_f16 = L->kv_type == LW_TYPE_F16;
    const size_t elt = kv_f16 ? 2 : 4;
    if (hd > LW__CU_MAX_HD) return lw__cu_fail(be, LW_BACKEND_FAILED, "head_dim %d: the CUDA attention takes at most %d", hd, LW__CU_MAX_HD);

    // ---- the batch's tables (host side), then one copy to the device
    const int G = c->n_head / c->n_head_kv, Gc = G < LW__CU_ATT_Q ? G : LW__CU_ATT_Q, hgroups = (G + Gc - 1) / Gc;
    const int R = LW__CU_ATT_Q / Gc > 0 ? LW__CU_ATT_Q / Gc : 1;
    int n_logits = 0, n_tiles = 0, n_pages = 0;
    size_t n_allow = 0;
    for (int i = 0; i < n; i++) n_logits += f->rows[i].wants_logits != 0;
    for (int s = 0; s < f->n_seqs; s++) {
        const lw__fwd_seq* q = &f->seqs[s];
        int commits = 0;
        for (int i = 0; i < q->n_rows; i++) commits += f->rows[q->rows[i]].commits != 0;
        n_tiles += (q->n_rows + R - 1) / R;
        n_pages += (q->kv_len + commits + L->page_size - 1) / L->page_size;
        if (q->mask == LW_MASK_EXPLICIT) n_allow += (size_t)q->n_rows * q->n_rows;
    }
    enum { M_TOK, M_POS, M_COMMIT, M_RSEQ, M_SEQROWS, M_SEQPAGES, M_LOGITROWS, M_PAGES, M_SEQS, M_TILES, M_ALLOW, M_N };
    size_t msz[M_N] = { (size_t)n * 4, (size_t)n * 4, (size_t)n * 4, (size_t)n * 4, (size_t)n * 4, (size_t)f->n_seqs * 4,
                        (size_t)(n_logits + 1) * 4, (size_t)(n_pages + 1) * 4, (size_t)f->n_seqs * sizeof(lw__cu_seq),
                        (size_t)n_tiles * sizeof(lw__cu_tile), n_allow + 1 };
    size_t moff[M_N], mtotal = 0;
    for (int i = 0; i < M_N; i++) { moff[i] = mtotal; mtotal += lw__cu_round(msz[i], 16); }
    if ((r = lw__cu_reserve(be, &be->meta_host, &be->meta_size, mtotal, true))) return r;
    uint8_t* mh = be->meta_host;
    int32_t *tok = (int32_t*)(mh + moff[M_TOK]), *pos = (int32_t*)(mh + moff[M_POS]), *com = (int32_t*)(mh + moff[M_COMMIT]);
    int32_t *rseq = (int32_t*)(mh + moff[M_RSEQ]), *seq_rows = (int32_t*)(mh + moff[M_SEQROWS]), *seq_pages = (int32_t*)(mh + moff[M_SEQPAGES]);
    int32_t *logit_rows = (int32_t*)(mh + moff[M_LOGITROWS]), *pages = (int32_t*)(mh + moff[M_PAGES]);
    lw__cu_seq* seqs = (lw__cu_seq*)(mh + moff[M_SEQS]);
    lw__cu_tile* tiles = (lw__cu_tile*)(mh + moff[M_TILES]);
    uint8_t* allow = mh + moff[M_ALLOW];
    for (int i = 0, nl = 0; i < n; i++) {
        tok[i] = f->rows[i].token;
        pos[i] = f->rows[i].position;
        com[i] = f->rows[i].commits != 0;
        rseq[i] = f->row_seq[i];
        if (f->rows[i].wants_logits) logit_rows[nl++] = i;
    }
    int rows_off = 0, pages_off = 0, tile = 0, max_t = 0;
    size_t allow_off = 0;
    for (int s = 0; s < f->n_seqs; s++) {
        const lw__fwd_seq* q = &f->seqs[s];
        int commits = 0;
        for (int i = 0; i < q->n_rows; i++) commits += f->rows[q->rows[i]].commits != 0;
        int np = (q->kv_len + commits + L->page_size - 1) / L->page_size;
        memcpy(pages + pages_off, q->pages, (size_t)np * sizeof(int32_t));
        memcpy(seq_rows + rows_off, q->rows, (size_t)q->n_rows * sizeof(int32_t));
        lw__cu_seq* ds = &seqs[s];
        ds->kv_len = q->kv_len;
        ds->n_rows = q->n_rows;
        ds->rows_off = rows_off;
        ds->pages_off = pages_off;
        ds->mask = (int32_t)q->mask;
        ds->block_size = q->mask == LW_MASK_BLOCK ? q->block_size : 1;
        ds->allow_off = (int32_t)allow_off;
        seq_pages[s] = pages_off;
        if (q->mask == LW_MASK_EXPLICIT) {
            memcpy(allow + allow_off, q->allow, (size_t)q->n_rows * q->n_rows);
            allow_off += (size_t)q->n_rows * q->n_rows;
        }
        for (int i0 = 0; i0 < q->n_rows; i0 += R) {   // row tiles and the last batch row any of them sees
            lw__cu_tile* t = &tiles[tile++];
            t->seq = s;
            t->i0 = i0;
            t->nr = q->n_rows - i0 < R ? q->n_rows - i0 : R;
            int last = -1;
            if (q->mask == LW_MASK_FULL) last = q->n_rows - 1;
            else if (q->mask == LW_MASK_EXPLICIT) {
                for (int i = i0; i < i0 + t->nr; i++)
                    for (int j = q->n_rows - 1; j > last; j--)
                        if (q->allow[(size_t)i * q->n_rows + j]) { last = j; break; }
            } else {
                int top = INT32_MIN;
                for (int i = i0; i < i0 + t->nr; i++) {
                    int p = f->rows[q->rows[i]].position;
                    p = q->mask == LW_MASK_BLOCK ? p / q->block_size : p;
                    top = p > top ? p : top;
                }
                for (int j = q->n_rows - 1; j >= 0 && last < 0; j--) {
                    int p = f->rows[q->rows[j]].position;
                    if ((q->mask == LW_MASK_BLOCK ? p / q->block_size : p) <= top) last = j;
                }
            }
            t->t_end = q->kv_len + last + 1;
            max_t = t->t_end > max_t ? t->t_end : max_t;
        }
        rows_off += q->n_rows;
        pages_off += np;
    }
    // split the positions over more blocks when the grid is small (decoding): flash-decoding
    int splits = 1, base = n_tiles * c->n_head_kv * hgroups, n_t = (max_t + LW__CU_ATT_T - 1) / LW__CU_ATT_T;
    if (base < 2 * be->n_sm) {
        splits = (2 * be->n_sm + base - 1) / base;
        int most = n_t / 4 > 1 ? n_t / 4 : 1;   // at least 4 tiles (128 positions) per split
        splits = splits < most ? splits : most;
        splits = splits < LW__CU_MAX_SPLITS ? splits : LW__CU_MAX_SPLITS;
    }

    // ---- device scratch
    const int lda = (int)lw__cu_round((size_t)(d > q_dim ? (d > ff ? d : ff) : (q_dim > ff ? q_dim : ff)), 256);
    const int ldd = lw__cu_ld(d), ldq = lw__cu_ld(q_dim), ldk = lw__cu_ld(kv_dim), ldf = lw__cu_ld(ff);
    lw__cu_carve cv = { 0, NULL };
    uint8_t *meta = NULL, *kb = NULL, *vb = NULL;
    float *x = NULL, *xb = NULL, *qb = NULL, *kf = NULL, *vf = NULL, *att = NULL, *hb = NULL, *hb2 = NULL, *logits = NULL, *part = NULL;
    lw__cu_act act;
    for (int pass = 0; pass < 2; pass++) {   // sizes, then the pieces
        if (pass == 1) {
            if ((r = lw__cu_reserve(be, &be->scratch, &be->scratch_size, cv.off, false))) return r;
            cv.base = be->scratch;
            cv.off = 0;
        }
        meta = (uint8_t*)lw__cu_take(&cv, mtotal);   // the tables
        x = (float*)lw__cu_take(&cv, (size_t)n * ldd * 4);
        xb = (float*)lw__cu_take(&cv, (size_t)n * ldd * 4);
        qb = (float*)lw__cu_take(&cv, (size_t)n * ldq * 4);
        kf = (float*)lw__cu_take(&cv, (size_t)n * ldk * 4);
        vf = (float*)lw__cu_take(&cv, (size_t)n * ldk * 4);
        kb = (uint8_t*)lw__cu_take(&cv, (size_t)n * kv_dim * elt);
        vb = (uint8_t*)lw__cu_take(&cv, (size_t)n * kv_dim * elt);
        att = (float*)lw__cu_take(&cv, (size_t)n * ldq * 4);
        hb = (float*)lw__cu_take(&cv, (size_t)n * ldf * 4);
        hb2 = (float*)lw__cu_take(&cv, (size_t)n * ldf * 4);
        act = lw__cu_take_act(&cv, n, lda);
        logits = (float*)lw__cu_take(&cv, (size_t)(n_logits ? n_logits : 1) * c->n_vocab * 4);
        part = (float*)lw__cu_take(&cv, splits > 1 ? (size_t)n * c->n_head * splits * (hd + 2) * 4 : 4);
    }
    bool gemm_rows = n > LW__CU_MATVEC_ROWS || n_logits > LW__CU_MATVEC_ROWS;
    if (gemm_rows && pm->gemm_scratch > be->wscratch_size)
        if ((r = lw__cu_reserve(be, &be->wscratch, &be->wscratch_size, pm->gemm_scratch, false))) return r;
    LW_CUDA_CHECK(be, cudaMemcpyAsync(meta, be->meta_host, mtotal, cudaMemcpyHostToDevice, be->stream));
    const int32_t* d_tok = (const int32_t*)(meta + moff[M_TOK]);
    const int32_t* d_logit_rows = (const int32_t*)(meta + moff[M_LOGITROWS]);

    // ---- the layers
    if ((r = lw__cu_launch_dequant(be, &pm->tok_embd, d_tok, n, 0, x, (size_t)ldd))) return r;
    lw__cu_att at;
    memset(&at, 0, sizeof at);
    at.q = qb; at.ldq = ldq; at.kb = kb; at.vb = vb; at.pool = (const uint8_t*)f->kv_pool;
    at.page_bytes = L->page_bytes; at.page_size = L->page_size; at.kv_dim = kv_dim;
    at.plane = (size_t)L->page_size * kv_dim * elt;
    at.seqs = (const lw__cu_seq*)(meta + moff[M_SEQS]);
    at.seq_rows = (const int32_t*)(meta + moff[M_SEQROWS]);
    at.pages = (const int32_t*)(meta + moff[M_PAGES]);
    at.allow = meta + moff[M_ALLOW];
    at.pos = (const int32_t*)(meta + moff[M_POS]);
    at.tiles = (const lw__cu_tile*)(meta + moff[M_TILES]);
    at.hd = hd; at.n_head = c->n_head; at.G = G; at.Gc = Gc; at.hgroups = hgroups;
    at.scale = 1.0f / sqrtf((float)hd);
    at.splits = splits;
    at.vec = (hd * elt) % 16 == 0 && L->page_bytes % 16 == 0 && at.plane % 16 == 0;
    at.out = att; at.ldo = ldq; at.part = part;
    lw__cu_post po;
    memset(&po, 0, sizeof po);
    po.q = qb; po.ldq = ldq; po.k = kf; po.v = vf; po.ldk = ldk;
    po.pos = at.pos; po.commits = (const int32_t*)(meta + moff[M_COMMIT]); po.rseq = (const int32_t*)(meta + moff[M_RSEQ]);
    po.seq_pages = (const int32_t*)(meta + moff[M_SEQPAGES]); po.pages = at.pages;
    po.n_head = c->n_head; po.n_head_kv = c->n_head_kv; po.hd = hd; po.rope_dim = c->rope_dim; po.neox = c->rope_neox;
    po.theta_scale = pm->theta_scale; po.factors = pm->factors;
    po.kb = kb; po.vb = vb; po.pool = (uint8_t*)f->kv_pool; po.page_bytes = L->page_bytes; po.plane = at.plane;
    po.page_size = L->page_size; po.kv_f16 = kv_f16;

    for (int l = 0; l < c->n_layer; l++) {
        if (f->skip_layers && f->skip_layers[l]) continue;
        const lw__cu_layer* Ly = &pm->layers[l];
        int qmask = lw__cu_mv_wants(&Ly->wq, n) | lw__cu_mv_wants(&Ly->wk, n) | lw__cu_mv_wants(&Ly->wv, n);
        lw__k_rmsnorm<<<n, 256, 0, be->stream>>>(x, ldd, NULL, Ly->attn_norm, d, c->rms_eps, xb, ldd, qmask, act);
        LW_CUDA_LAUNCHED(be, "rmsnorm");
        {
            const lw__cu_mat* W[3] = { &Ly->wq, &Ly->wk, &Ly->wv };
            float* y[3] = { qb, kf, vf };
            int ldy[3] = { ldq, ldk, ldk };
            if ((r = lw__cu_matmul(be, W, y, ldy, 3, xb, ldd, n, false, false, &act))) return r;
        }
        po.bq = Ly->bq; po.bk = Ly->bk; po.bv = Ly->bv; po.layer = l;
        lw__k_qkv_post<<<n, 256, 0, be->stream>>>(po);
        LW_CUDA_LAUNCHED(be, "qkv_post");
        at.layer = l;
        if ((r = lw__cu_launch_attn(be, &at, n_tiles, c->n_head_kv, kv_f16))) return r;
        if (splits > 1) {
            lw__k_attn_combine<<<n * c->n_head, 128, 0, be->stream>>>(part, splits, hd, c->n_head, att, ldq);
            LW_CUDA_LAUNCHED(be, "attn_combine");
        }
        if ((r = lw__cu_residual(be, &Ly->wo, att, ldq, x, ldd, n, &act))) return r;
        qmask = lw__cu_mv_wants(&Ly->gate, n) | lw__cu_mv_wants(&Ly->up, n);
        lw__k_rmsnorm<<<n, 256, 0, be->stream>>>(x, ldd, NULL, Ly->ffn_norm, d, c->rms_eps, xb, ldd, qmask, act);
        LW_CUDA_LAUNCHED(be, "rmsnorm");
        {
            const lw__cu_mat* W[2] = { &Ly->gate, &Ly->up };
            float* y[2] = { hb, hb2 };
            int ldy[2] = { ldf, ldf };
            if (Ly->gate.type == Ly->up.type) {
                if ((r = lw__cu_matmul(be, W, y, ldy, 2, xb, ldd, n, false, true, &act))) return r;
            } else {   // gate and up of different types: two products, then SwiGLU
                if ((r = lw__cu_matmul(be, W, y, ldy, 2, xb, ldd, n, false, false, &act))) return r;
                lw__k_swiglu<<<lw__cu_blocks((size_t)n * ff, 256), 256, 0, be->stream>>>(hb, hb2, ldf, ff, n);
                LW_CUDA_LAUNCHED(be, "swiglu");
            }
        }
        if ((r = lw__cu_residual(be, &Ly->down, hb, ldf, x, ldd, n, &act))) return r;
    }

    // ---- the output head, for the rows that want logits
    if (n_logits) {
        int qmask = lw__cu_mv_wants(&pm->output, n_logits);
        lw__k_rmsnorm<<<n_logits, 256, 0, be->stream>>>(x, ldd, d_logit_rows, pm->output_norm, d, c->rms_eps, xb, ldd, qmask, act);
        LW_CUDA_LAUNCHED(be, "rmsnorm");
        const lw__cu_mat* W[1] = { &pm->output };
        float* y[1] = { logits };
        int ldy[1] = { c->n_vocab };
        if ((r = lw__cu_matmul(be, W, y, ldy, 1, xb, ldd, n_logits, false, false, &act))) return r;
        LW_CUDA_CHECK(be, cudaMemcpyAsync(f->logits, logits, (size_t)n_logits * c->n_vocab * sizeof(float), cudaMemcpyDeviceToHost, be->stream));
    }
    LW_CUDA_CHECK(be, cudaStreamSynchronize(be->stream));
    return LW_OK;
}

// ---- model upload -----------------------------------------------------------------------------------------

static bool lw__cu_computable(int type) {
    return type == LW_TYPE_F32 || type == LW_TYPE_F16 || type == LW_TYPE_BF16 || type == LW_TYPE_Q8_0 || type == LW_TYPE_Q4_0 ||
           type == LW_TYPE_Q4_K || type == LW_TYPE_Q6_K;
}

// Device bytes of a matrix: its rows, and (Q8_0, Q4_0, Q6_K) its scales apart.
static void lw__cu_mat_bytes(int type, int64_t k, int64_t m, size_t* rows, size_t* scales, size_t* ld) {
    *scales = 0;
    switch (type) {
    case LW_TYPE_F32:  *ld = lw__cu_round((size_t)k * 4, 16); break;
    case LW_TYPE_F16:
    case LW_TYPE_BF16: *ld = lw__cu_round((size_t)k * 2, 16); break;
    case LW_TYPE_Q8_0: *ld = (size_t)k; *scales = (size_t)m * (size_t)(k / 32) * 2; break;
    case LW_TYPE_Q4_0: *ld = (size_t)k / 2; *scales = (size_t)m * (size_t)(k / 32) * 2; break;
    case LW_TYPE_Q4_K: *ld = (size_t)(k / 256) * 144; break;
    default:           *ld = (size_t)(k / 256) * 208; *scales = (size_t)m * (size_t)(k / 256) * 2; break;   // Q6_K
    }
    *rows = *ld * (size_t)m;
}

typedef struct lw__cu_upload {   // the state of one model's upload
    lw__cuda*     be;
    lw__cu_carve  cv;
    uint8_t*      staging;
    size_t        staging_size;
} lw__cu_upload;

// Places a matrix (pass 0: only counts its bytes); pass 1 copies it into the device layout.
static lw_result lw__cu_put_mat(lw__cu_upload* U, const lw__tensor* t, lw__cu_mat* out, int pass) {
    lw__cuda* be = U->be;
    int64_t k = t->ne[0], m = t->n_dims > 1 ? t->ne[1] : 1;
    for (int i = 2; i < t->n_dims; i++) m *= t->ne[i];
    if (!lw__cu_computable(t->type))
        return lw__cu_fail(be, LW_MODEL_UNSUPPORTED_TYPE, "tensor type %s has no CUDA kernels", lw_type_get_info(t->type).name);
    if (k > INT32_MAX || m > INT32_MAX) return lw__cu_fail(be, LW_MODEL_BAD_TENSOR, "a %lld x %lld matrix is too large", (long long)m, (long long)k);
    size_t rows, scales, ld;
    lw__cu_mat_bytes(t->type, k, m, &rows, &scales, &ld);
    uint8_t* q = (uint8_t*)lw__cu_take(&U->cv, rows);
    uint16_t* s = scales ? (uint16_t*)lw__cu_take(&U->cv, scales) : NULL;
    size_t host_row = lw_type_row_size(t->type, k);
    if (pass == 0) {
        if (scales && host_row * (size_t)m > U->staging_size) U->staging_size = host_row * (size_t)m;
        return LW_OK;
    }
    memset(out, 0, sizeof *out);
    out->type = t->type;
    out->k = (int)k;
    out->m = (int)m;
    out->q = q;
    out->ld = ld;
    out->s = s;
    if (t->type == LW_TYPE_F32 || t->type == LW_TYPE_F16 || t->type == LW_TYPE_BF16) {
        LW_CUDA_CHECK(be, cudaMemcpy2DAsync(q, ld, t->data, host_row, host_row, (size_t)m, cudaMemcpyHostToDevice, be->stream));
    } else if (t->type == LW_TYPE_Q4_K) {
        LW_CUDA_CHECK(be, cudaMemcpyAsync(q, t->data, rows, cudaMemcpyHostToDevice, be->stream));
    } else {
        int bs = t->type == LW_TYPE_Q6_K ? 256 : 32;
        size_t n_blocks = (size_t)m * (size_t)(k / bs);
        LW_CUDA_CHECK(be, cudaMemcpyAsync(U->staging, t->data, host_row * (size_t)m, cudaMemcpyHostToDevice, be->stream));
        lw__k_repack<<<lw__cu_blocks(n_blocks, 256), 256, 0, be->stream>>>(t->type, U->staging, n_blocks, q, s);
        LW_CUDA_LAUNCHED(be, "repack");
    }
    return LW_OK;
}

static lw_result lw__cu_put_vec(lw__cu_upload* U, const lw__tensor* t, const float** out, int pass) {
    if (!t->data || !t->nbytes) { *out = NULL; return LW_OK; }
    uint8_t* p = (uint8_t*)lw__cu_take(&U->cv, t->nbytes);
    if (pass == 1) {
        LW_CUDA_CHECK(U->be, cudaMemcpyAsync(p, t->data, t->nbytes, cudaMemcpyHostToDevice, U->be->stream));
        *out = (const float*)p;
    }
    return LW_OK;
}

#define LW__CU_ABSMAX_CASE(T) case T: lw__k_absmax<T><<<grid, 256, 0, be->stream>>>(*W, out); break;
static lw_result lw__cu_launch_absmax(lw__cuda* be, const lw__cu_mat* W, unsigned* out) {
    int unit = W->type == LW_TYPE_F32 ? 4 : W->type == LW_TYPE_F16 || W->type == LW_TYPE_BF16 ? 8 : W->type == LW_TYPE_Q4_K || W->type == LW_TYPE_Q6_K ? 64 : 32;
    unsigned grid = lw__cu_blocks((size_t)(W->k + unit - 1) / unit * (size_t)W->m, 256);
    switch (W->type) {
        LW__CU_ABSMAX_CASE(LW_TYPE_F32)
        LW__CU_ABSMAX_CASE(LW_TYPE_BF16)
        LW__CU_ABSMAX_CASE(LW_TYPE_Q8_0)
        LW__CU_ABSMAX_CASE(LW_TYPE_Q4_0)
        LW__CU_ABSMAX_CASE(LW_TYPE_Q4_K)
        LW__CU_ABSMAX_CASE(LW_TYPE_Q6_K)
    default: return LW_OK;   // F16 always fits
    }
    LW_CUDA_LAUNCHED(be, "absmax");
    return LW_OK;
}

static void lw__cuda_model_release(void* self, void* prepared) {
    lw__cuda* be = (lw__cuda*)self;
    lw__cu_model* pm = (lw__cu_model*)prepared;
    if (!pm) return;
    cudaSetDevice(be->device);
    cudaStreamSynchronize(be->stream);
    if (pm->mem) cudaFree(pm->mem);
    free(pm->layers);
    free(pm);
}

static lw_result lw__cu_upload_all(lw__cu_upload* U, const lw__weights* w, lw__cu_model* pm, int pass) {
    lw_result r;
    const lw__config* c = &w->cfg;
    bool tied = w->output.data == w->tok_embd.data;
    if ((r = lw__cu_put_mat(U, &w->tok_embd, &pm->tok_embd, pass))) return r;
    if (!tied && (r = lw__cu_put_mat(U, &w->output, &pm->output, pass))) return r;
    if ((r = lw__cu_put_vec(U, &w->output_norm, &pm->output_norm, pass))) return r;
    if (w->rope_freq_factors) {
        lw__tensor t;
        memset(&t, 0, sizeof t);
        t.data = w->rope_freq_factors;
        t.nbytes = (size_t)(c->rope_dim / 2) * sizeof(float);
        if ((r = lw__cu_put_vec(U, &t, &pm->factors, pass))) return r;
    }
    for (int l = 0; l < c->n_layer; l++) {
        const lw__layer_weights* L = &w->layers[l];
        lw__cu_layer* D = &pm->layers[l];
        const lw__tensor* src[7] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down };
        lw__cu_mat* dst[7] = { &D->wq, &D->wk, &D->wv, &D->wo, &D->gate, &D->up, &D->down };
        for (int i = 0; i < 7; i++)
            if ((r = lw__cu_put_mat(U, src[i], dst[i], pass))) return r;
        if ((r = lw__cu_put_vec(U, &L->attn_norm, &D->attn_norm, pass)) || (r = lw__cu_put_vec(U, &L->ffn_norm, &D->ffn_norm, pass)) ||
            (r = lw__cu_put_vec(U, &L->bq, &D->bq, pass)) || (r = lw__cu_put_vec(U, &L->bk, &D->bk, pass)) ||
            (r = lw__cu_put_vec(U, &L->bv, &D->bv, pass)))
            return r;
    }
    if (pass == 1 && tied) pm->output = pm->tok_embd;
    return LW_OK;
}

// Which matrices take BF16 for their GEMMs (a value beyond F16's range, measured on the device), and the
// GEMM scratch: the largest matrix that is not used in place, as 16-bit values.
static lw_result lw__cu_gemm_flags(lw__cuda* be, lw__cu_model* pm) {
    int nm = 1 + 7 * pm->cfg.n_layer;
    lw__cu_mat** mats = (lw__cu_mat**)malloc(sizeof(lw__cu_mat*) * (size_t)nm);
    unsigned* hmax = (unsigned*)malloc(sizeof(unsigned) * (size_t)nm);
    unsigned* dmax = NULL;
    lw_result r = LW_OK;
    if (!mats || !hmax) r = lw__cu_fail(be, LW_OUT_OF_MEMORY, "out of host memory");
    for (int l = 0, i = 1; r == LW_OK && l < pm->cfg.n_layer; l++) {
        lw__cu_layer* D = &pm->layers[l];
        lw__cu_mat* ls[7] = { &D->wq, &D->wk, &D->wv, &D->wo, &D->gate, &D->up, &D->down };
        for (int t = 0; t < 7; t++) mats[i++] = ls[t];
    }
    if (r == LW_OK) {
        mats[0] = &pm->output;
        cudaError_t e = cudaMalloc((void**)&dmax, sizeof(unsigned) * (size_t)nm);
        if (e == cudaSuccess) e = cudaMemsetAsync(dmax, 0, sizeof(unsigned) * (size_t)nm, be->stream);
        if (e != cudaSuccess) r = lw__cu_err(be, e, "cudaMalloc", __LINE__);
        for (int i = 0; i < nm && r == LW_OK; i++) r = lw__cu_launch_absmax(be, mats[i], dmax + i);
        if (r == LW_OK) e = cudaMemcpyAsync(hmax, dmax, sizeof(unsigned) * (size_t)nm, cudaMemcpyDeviceToHost, be->stream);
        if (r == LW_OK && e == cudaSuccess) e = cudaStreamSynchronize(be->stream);
        if (r == LW_OK && e != cudaSuccess) r = lw__cu_err(be, e, "upload", __LINE__);
    }
    for (int i = 0; r == LW_OK && i < nm; i++) {
        float mx;
        memcpy(&mx, &hmax[i], 4);
        lw__cu_mat* W = mats[i];
        W->gemm_bf16 = !(mx <= 65504.0f);
        bool bf16 = W->gemm_bf16 || be->force_bf16;
        bool in_place = (W->type == LW_TYPE_F16 && !bf16) || (W->type == LW_TYPE_BF16 && bf16);
        size_t bytes = (size_t)lw__cu_ld(W->k) * (size_t)W->m * 2;
        if (!in_place && bytes > pm->gemm_scratch) pm->gemm_scratch = bytes;
    }
    if (r == LW_OK && pm->output.q == pm->tok_embd.q) pm->tok_embd.gemm_bf16 = pm->output.gemm_bf16;
    if (dmax) cudaFree(dmax);
    free(mats);
    free(hmax);
    return r;
}

static lw_result lw__cuda_model_prepare(void* self, const lw__weights* w, void** out) {
    lw__cuda* be = (lw__cuda*)self;
    const lw__config* c = &w->cfg;
    *out = NULL;
    LW_CUDA_CHECK(be, cudaSetDevice(be->device));
    if (c->head_dim > LW__CU_MAX_HD)
        return lw__cu_fail(be, LW_MODEL_UNSUPPORTED_TYPE, "head_dim %d: the CUDA attention takes at most %d", c->head_dim, LW__CU_MAX_HD);
    if (c->n_head_kv < 1 || c->n_head % c->n_head_kv)
        return lw__cu_fail(be, LW_MODEL_BAD_TENSOR, "%d query heads do not group over %d KV heads", c->n_head, c->n_head_kv);
    lw__cu_model* pm = (lw__cu_model*)calloc(1, sizeof(lw__cu_model));
    lw__cu_upload* U = (lw__cu_upload*)calloc(1, sizeof(lw__cu_upload));
    lw_result r = LW_OK;
    if (!pm || !U || !(pm->layers = (lw__cu_layer*)calloc((size_t)(c->n_layer > 0 ? c->n_layer : 1), sizeof(lw__cu_layer)))) {
        free(U);
        lw__cuda_model_release(be, pm);
        return lw__cu_fail(be, LW_OUT_OF_MEMORY, "out of host memory for the model's tables");
    }
    pm->cfg = *c;
    pm->theta_scale = powf(c->rope_base, -2.0f / (float)c->rope_dim);   // the CPU's expression, on the host
    U->be = be;
    size_t free_b = 0, total_b = 0;
    if ((r = lw__cu_upload_all(U, w, pm, 0))) goto done;   // sizes
    cudaMemGetInfo(&free_b, &total_b);
    if (cudaMalloc((void**)&pm->mem, U->cv.off) != cudaSuccess) {
        (void)cudaGetLastError();
        r = lw__cu_fail(be, LW_OUT_OF_MEMORY, "out of device memory for the weights: %zu bytes needed, %zu free of %zu", U->cv.off, free_b, total_b);
        goto done;
    }
    pm->mem_size = U->cv.off;
    if (U->staging_size && cudaMalloc((void**)&U->staging, U->staging_size) != cudaSuccess) {
        (void)cudaGetLastError();
        r = lw__cu_fail(be, LW_OUT_OF_MEMORY, "out of device memory for %zu bytes of upload staging", U->staging_size);
        goto done;
    }
    if (cudaMemsetAsync(pm->mem, 0, pm->mem_size, be->stream) != cudaSuccess) { r = lw__cu_err(be, cudaGetLastError(), "memset", __LINE__); goto done; }
    U->cv.base = pm->mem;
    U->cv.off = 0;
    if ((r = lw__cu_upload_all(U, w, pm, 1))) goto done;
    if ((r = lw__cu_gemm_flags(be, pm))) goto done;
done:
    if (U->staging) cudaFree(U->staging);
    free(U);
    if (r) { lw__cuda_model_release(be, pm); return r; }
    *out = pm;
    return LW_OK;
}

// ---- the KV pool ----------------------------------------------------------------------------------------

static lw_result lw__cuda_kv_alloc(void* self, size_t bytes, void** out) {
    lw__cuda* be = (lw__cuda*)self;
    *out = NULL;
    LW_CUDA_CHECK(be, cudaSetDevice(be->device));
    void* p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        return lw__cu_fail(be, lw__cu_code(e), "a KV pool of %zu bytes: %s (%zu bytes free of %zu)", bytes, cudaGetErrorString(e), free_b, total_b);
    }
    e = cudaMemset(p, 0, bytes);   // defined contents (the CPU's pool is never read before written either)
    if (e != cudaSuccess) { cudaFree(p); return lw__cu_err(be, e, "cudaMemset", __LINE__); }
    *out = p;
    return LW_OK;
}

static void lw__cuda_kv_free(void* self, void* pool) {
    lw__cuda* be = (lw__cuda*)self;
    cudaSetDevice(be->device);
    cudaStreamSynchronize(be->stream);
    cudaFree(pool);
}

static lw_result lw__cuda_kv_copy(void* self, void* pool, size_t dst, size_t src, size_t bytes) {
    lw__cuda* be = (lw__cuda*)self;
    LW_CUDA_CHECK(be, cudaSetDevice(be->device));
    LW_CUDA_CHECK(be, cudaMemcpyAsync((uint8_t*)pool + dst, (const uint8_t*)pool + src, bytes, cudaMemcpyDeviceToDevice, be->stream));
    return LW_OK;
}

// ---- vtable ---------------------------------------------------------------------------------------------

static int lw__cuda_n_threads(void* self) { (void)self; return 1; }

static void lw__cuda_destroy(void* self) {
    lw__cuda* be = (lw__cuda*)self;
    if (!be) return;
    cudaSetDevice(be->device);
    if (be->stream) cudaStreamSynchronize(be->stream);
    if (be->scratch) cudaFree(be->scratch);
    if (be->wscratch) cudaFree(be->wscratch);
    if (be->meta_host) cudaFreeHost(be->meta_host);
    if (be->blas) cublasDestroy(be->blas);
    if (be->stream) cudaStreamDestroy(be->stream);
    free(be);
}

extern "C" const char* lw__cuda_last_error(void* self);

static const lw__backend_i lw__cuda_backend_i = {
    /* .name          = */ "cuda",
    /* .destroy       = */ lw__cuda_destroy,
    /* .model_prepare = */ lw__cuda_model_prepare,
    /* .model_release = */ lw__cuda_model_release,
    /* .kv_alloc      = */ lw__cuda_kv_alloc,
    /* .kv_free       = */ lw__cuda_kv_free,
    /* .kv_copy       = */ lw__cuda_kv_copy,
    /* .forward       = */ lw__cuda_forward,
    /* .n_threads     = */ lw__cuda_n_threads,
    /* .last_error    = */ lw__cuda_last_error,
};

static void lw__cu_copy_err(char* err, size_t err_size, const char* msg) {
    if (err && err_size) snprintf(err, err_size, "%s", msg);
}

// The attention kernels may use more than 48 KiB of shared memory (head_dim up to 256).
static cudaError_t lw__cu_set_smem(void) {
    cudaError_t e = cudaSuccess;
#define LW__CU_SMEM(NI) \
    if (e == cudaSuccess) e = cudaFuncSetAttribute(lw__k_attn<NI, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)LW__CU_ATT_SMEM(32 * NI, NI)); \
    if (e == cudaSuccess) e = cudaFuncSetAttribute(lw__k_attn<NI, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)LW__CU_ATT_SMEM(32 * NI, NI));
    LW__CU_SMEM(1) LW__CU_SMEM(2) LW__CU_SMEM(4) LW__CU_SMEM(8)
#undef LW__CU_SMEM
    return e;
}

extern "C" lw_result lw__cuda_backend_create(int device, const lw__backend_i** vtable, void** self, char* err, size_t err_size) {
    if (vtable) *vtable = NULL;
    if (self) *self = NULL;
    if (!vtable || !self) { lw__cu_copy_err(err, err_size, "lw__cuda_backend_create: NULL argument"); return LW_INVALID_ARGS; }
    char msg[256];
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        snprintf(msg, sizeof msg, "no CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount found none");
        lw__cu_copy_err(err, err_size, msg);
        return LW_BACKEND_UNAVAILABLE;
    }
    if (device < 0 || device >= count) {
        snprintf(msg, sizeof msg, "device %d does not exist (%d CUDA device%s)", device, count, count == 1 ? "" : "s");
        lw__cu_copy_err(err, err_size, msg);
        return LW_BACKEND_UNAVAILABLE;
    }
    lw__cuda* be = (lw__cuda*)calloc(1, sizeof(lw__cuda));
    if (!be) { lw__cu_copy_err(err, err_size, "out of host memory"); return LW_OUT_OF_MEMORY; }
    be->device = device;
    lw_result r = LW_OK;
    cudaDeviceProp prop;
    cudaFuncAttributes fa;
    if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
        r = lw__cu_err(be, e, "device setup", __LINE__);
    } else if ((e = cudaFuncGetAttributes(&fa, lw__k_rmsnorm)) != cudaSuccess) {   // is there code for this GPU?
        (void)cudaGetLastError();
        r = lw__cu_fail(be, LW_BACKEND_UNAVAILABLE, "%s is sm_%d%d and this build of llmwall_cuda.cu has no code it can run (%s); rebuild with its -gencode",
                        prop.name, prop.major, prop.minor, cudaGetErrorString(e));
    } else if ((e = lw__cu_set_smem()) != cudaSuccess || (e = cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        r = lw__cu_err(be, e, "stream", __LINE__);
    } else {
        cublasStatus_t s = cublasCreate(&be->blas);
        if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetStream(be->blas, be->stream);
        if (s != CUBLAS_STATUS_SUCCESS) r = lw__cu_blas_err(be, s, "cublasCreate", __LINE__);
    }
    if (r) {
        lw__cu_copy_err(err, err_size, be->err);
        lw__cuda_destroy(be);
        return r;
    }
    be->n_sm = prop.multiProcessorCount;
    be->smem_optin = prop.sharedMemPerBlockOptin;
    const char* g = getenv("LLMWALL_CUDA_GEMM");
    be->force_bf16 = g && strcmp(g, "bf16") == 0;
    *vtable = &lw__cuda_backend_i;
    *self = be;
    return LW_OK;
}

// The detail of the backend's last failure ("" when none): for messages the vtable cannot carry.
extern "C" const char* lw__cuda_last_error(void* self) { return self ? ((lw__cuda*)self)->err : ""; }

// For tests/test_cuda.c: y[n][m] = x[n][k] . W^T through the forward's own dispatch (matrix-vector
// kernels for n <= 8, cuBLAS above), W given as m rows of k in GGUF layout (type `type`).
extern "C" lw_result lw__cuda_test_matmul(void* self, int type, int k, int m, int n, const void* w, const float* x, float* y) {
    lw__cuda* be = (lw__cuda*)self;
    if (!be || k < 1 || m < 1 || n < 1 || !w || !x || !y) return LW_INVALID_ARGS;
    LW_CUDA_CHECK(be, cudaSetDevice(be->device));
    lw__cu_upload U;
    memset(&U, 0, sizeof U);
    U.be = be;
    lw__tensor t;
    memset(&t, 0, sizeof t);
    t.type = (lw_type)type;
    t.n_dims = 2;
    t.ne[0] = k; t.ne[1] = m; t.ne[2] = t.ne[3] = 1;
    t.nbytes = lw_type_row_size((lw_type)type, k) * (size_t)m;
    t.data = w;
    lw__cu_mat W;
    lw__cu_act act;
    memset(&act, 0, sizeof act);
    uint8_t* mem = NULL;
    float *xd = NULL, *yd = NULL;
    const int lda = (int)lw__cu_round((size_t)k, 256), ldx = lw__cu_ld(k);
    lw_result r = lw__cu_put_mat(&U, &t, &W, 0);   // its bytes (and staging) first
    lw__cu_carve cv = { U.cv.off, NULL };
    for (int pass = 0; pass < 2 && r == LW_OK; pass++) {
        if (pass == 1) {
            cudaError_t e = cudaMalloc((void**)&mem, cv.off);
            if (e == cudaSuccess && U.staging_size) e = cudaMalloc((void**)&U.staging, U.staging_size);
            if (e != cudaSuccess) { r = lw__cu_err(be, e, "cudaMalloc", __LINE__); break; }
            cv.base = mem;
            cv.off = U.cv.off;
        }
        xd = (float*)lw__cu_take(&cv, (size_t)n * ldx * 4);
        yd = (float*)lw__cu_take(&cv, (size_t)n * m * 4);
        act = lw__cu_take_act(&cv, n, lda);
    }
    if (r == LW_OK) {
        U.cv.base = mem;
        U.cv.off = 0;
        r = lw__cu_put_mat(&U, &t, &W, 1);
    }
    if (r == LW_OK && !lw__cu_use_mv(type, n)) {   // the forward decides BF16 by the values; here F16 (or the override)
        bool bf16 = be->force_bf16;
        bool in_place = (type == LW_TYPE_F16 && !bf16) || (type == LW_TYPE_BF16 && bf16);
        if (!in_place) r = lw__cu_reserve(be, &be->wscratch, &be->wscratch_size, (size_t)lw__cu_ld(k) * m * 2, false);
    }
    if (r == LW_OK) {
        cudaError_t e = cudaMemcpy2DAsync(xd, (size_t)ldx * 4, x, (size_t)k * 4, (size_t)k * 4, (size_t)n, cudaMemcpyHostToDevice, be->stream);
        if (e != cudaSuccess) r = lw__cu_err(be, e, "cudaMemcpy2DAsync", __LINE__);
    }
    if (r == LW_OK && lw__cu_mv_wants(&W, n)) {
        lw__k_quant<<<n, 256, 0, be->stream>>>(xd, ldx, k, lw__cu_mv_wants(&W, n), act);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) r = lw__cu_err(be, e, "launch of quant", __LINE__);
    }
    if (r == LW_OK) {
        const lw__cu_mat* Wp[1] = { &W };
        float* yp[1] = { yd };
        int ldy[1] = { m };
        r = lw__cu_matmul(be, Wp, yp, ldy, 1, xd, ldx, n, false, false, &act);
    }
    if (r == LW_OK) {
        cudaError_t e = cudaMemcpyAsync(y, yd, (size_t)n * m * 4, cudaMemcpyDeviceToHost, be->stream);
        if (e == cudaSuccess) e = cudaStreamSynchronize(be->stream);
        if (e != cudaSuccess) r = lw__cu_err(be, e, "test matmul", __LINE__);
    }
    cudaStreamSynchronize(be->stream);
    if (U.staging) cudaFree(U.staging);
    if (mem) cudaFree(mem);
    return r;
}

// For tools/bench: the device's name and its measured peaks: a device-to-device copy (GB/s counting the
// bytes read and written) and a large F16 GEMM with F32 accumulation through cuBLAS (TFLOP/s); best of
// several runs each.
extern "C" lw_result lw__cuda_measure_peaks(int device, double* copy_gbs, double* gemm_tflops, char* name, size_t name_size, char* err,
                                           size_t err_size) {
    lw__cuda tmp;
    memset(&tmp, 0, sizeof tmp);
    lw__cuda* be = &tmp;
    *copy_gbs = *gemm_tflops = 0.0;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || device < 0 || device >= count) {
        (void)cudaGetLastError();
        lw__cu_copy_err(err, err_size, e != cudaSuccess ? cudaGetErrorString(e) : "no such CUDA device");
        return LW_BACKEND_UNAVAILABLE;
    }
    cudaDeviceProp prop;
    lw_result r = LW_OK;
    void *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t t0 = NULL, t1 = NULL;
    cublasHandle_t h = NULL;
    size_t free_b = 0, total_b = 0, bytes;
    int N = 8192;
    float ms, best;
#define LW__CU_PEAK(call) do { if ((e = (call)) != cudaSuccess) { r = lw__cu_err(be, e, #call, __LINE__); goto done; } } while (0)
    LW__CU_PEAK(cudaSetDevice(device));
    LW__CU_PEAK(cudaGetDeviceProperties(&prop, device));
    if (name && name_size) snprintf(name, name_size, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                                    (double)prop.totalGlobalMem / (1 << 30));
    LW__CU_PEAK(cudaMemGetInfo(&free_b, &total_b));
    bytes = (size_t)1 << 30;
    while (bytes > ((size_t)1 << 24) && 2 * bytes > free_b / 2) bytes /= 2;
    LW__CU_PEAK(cudaMalloc(&a, bytes));
    LW__CU_PEAK(cudaMalloc(&b, bytes));
    LW__CU_PEAK(cudaEventCreate(&t0));
    LW__CU_PEAK(cudaEventCreate(&t1));
    LW__CU_PEAK(cudaMemset(a, 1, bytes));
    best = 1e30f;
    for (int rep = 0; rep < 11; rep++) {
        LW__CU_PEAK(cudaEventRecord(t0));
        LW__CU_PEAK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
        LW__CU_PEAK(cudaEventRecord(t1));
        LW__CU_PEAK(cudaEventSynchronize(t1));
        LW__CU_PEAK(cudaEventElapsedTime(&ms, t0, t1));
        if (rep > 0 && ms < best) best = ms;   // the first run warms up
    }
    *copy_gbs = 2.0 * (double)bytes / (best * 1e-3) / 1e9;
    cudaFree(a); cudaFree(b);
    a = b = NULL;
    while (N > 1024 && (size_t)N * N * 8 > free_b / 2) N /= 2;
    LW__CU_PEAK(cudaMalloc(&a, (size_t)N * N * 2));
    LW__CU_PEAK(cudaMalloc(&b, (size_t)N * N * 2));
    LW__CU_PEAK(cudaMalloc(&c, (size_t)N * N * 4));
    LW__CU_PEAK(cudaMemset(a, 0x3c, (size_t)N * N * 2));   // halves near 1
    LW__CU_PEAK(cudaMemset(b, 0x3c, (size_t)N * N * 2));
    {
        cublasStatus_t s = cublasCreate(&h);
        if (s != CUBLAS_STATUS_SUCCESS) { r = lw__cu_blas_err(be, s, "cublasCreate", __LINE__); goto done; }
        const float alpha = 1.0f, beta = 0.0f;
        best = 1e30f;
        for (int rep = 0; rep < 6 && r == LW_OK; rep++) {
            LW__CU_PEAK(cudaEventRecord(t0));
            s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &alpha, a, CUDA_R_16F, N, b, CUDA_R_16F, N, &beta, c, CUDA_R_32F, N,
                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (s != CUBLAS_STATUS_SUCCESS) { r = lw__cu_blas_err(be, s, "cublasGemmEx", __LINE__); goto done; }
            LW__CU_PEAK(cudaEventRecord(t1));
            LW__CU_PEAK(cudaEventSynchronize(t1));
            LW__CU_PEAK(cudaEventElapsedTime(&ms, t0, t1));
            if (rep > 0 && ms < best) best = ms;
        }
        *gemm_tflops = 2.0 * (double)N * N * N / (best * 1e-3) / 1e12;
    }
#undef LW__CU_PEAK
done:
    if (h) cublasDestroy(h);
    if (a) cudaFree(a);
    if (b) cudaFree(b);
    if (c) cudaFree(c);
    if (t0) cudaEventDestroy(t0);
    if (t1) cudaEventDestroy(t1);
    if (r) lw__cu_copy_err(err, err_size, be->err);
    return r;
}
