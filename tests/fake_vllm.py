"""A stand-in for `vllm serve` (TEST DOUBLE): takes vLLM's argv, serves tests/fault_server.py.

Used as a grid's `vllm_command` so plugin tests exercise the real process deployer (subprocess,
process group, readiness polling, teardown) in seconds instead of a 40 s vLLM start.

    python tests/fake_vllm.py serve MODEL --host H --port P --served-model-name N [vLLM flags]

Environment: FAKE_VLLM_MODE (a fault_server mode, default ok), FAKE_VLLM_EVENTS (a file that gets
"start NAME" / "stop NAME" lines), FAKE_VLLM_STARTUP_S (delay before listening), FAKE_VLLM_EXIT
(print a vLLM-like argparse error and exit 2 at once), FAKE_VLLM_TTFT_MS, FAKE_VLLM_RECORD_CUDA (add the CUDA_VISIBLE_DEVICES it got to the start event), FAKE_NAME (the label
events use; grids set it per config through `env`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_server import main as fault_server_main  # noqa: E402


def _event(line: str) -> None:
    """Append one line to the events file, if any."""
    path = os.environ.get("FAKE_VLLM_EVENTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{line} {time.monotonic():.6f}\n")


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
    time.sleep(float(os.environ.get("FAKE_VLLM_STARTUP_S", "0")))
    fault_server_main(["--mode", os.environ.get("FAKE_VLLM_MODE", "ok"), "--port", str(args.port),
                       "--model", name, "--max-lifetime", "300", "--tokens", "8",
                       "--ttft-ms", os.environ.get("FAKE_VLLM_TTFT_MS", "5"), "--itl-ms", "1"])


if __name__ == "__main__":
    main()
