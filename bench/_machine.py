"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path


def machine(**more: str) -> dict[str, str]:
    """Date, CPUs, memory, CPU model and Python version (`more`, e.g. the Postgres version, before Python's)."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "memory": f"{mem_kib / 2**20:.1f} GiB",
        "cpu": cpu,
        **more,
        "python": platform.python_version(),
    }
