"""A `loratune serve` process on a free loopback port, talked to over HTTP (the fixture `serve` in conftest.py)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading

import httpx

LISTENING = re.compile(r"listening on (http://[^ ]+)")


class Served:
    """`loratune serve ARGS --port 0` in a subprocess: its URL once it listens, its stderr lines, and a way to stop
    it with a signal."""

    def __init__(self, args: list[str], timeout_s: float = 120.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", "loratune", "serve", *map(str, args), "--port", "0", "--device", "cpu"]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for_url(timeout_s)
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def _wait_for_url(self, timeout_s: float) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout_s)
            except queue.Empty:
                self.process.kill()
                raise AssertionError(f"the server did not start within {timeout_s} s: {self.lines}") from None
            if line is None:
                raise AssertionError(f"the server exited with {self.process.wait()}: {self.lines}")
            found = LISTENING.search(line)
            if found:
                return found.group(1)

    def post(self, path: str, body: object, **kwargs) -> httpx.Response:
        return self.client.post(path, json=body, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send `signum`, wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout_s)
        finally:
            self.client.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.client.close()
