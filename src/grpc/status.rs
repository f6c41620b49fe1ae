//! The one place where errors become gRPC status codes.

use tonic::{Code, Status};

use crate::{engine::ResumeError, registry::RegistryError};

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        let code = match &error {
            RegistryError::WorkflowNotFound { .. } | RegistryError::RunNotFound { .. } => Code::NotFound,
            RegistryError::InvalidId { .. } | RegistryError::InvalidInput(_) => Code::InvalidArgument,
            RegistryError::RunIdTaken { .. } => Code::AlreadyExists,
            RegistryError::NotSuspended { .. } => Code::FailedPrecondition,
            RegistryError::Resume { source, .. } => match source {
                // The request names the wrong thing or carries bad data: the caller must change the request.
                ResumeError::InvalidResumeData(_)
                | ResumeError::UnknownLabel { .. }
                | ResumeError::AmbiguousStep { .. } => Code::InvalidArgument,
                // The request is well-formed but the run is not in the state it assumes.
                ResumeError::StepNotSuspended { .. } | ResumeError::ForEachIndexNotSuspended { .. } => {
                    Code::FailedPrecondition
                }
            },
            RegistryError::CursorAhead { .. } => Code::OutOfRange,
            RegistryError::ShuttingDown => Code::Unavailable,
        };
        Status::new(code, error.to_string())
    }
}

/// INVALID_ARGUMENT for a request field, the message naming the field.
pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}
