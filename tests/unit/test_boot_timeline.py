# SPDX-License-Identifier: Apache-2.0
"""The boot timeline read from a stamped serial console (builder/boot_timeline.py):
lines as an Ubuntu noble MLOS image prints them under QEMU, colour codes included."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mlos_build.boot_timeline import LOGIN, StampedConsole, Timeline, clean

GREEN_OK = "[\x1b[0;32m  OK  \x1b[0m] "

#: (host seconds since QEMU started, the line as the console wrote it)
BOOT = [
    (9.0, "[    0.000000] Linux version 6.8.0-151-generic (buildd@lcy02-amd64-009)"),
    (9.6, "[    0.095120] Kernel command line: console=tty0 console=ttyS0,115200"),
    # Written late (the serial port was busy): not the offset.
    (14.0, "[    1.000000] pci 0000:00:01.0: late line"),
    (18.2, "Welcome to \x1b[1mUbuntu 24.04.5 LTS\x1b[0m!\r"),
    (25.0, "         Starting \x1b[0;1;39msystemd-networkd.service\x1b[0m - Network "
           "Configuration...\r"),
    (26.5, "\x1bM\x1b[K" + GREEN_OK + "Started \x1b[0;1;39msystemd-networkd.service\x1b[0m "
           "- Network Configuration.\r"),
    (27.0, GREEN_OK + "Mounted \x1b[0;1;39msysroot.mount\x1b[0m - Root Partition.\r"),
    (27.1, GREEN_OK + "Reached target \x1b[0;1;39mbasic.target\x1b[0m - Basic System.\r"),
    (34.0, "Welcome to \x1b[1mUbuntu 24.04.5 LTS\x1b[0m!\r"),
    (50.0, GREEN_OK + "Reached target \x1b[0;1;39mbasic.target\x1b[0m - Basic System.\r"),
    # systemd shortens "unit - description" in the middle, the unit's name too.
    (51.0, "         Starting \x1b[0;1;39mmlos-ssh-host-keys.servic\u2026\x1b[0mH host keys "
           "(made on first boot)...\r"),
    (60.0, GREEN_OK + "Finished \x1b[0;1;39mmlos-ssh-host-keys.service\x1b[0m - MLOS "
           "SSH host keys (made on first boot).\r"),
    (61.0, GREEN_OK + "Started \x1b[0;1;39mmlos-core.service\x1b[0m - MLOS C\u2026e (KServe "
           "v2 REST/gRPC, MLOS REST).\r"),
    (70.5, "localhost login: "),
]


def stamped() -> list[tuple[float, str]]:
    return [(t, clean(line.encode())) for t, line in BOOT]


def test_the_timeline_reads_milestones_units_and_the_kernel_start() -> None:
    timeline = Timeline.read(stamped())
    # The least delayed kernel line: the first (9.0 s on the host at guest time 0; the
    # second was 0.5 s late, the third 4 s).
    assert timeline.kernel_start_s == pytest.approx(9.0)
    assert timeline.milestones == {
        "initrd: systemd starts": 18.2,
        "root file system mounted (initrd)": 27.0,
        "switched to the root file system": 34.0,  # the second "Welcome to"
        "basic.target": 50.0,  # the root file system's, not the initrd's
        "mlos-core.service started": 61.0,
        "login prompt": 70.5,
    }
    units = dict(timeline.slowest_units)
    assert units["systemd-networkd.service"] == pytest.approx(1.5)
    # Its shortened name on "Starting" still pairs with the whole one on "Finished".
    assert units["mlos-ssh-host-keys.servic"] == pytest.approx(9.0)
    assert [name for name, _ in timeline.slowest_units][0] == "mlos-ssh-host-keys.servic"


def test_clean_drops_colours_erase_codes_and_carriage_returns() -> None:
    line = clean(("\x1bM\x1b[K" + GREEN_OK + "Started \x1b[0;1;39mx.service\x1b[0m.\r").encode())
    assert line == "[  OK  ] Started x.service."


def test_a_console_with_no_kernel_lines_has_no_kernel_start() -> None:
    timeline = Timeline.read([(5.0, "Welcome to Debian!"), (9.0, "host login: ")])
    assert timeline.kernel_start_s is None
    assert timeline.milestones == {"initrd: systemd starts": 5.0, "login prompt": 9.0}


def test_the_console_is_stamped_as_it_grows(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_bytes(b"")
    start = time.monotonic()

    def guest() -> None:
        with open(console, "ab", buffering=0) as f:
            f.write(b"[    0.000000] Linux version 6.8.0\r\n")
            time.sleep(0.5)
            f.write(b"Welcome to \x1b[1mUbuntu\x1b[0m!\r\nlocalhost lo")
            time.sleep(0.5)
            f.write(b"gin: ")  # the prompt: no line end follows

    writer = threading.Thread(target=guest)
    with StampedConsole(console, start, poll_s=0.05) as stamps:
        writer.start()
        at = stamps.wait_for(LOGIN, timeout_s=10)
        writer.join()
    lines = stamps.stamped()
    assert [line for _, line in lines] == ["[    0.000000] Linux version 6.8.0",
                                           "Welcome to Ubuntu!", "localhost login: "]
    first, welcome, login = (stamp for stamp, _ in lines)
    assert first < 0.4 and 0.4 < welcome < 0.9
    # The prompt began with "localhost lo" at the second write: it keeps that time.
    assert login == pytest.approx(welcome)
    assert at == login


def test_waiting_for_a_prompt_ends_when_the_guest_stops(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("[    0.000000] Linux version\n")
    began = time.monotonic()
    with StampedConsole(console, began, poll_s=0.05) as stamps:
        assert stamps.wait_for(LOGIN, timeout_s=30, alive=lambda: False) is None
    assert time.monotonic() - began < 5
