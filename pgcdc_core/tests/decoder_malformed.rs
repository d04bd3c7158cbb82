//! Malformed-input regressions: truncation at every byte, trailing bytes, unknown tags and
//! column kinds, impossible lengths and counts, bad strings. Each is an error with the right
//! offset, never a panic.

mod decoder_fixtures;

use decoder_fixtures::{all_cases, Bytes, Case, Col, KEY, ROW, TAGS};
use pgcdc_core::pgoutput::*;

fn err(version: u32, in_stream: bool, buf: &[u8]) -> DecodeError {
    match decode_message(buf, version, in_stream) {
        Ok(m) => panic!("{buf:02x?} decoded as {m:?}"),
        Err(e) => e,
    }
}

/// In protocol 4 without a declared streaming mode, a Stream Abort cut right after its
/// subtransaction xid is a complete abort without abort info: the one prefix that is valid.
fn prefix_is_valid(case: &Case, n: usize) -> bool {
    case.version >= 4 && case.bytes[0] == b'A' && case.parallel.is_none() && n == 9
}

#[test]
fn every_truncation_is_an_error_at_or_before_the_cut() {
    let mut checked = 0;
    for case in all_cases() {
        for n in 0..case.bytes.len() {
            let cut = &case.bytes[..n];
            let got = case.decoder().decode(cut);
            if prefix_is_valid(&case, n) {
                assert!(matches!(got, Ok(Message::StreamAbort(_))), "{got:?}");
                continue;
            }
            let e = got.expect_err(case.name);
            assert!(e.offset <= n, "{} cut at {n}: {e:?}", case.name);
            if n == 0 {
                assert_eq!((e.offset, e.kind), (0, DecodeErrorKind::Empty));
            } else {
                // A cut never looks like a different kind of damage.
                assert!(
                    matches!(e.kind, DecodeErrorKind::Truncated { .. } | DecodeErrorKind::UnterminatedString),
                    "{} cut at {n}: {e:?}",
                    case.name
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 4000, "{checked}");
}

#[test]
fn truncated_reports_the_missing_byte_count() {
    let begin = Bytes::tag(b'B').lsn(1).i64(2).u32(3).build();
    let e = err(1, false, &begin[..15]);
    assert_eq!((e.offset, e.kind), (9, DecodeErrorKind::Truncated { field: "commit time", needed: 2 }));
    let insert = Bytes::tag(b'I').u32(1).u8(b'N').tuple(&[Col::Text(b"hello")]).build();
    // Cut inside the value: offset of the value, 3 of its 5 bytes missing.
    let e = err(1, false, &insert[..insert.len() - 3]);
    assert_eq!((e.offset, e.kind), (13, DecodeErrorKind::Truncated { field: "column value", needed: 3 }));
}

#[test]
fn every_trailing_byte_is_an_error_at_the_end() {
    for case in all_cases() {
        for extra in [&[0u8][..], &[0xff; 7]] {
            let mut buf = case.bytes.clone();
            buf.extend_from_slice(extra);
            let e = case.decoder().decode(&buf).expect_err(case.name);
            if prefix_is_valid(&case, case.bytes.len()) {
                // Read as the start of abort info that is then too short.
                assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }), "{e:?}");
                continue;
            }
            assert_eq!(
                (e.offset, e.kind),
                (case.bytes.len(), DecodeErrorKind::TrailingBytes(extra.len())),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn unknown_tags_for_every_other_byte() {
    let mut unknown = 0;
    for tag in 0..=u8::MAX {
        if TAGS.contains(&tag) {
            continue;
        }
        unknown += 1;
        for version in 0..=MAX_PROTOCOL_VERSION + 1 {
            for in_stream in [false, true] {
                for body in [&[][..], &[0u8; 40]] {
                    let mut buf = vec![tag];
                    buf.extend_from_slice(body);
                    let e = err(version, in_stream, &buf);
                    assert_eq!((e.offset, e.kind), (0, DecodeErrorKind::UnknownTag(tag as char)));
                }
            }
        }
    }
    assert_eq!(unknown, 256 - 19);
}

#[test]
fn empty_input() {
    for version in 0..=MAX_PROTOCOL_VERSION + 1 {
        for in_stream in [false, true] {
            let e = err(version, in_stream, &[]);
            assert_eq!((e.offset, e.kind), (0, DecodeErrorKind::Empty));
        }
        let e = Decoder::new(version).decode(&[]).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::Empty);
    }
}

#[test]
fn unknown_tuple_column_kinds() {
    for kind in 0..=u8::MAX {
        if b"ntub".contains(&kind) {
            continue;
        }
        // Second column is bad: offset after tag, relid, 'N', count, and the first column.
        let buf = Bytes::tag(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(kind).build();
        let e = err(1, false, &buf);
        assert_eq!((e.offset, e.kind), (9, DecodeErrorKind::UnknownColumnKind(kind as char)));
        // And in every place a tuple appears.
        for buf in [
            Bytes::tag(b'U').u32(1).u8(b'K').i16(1).u8(kind).build(),
            Bytes::tag(b'U').u32(1).u8(b'O').tuple(KEY).u8(b'N').i16(1).u8(kind).build(),
            Bytes::tag(b'D').u32(1).u8(b'O').i16(1).u8(kind).build(),
        ] {
            let e = err(1, false, &buf);
            assert_eq!(e.kind, DecodeErrorKind::UnknownColumnKind(kind as char));
            assert_eq!(e.offset, buf.len() - 1);
        }
    }
}

#[test]
fn bad_tuple_markers() {
    let cases: [(&[u8], usize); 6] = [
        (b"I\0\0\0\x01K\0\0", 5),
        (b"I\0\0\0\x01O\0\0", 5),
        (b"U\0\0\0\x01X\0\0", 5),
        (b"U\0\0\0\x01K\0\0K\0\0", 8),
        (b"D\0\0\0\x01N\0\0", 5),
        (b"D\0\0\0\x01\0\0\0", 5),
    ];
    for (buf, offset) in cases {
        let e = err(1, false, buf);
        assert_eq!(e.offset, offset, "{buf:?}");
        assert!(matches!(e.kind, DecodeErrorKind::Unexpected { .. }), "{buf:?}: {e:?}");
    }
}

#[test]
fn negative_and_absurd_lengths() {
    let insert = |len: i32| Bytes::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(len).raw(b"abc").build();
    for len in [-1, -2, i32::MIN, 0x4000_0000, i32::MAX] {
        let e = err(1, false, &insert(len));
        assert_eq!((e.offset, e.kind), (9, DecodeErrorKind::InvalidLength(len.into())));
    }
    // Plausible but longer than the message: truncated.
    let e = err(1, false, &insert(1000));
    assert_eq!((e.offset, e.kind), (13, DecodeErrorKind::Truncated { field: "column value", needed: 997 }));

    let msg = |len: i32| Bytes::tag(b'M').u8(1).lsn(1).cstr("p").i32(len).build();
    let e = err(1, false, &msg(-1));
    assert_eq!((e.offset, e.kind), (12, DecodeErrorKind::InvalidLength(-1)));
    assert!(matches!(err(1, false, &msg(i32::MAX)).kind, DecodeErrorKind::InvalidLength(_)));
}

#[test]
fn negative_and_absurd_counts() {
    for n in [-1i16, i16::MIN] {
        let tuple = Bytes::tag(b'I').u32(1).u8(b'N').i16(n).build();
        let e = err(1, false, &tuple);
        assert_eq!((e.offset, e.kind), (6, DecodeErrorKind::InvalidLength(n.into())));
        let rel = Bytes::tag(b'R').u32(1).cstr("").cstr("t").u8(b'd').i16(n).build();
        let e = err(1, false, &rel);
        assert_eq!((e.offset, e.kind), (9, DecodeErrorKind::InvalidLength(n.into())));
    }
    for n in [-1, i32::MIN] {
        let t = Bytes::tag(b'T').i32(n).u8(0).build();
        let e = err(1, false, &t);
        assert_eq!((e.offset, e.kind), (1, DecodeErrorKind::InvalidLength(n.into())));
    }
    // Huge counts with little data run out of bytes instead of allocating for the count.
    let tuple = Bytes::tag(b'I').u32(1).u8(b'N').i16(i16::MAX).u8(b'n').build();
    assert!(matches!(err(1, false, &tuple).kind, DecodeErrorKind::Truncated { field: "column kind", .. }));
    let t = Bytes::tag(b'T').i32(i32::MAX).u8(0).u32(1).build();
    let e = err(1, false, &t);
    assert_eq!((e.offset, e.kind), (10, DecodeErrorKind::Truncated { field: "relation OID", needed: 4 }));
    let rel = Bytes::tag(b'R').u32(1).cstr("").cstr("t").u8(b'd').i16(i16::MAX).build();
    assert!(matches!(err(1, false, &rel).kind, DecodeErrorKind::Truncated { .. }));
}

#[test]
fn bad_strings() {
    // Relation name without its NUL: error at the start of the string.
    let rel = Bytes::tag(b'R').u32(1).cstr("public").raw(b"orders").build();
    let e = err(1, false, &rel);
    assert_eq!((e.offset, e.kind), (12, DecodeErrorKind::UnterminatedString));
    for bad in [&b"\xff"[..], b"a\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        let origin = Bytes::tag(b'O').lsn(1).raw(bad).u8(0).build();
        let e = err(1, false, &origin);
        assert_eq!((e.offset, e.kind), (9, DecodeErrorKind::InvalidUtf8));
        let m = Bytes::tag(b'M').u8(0).lsn(1).raw(bad).u8(0).i32(0).build();
        assert_eq!(err(1, false, &m).kind, DecodeErrorKind::InvalidUtf8);
    }
    let gid = Bytes::tag(b'K').u8(0).lsn(1).lsn(2).i64(3).u32(4).raw(b"gid").build();
    assert_eq!(err(3, false, &gid), DecodeError { offset: 30, kind: DecodeErrorKind::UnterminatedString });
}

#[test]
fn bad_replica_identity() {
    for ri in 0..=u8::MAX {
        if b"dnfi".contains(&ri) {
            continue;
        }
        let rel = Bytes::tag(b'R').u32(1).cstr("").cstr("t").u8(ri).i16(0).build();
        let e = err(1, false, &rel);
        assert_eq!(e.offset, 8);
        assert!(matches!(e.kind, DecodeErrorKind::Unexpected { found, .. } if found == ri as char), "{e:?}");
    }
}

#[test]
fn errors_display_their_offset() {
    let e = err(1, false, &[b'I', 0, 0]);
    assert_eq!(e.to_string(), "malformed pgoutput message at byte 1: truncated: needed 2 more bytes for relation OID");
    let e = err(1, false, &Bytes::tag(b'I').u32(1).u8(b'N').tuple(ROW).u8(9).build());
    assert!(e.to_string().ends_with("1 trailing bytes after the message"), "{e}");
}
