"""Deployment files (compose, RabbitMQ, Prometheus, Grafana, Dockerfile) checked against the code.

No service and no Docker engine is needed. Where `docker-compose` (Debian's 1.29) or
`promtool` is installed, the tests also run them; elsewhere those tests are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from votes_app import topology
from votes_app.celery import TASK_ROUTES
from votes_app.config import Settings
from votes_app.metrics import OUTCOMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "votes.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "votes.yml"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"
# github.com/compose-spec/compose-spec, schema/compose-spec.json (Apache-2.0).
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"

SERVICES = {
    "rabbitmq",
    "redis",
    "postgres",
    "preflight",
    "migrate",
    "votes",
    "worker-validation",
    "worker-aggregation",
    "beat",
    "flower",
    "celery-exporter",
    "prometheus",
    "grafana",
}
APP_IMAGE = "votes_app:latest"
WORK_QUEUES = set(topology.WORK_QUEUES)
ALL_QUEUES = set(topology.ALL_QUEUES)
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}
# Read by the worker or Flower themselves, not by votes_app.config.
EXTRA_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR"}
EXTRA_PREFIXES = ("METRICS_", "FLOWER_")

# The application's metrics (votes_app.metrics), with a histogram's series.
APP_METRICS = {
    "validation_votes_processed_total",
    "validation_processing_latency_seconds_bucket",
    "validation_processing_latency_seconds_sum",
    "validation_processing_latency_seconds_count",
    "validation_errors_total",
    "validation_queue_size",
    "votes_queue_depth",
    "redis_operations_total",
    "database_operations_total",
    "votes_aggregated_total",
    "current_vote_totals",
    "votes_recorded_total",
    "current_law_totals",
    "batch_processing_duration_seconds",
    "batch_size_processed_total",
    "aggregation_errors_total",
    "validation_batch_duration_seconds_bucket",
    "validation_batch_duration_seconds_sum",
    "validation_batch_duration_seconds_count",
    "votes_held_total",
    "voter_roll_missing",
    "voter_roll_size",
    "dead_letters_total",
    "tally_flush_lag_seconds",
    "last_flush_timestamp_seconds",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
}
FLOWER_METRICS = {
    "flower_events_total",
    "flower_task_runtime_seconds_bucket",
    "flower_task_runtime_seconds_sum",
    "flower_task_runtime_seconds_count",
    "flower_task_prefetch_time_seconds",
    "flower_worker_prefetched_tasks",
    "flower_worker_online",
    "flower_worker_number_of_currently_executing_tasks",
}
EXPORTER_METRICS = {
    *(
        f"celery_task_{event}_total"
        for event in (
            "sent",
            "received",
            "started",
            "succeeded",
            "failed",
            "rejected",
            "revoked",
            "retried",
        )
    ),
    "celery_task_runtime_bucket",
    "celery_task_runtime_sum",
    "celery_task_runtime_count",
    "celery_worker_up",
    "celery_worker_tasks_active",
    "celery_queue_length",
    "celery_active_consumer_count",
    "celery_active_worker_count",
    "celery_active_process_count",
}
PROMETHEUS_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS"}
KNOWN_METRICS = APP_METRICS | FLOWER_METRICS | EXPORTER_METRICS | PROMETHEUS_METRICS

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


# --- loading ------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    config: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    return config


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return board


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def option(command: list[str], *names: str) -> str | None:
    """The value of a command-line option, given as `-Q value` or `--queues=value`."""
    for index, arg in enumerate(command):
        for name in names:
            if arg == name and index + 1 < len(command):
                return command[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if svc.get("image") == APP_IMAGE}


def celery_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    commands = {name: command_of(svc) for name, svc in services.items()}
    return {name: command for name, command in commands.items() if command[:1] == ["celery"]}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a regex reading, not a parser)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    # Label lists of aggregations and vector matching.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        called = text[match.end() :].lstrip().startswith("(")  # a function or an aggregation
        if not called and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def panels_of(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in panels_of(board) for target in panel.get("targets", [])]


# --- docker-compose.yml -----------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))

    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]

    assert errors == []


def test_the_stack_has_the_services_the_scripts_name(services: dict[str, Any]) -> None:
    assert set(services) == SERVICES


def test_celery_commands_name_the_app_and_its_queues(services: dict[str, Any]) -> None:
    commands = celery_commands(services)
    consumed: set[str] = set()

    for name, command in commands.items():
        assert command[1:3] == ["-A", "votes_app"], name
        assert command[3] in {"worker", "beat", "flower"}, name
        if command[3] == "worker":
            queues = option(command, "-Q", "--queues")
            assert queues, f"{name} must say which queues it consumes"
            assert set(queues.split(",")) <= WORK_QUEUES, name
            consumed |= set(queues.split(","))

    # Every routed task has a worker; nobody consumes votes.dead, which waits for an operator.
    assert {route["queue"] for route in TASK_ROUTES.values()} <= consumed
    assert consumed == WORK_QUEUES
    assert {"worker-validation", "worker-aggregation", "beat", "flower"} <= set(commands)


def test_worker_node_names_are_distinct(services: dict[str, Any]) -> None:
    nodes = [
        option(command, "-n", "--hostname")
        for command in celery_commands(services).values()
        if command[3] == "worker"
    ]

    assert None not in nodes
    assert len(set(nodes)) == len(nodes)


def test_exactly_one_beat_runs(services: dict[str, Any]) -> None:
    beats = [name for name, command in celery_commands(services).items() if command[3] == "beat"]

    assert beats == ["beat"]
    # A fixed container name is what makes `--scale beat=2` fail.
    assert services["beat"].get("container_name")
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_app_services_get_only_variables_the_app_reads(services: dict[str, Any]) -> None:
    for name, service in app_services(services).items():
        if name == "preflight":
            continue  # it checks the other services' secrets: tests/unit/test_preflight.py
        for variable in environment_of(service):
            assert (
                variable in SETTINGS_VARIABLES
                or variable in EXTRA_VARIABLES
                or variable.startswith(EXTRA_PREFIXES)
            ), f"{name}: {variable} is not a field of votes_app.config.Settings"


def test_every_app_service_reaches_what_it_needs(services: dict[str, Any]) -> None:
    apps = app_services(services)

    assert set(apps) == {
        "preflight", "migrate", "votes", "worker-validation", "worker-aggregation", "beat", "flower"
    }  # fmt: skip
    # The owner's role makes the schema and runs the lifecycle commands; workers use the
    # application's, which the migrations made.
    for name in ("migrate", "votes"):
        assert {"OWNER_DATABASE_URL", "DATABASE_URL"} <= set(environment_of(apps[name]))
    assert "APP_DATABASE_PASSWORD" in environment_of(apps["migrate"])
    for name in ("worker-validation", "worker-aggregation"):
        assert "OWNER_DATABASE_URL" not in environment_of(apps[name])
        assert "//votes_app:" in environment_of(apps[name])["DATABASE_URL"]
    for name in ("worker-validation", "worker-aggregation"):
        assert {"CELERY_BROKER_URL", "REDIS_URL", "DATABASE_URL"} <= set(environment_of(apps[name]))
    for name in ("beat", "flower"):
        assert "CELERY_BROKER_URL" in environment_of(apps[name])


def test_workers_serve_metrics_to_other_containers(services: dict[str, Any]) -> None:
    ports = {}
    for name, command in celery_commands(services).items():
        environment = environment_of(services[name])
        if command[3] == "worker":
            assert environment.get("METRICS_ADDRESS") == "0.0.0.0", name
            ports[name] = environment["METRICS_PORT"]
        else:
            # Flower's own /metrics lives in its process; the multiprocess mode would hide it.
            assert "PROMETHEUS_MULTIPROC_DIR" not in environment, name

    assert len(set(ports.values())) == len(ports)
    # 9808 is celery-exporter's.
    assert "9808" not in ports.values()


def test_passed_through_knobs_default_to_the_settings_defaults(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    knobs = {
        m["name"]: m["arg"]
        for m in VARIABLE.finditer(text)
        if m["name"] in SETTINGS_VARIABLES and m["op"] in {":-", "-"}
    }

    assert knobs, "the compose file passes no tuning knob through"
    for variable, default in knobs.items():
        field = variable.lower()
        parsed = getattr(Settings.model_validate({field: default}), field)
        assert parsed == Settings.model_fields[field].default, variable


def test_secrets_come_from_the_environment(compose: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")

    # Credentials in URLs are variables, each required.
    for userinfo in re.findall(r"://([^/\s]*)@", text):
        assert re.fullmatch(r"(\$\{\w+:\?[^}]*\}:?)+|:\$\{\w+:\?[^}]*\}", userinfo), userinfo
    for service in compose["services"].values():
        for variable, value in environment_of(service).items():
            if re.search(r"PASS|SECRET|AUTH", variable):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), variable


def test_every_compose_variable_is_documented() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")

    variables = {m["name"] for m in VARIABLE.finditer(text)}

    assert {name for name in variables if f"{name}=" not in readme} == set()


def test_services_wait_for_what_they_need(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, name
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", dependency

    assert command_of(services["migrate"]) == ["alembic", "upgrade", "head"]
    for name in ("worker-validation", "worker-aggregation"):
        conditions = {dep: rule["condition"] for dep, rule in services[name]["depends_on"].items()}
        assert conditions == {
            "rabbitmq": "service_healthy",
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }


def test_redis_persists_with_aof(services: dict[str, Any]) -> None:
    command = " ".join(command_of(services["redis"]))

    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    # A ceiling that the memory alert measures against; docs/SCALING.md sizes it.
    assert '--maxmemory "$$REDIS_MAXMEMORY"' in command
    assert environment_of(services["redis"])["REDIS_MAXMEMORY"] == "${REDIS_MAXMEMORY:-3gb}"
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_flower_asks_for_a_password_and_keeps_its_state(services: dict[str, Any]) -> None:
    command = command_of(services["flower"])

    assert "FLOWER_BASIC_AUTH" in environment_of(services["flower"])
    assert "--persistent=True" in command
    assert "--db=/data/flower.db" in command
    assert any(volume.endswith(":/data") for volume in services["flower"]["volumes"])


# --- RabbitMQ ---------------------------------------------------------------------------


def test_definitions_are_those_the_code_declares(services: dict[str, Any]) -> None:
    definitions = json.loads(DEFINITIONS.read_text(encoding="utf-8"))
    worker_environment = environment_of(services["worker-validation"])
    vhost = worker_environment["CELERY_BROKER_URL"].rsplit("/", 1)[1]
    settings = Settings.model_validate({"queue_type": worker_environment["QUEUE_TYPE"]})

    # `votes broker definitions` with the stack's settings: topology and policies as the
    # workers declare and need them.
    assert definitions == topology.definitions(settings, vhost)
    # Passwords stay out of git: users.sh makes the users from the environment.
    assert "users" not in definitions
    assert environment_of(services["rabbitmq"])["RABBITMQ_DEFAULT_VHOST"] == vhost
    # No queue arguments: a plain Celery producer's declaration is the workers' own.
    assert {q["name"] for q in definitions["queues"]} == ALL_QUEUES
    assert all(q["arguments"] == {} for q in definitions["queues"])
    policies = {p["name"]: p["definition"] for p in definitions["policies"]}
    assert policies[topology.WORK_POLICY]["dead-letter-exchange"] == topology.DEAD
    assert policies[topology.WORK_POLICY]["overflow"] == "reject-publish"
    assert "max-length-bytes" in policies[topology.DEAD_POLICY]


def test_the_broker_refuses_what_the_workers_refuse() -> None:
    conf = (DEFINITIONS.parent / "rabbitmq.conf").read_text(encoding="utf-8")

    default = Settings.model_fields["max_message_bytes"].default
    assert f"max_message_size = {default}" in conf.splitlines()


def test_rabbitmq_imports_the_repository_files_and_makes_the_role_users(
    services: dict[str, Any],
) -> None:
    rabbitmq = services["rabbitmq"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in rabbitmq["volumes"] if ":ro" in volume)
    script = " ".join(command_of(rabbitmq))
    users = (DEFINITIONS.parent / "users.sh").read_text(encoding="utf-8")
    environment = environment_of(rabbitmq)

    assert mounts["./deploy/rabbitmq/definitions.json"] in script
    assert "import_definitions" in script
    assert mounts["./deploy/rabbitmq/rabbitmq.conf"].startswith("/etc/rabbitmq/conf.d/")
    # Passwords from the environment, on every start, after the topology.
    assert f"sh {mounts['./deploy/rabbitmq/users.sh']}" in script
    for role in ("PRODUCER", "WORKER", "MONITOR"):
        assert f"$RABBITMQ_{role}_PASSWORD" in users
        assert f"RABBITMQ_{role}_PASSWORD" in environment
    # Each client connects as its role's user, never as the administrator.
    for name, service in services.items():
        for value in [*environment_of(service).values(), *command_of(service)]:
            if "amqp://" in str(value) or "rabbitmq:15672" in str(value):
                assert "RABBITMQ_USER" not in str(value), name
    monitor = ("RABBITMQ_MONITOR_USER", "RABBITMQ_MONITOR_PASSWORD")
    assert all(v in environment_of(services["flower"])["CELERY_BROKER_URL"] for v in monitor)
    assert all(v in " ".join(command_of(services["celery-exporter"])) for v in monitor)


# --- Prometheus ---------------------------------------------------------------------------


def test_prometheus_loads_existing_rule_files(prometheus_config: dict[str, Any]) -> None:
    rule_files = prometheus_config["rule_files"]

    assert rule_files
    for rule_file in rule_files:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file


def test_prometheus_scrapes_each_metrics_port(
    prometheus_config: dict[str, Any], services: dict[str, Any]
) -> None:
    scraped = {}
    for job in prometheus_config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                scraped[host] = str(sd["port"])
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = port

    for name in ("worker-validation", "worker-aggregation"):
        assert scraped[name] == environment_of(services[name])["METRICS_PORT"]
    assert scraped["flower"] == option(command_of(services["flower"]), "--port")
    assert scraped["celery-exporter"] == option(command_of(services["celery-exporter"]), "--port")


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}

    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule["alert"]
    # The cases the issue names.
    assert {
        "VotesQueueGrowing",
        "DuplicateRateHigh",
        "NoWorkerOnQueue",
        "TallyFlushLagging",
        "VoterRollMissing",
        "RedisMemoryHigh",
        "DeadLetters",
    } <= names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_seconds_bucket{q="x{y}"}[5m]))) '
        '/ on() group_left() max(b_total offset 1h) and time() - c{job=~"w.*"} > 1e3'
    )

    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


@pytest.mark.parametrize(
    "expr",
    [rule["expr"] for rule in alert_rules()] + dashboard_expressions(),
)
def test_promql_reads_only_known_metrics(expr: str) -> None:
    assert metric_names(expr) <= KNOWN_METRICS


@pytest.mark.parametrize(
    "expr",
    [rule["expr"] for rule in alert_rules()] + dashboard_expressions(),
)
def test_promql_names_real_queues_and_jobs(expr: str, prometheus_config: dict[str, Any]) -> None:
    jobs = {job["job_name"] for job in prometheus_config["scrape_configs"]}

    for queue in re.findall(r'\bqueue(?:_name)?\s*!?=\s*"([^"]*)"', expr):
        assert queue in ALL_QUEUES
    for job in re.findall(r'\bjob\s*!?=\s*"([^"]*)"', expr):
        assert job in jobs
    # The statuses the seed's dashboards query (valid, not "accepted"), or an operation's.
    for status in re.findall(r'\bstatus\s*!?=\s*"([^"]*)"', expr):
        assert status in {*OUTCOMES, "ok", "error"}


# --- Grafana ------------------------------------------------------------------------------


def test_every_panel_has_a_datasource_and_a_query(dashboard: dict[str, Any]) -> None:
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    panels = [panel for panel in panels_of(dashboard) if panel["type"] != "row"]

    assert panels
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == datasource["uid"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == datasource["uid"], variable["name"]


def test_the_board_covers_what_operators_watch(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(dashboard_expressions())

    for metric in (
        "validation_votes_processed_total",
        "votes_queue_depth",
        "validation_processing_latency_seconds_bucket",
        "current_law_totals",
        "votes_recorded_total",
        "validation_errors_total",
        "votes_held_total",
        "celery_worker_up",
        "celery_queue_length",
        "flower_worker_online",
    ):
        assert metric in exprs


def test_grafana_finds_the_board_and_prometheus(services: dict[str, Any]) -> None:
    provider = load_yaml(DASHBOARD_PROVIDERS)["providers"][0]
    datasource = load_yaml(DATASOURCES)["datasources"][0]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in services["grafana"]["volumes"])

    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert datasource["url"] == "http://prometheus:9090"


# --- Dockerfile ---------------------------------------------------------------------------


def test_the_image_is_slim_runs_unprivileged_and_starts_a_worker() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line for line in dockerfile.splitlines() if line and line[0].isupper()]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    command = json.loads(next(line for line in instructions if line.startswith("CMD "))[4:])

    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-\w+", instructions[0])
    assert users and users[-1] not in {"root", "0"}
    assert "[dev]" not in dockerfile
    assert command[:4] == ["celery", "-A", "votes_app", "worker"]
    assert set((option(command, "-Q") or "").split(",")) == WORK_QUEUES
    assert ".env" in (ROOT / ".dockerignore").read_text(encoding="utf-8").split()


# --- the tools themselves, where installed ------------------------------------------------

DUMMY_SECRETS = {
    "RABBITMQ_USER": "votes",
    "RABBITMQ_PASSWORD": "secret",
    "RABBITMQ_PRODUCER_PASSWORD": "secret",
    "RABBITMQ_WORKER_PASSWORD": "secret",
    "RABBITMQ_MONITOR_PASSWORD": "secret",
    "REDIS_PASSWORD": "secret",
    "POSTGRES_USER": "votes",
    "POSTGRES_PASSWORD": "secret",
    "APP_DATABASE_PASSWORD": "secret",
    "READER_DATABASE_PASSWORD": "secret",
    "FLOWER_BASIC_AUTH": "admin:secret",
    "GRAFANA_ADMIN_PASSWORD": "secret",
}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    # An empty env file: a developer's .env must not decide the outcome.
    empty = tmp_path / "empty.env"
    empty.touch()
    base = ["docker-compose", "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "-q"]
    environment = {"PATH": os.environ["PATH"]}

    accepted = run(base, cwd=ROOT, env=environment | DUMMY_SECRETS)
    missing = run(base, cwd=ROOT, env=environment)

    assert accepted.returncode == 0, accepted.stderr
    assert missing.returncode != 0
    assert "in .env" in missing.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_config_rules_and_dashboard_queries(tmp_path: Path) -> None:
    # Each dashboard query becomes a recording rule, the cheapest way to have it parsed.
    variables = {"$__rate_interval": "1m", "$__range": "1h", "$law": ".*"}
    queries = []
    for index, expr in enumerate(dashboard_expressions()):
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        queries.append({"record": f"dashboard:query_{index}", "expr": expr})
    board_rules = tmp_path / "dashboard_rules.yml"
    board_rules.write_text(yaml.safe_dump({"groups": [{"name": "board", "rules": queries}]}))

    for command in (
        ["promtool", "check", "config", str(PROMETHEUS_CONFIG)],
        ["promtool", "check", "rules", str(ALERTS)],
        ["promtool", "check", "rules", str(board_rules)],
    ):
        result = run(command)
        assert result.returncode == 0, result.stdout + result.stderr


# Inputs and the alerts they must raise; annotations are left out of the comparison.
ALERT_CASES: list[dict[str, Any]] = [
    {
        "series": {'voter_roll_missing{instance="a"}': "1x10"},
        "at": "5m",
        "alert": "VoterRollMissing",
        "labels": [{"severity": "critical"}],
    },
    {
        "series": {'celery_queue_length{queue_name="votes.dead"}': "0 0 3x8"},
        "at": "5m",
        "alert": "DeadLetters",
        "labels": [{"severity": "warning"}],
    },
    {
        "series": {
            'celery_active_consumer_count{queue_name="votes.review"}': "0x10",
            'celery_active_consumer_count{queue_name="votes.validation"}': "1x10",
        },
        "at": "5m",
        "alert": "NoWorkerOnQueue",
        "labels": [{"severity": "critical", "queue_name": "votes.review"}],
    },
    {
        "series": {'celery_queue_length{queue_name="votes.validation"}': "2000+100x20"},
        "at": "20m",
        "alert": "VotesQueueGrowing",
        "labels": [{"severity": "warning", "queue_name": "votes.validation"}],
    },
    {
        "series": {
            'validation_votes_processed_total{status="valid"}': "0+600x20",
            'validation_votes_processed_total{status="duplicate"}': "0+60x20",
        },
        "at": "15m",
        "alert": "DuplicateRateHigh",
        "labels": [{"severity": "warning"}],
    },
    {
        # The same share of duplicates in a trickle of votes is no alarm.
        "series": {
            'validation_votes_processed_total{status="valid"}': "0+6x20",
            'validation_votes_processed_total{status="duplicate"}': "0+6x20",
        },
        "at": "15m",
        "alert": "DuplicateRateHigh",
        "labels": [],
    },
    {
        "series": {"redis_memory_used_bytes": "700+10x20", "redis_memory_max_bytes": "1000x20"},
        "at": "20m",
        "alert": "RedisMemoryHigh",
        "labels": [{"severity": "critical"}],
    },
    {
        # No maxmemory (0): no share to alert on.
        "series": {"redis_memory_used_bytes": "900x20", "redis_memory_max_bytes": "0x20"},
        "at": "20m",
        "alert": "RedisMemoryHigh",
        "labels": [],
    },
    {
        "series": {"tally_flush_lag_seconds": "30 200x10"},
        "at": "5m",
        "alert": "TallyFlushLagging",
        "labels": [{"severity": "critical"}],
    },
    {
        "series": {'up{job="worker-validation",instance="a:9101"}': "1x10"},
        "at": "10m",
        "alert": "WorkerMetricsMissing",
        "labels": [{"severity": "critical", "job": "worker-aggregation"}],
    },
]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    groups = load_yaml(ALERTS)["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "alerts.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    tests = [
        {
            "interval": "1m",
            "input_series": [
                {"series": series, "values": values} for series, values in case["series"].items()
            ],
            "alert_rule_test": [
                {
                    "eval_time": case["at"],
                    "alertname": case["alert"],
                    "exp_alerts": [{"exp_labels": labels} for labels in case["labels"]],
                }
            ],
        }
        for case in ALERT_CASES
    ]
    suite = tmp_path / "alerts_test.yml"
    suite.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": tests}))

    result = run(["promtool", "test", "rules", str(suite)])

    assert result.returncode == 0, result.stdout + result.stderr
