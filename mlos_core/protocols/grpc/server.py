# SPDX-License-Identifier: Apache-2.0
"""KServe v2 gRPC (package `inference`, service `GRPCInferenceService`) over the data plane,
with Triton's model repository (and configuration override), statistics, system and CUDA
shared-memory, trace and logging extensions.

The server is grpc.aio on the event loop that serves REST (docs/core.md, "gRPC on the
event loop"): ModelInfer converts the protobuf into the data plane's neutral types and
awaits the same `DataPlane.infer` REST awaits (inline for tiny models, the inference pool
or the batch queue otherwise); the other RPCs answer on the loop as their REST routes do,
and model loads and unloads run on the loop's helper threads."""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from ...dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputRequest,
    ShmRef,
)
from ...dataplane.decoding import TensorBudget
from ...errors import (
    InvalidInputError,
    MLOSError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerBusyError,
    UnauthorizedError,
    UnsupportedError,
)
from ...settings import Settings
from ...tensors import check_shape, from_bytes, from_contents, numpy_dtype, to_bytes
from .generated import inference_pb2 as _pb
from .generated import inference_pb2_grpc as pb_grpc

pb: Any = _pb  # generated message classes are created at import time

GRPC_STATUS: dict[type[MLOSError], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ModelNotReadyError: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.INVALID_ARGUMENT,
    PayloadTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ServerBusyError: grpc.StatusCode.UNAVAILABLE,
    RequestTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnauthorizedError: grpc.StatusCode.UNAUTHENTICATED,
    UnsupportedError: grpc.StatusCode.UNIMPLEMENTED,
}

F = TypeVar("F", bound=Callable[..., Any])


def grpc_status_for(exc: MLOSError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in GRPC_STATUS:
            return GRPC_STATUS[cls]
    return grpc.StatusCode.INVALID_ARGUMENT


def _param_value(param: Any) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def _params(mapping: Any) -> dict[str, Any]:
    if not mapping:  # the common case: no parameters (len of a protobuf map is cheap)
        return {}
    return {key: _param_value(value) for key, value in mapping.items()}


def _shm_ref(params: dict[str, Any], what: str) -> ShmRef | None:
    region = params.get("shared_memory_region")
    if region is None:
        return None
    size = params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or not isinstance(size, int) or not isinstance(offset, int):
        raise InvalidInputError(f"{what}: shared_memory_region needs shared_memory_byte_size")
    return ShmRef(region, offset, size)


def decode_request(request: Any, budget: TensorBudget | None = None) -> InferRequest:
    # Each protobuf field read makes a Python object: every field is read once.
    tensors = request.inputs
    raw = request.raw_input_contents
    if not tensors:
        raise InvalidInputError("the request has no inputs")
    if raw and len(raw) != len(tensors):
        raise InvalidInputError(f"{len(raw)} raw_input_contents for {len(tensors)} inputs")
    inputs = []
    for index, tensor in enumerate(tensors):
        name, datatype = tensor.name, tensor.datatype
        numpy_dtype(datatype)
        shape = check_shape(list(tensor.shape), name)
        if budget is not None:  # the decoding limits, before anything is decoded
            budget.check(name, datatype, shape)
        params = tensor.parameters
        shm = _shm_ref(_params(params), f"input {name!r}") if params else None
        if shm is not None:
            inputs.append(InputTensor(name, datatype, shape, None, shm))
            continue
        if raw:
            array = from_bytes(raw[index], datatype, shape, name)
        else:
            array = from_contents(tensor.contents, datatype, shape, name)
        inputs.append(InputTensor(name, datatype, shape, array))
    outputs = [
        OutputRequest(o.name, True, _shm_ref(_params(o.parameters), f"output {o.name!r}")
                      if o.parameters else None)
        for o in request.outputs
    ] or None
    return InferRequest(
        request.model_name, request.model_version or None, inputs, outputs,
        request.id or None, _params(request.parameters), "grpc",
    )


class FramedResponse:
    """A ModelInferResponse without its raw_output_contents, and those contents as the
    output arrays' own buffers: serialize_infer_response writes them once, straight from
    the arrays into the message bytes (protobuf's bytes fields would take a copy into
    `bytes`, another into the message, and a third when serialised)."""

    __slots__ = ("message", "raw")

    def __init__(self, message: Any, raw: list[bytes | memoryview]) -> None:
        self.message, self.raw = message, raw


#: raw_output_contents: field 6, length-delimited (wire type 2).
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def serialize_infer_response(response: Any) -> bytes:
    """The wire form of a FramedResponse (or of a plain message): the message, then each
    raw output as a field 6 record (a parser takes fields in any order and keeps the
    order of a repeated field's records)."""
    if not isinstance(response, FramedResponse):
        data: bytes = response.SerializeToString()
        return data
    parts: list[bytes | memoryview] = [response.message.SerializeToString()]
    for buffer in response.raw:
        parts += (_RAW_OUTPUT_TAG, _varint(len(buffer)), buffer)
    return b"".join(parts)


def encode_response(result: InferResponse) -> FramedResponse:
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=result.version, id=result.id or ""
    )
    raw: list[bytes | memoryview] = []
    for out in result.outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.shm is not None:
            tensor.parameters["shared_memory_region"].string_param = out.shm.region
            tensor.parameters["shared_memory_byte_size"].int64_param = out.shm.byte_size
            raw.append(b"")  # keeps indices aligned
        else:
            assert out.data is not None
            raw.append(to_bytes(out.data))  # a flat byte view of the array: no copy
    return FramedResponse(response, raw)


_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class _FramedModelInfer:
    """Passed to the generated add_..._to_server in place of the server: it registers
    every method as generated, except that ModelInfer's answers are serialised by
    serialize_infer_response."""

    def __init__(self, server: Any, servicer: InferenceServicer) -> None:
        self.server = server
        self.handler = grpc.unary_unary_rpc_method_handler(
            servicer.ModelInfer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=serialize_infer_response)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.server.add_registered_method_handlers(
            service, dict(handlers, ModelInfer=self.handler))

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        framed = self.handler

        class Generic(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                if details.method == _MODEL_INFER:
                    return framed
                for handler in handlers:
                    found = handler.service(details)
                    if found is not None:
                        return found
                return None

        self.server.add_generic_rpc_handlers((Generic(),))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        key = plane.settings.api_key
        self.token = f"Bearer {key}" if key else None

    def _check_auth(self, context: Any) -> None:
        if self.token is None:
            return
        for key, value in context.invocation_metadata():
            if key == "authorization" and hmac.compare_digest(value, self.token):
                return
        raise UnauthorizedError("missing or wrong API key (metadata authorization: Bearer)")

    # Health RPCs stay open without a key (probes), like the REST health routes.
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=not self.plane.draining)

    @staticmethod
    def _guarded(method: F) -> F:
        """The API key, then the method (a coroutine, or a plain function answered on
        the loop); domain errors become the status of the one table."""
        is_async = inspect.iscoroutinefunction(method)

        @functools.wraps(method)
        async def wrapper(self: InferenceServicer, request: Any, context: Any) -> Any:
            try:
                self._check_auth(context)
                if is_async:
                    return await method(self, request, context)
                return method(self, request, context)
            except MLOSError as exc:
                await context.abort(grpc_status_for(exc), str(exc))

        return wrapper  # type: ignore[return-value]

    @_guarded
    def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        ready = self.plane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @_guarded
    def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @_guarded
    def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        meta = self.plane.model_metadata(request.name, request.version or None)
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    @_guarded
    def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        config = self.plane.model_config(request.name, request.version or None)
        response = pb.ModelConfigResponse()
        json_format.ParseDict(config, response.config)  # config.pbtxt's own message type
        return response

    @_guarded
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        # The message is parsed already (grpc's deserializer, in C); turning it into
        # arrays runs on the loop unless that is Python work on a large message (typed
        # `contents` lists, BYTES elements): then on a decode thread, as REST decodes its
        # bodies. Raw numeric tensors become views of the message, at any size.
        decoder = self.plane.decoder
        views = request.raw_input_contents and \
            all(tensor.datatype != "BYTES" for tensor in request.inputs)
        neutral = await decoder.run(0 if views else request.ByteSize(), False,
                                    decode_request, request, decoder.budget())
        return encode_response(await self.plane.infer(neutral))

    @_guarded
    def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        models = [
            pb.RepositoryIndexResponse.ModelIndex(
                name=m["name"], version=m.get("version", ""), state=m["state"],
                reason=m["reason"],
            )
            for m in self.plane.repository_index(request.ready)
        ]
        return pb.RepositoryIndexResponse(models=models)

    @_guarded
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        params = _params(request.parameters)
        unknown = set(params) - {"config"}
        if unknown:
            raise InvalidInputError(
                f"load parameters {sorted(unknown)} are not supported (only 'config'; "
                "model files are registered with POST /models/register)")
        # Loads take seconds: on the loop's helper threads, as REST's route does.
        await asyncio.to_thread(self.plane.load_model, request.model_name, params.get("config"))
        return pb.RepositoryModelLoadResponse()

    @_guarded
    def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        stats = self.plane.model_statistics(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_guarded
    def CudaSharedMemoryStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.plane.cuda_shm.status(request.name or None)  # no region is ever registered
        return pb.CudaSharedMemoryStatusResponse()

    @_guarded
    def CudaSharedMemoryRegister(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.plane.cuda_shm.register(request.name, request.device_id, request.byte_size)
        return pb.CudaSharedMemoryRegisterResponse()

    @_guarded
    def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.plane.cuda_shm.unregister(request.name or None)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_guarded
    def LogSettings(self, request: Any, context: Any) -> Any:  # noqa: N802
        update = {key: _param_value(value) for key, value in request.settings.items()}
        values = self.plane.log_settings.update(update) if update else \
            self.plane.log_settings.get()
        response = pb.LogSettingsResponse()
        for key, value in values.items():
            field = "bool_param" if isinstance(value, bool) else \
                "uint32_param" if isinstance(value, int) else "string_param"
            setattr(response.settings[key], field, value)
        return response

    @_guarded
    def TraceSetting(self, request: Any, context: Any) -> Any:  # noqa: N802
        update = {key: list(value.value) or None for key, value in request.settings.items()}
        values = self.plane.trace_settings(update or None, request.model_name or None)
        response = pb.TraceSettingResponse()
        for key, value in values.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    @_guarded
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        await asyncio.to_thread(self.plane.unload_model, request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_guarded
    def SystemSharedMemoryStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.plane.shm.status(request.name or None):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return response

    @_guarded
    def SystemSharedMemoryRegister(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.plane.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_guarded
    def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.plane.shm.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc core's channel arguments: the connection limits the REST server applies too
    (docs/security.md, "Connections")."""
    ms = 1000
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        # Connections past the cap are closed at accept: descriptors stay bounded.
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        # A client that opens a connection must finish the HTTP/2 handshake in time
        # (the REST server's header deadline); idle connections are closed like REST's.
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_s * ms)),
        ("grpc.max_connection_idle_ms", int(settings.keep_alive_timeout_s * ms)),
        # grpc core has no per-message read deadline: a call whose message never
        # completes would hold its connection for ever. Connections are recycled instead;
        # a call in flight then has the body and request deadlines to finish.
        ("grpc.max_connection_age_ms", int(settings.grpc_connection_age_s * ms)),
        ("grpc.max_connection_age_grace_ms",
         int((settings.body_timeout_s + settings.request_timeout_s) * ms)),
    ]


async def start_grpc_server(plane: DataPlane, host: str,
                            port: int) -> tuple[grpc.aio.Server, int]:
    """grpc.aio on the running loop (the one uvicorn serves REST on)."""
    settings = plane.settings
    with plane.kernel.service_threads("grpc"):
        server = grpc.aio.server(
            options=server_options(settings),
            # Calls past this many in all (running or waiting on the loop) are answered
            # RESOURCE_EXHAUSTED at once instead of queueing without bound; admission
            # still refuses past max_concurrency in the data plane (UNAVAILABLE).
            maximum_concurrent_rpcs=2 * (settings.max_concurrency + 4),
        )
        servicer = InferenceServicer(plane)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            servicer, _FramedModelInfer(server, servicer))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bound = server.add_insecure_port(address)
        if not bound:
            raise OSError(f"gRPC cannot bind {address}")
        await server.start()
    return server, bound
