// wick's CUDA kernels: the fused ops of a BERT training step that Candle would otherwise run as
// tens of primitive kernels each (and accumulate, in backward, into freshly zeroed buffers).
//
// Compiled to PTX by crates/model/build.rs when the `cuda` feature is on; launched from
// crates/model/src/cuda.rs, which documents each op. Conventions:
// - activations are `T` (f32, bf16 or f16), parameters and their gradients f32, arithmetic f32;
// - every tensor is contiguous and row-major; a "row" is the last dimension;
// - dropout masks are counter-based: element `i` (flat index) is kept when
//   keep_hash(key, i) >= threshold, and then scaled by 1 / (1 - p). The hash is the CPU's
//   (crates/model/src/simd.rs), so both devices draw the same mask for the same key;
// - reductions run in a fixed order (no atomics), so results do not vary from run to run.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// A dropout mask (see the header). `on == 0`: every factor is 1.
struct Drop {
    uint32_t lo, hi, threshold;
    float scale;
    int on;
    __device__ __forceinline__ float factor(uint32_t i) const {
        if (!on) return 1.0f;
        return mix32(mix32(i ^ lo) + hi) >= threshold ? scale : 0.0f;
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

__device__ __forceinline__ int global_warp() {
    return (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
}

// ---------------------------------------------------------------------------------------------
// Layer norm of `dropout(a) + x` (x optional) over rows of `cols <= 32 K` values: one warp per
// row, lane l holding columns l, l + 32, ... in registers.

template <typename T, int K>
__device__ __forceinline__ void load_sum(float (&v)[K], const T* a, const T* x, int has_x,
                                         size_t base, int cols, Drop drop) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = lane + 32 * k;
        float s = 0.0f;
        if (c < cols) {
            size_t i = base + c;
            s = to_f(a[i]) * drop.factor((uint32_t)i);
            if (has_x) s += to_f(x[i]);
        }
        v[k] = s;
    }
}

template <int K>
__device__ __forceinline__ void row_stats(const float (&v)[K], int cols, float eps, float& mean,
                                          float& rstd) {
    int lane = threadIdx.x & 31;
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) sum += v[k];
    mean = warp_sum(sum) / cols;
    float sq = 0.0f;
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = lane + 32 * k;
        if (c < cols) {
            float d = v[k] - mean;
            sq += d * d;
        }
    }
    rstd = rsqrtf(warp_sum(sq) / cols + eps);
}

template <typename T, int K>
__device__ void ln_fwd(const T* a, const T* x, int has_x, const float* w, const float* b, T* y,
                       int rows, int cols, float eps, Drop drop) {
    int row = global_warp();
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    size_t base = (size_t)row * cols;
    float v[K];
    load_sum<T, K>(v, a, x, has_x, base, cols, drop);
    float mean, rstd;
    row_stats<K>(v, cols, eps, mean, rstd);
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = lane + 32 * k;
        if (c < cols) y[base + c] = from_f<T>(fmaf((v[k] - mean) * rstd, w[c], b[c]));
    }
}

// Backward: each warp takes `rows_per_warp` consecutive rows, writes the input gradient `gx`
// (and `ga = gx * mask` when dropout was on) and its rows' partial sums of the weight and bias
// gradients to `partials[warp] = [gw (cols), gb (cols)]`, summed by `sum_partials`.
template <typename T, int K>
__device__ void ln_bwd(const T* a, const T* x, int has_x, const float* w, const T* gy, T* gx,
                       T* ga, float* partials, int rows, int cols, int rows_per_warp, float eps,
                       Drop drop) {
    int warp = global_warp();
    int first = warp * rows_per_warp;
    if (first >= rows) return;
    int lane = threadIdx.x & 31;
    float acc_w[K], acc_b[K];
#pragma unroll
    for (int k = 0; k < K; k++) acc_w[k] = acc_b[k] = 0.0f;
    int last = min(rows, first + rows_per_warp);
    for (int row = first; row < last; row++) {
        size_t base = (size_t)row * cols;
        float v[K];
        load_sum<T, K>(v, a, x, has_x, base, cols, drop);
        float mean, rstd;
        row_stats<K>(v, cols, eps, mean, rstd);
        float g[K];
        float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int c = lane + 32 * k;
            float dy = 0.0f, wc = 0.0f;
            if (c < cols) {
                dy = to_f(gy[base + c]);
                wc = w[c];
            }
            v[k] = (v[k] - mean) * rstd;  // v now holds xhat
            acc_w[k] = fmaf(dy, v[k], acc_w[k]);
            acc_b[k] += dy;
            g[k] = dy * wc;
            sum_g += g[k];
            sum_gx += g[k] * v[k];
        }
        float mean_g = warp_sum(sum_g) / cols;
        float mean_gx = warp_sum(sum_gx) / cols;
#pragma unroll
        for (int k = 0; k < K; k++) {
            int c = lane + 32 * k;
            if (c < cols) {
                float d = rstd * (g[k] - mean_g - v[k] * mean_gx);
                gx[base + c] = from_f<T>(d);
                if (drop.on) ga[base + c] = from_f<T>(d * drop.factor((uint32_t)(base + c)));
            }
        }
    }
    float* out = partials + (size_t)warp * 2 * cols;
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = lane + 32 * k;
        if (c < cols) {
            out[c] = acc_w[k];
            out[cols + c] = acc_b[k];
        }
    }
}

// out[c] = sum over j < n of partials[j * width + c], in a fixed order. Block (32, 32).
extern "C" __global__ void wick_sum_partials(const float* partials, int n, int width, float* out) {
    __shared__ float shared[32][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    float acc = 0.0f;
    if (c < width)
        for (int j = threadIdx.y; j < n; j += 32) acc += partials[(size_t)j * width + c];
    shared[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < width) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < 32; j++) total += shared[j][threadIdx.x];
        out[c] = total;
    }
}

// Column sums of a (rows, cols) `T` matrix in f32, stage one: block (32, 8) at grid (x, y) sums
// rows [64 y, 64 y + 64) of columns [32 x, 32 x + 32) into partials[y][col]; `wick_sum_partials`
// adds the row chunks up.
template <typename T>
__device__ void col_sum_partial(const T* x, int rows, int cols, float* partials) {
    __shared__ float shared[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int first = blockIdx.y * 64;
    int last = min(rows, first + 64);
    float acc = 0.0f;
    if (c < cols)
        for (int r = first + threadIdx.y; r < last; r += 8) acc += to_f(x[(size_t)r * cols + c]);
    shared[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) total += shared[j][threadIdx.x];
        partials[(size_t)blockIdx.y * cols + c] = total;
    }
}

// ---------------------------------------------------------------------------------------------
// Attention probabilities: `dropout(softmax(scale * scores + bias))` over rows of `k <= 32 K`
// keys; `scores` is (batch, heads, q, k), `bias` (batch, k) in f32 (0 or -1e9), one warp per row.

template <typename T, int K>
__device__ __forceinline__ void softmax_row(float (&p)[K], const T* scores, const float* bias,
                                            size_t base, int row, int k, int rows_per_batch,
                                            float scale) {
    int lane = threadIdx.x & 31;
    const float* bias_row = bias + (size_t)(row / rows_per_batch) * k;
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < K; j++) {
        int c = lane + 32 * j;
        float s = -INFINITY;
        if (c < k) s = fmaf(to_f(scores[base + c]), scale, bias_row[c]);
        p[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < K; j++) {
        int c = lane + 32 * j;
        float e = c < k ? expf(p[j] - mx) : 0.0f;
        p[j] = e;
        sum += e;
    }
    float inv = 1.0f / warp_sum(sum);
#pragma unroll
    for (int j = 0; j < K; j++) p[j] *= inv;
}

template <typename T, int K>
__device__ void softmax_fwd(const T* scores, const float* bias, T* out, int rows, int k,
                            int rows_per_batch, float scale, Drop drop) {
    int row = global_warp();
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    size_t base = (size_t)row * k;
    float p[K];
    softmax_row<T, K>(p, scores, bias, base, row, k, rows_per_batch, scale);
#pragma unroll
    for (int j = 0; j < K; j++) {
        int c = lane + 32 * j;
        if (c < k) out[base + c] = from_f<T>(p[j] * drop.factor((uint32_t)(base + c)));
    }
}

// d scores = scale * p * (g - sum(g * p)), g = d out * mask: the probabilities are recomputed.
template <typename T, int K>
__device__ void softmax_bwd(const T* scores, const float* bias, const T* gout, T* gscores,
                            int rows, int k, int rows_per_batch, float scale, Drop drop) {
    int row = global_warp();
    if (row >= rows) return;
    int lane = threadIdx.x & 31;
    size_t base = (size_t)row * k;
    float p[K], g[K];
    softmax_row<T, K>(p, scores, bias, base, row, k, rows_per_batch, scale);
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < K; j++) {
        int c = lane + 32 * j;
        g[j] = c < k ? to_f(gout[base + c]) * drop.factor((uint32_t)(base + c)) : 0.0f;
        dot += g[j] * p[j];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int j = 0; j < K; j++) {
        int c = lane + 32 * j;
        if (c < k) gscores[base + c] = from_f<T>(scale * p[j] * (g[j] - dot));
    }
}

// ---------------------------------------------------------------------------------------------
// Pointwise: exact GELU and its backward, dropout (forward and backward are the same product).

#define GRID_STRIDE(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)blockDim.x * gridDim.x)

template <typename T>
__device__ void gelu_fwd(const T* x, T* y, size_t n) {
    GRID_STRIDE(i, n) {
        float v = to_f(x[i]);
        y[i] = from_f<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
    }
}

template <typename T>
__device__ void gelu_bwd(const T* x, const T* gy, T* gx, size_t n) {
    GRID_STRIDE(i, n) {
        float v = to_f(x[i]);
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        gx[i] = from_f<T>(to_f(gy[i]) * (cdf + v * pdf));
    }
}

template <typename T>
__device__ void dropout(const T* x, T* y, size_t n, Drop drop) {
    GRID_STRIDE(i, n) { y[i] = from_f<T>(to_f(x[i]) * drop.factor((uint32_t)i)); }
}

// Attention heads: `to_heads` moves the columns [offset, offset + heads * head) of
// (batch * seq, stride) rows to (batch, heads, seq, head), otherwise back (into those columns of
// `out`, the others untouched). One thread per element of the (batch, heads, seq, head) side.
template <typename T>
__device__ void heads(const T* in, T* out, int batch, int seq, int nheads, int head, int stride,
                      int offset, int to_heads) {
    // 32-bit index arithmetic (the caller checks that every index fits): 64-bit division
    // costs more than the copy itself.
    uint32_t n = (uint32_t)batch * seq * nheads * head;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        uint32_t d = i % head, rest = i / head;
        uint32_t s = rest % seq;
        rest /= seq;
        uint32_t h = rest % nheads, b = rest / nheads;
        size_t row = ((size_t)b * seq + s) * stride + offset + h * head + d;
        if (to_heads)
            out[i] = in[row];
        else
            out[row] = in[i];
    }
}

// A linear layer's bias: out = y + b (b f32, broadcast over rows of `cols`); with `gelu`, also
// pre = y + b and out = gelu(pre).
template <typename T>
__device__ void bias_act(const T* y, const float* b, T* pre, T* out, size_t n, int cols, int gelu) {
    GRID_STRIDE(i, n) {
        float v = to_f(y[i]) + b[i % cols];
        if (gelu) {
            T p = from_f<T>(v);
            pre[i] = p;
            v = to_f(p);
            v = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        }
        out[i] = from_f<T>(v);
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings: out[r] = word[wid[r]] + type[tid[r]] + pos[pid[r]] (f32 tables and output).

extern "C" __global__ void wick_embed_fwd(const float* word, const float* pos, const float* type,
                                          const uint32_t* wid, const uint32_t* pid,
                                          const uint32_t* tid, float* out, int n, int h) {
    GRID_STRIDE(i, (size_t)n * h) {
        size_t r = i / h, c = i % h;
        out[i] = (word[(size_t)wid[r] * h + c] + type[(size_t)tid[r] * h + c]) +
                 pos[(size_t)pid[r] * h + c];
    }
}

// The gradient of a table with `vocab` rows: out[v] = sum of grad[r] over r with ids[r] == v,
// in ascending r. One warp per table row scans the ids; lanes hold the row's columns.
template <int K>
__device__ void embed_bwd_rows(const float* grad, const uint32_t* ids, int n, int h, int vocab,
                               float* out) {
    int v = global_warp();
    if (v >= vocab) return;
    int lane = threadIdx.x & 31;
    float acc[K];
#pragma unroll
    for (int k = 0; k < K; k++) acc[k] = 0.0f;
    for (int start = 0; start < n; start += 32) {
        int r = start + lane;
        unsigned hits = __ballot_sync(FULL_MASK, r < n && ids[r] == (uint32_t)v);
        while (hits) {
            int j = __ffs(hits) - 1;
            hits &= hits - 1;
            const float* g = grad + (size_t)(start + j) * h;
#pragma unroll
            for (int k = 0; k < K; k++) {
                int c = lane + 32 * k;
                if (c < h) acc[k] += g[c];
            }
        }
    }
#pragma unroll
    for (int k = 0; k < K; k++) {
        int c = lane + 32 * k;
        if (c < h) out[(size_t)v * h + c] = acc[k];
    }
}

// The same for a table of few rows (token types): block (32, 8) per (32 columns, table row), the
// 8 thread rows splitting the ids, summed in a fixed order.
extern "C" __global__ void wick_embed_bwd_cols(const float* grad, const uint32_t* ids, int n,
                                               int h, float* out) {
    __shared__ float shared[8][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    uint32_t v = blockIdx.y;
    float acc = 0.0f;
    if (c < h)
        for (int r = threadIdx.y; r < n; r += 8)
            if (ids[r] == v) acc += grad[(size_t)r * h + c];
    shared[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < h) {
        float total = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) total += shared[j][threadIdx.x];
        out[(size_t)v * h + c] = total;
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW (f32), the arithmetic of the CPU's three passes (crates/trainer/src/fused_adamw.rs) in
// one: both moments with the gradient scaled by the device scalar `gscale` (the clipping factor),
// then the parameter, all in place.

// With `has_apply`, a 0 in the device scalar `apply` (a step skipped by loss scaling) leaves
// everything as it was.
extern "C" __global__ void wick_adamw(float* p, float* m, float* v, const float* g,
                                      const float* gscale, const float* apply, int has_apply,
                                      int n, float beta1, float beta2, float decay, float step,
                                      float inv_bias2_sqrt, float eps) {
    if (has_apply && *apply == 0.0f) return;
    float s = *gscale;
    GRID_STRIDE(i, (size_t)n) {
        float gi = g[i] * s;
        float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        float vi = beta2 * v[i] + (1.0f - beta2) * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step * (mi / (sqrtf(vi) * inv_bias2_sqrt + eps));
    }
}

// Sum of squares, stage one: block b sums its grid-stride share of the elements into
// partials[b] (the final sum itself when there is one block); `wick_sum_partials` with width 1
// adds the blocks up.
extern "C" __global__ void wick_sum_squares_partial(const float* x, size_t n, float* partials) {
    __shared__ float warps[8];
    float acc = 0.0f;
    GRID_STRIDE(i, n) acc = fmaf(x[i], x[i], acc);
    acc = warp_sum(acc);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warps[warp] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int j = 0; j < (int)(blockDim.x >> 5); j++) total += warps[j];
        partials[blockIdx.x] = total;
    }
}

// ---------------------------------------------------------------------------------------------
// extern "C" entry points, one per dtype (and register width K for the row kernels).

#define DROP_ARGS uint32_t lo, uint32_t hi, uint32_t threshold, float keep_scale, int drop_on
#define DROP Drop{lo, hi, threshold, keep_scale, drop_on}

#define ROW_KERNELS(T, NAME, K)                                                                   \
    extern "C" __global__ void wick_ln_fwd_##NAME##_k##K(                                         \
        const T* a, const T* x, int has_x, const float* w, const float* b, T* y, int rows,       \
        int cols, float eps, DROP_ARGS) {                                                         \
        ln_fwd<T, K>(a, x, has_x, w, b, y, rows, cols, eps, DROP);                               \
    }                                                                                             \
    extern "C" __global__ void wick_ln_bwd_##NAME##_k##K(                                         \
        const T* a, const T* x, int has_x, const float* w, const T* gy, T* gx, T* ga,            \
        float* partials, int rows, int cols, int rows_per_warp, float eps, DROP_ARGS) {           \
        ln_bwd<T, K>(a, x, has_x, w, gy, gx, ga, partials, rows, cols, rows_per_warp, eps, DROP); \
    }                                                                                             \
    extern "C" __global__ void wick_softmax_fwd_##NAME##_k##K(                                    \
        const T* scores, const float* bias, T* out, int rows, int k, int rows_per_batch,         \
        float scale, DROP_ARGS) {                                                                 \
        softmax_fwd<T, K>(scores, bias, out, rows, k, rows_per_batch, scale, DROP);              \
    }                                                                                             \
    extern "C" __global__ void wick_softmax_bwd_##NAME##_k##K(                                    \
        const T* scores, const float* bias, const T* gout, T* gscores, int rows, int k,          \
        int rows_per_batch, float scale, DROP_ARGS) {                                             \
        softmax_bwd<T, K>(scores, bias, gout, gscores, rows, k, rows_per_batch, scale, DROP);    \
    }

#define POINTWISE_KERNELS(T, NAME)                                                               \
    extern "C" __global__ void wick_gelu_fwd_##NAME(const T* x, T* y, size_t n) {               \
        gelu_fwd<T>(x, y, n);                                                                    \
    }                                                                                            \
    extern "C" __global__ void wick_gelu_bwd_##NAME(const T* x, const T* gy, T* gx, size_t n) { \
        gelu_bwd<T>(x, gy, gx, n);                                                               \
    }                                                                                            \
    extern "C" __global__ void wick_dropout_##NAME(const T* x, T* y, size_t n, DROP_ARGS) {     \
        dropout<T>(x, y, n, DROP);                                                               \
    }                                                                                            \
    extern "C" __global__ void wick_bias_act_##NAME(const T* y, const float* b, T* pre, T* out,  \
                                                    size_t n, int cols, int gelu) {             \
        bias_act<T>(y, b, pre, out, n, cols, gelu);                                              \
    }                                                                                            \
    extern "C" __global__ void wick_heads_##NAME(const T* in, T* out, int batch, int seq,       \
                                                 int nheads, int head, int stride, int offset,  \
                                                 int to_heads) {                                \
        heads<T>(in, out, batch, seq, nheads, head, stride, offset, to_heads);                   \
    }                                                                                            \
    extern "C" __global__ void wick_col_sum_partial_##NAME(const T* x, int rows, int cols,      \
                                                           float* partials) {                   \
        col_sum_partial<T>(x, rows, cols, partials);                                             \
    }

#define ALL_WIDTHS(T, NAME)     \
    ROW_KERNELS(T, NAME, 1)     \
    ROW_KERNELS(T, NAME, 2)     \
    ROW_KERNELS(T, NAME, 4)     \
    ROW_KERNELS(T, NAME, 8)     \
    ROW_KERNELS(T, NAME, 12)    \
    ROW_KERNELS(T, NAME, 16)    \
    ROW_KERNELS(T, NAME, 24)    \
    ROW_KERNELS(T, NAME, 32)    \
    POINTWISE_KERNELS(T, NAME)

ALL_WIDTHS(float, f32)
ALL_WIDTHS(__nv_bfloat16, bf16)
ALL_WIDTHS(__half, f16)

#define EMBED_ROWS(K)                                                                            \
    extern "C" __global__ void wick_embed_bwd_rows_k##K(const float* grad, const uint32_t* ids, \
                                                        int n, int h, int vocab, float* out) {   \
        embed_bwd_rows<K>(grad, ids, n, h, vocab, out);                                          \
    }
EMBED_ROWS(1)
EMBED_ROWS(2)
EMBED_ROWS(4)
EMBED_ROWS(8)
EMBED_ROWS(12)
EMBED_ROWS(16)
EMBED_ROWS(24)
EMBED_ROWS(32)
