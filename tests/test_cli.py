import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from seqcast.cli import main
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN

FAST = ["--epochs", "1", "--layers", "1", "--units", "8", "--lookback", "20", "--device", "cpu", "--quiet"]


def test_run_end_to_end_on_bundled_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "persistence (baseline)" in printed and "seqcast" in printed and str(out) in printed
    preds = pd.read_csv(out / "predictions.csv", parse_dates=["date"])
    assert list(preds.columns[:3]) == ["date", "actual", "predicted"] and len(preds) == 20
    assert preds["predicted"].notna().all()
    # The persistence baseline is yesterday's Open: check it against the raw test file.
    raw_test = pd.read_csv(GOOGLE_TEST)
    raw_train = pd.read_csv(GOOGLE_TRAIN)
    yesterday = np.r_[raw_train["Open"].iloc[-1], raw_test["Open"].iloc[:-1]]
    np.testing.assert_allclose(preds["persistence"], yesterday)
    metrics = json.loads((out / "metrics.json").read_text())
    expected_rmse = float(np.sqrt(np.mean((raw_test["Open"] - yesterday) ** 2)))
    assert metrics["metrics"]["persistence"]["rmse"] == pytest.approx(expected_rmse)
    assert metrics["metrics"]["persistence"]["rmse"] == pytest.approx(8.42, abs=0.005)
    assert set(metrics["metrics"]["seqcast"]) >= {"rmse", "mae", "mape"}
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model" / "weights.safetensors").is_file()


def test_train_then_predict(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--data", str(GOOGLE_TRAIN), "--test-from", "2016-12-01", "--out", str(model), *FAST]) == 0
    assert "persistence" in capsys.readouterr().out
    preds_path = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(preds_path), "--quiet"]) == 0
    preds = pd.read_csv(preds_path)
    # The test file starts after the training rows, so the saved tail gives every row a prediction.
    assert len(preds) == 20 and preds["predicted"].notna().all()
    # Existing outputs are not overwritten without --force.
    assert main(["predict", "--model", str(model), "--data", str(GOOGLE_TEST), "--out", str(preds_path)]) == 2
    assert "--force" in capsys.readouterr().err


def test_json_output_is_the_only_thing_on_stdout(tmp_path, capsys):
    assert main(["validate", "--data", str(GOOGLE_TRAIN), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"] == 1258 and any("2014-03-27" in w for w in doc["warnings"])


def test_bad_file_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Date,Open\n2020-01-01,1\n2020-01-02,abc\n")
    proc = subprocess.run(
        [sys.executable, "-m", "seqcast.cli", "train", "--data", str(bad), "--out", str(tmp_path / "m"), *FAST],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("seqcast: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "bad.csv" in proc.stderr and "row 3" in proc.stderr and "Open" in proc.stderr


@pytest.mark.parametrize("verb", ["run", "train", "predict", "validate"])
def test_every_verb_has_help_with_defaults(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--" in text
    if verb in ("run", "train"):
        assert "(default: 60)" in text and "(default: lstm)" in text


def test_missing_file_and_unknown_option_exit_2(tmp_path, capsys):
    assert main(["validate", "--data", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--no-such-flag"])
    assert exc.value.code == 2
