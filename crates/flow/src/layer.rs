//! The gate as a tower layer in front of any `http` service: the node's and the gateway's gRPC
//! services and HTTP routes. The front end's [`Classify`] says which API a request calls and
//! who calls it (read from what its authentication put on the request), and how a refusal is
//! answered in its protocol; requests it does not classify (open routes) pass untouched.
//!
//! Owns the wiring of a decision around a call: the permit lives until the inner service has
//! answered (for a streaming answer, until its headers). It must not decide anything itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::api::Api;
use crate::gate::{Gate, Rejection};

/// What a front end tells the layer about its requests.
pub trait Classify<B>: Clone + Send + Sync + 'static {
    type Response;

    /// The API a request calls and its caller's name (`None`: no caller known, as on a server
    /// without keys), or `None` to let it pass unchecked.
    fn classify(&self, request: &http::Request<B>) -> Option<(Api, Option<Arc<str>>)>;

    /// The answer to a refused request (counted by the front end as it likes).
    fn refuse(&self, rejection: &Rejection) -> Self::Response;
}

/// Wraps services in a [`FlowService`].
#[derive(Clone)]
pub struct FlowLayer<C> {
    gate: Arc<Gate>,
    classify: C,
}

impl<C> FlowLayer<C> {
    pub fn new(gate: Arc<Gate>, classify: C) -> FlowLayer<C> {
        FlowLayer { gate, classify }
    }
}

impl<S, C: Clone> Layer<S> for FlowLayer<C> {
    type Service = FlowService<S, C>;

    fn layer(&self, inner: S) -> FlowService<S, C> {
        FlowService {
            inner,
            gate: Arc::clone(&self.gate),
            classify: self.classify.clone(),
        }
    }
}

/// A service behind the gate.
#[derive(Clone)]
pub struct FlowService<S, C> {
    inner: S,
    gate: Arc<Gate>,
    classify: C,
}

impl<S, C> FlowService<S, C> {
    pub fn new(inner: S, gate: Arc<Gate>, classify: C) -> FlowService<S, C> {
        FlowService {
            inner,
            gate,
            classify,
        }
    }
}

impl<S, C, B> Service<http::Request<B>> for FlowService<S, C>
where
    S: Service<http::Request<B>, Response = C::Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    C: Classify<B>,
    C::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = C::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some((api, caller)) = self.classify.classify(&request) else {
            return Box::pin(self.inner.call(request));
        };
        // The service polled ready is the one that must be called; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = Arc::clone(&self.gate);
        let classify = self.classify.clone();
        Box::pin(async move {
            match gate.admit(api, caller.as_deref()).await {
                Ok(permit) => {
                    let answer = inner.call(request).await;
                    drop(permit);
                    answer
                }
                Err(rejection) => Ok(classify.refuse(&rejection)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rules;
    use std::convert::Infallible;

    #[derive(Clone)]
    struct ByPath;

    impl Classify<()> for ByPath {
        type Response = String;

        fn classify(&self, request: &http::Request<()>) -> Option<(Api, Option<Arc<str>>)> {
            let api = Api::from_name(request.uri().path().trim_start_matches('/'))?;
            let caller = request.headers().get("caller")?.to_str().ok()?;
            Some((api, Some(Arc::from(caller))))
        }

        fn refuse(&self, rejection: &Rejection) -> String {
            format!("refused: {}", rejection.reason.label())
        }
    }

    async fn call(
        service: &mut impl Service<http::Request<()>, Response = String, Error = Infallible>,
        path: &str,
    ) -> String {
        let request = http::Request::builder()
            .uri(path)
            .header("caller", "k")
            .body(())
            .unwrap();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        service.call(request).await.unwrap()
    }

    #[tokio::test]
    async fn refused_calls_never_reach_the_service_and_unclassified_ones_always_do() {
        let gate = Arc::new(Gate::new(
            Rules::from_json(r#"{"limits":[{"api":"mint_ids","rate_per_second":1}]}"#).unwrap(),
        ));
        let reached = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let inner = {
            let reached = Arc::clone(&reached);
            tower::service_fn(move |_request: http::Request<()>| {
                reached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::future::ready(Ok::<_, Infallible>("served".to_string()))
            })
        };
        let mut service = FlowLayer::new(gate, ByPath).layer(inner);
        assert_eq!(call(&mut service, "/mint_ids").await, "served");
        assert_eq!(call(&mut service, "/mint_ids").await, "refused: rate");
        assert_eq!(call(&mut service, "/healthz").await, "served");
        assert_eq!(reached.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
