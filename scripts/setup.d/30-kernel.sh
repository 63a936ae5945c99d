# SPDX-License-Identifier: Apache-2.0
# mlos-ml kernel module test layer: headers to build against, QEMU + busybox for the
# guests, and the guest kernels themselves (extracted into .cache/kernels, never installed
# on the host: this host cannot load modules and initramfs hooks are not wanted).
#
# Kernels: Debian bookworm 6.1 (security/updates) and the bookworm-backports 6.12.
# Compile-only: Ubuntu jammy 5.15 and noble 6.8 headers, extracted from Ubuntu's archive.
apt_install qemu-system-x86 busybox-static cpio kmod build-essential bc flex bison libelf-dev dkms openssl xz-utils

KCACHE="$REPO_ROOT/.cache/kernels"
mkdir -p "$KCACHE"

# The newest ABI name behind a metapackage in one suite, e.g. 6.1.0-56-amd64.
_kernel_abi() {  # $1: version glob of linux-image-amd64
    local ver
    ver=$(apt-cache madison linux-image-amd64 | awk -v g="$1" '$3 ~ g {print $3}' | sort -V | tail -1)
    [ -n "$ver" ] || die "no linux-image-amd64 matching $1 in apt" "check scripts/setup.d/10-apt-sources.sh ran"
    apt-cache depends "linux-image-amd64=$ver" | awk '/Depends: linux-image-/{sub("linux-image-","",$2); print $2; exit}'
}

_kernel_fetch() {  # $1: ABI, $2: optional -t suite
    local abi=$1 dir="$KCACHE/$1"
    local hdr="linux-headers-$abi"
    if [ -n "${2:-}" ]; then apt_install -t "$2" "$hdr"; else apt_install "$hdr"; fi
    [ -f "$dir/.done" ] && return 0
    log "extracting guest kernel linux-image-$abi into $dir"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "linux-image-$abi" >/dev/null) || die "apt-get download linux-image-$abi failed"
    rm -rf "$dir"; mkdir -p "$dir"
    dpkg-deb -x "$tmp"/linux-image-*.deb "$dir"
    rm -rf "$tmp"
    depmod -b "$dir" "$abi"  # modules.dep, so guests can load the kernel's own 9p modules
    touch "$dir/.done"
}

if [ ! -f "$KCACHE/.abis" ] || [ "$(find "$KCACHE/.abis" -mtime +7 2>/dev/null)" ]; then
    apt_update_once
    k61=$(_kernel_abi '^6\.1\.')
    k612=$(_kernel_abi 'bpo12')
    printf '%s\n%s\n' "$k61" "$k612" > "$KCACHE/.abis"
fi
k61=$(sed -n 1p "$KCACHE/.abis")
k612=$(sed -n 2p "$KCACHE/.abis")
_kernel_fetch "$k61"
_kernel_fetch "$k612" bookworm-backports

# Ubuntu headers for compile-only tests (jammy 5.15, noble 6.8), extracted, not installed.
python3 "$REPO_ROOT/tests/kernel/fetch_ubuntu_headers.py" "$REPO_ROOT/.cache/ubuntu-headers" \
    || die "could not fetch Ubuntu kernel headers" "check that archive.ubuntu.com is reachable"
