//! Who may do what, and running privileged statements on the caller's behalf.
//!
//! * Creating feeds needs the privileges of the role `pgcdc_admin` (created by the extension
//!   script, NOLOGIN) or superuser; `EXECUTE` on `pgcdc.create_feed` is granted to
//!   `pgcdc_admin` only. A `notify` feed needs a superuser (see [`require_superuser_for_notify`]).
//! * A feed's **owner** (or any role with its privileges), `pgcdc_admin` members and
//!   superusers may read, acknowledge, pause, resume, alter and drop it.
//! * Consuming never reveals rows a role could not SELECT: the owner must be able to SELECT
//!   every published table when the feed is created, and the caller of `read` must be able to
//!   SELECT every table its publication publishes now *and* every table of the events it
//!   returns, and row-level security must not apply to the caller on any of them
//!   (see `feed::sql_api::read`).
//!
//! ## Running as the extension owner, safely
//!
//! The catalog (`pgcdc.feed`), the queue (`pgcdc.event`) and replication slots are not
//! accessible to ordinary roles. The SQL functions therefore switch to the extension owner
//! (a superuser: the extension is not trusted) for the statements that touch them, like a
//! SECURITY DEFINER function whose caller is still known. That is only safe if nothing the
//! caller controls takes part in those statements:
//!
//! ```text
//!   caller ──► pgcdc.fn (SET search_path = pg_catalog, pg_temp on every function)
//!                 │ 1. find the feed WITHOUT SQL (heap scan, [`crate::feed`]) and check the
//!                 │    caller's rights on it: nothing runs as the owner before this
//!                 │ 2. as_extension_owner: search_path pinned again (GUC nest level),
//!                 │    SECURITY_RESTRICTED_OPERATION, parameters only (never SQL text)
//!                 ▼
//!              pgcdc.feed / pgcdc.event / slots
//! ```
//!
//! `pg_catalog` first means no operator or function the caller creates can shadow a built-in
//! one (`evil.=(text,text)`); `pg_temp` last means temporary objects are never found for
//! functions and operators and only after pg_catalog for relations. Every relation pgcdc
//! names is schema-qualified anyway. The background workers pin the same path right after
//! they connect (`ALTER DATABASE ... SET search_path` would otherwise apply to them).

use std::ffi::{CStr, CString};

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The role whose members administer all feeds.
pub const ADMIN_ROLE: &str = "pgcdc_admin";

/// The search_path every pgcdc function, worker and owner-switched statement uses.
pub const SAFE_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// The role running the current statement (after SET ROLE / SECURITY DEFINER).
pub fn current_role() -> pg_sys::Oid {
    // SAFETY: a plain read of the backend's user id.
    unsafe { pg_sys::GetUserId() }
}

pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid C string; missing_ok = true returns InvalidOid instead of raising.
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Does `member` have the privileges of `role` (membership with INHERIT, or superuser)?
pub fn has_privs_of(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookup on the main thread inside a transaction.
    unsafe { pg_sys::has_privs_of_role(member, role) }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookup on the main thread inside a transaction.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Superuser or a member of `pgcdc_admin`.
pub fn is_admin(role: pg_sys::Oid) -> bool {
    is_superuser(role) || role_oid(ADMIN_ROLE).is_some_and(|admin| has_privs_of(role, admin))
}

/// May `role` use the feed owned by `owner`?
pub fn may_use_feed(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    has_privs_of(role, owner) || is_admin(role)
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId(noerr = true) returns NULL for an unknown role.
    let p = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if p.is_null() {
        return format!("role {}", u32::from(role));
    }
    // SAFETY: a NUL-terminated palloc'd string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Raises 42501 because `role` may not `action` the feed `feed`, or the feed does not
/// exist: the two are deliberately indistinguishable for roles that are not admins.
pub fn deny_feed_access(role: pg_sys::Oid, feed: &str, action: &str) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("permission denied to {action} feed {feed:?}"),
        "pgcdc",
    )
    .set_detail(format!(
        "Role {} is not the feed's owner, a member of it, of {ADMIN_ROLE} or a superuser (or the feed does not exist).",
        role_name(role)
    ))
    .set_hint("SELECT name FROM pgcdc.feeds; lists the feeds you may use.")
    .report(PgLogLevel::ERROR);
    unreachable!()
}

/// Raises 42501 unless `role` administers pgcdc.
pub fn require_admin(role: pg_sys::Oid, action: &str) {
    if !is_admin(role) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {action}"),
            "pgcdc",
        )
        .set_hint(format!("GRANT {ADMIN_ROLE} TO {};", role_name(role)))
        .report(PgLogLevel::ERROR);
    }
}

/// Raises 42501 unless `role` is a superuser: a `notify` feed's payloads carry row data and
/// reach every role that can connect to the database and LISTEN (LISTEN checks no
/// privilege), so only a superuser may decide to expose them.
pub fn require_superuser_for_notify(role: pg_sys::Oid) {
    if !is_superuser(role) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to create a feed with sink 'notify'",
            "pgcdc",
        )
        .set_detail(
            "NOTIFY payloads carry the changed rows and can be received by any role that can connect \
             to this database: LISTEN checks no privilege.",
        )
        .set_hint(
            "Use sink => 'table' (pgcdc.read checks the reader's SELECT privileges and wakes listeners \
             with positions only), or have a superuser create the notify feed if exposing the rows to \
             every role of this database is acceptable.",
        )
        .report(PgLogLevel::ERROR);
    }
}

/// Runs `f` with the given settings (name, value) in a new GUC nest level, restored
/// afterwards (on ERROR, by the abort of the enclosing (sub)transaction).
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    // SAFETY: GUC calls on the main thread inside a transaction; the nest level opened here
    // is closed below or by the abort of the enclosing (sub)transaction.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let result = f();
    // SAFETY: closes the nest level opened above, restoring the previous values.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// [`with_settings`] for settings spelled as Rust strings (e.g.
/// `pgcdc_wire::session::TEXT_OUTPUT_SETTINGS`, which the walsender sessions also use).
pub fn with_str_settings<R>(settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    let owned: Vec<(CString, CString)> = settings
        .iter()
        .map(|(n, v)| (CString::new(*n).expect("setting name"), CString::new(*v).expect("setting value")))
        .collect();
    let borrowed: Vec<(&CStr, &CStr)> = owned.iter().map(|(n, v)| (n.as_c_str(), v.as_c_str())).collect();
    with_settings(&borrowed, f)
}

/// Runs `f` with `search_path` set to [`SAFE_SEARCH_PATH`] (see [`with_settings`]).
pub fn with_safe_search_path<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&[(c"search_path", SAFE_SEARCH_PATH)], f)
}

/// Pins `search_path` (and READ COMMITTED as the default isolation) for the rest of this
/// process (background workers, right after they connect; database and role settings were
/// applied by the connection). The workers rely on every statement of a write transaction
/// seeing what committed before it (see `queue::count_locked`).
pub fn pin_settings_for_process() {
    for (name, value) in [(c"search_path", SAFE_SEARCH_PATH), (c"default_transaction_isolation", c"read committed")] {
        // SAFETY: GUC call on the main thread of a worker; PGC_S_OVERRIDE keeps a reload of
        // postgresql.conf from changing it.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            )
        };
    }
}

/// The extension's owner: the role that owns pgcdc's tables.
pub fn extension_owner() -> pg_sys::Oid {
    with_safe_search_path(|| {
        Spi::connect(|c| {
            crate::plans::select(c, "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pgcdc'", None, &[])?
                .first()
                .get_one::<pg_sys::Oid>()
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension pgcdc is not installed in this database",
            "pgcdc",
        )
        .set_hint("CREATE EXTENSION pgcdc;")
        .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

/// Runs `f` as the extension owner, with `search_path` pinned and as a security-restricted
/// operation (no temporary objects, no SET ROLE, ...). Call it only after the caller's
/// rights were checked. An error inside `f` aborts the (sub)transaction, which restores the
/// caller's identity and settings by itself.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    with_safe_search_path(|| {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_context: i32 = 0;
        // SAFETY: plain reads/writes of the backend's user id on the main thread; the same
        // pair is restored below (or by transaction abort).
        unsafe {
            pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
            pg_sys::SetUserIdAndSecContext(
                owner,
                saved_context
                    | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                    | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
            );
        }
        let result = f();
        // SAFETY: restores the pair saved above.
        unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
        result
    })
}
