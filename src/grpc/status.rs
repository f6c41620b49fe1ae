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
            RegistryError::CursorAhead { .. } | RegistryError::CursorExpired { .. } => Code::OutOfRange,
            RegistryError::ShuttingDown => Code::Unavailable,
        };
        let mut status = Status::new(code, error.to_string());
        if let RegistryError::CursorExpired { first_seq, .. } = &error {
            // Machine-readable too: a client can re-attach at once without parsing the message.
            status.metadata_mut().insert(EARLIEST_SEQ_HEADER, tonic::metadata::MetadataValue::from(*first_seq));
        }
        status
    }
}

/// Metadata key of an OUT_OF_RANGE for an expired cursor: the earliest seq the run still keeps.
pub const EARLIEST_SEQ_HEADER: &str = "runstream-earliest-seq";

/// INVALID_ARGUMENT for a request field, the message naming the field.
pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}
