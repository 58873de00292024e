//! The `x-served-by` response header: which instance answered, so people and
//! tests can see where the mesh sent a call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;

/// The response metadata key carrying the serving instance's id.
pub const SERVED_BY: &str = "x-served-by";

/// Adds `x-served-by: <instance>` to every response, errors included (a
/// trailers-only gRPC error still has response headers).
#[derive(Debug, Clone)]
pub struct ServedByLayer {
    value: HeaderValue,
}

impl ServedByLayer {
    /// Fails if the instance id cannot be a header value.
    pub fn new(instance: &str) -> Result<Self, http::header::InvalidHeaderValue> {
        Ok(Self {
            value: HeaderValue::from_str(instance)?,
        })
    }
}

impl<S> tower_layer::Layer<S> for ServedByLayer {
    type Service = ServedBy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServedBy {
            inner,
            value: self.value.clone(),
        }
    }
}

/// The service made by [`ServedByLayer`].
#[derive(Debug, Clone)]
pub struct ServedBy<S> {
    inner: S,
    value: HeaderValue,
}

impl<S, Req, Body> tower_service::Service<Req> for ServedBy<S>
where
    S: tower_service::Service<Req, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ServedByFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ServedByFuture {
            inner: self.inner.call(req),
            value: Some(self.value.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ServedBy`].
    pub struct ServedByFuture<F> {
        #[pin]
        inner: F,
        value: Option<HeaderValue>,
    }
}

impl<F, Body, E> Future for ServedByFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(value) = this.value.take() {
            response.headers_mut().insert(SERVED_BY, value);
        }
        Poll::Ready(Ok(response))
    }
}
