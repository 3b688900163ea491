//! Reading an event in one pass over its text, without building its value.
//!
//! The loaded definitions read a known set of paths (the routing fields and
//! every query's paths), compiled once into a [`PathSet`]. [`scan`] checks
//! the whole text as serde_json would (so an event is accepted or refused
//! exactly as by a full parse) and, on the way, notes where each path's
//! candidate values lie in the text: no value tree, no allocation once the
//! [`View`]'s buffers have grown. Values are compared where they lie; a
//! string with escapes that a path reaches is unescaped once, into the view,
//! and a number a path reaches is converted once: however many comparisons
//! read a candidate, it costs what a parse would have.
//!
//! What the view cannot tell exactly, it does not guess: a key that a path
//! follows given twice in one object (the last one counts), an escaped key
//! in an object a path enters, an escaped routing field, or a body that is
//! not an object make [`scan`] answer [`Scan::Unsure`], and the caller parses
//! the event the old way (a full parse, which is the oracle this module is
//! tested against).
//!
//! Runs of bytes that need no look one by one (a string's plain bytes, a
//! whitespace run) are skipped 16 bytes at a time: in the filter with Wasm
//! SIMD (`simd128`, set in `.cargo/config.toml`; V8 runs it), classified at
//! once as simdjson's first stage does; natively (tests, fuzzing) by a
//! portable version held to the same byte classes.

use std::cell::RefCell;

/// The routing fields' path ids: [`PathSet::new`] adds them first, in this
/// order.
pub const EVENT_TYPE: usize = 0;
pub const REALM: usize = 1;
pub const OPERATION: usize = 2;
pub const OBJECT_ID: usize = 3;
pub const REQUEST_ID: usize = 4;
pub const SYSTEM_DOMAIN_ID: usize = 5;
const TOP_FIELDS: [&str; 6] = [
    "event_type",
    "realm",
    "operation",
    "object_id",
    "request_id",
    "system_domain_id",
];

/// serde_json refuses a value nested this deep (its recursion limit).
const MAX_NESTING: usize = 128;

/// A path's buffer of candidates larger than this is freed before the next
/// event (so what a worker keeps is bounded whatever the events held).
const KEPT_LEAVES: usize = 256;
/// The same for the unescaped strings, in bytes.
const KEPT_UNESCAPED: usize = 16 * 1024;

/// Integers of at most this many digits convert to `f64` exactly, as
/// serde_json converts them (below 2^53).
const EXACT_DIGITS: usize = 15;

/// The paths that matching reads, as a tree of object keys; each path has an
/// id, its slot in a [`View`].
#[derive(Debug, Clone)]
pub struct PathSet {
    /// The root is node 0.
    nodes: Vec<Node>,
    paths: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Sorted by (length, bytes), for binary search with the cheap part first.
    children: Vec<(Box<str>, usize)>,
    /// The path that ends here.
    path: Option<usize>,
}

impl Default for PathSet {
    fn default() -> Self {
        PathSet::new()
    }
}

impl PathSet {
    /// The routing fields only ([`EVENT_TYPE`] to [`SYSTEM_DOMAIN_ID`]).
    pub fn new() -> PathSet {
        let mut set = PathSet {
            nodes: vec![Node::default()],
            paths: 0,
        };
        for field in TOP_FIELDS {
            set.add(&[field]);
        }
        set
    }

    /// The id of `segments` (object keys from the top of the event), added
    /// if new. The empty path is the whole event.
    pub fn add<S: AsRef<str>>(&mut self, segments: &[S]) -> usize {
        let mut node = 0;
        for segment in segments {
            let key = segment.as_ref();
            let Some(children) = self.nodes.get(node).map(|n| &n.children) else {
                break;
            };
            node = match children.binary_search_by(|(k, _)| by_length(k, key)) {
                Ok(found) => children.get(found).map_or(0, |(_, child)| *child),
                Err(at) => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    if let Some(parent) = self.nodes.get_mut(node) {
                        parent.children.insert(at, (key.into(), child));
                    }
                    child
                }
            };
        }
        let next = self.paths;
        match self.nodes.get_mut(node) {
            Some(Node { path: Some(id), .. }) => *id,
            Some(target) => {
                target.path = Some(next);
                self.paths = next.saturating_add(1);
                next
            }
            None => next,
        }
    }

    /// How many paths there are (ids are `0..len`).
    pub fn len(&self) -> usize {
        self.paths
    }

    pub fn is_empty(&self) -> bool {
        self.paths == 0
    }

    /// The child of `node` for `key`, and its index among the children.
    fn child(&self, node: usize, key: &[u8]) -> Option<(usize, usize)> {
        let children = &self.nodes.get(node)?.children;
        let index = children
            .binary_search_by(|(k, _)| k.len().cmp(&key.len()).then_with(|| k.as_bytes().cmp(key)))
            .ok()?;
        children.get(index).map(|(_, child)| (index, *child))
    }

    fn has_children(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|n| !n.children.is_empty())
    }

    fn path_of(&self, node: usize) -> Option<usize> {
        self.nodes.get(node).and_then(|n| n.path)
    }
}

fn by_length(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// What a candidate value is, and where it lies.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Leaf {
    kind: Kind,
    /// Byte range in the text (a string's without its quotes), or in the
    /// view's unescaped strings for `Unescaped`.
    start: usize,
    end: usize,
    /// A `Number`'s value (as serde_json gives it); 0 for the other kinds.
    number: f64,
}

impl Leaf {
    fn new(kind: Kind, start: usize, end: usize) -> Leaf {
        Leaf {
            kind,
            start,
            end,
            number: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    True,
    False,
    Number,
    String,
    /// A string with backslash escapes, as met in the text.
    EscapedString,
    /// An escaped string a path reaches, unescaped into the view.
    Unescaped,
    /// An object, or an empty array.
    Other,
}

/// Where one event's candidate values lie, by path id: buffers reused from
/// event to event.
#[derive(Debug, Default)]
pub struct View {
    leaves: Vec<Vec<Leaf>>,
    /// The routing fields' own values at the top of the event.
    top: [Option<Leaf>; TOP_FIELDS.len()],
    /// The escaped strings that paths reach, unescaped, one after another.
    unescaped: String,
}

impl View {
    /// How many bytes the view's buffers keep between events.
    pub fn room(&self) -> usize {
        let leaves: usize = self.leaves.iter().map(Vec::capacity).sum();
        leaves
            .saturating_mul(std::mem::size_of::<Leaf>())
            .saturating_add(self.unescaped.capacity())
    }
}

/// A candidate value of a path, as [`Viewed::candidates`] hands it out.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate<'t> {
    Null,
    Bool(bool),
    /// A JSON number: its value as serde_json gives it (`Number::as_f64`),
    /// and its text (see [`number_text`]).
    Number {
        value: f64,
        text: &'t str,
    },
    /// A string, unescaped.
    String(&'t str),
    /// An object or an empty array: it exists, and equals no literal.
    Other,
}

/// An event's text with its [`View`]: what matching reads.
#[derive(Debug, Clone, Copy)]
pub struct Viewed<'a> {
    pub text: &'a str,
    pub view: &'a View,
}

impl<'a> Viewed<'a> {
    /// The candidates of path `id`, in the order of the text (which is the
    /// order a full parse's path resolution visits them in).
    pub fn candidates(&self, id: usize) -> impl Iterator<Item = Candidate<'a>> + 'a {
        let (text, unescaped) = (self.text, self.view.unescaped.as_str());
        self.view
            .leaves
            .get(id)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(move |leaf| candidate(text, unescaped, leaf))
    }

    /// A routing field's value when it is a string at the top of the event
    /// ([`EVENT_TYPE`] to [`SYSTEM_DOMAIN_ID`]).
    pub fn top_str(&self, id: usize) -> Option<&'a str> {
        let leaf = self.view.top.get(id).copied().flatten()?;
        // Escaped routing fields made the scan unsure: never here.
        (leaf.kind == Kind::String)
            .then(|| self.text.get(leaf.start..leaf.end))
            .flatten()
    }
}

fn candidate<'t>(text: &'t str, unescaped: &'t str, leaf: &Leaf) -> Candidate<'t> {
    let span = leaf.start..leaf.end;
    match leaf.kind {
        Kind::Null => Candidate::Null,
        Kind::True => Candidate::Bool(true),
        Kind::False => Candidate::Bool(false),
        Kind::Number => Candidate::Number {
            value: leaf.number,
            text: text.get(span).unwrap_or_default(),
        },
        Kind::String => Candidate::String(text.get(span).unwrap_or_default()),
        Kind::Unescaped => Candidate::String(unescaped.get(span).unwrap_or_default()),
        // Recorded unescaped (`Unescaped`): never a candidate as it is.
        Kind::EscapedString | Kind::Other => Candidate::Other,
    }
}

/// A JSON number's value as serde_json gives it (`Number::as_f64`); `None`
/// for what is not a number.
fn number_value(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.len() <= EXACT_DIGITS
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        // Exact: at most 15 digits is below 2^53.
        let magnitude = digits
            .bytes()
            .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
        let magnitude = f64::from(u32::try_from(magnitude >> 32).ok()?) * 4_294_967_296.0
            + f64::from(u32::try_from(magnitude & 0xFFFF_FFFF).ok()?);
        return Some(if digits.len() < text.len() {
            -magnitude
        } else {
            magnitude
        });
    }
    serde_json::from_slice::<f64>(text.as_bytes()).ok()
}

/// A JSON number written as serde_json writes a parsed one (`1.50` is
/// `1.5`): the text a regex is run on.
pub fn number_text(text: &str) -> String {
    serde_json::from_slice::<serde_json::Number>(text.as_bytes())
        .map_or_else(|_| text.to_string(), |n| n.to_string())
}

/// A worker's scanner: its paths and one [`View`] reused by all its requests
/// (the worker's VM runs one callback at a time).
#[derive(Debug, Default)]
pub struct EventScanner {
    paths: PathSet,
    view: RefCell<View>,
}

impl EventScanner {
    pub fn new(paths: PathSet) -> EventScanner {
        EventScanner {
            paths,
            view: RefCell::default(),
        }
    }

    /// Scans `text` (trimmed); an event is handed to `event`. `Unsure` too
    /// when the view is in use (never: callbacks do not nest).
    pub fn scan_with(&self, text: &str, event: impl FnOnce(&Viewed<'_>)) -> Scan {
        let Ok(mut view) = self.view.try_borrow_mut() else {
            return Scan::Unsure;
        };
        let verdict = scan(text, &self.paths, &mut view);
        if verdict == Scan::Event {
            event(&Viewed { text, view: &view });
        }
        verdict
    }
}

/// What [`scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// A valid JSON object; the view holds its candidates.
    Event,
    /// Not valid JSON (as serde_json would refuse it).
    Invalid,
    /// The view cannot say exactly (see the module docs): parse it fully.
    Unsure,
}

/// Scans `text` (already trimmed), filling `view` with the candidates of
/// `paths`.
pub fn scan(text: &str, paths: &PathSet, view: &mut View) -> Scan {
    view.leaves.resize_with(paths.len(), Vec::new);
    for leaves in &mut view.leaves {
        if leaves.capacity() > KEPT_LEAVES {
            // One huge event must not keep its buffers for the worker's life.
            *leaves = Vec::new();
        }
        leaves.clear();
    }
    view.top = [None; TOP_FIELDS.len()];
    if view.unescaped.capacity() > KEPT_UNESCAPED {
        view.unescaped = String::new();
    }
    view.unescaped.clear();
    if !text.starts_with('{') {
        return Scan::Unsure;
    }
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
        depth: 0,
        unsure: false,
        paths,
        view,
    };
    let result = scanner.value(Some(0)).and_then(|_| {
        scanner.whitespace();
        if scanner.at == scanner.bytes.len() {
            Ok(())
        } else {
            Err(Bad)
        }
    });
    match result {
        Err(Bad) => Scan::Invalid,
        Ok(()) if scanner.unsure => Scan::Unsure,
        Ok(()) => Scan::Event,
    }
}

/// The text is not valid JSON.
struct Bad;

/// The scan reads text in blocks of this many bytes (a Wasm `v128`).
const BLOCK: usize = 16;

/// Sixteen bytes of text from `at`; past the text's end, zero bytes (a
/// control character, and not whitespace: a byte that ends every run the
/// scan skips, so a skip never passes the end).
fn block_at(bytes: &[u8], at: usize) -> [u8; BLOCK] {
    let rest = bytes.get(at..).unwrap_or_default();
    if let Some(block) = rest
        .get(..BLOCK)
        .and_then(|b| <[u8; BLOCK]>::try_from(b).ok())
    {
        return block;
    }
    let mut block = [0; BLOCK];
    for (to, from) in block.iter_mut().zip(rest) {
        *to = *from;
    }
    block
}

/// Where the run of bytes from `at` that `first` (a block class) does not
/// flag ends: the first flagged byte, or the text's end (its zero padding
/// is flagged by both classes).
fn run_end(bytes: &[u8], mut at: usize, first: fn(&[u8; BLOCK]) -> usize) -> usize {
    loop {
        let found = first(&block_at(bytes, at));
        at += found;
        if found < BLOCK {
            return at;
        }
    }
}

/// The block classes: each gives the index of a block's first byte of its
/// class, or [`BLOCK`] when none is. With Wasm SIMD, the 16 bytes are
/// classified at once, as simdjson's first stage does (i8x16 compares, a
/// bitmask, its trailing zeros); the safe intrinsics need no unsafe (the
/// `v128` built from the bytes is one `v128.load`).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod classes {
    use super::BLOCK;
    use core::arch::wasm32::{
        u8x16, u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_or,
    };

    fn vector(block: &[u8; BLOCK]) -> v128 {
        let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *block;
        u8x16(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)
    }

    /// The first set bit of a 16-bit mask; 16 when none is.
    fn first(mask: u16) -> usize {
        // At most 16: always fits.
        usize::try_from((u32::from(mask) | 1 << BLOCK).trailing_zeros()).unwrap_or(BLOCK)
    }

    /// `"`, `\\` or a control character.
    pub fn string_special(block: &[u8; BLOCK]) -> usize {
        let v = vector(block);
        let quote = u8x16_eq(v, u8x16_splat(b'"'));
        let backslash = u8x16_eq(v, u8x16_splat(b'\\'));
        let control = u8x16_lt(v, u8x16_splat(0x20));
        first(u8x16_bitmask(v128_or(v128_or(quote, backslash), control)))
    }

    /// Not JSON whitespace.
    pub fn not_whitespace(block: &[u8; BLOCK]) -> usize {
        let v = vector(block);
        let space = v128_or(
            v128_or(
                u8x16_eq(v, u8x16_splat(b' ')),
                u8x16_eq(v, u8x16_splat(b'\n')),
            ),
            v128_or(
                u8x16_eq(v, u8x16_splat(b'\r')),
                u8x16_eq(v, u8x16_splat(b'\t')),
            ),
        );
        first(!u8x16_bitmask(space))
    }
}

/// The same classes without Wasm SIMD (native builds: the tests, fuzzing,
/// the command-line tool): strings eight bytes at a time with SWAR, what
/// the filter did before SIMD. `tests::classes_agree` holds this version to
/// the byte predicates below; the SIMD one is held to the full parse as it
/// ships, in V8, by `tools/wasm-oracle` (the main crate's dev-dependencies do
/// not build for wasm32-wasip1, so its tests do not run there).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod classes {
    use super::BLOCK;

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// The high bit of each byte of `word` (little-endian: the first byte
    /// is the lowest) that is `"`, `\\` or below 0x20, and maybe of bytes
    /// after the first such one, never before it: `x - ONES` borrows only
    /// upward, from a zero byte (the classic "has a zero byte" test, and
    /// "has a byte below n" for n = 0x20, which never flags a byte of 0x80
    /// or more).
    fn special_bytes(word: u64) -> u64 {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let quote = zero(word ^ (ONES * u64::from(b'"')));
        let backslash = zero(word ^ (ONES * u64::from(b'\\')));
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        quote | backslash | control
    }

    pub fn string_special(block: &[u8; BLOCK]) -> usize {
        let (low, high) = block.split_at(BLOCK / 2);
        let word = |half: &[u8]| {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(half);
            special_bytes(u64::from_le_bytes(eight))
        };
        // The lowest flagged byte is the first special one (the flags are
        // exact up to the first); a word's trailing zeros are at most 64.
        let byte = |flags: u64| usize::try_from(flags.trailing_zeros() / 8).unwrap_or(8);
        match word(low) {
            0 => BLOCK / 2 + byte(word(high)),
            flags => byte(flags),
        }
    }

    pub fn not_whitespace(block: &[u8; BLOCK]) -> usize {
        block
            .iter()
            .position(|&b| !super::is_whitespace(b))
            .unwrap_or(BLOCK)
    }
}

/// What ends a string's plain run: `"`, `\\` or a control character.
/// (Only the test reads it: it holds the block classes to it.)
#[cfg_attr(not(test), allow(dead_code))]
fn is_string_special(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\n' | b'\r' | b'\t')
}

struct Scanner<'s> {
    bytes: &'s [u8],
    at: usize,
    /// Containers open around `at`.
    depth: usize,
    unsure: bool,
    paths: &'s PathSet,
    view: &'s mut View,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// Skips whitespace. Most calls meet none, or one space (`": "`): that
    /// look stays inline (the profile: a call per look cost more than SIMD
    /// saved on compact events); a longer run (indentation) goes 16 bytes at
    /// a time.
    #[inline(always)]
    fn whitespace(&mut self) {
        if self.peek().is_some_and(is_whitespace) {
            self.at += 1;
            if self.peek().is_some_and(is_whitespace) {
                self.at = run_end(self.bytes, self.at, classes::not_whitespace);
            }
        }
    }

    fn eat(&mut self, byte: u8) -> Result<(), Bad> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Bad)
        }
    }

    /// Whether a path ends at `node`: its values are candidates.
    fn wanted(&self, node: Option<usize>) -> Option<usize> {
        node.and_then(|n| self.paths.path_of(n))
    }

    /// Notes `leaf` as a candidate of the path that ends at `node`, if any;
    /// an escaped string is unescaped into the view.
    fn record(&mut self, node: Option<usize>, mut leaf: Leaf) {
        let Some(path) = self.wanted(node) else {
            return;
        };
        if leaf.kind == Kind::EscapedString {
            // With its quotes: checked above to be a valid JSON string.
            let quoted = self
                .bytes
                .get(leaf.start.saturating_sub(1)..leaf.end.saturating_add(1))
                .unwrap_or_default();
            match serde_json::from_slice::<String>(quoted) {
                Ok(unescaped) => {
                    let start = self.view.unescaped.len();
                    self.view.unescaped.push_str(&unescaped);
                    leaf = Leaf::new(Kind::Unescaped, start, self.view.unescaped.len());
                }
                // Never: the scan checked it. Were it, the full parse decides.
                Err(_) => self.unsure = true,
            }
        }
        if let Some(leaves) = self.view.leaves.get_mut(path) {
            leaves.push(leaf);
        }
    }

    /// One value; `node`: where the paths stand (`None`: no path goes here).
    /// Returns the value's own leaf (its kind; containers are `Other`).
    fn value(&mut self, node: Option<usize>) -> Result<Leaf, Bad> {
        self.whitespace();
        let start = self.at;
        let kind = match self.peek().ok_or(Bad)? {
            b'{' => return self.container(node, true),
            b'[' => return self.container(node, false),
            b'"' => {
                let (start, end, escaped) = self.string()?;
                let kind = if escaped {
                    Kind::EscapedString
                } else {
                    Kind::String
                };
                let leaf = Leaf::new(kind, start, end);
                self.record(node, leaf);
                return Ok(leaf);
            }
            b't' => self.word(b"true", Kind::True)?,
            b'f' => self.word(b"false", Kind::False)?,
            b'n' => self.word(b"null", Kind::Null)?,
            b'-' | b'0'..=b'9' => {
                let parsed = self.number()?;
                let mut leaf = Leaf::new(Kind::Number, start, self.at);
                if self.wanted(node).is_some() {
                    // Converted once, here, for every comparison that reads it.
                    let text = self.bytes.get(start..self.at).unwrap_or_default();
                    leaf.number = match parsed {
                        Some(value) => value,
                        None => std::str::from_utf8(text)
                            .ok()
                            .and_then(number_value)
                            .ok_or(Bad)?,
                    };
                }
                self.record(node, leaf);
                return Ok(leaf);
            }
            _ => return Err(Bad),
        };
        let leaf = Leaf::new(kind, start, self.at);
        self.record(node, leaf);
        Ok(leaf)
    }

    fn word(&mut self, word: &[u8], kind: Kind) -> Result<Kind, Bad> {
        let end = self.at.saturating_add(word.len());
        if self.bytes.get(self.at..end) == Some(word) {
            self.at = end;
            Ok(kind)
        } else {
            Err(Bad)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// A number, checked as serde_json checks it (its grammar, and its range
    /// for what could overflow); its value when that check had to parse it.
    fn number(&mut self) -> Result<Option<f64>, Bad> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let integer = match self.peek() {
            Some(b'0') => {
                self.at += 1;
                1
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Bad),
        };
        let mut plain = integer <= 18;
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Bad);
            }
            plain = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(Bad);
            }
            plain = false;
        }
        if plain {
            return Ok(None);
        }
        // Out of range (`1e400`) is refused: serde_json's own verdict.
        let text = self.bytes.get(start..self.at).unwrap_or_default();
        serde_json::from_slice::<f64>(text)
            .map(Some)
            .map_err(|_| Bad)
    }

    /// A string at `"`: its content's range, and whether it has escapes.
    /// Checked as serde_json checks a string it decodes: no control
    /// characters, valid escapes, surrogate escapes in pairs.
    fn string(&mut self) -> Result<(usize, usize, bool), Bad> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            self.skip_plain();
            let byte = self.peek().ok_or(Bad)?;
            self.at += 1;
            match byte {
                b'"' => return Ok((start, self.at - 1, escaped)),
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0x00..=0x1F => return Err(Bad),
                _ => {}
            }
        }
    }

    /// Skips string bytes that need no look (not `"`, `\\` or a control
    /// character): most of an event is such text, so it goes 16 bytes at a
    /// time (the profile's hottest loop).
    fn skip_plain(&mut self) {
        self.at = run_end(self.bytes, self.at, classes::string_special);
    }

    /// After a backslash.
    fn escape(&mut self) -> Result<(), Bad> {
        let byte = self.peek().ok_or(Bad)?;
        self.at += 1;
        match byte {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok(()),
            b'u' => {
                let unit = self.hex4()?;
                if (0xDC00..=0xDFFF).contains(&unit) {
                    return Err(Bad);
                }
                if (0xD800..=0xDBFF).contains(&unit) {
                    self.eat(b'\\')?;
                    self.eat(b'u')?;
                    let low = self.hex4()?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return Err(Bad);
                    }
                }
                Ok(())
            }
            _ => Err(Bad),
        }
    }

    fn hex4(&mut self) -> Result<u32, Bad> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = char::from(self.peek().ok_or(Bad)?)
                .to_digit(16)
                .ok_or(Bad)?;
            self.at += 1;
            unit = unit * 16 + digit;
        }
        Ok(unit)
    }

    /// An object or an array at its opening bracket.
    fn container(&mut self, node: Option<usize>, object: bool) -> Result<Leaf, Bad> {
        let start = self.at;
        self.at += 1;
        self.depth += 1;
        if self.depth >= MAX_NESTING {
            return Err(Bad);
        }
        self.whitespace();
        let close = if object { b'}' } else { b']' };
        let empty = self.peek() == Some(close);
        // An object, or an empty array, is a candidate itself; a non-empty
        // array's elements are, in its place (arrays are entered).
        if object || empty {
            self.record(node, Leaf::new(Kind::Other, start, start));
        }
        if empty {
            self.at += 1;
        } else if object {
            self.members(node)?;
        } else {
            loop {
                self.value(node)?;
                self.whitespace();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Bad),
                }
            }
        }
        self.depth -= 1;
        Ok(Leaf::new(Kind::Other, start, self.at))
    }

    /// An object's members, after its `{` (not empty).
    fn members(&mut self, node: Option<usize>) -> Result<(), Bad> {
        let top = self.depth == 1;
        let follows = node.filter(|&n| self.paths.has_children(n));
        // The children met so far (by index), to see a key given twice.
        let mut seen: u64 = 0;
        loop {
            self.whitespace();
            let (start, end, escaped) = self.string()?;
            let mut child = None;
            if let Some(n) = follows {
                if escaped {
                    // Which key it is would need unescaping: rare, parsed fully.
                    self.unsure = true;
                } else if let Some((index, found)) = self
                    .paths
                    .child(n, self.bytes.get(start..end).unwrap_or_default())
                {
                    let bit = u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i));
                    match bit {
                        Some(bit) if seen & bit == 0 => seen |= bit,
                        // Given twice (the last counts), or past 64 children.
                        _ => self.unsure = true,
                    }
                    child = Some(found);
                }
            }
            self.whitespace();
            self.eat(b':')?;
            let leaf = self.value(child)?;
            if top {
                self.note_top(child, leaf);
            }
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Bad),
            }
        }
    }

    /// A member of the top object: a routing field's own value is kept.
    fn note_top(&mut self, child: Option<usize>, leaf: Leaf) {
        let Some(path) = child.and_then(|c| self.paths.path_of(c)) else {
            return;
        };
        if let Some(slot) = self.view.top.get_mut(path) {
            if leaf.kind == Kind::EscapedString {
                // Compared as text by the index: parsed fully instead.
                self.unsure = true;
            }
            *slot = Some(leaf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value in every lane, among neighbours of every class:
    /// the block classes give the first byte the byte predicates flag.
    #[test]
    fn classes_agree() {
        let fillers = [b'a', b' ', b'"', 0x00, 0xC3, 0xFF];
        for filler in fillers {
            for lane in 0..BLOCK {
                for byte in 0..=u8::MAX {
                    let mut block = [filler; BLOCK];
                    if let Some(b) = block.get_mut(lane) {
                        *b = byte;
                    }
                    let expected = |class: fn(u8) -> bool| {
                        block.iter().position(|&b| class(b)).unwrap_or(BLOCK)
                    };
                    assert_eq!(
                        classes::string_special(&block),
                        expected(is_string_special),
                        "{block:?}"
                    );
                    assert_eq!(
                        classes::not_whitespace(&block),
                        expected(|b| !is_whitespace(b)),
                        "{block:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_block_past_the_end_is_zeros() {
        let text = b"0123456789abcdefXYZ";
        assert_eq!(block_at(text, 0), *b"0123456789abcdef");
        assert_eq!(block_at(text, 16), *b"XYZ\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(block_at(text, 19), [0; BLOCK]);
        assert_eq!(block_at(text, 40), [0; BLOCK]);
    }
}
