"""Fitting several estimators at once: this process and joblib worker processes, one queue.

Used for an ensemble's members (`EnsembleForecaster(n_jobs=...)`) and a walk-forward backtest's
folds (`walk_forward(..., n_jobs=...)`, and by default, in threads, for models too small to keep
more than one thread busy). Each fit runs on one torch thread (an estimator whose
`threads` is set keeps it) and without progress bars, so a result is bit for bit what the same fit
gives one after another on one thread, whichever process ran it.

Not a plain ``joblib.Parallel``: this process fits too, taking the next task from the same queue as
the workers. A worker first spends seconds importing torch (3.5 s measured here), during which this
process is already training; and an odd number of tasks leaves no core idle at the end. (Fits in
threads of one process share torch's global generator only for seeding and initial weights, which
``models.GLOBAL_RNG_LOCK`` serialises.) The workers come from joblib's own executor, the one ``Parallel`` uses
and keeps between calls, so later calls (the next fold's ensemble, ``tune``) reuse the processes.
It pays for small models: `train_model` does not split their batches across the cores (too little
work per slice), and torch's intra-op threads add little to their small kernels, so one fit keeps
about one core busy. A model big enough to be split already uses both cores and gains nothing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from numbers import Integral

import pandas as pd
from joblib import effective_n_jobs
from joblib.executor import get_memmapping_executor
from joblib.parallel import get_active_backend

from .errors import ConfigError
from .training import cancel_on, intra_op_threads, one_thread_pool

# Set while this process fits a task (its own share, or as a worker): fits started inside it, such as
# an ensemble's members inside a backtest fold, then run one after another instead of nesting pools.
_inside = threading.local()


def check_jobs(n_jobs, name: str) -> None:
    """None, a positive number of processes, or -1 for one per core (`name` is what the user set)."""
    whole = isinstance(n_jobs, Integral) and not isinstance(n_jobs, bool)
    if n_jobs is not None and not (whole and (n_jobs >= 1 or n_jobs == -1)):
        raise ConfigError(f"{name} must be a positive number of processes or -1 for one per core, got {n_jobs!r}")


def fit_in_order(
    estimators: Sequence, rows: Sequence[pd.DataFrame], n_jobs, *, threads: bool = False
) -> Iterator[tuple[object, float]]:
    """Fit ``estimators[i]`` on ``rows[i]`` on ``effective_n_jobs(n_jobs)`` cores; yield each fitted
    estimator with its fit's seconds, in input order, as soon as it and those before it are done.

    With ``threads``, the other lanes are threads of this process instead of worker processes: no
    start-up cost, and the fits still run in parallel where they spend their time in torch's
    kernels, which release the GIL (models too small to split their batches; see
    ``Forecaster.trains_on_one_thread``). Their Python work shares one GIL, so processes gain more
    once started. With one core, or inside another parallel fit, the estimators are fitted here one
    after another.
    """
    tasks = list(zip(estimators, rows))
    workers = effective_n_jobs(n_jobs) - 1 if n_jobs is not None else 0
    if workers < 1 or getattr(_inside, "active", False) or get_active_backend()[0].nesting_level > 0:
        for estimator, frame in tasks:
            yield _fit_quietly(estimator, frame)
        return
    executor = None if threads else get_memmapping_executor(workers)
    queue, lock = deque(enumerate(tasks)), threading.Lock()
    results: list = [None] * len(tasks)
    done = [threading.Event() for _ in tasks]
    failures: list[BaseException] = []

    def take():
        with lock:
            return queue.popleft() if queue and not failures else None

    def drive() -> None:  # one thread per worker process: hands it tasks until the queue is empty
        while (item := take()) is not None:
            index, (estimator, frame) = item
            try:
                if executor is None:
                    results[index] = _fit_quietly(estimator, frame)
                else:
                    results[index] = executor.submit(_fit_quietly, estimator, frame).result()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                with lock:
                    failures.append(exc)
                    queue.clear()
            finally:
                done[index].set()

    stop = threading.Event()  # set when the caller stops: thread lanes' fits stop at their next batch

    def drive_cancellable() -> None:
        with cancel_on(stop):
            drive()

    drivers = [threading.Thread(target=drive_cancellable, daemon=True) for _ in range(workers)]
    for thread in drivers:
        thread.start()
    position = 0
    try:
        while (item := take()) is not None:
            index, (estimator, frame) = item
            results[index] = _fit_quietly(estimator, frame)
            done[index].set()
            while position < len(tasks) and done[position].is_set() and not failures:
                yield results[position]
                position += 1
        for index in range(position, len(tasks)):
            # Every task is taken by now (running or done) unless one failed, which cleared the queue.
            if not failures:
                done[index].wait()
            if failures:
                raise failures[0]
            yield results[index]
    finally:
        with lock:  # on an error or an abandoned generator the workers finish what they have, take no more
            queue.clear()
        stop.set()
        if threads:  # ... or, as threads of this process, stop at their next batch and are waited for
            for thread in drivers:
                thread.join()


def in_threads(tasks: Sequence[Callable[[], object]], threads: int) -> Iterator:
    """Run ``tasks`` (callables that keep to one torch thread, such as tuning.evaluate_config)
    ``threads`` at a time in threads of this process; yield each result as it finishes. If the
    caller stops early (an error, Ctrl-C, closing the generator), the running fits stop at their
    next batch (``training.cancel_on``) and are waited for: a thread still inside torch when the
    interpreter exits aborts the process."""
    stop = threading.Event()

    def run(task):
        with cancel_on(stop):
            return task()

    with one_thread_pool(threads) as pool:
        futures = [pool.submit(run, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            stop.set()
            for future in futures:
                future.cancel()


def fit_all(estimators: Sequence, rows: Sequence[pd.DataFrame], n_jobs) -> list:
    """:func:`fit_in_order` as a list of the fitted estimators."""
    return [estimator for estimator, _ in fit_in_order(estimators, rows, n_jobs)]


def _fit_quietly(estimator, frame: pd.DataFrame) -> tuple[object, float]:
    """One fit on one torch thread (unless the estimator sets `threads`) without progress bars; the
    estimator keeps its own `verbose`, so it predicts and saves as one fitted alone does."""
    verbose = {k: v for k, v in estimator.get_params().items() if k == "verbose" or k.endswith("__verbose")}
    outer, _inside.active = getattr(_inside, "active", False), True
    started = time.perf_counter()
    try:
        with intra_op_threads(1):
            estimator.set_params(**{k: 0 for k in verbose}).fit(frame)
    finally:
        _inside.active = outer
        estimator.set_params(**verbose)
    return estimator, time.perf_counter() - started
