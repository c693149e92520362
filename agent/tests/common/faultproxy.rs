//! A fault-injecting HTTP/1.1 reverse proxy on loopback, for putting in front of an S3 test
//! server: `FaultProxy::start(upstream, plan)` listens on 127.0.0.1:0 and forwards every request
//! to `upstream` (headers untouched, so SigV4 signatures made for the proxy's address stay
//! valid: the server checks them against the Host header it receives), except that a share of
//! the requests, set per kind by the `Plan`, get a fault instead:
//!
//! * `Unavailable` (503 `SlowDown`) and `Throttled` (429 with `Retry-After: 1`): answered by the
//!   proxy, the request never reaches the server (a throttling front end);
//! * `Internal` (500 `InternalError`): the request is applied by the server, then its answer is
//!   replaced by a 500 (S3: "the request may or may not have succeeded");
//! * `ResetBefore` / `ResetAfter`: the connection is reset (RST: `SO_LINGER` 0, then closed)
//!   without an answer, before the request is forwarded or after the server applied it;
//! * `Truncated`: a GET answer with a body is sent with its full `Content-Length` but the
//!   connection closes after half of the body;
//! * `Slow`: a GET answer with a body is sent whole, in 32 KiB chunks with a pause between them.
//!
//! Which request gets which fault is a pure function of the seed, the request's class (PUT,
//! GET, LIST, ...) and its rank among the requests of that class (BLAKE3 of the three as a
//! number in [0, 1), against the cumulative rates): with a given seed the n-th GET of every run
//! gets the same fault, so the faults of a run are reproducible and their counts barely vary
//! between runs (object names differ from run to run: keys are random). Every request, forward,
//! delivery and fault is counted per request class for the tests to assert on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The faults the proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    Unavailable,
    Throttled,
    Internal,
    ResetBefore,
    ResetAfter,
    Truncated,
    Slow,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Unavailable,
        Fault::Throttled,
        Fault::Internal,
        Fault::ResetBefore,
        Fault::ResetAfter,
        Fault::Truncated,
        Fault::Slow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Unavailable => "503",
            Fault::Throttled => "429",
            Fault::Internal => "500-after-apply",
            Fault::ResetBefore => "reset-before",
            Fault::ResetAfter => "reset-after-apply",
            Fault::Truncated => "truncated-body",
            Fault::Slow => "slow-body",
        }
    }

    /// Faults that cost the client another request (all but a slow body, delivered whole).
    pub fn causes_retry(self) -> bool {
        self != Fault::Slow
    }

    fn index(self) -> usize {
        Fault::ALL.iter().position(|f| *f == self).unwrap()
    }
}

/// Request classes, as an S3 client's requests map onto Ferry's request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Put,
    Get,
    List,
    Delete,
    Head,
    Post,
    Other,
}

impl Class {
    pub const ALL: [Class; 7] =
        [Class::Put, Class::Get, Class::List, Class::Delete, Class::Head, Class::Post, Class::Other];

    pub fn name(self) -> &'static str {
        match self {
            Class::Put => "put",
            Class::Get => "get",
            Class::List => "list",
            Class::Delete => "delete",
            Class::Head => "head",
            Class::Post => "post",
            Class::Other => "other",
        }
    }

    fn of<B>(req: &Request<B>) -> Class {
        let query =
            |name: &str| req.uri().query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some(name)));
        match *req.method() {
            Method::PUT => Class::Put,
            Method::GET if query("list-type") => Class::List,
            Method::GET => Class::Get,
            Method::DELETE => Class::Delete,
            // object_store deletes with DeleteObjects (POST ?delete), one key at a time.
            Method::POST if query("delete") => Class::Delete,
            Method::HEAD => Class::Head,
            Method::POST => Class::Post,
            _ => Class::Other,
        }
    }

    fn index(self) -> usize {
        Class::ALL.iter().position(|c| *c == self).unwrap()
    }
}

/// What to inject: the seed, and per fault kind the share of requests that get it (the shares
/// add up to at most 1). `Truncated` and `Slow` apply to GET answers with a body only; when
/// one of them falls on another request, that request goes through untouched.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub rates: Vec<(Fault, f64)>,
    /// Faults for given requests, `(class, rank, fault)`, before the rates apply.
    pub script: Vec<(Class, u64, Fault)>,
    /// The pause between the 32 KiB chunks of a slow body.
    pub slow_pause: Duration,
    /// A pause before every PUT is forwarded: a slow uplink (tests that must catch a job in
    /// the middle).
    pub put_delay: Duration,
}

impl Plan {
    /// Every fault kind at `rate` each.
    pub fn uniform(seed: u64, rate: f64) -> Plan {
        let rates = Fault::ALL.iter().map(|f| (*f, rate)).collect();
        Plan { seed, rates, script: Vec::new(), slow_pause: Duration::from_millis(5), put_delay: Duration::ZERO }
    }

    /// One fault kind for every request.
    pub fn always(fault: Fault) -> Plan {
        Plan {
            seed: 0,
            rates: vec![(fault, 1.0)],
            script: Vec::new(),
            slow_pause: Duration::from_millis(5),
            put_delay: Duration::ZERO,
        }
    }

    /// These faults only: `(class, rank, fault)`, rank 0 being the first request of its class.
    pub fn scripted(script: &[(Class, u64, Fault)]) -> Plan {
        Plan {
            seed: 0,
            rates: Vec::new(),
            script: script.to_vec(),
            slow_pause: Duration::from_millis(5),
            put_delay: Duration::ZERO,
        }
    }

    /// No faults; every PUT waits `delay` before it is forwarded.
    pub fn slow_puts(delay: Duration) -> Plan {
        Plan { put_delay: delay, ..Plan::scripted(&[]) }
    }
}

impl Plan {
    /// The fault of the request of class `c` with rank `rank` (0 for the first of its class).
    pub fn fault_for(&self, c: Class, rank: u64) -> Option<Fault> {
        if let Some((_, _, f)) = self.script.iter().find(|(sc, sr, _)| *sc == c && *sr == rank) {
            return Some(*f);
        }
        let mut h = blake3::Hasher::new();
        h.update(&self.seed.to_le_bytes()).update(c.name().as_bytes()).update(&rank.to_le_bytes());
        let x = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap());
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        for (f, rate) in &self.rates {
            acc += rate;
            if u < acc {
                return Some(*f);
            }
        }
        None
    }
}

const SLOW_CHUNK: usize = 32 << 10;
const TRUNCATE_PAUSE: Duration = Duration::from_millis(20);

/// Counter values at one moment (see `FaultProxy::stats`); subtract two for one command's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Requests received, per class (`Class::ALL` order).
    pub received: [u64; 7],
    /// Requests sent on to the server.
    pub forwarded: [u64; 7],
    /// Answers of the server passed back whole (slow ones included), whatever their status.
    pub delivered: [u64; 7],
    /// Of those, 412 Precondition Failed (a create-only PUT that found the object there).
    pub precondition_failed: [u64; 7],
    /// Faults injected, per fault kind (`Fault::ALL` order) and class.
    pub injected: [[u64; 7]; 7],
    /// Requests the proxy could not forward (the server refused the connection, ...).
    pub upstream_errors: u64,
}

impl Stats {
    pub fn received(&self, c: Class) -> u64 {
        self.received[c.index()]
    }
    pub fn forwarded(&self, c: Class) -> u64 {
        self.forwarded[c.index()]
    }
    pub fn delivered(&self, c: Class) -> u64 {
        self.delivered[c.index()]
    }
    pub fn precondition_failed(&self, c: Class) -> u64 {
        self.precondition_failed[c.index()]
    }
    /// Faults of kind `f`, all classes.
    pub fn injected(&self, f: Fault) -> u64 {
        self.injected[f.index()].iter().sum()
    }
    /// Faults of kind `f` on requests of class `c`.
    pub fn injected_on(&self, f: Fault, c: Class) -> u64 {
        self.injected[f.index()][c.index()]
    }
    /// Faults on class `c` that cost the client another request.
    pub fn retried_faults(&self, c: Class) -> u64 {
        Fault::ALL.iter().filter(|f| f.causes_retry()).map(|f| self.injected_on(*f, c)).sum()
    }
    pub fn total_received(&self) -> u64 {
        self.received.iter().sum()
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        let sub = |a: [u64; 7], b: [u64; 7]| std::array::from_fn(|i| a[i] - b[i]);
        Stats {
            received: sub(self.received, earlier.received),
            forwarded: sub(self.forwarded, earlier.forwarded),
            delivered: sub(self.delivered, earlier.delivered),
            precondition_failed: sub(self.precondition_failed, earlier.precondition_failed),
            injected: std::array::from_fn(|f| sub(self.injected[f], earlier.injected[f])),
            upstream_errors: self.upstream_errors - earlier.upstream_errors,
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_class = |v: &[u64; 7]| {
            Class::ALL
                .iter()
                .filter(|c| v[c.index()] > 0)
                .map(|c| format!("{} {}", c.name(), v[c.index()]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "received [{}], forwarded [{}], delivered [{}] (412: [{}]), injected [{}]",
            per_class(&self.received),
            per_class(&self.forwarded),
            per_class(&self.delivered),
            per_class(&self.precondition_failed),
            Fault::ALL.iter().map(|k| format!("{} {}", k.name(), self.injected(*k))).collect::<Vec<_>>().join(", ")
        )?;
        if self.upstream_errors > 0 {
            write!(f, ", upstream errors {}", self.upstream_errors)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counters {
    received: [AtomicU64; 7],
    forwarded: [AtomicU64; 7],
    delivered: [AtomicU64; 7],
    precondition_failed: [AtomicU64; 7],
    injected: [[AtomicU64; 7]; 7],
    upstream_errors: AtomicU64,
}

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    plan: Plan,
    counters: Counters,
    next_id: AtomicU64,
}

impl State {
    /// The fault (if any) of a request of class `c`; counts it as received.
    fn decide(&self, c: Class) -> Option<Fault> {
        let rank = self.counters.received[c.index()].fetch_add(1, Relaxed);
        self.plan.fault_for(c, rank)
    }

    fn count(&self, which: &[AtomicU64; 7], c: Class) {
        which[c.index()].fetch_add(1, Relaxed);
    }

    fn injected(&self, f: Fault, c: Class) {
        self.counters.injected[f.index()][c.index()].fetch_add(1, Relaxed);
    }
}

type Body = BoxBody<Bytes, std::io::Error>;
type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The running proxy; stops (with its runtime) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listen on 127.0.0.1 at a free port, forwarding to `upstream` (a loopback address).
    pub fn start(upstream: SocketAddr, plan: Plan) -> FaultProxy {
        assert!(upstream.ip().is_loopback(), "the proxy forwards to loopback only, not {upstream}");
        let total: f64 = plan.rates.iter().map(|(_, r)| r).sum();
        assert!(total <= 1.0 + 1e-9, "the fault rates add up to {total} > 1");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { upstream, plan, counters: Counters::default(), next_id: AtomicU64::new(1) });
        runtime.spawn(accept_loop(listener, state.clone()));
        FaultProxy { addr, state, runtime: Some(runtime) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Stats {
        let c = &self.state.counters;
        let load = |a: &[AtomicU64; 7]| std::array::from_fn(|i| a[i].load(Relaxed));
        Stats {
            received: load(&c.received),
            forwarded: load(&c.forwarded),
            delivered: load(&c.delivered),
            precondition_failed: load(&c.precondition_failed),
            injected: std::array::from_fn(|f| load(&c.injected[f])),
            upstream_errors: c.upstream_errors.load(Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        // A second descriptor of the socket, to set SO_LINGER 0 on when a reset is due: the
        // RST goes out when hyper drops the connection and this copy is closed too.
        let Ok(std_tcp) = tcp.into_std() else { continue };
        let Ok(control) = std_tcp.try_clone() else { continue };
        let Ok(tcp) = tokio::net::TcpStream::from_std(std_tcp) else { continue };
        let control = Arc::new(control);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), control.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e: Infallible| match e {}).boxed()
}

/// An S3-style XML error answer.
fn s3_error(state: &State, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let id = state.next_id.fetch_add(1, Relaxed);
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>fault-{id}</RequestId></Error>"
    );
    let mut r = Response::new(full(xml));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    r
}

/// Reset the connection: no answer, an RST once hyper drops it (the error ends it).
fn reset(control: &std::net::TcpStream) -> Result<Response<Body>, HandlerError> {
    socket2::SockRef::from(control).set_linger(Some(Duration::ZERO))?;
    Err("injected connection reset".into())
}

async fn handle(
    state: Arc<State>,
    control: Arc<std::net::TcpStream>,
    req: Request<Incoming>,
) -> Result<Response<Body>, HandlerError> {
    let class = Class::of(&req);
    if class == Class::Put && !state.plan.put_delay.is_zero() {
        tokio::time::sleep(state.plan.put_delay).await;
    }
    let fault = state.decide(class);
    if fault == Some(Fault::ResetBefore) {
        state.injected(Fault::ResetBefore, class);
        return reset(&control);
    }
    let is_head = req.method() == Method::HEAD;
    let is_get = req.method() == Method::GET;
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    match fault {
        Some(Fault::Unavailable) => {
            state.injected(Fault::Unavailable, class);
            return Ok(s3_error(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ));
        }
        Some(Fault::Throttled) => {
            state.injected(Fault::Throttled, class);
            let mut r = s3_error(&state, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests.");
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(r);
        }
        _ => {}
    }

    // Forward, on a fresh connection to the server.
    parts.headers.remove(header::CONNECTION);
    let upstream = match forward(state.upstream, Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(e) => {
            state.counters.upstream_errors.fetch_add(1, Relaxed);
            return Ok(s3_error(&state, StatusCode::BAD_GATEWAY, "BadGateway", &format!("fault proxy: {e}")));
        }
    };
    state.count(&state.counters.forwarded, class);
    let (mut parts, body) = upstream.into_parts();
    let body = body.collect().await?.to_bytes();
    let with_body = is_get && matches!(parts.status.as_u16(), 200 | 206) && body.len() >= 2;
    if !is_head {
        // The body was collected: its length is known, whatever the server's framing was.
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    match fault {
        Some(Fault::ResetAfter) => {
            state.injected(Fault::ResetAfter, class);
            return reset(&control);
        }
        Some(Fault::Internal) => {
            state.injected(Fault::Internal, class);
            return Ok(s3_error(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ));
        }
        Some(Fault::Truncated) if with_body => {
            state.injected(Fault::Truncated, class);
            // Half of the body, a pause (hyper flushes what it has: the head and that half
            // reach the client), then an error: hyper closes the connection mid-body.
            let half = body.slice(..body.len() / 2);
            let frames = futures::stream::unfold(0, move |step| {
                let half = half.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(half)), 1)),
                        1 => {
                            tokio::time::sleep(TRUNCATE_PAUSE).await;
                            let e = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "injected truncation");
                            Some((Err(e), 2))
                        }
                        _ => None,
                    }
                }
            });
            return Ok(Response::from_parts(parts, StreamBody::new(frames).boxed()));
        }
        Some(Fault::Slow) if with_body => {
            state.injected(Fault::Slow, class);
            state.count(&state.counters.delivered, class);
            let pause = state.plan.slow_pause;
            let chunks = futures::stream::unfold(body, move |rest| async move {
                if rest.is_empty() {
                    return None;
                }
                tokio::time::sleep(pause).await;
                let mut rest = rest;
                let chunk = rest.split_to(rest.len().min(SLOW_CHUNK));
                Some((Ok::<_, std::io::Error>(Frame::data(chunk)), rest))
            });
            return Ok(Response::from_parts(parts, StreamBody::new(chunks).boxed()));
        }
        _ => {}
    }
    state.count(&state.counters.delivered, class);
    if parts.status == StatusCode::PRECONDITION_FAILED {
        state.count(&state.counters.precondition_failed, class);
    }
    Ok(Response::from_parts(parts, full(body)))
}

async fn forward(upstream: SocketAddr, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, HandlerError> {
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(send.send_request(req).await?)
}
