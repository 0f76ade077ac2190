//! The admin API, on its own listener (never on the public HTTP or gRPC port):
//!
//! - `GET /admin/config`: the configuration in force, as loaded at start-up or at the last
//!   reload, redacted: every API key (a client table's `key:`, an `api_key` descriptor's
//!   `value:`) is replaced by its SHA-256 digest;
//! - `POST /admin/reload`: reloads the configuration, as `SIGHUP` does; 200, or 422 with every
//!   problem when the new configuration does not load (the old one stays);
//! - `GET /admin/clients/{name}`: the usage of each limit of the client table's keys labelled
//!   `name` (`name:`, else the tier) or of the one key whose SHA-256 `name` is
//!   (`sha256:<hex>`): remaining, used and time to reset, as the next request would find
//!   them, without spending any; 404 when no key is selected;
//! - `DELETE /admin/clients/{name}`: forgets that client's counters (in the store and in the
//!   local fallback), so its next request starts from a full quota; 409 when `name` selects
//!   several keys (each is then named by its digest). Another replica that answered the
//!   client's rejections from its over-limit cache keeps doing so until the retry time it
//!   gave (see `docs/operations.md`).
//!
//! Access: when a bearer token is configured (`--admin-token-file`) every call must carry
//! `Authorization: Bearer <token>`; without one the listener must be on a loopback address
//! (`main.rs` refuses to start otherwise). Every call is logged with the peer address, the
//! method and path (a key digest in it shortened to 8 hex digits), and the outcome; never a
//! key or the token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::Request;
use hyper::body::Incoming as Incoming_;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::AppState;
use crate::limiter::{KnownClientId, LimitError};
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
        .route(
            "/admin/clients/{name}",
            get(client_usage).delete(reset_client),
        )
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
    let (method, path) = (request.method().clone(), loggable(request.uri().path()));
    if !admin.authorized(request.headers()) {
        tracing::warn!(%peer, %method, path, "admin call refused: missing or wrong bearer token");
        return unauthorized();
    }
    tracing::info!(%peer, %method, path, "admin call");
    next.run(request).await
}

/// The path as logged: a 64-hex-digit segment (a key's digest) cut to its first 8 digits.
fn loggable(path: &str) -> String {
    let shorten = |segment: &str| {
        let hex = segment.strip_prefix("sha256:").unwrap_or(segment);
        match crate::config::parse_sha256(hex) {
            Some(_) => format!("sha256:{}…", &hex[..8]),
            None => segment.to_owned(),
        }
    };
    path.split('/').map(shorten).collect::<Vec<_>>().join("/")
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

async fn client_usage(State(admin): State<Arc<Admin>>, UrlPath(name): UrlPath<String>) -> Response {
    match admin.state.limiter.client_usage(&name).await {
        Ok(clients) if clients.is_empty() => no_client(&name),
        Ok(clients) => axum::Json(json!({ "clients": clients })).into_response(),
        Err(e) => limiter_error(&e),
    }
}

async fn reset_client(State(admin): State<Arc<Admin>>, UrlPath(name): UrlPath<String>) -> Response {
    let limiter = &admin.state.limiter;
    let rules = limiter.rules();
    let selected: Vec<KnownClientId> = rules
        .clients_named(&name)
        .iter()
        .map(KnownClientId::of)
        .collect();
    if selected.len() > 1 {
        let error = format!(
            "{} keys are named {name:?}; reset one at a time by its digest: \
             DELETE /admin/clients/sha256:<key_sha256>",
            selected.len()
        );
        let body = json!({ "error": error, "clients": selected });
        return (StatusCode::CONFLICT, axum::Json(body)).into_response();
    }
    match limiter.reset_client(&name).await {
        Ok(reset) if reset.is_empty() => no_client(&name),
        Ok(reset) => {
            tracing::info!(clients = reset.len(), "admin reset a client's counters");
            axum::Json(json!({ "reset": reset })).into_response()
        }
        Err(e) => limiter_error(&e),
    }
}

fn no_client(name: &str) -> Response {
    let message = format!("no key of the client table is named {name:?}\n");
    (StatusCode::NOT_FOUND, message).into_response()
}

/// The admin API's one mapping of limiter errors: an outage is 503, anything else 500, each
/// with the error's text (the admin API is not public).
fn limiter_error(e: &LimitError) -> Response {
    let status = match e {
        LimitError::Store(s) if s.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
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
