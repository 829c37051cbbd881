"""One base for every error the product raises on purpose, so each front door handles them in one place.

A `WorkbenchError`'s message is written for a user: it names the item and the cause, and the fix where there is
one; it never carries a secret. `error_class` is a short stable code (a job item's failure class, the `type` of
the API's problem answer); `http_status` is the status the API answers with. The CLI prints `error: <message>`
and exits 2, the API answers a JSON problem, the pages show the message with `st.error`.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """An error a user can act on (see the module's docstring)."""

    error_class: str = "error"
    http_status: int = 400
    shows_class: bool = False  # the detail starts with the class (`not_image: ...`): an item's failure class

    def __init__(self, message: str = "", *, error_class: str | None = None) -> None:
        super().__init__(message)
        if error_class is not None:
            self.error_class = error_class

    def user_message(self) -> str:
        """The message on one line, as every front door shows it."""
        text = " ".join(str(self).split()) or type(self).__name__
        return f"{self.error_class}: {text}" if self.shows_class else text


def problem(exc: WorkbenchError) -> dict[str, object]:
    """The RFC 9457 problem body for an error (`detail` is also what FastAPI's own errors carry)."""
    return {
        "type": f"urn:workbench:error:{exc.error_class}",
        "title": exc.error_class.replace("_", " "),
        "status": exc.http_status,
        "detail": exc.user_message(),
    }


# The extra (pyproject's optional dependencies) that brings each importable package a stage needs beyond the core.
EXTRA_OF_MODULE: dict[str, str] = {
    **dict.fromkeys(["torch", "torchvision", "open_clip", "sklearn", "skops", "scipy", "threadpoolctl"], "clip"),
    **dict.fromkeys(["re2", "rapidocr", "onnxruntime", "pytesseract", "transformers"], "ocr"),
    **dict.fromkeys(["google", "pyarrow"], "describe"),
    **dict.fromkeys(["fastapi", "uvicorn", "multipart", "python_multipart"], "api"),
    **dict.fromkeys(["streamlit", "plotly", "pandas", "authlib"], "dashboard"),
    **dict.fromkeys(["dask", "distributed"], "dask"),
    "skimage": "demo",
}


def missing_extra(exc: BaseException) -> str | None:
    """For a package this install lacks, the line that says which extra brings it (None for anything else)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return (
        f"this needs the {extra!r} extra ({top} is not installed): pip install 'image-workbench[{extra}]' "
        "(or 'image-workbench[all]')"
    )
