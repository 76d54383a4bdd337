"""A real multi-node Ray cluster on this machine, for tests: one `ray start --block` process per node, each with
a temp dir of its own, all on loopback addresses, stopped by pid.

Why each choice:
- `--block`, in a session of its own (start_new_session): every process a node starts (GCS, raylet, agents, the
  worker processes its raylet forks later) stays in that session, so `stop()` finds them all by session id in
  /proc and kills them by pid. `ray stop` would stop every Ray process of the machine, other tests' included.
- Loopback: Ray rewrites `--node-ip-address 127.0.0.1` to the machine's network address (it takes 127.0.0.1 for
  "not given"), so the nodes are 127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback on Linux): every
  connection between the nodes and the driver stays on this machine.
- Token authentication, as Ray enables it for clusters it starts itself: Ray's servers also listen on the
  machine's other addresses, and a random token per cluster (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) keeps anything
  else from joining or submitting work. It is passed in the environment, so ~/.ray is never read or written.
- SIGINT ignored in every node, as in a cluster started from a script in the background (nohup, `&`, a batch
  job, a CI runner): Ray's worker processes inherit it, which is where Ray's gentle task cancel used to fail
  (see extract/run/engine_ray.py, cancel_decode).
- No memory monitor (RAY_memory_monitor_refresh_ms=0): Ray's monitor kills workers when the *machine* is above
  95% memory, which on a shared test machine would kill a test's worker for another program's memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT_S = 120.0
OBJECT_STORE_BYTES = 128 * 1024 * 1024  # small videos: keeps /dev/shm use low on a shared machine


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list[int]:
    """Pids of the live processes of a session (zombies excluded: they are gone, only not reaped yet)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, sid = stat.rsplit(")", 1)[1].split()[:4]
        if int(sid) == session and state != "Z":
            found.append(int(entry.name))
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Node:
    ip: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def session(self) -> int:
        return self.process.pid  # start_new_session: the `ray start` process leads its session

    def processes(self) -> list[int]:
        return session_processes(self.session)

    def raylet(self) -> int:
        pids = [pid for pid in self.processes() if "/raylet/raylet " in command_line(pid)]
        assert len(pids) == 1, f"node {self.ip}: raylets {pids}"
        return pids[0]

    def titled(self, prefix: str) -> list[int]:
        """Pids of this node's Ray workers whose process title starts with `prefix` (e.g. 'ray::ModelWorker')."""
        return [pid for pid in self.processes() if command_line(pid).startswith(prefix)]


@dataclass
class LocalCluster:
    """Ray nodes started with `ray start` on loopback addresses; `stop()` (a finaliser) kills every process."""

    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp")))
    address: str = ""

    @classmethod
    def start(cls, cpus: list[int], env: dict[str, str] | None = None) -> LocalCluster:
        """A head node with cpus[0] CPUs, then one node per further entry."""
        token = secrets.token_hex(16)
        base = {
            **os.environ,
            **(env or {}),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_memory_monitor_refresh_ms": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        for name in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # another cluster; no multi-node
            base.pop(name, None)
        cluster = cls(base)
        try:
            for number, count in enumerate(cpus):
                cluster.add_node(count, head=number == 0)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def driver_env(self) -> dict[str, str]:
        """The environment a driver of this cluster runs with (the token; no address of another cluster)."""
        return {key: value for key, value in self.env.items() if key != "RAY_memory_monitor_refresh_ms"}

    def add_node(self, cpus: int, head: bool = False) -> Node:
        node = self._launch(cpus, head)
        self._await(node)
        if head:
            self.address = (node.temp_dir / "ray_current_cluster").read_text().strip()
        return node

    def add_nodes(self, cpus: list[int]) -> list[Node]:
        """Nodes joining the running head, started side by side (each start takes tens of seconds)."""
        nodes = [self._launch(count, head=False) for count in cpus]
        for node in nodes:
            self._await(node)
        return nodes

    def _launch(self, cpus: int, head: bool) -> Node:
        number = len(self.nodes)
        ip, temp_dir, log = f"127.0.0.{number + 2}", self.root / f"n{number}", self.root / f"n{number}.log"
        options = ["--block", "--node-ip-address", ip, "--num-cpus", str(cpus), "--num-gpus", "0"]
        options += ["--temp-dir", str(temp_dir), "--object-store-memory", str(OBJECT_STORE_BYTES)]
        options += ["--disable-usage-stats"]
        if head:
            options += ["--head", "--port", "0", "--include-dashboard", "false", "--dashboard-port", "0"]
            options += ["--ray-client-server-port", str(free_port(ip))]
        else:
            options += ["--address", self.address]
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(RAY), "start", *options],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=ignore_sigint,
            )
        node = Node(ip, temp_dir, process, log)
        self.nodes.append(node)
        return node

    @staticmethod
    def _await(node: Node) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "block forever" not in node.log.read_text(errors="replace"):
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start on {node.ip} failed: {node.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def worker_node_of(self, pid: int) -> Node:
        """The node whose raylet started the Ray worker process `pid`."""
        parent = parent_of(pid)
        for node in self.nodes:
            if parent in node.processes() and "/raylet/raylet " in command_line(parent or 0):
                return node
        raise LookupError(f"process {pid} is not a worker of this cluster")

    def titled(self, prefix: str) -> list[int]:
        return [pid for node in self.nodes for pid in node.titled(prefix)]

    def kill_raylet(self, node: Node) -> None:
        os.kill(node.raylet(), signal.SIGKILL)

    def stop(self) -> None:
        """`ray start --block` stops its node on SIGTERM; whatever is left is killed by pid."""
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(max(0.1, deadline - time.monotonic()))
        for _ in range(50):
            left = [pid for node in self.nodes for pid in node.processes()]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Command lines of this cluster's processes still alive (none after stop())."""
        return [command_line(pid) for node in self.nodes for pid in node.processes()]
