# SPDX-License-Identifier: Apache-2.0
"""Regenerates the committed protobuf modules (needs grpcio-tools):

    python -m mlos_core.protocols.grpc.generate [OUTPUT_DIR]

    protocols/grpc/inference.proto     -> protocols/grpc/generated/inference_pb2*.py
    repository/model_config.proto      -> repository/generated/model_config_pb2.py

With OUTPUT_DIR every module is written there instead (the freshness tests compare).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parents[2]  # the directory mlos_core is imported from
PROTO = HERE / "inference.proto"
MODEL_CONFIG_PROTO = HERE.parent.parent / "repository" / "model_config.proto"
#: .proto file -> (the directory its committed modules live in, with gRPC stubs).
PROTOS = {
    PROTO: (HERE / "generated", True),
    MODEL_CONFIG_PROTO: (MODEL_CONFIG_PROTO.parent / "generated", False),
}


def module_name(proto: Path) -> str:
    """The dotted name the committed module of `proto` is imported by."""
    committed = PROTOS[proto][0]
    return ".".join([*committed.relative_to(PACKAGE_ROOT).parts, f"{proto.stem}_pb2"])


def generate_one(proto: Path, out_dir: Path, grpc_stubs: bool) -> list[Path]:
    from grpc_tools import protoc  # only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = proto.stem
    includes = sorted({f"-I{p.parent}" for p in PROTOS})
    args = ["grpc_tools.protoc", *includes, f"--python_out={out_dir}"]
    if grpc_stubs:
        args.append(f"--grpc_python_out={out_dir}")
    status = protoc.main([*args, str(proto)])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    files = [out_dir / f"{stem}_pb2.py"]
    if grpc_stubs:
        files.append(out_dir / f"{stem}_pb2_grpc.py")
    header = (f"# SPDX-License-Identifier: Apache-2.0\n"
              f"# Generated from {proto.name}: do not edit.\n")
    for file in files:
        text = file.read_text()
        # The generated stub imports its sibling as a top-level module; make it relative.
        text = re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text,
                      flags=re.M)
        # An imported .proto's module by its package path (protoc names it top-level).
        imported = None
        for dep in PROTOS:
            pattern = rf"^import {dep.stem}_pb2 as (\w+)$"
            if dep != proto and (found := re.search(pattern, text, flags=re.M)):
                imported = found.group(1)
                text = re.sub(pattern, rf"import {module_name(dep)} as \1", text, flags=re.M)
        # Clients such as tritonclient register the same `inference.*` names in the default
        # descriptor pool; MLOS's own pool lets both live in one process, and a .proto that
        # imports another is added to the pool that already holds the imported one.
        pool = (f"{imported}._POOL" if imported else "_descriptor_pool.DescriptorPool()")
        text = text.replace(
            "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
            f"_POOL = {pool}\nDESCRIPTOR = _POOL.AddSerializedFile(",
        )
        file.write_text(header + text)
    return files


def generate(out_dir: Path | None = None) -> list[Path]:
    """Every module; into `out_dir` when given, else where each is committed."""
    files: list[Path] = []
    for proto, (committed, grpc_stubs) in PROTOS.items():
        files += generate_one(proto, out_dir or committed, grpc_stubs)
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    for path in generate(target):
        print(path)
