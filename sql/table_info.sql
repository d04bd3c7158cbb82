-- Catalog facts pgcdc needs about a published table that pgoutput does not send.
-- $1: the relation's oid (for a partition published via its root: the root's oid).
-- primary_key: key column names in key order ('{}' without a primary key);
-- default_columns/default_exprs: columns with a DEFAULT and its expression text;
-- not_null_columns: columns declared NOT NULL (for the schemas' "optional" flags).
SELECT coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = $1 AND i.indisprimary), '{}') AS primary_key,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                 FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''), '{}') AS default_columns,
       coalesce((SELECT array_agg(pg_get_expr(d.adbin, d.adrelid) ORDER BY a.attnum)
                 FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = ''), '{}') AS default_exprs,
       coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum)
                 FROM pg_attribute a
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull),
                '{}') AS not_null_columns;
