"""Reliability promises of docs/reliability.md: safe artifacts, atomic writes, no silent overwrites,
clean failures when training diverges or is interrupted, determinism, and windows that are views."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone

from seqcast import ArtifactError, Forecaster, load_csv
from seqcast import artifacts
from seqcast.artifacts import atomic_write_bytes, atomic_write_text, read_model_dir, write_model_dir
from seqcast.backtest import MODEL, read_backtest_csv, wide_predictions
from seqcast.baselines import LinearAR
from seqcast.cli import main
from seqcast.conformal import EnsembleForecaster
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN
from seqcast.errors import DataError
from seqcast.many import backtest_many, find_series
from seqcast.windows import supervised_windows

from .conftest import TINY

CLI_TINY = ["--epochs", "1", "--layers", "1", "--units", "4", "--lookback", "3", "--device", "cpu", "--quiet"]
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def short_csv(tmp_path_factory):
    """The first 120 rows of the bundled file: enough to train, quick to train on."""
    path = tmp_path_factory.mktemp("data") / "short.csv"
    path.write_text("\n".join(GOOGLE_TRAIN.read_text().splitlines()[:121]) + "\n")
    return path


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"Open": 100 + np.cumsum(rng.normal(0, 1, 60))}, index=pd.bdate_range("2021-01-01", periods=60))
    model = Forecaster(**TINY).fit(frame)
    path = tmp_path_factory.mktemp("models") / "good"
    model.save(path)
    return path


@pytest.fixture
def model_copy(saved_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(saved_model, path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- artifacts are verified before use


def test_saved_model_manifest_lists_every_file_with_its_sha256(saved_model):
    manifest = json.loads((saved_model / "manifest.json").read_text())
    from seqcast import __version__

    assert manifest["seqcast_version"] == __version__
    listed = manifest["files"]
    assert sorted(listed) == sorted(n for n in _files(saved_model) if n != "manifest.json")
    for name, digest in listed.items():
        assert digest == _sha(saved_model / name)


@pytest.mark.parametrize("name", ["weights.safetensors", "config.json", "scaler.json", "state.json"])
def test_tampered_file_is_refused_naming_it(model_copy, name):
    path = model_copy / name
    data = bytearray(path.read_bytes())
    # Change one byte in the middle: for JSON a digit or letter, still a valid-looking file.
    i = len(data) // 2
    data[i] = ord("7") if data[i] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name) as exc:
        Forecaster.load(model_copy)
    assert "sha256" in str(exc.value)


@pytest.mark.parametrize("name", ["weights.safetensors", "state.json"])
def test_truncated_file_is_refused_naming_it(model_copy, name):
    path = model_copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ArtifactError, match=name):
        Forecaster.load(model_copy)


@pytest.mark.parametrize("name", ["weights.safetensors", "scaler.json", "manifest.json"])
def test_missing_file_is_refused_naming_it(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")) as exc:
        Forecaster.load(model_copy)
    assert "missing" in str(exc.value)


def test_cli_predict_with_a_tampered_model_exits_2_naming_the_file(model_copy, tmp_path, capsys):
    (model_copy / "scaler.json").write_text((model_copy / "scaler.json").read_text().replace("0", "1", 1))
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(model_copy), "--data", str(GOOGLE_TEST), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcast: error: ") and "scaler.json" in err and "Traceback" not in err
    assert not out.exists()


class _Payload:
    """Unpickling this creates a folder: proof that something was unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_weights_file_is_refused_and_never_unpickled(model_copy, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    weights = model_copy / "weights.safetensors"
    # What torch.save writes (a zip of pickles) with a payload that acts when unpickled; the
    # manifest is updated too, as an attacker would, so only the format check can stop it.
    state = {k: v for k, v in Forecaster.load(model_copy).model_.state_dict().items()}
    state["payload"] = _Payload(str(marker))
    torch.save(state, weights)
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = _sha(weights)
    (model_copy / "manifest.json").write_text(json.dumps(manifest))

    def forbidden(*args, **kwargs):
        raise AssertionError("seqcast tried to unpickle a file")

    for module, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(ArtifactError, match="weights.safetensors is not a valid safetensors file"):
        Forecaster.load(model_copy)
    assert not marker.exists()


def test_plain_pickle_weights_are_refused(model_copy, monkeypatch):
    weights = model_copy / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"rnn.weight_ih_l0": np.zeros((16, 1))}))
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = _sha(weights)
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        read_model_dir(model_copy, json_names=("config.json",))


# ---------------------------------------------------------------- writes are atomic


def test_crash_at_rename_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "good\n")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write_text(target, "new but never finished\n")
    assert target.read_text() == "good\n"
    assert _files(tmp_path) == ["metrics.json"]


def test_interrupt_mid_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "predictions.csv"
    atomic_write_bytes(target, b"date,predicted\n2020-01-01,1.0\n")

    def interrupted(fd):
        raise KeyboardInterrupt

    # fsync runs after the bytes were written to the temporary file and before the rename.
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"x" * 100_000)
    assert target.read_bytes() == b"date,predicted\n2020-01-01,1.0\n"
    assert _files(tmp_path) == ["predictions.csv"]


def test_crash_while_writing_a_model_folder_keeps_the_old_model(saved_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    before = {n: _sha(folder / n) for n in _files(folder)}

    def half_written(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x00" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "save_file", half_written)
    with pytest.raises(OSError):
        write_model_dir(folder, json_files={"config.json": {"a": 1}}, tensors={"w": torch.zeros(2)})
    assert {n: _sha(folder / n) for n in _files(folder)} == before
    assert _files(tmp_path) == ["model"]
    Forecaster.load(folder)


def test_crash_while_swapping_in_a_model_folder_restores_the_old_one(saved_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(saved_model, folder)
    before = {n: _sha(folder / n) for n in _files(folder)}
    real_replace = os.replace
    calls = []

    def fail_second_folder_rename(src, dst):
        if Path(src).is_dir():
            calls.append((src, dst))
            # 1st: old folder -> backup; 2nd: staging -> folder (fails); 3rd: backup -> folder.
            if len(calls) == 2:
                raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_second_folder_rename)
    with pytest.raises(OSError):
        write_model_dir(folder, json_files={"config.json": {"a": 1}}, tensors={"w": torch.zeros(2)})
    assert len(calls) == 3
    assert {n: _sha(folder / n) for n in _files(folder)} == before
    assert _files(tmp_path) == ["model"]


def test_saving_into_a_folder_of_other_files_is_refused_and_keeps_them(saved_model, tmp_path, monkeypatch):
    model = Forecaster.load(saved_model)
    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    (folder / "data.csv").write_text("mine")
    (folder / "sub" / "notes.txt").write_text("also mine")
    with pytest.raises(ArtifactError, match=r"project already holds files that seqcast did not write.*new or empty folder"):
        model.save(folder)
    assert (folder / "data.csv").read_text() == "mine" and (folder / "sub" / "notes.txt").read_text() == "also mine"
    assert _files(tmp_path) == ["project"]  # no staging folder left behind
    a_file = tmp_path / "model.txt"
    a_file.write_text("a file")
    with pytest.raises(ArtifactError, match="model.txt exists and is not a folder"):
        model.save(a_file)
    assert a_file.read_text() == "a file"
    # "." (the working folder) or a folder that holds it would leave the process in a deleted folder
    monkeypatch.chdir(folder / "sub")
    for where in (".", "..", folder):
        with pytest.raises(ArtifactError, match="is the working folder or holds it: save into a sub-folder"):
            model.save(where)
    assert (folder / "data.csv").read_text() == "mine" and Path.cwd() == folder / "sub"


def test_a_model_folder_or_an_empty_folder_is_replaced(saved_model, tmp_path, monkeypatch):
    model = Forecaster.load(saved_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    model.save(empty)
    model.save(empty)  # now a model folder: replaced whole
    assert Forecaster.load(empty).predict(model.context_).equals(model.predict(model.context_))
    monkeypatch.chdir(tmp_path)
    model.save("relative")
    assert (tmp_path / "relative" / "manifest.json").is_file()
    # replace=True (the command line's --force) replaces a folder of other files too
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("mine")
    model.save(other, replace=True)
    assert _files(other) == _files(saved_model)


# ---------------------------------------------------------------- no silent overwrites


@pytest.mark.parametrize("verb", ["run", "train", "predict"])
def test_existing_outputs_are_not_overwritten_without_force(verb, saved_model, short_csv, tmp_path, capsys):
    if verb == "predict":
        out = tmp_path / "predictions.csv"
        out.write_text("precious\n")
        argv = ["predict", "--model", str(saved_model), "--data", str(GOOGLE_TEST), "--out", str(out), "--quiet"]
        kept = out
    else:
        out = tmp_path / "out"
        out.mkdir()
        kept = out / "metrics.json"
        kept.write_text("precious\n")
        argv = [verb, "--data", str(short_csv), "--test-from", "2012-06-01", "--out", str(out), *CLI_TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcast: error: ") and "--force" in err and str(out) in err
    assert kept.read_text() == "precious\n"
    assert main([*argv, "--force"]) == 0
    if verb == "predict":
        assert pd.read_csv(out).columns.tolist() == ["date", "actual", "predicted"]


# ---------------------------------------------------------------- failed training leaves nothing


@pytest.mark.parametrize("verb", ["train", "run"])
def test_diverging_training_exits_2_naming_epoch_and_fixes_and_writes_nothing(verb, short_csv, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [verb, "--data", str(short_csv), "--test-from", "2012-06-01", "--out", str(out), *CLI_TINY, "--lr", "1e30"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcast: error: training diverged at epoch 1 ")
    assert "--lr" in err and "--clip-norm" in err and "Traceback" not in err
    assert not out.exists()
    assert _files(tmp_path) == []


def test_huge_prices_do_not_crash_training(tmp_path, capsys):
    """Numbers near float64's limit: the scaler keeps them in [0, 1], so training is ordinary."""
    csv = tmp_path / "huge.csv"
    rng = np.random.default_rng(0)
    values = 1e300 * (1 + np.abs(rng.normal(0, 0.1, 40)))
    csv.write_text("Date,Open\n" + "".join(f"2020-01-{i + 1:02d},{v!r}\n" if i < 31 else f"2020-02-{i - 30:02d},{v!r}\n" for i, v in enumerate(values)))
    out = tmp_path / "m"
    code = main(["train", "--data", str(csv), "--out", str(out), *CLI_TINY])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (code == 0 and (out / "manifest.json").is_file()) or (code == 2 and err.startswith("seqcast: error: ") and not out.exists())


def test_ctrl_c_during_training_exits_130_with_a_clear_message(short_csv, tmp_path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Forecaster, "fit", interrupted)
    out = tmp_path / "out"
    assert main(["run", "--data", str(short_csv), "--test-from", "2012-06-01", "--out", str(out), *CLI_TINY]) == 130
    err = capsys.readouterr().err
    assert err.startswith("seqcast: interrupted") and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------- determinism


def _run_subprocess(out: Path, data: Path, seed: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "seqcast.cli", "run", "--out", str(out), "--data", str(data),
            "--test-from", "2012-05-01", "--seed", str(seed), "--epochs", "2", "--layers", "2", "--units", "4",
            "--lookback", "5", "--dropout", "0.3", "--val-fraction", "0.1", "--device", "cpu", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _comparable_metrics(path: Path) -> dict:
    """metrics.json without its wall-clock timings, the only fields allowed to differ."""
    doc = json.loads(path.read_text())
    doc.pop("train_seconds")
    doc["history"].pop("epoch_seconds")
    return doc


def test_same_seed_gives_bit_identical_outputs_in_two_processes(short_csv, tmp_path):
    """Dropout, shuffling, validation split and two layers all draw random numbers."""
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [_run_subprocess(out, short_csv, seed=11) for out in (a, b)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert (a / "predictions.csv").read_bytes() == (b / "predictions.csv").read_bytes()
    assert _comparable_metrics(a / "metrics.json") == _comparable_metrics(b / "metrics.json")
    assert (a / "model" / "weights.safetensors").read_bytes() == (b / "model" / "weights.safetensors").read_bytes()


def test_different_seeds_give_different_models(short_csv):
    frame = load_csv(short_csv)
    params = dict(TINY, dropout=0.3)
    p1, p1_again, p2 = (Forecaster(**params, seed=s).fit(frame).predict(frame) for s in (1, 1, 2))
    np.testing.assert_array_equal(p1.to_numpy(), p1_again.to_numpy())
    assert not np.allclose(p1.dropna(), p2.dropna())


def _backtest_argv(out: Path, data: Path, seed: int) -> list[str]:
    return ["backtest", "--out", str(out), "--data", str(data), "--folds", "2", "--ensemble", "2",
            "--calibration-fraction", "0.3", "--seed", str(seed), "--epochs", "2", "--layers", "2", "--units", "4",
            "--lookback", "5", "--dropout", "0.3", "--device", "cpu", "--quiet"]


def _comparable_leaderboard(path: Path) -> dict:
    """leaderboard.json without each fold's wall-clock seconds, the only field allowed to differ."""
    doc = json.loads(path.read_text())
    for fold in doc["folds"]:
        fold.pop("seconds")
    return doc


def test_same_seed_gives_bit_identical_ensemble_backtests_in_two_processes(short_csv, tmp_path):
    """Walk-forward refits, ensemble members (dropout, shuffling) and conformal intervals all repeat
    exactly, in a fresh process and in this one, whose random generators earlier tests have used."""
    a, b = tmp_path / "a", tmp_path / "b"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seqcast.cli", *_backtest_argv(a, short_csv, seed=11)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert main(_backtest_argv(b, short_csv, seed=11)) == 0
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    for name in ("backtest.csv", "intervals.csv", "leaderboard.csv", "folds.csv", "per_step.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _comparable_leaderboard(a / "leaderboard.json") == _comparable_leaderboard(b / "leaderboard.json")
    # Guard against comparing two empty or constant files: the model made real, varying forecasts.
    predicted = pd.read_csv(a / "backtest.csv").query("model == 'seqcast'")["predicted"]
    assert len(predicted) == 80 and predicted.nunique() > 40
    assert pd.read_csv(a / "intervals.csv")["std"].gt(0).all()


def test_ensemble_members_follow_their_own_seeds(short_csv):
    """Member i of an ensemble seeded s is the model seeded s + i: the same seed repeats every member
    bit for bit, a different seed gives different members, and members of one ensemble differ."""
    frame = load_csv(short_csv)
    member = Forecaster(**dict(TINY, dropout=0.3))

    def members(seed: int) -> pd.DataFrame:
        model = EnsembleForecaster(clone(member).set_params(seed=seed), n_members=2, calibration_fraction=0.25)
        return model.fit(frame).predict_members(frame).dropna()

    first, again, shifted, other = members(4), members(4), members(5), members(40)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert not np.allclose(first["m1"], first["m2"])
    # Seeds 4, 5 and 5, 6: the shared seed gives the identical model, the others differ.
    np.testing.assert_array_equal(first["m2"].to_numpy(), shifted["m1"].to_numpy())
    assert not np.allclose(first["m1"], shifted["m1"]) and not np.allclose(first["m2"], shifted["m2"])
    for mine in first:
        for theirs in other:
            assert not np.allclose(first[mine], other[theirs])


# ---------------------------------------------------------------- large inputs


def test_training_windows_are_views_of_the_series_not_copies():
    values = np.random.default_rng(0).normal(size=(10_000, 3))
    X, y = supervised_windows(values, values[:, 0], lookback=60)
    assert X.shape == (10_000 - 60, 60, 3)
    assert np.shares_memory(X, values) and np.shares_memory(y, values)
    # A copy would hold 60 times the data; the view holds none of its own.
    assert X.base is not None and not X.flags.owndata
    np.testing.assert_array_equal(X[1234], values[1234:1294])
    assert y[1234, 0] == values[1294, 0]


def test_training_keeps_windows_as_a_view_of_one_float32_copy_of_the_series():
    """train_model used to copy the windows into one contiguous tensor: every row lookback times
    (915 MiB for 1,000,000 rows of 4 inputs at lookback 60). Now the tensor is a strided view of
    the series' rows, with the same values, and training on it is bit for bit training on a copy."""
    from seqcast.models import build_model
    from seqcast.training import _prepare, train_model

    values = np.random.default_rng(1).normal(size=(500, 3))
    X, y = supervised_windows(values, values[:, 0], lookback=20)
    X_t, y_t = _prepare(X, y, torch.device("cpu"), 1, ("X", "y"))
    assert X_t.untyped_storage().nbytes() == (len(X) + 20 - 1) * 3 * 4  # the rows once, float32
    assert torch.equal(X_t, torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)))
    index = torch.tensor([5, 0, 479, 17])
    assert torch.equal(X_t[index], torch.from_numpy(X[index.numpy()].astype(np.float32)))
    # Arrays that are not step-1 windows of one C-contiguous series are copied whole.
    for other in (np.ascontiguousarray(X), X[::2], X[:, ::-1], np.asfortranarray(X)):
        O_t, _ = _prepare(other, y[: len(other)], torch.device("cpu"), 1, ("X", "y"))
        assert O_t.is_contiguous() and torch.equal(O_t, torch.from_numpy(np.ascontiguousarray(other, dtype=np.float32)))

    def fit(windows):
        model = build_model(3, cell="lstm", layers=2, units=8, dropout=0.2, horizon=1, seed=3)
        history = train_model(model, windows, y, epochs=2, batch_size=32, seed=3)
        return model.state_dict(), history.loss

    (view_state, view_loss), (copy_state, copy_loss) = fit(X), fit(np.ascontiguousarray(X))
    assert view_loss == copy_loss
    assert all(torch.equal(view_state[k], copy_state[k]) for k in view_state)


def test_large_file_errors_still_name_the_exact_row(tmp_path):
    n = 50_000
    dates = pd.bdate_range("1900-01-01", periods=n)
    opens = np.round(100 + np.arange(n) * 0.01, 4).astype(str)
    opens[43_210] = "12..5"  # data row 43,211 is file row 43,212 (the header is row 1)
    path = tmp_path / "big.csv"
    path.write_text("Date,Open\n" + "\n".join(f"{d:%Y-%m-%d},{o}" for d, o in zip(dates, opens)) + "\n")
    with pytest.raises(DataError, match=r"big\.csv row 43212, column Open: \"12\.\.5\" is not a number"):
        load_csv(path)


def _price_file(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("1990-01-01", periods=n)
    opens = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    volumes = rng.integers(0, 10**9, n)
    return "Date,Open,Close,Volume,Symbol\n" + "".join(
        f"{d:%Y-%m-%d}, {float(o)!r},{o * 1.001:.9f},{v},X\n" for d, o, v in zip(dates, opens, volumes)
    )


def test_fast_path_reads_exactly_what_the_careful_csv_path_reads(tmp_path, monkeypatch):
    """A well-formed file goes through pandas's C parser; a blank line sends the same content
    through the csv module. Both must give the identical frame and identical error messages."""
    import seqcast.data as data

    text = _price_file(3_000)
    plain, careful = tmp_path / "plain.csv", tmp_path / "careful.csv"
    plain.write_text(text)
    careful.write_text(text + "\n")
    real_reader = data.csv.reader
    monkeypatch.setattr(data.csv, "reader", lambda *a, **k: pytest.fail("took the csv module path"))
    fast = load_csv(plain)
    monkeypatch.setattr(data.csv, "reader", real_reader)
    slow = load_csv(careful)
    pd.testing.assert_frame_equal(fast, slow, check_exact=True)
    assert fast["Symbol"].tolist() == ["X"] * 3_000

    for bad, expected in [("abc", r'row 1501, column Open: "abc" is not a number'),
                          ("", r"row 1501, column Open is empty"),
                          ("-3", r"row 1501, column Open: -3(\.0)? is not a positive price")]:
        lines = text.splitlines()
        cells = lines[1500].split(",")
        cells[1] = bad
        lines[1500] = ",".join(cells)
        plain.write_text("\n".join(lines) + "\n")
        careful.write_text("\n".join(lines) + "\n\n")
        messages = []
        for path in (plain, careful):
            with pytest.raises(DataError, match=expected) as exc:
                load_csv(path)
            messages.append(str(exc.value).replace(path.name, "FILE"))
        assert messages[0] == messages[1]


def _three_paths(monkeypatch, plain: Path, careful: Path, read=load_csv):
    """What ``read`` gives (a frame, or a DataError's message with the file's name replaced) for
    ``plain`` through the streamed path in blocks of 7 rows (the whole-text paths made to fail),
    through the whole-text C-parser path (the streamed one turned off), and for ``careful`` (the
    same content plus a blank line) through the csv module."""
    import seqcast.data as data

    def outcome(path):
        try:
            return read(path)
        except DataError as exc:
            return str(exc).replace(path.name, "FILE")

    monkeypatch.setattr(data, "_BLOCK_ROWS", 7)
    monkeypatch.setattr(data, "_SCAN_BYTES", 64)  # scan pieces that end inside a line
    real_plain, real_blocks = data._read_plain, data._read_plain_blocks
    results = []
    with monkeypatch.context() as m:
        m.setattr(data, "_read_plain", lambda *a: pytest.fail("read the whole text"))
        m.setattr(data.csv, "reader", lambda *a, **k: pytest.fail("took the csv module path"))
        streamed = None
        try:
            streamed = outcome(plain)
        except pytest.fail.Exception:
            pass  # the streamed path declined: it must when a cell is to be reported
        results.append(streamed)
    monkeypatch.setattr(data, "_read_plain_blocks", lambda source: None)
    results.append(outcome(plain))
    monkeypatch.setattr(data, "_read_plain_blocks", real_blocks)
    assert data._read_plain is real_plain
    results.append(outcome(careful))
    return results


def _edited_pair(tmp_path, column: int, edit: dict[int, object]) -> tuple[Path, Path]:
    """plain.csv and careful.csv (the same plus a blank line) of ``_price_file(500)``, the cell in
    ``column`` of each line ``i`` of ``edit`` replaced by ``edit[i]`` (a text, or a function of the
    old text)."""
    lines = _price_file(500).splitlines()
    for i, new in edit.items():
        cells = lines[i].split(",")
        cells[column] = new(cells[column]) if callable(new) else new
        lines[i] = ",".join(cells)
    plain, careful = tmp_path / "plain.csv", tmp_path / "careful.csv"
    plain.write_text("\n".join(lines) + "\n")
    careful.write_text("\n".join(lines) + "\n\n")
    return plain, careful


def test_streamed_reading_gives_what_the_whole_file_paths_give(tmp_path, monkeypatch):
    """A plain file is read in blocks of rows, each block's dates parsed as it arrives; the frame
    is exactly the whole-file paths' (dates, float, integer and text columns), also when a later
    block turns an integer column into floats."""
    text = _price_file(500)
    plain, careful = tmp_path / "plain.csv", tmp_path / "careful.csv"
    for name, content in [("as written", text), ("CRLF, no final line break", text.replace("\n", "\r\n")[:-2])]:
        plain.write_text(content, newline="")
        careful.write_text(content + "\r\n\r\n" if "\r" in content else content + "\n", newline="")
        streamed, whole, slow = _three_paths(monkeypatch, plain, careful)
        assert isinstance(streamed, pd.DataFrame), name
        pd.testing.assert_frame_equal(streamed, whole, check_exact=True)
        pd.testing.assert_frame_equal(streamed, slow, check_exact=True)
        assert len(streamed) == 500 and streamed["Symbol"].tolist() == ["X"] * 500

    # Volume: integers in the first 57 blocks, a float in block 58.
    plain, careful = _edited_pair(tmp_path, 3, {400: "1234.5"})
    streamed, whole, slow = _three_paths(monkeypatch, plain, careful)
    assert streamed["Volume"].dtype == np.float64 and streamed["Volume"].iloc[399] == 1234.5
    pd.testing.assert_frame_equal(streamed, slow, check_exact=True)
    pd.testing.assert_frame_equal(whole, slow, check_exact=True)


@pytest.mark.parametrize(
    "row, column, cell, expected",
    [
        (450, 0, "2030-13-45", r'row 451, column Date: "2030-13-45" is not a date like the others'),
        (450, 0, "01/02/2003", r'row 451, column Date: "01/02/2003" is not a date like the others'),
        (3, 0, "", r"row 4, column Date is missing"),
        (300, 0, "1990-01-02", r"row 3 and row 301 both have date 1990-01-02"),
        (450, 1, "abc", r'row 451, column Open: "abc" is not a number'),
        (450, 1, "0", r"row 451, column Open: 0(\.0)? is not a positive price"),
        (450, 1, "inf", r'row 451, column Open: "inf" is not a finite number'),
        (450, 3, "-5", r"row 451, column Volume: -5(\.0)? is a negative volume"),
    ],
)
def test_a_bad_cell_in_a_later_block_is_reported_as_the_whole_file_paths_report_it(
    tmp_path, monkeypatch, row, column, cell, expected
):
    plain, careful = _edited_pair(tmp_path, column, {row: cell})
    streamed, whole, slow = _three_paths(monkeypatch, plain, careful)
    assert isinstance(slow, str) and re.search(expected, slow), slow
    assert whole == slow
    assert streamed in (None, slow)  # the streamed path declines, or reports the same


def test_dates_written_another_way_in_whole_blocks_are_reported_not_mixed(tmp_path, monkeypatch):
    """Data records 441-454 (blocks 63 and 64 of 7 rows, file rows 443-456) are written m/d/Y, the
    rest ISO 8601: each block parses in full on its own, but the whole column's format is ISO 8601
    and those rows are the odd ones."""
    plain, careful = _edited_pair(tmp_path, 0, {i: lambda date: f"{pd.Timestamp(date):%m/%d/%Y}" for i in range(442, 456)})
    streamed, whole, slow = _three_paths(monkeypatch, plain, careful)
    assert re.search(r'row 443, column Date: "\d\d/\d\d/\d{4}" is not a date like the others \(ISO 8601\)', slow), slow
    assert streamed is None and whole == slow


def test_a_zero_price_in_a_block_of_whole_numbers_is_quoted_as_written(tmp_path, monkeypatch):
    """Block 64 (data records 448-454) holds whole-number Open prices, one of them 0: that block
    parses as integers, the column as floats; the message quotes the cell as the whole-file
    paths do."""
    plain, careful = _edited_pair(tmp_path, 1, {i: "0" if i == 452 else str(100 + i) for i in range(449, 456)})
    streamed, whole, slow = _three_paths(monkeypatch, plain, careful)
    assert re.search(r"row 453, column Open: 0 is not a positive price", slow), slow
    assert streamed in (None, slow) and whole == slow


def test_a_long_format_file_is_streamed_like_the_whole_file_paths(tmp_path, monkeypatch):
    from seqcast.data import load_long_csv

    rows = 60
    long = pd.DataFrame({
        "unique_id": np.repeat(["a", "b", "c"], rows),
        "ds": np.tile(pd.bdate_range("2020-01-01", periods=rows).strftime("%Y-%m-%d"), 3),
        "y": np.round(100 + np.arange(3 * rows) * 0.25, 2),
    })
    plain, careful = tmp_path / "plain.csv", tmp_path / "careful.csv"
    long.to_csv(plain, index=False)
    careful.write_text(plain.read_text() + "\n")

    def read(path):
        return load_long_csv(path, lambda header: "unique_id")[1]

    streamed, whole, slow = _three_paths(monkeypatch, plain, careful, read=read)
    assert sorted(streamed) == ["a", "b", "c"]
    for name in streamed:
        pd.testing.assert_frame_equal(streamed[name], slow[name], check_exact=True)
        pd.testing.assert_frame_equal(whole[name], slow[name], check_exact=True)


def _live_prediction_frames() -> set[int]:
    """ids of live DataFrames that hold the model's forecasts for more than a leaderboard's rows."""
    gc.collect()
    return {id(o) for o in gc.get_objects() if type(o) is pd.DataFrame and MODEL in o.columns and len(o) > 10}


def test_a_many_series_backtest_keeps_summaries_in_memory_and_predictions_on_disk(tmp_path):
    n_series, rows, folds = 20, 600, 3
    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2020-01-01", periods=rows).strftime("%Y-%m-%d")
    values = 100 + np.cumsum(rng.normal(size=(n_series, rows)), axis=1)
    long = pd.DataFrame({"unique_id": np.repeat([f"s{i:02d}" for i in range(n_series)], rows),
                         "ds": np.tile(dates, n_series), "y": values.ravel()})
    long.to_csv(tmp_path / "long.csv", index=False)
    series = find_series(tmp_path / "long.csv", target="y")
    before = _live_prediction_frames()
    many = backtest_many(series, LinearAR(target="y", lookback=5), out_dir=tmp_path / "out", target="y", folds=folds)
    assert _live_prediction_frames() - before == set()

    n_test = folds * (rows // (folds + 1))
    n_models = len(many.results[0].board.table)
    for i, result in enumerate(many.results):
        assert result.error is None and result.n_predictions == n_test
        # What stays in memory: one leaderboard row per model and one comparison per baseline.
        assert sorted(result.board.table.index) == sorted([MODEL, *result.board.comparisons.index])
        assert {f.name for f in dataclasses.fields(result)} == {
            "name", "out_dir", "board", "interval", "n_predictions", "period", "seconds", "error"}
        # What is on disk: every prediction of every model, against the series' own values.
        wide = wide_predictions(read_backtest_csv(Path(result.out_dir) / "backtest.csv"))
        assert wide.shape == (n_test, 2 + n_models)
        np.testing.assert_allclose(wide["actual"].to_numpy(), values[i, -n_test:], atol=5e-7)
        assert (Path(result.out_dir) / "leaderboard.json").is_file()
    # Everything the result holds is a small fraction of the predictions as bare float64 numbers.
    prediction_bytes = n_series * n_test * (1 + n_models) * 8
    assert len(pickle.dumps(many)) < prediction_bytes / 5
    assert len(pd.read_csv(tmp_path / "out" / "aggregate.csv")) == n_series


# ---------------------------------------------------------------- training survives interruption

RESUME_EPOCHS = 400
RESUME = ["--epochs", str(RESUME_EPOCHS), "--layers", "2", "--units", "4", "--lookback", "3", "--batch-size", "32",
          "--dropout", "0.2", "--seed", "5", "--device", "cpu"]


def _train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *RESUME, *extra]


def _subprocess(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "seqcast.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def uninterrupted(short_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "model"
    assert main([*_train_argv(short_csv, out), "--quiet"]) == 0
    return out


def _same_model(a: Path, b: Path) -> None:
    assert (a / "weights.safetensors").read_bytes() == (b / "weights.safetensors").read_bytes()
    history = [json.loads((p / "state.json").read_text())["history"]["loss"] for p in (a, b)]
    assert history[0] == history[1] and len(history[0]) == RESUME_EPOCHS


def _checkpoint_epoch(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0  # not written yet, or being swapped in


def test_killed_training_resumes_to_the_same_final_weights(short_csv, uninterrupted, tmp_path, capsys):
    out = tmp_path / "model"
    checkpoint = tmp_path / "model.checkpoint"
    proc = _subprocess([*_train_argv(short_csv, out), "--checkpoint-every", "5", "--quiet"])
    try:
        while _checkpoint_epoch(checkpoint) < 10 and proc.poll() is None:
            time.sleep(0.02)
        proc.kill()
    finally:
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = _checkpoint_epoch(checkpoint)
    assert 10 <= killed_at < RESUME_EPOCHS and killed_at % 5 == 0 and not out.exists()
    assert main([*_train_argv(short_csv, out), "--resume", str(checkpoint), "--checkpoint-every", "5"]) == 0
    assert f"resume {checkpoint}" in capsys.readouterr().out
    _same_model(out, uninterrupted)
    assert _checkpoint_epoch(checkpoint) == RESUME_EPOCHS


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_to_the_same_weights(short_csv, uninterrupted, tmp_path):
    out = tmp_path / "model"
    checkpoint = tmp_path / "model.checkpoint"
    proc = _subprocess([*_train_argv(short_csv, out), "--checkpoint-every", "1", "--quiet"])
    # Interrupt once training runs, i.e. once it has written a checkpoint.
    while _checkpoint_epoch(checkpoint) < 1 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"seqcast: interrupted; checkpoint of epoch {_checkpoint_epoch(checkpoint)} saved in {checkpoint}/" in err
    assert f"--resume {checkpoint}" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*_train_argv(short_csv, out), "--resume", str(checkpoint), "--quiet"]) == 0
    _same_model(out, uninterrupted)


@pytest.mark.parametrize("verb", ["tune", "backtest"])
def test_ctrl_c_while_small_fits_run_side_by_side_in_threads_exits_130(short_csv, tmp_path, verb):
    # tune's configurations and a small model's backtest folds train in threads of the process;
    # Ctrl-C must stop them, not leave them inside torch while the interpreter exits (which aborted
    # it: "terminate called without an active exception", signal 6).
    # 30,000 epochs: the fits must still run when the signal comes. With 3,000 a backtest's two folds
    # finished within the 3 s below on a fast host (AMD EPYC Zen 4, 2026-12-07) and the signal came
    # during the exit (returncode -2, half of the runs).
    long = ["--epochs", "30000", "--layers", "1", "--units", "32", "--lookback", "20", "--batch-size", "32",
            "--dropout", "0", "--device", "cpu", "--quiet", "--data", str(short_csv), "--out", str(tmp_path / "out")]
    if verb == "tune":
        grid = tmp_path / "grid.toml"
        grid.write_text("units = [32, 33]\n")
        argv, ready = ["tune", "--grid", str(grid), "--folds", "2", *long], "grid "
    else:
        argv, ready = ["backtest", "--folds", "2", *long], "model "
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seqcast.cli", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert any(line.startswith(ready) for line in proc.stdout), "the command ended before training"
    time.sleep(3.0)  # the fits are running in both threads by now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.startswith("seqcast: interrupted") and "terminate called" not in err and "Traceback" not in err


def test_resuming_with_other_settings_or_a_tampered_checkpoint_is_refused(short_csv, tmp_path, capsys):
    out, checkpoint = tmp_path / "model", tmp_path / "model.checkpoint"
    short = [*_train_argv(short_csv, out), "--epochs", "2", "--checkpoint-every", "1", "--quiet"]
    assert main(short) == 0
    shutil.rmtree(out)
    assert main([*_train_argv(short_csv, out), "--lr", "0.01", "--resume", str(checkpoint), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seqcast: error: cannot resume from {checkpoint}: lr differ") and not out.exists()
    weights = checkpoint / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert main([*_train_argv(short_csv, out), "--resume", str(checkpoint), "--quiet"]) == 2
    assert "weights.safetensors" in capsys.readouterr().err and not out.exists()
    assert main([*_train_argv(short_csv, out), "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_forecaster_fit_resumes_with_early_stopping_validation_and_dropout(small_series, tmp_path):
    train, _ = small_series
    params = dict(TINY, layers=2, epochs=6, dropout=0.3, val_fraction=0.2, early_stopping=3, optimizer="rmsprop")
    full = Forecaster(**params).fit(train)
    Forecaster(**{**params, "epochs": 3}).fit(train, checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    resumed = Forecaster(**params).fit(train, checkpoint_dir=tmp_path / "ck", resume=True)
    for name, tensor in full.model_.state_dict().items():
        assert torch.equal(tensor, resumed.model_.state_dict()[name]), name
    assert resumed.history_.loss == full.history_.loss and resumed.history_.val_loss == full.history_.val_loss
    assert resumed.history_.best_epoch == full.history_.best_epoch


def test_a_backup_left_by_an_interrupted_swap_does_not_block_the_next_write(saved_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    write_model_dir(folder, json_files={"config.json": {"v": 1}}, tensors={"w": torch.zeros(2)})

    def interrupted(path, *args, **kwargs):
        raise KeyboardInterrupt  # after the new folder is in place, while the old one is deleted

    monkeypatch.setattr(artifacts.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_model_dir(folder, json_files={"config.json": {"v": 2}}, tensors={"w": torch.ones(2)})
    monkeypatch.undo()
    assert json.loads((folder / "config.json").read_text()) == {"v": 2}
    write_model_dir(folder, json_files={"config.json": {"v": 3}}, tensors={"w": torch.ones(2)})
    docs, tensors = read_model_dir(folder, json_names=("config.json",))
    assert docs["config.json"] == {"v": 3} and torch.equal(tensors["w"], torch.ones(2))


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """A private temporary mode (0600, 0700) must not leak into outputs such as report.html or model/."""
    import stat

    from seqcast.artifacts import atomic_write_text, write_model_dir

    path = atomic_write_text(tmp_path / "report.html", "<html></html>")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    # Model folders are staged in a temporary folder too (mkdtemp would make them 0700).
    folder = write_model_dir(tmp_path / "model", json_files={"config.json": {}}, tensors={"w": torch.zeros(1)})
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(plain_dir.stat().st_mode)
