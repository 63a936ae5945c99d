# SPDX-License-Identifier: Apache-2.0
"""The built-in ONNX Runtime backend (.onnx files)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

# Imported with the plugin, not in load(): initialising ONNX Runtime starts a process-wide
# thread of its own, which must not pass for a model's intra-op thread (the scheduler
# registers the threads a load starts for that model; see mlos_core/kernel/native_threads.py).
import onnxruntime as ort

from ..errors import InvalidInputError, ModelLoadError, ModelNotReadyError
from ..tensors import DTYPES, element_count
from .base import Backend, ModelSource, TensorSpec, thread_count

_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def _as_ort(array: np.ndarray, name: str) -> np.ndarray:
    """BYTES tensors arrive as `bytes` elements, but ONNX Runtime's Python binding turns any
    non-str element into text with str() ("abc" would reach the model as "b'abc'"): its
    string tensors hold UTF-8 text, so the elements are decoded here, strictly."""
    if array.dtype != object:
        return array
    try:
        text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"input {name!r}: a BYTES element is not UTF-8 ({exc.reason} at byte {exc.start});"
            " ONNX Runtime string tensors hold UTF-8 text") from None
    out = np.empty(len(text), dtype=object)
    out[:] = text
    return out.reshape(array.shape)


class OnnxRuntimeBackend(Backend):
    """One InferenceSession per model version, reused for every request.

    Parallelism comes from the service's inference thread pool (one request per thread);
    each session therefore uses few intra-op threads and no spinning, which keeps latency
    steady when several requests run at once. `config.yaml` may set `intra_op_threads`.
    """

    name: ClassVar[str] = "onnxruntime"
    formats: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, source: ModelSource) -> None:
        super().__init__(source)
        self._session: Any = None
        self.provider = "CPUExecutionProvider"
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    def load(self) -> None:
        file = self.source.model_file or next(self.source.path.glob("*.onnx"), None)
        if file is None:
            raise ModelLoadError(f"{self.source.path}: no .onnx file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count(self.source.config, "intra_op_threads", 1)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(file), sess_options=options, providers=self._providers(ort)
            )
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            raise ModelLoadError(f"{file.name}: ONNX Runtime cannot load it: {exc}") from exc
        self._inputs = [_spec(a) for a in session.get_inputs()]
        self._outputs = [_spec(a) for a in session.get_outputs()]
        self._session = session

    def _providers(self, ort: Any) -> list[Any]:
        """CPU, unless the GPU manager leased this model a GPU (config["gpu_lease"]): then
        CUDA on the leased device with the leased memory as its limit, when this ONNX
        Runtime has CUDA (else the CPU, and /health says which ran)."""
        lease = self.source.config.get("gpu_lease") or {}
        self.provider = "CPUExecutionProvider"
        if lease.get("device") is not None and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            self.provider = "CUDAExecutionProvider"
            return [("CUDAExecutionProvider", {"device_id": int(lease["device"]),
                                               "gpu_mem_limit": int(lease["memory_limit"])}),
                    "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    @property
    def ready(self) -> bool:
        return self._session is not None

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise ModelNotReadyError(f"model {self.source.name!r} is not loaded")
        names = output_names or [o.name for o in self._outputs]
        inputs = {name: _as_ort(array, name) for name, array in inputs.items()}
        try:
            results = session.run(names, inputs)
        except Exception as exc:  # bad values the model itself rejects (e.g. index range)
            raise InvalidInputError(f"the model rejected the input: {exc}") from exc
        return dict(zip(names, results, strict=True))

    def output_shapes(self, inputs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]] | None:
        """Output shapes known before running: every dimension fixed or named by a symbolic
        dimension that an input also uses (ONNX: same name, same size)."""
        if self._session is None:
            return None
        sizes: dict[str, int] = {}
        for arg in self._session.get_inputs():
            array = inputs.get(arg.name)
            if array is None or len(arg.shape) != array.ndim:
                return None
            for dim, size in zip(arg.shape, array.shape, strict=True):
                if isinstance(dim, str):
                    sizes[dim] = size
        shapes = {}
        for arg in self._session.get_outputs():
            shape = []
            for dim in arg.shape:
                if isinstance(dim, int) and dim >= 0:
                    shape.append(dim)
                elif isinstance(dim, str) and dim in sizes:
                    shape.append(sizes[dim])
                else:
                    return None
            shapes[arg.name] = tuple(shape)
        return shapes

    def infer_into(
        self, inputs: dict[str, np.ndarray], targets: dict[str, memoryview]
    ) -> dict[str, np.ndarray] | None:
        session = self._session
        if session is None:
            return None
        shapes = self.output_shapes(inputs)
        if shapes is None:
            return None
        if any(array.dtype.kind not in "biuf" for array in inputs.values()):
            return None  # ONNX Runtime binds string tensors only through run()
        kinds = {spec.name: spec.datatype for spec in self._outputs}
        binding = session.io_binding()
        results = {}
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            if array.size:
                # By address: ONNX Runtime reads the request's own memory (a shared-memory
                # region, a pool buffer, the request body) without copying it.
                binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape),
                                   array.ctypes.data)
            else:
                binding.bind_cpu_input(name, array)
        for name, target in targets.items():
            dtype = DTYPES.get(kinds.get(name, ""))
            if dtype is None or dtype.kind == "O" or name not in shapes:
                return None
            count = element_count(shapes[name])
            if count * dtype.itemsize > len(target):
                return None
            out = np.frombuffer(target, dtype=dtype, count=count).reshape(shapes[name])
            binding.bind_output(name, "cpu", 0, dtype, list(out.shape), out.ctypes.data)
            results[name] = out
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:  # bad values the model itself rejects
            raise InvalidInputError(f"the model rejected the input: {exc}") from exc
        return results

    def unload(self) -> None:
        self._session = None
