//! The client's deadline (`grpc-timeout`), enforced around the whole call.
//!
//! For a call whose reply streams, "the whole call" ends when the reply's headers
//! go out; each streamed item then keeps to the deadline in the work pool.
//!
//! tonic's transport enforces `grpc-timeout` too, from the moment a request arrives,
//! but answers CANCELLED when it expires. [`DeadlineLayer`] sits inside it and
//! expires a little earlier (5%, at least 2 ms, at most half the timeout), so that
//! a call that runs out of time is answered DEADLINE_EXCEEDED, as gRPC specifies,
//! wherever the time went: reading the request, waiting for a worker, or the work.
//! The handlers read the same deadline ([`ClientDeadline`]) to drop work that could
//! no longer be answered in time.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::codegen::{Service, http};

/// When the server must have answered, from the request's `grpc-timeout`. The layer
/// puts it in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientDeadline(pub Instant);

/// Wraps every service in [`WithDeadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> WithDeadline<S> {
        WithDeadline { inner }
    }
}

/// A service whose calls end with DEADLINE_EXCEEDED once their client's deadline
/// passes.
#[derive(Debug, Clone)]
pub struct WithDeadline<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for WithDeadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|t| Instant::now().checked_add(shortened(t)))
            .map(ClientDeadline);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(deadline);
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let Some(ClientDeadline(at)) = deadline else {
                return call.await;
            };
            match tokio::time::timeout_at(at.into(), call).await {
                Ok(reply) => reply,
                Err(_) => Ok(Status::deadline_exceeded("the call's deadline passed").into_http()),
            }
        })
    }
}

/// The part of a client's timeout the server uses, leaving the rest for the reply
/// to travel and for tonic's own timer to stay the later one.
fn shortened(timeout: Duration) -> Duration {
    timeout
        - (timeout / 20)
            .max(Duration::from_millis(2))
            .min(timeout / 2)
}

/// Parses a `grpc-timeout` header value: at most 8 digits then a unit (H, M, S,
/// m, u, n), as gRPC specifies; anything else is no deadline.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_layer::Layer;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("+5S"), None);
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(parse_grpc_timeout("18446744073709551615S"), None);
    }

    #[test]
    fn the_server_keeps_a_margin_of_each_timeout() {
        assert_eq!(
            shortened(Duration::from_millis(4)),
            Duration::from_millis(2)
        );
        assert_eq!(
            shortened(Duration::from_millis(1)),
            Duration::from_micros(500)
        );
        assert_eq!(
            shortened(Duration::from_secs(2)),
            Duration::from_millis(1900)
        );
    }

    /// A service that answers after 200 ms, checking that it sees a deadline.
    struct Slow;

    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            assert!(request.extensions().get::<ClientDeadline>().is_some());
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(http::Response::new("answer".to_owned()))
            })
        }
    }

    /// A call still running at its deadline is answered DEADLINE_EXCEEDED; one that
    /// finishes in time passes through.
    #[tokio::test]
    async fn late_calls_are_answered_deadline_exceeded() {
        let request = |timeout: &str| {
            http::Request::builder()
                .header("grpc-timeout", timeout)
                .body(())
                .unwrap()
        };
        let mut service = DeadlineLayer.layer(Slow);
        let late = service.call(request("20m")).await.unwrap();
        assert_eq!(late.headers()["grpc-status"], "4");
        let in_time = service.call(request("10S")).await.unwrap();
        assert!(in_time.headers().get("grpc-status").is_none());
        assert_eq!(in_time.into_body(), "answer");
    }
}
