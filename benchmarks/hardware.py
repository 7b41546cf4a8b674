"""What the machine can do, printed by the benchmarks beside their figures: the CPU, its
bfloat16 and int8 instructions, and measured matrix-multiply rates in float32 and bfloat16
(speeds are only comparable on one machine, and a bf16 figure means little without knowing
whether the CPU multiplies bf16 in hardware)."""

from __future__ import annotations

import platform
import time

import torch

from nmt.device import cpu_flags, cpu_has_bf16

FEATURES = ("amx_bf16", "avx512_bf16", "amx_int8", "avx512_vnni", "avx_vnni")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device) -> str:
    """One line: the CPU (or GPU), PyTorch's CPU capability and the bf16/int8 features."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    features = [f for f in FEATURES if f in cpu_flags()] or ["none of " + ", ".join(FEATURES)]
    return (
        f"CPU {cpu_model()}; PyTorch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"bf16 in hardware: {({True: 'yes', False: 'no', None: 'unknown'})[cpu_has_bf16()]} "
        f"({' '.join(features)})"
    )


def matmul_rate(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10
) -> float:
    """Measured dense matrix-multiply FLOP/s in `dtype` on this device."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * size**3 * repeats / (time.perf_counter() - started)


def rates_line(device: torch.device) -> str:
    fp32, bf16 = matmul_rate(device), matmul_rate(device, torch.bfloat16)
    return (
        f"matmul 2048²: fp32 {fp32 / 1e9:,.0f} GFLOP/s, bf16 {bf16 / 1e9:,.0f} GFLOP/s "
        f"({bf16 / fp32:.1f}×)"
    )


def main() -> None:
    """`python benchmarks/hardware.py`: what this machine has, and its matrix-multiply rates."""
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        print(describe(device))
        print(rates_line(device))


if __name__ == "__main__":
    main()
