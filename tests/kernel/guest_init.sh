#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0-only
# /init of the mlos-ml test guest (busybox initramfs). Loads the module in each mode,
# checks sysfs, runs the TAP selftests, the race selftests, the multi-threaded and the
# single-threaded ioctl fuzzers, unloads, checks the kernel log. Every finding is one
# "MLOS-RESULT ..." line on the serial console for pytest.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp

r() { echo "MLOS-RESULT $*"; }
arg() { sed -n "s/.*mlos\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
GPUS=$(arg gpus)
FUZZ_DEFAULT=$(arg fuzz)
SEED=$(arg seed)
MODES=$(arg modes | tr , ' ')
EXTRA=$(arg extra)
RESERVED=$(arg reserved)
RACE=$(arg race)  # modes to run the race selftests in

r kernel "$(uname -r)"
r cpus "$(nproc)"
for mode in $MODES; do
    case $mode in
        basic) P="enable_tmm=1 enable_scheduler=0 enable_gpu_manager=0" ;;
        scheduler) P="enable_tmm=1 enable_scheduler=1 enable_gpu_manager=0" ;;
        full) P="enable_tmm=1 enable_scheduler=1 enable_gpu_manager=1" ;;
        *) r "$mode" unknown_mode; continue ;;
    esac
    if insmod /mlos_ml.ko $P max_total_mb=256 reserved_cpus="${RESERVED:-1}"; then
        r "$mode" insmod ok
    else
        r "$mode" insmod fail
        continue
    fi
    for p in /sys/module/mlos_ml/parameters/*; do
        r "$mode" param "$(basename "$p")" "$(cat "$p")"
    done
    r "$mode" devnode "$(stat -c '%a' /dev/mlos-ml 2>/dev/null || echo missing)"
    /mlos_ml_test "$GPUS" > /tmp/tap 2>&1
    r "$mode" selftest_rc $?
    sed "s/^/MLOS-TAP $mode /" /tmp/tap
    case ",$RACE," in
        *",$mode,"*)
            /mlos_ml_race > /tmp/race 2>&1
            r "$mode" race_rc $?
            sed "s/^/MLOS-RACE $mode /" /tmp/race ;;
    esac
    MTFUZZ=$(arg "mtfuzz_$mode")
    if [ -x /mlos_ml_fuzz_mt ] && [ -n "$MTFUZZ" ] && [ "$MTFUZZ" != 0 ]; then
        start=$(date +%s)
        /mlos_ml_fuzz_mt "$MTFUZZ" "${SEED:-1}" 4 > /tmp/mtfuzz 2>&1
        r "$mode" mtfuzz_rc $?
        r "$mode" mtfuzz_seconds $(( $(date +%s) - start ))
        sed "s/^/MLOS-MTFUZZ $mode /" /tmp/mtfuzz
    fi
    FUZZ=$(arg "fuzz_$mode")
    FUZZ=${FUZZ:-$FUZZ_DEFAULT}
    if [ -n "$FUZZ" ] && [ "$FUZZ" != 0 ]; then
        start=$(date +%s)
        /mlos_ml_fuzz "$FUZZ" "${SEED:-1}" > /tmp/fuzz 2>&1
        r "$mode" fuzz_rc $?
        r "$mode" fuzz_seconds $(( $(date +%s) - start ))
        sed "s/^/MLOS-FUZZ $mode /" /tmp/fuzz
    fi
    [ -x /extra.sh ] && [ -n "$EXTRA" ] && /extra.sh "$mode"
    r "$mode" stats $(tr '\n' ' ' < /sys/class/misc/mlos-ml/stats)
    r "$mode" init_sched "$(cut -d' ' -f41 /proc/1/stat)"
    if rmmod mlos_ml; then r "$mode" rmmod ok; else r "$mode" rmmod fail; fi
done
dmesg > /tmp/dmesg
# Oopses, WARNs, refcount_t saturation, list and slab corruption (SLUB's own reports read
# "BUG kmalloc-96 (...): Object already free"), KFENCE/KASAN/UBSAN, bad page state.
bad='BUG:|BUG [-a-z0-9_]+ \(|WARNING:|Oops|general protection|Call Trace|refcount_t|list_(add|del) corruption|UBSAN|KASAN|KFENCE|kernel BUG|double free|use-after-free|Bad page'
r dmesg_bad "$(grep -cE "$bad" /tmp/dmesg)"
grep -E "$bad" /tmp/dmesg | head -40 | sed 's/^/MLOS-DMESG /'
grep -i mlos /tmp/dmesg | head -20 | sed 's/^/MLOS-KLOG /'
r done
poweroff -f
