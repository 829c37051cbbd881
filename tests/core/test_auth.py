"""Sign-in: password hashing, the gate in front of every page, and no page without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from services.core.auth import check_credentials, hash_password, verify_password
from services.core.settings import load_settings
from tests.conftest import ROOT

APP = str(ROOT / "app.py")


def test_hashes_verify_and_unknown_users_fail(monkeypatch: pytest.MonkeyPatch):
    encoded = hash_password("correct horse", iterations=1000)
    assert encoded.startswith("pbkdf2_sha256$1000$") and verify_password("correct horse", encoded)
    assert not verify_password("Correct horse", encoded)
    assert not verify_password("x", "md5$whatever") and not verify_password("x", "garbage")
    assert hash_password("same", iterations=1000) != hash_password("same", iterations=1000)  # salted
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": encoded}))
    settings = load_settings()
    assert check_credentials(settings, "alice", "correct horse")
    assert not check_credentials(settings, "alice", "wrong") and not check_credentials(settings, "mallory", "x")
    assert "correct horse" not in repr(settings) and encoded not in repr(settings)
    with pytest.raises(ValueError):
        hash_password("")


def test_users_from_secrets_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    encoded = hash_password("pw", iterations=1000)
    (tmp_path / "secrets.toml").write_text(f'[users]\nbob = "{encoded}"\n')
    monkeypatch.setenv("WORKBENCH_SECRETS", str(tmp_path / "secrets.toml"))
    assert check_credentials(load_settings(), "bob", "pw")


def test_every_page_is_behind_the_sign_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("s3cret!", iterations=1000)}))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Sign in"] and not at.metric  # no page content before signing in
    at.switch_page("app_pages/download.py").run()
    assert not at.metric and not at.file_uploader and [b.label for b in at.button] == ["Sign in"]
    at.text_input(key="sign-in-name").input("alice")  # form fields: sent with the submit below
    at.text_input(key="sign-in-password").input("wrong")
    at.button[0].click().run()
    assert any("Unknown user or wrong password" in e.value for e in at.error)
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("s3cret!")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("Signed in as **alice**" in c.value for c in at.sidebar.caption)
    assert at.file_uploader  # the Download page itself now
    at.sidebar.button(key="sign-out").click().run()
    assert [b.label for b in at.button] == ["Sign in"]


def test_hash_password_command(tmp_path: Path):
    run = subprocess.run(
        [sys.executable, "-m", "services", "--workspace", str(tmp_path / "ws"), "hash-password", "carol"],
        input="pw1\npw1\n", cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip().splitlines()[-1]
    name, _, value = line.partition(" = ")
    assert name == "carol" and verify_password("pw1", value.strip('"'))
