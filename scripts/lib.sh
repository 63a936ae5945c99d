# SPDX-License-Identifier: Apache-2.0
# Shared helpers for the setup and test scripts. Source it; do not run it.

log() { printf '\033[1m[mlos]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[mlos] error:\033[0m %s\n' "$1" >&2; [ -n "${2:-}" ] && printf '  hint: %s\n' "$2" >&2; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MLOS_VENV:-$REPO_ROOT/.venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

_apt_updated=0
apt_update_once() {
    if [ "$_apt_updated" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || die "apt-get update failed" "check the Debian mirror in /etc/apt/sources.list.d/"
        _apt_updated=1
    fi
}

# Installs Debian packages that are not installed yet: a no-op (no apt call) when all are.
# Usage: apt_install [-t SUITE] PKG...
apt_install() {
    local suite=()
    if [ "${1:-}" = "-t" ]; then suite=(-t "$2"); shift 2; fi
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    apt_update_once
    log "apt-get install ${suite[*]} ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${suite[@]}" "${missing[@]}" >/dev/null \
        || die "could not install: ${missing[*]}" "run 'apt-get install ${suite[*]} ${missing[*]}' by hand to see why"
}
