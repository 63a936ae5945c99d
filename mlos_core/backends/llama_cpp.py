# SPDX-License-Identifier: Apache-2.0
"""The llama.cpp backend (llama-cpp-python) for `.gguf` language models.

One loaded model owns one llama.cpp context, which serves one request at a time: requests
wait in a fair bounded queue (ContextQueue) and get ServerBusyError when it is full. The
generation loop is ours (token by token over `Llama.generate`), so a cancelled stream frees
the context after the token being decoded, and token counts are exact. At temperature 0
the text equals `Llama.create_completion`'s for the same prompt and settings.

Settings (model config keys; defaults come from the service settings `llm_*`):
    context_size  tokens in the context (0: the model's training context)
    threads       CPU threads for decoding and prompt processing (0: every core)
    batch_size    prompt-processing batch size
    gpu_layers    layers offloaded to a GPU (llama.cpp built with GPU support)
    queue_size    requests that may wait behind the running one (more get 503)
    chat_format   gemma | chatml | llama-3, for models without a chat template
    chat_template Jinja chat template text (overrides the GGUF one)
    embeddings    true: also load an embedding context (/v1/embeddings)
    max_tokens    default completion length for the tensor (KServe / MLOS) route
    prompt_cache  true: reuse the KV cache of the previous request's common prefix (faster
                  multi-turn chat, but results then depend on what ran before: the float
                  sums of a prompt evaluated in pieces differ in the last bits, enough to
                  change a greedy choice). Off: every request is evaluated from scratch
                  and equals a fresh in-process llama-cpp-python run.
"""

from __future__ import annotations

import codecs
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..errors import InvalidInputError, ModelLoadError, ModelNotReadyError
from .base import Backend, ModelSource, TensorSpec, thread_count
from .capabilities import (
    CAP_EMBEDDINGS,
    CAP_TEXT_GENERATION,
    ChatPrompt,
    ContextQueue,
    Embedder,
    EmbeddingResult,
    GenerationParams,
    TextGenerator,
    TextStream,
    _Ticket,
)
from .llama_cpp_chat import ChatRenderer

log = logging.getLogger(__name__)

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"


@dataclass(frozen=True)
class LlamaSettings:
    """Per-model llama.cpp settings: the model config's keys over the service defaults."""

    context_size: int = 2048
    threads: int = 0
    batch_size: int = 512
    gpu_layers: int = 0
    queue_size: int = 16
    embeddings: bool = False
    max_tokens: int = 128
    seed: int = 0xFFFFFFFF
    prompt_cache: bool = False

    @classmethod
    def from_config(
        cls, config: dict[str, Any], defaults: dict[str, Any] | None = None
    ) -> LlamaSettings:
        values: dict[str, Any] = {}
        for f in fields(cls):
            for source in (config, defaults or {}):
                if source.get(f.name) is not None:
                    values[f.name] = source[f.name]
                    break
        try:
            typed: dict[str, Any] = {
                k: _as_bool(v) if k in ("embeddings", "prompt_cache") else int(v)
                for k, v in values.items()
            }
            settings = cls(**typed)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"bad llama.cpp setting in the model config: {exc}") from exc
        for name in ("context_size", "threads", "batch_size", "queue_size"):
            if getattr(settings, name) < 0:
                raise ModelLoadError(f"model config {name} must be >= 0")
        # Bounded like every thread count (backends.base.thread_count).
        thread_count({"threads": settings.threads}, "threads", 0, zero_means="every core")
        return settings

    @property
    def n_threads(self) -> int:
        return self.threads or max(1, os.cpu_count() or 1)


def service_defaults(source: ModelSource) -> dict[str, Any]:
    """Defaults from the service settings (`llm_context_size`, `llm_threads`...), when the
    data plane hands them over in `source.settings`."""
    settings = getattr(source, "settings", None)
    if settings is None:
        return {}
    out = {}
    for f in fields(LlamaSettings):
        value = getattr(settings, f"llm_{f.name}", None)
        if value is not None:
            out[f.name] = value
    return out


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            "the llama.cpp backend needs llama-cpp-python: pip install 'mlos[llm]' "
            "(scripts/setup.d/50-llm.sh does it)"
        ) from exc
    return llama_cpp


class LlamaCppBackend(Backend, TextGenerator, Embedder):
    name: ClassVar[str] = "llama_cpp"
    formats: ClassVar[tuple[str, ...]] = (".gguf",)
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"infer", CAP_TEXT_GENERATION, CAP_EMBEDDINGS}
    )

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self.settings = LlamaSettings.from_config(source.config, service_defaults(source))
        self._llama: Any = None
        self._embedder: Any = None
        self._chat: ChatRenderer | None = None
        self._queue = ContextQueue(self.settings.queue_size)
        self._embed_queue = ContextQueue(self.settings.queue_size)

    # ---- Backend ---------------------------------------------------------------------
    def _model_file(self) -> str:
        file = getattr(self.source, "model_file", None)
        if file is None:
            found = sorted(self.source.path.glob("*.gguf"))
            if not found:
                raise ModelLoadError(f"{self.source.path}: no .gguf file")
            file = found[0]
        return str(file)

    def load(self) -> None:
        llama_cpp = _import_llama()
        path = self._model_file()
        s = self.settings
        common = dict(
            model_path=path,
            n_ctx=s.context_size,
            n_threads=s.n_threads,
            n_threads_batch=s.n_threads,
            n_batch=s.batch_size,
            n_gpu_layers=s.gpu_layers,
            seed=s.seed,
            verbose=False,
        )
        try:
            self._llama = llama_cpp.Llama(**common)
            if s.embeddings:
                arch = self._llama.metadata.get("general.architecture", "")
                pooling = (
                    llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
                    if f"{arch}.pooling_type" in self._llama.metadata
                    else llama_cpp.LLAMA_POOLING_TYPE_MEAN
                )
                self._embedder = llama_cpp.Llama(
                    **common, embedding=True, pooling_type=pooling
                )
        except (ValueError, RuntimeError, OSError) as exc:
            self.unload()
            raise ModelLoadError(f"{path}: llama.cpp could not load it: {exc}") from exc
        llama = self._llama
        self._chat = ChatRenderer(
            self.source.config,
            llama.metadata,
            bos_token=self._token_text(llama.token_bos()),
            eos_token=self._token_text(llama.token_eos()),
        )
        log.info(
            "loaded %s (n_ctx %d, %d threads, chat: %s, embeddings: %s)",
            path, llama.n_ctx(), s.n_threads, self._chat.source, bool(self._embedder),
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._llama.detokenize([token], special=True)).decode(
            "utf-8", errors="ignore"
        )

    @property
    def ready(self) -> bool:
        return self._llama is not None

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(TEXT_OUTPUT, "BYTES", (-1,))]

    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The tensor view: each `text_input` element is a prompt, completed greedily
        with `max_tokens` from the model config."""
        prompts = inputs.get(TEXT_INPUT)
        if prompts is None:
            raise InvalidInputError(f"the llama.cpp backend takes one BYTES input {TEXT_INPUT!r}")
        params = self.tensor_params()
        texts = []
        for prompt in prompts.reshape(-1):
            text = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
            stream = self.start(self.tokenize(text), params)
            texts.append("".join(stream).encode("utf-8"))
        return {TEXT_OUTPUT: np.array(texts, dtype=object).reshape(prompts.shape)}

    def tensor_params(self) -> GenerationParams:
        # A configured 0 keeps its old meaning: until the context is full.
        return GenerationParams(max_tokens=self.settings.max_tokens or None, temperature=0.0)

    def unload(self) -> None:
        # Requests still running hold pointers into the model: stop them first (each
        # notices within one token), or freeing the model under them would crash.
        for queue in (self._queue, self._embed_queue):
            if not queue.close(timeout=30):
                log.warning("%s: unloading while a request still runs", self.source.name)
        for attr in ("_llama", "_embedder"):
            model = getattr(self, attr)
            setattr(self, attr, None)
            if model is not None:
                model.close()

    # ---- TextGenerator ---------------------------------------------------------------
    def _require(self) -> Any:
        if self._llama is None:
            raise ModelNotReadyError(f"model {self.source.name!r} is not loaded")
        return self._llama

    @property
    def context_length(self) -> int:
        return int(self._require().n_ctx())

    @property
    def can_chat(self) -> bool:
        return self._chat is not None and self._chat.available

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        llama = self._require()
        if not text:
            bos = llama.token_bos()
            return [bos] if add_bos and bos >= 0 else []
        # llama.cpp adds BOS only when the vocabulary asks for it (add_bos_token).
        return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def chat_prompt(self, messages: list[dict[str, Any]]) -> ChatPrompt:
        self._require()
        assert self._chat is not None
        return self._chat.render(messages)

    def start(self, prompt_tokens: list[int], params: GenerationParams) -> TextStream:
        self._check_tokens(prompt_tokens)
        n_ctx = self.context_length
        if len(prompt_tokens) >= n_ctx:
            raise InvalidInputError(
                f"the prompt is {len(prompt_tokens)} tokens; this model's context holds "
                f"{n_ctx} (prompt plus completion): shorten the prompt"
            )
        if params.max_tokens is not None and params.max_tokens < 0:
            raise InvalidInputError("max_tokens must be >= 0")
        stream = _LlamaStream(self, prompt_tokens, params)
        stream.ticket = self._queue.admit(stream.cancelled)
        return stream

    def _check_tokens(self, tokens: list[int]) -> None:
        """Token ids from the client (a prompt given as ids): llama.cpp indexes its
        vocabulary with them unchecked, and an empty prompt leaves nothing to decode."""
        if not tokens:
            raise InvalidInputError("the prompt is empty: give text or at least one token id")
        n_vocab = int(self._require().n_vocab())
        for token in tokens:
            if type(token) is not int or not 0 <= token < n_vocab:
                raise InvalidInputError(
                    f"prompt token id {token!r} is not in this model's vocabulary "
                    f"(0..{n_vocab - 1})")

    # ---- Embedder --------------------------------------------------------------------
    @property
    def can_embed(self) -> bool:
        return self._embedder is not None

    def embed(self, texts: list[str]) -> EmbeddingResult:
        if self._embedder is None:
            raise InvalidInputError(
                f"model {self.source.name!r} does not serve embeddings: set "
                "'embeddings: true' in its config"
            )
        n_ctx = int(self._embedder.n_ctx())
        for i, text in enumerate(texts):
            n = len(self._embedder.tokenize(text.encode("utf-8"), add_bos=True, special=True))
            if n > n_ctx:
                raise InvalidInputError(
                    f"input[{i}] is {n} tokens; this model's context holds {n_ctx}"
                )
        ticket = self._embed_queue.admit()
        try:
            if not self._embed_queue.acquire(ticket):
                raise ModelNotReadyError(f"model {self.source.name!r} is being unloaded")
            vectors, count = self._embedder.embed(texts, normalize=True, return_count=True)
        finally:
            self._embed_queue.release(ticket)
        return EmbeddingResult([list(map(float, v)) for v in vectors], int(count))


class _LlamaStream(TextStream):
    ticket: _Ticket

    def __init__(
        self, backend: LlamaCppBackend, prompt_tokens: list[int], params: GenerationParams
    ) -> None:
        super().__init__()
        self._backend = backend
        self._prompt = list(prompt_tokens)
        self._params = params
        self.result.prompt_tokens = len(prompt_tokens)

    def cancel(self) -> None:
        super().cancel()
        self._backend._queue.wake()

    def __iter__(self) -> Iterator[str]:
        queue = self._backend._queue
        if not queue.acquire(self.ticket):
            self.result.finish_reason = "cancelled"
            return
        try:
            yield from self._generate()
        finally:
            queue.release(self.ticket)

    def _generate(self) -> Iterator[str]:
        llama = self._backend._require()
        llama_cpp = _import_llama()
        params = self._params
        n_ctx = int(llama.n_ctx())
        room = n_ctx - len(self._prompt)
        max_tokens = room if not params.max_tokens else min(params.max_tokens, room)
        stops = [s.encode("utf-8") for s in params.stop if s]
        longest_stop = max((len(s) for s in stops), default=0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        vocab = llama._model.vocab
        text = bytearray()
        sent = 0
        result = self.result
        result.finish_reason = "length"
        llama.set_seed(params.seed if params.seed is not None else secrets.randbits(32))
        if not self._backend.settings.prompt_cache:
            llama.reset()  # no prefix reuse: the same request always gives the same text
        tokens = llama.generate(
            self._prompt,
            top_k=0,
            top_p=params.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
        )
        try:
            if max_tokens <= 0:
                return
            for token in tokens:
                if result.first_token_at is None:
                    result.first_token_at = time.perf_counter()
                if self.cancelled.is_set():
                    result.finish_reason = "cancelled"
                    return
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    result.finish_reason = "stop"
                    break
                result.completion_tokens += 1
                text += llama.detokenize([token])
                end = len(text)
                if stops:
                    window = max(0, sent - longest_stop)
                    hits = [i for i in (text.find(s, window) for s in stops) if i >= 0]
                    if hits:
                        del text[min(hits):]
                        result.finish_reason = "stop"
                        break
                    end -= _held_back(text, stops)
                if end > sent:
                    chunk = decoder.decode(bytes(text[sent:end]))
                    sent = end
                    if chunk:
                        yield chunk
                if result.completion_tokens >= max_tokens:
                    break
        finally:
            tokens.close()
        tail = decoder.decode(bytes(text[sent:]), final=True)
        if tail:
            yield tail


def _held_back(text: bytearray, stops: list[bytes]) -> int:
    """Bytes at the end of `text` that could begin a stop string: not sent yet."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held

