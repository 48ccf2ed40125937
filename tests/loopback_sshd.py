"""Stand-in GPU hosts for the multi-host tests: one OpenSSH sshd per loopback address (127.0.0.2, 127.0.0.3...),
each with its own host key, port, authorized_keys and working directory, started and stopped by the test.

`sshd_problem()` says why none can run here (no /usr/sbin/sshd, no ssh client); with VLLMGRID_REQUIRE_SSHD=1
(.ci/run) a test must fail instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


def sshd_problem() -> str | None:
    """Why loopback ssh hosts cannot run here, or None."""
    if not SSHD.is_file():
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"the OpenSSH client tool {tool!r} is not on PATH"
    return None


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@dataclass
class LoopbackHost:
    """One sshd on its own loopback address; `alias` is its Host name in the shared ssh_config."""

    alias: str
    address: str
    root: Path  # keys, config, log; `workdir` (the worker's chdir) and `venv` below it
    port: int = 0
    proc: subprocess.Popen | None = None
    client_key: Path | None = None
    known_host_line: str = ""
    log: Path = field(init=False)

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    def start(self, client_key: Path, venv_target: Path) -> None:
        """Host key, authorized_keys, sshd_config, the host's venv path (a symlink to `venv_target`), then sshd -D."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(exist_ok=True)
        if not self.venv.exists():
            self.venv.symlink_to(venv_target)
        self.client_key = client_key
        host_key = self.root / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        self.known_host_line = f"[{self.address}]:{{port}} " + (host_key.with_suffix(".pub")).read_text().strip()
        authorized = self.root / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        self.log = self.root / "sshd.log"
        for _ in range(5):  # a port picked free can be taken before sshd binds it: pick again
            self.port = free_port(self.address)
            config = self.root / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress {self.address}:{self.port}", f"HostKey {host_key}", f"PidFile {self.root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "PrintMotd no", "AllowTcpForwarding no", "X11Forwarding no", "LogLevel INFO", ""]))
            log = self.log.open("ab")
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                         start_new_session=True)
            if self._wait_listening(10.0):
                self.known_host_line = self.known_host_line.replace("{port}", str(self.port))
                return
            self.stop()
        raise RuntimeError(f"sshd on {self.address} did not start; log:\n{self.log.read_text()[-2000:]}")

    def _wait_listening(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def ssh_config_block(self, known_hosts: Path) -> str:
        return "\n".join([
            f"Host {self.alias}", f"  HostName {self.address}", f"  Port {self.port}", "  User root",
            f"  IdentityFile {self.client_key}", "  IdentitiesOnly yes", f"  UserKnownHostsFile {known_hosts}",
            "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 5", "  LogLevel ERROR", ""])

    def processes(self) -> list:
        """sshd and everything it started (sessions, the xdist worker, the servers that worker started)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> list[int]:
        """The host dies: SIGKILL sshd and every process below it at once (no teardown runs anywhere)."""
        victims = self.processes()
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except Exception:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=10)
        return [p.pid for p in victims]

    def stop(self) -> None:
        """Stop sshd and anything left below it (teardown)."""
        if self.proc is None:
            return
        leftovers = self.processes()[1:]
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for proc in leftovers:
            try:
                proc.kill()
            except Exception:
                pass


def start_hosts(base: Path, venv_target: Path, aliases: dict[str, str]) -> tuple[list[LoopbackHost], Path]:
    """Start one sshd per alias -> address; returns the hosts and the ssh_config file that reaches them."""
    base.mkdir(parents=True, exist_ok=True)
    client_key = base / "client_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client_key)], check=True)
    hosts: list[LoopbackHost] = []
    try:
        for alias, address in aliases.items():
            host = LoopbackHost(alias, address, base / alias)
            host.start(client_key, venv_target)
            hosts.append(host)
    except BaseException:
        for host in hosts:
            host.stop()
        raise
    known_hosts = base / "known_hosts"
    known_hosts.write_text("".join(h.known_host_line + "\n" for h in hosts))
    ssh_config = base / "ssh_config"
    ssh_config.write_text("".join(h.ssh_config_block(known_hosts) for h in hosts))
    return hosts, ssh_config
