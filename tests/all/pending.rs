//! The per-worker retry queue: due order, bounds and eviction of the oldest.

use envoy_webhooks::testing::queue::{Delivery, RetryQueue, Target, WebhookRef};

fn webhook(index: usize) -> WebhookRef {
    WebhookRef {
        id: format!("hook-{index}").into(),
        fingerprint: 1,
    }
}

fn delivery(index: usize, tag: &str, body_len: usize) -> Delivery {
    Delivery {
        journal: None,
        throttled: false,
        target: Target::Webhook(webhook(index)),
        body: vec![b'x'; body_len].into(),
        message_id: format!("msg_{tag}"),
        request_id: Some(tag.to_string()),
        headers: Vec::new().into(),
        attempts: 1,
        dispatch_failures: 0,
        first_attempt_at_ms: 0,
        last_error: Some("HTTP 503".to_string()),
        epoch: 0,
    }
}

fn tag(d: &Delivery) -> &str {
    d.request_id.as_deref().unwrap_or("")
}

#[test]
fn deliveries_come_out_in_due_order_and_only_when_due() {
    let mut queue = RetryQueue::new(100, 1 << 20);
    queue.push(delivery(0, "late", 10), 300);
    queue.push(delivery(0, "early", 10), 100);
    queue.push(delivery(1, "middle", 10), 200);
    assert_eq!(queue.next_due_ms(), Some(100));
    assert!(queue.pop_due(99).is_none());
    assert_eq!(queue.pop_due(250).as_ref().map(tag), Some("early"));
    assert_eq!(queue.pop_due(250).as_ref().map(tag), Some("middle"));
    assert!(queue.pop_due(250).is_none());
    assert_eq!(queue.next_due_ms(), Some(300));
    assert_eq!(queue.pop_due(300).as_ref().map(tag), Some("late"));
    assert!(queue.is_empty());
    assert_eq!(queue.bytes(), 0);
    assert_eq!(queue.next_due_ms(), None);
}

#[test]
fn over_the_count_bound_the_oldest_is_evicted() {
    let mut queue = RetryQueue::new(2, 1 << 20);
    assert!(queue.push(delivery(0, "a", 1), 500).is_empty());
    assert!(queue.push(delivery(0, "b", 1), 100).is_empty());
    let evicted = queue.push(delivery(0, "c", 1), 50);
    // Oldest by arrival, not by due time.
    assert_eq!(evicted.iter().map(tag).collect::<Vec<_>>(), ["a"]);
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.pop_due(1000).as_ref().map(tag), Some("c"));
    assert_eq!(queue.pop_due(1000).as_ref().map(tag), Some("b"));
}

#[test]
fn over_the_byte_bound_as_many_oldest_as_needed_are_evicted() {
    let one = delivery(0, "a", 1000).cost_bytes();
    let mut queue = RetryQueue::new(100, one * 3);
    for t in ["a", "b", "c"] {
        assert!(queue.push(delivery(0, t, 1000), 0).is_empty());
    }
    let evicted = queue.push(delivery(0, "big", 2000), 0);
    assert_eq!(evicted.iter().map(tag).collect::<Vec<_>>(), ["a", "b"]);
    assert!(queue.bytes() <= one * 3);
    // A delivery bigger than the whole bound evicts everything, itself included.
    let evicted = queue.push(delivery(0, "huge", one * 4), 0);
    assert_eq!(
        evicted.iter().map(tag).collect::<Vec<_>>(),
        ["c", "big", "huge"]
    );
    assert!(queue.is_empty());
    assert_eq!(queue.bytes(), 0);
}

#[test]
fn every_pushed_delivery_is_either_queued_or_evicted() {
    let mut queue = RetryQueue::new(7, 1 << 20);
    let mut evicted = 0;
    for i in 0..100 {
        evicted += queue
            .push(delivery(i % 3, &i.to_string(), 10), (i * 37 % 11) as u64)
            .len();
    }
    assert_eq!(evicted + queue.len(), 100);
    let mut popped = 0;
    while queue.pop_due(u64::MAX).is_some() {
        popped += 1;
    }
    assert_eq!(popped, 7);
}

#[test]
fn removing_a_webhooks_deliveries_keeps_the_others_due() {
    let mut queue = RetryQueue::new(100, 1 << 20);
    queue.push(delivery(0, "a0", 1), 10);
    queue.push(delivery(1, "b0", 1), 20);
    queue.push(delivery(0, "a1", 1), 30);
    let removed = queue.remove_where(|d| *d.target.webhook() == webhook(0));
    assert_eq!(removed.iter().map(tag).collect::<Vec<_>>(), ["a0", "a1"]);
    assert_eq!(queue.next_due_ms(), Some(20));
    assert_eq!(queue.pop_due(100).as_ref().map(tag), Some("b0"));
    assert!(queue.pop_due(100).is_none());
}

#[test]
fn summary_counts_per_webhook_with_the_next_due_time() {
    let mut queue = RetryQueue::new(100, 1 << 20);
    queue.push(delivery(0, "a", 1), 50);
    queue.push(delivery(0, "b", 1), 20);
    let mut letter = delivery(0, "c", 1);
    letter.target = Target::DeadLetter(webhook(0));
    queue.push(letter, 90);
    queue.push(delivery(2, "d", 1), 70);
    let summary = queue.summary();
    let of = |index: usize| summary.get(webhook(index).id.as_ref()).copied();
    assert_eq!(of(0).map(|s| s.deliveries), Some(2));
    assert_eq!(of(0).map(|s| s.dead_letters), Some(1));
    assert_eq!(of(0).and_then(|s| s.next_due_ms), Some(20));
    assert_eq!(of(2).map(|s| s.deliveries), Some(1));
    assert!(of(1).is_none());
}

#[test]
fn tightening_the_bounds_evicts_the_oldest() {
    let mut queue = RetryQueue::new(10, 1 << 20);
    for t in ["a", "b", "c", "d"] {
        queue.push(delivery(0, t, 1), 0);
    }
    let evicted = queue.set_bounds(2, 1 << 20);
    assert_eq!(evicted.iter().map(tag).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(queue.len(), 2);
}
