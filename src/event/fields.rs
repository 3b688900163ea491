//! Parsing only the parts of an event that matching can look at.
//!
//! The loaded definitions reference a known set of paths (the routing fields
//! and every query's paths). Parsing builds values for those paths only and
//! skips everything else without allocating, while still checking that the
//! whole text is valid JSON, so an event is accepted or rejected exactly as a
//! full parse would.
//!
//! With a [`Router`], the paths narrow further as the event is read: once its
//! routing fields (`event_type`, `realm`, `operation`, at the top of iconik's
//! events) are known, only the paths of the definitions that route reaches
//! are kept; none at all when it reaches none. Routing fields that come late
//! just keep the wider set, and a routing field given twice (the last one
//! counts) makes the event parse again without narrowing: the result is the
//! same either way.

use std::borrow::Cow;
use std::fmt;

use hashbrown::HashMap;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The paths that matching reads, as a tree of object keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    children: HashMap<String, FieldTree>,
    /// A path ends here: keep the whole value.
    whole: bool,
}

impl FieldTree {
    /// Adds a path (object keys from the top of the event).
    pub fn add<S: AsRef<str>>(&mut self, segments: &[S]) {
        let mut node = self;
        for segment in segments {
            if node.whole {
                return;
            }
            node = node
                .children
                .entry(segment.as_ref().to_string())
                .or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    /// Parses `text` keeping only this tree's paths; the top level must be an object.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        // Skipped values go through `deserialize_any` too (`Checked`), so
        // serde_json's depth limit applies to them as to a full parse.
        Pruned(self)
            .deserialize(&mut deserializer)
            .and_then(|value| deserializer.end().map(|()| value))
            .map_err(|e| e.to_string())
    }

    /// Like [`FieldTree::parse`], narrowing to what `router` picks once the
    /// event's routing fields are read.
    pub fn parse_routed(&self, text: &str, router: &dyn Router) -> Result<Value, String> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let top = Top {
            tree: self,
            router,
            twice: false,
        };
        let (value, twice) = top
            .deserialize(&mut deserializer)
            .and_then(|parsed| deserializer.end().map(|()| parsed))
            .map_err(|e| e.to_string())?;
        if twice {
            // A routing field given twice: the narrowing may have followed the
            // first, while the last one counts.
            return self.parse(text);
        }
        Ok(value)
    }
}

/// The routing fields read so far at the top of an event: `None` while not
/// met; `Some(None)` for one that is not a string (it routes nowhere).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteSoFar<'a> {
    pub event_type: Option<Option<&'a str>>,
    pub realm: Option<Option<&'a str>>,
    pub operation: Option<Option<&'a str>>,
}

/// Picks the paths an event's definitions read, from its routing fields.
pub trait Router: fmt::Debug {
    /// The paths to keep for the rest of the event, once `route` decides
    /// them; `None` while it does not (the wider tree stays).
    fn narrow(&self, route: &RouteSoFar<'_>) -> Option<&FieldTree>;
}

/// The routing fields, in [`RouteSoFar`]'s order.
const ROUTE_KEYS: [&str; 3] = ["event_type", "realm", "operation"];

/// The top level of an event, parsed with a [`Router`]; also says whether a
/// routing field came twice.
struct Top<'t> {
    tree: &'t FieldTree,
    router: &'t dyn Router,
    twice: bool,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = (Value, bool);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = (Value, bool);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = Map::new();
        // The routing fields met, in `ROUTE_KEYS` order (`Some(None)`: not a string).
        let mut route: [Option<Option<String>>; 3] = [None, None, None];
        let mut tree = self.tree;
        let mut decided = false;
        while let Some(key) = map.next_key_seed(Key)? {
            if let Some(slot) = ROUTE_KEYS.iter().position(|k| *k == key.as_ref()) {
                let value = match tree.children.get(key.as_ref()) {
                    Some(child) => map.next_value_seed(Pruned(child))?,
                    None => {
                        map.next_value_seed(Checked)?;
                        continue;
                    }
                };
                if let Some(seen) = route.get_mut(slot) {
                    self.twice |= seen.is_some();
                    *seen = Some(value.as_str().map(str::to_string));
                }
                kept.insert(key.into_owned(), value);
                continue;
            }
            if !decided && !self.twice {
                let [event_type, realm, operation] = &route;
                let so_far = RouteSoFar {
                    event_type: event_type.as_ref().map(Option::as_deref),
                    realm: realm.as_ref().map(Option::as_deref),
                    operation: operation.as_ref().map(Option::as_deref),
                };
                if let Some(narrowed) = self.router.narrow(&so_far) {
                    tree = narrowed;
                    decided = true;
                }
            }
            match tree.children.get(key.as_ref()) {
                Some(child) => {
                    let value = map.next_value_seed(Pruned(child))?;
                    kept.insert(key.into_owned(), value);
                }
                None => map.next_value_seed(Checked)?,
            }
        }
        Ok((Value::Object(kept), self.twice))
    }

    // Not an object: the caller refuses it; its value is built as a full parse would.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Pruned(self.tree).visit_seq(seq).map(|v| (v, false))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok((Value::Bool(v), false))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok((Value::from(v), false))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok((Value::from(v), false))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        let number = serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
        Ok((number, false))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok((Value::String(v.to_string()), false))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok((Value::Null, false))
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Skips a value the tree does not name, checking it as a full parse would:
/// numbers are parsed (`1e400` is out of range) and strings decoded (a lone
/// surrogate escape is refused). serde's `IgnoredAny` checks neither, which
/// made an event's validity depend on which fields the queries read.
struct Checked;

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(Checked)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Deserializes a value, keeping the subtrees its `FieldTree` names.
struct Pruned<'t>(&'t FieldTree);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            serde::Deserialize::deserialize(deserializer)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self.0.children.get(key.as_ref()) {
                Some(child) => {
                    let value = map.next_value_seed(Pruned(child))?;
                    kept.insert(key.into_owned(), value);
                }
                None => map.next_value_seed(Checked)?,
            }
        }
        Ok(Value::Object(kept))
    }

    /// Arrays are entered element by element, as path resolution does.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Pruned(self.0))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    // Scalars where the tree expects more are kept: they are what the path finds.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}
