"""The prompts and response schemas of the Describe & Categorize stage, versioned.

Changing a prompt or schema means bumping its version: stage results and the request cache are keyed by
it, so old answers are kept but never mistaken for answers to the new prompt.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.stages.describe.categories import CategoryList

DESCRIBE_PROMPT_VERSION = "describe-v1"
CATEGORIZE_PROMPT_VERSION = "categorize-v1"

DESCRIBE_PROMPT = """Describe this image for a dataset catalogue. Answer with one JSON object with these fields:
- summary: one or two sentences saying what the image shows;
- objects: the main objects, each with a name and a few short attributes (colour, material, state, ...);
- scene: indoor_outdoor (indoor, outdoor or unknown) and environment (e.g. kitchen, street, studio);
- style: genre (photo, illustration, render, screenshot, ...), lighting, and the dominant colors;
- camera: shot (close-up, medium, wide, ...), fov (narrow, normal, wide) and lens (e.g. macro, telephoto);
- text: any text visible in the image, verbatim, or an empty string;
- quality: aesthetic (low, medium or high) and issues (blur, noise, artifacts, watermark, ...), may be empty.
Describe only what is visible; do not guess brands or identities."""

CATEGORIZE_INSTRUCTIONS = """Choose the one category from the list below that best fits the image, or two if the
image clearly belongs to both. Use the categories exactly as written. If none fits, answer ["unknown"].
Categories:
{categories}"""


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "OBJECT", "properties": properties, "required": required or list(properties)}


_STR = {"type": "STRING"}
_STRS = {"type": "ARRAY", "items": _STR}

DESCRIPTION_PROPERTIES: dict[str, Any] = {
    "summary": _STR,
    "objects": {"type": "ARRAY", "items": _obj({"name": _STR, "attributes": _STRS})},
    "scene": _obj(
        {"indoor_outdoor": {"type": "STRING", "enum": ["indoor", "outdoor", "unknown"]}, "environment": _STR}
    ),
    "style": _obj({"genre": _STR, "lighting": _STR, "colors": _STRS}),
    "camera": _obj({"shot": _STR, "fov": _STR, "lens": _STR}),
    "text": _STR,
    "quality": _obj({"aesthetic": {"type": "STRING", "enum": ["low", "medium", "high"]}, "issues": _STRS}),
}


def describe_schema() -> dict[str, Any]:
    return _obj(DESCRIPTION_PROPERTIES)


def categories_property(category_list: CategoryList) -> dict[str, Any]:
    """An enum-constrained array: the model can only pick names from the list (or `unknown`)."""
    return {
        "type": "ARRAY",
        "items": {"type": "STRING", "enum": list(category_list.allowed)},
        "minItems": 1,
        "maxItems": 2,
    }


def categorize_schema(category_list: CategoryList) -> dict[str, Any]:
    return _obj({"categories": categories_property(category_list)})


def describe_and_categorize_schema(category_list: CategoryList) -> dict[str, Any]:
    return _obj({**DESCRIPTION_PROPERTIES, "categories": categories_property(category_list)})


def categorize_instructions(category_list: CategoryList) -> str:
    return CATEGORIZE_INSTRUCTIONS.format(categories="\n".join(f"- {c}" for c in category_list.categories))


def describe_and_categorize_prompt(category_list: CategoryList) -> str:
    return DESCRIBE_PROMPT + "\n- categories: " + categorize_instructions(category_list)


def categorize_from_description_prompt(description: dict[str, Any], category_list: CategoryList) -> str:
    return (
        "Here is a structured description of an image, as JSON:\n"
        + json.dumps(description, ensure_ascii=False)
        + "\n\n"
        + categorize_instructions(category_list)
        + '\nAnswer with one JSON object: {"categories": [...]}.'
    )


class DescribedObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = ""
    attributes: list[str] = Field(default_factory=list)


class Description(BaseModel):
    """The seeds' structured description; lenient about missing sub-fields, strict about the summary."""

    model_config = ConfigDict(extra="allow")
    summary: str
    objects: list[DescribedObject] = Field(default_factory=list)
    scene: dict[str, Any] = Field(default_factory=dict)
    style: dict[str, Any] = Field(default_factory=dict)
    camera: dict[str, Any] = Field(default_factory=dict)
    text: str = ""
    quality: dict[str, Any] = Field(default_factory=dict)

    @field_validator("summary")
    @classmethod
    def _summary_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("summary is empty")
        return value.strip()

    @field_validator("text", mode="before")
    @classmethod
    def _text_as_string(cls, value: Any) -> str:
        if value is None:
            return ""
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
