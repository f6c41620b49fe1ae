//! Time, behind a trait so that tests and recovery code can control it.
//!
//! Everything in runstream that reads the wall clock or sleeps goes through a [`Clock`]: event timestamps, step
//! timings, sleep steps. Production uses [`SystemClock`].

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime},
};

/// A source of wall-clock time and of sleeps.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;

    /// Completes after `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

    /// Completes once this clock reaches `deadline` (at once if it has already).
    fn sleep_until(&self, deadline: SystemTime) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let remaining = deadline.duration_since(self.now()).unwrap_or(Duration::ZERO);
        self.sleep(remaining)
    }
}

/// The real clock: `SystemTime::now` and tokio's timer.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(tokio::time::sleep(duration))
    }
}
