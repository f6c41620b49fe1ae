//! What the engine remembers of a run between phases: each step's recorded outcome and what is suspended.
//!
//! A resume (and, later, recovery after a crash) re-walks the workflow graph with the snapshot in hand: steps that
//! already succeeded are not run again, their recorded outputs are reused, and no events are emitted for them; the
//! resumed step runs with its resume data; everything after it runs normally.

use std::{collections::BTreeMap, time::SystemTime};

use serde_json::Value;

use super::event::{ErrorInfo, StepStatus, Usage};

/// The engine's memory of a run. Owned by the registry, handed to each phase and returned by it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSnapshot {
    /// Recorded outcome of each step, keyed by dotted path. A step inside a loop keeps its latest iteration.
    pub steps: BTreeMap<String, StepRecord>,
    /// The steps suspended now, keyed by dotted path. Empty unless the run is suspended.
    pub suspended: BTreeMap<String, SuspendedStep>,
    /// Executor bookkeeping for control flow that must survive a suspension (loop iteration counts, finished
    /// foreach items...). Opaque to everyone but the executor; JSON so that it can be stored as is.
    pub control: BTreeMap<String, Value>,
    /// Token usage accumulated over all phases.
    pub usage: Usage,
}

/// The recorded outcome of one step (Mastra's StepResult).
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub status: StepStatus,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<ErrorInfo>,
    pub suspend_payload: Option<Value>,
    pub resume_data: Option<Value>,
    pub attempts: u32,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub suspended_at: Option<SystemTime>,
    pub resumed_at: Option<SystemTime>,
}

/// A step waiting to be resumed.
#[derive(Debug, Clone, PartialEq)]
pub struct SuspendedStep {
    /// Path segments, e.g. `["child", "approve"]`.
    pub path: Vec<String>,
    pub suspend_payload: Value,
    /// JSON Schema the resume data must satisfy, if the step declares one.
    pub resume_schema: Option<Value>,
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
    pub for_each_index: Option<u32>,
    pub resume_data: Value,
}

/// A checked resume request: exactly which suspended step to run again, with what.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeTarget {
    /// Dotted path of the suspended step.
    pub step_id: String,
    pub for_each_index: Option<u32>,
    pub resume_data: Value,
}
