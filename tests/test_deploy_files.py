"""deploy/: the Dockerfiles, the compose stack and the Kubernetes manifests, checked without Docker.

Each file is checked by the tool that will read it where one runs here (hadolint, nginx,
promtool, the Compose specification's schema, Kubernetes' schemas), and every name one file
gives another is checked against the real thing: the service's flags by its own parser, metric
names and probe paths against a running service started with the compose stack's command.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.__main__ import parse_arguments, settings_from
from tests.support import REPO, ServiceProcess, free_port

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
# The oldest Kubernetes minor the managed offerings still run, and the newest with schemas here.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
API_KEY = "sk-deploy-test"
PROBES = {"startupProbe": "/startupz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}


# --- reading the files ------------------------------------------------------------------------


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments left out."""
    instructions, pending = [], ""
    for line in (DEPLOY / name).read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def exec_form(name: str, keyword: str) -> list[str]:
    [arguments] = [rest for instruction, rest in dockerfile_instructions(name) if instruction == keyword]
    return json.loads(arguments)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} gives its default and ${VAR:?error} a stand-in value."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "set-by-the-operator", text)


def compose_service_command() -> list[str]:
    return [interpolate(str(argument)) for argument in compose()["services"]["llm"]["command"]]


def flag_value(arguments: list[str], flag: str) -> str:
    return arguments[arguments.index(flag) + 1]


def kustomize_resources() -> list[Path]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [KUBERNETES / name for name in kustomization["resources"]]


def kubernetes_objects() -> list[dict]:
    return [document for path in kustomize_resources() for document in yaml.safe_load_all(path.read_text()) if document]


def kubernetes_object(kind: str, name: str) -> dict:
    [found] = [item for item in kubernetes_objects() if item["kind"] == kind and item["metadata"]["name"] == name]
    return found


def service_container() -> dict:
    [container] = kubernetes_object("Deployment", "llm-service")["spec"]["template"]["spec"]["containers"]
    return container


def dashboard() -> dict:
    return json.loads((COMPOSE / "grafana" / "dashboards" / "llm-service.json").read_text())


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def grafana_to_promql(expression: str) -> str:
    """What Grafana sends Prometheus: its variables replaced by values."""
    return expression.replace("$__rate_interval", "5m").replace("$model", ".*")


def accepts(arguments: list[str]) -> None:
    """The service's own parser and settings take these flags (SystemExit or an error if not)."""
    settings_from(parse_arguments(arguments), {"LLM_API_KEYS": API_KEY})


# --- tools and a running service --------------------------------------------------------------


def debian_tool(binary: str, package: str) -> str:
    """A program from Debian's packages, installed with apt-get when missing (as the browser tests do)."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    if shutil.which("apt-get") is None or (os.geteuid() != 0 and shutil.which("sudo") is None):
        pytest.skip(f"{binary} is missing and apt-get cannot install Debian's {package} here")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=environment)
    return shutil.which(binary, path="/usr/sbin:/usr/bin")


@pytest.fixture(scope="module")
def nginx() -> str:
    return debian_tool("nginx", "nginx")


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def compose_service(tiny_model_dir, artifacts, tmp_path_factory):
    """`python -m service` with the compose stack's command and API keys, on loopback, serving
    the tiny model; one chat completion has run, so every per-request metric has samples."""
    command = compose_service_command()
    for flag, value in (("--host", None), ("--port", None), ("--models-dir", str(tmp_path_factory.mktemp("models")))):
        index = command.index(flag)
        if value is None:
            del command[index:index + 2]
        else:
            command[index + 1] = value
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLM_API_KEYS", API_KEY)
        patch.delenv("LLM_DATABASE_URL", raising=False)
        server = ServiceProcess(*command, "--model", f"tiny={tiny_model_dir}", log_path=artifacts / "deploy_service.log")
    response = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"seed": 1, "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scraped_names(compose_service) -> set[str]:
    """Sample names /metrics really serves (x_total, x_bucket...), fetched as Prometheus does: no key."""
    response = httpx.get(compose_service.url + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples}


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint_at_warning_level(name):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DEPLOY / name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_hadolint_ignore_is_justified_by_a_comment_above_it(name):
    lines = (DEPLOY / name).read_text().splitlines()
    unexplained = [
        line for number, line in enumerate(lines)
        if "hadolint ignore" in line and (number == 0 or not lines[number - 1].startswith("#") or "hadolint" in lines[number - 1])
    ]
    assert unexplained == []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_the_service_with_flags_it_accepts(name):
    assert exec_form(name, "ENTRYPOINT") == ["python", "-m", "service"]
    command = exec_form(name, "CMD")
    accepts(command)
    exposed = [rest for instruction, rest in dockerfile_instructions(name) if instruction == "EXPOSE"]
    assert exposed == [flag_value(command, "--port")]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_image_runs_as_an_unprivileged_user_with_models_and_data_on_volumes(name):
    instructions = dockerfile_instructions(name)
    [user] = [rest for instruction, rest in instructions if instruction == "USER"]
    [volumes] = [json.loads(rest) for instruction, rest in instructions if instruction == "VOLUME"]
    [environment] = [rest for instruction, rest in instructions if instruction == "ENV" and "LLM_DATA_DIR" in rest]
    data_dir = dict(pair.split("=", 1) for pair in shlex.split(environment))["LLM_DATA_DIR"]
    assert (user not in ("0", "root"), sorted(volumes)) == (True, sorted([flag_value(exec_form(name, "CMD"), "--models-dir"), data_dir]))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerignore_lets_every_copied_source_into_the_context(name):
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = [
        source for instruction, rest in dockerfile_instructions(name) if instruction == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
    ]
    assert sources and all(source.rstrip("/") in allowed and (REPO / source).exists() for source in sources), sources


def test_cuda_image_provides_the_cuda_major_version_onnxruntime_gpu_was_built_for():
    build_info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    assert build_info.package_name == "onnxruntime-gpu", "the project pins onnxruntime-gpu; a CPU wheel is installed"
    bases = [rest.split()[0] for instruction, rest in dockerfile_instructions("Dockerfile.cuda") if instruction == "FROM"]
    majors = {re.match(r"nvidia/cuda:(\d+)\.", base).group(1) for base in bases}
    assert majors == {build_info.cuda_version.split(".")[0]}


# --- compose ---------------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification():
    # check-jsonschema (dev extra) vendors compose-spec/compose-spec's schema (Apache-2.0).
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(resource.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator_class(schema).iter_errors(compose())]
    assert errors == []


def test_compose_command_is_accepted_by_the_service():
    accepts(compose_service_command())


def test_compose_bind_mounts_name_files_that_exist():
    missing = [
        volume for service in compose()["services"].values() for volume in service.get("volumes", [])
        if volume.startswith(".") and not (DEPLOY / volume.split(":")[0]).exists()
    ]
    assert missing == []


def test_compose_builds_the_cpu_image_from_the_repository_root():
    build = compose()["services"]["llm"]["build"]
    assert ((DEPLOY / build["context"]).resolve(), build["dockerfile"]) == (REPO, "deploy/Dockerfile")


def test_compose_database_url_names_the_postgres_service_its_user_and_database():
    services = compose()["services"]
    url = urlsplit(interpolate(services["llm"]["environment"]["LLM_DATABASE_URL"]))
    postgres = services[url.hostname]
    assert (postgres["image"].split(":")[0], url.username, url.path.lstrip("/"), url.port) == (
        "postgres", postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"], 5432,
    )


def test_stop_grace_period_outlasts_the_drain():
    service = compose()["services"]["llm"]
    grace = float(service["stop_grace_period"].removesuffix("s"))
    assert grace > float(flag_value(compose_service_command(), "--drain-seconds"))


def test_compose_service_answers_probes_and_metrics_without_a_key_but_the_api_only_with_one(compose_service):
    url = compose_service.url
    statuses = [httpx.get(url + path, timeout=10).status_code for path in ("/livez", "/readyz", "/metrics", "/v1/models")]
    assert statuses == [200, 200, 200, 401]


# --- nginx -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_proxy(nginx, compose_service, tmp_path_factory):
    """deploy/compose/nginx.conf in a real nginx, with the image's paths and the service's address
    replaced by this machine's."""
    folder = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (COMPOSE / "nginx.conf").read_text()
    replacements = {"listen 80;": f"listen 127.0.0.1:{port};", "root /usr/share/nginx/html;": f"root {REPO / 'spa'};",
                    "http://llm:8000": compose_service.url}
    for old, new in replacements.items():
        assert site.count(old) == 1, f"nginx.conf no longer has exactly one {old!r}"
        site = site.replace(old, new)
    (folder / "site.conf").write_text(site)
    temporary = " ".join(f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (folder / "nginx.conf").write_text(
        # Workers would run as nobody, who may not enter pytest's private temporary folders.
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\nevents {{}}\n"
        f"http {{ include /etc/nginx/mime.types; access_log {folder / 'access.log'}; {temporary} include {folder / 'site.conf'}; }}\n"
    )
    arguments = [nginx, "-p", str(folder), "-e", str(folder / "error.log"), "-c", str(folder / "nginx.conf")]
    check = subprocess.run([*arguments, "-t"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([*arguments, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(url + "/", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None:
                raise RuntimeError((folder / "error.log").read_text())
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_nginx_serves_the_chat_page(nginx_proxy):
    response = httpx.get(nginx_proxy + "/", timeout=10)
    assert (response.status_code, response.text) == (200, (REPO / "spa" / "index.html").read_text())


def test_nginx_proxies_the_probes_but_not_metrics(nginx_proxy):
    statuses = [httpx.get(nginx_proxy + path, timeout=10).status_code for path in ("/livez", "/readyz", "/startupz", "/metrics")]
    assert statuses == [200, 200, 200, 404]


def test_nginx_streams_server_sent_events_from_the_service(nginx_proxy):
    body = {"seed": 1, "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", nginx_proxy + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert (response.headers["content-type"].split(";")[0], events[-1]) == ("text/event-stream", "data: [DONE]")


def test_nginx_does_not_buffer_the_api():
    proxied = re.search(r"location ~ \^/\(v1/[^{]*\{([^}]*)\}", (COMPOSE / "nginx.conf").read_text())
    assert proxied and re.search(r"^\s*proxy_buffering off;", proxied.group(1), re.MULTILINE)


def test_nginx_upgrades_websockets_for_the_service(nginx_proxy):
    from websockets.sync.client import connect

    origin = flag_value(compose_service_command(), "--cors-origin")
    address = nginx_proxy.replace("http://", "ws://") + f"/v1/ws?api_key={API_KEY}"
    with connect(address, additional_headers={"Origin": origin}, open_timeout=10) as socket:
        socket.send(json.dumps({"type": "ping", "id": "p1"}))
        reply = json.loads(socket.recv(timeout=10))
    assert (reply["type"], reply["id"]) == ("pong", "p1")


# --- Prometheus, Grafana, OpenTelemetry --------------------------------------------------------------


def test_prometheus_config_passes_promtool(promtool):
    result = subprocess.run([promtool, "check", "config", str(COMPOSE / "prometheus.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_replica_of_the_service_on_its_port_and_path(compose_service):
    [job] = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    scraped = httpx.get(f"{compose_service.url}{job['metrics_path']}", timeout=10)
    assert (discovery["names"], discovery["type"], str(discovery["port"]), scraped.status_code) == (
        ["llm"], "A", flag_value(compose_service_command(), "--port"), 200,
    )
    assert "llm_http_requests_total" in scraped.text


def test_dashboard_queries_parse_as_promql(promtool, tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{number}", "expr": grafana_to_promql(expression)}
        for number, expression in enumerate(dashboard_expressions())
    ]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_only_metrics_the_service_serves(scraped_names):
    variables = [variable["query"]["query"] for variable in dashboard()["templating"]["list"]]
    queried = set(re.findall(r"\b(llm_[a-z0-9_]+)", " ".join(dashboard_expressions() + variables)))
    assert queried and queried - scraped_names == set()


def test_dashboard_covers_latency_throughput_queue_cache_and_errors():
    expressions = " ".join(dashboard_expressions())
    needed = ["llm_time_to_first_token_seconds_bucket", "llm_generation_tokens_total", "llm_num_requests_waiting",
              "llm_prefix_cache_hits_total", 'status=~"5..|429"']
    assert [name for name in needed if name not in expressions] == []


def test_grafana_provisioning_wires_the_datasource_and_the_dashboard_folder():
    provisioning = COMPOSE / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yaml").read_text())["datasources"]
    [provider] = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["grafana"]["volumes"])
    used = {target["datasource"]["uid"] for panel in dashboard()["panels"] for target in panel["targets"]}
    prometheus = {source["uid"] for source in sources if source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"}
    assert (used, mounts["./compose/grafana/dashboards"]) == (prometheus, provider["options"]["path"])


def test_otel_collector_receives_the_services_traces_over_otlp_http_and_exports_them():
    services = compose()["services"]
    endpoint = urlsplit(services["llm"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector = yaml.safe_load((COMPOSE / "otel-collector.yaml").read_text())
    receiver = urlsplit("//" + collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])
    traces = collector["service"]["pipelines"]["traces"]
    declared = {kind: set(collector.get(kind, {})) for kind in ("receivers", "processors", "exporters")}
    undeclared = [name for kind in declared for name in traces.get(kind, []) if name not in declared[kind]]
    assert (endpoint.hostname in services, endpoint.port, "otlp" in traces["receivers"], bool(traces["exporters"]), undeclared) == (
        True, receiver.port, True, True, [],
    )


# --- Kubernetes ----------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    listed = {path.name for path in kustomize_resources()}
    assert listed == {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas_strictly(version):
    errors = []
    for manifest in kubernetes_objects():
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message}")
    assert errors == []


def test_deployment_runs_the_service_with_flags_it_accepts():
    accepts(service_container()["args"])


def test_probes_use_the_health_paths_on_the_service_port(compose_service):
    container = service_container()
    [port] = container["ports"]
    probes = {name: container[name]["httpGet"] for name in PROBES}
    answers = {name: httpx.get(compose_service.url + probe["path"], timeout=10).status_code for name, probe in probes.items()}
    assert ({name: probe["path"] for name, probe in probes.items()}, {probe["port"] for probe in probes.values()}, answers) == (
        PROBES, {port["name"]}, dict.fromkeys(PROBES, 200),
    )
    assert str(port["containerPort"]) == flag_value(container["args"], "--port")


def test_deployment_requests_resources_and_keeps_models_on_the_claimed_volume():
    container = service_container()
    pod = kubernetes_object("Deployment", "llm-service")["spec"]["template"]["spec"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    models_volume = volumes[mounts[flag_value(container["args"], "--models-dir")]]
    claim = kubernetes_object("PersistentVolumeClaim", models_volume["persistentVolumeClaim"]["claimName"])
    assert (set(container["resources"]["requests"]), claim["kind"]) == ({"cpu", "memory"}, "PersistentVolumeClaim")


def test_deployment_takes_api_keys_and_database_url_from_a_secret():
    sources = {variable["name"]: variable.get("valueFrom", {}) for variable in service_container()["env"]}
    assert {name: "secretKeyRef" in sources.get(name, {}) for name in ("LLM_API_KEYS", "LLM_DATABASE_URL")} == {
        "LLM_API_KEYS": True, "LLM_DATABASE_URL": True,
    }


def test_termination_grace_outlasts_pre_stop_wait_and_drain():
    pod = kubernetes_object("Deployment", "llm-service")["spec"]["template"]["spec"]
    container = service_container()
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(flag_value(container["args"], "--drain-seconds"))


def test_service_routes_to_the_deployments_pods_on_the_named_port():
    service = kubernetes_object("Service", "llm-service")
    deployment = kubernetes_object("Deployment", "llm-service")
    [port] = service["spec"]["ports"]
    assert (service["spec"]["selector"], port["targetPort"]) == (
        deployment["spec"]["template"]["metadata"]["labels"], service_container()["ports"][0]["name"],
    )


def test_autoscaler_scales_the_deployment_on_waiting_requests_the_service_reports(scraped_names):
    autoscaler = kubernetes_object("HorizontalPodAutoscaler", "llm-service")
    [metric] = autoscaler["spec"]["metrics"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"], metric["type"], metric["pods"]["metric"]["name"]) == (
        "Deployment", "llm-service", "Pods", "llm_num_requests_waiting",
    )
    assert metric["pods"]["metric"]["name"] in scraped_names


def test_postgres_service_selects_the_statefulset_that_reads_its_password_from_a_secret():
    service = kubernetes_object("Service", "llm-postgres")
    statefulset = kubernetes_object("StatefulSet", "llm-postgres")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    password = {variable["name"]: variable for variable in container["env"]}["POSTGRES_PASSWORD"]
    assert (service["spec"]["selector"], statefulset["spec"]["serviceName"], "secretKeyRef" in password["valueFrom"]) == (
        statefulset["spec"]["template"]["metadata"]["labels"], "llm-postgres", True,
    )
