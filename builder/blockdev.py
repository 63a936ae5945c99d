# SPDX-License-Identifier: Apache-2.0
"""What a flash target is and whether it is safe to overwrite, from sysfs and /proc only.

check_target() is a pure function of three inputs it is given paths to: the sysfs tree,
a mountinfo file and a swaps file. It never opens a device, so tests can ask it about
this machine's own system disk (and must get a refusal) without any risk.
Devices are matched by major:minor and walked through sysfs holders/ and slaves/
(device-mapper, LVM, MD, bcache all register there), never by name patterns.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

SYSFS = Path("/sys")
MOUNTINFO = Path("/proc/self/mountinfo")
SWAPS = Path("/proc/swaps")
# Mount points whose disks are the running system's: flashing one would destroy it.
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/efi", "/usr")
SECTOR = 512


@dataclass(frozen=True)
class Refusal:
    """One rule the target breaks, with what to do about it."""

    rule: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message} ({self.hint})"


@dataclass(frozen=True)
class Mount:
    devno: str  # "major:minor"
    mount_point: str
    source: str


@dataclass
class Partition:
    name: str
    size: int
    start: int


@dataclass
class Device:
    path: Path
    name: str
    devno: str
    size: int
    model: str = ""
    serial: str = ""
    transport: str = ""
    removable: bool = False
    read_only: bool = False
    logical_block_size: int = SECTOR
    is_partition: bool = False
    partitions: list[Partition] = field(default_factory=list)


@dataclass
class Decision:
    """check_target's answer: the device (None for a plain file) and every broken rule."""

    target: Path
    device: Device | None
    refusals: list[Refusal]

    @property
    def ok(self) -> bool:
        return not self.refusals


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal (\040).
    out, i = [], 0
    while i < len(field_):
        octal = field_[i + 1:i + 4]
        if field_[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        mounts.append(Mount(parts[2], _unescape(parts[4]), _unescape(parts[sep + 2])))
    return mounts


def parse_swaps(text: str) -> list[str]:
    """The swap areas' paths (header line skipped)."""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


class Sysfs:
    """Block devices as sysfs shows them under ROOT/class/block."""

    def __init__(self, root: Path = SYSFS) -> None:
        self.block = root / "class" / "block"

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.block.iterdir())
        except OSError:
            return []

    def devno(self, name: str) -> str:
        return _read(self.block / name / "dev")

    def by_devno(self, devno: str) -> str | None:
        return next((n for n in self.names() if self.devno(n) == devno), None)

    def by_dev_path(self, path: str) -> str | None:
        """The kernel name for a /dev path such as /dev/sda1 or /dev/mapper/vg-root, from
        sysfs alone (device-mapper names live in dm/name)."""
        base = os.path.basename(path)
        if path.startswith("/dev/mapper/"):
            return next((n for n in self.names() if _read(self.block / n / "dm" / "name")
                         == base), None)
        return base if (self.block / base / "dev").exists() else None

    def is_partition(self, name: str) -> bool:
        return (self.block / name / "partition").exists()

    def whole_disk(self, name: str) -> str:
        """The disk a partition belongs to (itself for a whole disk)."""
        if self.is_partition(name):
            return (self.block / name).resolve().parent.name
        return name

    def partitions(self, disk: str) -> list[str]:
        disk_dir = self.block / disk
        try:
            return sorted(p.name for p in disk_dir.resolve().iterdir()
                          if (p / "partition").exists())
        except OSError:
            return []

    def _links(self, name: str, kind: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.block / name / kind).iterdir())
        except OSError:
            return []

    def holders(self, name: str) -> list[str]:
        return self._links(name, "holders")

    def slaves(self, name: str) -> list[str]:
        return self._links(name, "slaves")

    def holder_chain(self, name: str, seen: set[str] | None = None) -> list[str]:
        """Every device stacked on name, directly or through others (dm on md on disk)."""
        seen = set() if seen is None else seen
        out = []
        for holder in self.holders(name):
            if holder not in seen:
                seen.add(holder)
                out += [holder, *self.holder_chain(holder, seen)]
        return out

    def physical_disks(self, name: str, seen: set[str] | None = None) -> set[str]:
        """The whole disks under a device, following slaves down (LVM on LUKS on md...)."""
        seen = set() if seen is None else seen
        if name in seen:
            return set()
        seen.add(name)
        slaves = self.slaves(self.whole_disk(name)) or self.slaves(name)
        if not slaves:
            return {self.whole_disk(name)}
        disks: set[str] = set()
        for slave in slaves:
            disks |= self.physical_disks(slave, seen)
        return disks

    def describe(self, name: str) -> str:
        dm_name = _read(self.block / name / "dm" / "name")
        md_level = _read(self.block / name / "md" / "level")
        if dm_name:
            uuid = _read(self.block / name / "dm" / "uuid")
            kind = "LVM volume" if uuid.startswith("LVM-") else "device-mapper"
            return f"{name} ({kind} {dm_name})"
        if md_level:
            return f"{name} (MD {md_level})"
        return name

    def transport(self, name: str) -> str:
        """USB, NVMe, SATA/SAS, virtio, MMC, loop... from where the device sits in sysfs."""
        real = str((self.block / self.whole_disk(name)).resolve())
        for needle, label in (("/usb", "USB"), ("/nvme", "NVMe"), ("/mmc", "MMC/SD"),
                              ("/virtio", "virtio"), ("/ata", "SATA"), ("/host", "SCSI/SAS"),
                              ("/loop", "loop"), ("/dm-", "device-mapper"), ("/md", "MD")):
            if needle in real:
                return label
        return "unknown"

    def device(self, path: Path, name: str) -> Device:
        base = self.block / name
        disk = self.whole_disk(name)
        dev_dir = self.block / disk / "device"
        serial = (_read(dev_dir / "serial") or _read(self.block / disk / "serial")
                  or _read(dev_dir / "wwid"))
        model = " ".join(filter(None, (_read(dev_dir / "vendor"), _read(dev_dir / "model"))))
        if not model and (self.block / name / "loop" / "backing_file").exists():
            model = "loop over " + _read(self.block / name / "loop" / "backing_file")
        parts = [Partition(p, int(_read(self.block / p / "size") or 0) * SECTOR,
                           int(_read(self.block / p / "start") or 0) * SECTOR)
                 for p in self.partitions(name)]
        return Device(
            path=path, name=name, devno=self.devno(name),
            size=int(_read(base / "size") or 0) * SECTOR,
            model=model or _read(self.block / name / "dm" / "name"), serial=serial,
            transport=self.transport(name),
            removable=_read(self.block / disk / "removable") == "1",
            read_only=_read(base / "ro") == "1",
            logical_block_size=int(_read(self.block / disk / "queue" / "logical_block_size")
                                   or SECTOR),
            is_partition=self.is_partition(name), partitions=parts)


def system_disks(sysfs: Sysfs, mounts: list[Mount]) -> dict[str, str]:
    """Whole disks backing the running system's / and /boot: disk -> mount point."""
    disks: dict[str, str] = {}
    for mount in mounts:
        if mount.mount_point not in SYSTEM_MOUNTS:
            continue
        # Btrfs and some others show an anonymous 0:N device; their source names the disk.
        name = sysfs.by_devno(mount.devno) if not mount.devno.startswith("0:") else None
        if name is None and mount.source.startswith("/dev/"):
            name = sysfs.by_dev_path(mount.source)
        if name is None:
            continue
        for disk in sysfs.physical_disks(name):
            disks.setdefault(disk, mount.mount_point)
    return disks


def _devno_of(path: Path) -> tuple[str, bool] | None:
    """(major:minor, is a block device) of a path, None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", True
    return "", False


def check_target(target: Path, image_size: int, *, to_file: bool = False,
                 sysfs_root: Path = SYSFS, mountinfo: Path = MOUNTINFO,
                 swaps: Path = SWAPS) -> Decision:
    """Every reason not to write an image of image_size bytes to target."""
    found = _devno_of(target)
    if found is None or not found[1]:
        refusals = []
        if not to_file:
            what = "does not exist" if found is None else "is not a block device"
            refusals.append(Refusal("not-a-block-device", f"{target} {what}",
                                    "give a disk such as /dev/sdX, or pass --to-file to "
                                    "write the image into a file"))
        elif target.is_dir():
            refusals.append(Refusal("not-a-block-device", f"{target} is a directory",
                                    "give a file name for --to-file"))
        return Decision(target, None, refusals)
    sysfs = Sysfs(sysfs_root)
    devno = found[0]
    name = sysfs.by_devno(devno)
    if name is None:
        return Decision(target, None, [Refusal(
            "unknown-device", f"{target} ({devno}) is not in {sysfs.block}",
            "is sysfs mounted? flash needs it to check the device")])
    device = sysfs.device(target, name)
    mounts = parse_mountinfo(_read(mountinfo))
    swap_names = {sysfs.by_dev_path(p) for p in parse_swaps(_read(swaps))} - {None}
    return Decision(target, device, _rules(sysfs, device, image_size, mounts, swap_names))


def _rules(sysfs: Sysfs, device: Device, image_size: int, mounts: list[Mount],
           swap_names: set[str | None]) -> list[Refusal]:
    name = device.name
    refusals = []
    if device.is_partition:
        refusals.append(Refusal("partition", f"{device.path} is a partition of "
                                f"{sysfs.whole_disk(name)}",
                                f"flash the whole disk (/dev/{sysfs.whole_disk(name)}): an "
                                "MLOS image carries its own partition table"))
    if device.read_only:
        refusals.append(Refusal("read-only", f"{device.path} is read-only",
                                "clear the write protection (switch on the card or "
                                "`blockdev --setrw`)"))
    if device.size < image_size:
        refusals.append(Refusal("too-small", f"{device.path} has {device.size} bytes, the "
                                f"image needs {image_size}", "use a larger disk"))
    own = [name, *[p.name for p in device.partitions]]
    stacked = {n: sysfs.holder_chain(n) for n in own}
    by_devno = {sysfs.devno(n): n for n in own + [h for c in stacked.values() for h in c]}
    for mount in mounts:
        if mount.devno in by_devno:
            refusals.append(Refusal("mounted", f"{sysfs.describe(by_devno[mount.devno])} is "
                                    f"mounted on {mount.mount_point}",
                                    f"unmount it first (umount {mount.mount_point})"))
    for n in [*own, *[h for c in stacked.values() for h in c]]:
        if n in swap_names:
            refusals.append(Refusal("swap", f"{sysfs.describe(n)} is in use as swap",
                                    f"turn it off first (swapoff /dev/{n})"))
    for n, chain in stacked.items():
        if chain:
            refusals.append(Refusal(
                "held", f"{n} is held by " + " -> ".join(sysfs.describe(h) for h in chain),
                "stop what uses it first (umount, vgchange -an, mdadm --stop, dmsetup "
                "remove, cryptsetup close)"))
    system = system_disks(sysfs, mounts)
    disk = sysfs.whole_disk(name)
    targets = sysfs.physical_disks(name) | {disk}
    for backing in sorted(targets & set(system)):
        refusals.append(Refusal("system-disk", f"{device.path} is on {backing}, which holds "
                                f"the running system's {system[backing]}",
                                "flash another disk, or boot from other media (a USB "
                                "stick, the network) to reflash this one"))
    return refusals
