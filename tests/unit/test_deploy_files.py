"""The container deployment files, checked without a Docker daemon.

docker-compose.yml, deploy/**/Dockerfile* and .dockerignore are parsed and checked for
what a user of `docker compose up --build` would run into: a dependency that is never
healthy, a build that points nowhere, two services on one host port, a process that does
not listen where its port is published, a variable nobody reads, a container running as
root, or `python -m services.<name>` for a package that does not exist. When the docker
CLI has a working `compose` subcommand, `docker compose config -q` checks the file too.

deploy/k8s (the Kubernetes manifests) is checked the same way, offline: every document parsed, the
kustomization complete, the Deployments' images, ports, probes and resources, the settings the
services read (each service's settings class is built from the ConfigMap and Secret, in production),
and the topics and consumer groups against the ones the code declares.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import AliasChoices, ValidationError

from libs.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DEPLOY_README = DEPLOY / "README.md"
SHARED_DOCKERFILE = DEPLOY / "Dockerfile.service"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILES = sorted(DEPLOY.glob("**/Dockerfile*"))

INFRASTRUCTURE = ("kafka", "postgres")
# Every process compose and the images start, as `python -m services.<name>`.
EXPECTED_SERVICES = ("relay", "orders", "projector", "payments", "rma", "shipping", "notifications")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- docker-compose.yml -----------------------------------------------------------------

# Compose interpolation: $$ (a literal $), ${VAR}, ${VAR:-default}, ${VAR-default},
# ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt}, and $VAR.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def _variables(text: str) -> dict[str, list[tuple[str | None, str]]]:
    """Every variable the compose file interpolates -> its uses as (operator, argument)."""
    found: dict[str, list[tuple[str | None, str]]] = {}
    for m in _INTERPOLATION.finditer(text):
        if m["escaped"]:
            continue
        name = m["braced"] or m["bare"]
        found.setdefault(name, []).append((m["op"], m["arg"] or ""))
    return found


def _with_defaults(text: str) -> str:
    """The compose text as compose sees it with no variable set: each default applied."""

    def substitute(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        return m["arg"] if m["op"] in ("-", ":-") else ""

    return _INTERPOLATION.sub(substitute, text)


@functools.cache
def _compose_text() -> str:
    return COMPOSE_FILE.read_text()


@functools.cache
def _compose() -> dict:
    """docker-compose.yml with every variable at its default (YAML anchors and merge keys resolved)."""
    return yaml.safe_load(_with_defaults(_compose_text()))


def _services() -> dict[str, dict]:
    return _compose()["services"]


def _built_services() -> dict[str, dict]:
    """The closeloop services: those compose builds from a Dockerfile here."""
    return {name: svc for name, svc in _services().items() if "build" in svc}


def _build(svc: dict) -> tuple[Path, Path, dict[str, str]]:
    """(context directory, Dockerfile, build args) of a service's `build`."""
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    dockerfile = (context / build.get("dockerfile", "Dockerfile")).resolve()
    args = build.get("args") or {}
    if isinstance(args, list):
        args = dict(item.split("=", 1) for item in args)
    return context, dockerfile, {k: str(v) for k, v in args.items()}


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {
        k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()
    }


def _depends_on(svc: dict) -> dict[str, str]:
    """dependency -> condition."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _has_healthcheck(svc: dict) -> bool:
    hc = svc.get("healthcheck") or {}
    return bool(hc.get("test")) and not hc.get("disable") and hc.get("test") != ["NONE"]


def _healthcheck_text(svc: dict) -> str:
    test = svc["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def _published_ports(svc: dict) -> list[tuple[int, int, str]]:
    """(host port, container port, protocol) of every port published on a fixed host port."""
    out = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") not in (None, ""):
                out.append((int(port["published"]), int(port["target"]), port.get("protocol", "tcp")))
            continue
        spec, _, protocol = str(port).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:  # container port only: docker picks a free host port
            continue
        out.append((int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return out


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """Kafka listener list "NAME://host:port,..." -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


@functools.cache
def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_compose_file_parses_and_runs_kafka_postgres_and_every_service() -> None:
    raw = yaml.safe_load(_compose_text())
    assert isinstance(raw, dict) and isinstance(raw.get("services"), dict), (
        "docker-compose.yml has no services"
    )
    missing = [name for name in (*INFRASTRUCTURE, *EXPECTED_SERVICES) if name not in raw["services"]]
    assert not missing, f"docker-compose.yml lacks the services {missing}"
    assert _services()["kafka"]["image"].startswith("apache/kafka:"), "the broker must be Apache Kafka"
    assert _services()["postgres"]["image"].startswith("postgres:18"), "the database must be PostgreSQL 18"
    if _docker_compose_available():  # an extra check where it exists; the parse checks above always run
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"docker compose config -q failed:\n{result.stderr}"


def test_every_dependency_exists_and_waits_for_health_where_declared() -> None:
    services = _services()
    for name, svc in services.items():
        for dep, condition in _depends_on(svc).items():
            assert dep in services, f"{name} depends on {dep!r}, which is not a service"
            assert dep != name, f"{name} depends on itself"
            if condition == "service_healthy":
                assert _has_healthcheck(services[dep]), (
                    f"{name} waits until {dep} is healthy, but {dep} has no healthcheck: {name} never starts"
                )
    for name, svc in _built_services().items():
        deps = _depends_on(svc)
        for dep in INFRASTRUCTURE:
            assert deps.get(dep) == "service_healthy", (
                f"{name} must wait for {dep} with condition: service_healthy, not {deps.get(dep)!r}"
            )


def test_every_build_points_at_an_existing_context_and_dockerfile() -> None:
    assert _built_services(), "no service is built from a Dockerfile"
    for name, svc in _built_services().items():
        context, dockerfile, _ = _build(svc)
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        assert dockerfile.is_relative_to(DEPLOY), (
            f"{name}: build from a Dockerfile in deploy/, not {dockerfile}"
        )


def test_published_host_ports_are_unique() -> None:
    owners: dict[tuple[int, str], list[str]] = {}
    for name, svc in _services().items():
        for host, _, protocol in _published_ports(svc):
            owners.setdefault((host, protocol), []).append(name)
    clashes = {f"{port}/{proto}": names for (port, proto), names in owners.items() if len(names) > 1}
    assert not clashes, f"host ports published twice: {clashes}"
    published = {name for names in owners.values() for name in names}
    assert {"orders", "projector"} <= published, (
        "the orders and projector APIs must be reachable from the host"
    )


def test_every_service_has_a_healthcheck() -> None:
    without = [name for name, svc in _services().items() if not _has_healthcheck(svc)]
    assert not without, f"services without a healthcheck: {without}"


def test_services_listen_where_their_port_is_published_and_checked() -> None:
    for name, svc in _built_services().items():
        env = _env(svc)
        assert env.get("CLOSELOOP_HTTP_HOST") == "0.0.0.0", (
            f"{name}: CLOSELOOP_HTTP_HOST must be 0.0.0.0 (127.0.0.1 is unreachable through a published port)"
        )
        port = int(env.get("CLOSELOOP_HTTP_PORT", ServiceSettings.model_fields["http_port"].default))
        for host, container, _ in _published_ports(svc):
            assert container == port, (
                f"{name}: host port {host} goes to {container}, but the process listens on {port}"
            )
        check = _healthcheck_text(svc)
        assert re.search(rf"127\.0\.0\.1:{port}/(healthz|readyz)\b", check), (
            f"{name}: the healthcheck must GET /healthz or /readyz on port {port}: {check}"
        )


def test_every_compose_variable_has_a_default_or_is_documented() -> None:
    readme = DEPLOY_README.read_text()
    for name, uses in _variables(_compose_text()).items():
        defaults = {arg for op, arg in uses if op in ("-", ":-")}
        if len(defaults) == len(uses):
            assert len(defaults) == 1, (
                f"${{{name}}} has different defaults in different places: {sorted(defaults)}"
            )
        else:
            assert re.search(rf"\b{name}\b", readme), (
                f"${{{name}}} has no default in docker-compose.yml and is not documented in deploy/README.md"
            )


def _setting_env_names() -> set[str]:
    """Every environment variable ServiceSettings reads."""
    return _env_names(ServiceSettings)


def _env_names(cls: type[ServiceSettings]) -> set[str]:
    """Every environment variable a settings class reads."""
    prefix = cls.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def test_the_shared_service_environment_is_read_and_accepted_by_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env(_compose()["x-service"])
    known = _setting_env_names()
    unknown = sorted(set(env) - known)
    assert not unknown, f"docker-compose.yml sets {unknown}, which no process reads (a typo?)"
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = ServiceSettings()
    assert settings.http_host == "0.0.0.0"
    # A real Kafka, not the embedded Tansu tuning that the defaults are for.
    assert (
        settings.kafka_session_timeout_ms,
        settings.kafka_heartbeat_interval_ms,
        settings.kafka_fetch_max_wait_ms,
    ) == (10000, 3000, 500)
    assert settings.kafka_heartbeat_interval_ms * 3 <= settings.kafka_session_timeout_ms
    # CLOSELOOP_ENVIRONMENT=production alone must not run on the development secret.
    monkeypatch.setenv("CLOSELOOP_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="CLOSELOOP_SECRET_KEY"):
        ServiceSettings()


def test_services_reach_kafka_and_postgres_on_the_compose_network() -> None:
    services = _services()
    kafka_env, pg_env = _env(services["kafka"]), _env(services["postgres"])
    advertised = set(_listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).values())
    for name, svc in _built_services().items():
        env = _env(svc)
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.strip().rpartition(":")
            assert host in services, f"{name}: Kafka bootstrap host {host!r} is not a compose service"
            assert (host, int(port)) in advertised, (
                f"{name}: Kafka does not advertise {server}, so clients would be sent elsewhere: {advertised}"
            )
        url = urlsplit(env["DATABASE_URL"])
        assert url.hostname == "postgres" and (url.port or 5432) == 5432, (
            f"{name}: DATABASE_URL host {url.netloc}"
        )
        assert url.path.lstrip("/") == pg_env["POSTGRES_DB"], (
            f"{name}: DATABASE_URL names a database compose does not create"
        )
        assert url.username == pg_env.get("POSTGRES_USER", "postgres"), f"{name}: DATABASE_URL user"
        assert url.password == pg_env["POSTGRES_PASSWORD"], (
            f"{name}: DATABASE_URL password differs from POSTGRES_PASSWORD"
        )


def test_kafka_is_a_single_kraft_node_that_never_creates_topics_by_itself() -> None:
    kafka = _services()["kafka"]
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = _listeners(env["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), (
        f"listeners without a security protocol: {set(listeners) - set(protocols)}"
    )
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"], "the only controller voter must be this node"
    assert int(voter.rpartition(":")[2]) == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]][1]
    # Host clients connect to the published port and are then sent to the advertised address.
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    external = advertised["EXTERNAL"]
    published = {container: host for host, container, _ in _published_ports(kafka)}
    assert published.get(listeners["EXTERNAL"][1]) == external[1] == 9092, (
        f"EXTERNAL listener: published {published}, advertised {external}"
    )
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_NUM_PARTITIONS"] == "6"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1", "one broker cannot hold more replicas"
    assert "kafka-broker-api-versions.sh" in _healthcheck_text(kafka)


def test_postgres_keeps_its_data_in_a_named_volume() -> None:
    postgres = _services()["postgres"]
    volumes = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in postgres.get("volumes") or []
    ]
    named = {v.split(":")[0]: v.split(":")[1] for v in volumes if not v.startswith((".", "/"))}
    assert named, "postgres needs a named volume, or `docker compose down` loses the event store"
    assert set(named) <= set(_compose().get("volumes") or {}), "declare the volume under top-level volumes:"
    # PostgreSQL 18 images refuse to start on a volume at the old /var/lib/postgresql/data.
    assert "/var/lib/postgresql" in named.values(), f"mount the volume at /var/lib/postgresql, not {named}"
    assert "pg_isready" in _healthcheck_text(postgres)


# --- Dockerfiles ------------------------------------------------------------------------


def _parser(path: Path) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(path.read_bytes()), env_replace=False)


def _final_stage(path: Path) -> list[dict]:
    instructions = [i for i in _parser(path).structure if i["instruction"] != "COMMENT"]
    starts = [n for n, i in enumerate(instructions) if i["instruction"] == "FROM"]
    assert starts, f"{_rel(path)} has no FROM"
    return instructions[starts[-1] :]


def _values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def _command(value: str) -> str:
    """A CMD or ENTRYPOINT value as one string, from either the JSON or the shell form."""
    try:
        return " ".join(json.loads(value))
    except ValueError:
        return value


@pytest.mark.parametrize("path", DOCKERFILES, ids=[_rel(p) for p in DOCKERFILES])
def test_every_dockerfile_parses_has_a_command_and_runs_as_non_root(path: Path) -> None:
    stage = _final_stage(path)
    assert _values(stage, "CMD") or _values(stage, "ENTRYPOINT"), (
        f"{_rel(path)}: the image has no CMD or ENTRYPOINT"
    )
    users = _values(stage, "USER")
    assert users, f"{_rel(path)}: no USER in the final stage, so the container runs as root"
    user = users[-1].split(":")[0].strip()
    assert user not in ("root", "0"), f"{_rel(path)}: the container runs as root (USER {users[-1]})"


def test_the_dockerfiles_are_found() -> None:
    assert SHARED_DOCKERFILE in DOCKERFILES
    assert {p.parent.name for p in DOCKERFILES if p.parent != DEPLOY} >= set(EXPECTED_SERVICES)


def test_the_shared_image_runs_the_project_python_and_serves_health() -> None:
    requires = re.search(
        r'requires-python\s*=\s*"[^"]*?>=\s*(\d+\.\d+)', (ROOT / "pyproject.toml").read_text()
    )
    assert requires, "pyproject.toml declares no requires-python"
    for image in _parser(SHARED_DOCKERFILE).parent_images:
        if image.startswith("python:"):
            assert image.startswith(f"python:{requires[1]}"), f"{image} is not Python {requires[1]}"
    stage = _final_stage(SHARED_DOCKERFILE)
    envs = _parser(SHARED_DOCKERFILE).envs
    assert envs.get("CLOSELOOP_HTTP_HOST") == "0.0.0.0", (
        "inside a container the HTTP server must bind 0.0.0.0"
    )
    port = envs.get("CLOSELOOP_HTTP_PORT", "8000")
    assert port in " ".join(_values(stage, "EXPOSE")).split(), f"EXPOSE {port} (CLOSELOOP_HTTP_PORT)"
    healthchecks = _values(stage, "HEALTHCHECK")
    assert healthchecks and "/healthz" in healthchecks[-1], "the image needs a HEALTHCHECK on /healthz"


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is an exception "!", regex), in order (the last match wins)."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        out.append((negate, re.compile(regex)))
    return out


def _ignored(relpath: str) -> bool:
    """Whether the build context leaves this path out (a path is out when it or a parent matches)."""
    parts = relpath.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in _ignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_sources_and_leaves_local_state_out() -> None:
    for path in (
        ".venv",
        ".git",
        ".closeloop",
        "tests",
        "bench/results",
        ".pytest_cache",
        "libs/__pycache__",
        "libs/eventstore/__pycache__/store.cpython-311.pyc",
    ):
        assert _ignored(path), f".dockerignore must leave {path} out of the build context"
    for path in (
        "pyproject.toml",
        "README.md",
        "libs/settings.py",
        "services/__init__.py",
        "libs/eventstore/migrations/0001_event_store.sql",
    ):
        assert not _ignored(path), f".dockerignore leaves {path} out, but the image needs it"


def test_the_shared_image_copies_only_what_the_build_context_has() -> None:
    contexts = {_build(svc)[0] for svc in _built_services().values() if _build(svc)[1] == SHARED_DOCKERFILE}
    assert contexts == {ROOT}, f"build deploy/Dockerfile.service with the repository root as context, not {contexts}"
    context = ROOT
    for value in _values(_parser(SHARED_DOCKERFILE).structure, "COPY"):
        if value.startswith("--from"):
            continue
        *sources, _ = value.split()
        for source in sources:
            assert not _ignored(source), f"COPY {source}: .dockerignore leaves it out of the context"
            assert (context / source).exists(), f"COPY {source}: {_rel(context / source)} does not exist"


def test_each_service_compose_builds_has_a_matching_per_service_dockerfile() -> None:
    from_shared = {}
    for name, svc in _built_services().items():
        _, dockerfile, args = _build(svc)
        if dockerfile == SHARED_DOCKERFILE:
            assert args.get("SERVICE"), f"{name}: build deploy/Dockerfile.service with args: SERVICE"
            from_shared[name] = args["SERVICE"]
    for name, service in from_shared.items():
        per_service = DEPLOY / service / "Dockerfile"
        assert per_service.is_file(), (
            f"{name}: compose builds SERVICE={service}, but {_rel(per_service)} is missing"
        )
        assert DockerfileParser(fileobj=io.BytesIO(per_service.read_bytes())).envs.get("SERVICE") == service
        commands = " ".join(_command(v) for v in _values(_final_stage(per_service), "CMD"))
        assert f"services.{service}" in commands.split(), (
            f"{_rel(per_service)} must run python -m services.{service}"
        )
    extra = {p.parent.name for p in DEPLOY.glob("*/Dockerfile")} - set(from_shared.values())
    assert not extra, f"deploy/<name>/Dockerfile without a service in docker-compose.yml: {sorted(extra)}"


# --- python -m services.<name> ----------------------------------------------------------

_MODULE = re.compile(r"-m[\s\"',]+services\.(\$\{SERVICE[^}]*\}|\$SERVICE\b|[A-Za-z_][A-Za-z0-9_]*)")


def _started_modules() -> dict[str, set[str]]:
    """Every `python -m services.<name>` the images and compose start -> where it is started."""
    shared_args: dict[Path, set[str]] = {}
    for svc in _built_services().values():
        _, dockerfile, args = _build(svc)
        if "SERVICE" in args:
            shared_args.setdefault(dockerfile, set()).add(args["SERVICE"])
    started: dict[str, set[str]] = {}
    for path in DOCKERFILES:
        stage = _final_stage(path)
        fixed = DockerfileParser(fileobj=io.BytesIO(path.read_bytes())).envs.get("SERVICE")
        for value in _values(stage, "CMD") + _values(stage, "ENTRYPOINT"):
            for module in _MODULE.findall(_command(value)):
                if module.startswith("$"):
                    names = {fixed} if fixed else shared_args.get(path.resolve(), set())
                    assert names, f"{_rel(path)} runs services.$SERVICE, but nothing sets SERVICE"
                else:
                    names = {module}
                for n in names:
                    started.setdefault(n, set()).add(_rel(path))
    for name, svc in _services().items():
        for key in ("command", "entrypoint"):
            value = svc.get(key)
            text = " ".join(value) if isinstance(value, list) else str(value or "")
            for module in _MODULE.findall(text):
                started.setdefault(module, set()).add(f"docker-compose.yml ({name}.{key})")
    return started


def test_every_started_module_is_a_package_under_services() -> None:
    started = _started_modules()
    not_started = [name for name in EXPECTED_SERVICES if name not in started]
    assert not not_started, f"no image or compose service runs python -m services.<name> for {not_started}"
    problems = []
    for module, where in sorted(started.items()):
        package = ROOT / "services" / module
        if (package / "__main__.py").is_file() or (ROOT / "services" / f"{module}.py").is_file():
            continue
        reason = "has no __main__.py" if package.is_dir() else "does not exist"
        problems.append(
            f"python -m services.{module} (started by {', '.join(sorted(where))}): "
            f"services/{module}/ {reason}"
        )
    assert not problems, "modules the containers start are missing:\n" + "\n".join(problems)


# --- deploy/k8s: Kubernetes manifests (kustomize) ----------------------------------------

K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
# Every container listens here (CLOSELOOP_HTTP_PORT in the ConfigMap, EXPOSE in the image).
CONTAINER_PORT = 8000
# The keys of the Secret CloudNativePG writes for a Cluster's application user (<cluster>-app).
CNPG_APP_SECRET_KEYS = {"username", "user", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass",
                        "fqdn-uri", "fqdn-jdbc-uri"}


@functools.cache
def _kustomization() -> dict:
    return yaml.safe_load(KUSTOMIZATION.read_text())


@functools.cache
def _manifests() -> tuple[tuple[str, dict], ...]:
    """(file relative to deploy/k8s, document) of every YAML document the kustomization applies."""
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path == KUSTOMIZATION:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.relative_to(K8S).as_posix(), doc))
    return tuple(out)


def _of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in _manifests() if doc.get("kind") == kind}


def _one(kind: str) -> dict:
    [doc] = _of_kind(kind).values()
    return doc


def _config() -> dict[str, str]:
    data = _one("ConfigMap")["data"]
    assert all(isinstance(v, str) for v in data.values()), f"ConfigMap values must be strings: {data}"
    return data


def _secret_keys() -> set[str]:
    """The keys of closeloop-secrets, from secrets.env.example (secrets.env itself is never committed)."""
    example = K8S / "secrets.env.example"
    keys = set()
    for line in example.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and not value, f"secrets.env.example must leave every value empty: {line!r}"
            keys.add(key)
    return keys


def _settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"services.{service}.bootstrap")
    [cls] = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, ServiceSettings)
             and v.__module__ == module.__name__]
    return cls


@functools.cache
def _consumed() -> dict[str, tuple[str, frozenset[str]]]:
    """service -> (consumer group, topics), from the brokers the services' own bootstraps build (the
    subscribers are only declared: nothing connects), with the ConfigMap's instance prefix."""
    out = {}
    for service in EXPECTED_SERVICES:
        module = importlib.import_module(f"services.{service}.bootstrap")
        build = getattr(module, "build_broker", None)
        if build is None:
            continue
        params = list(inspect.signature(build).parameters.values())[1:]
        args = [None for p in params if p.default is inspect.Parameter.empty]  # handlers are only captured
        kwargs = {"topics": module.CONSUMED_TOPICS} if any(p.name == "topics" for p in params) else {}
        settings = _settings_class(service)(instance_prefix=_config()["CLOSELOOP_INSTANCE_PREFIX"])
        groups: dict[str, set[str]] = {}
        for subscriber in build(settings, *args, **kwargs).subscribers:
            groups.setdefault(subscriber.group_id, set()).update(subscriber.topic_names)
        [(group, topics)] = groups.items()  # one consumer group per service
        out[service] = (group, frozenset(topics))
    return out


def test_every_manifest_parses_and_names_its_api_kind_and_name() -> None:
    assert _manifests(), "deploy/k8s holds no manifests"
    for path, doc in _manifests():
        assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
        for key in ("apiVersion", "kind"):
            assert doc.get(key), f"{path}: a document without {key}"
        assert (doc.get("metadata") or {}).get("name"), f"{path}: {doc['kind']} without metadata.name"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), (
            f"{path}: {doc['metadata']['name']!r} is not a DNS-1123 name")
    kinds = [(doc["kind"], doc["metadata"]["name"]) for _, doc in _manifests()]
    assert len(kinds) == len(set(kinds)), f"a kind and name defined twice: {kinds}"


def test_the_kustomization_lists_every_manifest_and_every_file_it_names_exists() -> None:
    k = _kustomization()
    assert k["apiVersion"].startswith("kustomize.config.k8s.io/") and k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed)), f"resources listed twice: {listed}"
    files = {path for path, _ in _manifests()}
    assert set(listed) == files, (f"not in kustomization.yaml: {sorted(files - set(listed))}; "
                                  f"listed but missing: {sorted(set(listed) - files)}")
    for generator in k.get("secretGenerator", []) + k.get("configMapGenerator", []):
        for env_file in generator.get("envs", []):
            # A secrets file is written by whoever deploys, from the committed example, and never committed.
            assert (K8S / env_file).exists() or (K8S / f"{env_file}.example").exists(), env_file
            assert f"deploy/k8s/{env_file}" in (ROOT / ".gitignore").read_text().split(), (
                f"{env_file} holds secrets: .gitignore must keep it out of git")
    [secret] = k["secretGenerator"]
    assert secret["name"] == "closeloop-secrets"


def test_every_service_has_a_deployment_with_image_port_probes_and_resources() -> None:
    deployments, services = _of_kind("Deployment"), _of_kind("Service")
    assert set(deployments) == set(EXPECTED_SERVICES), f"Deployments {sorted(deployments)}"
    compose_ports = {name: [h for h, _, _ in _published_ports(svc)] for name, svc in _built_services().items()}
    images = {i["name"] for i in _kustomization()["images"]}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        pod = spec["template"]
        assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), (
            f"{name}: the selector does not select the Deployment's own pods")
        [container] = pod["spec"]["containers"]
        assert container["image"] == f"closeloop-{name}" and container["image"] in images, (
            f"{name}: image {container['image']!r} (built from deploy/{name}/Dockerfile, retagged in images:)")
        assert (DEPLOY / name / "Dockerfile").is_file()
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": CONTAINER_PORT}, f"{name}: ports {ports}"
        probes = {kind: container.get(f"{kind}Probe", {}).get("httpGet", {}) for kind in ("liveness", "readiness")}
        assert probes["liveness"].get("path") == "/healthz", f"{name}: liveness probe {probes['liveness']}"
        assert probes["readiness"].get("path") == "/readyz", f"{name}: readiness probe {probes['readiness']}"
        for probe in probes.values():
            assert probe.get("port") in ("http", CONTAINER_PORT), f"{name}: a probe on port {probe.get('port')}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), f"{name}: resources.{kind}"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        service = services[name]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), (
            f"{name}: the Service selects no pod of the Deployment")
        [port] = service["spec"]["ports"]
        assert port["targetPort"] in ("http", CONTAINER_PORT)
        assert port["port"] in (compose_ports.get(name) or [CONTAINER_PORT]), (
            f"{name}: Service port {port['port']}, docker-compose.yml publishes {compose_ports.get(name)}")
    assert _config()["CLOSELOOP_HTTP_PORT"] == str(CONTAINER_PORT) and _config()["CLOSELOOP_HTTP_HOST"] == "0.0.0.0"


def _deployment_env(name: str, secret_values: dict[str, str]) -> dict[str, str]:
    """The environment the Deployment gives its container: the ConfigMap, then each env entry (secret
    references resolved from `secret_values`, the CloudNativePG URI made up)."""
    [container] = _of_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    cluster = _one("Cluster")["metadata"]["name"]
    for source in container.get("envFrom", []):
        assert source.get("configMapRef", {}).get("name") == _one("ConfigMap")["metadata"]["name"], (
            f"{name}: envFrom {source}")
        env.update(_config())
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        if ref["name"] == f"{cluster}-app":
            assert ref["key"] in CNPG_APP_SECRET_KEYS, f"{name}: {ref['key']} is not a key CloudNativePG writes"
            assert ref["key"] == "uri", f"{name}: {item['name']} must be the connection URI"
            env[item["name"]] = f"postgresql://closeloop:pw@{cluster}-rw:5432/closeloop"
        else:
            assert ref["name"] == "closeloop-secrets" and ref["key"] in _secret_keys(), (
                f"{name}: {item['name']} refers to {ref}, which no manifest defines")
            env[item["name"]] = secret_values.get(ref["key"], "")
    return env


def test_every_setting_in_the_config_and_secret_is_read_and_production_gets_all_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = {service: _env_names(_settings_class(service)) for service in EXPECTED_SERVICES}
    unread = sorted((set(_config()) | _secret_keys()) - set().union(*read.values()))
    assert not unread, f"ConfigMap/Secret keys no process reads (a typo?): {unread}"
    secrets = {key: f"{key.lower()}-{'x' * 24}" for key in _secret_keys()}
    for service in EXPECTED_SERVICES:
        cls = _settings_class(service)
        for variable in read[service]:
            monkeypatch.delenv(variable, raising=False)
        env = _deployment_env(service, secrets)
        assert env["CLOSELOOP_ENVIRONMENT"] == "production"
        assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "CLOSELOOP_SECRET_KEY"} <= set(env), service
        with monkeypatch.context() as m:
            for variable, value in env.items():
                m.setenv(variable, value)
            settings = cls()  # raises if production lacks a secret or a value is invalid
            assert settings.kafka_heartbeat_interval_ms * 3 <= settings.kafka_session_timeout_ms
            # the secrets as the Secret holds them before anyone fills it in: refused at start-up
            for key in _secret_keys() & set(env):
                m.setenv(key, "")
            with pytest.raises(ValidationError):
                cls()


def test_kafka_topics_are_the_codes_topics_with_the_configured_partitions_and_replicas() -> None:
    from services.registry import TOPICS

    kafka, config = _one("Kafka"), _config()
    name = kafka["metadata"]["name"]
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    kconfig = kafka["spec"]["kafka"]["config"]
    assert kconfig["auto.create.topics.enable"] is False
    partitions = int(config["CLOSELOOP_KAFKA_TOPIC_PARTITIONS"])
    replicas = int(config["CLOSELOOP_KAFKA_REPLICATION_FACTOR"])
    pools = _of_kind("KafkaNodePool").values()
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == name for p in pools)
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    assert sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"]) % 2 == 1, "a quorum"
    assert brokers >= replicas, "more replicas of a topic than brokers"
    # acks=all waits for min.insync.replicas: fewer than the replicas, so that one broker may be down
    assert 1 <= kconfig["min.insync.replicas"] < replicas
    topics = {t["spec"]["topicName"]: t for t in _of_kind("KafkaTopic").values()}
    assert set(topics) == set(TOPICS), f"KafkaTopics {sorted(topics)}, the code's topics {sorted(TOPICS)}"
    for topic, t in topics.items():
        assert t["metadata"]["labels"]["strimzi.io/cluster"] == name, topic
        assert (t["spec"]["partitions"], t["spec"]["replicas"]) == (partitions, replicas), (
            f"{topic}: partitions/replicas {t['spec']['partitions']}/{t['spec']['replicas']}, the ConfigMap says "
            f"{partitions}/{replicas} (a missing topic is created with those)")
    [listener] = [x for x in kafka["spec"]["kafka"]["listeners"] if not x.get("tls")]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == f"{name}-kafka-bootstrap:{listener['port']}"


def test_the_database_is_a_cloudnativepg_cluster_whose_app_secret_every_service_uses() -> None:
    cluster = _one("Cluster")
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["spec"]["instances"] >= 2, "a standby for failover"
    assert re.search(r"postgresql:18\b", cluster["spec"]["imageName"]), "PostgreSQL 18, as in docker-compose.yml"
    assert cluster["spec"]["bootstrap"]["initdb"]["database"]
    for name in EXPECTED_SERVICES:
        assert _deployment_env(name, {})["DATABASE_URL"].startswith("postgresql://"), name
    pods = sum(so["spec"]["maxReplicaCount"] for so in _of_kind("ScaledObject").values()) \
        + _of_kind("Deployment")["relay"]["spec"]["replicas"]
    pool = int(_config()["CLOSELOOP_DB_POOL_MAX"])
    assert pods * pool < int(cluster["spec"]["postgresql"]["parameters"]["max_connections"]), (
        "at the autoscalers' maximum the pools would exceed max_connections")


def test_scaled_objects_watch_the_consumer_groups_and_topics_the_code_uses() -> None:
    scaled, deployments = _of_kind("ScaledObject"), _of_kind("Deployment")
    partitions = int(_config()["CLOSELOOP_KAFKA_TOPIC_PARTITIONS"])
    assert set(scaled) == set(_consumed()), f"ScaledObjects {sorted(scaled)}, consumers {sorted(_consumed())}"
    for name, so in scaled.items():
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert so["spec"]["scaleTargetRef"]["name"] == name and name in deployments
        assert "replicas" not in deployments[name]["spec"], f"{name}: KEDA owns the replica count"
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions, (
            f"{name}: more replicas than partitions would sit idle")
        group, topics = _consumed()[name]
        kafka = [t["metadata"] for t in so["spec"]["triggers"] if t["type"] == "kafka"]
        assert {m["consumerGroup"] for m in kafka} == {group}, f"{name}: the code's group is {group!r}"
        assert {m["topic"] for m in kafka} == topics, f"{name}: the code consumes {sorted(topics)}"
        for m in kafka:
            assert m["bootstrapServers"] == _config()["KAFKA_BOOTSTRAP_SERVERS"]
            assert int(m["lagThreshold"]) > 0
    relay = deployments["relay"]
    assert "relay" not in scaled and relay["spec"]["replicas"] == 2, "one active relay and one standby"
