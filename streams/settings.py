"""Every setting of the monitor, read once from CXMON_* environment variables."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
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


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """How every Kafka client of the monitor encrypts and authenticates its connections."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    # A secret: kept out of repr, so logging the settings never prints it.
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The broker's CA (else the system's) and, for mutual TLS, the client's certificate."""
        if not self.uses_tls:
            return None
        for name, path in (
            ("SSL_CAFILE", self.ssl_cafile),
            ("SSL_CERTFILE", self.ssl_certfile),
            ("SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None:
                try:
                    path.open("rb").close()
                except OSError as exc:
                    raise SettingsError(f"CXMON_{name}={str(path)!r}: {exc.strerror}") from None
        try:
            context = ssl.create_default_context(cafile=self.ssl_cafile)
        except ssl.SSLError as exc:
            raise SettingsError(f"CXMON_SSL_CAFILE={str(self.ssl_cafile)!r}: {exc}") from None
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile is not None:
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            except ssl.SSLError as exc:
                raise SettingsError(
                    f"CXMON_SSL_CERTFILE={str(self.ssl_certfile)!r} with CXMON_SSL_KEYFILE="
                    f"{str(self.ssl_keyfile) if self.ssl_keyfile else None!r}: {exc}"
                ) from None
        return context

    def client_options(self) -> dict[str, Any]:
        """The security keywords of every aiokafka client: producer, consumer and admin."""
        options: dict[str, Any] = {
            "security_protocol": self.protocol,
            "ssl_context": self.ssl_context(),
        }
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


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
    fetch_interval_ms: int = 10
    standby_replicas: int = 0
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
    broker_security: BrokerSecurity = BrokerSecurity()

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
            broker_security=security_from_env(env),
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
            fetch_interval_ms=integer("FETCH_INTERVAL_MS", default.fetch_interval_ms, minimum=0),
            standby_replicas=integer("STANDBY_REPLICAS", default.standby_replicas, minimum=0),
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


def security_from_env(env: Mapping[str, str]) -> BrokerSecurity:
    """CXMON_BROKER_SECURITY with its SASL and SSL variables; a combination that cannot work
    is refused here, at start, rather than as a failed connection later."""
    raw_protocol = env.get("CXMON_BROKER_SECURITY", "PLAINTEXT")
    protocol = raw_protocol.strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise SettingsError(
            f"CXMON_BROKER_SECURITY={raw_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    security = BrokerSecurity(protocol=protocol)
    # A SASL or SSL variable the protocol ignores is a deployment that believes it is safer
    # than it is.
    for prefix, used, what, fix in (
        ("CXMON_SASL_", security.uses_sasl, "SASL", "SASL_SSL or SASL_PLAINTEXT"),
        ("CXMON_SSL_", security.uses_tls, "TLS", "SSL or SASL_SSL"),
    ):
        stray = sorted(name for name in env if name.startswith(prefix))
        if stray and not used:
            raise SettingsError(
                f"{stray[0]} is set but CXMON_BROKER_SECURITY={protocol} uses no {what}: "
                f"set CXMON_BROKER_SECURITY to {fix}, or unset {stray[0]}"
            )

    raw_mechanism = env.get("CXMON_SASL_MECHANISM", "PLAIN")
    mechanism = raw_mechanism.strip().upper()
    if mechanism not in SASL_MECHANISMS:
        raise SettingsError(
            f"CXMON_SASL_MECHANISM={raw_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
        )
    username = env.get("CXMON_SASL_USERNAME", "")
    try:
        password = secret(env, "SASL_PASSWORD").decode()
    except UnicodeDecodeError:
        raise SettingsError("CXMON_SASL_PASSWORD is not UTF-8 text") from None
    if security.uses_sasl and not username:
        raise SettingsError(f"CXMON_BROKER_SECURITY={protocol} needs CXMON_SASL_USERNAME")
    if security.uses_sasl and not password:
        raise SettingsError(
            f"CXMON_BROKER_SECURITY={protocol} needs CXMON_SASL_PASSWORD or "
            "CXMON_SASL_PASSWORD_FILE"
        )

    def path(name: str) -> Path | None:
        raw = env.get(f"CXMON_{name}")
        return Path(raw) if raw else None

    certfile, keyfile = path("SSL_CERTFILE"), path("SSL_KEYFILE")
    if keyfile is not None and certfile is None:
        raise SettingsError("CXMON_SSL_KEYFILE is set without CXMON_SSL_CERTFILE, its certificate")
    raw_check = env.get("CXMON_SSL_CHECK_HOSTNAME", "true")
    check_hostname = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if raw_check.strip().lower() not in check_hostname:
        raise SettingsError(f"CXMON_SSL_CHECK_HOSTNAME={raw_check!r} is not true or false")
    security = BrokerSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
        ssl_cafile=path("SSL_CAFILE"),
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_check_hostname=check_hostname[raw_check.strip().lower()],
    )
    security.ssl_context()  # reads and parses the files now: a bad one stops the start
    return security
