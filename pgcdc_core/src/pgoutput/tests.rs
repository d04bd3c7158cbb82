//! Unit tests of the checked reader, the framing and the hot-path messages. Every message kind
//! in every protocol version, golden bytes from a real server and the fuzzers live in
//! `pgcdc_core/tests/decoder_*.rs`.

use std::time::{Duration, SystemTime};

use super::frame::{self, PrimaryKeepalive, ServerMessage, StandbyStatusUpdate, XLogData};
use super::reader::Reader;
use super::*;

fn truncated(offset: usize, field: &'static str, needed: usize) -> DecodeError {
    DecodeError { offset, kind: DecodeErrorKind::Truncated { field, needed } }
}

#[test]
fn reader_reads_big_endian_and_tracks_the_offset() {
    let buf = [0x7f, 0xff, 0xfe, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3];
    let mut r = Reader::new(&buf);
    assert_eq!(r.read_u8("a"), Ok(0x7f));
    assert_eq!(r.read_i16("b"), Ok(-2));
    assert_eq!(r.offset(), 3);
    assert_eq!(r.read_i32("c"), Ok(i32::MIN + 1));
    assert_eq!(r.read_i64("d"), Ok(2));
    assert_eq!(r.remaining(), 8);
    assert_eq!(r.read_lsn("e"), Ok(Lsn(3)));
    assert_eq!(r.finish(), Ok(()));
    // Reading past the end fails at the end, every time, without moving.
    assert_eq!(r.read_u8("f"), Err(truncated(23, "f", 1)));
    assert_eq!(r.read_i64("g"), Err(truncated(23, "g", 8)));
    assert_eq!(r.offset(), 23);
}

#[test]
fn reader_reports_how_many_bytes_are_missing() {
    let mut r = Reader::new(&[1, 2, 3]);
    assert_eq!(r.read_u8("tag"), Ok(1));
    assert_eq!(r.read_i32("xid"), Err(truncated(1, "xid", 2)));
    assert_eq!(r.read_u32("oid"), Err(truncated(1, "oid", 2)));
    assert_eq!(r.read_i16("n"), Ok(0x0203));
}

#[test]
fn reader_bytes_and_lengths() {
    let buf = [0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9, b'x'];
    let mut r = Reader::new(&buf);
    assert_eq!(r.read_len_bytes("v"), Ok(&b"hi"[..]));
    assert_eq!(r.read_len_bytes("v"), Err(DecodeError { offset: 6, kind: DecodeErrorKind::InvalidLength(-1) }));
    let mut r = Reader::new(&buf[10..]);
    assert_eq!(r.read_len_bytes("v"), Err(truncated(4, "v", 8)));
    let mut r = Reader::new(&buf);
    assert_eq!(r.read_bytes(0, "none"), Ok(&[][..]));
    assert_eq!(r.read_bytes(16, "all"), Err(truncated(0, "all", 1)));
    assert_eq!(r.read_bytes(usize::MAX, "huge"), Err(truncated(0, "huge", usize::MAX - 15)));
    assert_eq!(r.read_bytes(15, "all").map(<[u8]>::len), Ok(15));
}

#[test]
fn reader_counts_and_capacity() {
    let mut r = Reader::new(&[0xff, 0xff, 0, 3, 0x80, 0, 0, 0, 0, 0, 0, 7]);
    assert_eq!(r.read_count16("n"), Err(DecodeError { offset: 0, kind: DecodeErrorKind::InvalidLength(-1) }));
    let mut r = Reader::new(&[0, 3, 0x80, 0, 0, 0, 0, 0, 0, 7]);
    assert_eq!(r.read_count16("n"), Ok(3));
    assert_eq!(
        r.read_count32("n"),
        Err(DecodeError { offset: 2, kind: DecodeErrorKind::InvalidLength(i32::MIN.into()) })
    );
    assert_eq!(r.read_count32("n"), Ok(7));
    // Capacity never exceeds what the remaining bytes could hold.
    let r = Reader::new(&[0; 40]);
    assert_eq!(r.capacity_for(1_000_000, 10), 4);
    assert_eq!(r.capacity_for(2, 10), 2);
    assert_eq!(r.capacity_for(usize::MAX, 0), 40);
}

#[test]
fn reader_strings() {
    let mut r = Reader::new(b"public\0\0caf\xc3\xa9\0tail");
    assert_eq!(r.read_cstr(), Ok("public"));
    assert_eq!(r.read_cstr(), Ok(""));
    assert_eq!(r.read_cstr(), Ok("café"));
    assert_eq!(r.offset(), 14);
    assert_eq!(r.read_cstr(), Err(DecodeError { offset: 14, kind: DecodeErrorKind::UnterminatedString }));
    let mut r = Reader::new(b"ab\xff\0");
    assert_eq!(r.read_cstr(), Err(DecodeError { offset: 0, kind: DecodeErrorKind::InvalidUtf8 }));
    let mut r = Reader::new(b"");
    assert_eq!(r.read_cstr().unwrap_err().kind, DecodeErrorKind::UnterminatedString);
}

#[test]
fn reader_finish_reports_trailing_bytes() {
    let mut r = Reader::new(&[1, 2, 3]);
    r.read_u8("a").unwrap();
    assert_eq!(r.finish(), Err(DecodeError { offset: 1, kind: DecodeErrorKind::TrailingBytes(2) }));
}

/// Hot path: Begin, Insert of five text columns, Commit.
#[test]
fn hot_path_messages() {
    let mut d = Decoder::new(1);
    let mut begin = vec![b'B'];
    begin.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
    begin.extend_from_slice(&1_000_000i64.to_be_bytes());
    begin.extend_from_slice(&77u32.to_be_bytes());
    assert_eq!(
        d.decode(&begin),
        Ok(Message::Begin(Begin { final_lsn: "16/B374D848".parse().unwrap(), commit_time: 1_000_000, xid: 77 }))
    );

    let mut insert = vec![b'I', 0, 0, 0x40, 0, b'N', 0, 5];
    for v in ["1", "two", "", "2024-01-01", "{a,b}"] {
        insert.push(b't');
        insert.extend_from_slice(&(v.len() as i32).to_be_bytes());
        insert.extend_from_slice(v.as_bytes());
    }
    let Ok(Message::Insert(i)) = d.decode(&insert) else { panic!() };
    assert_eq!((i.xid, i.relation_id), (None, 0x4000));
    assert_eq!(i.new.columns.len(), 5);
    assert_eq!(i.new.columns[3], ColumnData::Text(b"2024-01-01"));
    assert_eq!(i.new.columns[2], ColumnData::Text(b""));

    let mut commit = vec![b'C', 0];
    commit.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
    commit.extend_from_slice(&0x16_B374_D878u64.to_be_bytes());
    commit.extend_from_slice(&1_000_000i64.to_be_bytes());
    let Ok(Message::Commit(c)) = d.decode(&commit) else { panic!() };
    assert_eq!(c.end_lsn, Lsn(0x16_B374_D878));
}

#[test]
fn min_protocol_versions() {
    for tag in 0..=u8::MAX {
        let expected = match tag {
            b'B' | b'C' | b'O' | b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M' => Some(1),
            b'S' | b'E' | b'c' | b'A' => Some(2),
            b'b' | b'P' | b'K' | b'r' | b'p' => Some(3),
            _ => None,
        };
        assert_eq!(min_protocol_version(tag), expected, "{:?}", tag as char);
    }
}

fn xlogdata(data: &[u8]) -> Vec<u8> {
    let mut buf = vec![b'w'];
    buf.extend_from_slice(&1u64.to_be_bytes());
    buf.extend_from_slice(&2u64.to_be_bytes());
    buf.extend_from_slice(&(-3i64).to_be_bytes());
    buf.extend_from_slice(data);
    buf
}

#[test]
fn frame_xlogdata_borrows_the_message() {
    let buf = xlogdata(b"E");
    let got = frame::decode(&buf);
    assert_eq!(
        got,
        Ok(ServerMessage::XLogData(XLogData { wal_start: Lsn(1), wal_end: Lsn(2), send_time: -3, data: b"E" }))
    );
    let Ok(ServerMessage::XLogData(x)) = got else { panic!() };
    assert_eq!(x.data.as_ptr(), buf[XLogData::HEADER_LEN..].as_ptr());
    // An empty payload is a framing success and a decoding error.
    let empty = xlogdata(&[]);
    let Ok(ServerMessage::XLogData(x)) = frame::decode(&empty) else { panic!() };
    assert_eq!(decode_message(x.data, 1, false).unwrap_err().kind, DecodeErrorKind::Empty);
}

#[test]
fn frame_keepalive() {
    let mut buf = vec![b'k'];
    buf.extend_from_slice(&0x10u64.to_be_bytes());
    buf.extend_from_slice(&5i64.to_be_bytes());
    buf.push(1);
    assert_eq!(
        frame::decode(&buf),
        Ok(ServerMessage::Keepalive(PrimaryKeepalive { wal_end: Lsn(0x10), send_time: 5, reply_requested: true }))
    );
    buf.push(0);
    assert_eq!(frame::decode(&buf), Err(DecodeError { offset: 18, kind: DecodeErrorKind::TrailingBytes(1) }));
    buf.truncate(17);
    assert_eq!(frame::decode(&buf), Err(truncated(17, "reply requested flag", 1)));
}

#[test]
fn frame_errors() {
    assert_eq!(frame::decode(&[]).unwrap_err().kind, DecodeErrorKind::Empty);
    for tag in 0..=u8::MAX {
        if tag != b'w' && tag != b'k' {
            assert_eq!(
                frame::decode(&[tag, 0, 0]),
                Err(DecodeError { offset: 0, kind: DecodeErrorKind::UnknownTag(tag as char) })
            );
        }
    }
    let buf = xlogdata(&[]);
    for n in 1..buf.len() {
        let e = frame::decode(&buf[..n]).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::Truncated { .. }));
        assert_eq!(e.offset, (n - 1) / 8 * 8 + 1);
    }
}

#[test]
fn standby_status_update_layout() {
    let u = StandbyStatusUpdate {
        written: Lsn(0x0102_0304_0506_0708),
        flushed: Lsn(0x10),
        applied: Lsn(0),
        client_time: -1,
        reply_requested: true,
    };
    let mut expected = vec![b'r', 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0x10];
    expected.extend_from_slice(&[0; 8]);
    expected.extend_from_slice(&[0xff; 8]);
    expected.push(1);
    assert_eq!(u.encode(), expected);
    let mut out = vec![b'd'];
    u.encode_into(&mut out);
    assert_eq!(out.len(), 1 + StandbyStatusUpdate::ENCODED_LEN);
    assert_eq!(out[1..], expected[..]);
}

#[test]
fn pg_timestamps() {
    let pg_epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    assert_eq!(frame::pg_timestamp(pg_epoch), 0);
    assert_eq!(frame::pg_timestamp(pg_epoch + Duration::from_micros(1)), 1);
    assert_eq!(frame::pg_timestamp(SystemTime::UNIX_EPOCH), -PG_EPOCH_OFFSET_MICROS);
    let before_unix = SystemTime::UNIX_EPOCH - Duration::from_micros(5);
    assert_eq!(frame::pg_timestamp(before_unix), -PG_EPOCH_OFFSET_MICROS - 5);
}
