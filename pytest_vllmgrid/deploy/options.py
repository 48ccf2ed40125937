"""Settings every deployer reads, gathered from the command line, ini file and grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DeployOptions:
    """Run-wide deployment settings (the per-config ones live in ServerConfig)."""

    state_dir: Path
    cache_root: Path | None = None
    api_key_env: str | None = None
    api_key: str | None = field(default=None, repr=False)
    startup_timeout_s: float | None = None
    poll_interval_s: float = 0.5
    compose_file: str | None = None
    compose_service: str | None = None
    compose_project: str | None = None
    compose_env_file: str | None = None
    min_free_disk_gb: float = 5.0
    restore: bool = False
    endpoint_url: str | None = None
    gpu_devices: list[str] | None = None  # this worker's CUDA_VISIBLE_DEVICES (scale-out)
    port_range: tuple[int, int] | None = None  # this worker's ports (scale-out); None = any free port
    offline: bool = False  # --vllm-offline / grid `offline: true`: servers never reach the Hugging Face hub
