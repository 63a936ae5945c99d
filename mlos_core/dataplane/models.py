# SPDX-License-Identifier: Apache-2.0
"""Model lifecycle: load, unload, register and delete model versions from the repository,
and find the backend that serves a request (the one lookup every request kind uses).
What a model's config means for serving it (version policy, tensors, batching) is
model_config.py's."""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.base import Backend, ModelSource, TensorSpec
from ..errors import (
    InvalidInputError,
    MLOSError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from ..kernel.modes import KernelModes
from ..plugins import PluginManager
from ..registry import ImportedFile, ModelRepository, RepositoryModel
from ..settings import Settings
from .model_config import (
    ModelIO,
    backend_config,
    model_io,
    parse_override,
    repository_config,
    select_versions,
    triton_config,
)

log = logging.getLogger(__name__)


@dataclass
class ModelState:
    name: str
    state: str = "UNAVAILABLE"  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""
    versions: dict[str, Backend] = field(default_factory=dict)

    @property
    def latest(self) -> Backend | None:
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


class ModelLifecycle:
    """The models half of the DataPlane (mixed into it; the state is set up there)."""

    settings: Settings
    plugins: PluginManager
    repository: ModelRepository
    kernel: KernelModes
    models: dict[str, ModelState]
    #: Upstream MLOS model ids that are not repository names -> the name (registry.py)
    model_ids: dict[str, str]
    draining: bool
    _model_lock: threading.Lock

    def _forget_backend(self, backend: Backend) -> None:
        """Per-backend state the data plane keeps (the inline-compute measurements)."""

    def _serve_as(self, backend: Backend, io: ModelIO) -> None:
        """Per-backend serving state (TensorInference: served tensors, the batcher)."""

    def served_io(self, backend: Backend) -> ModelIO:
        return ModelIO.of(backend)

    # ---- models ----------------------------------------------------------------------------
    def load_model(self, name: str, config: str | None = None) -> None:
        """(Re)load a model's versions from the repository, as its config says
        (model_config.py: the versions its version policy selects, its tensors and
        batching). `config`: Triton's configuration override (JSON text), layered over
        the repository's config for this load only; a bad one is an InvalidInputError and
        the versions serving now keep serving."""
        repo_model = self.repository.get(name)
        if config is not None:
            if repo_model.error:
                raise ModelLoadError(repo_model.error)
            repo_model.config = parse_override(config, name, repo_model.config)
        with self._model_lock:
            state = self.models.setdefault(name, ModelState(name))
        backends = self._load_versions(repo_model, override=config is not None)
        # Fields MLOS does not apply are said once per load: in the log and as the reason
        # the repository index gives for this (ready) model.
        warnings = sorted({w for b in backends.values() for w in self.served_io(b).warnings})
        reason = ""
        if warnings:
            reason = "config fields not applied by MLOS: " + ", ".join(warnings)
            log.warning("model %s: %s", name, reason)
        with self._model_lock:
            old = state.versions
            state.versions = backends
            state.state = "READY"
            state.reason = reason
        for version, backend in old.items():
            if backends.get(version) is not backend:
                self._unload_backend(backend)

    def _unload_backend(self, backend: Backend) -> None:
        self._forget_backend(backend)
        backend.unload()
        self.kernel.release_model(id(backend))

    def _load_versions(self, model: RepositoryModel,
                       override: bool = False) -> dict[str, Backend]:
        """Every version the config selects, loaded and serving as the config says;
        `override`: the config holds a load override (its contradictions with the model
        are then the client's InvalidInputError)."""
        if model.error:
            raise ModelLoadError(model.error)
        if not model.versions:
            raise ModelLoadError(f"model {model.name!r} has no version directory (e.g. 1/)")
        try:
            versions = select_versions(model.name, repository_config(model.config, model.name),
                                       model.versions)
        except ModelLoadError as exc:
            if override:
                raise InvalidInputError(f"config override: {exc}") from None
            raise
        loaded: dict[str, Backend] = {}
        try:
            for version in versions:
                path = model.path / version
                config = backend_config(model.config)
                cls, file = self.plugins.select(path, config)
                source = ModelSource(model.name, version, path, config, file, self.settings)
                backend = cls(source)
                # Threads a backend starts for its compute (llama.cpp's decode thread)
                # are latency-critical under the scheduler, with the team each starts.
                backend.compute_scope = functools.partial(self.kernel.compute_thread,
                                                          model.name)
                # The GPU manager's lease decides the device and memory limit the backend
                # gets (config["gpu_lease"]); no GPU: an empty device, the CPU.
                lease = self.kernel.place_model(id(backend), model.name, model.config)
                if lease:
                    config["gpu_lease"] = lease
                try:
                    # Native threads the load starts (ONNX Runtime's intra-op pool) are
                    # registered with the scheduler for this backend until it unloads.
                    with self.kernel.model_load(id(backend), model.name):
                        backend.load()
                except MLOSError:
                    self.kernel.release_model(id(backend))
                    raise
                except Exception as exc:  # a plugin's own error: still a load failure
                    self.kernel.release_model(id(backend))
                    raise ModelLoadError(f"{model.name} v{version}: {exc}") from exc
                loaded[version] = backend
                try:
                    io = model_io(model.name, config, backend)
                except ModelLoadError as exc:
                    if override:
                        raise InvalidInputError(f"config override: {exc}") from None
                    raise
                self._serve_as(backend, io)
        except Exception:
            for backend in loaded.values():
                self._unload_backend(backend)
            raise
        return loaded

    def unload_model(self, name: str) -> None:
        with self._model_lock:
            state = self.models.get(name)
            if state is None:
                self.repository.get(name)  # raises ModelNotFoundError when unknown
                return
            old, state.versions = state.versions, {}
            state.state, state.reason = "UNAVAILABLE", "unloaded"
        for backend in old.values():
            self._unload_backend(backend)

    # ---- upstream MLOS model ids ---------------------------------------------------------
    def remember_model_id(self, model: RepositoryModel) -> None:
        model_id = model.config.get("model_id")
        if isinstance(model_id, str) and model_id != model.name:
            self.model_ids[model_id] = model.name

    def model_name_for(self, model_id: str) -> str:
        """The repository name of an upstream MLOS id (a plain name is its own)."""
        return self.model_ids.get(model_id, model_id)

    def model_id_for(self, name: str) -> str:
        for model_id, owner in self.model_ids.items():
            if owner == name:
                return model_id
        return name

    def register_model(
        self,
        name: str,
        files: list[tuple[str, Path | bytes | ImportedFile]],
        version: str | None = None,
        config: dict[str, Any] | None = None,
        load: bool = True,
        model_id: str | None = None,
    ) -> tuple[str, str]:
        """Add a version; `model_id` (upstream MLOS's `namespace/name@version`) is kept in
        the model's config, and a name another id already holds is refused."""
        if model_id is not None and model_id != name:
            held = self.model_id_for(name)
            if held not in (name, model_id):
                raise InvalidInputError(
                    f"model id {model_id!r} would be stored as {name!r}, which holds "
                    f"{held!r}; choose another id")
            config = {**(config or {}), "model_id": model_id}
        name, version = self.repository.add_version(
            name, files, version, config, check=self._load_check if load else None)
        with self._model_lock:
            self.models.setdefault(name, ModelState(name))
        if model_id is not None and model_id != name:
            self.model_ids[model_id] = name
        if load:
            try:
                self.load_model(name)
            except MLOSError:
                # Registration of a file no backend can load must not leave a broken model.
                self.repository.delete(name, version)
                if not self.repository.get(name).versions:
                    self.repository.delete(name)
                    self.models.pop(name, None)
                    self._forget_model_id(name)
                raise
        return name, version

    def _load_check(self, staged: RepositoryModel) -> None:
        """A staged version must load before it is renamed into the repository: a crash
        between the rename and the real load then leaves a model that loads."""
        for backend in self._load_versions(staged).values():
            self._unload_backend(backend)

    def _forget_model_id(self, name: str) -> None:
        for model_id in [i for i, owner in self.model_ids.items() if owner == name]:
            del self.model_ids[model_id]

    def delete_model(self, name: str, version: str | None = None) -> None:
        if version is None:
            self.unload_model(name)
            self.repository.delete(name)
            self.models.pop(name, None)
            self._forget_model_id(name)
        else:
            self.repository.delete(name, version)
            self.load_model(name)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        index = []
        names = {m.name for m in self.repository.scan()} | set(self.models)
        for name in sorted(names):
            state = self.models.get(name) or ModelState(name)
            if ready_only and state.state != "READY":
                continue
            entry: dict[str, Any] = {"name": name, "state": state.state, "reason": state.reason}
            latest = state.latest
            if latest is not None:
                entry["version"] = latest.source.version
            index.append(entry)
        return index

    def backend(self, name: str, version: str | None = None) -> Backend:
        state = self.models.get(name)
        if state is None:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version:
            backend = state.versions.get(version)
            if backend is None:
                if state.state == "READY":
                    raise ModelNotFoundError(f"model {name!r} has no loaded version {version!r}")
                raise ModelNotReadyError(f"model {name!r} is not loaded ({state.reason})")
        else:
            backend = state.latest
            if backend is None:
                raise ModelNotReadyError(
                    f"model {name!r} is not loaded" + (f" ({state.reason})" if state.reason else "")
                )
        if not backend.ready:
            raise ModelNotReadyError(f"model {name!r} is not ready")
        return backend

    def models_with(self, capability: str) -> list[str]:
        """Names of loaded models whose backend has `capability` (for capability routers,
        e.g. the OpenAI API lists the text-generation models)."""
        names = []
        for name, state in sorted(self.models.items()):
            backend = state.latest
            if backend is not None and capability in getattr(backend, "capabilities", ()):
                names.append(name)
        return names

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            return self.backend(name, version).ready and not self.draining
        except ModelNotReadyError:
            return False

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model's configuration in Triton's JSON form, one answer for REST's
        `/v2/models/{m}/config` and gRPC ModelConfig (model_config.triton_config)."""
        backend = self.backend(name, version)
        return triton_config(name, backend, self.served_io(backend))

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        backend = self.backend(name, version)
        state = self.models[name]

        def specs(items: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                    for t in items]

        io = self.served_io(backend)
        return {
            "name": name,
            "versions": sorted(state.versions, key=int),
            "platform": backend.name,
            "inputs": specs(io.inputs),
            "outputs": specs(io.outputs),
        }

