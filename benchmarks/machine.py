"""A one-paragraph description of the machine a benchmark ran on."""

from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """CPU, cores, torch threads, GPU (if any), torch and Python versions."""
    parts = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, "
        f"torch threads {torch.get_num_threads()})",
        f"GPU: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "GPU: none",
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}",
    ]
    return "; ".join(parts)


def report_header(title: str, command: str, machine: str, command_note: str = "") -> list[str]:
    """The opening lines every results file shares: title, how to regenerate it, machine.

    ``machine`` is the text after ``Machine:`` (it may run on into the caller's next
    line); ``command_note`` follows the command inside the same sentence.
    """
    return [
        f"# {title}",
        "",
        f"Regenerate with `{command}`{command_note}.",
        "",
        f"Machine: {machine}",
    ]
