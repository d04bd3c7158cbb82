//! In-process tests (`cargo pgrx test pg15`). Each runs in a transaction that is rolled back,
//! so nothing here can see WAL decoded by a worker: replication end to end lives in
//! tests/test_ext_*.py.

#[pgrx::pg_schema]
mod tests {
    use pgcdc_core::debezium::{Event, Op};
    use pgcdc_core::Lsn;
    use pgrx::prelude::*;

    use crate::datum::PgLsn;
    use crate::feed::FeedOptions;
    use crate::position::Position;
    use crate::queue::{Row, Stager};

    /// Runs `sql` and returns "SQLSTATE: message" of the error it raises (or "ok").
    fn sqlstate_of(sql: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT pg_temp.pgcdc_try({})", pgrx::spi::quote_literal(sql)))
            .unwrap()
            .unwrap()
    }

    fn install_try() {
        Spi::run(
            "CREATE FUNCTION pg_temp.pgcdc_try(sql text) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE st text; msg text;
             BEGIN EXECUTE sql; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                 RETURN st || ': ' || msg;
             END $$",
        )
        .unwrap();
    }

    #[pg_test]
    fn pg_lsn_round_trips() {
        let l = Spi::get_one::<PgLsn>("SELECT '16/B374D848'::pg_lsn").unwrap().unwrap();
        assert_eq!(l.0, "16/B374D848".parse::<Lsn>().unwrap());
        let back = Spi::get_one_with_args::<String>("SELECT $1::text", &[l.into()]).unwrap().unwrap();
        assert_eq!(back, "16/B374D848");
    }

    #[pg_test]
    fn the_launcher_runs_in_pgcdc_database() {
        // pg_test configures pgcdc.database = 'pgrx_tests'; give the launcher time to start.
        for _ in 0..100 {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            let n = Spi::get_one::<i64>("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pgcdc launcher'")
                .unwrap()
                .unwrap();
            if n == 1 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("no pgcdc launcher in pg_stat_activity");
    }

    #[pg_test]
    fn feed_options_accept_every_encoder_key_and_reject_unknown_ones() {
        let opts = FeedOptions::parse(
            "shop",
            &serde_json::json!({
                "decimal.handling.mode": "string",
                "tombstones.on.delete": false,
                "skipped.operations": "none",
                "max_staged_rows": 10,
                "batch_size": "500"
            }),
        )
        .unwrap();
        assert_eq!(opts.max_rows(), 10);
        assert_eq!(opts.batch_size(), 500);
        assert_eq!(opts.encoder.topic_prefix, "shop", "topic.prefix defaults to the feed name");
        assert!(!opts.encoder.tombstones_on_delete);

        let err = FeedOptions::parse("shop", &serde_json::json!({"no.such.option": "x"})).unwrap_err();
        assert!(err.contains("no.such.option"), "{err}");
        let err = FeedOptions::parse("shop", &serde_json::json!({"decimal.handling.mode": "fancy"})).unwrap_err();
        assert!(err.contains("precise"), "lists the allowed values: {err}");
        assert!(FeedOptions::parse("shop", &serde_json::json!({"max_staged_rows": -1})).is_err());
        assert!(FeedOptions::parse("shop", &serde_json::json!(["not", "an", "object"])).is_err());
        for key in pgcdc_core::debezium::EncoderOptions::KNOWN_KEYS {
            // Every key is settable per feed (value validity is the encoder's business).
            let r = FeedOptions::parse("shop", &serde_json::json!({ *key: "true" }));
            if let Err(e) = r {
                assert!(!e.contains("unknown option"), "{key}: {e}");
            }
        }
    }

    #[pg_test]
    fn create_feed_rejects_bad_input_with_sqlstates() {
        install_try();
        Spi::run("CREATE TABLE t_bad (id int primary key)").unwrap();
        Spi::run("CREATE PUBLICATION p_bad FOR TABLE t_bad").unwrap();
        Spi::run("CREATE TABLE t_nokey (v int)").unwrap();
        Spi::run("CREATE PUBLICATION p_nokey FOR TABLE t_nokey").unwrap();
        // The default snapshot.mode (initial) needs primary keys; no_data does not. 13 takes no
        // snapshots: its default starts at the feed's creation, so only the write is refused.
        let default_mode_without_keys = if cfg!(feature = "pg13") { "25001" } else { "55000" };
        for (sql, code) in [
            ("SELECT pgcdc.create_feed('ok', 'p_nokey')", default_mode_without_keys),
            ("SELECT pgcdc.create_feed('ok', 'p_nokey', options => '{\"snapshot.mode\": \"no_data\"}')", "25001"),
            ("SELECT pgcdc.snapshot('no_such_feed')", "42704"),
            ("SELECT pgcdc.create_feed('Bad Name', 'p_bad')", "42602"),
            ("SELECT pgcdc.create_feed('x''; DROP TABLE t_bad; --', 'p_bad')", "42602"),
            ("SELECT pgcdc.create_feed('', 'p_bad')", "42602"),
            ("SELECT pgcdc.create_feed(repeat('a', 41), 'p_bad')", "42602"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', sink => 'kafka')", "22023"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', options => '{\"nope\": 1}')", "22023"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', options => '[1]')", "22023"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', options => '{\"snapshot.mode\": \"always\"}')", "22023"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', options => '{\"snapshot.fetch.size\": 0}')", "22023"),
            ("SELECT pgcdc.create_feed('ok', 'no_such_pub')", "42704"),
            ("SELECT pgcdc.create_feed('ok', 'p_bad', owner => 'no_such_role')", "42704"),
            // The test transaction wrote (CREATE TABLE): slots cannot be created after writes.
            ("SELECT pgcdc.create_feed('ok', 'p_bad')", "25001"),
        ] {
            let got = sqlstate_of(sql);
            assert!(got.starts_with(code), "{sql}: expected {code}, got {got}");
        }
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.feed").unwrap(), Some(0));
    }

    #[pg_test]
    fn missing_feeds_are_42704_and_drop_if_exists_is_quiet() {
        install_try();
        for sql in [
            "SELECT pgcdc.drop_feed('nope')",
            "SELECT pgcdc.pause_feed('nope')",
            "SELECT pgcdc.resume_feed('nope')",
            "SELECT pgcdc.alter_feed('nope', '{}')",
            "SELECT * FROM pgcdc.read('nope')",
            "SELECT pgcdc.ack('nope', '0/1')",
        ] {
            let got = sqlstate_of(sql);
            assert!(got.starts_with("42704"), "{sql}: {got}");
        }
        assert_eq!(Spi::get_one::<bool>("SELECT pgcdc.drop_feed('nope', if_exists => true)").unwrap(), Some(false));
    }

    fn event(commit: u64, ordinal: u32, value: &str) -> Row {
        Row::from_event(
            Event {
                op: Op::Create,
                commit_lsn: Lsn(commit),
                ordinal,
                lsn: Lsn(commit - 10 + u64::from(ordinal)),
                xid: Some(700),
                schema: "public".into(),
                table: "t".into(),
                relation_id: Some(PG_CLASS),
                topic: "f.public.t".into(),
                key: Some("{\"id\":1}".into()),
                value: Some(value.into()),
                headers: vec![("__debezium.oldkey".into(), "{\"id\":0}".into())].into(),
            },
            &mut Default::default(),
        )
    }

    /// The relation the test events name as theirs (any existing one).
    const PG_CLASS: u32 = 1259;

    fn relids_staged(feed_id: i32) -> Vec<Option<u32>> {
        let rows = Spi::get_one_with_args::<Vec<Option<pg_sys::Oid>>>(
            "SELECT array_agg(relid ORDER BY commit_lsn, ordinal) FROM pgcdc.event WHERE feed_id = $1",
            &[feed_id.into()],
        )
        .unwrap()
        .unwrap_or_default();
        rows.into_iter().map(|o| o.map(u32::from)).collect()
    }

    /// Tests run concurrently: one that alters `pgcdc.event` takes its strongest lock before
    /// anything else, never upgrading a weaker lock while another such test waits (a deadlock).
    fn lock_queue_for_ddl() {
        Spi::run("LOCK TABLE pgcdc.event IN ACCESS EXCLUSIVE MODE").unwrap();
    }

    /// A feed row without a slot or a worker: enough for the queue functions (rolled back).
    fn fake_feed(name: &str) -> i32 {
        Spi::get_one_with_args::<i32>(
            "INSERT INTO pgcdc.feed (name, publication, slot_name, sink, owner) \
             VALUES ($1, 'p', 'pgcdc_' || $1, 'table', current_user::regrole) RETURNING id",
            &[name.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn staged_events_are_read_in_position_order_and_acked_by_position() {
        install_try();
        let id = fake_feed("q");
        let mut stager = Stager::default();
        stager
            .stage(id, &[event(0x100, 1, "{\"a\":1}"), event(0x100, 2, "{\"a\":2}"), event(0x200, 1, "{\"b\":1}")])
            .unwrap();
        stager.stage(id, &[event(0x200, 2, "{\"b\":2}")]).unwrap();
        assert!(stager.is_direct(), "pgcdc.event has its own shape: the fast path is used");
        assert_eq!(relids_staged(id), vec![Some(PG_CLASS); 4], "the fast path stores the relation's OID");

        let rows = Spi::get_one::<String>(
            "SELECT string_agg(commit_lsn || '#' || ordinal || '=' || event::text, ' ' ORDER BY commit_lsn, ordinal) \
             FROM pgcdc.read('q', 10)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(rows, "0/100#1={\"a\":1} 0/100#2={\"a\":2} 0/200#1={\"b\":1} 0/200#2={\"b\":2}");
        assert!(crate::feed::last_read_was_direct(), "pgcdc.event has its own shape: read through its key");
        let headers = Spi::get_one::<String>("SELECT headers::text FROM pgcdc.read('q', 1)").unwrap().unwrap();
        assert_eq!(headers, "{\"__debezium.oldkey\":{\"id\":0}}");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.read('q', 10, '0/100', 1)").unwrap(),
            Some(3),
            "read after a position"
        );

        // By position, inside the second transaction.
        assert_eq!(Spi::get_one::<i64>("SELECT pgcdc.ack('q', '0/200', 1)").unwrap(), Some(3));
        assert_eq!(Spi::get_one::<i64>("SELECT pgcdc.ack('q', '0/200', 1)").unwrap(), Some(0), "idempotent");
        assert_eq!(Spi::get_one::<i64>("SELECT pgcdc.ack('q', '0/100')").unwrap(), Some(0), "older");
        let next =
            Spi::get_one::<String>("SELECT commit_lsn || '#' || ordinal FROM pgcdc.read('q', 10)").unwrap().unwrap();
        assert_eq!(next, "0/200#2");
        let acked =
            Spi::get_two::<PgLsn, i32>("SELECT acked_lsn, acked_ordinal FROM pgcdc.feed WHERE name = 'q'").unwrap();
        assert_eq!((acked.0.unwrap().0, acked.1.unwrap()), (Lsn(0x200), 1));

        // Beyond what was delivered: refused, nothing changes.
        assert!(sqlstate_of("SELECT pgcdc.ack('q', '0/300', 1)").starts_with("22023"));
        assert!(sqlstate_of("SELECT pgcdc.ack('q', '0/300')").starts_with("22023"));
        // The whole last transaction cannot be acknowledged while it may still be staging...
        let got = sqlstate_of("SELECT pgcdc.ack('q', '0/200')");
        assert!(got.starts_with("22023") && got.contains("still being staged"), "{got}");
        // ...unless the worker reported it complete.
        Spi::run(&format!(
            "INSERT INTO pgcdc.feed_runtime (feed_id, pid, phase, started_at, complete_lsn, updated_at) \
             VALUES ({id}, pg_backend_pid(), 'streaming', now(), '0/200', now())"
        ))
        .unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT pgcdc.ack('q', '0/200')").unwrap(), Some(1));
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.read('q', 10)").unwrap(), Some(0));
        assert!(sqlstate_of("SELECT pgcdc.ack('q', '0/200', -1)").starts_with("22023"));
        assert!(sqlstate_of("SELECT * FROM pgcdc.read('q', 0)").starts_with("22023"));
    }

    #[pg_test]
    fn an_altered_queue_table_falls_back_to_sql_inserts() {
        lock_queue_for_ddl();
        let id = fake_feed("alt");
        Spi::run("ALTER TABLE pgcdc.event ADD COLUMN note text").unwrap();
        let mut stager = Stager::default();
        stager.stage(id, &[event(0x100, 1, "{\"a\":1}"), event(0x100, 2, "{\"a\":2}")]).unwrap();
        stager.stage(id, &[event(0x200, 1, "{\"b\":1}")]).unwrap(); // the kept plan, reused
        assert!(!stager.is_direct());
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.read('alt', 10)").unwrap(), Some(3));
        assert!(!crate::feed::last_read_was_direct(), "a column more: read through SQL");
        assert_eq!(relids_staged(id), vec![Some(PG_CLASS); 3], "the SQL path stores the relation's OID");
        let headers = Spi::get_one::<String>("SELECT headers::text FROM pgcdc.read('alt', 1)").unwrap().unwrap();
        assert_eq!(headers, "{\"__debezium.oldkey\":{\"id\":0}}");
    }

    /// Every read of `dq` the direct scan and SQL must answer alike: limits, positions inside
    /// and between transactions, a TOASTed value, another feed's events around them.
    fn reads_of_dq() -> Vec<String> {
        [
            "pgcdc.read('dq', 100)",
            "pgcdc.read('dq', 2)",
            "pgcdc.read('dq', 100, '0/100', 1)",
            "pgcdc.read('dq', 100, '0/100', 3)",
            "pgcdc.read('dq', 100, '0/100')",
            "pgcdc.read('dq', 1, '0/200', 0)",
            "pgcdc.read('dq', 100, '0/300')",
        ]
        .iter()
        .map(|from| {
            Spi::get_one::<String>(&format!(
                "SELECT coalesce(string_agg(commit_lsn || '#' || ordinal || '@' || lsn || ':' || xid || op || schema_name \
                 || table_name || topic || key::text || md5(event::text) || headers::text, ' '), '') FROM {from}"
            ))
            .unwrap()
            .unwrap_or_default()
        })
        .collect()
    }

    // Feed names of its own: tests run concurrently, and one waiting on another's uncommitted
    // feed name while this one holds the queue's lock would deadlock.
    #[pg_test]
    fn direct_reads_and_sql_reads_return_the_same_events() {
        lock_queue_for_ddl();
        let id = fake_feed("dq");
        let big = format!("{{\"text\":\"{}\"}}", "x".repeat(300_000));
        let mut stager = Stager::default();
        stager.stage(id, &[event(0x100, 1, "{\"a\":1}"), event(0x100, 2, &big), event(0x100, 3, "{\"a\":3}")]).unwrap();
        stager.stage(id, &[event(0x200, 0, "{\"b\":0}"), event(0x200, 1, "{\"b\":1}")]).unwrap();
        // Another feed's events around them: never read.
        let other = fake_feed("dother");
        stager.stage(other, &[event(0x100, 2, "{\"x\":1}"), event(0x150, 1, "{\"x\":2}")]).unwrap();

        let direct = reads_of_dq();
        assert!(crate::feed::last_read_was_direct());
        assert_eq!(direct[0].split(' ').count(), 5, "{}", direct[0]);
        assert_eq!(direct[2].split(' ').count(), 4, "after 0/100#1: {}", direct[2]);
        assert_eq!(direct[4].split(' ').count(), 2, "after all of 0/100: {}", direct[4]);
        assert_eq!(direct[6], "", "nothing after 0/300");

        // Row security on the queue (even for its owner): the scan steps aside for SQL.
        Spi::run("ALTER TABLE pgcdc.event ENABLE ROW LEVEL SECURITY").unwrap();
        Spi::run("ALTER TABLE pgcdc.event FORCE ROW LEVEL SECURITY").unwrap();
        Spi::run("CREATE POLICY everything ON pgcdc.event USING (true)").unwrap();
        assert_eq!(reads_of_dq(), direct);
        assert!(!crate::feed::last_read_was_direct(), "row security: read through SQL");
        Spi::run("DROP POLICY everything ON pgcdc.event").unwrap();
        Spi::run("ALTER TABLE pgcdc.event DISABLE ROW LEVEL SECURITY").unwrap();

        // A primary key the scan cannot read in position order.
        Spi::run("ALTER TABLE pgcdc.event DROP CONSTRAINT event_pkey").unwrap();
        Spi::run("ALTER TABLE pgcdc.event ADD PRIMARY KEY (feed_id, ordinal, commit_lsn)").unwrap();
        assert_eq!(reads_of_dq(), direct);
        assert!(!crate::feed::last_read_was_direct(), "another primary key: read through SQL");
    }

    #[pg_test]
    fn direct_staging_rechecks_the_table_every_batch() {
        lock_queue_for_ddl();
        let id = fake_feed("shape");
        let mut stager = Stager::default();
        stager.stage(id, &[event(0x100, 1, "{\"a\":1}")]).unwrap();
        assert!(stager.is_direct());

        // A plain non-unique index: still the fast path, and it must not enforce uniqueness.
        Spi::run("CREATE INDEX event_feed_only ON pgcdc.event (feed_id)").unwrap();
        stager.stage(id, &[event(0x100, 4, "{\"a\":4}"), event(0x100, 7, "{\"a\":7}")]).unwrap();
        assert!(stager.is_direct(), "a plain index keeps the fast path");

        // An expression index needs the executor: the batch goes through SQL.
        Spi::run("CREATE INDEX event_expr ON pgcdc.event ((length(value)))").unwrap();
        stager.stage(id, &[event(0x100, 10, "{\"a\":10}")]).unwrap();
        assert!(!stager.is_direct(), "an expression index: SQL path");
        Spi::run("DROP INDEX pgcdc.event_expr").unwrap();
        stager.stage(id, &[event(0x100, 13, "{\"a\":13}")]).unwrap();
        assert!(stager.is_direct(), "back to the fast path");

        // A column whose type changed: writing int8 datums into it would crash the server.
        Spi::run("ALTER TABLE pgcdc.event ALTER COLUMN xid TYPE text").unwrap();
        stager.stage(id, &[event(0x200, 4, "{\"b\":4}")]).unwrap();
        assert!(!stager.is_direct(), "changed column type: SQL path");

        // Every index saw every row (forced index scans).
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        Spi::run("SET LOCAL enable_bitmapscan = off").unwrap();
        let n = Spi::get_one_with_args::<i64>("SELECT count(*) FROM pgcdc.event WHERE feed_id = $1", &[id.into()])
            .unwrap()
            .unwrap();
        assert_eq!(n, 6);
        let rows = Spi::get_one_with_args::<String>(
            "SELECT string_agg(commit_lsn || '#' || ordinal || '=' || value || ':' || xid, ' ' ORDER BY commit_lsn, ordinal) \
             FROM pgcdc.event WHERE feed_id = $1",
            &[id.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            rows,
            "0/100#1={\"a\":1}:700 0/100#4={\"a\":4}:700 0/100#7={\"a\":7}:700 0/100#10={\"a\":10}:700 \
             0/100#13={\"a\":13}:700 0/200#4={\"b\":4}:700"
        );
    }

    #[pg_test]
    fn null_arguments_are_22004() {
        install_try();
        let _ = fake_feed("nul");
        for sql in [
            "SELECT pgcdc.create_feed(NULL, 'p')",
            "SELECT pgcdc.create_feed('x', NULL)",
            "SELECT pgcdc.create_feed('x', 'p', sink => NULL)",
            "SELECT pgcdc.create_feed('x', 'p', options => NULL)",
            "SELECT pgcdc.drop_feed(NULL)",
            "SELECT pgcdc.drop_feed('nul', if_exists => NULL)",
            "SELECT pgcdc.pause_feed(NULL)",
            "SELECT pgcdc.resume_feed(NULL)",
            "SELECT pgcdc.alter_feed(NULL, '{}')",
            "SELECT pgcdc.alter_feed('nul', NULL)",
            "SELECT * FROM pgcdc.read(NULL)",
            "SELECT * FROM pgcdc.read('nul', NULL)",
            "SELECT pgcdc.ack(NULL, '0/1')",
            "SELECT pgcdc.ack('nul', NULL)",
        ] {
            let got = sqlstate_of(sql);
            assert!(got.starts_with("22004"), "{sql}: {got}");
        }
    }

    #[pg_test]
    fn a_shadowing_operator_in_the_callers_search_path_is_never_used() {
        install_try();
        let _ = fake_feed("shadow");
        // An operator that would run with the privileges of whoever evaluates it.
        Spi::run("CREATE SCHEMA evil").unwrap();
        for (typ, cmp) in [("text", "texteq"), ("integer", "int4eq"), ("oid", "oideq"), ("name", "nameeq")] {
            Spi::run(&format!(
                "CREATE FUNCTION evil.eq(a {typ}, b {typ}) RETURNS boolean LANGUAGE plpgsql AS $$ \
                 BEGIN RAISE EXCEPTION 'shadow operator ran as %', current_user; RETURN pg_catalog.{cmp}(a, b); END $$; \
                 CREATE OPERATOR evil.= (LEFTARG = {typ}, RIGHTARG = {typ}, FUNCTION = evil.eq)"
            ))
            .unwrap();
        }
        Spi::run("SET LOCAL search_path = evil, pg_catalog").unwrap();
        assert!(sqlstate_of("SELECT 'a'::text = 'a'::text").contains("shadow operator ran"), "the trap works");
        for sql in [
            "SELECT * FROM pgcdc.read('shadow')",
            "SELECT pgcdc.ack('shadow', '0/0')",
            "SELECT pgcdc.alter_feed('shadow', '{\"batch_size\": 10}')",
            "SELECT pgcdc.pause_feed('shadow')",
            "SELECT pgcdc.resume_feed('shadow')",
            "SELECT count(*) FROM pgcdc.feed_status",
            "SELECT count(*) FROM pgcdc.feeds",
            "SELECT pgcdc.drop_feed('shadow')",
            "SELECT pgcdc.drop_feed('shadow', if_exists => true)",
        ] {
            let got = sqlstate_of(sql);
            assert!(!got.contains("shadow operator"), "{sql}: {got}");
            assert_eq!(got, "ok", "{sql}");
        }
        Spi::run("RESET search_path").unwrap();
    }

    #[pg_test]
    fn other_roles_cannot_use_a_feed_but_its_owner_and_admins_can() {
        install_try();
        let _ = fake_feed("priv");
        Spi::run("CREATE ROLE pgcdc_test_stranger NOLOGIN").unwrap();
        Spi::run("CREATE ROLE pgcdc_test_admin NOLOGIN IN ROLE pgcdc_admin").unwrap();
        Spi::run("SET LOCAL ROLE pgcdc_test_stranger").unwrap();
        for sql in [
            "SELECT * FROM pgcdc.read('priv')",
            "SELECT pgcdc.ack('priv', '0/1')",
            "SELECT pgcdc.drop_feed('priv')",
            "SELECT pgcdc.pause_feed('priv')",
            "SELECT pgcdc.create_feed('mine', 'p')",
            "SELECT count(*) FROM pgcdc.event",
            "SELECT count(*) FROM pgcdc.feed",
            // A feed that does not exist looks the same as one the role may not use.
            "SELECT * FROM pgcdc.read('no_such_feed')",
            "SELECT pgcdc.ack('no_such_feed', '0/1')",
            "SELECT pgcdc.drop_feed('no_such_feed')",
        ] {
            let got = sqlstate_of(sql);
            assert!(got.starts_with("42501"), "{sql}: {got}");
        }
        assert_eq!(
            sqlstate_of("SELECT * FROM pgcdc.read('priv')").replace("priv", "X"),
            sqlstate_of("SELECT * FROM pgcdc.read('no_such_feed')").replace("no_such_feed", "X"),
            "same message for a foreign and a missing feed"
        );
        assert_eq!(Spi::get_one::<bool>("SELECT pgcdc.drop_feed('priv', if_exists => true)").unwrap(), Some(false));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.feeds").unwrap(),
            Some(0),
            "the feeds view hides others' feeds"
        );
        Spi::run("RESET ROLE").unwrap();
        Spi::run("SET LOCAL ROLE pgcdc_test_admin").unwrap();
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.feeds").unwrap(), Some(1));
        // The publication 'p' of the fake feed does not exist, so it publishes nothing the
        // admin could not read.
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM pgcdc.read('priv')").unwrap(), Some(0));
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn notify_payloads_carry_the_event_or_a_reference() {
        let small = event(0x100, 1, "{\"a\":1}");
        let p = small.notify_payload().unwrap();
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["commit_lsn"], "0/100");
        assert_eq!(v["value"]["a"], 1);
        let big = event(0x100, 2, &format!("{{\"s\":\"{}\"}}", "x".repeat(9000)));
        assert!(big.notify_payload().is_none());
        let r: serde_json::Value = serde_json::from_str(&big.reference_payload()).unwrap();
        assert_eq!(r["staged"], true);
        assert_eq!(Position::new(Lsn(0x100), 2).to_string(), "0/100 #2");
    }
}
