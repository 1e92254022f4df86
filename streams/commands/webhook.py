"""A webhook receiver that prints what Alertmanager sends it: for the demo, compose and tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from aiohttp import web


def notification_line(path: str, notification: dict[str, Any]) -> str:
    """One line a person reads: receiver, status, how many alerts, and their names."""
    alerts = notification.get("alerts") or []
    names = sorted({str(alert.get("labels", {}).get("alertname", "?")) for alert in alerts})
    group = notification.get("groupLabels") or {}
    return (
        f"{path} {str(notification.get('status', '?')).upper()} {len(alerts)} alert(s) "
        f"{','.join(names)} group={orjson.dumps(group).decode()}"
    )


def build_receiver(out: TextIO, log: Callable[[str], None]) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            notification = orjson.loads(body)
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="not JSON")
        if not isinstance(notification, dict):
            return web.Response(status=400, text="not a JSON object")
        out.write(orjson.dumps({"path": request.path, **notification}).decode() + "\n")
        out.flush()
        log(notification_line(request.path, notification))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{receiver:.*}", receive)
    return app


async def serve(host: str, port: int) -> None:
    """Prints each notification as a JSON line on stdout, and a readable line on stderr."""
    app = build_receiver(sys.stdout, lambda line: print(line, file=sys.stderr, flush=True))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"webhook receiver listening on http://{host}:{port}/", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
