# SPDX-License-Identifier: Apache-2.0
"""Optional backend capabilities: text generation and embeddings.

A backend that serves language models implements `TextGenerator` (and `Embedder` when the
model can embed) besides the `Backend` contract. These interfaces are transport-neutral:
the OpenAI router and the upstream MLOS inference route both drive them, and neither
FastAPI nor asyncio appears here. Generation is a blocking iterator of text chunks; the
protocol layer runs it in a thread, frames it (SSE or JSON) and cancels it when the client
goes away.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelNotReadyError, ServerBusyError
from .base import CAP_EMBEDDINGS, CAP_TEXT_GENERATION

__all__ = ["CAP_EMBEDDINGS", "CAP_TEXT_GENERATION"]  # re-exported for LLM backends

#: Chat roles the service accepts; a template may restrict them further.
CHAT_ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings, OpenAI semantics: temperature 0 is greedy; `max_tokens` None means
    'until the context is full'."""

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class ChatPrompt:
    """A chat conversation rendered to the model's prompt text."""

    text: str
    #: Extra stop strings the chat format implies (end-of-turn markers).
    stop: tuple[str, ...] = ()
    #: Whether the rendered text already starts with the BOS token.
    has_bos: bool = False


@dataclass
class GenerationResult:
    """Filled in while a stream runs; final once the stream is exhausted."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: "stop" (end of sequence or a stop string), "length" (max_tokens or context full),
    #: "cancelled" (the client went away); None while running.
    finish_reason: str | None = None
    #: time.perf_counter() when the model produced its first token (None before).
    first_token_at: float | None = None
    #: Prompt tokens whose KV cache an earlier request left (not evaluated again).
    cached_tokens: int = 0


class TextStream(ABC):
    """One admitted generation request. Iterating it (in a worker thread) waits for the
    model's context, then yields text chunks; `cancel()` may be called from any thread and
    frees the context within one token."""

    def __init__(self) -> None:
        self.result = GenerationResult()
        self.cancelled = threading.Event()

    @abstractmethod
    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class TextGenerator(ABC):
    """A model that continues text. Implemented by LLM backends next to `Backend`."""

    @property
    @abstractmethod
    def context_length(self) -> int:
        """Tokens the context holds: prompt plus completion must fit."""

    @abstractmethod
    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Prompt text to token ids (special tokens in the text are parsed)."""

    @abstractmethod
    def chat_prompt(self, messages: list[dict[str, Any]]) -> ChatPrompt:
        """Render chat messages with the model's chat template or configured chat format.
        Raises UnsupportedError naming the setting when the model has neither, and
        InvalidInputError when the template rejects the conversation."""

    def tensor_params(self) -> GenerationParams:
        """How the tensor view (a `text_input` BYTES tensor of prompts over KServe or the
        upstream MLOS route) completes each prompt: greedy, a model-configured length."""
        return GenerationParams(max_tokens=128, temperature=0.0)

    @abstractmethod
    def start(self, prompt_tokens: list[int], params: GenerationParams) -> TextStream:
        """Admit a request to the model's queue and return its stream. Raises
        ServerBusyError at once when the queue is full, InvalidInputError when the prompt
        does not fit the context."""


class Embedder(ABC):
    """A model that maps texts to vectors."""

    @abstractmethod
    def embed(self, texts: list[str]) -> EmbeddingResult:
        """Blocking; raises ServerBusyError when the embedding queue is full."""


@dataclass(eq=False)
class _Ticket:
    cancelled: threading.Event = field(default_factory=threading.Event)


class ContextQueue:
    """A fair (FIFO) bounded queue in front of one model context, which serves `slots`
    requests at a time (the first `slots` tickets in line run). `max_waiting` requests may
    wait behind the running ones; more get ServerBusyError (HTTP 503) at admission, before
    any response is started."""

    def __init__(self, max_waiting: int, slots: int = 1) -> None:
        self.max_waiting = max(0, max_waiting)
        self.slots = max(1, slots)
        self.cond = threading.Condition()
        self._line: deque[_Ticket] = deque()
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests admitted and not finished (running plus waiting)."""
        return len(self._line)

    def admit(self, cancelled: threading.Event | None = None) -> _Ticket:
        with self.cond:
            if self._closed:
                raise ModelNotReadyError("the model is being unloaded; retry later")
            if len(self._line) >= self.slots + self.max_waiting:
                raise ServerBusyError(
                    f"the model is busy: {len(self._line) - self.slots} requests already "
                    f"wait for it (queue_size {self.max_waiting}); retry later"
                )
            ticket = _Ticket(cancelled or threading.Event())
            self._line.append(ticket)
            self.cond.notify_all()
            return ticket

    def front(self) -> list[_Ticket]:
        """The tickets whose turn it is (at most `slots`)."""
        with self.cond:
            return list(self._line)[: self.slots]

    def acquire(self, ticket: _Ticket) -> bool:
        """Wait for the ticket's turn. False (and the ticket leaves the line) if it was
        cancelled first."""
        with self.cond:
            while True:
                if ticket.cancelled.is_set():
                    self._remove(ticket)
                    return False
                if ticket in list(self._line)[: self.slots]:
                    return True
                # cancel() from another thread calls wake(); the timeout is a safety net.
                self.cond.wait(0.5)

    def release(self, ticket: _Ticket) -> None:
        with self.cond:
            self._remove(ticket)

    def close(self, timeout: float) -> bool:
        """Refuse new requests, cancel every admitted one and wait until the line is empty
        (the model is about to be unloaded). False if one still ran at the timeout."""
        with self.cond:
            self._closed = True
            for ticket in self._line:
                ticket.cancelled.set()
            self.cond.notify_all()
            return self.cond.wait_for(lambda: not self._line, timeout)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _remove(self, ticket: _Ticket) -> None:
        if ticket in self._line:
            self._line.remove(ticket)
            self.cond.notify_all()
