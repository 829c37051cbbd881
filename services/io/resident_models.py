"""The models this process keeps loaded (CLIP per model and device, the OCR engines), in one registry.

A job or a page's request asks for a model by family and key; the first ask loads it, later asks get the same
object. Two bounds keep a long-lived worker from filling the GPU: a count per family (`clip.resident_models`)
and the bytes of weights of everything held (`worker.model_memory_mb`, on the GPU when the models are there).
Beyond either, the least recently used model goes (never the one just asked for). A model's size is the bytes
of its PyTorch parameters and buffers, counted once however many jobs use it; engines that are not PyTorch
modules (RapidOCR's ONNX sessions, Tesseract) count as 0 bytes.

Loads of different models run side by side; two asks for the same model load it once.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
MB = 2**20


@dataclass
class _Held:
    value: Any
    label: str
    nbytes: int


def weight_bytes(*modules: Any) -> int:
    """Bytes of the parameters and buffers of PyTorch modules (a tensor shared between them counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        tensors: Iterable[Any] = [*module.parameters(), *module.buffers()] if hasattr(module, "parameters") else []
        for tensor in tensors:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            total += int(tensor.numel()) * int(tensor.element_size())
    return total


class ResidentModels:
    """Least recently used first; bounded by a count per family and by bytes across families."""

    def __init__(self) -> None:
        self._held: OrderedDict[tuple[str, Hashable], _Held] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, Hashable], threading.Lock] = {}
        self._loads: Counter[str] = Counter()
        self._family_limits: dict[str, int] = {}
        self._max_bytes: int | None = None

    def get(self, family: str, key: Hashable, load: Callable[[], T], label: Callable[[T], str],
            size: Callable[[T], int] = weight_bytes) -> T:  # fmt: skip
        """The model held under (family, key), loaded by `load()` on the first ask."""
        full = (family, key)
        with self._lock:
            if full in self._held:
                self._held.move_to_end(full)
                return self._held[full].value  # type: ignore[no-any-return]
            loading = self._loading.setdefault(full, threading.Lock())
        with loading:  # one load per model; other models load meanwhile
            with self._lock:
                if full in self._held:
                    self._held.move_to_end(full)
                    return self._held[full].value  # type: ignore[no-any-return]
            try:
                value = load()
                held = _Held(value, label(value), size(value))
            finally:
                with self._lock:
                    self._loading.pop(full, None)
            with self._lock:
                self._held[full] = held
                self._loads[family] += 1
                evicted = self._evict(keep=full)
            log.info("loaded %s (%.1f MB of weights)", held.label, held.nbytes / MB)
        if evicted:
            _free_memory()
        return value

    def set_limits(self, family_limits: dict[str, int] | None = None, max_bytes: int | None = None) -> None:
        """Bounds from settings (the worker sets them as it starts); held models beyond them go at once.
        `max_bytes` None or 0: no bound on bytes."""
        with self._lock:
            if family_limits is not None:
                self._family_limits = {f: max(1, n) for f, n in family_limits.items()}
            self._max_bytes = max_bytes or None
            evicted = self._evict(keep=None)
        if evicted:
            _free_memory()

    def _evict(self, keep: tuple[str, Hashable] | None) -> bool:
        """Drop least recently used models until the bounds hold (under the lock); whether any went."""
        evicted = False
        for family, limit in self._family_limits.items():
            while sum(1 for f, _ in self._held if f == family) > limit:
                victim = next(k for k in self._held if k[0] == family and k != keep)
                self._drop(victim, f"more than {limit} {family} models")
                evicted = True
        while self._max_bytes is not None and self.held_bytes_locked() > self._max_bytes:
            victim_or_none = next((k for k in self._held if k != keep), None)
            if victim_or_none is None:
                held = self._held.get(keep) if keep is not None else None
                if held is not None:
                    log.warning("%s alone takes %.1f MB, over the %.1f MB bound on resident models; kept",
                                held.label, held.nbytes / MB, self._max_bytes / MB)  # fmt: skip
                break
            self._drop(victim_or_none, f"over {self._max_bytes / MB:.1f} MB of resident weights")
            evicted = True
        return evicted

    def _drop(self, key: tuple[str, Hashable], why: str) -> None:
        held = self._held.pop(key)
        log.info("unloaded %s, the least recently used (%s)", held.label, why)

    def held_bytes_locked(self) -> int:
        return sum(h.nbytes for h in self._held.values())

    def load_count(self, family: str | None = None) -> int:
        """Models loaded in this process so far (a hit is not a load), of one family or all."""
        with self._lock:
            return self._loads[family] if family is not None else sum(self._loads.values())

    def held(self, family: str | None = None) -> list[str]:
        """What is held now, least recently used first, with its size."""
        with self._lock:
            return [
                h.label + (f" ({h.nbytes / MB:.1f} MB)" if h.nbytes else "")
                for (f, _), h in self._held.items()
                if family is None or f == family
            ]

    def held_bytes(self) -> int:
        with self._lock:
            return self.held_bytes_locked()

    def clear(self, family: str | None = None) -> None:
        """Forget held models (tests, and a process that wants its memory back)."""
        with self._lock:
            for key in [k for k in self._held if family is None or k[0] == family]:
                del self._held[key]
        _free_memory()


def _free_memory() -> None:
    """Collect what the dropped models held, and give freed GPU memory back (not only to PyTorch's allocator)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


RESIDENT = ResidentModels()
