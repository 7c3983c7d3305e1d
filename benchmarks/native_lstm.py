"""seqcast.native's compiled LSTM layer against oneDNN's kernel, layer by layer, one thread.

    PYTHONPATH=src python benchmarks/native_lstm.py [--rounds 6]

Times the forward and backward pass of LSTM stacks (loss: the last step's sum) through
``seqcast.native.native_lstm`` and through ``torch._VF.lstm`` per layer (what seqcast's training
calls for LSTMs that do not train natively), in interleaved rounds, with seqcast's malloc settings
(``training.keep_freed_memory``) as in training: without them oneDNN's per-call workspaces are
faulted in afresh on every call and the comparison flatters the compiled layer (benchmarks/README.md,
2026-12-06). The first call compiles the layer if this machine has not yet (about 30 s). Also prints
each shape's forward FLOPs per layer call, the quantity ``native.MAX_LAYER_FLOPS`` bounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import _VF, nn

from seqcast import native
from seqcast.training import keep_freed_memory

SHAPES = {
    "indicators preset (1xLSTM(32), 3 inputs, T 20, batch 32)": (20, 32, 3, 32, 1),
    "1xLSTM(64), T 20, batch 32": (20, 32, 3, 64, 1),
    "2xLSTM(32), T 60, batch 32": (60, 32, 1, 32, 2),
    "seed config, one 32-window slice (4xLSTM(50), T 60)": (60, 32, 1, 50, 4),
    "seed config, a whole batch of 64": (60, 64, 1, 50, 4),
    "2xLSTM(128), T 60, batch 32": (60, 32, 1, 128, 2),
}


def stack_step(steps, batch, n_features, units, layers, which):
    weights = [
        [nn.Parameter(torch.randn(4 * units, n_features if l == 0 else units) * 0.1),
         nn.Parameter(torch.randn(4 * units, units) * 0.1),
         nn.Parameter(torch.zeros(4 * units)), nn.Parameter(torch.zeros(4 * units))]
        for l in range(layers)
    ]
    stacked = [tuple(w.unsqueeze(0) for w in layer) for layer in weights]
    x = torch.randn(steps, batch, n_features)

    def step():
        if which == "native":
            last = native.native_lstm(x.unsqueeze(1), stacked)[0]
        else:
            out, zeros = x, x.new_zeros(1, batch, units)
            for layer in weights:
                # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
                out = _VF.lstm(out, (zeros, zeros), layer, True, 1, 0.0, True, False, False)[0]
            last = out[-1]
        last.sum().backward()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    keep_freed_memory()
    torch.set_num_threads(1)
    if not native.available():
        raise SystemExit(f"seqcast.native is not available here: {native.unavailable_reason()}")
    for name, shape in SHAPES.items():
        steps, batch, n_features, units, layers = shape
        flops = native.layer_flops(steps, batch, max(n_features, units), units)  # as StackedRNN.trains_by_hand_at
        runs = {which: stack_step(*shape, which) for which in ("oneDNN", "native")}
        for run in runs.values():
            for _ in range(3):
                run()
        times = {which: [] for which in runs}
        for _ in range(args.rounds):
            for which, run in runs.items():
                started = time.perf_counter()
                for _ in range(5):
                    run()
                times[which].append((time.perf_counter() - started) / 5 * 1e3)
        ratios = [a / b for a, b in zip(times["oneDNN"], times["native"])]
        print(f"{name}: {flops / 1e6:.1f} MFLOP per layer call (native if <= {native.MAX_LAYER_FLOPS / 1e6:.0f}); "
              f"oneDNN {statistics.median(times['oneDNN']):.2f} ms, native {statistics.median(times['native']):.2f} ms "
              f"per forward+backward; oneDNN/native {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
