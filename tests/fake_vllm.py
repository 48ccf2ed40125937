"""A stand-in for `vllm serve` (TEST DOUBLE): takes vLLM's argv, serves tests/fault_server.py.

Used as a grid's `vllm_command` so plugin tests exercise the real process deployer (subprocess,
process group, readiness polling, teardown) in seconds instead of a 40 s vLLM start.

    python tests/fake_vllm.py serve MODEL --host H --port P --served-model-name N [vLLM flags]

Environment: FAKE_VLLM_MODE (a fault_server mode, default ok), FAKE_VLLM_EVENTS (a file that gets
"start NAME" / "stop NAME" lines), FAKE_VLLM_STARTUP_S (delay before listening), FAKE_VLLM_EXIT
(print a vLLM-like argparse error and exit 2 at once), FAKE_VLLM_TTFT_MS, FAKE_VLLM_RECORD_CUDA (add the CUDA_VISIBLE_DEVICES it got to the start event), FAKE_VLLM_GPU_LOAD (stand in for a GPU server: a
torch matmul loop on the first visible GPU, holding up to FAKE_VLLM_GPU_GIB GiB), FAKE_NAME (the label
events use; grids set it per config through `env`), FAKE_VLLM_FAULT_AFTER=N (serve N completions as mode ok —
the readiness probe's — before FAKE_VLLM_MODE's fault starts), FAKE_VLLM_ECHO_AUTH (http_500 error bodies
quote the request's Authorization header), FAKE_VLLM_LIE (comma-separated `flag` / `flag=value`: the server
runs that instead of its argv — a bare flag is a switch flipped — and says so in its startup line and gauges),
FAKE_VLLM_DIVERGE_AT=N (answers change from content token N on: a config whose outputs differ).

Given --max-num-seqs N it generates at most N completions at once (fault_server's slots; the rest queue, their
wait inside the TTFT), so its capacity under load is N / (TTFT + 7 ms) requests per second.

Like vLLM it prints `non-default args: {...}` at startup and serves `vllm:cache_config_info` and /v1/models
`max_model_len` from the flags it runs (vLLM's defaults for those not given).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_server import main as fault_server_main  # noqa: E402
from pytest_vllmgrid.vllm_argv import flag_groups  # noqa: E402

CACHE_DEFAULTS = {"enable_prefix_caching": True, "block_size": 16, "gpu_memory_utilization": 0.9,
                  "kv_cache_dtype": "auto"}
DEFAULT_MAX_MODEL_LEN = 4096


def _event(line: str) -> None:
    """Append one line to the events file, if any."""
    path = os.environ.get("FAKE_VLLM_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{line} {time.monotonic():.6f}\n")


def _typed(token: str):
    """An argv value as vLLM's parser would type it: bool, int, float, else the string."""
    if token.lower() in ("true", "false"):
        return token.lower() == "true"
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def running_flags(argv: list[str]) -> dict:
    """The flags the fake runs: its argv as {dest: value}, then FAKE_VLLM_LIE's replacements."""
    flags = {}
    for dest, tokens in flag_groups(argv)[1]:
        head = tokens[0]
        if "=" in head:
            flags[dest] = _typed(head.split("=", 1)[1])
        elif len(tokens) > 1:
            flags[dest] = _typed(tokens[1]) if len(tokens) == 2 else [_typed(t) for t in tokens[1:]]
        else:
            flags[dest] = not head.startswith("--no-")
    for lie in filter(None, os.environ.get("FAKE_VLLM_LIE", "").split(",")):
        dest, sep, value = lie.partition("=")
        flags[dest] = _typed(value) if sep else not flags.get(dest, CACHE_DEFAULTS.get(dest, False))
    return flags


def cache_config_labels(flags: dict) -> dict[str, str]:
    """vllm:cache_config_info's labels for the flags run (vLLM's label names and str() values)."""
    cache = {k: flags.get(k, v) for k, v in CACHE_DEFAULTS.items()}
    return {"engine": "0", "enable_prefix_caching": str(cache["enable_prefix_caching"]),
            "block_size": str(cache["block_size"]), "gpu_memory_utilization": str(cache["gpu_memory_utilization"]),
            "cache_dtype": str(cache["kv_cache_dtype"])}


def _gpu_load() -> None:
    """Stand in for a GPU server: bf16 matmuls on the first visible GPU, VRAM held in 1 GiB steps."""
    import threading

    import torch

    def loop() -> None:
        device = torch.device("cuda", 0)  # index within CUDA_VISIBLE_DEVICES: the worker's own GPU
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        held = []
        step = 0
        while True:
            for _ in range(20):
                a = (a @ a).clamp_(-1, 1)
            torch.cuda.synchronize(device)
            step += 1
            if step % 5 == 0 and len(held) < int(os.environ.get("FAKE_VLLM_GPU_GIB", "8")):
                held.append(torch.empty(2**30, dtype=torch.uint8, device=device))
    threading.Thread(target=loop, daemon=True, name="gpu-load").start()


def main() -> None:
    """Parse vLLM-style arguments, then serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("subcommand", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None)
    args, unknown = parser.parse_known_args()
    name = args.served_model_name or args.model
    print(f"fake vllm: serve {args.model} as {name} on {args.host}:{args.port}; flags {unknown}", flush=True)
    flags = running_flags(unknown)
    shown = {"model_tag": args.model, "host": args.host, "port": args.port, "model": args.model,
             "served_model_name": [name], **flags}
    print(f"(APIServer pid={os.getpid()}) INFO {time.strftime('%m-%d %H:%M:%S')} [api_utils.py:286] "
          f"non-default args: {shown!r}", flush=True)
    cache_config = json.dumps(cache_config_labels(flags))
    max_model_len = flags.get("max_model_len", DEFAULT_MAX_MODEL_LEN)
    max_model_len = max_model_len if isinstance(max_model_len, int) else DEFAULT_MAX_MODEL_LEN
    if os.environ.get("FAKE_VLLM_EXIT"):
        print(f"vllm: error: unrecognized arguments: {os.environ['FAKE_VLLM_EXIT']}", flush=True)
        sys.exit(2)
    label = os.environ.get("FAKE_NAME", name)
    cuda = f" cuda={os.environ.get('CUDA_VISIBLE_DEVICES', '')}" if os.environ.get("FAKE_VLLM_RECORD_CUDA") else ""
    _event(f"start {label}{cuda}")

    def on_term(signum, frame) -> None:
        _event(f"stop {label}")
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    if os.environ.get("FAKE_VLLM_GPU_LOAD"):
        _gpu_load()
    time.sleep(float(os.environ.get("FAKE_VLLM_STARTUP_S", "0")))
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    ttft_ms = os.environ.get("FAKE_VLLM_TTFT_MS", "5")
    echo_auth = bool(os.environ.get("FAKE_VLLM_ECHO_AUTH"))
    if os.environ.get("FAKE_VLLM_FAULT_AFTER"):
        _serve_then_fault(mode, int(os.environ["FAKE_VLLM_FAULT_AFTER"]), args.port, name, float(ttft_ms), echo_auth,
                          cache_config=cache_config, max_model_len=max_model_len)
        return
    fault_server_main(["--mode", mode, "--port", str(args.port),
                       "--model", name, "--max-lifetime", "300", "--tokens", "8",
                       "--ttft-ms", ttft_ms, "--itl-ms", "1", *(["--echo-auth"] if echo_auth else []),
                       *(["--diverge-at", os.environ["FAKE_VLLM_DIVERGE_AT"]] if os.environ.get("FAKE_VLLM_DIVERGE_AT")
                         else []),
                       "--cache-config", cache_config, "--max-model-len", str(max_model_len),
                       *(["--slots", str(flags["max_num_seqs"])] if isinstance(flags.get("max_num_seqs"), int) else [])])


def _serve_then_fault(mode: str, healthy: int, port: int, name: str, ttft_ms: float, echo_auth: bool,
                      **served: object) -> None:
    """Serve `healthy` completions as mode ok, then inject `mode`'s fault (a server that breaks after readiness)."""
    from fault_server import FaultServer

    with FaultServer("ok", port=port, model=name, tokens=8, ttft_ms=ttft_ms, itl_ms=1, echo_auth=echo_auth,
                     **served) as server:
        print(f"listening on {server.base_url}; mode {mode} after {healthy} completion(s)", flush=True)
        deadline = time.monotonic() + 300
        while server.app.completions_served < healthy and time.monotonic() < deadline:
            time.sleep(0.002)
        server.app.options.mode = mode
        time.sleep(max(0.0, deadline - time.monotonic()))


if __name__ == "__main__":
    main()
