import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN

# The suite's models are tiny, and torch's default two intra-op threads on this 2-core machine fight
# the other processes on it: whole-suite wall time measured 38/84/169 s at the default against
# 26/37/46 s at one thread (paired runs, load 2-5). Tests that check a thread setting pick a count
# different from this one. The reliability tests rely on it too: their subprocesses run with
# OMP_NUM_THREADS=1 and must match the in-process runs bit for bit.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def google():
    from seqcast import load_csv

    return load_csv(GOOGLE_TRAIN), load_csv(GOOGLE_TEST)


@pytest.fixture
def small_series():
    """A short noisy random walk with business-day dates, split into train and the rows after it."""
    rng = np.random.default_rng(7)
    n = 140
    close = 100 + np.cumsum(rng.normal(0, 1, n))
    frame = pd.DataFrame(
        {"Open": close + rng.normal(0, 0.3, n), "High": close + 1, "Low": close - 1, "Close": close, "Volume": 1e6},
        index=pd.bdate_range("2020-01-01", periods=n, name="Date"),
    )
    return frame.iloc[:120], frame.iloc[120:]


TINY = dict(lookback=10, layers=1, units=8, epochs=2, batch_size=16, dropout=0.0, device="cpu")


@pytest.fixture
def onednn_lstm(monkeypatch):
    """LSTMs train with PyTorch's oneDNN kernel, as where seqcast.native did not compile: for the
    tests of that path (block-diagonal groups, fits side by side)."""
    from seqcast import native

    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", "disabled by the onednn_lstm fixture")


def draw_masks(shapes, keep, generator=None):
    """Inverted-dropout masks of the given shapes from one seed (``models.draw_mask_seed``): one run
    of ``native.dropout_masks`` laid out shape after shape, the layout ``StackedRNN.draw_dropout_masks``
    documents; the reference its slices are checked against."""
    from seqcast import native
    from seqcast.models import draw_mask_seed

    sizes = [math.prod(shape) for shape in shapes]
    flat = native.dropout_masks(draw_mask_seed(generator), keep, 1, sum(sizes))[0]
    return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]


def random_lstm_stacks(generator, *, layers, n_features, k, steps, batch, units, dtype=torch.float32, cell="lstm"):
    """K independent random ``torch.nn.LSTM`` stacks (``cell``, a ``native.CELLS`` name: or GRU, RNN) (one module per layer), inputs ``x (T, K, B, F)``,
    inverted-dropout masks (keep 0.7) for every layer but the last, a regression target for the
    last steps, and the stacks' weights as K-leading tensors per layer (what ``fused_lstm``'s
    contract takes), which require grad: the setup of the K-models-at-once equality tests."""
    x = torch.randn(steps, k, batch, n_features, generator=generator, dtype=dtype)
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
              "rnn_relu": partial(torch.nn.RNN, nonlinearity="relu")}[cell]
    stacks = [[module(n_features if l == 0 else units, units).to(dtype) for l in range(layers)] for _ in range(k)]
    for stack in stacks:
        for layer in stack:
            for p in layer.parameters():
                with torch.no_grad():
                    p.normal_(generator=generator)
    masks = [torch.bernoulli(torch.full((steps, k, batch, units), 0.7, dtype=dtype), generator=generator) / 0.7
             for _ in range(layers - 1)]
    target = torch.randn(k, batch, units, generator=generator, dtype=dtype)
    weights = [
        tuple(torch.stack([getattr(stack[l], f"{name}_l0").detach() for stack in stacks]).float().requires_grad_()
              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        for l in range(layers)
    ]
    return x, stacks, masks, target, weights


def separate_lstm_stacks(x, stacks, masks):
    """The reference for K models trained together: K independent ``torch.nn.LSTM`` stacks
    (``stacks[m]``, one module per layer) run one by one on their own inputs ``x[:, m]`` (time-major
    ``(T, K, B, F)``), with ``masks[l][:, m]`` applied by hand after every layer but the last; the
    last steps ``(K, B, U)``."""
    last = []
    for m, stack in enumerate(stacks):
        out = x[:, m]
        for l, layer in enumerate(stack):
            out = layer(out)[0]
            if l < len(stack) - 1:
                out = out * masks[l][:, m]
        last.append(out[-1])
    return torch.stack(last)
