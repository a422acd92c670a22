//! The client side of the API, for `hindsight trigger`: one HTTP/1.1 request per
//! connection, over the local unix socket or over mutual TLS to `https://host:port`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an https://HOST[:PORT] URL")]
    BadUrl(String),
    #[error("connecting to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {target} (is our certificate signed by the agent's [api] ca?)")]
    Handshake {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {target}")]
    Http {
        target: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{target} answered {status}: {message}")]
    Status {
        target: String,
        status: StatusCode,
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{target} sent invalid JSON")]
    Json {
        target: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {target} within {secs} s")]
    Timeout { target: String, secs: u64 },
}

/// Where an agent is.
#[derive(Clone)]
pub enum Target {
    Unix(PathBuf),
    Https {
        /// `host:port`, for connecting and for messages.
        authority: String,
        server_name: ServerName<'static>,
        tls: tokio_rustls::TlsConnector,
    },
}

impl Target {
    /// `https://host[:port]` (port 7443 when absent) with our TLS client config.
    pub fn https(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || !matches!(uri.path(), "" | "/") {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?;
        let port = uri.port_u16().unwrap_or(7443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned()).map_err(|_| bad())?;
        Ok(Self::Https {
            authority: format!("{host}:{port}"),
            server_name,
            tls: tokio_rustls::TlsConnector::from(tls),
        })
    }

    /// How the result table names this agent.
    pub fn name(&self) -> String {
        match self {
            Target::Unix(path) => format!("local ({})", path.display()),
            Target::Https { authority, .. } => authority.clone(),
        }
    }
}

/// An answer whose body is still to be read.
pub struct Answer {
    pub status: StatusCode,
    /// Seconds, from a 429's Retry-After.
    pub retry_after: Option<u64>,
    pub body: hyper::body::Incoming,
}

/// One request with an optional JSON body; the answer's body is not read.
pub async fn send(
    target: &Target,
    method: Method,
    path: &str,
    json: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    tokio::time::timeout(timeout, send_inner(target, method, path, json))
        .await
        .map_err(|_| ClientError::Timeout {
            target: target.name(),
            secs: timeout.as_secs(),
        })?
}

async fn send_inner(
    target: &Target,
    method: Method,
    path: &str,
    json: Option<&serde_json::Value>,
) -> Result<Answer, ClientError> {
    let name = target.name();
    let body = match json {
        Some(v) => Bytes::from(serde_json::to_vec(v).expect("JSON serializes")),
        None => Bytes::new(),
    };
    let host = match target {
        Target::Unix(_) => "localhost".to_owned(),
        Target::Https { authority, .. } => authority.clone(),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(
            http::header::USER_AGENT,
            concat!("hindsight/", env!("CARGO_PKG_VERSION")),
        );
    if json.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(body))
        .map_err(|_| ClientError::BadUrl(path.to_owned()))?;
    let http_err = |source| ClientError::Http {
        target: name.clone(),
        source,
    };
    let response = match target {
        Target::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Connect {
                    target: name.clone(),
                    source,
                })?;
            exchange(stream, request).await.map_err(http_err)?
        }
        Target::Https {
            authority,
            server_name,
            tls,
        } => {
            let tcp = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|source| ClientError::Connect {
                    target: name.clone(),
                    source,
                })?;
            let stream = tls
                .connect(server_name.clone(), tcp)
                .await
                .map_err(|source| ClientError::Handshake {
                    target: name.clone(),
                    source,
                })?;
            exchange(stream, request).await.map_err(http_err)?
        }
    };
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok(Answer {
        retry_after,
        status: response.status(),
        body: response.into_body(),
    })
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!("connection: {err}");
        }
    });
    sender.send_request(request).await
}

/// A request whose answer must be 2xx JSON; other answers become
/// [`ClientError::Status`] with the server's `error` message.
pub async fn json(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let answer = send(target, method, path, body, timeout).await?;
    let status = answer.status;
    let bytes = collect(target, answer.body).await?;
    if !status.is_success() {
        return Err(status_error(target, status, &bytes, answer.retry_after));
    }
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Json {
        target: target.name(),
        source,
    })
}

async fn collect(target: &Target, body: hyper::body::Incoming) -> Result<Bytes, ClientError> {
    Ok(body
        .collect()
        .await
        .map_err(|source| ClientError::Http {
            target: target.name(),
            source,
        })?
        .to_bytes())
}

fn status_error(
    target: &Target,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<u64>,
) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    ClientError::Status {
        target: target.name(),
        status,
        message,
        retry_after,
    }
}

/// Streams `path` into `dest` (written as `.NAME.partial`, then renamed); returns the
/// bytes written.
pub async fn download(
    target: &Target,
    path: &str,
    dest: &Path,
    timeout: Duration,
) -> Result<u64, ClientError> {
    let answer = send(target, Method::GET, path, None, timeout).await?;
    if !answer.status.is_success() {
        let status = answer.status;
        let bytes = collect(target, answer.body).await?;
        return Err(status_error(target, status, &bytes, None));
    }
    let write_err = |source| ClientError::Write {
        path: dest.to_owned(),
        source,
    };
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let partial = dest.with_file_name(format!(".{name}.partial"));
    let mut file = tokio::fs::File::create(&partial).await.map_err(write_err)?;
    let mut body = answer.body;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| ClientError::Http {
            target: target.name(),
            source,
        })?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.map_err(write_err)?;
            written += data.len() as u64;
        }
    }
    file.sync_all().await.map_err(write_err)?;
    drop(file);
    tokio::fs::rename(&partial, dest).await.map_err(write_err)?;
    Ok(written)
}
