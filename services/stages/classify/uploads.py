"""Images of one API upload (an image, or a zip of them), read within fixed bounds and one at a time.

A request may hold a decompression bomb: six 9000x9000 PNGs fit in a 462 KB zip and decode to 1.5 GB. So
each image's size is checked from its header before anything is decoded (`max_image_pixels`), the request
has a pixel budget across all its images (`max_request_pixels`), and images are decoded one at a time and
handed to `prepare` (CLIP's preprocess: a 224x224 tensor) before the next is read, so a request never holds
more than one decoded image. Zip members are listed and read through `services.io.archives` (the same guard
as imports): members refused there, corrupt members and undecodable images are reported per member with
the reason, never as a server error.
"""

from __future__ import annotations

import io
import math
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Generic, TypeVar

from PIL import Image

from services.core.errors import WorkbenchError
from services.core.settings import Settings
from services.io.archives import SEPARATOR, ArchiveError, ArchiveLimits, ArchiveReader, list_images
from services.io.imaging import ImageCheckError, decode_image, sha256_hex

T = TypeVar("T")
NAME_CHARS_SHOWN = 300  # a member name echoed back to the client is cut to this length


class UploadRefused(WorkbenchError):
    """The upload as a whole is refused; `status` is the HTTP status the API answers with."""

    error_class = "upload_refused"
    http_status = 400

    def __init__(self, status: int, detail: str | dict[str, object]) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class UploadLimits:
    max_image_pixels: int
    max_request_pixels: int
    max_image_bytes: int
    max_images: int
    archive: ArchiveLimits

    @classmethod
    def from_settings(cls, settings: Settings, max_images: int | None = None) -> UploadLimits:
        """The API's bounds. A zip inside the upload is read into memory, so it may not exceed the upload limit."""
        api = settings.api
        upload_bytes = settings.max_upload_mb * 2**20
        images = max_images if max_images is not None else api.max_images
        return cls(
            max_image_pixels=api.max_image_pixels,
            max_request_pixels=api.max_request_pixels,
            max_image_bytes=api.max_image_bytes,
            max_images=images,
            archive=ArchiveLimits(
                max_members=images * 4,
                max_total_bytes=max(upload_bytes * 4, api.max_image_bytes),
                max_member_bytes=api.max_image_bytes,
                max_nested_bytes=upload_bytes,
            ),
        )


@dataclass
class UploadImage(Generic[T]):
    name: str  # the upload's file name, or the member's path inside the zip (`inner.zip!a.png` when nested)
    hash: str  # sha256 of the file bytes (the workspace's image identity)
    prepared: T | None  # what `prepare` made of the decoded image; None when `known` said it needs no decoding


@dataclass
class UploadReport:
    skipped: list[dict[str, str]] = field(default_factory=list)
    pixels_decoded: int = 0

    def skip(self, name: str, reason: str) -> None:
        shown = name if len(name) <= NAME_CHARS_SHOWN else f"{name[:NAME_CHARS_SHOWN]}..."
        self.skipped.append({"name": shown, "reason": reason})


def read_upload(
    upload: IO[bytes],
    filename: str,
    limits: UploadLimits,
    prepare: Callable[[Image.Image], T],
    known: Callable[[str], bool] = lambda _: False,
    side: int = 224,
    report: UploadReport | None = None,
) -> Iterator[UploadImage[T]]:
    """Each image of the upload, in order, decoded (unless `known(hash)` says its result is stored already) at
    the reduced JPEG scale that still gives `side` pixels on the short side (as the embed job decodes), and
    passed through `prepare`. Members that cannot be used go to `report.skipped`. Raises UploadRefused when
    the upload as a whole cannot be used (a single image that is not one, a zip that is not readable)."""
    report = report if report is not None else UploadReport()
    budget = _Budget(limits.max_request_pixels)
    upload.seek(0)
    if zipfile.is_zipfile(upload):
        yield from _zip_images(upload, filename, limits, prepare, known, side, report, budget)
        return
    upload.seek(0, io.SEEK_END)
    size = upload.tell()
    if size > limits.max_image_bytes:
        raise UploadRefused(413, f"{filename}: {size} bytes is over the {limits.max_image_bytes} byte image limit")
    upload.seek(0)
    data = upload.read()
    try:
        item = _one(filename, data, limits, prepare, known, side, budget, report)
    except ImageCheckError as exc:
        status = 413 if exc.error_class == "too_large" else 422
        raise UploadRefused(status, f"{filename}: {exc.message}") from None
    yield item


def _zip_images(
    upload: IO[bytes],
    filename: str,
    limits: UploadLimits,
    prepare: Callable[[Image.Image], T],
    known: Callable[[str], bool],
    side: int,
    report: UploadReport,
    budget: _Budget,
) -> Iterator[UploadImage[T]]:
    label = filename.replace(SEPARATOR, "_") or "upload.zip"  # names the zip in messages; "!" splits locators
    try:
        members, refused = list_images(upload, limits.archive, label=label)
    except ArchiveError as exc:
        raise UploadRefused(422, str(exc)) from None
    if len(members) > limits.max_images:
        raise UploadRefused(413, f"{len(members)} images in the zip; the API takes at most {limits.max_images}")
    for s in refused:
        report.skip(_inner(s.locator), s.reason)
    reader = ArchiveReader(limits.archive, root=upload)
    try:
        for m in members:
            name = _inner(m.locator)
            try:
                data = reader.read(m.locator)
                yield _one(name, data, limits, prepare, known, side, budget, report)
            except ArchiveError as exc:
                report.skip(name, exc.reason)
            except ImageCheckError as exc:
                report.skip(name, f"{exc.error_class}: {exc.message}")
            except KeyError:
                report.skip(name, "member missing from the zip's directory")
    finally:
        reader.close()


def _inner(locator: str) -> str:
    return locator.split(SEPARATOR, 1)[1]


class _Budget:
    def __init__(self, pixels: int) -> None:
        self.left = pixels


def _one(
    name: str,
    data: bytes,
    limits: UploadLimits,
    prepare: Callable[[Image.Image], T],
    known: Callable[[str], bool],
    side: int,
    budget: _Budget,
    report: UploadReport,
) -> UploadImage[T]:
    digest = sha256_hex(data)
    if known(digest):  # its vector is stored: nothing to decode
        return UploadImage(name, digest, None)
    width, height = _header_size(data, limits.max_image_pixels)
    pixels = width * height
    if pixels > limits.max_image_pixels:
        raise ImageCheckError(
            "too_large",
            f"decompression bomb: {width}x{height} pixels is over the {limits.max_image_pixels} per-image limit",
        )
    if pixels > budget.left:
        raise ImageCheckError(
            "too_large",
            f"{width}x{height} pixels would pass the request's budget of {limits.max_request_pixels} decoded "
            "pixels; send it in another request",
        )
    budget.left -= pixels
    report.pixels_decoded += pixels
    # JPEG: the decoder scales down by 1/2, 1/4 or 1/8 while both sides stay >= `side` (the embed job's rule)
    draft_side = math.ceil(side * max(width, height) / max(1, min(width, height)))
    image, _, _, _ = decode_image(data, limits.max_image_pixels, draft_side=draft_side)
    try:
        prepared = prepare(image.convert("RGB"))
    finally:
        image.close()
    return UploadImage(name, digest, prepared)


def _header_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Width and height from the header alone (nothing is decoded); ImageCheckError when there is none."""
    if not data:
        raise ImageCheckError("not_image", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                return int(width), int(height)
    except Image.DecompressionBombError as exc:
        raise ImageCheckError("too_large", f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError):
        _, _, width, height = decode_image(data, max_pixels)  # raises ImageCheckError with the decoder's reason
        return width, height
