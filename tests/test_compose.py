"""docker-compose.yml and the Dockerfile, cross-checked against the code, without Docker.

Every check is a function from the parsed compose file to a list of problems: the real
file must have none, and each check is shown to catch the breakage it is written for by
running it on a deliberately broken copy (the `BREAKAGES` below).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import posixpath
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.catalog import CatalogError, load_catalog
from streams.commands import cli
from streams.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

Compose = dict[str, Any]
Service = dict[str, Any]
Check = Callable[[Compose, Path], list[str]]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RESTART_POLICIES = {"no", "always", "on-failure", "unless-stopped"}
DEPENDENCY_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# A pinned image: by digest, or by a tag carrying a full version (major.minor.patch).
PINNED_TAG = re.compile(r"\d+\.\d+\.\d+")


# ----------------------------------------------------------------------------------------
# Reading the compose file


def unshare(value: Any) -> Any:
    """A copy with no shared sub-objects: YAML merge keys share them between services."""
    if isinstance(value, dict):
        return {key: unshare(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unshare(item) for item in value]
    return value


def load_compose(path: Path = COMPOSE_FILE) -> Compose:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    result: Compose = unshare(data)
    return result


def services(compose: Compose) -> dict[str, Service]:
    found = compose.get("services") or {}
    assert isinstance(found, dict), "services is not a mapping"
    return found


def environment(service: Service) -> dict[str, str]:
    """The variables a service sets, as strings; a bare name (passed from the host) is left out."""
    raw = service.get("environment") or {}
    pairs: dict[str, Any] = {}
    if isinstance(raw, list):
        for item in raw:
            name, sep, value = str(item).partition("=")
            pairs[name] = value if sep else None
    else:
        pairs = dict(raw)
    result: dict[str, str] = {}
    for name, value in pairs.items():
        if value is None:
            continue
        result[str(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return result


def words(value: Any) -> list[str]:
    """A command given as a list (exec form) or a string (shell words)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(item) for item in value]
    return shlex.split(str(value))


def healthcheck_command(test: Any) -> str | None:
    """The command line of a healthcheck `test`, or None when there is none."""
    parts = words(test)
    if not parts or parts[0] == "NONE":
        return None
    if parts[0] in ("CMD", "CMD-SHELL"):
        parts = parts[1:]
    return " ".join(parts) if parts else None


def names_of(service_name: str, service: Service) -> set[str]:
    """Every name other containers of the compose network reach a service by."""
    names = {service_name}
    if service.get("hostname"):
        names.add(str(service["hostname"]))
    networks = service.get("networks")
    if isinstance(networks, dict):
        for config in networks.values():
            if isinstance(config, dict):
                names.update(str(alias) for alias in config.get("aliases") or [])
    return names


@dataclass(frozen=True)
class PortMapping:
    host_ip: str
    published: int | None
    target: int
    protocol: str


def _port_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def port_mappings(service: Service) -> list[PortMapping]:
    """The service's `ports`, short or long syntax; ValueError on one that does not parse."""
    mappings: list[PortMapping] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            mappings.append(
                PortMapping(
                    str(entry.get("host_ip", "")),
                    int(published) if published is not None else None,
                    int(entry["target"]),
                    str(entry.get("protocol", "tcp")),
                )
            )
            continue
        text, _, protocol = str(entry).partition("/")
        parts = text.split(":")
        if len(parts) > 3:
            raise ValueError(f"port {entry!r}: cannot parse")
        host_ip = parts[0] if len(parts) == 3 else ""
        targets = _port_range(parts[-1])
        if len(parts) == 1:
            mappings.extend(PortMapping("", None, t, protocol or "tcp") for t in targets)
            continue
        published = _port_range(parts[-2])
        if len(published) != len(targets):
            raise ValueError(f"port {entry!r}: ranges of different lengths")
        mappings.extend(
            PortMapping(host_ip, p, t, protocol or "tcp")
            for p, t in zip(published, targets, strict=True)
        )
    return mappings


@dataclass(frozen=True)
class Mount:
    source: str | None
    target: str
    named: bool


def mounts(service: Service) -> list[Mount]:
    found: list[Mount] = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            kind = entry.get("type", "volume")
            source = entry.get("source")
            found.append(
                Mount(source, str(entry["target"]), kind == "volume" and source is not None)
            )
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:  # an anonymous volume
            found.append(Mount(None, parts[0], False))
            continue
        source, target = parts[0], parts[1]
        named = not source.startswith(("/", ".", "~", "$"))
        found.append(Mount(source, target, named))
    return found


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def listeners(value: str) -> list[Listener]:
    """`NAME://host:port,...` as in KAFKA_LISTENERS and KAFKA_ADVERTISED_LISTENERS."""
    found = []
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, rest = part.strip().partition("://")
        host, _, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listener {part.strip()!r} is not NAME://host:port")
        found.append(Listener(name, host, int(port)))
    return found


# ----------------------------------------------------------------------------------------
# Reading a Dockerfile and its build context


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (pending and not stripped):
            continue
        if not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the last instruction ends in a line continuation")
    return instructions


def exec_or_shell(args: str) -> tuple[list[str], bool]:
    """The words of an instruction, and whether it is in exec (JSON) form."""
    if args.startswith("["):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(args)
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return value, True
    return shlex.split(args), False


def parse_env(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # the old `ENV NAME value` form
        return {tokens[0]: args.split(None, 1)[1] if len(tokens) > 1 else ""}
    return dict(token.split("=", 1) for token in tokens)


@dataclass(frozen=True)
class IgnoreRule:
    pattern: re.Pattern[str]
    exclude: bool


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus `**`) as a regular expression."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def read_dockerignore(context: Path) -> list[IgnoreRule]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    rules = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append(IgnoreRule(_glob_regex(pattern), exclude))
    return rules


def ignored(relative: str, rules: list[IgnoreRule]) -> bool:
    """Docker's rule: the last pattern matching the path, or a directory above it, decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for rule in rules:
        if any(rule.pattern.fullmatch(candidate) for candidate in candidates):
            verdict = rule.exclude
    return verdict


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str  # absolute path in the image
    into_dir: bool
    from_stage: bool
    stage: int
    index: int
    line: int


@dataclass
class Dockerfile:
    """What a Dockerfile builds, as far as these checks need it (its last stage)."""

    name: str
    context: Path
    base_images: list[tuple[str, int]] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    runs: list[tuple[int, str, str]] = field(default_factory=list)  # (index, workdir, command)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    entrypoint_exec_form: bool = False
    cmd: list[str] = field(default_factory=list)
    user: str = "root"
    workdir: str = "/"
    exposed: set[int] = field(default_factory=set)
    healthcheck: bool = False
    stage: int = -1

    def files(self, before: int | None = None) -> dict[str, Path]:
        """Image path -> build-context file, for what the last stage copies (before an index)."""
        rules = read_dockerignore(self.context)
        found: dict[str, Path] = {}
        for copy in self.copies:
            if copy.from_stage or copy.stage != self.stage:
                continue
            if before is not None and copy.index >= before:
                continue
            for source in copy.sources:
                for path in context_paths(self.context, source):
                    if path.is_dir():
                        for file in sorted(path.rglob("*")):
                            relative = file.relative_to(self.context).as_posix()
                            if file.is_file() and not ignored(relative, rules):
                                inner = file.relative_to(path).as_posix()
                                found[posixpath.join(copy.dest, inner)] = file
                    elif not ignored(path.relative_to(self.context).as_posix(), rules):
                        target = (
                            posixpath.join(copy.dest, path.name) if copy.into_dir else copy.dest
                        )
                        found[target] = path
        return found


def context_paths(context: Path, source: str) -> list[Path]:
    """The build-context paths a COPY source names (globs expanded); [] when none exist."""
    relative = posixpath.normpath(source).lstrip("/")
    if relative.startswith(".."):
        return []
    if any(char in relative for char in "*?["):
        return sorted(context.glob(relative))
    path = context / relative
    return [path] if path.exists() else []


def read_dockerfile(path: Path, context: Path, text: str | None = None) -> Dockerfile:
    text = path.read_text(encoding="utf-8") if text is None else text
    image = Dockerfile(path.name, context)
    stages: set[str] = set()
    for index, instruction in enumerate(parse_dockerfile(text)):
        keyword, args = instruction.keyword, instruction.args
        if keyword == "FROM":
            tokens = [token for token in args.split() if not token.startswith("--")]
            if tokens[0].lower() not in stages and tokens[0] != "scratch":
                image.base_images.append((tokens[0], instruction.line))
            if len(tokens) >= 3 and tokens[1].lower() == "as":
                stages.add(tokens[2].lower())
            image.stage += 1
            image.env, image.entrypoint, image.cmd = {}, [], []
            image.user, image.workdir, image.healthcheck = "root", "/", False
        elif keyword == "WORKDIR":
            image.workdir = posixpath.normpath(posixpath.join(image.workdir, args))
        elif keyword == "ENV":
            image.env.update(parse_env(args))
        elif keyword in ("COPY", "ADD"):
            tokens, _ = exec_or_shell(args)
            flags = [token for token in tokens if token.startswith("--")]
            paths = [token for token in tokens if not token.startswith("--")]
            raw_dest = paths[-1]
            sources = tuple(paths[:-1])
            into_dir = raw_dest.endswith("/") or raw_dest in (".", "..") or len(sources) > 1
            image.copies.append(
                Copy(
                    sources,
                    posixpath.normpath(posixpath.join(image.workdir, raw_dest)),
                    into_dir,
                    any(flag.startswith("--from") for flag in flags),
                    image.stage,
                    index,
                    instruction.line,
                )
            )
        elif keyword == "RUN":
            image.runs.append((index, image.workdir, args))
        elif keyword == "ENTRYPOINT":
            image.entrypoint, image.entrypoint_exec_form = exec_or_shell(args)
        elif keyword == "CMD":
            image.cmd = exec_or_shell(args)[0]
        elif keyword == "USER":
            image.user = args.split(":")[0].strip()
        elif keyword == "EXPOSE":
            image.exposed.update(int(token.split("/")[0]) for token in args.split())
        elif keyword == "HEALTHCHECK":
            image.healthcheck = args.strip().upper() != "NONE"
    return image


def unpinned(reference: str) -> str | None:
    """Why an image reference is not pinned, or None when it is."""
    if "@sha256:" in reference:
        return None
    name = reference.rsplit("/", 1)[-1]
    if ":" not in name:
        return "no tag (that means latest)"
    tag = name.split(":", 1)[1]
    if tag == "latest":
        return "the latest tag moves"
    if not PINNED_TAG.search(tag):
        return f"tag {tag!r} is no full version (major.minor.patch)"
    return None


PIP_INSTALL = re.compile(r"\bpip3?\s+install\b([^&;|]*)")


def project_installs(command: str) -> list[list[str]]:
    """The arguments of each `pip install` of the project itself (`.` or `.[extras]`)."""
    found = []
    for match in PIP_INSTALL.finditer(command):
        arguments = shlex.split(match.group(1))
        if any(arg == "." or arg.startswith((".[", "'.[", '".[')) for arg in arguments):
            found.append(arguments)
    return found


def dockerfile_problems(image: Dockerfile) -> list[str]:
    """What keeps the image from being the pinned, non-root `cxmon` image the compose file uses."""
    where = image.name
    problems = []
    for reference, line in image.base_images:
        if (why := unpinned(reference)) is not None:
            problems.append(f"{where}:{line}: FROM {reference}: {why}")
    rules = read_dockerignore(image.context)
    for copy in image.copies:
        if copy.from_stage:
            continue
        for source in copy.sources:
            if source.startswith(("http://", "https://")):
                continue
            paths = context_paths(image.context, source)
            if not paths:
                problems.append(f"{where}:{copy.line}: COPY {source}: not in the build context")
            for path in paths:
                files = (
                    sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
                )
                kept = [
                    f for f in files if not ignored(f.relative_to(image.context).as_posix(), rules)
                ]
                if not kept:
                    problems.append(f"{where}:{copy.line}: COPY {source}: .dockerignore drops it")
    if image.user in ("", "root", "0"):
        problems.append(f"{where}: runs as root (no USER for the last stage)")
    scripts = PYPROJECT["project"].get("scripts", {})
    if not image.entrypoint_exec_form:
        problems.append(f"{where}: ENTRYPOINT in shell form ignores the compose `command`")
    if not image.entrypoint or image.entrypoint[0] not in scripts:
        problems.append(f"{where}: ENTRYPOINT {image.entrypoint} is no script of pyproject.toml")
    problems += _install_problems(image)
    problems += _catalog_problems(image)
    try:
        web_port = Settings.from_env(image.env).web_port
    except SettingsError as exc:
        problems.append(f"{where}: ENV: {exc}")
    else:
        if web_port not in image.exposed:
            problems.append(f"{where}: the web port {web_port} is not EXPOSEd")
    return problems


def _install_problems(image: Dockerfile) -> list[str]:
    """`pip install .`, without extras, after everything setuptools needs has been copied."""
    problems = []
    installs = [
        (index, workdir, arguments)
        for index, workdir, command in image.runs
        for arguments in project_installs(command)
    ]
    if not installs:
        problems.append(f"{image.name}: no `RUN pip install .` of the project")
    project = PYPROJECT["project"]
    needed = ["pyproject.toml"]
    if isinstance(project.get("readme"), str):
        needed.append(project["readme"])
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    needed += sorted(
        init.relative_to(REPO).as_posix()
        for top in REPO.iterdir()
        if any(fnmatch.fnmatchcase(top.name, pattern) for pattern in include)
        for init in top.glob("**/__init__.py")
    )
    for index, workdir, arguments in installs:
        extras = [arg for arg in arguments if "[" in arg]
        if extras:
            problems.append(f"{image.name}: installs extras {extras}: the image takes none")
        present = image.files(before=index)
        for name in needed:
            if posixpath.join(workdir, name) not in present:
                problems.append(
                    f"{image.name}: {name} is not copied to {workdir} before `pip install .`"
                )
    return problems


def _catalog_problems(image: Dockerfile) -> list[str]:
    catalog = image.env.get("CXMON_CATALOG")
    if catalog is None:
        return [f"{image.name}: CXMON_CATALOG is not set: the default path is relative"]
    path = posixpath.normpath(posixpath.join(image.workdir, catalog))
    source = image.files().get(path)
    if source is None:
        return [f"{image.name}: CXMON_CATALOG={catalog} is no file the Dockerfile copies"]
    try:
        load_catalog(source)
    except CatalogError as exc:
        return [f"{image.name}: the catalog it ships does not load: {exc}"]
    return []


# ----------------------------------------------------------------------------------------
# The services that run the cx-monitor image


def build_paths(build: Any, base: Path) -> tuple[Path, Path]:
    """(context, Dockerfile) of a `build` entry."""
    if isinstance(build, dict):
        context = base / str(build.get("context", "."))
        return context, context / str(build.get("dockerfile", "Dockerfile"))
    context = base / str(build)
    return context, context / "Dockerfile"


def image_of(compose: Compose, name: str, base: Path) -> Dockerfile | None:
    """The Dockerfile a service runs: its own build, or that of a service building its image."""
    all_services = services(compose)
    service = all_services[name]
    builders = [service] if "build" in service else []
    builders += [
        other
        for other in all_services.values()
        if "build" in other and "image" in service and other.get("image") == service["image"]
    ]
    for builder in builders:
        context, dockerfile = build_paths(builder["build"], base)
        if dockerfile.is_file():
            return read_dockerfile(dockerfile, context)
    return None


@dataclass
class Runner:
    """A service that runs `cxmon`, with what it runs and the environment it runs in."""

    name: str
    service: Service
    image: Dockerfile
    env: dict[str, str]
    argv: list[str]

    def settings(self) -> Settings | None:
        try:
            return Settings.from_env(self.env)
        except SettingsError:
            return None  # reported by env_problems

    def args(self) -> argparse.Namespace | str:
        return parse_command(self.argv)

    def runs(self, command: Callable[..., int]) -> bool:
        args = self.args()
        return isinstance(args, argparse.Namespace) and args.run is command


def runners(compose: Compose, base: Path) -> list[Runner]:
    found = []
    for name, service in services(compose).items():
        image = image_of(compose, name, base)
        if image is None:
            continue
        env = {**image.env, **environment(service)}
        if "entrypoint" in service:  # a new entrypoint drops the image's CMD too
            argv = words(service["entrypoint"]) + words(service.get("command"))
        else:
            command = words(service["command"]) if "command" in service else image.cmd
            argv = image.entrypoint + command
        found.append(Runner(name, service, image, env, argv))
    return found


def parse_command(argv: list[str]) -> argparse.Namespace | str:
    """The parsed `cxmon` command line, or why the parser refuses it."""
    if not argv or argv[0] != "cxmon":
        return f"runs {argv[:1]}, not cxmon"
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        return lines[-1] if lines else "cxmon exits before running"


def reads(name: str, value: str) -> bool:
    """Whether Settings.from_env reads the variable: some value of it changes or refuses them."""
    baseline = Settings.from_env({})
    for probe in (value, "1", "2", "0.5", "probe", "/probe", "1h", ""):
        try:
            if Settings.from_env({name: probe}) != baseline:
                return True
        except SettingsError:
            return True
    return False


# ----------------------------------------------------------------------------------------
# The checks


def image_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        if "image" not in service:
            if "build" not in service:
                problems.append(f"{name}: neither image nor build")
            continue
        if (why := unpinned(str(service["image"]))) is not None:
            problems.append(f"{name}: image {service['image']}: {why}")
    return problems


def build_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        if "build" not in service:
            continue
        context, dockerfile = build_paths(service["build"], base)
        if not context.is_dir():
            problems.append(f"{name}: build context {context} does not exist")
        elif not dockerfile.is_file():
            problems.append(f"{name}: {dockerfile} does not exist")
        else:
            image = read_dockerfile(dockerfile, context)
            problems += [f"{name}: {p}" for p in dockerfile_problems(image)]
    return problems


def env_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    for runner in runners(compose, base):
        raw = runner.service.get("environment") or {}
        if isinstance(raw, dict):
            for variable, value in raw.items():
                if isinstance(value, bool):
                    problems.append(f"{runner.name}: {variable}: quote {value!r} as a string")
        for variable, value in runner.env.items():
            if variable.startswith("CXMON_") and not reads(variable, value):
                problems.append(f"{runner.name}: {variable} is read by no setting")
        try:
            Settings.from_env(runner.env)
        except SettingsError as exc:
            problems.append(f"{runner.name}: {exc}")
    return problems


def command_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    for runner in runners(compose, base):
        args = runner.args()
        if isinstance(args, str):
            problems.append(f"{runner.name}: {shlex.join(runner.argv)}: {args}")
            continue
        if args.run in (cli.run_simulate, cli.run_demo):
            try:
                cli.simulation_config(args)
            except ValueError as exc:
                problems.append(f"{runner.name}: {shlex.join(runner.argv)}: {exc}")
            catalog = runner.image.files().get(runner.env.get("CXMON_CATALOG", ""))
            if args.degrade and catalog is not None:
                watched = {moment.touchpoint for moment in load_catalog(catalog).key_moments}
                if args.degrade not in watched:
                    problems.append(
                        f"{runner.name}: --degrade {args.degrade} is no key moment of the "
                        f"catalog: nothing would fire"
                    )
    return problems


def kafka_services(compose: Compose) -> dict[str, Service]:
    return {
        name: service
        for name, service in services(compose).items()
        if "KAFKA_ADVERTISED_LISTENERS" in environment(service)
    }


def broker_problems(compose: Compose, base: Path) -> list[str]:
    """Each runner's CXMON_BROKER_URL names a Kafka service and a listener it advertises."""
    by_name = {
        alias: (name, service)
        for name, service in kafka_services(compose).items()
        for alias in names_of(name, service)
    }
    problems = []
    for runner in runners(compose, base):
        settings = runner.settings()
        if settings is None or runner.runs(cli.run_webhook):  # the receiver needs no Kafka
            continue
        for address in settings.bootstrap_servers.split(","):
            host = address.rpartition(":")[0]
            if host not in by_name:
                problems.append(
                    f"{runner.name}: CXMON_BROKER_URL names {host}, no Kafka service "
                    f"of this file ({sorted(by_name)})"
                )
                continue
            kafka, service = by_name[host]
            try:
                advertised = listeners(environment(service)["KAFKA_ADVERTISED_LISTENERS"])
            except ValueError as exc:
                problems.append(f"{kafka}: {exc}")
                continue
            if address not in {listener.address for listener in advertised}:
                problems.append(
                    f"{runner.name}: CXMON_BROKER_URL {address} is no listener {kafka} "
                    f"advertises ({[listener.address for listener in advertised]})"
                )
    return problems


def kafka_problems(compose: Compose, base: Path) -> list[str]:
    """One KRaft node: listeners, auto-creation off, healthcheck on the network listener."""
    problems = []
    for name, service in kafka_services(compose).items():
        env = environment(service)
        if env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true").lower() != "false":
            problems.append(f"{name}: topic auto-creation is on (the monitor creates its topics)")
        roles = set(env.get("KAFKA_PROCESS_ROLES", "").split(","))
        if not {"broker", "controller"} <= roles:
            problems.append(f"{name}: KAFKA_PROCESS_ROLES {sorted(roles)}: not broker,controller")
        try:
            bound = {item.name: item.port for item in listeners(env.get("KAFKA_LISTENERS", ""))}
            advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
            published = {m.published: m for m in port_mappings(service) if m.published}
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        controllers = set(env.get("KAFKA_CONTROLLER_LISTENER_NAMES", "").split(","))
        aliases = names_of(name, service)
        internal: set[int] = set()
        for listener in advertised:
            if listener.name not in bound:
                problems.append(f"{name}: advertised {listener.name} is not in KAFKA_LISTENERS")
            elif listener.name in controllers:
                problems.append(f"{name}: advertises the controller listener {listener.name}")
            elif listener.host in aliases:
                if listener.port != bound[listener.name]:
                    problems.append(
                        f"{name}: {listener.address} advertised, but {listener.name} "
                        f"listens on {bound[listener.name]}"
                    )
                internal.add(listener.port)
            elif listener.host in LOOPBACK:
                mapping = published.get(listener.port)
                if mapping is None or mapping.target != bound[listener.name]:
                    problems.append(
                        f"{name}: {listener.address} advertised for the host, but host port "
                        f"{listener.port} is not published to {bound[listener.name]}"
                    )
            else:
                problems.append(f"{name}: {listener.address}: neither {name} nor localhost")
        if not internal:
            problems.append(f"{name}: no listener advertised for the compose network")
        for voter in filter(None, env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",")):
            _, _, address = voter.partition("@")
            host, _, port = address.rpartition(":")
            if host not in aliases or int(port) not in {bound.get(c) for c in controllers}:
                problems.append(f"{name}: quorum voter {voter} is not this node's controller")
        command = healthcheck_command((service.get("healthcheck") or {}).get("test"))
        target = re.search(r"--bootstrap-server[= ](\S+)", command or "")
        if target is None:
            problems.append(f"{name}: no healthcheck asking the broker (--bootstrap-server)")
        else:
            host, _, port = target.group(1).rpartition(":")
            if host not in aliases | LOOPBACK or not port.isdigit() or int(port) not in internal:
                problems.append(
                    f"{name}: healthcheck asks {target.group(1)}, not the internal listener"
                )
        log_dirs = env.get("KAFKA_LOG_DIRS", "/tmp/kraft-combined-logs")
        if not any(m.named and m.target == log_dirs for m in mounts(service)):
            problems.append(f"{name}: KAFKA_LOG_DIRS {log_dirs} is not on a named volume")
    return problems


def port_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    taken: dict[tuple[int, str], str] = {}
    for name, service in services(compose).items():
        try:
            mappings = port_mappings(service)
        except (ValueError, KeyError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        for mapping in mappings:
            if mapping.published is None:
                continue
            key = (mapping.published, mapping.protocol)
            if key in taken:
                problems.append(
                    f"{name}: host port {mapping.published} is already published by {taken[key]}"
                )
            taken[key] = name
    return problems


def web_problems(compose: Compose, base: Path) -> list[str]:
    """Workers: healthcheck and published ports on CXMON_WEB_PORT, bound beyond loopback."""
    problems = []
    for runner in runners(compose, base):
        settings = runner.settings()
        if settings is None or not runner.runs(cli.run_worker):
            continue
        port = settings.web_port
        command = healthcheck_command((runner.service.get("healthcheck") or {}).get("test"))
        urls = re.findall(r"https?://([^/:\s'\"]+)(?::(\d+))?(/[^\s'\"]*)?", command or "")
        if not urls:
            problems.append(f"{runner.name}: no healthcheck asking the web server")
        for _, url_port, path in urls:
            if int(url_port or 80) != port:
                problems.append(f"{runner.name}: healthcheck on port {url_port}, web on {port}")
            if path != "/metrics":
                problems.append(f"{runner.name}: healthcheck asks {path!r}, not /metrics")
        mappings = port_mappings(runner.service)
        for mapping in mappings:
            if mapping.target != port:
                problems.append(f"{runner.name}: publishes {mapping.target}, web is on {port}")
        if mappings and settings.web_host in LOOPBACK:
            problems.append(
                f"{runner.name}: CXMON_WEB_HOST={settings.web_host} is the container's own "
                f"loopback: the published port cannot reach it"
            )
    return problems


def depends_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    all_services = services(compose)
    healthchecked = {
        name
        for name, service in all_services.items()
        if healthcheck_command((service.get("healthcheck") or {}).get("test"))
        and not (service.get("healthcheck") or {}).get("disable")
    }
    healthchecked |= {
        runner.name
        for runner in runners(compose, base)
        if runner.image.healthcheck and "healthcheck" not in runner.service
    }
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        entries = {target: {} for target in depends} if isinstance(depends, list) else depends
        for target, config in entries.items():
            condition = (config or {}).get("condition", "service_started")
            if target not in all_services or target == name:
                problems.append(f"{name}: depends on {target}, no other service of this file")
            elif condition not in DEPENDENCY_CONDITIONS:
                problems.append(f"{name}: depends on {target} with unknown {condition}")
            elif condition == "service_healthy" and target not in healthchecked:
                problems.append(f"{name}: waits for {target} to be healthy; it has no healthcheck")
    return problems


def worker_problems(compose: Compose, base: Path) -> list[str]:
    """Workers share one group, each with its own static id and its own named data volume."""
    problems = []
    workers = [
        (runner, settings)
        for runner in runners(compose, base)
        if runner.runs(cli.run_worker) and (settings := runner.settings()) is not None
    ]
    owners: dict[str, str] = {}
    for runner, settings in workers:
        instance = settings.instance_id
        if instance is None:
            problems.append(f"{runner.name}: no CXMON_INSTANCE_ID (static membership)")
        elif instance in owners:
            problems.append(f"{runner.name}: CXMON_INSTANCE_ID {instance} is {owners[instance]}'s")
        else:
            owners[instance] = runner.name
        data_dir = posixpath.join(runner.image.workdir, str(settings.data_dir))
        volume = [m for m in mounts(runner.service) if m.target == data_dir and m.named]
        if not volume:
            problems.append(f"{runner.name}: CXMON_DATA_DIR {data_dir} is not on a named volume")
            continue
        for other, service in services(compose).items():
            if other != runner.name and any(m.source == volume[0].source for m in mounts(service)):
                problems.append(f"{runner.name}: volume {volume[0].source} is shared with {other}")
    for setting in ("app_id", "partitions", "broker_url"):
        values = {str(getattr(settings, setting)) for _, settings in workers}
        if len(values) > 1:
            problems.append(f"workers disagree on {setting}: {sorted(values)}")
    return problems


def volume_problems(compose: Compose, base: Path) -> list[str]:
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in services(compose).items():
        for mount in mounts(service):
            if mount.named and mount.source not in declared:
                problems.append(f"{name}: volume {mount.source} is not declared under volumes:")
    return problems


def restart_problems(compose: Compose, base: Path) -> list[str]:
    problems = []
    for name, service in services(compose).items():
        policy = service.get("restart", "no")
        valid = isinstance(policy, str) and (
            policy in RESTART_POLICIES or re.fullmatch(r"on-failure:\d+", policy)
        )
        if isinstance(policy, bool):
            problems.append(f'{name}: restart {policy!r}: quote "no", YAML reads no as false')
        elif not valid:
            problems.append(f"{name}: restart {policy!r} is no restart policy")
    return problems


def service_using(compose: Compose, image: str) -> tuple[str, Service] | None:
    """The service running the named image (any pinned tag), if the file has one."""
    for name, service in services(compose).items():
        if str(service.get("image", "")).rsplit(":", 1)[0] == image:
            return name, service
    return None


def host_path(service: Service, container_path: str, base: Path) -> Path | None:
    """Where on the host a bind-mounted container path comes from."""
    for mount in mounts(service):
        if mount.named or mount.source is None:
            continue
        target = mount.target.rstrip("/")
        if container_path == target or container_path.startswith(target + "/"):
            return base / mount.source / posixpath.relpath(container_path, target)
    return None


def flag(service: Service, name: str, default: str) -> str:
    for word in words(service.get("command")):
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    return default


def listen_port(service: Service, default: int) -> int:
    address = flag(service, "web.listen-address", f":{default}")
    return int(address.rpartition(":")[2])


def _mounted_config(
    name: str, service: Service, path: str, base: Path, problems: list[str]
) -> dict[str, Any] | None:
    source = host_path(service, path, base)
    if source is None or not source.is_file():
        problems.append(f"{name}: {path} is not mounted from a file of this repository")
        return None
    loaded: dict[str, Any] = yaml.safe_load(source.read_text())
    return loaded


def _address(text: str) -> tuple[str, int]:
    """host and port of `host:port` or of a URL."""
    if "://" in text:
        text = text.split("://", 1)[1].split("/", 1)[0]
    host, _, port = text.rpartition(":")
    return host, int(port)


def ops_problems(compose: Compose, base: Path) -> list[str]:
    """Prometheus scrapes the workers and alerts Alertmanager, which notifies the webhook;
    workers push to Alertmanager; Grafana reads Prometheus and the dashboards: every name,
    port and mounted file along the way agrees with the service it points at."""
    problems: list[str] = []
    found = {
        role: service_using(compose, image)
        for role, image in (
            ("prometheus", "prom/prometheus"),
            ("alertmanager", "prom/alertmanager"),
            ("grafana", "grafana/grafana"),
        )
    }
    for role, entry in found.items():
        if entry is None:
            problems.append(f"no {role} service")
    all_runners = runners(compose, base)
    webhooks = {
        r.name: args.port
        for r in all_runners
        if r.runs(cli.run_webhook) and isinstance(args := r.args(), argparse.Namespace)
    }
    workers = {
        r.name: settings
        for r in all_runners
        if r.runs(cli.run_worker) and (settings := r.settings()) is not None
    }
    alertmanager_at: tuple[str, int] | None = None
    if (am := found["alertmanager"]) is not None:
        name, service = am
        alertmanager_at = (name, listen_port(service, 9093))
        path = flag(service, "config.file", "/etc/alertmanager/alertmanager.yml")
        config = _mounted_config(name, service, path, base, problems)
        for receiver in (config or {}).get("receivers", []):
            for webhook in receiver.get("webhook_configs", []):
                host, port = _address(webhook["url"])
                if webhooks.get(host) != port:
                    problems.append(
                        f"{name}: receiver {receiver['name']} posts to {host}:{port}, "
                        f"no webhook service listens there ({webhooks})"
                    )
    for worker, settings in workers.items():
        pushes = {_address(url) for url in settings.alertmanager_urls}
        if alertmanager_at is not None and pushes != {alertmanager_at}:
            problems.append(f"{worker}: pushes alerts to {pushes}, not {alertmanager_at}")
    prometheus_at: tuple[str, int] | None = None
    if (prom := found["prometheus"]) is not None:
        name, service = prom
        prometheus_at = (name, listen_port(service, 9090))
        path = flag(service, "config.file", "/etc/prometheus/prometheus.yml")
        config = _mounted_config(name, service, path, base, problems) or {}
        for pattern in config.get("rule_files", []):
            rules = host_path(service, posixpath.join(posixpath.dirname(path), pattern), base)
            if rules is None or not list(rules.parent.glob(rules.name)):
                problems.append(f"{name}: rule_files {pattern} matches no mounted file")
        scraped = {
            _address(target)
            for job in config.get("scrape_configs", [])
            if job.get("job_name") == "cx-monitor"
            for static in job.get("static_configs", [])
            for target in static.get("targets", [])
        }
        expected = {(worker, settings.web_port) for worker, settings in workers.items()}
        if scraped != expected:
            problems.append(f"{name}: scrapes {sorted(scraped)}, workers are {sorted(expected)}")
        alerted = {
            _address(target)
            for manager in config.get("alerting", {}).get("alertmanagers", [])
            for static in manager.get("static_configs", [])
            for target in static.get("targets", [])
        }
        if alertmanager_at is not None and alerted != {alertmanager_at}:
            problems.append(f"{name}: alerts {sorted(alerted)}, not {alertmanager_at}")
    if (grafana := found["grafana"]) is not None:
        name, service = grafana
        provisioning = "/etc/grafana/provisioning"
        for source in sorted((host_path(service, provisioning, base) or base).glob("*/*.yml")):
            doc = yaml.safe_load(source.read_text()) or {}
            for datasource in doc.get("datasources", []):
                if prometheus_at is not None and _address(datasource["url"]) != prometheus_at:
                    problems.append(f"{name}: datasource {datasource['url']} is not Prometheus")
            for provider in doc.get("providers", []):
                folder = host_path(service, provider["options"]["path"], base)
                if folder is None or not list(folder.glob("*.json")):
                    problems.append(
                        f"{name}: dashboards at {provider['options']['path']} are "
                        "not mounted from the repository"
                    )
        if host_path(service, provisioning, base) is None:
            problems.append(f"{name}: {provisioning} is not mounted")
    return problems


CHECKS: dict[str, Check] = {
    "images": image_problems,
    "builds": build_problems,
    "env": env_problems,
    "commands": command_problems,
    "broker": broker_problems,
    "kafka": kafka_problems,
    "ports": port_problems,
    "web": web_problems,
    "depends": depends_problems,
    "workers": worker_problems,
    "volumes": volume_problems,
    "restart": restart_problems,
    "ops": ops_problems,
}


# ----------------------------------------------------------------------------------------
# The real files


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


def test_compose_file_follows_the_compose_spec(compose: Compose) -> None:
    assert "version" not in compose, "the compose spec has no `version:` key"
    assert services(compose), "no services"


def test_checks_are_not_vacuous(compose: Compose) -> None:
    """There is a Kafka, and workers, simulator and alerts run the cx-monitor image."""
    found = runners(compose, REPO)
    assert kafka_services(compose)
    assert len([r for r in found if r.runs(cli.run_worker)]) >= 2
    assert any(r.runs(cli.run_simulate) for r in found)
    assert any(r.runs(cli.run_alerts) for r in found)
    assert any(r.runs(cli.run_webhook) for r in found)


@pytest.mark.parametrize("check", list(CHECKS))
def test_compose_file(compose: Compose, check: str) -> None:
    assert CHECKS[check](compose, REPO) == []


def test_dockerfile() -> None:
    assert dockerfile_problems(read_dockerfile(REPO / "Dockerfile", REPO)) == []


def test_build_context_leaves_out_local_state() -> None:
    rules = read_dockerignore(REPO)
    for kept in ("pyproject.toml", "streams/commands/cli.py", "deploy/catalog.example.yaml"):
        assert not ignored(kept, rules), kept
    for dropped in (".venv/pyvenv.cfg", ".git/HEAD", ".cxmon/demo/x", "streams/__pycache__/a.pyc"):
        assert ignored(dropped, rules), dropped


# ----------------------------------------------------------------------------------------
# Each check catches what it is for: the same checks on deliberately broken copies


def _runner(compose: Compose, command: Callable[..., int], nth: int = 0) -> Service:
    found = [r for r in runners(compose, REPO) if r.runs(command)]
    assert len(found) > nth, f"no service runs {command.__name__} (see test_compose_file)"
    return found[nth].service


def _kafka(compose: Compose) -> Service:
    return next(iter(kafka_services(compose).values()))


def _worker_env(compose: Compose, nth: int = 0) -> dict[str, Any]:
    env: dict[str, Any] = _runner(compose, cli.run_worker, nth)["environment"]
    return env


def _set_healthcheck(service: Service, command: str) -> None:
    service["healthcheck"] = {"test": ["CMD-SHELL", command]}


Breakage = Callable[[Compose], None]

BREAKAGES: list[tuple[str, str, Breakage]] = [
    ("images", "kafka latest", lambda c: _kafka(c).update(image="apache/kafka:latest")),
    ("images", "kafka untagged", lambda c: _kafka(c).update(image="apache/kafka")),
    ("images", "kafka floating", lambda c: _kafka(c).update(image="apache/kafka:3")),
    ("builds", "no context", lambda c: _runner(c, cli.run_worker).update(build="./missing")),
    (
        "builds",
        "no dockerfile",
        lambda c: _runner(c, cli.run_worker).update(build={"context": ".", "dockerfile": "Nope"}),
    ),
    ("env", "unknown variable", lambda c: _worker_env(c).update(CXMON_PARTITION="8")),
    ("env", "bad value", lambda c: _worker_env(c).update(CXMON_PARTITIONS="eight")),
    ("env", "bad port", lambda c: _worker_env(c).update(CXMON_WEB_PORT="http")),
    ("env", "unquoted boolean", lambda c: _worker_env(c).update(CXMON_SENTIMENT=False)),
    (
        "commands",
        "unknown option",
        lambda c: _runner(c, cli.run_simulate).update(command=["simulate", "--speeed", "60"]),
    ),
    ("commands", "unknown command", lambda c: _runner(c, cli.run_alerts).update(command="alert")),
    (
        "commands",
        "bad span",
        lambda c: _runner(c, cli.run_simulate).update(command="simulate --span '6 hours'"),
    ),
    (
        "commands",
        "unwatched touchpoint",
        lambda c: _runner(c, cli.run_simulate).update(command="simulate --degrade store.nowhere"),
    ),
    ("commands", "not cxmon", lambda c: _runner(c, cli.run_alerts).update(entrypoint="python")),
    (
        "broker",
        "wrong host",
        lambda c: _worker_env(c).update(CXMON_BROKER_URL="kafka://broker:9092"),
    ),
    (
        "broker",
        "host listener port",
        lambda c: _worker_env(c).update(CXMON_BROKER_URL="kafka://kafka:29092"),
    ),
    (
        "broker",
        "loopback",
        lambda c: _worker_env(c).update(CXMON_BROKER_URL="kafka://localhost:29092"),
    ),
    (
        "broker",
        "advertised elsewhere",
        lambda c: _kafka(c)["environment"].update(
            KAFKA_ADVERTISED_LISTENERS="INTERNAL://broker:9092,EXTERNAL://localhost:29092"
        ),
    ),
    (
        "kafka",
        "auto-create on",
        lambda c: _kafka(c)["environment"].update(KAFKA_AUTO_CREATE_TOPICS_ENABLE="true"),
    ),
    (
        "kafka",
        "auto-create by default",
        lambda c: _kafka(c)["environment"].pop("KAFKA_AUTO_CREATE_TOPICS_ENABLE"),
    ),
    (
        "kafka",
        "broker only",
        lambda c: _kafka(c)["environment"].update(KAFKA_PROCESS_ROLES="broker"),
    ),
    ("kafka", "host port unpublished", lambda c: _kafka(c).update(ports=[])),
    (
        "kafka",
        "healthcheck on host listener",
        lambda c: _set_healthcheck(
            _kafka(c), "/opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:29092 --list"
        ),
    ),
    ("kafka", "no healthcheck", lambda c: _kafka(c).pop("healthcheck")),
    ("kafka", "data not on a volume", lambda c: _kafka(c).update(volumes=[])),
    ("ports", "clash", lambda c: _runner(c, cli.run_worker, 1).update(ports=["6066:6066"])),
    (
        "ports",
        "clash with kafka",
        lambda c: _runner(c, cli.run_worker, 1).update(ports=["29092:6066"]),
    ),
    (
        "web",
        "healthcheck port",
        lambda c: _set_healthcheck(
            _runner(c, cli.run_worker),
            "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:6067/metrics')\"",
        ),
    ),
    ("web", "web port moved", lambda c: _worker_env(c).update(CXMON_WEB_PORT="7000")),
    ("web", "loopback", lambda c: _worker_env(c).update(CXMON_WEB_HOST="127.0.0.1")),
    ("web", "web host unset", lambda c: _worker_env(c).pop("CXMON_WEB_HOST")),
    ("web", "no healthcheck", lambda c: _runner(c, cli.run_worker).pop("healthcheck")),
    (
        "web",
        "published elsewhere",
        lambda c: _runner(c, cli.run_worker).update(ports=["127.0.0.1:6066:8080"]),
    ),
    (
        "depends",
        "missing service",
        lambda c: _runner(c, cli.run_simulate).update(
            depends_on={"worker-3": {"condition": "service_healthy"}}
        ),
    ),
    ("depends", "kafka without healthcheck", lambda c: _kafka(c).pop("healthcheck")),
    (
        "depends",
        "worker without healthcheck",
        lambda c: _runner(c, cli.run_worker).update(healthcheck={"disable": True}),
    ),
    (
        "workers",
        "same instance id",
        lambda c: _worker_env(c, 1).update(CXMON_INSTANCE_ID=_worker_env(c)["CXMON_INSTANCE_ID"]),
    ),
    ("workers", "no instance id", lambda c: _worker_env(c, 1).pop("CXMON_INSTANCE_ID")),
    (
        "workers",
        "shared volume",
        lambda c: _runner(c, cli.run_worker, 1).update(
            volumes=_runner(c, cli.run_worker)["volumes"]
        ),
    ),
    ("workers", "no volume", lambda c: _runner(c, cli.run_worker, 1).update(volumes=[])),
    ("workers", "other group", lambda c: _worker_env(c, 1).update(CXMON_APP_ID="other")),
    ("workers", "data dir moved", lambda c: _worker_env(c).update(CXMON_DATA_DIR="/var/cxmon")),
    ("volumes", "undeclared", lambda c: c["volumes"].pop(next(iter(c["volumes"])))),
    ("ops", "no prometheus", lambda c: c["services"].pop("prometheus")),
    (
        "ops",
        "config not mounted",
        lambda c: c["services"]["prometheus"].update(volumes=["prometheus-data:/prometheus"]),
    ),
    (
        "ops",
        "rules elsewhere",
        lambda c: c["services"]["prometheus"]["volumes"].__setitem__(
            1, "./deploy/prometheus/rules:/etc/rules:ro"
        ),
    ),
    (
        "ops",
        "alertmanager port",
        lambda c: c["services"]["alertmanager"].update(
            command=[
                "--config.file=/etc/alertmanager/alertmanager.yml",
                "--web.listen-address=:9999",
            ]
        ),
    ),
    (
        "ops",
        "webhook port",
        lambda c: _runner(c, cli.run_webhook).update(command=["webhook", "--port", "9096"]),
    ),
    (
        "ops",
        "worker pushes nowhere",
        lambda c: _worker_env(c).update(CXMON_ALERTMANAGER_URL="http://am:9093"),
    ),
    ("ops", "worker unscraped", lambda c: _worker_env(c, 1).update(CXMON_WEB_PORT="6068")),
    (
        "ops",
        "dashboards unmounted",
        lambda c: c["services"]["grafana"]["volumes"].pop(1),
    ),
    ("restart", "unquoted no", lambda c: _runner(c, cli.run_simulate).update(restart=False)),
    ("restart", "unknown policy", lambda c: _runner(c, cli.run_alerts).update(restart="sometimes")),
]


@pytest.mark.parametrize(
    ("check", "breakage"),
    [pytest.param(check, breakage, id=f"{check}: {label}") for check, label, breakage in BREAKAGES],
)
def test_check_catches_breakage(compose: Compose, check: str, breakage: Breakage) -> None:
    broken = unshare(compose)
    breakage(broken)
    assert CHECKS[check](broken, REPO), f"the {check} check missed it"


DOCKERFILE_BREAKAGES = [
    ("FROM python:3.11.14-slim-bookworm", "FROM python:3.11-slim"),
    ("FROM python:3.11.14-slim-bookworm", "FROM python"),
    ("COPY streams/ streams/", "COPY streams/ streams/\nCOPY missing.txt ./"),
    ("COPY models/ models/\n", ""),
    ("COPY pyproject.toml README.md ./", "COPY pyproject.toml ./"),
    ("RUN pip install .", "RUN pip install '.[dev,broker]'"),
    ("RUN pip install .", "RUN pip install -e nothing"),
    ("USER cxmon", ""),
    ('ENTRYPOINT ["cxmon"]', "ENTRYPOINT cxmon"),
    ('ENTRYPOINT ["cxmon"]', 'ENTRYPOINT ["cx-monitor"]'),
    ("CXMON_CATALOG=/etc/cxmon/catalog.yaml", "CXMON_CATALOG=/etc/cxmon/other.yaml"),
    ("EXPOSE 6066", "EXPOSE 8080"),
]


@pytest.mark.parametrize(("old", "new"), DOCKERFILE_BREAKAGES)
def test_dockerfile_check_catches_breakage(old: str, new: str) -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert old in text, f"the Dockerfile no longer has {old!r}: update this test"
    image = read_dockerfile(REPO / "Dockerfile", REPO, text.replace(old, new, 1))
    assert dockerfile_problems(image), f"{old!r} -> {new!r} went unnoticed"


def test_dockerignore_that_drops_a_source_is_caught(tmp_path: Path) -> None:
    for name in ("Dockerfile", "pyproject.toml", "README.md"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"), encoding="utf-8")
    for directory in ("streams", "agents", "models", "deploy"):
        (tmp_path / directory).symlink_to(REPO / directory)
    (tmp_path / ".dockerignore").write_text("*\n!pyproject.toml\n!streams\n", encoding="utf-8")
    problems = dockerfile_problems(read_dockerfile(tmp_path / "Dockerfile", tmp_path))
    assert any("README.md" in p and ".dockerignore" in p for p in problems), problems
    assert any("agents/" in p for p in problems), problems
