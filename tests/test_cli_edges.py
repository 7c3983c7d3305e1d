"""Command-line edge cases an exploratory review found (2026-12-07): each ends in one clear
`seqcast: error:` line and exit 2 before any work, or in output that says what happened."""

from pathlib import Path

import pytest

from seqcast.cli import main
from seqcast.datasets import GOOGLE_TEST, GOOGLE_TRAIN

TINY = ["--epochs", "1", "--layers", "1", "--units", "4", "--lookback", "5", "--quiet"]


@pytest.fixture
def short(tmp_path) -> Path:
    path = tmp_path / "short.csv"
    path.write_text("\n".join(GOOGLE_TRAIN.read_text().splitlines()[:121]) + "\n")
    return path


def _error(capsys, out: list | None = None) -> str:
    """The captured stderr, checked to be one seqcast error (its stdout appended to ``out``)."""
    captured = capsys.readouterr()
    if out is not None:
        out.append(captured.out)
    err = captured.err
    assert err.startswith("seqcast: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--jobs", "0"], "--jobs must be a positive number of processes or -1 for one per core, got 0"),
        (["--test-size", "0"], "--test-size must be a whole number of rows of at least 1, got 0"),
        (["--test-size", "500"], "--folds 5 with --test-size 500 needs more than 2500 rows and there are 120"),
    ],
)
def test_tune_refuses_job_and_fold_sizes_that_cannot_work(short, tmp_path, capsys, extra, message):
    grid = tmp_path / "grid.toml"
    grid.write_text("units = [4]\n")
    assert main(["tune", "--data", str(short), "--grid", str(grid), "--out", str(tmp_path / "t"), *TINY, *extra]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize(
    "season, message",
    [("0", "--season must be a whole number of rows of at least 1, got 0"),
     ("1000", "--season 1000 needs more than 1000 training rows, and the first fold trains on")],
)
def test_backtest_refuses_a_season_it_would_ignore(short, tmp_path, capsys, season, message):
    assert main(["backtest", "--data", str(short), "--folds", "2", "--season", season, "--out", str(tmp_path / "b"), *TINY]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "b" / "backtest.csv").exists()


@pytest.mark.parametrize("option", [["--interval", "0.8"], ["--calibration-fraction", "0.3"], ["--ensemble-jobs", "2"]])
def test_ensemble_options_without_an_ensemble_are_refused(short, tmp_path, capsys, option):
    assert main(["train", "--data", str(short), "--out", str(tmp_path / "m"), *TINY, *option]) == 2
    assert f"{option[0]} sets" in _error(capsys) and not (tmp_path / "m").exists()


def test_outputs_that_cannot_be_written_are_named_before_any_work(short, tmp_path, capsys):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main(["train", "--data", str(short), "--out", str(a_file / "sub"), *TINY]) == 2
    printed = []
    assert f"{a_file} is a file, not a folder" in _error(capsys, printed)
    assert printed[0] == ""  # refused before loading the data or training
    model = tmp_path / "m"
    assert main(["train", "--data", str(short), "--out", str(model), *TINY]) == 0
    folder = tmp_path / "dd"
    folder.mkdir()
    assert main(["predict", "--model", str(model), "--data", str(short), "--out", str(folder), "--force", "--quiet"]) == 2
    assert f"{folder} is a folder: give the path of a file to write" in _error(capsys)  # it named a temporary file
    assert list(tmp_path.glob(".dd*")) == []


def test_run_warns_when_the_test_file_starts_long_after_the_training_rows(short, tmp_path, capsys):
    assert main(["run", "--data", str(short), "--test", str(GOOGLE_TEST), "--out", str(tmp_path / "r"), *TINY]) == 0
    assert f"warning: {GOOGLE_TEST} starts 1656 days after the training rows end (2012-06-22)" in capsys.readouterr().out


def test_a_constant_series_ties_its_baseline_without_warnings(short, tmp_path, capsys, recwarn):
    lines = short.read_text().splitlines()
    constant = tmp_path / "const.csv"
    constant.write_text("\n".join([lines[0], *(",".join([ln.split(",")[0], "500", *ln.split(",")[2:]]) for ln in lines[1:])]) + "\n")
    assert main(["run", "--data", str(constant), "--test-from", "2012-06-01", "--out", str(tmp_path / "c"), *TINY, "--dropout", "0"]) == 0
    out = capsys.readouterr().out
    assert "infx" not in out and "seqcast ties the naive" in out
    assert not [w for w in recwarn if "log-scaled" in str(w.message)]


def test_long_files_with_a_blank_id_or_an_id_named_like_an_output_are_refused_up_front(short, tmp_path, capsys):
    lines = short.read_text().splitlines()
    body = [f"A,{ln}" for ln in lines[1:]] + [f"B,{ln}" for ln in lines[1:]]
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join(["unique_id," + lines[0], *body[:5], "," + body[5][2:], *body[6:]]) + "\n")
    assert main(["backtest", "--data", str(blank), "--folds", "2", "--out", str(tmp_path / "b1"), *TINY]) == 2
    assert "blank.csv row 7, column unique_id: the series id is empty" in _error(capsys)
    named = tmp_path / "named.csv"
    named.write_text("\n".join(["unique_id," + lines[0], *(b.replace("B,", "aggregate.csv,", 1) for b in body)]) + "\n")
    assert main(["backtest", "--data", str(named), "--folds", "2", "--out", str(tmp_path / "b2"), *TINY]) == 2
    assert "series 'aggregate.csv' would get the folder aggregate.csv, the name of an aggregate file" in _error(capsys)
    assert not (tmp_path / "b2").exists()


def test_the_many_series_outputs_line_names_only_folders_written(short, tmp_path, capsys):
    series = tmp_path / "series"
    series.mkdir()
    (series / "a.csv").write_text(short.read_text())
    (series / "b.csv").write_text(short.read_text().splitlines()[0] + "\n")  # header only: fails
    assert main(["backtest", "--data", str(series / "*.csv"), "--folds", "2", "--out", str(tmp_path / "m"), *TINY]) == 0
    outputs = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("outputs ")][0]
    assert outputs.endswith("aggregate.json  a/") and not (tmp_path / "m" / "b").exists()


def test_run_leaves_out_a_baseline_whose_column_the_test_file_lacks(short, tmp_path, capsys):
    # The model reads Open only; last-close needs Close, which this test file does not have: the
    # run was refused with "has no column 'Close'; pick one of those", an option nobody could pick.
    test = tmp_path / "open_only.csv"
    test.write_text("\n".join(",".join(line.split(",")[:2]) for line in GOOGLE_TEST.read_text().splitlines()) + "\n")
    assert main(["run", "--data", str(short), "--test", str(test), "--out", str(tmp_path / "r"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "persistence (baseline)" in out and "last-close" not in out


def test_an_empty_grid_list_gets_a_valid_example(tmp_path, short, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text("units = []\noptimizer = ['adam']\n")
    assert main(["tune", "--data", str(short), "--grid", str(grid), "--out", str(tmp_path / "t"), *TINY]) == 2
    assert "units must be a non-empty list of values, e.g. units = [50]" in _error(capsys)  # it said [[]]


def test_force_replaces_an_earlier_runs_outputs_and_keeps_other_files(short, tmp_path, capsys):
    # The earlier run's report.html (and an ensemble backtest's intervals.csv) stayed beside the new
    # run's files, describing another test period.
    out = tmp_path / "r"
    base = ["run", "--data", str(short), "--out", str(out), *TINY]
    assert main([*base, "--test-from", "2012-06-01", "--report"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*base, "--test-from", "2012-05-01", "--force"]) == 0
    assert not (out / "report.html").exists() and (out / "notes.txt").read_text() == "mine"
    assert (out / "metrics.json").is_file() and (out / "model" / "manifest.json").is_file()
    folder = tmp_path / "b"
    base = ["backtest", "--data", str(short), "--folds", "2", "--out", str(folder), *TINY]
    assert main([*base, "--ensemble", "2", "--interval", "0.5"]) == 0
    assert (folder / "intervals.csv").is_file()
    assert main([*base, "--force"]) == 0
    assert not (folder / "intervals.csv").exists() and (folder / "backtest.csv").is_file()


def test_a_file_of_dates_alone_says_what_to_add(tmp_path, capsys):
    dates = tmp_path / "dates.csv"
    dates.write_text("Date\n2012-01-03\n2012-01-04\n")
    assert main(["validate", "--data", str(dates)]) == 2
    assert "dates.csv has no column besides its dates: add a 'Open' column" in _error(capsys)  # "columns: (none); pick one"
