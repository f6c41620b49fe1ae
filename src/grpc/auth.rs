//! Authentication of every call, before routing: a tower layer that asks the server's [`Auth`] who sent the
//! `authorization` metadata and hands the [`Caller`] to the handlers in the request's extensions, or answers
//! UNAUTHENTICATED itself. Health and reflection stay open (probes and grpcurl's listing carry no token).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Request, Status};

use crate::auth::{Auth, Caller};

/// Services that answer without a token: what a load balancer's probe and a tool's discovery need.
const OPEN_PREFIXES: [&str; 2] = ["/grpc.health.v1.", "/grpc.reflection."];

/// The caller a handler serves, as the layer found it. A request that reached a handler without one did not pass
/// the layer: refused, never served as somebody.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// PERMISSION_DENIED unless `caller` may change things; `what` is what the call would do ("start runs").
pub fn require_write(caller: &Caller, what: &str) -> Result<(), Status> {
    if caller.can_write() {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "this token is {} for tenant '{}': it may observe and read runs, not {what}; use a read-write token",
        caller.role().as_str(),
        caller.tenant()
    )))
}

/// The layer; see the module docs.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Auth,
}

impl AuthLayer {
    /// Authenticates with `auth`.
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, auth: self.auth.clone() }
    }
}

/// The service of [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Auth,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Authenticate<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(http::HeaderValue::as_bytes);
        match self.auth.authenticate(authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(refused) => {
                let response = Status::from(refused).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
