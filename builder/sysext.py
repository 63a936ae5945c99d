# SPDX-License-Identifier: Apache-2.0
"""The MLOS system extension for Flatcar: its file tree (ignition/sysext/ templates, the
udev rule, the demo model, the module, the container archive) and the reproducible
squashfs image made from it.

Templates mirror the tree: `X.j2` renders to `X` (StrictUndefined), a template that
renders to nothing but whitespace is left out (variant-only files), `@EXTENSION@` in a
path is the extension's name. Files under usr/libexec are executable, the rest not.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jinja2

from mlos_build import demo_model
from mlos_build.errors import BuildError
from mlos_build.flatcar import FlatcarSpec, ignition_dir
from mlos_build.runner import require_tools, run

UDEV_RULE = Path("udev/99-mlos-ml.rules")  # in the mlos-ml sources
ARCHIVE_DIR = "usr/share/mlos"
DEMO_DIR = "usr/share/mlos/models"
EXECUTABLE_DIRS = ("usr/libexec/",)


def module_dir(kernel_release: str) -> str:
    """Where the module lies in the extension (the merged /usr/lib/modules/<kver>/extra)."""
    return f"usr/lib/modules/{kernel_release}/extra"


def context(spec: FlatcarSpec) -> dict[str, Any]:
    provision = spec.provision
    module = spec.variant.module is not None
    with_archive = spec.container_archive is not None
    runtime_unit = spec.flatcar.container_runtime_unit
    after = [runtime_unit, "network-online.target"]
    wants = ["network-online.target"]
    for unit, wanted in (("mlos-ml.service", module), ("mlos-core-image.service", with_archive)):
        if wanted:
            after.append(unit)
            wants.append(unit)
    return {
        "variant": spec.variant,
        "flatcar": spec.flatcar,
        "flatcar_version": spec.flatcar_version,
        "provision": provision,
        "user": provision.service_user,
        "container": provision.container,
        "container_image": spec.container_image,
        "with_archive": with_archive,
        "runtime_name": Path(spec.flatcar.container_runtime).name,
        "ports": provision.ports,
        "memlock": provision.memlock_bytes,
        "core_after": after,
        "core_wants": wants,
        "demo": demo_model.DEMO,
    }


def render_tree(spec: FlatcarSpec, dest: Path, kernel_src: Path) -> list[Path]:
    """Writes the extension's tree, without the module and the container archive, into
    dest (which must not exist or be empty); returns the files written, relative to dest."""
    root = ignition_dir() / "sysext"
    if dest.exists() and any(dest.iterdir()):
        raise BuildError(f"{dest} is not empty", hint="render into a new directory")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    ctx = context(spec)
    written: list[Path] = []
    for source in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = source.relative_to(root)
        out = Path(rel.as_posix().replace("@EXTENSION@", spec.provision.extension))
        if rel.suffix == ".j2":
            out = out.with_suffix("")
            try:
                text = env.get_template(rel.as_posix()).render(ctx)
            except jinja2.UndefinedError as exc:
                raise BuildError(f"template ignition/sysext/{rel} uses an undefined value: "
                                 f"{exc}", hint="fix the template or ignition/provision.yaml"
                                 ) from exc
            if not text.strip():
                continue
            _write(dest / out, text.encode())
        else:
            _write(dest / out, source.read_bytes())
        written.append(out)
    if spec.variant.module is not None:
        rule = Path("usr/lib/udev/rules.d") / UDEV_RULE.name
        _write(dest / rule, _source_file(kernel_src, UDEV_RULE).read_bytes())
        written.append(rule)
    model = Path(DEMO_DIR) / demo_model.NAME / "1" / "model.onnx"
    demo_model.write_model(dest / model)
    written.append(model)
    normalize_modes(dest)
    return sorted(written)


def add_file(tree: Path, rel: str, source: Path, name: str | None = None) -> Path:
    """Copies source into the tree's rel directory (as name); returns its path in it."""
    target = tree / rel / (name or source.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    normalize_modes(tree)
    return target.relative_to(tree)


def normalize_modes(tree: Path) -> None:
    """Modes from the path alone, not from this machine's umask or a checkout's bits."""
    for path in tree.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
        else:
            rel = path.relative_to(tree).as_posix()
            path.chmod(0o755 if rel.startswith(EXECUTABLE_DIRS) else 0o644)
    tree.chmod(0o755)


def make_image(tree: Path, image: Path, source_date_epoch: int) -> None:
    """squashfs of tree, byte-identical for the same tree and SOURCE_DATE_EPOCH: every
    file root-owned, every timestamp the epoch, no xattrs (this machine's are no business
    of the node's), gzip (every kernel's squashfs reads it)."""
    require_tools(["mksquashfs"])
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (source_date_epoch, source_date_epoch), follow_symlinks=False)
    image.unlink(missing_ok=True)
    # SOURCE_DATE_EPOCH sets the image's own time and clamps the files' (already the
    # epoch); mksquashfs refuses it together with -mkfs-time/-all-time.
    run(["mksquashfs", tree, image, "-all-root", "-noappend", "-no-xattrs", "-comp", "gzip",
         "-no-progress", "-quiet"],
        what=f"mksquashfs of {image.name}",
        env={"SOURCE_DATE_EPOCH": str(source_date_epoch)})


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _source_file(kernel_src: Path, rel: Path) -> Path:
    path = kernel_src / rel
    if not path.is_file():
        raise BuildError(f"{path} is missing from the MLOS source tree",
                         hint="use a checkout that has the kernel module, or pass "
                         "--mlos-source DIR")
    return path
