# SPDX-License-Identifier: Apache-2.0
"""KServe v2 / Open Inference Protocol over REST, with Triton's binary tensor data, model
repository and system shared-memory extensions (what tritonclient.http speaks).

Inference requests are parsed by hand (json + numpy.frombuffer), not by pydantic: the hot
path builds no models per request. The OpenAPI still documents the body (openapi_extra)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from ..dataplane import (
    DataPlane,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputRequest,
    ShmRef,
)
from ..dataplane.decoding import TensorBudget, compressed
from ..errors import InvalidInputError
from ..tensors import DTYPES, check_shape, from_bytes, from_json, to_bytes, to_json
from .bodies import HEADER_LENGTH, header_length, read_binary_body
from .http import read_json

log = logging.getLogger(__name__)
INFER_PATHS = (
    "/v2/models/{model_name}/infer",
    "/v2/models/{model_name}/versions/{model_version}/infer",
)

_TENSOR_PARAMS = {"type": "object", "additionalProperties": True}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _TENSOR_PARAMS,
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": list(DTYPES)},
                    "parameters": _TENSOR_PARAMS,
                    "data": {"type": "array"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _TENSOR_PARAMS},
            },
        },
    },
}
_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": INFER_REQUEST_SCHEMA}},
    },
}
_SHM_REGISTER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["key", "byte_size"],
                    "properties": {
                        "key": {"type": "string"},
                        "offset": {"type": "integer"},
                        "byte_size": {"type": "integer"},
                    },
                }
            }
        },
    }
}


def _shm_ref(params: dict[str, Any], what: str) -> ShmRef | None:
    region = params.get("shared_memory_region")
    if region is None:
        return None
    size = params.get("shared_memory_byte_size")
    offset = params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or type(size) is not int or type(offset) is not int:
        raise InvalidInputError(
            f"{what}: shared_memory_region (string), shared_memory_byte_size (int) and "
            "optional shared_memory_offset (int) are required together"
        )
    if size < 0 or offset < 0:
        raise InvalidInputError(f"{what}: negative shared memory size or offset")
    return ShmRef(region, offset, size)


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def parse_infer_request(
    doc: Any, binary: memoryview | None, model: str, version: str | None,
    budget: TensorBudget | None = None,
) -> tuple[InferRequest, bool]:
    """Neutral request + whether outputs default to binary (`binary_data_output`); each
    tensor's size is checked against `budget` before it is decoded."""
    if not isinstance(doc, dict):
        raise InvalidInputError("the inference request must be a JSON object")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise InvalidInputError("'inputs' must be a non-empty list")
    cursor = 0
    inputs = []
    for item in inputs_doc:
        if not isinstance(item, dict):
            raise InvalidInputError("each input must be an object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInputError("each input needs a string 'name' and 'datatype'")
        if datatype not in DTYPES:
            raise InvalidInputError(f"input {name!r}: unknown datatype {datatype!r}")
        shape = check_shape(item.get("shape"), name)
        if budget is not None:
            budget.check(name, datatype, shape)
        params = _dict(item.get("parameters"), f"input {name!r} parameters")
        shm = _shm_ref(params, f"input {name!r}")
        if shm is not None:
            inputs.append(InputTensor(name, datatype, shape, None, shm))
            continue
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInputError(f"input {name!r}: invalid binary_data_size {size!r}")
            if binary is None or cursor + size > len(binary):
                raise InvalidInputError(
                    f"input {name!r}: binary_data_size {size} exceeds the binary data sent"
                )
            array = from_bytes(binary[cursor : cursor + size], datatype, shape, name)
            cursor += size
        else:
            if "data" not in item:
                raise InvalidInputError(f"input {name!r} has no 'data' (nor binary_data_size)")
            array = from_json(item["data"], datatype, shape, name)
        inputs.append(InputTensor(name, datatype, shape, array))
    if binary is not None and cursor != len(binary):
        raise InvalidInputError(
            f"{len(binary) - cursor} bytes of binary data are not claimed by any input"
        )
    outputs = None
    outputs_doc = doc.get("outputs")
    if outputs_doc is not None:
        if not isinstance(outputs_doc, list):
            raise InvalidInputError("'outputs' must be a list")
        outputs = []
        for item in outputs_doc:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInputError("each requested output needs a string 'name'")
            params = _dict(item.get("parameters"), f"output {item['name']!r} parameters")
            wants_binary = params.get("binary_data")
            outputs.append(
                OutputRequest(
                    item["name"],
                    bool(wants_binary) if wants_binary is not None else None,
                    _shm_ref(params, f"output {item['name']!r}"),
                )
            )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError("'id' must be a string")
    params = _dict(doc.get("parameters"), "request parameters")
    request = InferRequest(model, version, inputs, outputs, request_id, params, "rest")
    return request, bool(params.get("binary_data_output", False))


def encode_infer_response(response: InferResponse, binary_default: bool) -> Response:
    outputs = []
    chunks: list[Any] = []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.shape)}
        if out.shm is not None:
            entry["parameters"] = {
                "shared_memory_region": out.shm.region,
                "shared_memory_byte_size": out.shm.byte_size,
            }
        elif out.data is not None and (out.binary if out.binary is not None else binary_default):
            raw = to_bytes(out.data)
            entry["parameters"] = {"binary_data_size": len(raw) if isinstance(raw, bytes)
                                   else raw.nbytes}
            chunks.append(raw)
        elif out.data is not None:
            entry["data"] = to_json(out.data)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id is not None:
        doc["id"] = response.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def make_infer_endpoint(plane: DataPlane) -> Callable[[Request], Awaitable[Response]]:
    """The inference endpoint. It is the hot path, so it is mounted as plain Starlette
    routes at the front of the app (infer_routes): no FastAPI dependency solving and the
    first routes matched. The FastAPI twins in create_router only document the body in
    the OpenAPI (shadowed, they share this code)."""

    def request_body_fallback() -> None:
        plane.kernel.fallback("request_body")

    decoder = plane.decoder

    def decode(
        header: bytes | bytearray, binary: memoryview | None, model: str, version: str | None
    ) -> tuple[InferRequest, bool]:
        doc = decoder.parse_json(header)
        return parse_infer_request(doc, binary, model, version, decoder.budget())

    def decode_body(
        body: bytes, encoding: str | None, header_value: str | None, model: str,
        version: str | None,
    ) -> tuple[InferRequest, bool]:
        if header_value is None:
            return decode(decoder.inflate_json(body, encoding), None, model, version)
        inflated = decoder.inflate(body, encoding)
        split = header_length(header_value)
        if split > len(inflated):
            raise InvalidInputError("Inference-Header-Content-Length exceeds the body")
        return decode(inflated[:split], memoryview(inflated)[split:], model, version)

    async def parse(request: Request, model: str, version: str | None
                    ) -> tuple[InferRequest, bool]:
        """Read and decode the body under the decoding limits; large or compressed bodies
        are inflated, parsed and converted on the decode threads."""
        header_value = request.headers.get(HEADER_LENGTH)
        encoding = request.headers.get("content-encoding")
        pool = plane.kernel.request_pool
        if header_value is not None and not compressed(encoding) and pool is not None:
            split = header_length(header_value)
            read = await read_binary_body(request, pool, split, request_body_fallback)
            size = len(read.header) + len(read.binary)
            return await decoder.run(size, False, decode, read.header, read.binary, model,
                                     version)
        body = await request.body()
        if header_value is not None and compressed(encoding) and pool is not None:
            plane.kernel.fallback("request_body")  # inflated into a per-request allocation
        return await decoder.run(len(body), compressed(encoding), decode_body, body, encoding,
                                 header_value, model, version)

    async def serve(request: Request) -> Response:
        params = request.path_params
        infer_request, binary_default = await parse(
            request, params["model_name"], params.get("model_version"))
        response = await plane.infer(infer_request)
        # Encoding a large output (JSON above all) is CPU work too: off the loop.
        size = sum(o.data.nbytes for o in response.outputs if o.data is not None)
        return await decoder.run(size, False, encode_infer_response, response, binary_default)

    async def infer(request: Request) -> Response:
        try:
            return await serve(request)
        except ClientDisconnect:
            log.debug("client went away while sending %s", request.url.path)
            return Response(status_code=499)  # nobody reads it; the buffer is back already

    return infer



def infer_routes(plane: DataPlane) -> list[Route]:
    endpoint = make_infer_endpoint(plane)
    return [Route(path, endpoint, methods=["POST"], include_in_schema=False)
            for path in INFER_PATHS]


def create_router(plane: DataPlane) -> APIRouter:
    router = APIRouter(tags=["KServe v2"])

    infer = make_infer_endpoint(plane)

    @router.post(INFER_PATHS[0], openapi_extra=_INFER_OPENAPI, name="infer")
    @router.post(INFER_PATHS[1], openapi_extra=_INFER_OPENAPI, name="infer_version")
    async def infer_documented(
        request: Request, model_name: str, model_version: str | None = None
    ) -> Response:
        return await infer(request)

    @router.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        if plane.draining:
            return Response(b'{"ready":false}', 503, media_type="application/json")
        return Response(b'{"ready":true}', media_type="application/json")

    @router.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return plane.server_metadata()

    @router.get("/v2/models/{model_name}")
    @router.get("/v2/models/{model_name}/versions/{model_version}")
    async def model_metadata(model_name: str, model_version: str | None = None) -> Any:
        return plane.model_metadata(model_name, model_version)

    @router.get("/v2/models/{model_name}/ready")
    @router.get("/v2/models/{model_name}/versions/{model_version}/ready")
    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        ok = plane.model_ready(model_name, model_version)
        body = json.dumps({"name": model_name, "ready": ok}).encode()
        return Response(body, 200 if ok else 400, media_type="application/json")

    @router.get("/v2/models/{model_name}/config")
    @router.get("/v2/models/{model_name}/versions/{model_version}/config")
    async def model_config(model_name: str, model_version: str | None = None) -> Any:
        return plane.model_config(model_name, model_version)

    # ---- model repository extension ------------------------------------------------------
    @router.post("/v2/repository/index")
    async def repository_index(request: Request) -> Any:
        doc = _dict(await read_json(request), "request")
        return plane.repository_index(bool(doc.get("ready", False)))

    @router.post("/v2/repository/models/{model_name}/load")
    async def repository_load(model_name: str) -> Any:
        await asyncio.to_thread(plane.load_model, model_name)
        return {}

    @router.post("/v2/repository/models/{model_name}/unload")
    async def repository_unload(model_name: str) -> Any:
        await asyncio.to_thread(plane.unload_model, model_name)
        return {}

    # ---- system shared memory extension --------------------------------------------------
    def shm_status(name: str | None) -> list[dict[str, Any]]:
        return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in plane.shm.status(name)]

    @router.get("/v2/systemsharedmemory/status")
    async def shm_status_all() -> Any:
        return shm_status(None)

    @router.get("/v2/systemsharedmemory/region/{region_name}/status")
    async def shm_status_one(region_name: str) -> Any:
        return shm_status(region_name)

    @router.post("/v2/systemsharedmemory/region/{region_name}/register",
                 openapi_extra=_SHM_REGISTER_OPENAPI)
    async def shm_register(region_name: str, request: Request) -> Any:
        doc = _dict(await read_json(request), "request")
        key, offset, size = doc.get("key"), doc.get("offset", 0), doc.get("byte_size")
        if not isinstance(key, str) or type(offset) is not int or type(size) is not int:
            raise InvalidInputError("register needs 'key' (string), 'byte_size' and 'offset' (int)")
        plane.shm.register(region_name, key, offset, size)
        return {}

    @router.post("/v2/systemsharedmemory/unregister")
    async def shm_unregister_all() -> Any:
        plane.shm.unregister(None)
        return {}

    @router.post("/v2/systemsharedmemory/region/{region_name}/unregister")
    async def shm_unregister(region_name: str) -> Any:
        plane.shm.unregister(region_name)
        return {}

    return router
