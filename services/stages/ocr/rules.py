"""OCR post-processing rules: characters to strip, a character-mapping table and a validation pattern.

Seed 003's rules ship as the `seed-003` preset: strip `:`, `-` and spaces, map look-alike letters to digits
(O/o->0, i/I/L/l->1, Z/z/R->2, S/s->5, B->8, b/G->6, g->9, A->4, /->7), then accept only an 11-digit code
anchored on `25`. The pattern is checked after mapping, so a misread `Z5...` is repaired and a string without
the anchor is never accepted. Rules are versioned by a settings hash like recipes.

Patterns come from users (the OCR page, saved files, the API's rules names), so they run on RE2
(google-re2), which matches in time linear in the text and releases the GIL: Python's `re` backtracks, and
`(a+)+` on a 30-letter reading held the GIL for minutes, stalling the dashboard and the API for everyone.
RE2 has no backreferences (`\\1`), lookarounds (`(?=`, `(?<!`), possessive quantifiers or `\\Z` (use `$`, or
nothing: the match is a full match anyway), counts above 1000, and its `\\d`, `\\w`, `\\s`, `\\b` are ASCII.
A pattern RE2 cannot run is refused when the rules are validated (saved, loaded, sent to a job), with the
reason. Readings longer than MAX_MATCHED_CHARS are never valid (an OCR line is short).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from services.core.errors import WorkbenchError
from services.core.names import InvalidNameError, is_name, resolve_in

SEED_003_MAPPING = {
    "O": "0", "o": "0", "i": "1", "I": "1", "L": "1", "l": "1", "Z": "2", "z": "2", "R": "2",
    "S": "5", "s": "5", "B": "8", "b": "6", "G": "6", "g": "9", "A": "4", "/": "7",
}  # fmt: skip


MAX_PATTERN_CHARS = 1_000
MAX_MATCHED_CHARS = 4_096  # a reading longer than this never passes a pattern (one OCR line is far shorter)
PATTERN_MEMORY_BYTES = 8 * 2**20  # RE2's compiled-program budget: a pattern that needs more is refused


class RulesError(WorkbenchError, ValueError):
    error_class = "ocr_rules"
    http_status = 422


def _re2_options() -> Any:
    import re2  # the `ocr` extra

    options = re2.Options()
    options.log_errors = False  # a refused pattern is reported to the user, not logged by RE2's C++ logger
    options.max_mem = PATTERN_MEMORY_BYTES
    return options


@functools.lru_cache(maxsize=256)
def compiled_pattern(pattern: str) -> Any:
    """The pattern compiled by RE2 (linear-time matching); raises ValueError naming the pattern and the cause."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"pattern is {len(pattern)} characters, over the {MAX_PATTERN_CHARS} limit")
    import re2  # the `ocr` extra

    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"pattern {pattern!r} does not compile (RE2): {reason} (patterns use RE2 syntax: no backreferences, "
            "lookarounds or possessive quantifiers, counts up to 1000)"
        ) from None


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
            compiled_pattern(value)  # refused here, so pages, saved files, the API and jobs never run it
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
        if len(text) > MAX_MATCHED_CHARS:
            return RuleResult(text, False)
        return RuleResult(text, compiled_pattern(self.pattern).fullmatch(text) is not None)


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
