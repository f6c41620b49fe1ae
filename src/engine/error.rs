//! Errors the engine reports to its callers. Each names what is wrong and what to do; the gRPC layer maps them to
//! status codes in one place (`grpc::status`).

/// Data that fails a JSON Schema. `path` names the offending field from the request's point of view, e.g.
/// `input.value` or `resume_data.approved` (`input` alone for the root).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SchemaViolation {
    /// The offending field, e.g. `input.value`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a resume request cannot be carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResumeError {
    /// The step named is not suspended.
    #[error("step '{step}' is not suspended; name one of the suspended steps: [{}]", suspended.join(", "))]
    StepNotSuspended {
        /// The step named (dotted path).
        step: String,
        /// The steps that are suspended.
        suspended: Vec<String>,
    },
    /// No step was named, and more than one is suspended.
    #[error("{} steps are suspended ([{}]); name the one to resume in `step`", suspended.len(), suspended.join(", "))]
    AmbiguousStep {
        /// The steps that are suspended.
        suspended: Vec<String>,
    },
    /// No suspended step registered the resume label named.
    #[error("no suspended step registered resume label '{label}'; labels: [{}]", labels.join(", "))]
    UnknownLabel {
        /// The label named.
        label: String,
        /// The labels registered.
        labels: Vec<String>,
    },
    /// The foreach iteration named is not suspended.
    #[error("foreach step '{step}' has no suspended iteration {index}; suspended iterations: {suspended:?}")]
    ForEachIndexNotSuspended {
        /// The foreach step (dotted path).
        step: String,
        /// The iteration named.
        index: u32,
        /// The iterations that are suspended.
        suspended: Vec<u32>,
    },
    /// The resume data fails the step's resume schema.
    // The step_suspended event has the schema that applies (a step may set its own per suspension, which
    // ListWorkflows cannot show).
    #[error("{0}; send resume_data that matches the step's resume_schema (in its step_suspended event)")]
    InvalidResumeData(SchemaViolation),
}
