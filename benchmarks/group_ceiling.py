"""How fast 8 small models trained together can be against 8 fits one after another, on this host.

    python benchmarks/group_ceiling.py [--cell lstm gru rnn] [--epochs 20] [--rounds 3]

``make bench``'s ensemble rows compare ``train_many`` (8 models, one group of 4 per thread on the
2 cores) with 8 ``train_model`` fits one after another (a preset-shaped fit runs on one thread). A
group can only gain by sharing its per-batch costs outside the layers' arithmetic among its models:
each model's own forward and backward stay. So, per cell at the indicators preset's shape
(1 layer of 32 units, 3 inputs, lookback 20, batch 32), on one thread, this prints (median of
``--rounds``):

- a single fit's time per batch (``train_model``, ``--epochs`` epochs, after a warm-up fit);
- a group of 4's time per model and batch (``train_many(threads=1)``);
- the compiled layer's forward + backward alone (``stack_forward`` + ``stack_backward``) per model,
  for 1 model and for 4 in one call;
- the GEMM floor: every matrix product that forward and backward make, alone, at the kernel's shapes
  (oneDNN's brgemm for the per-step products, MKL for the hidden weights' gradient, as the kernel
  calls them; best of 7 blocks), per model and batch; built with ``load_inline`` on
  ``gemm_shapes.py``'s entry points and timer;

and the ratios they bound: now (2 × single / group), if the group spent nothing beyond its layers'
forward and backward (2 × single / stack of 4), and if it spent nothing beyond the GEMMs
(2 × single / floor). The factor 2 is the second core, which the one-thread fits leave idle. The
issue's target is 3×; benchmarks/README.md (2026-12-07, 03:45 UTC section) has this host's figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from gemm_shapes import COMMON  # noqa: E402
from run import preset_windows, seed_windows  # noqa: E402
from seqcast import native  # noqa: E402
from seqcast.ensemble import train_many  # noqa: E402
from seqcast.models import build_model  # noqa: E402
from seqcast.training import keep_freed_memory, train_model  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELL_CODES = {"lstm": 0, "gru": 1, "rnn": 2}
BATCH, STEPS, INPUTS, UNITS = 32, 20, 3, 32

SOURCE = COMMON + r"""
// Microseconds of one model-batch's products (B rows a step, T steps, I inputs, U units, G gate
// columns): forward x_t w_ih^T and h_{t-1} w_hh^T per step (brgemm), backward d_t w_hh per step
// (brgemm), the hidden weights' gradient over (T - 1) B rows (one MKL call, as the kernel's
// weight_gradients) and the input weights' gradient (x transposed, then brgemm, as the kernel's
// skinny path). GRU's hidden side has more elementwise work around the same products.
double floor_us(int B, int T, int I, int U, int G, int reps) {
  std::vector<float> x((size_t)T * B * I, .5f), h((size_t)T * B * U, .25f), wi((size_t)I * G, .1f),
      wh((size_t)U * G, .2f), whr((size_t)G * U, .2f), gates((size_t)T * B * G, .1f), dh((size_t)B * U),
      gw((size_t)U * G), gwi((size_t)I * G), xt((size_t)I * T * B);
  const int rows = (T - 1) * B;
  return best_of([&] {
    for (int t = 0; t < T; ++t) {
      at::native::cpublas::brgemm(B, G, I, I, G, G, false, &x[(size_t)t * B * I], wi.data(), &gates[(size_t)t * B * G], false);
      if (t) at::native::cpublas::brgemm(B, G, U, U, G, G, true, &h[(size_t)(t - 1) * B * U], wh.data(), &gates[(size_t)t * B * G], false);
    }
    for (int t = T - 1; t > 0; --t)
      at::native::cpublas::brgemm(B, U, G, G, U, U, false, &gates[(size_t)t * B * G], whr.data(), dh.data(), false);
    gemm(true, false, U, G, rows, h.data(), U, &gates[(size_t)B * G], G, 0.f, gw.data(), G);  // h^T d as the kernel (not its transpose into G x U)
    for (int r = 0; r < T * B; ++r)
      for (int i = 0; i < I; ++i) xt[(size_t)i * T * B + r] = x[(size_t)r * I + i];
    at::native::cpublas::brgemm(I, G, T * B, T * B, G, G, false, xt.data(), gates.data(), gwi.data(), false);
  }, reps) * 1e6;
}
"""


def per_batch_fit(cell: str, X, y, epochs: int, models: int) -> float:
    """Microseconds per model and batch of ``models`` preset-shaped fits on one thread: one
    ``train_model`` fit (models 1) or one ``train_many`` group."""
    shape = dict(cell=cell, layers=1, units=UNITS, dropout=0.0, horizon=1)
    built = [build_model(X.shape[2], seed=s, **shape) for s in range(models)]
    started = time.perf_counter()
    if models == 1:
        train_model(built[0], X, y, epochs=epochs, batch_size=BATCH, seed=0, threads=1)
    else:
        train_many(built, X, y, seeds=list(range(models)), epochs=epochs, batch_size=BATCH, threads=1)
    batches = -(-len(X) // BATCH) * epochs * models
    return (time.perf_counter() - started) / batches * 1e6


def per_model_stack(cell: str, models: int, calls: int = 100) -> float:
    """Microseconds per model of the compiled layer's forward + backward for ``models`` models in
    one call (one thread)."""
    gates = GATES[cell]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(models, STEPS, BATCH, INPUTS, generator=generator)
    weights = [torch.randn(models, gates * UNITS, INPUTS, generator=generator) * 0.1,
               torch.randn(models, gates * UNITS, UNITS, generator=generator) * 0.1,
               torch.randn(models, gates * UNITS, generator=generator) * 0.1,
               torch.randn(models, gates * UNITS, generator=generator) * 0.1]
    module, code = native._module, CELL_CODES[cell]

    def step():
        out = module.stack_forward(x, weights, [], code, True)
        module.stack_backward(torch.ones_like(out[0]), out[1:], weights, [], False, code)

    for _ in range(5):
        step()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            step()
        best = min(best, (time.perf_counter() - started) / calls / models * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", nargs="+", choices=sorted(GATES), default=sorted(GATES))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not native.available():
        sys.exit(f"the compiled kernel is not available here: {native.unavailable_reason()}")
    keep_freed_memory()
    torch.set_num_threads(1)
    X, y, _ = seed_windows()
    X, y = preset_windows(X, y)
    gemm = load_inline("seqcast_bench_group_ceiling", cpp_sources=SOURCE, functions=["floor_us"],
                       extra_cflags=["-O3", "-march=native"])
    print(f"preset shape: 1 layer of {UNITS} units, {INPUTS} inputs, lookback {STEPS}, batch {BATCH}; one thread; "
          f"median of {args.rounds} rounds; microseconds per model and batch")
    for cell in args.cell:
        per_batch_fit(cell, X, y, 1, 1)  # warm-up: the kernel's first calls, brgemm's JIT
        rows: dict[str, list[float]] = {"single": [], "group": [], "stack1": [], "stack4": [], "floor": []}
        for _ in range(args.rounds):
            rows["single"].append(per_batch_fit(cell, X, y, args.epochs, 1))
            rows["group"].append(per_batch_fit(cell, X, y, args.epochs, 4))
            rows["stack1"].append(per_model_stack(cell, 1))
            rows["stack4"].append(per_model_stack(cell, 4))
            rows["floor"].append(gemm.floor_us(BATCH, STEPS, INPUTS, UNITS, GATES[cell] * UNITS, 200))
        m = {name: statistics.median(values) for name, values in rows.items()}
        print(f"{cell}: single fit {m['single']:.1f}, group of 4 {m['group']:.1f}, layers' forward+backward "
              f"{m['stack1']:.1f} (1 model) {m['stack4']:.1f} (4 in a call), GEMM floor {m['floor']:.1f}; "
              f"8 together / 8 one after another: now {2 * m['single'] / m['group']:.2f}x, "
              f"at most {2 * m['single'] / m['stack4']:.2f}x with nothing but the layers, "
              f"{2 * m['single'] / m['floor']:.2f}x with nothing but the GEMMs")


if __name__ == "__main__":
    main()
