"""``layers=`` selections: a slice bound outside the stack is an error, not silently clipped."""
from __future__ import annotations

import pytest
import transformers

import random_ltd
from random_ltd.errors import RandomLTDError
from random_ltd.layer_selection import parse_layer_selection


@pytest.mark.parametrize("selection, expected", [("1:-1", [1, 2, 3, 4]), ("-6:6", [0, 1, 2, 3, 4, 5]),
                                                 ("::2", [0, 2, 4]), ("4:0:-1", [1, 2, 3, 4]), ("6:", None)])
def test_slices_inside_the_stack(selection, expected):
    if expected is None:  # a valid bound that selects nothing
        with pytest.raises(random_ltd.RandomLTDError, match="selects no layer"):
            parse_layer_selection(selection, 6)
    else:
        assert parse_layer_selection(selection, 6) == expected


@pytest.mark.parametrize("selection, bound", [("3:40", 40), ("-7:", -7), ("1:7", 7), ("7::-1", 7)])
def test_slice_bound_outside_the_stack_is_an_error(selection, bound):
    with pytest.raises(random_ltd.RandomLTDError, match=f"slice bound {bound} is outside a stack of 6 layers"):
        parse_layer_selection(selection, 6)


def test_slice_step_zero_is_an_error():
    with pytest.raises(random_ltd.RandomLTDError, match="step"):
        parse_layer_selection("::0", 6)


def test_apply_refuses_a_slice_beyond_the_stack_and_leaves_the_model_unwrapped():
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=16, n_head=2, vocab_size=50))
    classes = [type(layer) for layer in model.transformer.h]
    with pytest.raises(random_ltd.RandomLTDError, match="slice bound 9 is outside a stack of 4 layers"):
        random_ltd.apply(model, layers="1:9")
    assert [type(layer) for layer in model.transformer.h] == classes
    assert random_ltd.get_handle(model) is None



@pytest.mark.parametrize("selection,expected", [("1:-1", [1, 2, 3, 4]), ("::2", [0, 2, 4]), ("3", [3]),
                                                 ("0, -1", [0, 5]), ([5, -6, 2, 2], [0, 2, 5]), (" :2 ", [0, 1])])
def test_parses_slices_and_indices(selection, expected):
    assert parse_layer_selection(selection, 6) == expected


@pytest.mark.parametrize("selection", ["1:2:3:4", "a", "6", [-7], "5:1"])
def test_bad_selection_says_what_is_wrong(selection):
    with pytest.raises(RandomLTDError, match="layer"):
        parse_layer_selection(selection, 6)


@pytest.mark.parametrize("selection", [[1.5, 2], [True, 2], ["1", 2]])
def test_a_list_of_layers_must_hold_integers(selection):
    with pytest.raises(RandomLTDError, match=r"layers=.*integers"):
        parse_layer_selection(selection, 6)
