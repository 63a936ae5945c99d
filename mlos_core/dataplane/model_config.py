# SPDX-License-Identifier: Apache-2.0
"""Triton's configuration override on load: `load_model(name, config=<JSON>)` loads the
model with that configuration instead of the one in its directory (for this load only;
the repository is not changed, and a later load without a config reads it again).

The JSON may use Triton's field names or MLOS's own config keys (config.yaml); both become
MLOS's model config. Everything is checked before anything is loaded, and the declared
inputs and outputs are checked against the loaded model before it replaces the serving
one, so a bad override is a 400 / INVALID_ARGUMENT and the model keeps serving as it did.

    name                          must be the model's name
    backend | platform            the backend (Triton's "onnxruntime_onnx" is onnxruntime)
    default_model_filename        the file to load in each version directory
    max_batch_size                > 0: requests whose first dimension is larger are refused
    input | output                [{name, data_type: TYPE_FP32, dims}] checked against the
                                  model (dims exclude the batch dimension when
                                  max_batch_size > 0)
    version_policy                {"latest": {"num_versions": 1}} | {"all": {}}, or MLOS's
                                  "latest" | "all"
    instance_group                [{count, kind}]: kind GPU asks the GPU manager for a lease;
                                  count is checked, not copies (one session serves every
                                  inference thread)
    parameters                    {"intra_op_thread_count": {"string_value": "2"}} (Triton's
                                  ONNX Runtime backend's name for MLOS's intra_op_threads)
    intra_op_threads, gpu, gpu_memory_mb   MLOS's own keys
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..backends.base import Backend, TensorSpec
from ..errors import InvalidInputError

_PLATFORMS = {"onnxruntime_onnx": "onnxruntime"}
_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU")
_MAX_DIM = (1 << 31) - 1  # Triton's max_batch_size is an int32; dims beyond it serve none
#: Triton ONNX Runtime backend parameter -> MLOS config key.
_PARAMETERS = {"intra_op_thread_count": "intra_op_threads"}
_FIELDS = ("name", "backend", "platform", "default_model_filename", "max_batch_size",
           "input", "output", "version_policy", "instance_group", "parameters",
           "intra_op_threads", "gpu", "gpu_memory_mb")


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(f"config override: {message}")


def _positive_int(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # Triton's JSON writes 64-bit integers as strings
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f" to {high}" if high is not None else ""
        raise _bad(f"{what} must be an integer from {low}{bound}, not {value!r}")
    return value


def _tensors(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad(f"{what!r} must be a list of {{name, data_type, dims}}")
    tensors = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"each {what!r} entry needs a string 'name'")
        data_type = item.get("data_type", "")
        if not isinstance(data_type, str) or not data_type.startswith("TYPE_"):
            raise _bad(f"{what} {item['name']!r}: data_type must be like 'TYPE_FP32'")
        dims = item.get("dims")
        if not isinstance(dims, list):
            raise _bad(f"{what} {item['name']!r}: 'dims' must be a list of integers")
        dims = [_positive_int(d, f"{what} {item['name']!r} dims", -1, _MAX_DIM) for d in dims]
        unknown = set(item) - {"name", "data_type", "dims"}
        if unknown:
            raise _bad(f"{what} {item['name']!r}: unsupported fields {sorted(unknown)}")
        tensors.append({"name": item["name"], "data_type": data_type, "dims": dims})
    return tensors


def parse_override(text: Any, model: str) -> dict[str, Any]:
    """The MLOS model config an override asks for (InvalidInputError when it is bad)."""
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise _bad("'config' must be a string holding a JSON model configuration")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("the model configuration must be a JSON object")
    unknown = set(doc) - set(_FIELDS)
    if unknown:
        raise _bad(f"unsupported fields {sorted(unknown)}; MLOS honours {list(_FIELDS)}")
    if "name" in doc and doc["name"] != model:
        raise _bad(f"name {doc['name']!r} is not the model being loaded ({model!r})")
    config: dict[str, Any] = {}
    backend = doc.get("backend") or doc.get("platform")
    if backend is not None:
        if not isinstance(backend, str):
            raise _bad("'backend' and 'platform' must be strings")
        config["backend"] = _PLATFORMS.get(backend, backend)
    if "default_model_filename" in doc:
        if not isinstance(doc["default_model_filename"], str):
            raise _bad("'default_model_filename' must be a string")
        config["default_model_filename"] = doc["default_model_filename"]
    if "max_batch_size" in doc:
        config["max_batch_size"] = _positive_int(doc["max_batch_size"], "max_batch_size", 0,
                                                 _MAX_DIM)
    for key in ("input", "output"):
        if key in doc:
            config[key] = _tensors(doc[key], key)
    if "version_policy" in doc:
        config["version_policy"] = _version_policy(doc["version_policy"])
    if "instance_group" in doc:
        config["instance_group"] = _instance_groups(doc["instance_group"])
    cpus = os.cpu_count() or 1
    threads = doc.get("intra_op_threads")
    params = doc.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise _bad("'parameters' must be an object of {\"string_value\": ...}")
        for key, value in params.items():
            if key not in _PARAMETERS:
                raise _bad(f"unsupported parameter {key!r}; parameters: {sorted(_PARAMETERS)}")
            raw = value.get("string_value") if isinstance(value, dict) else None
            if not isinstance(raw, str):
                raise _bad(f"parameter {key!r} must be {{\"string_value\": \"...\"}}")
            threads = raw
    if threads is not None:
        config["intra_op_threads"] = _positive_int(threads, "intra_op_threads", 1, cpus)
    if "gpu" in doc:
        if not isinstance(doc["gpu"], bool):
            raise _bad("'gpu' must be a boolean")
        config["gpu"] = doc["gpu"]
    if "gpu_memory_mb" in doc:
        config["gpu_memory_mb"] = _positive_int(doc["gpu_memory_mb"], "gpu_memory_mb", 1,
                                                1 << 30)
    return config


def _version_policy(value: Any) -> str:
    if value in ("latest", "all"):
        return str(value)
    if isinstance(value, dict) and value == {"all": {}}:
        return "all"
    if isinstance(value, dict) and set(value) == {"latest"} and isinstance(value["latest"], dict):
        count = value["latest"].get("num_versions", 1)
        if _positive_int(count, "version_policy latest num_versions", 1) == 1:
            return "latest"
    raise _bad(f"version_policy {value!r}: MLOS serves {{\"latest\": {{\"num_versions\": 1}}}}"
               " or {\"all\": {}}")


def _instance_groups(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("'instance_group' must be a list of {count, kind}")
    groups = []
    for group in value:
        if not isinstance(group, dict) or set(group) - {"count", "kind", "gpus", "name"}:
            raise _bad("each instance_group entry may have count, kind, gpus, name")
        kind = group.get("kind", "KIND_AUTO")
        if not isinstance(kind, str) or kind not in _KINDS:
            raise _bad(f"instance_group kind {kind!r}; kinds: {list(_KINDS)}")
        entry: dict[str, Any] = {
            "count": _positive_int(group.get("count", 1), "instance_group count", 1, 1 << 16),
            "kind": kind}
        if "name" in group:
            if not isinstance(group["name"], str):
                raise _bad("instance_group name must be a string")
            entry["name"] = group["name"]
        if "gpus" in group:
            gpus = group["gpus"]
            if not isinstance(gpus, list):
                raise _bad("instance_group gpus must be a list of device numbers")
            entry["gpus"] = [_positive_int(g, "instance_group gpus", 0, 1 << 16) for g in gpus]
        groups.append(entry)
    return groups


def config_type(datatype: str) -> str:
    """A tensor datatype as Triton's model configuration names it (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else "TYPE_" + datatype


def check_declared(config: dict[str, Any], backend: Backend, model: str) -> None:
    """The override's inputs and outputs must be the model's: same names and datatypes,
    dims compatible (-1 matches any size). Declared input dims narrower than the model's
    (16 where the model says -1) are kept in the backend's config as `declared_shapes`,
    which requests are then checked against."""
    batch = [-1] if config.get("max_batch_size", 0) > 0 else []
    declared_shapes: dict[str, tuple[int, ...]] = {}
    for key, specs in (("input", backend.inputs), ("output", backend.outputs)):
        actual: dict[str, TensorSpec] = {s.name: s for s in specs}
        for declared in config.get(key, ()):
            spec = actual.get(declared["name"])
            if spec is None:
                raise _bad(f"model {model!r} has no {key} {declared['name']!r}; "
                           f"{key}s: {sorted(actual)}")
            if declared["data_type"] != config_type(spec.datatype):
                raise _bad(f"{key} {spec.name!r} is {config_type(spec.datatype)[5:]}, not "
                           f"{declared['data_type'][5:]}")
            dims = batch + declared["dims"]
            if spec.shape and (len(dims) != len(spec.shape) or any(
                    a != -1 and b != -1 and a != b for a, b in zip(dims, spec.shape,
                                                                   strict=True))):
                raise _bad(f"{key} {spec.name!r}: dims {dims} (with the batch dimension) do "
                           f"not fit the model's {list(spec.shape)}")
            if key == "input" and spec.shape:
                declared_shapes[spec.name] = tuple(
                    b if a == -1 else a for a, b in zip(spec.shape, dims, strict=True))
    if declared_shapes:
        backend.source.config["declared_shapes"] = declared_shapes


def input_shape(backend: Backend, spec: TensorSpec) -> tuple[int, ...]:
    """The shape requests for an input must have: the model's, narrowed by an override."""
    declared = backend.source.config.get("declared_shapes")
    return declared.get(spec.name, spec.shape) if declared else spec.shape
