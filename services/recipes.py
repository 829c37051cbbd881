"""Preprocessing recipes: named, versioned lists of operations, saved in the workspace as JSON.

A recipe's settings hash (sha256 of its canonical operation list) is stored with every result, so editing a
recipe recomputes only what the change affects, and an unchanged recipe never does the same image twice.
Seed 000's chain ships as `ocr-128` and seed 003's as `ocr-line`, with its geometry as parameters.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator


class Grayscale(BaseModel):
    op: Literal["grayscale"] = "grayscale"


class Denoise(BaseModel):
    op: Literal["denoise"] = "denoise"
    method: Literal["median", "gaussian", "nlmeans", "bilateral"] = "median"
    ksize: int = Field(3, ge=1, le=31, description="median/gaussian kernel (odd)")
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
    block_size: int = Field(31, ge=3, le=255)
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
    points: list[tuple[float, float]] = Field(default_factory=lambda: [(0.0, 0.5), (0.5, 0.4), (1.0, 0.5)])
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
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RecipeError(Exception):
    """An unknown or invalid recipe; the message names it and says what is wrong."""


class Recipe(BaseModel):
    name: str
    version: int = 1
    description: str = ""
    ops: list[Operation]

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("recipe names use letters, digits, '.', '_' and '-' (at most 64)")
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


def recipes_dir(workspace_root: Path) -> Path:
    path = workspace_root / "recipes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_recipes(workspace_root: Path) -> list[str]:
    saved = {p.stem for p in recipes_dir(workspace_root).glob("*.json")}
    return sorted(saved | set(PRESETS))


def load_recipe(workspace_root: Path, name: str) -> Recipe:
    path = recipes_dir(workspace_root) / f"{name}.json"
    if path.is_file():
        try:
            return _RECIPE.validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise RecipeError(f"recipe {name!r} ({path}) is invalid: {exc}") from exc
    if name in PRESETS:
        return PRESETS[name]
    raise RecipeError(f"no recipe named {name!r}; known: {', '.join(list_recipes(workspace_root))}")


def parse_recipe(text: str) -> Recipe:
    try:
        return _RECIPE.validate_json(text)
    except ValidationError as exc:
        raise RecipeError(f"invalid recipe: {exc}") from exc


def save_recipe(workspace_root: Path, recipe: Recipe) -> Recipe:
    """Save, bumping the version when the operations changed (results keep the hash they were made with)."""
    try:
        current = load_recipe(workspace_root, recipe.name)
    except RecipeError:
        current = None
    if current is not None and current.settings_hash != recipe.settings_hash:
        recipe = recipe.model_copy(update={"version": max(current.version, recipe.version) + 1})
    path = recipes_dir(workspace_root) / f"{recipe.name}.json"
    path.write_text(recipe.model_dump_json(indent=2), encoding="utf-8")
    return recipe
