//! Re-issuing model calls after transient failures.
//!
//! [`RetryingModel`] wraps any provider. When a call fails with a retryable [`ModelError`] (429, 5xx, connection
//! failure, timeout, stream cut short), it waits and issues the same request again, up to
//! [`RetryPolicy::max_attempts`] calls in all. Permanent errors and cancellation pass straight through.
//!
//! A failure can come after the stream already yielded chunks (a connection dropped mid-answer). Those chunks are a
//! partial response that the retry will not continue (a model cannot resume mid-answer; it starts over, and may
//! say something different). So before re-issuing, the wrapper yields [`ModelChunk::Restart`]: the consumer must
//! discard everything it built from this call since its start (or since the previous `Restart`), e.g. the agent
//! closes the open text/reasoning/tool-call parts of the step and starts the step's content afresh. A failure
//! before any chunk retries silently: there is nothing to discard.
//!
//! When retries are spent, the stream ends with [`ModelError::RetriesExhausted`], which names the attempts made and
//! the last error, so that the step's error says why.

use std::{
    hash::{BuildHasher, Hasher},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{ModelChunk, ModelError, ModelProvider, ModelRequest, ModelStream};

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls in all, the first included: 1 means no retries.
    pub max_attempts: u32,
    /// The wait before the first retry; each further retry doubles it.
    pub base_delay: Duration,
    /// No wait is longer, not even one a server asks for with `Retry-After` (a server asking for minutes should
    /// fail the step rather than stall it).
    pub max_delay: Duration,
    /// Randomize each backoff wait between half and all of it, so that many runs failing together do not retry
    /// in lockstep. Waits a server asked for are kept exact.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 3 attempts, 1 s then 2 s apart (jittered), at most 30 s.
    fn default() -> Self {
        Self { max_attempts: 3, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30), jitter: true }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The wait before retry number `retry` (1 for the first) after `error`: what the server asked for if it did,
    /// else exponential backoff; never more than `max_delay`.
    pub fn delay_for(&self, retry: u32, error: &ModelError) -> Duration {
        if let Some(asked) = error.retry_after() {
            return asked.min(self.max_delay);
        }
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        let delay = self.base_delay.saturating_mul(factor).min(self.max_delay);
        if self.jitter { delay / 2 + delay.mul_f64(random_fraction() / 2.0) } else { delay }
    }
}

/// A number in `[0, 1)`, random enough for jitter without a dependency: std's `RandomState` is seeded randomly
/// and changes with every instance.
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Any provider, with transient failures retried per a [`RetryPolicy`]. See the [module docs](super) for
/// [`ModelChunk::Restart`].
#[derive(Clone)]
pub struct RetryingModel {
    inner: Arc<dyn ModelProvider>,
    policy: RetryPolicy,
}

impl RetryingModel {
    /// Wraps `inner`, retrying its calls per `policy`.
    pub fn new(inner: Arc<dyn ModelProvider>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The policy it retries by.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl ModelProvider for RetryingModel {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn provider(&self) -> &str {
        self.inner.provider()
    }

    fn with_model(&self, name: &str) -> Option<Arc<dyn ModelProvider>> {
        let inner = self.inner.with_model(name)?;
        Some(Arc::new(Self { inner, policy: self.policy }))
    }

    fn stream(&self, request: ModelRequest, cancel: CancellationToken) -> ModelStream {
        let call = Attempts {
            inner: self.inner.clone(),
            policy: self.policy,
            request,
            cancel,
            attempt: 1,
            current: None,
            yielded: false,
            wait: None,
            done: false,
        };
        Box::pin(futures_util::stream::unfold(call, |mut call| async move {
            let item = call.next().await?;
            Some((item, call))
        }))
    }
}

struct Attempts {
    inner: Arc<dyn ModelProvider>,
    policy: RetryPolicy,
    request: ModelRequest,
    cancel: CancellationToken,
    /// The number of the current (or next) attempt, from 1.
    attempt: u32,
    current: Option<ModelStream>,
    /// Whether the current attempt has yielded a chunk.
    yielded: bool,
    /// The wait before the next attempt, once a `Restart` has been yielded.
    wait: Option<Duration>,
    done: bool,
}

impl Attempts {
    async fn next(&mut self) -> Option<Result<ModelChunk, ModelError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(wait) = self.wait.take() {
                tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => {
                        self.done = true;
                        return Some(Err(ModelError::Canceled));
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
            if self.current.is_none() {
                self.yielded = false;
                self.current = Some(self.inner.stream(self.request.clone(), self.cancel.clone()));
            }
            let stream = self.current.as_mut()?;
            let error = match stream.next().await {
                Some(Ok(chunk)) => {
                    self.yielded = true;
                    return Some(Ok(chunk));
                }
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(error)) => error,
            };
            self.current = None;
            if !error.is_retryable() {
                self.done = true;
                return Some(Err(error));
            }
            if self.attempt >= self.policy.max_attempts.max(1) {
                self.done = true;
                if self.attempt == 1 {
                    return Some(Err(error));
                }
                tracing::warn!(model = self.inner.model_id(), attempts = self.attempt, %error, "model call failed; retries spent");
                return Some(Err(ModelError::RetriesExhausted { attempts: self.attempt, last: Box::new(error) }));
            }
            let delay = self.policy.delay_for(self.attempt, &error);
            self.attempt += 1;
            tracing::warn!(
                model = self.inner.model_id(),
                next_attempt = self.attempt,
                delay_ms = delay.as_millis() as u64,
                %error,
                "model call failed; retrying"
            );
            self.wait = Some(delay);
            if self.yielded {
                return Some(Ok(ModelChunk::Restart { attempt: self.attempt, reason: error.to_string(), delay }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_limited(retry_after: Option<Duration>) -> ModelError {
        ModelError::RateLimited { url: "u".into(), message: "slow down".into(), retry_after }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            jitter: false,
        };
        let server = ModelError::Server { url: "u".into(), status: 503, message: "busy".into() };
        let delays: Vec<u128> = (1..=6).map(|n| policy.delay_for(n, &server).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay_for(1, &rate_limited(Some(Duration::from_millis(250)))), Duration::from_millis(250));
        assert_eq!(policy.delay_for(1, &rate_limited(Some(Duration::from_secs(60)))), Duration::from_secs(1));
        assert_eq!(policy.delay_for(2, &rate_limited(None)), Duration::from_millis(200));
        assert_eq!(policy.delay_for(u32::MAX, &server), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        let policy = RetryPolicy { jitter: true, ..RetryPolicy::default() };
        let server = ModelError::Server { url: "u".into(), status: 500, message: String::new() };
        for _ in 0..100 {
            let delay = policy.delay_for(2, &server);
            assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2), "{delay:?}");
        }
    }
}
