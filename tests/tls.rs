//! TLS against a real RabbitMQ TLS listener: the harness node `fvtls@localhost`
//! (`scripts/rabbitmq-cluster.sh tls-start`: mutual TLS only, on 127.0.0.1:5691, with
//! `verify_peer` and `fail_if_no_peer_cert = true`), with certificates made here.
//!
//! The node is started once, by the one test below, which runs the cases in sequence and
//! stops the node when it ends, also when a case fails. Run it alone and serially:
//!
//! ```text
//! cargo test --all-features --test tls -- --ignored --test-threads=1
//! ```

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use fitviz_events::{
    ErrorKind, Event, EventPublisher, PublishError, PublisherConfig, events::WorkoutCreated,
    testing::Example, transport::AmqpPublish,
};
use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions},
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::{AMQPValue, FieldTable},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};
use support::harness::Harness;
use tempfile::TempDir;

/// The host name the server certificate is for (its only subject alternative name).
const HOST: &str = "localhost";
const PORT: u16 = 5691;

fn url(host: &str) -> String {
    format!("amqps://guest:guest@{host}:{PORT}/%2f")
}

/// The certificates of the tests, as PEM files.
///
/// - `good/` and `expired/`: what the node serves (`ca.pem`, `server.pem`, `server.key`):
///   CA A, and a server certificate for `localhost` only that A signed, valid now or
///   expired in 2021.
/// - `ca_a.pem`, and `client.pem` + `client.key`, a client certificate A signed.
/// - `ca_b.pem`: another CA, which signed nothing the node has.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_a = ca("fitviz test CA A");
        let ca_b = ca("fitviz test CA B");
        let write = |path: &str, contents: &str| {
            let path = dir.path().join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        };
        write("ca_a.pem", &ca_a.pem());
        write("ca_b.pem", &ca_b.pem());

        for (folder, expired) in [("good", false), ("expired", true)] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, HOST);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            let cert = params.signed_by(&key, &ca_a).unwrap();
            write(&format!("{folder}/ca.pem"), &ca_a.pem());
            write(&format!("{folder}/server.pem"), &cert.pem());
            write(&format!("{folder}/server.key"), &key.serialize_pem());
        }

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["fitviz-events-test".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "fitviz-events-test");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca_a).unwrap();
        write("client.pem", &cert.pem());
        write("client.key", &key.serialize_pem());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config for `url` trusting `ca` (a file of this PKI), with the client certificate.
    fn config(&self, url: &str, ca: &str) -> PublisherConfig {
        PublisherConfig {
            url: url.parse().unwrap(),
            tls_ca_file: Some(self.path(ca)),
            tls_cert_file: Some(self.path("client.pem")),
            tls_key_file: Some(self.path("client.key")),
            connection_timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Stops the TLS node when dropped, also when a case panics.
struct Node;

impl Node {
    async fn start(certs: &Path) -> Self {
        let node = Self;
        Harness::tls_start(certs).await;
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Synchronous: this may run while the test unwinds.
        let status = std::process::Command::new(Harness::script())
            .arg("tls-stop")
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("stopping the TLS node failed: {status:?}");
        }
    }
}

/// The test's own exchange and queue on the TLS node, through lapin's own TLS client
/// (CA A, the client certificate): a check independent of the crate's.
struct Topology {
    connection: Connection,
    channel: lapin::Channel,
    exchange: String,
    queue: String,
}

impl Topology {
    async fn new(pki: &Pki) -> Self {
        let read = |name: &str| fs::read(pki.path(name)).unwrap();
        let tls = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: read("client.pem"),
                key: read("client.key"),
            }),
            cert_chain: Some(String::from_utf8(read("ca_a.pem")).unwrap()),
        };
        let connection = Connection::connect_with_config(
            &url(HOST),
            ConnectionProperties::default(),
            tls,
            lapin::runtime::default_runtime().unwrap(),
        )
        .await
        .expect("lapin's own TLS client connects to the TLS node");
        let channel = connection.create_channel().await.unwrap();
        let name = support::unique("tls");
        let (exchange, queue) = (format!("{name}.x"), format!("{name}.q"));
        let mut args = FieldTable::default();
        args.insert("x-expires".into(), AMQPValue::LongInt(300_000));
        support::declare_bound_queue(&channel, &exchange, &queue, "#", false, args).await;
        Self {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    /// Publishes one event with `config` (aimed at this exchange) and checks that it is
    /// confirmed and waits in the queue.
    async fn publish_and_receive(&self, config: PublisherConfig) {
        let config = PublisherConfig {
            exchange: self.exchange.clone(),
            ..config
        };
        let publisher = EventPublisher::connect(config)
            .await
            .expect("connects over TLS");
        let event = Event::new(WorkoutCreated::example()).with_organization("org-tls");
        let id = event.id();
        let receipt = publisher.publish(event).await.expect("confirmed");
        assert_eq!(receipt.event_id, id);
        publisher.close().await;

        let message = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the event is in the queue");
        let message_id = message.delivery.properties.message_id().clone().unwrap();
        assert_eq!(message_id.as_str(), id.to_string());
    }

    async fn delete(self) {
        let _ = (self.channel)
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = (self.channel)
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

/// Connecting with `config` fails with a TLS failure whose message contains `reason`.
async fn refused(config: &PublisherConfig, reason: &str) -> PublishError {
    refused_with_any(config, &[reason]).await
}

/// Connecting with `config` fails with a TLS failure whose message contains one of
/// `reasons`.
async fn refused_with_any(config: &PublisherConfig, reasons: &[&str]) -> PublishError {
    let err = AmqpPublish::connect(config)
        .await
        .expect_err("the TLS handshake is refused");
    let text = err.to_string();
    assert_eq!(err.kind(), ErrorKind::Connection, "{text}");
    assert!(
        text.starts_with(&format!(
            "could not connect to the broker at {}: ",
            config.redacted_url()
        )),
        "{text}"
    );
    assert!(text.contains("tls failure: "), "{text}");
    assert!(
        reasons.iter().any(|reason| text.contains(reason)),
        "expected one of {reasons:?} in: {text}"
    );
    assert!(!text.contains(":guest@"), "password shown: {text}");
    err
}

#[test]
#[ignore = "needs the TLS harness node: scripts/rabbitmq-cluster.sh"]
fn tls_against_a_real_broker() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(cases());
}

async fn cases() {
    let pki = Pki::new();
    let _node = Node::start(&pki.path("good")).await;
    let topology = Topology::new(&pki).await;

    // CA A and the client certificate: connects, publishes, the event arrives.
    topology
        .publish_and_receive(pki.config(&url(HOST), "ca_a.pem"))
        .await;

    // Only the private CA trusted.
    topology
        .publish_and_receive(PublisherConfig {
            tls_builtin_roots: false,
            ..pki.config(&url(HOST), "ca_a.pem")
        })
        .await;

    // Connecting to the address, checking the certificate against `localhost`.
    topology
        .publish_and_receive(PublisherConfig {
            tls_server_name: Some(HOST.into()),
            ..pki.config(&url("127.0.0.1"), "ca_a.pem")
        })
        .await;

    // A CA that did not sign the server certificate, with or without the built-in roots.
    for builtin in [true, false] {
        let config = PublisherConfig {
            tls_builtin_roots: builtin,
            ..pki.config(&url(HOST), "ca_b.pem")
        };
        refused(&config, "invalid peer certificate: UnknownIssuer").await;
    }
    // No private CA at all: the built-in roots do not know CA A.
    let config = PublisherConfig {
        tls_ca_file: None,
        ..pki.config(&url(HOST), "ca_a.pem")
    };
    refused(&config, "invalid peer certificate: UnknownIssuer").await;

    // The certificate is for `localhost`: not for the address, nor another name.
    refused(
        &pki.config(&url("127.0.0.1"), "ca_a.pem"),
        "invalid peer certificate: certificate not valid for name \"127.0.0.1\"",
    )
    .await;
    let config = PublisherConfig {
        tls_server_name: Some("wrong.example".into()),
        ..pki.config(&url(HOST), "ca_a.pem")
    };
    refused(
        &config,
        "invalid peer certificate: certificate not valid for name \"wrong.example\"",
    )
    .await;

    // No client certificate: the broker (fail_if_no_peer_cert) refuses, after the client's
    // TLS 1.3 handshake is over. Its alert is read, or lost to the TCP reset (see
    // `transport/tls.rs`): several tries, to meet both.
    let config = PublisherConfig {
        tls_cert_file: None,
        tls_key_file: None,
        ..pki.config(&url(HOST), "ca_a.pem")
    };
    for _ in 0..6 {
        let reasons = [
            "tls failure: received fatal alert: CertificateRequired",
            "tls failure: the broker closed the connection after the tls handshake; it may \
             require a client certificate, and none was sent",
        ];
        let err = refused_with_any(&config, &reasons).await;
        eprintln!("no client certificate: {err}");
    }

    // An expired server certificate, served without a restart; then the good one again.
    Harness::tls_reload(&pki.path("expired")).await;
    let err = refused(
        &pki.config(&url(HOST), "ca_a.pem"),
        "invalid peer certificate: certificate expired",
    )
    .await;
    eprintln!("expired: {err}");
    Harness::tls_reload(&pki.path("good")).await;
    topology
        .publish_and_receive(pki.config(&url(HOST), "ca_a.pem"))
        .await;

    topology.delete().await;
}
