//! Which webhooks fire for an event, without looking at definitions that cannot apply.
//!
//! Definitions are indexed by event type, then realm, then operation, so an
//! event only meets the definitions for its own type/realm/operation (and the
//! "any realm"/"any operation" ones). Only those have their `object_id` and
//! query checked. Definitions with the same query (the same structure) share
//! its evaluation: it runs once an event, however many of them have it.
//!
//! The configuration's definitions see every domain's events; a tenant's
//! (made through the API) only its own domain's. Tenants' definitions are
//! indexed by domain first, so an event meets the configuration's
//! candidates and its own domain's, never another domain's: a thousand
//! tenants cost an event what one does.

use std::cell::RefCell;
use std::rc::Rc;

use hashbrown::HashMap;
use serde_json::Value;

use crate::config::{Operation, WebhookDefinition};
use crate::event::fields::{FieldTree, RouteSoFar, Router};
use crate::event::view::{self, PathSet, Viewed};
#[cfg(doc)]
use crate::query::RegexBudget;
use crate::query::{BoundQuery, Evaluation};
use crate::status::Status;

/// Definitions indexed for matching.
#[derive(Debug, Clone)]
pub struct Matcher {
    definitions: Vec<WebhookDefinition>,
    /// The configuration's definitions (`system_domain_id: None`).
    by_event_type: HashMap<String, TypeIndex>,
    /// Tenants' definitions, by their `system_domain_id` (compared exactly).
    by_domain: HashMap<String, HashMap<String, TypeIndex>>,
    /// By definition: the slot of its query in `outcomes` when other
    /// definitions have the same query (it is then evaluated once an event).
    shared_query: Vec<Option<usize>>,
    /// One event's outcomes of the shared queries, reused from event to event.
    outcomes: RefCell<Outcomes>,
    /// Every path matching reads, for [`view::scan`].
    paths: PathSet,
    /// By definition: its query bound to `paths`.
    bound: Vec<BoundQuery>,
}

/// A shared query's outcome for the event being matched (`UNKNOWN`: not
/// evaluated since the slots were made or cleared).
const UNKNOWN: u8 = 0;
const NO_MATCH: u8 = 1;
const MATCH: u8 = 2;
const OVER_BUDGET: u8 = 3;

/// The shared queries' outcomes, each stamped with the event it is of: a new
/// event is a new generation, so nothing is cleared per event (clearing
/// would cost every tenant's shared queries, not just the event's).
#[derive(Debug, Clone)]
struct Outcomes {
    generation: u32,
    /// By slot: the generation its outcome is of, and the outcome.
    slots: Vec<(u32, u8)>,
}

impl Outcomes {
    fn new(slots: usize) -> Outcomes {
        Outcomes {
            generation: 0,
            slots: vec![(0, UNKNOWN); slots],
        }
    }

    /// Forgets the last event's outcomes.
    fn next_event(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stamps that old could pass for new ones.
            self.slots.fill((0, UNKNOWN));
            self.generation = 1;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct TypeIndex {
    by_realm: HashMap<String, OperationIndex>,
    any_realm: OperationIndex,
}

#[derive(Debug, Clone, Default)]
struct OperationIndex {
    by_operation: [Vec<usize>; 6],
    any_operation: Vec<usize>,
}

/// The slot of `by_operation` an operation's definitions are in.
fn slot(operation: Operation) -> usize {
    match operation {
        Operation::Create => 0,
        Operation::Delete => 1,
        Operation::Purge => 2,
        Operation::Restore => 3,
        Operation::Update => 4,
        Operation::Download => 5,
    }
}

/// The operation of each slot of `by_operation`, and `None` (the slot of an
/// event without a known operation) last.
const SLOT_OPERATIONS: [Option<Operation>; 7] = [
    Some(Operation::Create),
    Some(Operation::Delete),
    Some(Operation::Purge),
    Some(Operation::Restore),
    Some(Operation::Update),
    Some(Operation::Download),
    None,
];

/// The slot of [`SLOT_OPERATIONS`] an event's operation is in.
fn route_slot(operation: Option<Operation>) -> usize {
    operation.map_or(6, slot)
}

impl OperationIndex {
    fn push(&mut self, operation: Option<Operation>, index: usize) {
        let list = match operation {
            Some(op) => self.by_operation.get_mut(slot(op)),
            None => Some(&mut self.any_operation),
        };
        if let Some(list) = list {
            list.push(index);
        }
    }

    /// The definitions for `operation` exactly (none for an unknown one).
    fn operation_list(&self, operation: Option<Operation>) -> &[usize] {
        operation
            .and_then(|op| self.by_operation.get(slot(op)))
            .map_or(&[], Vec::as_slice)
    }

    fn candidates<'a>(&'a self, operation: Option<Operation>, out: &mut Vec<&'a [usize]>) {
        if let Some(list) = operation.and_then(|op| self.by_operation.get(slot(op))) {
            out.push(list);
        }
        out.push(&self.any_operation);
    }
}

/// The routing fields at the top of an event.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventKeys<'a> {
    pub event_type: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub object_id: Option<&'a str>,
    /// The tenant the event is of: which tenants' definitions it meets.
    pub system_domain_id: Option<&'a str>,
}

impl<'a> EventKeys<'a> {
    pub fn of(event: &'a Value) -> EventKeys<'a> {
        let field = |name: &str| event.get(name).and_then(Value::as_str);
        EventKeys {
            event_type: field("event_type"),
            realm: field("realm"),
            operation: field("operation"),
            object_id: field("object_id"),
            system_domain_id: field("system_domain_id"),
        }
    }

    /// The same fields, from a scanned event.
    pub fn of_view(event: &Viewed<'a>) -> EventKeys<'a> {
        EventKeys {
            event_type: event.top_str(view::EVENT_TYPE),
            realm: event.top_str(view::REALM),
            operation: event.top_str(view::OPERATION),
            object_id: event.top_str(view::OBJECT_ID),
            system_domain_id: event.top_str(view::SYSTEM_DOMAIN_ID),
        }
    }
}

/// For each route (event type, realm, operation), the paths its candidate
/// definitions read: an event parses to just those once its routing fields
/// are read (see [`Router`]).
#[derive(Debug, Default)]
pub struct RouteFields {
    /// What an event that reaches no definition keeps: the routing fields.
    base: FieldTree,
    by_event_type: HashMap<String, TypeFields>,
}

#[derive(Debug)]
struct TypeFields {
    /// By realm (lower case), by [`route_slot`].
    by_realm: HashMap<String, Vec<Rc<FieldTree>>>,
    /// An event whose realm no definition of the type names.
    any_realm: Vec<Rc<FieldTree>>,
}

impl Router for RouteFields {
    fn narrow(&self, route: &RouteSoFar<'_>) -> Option<&FieldTree> {
        let event_type = route.event_type?;
        let Some(types) = event_type.and_then(|t| lookup(&self.by_event_type, t)) else {
            // No definition for this type (or none can match): keep nothing more.
            return Some(&self.base);
        };
        let (realm, operation) = (route.realm?, route.operation?);
        let trees = realm
            .and_then(|realm| lookup(&types.by_realm, realm))
            .unwrap_or(&types.any_realm);
        let slot = route_slot(operation.and_then(Operation::parse));
        trees.get(slot).map(|tree| &**tree)
    }
}

/// The paths matching reads of every event: the routing fields,
/// `system_domain_id` and `request_id`.
fn base_tree() -> FieldTree {
    let mut tree = FieldTree::default();
    for key in [
        "event_type",
        "realm",
        "operation",
        "object_id",
        "request_id",
        "system_domain_id",
    ] {
        tree.add(&[key]);
    }
    tree
}

fn add_query_paths(tree: &mut FieldTree, definition: &WebhookDefinition) {
    if let Some(expr) = definition.query.expr() {
        expr.for_each_comparison(&mut |comparison| tree.add(&comparison.path.segments));
    }
}

/// Adds definition `index` to `by_event_type` under its type, realm and
/// operation.
fn add_to_index(
    by_event_type: &mut HashMap<String, TypeIndex>,
    index: usize,
    definition: &WebhookDefinition,
) {
    let type_index = by_event_type
        .entry(definition.event_type.clone())
        .or_default();
    let operations = match &definition.realm {
        Some(realm) => type_index.by_realm.entry(realm.clone()).or_default(),
        None => &mut type_index.any_realm,
    };
    operations.push(definition.operation, index);
}

/// The candidate lists of an event's route in one index: at most four
/// (realm's and any realm's, operation's and any operation's).
fn route_lists<'a>(
    type_index: Option<&'a TypeIndex>,
    realm: Option<&str>,
    operation: Option<Operation>,
) -> [&'a [usize]; 4] {
    let none: &[usize] = &[];
    let Some(type_index) = type_index else {
        return [none; 4];
    };
    let realm = realm.and_then(|realm| lookup(&type_index.by_realm, realm));
    [
        realm.map_or(none, |ops| ops.operation_list(operation)),
        realm.map_or(none, |ops| &ops.any_operation),
        type_index.any_realm.operation_list(operation),
        &type_index.any_realm.any_operation,
    ]
}

impl Matcher {
    /// Indexes `definitions`; `DISABLED` ones are left out, as they never fire.
    pub fn new(definitions: Vec<WebhookDefinition>) -> Matcher {
        let mut by_event_type: HashMap<String, TypeIndex> = HashMap::new();
        let mut by_domain: HashMap<String, HashMap<String, TypeIndex>> = HashMap::new();
        for (index, definition) in definitions.iter().enumerate() {
            if definition.status == Status::Disabled {
                continue;
            }
            let types = match &definition.system_domain_id {
                None => &mut by_event_type,
                Some(domain) => by_domain.entry(domain.clone()).or_default(),
            };
            add_to_index(types, index, definition);
        }
        let shared_query = shared_queries(&definitions);
        let slots = shared_query
            .iter()
            .flatten()
            .max()
            .map_or(0, |last| last + 1);
        let mut paths = PathSet::new();
        let bound = definitions
            .iter()
            .map(|definition| definition.query.bind(&mut paths))
            .collect();
        Matcher {
            definitions,
            by_event_type,
            by_domain,
            shared_query,
            outcomes: RefCell::new(Outcomes::new(slots)),
            paths,
            bound,
        }
    }

    /// Every path that matching reads: the routing fields, `request_id`, and
    /// the paths of every query. Events parsed to just these match the same.
    pub fn field_tree(&self) -> FieldTree {
        let mut tree = base_tree();
        for definition in &self.definitions {
            add_query_paths(&mut tree, definition);
        }
        tree
    }

    /// The paths each route's candidates read (what [`Matcher::matching`]
    /// evaluates for an event of that route); routes with the same
    /// candidates share one tree. A route's candidates are taken from every
    /// domain (more paths than one domain's events need, never fewer): the
    /// route is known before the domain is, and one set of trees serves all.
    pub fn route_fields(&self) -> RouteFields {
        let mut all_domains: HashMap<String, TypeIndex> = HashMap::new();
        for (index, definition) in self.definitions.iter().enumerate() {
            if definition.status != Status::Disabled {
                add_to_index(&mut all_domains, index, definition);
            }
        }
        let mut shared: HashMap<Vec<usize>, Rc<FieldTree>> = HashMap::new();
        let mut tree_of = |lists: &[&[usize]]| -> Rc<FieldTree> {
            let mut candidates: Vec<usize> = lists.concat();
            candidates.sort_unstable();
            candidates.dedup();
            shared
                .entry(candidates)
                .or_insert_with_key(|candidates| {
                    let mut tree = base_tree();
                    for definition in candidates.iter().filter_map(|&i| self.definitions.get(i)) {
                        add_query_paths(&mut tree, definition);
                    }
                    Rc::new(tree)
                })
                .clone()
        };
        let mut by_event_type = HashMap::new();
        for (event_type, type_index) in &all_domains {
            let mut trees_for = |realm: Option<&OperationIndex>| -> Vec<Rc<FieldTree>> {
                SLOT_OPERATIONS
                    .iter()
                    .map(|&operation| {
                        let mut lists: Vec<&[usize]> = Vec::with_capacity(4);
                        if let Some(operations) = realm {
                            operations.candidates(operation, &mut lists);
                        }
                        type_index.any_realm.candidates(operation, &mut lists);
                        tree_of(&lists)
                    })
                    .collect()
            };
            let by_realm = type_index
                .by_realm
                .iter()
                .map(|(realm, operations)| (realm.clone(), trees_for(Some(operations))))
                .collect();
            let any_realm = trees_for(None);
            by_event_type.insert(
                event_type.clone(),
                TypeFields {
                    by_realm,
                    any_realm,
                },
            );
        }
        RouteFields {
            base: base_tree(),
            by_event_type,
        }
    }

    /// Whether no event can match (no definitions, or all `DISABLED`),
    /// the configuration's and tenants' alike.
    pub fn matches_nothing(&self) -> bool {
        self.by_event_type.is_empty() && self.by_domain.is_empty()
    }

    pub fn definitions(&self) -> &[WebhookDefinition] {
        &self.definitions
    }

    /// Every path matching reads, with the ids [`Matcher::matching_view`]
    /// looks its candidates up by: scan events with these.
    pub fn paths(&self) -> &PathSet {
        &self.paths
    }

    /// Appends to `out` the index of each definition whose type, realm,
    /// operation, object and query match `event`, in configuration order.
    /// A tenant's definition (`system_domain_id` set) matches only events
    /// whose top-level `system_domain_id` is that string exactly. Statuses
    /// are the caller's business (they change at run time), except that
    /// `DISABLED` definitions never match.
    pub fn matching(&self, event: &Value, out: &mut Vec<usize>) {
        // Vec::new does not allocate; only an over-budget query would push.
        self.matching_with_budget(event, out, &mut Vec::new());
    }

    /// Like [`Matcher::matching`], and appends to `over_budget` the index of
    /// each definition whose query had a regex refused for lack of budget
    /// (each query gets one [`RegexBudget::per_evaluation`]; such a regex
    /// comparison does not match), for counting as `regex_over_budget`.
    pub fn matching_with_budget(
        &self,
        event: &Value,
        out: &mut Vec<usize>,
        over_budget: &mut Vec<usize>,
    ) {
        let keys = EventKeys::of(event);
        self.match_keys(&keys, out, over_budget, &mut |index| {
            self.definitions.get(index).map_or(NO_MATCH, |definition| {
                outcome(definition.query.evaluate(event))
            })
        });
    }

    /// Like [`Matcher::matching_with_budget`], on an event scanned with
    /// [`Matcher::paths`] (no parsed value): the same result.
    pub fn matching_view(
        &self,
        event: &Viewed<'_>,
        out: &mut Vec<usize>,
        over_budget: &mut Vec<usize>,
    ) {
        let keys = EventKeys::of_view(event);
        self.match_keys(&keys, out, over_budget, &mut |index| {
            self.bound
                .get(index)
                .map_or(NO_MATCH, |query| outcome(query.evaluate(event)))
        });
    }

    /// The candidates of `keys`' route, their objects and queries checked
    /// (`evaluate`: a definition's query's outcome).
    fn match_keys(
        &self,
        keys: &EventKeys<'_>,
        out: &mut Vec<usize>,
        over_budget: &mut Vec<usize>,
        evaluate: &mut dyn FnMut(usize) -> u8,
    ) {
        let Some(event_type) = keys.event_type else {
            return;
        };
        let configured = lookup(&self.by_event_type, event_type);
        // Only the event's own domain: one lookup, whatever the tenants.
        let tenant = keys
            .system_domain_id
            .and_then(|domain| self.by_domain.get(domain))
            .and_then(|types| lookup(types, event_type));
        if configured.is_none() && tenant.is_none() {
            return;
        }
        let operation = keys.operation.and_then(Operation::parse);
        // Four lists from each index: no allocation per event.
        let [a, b, c, d] = route_lists(configured, keys.realm, operation);
        let [e, f, g, h] = route_lists(tenant, keys.realm, operation);
        let lists = [a, b, c, d, e, f, g, h];

        let mut outcomes = match self.outcomes.try_borrow_mut() {
            Ok(outcomes) => outcomes,
            // Never re-entered; were it, a buffer of its own.
            Err(_) => {
                let mut fresh = Outcomes::new(self.shared_query.len());
                fresh.next_event();
                return self.match_lists(keys, lists, out, over_budget, &mut fresh, evaluate);
            }
        };
        outcomes.next_event();
        self.match_lists(keys, lists, out, over_budget, &mut outcomes, evaluate);
    }

    fn match_lists(
        &self,
        keys: &EventKeys<'_>,
        lists: [&[usize]; 8],
        out: &mut Vec<usize>,
        over_budget: &mut Vec<usize>,
        outcomes: &mut Outcomes,
        evaluate: &mut dyn FnMut(usize) -> u8,
    ) {
        let generation = outcomes.generation;
        let start = out.len();
        for list in lists {
            for &index in list {
                let Some(definition) = self.definitions.get(index) else {
                    continue;
                };
                let object_matches = definition
                    .object_id
                    .as_deref()
                    .is_none_or(|wanted| keys.object_id == Some(wanted));
                if !object_matches {
                    continue;
                }
                let slot = self
                    .shared_query
                    .get(index)
                    .copied()
                    .flatten()
                    .and_then(|slot| outcomes.slots.get_mut(slot));
                let outcome = match slot {
                    Some((stamp, known)) if *stamp == generation => *known,
                    Some(unknown) => {
                        let outcome = evaluate(index);
                        *unknown = (generation, outcome);
                        outcome
                    }
                    None => evaluate(index),
                };
                if outcome == OVER_BUDGET {
                    over_budget.push(index);
                }
                if outcome == MATCH {
                    out.push(index);
                }
            }
        }
        out[start..].sort_unstable();
    }
}

/// An evaluation's outcome, as kept for shared queries.
fn outcome(evaluation: Evaluation) -> u8 {
    if evaluation.over_budget {
        OVER_BUDGET
    } else if evaluation.matched {
        MATCH
    } else {
        NO_MATCH
    }
}

/// By definition, a slot shared with every other definition that has the
/// same query; `None` for a query no other definition has.
fn shared_queries(definitions: &[WebhookDefinition]) -> Vec<Option<usize>> {
    // By structure hash: the first definition of each distinct query.
    let mut firsts: HashMap<u64, Vec<usize>> = HashMap::new();
    // By definition: the first definition with the same query.
    let mut first_of: Vec<usize> = Vec::with_capacity(definitions.len());
    for (index, definition) in definitions.iter().enumerate() {
        let same_hash = firsts.entry(definition.query.structure_hash()).or_default();
        let same_query = same_hash.iter().copied().find(|&other| {
            definitions
                .get(other)
                .is_some_and(|d| d.query == definition.query)
        });
        match same_query {
            Some(first) => first_of.push(first),
            None => {
                same_hash.push(index);
                first_of.push(index);
            }
        }
    }
    let mut uses = vec![0usize; definitions.len()];
    for &first in &first_of {
        if let Some(count) = uses.get_mut(first) {
            *count += 1;
        }
    }
    let mut slot_of_first: Vec<Option<usize>> = vec![None; definitions.len()];
    let mut slots = 0;
    first_of
        .iter()
        .map(|&first| {
            if uses.get(first).copied().unwrap_or(0) < 2 {
                return None;
            }
            let slot = slot_of_first.get_mut(first)?;
            Some(*slot.get_or_insert_with(|| {
                slots += 1;
                slots - 1
            }))
        })
        .collect()
}

/// Case-insensitive lookup in a map whose keys are lower case; allocates only
/// for keys that hold upper-case letters.
fn lookup<'m, V>(map: &'m HashMap<String, V>, key: &str) -> Option<&'m V> {
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        map.get(key.to_ascii_lowercase().as_str())
    } else {
        map.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_forgotten_from_event_to_event_even_when_the_generation_wraps() {
        let mut outcomes = Outcomes::new(2);
        outcomes.next_event();
        assert_eq!(outcomes.generation, 1);
        // An outcome stamped long ago (generation 1), and one of the last event.
        outcomes.slots = vec![(1, MATCH), (u32::MAX, NO_MATCH)];
        outcomes.generation = u32::MAX;
        outcomes.next_event();
        // Generation 1 again: the old stamp must not pass for this event's.
        assert_eq!(outcomes.generation, 1);
        assert_eq!(outcomes.slots, [(0, UNKNOWN), (0, UNKNOWN)]);
    }
}
