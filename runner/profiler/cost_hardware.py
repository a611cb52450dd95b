"""Peak dense bf16 matmul rate and HBM bandwidth of known accelerators: the denominators of S-MFU and S-MBU.

Vendor datasheet figures (dense, i.e. without 2:4 structured sparsity, which the datasheets' headline numbers
include at twice the rate). A card not listed, or a CPU, has no peak here: its S-MFU / S-MBU are null unless the
peaks are given (`device.peak_tflops`, `device.peak_bandwidth_gbs`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peak:
    tflops: float  # dense bf16 tensor-core TFLOP/s
    bandwidth_gbs: float  # HBM GB/s (10^9 bytes per second)
    source: str


# (substring of torch.cuda.get_device_name(), case-insensitive) -> peak; the first match wins, so the more specific
# names come first.
PEAKS: tuple[tuple[str, Peak], ...] = (
    # https://www.nvidia.com/en-us/data-center/h200/ (H200 NVL: 1,671 TFLOPS bf16 with sparsity, 4.8 TB/s; H200 SXM:
    # 1,979 with sparsity, 4.8 TB/s)
    ("H200 NVL", Peak(835.5, 4800.0, "https://www.nvidia.com/en-us/data-center/h200/")),
    ("H200", Peak(989.5, 4800.0, "https://www.nvidia.com/en-us/data-center/h200/")),
    # https://www.nvidia.com/en-us/data-center/h100/ (H100 NVL: 1,671 sparse, 3.9 TB/s; PCIe: 1,513 sparse, 2 TB/s;
    # SXM: 1,979 sparse, 3.35 TB/s; torch names the SXM card "NVIDIA H100 80GB HBM3")
    ("H100 NVL", Peak(835.5, 3900.0, "https://www.nvidia.com/en-us/data-center/h100/")),
    ("H100 PCIe", Peak(756.5, 2000.0, "https://www.nvidia.com/en-us/data-center/h100/")),
    ("H100", Peak(989.5, 3350.0, "https://www.nvidia.com/en-us/data-center/h100/")),
    # https://www.nvidia.com/en-us/data-center/a100/ (312 TFLOPS bf16 dense; 80GB SXM 2,039 GB/s, 80GB PCIe
    # 1,935 GB/s, 40GB 1,555 GB/s)
    ("A100-SXM4-80GB", Peak(312.0, 2039.0, "https://www.nvidia.com/en-us/data-center/a100/")),
    ("A100 80GB PCIe", Peak(312.0, 1935.0, "https://www.nvidia.com/en-us/data-center/a100/")),
    ("A100", Peak(312.0, 1555.0, "https://www.nvidia.com/en-us/data-center/a100/")),
)


def peak_for(device_name: str | None, tflops: float | None = None, bandwidth_gbs: float | None = None,
             cuda: bool = True) -> tuple[float | None, float | None]:
    """(peak TFLOP/s, peak GB/s) of the device: a given value wins, else the table for a CUDA device, else None."""
    known = None
    if cuda and device_name:
        known = next((peak for pattern, peak in PEAKS if pattern.lower() in device_name.lower()), None)
    return (tflops if tflops is not None else (known.tflops if known else None),
            bandwidth_gbs if bandwidth_gbs is not None else (known.bandwidth_gbs if known else None))
