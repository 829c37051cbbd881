"""Category lists (parsing, versions, extraction), answer validation, and the request budget."""

from __future__ import annotations

import threading
import time

import pytest

from services.core.workspace import Workspace
from services.io.gemini_client import GeminiError, parse_json_object, retry_delay_from_error
from services.io.rate_limit import RateLimiter
from services.stages.describe.categories import (
    MAX_CATEGORIES,
    MAX_CATEGORY_CSV_BYTES,
    UNKNOWN,
    CategoryError,
    extract_categories,
    list_lists,
    load_list,
    normalise,
    parse_category_csv,
    save_list,
    validate_answer,
)


def test_parse_category_csv_keeps_order_and_drops_duplicates_blanks_and_unknown():
    data = b"Category,notes\nAnimals,x\n  Food \nanimals,dup\n,\nunknown,\nCity  Streets,\n"
    assert parse_category_csv(data) == ["Animals", "Food", "City Streets"]
    assert parse_category_csv("\ufeffcategory\nA\n".encode()) == ["A"]  # BOM and lower-case header


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"name\nA\n", "no `Category` column (columns: name)"),
        (b"Category\n\n", "the list has no categories"),
        (b'Category\n"a, b"\n', "contains a comma"),
        (b"\xff\xfeC\x00", "not UTF-8"),
    ],
)
def test_bad_category_files_say_why(data: bytes, message: str):
    with pytest.raises(CategoryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_category_csv(data, "cats.csv")


def test_extract_categories_from_a_categorised_csv():
    data = b'image_name,description,categories\na.jpg,x,"Food, Animals"\nb.jpg,y,Animals\nc.jpg,z,unknown\n'
    assert extract_categories(data) == ["Animals", "Food"]
    with pytest.raises(CategoryError, match="no `categories` column"):
        extract_categories(b"image_name,description\n")


def test_a_list_is_read_only_up_to_its_limit_and_a_big_file_is_refused_unread():
    """R15: a 16 MB CSV once cost 14 s and 128 MB before `normalise` refused its 500+ names."""
    consumed = 0

    def names():
        nonlocal consumed
        for i in range(1_000_000):
            consumed += 1
            yield f"name {i}"

    with pytest.raises(CategoryError, match=f"more than {MAX_CATEGORIES} categories.*entry 501"):
        normalise(names())
    assert consumed == MAX_CATEGORIES + 1  # the 501st distinct name stops the reading
    assert len(normalise(f"n{i % MAX_CATEGORIES}" for i in range(50_000))) == MAX_CATEGORIES  # repeats are fine
    big = b"Category\n" + b"x\n" * (MAX_CATEGORY_CSV_BYTES // 2)
    with pytest.raises(CategoryError, match=f"at most {MAX_CATEGORY_CSV_BYTES:,} bytes"):
        parse_category_csv(big, "huge.csv")
    many = "image_name,description,categories\n" + "".join(f"i{i}.jpg,d,c{i}\n" for i in range(100_000))
    started = time.perf_counter()
    with pytest.raises(CategoryError, match="more than 500 categories"):
        extract_categories(many.encode())  # a categorised CSV may be big; its distinct names may not
    assert time.perf_counter() - started < 1.0


def test_lists_are_versioned_by_content(ws: Workspace):
    v1 = save_list(ws, "scenes", ["Food", "Animals"], "upload:a.csv")
    assert (v1.version, v1.categories, v1.allowed[-1]) == (1, ("Food", "Animals"), UNKNOWN)
    assert save_list(ws, "scenes", ["Food", " Animals", "food"], "edit").version == 1  # same content
    v2 = save_list(ws, "scenes", ["Food", "Animals", "Cars"], "edit")
    assert v2.version == 2 and v2.content_hash != v1.content_hash
    assert load_list(ws, "scenes").version == 2 and load_list(ws, "scenes", 1).categories == ("Food", "Animals")
    assert [x.label for x in list_lists(ws)] == ["scenes v2"]
    assert len(list_lists(ws, all_versions=True)) == 2
    with pytest.raises(CategoryError, match=r"no category list 'other' \(lists: scenes v2\)"):
        load_list(ws, "other")
    with pytest.raises(CategoryError, match="list name"):
        save_list(ws, "../evil", ["a"], "edit")


def test_validation_keeps_only_listed_categories_in_the_lists_spelling(ws: Workspace):
    cats = save_list(ws, "c", ["Food", "City Streets", "Animals"], "t")
    assert validate_answer(["food", " city  streets "], cats).categories == ["Food", "City Streets"]
    checked = validate_answer(["Spaceships", "Animals", "Food", "City Streets"], cats)
    assert checked.categories == ["Animals", "Food"] and checked.rejected == ["Spaceships"]
    assert checked.extra == ["City Streets"]  # a third valid category is kept on record, not dropped
    assert validate_answer(["food", "FOOD", "animals"], cats).extra == []  # repeats are not extra
    assert validate_answer(["Food"], cats).extra == [] and validate_answer(["Spaceships"], cats).extra == []
    assert validate_answer(["Spaceships"], cats).categories == [UNKNOWN]
    assert validate_answer("Food, Animals", cats).categories == ["Food", "Animals"]  # the seeds' string form
    assert validate_answer(None, cats).categories == [UNKNOWN]
    assert validate_answer(["unknown", "Food"], cats).categories == ["Food"]


def test_json_answers_and_retry_delays_are_read_strictly():
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(GeminiError, match="not JSON"):
        parse_json_object('{"a": ')
    with pytest.raises(GeminiError, match="not an object"):
        parse_json_object("[1, 2]")

    class Err:
        details = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.5s"}]}}

    assert retry_delay_from_error(Err()) == 37.5
    Err.details = {"error": {"details": []}}
    assert retry_delay_from_error(Err()) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_rate_limiter_budget_burst_and_server_pause():
    clock = FakeClock()
    limiter = RateLimiter(per_minute=60, burst=3, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(6):
        limiter.acquire()
        starts.append(clock.now)
    assert starts[:3] == [0.0, 0.0, 0.0]  # the burst
    assert starts[3:] == pytest.approx([1.0, 2.0, 3.0])  # then one a second
    limiter.pause(1.5)  # at t=3, with no budget left
    limiter.acquire()
    assert clock.now == pytest.approx(4.5)  # waited for the server, not longer
    limiter.acquire()
    assert clock.now == pytest.approx(5.0)  # 1.5 s of budget accrued during the pause: the next one is early
    limiter.acquire()
    assert clock.now == pytest.approx(6.0)  # then one a second again
    limiter.pause(100.0)
    for _ in range(3):
        limiter.acquire()
    assert clock.now == pytest.approx(106.0)  # a long pause earns at most `burst` at once
    limiter.acquire()
    assert clock.now == pytest.approx(107.0)
    with pytest.raises(ValueError):
        RateLimiter(per_minute=0)
