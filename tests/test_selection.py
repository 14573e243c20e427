"""Layer selections parsed without a model."""
from __future__ import annotations

import pytest

from random_ltd.errors import RandomLTDError
from random_ltd.selection import parse_layer_selection


@pytest.mark.parametrize("selection,expected", [("1:-1", [1, 2, 3, 4]), ("::2", [0, 2, 4]), ("3", [3]),
                                                 ("0, -1", [0, 5]), ([5, -6, 2, 2], [0, 2, 5]), (" :2 ", [0, 1])])
def test_parses_slices_and_indices(selection, expected):
    assert parse_layer_selection(selection, 6) == expected


@pytest.mark.parametrize("selection", ["1:2:3:4", "a", "6", [-7], "5:1"])
def test_bad_selection_says_what_is_wrong(selection):
    with pytest.raises(RandomLTDError, match="layer"):
        parse_layer_selection(selection, 6)
