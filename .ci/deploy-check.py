"""The checks of .ci/deploy-check that need a program: run by it, not alone.

    deploy-check.py dockerfile  deploy/Dockerfile .dockerignore
    deploy-check.py kustomize-refs deploy/kubernetes
    deploy-check.py kubernetes  ROOT_NAME RENDERED.yaml
    deploy-check.py compose     CONFIG.json
    deploy-check.py env-names   (reads deploy/ and src/)
    deploy-check.py dashboard   deploy/grafana/roster-dashboard.json

Each prints what it checked and exits 1 with the list of problems if any.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

GRPC_PORT = 50051
METRICS_PORT = 9464
HEALTH_NAMES = {"", "roster.v1.UserService", "roster.v1.LeaderboardService", "liveness"}

# Memory budget (deploy/kubernetes/base/deployment.yaml explains it): base
# 60 MB, the board copy for 100,000 ranked users twice (a reload), 19 MiB per
# hash slot.
MB = 1000 * 1000
MIB = 1024 * 1024
BASE_BYTES = 60 * MB
BOARD_COPY_BYTES = 50 * MB
HASH_SLOT_BYTES = 19 * MIB

# Metrics Roster exports (go-grpc-prometheus names and Roster's own).
COUNTERS_AND_GAUGES = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_msg_received_total",
    "grpc_server_msg_sent_total",
    "roster_cache_lookups_total",
    "roster_hash_slots_busy",
    "roster_hash_slots",
    "roster_refusals_total",
    "roster_db_write_errors_total",
    "roster_board_reads_total",
    "roster_cache_invalidations_pending",
    "process_resident_memory_bytes",
}
HISTOGRAMS = {"grpc_server_handling_seconds", "roster_hash_queue_wait_seconds"}
KNOWN_METRICS = COUNTERS_AND_GAUGES | {
    h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}

# Environment variables the deployment files may set that Roster does not
# read through clap: the OpenTelemetry SDK reads this one itself.
ENV_READ_ELSEWHERE = {"OTEL_EXPORTER_OTLP_ENDPOINT"}
# Flags announced for issue 11 whose code may not be on this branch yet.
ENV_ANNOUNCED = {"ROSTER_METRICS_ADDR", "ROSTER_MIGRATE"}

problems: list[str] = []


def problem(message: str) -> None:
    problems.append(message)


def finish(what: str) -> None:
    if problems:
        print(f"FAIL {what}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"ok   {what}")


def parse_duration(text: str) -> float:
    """Seconds in a humantime duration such as 5s, 500ms, 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", "", text).strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def parse_quantity(text: str) -> float:
    """Bytes in a Kubernetes memory quantity such as 256Mi or 300M."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    factor = {
        None: 1, "Ki": 1024, "Mi": MIB, "Gi": 1024**3, "Ti": 1024**4,
        "k": 1000, "M": MB, "G": 1000**3, "T": 1000**4,
    }[m.group(2)]
    return float(m.group(1)) * factor


# --------------------------------------------------------------- Dockerfile


def check_dockerfile(dockerfile: str, dockerignore: str) -> None:
    text = Path(dockerfile).read_text()
    # Join continuation lines, drop comments.
    logical = re.sub(r"\\\n", " ", text)
    lines = [
        ln.strip() for ln in logical.splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    stages = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    if len(stages) < 2:
        problem("Dockerfile is not multi-stage")
    final = lines[stages[-1]:] if stages else lines
    final_from = final[0].split()[1] if final else ""
    if "distroless" not in final_from and "scratch" not in final_from:
        problem(f"runtime image {final_from!r} is not distroless or scratch")
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem("the runtime stage does not end on a non-root USER")
    exposed = {
        p.split("/")[0] for ln in final if ln.upper().startswith("EXPOSE ")
        for p in ln.split()[1:]
    }
    for port in (GRPC_PORT, METRICS_PORT):
        if str(port) not in exposed:
            problem(f"runtime stage does not EXPOSE {port}")
    entry = [ln for ln in final if ln.upper().startswith("ENTRYPOINT ")]
    if not entry:
        problem("no ENTRYPOINT in the runtime stage")
    else:
        try:
            argv = json.loads(entry[-1][len("ENTRYPOINT "):])
        except json.JSONDecodeError:
            argv = None
        if not (isinstance(argv, list) and argv and argv[0].endswith("/roster")):
            problem(f"ENTRYPOINT is not the roster binary in exec form: {entry[-1]}")
    if not re.search(r"cargo build --release[^\n]*--bin roster", logical):
        problem("no `cargo build --release ... --bin roster`")
    if "cargo chef cook" not in logical:
        problem("no cached dependency layer (`cargo chef cook`)")

    ignored = {
        ln.strip().rstrip("/").lstrip("/")
        for ln in Path(dockerignore).read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    }
    if "target" not in ignored:
        problem(".dockerignore does not keep target/ out of the build context")
    # The build needs these; an ignore rule that drops one breaks the image.
    for needed in ("Cargo.toml", "Cargo.lock", "build.rs", "src", "proto", "migration"):
        if needed in ignored:
            problem(f".dockerignore drops {needed}, which the build needs")
    finish("Dockerfile structure and .dockerignore")


# --------------------------------------------------------------- kustomize


def check_kustomize_refs(root: str) -> None:
    """Every path a kustomization names exists, and is local."""
    count = 0
    for kfile in sorted(Path(root).rglob("kustomization.yaml")):
        count += 1
        base = kfile.parent
        doc = yaml.safe_load(kfile.read_text()) or {}
        kind = doc.get("kind", "Kustomization")
        if kind not in ("Kustomization", "Component"):
            problem(f"{kfile}: unknown kind {kind!r}")

        def need(entry: str, what: str, directory_ok: bool) -> None:
            if re.match(r"^[a-z]+://|^github\.com/|^git@", entry):
                problem(f"{kfile}: {what} {entry!r} is remote (the check runs offline)")
                return
            target = (base / entry).resolve()
            if target.is_dir():
                if not directory_ok:
                    problem(f"{kfile}: {what} {entry!r} is a directory")
                elif not (target / "kustomization.yaml").is_file():
                    problem(f"{kfile}: {what} {entry!r} has no kustomization.yaml")
            elif not target.is_file():
                problem(f"{kfile}: {what} {entry!r} does not exist")

        for entry in doc.get("resources", []) or []:
            need(entry, "resource", True)
        for entry in doc.get("components", []) or []:
            need(entry, "component", True)
        for patch in doc.get("patches", []) or []:
            if "path" in patch:
                need(patch["path"], "patch", False)
        for entry in doc.get("patchesStrategicMerge", []) or []:
            problem(f"{kfile}: patchesStrategicMerge is deprecated; use patches")
        for gen in (doc.get("configMapGenerator", []) or []) + (doc.get("secretGenerator", []) or []):
            for entry in (gen.get("files", []) or []) + (gen.get("envs", []) or []):
                need(entry.split("=", 1)[-1], "generator file", False)
        if doc.get("secretGenerator"):
            for gen in doc["secretGenerator"]:
                if gen.get("literals"):
                    problem(f"{kfile}: secretGenerator {gen.get('name')} inlines literals")
    if count == 0:
        problem(f"no kustomization.yaml under {root}")
    finish(f"kustomization references ({count} files)")


def labels_match(selector: dict, labels: dict) -> bool:
    want = (selector or {}).get("matchLabels", selector or {})
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def check_kubernetes(name: str, rendered: str) -> None:
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    def one(kind: str, component: str | None = None) -> dict | None:
        found = [
            d for d in by_kind.get(kind, [])
            if component is None
            or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ]
        if len(found) != 1:
            problem(f"{name}: expected one {kind}" + (f" ({component})" if component else "")
                    + f", found {len(found)}")
            return None
        return found[0]

    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    for s in by_kind.get("Secret", []):
        if s.get("data") or s.get("stringData"):
            problem(f"{name}: Secret {s['metadata']['name']} is inlined in the manifests")
    for cm_name, data in config_maps.items():
        for key in ("DATABASE_URL", "REDIS_URL"):
            if key in data:
                problem(f"{name}: ConfigMap {cm_name} holds {key}; it belongs in a Secret")

    def env_of(container: dict) -> dict:
        env: dict[str, object] = {}
        for src in container.get("envFrom", []) or []:
            ref = src.get("configMapRef", {}).get("name")
            if ref is not None:
                if ref not in config_maps:
                    problem(f"{name}: container {container['name']} reads ConfigMap {ref}, "
                            "which is not rendered")
                env.update(config_maps.get(ref, {}))
        for e in container.get("env", []) or []:
            env[e["name"]] = e.get("value", e.get("valueFrom"))
        return env

    def check_pod(owner: str, pod: dict) -> None:
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problem(f"{owner}: pod securityContext.runAsNonRoot is not true")
        if psc.get("runAsUser") == 0:
            problem(f"{owner}: pod runs as user 0")
        for c in (pod.get("initContainers") or []) + pod.get("containers", []):
            where = f"{owner} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problem(f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                problem(f"{where}: capabilities are not all dropped")
            res = c.get("resources", {})
            if not res.get("requests", {}).get("memory") or not res.get("limits", {}).get("memory"):
                problem(f"{where}: no memory request and limit")
            for e in c.get("env", []) or []:
                if e["name"] in ("DATABASE_URL", "REDIS_URL"):
                    if "value" in e or "secretKeyRef" not in (e.get("valueFrom") or {}):
                        problem(f"{where}: {e['name']} does not come from a Secret")

    # ---- Deployment
    dep = one("Deployment")
    pod_labels: dict = {}
    if dep:
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        pod_labels = spec["template"]["metadata"].get("labels", {})
        check_pod(f"{name}: Deployment {dep['metadata']['name']}", pod)
        if not labels_match(spec.get("selector", {}), pod_labels):
            problem(f"{name}: Deployment selector does not match its pod labels")
        main = [c for c in pod["containers"] if c["name"] == "roster"]
        if len(main) != 1:
            problem(f"{name}: no container named roster in the Deployment")
        else:
            c = main[0]
            env = env_of(c)
            for key in ("DATABASE_URL", "REDIS_URL"):
                if not isinstance(env.get(key), dict):
                    problem(f"{name}: the roster container has no {key} from a Secret")
            if env.get("ROSTER_MIGRATE") != "off":
                problem(f"{name}: serving pods must run with ROSTER_MIGRATE=off")
            if not str(env.get("ROSTER_LISTEN_ADDR", "")).endswith(f":{GRPC_PORT}") or \
                    str(env.get("ROSTER_LISTEN_ADDR", "")).startswith("127."):
                problem(f"{name}: ROSTER_LISTEN_ADDR must listen on all interfaces, port {GRPC_PORT}")
            if not str(env.get("ROSTER_METRICS_ADDR", "")).endswith(f":{METRICS_PORT}"):
                problem(f"{name}: ROSTER_METRICS_ADDR is not set to port {METRICS_PORT}")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            if ports.get("grpc") != GRPC_PORT or ports.get("metrics") != METRICS_PORT:
                problem(f"{name}: container ports must be grpc={GRPC_PORT}, metrics={METRICS_PORT}: {ports}")
            for probe_name in ("livenessProbe", "readinessProbe"):
                grpc = (c.get(probe_name) or {}).get("grpc")
                if not grpc:
                    problem(f"{name}: {probe_name} is not a native gRPC probe")
                elif grpc.get("port") != GRPC_PORT or grpc.get("service", "") not in HEALTH_NAMES:
                    problem(f"{name}: {probe_name} {grpc} is not port {GRPC_PORT} with a Roster health name")
            try:
                delay = parse_duration(str(env.get("ROSTER_SHUTDOWN_DELAY", "0s")))
                drain = parse_duration(str(env.get("ROSTER_DRAIN_DEADLINE", "10s")))
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if delay <= 0:
                    problem(f"{name}: ROSTER_SHUTDOWN_DELAY is 0: calls may reach a pod that stopped accepting")
                if delay + drain >= grace:
                    problem(f"{name}: shutdown delay {delay}s + drain deadline {drain}s "
                            f"is not below terminationGracePeriodSeconds {grace}")
            except ValueError as e:
                problem(f"{name}: {e}")
            slots = int(env.get("ROSTER_HASH_CONCURRENCY", "0") or 0)
            if slots <= 0:
                problem(f"{name}: ROSTER_HASH_CONCURRENCY is not pinned, so memory follows the node's cores")
            else:
                budget = BASE_BYTES + 2 * BOARD_COPY_BYTES + slots * HASH_SLOT_BYTES
                request = parse_quantity(c["resources"]["requests"]["memory"])
                limit = parse_quantity(c["resources"]["limits"]["memory"])
                if request < budget:
                    problem(f"{name}: memory request {request / MIB:.0f}Mi is below the budget "
                            f"{budget / MIB:.0f}Mi for {slots} hash slots and 100,000 ranked users")
                if limit < request:
                    problem(f"{name}: memory limit below request")
        init = [c for c in pod.get("initContainers") or [] if c.get("args", [])[:1] == ["migrate"]]
        if not init or "--check" not in init[0].get("args", []):
            problem(f"{name}: no init container waiting with `roster migrate --check`")

    # ---- migration Job
    job = one("Job", "migration")
    if job:
        pod = job["spec"]["template"]["spec"]
        check_pod(f"{name}: Job {job['metadata']['name']}", pod)
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            problem(f"{name}: migration Job restartPolicy")
        if [c.get("args") for c in pod["containers"]] != [["migrate"]]:
            problem(f"{name}: the migration Job must run exactly `roster migrate`")
        if not isinstance(env_of(pod["containers"][0]).get("DATABASE_URL"), dict):
            problem(f"{name}: the migration Job has no DATABASE_URL from a Secret")

    # ---- Services
    services = [s for s in by_kind.get("Service", []) if labels_match(s["spec"].get("selector", {}), pod_labels)]
    if not services:
        problem(f"{name}: no Service selects the Deployment's pods")
    for svc in services:
        names = {p["name"]: p for p in svc["spec"]["ports"]}
        if "grpc" not in names or names["grpc"]["port"] != GRPC_PORT:
            problem(f"{name}: Service {svc['metadata']['name']} has no port grpc={GRPC_PORT}")
    if not any("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in services):
        problem(f"{name}: no Service port named metrics")

    # ---- PodDisruptionBudget
    pdb = one("PodDisruptionBudget")
    if pdb and not labels_match(pdb["spec"].get("selector", {}), pod_labels):
        problem(f"{name}: the PodDisruptionBudget does not select the Deployment's pods")

    # ---- NetworkPolicy
    policies = [p for p in by_kind.get("NetworkPolicy", [])
                if labels_match(p["spec"].get("podSelector", {}), pod_labels)]
    if len(policies) != 1:
        problem(f"{name}: expected one NetworkPolicy for the server pods, found {len(policies)}")
    else:
        spec = policies[0]["spec"]
        if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
            problem(f"{name}: the NetworkPolicy must restrict Ingress and Egress")
        grpc_rule = metrics_rule = False
        for rule in spec.get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not ports or not ports <= {"grpc", GRPC_PORT, "metrics", METRICS_PORT}:
                problem(f"{name}: ingress rule opens {ports or 'every port'}")
            sources = rule.get("from", [])
            if not sources:
                problem(f"{name}: ingress rule allows every source")
            if ports & {"grpc", GRPC_PORT}:
                grpc_rule = all("podSelector" in s and s["podSelector"].get("matchLabels") for s in sources)
            if ports & {"metrics", METRICS_PORT}:
                metrics_rule = all("namespaceSelector" in s for s in sources)
        if not grpc_rule:
            problem(f"{name}: no gRPC ingress rule restricted to labelled client pods")
        if not metrics_rule:
            problem(f"{name}: no metrics ingress rule restricted to a namespace")
        egress_ports = {(p.get("port"), p.get("protocol", "TCP"))
                        for rule in spec.get("egress", []) for p in rule.get("ports", [])}
        for needed in ((53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP")):
            if needed not in egress_ports:
                problem(f"{name}: no egress to port {needed[0]}/{needed[1]}")
        if any(not rule.get("ports") for rule in spec.get("egress", [])):
            problem(f"{name}: an egress rule allows every port")

    # ---- ServiceMonitor (optional component)
    for sm in by_kind.get("ServiceMonitor", []):
        matched = [s for s in by_kind.get("Service", [])
                   if labels_match(sm["spec"].get("selector", {}), s["metadata"].get("labels", {}))]
        if len(matched) != 1:
            problem(f"{name}: ServiceMonitor {sm['metadata']['name']} selects {len(matched)} Services, not 1")
        for ep in sm["spec"].get("endpoints", []):
            if matched and ep.get("port") not in {p["name"] for p in matched[0]["spec"]["ports"]}:
                problem(f"{name}: ServiceMonitor endpoint port {ep.get('port')} is not a Service port name")

    finish(f"kubernetes policy: {name} ({len(docs)} objects: "
           + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items())) + ")")


# --------------------------------------------------------------- compose


def check_compose(config_json: str) -> None:
    cfg = json.loads(Path(config_json).read_text())
    services = cfg.get("services", {})
    expected = {"postgres", "redis", "migrate", "roster"}
    if set(services) != expected:
        problem(f"services are {sorted(services)}, expected {sorted(expected)}")
        finish("compose.yaml")
    for svc in ("postgres", "redis"):
        if not services[svc].get("healthcheck", {}).get("test"):
            problem(f"{svc} has no healthcheck")
    for svc in ("migrate", "roster"):
        build = services[svc].get("build", {})
        if build.get("dockerfile") != "deploy/Dockerfile" or not (Path(build.get("context", "")) / "Cargo.toml").is_file():
            problem(f"{svc} is not built from deploy/Dockerfile with the repository root as context")
    if services["migrate"].get("command") != ["migrate"]:
        problem("the migrate service does not run `roster migrate`")
    if services["migrate"].get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
        problem("migrate does not wait for a healthy postgres")
    deps = services["roster"].get("depends_on", {})
    if deps.get("migrate", {}).get("condition") != "service_completed_successfully":
        problem("roster does not wait for migrate to complete successfully")
    for svc in ("postgres", "redis"):
        if deps.get(svc, {}).get("condition") != "service_healthy":
            problem(f"roster does not wait for a healthy {svc}")
    env = services["roster"].get("environment", {})
    if env.get("ROSTER_MIGRATE") != "off":
        problem("roster should run with ROSTER_MIGRATE=off (migrate does it)")
    if env.get("ROSTER_LISTEN_ADDR") != f"0.0.0.0:{GRPC_PORT}":
        problem("roster does not listen on all interfaces in its container")
    for svc in ("migrate", "roster"):
        url = services[svc].get("environment", {}).get("DATABASE_URL", "")
        if not url.startswith("postgres://") or "@postgres:" not in url:
            problem(f"{svc}: DATABASE_URL does not point at the postgres service")
    if not env.get("REDIS_URL", "").startswith("redis://redis:"):
        problem("roster: REDIS_URL does not point at the redis service")
    published = {int(p.get("target", 0)) for p in services["roster"].get("ports", [])}
    if GRPC_PORT not in published:
        problem(f"roster does not publish {GRPC_PORT}")
    finish(f"compose.yaml semantics ({', '.join(sorted(services))})")


# --------------------------------------------------------------- env names


def check_env_names() -> None:
    """Every ROSTER_*/DATABASE_URL/REDIS_URL/RUST_LOG the files set is read by Roster."""
    src = "\n".join(p.read_text() for p in Path("src").rglob("*.rs"))
    known = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', src))
    used: dict[str, set[str]] = {}
    for f in sorted(Path("deploy").rglob("*")):
        if f.suffix in (".yaml", ".yml") or f.name == "Dockerfile":
            for m in re.finditer(r"\b(ROSTER_[A-Z0-9_]+|DATABASE_URL|REDIS_URL|RUST_LOG|OTEL_[A-Z0-9_]+)\b",
                                 f.read_text()):
                used.setdefault(m.group(1), set()).add(str(f))
    pending = []
    for var, files in sorted(used.items()):
        if var in known or var in ENV_READ_ELSEWHERE:
            continue
        if var in ENV_ANNOUNCED:
            pending.append(var)
            continue
        problem(f"{var} (in {', '.join(sorted(files))}) is not a setting Roster reads")
    if pending:
        print(f"note announced settings not in src/ yet: {', '.join(pending)}")
    finish(f"environment variable names ({len(used)} used, checked against src/)")


# --------------------------------------------------------------- dashboard

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan", "le",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    e = re.sub(r"\$\{?\w+\}?", " ", expr)             # Grafana variables
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)          # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                   # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"(?<![\w.])\d+(ms|s|m|h|d|w|y)\b", " ", e)  # durations (offset 5m)
    e = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)  # numbers
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue                                    # a function
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def walk_panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(path: str) -> None:
    try:
        dash = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        problem(f"{path} is not JSON: {e}")
        finish("dashboard")
        return
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds_var = [v for v in variables.values() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if len(ds_var) != 1:
        problem("no Prometheus datasource template variable")
    ds_refs = {f"${{{v['name']}}}" for v in ds_var} | {f"${v['name']}" for v in ds_var}

    def check_ds(where: str, ds) -> None:
        uid = ds.get("uid") if isinstance(ds, dict) else ds
        if uid not in ds_refs:
            problem(f"{where}: datasource {ds!r} is not the template variable")

    exprs: list[tuple[str, str]] = []
    for v in variables.values():
        if v.get("type") == "query":
            check_ds(f"variable {v['name']}", v.get("datasource"))
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else q or ""
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            if not m:
                problem(f"variable {v['name']}: query {q!r} is not label_values(SELECTOR, LABEL)")
            else:
                exprs.append((f"variable {v['name']}", m.group(1)))
    ids = set()
    for p in walk_panels(dash.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problem(f"{where}: duplicate id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not g or g.get("x", 0) + g.get("w", 0) > 24:
            problem(f"{where}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        check_ds(where, p.get("datasource"))
        if not p.get("targets"):
            problem(f"{where}: no queries")
        for t in p.get("targets", []):
            check_ds(f"{where} target {t.get('refId')}", t.get("datasource"))
            exprs.append((where, t.get("expr", "")))
    used: set[str] = set()
    for where, expr in exprs:
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problem(f"{where}: unbalanced brackets in {expr!r}")
        names = metric_names(expr)
        if not names:
            problem(f"{where}: {expr!r} selects no metric")
        for n in sorted(names - KNOWN_METRICS):
            problem(f"{where}: {n} is not a metric Roster exports")
        used |= names
    joined = "\n".join(e for _, e in exprs)
    wanted = {
        "request rate": r"rate\(grpc_server_started_total",
        "errors by code": r"by \([^)]*grpc_code[^)]*\) \(rate\(grpc_server_handled_total",
        "latency quantiles per method": r"histogram_quantile\(0\.\d+, sum by \([^)]*\ble\b[^)]*grpc_method[^)]*\) \(rate\(grpc_server_handling_seconds_bucket",
        "cache hit ratio": r'roster_cache_lookups_total\{[^}]*result="hit"',
        "hash queue": r"roster_hash_queue_wait_seconds_bucket",
    }
    for what, pattern in wanted.items():
        if not re.search(pattern, joined):
            problem(f"no panel for {what}")
    if re.search(r'"uid":\s*"(?!\$\{?datasource|roster-overview|-- Grafana --)', Path(path).read_text()):
        problem("a hard-coded uid other than the dashboard's own")
    finish(f"dashboard ({len(ids)} panels, {len(exprs)} queries over {len(used)} metric names)")


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "dockerfile": check_dockerfile,
        "kustomize-refs": check_kustomize_refs,
        "kubernetes": check_kubernetes,
        "compose": check_compose,
        "env-names": check_env_names,
        "dashboard": check_dashboard,
    }[cmd](*args)


if __name__ == "__main__":
    main()
