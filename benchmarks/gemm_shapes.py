"""The compiled layers' GEMMs at their own shapes, one thread: oneDNN's brgemm micro-kernel (the
per-step products) against MKL's ``sgemm_`` (the weight and input gradients), and the layouts the
weight gradients could take, and a layer's backward products that read its pre-activations'
gradients (dh_prev per step; grad_x after the loop or in the same per-step product).

    python benchmarks/gemm_shapes.py [--units 50] [--steps 60] [--batch 32]

Builds a small extension of its own with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler
and ninja, as ``seqcast.native``), so it times the same two entry points the kernel calls
(``at::native::cpublas::brgemm`` and ``sgemm_``) without the layers around them. Each figure is the
best of 7 blocks of repeated calls. The tables of benchmarks/README.md's sections "2026-12-07,
00:00-01:40 UTC" (then two scratch scripts), "2026-12-07, 02:10-03:30 UTC" and "2026-12-07, 03:45
UTC" came from it.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.cpp_extension import load_inline

COMMON = r"""
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>
#include <chrono>
extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);
// Row-major C (M x N) = op(A) op(B) + beta C, as seqcast.native's gemm.
static inline void gemm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                        float beta, float* C, int ldc) {
  const float one = 1.f;
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  sgemm_(&cb, &ca, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}
template <class F> double best_of(F f, int reps) {
  for (int i = 0; i < 20; ++i) f();
  double best = 1e9;
  for (int r = 0; r < 7; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps);
  }
  return best;
}
"""  # the two entry points and the timer; benchmarks/group_ceiling.py builds on them too
SOURCE = COMMON + r"""
// One product C (M x N) += A (M x K) B (K x N): brgemm (which = 0) or sgemm_ (1).
double product(int which, int M, int N, int K, int reps) {
  std::vector<float> A((size_t)M * K, 0.5f), B((size_t)K * N, 0.25f), C((size_t)M * N, 0.f);
  return best_of([&] {
    if (which == 0) at::native::cpublas::brgemm(M, N, K, K, N, N, true, A.data(), B.data(), C.data(), false);
    else gemm(false, false, M, N, K, A.data(), K, B.data(), N, 1.f, C.data(), N);
  }, reps);
}
// A layer's gradients over T steps of B rows (U units, G gate columns): grad_w_hh four ways, grad_x two.
std::vector<double> gradients(int U, int G, int T, int B, int reps) {
  const int K = (T - 1) * B;
  std::vector<float> h((size_t)T * B * U), d((size_t)T * B * G), wt((size_t)U * G), gw((size_t)G * U),
      hT((size_t)U * K), w((size_t)G * U), gx((size_t)T * B * U);
  for (size_t i = 0; i < h.size(); ++i) h[i] = (i % 13) * 0.1f;
  for (size_t i = 0; i < d.size(); ++i) d[i] = (i % 7) * 0.1f;
  auto transpose_h = [&] {
    for (int r = 0; r < K; ++r)
      for (int c = 0; c < U; ++c) hT[(size_t)c * K + r] = h[(size_t)r * U + c];
  };
  return {
      // the kernel's layout: U x G with A transposed, then transposed back
      best_of([&] {
        gemm(true, false, U, G, K, h.data(), U, d.data() + B * G, G, 0.f, wt.data(), G);
        for (int a = 0; a < U; ++a)
          for (int b = 0; b < G; ++b) gw[(size_t)b * U + a] = wt[(size_t)a * G + b];
      }, reps),
      best_of([&] { gemm(true, false, G, U, K, d.data() + B * G, G, h.data(), U, 0.f, gw.data(), U); }, reps),
      best_of([&] {
        transpose_h();
        at::native::cpublas::brgemm(U, G, K, K, G, G, false, hT.data(), d.data() + B * G, wt.data(), false);
      }, reps),
      best_of(transpose_h, reps),
      best_of([&] { gemm(false, false, T * B, U, G, d.data(), G, w.data(), U, 0.f, gx.data(), U); }, reps),
      best_of([&] {
        for (int t = 0; t < T; ++t)
          at::native::cpublas::brgemm(B, U, G, G, U, U, false, d.data() + (size_t)t * B * G, w.data(),
                                      gx.data() + (size_t)t * B * U, false);
      }, reps),
      // step by step, h_t transposed by hand and brgemm adding into wt (the kernel's LSTM on AVX-512
      // builds since 2026-12-07 04:50 UTC)
      best_of([&] {
        for (int t = 1; t < T; ++t) {
          const float* hp = h.data() + (size_t)(t - 1) * B * U;
          for (int r = 0; r < B; ++r)
            for (int c = 0; c < U; ++c) hT[(size_t)c * B + r] = hp[(size_t)r * U + c];
          at::native::cpublas::brgemm(U, G, B, B, G, G, t > 1, hT.data(), d.data() + (size_t)t * B * G, wt.data(), false);
        }
      }, reps),
  };
}
// A first layer's input-weight gradient, wt (I x G) = x^T d over R rows, for few inputs I: sgemm_ with A
// transposed (the kernel's way before 2026-12-07) against x transposed by hand, then brgemm (since).
std::vector<double> skinny(int I, int G, int R, int reps) {
  std::vector<float> x((size_t)R * I), d((size_t)R * G), wt((size_t)I * G), xt((size_t)I * R);
  for (size_t i = 0; i < x.size(); ++i) x[i] = (i % 11) * 0.1f;
  for (size_t i = 0; i < d.size(); ++i) d[i] = (i % 7) * 0.1f;
  return {
      best_of([&] { gemm(true, false, I, G, R, x.data(), I, d.data(), G, 0.f, wt.data(), G); }, reps),
      best_of([&] {
        for (int r = 0; r < R; ++r)
          for (int c = 0; c < I; ++c) xt[(size_t)c * R + r] = x[(size_t)r * I + c];
        at::native::cpublas::brgemm(I, G, R, R, G, G, false, xt.data(), d.data(), wt.data(), false);
      }, reps),
  };
}
// A layer's backward products that read d (T steps of B x G), with I = U inputs: dh_prev = d_t w_hh
// per step and grad_x = d w_ih as one sgemm_ after the loop (the kernel's way before 2026-12-07
// 04:30 UTC), against both per step as one brgemm, d_t [w_hh | w_ih], and dx_t copied out (since).
std::vector<double> backward_x(int U, int G, int T, int B, int reps) {
  const int I = U;
  std::vector<float> d((size_t)T * B * G, .1f), wh((size_t)G * U, .2f), wi((size_t)G * I, .3f),
      whi((size_t)G * (U + I), .2f), dh((size_t)B * U), c((size_t)B * (U + I)), gx((size_t)T * B * I);
  return {
      best_of([&] {
        for (int t = T - 1; t > 0; --t)
          at::native::cpublas::brgemm(B, U, G, G, U, U, false, &d[(size_t)t * B * G], wh.data(), dh.data(), false);
        gemm(false, false, T * B, I, G, d.data(), G, wi.data(), I, 0.f, gx.data(), I);
      }, reps),
      best_of([&] {
        for (int t = T - 1; t >= 0; --t) {
          at::native::cpublas::brgemm(B, U + I, G, G, U + I, U + I, false, &d[(size_t)t * B * G], whi.data(), c.data(), false);
          for (int r = 0; r < B; ++r) std::memcpy(&gx[((size_t)t * B + r) * I], &c[(size_t)r * (U + I) + U], I * sizeof(float));
        }
      }, reps),
  };
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("product", &product);
  m.def("gradients", &gradients);
  m.def("skinny", &skinny);
  m.def("backward_x", &backward_x);
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32, help="rows per step (a split seed batch: 32)")
    args = parser.parse_args()
    module = load_inline("seqcast_bench_gemm_shapes", cpp_sources=SOURCE, extra_cflags=["-O3", "-march=native"])
    torch.set_num_threads(1)
    U, B, T = args.units, args.batch, args.steps
    G = 4 * U
    print(f"{torch.__version__}, one thread; LSTM gates G = 4 x {U}, {B} rows a step, {T} steps")
    for M, N, K, what in [(B, G, U, "step forward (h w_hh^T)"), (B, U, G, "step backward (dh = d w_hh)"),
                          (10, G, U, "10-window predict step"), (2 * B, G, U, "unsplit batch step")]:
        flops = 2 * M * N * K
        b, s = module.product(0, M, N, K, 2000), module.product(1, M, N, K, 2000)
        print(f"{M}x{K} . {K}x{N}  {what}: brgemm {b * 1e6:.2f} us ({flops / b / 1e9:.1f} GFLOP/s), "
              f"sgemm_ {s * 1e6:.2f} us ({flops / s / 1e9:.1f})")
    names = ["grad_w_hh U x G by one sgemm_, then transposed (the kernel's RNN layers and AVX2 builds)", "grad_w_hh straight into G x U",
             "grad_w_hh: h transposed by hand, then brgemm", "  (the transpose alone)",
             "grad_x: one sgemm_", "grad_x: brgemm per step", "grad_w_hh step by step: h_t transposed, brgemm adding"]
    flops = 2 * U * G * (T - 1) * B
    for name, seconds in zip(names, module.gradients(U, G, T, B, 200)):
        print(f"{name}: {seconds * 1e6:.1f} us ({flops / seconds / 1e9:.1f} GFLOP/s)")
    for rows in (B, 2 * B):
        apart, fused = module.backward_x(U, G, T, rows, 50)
        print(f"a layer's dh_prev per step and grad_x, {U} inputs, {rows} rows a step: grad_x by one sgemm_ after "
              f"the loop {apart * 1e6:.1f} us, with dh_prev in one brgemm per step {fused * 1e6:.1f} us "
              f"({apart / fused:.3f}x)")
    # A first layer's input weights (native.SKINNY_INPUTS): the seed config's 1 feature over a split
    # batch's rows, the indicators preset's 3 (its shape: G = 128, 20 steps of 32), 9 and 32 features.
    for I, G_, R in [(1, G, T * B), (3, 128, 640), (9, 128, 640), (32, 128, 608)]:
        f = 2 * I * G_ * R
        s, b = module.skinny(I, G_, R, 2000)
        print(f"input-weight gradient x^T d, {I} inputs, G {G_}, {R} rows: sgemm_ {s * 1e6:.2f} us "
              f"({f / s / 1e9:.1f} GFLOP/s), x transposed then brgemm {b * 1e6:.2f} us ({f / b / 1e9:.1f})")


if __name__ == "__main__":
    main()
