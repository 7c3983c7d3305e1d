"""Compiled LSTM, GRU and vanilla RNN layers for CPU training: :func:`native_lstm`,
:func:`native_gru` and :func:`native_rnn`, K models at a time.

Why hand-written: PyTorch trains an LSTM on the CPU through oneDNN's RNN primitive, and at the
sizes seqcast trains (32-64 windows, 32-128 units) much of that call is not arithmetic. At the
indicators preset's shape oneDNN's primitives run for about a third of the call; the rest is
PyTorch's glue around them (descriptors, memory objects, allocations). At the seed config's shape
the primitive itself is slow for its FLOPs. This layer does the plain thing in C++ with no
per-step allocation: per step the input and recurrent products as two small GEMMs through oneDNN's
batch-reduce GEMM micro-kernel (``at::native::cpublas::brgemm``, JIT-generated for the exact sizes)
and one pass over the gates (AVX-512 where the CPU has it); the backward is the same loop reversed,
with the weight and input gradients as large GEMMs over all steps (MKL's ``sgemm_``, which
PyTorch's CPU build carries, on raw pointers). Forward and backward of one stack run 1.93x faster
than oneDNN at the preset's shape, 1.26x for a 32-window slice of a seed-config batch and 0.99x for
2xLSTM(128) on one thread, so only layers up to :data:`MAX_LAYER_FLOPS` (one thread:
:func:`lstm_bound_one_thread`, larger on AVX2 CPUs) use it (benchmarks/README.md, 2026-12-06 and
-07). A whole stack,
dropout masks included, is one call and one autograd node each way (one node per layer and one
per mask before: 1.06x per seed-config epoch, median of 12 ABBA rounds), and the gate passes apply
the masks (a further 1.065x). Its calls release the GIL, so a split batch's slices and train_many's
thread groups run in parallel. It also draws the dropout masks (:func:`dropout_masks`), and runs a
whole training step of stacks with linear heads, masks to gradients, as one call
(:func:`train_step`: no autograd graph, and no Python between the parts), and a split batch's two
slices as one call with a thread of its own for the second (:func:`train_step_pair`,
:func:`slice_worker`).

It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and
ninja; about 30 s once per machine, then loaded from torch's extension cache, which
``TORCH_EXTENSIONS_DIR`` moves) for this CPU (``-march=native``; the CPU's flags are part of the
cache key). Where that fails (no compiler, no MKL ``sgemm_``) :func:`available` is False, a
warning says why once, LSTMs train with PyTorch's own kernel as before, and NumPy draws the same
dropout masks (:func:`masks_reference`).
``SEQCAST_NATIVE=0`` skips the attempt. Checked against ``torch.nn.LSTM`` in output and every
gradient (tests/test_native.py).

The GRU layer (:func:`native_gru`) is the same code with GRU gate passes (PyTorch's gates r, z, n;
the hidden side's n product kept apart, as n needs it by itself). It replaces the hand-written
TorchScript GRU (``models.fused_gru``) for layers up to :data:`MAX_GRU_LAYER_FLOPS`: a 4xGRU(50)
seed-config fit ran 2.98x faster per epoch (0.236 against 0.703 s, 4 ABBA rounds, same losses),
and where it did not build a GRU trains with ``fused_gru`` as before. Checked against
``torch.nn.GRU`` in the same tests. The vanilla RNN layer (:func:`native_rnn`, tanh or ReLU) likewise
replaces ``models.fused_rnn`` up to :data:`MAX_RNN_LAYER_FLOPS`: a 4xRNN(50) fit 2.24x faster
(0.107 against 0.241 s per epoch, 4 ABBA rounds).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import time
import warnings

import numpy as np
import torch
from torch import Tensor

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void spin_pause() { _mm_pause(); }
#else
static inline void spin_pause() { std::this_thread::yield(); }
#endif
using at::Tensor;

// MKL's Fortran GEMM, exported by PyTorch's CPU build (libtorch_cpu).
extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

// Row-major C (M x N) = op(A) op(B) + beta C, through column-major sgemm on the transposes.
static inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                        float beta, float* C, int ldc) {
  const float one = 1.f;
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  sgemm_(&cb, &ca, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

// Each step's small GEMM goes through oneDNN's batch-reduce GEMM micro-kernel (PyTorch's
// at::native::cpublas::brgemm: JIT-generated for the exact sizes once per thread, then a direct call),
// which ran these 1.15-1.8x (32x50 . 50x200) and 1.4-2.2x (32x200 . 200x50) faster than MKL's
// sgemm_, one thread. It reads B as a row-major K x N matrix; where oneDNN cannot (no AVX2, or
// torch.backends.mkldnn disabled) PyTorch falls back to its own GEMM. (MKL's packed GEMM was as
// fast per call, but packing a weight took ~370 us whatever its size, more than a layer call
// saves; benchmarks/README.md, 2026-12-06.)
static inline void step_gemm(int M, int N, int K, const float* A, int lda, const float* Bkn, int ldb, bool add_C,
                             float* C, int ldc) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add_C, A, Bkn, C, false);
}

// Cephes' expf and tanhf (Moshier), the constants every branch's exp and tanh below share: the
// clamps, ln 2 in two parts (the first exact in float, for the range reduction), the degree-6
// polynomial of exp on [-ln 2 / 2, ln 2 / 2] and the degree-4 one of tanh below |x| = 0.625.
// EXP_HI keeps 2^n a normal float where it is made in the exponent bits (the AVX2 and plain
// branches, n <= 127); AVX-512's scalef needs no such bound and keeps Cephes' 88.3763.
constexpr float EXP_LO = -87.3365f, EXP_HI = 88.3762626647949f, LOG2E = 1.44269504088896341f;
constexpr float LN2_HI = 0.693359375f, LN2_LO = -2.12194440e-4f;
constexpr float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
constexpr float TANH_SMALL = 0.625f;
constexpr float TANH_P[5] = {-5.70498872745e-3f, 2.06390887954e-2f, -5.37397155531e-2f, 1.33314422036e-1f,
                             -3.33332819422e-1f};

// The plain loops' gate math (CPUs without AVX2: aarch64, older x86): exp16's algorithm on one
// float, written so that GCC vectorises the loops calling it for the CPU's own SIMD (NEON, SSE)
// with no vector libm: the build's -fno-finite-math-only keeps glibc's vector expf out (it needs
// __FAST_MATH__), and std::exp in those loops was a scalar call per gate. Rounding by truncation
// (SSE2 has no vector round), NaN sent to 0 before the conversion (converting NaN to int is
// undefined) while x itself keeps the NaN, so the result is NaN; 2^n in the exponent bits.
#if defined(__has_builtin)
#if __has_builtin(__builtin_assoc_barrier)
#define SEQCAST_KEEP_ORDER(e) __builtin_assoc_barrier(e)
#endif
#endif
#ifndef SEQCAST_KEEP_ORDER
#define SEQCAST_KEEP_ORDER(e) (e)  // older compilers: the reassociated form, up to ~68 ulp near the clamps
#endif
static inline float exp_plain(float x) {
  x = x < EXP_LO ? EXP_LO : x;  // comparisons are false for NaN: it passes both
  x = x > EXP_HI ? EXP_HI : x;
  float t = x * LOG2E;
  t = t == t ? t : 0.f;
  const int32_t k = (int32_t)(t + (t < 0.f ? -0.5f : 0.5f));  // in [-126, 127] after the clamps
  const float n = (float)k;
  // x - n ln 2 in two parts (Cody and Waite), the first exact; -ffast-math would reassociate
  // (x - n c1) + n c2 into x + (n c2 - n c1), whose rounding cost up to 68 ulp near the clamps, so a
  // barrier keeps the order (GCC 12+, clang 15+). It does in scalar code and in SSE2 loops (1.28 ulp
  // at most), not in GCC 12's -march=x86-64-v2 loops, still 67.7 ulp there (benchmarks/README.md,
  // 2026-12-07; within 1e-6 relative where a sigmoid is not saturated).
  const float r = SEQCAST_KEEP_ORDER(x - n * LN2_HI) + n * -LN2_LO;
  float p = EXP_P[0];
  for (int i = 1; i < 6; ++i) p = p * r + EXP_P[i];  // unrolled by GCC (-O3), as the vector forms below
  p = p * (r * r) + (r + 1.f);
  const uint32_t bits = (uint32_t)(k + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}
static inline float sigm(float x) { return 1.f / (1.f + exp_plain(-x)); }
// tanh16 on one float (Cephes' tanhf). The two branches are blended by arithmetic, not selected:
// with a select GCC moved the exp into a branch and then left the loop scalar ("control flow in
// loop", -march=x86-64-v2); the polynomial's argument is 0 off its range, so it stays finite and
// 0 times it is 0.
static inline float tanh_plain(float x) {
  const float ax = std::fabs(x);
  const bool near0 = ax < TANH_SMALL;  // false for NaN
  const float xs = near0 ? x : 0.f;
  const float big = std::copysign(1.f - 2.f / (exp_plain(ax + ax) + 1.f), x);  // NaN stays NaN
  const float z = xs * xs;
  float p = TANH_P[0] * z + TANH_P[1];
  for (int i = 2; i < 5; ++i) p = p * z + TANH_P[i];
  const float small = p * z * xs + xs;
  const float m = near0 ? 1.f : 0.f;
  return m * small + (1.f - m) * big;
}

#if defined(__AVX512F__)
#include <immintrin.h>
// The forward's gate math on 16 floats at a time, a row's last partial vector masked. Written out
// because GCC's vectorised loops ended a 50-unit row with scalar expf calls: the seed slice's
// forward gate math took 1.75 instead of 1.91 ms, the whole call 3.5 % less. exp16 is Cephes'
// expf (range reduction by ln 2 in two parts, a degree-6 polynomial, 2^n by scalef), accurate to
// about 1 ulp on the clamped range. sigm16 divides by a reciprocal estimate (rcp14) refined by one
// Newton step, ~1 ulp more than a division: vdivps on 16 floats is a long, slow instruction, and
// this and the hand-written backward pass below together took 1.027-1.048x less time per seed
// slice and seed batch, 1.04x per seed-config epoch (benchmarks/README.md, 2026-12-06, 14:20-15:50).
static inline __m512 exp16(__m512 x) {
  // vmaxps/vminps return their second operand when one is NaN: x second, so NaN passes through
  // (a NaN weight must still make the loss NaN, and training stop as diverged).
  x = _mm512_min_ps(_mm512_set1_ps(88.3763f), _mm512_max_ps(_mm512_set1_ps(EXP_LO), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
  __m512 p = _mm512_set1_ps(EXP_P[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P[i]));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
static inline __m512 sigm16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 d = _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));  // in [1, 2.4e38]
  const __m512 y = _mm512_rcp14_ps(d);  // relative error < 2^-14; y (2 - d y) squares it
  return _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.f)));
}
// tanh on 16 floats as Cephes' tanhf computes it: x + x^3 P(x^2) below |x| = 0.625, else
// 1 - 2 / (exp(2|x|) + 1) with x's sign; within ~2 ulp, and accurate relative to x near 0, where
// 2 sigm(2x) - 1 (the LSTM's gates) loses to cancellation. The RNN's and GRU's layers use it: every
// unit of a tanh RNN is one, and its backward's 1 - h^2 needs h accurate near 0 and near 1.
static inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 d = _mm512_add_ps(exp16(_mm512_add_ps(ax, ax)), one);  // NaN stays NaN
  __m512 y = _mm512_rcp14_ps(d);
  y = _mm512_mul_ps(y, _mm512_fnmadd_ps(d, y, _mm512_set1_ps(2.f)));  // 1 / d, one Newton step
  const __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.f), y, one);  // 1 - 2 / d, >= 0
  const __m512 signed_big = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(big), _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u))));
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(TANH_P[0]), z, _mm512_set1_ps(TANH_P[1]));
  for (int i = 2; i < 5; ++i) p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(TANH_P[i]));
  const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(TANH_SMALL), _CMP_LT_OQ), signed_big, small);
}
static inline __mmask16 lanes(int left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }
#elif defined(__AVX2__) && defined(__FMA__)
#define SEQCAST_AVX2 1
// The same gate math 8 floats at a time, for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 1-4's
// EPYC hosts among them). Written out rather than left to GCC: under -ffast-math its vectorised
// expf and its compare-and-select drop NaN and turn a saturated gate (exp of +-1e30) into NaN, while
// torch.nn.LSTM gives 0 or 1 there and passes a NaN through (tests/test_native.py); a NaN must still
// make the loss NaN and training stop as diverged. exp8 is exp16 with 2^n made in the exponent bits
// (no scalef in AVX2): the upper clamp 88.3762626 keeps n <= 127 and the lower one n >= -126, so
// 2^n is a normal float; a NaN gives NaN through the polynomial whatever n's bits are.
static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), _mm256_max_ps(_mm256_set1_ps(EXP_LO), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
  __m256 p = _mm256_set1_ps(EXP_P[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
// 1 / d by a reciprocal estimate (rcp, 12 bits) and one Newton step, as sigm16 and tanh16 do.
static inline __m256 recip8(__m256 d) {
  const __m256 y = _mm256_rcp_ps(d);
  return _mm256_mul_ps(y, _mm256_fnmadd_ps(d, y, _mm256_set1_ps(2.f)));
}
static inline __m256 sigm8(__m256 x) {
  return recip8(_mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
// tanh16 on 8 floats (Cephes' tanhf).
static inline __m256 tanh8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  const __m256 ax = _mm256_andnot_ps(sign, x);
  const __m256 d = _mm256_add_ps(exp8(_mm256_add_ps(ax, ax)), one);  // NaN stays NaN
  const __m256 big = _mm256_or_ps(_mm256_fnmadd_ps(_mm256_set1_ps(2.f), recip8(d), one), _mm256_and_ps(sign, x));
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(TANH_P[0]), z, _mm256_set1_ps(TANH_P[1]));
  for (int i = 2; i < 5; ++i) p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(TANH_P[i]));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
  // ax < 0.625 is false for NaN: big, which is NaN too
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(ax, _mm256_set1_ps(TANH_SMALL), _CMP_LT_OQ));
}
// A row of n floats in chunks of 8: whole chunks with plain loads and stores, the last partial one
// masked (AVX2's masked store is slow, so only there). f(j, io) reads with io.ld and writes with io.st.
struct Whole8 {
  __m256 ld(const float* p) const { return _mm256_loadu_ps(p); }
  void st(float* p, __m256 v) const { _mm256_storeu_ps(p, v); }
};
struct Part8 {
  __m256i m;
  __m256 ld(const float* p) const { return _mm256_maskload_ps(p, m); }
  void st(float* p, __m256 v) const { _mm256_maskstore_ps(p, m, v); }
};
template <class F> static inline void chunks8(int n, F&& f) {
  int j = 0;
  for (; j + 8 <= n; j += 8) f(j, Whole8{});
  if (j < n) f(j, Part8{_mm256_cmpgt_epi32(_mm256_set1_epi32(n - j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))});
}
#endif

// rows x cols row-major -> cols x rows: the micro-kernel reads B as K x N.
static std::vector<float> transposed(const float* w, int rows, int cols) {
  std::vector<float> out((size_t)rows * cols);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) out[(size_t)c * rows + r] = w[(size_t)r * cols + c];
  return out;
}

static void check(const Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim && t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
              name, " must be a contiguous float32 CPU tensor of ", dim, " dimensions");
}

// The checks every layer call makes: x (K, T, B, I) and weights of G = gates * U rows.
static void check_layer(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh,
                        int gates) {
  check(x, 4, "x"); check(w_ih, 3, "w_ih"); check(w_hh, 3, "w_hh"); check(b_ih, 2, "b_ih"); check(b_hh, 2, "b_hh");
  const int64_t G = w_hh.size(1), U = G / gates;
  TORCH_CHECK(w_ih.size(0) == x.size(0) && w_ih.size(1) == G && w_ih.size(2) == x.size(3) && w_hh.size(2) == U &&
                  G == gates * U,
              "weights do not match x");
}

// Checks a dropout mask (none: undefined) against the tensor it multiplies.
static void check_mask(const Tensor& mask, const Tensor& like, const char* what) {
  if (!mask.defined()) return;
  check(mask, 4, "mask");
  TORCH_CHECK(mask.sizes() == like.sizes(), "mask does not match ", what);
}

// Where a layer has a dropout mask, an empty tensor for its masked output (else undefined).
static Tensor masked_output(const Tensor& mask, const Tensor& h_all) {
  check_mask(mask, h_all, "the output");
  return mask.defined() ? at::empty_like(h_all) : Tensor();
}

// x (K, T, B, I); w_ih (K, G, I), w_hh (K, G, U), b_ih and b_hh (K, G), G = 4U, gates i, f, g, o;
// mask: undefined, or a dropout mask (K, T, B, U) for the output. Returns h_all (K, T, B, U), for the
// backward pass c_all, tanh(c_all) and the gates' activations (without keep, only the last steps':
// two of c_all and tc_all, one of the gates),
// and h_all * mask (undefined without a mask), written in the gate pass rather than in a pass of its own.
std::vector<Tensor> lstm_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor mask, bool keep) {
  check_layer(x, w_ih, w_hh, b_ih, b_hh, 4);
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), G = w_hh.size(1), U = G / 4;
  // Without keep (inference: nothing for a backward pass) one step's gate buffer serves every step,
  // and two steps' cell states (the step's and the one before) every step.
  const int TA = keep ? T : 1, TC = keep ? T : 2;
  Tensor acts = at::empty({K, TA, B, G}, x.options());
  Tensor h_all = at::empty({K, T, B, U}, x.options());
  Tensor c_all = at::empty({K, TC, B, U}, x.options());
  Tensor tc_all = at::empty({K, TC, B, U}, x.options());
  const Tensor masked = masked_output(mask, h_all);
  std::vector<float> zeros((size_t)B * U, 0.f);
  for (int k = 0; k < K; ++k) {
    float* a0 = acts.data_ptr<float>() + (int64_t)k * TA * B * G;
    const float* bi = b_ih.data_ptr<float>() + (int64_t)k * G;
    const float* bh = b_hh.data_ptr<float>() + (int64_t)k * G;
    // Per gate column: its bias, and sigmoid (scale 1, offset 0) or tanh(z) = 2 sigmoid(2z) - 1 (g).
    std::vector<float> bias(G), scale(G, 1.f), offset(G, 0.f);
    for (int j = 0; j < G; ++j) bias[j] = bi[j] + bh[j];
    std::fill(scale.begin() + 2 * U, scale.begin() + 3 * U, 2.f);
    std::fill(offset.begin() + 2 * U, offset.begin() + 3 * U, 1.f);
    const float* xk = x.data_ptr<float>() + (int64_t)k * T * B * I;
    const std::vector<float> wi_t = transposed(w_ih.data_ptr<float>() + (int64_t)k * G * I, G, I);  // I x G
    const std::vector<float> wh_t = transposed(w_hh.data_ptr<float>() + (int64_t)k * G * U, G, U);  // U x G
    float* h0 = h_all.data_ptr<float>() + (int64_t)k * T * B * U;
    float* c0 = c_all.data_ptr<float>() + (int64_t)k * TC * B * U;
    float* tc0 = tc_all.data_ptr<float>() + (int64_t)k * TC * B * U;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    float* mo0 = mask.defined() ? masked.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    for (int t = 0; t < T; ++t) {
      float* ap = a0 + (int64_t)(keep ? t : 0) * B * G;
      const int ct = keep ? t : t % 2;  // this step's slot of c_all and tc_all
      const float* cp = t ? c0 + (int64_t)(keep ? t - 1 : 1 - ct) * B * U : zeros.data();
      step_gemm(B, G, I, xk + (int64_t)t * B * I, I, wi_t.data(), G, false, ap, G);  // gates = x_t w_ih^T
      if (t) step_gemm(B, G, U, h0 + (int64_t)(t - 1) * B * U, U, wh_t.data(), G, true, ap, G);  // gates += h_prev w_hh^T
      float* cn = c0 + (int64_t)ct * B * U;
      float* hn = h0 + (int64_t)t * B * U;
      float* tcn = tc0 + (int64_t)ct * B * U;
      const float* mkn = mk0 ? mk0 + (int64_t)t * B * U : nullptr;
      float* mon = mo0 ? mo0 + (int64_t)t * B * U : nullptr;
      for (int r = 0; r < B; ++r) {
        float* ar = ap + (int64_t)r * G;
#if defined(__AVX512F__)
        int j = 0;
        // Four chunks at a time, all loads first, then the four sigmoids, then the stores: the sigmoids'
        // chains overlap; the same results, 1.02-1.03x per preset-shaped stack forward+backward
        // (benchmarks/kernel_ab.py, 2026-12-07 04:10 UTC). A row's last chunks go one at a time, masked.
        for (; j + 64 <= G; j += 64) {
          __m512 sc[4], z[4];
          for (int q = 0; q < 4; ++q) {
            sc[q] = _mm512_loadu_ps(scale.data() + j + 16 * q);
            z[q] = _mm512_add_ps(_mm512_loadu_ps(ar + j + 16 * q), _mm512_loadu_ps(bias.data() + j + 16 * q));
          }
          for (int q = 0; q < 4; ++q)
            z[q] = _mm512_fmsub_ps(sc[q], sigm16(_mm512_mul_ps(sc[q], z[q])), _mm512_loadu_ps(offset.data() + j + 16 * q));
          for (int q = 0; q < 4; ++q) _mm512_storeu_ps(ar + j + 16 * q, z[q]);
        }
        for (; j < G; j += 16) {
          const __mmask16 m = lanes(G - j);
          const __m512 sc = _mm512_maskz_loadu_ps(m, scale.data() + j);
          const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(m, ar + j), _mm512_maskz_loadu_ps(m, bias.data() + j));
          _mm512_mask_storeu_ps(ar + j, m, _mm512_fmsub_ps(sc, sigm16(_mm512_mul_ps(sc, z)),
                                                         _mm512_maskz_loadu_ps(m, offset.data() + j)));
        }
        const int64_t q0 = (int64_t)r * U;
        for (int j = 0; j < U; j += 16) {
          const __mmask16 m = lanes(U - j);
          const __m512 c = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, ar + U + j), _mm512_maskz_loadu_ps(m, cp + q0 + j),
                                           _mm512_mul_ps(_mm512_maskz_loadu_ps(m, ar + j), _mm512_maskz_loadu_ps(m, ar + 2 * U + j)));
          const __m512 two = _mm512_set1_ps(2.f);
          const __m512 tc = _mm512_fmsub_ps(two, sigm16(_mm512_mul_ps(two, c)), _mm512_set1_ps(1.f));
          _mm512_mask_storeu_ps(cn + q0 + j, m, c);
          _mm512_mask_storeu_ps(tcn + q0 + j, m, tc);
          const __m512 h = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, ar + 3 * U + j), tc);
          _mm512_mask_storeu_ps(hn + q0 + j, m, h);
          if (mon) _mm512_mask_storeu_ps(mon + q0 + j, m, _mm512_mul_ps(h, _mm512_maskz_loadu_ps(m, mkn + q0 + j)));
        }
#elif defined(SEQCAST_AVX2)
        chunks8(G, [&](int j, auto io) {
          const __m256 sc = io.ld(scale.data() + j);
          const __m256 z = _mm256_add_ps(io.ld(ar + j), io.ld(bias.data() + j));
          io.st(ar + j, _mm256_fmsub_ps(sc, sigm8(_mm256_mul_ps(sc, z)), io.ld(offset.data() + j)));
        });
        const int64_t q0 = (int64_t)r * U;
        chunks8(U, [&](int j, auto io) {
          const __m256 c = _mm256_fmadd_ps(io.ld(ar + U + j), io.ld(cp + q0 + j), _mm256_mul_ps(io.ld(ar + j), io.ld(ar + 2 * U + j)));
          const __m256 two = _mm256_set1_ps(2.f);
          const __m256 tc = _mm256_fmsub_ps(two, sigm8(_mm256_mul_ps(two, c)), _mm256_set1_ps(1.f));
          io.st(cn + q0 + j, c);
          io.st(tcn + q0 + j, tc);
          const __m256 h = _mm256_mul_ps(io.ld(ar + 3 * U + j), tc);
          io.st(hn + q0 + j, h);
          if (mon) io.st(mon + q0 + j, _mm256_mul_ps(h, io.ld(mkn + q0 + j)));
        });
#else
        // One pass over the row, one exp per gate (a branch per gate made the vector code evaluate
        // both sides); the biases are added here rather than in a pass of their own.
        #pragma omp simd
        for (int j = 0; j < G; ++j) ar[j] = scale[j] * sigm(scale[j] * (ar[j] + bias[j])) - offset[j];
        #pragma omp simd
        for (int j = 0; j < U; ++j) {
          const int64_t q = (int64_t)r * U + j;
          const float c = ar[U + j] * cp[q] + ar[j] * ar[2 * U + j];
          const float tc = 2.f * sigm(2.f * c) - 1.f;
          cn[q] = c;
          tcn[q] = tc;
          hn[q] = ar[3 * U + j] * tc;
        }
        // the masked output in a loop of its own: a conditional store kept GCC from vectorising the one above
        if (mon) {
          #pragma omp simd
          for (int64_t q = (int64_t)r * U; q < (int64_t)(r + 1) * U; ++q) mon[q] = hn[q] * mkn[q];
        }
#endif
      }
    }
  }
  return {h_all, c_all, tc_all, acts, masked};
}

// Work that nothing waits for until the optimizer step: a layer's weight-gradient GEMMs.
// Inside train_step_pair (tls_sink set on both threads) they are queued rather than run, and each
// thread, once its slice's forward and backward are done, runs queued ones, its own or the other
// slice's, until none are left: a thread that finishes first takes over part of the slower one's
// work instead of waiting (the two slices ended a median 1-3 ms apart per batch in slow phases of
// the 2-core host, benchmarks/README.md, 2026-12-06 18:20 UTC section). Each GEMM is the same call
// on the same data whichever thread runs it, so the gradients are the same to the bit.
struct TaskSink {
  std::mutex mutex;
  std::vector<std::function<void()>> tasks;
  size_t next = 0;
  std::atomic<int> running{2};  // slices still in their forward and backward
  std::exception_ptr error;
  void push(std::function<void()> task) {
    std::lock_guard<std::mutex> guard(mutex);
    tasks.push_back(std::move(task));
  }
  // Runs queued tasks until the queue is empty and both slices are done.
  void drain() {
    for (;;) {
      std::function<void()> task;
      bool done;
      {
        std::lock_guard<std::mutex> guard(mutex);
        if (next < tasks.size()) task = std::move(tasks[next++]);
        done = !task && running.load() == 0;  // nothing is queued once both slices are done
      }
      if (task) {
        try {
          task();
        } catch (...) {
          std::lock_guard<std::mutex> guard(mutex);
          if (!error) error = std::current_exception();
        }
      } else if (done) {
        return;
      } else {
        spin_pause();
      }
    }
  }
};
static thread_local TaskSink* tls_sink = nullptr;
static void run_or_defer(std::function<void()> task) {
  if (tls_sink) tls_sink->push(std::move(task));
  else task();
}

// The weight gradients come as their transposes, a^T d, then transposed back: MKL ran these layouts
// 1.2-1.4x faster at the seed config's 1920 x 50 by 1920 x 200 (benchmarks/README.md, 2026-12-06).
// The gradients came out identical to the bit in the A/B runs compared there. transpose_back turns
// that transpose, wt (N x G), into grad_w (G x N).
// With shift, grad_w's row b is wt's column (b + shift) mod G (a GRU's hidden weights: gru_backward).
static void transpose_back(const float* wt, int N, int G, float* grad_w, int shift = 0) {
  for (int a = 0; a < N; ++a) {
    const float* w = wt + (int64_t)a * G;
    for (int b = 0; b < G - shift; ++b) grad_w[(int64_t)b * N + a] = w[b + shift];
    for (int b = G - shift; b < G; ++b) grad_w[(int64_t)b * N + a] = w[b + shift - G];
  }
}

// A layer with at most this many inputs (a first layer: the seed config's 1 feature, the indicators
// preset's 3) gets its input weights' gradient from brgemm on x transposed by hand: MKL's sgemm_ ran
// x^T d at 3 x 128 over 640 rows in 17.0 us and at 1 x 200 over 1,920 rows in 34.5 us, the
// transpose and brgemm in 5.4 and 23.6 us; at 9 inputs 26.9 against 15.9, at 32 56.5 against 55.2
// (one thread, the AMD Zen 4 host; benchmarks/README.md, 2026-12-07, 02:10-03:30 UTC).
constexpr int SKINNY_INPUTS = 16;

// wt (N x G) = sum over S steps of a_t^T d_t (a_t: B x N, d_t: B x G, rows ldd apart), step by step:
// a_t transposed by hand, then brgemm adding into wt (weight_gradients says where and why).
static void stepwise_gradient(int S, int B, int N, int G, const float* a, const float* d, int ldd, float* wt) {
  std::vector<float> at((size_t)N * B);
  for (int t = 0; t < S; ++t) {
    const float* as = a + (size_t)t * B * N;
    for (int r = 0; r < B; ++r)
      for (int c = 0; c < N; ++c) at[(size_t)c * B + r] = as[(size_t)r * N + c];
    step_gemm(N, G, B, at.data(), B, d + (size_t)t * B * ldd, ldd, t > 0, wt, G);
  }
}
// A layer's input weights' gradient, grad_w_ih (G, I), from d_in (T*B rows, ldd apart), the gradients of
// its input pre-activations (x w_ih^T + b_ih); wt: scratch of I x G. stepwise: the products step by step
// (stepwise_gradient) rather than MKL's one over all rows.
static void input_weight_gradients(int T, int B, int I, int G, const float* x, const float* d_in, int ldd,
                                   float* grad_w_ih, float* wt, bool stepwise) {
  if (I <= SKINNY_INPUTS) stepwise_gradient(1, T * B, I, G, x, d_in, ldd, wt);  // all rows as one step: x^T once
  else if (stepwise) stepwise_gradient(T, B, I, G, x, d_in, ldd, wt);
  else gemm(true, false, I, G, T * B, x, I, d_in, ldd, 0.f, wt, G);
  transpose_back(wt, I, G, grad_w_ih);
}

// The layer's weight gradients where the hidden side's pre-activations (h w_hh^T + b_hh) have the
// input side's gradients, d (T*B, G): an LSTM's and an RNN's. grad_w_hh (G, U) reads the steps
// after the first (the first step's h_prev is 0).
// With stepwise (an LSTM's layer on an AVX-512 build: STEPWISE_WEIGHT_GRADIENTS), the products over
// the steps' rows go step by step instead, a_t^T d_t added up in wt (N x G) by brgemm with a_t
// (B x N) transposed by hand (stepwise_gradient): in-process A/B on the AMD Zen 4 host
// (benchmarks/kernel_ab.py), a seed-config epoch split over two threads 1.035-1.066x, a seed-config
// slice 1.015x, a preset-shaped stack 1.007-1.030x, 4 of them 1.033x, where MKL (its AVX2 code on
// AMD) runs these products on both threads at once; an RNN's narrower products (G = U) were slower
// so (0.967x, 0.973x), and on the Zen 3 host (AVX2) brgemm ran the hidden weights' gradient 0.62x as
// fast as MKL (benchmarks/README.md, 2026-12-07 sections). A GRU layer's input weights' gradient
// (G = 3U) goes so too (4xGRU(50) epochs 1.018x, slices 1.012-1.029x), and since 6751eb6 its hidden
// weights' (gru_backward).
static void weight_gradients(int T, int B, int I, int U, int G, const float* x, const float* h_all, const float* d,
                             float* grad_w_ih, float* grad_w_hh, float* wt, bool stepwise) {
  if (T > 1) {
    if (stepwise) stepwise_gradient(T - 1, B, U, G, h_all, d + (int64_t)B * G, G, wt);
    else gemm(true, false, U, G, (T - 1) * B, h_all, U, d + (int64_t)B * G, G, 0.f, wt, G);
    transpose_back(wt, U, G, grad_w_hh);
  } else {
    std::fill(grad_w_hh, grad_w_hh + (int64_t)G * U, 0.f);
  }
  input_weight_gradients(T, B, I, G, x, d, G, grad_w_ih, wt, stepwise);
}
#if defined(__AVX512F__)
constexpr bool STEPWISE_WEIGHT_GRADIENTS = true;
#else
constexpr bool STEPWISE_WEIGHT_GRADIENTS = false;
#endif

// Model k's weight gradients, queued in a pair call (see TaskSink) or run now: an LSTM's or an RNN's
// layer, d (K, T, B, G) the gradients of its pre-activations (its input gradient, which the layer
// below waits for, came step by step: backward_product). The queued work holds the tensors, so
// their memory outlives this call.
static void layer_gradients(int64_t k, int T, int B, int I, int U, int G, const Tensor& x, const Tensor& h_all,
                            const Tensor& d, const Tensor& grad_w_ih, const Tensor& grad_w_hh, bool stepwise) {
  const float* xk = x.data_ptr<float>() + k * T * B * I;
  const float* hk = h_all.data_ptr<float>() + k * T * B * U;
  const float* dk = d.data_ptr<float>() + k * T * B * G;
  float* gwi = grad_w_ih.data_ptr<float>() + k * G * I;
  float* gwh = grad_w_hh.data_ptr<float>() + k * G * U;
  run_or_defer([=, keep = std::vector<Tensor>{x, h_all, d, grad_w_ih, grad_w_hh}]() {
    std::vector<float> wt((size_t)std::max(I, U) * G);
    weight_gradients(T, B, I, U, G, xk, hk, dk, gwi, gwh, wt.data(), stepwise);
  });
}

// A backward step's product with the hidden weights, dh_prev = d_t w_hh (d_t: B x G), which carries
// the gradient back in time. Where the layer below wants its gradient (grad_x), dx_t = d_t w_ih is
// made in the same product, d_t [w_hh | w_ih] (whi: G x (U + I), hidden_and_input), into dhn
// (B x (U + I): dh_prev in the first U columns) and copied to gx_t (B x I): one brgemm call per step
// instead of that one and, after the loop, one MKL product over all T*B rows, which took 1.17x as
// long (32 windows) and 1.19x (64) at the seed config's layers (50 inputs and units, 60 steps; AMD
// Zen 4, benchmarks/gemm_shapes.py; benchmarks/README.md, 2026-12-07, 03:45 UTC section). Without
// whi, dh_prev alone (not at t 0).
static std::vector<float> hidden_and_input(const float* w_hh, const float* w_ih, int G, int U, int I) {
  std::vector<float> whi((size_t)G * (U + I));
  for (int j = 0; j < G; ++j) {
    std::memcpy(whi.data() + (size_t)j * (U + I), w_hh + (size_t)j * U, U * sizeof(float));
    std::memcpy(whi.data() + (size_t)j * (U + I) + U, w_ih + (size_t)j * I, I * sizeof(float));
  }
  return whi;
}
static void backward_product(int t, int B, int U, int I, int G, const float* d_t, const float* w_hh, const float* whi,
                             float* dhn, float* gx_t) {
  if (whi) {
    step_gemm(B, U + I, G, d_t, G, whi, U + I, false, dhn, U + I);
    for (int r = 0; r < B; ++r) std::memcpy(gx_t + (int64_t)r * I, dhn + (int64_t)r * (U + I) + U, I * sizeof(float));
  } else if (t) {
    step_gemm(B, U, G, d_t, G, w_hh, U, false, dhn, U);
  }
}

// grad_h (K, T, B, U): the loss's gradient for every output (times mask, where it is defined: the
// output's dropout mask, as in lstm_forward). Returns grad_x (undefined unless needs_x), grad_w_ih,
// grad_w_hh, grad_b_ih, grad_b_hh (two tensors, equal).
std::vector<Tensor> lstm_backward(Tensor grad_h, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h_all, Tensor c_all,
                                  Tensor tc_all, Tensor acts, Tensor mask, bool needs_x) {
  check(grad_h, 4, "grad_h");
  check_mask(mask, grad_h, "grad_h");
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), G = w_hh.size(1), U = G / 4;
  Tensor d_pre = at::empty({K, T, B, G}, x.options());
  Tensor grad_w_ih = at::empty({K, G, I}, x.options());
  Tensor grad_w_hh = at::empty({K, G, U}, x.options());
  Tensor grad_b = at::zeros({K, G}, x.options());
  Tensor grad_x = needs_x ? at::empty({K, T, B, I}, x.options()) : Tensor();
  const int N = needs_x ? U + I : U;  // dh_next's row: dh_prev, then dx_t where grad_x is wanted (backward_product)
  std::vector<float> dh_next((size_t)B * N), dc_next((size_t)B * U), zeros((size_t)B * U, 0.f);
  std::vector<float> ones(mask.defined() ? 0 : (size_t)B * U, 1.f);
  for (int k = 0; k < K; ++k) {
    const int64_t hk = (int64_t)k * T * B * U, gk = (int64_t)k * T * B * G;
    const std::vector<float> whi = needs_x ? hidden_and_input(w_hh.data_ptr<float>() + (int64_t)k * G * U,
                                                              w_ih.data_ptr<float>() + (int64_t)k * G * I, G, U, I)
                                           : std::vector<float>();
    const float* gh0 = grad_h.data_ptr<float>() + hk;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + hk : nullptr;
    const float* tc0 = tc_all.data_ptr<float>() + hk;
    const float* c0 = c_all.data_ptr<float>() + hk;
    const float* a0 = acts.data_ptr<float>() + gk;
    float* dp0 = d_pre.data_ptr<float>() + gk;
    const float* wh = w_hh.data_ptr<float>() + (int64_t)k * G * U;
    float* gb = grad_b.data_ptr<float>() + (int64_t)k * G;
    std::fill(dh_next.begin(), dh_next.end(), 0.f);
    std::fill(dc_next.begin(), dc_next.end(), 0.f);
    float* dhn = dh_next.data();
    float* dcn = dc_next.data();
    for (int t = T - 1; t >= 0; --t) {
      const int64_t o = (int64_t)t * B * U;
      const float* gh = gh0 + o;
      const float* mk = mk0 ? mk0 + o : ones.data();  // times 1 is exact
      const float* tc = tc0 + o;
      const float* ap = a0 + (int64_t)t * B * G;
      const float* cp = t ? c0 + (int64_t)(t - 1) * B * U : zeros.data();
      float* dp = dp0 + (int64_t)t * B * G;
      for (int r = 0; r < B; ++r) {
        const float* ar = ap + (int64_t)r * G;
        float* dr = dp + (int64_t)r * G;
#if defined(__AVX512F__)
        // As the scalar loop below, written out for the reason the forward's is (GCC's loop ended a
        // 50-unit row with scalar code), and adding each gate's gradient to the bias gradient here
        // rather than in a pass over d_pre of its own.
        const int64_t q0 = (int64_t)r * U, n0 = (int64_t)r * N;
        const __m512 one = _mm512_set1_ps(1.f);
        for (int j = 0; j < U; j += 16) {
          const __mmask16 m = lanes(U - j);
          const __m512 i = _mm512_maskz_loadu_ps(m, ar + j), f = _mm512_maskz_loadu_ps(m, ar + U + j);
          const __m512 g = _mm512_maskz_loadu_ps(m, ar + 2 * U + j), oo = _mm512_maskz_loadu_ps(m, ar + 3 * U + j);
          const __m512 tcv = _mm512_maskz_loadu_ps(m, tc + q0 + j);
          const __m512 dh = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, gh + q0 + j), _mm512_maskz_loadu_ps(m, mk + q0 + j),
                                            _mm512_maskz_loadu_ps(m, dhn + n0 + j));
          const __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, oo), _mm512_fnmadd_ps(tcv, tcv, one), _mm512_maskz_loadu_ps(m, dcn + q0 + j));
          const __m512 di = _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i)));
          const __m512 df = _mm512_mul_ps(_mm512_mul_ps(dc, _mm512_maskz_loadu_ps(m, cp + q0 + j)), _mm512_mul_ps(f, _mm512_sub_ps(one, f)));
          const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one));
          const __m512 dO = _mm512_mul_ps(_mm512_mul_ps(dh, tcv), _mm512_mul_ps(oo, _mm512_sub_ps(one, oo)));
          _mm512_mask_storeu_ps(dr + j, m, di);
          _mm512_mask_storeu_ps(dr + U + j, m, df);
          _mm512_mask_storeu_ps(dr + 2 * U + j, m, dg);
          _mm512_mask_storeu_ps(dr + 3 * U + j, m, dO);
          _mm512_mask_storeu_ps(dcn + q0 + j, m, _mm512_mul_ps(dc, f));
          _mm512_mask_storeu_ps(gb + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, gb + j), di));
          _mm512_mask_storeu_ps(gb + U + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, gb + U + j), df));
          _mm512_mask_storeu_ps(gb + 2 * U + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, gb + 2 * U + j), dg));
          _mm512_mask_storeu_ps(gb + 3 * U + j, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, gb + 3 * U + j), dO));
        }
#else
        #pragma omp simd
        for (int j = 0; j < U; ++j) {
          const int64_t q = (int64_t)r * U + j;
          const float i = ar[j], f = ar[U + j], g = ar[2 * U + j], oo = ar[3 * U + j], tcv = tc[q];
          const float dh = gh[q] * mk[q] + dhn[(int64_t)r * N + j];
          const float dc = dcn[q] + dh * oo * (1.f - tcv * tcv);
          dr[j] = dc * g * i * (1.f - i);
          dr[U + j] = dc * cp[q] * f * (1.f - f);
          dr[2 * U + j] = dc * i * (1.f - g * g);
          dr[3 * U + j] = dh * tcv * oo * (1.f - oo);
          dcn[q] = dc * f;
        }
#endif
      }
      backward_product(t, B, U, I, G, dp, wh, needs_x ? whi.data() : nullptr, dhn,
                       needs_x ? grad_x.data_ptr<float>() + ((int64_t)k * T + t) * B * I : nullptr);
    }
    layer_gradients(k, T, B, I, U, G, x, h_all, d_pre, grad_w_ih, grad_w_hh, STEPWISE_WEIGHT_GRADIENTS);
#if !defined(__AVX512F__)  // the AVX-512 loop above added them up
    for (int64_t r = 0; r < (int64_t)T * B; ++r) {
      const float* dr = dp0 + r * G;
      #pragma omp simd
      for (int j = 0; j < G; ++j) gb[j] += dr[j];
    }
#endif
  }
  return {grad_x, grad_w_ih, grad_w_hh, grad_b, grad_b.clone()};
}

// A GRU layer, as PyTorch defines it (gates r, z, n): r = sigm(x w_ir + b_ir + h w_hr + b_hr), z likewise,
// n = tanh(x w_in + b_in + r (h w_hn + b_hn)), h' = (1 - z) n + z h; the layout and loops of
// lstm_forward with G = 3U. The hidden side's product is kept apart from the input side's (n needs it
// by itself), in a per-step buffer. Returns h_all (K, T, B, U), then for the backward pass hn_all
// (h w_hn + b_hn per step), an empty tensor (the LSTM's tc_all slot) and r, z, n (acts), and h_all *
// mask (undefined without a mask).
std::vector<Tensor> gru_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor mask, bool keep) {
  check_layer(x, w_ih, w_hh, b_ih, b_hh, 3);
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), G = w_hh.size(1), U = G / 3;
  // Without keep (inference: nothing for a backward pass) one step's gate buffer and one step's
  // hidden-side n product serve every step.
  const int TA = keep ? T : 1;
  Tensor acts = at::empty({K, TA, B, G}, x.options());
  Tensor h_all = at::empty({K, T, B, U}, x.options());
  Tensor hn_all = at::empty({K, TA, B, U}, x.options());
  const Tensor masked = masked_output(mask, h_all);
  std::vector<float> zeros((size_t)B * G, 0.f), hid((size_t)B * G);
  for (int k = 0; k < K; ++k) {
    float* a0 = acts.data_ptr<float>() + (int64_t)k * TA * B * G;
    const float* bi = b_ih.data_ptr<float>() + (int64_t)k * G;
    const float* bh = b_hh.data_ptr<float>() + (int64_t)k * G;
    // r and z: both biases on the input side; n: b_in there, b_hn inside r (...).
    std::vector<float> bias(G), bhn(bh + 2 * U, bh + 3 * U);
    for (int j = 0; j < G; ++j) bias[j] = j < 2 * U ? bi[j] + bh[j] : bi[j];
    const float* xk = x.data_ptr<float>() + (int64_t)k * T * B * I;
    const std::vector<float> wi_t = transposed(w_ih.data_ptr<float>() + (int64_t)k * G * I, G, I);  // I x G
    const std::vector<float> wh_t = transposed(w_hh.data_ptr<float>() + (int64_t)k * G * U, G, U);  // U x G
    float* h0 = h_all.data_ptr<float>() + (int64_t)k * T * B * U;
    float* hn0 = hn_all.data_ptr<float>() + (int64_t)k * TA * B * U;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    float* mo0 = mask.defined() ? masked.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    for (int t = 0; t < T; ++t) {
      float* ap = a0 + (int64_t)(keep ? t : 0) * B * G;
      const float* hp = t ? h0 + (int64_t)(t - 1) * B * U : zeros.data();
      step_gemm(B, G, I, xk + (int64_t)t * B * I, I, wi_t.data(), G, false, ap, G);  // x_t w_ih^T
      const float* hd = zeros.data();
      if (t) {
        step_gemm(B, G, U, hp, U, wh_t.data(), G, false, hid.data(), G);  // h_prev w_hh^T
        hd = hid.data();
      }
      const int64_t o = (int64_t)t * B * U;
      float* hn = h0 + o;
      float* hnn = hn0 + (keep ? o : 0);
      const float* mkn = mk0 ? mk0 + o : nullptr;
      float* mon = mo0 ? mo0 + o : nullptr;
      for (int r = 0; r < B; ++r) {
        float* ar = ap + (int64_t)r * G;
        const float* hr = hd + (int64_t)r * G;
        const int64_t q0 = (int64_t)r * U;
#if defined(__AVX512F__)
        for (int j = 0; j < U; j += 16) {
          const __mmask16 m = lanes(U - j);
          auto ld = [m](const float* p) { return _mm512_maskz_loadu_ps(m, p); };
          const __m512 rv = sigm16(_mm512_add_ps(_mm512_add_ps(ld(ar + j), ld(hr + j)), ld(bias.data() + j)));
          const __m512 zv = sigm16(_mm512_add_ps(_mm512_add_ps(ld(ar + U + j), ld(hr + U + j)), ld(bias.data() + U + j)));
          const __m512 hnv = _mm512_add_ps(ld(hr + 2 * U + j), ld(bhn.data() + j));
          const __m512 pre = _mm512_fmadd_ps(rv, hnv, _mm512_add_ps(ld(ar + 2 * U + j), ld(bias.data() + 2 * U + j)));
          const __m512 nv = tanh16(pre);
          const __m512 h = _mm512_fmadd_ps(zv, _mm512_sub_ps(ld(hp + q0 + j), nv), nv);
          _mm512_mask_storeu_ps(ar + j, m, rv);
          _mm512_mask_storeu_ps(ar + U + j, m, zv);
          _mm512_mask_storeu_ps(ar + 2 * U + j, m, nv);
          _mm512_mask_storeu_ps(hnn + q0 + j, m, hnv);
          _mm512_mask_storeu_ps(hn + q0 + j, m, h);
          if (mon) _mm512_mask_storeu_ps(mon + q0 + j, m, _mm512_mul_ps(h, ld(mkn + q0 + j)));
        }
#elif defined(SEQCAST_AVX2)
        chunks8(U, [&](int j, auto io) {
          const __m256 rv = sigm8(_mm256_add_ps(_mm256_add_ps(io.ld(ar + j), io.ld(hr + j)), io.ld(bias.data() + j)));
          const __m256 zv = sigm8(_mm256_add_ps(_mm256_add_ps(io.ld(ar + U + j), io.ld(hr + U + j)), io.ld(bias.data() + U + j)));
          const __m256 hnv = _mm256_add_ps(io.ld(hr + 2 * U + j), io.ld(bhn.data() + j));
          const __m256 pre = _mm256_fmadd_ps(rv, hnv, _mm256_add_ps(io.ld(ar + 2 * U + j), io.ld(bias.data() + 2 * U + j)));
          const __m256 nv = tanh8(pre);
          const __m256 h = _mm256_fmadd_ps(zv, _mm256_sub_ps(io.ld(hp + q0 + j), nv), nv);
          io.st(ar + j, rv);
          io.st(ar + U + j, zv);
          io.st(ar + 2 * U + j, nv);
          io.st(hnn + q0 + j, hnv);
          io.st(hn + q0 + j, h);
          if (mon) io.st(mon + q0 + j, _mm256_mul_ps(h, io.ld(mkn + q0 + j)));
        });
#else
        #pragma omp simd
        for (int j = 0; j < U; ++j) {
          const int64_t q = q0 + j;
          const float rv = sigm(ar[j] + hr[j] + bias[j]);
          const float zv = sigm(ar[U + j] + hr[U + j] + bias[U + j]);
          const float hnv = hr[2 * U + j] + bhn[j];
          const float nv = tanh_plain(ar[2 * U + j] + bias[2 * U + j] + rv * hnv);
          const float h = nv + zv * (hp[q] - nv);
          ar[j] = rv;
          ar[U + j] = zv;
          ar[2 * U + j] = nv;
          hnn[q] = hnv;
          hn[q] = h;
        }
        if (mon) {  // in a loop of its own, as lstm_forward's
          #pragma omp simd
          for (int64_t q = q0; q < q0 + U; ++q) mon[q] = hn[q] * mkn[q];
        }
#endif
      }
    }
  }
  return {h_all, hn_all, at::empty({0}, x.options()), acts, masked};
}

// gru_forward's backward pass, lstm_backward's contract (grad_h times mask where it is defined).
// Per step the gradients of the input side's pre-activations (r, z, n) and of the hidden side's
// (h w_hh^T + b_hh: the same for r and z, n's times r) go to one row of d_pre, 4U wide:
// [hidden n | r | z | n]. The input side's are then its last 3U columns, in w_ih's row order, and
// the hidden side's its first 3U, in the order n, r, z (w_hn first: whp), so each side's products
// read one block of columns: dh_prev = dh z + d_pre[:, :3U] whp and, where the layer below wants its
// gradient, dx_t = d_pre[:, U:] w_ih, both per step by brgemm (as the LSTM's backward_product) rather
// than one MKL product over all T*B rows after the loop; the hidden weights' gradient is one product
// rather than two (r, z, then n). In-process A/B (benchmarks/kernel_ab.py) on the AMD Zen 4 host:
// see benchmarks/README.md, 2026-12-07, 05:30 UTC section.
std::vector<Tensor> gru_backward(Tensor grad_h, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h_all, Tensor hn_all,
                                 Tensor acts, Tensor mask, bool needs_x) {
  check(grad_h, 4, "grad_h");
  check_mask(mask, grad_h, "grad_h");
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), G = w_hh.size(1), U = G / 3, W = G + U;
  Tensor d_pre = at::empty({K, T, B, W}, x.options());
  Tensor grad_w_ih = at::empty({K, G, I}, x.options());
  Tensor grad_w_hh = at::empty({K, G, U}, x.options());
  Tensor grad_b_ih = at::zeros({K, G}, x.options());
  Tensor grad_b_hh = at::zeros({K, G}, x.options());
  Tensor grad_x = needs_x ? at::empty({K, T, B, I}, x.options()) : Tensor();
  std::vector<float> dh_next((size_t)B * U), zeros((size_t)B * U, 0.f), whp((size_t)G * U);
  std::vector<float> ones(mask.defined() ? 0 : (size_t)B * U, 1.f);
  for (int k = 0; k < K; ++k) {
    const int64_t hk = (int64_t)k * T * B * U, gk = (int64_t)k * T * B * G, dk = (int64_t)k * T * B * W;
    const float* gh0 = grad_h.data_ptr<float>() + hk;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + hk : nullptr;
    const float* h0 = h_all.data_ptr<float>() + hk;
    const float* hn0 = hn_all.data_ptr<float>() + hk;
    const float* a0 = acts.data_ptr<float>() + gk;
    float* dp0 = d_pre.data_ptr<float>() + dk;
    const float* wh = w_hh.data_ptr<float>() + (int64_t)k * G * U;
    const float* wik = w_ih.data_ptr<float>() + (int64_t)k * G * I;
    float* gx0 = needs_x ? grad_x.data_ptr<float>() + (int64_t)k * T * B * I : nullptr;
    // w_hh's rows n, r, z: the hidden side's columns of d_pre
    std::copy(wh + (int64_t)2 * U * U, wh + (int64_t)G * U, whp.begin());
    std::copy(wh, wh + (int64_t)2 * U * U, whp.begin() + (int64_t)U * U);
    float* gbi = grad_b_ih.data_ptr<float>() + (int64_t)k * G;
    float* gbh = grad_b_hh.data_ptr<float>() + (int64_t)k * G;
    std::fill(dh_next.begin(), dh_next.end(), 0.f);
    float* dhn = dh_next.data();
    for (int t = T - 1; t >= 0; --t) {
      const int64_t o = (int64_t)t * B * U;
      const float* gh = gh0 + o;
      const float* mk = mk0 ? mk0 + o : ones.data();  // times 1 is exact
      const float* hnv0 = hn0 + o;
      const float* hp = t ? h0 + o - (int64_t)B * U : zeros.data();
      const float* ap = a0 + (int64_t)t * B * G;
      float* dp = dp0 + (int64_t)t * B * W;
      for (int r = 0; r < B; ++r) {
        const float* ar = ap + (int64_t)r * G;
        float* drow = dp + (int64_t)r * W;  // [hidden n | r | z | n]
        const int64_t q0 = (int64_t)r * U;
#if defined(__AVX512F__)
        // adding each gradient into the bias gradients as it goes (no pass of their own)
        const __m512 one = _mm512_set1_ps(1.f);
        for (int j = 0; j < U; j += 16) {
          const __mmask16 m = lanes(U - j);
          auto ld = [m](const float* p) { return _mm512_maskz_loadu_ps(m, p); };
          auto add = [m, &ld](float* p, __m512 v) { _mm512_mask_storeu_ps(p, m, _mm512_add_ps(ld(p), v)); };
          const __m512 rv = ld(ar + j), zv = ld(ar + U + j), nv = ld(ar + 2 * U + j);
          const __m512 dh = _mm512_fmadd_ps(ld(gh + q0 + j), ld(mk + q0 + j), ld(dhn + q0 + j));
          const __m512 dn = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(one, zv)), _mm512_fnmadd_ps(nv, nv, one));
          const __m512 dz = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(ld(hp + q0 + j), nv)),
                                          _mm512_mul_ps(zv, _mm512_sub_ps(one, zv)));
          const __m512 dr = _mm512_mul_ps(_mm512_mul_ps(dn, ld(hnv0 + q0 + j)), _mm512_mul_ps(rv, _mm512_sub_ps(one, rv)));
          const __m512 dhn_n = _mm512_mul_ps(dn, rv);
          _mm512_mask_storeu_ps(drow + j, m, dhn_n);
          _mm512_mask_storeu_ps(drow + U + j, m, dr);
          _mm512_mask_storeu_ps(drow + 2 * U + j, m, dz);
          _mm512_mask_storeu_ps(drow + 3 * U + j, m, dn);
          _mm512_mask_storeu_ps(dhn + q0 + j, m, _mm512_mul_ps(dh, zv));
          add(gbi + j, dr);
          add(gbi + U + j, dz);
          add(gbi + 2 * U + j, dn);
          add(gbh + 2 * U + j, dhn_n);
        }
#else
        #pragma omp simd
        for (int j = 0; j < U; ++j) {
          const int64_t q = q0 + j;
          const float rv = ar[j], zv = ar[U + j], nv = ar[2 * U + j];
          const float dh = gh[q] * mk[q] + dhn[q];
          const float dn = dh * (1.f - zv) * (1.f - nv * nv);
          const float dz = dh * (hp[q] - nv) * (zv * (1.f - zv));
          const float dr = dn * hnv0[q] * (rv * (1.f - rv));
          drow[j] = dn * rv;
          drow[U + j] = dr;
          drow[2 * U + j] = dz;
          drow[3 * U + j] = dn;
          dhn[q] = dh * zv;
        }
#endif
      }
      if (t) step_gemm(B, U, G, dp, W, whp.data(), U, true, dhn, U);  // dh_prev = dh z + (hidden side) w_hh
      if (needs_x) step_gemm(B, I, G, dp + U, W, wik, I, false, gx0 + (int64_t)t * B * I, I);  // dx_t = d_in w_ih
    }
    float* gwi = grad_w_ih.data_ptr<float>() + (int64_t)k * G * I;
    float* gw = grad_w_hh.data_ptr<float>() + (int64_t)k * G * U;
    const float* xk = x.data_ptr<float>() + (int64_t)k * T * B * I;
    // The weight gradients, queued in a pair call (see TaskSink) or run now; the queued work holds
    // the tensors, so their memory outlives this call.
    run_or_defer([=, keep = std::vector<Tensor>{x, h_all, d_pre, grad_w_ih, grad_w_hh}]() {
      std::vector<float> wt((size_t)std::max(I, U) * G);
      input_weight_gradients(T, B, I, G, xk, dp0 + U, W, gwi, wt.data(), STEPWISE_WEIGHT_GRADIENTS);
      // grad_w_hh^T (U x G, columns n, r, z) = h_prev^T d_pre[:, :3U], then transposed back into r, z, n
      if (T > 1) {
        if (STEPWISE_WEIGHT_GRADIENTS) stepwise_gradient(T - 1, B, U, G, h0, dp0 + (int64_t)B * W, W, wt.data());
        else gemm(true, false, U, G, (T - 1) * B, h0, U, dp0 + (int64_t)B * W, W, 0.f, wt.data(), G);
        transpose_back(wt.data(), U, G, gw, U);
      } else {
        std::fill(gw, gw + (int64_t)G * U, 0.f);
      }
    });
#if !defined(__AVX512F__)  // the AVX-512 loop above added them up
    for (int64_t r = 0; r < (int64_t)T * B; ++r) {
      const float* a = dp0 + r * W;
      #pragma omp simd
      for (int j = 0; j < G; ++j) gbi[j] += a[U + j];
      #pragma omp simd
      for (int j = 0; j < U; ++j) gbh[2 * U + j] += a[j];
    }
#endif
    std::copy(gbi, gbi + 2 * U, gbh);  // r and z: the same on both sides
  }
  return {grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// A vanilla RNN layer, h' = act(x w_ih^T + b_ih + h w_hh^T + b_hh), act tanh or ReLU (relu): the
// layout and loops of lstm_forward with G = U, each step's pre-activation written where its output
// goes. Returns h_all (K, T, B, U), three empty tensors (the LSTM's c_all, tc_all and acts slots: the
// backward pass reads only h_all), and h_all * mask (undefined without a mask).
std::vector<Tensor> rnn_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b_ih, Tensor b_hh, Tensor mask, bool relu) {
  check_layer(x, w_ih, w_hh, b_ih, b_hh, 1);
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), U = w_hh.size(1);
  Tensor h_all = at::empty({K, T, B, U}, x.options());
  const Tensor masked = masked_output(mask, h_all);
  for (int k = 0; k < K; ++k) {
    const float* bi = b_ih.data_ptr<float>() + (int64_t)k * U;
    const float* bh = b_hh.data_ptr<float>() + (int64_t)k * U;
    std::vector<float> bias(U);
    for (int j = 0; j < U; ++j) bias[j] = bi[j] + bh[j];
    const float* xk = x.data_ptr<float>() + (int64_t)k * T * B * I;
    const std::vector<float> wi_t = transposed(w_ih.data_ptr<float>() + (int64_t)k * U * I, U, I);  // I x U
    const std::vector<float> wh_t = transposed(w_hh.data_ptr<float>() + (int64_t)k * U * U, U, U);  // U x U
    float* h0 = h_all.data_ptr<float>() + (int64_t)k * T * B * U;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    float* mo0 = mask.defined() ? masked.data_ptr<float>() + (int64_t)k * T * B * U : nullptr;
    for (int t = 0; t < T; ++t) {
      const int64_t o = (int64_t)t * B * U;
      float* hn = h0 + o;
      step_gemm(B, U, I, xk + (int64_t)t * B * I, I, wi_t.data(), U, false, hn, U);  // x_t w_ih^T
      if (t) step_gemm(B, U, U, hn - (int64_t)B * U, U, wh_t.data(), U, true, hn, U);  // += h_prev w_hh^T
      const float* mkn = mk0 ? mk0 + o : nullptr;
      float* mon = mo0 ? mo0 + o : nullptr;
      for (int r = 0; r < B; ++r) {
        float* hr = hn + (int64_t)r * U;
#if defined(__AVX512F__)
        for (int j = 0; j < U; j += 16) {
          const __mmask16 m = lanes(U - j);
          const __m512 pre = _mm512_add_ps(_mm512_maskz_loadu_ps(m, hr + j), _mm512_maskz_loadu_ps(m, bias.data() + j));
          // vmaxps returns its second operand when one is NaN: pre second, so NaN passes through
          const __m512 h = relu ? _mm512_max_ps(_mm512_setzero_ps(), pre) : tanh16(pre);
          _mm512_mask_storeu_ps(hr + j, m, h);
          if (mon) _mm512_mask_storeu_ps(mon + (int64_t)r * U + j, m, _mm512_mul_ps(h, _mm512_maskz_loadu_ps(m, mkn + (int64_t)r * U + j)));
        }
#elif defined(SEQCAST_AVX2)
        chunks8(U, [&](int j, auto io) {
          const __m256 pre = _mm256_add_ps(io.ld(hr + j), io.ld(bias.data() + j));
          // vmaxps returns its second operand when one is NaN: pre second, so NaN passes through
          const __m256 h = relu ? _mm256_max_ps(_mm256_setzero_ps(), pre) : tanh8(pre);
          io.st(hr + j, h);
          if (mon) io.st(mon + (int64_t)r * U + j, _mm256_mul_ps(h, io.ld(mkn + (int64_t)r * U + j)));
        });
#else
        // one loop per activation: GCC left a loop that chose between them scalar
        if (relu) {
          #pragma omp simd
          for (int j = 0; j < U; ++j) {
            const float pre = hr[j] + bias[j];
            hr[j] = pre < 0.f ? 0.f : pre;  // false for NaN: NaN passes through
          }
        } else {
          #pragma omp simd
          for (int j = 0; j < U; ++j) hr[j] = tanh_plain(hr[j] + bias[j]);
        }
        if (mon) {  // in a loop of its own, as lstm_forward's
          #pragma omp simd
          for (int j = 0; j < U; ++j) mon[(int64_t)r * U + j] = hr[j] * mkn[(int64_t)r * U + j];
        }
#endif
      }
    }
  }
  const Tensor none = at::empty({0}, x.options());
  return {h_all, none, none, none, masked};
}

// rnn_forward's backward pass, lstm_backward's contract: per step the pre-activation's gradient
// d = (dh) act'(h) (1 - h^2 for tanh, h > 0 for ReLU), and dh_prev = d w_hh.
std::vector<Tensor> rnn_backward(Tensor grad_h, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h_all, Tensor mask,
                                 bool needs_x, bool relu) {
  check(grad_h, 4, "grad_h");
  check_mask(mask, grad_h, "grad_h");
  const int K = x.size(0), T = x.size(1), B = x.size(2), I = x.size(3), U = w_hh.size(1);
  Tensor d_pre = at::empty({K, T, B, U}, x.options());
  Tensor grad_w_ih = at::empty({K, U, I}, x.options());
  Tensor grad_w_hh = at::empty({K, U, U}, x.options());
  Tensor grad_b = at::zeros({K, U}, x.options());
  Tensor grad_x = needs_x ? at::empty({K, T, B, I}, x.options()) : Tensor();
  const int N = needs_x ? U + I : U;  // dh_next's row, as lstm_backward's
  std::vector<float> dh_next((size_t)B * N);
  std::vector<float> ones(mask.defined() ? 0 : (size_t)B * U, 1.f);
  for (int k = 0; k < K; ++k) {
    const int64_t hk = (int64_t)k * T * B * U;
    const std::vector<float> whi = needs_x ? hidden_and_input(w_hh.data_ptr<float>() + (int64_t)k * U * U,
                                                              w_ih.data_ptr<float>() + (int64_t)k * U * I, U, U, I)
                                           : std::vector<float>();
    const float* gh0 = grad_h.data_ptr<float>() + hk;
    const float* mk0 = mask.defined() ? mask.data_ptr<float>() + hk : nullptr;
    const float* h0 = h_all.data_ptr<float>() + hk;
    float* dp0 = d_pre.data_ptr<float>() + hk;
    const float* wh = w_hh.data_ptr<float>() + (int64_t)k * U * U;
    std::fill(dh_next.begin(), dh_next.end(), 0.f);
    float* dhn = dh_next.data();
    for (int t = T - 1; t >= 0; --t) {
      const int64_t o = (int64_t)t * B * U;
      const float* gh = gh0 + o;
      const float* mk = mk0 ? mk0 + o : ones.data();  // times 1 is exact
      const float* h = h0 + o;
      float* dp = dp0 + o;
      for (int r = 0; r < B; ++r) {
        const float* dr = dhn + (int64_t)r * N;
        #pragma omp simd
        for (int64_t q = (int64_t)r * U; q < (int64_t)(r + 1) * U; ++q) {
          const float dh = gh[q] * mk[q] + dr[q - (int64_t)r * U];
          dp[q] = relu ? (h[q] > 0.f ? dh : 0.f) : dh * (1.f - h[q] * h[q]);
        }
      }
      backward_product(t, B, U, I, U, dp, wh, needs_x ? whi.data() : nullptr, dhn,
                       needs_x ? grad_x.data_ptr<float>() + ((int64_t)k * T + t) * B * I : nullptr);
    }
    layer_gradients(k, T, B, I, U, U, x, h_all, d_pre, grad_w_ih, grad_w_hh, false);
    float* gb = grad_b.data_ptr<float>() + (int64_t)k * U;
    for (int64_t r = 0; r < (int64_t)T * B; ++r) {
      const float* d = dp0 + r * U;
      #pragma omp simd
      for (int j = 0; j < U; ++j) gb[j] += d[j];
    }
  }
  return {grad_x, grad_w_ih, grad_w_hh, grad_b, grad_b.clone()};
}

// Inverted-dropout mask values (scale or 0), counter-based: value i of a batch's masks laid end to
// end is kept when half i % 2 (low 32 bits, then high) of SplitMix64 (Steele, Lea and Flood, 2014)
// of counter i / 2 + 1 after seed is below threshold. Returns rows x length values, row r being
// values base + r * stride onwards, so a slice of a batch draws its own part. masks_reference in
// native.py is the same in NumPy. A seed-config batch's 579,200 values take ~0.26 ms, 10x less than
// NumPy's PCG64 uniforms plus the threshold and scale passes.
static inline uint64_t splitmix64(uint64_t seed, uint64_t pair) {
  uint64_t z = seed + (pair + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Tensor dropout_masks(int64_t seed, int64_t rows, int64_t length, int64_t base, int64_t stride, int64_t threshold,
                     double scale) {
  TORCH_CHECK(rows >= 0 && length >= 0 && base >= 0 && stride >= 0 && threshold >= 0, "dropout_masks: negative argument");
  Tensor out = torch::empty({rows, length}, torch::kFloat32);
  const uint64_t s = (uint64_t)seed, below = (uint64_t)threshold;
  const float kept = (float)scale;
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out.data_ptr<float>() + r * length;
    const uint64_t first = (uint64_t)base + (uint64_t)r * (uint64_t)stride;
    int64_t j = 0;
    if ((first & 1) && length > 0) o[j++] = (splitmix64(s, first / 2) >> 32) < below ? kept : 0.f;
    for (; j + 1 < length; j += 2) {  // first + j is even here
      const uint64_t z = splitmix64(s, (first + j) / 2);
      o[j] = (z & 0xFFFFFFFFull) < below ? kept : 0.f;
      o[j + 1] = (z >> 32) < below ? kept : 0.f;
    }
    if (j < length) o[j] = (splitmix64(s, (first + j) / 2) & 0xFFFFFFFFull) < below ? kept : 0.f;
  }
  return out;
}

// A stack of L LSTM (cell 0), GRU (1) or vanilla RNN (2: tanh, 3: ReLU) layers in one call, for one autograd node per stack
// instead of two per layer (the layer and its dropout mask), each with its Python and dispatch
// overhead; the masks are applied in the layers' gate passes. weights: w_ih, w_hh, b_ih, b_hh per
// layer, K-leading; masks: none, or L - 1 tensors (K, T, B, U) applied to each layer's output but
// the last. Returns the last layer's last step (K, B, U), then per layer what its backward reads:
// its input, then the layer's first four returns (LSTM: h_all, c_all, tc_all, acts; GRU: h_all,
// hn_all, an empty tensor, acts; RNN: h_all and three empty tensors). Without keep (inference) only
// the last step: each layer's buffers are freed once the next has read its output, and the gates
// of one step at a time are kept (1,000 seed-config windows would keep ~80 MB per layer otherwise), and
// of an LSTM's cell state and its tanh two steps, of a GRU's hidden-side n product one.
// A single model's weights may come without the model axis (a StackedRNN's own parameters: no
// unsqueeze node per weight in the autograd graph, each with its Python and dispatch cost); they are
// viewed with it here, and stack_backward returns their gradients in their own shape.
static std::vector<Tensor> with_model_axis(std::vector<Tensor> weights) {
  for (size_t i = 0; i < weights.size(); ++i)
    if (weights[i].dim() == (i % 4 < 2 ? 2 : 1)) weights[i] = weights[i].unsqueeze(0);
  return weights;
}

std::vector<Tensor> stack_forward(Tensor x, std::vector<Tensor> weights, std::vector<Tensor> masks, int64_t cell,
                                  bool keep) {
  TORCH_CHECK(cell >= 0 && cell <= 3, "stack_forward: cell must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN ReLU)");
  TORCH_CHECK(x.dim() == 4 && x.numel() > 0, "stack_forward: x must be (models, steps, windows, features), none of them 0");
  const size_t L = weights.size() / 4;
  TORCH_CHECK(L >= 1 && weights.size() == 4 * L && (masks.empty() || masks.size() == L - 1), "stack_forward: bad arguments");
  weights = with_model_axis(weights);
  std::vector<Tensor> out(1);
  Tensor in = x;
  for (size_t l = 0; l < L; ++l) {
    const Tensor mask = l + 1 < L && !masks.empty() ? masks[l] : Tensor();
    const Tensor &w_ih = weights[4 * l], &w_hh = weights[4 * l + 1], &b_ih = weights[4 * l + 2], &b_hh = weights[4 * l + 3];
    std::vector<Tensor> r = cell == 0   ? lstm_forward(in, w_ih, w_hh, b_ih, b_hh, mask, keep)
                            : cell == 1 ? gru_forward(in, w_ih, w_hh, b_ih, b_hh, mask, keep)
                                        : rnn_forward(in, w_ih, w_hh, b_ih, b_hh, mask, cell == 3);
    if (keep) {
      out.push_back(in);
      out.insert(out.end(), r.begin(), r.begin() + 4);
    }
    if (l + 1 < L) in = mask.defined() ? r[4] : r[0];
    else out[0] = r[0].select(1, r[0].size(1) - 1).contiguous();
  }
  return out;
}

// grad_last (K, B, U); saved: stack_forward's per-layer tensors. Returns grad_x (undefined unless
// needs_x), then per layer grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, each in its weight's shape.
std::vector<Tensor> stack_backward(Tensor grad_last, std::vector<Tensor> saved, std::vector<Tensor> weights,
                                   std::vector<Tensor> masks, bool needs_x, int64_t cell) {
  TORCH_CHECK(cell >= 0 && cell <= 3, "stack_backward: cell must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) or 3 (RNN ReLU)");
  const size_t L = weights.size() / 4;
  TORCH_CHECK(L >= 1 && saved.size() == 5 * L && (masks.empty() || masks.size() == L - 1), "stack_backward: bad arguments");
  const std::vector<Tensor> own = weights;
  weights = with_model_axis(weights);
  const Tensor& top = saved[5 * (L - 1) + 1];
  Tensor g = at::zeros_like(top);
  g.select(1, top.size(1) - 1).copy_(grad_last);
  std::vector<Tensor> out(1 + 4 * L);
  for (size_t l = L; l-- > 0;) {
    const Tensor mask = l + 1 < L && !masks.empty() ? masks[l] : Tensor();
    const bool grad_in = l > 0 || needs_x;
    const Tensor &in = saved[5 * l], &w_ih = weights[4 * l], &w_hh = weights[4 * l + 1];
    std::vector<Tensor> r =
        cell == 0   ? lstm_backward(g, in, w_ih, w_hh, saved[5 * l + 1], saved[5 * l + 2], saved[5 * l + 3],
                                    saved[5 * l + 4], mask, grad_in)
        : cell == 1 ? gru_backward(g, in, w_ih, w_hh, saved[5 * l + 1], saved[5 * l + 2], saved[5 * l + 4], mask, grad_in)
                    : rnn_backward(g, in, w_ih, w_hh, saved[5 * l + 1], mask, grad_in, cell == 3);
    for (int i = 0; i < 4; ++i) out[1 + 4 * l + i] = r[1 + i].view(own[4 * l + i].sizes());
    if (l > 0) g = r[0];
    else out[0] = r[0];
  }
  return out;
}

// One training step's forward and backward for K LSTM, GRU or RNN stacks (cell as stack_forward's) with linear heads
// and an MSE, MAE or Huber loss (loss_kind 0, 1, 2),
// from the input windows to every gradient in one call that releases the GIL: a slice of a split
// batch (training._BatchSplitter), a whole batch (train_model's unsplit loop) or K models trained
// together (ensemble.train_many). Through autograd a 32-window seed-config slice ran ~0.6 ms of
// Python and dispatch per ~9 ms on one thread, and two slices in parallel threads queued for the
// GIL with it; a preset batch is mostly that glue.
// x (K, B, T, F) and y (K, B, H): each model's windows and targets; weights: the stacks', as
// stack_forward (a single model's may come without the model axis, and so may head_w (K, H, U)
// and head_b (K, H)). With dropout (seeds: one per model; empty: none) model k's masks are drawn
// here as StackedRNN.dropout_masks draws them from seeds[k] for windows start.. of a batch of batch
// windows: layer l's values start at l * T * batch * U + start * U with a row stride batch * U, the
// last step's at (L - 1) * T * batch * U + start * U. Returns weight * each model's mean loss
// (K), then its gradients for every weight of the stacks and head_w, head_b, each in its
// weight's shape (what torch.autograd.grad gives for the sum of the K losses). This is its body,
// with the windows already time-major, xt (K, T, B, F), as train_batches gathers them; train_step
// (below) transposes x first.
static std::vector<Tensor> train_step_time_major(Tensor xt, Tensor y, std::vector<Tensor> weights, Tensor head_w,
                                                 Tensor head_b, std::vector<int64_t> seeds, int64_t threshold,
                                                 double scale, int64_t batch, int64_t start, double weight,
                                                 int64_t loss_kind, int64_t cell) {
  torch::NoGradGuard no_grad;
  check(xt, 4, "x"); check(y, 3, "y");
  const size_t L = weights.size() / 4;
  TORCH_CHECK(L >= 1 && weights.size() == 4 * L, "train_step: bad arguments");
  const int64_t K = xt.size(0), B = xt.size(2), T = xt.size(1);
  const Tensor hw = head_w.dim() == 2 ? head_w.unsqueeze(0) : head_w;  // (K, H, U)
  const Tensor hb = head_b.dim() == 1 ? head_b.unsqueeze(0) : head_b;  // (K, H)
  const int64_t H = hw.size(1), U = hw.size(2);
  TORCH_CHECK(hw.size(0) == K && hb.size(0) == K && hb.size(1) == H && y.size(0) == K && y.size(1) == B && y.size(2) == H,
              "train_step: y must be (models, windows, horizon) and the heads (models, horizon, units)");
  TORCH_CHECK(seeds.empty() || (int64_t)seeds.size() == K, "train_step: one seed per model");
  std::vector<Tensor> masks;
  Tensor last_mask;
  if (!seeds.empty()) {
    const int64_t layer_size = T * batch * U;
    auto draw = [&](int64_t rows, int64_t base, int64_t stride) {
      std::vector<Tensor> each;
      for (int64_t k = 0; k < K; ++k) each.push_back(dropout_masks(seeds[k], rows, B * U, base, stride, threshold, scale));
      return at::stack(each);  // (K, rows, B * U)
    };
    for (size_t l = 0; l + 1 < L; ++l) masks.push_back(draw(T, (int64_t)l * layer_size + start * U, batch * U).view({K, T, B, U}));
    last_mask = draw(1, (int64_t)(L - 1) * layer_size + start * U, 0).view({K, B, U});
  }
  std::vector<Tensor> forward = stack_forward(xt, weights, masks, cell, true);
  const Tensor& last = forward[0];  // (K, B, U)
  // The linear heads and the loss by hand, for every model, window and output: as baddbmm, the loss's
  // reductions and two bmm they were ~12 ATen calls, each with its dispatch and allocations, ~15-24
  // us of a preset-shaped batch's ~270 (benchmarks/README.md, 2026-12-07, 03:45 UTC section).
  // The loss per element and its derivative as F.mse_loss, F.l1_loss and F.huber_loss (delta 1)
  // define them and their backward passes compute them: 0 MSE, 1 MAE, 2 Huber. Each model's loss is
  // summed in double, then scaled by weight / (B H).
  TORCH_CHECK(loss_kind >= 0 && loss_kind <= 2, "train_step: unknown loss");
  const Tensor lm = last_mask.defined() ? last * last_mask : last;
  Tensor losses = at::empty({K}, xt.options()), d_last = at::empty({K, B, U}, xt.options());
  Tensor grad_hw = at::zeros({K, H, U}, xt.options()), grad_hb = at::zeros({K, H}, xt.options());
  const Tensor hwc = hw.contiguous(), hbc = hb.contiguous();
  const float* lmp = lm.data_ptr<float>();
  const float* mp = last_mask.defined() ? last_mask.data_ptr<float>() : nullptr;
  const float* yp = y.data_ptr<float>();
  const float f = (float)(weight / (double)(B * H));  // d loss / d element, as a float scalar times a float tensor
  std::vector<float> d_out(H);
  for (int64_t k = 0; k < K; ++k) {
    const float* w = hwc.data_ptr<float>() + k * H * U;
    const float* bias = hbc.data_ptr<float>() + k * H;
    float* gw = grad_hw.data_ptr<float>() + k * H * U;
    float* gb = grad_hb.data_ptr<float>() + k * H;
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const float* l = lmp + (k * B + b) * U;
      for (int64_t h = 0; h < H; ++h) {
        float pred = 0.f;
        for (int64_t u = 0; u < U; ++u) pred += l[u] * w[h * U + u];
        const float diff = bias[h] + pred - yp[(k * B + b) * H + h];
        float e, d;
        if (loss_kind == 0) {
          e = diff * diff;
          d = diff * (2.f * f);
        } else if (loss_kind == 1) {
          e = std::fabs(diff);
          d = (float)((0.f < diff) - (diff < 0.f)) * f;  // torch.sign: 0 for NaN (the loss is NaN)
        } else {
          const float a = std::fabs(diff);
          e = a < 1.f ? 0.5f * diff * diff : a - 0.5f;  // NaN: a - 0.5, NaN
          d = (diff < -1.f ? -1.f : diff > 1.f ? 1.f : diff) * f;  // clamp keeps NaN
        }
        sum += e;
        d_out[h] = d;
        gb[h] += d;
        for (int64_t u = 0; u < U; ++u) gw[h * U + u] += d * l[u];
      }
      float* dl = d_last.data_ptr<float>() + (k * B + b) * U;
      for (int64_t u = 0; u < U; ++u) {
        float v = 0.f;
        for (int64_t h = 0; h < H; ++h) v += d_out[h] * w[h * U + u];
        dl[u] = mp ? v * mp[(k * B + b) * U + u] : v;
      }
    }
    losses.data_ptr<float>()[k] = (float)(sum * (weight / (double)(B * H)));
  }
  std::vector<Tensor> backward =
      stack_backward(d_last, std::vector<Tensor>(forward.begin() + 1, forward.end()), weights, masks, false, cell);
  std::vector<Tensor> out{losses};
  out.insert(out.end(), backward.begin() + 1, backward.end());
  out.push_back(grad_hw.view(head_w.sizes()));
  out.push_back(grad_hb.view(head_b.sizes()));
  return out;
}

std::vector<Tensor> train_step(Tensor x, Tensor y, std::vector<Tensor> weights, Tensor head_w, Tensor head_b,
                               std::vector<int64_t> seeds, int64_t threshold, double scale, int64_t batch, int64_t start,
                               double weight, int64_t loss_kind, int64_t cell) {
  check(x, 4, "x");
  return train_step_time_major(x.transpose(1, 2).contiguous(), y, weights, head_w, head_b, seeds, threshold, scale,
                               batch, start, weight, loss_kind, cell);
}

// adam_step's update of one parameter of count floats with the gradient g0 (+ g1 where Two): one
// loop with no branch or inner loop in it, so that GCC vectorises it. The loop it replaces summed the
// gradient lists in an inner loop over them, and GCC's -fopt-info-vec reported it "not vectorized:
// control flow in loop": ~3 ns a float (a seed-config batch's 72,000 floats ~0.2 ms of CPU, shared by
// its two threads, and 3 % of a group of eight preset-shaped LSTMs' samples; benchmarks/README.md,
// 2026-12-07, 02:10-03:30 UTC).
template <bool Two>
static inline void adam_update(int64_t count, float* p, float* m, float* v, const float* g0, const float* g1, float b1,
                               float c1, float b2, float c2, float s, float root, float e) {
  #pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const float g = Two ? g0[j] + g1[j] : g0[j];
    m[j] = m[j] * b1 + g * c1;
    v[j] = v[j] * b2 + g * g * c2;
    p[j] -= s * m[j] / (std::sqrt(v[j]) / root + e);
  }
}

// torch.optim.Adam's update (amsgrad, maximize and weight decay off) of each params[i] with the sum
// of grads[0][i], grads[1][i], ..., in place in the optimizer's own state (exp_avgs, exp_avg_sqs and
// the step counts, 0-dimensional float32 or float64 tensors, incremented here), with the constants
// computed in double as torch's fused CPU kernel computes them: m = beta1 m + (1 - beta1) g,
// v = beta2 v + (1 - beta2) g^2, p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
// One pass per parameter instead of a sum of the slices' gradients and then the optimizer's kernel
// after a split batch, while the other core waits: 0.27 against 0.90 ms per seed-config batch in
// real fits (benchmarks/README.md, section 2026-12-06, 16:25-17:30 UTC).
void adam_step(std::vector<Tensor> params, std::vector<std::vector<Tensor>> grads, std::vector<Tensor> exp_avgs,
               std::vector<Tensor> exp_avg_sqs, std::vector<Tensor> steps, double lr, double beta1, double beta2,
               double eps) {
  const size_t n = params.size();
  TORCH_CHECK(!grads.empty() && exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n,
              "adam_step: bad arguments");
  for (const auto& list : grads) TORCH_CHECK(list.size() == n, "adam_step: one gradient per parameter in each list");
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    check(p, p.dim(), "a parameter");
    for (const Tensor* t : {&exp_avgs[i], &exp_avg_sqs[i]})
      TORCH_CHECK(t->sizes() == p.sizes() && t->scalar_type() == at::kFloat && t->is_contiguous(), "adam_step: state does not match its parameter");
    for (const auto& list : grads)
      TORCH_CHECK(list[i].sizes() == p.sizes() && list[i].scalar_type() == at::kFloat && list[i].is_contiguous(),
                  "adam_step: a gradient does not match its parameter");
    TORCH_CHECK(steps[i].numel() == 1 && (steps[i].scalar_type() == at::kFloat || steps[i].scalar_type() == at::kDouble),
                "adam_step: a step count must be one float");
  }
  for (size_t i = 0; i < n; ++i) {
    double step;
    if (steps[i].scalar_type() == at::kFloat) step = ++steps[i].data_ptr<float>()[0];
    else step = ++steps[i].data_ptr<double>()[0];
    const double step_size = lr / (1 - std::pow(beta1, step));
    const float b1 = (float)beta1, b2 = (float)beta2, c1 = (float)(1 - beta1), c2 = (float)(1 - beta2);
    const float s = (float)step_size, root = (float)std::sqrt(1 - std::pow(beta2, step)), e = (float)eps;
    float* p = params[i].data_ptr<float>();
    float* m = exp_avgs[i].data_ptr<float>();
    float* v = exp_avg_sqs[i].data_ptr<float>();
    const float* g0 = grads[0][i].data_ptr<float>();
    const int64_t count = params[i].numel();
    if (grads.size() == 1) {
      adam_update<false>(count, p, m, v, g0, nullptr, b1, c1, b2, c2, s, root, e);
    } else if (grads.size() == 2) {
      adam_update<true>(count, p, m, v, g0, grads[1][i].data_ptr<float>(), b1, c1, b2, c2, s, root, e);
    } else {  // more than two slices: their sum first, in the same order (g0 + g1, then + g2, ...)
      std::vector<float> sum(g0, g0 + count);
      for (size_t l = 1; l < grads.size(); ++l) {
        const float* gl = grads[l][i].data_ptr<float>();
        #pragma omp simd
        for (int64_t j = 0; j < count; ++j) sum[j] += gl[j];
      }
      adam_update<false>(count, p, m, v, sum.data(), nullptr, b1, c1, b2, c2, s, root, e);
    }
  }
}

// The thread that runs a split batch's second slice (training._BatchSplitter, two threads): the
// calling thread posts the slice and runs the first, then waits for the second by spinning, and
// the worker spins for its next job for up to 2 ms (about the Python between two batches) before
// it sleeps. So neither slice waits for the OS to wake a thread, and the second runs without
// Python: from a Python pool thread it started a median 0.27-0.33 ms after the first, and its
// Python then queued for the GIL (benchmarks/README.md, 2026-12-06, 18:20 UTC section). Created
// on the thread count of the fit that uses it (at::set_num_threads(1) is what
// training.one_thread_pool's threads run first too); destroying it joins the thread.
class SliceWorker {
 public:
  SliceWorker() : thread_([this] { loop(); }) {}
  ~SliceWorker() {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      stop_ = true;
      posted_.fetch_add(1);
    }
    wake_.notify_one();
    thread_.join();
  }
  SliceWorker(const SliceWorker&) = delete;
  SliceWorker& operator=(const SliceWorker&) = delete;
  void post(std::function<void()> job) {
    {
      // posted_ changes under the lock, so a worker about to sleep cannot miss it
      std::lock_guard<std::mutex> guard(mutex_);
      job_ = std::move(job);
      error_ = nullptr;
      posted_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_one();
  }
  // Waits until the posted job has run, then rethrows what it threw.
  void wait() {
    const int64_t target = posted_.load(std::memory_order_acquire);
    while (finished_.load(std::memory_order_acquire) < target) spin_pause();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void loop() {
    at::set_num_threads(1);
    int64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
      while (posted_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) spin_pause();
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return posted_.load() != seen; });
        seen = posted_.load();
        if (stop_) return;
        job = std::move(job_);
      }
      try {
        job();
      } catch (...) {
        error_ = std::current_exception();
      }
      finished_.store(seen, std::memory_order_release);
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_;
  std::function<void()> job_;
  std::exception_ptr error_;
  bool stop_ = false;
  std::atomic<int64_t> posted_{0}, finished_{0};
  std::thread thread_;  // last: started once the members above exist
};

// Runs first on this thread and second on worker at the same time and returns when both are done,
// rethrowing first's exception if it threw, else second's (second may read first's frame, so it is
// waited for either way).
static void run_both(SliceWorker& worker, const std::function<void()>& first, std::function<void()> second) {
  worker.post(std::move(second));
  try {
    first();
  } catch (...) {
    try {
      worker.wait();
    } catch (...) {
    }
    throw;
  }
  worker.wait();
}

// One split batch's training step as train_step's two slices, windows 0..split on this thread and
// split..n on the worker, with the batch's dropout seeds: the two slices' train_step results, in
// that order (what the splitter's two train_step calls return; the same to the bit).
std::vector<std::vector<Tensor>> train_step_pair(SliceWorker& worker, Tensor x, Tensor y, std::vector<Tensor> weights,
                                                 Tensor head_w, Tensor head_b, std::vector<int64_t> seeds,
                                                 int64_t threshold, double scale, int64_t split, int64_t loss_kind,
                                                 int64_t cell) {
  check(x, 4, "x"); check(y, 3, "y");
  const int64_t n = x.size(1);
  TORCH_CHECK(0 < split && split < n && y.size(1) == n, "train_step_pair: split must leave windows on both sides");
  const Tensor x1 = x.narrow(1, split, n - split).contiguous(), y1 = y.narrow(1, split, n - split).contiguous();
  TaskSink sink;  // the slices' weight-gradient GEMMs, run by whichever thread is free (see TaskSink)
  // A slice's forward and backward with its deferrable work queued, then the queue drained.
  auto slice = [&](auto&& step) {
    tls_sink = &sink;
    try {
      step();
    } catch (...) {
      tls_sink = nullptr;
      --sink.running;
      sink.drain();
      throw;
    }
    tls_sink = nullptr;
    --sink.running;
    sink.drain();
  };
  std::vector<Tensor> first, second;
  run_both(
      worker,
      [&] {
        slice([&] {
          first = train_step(x.narrow(1, 0, split).contiguous(), y.narrow(1, 0, split).contiguous(), weights, head_w,
                             head_b, seeds, threshold, scale, n, 0, double(split) / n, loss_kind, cell);
        });
      },
      [&] {
        slice([&] {
          second = train_step(x1, y1, weights, head_w, head_b, seeds, threshold, scale, n, split,
                              double(n - split) / n, loss_kind, cell);
        });
      });
  if (sink.error) std::rethrow_exception(sink.error);
  return {first, second};
}

// adam_step with the parameters shared out between this thread and worker's (about half the
// floats each, whole parameters), as the split batch's two slices were: each parameter is updated
// as adam_step updates it, so the result is the same to the bit.
void adam_step_pair(SliceWorker& worker, std::vector<Tensor> params, std::vector<std::vector<Tensor>> grads,
                    std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs, std::vector<Tensor> steps, double lr,
                    double beta1, double beta2, double eps) {
  const size_t n = params.size();
  TORCH_CHECK(exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n && !grads.empty(),
              "adam_step_pair: bad arguments");
  for (const auto& list : grads) TORCH_CHECK(list.size() == n, "adam_step_pair: one gradient per parameter in each list");
  // Largest parameters first, each to the side with fewer floats so far.
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return params[a].numel() > params[b].numel(); });
  struct Part {
    std::vector<Tensor> params, exp_avgs, exp_avg_sqs, steps;
    std::vector<std::vector<Tensor>> grads;
    int64_t floats = 0;
  } parts[2];
  for (auto& part : parts) part.grads.resize(grads.size());
  for (size_t i : order) {
    Part& part = parts[0].floats <= parts[1].floats ? parts[0] : parts[1];
    part.params.push_back(params[i]);
    part.exp_avgs.push_back(exp_avgs[i]);
    part.exp_avg_sqs.push_back(exp_avg_sqs[i]);
    part.steps.push_back(steps[i]);
    for (size_t l = 0; l < grads.size(); ++l) part.grads[l].push_back(grads[l][i]);
    part.floats += params[i].numel();
  }
  auto run = [&](Part& part) {
    if (!part.params.empty())
      adam_step(part.params, part.grads, part.exp_avgs, part.exp_avg_sqs, part.steps, lr, beta1, beta2, eps);
  };
  run_both(worker, [&] { run(parts[0]); }, [&] { run(parts[1]); });
}

// count consecutive batches of an epoch of K models, each a train_step and an adam_step, with no
// Python between them: model k's batch b holds the windows X[order[k, ...]] and targets
// Y[order[k, ...]] (X (N, T, F), Y (N, H), order (K, N) each model's shuffled windows) from
// first + b * batch; seeds K mask seeds per batch, batch by batch (empty: no dropout). With worker
// (one model) each batch is split in half as train_step_pair and its update is adam_step_pair, on
// both threads; without (nullptr) everything runs on this thread. Adds each model's loss times the
// batch's windows to total (K, float64), as training.train_model's and ensemble._train_group's
// loops do, in the same order, so the fit is the same to the bit.
void train_batches(SliceWorker* worker, Tensor X, Tensor Y, Tensor order, int64_t first, int64_t batch, int64_t count,
                   std::vector<int64_t> seeds, int64_t threshold, double scale, std::vector<Tensor> weights,
                   Tensor head_w, Tensor head_b, int64_t loss_kind, int64_t cell, std::vector<Tensor> params,
                   std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs, std::vector<Tensor> steps, double lr,
                   double beta1, double beta2, double eps, Tensor total) {
  TORCH_CHECK(X.dim() == 3 && Y.dim() == 2 && order.dim() == 2 && order.scalar_type() == at::kLong &&
                  total.scalar_type() == at::kDouble && total.dim() == 1 && total.size(0) == order.size(0) &&
                  total.is_contiguous() && order.is_contiguous() && X.scalar_type() == at::kFloat &&
                  Y.scalar_type() == at::kFloat && X.is_contiguous() && Y.is_contiguous() && X.size(0) == Y.size(0) &&
                  (worker == nullptr || order.size(0) == 1),
              "train_batches: bad arguments");
  const int64_t K = order.size(0), N = order.size(1);
  TORCH_CHECK(seeds.empty() || (int64_t)seeds.size() == count * K, "train_batches: K seeds per batch");
  for (int64_t b = 0; b < count; ++b) {
    const int64_t start = first + b * batch, n = std::min(batch, N - start);
    TORCH_CHECK(n >= (worker ? 2 : 1), "train_batches: a batch needs ", worker ? 2 : 1, " windows");
    const std::vector<int64_t> seed =
        seeds.empty() ? std::vector<int64_t>{} : std::vector<int64_t>(seeds.begin() + b * K, seeds.begin() + (b + 1) * K);
    // The batch's windows gathered by hand, time-major (K, T, n, F) where train_step takes them so,
    // and the targets (K, n, H): index_select, a view and a transposed copy were four ATen calls.
    const int64_t T = X.size(1), F = X.size(2), H = Y.size(1);
    const int64_t* idx = order.data_ptr<int64_t>();
    const float *xs = X.data_ptr<float>(), *ys = Y.data_ptr<float>();
    const bool time_major = worker == nullptr;
    const std::vector<int64_t> shape = time_major ? std::vector<int64_t>{K, T, n, F} : std::vector<int64_t>{K, n, T, F};
    Tensor x = at::empty(shape, X.options());
    Tensor y = at::empty({K, n, H}, Y.options());
    float *xp = x.data_ptr<float>(), *yp = y.data_ptr<float>();
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = 0; i < n; ++i) {
        const int64_t w = idx[k * N + start + i];
        TORCH_CHECK(0 <= w && w < X.size(0), "train_batches: a window index out of range");
        const float* src = xs + w * T * F;
        if (time_major)
          for (int64_t t = 0; t < T; ++t) std::memcpy(xp + ((k * T + t) * n + i) * F, src + t * F, F * sizeof(float));
        else
          std::memcpy(xp + (k * n + i) * T * F, src, T * F * sizeof(float));
        std::memcpy(yp + (k * n + i) * H, ys + w * H, H * sizeof(float));
      }
    Tensor loss;
    if (worker) {
      std::vector<std::vector<Tensor>> pair =
          train_step_pair(*worker, x, y, weights, head_w, head_b, seed, threshold, scale, n / 2, loss_kind, cell);
      loss = pair[0][0] + pair[1][0];
      std::vector<std::vector<Tensor>> grads{{pair[0].begin() + 1, pair[0].end()}, {pair[1].begin() + 1, pair[1].end()}};
      adam_step_pair(*worker, params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps);
    } else {
      std::vector<Tensor> out =
          train_step_time_major(x, y, weights, head_w, head_b, seed, threshold, scale, n, 0, 1.0, loss_kind, cell);
      loss = out[0];
      std::vector<std::vector<Tensor>> grads{{out.begin() + 1, out.end()}};
      adam_step(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, eps);
    }
    // total += loss * n, as total.add_(loss.to(kDouble) * n) computed it
    const float* lp = loss.data_ptr<float>();
    double* tp = total.data_ptr<double>();
    for (int64_t k = 0; k < K; ++k) tp[k] += (double)lp[k] * (double)n;
  }
}

// The calls release the GIL: train_many runs its groups in Python threads.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("train_batches", &train_batches, py::call_guard<py::gil_scoped_release>());
  m.def("adam_step_pair", &adam_step_pair, py::call_guard<py::gil_scoped_release>());
  // module_local: another build of this module in the process (another seqcast) registers its own
  py::class_<SliceWorker>(m, "SliceWorker", py::module_local()).def(py::init<>());
  m.def("train_step_pair", &train_step_pair, py::call_guard<py::gil_scoped_release>());
  m.def("dropout_masks", &dropout_masks, py::call_guard<py::gil_scoped_release>());
  m.def("stack_forward", &stack_forward, py::call_guard<py::gil_scoped_release>());
  m.def("stack_backward", &stack_backward, py::call_guard<py::gil_scoped_release>());
  m.def("train_step", &train_step, py::call_guard<py::gil_scoped_release>());
  m.def("adam_step", &adam_step, py::call_guard<py::gil_scoped_release>());
}
"""

_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp-simd"]
_lock = threading.Lock()
_module = None
_failure: str | None = None


def _cpu_key() -> str:
    """What the compiled code depends on besides its source: the CPU's instruction-set flags
    (``-march=native``), torch and Python."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), flags)
    except OSError:
        pass
    return "|".join([flags, torch.__version__, sys.version.split()[0], platform.machine()])


def build_name() -> str:
    """The compiled module's name, and so its build directory under torch's extensions folder: a
    digest of the source, the flags, :func:`_cpu_key` and where this torch is installed. The last
    gives each environment (venv) its own build: the build files name that torch's headers by path,
    so two venvs sharing one directory rebuilt the module (30-45 s) each time the other had used it."""
    where = os.path.dirname(os.path.abspath(torch.__file__))
    digest = hashlib.sha256((SOURCE + " ".join(_FLAGS) + _cpu_key() + "|" + where).encode()).hexdigest()[:16]
    return f"seqcast_lstm_{digest}"


def _load():
    """The compiled module, built or loaded on the first call of the process; None if it cannot
    be (then a RuntimeWarning, once, says why)."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is not None or _failure is not None:
            return _module
        if os.environ.get("SEQCAST_NATIVE", "1") == "0":
            _failure = "SEQCAST_NATIVE=0"
            return None
        started = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load_inline

            if shutil.which("ninja") is None:
                try:  # the ninja wheel, when installed, keeps its binary next to its module
                    import ninja

                    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
                except ImportError:
                    pass
            _module = load_inline(build_name(), cpp_sources=SOURCE, extra_cflags=_FLAGS, verbose=False)
        except Exception as error:  # any failure means: train with PyTorch's kernel
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            _failure = f"{type(error).__name__}: {first}"
            warnings.warn(
                f"seqcast could not compile its LSTM/GRU/RNN kernel ({_failure[:300]}); LSTMs train with "
                "PyTorch's oneDNN kernel and GRUs and RNNs with TorchScript loops instead, which is slower. "
                "Install a C++ compiler and ninja to get it, or set SEQCAST_NATIVE=0 to skip the attempt.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        seconds = time.perf_counter() - started
        if seconds > 5:
            print(f"seqcast: compiled its LSTM/GRU/RNN kernel for this CPU in {seconds:.0f} s (once per machine)", file=sys.stderr)
        return _module


# Largest forward GEMM work of one layer call (layer_flops, with n_in = max(inputs, units): the
# largest layer of a stack) that trains with native_lstm rather than oneDNN, when the call runs on
# one thread (MAX_LAYER_FLOPS_ONE_THREAD: a slice of a split batch, a train_many group, threads=1)
# and when torch may use more (MAX_LAYER_FLOPS: an unsplit batch, where oneDNN's kernel uses every
# thread and this layer's gate loops one). Measured on the 2-core Intel host with
# training.keep_freed_memory's malloc settings (benchmarks/README.md, 2026-12-06), oneDNN time over
# native time. Forward+backward of one stack, one thread (benchmarks/native_lstm.py): the preset's
# layer (10.5 MFLOP) 1.93, 1xLSTM(64) at lookback 20 (41.9) 1.45, 2xLSTM(32) at lookback 60 (31.5)
# 1.59, a seed-config slice (76.8) 1.26, a whole seed batch (153.6) 1.18, 2xLSTM(128) (503) 0.99.
# Whole seed-config fits, ABBA rounds: split (slices of 76.8) 1.10-1.25; one thread (batches of
# 153.6) 1.04-1.32, median 1.14; unsplit at two threads 0.90-1.17, median 1.02, so oneDNN there.
MAX_LAYER_FLOPS = 100e6
MAX_LAYER_FLOPS_ONE_THREAD = 160e6
# The same bound on one thread where torch's CPU capability is AVX2 (no AVX-512: the AMD EPYC
# host, Zen 3, 2026-12-07), where oneDNN's LSTM kernel does less well against this layer. Whole
# split fits at lookback 60, batch 64, alternating rounds, oneDNN's seconds per epoch over the
# compiled layer's: 2xLSTM(128) (slices of 503 MFLOP a layer call) 1.09, 1.33, 1.24; 2xLSTM(180)
# (995 MFLOP) 1.05, 1.05; 2xLSTM(256) (2.0 GFLOP) 0.98, 0.85 (benchmarks/README.md, 2026-12-07).
MAX_LAYER_FLOPS_ONE_THREAD_AVX2 = 600e6


def lstm_bound_one_thread() -> float:
    """:data:`MAX_LAYER_FLOPS_ONE_THREAD_AVX2` on a CPU torch runs at its AVX2 capability, else
    :data:`MAX_LAYER_FLOPS_ONE_THREAD` (measured with AVX-512; other CPUs were not measured)."""
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    return MAX_LAYER_FLOPS_ONE_THREAD_AVX2 if avx2 else MAX_LAYER_FLOPS_ONE_THREAD


# The same bounds for a GRU layer (native_gru), against the hand-written GRU of models.fused_gru
# (TorchScript time loops), which is what a GRU trains with otherwise. Forward+backward of one stack,
# fused_gru's time over native_gru's, 60 steps (benchmarks/README.md, section 2026-12-06, 16:25-17:30 UTC):
# one thread: a seed-config slice of 4xGRU(50) (layer 57.6 MFLOP) 2.72, a whole batch 2.22,
# 1xGRU(32) at lookback 20 (batch 32, 9 features) 4.51, 2xGRU(128) at batch 64 (755 MFLOP) 1.62,
# 2xGRU(256) (3.0 GFLOP) 1.30, 1xGRU(512) (6.1 GFLOP) 0.83; two threads: 2.73, 2.22, 4.25, 1.46,
# 2xGRU(128) at batch 256, lookback 30 (1.5 GFLOP) 1.22, 2xGRU(256) 1.03, 1xGRU(512) 0.59. The
# per-step products of a large layer run on one thread here and on all of them in fused_gru.
MAX_GRU_LAYER_FLOPS = 2e9
MAX_GRU_LAYER_FLOPS_ONE_THREAD = 4e9

# The same for a vanilla RNN layer (native_rnn) against models.fused_rnn, tanh, 60 steps, batch 64
# unless said (benchmarks/README.md, section 2026-12-06, 16:25-17:30 UTC): one thread: a seed-config slice of
# 4xRNN(50) (batch 32, layer 19.2 MFLOP) 1.98, a whole batch 1.63, 1xRNN(32) at lookback 20 (batch
# 32, 3 features) 2.55, 2xRNN(128) (252 MFLOP) 1.32, 2xRNN(256) (1.0 GFLOP) 1.12, 2xRNN(512) (4.0
# GFLOP) 1.03, 1xRNN(1024) (16 GFLOP) 0.70; two threads: 1.94, 1.63, 2.91, 1.18, 0.89, 0.72, 0.36.
MAX_RNN_LAYER_FLOPS = 500e6
MAX_RNN_LAYER_FLOPS_ONE_THREAD = 4e9

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
# Per cell: the bound on one intra-op thread, and on more.
_BOUNDS = {
    "lstm": (lstm_bound_one_thread(), MAX_LAYER_FLOPS),
    "gru": (MAX_GRU_LAYER_FLOPS_ONE_THREAD, MAX_GRU_LAYER_FLOPS),
    "rnn_tanh": (MAX_RNN_LAYER_FLOPS_ONE_THREAD, MAX_RNN_LAYER_FLOPS),
    "rnn_relu": (MAX_RNN_LAYER_FLOPS_ONE_THREAD, MAX_RNN_LAYER_FLOPS),
}


# The bounds for inference (forward only, nothing kept; native_infer) against nn.LSTM/GRU/RNN,
# forward FLOPs of a layer call as layer_flops counts them, one thread / two (benchmarks/README.md,
# section 2026-12-06, 16:25-17:30 UTC): LSTM 48 MFLOP 1.36/1.80, 66 1.21/0.93, 328 1.11/0.74, 1,200 1.21/0.96, 7,900
# 1.11/0.78; GRU 36 3.72/3.96, 49 2.34/2.54, 900 1.94/1.77, 5,900 1.92/1.15, 23,600 1.37/0.86;
# RNN 12 3.08/4.12, 300 1.40/1.40, 7,900 1.42/0.93.
_INFER_BOUNDS = {
    "lstm": (8e9, 50e6),
    "gru": (24e9, 6e9),
    "rnn_tanh": (8e9, 500e6),
    "rnn_relu": (8e9, 500e6),
}


def layer_flops(steps: int, batch: int, n_in: int, units: int, cell: str = "lstm") -> float:
    """Forward FLOPs of the gate GEMMs of one layer call of ``cell`` (a :data:`CELLS` name; the
    per-window, per-layer count of ``StackedRNN.forward_flops`` times the batch):
    2·steps·batch·(n_in + units)·gates·units."""
    return 2.0 * steps * batch * (n_in + units) * _GATES[cell] * units


def suits(
    steps: int, batch: int, n_in: int, units: int, threads: int | None = None, cell: str = "lstm",
    inference: bool = False,
) -> bool:
    """Whether a ``cell`` layer (a :data:`CELLS` name) of this size gains from the compiled layer on
    ``threads`` intra-op threads (None: torch's count on the calling thread): in training, for an
    LSTM at most :func:`lstm_bound_one_thread` on one, :data:`MAX_LAYER_FLOPS` on more; for a
    GRU and an RNN the ``MAX_GRU_…`` and ``MAX_RNN_…`` bounds; with ``inference``, the bounds
    measured for :func:`native_infer`."""
    threads = torch.get_num_threads() if threads is None else threads
    one, more = (_INFER_BOUNDS if inference else _BOUNDS)[cell]
    return layer_flops(steps, batch, n_in, units, cell) <= (one if threads <= 1 else more)


def _require() -> None:
    """Raise unless the compiled module is loaded (building it on the first call)."""
    if _load() is None:
        raise RuntimeError(f"seqcast's compiled layer is not available ({_failure})")


def available() -> bool:
    """Whether :func:`native_lstm` can run here (compiles it on the first call of the process)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None while it has not been asked, or when it is True)."""
    return _failure


def _mask_threshold(keep: float) -> tuple[int, float]:
    """A value is kept when its 32 random bits are below ``round(keep * 2**32)``; kept values are
    ``float32(1 / keep)``."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    return min(round(keep * 2**32), 2**32), 1.0 / keep


def dropout_masks(seed: int, keep: float, rows: int, length: int, base: int = 0, stride: int = 0) -> Tensor:
    """Inverted-dropout mask values, float32 ``(rows, length)``: ``1/keep`` with probability
    ``keep``, else 0, all independent, determined by ``seed`` (0 <= seed < 2**63). Row ``r`` holds
    values ``base + r·stride`` to ``base + r·stride + length - 1`` of one endless sequence, so a
    slice of a batch can draw its part of the batch's masks by itself.

    Counter-based: value ``i`` is kept when half ``i % 2`` (the low 32 bits, then the high) of
    SplitMix64's output for counter ``i // 2 + 1`` after ``seed`` is below ``keep·2**32``. The
    compiled loop computes it where :func:`available`, else :func:`masks_reference` (NumPy), which
    gives the same values, so a run's masks do not depend on whether the compiler worked. Why a
    generator of our own: NumPy's PCG64 took 2.3 ms for a seed-config batch's masks, on one of the
    two cores, in a batch of ~16 ms; this loop takes ~0.26 ms (benchmarks/README.md, 2026-12-06).
    SplitMix64 passes BigCrush (Steele, Lea and Flood, 2014)."""
    threshold, scale = _mask_threshold(keep)
    if _load() is not None:
        return _module.dropout_masks(seed, rows, length, base, stride, threshold, scale)
    return masks_reference(seed, keep, rows, length, base, stride)


def masks_reference(seed: int, keep: float, rows: int, length: int, base: int = 0, stride: int = 0) -> Tensor:
    """:func:`dropout_masks` in NumPy (uint64 arithmetic wraps like C's): the fallback without the
    compiled module, and the reference the tests compare it with. Rows whose first value has the
    same parity share one array of whole SplitMix64 outputs (two values each)."""
    threshold, scale = _mask_threshold(keep)
    out = np.empty((rows, length), dtype=np.float32)
    firsts = np.uint64(base) + np.uint64(stride) * np.arange(rows, dtype=np.uint64)
    for parity in (0, 1):
        chosen = np.flatnonzero(firsts % np.uint64(2) == parity)
        if chosen.size == 0 or length == 0:
            continue
        z = (firsts[chosen] // np.uint64(2))[:, None] + np.arange(1, (parity + length + 1) // 2 + 1, dtype=np.uint64)
        z *= np.uint64(0x9E3779B97F4A7C15)
        z += np.uint64(seed)
        for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z ^= z >> np.uint64(shift)
            z *= np.uint64(multiplier)
        z ^= z >> np.uint64(31)
        # each output's low half, then its high half; an odd first value starts at a high half
        bits = z.astype("<u8", copy=False).view("<u4")[:, parity : parity + length]
        out[chosen] = np.where(bits < threshold, np.float32(scale), np.float32(0))
    return torch.from_numpy(out)


# The losses train_step computes (training.LOSSES' names), and the C++ code of each.
TRAIN_STEP_LOSSES = {"mse": 0, "mae": 1, "huber": 2}

# The cells the compiled layer runs (StackedRNN.native_cell), and the C++ code of each.
CELLS = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}


def train_step(
    x: Tensor,
    y: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    *,
    seeds: list[int] | None,
    keep: float = 1.0,
    batch: int | None = None,
    start: int = 0,
    weight: float = 1.0,
    loss: str = "mse",
    cell: str = "lstm",
) -> tuple[Tensor, list[Tensor]]:
    """Forward and backward of one training step of K LSTM, GRU or vanilla RNN stacks (``cell``, one
    of :data:`CELLS`) with linear heads and ``loss``
    (``"mse"``, ``"mae"`` or ``"huber"``: ``F.mse_loss``, ``F.l1_loss``, ``F.huber_loss``),
    in one compiled call that releases the GIL. ``x (K, B, T, F)`` and ``y (K, B, H)``: each
    model's windows ``start:start+B`` of a batch of ``batch`` (None: B) and their targets;
    ``weights`` per layer ``(weight_ih, weight_hh, bias_ih, bias_hh)`` with a leading model axis
    (for K = 1 also the parameters themselves, and so the heads ``(K, H, U)``, ``(K, H)``);
    ``seeds`` each model's mask seed for this batch (``StackedRNN.batch_mask_seed``; None: no
    dropout) and ``keep`` 1 - the dropout rate. Returns ``weight`` × each model's mean loss
    ``(K,)``, and the gradient of their sum for every weight of every layer, then the head's weight
    and bias, each in its weight's shape: what ``torch.autograd.grad`` gives through
    ``StackedRNN.forward`` with ``StackedRNN.dropout_masks(seed, batch, T, start, start + B)``, up
    to float rounding. Call only when :func:`available` is True."""
    _require()
    losses, *grads = _module.train_step(
        *_step_arguments(x, y, weights, head_weight, head_bias, seeds, keep), x.shape[1] if batch is None else batch,
        start, weight, TRAIN_STEP_LOSSES[loss], CELLS[cell],
    )
    return losses, grads


def _step_arguments(x, y, weights, head_weight, head_bias, seeds, keep) -> list:
    """The C++ train_step's and train_step_pair's leading arguments: the windows, targets, flat
    weights, heads, seeds and the dropout threshold and scale."""
    threshold, scale = (0, 1.0) if seeds is None else _mask_threshold(keep)
    flat = [w for layer in weights for w in layer]
    return [x.contiguous(), y.contiguous(), flat, head_weight, head_bias,
            [] if seeds is None else [int(s) for s in seeds], threshold, scale]


def slice_worker():
    """A thread of the compiled module's for :func:`train_step_pair`'s second slice (the C++
    ``SliceWorker``): it runs torch on one intra-op thread, so create it where the fit's thread
    count is already set (inside ``training.intra_op_threads``), and drop it to end the thread.
    Call only when :func:`available` is True."""
    _require()
    return _module.SliceWorker()


def train_step_pair(
    worker,
    x: Tensor,
    y: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    *,
    split: int,
    seeds: list[int] | None,
    keep: float = 1.0,
    loss: str = "mse",
    cell: str = "lstm",
) -> list[tuple[Tensor, list[Tensor]]]:
    """:func:`train_step` for a batch ``x (K, B, T, F)``, ``y (K, B, H)`` split at window
    ``split``: windows ``0:split`` on this thread and ``split:B`` on ``worker``
    (:func:`slice_worker`) at the same time, in one call that releases the GIL. Returns each
    slice's ``(losses, gradients)`` as :func:`train_step` returns them for that slice of a batch
    of B (``batch=B``, ``start``, ``weight`` its share of the windows): the same to the bit."""
    _require()
    first, second = _module.train_step_pair(
        worker, *_step_arguments(x, y, weights, head_weight, head_bias, seeds, keep), split, TRAIN_STEP_LOSSES[loss],
        CELLS[cell],
    )
    return [(first[0], first[1:]), (second[0], second[1:])]


def train_batches(
    X: Tensor,
    y: Tensor,
    order: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    head_weight: Tensor,
    head_bias: Tensor,
    params: list[Tensor],
    optimizer: torch.optim.Adam,
    total: Tensor,
    *,
    first: int,
    batch: int,
    count: int,
    seeds: list[int] | None,
    keep: float = 1.0,
    loss: str = "mse",
    cell: str = "lstm",
    worker=None,
) -> None:
    """``count`` training batches in one compiled call that releases the GIL: what
    ``training.train_model``'s loop (split or not) and ``ensemble``'s group loop do for those
    batches, the same to the bit. Each batch runs as :func:`train_step` (or, with ``worker``, as
    :func:`train_step_pair`), then :func:`adam_step` of ``optimizer`` (whose state must exist, for
    ``params`` in gradient order), and adds the loss times its windows to ``total`` (float64).

    Without ``worker``: K models on this thread (``order`` (K, N), each model's shuffled windows;
    ``weights`` and heads with a leading model axis as for :func:`train_step`, or a single model's
    own with ``order`` (1, N)); model k's batch b holds ``X[order[k, s:s + batch]]`` and ``y[...]``,
    ``s = first + b * batch``, ``seeds[b * K + k]`` its mask seed (None: no dropout), and ``total``
    is (K,). With ``worker`` (:func:`slice_worker`): one model (``order`` (1, N)), each batch split in
    halves, the second on the worker's thread, and Adam on both threads."""
    _require()
    x, y, flat, _, _, seeds, threshold, scale = _step_arguments(X, y, weights, head_weight, head_bias, seeds, keep)
    _module.train_batches(
        worker, x, y, order, first, batch, count, seeds, threshold, scale, flat, head_weight, head_bias,
        TRAIN_STEP_LOSSES[loss], CELLS[cell], *_adam_arguments(params, optimizer), total,
    )


def _adam_arguments(params: list[Tensor], optimizer: torch.optim.Adam) -> list:
    """The C++ adam_step's arguments after the gradients: ``params``, the optimizer's moments and
    step counts for them, and its lr, betas and eps."""
    group = optimizer.param_groups[0]
    states = [optimizer.state[p] for p in params]
    beta1, beta2 = group["betas"]
    return [
        [p.detach() for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
        [s["step"] for s in states], float(group["lr"]), float(beta1), float(beta2), float(group["eps"]),
    ]


def adam_step(params: list[Tensor], grads: list[list[Tensor]], optimizer: torch.optim.Adam, worker=None) -> None:
    """``optimizer.step()`` for ``params`` with gradients ``sum(grads[k][i] for k)``, in one compiled
    pass per parameter that releases the GIL, for a ``torch.optim.Adam`` whose one parameter group
    holds ``params`` (each with state already: after its first step) and has amsgrad, maximize and
    weight decay off (training.native_adam_applies checks). Updates the parameters and the
    optimizer's state in place (``state_dict`` stays valid); equal to ``torch.optim.Adam`` up to
    float rounding. With ``worker`` (:func:`slice_worker`) the parameters are shared out between
    this thread and the worker's, about half the floats each (the same result to the bit). Call only
    when :func:`available` is True."""
    _require()
    detached, *state = _adam_arguments(params, optimizer)
    arguments = (detached, [[g.contiguous() for g in gs] for gs in grads], *state)
    if worker is None:
        _module.adam_step(*arguments)
    else:
        _module.adam_step_pair(worker, *arguments)


class _NativeStack(torch.autograd.Function):
    """A whole LSTM, GRU or vanilla RNN stack (``cell``, a :data:`CELLS` code) of K models, dropout masks between
    its layers: x (K, T, B, I); returns the last layer's last step (K, B, U)."""

    @staticmethod
    def forward(ctx, cell: int, x: Tensor, masks: list[Tensor], *weights: Tensor) -> Tensor:
        weights = [w.contiguous() for w in weights]
        masks = [m.contiguous() for m in masks]
        last, *saved = _module.stack_forward(x.contiguous(), weights, masks, cell, True)
        ctx.save_for_backward(*saved, *weights, *masks)
        ctx.sizes = (len(saved), len(weights))
        ctx.cell = cell
        return last

    @staticmethod
    def backward(ctx, grad_last: Tensor):
        tensors = ctx.saved_tensors
        n_saved, n_weights = ctx.sizes
        saved, weights, masks = tensors[:n_saved], tensors[n_saved : n_saved + n_weights], tensors[n_saved + n_weights :]
        needs_x = ctx.needs_input_grad[1]
        grad_x, *grads = _module.stack_backward(grad_last.contiguous(), saved, weights, masks, needs_x, ctx.cell)
        return (None, grad_x if needs_x else None, None, *grads)


def native_lstm(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
) -> Tensor:
    """:func:`~seqcast.models.fused_lstm`'s contract on the compiled layer: K models' LSTM stacks
    on time-major ``x (T, K, B, F)`` with K-leading PyTorch-layout weights per layer (for K = 1
    also the layer's own ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), ``masks``
    ``(T, K, B, U)`` applied to each layer's output but the last; returns the last step
    ``(K, B, U)``. Call only when :func:`available` is True."""
    return _native_stack("lstm", x, weights, masks)


def native_gru(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
) -> Tensor:
    """:func:`native_lstm`'s contract for GRU stacks (PyTorch-layout GRU weights, gates r, z, n)."""
    return _native_stack("gru", x, weights, masks)


def native_rnn(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """:func:`native_lstm`'s contract for vanilla RNN stacks with ``nonlinearity`` ``"tanh"`` or
    ``"relu"`` (PyTorch-layout RNN weights)."""
    return _native_stack(f"rnn_{nonlinearity}", x, weights, masks)


def native_infer(x: Tensor, weights: list[tuple[Tensor, Tensor, Tensor, Tensor]], cell: str) -> Tensor:
    """The last step ``(K, B, U)`` of K models' ``cell`` stacks (a :data:`CELLS` name) on time-major
    ``x (T, K, B, F)``, without dropout and without anything kept for a backward pass: inference
    (``StackedRNN.infers_natively``). Call only when :func:`available` is True."""
    _require()
    flat = [w.detach().contiguous() for layer in weights for w in layer]
    return _module.stack_forward(x.detach().transpose(0, 1).contiguous(), flat, [], CELLS[cell], False)[0]


def _native_stack(cell: str, x: Tensor, weights: list, masks: list[Tensor] | None) -> Tensor:
    _require()
    between = [] if masks is None else [m.transpose(0, 1) for m in masks[: len(weights) - 1]]
    return _NativeStack.apply(CELLS[cell], x.transpose(0, 1), between, *(w for layer in weights for w in layer))
