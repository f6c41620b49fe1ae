//! Errors the engine reports to its callers. Each names what is wrong and what to do; the gRPC layer maps them to
//! status codes in one place (`grpc::status`).

/// Data that fails a JSON Schema. `path` names the offending field from the request's point of view, e.g.
/// `input.value` or `resume_data.approved` (`input` alone for the root).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SchemaViolation {
    pub path: String,
    pub message: String,
}

/// Why a resume request cannot be carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResumeError {
    #[error("step '{step}' is not suspended; name one of the suspended steps: [{}]", suspended.join(", "))]
    StepNotSuspended { step: String, suspended: Vec<String> },
    #[error("{} steps are suspended ([{}]); name the one to resume in `step`", suspended.len(), suspended.join(", "))]
    AmbiguousStep { suspended: Vec<String> },
    #[error("no suspended step registered resume label '{label}'; labels: [{}]", labels.join(", "))]
    UnknownLabel { label: String, labels: Vec<String> },
    #[error("foreach step '{step}' has no suspended iteration {index}; suspended iterations: {suspended:?}")]
    ForEachIndexNotSuspended { step: String, index: u32, suspended: Vec<u32> },
    // The step_suspended event has the schema that applies (a step may set its own per suspension, which
    // ListWorkflows cannot show).
    #[error("{0}; send resume_data that matches the step's resume_schema (in its step_suspended event)")]
    InvalidResumeData(SchemaViolation),
}
