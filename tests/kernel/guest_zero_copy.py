# SPDX-License-Identifier: Apache-2.0
"""Runs inside the QEMU guest (host root over 9p, module loaded in full mode).

ONNX Runtime writes its output straight into an mlos-ml pool buffer through IO binding;
a second, separate process maps the same buffer from its descriptor and reads the same
bytes. Prints "MLOS-RESULT zero_copy ..." lines for tests/kernel/test_kernel_python.py.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from mlos_core.kernel import mlos_ml

N = 4 << 20  # float32 elements: 16 MiB per tensor

READER = """
import hashlib, mmap, os, sys
fd, size = int(sys.argv[1]), int(sys.argv[2])
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
print(hashlib.sha256(m).hexdigest())
m[0:4] = b"MLOS"  # seen by the parent only if these are the same pages
m.close()
"""


def model_bytes() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"]),
                               helper.make_node("Add", ["t", "one"], ["y"])],
                              "affine", [x], [y], [two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> int:
    with mlos_ml.Device.open() as dev:
        pool = dev.create_pool(2 * N * 4)
        in_buf, out_buf = pool.alloc(N * 4), pool.alloc(N * 4)
        x = in_buf.array(np.float32, (N,))
        y = out_buf.array(np.float32, (N,))
        x[:] = np.random.default_rng(7).standard_normal(N, dtype=np.float32)
        y[:] = 0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model_bytes(), opts, providers=["CPUExecutionProvider"])
        binding = sess.io_binding()
        binding.bind_input("x", "cpu", 0, np.float32, [N], x.ctypes.data)
        binding.bind_output("y", "cpu", 0, np.float32, [N], y.ctypes.data)
        sess.run_with_iobinding(binding)
        ptr_match = binding.get_outputs()[0].data_ptr() == y.ctypes.data
        expected = (x * 2.0 + 1.0).astype(np.float32)
        correct = bool(np.array_equal(y, expected))
        digest = hashlib.sha256(y.tobytes()).hexdigest()

        reader = subprocess.run([sys.executable, "-c", READER, str(out_buf.fd),
                                 str(out_buf.size)], pass_fds=[out_buf.fd],
                                capture_output=True, text=True, check=True)
        same_bytes = reader.stdout.strip() == digest
        shared_pages = bytes(y[:1].view(np.uint8)) == b"MLOS"
        stats = pool.stats()
        print(f"MLOS-RESULT zero_copy ort_version {ort.__version__}")
        print(f"MLOS-RESULT zero_copy output_in_pool_buffer {int(ptr_match)}")
        print(f"MLOS-RESULT zero_copy output_correct {int(correct)}")
        print(f"MLOS-RESULT zero_copy reader_same_bytes {int(same_bytes)}")
        print(f"MLOS-RESULT zero_copy reader_write_visible {int(shared_pages)}")
        print(f"MLOS-RESULT zero_copy pool_buffers {stats['nr_buffers']}")
        print(f"MLOS-RESULT zero_copy bytes {y.nbytes} sha256 {digest}")
        ok = ptr_match and correct and same_bytes and shared_pages
        del x, y, expected
        in_buf.close()
        out_buf.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
