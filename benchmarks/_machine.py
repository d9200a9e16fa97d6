"""What machine a benchmark ran on, for the results files."""

from __future__ import annotations

import os
import platform


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:  # native bf16 (AVX512-BF16 or AMX), what `dtype: auto` and `precision: auto` decide by
        from genrec.llm.backbone import cpu_has_bf16

        info["cpu_bf16"] = cpu_has_bf16()
    except ImportError:
        pass
    return info


def describe(info: dict) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"
    bf16 = {True: ", native bf16 (AVX512-BF16/AMX)", False: ", no native bf16", None: ""}[info.get("cpu_bf16")]
    return (f"{info['cpu']}, {info['cores']} cores{bf16}, {info['mem_gib']} GiB{gpu}, Python {info['python']}, "
            f"torch {info.get('torch')}")
