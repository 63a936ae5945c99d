# SPDX-License-Identifier: Apache-2.0
"""Regenerates generated/inference_pb2*.py from inference.proto (needs grpcio-tools):

    python -m mlos_core.protocols.grpc.generate [OUTPUT_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "inference.proto"
HEADER = "# SPDX-License-Identifier: Apache-2.0\n# Generated from inference.proto: do not edit.\n"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main([
        "grpc_tools.protoc", f"-I{HERE}", f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}", str(PROTO),
    ])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")
    files = [out_dir / "inference_pb2.py", out_dir / "inference_pb2_grpc.py"]
    for file in files:
        text = file.read_text()
        # The generated stub imports its sibling as a top-level module; make it relative.
        text = re.sub(r"^import inference_pb2 as", "from . import inference_pb2 as", text,
                      flags=re.M)
        # Clients such as tritonclient register the same `inference.*` names in the default
        # descriptor pool; a private pool lets both live in one process.
        text = text.replace(
            "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
            "_POOL = _descriptor_pool.DescriptorPool()\n"
            "DESCRIPTOR = _POOL.AddSerializedFile(",
        )
        file.write_text(HEADER + text)
    return files


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "generated"
    for path in generate(target):
        print(path)
