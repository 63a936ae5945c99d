#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# /extra.sh of the Python guest, run by guest_init.sh once per mode with the module loaded:
# mounts the host's root read-only over 9p (once), then chroots into it to run the host's
# venv python: the binding's tests and, in full mode, the ONNX Runtime zero-copy check.
mode=$1
r() { echo "MLOS-RESULT $*"; }
arg() { sed -n "s/.*mlos\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
H=/mnt/host
REPO=$(arg repo)
case ",$(arg pymodes)," in *",$mode,"*) ;; *) exit 0 ;; esac
if [ ! -e /tmp/ninep-mounted ]; then
    touch /tmp/ninep-mounted
    for m in /modules/*.ko; do insmod "$m" || r ninep insmod_fail "$m"; done
    mkdir -p $H
    if mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot $H; then
        r ninep mount ok
    else
        r ninep mount fail
        exit 0
    fi
    mount -t proc proc $H/proc
    mount -t sysfs sysfs $H/sys
    mount -t devtmpfs devtmpfs $H/dev
    mount -t tmpfs tmpfs $H/tmp
fi
inhost() {
    chroot $H /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
        OMP_NUM_THREADS=1 /bin/sh -c "cd $REPO && $*"
}
if [ -z "$(arg nopytest)" ]; then
    inhost .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_mlos_ml_binding.py \
        > /tmp/py 2>&1
    r "$mode" pytest_rc $?
    tail -25 /tmp/py | sed "s/^/MLOS-PY $mode /"
fi
if [ "$mode" = full ] && [ -z "$(arg nozc)" ]; then
    if [ -z "$(arg bench)" ]; then
        inhost .venv/bin/python tests/kernel/guest_zero_copy.py > /tmp/zc 2>&1
        r "$mode" zero_copy_rc $?
        sed "s/^/MLOS-ZC /" /tmp/zc
    fi
    BENCH=$(arg bench)
    if [ -n "$BENCH" ]; then
        inhost .venv/bin/python benchmarks/kernel_bench.py --in-guest > /tmp/bench 2>&1
        r "$mode" bench_rc $?
        sed "s/^/MLOS-BENCH /" /tmp/bench
    fi
fi
