# SPDX-License-Identifier: Apache-2.0
"""Triton's config.pbtxt, read as Triton reads it: protobuf text format against the
model-configuration messages (model_config.proto, Triton's names and numbers).

The result is the model config as a dict in Triton's JSON form (what Triton's own
`/v2/models/{m}/config` answers: `max_batch_size`, `input: [{name, data_type, dims,
reshape}]`, `dynamic_batching`, `version_policy`, `instance_group`, `parameters`...), the
same form a config.yaml|json may use; mlos_core/dataplane/model_config.py interprets it
and reports what MLOS does not apply.

A field Triton defines but MLOS does not model (an "elided" message in the .proto, such
as `sequence_batching` or `optimization`) still parses: it is kept in the dict (under its
name, its contents not modelled) and reported as not supported at load. A field Triton
does not define at all, a syntax error or a wrong value type is a malformed config:
ModelLoadError, so that model is unavailable with the reason and the others load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..errors import ModelLoadError
from .generated import model_config_pb2

FILE_NAME = "config.pbtxt"


def parse(text: str, where: str = FILE_NAME) -> dict[str, Any]:
    """config.pbtxt text -> the model config dict (Triton's JSON form)."""
    message = model_config_pb2.ModelConfig()  # type: ignore[attr-defined]
    try:
        _check_fields(text, message.DESCRIPTOR)
        # Unknown fields are allowed only because _check_fields has already refused every
        # one outside an elided message; inside those, the parser skips them.
        text_format.Parse(text, message, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{where}: malformed model configuration: {exc}") from None
    config: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, use_integers_for_enums=False)
    for field in _elided_fields_set(message):
        config.setdefault(field, {})  # an elided message with only unmodelled contents
    return config


def read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable model config: {exc}") from exc
    return parse(text, str(path))


def _elided(descriptor: Descriptor | None) -> bool:
    return descriptor is not None and not descriptor.fields


def _elided_fields_set(message: Any) -> list[str]:
    return [field.name for field, _ in message.ListFields()
            if field.message_type is not None and _elided(field.message_type)
            and not field.message_type.GetOptions().map_entry]


def _check_fields(text: str, root: Descriptor) -> None:
    """Refuses field names the published definitions do not have, wherever they appear
    (text_format with allow_unknown_field would skip them silently). Syntax errors are
    left to text_format.Parse, which names the line and column."""
    tok = text_format.Tokenizer(text.splitlines())

    def message(descriptor: Descriptor | None, path: str, end: str | None) -> None:
        while not tok.AtEnd() and tok.token != end:
            if tok.token in ("[", "{", "<"):  # syntax Parse will report
                return
            name = tok.token
            tok.NextToken()
            field = descriptor.fields_by_name.get(name) if descriptor is not None else None
            if descriptor is not None and not _elided(descriptor) and field is None:
                raise text_format.ParseError(
                    f"{path}{name}: no such field in Triton's model configuration "
                    f"({descriptor.name})")
            sub = field.message_type if field is not None and \
                field.type == FieldDescriptor.TYPE_MESSAGE else None
            if _elided(sub):
                sub = None  # its contents are not modelled: not checked
            tok.TryConsume(":")
            value(sub, f"{path}{name}.")
            if not tok.TryConsume(","):
                tok.TryConsume(";")

    def value(descriptor: Descriptor | None, path: str) -> None:
        if tok.TryConsume("["):
            while not tok.AtEnd() and not tok.TryConsume("]"):
                value(descriptor, path)
                tok.TryConsume(",")
            return
        for opening, closing in (("{", "}"), ("<", ">")):
            if tok.TryConsume(opening):
                message(descriptor, path, closing)
                tok.TryConsume(closing)
                return
        if not tok.AtEnd():
            tok.NextToken()  # a scalar (string, number, enum name)
            while not tok.AtEnd() and tok.token[:1] in ("'", '"'):
                tok.NextToken()  # adjacent strings concatenate

    try:
        message(root, "", None)
    except text_format.ParseError:
        raise
    except Exception:  # noqa: S110  a tokenizer error: Parse reports it with its position
        return
