"""How much faster could a hand-written C++ LSTM layer train than oneDNN's? A measurement only.

    PYTHONPATH=src python benchmarks/cpp_lstm_probe.py [--rounds 6]

seqcast does not use this code. It compiles (``torch.utils.cpp_extension.load_inline``: needs a
C++ compiler and ninja, ~25 s the first time, cached under ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``) one LSTM layer written the plain way: the input projection of all
timesteps as one GEMM, then per step one small GEMM (``addmm_`` into the step's gate rows) and a
loop over the gates; the backward is the same loop reversed, then the weight and input gradients
as large GEMMs over all steps. It checks that layer against a float64 ``torch.nn.LSTM`` (outputs
and every gradient) and then times the forward and backward of LSTM stacks, one thread, against
what seqcast's training calls (``torch._VF.lstm`` per layer, oneDNN's kernel), in interleaved
rounds. Results and what they mean: benchmarks/README.md (2026-12-06, 09:20-).
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

static inline float sigm(float x) { return 1.f / (1.f + std::exp(-x)); }

// x (T, B, I) contiguous; w_ih (4U, I), w_hh (4U, U), b (4U) = bias_ih + bias_hh; gates i, f, g, o.
std::vector<Tensor> forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor b) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), U = G / 4;
  Tensor acts = at::addmm(b, x.view({T * B, I}), w_ih.t()).view({T, B, G});
  Tensor h_all = at::empty({T, B, U}, x.options());
  Tensor c_all = at::empty({T, B, U}, x.options());
  Tensor tc_all = at::empty({T, B, U}, x.options());
  Tensor w_hh_t = w_hh.t().contiguous();
  Tensor zeros = at::zeros({B, U}, x.options());
  for (int64_t t = 0; t < T; ++t) {
    Tensor a = acts[t];
    a.addmm_(t ? h_all[t - 1] : zeros, w_hh_t);
    float* ap = a.data_ptr<float>();
    const float* cp = t ? c_all[t - 1].data_ptr<float>() : zeros.data_ptr<float>();
    float* cn = c_all[t].data_ptr<float>();
    float* hn = h_all[t].data_ptr<float>();
    float* tcn = tc_all[t].data_ptr<float>();
    for (int64_t r = 0; r < B; ++r) {
      float* ar = ap + r * G;
      #pragma omp simd
      for (int64_t j = 0; j < G; ++j) {
        const float v = ar[j];
        ar[j] = (j >= 2 * U && j < 3 * U) ? 2.f * sigm(2.f * v) - 1.f : sigm(v);  // tanh for g
      }
      #pragma omp simd
      for (int64_t j = 0; j < U; ++j) {
        const int64_t q = r * U + j;
        const float c = ar[U + j] * cp[q] + ar[j] * ar[2 * U + j];
        const float tc = 2.f * sigm(2.f * c) - 1.f;
        cn[q] = c;
        tcn[q] = tc;
        hn[q] = ar[3 * U + j] * tc;
      }
    }
  }
  return {h_all, c_all, tc_all, acts};
}

// grad_h (T, B, U): the loss's gradient for every output. Returns grad_x, grad_w_ih, grad_w_hh, grad_b.
std::vector<Tensor> backward(Tensor grad_h, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h_all,
                             Tensor c_all, Tensor tc_all, Tensor acts) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = w_hh.size(0), U = G / 4;
  Tensor d_pre = at::empty({T, B, G}, x.options());
  Tensor dh_next = at::zeros({B, U}, x.options());
  Tensor dc_next = at::zeros({B, U}, x.options());
  Tensor zeros = at::zeros({B, U}, x.options());
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* gh = grad_h[t].data_ptr<float>();
    const float* ap = acts[t].data_ptr<float>();
    const float* tc = tc_all[t].data_ptr<float>();
    const float* cp = t ? c_all[t - 1].data_ptr<float>() : zeros.data_ptr<float>();
    float* dp = d_pre[t].data_ptr<float>();
    float* dhn = dh_next.data_ptr<float>();
    float* dcn = dc_next.data_ptr<float>();
    for (int64_t r = 0; r < B; ++r) {
      const float* ar = ap + r * G;
      float* dr = dp + r * G;
      #pragma omp simd
      for (int64_t j = 0; j < U; ++j) {
        const int64_t q = r * U + j;
        const float i = ar[j], f = ar[U + j], g = ar[2 * U + j], o = ar[3 * U + j], tcv = tc[q];
        const float dh = gh[q] + dhn[q];
        const float dc = dcn[q] + dh * o * (1.f - tcv * tcv);
        dr[j] = dc * g * i * (1.f - i);
        dr[U + j] = dc * cp[q] * f * (1.f - f);
        dr[2 * U + j] = dc * i * (1.f - g * g);
        dr[3 * U + j] = dh * tcv * o * (1.f - o);
        dcn[q] = dc * f;
      }
    }
    if (t) at::mm_out(dh_next, d_pre[t], w_hh);
  }
  Tensor d_flat = d_pre.view({T * B, G});
  Tensor grad_w_hh = at::mm(d_pre.slice(0, 1).reshape({(T - 1) * B, G}).t(),
                            h_all.slice(0, 0, T - 1).reshape({(T - 1) * B, U}));
  Tensor grad_w_ih = at::mm(d_flat.t(), x.view({T * B, I}));
  Tensor grad_b = d_flat.sum(0);
  Tensor grad_x = at::mm(d_flat, w_ih).view({T, B, I});
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
