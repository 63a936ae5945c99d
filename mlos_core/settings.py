# SPDX-License-Identifier: Apache-2.0
"""The service's settings: one typed object read from a YAML file, the environment
(MLOS_*) and command-line flags (highest wins). The CLI builds its flags from these
fields, so `mlos-core serve --help` cannot drift from what the service reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

#: The most threads any one pool setting may ask for (each is a real OS thread).
MAX_THREADS = 1024

DEFAULT_CONFIG_FILE = Path("/etc/mlos/core.yaml")


class Settings(BaseSettings):
    """MLOS Core settings. YAML keys and MLOS_* environment names equal the field names."""

    model_config = SettingsConfigDict(env_prefix="MLOS_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="address the REST and gRPC servers bind")
    rest_port: int = Field(8080, ge=0, le=65535, description="REST port (0: pick a free one)")
    grpc_port: int = Field(
        8081, ge=0, le=65535, description="gRPC port (0: pick a free one)"
    )
    grpc_enabled: bool = Field(True, description="serve the KServe v2 gRPC protocol")
    model_repository: Path = Field(
        Path("/var/lib/mlos/models"),
        description="Triton-style model repository: <repo>/<model>/<version>/<file>",
    )
    sysfs_root: Path = Field(
        Path("/sys"), description="where to read module/mlos_ml/parameters (tests: a fixture)"
    )
    api_key: str | None = Field(
        None, description="if set, every request except health needs 'Authorization: Bearer KEY'"
    )
    api_key_file: Path | None = Field(
        None, description="read api_key from this file (its first line), e.g. a systemd "
        "credential; not together with api_key",
    )
    max_request_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="largest accepted request body (413 above)"
    )
    max_concurrency: int = Field(
        64, gt=0, le=MAX_THREADS,
        description="inference requests in flight before new ones get 503 (gRPC serves "
        "them on as many threads)",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="per-request inference timeout in seconds (504 after)"
    )
    inference_threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="threads running backends (0: one per CPU core)"
    )
    inline_compute_us: float = Field(
        200.0, ge=0,
        description="models whose recent compute time is below this many microseconds run "
        "on the receiving thread, skipping the hand-off to the inference pool (0: never)",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, how long to wait for in-flight requests"
    )
    # Limits against slow or amplifying clients (docs/security.md, "Limits").
    max_connections: int = Field(
        4096, gt=0, description="open connections per port (REST and gRPC each); more are "
        "closed at once, REST with a 503 (keep the unit's LimitNOFILE above twice it)",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a client has to send a request's headers (the "
        "connection is closed after)",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="seconds a client has to send a whole request body once "
        "its headers are in (408 after)",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="seconds an idle keep-alive connection stays open"
    )
    grpc_connection_age_s: float = Field(
        120.0, gt=0, description="gRPC connections are asked to reconnect (GOAWAY) after "
        "this long; calls in flight then get body_timeout_s + request_timeout_s to finish "
        "before the connection is closed (bounds how long a stalled call holds a connection)",
    )
    max_json_values: int = Field(
        4 * 1024 * 1024, gt=0, description="values one JSON body may hold (413 above): "
        "bounds the memory a small, compressed JSON body can grow into",
    )
    max_tensor_elements: int = Field(
        256 * 1024 * 1024, gt=0, description="elements one input tensor may hold (413 above)"
    )
    max_bytes_elements: int = Field(
        1024 * 1024, gt=0, description="BYTES elements one request may hold in all its "
        "inputs (413 above; each is a Python object)",
    )
    load_models_at_start: bool = Field(True, description="load every model found at start")
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories POST /models/register may import a 'path' from (comma "
        "list in flags and MLOS_IMPORT_ROOTS; empty: registration by path is refused, "
        "uploads still work)",
    )
    import_max_bytes: int = Field(
        16 << 30, gt=0,
        description="largest model version registration by path may copy, bytes (413 above)",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    # mlos_ml kernel module (docs/kernel-modes.md)
    mlos_ml_device: str = Field("/dev/mlos-ml", description="the mlos_ml device node")
    kernel_features: str = Field(
        "memory,scheduler,gpu",
        description="mlos_ml features to use when the module offers them (comma list of "
        "memory, scheduler, gpu; empty: none)",
    )
    tensor_pool_mb: int = Field(
        128, ge=0, description="pinned mlos_ml pool for tensor buffers, MiB (0: no pool)"
    )
    reserved_cpus: str = Field(
        "", description="CPU list for latency-critical inference threads, e.g. '1' or '2-3' "
        "(empty: the module's reserved_cpus parameter)",
    )
    # Defaults for LLM (llama.cpp) models; a model's config overrides each one.
    llm_context_size: int = Field(
        2048, ge=0, description="LLM context size in tokens (0: the model's training context)"
    )
    llm_threads: int = Field(
        0, ge=0, le=MAX_THREADS, description="LLM decoding threads (0: every core)")
    llm_batch_size: int = Field(512, gt=0, description="LLM prompt-processing batch size")
    llm_gpu_layers: int = Field(0, ge=-1, description="LLM layers offloaded to a GPU (-1: all)")
    llm_queue_size: int = Field(
        16, ge=0, description="LLM requests that may wait per model before 503"
    )
    llm_parallel: int = Field(
        0, ge=0, le=256, description="LLM requests decoded together per model, each with "
        "the whole context (0: one per 512 tokens of context, 1 to 4, at most 16384 KV "
        "tokens in all)",
    )
    llm_prompt_cache: bool = Field(
        False, description="LLM requests start after the prompt prefix a slot's KV cache "
        "shares with them (faster; greedy texts may then depend on what ran before)",
    )

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("import_roots")
    @classmethod
    def _absolute_roots(cls, value: list[Path]) -> list[Path]:
        for root in value:
            if not root.is_absolute():
                raise ValueError(f"import root {str(root)!r} must be an absolute path")
        return value

    @model_validator(mode="before")
    @classmethod
    def _read_api_key_file(cls, data: Any) -> Any:
        # A key in a file keeps it out of the environment and the YAML (a metal image hands
        # the service its root-only key file as a systemd credential).
        if not isinstance(data, dict) or not data.get("api_key_file"):
            return data
        path = Path(data["api_key_file"])
        if data.get("api_key"):
            raise ValueError("api_key and api_key_file are both set: give one")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"api_key_file {path}: {exc}") from exc
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"api_key_file {path} is empty")
        return {**data, "api_key": key}

    @property
    def threads(self) -> int:
        return self.inference_threads or max(1, os.cpu_count() or 1)

    @property
    def module_parameters_dir(self) -> Path:
        return self.sysfs_root / "module" / "mlos_ml" / "parameters"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `config_file` (YAML), the environment and `overrides` (flags).

    Without an explicit file, /etc/mlos/core.yaml is read when it exists (or the file named
    by MLOS_CONFIG). A missing explicit file or an unknown key is an error.
    """
    if config_file is None:
        env_file = os.environ.get("MLOS_CONFIG")
        if env_file:
            config_file = Path(env_file)
        elif DEFAULT_CONFIG_FILE.is_file():
            config_file = DEFAULT_CONFIG_FILE
    if config_file is not None and not Path(config_file).is_file():
        raise FileNotFoundError(f"config file {config_file} does not exist")
    yaml_file = config_file

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if yaml_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
            return tuple(sources)

    values = {k: v for k, v in overrides.items() if v is not None}
    return _Loaded(**values)
