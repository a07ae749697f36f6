"""A (N, d) array-like that serves only slices and records them, for tests of key-blocked passes."""

from __future__ import annotations

import numpy as np


class Recording:
    """Serves ``array[lo:hi]`` only and records each (lo, hi); converting it whole fails the test."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.slices: list[tuple[int, int]] = []

    def __len__(self):
        return len(self.array)

    def __getitem__(self, item):
        assert isinstance(item, slice) and item.step is None, item
        lo, hi, _ = item.indices(len(self.array))
        self.slices.append((lo, hi))
        return np.asarray(self.array[item])

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole array was materialised")
