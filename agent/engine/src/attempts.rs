//! Counting HTTP attempts under object_store: its retries happen inside its client, where the
//! storage layer's one count per call cannot see them. This connector wraps the default
//! (reqwest) client and adds every request sent, and every one that failed, to the repository's
//! `RequestCounts`, so summaries show what was really sent (and billed).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use repo_format::RequestCounts;

/// An `HttpConnector` whose clients count their attempts.
#[derive(Debug, Clone)]
pub struct CountingConnector(pub Arc<RequestCounts>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Counted { inner, counts: self.0.clone() }))
    }
}

#[derive(Debug)]
struct Counted {
    inner: HttpClient,
    counts: Arc<RequestCounts>,
}

#[async_trait::async_trait]
impl HttpService for Counted {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        self.counts.attempts.fetch_add(1, Relaxed);
        let r = self.inner.execute(req).await;
        let failed = match &r {
            Ok(resp) => resp.status().is_server_error() || resp.status().as_u16() == 429,
            Err(_) => true,
        };
        if failed {
            self.counts.failed_attempts.fetch_add(1, Relaxed);
        }
        r
    }
}
