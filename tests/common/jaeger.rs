//! A real Jaeger v2 (an OTLP receiver with a query API) on free ports, for the trace tests.
//! `make setup` builds it into `.tools/jaeger` (or `$JAEGER_BIN` names one); a missing
//! binary fails the test with a message saying to run `make setup`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis_server::free_port;

pub fn binary() -> PathBuf {
    let path = std::env::var_os("JAEGER_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/jaeger"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "Jaeger not found at {}: run `make setup` (it builds Jaeger v2 into .tools/)",
        path.display()
    );
    path
}

/// Jaeger with in-memory storage: OTLP/HTTP in, the query API out; killed on drop.
pub struct Jaeger {
    child: Child,
    pub otlp_port: u16,
    pub query_port: u16,
    dir: PathBuf,
}

impl Jaeger {
    pub async fn start(dir: &Path) -> Jaeger {
        let (otlp_port, query_port, query_grpc) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter] }}
  telemetry: {{ metrics: {{ level: none }}, logs: {{ level: warn }} }}
extensions:
  jaeger_query:
    storage: {{ traces: mem }}
    http: {{ endpoint: "127.0.0.1:{query_port}" }}
    grpc: {{ endpoint: "127.0.0.1:{query_grpc}" }}
  jaeger_storage:
    backends: {{ mem: {{ memory: {{ max_traces: 10000 }} }} }}
receivers:
  otlp:
    protocols: {{ http: {{ endpoint: "127.0.0.1:{otlp_port}" }} }}
processors:
  batch: {{ timeout: 100ms }}
exporters:
  jaeger_storage_exporter: {{ trace_storage: mem }}
"#
        );
        std::fs::write(dir.join("jaeger.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("jaeger.log")).unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(dir.join("jaeger.yaml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        let jaeger = Jaeger {
            child,
            otlp_port,
            query_port,
            dir: dir.to_path_buf(),
        };
        jaeger.wait_ready().await;
        jaeger
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/api/services", self.query_port);
        if !super::answers_ok(&url, Duration::from_secs(30)).await {
            panic!("jaeger did not start:\n{}", self.log());
        }
    }

    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("jaeger.log")).unwrap_or_default()
    }

    /// The spans Jaeger holds for `trace_id` (`GET /api/traces/{id}`), none if unknown yet.
    pub async fn spans(&self, trace_id: &str) -> Vec<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/api/traces/{trace_id}", self.query_port);
        let Ok(reply) = reqwest::get(&url).await else {
            return Vec::new();
        };
        let body: serde_json::Value = reply.json().await.unwrap_or_default();
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
