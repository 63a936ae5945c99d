# SPDX-License-Identifier: Apache-2.0
"""Continuous batching for the llama.cpp backend: one engine thread per model decodes
every running request in one `llama_decode` batch per step.

A model has `parallel` slots. Each slot is one llama.cpp sequence (seq id = slot index)
with its own part of the KV cache: the context is created with n_ctx = context_size x
parallel and a non-unified KV cache, so every request still gets the whole
`context_size` it was checked against (as `llama-server -c N*np -np np` does).

A step: requests whose turn has come (the ContextQueue's first `parallel` tickets) join
free slots; cancelled ones leave; each running request adds either its next prompt piece
(prompt processing shares a budget of batch_size tokens per step) or the token it sampled
last; one decode; then each request that has logits samples its next token with its own
sampler chain (the same chain llama-cpp-python's Llama builds, so seeds and the sampling
parameters mean what they meant; plain greedy requests take the arg max) and checks end
of sequence, stop strings and max_tokens on its own. Leaving idle, the first step waits
a moment for requests sent together with the first (JOIN_GAP_S). Requests join and leave
between steps: a cancelled stream's slot serves the next waiting request in the very next
step.

Prompt reuse (`prompt_cache`): a slot keeps the tokens of its last request in the KV
cache; a new request goes to the free slot sharing the longest prefix with its prompt and
starts decoding after the shared part (llama-server's cache_prompt). The full-size SWA
cache is then used, so a cut prefix stays valid for sliding-window models.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .capabilities import ContextQueue, GenerationParams, TextStream, _Ticket

log = logging.getLogger(__name__)

_END = object()
#: llama-cpp-python's Llama penalises the last 64 tokens (last_n_tokens_size).
PENALTY_LAST_N = 64


#: From idle, the first step waits for requests submitted together with the first one:
#: while another comes within JOIN_GAP_S, for at most JOIN_MAX_S. Clients that send at
#: once reach the engine 1-5 ms apart through the HTTP front (measured on 2 cores); a
#: request that misses the first step waits that whole prompt step (170 ms for a short
#: gemma3 prompt on one thread) before its own prompt is even read.
JOIN_GAP_S = 0.005
JOIN_MAX_S = 0.025

#: The KV cache `parallel: 0` may give a model in all (tokens): slots x context_size.
AUTO_KV_TOKENS = 16384


def auto_parallel(context_size: int) -> int:
    """Slots when the config says 0: one per 512 tokens of context, at most 4 (more rarely
    pays on a CPU), and no more than AUTO_KV_TOKENS of KV cache in all (a model served at
    its 32k training context gets one slot, not four times that memory)."""
    return max(1, min(4, context_size // 512, AUTO_KV_TOKENS // max(1, context_size)))


def held_back(text: bytearray, stops: list[bytes]) -> int:
    """Bytes at the end of `text` that could begin a stop string: not sent yet."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchStream(TextStream):
    """One request's stream: the engine thread produces its chunks, the consumer (the data
    plane's worker thread) iterates them."""

    def __init__(self, engine: BatchEngine, prompt: list[int], params: GenerationParams):
        super().__init__()
        self.engine = engine
        self.prompt = list(prompt)
        self.params = params
        self.result.prompt_tokens = len(prompt)
        self.chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.ticket: _Ticket | None = None

    def cancel(self) -> None:
        super().cancel()
        self.engine.wake()

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self.chunks.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


@dataclass(eq=False)
class _Running:
    """A request in a slot."""

    stream: BatchStream
    slot: int
    sampler: Any  # None: greedy, the arg max of the logits (see BatchEngine._sampler)
    max_tokens: int
    pending: list[int]  # prompt tokens still to decode
    stops: list[bytes]
    longest_stop: int
    text: bytearray = field(default_factory=bytearray)
    sent: int = 0
    decoder: Any = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore")
    )
    next_token: int | None = None  # sampled, to decode in the next step
    batch_index: int = -1  # where its logits are in this step's batch (-1: none)


@dataclass
class _Slot:
    cached: list[int] = field(default_factory=list)  # tokens in this sequence's KV cache
    used_at: int = 0  # the step it was last given out (prompt cache: the least recently used goes)


@dataclass
class EngineJournal:
    """What the engine did, for tests and diagnostics: steps run, the last events as
    (step, event, prompt_tokens) with event "join" or "leave:<finish_reason>", and the
    last steps' sequence ids in batch order."""

    steps: int = 0
    events: deque[tuple[int, str, int]] = field(default_factory=lambda: deque(maxlen=512))
    batches: deque[tuple[int, ...]] = field(default_factory=lambda: deque(maxlen=512))
    max_batch_sequences: int = 0


class BatchEngine:
    """Owns one llama.cpp context and decodes for every request of one model."""

    def __init__(
        self,
        lib: Any,
        model: Any,
        ctx: Any,
        *,
        slots: int,
        n_batch: int,
        queue_size: int,
        prompt_cache: bool,
        name: str,
        compute_scope: Callable[[], AbstractContextManager[Callable[[], object]]],
    ) -> None:
        self._lib = lib
        self._compute_scope = compute_scope
        self._model = model
        self._ctx = ctx
        self.n_slots = slots
        self.n_batch = n_batch
        self.prompt_cache = prompt_cache
        self.queue = ContextQueue(queue_size, slots=slots)
        self.journal = EngineJournal()
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(ctx.ctx))
        self._mem = lib.llama_get_memory(ctx.ctx)
        self._vocab = model.vocab
        self._n_vocab = int(model.n_vocab())
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._slots = [_Slot() for _ in range(slots)]
        self._waiting: dict[_Ticket, BatchStream] = {}
        self._running: dict[_Ticket, _Running] = {}
        self._stop = False
        self._submitted = 0
        self.join_gap_s, self.join_max_s = JOIN_GAP_S, JOIN_MAX_S
        self._thread = threading.Thread(target=self._loop, name=f"mlos-llm-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Requests in a slot now."""
        return len(self._running)

    # ---- called from request threads -------------------------------------------------
    def submit(self, stream: BatchStream) -> None:
        """Queue a request (ServerBusyError when the slots and the queue are full)."""
        with self.queue.cond:  # in line and known to the engine at once
            ticket = self.queue.admit(stream.cancelled)
            stream.ticket = ticket
            self._waiting[ticket] = stream
            self._submitted += 1

    def wake(self) -> None:
        self.queue.wake()

    def close(self, timeout: float) -> bool:
        """Cancel every request, wait for them to leave, stop the thread, free the batch.
        False if the thread did not stop in time (the context must then stay alive)."""
        self.queue.close(timeout)
        with self.queue.cond:
            self._stop = True
            self.queue.cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return False
        for running in self._running.values():
            self._free_sampler(running)
        self._running.clear()
        self._lib.llama_batch_free(self._batch)
        return True

    # ---- the engine thread -----------------------------------------------------------
    def _loop(self) -> None:
        # This thread decodes for every request: it (and the OpenMP team llama.cpp starts
        # at its first decode) is what the kernel scheduler must see, for the model's life.
        with self._compute_scope() as first_step_done:
            self._decode_until_stopped(first_step_done)

    def _decode_until_stopped(self, first_step_done: Callable[[], object]) -> None:
        step_done: Callable[[], object] | None = first_step_done
        while True:
            with self.queue.cond:
                while True:
                    # Cancelled requests leave before the waiting ones take their turn,
                    # so a freed slot is decoding for the next request in this step.
                    self._reap()
                    idle = not self._running
                    self._admit()
                    if self._running:
                        if idle:
                            self._gather()
                        break
                    if self._stop:
                        return
                    self.queue.cond.wait(0.5)
            try:
                self._step()
                if step_done is not None and self.journal.steps:
                    step_done()  # llama.cpp's threads for this one exist now
                    step_done = None
            except Exception as exc:  # a failed decode fails the requests in it
                log.exception("llama.cpp decode failed")
                for ticket in list(self._running):
                    self._finish(ticket, "error", exc)

    def _reap(self) -> None:
        for ticket, running in list(self._running.items()):
            if running.stream.cancelled.is_set():
                self._finish(ticket, "cancelled")
        for ticket, stream in list(self._waiting.items()):
            if stream.cancelled.is_set():
                del self._waiting[ticket]
                stream.result.finish_reason = "cancelled"
                self.queue.release(ticket)
                stream.chunks.put(_END)

    def _admit(self) -> None:
        """Requests whose turn has come take a free slot (tickets held without a stream
        keep theirs)."""
        for ticket in self.queue.front():
            stream = self._waiting.pop(ticket, None)
            if stream is None:
                continue
            try:
                self._running[ticket] = self._start(stream)
            except Exception as exc:  # this request only
                stream.result.finish_reason = "error"
                self.queue.release(ticket)
                stream.chunks.put(exc)
                stream.chunks.put(_END)
                continue
            self.journal.events.append((self.journal.steps + 1, "join", len(stream.prompt)))

    def _gather(self) -> None:
        """Called with the queue's lock held, leaving idle: let requests submitted
        together with the first join its step (JOIN_GAP_S)."""
        deadline = time.monotonic() + self.join_max_s
        while len(self._running) < self.n_slots:
            wait = min(self.join_gap_s, deadline - time.monotonic())
            if wait <= 0:
                return
            seen = self._submitted
            self.queue.cond.wait(wait)
            if self._submitted == seen:
                return  # none came within the gap
            self._admit()

    def _free_slot(self, prompt: list[int]) -> tuple[int, int]:
        busy = {r.slot for r in self._running.values()}
        free = [i for i in range(self.n_slots) if i not in busy]
        assert free, "more requests running than slots"
        if not self.prompt_cache:
            # The lowest free one: running sequence ids stay consecutive, one ubatch a step.
            return free[0], 0
        shared = {i: common_prefix(self._slots[i].cached, prompt) for i in free}
        best = max(free, key=lambda i: (shared[i], -self._slots[i].used_at))
        return best, shared[best]

    def _start(self, stream: BatchStream) -> _Running:
        lib = self._lib
        prompt, params = stream.prompt, stream.params
        slot_id, reuse = self._free_slot(prompt)
        slot = self._slots[slot_id]
        slot.used_at = self.journal.steps
        # The last prompt token is always decoded again: its logits give the first token.
        reuse = min(reuse, len(prompt) - 1)
        if reuse <= 0 or not lib.llama_memory_seq_rm(self._mem, slot_id, reuse, -1):
            lib.llama_memory_seq_rm(self._mem, slot_id, -1, -1)
            reuse = 0
        slot.cached = prompt[:reuse]
        stream.result.cached_tokens = reuse
        room = self.n_ctx_seq - len(prompt)
        max_tokens = room if not params.max_tokens else min(params.max_tokens, room)
        stops = [s.encode("utf-8") for s in params.stop if s]
        return _Running(
            stream=stream, slot=slot_id, sampler=self._sampler(params), max_tokens=max_tokens,
            pending=prompt[reuse:], stops=stops,
            longest_stop=max((len(s) for s in stops), default=0),
        )

    def _sampler(self, params: GenerationParams) -> Any:
        """The chain Llama._init_sampler builds for the arguments the backend always gave
        Llama.generate (top_k 0, min_p 0, typical_p 1, repeat_penalty 1); None for plain
        greedy decoding. That chain would be penalties that change nothing, then greedy:
        the first highest logit, which numpy's argmax finds in a tenth of the time
        llama_sampler_sample takes to copy a large vocabulary into candidates (1.1 ms
        a token for gemma3's 262k, 4% of a four-sequence step)."""
        lib = self._lib
        if params.temperature == 0 and not params.frequency_penalty and \
                not params.presence_penalty:
            return None
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lib.llama_sampler_chain_add
        add(chain, lib.llama_sampler_init_penalties(
            self._n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty,
            params.presence_penalty))
        temp = params.temperature
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        if temp < 0:
            add(chain, lib.llama_sampler_init_dist(seed))
        elif temp == 0:
            add(chain, lib.llama_sampler_init_greedy())
        else:
            add(chain, lib.llama_sampler_init_top_k(0))
            add(chain, lib.llama_sampler_init_typical(1.0, 1))
            add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
            add(chain, lib.llama_sampler_init_min_p(0.0, 1))
            add(chain, lib.llama_sampler_init_temp(temp))
            add(chain, lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _step(self) -> None:
        lib, batch = self._lib, self._batch
        with self.queue.cond:
            entries = list(self._running.values())
        # What each request adds: the token it sampled last, or (in arrival order, within
        # the step's budget of batch_size tokens) its next prompt piece.
        pieces: dict[_Running, list[int]] = {}
        budget = self.n_batch
        for running in entries:
            running.batch_index = -1
            if running.next_token is not None:
                pieces[running] = [running.next_token]
                budget -= 1
        for running in entries:
            if running.next_token is None and running.pending and budget > 0:
                pieces[running] = running.pending[:budget]
                del running.pending[:budget]
                budget -= len(pieces[running])
        # Into the batch in slot (= sequence id) order: with one KV stream per sequence,
        # llama.cpp puts only consecutive, increasing sequence ids in one ubatch, so the
        # arrival order (slots 1, 2, 3, 0, say) would split the step into several decodes.
        order = sorted(pieces, key=lambda r: r.slot)
        n = 0
        for running in order:
            n = self._add(n, running, pieces[running], logits=not running.pending)
        if n == 0:
            return
        batch.n_tokens = n
        self.journal.steps += 1
        self.journal.batches.append(tuple(r.slot for r in order))
        self.journal.max_batch_sequences = max(self.journal.max_batch_sequences, len(pieces))
        status = lib.llama_decode(self._ctx.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        for running in entries:
            if running.next_token is not None:
                running.next_token = None
            elif running.pending:
                continue  # more prompt next step
            if running.batch_index >= 0:
                self._after_logits(running)

    def _add(self, n: int, running: _Running, tokens: list[int], logits: bool) -> int:
        batch = self._batch
        slot = self._slots[running.slot]
        pos = len(slot.cached)
        for i, token in enumerate(tokens):
            j = n + i
            batch.token[j] = token
            batch.pos[j] = pos + i
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = running.slot
            batch.logits[j] = False
        if logits:
            batch.logits[n + len(tokens) - 1] = True
            running.batch_index = n + len(tokens) - 1
        slot.cached.extend(tokens)
        return n + len(tokens)

    def _after_logits(self, running: _Running) -> None:
        """Sample this request's next token and hand its text over; it leaves the batch
        when it is done. An error here fails this request only."""
        ticket = running.stream.ticket
        assert ticket is not None
        try:
            reason = self._sample(running)
        except Exception as exc:
            with self.queue.cond:
                self._finish(ticket, "error", exc)
            return
        if reason is not None:
            with self.queue.cond:
                self._finish(ticket, reason)

    def _sample(self, running: _Running) -> str | None:
        lib = self._lib
        result = running.stream.result
        if running.max_tokens <= 0:
            return "length"
        if running.sampler is None:
            logits = lib.llama_get_logits_ith(self._ctx.ctx, running.batch_index)
            token = int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        else:
            token = int(lib.llama_sampler_sample(running.sampler, self._ctx.ctx,
                                                 running.batch_index))
        if result.first_token_at is None:
            result.first_token_at = time.perf_counter()
        if running.stream.cancelled.is_set():
            return "cancelled"
        if lib.llama_vocab_is_eog(self._vocab, token):
            return "stop"
        result.completion_tokens += 1
        text = running.text
        text += self._piece(token)
        end = len(text)
        if running.stops:
            window = max(0, running.sent - running.longest_stop)
            hits = [i for i in (text.find(s, window) for s in running.stops) if i >= 0]
            if hits:
                del text[min(hits):]
                return "stop"
            end -= held_back(text, running.stops)
        if end > running.sent:
            chunk = running.decoder.decode(bytes(text[running.sent:end]))
            running.sent = end
            if chunk:
                running.stream.chunks.put(chunk)
        if result.completion_tokens >= running.max_tokens:
            return "length"
        running.next_token = token
        return None

    def _free_sampler(self, running: _Running) -> None:
        if running.sampler is not None:
            self._lib.llama_sampler_free(running.sampler)

    def _piece(self, token: int) -> bytes:
        buffer = (ctypes.c_char * 64)()
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = (ctypes.c_char * -n)()
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, False)
        return buffer.raw[:n]

    def _finish(self, ticket: _Ticket, reason: str, error: BaseException | None = None) -> None:
        """Called with the queue's lock held: the request leaves its slot."""
        running = self._running.pop(ticket)
        stream = running.stream
        stream.result.finish_reason = reason
        if error is None and reason != "cancelled":
            tail = running.decoder.decode(bytes(running.text[running.sent:]), final=True)
            if tail:
                stream.chunks.put(tail)
        if error is not None:
            # The KV cache may not hold what `cached` says: that slot starts afresh.
            self._slots[running.slot].cached = []
        self._free_sampler(running)
        self.journal.events.append((self.journal.steps, f"leave:{reason}",
                                    len(stream.prompt)))
        self.queue.release(ticket)
        if error is not None:
            stream.chunks.put(error)
        stream.chunks.put(_END)
