//! What the encoder must know about types and tables beyond what pgoutput sends.
//!
//! pgoutput names a column's type by OID and typmod only. Built-in OIDs are fixed; for
//! user-defined types (enums, composites, domains, hstore, arrays of them) and for the real
//! primary key (REPLICA IDENTITY FULL flags every column as key) the caller looks the catalog
//! up and registers the answer here. Unknown types still round-trip as their text form.

use std::collections::HashMap;

use crate::Oid;

/// Built-in type OIDs (from `pg_type.dat`; stable across PostgreSQL versions).
pub mod oid {
    use crate::Oid;
    pub const BOOL: Oid = 16;
    pub const BYTEA: Oid = 17;
    pub const CHAR: Oid = 18;
    pub const NAME: Oid = 19;
    pub const INT8: Oid = 20;
    pub const INT2: Oid = 21;
    pub const INT4: Oid = 23;
    pub const TEXT: Oid = 25;
    pub const OID: Oid = 26;
    pub const XID: Oid = 28;
    pub const JSON: Oid = 114;
    pub const XML: Oid = 142;
    pub const POINT: Oid = 600;
    pub const CIDR: Oid = 650;
    pub const FLOAT4: Oid = 700;
    pub const FLOAT8: Oid = 701;
    pub const MACADDR8: Oid = 774;
    pub const MONEY: Oid = 790;
    pub const MACADDR: Oid = 829;
    pub const INET: Oid = 869;
    pub const BPCHAR: Oid = 1042;
    pub const VARCHAR: Oid = 1043;
    pub const DATE: Oid = 1082;
    pub const TIME: Oid = 1083;
    pub const TIMESTAMP: Oid = 1114;
    pub const TIMESTAMPTZ: Oid = 1184;
    pub const INTERVAL: Oid = 1186;
    pub const TIMETZ: Oid = 1266;
    pub const BIT: Oid = 1560;
    pub const VARBIT: Oid = 1562;
    pub const NUMERIC: Oid = 1700;
    pub const UUID: Oid = 2950;
    pub const PG_LSN: Oid = 3220;
    pub const JSONB: Oid = 3802;
    pub const INT4RANGE: Oid = 3904;
    pub const NUMRANGE: Oid = 3906;
    pub const TSRANGE: Oid = 3908;
    pub const TSTZRANGE: Oid = 3910;
    pub const DATERANGE: Oid = 3912;
    pub const INT8RANGE: Oid = 3926;
    pub const INT4MULTIRANGE: Oid = 4451;
}

/// How a column's values are converted. Resolved once per relation, not per row.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeKind {
    Bool,
    Int2,
    Int4,
    Int8,
    /// `oid`, `xid`: unsigned 32-bit, sent as int64 by Debezium.
    Oid,
    Float4,
    Float8,
    /// `numeric(p,s)` when both are known, else variable scale.
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    Money,
    /// text, varchar, char(n), name, citext, inet, cidr, macaddr, ...: passed through.
    Text,
    Bytea,
    Json,
    Jsonb,
    Xml,
    Uuid,
    Date,
    /// Fractional-second precision from the typmod (None = 6, the default).
    Time {
        precision: Option<u32>,
    },
    TimeTz {
        precision: Option<u32>,
    },
    Timestamp {
        precision: Option<u32>,
    },
    TimestampTz {
        precision: Option<u32>,
    },
    Interval,
    /// `bit(n)`: fixed length; `varbit`: None.
    Bit {
        length: Option<u32>,
    },
    Point,
    /// Range and multirange types: Debezium sends the text form.
    Range,
    Hstore,
    Enum {
        labels: Vec<String>,
    },
    Composite {
        fields: Vec<(String, TypeKind)>,
    },
    /// Arrays of any dimension of the element type.
    Array(Box<TypeKind>),
    /// A type we know nothing about: its text form.
    Unknown {
        name: String,
    },
}

impl TypeKind {
    /// The kind of a built-in type, given its typmod. None for OIDs that are not built in.
    pub fn builtin(type_oid: Oid, typmod: i32) -> Option<TypeKind> {
        use oid::*;
        let precision = |m: i32| if m >= 0 { Some(m as u32) } else { None };
        Some(match type_oid {
            BOOL => TypeKind::Bool,
            INT2 => TypeKind::Int2,
            INT4 => TypeKind::Int4,
            INT8 => TypeKind::Int8,
            OID | XID => TypeKind::Oid,
            FLOAT4 => TypeKind::Float4,
            FLOAT8 => TypeKind::Float8,
            NUMERIC => {
                // typmod = ((precision << 16) | scale) + VARHDRSZ
                if typmod >= 4 {
                    let m = typmod - 4;
                    // The scale is 11 bits, signed since PostgreSQL 15 (`numeric(5,-2)`); a
                    // negative scale prints no fraction, so such values are variable-scale.
                    let scale = ((m & 0x7FF) ^ 0x400) - 0x400;
                    TypeKind::Numeric { precision: Some((m >> 16) as u32 & 0xFFFF), scale: u32::try_from(scale).ok() }
                } else {
                    TypeKind::Numeric { precision: None, scale: None }
                }
            }
            MONEY => TypeKind::Money,
            TEXT | VARCHAR | BPCHAR | NAME | CHAR | INET | CIDR | MACADDR | MACADDR8 | PG_LSN => TypeKind::Text,
            BYTEA => TypeKind::Bytea,
            JSON => TypeKind::Json,
            JSONB => TypeKind::Jsonb,
            XML => TypeKind::Xml,
            UUID => TypeKind::Uuid,
            DATE => TypeKind::Date,
            TIME => TypeKind::Time { precision: precision(typmod) },
            TIMETZ => TypeKind::TimeTz { precision: precision(typmod) },
            TIMESTAMP => TypeKind::Timestamp { precision: precision(typmod) },
            TIMESTAMPTZ => TypeKind::TimestampTz { precision: precision(typmod) },
            INTERVAL => TypeKind::Interval,
            BIT => TypeKind::Bit { length: u32::try_from(typmod).ok() },
            VARBIT => TypeKind::Bit { length: None },
            POINT => TypeKind::Point,
            INT4RANGE | NUMRANGE | TSRANGE | TSTZRANGE | DATERANGE | INT8RANGE => TypeKind::Range,
            INT4MULTIRANGE | 4532..=4536 => TypeKind::Range, // multiranges
            _ => return builtin_array(type_oid, typmod),
        })
    }
}

/// Built-in array OIDs and their element types.
fn builtin_array(type_oid: Oid, typmod: i32) -> Option<TypeKind> {
    use oid::*;
    let element = match type_oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1009 => TEXT,
        1028 => OID,
        1011 => XID,
        199 => JSON,
        143 => XML,
        1017 => POINT,
        651 => CIDR,
        1021 => FLOAT4,
        1022 => FLOAT8,
        775 => MACADDR8,
        791 => MONEY,
        1040 => MACADDR,
        1041 => INET,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1182 => DATE,
        1183 => TIME,
        1115 => TIMESTAMP,
        1185 => TIMESTAMPTZ,
        1187 => INTERVAL,
        1270 => TIMETZ,
        1561 => BIT,
        1563 => VARBIT,
        1231 => NUMERIC,
        2951 => UUID,
        3221 => PG_LSN,
        3807 => JSONB,
        3905 => INT4RANGE,
        3907 => NUMRANGE,
        3909 => TSRANGE,
        3911 => TSTZRANGE,
        3913 => DATERANGE,
        3927 => INT8RANGE,
        _ => return None,
    };
    // An array column's typmod applies to its elements (e.g. numeric(6,2)[]).
    TypeKind::builtin(element, typmod).map(|k| TypeKind::Array(Box::new(k)))
}

/// Catalog facts about one table that pgoutput does not send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableInfo {
    /// Primary-key column names in key order; empty when the table has none.
    pub primary_key: Vec<String>,
    /// Column default expressions as text, where they have one (for schemas).
    pub defaults: HashMap<String, String>,
    /// Columns declared NOT NULL (schemas mark the others optional).
    pub not_null: Vec<String>,
}

impl TableInfo {
    /// Builds the facts from one row of `sql/table_info.sql`.
    pub fn from_row(
        primary_key: Vec<String>,
        default_columns: Vec<String>,
        default_exprs: Vec<String>,
        not_null_columns: Vec<String>,
    ) -> Self {
        TableInfo {
            primary_key,
            defaults: default_columns.into_iter().zip(default_exprs).collect(),
            not_null: not_null_columns,
        }
    }
}

/// One row of `sql/type_info.sql`: what `pg_type` says about a user-defined type.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct TypeRow {
    pub oid: Oid,
    pub namespace: String,
    pub name: String,
    /// `typtype`: b base, c composite, d domain, e enum, p pseudo, r range, m multirange.
    #[serde(deserialize_with = "first_char")]
    pub typtype: char,
    /// `typcategory`: A for arrays.
    #[serde(deserialize_with = "first_char")]
    pub category: char,
    pub element: Oid,
    pub base_type: Oid,
    pub base_typmod: i32,
    pub enum_labels: Vec<String>,
    pub attribute_names: Vec<String>,
    pub attribute_types: Vec<Oid>,
    pub attribute_typmods: Vec<i32>,
}

fn first_char<'de, D: serde::Deserializer<'de>>(d: D) -> Result<char, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    s.chars().next().ok_or_else(|| serde::de::Error::custom("empty type code"))
}

/// Caller-provided knowledge of user-defined types and tables.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    types: HashMap<Oid, TypeKind>,
    rows: HashMap<Oid, TypeRow>,
    tables: HashMap<Oid, TableInfo>,
}

/// Composite types can nest; deeper than this is treated as unknown rather than recursing.
const MAX_TYPE_DEPTH: usize = 16;

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register_type(&mut self, type_oid: Oid, kind: TypeKind) {
        self.types.insert(type_oid, kind);
    }

    /// Registers rows of `sql/type_info.sql`; resolved lazily by [`Catalog::resolve`].
    pub fn register_type_rows(&mut self, rows: impl IntoIterator<Item = TypeRow>) {
        for row in rows {
            self.types.remove(&row.oid);
            self.rows.insert(row.oid, row);
        }
    }

    pub fn register_table(&mut self, relation_id: Oid, info: TableInfo) {
        self.tables.insert(relation_id, info);
    }

    pub fn table(&self, relation_id: Oid) -> Option<&TableInfo> {
        self.tables.get(&relation_id)
    }

    /// True when `type_oid` is built in or registered (no catalog lookup needed).
    pub fn knows_type(&self, type_oid: Oid) -> bool {
        TypeKind::builtin(type_oid, -1).is_some()
            || self.types.contains_key(&type_oid)
            || self.rows.contains_key(&type_oid)
    }

    /// Resolves a column type: built-ins first, then registered types, else Unknown.
    pub fn resolve(&self, type_oid: Oid, typmod: i32, type_name: Option<&str>) -> TypeKind {
        if let Some(k) = TypeKind::builtin(type_oid, typmod) {
            return k;
        }
        if let Some(k) = self.types.get(&type_oid) {
            return k.clone();
        }
        if self.rows.contains_key(&type_oid) {
            return self.resolve_row(type_oid, typmod, 0);
        }
        match type_name {
            Some("hstore") => TypeKind::Hstore,
            Some(n) => TypeKind::Unknown { name: n.to_owned() },
            None => TypeKind::Unknown { name: format!("oid {type_oid}") },
        }
    }
}

impl Catalog {
    fn resolve_row(&self, type_oid: Oid, typmod: i32, depth: usize) -> TypeKind {
        if let Some(k) = TypeKind::builtin(type_oid, typmod) {
            return k;
        }
        if let Some(k) = self.types.get(&type_oid) {
            return k.clone();
        }
        let Some(row) = self.rows.get(&type_oid) else {
            return TypeKind::Unknown { name: format!("oid {type_oid}") };
        };
        if depth >= MAX_TYPE_DEPTH {
            return TypeKind::Unknown { name: row.name.clone() };
        }
        match row.typtype {
            'e' => TypeKind::Enum { labels: row.enum_labels.clone() },
            'c' => TypeKind::Composite {
                fields: row
                    .attribute_names
                    .iter()
                    .zip(&row.attribute_types)
                    .enumerate()
                    .map(|(i, (name, &oid))| {
                        let typmod = row.attribute_typmods.get(i).copied().unwrap_or(-1);
                        (name.clone(), self.resolve_row(oid, typmod, depth + 1))
                    })
                    .collect(),
            },
            'd' => self.resolve_row(row.base_type, row.base_typmod, depth + 1),
            'r' | 'm' => TypeKind::Range,
            _ if row.category == 'A' && row.element != 0 => {
                TypeKind::Array(Box::new(self.resolve_row(row.element, typmod, depth + 1)))
            }
            _ if row.name == "hstore" => TypeKind::Hstore,
            _ => TypeKind::Unknown { name: row.name.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(oid: Oid, name: &str, typtype: char) -> TypeRow {
        TypeRow { oid, name: name.into(), namespace: "public".into(), typtype, category: 'U', ..Default::default() }
    }

    #[test]
    fn builtins_need_no_catalog() {
        let c = Catalog::new();
        assert_eq!(c.resolve(oid::INT4, -1, None), TypeKind::Int4);
        assert_eq!(
            c.resolve(oid::NUMERIC, (12 << 16 | 4) + 4, None),
            TypeKind::Numeric { precision: Some(12), scale: Some(4) }
        );
        assert_eq!(c.resolve(1007, -1, None), TypeKind::Array(Box::new(TypeKind::Int4)));
        assert_eq!(c.resolve(oid::TIMESTAMPTZ, 3, None), TypeKind::TimestampTz { precision: Some(3) });
        assert_eq!(c.resolve(oid::BIT, 4, None), TypeKind::Bit { length: Some(4) });
        assert!(c.knows_type(oid::TEXT));
        assert!(!c.knows_type(99999));
    }

    #[test]
    fn user_types_resolve_recursively() {
        let mut c = Catalog::new();
        let mut mood = row(50001, "mood", 'e');
        mood.enum_labels = vec!["sad".into(), "ok".into(), "happy".into()];
        let mut address = row(50002, "address", 'c');
        address.attribute_names = vec!["street".into(), "zip".into(), "mood".into()];
        address.attribute_types = vec![oid::TEXT, oid::INT4, 50001];
        address.attribute_typmods = vec![-1, -1, -1];
        let mut moods = row(50003, "_mood", 'b');
        moods.category = 'A';
        moods.element = 50001;
        let mut posint = row(50004, "posint", 'd');
        posint.base_type = oid::INT4;
        posint.base_typmod = -1;
        c.register_type_rows([mood, address, moods, posint, row(50005, "hstore", 'b')]);
        let labels = vec!["sad".to_string(), "ok".into(), "happy".into()];
        assert_eq!(c.resolve(50001, -1, None), TypeKind::Enum { labels: labels.clone() });
        assert_eq!(
            c.resolve(50002, -1, None),
            TypeKind::Composite {
                fields: vec![
                    ("street".into(), TypeKind::Text),
                    ("zip".into(), TypeKind::Int4),
                    ("mood".into(), TypeKind::Enum { labels: labels.clone() }),
                ]
            }
        );
        assert_eq!(c.resolve(50003, -1, None), TypeKind::Array(Box::new(TypeKind::Enum { labels })));
        assert_eq!(c.resolve(50004, -1, None), TypeKind::Int4);
        assert_eq!(c.resolve(50005, -1, None), TypeKind::Hstore);
        assert_eq!(c.resolve(50006, -1, Some("ltree")), TypeKind::Unknown { name: "ltree".into() });
    }

    #[test]
    fn self_referencing_rows_do_not_recurse_forever() {
        let mut c = Catalog::new();
        let mut d = row(60001, "loop", 'd');
        d.base_type = 60001;
        c.register_type_rows([d]);
        assert_eq!(c.resolve(60001, -1, None), TypeKind::Unknown { name: "loop".into() });
    }
}
