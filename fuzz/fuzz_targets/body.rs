//! Any bytes as a request body, in any chunking, as JSON or NDJSON: the
//! collector never panics, gives the same events whatever the chunking, and
//! honours the event limit.
#![no_main]

use envoy_webhooks::event::{BodyCollector, BodyFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let format = if control & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::Ndjson
    };
    let chunk = usize::from(control >> 1).max(1);
    let max_events = usize::from(control % 7) + 1;
    let limit = 4096;
    let run = |chunk: usize| {
        let mut collector = BodyCollector::new(format, limit).with_max_events(max_events);
        let mut events = Vec::new();
        let mut chunks = body.chunks(chunk).peekable();
        while let Some(piece) = chunks.next() {
            if chunks.peek().is_some() {
                collector.push(piece, &mut events);
            } else {
                collector.finish_with(piece, &mut events);
            }
        }
        if body.is_empty() {
            collector.finish(&mut events);
        }
        (events, collector.events_over_limit())
    };
    let (chunked, skipped) = run(chunk);
    let (whole, skipped_whole) = run(body.len().max(1));
    assert!(chunked.len() <= max_events);
    assert_eq!(chunked, whole);
    assert_eq!(skipped, skipped_whole);
});
