//! Test support: a Kubernetes API played by the test through kube's
//! tower-test mock (no API server can run here). Each request the code
//! under test makes is a [`Call`]: its method, path, query, content type and
//! JSON body, answered by the test.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::time::Duration;
use tower_test::mock;

/// One request, waiting for its answer.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) content_type: String,
    /// `Null` when the request has no body.
    pub(crate) body: Value,
    send: mock::SendResponse<Response<Body>>,
}

impl Call {
    /// Answer with `status` and a JSON body.
    pub(crate) fn reply(self, status: u16, body: &Value) {
        self.send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    /// Answer 200 with `body`.
    pub(crate) fn ok(self, body: &Value) {
        self.reply(200, body)
    }

    /// Answer 200 with plain text (a log).
    pub(crate) fn text(self, text: &str) {
        self.send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(text.as_bytes().to_vec()))
                .unwrap(),
        );
    }

    /// Answer 404 with a Status object, as the API server does.
    pub(crate) fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "message": "not found", "code": 404}),
        )
    }

    /// Assert method and path; `query` must contain each `k=v`.
    #[track_caller]
    pub(crate) fn expect(&self, method: Method, path: &str, query: &[&str]) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "query {}",
            self.query
        );
        for q in query {
            assert!(
                self.query.split('&').any(|p| p == *q),
                "{method} {path}: query {:?} lacks {q}",
                self.query
            );
        }
    }

    /// Assert a forced server-side apply by field manager `devd` of `path`.
    #[track_caller]
    pub(crate) fn expect_apply(&self, path: &str) {
        self.expect(Method::PATCH, path, &["fieldManager=devd", "force=true"]);
        assert_eq!(self.content_type, "application/apply-patch+yaml");
        assert!(
            self.body["apiVersion"].is_string() && self.body["kind"].is_string(),
            "an apply body needs apiVersion and kind: {}",
            self.body
        );
    }
}

/// The test's end of the mock API.
pub(crate) struct ApiMock(mock::Handle<Request<Body>, Response<Body>>);

impl ApiMock {
    /// A client for the code under test (default namespace `default`) and
    /// the test's end.
    pub(crate) fn pair() -> (kube::Client, ApiMock) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(svc, "default"), ApiMock(handle))
    }

    /// The next request (panics after 10 s without one).
    pub(crate) async fn next(&mut self) -> Call {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("no request to the Kubernetes API within 10 s")
    }

    /// The next request, or `None` when none comes within `wait` (the
    /// code under test is done asking).
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Call> {
        let (req, send) = tokio::time::timeout(wait, self.0.next_request())
            .await
            .ok()?
            .expect("the code under test dropped its client");
        let (method, path, query) = (
            req.method().clone(),
            req.uri().path().to_owned(),
            req.uri().query().unwrap_or_default().to_owned(),
        );
        let content_type = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        Some(Call {
            method,
            path,
            query,
            content_type,
            body,
            send,
        })
    }
}
