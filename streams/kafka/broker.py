"""The local Kafka-protocol broker: noida-db's bundled binary, from PyPI, no JVM and no Docker."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from types import TracebackType


class BrokerError(RuntimeError):
    """The local broker could not be found or did not come up."""


def broker_binary() -> Path:
    try:
        path = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise BrokerError(
            "the local broker is not installed: pip install 'cx-monitor[broker]' (noida-db)"
        ) from None
    if not path.is_file():
        raise BrokerError(f"noida-db's binary is missing at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def broker_command(host: str, port: int, data_dir: Path) -> list[str]:
    return [
        str(broker_binary()),
        "start",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
        "--host",
        host,
        "--data-dir",
        str(data_dir),
    ]


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@dataclass
class LocalBroker:
    """A broker process for one data directory; a context manager that starts and stops it."""

    host: str
    port: int
    data_dir: Path
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def saved_state(self) -> Path:
        """The file the broker saves everything it holds to: written anew, as JSON, about
        once a second while anything changes (noida-db 0.2)."""
        return self.data_dir / "kafka.json"

    def last_save(self) -> tuple[int, int]:
        """Which save is on disk: each one writes a new file and renames it into place."""
        stat = self.saved_state.stat()
        return stat.st_ino, stat.st_mtime_ns

    def start(self, *, fresh: bool = False, timeout_s: float = 30.0) -> LocalBroker:
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir.with_name(self.data_dir.name + ".log")
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                broker_command(self.host, self.port, self.data_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_for_port(self.host, self.port, timeout_s):
            self.stop()
            raise BrokerError(
                f"the broker did not listen on {self.host}:{self.port}; see {log_path}"
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalBroker:
        return self if self.process else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
