# SPDX-License-Identifier: Apache-2.0
"""A Flatcar release's kernel build tree, and mlos-ml built against it.

Every Flatcar image carries its kernel's build tree at /usr/lib/modules/<kver>/build.
mlos-build takes it as a tarball (or a directory) holding `build/` and the node's
`os-release`, or as the release's production image or developer container file
(flatcar_image.py reads both out of it), so the tree's Flatcar release can be checked,
not guessed: the sysext is bound to one release (VERSION_ID), and a module built for
another kernel does not load.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mlos_build import flatcar_image
from mlos_build.errors import BuildError
from mlos_build.runner import Progress, require_tools, run
from mlos_build.targets.common import KERNEL_SOURCE_SKIP, SYSTEM_PATH

# The one command that makes the right tarball, run from any machine that reaches a node
# of the release (the hint of every tree error).
TREE_COMMAND = ("ssh core@NODE 'tar -chzf - -C /usr/lib/modules/$(uname -r) build "
                "-C /usr/lib os-release' > flatcar-{version}-kernel-tree.tar.gz")
# How the kernel compresses its own modules (CONFIG_MODULE_COMPRESS_*), and the same
# command line scripts/Makefile.modinst uses, so the kernel's decompressor reads it.
COMPRESSORS: dict[str, tuple[str, list[str]]] = {
    "CONFIG_MODULE_COMPRESS_XZ": (".xz", ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-T1",
                                          "-k", "-f"]),
    "CONFIG_MODULE_COMPRESS_ZSTD": (".zst", ["zstd", "-q", "-19", "-T1", "-k", "-f"]),
    "CONFIG_MODULE_COMPRESS_GZIP": (".gz", ["gzip", "-n", "-9", "-k", "-f"]),
}
UTS_RELEASE_RE = re.compile(r'#define UTS_RELEASE "([^"]+)"')


def tree_hint(version: str) -> str:
    return "make it on a node of that release: " + TREE_COMMAND.format(version=version)


@dataclass(frozen=True)
class KernelTree:
    build: Path
    release: str
    os_release: dict[str, str]
    config: dict[str, str]

    def enabled(self, option: str) -> bool:
        return self.config.get(option) in ("y", "m")


def parse_os_release(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return values


def parse_config(text: str) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value.strip().strip('"')
    return config


def unpack(source: Path, work: Path, version: str) -> tuple[Path, str]:
    """The directory that holds build/ and os-release (source itself, or where its tarball
    or image file was read out to, under work), and the hint for errors about it."""
    if not source.exists():
        raise BuildError(f"--kernel-build-tree {source} does not exist", hint=tree_hint(version))
    if source.is_dir():
        return source, tree_hint(version)
    if flatcar_image.is_disk_image(source):
        return flatcar_image.extract(source, work, version), flatcar_image.image_hint(version)
    dest = work / "kernel-tree"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        with tarfile.open(source) as archive:
            # The data filter refuses absolute paths, links out of dest and device nodes.
            archive.extractall(dest, filter="data")
    except tarfile.ReadError as exc:
        raise BuildError(f"--kernel-build-tree {source} is neither a readable tarball (tar, "
                         "gzip, bzip2 or xz) nor a Flatcar image file",
                         hint=tree_hint(version)) from exc
    except (tarfile.TarError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BuildError(f"--kernel-build-tree {source} cannot be unpacked ({reason})",
                         hint=tree_hint(version)) from exc
    return dest, tree_hint(version)


def open_tree(source: Path, work: Path, version: str, os_release_id: str,
              required: tuple[str, ...], architecture_option: str) -> KernelTree:
    """Checks the tree is a kernel build tree of Flatcar `version` and returns it."""
    top, hint = unpack(source, work, version)
    build, os_release_file = top / "build", top / "os-release"
    if not (build / "Makefile").is_file() or not (build / ".config").is_file():
        raise BuildError(f"--kernel-build-tree {source} has no build/ with a Makefile and "
                         ".config", hint=hint)
    if not os_release_file.is_file():
        raise BuildError(f"--kernel-build-tree {source} has no os-release, so its Flatcar "
                         "release cannot be checked", hint=hint)
    os_release = parse_os_release(os_release_file.read_text(errors="replace"))
    tree_id, tree_version = os_release.get("ID"), os_release.get("VERSION_ID")
    if tree_id != os_release_id or tree_version != version:
        raise BuildError(f"--kernel-build-tree {source} is from {tree_id} {tree_version}, "
                         f"not {os_release_id} {version}", hint=hint)
    release = kernel_release(build)
    if release is None:
        raise BuildError(f"--kernel-build-tree {source}: build/ does not say its kernel "
                         "release (no include/generated/utsrelease.h)", hint=hint)
    config = parse_config((build / ".config").read_text(errors="replace"))
    missing = [opt for opt in required if config.get(opt) not in ("y", "m")]
    if config.get(architecture_option) != "y":
        missing.insert(0, architecture_option)
    if missing:
        raise BuildError(f"kernel {release} of Flatcar {version} lacks "
                         f"{', '.join(missing)}: the extension cannot work on it",
                         hint="check the tree's build/.config; MLOS needs module, loop, "
                         "squashfs and overlayfs support on x86-64")
    for tool in ("scripts/basic/fixdep", "scripts/mod/modpost"):
        if not (build / tool).is_file():
            raise BuildError(f"--kernel-build-tree {source}: build/{tool} is missing (not a "
                             "prepared build tree)", hint=hint)
    return KernelTree(build=build, release=release, os_release=os_release, config=config)


def kernel_release(build: Path) -> str | None:
    """The release that vermagic carries (UTS_RELEASE; include/config/kernel.release can
    differ, as in Debian's trees)."""
    uts = build / "include" / "generated" / "utsrelease.h"
    if uts.is_file():
        match = UTS_RELEASE_RE.search(uts.read_text(errors="replace"))
        if match:
            return match.group(1)
    release = build / "include" / "config" / "kernel.release"
    return release.read_text().strip() or None if release.is_file() else None


def build_module(tree: KernelTree, kernel_src: Path, work: Path, progress: Progress,
                 sign_key: Path | None = None,
                 sign_cert: Path | None = None) -> tuple[Path, str]:
    """Compiles mlos_ml.ko against the tree, strips its debug info (as modules_install
    with INSTALL_MOD_STRIP does), signs it when asked, compresses it like the kernel's
    own modules; returns the file and its vermagic. Paths are mapped out of the object
    code, so the same sources and tree give the same bytes wherever they lie."""
    require_tools(["make", "gcc", "strip"])
    if not (kernel_src / "Kbuild").is_file():
        raise BuildError(f"{kernel_src}/Kbuild is missing from the MLOS source tree",
                         hint="use a checkout that has the kernel module, or pass "
                         "--mlos-source DIR")
    moddir = work / "mlos-ml"
    shutil.rmtree(moddir, ignore_errors=True)
    shutil.copytree(kernel_src, moddir, ignore=shutil.ignore_patterns(*KERNEL_SOURCE_SKIP,
                                                                      "selftests"))
    build = tree.build.resolve()
    # Both trees' paths, with and without a trailing slash (the line tables name the
    # directories themselves), map to fixed names; the switches (with these paths) stay
    # out of the debug info, which the build ID is computed over.
    prefix_maps = (f"-ffile-prefix-map={moddir}=mlos-ml -ffile-prefix-map={build}=kernel-build "
                   "-gno-record-gcc-switches")
    progress(f"compiling mlos-ml against kernel {tree.release}")
    # No BTF for the module: pahole encodes it in parallel, in no fixed order (two builds
    # differed), with this machine's pahole against the tree's vmlinux; the module loads
    # and works without it.
    run(["make", "-C", build, f"M={moddir}", f"KCFLAGS={prefix_maps}",
         "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"],
        what=f"building mlos-ml against {tree.release}", env={"PATH": SYSTEM_PATH},
        log_file=work / "mlos-ml.build.log", progress=progress, show=lambda line: False)
    ko = moddir / "mlos_ml.ko"
    vermagic = module_vermagic(ko)
    if vermagic.split()[0] != tree.release:
        raise BuildError(f"the module built with vermagic {vermagic!r}, not for kernel "
                         f"{tree.release}", hint="the tree's headers and its utsrelease.h "
                         "disagree: take the tree again from a node")
    run(["strip", "--strip-debug", ko], what="stripping mlos_ml.ko")
    if sign_key is not None and sign_cert is not None:
        sign(tree, ko, sign_key, sign_cert)
    for option, (suffix, command) in COMPRESSORS.items():
        if tree.config.get(option) == "y":
            run([*command, ko], what=f"compressing mlos_ml.ko ({command[0]})")
            return ko.with_name(ko.name + suffix), vermagic
    return ko, vermagic


def sign(tree: KernelTree, ko: Path, key: Path, cert: Path) -> None:
    sign_file = tree.build / "scripts" / "sign-file"
    if not sign_file.is_file():
        raise BuildError("the kernel tree has no scripts/sign-file to sign with",
                         hint="take a tree of a kernel built with CONFIG_MODULE_SIG")
    for path in (key, cert):
        if not path.is_file():
            raise BuildError(f"signing file {path} does not exist",
                             hint="give --sign-key KEY.pem and --sign-cert CERT.pem "
                             "(openssl req -new -x509 -newkey rsa:4096 ...)")
    digest = tree.config.get("CONFIG_MODULE_SIG_HASH") or "sha256"
    run([sign_file, digest, key, cert, ko], what="signing mlos_ml.ko")


def module_vermagic(ko: Path) -> str:
    """The vermagic string in an uncompressed module's .modinfo section."""
    data = ko.read_bytes()
    marker = b"vermagic="
    start = data.find(marker)
    if start < 0:
        raise BuildError(f"{ko.name} has no vermagic", hint="the build produced no module")
    end = data.find(b"\0", start)
    return data[start + len(marker):end].decode(errors="replace")
