# SPDX-License-Identifier: Apache-2.0
"""MLOS Core benchmarks, side by side in one run, written to docs/benchmarks.md.

    .venv/bin/python benchmarks/core_bench.py [--quick] [--out docs/benchmarks.md]
    .venv/bin/python benchmarks/core_bench.py --bodies [--quick]   # request bodies only
    .venv/bin/python benchmarks/core_bench.py --batching [--quick] # dynamic batching only

Measures, for a 64->256->10 MLP and a 16 MiB tensor (y = 2x): in-process ONNX Runtime;
MLOS Core over REST JSON, REST binary, gRPC and system shared memory (driven by the real
tritonclient at concurrency 1 and 8); and baselines from the same run: a hand-written
FastAPI endpoint around ONNX Runtime, a FastAPI no-op route and a grpcio no-op method.
Servers run in their own processes; the clients share this one.

`--bodies` compares how binary REST request bodies (4 and 16 MiB) are read: into a pooled
buffer (the default) against a per-request allocation (the same service with
tensor_pool_mb=0), in alternating blocks, with the server's page faults per request; it
rewrites only its own section of the output file.

`--grpc` compares the MLP over gRPC (tritonclient.grpc, binary tensors) with the grpcio
no-op floor and binary REST at concurrency 1 and 8, all paths in interleaved blocks; with
`--before DIR` (an exported older tree of this repository) that tree's server runs beside
this one, so a change is measured against what it replaces in the same run. It rewrites
only its own section.

`--batching` (also part of the full run) compares the MLP at concurrency 1, 8 and 32
without and with dynamic batching: one service, two models from the same file, one of
them with a Triton config.pbtxt enabling dynamic_batching; binary REST through
tritonclient. It too rewrites only its own section.

The focused runs are core_bench_bodies.py, core_bench_grpc.py and core_bench_batching.py;
the clients, servers and timing they share are core_clients.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import onnxruntime as ort
import tritonclient.utils.shared_memory as shm
from core_bench_batching import BATCHING_END, BATCHING_START, bench_batching
from core_bench_bodies import BODIES_END, BODIES_START, bench_bodies
from core_bench_grpc import GRPC_END, GRPC_START, bench_grpc
from core_clients import (
    BIG_N,
    ROOT,
    Clients,
    Result,
    accumulate,
    alternating,
    fmt,
    measure,
    splice,
)

#: Alternating blocks of the REST target's two paths (hand-written endpoint, MLOS).
REST_BLOCKS = 4


class Bench(Clients):
    """The full run: every path side by side, and its report."""

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> None:
        import json

        r = self.results.append
        mlp_json = json.dumps({"shape": [1, 64], "data": self.mlp_x.ravel().tolist()}).encode()
        kserve_json = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                              "shape": [1, 64],
                                              "data": self.mlp_x.ravel().tolist()}]}).encode()
        print("MLP 64->256->10, batch 1")
        r(measure("in-process ONNX Runtime", "mlp", 1, self.n(5000), self.inprocess("mlp")))
        for c in (1, 8):
            total = self.n(2000 if c == 1 else 4000)
            r(measure("FastAPI no-op route (baseline)", "mlp", c, total,
                      self.raw_json(self.base_rest, "/noop", b"{}")))
            r(measure("grpcio no-op unary (baseline)", "mlp", c, total, self.grpc_noop()))
            # The REST target's two paths in alternating blocks: a drift of the shared
            # host's load between them would otherwise decide a difference of a few %.
            pair: dict[str, Result] = {}
            order = [("hand-written FastAPI + ORT, JSON (baseline)",
                      self.raw_json(self.base_rest, "/predict/mlp", mlp_json)),
                     ("MLOS REST JSON (raw HTTP client)",
                      self.raw_json(self.rest, "/v2/models/mlp/infer", kserve_json))]
            for block in range(REST_BLOCKS):
                for name, factory in alternating(order, block):
                    accumulate(pair, name, measure(name, "mlp", c, total // REST_BLOCKS,
                                                   factory))
            for result in pair.values():
                r(result)
            r(measure("MLOS REST JSON (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "http", False)))
            r(measure("MLOS REST binary (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "http", True)))
            r(measure("MLOS gRPC (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "grpc", True)))
            r(measure("MLOS shared memory, REST (tritonclient)", "mlp", c, total,
                      self.triton_shm("mlp", "http")))
            r(measure("MLOS shared memory, gRPC (tritonclient)", "mlp", c, total,
                      self.triton_shm("mlp", "grpc")))
        print("16 MiB tensor, y = 2x")
        big_json = json.dumps({"shape": [BIG_N], "data": self.big_x.tolist()}).encode()
        r(measure("in-process ONNX Runtime", "16MiB", 1, self.n(200), self.inprocess("big")))
        json_runs = 2 if self.quick else 3
        r(measure("hand-written FastAPI + ORT, JSON (baseline)", "16MiB", 1, json_runs,
                  self.raw_json(self.base_rest, "/predict/double", big_json), warmup=1))
        r(measure("MLOS REST JSON (tritonclient)", "16MiB", 1, json_runs,
                  self.triton("double", "http", False), warmup=1))
        for c in (1, 8):
            total = self.n(100 if c == 1 else 160)
            r(measure("MLOS REST binary (tritonclient)", "16MiB", c, total,
                      self.triton("double", "http", True), warmup=2))
            r(measure("MLOS gRPC (tritonclient)", "16MiB", c, total,
                      self.triton("double", "grpc", True), warmup=2))
            r(measure("MLOS shared memory, REST (tritonclient)", "16MiB", c, total,
                      self.triton_shm("double", "http"), warmup=2))
            r(measure("MLOS shared memory, gRPC (tritonclient)", "16MiB", c, total,
                      self.triton_shm("double", "grpc"), warmup=2))
        for handle in self.shm_handles:
            shm.destroy_shared_memory_region(handle)

    def find(self, name: str, model: str, c: int = 1) -> Result:
        for result in self.results:
            if result.name == name and result.model == model and result.concurrency == c:
                return result
        raise KeyError(name)

    def report(self, command: str) -> str:
        lines = [
            "# MLOS Core benchmarks",
            "",
            "Written by `benchmarks/core_bench.py`; every figure below comes from one run, "
            "baselines included. Regenerate with:",
            "",
            f"    {command}",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, onnxruntime {ort.__version__}. Run at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            "",
            "**Noise:** client and servers compete for the same cores (1-minute load "
            f"average before the run {self.load_before:.2f}, after {os.getloadavg()[0]:.2f}), "
            "so absolute figures are noisy; compare ratios within the table. Clients are the "
            "real tritonclient (HTTP via geventhttpclient, gRPC) in this process; baselines "
            "use a raw keep-alive geventhttpclient (tritonclient's own transport) or a raw "
            "grpcio stub. Shared-memory runs write the input region once (as a producer "
            "would) and read the output region after each request.",
            "",
            "## Targets",
            "",
            "| Target | Measured | Met |",
            "|---|---|---|",
        ]
        hand = self.find("hand-written FastAPI + ORT, JSON (baseline)", "mlp")
        rest_bin = self.find("MLOS REST binary (tritonclient)", "mlp")
        rest_json = self.find("MLOS REST JSON (tritonclient)", "mlp")
        rest_raw = self.find("MLOS REST JSON (raw HTTP client)", "mlp")
        grpc_noop = self.find("grpcio no-op unary (baseline)", "mlp")
        grpc_mlp = self.find("MLOS gRPC (tritonclient)", "mlp")
        inproc_big = self.find("in-process ONNX Runtime", "16MiB")
        shm_big = min(self.find("MLOS shared memory, REST (tritonclient)", "16MiB").p50,
                      self.find("MLOS shared memory, gRPC (tritonclient)", "16MiB").p50)
        bin_big = self.find("MLOS REST binary (tritonclient)", "16MiB")
        json_big = self.find("MLOS REST JSON (tritonclient)", "16MiB")

        def row(target: str, measured: str, met: bool) -> None:
            lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

        row("MLP REST p50 no slower than the hand-written FastAPI endpoint (same JSON, same "
            f"raw keep-alive client, {REST_BLOCKS} alternating blocks each)",
            f"MLOS {fmt(rest_raw.p50)} vs hand-written {fmt(hand.p50)} "
            f"({rest_raw.p50 / hand.p50:.2f}x). Through tritonclient, which also encodes and "
            f"decodes on the client: binary {fmt(rest_bin.p50)}, JSON {fmt(rest_json.p50)}",
            rest_raw.p50 <= hand.p50)
        row("MLP gRPC p50 at c=1 at most 1.5x the no-op floor",
            f"{fmt(grpc_mlp.p50)} vs grpcio no-op {fmt(grpc_noop.p50)} "
            f"({grpc_mlp.p50 / grpc_noop.p50:.2f}x)", grpc_mlp.p50 <= 1.5 * grpc_noop.p50)
        grpc_noop8 = self.find("grpcio no-op unary (baseline)", "mlp", 8)
        grpc_mlp8 = self.find("MLOS gRPC (tritonclient)", "mlp", 8)
        share = grpc_mlp8.throughput / grpc_noop8.throughput
        row("MLP gRPC throughput at c=8 at least 70% of the no-op floor's",
            f"{grpc_mlp8.throughput:.0f}/s vs grpcio no-op {grpc_noop8.throughput:.0f}/s "
            f"({share:.0%}); interleaved figures: `--grpc`, below", share >= 0.7)
        row("16 MiB via shared memory at most 3x in-process",
            f"{fmt(shm_big)} vs in-process {fmt(inproc_big.p50)} "
            f"({shm_big / inproc_big.p50:.2f}x)", shm_big <= 3 * inproc_big.p50)
        row("16 MiB via binary REST at least 100x faster than via JSON",
            f"{fmt(bin_big.p50)} vs JSON {fmt(json_big.p50)} "
            f"({json_big.p50 / bin_big.p50:.0f}x)", json_big.p50 >= 100 * bin_big.p50)
        lines += ["", "## All measurements", "",
                  "| Path | Model | Concurrency | p50 | p90 | p99 | Requests/s | n |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in self.results:
            lines.append(
                f"| {res.name} | {res.model} | {res.concurrency} | {fmt(res.p50)} | "
                f"{fmt(res.pct(0.9))} | {fmt(res.pct(0.99))} | {res.throughput:.1f} | "
                f"{len(res.latencies)} |"
            )
        return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a tenth of the requests")
    parser.add_argument("--bodies", action="store_true",
                        help="only the request-body comparison (its own section of --out)")
    parser.add_argument("--batching", action="store_true",
                        help="only the dynamic-batching comparison (its own section of --out)")
    parser.add_argument("--grpc", action="store_true",
                        help="only gRPC against its floor (its own section of --out)")
    parser.add_argument("--before", type=Path, default=None,
                        help="with --grpc: an older tree whose server runs beside this one")
    parser.add_argument("--batch-delay-us", type=int, default=0,
                        help="max_queue_delay_microseconds of the batched model (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.bodies:
        splice(args.out, bench_bodies(args.quick), BODIES_START, BODIES_END)
        print(f"wrote the request-body section of {args.out}")
        return 0
    if args.grpc:
        splice(args.out, bench_grpc(args.quick, args.before), GRPC_START, GRPC_END)
        print(f"wrote the gRPC section of {args.out}")
        return 0
    if args.batching:
        splice(args.out, bench_batching(args.quick, args.batch_delay_us), BATCHING_START,
               BATCHING_END)
        print(f"wrote the dynamic-batching section of {args.out}")
        return 0
    bench = Bench(args.quick)
    bench.start_servers()
    try:
        bench.run()
    finally:
        bench.stop()
    command = "python benchmarks/core_bench.py" + (" --quick" if args.quick else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(bench.report(command))
    for start_mark, end_mark in ((BODIES_START, BODIES_END), (GRPC_START, GRPC_END)):
        start, end = previous.find(start_mark), previous.find(end_mark)
        if start >= 0 and end > start:  # sections with runs of their own are kept
            splice(args.out, previous[start:end + len(end_mark) + 1], start_mark, end_mark)
    # Dynamic batching: measured in this run too (its own server, same clients).
    splice(args.out, bench_batching(args.quick, args.batch_delay_us), BATCHING_START,
           BATCHING_END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
