"""Issue 14, password guessing: the sign-in throttle counts failures per user name and per client address
across sessions (several AppTest sessions, and two real browsers behind a proxy), across processes and
restarts (counters on disk), locks out, and refuses a locked attempt without hashing: fast, and with the
same answer whether the user exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.auth import ITERATIONS, hash_password
from services.core.settings import SignInSettings, load_settings
from services.core.sign_in_throttle import (
    SignInThrottle,
    address_key,
    attempt_sign_in,
    client_address,
    throttle_folder,
)
from tests.conftest import ROOT

APP = str(ROOT / "app.py")
LOCKED = "Too many failed sign-ins"
WRONG = "Unknown user or wrong password."


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("s3cret!", iterations=1000)}))
    return tmp_path / "ws"


def attempt(name: str, password: str) -> AppTest:
    """A new browser session (its own session state) that tries once."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="sign-in-name").input(name)
    at.text_input(key="sign-in-password").input(password)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


def said(at: AppTest) -> str:
    if any("Signed in as" in c.value for c in at.sidebar.caption):
        return "signed in"
    return " ".join(e.value for e in at.error)


def test_one_name_is_locked_across_sessions_whether_or_not_it_exists(users: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_SIGN_IN__MAX_FAILURES_PER_USER", "3")
    assert [said(attempt("alice", f"guess{i}")) for i in range(2)] == [WRONG, WRONG]
    assert LOCKED in said(attempt("alice", "guess2"))  # the third failure, in a third session, locks the name
    assert LOCKED in said(attempt("alice", "s3cret!"))  # even the right password, from a fresh session
    assert LOCKED in said(attempt(" Alice ", "s3cret!"))  # and the same name spelt differently
    # a name that does not exist gets exactly the same answers
    assert [said(attempt("mallory", f"guess{i}")) for i in range(2)] == [WRONG, WRONG]
    assert LOCKED in said(attempt("mallory", "guess2")) and LOCKED in said(attempt("mallory", "x"))
    assert said(attempt("bob", "x")) == WRONG  # other names are not locked (the address limit is 20)


def test_one_address_is_locked_whatever_names_it_tries(users: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_SIGN_IN__MAX_FAILURES_PER_ADDRESS", "4")
    answers = [said(attempt(name, "guess")) for name in ("alice", "bob", "carol")]
    assert answers == [WRONG, WRONG, WRONG]
    assert LOCKED in said(attempt("dave", "guess"))  # the fourth failure from this address
    assert LOCKED in said(attempt("alice", "s3cret!"))  # alice's own password, from the locked address


def test_a_lockout_ends_and_a_success_clears_the_name(users: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_SIGN_IN__MAX_FAILURES_PER_USER", "2")
    monkeypatch.setenv("WORKBENCH_SIGN_IN__LOCKOUT_SECONDS", "2")
    assert said(attempt("alice", "a")) == WRONG
    assert LOCKED in said(attempt("alice", "b"))
    assert LOCKED in said(attempt("alice", "s3cret!"))
    time.sleep(2.1)
    assert said(attempt("alice", "s3cret!")) == "signed in"
    assert said(attempt("alice", "c")) == WRONG  # the success cleared the count: one failure is not a lockout


def test_refusals_are_cheap_and_counters_outlive_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A guess costs a full PBKDF2 (600,000 iterations); a refused one is a read of one counter. The
    counters are on disk: another process's failures lock the name here, and a new throttle (a restarted
    server) still sees them."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("s3cret!")}))
    settings = load_settings(workspace=ws)
    limits = SignInSettings(max_failures_per_user=3)
    script = (
        "import sys; from pathlib import Path; from services.core.settings import load_settings, SignInSettings; "
        "from services.core.sign_in_throttle import SignInThrottle, attempt_sign_in, throttle_folder; "
        "s = load_settings(workspace=sys.argv[1]); "
        "t = SignInThrottle(throttle_folder(Path(sys.argv[1])), SignInSettings(max_failures_per_user=3)); "
        "print([attempt_sign_in(s, t, 'alice', f'guess{i}', '203.0.113.9').retry_after for i in range(3)])"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(ws)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    waits = json.loads(run.stdout)
    assert waits[:2] == [0.0, 0.0] and waits[2] == limits.lockout_seconds  # the third failure locked the name
    throttle = SignInThrottle(throttle_folder(ws), limits)  # this process: a server started afterwards
    started = time.perf_counter()
    refused = attempt_sign_in(settings, throttle, "alice", "s3cret!", "198.51.100.7")
    refused_seconds = time.perf_counter() - started
    assert refused.user is None and refused.retry_after > 0
    started = time.perf_counter()
    guess = attempt_sign_in(settings, throttle, "bob", "guess", "198.51.100.7")  # not locked: hashed
    hashed_seconds = time.perf_counter() - started
    assert guess.user is None and guess.retry_after == 0
    assert ITERATIONS == 600_000 and hashed_seconds > 0.1, hashed_seconds
    assert refused_seconds < min(0.05, hashed_seconds / 10), (refused_seconds, hashed_seconds)
    for _ in range(3):
        attempt_sign_in(settings, throttle, "nobody", "x", "198.51.100.8")
    started = time.perf_counter()
    unknown = attempt_sign_in(settings, throttle, "nobody", "x", "198.51.100.8")
    assert unknown == refused.__class__(None, unknown.retry_after) and unknown.retry_after > 0
    assert time.perf_counter() - started < min(0.05, hashed_seconds / 10)  # unknown names: just as cheap
    throttle.close()


def test_counters_expire_with_an_injected_clock(tmp_path: Path):
    now = [1000.0]
    limits = SignInSettings(max_failures_per_user=3, max_failures_per_address=10, window_seconds=60,
                            lockout_seconds=300)  # fmt: skip
    throttle = SignInThrottle(tmp_path / "t", limits, clock=lambda: now[0])
    assert throttle.failed("alice", "192.0.2.1") == 0 and throttle.failed("alice", "192.0.2.1") == 0
    now[0] += 61  # the window passed: the count starts again
    assert throttle.failed("alice", "192.0.2.1") == 0 and throttle.failed("alice", "192.0.2.1") == 0
    assert throttle.failed("alice", "192.0.2.1") == 300 and throttle.retry_after("alice", "192.0.2.2") == 300
    now[0] += 299
    assert throttle.retry_after("alice", "192.0.2.1") == pytest.approx(1)
    now[0] += 1.5
    assert throttle.retry_after("alice", "192.0.2.1") == 0
    throttle.close()


def test_the_client_address_trusts_x_forwarded_for_only_when_told():
    assert client_address(None, [], 0) == "127.0.0.1"  # Streamlit reports loopback as None
    assert client_address("198.51.100.7", ["203.0.113.1"], 0) == "198.51.100.7"  # no proxy: a header is a lie
    # one proxy of ours appends the address it saw: the rightmost entry; what the client wrote is ignored
    assert client_address("10.0.0.2", ["6.6.6.6, 203.0.113.1"], 1) == "203.0.113.1"
    assert client_address("10.0.0.2", ["6.6.6.6", "203.0.113.1"], 1) == "203.0.113.1"  # repeated headers
    assert client_address("10.0.0.2", ["6.6.6.6, 203.0.113.1, 10.0.0.9"], 2) == "203.0.113.1"  # two proxies
    assert client_address("10.0.0.2", [], 1) == "10.0.0.2"  # did not come through the proxy
    assert client_address("10.0.0.2", ["not-an-ip"], 1) == "10.0.0.2"
    assert client_address("no-such-peer", [], 0) == "127.0.0.1"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("::ffff:203.0.113.5") == "203.0.113.5" and address_key("203.0.113.5") == "203.0.113.5"


@pytest.mark.browser
def test_behind_a_trusted_proxy_each_client_address_is_throttled_on_its_own(tmp_path: Path):
    """Two real browsers on one loopback peer, as behind a proxy that sets X-Forwarded-For: with
    `trusted_proxy_hops = 1` the first address is locked and the second is not."""
    from playwright.sync_api import expect, sync_playwright

    from tests.security.servers import dashboard_server
    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    settings = {
        "WORKBENCH_WORKSPACE": str(tmp_path / "ws"),
        "WORKBENCH_USERS": json.dumps({"alice": hash_password("s3cret!", iterations=1000)}),
        "WORKBENCH_SIGN_IN__MAX_FAILURES_PER_ADDRESS": "2",
        "WORKBENCH_SIGN_IN__TRUSTED_PROXY_HOPS": "1",
    }
    command = ["streamlit", "run", "app.py", "--server.port", "{port}", "--server.headless", "true"]
    with dashboard_server(command, tmp_path / "dashboard.log", **settings) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

        def sign_in(forwarded: str, name: str, password: str) -> None:
            context = browser.new_context(extra_http_headers={"X-Forwarded-For": forwarded})
            page = context.new_page()
            page.goto(base, wait_until="domcontentloaded")
            page.get_by_role("textbox", name="User").fill(name)
            page.get_by_role("textbox", name="Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            outcome = page.get_by_text(LOCKED).or_(page.get_by_text(WRONG)).or_(page.get_by_text("Signed in as"))
            expect(outcome).to_be_visible(timeout=30_000)
            results.append(outcome.inner_text())
            context.close()

        results: list[str] = []
        sign_in("6.6.6.6, 203.0.113.1", "bob", "x")  # the client's own entry (6.6.6.6) is not believed
        sign_in("203.0.113.1", "carol", "x")  # the second failure from 203.0.113.1 locks it
        sign_in("7.7.7.7, 203.0.113.1", "alice", "s3cret!")
        sign_in("203.0.113.2", "alice", "s3cret!")  # another client behind the same proxy
        browser.close()
    assert results[0] == WRONG and LOCKED in results[1] and LOCKED in results[2], results
    assert "Signed in as" in results[3], results


# --- R7: attempts are counted before hashing ---------------------------------------------------------------


@pytest.mark.parametrize("same_name", [True, False])
def test_simultaneous_reservations_never_pass_the_limit(tmp_path: Path, same_name: bool):
    """Ten attempts at once, from ten threads with one throttle each (one per server process or session): at most
    the limit of them may go on to hash a password, for one name or for one address trying many names."""
    import threading

    limits = SignInSettings(max_failures_per_user=3, max_failures_per_address=4)
    barrier = threading.Barrier(10)
    waits: list[float] = []

    def reserve(i: int) -> None:
        throttle = SignInThrottle(tmp_path / "t", limits)
        barrier.wait()
        waits.append(throttle.reserve("alice" if same_name else f"user{i}", "203.0.113.7").wait)
        throttle.close()

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    allowed = 3 if same_name else 4
    assert sorted(w == 0 for w in waits) == [False] * (10 - allowed) + [True] * allowed, waits
    assert all(limits.lockout_seconds - 10 < w <= limits.lockout_seconds for w in waits if w), waits


def test_a_right_password_gives_its_reserved_attempt_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Successes are not failures: a team behind one address signs in as often as it likes, and a success that
    happened to reach the address's limit lifts the lockout it started; failures still lock the address."""
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("s3cret!", iterations=1000)}))
    settings = load_settings(workspace=tmp_path / "ws")
    throttle = SignInThrottle(tmp_path / "t", SignInSettings(max_failures_per_user=5, max_failures_per_address=3))
    office = "198.51.100.20"
    for _ in range(6):  # twice the address limit, all successes
        assert attempt_sign_in(settings, throttle, "alice", "s3cret!", office).user == "alice"
    assert throttle.retry_after("bob", office) == 0
    assert attempt_sign_in(settings, throttle, "bob", "x", office).retry_after == 0
    assert attempt_sign_in(settings, throttle, "carol", "x", office).retry_after == 0
    assert attempt_sign_in(settings, throttle, "alice", "s3cret!", office).user == "alice"  # the 3rd attempt: lifted
    assert throttle.retry_after("dave", office) == 0
    assert attempt_sign_in(settings, throttle, "dave", "x", office).retry_after == throttle.limits.lockout_seconds
    assert attempt_sign_in(settings, throttle, "alice", "s3cret!", office).user is None  # now locked for everyone
    throttle.close()
