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
//!
//! Over TLS 1.3 the client's part of the handshake is over before the broker has checked
//! the client certificate: a broker that refuses it (or, with `fail_if_no_peer_cert`, its
//! absence) sends an alert and closes the socket while lapin writes the AMQP header. The
//! alert usually arrives (`received fatal alert: CertificateRequired`), but the TCP reset
//! caused by the unread header can overtake it, leaving only `connection reset by peer`.
//! A connection closed right after a successful TLS handshake is therefore reported as a
//! likely refusal of the client certificate, saying whether one was sent.

use std::{
    error::Error as StdError,
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

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
        client_cert,
    } = tls.clone();
    let handshaken = Arc::new(AtomicBool::new(false));
    let connected = Connection::connector(
        uri,
        runtime,
        {
            let handshaken = handshaken.clone();
            async move |uri, runtime| {
                let host = uri.authority.host.as_str();
                let addresses: Vec<SocketAddr> =
                    tokio::net::lookup_host((host, uri.authority.port))
                        .await?
                        .collect();
                let stream = AsyncTcpStream::connect(&runtime, addresses).await?;
                let name = server_name.as_deref().unwrap_or(host);
                let stream = stream.into_rustls(&connector, name).await?;
                handshaken.store(true, Ordering::Relaxed);
                Ok(stream)
            }
        },
        properties,
    )
    .await;
    let handshaken = handshaken.load(Ordering::Relaxed);
    connected.map_err(|error| tls_failure(error, handshaken, client_cert))
}

/// Marks an I/O error that rustls caused as a TLS failure, and a connection closed right
/// after the handshake as a likely refused client certificate. The cause can reach our
/// connector or, after the handshake, lapin's I/O loop: both end here.
fn tls_failure(error: lapin::Error, handshaken: bool, client_cert: bool) -> lapin::Error {
    let ErrorKind::IOError(io) = error.kind() else {
        return error;
    };
    if let Some(cause) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return io::Error::new(io.kind(), TlsFailure::Refused(cause.clone())).into();
    }
    let closed = matches!(
        io.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
    );
    if !(closed && handshaken) {
        return error;
    }
    let failure = TlsFailure::Closed {
        client_cert,
        cause: io::Error::new(io.kind(), io.to_string()),
    };
    io::Error::new(io.kind(), failure).into()
}

/// A TLS failure and its cause.
#[derive(Debug)]
enum TlsFailure {
    /// rustls refused the handshake, or the broker did with an alert.
    Refused(rustls::Error),
    /// The broker closed the connection right after the handshake.
    Closed { client_cert: bool, cause: io::Error },
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(cause) => write!(f, "tls failure: {cause}"),
            Self::Closed { client_cert, cause } => {
                let guess = match client_cert {
                    false => "it may require a client certificate, and none was sent",
                    true => "it may have refused the client certificate",
                };
                write!(
                    f,
                    "tls failure: the broker closed the connection after the tls handshake; \
                     {guess} ({cause})"
                )
            }
        }
    }
}

impl StdError for TlsFailure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Refused(cause) => Some(cause),
            Self::Closed { cause, .. } => Some(cause),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{CertificateError, ClientConfig, RootCertStore};

    use super::*;

    fn lapin_io(error: io::Error) -> lapin::Error {
        error.into()
    }

    #[test]
    fn rustls_errors_read_as_tls_failures() {
        let refused = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let refused = lapin_io(io::Error::new(io::ErrorKind::InvalidData, refused));
        let error = tls_failure(refused, false, true);
        assert_eq!(
            error.to_string(),
            "IO error: tls failure: invalid peer certificate: UnknownIssuer"
        );
        let ErrorKind::IOError(io) = error.kind() else {
            panic!("{error:?}")
        };
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        let cause = io.get_ref().unwrap().source().unwrap();
        assert!(cause.downcast_ref::<rustls::Error>().is_some());

        // Other errors are left alone, also a reset before the handshake ended.
        for (kind, handshaken) in [
            (io::ErrorKind::ConnectionRefused, true),
            (io::ErrorKind::ConnectionReset, false),
        ] {
            let error = lapin_io(io::Error::from(kind));
            let shown = error.to_string();
            assert_eq!(tls_failure(error, handshaken, false).to_string(), shown);
        }
    }

    #[test]
    fn a_connection_closed_after_the_handshake_is_a_likely_refused_client_certificate() {
        let reset = || lapin_io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            tls_failure(reset(), true, false).to_string(),
            "IO error: tls failure: the broker closed the connection after the tls handshake; \
             it may require a client certificate, and none was sent (connection reset)"
        );
        let error = tls_failure(reset(), true, true);
        assert_eq!(
            error.to_string(),
            "IO error: tls failure: the broker closed the connection after the tls handshake; \
             it may have refused the client certificate (connection reset)"
        );
        let ErrorKind::IOError(io) = error.kind() else {
            panic!("{error:?}")
        };
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn debug_shows_no_certificate() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let tls = Tls::new(TlsClient {
            config: Arc::new(config),
            server_name: Some("rabbit.internal".into()),
        });
        assert_eq!(
            format!("{tls:?}"),
            r#"Tls { server_name: Some("rabbit.internal"), client_cert: false, .. }"#
        );
    }
}
