//! TLS and mTLS on the HTTP and gRPC listeners (issue 12, point 2), against the real binary:
//! certificates made at test time with the `openssl` CLI, clients built on rustls (the
//! HTTP one writes its request by hand over the TLS stream, so the peer's certificate and
//! the handshake's failure are both visible), and a real Envoy whose rate-limit and ext_authz
//! clusters speak mTLS to the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BASIC, Service, config_dir, temp_dir};
use ratelimiter::api::grpc::pb::AllowRequestRequest;
use ratelimiter::api::grpc::pb::rate_limiter_client::RateLimiterClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

/// The longest any one client call may take (generous: the machine is shared).
const CALL_WITHIN: Duration = Duration::from_secs(10);

/// Runs `openssl` with `args` in `dir`; panics with its output (and what to do when it is
/// missing) on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); run `make setup`, it installs it"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway CA in `dir`: `<name>-ca.pem` and its key.
struct Ca {
    dir: PathBuf,
    name: String,
}

/// A certificate and its key, as PEM files.
#[derive(Clone)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                &format!("{name}-ca.key"),
                "-out",
                &format!("{name}-ca.pem"),
            ],
        );
        Ca {
            dir: dir.to_owned(),
            name: name.to_owned(),
        }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `cn` (`localhost` and 127.0.0.1 as names; usable by a server and a
    /// client), with serial `serial`.
    fn issue(&self, cn: &str, serial: u32) -> Pair {
        let dir = &self.dir;
        let base = format!("{}-{cn}-{serial}", self.name);
        let ext = dir.join(format!("{base}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let (key, csr, cert) = (
            format!("{base}.key"),
            format!("{base}.csr"),
            format!("{base}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let ca_key = format!("{}-ca.key", self.name);
        let ca_pem = format!("{}-ca.pem", self.name);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
                "-out",
                &cert,
            ],
        );
        Pair {
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }
}

/// What a TLS client presents and trusts.
fn client_config(
    trust: &Path,
    identity: Option<&Pair>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => {
            let chain = CertificateDer::pem_file_iter(&pair.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(&pair.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` (as `localhost`).
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate a new TLS connection to `addr` is served (DER).
async fn served_certificate(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let conn = tokio::time::timeout(CALL_WITHIN, tls_connect(addr, config))
        .await
        .unwrap()
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// `method path` over TLS on a new connection (HTTP/1.1); the status and the whole answer.
/// Err when the handshake fails or no HTTP answer comes back.
async fn https(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    api_key: &str,
) -> Result<(u16, String), String> {
    let call = async {
        let mut conn = tls_connect(addr, config).await.map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\nx-api-key: {api_key}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        );
        conn.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        Ok((status, text))
    };
    tokio::time::timeout(CALL_WITHIN, call)
        .await
        .map_err(|_| format!("no answer within {CALL_WITHIN:?}"))?
}

/// The value of `ratelimiter_tls_events_total{event}` in the service's `/metrics`.
async fn tls_events(svc: &Service, config: Arc<rustls::ClientConfig>, event: &str) -> u64 {
    let (_, text) = https(svc.http, config, "GET", "/metrics", "-")
        .await
        .unwrap();
    let series = format!("ratelimiter_tls_events_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// A gRPC channel over TLS (ALPN h2), or plaintext when `config` is `None`.
async fn grpc_channel(
    addr: SocketAddr,
    config: Option<Arc<rustls::ClientConfig>>,
) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(CALL_WITHIN)
        .connect_timeout(CALL_WITHIN);
    let connect = async {
        match config {
            None => endpoint.connect().await,
            Some(config) => {
                let connector = tower::service_fn(move |_: http::Uri| {
                    let config = config.clone();
                    async move {
                        let tls = tls_connect(addr, config).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                });
                endpoint.connect_with_connector(connector).await
            }
        }
    };
    tokio::time::timeout(CALL_WITHIN, connect)
        .await
        .map_err(|_| "no connection".to_owned())?
        .map_err(|e| format!("{e:?}"))
}

/// One `AllowRequest` for `key` on `channel`: whether it was allowed; Err when no decision
/// came back.
async fn allow(channel: &Channel, key: &str) -> Result<bool, String> {
    let mut client = RateLimiterClient::new(channel.clone());
    let call = client.allow_request(AllowRequestRequest {
        api_key: key.into(),
        descriptors: vec![],
        cost: None,
        report: false,
    });
    match tokio::time::timeout(CALL_WITHIN, call).await {
        Ok(Ok(r)) => Ok(r.into_inner().allowed),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// A gRPC decision for `key` on a new connection to `addr`; Err when none came back.
async fn grpc_decision(
    addr: SocketAddr,
    config: Option<Arc<rustls::ClientConfig>>,
    key: &str,
) -> Result<bool, String> {
    allow(&grpc_channel(addr, config).await?, key).await
}

/// Certificates for one test: the service's CA and pair, and another CA with a client pair.
struct Certs {
    dir: PathBuf,
    ca: Ca,
    server: Pair,
    client: Pair,
    stranger: Pair,
}

fn certs(name: &str) -> Certs {
    let dir = temp_dir(name);
    let ca = Ca::new(&dir, "good");
    let other = Ca::new(&dir, "other");
    Certs {
        server: ca.issue("server", 1),
        client: ca.issue("client", 2),
        stranger: other.issue("client", 3),
        ca,
        dir,
    }
}

/// The binary with TLS on both listeners (mTLS when `client_ca`), the config watch (and with
/// it the certificate watch) every 100 ms.
fn start(certs: &Certs, client_ca: bool) -> Service {
    start_watching(certs, client_ca, "100")
}

/// [`start`] with the files watched every `watch_ms` (`"0"`: not watched).
fn start_watching(certs: &Certs, client_ca: bool, watch_ms: &str) -> Service {
    let config = config_dir("tls", &[("service.yaml", BASIC)]);
    let mut args = vec![
        "--tls-cert-file".to_owned(),
        certs.server.cert.display().to_string(),
        "--tls-key-file".to_owned(),
        certs.server.key.display().to_string(),
        "--config-watch-interval-ms".to_owned(),
        watch_ms.to_owned(),
    ];
    if client_ca {
        args.push("--tls-client-ca-file".to_owned());
        args.push(certs.ca.pem().display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Service::start(&config, &args)
}

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

#[tokio::test]
async fn with_tls_plaintext_clients_get_no_decision_and_tls_clients_do() {
    let certs = certs("tls-required");
    let svc = start(&certs, false);
    let trusting = |alpn| client_config(&certs.ca.pem(), None, alpn);

    let plain = reqwest::Client::new()
        .post(svc.url("/check"))
        .header("x-api-key", "k1")
        .timeout(CALL_WITHIN)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        !matches!(plain, Ok(200 | 429)),
        "plaintext HTTP got a decision: {plain:?}"
    );
    let plain = grpc_decision(svc.grpc, None, "k1").await;
    assert!(plain.is_err(), "plaintext gRPC got a decision: {plain:?}");

    for i in 0..5 {
        let (status, _) = https(svc.http, trusting(H1), "POST", "/check", "k1")
            .await
            .unwrap();
        assert_eq!(status, 200, "request {i}");
    }
    let (status, _) = https(svc.http, trusting(H1), "POST", "/check", "k1")
        .await
        .unwrap();
    assert_eq!(status, 429);
    // gRPC over TLS (h2), sharing the counter: k1 is spent, k2 is not.
    let channel = grpc_channel(svc.grpc, Some(trusting(H2))).await.unwrap();
    assert_eq!(allow(&channel, "k1").await, Ok(false));
    assert_eq!(allow(&channel, "k2").await, Ok(true));
    // ALPN: the HTTP listener speaks HTTP/2 too; the gRPC one only HTTP/2.
    let conn = tls_connect(svc.http, trusting(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let conn = tls_connect(svc.grpc, trusting(H2)).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert!(
        tls_events(&svc, trusting(H1), "handshake_failure").await >= 2,
        "the plaintext clients' failed handshakes are counted"
    );
}

#[tokio::test]
async fn with_mtls_only_a_client_certificate_from_the_ca_gets_a_decision() {
    let certs = certs("mtls");
    let svc = start(&certs, true);
    let ca = certs.ca.pem();
    let anonymous = |alpn| client_config(&ca, None, alpn);
    let stranger = |alpn| client_config(&ca, Some(&certs.stranger), alpn);
    let client = |alpn| client_config(&ca, Some(&certs.client), alpn);

    for (who, config) in [
        ("no certificate", anonymous(H1)),
        ("another CA's", stranger(H1)),
    ] {
        let r = https(svc.http, config, "POST", "/check", "k1").await;
        assert!(r.is_err(), "HTTP with {who} got an answer: {r:?}");
    }
    for (who, config) in [
        ("no certificate", anonymous(H2)),
        ("another CA's", stranger(H2)),
    ] {
        let r = grpc_decision(svc.grpc, Some(config), "k1").await;
        assert!(r.is_err(), "gRPC with {who} got a decision: {r:?}");
    }
    let (status, _) = https(svc.http, client(H1), "POST", "/check", "k1")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        grpc_decision(svc.grpc, Some(client(H2)), "k1").await,
        Ok(true)
    );
    assert!(tls_events(&svc, client(H1), "handshake_failure").await >= 4);
    // Nothing the refused clients sent was decided: 2 of k1's 5 are spent.
    let (_, answer) = https(svc.http, client(H1), "POST", "/check", "k1")
        .await
        .unwrap();
    assert!(
        answer.to_ascii_lowercase().contains("\"remaining\":2"),
        "{answer}"
    );
}

/// Waits until `check` holds, for at most 15 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "not within 15 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces `to` with `from`'s contents in one rename.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// `certs` with the server pair copied to `live.pem` and `live.key`, which a test replaces
/// while the service runs on them.
fn replaceable(certs: Certs) -> Certs {
    let live = Pair {
        cert: certs.dir.join("live.pem"),
        key: certs.dir.join("live.key"),
    };
    replace(&certs.server.cert, &live.cert);
    replace(&certs.server.key, &live.key);
    Certs {
        server: live,
        ..certs
    }
}

#[tokio::test]
async fn a_new_certificate_on_disk_is_served_to_new_connections_and_a_broken_one_is_refused() {
    let certs = replaceable(certs("tls-reload"));
    let live = certs.server.clone();
    let svc = start(&certs, true);
    let client = |alpn| client_config(&certs.ca.pem(), Some(&certs.client), alpn);
    assert_eq!(
        served_certificate(svc.http, client(H1)).await,
        der(&certs.server.cert)
    );
    let open = grpc_channel(svc.grpc, Some(client(H2))).await.unwrap();
    assert_eq!(allow(&open, "k1").await, Ok(true));

    let renewed = certs.ca.issue("server-renewed", 10);
    replace(&renewed.key, &live.key);
    replace(&renewed.cert, &live.cert);
    let new = der(&renewed.cert);
    eventually("the renewed certificate is served", async || {
        served_certificate(svc.http, client(H1)).await == new
    })
    .await;
    assert_eq!(served_certificate(svc.grpc, client(H2)).await, new);
    assert_eq!(
        allow(&open, "k1").await,
        Ok(true),
        "an open connection keeps answering"
    );
    let refused = tls_events(&svc, client(H1), "reload_failure").await;

    std::fs::write(&live.key, "not a key").unwrap();
    eventually("the broken pair is refused and counted", async || {
        tls_events(&svc, client(H1), "reload_failure").await > refused
    })
    .await;
    assert_eq!(
        served_certificate(svc.http, client(H1)).await,
        new,
        "the old pair stays"
    );
    assert_eq!(
        grpc_decision(svc.grpc, Some(client(H2)), "k2").await,
        Ok(true)
    );
    assert!(
        svc.logs().contains("TLS certificate reload refused"),
        "{}",
        svc.logs()
    );
}

/// With the watch off (`--config-watch-interval-ms 0`), `SIGHUP` reloads the certificate as it
/// reloads the configuration: nothing changes on disk alone, the signal swaps the new pair in.
#[tokio::test]
async fn with_the_watch_off_sighup_serves_a_renewed_certificate() {
    let certs = replaceable(certs("tls-hup"));
    let live = certs.server.clone();
    let svc = start_watching(&certs, false, "0");
    let client = |alpn| client_config(&certs.ca.pem(), None, alpn);
    let old = der(&certs.server.cert);
    assert_eq!(served_certificate(svc.http, client(H1)).await, old);

    let renewed = certs.ca.issue("server-renewed-hup", 10);
    replace(&renewed.key, &live.key);
    replace(&renewed.cert, &live.cert);
    assert_eq!(
        served_certificate(svc.http, client(H1)).await,
        old,
        "no watch: the files alone change nothing"
    );
    svc.signal("HUP");
    let new = der(&renewed.cert);
    eventually(
        "the renewed certificate is served after SIGHUP",
        async || served_certificate(svc.http, client(H1)).await == new,
    )
    .await;
    assert_eq!(served_certificate(svc.grpc, client(H2)).await, new);
}

/// Runs the binary with `args` on the BASIC config, expecting it to refuse to start: its
/// exit code and what it printed.
fn refused_start(args: &[&str]) -> (Option<i32>, String) {
    let config = config_dir("tls-bad", &[("service.yaml", BASIC)]);
    let out = Command::new(env!("CARGO_BIN_EXE_ratelimiter"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), text)
}

#[test]
fn bad_tls_flags_and_files_stop_start_up_with_the_flag_or_file_named() {
    let certs = certs("tls-bad-files");
    let (cert, key) = (
        certs.server.cert.to_str().unwrap(),
        certs.server.key.to_str().unwrap(),
    );
    let other_key = certs.client.key.to_str().unwrap();
    let junk = certs.dir.join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let junk = junk.to_str().unwrap();
    let missing = certs.dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--tls-cert-file", cert], "--tls-key-file"),
        (&["--tls-key-file", key], "--tls-cert-file"),
        (&["--tls-client-ca-file", cert], "--tls-cert-file"),
        (
            &["--tls-cert-file", missing, "--tls-key-file", key],
            missing,
        ),
        (&["--tls-cert-file", junk, "--tls-key-file", key], junk),
        (&["--tls-cert-file", cert, "--tls-key-file", junk], junk),
        (
            &["--tls-cert-file", cert, "--tls-key-file", other_key],
            other_key,
        ),
        (
            &[
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-client-ca-file",
                junk,
            ],
            junk,
        ),
    ];
    for (args, named) in cases {
        let (code, text) = refused_start(args);
        assert_eq!(code, Some(64), "{args:?} started or crashed: {text}");
        assert!(
            text.contains(named),
            "{args:?}: the error does not name {named}: {text}"
        );
        assert!(!text.contains("panicked"), "{args:?}: {text}");
    }
}

/// A connection that sent the start of a TLS record (more than the 24 bytes the plaintext
/// header-read rule asks for) and then nothing.
async fn stalled_handshake(addr: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut start = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    start.resize(40, 0);
    conn.write_all(&start).await.unwrap();
    conn
}

/// Whether the server closed `conn` within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An alert, then the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_stalled_handshake_holds_a_connection_slot_until_the_header_read_timeout() {
    let certs = certs("tls-stall");
    let config = config_dir("tls-stall", &[("service.yaml", BASIC)]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratelimiter"));
    command.env("RATELIMITER_HEADER_READ_TIMEOUT", "2");
    let (cert, key) = (
        certs.server.cert.to_str().unwrap(),
        certs.server.key.to_str().unwrap(),
    );
    let svc = Service::start_command(
        command,
        &config,
        &[
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--max-connections",
            "2",
        ],
        "info",
    );
    let trusting = || client_config(&certs.ca.pem(), None, H1);
    let started = Instant::now();
    let mut stalled = [
        stalled_handshake(svc.grpc).await,
        stalled_handshake(svc.grpc).await,
    ];
    // Both slots are held by handshakes: a third client is closed at once.
    let third = grpc_decision(
        svc.grpc,
        Some(client_config(&certs.ca.pem(), None, H2)),
        "k1",
    )
    .await;
    assert!(
        third.is_err(),
        "a third connection got through a cap of 2: {third:?}"
    );
    for conn in &mut stalled {
        assert!(
            closed_within(conn, Duration::from_secs(20)).await,
            "a stalled handshake stayed open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before its timeout"
    );
    // The count is read over a new connection; give it a moment under a loaded machine.
    let counted = Instant::now();
    loop {
        let timeouts = tls_events(&svc, trusting(), "handshake_timeout").await;
        if timeouts >= 2 {
            break;
        }
        let failures = tls_events(&svc, trusting(), "handshake_failure").await;
        assert!(
            counted.elapsed() < Duration::from_secs(10),
            "{timeouts} handshake timeouts counted ({failures} failures)\n{}",
            svc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = grpc_decision(
        svc.grpc,
        Some(client_config(&certs.ca.pem(), None, H2)),
        "k1",
    )
    .await;
    assert_eq!(ok, Ok(true), "the slots are free again");
}

/// The shipped `envoy/tls/envoy-tls.yaml` with free ports and this test's certificate files
/// written in; without its client certificate when `client` is `None`.
fn envoy_tls_config(certs: &Certs, grpc: u16, upstream: u16, client: Option<&Pair>) -> String {
    use common::envoy::{ADMIN_PORT, LISTEN_PORT, RATELIMITER_GRPC_PORT, UPSTREAM_PORT};
    use common::envoy::{repo, rewrite_port};
    let text = std::fs::read_to_string(repo().join("envoy/tls/envoy-tls.yaml")).unwrap();
    let text = rewrite_port(&text, LISTEN_PORT, 0);
    let text = rewrite_port(&text, ADMIN_PORT, 0);
    let text = rewrite_port(&text, RATELIMITER_GRPC_PORT, grpc);
    let text = rewrite_port(&text, UPSTREAM_PORT, upstream);
    let ca = certs.ca.pem();
    let shown = |p: &Path| p.display().to_string();
    let text = text.replace("/etc/ratelimiter/tls/ca.pem", &shown(&ca));
    let Some(client) = client else {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                !["tls_certificates:", "client.pem", "client.key"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        return kept.join("\n");
    };
    text.replace("/etc/ratelimiter/tls/client.pem", &shown(&client.cert))
        .replace("/etc/ratelimiter/tls/client.key", &shown(&client.key))
}

/// The statuses of `n` requests for `path` with `key` through `envoy`.
async fn through(envoy: &common::envoy::Envoy, path: &str, key: &str, n: usize) -> Vec<u16> {
    let client = common::envoy::client_from(common::envoy::LOCAL);
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(
            common::envoy::get(&client, &envoy.url(path), Some(key))
                .await
                .status,
        );
    }
    statuses
}

#[tokio::test]
async fn a_real_envoy_with_a_client_certificate_gets_decisions_and_one_without_gets_none() {
    use common::envoy::{Envoy, KEY_QUOTA, Upstream, repo};
    let certs = certs("tls-envoy");
    let ca = certs.ca.pem();
    let tls = [
        "--tls-cert-file",
        certs.server.cert.to_str().unwrap(),
        "--tls-key-file",
        certs.server.key.to_str().unwrap(),
        "--tls-client-ca-file",
        ca.to_str().unwrap(),
    ];
    let svc = Service::start(&repo().join("envoy/config"), &tls);
    let upstream = Upstream::start();
    let (grpc, up) = (svc.grpc.port(), upstream.port());
    let config = envoy_tls_config(&certs, grpc, up, Some(&certs.client));
    let envoy = Envoy::start_config("envoy-tls", &config).await;
    let mut quota_then_429 = vec![200; KEY_QUOTA];
    quota_then_429.push(429);
    assert_eq!(
        through(&envoy, "/api/x", "alice-key", KEY_QUOTA + 1).await,
        quota_then_429
    );
    assert_eq!(
        through(&envoy, "/authz/x", "bob-key", KEY_QUOTA + 1).await,
        quota_then_429
    );

    let client = |alpn| client_config(&certs.ca.pem(), Some(&certs.client), alpn);
    let failures = tls_events(&svc, client(H1), "handshake_failure").await;
    let config = envoy_tls_config(&certs, grpc, up, None);
    let anonymous = Envoy::start_config("envoy-tls-anonymous", &config).await;
    // ext_authz fails closed (503), the rate-limit filter open (200): neither decided.
    assert_eq!(
        through(&anonymous, "/authz/x", "carol-key", 2).await,
        vec![503; 2]
    );
    let open = through(&anonymous, "/api/x", "carol-key", KEY_QUOTA + 2).await;
    assert_eq!(open, vec![200; KEY_QUOTA + 2], "fail open, no decision");
    assert!(
        tls_events(&svc, client(H1), "handshake_failure").await > failures,
        "the service saw the handshakes fail"
    );
    for cluster in ["ratelimiter_authz", "ratelimiter_ratelimit"] {
        let stat = format!("cluster.{cluster}.ssl.connection_error");
        assert!(
            anonymous.stat(&stat).await > 0,
            "{stat}: {:?}",
            anonymous.stats(cluster).await
        );
    }
    // Nothing carol sent through the anonymous Envoy was counted: her whole quota is left.
    assert_eq!(
        through(&envoy, "/api/x", "carol-key", KEY_QUOTA + 1).await,
        quota_then_429
    );
}
