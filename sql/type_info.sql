-- Catalog facts pgcdc needs about column types that pgoutput names only by OID.
-- $1: oid[] of column types. Returns those types and, recursively, the element types of
-- arrays, base types of domains and attribute types of composites. One row per type.
-- Used by the extension worker, the Python client and the golden-fixture capture
-- (pgcdc_core::catalog::TypeRow). Every name is schema-qualified (operators too): it runs in
-- consumers' sessions, where objects on their search_path must never be picked.
WITH RECURSIVE wanted(oid) AS (
    SELECT pg_catalog.unnest($1::pg_catalog.oid[])
  UNION
    SELECT dep.oid
    FROM wanted w
    JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) w.oid
    CROSS JOIN LATERAL (
        SELECT ty.typelem
        WHERE ty.typcategory OPERATOR(pg_catalog.=) 'A' AND ty.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid
        UNION ALL
        SELECT ty.typbasetype WHERE ty.typtype OPERATOR(pg_catalog.=) 'd'
        UNION ALL
        SELECT a.atttypid FROM pg_catalog.pg_attribute a
        WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
          AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped
    ) AS dep(oid)
)
SELECT ty.oid,
       n.nspname AS namespace,
       ty.typname AS name,
       ty.typtype::pg_catalog.text AS typtype,
       ty.typcategory::pg_catalog.text AS category,
       ty.typelem AS element,
       ty.typbasetype AS base_type,
       ty.typtypmod AS base_typmod,
       coalesce((SELECT pg_catalog.array_agg(e.enumlabel::pg_catalog.text ORDER BY e.enumsortorder)
                 FROM pg_catalog.pg_enum e WHERE e.enumtypid OPERATOR(pg_catalog.=) ty.oid),
                '{}') AS enum_labels,
       coalesce((SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum)
                 FROM pg_catalog.pg_attribute a
                 WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
                   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped),
                '{}') AS attribute_names,
       coalesce((SELECT pg_catalog.array_agg(a.atttypid ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
                   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped),
                '{}') AS attribute_types,
       coalesce((SELECT pg_catalog.array_agg(a.atttypmod ORDER BY a.attnum) FROM pg_catalog.pg_attribute a
                 WHERE ty.typtype OPERATOR(pg_catalog.=) 'c' AND a.attrelid OPERATOR(pg_catalog.=) ty.typrelid
                   AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped),
                '{}') AS attribute_typmods
FROM wanted w
JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) w.oid
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) ty.typnamespace
ORDER BY ty.oid;
