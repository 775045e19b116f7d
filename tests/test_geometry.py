"""The GenEval position rule and size relations on hand-made boxes with hand-computed values."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vrl.geometry import (
    RELATIONS,
    box_area,
    box_centre,
    position_relations,
    relation_holds,
    size_relations,
)

UNIT = (0.0, 0.0, 10.0, 10.0)  # centre (5, 5), size 10 x 10


@pytest.mark.parametrize(
    ("box_b", "expected"),
    [
        # B far to the right: offset (-50, 0), shrunk (-48, 0), normalised (-0.96, 0) -> A left of B
        ((50.0, 0.0, 60.0, 10.0), {"left of"}),
        ((-60.0, 0.0, -50.0, 10.0), {"right of"}),
        # B far below (y down): offset (0, -50) -> A above B
        ((0.0, 50.0, 10.0, 60.0), {"above"}),
        ((0.0, -60.0, 10.0, -50.0), {"below"}),
    ],
)
def test_clear_axis_relations(box_b, expected):
    assert position_relations(UNIT, box_b) == expected
    for relation in ("left of", "right of", "above", "below"):
        assert relation_holds(UNIT, box_b, relation) == (relation in expected)


def test_diagonal_gives_both_relations():
    # offset (-20, -20); margins 0.1 * 20 = 2 -> shrunk (-18, -18); |offset| = 20 sqrt 2
    # normalised -18 / 28.284 = -0.636 on both axes: beyond -0.5 on both
    box_b = (20.0, 20.0, 30.0, 30.0)
    assert position_relations(UNIT, box_b) == {"left of", "above"}
    assert position_relations(box_b, UNIT) == {"right of", "below"}


def test_shallow_diagonal_gives_one_relation():
    # centres (5, 5) and (35, 15): offset (-30, -10); shrunk (-28, -8); |offset| = sqrt(1000)
    # normalised (-0.885, -0.253): left of, but not above
    box_b = (30.0, 10.0, 40.0, 20.0)
    assert -28 / math.sqrt(1000) < -0.5 < -8 / math.sqrt(1000)
    assert position_relations(UNIT, box_b) == {"left of"}


def test_touching_boxes():
    # edges meet at x = 10: offset (-10, 0); margin 0.1 * (10 + 10) = 2 -> shrunk (-8, 0);
    # normalised by 10: (-0.8, 0) -> "left of" and nothing else
    box_b = (10.0, 0.0, 20.0, 10.0)
    assert position_relations(UNIT, box_b) == {"left of"}
    # two wide, short boxes meeting at y = 2: offset (0, -2), margin 0.1 * (2 + 2) = 0.4
    # -> shrunk (0, -1.6), normalised -0.8: "above"
    assert position_relations((0, 0, 100, 2), (0, 2, 100, 4)) == {"above"}


def test_margin_can_cancel_a_relation():
    # offset (-10, 0) but the boxes are 50 wide: margin 0.1 * 100 = 10 -> shrunk (0, 0): none
    assert position_relations((0, 0, 50, 10), (10, 0, 60, 10)) == set()
    # a hair more offset: shrunk (-0.5, 0), normalised by 10.5 -> -0.048: still no relation,
    # but it is not the "both below 1e-3" exit - the normalisation by the original offset is
    assert position_relations((0, 0, 50, 10), (10.5, 0, 60.5, 10)) == set()


@pytest.mark.parametrize(
    "box_b",
    [
        (0.5, 0.5, 10.5, 10.5),  # nearly concentric, same size
        (4.0, 4.0, 6.0, 6.0),  # small box at the centre
        (5.0, 5.0, 5.0, 5.0),  # degenerate box exactly at the centre
        UNIT,
    ],
)
def test_overlapping_nearly_concentric_boxes_have_no_relation(box_b):
    assert position_relations(UNIT, box_b) == set()
    assert position_relations(box_b, UNIT) == set()


coordinate = st.floats(min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False)
size = st.floats(min_value=0, max_value=500, allow_nan=False, allow_infinity=False)
boxes = st.builds(lambda x, y, w, h: (x, y, x + w, y + h), coordinate, coordinate, size, size)

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@given(boxes, boxes)
def test_position_relations_are_antisymmetric(box_a, box_b):
    forward = position_relations(box_a, box_b)
    backward = position_relations(box_b, box_a)
    assert backward == {OPPOSITE[r] for r in forward}
    assert not ({"left of", "right of"} <= forward or {"above", "below"} <= forward)


@given(boxes, boxes, st.floats(min_value=1.0, max_value=4.0))
def test_size_relations_are_antisymmetric(box_a, box_b, ratio):
    forward = size_relations(box_a, box_b, ratio)
    backward = size_relations(box_b, box_a, ratio)
    swap = {"larger than": "smaller than", "smaller than": "larger than"}
    assert backward == {swap[r] for r in forward}
    assert len(forward) <= 1


def test_size_relations():
    big, small = (0, 0, 20, 20), (0, 0, 10, 10)  # areas 400 and 100
    assert box_area(big) == 400 and box_centre(big) == (10, 10)
    assert relation_holds(big, small, "larger than")
    assert relation_holds(small, big, "smaller than")
    assert not relation_holds(big, small, "smaller than")
    # equal areas: the default strict comparison gives neither
    assert size_relations((0, 0, 10, 10), (5, 5, 15, 15)) == set()
    # ratio 4 is strict too: 400 > 4 * 100 is false; 401 > 400 holds
    assert not relation_holds(big, small, "larger than", size_ratio=4.0)
    assert relation_holds((0, 0, 20, 20.05), small, "larger than", size_ratio=4.0)
    assert relation_holds(big, small, "larger than", size_ratio=3.9)


def test_invalid_input_is_refused():
    with pytest.raises(ValueError, match="unknown relation 'on top of'"):
        relation_holds(UNIT, UNIT, "on top of")
    with pytest.raises(ValueError, match="x2 >= x1"):
        position_relations((10, 0, 0, 10), UNIT)
    with pytest.raises(ValueError, match="4 numbers"):
        position_relations((0, 0, 10), UNIT)
    with pytest.raises(ValueError, match="non-finite"):
        box_area((0, 0, math.nan, 1))
    with pytest.raises(ValueError, match="size_ratio"):
        size_relations(UNIT, UNIT, 0.5)
    assert set(RELATIONS) == {
        "left of",
        "right of",
        "above",
        "below",
        "larger than",
        "smaller than",
    }
