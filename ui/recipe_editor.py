"""Recipe editing widgets, generated from the operation models so every parameter is a widget."""

from __future__ import annotations

import json
import typing
from typing import Any

import streamlit as st
from pydantic import BaseModel, ValidationError

from services.stages.preprocess.recipes import MAX_OPS, OPERATIONS, Recipe
from ui.page_state import BIND
from ui.text import md


def _bounds(info: Any) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in info.metadata:
        lo = getattr(meta, "ge", lo) if getattr(meta, "ge", None) is not None else lo
        lo = getattr(meta, "gt", lo) if getattr(meta, "gt", None) is not None else lo
        hi = getattr(meta, "le", hi) if getattr(meta, "le", None) is not None else hi
    return lo, hi


def op_widgets(model: type[BaseModel], values: dict[str, Any], key: str) -> dict[str, Any]:
    """One widget per field of an operation; returns the edited values (not yet validated)."""
    out: dict[str, Any] = {"op": values["op"]}
    for name, info in model.model_fields.items():
        if name == "op":
            continue
        current = values.get(name, info.default)
        annotation = info.annotation
        label = name.replace("_", " ")
        help_text = info.description
        wkey = f"{key}-{name}"
        if typing.get_origin(annotation) is typing.Literal:
            options = list(typing.get_args(annotation))
            out[name] = st.selectbox(label, options, index=options.index(current), bind=BIND, key=wkey, help=help_text)
        elif annotation is bool:
            out[name] = st.checkbox(label, value=bool(current), bind=BIND, key=wkey, help=help_text)
        elif annotation is int:
            lo, hi = _bounds(info)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            step = 2 if extra.get("odd") else 1  # odd-only sizes step from odd to odd
            out[name] = int(
                st.number_input(label, value=int(current), step=step, min_value=None if lo is None else int(lo),
                                max_value=None if hi is None else int(hi), bind=BIND, key=wkey, help=help_text)
            )  # fmt: skip
        elif annotation is float:
            lo, hi = _bounds(info)
            out[name] = float(
                st.number_input(label, value=float(current), step=0.1, min_value=None if lo is None else float(lo),
                                max_value=None if hi is None else float(hi), bind=BIND, key=wkey, help=help_text)
            )  # fmt: skip
        else:
            text = st.text_input(f"{label} (JSON)", value=json.dumps(current), bind=BIND, key=wkey, help=help_text)
            try:
                out[name] = json.loads(text)
            except ValueError:
                st.error(f"{label}: not valid JSON")
                out[name] = current
    return out


def edit_recipe(recipe: Recipe, key: str) -> Recipe | None:
    """The editor; returns the edited recipe, or None while a parameter is invalid (the error is shown)."""
    state_key = f"{key}-ops"
    if state_key not in st.session_state or st.session_state.get(f"{key}-source") != recipe.settings_hash:
        st.session_state[state_key] = _steps_from_url(state_key, recipe) or [
            op.model_dump(mode="json") for op in recipe.ops
        ]
        st.session_state[f"{key}-source"] = recipe.settings_hash
    ops: list[dict[str, Any]] = st.session_state[state_key]
    _steps_to_url(state_key, recipe, ops)
    edited: list[dict[str, Any]] = []
    for i, values in enumerate(ops):
        with st.expander(f"{i + 1}. {values['op']}", expanded=False):
            edited.append(op_widgets(OPERATIONS[values["op"]], values, f"{key}-{i}-{values['op']}"))
            left, right = st.columns(2)
            if left.button("Move up", key=f"{key}-{i}-up", disabled=i == 0):
                ops[i - 1], ops[i] = ops[i], ops[i - 1]
                st.rerun()
            if right.button("Remove", key=f"{key}-{i}-remove"):
                ops.pop(i)
                st.rerun()
    left, right = st.columns([3, 1])
    new_op = left.selectbox(
        "Add an operation", list(OPERATIONS), bind=BIND, key=f"{key}-new", label_visibility="collapsed"
    )
    full = len(ops) >= MAX_OPS
    if right.button("Add", key=f"{key}-add", icon=":material/add:", disabled=full,
                    help=f"a recipe has at most {MAX_OPS} steps" if full else None):  # fmt: skip
        ops.append(OPERATIONS[new_op]().model_dump(mode="json"))
        st.rerun()
    try:
        return Recipe.model_validate({**recipe.model_dump(exclude={"ops"}), "ops": edited})
    except ValidationError as exc:
        st.error(f"Recipe not valid: {md(exc.errors()[0]['loc'])}: {md(exc.errors()[0]['msg'])}")
        return None


def _steps_from_url(state_key: str, recipe: Recipe) -> list[dict[str, Any]] | None:
    """The steps added, removed or moved before a reload, kept in the URL (`?pp-editor-ops=...`) for this
    recipe; None when the URL has none for it or they do not make a valid recipe."""
    raw = st.query_params.get(state_key, "")
    if not raw or len(raw) > 20_000:
        return None
    try:
        kept = json.loads(raw)
        if kept.get("source") != recipe.settings_hash:
            return None
        checked = Recipe.model_validate({**recipe.model_dump(exclude={"ops"}), "ops": kept["ops"]})
    except (ValueError, AttributeError, KeyError, TypeError, ValidationError):
        return None
    return [op.model_dump(mode="json") for op in checked.ops]


def _steps_to_url(state_key: str, recipe: Recipe, ops: list[dict[str, Any]]) -> None:
    """The URL keeps the list of steps when it differs from the recipe's (the values are in their widgets')."""
    if [op["op"] for op in ops] == [op.op for op in recipe.ops]:
        st.query_params.pop(state_key, None)
    else:
        st.query_params[state_key] = json.dumps({"source": recipe.settings_hash, "ops": ops}, separators=(",", ":"))
