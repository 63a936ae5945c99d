# SPDX-License-Identifier: Apache-2.0
"""One self-contained HTML page from one or more results documents.

Inline CSS and inline SVG only: the page makes no request when opened (no scripts,
fonts, images or styles from elsewhere), so it can be committed and mailed as is.
"""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from typing import Any

from mlos_build.report import findings, heavy, sched_probe, verdict
from mlos_build.report.charts import PALETTE, Range, legend, line_chart, range_chart
from mlos_build.report.modes import mode_card
from mlos_build.report.stats import fmt, spread
from mlos_build.report.tensors import TRANSPORT_LABELS, TRANSPORTS

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;
  padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
.sub{color:#666}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:.6em 0 1.4em}
.card{border:1px solid #ccc;border-radius:6px;padding:.5em .8em;min-width:11em;
  background:#fafafa}
.card .k{font-size:.75em;text-transform:uppercase;color:#666;letter-spacing:.04em}
.card .v{font-size:1.05em;font-weight:600;word-break:break-word}
.card.mode{border:2px solid #1f77b4;background:#eef5fc}
.card.mode .v{font-size:1.2em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:right}
th{background:#f0f0f0} td.l,th.l{text-align:left}
.spread{color:#777;font-size:.85em}
ul.findings li{margin:.3em 0} .win{color:#17631d} .loss{color:#a11} .tie{color:#8a5a00}
details.group{margin:.4em 0} details.group summary{cursor:pointer;font-weight:600}
table.verdict td{text-align:center} table.verdict .word{font-weight:600}
.legend{font-size:.85em;margin:.3em 0}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
svg.chart{display:block;margin:.4em 0 1.2em;max-width:100%;height:auto}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
.err{color:#a11}
p.note{background:#fff8e6;border-left:4px solid #e0a800;padding:.4em .7em}
"""


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "<td>—</td>"
    return (f"<td>{fmt(s['median'])} <span class=\"spread\">"
            f"[{fmt(s['min'])}–{fmt(s['max'])}]</span></td>")


def _card(key: str, value: Any, cls: str = "", attrs: str = "") -> str:
    return (f'<div class="card {cls}"{attrs}><div class="k">{escape(key)}</div>'
            f'<div class="v">{escape(str(value))}</div></div>')


def _module_text(module: Any) -> str:
    if module is None:
        return "not loaded"
    if isinstance(module, dict):
        params = module.get("parameters", module)
        if isinstance(params, dict):
            return ", ".join(f"{k}={v}" for k, v in params.items()) or "loaded"
    return str(module)


def release_versions(runs: list[dict[str, Any]], names: list[str]) -> str:
    out = ['<section id="release-versions"><h2>Release Versions</h2>',
           '<p class="sub">Every value below comes from the service itself '
           "(<code>GET /health</code> and KServe server metadata), not from how the run was "
           "started.</p>"]
    for run, name in zip(runs, names, strict=True):
        v = run.get("versions", {})
        mode = run.get("runtime_mode")
        features = v.get("features")
        if isinstance(features, dict):
            # Core reports each feature as {"in_use": bool, "reason": ...}; older ones as bools.
            features = ", ".join(
                k for k, on in features.items()
                if (on.get("in_use") if isinstance(on, dict) else on)
            ) or "none"
        elif isinstance(features, list):
            features = ", ".join(map(str, features)) or "none"
        out.append(f"<h3>{escape(name)}</h3><div class=\"cards\">")
        out.append(_card("Runtime Mode", mode_card(mode), "mode",
                         f' data-runtime-mode="{escape(str(mode))}"'))
        out.append(_card("MLOS", v.get("mlos", "unknown")))
        out.append(_card("Kernel (target)", v.get("kernel", "unknown")))
        module = _module_text(v.get("module"))
        if v.get("module_version"):
            module = f"{v['module_version']}: {module}"
        out.append(_card("mlos_ml module", module))
        out.append(_card("ONNX Runtime", v.get("onnxruntime", "unknown")))
        out.append(_card("llama.cpp", v.get("llama_cpp", "unknown")))
        if features:
            out.append(_card("Features in use", features))
        out.append(_card("Target", run.get("target", {}).get("rest_url", "?")))
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f}%"


def _verdict_cell(c: verdict.Cell) -> str:
    cls = {"better": "win", "worse": "loss", "no clear difference": "tie"}.get(c.word, "")
    if c.cand is None:
        return f'<td class="{cls}"><span class="word">{escape(c.word)}</span></td>'
    return (f'<td class="{cls}">{_pct(c.change_pct)} <span class="spread">'
            f"[{_pct(c.low_pct)}…{_pct(c.high_pct)}]</span><br>"
            f'<span class="word">{escape(c.word)}</span></td>')


def verdict_section(runs: list[dict[str, Any]], notes: list[str] | None = None) -> str:
    """The verdict table, first on the page when several runs are compared, with the
    renderer's notes under it (text, escaped)."""
    table = verdict.verdict_table(runs)
    out = ['<section id="verdict"><h2>Verdict: kernel modes against userspace</h2>']
    if table.base_name is None:
        out.append("<p>No run reports runtime_mode &#x27;userspace&#x27; on /health, so no "
                   "mode is compared against a userspace baseline.</p></section>")
        return "".join(out)
    head = table.headline
    where = (f"{escape(head.model)} over {'REST' if head.protocol == 'http' else 'gRPC'}, "
             f"concurrency {head.p99_concurrency} for p99 and "
             f"{head.throughput_concurrency} for throughput" if head else "no ONNX model")
    out.append(
        f'<p class="sub">Each cell: the mode\'s median against {escape(table.base_name)}\'s '
        "median, then <span class=\"spread\">[min…max]</span> of the mode's values against "
        "the same median, then the verdict: <b>better</b> or <b>worse</b> only when the "
        "two min–max ranges (over repetitions; over requests for shared memory) do not "
        f"overlap, else <b>no clear difference</b>. Latency and throughput columns: {where}; "
        "shared memory: the largest tensor of the series, p50 latency per request.</p>")
    header = "".join(f"<th>{escape(c.title)}</th>" for c in verdict.COLUMNS)
    base_cells = "".join(
        f"<td>{fmt(b['median'])} {c.unit} <span class=\"spread\">"
        f"[{fmt(b['min'])}–{fmt(b['max'])}]</span></td>" if b else "<td>not measured</td>"
        for c, b in zip(verdict.COLUMNS, table.baseline, strict=True))
    rows = [f'<tr><td class="l">{escape(table.base_name)} (baseline)</td>{base_cells}</tr>']
    rows += [f'<tr><td class="l">{escape(name)}</td>'
             + "".join(_verdict_cell(c) for c in cells) + "</tr>"
             for name, cells in table.rows]
    if not table.rows:
        rows.append(f'<tr><td class="l" colspan="{len(verdict.COLUMNS) + 1}">'
                    "no kernel-mode run to compare</td></tr>")
    out.append(f'<table class="verdict"><tr><th class="l">mode</th>{header}</tr>'
               + "".join(rows) + "</table>")
    out += [f'<p class="note">{escape(note)}</p>' for note in notes or []]
    out.append("</section>")
    return "".join(out)


def _group(title: str, items: list[findings.Finding]) -> str:
    counts = [f"{n} {word}" for word, n in (
        ("better", sum(f.level == "win" for f in items)),
        ("worse", sum(f.level == "loss" for f in items)),
        ("unclear", sum(f.level == "tie" for f in items))) if n]
    lis = "".join(f'<li class="{f.level}">{escape(f.text)}</li>' for f in items)
    summary = f"{title} ({len(items)} sentences" + (f": {', '.join(counts)}" if counts
                                                     else "") + ")"
    return (f'<details class="group"><summary>{escape(summary)}</summary>'
            f'<ul class="findings">{lis}</ul></details>')


def _findings_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    groups: list[tuple[str, list[findings.Finding]]] = []
    if len(runs) > 1:
        groups.append(("Kernel modes against userspace, configuration by configuration",
                       findings.compare_modes(runs)))
    groups.append(("Zero-copy against the copy paths",
                   [f for run, name in zip(runs, names, strict=True)
                    for f in findings.zero_copy(run, name)]))
    groups.append(("What contention costs each run",
                   [f for run, name in zip(runs, names, strict=True)
                    for f in [*findings.contention_effect(run, name),
                              *findings.llm_contention_effect(run, name)]]))
    body = "".join(_group(title, items) for title, items in groups if items)
    if not body:
        body = '<ul class="findings"><li class="info">Nothing was measured.</li></ul>'
    return ('<section id="findings"><h2>Findings</h2><p class="sub">Computed from the figures '
            "below, grouped and folded (open a group to read it). A mode beats another "
            "only when its whole min–max range over the repetitions is better.</p>"
            f"{body}</section>")


def _series_names(runs: list[dict[str, Any]], names: list[str]) -> list[tuple[int, bool, str]]:
    out = []
    for i, run in enumerate(runs):
        has_cont = any(b["contention"] for b in run.get("benchmarks", []))
        for contended in (False, True) if has_cont else (False,):
            label = names[i] if len(runs) > 1 else "run"
            out.append((i, contended, f"{label}, {'contended' if contended else 'quiet'}"))
    return out


def latency_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    indexes = [findings.bench_index(r) for r in runs]
    models = sorted({k[0] for ix in indexes for k in ix})
    out = ['<section id="latency"><h2>Latency and throughput per model</h2>']
    if not models:
        out.append("<p>No model was measured.</p></section>")
        return "".join(out)
    out.append('<p class="sub">Each cell: median over repetitions, then '
               "<span class=\"spread\">[min–max]</span>. Latency in ms, throughput in "
               "requests/s; each repetition's percentiles come from its own requests.</p>")
    series = _series_names(runs, names)
    colors = {s: PALETTE[n % len(PALETTE)] for n, s in enumerate(series)}
    for model in models:
        out.append(f"<h3>{escape(model)}</h3>")
        configs = sorted({(k[1], k[2]) for ix in indexes for k in ix if k[0] == model})
        rows = []
        for protocol, conc in configs:
            for i, contended, label in series:
                entry = indexes[i].get((model, protocol, conc, contended))
                if entry is None:
                    continue
                errs = sum(r.get("errors", 0) for r in entry["repetitions"])
                rows.append(
                    f'<tr><td class="l">{escape(protocol)}</td><td>{conc}</td>'
                    f'<td class="l">{escape(label)}</td><td>{len(entry["repetitions"])}</td>'
                    + "".join(_cell(findings.figure(entry, m))
                              for m in ("p50_ms", "p95_ms", "p99_ms"))
                    + _cell(findings.figure(entry, "throughput_rps"))
                    + f'<td{" class=err" if errs else ""}>{errs}</td></tr>')
        out.append('<table><tr><th class="l">protocol</th><th>concurrency</th>'
                   '<th class="l">run</th><th>reps</th><th>p50 ms</th><th>p95 ms</th>'
                   "<th>p99 ms</th><th>throughput req/s</th><th>errors</th></tr>"
                   + "".join(rows) + "</table>")
        out.append(legend([(label, colors[s]) for s in series for label in [s[2]]]))
        for metric, title, unit in (("p99_ms", "p99 latency", "ms"),
                                    ("p50_ms", "p50 latency", "ms"),
                                    ("throughput_rps", "throughput", "requests/s")):
            groups = []
            for protocol, conc in configs:
                ranges = []
                for s in series:
                    fig = findings.figure(indexes[s[0]].get((model, protocol, conc, s[1])),
                                          metric)
                    if fig is not None:
                        ranges.append(Range(s[2], colors[s], fig["min"], fig["median"],
                                            fig["max"]))
                if ranges:
                    groups.append((f"{protocol} c={conc}", ranges))
            out.append(range_chart(f"{model}: {title} (min–max over repetitions, "
                                   "tick = median)", groups, unit))
    out.append("</section>")
    return "".join(out)


def tensor_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    out = ['<section id="tensors"><h2>Large tensors: zero-copy vs copy</h2>',
           '<p class="sub">One request at a time. Shared memory: the tensor sits in a '
           "registered POSIX region (written once by the client, as a zero-copy producer "
           "would) and the request names it; the copy paths send it in the body.</p>"]
    any_points = False
    for run, name in zip(runs, names, strict=True):
        series = run.get("tensor_series") or {}
        points = series.get("points", [])
        out.append(f"<h3>{escape(name)}</h3>")
        if not points:
            out.append(f"<p>Not measured: {escape(str(series.get('skipped', 'not run')))}"
                       "</p>")
            continue
        any_points = True
        sizes = sorted({p["mib"] for p in points})
        lines = []
        for n, transport in enumerate(TRANSPORTS):
            vals: list[float | None] = []
            for size in sizes:
                p = next((p for p in points if p["transport"] == transport
                          and p["mib"] == size), None)
                vals.append(p.get("p50_ms") if p else None)
            if any(v is not None for v in vals):
                lines.append((TRANSPORT_LABELS[transport], PALETTE[n], vals))
        out.append(legend([(n_, c) for n_, c, _ in lines]))
        out.append(line_chart(f"{series.get('model')}: p50 latency by tensor size", sizes,
                              lines, "tensor size, MiB", "p50 latency, ms"))
        rows = []
        for p in sorted(points, key=lambda p: (p["mib"], TRANSPORTS.index(p["transport"]))):
            s = spread(p.get("samples_ms", []))
            note = p.get("error") or p.get("skipped") or ""
            rows.append(f'<tr><td>{p["mib"]:g}</td><td class="l">'
                        f'{escape(TRANSPORT_LABELS[p["transport"]])}</td>'
                        f'<td>{len(p.get("samples_ms", []))}</td>'
                        + (_cell(s) if s else "<td>—</td>")
                        + (f"<td>{fmt(p['p99_ms'])}</td>" if p.get("p99_ms") is not None
                           else "<td>—</td>")
                        + f'<td class="l{" err" if p.get("error") else ""}">'
                        f"{escape(note)}</td></tr>")
        out.append('<table><tr><th>MiB</th><th class="l">transport</th><th>requests</th>'
                   "<th>latency ms: median [min–max]</th><th>p99 ms</th>"
                   '<th class="l">note</th></tr>' + "".join(rows) + "</table>")
    if not any_points:
        out.append("<p>No large-tensor figures in these runs.</p>")
    out.append("</section>")
    return "".join(out)


def llm_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    rows = []
    for run, name in zip(runs, names, strict=True):
        llm = run.get("llm")
        if not llm:
            continue
        for part in llm.get("runs", []):
            reps = part["repetitions"]
            rows.append(f'<tr><td class="l">{escape(name)}</td><td class="l">'
                        f'{escape(llm["model"])}</td><td class="l">'
                        f'{"contended" if part["contention"] else "quiet"}</td>'
                        + _cell(spread([r.get("p50_ms") for r in reps]))
                        + _cell(spread([r.get("p99_ms") for r in reps]))
                        + _cell(spread([r.get("tokens_per_s") for r in reps]))
                        + f'<td>{sum(r.get("errors", 0) for r in reps)}</td></tr>')
    if not rows:
        return ""
    return ('<section id="llm"><h2>LLM completions (OpenAI route)</h2>'
            '<table><tr><th class="l">run</th><th class="l">model</th><th class="l">load</th>'
            "<th>p50 ms</th><th>p99 ms</th><th>tokens/s</th><th>errors</th></tr>"
            + "".join(rows) + "</table></section>")


SCHED_ROWS = 6  # thread groups shown per phase, most run time first


def _policy(group: dict[str, Any]) -> str:
    prio = f" {group['rt_priority']}" if group["policy"] in ("fifo", "rr") else ""
    return f"{group['policy']}{prio}"


def sched_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    """Where the service's threads ran during the heavy model's repetitions (sched_probe),
    a folded table per run: the measurement behind the scheduler's verdict."""
    parts = []
    for run, name in zip(runs, names, strict=True):
        rows = []
        for bench in run.get("benchmarks", []):
            merged = (sched_probe.merge(bench["repetitions"])
                      if bench["model"] == heavy.NAME else None)
            if merged is None:
                continue
            client = sched_probe.merge(bench["repetitions"], "sched_client")
            phase = (f'c{bench["concurrency"]} {bench["protocol"]} '
                     f'{"contended" if bench["contention"] else "quiet"}')
            cpu_wait = ", ".join(f'cpu{c["cpu"]} {fmt(c["wait_ms"])}' for c in merged["cpus"])
            shown = [("", g) for g in merged["threads"][:SCHED_ROWS]] + [
                ("client: ", g) for g in (client or {}).get("threads", [])[:2]]
            for i, (who, g) in enumerate(shown):
                seen = " ".join(f"{c}:{n}" for c, n in sorted(g["seen_on"].items()))
                rows.append(
                    f'<tr><td class="l">{escape(phase) if i == 0 else ""}</td>'
                    f'<td class="l">{escape(who + g["name"])} ×{g["threads"]}</td>'
                    f'<td class="l">{escape(_policy(g))}</td><td class="l">'
                    f'{escape(g["allowed"])}</td><td class="l">{escape(seen)}</td>'
                    f'<td>{fmt(g["run_ms"])}</td><td>{fmt(g["wait_ms"])}</td>'
                    f'<td>{fmt(g["wait_per_slice_ms"] or 0)}</td><td>{g["nonvoluntary"]}</td>'
                    f'<td class="l">{escape(cpu_wait) if i == 0 else ""}</td></tr>')
        if rows:
            probe = run.get("sched_probe") or {}
            parts.append(
                f"<details><summary>{escape(name)}: RT limit "
                f'{probe.get("sched_rt_runtime_us")} of {probe.get("sched_rt_period_us")} µs'
                "</summary><table><tr><th class=\"l\">phase</th><th class=\"l\">thread</th>"
                '<th class="l">policy</th><th class="l">may run on</th>'
                '<th class="l">seen on (samples)</th><th>run ms</th><th>run-queue wait ms</th>'
                '<th>wait per slice ms</th><th>preempted</th>'
                '<th class="l">run-queue wait per CPU, ms</th></tr>'
                + "".join(rows) + "</table></details>")
    if not parts:
        return ""
    return ('<section id="sched"><h2>Where the service\'s threads ran (heavy model)</h2>'
            "<p>Read from /proc in the guest while each repetition ran, summed over the "
            "repetitions of a phase: run time, time runnable but waiting for a CPU "
            "(schedstat), involuntary switches, and the CPU each thread was last seen on "
            f"every {sched_probe.SAMPLE_S * 1000:.0f} ms. The service's busiest threads, "
            "then the load generator's (\"client:\"): it runs in the same guest, so its own "
            "waits are part of every latency measured.</p>" + "".join(parts) + "</section>")


def _memory_hog_text(cont: dict[str, Any]) -> str:
    if not cont.get("memory_hogs"):
        return ""
    rate = (f", {fmt(cont['memory_hog_gib_s'])} GiB/s each measured alone"
            if cont.get("memory_hog_gib_s") else
            f" (bandwidth not measured: {cont.get('memory_hog_error', 'unknown')})")
    return (f", plus {cont['memory_hogs']} memory-bandwidth hog(s) copying between two "
            f"{fmt(cont.get('memory_hog_mib') or 0)} MiB buffers{escape(rate)}")


def _llm_method_text(llm: dict[str, Any] | None) -> str:
    if not llm:
        return ""
    threads = llm.get("threads") or {}
    reg = threads.get("registered") or {}
    if threads.get("scheduler_in_use"):
        seen = ", ".join(f"{n} {k}" for k, n in sorted(reg.items())) or "none seen"
        text = f"llama.cpp threads registered with mlos-ml during a completion: {seen}"
    else:
        text = ("llama.cpp threads not registered (scheduler not in use: "
                f"{threads.get('reason') or 'not reported'})")
    return (f"<li>LLM {escape(str(llm.get('model')))}: {llm.get('max_tokens')} tokens per "
            f"completion over {escape(str(llm.get('route')))}; {escape(text)}.</li>")


def _client_priority_text(host: dict[str, Any]) -> str:
    if host.get("policy") == "fifo":
        return f"at SCHED_FIFO {host.get('rt_priority')} (--client-rt-priority), "
    return f"at nice {host['nice']}, " if host.get("nice") is not None else ""


def method_section(runs: list[dict[str, Any]], names: list[str]) -> str:
    out = ['<section id="method"><h2>How this was measured</h2>']
    for run, name in zip(runs, names, strict=True):
        st = run.get("settings", {})
        cont = run.get("contention")
        host = run.get("client_host", {})
        where = {
            "local": "on the service's own machine (local service)",
            "host": "on the QEMU host, competing with the guest's vCPU threads",
            "command": "started on the target by a user-given command",
        }
        cont_text = ("none (contention disabled)" if not cont else
                     f"{cont.get('hogs')} busy-loop processes {where.get(cont.get('where'), '?')}"
                     + (f": <code>{escape(str(cont.get('command')))}</code>"
                        if cont.get("command") else "")
                     + (f" at nice {cont['nice']}" if cont.get("nice") is not None else "")
                     + _memory_hog_text(cont))
        heavy_info = run.get("heavy_model")
        heavy_text = ""
        if heavy_info:
            heavy_text = (f"<li>Heavy-compute model {escape(str(heavy_info.get('name')))}: "
                          f"{heavy_info.get('flops', 0) / 1e6:.0f} MFLOP a request, input "
                          f"{escape(str(heavy_info.get('input_shape')))}, "
                          + escape(heavy_info.get("error")
                                   or ("registered by this run (upload) and deleted after"
                                       if heavy_info.get("registered")
                                       else str(heavy_info.get("note", ""))))
                          + ".</li>")
        out.append(
            f"<h3>{escape(name)}</h3><ul>"
            f"<li>Run {escape(str(run.get('started_at')))} → "
            f"{escape(str(run.get('finished_at')))}; target "
            f"{escape(str(run.get('target', {}).get('rest_url')))} (REST), "
            f"{escape(str(run.get('target', {}).get('grpc_url')))} (gRPC).</li>"
            f"<li>Load: real tritonclient (KServe v2), protocols "
            f"{escape(', '.join(st.get('protocols', [])))}, concurrency "
            f"{escape(', '.join(map(str, st.get('concurrency', []))))}, "
            f"{st.get('repetitions')} repetitions of {st.get('requests')} requests after "
            f"{st.get('warmup')} warm-up requests; quiet and contended repetitions "
            "alternate.</li>"
            f"<li>Contention: {cont_text}.</li>{heavy_text}"
            + _llm_method_text(run.get("llm")) +
            f"<li>Load generator: {escape(str(host.get('hostname')))}, "
            f"{host.get('cpus')} CPUs, kernel {escape(str(host.get('kernel')))}, "
            + _client_priority_text(host) +
            f"load average at start {escape(str(host.get('loadavg')))}.</li>")
        for note in run.get("notes", []):
            out.append(f'<li class="err">{escape(note)}</li>')
        out.append("</ul><details><summary>/health as reported</summary><pre>"
                   + escape(json.dumps(run.get("health"), indent=2)) + "</pre></details>")
    out.append("</section>")
    return "".join(out)


def render_html(runs: list[dict[str, Any]], title: str | None = None,
                notes: list[str] | None = None) -> str:
    """The whole page for one run or several runs side by side."""
    if not runs:
        raise ValueError("no results to render")
    names = findings.run_names(runs)
    title = title or ("MLOS validation report" if len(runs) == 1
                      else "MLOS validation report: runtime modes side by side")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    body = [f"<h1>{escape(title)}</h1>",
            f'<p class="sub">Rendered {escape(now)} from {len(runs)} run(s): '
            f"{escape(', '.join(names))}.</p>",
            *([verdict_section(runs, notes)] if len(runs) > 1 else []),
            release_versions(runs, names), _findings_section(runs, names),
            latency_section(runs, names), sched_section(runs, names), tensor_section(runs, names),
            llm_section(runs, names), method_section(runs, names)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
