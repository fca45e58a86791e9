//! The RabbitMQ cluster harness (`scripts/rabbitmq-cluster.sh`) for serial integration
//! tests: cluster failover, blocked connections, TLS. The script runs three nodes on
//! 127.0.0.1:5681..5683 and a mutual-TLS node on 127.0.0.1:5691, beside the machine's
//! own broker. Tests that need it run under `scripts/rabbitmq-cluster.sh run cargo test …`,
//! which exports `FITVIZ_CLUSTER_URLS` and `FITVIZ_HARNESS_SCRIPT`.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// First AMQP port of the cluster: node `n` (1-based) listens on `BASE_PORT + n`.
const BASE_PORT: u16 = 5680;

/// Wrapper around the harness script; every call waits for the script and panics
/// with its stderr if it fails.
pub struct Harness;

impl Harness {
    /// The script: `FITVIZ_HARNESS_SCRIPT`, else `<crate>/scripts/rabbitmq-cluster.sh`.
    pub fn script() -> PathBuf {
        std::env::var_os("FITVIZ_HARNESS_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster.sh")
            })
    }

    /// The AMQP URLs of the three cluster nodes, if the tests run under the harness.
    pub fn cluster_urls() -> Option<Vec<String>> {
        let urls = std::env::var("FITVIZ_CLUSTER_URLS").ok()?;
        let urls: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        (!urls.is_empty()).then_some(urls)
    }

    /// The cluster node (1, 2, 3) that listens on `port` (5681 → 1, …).
    pub fn node_of_port(port: u16) -> usize {
        match port.checked_sub(BASE_PORT) {
            Some(n @ 1..=3) => usize::from(n),
            _ => panic!("port {port} is not a harness cluster port (5681..=5683)"),
        }
    }

    /// kill -9 of node `n`.
    pub async fn kill(n: usize) {
        run(&["kill", &n.to_string()]).await;
    }

    /// Graceful stop of node `n` (the whole VM, as in a rolling restart).
    pub async fn stop_node(n: usize) {
        run(&["stop-node", &n.to_string()]).await;
    }

    /// Starts node `n` again; returns once it is back in the cluster.
    pub async fn revive(n: usize) {
        run(&["revive", &n.to_string()]).await;
    }

    /// Stops the three cluster nodes, keeping their data.
    pub async fn stop_all_nodes() {
        run(&["stop-all-nodes"]).await;
    }

    /// Starts the three cluster nodes again; returns once the cluster has formed.
    pub async fn start_all_nodes() {
        run(&["start-all-nodes"]).await;
    }

    /// Raises (`on`) or clears a memory alarm on node `n` (blocks publishers cluster-wide).
    pub async fn memory_alarm(n: usize, on: bool) {
        run(&[
            "memory-alarm",
            &n.to_string(),
            if on { "on" } else { "off" },
        ])
        .await;
    }

    /// Closes every client connection on node `n` (320 CONNECTION_FORCED).
    pub async fn close_connections(n: usize) {
        run(&["close-connections", &n.to_string()]).await;
    }

    /// Starts the mutual-TLS node on 127.0.0.1:5691 with `cert_dir`'s `ca.pem`,
    /// `server.pem` and `server.key`.
    pub async fn tls_start(cert_dir: &Path) {
        run(&["tls-start", path_arg(cert_dir)]).await;
    }

    /// Serves `cert_dir`'s (new) certificates to new connections, without a restart.
    pub async fn tls_reload(cert_dir: &Path) {
        run(&["tls-reload", path_arg(cert_dir)]).await;
    }

    /// Stops the TLS node.
    pub async fn tls_stop() {
        run(&["tls-stop"]).await;
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("cert dir path is UTF-8")
}

async fn run(args: &[&str]) {
    let script = Harness::script();
    let output = Command::new(&script)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} {} failed ({}):\n{}",
        script.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
