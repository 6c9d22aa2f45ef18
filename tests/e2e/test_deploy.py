"""
Deployment artefacts (deploy/): the AKS manifests, the production config in
the ConfigMap, the container image recipe and the systemd unit. Everything is
checked offline, in a few seconds, with what a Debian 12 machine has:

  - Rendering: deploy/kubernetes is rendered by a small renderer below that
    does what kustomize does for the features the kustomization uses
    (resources, namespace, labels/commonLabels, configMapGenerator from files,
    images); any other kustomization key fails the test rather than being
    silently ignored. Where `kubectl` is on PATH (the machine image ships
    kubectl with kustomize v5), its `kubectl kustomize` output must equal
    ours object for object, so the renderer cannot drift from real kustomize.
  - Manifests: cross-checked with each other, with the config and with the
    Dockerfile: selectors, ports, probes, Secrets, volumes, PDB/HPA targets,
    Pod Security "restricted", termination timing.
  - Config: the ConfigMap's cutover.yaml through `$CUTOVER_BIN --check`
    (endpoint host names kept: the loader validates them and resolves them
    only at run time; TLS paths pointed at a throw-away
    certificate). If the binary does not know `listen[].tls` yet, a copy
    without it is checked and a warning says so.
  - Dockerfile: stages, runtime packages (no -dev, and every shared library
    `ldd $CUTOVER_BIN` needs comes from one of them), user, ports, signals,
    COPY lines vs CMakeLists.txt.
  - systemd unit: directives, `systemd-analyze verify` and an offline
    `systemd-analyze security` score.

Needs PyYAML (Debian: python3-yaml), openssl; uses kubectl, systemd-analyze,
ldd/dpkg and shellcheck when present.

Run `python3 tests/e2e/test_deploy.py --render` to print what the renderer makes.
"""
import copy
import difflib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings

import pytest

try:
    import yaml
except ImportError as e:  # pragma: no cover - a clear message beats a bare ImportError
    raise ImportError("tests/e2e/test_deploy.py needs PyYAML: apt-get install python3-yaml (scripts/deps.sh)") from e

from conftest import CUTOVER_BIN, ROOT, SANITIZE

DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
DOCKERIGNORE = os.path.join(DEPLOY, "Dockerfile.dockerignore")
UNIT = os.path.join(DEPLOY, "systemd", "cutover.service")
SYSUSERS = os.path.join(DEPLOY, "systemd", "cutover.sysusers")
SCRIPT = os.path.join(ROOT, "scripts", "deploy-check.sh")

NAMESPACE = "cutover"
APP_LABELS = {"app.kubernetes.io/name": "cutover"}
# DESIGN.md "Operations": SIGTERM drains in-flight work up to this timeout.
DRAIN_TIMEOUT_S = 30
CONFIG_PATH = "/etc/cutover/cutover.yaml"  # Dockerfile CMD and Deployment args

KNOWN_KINDS = {
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"),
    ("apps/v1", "Deployment"), ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
CLUSTER_SCOPED = {"Namespace"}

# ------------------------------------------------------------------ kustomize, the subset we use


class RenderError(Exception):
    pass


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "labels", "commonLabels", "resources",
                      "configMapGenerator", "generatorOptions", "images"}

# kustomize's built-in field specs for labels that reach selectors
# (api/internal/konfig/builtinpluginconsts/commonlabels.go + metadata labels),
# for the kinds used here: (kind, path, create-if-missing).
_AFF = "spec/template/spec/affinity"
_PREF = "preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels"
_REQ = "requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels"
SELECTOR_FIELD_SPECS = [
    ("Service", "spec/selector", True),
    ("Deployment", "spec/selector/matchLabels", True),
    ("Deployment", "spec/template/metadata/labels", True),
    ("Deployment", f"{_AFF}/podAffinity/{_PREF}", False),
    ("Deployment", f"{_AFF}/podAffinity/{_REQ}", False),
    ("Deployment", f"{_AFF}/podAntiAffinity/{_PREF}", False),
    ("Deployment", f"{_AFF}/podAntiAffinity/{_REQ}", False),
    ("Deployment", "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels", False),
    ("PodDisruptionBudget", "spec/selector/matchLabels", False),
]
TEMPLATE_FIELD_SPECS = [("Deployment", "spec/template/metadata/labels", True)]


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _merge_at(node, parts, labels, create):
    """Merge labels into the map at path `parts` under node, descending into
    every element of lists on the way (kustomize field-spec semantics)."""
    if isinstance(node, list):
        for item in node:
            _merge_at(item, parts, labels, create)
        return
    if not isinstance(node, dict):
        return
    key = parts[0]
    if len(parts) == 1:
        if key not in node or node[key] is None:
            if not create:
                return
            node[key] = {}
        node[key].update(labels)
        return
    if key not in node:
        if not create:
            return
        node[key] = {}
    _merge_at(node[key], parts[1:], labels, create)


def _apply_labels(docs, labels, selectors, templates):
    for d in docs:
        _merge_at(d, ["metadata", "labels"], labels, True)
        specs = SELECTOR_FIELD_SPECS if selectors else (TEMPLATE_FIELD_SPECS if templates else [])
        for kind, path, create in specs:
            if d.get("kind") == kind:
                _merge_at(d, path.split("/"), labels, create)


def _apply_images(docs, images):
    for d in docs:
        if d.get("kind") != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            name = c["image"].split("@")[0]
            name = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
            for img in images:
                if img["name"] != name:
                    continue
                new = img.get("newName", name)
                if "digest" in img:
                    c["image"] = f"{new}@{img['digest']}"
                elif "newTag" in img:
                    c["image"] = f"{new}:{img['newTag']}"
                else:
                    c["image"] = c["image"].replace(name, new, 1)


def render(kdir=K8S):
    """Render a kustomization directory the way `kustomize build` does, for
    the features listed in KUSTOMIZATION_KEYS. Returns a list of objects."""
    kpath = None
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.exists(os.path.join(kdir, n)):
            kpath = os.path.join(kdir, n)
            break
    if kpath is None:
        raise RenderError(f"no kustomization in {kdir}")
    k = load_docs(kpath)[0]
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{kpath}: keys {sorted(unknown)} are not understood by the renderer in "
                          f"tests/e2e/test_deploy.py; teach it (and compare with kubectl kustomize)")
    docs = []
    for r in k.get("resources", []):
        p = os.path.join(kdir, r)
        if not os.path.exists(p):
            raise RenderError(f"{kpath}: resource {r!r} does not exist")
        docs += render(p) if os.path.isdir(p) else load_docs(p)

    gen_defaults = k.get("generatorOptions", {}) or {}
    for g in k.get("configMapGenerator", []):
        extra = set(g) - {"name", "files", "literals", "options", "behavior"}
        if extra or g.get("behavior", "create") != "create":
            raise RenderError(f"configMapGenerator {g.get('name')}: {sorted(extra) or g.get('behavior')} not supported")
        opts = {**gen_defaults, **(g.get("options") or {})}
        if not opts.get("disableNameSuffixHash"):
            raise RenderError(f"configMapGenerator {g['name']}: only disableNameSuffixHash: true is supported "
                              "(the config is meant to be updated in place, see kustomization.yaml)")
        data = {}
        for f in g.get("files", []):
            key, path = f.split("=", 1) if "=" in f else (os.path.basename(f), f)
            with open(os.path.join(kdir, path)) as fh:
                data[key] = fh.read()
        for lit in g.get("literals", []):
            key, val = lit.split("=", 1)
            data[key] = val
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g["name"]}, "data": data}
        if opts.get("labels"):
            cm["metadata"]["labels"] = dict(opts["labels"])
        if opts.get("annotations"):
            cm["metadata"]["annotations"] = dict(opts["annotations"])
        docs.append(cm)

    if k.get("namespace"):
        for d in docs:
            if d.get("kind") not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    if k.get("commonLabels"):
        _apply_labels(docs, k["commonLabels"], True, True)
    for entry in k.get("labels", []) or []:
        _apply_labels(docs, entry.get("pairs", {}), entry.get("includeSelectors", False),
                      entry.get("includeTemplates", False))
    if k.get("images"):
        _apply_images(docs, k["images"])

    seen = set()
    for d in docs:
        ident = (d.get("kind"), d.get("metadata", {}).get("namespace"), d.get("metadata", {}).get("name"))
        if ident in seen:
            raise RenderError(f"duplicate object {ident}")
        seen.add(ident)
    return docs


def _ident(d):
    m = d.get("metadata", {})
    return (d.get("apiVersion"), d.get("kind"), m.get("namespace", ""), m.get("name"))


def find(docs, kind, name=None):
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in the rendered manifests"
    return found[0] if name is not None or len(found) == 1 else found


def kubectl():
    """Path of a kubectl whose `kustomize` subcommand works, or None."""
    path = shutil.which("kubectl")
    if not path:
        return None
    try:
        r = subprocess.run([path, "kustomize", "--help"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if r.returncode == 0 else None


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def docs():
    return render()


@pytest.fixture(scope="module")
def deployment(docs):
    return find(docs, "Deployment", "cutover")


@pytest.fixture(scope="module")
def pod(deployment):
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod):
    cs = [c for c in pod["containers"] if c["name"] == "cutover"]
    assert len(cs) == 1, "the Deployment needs exactly one container named cutover"
    return cs[0]


@pytest.fixture(scope="module")
def config_text(docs):
    cm = find(docs, "ConfigMap", "cutover-config")
    assert "cutover.yaml" in cm.get("data", {}), "ConfigMap cutover-config has no cutover.yaml key"
    return cm["data"]["cutover.yaml"]


@pytest.fixture(scope="module")
def config(config_text):
    return yaml.safe_load(config_text)


@pytest.fixture(scope="module")
def secrets():
    return {d["metadata"]["name"]: d for d in load_docs(os.path.join(K8S, "secret.example.yaml"))}


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKERFILE)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def container_port(container, ref):
    """The containerPort a probe/targetPort reference (number or name) names, or None."""
    for p in container.get("ports", []):
        if ref == p["containerPort"] or ref == p.get("name"):
            return p["containerPort"]
    return None


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------ rendering


def test_kustomization_resources_and_files():
    k = load_docs(os.path.join(K8S, "kustomization.yaml"))[0]
    resources = k.get("resources", [])
    for r in resources:
        assert os.path.exists(os.path.join(K8S, r)), f"kustomization resource {r} does not exist"
    assert "secret.example.yaml" not in resources, "secret.example.yaml documents the Secrets; it must not be applied"
    generated = {os.path.basename(f.split("=")[-1]) for g in k.get("configMapGenerator", []) for f in g.get("files", [])}
    assert "cutover.yaml" in generated, "cutover.yaml must reach the pods through configMapGenerator"
    # Every manifest-looking file is accounted for: no forgotten resource.
    accounted = set(resources) | generated | {"kustomization.yaml", "secret.example.yaml"}
    stray = sorted(f for f in os.listdir(K8S) if f.endswith((".yaml", ".yml")) and f not in accounted)
    assert not stray, f"files in deploy/kubernetes that the kustomization does not use: {stray}"
    # Every file parses as YAML, every document is a known object.
    for f in sorted(os.listdir(K8S)):
        if f.endswith((".yaml", ".yml")):
            load_docs(os.path.join(K8S, f))


def test_render_matches_kubectl_kustomize(docs):
    kc = kubectl()
    if kc is None:
        pytest.skip("kubectl with `kustomize` not on PATH: rendered by the test's own renderer only")
    r = subprocess.run([kc, "kustomize", K8S], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"kubectl kustomize failed:\n{r.stderr}"
    theirs = {_ident(d): d for d in yaml.safe_load_all(r.stdout) if d}
    ours = {_ident(d): d for d in docs}
    assert sorted(theirs, key=str) == sorted(ours, key=str), "objects differ from kubectl kustomize"
    for ident in ours:
        if ours[ident] != theirs[ident]:
            a = yaml.safe_dump(theirs[ident], sort_keys=True).splitlines()
            b = yaml.safe_dump(ours[ident], sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(a, b, "kubectl kustomize", "test renderer", lineterm=""))
            pytest.fail(f"{ident} renders differently:\n{diff}")
    # kustomize warnings (deprecated fields and the like) are worth fixing.
    assert "deprecated" not in r.stderr.lower(), f"kubectl kustomize warns:\n{r.stderr}"


def test_objects_known_namespaced_and_labelled(docs):
    kinds = sorted((d["apiVersion"], d["kind"]) for d in docs)
    for api, kind in kinds:
        assert (api, kind) in KNOWN_KINDS, f"unexpected object {api} {kind}"
    assert {k for _, k in kinds} >= {"Namespace", "ConfigMap", "Deployment", "Service",
                                     "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for d in docs:
        name = d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, f"bad name {name!r}"
        assert labels_match(APP_LABELS, d["metadata"].get("labels", {})), f"{d['kind']} {name} lacks {APP_LABELS}"
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"]
        else:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {name} not in namespace {NAMESPACE}"
    assert find(docs, "Namespace", NAMESPACE)
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret may be rendered (real ones come from the platform)"


# ------------------------------------------------------------------ Deployment


def test_deployment_selector_strategy_and_scaling(docs, deployment):
    spec = deployment["spec"]
    selector = spec["selector"]
    assert "matchExpressions" not in selector
    assert labels_match(selector["matchLabels"], spec["template"]["metadata"]["labels"]), \
        "Deployment selector does not match its pod template labels"
    ru = spec["strategy"]["rollingUpdate"]
    assert spec["strategy"]["type"] == "RollingUpdate" and ru["maxUnavailable"] == 0 and ru["maxSurge"] == 1
    hpa = find(docs, "HorizontalPodAutoscaler", "cutover")["spec"]
    # The HPA owns the replica count; a fixed one would be re-applied over it.
    if "replicas" in spec:
        assert hpa["minReplicas"] <= spec["replicas"] <= hpa["maxReplicas"]


def test_pod_security_restricted(pod, container, dockerfile):
    psc = pod.get("securityContext", {})
    csc = container.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True
    assert psc.get("runAsUser") == 10001
    # The image's USER and the pod's runAsUser are the same account.
    assert dockerfile.final_user() == "10001"
    assert (csc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type") == "RuntimeDefault"
    assert csc.get("allowPrivilegeEscalation") is False
    assert csc.get("readOnlyRootFilesystem") is True
    assert csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc["capabilities"].get("add")
    assert not csc.get("privileged")
    assert pod.get("automountServiceAccountToken") is False
    for v in pod.get("volumes", []):
        assert set(v) - {"name"} <= {"configMap", "secret", "projected", "emptyDir", "downwardAPI"}, \
            f"volume {v['name']} is not allowed under Pod Security restricted"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for p in container.get("ports", []):
        assert "hostPort" not in p


def test_resources_probes_and_shutdown(pod, container, config):
    res = container["resources"]
    assert res["requests"]["cpu"] == "250m" and res["requests"]["memory"] == "128Mi"
    assert res["limits"]["memory"] == "512Mi"
    admin_port = port_of(config["admin"]["address"])
    assert config["admin"]["address"].startswith("0.0.0.0:"), "the kubelet probes the pod IP: admin must not be loopback"
    for kind, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        probe = container[kind]["httpGet"]
        assert probe["path"] == path
        port = container_port(container, probe["port"])
        assert port is not None, f"{kind} port {probe['port']} is not a declared containerPort"
        assert port == admin_port, f"{kind} goes to {port}, but cutover's admin listener is on {admin_port}"
    if "startupProbe" in container:
        assert container_port(container, container["startupProbe"]["httpGet"]["port"]) == admin_port
    cmd = container["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[:2] == ["/bin/sh", "-c"]
    m = re.fullmatch(r"sleep (\d+)", cmd[2])
    assert m, f"preStop should be a plain sleep, got {cmd}"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > int(m.group(1)) + DRAIN_TIMEOUT_S, \
        f"terminationGracePeriodSeconds {grace} must exceed preStop {m.group(1)}s + drain {DRAIN_TIMEOUT_S}s"
    assert container.get("args", ["-c", CONFIG_PATH]) == ["-c", CONFIG_PATH]
    assert "command" not in container, "keep the image's ENTRYPOINT"


def test_ports_match_config_listeners(container, config, dockerfile):
    declared = {p["containerPort"] for p in container["ports"]}
    from_config = {port_of(l["address"]) for l in config["listen"]} | {port_of(config["admin"]["address"])}
    assert declared == from_config, f"containerPorts {sorted(declared)} != config listeners {sorted(from_config)}"
    assert declared == dockerfile.exposed(), f"EXPOSE {sorted(dockerfile.exposed())} != containerPorts {sorted(declared)}"
    for l in config["listen"]:
        assert l["address"].startswith(("0.0.0.0:", "[::]:")), f"listener {l['address']} unreachable from the Service"


def _scalars(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _scalars(v)
    elif isinstance(node, list):
        for v in node:
            yield from _scalars(v)
    elif isinstance(node, str):
        yield node


def test_env_and_secrets(container, config, secrets):
    env = {e["name"]: e for e in container.get("env", [])}
    refs = {m for s in _scalars(config) for m in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", s)}
    assert refs == {"CUTOVER_ADMIN_TOKEN", "CUTOVER_OVERRIDE_SECRET"}, refs
    for name in refs:
        assert name in env, f"cutover.yaml uses ${{{name}}} but the container does not set {name}"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{name} must come from a Secret, not a literal"
        assert ref["name"] in secrets, f"Secret {ref['name']} is not documented in secret.example.yaml"
        assert ref["key"] in secrets[ref["name"]].get("stringData", {}), \
            f"secret.example.yaml: {ref['name']} lacks key {ref['key']}"
    assert not (container.get("envFrom")), "explicit env keeps the config's ${} references checkable"


def test_config_and_tls_volume(pod, container, config, secrets):
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    m = mounts.get("/etc/cutover")
    assert m, "the config directory /etc/cutover is not mounted"
    assert "subPath" not in m and "subPathExpr" not in m, "subPath mounts never receive ConfigMap updates"
    assert m.get("readOnly") is True
    vol = {v["name"]: v for v in pod["volumes"]}[m["name"]]
    # What the kubelet will put under /etc/cutover, path -> (kind, object, key)
    files = {}
    sources = vol["projected"]["sources"] if "projected" in vol else [vol]
    for s in sources:
        for kind in ("configMap", "secret"):
            if kind in s:
                obj = s[kind].get("name") or s[kind].get("secretName")
                for item in s[kind].get("items", []):
                    files[item["path"]] = (kind, obj, item["key"])
    assert files.get("cutover.yaml") == ("configMap", "cutover-config", "cutover.yaml")
    # The private key is in there: no access for "other" (0440 = 288; a bare
    # 440 would be read as decimal by some tools). The group is the pod's fsGroup.
    mode = vol.get("projected", vol.get("secret", {})).get("defaultMode", 0o644)
    assert mode & ~0o440 == 0, f"defaultMode {oct(mode)}: expected read-only for owner and group (0440)"
    if mode & 0o040:
        assert pod["securityContext"].get("fsGroup") == pod["securityContext"].get("runAsGroup"), \
            "group-readable files need fsGroup = the container's group"
    for other in mounts:
        assert not other.startswith("/etc/cutover/"), "keep /etc/cutover one volume (one atomic update)"
    # Every certificate file the config names is mounted from a documented Secret.
    for listener in config["listen"]:
        for c in (listener.get("tls") or {}).get("certs", []):
            for path in (c["cert"], c["key"]):
                assert path.startswith("/etc/cutover/"), path
                rel = path[len("/etc/cutover/"):]
                assert rel in files, f"{path} (from cutover.yaml) is not mounted"
                kind, obj, key = files[rel]
                assert kind == "secret" and obj in secrets and key in secrets[obj].get("stringData", {}), \
                    f"{path}: Secret {obj} key {key} is not documented in secret.example.yaml"
    assert secrets["cutover-tls"]["type"] == "kubernetes.io/tls"


def test_secret_example_has_placeholders_only(secrets):
    text = open(os.path.join(K8S, "secret.example.yaml")).read()
    assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), "no key material in the example"
    for s in secrets.values():
        assert s["kind"] == "Secret" and "data" not in s, "use stringData placeholders"
        assert s["metadata"].get("namespace") == NAMESPACE
        for k, v in s["stringData"].items():
            assert "REPLACE" in str(v), f"{s['metadata']['name']}.{k} must be a placeholder"


def test_scheduling_spread(pod):
    tsc = pod["topologySpreadConstraints"]
    assert any(t["topologyKey"] == "topology.kubernetes.io/zone"
               and labels_match(t["labelSelector"]["matchLabels"], APP_LABELS) for t in tsc), "no spread across zones"
    pref = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert any(p["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
               and labels_match(p["podAffinityTerm"]["labelSelector"]["matchLabels"], APP_LABELS) for p in pref)


# ------------------------------------------------------------------ Service, PDB, HPA


def test_service(docs, deployment, container, config):
    svc = find(docs, "Service", "cutover")
    spec = svc["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local", "the client address must be preserved"
    assert labels_match(spec["selector"], deployment["spec"]["template"]["metadata"]["labels"]), \
        "Service selector does not select the pods"
    tls_ports = {port_of(l["address"]) for l in config["listen"] if l.get("tls")}
    plain_ports = {port_of(l["address"]) for l in config["listen"] if not l.get("tls")}
    by_port = {}
    for p in spec["ports"]:
        assert p.get("protocol", "TCP") == "TCP"
        target = container_port(container, p.get("targetPort", p["port"]))
        assert target is not None, f"Service port {p['port']}: targetPort {p.get('targetPort')} is no containerPort"
        by_port[p["port"]] = target
    assert by_port == {443: 8443, 80: 8080}, by_port
    assert by_port[443] in tls_ports, "443 must reach the TLS listener"
    assert by_port[80] in plain_ports, "80 must reach the cleartext listener"
    assert port_of(config["admin"]["address"]) not in by_port.values(), "the admin port must not be public"
    ann = svc["metadata"].get("annotations") or {}
    assert "service.beta.kubernetes.io/azure-load-balancer-health-probe-request-path" not in ann, \
        "with externalTrafficPolicy: Local the LB probes kube-proxy's healthCheckNodePort; no request path"
    for k in ann:
        assert k.startswith("service.beta.kubernetes.io/azure-"), f"unexpected annotation {k}"


def test_pdb_and_hpa(docs, deployment, container):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(docs, "PodDisruptionBudget", "cutover")["spec"]
    hpa = find(docs, "HorizontalPodAutoscaler", "cutover")["spec"]
    assert labels_match(pdb["selector"]["matchLabels"], labels), "PDB does not select the pods"
    assert pdb["minAvailable"] == 2
    assert pdb["minAvailable"] < hpa["minReplicas"], "PDB would block every eviction (node drains hang)"
    ref = hpa["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    cpu = [m for m in hpa["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert "cpu" in container["resources"]["requests"], "CPU utilisation needs a CPU request"


# ------------------------------------------------------------------ the config through cutover --check


def _check(path, env):
    return subprocess.run([CUTOVER_BIN, "--check", "-c", path], capture_output=True, text=True, env=env, timeout=30)


def test_config_passes_cutover_check(config, tmp_path):
    assert os.access(CUTOVER_BIN, os.X_OK), f"{CUTOVER_BIN} not built (scripts/build.sh)"
    cfg = copy.deepcopy(config)
    notes = []
    # Endpoint names stay: --check validates them, the resolver runs only
    # in the proxy (there is no DNS here, and none is needed).
    for c in cfg["clusters"]:
        for e in c["endpoints"]:
            host = e.rsplit(":", 1)[0]
            assert re.fullmatch(r"[A-Za-z0-9.-]+", host) and port_of(e) == 443, f"endpoint {e}: expected NAME:443"
    # Certificates: a throw-away pair in place of the mounted Secret.
    crt, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=api.mmrv.example", "-keyout", key, "-out", crt],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for l in cfg["listen"]:
        for cert in (l.get("tls") or {}).get("certs", []):
            cert["cert"], cert["key"] = crt, key
    env = dict(os.environ, CUTOVER_ADMIN_TOKEN="check-admin-token", CUTOVER_OVERRIDE_SECRET="check-override-secret")
    path = str(tmp_path / "cutover.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    res = _check(path, env)
    if res.returncode != 0 and re.search(r'unknown key "tls" in listen', res.stderr):
        for l in cfg["listen"]:
            l.pop("tls", None)
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
        notes.append("this cutover does not support listen[].tls yet: checked the config without it")
        res = _check(path, env)
    assert res.returncode == 0, f"cutover --check refused the ConfigMap's cutover.yaml:\n{res.stderr}"
    assert f"{len(cfg['clusters'])} clusters, {len(cfg['routes'])} routes" in res.stdout, res.stdout
    # The ${} references really are live: without the token the file is refused.
    env.pop("CUTOVER_ADMIN_TOKEN")
    res = _check(path, env)
    assert res.returncode != 0 and "CUTOVER_ADMIN_TOKEN" in res.stderr, res.stderr
    for n in notes:
        warnings.warn(n)
        print(n)


def test_config_uses_only_supported_keys_outside_tls(config):
    """Keys the loader accepts today (plus listen[].tls, which is checked
    above); everything else stays commented out in the file until supported."""
    allowed = {
        "": {"workers", "listen", "admin", "clusters", "routes"},
        "listen": {"address", "tls"},
        "admin": {"address", "token"},
        "clusters": {"name", "endpoints", "host", "protocol", "tls", "connect_timeout", "first_byte_timeout",
                     "idle_timeout", "max_idle"},
        "routes": {"name", "match", "split", "sticky", "override"},
    }
    assert set(config) <= allowed[""], set(config)
    assert set(config["admin"]) <= allowed["admin"]
    for section in ("listen", "clusters", "routes"):
        for item in config[section]:
            assert set(item) <= allowed[section], f"{section}: {set(item) - allowed[section]}"
    cluster_names = {c["name"] for c in config["clusters"]}
    assert {"aws", "azure"} <= cluster_names
    for r in config["routes"]:
        assert {s["cluster"] for s in r["split"]} <= cluster_names
        assert r["override"]["secret"] == "${CUTOVER_OVERRIDE_SECRET}"
    assert {r["name"] for r in config["routes"]} == {"api", "web"}


# ------------------------------------------------------------------ Dockerfile


class Dockerfile:
    def __init__(self, stages):
        self.stages = stages  # [(from_args, [(INSTR, args)])]

    def final(self):
        return self.stages[-1][1]

    def final_user(self):
        users = [a for i, a in self.final() if i == "USER"]
        return users[-1].split(":")[0] if users else None

    def exposed(self):
        ports = set()
        for i, a in self.final():
            if i == "EXPOSE":
                ports |= {int(p.split("/")[0]) for p in a.split()}
        return ports


def parse_dockerfile(path):
    """Instructions with continuation lines joined and comments dropped,
    grouped by stage."""
    logical, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#"):
                continue
            if line.endswith("\\"):
                cur += line[:-1] + " "
                continue
            cur += line
            if cur.strip():
                logical.append(cur.strip())
            cur = ""
    assert not cur.strip(), "Dockerfile ends inside a continuation line"
    stages = []
    for line in logical:
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append((args.strip(), []))
            continue
        assert stages, f"{instr} before the first FROM"
        stages[-1][1].append((instr, args.strip()))
    return Dockerfile(stages)


def apt_packages(run_args):
    """Packages named by `apt-get install` in a RUN line."""
    pkgs = []
    for cmd in re.split(r"&&|;|\|\|", run_args):
        words = shlex.split(cmd)
        words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
        if len(words) >= 2 and words[0] in ("apt-get", "apt") and "install" in words:
            pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def _dpkg_depends(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", pkg], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    out = set()
    for part in r.stdout.split(","):
        for alt in part.split("|"):
            name = alt.strip().split(" ")[0].split(":")[0]
            if name:
                out.add(name)
    return out


def test_dockerfile_stages_user_and_entrypoint(dockerfile):
    stages = dockerfile.stages
    assert len(stages) >= 2, "multi-stage build expected"
    assert re.fullmatch(r"debian:12(@sha256:[0-9a-f]{64})? +[Aa][Ss] +build", stages[0][0]), stages[0][0]
    assert re.fullmatch(r"debian:12-slim(@sha256:[0-9a-f]{64})?", stages[-1][0]), stages[-1][0]
    build_runs = " ".join(a for i, a in stages[0][1] if i == "RUN")
    for dep in ("cmake", "gcc", "pkg-config", "libevent-dev", "libssl-dev", "libnghttp2-dev", "libyaml-dev"):
        assert dep in apt_packages(build_runs), f"build stage does not install {dep}"
    assert re.search(r"cmake -S \. -B build\b.*-DCMAKE_BUILD_TYPE=Release\b.*-DCUTOVER_TESTS=OFF", build_runs)
    assert re.search(r"cmake --build build --target cutover\b", build_runs)

    final = dockerfile.final()
    user = dockerfile.final_user()
    assert user and user not in ("root", "0"), f"final stage runs as {user!r}"
    assert user == "10001"
    assert [i for i, _ in final].index("USER") > max(n for n, (i, _) in enumerate(final) if i == "RUN"), \
        "USER must come after the last RUN"
    assert any(i == "COPY" and "--from=build" in a and a.endswith("/usr/local/bin/cutover") for i, a in final)
    assert dockerfile.exposed() == {8080, 8443, 9901}
    one = lambda name: [a for i, a in final if i == name]  # noqa: E731
    assert [json.loads(a) for a in one("ENTRYPOINT")] == [["/usr/local/bin/cutover"]]
    assert [json.loads(a) for a in one("CMD")] == [["-c", CONFIG_PATH]]
    assert one("STOPSIGNAL") == ["SIGTERM"]


def test_dockerfile_runtime_packages_are_runtime_only(dockerfile):
    final_runs = [a for i, a in dockerfile.final() if i == "RUN"]
    pkgs = [p for a in final_runs for p in apt_packages(a)]
    want = {"libevent-2.1-7", "libevent-openssl-2.1-7", "libevent-pthreads-2.1-7", "libssl3",
            "libnghttp2-14", "libyaml-0-2", "ca-certificates"}
    assert set(pkgs) == want, f"runtime packages {sorted(pkgs)} != {sorted(want)}"
    for p in pkgs:
        assert not p.endswith("-dev") and p not in ("gcc", "cmake", "make", "pkg-config", "build-essential"), p
    for a in final_runs:
        if apt_packages(a):
            assert "--no-install-recommends" in a and "rm -rf /var/lib/apt/lists/*" in a


def test_dockerfile_runtime_packages_cover_the_binary(dockerfile):
    """Every shared library the built binary loads comes from a runtime package
    (or its dependencies, or the base image): a new library dependency cannot
    be forgotten in the image."""
    if not (shutil.which("ldd") and shutil.which("dpkg")):
        pytest.skip("ldd/dpkg not available")
    pkgs = {p for a in (a for i, a in dockerfile.final() if i == "RUN") for p in apt_packages(a)}
    closure, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in closure:
            continue
        closure.add(p)
        todo += sorted(_dpkg_depends(p) or ())
    base = {"libc6", "libgcc-s1"}  # in debian:12-slim (Priority: required)
    sanitizer = re.compile(r"^(libasan|libubsan|liblsan|libtsan|libstdc\+\+|libclang)")
    r = subprocess.run(["ldd", CUTOVER_BIN], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    libs = re.findall(r"=>\s+(/\S+)", r.stdout)
    assert libs
    for lib in libs:
        owner = None
        for cand in (os.path.realpath(lib), lib, "/usr" + lib if not lib.startswith("/usr/") else lib):
            q = subprocess.run(["dpkg", "-S", cand], capture_output=True, text=True)
            if q.returncode == 0:
                owner = q.stdout.split(":")[0].strip()
                break
        assert owner, f"no Debian package owns {lib}"
        if SANITIZE and sanitizer.match(owner):
            continue
        assert owner in closure | base, f"{CUTOVER_BIN} needs {lib} from {owner}, which the runtime stage does not install"


def test_dockerfile_copies_what_cmake_needs(dockerfile, tmp_path):
    """The build stage copies source directories one by one; each directory
    CMakeLists.txt compiles from must be among them (tests/ is off)."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        cmake = f.read()
    needed = set(re.findall(r"(?<![\w/$}.-])([A-Za-z0-9_-]+)/[\w./-]+\.(?:c|h)\b", cmake))
    needed |= set(re.findall(r"add_subdirectory\(\s*([\w-]+)", cmake))
    needed -= {"tests"}
    copied = set()
    for i, a in dockerfile.stages[0][1]:
        if i == "COPY" and "--from" not in a:
            copied |= {s.strip("/").split("/")[0] for s in shlex.split(a)[:-1]}
    missing = sorted(needed - copied)
    assert not missing, f"deploy/Dockerfile build stage does not COPY {missing} (used by CMakeLists.txt)"
    assert "CMakeLists.txt" in copied
    # And CMake configures from exactly those paths, with the Dockerfile's flags
    # (configure only: the full build is what `docker build` does).
    if shutil.which("cmake"):
        ctx = tmp_path / "context"
        ctx.mkdir()
        for c in copied:
            src = os.path.join(ROOT, c)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, ctx / c)
        r = subprocess.run(["cmake", "-S", str(ctx), "-B", str(ctx / "build"), "-DCMAKE_BUILD_TYPE=Release",
                            "-DCUTOVER_TESTS=OFF"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"cmake configure with only the COPYed sources failed:\n{r.stderr[-3000:]}"
    # The BuildKit ignore file lets exactly those paths into the context.
    rules = [l.strip() for l in open(DOCKERIGNORE) if l.strip() and not l.startswith("#")]
    assert rules[0] == "*", "Dockerfile.dockerignore should be an allowlist"
    for c in copied:
        assert f"!{c}" in rules, f"Dockerfile.dockerignore does not let {c} into the build context"


# ------------------------------------------------------------------ systemd


def parse_unit(path):
    sections, cur = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                cur = sections.setdefault(line.strip("[]"), {})
                continue
            k, _, v = line.partition("=")
            cur.setdefault(k.strip(), []).append(v.strip())
    return sections


def test_systemd_unit_directives():
    svc = parse_unit(UNIT)["Service"]
    one = lambda k: svc.get(k, [None])[-1]  # noqa: E731
    assert one("Type") == "simple"
    assert svc["ExecStart"] == [f"/usr/local/bin/cutover -c {CONFIG_PATH}"]
    assert "/bin/kill -HUP $MAINPID" in svc["ExecReload"], "reload must be SIGHUP to the main process"
    assert one("KillSignal") == "SIGTERM"
    assert int(one("TimeoutStopSec")) > DRAIN_TIMEOUT_S
    assert one("Restart") == "on-failure"
    assert one("EnvironmentFile") == "-/etc/cutover/env"
    expect = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
              "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE", "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
              "LimitNOFILE": "1048576"}
    for k, v in expect.items():
        assert one(k) == v, f"{k}={one(k)}, expected {v}"
    if one("DynamicUser") != "yes":
        user = one("User")
        assert user and user != "root"
        with open(SYSUSERS) as f:
            assert re.search(rf"^u\s+{re.escape(user)}\s", f.read(), re.M), f"{SYSUSERS} does not create {user}"
    assert parse_unit(UNIT)["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze(tmp_path):
    sa = shutil.which("systemd-analyze")
    if not sa:
        pytest.skip("systemd-analyze not installed")
    # verify checks that executables exist: point ExecStart at the built binary.
    unit = tmp_path / "cutover.service"
    unit.write_text(open(UNIT).read().replace("/usr/local/bin/cutover", os.path.abspath(CUTOVER_BIN)))
    r = subprocess.run([sa, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not r.stderr.strip(), f"systemd-analyze verify:\n{r.stdout}{r.stderr}"
    # Exposure on systemd's 0-100 scale (shown as 0.0-10.0): stay in the "OK" band.
    r = subprocess.run([sa, "security", "--offline=yes", "--threshold=20", str(unit)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"systemd-analyze security:\n{r.stdout[-3000:]}{r.stderr}"


# ------------------------------------------------------------------ the script


def test_deploy_check_script():
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed")
    r = subprocess.run(["shellcheck", SCRIPT], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


if __name__ == "__main__":
    if sys.argv[1:] != ["--render"]:
        sys.exit("usage: test_deploy.py --render   (tests run under pytest)")
    sys.stdout.write(yaml.safe_dump_all(render(), sort_keys=False))
