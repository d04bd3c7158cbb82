//! The session task: one SQL session at a time, reconnecting with backoff, that reads the
//! feed into the shared queue and sends the consumer's acknowledgements (see the diagram in
//! [`super`]).
//!
//! Acknowledgements after a server crash: the queue is UNLOGGED, so after a crash it is empty
//! until the feed's worker has staged the unacknowledged events again from the slot. Until
//! then `pgcdc.ack` refuses a position this process saw before the crash (22023, "cannot
//! acknowledge ..."). That refusal is not an error of the stream: the acknowledgement stays
//! pending and is retried (every second, and as soon as a read returns rows) until the
//! worker has caught up.
//!
//! Liveness: TCP keepalives are on, and every query has a deadline ([`QUERY_TIMEOUT`]), so a
//! half-open connection ends in a reconnect, not a hang.
//!
//! Names: every session pins `search_path` first ([`crate::sql::pin_search_path`]) and every
//! statement is schema-qualified, so nothing planted on the user's `search_path` runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use pgcdc_core::catalog::{Catalog, TypeKind, TypeRow};
use pgcdc_core::debezium::EncoderOptions;
use pgcdc_core::Lsn;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::event::{Field, JsonKey, Spans};
use super::{AckTarget, Columns, FeedConfig, FeedIdentity, FeedRow, Pos, Shared, STOP_GRACE};
use crate::errors::PgError;
use pgcdc_wire::ConnParams;

/// Acknowledgements are sent at most this often (the newest one wins).
const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// A refused acknowledgement (not staged again yet after a crash) is retried this often.
const ACK_RETRY: Duration = Duration::from_secs(1);
/// Bound on any one query: beyond it the connection counts as lost (and is reopened).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) async fn run(shared: Arc<Shared>, config: FeedConfig) {
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    loop {
        if shared.stop.is_requested()
            && (!shared.acks_pending() || shared.stop.deadline().is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let sessions_before = shared.lock().sessions;
        let result = session(&shared, &config).await;
        let streamed = shared.lock().sessions > sessions_before;
        if streamed {
            backoff = Duration::from_millis(100);
            down_since = None;
        }
        {
            let mut st = shared.lock();
            st.backend_pid = 0;
            st.queue.clear();
        }
        shared.space.notify_one();
        match result {
            Ok(()) => break,
            Err(e) if shared.stop.is_requested() => shared.lock().ack_failure = Some(e),
            Err(e) => {
                let ever = shared.lock().sessions > 0;
                let expired = down_since.zip(config.reconnect_timeout).is_some_and(|(s, l)| s.elapsed() > l);
                if !(ever && config.reconnect && e.is_transient()) || expired {
                    shared.lock().error = Some(e);
                    shared.signal.notify();
                    break;
                }
                shared.lock().ack_failure = Some(e);
            }
        }
        if down_since.is_none() {
            down_since = Some(Instant::now());
        }
        shared.stop.backoff(&mut backoff).await;
    }
    let mut st = shared.lock();
    if st.acks_pending() {
        let (l, o) = st.ack_wanted.unwrap_or_default();
        let why = st.ack_failure.as_ref().or(st.error.as_ref()).map(|e| format!(": {e}")).unwrap_or_default();
        st.unflushed = Some(PgError::Operational(format!(
            "the acknowledgement of ({l}, {o}) could not be flushed before the stream closed{why}; the server keeps those events and will deliver them again"
        )));
    }
    st.finished = true;
    drop(st);
    shared.signal.notify();
}

struct Session<'a> {
    shared: &'a Shared,
    config: &'a FeedConfig,
    /// Shared with the read in flight (see [`Session::table_loop`]).
    client: Arc<tokio_postgres::Client>,
    feed: Arc<FeedIdentity>,
    options: Arc<EncoderOptions>,
    tables: HashMap<(String, String), Arc<Columns>>,
    last_ack: Instant,
    /// A refused acknowledgement (events not staged again yet) waits until then.
    ack_retry_at: Option<Instant>,
    /// `pgcdc.ack`, prepared at the first acknowledgement (one round trip per ack after it).
    ack_stmt: Option<tokio_postgres::Statement>,
}

/// A query with a deadline: no answer within [`QUERY_TIMEOUT`] means the connection is lost.
async fn bounded<T>(
    params: &ConnParams,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|e| PgError::from_tokio_postgres(e, params)),
        Err(_) => Err(PgError::Io(format!(
            "no answer from {} to {what} within {} s: the connection is considered lost",
            params.endpoint(),
            QUERY_TIMEOUT.as_secs()
        ))),
    }
}

async fn session(shared: &Arc<Shared>, config: &FeedConfig) -> Result<(), PgError> {
    // Setting up is abandoned at once by close() when there is nothing to flush, and at the
    // close deadline otherwise.
    let setup = async {
        let (client, mut connection) = crate::sql::connect_sql(&config.conn).await?;
        let (notes_tx, notes) = mpsc::unbounded_channel::<Result<String, PgError>>();
        let params = config.conn.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        let _ = notes_tx.send(Ok(n.payload().to_owned()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = notes_tx.send(Err(PgError::from_tokio_postgres(e, &params)));
                        return;
                    }
                }
            }
            let _ = notes_tx.send(Err(PgError::Io(format!("connection to {} closed", params.endpoint()))));
        });
        let opened = async {
            bounded(&config.conn, "SET search_path", crate::sql::pin_search_path(&client)).await?;
            let row = bounded(&config.conn, "the feed lookup", client.query_opt(FEED_SQL, &[&config.feed]))
                .await
            .map_err(|e| match e {
                PgError::Server(s) if s.code == "3F000" || s.code == "42P01" => PgError::server(
                    "42704",
                    format!("the pgcdc extension is not installed in database \"{}\"", config.conn.database),
                    Some("CREATE EXTENSION pgcdc (with pgcdc in shared_preload_libraries).".into()),
                ),
                other => other,
            })?;
            let Some(row) = row else {
                return Err(PgError::server(
                    "42704",
                    format!("feed \"{}\" does not exist", config.feed),
                    Some("Create it with SELECT pgcdc.create_feed(name, publication), or check that you may use it (pgcdc.feeds lists the feeds you may use).".into()),
                ));
            };
            let channel: String = row.get(1);
            bounded(&config.conn, "LISTEN", client.batch_execute(&format!("LISTEN {}", pgcdc_wire::quote_ident(&channel))))
                .await?;
            Ok::<_, PgError>(row)
        }
        .await;
        match opened {
            Ok(row) => Ok((client, driver, notes, row)),
            Err(e) => {
                driver.abort();
                Err(e)
            }
        }
    };
    let (client, driver, mut notes, row) = tokio::select! {
        r = setup => r?,
        _ = shared.stop.abandon(|| shared.acks_pending()) => return Ok(()),
    };
    let sink: String = row.get(0);
    let options_text: String = row.get(2);
    let pid: i32 = row.get(3);
    let feed = Arc::new(FeedIdentity { name: config.feed.clone(), created_at: row.get(4) });
    let options = Arc::new(encoder_options_of(&config.feed, &options_text));
    {
        let mut st = shared.lock();
        match &st.feed {
            Some(known) if **known != *feed => {
                drop(st);
                driver.abort();
                return Err(recreated(&config.feed));
            }
            Some(_) => {}
            None => st.feed = Some(feed.clone()),
        }
        st.sessions += 1;
        st.backend_pid = pid;
        st.sink_notify = sink == "notify";
    }
    shared.signal.notify();
    let mut s = Session {
        shared,
        config,
        client: Arc::new(client),
        feed,
        options,
        tables: HashMap::new(),
        last_ack: Instant::now() - ACK_INTERVAL,
        ack_retry_at: None,
        ack_stmt: None,
    };
    let result = if sink == "notify" { s.notify_loop(&mut notes).await } else { s.table_loop(&mut notes).await };
    let result = match result {
        Ok(()) => s.finish().await,
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

/// The stream's feed is gone; one of the same name took its place (whose positions name other
/// events, so nothing read from it may pass for this stream's).
fn recreated(feed: &str) -> PgError {
    PgError::server(
        "42704",
        format!("feed \"{feed}\" was dropped and created again while this stream was open"),
        Some(
            "Open a new stream: the events this one delivered belong to the dropped feed and cannot be acknowledged."
                .into(),
        ),
    )
}

/// The feed's encoder options from its `options` (the feed-only keys are skipped).
fn encoder_options_of(feed: &str, text: &str) -> EncoderOptions {
    let mut o = EncoderOptions::default();
    let _ = o.set("topic.prefix", feed);
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = o.set(&k, &v);
        }
    }
    o
}

// Every name schema-qualified (the session's search_path is pinned too, see crate::sql).
const FEED_SQL: &str = "SELECT sink, channel, options::pg_catalog.text, pg_catalog.pg_backend_pid(), created_at \
     FROM pgcdc.feeds WHERE name OPERATOR(pg_catalog.=) $1::pg_catalog.text";

/// The last column tells which feed of that name the rows belong to (see [`Session::check_feed`]).
const READ_SQL: &str = "SELECT commit_lsn, ordinal, lsn, xid, op, schema_name, \
     table_name, topic, key, event, headers, \
     (SELECT f.created_at FROM pgcdc.feeds f WHERE f.name OPERATOR(pg_catalog.=) $1::pg_catalog.text) \
     FROM pgcdc.read($1::pg_catalog.text, $2::pg_catalog.int4, $3::pg_catalog.text::pg_catalog.pg_lsn, \
     $4::pg_catalog.int4)";

const ACK_SQL: &str =
    "SELECT pgcdc.ack($1::pg_catalog.text, $2::pg_catalog.text::pg_catalog.pg_lsn, $3::pg_catalog.int4)";

/// A `json` column's text as sent in binary: the text itself (no cast to text on the server).
struct JsonText<'a>(&'a str);

impl<'a> tokio_postgres::types::FromSql<'a> for JsonText<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(JsonText(std::str::from_utf8(raw)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSON
    }
}

/// A read that returned this much JSON may have been cut short by `pgcdc.read`'s 64 MB cap
/// (half of it, so a change of the cap's exact value does not matter): read again at once.
const READ_CAP_HINT: usize = 32 << 20;

/// A `pgcdc.read` sent ahead; dropped unread (stop, error), it is abandoned.
struct InFlight(tokio::task::JoinHandle<Result<Vec<tokio_postgres::Row>, PgError>>);

impl InFlight {
    async fn rows(mut self) -> Result<Vec<tokio_postgres::Row>, PgError> {
        (&mut self.0).await.map_err(|e| PgError::Io(format!("the read task failed: {e}")))?
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What woke a session waiting for events.
enum Woken {
    /// New events may be there: read.
    Data,
    Stop,
}

impl Session<'_> {
    /// Waits for a reason to read (a NOTIFY, or the idle poll) or a stop, flushing
    /// acknowledgements meanwhile without reading.
    async fn wait_for_data(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
        idle_until: Option<Instant>,
    ) -> Result<(Woken, Option<String>), PgError> {
        loop {
            self.flush_acks(false).await?;
            let far = Instant::now() + Duration::from_secs(3600);
            let due = self.ack_due().unwrap_or(far);
            tokio::select! {
                biased;
                _ = self.shared.stop.requested() => return Ok((Woken::Stop, None)),
                n = notes.recv() => {
                    let payload = n.unwrap_or_else(|| Err(PgError::Io("connection closed".into())))?;
                    return Ok((Woken::Data, Some(payload)));
                }
                _ = self.shared.ack_wake.notified() => {}
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = tokio::time::sleep_until(idle_until.unwrap_or(far).into()) => return Ok((Woken::Data, None)),
            }
        }
    }

    /// Reads the queue batch after batch. While a full batch is turned into events and
    /// queued, the next read is already on its way: the server reads while this process works.
    async fn table_loop(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
    ) -> Result<(), PgError> {
        let stmt = bounded(&self.config.conn, "PREPARE", self.client.prepare(READ_SQL)).await?;
        let mut next: Option<InFlight> = None;
        loop {
            self.flush_acks(false).await?;
            if self.shared.stop.is_requested() {
                return Ok(());
            }
            let read = match next.take() {
                Some(read) => read,
                None => {
                    // Wake-ups already received are answered by the read below; one that
                    // arrives after this point wakes the wait after it.
                    while let Ok(n) = notes.try_recv() {
                        n?;
                    }
                    let after = self.shared.lock().last_fetched();
                    self.start_read(&stmt, after)
                }
            };
            let rows = tokio::select! {
                r = read.rows() => r?,
                _ = self.shared.stop.requested() => return Ok(()),
            };
            self.check_feed(&rows)?;
            let got = rows.len();
            let batch: Vec<FeedRow> = rows.iter().map(|r| self.read_row(r)).collect();
            drop(rows);
            let json_len = |j: &Option<String>| j.as_ref().map_or(0, String::len);
            let bytes: usize = batch.iter().map(|r| json_len(&r.key) + json_len(&r.value)).sum();
            // More to read: a full batch, or one cut short by read's size cap (64 MB of JSON,
            // see pgcdc_ext/README.md: "a short result does not mean the queue is drained").
            let more = got as i32 >= self.config.batch_size || bytes >= READ_CAP_HINT;
            if more {
                next = batch.last().map(|last| self.start_read(&stmt, Some(last.position())));
            }
            if got > 0 {
                // Rows are staged: a refused acknowledgement may well pass now.
                self.ack_retry_at = None;
            }
            let batch = self.with_columns(batch).await?;
            if !batch.is_empty() && self.push(batch).await? {
                return Ok(());
            }
            if more {
                continue;
            }
            let idle_until = Instant::now() + self.config.idle_poll;
            if let (Woken::Stop, _) = self.wait_for_data(notes, Some(idle_until)).await? {
                return Ok(());
            }
        }
    }

    /// Sends a read of the batch after `after` at once; its rows are awaited later.
    fn start_read(&self, stmt: &tokio_postgres::Statement, after: Option<Pos>) -> InFlight {
        let (client, stmt, conn) = (self.client.clone(), stmt.clone(), self.config.conn.clone());
        let (feed, batch_size) = (self.config.feed.clone(), self.config.batch_size);
        InFlight(tokio::spawn(async move {
            let (lsn, ord) = match after {
                Some((l, o)) => (Some(l.to_string()), Some(o as i32)),
                None => (None, None),
            };
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&feed, &batch_size, &lsn, &ord];
            bounded(&conn, "pgcdc.read", client.query(&stmt, &args)).await
        }))
    }

    async fn notify_loop(
        &mut self,
        notes: &mut mpsc::UnboundedReceiver<Result<String, PgError>>,
    ) -> Result<(), PgError> {
        loop {
            let payload = match self.wait_for_data(notes, None).await? {
                (Woken::Stop, _) => return Ok(()),
                (Woken::Data, None) => continue,
                (Woken::Data, Some(p)) => p,
            };
            let mut batch = vec![self.notify_row(&payload).await?];
            while let Ok(n) = notes.try_recv() {
                batch.push(self.notify_row(&n?).await?);
            }
            let batch: Vec<FeedRow> = batch.into_iter().flatten().collect();
            let batch = self.with_columns(batch).await?;
            if self.push(batch).await? {
                return Ok(());
            }
        }
    }

    /// One NOTIFY payload: the event itself, or (too big for a payload, or a payload that
    /// carries only the position) a reference to read from the queue with the reader's
    /// privileges.
    async fn notify_row(&mut self, payload: &str) -> Result<Option<FeedRow>, PgError> {
        let bad = |e: String| PgError::Data(format!("NOTIFY payload on the feed's channel: {e}"));
        let fields: HashMap<&str, &RawValue> = serde_json::from_str(payload).map_err(|e| bad(e.to_string()))?;
        let text = |k: &str| -> Result<Option<String>, PgError> {
            fields
                .get(k)
                .map(|v| serde_json::from_str::<String>(v.get()).map_err(|e| bad(format!("{k}: {e}"))))
                .transpose()
        };
        let commit_text = text("commit_lsn")?.ok_or_else(|| bad("no commit_lsn".into()))?;
        let commit: Lsn = commit_text.parse().map_err(|e| bad(format!("commit_lsn: {e}")))?;
        let ordinal: u32 = match fields.get("ordinal") {
            Some(v) => serde_json::from_str(v.get()).map_err(|e| bad(format!("ordinal: {e}")))?,
            None => return Err(bad("no ordinal".into())),
        };
        let staged = fields.get("staged").is_some_and(|v| v.get() == "true");
        if staged || !fields.contains_key("value") {
            // Read it from the queue: the next staged event after the one just before it.
            let (after_lsn, after_ord) =
                if ordinal > 0 { (commit, ordinal - 1) } else { (Lsn(commit.0.saturating_sub(1)), i32::MAX as u32) };
            let rows = bounded(
                &self.config.conn,
                "pgcdc.read",
                self.client.query(
                    READ_SQL,
                    &[&self.config.feed, &1i32, &Some(after_lsn.to_string()), &Some(after_ord as i32)],
                ),
            )
            .await?;
            self.check_feed(&rows)?;
            for r in rows {
                let row = self.read_row(&r);
                if row.position() == (commit, ordinal) {
                    return Ok(Some(row));
                }
            }
            return Ok(None); // acknowledged (by another consumer) since
        }
        let raw = |k: &str| fields.get(k).map(|v| v.get().to_owned()).filter(|v| v != "null");
        let value = raw("value");
        // schema and table from the event's source block
        #[derive(serde::Deserialize, Default)]
        struct Src {
            #[serde(default)]
            schema: String,
            #[serde(default)]
            table: String,
        }
        #[derive(serde::Deserialize)]
        struct Env {
            #[serde(default)]
            source: Option<Src>,
        }
        let src = value
            .as_deref()
            .and_then(|v| serde_json::from_str::<Env>(v).ok())
            .and_then(|e| e.source)
            .unwrap_or_default();
        Ok(Some(self.row(
            commit,
            ordinal as i32,
            text("lsn")?.unwrap_or_default().parse().unwrap_or_default(),
            None,
            text("op")?.unwrap_or_default(),
            src.schema,
            src.table,
            text("topic")?.unwrap_or_default(),
            raw("key"),
            value,
            raw("headers"),
            false,
        )))
    }

    /// Rows of `READ_SQL` come from this session's feed, not from one created under its name
    /// since (`pgcdc.read` finds feeds by name).
    fn check_feed(&self, rows: &[tokio_postgres::Row]) -> Result<(), PgError> {
        match rows.first().map(|r| r.get::<_, Option<SystemTime>>(11)) {
            Some(created_at) if created_at != Some(self.feed.created_at) => Err(recreated(&self.feed.name)),
            _ => Ok(()),
        }
    }

    /// A row of [`READ_SQL`]: a staged event.
    fn read_row(&self, r: &tokio_postgres::Row) -> FeedRow {
        let json = |i: usize| r.get::<_, Option<JsonText<'_>>>(i).map(|j| j.0.to_owned());
        // pg_lsn in binary: no text to print on the server and parse here.
        let lsn = |i: usize| Lsn(u64::from(r.get::<_, tokio_postgres::types::PgLsn>(i)));
        self.row(
            lsn(0),
            r.get(1),
            lsn(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
            r.get(7),
            json(8),
            json(9),
            json(10),
            true,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        commit_lsn: Lsn,
        ordinal: i32,
        lsn: Lsn,
        xid: Option<i64>,
        op: String,
        schema: String,
        table: String,
        topic: String,
        key: Option<String>,
        value: Option<String>,
        headers: Option<String>,
        staged: bool,
    ) -> FeedRow {
        FeedRow {
            feed: self.feed.clone(),
            commit_lsn,
            ordinal: ordinal.max(0) as u32,
            lsn,
            xid,
            op,
            schema,
            table,
            topic,
            key,
            value,
            headers,
            staged,
            columns: None,
            spans: None,
            options: self.options.clone(),
        }
    }

    /// Attaches column types (looked up once per table, again when a column is new).
    async fn with_columns(&mut self, mut batch: Vec<FeedRow>) -> Result<Vec<FeedRow>, PgError> {
        for row in batch.iter_mut() {
            let Some(value) = row.value.as_deref() else { continue };
            let spans = Spans::find(value);
            let after = spans.as_ref().ok().and_then(|s| s.raw(value, Field::After));
            row.spans = Some(spans);
            if row.table.is_empty() {
                continue;
            }
            let key = (row.schema.clone(), row.table.clone());
            let cached = self.tables.get(&key).cloned();
            let cols = match cached {
                Some(c) if !after.is_some_and(|a| has_new_column(a, &c)) => c,
                _ => {
                    let c = Arc::new(self.lookup_columns(&row.schema, &row.table).await?);
                    self.tables.insert(key, c.clone());
                    c
                }
            };
            row.columns = Some(cols);
        }
        Ok(batch)
    }

    async fn lookup_columns(&self, schema: &str, table: &str) -> Result<Columns, PgError> {
        let rows = bounded(
            &self.config.conn,
            "a catalog lookup",
            self.client.query(
                "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) a.attrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name \
                   AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
                   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&schema, &table],
            ),
        )
        .await?;
        let cols: Vec<(String, u32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let unknown: Vec<u32> = cols.iter().map(|c| c.1).filter(|&o| TypeKind::builtin(o, -1).is_none()).collect();
        let mut catalog = Catalog::new();
        if !unknown.is_empty() {
            let sql = include_str!("../../../sql/type_info.sql");
            let mut types = Vec::new();
            for row in bounded(&self.config.conn, "a catalog lookup", self.client.query(sql, &[&unknown])).await? {
                types.push(TypeRow {
                    oid: row.get(0),
                    namespace: row.get(1),
                    name: row.get(2),
                    typtype: row.get::<_, String>(3).chars().next().unwrap_or('b'),
                    category: row.get::<_, String>(4).chars().next().unwrap_or('U'),
                    element: row.get(5),
                    base_type: row.get(6),
                    base_typmod: row.get(7),
                    enum_labels: row.get(8),
                    attribute_names: row.get(9),
                    attribute_types: row.get(10),
                    attribute_typmods: row.get(11),
                });
            }
            catalog.register_type_rows(types);
        }
        Ok(Columns { kinds: cols.into_iter().map(|(n, oid, m)| (n, catalog.resolve(oid, m, None))).collect() })
    }

    /// Queues a batch (waiting while the consumer is behind). True when stopping.
    async fn push(&mut self, batch: Vec<FeedRow>) -> Result<bool, PgError> {
        let mut batch: VecDeque<Box<FeedRow>> = batch.into_iter().map(Box::new).collect();
        loop {
            let space = self.shared.space.notified();
            {
                let mut st = self.shared.lock();
                if st.stopping {
                    return Ok(true);
                }
                // Skip what this process already delivered (after a reconnect).
                let floor = st.last_fetched();
                batch.retain(|r| floor.is_none_or(|f| r.position() > f));
                if st.queue.len() < self.config.max_buffered {
                    if st.sink_notify {
                        let staged: Vec<Pos> = batch.iter().filter(|r| r.staged).map(|r| r.position()).collect();
                        st.staged_notify.extend(staged);
                    }
                    st.queue.extend(batch.drain(..));
                    let armed = !st.queue.is_empty() && std::mem::replace(&mut st.armed, false);
                    drop(st);
                    if armed {
                        self.shared.signal.notify();
                    }
                    return Ok(false);
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let due = self.ack_due().unwrap_or(far);
            tokio::select! {
                _ = space => {}
                _ = self.shared.stop.requested() => return Ok(true),
                _ = self.shared.ack_wake.notified() => self.flush_acks(false).await?,
                _ = tokio::time::sleep_until(due.into()) => self.flush_acks(false).await?,
            }
        }
    }

    /// When the next acknowledgement is due (None: nothing to send).
    fn ack_due(&self) -> Option<Instant> {
        if !self.shared.acks_pending() {
            return None;
        }
        let due = self.last_ack + ACK_INTERVAL;
        Some(match self.ack_retry_at {
            Some(t) => t.max(due),
            None => due,
        })
    }

    /// Sends the newest acknowledgement (rate-limited to one per [`ACK_INTERVAL`] unless
    /// `now`). A refusal because the events are not staged again yet (after a server crash)
    /// keeps it pending for a retry; other failures end the session.
    async fn flush_acks(&mut self, now: bool) -> Result<(), PgError> {
        let due = self.ack_due();
        let Some(due) = due else { return Ok(()) };
        if !now && Instant::now() < due {
            return Ok(());
        }
        let pos = match self.shared.lock().ack_target() {
            AckTarget::Nothing => return Ok(()),
            AckTarget::Send(p) => p,
        };
        let sent = match self.ack_statement().await {
            Ok(stmt) => {
                let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&self.config.feed, &pos.0.to_string(), &(pos.1 as i32)];
                bounded(&self.config.conn, "pgcdc.ack", self.client.query_one(&stmt, &args)).await
            }
            Err(e) => Err(e),
        };
        self.last_ack = Instant::now();
        match sent {
            Ok(_) => {
                self.ack_retry_at = None;
                self.shared.lock().acked(pos);
                Ok(())
            }
            Err(e) if e.is_ack_not_staged_yet() => {
                self.ack_retry_at = Some(Instant::now() + ACK_RETRY);
                self.shared.lock().ack_failure = Some(e);
                Ok(())
            }
            Err(e) => {
                self.shared.lock().ack_failure = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn ack_statement(&mut self) -> Result<tokio_postgres::Statement, PgError> {
        if let Some(stmt) = &self.ack_stmt {
            return Ok(stmt.clone());
        }
        let stmt = bounded(&self.config.conn, "PREPARE", self.client.prepare(ACK_SQL)).await?;
        self.ack_stmt = Some(stmt.clone());
        Ok(stmt)
    }

    /// On close: flushes what is acknowledged, retrying refusals, until its deadline.
    async fn finish(&mut self) -> Result<(), PgError> {
        let deadline = self.shared.stop.deadline().unwrap_or_else(|| Instant::now() + STOP_GRACE);
        while self.shared.acks_pending() && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), self.flush_acks(true)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
            if let Some(retry) = self.ack_retry_at.filter(|_| self.shared.acks_pending()) {
                tokio::time::sleep_until(retry.min(deadline).into()).await;
            }
        }
        Ok(())
    }
}

/// True when a row object (an event's `after`) names a column the cached types do not know.
fn has_new_column(after: &str, cols: &Columns) -> bool {
    /// Visits the row's keys, skipping their values (nothing is built).
    struct Unknown<'c>(&'c Columns);
    impl<'de> serde::de::Visitor<'de> for Unknown<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a row object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<bool, A::Error> {
            let mut unknown = false;
            let mut position = 0;
            while let Some(key) = m.next_key::<JsonKey<'de>>()? {
                unknown |= self.0.get(position, &key.0).is_none();
                m.next_value::<serde::de::IgnoredAny>()?;
                position += 1;
            }
            Ok(unknown)
        }
    }
    let mut de = serde_json::Deserializer::from_str(after);
    serde::Deserializer::deserialize_map(&mut de, Unknown(cols)).is_ok_and(|unknown| unknown)
}
