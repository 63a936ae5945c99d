# SPDX-License-Identifier: Apache-2.0
"""Everything MLOS Core knows of the mlos-ml kernel module, in one package:

    mlos_ml/          the device binding: UAPI structs and ioctls (uapi.py), the device,
                      its pools, buffers, thread registration and GPU leases (device.py),
                      its errors, the parameters sysfs shows (params.py)
    runtime_mode.py   the one rule from the module's switches to a runtime mode, and the
                      mode /health reports from sysfs (the builder checks variants with it)
    modes.py          feature negotiation: which features the service takes at start, the
                      fallback and its reason when one is missing (KernelModes)
    pools.py          the pinned tensor pool and its userspace twin (request bodies,
                      shared-memory copies, output buffers)
    thread_registry.py  which threads are latency-critical or throughput
    native_threads.py   finding the native threads ONNX Runtime and llama.cpp start

Only this package imports the binding; the rest of the service sees KernelModes.
Nothing is imported here, so `mlos_core.kernel.runtime_mode` stays light (no numpy): the
image builder imports it.
"""
