"""Broker security: settings refuse what cannot work; clients connect over TLS and SASL as set."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import shutil
import ssl
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from agents.topology import build_app
from streams.commands.publish import Outgoing, follow, send_all
from streams.kafka.broker import LocalBroker
from streams.kafka.topics import TopologyError, ensure_topics, input_topics
from streams.settings import Settings, SettingsError
from tests.harness import REPO, Deployment, WorkerProcess

PASSWORD = "s3cret-Pa55word-\u00e9t\u00e9"  # non-ASCII: the secret goes through UTF-8 intact


# --- a throwaway CA, broker and client certificates -------------------------------------


@dataclass(frozen=True)
class Pki:
    root: Path

    def pem(self, name: str) -> Path:
        return self.root / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


EC_KEY = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def _openssl(root: Path, command: str) -> None:
    subprocess.run(["openssl", *command.split()], cwd=root, check=True, capture_output=True)


def _issue(root: Path, ca: str, name: str, extensions: str) -> None:
    _openssl(root, f"req -new {EC_KEY} -keyout {name}.key -out {name}.csr -subj /CN={name}")
    (root / f"{name}.ext").write_text(
        f"{extensions}\nbasicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(
        root,
        f"x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -days 2 -extfile {name}.ext"
        f" -set_serial {secrets.randbits(63)} -out {name}.pem",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    root = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        _openssl(
            root,
            f"req -x509 {EC_KEY} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=cxmon-test-{ca}"
            " -addext basicConstraints=critical,CA:TRUE"
            " -addext keyUsage=critical,keyCertSign,cRLSign",
        )
    server = "extendedKeyUsage=serverAuth\nsubjectAltName="
    _issue(root, "ca", "broker", server + "IP:127.0.0.1,DNS:localhost")
    _issue(root, "ca", "misnamed", server + "DNS:broker.invalid")
    _issue(root, "ca", "worker", "extendedKeyUsage=clientAuth")
    _issue(root, "other-ca", "stranger", "extendedKeyUsage=clientAuth")
    return Pki(root)


def server_context(
    pki: Pki, cert: str = "broker", *, client_ca: str | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.pem(cert), pki.key(cert))
    if client_ca is not None:
        context.load_verify_locations(pki.pem(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# --- a TLS / SCRAM listener in front of the local broker ---------------------------------

METADATA, FIND_COORDINATOR, SASL_HANDSHAKE, API_VERSIONS, SASL_AUTHENTICATE = 3, 10, 17, 18, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(text.encode())) + text.encode()


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        return None


def _request_body(request: bytes) -> bytes:
    """What follows a v1 request header (api key, version, correlation id, client id)."""
    (client_id_length,) = struct.unpack_from(">h", request, 8)
    return request[10 + max(client_id_length, 0) :]


def _sized(body: bytes, width: str) -> bytes:
    (length,) = struct.unpack_from(width, body)
    start = struct.calcsize(width)
    return body[start : start + length]


class ScramFailed(Exception):
    pass


@dataclass
class ScramServer:
    """The broker's side of SCRAM (RFC 5802, 7677) for one connection: what Kafka checks."""

    users: dict[str, str]
    mechanisms: tuple[str, ...]
    authenticated: list[tuple[str, str]]
    mechanism: str = ""
    user: str = ""
    client_first_bare: str = ""
    server_first: str = ""
    done: bool = False
    salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def answer(self, api_key: int, version: int, correlation: int, body: bytes) -> bytes:
        header = struct.pack(">i", correlation)
        if api_key == SASL_HANDSHAKE:
            self.mechanism = _sized(body, ">h").decode()
            error = 0 if self.mechanism in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
            names = b"".join(_string(name) for name in self.mechanisms)
            return _frame(header + struct.pack(">hi", error, len(self.mechanisms)) + names)
        try:
            reply, error, message = self.step(_sized(body, ">i").decode()), 0, None
        except ScramFailed as exc:
            reply, error, message = b"", SASL_AUTHENTICATION_FAILED, str(exc)
        lifetime = struct.pack(">q", 0) if version >= 1 else b""
        return _frame(
            header + struct.pack(">h", error) + _string(message)
            + struct.pack(">i", len(reply)) + reply + lifetime
        )  # fmt: skip

    def step(self, message: str) -> bytes:
        digest = self.mechanism.removeprefix("SCRAM-").replace("-", "").lower()
        if not self.server_first:
            self.client_first_bare = message.removeprefix("n,,")
            fields = dict(pair.split("=", 1) for pair in self.client_first_bare.split(","))
            self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
            if self.user not in self.users:
                raise ScramFailed(f"unknown user {self.user}")
            nonce = fields["r"] + secrets.token_hex(12)
            self.server_first = f"r={nonce},s={base64.b64encode(self.salt).decode()},i=4096"
            return self.server_first.encode()
        without_proof, proof = message.rsplit(",p=", 1)
        salted = hashlib.pbkdf2_hmac(digest, self.users[self.user].encode(), self.salt, 4096)
        client_key = hmac.digest(salted, b"Client Key", digest)
        stored_key = hashlib.new(digest, client_key).digest()
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, digest)
        claimed = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if hashlib.new(digest, claimed).digest() != stored_key:
            raise ScramFailed("authentication failed: invalid credentials")
        self.authenticated.append((self.user, self.mechanism))
        self.done = True
        server_key = hmac.digest(salted, b"Server Key", digest)
        return b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, digest))


class BrokerProxy:
    """A broker listener in front of the plaintext local broker, as Kafka's SSL, SASL_SSL and
    SASL_PLAINTEXT listeners are: TLS if given; SASL required if asked, with SCRAM checked
    here, or PLAIN passed on to the broker; a request before authentication drops the
    connection, as Kafka does. It advertises itself in metadata, so clients that follow
    the metadata keep coming back through it, never around it."""

    def __init__(
        self,
        broker: LocalBroker,
        tls: ssl.SSLContext | None = None,
        scram_users: dict[str, str] | None = None,
        scram_mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512"),
        *,
        require_sasl: bool = False,
    ) -> None:
        self.broker = broker
        self.tls = tls
        self.scram_users = scram_users
        self.require_sasl = require_sasl or scram_users is not None
        self.scram_mechanisms = scram_mechanisms
        self.port = 0
        self.connections = 0
        self.dropped_unauthenticated = 0
        self.plain_tokens: list[bytes] = []  # SASL PLAIN tokens passed on to the broker
        self.authenticated: list[tuple[str, str]] = []  # (user, mechanism) SCRAM let in
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def __enter__(self) -> BrokerProxy:
        started = threading.Event()

        def run() -> None:
            server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
            )
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            self._loop.run_forever()
            server.close()
            self._loop.run_until_complete(server.wait_closed())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert started.wait(10), "the proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        async def shut() -> None:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        broker_reader, broker_writer = await asyncio.open_connection(
            self.broker.host, self.broker.port
        )
        host = self.broker.host.encode()
        # The broker's address as Metadata and FindCoordinator responses encode it (classic
        # and compact strings, then the int32 port), and ours in its place.
        ports = struct.pack(">i", self.broker.port), struct.pack(">i", self.port)
        prefixes = (struct.pack(">h", len(host)) + host, bytes([len(host) + 1]) + host)
        advertised = [(prefix + ports[0], prefix + ports[1]) for prefix in prefixes]
        answers_to_rewrite: set[int] = set()
        scram = (
            ScramServer(self.scram_users, self.scram_mechanisms, self.authenticated)
            if self.scram_users is not None
            else None
        )

        sasl_passed_on = False

        async def upstream() -> None:
            nonlocal sasl_passed_on
            while (request := await _read_frame(client_reader)) is not None:
                api_key, version, correlation = struct.unpack_from(">hhi", request)
                if scram is not None and api_key in (SASL_HANDSHAKE, SASL_AUTHENTICATE):
                    client_writer.write(
                        scram.answer(api_key, version, correlation, _request_body(request))
                    )
                    continue
                if api_key == SASL_AUTHENTICATE:
                    self.plain_tokens.append(_sized(_request_body(request), ">i"))
                    sasl_passed_on = True
                signed_in = scram.done if scram is not None else sasl_passed_on
                handshake = (API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE)
                if self.require_sasl and not signed_in and api_key not in handshake:
                    self.dropped_unauthenticated += 1
                    break
                if api_key in (METADATA, FIND_COORDINATOR):
                    answers_to_rewrite.add(correlation)
                broker_writer.write(_frame(request))
            broker_writer.close()

        async def downstream() -> None:
            while (response := await _read_frame(broker_reader)) is not None:
                (correlation,) = struct.unpack_from(">i", response)
                if correlation in answers_to_rewrite:
                    answers_to_rewrite.discard(correlation)
                    for theirs, ours in advertised:
                        response = response.replace(theirs, ours)
                client_writer.write(_frame(response))
            client_writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            broker_writer.close()
            client_writer.close()


# --- helpers ------------------------------------------------------------------------------


def tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {"CXMON_BROKER_SECURITY": "SSL", "CXMON_SSL_CAFILE": str(pki.pem("ca")), **extra}


def mutual_tls_env(pki: Pki) -> dict[str, str]:
    return tls_env(
        pki,
        CXMON_SSL_CERTFILE=str(pki.pem("worker")),
        CXMON_SSL_KEYFILE=str(pki.key("worker")),
    )


def password_file(root: Path, password: str = PASSWORD) -> Path:
    path = root / f"sasl-password-{secrets.token_hex(4)}"
    path.write_text(password + "\n")  # as `echo secret > file` writes it
    path.chmod(0o600)
    return path


async def round_trip(through: Deployment, direct: Deployment) -> None:
    """A record sent and read back through `through` is on the broker, read `direct`."""
    settings = through.settings()
    topic = settings.topics.touchpoint_events
    value = uuid.uuid4().bytes
    sent, errors = await send_all(settings, [Outgoing(topic, b"k", value)], progress_every=0)
    assert (sent, errors) == (1, [])
    for reader in (settings, direct.settings()):
        assert await asyncio.wait_for(read_back(reader, topic, value), timeout=60)


async def read_back(settings: Settings, topic: str, value: bytes) -> bool:
    seen: list[bytes] = []
    async for message in follow(settings, topic, from_beginning=True, stop=lambda: value in seen):
        seen.append(message.value)
    return value in seen


async def refused(deployment: Deployment) -> str:
    """What a client is told when the broker will not have it: the reason is in it."""
    settings = deployment.settings()
    with pytest.raises(TopologyError, match="no broker answers") as refusal:
        await ensure_topics(settings, input_topics(settings), timeout_s=2)
    return str(refusal.value)


# --- settings: the mapping and the refusals, no broker --------------------------------------


def test_plaintext_by_default() -> None:
    security = Settings.from_env({}).broker_security
    assert security.client_options() == {"security_protocol": "PLAINTEXT", "ssl_context": None}
    assert build_app(Settings.from_env({})).conf.broker_credentials is None


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "scram-sha-256"),
        ("sasl_ssl", "PLAIN"),
    ],
)
def test_sasl_options_reach_aiokafka_and_faust_alike(
    pki: Pki, tmp_path: Path, protocol: str, mechanism: str
) -> None:
    env = {
        "CXMON_BROKER_SECURITY": protocol,
        "CXMON_SASL_MECHANISM": mechanism,
        "CXMON_SASL_USERNAME": "cx-monitor",
        "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path)),
    }
    if protocol.upper() == "SASL_SSL":
        env["CXMON_SSL_CAFILE"] = str(pki.pem("ca"))
    settings = Settings.from_env(env)
    options = settings.broker_security.client_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": protocol.upper(),
        "sasl_mechanism": mechanism.upper(),
        "sasl_plain_username": "cx-monitor",
        "sasl_plain_password": PASSWORD,
    }
    assert (context is not None) == (protocol.upper() == "SASL_SSL")
    # What the worker's Faust hands to aiokafka, through Faust's own translation.
    app = build_app(settings)
    faust_options = dict(
        credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    )
    faust_context = faust_options.pop("ssl_context")
    assert faust_options == options
    assert describe(faust_context) == describe(context)
    assert PASSWORD not in repr(app.conf.broker_credentials)


def describe(context: ssl.SSLContext | None) -> object:
    if context is None:
        return None
    return context.verify_mode, context.check_hostname, context.get_ca_certs()


def test_tls_options_and_hostname_check(pki: Pki) -> None:
    settings = Settings.from_env(tls_env(pki))
    options = settings.broker_security.client_options()
    context = options["ssl_context"]
    assert options["security_protocol"] == "SSL"
    assert "sasl_mechanism" not in options
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [
        ((("commonName", "cxmon-test-ca"),),)
    ]
    app = build_app(settings)
    faust_options = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert faust_options["security_protocol"] == "SSL"
    assert describe(faust_options["ssl_context"]) == describe(context)

    unchecked = Settings.from_env(tls_env(pki, CXMON_SSL_CHECK_HOSTNAME="false"))
    unchecked_context = unchecked.broker_security.ssl_context()
    assert unchecked_context is not None
    assert not unchecked_context.check_hostname
    assert unchecked_context.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked

    system = Settings.from_env({"CXMON_BROKER_SECURITY": "SSL"}).broker_security.ssl_context()
    assert system is not None
    assert system.verify_mode == ssl.CERT_REQUIRED


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CXMON_BROKER_SECURITY": "SASL_PLAINTEXT",
            "CXMON_SASL_USERNAME": "svc-cxmon",
            "CXMON_SASL_PASSWORD": PASSWORD,
            "CXMON_PSEUDONYM_KEY": "pseudonym-key-value",
        }
    )
    assert settings.broker_security.sasl_password == PASSWORD
    for text in (repr(settings), str(settings), repr(settings.broker_security)):
        assert "svc-cxmon" in text
        assert PASSWORD not in text
        assert "pseudonym-key-value" not in text


def test_password_from_file_equals_password_from_env(tmp_path: Path) -> None:
    base = {"CXMON_BROKER_SECURITY": "SASL_PLAINTEXT", "CXMON_SASL_USERNAME": "u"}
    from_file = Settings.from_env(
        {**base, "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path))}
    )
    from_env = Settings.from_env({**base, "CXMON_SASL_PASSWORD": PASSWORD})
    assert from_file.broker_security == from_env.broker_security
    assert from_file.broker_security.sasl_password == PASSWORD


def _refusal_cases(pki: Pki, tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    sasl = {"CXMON_BROKER_SECURITY": "SASL_SSL", "CXMON_SSL_CAFILE": str(pki.pem("ca"))}
    user = {**sasl, "CXMON_SASL_USERNAME": "u", "CXMON_SASL_PASSWORD": "p"}
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("hello\n")
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("\u00e9t\u00e9".encode("latin-1"))
    return [
        ({"CXMON_BROKER_SECURITY": "TLS"}, "CXMON_BROKER_SECURITY='TLS' is not one of"),
        ({**user, "CXMON_SASL_MECHANISM": "GSSAPI"}, "CXMON_SASL_MECHANISM='GSSAPI' is not one"),
        ({**sasl, "CXMON_SASL_PASSWORD": "p"}, "SASL_SSL needs CXMON_SASL_USERNAME"),
        ({**sasl, "CXMON_SASL_USERNAME": "u"}, "needs CXMON_SASL_PASSWORD or CXMON_SASL_PASS"),
        ({**user, "CXMON_SASL_PASSWORD_FILE": "/x"}, "set CXMON_SASL_PASSWORD or CXMON_SASL_PA"),
        (
            {**sasl, "CXMON_SASL_USERNAME": "u", "CXMON_SASL_PASSWORD_FILE": "/nonexistent/pw"},
            "CXMON_SASL_PASSWORD_FILE='/nonexistent/pw': No such file or directory",
        ),
        (
            {**sasl, "CXMON_SASL_USERNAME": "u", "CXMON_SASL_PASSWORD_FILE": str(latin1)},
            "CXMON_SASL_PASSWORD is not UTF-8 text",
        ),
        (
            {"CXMON_SASL_USERNAME": "u", "CXMON_SASL_PASSWORD": "p"},
            "CXMON_SASL_PASSWORD is set but CXMON_BROKER_SECURITY=PLAINTEXT uses no SASL",
        ),
        (
            {**tls_env(pki), "CXMON_SASL_USERNAME": "u"},
            "CXMON_SASL_USERNAME is set but CXMON_BROKER_SECURITY=SSL uses no SASL",
        ),
        (
            {"CXMON_BROKER_SECURITY": "SASL_PLAINTEXT", "CXMON_SSL_CAFILE": "ca.pem"},
            "CXMON_SSL_CAFILE is set but CXMON_BROKER_SECURITY=SASL_PLAINTEXT uses no TLS",
        ),
        (
            tls_env(pki, CXMON_SSL_CAFILE="/nonexistent/ca.pem"),
            "CXMON_SSL_CAFILE='/nonexistent/ca.pem': No such file or directory",
        ),
        (tls_env(pki, CXMON_SSL_CAFILE=str(not_a_cert)), "NO_CERTIFICATE_OR_CRL_FOUND"),
        (
            tls_env(pki, CXMON_SSL_KEYFILE=str(pki.key("worker"))),
            "CXMON_SSL_KEYFILE is set without CXMON_SSL_CERTFILE",
        ),
        (
            tls_env(
                pki,
                CXMON_SSL_CERTFILE=str(pki.pem("worker")),
                CXMON_SSL_KEYFILE=str(pki.key("broker")),
            ),
            "KEY_VALUES_MISMATCH",
        ),
        (
            tls_env(pki, CXMON_SSL_CERTFILE=str(pki.pem("worker")), CXMON_SSL_KEYFILE="/no/k"),
            "CXMON_SSL_KEYFILE='/no/k': No such file or directory",
        ),
        (tls_env(pki, CXMON_SSL_CHECK_HOSTNAME="maybe"), "CXMON_SSL_CHECK_HOSTNAME='maybe'"),
    ]


def test_combinations_that_cannot_work_are_refused_naming_the_variable(
    pki: Pki, tmp_path: Path
) -> None:
    cases = _refusal_cases(pki, tmp_path)
    for env, expected in cases:
        with pytest.raises(SettingsError) as refused_with:
            Settings.from_env(env)
        assert expected in str(refused_with.value), (env, str(refused_with.value))
    # Each case is one step from a valid set, so the refusal is the step, not a typo here.
    assert len({expected for _, expected in cases}) == len(cases)


def test_the_command_line_refuses_at_start(pki: Pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams", "publish", "-"],
        input=b"",
        env={"PATH": "/usr/bin:/bin", **tls_env(pki, CXMON_SSL_CAFILE="/nonexistent/ca.pem")},
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"cxmon: CXMON_SSL_CAFILE='/nonexistent/ca.pem'" in result.stderr


# --- against the real local broker: behind TLS, SASL PLAIN, SCRAM --------------------------


@pytest.mark.broker
async def test_clients_reach_the_broker_through_tls_only_with_the_ca(
    broker: LocalBroker, pki: Pki, tmp_path: Path
) -> None:
    with BrokerProxy(broker, server_context(pki)) as proxy:
        direct = Deployment(broker.url, tmp_path)
        through = replace(direct, broker_url=proxy.url, extra_env=tls_env(pki))
        await round_trip(through, direct)
        assert proxy.connections > 0

        for wrong in (
            {"CXMON_BROKER_SECURITY": "SSL"},  # the system's CAs do not know ours
            tls_env(pki, CXMON_SSL_CAFILE=str(pki.pem("other-ca"))),
        ):
            assert "CERTIFICATE_VERIFY_FAILED" in await refused(replace(through, extra_env=wrong))
        await refused(replace(through, extra_env={}))  # plaintext to a TLS listener

    with BrokerProxy(broker, server_context(pki, "misnamed")) as proxy:
        misnamed = replace(direct, broker_url=proxy.url, extra_env=tls_env(pki))
        said = await refused(misnamed)
        assert "Hostname mismatch" in said or "IP address mismatch" in said
        unchecked = tls_env(pki, CXMON_SSL_CHECK_HOSTNAME="false")
        await round_trip(replace(misnamed, extra_env=unchecked), direct)


@pytest.mark.broker
async def test_mutual_tls_needs_a_client_certificate_from_the_brokers_ca(
    broker: LocalBroker, pki: Pki, tmp_path: Path
) -> None:
    with BrokerProxy(broker, server_context(pki, client_ca="ca")) as proxy:
        direct = Deployment(broker.url, tmp_path)
        through = replace(direct, broker_url=proxy.url, extra_env=mutual_tls_env(pki))
        await round_trip(through, direct)
        await refused(replace(through, extra_env=tls_env(pki)))
        stranger = tls_env(
            pki,
            CXMON_SSL_CERTFILE=str(pki.pem("stranger")),
            CXMON_SSL_KEYFILE=str(pki.key("stranger")),
        )
        await refused(replace(through, extra_env=stranger))


@pytest.mark.broker
async def test_sasl_plain_over_tls_reaches_the_brokers_own_sasl(
    broker: LocalBroker, pki: Pki, tmp_path: Path
) -> None:
    # noida-db speaks SASL PLAIN itself but takes any credentials and serves clients that
    # skip SASL: the proxy adds TLS, drops those clients, and notes the tokens it passes on.
    with BrokerProxy(broker, server_context(pki), require_sasl=True) as proxy:
        direct = Deployment(broker.url, tmp_path)
        env = {
            **tls_env(pki),
            "CXMON_BROKER_SECURITY": "SASL_SSL",
            "CXMON_SASL_USERNAME": "cx-monitor",
            "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path)),
        }
        await round_trip(replace(direct, broker_url=proxy.url, extra_env=env), direct)
    token = f"cx-monitor\0cx-monitor\0{PASSWORD}".encode()
    assert proxy.plain_tokens
    assert set(proxy.plain_tokens) == {token}


@pytest.mark.broker
@pytest.mark.parametrize(
    "listener", [("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "SCRAM-SHA-512")]
)
async def test_scram_lets_the_right_password_in_and_refuses_a_wrong_one(
    broker: LocalBroker,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    listener: tuple[str, str],
) -> None:
    protocol, mechanism = listener
    tls = server_context(pki) if protocol == "SASL_SSL" else None
    with BrokerProxy(broker, tls, scram_users={"cx-monitor": PASSWORD}) as proxy:
        direct = Deployment(broker.url, tmp_path)
        env = {
            "CXMON_BROKER_SECURITY": protocol,
            "CXMON_SASL_MECHANISM": mechanism,
            "CXMON_SASL_USERNAME": "cx-monitor",
            "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path)),
            **({"CXMON_SSL_CAFILE": str(pki.pem("ca"))} if tls else {}),
        }
        through = replace(direct, broker_url=proxy.url, extra_env=env)
        await round_trip(through, direct)
        assert set(proxy.authenticated) == {("cx-monitor", mechanism)}

        guess = "wrong-Guess-42"
        wrong = {**env, "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path, guess))}
        caplog.clear()
        said = await refused(replace(through, extra_env=wrong))
        assert "invalid credentials" in said
        assert guess not in said
        assert guess not in caplog.text

        without_sasl = tls_env(pki) if tls else {}
        await refused(replace(through, extra_env=without_sasl))
        assert proxy.dropped_unauthenticated > 0


# --- a real worker and `cxmon publish`, through TLS and SCRAM ------------------------------


def publish_command(deployment: Deployment, lines: list[bytes]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "streams", "publish", "-"],
        input=b"\n".join(lines) + b"\n",
        env=deployment.env("publisher", 0),
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stderr.decode()


@pytest.fixture
def worker_stopper() -> Iterator[list[WorkerProcess]]:
    workers: list[WorkerProcess] = []
    yield workers
    for worker in workers:
        worker.stop()


@pytest.mark.broker
@pytest.mark.parametrize("security", ["mutual-tls", "scram-over-tls"])
def test_worker_and_publish_work_through_the_secured_listener(
    broker: LocalBroker,
    pki: Pki,
    tmp_path: Path,
    worker_stopper: list[WorkerProcess],
    security: str,
) -> None:
    if security == "mutual-tls":
        env = mutual_tls_env(pki)
        listener = BrokerProxy(broker, server_context(pki, client_ca="ca"))
    else:
        env = {
            **tls_env(pki),
            "CXMON_BROKER_SECURITY": "SASL_SSL",
            "CXMON_SASL_MECHANISM": "SCRAM-SHA-512",
            "CXMON_SASL_USERNAME": "cx-monitor",
            "CXMON_SASL_PASSWORD_FILE": str(password_file(tmp_path)),
        }
        listener = BrokerProxy(broker, server_context(pki), scram_users={"cx-monitor": PASSWORD})
    with listener as proxy:
        deployment = Deployment(proxy.url, tmp_path, extra_env=env)
        worker = deployment.start_worker()
        worker_stopper.append(worker)
        bad_event = b'{"event_id": "e-secure-1"}'
        stderr = publish_command(deployment, [bad_event])
        assert "published 1 messages" in stderr
        dead = deployment.read(
            deployment.topics.dead_letters, until=lambda seen: len(seen) >= 1, timeout_s=90
        )
        assert [value for _, value, _ in dead] == [bad_event]
        worker.stop()
        log = worker.log()
    assert "[^Worker]: Ready" in log
    assert PASSWORD not in log
    assert PASSWORD not in stderr
    if security == "scram-over-tls":
        assert ("cx-monitor", "SCRAM-SHA-512") in proxy.authenticated
