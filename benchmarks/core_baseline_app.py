# SPDX-License-Identifier: Apache-2.0
"""Baselines for benchmarks/core_bench.py, run as their own process: what a user would
hand-write (a FastAPI JSON endpoint around one ONNX Runtime session), a FastAPI no-op
route, and a grpcio no-op unary method (the floors)."""

from __future__ import annotations

import argparse
import threading
from concurrent import futures

import grpc
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

NOOP_METHOD = "/bench.Noop/Call"


def build_app(mlp_path: str, double_path: str) -> FastAPI:
    app = FastAPI()
    sessions = {
        "mlp": ort.InferenceSession(mlp_path, providers=["CPUExecutionProvider"]),
        "double": ort.InferenceSession(double_path, providers=["CPUExecutionProvider"]),
    }

    @app.post("/noop")
    async def noop() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.post("/predict/{name}")
    async def predict(name: str, request: Request) -> JSONResponse:
        body = await request.json()
        session = sessions[name]
        x = np.asarray(body["data"], dtype=np.float32).reshape(body["shape"])
        (y,) = session.run(None, {session.get_inputs()[0].name: x})
        return JSONResponse({"shape": list(y.shape), "data": y.ravel().tolist()})

    return app


def start_grpc_noop(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handler = grpc.method_handlers_generic_handler(
        "bench.Noop", {"Call": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--mlp", required=True)
    parser.add_argument("--double", required=True)
    args = parser.parse_args()
    grpc_server = start_grpc_noop(args.grpc_port)
    threading.Thread(target=grpc_server.wait_for_termination, daemon=True).start()
    uvicorn.run(build_app(args.mlp, args.double), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
