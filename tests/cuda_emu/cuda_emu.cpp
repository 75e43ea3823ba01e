// tests/cuda_emu: the fibers, barriers, device memory and GemmEx behind cuda_runtime.h (see there)
#include "cuda_runtime.h"
#include <map>
#include <vector>

dim3 threadIdx, blockIdx, blockDim, gridDim;
size_t lw_emu_budget = (size_t)4 << 30;

// ---- device memory: host memory, with a budget so that "out of device memory" can be tested

static std::map<void*, size_t> lw_emu_blocks;
static size_t lw_emu_used;

cudaError_t lw_emu_malloc(void** p, size_t n) {
    *p = NULL;
    if (n > lw_emu_budget - lw_emu_used) return cudaErrorMemoryAllocation;
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    lw_emu_blocks[*p] = n;
    lw_emu_used += n;
    return cudaSuccess;
}
cudaError_t lw_emu_free(void* p) {
    if (!p) return cudaSuccess;
    std::map<void*, size_t>::iterator it = lw_emu_blocks.find(p);
    if (it == lw_emu_blocks.end()) { fprintf(stderr, "cuda_emu: cudaFree of %p, not a device allocation\n", p); abort(); }
    lw_emu_used -= it->second;
    lw_emu_blocks.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
    *free_b = lw_emu_budget - lw_emu_used;
    *total_b = lw_emu_budget;
    return cudaSuccess;
}

// ---- cuBLAS GemmEx: C (m x n, column-major, ldc) = alpha op(A) op(B) + beta C, 16-bit or float inputs

static float lw_emu_load(const void* p, cudaDataType_t t, size_t i) {
    uint16_t h;
    if (t == CUDA_R_32F) return ((const float*)p)[i];
    h = ((const uint16_t*)p)[i];
    return t == CUDA_R_16F ? __half2float(__ushort_as_half(h)) : __uint_as_float((uint32_t)h << 16);
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha, const void* A,
                            cudaDataType_t at, int lda, const void* B, cudaDataType_t bt, int ldb, const void* beta, void* C, cudaDataType_t ct,
                            int ldc, cublasComputeType_t, cublasGemmAlgo_t) {
    if (ct != CUDA_R_32F || m < 0 || n < 0 || k < 0 || ldc < m || lda < (ta ? k : m) || ldb < (tb ? n : k)) return CUBLAS_STATUS_INVALID_VALUE;
    float al = *(const float*)alpha, be = *(const float*)beta;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float s = 0.0f;
            for (int l = 0; l < k; l++) {
                float a = lw_emu_load(A, at, ta ? (size_t)i * lda + l : (size_t)l * lda + i);
                float b = lw_emu_load(B, bt, tb ? (size_t)l * ldb + j : (size_t)j * ldb + l);
                s += a * b;
            }
            float* c = (float*)C + (size_t)j * ldc + i;
            *c = al * s + (be != 0.0f ? be * *c : 0.0f);
        }
    return CUBLAS_STATUS_SUCCESS;
}

// ---- fibers: the threads of one block

enum { LW_EMU_STACK = 256 * 1024, LW_EMU_MAX_THREADS = 1024 };

// The switch between fibers: on x86-64 a few instructions (callee-saved registers and the stack pointer);
// elsewhere ucontext's swapcontext (which also saves the signal mask: a system call, so slower).
#if defined(__x86_64__) && !defined(LW_EMU_UCONTEXT)
typedef struct lw_emu_ctx { void* sp; } lw_emu_ctx;
extern "C" void lw_emu_switch(void** save_sp, void* to_sp);
__asm__(".text\n.globl lw_emu_switch\n.type lw_emu_switch,@function\nlw_emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n"
        ".size lw_emu_switch, .-lw_emu_switch\n");
static void lw_emu_ctx_swap(lw_emu_ctx* from, lw_emu_ctx* to) { lw_emu_switch(&from->sp, to->sp); }
static void lw_emu_ctx_make(lw_emu_ctx* c, char* stack, size_t size, void (*entry)(void)) {
    uintptr_t top = ((uintptr_t)(stack + size)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = NULL;              // where entry would return to (it never returns)
    *--sp = (void*)entry;      // lw_emu_switch's ret goes here, with the stack as after a call
    for (int i = 0; i < 6; i++) *--sp = NULL;   // rbp rbx r12 r13 r14 r15
    c->sp = sp;
}
#else
typedef ucontext_t lw_emu_ctx;
static void lw_emu_ctx_swap(lw_emu_ctx* from, lw_emu_ctx* to) { swapcontext(from, to); }
static void lw_emu_ctx_make(lw_emu_ctx* c, char* stack, size_t size, void (*entry)(void)) {
    getcontext(c);
    c->uc_stack.ss_sp = stack;
    c->uc_stack.ss_size = size;
    c->uc_link = NULL;
    makecontext(c, entry, 0);
}
#endif

typedef struct lw_emu_fiber {
    lw_emu_ctx ctx;
    int        state;        // 0 runnable, 1 waiting at __syncthreads, 2 done, 3 waiting at a warp shuffle
    unsigned   tid;
} lw_emu_fiber;

static lw_emu_fiber* lw_emu_f;          // [threads of the block]
static char*         lw_emu_stacks;
static lw_emu_ctx    lw_emu_sched;
static int           lw_emu_cur, lw_emu_n, lw_emu_live;
static const std::function<void()>* lw_emu_fn;
static std::vector<char> lw_emu_smem;
// block barrier
static int           lw_emu_bar_count;
// warp exchanges: per warp, the lanes arrived and their values (double-buffered by a per-lane parity)
static int           lw_emu_warp_count[LW_EMU_MAX_THREADS / 32];
static unsigned char lw_emu_warp_val[LW_EMU_MAX_THREADS / 32][2][32][16];
static int           lw_emu_warp_parity[LW_EMU_MAX_THREADS];

void* lw_emu_dynamic_smem(void) { return lw_emu_smem.data(); }

static void lw_emu_set_thread(int i) {
    lw_emu_cur = i;
    unsigned t = lw_emu_f[i].tid;
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

static void lw_emu_yield(void) {   // back to the scheduler until released
    int me = lw_emu_cur;
    lw_emu_ctx_swap(&lw_emu_f[me].ctx, &lw_emu_sched);
    lw_emu_set_thread(me);
}

static int lw_emu_warp_live(int w) {
    int live = 0;
    for (int i = 32 * w; i < 32 * w + 32 && i < lw_emu_n; i++) live += lw_emu_f[i].state != 2;
    return live;
}

// Releases a barrier whose live threads have all arrived (exited threads count as arrived, as on a GPU).
static bool lw_emu_check_block(void) {
    if (lw_emu_bar_count == 0 || lw_emu_bar_count < lw_emu_live) return false;
    lw_emu_bar_count = 0;
    for (int i = 0; i < lw_emu_n; i++)
        if (lw_emu_f[i].state == 1) lw_emu_f[i].state = 0;
    return true;
}
static bool lw_emu_check_warp(int w) {
    if (lw_emu_warp_count[w] == 0 || lw_emu_warp_count[w] < lw_emu_warp_live(w)) return false;
    lw_emu_warp_count[w] = 0;
    for (int i = 32 * w; i < 32 * w + 32 && i < lw_emu_n; i++)
        if (lw_emu_f[i].state == 3) lw_emu_f[i].state = 0;
    return true;
}

void lw_emu_syncthreads(void) {
    int me = lw_emu_cur;
    lw_emu_bar_count++;
    if (lw_emu_check_block()) return;   // the last one releases everyone
    lw_emu_f[me].state = 1;
    lw_emu_yield();
}

void lw_emu_warp_exchange(const void* mine, void* all, size_t size) {
    int me = lw_emu_cur, w = me / 32, lane = me % 32, par = lw_emu_warp_parity[me];
    lw_emu_warp_parity[me] ^= 1;
    memcpy(lw_emu_warp_val[w][par][lane], mine, size);
    lw_emu_warp_count[w]++;
    if (!lw_emu_check_warp(w)) {
        lw_emu_f[me].state = 3;
        lw_emu_yield();
    }
    for (int l = 0; l < 32; l++) memcpy((char*)all + l * size, lw_emu_warp_val[w][par][l], size);
}

static void lw_emu_entry(void) {
    (*lw_emu_fn)();
    int me = lw_emu_cur;
    lw_emu_f[me].state = 2;
    lw_emu_live--;
    lw_emu_check_block();   // the others may now be complete
    lw_emu_check_warp(me / 32);
    lw_emu_ctx_swap(&lw_emu_f[me].ctx, &lw_emu_sched);
}

void lw_emu_run(dim3 grid, dim3 block, size_t smem, const char* what, const std::function<void()>& fn) {
    int n = (int)(block.x * block.y * block.z);
    if (n < 1 || n > LW_EMU_MAX_THREADS || grid.x < 1 || grid.y < 1 || grid.z < 1) {
        fprintf(stderr, "cuda_emu: %s launched with grid %u x %u x %u, block of %d threads\n", what, grid.x, grid.y, grid.z, n);
        abort();
    }
    if (!lw_emu_f) {
        lw_emu_f = (lw_emu_fiber*)calloc(LW_EMU_MAX_THREADS, sizeof(lw_emu_fiber));
        lw_emu_stacks = (char*)malloc((size_t)LW_EMU_MAX_THREADS * LW_EMU_STACK);
    }
    lw_emu_smem.assign(smem + 16, 0);
    gridDim = grid;
    blockDim = block;
    lw_emu_fn = &fn;
    lw_emu_n = n;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx.x = bx; blockIdx.y = by; blockIdx.z = bz;
                memset(lw_emu_smem.data(), 0xcd, lw_emu_smem.size());   // garbage, as on a GPU
                for (int i = 0; i < n; i++) {
                    lw_emu_fiber* f = &lw_emu_f[i];
                    f->state = 0;
                    f->tid = (unsigned)i;
                    lw_emu_warp_parity[i] = 0;
                    lw_emu_ctx_make(&f->ctx, lw_emu_stacks + (size_t)i * LW_EMU_STACK, LW_EMU_STACK, lw_emu_entry);
                }
                memset(lw_emu_warp_count, 0, sizeof lw_emu_warp_count);
                lw_emu_bar_count = 0;
                lw_emu_live = n;
                while (lw_emu_live > 0) {
                    int ran = 0;
                    for (int i = 0; i < n; i++) {
                        if (lw_emu_f[i].state != 0) continue;
                        lw_emu_set_thread(i);
                        lw_emu_ctx_swap(&lw_emu_sched, &lw_emu_f[i].ctx);
                        ran++;
                    }
                    if (!ran && lw_emu_live > 0) {
                        // a barrier that the exited threads can no longer complete, or a deadlock
                        int waiting = 0;
                        for (int i = 0; i < n; i++) waiting += lw_emu_f[i].state == 1 || lw_emu_f[i].state == 3;
                        fprintf(stderr, "cuda_emu: block (%u,%u,%u) of a %s deadlocks: %d threads wait at a barrier or shuffle, %d live\n", bx, by,
                                bz, what, waiting, lw_emu_live);
                        abort();
                    }
                }
            }
}
