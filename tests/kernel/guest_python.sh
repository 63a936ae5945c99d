#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# /extra.sh of the Python guest, run by guest_init.sh once per mode with the module loaded:
# mounts the host's root (once, /hostroot.sh), then runs the host's venv python in it from
# the checkout: the binding's tests and, in full mode, the ONNX Runtime zero-copy check.
mode=$1
. /hostroot.sh
case ",$(arg pymodes)," in *",$mode,"*) ;; *) exit 0 ;; esac
hostroot_mount || exit 0
if [ -z "$(arg nopytest)" ]; then
    inhost "$PY" -m pytest -q -p no:cacheprovider tests/unit/test_mlos_ml_binding.py \
        > /tmp/py 2>&1
    r "$mode" pytest_rc $?
    tail -25 /tmp/py | sed "s/^/MLOS-PY $mode /"
fi
if [ "$mode" = full ] && [ -z "$(arg nozc)" ]; then
    if [ -z "$(arg bench)" ]; then
        inhost "$PY" tests/kernel/guest_zero_copy.py > /tmp/zc 2>&1
        r "$mode" zero_copy_rc $?
        sed "s/^/MLOS-ZC /" /tmp/zc
    fi
    BENCH=$(arg bench)
    if [ -n "$BENCH" ]; then
        inhost "$PY" benchmarks/kernel_bench.py --in-guest > /tmp/bench 2>&1
        r "$mode" bench_rc $?
        sed "s/^/MLOS-BENCH /" /tmp/bench
    fi
fi
