"""Real processes for tests (Alertmanager, the webhook receiver, and the plumbing that
tests/prometheus.py starts Prometheus with), and the shipped configs rewritten for them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import REPO, free_port

PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_RULES = REPO / "deploy" / "prometheus" / "rules"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"


def binary(name: str, override_env: str | None = None) -> str:
    """The program on PATH (or named by `override_env`); a missing one fails the test rather
    than skipping it: the checks it backs would otherwise silently stop running."""
    named = (os.environ.get(override_env) if override_env else None) or name
    path = shutil.which(named)
    if path is None:
        pytest.fail(
            f"{named} is not installed: `apt-get install prometheus prometheus-alertmanager` "
            f"(`make test` does it on a fresh machine)"
            + (f", or set {override_env} to its path" if override_env else ""),
            pytrace=False,
        )
    return path


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM first (Prometheus and Alertmanager shut their storage down cleanly)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def get_text(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text: str = response.read().decode()
        return text


@dataclass
class Service:
    """One process under test, with the address it serves and the log it writes."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited:\n{self.log()[-3000:]}", pytrace=False)
            try:
                get_text(self.url + path, timeout_s=1.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        pytest.fail(f"{self.name} not ready in {timeout_s}s:\n{self.log()[-3000:]}", pytrace=False)

    def stop(self) -> None:
        stop_process(self.process)


@contextmanager
def service(
    name: str, command: list[str], port: int, root: Path, ready_path: str
) -> Iterator[Service]:
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    running = Service(name, f"http://127.0.0.1:{port}", process, log_path)
    try:
        running.wait_ready(ready_path)
        yield running
    finally:
        running.stop()


def prometheus_config(
    targets: list[str], alertmanagers: list[str], interval: str = "1s"
) -> dict[str, Any]:
    """The shipped configuration and rules, pointed at local processes and sped up."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] |= {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_RULES / "*.yml")]
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "cx-monitor"]
    job["static_configs"] = [{"targets": targets}]
    job.pop("scrape_interval", None)
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": alertmanagers}]}]
    return config


def alertmanager_config(webhook_url: str, group_wait: str = "2s") -> dict[str, Any]:
    """The shipped routes, receivers and inhibitions, with receivers at `webhook_url` and
    groups flushed in seconds rather than minutes."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            path = "/" + webhook["url"].split("://", 1)[1].split("/", 1)[1]
            webhook["url"] = webhook_url + path

    def quicken(route: dict[str, Any]) -> None:
        for name, value in (("group_wait", group_wait), ("group_interval", "1s")):
            if name in route or route is config["route"]:
                route[name] = value
        for child in route.get("routes", []):
            quicken(child)

    quicken(config["route"])
    return config


@contextmanager
def alertmanager(root: Path, config: dict[str, Any], port: int | None = None) -> Iterator[Service]:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        binary("prometheus-alertmanager"),
        f"--config.file={config_path}",
        f"--storage.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one instance: no gossip port to collide on
    ]
    with service("alertmanager", command, port, root, "/-/ready") as running:
        yield running


@contextmanager
def webhook_receiver(root: Path) -> Iterator[tuple[Service, Path]]:
    """`cxmon webhook`, its notifications as JSON lines in the returned file."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    out = root / "notifications.jsonl"
    command = [sys.executable, "-m", "streams", "webhook", "--port", str(port)]
    with out.open("wb") as sink, (root / "webhook.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=sink, stderr=log, cwd=REPO)
    running = Service("webhook", f"http://127.0.0.1:{port}", process, root / "webhook.log")
    try:
        deadline = time.monotonic() + 20
        while "listening" not in running.log():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"webhook receiver did not start:\n{running.log()}")
            time.sleep(0.1)
        yield running, out
    finally:
        running.stop()


def notifications(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(what: str, check: Any, timeout_s: float, *, every_s: float = 0.5) -> Any:
    """Polls `check()` until it returns something truthy; fails naming `what` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)
