//! TLS with rustls (ring provider) for both the replication connection and tokio-postgres
//! sessions, following libpq's `sslmode` (see [`crate::conninfo`]).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::conninfo::{is_system_root, ConnParams, SslMode};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration `params.sslmode` asks for (None for `disable`).
///
/// As libpq: `require` with a root certificate (given, or `~/.postgresql/root.crt`) checks
/// the chain like `verify-ca`; the verify modes need a root certificate and never fall back
/// to the web's roots unless told so with `sslrootcert=system`.
pub fn client_config(params: &ConnParams) -> Result<Option<Arc<ClientConfig>>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let root = root_cert_file(params);
    let mode = match params.sslmode {
        SslMode::Require if root.is_some() => SslMode::VerifyCa,
        m => m,
    };
    let config = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let root = root.ok_or_else(|| {
                format!(
                    "sslmode={} needs the certificate of the authority that signed the server's: set sslrootcert=/path/to/root.crt (or put it in ~/.postgresql/root.crt), or sslrootcert=system to trust the usual web authorities",
                    mode.name()
                )
            })?;
            let roots = Arc::new(root_store(&root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> =
                if mode == SslMode::VerifyFull { webpki } else { Arc::new(ChainOnly(webpki)) };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// `sslrootcert`, else libpq's default `~/.postgresql/root.crt` when it exists.
fn root_cert_file(params: &ConnParams) -> Option<PathBuf> {
    params.sslrootcert.clone().or_else(crate::conninfo::default_root_cert)
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    if is_system_root(path) {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(store);
    }
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
        store.add(cert).map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {} holds no certificate", path.display()));
    }
    Ok(store)
}

/// The name to check the server certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}

/// `sslmode=require`/`prefer`: encryption without authentication of the server, as libpq.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres' TLS hook backed by [`client_config`].
#[derive(Clone)]
pub struct MakeRustlsConnect(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = server_name(domain).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect(self.0.clone(), name))
    }
}

pub struct RustlsConnect(Arc<ClientConfig>, ServerName<'static>);

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.0);
        Box::pin(async move { Ok(RustlsStream(Box::new(connector.connect(self.1, stream).await?))) })
    }
}

pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// A tokio-postgres session whose stream may or may not be TLS.
pub type SqlConnection = tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>;

/// Sent first in every SQL session pgcdc opens (see [`pin_search_path`]).
const PIN_SEARCH_PATH: &str = "SET search_path = pg_catalog, pg_temp";

/// Pins the session's `search_path` to the system catalog, before any other statement: names
/// in what pgcdc sends (all schema-qualified as well) then never resolve to objects someone
/// planted in a schema on the user's `search_path` (a `public.unnest(oid[])`, an operator
/// `=`, a type `text`), which would run as the connecting role.
pub async fn pin_search_path(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(PIN_SEARCH_PATH).await
}

/// Opens an ordinary SQL session with the TLS `params` asks for. The caller drives the
/// returned connection (spawn it, or poll it for notifications), then calls
/// [`pin_search_path`].
pub async fn connect_sql(
    params: &ConnParams,
) -> Result<(tokio_postgres::Client, SqlConnection), crate::errors::PgError> {
    let config = params.pg_config();
    // With sslmode=disable tokio-postgres never calls the connector; it still needs one.
    let tls = match client_config(params).map_err(crate::errors::PgError::Interface)? {
        Some(tls) => tls,
        None => Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| crate::errors::PgError::Interface(format!("TLS setup: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
                .with_no_client_auth(),
        ),
    };
    let connect = config.connect(MakeRustlsConnect(tls));
    // tokio-postgres applies connect_timeout to the TCP connect only; bound the handshake too.
    match tokio::time::timeout(params.connect_timeout + std::time::Duration::from_millis(500), connect).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(crate::errors::PgError::from_tokio_postgres(e, params)),
        Err(_) => Err(crate::errors::PgError::Connect(format!(
            "connection to {} timed out after {:?}",
            params.endpoint(),
            params.connect_timeout
        ))),
    }
}
