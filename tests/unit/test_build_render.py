# SPDX-License-Identifier: Apache-2.0
"""Golden renders: pin what the templates produce for representative images.

After an intended template change, refresh the golden trees with
`MLOS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_build_render.py` and review the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlos_build.apt import distribution_names, load_distribution
from mlos_build.data import profile_names, variant_names
from mlos_build.errors import BuildError
from mlos_build.render import ImageSpec, render

GOLDEN = Path(__file__).parent / "golden" / "build"
ADMIN_KEY = Path(__file__).parent / "golden" / "ssh" / "admin.pub"
# Fixed inputs, so the renders do not depend on this checkout's version or this machine.
FIXED = {"cache_dir": Path("/var/cache/mlos-build"), "mlos_version": "0.0.0-golden"}
GOLDEN_IMAGES = [("ubuntu", "noble", "full", "metal"), ("debian", "bookworm", "userspace", "vm"),
                 ("ubuntu", "jammy", "basic", "vm"), ("debian", "trixie", "scheduler", "metal")]


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("distribution", "release", "variant", "profile"), GOLDEN_IMAGES)
def test_render_matches_golden(tmp_path: Path, distribution: str, release: str,
                               variant: str, profile: str) -> None:
    # The metal renders carry a key and a user name, so the golden tree shows where they go.
    access = {"ssh_keys": [ADMIN_KEY], "admin_user": "ops"} if profile == "metal" else {}
    spec = ImageSpec.create(distribution, variant, release=release, profile=profile,
                            **access, **FIXED)
    render(spec, tmp_path / "out")
    golden = GOLDEN / f"{distribution}-{release}-{variant}-{profile}"
    if os.environ.get("MLOS_UPDATE_GOLDEN"):
        shutil.rmtree(golden, ignore_errors=True)
        shutil.copytree(tmp_path / "out", golden)
    assert tree(tmp_path / "out") == tree(golden)


def test_scripts_are_executable(tmp_path: Path) -> None:
    render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path)
    for script in ("mkosi.build.chroot", "mkosi.postinst.chroot",
                   "mkosi.extra/usr/libexec/mlos/smoke-test",
                   "mkosi.extra/usr/libexec/mlos/validate"):
        assert os.access(tmp_path / script, os.X_OK), script


def test_userspace_has_no_module_files(tmp_path: Path) -> None:
    spec = ImageSpec.create("debian", "userspace", with_llm=False, profile="vm", **FIXED)
    files = {p.as_posix() for p in render(spec, tmp_path)}
    assert "mkosi.build.chroot" not in files
    assert "dkms" not in spec.packages()
    assert "mkosi.extra/etc/modprobe.d/mlos-ml.conf" not in files
    assert "mkosi.extra/etc/modules-load.d/mlos-ml.conf" not in files
    assert "BuildPackages" not in (tmp_path / "mkosi.conf").read_text()


@pytest.mark.parametrize("variant", ["basic", "scheduler", "full"])
def test_modprobe_options_follow_the_variant_file(tmp_path: Path, variant: str) -> None:
    spec = ImageSpec.create("ubuntu", variant, **FIXED)
    render(spec, tmp_path)
    assert spec.variant.module is not None
    expected = " ".join(f"{k}={v}" for k, v in spec.variant.module.parameters.items())
    options = (tmp_path / "mkosi.extra/etc/modprobe.d/mlos-ml.conf").read_text()
    assert f"options mlos_ml {expected}\n" in options


def test_mirror_override_reaches_the_apt_sources(tmp_path: Path) -> None:
    spec = ImageSpec.create("ubuntu", "full", mirror="http://mirror.example/ubuntu/", **FIXED)
    render(spec, tmp_path)
    sources = (tmp_path / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    assert "URIs: http://mirror.example/ubuntu\n" in sources
    assert "archive.ubuntu.com" not in sources


def test_every_release_renders_and_names_its_suites(tmp_path: Path) -> None:
    for distribution in distribution_names():
        for release in load_distribution(distribution).releases:
            for variant in variant_names():
                for profile in profile_names():
                    out = tmp_path / f"{distribution}-{release}-{variant}-{profile}"
                    render(ImageSpec.create(distribution, variant, release=release,
                                            profile=profile, **FIXED), out)
                    sources = (out / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources")
                    assert f"Suites: {release} {release}-updates" in sources.read_text()


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(BuildError) as exc:
        ImageSpec.create("ubuntu", "turbo")
    assert "userspace, basic, scheduler, full" in exc.value.hint
    with pytest.raises(BuildError) as exc:
        ImageSpec.create("ubuntu", "full", release="focal")
    assert "noble" in exc.value.hint and "jammy" in exc.value.hint
    with pytest.raises(BuildError) as exc:
        ImageSpec.create("fedora", "full")
    assert "debian" in exc.value.hint


def test_a_template_with_an_undefined_value_fails(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / "images"
    shutil.copytree(Path(__file__).parents[2] / "images", images)
    (images / "mkosi" / "broken.j2").write_text("{{ no_such_value }}\n")
    monkeypatch.setenv("MLOS_IMAGES_DIR", str(images))
    with pytest.raises(BuildError, match="undefined"):
        render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path / "out")


def test_llm_is_compiled_in_the_build_overlay_by_default(tmp_path: Path) -> None:
    spec = ImageSpec.create("debian", "userspace", **FIXED)
    assert spec.with_llm
    render(spec, tmp_path)
    build = (tmp_path / "mkosi.build.chroot").read_text()
    assert "pip wheel" in build and "llm-requirement.txt" in build
    assert "GGML_NATIVE=OFF" in build
    assert "make -C" not in build  # userspace: no module
    assert {"cmake", "g++"} <= set(spec.build_packages())
    assert "libgomp1" in spec.packages()  # llama.cpp's OpenMP runtime, in the image itself
    # One cached wheel per release: the libraries link that release's C library.
    wheels = "pip-cache/mlos-wheels/debian-bookworm"
    assert wheels in build
    postinst = (tmp_path / "mkosi.postinst.chroot").read_text()
    assert "[llm,report]" in postinst and wheels in postinst


def test_without_llm_leaves_the_compilers_out(tmp_path: Path) -> None:
    spec = ImageSpec.create("ubuntu", "full", with_llm=False, **FIXED)
    render(spec, tmp_path)
    assert "cmake" not in spec.build_packages() and "libgomp1" not in spec.packages()
    assert "pip wheel" not in (tmp_path / "mkosi.build.chroot").read_text()
    assert "[llm" not in (tmp_path / "mkosi.postinst.chroot").read_text()


@pytest.mark.parametrize("distribution", ["ubuntu", "debian"])
def test_kernel_variants_keep_dkms_for_kernel_upgrades(tmp_path: Path,
                                                        distribution: str) -> None:
    spec = ImageSpec.create(distribution, "basic", **FIXED)
    render(spec, tmp_path)
    # dkms and the headers are in the image itself, not only in the build overlay.
    assert {"dkms", *spec.distribution_profile.headers_packages} <= set(spec.packages())
    postinst = (tmp_path / "mkosi.postinst.chroot").read_text()
    assert "dkms add" in postinst and "dkms build -m mlos-ml" in postinst


@pytest.mark.parametrize("variant", variant_names())
def test_guest_smoke_test_is_valid_python_with_the_variant_expectations(
        tmp_path: Path, variant: str) -> None:
    spec = ImageSpec.create("debian", variant, **FIXED)
    render(spec, tmp_path)
    script = (tmp_path / "mkosi.extra/usr/libexec/mlos/smoke-test").read_text()
    namespace: dict[str, object] = {}
    # Run the module's top level only (main is guarded by __name__).
    exec(compile(script, "smoke-test", "exec"), namespace)
    assert namespace["RUNTIME_MODE"] == spec.variant.runtime_mode
    expected = spec.variant.module.parameters if spec.variant.module else None
    assert namespace["MODULE_PARAMETERS"] == expected
    assert namespace["DEMO_EXPECTED"] == [3.0, 5.0, 7.0, 9.0]


def test_autologin_is_opt_in(tmp_path: Path) -> None:
    render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path / "a")
    assert "Autologin" not in (tmp_path / "a" / "mkosi.conf").read_text()
    render(ImageSpec.create("ubuntu", "full", autologin=True, **FIXED), tmp_path / "b")
    assert "Autologin=yes" in (tmp_path / "b" / "mkosi.conf").read_text()


def test_render_never_replaces_an_unrelated_directory(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(BuildError, match="not an mkosi project"):
        render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    render(ImageSpec.create("ubuntu", "full", **FIXED), tmp_path / "p")
    render(ImageSpec.create("ubuntu", "basic", **FIXED), tmp_path / "p")  # re-render: fine


def test_the_demo_llm_is_opt_in(tmp_path: Path) -> None:
    plain = ImageSpec.create("ubuntu", "full", profile="vm")
    render(plain, tmp_path / "plain")
    assert "gemma3-270m" not in (tmp_path / "plain" / "mkosi.postinst.chroot").read_text()
    render(ImageSpec.create("ubuntu", "full", profile="vm", with_demo_llm=True),
           tmp_path / "demo")
    script = (tmp_path / "demo" / "mkosi.postinst.chroot").read_text()
    assert ('install -D -m 0644 "$assets/demo-llm/model.gguf" '
            "/var/lib/mlos/models/gemma3-270m/1/model.gguf") in script
    with pytest.raises(BuildError, match="--with-demo-llm needs llama-cpp-python"):
        ImageSpec.create("ubuntu", "full", with_llm=False, with_demo_llm=True)
