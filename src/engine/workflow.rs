//! Workflow definitions: a builder that chains steps and control flow into an immutable graph.
//!
//! A workflow is defined in code, once, and shared as `Arc<Workflow>` by every run. Everything that can be checked
//! when it is defined is checked in [`WorkflowBuilder::commit`] (schemas compile, step ids are unique), so that a
//! broken definition fails at start-up rather than in the middle of a run.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::{
    error::{ResumeError, SchemaViolation},
    schema::Schema,
    snapshot::{ResumeRequest, ResumeTarget, RunSnapshot, foreach_label, foreach_labels, foreach_suspended_indices},
    step::{RetrySpec, Step, check_id},
};

pub(crate) type BranchCond = Arc<dyn Fn(&Value) -> bool + Send + Sync + 'static>;
pub(crate) type LoopCond = Arc<dyn Fn(&Value, u32) -> bool + Send + Sync + 'static>;
pub(crate) type MapFn = Arc<dyn Fn(&Value, &Value) -> Value + Send + Sync + 'static>;
pub(crate) type WakeFn = Arc<dyn Fn(&Value) -> SystemTime + Send + Sync + 'static>;
pub(crate) type DurationFn = Arc<dyn Fn(&Value) -> Duration + Send + Sync + 'static>;

/// A branch condition, boxed so that branches with different closures fit in one `Vec`:
/// `.branch(vec![(when(|v| v["n"] == 0), zero), (when(|v| v["n"] != 0), other)])`.
pub type Condition = Box<dyn Fn(&Value) -> bool + Send + Sync + 'static>;

/// Boxes a branch condition (see [`Condition`]); also helps type inference of the closure's argument.
pub fn when(cond: impl Fn(&Value) -> bool + Send + Sync + 'static) -> Condition {
    Box::new(cond)
}

/// How many foreach iterations may run at once.
#[derive(Clone)]
pub enum Concurrency {
    /// At most this many (0 counts as 1).
    Fixed(usize),
    /// Computed from the run input when the foreach starts.
    FromInput(Arc<dyn Fn(&Value) -> usize + Send + Sync + 'static>),
}

impl Concurrency {
    /// The limit for a run with input `run_input` (at least 1).
    pub(crate) fn resolve(&self, run_input: &Value) -> usize {
        match self {
            Self::Fixed(n) => (*n).max(1),
            Self::FromInput(f) => f(run_input).max(1),
        }
    }
}

impl fmt::Debug for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(n) => f.debug_tuple("Fixed").field(n).finish(),
            Self::FromInput(_) => f.write_str("FromInput(..)"),
        }
    }
}

impl From<usize> for Concurrency {
    fn from(n: usize) -> Self {
        Self::Fixed(n)
    }
}

impl<F> From<F> for Concurrency
where
    F: Fn(&Value) -> usize + Send + Sync + 'static,
{
    fn from(f: F) -> Self {
        Self::FromInput(Arc::new(f))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoopKind {
    /// Repeat while the condition holds.
    While,
    /// Repeat until the condition holds.
    Until,
}

#[derive(Clone)]
pub(crate) enum Wait {
    For(Duration),
    ForFn(DurationFn),
    Until(WakeFn),
}

/// One entry of a workflow's graph.
#[derive(Clone)]
pub(crate) enum Node {
    Step(Step),
    Workflow(Arc<Workflow>),
    Parallel(Vec<Step>),
    Branch(Vec<(BranchCond, Step)>),
    Loop { step: Step, cond: LoopCond, kind: LoopKind },
    Foreach { step: Step, concurrency: Concurrency },
    Sleep { id: Arc<str>, wait: Wait },
    Map { id: Arc<str>, f: MapFn },
}

/// What a workflow tells about one of its steps (ListWorkflows / GetWorkflow).
#[derive(Debug, Clone, PartialEq)]
pub struct StepInfo {
    /// Dotted path, e.g. `child.approve` for step `approve` of nested workflow `child`.
    pub id: String,
    /// The step's description.
    pub description: String,
    /// JSON Schema of the data that resumes it, if it declares one.
    pub resume_schema: Option<Value>,
    /// JSON Schema of its suspend payload, if it declares one.
    pub suspend_schema: Option<Value>,
}

/// What the workflow knows about a step path, for resolving resumes.
#[derive(Clone)]
pub(crate) struct IndexEntry {
    pub(crate) resume_schema: Option<Schema>,
}

/// An immutable workflow definition.
pub struct Workflow {
    pub(crate) id: Arc<str>,
    pub(crate) description: String,
    pub(crate) input_schema: Option<Schema>,
    pub(crate) output_schema: Option<Schema>,
    /// Default retry policy of steps that set none.
    pub(crate) retry: RetrySpec,
    pub(crate) nodes: Vec<Node>,
    /// Every step path (nested ones too), in definition order.
    pub(crate) infos: Vec<StepInfo>,
    pub(crate) index: HashMap<String, IndexEntry>,
    pub(crate) kind: RunKind,
    pub(crate) input_check: Option<InputCheck>,
    pub(crate) meta: Option<Arc<RunnableMeta>>,
}

/// What callers are shown of an agent or network run as a workflow (ListWorkflows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnableMeta {
    /// The model (an agent's, a network's routing agent's).
    pub model: String,
    /// The tools the model may call.
    pub tools: Vec<ToolMeta>,
    /// A network's agents and workflows, by id.
    pub members: Vec<String>,
}

/// A tool as callers are shown it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolMeta {
    /// The name the model calls it by.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    /// Whether calls wait for a person's approval.
    pub requires_approval: bool,
    /// Set for a tool that may suspend itself: JSON Schema of the data that resumes it.
    pub resume_schema: Option<Value>,
}

/// What a runnable is, as callers name it: a workflow, or an agent or agent network run as a one-step workflow of
/// the same id (so that every run has the same lifecycle, events envelope and result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RunKind {
    /// A workflow.
    #[default]
    Workflow,
    /// An agent (see [`crate::agent::workflow`]).
    Agent,
    /// An agent network (see [`crate::network::workflow`]).
    Network,
}

impl RunKind {
    /// The word callers use: "workflow", "agent", "network".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Agent => "agent",
            Self::Network => "network",
        }
    }
}

/// A check of the run input beyond its JSON Schema (e.g. that a field holding a schema is itself a valid one).
pub type InputCheck = Arc<dyn Fn(&Value) -> Result<(), SchemaViolation> + Send + Sync>;

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow").field("id", &self.id).field("steps", &self.infos.len()).finish_non_exhaustive()
    }
}

impl Workflow {
    /// Starts defining a workflow.
    pub fn builder(id: impl Into<String>) -> WorkflowBuilder {
        let id: String = id.into();
        check_id(&id);
        WorkflowBuilder {
            id: id.into(),
            description: String::new(),
            input_schema: None,
            output_schema: None,
            retry: RetrySpec::Fixed { attempts: 1, delay: Duration::ZERO },
            nodes: Vec::new(),
            kind: RunKind::Workflow,
            input_check: None,
            meta: None,
        }
    }

    /// The workflow's id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Its description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// JSON Schema of the run input, if it has one.
    pub fn input_schema(&self) -> Option<&Value> {
        self.input_schema.as_ref().map(Schema::raw)
    }

    /// JSON Schema of the result, if it has one.
    pub fn output_schema(&self) -> Option<&Value> {
        self.output_schema.as_ref().map(Schema::raw)
    }

    /// All steps in definition order; steps of nested workflows appear as dotted paths after the nesting step.
    pub fn steps(&self) -> Vec<StepInfo> {
        self.infos.clone()
    }

    /// Checks a run input against the input schema; the violation's path starts with `input`.
    pub fn validate_input(&self, input: &Value) -> Result<(), SchemaViolation> {
        if let Some(schema) = &self.input_schema {
            schema.validate(input, "input")?;
        }
        match &self.input_check {
            Some(check) => check(input),
            None => Ok(()),
        }
    }

    /// Whether callers run this as a workflow, an agent or a network.
    pub fn kind(&self) -> RunKind {
        self.kind
    }

    /// Model and tools of an agent or network.
    pub fn meta(&self) -> Option<&RunnableMeta> {
        self.meta.as_deref()
    }

    /// Works out which suspended step a resume request targets and checks its resume data.
    pub(crate) fn resolve_resume(
        &self,
        snapshot: &RunSnapshot,
        req: ResumeRequest,
    ) -> Result<ResumeTarget, ResumeError> {
        let suspended: Vec<String> = snapshot.suspended.keys().cloned().collect();
        let requested: String =
            req.step.iter().map(String::as_str).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(".");

        let (step_id, label_index) = if let Some(label) = req.label.as_deref().filter(|l| !l.is_empty()) {
            let found = find_label(snapshot, label);
            match found {
                Some((step, index)) => {
                    if !requested.is_empty() && requested != step {
                        return Err(ResumeError::StepNotSuspended { step: requested, suspended });
                    }
                    (step, index)
                }
                None => {
                    return Err(ResumeError::UnknownLabel { label: label.to_owned(), labels: all_labels(snapshot) });
                }
            }
        } else if requested.is_empty() {
            match suspended.as_slice() {
                [only] => (only.clone(), None),
                [] => return Err(ResumeError::StepNotSuspended { step: String::new(), suspended }),
                _ => return Err(ResumeError::AmbiguousStep { suspended }),
            }
        } else if snapshot.suspended.contains_key(&requested) {
            (requested, None)
        } else {
            // A nesting step (a nested workflow) stands for the one suspended step inside it, as in Mastra.
            let prefix = format!("{requested}.");
            let inner: Vec<&String> = suspended.iter().filter(|s| s.starts_with(&prefix)).collect();
            match inner.as_slice() {
                [only] => ((*only).clone(), None),
                [] => return Err(ResumeError::StepNotSuspended { step: requested, suspended }),
                _ => return Err(ResumeError::AmbiguousStep { suspended: inner.into_iter().cloned().collect() }),
            }
        };

        let for_each_index = match foreach_suspended_indices(snapshot, &step_id) {
            None => None,
            Some(indices) => {
                let wanted = req.for_each_index.or(label_index);
                match (wanted, indices.as_slice()) {
                    (Some(i), _) if indices.contains(&i) => Some(i),
                    (Some(i), _) => {
                        return Err(ResumeError::ForEachIndexNotSuspended {
                            step: step_id,
                            index: i,
                            suspended: indices,
                        });
                    }
                    (None, [only]) => Some(*only),
                    // Several iterations wait: list them as `step[i]` so the caller sees what to pick
                    // (`for_each_index`).
                    (None, _) => {
                        let suspended = indices.iter().map(|i| format!("{step_id}[{i}]")).collect();
                        return Err(ResumeError::AmbiguousStep { suspended });
                    }
                }
            }
        };

        // The suspension's own schema, if it named one, else the step's.
        let schema = snapshot.suspended.get(&step_id).and_then(|s| s.resume_schema.as_ref());
        if let Some(schema) = schema.or_else(|| self.index.get(&step_id).and_then(|e| e.resume_schema.as_ref())) {
            schema.validate(&req.resume_data, "resume_data").map_err(ResumeError::InvalidResumeData)?;
        }
        Ok(ResumeTarget { step_id, for_each_index, resume_data: req.resume_data })
    }
}

/// The suspended step (and foreach index) that registered `label`.
fn find_label(snapshot: &RunSnapshot, label: &str) -> Option<(String, Option<u32>)> {
    for (path, s) in &snapshot.suspended {
        if let Some(hit) = foreach_label(snapshot, path, label) {
            return Some((path.clone(), Some(hit)));
        }
        if s.resume_label.as_deref() == Some(label) {
            return Some((path.clone(), s.for_each_index));
        }
    }
    None
}

fn all_labels(snapshot: &RunSnapshot) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for (path, s) in &snapshot.suspended {
        labels.extend(foreach_labels(snapshot, path));
        labels.extend(s.resume_label.clone());
    }
    labels.sort();
    labels.dedup();
    labels
}

/// Defines a workflow step by step; [`WorkflowBuilder::commit`] freezes it.
pub struct WorkflowBuilder {
    id: Arc<str>,
    description: String,
    input_schema: Option<Schema>,
    output_schema: Option<Schema>,
    retry: RetrySpec,
    nodes: Vec<Node>,
    kind: RunKind,
    input_check: Option<InputCheck>,
    meta: Option<Arc<RunnableMeta>>,
}

impl WorkflowBuilder {
    /// Model and tools to show callers (agents and networks).
    pub(crate) fn meta(mut self, meta: RunnableMeta) -> Self {
        self.meta = Some(Arc::new(meta));
        self
    }

    /// Marks the workflow as the runnable form of an agent or network (see [`RunKind`]).
    pub(crate) fn kind(mut self, kind: RunKind) -> Self {
        self.kind = kind;
        self
    }

    /// A check of the run input after its schema; the violation's path should start with `input`.
    pub fn input_check(
        mut self,
        check: impl Fn(&Value) -> Result<(), SchemaViolation> + Send + Sync + 'static,
    ) -> Self {
        self.input_check = Some(Arc::new(check));
        self
    }

    /// Sets the description (shown by ListWorkflows).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Schema of the run input, checked by [`Workflow::validate_input`] (and, for a nested workflow, on entry).
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.input_schema = Some(Schema::compile_or_panic(schema, &format!("workflow '{}' input schema", self.id)));
        self
    }

    /// Schema of the workflow's result; a violation fails the run.
    ///
    /// # Panics
    /// If `schema` is not a valid JSON Schema.
    pub fn output_schema(mut self, schema: Value) -> Self {
        self.output_schema = Some(Schema::compile_or_panic(schema, &format!("workflow '{}' output schema", self.id)));
        self
    }

    /// Default retry policy for steps that set none: `attempts` tries in total, `delay` between them.
    pub fn retries(mut self, attempts: u32, delay: Duration) -> Self {
        self.retry = RetrySpec::Fixed { attempts, delay };
        self
    }

    /// Runs `step` on the previous output.
    pub fn then(mut self, step: Step) -> Self {
        self.nodes.push(Node::Step(step));
        self
    }

    /// Runs a whole workflow as one step (id = the child's id); its steps appear as `<childId>.<stepId>`.
    pub fn then_workflow(mut self, workflow: Arc<Workflow>) -> Self {
        self.nodes.push(Node::Workflow(workflow));
        self
    }

    /// Runs `steps` concurrently on the same input; the output is an object keyed by step id.
    pub fn parallel(mut self, steps: Vec<Step>) -> Self {
        self.nodes.push(Node::Parallel(steps));
        self
    }

    /// Runs every step whose condition holds on the input, concurrently; the output is an object keyed by the ids
    /// of the steps taken. Use [`when`] to box conditions of different closures.
    pub fn branch<C>(mut self, branches: Vec<(C, Step)>) -> Self
    where
        C: Fn(&Value) -> bool + Send + Sync + 'static,
    {
        let branches = branches.into_iter().map(|(c, s)| (Arc::new(c) as BranchCond, s)).collect();
        self.nodes.push(Node::Branch(branches));
        self
    }

    /// Runs `step` repeatedly, each output feeding the next iteration, while `cond(output, iteration)` holds.
    pub fn dowhile(mut self, step: Step, cond: impl Fn(&Value, u32) -> bool + Send + Sync + 'static) -> Self {
        self.nodes.push(Node::Loop { step, cond: Arc::new(cond), kind: LoopKind::While });
        self
    }

    /// Runs `step` repeatedly, each output feeding the next iteration, until `cond(output, iteration)` holds.
    pub fn dountil(mut self, step: Step, cond: impl Fn(&Value, u32) -> bool + Send + Sync + 'static) -> Self {
        self.nodes.push(Node::Loop { step, cond: Arc::new(cond), kind: LoopKind::Until });
        self
    }

    /// Runs `step` on each item of the input array, up to `concurrency` at once (a number, or a closure of the run
    /// input); the output is the array of outputs in input order.
    pub fn foreach(mut self, step: Step, concurrency: impl Into<Concurrency>) -> Self {
        self.nodes.push(Node::Foreach { step, concurrency: concurrency.into() });
        self
    }

    /// Waits `duration`; the output is the input.
    pub fn sleep(mut self, id: impl Into<String>, duration: Duration) -> Self {
        let id: String = id.into();
        check_id(&id);
        self.nodes.push(Node::Sleep { id: id.into(), wait: Wait::For(duration) });
        self
    }

    /// Waits for `duration(input)`, measured on the run's clock; the output is the input. (Mastra's
    /// `.sleep(fn)`: the duration is a parameter of the run.)
    pub fn sleep_with(
        mut self,
        id: impl Into<String>,
        duration: impl Fn(&Value) -> Duration + Send + Sync + 'static,
    ) -> Self {
        let id: String = id.into();
        check_id(&id);
        self.nodes.push(Node::Sleep { id: id.into(), wait: Wait::ForFn(Arc::new(duration)) });
        self
    }

    /// Waits until the time `wake_at(input)`; the output is the input.
    pub fn sleep_until(
        mut self,
        id: impl Into<String>,
        wake_at: impl Fn(&Value) -> SystemTime + Send + Sync + 'static,
    ) -> Self {
        let id: String = id.into();
        check_id(&id);
        self.nodes.push(Node::Sleep { id: id.into(), wait: Wait::Until(Arc::new(wake_at)) });
        self
    }

    /// A step that computes its output from its input and the run input, synchronously.
    pub fn map(mut self, id: impl Into<String>, f: impl Fn(&Value, &Value) -> Value + Send + Sync + 'static) -> Self {
        let id: String = id.into();
        check_id(&id);
        self.nodes.push(Node::Map { id: id.into(), f: Arc::new(f) });
        self
    }

    /// Freezes the definition.
    ///
    /// # Panics
    /// If two steps of this workflow share an id: resume paths and snapshots are keyed by id.
    pub fn commit(self) -> Arc<Workflow> {
        let mut infos = Vec::new();
        let mut index = HashMap::new();
        let mut seen: BTreeMap<Arc<str>, ()> = BTreeMap::new();
        for node in &self.nodes {
            for (id, step) in node_entries(node) {
                assert!(
                    seen.insert(Arc::clone(&id), ()).is_none(),
                    "workflow '{}' has two steps with id '{id}'",
                    self.id
                );
                match step {
                    Entry::Step(step) => {
                        infos.push(StepInfo {
                            id: id.to_string(),
                            description: step.description.clone(),
                            resume_schema: step.resume_schema.as_ref().map(|s| s.raw().clone()),
                            suspend_schema: step.suspend_schema.as_ref().map(|s| s.raw().clone()),
                        });
                        index.insert(id.to_string(), IndexEntry { resume_schema: step.resume_schema.clone() });
                    }
                    Entry::Workflow(child) => {
                        infos.push(StepInfo {
                            id: id.to_string(),
                            description: child.description.clone(),
                            resume_schema: None,
                            suspend_schema: None,
                        });
                        index.insert(id.to_string(), IndexEntry { resume_schema: None });
                        for info in &child.infos {
                            infos.push(StepInfo { id: format!("{id}.{}", info.id), ..info.clone() });
                        }
                        for (path, entry) in &child.index {
                            index.insert(format!("{id}.{path}"), entry.clone());
                        }
                    }
                    Entry::Plain(description) => {
                        infos.push(StepInfo {
                            id: id.to_string(),
                            description: description.to_owned(),
                            resume_schema: None,
                            suspend_schema: None,
                        });
                        index.insert(id.to_string(), IndexEntry { resume_schema: None });
                    }
                }
            }
        }
        Arc::new(Workflow {
            id: self.id,
            description: self.description,
            input_schema: self.input_schema,
            output_schema: self.output_schema,
            retry: self.retry,
            nodes: self.nodes,
            infos,
            index,
            kind: self.kind,
            input_check: self.input_check,
            meta: self.meta,
        })
    }
}

/// What a node contributes to the step list.
enum Entry<'a> {
    Step(&'a Step),
    Workflow(&'a Arc<Workflow>),
    /// Sleep and map entries: no schemas.
    Plain(&'static str),
}

fn node_entries(node: &Node) -> Vec<(Arc<str>, Entry<'_>)> {
    match node {
        Node::Step(s) | Node::Loop { step: s, .. } | Node::Foreach { step: s, .. } => {
            vec![(Arc::clone(&s.id), Entry::Step(s))]
        }
        Node::Workflow(w) => vec![(Arc::clone(&w.id), Entry::Workflow(w))],
        Node::Parallel(steps) => steps.iter().map(|s| (Arc::clone(&s.id), Entry::Step(s))).collect(),
        Node::Branch(branches) => branches.iter().map(|(_, s)| (Arc::clone(&s.id), Entry::Step(s))).collect(),
        Node::Sleep { id, .. } => vec![(Arc::clone(id), Entry::Plain("sleep"))],
        Node::Map { id, .. } => vec![(Arc::clone(id), Entry::Plain("map"))],
    }
}
