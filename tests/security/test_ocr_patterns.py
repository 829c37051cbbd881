"""R3: users' OCR rule patterns run on RE2 (linear time, GIL released), at the one guard every path goes
through (OcrRules validation: the page's editor, saved files, the API's rules names, jobs' parameters). A
pattern RE2 cannot run is refused with the reason; what today's presets need still works."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from services.stages.ocr.rules import (
    MAX_MATCHED_CHARS,
    MAX_PATTERN_CHARS,
    PRESETS,
    OcrRules,
    RulesError,
    load_rules,
    save_rules,
)


def test_catastrophic_patterns_match_in_linear_time_and_let_other_threads_run() -> None:
    rules = OcrRules(name="greedy", strip=" ", pattern="(a+)+")
    assert rules.apply("a" * 29).valid  # the same answers as Python's re for what both can run...
    assert not rules.apply("a" * 29 + " 1").valid
    assert re.fullmatch("(a+)+", "a" * 29) is not None
    ticks = 0
    worker = threading.Thread(target=lambda: [rules.apply("a" * 4000 + "!") for _ in range(50)])
    started = time.monotonic()
    worker.start()
    while worker.is_alive():  # ...but in time linear in the text, without holding the GIL
        ticks += 1
        time.sleep(0.001)
    worker.join()
    assert time.monotonic() - started < 5
    assert ticks > 0


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "invalid escape sequence"),  # backreference
        (r"(?=25)\d+", "invalid perl operator"),  # lookahead
        (r"(?<!x)25", "invalid perl operator"),  # lookbehind
        (r"\d++", "bad repetition operator"),  # possessive
        (r"a{1001}", "invalid repetition size"),
        (r"(\pL|\pN){1000}", "pattern too large"),  # a compiled program over the memory budget
        (r"((a{100}){100}){100}", "invalid repetition size"),  # nested counts over 1000 in all
        ("([", "missing"),
    ],
)
def test_a_pattern_re2_cannot_run_is_refused_with_the_reason(tmp_path: Path, pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"pattern .*does not compile \(RE2\): .*{re.escape(reason)}"):
        OcrRules(name="x", pattern=pattern)
    # a file saved by hand (or before this check) is refused when it is loaded, naming the rules and the field
    folder = tmp_path / "ocr_rules"
    folder.mkdir()
    (folder / "old.json").write_text(json.dumps({"name": "old", "pattern": pattern}))
    with pytest.raises(RulesError, match=r"saved rules 'old' are invalid: pattern: .*does not compile \(RE2\)"):
        load_rules(tmp_path, "old")


def test_long_patterns_and_long_readings_are_bounded() -> None:
    with pytest.raises(ValueError, match=f"over the {MAX_PATTERN_CHARS} limit"):
        OcrRules(name="x", pattern="a" * (MAX_PATTERN_CHARS + 1))
    rules = OcrRules(name="x", pattern=r"\d+")
    assert rules.apply("7" * MAX_MATCHED_CHARS).valid
    assert not rules.apply("7" * (MAX_MATCHED_CHARS + 1)).valid  # too long to be one code: never valid
    assert OcrRules(name="x").apply("7" * (MAX_MATCHED_CHARS + 1)).valid  # no pattern: any text, as before


def test_the_presets_and_ordinary_patterns_keep_working(tmp_path: Path) -> None:
    seed = PRESETS["seed-003"]
    assert seed.apply("Z5O1234S678").text == "25012345678" and seed.apply("Z5O1234S678").valid
    assert not seed.apply("2501234567").valid and not seed.apply("X5012345678").valid
    for pattern, good, bad in [
        (r"[A-Z]{2}\d{4}", "AB1234", "AB12345"),
        (r"(?i)lot-[0-9a-f]{6}", "LOT-00ff1a", "lot-00ff1"),
        (r"25\d{9}|99\d{3}", "99123", "9912"),
        (r"^25\d{9}$", "25123456789", "2512345678"),  # anchors are accepted (the match is full anyway)
        (r"(?P<year>\d{4})-\d{2}", "2026-11", "2026-1"),
    ]:
        rules = OcrRules(name="mine", pattern=pattern)
        assert rules.apply(good).valid and not rules.apply(bad).valid, pattern
    save_rules(tmp_path, OcrRules(name="mine", pattern=r"25\d{9}"))
    assert load_rules(tmp_path, "mine").apply("25123456789").valid


def test_a_job_refuses_rules_it_is_handed_with_a_pattern_re2_cannot_run() -> None:
    """Jobs rebuild their rules from the job's parameters with the same model: a tampered parameter (or one
    written before this check) is refused there too, before any image is read."""
    with pytest.raises(ValueError, match="does not compile"):
        OcrRules.model_validate({"name": "x", "pattern": r"(a)\1"})


def test_the_ocr_page_shows_why_a_pattern_is_refused_and_does_not_save_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("app_pages/ocr.py").run()
    at.text_input(key="ocr-pattern-seed-003").input(r"(?=25)\d{11}").run()
    at.text_input(key="ocr-save").input("mine").run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Rules not valid: pattern") and "invalid perl operator: (?=" in e for e in errors), errors
    assert at.button(key="ocr-save-rules").disabled
    at.text_input(key="ocr-pattern-seed-003").input(r"25\d{9}").run()  # fixed: saved
    at.button(key="ocr-save-rules").click().run()
    assert load_rules(tmp_path / "ws", "mine").pattern == r"25\d{9}"
