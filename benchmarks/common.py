"""What the benchmarks share: a one-line description of the machine they ran on."""

from __future__ import annotations

import os
import platform

import psutil


def machine_description() -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {memory_gib:.0f} GiB"
