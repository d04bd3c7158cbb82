//! Durable reader offsets (`LogicalReplicationReader(offset_store=path)`).
//!
//! A logical slot's `confirmed_flush_lsn` is not durable by itself: PostgreSQL up to 16 writes
//! it to disk only when the slot's `restart_lsn` or `xmin` moves too (17 adds the shutdown
//! checkpoint), so after a server restart the slot resends what was acknowledged. Like
//! Debezium's offsets, the reader therefore keeps the acknowledged position in a file of its
//! own and skips what the server sends again at or below it.
//!
//! The file is small JSON, replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so a crash leaves the old or the new offset, never a torn one:
//!
//! ```json
//! {"slot":"shop","database":"shop","system_identifier":"7312...","flushed":"0/1A2B3C8",
//!  "acknowledged":["0/1A2B3C8",4]}
//! ```
//!
//! `system_identifier` ties the offset to one cluster: positions of another cluster (a
//! re-initialised server, a restored backup of another one) would skip unrelated events.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use pgcdc_core::Lsn;
use serde::{Deserialize, Serialize};

use crate::errors::PgError;

/// Position `(commit_lsn, ordinal)` of an event.
pub type Pos = (Lsn, u32);

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offset {
    /// End of the last transaction completely acknowledged: where the stream resumes.
    pub flushed: Lsn,
    /// The last event acknowledged (it may sit inside a transaction that is not complete).
    pub acknowledged: Option<Pos>,
    pub system_identifier: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FileForm {
    slot: String,
    database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    system_identifier: Option<String>,
    flushed: String,
    #[serde(default)]
    acknowledged: Option<(String, u32)>,
}

/// One reader's offset file.
#[derive(Debug, Clone)]
pub struct OffsetStore {
    path: PathBuf,
    slot: String,
    database: String,
}

impl OffsetStore {
    pub fn new(path: PathBuf, slot: &str, database: &str) -> OffsetStore {
        OffsetStore { path, slot: slot.to_owned(), database: database.to_owned() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored offset (None when there is no file yet). A file of another slot or
    /// database, or one that does not parse, is an error: skipping by a wrong offset loses
    /// events.
    pub fn load(&self) -> Result<Option<Offset>, PgError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error("cannot be read", &e.to_string())),
        };
        let form: FileForm =
            serde_json::from_str(&text).map_err(|e| self.error("is not an offset file", &e.to_string()))?;
        if form.slot != self.slot || form.database != self.database {
            return Err(PgError::Interface(format!(
                "offset store {} belongs to slot \"{}\" of database \"{}\", not slot \"{}\" of database \"{}\"",
                self.path.display(),
                form.slot,
                form.database,
                self.slot,
                self.database
            )));
        }
        let lsn = |s: &str| s.parse::<Lsn>().map_err(|e| self.error("holds an invalid LSN", &e.to_string()));
        Ok(Some(Offset {
            flushed: lsn(&form.flushed)?,
            acknowledged: form.acknowledged.map(|(l, o)| lsn(&l).map(|l| (l, o))).transpose()?,
            system_identifier: form.system_identifier,
        }))
    }

    /// Replaces the file atomically with `offset`.
    pub fn save(&self, offset: &Offset) -> Result<(), PgError> {
        let form = FileForm {
            slot: self.slot.clone(),
            database: self.database.clone(),
            system_identifier: offset.system_identifier.clone(),
            flushed: offset.flushed.to_string(),
            acknowledged: offset.acknowledged.map(|(l, o)| (l.to_string(), o)),
        };
        let mut text = serde_json::to_string(&form).map_err(|e| self.error("cannot be written", &e.to_string()))?;
        text.push('\n');
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            // The rename itself is durable only once the directory is.
            let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.error("cannot be written", &e.to_string())
        })
    }

    fn error(&self, what: &str, why: &str) -> PgError {
        PgError::Operational(format!("offset store {} {what}: {why}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pgcdc-offsets-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trips_and_refuses_another_slot() {
        let d = dir();
        let store = OffsetStore::new(d.join("o.json"), "s", "db");
        assert_eq!(store.load().unwrap(), None);
        let o = Offset {
            flushed: Lsn(0x1_0000_0010),
            acknowledged: Some((Lsn(0x1_0000_0008), 7)),
            system_identifier: Some("7312".into()),
        };
        store.save(&o).unwrap();
        assert_eq!(store.load().unwrap(), Some(o));
        assert!(!d.join("o.json.tmp").exists());
        let other = OffsetStore::new(d.join("o.json"), "t", "db");
        assert!(matches!(other.load(), Err(PgError::Interface(m)) if m.contains("slot \"s\"")));
        fs::write(d.join("o.json"), "{").unwrap();
        assert!(matches!(store.load(), Err(PgError::Operational(m)) if m.contains("not an offset file")));
        fs::remove_dir_all(d).unwrap();
    }
}
