//! The HTTP API, the same on the unix socket and the mutual-TLS listener: routing, role
//! checks, rate limits, body limits, JSON in and out, streamed downloads, and one audit
//! record per request. See api/openapi.yaml for the routes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

use super::Shared;
use super::audit::Record;
use super::auth::Peer;
use super::jobs::{JobRecord, Kind, ProfileSpec, Status, SubmitError, Work, now_rfc3339};
use super::metrics::{Gauges, Metrics};
use crate::capture::TriggerInfo;
use crate::config::Role;

pub type Body = BoxBody<Bytes, io::Error>;

/// Longest capture reason accepted, in bytes.
const MAX_REASON: usize = 1024;

/// A refused or failed request: the status and a message for a human.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A successful answer and what the audit log should say about it.
struct Reply {
    response: Response<Body>,
    job: Option<String>,
    detail: Option<String>,
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Self {
        Self {
            response,
            job: None,
            detail: None,
        }
    }
}

/// The body of `POST /v1/captures`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody {
    reason: String,
    #[serde(default)]
    profile: Option<ProfileSpec>,
}

/// Answers one request and writes its audit record.
pub async fn handle(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let action = format!("{} {}", req.method(), req.uri().path());
    let mut record = Record {
        time: now_rfc3339(),
        identity: peer.identity.clone(),
        from: peer.from.clone(),
        transport: peer.transport,
        action,
        status: 0,
        job: None,
        detail: None,
    };
    let response = match route(&shared, &peer, req, &record).await {
        Ok(reply) => {
            record.job = reply.job;
            record.detail = reply.detail;
            reply.response
        }
        Err(err) => {
            record.detail = Some(err.message.clone());
            if err.status == StatusCode::FORBIDDEN {
                Metrics::add(&shared.metrics.requests_denied, 1);
            }
            error_response(err)
        }
    };
    record.status = response.status().as_u16();
    Metrics::add(&shared.metrics.requests, 1);
    shared.audit.write(&record);
    tracing::debug!(identity = %record.identity, action = %record.action, status = record.status, "request");
    Ok(response)
}

async fn route(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    record: &Record,
) -> Result<Reply, ApiError> {
    if peer.roles.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "identity {} has no role: add one of its certificate names to [api.roles]",
                peer.identity
            ),
        ));
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let need = |role: Role| {
        if peer.has(role) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} lacks the `{}` role needed for {method} {path}",
                    peer.identity,
                    format!("{role:?}").to_lowercase()
                ),
            ))
        }
    };
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "health"]) => Ok(health(shared).into()),
        (&Method::GET, ["metrics"]) => {
            need(Role::Read)?;
            Ok(metrics(shared).into())
        }
        (&Method::POST, ["v1", "captures"]) => {
            need(Role::Trigger)?;
            create_capture(shared, peer, req, record).await
        }
        (&Method::POST, ["v1", "profiles"]) => {
            need(Role::Trigger)?;
            create_profile(shared, peer, req).await
        }
        (&Method::GET, ["v1", kind @ ("captures" | "profiles")]) => {
            need(Role::Read)?;
            let kind = if *kind == "captures" {
                Kind::Capture
            } else {
                Kind::Profile
            };
            let list = shared.jobs.list(kind);
            Ok(json(StatusCode::OK, &serde_json::json!({ "items": list })).into())
        }
        (&Method::GET, ["v1", kind @ ("captures" | "profiles"), id, rest @ ..]) => {
            need(Role::Read)?;
            let kind = if *kind == "captures" {
                Kind::Capture
            } else {
                Kind::Profile
            };
            let job = shared
                .jobs
                .get(id)
                .filter(|j| j.kind == kind)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no {kind:?} with id {id:?}").to_lowercase(),
                    )
                })?;
            let response = match rest {
                [] => json(StatusCode::OK, &job),
                [file] => download(&job, file, &query).await?,
                _ => return Err(not_found(&path)),
            };
            Ok(Reply {
                response,
                job: Some(job.id),
                detail: None,
            })
        }
        (&Method::POST, ["v1", "reload"]) => {
            need(Role::Admin)?;
            match super::reload(shared) {
                Ok(()) => Ok(json(StatusCode::OK, &serde_json::json!({"reloaded": true})).into()),
                Err(err) => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("reload failed, the old configuration stays in force: {err}"),
                )),
            }
        }
        (
            _,
            ["v1", "health"] | ["metrics"] | ["v1", "captures" | "profiles", ..] | ["v1", "reload"],
        ) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(not_found(&path)),
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such route {path:?}; see api/openapi.yaml"),
    )
}

fn health(shared: &Shared) -> Response<Body> {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": if shared.is_shutting_down() { "stopping" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": shared.started.elapsed().as_secs(),
            "queued": {
                "captures": shared.jobs.queued(Kind::Capture),
                "profiles": shared.jobs.queued(Kind::Profile),
            },
            "running": shared.jobs.running.load(std::sync::atomic::Ordering::Relaxed),
        }),
    )
}

fn metrics(shared: &Shared) -> Response<Body> {
    let mut text = shared.metrics.render(&Gauges {
        capture_queue: shared.jobs.queued(Kind::Capture),
        profile_queue: shared.jobs.queued(Kind::Profile),
        running: shared
            .jobs
            .running
            .load(std::sync::atomic::Ordering::Relaxed),
    });
    if let Some(recorder) = &shared.recorder {
        text.push_str(&recorder.metrics());
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(full(text))
        .expect("static response")
}

/// Takes a rate-limit token for the caller (every POST costs one, valid or not, so a
/// flood of bad requests is limited too).
fn rate_limit(shared: &Shared, peer: &Peer) -> Result<(), ApiError> {
    let api = &shared.config().api;
    shared
        .rate
        .take(&peer.identity, api.rate_burst, api.rate_per_minute)
        .map_err(|wait| {
            Metrics::add(&shared.metrics.rejected_rate_limited, 1);
            ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "rate limit for {}: {} requests, then {} per minute",
                    peer.identity, api.rate_burst, api.rate_per_minute
                ),
                retry_after: Some(wait.as_secs().max(1)),
            }
        })
}

/// Reads a JSON body within the size and time limits and parses it.
async fn read_json<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let api = &shared.config().api;
    let max = api.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {max} bytes ([api] max_body_bytes)"),
        )
    };
    if req.body().size_hint().lower() > max {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), max as usize);
    let body = tokio::time::timeout(
        Duration::from_secs(api.request_timeout_secs),
        limited.collect(),
    )
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {} s",
                api.request_timeout_secs
            ),
        )
    })?
    .map_err(|err| {
        if err.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {err}"),
            )
        }
    })?
    .to_bytes();
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty request body: expected a JSON object",
        ));
    }
    serde_json::from_slice(&body).map_err(|err| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {err}"),
        )
    })
}

fn submit_error(shared: &Shared, err: SubmitError) -> ApiError {
    match err {
        SubmitError::QueueFull { .. } => {
            Metrics::add(&shared.metrics.rejected_queue_full, 1);
            ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: err.to_string(),
                retry_after: Some(30),
            }
        }
        SubmitError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        }
    }
}

async fn create_capture(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    record: &Record,
) -> Result<Reply, ApiError> {
    rate_limit(shared, peer)?;
    let body: CaptureBody = read_json(shared, req).await?;
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`reason` must be 1 to {MAX_REASON} bytes of text"),
        ));
    }
    let config = shared.config();
    if let Some(profile) = &body.profile {
        profile
            .validate(config.daemon.max_profile_seconds)
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, format!("profile: {m}")))?;
    }
    let mut job = JobRecord::new(
        Kind::Capture,
        reason.clone(),
        peer.identity.clone(),
        peer.from.clone(),
    );
    job.profile = body.profile.clone();
    let id = job.id.clone();
    // Chain of custody: the manifest names who asked, from where, and carries the audit
    // record of this request (its status is the 202 it is about to get).
    let mut audit = record.clone();
    audit.status = StatusCode::ACCEPTED.as_u16();
    audit.job = Some(id.clone());
    audit.detail = Some(reason.clone());
    let trigger = TriggerInfo {
        how: "api".into(),
        who: Some(peer.identity.clone()),
        details: BTreeMap::from([
            ("from".to_owned(), peer.from.clone()),
            ("transport".to_owned(), peer.transport.to_owned()),
            ("job".to_owned(), id.clone()),
            ("audit".to_owned(), audit.to_json()),
        ]),
    };
    let work = Work::Capture {
        id: id.clone(),
        reason: reason.clone(),
        trigger,
        profile: body.profile,
    };
    shared
        .jobs
        .submit(job, work, config.daemon.keep_jobs)
        .map_err(|e| submit_error(shared, e))?;
    tracing::info!(job = %id, identity = %peer.identity, from = %peer.from, %reason, "capture queued");
    Ok(Reply {
        response: accepted(&id, "captures"),
        job: Some(id),
        detail: Some(reason),
    })
}

async fn create_profile(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Reply, ApiError> {
    rate_limit(shared, peer)?;
    let spec: ProfileSpec = read_json(shared, req).await?;
    let config = shared.config();
    spec.validate(config.daemon.max_profile_seconds)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let reason = spec.reason.clone().unwrap_or_default();
    let mut job = JobRecord::new(
        Kind::Profile,
        reason.clone(),
        peer.identity.clone(),
        peer.from.clone(),
    );
    job.profile = Some(spec.clone());
    let id = job.id.clone();
    shared
        .jobs
        .submit(
            job,
            Work::Profile {
                id: id.clone(),
                spec,
            },
            config.daemon.keep_jobs,
        )
        .map_err(|e| submit_error(shared, e))?;
    tracing::info!(job = %id, identity = %peer.identity, "profile queued");
    Ok(Reply {
        response: accepted(&id, "profiles"),
        job: Some(id),
        detail: (!reason.is_empty()).then_some(reason),
    })
}

fn accepted(id: &str, kind: &str) -> Response<Body> {
    let mut response = json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "id": id, "status": "queued", "url": format!("/v1/{kind}/{id}") }),
    );
    if let Ok(location) = format!("/v1/{kind}/{id}").parse() {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    response
}

/// `archive`/`signature` of a capture, `svg`/`folded`/`summary` of a profile.
async fn download(job: &JobRecord, what: &str, query: &str) -> Result<Response<Body>, ApiError> {
    if job.status != Status::Done {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} is {}, not done",
                job.id,
                format!("{:?}", job.status).to_lowercase()
            ),
        ));
    }
    let missing =
        |what: &str| ApiError::new(StatusCode::NOT_FOUND, format!("{} has no {what}", job.id));
    match (job.kind, what) {
        (Kind::Capture, "archive") => {
            let path = job
                .paths
                .archive
                .as_ref()
                .ok_or_else(|| missing("archive"))?;
            stream_file(path, "application/zstd").await
        }
        (Kind::Capture, "signature") => {
            let path = job
                .paths
                .signature
                .as_ref()
                .ok_or_else(|| missing("signature (it was captured unsigned)"))?;
            stream_file(path, "text/plain; charset=utf-8").await
        }
        (Kind::Profile, "summary") => Ok(Response::builder()
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(job.summary.clone().unwrap_or_default()))
            .expect("static response")),
        (Kind::Profile, ext @ ("svg" | "folded")) => {
            let mode = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("mode="))
                .unwrap_or("cpu");
            if !super::jobs::SUPPORTED_MODES.contains(&mode) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown mode {mode:?}"),
                ));
            }
            let dir = job.paths.profile_dir.as_ref().ok_or_else(|| missing(ext))?;
            let content_type = if ext == "svg" {
                "image/svg+xml"
            } else {
                "text/plain; charset=utf-8"
            };
            stream_file(&dir.join(format!("{mode}.{ext}")), content_type).await
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {what:?} for a {:?}", job.kind).to_lowercase(),
        )),
    }
}

async fn stream_file(path: &Path, content_type: &str) -> Result<Response<Body>, ApiError> {
    let open = async {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        io::Result::Ok((file, len))
    };
    let (file, len) = open.await.map_err(|err| {
        if err.kind() == io::ErrorKind::NotFound {
            ApiError::new(
                StatusCode::GONE,
                "the file was removed (retention, or by hand)",
            )
        } else {
            tracing::error!(path = %path.display(), "cannot open for download: {err}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file")
        }
    })?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(CONTENT_LENGTH, len)
        .header(
            http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .body(FileBody::new(file, len).boxed())
        .expect("valid headers"))
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).expect("JSON serializes");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(text))
        .expect("static response")
}

fn error_response(err: ApiError) -> Response<Body> {
    let mut response = json(err.status, &serde_json::json!({ "error": err.message }));
    if let Some(secs) = err.retry_after {
        response.headers_mut().insert(RETRY_AFTER, secs.into());
    }
    response
}

/// A file streamed in 64 KiB frames, its length fixed when it was opened.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64) -> Self {
        Self {
            file,
            remaining: len,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        let mut buf = ReadBuf::new(&mut this.buf[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut buf))?;
        let filled = buf.filled();
        if filled.is_empty() {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was sent",
            ))));
        }
        this.remaining -= filled.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(filled)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
