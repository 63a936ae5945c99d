# SPDX-License-Identifier: Apache-2.0
"""A model's configuration: one representation, Triton's JSON form (the dict config.pbtxt
reads to, mlos_core/repository/pbtxt.py; config.yaml|json write the same keys, plus MLOS's
own), checked and applied here whatever its source. Sources, lowest first, each replacing
the one below key by key (top-level keys):

    config.pbtxt            Triton's file in the model directory
    config.yaml|json        MLOS's file beside it (registry.py layers the two)
    a load override         `load_model(name, config=<JSON>)`: Triton's configuration
                            override, for that load only (parse_override, layered here)

What the config means for serving a model version, all applied at load:

    name                     must be the model's (directory) name
    backend | platform       the backend plugin (Triton's "onnxruntime_onnx": onnxruntime)
    default_model_filename   the file to load in each version directory
    version_policy           Triton's latest {num_versions}, all, specific {versions}; or
                             MLOS's "latest" | "all"
    max_batch_size           > 0: every tensor has a batch dimension first, which the
                             config's dims leave out; larger batches are refused
    input | output           [{name, data_type, dims, reshape}] checked against the model;
                             dims narrower than the model's (4 where it says -1) are served
    dynamic_batching         {preferred_batch_size, max_queue_delay_microseconds}: the
                             batcher (batching.py), with max_batch_size > 0
    instance_group           [{count, kind}]: with dynamic batching, count batch threads;
                             kind KIND_GPU asks the GPU manager for a lease
    parameters               {"intra_op_thread_count": {"string_value": "2"}} (Triton's
                             ONNX Runtime backend's name for intra_op_threads)
    intra_op_threads, gpu, gpu_memory_mb   MLOS's own keys

Every other Triton field is read and reported as not applied (once, at load, as the
repository index's reason); an override, which a client sends and is answered at once,
is refused with the fields it asked for that MLOS would not apply.

A malformed or contradictory repository config makes that model unavailable
(ModelLoadError); a bad override is a 400 / INVALID_ARGUMENT (InvalidInputError) and the
model keeps serving as it did: it is checked before anything loads, and against the
loaded model before that replaces the serving one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, TensorSpec
from ..errors import InvalidInputError, ModelLoadError

#: Triton top-level fields MLOS reads and applies (or reports field by field below).
APPLIED = {
    "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
    "dynamic_batching", "instance_group", "default_model_filename", "parameters",
}
#: Triton top-level fields MLOS does not apply: reported, never silently dropped.
NOT_APPLIED = {
    "runtime", "batch_input", "batch_output", "optimization", "sequence_batching",
    "ensemble_scheduling", "cc_model_filenames", "metric_tags", "model_warmup",
    "model_operations", "model_transaction_policy", "model_repository_agents",
    "response_cache", "model_metrics",
}
#: MLOS's own keys an override may set beside Triton's.
MLOS_KEYS = {"intra_op_threads", "gpu", "gpu_memory_mb"}
_INPUT_NOT_APPLIED = ("format", "is_shape_tensor", "allow_ragged_batch", "optional",
                      "is_non_linear_format_io")
_OUTPUT_NOT_APPLIED = ("label_filename", "is_shape_tensor", "is_non_linear_format_io")
_TENSOR_APPLIED = ("name", "data_type", "dims", "reshape")
_BATCHING_APPLIED = ("preferred_batch_size", "max_queue_delay_microseconds")
_BATCHING_NOT_APPLIED = ("preserve_ordering", "priority_levels", "default_priority_level",
                         "default_queue_policy", "priority_queue_policy")
_GROUP_APPLIED = ("name", "count", "kind")
_GROUP_NOT_APPLIED = ("rate_limiter", "gpus", "secondary_devices", "profile", "passive",
                      "host_policy")
_KINDS = ("KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_MODEL")
#: ONNX Runtime backend parameters (Triton's onnxruntime_backend) -> MLOS config keys.
_PARAMETERS = {"intra_op_thread_count": "intra_op_threads"}
#: Triton platforms -> the MLOS backend plugin serving them, and back.
PLATFORMS = {"onnxruntime_onnx": "onnxruntime"}
PLATFORM_NAMES = {backend: platform for platform, backend in PLATFORMS.items()}
_INT32_MAX = (1 << 31) - 1  # Triton's max_batch_size is an int32; dims beyond serve none
#: Batch threads per model version at most, whatever instance_group counts say.
MAX_BATCH_THREADS = 64


class _Invalid(Exception):
    """A config check failed; the entry points say which source and raise the error
    that source gets (ModelLoadError for the repository, InvalidInputError for an
    override)."""


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of one model version: requests are merged along dim 0 up to
    `max_batch_size` rows (or the largest `preferred` size reached), or after `max_delay_s`
    from the oldest; `instances` batches may run at once."""

    max_batch_size: int
    preferred: tuple[int, ...] = ()
    max_delay_s: float = 0.0
    instances: int = 1


@dataclass
class ModelIO:
    """A config applied to one loaded model version: the tensors clients see, and its
    batching. `input_reshape` maps an input to the shape the model gets (per batch row
    when batched); `output_reshape` an output to the dims clients get. `warnings` are the
    config's fields MLOS does not apply."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int = 0
    input_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_reshape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    batching: Batching | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, backend: Backend) -> ModelIO:
        return cls(list(backend.inputs), list(backend.outputs))


# ---- checks --------------------------------------------------------------------------------
def _int(value: Any, what: str, low: int = 0, high: int = _INT32_MAX) -> int:
    # Triton's JSON form writes 64-bit integers as strings; a bool or a float is no integer.
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if type(value) is not int or not low <= value <= high:
        raise _Invalid(f"{what}: {value!r} is not an integer from {low} to {high}")
    return value


def _dims(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise _Invalid(f"{what}: expected a list of dimensions")
    return tuple(_int(v, what, -1) for v in values)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{what} must be an object")
    return value


def _string(config: dict[str, Any], key: str) -> None:
    if key in config and not isinstance(config[key], str):
        raise _Invalid(f"{key} must be a string")


def _known(entry: dict[str, Any], what: str, *names: tuple[str, ...]) -> None:
    unknown = set(entry) - {n for group in names for n in group}
    if unknown:
        raise _Invalid(f"{what}: unknown fields {sorted(unknown)}")


def datatype(value: Any) -> str:
    """TYPE_FP32 -> FP32, TYPE_STRING -> BYTES (KServe names pass unchanged)."""
    name = str(value or "").removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def config_type(name: str) -> str:
    """A tensor datatype as Triton's model configuration names it (BYTES is TYPE_STRING)."""
    return "TYPE_STRING" if name == "BYTES" else "TYPE_" + name


def _check(config: dict[str, Any], model: str) -> None:
    """The form of every field MLOS reads (what the loaded model says is model_io's)."""
    if "name" in config and config["name"] != model:
        raise _Invalid(f"name {config['name']!r} is not the model being loaded ({model!r})")
    for key in ("backend", "platform", "default_model_filename"):
        _string(config, key)
    _int(config.get("max_batch_size", 0), "max_batch_size")
    for kind in ("input", "output"):
        entries = config.get(kind)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise _Invalid(f"{kind} must be a list of {{name, data_type, dims}}")
        unapplied = _INPUT_NOT_APPLIED if kind == "input" else _OUTPUT_NOT_APPLIED
        for i, entry in enumerate(entries):
            what = f"{kind}[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise _Invalid(f"{what} needs a string 'name'")
            _known(entry, what, _TENSOR_APPLIED, unapplied)
            if not isinstance(entry.get("data_type"), str):
                raise _Invalid(f"{what} {entry['name']!r}: data_type must be like 'TYPE_FP32'")
            _dims(entry.get("dims", []), f"{what}.dims")
            if "reshape" in entry:
                _dims(_object(entry["reshape"], f"{what}.reshape").get("shape", []),
                      f"{what}.reshape.shape")
    _version_policy(config.get("version_policy", "latest"))
    dynamic = config.get("dynamic_batching")
    if isinstance(dynamic, dict):
        _known(dynamic, "dynamic_batching", _BATCHING_APPLIED, _BATCHING_NOT_APPLIED)
        for size in _list(dynamic.get("preferred_batch_size", []),
                          "dynamic_batching.preferred_batch_size"):
            _int(size, "dynamic_batching.preferred_batch_size", 1)
        _int(dynamic.get("max_queue_delay_microseconds", 0),
             "dynamic_batching.max_queue_delay_microseconds", 0, 1 << 62)
    elif dynamic not in (None, True, False):
        raise _Invalid("dynamic_batching must be an object")
    for i, group in enumerate(_list(config.get("instance_group", []), "instance_group")):
        what = f"instance_group[{i}]"
        group = _object(group, what)
        _known(group, what, _GROUP_APPLIED, _GROUP_NOT_APPLIED)
        _int(group.get("count", 1), f"{what}.count", 1, 1 << 16)
        if group.get("kind", "KIND_AUTO") not in _KINDS:
            raise _Invalid(f"{what}.kind {group.get('kind')!r}; kinds: {list(_KINDS)}")
        _string(group, "name")
        if "gpus" in group:
            for gpu in _list(group["gpus"], f"{what}.gpus (a list of device numbers)"):
                _int(gpu, f"{what}.gpus", 0, 1 << 16)
    _threads(config)
    if "gpu" in config and not isinstance(config["gpu"], bool):
        raise _Invalid("gpu must be a boolean")
    if "gpu_memory_mb" in config:
        _int(config["gpu_memory_mb"], "gpu_memory_mb", 1, 1 << 30)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} must be a list")
    return value


def _parameter(value: Any) -> Any:
    """A Triton parameter's value ({"string_value": "2"}; config.yaml may write "2")."""
    return value.get("string_value") if isinstance(value, dict) else value


def _threads(config: dict[str, Any]) -> int | None:
    """intra_op_threads, from MLOS's key or Triton's parameter (0 there is Triton's
    "the backend's default"); bounded by this machine's CPUs, as the backend bounds it."""
    cpus = os.cpu_count() or 1
    params = config.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _Invalid("parameters must be an object of {\"string_value\": ...}")
    if "intra_op_threads" in config:
        return _int(config["intra_op_threads"], "intra_op_threads", 1, cpus)
    if params and "intra_op_thread_count" in params:
        threads = _int(_parameter(params["intra_op_thread_count"]),
                       "parameters.intra_op_thread_count (intra_op_threads)", 0, cpus)
        return threads or None
    return None


def _version_policy(policy: Any) -> None:
    if policy in ("latest", "all", None, {}):
        return
    if isinstance(policy, dict) and len(policy) == 1:
        (kind, value), = policy.items()
        value = value or {}
        if kind == "all" and isinstance(value, dict):
            return
        if kind == "latest" and isinstance(value, dict):
            _int(value.get("num_versions", 1), "version_policy.latest.num_versions", 1)
            return
        if kind == "specific" and isinstance(value, dict):
            for v in _list(value.get("versions", []), "version_policy.specific.versions"):
                _int(v, "version_policy.specific.versions", 1, 1 << 62)
            return
    raise _Invalid(f"unknown version_policy {policy!r} (latest, all, or Triton's "
                   "{latest: {num_versions}}, {all: {}}, {specific: {versions}})")


def not_applied(config: dict[str, Any]) -> list[str]:
    """The fields of a config that MLOS reads but does not apply."""
    found = sorted(k for k in config if k in NOT_APPLIED)
    for kind, names in (("input", _INPUT_NOT_APPLIED), ("output", _OUTPUT_NOT_APPLIED)):
        for i, entry in enumerate(config.get(kind) or []):
            if isinstance(entry, dict):
                found += [f"{kind}[{i}].{n}" for n in names
                          if entry.get(n) not in (None, False, "", "FORMAT_NONE")]
    batching = config.get("dynamic_batching")
    if isinstance(batching, dict):
        found += [f"dynamic_batching.{n}" for n in _BATCHING_NOT_APPLIED
                  if batching.get(n) not in (None, False, 0, "0", {}, [])]
    for i, group in enumerate(config.get("instance_group") or []):
        if isinstance(group, dict):
            found += [f"instance_group[{i}].{n}" for n in _GROUP_NOT_APPLIED if group.get(n)]
    params = config.get("parameters")
    if isinstance(params, dict):
        found += [f"parameters.{k}" for k in sorted(params) if k not in _PARAMETERS]
    return found


# ---- the sources ---------------------------------------------------------------------------
def repository_config(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The repository's config (config.pbtxt and config.yaml|json, layered), checked;
    ModelLoadError when it is malformed (that model is then unavailable)."""
    try:
        _check(config, model)
    except _Invalid as exc:
        raise ModelLoadError(f"model {model!r}: model config {exc}") from None
    return config


def parse_override(text: Any, model: str, base: dict[str, Any]) -> dict[str, Any]:
    """The config a load with Triton's override uses: the override's JSON layered over the
    repository's config `base`, checked as the repository's is; InvalidInputError when it
    is not JSON, names fields MLOS does not know or apply, or is malformed."""
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
    honoured = APPLIED | MLOS_KEYS
    unsupported = sorted(set(doc) - honoured)
    try:
        _check(doc, model)
        unsupported += not_applied(doc)
    except _Invalid as exc:
        raise _bad(str(exc)) from None
    if unsupported:
        raise _bad(f"unsupported fields {unsupported}; MLOS honours {sorted(honoured)}")
    try:
        return repository_config(layered(base, doc), model)
    except ModelLoadError as exc:
        raise _bad(str(exc)) from None


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(f"config override: {message}")


#: Keys that set the same thing: a higher source's key replaces the lower's alias too.
_ALIASES = {"platform": ("backend",), "backend": ("platform",),
            "intra_op_threads": ("parameters.intra_op_thread_count",),
            "parameters": ("intra_op_threads",)}


def layered(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, key by key (top-level keys); a key of `top` also replaces what
    `base` says under another name (platform and backend, intra_op_threads and Triton's
    intra_op_thread_count parameter)."""
    out = dict(base)
    for key in top:
        for alias in _ALIASES.get(key, ()):
            if alias == "intra_op_threads" and "intra_op_thread_count" not in top[key]:
                continue
            if alias.startswith("parameters."):
                params = dict(out.get("parameters") or {})
                params.pop(alias.split(".", 1)[1], None)
                out["parameters"] = params
            else:
                out.pop(alias, None)
    out.update(top)
    return out


# ---- applying it ---------------------------------------------------------------------------
def select_versions(model: str, config: dict[str, Any], versions: list[str]) -> list[str]:
    """Triton's version policy: the latest (default; `latest {num_versions: N}`), all, or
    `specific {versions: [...]}`. MLOS's `version_policy: all|latest` strings also work."""
    policy = config.get("version_policy", "latest")
    if policy in ("latest", None, {}):
        return versions[-1:]
    if policy == "all" or "all" in policy:
        return list(versions)
    if "latest" in policy:
        return versions[-int((policy["latest"] or {}).get("num_versions", 1)):]
    wanted = [str(int(v)) for v in (policy["specific"] or {}).get("versions", [])]
    missing = [v for v in wanted if v not in versions]
    if missing or not wanted:
        raise ModelLoadError(
            f"model {model!r}: version_policy specific {wanted} but the repository has "
            f"versions {versions}")
    return [v for v in versions if v in wanted]


def backend_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config a backend gets: Triton's platform and ONNX Runtime parameters mapped to
    MLOS's keys."""
    out = dict(config)
    platform = out.get("platform")
    if not out.get("backend") and platform in PLATFORMS:
        out["backend"] = PLATFORMS[platform]
    threads = _threads(config)
    if threads is not None:
        out["intra_op_threads"] = threads
    return out


def _specs(model: str, kind: str, entries: Any, actual: list[TensorSpec], batch: int,
           subset_ok: bool) -> tuple[list[TensorSpec], dict[str, tuple[int, ...]],
                                     dict[str, tuple[int, ...]]]:
    """Config inputs (or outputs) checked against the model's own: served specs, the
    shapes the model gets (reshape) and the dims clients get. `subset_ok`: the config
    may list some (outputs); the others are served as the model has them."""
    known = {s.name: s for s in actual}
    if not entries:
        if batch and any(not s.shape or s.shape[0] != -1 for s in actual):
            raise _Invalid(f"max_batch_size {batch} needs every {kind} to have a first "
                           "dimension of any size (the batch)")
        return list(actual), {}, {}
    served: list[TensorSpec] = []
    to_model: dict[str, tuple[int, ...]] = {}
    to_client: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        name = entry["name"]
        spec = known.get(name)
        if spec is None:
            raise _Invalid(f"model {model!r} has no {kind} {name!r}; its {kind}s: "
                           f"{sorted(known)}")
        dtype = datatype(entry.get("data_type"))
        if dtype != spec.datatype:
            raise _Invalid(f"config {kind} {name!r} is {dtype or 'untyped'} but the model's "
                           f"is {spec.datatype}")
        dims = tuple(int(d) for d in entry.get("dims", []))
        reshape = entry.get("reshape")
        inner = tuple(int(d) for d in reshape.get("shape", [])) \
            if isinstance(reshape, dict) else dims
        prefix = (-1,) if batch else ()
        model_shape = prefix + inner
        if spec.shape and (len(spec.shape) != len(model_shape) or any(
                m != -1 and c != -1 and m != c for m, c in
                zip(spec.shape, model_shape, strict=True))):
            raise _Invalid(
                f"config {kind} {name!r} gives the model shape {list(model_shape)} but the "
                f"model's is {list(spec.shape)}: dims that do not fit"
                + (" (max_batch_size > 0 adds the batch dimension)" if batch else ""))
        # The client's dims, narrowed by the model's fixed sizes where the config says -1.
        client = prefix + dims
        if inner == dims and spec.shape:
            client = tuple(c if c != -1 else m
                           for c, m in zip(client, spec.shape, strict=True))
        served.append(TensorSpec(name, spec.datatype, client))
        if inner != dims:
            to_model[name], to_client[name] = inner, dims
    listed = {s.name for s in served}
    missing = [s for s in actual if s.name not in listed]
    if missing and not subset_ok:
        raise _Invalid(f"the model's {kind}s {sorted(s.name for s in missing)} are missing "
                       "from its config")
    # Outputs the config leaves out are served as the model has them (Triton's
    # auto-completed config has them too).
    return served + missing, to_model, to_client


def model_io(model: str, config: dict[str, Any], backend: Backend) -> ModelIO:
    """A (checked) config applied to a loaded version: its served tensors and batching;
    ModelLoadError when the config contradicts the model."""
    try:
        return _model_io(model, config, backend)
    except _Invalid as exc:
        raise ModelLoadError(f"model {model!r}: {exc}") from None


def _model_io(model: str, config: dict[str, Any], backend: Backend) -> ModelIO:
    batch = _int(config.get("max_batch_size", 0), "max_batch_size")
    inputs, in_reshape, _ = _specs(model, "input", config.get("input"), backend.inputs,
                                   batch, False)
    outputs, _, out_reshape = _specs(model, "output", config.get("output"),
                                     backend.outputs, batch, True)
    warnings = not_applied(config)
    groups = [g for g in config.get("instance_group") or [] if isinstance(g, dict)]
    for i, group in enumerate(groups):
        if group.get("kind") in ("KIND_GPU", "KIND_MODEL"):
            warnings.append(f"instance_group[{i}].kind {group['kind']} (MLOS runs on the "
                            "CPU unless the GPU manager leases a GPU)")
    instances = sum(int(g.get("count", 1)) for g in groups) or 1
    batching = None
    dynamic = config.get("dynamic_batching")
    if dynamic is not None and dynamic is not False:
        if not batch:
            warnings.append("dynamic_batching (needs max_batch_size > 0)")
        else:
            dynamic = dynamic if isinstance(dynamic, dict) else {}
            preferred = tuple(sorted(int(p) for p in dynamic.get("preferred_batch_size", [])))
            if any(p > batch for p in preferred):
                raise _Invalid(f"preferred_batch_size {list(preferred)} exceeds "
                               f"max_batch_size {batch}")
            delay = int(dynamic.get("max_queue_delay_microseconds", 0)) / 1e6
            if instances > MAX_BATCH_THREADS:
                warnings.append(f"instance_group count {instances} (MLOS runs at most "
                                f"{MAX_BATCH_THREADS} batch threads per model version)")
            batching = Batching(batch, preferred, delay, min(instances, MAX_BATCH_THREADS))
    if batching is None and instances > 1:
        warnings.append(f"instance_group count {instances} (without dynamic batching one "
                        "ONNX Runtime session serves every inference thread)")
    return ModelIO(inputs, outputs, batch, in_reshape, out_reshape, batching, warnings)


# ---- the answer ----------------------------------------------------------------------------
def triton_config(name: str, backend: Backend, io: ModelIO) -> dict[str, Any]:
    """A loaded version's configuration in Triton's JSON form, as `/v2/models/{m}/config`
    and gRPC ModelConfig answer it: the tensors as served (dims without the batch
    dimension when max_batch_size > 0, reshape as configured) and the config's other
    applied fields, normalised to Triton's messages."""
    config = backend.source.config
    lead = 1 if io.max_batch_size else 0

    def tensors(kind: str, items: list[TensorSpec]) -> list[dict[str, Any]]:
        reshapes = {e["name"]: e["reshape"] for e in config.get(kind) or []
                    if isinstance(e.get("reshape"), dict)}
        out = []
        for t in items:
            entry: dict[str, Any] = {"name": t.name, "data_type": config_type(t.datatype),
                                     "dims": list(t.shape[lead:])}
            if t.name in reshapes:
                entry["reshape"] = {"shape": [int(d) for d in
                                              reshapes[t.name].get("shape", [])]}
            out.append(entry)
        return out

    doc: dict[str, Any] = {
        "name": name,
        "platform": config.get("platform") or PLATFORM_NAMES.get(backend.name, ""),
        "backend": backend.name,
        "version_policy": _policy_message(config.get("version_policy", "latest")),
        "max_batch_size": io.max_batch_size,
        "input": tensors("input", io.inputs),
        "output": tensors("output", io.outputs),
    }
    if io.batching is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(io.batching.preferred),
            "max_queue_delay_microseconds": str(int(round(io.batching.max_delay_s * 1e6))),
        }
    groups = config.get("instance_group")
    if groups:
        doc["instance_group"] = [
            {k: g[k] for k in ("name", "count", "kind", "gpus") if k in g} for g in groups]
    params = config.get("parameters")
    if isinstance(params, dict) and params:
        doc["parameters"] = {k: {"string_value": str(_parameter(v))}
                             for k, v in params.items()}
    if config.get("default_model_filename"):
        doc["default_model_filename"] = config["default_model_filename"]
    return doc


def _policy_message(policy: Any) -> dict[str, Any]:
    if policy == "all":
        return {"all": {}}
    if policy in ("latest", None, {}):
        return {"latest": {"num_versions": 1}}
    return dict(policy)
