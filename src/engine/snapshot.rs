//! What the engine remembers of a run between phases: each step's recorded outcome and what is suspended.
//!
//! A resume (and, later, recovery after a crash) re-walks the workflow graph with the snapshot in hand: steps that
//! already succeeded are not run again, their recorded outputs are reused, and no events are emitted for them; the
//! resumed step runs with its resume data; everything after it runs normally.

use std::{borrow::Borrow, collections::BTreeMap, ops::Index, time::SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use super::{
    event::{ErrorInfo, StepStatus, Usage},
    schema::Schema,
};

/// The engine's memory of a run. Owned by the registry, handed to each phase and returned by it.
///
/// Serializable, so that it can be kept as JSON: the run store keeps it as is, and an agent network keeps the
/// snapshot of a delegated workflow that suspended in its own step's saved state, to resume that workflow later.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSnapshot {
    /// Recorded outcome of each step, keyed by dotted path. A step inside a loop keeps its latest iteration.
    pub steps: PathMap<StepRecord>,
    /// The steps suspended now, keyed by dotted path. Empty unless the run is suspended.
    pub suspended: PathMap<SuspendedStep>,
    /// Executor bookkeeping for control flow that must survive a suspension (loop iteration counts, finished
    /// foreach items...). Written by the executor; read elsewhere only through the foreach codec below (resolving a
    /// resume must know which iterations wait). JSON so that it can be stored as is.
    pub control: BTreeMap<String, Value>,
    /// Token usage accumulated over all phases.
    pub usage: Usage,
}

/// The recorded outcome of one step (Mastra's StepResult).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// How the step ended (or that it is suspended).
    pub status: StepStatus,
    /// The step's input.
    pub input: Value,
    /// Its output (success) or bail value (bailed).
    pub output: Option<Value>,
    /// Why it failed (failed).
    pub error: Option<ErrorInfo>,
    /// What it handed to suspend, when it suspended.
    pub suspend_payload: Option<Value>,
    /// The data it was resumed with, when it was.
    pub resume_data: Option<Value>,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// When the first attempt started.
    pub started_at: SystemTime,
    /// When the step ended; `None` while it is suspended.
    pub ended_at: Option<SystemTime>,
    /// When it suspended.
    pub suspended_at: Option<SystemTime>,
    /// When it was resumed.
    pub resumed_at: Option<SystemTime>,
}

/// A step waiting to be resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuspendedStep {
    /// Path segments, e.g. `["child", "approve"]`.
    pub path: Vec<String>,
    /// What the step handed to suspend.
    pub suspend_payload: Value,
    /// JSON Schema the resume data must satisfy, if any: the one the suspension named
    /// ([`StepOutcome::with_resume_schema`](super::StepOutcome::with_resume_schema)), else the step definition's own.
    /// Shared, not copied.
    pub resume_schema: Option<Schema>,
    /// The resume label the step registered, if any.
    pub resume_label: Option<String>,
    /// The suspended iteration, when the step runs inside a foreach.
    pub for_each_index: Option<u32>,
}

/// What a caller asked to resume (ResumeStreamRequest, before it is checked).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeRequest {
    /// Path segments of the step; each segment may itself be dotted. Empty: the only suspended step.
    pub step: Vec<String>,
    /// A resume label instead of `step`.
    pub label: Option<String>,
    /// The foreach iteration to resume, when the step runs inside a foreach.
    pub for_each_index: Option<u32>,
    /// The data to resume with (checked against the step's resume schema).
    pub resume_data: Value,
}

/// A checked resume request: exactly which suspended step to run again, with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeTarget {
    /// Dotted path of the suspended step.
    pub step_id: String,
    /// The foreach iteration to resume, when the step runs inside a foreach.
    pub for_each_index: Option<u32>,
    /// The data to resume with (already checked).
    pub resume_data: Value,
}

/// A map keyed by dotted step path, kept as a vector sorted by path: the same lookups and iteration order as a
/// `BTreeMap`, in a fraction of the memory for the handful of entries a run has (a B-tree leaf holds room for 11
/// entries however few are used: ~3.9 KB for `StepRecord`s; every run keeps its snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct PathMap<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for PathMap<T> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<T> PathMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        String: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value at `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&T>
    where
        String: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the replaced value.
    pub fn insert(&mut self, key: String, value: T) -> Option<T> {
        match self.find(key.as_str()) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes and returns the value at `key`.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<T>
    where
        String: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry (and frees the memory).
    pub fn clear(&mut self) {
        self.entries = Vec::new();
    }

    /// Gives back unused capacity: a snapshot is kept as long as its run.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Entries in path order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&String, &T)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// Paths in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Values in path order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }
}

/// A JSON object keyed by path.
impl<T: Serialize> Serialize for PathMap<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for PathMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Collected through `insert`, which keeps the entries sorted whatever order the keys come in.
        Ok(BTreeMap::<String, T>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl<T, Q: Ord + ?Sized> Index<&Q> for PathMap<T>
where
    String: Borrow<Q>,
{
    type Output = T;

    /// # Panics
    /// If there is no entry for `key`, as `BTreeMap` does.
    fn index(&self, key: &Q) -> &T {
        self.get(key).expect("no entry found for key")
    }
}

impl<'a, T> IntoIterator for &'a PathMap<T> {
    type Item = (&'a String, &'a T);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, T)>, fn(&'a (String, T)) -> (&'a String, &'a T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

impl<T> FromIterator<(String, T)> for PathMap<T> {
    fn from_iter<I: IntoIterator<Item = (String, T)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

/// Per-item state of a foreach that suspended, kept in `snapshot.control` so that a resume re-runs only what is
/// needed (finished items keep their outputs). The codec lives here, beside the snapshot, rather than in the
/// executor, so that `Workflow::resolve_resume` can read it without depending on the executor.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum ItemState {
    Pending,
    Done(Value),
    Suspended { payload: Value, label: Option<String> },
}

pub(super) struct ForeachState {
    pub(super) items: Vec<ItemState>,
}

impl ForeachState {
    pub(super) fn to_control(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|s| match s {
                ItemState::Pending => json!({ "status": "pending" }),
                ItemState::Done(v) => json!({ "status": "success", "output": v }),
                ItemState::Suspended { payload, label } => {
                    json!({ "status": "suspended", "payload": payload, "label": label })
                }
            })
            .collect();
        json!({ "kind": "foreach", "items": items })
    }

    pub(super) fn from_control(control: &Value) -> Option<Self> {
        if control.get("kind")?.as_str()? != "foreach" {
            return None;
        }
        let items = control
            .get("items")?
            .as_array()?
            .iter()
            .map(|item| match item.get("status").and_then(Value::as_str) {
                Some("success") => ItemState::Done(item.get("output").cloned().unwrap_or(Value::Null)),
                Some("suspended") => ItemState::Suspended {
                    payload: item.get("payload").cloned().unwrap_or(Value::Null),
                    label: item.get("label").and_then(Value::as_str).map(str::to_owned),
                },
                _ => ItemState::Pending,
            })
            .collect();
        Some(Self { items })
    }

    /// `(index, payload, label)` of each suspended item, in index order.
    pub(super) fn suspended(&self) -> impl Iterator<Item = (u32, Value, Option<String>)> + '_ {
        self.items.iter().enumerate().filter_map(|(i, s)| match s {
            ItemState::Suspended { payload, label } => Some((i as u32, payload.clone(), label.clone())),
            _ => None,
        })
    }
}

/// The suspended iterations of foreach step `path`, or `None` when `path` is not a suspended foreach.
pub(super) fn foreach_suspended_indices(snapshot: &RunSnapshot, path: &str) -> Option<Vec<u32>> {
    if !snapshot.suspended.contains_key(path) {
        return None;
    }
    let items = ForeachState::from_control(snapshot.control.get(path)?)?;
    Some(items.suspended().map(|(i, _, _)| i).collect())
}

/// The suspended iteration of foreach step `path` that registered `label`.
pub(super) fn foreach_label(snapshot: &RunSnapshot, path: &str, label: &str) -> Option<u32> {
    let items = ForeachState::from_control(snapshot.control.get(path)?)?;
    items.suspended().find(|(_, _, l)| l.as_deref() == Some(label)).map(|(i, _, _)| i)
}

/// Resume labels registered by the suspended iterations of foreach step `path`.
pub(super) fn foreach_labels(snapshot: &RunSnapshot, path: &str) -> Vec<String> {
    match snapshot.control.get(path).and_then(ForeachState::from_control) {
        Some(items) => items.suspended().filter_map(|(_, _, l)| l).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_map_behaves_like_a_btree_map() {
        let mut map = PathMap::new();
        let mut reference = BTreeMap::new();
        for (i, key) in ["b", "a.x", "c", "a", "b.y", "a"].into_iter().enumerate() {
            assert_eq!(map.insert(key.to_owned(), i), reference.insert(key.to_owned(), i));
        }
        assert_eq!(map.iter().collect::<Vec<_>>(), reference.iter().collect::<Vec<_>>());
        assert_eq!((&map).into_iter().count(), reference.len());
        assert_eq!(map.get("a"), Some(&5));
        assert_eq!(map["b.y"], 4);
        assert!(map.contains_key(&"c".to_owned()) && !map.contains_key("d"));
        assert_eq!(map.remove("b"), reference.remove("b"));
        assert_eq!(map.remove("b"), None);
        assert_eq!(map.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
        assert_eq!(map.values().copied().collect::<Vec<_>>(), reference.values().copied().collect::<Vec<_>>());
        assert_eq!(map.len(), 4);
        map.clear();
        assert!(map.is_empty());
    }

    /// A snapshot as builds before issue 10 stored it (usage in snake_case) loads with its usage.
    #[test]
    fn a_snapshot_stored_with_snake_case_usage_keeps_its_usage() {
        let stored = serde_json::json!({
            "steps": {},
            "suspended": {},
            "control": {},
            "usage": { "input_tokens": 12, "output_tokens": 30, "total_tokens": 42, "reasoning_tokens": 5,
                       "cached_input_tokens": 2, "cache_creation_input_tokens": 1 }
        });
        let snapshot: RunSnapshot = serde_json::from_value(stored).unwrap();
        let expected = Usage {
            input_tokens: 12,
            output_tokens: 30,
            total_tokens: 42,
            reasoning_tokens: 5,
            cached_input_tokens: 2,
            cache_creation_input_tokens: 1,
        };
        assert_eq!(snapshot.usage, expected);
        // Written again, it is camelCase, and reads back the same.
        let written = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(written["usage"]["totalTokens"], 42);
        assert_eq!(serde_json::from_value::<RunSnapshot>(written).unwrap(), snapshot);
    }
}
