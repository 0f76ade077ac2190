//! The admin API, on its own listener (never on the public HTTP or gRPC port):
//!
//! - `GET /admin/config`: the configuration in force, as loaded at start-up or at the last
//!   reload, redacted: every API key (a client table's `key:`, an `api_key` descriptor's
//!   `value:`) is replaced by its SHA-256 digest;
//! - `POST /admin/reload`: reloads the configuration, as `SIGHUP` does; 200, or 422 with every
//!   problem when the new configuration does not load (the old one stays).
//!
//! Access: when a bearer token is configured (`--admin-token-file`) every call must carry
//! `Authorization: Bearer <token>`; without one the listener must be on a loopback address
//! (`main.rs` refuses to start otherwise). Every call is logged with the peer address, the
//! method and path, and the outcome; never a key or the token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::Request;
use hyper::body::Incoming as Incoming_;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::listener::Incoming;
use crate::reload::{Reloader, Trigger};

/// What the admin handlers share.
pub struct Admin {
    pub state: Arc<AppState>,
    /// The `--config` path reloads read.
    pub config: PathBuf,
    /// The SHA-256 of the bearer token, when one is required.
    token_digest: Option<[u8; 32]>,
}

/// The admin token could not be read or is unusable.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("cannot read the admin token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the admin token in {0} is shorter than 16 characters")]
    TooShort(String),
}

impl Admin {
    pub const MIN_TOKEN_LEN: usize = 16;

    pub fn new(state: Arc<AppState>, config: PathBuf, token: Option<&str>) -> Self {
        Admin {
            state,
            config,
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// The token in `path` (surrounding whitespace trimmed).
    pub fn read_token(path: &Path) -> Result<String, AdminTokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminTokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let token = text.trim();
        if token.len() < Self::MIN_TOKEN_LEN {
            return Err(AdminTokenError::TooShort(path.display().to_string()));
        }
        Ok(token.to_owned())
    }

    /// Whether the request carries the token (always, when none is required). Digests are
    /// compared, so the comparison's timing says nothing about the token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        presented.is_some_and(|t| <[u8; 32]>::from(Sha256::digest(t.as_bytes())) == *expected)
    }
}

/// The admin router. Each request must carry its peer address as an extension (`serve`).
pub fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/admin/config", get(config))
        .route("/admin/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(admin.clone(), admit))
        .with_state(admin)
}

/// Every admin call: checks the token and logs who asked for what, then runs the handler.
async fn admit(
    State(admin): State<Arc<Admin>>,
    Extension(peer): Extension<SocketAddr>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    if !admin.authorized(request.headers()) {
        tracing::warn!(%peer, %method, path, "admin call refused: missing or wrong bearer token");
        return unauthorized();
    }
    tracing::info!(%peer, %method, path, "admin call");
    next.run(request).await
}

/// The answer to a call without the right token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Bearer")],
        "a valid bearer token is required\n",
    )
        .into_response()
}

async fn config(State(admin): State<Arc<Admin>>) -> Response {
    axum::Json(&*admin.state.loaded_config()).into_response()
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    let reloader = Reloader::new(admin.state.clone(), admin.config.clone());
    match reloader.reload(Trigger::Admin) {
        Ok(()) => (StatusCode::OK, "reloaded\n").into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, the old configuration stays:\n{e}\n"),
        )
            .into_response(),
    }
}

/// The configuration files at `path` (a file, or the `*.yaml` / `*.yml` files of a
/// directory) as JSON by file name, every API key replaced by its SHA-256 digest. A file
/// that cannot be read or parsed is shown as an error string.
pub fn redacted_config(path: &Path) -> serde_json::Value {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| {
            f.file_name()
                .is_some_and(|n| crate::config::is_config_file_name(&n.to_string_lossy()))
        });
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = serde_json::Map::new();
    for file in files {
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let value = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_saphyr::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
            })
            .map_or_else(
                |e| serde_json::Value::String(format!("unreadable: {e}")),
                |mut v| {
                    redact(&mut v);
                    v
                },
            );
        out.insert(name, value);
    }
    serde_json::Value::Object(out)
}

/// Replaces every API key in a parsed configuration file by its digest: each entry of
/// `clients.keys` has its `key` turned into `sha256`, and every `api_key` descriptor (an
/// envoyproxy/ratelimit file) its `value`.
fn redact(file: &mut serde_json::Value) {
    use serde_json::Value;
    let digest = |key: &str| hex::encode(Sha256::digest(key.as_bytes()));
    if let Some(Value::Array(keys)) = file.pointer_mut("/clients/keys") {
        for entry in keys.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(Value::String(key)) = entry.remove("key") {
                entry.insert("sha256".into(), Value::String(digest(&key)));
            }
        }
    }
    redact_descriptors(file);
}

fn redact_descriptors(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if map.get("key").and_then(Value::as_str) == Some("api_key")
                && let Some(Value::String(v)) = map.get_mut("value")
            {
                *v = format!("sha256:{}", hex::encode(Sha256::digest(v.as_bytes())));
            }
            map.values_mut().for_each(redact_descriptors);
        }
        Value::Array(items) => items.iter_mut().for_each(redact_descriptors),
        _ => {}
    }
}

/// Serves the admin API on `incoming` until the process ends; each request carries its
/// peer address for the log.
pub async fn serve(mut incoming: Incoming, admin: Arc<Admin>) {
    use tokio_stream::StreamExt;
    let router = router(admin);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
    while let Some(Ok(io)) = incoming.next().await {
        let Ok(peer) = io.peer_addr() else { continue };
        let router = router.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming_>| {
                req.extensions_mut().insert(peer);
                let mut router = router.clone();
                async move {
                    use tower_service::Service;
                    router.call(req).await
                }
            });
            if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
                tracing::debug!(error = %e, "admin connection closed");
            }
        });
    }
}

/// How long an admin request may take to send its head.
const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
