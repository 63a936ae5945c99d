# SPDX-License-Identifier: Apache-2.0
"""mlos-build's command line: every predictable failure is one line plus a hint."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from mlos_build import cli
from mlos_build.errors import BuildError
from mlos_build.runner import require_tools, run
from mlos_build.targets.common import (
    cache_lock,
    check_free_space,
    make_room,
    update_checksums,
)
from mlos_build.targets.mkosi_disk import check_mirror, pinned_llm_requirement

NEEDS_MKOSI = pytest.mark.skipif(shutil.which("mkosi") is None,
                                 reason="mkosi is not installed (scripts/setup.d/40-images.sh)")


def mlos_build(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None if path is None else {"PATH": path}
    return subprocess.run([sys.executable, "-m", "mlos_build.cli", *args], capture_output=True,
                          text=True, check=False, env=env)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    # Progress and warnings (a metal image without --ssh-key) are not the error.
    lines = [line for line in result.stderr.splitlines()
             if not line.startswith(("[mlos-build", "mlos-build: warning:"))]
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("mlos-build: error: ")
    assert lines[1].startswith("  hint: ")
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unknown_variant_lists_the_valid_ones() -> None:
    lines = error_lines(mlos_build("ubuntu", "--variant", "turbo"))
    assert "unknown variant 'turbo'" in lines[0]
    assert "userspace, basic, scheduler, full" in lines[1]


def test_unknown_release_lists_the_valid_ones() -> None:
    lines = error_lines(mlos_build("debian", "--release", "sid"))
    assert "bookworm, trixie" in lines[1]


def test_debug_shows_the_traceback() -> None:
    result = mlos_build("--debug", "ubuntu", "--variant", "turbo")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "BuildError" in result.stderr


def test_missing_host_tool_names_its_package(tmp_path: Path) -> None:
    # A PATH with python only: mkosi and friends are "not installed".
    (tmp_path / "bin").mkdir()
    lines = error_lines(mlos_build("ubuntu", "--output-dir", str(tmp_path / "out"),
                                   path=str(tmp_path / "bin")))
    assert "host tool 'mkosi' not found" in lines[0]
    assert "bookworm-backports" in lines[1]


def test_require_tools_names_the_package() -> None:
    with pytest.raises(BuildError) as exc:
        require_tools(["sh", "no-such-tool-mlos"])
    assert "'no-such-tool-mlos' not found" in exc.value.message
    assert "setup.sh" in exc.value.hint


def test_run_reports_a_missing_program_and_a_failure() -> None:
    with pytest.raises(BuildError, match="not found"):
        run(["no-such-program-mlos"], what="probing")
    with pytest.raises(BuildError) as exc:
        run(["sh", "-c", "echo boom >&2; exit 3"], what="the probe")
    assert exc.value.message == "the probe failed with exit status 3"
    assert "boom" in exc.value.hint
    with pytest.raises(BuildError) as exc:
        run(["sh", "-c", "echo 'write error: No space left on device'; exit 1"], what="copy",
            progress=lambda line: None)
    assert "disk is full" in exc.value.message


def test_run_streams_progress_lines() -> None:
    seen: list[str] = []
    run(["sh", "-c", "echo '‣ step one'; echo noise; echo '‣ step two'"], what="steps",
        progress=seen.append, show=lambda line: line.startswith("‣"))
    assert seen[1:] == ["‣ step one", "‣ step two"]


def test_quiet_commands_get_a_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mlos_build.runner.HEARTBEAT_S", 0.2)
    seen: list[str] = []
    run(["sh", "-c", "echo downloading; sleep 1; echo done"], what="quiet", progress=seen.append,
        show=lambda line: False)
    assert any("still working (downloading)" in line for line in seen)


def test_no_space_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(BuildError) as exc:
        check_free_space([tmp_path], need=1 << 60)
    assert exc.value.message.startswith("no space")
    assert "--output-dir" in exc.value.hint


def test_unreachable_mirror_is_reported() -> None:
    with pytest.raises(BuildError) as exc:
        check_mirror(f"http://127.0.0.1:{free_port()}/ubuntu", "noble")
    assert "unreachable" in exc.value.message
    assert "--mirror" in exc.value.hint


@NEEDS_MKOSI
def test_build_with_an_unreachable_mirror_fails_before_mkosi(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("ubuntu", "--variant", "userspace", "--mirror",
                                   f"http://127.0.0.1:{free_port()}/ubuntu", "--output-dir",
                                   str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")))
    assert "unreachable" in lines[0]


def test_render_writes_the_project(tmp_path: Path) -> None:
    result = mlos_build("render", "debian", "--variant", "basic", "--output-dir",
                        str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "mkosi.conf").is_file()
    assert (tmp_path / "p" / "mkosi.extra/etc/modprobe.d/mlos-ml.conf").is_file()


def test_test_of_a_missing_image_says_how_to_build_one(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("test", str(tmp_path / "nope.raw")))
    assert "not found" in lines[0] and "mlos-build ubuntu" in lines[1]


def test_no_command_prints_help() -> None:
    assert cli.main([]) == 2


def test_checksums_are_updated_in_place(tmp_path: Path) -> None:
    (tmp_path / "a.raw").write_bytes(b"a")
    (tmp_path / "b.json").write_bytes(b"b")
    sums = tmp_path / "SHA256SUMS"
    update_checksums(sums, [tmp_path / "a.raw"])
    update_checksums(sums, [tmp_path / "b.json", tmp_path / "a.raw"])
    lines = sums.read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["a.raw", "b.json"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, check=False)
    assert check.returncode == 0


def test_validate_of_a_missing_image_says_how_to_build_one(tmp_path: Path) -> None:
    lines = error_lines(mlos_build("validate", str(tmp_path / "nope.raw"),
                                   "--suite-args", "--repetitions 3 --tensor-sizes-mib 1,4"))
    assert "not found" in lines[0] and "mlos-build ubuntu" in lines[1]


@pytest.mark.parametrize(("text", "message"), [
    ("--url http://x", "--url is set by validate"),
    ("--hogs-where=host", "--hogs-where is set by validate"),
    ("--bogus 1", "unknown option --bogus"),
    ("'--unclosed", "No closing quotation"),
])
def test_validate_checks_the_suite_options_before_booting(tmp_path: Path, text: str,
                                                          message: str) -> None:
    lines = error_lines(mlos_build("validate", str(tmp_path / "nope.raw"),
                                   f"--suite-args={text}"))
    assert message in lines[0]


def test_validate_passes_suite_options_through() -> None:
    text = "--repetitions 3 --requests 40 --tensor-sizes-mib 1,4 --label 'noble full'"
    assert cli.suite_args(text) == ["--repetitions", "3", "--requests", "40",
                                    "--tensor-sizes-mib", "1,4", "--label", "noble full"]
    with pytest.raises(BuildError, match="not valid suite options"):
        cli.suite_args("--repetitions many")


def test_report_is_wired_to_the_report_command(tmp_path: Path) -> None:
    help_text = mlos_build("report", "render", "--help")
    assert help_text.returncode == 0 and "mlos-build report render" in help_text.stdout
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    result = mlos_build("report", "render", str(bad), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 1 and "not an MLOS results file" in result.stderr


def test_validation_results_become_a_report_and_failures_keep_the_details(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_report_render import sample_results

    results = sample_results("kernel_scheduler")
    image = tmp_path / "mlos-ubuntu-noble-scheduler.raw"
    ok = {"variant": "scheduler", "ok": True, "suite_s": 150.0, "results": results}
    assert cli.write_validation(tmp_path / "ok", image, ok, 290.0, tmp_path / "c.log") == 0
    assert json.loads((tmp_path / "ok" / "results.json").read_text()) == results
    assert "Kernel Module (Memory + Scheduler)" in (tmp_path / "ok" / "report.html").read_text()
    guest = json.loads((tmp_path / "ok" / "guest.json").read_text())
    assert "results" not in guest and guest["wall_s"] == 290.0 and guest["image"] == image.name

    failed = {"variant": "scheduler", "ok": False, "returncode": 1,
              "stderr_tail": "ServiceError: /health did not answer"}
    assert cli.write_validation(tmp_path / "bad", image, failed, 90.0, tmp_path / "c.log") == 1
    assert "did not answer" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "results.json").exists()
    assert json.loads((tmp_path / "bad" / "guest.json").read_text())["returncode"] == 1


REPO = Path(__file__).resolve().parents[2]


def test_the_llm_extra_pins_one_llama_cpp_python() -> None:
    # Images compile that exact version once per release; a range would let pip pick a
    # newer source release and compile it again, without compilers, in the final image.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert len(extras["llm"]) == 1 and extras["llm"][0].startswith("llama-cpp-python==")


def test_the_llm_requirement_is_read_from_the_mlos_wheel(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("mlos-*.whl"))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert pinned_llm_requirement(wheel) == extras["llm"][0]

    unpinned = tmp_path / "mlos-0-py3-none-any.whl"
    with zipfile.ZipFile(unpinned, "w") as archive:
        archive.writestr("mlos-0.dist-info/METADATA",
                         "Name: mlos\nRequires-Dist: llama-cpp-python>=0.3; extra == \"llm\"\n")
    with pytest.raises(BuildError, match="does not pin") as exc:
        pinned_llm_requirement(unpinned)
    assert "--without-llm" in (exc.value.hint or "")


def test_builds_sharing_a_cache_take_turns(tmp_path: Path) -> None:
    # Another process holds the cache for a second; this build waits and says why.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX);"
         " print('locked', flush=True); time.sleep(1); print('releasing', flush=True)",
         str(tmp_path / ".mlos-build.lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    said: list[str] = []
    with cache_lock(tmp_path, said.append):
        # The holder said it was releasing before this got the lock.
        assert select.select([holder.stdout], [], [], 0)[0]
        assert holder.stdout.readline().strip() == "releasing"
    holder.wait()
    assert len(said) == 1 and "waiting for another mlos-build" in said[0]
    with cache_lock(tmp_path, said.append):  # free now: no wait, nothing said
        pass
    assert len(said) == 1


def test_short_of_space_the_least_recently_used_caches_go_first(tmp_path: Path) -> None:
    caches = []
    for age, name in enumerate(("newest", "middle", "oldest")):
        cache = tmp_path / name
        (cache / "tree").mkdir(parents=True)
        (cache / "tree" / "blob").write_bytes(os.urandom(64 << 10))
        os.utime(cache, (1_000_000 - age * 1000,) * 2)
        caches.append(cache)
    said: list[str] = []
    make_room(tmp_path, 0, caches, said.append)  # enough space: nothing goes
    assert all(c.exists() for c in caches) and said == []
    # More than any disk has: every candidate goes, the oldest first, each one said.
    make_room(tmp_path, 1 << 60, [*caches, tmp_path / "gone-already"], said.append)
    assert not any(c.exists() for c in caches)
    assert [line.split("cache ", 1)[1].split(" (")[0] for line in said] == [
        str(tmp_path / "oldest"), str(tmp_path / "middle"), str(tmp_path / "newest")]
    assert all("least recently used" in line and "GiB" in line for line in said)
