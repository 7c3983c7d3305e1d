"""Two builds of seqcast.native's kernel in one process, timed alternately: an A/B for kernel changes.

    python benchmarks/kernel_ab.py OLD_TREE [NEW_TREE] [--shape preset|seed-slice|seed-batch|...]
        [--cell lstm|gru|rnn] [--call stack|epoch] [--rounds 15] [--calls N] [--march haswell|x86-64-v2|...]

OLD_TREE and NEW_TREE are checkouts of this repository (``git worktree add /tmp/old <commit>``;
NEW_TREE defaults to this one). Each tree's ``src/seqcast/native.py`` is built (or loaded from
torch's extension cache: each source has its own build name) and both modules run the same
``stack_forward`` + ``stack_backward`` on the same tensors, on one thread, in alternating blocks of
``--calls`` calls (default 50). It prints the largest difference between the two builds' gradients and each
build's median and range of milliseconds per call, and the median and range of the per-round
ratios old/new. ``--call epoch`` times whole training epochs instead (``train_batches``: 1,198
random windows of the shape, its B the batch size, the head, the MSE loss and Adam, 8 batches a
call as the fits run them; ``--calls`` epochs per block, default 2), each build training its own
copy of the same models, and prints the largest difference between their weights after the first
epoch; both trees must have ``train_batches`` with today's arguments. ``--split`` splits each batch
in halves over two threads (each build's own ``SliceWorker``), as a default seed-config fit does,
and ``--dropout`` draws masks; ``--shape seed-batch --call epoch --split --dropout 0.2`` is the
seed config's epoch without the Python around its calls. ``--march`` builds both for another instruction set than this CPU's
(``-march=native`` swapped in each tree's flags): ``haswell`` for the AVX2 branch, ``x86-64-v2``
or ``x86-64`` for the plain loops, ``icelake-server`` for AVX-512, each on a CPU that has it.

Why: whole fits in separate processes cannot separate a 1-5 % change from the 2-core hosts' phases
(they move by 1.5x within minutes); alternating blocks in one process see the same moments of the
host. A change to plain stores for full AVX-512 chunks read 1.08x in six pairs of whole-fit
processes and 0.999 here (benchmarks/README.md, 2026-12-07, 02:10-03:30 UTC).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load_inline

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "src"))

from seqcast import native  # noqa: E402
from seqcast.training import keep_freed_memory  # noqa: E402

# name: (models K, steps T, windows B, features F, units U, layers L)
SHAPES = {
    "preset": (1, 20, 32, 3, 32, 1),
    "preset-group": (4, 20, 32, 3, 32, 1),
    "seed-slice": (1, 60, 32, 1, 50, 4),
    "seed-batch": (1, 60, 64, 1, 50, 4),
}
CELLS = {"lstm": (0, 4), "gru": (1, 3), "rnn": (2, 1)}


def build(tree: Path, alias: str, march: str | None = None):
    """The compiled module of ``tree``'s native.py (its SOURCE and _FLAGS under its build name,
    ``-march=native`` replaced by ``-march=MARCH`` where given)."""
    spec = importlib.util.spec_from_file_location(alias, tree / "src" / "seqcast" / "native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    if march:
        module._FLAGS[:] = [f"-march={march}" if flag == "-march=native" else flag for flag in module._FLAGS]
    return load_inline(module.build_name(), cpp_sources=module.SOURCE, extra_cflags=module._FLAGS, verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="a checkout of the code before the change")
    parser.add_argument("new", type=Path, nargs="?", default=HERE, help="a checkout after it (default: this one)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="preset-group")
    parser.add_argument("--cell", choices=sorted(CELLS), default="lstm")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--call", choices=("stack", "epoch"), default="stack")
    parser.add_argument("--calls", type=int, help="calls (default 50) or epochs (default 2) per block")
    parser.add_argument("--split", action="store_true",
                        help="with --call epoch: each batch split in halves over two threads, as a default seed-config fit")
    parser.add_argument("--dropout", type=float, default=0.0, help="with --call epoch: the masks' dropout rate")
    parser.add_argument("--march", help="build both for this -march instead of the CPU's own (native)")
    args = parser.parse_args()
    for tree in (args.old, args.new):
        if not (tree / "src" / "seqcast" / "native.py").is_file():
            parser.error(f"{tree}: no src/seqcast/native.py there; give a checkout of this repository")
    keep_freed_memory()
    torch.set_num_threads(1)
    old = build(args.old.resolve(), "seqcast_native_old", args.march)
    new = build(args.new.resolve(), "seqcast_native_new", args.march)
    K, T, B, F, U, L = SHAPES[args.shape]
    cell, gates = CELLS[args.cell]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(K, T, B, F, generator=generator)
    weights = []
    for layer in range(L):
        weights += [torch.randn(K, gates * U, F if layer == 0 else U, generator=generator) * 0.1,
                    torch.randn(K, gates * U, U, generator=generator) * 0.1,
                    torch.randn(K, gates * U, generator=generator) * 0.1,
                    torch.randn(K, gates * U, generator=generator) * 0.1]

    if args.call == "stack":
        calls, what, warm = args.calls or 50, "forward+backward", 3

        def step(module, name):
            out = module.stack_forward(x, weights, [], cell, True)
            return module.stack_backward(torch.ones_like(out[0]), out[1:], weights, [], False, cell)[1:]

        difference = max((a - b).abs().max().item() for a, b in zip(step(old, "old"), step(new, "new")))
        compared = "gradient"
    else:
        calls, what, warm = args.calls or 2, "epoch", 0
        windows = 1198
        X = torch.randn(windows, T, F, generator=generator)
        Y = torch.randn(windows, 1, generator=generator)
        order = torch.stack([torch.randperm(windows, generator=torch.Generator().manual_seed(k)) for k in range(K)])
        head = torch.randn(K, 1, U, generator=generator) * 0.1

        def fresh() -> list:
            params = [w.clone() for w in weights] + [head.clone(), torch.zeros(K, 1)]
            return [params, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params],
                    [torch.zeros(()) for _ in params]]

        states = {"old": fresh(), "new": fresh()}
        if args.split and K != 1:
            parser.error("--split trains one model: give a shape with K 1")
        workers = {"old": old.SliceWorker(), "new": new.SliceWorker()} if args.split else {"old": None, "new": None}
        threshold, scale = native._mask_threshold(1.0 - args.dropout) if args.dropout else (0, 1.0)
        seeds = torch.randint(0, 2**62, (windows,), generator=generator).tolist() if args.dropout else []

        def step(module, name):
            params, exp_avgs, exp_avg_sqs, steps = states[name]
            total = torch.zeros(K, dtype=torch.float64)
            for first in range(0, windows, 8 * B):
                count = min(8, -(-(windows - first) // B))
                batch_seeds = seeds[first // B * K:(first // B + count) * K]
                module.train_batches(workers[name], X, Y, order, first, B, count, batch_seeds, threshold, scale,
                                     params[:-2], params[-2], params[-1], 0, cell, params, exp_avgs, exp_avg_sqs,
                                     steps, 1e-3, 0.9, 0.999, 1e-8, total)
            return params

        difference = max((a - b).abs().max().item() for a, b in zip(step(old, "old"), step(new, "new")))
        compared = "weight (after an epoch)"
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, module in (("old", old), ("new", new)):
            for _ in range(warm):
                step(module, name)
            started = time.perf_counter()
            for _ in range(calls):
                step(module, name)
            times[name].append((time.perf_counter() - started) / calls * 1e3)
    ratios = [a / b for a, b in zip(times["old"], times["new"])]
    print(f"{args.cell} {args.shape} (K {K}, T {T}, B {B}, F {F}, U {U}, L {L}), -march={args.march or 'native'}, "
          f"{'two threads (split batches)' if args.call == 'epoch' and args.split else 'one thread'}"
          f"{f', dropout {args.dropout}' if args.call == 'epoch' and args.dropout else ''}, {args.rounds} rounds of "
          f"{calls} {what}s; largest {compared} difference {difference:.3g}")
    for name in ("old", "new"):
        t = times[name]
        print(f"{name}: {statistics.median(t):.3f} ms per {what} ({min(t):.3f}-{max(t):.3f})")
    print(f"old/new: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
