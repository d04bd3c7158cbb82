//! Encoder options, named and valued as Debezium names them.

use std::fmt;

use regex::Regex;

/// `decimal.handling.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalMode {
    /// Connect `Decimal` bytes (fixed scale) or `VariableScaleDecimal` struct. Exact.
    Precise,
    /// JSON number: lossy beyond 17 significant digits, only when asked for.
    Double,
    /// Plain decimal text. Exact.
    String,
}

/// `time.precision.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimePrecisionMode {
    /// Milliseconds for precision 0–3, microseconds above.
    Adaptive,
    /// Like adaptive, but `time` is always microseconds.
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's built-in types: always milliseconds.
    Connect,
}

/// `binary.handling.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryMode {
    /// Connect `bytes`, which JSON carries as base64.
    Bytes,
    Base64,
    Base64UrlSafe,
    Hex,
}

/// `hstore.handling.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HstoreMode {
    /// A string holding a JSON object.
    Json,
    /// A JSON object (Connect map).
    Map,
}

/// `interval.handling.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalMode {
    /// Microseconds, months counted as 30.4375 days (Debezium's MicroDuration).
    Numeric,
    /// ISO 8601 `P1Y2M3DT4H5M6.789S`.
    String,
}

/// `unchanged.toast.handling.mode`: what an UPDATE shows for a TOASTed column it did not change
/// (pgoutput does not resend the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnchangedToastMode {
    /// pgcdc's default: the column is left out of `after` and named in the envelope's
    /// `unchanged_columns` list. Never a fake value.
    Explicit,
    /// Debezium's behaviour: the column holds `unavailable.value.placeholder`.
    Placeholder,
}

/// Operations that `skipped.operations` can drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkippedOperations {
    pub create: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
}

/// `message.prefix.include.list` / `message.prefix.exclude.list`: which logical decoding
/// messages become records. Logical messages carry no identity (any role that can connect may
/// call `pg_logical_emit_message`), so a consumer that acts on them should admit only the
/// prefixes it expects.
///
/// As Debezium: a comma-separated list of regular expressions (`\,` is a literal comma), each
/// matched case-insensitively against the whole prefix.
#[derive(Debug, Clone, Default)]
pub enum MessagePrefixFilter {
    /// Every message (the default).
    #[default]
    All,
    /// Only messages whose prefix matches one of the patterns.
    Include(PrefixPatterns),
    /// Every message except those whose prefix matches one of the patterns.
    Exclude(PrefixPatterns),
}

impl MessagePrefixFilter {
    /// Whether a message with this prefix becomes a record.
    pub fn admits(&self, prefix: &str) -> bool {
        match self {
            MessagePrefixFilter::All => true,
            MessagePrefixFilter::Include(p) => p.matches(prefix),
            MessagePrefixFilter::Exclude(p) => !p.matches(prefix),
        }
    }
}

impl PartialEq for MessagePrefixFilter {
    fn eq(&self, other: &Self) -> bool {
        use MessagePrefixFilter::*;
        match (self, other) {
            (All, All) => true,
            (Include(a), Include(b)) | (Exclude(a), Exclude(b)) => a.list == b.list,
            _ => false,
        }
    }
}

impl Eq for MessagePrefixFilter {}

/// A compiled prefix list, with the text it was given as.
#[derive(Debug, Clone)]
pub struct PrefixPatterns {
    list: String,
    patterns: Vec<Regex>,
}

impl PrefixPatterns {
    /// Compiles a comma-separated list; `Ok(None)` when it names no pattern.
    fn parse(key: &str, list: &str) -> Result<Option<Self>, OptionError> {
        let patterns = split_list(list)
            .into_iter()
            .map(|p| {
                Regex::new(&format!("(?i)^(?:{p})$")).map_err(|e| OptionError::InvalidPattern {
                    key: key.to_owned(),
                    pattern: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((!patterns.is_empty()).then(|| PrefixPatterns { list: list.to_owned(), patterns }))
    }

    fn matches(&self, prefix: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(prefix))
    }

    /// The list as it was set.
    pub fn as_str(&self) -> &str {
        &self.list
    }
}

/// Splits Debezium's comma-separated list: `\,` stands for a comma inside an item; items are
/// trimmed and empty ones dropped.
fn split_list(list: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut item = String::new();
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                chars.next();
                item.push(',');
            }
            ',' => items.push(std::mem::take(&mut item)),
            c => item.push(c),
        }
    }
    items.push(item);
    items.into_iter().map(|i| i.trim().to_owned()).filter(|i| !i.is_empty()).collect()
}

/// All encoder options. `Default` is Debezium's default configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderOptions {
    pub topic_prefix: String,
    pub decimal: DecimalMode,
    pub time_precision: TimePrecisionMode,
    pub binary: BinaryMode,
    pub hstore: HstoreMode,
    pub interval: IntervalMode,
    pub tombstones_on_delete: bool,
    pub skipped: SkippedOperations,
    pub provide_transaction_metadata: bool,
    /// `{"schema":…,"payload":…}` form for keys (Kafka `key.converter.schemas.enable`).
    pub key_schemas: bool,
    /// `{"schema":…,"payload":…}` form for values (Kafka `value.converter.schemas.enable`).
    pub value_schemas: bool,
    pub unchanged_toast: UnchangedToastMode,
    pub unavailable_value_placeholder: String,
    /// `extended.headers.enabled`: the `__debezium.context.*` headers on change records.
    pub extended_headers: bool,
    /// `header.converter.schemas.enable`: `{"schema":…,"payload":…}` form for header values;
    /// None follows `schemas.enable` (`value.converter.schemas.enable`), as Debezium's
    /// converters do. See [`EncoderOptions::header_schemas`].
    pub header_schemas_setting: Option<bool>,
    /// `value.converter.replace.null.with.default`: a NULL column with a schema `default` is
    /// written as that default (Kafka's JsonConverter does this by default; pgcdc writes the
    /// NULL unless asked, since replacing loses it).
    pub replace_null_with_default: bool,
    /// `include.unknown.datatypes`: columns of types without a converter (composites,
    /// extension types) as the bytes of their PostgreSQL text, as Debezium does. Off (the
    /// default): pgcdc still includes them, a composite as an object and any other type as its
    /// text (Debezium leaves them out).
    pub include_unknown_datatypes: bool,
    /// `message.prefix.include.list` / `message.prefix.exclude.list`.
    pub message_prefixes: MessagePrefixFilter,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            topic_prefix: "pgcdc".to_owned(),
            decimal: DecimalMode::Precise,
            time_precision: TimePrecisionMode::Adaptive,
            binary: BinaryMode::Bytes,
            hstore: HstoreMode::Json,
            interval: IntervalMode::Numeric,
            tombstones_on_delete: true,
            skipped: SkippedOperations { truncate: true, ..Default::default() },
            provide_transaction_metadata: false,
            key_schemas: false,
            value_schemas: false,
            unchanged_toast: UnchangedToastMode::Explicit,
            unavailable_value_placeholder: "__debezium_unavailable_value".to_owned(),
            extended_headers: true,
            header_schemas_setting: None,
            replace_null_with_default: false,
            include_unknown_datatypes: false,
            message_prefixes: MessagePrefixFilter::All,
        }
    }
}

/// An option name or value the encoder does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionError {
    #[error("unknown option {0:?}; known options: {known}", known = EncoderOptions::KNOWN_KEYS.join(", "))]
    UnknownKey(String),
    #[error("invalid value {value:?} for option {key:?}; expected {expected}")]
    InvalidValue { key: String, value: String, expected: &'static str },
    #[error("invalid regular expression {pattern:?} in option {key:?}: {reason}")]
    InvalidPattern { key: String, pattern: String, reason: String },
    #[error("options {key:?} and {other:?} cannot both be set; use one of them")]
    Conflict { key: String, other: &'static str },
}

impl EncoderOptions {
    /// Every option name `set` accepts.
    pub const KNOWN_KEYS: &'static [&'static str] = &[
        "topic.prefix",
        "decimal.handling.mode",
        "time.precision.mode",
        "binary.handling.mode",
        "hstore.handling.mode",
        "interval.handling.mode",
        "tombstones.on.delete",
        "skipped.operations",
        "provide.transaction.metadata",
        "schemas.enable",
        "key.converter.schemas.enable",
        "value.converter.schemas.enable",
        "unchanged.toast.handling.mode",
        "unavailable.value.placeholder",
        "extended.headers.enabled",
        "header.converter.schemas.enable",
        "value.converter.replace.null.with.default",
        "include.unknown.datatypes",
        "message.prefix.include.list",
        "message.prefix.exclude.list",
    ];

    /// Whether header values take the `{"schema":…,"payload":…}` form.
    pub fn header_schemas(&self) -> bool {
        self.header_schemas_setting.unwrap_or(self.value_schemas)
    }

    /// Sets one option by its Debezium name.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), OptionError> {
        fn pick<T: Copy>(
            key: &str,
            value: &str,
            choices: &[(&str, T)],
            expected: &'static str,
        ) -> Result<T, OptionError> {
            let v = value.trim().to_ascii_lowercase();
            choices.iter().find(|(name, _)| *name == v).map(|(_, t)| *t).ok_or_else(|| OptionError::InvalidValue {
                key: key.to_owned(),
                value: value.to_owned(),
                expected,
            })
        }
        let boolean = |k: &str, v: &str| pick(k, v, &[("true", true), ("false", false)], "true or false");
        match key {
            "topic.prefix" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    return Err(OptionError::InvalidValue {
                        key: key.to_owned(),
                        value: value.to_owned(),
                        expected: "a non-empty name of letters, digits, '.', '_' or '-'",
                    });
                }
                self.topic_prefix = value.to_owned();
            }
            "decimal.handling.mode" => {
                use DecimalMode::*;
                self.decimal = pick(
                    key,
                    value,
                    &[("precise", Precise), ("double", Double), ("string", String)],
                    "precise, double or string",
                )?
            }
            "time.precision.mode" => {
                use TimePrecisionMode::*;
                self.time_precision = pick(
                    key,
                    value,
                    &[
                        ("adaptive", Adaptive),
                        ("adaptive_time_microseconds", AdaptiveTimeMicroseconds),
                        ("connect", Connect),
                    ],
                    "adaptive, adaptive_time_microseconds or connect",
                )?
            }
            "binary.handling.mode" => {
                use BinaryMode::*;
                self.binary = pick(
                    key,
                    value,
                    &[("bytes", Bytes), ("base64", Base64), ("base64-url-safe", Base64UrlSafe), ("hex", Hex)],
                    "bytes, base64, base64-url-safe or hex",
                )?
            }
            "hstore.handling.mode" => {
                self.hstore = pick(key, value, &[("json", HstoreMode::Json), ("map", HstoreMode::Map)], "json or map")?
            }
            "interval.handling.mode" => {
                self.interval = pick(
                    key,
                    value,
                    &[("numeric", IntervalMode::Numeric), ("string", IntervalMode::String)],
                    "numeric or string",
                )?
            }
            "tombstones.on.delete" => self.tombstones_on_delete = boolean(key, value)?,
            "skipped.operations" => self.skipped = parse_skipped(key, value)?,
            "provide.transaction.metadata" => self.provide_transaction_metadata = boolean(key, value)?,
            "schemas.enable" => {
                let on = boolean(key, value)?;
                self.key_schemas = on;
                self.value_schemas = on;
            }
            "key.converter.schemas.enable" => self.key_schemas = boolean(key, value)?,
            "value.converter.schemas.enable" => self.value_schemas = boolean(key, value)?,
            "unchanged.toast.handling.mode" => {
                use UnchangedToastMode::*;
                self.unchanged_toast = pick(
                    key,
                    value,
                    &[("explicit", Explicit), ("placeholder", Placeholder)],
                    "explicit or placeholder",
                )?
            }
            "unavailable.value.placeholder" => self.unavailable_value_placeholder = value.to_owned(),
            "extended.headers.enabled" => self.extended_headers = boolean(key, value)?,
            "header.converter.schemas.enable" => self.header_schemas_setting = Some(boolean(key, value)?),
            "value.converter.replace.null.with.default" => self.replace_null_with_default = boolean(key, value)?,
            "include.unknown.datatypes" => self.include_unknown_datatypes = boolean(key, value)?,
            "message.prefix.include.list" | "message.prefix.exclude.list" => {
                let include = key == "message.prefix.include.list";
                let other = if include { "message.prefix.exclude.list" } else { "message.prefix.include.list" };
                let conflicting = match &self.message_prefixes {
                    MessagePrefixFilter::Include(_) => !include,
                    MessagePrefixFilter::Exclude(_) => include,
                    MessagePrefixFilter::All => false,
                };
                let patterns = PrefixPatterns::parse(key, value)?;
                if conflicting && patterns.is_some() {
                    return Err(OptionError::Conflict { key: key.to_owned(), other });
                }
                self.message_prefixes = match patterns {
                    Some(p) if include => MessagePrefixFilter::Include(p),
                    Some(p) => MessagePrefixFilter::Exclude(p),
                    // An empty list is Debezium's "not set".
                    None if conflicting => return Ok(()),
                    None => MessagePrefixFilter::All,
                };
            }
            _ => return Err(OptionError::UnknownKey(key.to_owned())),
        }
        Ok(())
    }

    /// Applies `(name, value)` pairs in order; the first bad one is the error.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, OptionError> {
        let mut options = Self::default();
        for (k, v) in pairs {
            options.set(k, v)?;
        }
        Ok(options)
    }
}

fn parse_skipped(key: &str, value: &str) -> Result<SkippedOperations, OptionError> {
    let mut skipped = SkippedOperations::default();
    let value_trimmed = value.trim();
    if value_trimmed.eq_ignore_ascii_case("none") || value_trimmed.is_empty() {
        return Ok(skipped);
    }
    for op in value_trimmed.split(',').map(str::trim) {
        match op {
            "c" => skipped.create = true,
            "u" => skipped.update = true,
            "d" => skipped.delete = true,
            "t" => skipped.truncate = true,
            _ => {
                return Err(OptionError::InvalidValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    expected: "none, or a comma-separated list of c, u, d, t",
                })
            }
        }
    }
    Ok(skipped)
}

impl fmt::Display for EncoderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_debeziums() {
        let o = EncoderOptions::default();
        assert_eq!(o.decimal, DecimalMode::Precise);
        assert!(o.tombstones_on_delete);
        assert!(o.skipped.truncate && !o.skipped.create);
        assert!(!o.value_schemas);
    }

    #[test]
    fn every_known_key_is_settable() {
        let sample = |k: &str| match k {
            "topic.prefix" => "tm",
            "decimal.handling.mode" => "string",
            "time.precision.mode" => "connect",
            "binary.handling.mode" => "hex",
            "hstore.handling.mode" => "map",
            "interval.handling.mode" => "string",
            "skipped.operations" => "none",
            "unchanged.toast.handling.mode" => "placeholder",
            "unavailable.value.placeholder" => "?",
            "message.prefix.include.list" | "message.prefix.exclude.list" => "outbox",
            _ => "true",
        };
        for k in EncoderOptions::KNOWN_KEYS {
            EncoderOptions::default().set(k, sample(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
    }

    #[test]
    fn bad_options_are_explained() {
        let mut o = EncoderOptions::default();
        let e = o.set("decimal.handling.mode", "float").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"float\" for option \"decimal.handling.mode\"; expected precise, double or string"
        );
        assert!(matches!(o.set("nope", "1"), Err(OptionError::UnknownKey(_))));
        assert!(o.set("skipped.operations", "c,x").is_err());
        assert!(o.set("topic.prefix", "a b").is_err());
        o.set("skipped.operations", "c, u").unwrap();
        assert_eq!(o.skipped, SkippedOperations { create: true, update: true, ..Default::default() });
    }
}
