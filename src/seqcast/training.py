"""The fit loop: Keras ``model.fit`` semantics on a PyTorch module.

Keras semantics kept on purpose, because the seed's numbers depend on them: the data are
reshuffled every epoch, the last partial batch is trained on, each batch's loss is the mean over
its samples, there is one optimizer step per batch, and the reported epoch loss is the
batch-size-weighted mean of the batch losses.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import itertools
import math
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn import functional as F

from seqcast import native
from seqcast.artifacts import read_model_dir, write_model_dir
from seqcast.errors import ArtifactError, ConfigError, DataError, SeqcastError, TrainingInterrupted
from seqcast.models import GLOBAL_RNG_LOCK, StackedRNN

OPTIMIZERS = ("adam", "rmsprop", "sgd")
LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}
# Keras's default epsilon; PyTorch's is 1e-8, which changes early Adam/RMSprop steps.
KERAS_EPSILON = 1e-7


class TrainingDiverged(SeqcastError):
    """The training loss became NaN or infinite."""


class FitCancelled(Exception):
    """A fit stopped by :func:`cancel_on`'s event (its caller has given up on it)."""


_cancel = threading.local()


@contextmanager
def cancel_on(event: threading.Event) -> Iterator[None]:
    """Fits that this thread runs inside the block raise :class:`FitCancelled` at their next batch
    once ``event`` is set. For fits in worker threads whose caller stops early (an error, Ctrl-C):
    it waits for them, and a thread still inside torch when the interpreter exits aborts the
    process ("terminate called without an active exception")."""
    previous = getattr(_cancel, "events", ())
    _cancel.events = (*previous, event)  # nested blocks: any of their events cancels
    try:
        yield
    finally:
        _cancel.events = previous


def raise_if_cancelled() -> None:
    """Raise :class:`FitCancelled` if one of this thread's :func:`cancel_on` events is set."""
    if any(event.is_set() for event in getattr(_cancel, "events", ())):
        raise FitCancelled


@dataclass
class History:
    """Per-epoch record of one training run. Epochs are numbered from 1."""

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(
            loss=[float(v) for v in d.get("loss", [])],
            val_loss=[float(v) for v in d.get("val_loss", [])],
            epoch_seconds=[float(v) for v in d.get("epoch_seconds", [])],
            best_epoch=None if d.get("best_epoch") is None else int(d["best_epoch"]),
            stopped_early=bool(d.get("stopped_early", False)),
        )


def seed_everything(seed: int) -> torch.Generator:
    """Seed ``random``, numpy and torch; return a separate generator for batch shuffling.

    Shuffling gets its own generator so that the order of batches does not depend on how many
    random numbers dropout consumed, and vice versa.
    """
    with GLOBAL_RNG_LOCK:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _undecorated(function):
    """``function`` without the decorator ``functools.wraps`` recorded (itself if none)."""
    return getattr(function, "__wrapped__", function)


class _WithoutDynamoImport:
    """A torch optimizer whose construction, steps, ``zero_grad`` and state dicts run torch's own
    code without the ``torch._disable_dynamo`` wrappers torch puts around them for ``torch.compile``:
    the first call of any of them imports ``torch._dynamo``, 1.0-1.5 s per process on the 2-core
    host (~12 % of ``make demo``, and again in every worker process), although a fit that is not
    compiled never needs it. The same arithmetic to the bit (tests/test_training.py compares every
    parameter and moment with torch's class), and step hooks, the instance's and the global ones,
    still run (``Optimizer.__init__`` wraps ``step`` with them). seqcast never compiles its
    optimizers; under ``torch.compile`` use torch's own classes, which keep dynamo out of them."""

    add_param_group = _undecorated(torch.optim.Optimizer.add_param_group)
    zero_grad = _undecorated(torch.optim.Optimizer.zero_grad)
    state_dict = _undecorated(torch.optim.Optimizer.state_dict)
    load_state_dict = _undecorated(torch.optim.Optimizer.load_state_dict)
    _step = None  # the optimizer class's step without its decorator (set per class below)

    def step(self, closure=None):
        # What torch's decorator around step does besides dynamo's graph breaks: grad mode off
        # (it sets it to the "differentiable" option, which seqcast never sets).
        with torch.no_grad():
            return type(self)._step(self, closure)


class Adam(_WithoutDynamoImport, torch.optim.Adam):
    """``torch.optim.Adam`` without the ``torch._dynamo`` import (:class:`_WithoutDynamoImport`)."""

    _step = _undecorated(torch.optim.Adam.step)


class RMSprop(_WithoutDynamoImport, torch.optim.RMSprop):
    """``torch.optim.RMSprop`` without the ``torch._dynamo`` import (:class:`_WithoutDynamoImport`)."""

    _step = _undecorated(torch.optim.RMSprop.step)


class SGD(_WithoutDynamoImport, torch.optim.SGD):
    """``torch.optim.SGD`` without the ``torch._dynamo`` import (:class:`_WithoutDynamoImport`)."""

    _step = _undecorated(torch.optim.SGD.step)


def make_optimizer(name: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Build an optimizer with Keras's defaults (Adam β=(0.9, 0.999), ε=1e-7; RMSprop ρ=0.9).

    Keras's Adam adds ε to ``sqrt(v)`` before bias correction and PyTorch after it; the two
    differ only while ``sqrt(1 - β2^t)`` is far from 1 and only where ``sqrt(v)`` is near ε.
    """
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    # Adam divides lr by its bias correction (>= 0.1) in float32, whose limit is 3.4e38.
    if lr > 1e30:
        raise ConfigError(f"lr {lr!r} is too large (at most 1e30, typical values are 1e-4..1e-2)")
    key = name.lower() if isinstance(name, str) else name
    if key == "adam":
        # fused: one multi-tensor kernel per step instead of ~10 small ops per tensor (3-4x faster on
        # the CPU, ~10 % of a small model's epoch); same algorithm, checked in test_speed_paths.
        return Adam(params, lr=lr, betas=(0.9, 0.999), eps=KERAS_EPSILON, fused=True)
    if key == "rmsprop":
        return RMSprop(params, lr=lr, alpha=0.9, eps=KERAS_EPSILON)
    if key == "sgd":
        return SGD(params, lr=lr)
    raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a usable ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device; use cpu, cuda or auto") from exc
    # Other torch device types (meta, mps, xpu …) are untested here and fail deep inside training.
    if resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use cpu, cuda or auto")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was requested but this PyTorch build sees no CUDA GPU; "
            "use --device cpu or --device auto"
        )
    return resolved


def _as_tensor(array: np.ndarray | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    # One copy into contiguous float32: batches are then gathered by index without Python copies,
    # and a strided sliding_window_view is materialised only once.
    if isinstance(array, torch.Tensor):
        return array.detach().to(device=device, dtype=torch.float32).contiguous()
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, which training then reports
            converted = np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} cannot be converted to a float32 array: {exc}") from exc
    # torch.from_numpy warns on read-only arrays (e.g. a caller's float32 window view).
    if not converted.flags.writeable:
        converted = converted.copy()
    return torch.from_numpy(converted).to(device)


def _windows_tensor(array: np.ndarray | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    """Training windows as float32 on ``device``. Windows cut from one C-contiguous series with step
    1, as ``windows.sliding_windows`` cuts them (strides ``(F, F, 1)`` elements), stay windows: one
    float32 copy of the series' rows, viewed ``(n, lookback, F)`` with ``Tensor.as_strided``, where
    a contiguous copy would hold every row ``lookback`` times (915 MiB instead of 15 MiB for
    1,000,000 rows of 4 inputs at lookback 60). Batches are gathered by index from the view, as
    from a copy, with the same values. A float32 tensor already on ``device`` is used as it is
    (``train_many`` hands its prepared windows to ``train_model``); anything else is copied whole."""
    if isinstance(array, torch.Tensor) and array.dtype == torch.float32 and array.device == device:
        return array.detach()
    if isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[0] and array.shape[1] > 1:
        step = array.itemsize
        n, lookback, features = array.shape
        if array.strides == (features * step, features * step, step):
            rows = np.lib.stride_tricks.as_strided(array, shape=(n + lookback - 1, features), strides=array.strides[1:])
            series = _as_tensor(rows, device, name)
            return series.as_strided((n, lookback, features), (features, features, 1))
    return _as_tensor(array, device, name)


def _prepare(
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    device: torch.device,
    horizon: int | None,
    names: tuple[str, str],
) -> tuple[torch.Tensor, torch.Tensor]:
    x_name, y_name = names
    X_t = _windows_tensor(X, device, x_name)
    y_t = _as_tensor(y, device, y_name)
    if y_t.ndim == 1:
        y_t = y_t.unsqueeze(1)
    if X_t.ndim != 3:
        raise DataError(f"{x_name} must have shape (samples, lookback, features), got {tuple(X_t.shape)}")
    if y_t.ndim != 2:
        raise DataError(f"{y_name} must have shape (samples, horizon), got {tuple(y_t.shape)}")
    if len(X_t) != len(y_t):
        raise DataError(f"{x_name} has {len(X_t)} samples but {y_name} has {len(y_t)}")
    if len(X_t) == 0:
        raise DataError(f"{x_name} has no samples; the series is shorter than lookback + horizon")
    if horizon is not None and y_t.shape[1] != horizon:
        raise DataError(f"{y_name} has {y_t.shape[1]} target columns but the model predicts {horizon}")
    return X_t, y_t


def _mean_loss(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch_size: int,
) -> float:
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            stop = start + batch_size
            batch_loss = loss_fn(model(X[start:stop]), y[start:stop])
            total += batch_loss.double() * (min(stop, len(X)) - start)
    return total.item() / len(X)


# ---------------------------------------------------------------- the allocator
# glibc's malloc serves every block of at least M_MMAP_THRESHOLD (128 KiB when a process starts)
# with a fresh mmap and hands it back to the kernel on free, so each page of it is faulted in anew
# on every use. oneDNN's RNN primitives allocate their workspace and outputs (hundreds of KiB to
# tens of MiB) on every call: a seed-config epoch took 110,000-150,000 minor page faults and 0.1-0.3 s
# of system time, and ran in 0.62-0.70 s against 0.46-0.49 s with the settings below (4 interleaved
# fresh processes each, benchmarks/README.md, 2026-12-06). glibc raises the threshold by itself once
# a process frees an mmapped block of up to 32 MiB (which is why the benchmark harness, whose GEMM
# section runs first, never saw this), but a fresh `seqcast run` frees none before it trains.
# jemalloc or tcmalloc would do as well, but only through LD_PRELOAD, which a library cannot set.
MALLOC_MMAP_THRESHOLD = 32 << 20  # the largest value glibc's own adjustment reaches
MALLOC_TRIM_THRESHOLD = 64 << 20  # twice it, as glibc's adjustment sets it
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
# Any of these set means the user chose malloc's behaviour; SEQCAST_MALLOC=default opts out alone.
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_allocator_lock = threading.Lock()
_allocator_state: str | None = None


def keep_freed_memory() -> str:
    """Once per process, on Linux with glibc: ``mallopt`` the mmap threshold to 32 MiB and the trim
    threshold to 64 MiB, so that the blocks oneDNN allocates and frees on every kernel call are
    reused from malloc's heap instead of being mapped and faulted in again (see above). The cost is
    that up to 64 MiB freed per malloc arena may stay with the process (a seed-config fit's peak
    RSS grew by ~20 MiB). Left alone when the environment already sets malloc's thresholds
    (``MALLOC_*_`` variables or ``glibc.malloc`` tunables), when ``SEQCAST_MALLOC=default``, or
    off glibc. :func:`train_model`, ``ensemble.train_many`` and :func:`predict_batches` call it.
    Returns what it did: ``"set"``, or why it did not."""
    global _allocator_state
    with _allocator_lock:
        if _allocator_state is None:
            _allocator_state = _tune_malloc()
        return _allocator_state


def _tune_malloc() -> str:
    if os.environ.get("SEQCAST_MALLOC", "").strip().lower() == "default":
        return "left alone: SEQCAST_MALLOC=default"
    chosen = [name for name in _MALLOC_ENV if os.environ.get(name)]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"left alone: {', '.join(chosen)} set"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "left alone: not glibc"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "left alone: no mallopt"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)):
        return "left alone: mallopt refused"
    return "set"


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, then restore the previous count."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_fit_settings(*, epochs, batch_size, threads, loss, clip_norm) -> None:
    """The checks every training entry point (train_model, ensemble.train_many) makes up front."""
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch_size", batch_size)
    if threads is not None:
        _check_positive_int("threads", threads)
    if loss not in LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if clip_norm is not None and (isinstance(clip_norm, bool) or not (isinstance(clip_norm, (int, float)) and clip_norm > 0)):
        raise ConfigError(f"clip_norm must be a positive number, got {clip_norm!r}")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


# Smallest forward cost of one slice worth a thread of its own. Measured on 2 cores
# (benchmarks/README.md, 2026-12-02): 1×LSTM(32), lookback 20, batch 32 (2.7 MFLOP per half; the
# indicators preset has 2.9) ran 1.3× slower split, because a slice that small is bound by per-op
# Python and dispatcher overhead, which holds the GIL; 1×LSTM(32), lookback 60, batch 64 (16 MFLOP
# per half) ran 1.25× faster split, the seed config (269 MFLOP per half) 1.46-1.66×. Re-measured
# with the hand-written GRU and RNN (18:28 UTC): 2×GRU(32) at 8.9 MFLOP per half 1.18× slower split,
# 1×GRU(32) at 12.2 1.09× faster, 2×LSTM(32) at 11.9 1.07× faster, 1×RNN(32) at 4.1 no gain.
MIN_SLICE_FLOPS = 1e7

# Smallest forward cost of one slice of a :func:`predict_batches` batch worth a thread of its own.
# Measured on 2 cores (benchmarks/README.md, 2026-12-02 18:20 UTC, medians of 120 calls, ms, one
# thread / two slices / two intra-op threads): the seed config's 20 January windows (168 MFLOP)
# 5.24 / 4.28 / 9.59 and 1,000 windows 213 / 106 / 159, but 4 windows (34 MFLOP) 1.87 / 1.99 /
# 2.34; the indicators preset's 200 windows (36 MFLOP) 1.42 / 1.40 / 1.12 and 1,000 windows (179
# MFLOP) 6.86 / 5.04 / 4.61.
MIN_PREDICT_SLICE_FLOPS = 5e7

# Largest forward cost of an unsplit :func:`predict_batches` call that runs on one thread when the
# caller does not choose: a call this small is latency-bound, and two OpenMP threads wait for each
# other at every kernel (the seed config's 20 January windows took 3.0-3.4 ms at 2 threads and
# 3.5-4.1 ms at 1 in quiet spells of the host, but 7.3-9.5 against 3.9-5.0 ms in slow ones).
SMALL_PREDICT_FLOPS = 3e8


def batch_split_workers(
    model: nn.Module, device: torch.device, threads: int | None, split: bool, batch_size: int, steps: int
) -> int:
    """How many threads :func:`train_model` splits each batch across (1: no split).

    Only a :class:`~seqcast.models.StackedRNN` on the CPU (not the opt-in fused path), whose dropout
    masks can be drawn for the whole batch before it is split, so the result does not depend on
    which thread draws first; and only as many slices as each keep at least
    :data:`MIN_SLICE_FLOPS` of forward work.
    """
    if not split or device.type != "cpu" or not isinstance(model, StackedRNN) or model.fused:
        return 1
    workers = int(threads) if threads is not None else torch.get_num_threads()
    affordable = int(model.forward_flops(steps) * batch_size // MIN_SLICE_FLOPS)
    return max(1, min(workers, affordable))


def one_thread_pool(workers: int) -> ThreadPoolExecutor:
    """Python worker threads that each run torch on one intra-op thread. ``torch.set_num_threads``
    is per OS thread for OpenMP, so each pool thread sets it itself: a thread that did not would
    start full-width OpenMP teams and oversubscribe the cores (benchmarks/README.md)."""
    return ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))


def loss_name(loss_fn: Callable) -> str | None:
    """The name under which :data:`LOSSES` holds ``loss_fn`` (None: not one of them)."""
    return next((name for name, fn in LOSSES.items() if fn is loss_fn), None)


def compiled_steps_apply(model: nn.Module, loss_fn: Callable) -> bool:
    """Whether ``model``'s training steps with ``loss_fn`` can run as one compiled call each
    (:func:`seqcast.native.train_step`) where a batch's shape suits the compiled layer
    (:func:`compiled_step_fits`): a :class:`StackedRNN` (not the opt-in fused path) trained with
    one of :data:`LOSSES`, with nothing hooked into its forward or backward pass, every parameter
    float32 and trained, in the order the call returns gradients."""
    if not isinstance(model, StackedRNN) or model.fused:
        return False
    if loss_name(loss_fn) not in native.TRAIN_STEP_LOSSES:
        return False
    if type(model).forward is not StackedRNN.forward or type(model.head) is not nn.Linear or _hooked(model):
        return False  # the compiled step would skip what the caller added
    own = [w for layer in model.layer_weights() for w in layer] + [model.head.weight, model.head.bias]
    params = list(model.parameters())
    return len(own) == len(params) and all(
        a is b and a.dtype == torch.float32 and a.requires_grad for a, b in zip(own, params)
    )


def _hooked(model: nn.Module) -> bool:
    """Whether a forward or backward hook would run in ``model``'s training step: on the model or a
    submodule, registered globally, or on a parameter. (``nn.Module`` has no public query for this;
    these are the dictionaries its ``__call__`` and autograd read.)"""
    from torch.nn.modules import module as nn_module

    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(nn_module, f"_global{name}", None) for name in names):
        return True
    if any(getattr(m, name, None) for m in model.modules() for name in names):
        return True
    return any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())


def compiled_step_fits(model: StackedRNN, x: torch.Tensor, y: torch.Tensor) -> bool:
    """For a model :func:`compiled_steps_apply` to: whether windows ``x`` with targets ``y`` train
    with the compiled layer on this thread (``StackedRNN.trains_natively``) and have its shapes."""
    return (
        x.dtype == y.dtype == torch.float32
        and y.dim() == 2
        and y.shape[1] == model.horizon
        and model.trains_natively(x)
    )


def compiled_step(
    model: StackedRNN, x: torch.Tensor, y: torch.Tensor, seed: int | None, loss: str, *,
    batch: int | None = None, start: int = 0, weight: float = 1.0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model``'s training step on windows ``x`` (``start:start+len(x)`` of a batch of ``batch``)
    and targets ``y`` as one :func:`seqcast.native.train_step` call, ``seed`` the batch's mask seed
    (``StackedRNN.batch_mask_seed``): ``weight`` × the mean loss, and the gradient of that for every
    parameter, in ``model.parameters()`` order (which :func:`compiled_steps_apply` checks)."""
    losses, grads = native.train_step(
        x[None], y[None], model.layer_weights(), model.head.weight, model.head.bias,
        seeds=None if seed is None else [seed], keep=1.0 - model.dropout_rate, batch=batch, start=start,
        weight=weight, loss=loss, cell=model.native_cell,
    )
    return losses[0], grads


# Batches a fit trains per compiled call once Adam's state exists (_BatchSplitter.run_batches for a
# split fit, _run_compiled_batches for an unsplit one, ensemble._train_group for a group): at least
# BATCHES_PER_CALL, and as many more as fit in CALL_FLOPS of training work, up to
# MAX_BATCHES_PER_CALL (batches_per_call). Between calls the loop checks for cancellation
# (training.cancel_on), about every 0.1-0.15 s for the seed config (8 batches a call) and no less
# often for smaller models. A call costs 60-110 us of Python around it; at 8 batches a call that was
# 4 % of a preset-shaped LSTM fit and 7 % of an RNN one (benchmarks/README.md, 2026-12-07, 03:45 UTC
# section).
BATCHES_PER_CALL = 8
MAX_BATCHES_PER_CALL = 64
CALL_FLOPS = 8 * 3 * 8.4e6 * 64  # 8 seed-config batches: 3 x forward FLOPs (model.forward_flops) x 64 windows


def batches_per_call(model: StackedRNN, steps: int, batch_size: int, models: int = 1) -> int:
    """Batches of ``batch_size`` windows of ``steps`` steps that one compiled call trains for
    ``models`` models of ``model``'s shape: ~CALL_FLOPS of work, between BATCHES_PER_CALL and
    MAX_BATCHES_PER_CALL."""
    per_batch = 3.0 * model.forward_flops(steps) * batch_size * models
    return max(BATCHES_PER_CALL, min(MAX_BATCHES_PER_CALL, int(CALL_FLOPS // max(per_batch, 1.0))))


def _run_compiled_batches(
    model: StackedRNN, X: torch.Tensor, y: torch.Tensor, order: torch.Tensor, start: int, batch_size: int,
    dropper: torch.Generator, optimizer: torch.optim.Optimizer, total: torch.Tensor, params: list[torch.Tensor],
    loss: str, takes: Callable[[int], bool], worker: Callable[[], object] | None = None,
) -> int:
    """Train up to :func:`batches_per_call` batches from window ``start`` of the shuffled ``order``
    in one compiled call (:func:`seqcast.native.train_batches`) and return how many: as long as
    ``takes(n)`` says a batch of ``n`` windows runs compiled; 0 where the first does not (then the
    caller trains it as before). ``worker`` (None: one thread) gives a split fit's pair thread,
    asked for only when a call is made. The caller checks that Adam's update runs compiled with its
    state in place (:func:`native_adam_applies`, :func:`adam_started`). Each batch is what the
    caller's loop would do: the same mask seed from ``dropper``, the same gradients and update, its
    loss times its windows added to ``total``, to the bit; only the Python between the batches is
    gone (an unsplit preset batch spent 0.29 of 0.77 ms in it; split seed-config fits 1.049x and
    1.053x per epoch; benchmarks/README.md, 2026-12-06)."""
    n_samples = len(order)
    most = batches_per_call(model, X.shape[1], batch_size)
    count = 0
    while count < most and start + count * batch_size < n_samples:
        if not takes(min(batch_size, n_samples - start - count * batch_size)):
            break
        count += 1
    if count == 0:
        return 0
    seeds = [model.batch_mask_seed(dropper) for _ in range(count)]
    optimizer.zero_grad(set_to_none=True)
    native.train_batches(
        X, y, order[None], model.layer_weights(), model.head.weight, model.head.bias, params, optimizer,
        total.view(1), first=start, batch=batch_size, count=count, seeds=None if seeds[0] is None else seeds,
        keep=1.0 - model.dropout_rate, loss=loss, cell=model.native_cell, worker=None if worker is None else worker(),
    )
    return count


class _BatchSplitter:
    """Forward and backward of one batch as ``workers`` slices in parallel threads, one intra-op
    thread each; :meth:`gradients` returns each slice's gradients, which the caller sums in slice
    order (:func:`apply_gradients`).

    Why: a batch of 64 windows gives GEMMs of 64×100 by 100×200 per step, too small for two
    OpenMP threads to share well (the second core added ×1.2-1.45 to oneDNN's LSTM here), while
    two independent halves keep both cores busy with one synchronisation per batch instead of one
    per kernel call (×1.46-1.66 over that per epoch in interleaved runs, benchmarks/README.md).
    Autograd runs a CPU backward on the thread that calls it, so the halves really run in parallel.
    Two slices that both take the compiled step run as one call of
    :func:`seqcast.native.train_step_pair`, the second slice on a C++ thread of the compiled module's
    (started on the first such batch, joined by :meth:`close`) instead of this pool's Python thread.

    The result is the batch's own: the slice losses are the batch mean loss weighted by slice size,
    so the summed gradient is the gradient of the batch mean (the same as unsplit up to float
    rounding), and the dropout masks are those of the whole batch: its seed is drawn on the calling
    thread, from the same generator in the same order as an unsplit forward pass, and each slice
    draws its windows' part of the masks from it (StackedRNN.dropout_masks, counter-based).
    """

    def __init__(self, model: StackedRNN, loss_fn: Callable, workers: int):
        self.model = model
        self.loss_fn = loss_fn
        self.workers = workers
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pool = one_thread_pool(workers - 1)
        # No autograd graph, and no Python on the GIL that the other slice's thread waits for.
        self.compiled = compiled_steps_apply(model, loss_fn)
        self.loss_name = loss_name(loss_fn)
        # Two compiled slices run as one call with a C++ thread for the second
        # (native.train_step_pair): started on the first such batch, inside the fit's thread setting.
        self.worker = None
        self._pairs: dict[tuple, bool] = {}  # batch shapes -> whether both slices take the compiled step

    def close(self) -> None:
        self.worker = None  # joins its thread
        self.pool.shutdown()

    def _slice(self, x, y, seed, start, stop, weight):
        if self.compiled and compiled_step_fits(self.model, x[start:stop], y[start:stop]):
            return compiled_step(
                self.model, x[start:stop], y[start:stop], seed, self.loss_name, batch=len(x), start=start, weight=weight
            )
        masks = None if seed is None else self.model.dropout_masks(seed, len(x), x.shape[1], start, stop, x.device)
        loss = self.loss_fn(self.model(x[start:stop], masks), y[start:stop])
        grads = torch.autograd.grad(loss * weight, self.params, allow_unused=True)
        return loss.detach() * weight, grads

    def _worker(self):
        """The C++ thread for the second slice (:func:`seqcast.native.slice_worker`), started on first
        use, so inside the fit's thread setting."""
        if self.worker is None:
            self.worker = native.slice_worker()
        return self.worker

    def _pair_fits(self, x: torch.Tensor, y: torch.Tensor, edges: list[int]) -> bool:
        """Whether both slices of a two-way split take the compiled step (:func:`compiled_step_fits`),
        remembered per batch shape: the answer depends on shapes, dtypes, the device and grad mode,
        which batches of one fit share, and asking cost ~80 us of a seed-config batch's Python."""
        key = (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype, x.device, torch.is_grad_enabled())
        if key not in self._pairs:
            self._pairs[key] = all(compiled_step_fits(self.model, x[a:b], y[a:b]) for a, b in zip(edges, edges[1:]))
        return self._pairs[key]

    def run_batches(
        self, X: torch.Tensor, y: torch.Tensor, order: torch.Tensor, start: int, batch_size: int,
        dropper: torch.Generator, optimizer: torch.optim.Optimizer, total: torch.Tensor,
    ) -> int:
        """:func:`_run_compiled_batches` for a split fit: the batches that split into two compiled
        slices, each as :func:`seqcast.native.train_step_pair` on the pair's worker thread with Adam
        on both threads; 0 where that does not apply (then the caller trains the batch as before)."""
        if self.workers != 2 or not self.compiled:
            return 0
        return _run_compiled_batches(
            self.model, X, y, order, start, batch_size, dropper, optimizer, total, self.params, self.loss_name,
            lambda n: n >= 2 and self._pair_fits(X[:n], y[:n], [0, n // 2, n]), self._worker,
        )

    def gradients(
        self, x: torch.Tensor, y: torch.Tensor, dropper: torch.Generator
    ) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
        """The batch ``(x, y)``'s mean loss and each slice's gradients for ``self.params`` (their sum
        is the batch's gradient; None where a parameter got none), its dropout masks drawn from
        ``dropper``. Each slice draws its own part of the masks on its own thread: drawn whole on
        this thread, NumPy's masks took 3 ms of a 23 ms seed-config batch while the other core
        waited (benchmarks/README.md, 2026-12-06)."""
        n = len(x)
        seed = self.model.batch_mask_seed(dropper)
        k = min(self.workers, n)
        edges = [n * i // k for i in range(k + 1)]
        if k == 2 and self.compiled and self._pair_fits(x, y, edges):
            # Both slices in one compiled call, the second on a C++ thread that spins for its
            # work rather than a Python pool thread woken for it, their weight-gradient GEMMs run by
            # whichever thread is free (with Adam on both threads, 1.087x per seed-config epoch;
            # benchmarks/README.md, 2026-12-06, 18:20 UTC section), the same gradients to the bit.
            # Once Adam's state exists, train_model runs most batches through run_batches instead.
            model = self.model
            (loss0, grads0), (loss1, grads1) = native.train_step_pair(
                self._worker(), x[None], y[None], model.layer_weights(), model.head.weight, model.head.bias,
                seeds=None if seed is None else [seed], keep=1.0 - model.dropout_rate, split=edges[1],
                loss=self.loss_name, cell=model.native_cell,
            )
            return loss0[0] + loss1[0], [list(grads0), list(grads1)]
        jobs = [(start, stop, (stop - start) / n) for start, stop in zip(edges, edges[1:])]
        futures = [self.pool.submit(self._slice, x, y, seed, *job) for job in jobs[1:]]
        results = [self._slice(x, y, seed, *jobs[0])] + [f.result() for f in futures]
        return sum(loss for loss, _ in results), [list(grads) for _, grads in results]


def native_adam_applies(optimizer: torch.optim.Optimizer, clip_norm: float | None) -> bool:
    """Whether this fit's optimizer steps may run as :func:`seqcast.native.adam_step` (the slices'
    gradient sum and Adam's update in one compiled pass, no ``.grad`` set): a ``torch.optim.Adam``
    with one parameter group of float32 CPU parameters, amsgrad, maximize and weight decay off, no
    step hooks (its own or global), no gradient clipping (which needs the summed gradient first),
    where the compiled module is available. The caller also waits for the optimizer's first step,
    which creates its state (:func:`adam_started`)."""
    from torch.optim import optimizer as optimizer_module

    if clip_norm is not None or type(optimizer) not in (Adam, torch.optim.Adam) or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"] != 0:
        return False
    if group.get("differentiable") or group.get("capturable") or group.get("decoupled_weight_decay"):
        return False
    hooks = (
        optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks,
        optimizer_module._global_optimizer_pre_hooks, optimizer_module._global_optimizer_post_hooks,
    )
    if any(hooks):
        return False
    return all(p.dtype == torch.float32 and p.device.type == "cpu" for p in group["params"]) and native.available()


def adam_started(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Whether ``optimizer`` holds Adam's state (step, moments) for every one of ``params``."""
    return all(p in optimizer.state and "step" in optimizer.state[p] for p in params)


def set_summed_grads(params: list[torch.Tensor], grads: list[list[torch.Tensor | None]]) -> None:
    """Set ``params[i].grad`` to the sum of ``grads[k][i]`` over the lists ``k`` (None where all are)."""
    for index, param in enumerate(params):
        parts = [part[index] for part in grads if part[index] is not None]
        param.grad = None if not parts else sum(parts[1:], parts[0])


def apply_gradients(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor | None]],
    in_place_adam: bool,
) -> bool:
    """The gradient of ``params`` is the sum of the lists ``grads`` (a split batch's slices, or one
    list): run Adam's update with it in one compiled pass (:func:`seqcast.native.adam_step`) and
    return True where ``in_place_adam`` (:func:`native_adam_applies`) and the optimizer has its
    state; else set ``.grad`` and return False (the caller then clips and calls ``step()``)."""
    if in_place_adam and adam_started(optimizer, params) and all(g is not None for part in grads for g in part):
        native.adam_step(params, grads, optimizer)
        return True
    set_summed_grads(params, grads)
    return False


def epoch_progress(verbose: int) -> Progress:
    """The per-epoch progress bar on stderr (fields ``loss`` and ``val_loss``), off unless ``verbose``."""
    return Progress(
        TextColumn("epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[val_loss]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not verbose,
    )


def train_model(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    loss: str = "mse",
    seed: int = 0,
    shuffle: bool = True,
    clip_norm: float | None = None,
    early_stopping: int | None = None,
    X_val: np.ndarray | torch.Tensor | None = None,
    y_val: np.ndarray | torch.Tensor | None = None,
    verbose: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    threads: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    split_batches: bool = True,
) -> History:
    """Train ``model`` in place on windows ``X (N, T, F)`` and targets ``y (N, H)``.

    ``early_stopping=N`` stops once the monitored loss (validation loss when ``X_val``/``y_val``
    are given, else training loss) has not improved for N epochs, and always leaves the model
    with the weights of ``History.best_epoch`` (Keras restores them only when it stops early).
    The same ``seed`` gives bit-identical weights on the same machine and device.
    ``threads`` is how many CPU threads this call uses (None: torch's intra-op thread count).
    With ``split_batches`` (the default) and a StackedRNN on the CPU, each batch is split into
    ``threads`` slices (fewer if a slice would have under :data:`MIN_SLICE_FLOPS` of forward work:
    small models run slower split) trained in parallel threads of one intra-op thread each, and their
    gradients summed: the same optimizer steps on the same batches with the same dropout masks,
    equal to the unsplit step up to float rounding, and 1.4-1.7× faster on 2 cores
    (benchmarks/README.md). Otherwise ``threads`` sets torch's intra-op thread count for this
    call only (restored afterwards); on a busy machine 1 thread can be several times faster. An
    unsplit fit on seqcast.native's compiled steps (small stacks, such as the indicators preset's)
    runs on one thread unless ``threads`` is given: 1.14-1.19x faster than on two.
    The model is left in eval mode.

    With ``checkpoint_dir``, every ``checkpoint_every`` epochs (and on Ctrl-C, the last finished
    epoch) the weights, optimizer state, every RNG state, the epoch and the history are written
    there atomically (safetensors + JSON, never pickle); ``resume=True`` continues from that
    folder and ends with the same weights as an uninterrupted run. Ctrl-C raises
    :class:`TrainingInterrupted`.
    """
    check_fit_settings(epochs=epochs, batch_size=batch_size, threads=threads, loss=loss, clip_norm=clip_norm)
    if early_stopping is not None:
        _check_positive_int("early_stopping", early_stopping)
    if (X_val is None) != (y_val is None):
        raise ConfigError("X_val and y_val must be given together")
    if checkpoint_every is not None:
        _check_positive_int("checkpoint_every", checkpoint_every)
    if (checkpoint_every is not None or resume) and checkpoint_dir is None:
        raise ConfigError("checkpoint_every and resume need a checkpoint_dir")

    torch_device = resolve_device(device)
    keep_freed_memory()
    model.to(torch_device)
    horizon = getattr(model, "horizon", None)
    X_t, y_t = _prepare(X, y, torch_device, horizon, ("X", "y"))
    validation = None
    if X_val is not None:
        validation = _prepare(X_val, y_val, torch_device, horizon, ("X_val", "y_val"))
        # Non-finite validation data would otherwise surface as a misleading "diverged" error.
        if not all(torch.isfinite(t).all() for t in validation):
            raise DataError("X_val or y_val contains NaN or infinite values")
    loss_fn = LOSSES[loss]
    n_samples = len(X_t)

    seed = int(seed)  # numpy's integers (a grid's np.arange) too: random.seed and Generator.manual_seed refuse them
    generator = seed_everything(seed)
    # Dropout masks come from a generator of the fit's own, seeded like torch's global one after
    # seed_everything (so the masks are those the global one would give), so that fits running
    # side by side in threads (ensemble.train_many) do not draw from one shared stream.
    dropper = torch.Generator().manual_seed(seed)
    masked = isinstance(model, StackedRNN)
    optim = make_optimizer(optimizer, model.parameters(), lr)
    history = History()
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_improvement = 0
    first_epoch = 1
    fingerprint = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        fingerprint = {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "loss": loss,
            "seed": seed, "shuffle": shuffle, "clip_norm": clip_norm, "early_stopping": early_stopping,
            "data_sha256": _tensors_sha256(X_t, y_t, *(validation or ())),
            "parameters": {k: list(v.shape) for k, v in model.state_dict().items()},
        }
    if resume:
        state = _read_checkpoint(checkpoint_dir, fingerprint, model, optim, generator, dropper)
        first_epoch = state["epoch"] + 1
        history = History.from_dict(state["history"])
        best_loss = state["best_loss"]
        best_state = state["best_state"]
        epochs_without_improvement = state["epochs_without_improvement"]
    # The state at the end of the last finished epoch, written on Ctrl-C: resuming from a
    # half-finished epoch could not reproduce the uninterrupted run.
    finished = None

    def snapshot(epoch: int) -> dict:
        return {
            "epoch": epoch,
            "history": History.from_dict(history.to_dict()),
            "best_loss": best_loss,
            "best_state": None if best_state is None else {k: v.clone() for k, v in best_state.items()},
            "epochs_without_improvement": epochs_without_improvement,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(optim.state_dict()),
            "rng": _rng_states(generator, dropper),
        }

    if checkpoint_dir is not None:
        finished = snapshot(first_epoch - 1)

    progress = epoch_progress(verbose)
    workers = batch_split_workers(model, torch_device, threads, split_batches, batch_size, X_t.shape[1])
    # Builds or loads seqcast.native now if this model will use it, not under the progress bar: for
    # its dropout masks (any cell, any device: they are drawn on the CPU), or for its layers (on
    # slices of one thread each when split).
    if masked and model.dropout_rate > 0:
        native.available()
    elif torch_device.type == "cpu" and masked:
        rows = -(-min(batch_size, n_samples) // workers)
        model.trains_natively_at(rows, X_t.shape[1], 1 if workers > 1 else threads)
    splitter = _BatchSplitter(model, loss_fn, workers) if workers > 1 else None
    # An unsplit batch of a small stack runs as one compiled call where it suits the
    # compiled layer (native.train_step): the indicators preset's fits 1.42x faster, whose batches
    # were mostly autograd's Python and dispatch (benchmarks/README.md, 2026-12-06).
    compiled = splitter is None and compiled_steps_apply(model, loss_fn)
    in_place_adam = native_adam_applies(optim, clip_norm)
    params = list(model.parameters())
    fits: dict[int, bool] = {}  # batch sizes -> whether compiled_step_fits (_run_compiled_batches)

    def takes(n: int) -> bool:
        if n not in fits:
            fits[n] = compiled_step_fits(model, X_t[:n], y_t[:n])
        return fits[n]

    # A split fit's slices each run on one intra-op thread; so does an unsplit fit on the compiled
    # steps unless ``threads`` says otherwise, as small predictions do: its kernels run on one thread,
    # and the second only made torch's and MKL's small ops wait for each other. The indicators
    # preset's fits took 1.14x (LSTM), 1.19x (GRU) and 1.15x (RNN) as long per epoch at 2 threads as
    # at 1, the same losses (6 interleaved rounds, benchmarks/README.md, 2026-12-06 21:15 UTC).
    fit_threads = threads
    if splitter is not None or (
        compiled
        and threads is None
        and torch_device.type == "cpu"
        and model.trains_natively_at(min(batch_size, n_samples), X_t.shape[1], 1)
    ):
        fit_threads = 1
    try:
        with progress, intra_op_threads(fit_threads):
            task = progress.add_task("train", total=epochs, completed=first_epoch - 1, loss="-", val_loss="")
            for epoch in range(first_epoch, epochs + 1):
                started = time.perf_counter()
                model.train()
                order = (
                    torch.randperm(n_samples, generator=generator) if shuffle else torch.arange(n_samples)
                ).to(torch_device)
                total = torch.zeros((), dtype=torch.float64, device=torch_device)
                starts = range(0, n_samples, batch_size)
                position = 0
                while position < len(starts):
                    raise_if_cancelled()
                    start = starts[position]
                    if splitter is not None and in_place_adam and adam_started(optim, splitter.params):
                        done = splitter.run_batches(X_t, y_t, order, start, batch_size, dropper, optim, total)
                        if done:
                            position += done
                            continue
                    elif compiled and in_place_adam and adam_started(optim, params):
                        done = _run_compiled_batches(
                            model, X_t, y_t, order, start, batch_size, dropper, optim, total, params, loss, takes
                        )
                        if done:
                            position += done
                            continue
                    position += 1
                    index = order[start : start + batch_size]
                    optim.zero_grad(set_to_none=True)
                    x, target = X_t[index], y_t[index]
                    stepped = False  # Adam's update already run by apply_gradients
                    if splitter is not None:
                        batch_loss, grads = splitter.gradients(x, target, dropper)
                        stepped = apply_gradients(optim, splitter.params, grads, in_place_adam)
                    elif compiled and compiled_step_fits(model, x, target):
                        # batch_mask_seed draws what batch_masks would
                        batch_loss, grads = compiled_step(model, x, target, model.batch_mask_seed(dropper), loss)
                        stepped = apply_gradients(optim, params, [grads], in_place_adam)
                    else:
                        out = model(x, model.batch_masks(len(x), x.shape[1], x.device, dropper)) if masked else model(x)
                        batch_loss = loss_fn(out, target)
                        batch_loss.backward()
                    if not stepped:
                        if clip_norm is not None:
                            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                        optim.step()
                    # Accumulated on the device so the loop never waits for a .item() per batch.
                    total += batch_loss.detach().double() * len(index)
                epoch_loss = total.item() / n_samples
                val_loss = (
                    _mean_loss(model, *validation, loss_fn, max(batch_size, 1024))
                    if validation is not None
                    else None
                )
                for label, value in (("loss", epoch_loss), ("val loss", val_loss)):
                    if value is not None and not math.isfinite(value):
                        raise TrainingDiverged(
                            f"training diverged at epoch {epoch} ({label} {value}): "
                            "try a lower --lr or --clip-norm 1.0"
                        )
                history.loss.append(epoch_loss)
                if val_loss is not None:
                    history.val_loss.append(val_loss)
                history.epoch_seconds.append(time.perf_counter() - started)
                progress.update(
                    task,
                    advance=1,
                    loss=f"{epoch_loss:.4g}",
                    val_loss="" if val_loss is None else f"val {val_loss:.4g}",
                )
                if on_epoch is not None:
                    on_epoch(epoch, epoch_loss, val_loss)

                stop = False
                if early_stopping is not None:
                    monitored = epoch_loss if val_loss is None else val_loss
                    if monitored < best_loss:
                        best_loss = monitored
                        history.best_epoch = epoch
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                        epochs_without_improvement = 0
                    else:
                        epochs_without_improvement += 1
                        if epochs_without_improvement >= early_stopping:
                            history.stopped_early = epoch < epochs
                            stop = True
                if checkpoint_dir is not None:
                    finished = snapshot(epoch)
                    if checkpoint_every is not None and epoch % checkpoint_every == 0:
                        _write_checkpoint(checkpoint_dir, finished, fingerprint)
                if stop:
                    break
    except KeyboardInterrupt:
        if finished is None:
            raise
        _write_checkpoint(checkpoint_dir, finished, fingerprint)
        raise TrainingInterrupted(finished["epoch"], checkpoint_dir) from None
    finally:
        if splitter is not None:
            splitter.close()
    if checkpoint_dir is not None and checkpoint_every is not None and finished["epoch"] % checkpoint_every:
        # The last epoch is always in the checkpoint, so a finished run can be extended with more epochs.
        _write_checkpoint(checkpoint_dir, finished, fingerprint)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


# ---------------------------------------------------------------- checkpoints
# A checkpoint is a folder written by artifacts.write_model_dir: every tensor (weights, optimizer
# moments, torch RNG states, early-stopping best weights) in weights.safetensors and everything
# else in checkpoint.json. torch.save would pickle the optimizer state; this never unpickles.
_CHECKPOINT_JSON = "checkpoint.json"


def _tensors_sha256(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        # The buffer itself, not .tobytes(): no second copy of a large training set.
        digest.update(t.detach().cpu().contiguous().numpy())
    return digest.hexdigest()


def _rng_states(generator: torch.Generator, dropper: torch.Generator) -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        # Saved as "torch" (the dropout masks' stream): checkpoints written before train_model had
        # a generator of its own for them hold torch's global state there, which drew the masks.
        "torch": dropper.get_state(),
        "shuffle": generator.get_state(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _write_checkpoint(directory: Path, snap: dict, fingerprint: dict) -> None:
    tensors = {f"model.{k}": v for k, v in snap["model"].items()}
    if snap["best_state"] is not None:
        tensors.update({f"best.{k}": v for k, v in snap["best_state"].items()})
    tensors["rng.torch"] = snap["rng"]["torch"]
    tensors["rng.shuffle"] = snap["rng"]["shuffle"]
    optimizer_state = {}
    for index, values in snap["optimizer"]["state"].items():
        entry = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
                entry[key] = {"tensor": f"optimizer.{index}.{key}"}
            else:
                entry[key] = {"value": value}
        optimizer_state[str(index)] = entry
    doc = {
        "epoch": snap["epoch"],
        "fingerprint": fingerprint,
        "history": snap["history"].to_dict(),
        # JSON has no infinity: None stands for "no best loss yet".
        "best_loss": None if math.isinf(snap["best_loss"]) else snap["best_loss"],
        "has_best_state": snap["best_state"] is not None,
        "epochs_without_improvement": snap["epochs_without_improvement"],
        "optimizer_state": optimizer_state,
        "rng": {"numpy": snap["rng"]["numpy"], "python": snap["rng"]["python"]},
    }
    write_model_dir(directory, json_files={_CHECKPOINT_JSON: doc}, tensors=tensors)


def _read_checkpoint(
    directory: Path,
    fingerprint: dict,
    model: nn.Module,
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
    dropper: torch.Generator,
) -> dict:
    """Restore model, optimizer and RNG states in place; return the rest of the training state."""
    docs, tensors = read_model_dir(directory, json_names=(_CHECKPOINT_JSON,))
    doc = docs[_CHECKPOINT_JSON]
    try:
        saved = doc["fingerprint"]
        # More epochs than the checkpointed run is allowed: that extends it.
        changed = [k for k in fingerprint if k != "epochs" and saved.get(k) != fingerprint[k]]
        if changed:
            raise ConfigError(
                f"cannot resume from {directory}: {', '.join(changed)} differ from the checkpointed run; "
                "resume with the same data and settings, or start afresh without --resume"
            )
        epoch = int(doc["epoch"])
        if epoch > fingerprint["epochs"]:
            raise ConfigError(
                f"{directory} holds epoch {epoch}, beyond --epochs {fingerprint['epochs']}: raise --epochs to resume"
            )
        device = next(model.parameters()).device
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
        best_state = None
        if doc["has_best_state"]:
            best_state = {k[len("best."):]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        state = {
            int(index): {
                key: tensors[item["tensor"]] if "tensor" in item else item["value"] for key, item in entry.items()
            }
            for index, entry in doc["optimizer_state"].items()
        }
        optim.load_state_dict({"state": state, "param_groups": optim.state_dict()["param_groups"]})
        dropper.set_state(tensors["rng.torch"])
        generator.set_state(tensors["rng.shuffle"])
        n = doc["rng"]["numpy"]
        np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        p = doc["rng"]["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        return {
            "epoch": epoch,
            "history": doc["history"],
            "best_loss": math.inf if doc["best_loss"] is None else float(doc["best_loss"]),
            "best_state": best_state,
            "epochs_without_improvement": int(doc["epochs_without_improvement"]),
        }
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ArtifactError(f"{directory} is not a usable seqcast checkpoint ({exc})") from exc


def predict_batches(
    model: nn.Module,
    X: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> np.ndarray:
    """Predict ``(N, horizon)`` float64 in eval mode (dropout off), ``batch_size`` windows at a time.

    Each batch is converted on its own so that a long sliding-window view is never materialised
    as a whole. ``threads`` (None: torch's intra-op count) is how many threads the call uses. A
    :class:`StackedRNN` on the CPU has each batch split into that many slices (fewer if a slice
    would have under :data:`MIN_PREDICT_SLICE_FLOPS` of forward work), run in parallel Python
    threads of one intra-op thread each, as :func:`train_model` splits its batches: one
    synchronisation per batch instead of one per kernel, which matters most for a call as small as
    the seed config's 20 January windows (benchmarks/README.md). A window's prediction does not
    depend on the slice it lands in beyond float rounding (~1e-8). An unsplit call of at most
    :data:`SMALL_PREDICT_FLOPS` runs on one thread unless ``threads`` says otherwise; other models
    run with ``threads`` intra-op threads.
    """
    _check_positive_int("batch_size", batch_size)
    if threads is not None:
        _check_positive_int("threads", threads)
    torch_device = resolve_device(device)
    keep_freed_memory()
    _move_to(model, torch_device)
    model.eval()
    if len(X) == 0:
        raise DataError("X has no samples to predict; the series is shorter than lookback")
    slices = 1
    if torch_device.type == "cpu" and isinstance(model, StackedRNN) and getattr(X, "ndim", None) == 3:
        workers = int(threads) if threads is not None else torch.get_num_threads()
        flops = model.forward_flops(X.shape[1])
        slices = max(1, min(workers, int(flops * min(len(X), batch_size) // MIN_PREDICT_SLICE_FLOPS)))
        if slices == 1 and threads is None and flops * len(X) <= SMALL_PREDICT_FLOPS:
            threads = 1
    outputs = []
    # inference_mode skips autograd's version counters and view tracking: cheaper than no_grad.
    with intra_op_threads(1 if slices > 1 else threads), torch.inference_mode():
        for start in range(0, len(X), batch_size):
            batch = _as_tensor(X[start : start + batch_size], torch_device, "X")
            if batch.ndim != 3:
                raise DataError(f"X must have shape (samples, lookback, features), got {tuple(X.shape)}")
            outputs.append(_predict_split(model, batch, slices).double().cpu().numpy())
    return np.concatenate(outputs)


def _move_to(model: nn.Module, device: torch.device) -> None:
    """``model.to(device)``, skipped where every parameter and buffer is there already: ``Module.to``
    walks every submodule and tensor even then. A 20-window seed-config predict on one thread spent
    0.41-0.45 ms beside the model's own forward (3.2 ms) before, 0.27-0.30 after (medians of 300
    calls, twice; benchmarks/README.md, 2026-12-07); a recursive forecast pays it every step."""
    def there(tensor: torch.Tensor) -> bool:
        return tensor.device == device or (device.index is None and tensor.device.type == device.type)

    if not all(there(tensor) for tensor in itertools.chain(model.parameters(), model.buffers())):
        model.to(device)


def _predict_split(model: nn.Module, batch: torch.Tensor, slices: int) -> torch.Tensor:
    """``model(batch)``, as ``slices`` slices in parallel threads (the calling thread runs the first)."""
    n = len(batch)
    k = min(slices, n)
    if k == 1:
        return model(batch)
    edges = [n * i // k for i in range(k + 1)]
    futures = [_prediction_pool(k - 1).submit(_infer, model, batch[a:b]) for a, b in zip(edges[1:], edges[2:])]
    return torch.cat([model(batch[: edges[1]])] + [f.result() for f in futures])


def _infer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():  # per thread: the caller's mode does not reach a pool thread
        return model(x)


@functools.lru_cache(maxsize=None)
def _prediction_pool(workers: int) -> ThreadPoolExecutor:
    """A lasting pool per size: a predict call is milliseconds, starting threads for it would not be."""
    return one_thread_pool(workers)


# A forked child inherits the cached pools but not their threads, and would wait on them forever.
os.register_at_fork(after_in_child=_prediction_pool.cache_clear)
