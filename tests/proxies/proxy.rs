//! One reverse proxy, started from its config in this folder on free
//! loopback ports, stopped by its pid when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The proxies under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Nginx,
    Haproxy,
    /// HAProxy without the two options `haproxy.cfg` sets: measured only.
    HaproxyDefaults,
    Caddy,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [
        Kind::Nginx,
        Kind::Haproxy,
        Kind::HaproxyDefaults,
        Kind::Caddy,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::HaproxyDefaults => "haproxy_defaults",
            Kind::Caddy => "caddy",
        }
    }

    /// The Debian package.
    pub(crate) fn package(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy | Kind::HaproxyDefaults => "haproxy",
            Kind::Caddy => "caddy",
        }
    }

    /// Where Debian installs it.
    pub(crate) fn binary(self) -> &'static str {
        match self {
            Kind::Nginx => "/usr/sbin/nginx",
            Kind::Haproxy | Kind::HaproxyDefaults => "/usr/sbin/haproxy",
            Kind::Caddy => "/usr/bin/caddy",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx.conf",
            Kind::Haproxy => "haproxy.cfg",
            Kind::HaproxyDefaults => "haproxy-defaults.cfg",
            Kind::Caddy => "Caddyfile",
        }
    }

    /// Its name and version, as `nginx 1.22.1`.
    pub(crate) fn version(self) -> String {
        let (flag, name) = match self {
            Kind::Nginx => ("-v", "nginx"),
            Kind::Haproxy | Kind::HaproxyDefaults => ("-v", "HAProxy"),
            Kind::Caddy => ("version", "Caddy"),
        };
        let out = Command::new(self.binary()).arg(flag).output();
        let text = out
            .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
            .unwrap_or_default();
        let first = text.lines().next().unwrap_or("");
        // "nginx version: nginx/1.22.1", "HAProxy version 2.6.12-1 ...", "2.6.2 ..."
        let version = match self {
            Kind::Nginx => first.rsplit('/').next(),
            Kind::Haproxy | Kind::HaproxyDefaults => first.split_whitespace().nth(2),
            Kind::Caddy => first.split_whitespace().next(),
        };
        format!("{name} {}", version.unwrap_or("?"))
    }
}

/// A free loopback port (bound, then let go).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running proxy: its listening address, its working folder (config,
/// logs), the process. Dropping it kills the process and removes the
/// folder.
pub(crate) struct Proxy {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    /// nginx's gRPC listener (HTTP/2 with prior knowledge).
    pub(crate) grpc_addr: Option<SocketAddr>,
    dir: PathBuf,
    child: Child,
}

impl Proxy {
    /// Starts `kind` in front of `upstream` (and, for nginx, of a gRPC
    /// upstream), and waits until it listens.
    pub(crate) fn start(kind: Kind, upstream: SocketAddr, grpc_upstream: SocketAddr) -> Proxy {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "tower-lifecycle-{}-{}-{nanos}",
            kind.name(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a working folder for the proxy");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let grpc_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let template = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/proxies")
            .join(kind.config());
        let config = std::fs::read_to_string(&template)
            .expect("the proxy's config template")
            .replace("{{DIR}}", &dir.display().to_string())
            .replace("{{LISTEN}}", &addr.to_string())
            .replace("{{LISTEN_PORT}}", &addr.port().to_string())
            .replace("{{UPSTREAM}}", &upstream.to_string())
            .replace("{{GRPC_LISTEN}}", &grpc_addr.to_string())
            .replace("{{GRPC_UPSTREAM}}", &grpc_upstream.to_string());
        let config_path = dir.join(kind.config());
        std::fs::write(&config_path, config).expect("the proxy's config");
        let mut command = Command::new(kind.binary());
        match kind {
            Kind::Nginx => command
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&config_path),
            Kind::Haproxy | Kind::HaproxyDefaults => command.arg("-db").arg("-f").arg(&config_path),
            Kind::Caddy => command
                .arg("run")
                .arg("--adapter")
                .arg("caddyfile")
                .arg("--config")
                .arg(&config_path)
                .env("HOME", &dir)
                .env("XDG_DATA_HOME", &dir)
                .env("XDG_CONFIG_HOME", &dir),
        };
        let output = std::fs::File::create(dir.join("output.log")).expect("a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("a log file"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", kind.binary()));
        let mut proxy = Proxy {
            kind,
            addr,
            grpc_addr: (kind == Kind::Nginx).then_some(grpc_addr),
            dir,
            child,
        };
        proxy.wait_listening(addr);
        if let Some(grpc) = proxy.grpc_addr {
            proxy.wait_listening(grpc);
        }
        proxy
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before it listened on {addr}: {status}\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within 10 s\n{}",
                self.kind.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the proxy wrote, for failure messages.
    pub(crate) fn logs(&self) -> String {
        ["output.log", "error.log"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
