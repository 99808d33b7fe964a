"""Offline checks of the container image recipe and the Kubernetes manifests (issue 7).

No cluster, kubectl, kustomize or docker runs here, so each overlay under k8s/overlays is rendered
by tools/render_k8s.py and then: validated strictly (unknown fields rejected) against the JSON
schemas of every Kubernetes version in K8S_VERSIONS with kubernetes-validate; linted with
yamllint; checked across objects (selectors, ports, serviceName, peers == replicas, probes,
securityContext); and each pod's environment, as the kubelet would build it, is loaded by the
broker's own config loader. The Dockerfile is linted with hadolint. A missing tool FAILS the test
with its name: these checks never pass by not running.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rillet.node import config as broker_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The Kubernetes versions we support: 1.29 (the oldest still common in managed offerings; the
# pod-index label RILLET_NODE_ID needs is there since 1.28) and 1.31, 1.34 (recent ones).
K8S_VERSIONS = ("1.29", "1.31", "1.34")
EXPECTED_REPLICAS = {"dev": 3, "production": 5}
GRPC_PORT = 9091
METRICS_PORT = 9100
HEALTH_PORT = 9092
LABELS = {"app.kubernetes.io/name": "rillet", "app.kubernetes.io/component": "broker"}


def _load_renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / "tools" / "render_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_k8s = _load_renderer()


def _tool(name: str) -> str:
    """Path of a command-line tool from the dev dependencies; fails (never skips) without it."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the dev dependencies "
                    f"(pip install -e '.[dev]'); the check it runs cannot be skipped")
    return found


def _kubernetes_validate() -> ModuleType:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: it comes with the dev dependencies "
                    "(pip install -e '.[dev]'); the schema check cannot be skipped")
    return kubernetes_validate


def _rendered(overlay: str) -> list[dict[str, Any]]:
    return render_k8s.render(K8S / "overlays" / overlay)


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _configmap_data(objects: list[dict[str, Any]], sts: dict[str, Any]) -> dict[str, str]:
    (ref,) = [e["configMapRef"]["name"] for e in _container(sts)["envFrom"]]
    return _one(objects, "ConfigMap", ref)["data"]


def _pod_env(objects: list[dict[str, Any]], ordinal: int) -> dict[str, str]:
    """The environment the kubelet gives pod rillet-<ordinal>: envFrom, then env with the
    downward-API fields filled in and $(VAR) references expanded, in order."""
    sts = _one(objects, "StatefulSet")
    name = f"{sts['metadata']['name']}-{ordinal}"
    fields = {"metadata.name": name,
              "metadata.labels['apps.kubernetes.io/pod-index']": str(ordinal)}
    env = dict(_configmap_data(objects, sts))
    for var in _container(sts)["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_every_overlay_is_checked() -> None:
    assert OVERLAYS == sorted(EXPECTED_REPLICAS), "a new overlay needs its replica count here"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_cluster(overlay: str) -> None:
    kinds = sorted(o["kind"] for o in _rendered(overlay))
    assert kinds == ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_strictly(overlay: str, version: str) -> None:
    kv = _kubernetes_validate()
    for obj in _rendered(overlay):
        try:
            used = kv.validate(obj, version, strict=True)
        except kv.utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} is invalid for "
                        f"Kubernetes {version}: {path}: {exc.message}")
        # A silent fallback to an older schema (or none) would not be a check of `version`.
        assert used == version, f"validated against {used}, not {version}"


def test_yamllint_k8s() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 8, files
    result = subprocess.run(
        [_tool("yamllint"), "--strict", "-f", "parsable", "-c", str(K8S / ".yamllint"),
         *map(str, files)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile() -> None:
    result = subprocess.run([_tool("hadolint"), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    """What hadolint does not check: two python:3.11-slim stages, the final one installing only
    wheels from the first, a numeric non-root user, exec-form `rillet serve`."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    final = text.split("\nFROM ")[-1]
    assert "--no-index --find-links /wheels" in final
    assert not re.search(r"apt-get|gcc|build-essential", final)
    (user,) = re.findall(r"^USER (\S+)", final, re.M)
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert re.search(r'^ENTRYPOINT \["rillet", "serve"\]$', final, re.M)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, ".dockerignore should exclude everything by default"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cross_object_consistency(overlay: str) -> None:
    objects = _rendered(overlay)
    sts = _one(objects, "StatefulSet", "rillet")
    headless = _one(objects, "Service", "rillet-headless")
    client = _one(objects, "Service", "rillet")
    pdb = _one(objects, "PodDisruptionBudget", "rillet")
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = _container(sts)

    assert sts["spec"]["serviceName"] == "rillet-headless"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["selector"]["matchLabels"] == LABELS
    for selector in (headless["spec"]["selector"], client["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"],
                     pod["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]):
        assert selector.items() <= labels.items(), f"{selector} does not select {labels}"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert pdb["spec"]["maxUnavailable"] == 1

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT, "health": HEALTH_PORT}
    assert _configmap_data(objects, sts)["RILLET_METRICS_LISTEN"].endswith(f":{METRICS_PORT}")
    assert _configmap_data(objects, sts)["RILLET_HEALTH_LISTEN"].endswith(f":{HEALTH_PORT}")
    for svc in (headless, client):
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(GRPC_PORT, "grpc")]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": HEALTH_PORT}, probe

    pod_sc, sc = pod["spec"]["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
    assert mounts["/var/lib/rillet"] in claims
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30
    assert pod["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_peers_name_exactly_the_replicas(overlay: str) -> None:
    objects = _rendered(overlay)
    sts = _one(objects, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    assert replicas == EXPECTED_REPLICAS[overlay]
    peers = broker_config.parse_peers(_configmap_data(objects, sts)["RILLET_PEERS"])
    service = sts["spec"]["serviceName"]
    assert peers == {i: f"rillet-{i}.{service}:{GRPC_PORT}" for i in range(replicas)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_environment_is_a_valid_broker_config(overlay: str) -> None:
    """The broker's own loader accepts what each pod gets, and every pod is a distinct member."""
    objects = _rendered(overlay)
    data = _configmap_data(objects, _one(objects, "StatefulSet"))
    unknown = {k for k in data if k.removeprefix("RILLET_").lower()
               not in {f for f in broker_config.BrokerConfig.__dataclass_fields__}}
    assert not unknown, f"ConfigMap keys the broker does not read: {unknown}"
    replicas = EXPECTED_REPLICAS[overlay]
    for ordinal in range(replicas):
        cfg = broker_config.load(env=_pod_env(objects, ordinal))
        assert cfg.node_id == ordinal
        assert cfg.port == GRPC_PORT
        assert cfg.address == cfg.peer_map[ordinal] == f"rillet-{ordinal}.rillet-headless:9091"
        assert cfg.data_dir.is_relative_to("/var/lib/rillet")


def test_configmap_suffix_follows_content(tmp_path: Path) -> None:
    """Changing a literal renames the ConfigMap and the StatefulSet's reference, so pods roll."""
    base = render_k8s.render(K8S / "overlays" / "dev")
    overlay = tmp_path / "changed"
    overlay.mkdir()
    text = (K8S / "overlays" / "dev" / "kustomization.yaml").read_text()
    text = text.replace("../../base", str(K8S / "base")).replace(
        "path: replicas.yaml", f"path: {K8S / 'overlays' / 'dev' / 'replicas.yaml'}")
    (overlay / "kustomization.yaml").write_text(text.replace("RILLET_PEERS=", "RILLET_PEERS= "))
    changed = render_k8s.render(overlay)
    old = _one(base, "ConfigMap")["metadata"]["name"]
    new = _one(changed, "ConfigMap")["metadata"]["name"]
    assert old != new and old.startswith("rillet-config-") and new.startswith("rillet-config-")
    assert _container(_one(changed, "StatefulSet"))["envFrom"][0]["configMapRef"]["name"] == new


def test_renderer_refuses_unsupported_features(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(render_k8s.RenderError, match="namePrefix"):
        render_k8s.render(tmp_path)
