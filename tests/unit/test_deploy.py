"""deploy/ checked offline: every Kubernetes object against the schemas, and what it promises.

No cluster and no container runtime run here, so nothing is applied or started: each
object is validated (strictly: unknown fields fail) against the Kubernetes OpenAPI schemas
that ship in ``kubernetes-validate``, for the oldest and the newest release we support;
the kernel-pod template Enterprise Gateway renders is rendered the same way and validated
too; and the properties the deployment stands on (probes, no token and no egress for
kernels, non-root, the shared volume, secrets from Secrets) are asserted one by one.
``deploy/compose.yaml`` is parsed and checked for its services and their settings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import kubernetes_validate
import pytest
import yaml

from datasources.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

# Settings the gateway sandbox mode (issue 13, parts 1 and 2) adds in parallel work; the
# manifests already configure them. Every other DATASOURCES_* name must be a real setting.
PENDING_SETTINGS: set[str] = set()
# Never a literal value in a manifest: from the Secret (Kubernetes) or the .env (compose).
SECRET_SETTINGS = {
    "DATASOURCES_DATABASE_URL",
    "DATASOURCES_SECRET_KEYS",
    "DATASOURCES_REDIS_URL",
    "DATASOURCES_GATEWAY_TOKEN",
    "DATASOURCES_LLM_API_KEY",
}


def kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((BASE / "kustomization.yaml").read_text()))


def objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            if doc is not None:
                yield name, doc


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in objects() if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in by_kind(kind) if doc["metadata"]["name"] == name]
    return found


def configmap_data(name: str) -> dict[str, str]:
    return dict(named("ConfigMap", name)["data"])


def render_kernel_pod(**keywords: Any) -> dict[str, Any]:
    """The kernel pod as Enterprise Gateway's launch_kubernetes.py renders it."""
    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    template = environment.from_string(
        configmap_data("datasources-kernelspec")["kernel-pod.yaml.j2"]
    )
    return dict(yaml.safe_load(template.render(**keywords)))


KERNEL_KEYWORDS = {
    "kernel_pod_name": "alice-0f3c",
    "kernel_namespace": "datasources",
    "kernel_id": "0f3c2b1a-1111-2222-3333-444455556666",
    "kernel_image": "registry.example.com/datasources/kernel-py:0.1.0",
    "kernel_working_dir": "/workspaces/0123456789abcdef01234567",
    # What the service asks for (KERNEL_UID/KERNEL_GID, yaml-loaded by the launcher).
    "kernel_uid": 2000000000,
    "kernel_gid": 2000000000,
}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for deployment in by_kind("Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
    yield "kernel", render_kernel_pod(**KERNEL_KEYWORDS)["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def setting_known(variable: str) -> bool:
    name = variable.removeprefix("DATASOURCES_")
    head, _, tail = name.partition("__")
    if name in PENDING_SETTINGS:
        return True
    field = Settings.model_fields.get(head.lower())
    if field is None:
        return False
    if not tail:
        return True
    nested = field.annotation
    return isinstance(nested, type) and tail.lower() in getattr(nested, "model_fields", {})


# -- the base as a whole --------------------------------------------------------------------


def test_every_resource_exists_and_every_file_is_a_resource() -> None:
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (BASE / name).is_file(), name
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk == set(listed), "a manifest in deploy/base is not in kustomization.yaml"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for name, doc in objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        checked += 1
    kernel = render_kernel_pod(**KERNEL_KEYWORDS)
    kubernetes_validate.validate(kernel, version, strict=True)
    assert checked >= 15


def test_a_broken_object_is_caught_by_the_validation() -> None:
    """The check above can fail: a misspelt field and a wrong type are both refused."""
    deployment = named("Deployment", "datasources-api")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_kubectl_renders_the_base_when_it_is_installed() -> None:
    """An extra check on machines that have kubectl (its bundled kustomize, offline)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return  # the resource list and the schemas are checked above without it
    rendered = subprocess.run(
        [kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(list(objects()))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "datasources"


# -- the API -----------------------------------------------------------------------------------


def test_the_api_is_probed_scaled_and_served() -> None:
    deployment = named("Deployment", "datasources-api")
    pod = deployment["spec"]["template"]
    (api,) = pod["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # A store outage makes every replica unready; it must not restart them all.
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    hpa = named("HorizontalPodAutoscaler", "datasources-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "datasources-api",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]

    service = named("Service", "datasources-api")
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port = service["spec"]["ports"][0]["targetPort"]
    assert port in {p["name"] for p in api["ports"]}


def test_secrets_come_from_the_secret_and_settings_exist() -> None:
    (api,) = named("Deployment", "datasources-api")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in api["env"]}
    for variable in SECRET_SETTINGS:
        assert "value" not in env[variable], variable
        assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == "datasources"
    plain = configmap_data("datasources-api")
    assert not SECRET_SETTINGS & set(plain), "a secret setting in the ConfigMap"
    for variable in [*plain, *env]:
        assert setting_known(variable), f"{variable} is not a setting"
    assert plain["DATASOURCES_SANDBOX"] == "gateway"
    assert plain["DATASOURCES_GATEWAY_URL"] == "http://enterprise-gateway:8888"
    # Enterprise Gateway and the API share one token, from the same Secret key.
    gateway = named("Deployment", "enterprise-gateway")["spec"]["template"]["spec"]
    eg_env = {e["name"]: e for e in gateway["containers"][0]["env"]}
    assert eg_env["EG_AUTH_TOKEN"]["valueFrom"] == env["DATASOURCES_GATEWAY_TOKEN"]["valueFrom"]
    assert "EG_INHERITED_ENVS" not in eg_env and "EG_ENV_PROCESS_WHITELIST" not in eg_env


def test_no_manifest_holds_a_secret_value() -> None:
    for name, doc in objects():
        assert doc["kind"] != "Secret", f"{name}: create the Secret outside the base"
        text = (BASE / name).read_text()
        assert "BEGIN PRIVATE KEY" not in text and "password=" not in text.lower()


# -- pods: least privilege ---------------------------------------------------------------------


def test_every_pod_runs_as_non_root_with_a_read_only_root_and_no_privileges() -> None:
    for name, spec in pod_specs():
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] != 0, name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in containers(spec):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_only_enterprise_gateway_gets_a_service_account_token() -> None:
    for name, spec in pod_specs():
        if name == "enterprise-gateway":
            continue
        assert spec["automountServiceAccountToken"] is False, name
    for account in by_kind("ServiceAccount"):
        expected = account["metadata"]["name"] == "enterprise-gateway"
        assert account["automountServiceAccountToken"] is expected
    (role,) = by_kind("Role")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs <= {"get", "list", "watch", "create", "delete"}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "secrets" not in resources


# -- kernels -----------------------------------------------------------------------------------


def test_kernel_pods_have_no_token_no_secrets_and_the_chat_folder_as_working_dir() -> None:
    pod = render_kernel_pod(**KERNEL_KEYWORDS)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "datasources-kernel"
    assert spec["enableServiceLinks"] is False
    (kernel,) = spec["containers"]
    assert kernel["image"] == KERNEL_KEYWORDS["kernel_image"]
    assert kernel["workingDir"] == KERNEL_KEYWORDS["kernel_working_dir"]
    assert "envFrom" not in kernel
    assert all("valueFrom" not in e for e in kernel["env"])
    assert set(kernel["resources"]["limits"]) >= {"cpu", "memory"}
    without_dir = render_kernel_pod(**{**KERNEL_KEYWORDS, "kernel_working_dir": None})
    assert "workingDir" not in without_dir["spec"]["containers"][0]
    kubernetes_validate.validate(without_dir, K8S_VERSIONS[-1], strict=True)


def workspace_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The mounts of the workspaces claim in a pod (empty when it has none)."""
    (claim,) = by_kind("PersistentVolumeClaim")
    volumes = {
        v["name"]
        for v in spec.get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    }
    return [m for c in containers(spec) for m in c.get("volumeMounts", []) if m["name"] in volumes]


def test_kernels_mount_only_their_own_chat_folder_where_the_api_sees_it() -> None:
    """A kernel pod that mounted the whole claim could read and write every chat of every
    owner, and plant ``.kernels/<chat>`` records that make another chat's next turn run in
    its kernel: it mounts its chat's folder only (``subPath``), at the API's path."""
    (claim,) = by_kind("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    workspaces = configmap_data("datasources-api")["DATASOURCES_WORKSPACES_DIR"]
    api = named("Deployment", "datasources-api")["spec"]["template"]["spec"]
    (api_mount,) = workspace_mounts(api)
    assert api_mount["mountPath"] == workspaces and "subPath" not in api_mount
    chat = str(KERNEL_KEYWORDS["kernel_working_dir"])
    (mount,) = workspace_mounts(render_kernel_pod(**KERNEL_KEYWORDS)["spec"])
    assert mount["mountPath"] == chat
    assert mount.get("subPath") == chat.removeprefix(f"{workspaces}/")
    assert "subPathExpr" not in mount
    # No working folder named: no workspace at all (never the whole claim).
    bare = render_kernel_pod(**{**KERNEL_KEYWORDS, "kernel_working_dir": None})
    assert workspace_mounts(bare["spec"]) == []
    kubernetes_validate.validate(bare, K8S_VERSIONS[-1], strict=True)


def test_kernels_run_as_the_identity_the_service_asks_for_never_the_apis() -> None:
    """The API owns ``data/``, the manifests, ``displays/`` and ``.kernels/``; a kernel with
    its uid or one of its groups could rewrite them (and plant links the API follows). The
    kernel runs as KERNEL_UID/KERNEL_GID from the service, in no group of the API's."""
    api = named("Deployment", "datasources-api")["spec"]["template"]["spec"]["securityContext"]
    api_ids = {api["runAsUser"]}
    api_groups = {api["runAsGroup"], api.get("fsGroup"), *api.get("supplementalGroups", [])}
    pod = render_kernel_pod(**{**KERNEL_KEYWORDS, "kernel_uid": 2345, "kernel_gid": 2346})
    kernel = pod["spec"]["securityContext"]
    assert (kernel["runAsUser"], kernel["runAsGroup"]) == (2345, 2346)
    assert kernel["runAsNonRoot"] is True
    groups = {kernel["runAsGroup"], kernel.get("fsGroup"), *kernel.get("supplementalGroups", [])}
    assert kernel["runAsUser"] not in api_ids
    assert not (groups - {None}) & (api_groups - {None}), "a kernel shares a group of the API's"
    # A start request without an identity renders no pod at all (the launcher fails).
    unset = {k: v for k, v in KERNEL_KEYWORDS.items() if k not in ("kernel_uid", "kernel_gid")}
    with pytest.raises(jinja2.UndefinedError):
        render_kernel_pod(**unset)


def test_kernel_egress_is_denied_but_for_the_gateway_response_port() -> None:
    policy = named("NetworkPolicy", "kernels-deny-egress")
    kernel = render_kernel_pod(**KERNEL_KEYWORDS)
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= kernel["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (egress,) = policy["spec"]["egress"]
    (target,) = egress["to"]
    assert set(target) == {"podSelector"}  # no ipBlock, no other namespace, no DNS
    gateway_labels = named("Deployment", "enterprise-gateway")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert target["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert egress["ports"] == [{"protocol": "TCP", "port": 8877}]
    # Only the gateway may open connections to a kernel.
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["from"] == [target]
    # The gateway selector must not also select kernels (they share app=enterprise-gateway).
    assert not target["podSelector"]["matchLabels"].items() <= kernel["metadata"]["labels"].items()


def test_enterprise_gateway_runs_only_our_kernel_with_working_dirs() -> None:
    gateway = named("Deployment", "enterprise-gateway")
    assert gateway["spec"]["replicas"] == 1
    env = {
        e["name"]: e.get("value")
        for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert json.loads(env["EG_ALLOWED_KERNELS"]) == ["datasources_python"]
    assert env["EG_SHARED_NAMESPACE"] == "True"
    assert env["EG_MIRROR_WORKING_DIRS"] == "True"
    spec = json.loads(configmap_data("datasources-kernelspec")["kernel.json"])
    proxy = spec["metadata"]["process_proxy"]
    assert proxy["class_name"].endswith("KubernetesProcessProxy")
    assert proxy["config"]["image_name"].startswith("registry.example.com/")  # a placeholder
    assert "datasources_python/scripts/launch_kubernetes.py" in " ".join(spec["argv"])


# -- compose ------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_runs_two_replicas_a_gateway_postgresql_and_redis() -> None:
    services = compose()["services"]
    assert set(services) == {"api-1", "api-2", "proxy", "enterprise-gateway", "postgres", "redis"}
    proxy = " ".join(services["proxy"]["command"])
    assert "api-1:8000" in proxy and "api-2:8000" in proxy
    assert services["api-1"]["environment"] == services["api-2"]["environment"]
    env = services["api-1"]["environment"]
    assert env["DATASOURCES_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["DATASOURCES_DATABASE_URL"]
    assert env["DATASOURCES_REDIS_URL"] == "redis://redis:6379/0"
    assert env["DATASOURCES_SANDBOX"] == "gateway"
    assert env["DATASOURCES_GATEWAY_URL"] == "http://enterprise-gateway:8888"
    for variable in env:
        assert setting_known(variable), f"{variable} is not a setting"
    for variable in ("DATASOURCES_SECRET_KEYS", "DATASOURCES_GATEWAY_TOKEN"):
        assert env[variable].startswith("${") and ":?" in env[variable], variable
    assert "${POSTGRES_PASSWORD:?" in env["DATASOURCES_DATABASE_URL"]
    gateway = services["enterprise-gateway"]["environment"]
    assert (
        gateway["EG_AUTH_TOKEN"].split(":?")[0] == env["DATASOURCES_GATEWAY_TOKEN"].split(":?")[0]
    )


def test_compose_shares_the_workspace_volume_and_keeps_kernels_off_the_network() -> None:
    doc = compose()
    services, networks = doc["services"], doc["networks"]
    workspaces = services["api-1"]["environment"]["DATASOURCES_WORKSPACES_DIR"]
    for name in ("api-1", "api-2", "enterprise-gateway"):
        assert f"workspaces:{workspaces}" in services[name]["volumes"], name
    for name, service in services.items():
        for network in service.get("networks", []):
            assert network in networks, (name, network)
        depends = service.get("depends_on") or {}
        if isinstance(depends, dict):
            for dependency, condition in depends.items():
                assert dependency in services, (name, dependency)
                if condition["condition"] == "service_healthy":
                    assert "healthcheck" in services[dependency], dependency
        else:
            assert set(depends) <= set(services), name
    # Kernels (processes in the gateway's container) reach nothing outside: internal only.
    for name in ("enterprise-gateway", "postgres", "redis"):
        assert all(networks[n].get("internal") for n in services[name]["networks"]), name
    assert services["proxy"]["ports"] == ["127.0.0.1:8000:8000"]
    assert services["api-1"]["read_only"] is True and services["api-1"]["cap_drop"] == ["ALL"]
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "deploy/.env" in ignored
