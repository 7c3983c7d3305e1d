"""Fast paths against the plain path: the layer-by-layer training stack and the fused LSTM vs
torch.nn.LSTM, the hand-written GRU and RNN vs torch.nn.GRU/RNN, batches split across threads vs whole batches,
train_many vs K train_model fits."""

import copy
import threading
import time
from functools import partial

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.nn import functional as F

from seqcast.ensemble import train_many
from seqcast.errors import ConfigError
from seqcast.models import build_model
from seqcast import ensemble, models, native, training
from seqcast.training import (
    LOSSES,
    TrainingDiverged,
    _BatchSplitter,
    batch_split_workers,
    intra_op_threads,
    predict_batches,
    train_model,
)

from .conftest import draw_masks, random_lstm_stacks, separate_lstm_stacks


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


@pytest.mark.parametrize("layers,n_features,k", [(1, 3, 4), (3, 2, 3)])
def test_block_diagonal_lstm_equals_separate_torch_lstms_in_output_and_every_gradient(layers, n_features, k):
    # The reference: K independent torch.nn.LSTM stacks run one by one on their own inputs, with
    # the same inverted-dropout masks applied between layers by hand.
    generator = torch.Generator().manual_seed(layers * 7 + k)
    x, stacks, masks, target, weights = random_lstm_stacks(
        generator, layers=layers, n_features=n_features, k=k, steps=8, batch=5, units=6
    )
    reference = separate_lstm_stacks(x, stacks, masks)
    ref_grads = torch.autograd.grad(((reference - target) ** 2).sum(), [p for st in stacks for l in st for p in l.parameters()])
    out = models.block_diagonal_lstm(x, weights, masks=masks or None)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(((out - target) ** 2).sum(), [w for layer in weights for w in layer])
    # Model m's gradient of layer l's weight `name` is block m of the stacked weight's gradient.
    by_model = iter(ref_grads)
    for m in range(k):
        for l in range(layers):
            for i in range(4):
                expected = next(by_model)
                got = grads[l * 4 + i][m]
                assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item(), (m, l, i)


def test_fused_model_uses_torch_lstm_for_inference():
    model = build_model(2, cell="lstm", layers=2, units=5, dropout=0.0, horizon=1, seed=0, fused=True)
    x = torch.randn(4, 7, 2)
    with torch.no_grad():
        assert not model.uses_fused_path(x)
    assert not build_model(2, cell="gru", layers=1, units=5, dropout=0.0, horizon=1, fused=True).uses_fused_path(x)


def test_dropout_masks_are_inverted_bernoulli_reproducible_from_the_torch_seed():
    keep = 0.7
    torch.manual_seed(9)
    big, small = draw_masks([(200, 64, 50), (3, 4)], keep)
    values = torch.unique(big)
    torch.testing.assert_close(values, torch.tensor([0.0, 1 / keep]))
    # 640,000 Bernoulli(0.7) draws: the kept share is within 5 standard errors of 0.7.
    kept = (big > 0).double().mean().item()
    assert abs(kept - keep) < 5 * (keep * (1 - keep) / big.numel()) ** 0.5
    # Independent along every axis: no row or column is all kept or all dropped.
    assert 0 < (big > 0).double().mean(dim=(1, 2)).min() and (big > 0).double().mean(dim=(0, 1)).max() < 1
    torch.manual_seed(9)
    again = draw_masks([(200, 64, 50), (3, 4)], keep)
    assert torch.equal(again[0], big) and torch.equal(again[1], small)
    assert not torch.equal(draw_masks([(200, 64, 50)], keep)[0], big)  # the global generator moved on
    generator = torch.Generator().manual_seed(9)
    assert torch.equal(draw_masks([(200, 64, 50)], keep, generator)[0], big)


def reference_stack(model, x, masks):
    """The same network built from independent single-layer torch modules, masks applied by hand."""
    classes = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
    out = x
    for layer in range(model.layers):
        single = classes[model.cell](out.shape[-1], model.units, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").copy_(getattr(model.rnn, f"{name}_l{layer}"))
        out, _ = single(out)
        if layer < model.layers - 1:
            out = out * masks[layer].transpose(0, 1)
    return model.head(out[:, -1] * masks[-1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_layer_by_layer_training_stack_matches_single_torch_layers(cell):
    generator = torch.Generator().manual_seed(5)
    model = build_model(3, cell=cell, layers=3, units=7, dropout=0.3, horizon=2, seed=1)
    x = torch.randn(6, 9, 3, generator=generator, requires_grad=True)
    masks = model.draw_dropout_masks(6, 9)
    model.train()
    ours = model(x, masks)
    reference = reference_stack(model, x, masks)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    # Input gradients through all layers and masks agree too.
    weights = torch.randn(6, 2, generator=generator)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (grad_reference,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-5, atol=1e-6)
    # Without masks a training pass draws its own; inference runs the whole stack in one call.
    torch.manual_seed(3)
    drawn = model.draw_dropout_masks(6, 9)
    torch.manual_seed(3)
    torch.testing.assert_close(model(x), model(x, drawn))
    model.eval()
    ones = [torch.ones_like(m) for m in masks]
    torch.testing.assert_close(model(x), reference_stack(model, x, ones), rtol=1e-5, atol=1e-6)


def torch_single_layers(model, x, masks):
    """The model's stack rebuilt from independent single-layer ``torch.nn.LSTM/GRU/RNN`` modules with
    copies of its weights (masks applied by hand); returns the output and the modules."""
    make = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": partial(torch.nn.RNN, nonlinearity=model.nonlinearity)}[model.cell]
    singles, out = [], x
    for layer in range(model.layers):
        single = make(out.shape[-1], model.units, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").copy_(getattr(model.rnn, f"{name}_l{layer}"))
        singles.append(single)
        out, _ = single(out)
        if layer < model.layers - 1:
            out = out * masks[layer].transpose(0, 1)
    return model.head(out[:, -1] * masks[-1]), singles


@pytest.mark.parametrize(
    "cell,nonlinearity,compiled",
    [("gru", "tanh", True), ("gru", "tanh", False), ("rnn", "tanh", True), ("rnn", "tanh", False),
     ("rnn", "relu", True), ("rnn", "relu", False), ("lstm", "tanh", True)],
)
@pytest.mark.parametrize(
    "layers,units,steps,batch,features,dropout",
    [(3, 7, 9, 6, 3, 0.3), (1, 5, 1, 1, 2, 0.0), (2, 4, 5, 3, 1, 0.0), (2, 16, 12, 4, 2, 0.2)],
)
def test_hand_written_gru_rnn_and_native_lstm_gru_match_torch_in_loss_and_every_gradient(
    monkeypatch, cell, nonlinearity, compiled, layers, units, steps, batch, features, dropout
):
    # compiled: seqcast.native's layer (native_lstm, native_gru, native_rnn); else the TorchScript
    # fused_gru and fused_rnn, the paths where the compiled layer did not build or the layers are too
    # large for it.
    if compiled and not native.available():
        pytest.skip(f"seqcast.native did not build here: {native.unavailable_reason()}")
    if not compiled:
        monkeypatch.setattr(models.StackedRNN, "trains_natively_at", lambda *a: False)
    used = []
    for name in ("native_lstm", "native_gru", "native_rnn"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, partial(lambda real, *a, **k: used.append(1) or real(*a, **k), real))
    generator = torch.Generator().manual_seed(units * steps)
    model = build_model(
        features, cell=cell, nonlinearity=nonlinearity, layers=layers, units=units, dropout=dropout, horizon=2, seed=3
    )
    model.train()
    x = torch.randn(batch, steps, features, generator=generator, requires_grad=True)
    assert model.trains_by_hand(x)
    masks = model.draw_dropout_masks(batch, steps)
    if not dropout:
        masks = [torch.ones_like(m) for m in masks]
    ours = model(x, masks if dropout else None)
    reference, singles = torch_single_layers(model, x, masks)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    weights = torch.randn(batch, 2, generator=generator)
    got = torch.autograd.grad((ours * weights).sum(), [x, *model.rnn.parameters()])
    want = torch.autograd.grad((reference * weights).sum(), [x, *(p for s in singles for p in s.parameters())])
    names = ["x"] + [name for name, _ in model.rnn.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert (a - b).abs().max().item() <= 1e-5 * max(b.abs().max().item(), 1e-6), name
    assert len(used) == (1 if compiled else 0)
    # Inference keeps torch's own modules; an LSTM too large to gain keeps oneDNN's in training.
    with torch.no_grad():
        assert not model.trains_by_hand(x)
    big = build_model(features, cell="lstm", layers=1, units=128, dropout=0.0, horizon=1)
    assert not big.trains_by_hand(torch.randn(64, 60, features))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float64_models_train_without_the_float32_only_compiled_layer(cell):
    # The compiled layer computes in float32 only; a float64 model (or float64 windows) trains on
    # the plain path (oneDNN for an LSTM, fused_gru/fused_rnn) and agrees with its float32 twin.
    model = build_model(2, cell=cell, layers=2, units=8, dropout=0.2, horizon=1, seed=0)
    model.train()
    x = torch.randn(6, 7, 2, generator=torch.Generator().manual_seed(0))
    masks = model.draw_dropout_masks(6, 7, generator=torch.Generator().manual_seed(1))
    results = []
    for twin, inputs in ((model, x), (copy.deepcopy(model).double(), x.double())):
        assert twin.trains_natively(inputs) == (inputs.dtype == torch.float32 and native.available())
        out = twin(inputs, [m.to(inputs.dtype) for m in masks])
        grads = torch.autograd.grad(out.square().sum(), list(twin.parameters()))
        results.append((out, grads))
    assert not model.trains_natively(x.double())  # float64 windows into a float32 model: neither
    torch.testing.assert_close(results[1][0].float(), results[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "relu"), ("rnn", "tanh")])
def test_inference_on_the_compiled_layers_gives_torch_s_predictions(monkeypatch, cell, nonlinearity):
    # Without gradients and dropout a forward pass runs native.native_infer; the reference is the
    # same model through nn.LSTM/GRU/RNN (infers_natively turned off).
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    model = build_model(3, cell=cell, nonlinearity=nonlinearity, layers=3, units=20, dropout=0.3, horizon=2, seed=1)
    x = torch.randn(17, 25, 3, generator=torch.Generator().manual_seed(2))
    calls = []
    real = native.native_infer
    monkeypatch.setattr(native, "native_infer", lambda *a: calls.append(a[0].shape) or real(*a))
    model.eval()
    with torch.no_grad():
        got = model(x)
        assert calls == [(25, 1, 17, 3)]
        with monkeypatch.context() as m:
            m.setattr(models.StackedRNN, "infers_natively", lambda *a: False)
            want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Not with gradients, not in training with dropout, not for float64 or empty batches.
    assert not model.infers_natively(x)
    model.train()
    with torch.no_grad():
        model(x)
        assert len(calls) == 1
        assert not model.infers_natively(torch.zeros(0, 25, 3)) and not model.infers_natively(x.double())
        assert model.infers_natively(x)  # the check itself: dropout is forward's to exclude
    quiet = build_model(3, cell=cell, nonlinearity=nonlinearity, layers=1, units=8, dropout=0.0, horizon=1)
    with torch.no_grad():
        quiet(x)  # training mode without dropout: no masks, so the compiled inference
    assert len(calls) == 2


def test_inference_on_the_compiled_layers_up_to_the_measured_bounds():
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    seed_config = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0).eval()
    previous = torch.get_num_threads()
    try:
        with torch.no_grad():
            # one thread (a slice of predict_batches): 500 seed-config windows (1.2 GFLOP per layer
            # call) ran 1.21x faster compiled; on two threads 0.96x, so nn.LSTM there
            torch.set_num_threads(1)
            assert seed_config.infers_natively(torch.zeros(500, 60, 1))
            torch.set_num_threads(2)
            assert not seed_config.infers_natively(torch.zeros(500, 60, 1))
            assert seed_config.infers_natively(torch.zeros(20, 60, 1))  # 48 MFLOP: 1.80x on two
    finally:
        torch.set_num_threads(previous)
    assert native.suits(60, 500, 50, 50, 1, "lstm", inference=True)
    assert not native.suits(60, 500, 50, 50, 1, "lstm")  # training keeps oneDNN there


def test_lstm_layers_train_natively_up_to_the_measured_bounds():
    if not native.available():
        pytest.skip(f"seqcast.native did not build here: {native.unavailable_reason()}")
    # Forward FLOPs of one layer call, by hand: 2 * steps * batch * (inputs + units) * 4 * units.
    assert native.layer_flops(60, 32, 50, 50) == 2 * 60 * 32 * 100 * 200 == 76.8e6
    seed_config = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    # A slice of a split seed-config batch (32 windows, one thread) trains natively; a whole batch
    # of 64 on one thread too; on two threads the batch keeps oneDNN, whose kernel uses both.
    assert seed_config.trains_by_hand_at(32, 60, threads=1)
    assert seed_config.trains_by_hand_at(32, 60, threads=2)
    assert seed_config.trains_by_hand_at(64, 60, threads=1)
    assert not seed_config.trains_by_hand_at(64, 60, threads=2)
    # None: the calling thread's intra-op count, as in a forward pass.
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert seed_config.trains_by_hand_at(64, 60)
        torch.set_num_threads(2)
        assert not seed_config.trains_by_hand_at(64, 60)
    finally:
        torch.set_num_threads(previous)
    # 503 MFLOP per layer call: oneDNN where the bound was measured with AVX-512, the compiled layer
    # on AVX2 CPUs (measured on an AMD EPYC host); 2xLSTM(256)'s 2.0 GFLOP: oneDNN on both.
    big = build_model(1, cell="lstm", layers=2, units=128, dropout=0.0, horizon=1)
    bigger = build_model(1, cell="lstm", layers=2, units=256, dropout=0.0, horizon=1)
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert native.lstm_bound_one_thread() == (600e6 if avx2 else 160e6)
    assert big.trains_by_hand_at(32, 60, threads=1) == avx2
    assert not big.trains_by_hand_at(32, 60, threads=2)
    assert not bigger.trains_by_hand_at(32, 60, threads=1)


def test_gru_and_rnn_layers_train_natively_up_to_the_measured_bounds():
    if not native.available():
        pytest.skip(f"seqcast.native did not build here: {native.unavailable_reason()}")
    # By hand: 2 * steps * batch * (inputs + units) * 3 * units.
    assert native.layer_flops(60, 64, 256, 256, "gru") == 2 * 60 * 64 * 512 * 768
    seed_shape = build_model(1, cell="gru", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    assert seed_shape.trains_natively_at(64, 60, threads=2) and seed_shape.trains_natively_at(32, 60, threads=1)
    assert seed_shape.hand_written_stack(True) is native.native_gru
    # 2xGRU(256) at batch 64 (3.0 GFLOP per layer call) gains on one thread, not on two; 1xGRU(512)
    # (6.1 GFLOP) on neither: fused_gru, whose per-step products use every thread.
    wide = build_model(1, cell="gru", layers=2, units=256, dropout=0.0, horizon=1)
    assert wide.trains_natively_at(64, 60, threads=1) and not wide.trains_natively_at(64, 60, threads=2)
    widest = build_model(1, cell="gru", layers=1, units=512, dropout=0.0, horizon=1)
    assert not widest.trains_natively_at(64, 60, threads=1)
    assert widest.hand_written_stack(False) is models.fused_gru
    assert widest.trains_by_hand_at(64, 60, threads=1)  # still by hand, as every GRU
    # RNNs: 2xRNN(256) at batch 64 (1.0 GFLOP) on one thread, not on two; 1xRNN(1024) on neither.
    assert native.layer_flops(60, 64, 256, 256, "rnn_relu") == 2 * 60 * 64 * 512 * 256
    rnn = build_model(1, cell="rnn", nonlinearity="relu", layers=2, units=256, dropout=0.0, horizon=1)
    assert rnn.native_cell == "rnn_relu"
    assert rnn.trains_natively_at(64, 60, threads=1) and not rnn.trains_natively_at(64, 60, threads=2)
    assert rnn.hand_written_stack(True).func is native.native_rnn
    assert rnn.hand_written_stack(False).func is models.fused_rnn
    assert rnn.hand_written_stack(False).keywords == {"nonlinearity": "relu"}
    widest = build_model(1, cell="rnn", layers=1, units=1024, dropout=0.0, horizon=1)
    assert not widest.trains_natively_at(64, 60, threads=1) and widest.trains_by_hand_at(64, 60, threads=1)


LOOPS = (models._gru_forward_steps, models._gru_backward_steps, models._rnn_forward_steps, models._rnn_backward_steps)


@pytest.mark.parametrize("cell,nonlinearity", [("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
def test_time_loops_run_as_torchscript_and_agree_with_their_python(monkeypatch, cell, nonlinearity):
    monkeypatch.setattr(models.StackedRNN, "trains_natively_at", lambda *a: False)  # a GRU's fallback
    model = build_model(2, cell=cell, nonlinearity=nonlinearity, layers=2, units=6, dropout=0.2, horizon=1, seed=0)
    model.train()
    x = torch.randn(5, 7, 2)

    def fit_step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    scripted_loss, scripted_grads = fit_step()
    # The fast path is really in use: the loops compiled (the interpreter releases the GIL).
    for fn in LOOPS:
        assert isinstance(models._scripted(fn), torch.jit.ScriptFunction)
    # The fallback, the same functions as plain Python, gives the same numbers.
    monkeypatch.setattr(models, "_SCRIPTED", {fn: fn for fn in LOOPS})
    python_loss, python_grads = fit_step()
    torch.testing.assert_close(python_loss, scripted_loss, rtol=1e-6, atol=0)
    for a, b in zip(python_grads, scripted_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def whole_batch_grads(model, x, y, loss_fn, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_fn(model(x), y)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize(
    "batch,workers,cell", [(13, 2, "lstm"), (7, 3, "lstm"), (2, 4, "lstm"), (13, 2, "gru"), (7, 3, "rnn")]
)
def test_batch_split_across_threads_gives_the_whole_batch_loss_and_gradients(loss, batch, workers, cell):
    generator = torch.Generator().manual_seed(batch * workers)
    model = build_model(2, cell=cell, layers=2, units=6, dropout=0.25, horizon=2, seed=2)
    model.train()
    x = torch.randn(batch, 8, 2, generator=generator)
    y = torch.randn(batch, 2, generator=generator)
    expected_loss, expected = whole_batch_grads(model, x, y, LOSSES[loss], seed=17)
    splitter = _BatchSplitter(model, LOSSES[loss], workers)
    try:
        model.zero_grad(set_to_none=True)
        # The splitter draws the whole batch's masks from the generator it is given, here the same
        # stream whole_batch_grads drew from (the global one after manual_seed(17)).
        got_loss, grads = splitter.gradients(x, y, torch.Generator().manual_seed(17))
        training.set_summed_grads(splitter.params, grads)
        got_loss = got_loss.item()
    finally:
        splitter.close()
    assert got_loss == pytest.approx(expected_loss, rel=1e-5)
    for (name, param), want in zip(model.named_parameters(), expected):
        scale = want.abs().max().item()
        assert (param.grad - want).abs().max().item() <= 1e-5 * scale, name


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("dropout,horizon,n_features", [(0.2, 1, 1), (0.0, 3, 2), (0.5, 2, 3)])
def test_a_compiled_slice_gives_the_autograd_slice_loss_and_gradients(
    monkeypatch, loss, dropout, horizon, n_features, cell
):
    # native.train_step runs a slice of an LSTM, GRU or (ReLU) RNN stack without autograd; the
    # reference is the same slice through StackedRNN.forward, the loss function and
    # torch.autograd.grad, with the hand-written layer the stack uses where the compiled one is not
    # (fused_lstm, fused_gru, fused_rnn).
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    generator = torch.Generator().manual_seed(horizon)
    nonlinearity = "relu" if cell == "rnn" else "tanh"
    model = build_model(
        n_features, cell=cell, nonlinearity=nonlinearity, layers=3, units=20, dropout=dropout, horizon=horizon, seed=1
    )
    model.train()
    x = torch.randn(16, 30, n_features, generator=generator)
    y = torch.randn(16, horizon, generator=generator) * 2  # Huber: both sides of |error| = 1
    seed = model.batch_mask_seed(torch.Generator().manual_seed(9))
    calls = []
    real = native.train_step
    monkeypatch.setattr(native, "train_step", lambda *a, **k: calls.append(k["start"]) or real(*a, **k))
    splitter = _BatchSplitter(model, LOSSES[loss], 2)
    try:
        assert splitter.compiled
        got_loss, got = splitter._slice(x, y, seed, 5, 13, 0.5)
        assert calls == [5]
        masks = None if seed is None else model.dropout_masks(seed, 16, 30, 5, 13)
        monkeypatch.setattr(models.StackedRNN, "trains_natively_at", lambda *a: False)
        errors = model(x[5:13], masks) - y[5:13]
        monkeypatch.undo()
        if loss == "huber":
            assert (errors.abs() < 1).any() and (errors.abs() > 1).any()
        want_loss = LOSSES[loss](errors, torch.zeros_like(errors)) * 0.5
        want = torch.autograd.grad(want_loss, list(model.parameters()))
    finally:
        splitter.close()
    assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-6)
    for (name, param), g, w in zip(model.named_parameters(), got, want):
        assert g.shape == param.shape, name
        assert (g - w).abs().max().item() <= 1e-5 * w.abs().max().item(), name
    # A loss train_step does not know keeps the autograd path.
    other = build_model(1, cell=cell, layers=2, units=6, dropout=0.2, horizon=1, seed=2)
    splitter = _BatchSplitter(other, torch.nn.functional.smooth_l1_loss, 2)
    splitter.close()
    assert not splitter.compiled


@pytest.mark.parametrize("cell,dropout", [("lstm", 0.25), ("gru", 0.25), ("rnn", 0.25), ("lstm", 0.0)])
def test_a_split_batch_as_one_compiled_pair_equals_its_two_slices_to_the_bit(monkeypatch, cell, dropout):
    # Two compiled slices run as one native.train_step_pair call, the second on the module's own
    # C++ thread; the reference is each slice as its own native.train_step call (the path a Python
    # pool thread runs), which must give the same losses and gradients bit for bit.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    generator = torch.Generator().manual_seed(5)
    model = build_model(2, cell=cell, layers=2, units=12, dropout=dropout, horizon=2, seed=3)
    model.train()
    x = torch.randn(11, 9, 2, generator=generator)
    y = torch.randn(11, 2, generator=generator)
    splits = []
    real = native.train_step_pair
    monkeypatch.setattr(native, "train_step_pair", lambda *a, **k: splits.append(k["split"]) or real(*a, **k))
    splitter = _BatchSplitter(model, LOSSES["mse"], 2)
    try:
        loss, grads = splitter.gradients(x, y, torch.Generator().manual_seed(4))
        again, _ = splitter.gradients(x, y, torch.Generator().manual_seed(4))  # the same thread, reused
        seed = model.batch_mask_seed(torch.Generator().manual_seed(4))
        want = [splitter._slice(x, y, seed, 0, 5, 5 / 11), splitter._slice(x, y, seed, 5, 11, 6 / 11)]
    finally:
        splitter.close()
    assert splits == [5, 5] and splitter.worker is None
    assert torch.equal(loss, want[0][0] + want[1][0]) and torch.equal(again, loss)
    assert len(grads) == 2
    for got_slice, (_, want_slice) in zip(grads, want):
        assert len(got_slice) == len(want_slice) == len(list(model.parameters()))
        for g, w in zip(got_slice, want_slice):
            assert torch.equal(g, w)


def test_a_compiled_call_takes_about_eight_seed_config_batches_of_work(monkeypatch):
    # batches_per_call: ~8 seed-config batches of training work (3 x forward FLOPs of the gate
    # GEMMs, computed here from the layers' sizes), between 8 and 64 batches.
    seed_config = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1)
    call = 8 * 3 * (2 * 60 * ((1 + 50) + 3 * (50 + 50)) * 4 * 50) * 64
    assert call == pytest.approx(training.CALL_FLOPS, rel=5e-3)  # the constant rounds 8.42 MFLOP a window to 8.4
    assert training.batches_per_call(seed_config, 60, 64) == 8
    assert training.batches_per_call(seed_config, 60, 64, models=8) == 8  # never fewer than 8
    preset = build_model(3, cell="lstm", layers=1, units=32, dropout=0.0, horizon=1)
    assert training.batches_per_call(preset, 20, 32) == 64  # ~750 by the FLOPs: the cap
    gru = build_model(1, cell="gru", layers=2, units=50, dropout=0.0, horizon=1)
    per_batch = 3 * (2 * 60 * ((1 + 50) + (50 + 50)) * 3 * 50) * 32
    want = int(training.CALL_FLOPS // per_batch)
    assert 8 < want < 64 and training.batches_per_call(gru, 60, 32) == want
    assert training.batches_per_call(gru, 60, 32, models=2) == int(training.CALL_FLOPS // (2 * per_batch))
    # A small unsplit fit runs each epoch's batches in one compiled call (the first batch alone:
    # torch's Adam creates its state), 21 batches of 8 windows here.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    chunks = []
    real = native.train_batches
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: chunks.append(k["count"]) or real(*a, **k))
    X, y = noisy_sine_windows(n=180)
    batches = -(-len(X) // 8)
    assert 8 < batches < 64
    model = build_model(1, cell="rnn", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    train_model(model, X, y, epochs=3, batch_size=8, threads=1)
    assert chunks == [batches - 1, batches, batches]


@pytest.mark.parametrize("dropout,cell", [(0.25, "lstm"), (0.0, "gru")])
def test_batches_in_one_compiled_call_train_as_batch_by_batch_to_the_bit(monkeypatch, dropout, cell):
    # After the first batch a split fit runs its batches batches_per_call at a time (at least BATCHES_PER_CALL, 8: an
    # epoch here) in one compiled
    # call (native.train_batches on the pair's worker); the reference is the same fit batch by batch (train_step_pair
    # and the two-thread Adam, each called from Python), which must give the same losses and weights.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)
    X, y = noisy_sine_windows(n=100)
    batches = -(-len(X) // 16)
    assert 2 < batches <= training.BATCHES_PER_CALL and len(X) % 16 > 1  # a short last batch, split too
    shape = dict(cell=cell, layers=2, units=8, dropout=dropout, horizon=1)
    fit = dict(epochs=3, batch_size=16, lr=3e-3, seed=2, threads=2)
    chunks = []
    real = native.train_batches
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: chunks.append(k["count"]) or real(*a, **k))
    model = build_model(1, seed=2, **shape)
    history = train_model(model, X, y, **fit)
    assert chunks == [batches - 1, batches, batches]
    monkeypatch.setattr(_BatchSplitter, "run_batches", lambda *a: 0)
    alone = build_model(1, seed=2, **shape)
    alone_history = train_model(alone, X, y, **fit)
    assert len(chunks) == 3  # the second fit took none
    assert_identical_fits(model, history, alone, alone_history)


def test_a_compiled_pair_that_fails_raises_and_its_thread_stays_usable():
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    model = build_model(1, cell="lstm", layers=2, units=8, dropout=0.0, horizon=1, seed=0)
    x, y = torch.randn(1, 6, 5, 1), torch.randn(1, 6, 1)
    weights = model.layer_weights()
    worker = native.slice_worker()
    with pytest.raises(RuntimeError, match="split must leave windows on both sides"):
        native.train_step_pair(worker, x, y, weights, model.head.weight, model.head.bias, seeds=None, split=6)
    # A head of the wrong width fails on both threads; the call raises instead of hanging.
    wide = torch.zeros(3, 8)
    with pytest.raises(RuntimeError, match="the heads"):
        native.train_step_pair(worker, x, y, weights, wide, model.head.bias, seeds=None, split=3)
    (loss0, grads0), (loss1, grads1) = native.train_step_pair(
        worker, x, y, weights, model.head.weight, model.head.bias, seeds=None, split=2
    )
    first = native.train_step(x[:, :2], y[:, :2], weights, model.head.weight, model.head.bias, seeds=None,
                              batch=6, start=0, weight=2 / 6)
    second = native.train_step(x[:, 2:], y[:, 2:], weights, model.head.weight, model.head.bias, seeds=None,
                               batch=6, start=2, weight=4 / 6)
    assert torch.equal(loss0, first[0]) and torch.equal(loss1, second[0])
    assert all(torch.equal(a, b) for a, b in zip(grads0 + grads1, first[1] + second[1]))
    del worker
    for _ in range(30):  # threads started and joined, idle or just used
        worker = native.slice_worker()
        if _ % 2:
            native.train_step_pair(worker, x, y, weights, model.head.weight, model.head.bias, seeds=None, split=3)
        del worker


def test_adam_on_the_pair_s_two_threads_equals_adam_on_one_to_the_bit():
    # native.adam_step with a worker shares the parameters out between two threads; each is
    # updated as on one thread, so parameters, moments and step counts must agree exactly.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    generator = torch.Generator().manual_seed(8)
    runs = []
    for worker in (None, native.slice_worker()):
        model = build_model(3, cell="gru", layers=3, units=10, dropout=0.0, horizon=2, seed=4)
        params = list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-2)
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()  # Adam's state exists from the first step on
        generator.manual_seed(8)
        for _ in range(3):
            grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(2)]
            native.adam_step(params, grads, optimizer, worker)
        state = [optimizer.state[p] for p in params]
        runs.append([t.detach().clone() for p, st in zip(params, state) for t in (p, st["exp_avg"], st["exp_avg_sq"], st["step"])])
        del worker
    assert len(runs[0]) == len(runs[1]) == 4 * 14  # 3 layers of 4 weights and the head's 2
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not torch.equal(runs[0][0], build_model(3, cell="gru", layers=3, units=10, dropout=0.0, horizon=2, seed=4).rnn.weight_ih_l0)


def test_a_split_fit_on_the_compiled_pair_leaves_torch_s_thread_count_alone(monkeypatch):
    # The pair's thread sets one intra-op thread for itself when it starts; it starts inside the
    # fit's own thread setting, so the caller's count is what it was afterwards.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)
    calls, chunks = [], []
    real, real_chunk = native.train_step_pair, native.train_batches
    monkeypatch.setattr(native, "train_step_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: chunks.append(k["count"]) or real_chunk(*a, **k))
    X, y = noisy_sine_windows(n=40)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model = build_model(1, cell="lstm", layers=1, units=4, dropout=0.2, horizon=1, seed=0)
        train_model(model, X, y, epochs=2, batch_size=8, threads=2)
        assert torch.get_num_threads() == 2
        # The first batch alone (torch's Adam creates its state), then the rest in compiled calls
        # of up to training.batches_per_call batches each (at least BATCHES_PER_CALL, 8: the whole rest here).
        batches = -(-len(X) // 8)
        assert 2 < batches <= training.BATCHES_PER_CALL
        assert calls == [1] and chunks == [batches - 1, batches]
    finally:
        torch.set_num_threads(before)


def assert_identical_fits(got, got_history, want, want_history):
    """Two fits the same to the bit: every epoch's loss and every parameter."""
    assert got_history.loss == want_history.loss
    for a, b in zip(got.parameters(), want.parameters(), strict=True):
        assert torch.equal(a, b)


def assert_same_fit(got_loss, got, want_loss, want):
    """Two fits' loss histories within 1e-5 relative, and each parameter within 1e-5 of its scale."""
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-5 * max(w.abs().max().item(), 1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dropout,loss", [(0.0, "mse"), (0.3, "mse"), (0.3, "mae"), (0.0, "huber")])
def test_unsplit_fits_run_compiled_steps_like_autograd_ones(monkeypatch, dropout, loss, cell):
    # train_model's unsplit loop runs a small stack's batches through native.train_step; the
    # reference is the same fit with compiled steps turned off (autograd through forward()).
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    generator = torch.Generator().manual_seed(4)
    X = torch.randn(50, 12, 2, generator=generator)
    y = torch.randn(50, 2, generator=generator)
    calls = []
    real, real_chunk = native.train_step, native.train_batches
    monkeypatch.setattr(native, "train_step", lambda *a, **k: calls.append(len(a[0][0])) or real(*a, **k))
    # After Adam's first step the batches run several per compiled call (native.train_batches).
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: calls.extend(
        min(k["batch"], a[2].shape[1] - k["first"] - b * k["batch"]) for b in range(k["count"])) or real_chunk(*a, **k))

    def fit():
        model = build_model(2, cell=cell, layers=2, units=8, dropout=dropout, horizon=2, seed=3)
        history = training.train_model(model, X, y, epochs=2, batch_size=16, seed=5, threads=1, loss=loss)
        return history.loss, [p.detach().clone() for p in model.parameters()]

    got_loss, got = fit()
    assert calls == [16, 16, 16, 2] * 2
    monkeypatch.setattr(training, "compiled_steps_apply", lambda *a: False)
    want_loss, want = fit()
    assert len(calls) == 8
    assert_same_fit(got_loss, got, want_loss, want)


@pytest.mark.parametrize("cell,split", [("lstm", True), ("lstm", False), ("gru", True), ("rnn", False)])
def test_adam_in_the_compiled_pass_trains_like_torch_adam(monkeypatch, cell, split):
    # train_model runs Adam's update as native.adam_step (summing a split batch's slice gradients in
    # the same pass) from the second batch on; the reference is the same fit with it turned off.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    if split:
        monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)
    generator = torch.Generator().manual_seed(6)
    X = torch.randn(70, 12, 2, generator=generator)
    y = torch.randn(70, 1, generator=generator)
    calls = []
    real, real_chunk = native.adam_step, native.train_batches
    monkeypatch.setattr(native, "adam_step", lambda params, grads, optim, worker=None: calls.append(len(grads)) or real(params, grads, optim, worker))
    # A fit's batches after the first run in compiled calls of several (each step, or slice pair, then Adam).
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: calls.extend(
        [1 if k.get("worker") is None else 2] * k["count"]) or real_chunk(*a, **k))

    def fit():
        model = build_model(2, cell=cell, layers=2, units=8, dropout=0.2, horizon=1, seed=3)
        history = training.train_model(model, X, y, epochs=3, batch_size=16, seed=5, threads=2 if split else 1)
        return history.loss, [p.detach().clone() for p in model.parameters()]

    got_loss, got = fit()
    assert calls == [2 if split else 1] * (3 * 5 - 1)  # 5 batches per epoch; the first step is torch's
    monkeypatch.setattr(training, "native_adam_applies", lambda *a: False)
    want_loss, want = fit()
    assert len(calls) == 14
    assert_same_fit(got_loss, got, want_loss, want)


def test_adam_in_the_compiled_pass_only_where_it_is_torch_adam(monkeypatch):
    model = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1)
    adam = training.make_optimizer("adam", model.parameters(), 1e-3)
    assert training.native_adam_applies(adam, None) == native.available()
    assert not training.native_adam_applies(adam, 1.0)  # clipping needs the summed gradient first
    assert not training.native_adam_applies(training.make_optimizer("rmsprop", model.parameters(), 1e-3), None)
    assert not training.native_adam_applies(torch.optim.Adam(model.parameters(), amsgrad=True), None)
    assert not training.native_adam_applies(torch.optim.Adam(model.parameters(), weight_decay=1e-4), None)
    handle = adam.register_step_post_hook(lambda *a: None)
    assert not training.native_adam_applies(adam, None)
    handle.remove()
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda *a: None)
    try:
        assert not training.native_adam_applies(adam, None)
    finally:
        handle.remove()
    assert not training.adam_started(adam, list(model.parameters()))
    assert not adam.state  # asking created no state


def test_a_hook_on_the_model_keeps_the_autograd_step(monkeypatch):
    # A compiled step would skip forward(), so its hooks; with one registered the fit goes through
    # autograd (here unsplit; the batch splitter asks the same compiled_steps_apply).
    calls = []
    real, real_chunk = native.train_step, native.train_batches
    monkeypatch.setattr(native, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: calls.extend([1] * k["count"]) or real_chunk(*a, **k))
    X = torch.randn(40, 10, 1)
    y = torch.randn(40, 1)
    for hooked in (False, True):
        model = build_model(1, cell="lstm", layers=2, units=8, dropout=0.2, horizon=1, seed=0)
        seen = []
        if hooked:
            model.head.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
        training.train_model(model, X, y, epochs=1, batch_size=20, threads=1)
        assert (len(seen) == 2) == hooked
        assert training.compiled_steps_apply(model, LOSSES["mse"]) != hooked
    assert len(calls) == (2 if native.available() else 0)


def test_batches_are_split_only_where_each_slice_has_enough_work():
    cpu = torch.device("cpu")
    seed_config = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
    # 4 layers: 2·60·(1+50)·200 + 3 · 2·60·100·200 forward FLOPs per window, computed by hand.
    assert seed_config.forward_flops(60) == 2 * 60 * 51 * 200 + 3 * 2 * 60 * 100 * 200
    assert batch_split_workers(seed_config, cpu, 2, True, 64, 60) == 2
    assert batch_split_workers(seed_config, cpu, 3, True, 64, 60) == 3
    assert batch_split_workers(seed_config, cpu, 2, False, 64, 60) == 1
    assert batch_split_workers(seed_config, cpu, 1, True, 64, 60) == 1
    assert batch_split_workers(seed_config, torch.device("meta"), 2, True, 64, 60) == 1
    fused = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0, fused=True)
    assert batch_split_workers(fused, cpu, 2, True, 64, 60) == 1
    # The indicators preset (1×LSTM(32), 3 inputs, lookback 20, batch 32) ran slower split.
    preset = build_model(3, cell="lstm", layers=1, units=32, dropout=0.0, horizon=1, seed=0)
    assert preset.forward_flops(20) * 32 < 2 * training.MIN_SLICE_FLOPS
    assert batch_split_workers(preset, cpu, 2, True, 32, 20) == 1
    # A larger batch of the same model affords two slices.
    assert batch_split_workers(preset, cpu, 2, True, 128, 20) == 2


@pytest.mark.parametrize("units,batch,cuts", [(5, 7, [0, 3, 7]), (50, 64, [0, 32, 64]), (3, 9, [0, 1, 4, 9])])
def test_each_slice_draws_its_part_of_the_whole_batch_masks(units, batch, cuts):
    # Odd units: slices start at odd positions of the counter sequence, half-way through an output.
    model = build_model(1, cell="lstm", layers=3, units=units, dropout=0.3, horizon=1, seed=0)
    model.train()
    steps = 4
    shapes = [(steps, batch, units)] * 2 + [(batch, units)]
    whole = draw_masks(shapes, 0.7, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(model.draw_dropout_masks(batch, steps, generator=torch.Generator().manual_seed(5)), whole))
    seed = model.batch_mask_seed(torch.Generator().manual_seed(5))
    for start, stop in zip(cuts, cuts[1:]):
        part = model.dropout_masks(seed, batch, steps, start, stop)
        assert [tuple(m.shape) for m in part] == [(steps, stop - start, units)] * 2 + [(stop - start, units)]
        for got, want in zip(part[:-1], whole[:-1]):
            assert torch.equal(got, want[:, start:stop])
        assert torch.equal(part[-1], whole[-1][start:stop])
    model.eval()
    assert model.batch_mask_seed(torch.Generator()) is None


def test_train_model_split_across_threads_matches_whole_batches_and_is_reproducible(monkeypatch):
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)  # split even this tiny model
    monkeypatch.setattr(training, "MAX_BATCHES_PER_CALL", 8)  # an epoch's 8 compiled batches over two calls
    split_steps = []
    real_step, real_batches = _BatchSplitter.gradients, _BatchSplitter.run_batches
    monkeypatch.setattr(_BatchSplitter, "gradients", lambda self, *a: split_steps.append(len(a[0])) or real_step(self, *a))

    def run_batches(self, *a):
        done = real_batches(self, *a)
        split_steps.append(("compiled batches", done))
        return done

    monkeypatch.setattr(_BatchSplitter, "run_batches", run_batches)
    X, y = noisy_sine_windows()
    shape = dict(cell="lstm", layers=2, units=8, dropout=0.25, horizon=1)
    fit = dict(epochs=3, batch_size=16, lr=3e-3, seed=4)
    whole = build_model(1, seed=4, **shape)
    whole_history = train_model(whole, X, y, threads=2, split_batches=False, **fit)
    runs = []
    for _ in range(2):
        model = build_model(1, seed=4, **shape)
        runs.append((model, train_model(model, X, y, threads=2, **fit)))
    (split, split_history), (again, again_history) = runs
    # Both split fits really went through the splitter: 3 epochs of 9 batches (130 windows, batch 16),
    # the first alone (torch's Adam creates its state), the others in compiled calls of up to 8.
    chunks = [("compiled batches", 8), ("compiled batches", 1)]
    assert split_steps == ([16, ("compiled batches", 8)] + chunks * 2) * 2
    np.testing.assert_allclose(split_history.loss, whole_history.loss, rtol=1e-5)
    for (name, a), b in zip(whole.named_parameters(), split.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    # The same seed and thread count give the same weights bit for bit.
    assert_identical_fits(split, split_history, again, again_history)
    # A different seed really changes the fit (the comparisons above are not vacuous).
    other = build_model(1, seed=4, **shape)
    assert train_model(other, X, y, threads=2, **{**fit, "seed": 5}).loss != split_history.loss


def noisy_sine_windows(lookback=10, n=130):
    rng = np.random.default_rng(3)
    series = np.sin(np.arange(n + lookback) * 0.3) + 0.1 * rng.normal(size=n + lookback)
    X = sliding_window_view(series[:-1], lookback)[:, :, None].astype(np.float32)
    y = series[lookback:, None].astype(np.float32)
    return X, y


def train_many_against_separate_fits(shape, fit, threads=None):
    """Seeds 3, 11, 12 of ``shape`` trained by ``train_many`` and one by one by ``train_model``;
    asserts that each model equals its own fit; returns the jointly trained models."""
    X, y = noisy_sine_windows()
    seeds = [3, 11, 12]
    separate = []
    for seed in seeds:
        model = build_model(1, seed=seed, **shape)
        separate.append((model, train_model(model, X, y, seed=seed, **fit)))
    together, histories = train_many(
        [build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, threads=threads, **fit
    )
    for (alone, history), joint, joint_history in zip(separate, together, histories):
        np.testing.assert_allclose(joint_history.loss, history.loss, rtol=1e-5)
        for (name, a), b in zip(alone.named_parameters(), joint.parameters()):
            # Adam and RMSprop divide each gradient by its running RMS, so on an element whose
            # gradient is ~1e-7 the kernels' rounding (~1e-9, gradients agree to 1e-6 of their
            # scale) moves a step of lr = 3e-3 by ~1 %: weights agree to a few 1e-5, not to 1e-6.
            torch.testing.assert_close(b, a, rtol=1e-4, atol=4e-5, msg=name)
        assert not joint.training
    # Different seeds really gave different models (the comparisons above are not vacuous).
    assert not torch.allclose(together[0].head.weight, together[1].head.weight)
    assert not torch.allclose(together[1].head.weight, together[2].head.weight)
    np.testing.assert_allclose(predict_batches(together[1], X), predict_batches(separate[1][0], X), atol=1e-4)
    return together


def test_train_many_fits_models_whose_split_batches_cost_enough_one_after_another():
    # 8 seed-config models trained in per-core groups took 1.14x the time of 8 split fits one
    # after another (ensemble.SEQUENTIAL_FIT_FLOPS): such models are never grouped, whatever the
    # cell; smaller ones that split still are where the cell trains by hand.
    cpu = torch.device("cpu")
    seed = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1)
    assert seed.forward_flops(60) * 64 == pytest.approx(5.39e8, rel=1e-3)
    for cell in ("lstm", "gru", "rnn"):
        model = build_model(1, cell=cell, layers=4, units=50, dropout=0.2, horizon=1)
        assert ensemble.fits_one_after_another(model, 2, 64, 60, cpu), cell
        assert not ensemble.trains_in_groups(model, 8, 2, 64, 60, "cpu"), cell
        assert not ensemble.fits_one_after_another(model, 1, 64, 60, cpu), cell  # one thread: no split
    small = build_model(1, cell="gru", layers=2, units=32, dropout=0.2, horizon=1)
    assert training.batch_split_workers(small, cpu, 2, True, 32, 60) == 2  # it splits, but costs less
    assert not ensemble.fits_one_after_another(small, 2, 32, 60, cpu)
    assert ensemble.trains_in_groups(small, 8, 2, 32, 60, "cpu")


def fits_on_threads(monkeypatch):
    """Record (thread, threads) of each train_model call train_many makes, and make a grouped fit
    fail; returns the record and the real train_model."""
    fits = []
    real_fit = ensemble.train_model

    def spy(model, *args, **kwargs):
        fits.append((threading.get_ident(), kwargs["threads"]))
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(ensemble, "train_model", spy)
    monkeypatch.setattr(ensemble, "_train_group", None)
    return fits, real_fit


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_train_many_fits_costly_split_models_one_after_another_each_as_alone(monkeypatch, cell):
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)  # every batch splits over both threads
    monkeypatch.setattr(ensemble, "SEQUENTIAL_FIT_FLOPS", 1.0)  # and costs enough
    fits, real_fit = fits_on_threads(monkeypatch)
    shape = dict(cell=cell, layers=2, units=8, dropout=0.25, horizon=1)
    fit = dict(epochs=2, batch_size=16, lr=3e-3)
    X, y = noisy_sine_windows()
    seeds = [3, 11, 12]
    together, histories = train_many([build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, threads=2, **fit)
    assert fits == [(threading.get_ident(), 2)] * 3  # on the calling thread, each on both threads
    for seed, joint, history in zip(seeds, together, histories):
        alone = build_model(1, seed=seed, **shape)
        # The same split fit as train_model's own, to the bit.
        assert_identical_fits(joint, history, alone, real_fit(alone, X, y, seed=seed, threads=2, **fit))
    assert not torch.allclose(together[0].head.weight, together[1].head.weight)


def test_train_many_of_split_lstms_below_the_cost_trains_groups_on_one_thread_each(monkeypatch):
    # 2xLSTM(32), lookback 60, batch 32 splits its batches over 2 threads but costs 4.8e7 FLOPs a
    # batch forward, under ensemble.SEQUENTIAL_FIT_FLOPS (grouped 1.15x faster than one after
    # another); its layers suit the compiled layer on one thread: train_many shares the models out
    # as one group per thread, each group on one thread, with compiled steps; each model still
    # equals its own (split) train_model fit.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    shape = dict(cell="lstm", layers=2, units=32, dropout=0.2, horizon=1)
    fit = dict(epochs=2, batch_size=32, lr=3e-3)
    model = build_model(1, **shape)
    assert training.batch_split_workers(model, torch.device("cpu"), 2, True, 32, 60) == 2
    assert ensemble.trains_in_groups(model, 3, 2, 32, 60, "cpu")
    X, y = noisy_sine_windows(lookback=60, n=96)
    seeds = [3, 11, 12]
    separate = []
    for seed in seeds:
        model = build_model(1, seed=seed, **shape)
        separate.append((model, train_model(model, X, y, seed=seed, threads=2, **fit)))
    groups, steps = [], []
    real_group, real_step = ensemble._train_group, native.train_step
    monkeypatch.setattr(ensemble, "_train_group", lambda m, *a, **k: groups.append((len(m), k["threads"])) or real_group(m, *a, **k))
    monkeypatch.setattr(native, "train_step", lambda *a, **k: steps.append(len(a[0])) or real_step(*a, **k))
    together, histories = train_many([build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, threads=2, **fit)
    assert sorted(groups) == [(1, 1), (2, 1)] and sorted(set(steps)) == [1, 2]
    for (alone, history), joint, joint_history in zip(separate, together, histories):
        np.testing.assert_allclose(joint_history.loss, history.loss, rtol=1e-5)
        for (name, a), b in zip(alone.named_parameters(), joint.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=4e-5, msg=name)


@pytest.mark.parametrize("clip_norm,optimizer", [(None, "adam"), (0.05, "adam"), (None, "rmsprop")])
def test_train_many_of_stacked_lstms_equals_separate_fits_model_by_model(monkeypatch, onednn_lstm, clip_norm, optimizer):
    # LSTMs are stacked by the hand-written fused_lstm off the CPU; here that path runs on the CPU,
    # against separate fits by oneDNN's kernel.
    monkeypatch.setattr(models.StackedRNN, "trains_by_hand_at", lambda self, batch, steps, threads=None: True)
    monkeypatch.setattr(models.StackedRNN, "trains_by_hand", lambda self, x: False)
    stacked = []
    real_group = ensemble._train_group
    def spy(models_, *a, **kw):
        assert kw.get("stack") is None  # the hand-written fused_lstm, as on CUDA
        stacked.append(len(models_))
        return real_group(models_, *a, **kw)

    monkeypatch.setattr(ensemble, "_train_group", spy)
    shape = dict(cell="lstm", layers=2, units=8, dropout=0.25, horizon=1)
    fit = dict(epochs=2, batch_size=16, lr=3e-3, optimizer=optimizer, clip_norm=clip_norm)
    train_many_against_separate_fits(shape, fit, threads=1)
    assert stacked == [3]


def test_train_many_fits_lstms_that_split_their_batches_one_after_another_each_as_alone(monkeypatch, onednn_lstm):
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)  # big enough to split over both threads
    fits, _ = fits_on_threads(monkeypatch)  # such LSTMs are never grouped
    # Dropout: each fit draws its masks from its own generator.
    shape = dict(cell="lstm", layers=2, units=8, dropout=0.25, horizon=1)
    train_many_against_separate_fits(shape, dict(epochs=2, batch_size=16, lr=3e-3), threads=2)
    assert fits == [(threading.get_ident(), 2)] * 3


@pytest.mark.parametrize(
    "threads,units,sizes,clip_norm,optimizer",
    [(2, 8, [2, 1], None, "adam"), (1, 8, [3], 0.05, "adam"), (2, 64, [2, 1], None, "rmsprop"), (2, 100, None, None, "adam")],
)
def test_train_many_fits_small_lstms_in_block_diagonal_groups_each_as_alone(
    monkeypatch, onednn_lstm, threads, units, sizes, clip_norm, optimizer
):
    groups = []
    real_group = ensemble._train_group

    def spy(models_, *args, **kwargs):
        assert kwargs["stack"] is models.block_diagonal_lstm
        groups.append((threading.get_ident(), len(models_), kwargs["threads"], kwargs["offset"]))
        return real_group(models_, *args, **kwargs)

    monkeypatch.setattr(ensemble, "_train_group", spy)
    fits = []
    real_fit = ensemble.train_model
    monkeypatch.setattr(ensemble, "train_model", lambda *a, **kw: fits.append(1) or real_fit(*a, **kw))
    shape = dict(cell="lstm", layers=2, units=units, dropout=0.25, horizon=1)
    fit = dict(epochs=2, batch_size=16, lr=3e-3, clip_norm=clip_norm, optimizer=optimizer)
    train_many_against_separate_fits(shape, fit, threads=threads)
    if sizes is None:  # 100 units: no two fit under BLOCK_DIAGONAL_UNITS, so each is fitted alone
        assert groups == [] and len(fits) == 3
        return
    assert fits == []
    # Groups of models 0.., in as many threads as there are groups (up to `threads`), the first
    # group on the calling thread; the threads start in either order.
    assert sorted((offset, size) for _, size, _, offset in groups) == list(zip(np.cumsum([0] + sizes[:-1]), sizes))
    assert {t for _, _, t, _ in groups} == {1}
    assert [i for i, _, _, offset in groups if offset == 0] == [threading.get_ident()]
    assert len({i for i, _, _, _ in groups}) == min(threads, len(sizes))


@pytest.mark.parametrize(
    "cell,nonlinearity,threads", [("gru", "tanh", 1), ("gru", "tanh", 2), ("rnn", "relu", 2), ("lstm", "tanh", 2)]
)
def test_train_many_of_gru_rnn_and_small_lstms_equals_separate_fits_also_in_thread_groups(
    monkeypatch, cell, nonlinearity, threads
):
    # Small LSTMs, GRUs and RNNs train by seqcast.native's compiled layer, K models per call.
    if not native.available():
        pytest.skip(f"seqcast.native did not build here: {native.unavailable_reason()}")
    groups = []
    real_group = ensemble._train_group

    def spy(models, *args, **kwargs):
        groups.append((threading.get_ident(), len(models)))
        assert kwargs.get("stack") is None  # the cell's hand-written stack: native_lstm, native_gru, native_rnn
        return real_group(models, *args, **kwargs)

    monkeypatch.setattr(ensemble, "_train_group", spy)
    # train_many's batches run as compiled steps (native.train_step, K models per call); the
    # separate fits, the reference, go through autograd.
    steps = []
    real_step = native.train_step
    monkeypatch.setattr(native, "train_step", lambda *a, **k: steps.append(len(a[0])) or real_step(*a, **k))
    monkeypatch.setattr(training, "compiled_steps_apply", lambda *a: False)
    shape = dict(cell=cell, nonlinearity=nonlinearity, layers=2, units=8, dropout=0.25, horizon=1)
    train_many_against_separate_fits(shape, dict(epochs=2, batch_size=16, lr=3e-3), threads=threads)
    assert sorted(set(steps)) == ([1, 2] if threads == 2 else [3])
    # With two threads the three models train as two groups (1 + 2) in two threads; else as one.
    if threads == 2:
        assert len({ident for ident, _ in groups}) == 2 and sorted(n for _, n in groups) == [1, 2]
    else:
        assert [n for _, n in groups] == [3]


@pytest.mark.parametrize(
    "cell,failing", [("lstm", 11), ("gru", 11), ("lstm", 3), ("gru", 3), ("lstm-groups", 11), ("lstm-groups", 3)]
)
def test_a_failing_lane_stops_train_many_at_once(monkeypatch, onednn_lstm, cell, failing):
    # One model fails at once (11: in the second thread; 3: in the calling thread). The other lane,
    # busy with its model for 300 epochs of 5 batches, must stop within a few batches (and the
    # failure be raised), not finish its share while the caller waits or has gone. Two LSTMs of 4
    # units are fitted side by side, each by train_model; four ("lstm-groups") in two
    # block-diagonal groups of two, like the GRUs.
    X, y = noisy_sine_windows(n=40)
    batches = []
    real_check = training.raise_if_cancelled

    def counting_check():
        batches.append(threading.get_ident())
        real_check()

    monkeypatch.setattr(training, "raise_if_cancelled", counting_check)  # train_model's batches
    monkeypatch.setattr(ensemble, "raise_if_cancelled", counting_check)  # _train_group's batches
    if cell == "lstm":
        real_fit = ensemble.train_model

        def fit(model, *args, seed, **kwargs):
            if seed == failing:
                raise TrainingDiverged("model 1 failed")
            return real_fit(model, *args, seed=seed, **kwargs)

        monkeypatch.setattr(ensemble, "train_model", fit)
    else:
        real_group = ensemble._train_group

        def fit(models, seeds, *args, **kwargs):
            if failing in seeds:
                raise TrainingDiverged("model 1 failed")
            return real_group(models, seeds, *args, **kwargs)

        monkeypatch.setattr(ensemble, "_train_group", fit)
    seeds = [3, 4, 11, 12] if cell == "lstm-groups" else [3, 11]
    shape = dict(cell=cell.removesuffix("-groups"), layers=1, units=4, dropout=0.0, horizon=1)
    models = [build_model(1, seed=s, **shape) for s in seeds]
    started = time.perf_counter()
    with pytest.raises(TrainingDiverged, match="model 1 failed"):
        train_many(models, X, y, seeds=seeds, epochs=300, batch_size=8, threads=2)
    assert len(batches) < 300 and len(set(batches)) <= 1  # (none when it failed before the other started)
    assert time.perf_counter() - started < 30


def test_train_many_rejects_mixed_shapes_and_cells_and_missing_seeds():
    X, y = noisy_sine_windows(n=20)
    lstm = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    wider = build_model(1, cell="lstm", layers=1, units=5, dropout=0.0, horizon=1, seed=0)
    gru = build_model(1, cell="gru", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    relu = build_model(1, cell="rnn", nonlinearity="relu", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    tanh = build_model(1, cell="rnn", nonlinearity="tanh", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    for mixed in ([lstm, wider], [lstm, gru], [relu, tanh]):
        with pytest.raises(ConfigError, match="one shape"):
            train_many(mixed, X, y, seeds=[0, 1], epochs=1)
    with pytest.raises(ConfigError, match="one seed per model"):
        train_many([lstm], X, y, seeds=[0, 1], epochs=1)


def test_threads_knob_applies_only_inside_the_call(monkeypatch):
    monkeypatch.setattr(training, "MIN_SLICE_FLOPS", 1.0)  # let the tiny model below be split
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # differs from the current count (conftest sets 1), so the check can fail
    seen = []
    with intra_op_threads(want):
        seen.append(torch.get_num_threads())
    assert seen == [want] and torch.get_num_threads() == before
    X, y = noisy_sine_windows(n=20)
    model = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    record = dict(on_epoch=lambda *_: seen.append(torch.get_num_threads()))
    train_model(model, X, y, epochs=1, threads=want, split_batches=False, **record)
    assert seen[-1] == want and torch.get_num_threads() == before
    # Splitting batches across 2 threads runs the calling thread single-threaded, then restores it.
    train_model(model, X, y, epochs=1, threads=2, **record)
    assert seen[-1] == 1 and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads"):
        train_model(model, X, y, epochs=1, threads=0)


def test_fused_adam_steps_like_the_per_tensor_reference():
    generator = torch.Generator().manual_seed(11)
    model = build_model(2, cell="lstm", layers=2, units=6, dropout=0.0, horizon=1, seed=3)
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    ours = training.make_optimizer("adam", model.parameters(), 1e-2)
    plain = torch.optim.Adam(reference, lr=1e-2, betas=(0.9, 0.999), eps=training.KERAS_EPSILON, foreach=False)
    assert ours.defaults["fused"] and not plain.defaults["fused"]
    for _ in range(30):
        for a, b in zip(model.parameters(), reference):
            grad = torch.randn(a.shape, generator=generator)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        plain.step()
    for a, b in zip(model.parameters(), reference):
        assert (a.detach() - b.detach()).abs().max().item() <= 1e-5 * b.detach().abs().max().item()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_predicts_split_across_threads_equal_the_whole_batch(monkeypatch, cell):
    model = build_model(1, cell=cell, layers=4, units=50, dropout=0.2, horizon=1, seed=0).eval()
    windows = np.random.default_rng(0).standard_normal((23, 60, 1)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(windows)).double().numpy()  # the whole batch at once
    seen = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward",
        lambda x, *rest: seen.append((threading.get_ident(), torch.get_num_threads(), len(x))) or forward(x, *rest),
    )
    # 23 windows: 23 · 8.4 MFLOP (LSTM) is worth two slices; 4 windows are not, and run on one thread.
    assert model.forward_flops(60) * 23 >= 2 * training.MIN_PREDICT_SLICE_FLOPS > model.forward_flops(60) * 4
    here = threading.get_ident()
    with intra_op_threads(2):
        split = predict_batches(model, windows)
        assert sorted((size, t == here, n) for t, n, size in seen) == [(11, True, 1), (12, False, 1)]
        seen.clear()
        small = predict_batches(model, windows[:4])
        told = predict_batches(model, windows, threads=1)
        assert [(t == here, n, size) for t, n, size in seen] == [(True, 1, 4), (True, 1, 23)]
        assert torch.get_num_threads() == 2  # restored after the calls
    np.testing.assert_allclose(split, reference, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(told, reference, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(small, reference[:4], rtol=1e-6, atol=1e-7)
    with pytest.raises(ConfigError, match="threads"):
        predict_batches(model, windows, threads=0)


FORK_AFTER_PREDICT = """
import multiprocessing, numpy as np, torch
from seqcast.models import build_model
from seqcast.training import predict_batches
torch.set_num_threads(2)
model = build_model(1, cell="lstm", layers=4, units=50, dropout=0.2, horizon=1, seed=0)
X = np.random.default_rng(0).standard_normal((20, 60, 1)).astype(np.float32)
parent = predict_batches(model, X)  # split across two threads: the pool now exists
def child(queue):
    queue.put(predict_batches(model, X))
context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
process.join(60)
hung = process.is_alive()
if hung:
    process.kill()
print("hung" if hung else ("same" if np.array_equal(queue.get(), parent) else "differs"))
"""


def test_a_forked_child_predicts_with_threads_of_its_own():
    # The prediction pool's threads do not survive fork(); a child reusing the parent's pool waited forever.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FORK_AFTER_PREDICT], capture_output=True, text=True, timeout=180)
    assert out.stdout.strip().splitlines()[-1] == "same", out.stderr[-2000:]


def test_train_many_shows_one_progress_bar_on_stderr_when_verbose(capsys):
    X, y = noisy_sine_windows(n=40)
    shape = dict(cell="gru", layers=1, units=4, dropout=0.0, horizon=1)

    def fit(**kwargs):
        train_many([build_model(1, seed=s, **shape) for s in (0, 1, 2)], X, y, seeds=[0, 1, 2], epochs=2, **kwargs)
        return capsys.readouterr()

    assert fit(threads=1).err == ""
    captured = fit(threads=1, verbose=1)
    assert captured.out == ""
    assert "epoch" in captured.err and "2/2" in captured.err and "(mean of 3 models)" in captured.err
    assert "(mean of models 1-1 of 3, in 2 threads)" in fit(threads=2, verbose=1).err


@pytest.mark.parametrize("dropout,cell", [(0.25, "lstm"), (0.0, "gru"), (0.25, "rnn")])
def test_unsplit_batches_in_one_compiled_call_train_as_batch_by_batch_to_the_bit(monkeypatch, dropout, cell):
    # After the first batch an unsplit fit on the compiled step runs its batches batches_per_call (at
    # least BATCHES_PER_CALL) at a time in one compiled call (native.train_batches); the reference is the same fit batch by
    # batch (native.train_step and the compiled Adam, each called from Python).
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    X, y = noisy_sine_windows(n=100)
    batches = -(-len(X) // 16)
    assert 2 < batches <= training.BATCHES_PER_CALL and len(X) % 16 > 0  # a short last batch too
    shape = dict(cell=cell, layers=2, units=8, dropout=dropout, horizon=1)
    fit = dict(epochs=3, batch_size=16, lr=3e-3, seed=2, threads=1)
    chunks, steps = [], []
    real, real_step = native.train_batches, native.train_step
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: chunks.append(k["count"]) or real(*a, **k))
    monkeypatch.setattr(native, "train_step", lambda *a, **k: steps.append(1) or real_step(*a, **k))
    model = build_model(1, seed=2, **shape)
    history = train_model(model, X, y, **fit)
    assert chunks == [batches - 1, batches, batches] and steps == [1]  # the first batch: torch's Adam
    monkeypatch.setattr(training, "_run_compiled_batches", lambda *a: 0)
    alone = build_model(1, seed=2, **shape)
    alone_history = train_model(alone, X, y, **fit)
    assert len(chunks) == 3 and len(steps) == 1 + 3 * batches  # the second fit: batch by batch
    assert_identical_fits(model, history, alone, alone_history)
    # Clipping keeps torch's optimizer step, and so batch by batch.
    chunks.clear()
    monkeypatch.setattr(training, "_run_compiled_batches", lambda *a: pytest.fail("clipped fits run batch by batch"))
    train_model(build_model(1, seed=2, **shape), X, y, clip_norm=1.0, **fit)


@pytest.mark.parametrize("dropout,cell", [(0.25, "lstm"), (0.0, "gru"), (0.25, "rnn")])
def test_group_batches_in_one_compiled_call_train_as_batch_by_batch_to_the_bit(monkeypatch, dropout, cell):
    # train_many's groups on the compiled layers run their batches after the first batches_per_call (at
    # least BATCHES_PER_CALL) at a time in one compiled call too; the reference is the group batch by batch.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    X, y = noisy_sine_windows(n=100)
    batches = -(-len(X) // 16)
    shape = dict(cell=cell, layers=2, units=8, dropout=dropout, horizon=1)
    fit = dict(epochs=3, batch_size=16, lr=3e-3, threads=1)
    seeds = [3, 11, 12]
    chunks = []
    real = native.train_batches
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: chunks.append(k["count"]) or real(*a, **k))
    together, histories = train_many([build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, **fit)
    assert chunks == [batches - 1, batches, batches]
    monkeypatch.setattr(ensemble, "adam_started", lambda *a: False)  # the batch-by-batch loop
    again, again_histories = train_many([build_model(1, seed=s, **shape) for s in seeds], X, y, seeds=seeds, **fit)
    assert len(chunks) == 3
    for got, want, got_history, want_history in zip(together, again, histories, again_histories):
        assert_identical_fits(got, got_history, want, want_history)
    assert not torch.equal(together[0].head.weight, together[1].head.weight)


def test_unsplit_compiled_fits_run_on_one_thread_unless_told(monkeypatch):
    # A fit too small to split, on the compiled steps, runs its steps on one intra-op thread when
    # the caller leaves threads to torch (as small predictions do), and on the count it is given.
    if not native.available():
        pytest.skip("seqcast.native did not build here")
    seen = []
    real, real_chunk = native.train_step, native.train_batches
    monkeypatch.setattr(native, "train_step", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    monkeypatch.setattr(native, "train_batches", lambda *a, **k: seen.append(torch.get_num_threads()) or real_chunk(*a, **k))
    X, y = noisy_sine_windows(n=60)
    before = torch.get_num_threads()
    losses = {}
    try:
        torch.set_num_threads(2)
        for threads in (None, 2):
            seen.clear()
            model = build_model(1, cell="lstm", layers=1, units=8, dropout=0.0, horizon=1, seed=0)
            assert training.batch_split_workers(model, torch.device("cpu"), 2, True, 16, X.shape[1]) == 1
            losses[threads] = train_model(model, X, y, epochs=2, batch_size=16, seed=1, threads=threads).loss
            assert seen and set(seen) == {1 if threads is None else 2}
            assert torch.get_num_threads() == 2  # put back
    finally:
        torch.set_num_threads(before)
    assert losses[None] == pytest.approx(losses[2], rel=1e-6)
