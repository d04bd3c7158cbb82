//! Connection parameters shared by the replication connection, the catalog connection and
//! the feed client: where to connect, who to be, and how to secure the link.
//!
//! Connection strings are parsed here (both libpq forms: `key=value ...` and
//! `postgresql://user:pw@host:port/db?key=value`), with libpq's environment variables as
//! defaults. What this client implements:
//!
//! | key | meaning |
//! |-----|---------|
//! | `host`, `port` | one host; a value starting with `/` is a unix-socket directory. Without a host: the unix socket in `/var/run/postgresql`, else `/tmp` (like libpq) |
//! | `user`, `password`, `dbname` | as libpq; no password: `PGPASSWORD`, then the password file (`passfile`, `PGPASSFILE`, `~/.pgpass`; ignored unless mode 0600 or stricter, as libpq) |
//! | `sslmode`, `sslrootcert` | see below |
//! | `connect_timeout` | seconds (decimals allowed; 0 = no limit) |
//! | `application_name`, `fallback_application_name`, `options` | sent at startup |
//! | `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count`, `tcp_user_timeout` | TCP liveness; keepalives are on by default (30 s idle, 10 s interval, 3 probes) so a half-open connection is noticed |
//! | `channel_binding` | `disable`, `prefer` (default), `require`: SCRAM channel binding (`tls-server-end-point`) as libpq; needs TLS |
//! | `client_encoding` (UTF8 only), `target_session_attrs` (`any` only), `gssencmode` (`disable`/`prefer`: never used) | accepted when they ask for nothing this client lacks |
//!
//! Every other key (`hostaddr`, several hosts, `sslcert`, `service`, ...) is refused with an
//! `InterfaceError` naming it, instead of being silently dropped.
//!
//! `sslmode` follows libpq: `disable`, `prefer` (the default: TLS when the server offers it,
//! no certificate check), `require` (TLS, no certificate check — but, as libpq, verify-ca
//! when a root certificate is given), `verify-ca` (TLS, the chain must lead to a root in
//! `sslrootcert`, default `~/.postgresql/root.crt`), `verify-full` (as verify-ca, and the
//! host name must match). The web's root store is used only for `sslrootcert=system`, which
//! implies (and requires) `verify-full`, as in libpq 16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// libpq's `sslmode` (`allow` is taken as `prefer`).
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

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode to use: `sslrootcert=system` means verify-full and refuses weaker modes.
    pub fn resolve(given: Option<&str>, sslrootcert: Option<&Path>) -> Result<SslMode, String> {
        let system = sslrootcert.is_some_and(is_system_root);
        match given.map(SslMode::parse).transpose()? {
            None if system => Ok(SslMode::VerifyFull),
            None => Ok(SslMode::Prefer),
            Some(m) if system && m != SslMode::VerifyFull => Err(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                m.name()
            )),
            Some(m) => Ok(m),
        }
    }
}

/// `sslrootcert=system`: trust the system's (here: Mozilla's, via webpki-roots) root CAs.
pub fn is_system_root(p: &Path) -> bool {
    p.as_os_str() == "system"
}

/// libpq's `channel_binding`: whether SCRAM binds the authentication to the TLS channel
/// (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`), so a man in the middle that terminates
/// TLS cannot relay the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection is TLS and the server offers it.
    Prefer,
    /// Bind, or refuse to connect (no TLS, a server that does not offer it, or one that
    /// authenticates without SCRAM).
    Require,
}

impl ChannelBindingMode {
    pub fn parse(s: &str) -> Result<ChannelBindingMode, String> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            other => return Err(format!("invalid channel_binding {other:?}: expected disable, prefer or require")),
        })
    }
}

/// TCP keepalive settings (libpq's `keepalives_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive { idle: Duration::from_secs(30), interval: Duration::from_secs(10), count: 3 }
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
    pub channel_binding: ChannelBindingMode,
    /// Bound on reaching the server and authenticating.
    pub connect_timeout: Duration,
    pub application_name: String,
    /// Startup `options` (e.g. `-c statement_timeout=5s`).
    pub options: Option<String>,
    /// None: keepalives off (`keepalives=0`).
    pub keepalive: Option<Keepalive>,
    pub tcp_user_timeout: Option<Duration>,
    /// Answer a server's request for a cleartext password on an unencrypted TCP connection
    /// (never by default: anyone on the path could read it).
    pub allow_cleartext_password: bool,
}

impl Default for ConnParams {
    fn default() -> Self {
        ConnParams {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            channel_binding: ChannelBindingMode::Prefer,
            connect_timeout: Duration::from_secs(10),
            application_name: "pgcdc".into(),
            options: None,
            keepalive: Some(Keepalive::default()),
            tcp_user_timeout: None,
            allow_cleartext_password: false,
        }
    }
}

/// Keys accepted with any value.
const SUPPORTED: &[&str] = &[
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "sslmode",
    "sslrootcert",
    "channel_binding",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "passfile",
];

/// Keys accepted only with values that ask for nothing this client lacks.
fn harmless(key: &str, value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    Some(match key {
        "client_encoding" => matches!(v.as_str(), "utf8" | "utf-8" | "unicode" | "auto"),
        "target_session_attrs" => v == "any",
        "gssencmode" => matches!(v.as_str(), "disable" | "prefer"),
        "sslnegotiation" => v == "postgres",
        "load_balance_hosts" => v == "disable",
        _ => return None,
    })
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

    /// Parses a libpq connection string (URL or `key=value` form), with libpq's environment
    /// variables for what it leaves out. Unsupported keys are an error naming them.
    pub fn from_dsn(dsn: &str) -> Result<ConnParams, String> {
        Self::from_dsn_with(dsn, &|k| std::env::var(k).ok())
    }

    /// As [`ConnParams::from_dsn`], with `env` in place of the process environment: the
    /// extension parses `pgcdc.replication_conninfo` over its own defaults this way (the
    /// postmaster's environment is not the user's).
    pub fn from_dsn_with(dsn: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnParams, String> {
        let pairs = parse_conninfo(dsn)?;
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in pairs {
            kv.insert(k, v); // the last one wins, as in libpq
        }
        let refused: Vec<String> = kv
            .iter()
            .filter(|(k, v)| !SUPPORTED.contains(&k.as_str()) && harmless(k, v) != Some(true))
            .map(|(k, v)| match harmless(k, v) {
                Some(false) => format!("{k}={v}"),
                _ => k.clone(),
            })
            .collect();
        if !refused.is_empty() {
            return Err(format!(
                "unsupported connection parameter{} {}: pgcdc does not implement {}",
                if refused.len() > 1 { "s" } else { "" },
                refused.join(", "),
                if refused.len() > 1 { "them" } else { "it" }
            ));
        }
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let get = |k: &str, e: &str| kv.get(k).cloned().filter(|v| !v.is_empty()).or_else(|| env(e));
        if let Some(h) = get("host", "PGHOST").filter(|h| h.contains(',')) {
            return Err(format!("several hosts ({h}) are not supported: give one host"));
        }
        let port_text = get("port", "PGPORT").unwrap_or_else(|| "5432".into());
        if port_text.contains(',') {
            return Err(format!("several ports ({port_text}) are not supported: give one host and one port"));
        }
        let port: u16 = port_text.trim().parse().map_err(|_| format!("invalid port {port_text:?}"))?;
        let host = get("host", "PGHOST").unwrap_or_else(|| default_socket_dir(port));
        let user = get("user", "PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());
        let database = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let sslrootcert = get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from);
        let sslmode = SslMode::resolve(get("sslmode", "PGSSLMODE").as_deref(), sslrootcert.as_deref())?;
        let channel_binding = match get("channel_binding", "PGCHANNELBINDING") {
            Some(v) => ChannelBindingMode::parse(&v)?,
            None => ChannelBindingMode::Prefer,
        };
        let connect_timeout = match get("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => {
                let s: f64 = t.trim().parse().map_err(|_| format!("invalid connect_timeout {t:?}"))?;
                if s <= 0.0 {
                    Duration::from_secs(365 * 86_400) // 0: wait indefinitely (libpq)
                } else {
                    Duration::try_from_secs_f64(s).map_err(|_| format!("invalid connect_timeout {t:?}"))?
                }
            }
            None => Duration::from_secs(10),
        };
        let application_name = get("application_name", "PGAPPNAME")
            .or_else(|| kv.get("fallback_application_name").cloned())
            .unwrap_or_else(|| "pgcdc".into());
        let secs = |k: &str, default: Duration| -> Result<Duration, String> {
            match kv.get(k) {
                Some(v) => v.trim().parse::<u64>().map(Duration::from_secs).map_err(|_| format!("invalid {k} {v:?}")),
                None => Ok(default),
            }
        };
        let d = Keepalive::default();
        let keepalive = match kv.get("keepalives").map(|v| v.trim()) {
            Some("0") => None,
            Some("1") | None => Some(Keepalive {
                idle: secs("keepalives_idle", d.idle)?,
                interval: secs("keepalives_interval", d.interval)?,
                count: match kv.get("keepalives_count") {
                    Some(v) => v.trim().parse().map_err(|_| format!("invalid keepalives_count {v:?}"))?,
                    None => d.count,
                },
            }),
            Some(other) => return Err(format!("invalid keepalives {other:?}: expected 0 or 1")),
        };
        let tcp_user_timeout = match kv.get("tcp_user_timeout") {
            Some(v) => match v.trim().parse::<u64>() {
                Ok(0) => None,
                Ok(ms) => Some(Duration::from_millis(ms)),
                Err(_) => return Err(format!("invalid tcp_user_timeout {v:?}")),
            },
            None => None,
        };
        let mut params = ConnParams {
            host,
            port,
            user,
            password: get("password", "PGPASSWORD"),
            database,
            sslmode,
            sslrootcert,
            channel_binding,
            connect_timeout,
            application_name,
            options: get("options", "PGOPTIONS"),
            keepalive,
            tcp_user_timeout,
            allow_cleartext_password: false,
        };
        if params.password.is_none() {
            let file = get("passfile", "PGPASSFILE").map(PathBuf::from).or_else(|| default_passfile(&env));
            params.password = file.and_then(|f| params.password_from_file(&f));
        }
        Ok(params)
    }

    /// Fills in the password from the password file when none is set (the reader's path;
    /// `from_dsn` does it itself).
    pub fn fill_password_from_passfile(&mut self) {
        if self.password.is_some() {
            return;
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file = env("PGPASSFILE").map(PathBuf::from).or_else(|| default_passfile(&env));
        self.password = file.and_then(|f| self.password_from_file(&f));
    }

    /// The password of the first matching line of a libpq password file
    /// (`host:port:database:user:password`, `*` matches anything, `\:` and `\\` escape).
    /// A file readable by group or others is ignored with a warning, as libpq does.
    fn password_from_file(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "pgcdc: WARNING: password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
                path.display()
            );
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let port = self.port.to_string();
        for line in text.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let fields = split_passfile_line(line);
            if fields.len() < 5 {
                continue;
            }
            let host_ok = fields[0] == "*"
                || fields[0] == self.host
                || (self.is_unix_socket() && fields[0] == "localhost" && is_default_socket_dir(&self.host));
            if host_ok
                && (fields[1] == "*" || fields[1] == port)
                && (fields[2] == "*" || fields[2] == self.database)
                && (fields[3] == "*" || fields[3] == self.user)
            {
                return Some(fields[4].clone()).filter(|p| !p.is_empty());
            }
        }
        None
    }
}

const SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

fn is_default_socket_dir(dir: &str) -> bool {
    SOCKET_DIRS.contains(&dir.trim_end_matches('/'))
}

/// libpq's default when no host is given: the unix socket (Debian's directory, then /tmp).
fn default_socket_dir(port: u16) -> String {
    SOCKET_DIRS
        .iter()
        .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
        .unwrap_or(&SOCKET_DIRS[0])
        .to_string()
}

fn default_passfile(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// The `~/.postgresql/root.crt` libpq uses when `sslrootcert` is not given.
pub fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var("HOME").ok().filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join("root.crt")).filter(|p| p.exists())
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), out.last_mut()) {
                    f.push(n);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            c => {
                if let Some(f) = out.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    out
}

/// Splits a connection string into `(key, value)` pairs, in order.
fn parse_conninfo(dsn: &str) -> Result<Vec<(String, String)>, String> {
    let trimmed = dsn.trim();
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = trimmed.strip_prefix(scheme) {
            return parse_uri(rest);
        }
    }
    parse_keywords(trimmed)
}

fn parse_uri(rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostspec) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        let (user, pw) = match u.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (u, None),
        };
        if !user.is_empty() {
            out.push(("user".into(), percent_decode(user)?));
        }
        if let Some(pw) = pw {
            out.push(("password".into(), percent_decode(pw)?));
        }
    }
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for h in hostspec.split(',') {
            let (host, port) = if let Some(v6) = h.strip_prefix('[') {
                let (addr, after) = v6.split_once(']').ok_or_else(|| format!("invalid IPv6 address in {h:?}"))?;
                (addr.to_owned(), after.strip_prefix(':').map(str::to_owned))
            } else {
                match h.rsplit_once(':') {
                    Some((a, p)) => (a.to_owned(), Some(p.to_owned())),
                    None => (h.to_owned(), None),
                }
            };
            hosts.push(percent_decode(&host)?);
            if let Some(p) = port {
                ports.push(p);
            }
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        if !ports.is_empty() {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if !path.is_empty() {
        out.push(("dbname".into(), percent_decode(path)?));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("invalid URI query parameter {pair:?}"))?;
        let k = percent_decode(k)?;
        // libpq's URI spelling of the SSL switch
        let (k, v) = if k == "ssl" && v == "true" {
            ("sslmode".to_owned(), "require".to_owned())
        } else {
            (k, percent_decode(v)?)
        };
        out.push((k, v));
    }
    Ok(out)
}

fn parse_keywords(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?} in connection info string"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.push(chars.next().ok_or("unterminated quoted string in connection info string")?),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err("unterminated quoted string in connection info string".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("invalid percent-encoded token in {s:?}"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("invalid percent-encoded token in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("percent-encoded value {s:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(dsn: &str, env: &[(&str, &str)]) -> Result<ConnParams, String> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ConnParams::from_dsn_with(dsn, &move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn keyword_form_with_quotes_and_ssl() {
        let p = parse("host=x sslmode=verify-full sslrootcert='/a b/c.pem' dbname=d user=u", &[]).unwrap();
        assert_eq!((p.host.as_str(), p.database.as_str(), p.user.as_str()), ("x", "d", "u"));
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert.as_deref(), Some(Path::new("/a b/c.pem")));
        let p = parse("host = 'it''s' password='a\\'b c'", &[]);
        assert!(p.is_err(), "libpq has no '' escape: {p:?}");
        let p = parse("host=h password='a\\'b c' options='-c search_path=x'", &[]).unwrap();
        assert_eq!(p.password.as_deref(), Some("a'b c"));
        assert_eq!(p.options.as_deref(), Some("-c search_path=x"));
    }

    #[test]
    fn uri_form() {
        let p = parse("postgresql://us%40r:p%3Aw@[::1]:6543/my%20db?sslmode=require&connect_timeout=3", &[]).unwrap();
        assert_eq!((p.user.as_str(), p.password.as_deref()), ("us@r", Some("p:w")));
        assert_eq!((p.host.as_str(), p.port, p.database.as_str()), ("::1", 6543, "my db"));
        assert_eq!(p.sslmode, SslMode::Require);
        assert_eq!(p.connect_timeout, Duration::from_secs(3));
        let p = parse("postgres://%2Frun%2Fpg/db", &[]).unwrap();
        assert!(p.is_unix_socket() && p.host == "/run/pg");
    }

    #[test]
    fn unsupported_keys_are_named() {
        let e = parse("host=x hostaddr=1.2.3.4 sslcert=/c target_session_attrs=read-write", &[]).unwrap_err();
        assert!(
            e.contains("hostaddr") && e.contains("sslcert") && e.contains("target_session_attrs=read-write"),
            "{e}"
        );
        assert!(parse("host=x bogus=1", &[]).unwrap_err().contains("bogus"));
        assert!(parse("host=a,b", &[]).unwrap_err().contains("several hosts"));
        assert!(parse("postgresql://a:1,b:2/db", &[]).unwrap_err().contains("several hosts"));
        assert!(parse("channel_binding=maybe host=x", &[]).unwrap_err().contains("invalid channel_binding"));
        let p = parse("host=x target_session_attrs=any channel_binding=require client_encoding=UTF8", &[]).unwrap();
        assert_eq!(p.channel_binding, ChannelBindingMode::Require);
        assert_eq!(
            parse("host=x", &[("PGCHANNELBINDING", "disable")]).unwrap().channel_binding,
            ChannelBindingMode::Disable
        );
        assert_eq!(parse("host=x", &[]).unwrap().channel_binding, ChannelBindingMode::Prefer);
    }

    #[test]
    fn keepalives_and_defaults() {
        let p = parse("host=x", &[("PGPORT", "5433"), ("PGUSER", "me")]).unwrap();
        assert_eq!((p.port, p.user.as_str(), p.database.as_str()), (5433, "me", "me"));
        assert_eq!(p.keepalive, Some(Keepalive::default()));
        let p = parse("host=x keepalives_idle=7 keepalives_interval=2 keepalives_count=5 tcp_user_timeout=9000", &[])
            .unwrap();
        assert_eq!(
            p.keepalive,
            Some(Keepalive { idle: Duration::from_secs(7), interval: Duration::from_secs(2), count: 5 })
        );
        assert_eq!(p.tcp_user_timeout, Some(Duration::from_secs(9)));
        assert_eq!(parse("host=x keepalives=0", &[]).unwrap().keepalive, None);
        // no host: the unix socket, as libpq
        let p = parse("dbname=d", &[]).unwrap();
        assert!(p.is_unix_socket(), "{}", p.host);
    }

    #[test]
    fn sslrootcert_system_means_verify_full() {
        assert_eq!(parse("host=x sslrootcert=system", &[]).unwrap().sslmode, SslMode::VerifyFull);
        let e = parse("host=x sslrootcert=system sslmode=verify-ca", &[]).unwrap_err();
        assert!(e.contains("weak sslmode"), "{e}");
    }

    #[test]
    fn passfile_lines() {
        assert_eq!(split_passfile_line("h:5432:d\\:b:u:p\\\\w:x"), vec!["h", "5432", "d:b", "u", "p\\w:x"]);
        let dir = std::env::temp_dir().join(format!("pgcdc-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "# comment\nother:*:*:*:nope\n127.0.0.1:*:db:u:secret\n*:*:*:*:fallback\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let f = file.to_string_lossy().into_owned();
        let p = parse(&format!("host=127.0.0.1 dbname=db user=u passfile={f}"), &[]).unwrap();
        assert_eq!(p.password.as_deref(), Some("secret"));
        let p = parse("host=127.0.0.1 dbname=db2 user=u", &[("PGPASSFILE", &f)]).unwrap();
        assert_eq!(p.password.as_deref(), Some("fallback"));
        let p = parse(&format!("host=127.0.0.1 password=given passfile={f}"), &[]).unwrap();
        assert_eq!(p.password.as_deref(), Some("given"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = parse(&format!("host=127.0.0.1 dbname=db user=u passfile={f}"), &[]).unwrap();
        assert_eq!(p.password, None, "a world-readable password file is ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
