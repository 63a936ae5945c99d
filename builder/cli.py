# SPDX-License-Identifier: Apache-2.0
"""`mlos-build`: build, render, boot and smoke-test MLOS disk images.

    mlos-build ubuntu --variant full              build an image (raw UEFI disk)
    mlos-build render debian --variant userspace  write the mkosi project, no build
    mlos-build boot IMAGE                         boot on this terminal's serial console
    mlos-build test IMAGE                         boot, run the in-guest smoke test, power off
    mlos-build validate IMAGE --out DIR           boot, run the E2E report suite in the guest,
                                                  write DIR/results.json and DIR/report.html
    mlos-build report run|render ...              the E2E validation report (see its --help)
    mlos-build flash IMAGE DEVICE                 write an image to a disk, checked and verified
    mlos-build release IMAGE                      .bmap, .qcow2, SPDX SBOM, SHA256SUMS (+ .asc)
    mlos-build verify DIR                         check SHA256SUMS and its signature
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mlos_build import __version__, flash, release
from mlos_build.errors import BuildError
from mlos_build.runner import Progress
from mlos_build.targets import Target, commands
from mlos_build.targets.common import DEFAULT_OUTPUT_DIR


def progress_printer(start: float) -> Progress:
    def progress(line: str) -> None:
        elapsed = int(time.monotonic() - start)
        print(f"[mlos-build {elapsed // 60:02d}:{elapsed % 60:02d}] {line}", file=sys.stderr,
              flush=True)
    return progress


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlos-source", type=Path, default=None,
                   help="MLOS source tree to install into the image (default: the checkout "
                   "mlos-build runs from, or the installed mlos package itself when "
                   "mlos-build was installed from a wheel)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlos-build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mlos-build {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # One build and one render subcommand per name a registered target serves (the data
    # under images/distributions/ says which target builds what).
    served = commands()
    for name, target in served.items():
        p = sub.add_parser(name, help="build " + target.summary.format(command=name))
        target.add_arguments(p, name, build=True)
        _common_options(p)
        p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                       help="where the artifacts, manifest and SHA256SUMS go (default: output)")
        p.set_defaults(target=target, target_command=name)
    p = sub.add_parser("render", help="write what a build would build from (the mkosi "
                       "project, the Ignition config), without building")
    render_sub = p.add_subparsers(dest="distribution", metavar="DISTRIBUTION", required=True)
    for name, target in served.items():
        r = render_sub.add_parser(name, help="write what builds " +
                                  target.summary.format(command=name))
        target.add_arguments(r, name, build=False)
        _common_options(r)
        r.add_argument("--output-dir", type=Path, default=None,
                       help="where to write the tree (default: under output/)")
        r.set_defaults(target=target, target_command=name)
    p = sub.add_parser("boot", help="boot an image under QEMU on this terminal")
    p.add_argument("image", type=Path)
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    p = sub.add_parser("test", help="boot an image and run its in-guest smoke test")
    p.add_argument("image", type=Path)
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    p.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    p = sub.add_parser("validate", help="boot an image, run the E2E report suite inside it "
                       "against its own service, write results.json and report.html")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, default=Path("validation-report"),
                   help="directory for results.json, report.html and guest.json "
                   "(default: validation-report)")
    p.add_argument("--suite-args", default="",
                   help="options for the suite in the guest, as one shell-quoted string, e.g. "
                   "\"--repetitions 3 --requests 50 --tensor-sizes-mib 1,4\" (see "
                   "mlos-build report run --help; the URL, output and hog placement are "
                   "fixed: the guest's own service, hogs in the guest)")
    p.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default: 2)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before giving up")
    flash.add_parser(sub)
    release.add_parsers(sub)
    sub.add_parser("report", help="the E2E validation report: report run|render ... "
                   "(mlos-build report --help)", add_help=False)
    return parser


# Suite options that `validate` sets itself: the guest's own service, hogs in the guest.
FIXED_SUITE_OPTIONS = ("--url", "--grpc-url", "--out", "--compare-with", "--hogs-where",
                       "--hog-command", "--wait", "--api-key")


def suite_args(text: str) -> list[str]:
    """Splits and checks the suite options for the guest before anything boots."""
    from mlos_build.report.cli import build_parser as report_parser

    try:
        args = shlex.split(text)
    except ValueError as exc:
        raise BuildError(f"--suite-args: {exc}",
                         hint="give the options as one shell-quoted string") from exc
    for arg in args:
        if arg.split("=", 1)[0] in FIXED_SUITE_OPTIONS:
            raise BuildError(f"--suite-args: {arg.split('=', 1)[0]} is set by validate",
                             hint="the guest's suite always targets its own service, "
                             "with its CPU hogs in the guest")
    parser = report_parser()
    parser.exit_on_error = False
    try:
        _, unknown = parser.parse_known_args(["run", *args])
    except (argparse.ArgumentError, SystemExit):
        raise BuildError("--suite-args: not valid suite options (the reason is above)",
                         hint="see mlos-build report run --help") from None
    if unknown:
        raise BuildError(f"--suite-args: unknown option {unknown[0]}",
                         hint="see mlos-build report run --help")
    return args


def _target(args: argparse.Namespace, progress: Progress, *, build: bool) -> Target:
    cls: type[Target] = args.target
    spec = cls.spec_from_args(args.target_command, args, build=build)
    return cls(spec, args.mlos_source.resolve() if args.mlos_source else None, progress)


def cmd_build(args: argparse.Namespace, progress: Progress) -> int:
    target = _target(args, progress, build=True)
    progress(f"building {target.spec.name} ({target.spec.variant.description})")
    result = target.build(args.output_dir.resolve())
    progress(f"built {result.image} in {result.seconds:.0f}s")
    others = list(result.others)
    if target.release_artifacts:
        others += release.make_artifacts(result.image, progress,
                                          release.options_from_args(args), result.manifest,
                                          disk=target.disk_image)
    for other in others:
        progress(f"  and {other}")
    print(result.image)
    return 0


def cmd_render(args: argparse.Namespace, progress: Progress) -> int:
    target = _target(args, progress, build=False)
    dest = args.output_dir or target.default_render_dir()
    files = target.render(dest)
    progress(f"wrote {len(files)} files for {target.spec.name} into {dest}")
    print(dest)
    return 0


def cmd_test(args: argparse.Namespace, progress: Progress) -> int:
    from mlos_build.qemu import smoke_test

    result = smoke_test(args.image, progress, timeout_s=args.timeout, memory_mib=args.memory)
    for name, check in result.verdict.get("checks", {}).items():
        mark = "ok  " if check.get("ok") else "FAIL"
        print(f"{mark} {name}: {check.get('detail')}")
    verdict = "passed" if result.ok else "FAILED"
    print(f"smoke test {verdict}: {args.image.name} ({result.verdict.get('variant')}), "
          f"guest uptime {result.verdict.get('uptime_s')}s, {result.seconds:.0f}s wall")
    if not result.ok:
        print(f"console log: {result.console_log}", file=sys.stderr)
    return 0 if result.ok else 1


def write_validation(out: Path, image: Path, report: dict[str, Any], seconds: float,
                     console_log: Path) -> int:
    """Writes what a validation boot brought back: guest.json always; results.json and
    report.html when the suite ran. Returns the exit status."""
    from mlos_build.report.render import render_html

    guest = {k: v for k, v in report.items() if k != "results"}
    guest["wall_s"] = round(seconds, 1)
    guest["image"] = image.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "guest.json").write_text(json.dumps(guest, indent=1) + "\n")
    results = report.get("results")
    if not report.get("ok") or not isinstance(results, dict):
        detail = guest.get("error") or str(guest.get("stderr_tail", ""))[-600:]
        print(f"validation run FAILED in the guest ({image.name}): {detail}", file=sys.stderr)
        print(f"console log: {console_log}; details: {out / 'guest.json'}", file=sys.stderr)
        return 1
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    html_path = out / "report.html"
    html_path.write_text(render_html([results]))
    print(f"{json_path}\n{html_path}")
    return 0


def cmd_validate(args: argparse.Namespace, progress: Progress) -> int:
    from mlos_build.qemu import validate

    options = suite_args(args.suite_args)
    result = validate(args.image, progress, options, timeout_s=args.timeout,
                      memory_mib=args.memory, cpus=args.cpus)
    progress(f"guest answered after {result.seconds:.0f}s wall (suite "
             f"{result.report.get('suite_s')}s in the guest); runtime_mode="
             f"{(result.report.get('results') or {}).get('runtime_mode')}")
    return write_validation(args.out, args.image, result.report, result.seconds,
                            result.console_log)


def report_error(exc: BuildError, *, debug: bool) -> int:
    if debug:
        raise exc
    print(f"mlos-build: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from mlos_build.report.cli import main as report_main

        return report_main(argv[1:])
    try:
        # The subcommands come from the data files, which can be wrong too.
        parser = build_parser()
    except BuildError as exc:
        return report_error(exc, debug="--debug" in argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    progress = progress_printer(time.monotonic())
    try:
        if hasattr(args, "handler"):
            return int(args.handler(args, progress))
        if args.command == "render":
            return cmd_render(args, progress)
        if args.command == "boot":
            from mlos_build.qemu import boot

            return boot(args.image, args.memory)
        if args.command == "test":
            return cmd_test(args, progress)
        if args.command == "validate":
            return cmd_validate(args, progress)
        return cmd_build(args, progress)
    except BuildError as exc:
        return report_error(exc, debug=args.debug)
    except KeyboardInterrupt:
        print("mlos-build: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
