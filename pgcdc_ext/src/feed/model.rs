//! What a feed is: its row in `pgcdc.feed`, its sink and state, and its validated options.

use pgcdc_core::debezium::{EncoderOptions, OptionError};
use pgrx::pg_sys;
use serde_json::Value;

use crate::gucs;
use crate::position::Position;
use crate::snapshot;

/// Longest feed name: the slot name `pgcdc_<name>` must fit in NAMEDATALEN.
pub(super) const MAX_NAME_LEN: usize = 40;

/// Feed-level option keys (the rest are the Debezium encoder's, see [`EncoderOptions`]).
const FEED_KEYS: &[&str] = &[
    "max_staged_rows",
    "max_staged_bytes",
    "batch_size",
    "snapshot.mode",
    "snapshot.fetch.size",
    "streaming",
    "slot.failover",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Stage events in `pgcdc.event`; NOTIFY `pgcdc_<feed>` once per batch as a wake-up.
    Table,
    /// Send each event as a NOTIFY payload on `pgcdc_<feed>`; events over the payload limit
    /// are staged in `pgcdc.event` and the payload references them.
    Notify,
}

impl Sink {
    pub fn parse(s: &str) -> Option<Sink> {
        match s {
            "table" => Some(Sink::Table),
            "notify" => Some(Sink::Notify),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    Running,
    Paused,
    Error,
}

impl FeedState {
    pub fn parse(s: &str) -> FeedState {
        match s {
            "paused" => FeedState::Paused,
            "error" => FeedState::Error,
            _ => FeedState::Running,
        }
    }
}

/// Validated feed options: the encoder's, plus queue limits and batch size.
#[derive(Clone, Debug)]
pub struct FeedOptions {
    pub encoder: EncoderOptions,
    pub max_staged_rows: Option<i64>,
    pub max_staged_bytes: Option<i64>,
    pub batch_size: Option<i32>,
    pub snapshot_mode: snapshot::Mode,
    pub fetch_size: u32,
    /// Stage big transactions as the server streams them (see `streamed.rs`).
    pub streaming: bool,
    /// The slot is synchronized to standbys (PostgreSQL 17+ failover slots), fixed at
    /// `create_feed`.
    pub slot_failover: bool,
}

fn boolean(key: &str, text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(format!("invalid value {text:?} for option \"{key}\"; expected true or false")),
    }
}

/// Snapshot watermarks are logical decoding messages, which pgoutput sends from 14 on.
pub fn snapshots_supported() -> bool {
    pgcdc_wire::session::supports_messages(pgrx::pg_sys::PG_VERSION_NUM)
}

/// Why a snapshot cannot run on this server (with [`snapshots_supported`] false).
pub const SNAPSHOTS_NEED: &str =
    "needs PostgreSQL 14 or later (snapshot watermarks are logical decoding messages, which pgoutput sends from 14 on)";

impl FeedOptions {
    /// Parses a feed's options object. `topic.prefix` defaults to the feed name.
    pub fn parse(feed_name: &str, options: &Value) -> Result<FeedOptions, String> {
        let map = options.as_object().ok_or_else(|| format!("options must be a JSON object, not {options}"))?;
        let mut encoder = EncoderOptions::default();
        if !map.contains_key("topic.prefix") {
            encoder.set("topic.prefix", feed_name).map_err(|e| e.to_string())?;
        }
        let mut out = FeedOptions {
            encoder,
            max_staged_rows: None,
            max_staged_bytes: None,
            batch_size: None,
            snapshot_mode: if snapshots_supported() { snapshot::Mode::Initial } else { snapshot::Mode::NoData },
            fetch_size: snapshot::DEFAULT_FETCH_SIZE,
            streaming: true,
            slot_failover: false,
        };
        for (key, value) in map {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => return Err(format!("option \"{key}\" must be a string, number or boolean, not {other}")),
            };
            let count = |max: i64| -> Result<i64, String> {
                text.trim().parse::<i64>().ok().filter(|v| (0..=max).contains(v)).ok_or_else(|| {
                    format!("invalid value {text:?} for option \"{key}\"; expected an integer from 0 to {max}")
                })
            };
            match key.as_str() {
                "max_staged_rows" => out.max_staged_rows = Some(count(i64::MAX)?),
                "max_staged_bytes" => out.max_staged_bytes = Some(count(i64::MAX)?),
                "batch_size" => {
                    let v = count(1_000_000)?;
                    if v == 0 {
                        return Err("option \"batch_size\" must be at least 1".into());
                    }
                    out.batch_size = Some(v as i32);
                }
                "snapshot.mode" => {
                    out.snapshot_mode = snapshot::Mode::parse(text.trim()).ok_or_else(|| {
                        format!(
                            "invalid value {text:?} for option \"snapshot.mode\"; expected initial, no_data, \
                             initial_only or when_needed"
                        )
                    })?;
                    if out.snapshot_mode != snapshot::Mode::NoData && !snapshots_supported() {
                        return Err(format!("snapshot.mode {text:?} {SNAPSHOTS_NEED}; use \"no_data\""));
                    }
                }
                "snapshot.fetch.size" => {
                    let v = count(i64::from(snapshot::MAX_FETCH_SIZE))?;
                    if v == 0 {
                        return Err("option \"snapshot.fetch.size\" must be at least 1".into());
                    }
                    out.fetch_size = v as u32;
                }
                "streaming" => out.streaming = boolean(key, &text)?,
                "slot.failover" => {
                    out.slot_failover = boolean(key, &text)?;
                    if out.slot_failover && pg_sys::PG_VERSION_NUM < 170000 {
                        return Err("slot.failover needs PostgreSQL 17 or later (failover slots)".into());
                    }
                }
                _ => out.encoder.set(key, &text).map_err(|e| match e {
                    OptionError::UnknownKey(k) => format!("unknown option \"{k}\""),
                    other => other.to_string(),
                })?,
            }
        }
        Ok(out)
    }

    /// Queue cap in rows (0 = none): the feed's option, else `pgcdc.max_staged_rows`.
    pub fn max_rows(&self) -> i64 {
        self.max_staged_rows.unwrap_or_else(|| i64::from(gucs::MAX_STAGED_ROWS.get()))
    }

    /// Queue cap in bytes (0 = none): the feed's option, else `pgcdc.max_staged_bytes`.
    pub fn max_bytes(&self) -> i64 {
        self.max_staged_bytes.unwrap_or_else(|| i64::from(gucs::MAX_STAGED_BYTES_KB.get()) * 1024)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or_else(|| gucs::BATCH_SIZE.get()).max(1) as usize
    }
}

pub(super) fn all_option_keys() -> String {
    let mut keys: Vec<&str> = EncoderOptions::KNOWN_KEYS.to_vec();
    keys.extend_from_slice(FEED_KEYS);
    keys.join(", ")
}

/// One row of `pgcdc.feed`.
#[derive(Clone, Debug)]
pub struct Feed {
    pub id: i32,
    pub name: String,
    pub publication: String,
    pub slot_name: String,
    pub sink: Sink,
    /// The options as stored (jsonb text), to notice changes.
    pub options_text: String,
    pub owner: pg_sys::Oid,
    pub state: FeedState,
    pub acked: Position,
}

impl Feed {
    pub fn options(&self) -> Result<FeedOptions, String> {
        let value: Value = serde_json::from_str(&self.options_text).map_err(|e| e.to_string())?;
        FeedOptions::parse(&self.name, &value)
    }

    /// NOTIFY channel of the feed (feed names need no quoting).
    pub fn channel(&self) -> String {
        channel_name(&self.name)
    }
}

fn channel_name(feed: &str) -> String {
    format!("pgcdc_{feed}")
}

pub(super) fn slot_name(feed: &str) -> String {
    format!("pgcdc_{feed}")
}
