# SPDX-License-Identifier: Apache-2.0
"""The Flatcar target: a system extension bound to one Flatcar release (mlos-ml built
against that release's kernel tree, its udev rule and loader unit, MLOS Core's container
unit and image) and the Butane/Ignition config that provisions a node with it.

    mlos-build flatcar --variant full --flatcar-version 4152.2.3 \\
        --kernel-build-tree flatcar-4152.2.3-kernel-tree.tar.gz --sysext-url https://...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from mlos_build import kernel_tree, sysext
from mlos_build.access import read_api_key, read_ssh_keys
from mlos_build.data import checkout, load_variant, variant_names
from mlos_build.errors import BuildError
from mlos_build.flatcar import (
    FlatcarData,
    FlatcarSpec,
    Provision,
    check_flatcar_version,
    check_sysext_url,
    parse_extra_file,
)
from mlos_build.ignition import SysextSource, butane, butane_text, ignition_text, to_ignition
from mlos_build.runner import require_tools, run
from mlos_build.source import MlosSource
from mlos_build.targets.base import BuildResult, Target, register
from mlos_build.targets.common import (
    DEFAULT_OUTPUT_DIR,
    check_free_space,
    file_digest,
    update_checksums,
)

CORE_YAML = "core.yaml"  # in MLOS Core's package data
# A sysext build needs far less than a disk image: the tree, the module, the archive.
MIN_FREE_BYTES = 2 * 1024**3


def default_archive(output_dir: Path, provision: Provision, mlos_version: str) -> Path:
    """Where `mlos-build container` leaves the image archive of this MLOS version."""
    return output_dir / f"{provision.container['repository']}-{mlos_version}.oci.tar"


def source_date_epoch(mlos_source: Path | None) -> int:
    """SOURCE_DATE_EPOCH, else the MLOS checkout's last commit time, else 0: the same
    sources give the same sysext."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        if not value.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
                             hint="unset it, or set it to e.g. $(git log -1 --format=%ct)")
        return int(value)
    if mlos_source is None:  # an installed mlos-build: no history to take a time from
        return 0
    try:
        out = subprocess.run(["git", "-C", str(mlos_source), "log", "-1", "--format=%ct"],
                             capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return 0
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else 0


@register
class FlatcarTarget(Target):
    name = "flatcar"
    summary = "a Flatcar system extension and its Ignition config"
    spec: FlatcarSpec

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, command: str, *,
                      build: bool) -> None:
        parser.add_argument("--variant", default="full",
                            help=f"what the node runs: {', '.join(variant_names())} "
                            "(default: full)")
        parser.add_argument("--flatcar-version", required=True, metavar="X.Y.Z",
                            help="the Flatcar release the extension is bound to (the node's "
                            "VERSION_ID; a node of another release does not merge it)")
        if build:
            parser.add_argument("--kernel-build-tree", type=Path, metavar="TARBALL|DIR|IMAGE",
                                help="that release's kernel build tree with the node's "
                                "os-release, or the release's production image or developer "
                                "container file that carries it (kernel variants; "
                                "docs/flatcar.md)")
            parser.add_argument("--sign-key", type=Path, metavar="KEY.pem",
                                help="sign mlos_ml.ko with this key (with --sign-cert), for "
                                "nodes whose kernel enforces module signatures")
            parser.add_argument("--sign-cert", type=Path, metavar="CERT.pem",
                                help="the X.509 certificate of --sign-key")
        parser.add_argument("--sysext-url", metavar="URL",
                            help="https URL the node downloads the extension from (Ignition "
                            "checks its sha512); without it a small extension is inlined")
        parser.add_argument("--sysext-sha512", metavar="HEX",
                            help="the extension's sha512, for render (a build computes it)")
        image = parser.add_mutually_exclusive_group()
        image.add_argument("--container-image", metavar="REF",
                           help="run this image, pulled from the registry it names, instead "
                           "of shipping the archive in the extension")
        image.add_argument("--container-archive", type=Path, metavar="FILE",
                           help="the MLOS Core image archive to ship (default: the "
                           "output of `mlos-build container` in --output-dir)")
        parser.add_argument("--ssh-key", type=Path, action="append", default=[],
                            metavar="FILE", help="public key file for the node's core user "
                            "(repeatable)")
        parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                            help="file holding MLOS Core's API key (root-only on the node)")
        parser.add_argument("--extra-file", action="append", default=[], metavar="SRC:DEST",
                            help="also write local file SRC at DEST on the node (repeatable)")

    @classmethod
    def spec_from_args(cls, command: str, args: argparse.Namespace, *,
                       build: bool) -> FlatcarSpec:
        # Read at call time: the golden tests pin the version (the container image's tag).
        from mlos_build import __version__

        variant = load_variant(args.variant)
        version = check_flatcar_version(args.flatcar_version)
        flatcar, provision = FlatcarData.load(), Provision.load()
        url, sha512 = check_sysext_url(args.sysext_url, args.sysext_sha512)
        tree = getattr(args, "kernel_build_tree", None)
        sign_key, sign_cert = getattr(args, "sign_key", None), getattr(args, "sign_cert", None)
        if build and variant.module is not None and tree is None:
            raise BuildError(f"the {variant.name} variant needs --kernel-build-tree (mlos-ml "
                             f"is built against Flatcar {version}'s kernel)",
                             hint=kernel_tree.tree_hint(version))
        if (sign_key is None) != (sign_cert is None):
            raise BuildError("--sign-key and --sign-cert go together",
                             hint="give the private key and its X.509 certificate")
        output_dir = (args.output_dir or DEFAULT_OUTPUT_DIR)
        archive = None
        image = args.container_image
        if image is None:
            image = f"{provision.container['repository']}:{__version__}"
            archive = args.container_archive or default_archive(
                output_dir, provision, __version__)
            if build and not archive.is_file():
                raise BuildError(f"no MLOS Core container image archive at {archive}",
                                 hint="build it with `mlos-build container`, or pass "
                                 "--container-archive FILE or --container-image REF")
        reserved = {f"{provision.config_dir}/core.yaml", f"{provision.config_dir}/api-key.env"}
        extra = tuple(parse_extra_file(v, provision, reserved) for v in args.extra_file)
        spec = FlatcarSpec(
            variant=variant, mlos_version=__version__, flatcar_version=version,
            flatcar=flatcar, provision=provision, container_image=image,
            container_archive=archive.resolve() if archive else None,
            sysext_url=url, sysext_sha512=sha512,
            ssh_keys=read_ssh_keys(args.ssh_key),
            api_key=read_api_key(args.api_key_file) if args.api_key_file else None,
            extra_files=extra, kernel_build_tree=tree,
            sign_key=sign_key, sign_cert=sign_cert,
            source_date_epoch=source_date_epoch(args.mlos_source or checkout()))
        for extra_file in extra:
            if extra_file.dest in (spec.sysext_path, spec.sysext_link):
                raise BuildError(f"--extra-file {extra_file.source}:{extra_file.dest}: "
                                 "mlos-build writes that path itself",
                                 hint="pick another path")
        return spec

    def default_render_dir(self) -> Path:
        return DEFAULT_OUTPUT_DIR / f"{self.spec.name}.flatcar"

    @property
    def source(self) -> MlosSource:
        """The MLOS whose module and service files go into the extension."""
        return MlosSource(self.mlos_source) if self.mlos_source else MlosSource.default()

    def core_yaml(self) -> str:
        path = self.source.core_data_dir() / CORE_YAML
        if not path.is_file():
            raise BuildError(f"{path} is missing from the MLOS source tree",
                             hint="use a checkout that has MLOS Core, or pass --mlos-source")
        return path.read_text(encoding="utf-8")

    def configs(self, source: SysextSource | None) -> tuple[str, str]:
        config = butane(self.spec, self.core_yaml(), source)
        return butane_text(config), ignition_text(to_ignition(config))

    def render(self, dest: Path) -> list[Path]:
        spec = self.spec
        if dest.exists() and any(dest.iterdir()):
            # Replace an earlier render, never a directory that holds something else.
            if not (dest / f"{spec.name}.bu").exists() and not any(dest.glob("*.bu")):
                raise BuildError(f"{dest} exists and is not a Flatcar render",
                                 hint="pass --output-dir with a new or empty directory")
            shutil.rmtree(dest)
        dest.mkdir(parents=True, exist_ok=True)
        written = [Path("sysext") / p for p in
                   sysext.render_tree(spec, dest / "sysext", self.source.kernel_dir())]
        source = None
        if spec.sysext_url is not None:
            if spec.sysext_sha512 is None:
                raise BuildError("--sysext-url needs the extension's sha512, which render "
                                 "cannot compute (it builds nothing)",
                                 hint="pass --sysext-sha512 HEX (sha512sum of the .raw), or "
                                 "run `mlos-build flatcar`, which builds it and hashes it")
            source = SysextSource(url=spec.sysext_url, sha512=spec.sysext_sha512)
        else:
            self.progress("no --sysext-url: the rendered config places no extension (a "
                          "build inlines a small one or needs the URL)")
        bu, ign = self.configs(source)
        for name, text in ((f"{spec.name}.bu", bu), (f"{spec.name}.ign", ign)):
            (dest / name).write_text(text, encoding="utf-8")
            written.append(Path(name))
        return written

    def build(self, output_dir: Path) -> BuildResult:
        spec = self.spec
        start = time.monotonic()
        require_tools(["mksquashfs"])
        check_free_space([output_dir], need=MIN_FREE_BYTES)
        work = output_dir / f".{spec.name}.work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        tree = None
        if spec.variant.module is not None:
            # First: a tree of another release fails in a second, not after the render.
            assert spec.kernel_build_tree is not None
            tree = kernel_tree.open_tree(
                spec.kernel_build_tree, work, spec.flatcar_version,
                spec.flatcar.os_release_id, spec.flatcar.required_kernel_config,
                spec.flatcar.kernel_architecture_config)
            self.progress(f"kernel tree: Flatcar {spec.flatcar_version}, kernel {tree.release}")
        tree_dir = work / "sysext"
        self.progress(f"rendering the extension's tree into {tree_dir}")
        files = sysext.render_tree(spec, tree_dir, self.source.kernel_dir())
        module: dict[str, Any] | None = None
        if tree is not None:
            ko, vermagic = kernel_tree.build_module(tree, self.source.kernel_dir(), work,
                                                    self.progress, spec.sign_key,
                                                    spec.sign_cert)
            files.append(sysext.add_file(tree_dir, sysext.module_dir(tree.release), ko))
            module = {"kernel_release": tree.release, "file": ko.name, "vermagic": vermagic,
                      "signed": spec.sign_key is not None,
                      "module_sig_force": tree.config.get("CONFIG_MODULE_SIG_FORCE") == "y"}
        if spec.container_archive is not None:
            self.progress(f"shipping the container image archive {spec.container_archive}")
            files.append(sysext.add_file(tree_dir, sysext.ARCHIVE_DIR, spec.container_archive,
                                         name=spec.provision.container["archive"]))
        image = output_dir / spec.sysext_file
        self.progress(f"making {image.name} (SOURCE_DATE_EPOCH={spec.source_date_epoch})")
        sysext.make_image(tree_dir, image, spec.source_date_epoch)
        sha512 = file_digest(image, "sha512")
        source = self.sysext_source(image, sha512)
        bu_text, ign_text = self.configs(source)
        butane_file = output_dir / f"{spec.name}.bu"
        ignition_file = output_dir / f"{spec.name}.ign"
        butane_file.write_text(bu_text, encoding="utf-8")
        ignition_file.write_text(ign_text, encoding="utf-8")
        self.validate(ignition_file)
        manifest = output_dir / f"{spec.name}.manifest.json"
        manifest.write_text(json.dumps(self.manifest(image, sha512, module, files), indent=2)
                            + "\n")
        checksums = output_dir / "SHA256SUMS"
        update_checksums(checksums, [image, butane_file, ignition_file, manifest])
        shutil.rmtree(work)
        return BuildResult(image, manifest, checksums, time.monotonic() - start,
                           others=(ignition_file, butane_file))

    def sysext_source(self, image: Path, sha512: str) -> SysextSource:
        spec = self.spec
        if spec.sysext_url is not None:
            if spec.sysext_sha512 is not None and spec.sysext_sha512 != sha512:
                raise BuildError("--sysext-sha512 does not match the extension just built",
                                 hint="leave --sysext-sha512 out: the build computes it")
            return SysextSource(url=spec.sysext_url, sha512=sha512)
        size = image.stat().st_size
        if size > spec.provision.inline_max_bytes:
            raise BuildError(f"{image.name} is {size / 1024**2:.1f} MiB: too big to inline "
                             "in the Ignition config",
                             hint=f"upload it and pass --sysext-url https://.../{image.name} "
                             "(the build computes its sha512), or --container-image REF "
                             "to ship no image archive")
        return SysextSource(data=image.read_bytes())

    def validate(self, ignition_file: Path) -> None:
        if shutil.which("ignition-validate") is None:
            self.progress("ignition-validate not found (Debian's ignition): config not "
                          "validated")
            return
        run(["ignition-validate", ignition_file], what=f"ignition-validate {ignition_file.name}")

    def manifest(self, image: Path, sha512: str, module: dict[str, Any] | None,
                 files: list[Path]) -> dict[str, Any]:
        spec = self.spec
        return {
            "target": self.name,
            "flatcar_version": spec.flatcar_version,
            "architecture": spec.flatcar.architecture,
            "variant": spec.variant.name,
            "runtime_mode": spec.variant.runtime_mode,
            "module_parameters": spec.variant.module.parameters if spec.variant.module else None,
            "module": module,
            "sysext": {"file": image.name, "sha512": sha512, "size": image.stat().st_size,
                       "url": spec.sysext_url, "files": sorted(p.as_posix() for p in files)},
            "container_image": spec.container_image,
            "container_archive": (str(spec.container_archive) if spec.container_archive
                                  else None),
            "source_date_epoch": spec.source_date_epoch,
            "mlos_build_version": spec.mlos_version,
        }
