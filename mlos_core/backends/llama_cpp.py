# SPDX-License-Identifier: Apache-2.0
"""The llama.cpp backend (llama-cpp-python) for `.gguf` language models.

One loaded model owns one llama.cpp context with `parallel` slots, decoded together by
one engine thread (continuous batching, llama_cpp_batch.BatchEngine): up to `parallel`
requests decode in every `llama_decode` step, the rest wait in a fair bounded queue
(ContextQueue) and get ServerBusyError when it is full. Requests join and leave the batch
between steps, so a cancelled stream frees its slot for the next request within one step,
and token counts are exact. At temperature 0 a request alone in the batch gives the text
`Llama.create_completion` gives for the same prompt and settings.

Settings (model config keys; defaults come from the service settings `llm_*`):
    context_size  tokens in the context (0: the model's training context)
    threads       CPU threads for decoding and prompt processing (0: every core)
    batch_size    prompt-processing batch size
    gpu_layers    layers offloaded to a GPU (llama.cpp built with GPU support)
    parallel      requests decoded together in one batch (slots; 0: one per 512 tokens
                  of context_size, 1 to 4, at most 16384 KV tokens in all). Each slot has
                  the whole context_size: the KV cache holds context_size x parallel
    queue_size    requests that may wait behind the running ones (more get 503)
    chat_format   gemma | chatml | llama-3, for models without a chat template
    chat_template Jinja chat template text (overrides the GGUF one)
    embeddings    true: also load an embedding context (/v1/embeddings)
    max_tokens    default completion length for the tensor (KServe / MLOS) route
    prompt_cache  true: a request starts after the longest prefix its prompt shares with
                  what a free slot's KV cache holds from the request before (faster
                  multi-turn chat and shared system prompts, but results then depend on
                  what ran before: the float sums of a prompt evaluated in pieces differ in
                  the last bits, enough to change a greedy choice). Off: every request is
                  evaluated from scratch.
"""

from __future__ import annotations

import logging
import os
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
)
from .llama_cpp_batch import BatchEngine, BatchStream, auto_parallel
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
    parallel: int = 0
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
        for name in ("context_size", "threads", "batch_size", "queue_size", "parallel"):
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
        self._model: Any = None  # llama_cpp._internals.LlamaModel
        self._context: Any = None  # its LlamaContext, used by the engine thread only
        self._engine: BatchEngine | None = None
        self._embedder: Any = None
        self._chat: ChatRenderer | None = None
        self._embed_queue = ContextQueue(self.settings.queue_size)

    @property
    def _queue(self) -> ContextQueue:
        """The generation queue: its first `parallel` tickets decode, the rest wait."""
        return self._require_engine().queue

    @property
    def engine(self) -> BatchEngine:
        return self._require_engine()

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
        from llama_cpp import _internals

        path = self._model_file()
        s = self.settings
        try:
            model_params = llama_cpp.llama_model_default_params()
            model_params.n_gpu_layers = 0x7FFFFFFF if s.gpu_layers == -1 else s.gpu_layers
            _quiet_backend(llama_cpp)
            self._model = _internals.LlamaModel(path_model=path, params=model_params,
                                                verbose=False)
            n_ctx_seq = s.context_size or int(self._model.n_ctx_train())
            parallel = s.parallel or auto_parallel(n_ctx_seq)
            n_batch = min(s.batch_size, n_ctx_seq)
            self._context = _internals.LlamaContext(
                model=self._model,
                params=_context_params(llama_cpp, s, n_ctx_seq, parallel, n_batch),
                verbose=False,
            )
            self._engine = BatchEngine(
                llama_cpp, self._model, self._context, slots=parallel, n_batch=n_batch,
                queue_size=s.queue_size, prompt_cache=s.prompt_cache,
                name=self.source.name, compute_scope=self.compute_scope,
            )
            if s.embeddings:
                common = dict(
                    model_path=path, n_ctx=s.context_size, n_threads=s.n_threads,
                    n_threads_batch=s.n_threads, n_batch=s.batch_size,
                    n_gpu_layers=s.gpu_layers, seed=s.seed, verbose=False,
                )
                metadata = self._model.metadata()
                arch = metadata.get("general.architecture", "")
                pooling = (
                    llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
                    if f"{arch}.pooling_type" in metadata
                    else llama_cpp.LLAMA_POOLING_TYPE_MEAN
                )
                self._embedder = llama_cpp.Llama(
                    **common, embedding=True, pooling_type=pooling
                )
        except (ValueError, RuntimeError, OSError) as exc:
            self.unload()
            raise ModelLoadError(f"{path}: llama.cpp could not load it: {exc}") from exc
        model = self._model
        self._chat = ChatRenderer(
            self.source.config,
            model.metadata(),
            bos_token=self._token_text(model.token_bos()),
            eos_token=self._token_text(model.token_eos()),
        )
        log.info(
            "loaded %s (%d slots of %d tokens, %d threads, prompt cache %s, chat: %s, "
            "embeddings: %s)", path, parallel, self._engine.n_ctx_seq, s.n_threads,
            s.prompt_cache, self._chat.source, bool(self._embedder),
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self._model.detokenize([token], special=True)).decode(
            "utf-8", errors="ignore"
        )

    @property
    def ready(self) -> bool:
        return self._engine is not None

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
        # leaves the batch at the next step), or freeing the model under them would crash.
        engine, self._engine = self._engine, None
        if engine is not None and not engine.close(timeout=30):
            log.warning("%s: the decode thread did not stop; keeping its model loaded",
                        self.source.name)
            return
        if not self._embed_queue.close(timeout=30):
            log.warning("%s: unloading while an embedding still runs", self.source.name)
        for attr in ("_context", "_model", "_embedder"):
            obj = getattr(self, attr)
            setattr(self, attr, None)
            if obj is not None:
                obj.close()

    # ---- TextGenerator ---------------------------------------------------------------
    def _require(self) -> Any:
        if self._model is None or self._engine is None:
            raise ModelNotReadyError(f"model {self.source.name!r} is not loaded")
        return self._model

    def _require_engine(self) -> BatchEngine:
        self._require()
        assert self._engine is not None
        return self._engine

    @property
    def context_length(self) -> int:
        """Tokens one request may use: its slot's share of the context."""
        return self._require_engine().n_ctx_seq

    @property
    def can_chat(self) -> bool:
        return self._chat is not None and self._chat.available

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        model = self._require()
        if not text:
            bos = model.token_bos()
            return [bos] if add_bos and bos >= 0 else []
        # llama.cpp adds BOS only when the vocabulary asks for it (add_bos_token).
        return list(model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

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
        engine = self._require_engine()
        stream = BatchStream(engine, prompt_tokens, params)
        engine.submit(stream)
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


def _quiet_backend(llama_cpp: Any) -> None:
    """llama.cpp's backend initialised and its log quiet, as Llama(verbose=False) leaves
    them (this backend builds its context itself, without a Llama object)."""
    from llama_cpp._logger import set_verbose
    from llama_cpp._utils import suppress_stdout_stderr

    set_verbose(False)
    with suppress_stdout_stderr(disable=False):
        llama_cpp.llama_backend_init()


def _context_params(
    llama_cpp: Any, s: LlamaSettings, n_ctx_seq: int, parallel: int, n_batch: int
) -> Any:
    """Llama's context parameters (as Llama(...) sets them from its defaults), with one
    KV-cache stream per slot: each sequence gets n_ctx_seq cells of its own."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx_seq * parallel
    p.n_batch = n_batch
    p.n_ubatch = min(n_batch, 512)
    p.n_threads = p.n_threads_batch = s.n_threads
    p.n_seq_max = parallel
    p.kv_unified = False
    # A prefix cut from a sliding-window model's cache is only valid with the full-size
    # SWA cache (llama-server keeps checkpoints instead).
    p.swa_full = s.prompt_cache
    p.rope_scaling_type = llama_cpp.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
    p.yarn_ext_factor, p.yarn_attn_factor = -1.0, 1.0
    p.yarn_beta_fast, p.yarn_beta_slow = 32.0, 1.0
    p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.embeddings = False
    return p
