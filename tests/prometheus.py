"""A real Prometheus server for tests: started on a free port, stopped cleanly, queried.

The binary is `prometheus` on PATH (Debian's 2.42 on the build machines; CI installs it),
or the one named by `CXMON_PROMETHEUS`. A missing binary fails the test rather than
skipping it: the checks it backs would otherwise silently stop running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import free_port

BINARY_ENV = "CXMON_PROMETHEUS"
EMPTY_CONFIG = "global:\n  scrape_interval: 15s\nscrape_configs: []\n"


def prometheus_binary() -> str:
    """The Prometheus server binary, or a test failure that says how to get one."""
    named = os.environ.get(BINARY_ENV)
    found = shutil.which(named or "prometheus")
    if found is None:
        pytest.fail(
            f"the Prometheus server binary {named or 'prometheus'!r} is not on PATH: install it "
            f"(Debian: apt-get install prometheus; or a release from prometheus.io) or set "
            f"{BINARY_ENV} to its path",
            pytrace=False,
        )
    return found


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _log_tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: Prometheus shuts its TSDB down cleanly
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


@contextmanager
def start_prometheus(
    tmp_path: Path,
    config_yaml: str = EMPTY_CONFIG,
    *,
    ready_timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> Iterator[str]:
    """Run Prometheus with `config_yaml`, its TSDB under `tmp_path`; yield its base URL.

    Waits for `/-/ready`; fails the test with the server's log if it exits or never gets
    ready. On exit the server is stopped with SIGTERM (SIGKILL after 15 s).
    """
    binary = prometheus_binary()
    root = tmp_path / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(config_yaml, encoding="utf-8")
    log = root / "prometheus.log"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *extra_args,
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"Prometheus exited with {process.returncode} before it was ready "
                    f"({' '.join(command)}):\n{_log_tail(log)}",
                    pytrace=False,
                )
            try:
                status, _ = _get(f"{base_url}/-/ready", timeout=2.0)
            except OSError:
                status = 0
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Prometheus at {base_url} not ready after {ready_timeout:.0f}s:\n"
                    f"{_log_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.1)
        yield base_url
    finally:
        stop_process(process)


def _api(base_url: str, endpoint: str, params: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST a form to the HTTP API; errors (400, 422, 503) come back as their JSON body."""
    body = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(
        f"{base_url}/api/v1/{endpoint}",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        raw = error.read()
    answer: dict[str, Any] = json.loads(raw)
    return answer


def query(
    base_url: str, expr: str, *, at: float | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """`/api/v1/query`: the whole answer (`status`, `data` or `errorType`/`error`)."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return _api(base_url, "query", params, timeout)


def query_range(
    base_url: str, expr: str, start: float, end: float, step: float, *, timeout: float = 30.0
) -> dict[str, Any]:
    """`/api/v1/query_range`: the whole answer (`status`, `data` or `errorType`/`error`)."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    return _api(base_url, "query_range", params, timeout)
