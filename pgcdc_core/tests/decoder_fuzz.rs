//! Property-based fuzzing of the decoder and the walsender framing: arbitrary bytes and
//! mutations of valid messages never panic, errors point inside the input, and the stream
//! state only changes on a successful Stream Start or Stop.
//!
//! 2000 cases per property keep `cargo test` quick; for a longer run:
//! `PROPTEST_CASES=200000 cargo test --release -p pgcdc_core --test decoder_fuzz`.
//! The coverage-guided target is `pgcdc_core/fuzz/fuzz_targets/decode.rs`.

mod decoder_fixtures;

use std::sync::LazyLock;

use decoder_fixtures::{all_cases, Case, TAGS};
use pgcdc_core::pgoutput::frame::{self, ServerMessage, StandbyStatusUpdate};
use pgcdc_core::pgoutput::*;
use pgcdc_core::Lsn;
use proptest::prelude::*;

static CASES: LazyLock<Vec<Case>> = LazyLock::new(all_cases);

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no files next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes `buf` every way a consumer could and checks the invariants that hold for any input.
fn decode_every_way(buf: &[u8]) {
    for version in 0..=MAX_PROTOCOL_VERSION + 1 {
        for in_stream in [false, true] {
            check(buf, decode_message(buf, version, in_stream));
        }
        for parallel in [None, Some(false), Some(true)] {
            let mut d = Decoder::new(version);
            if let Some(p) = parallel {
                d = d.with_parallel_streaming(p);
            }
            let before = d.clone();
            let result = d.decode(buf);
            check_state(&before, &d, &result);
            check(buf, result);
        }
    }
    if let Err(e) = frame::decode(buf) {
        assert!(e.offset <= buf.len(), "{e:?}");
    }
}

fn check(buf: &[u8], r: Result<Message<'_>, DecodeError>) {
    if let Err(e) = r {
        assert!(e.offset <= buf.len(), "{e:?} for {} bytes", buf.len());
        if buf.is_empty() {
            assert_eq!(e.kind, DecodeErrorKind::Empty);
        }
    }
}

/// `after` is `before` having decoded a message with `result`.
fn check_state(before: &Decoder, after: &Decoder, result: &Result<Message<'_>, DecodeError>) {
    let expected = match result {
        Ok(Message::StreamStart(s)) => Some(s.xid),
        Ok(Message::StreamStop) => None,
        _ => before.in_stream(),
    };
    assert_eq!(after.in_stream(), expected, "{result:?}");
    assert_eq!(after.protocol_version(), before.protocol_version());
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    /// Overwrite an Int16 or Int32 with a hostile value: where a length or count sits, this
    /// makes it negative or huge.
    SetI16(usize, i16),
    SetI32(usize, i32),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        (pos, 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (pos, any::<u8>()).prop_map(|(p, v)| Mutation::SetByte(p, v)),
        (pos, prop::sample::select(vec![-1i16, i16::MIN, i16::MAX, 0, 1])).prop_map(|(p, v)| Mutation::SetI16(p, v)),
        (pos, prop::sample::select(vec![-1i32, i32::MIN, i32::MAX, 0x3fff_ffff, 0x4000_0000, 0, 1, 0xffff]))
            .prop_map(|(p, v)| Mutation::SetI32(p, v)),
        pos.prop_map(Mutation::Truncate),
        (pos, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(p, v)| Mutation::Insert(p, v)),
        (pos, 1usize..8).prop_map(|(p, n)| Mutation::Remove(p, n)),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Append),
    ]
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let len = buf.len();
    let at = |p: usize, width: usize| (len >= width).then(|| p % (len - width + 1));
    match m {
        Mutation::FlipBit(p, b) => {
            if let Some(i) = at(*p, 1) {
                buf[i] ^= 1 << b;
            }
        }
        Mutation::SetByte(p, v) => {
            if let Some(i) = at(*p, 1) {
                buf[i] = *v;
            }
        }
        Mutation::SetI16(p, v) => {
            if let Some(i) = at(*p, 2) {
                buf[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        Mutation::SetI32(p, v) => {
            if let Some(i) = at(*p, 4) {
                buf[i..i + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        Mutation::Truncate(p) => buf.truncate(p % (len + 1)),
        Mutation::Insert(p, v) => {
            let i = p % (len + 1);
            buf.splice(i..i, v.iter().copied());
        }
        Mutation::Remove(p, n) => {
            if let Some(i) = at(*p, 1) {
                buf.drain(i..(i + n).min(len));
            }
        }
        Mutation::Append(v) => buf.extend_from_slice(v),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..200)) {
        decode_every_way(&buf);
    }

    #[test]
    fn arbitrary_body_after_a_known_tag_never_panics(
        tag in prop::sample::select(TAGS.to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut buf = vec![tag];
        buf.extend_from_slice(&body);
        decode_every_way(&buf);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        case in prop::sample::select(CASES.clone()),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut buf = case.bytes.clone();
        for m in &mutations {
            apply(&mut buf, m);
        }
        let mut d = case.decoder();
        let before = d.clone();
        let result = d.decode(&buf);
        check(&buf, result.clone());
        check_state(&before, &d, &result);
        decode_every_way(&buf);
    }

    #[test]
    fn one_decoder_over_a_sequence_keeps_a_consistent_state(
        version in MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION,
        parallel in prop::option::of(any::<bool>()),
        steps in prop::collection::vec(
            (prop::sample::select(CASES.clone()), prop::option::of(mutation())),
            1..24,
        ),
    ) {
        let mut d = Decoder::new(version);
        if let Some(p) = parallel {
            d = d.with_parallel_streaming(p);
        }
        for (case, m) in steps {
            let mut buf = case.bytes.clone();
            if let Some(m) = &m {
                apply(&mut buf, m);
            }
            let before = d.clone();
            let result = d.decode(&buf);
            check(&buf, result.clone());
            check_state(&before, &d, &result);
            // An unmutated message of this version decodes whenever the block state matches.
            if m.is_none()
                && case.version == version
                && case.parallel.is_none()
                && case.in_stream == before.in_stream().is_some()
                && !(version >= 4 && case.bytes[0] == b'A' && parallel.is_some())
            {
                prop_assert_eq!(result, Ok(case.expected.clone()), "{}", case.name);
            }
        }
    }

    #[test]
    fn xlogdata_frames_round_trip(
        start in any::<u64>(),
        end in any::<u64>(),
        time in any::<i64>(),
        data in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = vec![b'w'];
        buf.extend_from_slice(&start.to_be_bytes());
        buf.extend_from_slice(&end.to_be_bytes());
        buf.extend_from_slice(&time.to_be_bytes());
        buf.extend_from_slice(&data);
        let Ok(ServerMessage::XLogData(x)) = frame::decode(&buf) else {
            panic!("{buf:?}")
        };
        prop_assert_eq!((x.wal_start, x.wal_end, x.send_time), (Lsn(start), Lsn(end), time));
        prop_assert_eq!(x.data, &data[..]);
        for n in 0..frame::XLogData::HEADER_LEN {
            let e = frame::decode(&buf[..n]).unwrap_err();
            prop_assert!(e.offset <= n);
        }
    }

    #[test]
    fn keepalive_frames_round_trip(end in any::<u64>(), time in any::<i64>(), reply in any::<u8>()) {
        let mut buf = vec![b'k'];
        buf.extend_from_slice(&end.to_be_bytes());
        buf.extend_from_slice(&time.to_be_bytes());
        buf.push(reply);
        let Ok(ServerMessage::Keepalive(k)) = frame::decode(&buf) else {
            panic!("{buf:?}")
        };
        prop_assert_eq!((k.wal_end, k.send_time, k.reply_requested), (Lsn(end), time, reply != 0));
    }

    #[test]
    fn standby_status_updates_encode_big_endian(
        lsns in any::<[u64; 3]>(),
        time in any::<i64>(),
        reply in any::<bool>(),
    ) {
        let u = StandbyStatusUpdate {
            written: Lsn(lsns[0]),
            flushed: Lsn(lsns[1]),
            applied: Lsn(lsns[2]),
            client_time: time,
            reply_requested: reply,
        };
        let bytes = u.encode();
        prop_assert_eq!(bytes.len(), StandbyStatusUpdate::ENCODED_LEN);
        prop_assert_eq!(bytes[0], b'r');
        for (i, lsn) in lsns.iter().enumerate() {
            prop_assert_eq!(&bytes[1 + 8 * i..9 + 8 * i], &lsn.to_be_bytes()[..]);
        }
        prop_assert_eq!(&bytes[25..33], &time.to_be_bytes()[..]);
        prop_assert_eq!(bytes[33], u8::from(reply));
    }
}
