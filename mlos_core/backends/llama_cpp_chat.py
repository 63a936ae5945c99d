# SPDX-License-Identifier: Apache-2.0
"""Chat prompts: OpenAI-style messages rendered to a model's prompt text.

The template comes from, in order: the model config's `chat_template` (Jinja text) or
`chat_format` (a name from CHAT_FORMATS), else the GGUF metadata key
`tokenizer.chat_template`. A model with none of these cannot chat; the error names the
settings that fix it. Templates run in Jinja's immutable sandbox, as Hugging Face
templates expect (trim_blocks, lstrip_blocks, raise_exception, tojson).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidInputError, ModelLoadError, UnsupportedError
from .capabilities import CHAT_ROLES, ChatPrompt

GGUF_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class ChatFormat:
    template: str
    stop: tuple[str, ...] = ()
    #: False: the format has no system turn; system text is prefixed to the next user turn.
    system_role: bool = True


# Written from each model family's published prompt format.
CHAT_FORMATS: dict[str, ChatFormat] = {
    "gemma": ChatFormat(
        "{{ bos_token }}{% for m in messages %}"
        "<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
        "{{ m.content | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
        stop=("<end_of_turn>",),
        system_role=False,
    ),
    "chatml": ChatFormat(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        stop=("<|im_end|>",),
    ),
    "llama-3": ChatFormat(
        "{{ bos_token }}{% for m in messages %}"
        "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
        "{% endfor %}{% if add_generation_prompt %}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        stop=("<|eot_id|>",),
    ),
}


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check roles and flatten content parts to text. Raises InvalidInputError."""
    if not messages:
        raise InvalidInputError("'messages' must hold at least one message")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidInputError(
                f"messages[{i}].role is {role!r}; supported roles: {', '.join(CHAT_ROLES)}"
            )
        content = message.get("content")
        if content is None:
            content = ""
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise InvalidInputError(
                        f"messages[{i}].content: only text parts are supported"
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        elif not isinstance(content, str):
            raise InvalidInputError(f"messages[{i}].content must be a string or text parts")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if all(m["role"] != "user" for m in out):
        raise InvalidInputError("'messages' needs at least one message with role 'user'")
    return out


def _fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For formats without a system turn: prefix system text to the next user message."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending.append(message["content"])
            continue
        if pending and message["role"] == "user":
            message = {**message, "content": "\n\n".join([*pending, message["content"]])}
            pending = []
        out.append(message)
    return out


class ChatRenderer:
    """Renders chat prompts for one model. Built once at load; `render` is thread-safe."""

    def __init__(
        self,
        config: dict[str, Any],
        metadata: dict[str, str],
        bos_token: str,
        eos_token: str,
    ) -> None:
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.source: str | None = None  # what the template came from, for errors and docs
        self.format = ChatFormat("")
        self._error: str | None = None
        self._template: jinja2.Template | None = None
        name = config.get("chat_format")
        if config.get("chat_template"):
            self.format = ChatFormat(str(config["chat_template"]))
            self.source = "model config chat_template"
        elif name:
            if name not in CHAT_FORMATS:
                raise ModelLoadError(
                    f"unknown chat_format {name!r} in the model config; "
                    f"known: {', '.join(sorted(CHAT_FORMATS))}"
                )
            self.format = CHAT_FORMATS[name]
            self.source = f"chat_format {name}"
        elif metadata.get(GGUF_TEMPLATE_KEY):
            self.format = ChatFormat(metadata[GGUF_TEMPLATE_KEY])
            self.source = f"GGUF {GGUF_TEMPLATE_KEY}"
        if self.source is not None:
            try:
                self._template = _environment().from_string(self.format.template)
            except jinja2.TemplateError as exc:
                # The model still completes text; only chat is refused, with this reason.
                self._error = f"its chat template ({self.source}) does not compile: {exc}"

    @property
    def available(self) -> bool:
        return self._template is not None

    def render(self, messages: list[dict[str, Any]]) -> ChatPrompt:
        if self._template is None:
            reason = self._error or (
                f"it has no chat template: the GGUF file has no {GGUF_TEMPLATE_KEY} "
                "metadata and the model config sets neither"
            )
            raise UnsupportedError(
                f"this model cannot answer chat requests: {reason}. Set 'chat_format' "
                f"({', '.join(sorted(CHAT_FORMATS))}) or 'chat_template' in the model's "
                "config, or use /v1/completions"
            )
        messages = normalize_messages(messages)
        if not self.format.system_role:
            messages = _fold_system(messages)
        try:
            text = self._template.render(
                messages=messages,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except jinja2.TemplateError as exc:
            raise InvalidInputError(
                f"the model's chat template ({self.source}) rejected the messages: {exc}"
            ) from exc
        has_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        return ChatPrompt(text=text, stop=self.format.stop, has_bos=has_bos)
