"""`mnist-serve` with gRPC on: gunicorn (HTTP) and GRPC_WORKERS gRPC server processes (grpc/server.py),
started, signalled and watched by one small process, so that one command and one container serve both.

- SIGTERM/SIGINT go to every child; each drains within GRACEFUL_TIMEOUT; the supervisor exits when
  all have, with gunicorn's exit status. SIGHUP goes to every child (a reload: new gunicorn workers,
  the models re-read).
- A gRPC process that dies is started again, after a pause that doubles while it keeps dying (1 s
  up to 30 s). One that dies CRASH_LIMIT times in a row within its first seconds cannot start
  (a port taken, a broken install): everything is stopped and the supervisor exits 1, so the
  container stops visibly instead of serving HTTP with a dead gRPC port.
- gunicorn exiting stops the gRPC processes: it already restarts its own workers, and its exit
  means the service is going down.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time

from prometheus_client import multiprocess

from ..settings import Settings

log = logging.getLogger("mnist_service.supervisor")

CRASH_LIMIT = 5  # quick deaths in a row before giving up
QUICK_DEATH_SECONDS = 10.0  # a process that lived less than this did not start properly
RESTART_PAUSE = (1.0, 30.0)  # first and longest pause before a restart
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class GrpcProcess:
    """One gRPC server process and its restart bookkeeping."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.quick_deaths = 0
        self.restart_at = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "mnist_service.grpc.server"])
        self.started = time.monotonic()

    def died(self) -> float:
        """Note its death; the pause before its restart."""
        lived = time.monotonic() - self.started
        self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
        pause = min(RESTART_PAUSE[0] * 2 ** max(self.quick_deaths - 1, 0), RESTART_PAUSE[1])
        self.restart_at = time.monotonic() + pause
        self.process = None
        return pause


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port: a bind without SO_REUSEPORT fails beside any listener,
    also one that set it (as grpc core does by default)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Supervisor:
    def __init__(self, settings: Settings, gunicorn_command: list[str]):
        self.settings, self.gunicorn_command = settings, gunicorn_command
        self.grpc = [GrpcProcess() for _ in range(settings.grpc_workers)]
        self.gunicorn: subprocess.Popen | None = None
        self.stopping = False

    def run(self) -> int:
        host, port = self.settings.host, self.settings.grpc_port
        if not port_is_free(host, port):
            print(f"mnist-serve: GRPC_PORT {port} is in use on {host}", file=sys.stderr)
            return 2
        for signum in FORWARDED:
            signal.signal(signum, self._forward)
        self.gunicorn = subprocess.Popen(self.gunicorn_command)
        for process in self.grpc:
            process.start()
        log.info("serving", extra={"port": self.settings.port, "grpc_port": self.settings.grpc_port,
                                   "grpc_workers": len(self.grpc), "gunicorn_pid": self.gunicorn.pid,
                                   "grpc_pids": [p.process.pid for p in self.grpc]})
        return self._watch()

    def _forward(self, signum, frame) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for child in [self.gunicorn, *(p.process for p in self.grpc)]:
            if child is not None and child.poll() is None:
                child.send_signal(signum)

    def _watch(self) -> int:
        while True:
            status = self.gunicorn.poll()
            if status is not None:
                return self._finish(status)
            if not all(self._check(process) for process in self.grpc):
                self._forward(signal.SIGTERM, None)
                self.gunicorn.wait()
                return self._finish(1)
            time.sleep(0.2)

    def _check(self, process: GrpcProcess) -> bool:
        """Restart `process` if it is due; False when it cannot start."""
        if process.process is None:
            if not self.stopping and time.monotonic() >= process.restart_at:
                process.start()
                log.info("gRPC server process restarted", extra={"pid": process.process.pid})
            return True
        status = process.process.poll()
        if status is None or self.stopping:
            return True
        pid = process.process.pid
        multiprocess.mark_process_dead(pid)
        pause = process.died()
        if process.quick_deaths >= CRASH_LIMIT:
            log.critical("gRPC server process cannot start: stopping the service",
                         extra={"pid": pid, "exit_status": status, "attempts": CRASH_LIMIT})
            return False
        log.error("gRPC server process died; restarting it",
                  extra={"pid": pid, "exit_status": status, "restart_in_seconds": pause})
        return True

    def _finish(self, status: int) -> int:
        """gunicorn has exited: stop the gRPC processes (draining), wait for them, pass on its status."""
        if status and not self.stopping:
            log.error("gunicorn exited", extra={"exit_status": status})
        self.stopping = True
        deadline = time.monotonic() + self.settings.graceful_timeout + 5
        for process in self.grpc:
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for process in self.grpc:
            if process.process is None:
                continue
            try:
                process.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.process.kill()
                process.process.wait()
            multiprocess.mark_process_dead(process.process.pid)
        return status


def clear_metrics(directory: str) -> None:
    """Start metrics from zero: stale files of an earlier run would corrupt the totals."""
    for entry in os.scandir(directory):
        if entry.name.endswith(".db"):
            os.unlink(entry.path)
