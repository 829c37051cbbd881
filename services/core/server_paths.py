"""The one guard for paths on the server that a dashboard user types (a CSV, a drop folder, a folder or zip to
import or classify, a CLIP checkpoint).

Policy, decided once per call by `ServerPaths.for_workspace`:
- `server_paths` set (a list of folders): only paths under those folders.
- `server_paths` unset, sign-in configured (a shared server): no server paths at all; uploads still work.
- `server_paths` unset, no sign-in (a laptop): any path the OS user can read.
In every case these are never readable: the app's own folder (code, `.streamlit/`, `config.yaml`), any
`.streamlit/` or credentials folder (`.ssh`, `.aws`, ...), secrets files (`secrets.toml`, `.env`, keys), the
settings and secrets files the server was started with, `/proc`, `/sys`, `/dev`, `/etc`, and the workspace's
internals (catalog, cache, jobs, logs, recipes, models, embeddings ...; only `exports/` and `uploads/` are
inputs). Paths are resolved (symlinks followed) before they are checked, and permission is checked before
existence, so a refusal never says whether something exists outside the allowed folders. Each kind of input
also says what it may be (a `.csv` file, a folder, a `.zip`, a weights file), so a preview reads only that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services import APP_ROOT
from services.core.errors import WorkbenchError
from services.core.settings import ENV_PREFIX, Settings

SYSTEM_DENIED = tuple(Path(p) for p in ("/proc", "/sys", "/dev", "/etc", "/boot", "/run", "/var/run"))
DENIED_FOLDER_NAMES = frozenset({".streamlit", ".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", "gcloud"})
DENIED_FILE_NAMES = frozenset(
    {"secrets.toml", ".env", ".netrc", ".pgpass", ".git-credentials", "credentials", "id_rsa", "id_ed25519"}
)
DENIED_SUFFIXES = frozenset({".pem", ".key", ".p12", ".pfx", ".sqlite", ".sqlite-wal", ".sqlite-shm", ".db"})


class ServerPathError(WorkbenchError, ValueError):
    """A server path that this user may not read, or that is not what the input expects; the message says why
    and what to do instead."""

    error_class = "server_path"
    http_status = 400


@dataclass(frozen=True)
class PathKind:
    """What one input takes: which file suffixes (None: no files), whether folders, and which workspace
    folders it may read."""

    what: str
    suffixes: tuple[str, ...] | None
    folders: bool
    workspace_parts: tuple[str, ...] = ("exports", "uploads")


CSV_FILE = PathKind("a .csv file", (".csv",), False)
FOLDER = PathKind("a folder", None, True)
FOLDER_OR_ZIP = PathKind("a folder or a .zip file", (".zip",), True)
CHECKPOINT = PathKind("a weights file (.safetensors, .pt, .pth, .bin)", (".safetensors", ".pt", ".pth", ".bin"),
                      False, ("models",))  # fmt: skip


@dataclass(frozen=True)
class ServerPaths:
    """Where dashboard users may read on this server: `roots` None means anywhere not denied."""

    roots: tuple[Path, ...] | None
    workspace: Path
    denied: tuple[Path, ...]

    @classmethod
    def for_workspace(cls, workspace: Path, settings: Settings, sign_in: bool) -> ServerPaths:
        """The policy for one workspace; `sign_in` says whether the dashboard has sign-in (users or OIDC)."""
        if settings.server_paths is not None:
            roots: tuple[Path, ...] | None = tuple(_resolved(Path(p)) for p in settings.server_paths)
        else:
            roots = () if sign_in else None
        denied = [APP_ROOT, *SYSTEM_DENIED]
        for var, default in (("CONFIG", "config.yaml"), ("SECRETS", ".streamlit/secrets.toml")):
            denied.append(_resolved(Path(os.environ.get(f"{ENV_PREFIX}{var}", default))))
        return cls(roots, _resolved(workspace), tuple(denied))

    @property
    def enabled(self) -> bool:
        return self.roots is None or bool(self.roots)

    def describe(self) -> str:
        """One line for the page: where paths may point."""
        if self.roots is None:
            return "any folder this server's user can read (except the app, secrets and the workspace's internals)"
        if not self.roots:
            return "nowhere: an administrator lists folders in the `server_paths` setting"
        return "under " + ", ".join(f"`{r}`" for r in self.roots)

    def check(self, text: str, kind: PathKind) -> Path:
        """The resolved path when this input may read it; ServerPathError otherwise (permission first)."""
        text = text.strip()
        if not text:
            raise ServerPathError("no path given")
        if "\x00" in text:
            raise ServerPathError("a path cannot contain a NUL character")
        if not self.enabled:
            raise ServerPathError(
                "reading paths on the server is off here: upload the file instead, or ask an administrator to "
                "list a folder in the `server_paths` setting"
            )
        path = _resolved(Path(text).expanduser())
        if self.roots is not None and not any(_within(path, root) for root in self.roots):
            raise ServerPathError(f"{text!r} is outside the folders this server allows ({self.describe()})")
        self._refuse_denied(text, path, kind)
        if path.is_dir():
            if not kind.folders:
                raise ServerPathError(f"{text!r} is a folder; this input takes {kind.what}")
            return path
        if not path.is_file():
            thing = "folder or file" if kind.folders and kind.suffixes else "folder" if kind.folders else "file"
            raise ServerPathError(f"No {thing} at {text!r}; this input takes {kind.what}")
        if kind.suffixes is None or path.suffix.lower() not in kind.suffixes:
            raise ServerPathError(f"{text!r} is not {kind.what}")
        return path

    def _refuse_denied(self, text: str, path: Path, kind: PathKind) -> None:
        if _within(path, self.workspace):
            part = path.relative_to(self.workspace).parts[:1]
            if not part or part[0] not in kind.workspace_parts:
                allowed = ", ".join(f"`{p}/`" for p in kind.workspace_parts)
                raise ServerPathError(f"{text!r} is inside the workspace's internals; only its {allowed} can be read")
            return
        for denied in self.denied:
            if _within(path, denied) or (_within(denied, path) and denied != Path("/")):
                raise ServerPathError(f"{text!r} holds the app, its settings or system files and cannot be read")
        name = path.name.lower()
        if (
            any(part in DENIED_FOLDER_NAMES for part in path.parts)
            or name in DENIED_FILE_NAMES
            or name.startswith(".env")
            or path.suffix.lower() in DENIED_SUFFIXES
        ):
            raise ServerPathError(f"{text!r} looks like secrets or credentials and cannot be read")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path.expanduser()))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
