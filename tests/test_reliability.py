"""Reliability promises of docs/reliability.md: safe artifacts, atomic writes, no silent overwrites,
clean failures when training diverges or is interrupted, determinism, and windows that are views."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from seqcast import ArtifactError, Forecaster, load_csv
from seqcast import artifacts
from seqcast.artifacts import atomic_write_bytes, atomic_write_text, read_model_dir, write_model_dir
from seqcast.cli import main
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN
from seqcast.errors import DataError
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
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _comparable_metrics(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("train_seconds")
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
