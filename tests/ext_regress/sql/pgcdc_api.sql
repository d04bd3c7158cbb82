-- pgcdc SQL surface: every error has a real SQLSTATE and a hint, failed calls leave nothing
-- behind, repeated calls are harmless, every public object is documented.
-- Runs in database postgres (pgcdc.database) of a cluster preloading pgcdc, with the
-- extension created (tests/test_ext_regress.py).

CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; hint text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg || CASE WHEN hint <> '' THEN E'\nHINT: ' || hint ELSE '' END;
END $$;

CREATE TABLE orders (id int PRIMARY KEY, item text);
CREATE TABLE customers (id int PRIMARY KEY, name text);
CREATE PUBLICATION shop FOR TABLE orders, customers;

-- Bad names, including quotes, spaces and SQL.
SELECT pg_temp.try($$SELECT pgcdc.create_feed('Bad Name', 'shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('x''; DROP TABLE orders; --', 'shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('"quoted"', 'shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('', 'shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('1st', 'shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed(repeat('a', 41), 'shop')$$);
-- Bad publication, sink, options, owner.
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'no_such_publication')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', sink => 'kafka')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', options => '{"decimal.mode": "string"}')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', options => '{"decimal.handling.mode": "fancy"}')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', options => '{"tombstones.on.delete": {"a": 1}}')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', options => '"string"')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', options => '{"max_staged_rows": -5}')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop', owner => 'no_such_role')$$);
-- After a write in the same transaction: the slot cannot be created.
BEGIN;
INSERT INTO orders VALUES (0, 'setup');
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop')$$);
ROLLBACK;
-- None of that left anything behind.
SELECT count(*) AS feeds FROM pgcdc.feed;
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name LIKE 'pgcdc%';

-- A good feed, then a duplicate.
SELECT pgcdc.create_feed('shop', publication => 'shop') IS NOT NULL AS created;
SELECT pgcdc.create_feed('shop_live', publication => 'shop', sink => 'notify',
                         options => '{"decimal.handling.mode": "string", "max_staged_rows": 1000}') IS NOT NULL AS created;
SELECT pg_temp.try($$SELECT pgcdc.create_feed('shop', 'shop')$$);
SELECT name, publication, sink, state, owner, slot_name, channel, options FROM pgcdc.feeds ORDER BY name;
SELECT slot_name, plugin, slot_type FROM pg_replication_slots WHERE slot_name LIKE 'pgcdc%' ORDER BY 1;

-- Missing feeds: 42704 everywhere; drop_feed(if_exists) only notices.
SELECT pg_temp.try($$SELECT pgcdc.drop_feed('nope')$$);
SELECT pg_temp.try($$SELECT pgcdc.pause_feed('nope')$$);
SELECT pg_temp.try($$SELECT pgcdc.resume_feed('nope')$$);
SELECT pg_temp.try($$SELECT pgcdc.alter_feed('nope', '{}')$$);
SELECT pg_temp.try($$SELECT * FROM pgcdc.read('nope')$$);
SELECT pg_temp.try($$SELECT pgcdc.ack('nope', '0/1')$$);
SELECT pg_temp.try($$SELECT pgcdc.reset_feed('nope')$$);
SELECT pgcdc.drop_feed('nope', if_exists => true);

-- Acknowledgements: nothing delivered yet, so nothing can be acknowledged.
SELECT pg_temp.try($$SELECT pgcdc.ack('shop', 'FF/0')$$);
SELECT pg_temp.try($$SELECT pgcdc.ack('shop', 'FF/0', 3)$$);
SELECT pg_temp.try($$SELECT pgcdc.ack('shop', '0/0', -1)$$);
SELECT pgcdc.ack('shop', '0/0') AS removed;
-- The queue is pgcdc's: events leave it by ack, reset_feed or drop_feed only.
SELECT pg_temp.try($$TRUNCATE pgcdc.event$$);
SELECT pg_temp.try($$DELETE FROM pgcdc.event WHERE feed_id = 0$$);
SELECT pgcdc.reset_feed('shop') >= '0/1' AS reset;
SELECT pgcdc.ack('shop', '0/1') AS removed;
SELECT pg_temp.try($$SELECT * FROM pgcdc.read('shop', 0)$$);
SELECT count(*) FROM pgcdc.read('shop');

-- Options: merged, validated, removable.
SELECT pgcdc.alter_feed('shop', '{"decimal.handling.mode": "string", "tombstones.on.delete": false}');
SELECT pgcdc.alter_feed('shop', '{"tombstones.on.delete": null, "binary.handling.mode": "hex"}');
SELECT pg_temp.try($$SELECT pgcdc.alter_feed('shop', '{"binary.handling.mode": "octal"}')$$);
SELECT pg_temp.try($$SELECT pgcdc.alter_feed('shop', '[]')$$);
SELECT options FROM pgcdc.feeds WHERE name = 'shop';

-- Pause and resume are idempotent.
SELECT pgcdc.pause_feed('shop');
SELECT pgcdc.pause_feed('shop');
SELECT state FROM pgcdc.feeds WHERE name = 'shop';
SELECT pgcdc.resume_feed('shop');
SELECT pgcdc.resume_feed('shop');
SELECT state FROM pgcdc.feeds WHERE name = 'shop';

-- Privileges: strangers can neither see nor use feeds, nor read the catalog or queue.
CREATE ROLE regress_stranger;
SET ROLE regress_stranger;
SELECT pg_temp.try($$SELECT * FROM pgcdc.read('shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.ack('shop', '0/0')$$);
SELECT pg_temp.try($$SELECT pgcdc.pause_feed('shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.reset_feed('shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.alter_feed('shop', '{}')$$);
SELECT pg_temp.try($$SELECT pgcdc.drop_feed('shop')$$);
SELECT pg_temp.try($$SELECT pgcdc.create_feed('mine', 'shop')$$);
SELECT pg_temp.try($$SELECT * FROM pgcdc.feed$$);
SELECT pg_temp.try($$SELECT * FROM pgcdc.event$$);
SELECT count(*) AS visible_feeds FROM pgcdc.feeds;
SELECT count(*) AS visible_status FROM pgcdc.feed_status;
-- A feed that does not exist looks exactly like one the role may not use.
SELECT pg_temp.try($$SELECT * FROM pgcdc.read('nope')$$);
SELECT pg_temp.try($$SELECT pgcdc.drop_feed('nope')$$);
SELECT pgcdc.drop_feed('shop', if_exists => true);
SELECT pgcdc.drop_feed('nope', if_exists => true);
RESET ROLE;
DROP ROLE regress_stranger;

-- Administrators who are not superusers cannot create notify feeds (payloads reach every
-- role that can LISTEN).
CREATE ROLE regress_admin IN ROLE pgcdc_admin;
GRANT SELECT ON orders, customers TO regress_admin;
SET ROLE regress_admin;
SELECT pg_temp.try($$SELECT pgcdc.create_feed('adm_live', 'shop', sink => 'notify')$$);
RESET ROLE;
DROP OWNED BY regress_admin;
DROP ROLE regress_admin;

-- NULL arguments are 22004, never internal errors.
SELECT pg_temp.try($$SELECT pgcdc.create_feed(NULL, 'shop')$$);
SELECT pg_temp.try($$SELECT * FROM pgcdc.read(NULL)$$);
SELECT pg_temp.try($$SELECT * FROM pgcdc.read('shop', NULL)$$);
SELECT pg_temp.try($$SELECT pgcdc.ack('shop', NULL)$$);
SELECT pg_temp.try($$SELECT pgcdc.reset_feed(NULL)$$);
SELECT pg_temp.try($$SELECT pgcdc.drop_feed(NULL)$$);
SELECT pg_temp.try($$SELECT pgcdc.alter_feed('shop', NULL)$$);

-- Every public object is documented.
SELECT p.proname AS undocumented_function FROM pg_proc p
WHERE p.pronamespace = 'pgcdc'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT c.relname AS undocumented_relation FROM pg_class c
WHERE c.relnamespace = 'pgcdc'::regnamespace AND c.relkind IN ('r', 'v', 'u')
  AND obj_description(c.oid, 'pg_class') IS NULL;
SELECT p.oid::regprocedure AS function FROM pg_proc p
WHERE p.pronamespace = 'pgcdc'::regnamespace ORDER BY p.oid::regprocedure::text;
-- Every function pins its search_path; only pgcdc_admin may create feeds.
SELECT p.proname, p.proconfig FROM pg_proc p
WHERE p.pronamespace = 'pgcdc'::regnamespace ORDER BY 1;
SELECT p.proname, has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute,
       has_function_privilege('pgcdc_admin', p.oid, 'EXECUTE') AS admin_execute
FROM pg_proc p WHERE p.pronamespace = 'pgcdc'::regnamespace ORDER BY 1;
SELECT c.relname, c.reloptions FROM pg_class c
WHERE c.relnamespace = 'pgcdc'::regnamespace AND c.relkind = 'v' ORDER BY 1;
SELECT attname AS feed_status_column FROM pg_attribute
WHERE attrelid = 'pgcdc.feed_status'::regclass AND attnum > 0 ORDER BY attnum;

-- Dropping: the feed and its events go at once, the slot right after commit.
SELECT pgcdc.drop_feed('shop');
SELECT pgcdc.drop_feed('shop_live');
SELECT count(*) AS feeds FROM pgcdc.feed;
SELECT pg_temp.try($$SELECT pgcdc.drop_feed('shop')$$);
DROP PUBLICATION shop;
DROP TABLE orders, customers;

-- Feeds run in pgcdc.database only.
CREATE DATABASE regress_elsewhere;
\c regress_elsewhere
CREATE EXTENSION pgcdc;
CREATE TABLE t (id int PRIMARY KEY);
CREATE PUBLICATION p FOR TABLE t;
DO $$
BEGIN
    PERFORM pgcdc.create_feed('elsewhere', 'p');
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE '%: %', SQLSTATE, SQLERRM;
END $$;
\c postgres
DROP DATABASE regress_elsewhere;
