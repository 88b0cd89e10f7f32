//! Writes only while leading. The controllers' client refuses every write
//! once this replica's hold on the Lease may have lapsed — measured on the
//! monotonic clock from before the last successful renewal — so a replica
//! that was frozen (SIGSTOP, a long pause) and resumes writes nothing before
//! it holds the Lease again, even from a reconcile that was already under way.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Until when this replica may act as the leader.
#[derive(Default)]
pub struct Leadership {
    valid_until: Mutex<Option<Instant>>,
}

impl Leadership {
    pub fn new() -> Arc<Leadership> {
        Arc::new(Leadership::default())
    }

    /// The Lease was taken or renewed by a request sent at `sent`; it holds
    /// for `lasts` from then, by the time other replicas can see.
    pub fn renewed(&self, sent: Instant, lasts: Duration) {
        if let Ok(mut until) = self.valid_until.lock() {
            *until = sent.checked_add(lasts);
        }
    }

    pub fn lost(&self) {
        if let Ok(mut until) = self.valid_until.lock() {
            *until = None;
        }
    }

    pub fn current(&self) -> bool {
        self.valid_until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| Instant::now() < until)
    }
}

/// A layer for the controllers' Kubernetes client.
#[derive(Clone)]
pub struct WritesWhileLeading(pub Arc<Leadership>);

impl<S> tower::Layer<S> for WritesWhileLeading {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            leadership: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    leadership: Arc<Leadership>,
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.method() != http::Method::GET && !self.leadership.current() {
            let refused: BoxError = format!(
                "refusing {} {}: this replica does not hold the lease",
                request.method(),
                request.uri().path()
            )
            .into();
            return Box::pin(std::future::ready(Err(refused)));
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_lapses_on_the_monotonic_clock() {
        let leadership = Leadership::new();
        assert!(!leadership.current());
        leadership.renewed(Instant::now(), Duration::from_secs(10));
        assert!(leadership.current());
        leadership.renewed(
            Instant::now() - Duration::from_secs(11),
            Duration::from_secs(10),
        );
        assert!(
            !leadership.current(),
            "a renewal sent longer ago than the lease lasts"
        );
        leadership.renewed(Instant::now(), Duration::from_secs(10));
        leadership.lost();
        assert!(!leadership.current());
    }
}
