# SPDX-License-Identifier: Apache-2.0
"""The threads native libraries start inside the service, found through /proc/self/task.

ONNX Runtime starts its intra-op pool when a session is created (intra_op_threads > 1);
llama.cpp's ggml, built with OpenMP as the llama-cpp-python wheel is, starts one libgomp
team per thread that decodes, at its first decode, and ends it when that thread exits.
Neither can register itself with mlos_ml, and Python's `threading` does not know them.

How a thread is attributed to the thread that started it: Linux copies the name (comm)
of a thread into every thread it clones. The service gives each thread that may start
native threads a name no other thread has (`unique_name`, or a temporary one for a model
load: `spawn_scope`); a thread that Python does not know and that carries that name was
started by it (or by a native thread it started). Threads that libraries name themselves
(gRPC's C core: grpc_global_tim, event_engine, lifeguard...) never match.

A tid alone does not identify a thread for long: tids are reused. `NativeThread` pairs the
tid with the thread's start time, so `alive()` does not mistake a newer thread for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TASKS = Path("/proc/self/task")
#: Linux keeps 15 bytes of a thread name.
NAME_MAX = 15


@dataclass(frozen=True)
class NativeThread:
    tid: int
    #: Start time in clock ticks after boot (/proc/.../stat field 22); None when /proc
    #: could not tell (not mounted, as in some chroots).
    start: int | None


def task_ids() -> set[int]:
    try:
        return {int(name) for name in (p.name for p in TASKS.iterdir()) if name.isdigit()}
    except OSError:
        return set()


def python_ids() -> set[int]:
    """Native ids of the threads Python's `threading` knows (they register themselves)."""
    return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def start_time(tid: int) -> int | None:
    try:
        stat = (TASKS / str(tid) / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


def identify(tid: int) -> NativeThread | None:
    start = start_time(tid)
    return None if start is None else NativeThread(tid, start)


def alive(thread: NativeThread) -> bool:
    if thread.start is None:  # no /proc to tell by: alive unless /proc says it is gone
        return not TASKS.is_dir() or (TASKS / str(thread.tid)).is_dir()
    return start_time(thread.tid) == thread.start


def name_of(tid: int) -> str | None:
    try:
        return (TASKS / str(tid) / "comm").read_text().rstrip("\n")
    except OSError:
        return None


def rename(tid: int, name: str) -> bool:
    """Set a thread's name (`top -H`, `ps -L` show it); False when /proc refuses."""
    try:
        (TASKS / str(tid) / "comm").write_text(name[:NAME_MAX])
    except OSError:
        return False
    return True


def unique_name(prefix: str, tid: int) -> str:
    """A thread name no other thread of the process has (the tid makes it so)."""
    suffix = f"-{tid}"
    return prefix[: NAME_MAX - len(suffix)] + suffix


def started_by(name: str, exclude: Iterable[int] = ()) -> list[NativeThread]:
    """Live threads Python does not know that carry `name`: the native threads started
    by the thread that has that (unique) name, less `exclude`."""
    skip = python_ids() | set(exclude)
    found = []
    for tid in sorted(task_ids() - skip):
        if name_of(tid) == name:
            thread = identify(tid)
            if thread is not None:
                found.append(thread)
    return found


@contextlib.contextmanager
def spawn_scope(prefix: str = "mlos-load") -> Iterator[list[NativeThread]]:
    """The native threads the calling thread starts inside the block (and that are still
    running at its end) are appended to the yielded list. The thread carries a unique
    temporary name for the block, so threads other threads start meanwhile never count."""
    me = threading.get_native_id()
    old = name_of(me)
    mark = unique_name(prefix, me)
    found: list[NativeThread] = []
    renamed = old is not None and rename(me, mark)
    try:
        yield found
    finally:
        if renamed:
            found.extend(started_by(mark, exclude=(me,)))
            rename(me, old or "")
