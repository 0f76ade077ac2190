//! The Helm chart `helm/ratelimiter`: `helm lint` and `helm template` for the default values
//! and every values file under `ci/`, every rendered object validated by
//! `kubernetes-validate --strict` for every Kubernetes minor version the chart claims, and
//! the behaviours the chart promises asserted on the rendered objects: the probes and ports
//! are the binary's own (the binary is started with the chart's arguments and answers the
//! probe paths), the grace period covers preStop + shutdown delay + drain, a rolling update
//! never removes a ready pod first, the pods are locked down, a typo in the values fails,
//! and the Istio toggles render the manifests shipped in `envoy/istio/`.
//!
//! Needs Helm and kubernetes-validate: `make setup` installs them into `.tools/` (or point
//! `HELM_BIN` / `KUBERNETES_VALIDATE_BIN` at them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Service, temp_dir};
use serde_json::Value;

/// Objects whose schemas are CRDs, which kubernetes-validate has not: checked here instead.
const CRD_KINDS: &[&str] = &[
    "AuthorizationPolicy",
    "EnvoyFilter",
    "PrometheusRule",
    "ServiceMonitor",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("helm/ratelimiter")
}

/// `$var`, or `<repo>/<default>`; panics saying to run `make setup` when it is not there.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| repo().join(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: run `make setup` (scripts/setup.sh installs it into .tools/), or set {var}",
        path.display()
    );
    path
}

fn helm() -> Command {
    Command::new(tool("HELM_BIN", ".tools/bin/helm"))
}

fn kubernetes_validate() -> Command {
    Command::new(tool(
        "KUBERNETES_VALIDATE_BIN",
        ".tools/lint-venv/bin/kubernetes-validate",
    ))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The chart's `kubeVersion: ">=1.X.0-0"`: X.
fn min_claimed_minor() -> u32 {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    let claim = chart_yaml["kubeVersion"].as_str().unwrap();
    let minor = claim.strip_prefix(">=1.").and_then(|r| r.split('.').next());
    minor
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("kubeVersion {claim:?} is not of the form >=1.X.0-0"))
}

/// The newest Kubernetes minor version kubernetes-validate knows (its default `-k`).
fn newest_known_minor() -> u32 {
    let out = kubernetes_validate().arg("--help").output().unwrap();
    let help = text(&out);
    let default = help
        .split("Defaults to 1.")
        .nth(1)
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.parse().ok());
    default.unwrap_or_else(|| panic!("no default version in:\n{help}"))
}

/// `default` and every values file under `ci/`, by name.
fn value_sets() -> Vec<(String, Option<PathBuf>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "ci/ has only {files:?}");
    let mut sets = vec![("default".to_owned(), None)];
    sets.extend(files.into_iter().map(|f| {
        (
            f.file_stem().unwrap().to_string_lossy().into_owned(),
            Some(f),
        )
    }));
    sets
}

/// `helm template ratelimiter <chart> --namespace ratelimiter` with `values` and `extra`.
fn template(values: Option<&Path>, extra: &[&str]) -> Output {
    let mut cmd = helm();
    cmd.args(["template", "ratelimiter"])
        .arg(chart())
        .args(["--namespace", "ratelimiter"])
        .args(["--kube-version", &format!("1.{}.0", min_claimed_minor())]);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    cmd.args(extra).output().unwrap()
}

/// The rendered YAML of one value set; panics when the render fails.
fn render_text(values: Option<&Path>) -> String {
    let out = template(values, &[]);
    assert!(
        out.status.success(),
        "helm template {values:?}:\n{}",
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render(values: Option<&Path>) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&render_text(values)).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "{kind}s: {found:?}");
    found[0]
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The container's `--flag=value` arguments.
fn flags(deployment: &Value) -> BTreeMap<String, String> {
    container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn secs(flags: &BTreeMap<String, String>, name: &str) -> u64 {
    flags
        .get(name)
        .unwrap_or_else(|| panic!("{name} not in {flags:?}"))
        .parse()
        .unwrap()
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn container_port(deployment: &Value, name: &str) -> u64 {
    let ports = container(deployment)["ports"].as_array().unwrap();
    let port = ports.iter().find(|p| p["name"] == name);
    port.unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn helm_lint_passes_for_every_values_file() {
    for (name, values) in value_sets() {
        let mut cmd = helm();
        cmd.args(["lint", "--strict"]).arg(chart());
        if let Some(v) = &values {
            cmd.arg("-f").arg(v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "helm lint ({name}):\n{}", text(&out));
    }
}

#[test]
fn every_rendered_object_is_valid_for_every_claimed_kubernetes_version() {
    let dir = temp_dir("helm-rendered");
    let mut files = Vec::new();
    for (name, values) in value_sets() {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, render_text(values.as_deref())).unwrap();
        files.push(file);
    }
    let (min, newest) = (min_claimed_minor(), newest_known_minor());
    assert!(
        min <= newest,
        "the chart claims 1.{min}, the schemas end at 1.{newest}"
    );
    for minor in min..=newest {
        let out = kubernetes_validate()
            .args(["--strict", "--quiet", "-k", &format!("1.{minor}.0")])
            .args(&files)
            .output()
            .unwrap();
        let said = text(&out);
        assert!(out.status.success(), "Kubernetes 1.{minor}:\n{said}");
        for line in said.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.starts_with("WARN")
                    && line.contains("Couldn't find schema for kind")
                    && CRD_KINDS
                        .iter()
                        .any(|k| line.contains(&format!("kind {k} "))),
                "Kubernetes 1.{minor}: {line}"
            );
        }
    }
}

#[test]
fn ports_probes_and_flags_are_the_binarys_own() {
    let help = text(
        &Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
            .arg("--help")
            .output()
            .unwrap(),
    );
    for (name, values) in value_sets() {
        let objects = render(values.as_deref());
        let deployment = one(&objects, "Deployment");
        let flags = flags(deployment);
        for flag in flags.keys() {
            assert!(
                help.contains(&format!("{flag} ")),
                "{name}: {flag} is not a flag of the binary"
            );
        }
        assert_eq!(
            port_of(&flags["--http-addr"]),
            container_port(deployment, "http"),
            "{name}"
        );
        assert_eq!(
            port_of(&flags["--grpc-addr"]),
            container_port(deployment, "grpc"),
            "{name}"
        );
        let c = container(deployment);
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
        ] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{name}: {probe}");
            assert_eq!(c[probe]["httpGet"]["port"], "http", "{name}: {probe}");
        }
        let service = find(&objects, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == "ratelimiter")
            .unwrap();
        let ports = service["spec"]["ports"].as_array().unwrap();
        for (port, protocol) in [("http", "http"), ("grpc", "grpc")] {
            let p = ports.iter().find(|p| p["name"] == port).unwrap();
            assert_eq!(p["targetPort"], port, "{name}");
            assert_eq!(p["appProtocol"], protocol, "{name}");
        }
        // The config is the mounted ConfigMap, as a directory (a subPath mount never sees the
        // kubelet's `..data` swap), and the binary accepts it.
        let mount = &c["volumeMounts"].as_array().unwrap()[0];
        assert_eq!(
            mount["mountPath"].as_str().unwrap(),
            flags["--config"],
            "{name}"
        );
        assert!(mount.get("subPath").is_none(), "{name}");
        let config = temp_dir(&format!("helm-config-{name}"));
        for (file, text) in one(&objects, "ConfigMap")["data"].as_object().unwrap() {
            std::fs::write(config.join(file), text.as_str().unwrap()).unwrap();
        }
        let out = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
            .arg("validate")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: the chart's config:\n{}",
            text(&out)
        );
    }
}

/// The binary started with the default values' arguments (addresses and config path
/// replaced by the test's) answers the probe paths.
#[tokio::test]
async fn the_binary_runs_with_the_charts_arguments_and_answers_the_probes() {
    let objects = render(None);
    let deployment = one(&objects, "Deployment");
    let config = temp_dir("helm-run");
    for (file, text) in one(&objects, "ConfigMap")["data"].as_object().unwrap() {
        std::fs::write(config.join(file), text.as_str().unwrap()).unwrap();
    }
    let replaced = ["--config", "--http-addr", "--grpc-addr", "--log-format"];
    let args: Vec<String> = container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .filter(|a| !replaced.iter().any(|r| a.starts_with(&format!("{r}="))))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = Service::start(&config, &args);
    let client = reqwest::Client::new();
    let c = container(deployment);
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        let r = client.get(svc.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe} {path}");
    }
}

#[test]
fn a_replaced_pod_drains_within_its_grace_period_and_never_before_its_successor() {
    for (name, values) in value_sets() {
        let objects = render(values.as_deref());
        let deployment = one(&objects, "Deployment");
        let strategy = &deployment["spec"]["strategy"];
        assert_eq!(strategy["type"], "RollingUpdate", "{name}");
        assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0, "{name}");
        let flags = flags(deployment);
        let pod = &deployment["spec"]["template"]["spec"];
        let pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let needed = pre_stop + secs(&flags, "--shutdown-delay") + secs(&flags, "--drain-timeout");
        assert!(
            grace >= needed,
            "{name}: grace {grace} < preStop + delay + drain = {needed}"
        );
    }
    let out = template(
        None,
        &["--set", "shutdown.terminationGracePeriodSeconds=10"],
    );
    assert!(
        !out.status.success(),
        "a grace period below the drain must fail"
    );
    assert!(
        text(&out).contains("terminationGracePeriodSeconds"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_pod_runs_locked_down() {
    for (name, values) in value_sets() {
        let objects = render(values.as_deref());
        let pods = find(&objects, "Deployment")
            .into_iter()
            .chain(find(&objects, "StatefulSet"))
            .map(|o| &o["spec"]["template"]["spec"]);
        for pod in pods {
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(
                    c["resources"]["requests"].is_object(),
                    "{name}: no requests"
                );
            }
        }
    }
}

#[test]
fn a_typo_in_the_values_fails_the_render() {
    for typo in [
        "replicaCont=3",
        "redis.urll=redis://x:6379",
        "autoscaling.minReplica=2",
    ] {
        let out = template(None, &["--set", typo]);
        assert!(!out.status.success(), "--set {typo} rendered");
        assert!(
            text(&out).contains("additional properties"),
            "{typo}: {}",
            text(&out)
        );
    }
    let out = template(None, &["--set", "redis.url=http://redis:6379"]);
    assert!(!out.status.success(), "a URL that is not Redis's rendered");
}

#[test]
fn the_value_sets_render_what_they_name() {
    let sets: BTreeMap<String, Vec<Value>> = value_sets()
        .into_iter()
        .map(|(name, v)| (name, render(v.as_deref())))
        .collect();
    let default = &sets["default"];
    assert!(find(default, "StatefulSet").is_empty());
    one(default, "HorizontalPodAutoscaler");
    one(default, "PodDisruptionBudget");
    assert!(
        one(default, "Deployment")["spec"].get("replicas").is_none(),
        "the HPA owns it"
    );

    let off = &sets["autoscaling-off-values"];
    assert!(find(off, "HorizontalPodAutoscaler").is_empty());
    assert_eq!(one(off, "Deployment")["spec"]["replicas"], 3);

    let custom = one(&sets["custom-metric-values"], "HorizontalPodAutoscaler");
    let metrics = custom["spec"]["metrics"].as_array().unwrap();
    assert!(metrics.iter().any(|m| m["type"] == "Pods"), "{metrics:?}");

    let external = one(&sets["external-redis-values"], "Deployment");
    let env = container(external)["env"].as_array().unwrap();
    let url = env
        .iter()
        .find(|e| e["name"] == "RATELIMITER_REDIS_URL")
        .unwrap();
    assert_eq!(
        url["valueFrom"]["secretKeyRef"]["name"],
        "ratelimiter-redis-url"
    );
}

#[test]
fn the_bundled_redis_is_persistent_probed_and_its_password_a_secret() {
    let values = chart().join("ci/redis-statefulset-values.yaml");
    let rendered = render_text(Some(&values));
    let objects: Vec<Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let redis = one(&objects, "StatefulSet");
    assert_eq!(redis["spec"]["replicas"], 1, "one primary: exact limits");
    assert!(redis["spec"]["volumeClaimTemplates"].is_array());
    let c = &redis["spec"]["template"]["spec"]["containers"][0];
    assert!(c["readinessProbe"].is_object() && c["livenessProbe"].is_object());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let deployment = one(&objects, "Deployment");
    let env = container(deployment)["env"].as_array().unwrap();
    let password = env.iter().find(|e| e["name"] == "REDIS_PASSWORD").unwrap();
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["name"],
        "ratelimiter-redis"
    );
    let url = env
        .iter()
        .find(|e| e["name"] == "RATELIMITER_REDIS_URL")
        .unwrap();
    assert_eq!(
        url["value"],
        "redis://:$(REDIS_PASSWORD)@ratelimiter-redis:6379"
    );
    let plain = serde_json::to_string(deployment).unwrap();
    assert!(
        !plain.contains("ci-only-not-a-secret"),
        "the password is in the Deployment"
    );
    one(&objects, "Secret");
    assert_eq!(find(&objects, "NetworkPolicy").len(), 2);
}

/// The bundled Redis's container command, rendered with its port at `port`, is run here as a
/// kubelet would run it (with `/data` moved to a scratch directory): it serves, asks for the
/// password, and the password is in neither its arguments nor the manifest's.
#[test]
fn the_bundled_redis_takes_its_password_on_stdin_not_in_its_arguments() {
    const PASSWORD: &str = "ci-only-not-a-secret";
    let port = common::redis_server::free_port();
    let values = chart().join("ci/redis-statefulset-values.yaml");
    let set = format!("redis.statefulset.port={port}");
    let out = template(Some(&values), &["--set", &set]);
    assert!(out.status.success(), "{}", text(&out));
    let objects: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let c = &one(&objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0];
    let argv = format!("{}{}", c["command"], c["args"]);
    assert!(
        !argv.contains(PASSWORD) && !argv.contains("$(REDIS_PASSWORD)"),
        "{argv}"
    );
    assert_eq!(c["command"], serde_json::json!(["sh", "-c"]));
    let data = temp_dir("helm-redis-data");
    let script = c["args"][0]
        .as_str()
        .unwrap()
        .replace("--dir /data", &format!("--dir {}", data.display()));
    let mut redis = Command::new("sh")
        .args(["-c", &script])
        .env("REDIS_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cli = |auth: Option<&str>| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &port.to_string(), "ping"]);
        if let Some(password) = auth {
            cmd.env("REDISCLI_AUTH", password);
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_owned()
    };
    let started = std::time::Instant::now();
    while cli(Some(PASSWORD)) != "PONG" {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(cli(None).contains("NOAUTH"), "a password is required");
    // `exec`: the shell became redis-server, which holds no password in its arguments.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", redis.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.starts_with("redis-server") && !cmdline.contains(PASSWORD),
        "{cmdline}"
    );
    Command::new("kill")
        .arg(redis.id().to_string())
        .status()
        .unwrap();
    assert!(
        redis.wait().unwrap().success(),
        "SIGTERM shuts it down cleanly"
    );
    // The image entrypoint's umask, kept: what Redis writes is its own alone.
    let written: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert!(!written.is_empty(), "Redis wrote nothing");
    for entry in written {
        use std::os::unix::fs::PermissionsExt;
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}

/// The shipped manifest `envoy/istio/<file>` without its comments.
fn shipped(file: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("envoy/istio").join(file)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_istio_toggles_render_the_shipped_manifests() {
    let objects = render(Some(&chart().join("ci/istio-values.yaml")));
    for (kind, file) in [
        ("EnvoyFilter", "envoyfilter-ratelimit.yaml"),
        ("AuthorizationPolicy", "authorizationpolicy.yaml"),
    ] {
        let mut rendered = one(&objects, kind).clone();
        rendered["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        assert_eq!(
            rendered,
            shipped(file),
            "{kind} differs from envoy/istio/{file}"
        );
    }
    // The provider the policy names is the one the shipped mesh config declares, and it
    // points at the chart's Service and gRPC port.
    let provider = &shipped("ext-authz-provider.yaml")["meshConfig"]["extensionProviders"][0];
    let policy = one(&objects, "AuthorizationPolicy");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
    let deployment = one(&objects, "Deployment");
    assert_eq!(
        provider["envoyExtAuthzGrpc"]["port"].as_u64().unwrap(),
        container_port(deployment, "grpc")
    );
    assert_eq!(
        provider["envoyExtAuthzGrpc"]["service"],
        "ratelimiter.ratelimiter.svc.cluster.local"
    );
}
