"""seqcast.parallel: fits in this process and joblib workers from one queue."""

import os
import time

import pandas as pd
import pytest
import torch
from sklearn.base import BaseEstimator

from seqcast.errors import ConfigError
from seqcast.parallel import check_jobs, fit_all, fit_in_order

FRAME = pd.DataFrame({"y": [1.0, 2.0, 3.0]})


class Recorder(BaseEstimator):
    """Records where and how it was fitted; fails when fitted outside the process `parent_only`."""

    def __init__(self, index=0, pause=0.0, parent_only=None, nested=0, verbose=1):
        self.index = index
        self.pause = pause
        self.parent_only = parent_only
        self.nested = nested
        self.verbose = verbose

    def fit(self, frame):
        if self.parent_only is not None and os.getpid() != self.parent_only:
            raise ValueError(f"task {self.index} was fitted in a worker")
        time.sleep(self.pause)
        self.pid_ = os.getpid()
        self.threads_ = torch.get_num_threads()
        self.verbose_seen_ = self.verbose
        self.rows_ = len(frame)
        # Fits started inside a fit run in place, one after another.
        self.inner_pids_ = [m.pid_ for m in fit_all([Recorder(i) for i in range(self.nested)], [frame] * self.nested, 2)]
        return self


def test_results_come_back_in_order_from_both_processes_quietly_on_one_thread():
    tasks = [Recorder(i, pause=0.3, nested=2) for i in range(6)]
    frames = [FRAME.iloc[: 1 + i % 3] for i in range(6)]
    fitted = list(fit_in_order(tasks, frames, 2))
    assert [m.index for m, _ in fitted] == list(range(6))
    assert [m.rows_ for m, _ in fitted] == [1 + i % 3 for i in range(6)]
    assert all(seconds >= 0.3 for _, seconds in fitted)
    pids = {m.pid_ for m, _ in fitted}
    assert os.getpid() in pids and len(pids) == 2  # this process and one worker both fitted
    for m, _ in fitted:
        assert m.threads_ == 1 and m.verbose_seen_ == 0 and m.verbose == 1
        assert m.inner_pids_ == [m.pid_, m.pid_]


def test_a_failure_in_a_worker_reaches_the_caller():
    tasks = [Recorder(i, pause=0.3, parent_only=os.getpid()) for i in range(6)]
    with pytest.raises(ValueError, match="was fitted in a worker"):
        fit_all(tasks, [FRAME] * 6, 2)


def test_one_job_fits_here_one_after_another():
    fitted = fit_all([Recorder(i) for i in range(3)], [FRAME] * 3, None)
    assert {m.pid_ for m in fitted} == {os.getpid()}


@pytest.mark.parametrize("jobs", [0, -2, 1.5, True, "2"])
def test_jobs_are_checked(jobs):
    with pytest.raises(ConfigError, match="must be a positive number of processes or -1 for one per core"):
        check_jobs(jobs, "n_jobs")
