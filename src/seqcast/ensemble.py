"""Train K recurrent models of one shape together, as if each had been fitted alone by ``train_model``.

The K models' weights are stacked along a leading axis and every GEMM becomes one batched GEMM
(``torch.bmm``) over the K models, so the per-operation overhead that dominates a small LSTM on a
CPU is paid once per step instead of K times. Each model keeps everything that makes its fit its
own: its initial weights, its batch order (a generator seeded with its seed, as in
``train_model``), its dropout masks (another generator seeded with its seed, drawn in the order and
shape ``StackedRNN.draw_dropout_masks`` draws them), its loss and its gradient-clipping norm. Adam, RMSprop and SGD
are elementwise, so one optimizer over the stacked weights updates each model exactly as its own
optimizer would. On the CPU, model k therefore ends with the weights of
``train_model(models[k], X, y, seed=seeds[k])`` up to floating-point rounding.

GRU and vanilla RNN models are also split into one group per thread, each group trained as above
in its own Python thread with one intra-op thread: their hand-written layers release the GIL
(``seqcast.native``'s compiled GRU and RNN, each batch one call of ``native.train_step``; the
TorchScript time loops where the compiled layers are not used), so the groups run in parallel.

Small LSTM models (``StackedRNN.trains_by_hand_at`` on the threads each group gets: layers of at
most ``native.lstm_bound_one_thread()`` where the models are shared out as one group per thread,
each on one thread, else ``native.MAX_LAYER_FLOPS``) train like the GRUs where ``seqcast.native``'s
compiled layer built: K models per call of ``native.native_lstm``, which releases the GIL, one
group per thread (each batch one call of ``native.train_step``, forward to gradients). The rest
of this paragraph is about the other LSTMs, and about every LSTM where it did not build.

Models of any cell whose batches split over the threads (``training.batch_split_workers``) and
whose batch costs at least :data:`SEQUENTIAL_FIT_FLOPS` forward are not grouped: each is fitted by
``train_model`` on all the threads, one after another. A split fit of such a model keeps both
cores busy (its two slices, their weight gradients and Adam's update run as one compiled call on
two threads), so per-core groups gain nothing there and lose to it (the seed config: 8 models
grouped took 1.14× the time of 8 split fits; figures at the constant).

Such LSTM models on the CPU are not batched by the hand-written Python layers: oneDNN's LSTM
kernel, which ``train_model`` uses, beats them (8 seeds at the indicators preset's shape trained 1.0-1.6× faster
stacked than one by one, at the seed config's 0.45-0.57×; benchmarks/README.md). A model that
splits its batches over the threads (``training.batch_split_workers``; the seed config's) already
keeps every core busy, so such models are fitted by ``train_model`` one after another. Smaller
ones are trained in groups, each group as one oneDNN LSTM whose weights hold the group's models in
diagonal blocks (``models.block_diagonal_lstm``, at most ``models.BLOCK_DIAGONAL_UNITS`` units per
group), the groups spread over the threads like the GRU groups (oneDNN releases the GIL).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch import nn

from seqcast.errors import ConfigError
from seqcast import native
from seqcast.models import BLOCK_DIAGONAL_UNITS, StackedRNN, block_diagonal_lstm, draw_mask_seed
from seqcast.training import (
    LOSSES,
    FitCancelled,
    History,
    TrainingDiverged,
    adam_started,
    apply_gradients,
    batch_split_workers,
    batches_per_call,
    cancel_on,
    check_fit_settings,
    epoch_progress,
    _prepare,
    intra_op_threads,
    keep_freed_memory,
    make_optimizer,
    native_adam_applies,
    one_thread_pool,
    raise_if_cancelled,
    resolve_device,
    train_model,
)

_LAYER_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# A batch's forward cost (FLOPs, ``forward_flops(steps) * batch_size``) from which train_many fits
# models whose batches split over the threads one after another, each on all of them, instead of
# jointly in per-core groups. 8 models, 2 epochs, 2 threads, grouped against one after another in
# 4 interleaved rounds (benchmarks/README.md, 2026-12-06 21:00 UTC), grouped's speed-up by cost:
# the seed config's 4×LSTM(50), lookback 60, batch 64 (5.4e8) 0.88×; 4×GRU(50) (4.0e8) 0.86×;
# 4×RNN(50) (1.35e8) 0.98×; 2×LSTM(50), lookback 60, batch 32 (1.16e8) 1.02×; 2×GRU(50) (8.7e7)
# 1.02×; 2×LSTM(32) (4.8e7) 1.15×; 2×GRU(32) (3.6e7) 1.27×; 1×LSTM(64), lookback 20 (2.1e7) 1.56×.
SEQUENTIAL_FIT_FLOPS = 1e8


def fits_one_after_another(model: StackedRNN, workers: int, batch_size: int, steps: int, device: torch.device) -> bool:
    """Whether :func:`train_model` fits of ``model`` on ``workers`` threads split each batch over
    them and cost at least :data:`SEQUENTIAL_FIT_FLOPS` per batch forward: train_many then fits
    such models one after another rather than jointly."""
    if batch_split_workers(model, device, workers, True, batch_size, steps) < 2:
        return False
    return model.forward_flops(steps) * batch_size >= SEQUENTIAL_FIT_FLOPS


def _check_same_shape(models: Sequence[StackedRNN]) -> None:
    if not models:
        raise ConfigError("train_many needs at least one model")
    first = models[0]
    for index, model in enumerate(models):
        if not isinstance(model, StackedRNN):
            raise ConfigError(f"models[{index}] is a {type(model).__name__}, not a seqcast StackedRNN")
        shape = _shape(model)
        if shape != _shape(first):
            raise ConfigError(
                f"models[{index}] has (cell, nonlinearity, features, layers, units, horizon, dropout) {shape} "
                f"but models[0] has {_shape(first)}; train_many trains models of one shape"
            )


def _shape(model: StackedRNN) -> tuple:
    nonlinearity = model.nonlinearity if model.cell == "rnn" else None
    return (model.cell, nonlinearity, model.n_features, model.layers, model.units, model.horizon, model.dropout_rate)


def train_many(
    models: Sequence[StackedRNN],
    X: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    seeds: Sequence[int],
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    loss: str = "mse",
    shuffle: bool = True,
    clip_norm: float | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    verbose: int = 0,
) -> tuple[list[StackedRNN], list[History]]:
    """Train ``models`` (``StackedRNN`` of one shape: LSTM, GRU or RNN) in place on the same ``X``, ``y``.

    ``seeds[k]`` plays the role of ``train_model``'s ``seed`` for ``models[k]`` (build the models
    with ``build_model(..., seed=s)`` for reproducible initial weights). The other arguments mean
    what they mean in ``train_model``; validation data and early stopping are not supported here
    (fit one by one when a model must stop on its own). ``threads`` (None: torch's intra-op count)
    is the number of CPU threads the call uses: one group of models per thread for GRU and RNN
    models, and for LSTM models too small to split their batches (in groups of at most
    ``models.BLOCK_DIAGONAL_UNITS`` units). Models whose fits split their batches are fitted one
    after another, each on all the threads, where a batch costs at least
    :data:`SEQUENTIAL_FIT_FLOPS` forward (:func:`fits_one_after_another`), and LSTMs on oneDNN's
    kernel at any cost (module docstring). Returns the models, left in eval mode, and one ``History`` per model. For
    grouped models ``epoch_seconds`` is the model's share of its group's joint epoch (the epoch's
    time over the group's size), so the histories add up to the groups' time, and ``verbose`` shows
    one progress bar on stderr: the first group's epochs and its models' mean loss. For LSTM models
    fitted one by one they are each fit's own (``train_model``'s), and ``verbose`` shows the bars
    of the fits on the calling thread.
    """
    models = list(models)
    _check_same_shape(models)
    seeds = [int(s) for s in seeds]
    if len(seeds) != len(models):
        raise ConfigError(f"got {len(models)} models but {len(seeds)} seeds; give one seed per model")
    check_fit_settings(epochs=epochs, batch_size=batch_size, threads=threads, loss=loss, clip_norm=clip_norm)

    torch_device = resolve_device(device)
    keep_freed_memory()
    X_t, y_t = _prepare(X, y, torch_device, models[0].horizon, ("X", "y"))
    fit = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, loss=loss, shuffle=shuffle,
        clip_norm=clip_norm, torch_device=torch_device,
    )
    workers = int(threads) if threads is not None else torch.get_num_threads()
    if fits_one_after_another(models[0], workers, batch_size, X_t.shape[1], torch_device):
        return _fit_side_by_side(models, seeds, X_t, y_t, workers=workers, verbose=verbose, **fit)
    lane_threads = _lane_threads(len(models), workers)
    if torch_device.type == "cpu" and not models[0].trains_by_hand_at(batch_size, X_t.shape[1], lane_threads):
        size = lstm_group_size(models[0], len(models), workers, batch_size, X_t.shape[1], torch_device)
        if size == 1:
            return _fit_side_by_side(models, seeds, X_t, y_t, workers=workers, verbose=verbose, **fit)
        return _fit_lstm_groups(models, seeds, X_t, y_t, size=size, workers=workers, verbose=verbose, **fit)
    groups = min(workers, len(models)) if torch_device.type == "cpu" else 1
    if groups == 1:
        label = f"(mean of {len(models)} models)" if len(models) > 1 else ""
        return _train_group(models, seeds, X_t, y_t, offset=0, threads=threads, verbose=verbose, label=label, **fit)
    edges = [len(models) * i // groups for i in range(groups + 1)]
    parts = [(models[a:b], seeds[a:b], a) for a, b in zip(edges, edges[1:])]
    label = f"(mean of models 1-{len(parts[0][0])} of {len(models)}, in {groups} threads)"
    results = _in_lanes(
        [
            partial(_train_group, m, s, X_t, y_t, offset=o, threads=1, verbose=verbose if o == 0 else 0,
                    label=label if o == 0 else "", **fit)
            for m, s, o in parts
        ]
    )
    return [m for trained, _ in results for m in trained], [h for _, histories in results for h in histories]


def _in_lanes(lanes: list[Callable[[], object]]) -> list:
    """Run ``lanes[0]()`` on this thread and the others each in a thread of one intra-op thread;
    return their results in order. A lane that fails (Ctrl-C included) stops the others at their
    next batch (``training.cancel_on``), so that its error surfaces at once rather than after the
    calling thread's own share, and no thread trains on unseen after the caller has given up."""
    if len(lanes) == 1:
        return [lanes[0]()]
    stop = threading.Event()

    def run(lane):
        try:
            with cancel_on(stop):
                return lane()
        except BaseException:
            stop.set()
            raise

    with one_thread_pool(len(lanes) - 1) as pool:
        futures = [pool.submit(run, lane) for lane in lanes[1:]]
        try:
            first = run(lanes[0])
        except FitCancelled:
            # Stopped because another lane failed: raise that lane's error, not the cancellation.
            errors = [f.exception() for f in futures]
            error = next((e for e in errors if e is not None and not isinstance(e, FitCancelled)), None)
            if error is None:
                raise
            raise error from None
        return [first] + [future.result() for future in futures]


def lstm_group_size(
    model: StackedRNN, k: int, workers: int, batch_size: int, steps: int, device: torch.device
) -> int:
    """How many LSTM models train_many fits as one :func:`~seqcast.models.block_diagonal_lstm`
    group on the CPU: 1 (no groups) for a model that splits its batches across the threads (its
    fits already keep every core busy), else the models shared out over the threads, at most
    :data:`~seqcast.models.BLOCK_DIAGONAL_UNITS` units per group."""
    if batch_split_workers(model, device, workers, True, batch_size, steps) > 1:
        return 1
    return max(1, min(math.ceil(k / workers), BLOCK_DIAGONAL_UNITS // model.units))


def trains_in_groups(
    model: StackedRNN, k: int, threads: int | None, batch_size: int, steps: int, device: str | torch.device
) -> bool:
    """Whether :func:`train_many` trains ``k`` models like ``model`` jointly (batched weights, as
    for GRUs, RNNs and small LSTMs with seqcast.native, or block-diagonal groups) rather than each
    by its own ``train_model`` fit."""
    device = resolve_device(device)
    workers = int(threads) if threads is not None else torch.get_num_threads()
    if fits_one_after_another(model, workers, batch_size, steps, device):
        return False
    if device.type == "cpu" and not model.trains_by_hand_at(batch_size, steps, _lane_threads(k, workers)):
        return lstm_group_size(model, k, workers, batch_size, steps, device) > 1
    return True


def _lane_threads(k: int, workers: int) -> int:
    """The intra-op threads each of :func:`train_many`'s joint groups runs on, for ``k`` models on
    ``workers`` threads: one per group where the models are shared out over several threads (one
    group per thread), else all of them. Whether a layer suits the compiled one depends on it
    (``native.suits``): the seed config's layers do on one thread, not on two."""
    return 1 if min(workers, k) > 1 else workers


def _fit_lstm_groups(
    models: list[StackedRNN],
    seeds: list[int],
    X_t: torch.Tensor,
    y_t: torch.Tensor,
    *,
    size: int,
    workers: int,
    verbose: int,
    **fit,
) -> tuple[list[StackedRNN], list[History]]:
    """train_many for small LSTM models on the CPU: groups of ``size`` models, each trained by
    :func:`_train_group` as one block-diagonal oneDNN LSTM on one thread, the groups spread over
    ``workers`` Python threads (oneDNN releases the GIL), each thread training its groups one after
    another. 8 seeds of the indicators preset's shape: 2.42-3.01× the throughput of 8 sequential
    fits against 1.55-1.74× fitted side by side one model per thread (5 interleaved rounds,
    benchmarks/README.md, 2026-12-06)."""
    edges = list(range(0, len(models), size)) + [len(models)]
    groups = [(models[a:b], seeds[a:b], a) for a, b in zip(edges, edges[1:])]
    lanes = min(workers, len(groups))
    label = f"(mean of models 1-{len(groups[0][0])} of {len(models)}, in groups of {size})"

    def run(lane: int) -> list[tuple[list[StackedRNN], list[History]]]:
        return [
            _train_group(m, s, X_t, y_t, offset=o, threads=1, verbose=verbose if o == 0 else 0,
                         label=label if o == 0 else "", stack=block_diagonal_lstm, **fit)
            for m, s, o in groups[lane::lanes]
        ]

    by_lane = _in_lanes([partial(run, lane) for lane in range(lanes)])
    histories: list[History] = [History()] * len(models)
    for lane, results in enumerate(by_lane):
        for (_, group_histories), (_, _, offset) in zip(results, groups[lane::lanes]):
            histories[offset : offset + len(group_histories)] = group_histories
    return models, histories


def _fit_side_by_side(
    models: list[StackedRNN],
    seeds: list[int],
    X_t: torch.Tensor,
    y_t: torch.Tensor,
    *,
    workers: int,
    verbose: int,
    torch_device: torch.device,
    **fit,
) -> tuple[list[StackedRNN], list[History]]:
    """train_many for models on the CPU that are not grouped (:func:`fits_one_after_another`, or
    LSTMs for which :func:`lstm_group_size` is 1):
    ``train_model`` per model, ``workers // w`` of them at once where ``w`` is the threads one fit
    uses: one after another for a model that splits its batches, side by side for one too big to
    group that does not. Only the calling thread's fits show progress bars (rich draws one live
    display at a time)."""
    per_fit = batch_split_workers(models[0], torch_device, workers, True, fit["batch_size"], X_t.shape[1])
    lanes = max(1, min(workers // per_fit, len(models)))

    def run(lane: int, lane_verbose: int) -> list[History]:
        # Lane i fits models i, i + lanes, ...: the lanes' shares differ by at most one model.
        return [
            train_model(models[i], X_t, y_t, seed=seeds[i], threads=per_fit, device=torch_device,
                        verbose=lane_verbose, **fit)
            for i in range(lane, len(models), lanes)
        ]

    by_lane = _in_lanes([partial(run, lane, verbose if lane == 0 else 0) for lane in range(lanes)])
    histories: list[History] = [History()] * len(models)
    for lane, lane_histories in enumerate(by_lane):
        histories[lane::lanes] = lane_histories
    return models, histories


def _train_group(
    models: list[StackedRNN],
    seeds: list[int],
    X_t: torch.Tensor,
    y_t: torch.Tensor,
    *,
    offset: int,
    threads: int | None,
    verbose: int = 0,
    label: str = "",
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    loss: str,
    shuffle: bool,
    clip_norm: float | None,
    torch_device: torch.device,
    stack: Callable[..., torch.Tensor] | None = None,
) -> tuple[list[StackedRNN], list[History]]:
    """train_many's joint fit of ``models`` (``models[i]`` is the caller's ``offset + i``) through
    ``stack`` (:func:`~seqcast.models.fused_lstm`'s contract; None: the cell's hand-written stack)."""
    template = models[0]
    # block_diagonal_lstm for small LSTMs on the CPU without seqcast.native (_fit_lstm_groups);
    # otherwise the models are batched by the hand-written layers (GRU, RNN and native small LSTMs
    # on the CPU, every cell on CUDA).
    native_layer = stack is None and torch_device.type == "cpu" and template.trains_natively_at(
        batch_size, X_t.shape[1], threads
    )
    stack = stack or template.hand_written_stack(native_layer)
    n_samples, k = len(X_t), len(models)
    per_call = batches_per_call(template, X_t.shape[1], batch_size, k)

    # One Parameter per weight name holding all K models' copies; copied back at the end.
    names = [name for name, _ in template.named_parameters()]
    stacked = {
        name: nn.Parameter(
            torch.stack([dict(model.named_parameters())[name].detach() for model in models]).to(torch_device)
        )
        for name in names
    }
    layer_weights = [
        tuple(stacked[f"rnn.{name}_l{layer}"] for name in _LAYER_WEIGHTS)
        for layer in range(template.layers)
    ]
    head_weight, head_bias = stacked["head.weight"], stacked["head.bias"]
    params = list(stacked.values())
    optim = make_optimizer(optimizer, params, lr)
    shufflers = [torch.Generator().manual_seed(s) for s in seeds]
    # train_model draws dropout masks from torch's global generator right after manual_seed(seed).
    droppers = [torch.Generator().manual_seed(s) for s in seeds]
    loss_fn = LOSSES[loss]
    p = template.dropout_rate
    histories = [History() for _ in models]

    # The compiled layer's K models: each batch as one compiled call
    # (native.train_step), no autograd graph (benchmarks/README.md, 2026-12-06).
    compiled = (
        native_layer
        and loss in native.TRAIN_STEP_LOSSES
        and y_t.dim() == 2
        and all(param.dtype == torch.float32 for param in params)
    )
    in_step_order = [w for layer in layer_weights for w in layer] + [head_weight, head_bias]
    in_place_adam = compiled and native_adam_applies(optim, clip_norm)

    progress = epoch_progress(verbose)
    with progress, intra_op_threads(threads):
        task = progress.add_task("train", total=epochs, loss="-", val_loss=label)
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            orders = torch.stack(
                [torch.randperm(n_samples, generator=g) if shuffle else torch.arange(n_samples) for g in shufflers]
            ).to(torch_device)
            total = torch.zeros(k, dtype=torch.float64, device=torch_device)
            starts = range(0, n_samples, batch_size)
            position = 0
            while position < len(starts):
                raise_if_cancelled()
                start = starts[position]
                if compiled and in_place_adam and adam_started(optim, in_step_order):
                    # Up to batches_per_call batches in one compiled call (native.train_batches), the
                    # same to the bit as batch by batch below, without the Python between them (0.23
                    # of a 1.28 ms batch of 4 preset-sized models, benchmarks/README.md, 2026-12-06).
                    count = min(per_call, len(starts) - position)
                    # batch by batch, each model's seed drawn as draw_dropout_masks draws it
                    seeds_ahead = [draw_mask_seed(g) for _ in range(count) for g in droppers] if p > 0 else None
                    optim.zero_grad(set_to_none=True)
                    native.train_batches(
                        X_t, y_t, orders, layer_weights, head_weight, head_bias, in_step_order, optim, total,
                        first=start, batch=batch_size, count=count, seeds=seeds_ahead, keep=1.0 - p, loss=loss,
                        cell=template.native_cell,
                    )
                    position += count
                    continue
                position += 1
                index = orders[:, start : start + batch_size]
                optim.zero_grad(set_to_none=True)
                stepped = False  # Adam's update already run by apply_gradients
                if compiled:
                    # each model's mask seed drawn as draw_dropout_masks draws it
                    mask_seeds = [draw_mask_seed(g) for g in droppers] if p > 0 else None
                    per_model, grads = native.train_step(
                        X_t[index], y_t[index], layer_weights, head_weight, head_bias, seeds=mask_seeds, keep=1.0 - p,
                        loss=loss, cell=template.native_cell,
                    )
                    stepped = apply_gradients(optim, in_step_order, [grads], in_place_adam)
                else:
                    # (K, B, T, F) -> time-major (T, K, B, F)
                    batch_x = X_t[index].permute(2, 0, 1, 3)
                    masks = None
                    if p > 0:
                        # Each model's masks for this batch, drawn as its own train_model fit draws
                        # them, stacked on a model axis: (T, K, B, U) between layers, (K, B, U) after
                        # the last.
                        per_model = [
                            template.draw_dropout_masks(index.shape[1], X_t.shape[1], torch_device, g)
                            for g in droppers
                        ]
                        masks = [torch.stack(layer_masks, dim=-3) for layer_masks in zip(*per_model)]
                    last = stack(batch_x, layer_weights, masks=None if masks is None else masks[:-1])
                    if masks is not None:
                        last = last * masks[-1]
                    predictions = torch.baddbmm(head_bias.unsqueeze(1), last, head_weight.transpose(1, 2))
                    per_model = loss_fn(predictions, y_t[index], reduction="none").mean(dim=(1, 2))
                    # Summing keeps each model's gradient equal to that of its own mean loss.
                    per_model.sum().backward()
                if not stepped:
                    if clip_norm is not None:
                        _clip_per_model_(params, clip_norm)
                    optim.step()
                total += per_model.detach().double() * index.shape[1]
            losses = (total / n_samples).tolist()
            seconds = time.perf_counter() - started
            for model_index, (history, value) in enumerate(zip(histories, losses)):
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"model {offset + model_index} (seed {seeds[model_index]}) diverged at epoch {epoch} "
                        f"(loss {value}): try a lower lr or clip_norm=1.0"
                    )
                history.loss.append(value)
                history.epoch_seconds.append(seconds / k)
            progress.update(task, advance=1, loss=f"{sum(losses) / k:.4g}")

    with torch.no_grad():
        for model_index, model in enumerate(models):
            model.to(torch_device)
            for name, param in model.named_parameters():
                param.copy_(stacked[name][model_index])
            model.eval()
    return models, histories


def _clip_per_model_(params: list[nn.Parameter], clip_norm: float) -> None:
    """``clip_grad_norm_`` applied to each model's slice of the stacked gradients separately."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0)
    # Same formula as torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), capped at 1.
    scale = (clip_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.ndim - 1))))
