# SPDX-License-Identifier: Apache-2.0
"""Comparing our .proto definitions with the published ones tritonclient ships."""

from __future__ import annotations

from google.protobuf import descriptor_pb2


def proto_fields(descriptor: object) -> dict[str, tuple[int, int, str]]:
    """Every field of a message and of its nested messages, by dotted name: (number,
    wire type, type name without its package)."""
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)  # type: ignore[attr-defined]
    out = {}

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        for field in message.field:
            out[prefix + field.name] = (field.number, field.type, field.type_name.split(".")[-1])
        for nested in message.nested_type:
            walk(nested, f"{prefix}{nested.name}.")

    walk(proto, "")
    return out
