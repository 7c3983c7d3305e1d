"""Stacked recurrent regressors that reproduce the Keras seed model in PyTorch.

The seed experiment is a Keras ``Sequential`` of ``layers`` × (LSTM(units) → Dropout) followed by
``Dense(horizon)`` on the last timestep. Its numbers depend on Keras's default initialisers, so
:func:`keras_init_` re-applies them on top of PyTorch's (different) defaults.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor, _VF, nn

from seqcast import native
from seqcast.errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
NONLINEARITIES = ("tanh", "relu")
# Cells that train on the CPU with hand-written layers that release the GIL (seqcast.native's
# compiled GRU and RNN, or time loops run as TorchScript): StackedRNN.trains_by_hand, train_many's thread
# groups, ensembles trained together. Small LSTMs join them where seqcast.native's compiled layer is
# available (StackedRNN.trains_by_hand_at).
HAND_WRITTEN_CELLS = ("gru", "rnn")

_RECURRENT_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# Gates packed side by side in one kernel: Keras's Glorot limit is computed on the packed shape.
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class StackedRNN(nn.Module):
    """``layers`` recurrent layers of ``units``, dropout after each, a linear head on the last step.

    The weights live in one multi-layer ``torch.nn.LSTM/GRU/RNN`` (``self.rnn``). Without dropout
    (inference, or ``dropout=0``) the whole stack is one call of PyTorch's fused CPU kernel. In
    training with dropout the layers run one kernel call each, with inverted-dropout masks applied
    to each layer's output sequence (Keras's ``Dropout`` between layers) and to the last layer's
    final step (the ``Dropout`` after it); see :meth:`draw_dropout_masks`. GRU and vanilla RNN
    stacks train on the CPU with hand-written layers instead (the compiled
    :func:`seqcast.native.native_gru` and :func:`seqcast.native.native_rnn` where it built, else
    :func:`fused_gru` and :func:`fused_rnn`),
    and small LSTM stacks with the compiled :func:`seqcast.native.native_lstm` where it built
    (:meth:`trains_by_hand`).

    Input ``x`` is ``(batch, time, features)`` float32; output is ``(batch, horizon)``.
    """

    def __init__(
        self,
        n_features: int,
        *,
        cell: str = "lstm",
        layers: int = 4,
        units: int = 50,
        dropout: float = 0.2,
        horizon: int = 1,
        nonlinearity: str = "tanh",
        fused: bool = False,
    ) -> None:
        super().__init__()
        _validate(n_features, cell, layers, units, dropout, horizon, nonlinearity)
        # numpy's integers (a grid's np.arange, say) as Python's: torch's layers take only int
        n_features, layers, units, horizon = int(n_features), int(layers), int(units), int(horizon)
        self.n_features = n_features
        self.cell = cell
        self.layers = layers
        self.units = units
        self.dropout_rate = float(dropout)
        self.horizon = horizon
        self.nonlinearity = nonlinearity
        self.fused = bool(fused)

        rnn_kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = _RECURRENT_CLASSES[cell](
            input_size=n_features,
            hidden_size=units,
            num_layers=layers,
            batch_first=True,
            # Dropout is applied by forward() with masks drawn outside the kernel, never by the module.
            dropout=0.0,
            **rnn_kwargs,
        )
        self.head = nn.Linear(units, horizon)
        keras_init_(self)

    def forward(self, x: Tensor, masks: list[Tensor] | None = None) -> Tensor:
        """``masks`` (training only) are this batch's dropout masks as :meth:`draw_dropout_masks`
        returns them; without them a training forward pass draws its own from torch's global
        generator. Passing them lets a batch be split across threads with the masks it would have
        had whole (training.train_model)."""
        dropping = self._dropping()
        if not dropping and self.infers_natively(x):
            last = native.native_infer(x.transpose(0, 1).unsqueeze(1), self.layer_weights(), self.native_cell)[0]
            return self.head(last)
        if dropping and masks is None:
            masks = self.batch_masks(x.shape[0], x.shape[1], x.device)
        if self.uses_fused_path(x) or self.trains_by_hand(x):
            fused = self.uses_fused_path(x)
            natively = not fused and self.trains_natively(x)
            stack = fused_lstm if fused else self.hand_written_stack(natively)
            last = stack(
                x.transpose(0, 1).unsqueeze(1),
                # the compiled layer takes the parameters themselves: no unsqueeze node per weight to run
                self.layer_weights() if natively else self.stacked_weights(),
                masks=None if masks is None else [m.unsqueeze(1) for m in masks[:-1]],
            )[0]
        elif dropping:
            last = self._layer_by_layer(x, masks[:-1])
        else:
            # No dropout to apply: the whole stack is one fused kernel call (oneDNN on CPU).
            sequence, _ = self.rnn(x)
            last = sequence[:, -1, :]
        if dropping:
            last = last * masks[-1]
        return self.head(last)

    def draw_dropout_masks(
        self, batch: int, steps: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """One training batch's inverted-dropout masks, their seed drawn from ``generator`` (None:
        torch's global one): after each recurrent layer but the last a time-major
        ``(steps, batch, units)`` mask, then a ``(batch, units)`` mask for the last layer's final
        step (Keras's Dropout after it). Laid end to end in that order, the masks are one run of
        :func:`seqcast.native.dropout_masks` of that seed. Why not ``torch.rand`` or ``bernoulli_``
        (what ``F.dropout`` and ``nn.LSTM`` use): on the 2-core Intel host of 2026-12-02 they drew
        1.5 and 2.1 ms per 64×60×50 mask, and in a seed-config epoch the masks take a core's time
        from training (benchmarks/README.md)."""
        return self.dropout_masks(draw_mask_seed(generator), batch, steps, device=device)

    def dropout_masks(
        self, seed: int, batch: int, steps: int, start: int = 0, stop: int | None = None, device: torch.device | None = None
    ) -> list[Tensor]:
        """Windows ``start:stop`` of the masks :meth:`draw_dropout_masks` gives a batch of ``batch``
        windows when it draws ``seed``, drawn by themselves: a slice of a split batch draws its
        own part on its own thread (training._BatchSplitter)."""
        stop = batch if stop is None else stop
        keep, units, width = 1.0 - self.dropout_rate, self.units, (stop - start) * self.units
        layer_size = steps * batch * units  # the masks laid end to end, as draw_dropout_masks says
        masks = [
            native.dropout_masks(seed, keep, steps, width, layer * layer_size + start * units, batch * units)
            .view(steps, stop - start, units)
            for layer in range(self.layers - 1)
        ]
        last = native.dropout_masks(seed, keep, 1, width, (self.layers - 1) * layer_size + start * units)
        return [mask.to(device) for mask in masks + [last.view(stop - start, units)]]

    def batch_masks(
        self, batch: int, steps: int, device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> list[Tensor] | None:
        """The masks a forward pass in the current mode needs: :meth:`draw_dropout_masks` (from
        ``generator``, or torch's global one) in training with dropout, else None."""
        return self.draw_dropout_masks(batch, steps, device, generator) if self._dropping() else None

    def batch_mask_seed(self, generator: torch.Generator | None = None) -> int | None:
        """What :meth:`batch_masks` draws from ``generator``: the seed of this batch's masks for
        :meth:`dropout_masks`, or None (and nothing drawn) when the forward pass needs none."""
        return draw_mask_seed(generator) if self._dropping() else None

    def _dropping(self) -> bool:
        return self.training and self.dropout_rate > 0

    def _layer_by_layer(self, x: Tensor, between: list[Tensor]) -> Tensor:
        """The stack run one layer per kernel call with ``between[layer]`` applied to each layer's
        output: the same computation as ``self.rnn`` with its own dropout, but with masks drawn
        outside it. ``nn.LSTM`` draws its inter-layer masks with ``bernoulli_``, which cost 18 % of
        a seed-config epoch; :func:`seqcast.native.dropout_masks` costs far less, and masks drawn
        outside the kernel can be split with the batch. ``torch._VF`` is the kernel entry point
        ``nn.LSTM/GRU/RNN.forward`` itself calls (no public functional form exists); time-major
        like its internal layout and like :func:`fused_lstm`."""
        kernel = {"lstm": _VF.lstm, "gru": _VF.gru}.get(self.cell) or (
            _VF.rnn_tanh if self.nonlinearity == "tanh" else _VF.rnn_relu
        )
        out = x.transpose(0, 1)
        zeros = out.new_zeros(1, out.shape[1], self.units)
        hx = (zeros, zeros) if self.cell == "lstm" else zeros
        for layer in range(self.layers):
            weights = [
                getattr(self.rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            out = kernel(out, hx, weights, True, 1, 0.0, True, False, False)[0]
            if layer < self.layers - 1:
                out = out * between[layer]
        return out[-1]

    def forward_flops(self, steps: int) -> float:
        """Forward FLOPs of one window of ``steps`` steps, counting the gate GEMMs only
        (multiply-add = 2): Σ_layers 2·steps·(inputs + units)·gates·units. The backward pass costs
        about twice that."""
        gates = _GATES[self.cell]
        return float(
            sum(
                2 * steps * ((self.n_features if layer == 0 else self.units) + self.units) * gates * self.units
                for layer in range(self.layers)
            )
        )

    def uses_fused_path(self, x: Tensor) -> bool:
        """With ``fused=True`` the fused LSTM runs CPU training; inference (no grad) keeps
        oneDNN's faster forward and CUDA keeps cuDNN."""
        return self.fused and self.cell == "lstm" and x.device.type == "cpu" and torch.is_grad_enabled()

    def hand_written_stack(self, compiled: bool) -> Callable[..., Tensor]:
        """The hand-written stack of this model's cell, K models at a time: with ``compiled`` (where
        :meth:`trains_natively_at`) :func:`seqcast.native.native_lstm`, :func:`seqcast.native.native_gru`
        or :func:`seqcast.native.native_rnn`, else :func:`fused_lstm`, :func:`fused_gru` or
        :func:`fused_rnn` (RNNs with this model's nonlinearity)."""
        if self.cell == "lstm":
            return native.native_lstm if compiled else fused_lstm
        if self.cell == "gru":
            return native.native_gru if compiled else fused_gru
        return partial(native.native_rnn if compiled else fused_rnn, nonlinearity=self.nonlinearity)

    def trains_by_hand(self, x: Tensor) -> bool:
        """GRU and vanilla RNN stacks train on the CPU with hand-written layers: with
        :func:`seqcast.native.native_gru` / :func:`seqcast.native.native_rnn` where it compiled and
        suits (:meth:`trains_natively_at`), else :func:`fused_gru` / :func:`fused_rnn`: PyTorch's own
        CPU GRU and RNN are not oneDNN's and were slower (benchmarks/README.md). Small LSTM stacks (:meth:`trains_by_hand_at`)
        train with :func:`seqcast.native.native_lstm` where it compiled, larger ones with oneDNN's
        kernel. Inference and CUDA keep ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``."""
        if x.device.type != "cpu" or not torch.is_grad_enabled():
            return False
        return self.cell in HAND_WRITTEN_CELLS or self.trains_natively(x)

    def trains_by_hand_at(self, batch: int, steps: int, threads: int | None = None) -> bool:
        """Whether this stack trains on the CPU with a hand-written layer at this batch size and
        lookback on ``threads`` intra-op threads (None: torch's count now): GRU and RNN always; an
        LSTM where :meth:`trains_natively_at`."""
        return self.cell in HAND_WRITTEN_CELLS or self.trains_natively_at(batch, steps, threads)

    def trains_natively(self, x: Tensor) -> bool:
        """Whether a training forward pass on ``x`` runs the compiled layer: :meth:`trains_natively_at`
        on the CPU with gradients enabled and ``x`` float32."""
        return torch.is_grad_enabled() and self._native_input(x) and self.trains_natively_at(x.shape[0], x.shape[1])

    def trains_natively_at(self, batch: int, steps: int, threads: int | None = None) -> bool:
        """Whether this stack trains with :mod:`seqcast.native`'s compiled layer at this batch size
        and lookback on ``threads`` intra-op threads (None: torch's count now): a float32 model (the
        compiled layer computes in float32 only), where it compiled and the layers are small enough
        to gain (:func:`seqcast.native.suits`)."""
        return self._compiled_layer_suits(batch, steps, threads, inference=False)

    def infers_natively(self, x: Tensor) -> bool:
        """Whether a forward pass on ``x`` without gradients and without dropout (inference:
        ``predict``, validation losses) runs on :mod:`seqcast.native`'s compiled layers
        (:func:`seqcast.native.native_infer`) rather than ``nn.LSTM/GRU/RNN``: float32 on the CPU,
        where the layers are within the bounds measured for inference (:func:`seqcast.native.suits`
        with ``inference``, on this thread's intra-op threads). Forward only, one thread, against
        torch's module (2026-12-06, interleaved, benchmarks/README.md): the seed config's 20
        January windows 2.61 → 1.92 ms, 500 windows 1.21x, 4xGRU(50) 20 windows 7.01 → 1.89 ms,
        4xRNN(50) 2.18 → 0.71 ms; on two threads torch's kernels, which use both, win for large
        layers, hence the bounds."""
        return (
            not torch.is_grad_enabled()
            and self._native_input(x)
            and self._compiled_layer_suits(x.shape[0], x.shape[1], None, inference=True)
        )

    @staticmethod
    def _native_input(x: Tensor) -> bool:
        """Windows the compiled layer takes: float32 on the CPU, at least one window and one step
        (torch's modules handle empty inputs)."""
        return x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] > 0 and x.shape[1] > 0

    def _compiled_layer_suits(self, batch: int, steps: int, threads: int | None, inference: bool) -> bool:
        return (
            all(p.dtype == torch.float32 for p in self.parameters())
            and native.suits(
                steps, batch, max(self.n_features, self.units), self.units, threads, self.native_cell, inference
            )
            and native.available()
        )

    @property
    def native_cell(self) -> str:
        """This stack's cell as :mod:`seqcast.native` names it (``native.CELLS``): ``"lstm"``,
        ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``."""
        return f"rnn_{self.nonlinearity}" if self.cell == "rnn" else self.cell

    def layer_weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer, the recurrent module's ``(weight_ih, weight_hh, bias_ih, bias_hh)``."""
        return [tuple(layer) for layer in self.rnn.all_weights]

    def stacked_weights(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer, ``(weight_ih, weight_hh, bias_ih, bias_hh)`` with a leading model axis of 1."""
        return [tuple(weight.unsqueeze(0) for weight in layer) for layer in self.layer_weights()]


def _validate(
    n_features: int,
    cell: str,
    layers: int,
    units: int,
    dropout: float,
    horizon: int,
    nonlinearity: str,
) -> None:
    def positive_int(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    if cell not in CELLS:
        raise ConfigError(f"cell must be one of {', '.join(CELLS)}; got {cell!r}")
    positive_int("n_features", n_features)
    positive_int("layers", layers)
    positive_int("units", units)
    positive_int("horizon", horizon)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.integer, np.floating)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}")
    if nonlinearity not in NONLINEARITIES:
        raise ConfigError(
            f"nonlinearity must be one of {', '.join(NONLINEARITIES)}; got {nonlinearity!r}"
        )
    if nonlinearity != "tanh" and cell != "rnn":
        raise ConfigError(
            f"nonlinearity={nonlinearity!r} only applies to cell='rnn' "
            f"(PyTorch's {cell.upper()} gates are fixed to sigmoid/tanh)"
        )


def keras_init_(model: StackedRNN) -> None:
    """Re-initialise ``model`` in place with the defaults of the equivalent Keras layers.

    * input kernel: Glorot-uniform over the whole packed Keras kernel ``(input_dim, G*units)``,
      i.e. limit ``sqrt(6 / (input_dim + G*units))`` with G = 4 (LSTM), 3 (GRU), 1 (RNN);
    * recurrent kernel: orthogonal. Keras draws ``(units, G*units)`` with orthonormal rows; its
      transpose is PyTorch's ``weight_hh`` ``(G*units, units)`` with orthonormal columns, which is
      what ``orthogonal_`` produces for that tall shape;
    * biases zero, except the LSTM forget gate = 1 (``unit_forget_bias``). PyTorch adds
      ``bias_ih + bias_hh``, so the 1 goes in ``bias_ih`` only;
    * head: Glorot-uniform weight, zero bias (Keras ``Dense``).
    """
    gates = _GATES[model.cell]
    units = model.units
    with torch.no_grad():
        for layer in range(model.layers):
            weight_ih = getattr(model.rnn, f"weight_ih_l{layer}")
            weight_hh = getattr(model.rnn, f"weight_hh_l{layer}")
            bias_ih = getattr(model.rnn, f"bias_ih_l{layer}")
            bias_hh = getattr(model.rnn, f"bias_hh_l{layer}")
            input_dim = weight_ih.shape[1]
            limit = math.sqrt(6.0 / (input_dim + gates * units))
            weight_ih.uniform_(-limit, limit)
            nn.init.orthogonal_(weight_hh)
            bias_ih.zero_()
            bias_hh.zero_()
            if model.cell == "lstm":
                bias_ih[units : 2 * units] = 1.0
        nn.init.xavier_uniform_(model.head.weight)
        model.head.bias.zero_()


def keras_lstm_weights_to_torch(
    kernel: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Map one Keras LSTM layer's weights to PyTorch's ``weight_ih, weight_hh, bias_ih, bias_hh``.

    Keras stores ``kernel (input_dim, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u,)`` and
    computes ``x @ kernel``; PyTorch stores the transposes and computes ``W @ x``. Keras's gate
    order i, f, c, o is PyTorch's i, f, g, o, so for an LSTM the mapping is only transposes;
    Keras's single bias goes to ``bias_ih`` and ``bias_hh`` is zero (PyTorch adds the two).

    A Keras GRU (``reset_after=True``, the TF2 default) would also need its gate blocks reordered:
    Keras packs z, r, h while PyTorch packs r, z, n, and Keras's bias ``(2, 3u)`` splits into
    input and recurrent rows.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    recurrent_kernel = np.asarray(recurrent_kernel, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    units = recurrent_kernel.shape[0]
    expected = {
        "kernel": (kernel.shape, (kernel.shape[0], 4 * units)),
        "recurrent_kernel": (recurrent_kernel.shape, (units, 4 * units)),
        "bias": (bias.shape, (4 * units,)),
    }
    for name, (actual, wanted) in expected.items():
        if actual != wanted:
            raise ConfigError(
                f"Keras LSTM {name} has shape {actual}, expected {wanted} for {units} units"
            )
    return (
        torch.from_numpy(np.ascontiguousarray(kernel.T)),
        torch.from_numpy(np.ascontiguousarray(recurrent_kernel.T)),
        torch.from_numpy(bias.copy()),
        torch.zeros(4 * units, dtype=torch.float32),
    )


# build_model seeds torch's global generator and draws the initial weights from it, and
# training.seed_everything seeds it too. Fits running side by side in threads (tuning.tune) hold
# this lock around both, so that one fit's seeding cannot land between another's seeding and its
# draws. (Nothing else in a fit draws from the global generator: train_model's dropout masks have
# a generator of their own.)
GLOBAL_RNG_LOCK = threading.RLock()


def build_model(
    n_features: int,
    *,
    cell: str,
    layers: int,
    units: int,
    dropout: float,
    horizon: int,
    nonlinearity: str = "tanh",
    seed: int | None = None,
    fused: bool = False,
) -> StackedRNN:
    """Construct a :class:`StackedRNN`; with ``seed`` its initial weights are reproducible.

    ``fused=True`` trains an LSTM with the hand-written fused layer instead of PyTorch's oneDNN
    kernel (same results within float rounding); it measured slower on a 2-core CPU, see
    benchmarks/README.md, so it is off by default.
    """
    with GLOBAL_RNG_LOCK:
        if seed is not None:
            torch.manual_seed(int(seed))
        return StackedRNN(
            n_features,
            cell=cell,
            layers=layers,
            units=units,
            dropout=dropout,
            horizon=horizon,
            nonlinearity=nonlinearity,
            fused=fused,
        )


# --- Fused LSTM (opt-in CPU training path, and the engine of seqcast.ensemble) --------------------
# A hand-written LSTM layer: the input projection of all timesteps is one GEMM, the recurrence is
# one batched GEMM and a few in-place elementwise ops per step, and the backward is written out so
# that the weight gradients are two large GEMMs after the time loop instead of one small GEMM per
# step. Weights carry a leading model axis K, so the same code trains K models of one shape at once
# (K = 1 for a single model). Hand-written because neither torch nor a well-kept library offers a
# batched-weights LSTM (torch.compile of nn.LSTM's unrolled loop was measured: much slower, see
# benchmarks/README.md). It is checked against torch.nn.LSTM in tests/test_speed_paths.py;
# benchmarks/README.md records that on the 2-core machine it was measured on it is slower than
# PyTorch's oneDNN LSTM, hence opt-in.


def _gate_order(units: int, device: torch.device) -> Tensor:
    """Row order taking PyTorch's gate blocks (i, f, g, o) to the internal (o, i, f, g).

    With o first and g last, the three sigmoid gates are one contiguous block and the three gates
    whose gradient is driven by the cell state (i, f, g) are another.
    """
    return torch.cat([torch.arange(3 * units, 4 * units), torch.arange(0, 3 * units)]).to(device)


class _FusedLSTMLayer(torch.autograd.Function):
    """One LSTM layer over (T, K, B, I) inputs with internal-order weights (K, 4U, ·), biases (K, 4U)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        steps, k, batch, n_in = x.shape
        gates = w_hh.shape[1]
        u = gates // 4
        xk = x.permute(1, 0, 2, 3).reshape(k, steps * batch, n_in)
        doubled = torch.ones(gates, dtype=x.dtype, device=x.device)
        doubled[3 * u :] = 2
        bias = ((b_ih + b_hh) * doubled).unsqueeze(1)
        projected = torch.baddbmm(bias, xk, (w_ih * doubled[:, None]).transpose(1, 2))
        acts = projected.view(k, steps, batch, gates).transpose(0, 1).contiguous()
        h_all = x.new_empty(steps, k, batch, u)
        c_all = torch.empty_like(h_all)
        tanh_c = torch.empty_like(h_all)
        w_hh_t = (w_hh * doubled[:, None]).transpose(1, 2).contiguous()
        h = x.new_zeros(k, batch, u)
        c = torch.zeros_like(h)
        for a, o, i, f, g, c_t, tc, h_t in zip(
            acts.unbind(0),
            acts[..., :u].unbind(0),
            acts[..., u : 2 * u].unbind(0),
            acts[..., 2 * u : 3 * u].unbind(0),
            acts[..., 3 * u :].unbind(0),
            c_all.unbind(0),
            tanh_c.unbind(0),
            h_all.unbind(0),
        ):
            a.baddbmm_(h, w_hh_t)
            # tanh(z) = 2·sigmoid(2z) - 1: PyTorch's CPU sigmoid is several times faster than its
            # tanh on these small blocks. The g rows of the weights were doubled before the loop.
            a.sigmoid_()
            g.mul_(2).sub_(1)
            torch.mul(f, c, out=c_t)
            c_t.addcmul_(i, g)
            torch.mul(c_t, 2, out=tc).sigmoid_().mul_(2).sub_(1)
            h = torch.mul(o, tc, out=h_t)
            c = c_t
        ctx.save_for_backward(xk, w_ih, w_hh, acts, c_all, tanh_c, h_all)
        return h_all

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        xk, w_ih, w_hh, acts, c_all, tanh_c, h_all = ctx.saved_tensors
        steps, k, batch, u = h_all.shape
        gates = 4 * u
        o, i, f, g = acts[..., :u], acts[..., u : 2 * u], acts[..., 2 * u : 3 * u], acts[..., 3 * u :]
        c_prev = torch.cat([torch.zeros_like(c_all[:1]), c_all[:-1]])
        # Every factor that does not depend on the incoming gradient is computed for all steps at
        # once, so the reversed loop is left with five small ops and one GEMM per step.
        dc_from_dh = o * (1 - tanh_c * tanh_c)
        do_from_dh = tanh_c * o * (1 - o)
        from_dc = torch.cat([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=-1)
        d_pre = h_all.new_empty(steps, k, batch, gates)
        dh_next = h_all.new_zeros(k, batch, u)
        dc_next = torch.zeros_like(dh_next)
        for t, gh, a_t, n_t, m_t, f_t, do_t, dc_t, dp_t in zip(
            range(steps - 1, -1, -1),
            reversed(grad_h.unbind(0)),
            reversed(dc_from_dh.unbind(0)),
            reversed(do_from_dh.unbind(0)),
            reversed(from_dc.view(steps, k, batch, 3, u).unbind(0)),
            reversed(f.unbind(0)),
            reversed(d_pre[..., :u].unbind(0)),
            reversed(d_pre[..., u:].view(steps, k, batch, 3, u).unbind(0)),
            reversed(d_pre.unbind(0)),
        ):
            dh = gh + dh_next
            dc = torch.addcmul(dc_next, dh, a_t)
            torch.mul(dh, n_t, out=do_t)
            torch.mul(m_t, dc.unsqueeze(2), out=dc_t)
            if t:
                dc_next = dc * f_t
                dh_next = torch.bmm(dp_t, w_hh)
        return _gemm_gradients(ctx.needs_input_grad[0], d_pre, d_pre, h_all, xk, w_ih)


def _gemm_gradients(needs_x: bool, d_input: Tensor, d_hidden: Tensor, h_all: Tensor, xk: Tensor, w_ih: Tensor):
    """A hand-written layer's gradients after its time loop, as large GEMMs over all steps:
    ``(grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)`` from the gradients ``(T, K, B, G)`` of
    the input-side and hidden-side pre-activations (the same tensor except in the GRU), the layer's
    outputs ``h_all (T, K, B, U)`` and its inputs ``xk (K, T·B, I)``."""
    steps, k, batch, gates = d_input.shape
    d_input_k = d_input.transpose(0, 1).reshape(k, steps * batch, gates)
    d_hidden_k = d_input_k if d_hidden is d_input else d_hidden.transpose(0, 1).reshape(k, steps * batch, gates)
    h_prev_k = h_all[:-1].transpose(0, 1).reshape(k, (steps - 1) * batch, h_all.shape[3])
    grad_w_hh = torch.bmm(d_hidden_k[:, batch:].transpose(1, 2), h_prev_k)
    grad_w_ih = torch.bmm(d_input_k.transpose(1, 2), xk)
    grad_x = torch.bmm(d_input_k, w_ih).view(k, steps, batch, -1).transpose(0, 1) if needs_x else None
    grad_b_ih = d_input_k.sum(1)
    # Two tensors even when equal: a gradient shared by bias_ih and bias_hh would be scaled twice
    # by in-place gradient clipping.
    grad_b_hh = grad_b_ih.clone() if d_hidden is d_input else d_hidden_k.sum(1)
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def fused_lstm(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
) -> Tensor:
    """Run a stack of LSTM layers on time-major ``x (T, K, B, F)``; return the last step ``(K, B, U)``.

    ``weights`` holds, per layer, PyTorch-layout ``(weight_ih, weight_hh, bias_ih, bias_hh)`` with a
    leading model axis K. ``masks`` (training with dropout) holds one ``(T, K, B, U)`` dropout mask
    per layer but the last, applied to that layer's output.
    """
    order = _gate_order(weights[0][1].shape[2], x.device)
    return _run_stack(
        lambda out, w_ih, w_hh, b_ih, b_hh: _FusedLSTMLayer.apply(
            out, w_ih[:, order], w_hh[:, order], b_ih[:, order], b_hh[:, order]
        ),
        x,
        weights,
        masks,
    )


def _run_stack(layer: Callable[..., Tensor], x: Tensor, weights: list, masks: list[Tensor] | None) -> Tensor:
    """``layer(out, *weights[i])`` for each layer, ``masks[i]`` applied to every output but the last;
    the last layer's final step."""
    out = x
    for index, layer_weights in enumerate(weights):
        out = layer(out, *layer_weights)
        if masks is not None and index < len(weights) - 1:
            out = out * masks[index]
    return out[-1]


# --- Hand-written GRU (the CPU training path of a GRU where seqcast.native's compiled one is not:
# it did not build, or the layers are too large for it to gain, native.MAX_GRU_LAYER_FLOPS) -------
# The same layout as the fused LSTM: the input projection of all timesteps is one GEMM, each step is
# one small GEMM and five elementwise ops, and the backward is written out so that the weight
# gradients are GEMMs after the time loop. Why by hand: PyTorch's CPU GRU (not oneDNN's, which
# PyTorch uses for LSTM only) runs about a dozen ops per step and autograd records each, and no
# well-kept library offers a faster CPU GRU. The two time loops run as TorchScript: its interpreter
# does not hold the GIL, so the two slices of a split batch (training.train_model) run their loops
# in parallel; as Python loops they serialised on the GIL and the split epoch was slower than
# PyTorch's own GRU. torch.jit.script is deprecated in torch 2.13 in favour of torch.compile, which
# took 72 s to compile the indicators preset's LSTM unrolled over 20 steps and then trained it 2.3×
# slower (benchmarks/README.md); torch is pinned, and if scripting ever fails the same functions run
# as plain Python.
# Gate order r, z, n as in PyTorch: r = σ(x·W_ir + b_ir + h·W_hr + b_hr), z likewise,
# n = tanh(x·W_in + b_in + r ⊙ (h·W_hn + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h.


def _gru_forward_steps(acts: Tensor, w_hh_t: Tensor, b_hh: Tensor, h_all: Tensor, hidden: Tensor) -> None:
    """The recurrence over ``acts (T, K, B, 3U)`` (input projections with the r and z biases of
    both sides folded in), in place: r, z and n replace their pre-activations, ``h_all`` gets each
    step's output and ``hidden`` each step's ``h·W_hh`` plus ``b_hh`` (K, 1, 3U) (zero for r, z)."""
    u = h_all.shape[3]
    h = torch.zeros_like(h_all[0])
    for t in range(acts.shape[0]):
        a = acts[t]
        hid = torch.baddbmm(b_hh, h, w_hh_t, out=hidden[t])
        a[:, :, : 2 * u].add_(hid[:, :, : 2 * u]).sigmoid_()
        n = a[:, :, 2 * u :]
        n.addcmul_(a[:, :, :u], hid[:, :, 2 * u :]).tanh_()
        h = torch.lerp(n, h, a[:, :, u : 2 * u], out=h_all[t])


def _gru_backward_steps(grad_h: Tensor, to_input: Tensor, to_hidden: Tensor, z: Tensor, w_hh: Tensor) -> None:
    """The reversed recurrence. Every gate gradient is dh times a factor that does not depend on the
    gradient: ``to_input (T, K, B, 3, U)`` gives those of the input-side pre-activations (r, z, n)
    and ``to_hidden`` those of ``h·W_hh + b_hh`` (r and z the same, n times r); both are turned
    into the gradients in place."""
    k, batch, u = grad_h.shape[1], grad_h.shape[2], grad_h.shape[3]
    dh_next = torch.zeros_like(grad_h[0])
    for back in range(grad_h.shape[0]):
        t = grad_h.shape[0] - 1 - back
        dh = (grad_h[t] + dh_next).unsqueeze(2)
        to_input[t].mul_(dh)
        d_hidden = to_hidden[t].mul_(dh)
        if t > 0:
            dh_next = torch.baddbmm(dh.squeeze(2) * z[t], d_hidden.view(k, batch, 3 * u), w_hh)


_SCRIPTED: dict[Callable, Callable] = {}
_SCRIPT_LOCK = threading.Lock()


def _scripted(fn: Callable) -> Callable:
    """``torch.jit.script(fn)``, compiled once per process (~0.1 s); ``fn`` itself if that fails."""
    with _SCRIPT_LOCK:
        if fn not in _SCRIPTED:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    _SCRIPTED[fn] = torch.jit.script(fn)
            except Exception:  # any failure to compile: the same code as Python is correct, only slower
                _SCRIPTED[fn] = fn
        return _SCRIPTED[fn]


class _FusedGRULayer(torch.autograd.Function):
    """One GRU layer over (T, K, B, I) inputs with PyTorch-layout weights (K, 3U, ·), biases (K, 3U)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
        steps, k, batch, n_in = x.shape
        u = w_hh.shape[2]
        xk = x.permute(1, 0, 2, 3).reshape(k, steps * batch, n_in)
        bias = torch.cat([b_ih[:, : 2 * u] + b_hh[:, : 2 * u], b_ih[:, 2 * u :]], dim=1).unsqueeze(1)
        projected = torch.baddbmm(bias, xk, w_ih.transpose(1, 2))
        acts = projected.view(k, steps, batch, 3 * u).transpose(0, 1).contiguous()
        h_all = x.new_empty(steps, k, batch, u)
        hidden = torch.empty_like(acts)
        b_hn = torch.cat([torch.zeros_like(b_hh[:, : 2 * u]), b_hh[:, 2 * u :]], dim=1).unsqueeze(1)
        _scripted(_gru_forward_steps)(acts, w_hh.transpose(1, 2).contiguous(), b_hn, h_all, hidden)
        ctx.save_for_backward(xk, w_ih, w_hh, acts, hidden[..., 2 * u :], h_all)
        return h_all

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        xk, w_ih, w_hh, acts, hidden_n, h_all = ctx.saved_tensors
        steps, k, batch, u = h_all.shape
        r, z, n = acts[..., :u], acts[..., u : 2 * u], acts[..., 2 * u :]
        h_prev = torch.cat([torch.zeros_like(h_all[:1]), h_all[:-1]])
        # h' = n + z ⊙ (h - n): dh' reaches n's pre-activation through (1 - z)(1 - n²), z's through
        # (h - n) z (1 - z), r's through n's times (h·W_hn + b_hn) r (1 - r), and h·W_hn + b_hn
        # through n's times r.
        to_n = (1 - z) * (1 - n * n)
        to_input = torch.stack([to_n * hidden_n * r * (1 - r), (h_prev - n) * z * (1 - z), to_n], dim=3)
        to_hidden = to_input.clone()
        to_hidden[:, :, :, 2].mul_(r)
        _scripted(_gru_backward_steps)(grad_h.contiguous(), to_input, to_hidden, z.contiguous(), w_hh)
        return _gemm_gradients(
            ctx.needs_input_grad[0], to_input.view(steps, k, batch, 3 * u), to_hidden.view(steps, k, batch, 3 * u),
            h_all, xk, w_ih,
        )


def fused_gru(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
) -> Tensor:
    """:func:`fused_lstm`'s contract for a stack of GRU layers (PyTorch-layout GRU weights)."""
    return _run_stack(_FusedGRULayer.apply, x, weights, masks)


# --- Hand-written vanilla RNN (the CPU training path of an RNN where seqcast.native's compiled one is
# not: it did not build, or the layers are too large for it to gain, native.MAX_RNN_LAYER_FLOPS) --
# As the GRU above, for h' = act(x·W_ih + b_ih + h·W_hh + b_hh), act tanh or ReLU: one GEMM and one
# in-place activation per step forward, two ops and one GEMM per step backward. PyTorch's CPU RNN
# runs each step through autograd, with a small weight-gradient GEMM per step.


def _rnn_forward_steps(acts: Tensor, w_hh_t: Tensor, relu: bool) -> None:
    """The recurrence over ``acts (T, K, B, U)`` (input projections plus both biases), in place:
    each step's pre-activation becomes its output."""
    h = torch.zeros_like(acts[0])
    for t in range(acts.shape[0]):
        a = acts[t].baddbmm_(h, w_hh_t)
        h = a.relu_() if relu else a.tanh_()


def _rnn_backward_steps(grad_h: Tensor, derivative: Tensor, w_hh: Tensor) -> None:
    """The reversed recurrence: ``derivative`` (the activation's, per step) becomes the gradient of
    each step's pre-activation, in place."""
    dh_next = torch.zeros_like(grad_h[0])
    for back in range(grad_h.shape[0]):
        t = grad_h.shape[0] - 1 - back
        d_pre = derivative[t].mul_(grad_h[t] + dh_next)
        if t > 0:
            dh_next = torch.bmm(d_pre, w_hh)


class _FusedRNNLayer(torch.autograd.Function):
    """One tanh or ReLU RNN layer over (T, K, B, I) inputs, weights (K, U, ·), biases (K, U)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, relu: bool) -> Tensor:
        steps, k, batch, n_in = x.shape
        u = w_hh.shape[1]
        xk = x.permute(1, 0, 2, 3).reshape(k, steps * batch, n_in)
        projected = torch.baddbmm((b_ih + b_hh).unsqueeze(1), xk, w_ih.transpose(1, 2))
        h_all = projected.view(k, steps, batch, u).transpose(0, 1).contiguous()
        _scripted(_rnn_forward_steps)(h_all, w_hh.transpose(1, 2).contiguous(), relu)
        ctx.relu = relu
        ctx.save_for_backward(xk, w_ih, w_hh, h_all)
        return h_all

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        xk, w_ih, w_hh, h_all = ctx.saved_tensors
        derivative = (h_all > 0).to(h_all.dtype) if ctx.relu else 1 - h_all * h_all
        _scripted(_rnn_backward_steps)(grad_h.contiguous(), derivative, w_hh)
        return *_gemm_gradients(ctx.needs_input_grad[0], derivative, derivative, h_all, xk, w_ih), None


def fused_rnn(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """:func:`fused_lstm`'s contract for a stack of tanh or ReLU RNN layers."""
    relu = nonlinearity == "relu"
    return _run_stack(lambda out, *layer: _FusedRNNLayer.apply(out, *layer, relu), x, weights, masks)


def block_diagonal_lstm(
    x: Tensor,
    weights: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    *,
    masks: list[Tensor] | None = None,
) -> Tensor:
    """:func:`fused_lstm`'s contract (K models' LSTM stacks on time-major ``x (T, K, B, F)``, the
    last step ``(K, B, U)``), computed by oneDNN's LSTM kernel (``torch._VF.lstm``, as
    :meth:`StackedRNN._layer_by_layer` calls it) as one LSTM of K·U units whose weights hold each
    model's in diagonal blocks, every other entry zero: model k reads only its own inputs and its
    own hidden state, so its outputs are its own up to float rounding (a zero weight adds an exact
    zero), and the gradient reaching each model's weights is its own block (``diag_embed``, which
    places the blocks, extracts them in the backward pass).

    Why: for LSTMs too small to split a batch across threads, K fits cost K times the per-call
    overhead of oneDNN and of the Python loop around it; one call of K·U units costs K times the
    FLOPs of one model (the zero blocks are multiplied too) but once the overhead. At 4 models of
    the indicators preset's shape (U = 32) the kernel takes about as long per model as 4 separate
    calls do, and the Python and optimizer work is paid once per group (``ensemble.train_many``:
    8 such models 2.4-3.0× faster than 8 fits, against 1.6-1.7× side by side; benchmarks/README.md,
    2026-12-06); for large U the wasted FLOPs would dominate, so train_many keeps K·U at most
    :data:`BLOCK_DIAGONAL_UNITS`.
    """
    steps, k, batch, n_features = x.shape
    out = x.permute(0, 2, 1, 3).reshape(steps, batch, k * n_features)
    for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
        units, n_in = w_hh.shape[2], w_ih.shape[2]

        def blocks(w: Tensor, width: int) -> Tensor:
            # (K, 4U, width) -> (4·K·U, K·width) in PyTorch's gate-major layout: gate, model, unit.
            # diag_embed puts the model axis on the diagonal of dims 1 and 3 (zeros elsewhere); its
            # backward takes the diagonal back out. 3.4x cheaper forward and backward than an
            # einsum with the identity at the preset's size (60 against 205 us, 2026-12-06).
            by_model_last = w.view(k, 4, units, width).permute(1, 2, 3, 0)
            return torch.diag_embed(by_model_last, dim1=1, dim2=3).reshape(4 * k * units, k * width)

        def gate_major(b: Tensor) -> Tensor:
            return b.view(k, 4, units).transpose(0, 1).reshape(-1)

        zeros = out.new_zeros(1, batch, k * units)
        layer_weights = [blocks(w_ih, n_in), blocks(w_hh, units), gate_major(b_ih), gate_major(b_hh)]
        # (input, hx, weights, has_biases, num_layers, dropout, train, bidirectional, batch_first)
        out = _VF.lstm(out, (zeros, zeros), layer_weights, True, 1, 0.0, torch.is_grad_enabled(), False, False)[0]
        if masks is not None and layer < len(weights) - 1:
            out = out * masks[layer].permute(0, 2, 1, 3).reshape(steps, batch, k * units)
    return out[-1].view(batch, k, -1).transpose(0, 1)


# Largest K·U of one block_diagonal_lstm call that train_many makes (4 models of the preset's 32 units).
BLOCK_DIAGONAL_UNITS = 128


def draw_mask_seed(generator: torch.Generator | None = None) -> int:
    """One 63-bit seed for :func:`seqcast.native.dropout_masks`, drawn from the torch ``generator``
    (None: the global one, so ``torch.manual_seed`` and saved RNG states cover the masks)."""
    return int(torch.randint(2**63 - 1, (1,), generator=generator).item())
