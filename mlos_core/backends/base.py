# SPDX-License-Identifier: Apache-2.0
"""The backend plugin contract.

A backend serves one model version from files on disk. Backends are discovered through
the `mlos.backends` entry-point group; each declares the file formats it serves. A backend
never imports FastAPI or grpc: transports live in mlos_core.protocols. Optional
capabilities (text generation, embeddings) are separate interfaces a backend may also
implement; routes for them exist only when a loaded model has them.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelLoadError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. `datatype` uses KServe v2 names (FP32, INT64, BYTES...);
    -1 in `shape` is a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSource:
    """Where a model version lives: `path` is the version directory
    (`<repository>/<model>/<version>/`), `config` the model's parsed config (may be empty),
    `model_file` the file in it that the plugin manager matched to this backend's formats."""

    name: str
    version: str
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    model_file: Path | None = None
    #: The service settings (mlos_core.settings.Settings), for backend defaults such as
    #: llm_context_size; None outside the service.
    settings: Any = None


#: Capability names. Every backend has INFER (tensors in, tensors out); optional
#: capabilities are extra interfaces, and protocol routers for them are mounted only when an
#: installed backend declares them (see mlos_core.app.OPTIONAL_ROUTERS).
CAP_INFER = "infer"
CAP_TEXT_GENERATION = "text_generation"
CAP_EMBEDDINGS = "embeddings"


@contextlib.contextmanager
def _no_compute_scope() -> Iterator[Callable[[], object]]:
    yield lambda: None


class Backend(ABC):
    """One loaded model version. Lifecycle: __init__ -> load() -> infer()* -> unload()."""

    #: Plugin name, as shown in model metadata (`platform`).
    name: ClassVar[str]
    #: File suffixes this backend serves, e.g. (".onnx",).
    formats: ClassVar[tuple[str, ...]]
    #: What the backend can do (CAP_* names above).
    capabilities: ClassVar[frozenset[str]] = frozenset({CAP_INFER})

    def __init__(self, source: ModelSource) -> None:
        self.source = source
        # Set by the data plane before load(): a thread the backend starts for its own
        # compute (llama.cpp's decode thread) runs inside it, and calls the yielded
        # function after its first compute step, so the kernel scheduler gets the thread
        # and the native threads it started. The default registers nothing.
        self.compute_scope: Callable[[], contextlib.AbstractContextManager[
            Callable[[], object]]] = _no_compute_scope

    @abstractmethod
    def load(self) -> None:
        """Load the model; raise ModelLoadError with a clear message if the file is bad."""

    @property
    @abstractmethod
    def ready(self) -> bool: ...

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model. Inputs are validated by the data plane against `inputs` before
        this is called; raise InvalidInputError for anything else the model rejects."""

    def output_shapes(self, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]] | None:
        """Optional: the output shapes these inputs produce, known before running (lets the
        data plane give infer_into() pooled buffers). None when unknown."""
        return None

    def infer_into(
        self, inputs: dict[str, np.ndarray], targets: dict[str, memoryview]
    ) -> dict[str, np.ndarray] | None:
        """Optional fast path: write the named outputs straight into `targets` (client
        shared memory) and return them as arrays viewing those buffers. Return None when
        that is not possible for these inputs (the data plane then calls infer() and
        copies)."""
        return None

    @abstractmethod
    def unload(self) -> None:
        """Free everything load() took. Safe to call twice."""


def thread_count(config: dict[str, Any], key: str, default: int, zero_means: str = "") -> int:
    """A thread-count setting from a model config, bounded by this machine's CPUs: a config
    asking for 300 intra-op threads would start 300 threads per loaded model. `zero_means`
    says what 0 does where the backend accepts it ("" = 0 is refused)."""
    value = config.get(key, default)
    cpus = os.cpu_count() or 1
    low = 0 if zero_means else 1
    if type(value) is not int or not low <= value <= cpus:
        zero = f" (0: {zero_means})" if zero_means else ""
        raise ModelLoadError(
            f"model config {key}: {value!r} is not an integer from {low} to {cpus} (this "
            f"machine's CPUs){zero}; fix the model's config")
    return value
