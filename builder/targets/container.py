# SPDX-License-Identifier: Apache-2.0
"""The container target: an OCI image of MLOS Core, as an oci-archive that `podman load`
and `docker load` (24 and later) accept.

mkosi 24.3 builds the root file system from the base distribution's packages and installs
the same MLOS wheel the disk images install (Format=oci: an OCI layout with one layer).
mkosi 24.3 cannot set an image's config, so umoci sets it (user, entrypoint, ports,
volume, environment, labels) and skopeo writes the layout as an oci-archive with its
name and tag. The image is the same for every variant: the runtime mode comes from the
host's module, whose /dev/mlos-ml the container is given (docs/container.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlos_build import __version__
from mlos_build.apt import load_distribution
from mlos_build.data import distribution_data, images_dir, load_profile, load_variant
from mlos_build.errors import BuildError
from mlos_build.render import DEFAULT_CACHE_DIR, ImageSpec, render
from mlos_build.runner import run
from mlos_build.targets.base import BuildResult, register
from mlos_build.targets.common import DEFAULT_OUTPUT_DIR, SYSTEM_PATH, update_checksums
from mlos_build.targets.mkosi_disk import MkosiDiskTarget

# The image carries no module: the host's module decides the mode.
IMAGE_VARIANT = "userspace"
CONTAINER_PROFILE = "vm"


@dataclass(frozen=True)
class ContainerImage:
    """images/distributions/container.yaml: what the image is, beside its packages."""

    image: str
    packages: tuple[str, ...]
    user: dict[str, Any]
    ports: tuple[int, ...]
    models: str
    memlock: int
    env: dict[str, str]


def load_container(command: str) -> tuple[ContainerImage, str, str]:
    """The container data, its base distribution and release."""
    data = distribution_data(command)
    try:
        user = data["user"]
        image = ContainerImage(
            image=str(data["image"]), packages=tuple(data["packages"]),
            user={"name": str(user["name"]), "uid": int(user["uid"]), "gid": int(user["gid"])},
            ports=tuple(int(p) for p in data["ports"]), models=str(data["models"]),
            memlock=int(data["memlock"]), env={k: str(v) for k, v in data["env"].items()})
        base, release = str(data["base"]), str(data["release"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BuildError(f"images/distributions/{command}.yaml lacks or mistypes {exc}",
                         hint="see the comments in images/distributions/container.yaml") from exc
    return image, base, release


def run_arguments(image: ContainerImage, reference: str, *, device_gid: int | None = None,
                  models_volume: str = "mlos-models", name: str = "mlos-core",
                  publish: dict[int, str] | None = None, detach: bool = False) -> list[str]:
    """`docker`/`podman` arguments that run MLOS Core from the image: its ports published
    (`publish` maps a container port to another host binding, e.g. "127.0.0.1:18080"),
    the model repository on a volume (a new named volume starts with the demo model), and
    with device_gid the host's /dev/mlos-ml, whose group (that number) the service joins.
    docs/container.md shows the same command; the tests run exactly this."""
    publish = publish or {}
    argv = ["run", *(["-d"] if detach else []), "--rm", "--name", name,
            *(arg for port in image.ports for arg in ("-p", f"{publish.get(port, port)}:{port}")),
            "-v", f"{models_volume}:{image.models}",
            "--ulimit", f"memlock={image.memlock}:{image.memlock}"]
    if device_gid is not None:
        argv += ["--device", "/dev/mlos-ml", "--group-add", str(device_gid)]
    return [*argv, reference]


@dataclass(frozen=True, kw_only=True)
class ContainerSpec(ImageSpec):
    """An ImageSpec of the base distribution (mirror, suites, LLM wheel cache), plus what
    makes it a container image."""

    container: ContainerImage

    @property
    def name(self) -> str:
        return f"{self.container.image}-{self.mlos_version}"

    @property
    def reference(self) -> str:
        """The image's name and tag, as the archive carries them."""
        return f"{self.container.image}:{self.mlos_version}"

    def packages(self) -> list[str]:
        packages = list(self.container.packages)
        if self.with_llm:
            packages += self.distribution.llm_packages
        return list(dict.fromkeys(packages))

    def context(self) -> dict[str, Any]:
        return {**super().context(), "container": self.container}


@register
class ContainerTarget(MkosiDiskTarget):
    """The MLOS Core OCI image; builds like the disk image up to mkosi's output."""

    name = "container"
    summary = "the MLOS Core {command} image (oci-archive for podman load / docker load)"
    spec: ContainerSpec
    mkosi_cache = "mkosi-container"
    tools = ["mkosi", "umoci", "skopeo"]
    disk_image = False  # an OCI archive: its SBOM, no block map or qcow2 of it

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str, *,
                      build: bool) -> None:
        parser.add_argument("--mirror", help="package mirror URL (default: the base "
                            "distribution's)")
        parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                            help=f"package, image and pip caches reused by rebuilds "
                            f"(default: {DEFAULT_CACHE_DIR}; the LLM wheel is shared with "
                            "the disk images of the same base release)")
        parser.add_argument("--with-llm", dest="with_llm", action="store_true", default=True,
                            help="install llama-cpp-python for LLMs, compiled once per base "
                            "release and then cached (the default)")
        parser.add_argument("--without-llm", dest="with_llm", action="store_false",
                            help="leave llama-cpp-python out (smaller image, no compile)")

    @classmethod
    def spec_from_args(cls, command: str, args: argparse.Namespace, *,
                       build: bool) -> ContainerSpec:
        image, base, release = load_container(command)
        dist = load_distribution(base)
        return ContainerSpec(distribution=dist, release=dist.release(release).name,
                             variant=load_variant(IMAGE_VARIANT),
                             mirror=(args.mirror or dist.mirror).rstrip("/"),
                             cache_dir=(args.cache_dir or DEFAULT_CACHE_DIR).absolute(),
                             with_llm=args.with_llm, mlos_version=__version__,
                             # No kernel, network or SSH of its own: the base's vm packages.
                             profile=load_profile(CONTAINER_PROFILE), container=image)

    def render(self, dest: Path) -> list[Path]:
        return render(self.spec, dest, root=images_dir() / "container")

    def default_render_dir(self) -> Path:
        return DEFAULT_OUTPUT_DIR / f"{self.spec.name}.mkosi"

    def build(self, output_dir: Path) -> BuildResult:
        spec = self.spec
        start = time.monotonic()
        work, mkosi_out, log = self.run_mkosi(output_dir)
        layout = work / "layout"
        self._configure(mkosi_out / spec.name, layout, log)
        archive = output_dir / f"{spec.name}.oci.tar"
        archive.unlink(missing_ok=True)
        self._tool(["skopeo", "copy", "--quiet", f"oci:{layout}:{spec.container.image}",
                    f"oci-archive:{archive}:{spec.reference}"],
                   "writing the oci-archive", log)
        manifest = output_dir / f"{spec.name}.manifest.json"
        manifest.write_text(json.dumps(self.manifest(mkosi_out), indent=2) + "\n")
        checksums = output_dir / "SHA256SUMS"
        update_checksums(checksums, [archive, manifest])
        shutil.rmtree(work)
        return BuildResult(archive, manifest, checksums, time.monotonic() - start)

    def _tool(self, argv: list[str], what: str, log: Path) -> None:
        run(argv, what=what, env={"PATH": SYSTEM_PATH}, progress=self.progress,
            show=lambda line: False, log_file=log)

    def _configure(self, mkosi_layout: Path, layout: Path, log: Path) -> None:
        """Copies mkosi's layout (one untagged image) into a tagged one and gives the image
        its config: mkosi 24.3 writes only `Cmd: /sbin/init`."""
        image = self.spec.container
        if not (mkosi_layout / "index.json").is_file():
            raise BuildError(f"mkosi wrote no OCI layout at {mkosi_layout}",
                             hint=f"read the build log {log}")
        tag = f"{layout}:{image.image}"
        self._tool(["skopeo", "copy", "--quiet", f"oci:{mkosi_layout}", f"oci:{tag}"],
                   "tagging mkosi's OCI layout", log)
        user = image.user
        argv = ["umoci", "config", "--image", tag, "--no-history",
                "--clear=config.cmd", "--clear=config.entrypoint",
                f"--config.user={user['uid']}:{user['gid']}",
                "--config.entrypoint=/opt/mlos/venv/bin/mlos-core",
                "--config.entrypoint=serve",
                "--config.workingdir=/var/lib/mlos",
                f"--config.volume={image.models}",
                "--config.stopsignal=SIGTERM",
                *(f"--config.exposedports={port}/tcp" for port in image.ports),
                *(f"--config.env={k}={v}" for k, v in image.env.items()),
                *(f"--config.label={k}={v}" for k, v in self.labels().items())]
        self._tool(argv, "setting the image config (umoci)", log)
        self._tool(["umoci", "gc", "--layout", str(layout)], "pruning the OCI layout", log)

    def labels(self) -> dict[str, str]:
        spec = self.spec
        return {
            "org.opencontainers.image.title": "MLOS Core",
            "org.opencontainers.image.version": spec.mlos_version,
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.base.name": f"{spec.distribution.name}:{spec.release}",
            "org.mlos.user": f"{spec.container.user['name']}:{spec.container.user['uid']}",
            "org.mlos.llm": "yes" if spec.with_llm else "no",
        }

    def manifest(self, mkosi_out: Path) -> dict[str, Any]:
        spec = self.spec
        disk = super().manifest(mkosi_out)
        python_packages = disk["python_packages"]
        return {
            "image": spec.reference,
            "base": f"{spec.distribution.name}:{spec.release}",
            "user": spec.container.user,
            "ports": list(spec.container.ports),
            "models": spec.container.models,
            "mlos_build_version": spec.mlos_version,
            "mlos_core_version": disk["mlos_core_version"],
            "mirror": spec.mirror,
            "with_llm": spec.with_llm,
            "packages": disk["packages"],
            "python_packages": python_packages,
        }
