//! Ordinary (non-replication) SQL sessions on tokio-postgres, for the feed client and the
//! reader's catalog lookups: the same connection parameters and TLS as the replication
//! connection (`pgcdc_wire`), and a pinned `search_path`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pgcdc_wire::conninfo::{ChannelBindingMode, ConnParams, SslMode};
use pgcdc_wire::tls::{client_config, server_name, unverified_config};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::errors::PgError;

/// A tokio-postgres configuration for `params`. TLS, when wanted, is set up by
/// [`MakeRustlsConnect`] with the same `sslmode`; channel binding as `channel_binding` says.
pub fn pg_config(params: &ConnParams) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&params.host)
        .port(params.port)
        .user(&params.user)
        .dbname(&params.database)
        .application_name(&params.application_name)
        .connect_timeout(params.connect_timeout)
        .ssl_mode(match params.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        })
        .channel_binding(match params.channel_binding {
            ChannelBindingMode::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBindingMode::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBindingMode::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    if let Some(p) = &params.password {
        c.password(p);
    }
    if let Some(o) = &params.options {
        c.options(o);
    }
    match params.keepalive {
        Some(k) => {
            c.keepalives(true).keepalives_idle(k.idle).keepalives_interval(k.interval).keepalives_retries(k.count);
        }
        None => {
            c.keepalives(false);
        }
    }
    if let Some(t) = params.tcp_user_timeout {
        c.tcp_user_timeout(t);
    }
    c
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
        match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(pgcdc_wire::tls::end_point_hash(cert)),
            None => ChannelBinding::none(),
        }
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
pub async fn connect_sql(params: &ConnParams) -> Result<(tokio_postgres::Client, SqlConnection), PgError> {
    let config = pg_config(params);
    // With sslmode=disable tokio-postgres never calls the connector; it still needs one.
    let tls = match client_config(params).map_err(PgError::Interface)? {
        Some(tls) => tls,
        None => unverified_config().map_err(PgError::Interface)?,
    };
    let connect = config.connect(MakeRustlsConnect(tls));
    // tokio-postgres applies connect_timeout to the TCP connect only; bound the handshake too.
    match tokio::time::timeout(params.connect_timeout + std::time::Duration::from_millis(500), connect).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(PgError::from_tokio_postgres(e, params)),
        Err(_) => Err(PgError::Connect(format!(
            "connection to {} timed out after {:?}",
            params.endpoint(),
            params.connect_timeout
        ))),
    }
}
