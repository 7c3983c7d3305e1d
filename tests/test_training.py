"""The fit loop: learning, determinism, Keras batch/loss semantics, early stopping, failures."""

import copy
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from seqcast.errors import ConfigError, DataError
from seqcast.models import build_model
from seqcast.training import (
    History,
    TrainingDiverged,
    make_optimizer,
    predict_batches,
    resolve_device,
    seed_everything,
    train_model,
)

LOOKBACK = 8


def sine_windows(n=150, phase=0.0):
    """Windows of a sine wave as a strided (non-contiguous) view, target = the next value."""
    series = np.sin(np.arange(n + LOOKBACK) * 0.3 + phase)
    X = sliding_window_view(series[:-1], LOOKBACK)[:, :, None]
    y = series[LOOKBACK:, None]
    return X, y


def tiny_model(seed=0, dropout=0.0, horizon=1, n_features=1):
    return build_model(
        n_features, cell="lstm", layers=1, units=8, dropout=dropout, horizon=horizon, seed=seed
    )


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_learns_a_sine_wave():
    X, y = sine_windows()
    assert not X.flags.c_contiguous
    model = tiny_model()
    history = train_model(model, X, y, epochs=12, batch_size=16, lr=1e-2, seed=0)
    assert len(history.loss) == 12
    assert history.loss[-1] < 0.1 * history.loss[0]
    rmse = np.sqrt(np.mean((predict_batches(model, X) - y) ** 2))
    assert rmse < 0.15


def test_same_seed_gives_identical_weights_and_predictions():
    X, y = sine_windows()
    runs = []
    for _ in range(2):
        model = tiny_model(seed=3, dropout=0.3)
        train_model(model, X, y, epochs=2, batch_size=32, seed=5)
        runs.append((weights(model), predict_batches(model, X)))
    (w1, p1), (w2, p2) = runs
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    np.testing.assert_array_equal(p1, p2)


def test_different_seed_gives_different_weights():
    X, y = sine_windows()
    a, b = tiny_model(seed=3, dropout=0.3), tiny_model(seed=3, dropout=0.3)
    train_model(a, X, y, epochs=2, batch_size=32, seed=5)
    train_model(b, X, y, epochs=2, batch_size=32, seed=6)
    assert not all(torch.equal(wa, wb) for wa, wb in zip(a.parameters(), b.parameters()))


@pytest.fixture
def step_counter():
    counter = {"steps": 0}

    def hook(optimizer, args, kwargs):
        counter["steps"] += 1

    handle = register_optimizer_step_post_hook(hook)
    yield counter
    handle.remove()


@pytest.mark.parametrize(("n", "batch_size"), [(150, 32), (128, 32), (5, 64)])
def test_one_step_per_batch_including_the_last_partial_one(step_counter, n, batch_size):
    X, y = sine_windows(n)
    train_model(tiny_model(), X, y, epochs=3, batch_size=batch_size)
    assert step_counter["steps"] == 3 * math.ceil(n / batch_size)


def test_epoch_loss_is_the_batch_size_weighted_mean_of_batch_losses():
    # y is a function of X, so each batch's loss can be recomputed from what the model saw.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(70, LOOKBACK, 2)).astype(np.float32)
    y = np.stack([X[:, -1, 0], X[:, -2, 1]], axis=1)
    model = tiny_model(dropout=0.4, horizon=2, n_features=2)
    batches = []

    def record(module, inputs, output):
        if module.training:
            x = inputs[0]  # (train_model passes the batch's dropout masks as a second argument)
            target = torch.stack([x[:, -1, 0], x[:, -2, 1]], dim=1)
            batches.append((len(x), torch.mean((output - target) ** 2).item()))

    model.register_forward_hook(record)
    history = train_model(model, X, y, epochs=2, batch_size=32, lr=1e-2)

    assert [size for size, _ in batches] == [32, 32, 6] * 2
    for epoch in range(2):
        epoch_batches = batches[3 * epoch : 3 * epoch + 3]
        weighted = sum(size * loss for size, loss in epoch_batches) / 70
        unweighted = sum(loss for _, loss in epoch_batches) / 3
        assert history.loss[epoch] == pytest.approx(weighted, rel=1e-6)
        assert history.loss[epoch] != pytest.approx(unweighted, rel=1e-6)


def test_early_stopping_stops_and_restores_the_best_weights():
    # Validation targets are half the series: val loss falls while predictions grow towards 0.5·y,
    # then rises as they approach y, so the best epoch is neither the first nor the last.
    X, y = sine_windows()
    model = tiny_model()
    snapshots, seen = {}, []

    def on_epoch(epoch, loss, val_loss):
        snapshots[epoch] = weights(model)
        seen.append((epoch, loss, val_loss))

    history = train_model(
        model, X, y, epochs=30, batch_size=16, lr=2e-3, early_stopping=2,
        X_val=X, y_val=0.5 * y, on_epoch=on_epoch,
    )
    assert history.stopped_early
    assert 1 < history.best_epoch < len(history.val_loss) < 30
    assert history.best_epoch == int(np.argmin(history.val_loss)) + 1
    assert len(history.val_loss) == history.best_epoch + 2
    assert seen == list(zip(range(1, len(history.loss) + 1), history.loss, history.val_loss))
    final = weights(model)
    assert all(torch.equal(final[k], snapshots[history.best_epoch][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[len(seen)][k]) for k in final)


def test_early_stopping_monitors_training_loss_without_validation_set():
    X, y = sine_windows()
    history = train_model(tiny_model(), X, y, epochs=4, batch_size=16, lr=1e-2, early_stopping=3)
    assert history.val_loss == []
    assert history.best_epoch == int(np.argmin(history.loss)) + 1
    assert not history.stopped_early


def test_clip_norm_bounds_the_gradient_norm():
    X, y = sine_windows()
    y = 50 * y  # far from the initial predictions: large gradients

    def max_norm(clip_norm):
        norms = []

        def hook(optimizer, args, kwargs):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
            norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

        handle = register_optimizer_step_pre_hook(hook)
        try:
            train_model(tiny_model(), X, y, epochs=1, batch_size=16, clip_norm=clip_norm)
        finally:
            handle.remove()
        return max(norms)

    assert max_norm(None) > 1.0
    assert max_norm(0.5) <= 0.5 * (1 + 1e-5)


def test_huge_learning_rate_raises_training_diverged():
    X, y = sine_windows()
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+ \(loss (nan|inf)\): try a lower --lr or --clip-norm 1.0"):
        train_model(tiny_model(), X, y, epochs=5, batch_size=16, lr=1e12, optimizer="sgd")


def test_infinite_input_raises_training_diverged_at_epoch_1():
    X, y = sine_windows()
    X = X.copy()
    X[10, 3, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=r"at epoch 1 \(loss nan\)"):
        train_model(tiny_model(), X, y, epochs=3)


def test_non_finite_validation_data_is_a_data_error():
    X, y = sine_windows()
    y_val = y.copy()
    y_val[0] = np.nan
    with pytest.raises(DataError, match="X_val or y_val contains NaN"):
        train_model(tiny_model(), X, y, epochs=1, X_val=X, y_val=y_val)


def test_optimizers_use_keras_defaults():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = make_optimizer("adam", params, 1e-3)
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["eps"] == 1e-7
    assert adam.defaults["betas"] == (0.9, 0.999)
    rmsprop = make_optimizer("rmsprop", params, 1e-3)
    assert (rmsprop.defaults["alpha"], rmsprop.defaults["eps"]) == (0.9, 1e-7)
    assert isinstance(make_optimizer("sgd", params, 0.1), torch.optim.SGD)
    with pytest.raises(ConfigError, match="optimizer must be one of adam, rmsprop, sgd"):
        make_optimizer("adagrad", params, 1e-3)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        make_optimizer("adam", params, 0.0)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("adam", lambda ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-7, fused=True)),
        ("rmsprop", lambda ps, lr: torch.optim.RMSprop(ps, lr=lr, alpha=0.9, eps=1e-7)),
        ("sgd", lambda ps, lr: torch.optim.SGD(ps, lr=lr)),
    ],
)
def test_optimizers_step_as_torch_s_own_classes_to_the_bit(name, reference):
    # make_optimizer's classes run torch's code without its dynamo wrappers: every parameter, every
    # state tensor and the state dict must be torch's own, and a hook still runs at every step.
    generator = torch.Generator().manual_seed(7)
    shapes = [(200, 3), (200, 50), (200,), (1, 50), (1,)]
    theirs = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    optimizers = make_optimizer(name, ours, 3e-3), reference(theirs, 3e-3)
    assert isinstance(optimizers[0], type(optimizers[1]))
    calls = []
    optimizers[0].register_step_post_hook(lambda *args: calls.append(1))
    for step in range(30):
        grads = [torch.randn(s, generator=generator) * 10 ** (step % 3 - 1) for s in shapes]
        for params, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    assert len(calls) == 30
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    mine, torch_s = (o.state_dict() for o in optimizers)
    assert mine["param_groups"] == torch_s["param_groups"]
    for index, state in torch_s["state"].items():
        assert state.keys() == mine["state"][index].keys()
        assert all(torch.equal(mine["state"][index][k], v) for k, v in state.items())
    resumed = make_optimizer(name, ours, 3e-3)
    resumed.load_state_dict(copy.deepcopy(torch_s))  # a state dict holds the live tensors
    for params, optimizer in zip((ours, theirs), (resumed, optimizers[1])):
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_a_fit_does_not_import_torch_dynamo():
    # torch imports torch._dynamo on the first call of its optimizers' wrapped methods (1-1.5 s);
    # seqcast's fits, with any optimizer, and their checkpoints' state dicts leave it unimported.
    code = (
        "import sys, numpy as np\n"
        "from seqcast.models import build_model\n"
        "from seqcast.training import make_optimizer, train_model\n"
        "X = np.random.default_rng(0).normal(size=(40, 10, 1)).astype('float32')\n"
        "y = X[:, -1, :]\n"
        "for name in ('adam', 'rmsprop', 'sgd'):\n"
        "    model = build_model(1, cell='lstm', layers=1, units=4, dropout=0.2, horizon=1, seed=0)\n"
        "    train_model(model, X, y, epochs=2, batch_size=16, optimizer=name)\n"
        "    make_optimizer(name, model.parameters(), 1e-3).state_dict()\n"
        "print('DYNAMO', 'torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "DYNAMO False"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": 0}, ConfigError, "epochs must be an integer >= 1"),
        ({"batch_size": 0}, ConfigError, "batch_size must be an integer >= 1"),
        ({"loss": "hinge"}, ConfigError, "loss must be one of mse, mae, huber"),
        ({"clip_norm": 0}, ConfigError, "clip_norm must be a positive number"),
        ({"early_stopping": 0}, ConfigError, "early_stopping must be an integer >= 1"),
        ({"X_val": np.zeros((2, LOOKBACK, 1))}, ConfigError, "X_val and y_val must be given together"),
        ({"y": np.zeros((3, 1))}, DataError, "X has 150 samples but y has 3"),
        ({"y": np.zeros((150, 2))}, DataError, "y has 2 target columns but the model predicts 1"),
        ({"X": np.zeros((150, LOOKBACK))}, DataError, r"X must have shape \(samples, lookback, features\)"),
    ],
)
def test_invalid_arguments(kwargs, error, message):
    X, y = sine_windows()
    arguments = {"X": X, "y": y, **kwargs}
    with pytest.raises(error, match=message):
        train_model(tiny_model(), arguments.pop("X"), arguments.pop("y"), **arguments)


@pytest.mark.parametrize("loss", ["mae", "huber"])
def test_other_losses_train(loss):
    X, y = sine_windows()
    history = train_model(tiny_model(), torch.tensor(X), y[:, 0], epochs=3, batch_size=16, lr=1e-2, loss=loss)
    assert history.loss[-1] < history.loss[0]


def test_predict_moves_the_model_only_where_it_is_not_on_the_device(monkeypatch):
    from seqcast import training

    model = build_model(1, cell="lstm", layers=1, units=4, dropout=0.0, horizon=1, seed=0)
    moved = []
    monkeypatch.setattr(model, "to", lambda *args, **kwargs: moved.append(args) or model)
    X = np.random.default_rng(0).normal(size=(5, 6, 1)).astype(np.float32)
    predict_batches(model, X)
    assert moved == []  # already on the CPU: Module.to's walk skipped
    elsewhere = torch.nn.Linear(2, 1, device="meta")
    monkeypatch.setattr(elsewhere, "to", lambda *args, **kwargs: moved.append(args) or elsewhere)
    training._move_to(elsewhere, torch.device("cpu"))
    assert moved == [(torch.device("cpu"),)]


def test_predict_batches_is_deterministic_float64_and_independent_of_batch_size():
    X, _ = sine_windows()
    model = tiny_model(dropout=0.5)
    model.train()
    small = predict_batches(model, X, batch_size=7)
    large = predict_batches(model, X)
    assert small.dtype == np.float64 and small.shape == (150, 1)
    np.testing.assert_allclose(small, large, atol=1e-6)
    with pytest.raises(DataError, match="no samples"):
        predict_batches(model, X[:0])


def test_verbose_progress_goes_to_stderr(capsys):
    X, y = sine_windows()
    train_model(tiny_model(), X, y, epochs=2, verbose=1)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "epoch" in captured.err and "2/2" in captured.err and "loss" in captured.err


def test_silent_by_default(capsys):
    X, y = sine_windows()
    train_model(tiny_model(), X, y, epochs=1)
    assert capsys.readouterr() == ("", "")


def test_history_round_trips_through_a_dict():
    history = History(loss=[0.5, 0.25], val_loss=[0.6, 0.3], epoch_seconds=[0.1, 0.1], best_epoch=2, stopped_early=False)
    assert History.from_dict(history.to_dict()) == history


def test_seed_everything_seeds_all_generators():
    generator = seed_everything(11)
    first = (np.random.random(), torch.rand(1).item(), torch.randperm(10, generator=generator).tolist())
    generator = seed_everything(11)
    second = (np.random.random(), torch.rand(1).item(), torch.randperm(10, generator=generator).tolist())
    assert first == second


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match="not a valid torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


# ---------------------------------------------------------------- the allocator (keep_freed_memory)
_FAULTS_SCRIPT = """
import resource, numpy as np
from seqcast.models import build_model
from seqcast.training import keep_freed_memory, train_model
series = np.random.default_rng(0).standard_normal(400).astype(np.float32).cumsum()[:, None]
X = np.lib.stride_tricks.sliding_window_view(series, 60, axis=0).transpose(0, 2, 1)[:-1]
model = build_model(1, cell="lstm", layers=2, units=50, dropout=0.2, horizon=1, seed=0)
train_model(model, X, series[60:], epochs=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
train_model(model, X, series[60:], epochs=6)
print(keep_freed_memory(), "|", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _fit_faults(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SEQCAST_MALLOC"}
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], env={**clean, **env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    state, faults = done.stdout.strip().rsplit("|", 1)
    return state.strip(), int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_training_reuses_freed_memory_instead_of_faulting_it_in_again():
    # The reference is the same fit at glibc's default mmap threshold (128 KiB) held fixed, which
    # keep_freed_memory leaves alone because the environment sets it: there oneDNN's per-call
    # workspaces are mapped afresh and every page faults (257,000-261,000 minor faults for these
    # 6 epochs here), with keep_freed_memory 430-2,300. Not SEQCAST_MALLOC=default: glibc then
    # raises its threshold by itself whenever the fit happens to free a large mapped block, so
    # the count varies (59,000-76,000 for 6 epochs, 5,000-48,000 for 2), though it stays far
    # above the bound below: a keep_freed_memory that did not call mallopt fails this test.
    tuned_state, tuned = _fit_faults()
    plain_state, plain = _fit_faults(MALLOC_MMAP_THRESHOLD_="131072")
    assert tuned_state == "set"
    assert plain_state == "left alone: MALLOC_MMAP_THRESHOLD_ set"
    assert tuned * 25 < plain, (tuned, plain)


def test_keep_freed_memory_leaves_a_users_malloc_settings_alone(monkeypatch):
    from seqcast import training

    for name, value in (("MALLOC_MMAP_THRESHOLD_", "65536"), ("MALLOC_TOP_PAD_", "0"),
                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")):
        with monkeypatch.context() as patch:
            for other in training._MALLOC_ENV + ("GLIBC_TUNABLES", "SEQCAST_MALLOC"):
                patch.delenv(other, raising=False)
            patch.setenv(name, value)
            assert training._tune_malloc() == f"left alone: {name} set"
    monkeypatch.setenv("SEQCAST_MALLOC", "Default")
    assert training._tune_malloc() == "left alone: SEQCAST_MALLOC=default"
