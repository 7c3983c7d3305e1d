"""Bundled data: the Google (GOOGL) daily prices of the classic Keras LSTM tutorial.

`Google_Stock_Price_Train.csv` holds 1,258 trading days 2012-01-03..2016-12-30 and
`Google_Stock_Price_Test.csv` the 20 trading days of January 2017. Their Close column is not
adjusted for the 2:1 split of 2014-03-27 (Open, High and Low are); `load_csv` warns about it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data import load_csv

HERE = Path(__file__).resolve().parent
GOOGLE_TRAIN = HERE / "Google_Stock_Price_Train.csv"
GOOGLE_TEST = HERE / "Google_Stock_Price_Test.csv"


def load_google(*, adjust_splits: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The (train, test) frames of the seed experiment."""
    return (
        load_csv(GOOGLE_TRAIN, adjust_splits=adjust_splits),
        load_csv(GOOGLE_TEST, adjust_splits=adjust_splits),
    )
