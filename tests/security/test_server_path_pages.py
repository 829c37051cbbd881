"""Issue 14 part 2 and issue 15 on the dashboard (AppTest, sign-in configured as on a team server): every input
that takes a path on the server goes through the one guard, a planted secret appears in no element, and the
Preprocess page's recipe saving is safe and versioned."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from services.core.auth import hash_password
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.jobs.manager import JobManager
from services.stages.download.folder_import import start_folder_import
from services.stages.preprocess.recipes import PRESETS, load_recipe, recipe_versions
from tests.support.image_server import make_jpeg

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "planted-gemini-key-5e0d22"


def rendered(at: AppTest) -> str:
    """Every element of the page as text (protos include dataframes, captions, help texts and values)."""

    def walk(node: Any) -> Iterator[str]:
        children = getattr(node, "children", None)
        if isinstance(children, dict):
            for child in children.values():
                yield from walk(child)
        else:
            yield str(getattr(node, "proto", "")) + str(getattr(node, "value", ""))

    return "\n".join(walk(at._tree))


@pytest.fixture
def team_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Sign-in configured, a dataset, a data folder, and secrets planted in and around it."""
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw-alice", iterations=1000)}))
    monkeypatch.setenv("WORKBENCH_GEMINI_API_KEY", PLANTED)
    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    for i in range(3):
        (data / "photos" / f"p{i}.jpg").write_bytes(make_jpeg(40, 30, seed=i))
    (data / "urls.csv").write_text("image_link,note\nhttp://127.0.0.1:9/a.jpg,first row\n")
    (data / ".streamlit").mkdir()
    (data / ".streamlit" / "secrets.toml").write_text(f'gemini_api_key = "{PLANTED}"\n')
    (data / "leak.csv").symlink_to(tmp_path / "outside.csv")
    (tmp_path / "outside.csv").write_text(f"secret\n{PLANTED}\n")
    env_file = tmp_path / "environ.csv"
    env_file.write_text(f"key\n{PLANTED}\n")
    ws = Workspace(tmp_path / "ws", load_settings())
    manager = JobManager(ws)
    manager.run(start_folder_import(ws, manager, data / "photos", "photos"))
    ws.close()
    return {"data": data, "outside": tmp_path / "outside.csv", "environ": env_file, "ws": tmp_path / "ws"}


def signed_in() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.text_input(key="sign-in-name").input("alice")
    at.text_input(key="sign-in-password").input("pw-alice")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert any("Signed in as **alice**" in c.value for c in at.sidebar.caption)
    return at


def errors(at: AppTest) -> str:
    return " | ".join(e.value for e in at.error)


def test_a_team_server_reads_no_server_path_until_an_administrator_lists_folders(team_server: dict[str, Path]) -> None:
    at = signed_in()
    assert not any(str(team_server["ws"]) in c.value for c in at.sidebar.caption)  # the workspace's name only
    at.switch_page("app_pages/download.py").run()
    for tab in ("urls", "s3"):
        at.radio(key=f"{tab}-how").set_value("Path on the server").run()
        assert not [t for t in at.text_input if t.key == f"{tab}-path"]
    assert not [t for t in at.text_input if t.key == "batch-folder"]
    assert sum("Paths on the server are off" in i.value for i in at.info) == 3
    at.switch_page("app_pages/preprocess.py").run()
    assert not [t for t in at.text_input if t.key == "pp-folder"]
    at.switch_page("app_pages/embed_train.py").run()
    assert not [t for t in at.text_input if t.key == "et-path"]
    at.text_input(key="et-checkpoint").input("/proc/self/environ").run()
    assert "server_paths" in errors(at)
    assert not at.exception and PLANTED not in rendered(at)


def test_every_server_path_input_goes_through_the_guard(
    team_server: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = team_server["data"]
    monkeypatch.setenv("WORKBENCH_SERVER_PATHS", json.dumps([str(data)]))
    at = signed_in()
    hostile = ["/etc/passwd", "/etc/shadow", "/proc/self/environ", str(team_server["environ"]),
               str(data / ".streamlit" / "secrets.toml"), str(data / "leak.csv"),
               str(ROOT / ".streamlit" / "config.toml"), str(team_server["ws"] / "catalog.sqlite"),
               str(data / ".." / "outside.csv")]  # fmt: skip
    at.switch_page("app_pages/download.py").run()
    for tab in ("urls", "s3"):
        at.radio(key=f"{tab}-how").set_value("Path on the server").run()
        for text in hostile:
            at.text_input(key=f"{tab}-path").input(text).run()
            assert "CSV path:" in errors(at), (tab, text)
            assert not at.dataframe and PLANTED not in rendered(at) and "root:" not in rendered(at)
    at.text_input(key="s3-path").input("").run()
    at.text_input(key="urls-path").input(str(data / "urls.csv")).run()
    assert not at.error and at.selectbox[0].value == "image_link"  # allowed: previewed
    assert "first row" in rendered(at)
    for text in [*hostile[:3], str(data / ".streamlit"), str(data / "urls.csv")]:
        at.text_input(key="batch-folder").input(text).run()
        assert "Drop folder on the server:" in errors(at), text
    at.switch_page("app_pages/preprocess.py").run()
    for text in hostile:
        at.text_input(key="pp-folder").input(text).run()
        assert "Folder or .zip:" in errors(at) and at.button(key="pp-import").disabled, text
    at.text_input(key="pp-folder").input(str(data / "photos")).run()
    assert not at.error and not at.button(key="pp-import").disabled
    at.switch_page("app_pages/embed_train.py").run()
    for text in hostile:
        at.text_input(key="et-path").input(text).run()
        assert "Folder or .zip path:" in errors(at) and at.button(key="et-import").disabled, text
        at.text_input(key="et-checkpoint").input(text).run()
        assert "Or a checkpoint file on the server:" in errors(at), text
    at.switch_page("app_pages/describe.py").run()
    for text in hostile:
        at.text_input(key="dc-clip-checkpoint").input(text).run()
        assert "Or a checkpoint file on the server:" in errors(at), text
    assert not at.exception and PLANTED not in rendered(at)


def test_classify_folder_input_goes_through_the_guard(
    trained: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws_root = tmp_path / "ws"
    shutil.copytree(trained[0], ws_root)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(ws_root))
    monkeypatch.setenv("WORKBENCH_USERS", json.dumps({"alice": hash_password("pw-alice", iterations=1000)}))
    monkeypatch.setenv("WORKBENCH_SERVER_PATHS", json.dumps([str(allowed)]))
    at = signed_in()
    at.switch_page("app_pages/classify.py").run()
    at.radio(key="cl-how").set_value("Folder or zip on the server").run()
    for text in ("/etc", "/proc/self", str(ws_root / "models"), str(ROOT)):
        at.text_input(key="cl-path").input(text).run()
        assert "Path:" in errors(at) and at.button(key="cl-run").disabled, text
    at.text_input(key="cl-path").input(str(allowed)).run()
    assert not at.error and not at.button(key="cl-run").disabled


def test_a_laptop_keeps_reading_any_folder_but_not_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("WORKBENCH_GEMINI_API_KEY", PLANTED)
    (tmp_path / "anywhere.csv").write_text("image_link\nhttp://127.0.0.1:9/a.jpg\n")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("app_pages/download.py").run()
    at.radio(key="urls-how").set_value("Path on the server").run()
    at.text_input(key="urls-path").input(str(tmp_path / "anywhere.csv")).run()
    assert not at.error and at.selectbox[0].value == "image_link"
    for text in ("/etc/passwd", "/proc/self/environ", str(ROOT / ".streamlit" / "config.toml"),
                 str(tmp_path / "ws" / "catalog.sqlite")):  # fmt: skip
        at.text_input(key="urls-path").input(text).run()
        assert "CSV path:" in errors(at), text
    assert PLANTED not in rendered(at) and "root:" not in rendered(at)


# --- issue 15: the Preprocess page's recipe saving ---------------------------------------------------------


def test_recipe_saving_on_the_preprocess_page(team_server: dict[str, Path]) -> None:
    ws_root = team_server["ws"]
    at = signed_in()
    at.switch_page("app_pages/preprocess.py").run()
    assert at.selectbox(key="pp-recipe").value == "ocr-128"
    assert at.text_input(key="pp-save-name").value == "ocr-128-custom"  # a built-in is offered a new name
    at.selectbox(key="pp-recipe").set_value("ocr-line").run()
    assert at.text_input(key="pp-save-name").value == "ocr-line-custom"  # the name follows the selection

    # the report: saving ocr-line under the built-in's name overwrote ocr-128
    at.text_input(key="pp-save-name").input("ocr-128").run()
    at.button(key="pp-save").click().run()
    assert "read-only" in errors(at)
    assert load_recipe(ws_root, "ocr-128") == PRESETS["ocr-128"] and not (ws_root / "recipes" / "ocr-128").exists()

    for bad in ("../../../../tmp/x", "../x", "/tmp/x", "a/b"):
        at.text_input(key="pp-save-name").input(bad).run()
        at.button(key="pp-save").click().run()
        assert "not a path" in errors(at), bad
    assert sorted(p.name for p in (ws_root / "recipes").iterdir()) == []

    at.text_input(key="pp-save-name").input("mine").run()
    at.button(key="pp-save").click().run()
    assert any("Saved mine v1" in s.value for s in at.success)
    assert at.selectbox(key="pp-recipe").value == "mine"  # what was saved is what is shown

    # an unsaved edit runs under its own name, not the saved recipe's
    at.button(key="pp-editor-add").click().run()
    assert "runs as `mine-draft` (version 0)" in rendered(at)
    assert "Run mine-draft on 3 images" in at.button(key="pp-run").label
    at.button(key="pp-run").click().run()
    ws = Workspace(ws_root, load_settings())
    job = JobManager(ws).wait(int(at.session_state["pp-job"]), timeout=60)
    assert job.state == "completed" and job.params["recipe"]["name"] == "mine-draft" and "mine-draft v0" in job.title
    stages = {r[0] for r in ws.catalog.query("SELECT DISTINCT stage FROM stage_results")}
    assert "preprocess:mine" not in stages
    ws.close()
    # overwriting asks, then keeps the old version loadable
    at.button(key="pp-save").click().run()
    assert any("already exists (v1)" in w.value for w in at.warning) and recipe_versions(ws_root, "mine") == [1]
    at.button(key="pp-save-confirm").click().run()
    assert any("Saved mine v2" in s.value for s in at.success)
    assert recipe_versions(ws_root, "mine") == [1, 2]
    assert load_recipe(ws_root, "mine", 1).settings_hash == PRESETS["ocr-line"].settings_hash
    at.selectbox(key="pp-version").set_value(1).run()
    assert "Version 1 (2 saved version(s))" in rendered(at)
    assert not at.exception and PLANTED not in rendered(at)
