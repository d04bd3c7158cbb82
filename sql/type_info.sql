-- Catalog facts pgcdc needs about column types that pgoutput names only by OID.
-- $1: oid[] of column types. Returns those types and, recursively, the element types of
-- arrays, base types of domains and attribute types of composites. One row per type.
-- Used by the extension worker and by the golden-fixture capture (pgcdc_core::catalog::TypeRow).
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest($1::oid[])
  UNION
    SELECT dep.oid
    FROM wanted w
    JOIN pg_type ty ON ty.oid = w.oid
    CROSS JOIN LATERAL (
        SELECT ty.typelem WHERE ty.typcategory = 'A' AND ty.typelem <> 0
        UNION ALL
        SELECT ty.typbasetype WHERE ty.typtype = 'd'
        UNION ALL
        SELECT a.atttypid FROM pg_attribute a
        WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    ) AS dep(oid)
)
SELECT ty.oid,
       n.nspname AS namespace,
       ty.typname AS name,
       ty.typtype::text AS typtype,
       ty.typcategory::text AS category,
       ty.typelem AS element,
       ty.typbasetype AS base_type,
       ty.typtypmod AS base_typmod,
       coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                 FROM pg_enum e WHERE e.enumtypid = ty.oid), '{}') AS enum_labels,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
                 WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0
                   AND NOT a.attisdropped), '{}') AS attribute_names,
       coalesce((SELECT array_agg(a.atttypid ORDER BY a.attnum) FROM pg_attribute a
                 WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0
                   AND NOT a.attisdropped), '{}') AS attribute_types,
       coalesce((SELECT array_agg(a.atttypmod ORDER BY a.attnum) FROM pg_attribute a
                 WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0
                   AND NOT a.attisdropped), '{}') AS attribute_typmods
FROM wanted w
JOIN pg_type ty ON ty.oid = w.oid
JOIN pg_namespace n ON n.oid = ty.typnamespace
ORDER BY ty.oid;
