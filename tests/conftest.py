"""Shared test set-up: Keras runs on the torch backend (no TensorFlow), seeded RNGs, and
hypothesis drawing the same examples on every run.

A suite that gates merges must not pass or fail by chance: by default hypothesis is derandomized
(its examples follow from each test's source) and keeps no example database. To explore new
examples, run with ``TORCHBLOCKS_HYPOTHESIS=explore``; add what it finds as explicit cases.
"""
import os

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("explore" if os.environ.get("TORCHBLOCKS_HYPOTHESIS") == "explore" else "fixed")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
