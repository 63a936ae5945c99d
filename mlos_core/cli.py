# SPDX-License-Identifier: Apache-2.0
"""`mlos-core` command line. The `serve` flags are generated from the Settings fields, so
`mlos-core serve --help` always lists what the service actually reads."""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .settings import DEFAULT_CONFIG_FILE, Settings, load_settings


def _flag_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if args else str
    if annotation is Path:
        return Path
    if annotation in (int, float):
        return annotation
    return str


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (default: {field.default}; env MLOS_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=_flag_type(field.annotation),
                                default=None, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlos-core", description="MLOS Core inference service")
    parser.add_argument("--version", action="version", version=f"mlos-core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the REST and gRPC servers",
        description="Serve the models in the repository over KServe v2 REST/gRPC and the "
        "MLOS REST API. Precedence: flags > MLOS_* environment > config file > defaults.",
    )
    serve.add_argument("--config", type=Path, default=None,
                       help=f"YAML settings file (default: {DEFAULT_CONFIG_FILE} if present)")
    add_settings_flags(serve)
    show = sub.add_parser("config", help="print the effective settings as YAML and exit")
    show.add_argument("--config", type=Path, default=None)
    add_settings_flags(show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    try:
        settings = load_settings(args.config, **flags)
    except (FileNotFoundError, ValidationError) as exc:
        print(f"mlos-core: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import yaml

        print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    from .server import run

    try:
        run(settings)
    except OSError as exc:  # e.g. the model repository cannot be created, a port is taken
        print(f"mlos-core: {exc}", file=sys.stderr)
        return 1
    return 0
