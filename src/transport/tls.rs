//! TLS for `amqps://` connections, through lapin's connector hook with a rustls client
//! config of our own.
//!
//! lapin's own TLS settings (`OwnedTLSConfig`) can only add a CA to the built-in roots:
//! they cannot trust a private CA alone, nor check the broker's certificate against a name
//! other than the URL's host. So every `amqps://` connection goes through
//! [`Connection::connector`] with the [`ClientConfig`](rustls::ClientConfig) that config
//! validation built (`config/tls.rs`): one code path for all TLS cases, the built-in roots
//! included. The hook does what lapin's default does — resolve, connect TCP, hand the
//! stream to rustls — except that the name checked is `tls_server_name` when set.
//! `amqp://` connections use [`Connection::connect`] as before.
//!
//! A refused handshake (unknown CA, expired certificate, wrong name, no client certificate)
//! fails the connect with an I/O error that says it is a TLS failure and gives rustls's
//! reason: `tls failure: invalid peer certificate: UnknownIssuer`.

use std::{error::Error as StdError, fmt, io, net::SocketAddr};

use lapin::{
    Connection, ConnectionProperties, ErrorKind,
    tcp::{AsyncTcpStream, RustlsConnector},
    uri::AMQPUri,
};

use crate::config::TlsClient;

/// What `amqps://` connections are opened with: the connector holds the rustls client
/// config (roots, client certificate) and its TLS session cache.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: RustlsConnector,
    /// The name the broker's certificate must carry, when not the URL's host.
    server_name: Option<String>,
    /// Whether a client certificate is sent (for `Debug`).
    client_cert: bool,
}

impl Tls {
    pub(crate) fn new(client: TlsClient) -> Self {
        Self {
            client_cert: client.config.client_auth_cert_resolver.has_certs(),
            connector: client.config.into(),
            server_name: client.server_name,
        }
    }
}

impl fmt::Debug for Tls {
    // Never the certificates or the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// Opens a connection to `uri`: over TLS with `tls` when given (an `amqps://` URL), as
/// lapin does by default otherwise.
pub(crate) async fn open(
    uri: &str,
    properties: ConnectionProperties,
    tls: Option<&Tls>,
) -> lapin::Result<Connection> {
    let Some(tls) = tls else {
        return Connection::connect(uri, properties).await;
    };
    let uri: AMQPUri = uri.parse().map_err(io::Error::other)?;
    let runtime = lapin::runtime::default_runtime()?;
    let Tls {
        connector,
        server_name,
        ..
    } = tls.clone();
    let connected = Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            let host = uri.authority.host.as_str();
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, uri.authority.port))
                .await?
                .collect();
            let stream = AsyncTcpStream::connect(&runtime, addresses).await?;
            let name = server_name.as_deref().unwrap_or(host);
            Ok(stream.into_rustls(&connector, name).await?)
        },
        properties,
    )
    .await;
    connected.map_err(tls_failure)
}

/// Marks an I/O error that rustls caused as a TLS failure. A TLS 1.3 server refuses a
/// client certificate only after the handshake, so the cause can reach lapin's I/O loop
/// as well as our connector: both end here.
fn tls_failure(error: lapin::Error) -> lapin::Error {
    let ErrorKind::IOError(io) = error.kind() else {
        return error;
    };
    match io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(cause) => io::Error::new(io.kind(), TlsFailure(cause.clone())).into(),
        None => error,
    }
}

/// A TLS failure, with rustls's reason.
#[derive(Debug)]
struct TlsFailure(rustls::Error);

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls failure: {}", self.0)
    }
}

impl StdError for TlsFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}
