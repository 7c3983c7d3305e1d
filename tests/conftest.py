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
