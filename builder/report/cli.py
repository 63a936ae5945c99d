# SPDX-License-Identifier: Apache-2.0
"""`python -m mlos_build.report {run,render}` (and `mlos-build report ...` once wired)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from mlos_build.report.contention import WHERES, ClientPriorityError
from mlos_build.report.load import PROTOCOLS
from mlos_build.report.render import render_html
from mlos_build.report.service import ServiceError, Target
from mlos_build.report.suite import SCHEMA, SuiteSettings, run_suite


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    defaults = SuiteSettings()
    parser = argparse.ArgumentParser(
        prog="mlos-build report",
        description="Benchmark a running MLOS Core and write results JSON + a self-contained "
                    "HTML report, or render several results side by side.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the benchmark suite against a running service")
    run.add_argument("--url", default="http://127.0.0.1:8080",
                     help="REST base URL (a forwarded guest port works) [%(default)s]")
    run.add_argument("--grpc-url", default=None,
                     help="gRPC host:port [the REST host, port 8081]")
    run.add_argument("--api-key", default=os.environ.get("MLOS_API_KEY"),
                     help="bearer token if the service has one [$MLOS_API_KEY]")
    run.add_argument("--out", type=Path, default=Path("validation-report"),
                     help="directory for results.json and report.html [%(default)s]")
    run.add_argument("--label", help="name of this run in reports [the runtime_mode]")
    run.add_argument("--compare-with", type=Path, nargs="*", default=[],
                     help="earlier results.json files to render side by side with this run")
    run.add_argument("--wait", type=float, default=60.0,
                     help="seconds to wait for /health to answer [%(default)s]")
    run.add_argument("--repetitions", type=int, default=defaults.repetitions)
    run.add_argument("--requests", type=int, default=defaults.requests,
                     help="requests per repetition [%(default)s]")
    run.add_argument("--warmup", type=int, default=defaults.warmup)
    run.add_argument("--concurrency", type=_ints, default=defaults.concurrency,
                     help="comma-separated [1,8]")
    run.add_argument("--protocols", type=_names, default=defaults.protocols,
                     help=f"comma-separated subset of {','.join(PROTOCOLS)}")
    run.add_argument("--models", type=_names, default=None,
                     help="only these models [all ready ONNX models in /v2/repository/index]")
    run.add_argument("--no-contention", action="store_true",
                     help="skip the contended repetitions")
    run.add_argument("--hogs", type=int, default=defaults.hogs,
                     help="CPU hog processes for contended repetitions [%(default)s]")
    run.add_argument("--mem-hogs", type=int, default=defaults.mem_hogs,
                     help="memory-bandwidth hogs beside the CPU hogs [%(default)s]")
    run.add_argument("--mem-hog-mib", type=float, default=defaults.mem_hog_mib,
                     help="each memory hog copies between two buffers of this size "
                          "[%(default)s]")
    run.add_argument("--hogs-where", choices=WHERES, default="local",
                     help="local: hogs beside a local service; host: on the QEMU host of a "
                          "guest; command: --hog-command starts them on the target")
    run.add_argument("--hog-command",
                     help="shell command that runs hogs on the target until stopped; {n} is "
                          "replaced by --hogs (with --hogs-where command)")
    run.add_argument("--tensor-model", help="model for the large-tensor series "
                     "[first with one dynamic FP32 input]")
    run.add_argument("--tensor-sizes-mib", type=_floats, default=defaults.tensor_sizes_mib,
                     help="comma-separated, empty to skip [1,4,16]")
    run.add_argument("--tensor-requests", type=int, default=defaults.tensor_requests)
    run.add_argument("--json-requests", type=int, default=defaults.json_requests)
    run.add_argument("--json-max-mib", type=float, default=defaults.json_max_mib)
    run.add_argument("--no-heavy-model", action="store_true",
                     help="do not register the heavy-compute model (mlos-bench-heavy)")
    run.add_argument("--no-llm", action="store_true", help="skip /v1 LLM completions")
    run.add_argument("--llm-requests", type=int, default=defaults.llm_requests,
                     help="serial completions per LLM repetition [%(default)s]")
    run.add_argument("--llm-max-tokens", type=int, default=defaults.llm_max_tokens)
    run.add_argument("--client-rt-priority", type=int, default=0, metavar="N",
                     help="run the load generator at SCHED_FIFO N (root), below the "
                     "service's rt_priority, so hogs beside it do not delay the "
                     "measurement itself; 0: as started [0]")

    render = sub.add_parser("render", help="render results JSON files into one HTML report")
    render.add_argument("results", type=Path, nargs="+", help="results.json files, one per run")
    render.add_argument("--out", type=Path, default=Path("report.html"))
    render.add_argument("--title")
    render.add_argument("--note", action="append", default=[],
                        help="a paragraph shown under the verdict table (repeatable): what "
                        "the figures mean, where a diagnosis is written")
    return parser


def load_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"mlos-build report: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SystemExit(f"mlos-build report: {path} is not an MLOS results file "
                         f"(expected schema {SCHEMA!r})")
    return data


def _cmd_run(args: argparse.Namespace) -> int:
    grpc_url = args.grpc_url
    if grpc_url is None:
        host = urllib.parse.urlsplit(args.url if "://" in args.url
                                     else "http://" + args.url).hostname
        grpc_url = f"{host}:8081"
    bad = [p for p in args.protocols if p not in PROTOCOLS]
    if bad:
        raise SystemExit(f"mlos-build report: unknown protocol {bad[0]!r}; "
                         f"choose from {', '.join(PROTOCOLS)}")
    if args.hogs_where == "command" and not args.hog_command:
        raise SystemExit("mlos-build report: --hogs-where command needs --hog-command")
    settings = SuiteSettings(
        repetitions=args.repetitions, requests=args.requests, warmup=args.warmup,
        concurrency=args.concurrency, protocols=args.protocols, models=args.models,
        contention=not args.no_contention, hogs=args.hogs, mem_hogs=args.mem_hogs,
        mem_hog_mib=args.mem_hog_mib, hogs_where=args.hogs_where,
        hog_command=args.hog_command, tensor_model=args.tensor_model,
        tensor_sizes_mib=args.tensor_sizes_mib, tensor_requests=args.tensor_requests,
        json_requests=args.json_requests, json_max_mib=args.json_max_mib,
        heavy_model=not args.no_heavy_model, llm=not args.no_llm,
        llm_requests=args.llm_requests, llm_max_tokens=args.llm_max_tokens,
        client_rt_priority=args.client_rt_priority)
    previous = [load_results(p) for p in args.compare_with]
    target = Target(args.url, grpc_url, args.api_key)
    try:
        results = run_suite(target, settings, args.label, wait_s=args.wait)
    except ServiceError as exc:
        hint = (f"is mlos-core serving at {args.url}? (for a guest: boot it with the "
                "service's ports forwarded, see docs/validation-report.md)")
        if "HTTP 401" in str(exc):
            hint = "the service wants an API key: pass --api-key or set $MLOS_API_KEY"
        print(f"mlos-build report: {exc}\n  hint: {hint}", file=sys.stderr)
        return 1
    except ClientPriorityError as exc:
        print(f"mlos-build report: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    html_path = args.out / "report.html"
    html_path.write_text(render_html(previous + [results]))
    print(f"{json_path}\n{html_path}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    runs = [load_results(p) for p in args.results]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_html(runs, args.title, args.note))
    print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: `mlos-build report ...` passes its remaining arguments here."""
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    return _cmd_render(args)
