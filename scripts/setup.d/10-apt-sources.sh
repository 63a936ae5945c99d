# SPDX-License-Identifier: Apache-2.0
# bookworm-backports carries mkosi 24.3 and the 6.12 kernel; trixie is pinned low so it
# only supplies what we ask for by name.
src=/etc/apt/sources.list.d/mlos-extra.sources
if [ ! -f "$src" ]; then
    log "adding bookworm-backports and trixie (pinned low) to apt sources"
    as_root tee "$src" >/dev/null <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    as_root tee /etc/apt/preferences.d/mlos-trixie-low >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
    _apt_updated=0
    apt_update_once
fi
