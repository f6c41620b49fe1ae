//! Workflows defined as data (`RunService.RegisterWorkflow`): the definition's types, their validation, and the
//! compiler that turns one into an ordinary engine [`Workflow`](crate::engine::Workflow) whose steps are remote
//! steps ([`WorkerHub::step`](crate::worker::WorkerHub::step)).
//!
//! The types mirror `runstream.v1.WorkflowDefinition` (proto) with serde, camelCase, so the JSON the store keeps is
//! close to the proto JSON form users write (a retry delay is `delayMs` here, a proto `Duration` there). No code of
//! the user's runs on the server: conditions and mappings are paths into the data and comparisons (`data.rs`).
//!
//! - `agent.rs`: agents defined as data (`RunService.RegisterAgent`), whose tools workers run.
//! - `validate.rs`: every check, each error naming the node path (`steps[2].foreach.node.step.task`).
//! - `compile.rs`: definition → engine workflow, and the registry's [`DefinitionCompiler`] for it.
//! - `data.rs`: paths, conditions and mappings.
//!
//! [`DefinitionCompiler`]: crate::registry::DefinitionCompiler

mod agent;
mod compile;
mod data;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(crate) use agent::{AgentDef, ToolDef};
pub(crate) use compile::Compiler;
pub(crate) use validate::validate;

/// A workflow defined as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkflowDef {
    pub(crate) id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) input_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) output_schema: Option<Value>,
    #[serde(default)]
    pub(crate) steps: Vec<Node>,
}

/// One node: `{"step": {...}}`, `{"foreach": {...}}`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Node {
    Step(StepNode),
    Parallel(ParallelNode),
    Branch(BranchNode),
    Dowhile(LoopNode),
    Dountil(LoopNode),
    Foreach(ForeachNode),
    Sleep(SleepNode),
    Map(MapNode),
    Workflow(WorkflowNode),
}

impl Node {
    /// The oneof field's name, for paths and messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Step(_) => "step",
            Self::Parallel(_) => "parallel",
            Self::Branch(_) => "branch",
            Self::Dowhile(_) => "dowhile",
            Self::Dountil(_) => "dountil",
            Self::Foreach(_) => "foreach",
            Self::Sleep(_) => "sleep",
            Self::Map(_) => "map",
            Self::Workflow(_) => "workflow",
        }
    }
}

/// A step a worker serving `task` runs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepNode {
    pub(crate) id: String,
    pub(crate) task: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) retries: Option<Retries>,
    /// Empty: the step's task gets the data the step receives.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) input: BTreeMap<String, Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resume_schema: Option<Value>,
}

/// Further attempts after a retryable failure, and the wait between them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Retries {
    #[serde(default)]
    pub(crate) attempts: u32,
    #[serde(default)]
    pub(crate) delay_ms: u64,
}

/// Where a mapped value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Source {
    /// A path into the data the node receives.
    Path(String),
    /// A path into the run input.
    RunInput(String),
    /// A constant.
    Value(Value),
}

/// A comparison of the value at `path` with a constant, combined with `all` / `any`, possibly negated.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Condition {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) path: String,
    /// Flattened, as the proto's oneof is in proto JSON: `{"path": "n", "greaterThan": 2}`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub(crate) test: Option<Test>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) all: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) any: Vec<Condition>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) not: bool,
}

/// The comparison of a [`Condition`] (the proto's `test` oneof).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Test {
    Equals(Value),
    NotEquals(Value),
    GreaterThan(f64),
    GreaterOrEqual(f64),
    LessThan(f64),
    LessOrEqual(f64),
    Exists(bool),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ParallelNode {
    #[serde(default)]
    pub(crate) nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BranchNode {
    #[serde(default)]
    pub(crate) cases: Vec<BranchCase>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BranchCase {
    /// Unset: the case is always taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) when: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<Box<Node>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoopNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<Box<Node>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) condition: Option<Condition>,
    /// 0: [`DEFAULT_MAX_ITERATIONS`].
    #[serde(default)]
    pub(crate) max_iterations: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ForeachNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) node: Option<Box<Node>>,
    /// 0: one at a time.
    #[serde(default)]
    pub(crate) concurrency: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SleepNode {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MapNode {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) fields: BTreeMap<String, Source>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkflowNode {
    pub(crate) id: String,
}

/// A loop's iteration limit when the definition sets none.
pub(crate) const DEFAULT_MAX_ITERATIONS: u32 = 1000;
/// The most a loop may be allowed.
pub(crate) const MAX_ITERATIONS: u32 = 100_000;
/// The most retries a step may ask for.
pub(crate) const MAX_RETRIES: u32 = 100;
/// The longest wait between retries.
pub(crate) const MAX_RETRY_DELAY_MS: u64 = 3_600_000;
/// The longest sleep: a month (a sleep is not checkpointed, so a recovered run sleeps it again in full).
pub(crate) const MAX_SLEEP_MS: u64 = 31 * 86_400_000;
/// The most foreach iterations at once.
pub(crate) const MAX_CONCURRENCY: u32 = 1000;
/// The longest definition id.
pub(crate) const MAX_ID_LEN: usize = 128;

/// A definition that cannot be registered: where (`steps[2].foreach.node.step.task`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub(crate) struct DefinitionError {
    pub(crate) path: String,
    pub(crate) message: String,
    /// The definition names something the server does not have (a nested workflow): FAILED_PRECONDITION rather
    /// than INVALID_ARGUMENT.
    pub(crate) missing: bool,
}

impl DefinitionError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into(), missing: false }
    }
}
