"""Is a model servable before a server tries: a local path, a Hugging Face hub id in the local cache, or one the
hub can send (only when the server may go online). Plain Python; huggingface_hub is used when installed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # namespace/name


def is_offline(env: Mapping[str, str]) -> bool:
    """True when an environment keeps huggingface_hub from downloading (HF_HUB_OFFLINE=1 and friends)."""
    return env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps models for a process with this environment."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or str(Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    return Path(home).expanduser() / "hub"


def hub_id(model: str) -> bool:
    """True for a `namespace/name` hub id that is not a local directory."""
    return bool(_HUB_ID.match(model)) and not Path(model).expanduser().exists()


def is_cached(model: str, cache_dir: Path) -> bool:
    """True when the local hub cache holds a snapshot of `model` (huggingface_hub's own lookup when installed)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model, "config.json", cache_dir=cache_dir), str):
            return True
    except ImportError:
        pass
    snapshots = cache_dir / f"models--{model.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(any(snapshot.iterdir()) for snapshot in snapshots.iterdir() if snapshot.is_dir())


def fetch_hint(model: str) -> str:
    """How a user puts a hub model into the local cache."""
    return f"fetch it first with `huggingface-cli download {model}` (or `hf download {model}`)"


def model_problem(model: str, env: Mapping[str, str] | None = None, *, offline_because: str = "") -> str | None:
    """Why a server with environment `env` cannot load `model`, or None: a missing path; a hub id not cached
    while offline; a hub id the hub does not have or cannot be asked for."""
    env = os.environ if env is None else env
    if model.startswith(("/", ".", "~")):
        return None if Path(model).expanduser().exists() else f"model path {model!r} does not exist"
    if not hub_id(model):
        return None  # a name the server resolves its own way
    cache = hub_cache_dir(env)
    if is_cached(model, cache):
        return None
    if is_offline(env):
        return (f"model {model!r} is not in the local Hugging Face cache ({cache}) and the server runs offline "
                f"({offline_because or 'HF_HUB_OFFLINE=1'}): {fetch_hint(model)}")
    return _download_problem(model, env)


def _download_problem(model: str, env: Mapping[str, str]) -> str | None:
    """Why the hub cannot send `model` (asked once, briefly, over its HTTP API), or None.

    Asked with httpx rather than huggingface_hub: the latter reads HF_HUB_OFFLINE and HF_ENDPOINT once, at its
    first import, so in a long-lived process it can answer for another environment than `env`."""
    import httpx

    endpoint = (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    shown = env.get("HF_ENDPOINT") or "huggingface.co"
    token = env.get("HF_TOKEN")
    host = httpx.URL(endpoint).host
    try:
        response = httpx.get(f"{endpoint}/api/models/{model}", timeout=HUB_TIMEOUT_S,
                             headers={"Authorization": f"Bearer {token}"} if token else None,
                             trust_env=host not in ("127.0.0.1", "localhost", "::1"))
    except httpx.HTTPError as exc:
        return (f"model {model!r} is not in the local Hugging Face cache and the hub ({shown}) cannot be reached "
                f"({type(exc).__name__}): {fetch_hint(model)} on a machine that can reach it, or fix the network / "
                "HF_ENDPOINT")
    if response.status_code == 200:
        return None
    if response.headers.get("X-Error-Code") == "GatedRepo":
        return f"model {model!r} is gated on the hub: accept its terms on the model page and set HF_TOKEN"
    if response.status_code in (401, 403, 404):
        return (f"model {model!r} is neither in the local Hugging Face cache nor on the hub ({shown}: HTTP "
                f"{response.status_code}); check the id, or set HF_TOKEN for a private model")
    return f"model {model!r} is not cached and the hub answered HTTP {response.status_code}"
