//! Who may do what, and running privileged statements on the caller's behalf.
//!
//! * Creating feeds needs the privileges of the role `pgcdc_admin` (created by the extension
//!   script, NOLOGIN) or superuser.
//! * A feed's **owner** (or any role with its privileges), `pgcdc_admin` members and
//!   superusers may read, acknowledge, pause, resume, alter and drop it.
//! * Consuming never reveals rows a role could not SELECT: the owner must be able to SELECT
//!   every published table when the feed is created, and the caller of `read` must be able to
//!   SELECT them at every read.
//!
//! The catalog (`pgcdc.feed`), the queue (`pgcdc.event`) and replication slots are not
//! accessible to ordinary roles. After the checks above, the SQL functions switch to the
//! extension owner ([`as_extension_owner`]) for the statements that touch them, like a
//! SECURITY DEFINER function whose caller is still known. All such statements take their
//! inputs as parameters, never as SQL text.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// The role whose members administer all feeds.
pub const ADMIN_ROLE: &str = "pgcdc_admin";

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
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Raises 42501 unless `role` may use the feed.
pub fn require_feed_access(role: pg_sys::Oid, owner: pg_sys::Oid, feed: &str, action: &str) {
    if !may_use_feed(role, owner) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {action} feed \"{feed}\""),
            "pgcdc",
        )
        .set_detail(format!("The feed is owned by {}.", role_name(owner)))
        .set_hint(format!("Only the feed's owner, members of {ADMIN_ROLE} and superusers may {action} it."))
        .report(PgLogLevel::ERROR);
    }
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

/// The extension's owner: the role that owns pgcdc's tables.
pub fn extension_owner() -> pg_sys::Oid {
    Spi::connect(|c| {
        c.select("SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pgcdc'", None, &[])?
            .first()
            .get_one::<pg_sys::Oid>()
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

/// Runs `f` as the extension owner. An error inside `f` aborts the (sub)transaction, which
/// restores the caller's identity by itself.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context: i32 = 0;
    // SAFETY: plain reads/writes of the backend's user id on the main thread; the same pair
    // is restored below (or by transaction abort).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(owner, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let result = f();
    // SAFETY: restores the pair saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}
