-- Catalog facts pgcdc needs about a published table that pgoutput does not send.
-- $1: the relation's oid (for a partition published via its root: the root's oid).
-- primary_key: key column names in key order ('{}' without a primary key);
-- default_columns/default_exprs: columns with a DEFAULT and its expression text;
-- not_null_columns: columns declared NOT NULL (for the schemas' "optional" flags).
-- Every name is schema-qualified (operators too): it runs in consumers' sessions, where
-- objects on their search_path must never be picked.
SELECT coalesce(pk.primary_key, '{}') AS primary_key,
       coalesce(defaults.default_columns, '{}') AS default_columns,
       coalesce(defaults.default_exprs, '{}') AS default_exprs,
       coalesce(nn.not_null_columns, '{}') AS not_null_columns
FROM (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY k.ord) AS primary_key
      FROM pg_catalog.pg_index i
      CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_catalog.pg_attribute a
        ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
      WHERE i.indrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid AND i.indisprimary) AS pk,
     (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) AS default_columns,
             pg_catalog.array_agg(pg_catalog.pg_get_expr(d.adbin, d.adrelid) ORDER BY a.attnum) AS default_exprs
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_attrdef d
        ON d.adrelid OPERATOR(pg_catalog.=) a.attrelid AND d.adnum OPERATOR(pg_catalog.=) a.attnum
      WHERE a.attrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid
        AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped
        AND a.attgenerated OPERATOR(pg_catalog.=) '') AS defaults,
     (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) AS not_null_columns
      FROM pg_catalog.pg_attribute a
      WHERE a.attrelid OPERATOR(pg_catalog.=) $1::pg_catalog.oid
        AND a.attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT a.attisdropped AND a.attnotnull) AS nn;
