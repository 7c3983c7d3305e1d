"""Speed harness: `make bench` or `python benchmarks/run.py [--epochs N] [--threads N] [--out PATH]`.

Prints a table and writes benchmarks/results.json. Every timing is a median over repeats with
its min and max, because the machine this was written on is shared and timings are noisy; the
`ab` section interleaves the seed config's training paths (batch split across threads, the
default; unsplit at the same thread count; one thread) so that drift hits all of them alike.

FLOP count (analytic, multiply-add = 2 FLOP): per recurrent layer and timestep the gate GEMMs
cost 2·B·(in + units)·G·units with G = 4 gates (LSTM), 3 (GRU), 1 (RNN); elementwise gate math
and the dense head are left out (< 2 %). The backward pass costs about twice the forward (one
GEMM for the input gradient, one for the weight gradient), so a training epoch is
3 · Σ_layers 2·N·T·(in + units)·G·units for N windows of T steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from seqcast import native  # noqa: E402
from seqcast.datasets import load_google  # noqa: E402
from seqcast.models import build_model  # noqa: E402
from seqcast.training import keep_freed_memory, predict_batches, train_model  # noqa: E402
from seqcast.windows import context_windows, fit_scaler, supervised_windows  # noqa: E402

LOOKBACK = 60


def seed_windows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed experiment's 1,198 training windows of scaled Open and the 20 January windows."""
    train, test = load_google()
    values = train["Open"].to_numpy(np.float64)[:, None]
    scaler = fit_scaler(values)
    scaled = scaler.transform(values)
    X, y = supervised_windows(scaled, scaled[:, 0], LOOKBACK, 1)
    both = np.concatenate([values, test["Open"].to_numpy(np.float64)[:, None]])
    january, _ = context_windows(scaler.transform(both), LOOKBACK, len(test))
    return np.ascontiguousarray(X, np.float32), np.ascontiguousarray(y, np.float32), january


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def cpu_details() -> tuple[str | None, dict]:
    """The first "model name" of /proc/cpuinfo (None off Linux: platform.processor() is empty on
    Linux), and the CPU's family and model numbers and its widest vector extension (empty off
    Linux), in one read: "AMD EPYC" named both a Zen 3 host (family 25 model 1, AVX2) and a Zen 4
    host (model 17, AVX-512) in one day, and the kernel's branch and torch's CPU capability follow
    the flags."""
    name, details = None, {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and name is None:
                    name = value
                elif key in ("cpu family", "model") and key.replace(" ", "_") not in details:
                    details[key.replace(" ", "_")] = int(value)
                elif key == "flags":
                    flags = value.split()
                    details["vector"] = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
                    break
    except (OSError, ValueError):
        pass
    details["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return name, details


def _gemm_rates(size: int, repeats: int) -> list[float]:
    """GFLOP/s of `repeats` size² fp32 products, after one untimed (the first after a change of
    thread count wakes or starts threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        rates.append(2.0 * size**3 / (time.perf_counter() - started) / 1e9)
    return rates


def gemm_rate(size: int = 2048, repeats: int = 7) -> dict:
    return {"size": size, "gflops": spread(_gemm_rates(size, repeats))}


def gemm_burst(threads: int, size: int = 2048, repeats: int = 3) -> float:
    """The fp32 GEMM rate now on `threads` threads, in GFLOP/s: the median of `repeats` 2048²
    products (~0.1-0.2 s). train_model runs a split fit's epochs, and so its on_epoch callback, with
    one intra-op thread; that count is put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return statistics.median(_gemm_rates(size, repeats))
    finally:
        torch.set_num_threads(before)


def bench_training(
    X, y, *, cell: str, layers: int, units: int, epochs: int, gemm: float, fused: bool = False, split: bool = True
) -> dict:
    model = build_model(1, cell=cell, layers=layers, units=units, dropout=0.2, horizon=1, seed=0, fused=fused)
    # This host's speed moves by up to 1.6x within minutes, so the GEMM rate of the run's start
    # need not be the one an epoch ran beside: a short GEMM burst after every epoch (outside the
    # epoch's timing) gives each timed epoch its own reference, the mean of the bursts on either side.
    beside: list[float] = []
    threads = torch.get_num_threads()
    # One warm-up epoch (oneDNN primitive creation, allocator growth), then `epochs` timed ones.
    history = train_model(
        model, X, y, epochs=epochs + 1, batch_size=64, seed=0, split_batches=split,
        on_epoch=lambda *_: beside.append(gemm_burst(threads)),
    )
    seconds = history.epoch_seconds[1:]
    # Backward ≈ 2 × forward (module docstring), so an epoch is 3 × forward over every window.
    flops = 3.0 * model.forward_flops(X.shape[1]) * len(X)
    median = statistics.median(seconds)
    references = [(before + after) / 2 for before, after in zip(beside, beside[1:])]
    path = " fused" if fused else ("" if split else " unsplit")
    return {
        "config": f"{layers}x{cell.upper()}({units}){path}, lookback {X.shape[1]}, {len(X)} windows, batch 64",
        "seconds_per_epoch": spread(seconds),
        "warmup_epoch_seconds": history.epoch_seconds[0],
        "windows_per_second": len(X) / median,
        "gflop_per_epoch": flops / 1e9,
        "gflops": flops / median / 1e9,
        "fraction_of_gemm": flops / median / 1e9 / gemm,
        "gemm_beside_epochs": spread(beside),
        "fraction_of_gemm_beside": spread([flops / t / 1e9 / ref for t, ref in zip(seconds, references)]),
        "final_loss": history.loss[-1],
    }


def bench_seed_ab(X, y, *, rounds: int, threads: int) -> dict:
    """Interleaved A/B of the seed config's training paths, because this host's speed drifts by 2×
    within minutes: each round fits 2 epochs with each path in turn and keeps the second epoch's
    time (the first pays oneDNN primitive creation). Paths: each batch split across `threads`
    threads (the default), unsplit with `threads` intra-op threads, unsplit with 1 thread."""
    paths = {"split": dict(split_batches=True, threads=threads), "unsplit": dict(split_batches=False, threads=threads),
             "one_thread": dict(split_batches=False, threads=1)}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    losses: dict[str, float] = {}
    for _ in range(rounds):
        for name, kwargs in paths.items():
            model = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
            history = train_model(model, X, y, epochs=2, batch_size=64, seed=0, **kwargs)
            seconds[name].append(history.epoch_seconds[1])
            losses[name] = history.loss[-1]
    result = {name: {"seconds_per_epoch": spread(times), "final_loss_2_epochs": losses[name]}
              for name, times in seconds.items()}
    result["rounds"] = rounds
    return result


def bench_predict(X, january, *, repeats: int = 200) -> dict:
    """Latency of predict_batches at its default (the batch split across torch's threads, one
    intra-op thread each) and, for the 20 January windows, on one thread too, in alternating blocks
    of 25 calls so that both see the same moments of the host."""
    model = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    cases = {"january_20": (january, None), "january_20_threads_1": (january, 1)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, (windows, threads) in cases.items():
        predict_batches(model, windows, threads=threads)
    for _ in range(repeats // 25):
        for name, (windows, threads) in cases.items():
            for _ in range(25):
                started = time.perf_counter()
                predict_batches(model, windows, threads=threads)
                times[name].append((time.perf_counter() - started) * 1e3)
    result = {name: {"windows": len(cases[name][0]), "threads": cases[name][1], "milliseconds": spread(t)}
              for name, t in times.items()}
    windows = X[:1000]
    predict_batches(model, windows)
    batch = []
    for _ in range(20):
        started = time.perf_counter()
        predict_batches(model, windows)
        batch.append((time.perf_counter() - started) * 1e3)
    result["batch_1000"] = {"windows": len(windows), "threads": None, "milliseconds": spread(batch)}
    return result


def bench_ensemble(X, y, *, k: int, epochs: int, shape: dict, batch_size: int, threads: int, rounds: int = 3) -> dict:
    """K seeds of one shape: K sequential train_model fits vs one train_many call, both with the
    library's own thread choice (threads=None) in a process of `threads` threads (set in main), in
    `rounds` interleaved rounds (the speedup is the median of the rounds' ratios). Until 2026-12-06
    21:15 both were given threads=`threads` explicitly; since then an unsplit compiled fit runs on
    one thread unless told otherwise, so the sequential fits are what a user's default fit is."""
    from seqcast.ensemble import train_many

    seeds = list(range(k))
    n_features = X.shape[2]
    sequential, together = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for seed in seeds:
            model = build_model(n_features, seed=seed, **shape)
            train_model(model, X, y, epochs=epochs, batch_size=batch_size, seed=seed)
        sequential.append(time.perf_counter() - started)
        models = [build_model(n_features, seed=seed, **shape) for seed in seeds]
        started = time.perf_counter()
        train_many(models, X, y, seeds=seeds, epochs=epochs, batch_size=batch_size)
        together.append(time.perf_counter() - started)
    windows = k * epochs * len(X)
    ratios = [a / b for a, b in zip(sequential, together)]
    cell = shape["cell"].upper() + (f" {shape.get('nonlinearity', 'tanh')}" if shape["cell"] == "rnn" else "")
    return {
        "models": k,
        "epochs": epochs,
        "shape": f"{shape['layers']}x{cell}({shape['units']}), {n_features} inputs, lookback "
        f"{X.shape[1]}, dropout {shape['dropout']}, batch {batch_size}, {threads} threads",
        "rounds": rounds,
        "sequential_seconds": statistics.median(sequential),
        "together_seconds": statistics.median(together),
        "sequential_windows_per_second": windows / statistics.median(sequential),
        "together_windows_per_second": windows / statistics.median(together),
        "speedup": statistics.median(ratios),
        "speedups": ratios,
    }


def bench_members(*, k: int, epochs: int, preset: str | None, jobs: int, rounds: int = 2) -> dict:
    """K members with seeds 0..K-1 on the bundled training rows, fitted: one after another by
    Forecaster.fit (at the default threads and at threads=1); by EnsembleForecaster's default
    (n_jobs=None: one train_many call, which trains small LSTMs together, one group per thread); and in
    `jobs` processes (this one plus jobs - 1 loky workers, one torch thread each). After a warm-up
    fit, the first parallel fit starts the workers ("cold"); then `rounds` interleaved rounds of
    the four, reusing them."""
    from seqcast.conformal import EnsembleForecaster
    from seqcast.forecaster import Forecaster

    train, _ = load_google()
    params = {**(Forecaster.from_preset(preset).get_params() if preset else {}), "epochs": epochs, "verbose": 0}

    def fit(n_jobs, threads=None, members=k) -> float:
        model = Forecaster(**{**params, "threads": threads})
        started = time.perf_counter()
        if n_jobs == "one_by_one":
            for seed in range(members):
                Forecaster(**{**params, "threads": threads, "seed": seed}).fit(train)
        else:
            EnsembleForecaster(model, n_members=members, calibration_fraction=0.0, n_jobs=n_jobs).fit(train)
        return time.perf_counter() - started

    fit(None, members=1)  # the process's first fit pays one-off set-up costs
    cold = fit(jobs)
    seconds: dict[str, list[float]] = {"one_by_one": [], "one_by_one_1_thread": [], "ensemble": [], "processes": []}
    for _ in range(rounds):
        seconds["one_by_one"].append(fit("one_by_one"))
        seconds["one_by_one_1_thread"].append(fit("one_by_one", threads=1))
        seconds["ensemble"].append(fit(None))
        seconds["processes"].append(fit(jobs))
    one_by_one = statistics.median(seconds["one_by_one"])
    return {
        "models": k,
        "epochs": epochs,
        "config": f"--preset {preset}" if preset else "the seed config",
        "jobs": jobs,
        "processes_cold_seconds": cold,
        "seconds": {name: spread(values) for name, values in seconds.items()},
        "speedup_ensemble": one_by_one / statistics.median(seconds["ensemble"]),
        "speedup_cold": one_by_one / cold,
        "speedup": one_by_one / statistics.median(seconds["processes"]),
        "speedup_over_1_thread": statistics.median(seconds["one_by_one_1_thread"]) / statistics.median(seconds["processes"]),
    }


def preset_windows(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows of the indicators preset's shape (3 inputs, lookback 20) cut from the seed windows:
    only the shape matters for speed."""
    last = X[:, -20:, :]
    return np.ascontiguousarray(np.concatenate([last, last * 0.5, last - last.mean()], axis=2)), y


def bench_malloc(threads: int, rounds: int = 3, epochs: int = 3) -> dict:
    """The seed config in fresh processes, with seqcast's malloc settings (training.keep_freed_memory)
    and with glibc's defaults (SEQCAST_MALLOC=default), in interleaved rounds: seconds per epoch
    (median of `epochs` after one warm-up) and minor page faults per epoch. Fresh processes because
    the in-process sections cannot show it: once a process has freed a large mapped block (the GEMM
    section does), glibc raises its mmap threshold by itself."""
    runs: dict[str, list[dict]] = {"keep_freed_memory": [], "glibc_defaults": []}
    for _ in range(rounds):
        for name in runs:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SEQCAST_MALLOC"}
            if name == "glibc_defaults":
                env["SEQCAST_MALLOC"] = "default"
            out = subprocess.run(
                [sys.executable, __file__, "--malloc-child", "--threads", str(threads), "--epochs", str(epochs)],
                capture_output=True, text=True, check=True, env=env,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        name: {
            "state": r[0]["state"],
            "seconds_per_epoch": spread([x["seconds_per_epoch"] for x in r]),
            "minor_faults_per_epoch": spread([x["minor_faults_per_epoch"] for x in r]),
        }
        for name, r in runs.items()
    } | {"rounds": rounds}


def malloc_child(epochs: int) -> None:
    X, y, _ = seed_windows()
    model = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    train_model(model, X, y, epochs=1, batch_size=64, seed=0)  # warm-up: oneDNN primitive creation
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    history = train_model(model, X, y, epochs=epochs, batch_size=64, seed=0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({
        "state": keep_freed_memory(),
        "seconds_per_epoch": statistics.median(history.epoch_seconds),
        "minor_faults_per_epoch": faults / epochs,
    }))


def peak_rss_of_fit(threads: int) -> dict:
    """Memory of a fresh process that imports seqcast and fits the seed config for 2 epochs: the
    process's peak RSS (ru_maxrss), its RSS just before the fit, and the fit's own peak (the
    kernel's high-water mark, reset just before the fit)."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--threads", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS: writing 5 to
    /proc/self/clear_refs (Linux 4.0+). ru_maxrss cannot be reset, and the imports (torch's
    libraries) set a higher peak than the fit, so without this the fit's own peak is hidden."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def rss_child() -> None:
    X, y, _ = seed_windows()
    model = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    process_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    before = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    train_model(model, X, y, epochs=2, batch_size=64, seed=0)
    peak = _proc_status_kib("VmHWM") if reset else None
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def mib(kib: int | None) -> float | None:
        return None if kib is None else kib / 1024

    print(json.dumps({
        "after_imports_mib": mib(process_peak_before),  # peak so far: imports, data, model
        "peak_process_mib": mib(after),
        "peak_fit_mib": mib(peak if peak is not None else after),
        "rss_before_fit_mib": mib(before),
        "fit_adds_mib": mib(peak - before) if peak is not None and before is not None else None,
        "fit_peak_measured": "VmHWM reset before the fit" if peak is not None else "ru_maxrss (not resettable here)",
    }))


def main(argv: list[str] | None = None) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # each result shows as soon as it is measured
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per config (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--ensemble", type=int, default=8, help="models trained together")
    parser.add_argument("--ensemble-epochs", type=int, default=2)
    parser.add_argument("--members-epochs", type=int, default=10, help="epochs per member in the 'members' section")
    parser.add_argument("--ab-rounds", type=int, default=5, help="interleaved rounds of the seed-config A/B")
    parser.add_argument("--only", choices=("gemm", "train", "ab", "predict", "ensemble", "members", "rss", "malloc"), action="append")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="where to write the results (default: results.json; with --only, results-partial.json, so a "
        "partial run does not replace the last full one)",
    )
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--malloc-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child()
        return
    if args.malloc_child:
        malloc_child(args.epochs)
        return
    sections = set(args.only or ("gemm", "train", "ab", "predict", "ensemble", "members", "rss", "malloc"))
    if args.out is None:
        args.out = HERE / ("results-partial.json" if args.only else "results.json")

    # Build (or load) the compiled kernel before any timing: after a change to it the first fit
    # would otherwise build it inside a timed section (30-60 s; a round of the ensemble rows read 8.4x).
    native.available()
    X, y, january = seed_windows()
    cpu_name, cpu = cpu_details()
    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_name,
            "cpu": cpu,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_before": os.getloadavg(),
        },
    }
    print(f"{results['machine']['cpu_model']} (family {cpu.get('cpu_family')} model {cpu.get('model')}, "
          f"{cpu.get('vector')}), {results['machine']['cpus']} CPUs, torch {torch.__version__}")
    gemm = gemm_rate()
    results["gemm"] = gemm
    rate = gemm["gflops"]["median"]
    print(f"fp32 GEMM 2048²: {rate:.1f} GFLOP/s (min {gemm['gflops']['min']:.1f}, max {gemm['gflops']['max']:.1f}), "
          f"{torch.get_num_threads()} threads")
    if "train" in sections:
        results["training"] = {}
        configs = (
            ("lstm", 4, 50, False, True),
            ("lstm", 4, 50, False, False),
            ("lstm", 4, 50, True, True),
            ("gru", 4, 50, False, True),
            ("rnn", 4, 50, False, True),
            ("lstm", 2, 128, False, True),
        )
        for cell, layers, units, fused, split in configs:
            r = bench_training(
                X, y, cell=cell, layers=layers, units=units, epochs=args.epochs, gemm=rate, fused=fused, split=split
            )
            path = "_fused" if fused else ("" if split else "_unsplit")
            results["training"][f"{cell}_{layers}x{units}{path}"] = r
            s = r["seconds_per_epoch"]
            print(f"{r['config']}: {s['median']:.3f} s/epoch (min {s['min']:.3f}, max {s['max']:.3f}, n {s['n']}), "
                  f"{r['windows_per_second']:.0f} windows/s, {r['gflops']:.1f} GFLOP/s = "
                  f"{100 * r['fraction_of_gemm']:.0f}% of GEMM; {100 * r['fraction_of_gemm_beside']['median']:.0f}% "
                  f"({100 * r['fraction_of_gemm_beside']['min']:.0f}-{100 * r['fraction_of_gemm_beside']['max']:.0f}) "
                  f"of the GEMM rate beside each epoch ({r['gemm_beside_epochs']['min']:.0f}-"
                  f"{r['gemm_beside_epochs']['max']:.0f} GFLOP/s)", flush=True)
    if "ab" in sections:
        r = bench_seed_ab(X, y, rounds=args.ab_rounds, threads=args.threads)
        results["seed_ab"] = r
        print(f"seed config A/B, {r['rounds']} interleaved rounds: " + ", ".join(
            f"{name} {r[name]['seconds_per_epoch']['median']:.3f} s/epoch "
            f"({r[name]['seconds_per_epoch']['min']:.3f}-{r[name]['seconds_per_epoch']['max']:.3f})"
            for name in ("split", "unsplit", "one_thread")))
    if "predict" in sections:
        results["predict"] = bench_predict(X, january)
        for name, r in results["predict"].items():
            m = r["milliseconds"]
            how = "default threads" if r["threads"] is None else f"threads={r['threads']}"
            print(f"predict {r['windows']} windows ({how}): {m['median']:.2f} ms (min {m['min']:.2f}, max {m['max']:.2f})")
    if "ensemble" in sections:
        seed_shape = dict(cell="lstm", layers=4, units=50, dropout=0.2, horizon=1)
        preset_shape = dict(cell="lstm", layers=1, units=32, dropout=0.0, horizon=1)
        Xp, yp = preset_windows(X, y)
        runs = {
            "ensemble": (X, y, seed_shape, 64, args.threads),
            "ensemble_preset_shape": (Xp, yp, preset_shape, 32, args.threads),
            "ensemble_preset_shape_gru": (Xp, yp, {**preset_shape, "cell": "gru"}, 32, args.threads),
            "ensemble_preset_shape_rnn": (Xp, yp, {**preset_shape, "cell": "rnn"}, 32, args.threads),
        }
        for key, (Xk, yk, shape, batch, threads) in runs.items():
            r = bench_ensemble(Xk, yk, k=args.ensemble, epochs=args.ensemble_epochs, shape=shape, batch_size=batch,
                               threads=threads)
            results[key] = r
            print(f"{r['models']} models x {r['epochs']} epochs of {r['shape']}: sequential "
                  f"{r['sequential_windows_per_second']:.0f} windows/s, together "
                  f"{r['together_windows_per_second']:.0f} windows/s ({r['speedup']:.2f}x, rounds "
                  + ", ".join(f"{x:.2f}x" for x in r["speedups"]) + ")", flush=True)
    if "members" in sections:
        results["members"] = {}
        for preset, epochs in (("indicators", args.members_epochs), (None, 1)):
            r = bench_members(k=args.ensemble, epochs=epochs, preset=preset, jobs=2)
            results["members"][preset or "seed"] = r
            t = {name: v["median"] for name, v in r["seconds"].items()}
            print(f"{r['models']} members x {r['epochs']} epochs, {r['config']}: one after another "
                  f"{t['one_by_one']:.1f} s ({t['one_by_one_1_thread']:.1f} s at 1 thread), EnsembleForecaster "
                  f"{t['ensemble']:.1f} s ({r['speedup_ensemble']:.2f}x), {r['jobs']} processes "
                  f"{t['processes']:.1f} s ({r['speedup']:.2f}x; {r['speedup_over_1_thread']:.2f}x over 1 thread), "
                  f"{r['processes_cold_seconds']:.1f} s when starting the workers ({r['speedup_cold']:.2f}x)", flush=True)
    if "rss" in sections:
        results["peak_rss"] = peak_rss_of_fit(args.threads)
        r = results["peak_rss"]
        added = "" if r["fit_adds_mib"] is None else f", the fit adds {r['fit_adds_mib']:.0f} MiB"
        print(f"peak RSS of a seed-config fit: {r['peak_fit_mib']:.0f} MiB ({r['rss_before_fit_mib']:.0f} MiB "
              f"just before it{added}); the process's peak {r['peak_process_mib']:.0f} MiB, "
              f"{r['after_imports_mib']:.0f} MiB after imports and data")
    if "malloc" in sections:
        results["malloc"] = r = bench_malloc(args.threads)
        print(f"seed config in {r['rounds']} rounds of fresh processes: " + ", ".join(
            f"{name} {r[name]['seconds_per_epoch']['median']:.3f} s/epoch "
            f"({r[name]['seconds_per_epoch']['min']:.3f}-{r[name]['seconds_per_epoch']['max']:.3f}), "
            f"{r[name]['minor_faults_per_epoch']['median']:.0f} minor faults/epoch"
            for name in ("keep_freed_memory", "glibc_defaults")))
    results["machine"]["load_average_after"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
