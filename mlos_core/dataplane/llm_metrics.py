# SPDX-License-Identifier: Apache-2.0
"""LLM metrics in Prometheus text format: prompt and generated token counters, requests by
outcome, and time to first token. Rendered into the service's /metrics."""

from __future__ import annotations

import threading
from collections import defaultdict

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class LLMMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.reused_prompt_tokens: dict[str, int] = defaultdict(int)
        self.generated_tokens: dict[str, int] = defaultdict(int)
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._ttft_buckets: dict[str, list[int]] = {}
        self._ttft_sum: dict[str, float] = defaultdict(float)
        self._ttft_count: dict[str, int] = defaultdict(int)

    def record(
        self,
        model: str,
        endpoint: str,
        outcome: str,
        prompt_tokens: int = 0,
        generated_tokens: int = 0,
        ttft_s: float | None = None,
        reused_prompt_tokens: int = 0,
    ) -> None:
        with self._lock:
            self.prompt_tokens[model] += prompt_tokens
            self.reused_prompt_tokens[model] += reused_prompt_tokens
            self.generated_tokens[model] += generated_tokens
            self.requests[(model, endpoint, outcome)] += 1
            if ttft_s is not None:
                buckets = self._ttft_buckets.setdefault(model, [0] * len(TTFT_BUCKETS))
                for i, bound in enumerate(TTFT_BUCKETS):
                    if ttft_s <= bound:
                        buckets[i] += 1
                self._ttft_sum[model] += ttft_s
                self._ttft_count[model] += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP mlos_llm_prompt_tokens_total Prompt tokens processed.",
                "# TYPE mlos_llm_prompt_tokens_total counter",
            ]
            lines += [
                f'mlos_llm_prompt_tokens_total{{model="{_escape(m)}"}} {v}'
                for m, v in sorted(self.prompt_tokens.items())
            ]
            lines += [
                "# HELP mlos_llm_prompt_tokens_reused_total Prompt tokens not evaluated "
                "again: an earlier request left their KV cache (prompt_cache).",
                "# TYPE mlos_llm_prompt_tokens_reused_total counter",
            ]
            lines += [
                f'mlos_llm_prompt_tokens_reused_total{{model="{_escape(m)}"}} {v}'
                for m, v in sorted(self.reused_prompt_tokens.items())
            ]
            lines += [
                "# HELP mlos_llm_generated_tokens_total Tokens generated.",
                "# TYPE mlos_llm_generated_tokens_total counter",
            ]
            lines += [
                f'mlos_llm_generated_tokens_total{{model="{_escape(m)}"}} {v}'
                for m, v in sorted(self.generated_tokens.items())
            ]
            lines += [
                "# HELP mlos_llm_requests_total LLM requests by endpoint and outcome.",
                "# TYPE mlos_llm_requests_total counter",
            ]
            lines += [
                f'mlos_llm_requests_total{{model="{_escape(m)}",endpoint="{e}",'
                f'outcome="{o}"}} {v}'
                for (m, e, o), v in sorted(self.requests.items())
            ]
            lines += [
                "# HELP mlos_llm_time_to_first_token_seconds From request arrival to the "
                "first generated token.",
                "# TYPE mlos_llm_time_to_first_token_seconds histogram",
            ]
            for m, buckets in sorted(self._ttft_buckets.items()):
                label = f'model="{_escape(m)}"'
                for bound, count in zip(TTFT_BUCKETS, buckets, strict=True):
                    lines.append(
                        f'mlos_llm_time_to_first_token_seconds_bucket{{{label},le="{bound}"}} '
                        f"{count}"
                    )
                lines.append(
                    f'mlos_llm_time_to_first_token_seconds_bucket{{{label},le="+Inf"}} '
                    f"{self._ttft_count[m]}"
                )
                lines.append(
                    f"mlos_llm_time_to_first_token_seconds_sum{{{label}}} {self._ttft_sum[m]:.6f}"
                )
                lines.append(
                    f"mlos_llm_time_to_first_token_seconds_count{{{label}}} {self._ttft_count[m]}"
                )
        return "\n".join(lines) + "\n"
