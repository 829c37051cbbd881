"""The package as a user installs it (issue 17): a wheel that holds the services, the dashboard and the
`workbench` command; the core (download, preprocess) running with every extra's packages absent; a command
that needs an extra naming it; the dashboard's safety options independent of the working folder."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from services.cli.server import DASHBOARD_OPTIONS
from services.core.errors import EXTRA_OF_MODULE
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _import_names(dist: str) -> set[str]:
    """The top-level packages an installed distribution provides (from its own metadata)."""
    by_module = importlib.metadata.packages_distributions()
    return {m for m, dists in by_module.items() if dist in {d.lower().replace("_", "-") for d in dists}}


def _extras_only_modules() -> set[str]:
    """Top-level packages that only the extras bring (what a core-only install lacks)."""
    project = PYPROJECT["project"]
    core = {_dist_name(r) for r in project["dependencies"]}
    extra = {_dist_name(r) for reqs in project["optional-dependencies"].values() for r in reqs} - core
    extra.discard("image-workbench")
    core_modules = set().union(*(_import_names(d) for d in core))
    modules = set().union(*(_import_names(d) for d in extra)) - core_modules
    assert {"torch", "streamlit", "fastapi", "re2", "sklearn"} <= modules  # the computation found the heavy ones
    return modules


def _run_without(modules: set[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`workbench ARGS` in a fresh interpreter where importing any of `modules` fails as if not installed."""
    script = textwrap.dedent(
        f"""
        import sys
        BLOCKED = {sorted(modules)!r}
        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Absent())
        sys.argv = ["workbench", *{args!r}]
        from services.cli.app import main
        main()
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


def test_core_install_downloads_and_preprocesses_without_any_extra(tmp_path: Path):
    absent = _extras_only_modules()
    folder = tmp_path / "photos" / "cats"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ws = str(tmp_path / "ws")
    imported = _run_without(
        absent, ["--workspace", ws, "download", "folder", str(folder.parent), "--workers", "0"], tmp_path
    )
    assert imported.returncode == 0, imported.stderr
    assert "[completed] 5 ok, 0 failed" in imported.stdout
    prepped = _run_without(
        absent, ["--workspace", ws, "preprocess", "--recipe", "ocr-128", "--dataset", "photos"], tmp_path
    )
    assert prepped.returncode == 0, prepped.stderr
    assert "[completed] 5 ok, 0 failed" in prepped.stdout
    assert len(list((tmp_path / "ws" / "derived").rglob("*.png"))) == 5
    listed = _run_without(absent, ["--workspace", ws, "datasets", "list"], tmp_path)
    assert listed.returncode == 0 and "photos\tkind=folder\trows=5\timages=5" in listed.stdout


def test_a_command_that_needs_an_extra_names_it(tmp_path: Path):
    result = _run_without(
        {"torch", "open_clip"}, ["--workspace", str(tmp_path / "ws"), "embed", "--dataset", "x"], tmp_path
    )
    assert result.returncode == 2
    assert "needs the 'clip' extra" in result.stderr and "pip install 'image-workbench[clip]'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_every_extra_module_named_in_the_message_map_is_in_that_extra():
    """EXTRA_OF_MODULE (the message) agrees with pyproject's extras (the install)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    for module, extra in EXTRA_OF_MODULE.items():
        dists = {d.lower().replace("_", "-") for d in importlib.metadata.packages_distributions().get(module, [])}
        assert dists, f"{module} is not installed here"
        assert dists & {_dist_name(r) for r in extras[extra]}, f"{module} ({dists}) is not in the {extra!r} extra"


def test_wheel_holds_services_dashboard_and_the_workbench_command(tmp_path: Path):
    source = tmp_path / "source"  # a copy: setuptools builds inside the source folder (build/, *.egg-info)
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*cache*", "test-artifacts", ".bench"))
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    subprocess.run([*pip_wheel, str(source)], check=True, capture_output=True, timeout=240)
    (wheel,) = wheels.glob("image_workbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "services/__main__.py",
        "services/core/errors.py",
        "services/jobs/manager.py",
        "services/stages/ocr/cli.py",
        "services/api/app.py",
        "app.py",
        "dashboard.py",
        "app_pages/home.py",
        "ui/state.py",
    ]:
        assert expected in names, expected
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "workbench = services.cli.app:main" in text


def test_workbench_command_is_python_m_services():
    workbench = Path(sys.executable).with_name("workbench")
    assert workbench.is_file(), "`make test` installs the package (pip install -e .)"
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    via_script = subprocess.run([str(workbench), "jobs", "--help"], capture_output=True, text=True, env=env, timeout=60)
    via_module = subprocess.run(
        [sys.executable, "-m", "services", "jobs", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert via_script.returncode == via_module.returncode == 0
    same = " ".join(via_script.stdout.replace("workbench", "python -m services").split())
    assert same == " ".join(via_module.stdout.split())  # the same help, but for the usage line's padding
    assert "retry-failed" in via_script.stdout


def test_dashboard_options_are_the_checkouts_streamlit_config():
    """`workbench dashboard` passes the options on its command line (an install has no .streamlit/ folder);
    they must say what the checkout's config file says, the traceback-hiding `showErrorDetails` above all."""
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    flat = {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}
    for key, value in DASHBOARD_OPTIONS.items():
        assert str(flat[key]).lower() == value, key
    assert DASHBOARD_OPTIONS["client.showErrorDetails"] == "none"
