"""Issue 14 part 2: no user or API client reads or writes the server's files. Every item of the issue is tried
as an attacker would: the API over HTTP (TestClient, and a real `python -m services api` on loopback), the
saving of recipes and rules, and the guard for server paths. The dashboard's inputs are in
test_server_path_pages.py, the browser checks in test_leaks_browser.py."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from services.api.app import create_app
from services.core.names import InvalidNameError, check_name, resolve_in
from services.core.server_paths import CHECKPOINT, CSV_FILE, FOLDER, FOLDER_OR_ZIP, ServerPathError, ServerPaths
from services.core.settings import load_settings
from services.core.workspace import Workspace
from services.stages.ocr.rules import PRESETS as RULE_PRESETS
from services.stages.ocr.rules import OcrRules, RulesError, list_rules, load_rules, load_rules_arg, save_rules
from services.stages.preprocess.recipes import (
    PRESETS,
    Grayscale,
    Recipe,
    RecipeError,
    RecipeExistsError,
    draft_of,
    list_recipes,
    load_recipe,
    recipe_versions,
    renamed,
    save_recipe,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-names"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANTED = "planted-gemini-key-3b9c71"
TRAVERSALS = ["/etc/passwd", "/proc/self/environ", "../../../x", "..", "a/b", "~root", ".hidden", "x" * 200, ""]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), "white").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A Gemini key in the environment and a valid rules/recipe JSON outside the workspace, where the old API
    would load it from (`rules=/abs/path.json`)."""
    monkeypatch.setenv("WORKBENCH_GEMINI_API_KEY", PLANTED)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil-rules.json").write_text(OcrRules(name="evil", pattern=PLANTED).model_dump_json())
    (outside / "evil-recipe.json").write_text(
        Recipe(name="evil", description=PLANTED, ops=[Grayscale()]).model_dump_json()
    )
    return outside


@pytest.fixture
def client(ws: Workspace, planted: Path) -> TestClient:
    return TestClient(create_app(Workspace(ws.root, load_settings()), TOKEN, max_images=1))


# --- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", TRAVERSALS + ["a\\b", "a\x00b", "-x", "a..b"])
def test_a_name_is_never_a_path(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidNameError):
        check_name(bad, "recipe")
    with pytest.raises(InvalidNameError):
        resolve_in(tmp_path, bad, ".json")


def test_resolve_in_refuses_a_symlink_planted_in_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "ok.json").write_text("{}")
    (folder / "trap.json").symlink_to("/etc/passwd")
    assert resolve_in(folder, "ok", ".json") == (folder / "ok.json").resolve()
    with pytest.raises(InvalidNameError, match="outside"):
        resolve_in(folder, "trap", ".json")


# --- API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["rules", "recipe", "engine"])
@pytest.mark.parametrize("value", ["/etc/passwd", "/proc/self/environ", "../../../x", "PLACEHOLDER"])
def test_ocr_endpoint_takes_names_never_paths(client: TestClient, planted: Path, param: str, value: str) -> None:
    value = str(planted / f"evil-{param}.json") if value == "PLACEHOLDER" else value
    files = {"file": ("a.png", _png(), "image/png")}
    by_query = client.post("/ocr", params={param: value}, headers=AUTH, files=files)
    by_json = client.post("/ocr", headers=AUTH, json={"image": base64.b64encode(_png()).decode(), param: value})
    for response in (by_query, by_json):
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert param in detail and "not a path" in detail
        for leaked in ("root:", PLANTED, str(planted), "WORKBENCH"):
            assert leaked not in response.text


def test_ocr_endpoint_refuses_non_text_names(client: TestClient) -> None:
    response = client.post("/ocr", headers=AUTH, json={"image": base64.b64encode(_png()).decode(), "rules": ["x"]})
    assert response.status_code == 422 and "rules must be text" in response.json()["detail"]
    unknown = client.post("/ocr", headers=AUTH, params={"recipe": "nope"}, files={"file": ("a.png", _png())})
    assert unknown.status_code == 422 and "no recipe named 'nope'" in unknown.json()["detail"]


def test_models_are_listed_only_from_models_folder(client: TestClient, ws: Workspace) -> None:
    # a manifest + model file elsewhere in the workspace, which `?dataset=..` used to reach
    stray = ws.root / "exports" / "x"
    stray.mkdir(parents=True)
    (stray / "model-ovr-svm-tag-a.json").write_text(json.dumps({"dataset": "x"}))
    (stray / "model-ovr-svm-tag-a.skops").write_bytes(b"")
    for dataset in ("..", ".", "../exports", "/etc", "..%2F"):
        response = client.get("/models", params={"dataset": dataset}, headers=AUTH)
        assert response.status_code == 422, (dataset, response.text)
        assert "query parameter dataset" in response.json()["detail"]
    assert client.get("/models", params={"dataset": "pets"}, headers=AUTH).json() == []
    embedding = client.get(f"/images/{'a' * 64}/embedding", params={"model": "../../x"}, headers=AUTH)
    assert embedding.status_code == 422 and "model" in embedding.json()["detail"]


def test_api_errors_name_the_item_not_server_paths(trained: tuple[Path, object], tmp_path: Path) -> None:
    import shutil

    ws_root = tmp_path / "ws"
    shutil.copytree(trained[0], ws_root)
    ws = Workspace(ws_root, load_settings())
    client = TestClient(create_app(ws, TOKEN, max_images=1))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # more members than max_images allows: an ArchiveError on a temp file
        for i in range(6):
            zf.writestr(f"m{i}.png", _png())
    response = client.post("/classify", headers=AUTH, files={"file": ("batch.zip", buf.getvalue())})
    assert response.status_code == 422, response.text
    assert "more than" in response.json()["detail"] and "batch.zip" in response.json()["detail"]
    assert "/tmp" not in response.text and str(ws_root) not in response.text and str(tmp_path) not in response.text
    ws.close()


def test_api_over_real_http_refuses_paths_and_leaks_nothing(ws: Workspace, planted: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_API_TOKEN": TOKEN}
    server = subprocess.Popen(
        [sys.executable, "-m", "services", "--workspace", str(ws.root), "api", "--port", str(port)], cwd=tmp_path,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.3)
        bodies = []
        for query in ("rules=/proc/self/environ", "rules=/etc/passwd", f"rules={planted}/evil-rules.json",
                      "recipe=../../../x", "recipe=..%2F..%2Frecipes%2Fx"):  # fmt: skip
            request = urllib.request.Request(
                f"{base}/ocr?{query}", data=json.dumps({"image": base64.b64encode(_png()).decode()}).encode(),
                headers={**AUTH, "Content-Type": "application/json"}, method="POST",
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 422
            bodies.append(caught.value.read().decode())
        models = urllib.request.Request(f"{base}/models?dataset=..", headers=AUTH)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(models, timeout=10)
        assert caught.value.code == 422
        bodies.append(caught.value.read().decode())
        for body in bodies:
            assert "not a path" in body
            for leaked in (PLANTED, "root:", str(planted), str(ws.root), TOKEN):
                assert leaked not in body
    finally:
        server.terminate()
        server.wait(15)


# --- recipes -----------------------------------------------------------------------------------------


def test_recipe_save_as_traversal_writes_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    base = PRESETS["ocr-128"]
    for bad in ("../../../../tmp/x", "../x", "/tmp/abs", "a/b", ".."):
        with pytest.raises(RecipeError):
            save_recipe(root, base.model_copy(update={"name": bad}))  # model_copy skips the validator
        with pytest.raises(RecipeError):
            renamed(base, bad)
        with pytest.raises(RecipeError):
            load_recipe(root, bad)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == set(), written


def test_builtins_are_read_only_and_versions_stay_loadable(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    builtin = PRESETS["ocr-128"]
    with pytest.raises(RecipeError, match="read-only"):
        save_recipe(root, renamed(PRESETS["ocr-line"], "ocr-128"))
    assert load_recipe(root, "ocr-128") == builtin
    first = save_recipe(root, renamed(builtin, "mine"), overwrite=False)
    assert (first.name, first.version) == ("mine", 1)
    assert save_recipe(root, renamed(builtin, "mine"), overwrite=False).version == 1  # unchanged: no question
    changed = renamed(PRESETS["ocr-line"], "mine")
    with pytest.raises(RecipeExistsError, match="v1 stays loadable"):
        save_recipe(root, changed, overwrite=False)
    assert save_recipe(root, changed, overwrite=True).version == 2
    assert recipe_versions(root, "mine") == [1, 2]
    assert load_recipe(root, "mine").settings_hash == PRESETS["ocr-line"].settings_hash
    assert load_recipe(root, "mine", 1).settings_hash == builtin.settings_hash
    with pytest.raises(RecipeError, match="no version 7"):
        load_recipe(root, "mine", 7)


def test_recipes_saved_before_versions_still_load(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    old = Recipe(name="legacy", version=3, ops=[Grayscale()])
    (root / "recipes" / "legacy.json").write_text(old.model_dump_json())
    (root / "recipes" / "ocr-128.json").write_text(renamed(PRESETS["ocr-line"], "ocr-128").model_dump_json())
    assert load_recipe(root, "legacy") == old and recipe_versions(root, "legacy") == [3]
    assert load_recipe(root, "ocr-128") == PRESETS["ocr-128"]  # a file left by the old bug never shadows it
    newer = save_recipe(root, Recipe(name="legacy", ops=[Grayscale(), Grayscale()]))
    assert newer.version == 4 and recipe_versions(root, "legacy") == [3, 4]
    assert load_recipe(root, "legacy", 3) == old
    assert list_recipes(root) == ["legacy", "ocr-128", "ocr-line"]


def test_an_edited_recipe_runs_under_its_own_name(tmp_path: Path) -> None:
    base = PRESETS["ocr-128"]
    assert draft_of(base, base) is base
    draft = draft_of(base, Recipe(name=base.name, ops=[*base.ops, Grayscale()]))
    assert (draft.name, draft.version) == ("ocr-128-draft", 0) and draft.variant.startswith("ocr-128-draft@")
    assert draft.settings_hash != base.settings_hash


# --- OCR rules ---------------------------------------------------------------------------------------


def test_rules_are_names_inside_ocr_rules(tmp_path: Path, planted: Path) -> None:
    root = tmp_path / "ws"
    for bad in ("/etc/passwd", "/proc/self/environ", str(planted / "evil-rules.json"), "../x", ".."):
        with pytest.raises(RulesError):
            load_rules(root, bad)
        with pytest.raises(RulesError):
            save_rules(root, RULE_PRESETS["seed-003"].model_copy(update={"name": bad}))
    with pytest.raises(RulesError, match="not a preset name"):
        save_rules(root, RULE_PRESETS["none"])
    save_rules(root, RULE_PRESETS["seed-003"].model_copy(update={"name": "plates"}))
    assert list_rules(root) == ["none", "seed-003", "plates"] and load_rules(root, "plates").pattern
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "x.json").exists()
    # the person at the shell may still hand the CLI a file (load_rules_arg); the API never calls it
    assert load_rules_arg(root, str(planted / "evil-rules.json")).name == "evil"


# --- the server-path guard ---------------------------------------------------------------------------


def _policy(tmp_path: Path, sign_in: bool, server_paths: list[str] | None) -> ServerPaths:
    return ServerPaths.for_workspace(tmp_path / "ws", load_settings(server_paths=server_paths), sign_in)


def test_server_paths_on_a_shared_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("image_link\nhttp://x/a.jpg\n")
    (data / "escape.csv").symlink_to("/etc/passwd")
    (data / ".streamlit").mkdir()
    (data / ".streamlit" / "secrets.toml").write_text(f'gemini_api_key = "{PLANTED}"')
    (data / "secrets.toml").write_text(f'gemini_api_key = "{PLANTED}"')
    off = _policy(tmp_path, sign_in=True, server_paths=None)
    assert not off.enabled
    with pytest.raises(ServerPathError, match="server_paths"):
        off.check(str(data / "a.csv"), CSV_FILE)
    on = _policy(tmp_path, sign_in=True, server_paths=[str(data)])
    assert on.check(str(data / "a.csv"), CSV_FILE) == (data / "a.csv").resolve()
    assert on.check(str(data / "sub"), FOLDER) == (data / "sub").resolve()
    refusals = {
        "/etc/passwd": "outside",
        "/etc/shadow": "outside",
        "/proc/self/environ": "outside",
        str(data / "escape.csv"): "outside",  # a symlink is checked where it points
        str(data / ".streamlit" / "secrets.toml"): "secrets",
        str(data / "secrets.toml"): "secrets",
        str(data / "sub" / ".." / ".." / "ws" / "catalog.sqlite"): "outside",
        str(ROOT / ".streamlit" / "config.toml"): "outside",
        str(data / "nothing.csv"): "No file at",
    }
    for text, reason in refusals.items():
        with pytest.raises(ServerPathError, match=reason):
            on.check(text, CSV_FILE)
    with pytest.raises(ServerPathError, match="is a folder"):
        on.check(str(data), CSV_FILE)
    (data / "notes.txt").write_text("not a csv")
    with pytest.raises(ServerPathError, match="not a .csv file"):
        on.check(str(data / "notes.txt"), CSV_FILE)


def test_server_paths_on_a_laptop(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", load_settings())
    (ws.root / "exports" / "labelled.csv").write_text("a\n1\n")
    (ws.root / "models" / "demo-clip").mkdir(parents=True)
    (ws.root / "models" / "demo-clip" / "w.safetensors").write_bytes(b"0")
    laptop = _policy(tmp_path, sign_in=False, server_paths=None)
    assert laptop.enabled and laptop.roots is None
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    assert laptop.check(str(elsewhere), FOLDER_OR_ZIP) == elsewhere.resolve()
    assert laptop.check(str(ws.root / "exports" / "labelled.csv"), CSV_FILE).name == "labelled.csv"
    assert laptop.check(str(ws.root / "models" / "demo-clip" / "w.safetensors"), CHECKPOINT).name == "w.safetensors"
    never = {
        "/etc/passwd": "system files",
        "/proc/self/environ": "system files",
        str(ROOT / ".streamlit" / "config.toml"): "the app",
        str(ROOT / "services"): "the app",
        "/": "system files",
        str(ws.root / "catalog.sqlite"): "internals",
        str(ws.root / "cache"): "internals",
        str(ws.root / "jobs"): "internals",
        str(ws.root / "logs"): "internals",
        str(ws.root / "models" / "demo-clip"): "internals",
        str(Path.home() / ".aws" / "credentials"): "secrets",
    }
    for text, reason in never.items():
        with pytest.raises(ServerPathError, match=reason):
            laptop.check(text, FOLDER_OR_ZIP)
    with pytest.raises(ServerPathError, match="internals"):
        laptop.check(str(ws.root / "exports" / "labelled.csv"), CHECKPOINT)  # weights only from models/
    ws.close()


def test_the_settings_and_secrets_files_in_use_are_never_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_copy = tmp_path / "app"
    (app_copy / ".streamlit").mkdir(parents=True)
    secrets = app_copy / ".streamlit" / "secrets.toml"
    secrets.write_text(f'gemini_api_key = "{PLANTED}"\n')
    config = tmp_path / "data" / "config.csv"  # a config file named like data, named by WORKBENCH_CONFIG
    config.parent.mkdir()
    config.write_text("caption_model: x\n")
    monkeypatch.setenv("WORKBENCH_SECRETS", str(secrets))
    monkeypatch.setenv("WORKBENCH_CONFIG", str(config))
    policy = _policy(tmp_path, sign_in=True, server_paths=[str(tmp_path)])
    for text in (str(secrets), str(config)):
        with pytest.raises(ServerPathError):
            policy.check(text, CSV_FILE)
