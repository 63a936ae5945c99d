# SPDX-License-Identifier: Apache-2.0
"""The upstream MLOS Core REST shape, a thin adapter over the data plane, as upstream's
clients (Axon, the mlOS-foundation/system-test harness) speak it:

    GET  /health                      status, version, runtime_mode, module, model counts
    POST /models/register             JSON {"model_id" | "name", "path"[, "version",
                                      "config"]} or a multipart upload (fields: model_id or
                                      name, file[, version])
    GET  /models                      every model in the repository with its state
    GET  /models/{id}                 one model: versions, state, inputs and outputs
    DELETE /models/{id}               unload and remove from the repository
    POST /models/{id}/inference       {"input_ids": [...], ...} (flat: input name -> list) or
                                      {"inputs": {"x": [[...]]}} -> {"status": "success",
                                      "model_id", "version", "inference_time_us",
                                      "output_size"[, "outputs": {"y": [[...]]}]}

Ids are upstream's `namespace/name@version`, kept as given (stored under a repository name
derived from them, registry.repository_name_for) and found URL-encoded in the path
(`/models/hf%2Fmlp%40latest/inference`): the routes take the id as a path, so an encoded
or a plain '/' both work. A flat list gets its shape from the model's input (a [-1, n]
input takes n values as [1, n]). Tensors come back under `outputs` with
`?include_outputs=true`; without the parameter a flat body gets the metadata only (as
upstream answers) and an {"inputs": ...} body its outputs too (as MLOS always did).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..backends.capabilities import GenerationParams
from ..dataplane import DataPlane, InferRequest, InputTensor, TextRequest
from ..errors import (
    InvalidInputError,
    InvalidParamError,
    MLOSError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from ..model_import import open_import
from ..registry import (
    ImportedFile,
    check_file_name,
    check_model_id,
    check_model_name,
    is_model_name,
    repository_name_for,
)
from ..tensors import check_shape, from_json, to_json
from .http import cancel_on_disconnect, read_json

_REGISTER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "path"],
                    "properties": {
                        "name": {"type": "string"},
                        "path": {"type": "string"},
                        "version": {"type": "string"},
                        "config": {"type": "object"},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name", "file"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "file": {"type": "string", "format": "binary"},
                    },
                }
            },
        },
    }
}
_INFERENCE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "inputs": {"type": "object", "additionalProperties": {"type": "array"}},
                        "version": {"type": "string"},
                    },
                }
            }
        },
    }
}


def create_router(plane: DataPlane) -> APIRouter:
    router = APIRouter(tags=["MLOS"])

    @router.get("/health")
    async def health() -> Any:
        return plane.health()

    def describe(name: str) -> dict[str, Any]:
        state = plane.models.get(name)
        entry: dict[str, Any] = {
            "id": plane.model_id_for(name),
            "name": name,
            "state": state.state if state else "UNAVAILABLE",
            "reason": state.reason if state else "",
            "versions": plane.repository.get(name).versions,
        }
        try:
            meta = plane.model_metadata(name)
        except ModelNotReadyError:
            return entry
        except MLOSError:
            return entry
        entry.update(
            loaded_versions=meta["versions"], backend=meta["platform"],
            inputs=meta["inputs"], outputs=meta["outputs"],
        )
        return entry

    @router.get("/models")
    async def list_models() -> Any:
        return {"models": [describe(m["name"]) for m in plane.repository_index()]}

    def lookup(model_id: str) -> str:
        """The repository name of an id from the path."""
        name = plane.model_name_for(check_model_id(model_id))
        if name == model_id and not is_model_name(name):  # an id nobody registered
            raise ModelNotFoundError(f"unknown model {model_id!r}")
        return check_model_name(name)

    @router.post("/models/register", status_code=201, openapi_extra=_REGISTER_OPENAPI)
    async def register(request: Request) -> Any:
        content_type = request.headers.get("content-type", "")
        files: list[tuple[str, Path | bytes | ImportedFile]] = []
        config = None
        if content_type.startswith("multipart/form-data"):
            try:
                form = await request.form()
            except Exception as exc:  # malformed multipart bodies
                raise InvalidInputError(f"malformed multipart body: {exc}") from None
            name = form.get("model_id") or form.get("name")
            version, upload = form.get("version"), form.get("file")
            if not isinstance(name, str) or upload is None or isinstance(upload, str):
                raise InvalidInputError(
                    "multipart registration needs fields 'model_id' (or 'name') and 'file'")
            filename = check_file_name(Path(upload.filename or "model.onnx").name)
            files.append((filename, await upload.read()))
        else:
            doc = await read_json(request)
            if not isinstance(doc, dict):
                raise InvalidInputError("registration body must be a JSON object")
            name = doc.get("model_id") or doc.get("name")
            version, path, config = doc.get("version"), doc.get("path"), doc.get("config")
            if not isinstance(name, str) or not isinstance(path, str):
                raise InvalidInputError(
                    "registration needs string fields 'model_id' (or 'name') and 'path'")
            if config is not None and not isinstance(config, dict):
                raise InvalidInputError("'config' must be an object")
            served = tuple(f for fmts in plane.plugins.formats().values() for f in fmts)
            settings = plane.settings
            files += await asyncio.to_thread(
                open_import, path, settings.import_roots, settings.import_max_bytes, served)
        try:  # the opened import files are closed whatever happens
            if isinstance(version, int) and not isinstance(version, bool):
                version = str(version)
            if version is not None and not isinstance(version, str):
                raise InvalidInputError("'version' must be a string of digits")
            model_id = check_model_id(str(name))
            model_name, new_version = await asyncio.to_thread(
                plane.register_model, repository_name_for(model_id), files, version, config,
                True, model_id,
            )
        finally:
            for _, source in files:
                if isinstance(source, ImportedFile):
                    source.close()
        return JSONResponse({"id": model_id, "name": model_name, "version": new_version,
                             "state": plane.models[model_name].state}, 201)

    @router.post("/models/{model_id:path}/inference", openapi_extra=_INFERENCE_OPENAPI)
    async def inference(model_id: str, request: Request) -> Response:
        name = lookup(model_id)
        doc = await read_json(request)
        if isinstance(doc, dict) and "prompt" in doc:  # a language model: text in, text out
            answer = await _text_inference(plane, name, doc, request)
            return JSONResponse({**answer, "model_id": model_id})
        if not isinstance(doc, dict) or not doc:
            raise InvalidInputError(
                "body must be {\"<input name>\": [...], ...} or "
                "{\"inputs\": {\"<input name>\": [...]}}")
        nested = isinstance(doc.get("inputs"), dict)
        tensors = doc["inputs"] if nested else {k: v for k, v in doc.items() if k != "version"}
        version = doc.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInputError("'version' must be a string")
        include = _flag(request.query_params.get("include_outputs"), nested)
        backend = plane.backend(name, version)
        specs = {s.name: s for s in backend.inputs}

        def convert() -> list[InputTensor]:
            budget = plane.decoder.budget()
            inputs = []
            for input_name, data in tensors.items():
                spec = specs.get(input_name)
                if spec is None:
                    raise InvalidInputError(f"model {model_id!r} has no input {input_name!r}; "
                                            f"inputs: {sorted(specs)}")
                if not isinstance(data, list):
                    raise InvalidInputError(f"input {input_name!r} must be a list of values")
                shape = check_shape(list(_fit_shape(_shape_of(data), spec.shape, input_name)),
                                    input_name)
                budget.check(input_name, spec.datatype, shape)
                inputs.append(InputTensor(input_name, spec.datatype, shape,
                                          from_json(data, spec.datatype, shape, input_name)))
            return inputs

        inputs = await plane.decoder.run(len(await request.body()), False, convert)
        started = time.perf_counter()
        result = await plane.infer(InferRequest(name, version, inputs, protocol="mlos"))
        elapsed_us = int((time.perf_counter() - started) * 1e6)

        def encode() -> bytes:
            body: dict[str, Any] = {
                "status": "success",
                "model_id": model_id,
                "version": result.version,
                "inference_time_us": elapsed_us,
                "output_size": sum(o.data.nbytes for o in result.outputs
                                   if o.data is not None),
            }
            if include:
                body["outputs"] = {o.name: _nest(o.data) for o in result.outputs
                                   if o.data is not None}
            return json.dumps(body, separators=(",", ":")).encode()

        size = sum(o.data.nbytes for o in result.outputs if o.data is not None)
        return Response(await plane.decoder.run(size, False, encode),
                        media_type="application/json")

    # After /inference: an id is a path, and "<id>/inference" must not be taken for one.
    @router.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        return describe(lookup(model_id))

    @router.delete("/models/{model_id:path}")
    async def delete_model(model_id: str) -> Any:
        await asyncio.to_thread(plane.delete_model, lookup(model_id))
        return {"id": model_id, "deleted": True}

    return router


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise InvalidInputError(f"include_outputs={value!r}: use true or false")


def _fit_shape(
    data_shape: tuple[int, ...], model_shape: tuple[int, ...], name: str
) -> tuple[int, ...]:
    """The shape a JSON list takes for a model input: its own when the ranks agree; with
    a batch of one in front when it lacks only the batch dimension (a [-1, n] input given
    n values); the model's shape (batch 1) for a flat list that fills it exactly."""
    if not model_shape or len(data_shape) == len(model_shape):
        return data_shape
    if len(data_shape) == len(model_shape) - 1 and model_shape[0] in (-1, 1):
        return (1, *data_shape)
    fixed = tuple(1 if i == 0 and d == -1 else d for i, d in enumerate(model_shape))
    count = 1
    for dim in fixed:
        count *= dim
    if len(data_shape) == 1 and -1 not in fixed and data_shape[0] == count:
        return fixed
    raise InvalidInputError(
        f"input {name!r}: a list of shape {list(data_shape)} does not fit the model's input "
        f"{list(model_shape)} (-1 is any size)")


class _PromptBody(BaseModel):
    """The upstream MLOS inference route with a prompt: greedy and 128 tokens by default."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    version: str | None = None
    max_tokens: int | None = Field(128, ge=0)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None


async def _text_inference(
    plane: DataPlane, model_id: str, doc: dict[str, Any], request: Request
) -> dict[str, Any]:
    """POST /models/{id}/inference {"prompt": "...", "max_tokens": 128, "temperature": 0,
    "top_p", "seed", "stop"}: a generation through the data plane, cancelled when the
    client goes away."""
    try:
        body = _PromptBody.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidParamError(f"'{where}': {err.get('msg', 'invalid')}", param=where) from None
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    params = GenerationParams(max_tokens=body.max_tokens, temperature=body.temperature,
                              top_p=body.top_p, seed=body.seed, stop=tuple(stop))
    generation = await plane.generate(
        TextRequest(model_id, params, body.prompt, version=body.version, endpoint="mlos"))
    watcher = asyncio.ensure_future(cancel_on_disconnect(request, generation.cancel))
    try:
        text = await generation.text()
    finally:
        watcher.cancel()
    r = generation.result
    return {
        "model_id": model_id,
        "version": generation.version,
        "text": text,
        "finish_reason": r.finish_reason,
        "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                  "total_tokens": r.prompt_tokens + r.completion_tokens},
    }


def _shape_of(data: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return tuple(shape)


def _nest(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.array(to_json(array), dtype=object).reshape(array.shape).tolist()
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return array.tolist()
