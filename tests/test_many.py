import json

import numpy as np
import pandas as pd
import pytest

from seqcast.backtest import read_backtest_csv, walk_forward, wide_predictions
from seqcast.baselines import LastValue, LinearAR
from seqcast.cli import main
from seqcast.errors import DataError
from seqcast.many import backtest_many, find_series, is_many
from seqcast.metrics import diebold_mariano


def _three_series(n: int = 160) -> dict[str, pd.DataFrame]:
    """A mean-reverting AR(1) (a linear AR beats persistence on it) and two random walks (it cannot)."""
    rng = np.random.default_rng(11)
    ar = np.empty(n)
    ar[0] = 100
    for t in range(1, n):
        ar[t] = 100 + 0.1 * (ar[t - 1] - 100) + rng.normal()
    series = {"ar": ar, "walk1": 100 + np.cumsum(rng.normal(size=n)), "walk2": 50 + np.cumsum(rng.normal(size=n))}
    dates = pd.bdate_range("2021-01-01", periods=n, name="Date")
    return {name: pd.DataFrame({"Open": values}, index=dates) for name, values in series.items()}


@pytest.fixture
def files(tmp_path):
    folder = tmp_path / "prices"
    folder.mkdir()
    frames = _three_series()
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv")
    long = pd.concat(
        [f.reset_index().rename(columns={"Date": "date", "Open": "close"}).assign(Name=n) for n, f in frames.items()]
    )
    long[["Name", "date", "close"]].to_csv(tmp_path / "long.csv", index=False)
    return folder, tmp_path / "long.csv", frames


def test_find_series_from_a_glob_and_a_long_file(files):
    folder, long, frames = files
    paths = find_series(str(folder / "*.csv"))
    assert list(paths) == ["ar", "walk1", "walk2"]
    split = find_series(long, target="close")
    assert list(split) == ["ar", "walk1", "walk2"]
    for name, frame in frames.items():
        np.testing.assert_allclose(split[name]["Close"].to_numpy(), frame["Open"].to_numpy())
        assert (split[name].index == frame.index).all()
    assert is_many(str(folder / "*.csv")) and is_many(long) and not is_many(folder / "ar.csv")


def test_a_bad_value_in_a_long_file_names_its_row(files, tmp_path):
    _, long, _ = files
    lines = long.read_text().splitlines()
    lines[200] = lines[200].rsplit(",", 1)[0] + ",oops"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 201"):
        find_series(bad, target="close")


def test_backtest_many_matches_single_runs_and_aggregates(files, tmp_path):
    folder, _, frames = files
    seen = []
    many = backtest_many(
        find_series(str(folder / "*.csv")),
        LinearAR(target="Open", lookback=5),
        out_dir=tmp_path / "out",
        jobs=2,
        target="Open",
        folds=3,
        baselines={"last": LastValue("Open")},
        on_series=lambda r: seen.append(r.name),
    )
    assert sorted(seen) == ["ar", "walk1", "walk2"]
    skills, significant = [], 0
    for name, frame in frames.items():
        single = walk_forward(LinearAR(target="Open", lookback=5), frame, folds=3, baselines={"last": LastValue("Open")})
        streamed = wide_predictions(read_backtest_csv(tmp_path / "out" / name / "backtest.csv"))
        pd.testing.assert_frame_equal(streamed, single.predictions, check_freq=False, rtol=1e-6)
        errors = streamed[["seqcast", "last"]].sub(streamed["actual"], axis=0)
        rmse = np.sqrt((errors**2).mean())
        skill = 1 - rmse["seqcast"] / rmse["last"]
        assert many.table.loc[name, "skill"] == pytest.approx(skill)
        skills.append(skill)
        dm = diebold_mariano(streamed["actual"], streamed["seqcast"], streamed["last"])
        significant += bool(dm.p_value < 0.05 and rmse["seqcast"] < rmse["last"])
        assert json.loads((tmp_path / "out" / name / "leaderboard.json").read_text())["best_baseline"] == "last"
    assert many.table.loc["ar", "beats_best_significantly"]
    assert many.summary["mean_skill"] == pytest.approx(np.mean(skills))
    assert many.summary["n_beat_significantly"] == significant >= 1
    doc = json.loads((tmp_path / "out" / "aggregate.json").read_text())
    assert doc["n_series"] == 3 and doc["mean_skill"] == pytest.approx(np.mean(skills))
    assert list(pd.read_csv(tmp_path / "out" / "aggregate.csv")["series"]) == ["ar", "walk1", "walk2"]


def test_the_aggregate_is_rewritten_at_most_once_per_aggregate_seconds(files, tmp_path, monkeypatch):
    # Each rewrite costs in proportion to the series done, so one per series grew with N squared.
    from seqcast import many as many_module

    folder, _, _ = files
    writes = []
    real = many_module._write_aggregate
    monkeypatch.setattr(many_module, "_write_aggregate", lambda out, rows: writes.append(len(rows)) or real(out, rows))
    for seconds, expected in ((3600.0, [1, 3]), (0.0, [1, 2, 3, 3])):
        writes.clear()
        monkeypatch.setattr(many_module, "AGGREGATE_SECONDS", seconds)
        monkeypatch.setattr(many_module, "AGGREGATE_COST_FACTOR", 1 if seconds else 0)
        backtest_many(find_series(str(folder / "*.csv")), LinearAR(target="Open", lookback=5),
                      out_dir=tmp_path / f"out{seconds}", target="Open", folds=3)
        assert writes == expected
        assert list(pd.read_csv(tmp_path / f"out{seconds}" / "aggregate.csv")["series"]) == ["ar", "walk1", "walk2"]


def test_a_series_in_memory_is_backtested_on_a_frame_and_index_of_its_own(files, tmp_path, monkeypatch):
    # pandas keeps lookup tables and copy-on-write references on the index it works on; on the
    # caller's frames (a long-format file's series) they stayed as long as the frames, ~100 KiB per
    # series. The backtest gets the same rows and attributes on an index of its own.
    from seqcast import many as many_module

    _, long, _ = files
    series = find_series(long, target="close")
    seen = {}
    real = many_module.walk_forward

    def walk_forward(forecaster, frame, **walk):
        seen[frame.attrs["series"]] = frame
        return real(forecaster, frame, **walk)

    monkeypatch.setattr(many_module, "walk_forward", walk_forward)
    for name, frame in series.items():
        frame.attrs["series"] = name
    backtest_many(series, LinearAR(target="close", lookback=5), out_dir=tmp_path / "out", target="close", folds=3)
    assert sorted(seen) == sorted(series)
    for name, frame in series.items():
        assert seen[name] is not frame and seen[name].index is not frame.index and seen[name].columns is not frame.columns
        pd.testing.assert_frame_equal(seen[name], frame)
        assert seen[name].attrs == frame.attrs


def test_a_series_too_short_is_reported_and_the_others_still_run(files, tmp_path):
    folder, _, frames = files
    frames["walk2"].iloc[:20].to_csv(folder / "walk2.csv")
    many = backtest_many(find_series(str(folder / "*.csv")), LinearAR(target="Open", lookback=5),
                         out_dir=tmp_path / "out", target="Open", folds=3)
    assert "too few" in many.table.loc["walk2", "error"] or "needs at least" in many.table.loc["walk2", "error"]
    assert many.summary["n_failed"] == 1 and np.isfinite(many.summary["mean_skill"])


def test_cli_backtest_of_a_long_file_prints_one_board_per_series_and_the_aggregate(files, tmp_path, capsys):
    _, long, _ = files
    tiny = ["--lookback", "10", "--layers", "1", "--units", "8", "--epochs", "1", "--dropout", "0", "--device", "cpu"]
    code = main(["backtest", "--data", str(long), "--target", "close", "--folds", "2", "--out", str(tmp_path / "bt"), *tiny])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("series ") >= 3 and printed.count("(baseline)") >= 3 * 4
    assert "aggregate 3 of 3 series: mean skill" in printed
    doc = json.loads((tmp_path / "bt" / "aggregate.json").read_text())
    table = pd.read_csv(tmp_path / "bt" / "aggregate.csv", index_col="series")
    assert doc["mean_skill"] == pytest.approx(table["skill"].mean())
    for name in ("ar", "walk1", "walk2"):
        board = json.loads((tmp_path / "bt" / name / "leaderboard.json").read_text())
        rows = {row["model"]: row["rmse"] for row in board["rows"]}
        assert table.loc[name, "skill"] == pytest.approx(1 - rows["seqcast"] / rows[board["best_baseline"]])


def test_a_dask_scheduler_gives_the_local_results(files, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    folder, _, _ = files
    series = find_series(str(folder / "*.csv"))
    kwargs = dict(target="Open", folds=2, baselines={"last": LastValue("Open")})
    local = backtest_many(series, LinearAR(target="Open", lookback=5), out_dir=tmp_path / "local", **kwargs)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = backtest_many(series, LinearAR(target="Open", lookback=5), out_dir=tmp_path / "dask",
                               scheduler=cluster.scheduler_address, **kwargs)
    columns = ["rmse", "best_baseline_rmse", "skill", "dm_p"]
    pd.testing.assert_frame_equal(remote.table[columns], local.table[columns])
    assert (tmp_path / "dask" / "walk1" / "backtest.csv").is_file()


def test_a_file_that_is_not_utf8_is_refused_by_the_loader_not_by_the_id_column_check(tmp_path, capsys):
    """Found by fuzzing long-format files: reading the header to look for an id column crashed on
    UTF-16 text before load_csv could name the problem."""
    path = tmp_path / "utf16.csv"
    path.write_bytes("unique_id,ds,y\na,2020-01-01,1\n".encode("utf-16"))
    assert not is_many(path)
    assert main(["backtest", "--data", str(path), "--target", "y", "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqcast: error: ") and "utf16.csv is not UTF-8 text" in err and "Traceback" not in err
