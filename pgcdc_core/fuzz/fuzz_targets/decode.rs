//! Feeds arbitrary bytes to the pgoutput decoder and the walsender framing.
//!
//! Input layout: byte 0 picks the decoder settings, the rest is split into messages, each
//! prefixed by one length byte, and fed to one stateful decoder (so stream blocks are
//! reached); the whole rest is also decoded alone every way. Panics and errors pointing past
//! the input are bugs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcdc_core::pgoutput::{decode_message, frame, DecodeError, Decoder, Message};

fn check(buf: &[u8], result: &Result<Message<'_>, DecodeError>) {
    if let Err(e) = result {
        assert!(e.offset <= buf.len(), "{e:?} for {} bytes", buf.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&settings, rest)) = data.split_first() else {
        return;
    };
    // Versions 0..=5 include two unsupported ones.
    let version = u32::from(settings % 6);
    let in_stream = settings & 0x08 != 0;
    let parallel = match (settings >> 4) % 3 {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };

    check(rest, &decode_message(rest, version, in_stream));
    match frame::decode(rest) {
        Ok(frame::ServerMessage::XLogData(x)) => {
            check(x.data, &decode_message(x.data, version, in_stream));
        }
        Ok(frame::ServerMessage::Keepalive(_)) => {}
        Err(e) => assert!(e.offset <= rest.len()),
    }

    let mut decoder = Decoder::new(version);
    if let Some(p) = parallel {
        decoder = decoder.with_parallel_streaming(p);
    }
    let mut input = rest;
    while let Some((&len, tail)) = input.split_first() {
        let (msg, next) = tail.split_at(usize::from(len).min(tail.len()));
        input = next;
        let before = decoder.in_stream();
        let result = decoder.decode(msg);
        check(msg, &result);
        let expected = match &result {
            Ok(Message::StreamStart(s)) => Some(s.xid),
            Ok(Message::StreamStop) => None,
            _ => before,
        };
        assert_eq!(decoder.in_stream(), expected);
    }
});
