"""Stacked recurrent regressors that reproduce the Keras seed model in PyTorch.

The seed experiment is a Keras ``Sequential`` of ``layers`` × (LSTM(units) → Dropout) followed by
``Dense(horizon)`` on the last timestep. Its numbers depend on Keras's default initialisers, so
:func:`keras_init_` re-applies them on top of PyTorch's (different) defaults.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from seqcast.errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
NONLINEARITIES = ("tanh", "relu")

_RECURRENT_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
# Gates packed side by side in one kernel: Keras's Glorot limit is computed on the packed shape.
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class StackedRNN(nn.Module):
    """``layers`` recurrent layers of ``units``, dropout after each, a linear head on the last step.

    One multi-layer ``torch.nn.LSTM/GRU/RNN`` is used instead of a list of single layers so that
    PyTorch's fused CPU kernels run the whole stack; its inter-layer dropout is exactly Keras's
    ``Dropout`` between layers, and ``self.dropout`` supplies the one after the last layer.

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
    ) -> None:
        super().__init__()
        _validate(n_features, cell, layers, units, dropout, horizon, nonlinearity)
        self.n_features = n_features
        self.cell = cell
        self.layers = layers
        self.units = units
        self.dropout_rate = float(dropout)
        self.horizon = horizon
        self.nonlinearity = nonlinearity

        rnn_kwargs = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = _RECURRENT_CLASSES[cell](
            input_size=n_features,
            hidden_size=units,
            num_layers=layers,
            batch_first=True,
            # PyTorch warns about (and ignores) inter-layer dropout on a single layer.
            dropout=self.dropout_rate if layers > 1 else 0.0,
            **rnn_kwargs,
        )
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Linear(units, horizon)
        keras_init_(self)

    def forward(self, x: Tensor) -> Tensor:
        sequence, _ = self.rnn(x)
        return self.head(self.dropout(sequence[:, -1, :]))


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
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
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
) -> StackedRNN:
    """Construct a :class:`StackedRNN`; with ``seed`` its initial weights are reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return StackedRNN(
        n_features,
        cell=cell,
        layers=layers,
        units=units,
        dropout=dropout,
        horizon=horizon,
        nonlinearity=nonlinearity,
    )
