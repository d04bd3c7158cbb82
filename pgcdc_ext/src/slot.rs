//! The registry of replication slots pgcdc created: one file per slot in
//! `$PGDATA/pgcdc/slots/<slot name>` holding the database oid.
//!
//! Replication slots are not transactional, so a slot can outlive its feed row: after
//! `drop_feed`, after a `create_feed` that rolled back, after `DROP EXTENSION pgcdc` (which
//! drops the feed catalog with it). The launcher drops such orphans, but **only slots listed
//! here**: a slot a user created with a name like `pgcdc_x` is never touched. A table cannot
//! be the record: a `create_feed` that rolls back would roll the record back too, and
//! `DROP EXTENSION` drops the table. So the record is a file, written (and fsynced) *before*
//! the slot is created and removed after the slot is dropped, both under the slot's advisory
//! lock (`feed::LOCK_CLASS_SLOT`):
//!
//! ```text
//!   create_feed: lock(slot) -> record file -> pg_create_logical_replication_slot -> feed row
//!   launcher:    lock(slot) -> recorded, no feed row, inactive -> drop slot -> remove file
//!                            -> recorded, no slot at all        -> remove file
//! ```
//!
//! A crash between the file and the slot leaves a file without a slot (removed by the
//! launcher); a crash between dropping the slot and removing the file likewise. A lost file
//! (never fsynced) can only leave a slot behind, never drop a foreign one.
//! A base backup copies the directory; on a standby the launcher does not run, and after a
//! promotion records of slots that do not exist there are removed.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use pgrx::pg_sys;

fn dir() -> PathBuf {
    // SAFETY: DataDir is set in every backend and worker before extension code runs.
    let data = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) }.to_string_lossy().into_owned();
    PathBuf::from(data).join("pgcdc").join("slots")
}

/// Slot names are `pgcdc_` + a validated feed name: safe as file names. Anything else is
/// never recorded.
fn file(slot: &str) -> Option<PathBuf> {
    let ok = !slot.is_empty() && slot.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then(|| dir().join(slot))
}

/// Records `slot` as created by pgcdc in database `database` (durably).
pub fn record(slot: &str, database: pg_sys::Oid) -> Result<(), String> {
    let path = file(slot).ok_or_else(|| format!("invalid slot name {slot:?}"))?;
    let d = dir();
    fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    let tmp = d.join(format!(".{slot}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{}", u32::from(database))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&d)?.sync_all()
    };
    write().map_err(|e| format!("cannot record replication slot {slot:?} in {}: {e}", d.display()))
}

/// Was `slot` created by pgcdc (in `database`)?
pub fn is_recorded(slot: &str, database: pg_sys::Oid) -> bool {
    file(slot)
        .and_then(|p| fs::read_to_string(p).ok())
        .is_some_and(|s| s.trim().parse::<u32>().ok() == Some(u32::from(database)))
}

/// Every slot recorded for `database`.
pub fn recorded(database: pg_sys::Oid) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir()) else { return Vec::new() };
    let mut out: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && is_recorded(name, database))
        .collect();
    out.sort();
    out
}

/// Forgets `slot` (after it was dropped, or when it does not exist). A missing record is
/// not an error.
pub fn forget(slot: &str) -> Result<(), String> {
    let Some(p) = file(slot) else { return Ok(()) };
    match fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("cannot remove {}: {e}", p.display())),
        _ => Ok(()),
    }
}
