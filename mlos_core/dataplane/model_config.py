# SPDX-License-Identifier: Apache-2.0
"""What a model's config means for serving it: which versions load, the tensors clients
see (dims, reshape, max_batch_size), dynamic batching, and every field MLOS does not
apply, reported once at load.

The config is a dict in Triton's JSON form (from config.pbtxt, mlos_core/repository/
pbtxt.py) or written by hand in config.yaml|json with the same keys; MLOS's own keys
(`version_policy: all`, `intra_op_threads`, ...) are read beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, TensorSpec
from ..errors import ModelLoadError

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
_INPUT_NOT_APPLIED = ("format", "is_shape_tensor", "allow_ragged_batch", "optional",
                      "is_non_linear_format_io")
_OUTPUT_NOT_APPLIED = ("label_filename", "is_shape_tensor", "is_non_linear_format_io")
_BATCHING_NOT_APPLIED = ("preserve_ordering", "priority_levels", "default_priority_level",
                         "default_queue_policy", "priority_queue_policy")
_GROUP_NOT_APPLIED = ("rate_limiter", "gpus", "secondary_devices", "profile", "passive",
                      "host_policy")
#: ONNX Runtime backend parameters (Triton's onnxruntime_backend) -> MLOS config keys.
_PARAMETERS = {"intra_op_thread_count": "intra_op_threads"}
#: Triton platforms -> the MLOS backend plugin serving them.
PLATFORMS = {"onnxruntime_onnx": "onnxruntime"}


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
    """The tensors of one loaded model version as clients see them. `input_reshape` maps
    an input to the shape the model gets (per batch row when batched); `output_reshape`
    an output to the dims clients get."""

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


def _int(value: Any, what: str, low: int = 0) -> int:
    try:
        number = int(value)  # Triton's JSON form writes 64-bit integers as strings
    except (TypeError, ValueError):
        raise ModelLoadError(f"model config {what}: {value!r} is not an integer") from None
    if isinstance(value, bool) or number < low:
        raise ModelLoadError(f"model config {what}: {value!r} is not an integer >= {low}")
    return number


def _dims(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, list):
        raise ModelLoadError(f"model config {what}: expected a list of dimensions")
    return tuple(_int(v, what, -1) for v in values)


def datatype(value: Any) -> str:
    """TYPE_FP32 -> FP32, TYPE_STRING -> BYTES (KServe names pass unchanged)."""
    name = str(value or "")
    name = name.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def select_versions(model: str, config: dict[str, Any], versions: list[str]) -> list[str]:
    """Triton's version policy: the latest (default; `latest {num_versions: N}`), all, or
    `specific {versions: [...]}`. MLOS's `version_policy: all|latest` strings also work."""
    policy = config.get("version_policy", "latest")
    if policy in ("latest", None, {}):
        return versions[-1:]
    if policy == "all" or (isinstance(policy, dict) and "all" in policy):
        return list(versions)
    if isinstance(policy, dict) and "latest" in policy:
        count = _int((policy["latest"] or {}).get("num_versions", 1),
                     "version_policy.latest.num_versions", 1)
        return versions[-count:]
    if isinstance(policy, dict) and "specific" in policy:
        wanted = [str(_int(v, "version_policy.specific.versions", 1))
                  for v in (policy["specific"] or {}).get("versions", [])]
        missing = [v for v in wanted if v not in versions]
        if missing or not wanted:
            raise ModelLoadError(
                f"model {model!r}: version_policy specific {wanted} but the repository has "
                f"versions {versions}")
        return [v for v in versions if v in wanted]
    raise ModelLoadError(f"model {model!r}: unknown version_policy {policy!r} "
                         "(latest, all, or Triton's latest/all/specific)")


def backend_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config a backend gets: Triton's platform and ONNX Runtime parameters mapped to
    MLOS keys (MLOS's own keys win)."""
    out = dict(config)
    platform = out.get("platform")
    if not out.get("backend") and platform in PLATFORMS:
        out["backend"] = PLATFORMS[platform]
    params = out.get("parameters")
    if isinstance(params, dict):
        for key, target in _PARAMETERS.items():
            if key in params and target not in out:
                value = params[key]
                value = value.get("string_value") if isinstance(value, dict) else value
                out[target] = _int(value, f"parameters.{key}", 0)
    return out


def not_applied(config: dict[str, Any]) -> list[str]:
    """Fields of a Triton config that MLOS reads but does not apply."""
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
        if not isinstance(group, dict):
            continue
        found += [f"instance_group[{i}].{n}" for n in _GROUP_NOT_APPLIED if group.get(n)]
        if group.get("kind") in ("KIND_GPU", "KIND_MODEL"):
            found.append(f"instance_group[{i}].kind {group['kind']} (MLOS runs on the CPU "
                         "unless the GPU manager leases a GPU)")
    params = config.get("parameters")
    if isinstance(params, dict):
        found += [f"parameters.{k}" for k in sorted(params) if k not in _PARAMETERS]
    return found


def _specs(model: str, kind: str, entries: Any, actual: list[TensorSpec], batch: int,
           subset_ok: bool) -> tuple[list[TensorSpec], dict[str, tuple[int, ...]],
                                     dict[str, tuple[int, ...]]]:
    """Config inputs (or outputs) checked against the model's own: served specs, the
    shapes the model gets (reshape) and the dims clients get."""
    known = {s.name: s for s in actual}
    if not entries:
        if batch and any(not s.shape or s.shape[0] != -1 for s in actual):
            raise ModelLoadError(
                f"model {model!r}: max_batch_size {batch} needs every {kind} to have a "
                "first dimension of any size (the batch)")
        return list(actual), {}, {}
    if not isinstance(entries, list):
        raise ModelLoadError(f"model {model!r}: config {kind} must be a list")
    served: list[TensorSpec] = []
    to_model: dict[str, tuple[int, ...]] = {}
    to_client: dict[str, tuple[int, ...]] = {}
    for i, entry in enumerate(entries):
        name = str(entry.get("name") or "") if isinstance(entry, dict) else ""
        spec = known.get(name)
        if spec is None or not isinstance(entry, dict):
            raise ModelLoadError(
                f"model {model!r}: config {kind}[{i}] {name!r} is not an {kind} of the "
                f"model; its {kind}s: {sorted(known)}")
        dtype = datatype(entry.get("data_type"))
        if dtype != spec.datatype:
            raise ModelLoadError(
                f"model {model!r}: config {kind} {name!r} is {dtype or 'untyped'} but the "
                f"model's is {spec.datatype}")
        dims = _dims(entry.get("dims", []), f"{kind}[{i}].dims")
        reshape = entry.get("reshape")
        inner = _dims(reshape.get("shape", []), f"{kind}[{i}].reshape.shape") \
            if isinstance(reshape, dict) else dims
        prefix = (-1,) if batch else ()
        model_shape = prefix + inner
        if spec.shape and (len(spec.shape) != len(model_shape) or any(
                m != -1 and c != -1 and m != c for m, c in
                zip(spec.shape, model_shape, strict=True))):
            raise ModelLoadError(
                f"model {model!r}: config {kind} {name!r} gives the model shape "
                f"{list(model_shape)} but the model's is {list(spec.shape)}"
                + (" (max_batch_size > 0 adds the batch dimension)" if batch else ""))
        served.append(TensorSpec(name, spec.datatype, prefix + dims))
        if inner != dims:
            to_model[name], to_client[name] = inner, dims
    missing = set(known) - {s.name for s in served}
    if missing and not subset_ok:
        raise ModelLoadError(f"model {model!r}: the model's {kind}s {sorted(missing)} are "
                             "missing from its config")
    return served, to_model, to_client


def model_io(model: str, config: dict[str, Any], backend: Backend) -> ModelIO:
    """The served tensors and batching of a loaded version; ModelLoadError when the config
    contradicts the model."""
    batch = _int(config.get("max_batch_size", 0), "max_batch_size")
    inputs, in_reshape, _ = _specs(model, "input", config.get("input"), backend.inputs,
                                   batch, False)
    outputs, _, out_reshape = _specs(model, "output", config.get("output"),
                                     backend.outputs, batch, True)
    warnings = not_applied(config)
    groups = [g for g in config.get("instance_group") or [] if isinstance(g, dict)]
    instances = sum(_int(g.get("count", 1), "instance_group.count", 1) for g in groups) or 1
    batching = None
    dynamic = config.get("dynamic_batching")
    if dynamic is not None and dynamic is not False:
        if not batch:
            warnings.append("dynamic_batching (needs max_batch_size > 0)")
        else:
            dynamic = dynamic if isinstance(dynamic, dict) else {}
            preferred = tuple(sorted(
                _int(p, "dynamic_batching.preferred_batch_size", 1)
                for p in dynamic.get("preferred_batch_size", [])))
            if any(p > batch for p in preferred):
                raise ModelLoadError(
                    f"model {model!r}: preferred_batch_size {list(preferred)} exceeds "
                    f"max_batch_size {batch}")
            delay = _int(dynamic.get("max_queue_delay_microseconds", 0),
                         "dynamic_batching.max_queue_delay_microseconds") / 1e6
            batching = Batching(batch, preferred, delay, instances)
    if batching is None and instances > 1:
        warnings.append(f"instance_group count {instances} (without dynamic batching one "
                        "ONNX Runtime session serves every inference thread)")
    return ModelIO(inputs, outputs, batch, in_reshape, out_reshape, batching, warnings)
