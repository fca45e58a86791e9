//! The TLS settings: the CA, certificate and key files read, checked and made into the
//! rustls client config every `amqps://` connection uses.
//!
//! This runs as part of [`PublisherConfig::validate`], so that a missing, unreadable or
//! invalid file, or a key that does not belong to its certificate, fails at start-up with
//! an error naming the setting and the file. Errors never quote a file's contents.

use std::{fmt, fs, path::Path, sync::Arc};

use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{PublisherConfig, error::ConfigError, names::Naming};

/// The rustls client config of an `amqps://` URL, and the name the server certificate
/// must carry when it is not the URL's host.
#[derive(Clone)]
pub(crate) struct TlsClient {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: Option<String>,
}

impl fmt::Debug for TlsClient {
    // Only what is safe to show: no certificate or key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

/// The TLS client of `config`: `None` for an `amqp://` URL (which then must have no TLS
/// setting), the roots, client certificate and server name of the settings otherwise.
pub(super) fn client(
    config: &PublisherConfig,
    naming: Naming,
) -> Result<Option<TlsClient>, ConfigError> {
    let name = |field: &str| naming.name(field);
    if !config.url.is_tls() {
        let set = [
            ("tls_ca_file", config.tls_ca_file.is_some()),
            ("tls_builtin_roots", !config.tls_builtin_roots),
            ("tls_cert_file", config.tls_cert_file.is_some()),
            ("tls_key_file", config.tls_key_file.is_some()),
            ("tls_server_name", config.tls_server_name.is_some()),
        ];
        return match set.iter().find(|(_, set)| *set) {
            None => Ok(None),
            Some((field, _)) => Err(ConfigError::invalid(
                name(field),
                format_args!("expected an `amqps://` {} with tls settings", name("url")),
                &config.url.redacted(),
            )),
        };
    }

    let mut roots = RootCertStore::empty();
    if config.tls_builtin_roots {
        let (_, _ignored) = roots
            .add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    }
    match &config.tls_ca_file {
        Some(path) => add_cas(&mut roots, path, &name("tls_ca_file"))?,
        None if !config.tls_builtin_roots => {
            return Err(ConfigError::new(
                name("tls_ca_file"),
                format!(
                    "required when {} is false (no certificate would be trusted)",
                    name("tls_builtin_roots")
                ),
            ));
        }
        None => {}
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots);
    let client = match (&config.tls_cert_file, &config.tls_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let (cert_var, key_var) = (name("tls_cert_file"), name("tls_key_file"));
            let chain = certificates(cert_file, &cert_var)?;
            let key = private_key(key_file, &key_var)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| match error {
                    rustls::Error::InconsistentKeys(_) => ConfigError::invalid(
                        key_var,
                        format_args!(
                            "expected the private key of the certificate in {cert_var} (`{}`)",
                            cert_file.display()
                        ),
                        &shown(key_file),
                    ),
                    rustls::Error::InvalidCertificate(why) => ConfigError::invalid(
                        cert_var,
                        format_args!("expected a valid certificate ({why:?})"),
                        &shown(cert_file),
                    ),
                    // Loading the key: rustls's messages name no key material.
                    other => ConfigError::invalid(
                        key_var,
                        format_args!("expected an RSA, ECDSA or Ed25519 private key ({other})"),
                        &shown(key_file),
                    ),
                })?
        }
        (Some(_), None) => return Err(both(&name("tls_key_file"), &name("tls_cert_file"))),
        (None, Some(_)) => return Err(both(&name("tls_cert_file"), &name("tls_key_file"))),
    };

    if let Some(server_name) = &config.tls_server_name
        && ServerName::try_from(server_name.as_str()).is_err()
    {
        return Err(ConfigError::invalid(
            name("tls_server_name"),
            "expected a dns name or ip address",
            server_name,
        ));
    }
    Ok(Some(TlsClient {
        config: Arc::new(client),
        server_name: config.tls_server_name.clone(),
    }))
}

/// The error for `missing` unset while `given` is set.
fn both(missing: &str, given: &str) -> ConfigError {
    ConfigError::new(
        missing.to_owned(),
        format!("required when {given} is set (mutual tls needs a certificate and its key)"),
    )
}

/// A path as errors show it.
fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// The contents of the file at `path`, the setting `var`.
fn read(path: &Path, var: &str) -> Result<Vec<u8>, ConfigError> {
    fs::read(path).map_err(|error| {
        ConfigError::invalid(
            var.to_owned(),
            format_args!("expected a readable file ({error})"),
            &shown(path),
        )
    })
}

/// The certificates of the PEM file at `path`, at least one.
fn certificates(path: &Path, var: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read(path, var)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            ConfigError::invalid(
                var.to_owned(),
                format_args!("expected pem certificates ({})", pem_error(&error)),
                &shown(path),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(
            var.to_owned(),
            "expected pem certificates (`-----BEGIN CERTIFICATE-----`), found none",
            &shown(path),
        ));
    }
    Ok(certs)
}

/// Adds the CA certificates of the PEM file at `path` to `roots`; each must be valid.
fn add_cas(roots: &mut RootCertStore, path: &Path, var: &str) -> Result<(), ConfigError> {
    for (i, cert) in certificates(path, var)?.into_iter().enumerate() {
        roots.add(cert).map_err(|error| {
            ConfigError::invalid(
                var.to_owned(),
                format_args!(
                    "expected valid ca certificates (certificate {}: {error})",
                    i + 1
                ),
                &shown(path),
            )
        })?;
    }
    Ok(())
}

/// The private key of the PEM file at `path`. The error never quotes the file.
fn private_key(path: &Path, var: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read(path, var)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        let why = match error {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no `-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` found"
                    .to_owned()
            }
            other => pem_error(&other),
        };
        ConfigError::invalid(
            var.to_owned(),
            format_args!("expected a pem private key ({why})"),
            &shown(path),
        )
    })
}

/// What is wrong with a PEM file, without quoting it (the error's own text may hold a
/// line of a key file).
fn pem_error(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "a section has no end marker".into(),
        Error::IllegalSectionStart { .. } => "a section start line is malformed".into(),
        Error::Base64Decode(_) => "a section is not valid base64".into(),
        Error::Io(error) => error.to_string(),
        Error::NoItemsFound => "nothing found".into(),
        Error::SectionTooLarge => "a section is too large".into(),
        _ => "not valid pem".into(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose,
    };
    use tempfile::TempDir;

    use super::*;

    /// A CA, a client certificate it signed and the client's key, as PEM files in a
    /// temporary directory, plus a second key that matches nothing.
    pub(in crate::config) struct Files {
        pub(in crate::config) dir: TempDir,
        pub(in crate::config) ca: PathBuf,
        pub(in crate::config) cert: PathBuf,
        pub(in crate::config) key: PathBuf,
        pub(in crate::config) other_key: PathBuf,
        /// Every line of the key files, to check no error quotes one.
        key_lines: Vec<String>,
    }

    impl Files {
        pub(in crate::config) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["client.test".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let other_key = KeyPair::generate().unwrap();
            let write = |name: &str, contents: &str| {
                let path = dir.path().join(name);
                fs::write(&path, contents).unwrap();
                path
            };
            let key_lines = [key.serialize_pem(), other_key.serialize_pem()]
                .iter()
                .flat_map(|pem| pem.lines().map(str::to_owned).collect::<Vec<_>>())
                .filter(|line| !line.starts_with("-----"))
                .collect();
            Self {
                ca: write("ca.pem", &ca.pem()),
                cert: write("client.pem", &cert.pem()),
                key: write("client.key", &key.serialize_pem()),
                other_key: write("other.key", &other_key.serialize_pem()),
                key_lines,
                dir,
            }
        }

        /// A file in the directory holding `contents`.
        fn file(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            fs::write(&path, contents).unwrap();
            path
        }

        /// Panics if `text` quotes a line of a key file.
        fn assert_no_key_material(&self, text: &str) {
            for line in &self.key_lines {
                assert!(!text.contains(line.as_str()), "key material in {text}");
            }
            assert!(!text.contains("PRIVATE KEY-----"), "key material in {text}");
        }
    }

    fn tls_config() -> PublisherConfig {
        PublisherConfig {
            url: "amqps://app:s3cret@rabbit.test/%2f".parse().unwrap(),
            ..Default::default()
        }
    }

    fn error(config: &PublisherConfig) -> ConfigError {
        config.validate().unwrap_err()
    }

    #[test]
    fn plain_urls_need_no_tls_and_amqps_uses_the_builtin_roots() {
        assert!(
            client(&PublisherConfig::default(), Naming::Key)
                .unwrap()
                .is_none()
        );
        let tls = client(&tls_config(), Naming::Key).unwrap().unwrap();
        assert!(!tls.config.client_auth_cert_resolver.has_certs());
        assert_eq!(tls.server_name, None);
        // An amqps URL with a CA file adds it to the built-in roots, or alone.
        let files = Files::new();
        for builtin in [true, false] {
            let config = PublisherConfig {
                tls_ca_file: Some(files.ca.clone()),
                tls_builtin_roots: builtin,
                tls_server_name: Some("rabbit.internal".into()),
                ..tls_config()
            };
            let tls = client(&config, Naming::Key).unwrap().unwrap();
            assert_eq!(tls.server_name.as_deref(), Some("rabbit.internal"));
        }
    }

    #[test]
    fn mutual_tls_with_a_matching_key() {
        let files = Files::new();
        let config = PublisherConfig {
            tls_ca_file: Some(files.ca.clone()),
            tls_cert_file: Some(files.cert.clone()),
            tls_key_file: Some(files.key.clone()),
            ..tls_config()
        };
        config.validate().unwrap();
        let tls = config.validated_tls().unwrap().unwrap();
        assert!(tls.config.client_auth_cert_resolver.has_certs());
        let debug = format!("{tls:?} {config:?}");
        assert!(debug.contains("client_cert: true"), "{debug}");
        files.assert_no_key_material(&debug);
    }

    #[test]
    fn tls_settings_need_an_amqps_url() {
        let files = Files::new();
        let plain = || PublisherConfig {
            url: "amqp://app:s3cret@rabbit.test/%2f".parse().unwrap(),
            ..Default::default()
        };
        let cases = [
            (
                "tls_ca_file",
                PublisherConfig {
                    tls_ca_file: Some(files.ca.clone()),
                    ..plain()
                },
            ),
            (
                "tls_builtin_roots",
                PublisherConfig {
                    tls_builtin_roots: false,
                    ..plain()
                },
            ),
            (
                "tls_cert_file",
                PublisherConfig {
                    tls_cert_file: Some(files.cert.clone()),
                    ..plain()
                },
            ),
            (
                "tls_key_file",
                PublisherConfig {
                    tls_key_file: Some(files.key.clone()),
                    ..plain()
                },
            ),
            (
                "tls_server_name",
                PublisherConfig {
                    tls_server_name: Some("x".into()),
                    ..plain()
                },
            ),
        ];
        for (field, config) in cases {
            let err = error(&config);
            assert_eq!(err.field(), field);
            assert_eq!(
                err.to_string(),
                format!(
                    "{field}: expected an `amqps://` url with tls settings, got `amqp://app:***@rabbit.test/%2f`"
                )
            );
        }
        // Named as the environment names them.
        let err = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_URL", "amqp://app:s3cret@rabbit.test/"),
            ("FITVIZ_EVENTS_TLS_SERVER_NAME", "rabbit.internal"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "FITVIZ_EVENTS_TLS_SERVER_NAME: expected an `amqps://` FITVIZ_EVENTS_URL with tls \
             settings, got `amqp://app:***@rabbit.test/`"
        );
    }

    #[test]
    fn only_the_private_ca_needs_a_ca_file() {
        let config = PublisherConfig {
            tls_builtin_roots: false,
            ..tls_config()
        };
        assert_eq!(
            error(&config).to_string(),
            "tls_ca_file: required when tls_builtin_roots is false (no certificate would be trusted)"
        );
        let err = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_URL", "amqps://rabbit.test"),
            ("FITVIZ_EVENTS_TLS_BUILTIN_ROOTS", "off"),
        ])
        .unwrap_err();
        assert_eq!(err.field(), "FITVIZ_EVENTS_TLS_CA_FILE");
        assert!(
            err.to_string()
                .contains("FITVIZ_EVENTS_TLS_BUILTIN_ROOTS is false"),
            "{err}"
        );
    }

    #[test]
    fn unreadable_and_invalid_ca_files() {
        let files = Files::new();
        let missing = files.dir.path().join("missing.pem");
        let with_ca = |path: &PathBuf| PublisherConfig {
            tls_ca_file: Some(path.clone()),
            ..tls_config()
        };

        let err = error(&with_ca(&missing));
        assert_eq!(err.field(), "tls_ca_file");
        assert_eq!(
            err.to_string(),
            format!(
                "tls_ca_file: expected a readable file (No such file or directory (os error 2)), got `{}`",
                missing.display()
            )
        );
        // A directory cannot be read either.
        let err = error(&with_ca(&files.dir.path().to_path_buf()));
        assert!(
            err.to_string()
                .starts_with("tls_ca_file: expected a readable file ("),
            "{err}"
        );

        let text = files.file("text.pem", "not a certificate\n");
        assert_eq!(
            error(&with_ca(&text)).to_string(),
            format!(
                "tls_ca_file: expected pem certificates (`-----BEGIN CERTIFICATE-----`), found none, got `{}`",
                text.display()
            )
        );
        // A key file is no CA file.
        let err = error(&with_ca(&files.key));
        assert!(err.to_string().contains("found none"), "{err}");
        files.assert_no_key_material(&err.to_string());

        let unterminated = files.file("cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert_eq!(
            error(&with_ca(&unterminated)).to_string(),
            format!(
                "tls_ca_file: expected pem certificates (a section has no end marker), got `{}`",
                unterminated.display()
            )
        );
        let not_der = files.file(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let err = error(&with_ca(&not_der));
        assert!(
            err.to_string()
                .starts_with("tls_ca_file: expected valid ca certificates (certificate 1: "),
            "{err}"
        );
        // Named as the environment names it.
        let err = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_URL", "amqps://rabbit.test"),
            ("FITVIZ_EVENTS_TLS_CA_FILE", missing.to_str().unwrap()),
        ])
        .unwrap_err();
        assert_eq!(err.field(), "FITVIZ_EVENTS_TLS_CA_FILE");
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    }

    #[test]
    fn a_certificate_needs_its_key_and_the_reverse() {
        let files = Files::new();
        let config = PublisherConfig {
            tls_cert_file: Some(files.cert.clone()),
            ..tls_config()
        };
        assert_eq!(
            error(&config).to_string(),
            "tls_key_file: required when tls_cert_file is set (mutual tls needs a certificate and its key)"
        );
        let config = PublisherConfig {
            tls_key_file: Some(files.key.clone()),
            ..tls_config()
        };
        assert_eq!(
            error(&config).to_string(),
            "tls_cert_file: required when tls_key_file is set (mutual tls needs a certificate and its key)"
        );
    }

    #[test]
    fn bad_client_certificates_and_keys() {
        let files = Files::new();
        let mutual = |cert: &PathBuf, key: &PathBuf| PublisherConfig {
            tls_cert_file: Some(cert.clone()),
            tls_key_file: Some(key.clone()),
            ..tls_config()
        };

        // A key that is not the certificate's.
        let err = error(&mutual(&files.cert, &files.other_key));
        assert_eq!(err.field(), "tls_key_file");
        assert_eq!(
            err.to_string(),
            format!(
                "tls_key_file: expected the private key of the certificate in tls_cert_file (`{}`), got `{}`",
                files.cert.display(),
                files.other_key.display()
            )
        );
        files.assert_no_key_material(&format!("{err} {err:?}"));
        let err = PublisherConfig::from_vars([
            ("FITVIZ_EVENTS_URL", "amqps://rabbit.test"),
            ("FITVIZ_EVENTS_TLS_CERT_FILE", files.cert.to_str().unwrap()),
            (
                "FITVIZ_EVENTS_TLS_KEY_FILE",
                files.other_key.to_str().unwrap(),
            ),
        ])
        .unwrap_err();
        assert_eq!(err.field(), "FITVIZ_EVENTS_TLS_KEY_FILE");
        assert!(
            err.to_string()
                .contains("certificate in FITVIZ_EVENTS_TLS_CERT_FILE"),
            "{err}"
        );

        // Files swapped: no key in the certificate file's place is found.
        let err = error(&mutual(&files.key, &files.cert));
        assert_eq!(err.field(), "tls_cert_file");
        assert!(err.to_string().contains("found none"), "{err}");
        files.assert_no_key_material(&format!("{err} {err:?}"));

        // A certificate where the key should be.
        let err = error(&mutual(&files.cert, &files.ca));
        assert_eq!(
            err.to_string(),
            format!(
                "tls_key_file: expected a pem private key (no `-----BEGIN PRIVATE KEY-----`, \
                 `RSA PRIVATE KEY` or `EC PRIVATE KEY` found), got `{}`",
                files.ca.display()
            )
        );

        // Key armour around something that is no key: the bytes are not shown.
        let fake = files.file(
            "fake.key",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n",
        );
        let err = error(&mutual(&files.cert, &fake));
        assert!(
            err.to_string()
                .starts_with("tls_key_file: expected an RSA, ECDSA or Ed25519 private key ("),
            "{err}"
        );
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        // A broken key file: its line is not quoted.
        let broken = files.file(
            "broken.key",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n",
        );
        let err = error(&mutual(&files.cert, &broken));
        assert_eq!(
            err.to_string(),
            format!(
                "tls_key_file: expected a pem private key (a section has no end marker), got `{}`",
                broken.display()
            )
        );
        let missing = files.dir.path().join("nope.key");
        let err = error(&mutual(&files.cert, &missing));
        assert!(
            err.to_string()
                .starts_with("tls_key_file: expected a readable file ("),
            "{err}"
        );
    }

    #[test]
    fn server_names_are_checked() {
        let config = PublisherConfig {
            tls_server_name: Some("not a name".into()),
            ..tls_config()
        };
        assert_eq!(
            error(&config).to_string(),
            "tls_server_name: expected a dns name or ip address, got `not a name`"
        );
        for name in ["rabbit.internal", "10.0.0.7", "localhost"] {
            let config = PublisherConfig {
                tls_server_name: Some(name.into()),
                ..tls_config()
            };
            config.validate().unwrap();
        }
    }
}
