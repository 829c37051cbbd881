"""Preprocessing recipes: named, versioned lists of operations, saved in the workspace as JSON.

Saved recipes live in `recipes/<name>/v<N>.json`, one file per version, so older versions stay loadable;
`recipes/<name>.json` files from before versions were kept still load. Names are safe names
(services.core.names), resolved inside `recipes/`; the built-in presets are read-only.

A recipe's settings hash (sha256 of its canonical operation list) is stored with every result, so editing a
recipe recomputes only what the change affects, and an unchanged recipe never does the same image twice.
Seed 000's chain ships as `ocr-128` and seed 003's as `ocr-line`, with its geometry as parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from services.core.errors import WorkbenchError
from services.core.names import MAX_NAME_CHARS, InvalidNameError, check_name, is_name, name_problem, resolve_in
from services.core.workspace import write_atomic

MAX_OPS = 32  # steps in one recipe (the built-ins have 4 and 10): each runs over the whole image
MAX_ARC_POINTS = 64  # points of one unwarp_arc polyline
Coordinate = Annotated[float, Field(allow_inf_nan=False, ge=-100_000, le=100_000)]


class Grayscale(BaseModel):
    op: Literal["grayscale"] = "grayscale"


class Denoise(BaseModel):
    op: Literal["denoise"] = "denoise"
    method: Literal["median", "gaussian", "nlmeans", "bilateral"] = "median"
    ksize: int = Field(3, ge=1, le=31, description="median/gaussian kernel (odd)", json_schema_extra={"odd": True})
    strength: float = Field(10.0, ge=0, le=100, description="nlmeans h")
    diameter: int = Field(9, ge=1, le=31, description="bilateral neighbourhood")
    sigma_color: float = Field(75.0, ge=0, le=255)
    sigma_space: float = Field(75.0, ge=0, le=255)

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("ksize must be odd")
        return v


class Contrast(BaseModel):
    op: Literal["contrast"] = "contrast"
    method: Literal["factor", "clahe"] = "factor"
    factor: float = Field(1.5, gt=0, le=10)
    clip_limit: float = Field(2.0, gt=0, le=40)
    tile: int = Field(8, ge=1, le=64)


class Sharpen(BaseModel):
    op: Literal["sharpen"] = "sharpen"
    amount: float = Field(1.0, ge=0, le=5)
    sigma: float = Field(1.0, gt=0, le=10)


class Binarize(BaseModel):
    op: Literal["binarize"] = "binarize"
    method: Literal["otsu", "adaptive"] = "otsu"
    block_size: int = Field(31, ge=3, le=255, description="neighbourhood (odd)", json_schema_extra={"odd": True})
    c: float = Field(10.0, ge=-50, le=50)

    @field_validator("block_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("block_size must be odd")
        return v


class Deskew(BaseModel):
    op: Literal["deskew"] = "deskew"
    max_angle: float = Field(15.0, ge=0, le=45)


class Rotate(BaseModel):
    op: Literal["rotate"] = "rotate"
    angle: float = Field(0.0, ge=-360, le=360, description="degrees, counter-clockwise")
    expand: bool = True
    fill: tuple[int, int, int] = (255, 255, 255)


class Crop(BaseModel):
    op: Literal["crop"] = "crop"
    box: tuple[int, int, int, int] = Field((0, 0, 100, 100), description="x1, y1, x2, y2 in pixels")

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if v[2] <= v[0] or v[3] <= v[1] or min(v) < 0:
            raise ValueError("box must be x1 < x2, y1 < y2, all >= 0")
        return v


class UnwarpArc(BaseModel):
    """Straighten text printed along an arc: sample a band of `height` pixels along the polyline."""

    op: Literal["unwarp_arc"] = "unwarp_arc"
    points: list[tuple[Coordinate, Coordinate]] = Field(
        default_factory=lambda: [(0.0, 0.5), (0.5, 0.4), (1.0, 0.5)], max_length=MAX_ARC_POINTS
    )
    height: int = Field(40, ge=2, le=2000)
    relative: bool = Field(True, description="points are fractions of width and height, not pixels")

    @field_validator("points")
    @classmethod
    def _enough(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if len(v) < 2:
            raise ValueError("an arc needs at least two points")
        return v


class Morphology(BaseModel):
    op: Literal["morphology"] = "morphology"
    kind: Literal["open", "close"] = "open"
    kernel: int = Field(3, ge=1, le=31)
    iterations: int = Field(1, ge=1, le=10)


class ResizePad(BaseModel):
    op: Literal["resize_pad"] = "resize_pad"
    size: int = Field(128, ge=8, le=4096)
    pad_color: tuple[int, int, int] = (255, 255, 255)


class Resize(BaseModel):
    op: Literal["resize"] = "resize"
    width: int = Field(575, ge=1, le=8192)
    height: int = Field(160, ge=1, le=8192)


class Output(BaseModel):
    op: Literal["output"] = "output"
    format: Literal["png", "jpg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)


Operation = Annotated[
    Grayscale
    | Denoise
    | Contrast
    | Sharpen
    | Binarize
    | Deskew
    | Rotate
    | Crop
    | UnwarpArc
    | Morphology
    | ResizePad
    | Resize
    | Output,
    Field(discriminator="op"),
]
OPERATIONS: dict[str, type[BaseModel]] = {
    m.model_fields["op"].default: m
    for m in (Grayscale, Denoise, Contrast, Sharpen, Binarize, Deskew, Rotate, Crop, UnwarpArc, Morphology,
              ResizePad, Resize, Output)
}  # fmt: skip
POINTWISE = {"grayscale", "contrast", "output"}  # ops that commute with a reduced-scale decode


class RecipeError(WorkbenchError):
    """An unknown or invalid recipe; the message names it and says what is wrong."""

    error_class = "recipe"
    http_status = 422


class Recipe(BaseModel):
    name: str
    version: int = 1
    description: str = ""
    ops: list[Operation] = Field(max_length=MAX_OPS)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:
            raise ValueError(f"recipe name {problem}")
        return v

    @property
    def settings_hash(self) -> str:
        canonical = json.dumps([op.model_dump(mode="json") for op in self.ops], sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def output(self) -> Output:
        outs = [op for op in self.ops if isinstance(op, Output)]
        return outs[-1] if outs else Output()

    @property
    def variant(self) -> str:
        """Folder and catalog variant name for this recipe's outputs: name plus a short settings hash."""
        return f"{self.name}@{self.settings_hash[:10]}"

    def draft_size(self) -> int | None:
        """If only pointwise ops come before the first resize, the image may be decoded at reduced scale."""
        for op in self.ops:
            if isinstance(op, ResizePad):
                return op.size
            if isinstance(op, Resize):
                return max(op.width, op.height)
            if op.op not in POINTWISE:
                return None
        return None


PRESETS: dict[str, Recipe] = {
    "ocr-128": Recipe(
        name="ocr-128",
        description="Seed 000: grayscale, keep aspect and pad to 128x128, median denoise.",
        ops=[
            Grayscale(),
            ResizePad(size=128, pad_color=(255, 255, 255)),
            Denoise(method="median", ksize=3),
            Output(format="png"),
        ],
    ),  # fmt: skip
    "ocr-line": Recipe(
        name="ocr-line",
        description=(
            "Seed 003's chain with its geometry as parameters: crop, rotate -45 deg, unwarp along an arc, "
            "contrast x3, blur, bilateral filter, morphological opening, resize to 575x160."
        ),
        ops=[
            Crop(box=(1030, 870, 2660, 3224)),
            Rotate(angle=-45.0, expand=True),
            UnwarpArc(points=[(0.0, 0.5), (0.5, 0.42), (1.0, 0.5)], height=400),
            Grayscale(),
            Contrast(method="factor", factor=3.0),
            Denoise(method="gaussian", ksize=3),
            Denoise(method="bilateral", diameter=9, sigma_color=75, sigma_space=75),
            Morphology(kind="open", kernel=2, iterations=1),
            Resize(width=575, height=160),
            Output(format="png"),
        ],
    ),
}
_RECIPE = TypeAdapter(Recipe)
DRAFT_SUFFIX = "-draft"


def recipes_dir(workspace_root: Path) -> Path:
    path = workspace_root / "recipes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _checked(name: str) -> str:
    try:
        return check_name(name, "recipe")
    except InvalidNameError as exc:
        raise RecipeError(str(exc)) from None


def _inside(workspace_root: Path, name: str, suffix: str) -> Path:
    try:
        return resolve_in(recipes_dir(workspace_root), name, suffix, what="recipe")
    except InvalidNameError as exc:
        raise RecipeError(str(exc)) from None


def _legacy_file(workspace_root: Path, name: str) -> Path:
    """`recipes/<name>.json`: how recipes were saved before versions were kept (still loaded)."""
    return _inside(workspace_root, name, ".json")


def _version_dir(workspace_root: Path, name: str) -> Path:
    """`recipes/<name>/`: one `v<N>.json` per saved version."""
    return _inside(workspace_root, name, "")


def _read(path: Path, name: str) -> Recipe:
    try:
        recipe = _RECIPE.validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise RecipeError(f"saved recipe {name!r} is invalid: {_first_error(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"saved recipe {name!r} cannot be read ({type(exc).__name__})") from None
    # the file's place names it: a file copied or renamed by hand loads under the name it is saved as
    return recipe if recipe.name == name else recipe.model_copy(update={"name": name})


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'recipe'}: {first['msg']}"


def _saved_files(workspace_root: Path, name: str) -> dict[int, Path]:
    """version -> file, over the legacy file and the versions folder (a version folder file wins)."""
    files: dict[int, Path] = {}
    legacy = _legacy_file(workspace_root, name)
    if legacy.is_file():
        files[_read(legacy, name).version] = legacy
    folder = _version_dir(workspace_root, name)
    if folder.is_dir():
        for path in folder.glob("v*.json"):
            if path.stem[1:].isdigit():
                files[int(path.stem[1:])] = path
    return files


def list_recipes(workspace_root: Path) -> list[str]:
    """Built-in and saved recipe names (a saved file named like a built-in is not loaded: built-ins win)."""
    folder = recipes_dir(workspace_root)
    saved = {p.stem for p in folder.glob("*.json")} | {p.name for p in folder.iterdir() if p.is_dir()}
    return sorted({n for n in saved if is_name(n)} | set(PRESETS))


def is_builtin(name: str) -> bool:
    return name in PRESETS


def recipe_versions(workspace_root: Path, name: str) -> list[int]:
    """Saved versions of a recipe, oldest first ([1] for a built-in)."""
    _checked(name)
    if name in PRESETS:
        return [PRESETS[name].version]
    return sorted(_saved_files(workspace_root, name))


def load_recipe(workspace_root: Path, name: str, version: int | None = None) -> Recipe:
    """A built-in or saved recipe by name (its latest version unless `version` is given); never a file path."""
    _checked(name)
    if name in PRESETS:
        preset = PRESETS[name]
        if version not in (None, preset.version):
            raise RecipeError(f"built-in recipe {name!r} has only version {preset.version}")
        return preset
    files = _saved_files(workspace_root, name)
    if not files:
        raise RecipeError(f"no recipe named {name!r}; known: {', '.join(list_recipes(workspace_root))}")
    chosen = max(files) if version is None else version
    if chosen not in files:
        raise RecipeError(f"recipe {name!r} has no version {version} (versions: {', '.join(map(str, sorted(files)))})")
    return _read(files[chosen], name)


def load_recipe_file(path: Path) -> Recipe:
    """A recipe from a JSON file the person at the shell names (the CLI only; pages and the API use names)."""
    try:
        return parse_recipe(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe file {path.name!r} ({type(exc).__name__})") from None


def parse_recipe(text: str) -> Recipe:
    try:
        return _RECIPE.validate_json(text)
    except ValidationError as exc:
        raise RecipeError(f"invalid recipe: {_first_error(exc)}") from exc


class RecipeExistsError(RecipeError):
    """Saving would add a version to an existing recipe: the caller asks first, then saves with overwrite=True."""

    error_class = "recipe_exists"
    http_status = 409

    def __init__(self, current: Recipe) -> None:
        super().__init__(
            f"recipe {current.name!r} already exists (v{current.version}); saving makes v{current.version + 1} "
            f"and v{current.version} stays loadable"
        )
        self.current = current


def save_recipe(workspace_root: Path, recipe: Recipe, overwrite: bool = True) -> Recipe:
    """Save as a new version when the operations changed; every older version stays loadable.

    Built-in recipes are read-only. With `overwrite=False` a changed recipe that already exists is not saved:
    RecipeExistsError says which version it would become (the page asks, then saves with overwrite=True).
    """
    name = _checked(recipe.name)  # also for a recipe built with model_copy, which skips validators
    if name in PRESETS:
        raise RecipeError(f"{name!r} is a built-in recipe and read-only: save your changes under another name")
    files = _saved_files(workspace_root, name)
    current = _read(files[max(files)], name) if files else None
    if current is None:
        version = max(recipe.version, 1)
    elif current.settings_hash == recipe.settings_hash:
        version = current.version  # same operations: same version (the description may change)
    elif not overwrite:
        raise RecipeExistsError(current)
    else:
        version = max(current.version, recipe.version) + 1
    saved = Recipe.model_validate({**recipe.model_dump(), "name": name, "version": version})
    path = _version_dir(workspace_root, name) / f"v{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, saved.model_dump_json(indent=2).encode("utf-8"))
    return saved


def renamed(recipe: Recipe, name: str) -> Recipe:
    """The recipe under another name (validated: `model_copy(update=...)` would skip the name check); a new
    name starts at version 1."""
    version = recipe.version if name == recipe.name else 1
    try:
        return Recipe.model_validate({**recipe.model_dump(), "name": name, "version": version})
    except ValidationError as exc:
        raise RecipeError(_first_error(exc)) from None


def draft_of(base: Recipe, edited: Recipe) -> Recipe:
    """What an edited, unsaved recipe runs as: `base` itself when the operations are unchanged, else
    `<base>-draft` version 0, so its results and outputs are never filed under the saved recipe's name."""
    if edited.settings_hash == base.settings_hash:
        return base
    name = base.name[: MAX_NAME_CHARS - len(DRAFT_SUFFIX)] + DRAFT_SUFFIX
    return Recipe(name=name, version=0, description=f"Unsaved edit of {base.name} v{base.version}", ops=edited.ops)
