# SPDX-License-Identifier: Apache-2.0
"""The upstream MLOS Core REST shape, a thin adapter over the data plane:

    GET  /health                      status, version, runtime_mode, module, model counts
    POST /models/register             JSON {"name", "path"[, "version", "config"]} or a
                                      multipart upload (fields: name, file[, version])
    GET  /models                      every model in the repository with its state
    GET  /models/{id}                 one model: versions, state, inputs and outputs
    DELETE /models/{id}               unload and remove from the repository
    POST /models/{id}/inference       {"inputs": {"x": [[...]]}} -> {"outputs": {"y": [[...]]}}
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..dataplane import DataPlane, InferRequest, InputTensor
from ..errors import InvalidInputError, MLOSError, ModelNotReadyError
from ..model_import import open_import
from ..registry import ImportedFile, check_file_name, check_model_name
from ..tensors import check_shape, from_json, to_json
from .rest_kserve import read_json

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
            "id": name,
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

    @router.get("/models/{model_id}")
    async def get_model(model_id: str) -> Any:
        check_model_name(model_id)
        return describe(model_id)

    @router.delete("/models/{model_id}")
    async def delete_model(model_id: str) -> Any:
        check_model_name(model_id)
        await asyncio.to_thread(plane.delete_model, model_id)
        return {"id": model_id, "deleted": True}

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
            name, version, upload = form.get("name"), form.get("version"), form.get("file")
            if not isinstance(name, str) or upload is None or isinstance(upload, str):
                raise InvalidInputError("multipart registration needs fields 'name' and 'file'")
            filename = check_file_name(Path(upload.filename or "model.onnx").name)
            files.append((filename, await upload.read()))
        else:
            doc = await read_json(request)
            if not isinstance(doc, dict):
                raise InvalidInputError("registration body must be a JSON object")
            name, version, path = doc.get("name"), doc.get("version"), doc.get("path")
            config = doc.get("config")
            if not isinstance(name, str) or not isinstance(path, str):
                raise InvalidInputError("registration needs string fields 'name' and 'path'")
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
            model_name = check_model_name(str(name))
            model_name, new_version = await asyncio.to_thread(
                plane.register_model, model_name, files, version, config
            )
        finally:
            for _, source in files:
                if isinstance(source, ImportedFile):
                    source.close()
        return JSONResponse({"id": model_name, "name": model_name, "version": new_version,
                             "state": plane.models[model_name].state}, 201)

    @router.post("/models/{model_id}/inference", openapi_extra=_INFERENCE_OPENAPI)
    async def inference(model_id: str, request: Request) -> Response:
        doc = await read_json(request)
        if isinstance(doc, dict) and "prompt" in doc:  # a language model: text in, text out
            from .openai import mlos_text_inference

            return JSONResponse(await mlos_text_inference(plane, model_id, doc, request))
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
            raise InvalidInputError("body must be {\"inputs\": {\"<input name>\": [...]}}")
        version = doc.get("version")
        if version is not None and not isinstance(version, str):
            raise InvalidInputError("'version' must be a string")
        backend = plane.backend(model_id, version)
        specs = {s.name: s for s in backend.inputs}
        inputs = []
        for name, data in doc["inputs"].items():
            spec = specs.get(name)
            if spec is None:
                raise InvalidInputError(f"model {model_id!r} has no input {name!r}; "
                                        f"inputs: {sorted(specs)}")
            shape = check_shape(list(_shape_of(data)), name)
            inputs.append(InputTensor(name, spec.datatype, shape,
                                      from_json(data, spec.datatype, shape, name)))
        result = await plane.infer(InferRequest(model_id, version, inputs, protocol="mlos"))
        body = {
            "model_id": result.model,
            "version": result.version,
            "outputs": {o.name: _nest(o.data) for o in result.outputs
                        if o.data is not None},
        }
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    return router


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
