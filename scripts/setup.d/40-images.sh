# SPDX-License-Identifier: Apache-2.0
# mlos-build's host tools: mkosi 24.3 and systemd-boot/repart from bookworm-backports, ESP
# tools, python3-pefile (ukify, which builds the unified kernel images), UEFI firmware and
# QEMU for boot tests, bmap-tools (the block-map format flash checks itself against), gpg
# (release signing), and the Ubuntu archive keyring (from trixie:
# bookworm has none) so mkosi can verify Ubuntu packages.
apt_install -t bookworm-backports mkosi systemd-boot systemd-boot-efi
apt_install mtools dosfstools e2fsprogs ovmf cpio qemu-system-x86 qemu-utils \
    bubblewrap debian-archive-keyring zstd kmod python3-pefile \
    bmap-tools gpg gpg-agent gpgv util-linux fdisk
apt_install -t trixie ubuntu-keyring
