# SPDX-License-Identifier: Apache-2.0
"""The data plane's neutral request and response types.

Transports (KServe REST and gRPC, upstream MLOS REST, OpenAI) convert their wire format
into these and call the data plane; nothing here knows HTTP or protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.capabilities import GenerationParams


@dataclass(slots=True)
class ShmRef:
    region: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # None: read from `shm`
    shm: ShmRef | None = None


@dataclass(slots=True)
class OutputRequest:
    name: str
    binary: bool | None = None
    shm: ShmRef | None = None


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str | None
    inputs: list[InputTensor]
    outputs: list[OutputRequest] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    protocol: str = "rest"


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None  # None: written to `shm`
    binary: bool | None = None
    shm: ShmRef | None = None


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: list[OutputTensor]
    id: str | None = None


@dataclass(slots=True)
class TextRequest:
    """A text-generation request: a prompt (text or token ids) or chat messages, rendered
    with the model's chat template. `endpoint` labels the metrics (completions, chat, mlos,
    kserve); `prompt_param` is the request field a context-length error names."""

    model: str
    params: GenerationParams
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    version: str | None = None
    endpoint: str = "completions"
    prompt_param: str = "prompt"


@dataclass(slots=True)
class EmbedRequest:
    model: str
    texts: list[str]
    version: str | None = None
