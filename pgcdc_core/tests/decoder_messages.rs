//! Every message kind in every protocol version where it exists, from hand-built bytes, and the
//! decoder's stream state machine.

mod decoder_fixtures;

use decoder_fixtures::{all_cases, cases, Bytes, Col, ROW, TAGS, XID};
use pgcdc_core::pgoutput::*;
use pgcdc_core::Lsn;

#[test]
fn every_case_decodes_with_every_field() {
    let all = all_cases();
    assert!(all.len() > 100, "{}", all.len());
    for case in &all {
        let mut decoder = case.decoder();
        let got = decoder.decode(&case.bytes);
        assert_eq!(
            got.as_ref(),
            Ok(&case.expected),
            "{} in protocol {} (in stream: {})",
            case.name,
            case.version,
            case.in_stream
        );
        if case.parallel.is_none() {
            let stateless = decode_message(&case.bytes, case.version, case.in_stream);
            assert_eq!(stateless, got, "{} stateless", case.name);
        }
    }
}

#[test]
fn each_protocol_has_the_expected_tags() {
    let tags_of = |v| {
        let mut t: Vec<u8> = cases(v).iter().map(|c| c.bytes[0]).collect();
        t.sort_unstable();
        t.dedup();
        String::from_utf8(t).unwrap()
    };
    assert_eq!(tags_of(1), "BCDIMORTUY");
    assert_eq!(tags_of(2), "ABCDEIMORSTUYc");
    assert_eq!(tags_of(3), "ABCDEIKMOPRSTUYbcpr");
    assert_eq!(tags_of(4), tags_of(3));
}

#[test]
fn tags_from_later_protocols_are_not_in_protocol() {
    for version in MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION {
        let known: Vec<u8> = cases(version).iter().map(|c| c.bytes[0]).collect();
        for case in all_cases() {
            let tag = case.bytes[0];
            if known.contains(&tag) {
                continue;
            }
            for in_stream in [false, true] {
                let err = decode_message(&case.bytes, version, in_stream).unwrap_err();
                assert_eq!(err.offset, 0);
                assert_eq!(
                    err.kind,
                    DecodeErrorKind::NotInProtocol(tag as char, version),
                    "{} in protocol {version}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn unsupported_protocol_versions_refuse_every_message() {
    for version in [0, MAX_PROTOCOL_VERSION + 1, u32::MAX] {
        for case in all_cases() {
            let err = Decoder::new(version).decode(&case.bytes).unwrap_err();
            assert_eq!((err.offset, err.kind), (0, DecodeErrorKind::NotInProtocol(case.bytes[0] as char, version)));
        }
    }
}

#[test]
fn protocol_1_has_no_stream_blocks() {
    let insert = Bytes::tag(b'I').u32(1).u8(b'N').tuple(&[]).build();
    let err = decode_message(&insert, 1, true).unwrap_err();
    assert_eq!(err.kind, DecodeErrorKind::NotInProtocol('I', 1));
}

#[test]
fn stream_blocks_set_and_clear_the_xid() {
    for version in 2..=MAX_PROTOCOL_VERSION {
        let mut d = Decoder::new(version);
        assert_eq!(d.protocol_version(), version);
        assert_eq!(d.in_stream(), None);
        let start = Bytes::tag(b'S').u32(XID).u8(1).build();
        d.decode(&start).unwrap();
        assert_eq!(d.in_stream(), Some(XID));

        // Inside the block the first Int32 is the xid, here of a subtransaction.
        let insert = Bytes::tag(b'I').u32(XID + 1).u32(7).u8(b'N').tuple(ROW).build();
        let Message::Insert(i) = d.decode(&insert).unwrap() else { panic!() };
        assert_eq!((i.xid, i.relation_id), (Some(XID + 1), 7));
        // Origin carries no xid even inside a block.
        let origin = Bytes::tag(b'O').lsn(5).cstr("o").build();
        assert!(matches!(d.decode(&origin), Ok(Message::Origin(_))));

        d.decode(b"E").unwrap();
        assert_eq!(d.in_stream(), None);
        // Outside again: the same relation id is read without an xid.
        let plain = Bytes::tag(b'I').u32(7).u8(b'N').tuple(ROW).build();
        let Message::Insert(i) = d.decode(&plain).unwrap() else { panic!() };
        assert_eq!((i.xid, i.relation_id), (None, 7));
        let commit = Bytes::tag(b'c').u32(XID).u8(0).lsn(1).lsn(2).i64(3).build();
        assert!(matches!(d.decode(&commit), Ok(Message::StreamCommit(_))));
    }
}

#[test]
fn stream_block_boundaries_are_checked() {
    let start = Bytes::tag(b'S').u32(XID).u8(1).build();
    for version in 2..=MAX_PROTOCOL_VERSION {
        let mut d = Decoder::new(version);
        let err = d.decode(b"E").unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(matches!(err.kind, DecodeErrorKind::OutOfSequence(_)));
        assert_eq!(d.in_stream(), None);

        d.decode(&start).unwrap();
        let nested = Bytes::tag(b'S').u32(XID + 1).u8(0).build();
        let err = d.decode(&nested).unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::OutOfSequence(_)));
        // A failed decode leaves the state alone.
        assert_eq!(d.in_stream(), Some(XID));

        // Transaction boundaries cannot appear inside a block (a lost Stream Stop).
        for case in cases(version) {
            let tag = case.bytes[0];
            if case.in_stream || !b"BCcAbPKrp".contains(&tag) {
                continue;
            }
            let err = d.decode(&case.bytes).unwrap_err();
            assert_eq!(err.offset, 0, "{}", case.name);
            assert!(matches!(err.kind, DecodeErrorKind::OutOfSequence(_)), "{}: {err}", case.name);
            assert_eq!(d.in_stream(), Some(XID));
        }
        d.decode(b"E").unwrap();
    }
}

#[test]
fn data_errors_leave_the_stream_state_alone() {
    let mut d = Decoder::new(2);
    d.decode(&[b'S', 0, 0, 0, 5, 1]).unwrap();
    assert!(d.decode(&[b'I', 0, 0]).is_err());
    assert_eq!(d.in_stream(), Some(5));
    assert!(d.decode(&[b'S', 0, 0]).is_err());
    assert_eq!(d.in_stream(), Some(5));
}

#[test]
fn stream_abort_info_by_length_or_option() {
    let short = Bytes::tag(b'A').u32(XID).u32(2).build();
    let long = Bytes::tag(b'A').u32(XID).u32(2).lsn(0x10).i64(-5).build();
    let with_info = StreamAbort { xid: XID, subxid: 2, abort_lsn: Some(Lsn(0x10)), abort_time: Some(-5) };
    let without = StreamAbort { abort_lsn: None, abort_time: None, ..with_info };
    let abort = |d: Decoder, b: &[u8]| {
        let mut d = d;
        d.decode(b).map(|m| match m {
            Message::StreamAbort(a) => a,
            other => panic!("{other:?}"),
        })
    };

    // Protocol 4: detected by length, or as declared.
    assert_eq!(abort(Decoder::new(4), &short), Ok(without));
    assert_eq!(abort(Decoder::new(4), &long), Ok(with_info));
    let parallel = Decoder::new(4).with_parallel_streaming(true);
    let on = Decoder::new(4).with_parallel_streaming(false);
    assert_eq!(abort(parallel.clone(), &long), Ok(with_info));
    assert_eq!(abort(on.clone(), &short), Ok(without));
    let err = abort(parallel, &short).unwrap_err();
    assert_eq!((err.offset, err.kind), (9, DecodeErrorKind::Truncated { field: "abort LSN", needed: 8 }));
    let err = abort(on, &long).unwrap_err();
    assert_eq!((err.offset, err.kind), (9, DecodeErrorKind::TrailingBytes(16)));
    // Anything but 0 or 16 bytes of abort info is malformed.
    let odd = Bytes::tag(b'A').u32(XID).u32(2).lsn(0x10).build();
    let err = abort(Decoder::new(4), &odd).unwrap_err();
    assert_eq!(err.offset, 17);
    assert!(matches!(err.kind, DecodeErrorKind::Truncated { field: "abort time", needed: 8 }));

    // Protocols 2 and 3 never send it, whatever the option says.
    for version in [2, 3] {
        assert_eq!(abort(Decoder::new(version), &short), Ok(without));
        let d = Decoder::new(version).with_parallel_streaming(true);
        assert_eq!(abort(d, &short), Ok(without));
        let err = abort(Decoder::new(version), &long).unwrap_err();
        assert_eq!((err.offset, err.kind), (9, DecodeErrorKind::TrailingBytes(16)));
    }
}

#[test]
fn begin_prepare_has_no_flags_byte() {
    // b: Int64 prepare LSN right after the tag (Prepare has an Int8 flags first).
    let b = Bytes::tag(b'b').lsn(1).lsn(2).i64(3).u32(4).cstr("g").build();
    let Ok(Message::BeginPrepare(p)) = decode_message(&b, 3, false) else { panic!() };
    assert_eq!((p.flags, p.prepare_lsn, p.end_lsn, p.prepare_time, p.xid), (0, Lsn(1), Lsn(2), 3, 4));
    assert_eq!(p.gid, "g");
}

#[test]
fn tuple_values_borrow_from_the_input() {
    let buf = Bytes::tag(b'I').u32(1).u8(b'N').tuple(&[Col::Text(b"abc"), Col::Binary(b"de")]).build();
    let Ok(Message::Insert(i)) = decode_message(&buf, 1, false) else { panic!() };
    let range = buf.as_ptr_range();
    for c in &i.new.columns {
        let (ColumnData::Text(v) | ColumnData::Binary(v)) = c else { panic!() };
        assert!(range.contains(&v.as_ptr()));
    }
    assert_eq!(i.new.columns[0], ColumnData::Text(b"abc"));
    assert_eq!(i.new.columns[1], ColumnData::Binary(b"de"));
}

#[test]
fn unknown_flag_bits_are_ignored() {
    // Relation column flags, Truncate options and Message flags define only low bits.
    let rel = Bytes::tag(b'R')
        .u32(1)
        .cstr("s")
        .cstr("t")
        .u8(b'd')
        .i16(2)
        .u8(0xfe)
        .cstr("a")
        .u32(23)
        .i32(-1)
        .u8(0xff)
        .cstr("b")
        .u32(23)
        .i32(-1)
        .build();
    let Ok(Message::Relation(r)) = decode_message(&rel, 1, false) else { panic!() };
    assert_eq!(r.columns.iter().map(|c| c.is_key).collect::<Vec<_>>(), [false, true]);
    let t = Bytes::tag(b'T').i32(0).u8(0xfc).build();
    let Ok(Message::Truncate(t)) = decode_message(&t, 1, false) else { panic!() };
    assert!(!t.cascade && !t.restart_identity);
    let m = Bytes::tag(b'M').u8(0xfe).lsn(1).cstr("p").i32(0).build();
    let Ok(Message::Message(m)) = decode_message(&m, 1, false) else { panic!() };
    assert!(!m.transactional);
    assert_eq!(m.content, b"");
}

#[test]
fn builder_writes_big_endian() {
    let b = Bytes::tag(b'X').u8(1).i16(-2).i32(0x0102_0304).lsn(0x0102_0304_0506_0708).cstr("ab").build();
    assert_eq!(b, [b'X', 1, 0xff, 0xfe, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, b'a', b'b', 0]);
    let t = Bytes::default().tuple(&[Col::Null, Col::Text(b"x")]).build();
    assert_eq!(t, [0, 2, b'n', b't', 0, 0, 0, 1, b'x']);
}

#[test]
fn every_tag_has_a_case() {
    assert_eq!(TAGS.len(), 19);
    let all = all_cases();
    for &tag in TAGS {
        assert!(all.iter().any(|c| c.bytes[0] == tag), "no case for {:?}", tag as char);
    }
}
