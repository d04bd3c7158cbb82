//! Connection parameters shared by the replication connection, the catalog connection and
//! the feed client: where to connect, who to be, and how to secure the link.
//!
//! `sslmode` follows libpq: `disable`, `prefer` (the default: TLS when the server offers it,
//! no certificate check), `require` (TLS, no certificate check), `verify-ca` (TLS, the chain
//! must lead to `sslrootcert`), `verify-full` (as verify-ca, and the host name must match).
//! Without `sslrootcert`, the verify modes use the Mozilla root store.

use std::path::PathBuf;
use std::time::Duration;

/// libpq's `sslmode` (without `allow`, which nobody should want).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Host name, IP address, or a unix-socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    /// Bound on reaching the server and authenticating.
    pub connect_timeout: Duration,
    pub application_name: String,
}

impl ConnParams {
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// `host:port` or the socket path, for error messages.
    pub fn endpoint(&self) -> String {
        if self.is_unix_socket() {
            format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// A tokio-postgres configuration for an ordinary (non-replication) session. TLS, when
    /// wanted, is set up by [`crate::tls::MakeRustlsConnect`] with the same `sslmode`.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.password {
            c.password(p);
        }
        c
    }

    /// Parses a libpq connection string (URL or `key=value` form) with tokio-postgres'
    /// parser, then picks up `sslmode`/`sslrootcert` (which that parser does not keep) and the
    /// libpq environment variables for what the string leaves out.
    pub fn from_dsn(dsn: &str) -> Result<ConnParams, String> {
        let (stripped, sslmode, sslrootcert) = extract_ssl_params(dsn);
        let cfg: tokio_postgres::Config = stripped.parse().map_err(|e| format!("invalid connection string: {e}"))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => env("PGHOST").unwrap_or_else(|| "localhost".into()),
        };
        let port = match cfg.get_ports().first() {
            Some(p) => *p,
            None => env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432),
        };
        let user = cfg
            .get_user()
            .map(str::to_owned)
            .or_else(|| env("PGUSER"))
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let database =
            cfg.get_dbname().map(str::to_owned).or_else(|| env("PGDATABASE")).unwrap_or_else(|| user.clone());
        let password =
            cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).or_else(|| env("PGPASSWORD"));
        let sslmode = match sslmode.or_else(|| env("PGSSLMODE")) {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            database,
            sslmode,
            sslrootcert: sslrootcert.or_else(|| env("PGSSLROOTCERT")).map(PathBuf::from),
            connect_timeout: cfg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10)),
            application_name: cfg.get_application_name().unwrap_or("pgcdc").to_owned(),
        })
    }
}

/// Removes `sslmode` and `sslrootcert` from a connection string (tokio-postgres rejects the
/// verify modes and ignores root certificates) and returns them.
fn extract_ssl_params(dsn: &str) -> (String, Option<String>, Option<String>) {
    let mut sslmode = None;
    let mut root = None;
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else {
            return (dsn.to_owned(), None, None);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => sslmode = Some(v.to_owned()),
                Some(("sslrootcert", v)) => root = Some(percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        let out = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return (out, sslmode, root);
    }
    // key=value form: values may be single-quoted with backslash escapes.
    let mut out = String::with_capacity(dsn.len());
    let mut rest = dsn.trim_start();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            out.push_str(rest);
            break;
        };
        let key = rest[..eq].trim();
        let mut after = rest[eq + 1..].trim_start();
        let (value, raw_len) = if let Some(q) = after.strip_prefix('\'') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, 1 + end)
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), end)
        };
        let raw = &after[..raw_len.min(after.len())];
        match key {
            "sslmode" => sslmode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => {
                out.push_str(key);
                out.push('=');
                out.push_str(raw);
                out.push(' ');
            }
        }
        after = &after[raw_len.min(after.len())..];
        rest = after.trim_start();
    }
    (out, sslmode, root)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_extracted_from_both_forms() {
        let (s, m, r) = extract_ssl_params("host=x sslmode=verify-full sslrootcert='/a b/c.pem' dbname=d");
        assert_eq!(m.as_deref(), Some("verify-full"));
        assert_eq!(r.as_deref(), Some("/a b/c.pem"));
        assert_eq!(s.trim(), "host=x dbname=d");
        let (s, m, r) = extract_ssl_params("postgresql://u@h/db?sslmode=require&connect_timeout=3");
        assert_eq!(m.as_deref(), Some("require"));
        assert_eq!(r, None);
        assert_eq!(s, "postgresql://u@h/db?connect_timeout=3");
    }
}
