# SPDX-License-Identifier: Apache-2.0
"""Text generation and embeddings, under the same admission, timeout, cancellation and
metrics as tensor inference.

`generate()` admits a request (503 when max_concurrency is reached or the server drains),
renders and tokenizes the prompt off the event loop, checks the context, and starts the
model's stream in a worker thread at once, so the model's queue slot is always given back
even if no response ever starts. The request's deadline (request_timeout_s) and a client
that goes away both cancel the stream, which leaves the model's decode batch at the next
step (its slot serves the next waiting request); the admission slot is given back at the
deadline, not when the thread notices. Transports only frame what `Generation.chunks()` yields.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..backends.capabilities import (
    Embedder,
    EmbeddingResult,
    TextGenerator,
    TextStream,
)
from ..errors import (
    InvalidInputError,
    InvalidParamError,
    MLOSError,
    RequestTimeoutError,
    UnsupportedError,
)
from ..kernel.modes import KernelModes
from ..metrics import Metrics
from ..settings import Settings
from .admission import Admission, Slot
from .llm_metrics import LLMMetrics
from .models import ModelState
from .types import EmbedRequest, InferRequest, InferResponse, OutputTensor, TextRequest

_END = object()
_TIMEOUT = object()

#: The tensor view of a language model (KServe / upstream MLOS `inputs`).
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


def check_context(n_ctx: int, tokens: list[int], max_tokens: int | None, param: str) -> None:
    too_long = len(tokens) >= n_ctx
    if too_long or (max_tokens and len(tokens) + max_tokens > n_ctx):
        wanted = len(tokens) + (max_tokens or 0)
        raise InvalidParamError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{wanted} tokens ({len(tokens)} in the prompt, {max_tokens or 0} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param=param if too_long else "max_tokens",
            code="context_length_exceeded",
        )


class Generation:
    """One admitted generation. Its stream runs in a worker thread from admission on; the
    text arrives through `chunks()` (async) or `iter_blocking()` (a transport's own
    thread). Both raise RequestTimeoutError at the deadline. `cancel()` (client gone) may
    be called from anywhere."""

    def __init__(
        self,
        plane: TextGeneration,
        request: TextRequest,
        backend: Backend,
        stream: TextStream,
        slot: Slot,
        t0: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.request, self.stream, self.t0 = request, stream, t0
        self.model = request.model
        self.version: str = backend.source.version
        self._slot = slot
        self._plane = plane
        self.timed_out = False
        self._loop = loop
        self._aqueue: asyncio.Queue[Any] | None = asyncio.Queue() if loop else None
        self._squeue: queue.SimpleQueue[Any] | None = None if loop else queue.SimpleQueue()
        self._timer: asyncio.TimerHandle | None = None
        if loop is not None:
            self._timer = loop.call_later(plane.settings.request_timeout_s, self._expire)
        threading.Thread(target=self._run, name="mlos-llm-generate", daemon=True).start()

    @property
    def result(self) -> Any:
        return self.stream.result

    # ---- the worker thread ---------------------------------------------------------------
    def _put(self, item: Any) -> None:
        if self._aqueue is not None:
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                self._loop.call_soon_threadsafe(self._aqueue.put_nowait, item)
        else:
            assert self._squeue is not None
            self._squeue.put(item)

    def _run(self) -> None:
        try:
            with self._plane.kernel.compute_thread(self.model) as first_step_done:
                step: Callable[[], Any] | None = first_step_done
                for chunk in self.stream:
                    if step is not None:
                        step()  # the backend's native threads for this thread exist now
                        step = None
                    self._put(chunk)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            self._finish()
            self._put(_END)

    def _finish(self) -> None:
        self._slot.release()
        r = self.stream.result
        outcome = "timeout" if self.timed_out else (r.finish_reason or "error")
        ttft = r.first_token_at - self.t0 if r.first_token_at is not None else None
        self._plane.llm_metrics.record(
            self.model, self.request.endpoint, outcome, r.prompt_tokens,
            r.completion_tokens, ttft, r.cached_tokens,
        )
        if self.timed_out:
            self._plane.metrics.failure(self.model, self.request.endpoint, "RequestTimeoutError")
        else:
            done = time.perf_counter()
            self._plane.metrics.record(
                self.model, self.request.endpoint, (ttft or 0.0), done - self.t0 - (ttft or 0.0)
            )

    # ---- the consumer --------------------------------------------------------------------
    def _expire(self) -> None:
        """The deadline: stop the stream and give the slot back now."""
        self.timed_out = True
        self.stream.cancel()
        self._slot.release()
        self._put(_TIMEOUT)

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"generation took longer than {self._plane.settings.request_timeout_s}s "
            "(request_timeout_s); ask for fewer tokens (max_tokens) or raise the timeout"
        )

    def cancel(self) -> None:
        self.stream.cancel()

    def _item(self, item: Any) -> bool:
        """False at the end; raises what the worker or the deadline handed over."""
        if item is _END:
            if self.timed_out:
                raise self._timeout_error()
            return False
        if item is _TIMEOUT:
            raise self._timeout_error()
        if isinstance(item, BaseException):
            raise item
        return True

    async def chunks(self) -> AsyncGenerator[str, None]:
        assert self._aqueue is not None
        try:
            while True:
                item = await self._aqueue.get()
                if not self._item(item):
                    return
                yield item
        finally:
            # Leaving early (client gone, an error while framing) frees the context too.
            self.stream.cancel()
            if self._timer is not None:
                self._timer.cancel()

    async def text(self) -> str:
        return "".join([chunk async for chunk in self.chunks()])

    def iter_blocking(self) -> Iterator[str]:
        assert self._squeue is not None
        deadline = time.monotonic() + self._plane.settings.request_timeout_s
        try:
            while True:
                try:
                    item = self._squeue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    self._expire()
                    raise self._timeout_error() from None
                if not self._item(item):
                    return
                yield item
        finally:
            self.stream.cancel()


class TextGeneration:
    """The text half of the DataPlane (mixed into it; the state is set up there)."""

    settings: Settings
    kernel: KernelModes
    metrics: Metrics
    llm_metrics: LLMMetrics
    admission: Admission
    models: dict[str, ModelState]

    def backend(self, name: str, version: str | None = None) -> Backend:
        raise NotImplementedError  # ModelLifecycle.backend

    # ---- lookups -------------------------------------------------------------------------
    def text_models(self) -> list[tuple[str, int]]:
        """(name, created) of the loaded models that generate text or embed."""
        cards = []
        for name, state in sorted(self.models.items()):
            backend = state.latest
            if backend is None or not backend.ready:
                continue
            if isinstance(backend, (TextGenerator, Embedder)):  # noqa: UP038
                cards.append((name, int(backend.source.path.stat().st_mtime)))
        return cards

    def text_model(self, name: str, version: str | None = None) -> TextGenerator:
        backend = self.backend(name, version)
        if not isinstance(backend, TextGenerator):
            raise UnsupportedError(
                f"model '{name}' is served by the {backend.name} backend, which does not "
                "generate text; send tensors ('inputs') instead"
            )
        return backend

    def embedding_model(self, name: str, version: str | None = None) -> Embedder:
        backend = self.backend(name, version)
        if not isinstance(backend, Embedder) or not getattr(backend, "can_embed", True):
            raise UnsupportedError(
                f"model '{name}' does not compute embeddings"
                + (": set 'embeddings: true' in its config" if isinstance(backend, Embedder)
                   else "")
            )
        return backend

    # ---- generation ----------------------------------------------------------------------
    def _prepare(self, gen: TextGenerator, request: TextRequest) -> TextStream:
        """Render, tokenize, check the context and join the model's queue (CPU work for a
        long prompt: runs on a helper thread, never on the event loop)."""
        params = request.params
        if request.messages is not None:
            chat = gen.chat_prompt(request.messages)
            tokens = gen.tokenize(chat.text, add_bos=not chat.has_bos)
            if chat.stop:
                params = dataclasses.replace(params, stop=params.stop + chat.stop)
        elif isinstance(request.prompt, list):
            tokens = request.prompt
        else:
            tokens = gen.tokenize(request.prompt or "")
        check_context(gen.context_length, tokens, params.max_tokens, request.prompt_param)
        return gen.start(tokens, params)

    def _admit_generation(self, request: TextRequest) -> tuple[TextGenerator, Slot]:
        if request.params.max_tokens == 0:
            # OpenAI's API refuses it too ("max_tokens must be at least 1"); llama.cpp's
            # server would fill the whole context instead.
            raise InvalidParamError(
                "max_tokens must be at least 1 (omit it to generate until the context is "
                "full)", param="max_tokens",
            )
        gen = self.text_model(request.model, request.version)
        return gen, self.admission.admit()

    async def generate(self, request: TextRequest) -> Generation:
        """Admit and start a generation; its text comes from `chunks()` or `text()`."""
        t0 = time.perf_counter()
        try:
            gen, slot = self._admit_generation(request)
            try:
                stream = await asyncio.to_thread(self._prepare, gen, request)
            except BaseException:
                slot.release()
                raise
        except MLOSError as exc:
            self.metrics.failure(request.model, request.endpoint, type(exc).__name__)
            raise
        loop = asyncio.get_running_loop()
        return Generation(self, request, gen, stream, slot, t0, loop)  # type: ignore[arg-type]

    def generate_blocking(self, request: TextRequest) -> Generation:
        """For transports on their own threads; the text comes from `iter_blocking()`."""
        t0 = time.perf_counter()
        try:
            gen, slot = self._admit_generation(request)
            try:
                stream = self._prepare(gen, request)
            except BaseException:
                slot.release()
                raise
        except MLOSError as exc:
            self.metrics.failure(request.model, request.endpoint, type(exc).__name__)
            raise
        return Generation(self, request, gen, stream, slot, t0, None)  # type: ignore[arg-type]

    # ---- the tensor view of a language model ---------------------------------------------
    def _text_requests(self, gen: TextGenerator, request: InferRequest) -> list[TextRequest]:
        prompts = None
        for tensor in request.inputs:
            if tensor.name == TEXT_INPUT and tensor.data is not None:
                prompts = tensor.data
        if prompts is None or len(request.inputs) != 1:
            raise InvalidInputError(
                f"model {request.model!r} takes one BYTES input {TEXT_INPUT!r} (the prompts)"
            )
        params = gen.tensor_params()
        return [
            TextRequest(request.model, params,
                        p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p),
                        version=request.version, endpoint=request.protocol)
            for p in prompts.reshape(-1)
        ]

    def _text_response(
        self, request: InferRequest, version: str, texts: list[str], shape: tuple[int, ...]
    ) -> InferResponse:
        array = np.array([t.encode("utf-8") for t in texts], dtype=object).reshape(shape)
        return InferResponse(
            request.model, version, [OutputTensor(TEXT_OUTPUT, "BYTES", shape, array)],
            request.id,
        )

    async def _infer_text(self, gen: TextGenerator, request: InferRequest) -> InferResponse:
        """Each `text_input` element is a prompt, completed greedily; each one is a
        generation under admission and the timeout."""
        texts, version = [], ""
        for text_request in self._text_requests(gen, request):
            generation = await self.generate(text_request)
            texts.append(await generation.text())
            version = generation.version
        shape = next(t.shape for t in request.inputs)
        return self._text_response(request, version, texts, shape)

    def _infer_text_blocking(self, gen: TextGenerator, request: InferRequest) -> InferResponse:
        texts, version = [], ""
        for text_request in self._text_requests(gen, request):
            generation = self.generate_blocking(text_request)
            texts.append("".join(generation.iter_blocking()))
            version = generation.version
        shape = next(t.shape for t in request.inputs)
        return self._text_response(request, version, texts, shape)

    # ---- embeddings ----------------------------------------------------------------------
    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """Admitted like every request; the deadline answers 504 (llama.cpp's embedding
        call cannot be interrupted: it finishes on its thread, outside the admission)."""
        try:
            model = self.embedding_model(request.model, request.version)
            slot = self.admission.admit()
            future = asyncio.ensure_future(asyncio.to_thread(model.embed, request.texts))
            future.add_done_callback(slot.release)
            try:
                result = await asyncio.wait_for(
                    asyncio.shield(future), self.settings.request_timeout_s
                )
            except asyncio.TimeoutError:
                slot.release()
                raise RequestTimeoutError(
                    f"embedding took longer than {self.settings.request_timeout_s}s "
                    "(request_timeout_s); send fewer or shorter texts"
                ) from None
        except MLOSError as exc:
            self.metrics.failure(request.model, "embeddings", type(exc).__name__)
            raise
        self.llm_metrics.record(request.model, "embeddings", "ok", result.prompt_tokens)
        return result
