# SPDX-License-Identifier: Apache-2.0
# mlos-build flatcar: squashfs-tools makes the system extension (mksquashfs) and lists it
# in tests (unsquashfs); Debian's ignition gives ignition-validate and the real ignition
# binary the unit tests apply configs with; it relabels what it wrote with setfiles
# (policycoreutils) and reads the SELinux policy type from the target root. btrfs-progs
# (btrfs restore) and e2fsprogs (debugfs) read the kernel tree out of Flatcar's image files.
apt_install squashfs-tools ignition policycoreutils xz-utils btrfs-progs e2fsprogs
