"""Every setting of the monitor, read once from CXMON_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from streams.catalog import parse_duration_ms


class SettingsError(ValueError):
    """An environment variable that cannot be used, named with its reason."""


@dataclass(frozen=True, slots=True)
class Topics:
    touchpoint_events: str = "cx.touchpoint-events"
    survey_answers: str = "cx.survey-answers"
    identity_links: str = "cx.identity-links"
    alerts: str = "cx.alerts"
    dead_letters: str = "cx.dead-letters"


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: str = "kafka://127.0.0.1:9092"
    catalog: Path = Path("deploy/catalog.example.yaml")
    app_id: str = "cx-monitor"
    partitions: int = 8
    replication: int = 1
    data_dir: Path = Path(".cxmon")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    instance_id: str | None = None
    dedup_ttl_ms: int = 86_400_000
    max_future_ms: int = 300_000
    batch_size: int = 2_000
    batch_seconds: float = 0.05
    sentiment: str = "auto"
    log_level: str = "info"
    topics: Topics = Topics()
    alertmanager_urls: tuple[str, ...] = ()
    alertmanager_resend_ms: int = 60_000
    runbook_url: str = "https://github.com/cx-monitor/cx-monitor/blob/main/docs/runbook.md"
    grafana_url: str = "http://localhost:3000"
    # A secret: kept out of repr, so logging the settings never prints it.
    pseudonym_key: bytes = field(default=b"", repr=False)
    pseudonymise_ids: bool = False

    @property
    def bootstrap_servers(self) -> str:
        """host:port list for aiokafka from the kafka:// URL (several separated by ';' or ',')."""
        hosts = []
        for part in self.broker_url.replace(";", ",").split(","):
            parsed = urlparse(part if "://" in part else f"kafka://{part}")
            hosts.append(f"{parsed.hostname}:{parsed.port or 9092}")
        return ",".join(hosts)

    @property
    def internal_prefix(self) -> str:
        return f"{self.app_id}."

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def text(name: str, default: str) -> str:
            return env.get(f"CXMON_{name}", default)

        def integer(name: str, default: int, minimum: int = 1) -> int:
            raw = env.get(f"CXMON_{name}")
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"CXMON_{name}={raw!r} is not a whole number") from None
            if value < minimum:
                raise SettingsError(f"CXMON_{name}={raw!r} must be at least {minimum}")
            return value

        def flag(name: str) -> bool:
            raw = env.get(f"CXMON_{name}", "false").strip().lower()
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"CXMON_{name}={raw!r} is not true or false")
            return raw in ("true", "1", "yes")

        def duration(name: str, default: int) -> int:
            raw = env.get(f"CXMON_{name}")
            if raw is None:
                return default
            try:
                return parse_duration_ms(raw)
            except ValueError as exc:
                raise SettingsError(f"CXMON_{name}: {exc}") from None

        default = cls()
        topics = Topics(
            **{
                f.name: text(f"TOPIC_{f.name.upper()}", getattr(default.topics, f.name))
                for f in fields(Topics)
            }
        )
        pseudonym_key = secret(env, "PSEUDONYM_KEY")
        pseudonymise_ids = flag("PSEUDONYMISE_IDS")
        if pseudonymise_ids and not pseudonym_key:
            raise SettingsError(
                "CXMON_PSEUDONYMISE_IDS needs CXMON_PSEUDONYM_KEY or CXMON_PSEUDONYM_KEY_FILE: "
                "an unkeyed hash of a guessable id can be reversed"
            )
        batch_seconds_raw = text("BATCH_SECONDS", str(default.batch_seconds))
        try:
            batch_seconds = float(batch_seconds_raw)
        except ValueError:
            raise SettingsError(
                f"CXMON_BATCH_SECONDS={batch_seconds_raw!r} is not a number"
            ) from None
        return cls(
            alertmanager_urls=tuple(
                url.strip().rstrip("/")
                for url in text("ALERTMANAGER_URL", "").split(",")
                if url.strip()
            ),
            alertmanager_resend_ms=duration("ALERTMANAGER_RESEND", default.alertmanager_resend_ms),
            runbook_url=text("RUNBOOK_URL", default.runbook_url),
            grafana_url=text("GRAFANA_URL", default.grafana_url),
            pseudonym_key=pseudonym_key,
            pseudonymise_ids=pseudonymise_ids,
            broker_url=text("BROKER_URL", default.broker_url),
            catalog=Path(text("CATALOG", str(default.catalog))),
            app_id=text("APP_ID", default.app_id),
            partitions=integer("PARTITIONS", default.partitions),
            replication=integer("REPLICATION", default.replication),
            data_dir=Path(text("DATA_DIR", str(default.data_dir))),
            web_host=text("WEB_HOST", default.web_host),
            web_port=integer("WEB_PORT", default.web_port, minimum=0),
            instance_id=env.get("CXMON_INSTANCE_ID") or None,
            dedup_ttl_ms=duration("DEDUP_TTL", default.dedup_ttl_ms),
            max_future_ms=duration("MAX_FUTURE", default.max_future_ms),
            batch_size=integer("BATCH_SIZE", default.batch_size),
            batch_seconds=batch_seconds,
            sentiment=text("SENTIMENT", default.sentiment),
            log_level=text("LOG_LEVEL", default.log_level),
            topics=topics,
        )


def secret(env: Mapping[str, str], name: str) -> bytes:
    """CXMON_<name>, or the contents of the file CXMON_<name>_FILE names (Docker secrets)."""
    value = env.get(f"CXMON_{name}")
    path = env.get(f"CXMON_{name}_FILE")
    if value is not None and path is not None:
        raise SettingsError(f"set CXMON_{name} or CXMON_{name}_FILE, not both")
    if path is not None:
        try:
            return Path(path).read_bytes().strip()
        except OSError as exc:
            raise SettingsError(f"CXMON_{name}_FILE={path!r}: {exc.strerror}") from None
    return (value or "").encode()
