//! The message that carries a matched event from a request's context to its
//! worker's root context, through the worker's shared queue.

/// One webhook an event is to be delivered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedTarget {
    /// Index of the webhook in the configuration.
    pub webhook: u32,
    /// The definition's fingerprint, so that a delivery queued under an older
    /// configuration is never sent with a newer definition.
    pub fingerprint: u64,
}

/// An event and the webhooks it matched, handed to the root context through
/// the worker's shared queue: one message (one copy of the body) per event,
/// however many webhooks it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub targets: Vec<QueuedTarget>,
    /// The event's `request_id`, for `webhook-id` and logs.
    pub request_id: Option<String>,
    /// Headers of the platform's request to copy into the calls
    /// (`delivery.propagate_headers`): (lower-case name, value).
    pub headers: Vec<(String, String)>,
    /// Set for an event an operator handed in (`POST .../deliver`): the
    /// `webhook-id` its deliveries carry (a redriven dead letter keeps its
    /// own). `None` for a matched event (computed when needed).
    pub message_id: Option<String>,
    pub body: Vec<u8>,
}

/// Bytes of propagated header values carried per request, at most: a value
/// that would go past it is left out (W3C trace context is well under 1 KiB).
pub const MAX_PROPAGATED_BYTES: usize = 8 * 1024;

/// Bytes of one target in a queue message.
const TARGET_BYTES: usize = 12;

impl QueuedEvent {
    /// `target count (u32 LE) | (webhook u32 LE, fingerprint u64 LE)* |
    /// request_id length (u16 LE, 0xFFFF for none) | request_id |
    /// header count (u8) | (name length u16 LE, name, value length u16 LE, value)* |
    /// message_id length (u16 LE, 0xFFFF for none) | message_id | body`.
    /// A request_id of 64 KiB or more is left out (it only labels logs), and
    /// so are headers past 255 or longer than 64 KiB (the configuration and
    /// the capture bound both far lower).
    pub fn encode(&self) -> Vec<u8> {
        let request_id = self.request_id.as_deref().and_then(|id| {
            u16::try_from(id.len())
                .ok()
                .filter(|len| *len < u16::MAX)
                .map(|len| (id, len))
        });
        let count = u32::try_from(self.targets.len()).unwrap_or(u32::MAX);
        let mut bytes = Vec::with_capacity(
            6 + TARGET_BYTES * self.targets.len()
                + request_id.map_or(0, |(id, _)| id.len())
                + self.body.len(),
        );
        bytes.extend_from_slice(&count.to_le_bytes());
        // `count` saturates only past 4 billion targets, far beyond the per-request bound.
        for target in self
            .targets
            .iter()
            .take(usize::try_from(count).unwrap_or(usize::MAX))
        {
            bytes.extend_from_slice(&target.webhook.to_le_bytes());
            bytes.extend_from_slice(&target.fingerprint.to_le_bytes());
        }
        match request_id {
            Some((id, len)) => {
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(id.as_bytes());
            }
            None => bytes.extend_from_slice(&u16::MAX.to_le_bytes()),
        }
        let headers: Vec<(&[u8], u16, &[u8], u16)> = self
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let name_len = u16::try_from(name.len()).ok()?;
                let value_len = u16::try_from(value.len()).ok()?;
                Some((name.as_bytes(), name_len, value.as_bytes(), value_len))
            })
            .take(usize::from(u8::MAX))
            .collect();
        // At most 255, by the `take` above.
        bytes.push(u8::try_from(headers.len()).unwrap_or(u8::MAX));
        for (name, name_len, value, value_len) in headers {
            bytes.extend_from_slice(&name_len.to_le_bytes());
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(value);
        }
        // Message ids are ours (`msg_` and 32 hex digits) or a dead-letter
        // record's, checked by the admin API to be short.
        match self
            .message_id
            .as_deref()
            .and_then(|id| Some((id, u16::try_from(id.len()).ok().filter(|l| *l < u16::MAX)?)))
        {
            Some((id, len)) => {
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(id.as_bytes());
            }
            None => bytes.extend_from_slice(&u16::MAX.to_le_bytes()),
        }
        bytes.extend_from_slice(&self.body);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<QueuedEvent> {
        let count = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let count = usize::try_from(count).ok()?;
        let targets_end = TARGET_BYTES.checked_mul(count)?.checked_add(4)?;
        let targets = bytes
            .get(4..targets_end)?
            .chunks_exact(TARGET_BYTES)
            .map(|chunk| {
                let (webhook, fingerprint) = chunk.split_at(4);
                Some(QueuedTarget {
                    webhook: u32::from_le_bytes(webhook.try_into().ok()?),
                    fingerprint: u64::from_le_bytes(fingerprint.try_into().ok()?),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let id_start = targets_end.checked_add(2)?;
        let id_len = u16::from_le_bytes(bytes.get(targets_end..id_start)?.try_into().ok()?);
        let (request_id, body_start) = if id_len == u16::MAX {
            (None, id_start)
        } else {
            let end = id_start.checked_add(usize::from(id_len))?;
            let id = std::str::from_utf8(bytes.get(id_start..end)?).ok()?;
            (Some(id.to_string()), end)
        };
        let count = *bytes.get(body_start)?;
        let mut at = body_start.checked_add(1)?;
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let name = length_prefixed(bytes, &mut at)?;
            let value = length_prefixed(bytes, &mut at)?;
            headers.push((name, value));
        }
        let message_id = if bytes.get(at..at.checked_add(2)?)? == u16::MAX.to_le_bytes() {
            at = at.checked_add(2)?;
            None
        } else {
            Some(length_prefixed(bytes, &mut at)?)
        };
        Some(QueuedEvent {
            targets,
            request_id,
            headers,
            message_id,
            body: bytes.get(at..)?.to_vec(),
        })
    }
}

/// A `u16 LE` length and that many bytes of UTF-8 at `*at`, which moves past them.
fn length_prefixed(bytes: &[u8], at: &mut usize) -> Option<String> {
    let start = at.checked_add(2)?;
    let len = u16::from_le_bytes(bytes.get(*at..start)?.try_into().ok()?);
    let end = start.checked_add(usize::from(len))?;
    let text = std::str::from_utf8(bytes.get(start..end)?).ok()?;
    *at = end;
    Some(text.to_string())
}
