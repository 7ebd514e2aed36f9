"""deploy/: the image, the compose file and the Kubernetes manifests.

Two kinds of checks. Structural ones, in plain Python, for the mistakes that
schema validators let through: a setting nothing reads, a ConfigMap nobody
created, more workers than partitions, a probe on a port the container does
not open, a token committed in clear. And the two real validators, which CI
installs and which must be present (a missing one fails, it never skips):

* ``kubernetes-validate`` (PyPI), used as a library, strict, against the
  schemas it bundles for the Kubernetes versions in ``KUBERNETES_VERSIONS``;
  it reads no network (checked below with sockets disabled);
* ``docker-compose config`` (Debian's ``docker-compose``) and/or
  ``docker compose config`` (the Docker CLI plugin), whichever exist.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml  # PyYAML; kubernetes-validate depends on it

from pipeline.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "creditwatch.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"

#: Oldest Kubernetes we support and the newest kubernetes-validate bundles:
#: the floor catches fields too new for older clusters, the top catches APIs
#: that were removed.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

#: Settings the manifests pass that the code does not read *yet*. Each entry
#: is a promise to someone: remove it once the code reads the variable.
#: CREDITWATCH_HEALTH_PORT: the worker's /healthz and /readyz endpoint.
PLANNED_SETTINGS: set[str] = set()

#: Values that mark a secret as a placeholder rather than a real one.
PLACEHOLDER = re.compile(r"REPLACE_ME|change-me", re.IGNORECASE)
#: Settings that are secrets: never in a ConfigMap, never a literal in compose.
SECRET_SETTINGS = {"CREDITWATCH_DATABASE_URL", "CREDITWATCH_SLACK_BOT_TOKEN", "POSTGRES_PASSWORD"}

CI_INSTALL_HINT = (
    "CI installs the deploy validators with:\n"
    "    apt-get update && apt-get install -y docker-compose\n"
    "    .venv/bin/pip install 'kubernetes-validate>=1.37,<1.38'"
)


# --- loading -------------------------------------------------------------------


def _ignored_by_deploy_gitignore(path: Path) -> bool:
    """The filled-in copies of the examples (real secrets, never committed) are not ours to check."""
    patterns = [line.strip() for line in (DEPLOY / ".gitignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    relative = path.relative_to(DEPLOY).as_posix()
    return any(fnmatch.fnmatch(relative, pattern.lstrip("/")) for pattern in patterns)


def _yaml_files(under: Path = DEPLOY) -> list[Path]:
    return sorted(p for p in under.rglob("*")
                  if p.suffix in (".yaml", ".yml") and p.is_file() and not _ignored_by_deploy_gitignore(p))


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _packages() -> list[str]:
    """Top-level packages that pyproject's ``packages.find`` includes."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted(
        p.name for p in REPO.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in include)
    )


def _known_settings() -> set[str]:
    """Every ``CREDITWATCH_*`` name the shipped code mentions, plus the planned ones."""
    names: set[str] = set()
    for package in _packages():
        for source in (REPO / package).rglob("*.py"):
            names.update(re.findall(r"\bCREDITWATCH_[A-Z0-9_]*[A-Z0-9]\b", source.read_text()))
    return names | PLANNED_SETTINGS


def _env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        assert key not in values, f"{path.name}:{number}: {key} set twice"
        values[key] = value
    return values


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(LookupError):
    pass


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg, value = match.group("op"), match.group("arg"), env.get(name)
        missing = (not value) if op and op.startswith(":") else value is None
        if op and op.endswith("-"):
            return arg if missing else value  # type: ignore[return-value]
        if op and op.endswith("?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _compose_variables() -> dict[str, bool]:
    """Each ``${VAR…}`` in compose.yaml → whether it has a default."""
    found: dict[str, bool] = {}
    for match in _VARIABLE.finditer(_without_comments(COMPOSE_FILE.read_text())):
        name = match.group("name") or match.group("bare")
        if name:
            has_default = bool(match.group("op") and match.group("op").endswith("-"))
            found[name] = found.get(name, False) or has_default
    return found


def _rendered_compose(env: dict[str, str]) -> dict[str, Any]:
    return yaml.safe_load(_interpolate(COMPOSE_FILE.read_text(), env))


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return _env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def compose(example_env) -> dict[str, Any]:
    return _rendered_compose(example_env)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, Any]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _creditwatch_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: svc for name, svc in services.items() if "creditwatch" in str(svc.get("image", ""))}


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under deploy/k8s (the Kustomization itself excluded)."""
    found = []
    for path in _yaml_files(K8S):
        if path.name == "kustomization.yaml":
            continue
        for doc in _load_all(path):
            found.append((path, doc))
    return found


def _objects(manifests, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests if doc["kind"] == kind}


def _pod_specs(manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in manifests:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _configmap_data(manifests) -> dict[str, str]:
    return _objects(manifests, "ConfigMap")["creditwatch-config"]["data"]


def _partitions(manifests) -> int:
    return int(_configmap_data(manifests)["CREDITWATCH_PARTITIONS"])


# --- every file ----------------------------------------------------------------


def test_every_yaml_file_parses_into_mappings():
    files = _yaml_files()
    assert COMPOSE_FILE in files and (K8S / "kustomization.yaml") in files
    for path in files:
        docs = _load_all(path)
        assert docs, f"{path.relative_to(REPO)} holds no YAML document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path.relative_to(REPO)}: a document is not a mapping"


# --- the image -----------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_user_and_entrypoint():
    instructions = _dockerfile_instructions()
    bases = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert bases and bases[-1].split()[0] == "python:3.11-slim", f"the image is built FROM {bases}"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "the image runs as root: add a USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: needs a numeric non-root uid (runAsNonRoot checks it)"
    entrypoints = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["creditwatch"]


def test_dockerfile_copies_everything_the_package_is_built_from():
    copied = set()
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _destination = shlex.split(rest)
            copied.update(source.rstrip("/") for source in sources if not source.startswith("--"))
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", *_packages()}
    if isinstance(pyproject["project"].get("readme"), str):
        needed.add(pyproject["project"]["readme"])
    missing = needed - copied
    assert not missing, f"deploy/Dockerfile does not COPY {sorted(missing)}: `pip install .` in the image would break"
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    if "**" in ignore:
        reincluded = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        assert copied <= reincluded, f"Dockerfile.dockerignore leaves out {sorted(copied - reincluded)}"


# --- compose -------------------------------------------------------------------


def test_compose_has_the_services_and_they_depend_on_each_other_correctly(services):
    assert {"kafka", "postgres", "migrate", "worker", "web"} <= set(services)
    for name, service in services.items():
        for target in service.get("depends_on") or {}:
            assert target in services, f"compose: {name} depends on unknown service {target}"

    def condition(name: str, target: str) -> str | None:
        depends = services[name].get("depends_on") or {}
        return depends.get(target, {}).get("condition") if isinstance(depends, dict) else None

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("worker", "migrate") == "service_completed_successfully"
    assert condition("worker", "kafka") == "service_healthy"
    assert condition("web", "migrate") == "service_completed_successfully"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"].get("restart") == "no", "a one-shot job must not be restarted"
    assert services["worker"]["command"][0] == "worker"
    assert services["web"]["command"][0] == "serve"
    for name in ("kafka", "postgres", "worker", "web"):
        assert services[name].get("healthcheck", {}).get("test"), f"compose: {name} has no healthcheck"


def test_compose_kafka_is_kraft_without_auto_created_topics(services):
    env = _environment(services["kafka"])
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in key for key in env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_urls_point_at_services_that_listen_there(services):
    kafka_ports = {int(listener.rsplit(":", 1)[1]) for listener in
                   _environment(services["kafka"])["KAFKA_LISTENERS"].split(",")}
    postgres = _environment(services["postgres"])
    for name, service in _creditwatch_services(services).items():
        env = _environment(service)
        for bootstrap in env["CREDITWATCH_BROKER_URL"].split(","):
            parts = urlsplit(bootstrap if "://" in bootstrap else f"kafka://{bootstrap}")
            assert parts.hostname in services, f"compose: {name}'s broker {parts.hostname} is not a service"
            assert parts.port in kafka_ports, f"compose: {name}'s broker port {parts.port} is not a Kafka listener"
        db = urlsplit(env["CREDITWATCH_DATABASE_URL"])
        assert db.hostname == "postgres" and (db.port or 5432) == 5432
        assert db.username == postgres["POSTGRES_USER"] and db.path.lstrip("/") == postgres["POSTGRES_DB"]
        assert db.password == postgres["POSTGRES_PASSWORD"], f"compose: {name}'s database password is not postgres's"


def test_compose_variables_and_the_env_example_agree(example_env):
    used = _compose_variables()
    undefined = sorted(name for name, has_default in used.items() if not has_default and name not in example_env)
    assert not undefined, f"compose.yaml uses {undefined} without a default and creditwatch.env.example does not set them"
    unused = sorted(set(example_env) - set(used))
    assert not unused, f"creditwatch.env.example sets {unused}, which compose.yaml never uses"


def test_compose_settings_exist_and_load(services, example_env):
    known = _known_settings()
    minimal = {"POSTGRES_PASSWORD": "x"}  # every other variable at its compose default
    for env_values in (example_env, minimal):
        rendered = _rendered_compose(env_values)["services"]
        for name, service in _creditwatch_services(rendered).items():
            env = _environment(service)
            unknown = sorted(key for key in env if key.startswith("CREDITWATCH_") and key not in known)
            assert not unknown, f"compose: {name} sets {unknown}, which nothing reads"
            try:
                load_settings(env)
            except ConfigError as problem:
                pytest.fail(f"compose: {name}'s settings do not load: {problem}")


def test_compose_runs_no_more_workers_than_partitions(services):
    partitions = load_settings(_environment(services["worker"])).partitions
    replicas = services["worker"].get("deploy", {}).get("replicas", services["worker"].get("scale", 1))
    assert 1 <= int(replicas) <= partitions, f"compose: {replicas} workers for {partitions} partitions"


def test_compose_images_are_pinned_and_files_exist(services, compose):
    for name, service in services.items():
        image = service.get("image")
        assert image, f"compose: {name} has no image"
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag and tag != "latest", f"compose: {name}'s image {image} is not pinned to a tag"
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"compose: {name} mounts {source}, which does not exist"
            else:
                assert source in (compose.get("volumes") or {}), f"compose: volume {source} is not declared"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"].get("volumes", []))


def test_compose_worker_thresholds_file_is_mounted_and_valid(services):
    from detectors.config import load_thresholds

    command = services["worker"]["command"]
    inside = command[command.index("--config") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["worker"].get("volumes", [])}
    assert inside in mounts, f"compose: the worker's --config {inside} is not mounted"
    load_thresholds(DEPLOY / mounts[inside])


# --- Kubernetes ----------------------------------------------------------------


def test_kustomization_lists_every_manifest_and_its_image_override_applies(manifests):
    kustomization = _kustomization()
    listed = set(kustomization["resources"])
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"
    top_level = {p.name for p in _yaml_files(K8S) if p.parent == K8S} - {"kustomization.yaml", "secret.template.yaml"}
    assert top_level == listed, f"kustomization.yaml resources differ from the manifests: {sorted(top_level ^ listed)}"
    assert "secret.template.yaml" not in listed, "the placeholder Secret must never be applied"
    for generator in kustomization.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            assert (K8S / entry.split("=")[-1]).is_file()
    names = {container["image"].rsplit(":", 1)[0] for _, pod in _pod_specs(manifests) for container in _containers(pod)}
    for image in kustomization.get("images", []):
        assert image["name"] in names, f"kustomization.yaml overrides image {image['name']}, which no container uses"


def test_k8s_objects_are_unique_and_in_one_namespace(manifests):
    namespace = _kustomization()["namespace"]
    assert namespace in _objects(manifests, "Namespace")
    seen = set()
    for path, doc in manifests:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{path.name}: {key} defined twice"
        seen.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{path.name}: {key} is not in namespace {namespace}"


def test_k8s_references_resolve(manifests):
    configmaps = {name: set(doc.get("data", {})) for name, doc in _objects(manifests, "ConfigMap").items()}
    for generator in _kustomization().get("configMapGenerator", []):
        configmaps[generator["name"]] = {entry.split("=")[0].rsplit("/", 1)[-1] for entry in generator.get("files", [])}
    secrets = {name: set(doc.get("stringData", {})) | set(doc.get("data", {}))
               for name, doc in _objects(manifests, "Secret").items()}
    service_accounts = set(_objects(manifests, "ServiceAccount"))
    for where, pod in _pod_specs(manifests):
        assert pod.get("serviceAccountName", "default") in service_accounts | {"default"}, where
        for container in _containers(pod):
            for source in container.get("envFrom", []):
                for kind, names in (("configMapRef", configmaps), ("secretRef", secrets)):
                    if kind in source:
                        assert source[kind]["name"] in names, f"{where}: {kind} {source[kind]['name']} does not exist"
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                for kind, names in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                    if kind in ref:
                        assert ref[kind]["key"] in names.get(ref[kind]["name"], set()), \
                            f"{where}: {kind} {ref[kind]['name']}/{ref[kind]['key']} does not exist"
            mounts = {mount["name"] for mount in container.get("volumeMounts", [])}
            assert mounts <= {volume["name"] for volume in pod.get("volumes", [])}, f"{where}: mount of an undeclared volume"
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{where}: ConfigMap {volume['configMap']['name']} does not exist"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{where}: Secret {volume['secret']['secretName']} does not exist"


def test_k8s_settings_exist_and_load(manifests):
    known = _known_settings()
    configmap = _configmap_data(manifests)
    secret = _objects(manifests, "Secret")["creditwatch-secrets"]["stringData"]
    for where, pod in _pod_specs(manifests):
        for container in _containers(pod):
            env = {}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(_objects(manifests, "ConfigMap")[source["configMapRef"]["name"]]["data"])
                if "secretRef" in source:
                    env.update(_objects(manifests, "Secret")[source["secretRef"]["name"]]["stringData"])
            env.update({v["name"]: v.get("value", "") for v in container.get("env", [])})
            unknown = sorted(key for key in env if key.startswith("CREDITWATCH_") and key not in known)
            assert not unknown, f"{where}/{container['name']} sets {unknown}, which nothing reads"
    for key in (*configmap, *secret):
        assert key.startswith("CREDITWATCH_") and key in known, f"ConfigMap/Secret key {key} is not a setting"
    try:
        load_settings({**configmap, **secret})
    except ConfigError as problem:
        pytest.fail(f"the ConfigMap's settings do not load: {problem}")


def test_k8s_workers_never_outnumber_partitions(manifests):
    partitions = _partitions(manifests)
    worker = _objects(manifests, "Deployment")["creditwatch-worker"]
    replicas = worker["spec"].get("replicas", 1)
    assert 1 <= replicas <= partitions, f"worker replicas {replicas} > CREDITWATCH_PARTITIONS {partitions}: the rest idle"
    deployments = _objects(manifests, "Deployment")
    for name, hpa in _objects(manifests, "HorizontalPodAutoscaler").items():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments, f"HPA {name} targets nothing"
        if target["name"] == "creditwatch-worker":
            assert hpa["spec"]["maxReplicas"] <= partitions, f"HPA {name} scales workers beyond {partitions} partitions"
            assert hpa["spec"].get("minReplicas", 1) <= hpa["spec"]["maxReplicas"]


def test_k8s_probes_hit_ports_the_containers_open(manifests):
    deployments = _objects(manifests, "Deployment")
    assert {"creditwatch-worker", "creditwatch-web"} <= set(deployments)
    for name, deployment in deployments.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            paths = {}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                spec = container.get(probe)
                if spec is None:
                    assert probe == "startupProbe", f"{name}/{container['name']} has no {probe}"
                    continue
                get = spec.get("httpGet")
                assert get, f"{name}/{container['name']}: {probe} is not an HTTP probe"
                port = get["port"]
                assert port in ports or port in ports.values(), f"{name}: {probe} on port {port}, which is not opened"
                paths[probe] = (get["path"], ports.get(port, port))
            assert paths["livenessProbe"][0] == "/healthz" and paths["readinessProbe"][0] == "/readyz", f"{name}: {paths}"
            if name == "creditwatch-worker":
                env = {v["name"]: v.get("value") for v in container.get("env", [])}
                assert int(env["CREDITWATCH_HEALTH_PORT"]) == paths["livenessProbe"][1], \
                    "the worker's probes do not hit CREDITWATCH_HEALTH_PORT"
            if name == "creditwatch-web":
                args = container["args"]
                assert args[0] == "serve" and int(args[args.index("--port") + 1]) == paths["livenessProbe"][1]


def test_k8s_resources_security_and_images(manifests):
    uid = int([rest for kw, rest in _dockerfile_instructions() if kw == "USER"][-1].split(":")[0])
    images = set()
    for where, pod in _pod_specs(manifests):
        assert pod["securityContext"].get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not set"
        assert pod["securityContext"].get("runAsUser", uid) == uid, f"{where}: runAsUser is not the image's user {uid}"
        assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts an API token it never uses"
        for container in _containers(pod):
            label = f"{where}/{container['name']}"
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in container.get("resources", {}).get(kind, {}), f"{label}: no {kind}.{resource}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, f"{label}: allowPrivilegeEscalation"
            assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: capabilities not dropped"
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), f"{label}: image {image} is not pinned"
            images.add(image)
    assert len(images) == 1, f"creditwatch pods run different images: {sorted(images)}"


def test_k8s_selectors_match_their_pods(manifests):
    deployments = _objects(manifests, "Deployment")
    templates = {name: doc["spec"]["template"]["metadata"]["labels"] for name, doc in deployments.items()}
    for name, doc in deployments.items():
        assert doc["spec"]["selector"]["matchLabels"].items() <= templates[name].items(), f"Deployment {name}"

    def matches(selector: dict[str, str]) -> list[str]:
        return [name for name, labels in templates.items() if selector.items() <= labels.items()]

    budgets = _objects(manifests, "PodDisruptionBudget")
    for name, pdb in budgets.items():
        assert len(matches(pdb["spec"]["selector"]["matchLabels"])) == 1, f"PDB {name} does not select one Deployment"
    assert matches(budgets["creditwatch-worker"]["spec"]["selector"]["matchLabels"]) == ["creditwatch-worker"]
    for name, service in _objects(manifests, "Service").items():
        targets = matches(service["spec"]["selector"])
        assert len(targets) == 1, f"Service {name} selects {targets}"
        pod = deployments[targets[0]]["spec"]["template"]["spec"]
        container_ports = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert not isinstance(target, str) or target in container_ports, f"Service {name}: no port named {target}"


def test_k8s_migrations_job_and_worker_thresholds(manifests):
    from detectors.config import load_thresholds

    job = _objects(manifests, "Job")["creditwatch-db-upgrade"]["spec"]["template"]["spec"]
    assert job["restartPolicy"] == "Never" and job["containers"][0]["args"] == ["db", "upgrade"]
    worker = _objects(manifests, "Deployment")["creditwatch-worker"]["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["args"][0] == "worker"
    config = container["args"][container["args"].index("--config") + 1]
    volumes = {v["name"]: v for v in worker["volumes"]}
    mount = next(m for m in container["volumeMounts"] if config.startswith(m["mountPath"].rstrip("/") + "/"))
    configmap = volumes[mount["name"]]["configMap"]["name"]
    generator = next(g for g in _kustomization()["configMapGenerator"] if g["name"] == configmap)
    filename = config.rsplit("/", 1)[1]
    files = {entry.split("=")[0].rsplit("/", 1)[-1]: entry.split("=")[-1] for entry in generator["files"]}
    assert filename in files, f"the worker reads {config}, which ConfigMap {configmap} does not hold"
    load_thresholds(K8S / files[filename])


# --- secrets -------------------------------------------------------------------

_TOKEN_PATTERNS = {
    "Slack token": re.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    "Slack app token": re.compile(r"\bxapp-\d-[A-Za-z0-9-]{10,}"),
    "Slack webhook": re.compile(r"hooks\.slack\.com/services/T[A-Z0-9]+/"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}"),
    "password in a URL": re.compile(r"://[^/\s:@]+:(?!REPLACE_ME@|change-me@|\$\{)[^/\s@]+@"),
}


def _secret_findings(text: str) -> list[str]:
    return [label for label, pattern in _TOKEN_PATTERNS.items() if pattern.search(text)]


def test_the_secret_scanner_finds_what_it_looks_for():
    samples = ["xox" + "b-" + "1234567890-abcdefghijkl", "AKIA" + "ABCDEFGHIJKLMNOP",
               "postgresql://u:" + "s3cret" + "@db:5432/x", "-----BEGIN " + "RSA PRIVATE KEY-----"]
    for sample in samples:
        assert _secret_findings(f"value: {sample}\n"), sample
    assert not _secret_findings("postgresql://creditwatch:${POSTGRES_PASSWORD:?x}@postgres:5432/creditwatch")
    assert not _secret_findings("postgresql://creditwatch:REPLACE_ME@db.example.internal:5432/creditwatch")


def test_no_secret_in_any_committed_deploy_file():
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or _ignored_by_deploy_gitignore(path):
            continue
        findings = _secret_findings(path.read_text(errors="replace"))
        assert not findings, f"{path.relative_to(REPO)} looks like it holds a secret: {findings}"


def test_secret_template_and_env_example_hold_placeholders_only(manifests, example_env):
    secret = _objects(manifests, "Secret")["creditwatch-secrets"]
    assert not secret.get("data"), "the Secret template must use stringData placeholders, not base64 data"
    for key, value in secret["stringData"].items():
        assert PLACEHOLDER.search(value), f"secret.template.yaml: {key} is not a REPLACE_ME placeholder"
    for key in SECRET_SETTINGS & set(example_env):
        value = example_env[key]
        assert value == "" or PLACEHOLDER.fullmatch(value), f"creditwatch.env.example: {key} is not empty or a placeholder"


def test_secrets_stay_out_of_configmaps_and_compose_literals(manifests):
    for name, configmap in _objects(manifests, "ConfigMap").items():
        leaked = sorted(set(configmap.get("data", {})) & SECRET_SETTINGS)
        assert not leaked, f"ConfigMap {name} holds secrets {leaked}: they belong in the Secret"
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, service in raw["services"].items():
        for key, value in _environment(service).items():
            if key in SECRET_SETTINGS:
                assert "${" in value, f"compose: {name} sets {key} literally instead of from the env file"


# --- the validators ------------------------------------------------------------


def _kubernetes_validate():
    try:
        import kubernetes_validate.utils
        import kubernetes_validate.version
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed.\n{CI_INSTALL_HINT}", pytrace=False)
    return kubernetes_validate


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_k8s_manifests_pass_kubernetes_validate_offline(manifests, version, monkeypatch):
    kv = _kubernetes_validate()

    def no_network(*args, **kwargs):
        raise AssertionError("kubernetes-validate tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert version in kv.utils.all_versions(), \
        f"kubernetes-validate {kv.version.__version__} bundles no schemas for Kubernetes {version}"
    for path, doc in manifests:
        where = f"{path.relative_to(REPO)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            validated = kv.utils.validate(doc, version, strict=True)
        except kv.utils.SchemaNotFoundError as problem:
            pytest.fail(f"{where}: {problem.message}", pytrace=False)
        except kv.utils.ValidationError as problem:
            path_text = ".".join(str(part) for part in problem.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {path_text}: {problem.message}", pytrace=False)
        assert validated == version.rsplit(".", 1)[0], f"{where} was checked against {validated}, not {version}"


def test_kubernetes_validate_rejects_real_mistakes(manifests):
    kv = _kubernetes_validate()
    worker = copy.deepcopy(_objects(manifests, "Deployment")["creditwatch-worker"])
    container = worker["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")  # a typo: strict mode rejects unknown fields
    with pytest.raises(kv.utils.ValidationError):
        kv.utils.validate(worker, KUBERNETES_VERSIONS[0], strict=True)
    worker = copy.deepcopy(_objects(manifests, "Deployment")["creditwatch-worker"])
    worker["spec"]["replicas"] = "four"
    with pytest.raises(kv.utils.ValidationError):
        kv.utils.validate(worker, KUBERNETES_VERSIONS[0], strict=True)


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    if not commands:
        pytest.fail(f"neither docker-compose nor the docker compose plugin is installed.\n{CI_INSTALL_HINT}",
                    pytrace=False)
    return commands


def _compose_env() -> dict[str, str]:
    """The environment minus whatever could feed compose's interpolation from outside the test."""
    referenced = set(_compose_variables())
    return {key: value for key, value in os.environ.items()
            if key not in referenced and not key.startswith(("COMPOSE_", "DOCKER_"))}


def _compose_config(command: list[str], compose_file: Path, env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, "--project-directory", str(compose_file.parent), "-f", str(compose_file),
         "--env-file", str(env_file), "config", "-q"],
        capture_output=True, text=True, env=_compose_env(), timeout=120,
    )


def test_compose_file_passes_compose_config():
    for command in _compose_commands():
        result = _compose_config(command, COMPOSE_FILE, ENV_EXAMPLE)
        assert result.returncode == 0, f"{' '.join(command)} config -q failed:\n{result.stderr}"


def test_compose_config_rejects_real_mistakes(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    broken = tmp_path / "deploy"
    broken.mkdir()
    (broken / "compose.yaml").write_text(
        COMPOSE_FILE.read_text().replace("condition: service_completed_successfully", "condition: service_done", 1))
    for command in _compose_commands():
        result = _compose_config(command, COMPOSE_FILE, empty)
        assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, \
            f"{' '.join(command)}: compose starts without a database password:\n{result.stderr}"
        result = _compose_config(command, broken / "compose.yaml", ENV_EXAMPLE)
        assert result.returncode != 0, f"{' '.join(command)} config accepts an unknown depends_on condition"
