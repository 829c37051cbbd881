"""entity_value against seed 000's entity_unit_map, read as the Amazon ML Challenge's sanity check read it
(`^-?\\d+(\\.\\d+)?\\s+[a-zA-Z\\s]+$`, then `common_mistake`: "ter" -> "tre", "feet" -> "foot"), with the
challenge's ranges "[a, b] unit" as they appear in its train.csv. Expected values are written out by hand."""

from __future__ import annotations

import pytest

from services.core.entity_units import DEFAULT_ENTITY_UNIT_MAP, parse_entity_value
from services.core.settings import load_settings

UNITS = DEFAULT_ENTITY_UNIT_MAP


@pytest.mark.parametrize(
    ("entity", "text", "cells"),
    [
        ("item_weight", "500.0 gram", ["500.0", "gram", "true", ""]),
        ("item_weight", "  2   kilogram ", ["2.0", "kilogram", "true", ""]),
        ("width", "10 centimeter", ["10.0", "centimetre", "true", ""]),  # American spelling, as the challenge took it
        ("height", "6 feet", ["6.0", "foot", "true", ""]),
        ("item_volume", "1.5 fluid ounce", ["1.5", "fluid ounce", "true", ""]),
        ("voltage", "[100.0, 240.0] volt", ["[100.0, 240.0]", "volt", "true", ""]),
        ("wattage", "-3 watt", ["-3.0", "watt", "true", ""]),
        ("test-row", "", ["", "", "", ""]),  # test.csv has no entity_value: nothing to check
    ],
)
def test_values_the_challenge_accepts(entity: str, text: str, cells: list[str]):
    assert parse_entity_value(entity, text, UNITS).cells() == cells


@pytest.mark.parametrize(
    ("entity", "text", "problem"),
    [
        ("width", "3 cm", "'cm' is not a unit of width"),
        ("item_weight", "10 volt", "'volt' is not a unit of item_weight"),
        ("item_weight", "gram 10", "is not NUMBER UNIT"),
        ("item_weight", "10gram", "is not NUMBER UNIT"),
        ("item_weight", "1e3 gram", "is not NUMBER UNIT"),
        ("colour", "10 gram", "entity 'colour' is not in the unit map"),
    ],
)
def test_values_it_refuses_say_why(entity: str, text: str, problem: str):
    checked = parse_entity_value(entity, text, UNITS)
    assert checked.valid is False and checked.cells()[2] == "false" and problem in checked.problem


def test_the_map_is_a_setting(monkeypatch: pytest.MonkeyPatch):
    assert load_settings().labels.entity_unit_map == UNITS
    monkeypatch.setenv("WORKBENCH_LABELS__ENTITY_UNIT_MAP", '{"width": ["centimetre", "cm"]}')
    custom = load_settings().labels.entity_unit_map
    assert custom == {"width": ["centimetre", "cm"]}
    assert parse_entity_value("width", "3 cm", custom).valid is True
    assert parse_entity_value("item_weight", "3 gram", custom).problem == "entity 'item_weight' is not in the unit map"
