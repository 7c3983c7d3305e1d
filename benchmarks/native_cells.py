"""seqcast.native's compiled GRU and RNN layers against the paths they replaced, and compiled
inference against torch's modules.

    PYTHONPATH=src python benchmarks/native_cells.py [--threads 1] [--rounds 6] [--only train|infer]

``train``: forward and backward of GRU and tanh-RNN stacks (dropout masks between layers, loss the
last step's sum) through ``native.native_gru`` / ``native.native_rnn`` and through the TorchScript
``models.fused_gru`` / ``models.fused_rnn`` (what GRUs and RNNs train with where the compiled layer
is not used). ``infer``: a no-grad forward of LSTM, GRU and RNN stacks through
``native.native_infer`` and through ``nn.LSTM/GRU/RNN`` (what inference used before). Interleaved
rounds, medians, seqcast's malloc settings; each shape's forward FLOPs per layer call
(``native.layer_flops``), the quantity ``native.suits`` bounds. The tables of benchmarks/README.md's
section "2026-12-06, 16:25-17:30 UTC" came from the scratch scripts this one gathers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from seqcast import models, native
from seqcast.models import build_model
from seqcast.training import keep_freed_memory

# name: (cell, steps, batch, features, units, layers)
TRAIN_SHAPES = {
    "4xGRU(50), a seed-config slice": ("gru", 60, 32, 1, 50, 4),
    "4xGRU(50), a whole batch": ("gru", 60, 64, 1, 50, 4),
    "1xGRU(32), lookback 20, 9 inputs": ("gru", 20, 32, 9, 32, 1),
    "2xGRU(128)": ("gru", 60, 64, 1, 128, 2),
    "2xGRU(256)": ("gru", 60, 64, 1, 256, 2),
    "4xRNN(50), a seed-config slice": ("rnn", 60, 32, 1, 50, 4),
    "4xRNN(50), a whole batch": ("rnn", 60, 64, 1, 50, 4),
    "1xRNN(32), lookback 20, 3 inputs": ("rnn", 20, 32, 3, 32, 1),
    "2xRNN(128)": ("rnn", 60, 64, 1, 128, 2),
    "2xRNN(256)": ("rnn", 60, 64, 1, 256, 2),
}
INFER_SHAPES = {
    "4xLSTM(50), 20 windows": ("lstm", 60, 20, 1, 50, 4),
    "4xLSTM(50), 500 windows": ("lstm", 60, 500, 1, 50, 4),
    "1xLSTM(32), lookback 20, 200 windows": ("lstm", 20, 200, 3, 32, 1),
    "4xGRU(50), 20 windows": ("gru", 60, 20, 1, 50, 4),
    "4xGRU(50), 500 windows": ("gru", 60, 500, 1, 50, 4),
    "2xGRU(128), 500 windows": ("gru", 60, 500, 1, 128, 2),
    "4xRNN(50), 20 windows": ("rnn", 60, 20, 1, 50, 4),
    "4xRNN(50), 500 windows": ("rnn", 60, 500, 1, 50, 4),
}


def interleaved(fns: dict, rounds: int, calls: int) -> dict:
    """Median ms per call of each function, ``calls`` calls per block, blocks alternating in order."""
    times = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - started) / calls * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def train_case(cell, steps, batch, n_features, units, layers):
    model = build_model(n_features, cell=cell, layers=layers, units=units, dropout=0.2, horizon=1, seed=0)
    weights = [tuple(w.unsqueeze(0) for w in layer) for layer in model.layer_weights()]
    flat = [w for layer in weights for w in layer]
    x = torch.randn(steps, 1, batch, n_features)
    masks = [(torch.rand(steps, 1, batch, units) > 0.2).float() / 0.8 for _ in range(layers - 1)]
    compiled, script = (native.native_gru, models.fused_gru) if cell == "gru" else (native.native_rnn, models.fused_rnn)

    def step(stack):
        torch.autograd.grad(stack(x, weights, masks=masks).sum(), flat)

    fns = {"TorchScript": partial(step, script), "compiled": partial(step, compiled)}
    return model, fns, "TorchScript"


def infer_case(cell, steps, batch, n_features, units, layers):
    model = build_model(n_features, cell=cell, layers=layers, units=units, dropout=0.2, horizon=1, seed=0).eval()
    x = torch.randn(batch, steps, n_features)
    time_major = x.transpose(0, 1).unsqueeze(1)

    def module():
        with torch.no_grad():
            model.rnn(x)

    def compiled():
        native.native_infer(time_major, model.layer_weights(), model.native_cell)

    return model, {"torch module": module, "compiled": compiled}, "torch module"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", choices=["train", "infer"])
    args = parser.parse_args(argv)
    if not native.available():
        raise SystemExit(f"seqcast.native is not available here: {native.unavailable_reason()}")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), {args.rounds} interleaved rounds, median ms per call")
    sections = [("train", TRAIN_SHAPES, train_case), ("infer", INFER_SHAPES, infer_case)]
    for kind, shapes, case in sections:
        if args.only not in (None, kind):
            continue
        for name, (cell, steps, batch, n_features, units, layers) in shapes.items():
            model, fns, baseline = case(cell, steps, batch, n_features, units, layers)
            torch.manual_seed(0)
            medians = interleaved(fns, args.rounds, calls=5 if batch <= 64 else 2)
            flops = native.layer_flops(steps, batch, max(n_features, units), units, model.native_cell)
            print(
                f"{kind} {name}: {flops / 1e6:.0f} MFLOP per layer call; {baseline} {medians[baseline]:.2f} ms, "
                f"compiled {medians['compiled']:.2f} ms ({medians[baseline] / medians['compiled']:.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
