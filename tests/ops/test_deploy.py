"""deploy/, checked offline: Kubernetes manifests against the Kubernetes schemas that
kubernetes-validate bundles, KEDA's objects against deploy/schemas (written from KEDA's
documented fields, since its CRDs are not bundled), compose.yaml against the compose
specification's schema that check-jsonschema ships; and what chordline needs of each."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.contract import ALL_QUEUES
from shared.tools.stack.procfile import read_procfile

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES_VERSION = "1.30"
SECRET_VARS = {"DATABASE_URL", "REDIS_URL", "FLOWER_BASIC_AUTH", "OPENAI_API_KEY", "COHERE_API_KEY"}


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def procfile_queues() -> dict[str, str]:
    """queue → the Procfile entry whose worker consumes it."""
    found = {}
    for name, command in read_procfile().items():
        match = re.search(r" worker .*-Q\s+(\S+)", command)
        for queue in match.group(1).split(",") if match else []:
            found[queue] = name
    return found


def keda_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (DEPLOY / "schemas" / "keda-v1alpha1.schema.json").read_text()
    )
    return schema


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def test_kubernetes_objects_match_the_kubernetes_schemas() -> None:
    checked = 0
    for doc in manifests():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_the_validator_refuses_a_broken_manifest() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["replicas"] = 2  # not a field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_keda_objects_match_keda_s_documented_fields() -> None:
    validator = jsonschema.Draft202012Validator(keda_schema())
    keda = [d for d in manifests() if d["apiVersion"].startswith("keda.sh/")]
    assert keda
    for doc in keda:
        validator.validate(doc)
    broken = copy.deepcopy(of_kind("ScaledObject")[0])
    broken["spec"]["triggers"][0]["metadata"]["listLength"] = 20  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)
    broken = copy.deepcopy(of_kind("ScaledObject")[0])
    broken["spec"]["maxReplicas"] = 3  # a typo of maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


def test_a_deployment_and_a_scaled_object_per_queue_scaling_on_its_redis_list() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind("ScaledObject")}
    assert set(procfile_queues()) <= set(ALL_QUEUES)
    for queue in ALL_QUEUES:
        name = f"chordline-{queue}"
        assert name in deployments, f"no Deployment for queue {queue}"
        (container,) = containers(deployments[name])
        assert container["args"] == [queue]
        trigger = scaled[name]["spec"]["triggers"][0]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue
        assert trigger["authenticationRef"]["name"] in {
            d["metadata"]["name"] for d in of_kind("TriggerAuthentication")
        }
    beat = deployments["chordline-beat"]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert "chordline-beat" not in scaled


def test_a_migration_job_runs_the_release_entry() -> None:
    (job,) = of_kind("Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["release"]
    assert read_procfile()["release"] == "chordline migrate"


def test_secrets_are_referenced_never_written() -> None:
    assert not of_kind("Secret")
    for doc in manifests():
        if "template" not in doc.get("spec", {}):
            continue
        for container in containers(doc):
            for var in container.get("env", []):
                if var["name"] in SECRET_VARS:
                    assert "value" not in var, f"{var['name']} written into {doc['metadata']}"
                    assert var["valueFrom"]["secretKeyRef"]["name"] == "chordline-secrets"
    config = of_kind("ConfigMap")[0]["data"]
    assert not SECRET_VARS & set(config)


def test_flower_runs_with_auth_and_only_its_gate_is_reachable() -> None:
    (flower,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "chordline-flower"]
    by_name = {c["name"]: c for c in containers(flower)}
    assert by_name["flower"]["args"] == ["flower"] and "ports" not in by_name["flower"]
    assert "--address=127.0.0.1" in read_procfile()["flower"]
    for container in by_name.values():
        names = {v["name"] for v in container["env"]}
        assert "FLOWER_BASIC_AUTH" in names
    ports = {p["containerPort"] for p in by_name["flower-gate"]["ports"]}
    assert ports == {5555, 5556}
    policies = {d["metadata"]["name"]: d for d in of_kind("NetworkPolicy")}
    metrics_rule = policies["chordline-flower"]["spec"]["ingress"][0]
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 5556}]
    assert metrics_rule["from"][0]["namespaceSelector"]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_compose_matches_the_compose_specification(tmp_path: Path) -> None:
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = compose()
    broken["services"]["agents"]["restart_policy"] = "always"  # not a compose field
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert check_compose(path).returncode != 0


def test_compose_has_what_a_deployment_needs() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    redis_args = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_args
    assert "--maxmemory-policy noeviction" in redis_args
    # its password reaches it through a file, never its command line or a healthcheck's
    assert "--requirepass" not in redis_args and "redis-cli -a" not in str(services["redis"])
    assert services["redis"]["user"] == "redis"
    for queue in ALL_QUEUES:
        assert services[queue]["command"] == [queue], queue
        assert services[queue]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["release"]
    assert services["migrate"]["restart"] == "no"
    assert re.fullmatch(
        r"\$\{FLOWER_BASIC_AUTH:\?.+\}", services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    )
    assert services["flower-gate"]["network_mode"] == "service:flower"
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    runnable = set(read_procfile()) | set(ALL_QUEUES)  # a queue's entry is named after it
    for name, service in services.items():
        command = service.get("command")
        if service.get("image", "").startswith("${CHORDLINE_IMAGE") and command:
            assert command[0] in runnable, f"{name} runs {command}, not a Procfile entry"
    for queue, entry in procfile_queues().items():
        assert services[entry]["command"] == [entry], f"no service runs queue {queue}"


def test_the_image_runs_any_procfile_entry() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["chordline", "proc"]' in dockerfile
    assert "USER chordline" in dockerfile
    for needed in ("Procfile", "migrations", "shared", "workers"):
        assert re.search(rf"^COPY {needed} ", dockerfile, re.MULTILINE), needed


def test_the_http_api_has_a_deployment_a_service_and_an_autoscaler() -> None:
    (web,) = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "chordline-web"]
    (container,) = containers(web)
    assert container["args"] == ["web"] and read_procfile()["web"] == "chordline web"
    env = {v["name"]: v for v in container["env"]}
    assert env["CHORDLINE_WEB_HOST"]["value"] == "0.0.0.0"
    port = int(env["CHORDLINE_WEB_PORT"]["value"])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    labels = web["spec"]["template"]["metadata"]["labels"]

    (service,) = [d for d in of_kind("Service") if d["metadata"]["name"] == "chordline-web"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    (hpa,) = of_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "chordline-web",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "chordline-web" not in {
        d["spec"]["scaleTargetRef"]["name"] for d in of_kind("ScaledObject")
    }

    web_service = compose()["services"]["web"]
    assert web_service["command"] == ["web"]
    assert web_service["environment"]["CHORDLINE_WEB_HOST"] == "0.0.0.0"
    assert web_service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "/readyz" in " ".join(web_service["healthcheck"]["test"])
    assert "8000" in (DEPLOY / "Dockerfile").read_text().split("EXPOSE", 1)[1].splitlines()[0]
