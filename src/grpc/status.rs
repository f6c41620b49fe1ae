//! The one place where errors become gRPC status codes.

use tonic::{Code, Status};

use crate::{auth::AuthError, engine::ResumeError, registry::RegistryError, worker::WorkerError};

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        let code = match &error {
            RegistryError::WorkflowNotFound { .. } | RegistryError::RunNotFound { .. } => Code::NotFound,
            RegistryError::InvalidId { .. } | RegistryError::InvalidInput(_) => Code::InvalidArgument,
            RegistryError::RunIdTaken { .. }
            | RegistryError::RunIdTakenElsewhere { .. }
            | RegistryError::RunIdInUse { .. } => Code::AlreadyExists,
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
            RegistryError::TenantBusy { .. } => Code::ResourceExhausted,
            RegistryError::ShuttingDown
            | RegistryError::ServerBusy { .. }
            | RegistryError::StoreUnavailable { .. }
            | RegistryError::StoreRead { damaged: false, .. } => Code::Unavailable,
            RegistryError::StoreRead { damaged: true, .. } => Code::DataLoss,
            RegistryError::InvalidDefinition { missing: false, .. } => Code::InvalidArgument,
            RegistryError::InvalidDefinition { missing: true, .. }
            | RegistryError::DefinitionIdTaken { .. }
            | RegistryError::DefinitionsUnsupported => Code::FailedPrecondition,
            RegistryError::DefinitionNotFound { .. } => Code::NotFound,
            RegistryError::DefinitionNotStored { .. } => Code::Unavailable,
        };
        let mut status = Status::new(code, error.to_string());
        if let RegistryError::CursorExpired { first_seq, .. } = &error {
            // Machine-readable too: a client can re-attach at once without parsing the message.
            status.metadata_mut().insert(EARLIEST_SEQ_HEADER, tonic::metadata::MetadataValue::from(*first_seq));
        }
        status
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        Status::unauthenticated(error.to_string())
    }
}

impl From<WorkerError> for Status {
    fn from(error: WorkerError) -> Self {
        // Every worker error is a malformed message: the message names the field or the rule broken.
        match &error {
            WorkerError::InvalidHello { .. } | WorkerError::NoHello | WorkerError::Protocol(_) => {
                Status::invalid_argument(error.to_string())
            }
        }
    }
}

/// Metadata key of an OUT_OF_RANGE for an expired cursor: the earliest seq the run still keeps.
pub const EARLIEST_SEQ_HEADER: &str = "runstream-earliest-seq";

/// INVALID_ARGUMENT for a request field, the message naming the field.
pub fn invalid_field(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// Start of the message tonic gives a request over the decoding limit, with code OUT_OF_RANGE (which in this API
/// means a cursor past the log); [`RequestStatusLayer`] turns it into RESOURCE_EXHAUSTED.
const DECODE_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Start of the message of a request that is not protobuf of its type (bad wire format, invalid UTF-8 in a string,
/// nesting past prost's limit), with code INTERNAL; [`RequestStatusLayer`] turns it into INVALID_ARGUMENT: the
/// caller sent it, the server did not fail.
const DECODE_ERROR_MESSAGE: &str = "failed to decode Protobuf message";

/// A tower layer over the gRPC routes that mends the statuses tonic's codec gives requests it cannot take, before
/// any handler runs (so only the response can be mended): a request larger than the server's limit is
/// RESOURCE_EXHAUSTED naming its size, the limit and the option that raises it; a request that does not decode is
/// INVALID_ARGUMENT naming the method and what is wrong.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestStatusLayer;

impl<S> tower_layer::Layer<S> for RequestStatusLayer {
    type Service = RequestStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestStatus { inner }
    }
}

/// The service of [`RequestStatusLayer`].
#[derive(Debug, Clone)]
pub struct RequestStatus<S> {
    inner: S,
}

impl<S, ReqBody, B> tower_service::Service<http::Request<ReqBody>> for RequestStatus<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<B>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            let Some(status) = Status::from_header_map(headers) else { return Ok(response) };
            let mended = match status.code() {
                Code::OutOfRange if status.message().starts_with(DECODE_LIMIT_MESSAGE) => {
                    Some(request_too_large(status.message()))
                }
                Code::Internal if status.message().starts_with(DECODE_ERROR_MESSAGE) => {
                    Some(Status::invalid_argument(format!(
                        "the request to {method} is not a valid message of its type ({}); send one of the \
                         runstream.v1 contract (proto/runstream/v1), e.g. from generated stubs",
                        status.message()
                    )))
                }
                _ => None,
            };
            if let Some(mended) = mended {
                let _ = mended.add_header(headers);
            }
            Ok(response)
        })
    }
}

/// RESOURCE_EXHAUSTED for a request over the limit, from tonic's "found N bytes, the limit is: M bytes".
fn request_too_large(message: &str) -> Status {
    let numbers: Vec<&str> = message.split(|c: char| !c.is_ascii_digit()).filter(|part| !part.is_empty()).collect();
    let detail = match numbers.as_slice() {
        [size, limit, ..] => format!("the request is {size} bytes, over this server's {limit}-byte request limit"),
        _ => "the request is larger than this server's request limit".to_owned(),
    };
    Status::resource_exhausted(format!(
        "{detail}; send less (pass large data by reference, e.g. a URL your steps fetch), or start the server with a \
         larger --max-request-bytes"
    ))
}

/// RESOURCE_EXHAUSTED for an answer over the response limit: its size, the limit, and how to get less or raise
/// the limits (the server's and the client's).
pub fn response_too_large(what: &str, size: usize, limit: usize, fewer: &str) -> Status {
    Status::resource_exhausted(format!(
        "{what} is {size} bytes, over this server's {limit}-byte response limit; {fewer}, or raise the limit: start \
         the server with a larger --max-response-bytes and raise your client's (grpcurl -max-msg-sz, grpcio \
         option grpc.max_receive_message_length, tonic max_decoding_message_size)"
    ))
}
