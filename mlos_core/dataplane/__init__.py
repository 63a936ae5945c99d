# SPDX-License-Identifier: Apache-2.0
"""The one data plane: every request kind (tensors, text generation, embeddings) goes
through `DataPlane`, under one admission gate (concurrency limit, drain), one timeout and
cancellation rule, and one metrics registry. Transports convert their wire format into the
neutral types (types.py), call it and frame the answer; they hold no inference logic.

    types.py       neutral requests and responses
    admission.py   concurrency limit, drain, slots given back once
    models.py      model lifecycle and the backend lookup
    model_config.py  a model's configuration (config.pbtxt, config.yaml|json, a load
                   override): checked, layered and applied in one place; the /config answer
    inference.py   tensor inference (threads, inline fast path, pools, shared memory)
    batching.py    dynamic batching: a model version's queue and batch threads
    generation.py  text generation and embeddings
    decoding.py    bounded request decoding, off the event loop
    statistics.py  Triton's per-model-version statistics (hooks the inference path calls)
    system_shm.py  Triton's system shared memory: the registered regions (POSIX shm and
                   mlos-ml buffers) inputs are read from and outputs written to
    cuda_shm.py    Triton's CUDA shared memory, answered truthfully without CUDA
    server_settings.py  Triton's log settings (the service's logging level) and trace
    core.py        the DataPlane that joins them
"""

from .core import EXTENSIONS, SERVER_NAME, DataPlane
from .generation import Generation
from .models import ModelState
from .types import (
    EmbedRequest,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputRequest,
    OutputTensor,
    ShmRef,
    TextRequest,
)

__all__ = [
    "EXTENSIONS", "SERVER_NAME", "DataPlane", "EmbedRequest", "Generation", "InferRequest",
    "InferResponse", "InputTensor", "ModelState", "OutputRequest", "OutputTensor", "ShmRef",
    "TextRequest",
]
