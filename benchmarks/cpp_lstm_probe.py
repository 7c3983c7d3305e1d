"""How much faster could a hand-written C++ LSTM layer train than oneDNN's? A measurement only.

    PYTHONPATH=src python benchmarks/cpp_lstm_probe.py [--rounds 6]

seqcast does not use this code. It compiles (``torch.utils.cpp_extension.load_inline``: needs a
C++ compiler and ninja, 25-35 s the first time, cached under ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``) one LSTM layer written the plain way: the input projection of all
timesteps as one GEMM, then per step one small GEMM into the step's gate rows and a loop over the
gates; the backward is the same loop reversed, then the weight and input gradients as large GEMMs
over all steps. The GEMMs call MKL's Fortran ``sgemm_``, which the CPU wheel's libtorch_cpu.so
exports, directly on raw pointers: the first version called ``at::addmm_`` on per-step tensor
slices, and the slices and the dispatcher cost about a third of the layer's time. It checks the
layer against a float64 ``torch.nn.LSTM`` (outputs and every gradient) and then times the forward
and backward of LSTM stacks, one thread, against what seqcast's training calls
(``torch._VF.lstm`` per layer, oneDNN's kernel), in interleaved rounds. Results and what they
mean: benchmarks/README.md (2026-12-06, 09:20-).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import _VF, nn

SOURCE = r"""
#include <torch/extension.h>
#include <cmath>
using at::Tensor;
extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
// Row-major C (M x N) = alpha * op(A) * op(B) + beta * C via column-major sgemm on the transposes.
static inline void gemm_rm(bool ta, bool tb, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                           float beta, float* C, int ldc) {
  const float one = 1.f;
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  sgemm_(&cb, &ca, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}
static inline float sigm(float x) { return 1.f / (1.f + std::exp(-x)); }

std::vector<Tensor> forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b) {
  const int T = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), U = G / 4;
  Tensor acts = at::empty({T, B, G}, x.options());
  float* ap0 = acts.data_ptr<float>();
  const float* bp = b.data_ptr<float>();
  for (int64_t r = 0; r < (int64_t)T * B; ++r) std::copy(bp, bp + G, ap0 + r * G);
  gemm_rm(false, true, T * B, G, I, x.data_ptr<float>(), I, w_ih.data_ptr<float>(), I, 1.f, ap0, G);
  Tensor h_all = at::empty({T, B, U}, x.options()), c_all = at::empty({T, B, U}, x.options()), tc_all = at::empty({T, B, U}, x.options());
  std::vector<float> zeros((size_t)B * U, 0.f);
  const float* wh = w_hh.data_ptr<float>();
  float *h0 = h_all.data_ptr<float>(), *c0 = c_all.data_ptr<float>(), *tc0 = tc_all.data_ptr<float>();
  for (int t = 0; t < T; ++t) {
    float* ap = ap0 + (int64_t)t * B * G;
    const float* hp = t ? h0 + (int64_t)(t - 1) * B * U : zeros.data();
    gemm_rm(false, true, B, G, U, hp, U, wh, U, 1.f, ap, G);  // a += h_prev · w_hhᵀ
    const float* cp = t ? c0 + (int64_t)(t - 1) * B * U : zeros.data();
    float *cn = c0 + (int64_t)t * B * U, *hn = h0 + (int64_t)t * B * U, *tcn = tc0 + (int64_t)t * B * U;
    for (int r = 0; r < B; ++r) {
      float* ar = ap + (int64_t)r * G;
      #pragma omp simd
      for (int j = 0; j < G; ++j) { const float v = ar[j]; ar[j] = (j >= 2 * U && j < 3 * U) ? 2.f * sigm(2.f * v) - 1.f : sigm(v); }
      #pragma omp simd
      for (int j = 0; j < U; ++j) {
        const int64_t q = (int64_t)r * U + j;
        const float c = ar[U + j] * cp[q] + ar[j] * ar[2 * U + j];
        const float tc = 2.f * sigm(2.f * c) - 1.f;
        cn[q] = c; tcn[q] = tc; hn[q] = ar[3 * U + j] * tc;
      }
    }
  }
  return {h_all, c_all, tc_all, acts};
}

std::vector<Tensor> backward(Tensor grad_h, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h_all, Tensor c_all, Tensor tc_all, Tensor acts) {
  const int T = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), U = G / 4;
  Tensor d_pre = at::empty({T, B, G}, x.options());
  std::vector<float> dh_next((size_t)B * U, 0.f), dc_next((size_t)B * U, 0.f), zeros((size_t)B * U, 0.f);
  const float *gh0 = grad_h.data_ptr<float>(), *ap0 = acts.data_ptr<float>(), *tc0 = tc_all.data_ptr<float>(), *c0 = c_all.data_ptr<float>();
  float* dp0 = d_pre.data_ptr<float>();
  const float* wh = w_hh.data_ptr<float>();
  for (int t = T - 1; t >= 0; --t) {
    const int64_t o = (int64_t)t * B * U;
    const float *gh = gh0 + o, *tc = tc0 + o, *ap = ap0 + (int64_t)t * B * G;
    const float* cp = t ? c0 + (int64_t)(t - 1) * B * U : zeros.data();
    float* dp = dp0 + (int64_t)t * B * G;
    float *dhn = dh_next.data(), *dcn = dc_next.data();
    for (int r = 0; r < B; ++r) {
      const float* ar = ap + (int64_t)r * G; float* dr = dp + (int64_t)r * G;
      #pragma omp simd
      for (int j = 0; j < U; ++j) {
        const int64_t q = (int64_t)r * U + j;
        const float i = ar[j], f = ar[U + j], g = ar[2 * U + j], oo = ar[3 * U + j], tcv = tc[q];
        const float dh = gh[q] + dhn[q];
        const float dc = dcn[q] + dh * oo * (1.f - tcv * tcv);
        dr[j] = dc * g * i * (1.f - i);
        dr[U + j] = dc * cp[q] * f * (1.f - f);
        dr[2 * U + j] = dc * i * (1.f - g * g);
        dr[3 * U + j] = dh * tcv * oo * (1.f - oo);
        dcn[q] = dc * f;
      }
    }
    if (t) gemm_rm(false, false, B, U, G, dp, G, wh, U, 0.f, dhn, U);  // dh_next = d_pre[t] · w_hh
  }
  Tensor grad_w_hh = at::zeros({G, U}, x.options()), grad_w_ih = at::empty({G, I}, x.options()), grad_x = at::empty({T, B, I}, x.options());
  if (T > 1) gemm_rm(true, false, G, U, (T - 1) * B, dp0 + (int64_t)B * G, G, h_all.data_ptr<float>(), U, 0.f, grad_w_hh.data_ptr<float>(), U);
  gemm_rm(true, false, G, I, T * B, dp0, G, x.data_ptr<float>(), I, 0.f, grad_w_ih.data_ptr<float>(), I);
  gemm_rm(false, false, T * B, I, G, dp0, G, w_ih.data_ptr<float>(), I, 0.f, grad_x.data_ptr<float>(), I);
  Tensor grad_b = d_pre.view({(int64_t)T * B, G}).sum(0);
  return {grad_x, grad_w_ih, grad_w_hh, grad_b};
}
"""


def build():
    from torch.utils.cpp_extension import load_inline

    started = time.perf_counter()
    module = load_inline(
        "seqcast_lstm_probe",
        cpp_sources=SOURCE,
        functions=["forward", "backward"],
        extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"],
    )
    print(f"compiled (or loaded from the cache) in {time.perf_counter() - started:.1f} s")
    return module


def layer_function(module):
    class Layer(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w_ih, w_hh, b):
            h_all, c_all, tc_all, acts = module.forward(x.contiguous(), w_ih, w_hh, b)
            ctx.save_for_backward(x.contiguous(), w_ih, w_hh, h_all, c_all, tc_all, acts)
            return h_all

        @staticmethod
        def backward(ctx, grad_h):
            return tuple(module.backward(grad_h.contiguous(), *ctx.saved_tensors))

    return Layer.apply


def check(layer, steps: int, batch: int, n_in: int, units: int) -> float:
    """The largest relative error, in the outputs and every gradient, against float64 nn.LSTM."""
    torch.manual_seed(steps + units)
    reference = nn.LSTM(n_in, units).double()
    x = torch.randn(steps, batch, n_in, dtype=torch.float64)
    target = torch.randn(steps, batch, units, dtype=torch.float64)
    w_ih = reference.weight_ih_l0.detach().float().requires_grad_()
    w_hh = reference.weight_hh_l0.detach().float().requires_grad_()
    b = (reference.bias_ih_l0 + reference.bias_hh_l0).detach().float().requires_grad_()
    x_probe = x.float().requires_grad_()
    out = layer(x_probe, w_ih, w_hh, b)
    ((out.double() - target) ** 2).sum().backward()
    x.requires_grad_()
    expected = reference(x)[0]
    ((expected - target) ** 2).sum().backward()

    def rel(got, want):
        return ((got.double() - want).abs().max() / want.abs().max()).item()

    return max(
        rel(out, expected.detach()),
        rel(x_probe.grad, x.grad),
        rel(w_ih.grad, reference.weight_ih_l0.grad),
        rel(w_hh.grad, reference.weight_hh_l0.grad),
        rel(b.grad, reference.bias_hh_l0.grad),
    )


def stack_step(layer, steps, batch, n_features, units, layers, which):
    """One forward and backward of a stack of `layers` LSTM layers (the loss: the last step's sum)."""
    weights = [
        [nn.Parameter(torch.randn(4 * units, n_features if l == 0 else units) * 0.1),
         nn.Parameter(torch.randn(4 * units, units) * 0.1),
         nn.Parameter(torch.zeros(4 * units)), nn.Parameter(torch.zeros(4 * units))]
        for l in range(layers)
    ]
    x = torch.randn(steps, batch, n_features)

    def step():
        out = x
        zeros = x.new_zeros(1, batch, units)
        for w_ih, w_hh, b_ih, b_hh in weights:
            if which == "oneDNN":
                # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
                out = _VF.lstm(out, (zeros, zeros), [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, True, False, False)[0]
            else:
                out = layer(out, w_ih, w_hh, b_ih + b_hh)
        out[-1].sum().backward()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layer = layer_function(build())
    for shape in [(12, 5, 3, 7), (60, 32, 1, 50)]:
        print(f"check T,B,I,U={shape}: largest relative error {check(layer, *shape):.1e} (outputs and gradients)")
    shapes = {
        "seed config, one 32-window slice (4xLSTM(50), T 60)": (60, 32, 1, 50, 4),
        "seed config, a whole batch of 64": (60, 64, 1, 50, 4),
        "indicators preset (1xLSTM(32), 3 inputs, T 20, batch 32)": (20, 32, 3, 32, 1),
        "2xLSTM(128), T 60, batch 32": (60, 32, 1, 128, 2),
    }
    for name, shape in shapes.items():
        steps = {which: stack_step(layer, *shape, which) for which in ("oneDNN", "C++")}
        for step in steps.values():
            for _ in range(3):
                step()
        times = {which: [] for which in steps}
        for _ in range(args.rounds):
            for which, step in steps.items():
                started = time.perf_counter()
                for _ in range(5):
                    step()
                times[which].append((time.perf_counter() - started) / 5 * 1e3)
        ratios = [a / b for a, b in zip(times["oneDNN"], times["C++"])]
        print(f"{name}: oneDNN {statistics.median(times['oneDNN']):.2f} ms, C++ {statistics.median(times['C++']):.2f} ms "
              f"per forward+backward, one thread; oneDNN/C++ {statistics.median(ratios):.2f} "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
