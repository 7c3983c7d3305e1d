"""Fast paths against the plain path: the fused LSTM vs torch.nn.LSTM, train_many vs K train_model fits."""

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.nn import functional as F

from seqcast.ensemble import train_many
from seqcast.errors import ConfigError
from seqcast.models import build_model, dropout_masks
from seqcast.training import intra_op_threads, predict_batches, train_model


def loss_and_grads(model, x, y, dropout_seed):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(dropout_seed)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("layers,n_features,horizon", [(1, 1, 1), (3, 4, 2)])
def test_fused_lstm_matches_torch_lstm_loss_and_gradients(dropout, layers, n_features, horizon):
    generator = torch.Generator().manual_seed(layers * 10 + n_features)
    x = torch.randn(9, 11, n_features, generator=generator)
    y = torch.randn(9, horizon, generator=generator)
    kwargs = dict(cell="lstm", layers=layers, units=6, dropout=dropout, horizon=horizon, seed=4)
    plain = build_model(n_features, **kwargs)
    fused = build_model(n_features, fused=True, **kwargs)
    for a, b in zip(plain.parameters(), fused.parameters()):
        with torch.no_grad():
            a.normal_(generator=generator)
            b.copy_(a)
    assert fused.uses_fused_path(x) and not plain.uses_fused_path(x)
    # The same global seed before each forward pass: the fused path must draw the same dropout masks.
    plain_loss, plain_grads = loss_and_grads(plain, x, y, dropout_seed=21)
    fused_loss, fused_grads = loss_and_grads(fused, x, y, dropout_seed=21)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item()
        assert (fused_grads[name] - grad).abs().max().item() <= 1e-5 * scale, name
    # Separate gradient tensors for the two biases (in-place clipping would otherwise scale one twice).
    assert fused.rnn.bias_ih_l0.grad.data_ptr() != fused.rnn.bias_hh_l0.grad.data_ptr()


def test_fused_model_uses_torch_lstm_for_inference():
    model = build_model(2, cell="lstm", layers=2, units=5, dropout=0.0, horizon=1, seed=0, fused=True)
    x = torch.randn(4, 7, 2)
    with torch.no_grad():
        assert not model.uses_fused_path(x)
    assert not build_model(2, cell="gru", layers=1, units=5, dropout=0.0, horizon=1, fused=True).uses_fused_path(x)


def test_dropout_masks_are_the_masks_functional_dropout_draws():
    shape, p = (5, 3, 7), 0.4
    generator = torch.Generator().manual_seed(9)
    masks = dropout_masks(shape, p, [generator], dim=1)
    torch.manual_seed(9)
    expected = F.dropout(torch.ones(5, 7), p=p, training=True)
    torch.testing.assert_close(masks[:, 0], expected, rtol=0, atol=0)


def noisy_sine_windows(lookback=10, n=130):
    rng = np.random.default_rng(3)
    series = np.sin(np.arange(n + lookback) * 0.3) + 0.1 * rng.normal(size=n + lookback)
    X = sliding_window_view(series[:-1], lookback)[:, :, None].astype(np.float32)
    y = series[lookback:, None].astype(np.float32)
    return X, y


@pytest.mark.parametrize("clip_norm,optimizer", [(None, "adam"), (0.05, "adam"), (None, "rmsprop")])
def test_train_many_equals_separate_fits_model_by_model(clip_norm, optimizer):
    X, y = noisy_sine_windows()
    shape = dict(cell="lstm", layers=2, units=8, dropout=0.25, horizon=1)
    seeds = [3, 11, 12]
    fit = dict(epochs=2, batch_size=16, lr=3e-3, optimizer=optimizer, clip_norm=clip_norm)
    separate = []
    for seed in seeds:
        model = build_model(1, seed=seed, **shape)
        separate.append((model, train_model(model, X, y, seed=seed, **fit)))
    together, histories = train_many([build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, **fit)
    for (alone, history), joint, joint_history in zip(separate, together, histories):
        np.testing.assert_allclose(joint_history.loss, history.loss, rtol=1e-5)
        for (name, a), b in zip(alone.named_parameters(), joint.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
        assert not joint.training
    # Different seeds really gave different models (the comparison above is not vacuous).
    assert not torch.allclose(together[0].head.weight, together[1].head.weight)
    np.testing.assert_allclose(predict_batches(together[1], X), predict_batches(separate[1][0], X), atol=1e-4)


def test_train_many_rejects_mixed_shapes_non_lstm_and_missing_seeds():
    X, y = noisy_sine_windows(n=20)
    lstm = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    wider = build_model(1, cell="lstm", layers=1, units=5, dropout=0.0, horizon=1, seed=0)
    gru = build_model(1, cell="gru", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    with pytest.raises(ConfigError, match="one shape"):
        train_many([lstm, wider], X, y, seeds=[0, 1], epochs=1)
    with pytest.raises(ConfigError, match="LSTM models only"):
        train_many([gru], X, y, seeds=[0], epochs=1)
    with pytest.raises(ConfigError, match="one seed per model"):
        train_many([lstm], X, y, seeds=[0, 1], epochs=1)


def test_threads_knob_applies_only_inside_the_call():
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # differs from the current count (conftest sets 1), so the check can fail
    seen = []
    with intra_op_threads(want):
        seen.append(torch.get_num_threads())
    assert seen == [want] and torch.get_num_threads() == before
    X, y = noisy_sine_windows(n=20)
    model = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    train_model(model, X, y, epochs=1, threads=want, on_epoch=lambda *_: seen.append(torch.get_num_threads()))
    assert seen[-1] == want and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        train_model(model, X, y, epochs=1, threads=0)
