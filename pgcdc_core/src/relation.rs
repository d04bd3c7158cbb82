//! Relation cache: follows Relation messages so schema changes mid-stream take effect.
//!
//! pgoutput sends a Relation message before the first change of a table in a session and
//! again after every schema change, so the cache always describes the rows that follow.
//! Each entry joins the message with the catalog facts pgoutput lacks (the real primary
//! key, user-defined types, NOT NULL, defaults) and pre-renders what every event repeats.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::{Catalog, TableInfo, TypeKind};
use crate::json;
use crate::pgoutput::{Relation, ReplicaIdentity, TypeMessage};
use crate::Oid;

/// One column as events describe it.
#[derive(Debug, Clone)]
pub struct ColumnSchema {
    pub name: String,
    /// `"name":` rendered once, JSON-escaped.
    pub json_key: String,
    pub kind: TypeKind,
    pub type_oid: Oid,
    pub type_modifier: i32,
    pub type_name: Option<String>,
    /// Part of the replica identity (what old-key tuples carry).
    pub in_identity: bool,
    pub not_null: bool,
    pub default_expr: Option<String>,
    /// The default as the JSON of the column's Connect schema `default`, when it is a
    /// literal Debezium can interpret (`nextval(…)` counts as 0).
    pub schema_default: Option<String>,
}

/// A published table as of its latest Relation message.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub id: Oid,
    /// The namespace (`pg_catalog` when pgoutput sent the empty string).
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// `<topic prefix>.<schema>.<table>`.
    pub topic: Arc<str>,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<ColumnSchema>,
    /// Indices of the event key's columns: the primary key in key order; without one, none
    /// (Debezium's key is then JSON null, never the whole row).
    pub key_columns: Vec<usize>,
    /// `schema.table`, as transaction metadata names a data collection.
    pub data_collection: String,
    /// Increments whenever the relation is redefined, so cached schema JSON can be checked.
    pub version: u64,
}

/// Relations by OID, plus type names from Type messages.
#[derive(Debug, Default)]
pub struct RelationCache {
    tables: HashMap<Oid, TableSchema>,
    /// Tables as a snapshot read them from the catalog (see `snapshot`): kept apart from the
    /// stream's, which may describe an older version of the same table at that moment.
    snapshot_tables: HashMap<Oid, TableSchema>,
    type_names: HashMap<Oid, String>,
    /// One counter for both maps: schema caches key on (oid, version).
    versions: u64,
}

impl RelationCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, id: Oid) -> Option<&TableSchema> {
        self.tables.get(&id)
    }

    /// Puts `table` in place of relation `id`'s definition (None: forgets it); returns what
    /// was there. For definitions that hold only inside a streamed transaction.
    pub fn swap(&mut self, id: Oid, table: Option<TableSchema>) -> Option<TableSchema> {
        match table {
            Some(t) => self.tables.insert(id, t),
            None => self.tables.remove(&id),
        }
    }

    /// The relation as the latest snapshot chunk of it described it.
    pub fn snapshot_table(&self, id: Oid) -> Option<&TableSchema> {
        self.snapshot_tables.get(&id)
    }

    pub fn note_type(&mut self, t: &TypeMessage) {
        self.type_names.insert(t.id, t.name.clone());
    }

    /// Installs (or replaces) a relation. `info` is the catalog's view of the table, if known.
    pub fn define(
        &mut self,
        rel: &Relation,
        catalog: &Catalog,
        info: Option<&TableInfo>,
        topic_prefix: &str,
    ) -> &TableSchema {
        let table = self.build(rel, catalog, info, topic_prefix);
        self.tables.insert(rel.id, table);
        &self.tables[&rel.id]
    }

    /// Installs (or replaces) the relation a snapshot chunk reads, described like a Relation
    /// message would describe it now.
    pub fn define_snapshot(
        &mut self,
        rel: &Relation,
        catalog: &Catalog,
        info: Option<&TableInfo>,
        topic_prefix: &str,
    ) -> &TableSchema {
        let table = self.build(rel, catalog, info, topic_prefix);
        self.snapshot_tables.insert(rel.id, table);
        &self.snapshot_tables[&rel.id]
    }

    fn build(
        &mut self,
        rel: &Relation,
        catalog: &Catalog,
        info: Option<&TableInfo>,
        topic_prefix: &str,
    ) -> TableSchema {
        self.versions += 1;
        let columns: Vec<ColumnSchema> = rel
            .columns
            .iter()
            .map(|c| {
                let type_name = self.type_names.get(&c.type_oid).cloned();
                let kind = catalog.resolve(c.type_oid, c.type_modifier, type_name.as_deref());
                let default_expr = info.and_then(|i| i.defaults.get(&c.name).cloned());
                let mut json_key = String::with_capacity(c.name.len() + 3);
                json::write_str(&mut json_key, &c.name);
                json_key.push(':');
                ColumnSchema {
                    name: c.name.clone(),
                    json_key,
                    schema_default: default_expr.as_deref().and_then(|d| default_literal(&kind, d)),
                    kind,
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    type_name,
                    in_identity: c.is_key,
                    not_null: info.is_some_and(|i| i.not_null.contains(&c.name)),
                    default_expr,
                }
            })
            .collect();
        let key_columns = match info {
            Some(info) => info.primary_key.iter().filter_map(|k| columns.iter().position(|c| c.name == *k)).collect(),
            // Without catalog facts the replica identity is the best key we have, unless it
            // is the whole row.
            None if rel.replica_identity == ReplicaIdentity::Full => Vec::new(),
            None => (0..columns.len()).filter(|&i| columns[i].in_identity).collect(),
        };
        let schema = if rel.namespace.is_empty() { "pg_catalog".to_owned() } else { rel.namespace.clone() };
        TableSchema {
            id: rel.id,
            data_collection: format!("{}.{}", schema, rel.name),
            topic: format!("{topic_prefix}.{schema}.{}", rel.name).into(),
            schema: schema.into(),
            table: rel.name.as_str().into(),
            replica_identity: rel.replica_identity,
            columns,
            key_columns,
            version: self.versions,
        }
    }
}

/// The JSON of a column default Debezium can interpret (a literal; `nextval` counts as 0).
fn default_literal(kind: &TypeKind, expr: &str) -> Option<String> {
    let integer = matches!(kind, TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 | TypeKind::Oid);
    if integer && expr.starts_with("nextval(") {
        return Some("0".to_owned());
    }
    let literal = expr.split("::").next().unwrap_or(expr).trim();
    match kind {
        TypeKind::Int2 | TypeKind::Int4 | TypeKind::Int8 | TypeKind::Oid => {
            let v: i64 = literal.trim_matches(|c| c == '(' || c == ')').parse().ok()?;
            Some(v.to_string())
        }
        TypeKind::Bool => match literal {
            "true" => Some("true".into()),
            "false" => Some("false".into()),
            _ => None,
        },
        TypeKind::Text | TypeKind::Enum { .. } | TypeKind::Uuid | TypeKind::Json | TypeKind::Jsonb => {
            let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?.replace("''", "'");
            let mut out = String::with_capacity(inner.len() + 2);
            json::write_str(&mut out, &inner);
            Some(out)
        }
        _ => None,
    }
}
