"""deploy/kubernetes: every manifest validates (kubernetes-validate, strict, against a pinned
Kubernetes version), the pieces fit together (labels, ports, config path, user, grace
period), and the probes point at endpoints the running image serves."""

from __future__ import annotations

import re
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pushwire.config import parse
from pushwire.server import SHUTDOWN_GRACE
from tests.conftest import ROOT
from tests.deploy import podman as pm

K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"  # what the manifests must be valid for


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def server_container() -> dict[str, Any]:
    pod = one("Deployment", "pushwire")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "pushwire")


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


@pytest.mark.parametrize("path_doc", documents(), ids=lambda p: f"{p[0].name}:{p[1]['kind']}")
def test_manifest_is_valid_kubernetes(path_doc):
    _, doc = path_doc
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_pieces_fit_together():
    kinds = {d["kind"] for _, d in documents()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"} <= kinds
    deploy = one("Deployment", "pushwire")
    spec, pod = deploy["spec"], deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        sel = one(kind, "pushwire")["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= labels.items(), kind
    c = server_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert one("Service", "pushwire")["spec"]["ports"][0]["targetPort"] in ports
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/up"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    # non-root (the image's user), read-only root filesystem, requests and limits
    sec, csec = pod["securityContext"], c["securityContext"]
    assert sec["runAsNonRoot"] is True and csec["readOnlyRootFilesystem"] is True
    user = re.search(r"^USER (\d+):(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user and str(sec["runAsUser"]) == user[1] and str(sec["runAsGroup"]) == user[2]
    assert csec["allowPrivilegeEscalation"] is False and csec["capabilities"]["drop"] == ["ALL"]
    for what in ("requests", "limits"):
        assert {"cpu", "memory"} <= c["resources"][what].keys()
    # the ConfigMap lands where the image reads its config, and is a valid Pushwire config
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    data = one("ConfigMap", "pushwire")["data"]
    assert dockerfile_env()["PUSHWIRE_CONFIG"] == f"{mount['mountPath']}/pushwire.toml"
    config = parse(tomllib.loads(data["pushwire.toml"]), "configmap.yaml")
    assert config.cluster.redis_url == "redis://pushwire-redis:6379/0"
    assert one("Service", "pushwire-redis")["spec"]["ports"][0]["port"] == 6379
    assert config.server.port in ports.values()
    # the app's credentials come from the Secret, as the variables the server reads
    secret = one("Secret", "pushwire-app")["stringData"]
    assert set(secret) == {"PUSHWIRE_APP_ID", "PUSHWIRE_APP_KEY", "PUSHWIRE_APP_SECRET"}
    assert c["envFrom"] == [{"secretRef": {"name": "pushwire-app"}}]
    # the grace period covers preStop, the drain, telling the clients, flushing webhooks
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = float(pre_stop[1]) + config.server.drain_delay + 2 * SHUTDOWN_GRACE
    assert pod["terminationGracePeriodSeconds"] >= needed + 5, needed
    pdb = one("PodDisruptionBudget", "pushwire")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) >= 2


@pytest.mark.deploy
@pytest.mark.slow
def test_probes_and_pre_stop_work_against_the_running_image(container, podman_env):
    c = server_container()
    for probe in ("readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        with urllib.request.urlopen(container.http + path, timeout=5) as r:
            assert r.status == 200, (probe, path)
    # the preStop command exists in the image (and runs as its user on a read-only root)
    cmd = [*c["lifecycle"]["preStop"]["exec"]["command"][:1], "0"]
    assert pm.podman(podman_env, "exec", container.name, *cmd).returncode == 0
