"""Seed 000's `constants.py`: the units each entity may be measured in (the Amazon ML Challenge's
`entity_unit_map`), and `entity_value` ("10.0 gram", "[2.0, 5.0] centimetre") read against it, as the
challenge's own sanity check read it (a number or a [low, high] range, a space, a unit; "meter" and "feet"
taken for "metre" and "foot"). The map is a setting (`labels.entity_unit_map`), so a team can add its units.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_LENGTH = ["centimetre", "foot", "inch", "metre", "millimetre", "yard"]
_WEIGHT = ["gram", "kilogram", "microgram", "milligram", "ounce", "pound", "ton"]
DEFAULT_ENTITY_UNIT_MAP: dict[str, list[str]] = {
    "width": _LENGTH,
    "depth": _LENGTH,
    "height": _LENGTH,
    "item_weight": _WEIGHT,
    "maximum_weight_recommendation": _WEIGHT,
    "voltage": ["kilovolt", "millivolt", "volt"],
    "wattage": ["kilowatt", "watt"],
    "item_volume": [
        "centilitre", "cubic foot", "cubic inch", "cup", "decilitre", "fluid ounce", "gallon", "imperial gallon",
        "litre", "microlitre", "millilitre", "pint", "quart",
    ],
}  # fmt: skip
ENTITY_VALUE_COLUMNS = ["value", "unit", "value_valid", "value_problem"]

_NUMBER = r"-?\d+(?:\.\d+)?"
_RANGE = rf"\[\s*(?P<low>{_NUMBER})\s*,\s*(?P<high>{_NUMBER})\s*\]"
_VALUE = re.compile(rf"(?:{_RANGE}|(?P<one>{_NUMBER}))\s+(?P<unit>[A-Za-z ]+)")


@dataclass(frozen=True)
class EntityValue:
    value: str  # "10.0", or "[2.0, 5.0]" for a range; "" when the text is not NUMBER UNIT
    unit: str
    valid: bool | None  # None: nothing to check (an empty entity_value, as in test.csv)
    problem: str

    def cells(self) -> list[str]:
        """The four labelled-CSV columns."""
        return [self.value, self.unit, "" if self.valid is None else str(self.valid).lower(), self.problem]


def _usual_spelling(unit: str, allowed: set[str]) -> str:
    """The challenge's `common_mistake`: American spellings of the metric units, and feet."""
    for wrong, right in (("ter", "tre"), ("feet", "foot")):
        if unit not in allowed and unit.replace(wrong, right) in allowed:
            return unit.replace(wrong, right)
    return unit


def parse_entity_value(entity_name: str, text: str, unit_map: Mapping[str, Sequence[str]]) -> EntityValue:
    """The number and unit of `text`, and whether the unit is one `entity_name` may have (the problem if not)."""
    stripped = " ".join(text.split())
    if not stripped:
        return EntityValue("", "", None, "")
    match = _VALUE.fullmatch(stripped)
    if match is None:
        return EntityValue("", "", False, f"{stripped[:40]!r} is not NUMBER UNIT (e.g. '10.0 gram', '[2, 5] inch')")
    one, low, high = match["one"], match["low"], match["high"]
    value = str(float(one)) if one is not None else f"[{float(low)}, {float(high)}]"
    every_unit = {u for units in unit_map.values() for u in units}
    unit = _usual_spelling(match["unit"].strip().lower(), every_unit)
    entity = entity_name.strip()
    if entity not in unit_map:
        return EntityValue(value, unit, False, f"entity {entity[:40]!r} is not in the unit map")
    allowed = list(unit_map[entity])
    if unit not in allowed:
        return EntityValue(value, unit, False, f"{unit!r} is not a unit of {entity} ({', '.join(allowed)})")
    return EntityValue(value, unit, True, "")
