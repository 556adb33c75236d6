"""This machine, and whether a process of it that wrote a file is still running: who may delete what it left."""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path


def _this_machine() -> str | None:
    """A tag of this host, boot and pid namespace: two files with the same one were written where one pid names
    one process. None where that cannot be told (no /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{socket.gethostname()}\0{boot}\0{pid_namespace}".encode()).hexdigest()[:12]


THIS_MACHINE = _this_machine()


def process_start(pid: int) -> int | None:
    """When the process ``pid`` of this machine started (clock ticks since boot), or None if there is none (a
    zombie counts as none: it writes nothing more). A pid and its start name one process: pids are reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else int(fields[19])
