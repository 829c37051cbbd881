"""OCR post-processing rules: characters to strip, a character-mapping table and a validation pattern.

Seed 003's rules ship as the `seed-003` preset: strip `:`, `-` and spaces, map look-alike letters to digits
(O/o->0, i/I/L/l->1, Z/z/R->2, S/s->5, B->8, b/G->6, g->9, A->4, /->7), then accept only an 11-digit code
anchored on `25`. The pattern is checked after mapping, so a misread `Z5...` is repaired and a string without
the anchor is never accepted. Rules are versioned by a settings hash like recipes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from services.names import InvalidNameError, is_name, resolve_in

SEED_003_MAPPING = {
    "O": "0", "o": "0", "i": "1", "I": "1", "L": "1", "l": "1", "Z": "2", "z": "2", "R": "2",
    "S": "5", "s": "5", "B": "8", "b": "6", "G": "6", "g": "9", "A": "4", "/": "7",
}  # fmt: skip


class RulesError(ValueError):
    pass


class OcrRules(BaseModel):
    name: str = "none"
    description: str = ""
    strip: str = ""
    mapping: dict[str, str] = Field(default_factory=dict)
    pattern: str | None = None  # a full match is required after stripping and mapping

    @field_validator("mapping")
    @classmethod
    def _single_characters(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            if len(source) != 1 or len(target) > 1:
                raise ValueError(f"mapping {source!r} -> {target!r}: map one character to one (or none)")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} does not compile: {exc}") from None
        return value or None

    @property
    def settings_hash(self) -> str:
        data = self.model_dump(exclude={"name", "description"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def normalise(self, raw: str) -> str:
        """Stripped and mapped text, whitespace trimmed at the ends (what the pattern is checked against): an
        engine's stray leading or trailing space is never part of a code, for every rules set, `none` included."""
        text = "".join(ch for ch in raw if ch not in self.strip)
        table: dict[str, str | int | None] = dict(self.mapping)
        return (text.translate(str.maketrans(table)) if self.mapping else text).strip()

    def apply(self, raw: str) -> RuleResult:
        text = self.normalise(raw)
        if self.pattern is None:
            return RuleResult(text, bool(text))
        return RuleResult(text, re.fullmatch(self.pattern, text) is not None)


@dataclass(frozen=True)
class RuleResult:
    text: str
    valid: bool


PRESETS: dict[str, OcrRules] = {
    "none": OcrRules(name="none", description="Text as read, whitespace trimmed at the ends."),
    "seed-003": OcrRules(
        name="seed-003",
        description="Seed 003's serial codes: strip ': -', map look-alikes to digits, 11 digits starting 25.",
        strip=": -",
        mapping=SEED_003_MAPPING,
        pattern=r"25\d{9}",
    ),
}


def _rules_file(root: Path, name: str) -> Path:
    try:
        return resolve_in(root / "ocr_rules", name, ".json", what="rules")
    except InvalidNameError as exc:
        raise RulesError(str(exc)) from None


def load_rules(root: Path, name: str) -> OcrRules:
    """A preset or rules saved in the workspace (`ocr_rules/NAME.json`), by name only: never a file path."""
    if name in PRESETS:
        return PRESETS[name]
    path = _rules_file(root, name)
    if path.is_file():
        try:
            return OcrRules.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RulesError(f"saved rules {name!r} are invalid: {_first_error(exc)}") from None
    raise RulesError(f"no OCR rules {name!r} (known: {', '.join(list_rules(root))})")


def load_rules_file(path: Path) -> OcrRules:
    """Rules from a JSON file that the person at the shell names (CLI only; the API and pages use names)."""
    try:
        return OcrRules.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"cannot read rules file {path.name!r} ({type(exc).__name__})") from None
    except ValueError as exc:
        raise RulesError(f"rules file {path.name!r} is invalid: {_first_error(exc)}") from None


def load_rules_arg(root: Path, value: str) -> OcrRules:
    """For the CLI and the server's own settings: a rules name, or an existing JSON file given as a path."""
    if not is_name(value) and (candidate := Path(value).expanduser()).is_file():
        return load_rules_file(candidate)
    return load_rules(root, value)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'rules'}: {first['msg']}"
    return str(exc)


def save_rules(root: Path, rules: OcrRules) -> Path:
    """Saved as `ocr_rules/NAME.json` (a preset name is refused: presets are read-only)."""
    if rules.name in PRESETS:
        raise RulesError(f"rules name {rules.name!r}: not a preset name (presets are read-only; save under another)")
    path = _rules_file(root, rules.name)  # checked here too: model_copy(update=...) skips validators
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rules.model_dump_json(indent=1), encoding="utf-8")
    return path


def list_rules(root: Path) -> list[str]:
    return sorted(PRESETS) + sorted(p.stem for p in (root / "ocr_rules").glob("*.json") if is_name(p.stem))
