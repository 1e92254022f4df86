"""A real Prometheus server for tests: started on a free port, stopped cleanly, queried.

The binary is `prometheus` on PATH (Debian's 2.42 on the build machines; CI installs it),
or the one named by `CXMON_PROMETHEUS`. A missing binary fails the test rather than
skipping it: the checks it backs would otherwise silently stop running.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness import free_port
from tests.services import binary, service

BINARY_ENV = "CXMON_PROMETHEUS"
EMPTY_CONFIG = "global:\n  scrape_interval: 15s\nscrape_configs: []\n"


@contextmanager
def start_prometheus(
    tmp_path: Path, config_yaml: str = EMPTY_CONFIG, *, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """Run Prometheus with `config_yaml`, its TSDB under `tmp_path`; yield its base URL once
    `/-/ready` answers. Fails the test with the server's log if it exits or never gets ready."""
    root = tmp_path / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    config = root / "prometheus.yml"
    config.write_text(config_yaml, encoding="utf-8")
    port = free_port()
    command = [
        binary("prometheus", BINARY_ENV),
        f"--config.file={config}",
        f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        *extra_args,
    ]
    with service("prometheus", command, port, root, "/-/ready") as running:
        yield running.url


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
