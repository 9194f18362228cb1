//! The ways an encoded `ExportTraceServiceRequest` reaches the collector: an HTTP/1.1 POST
//! (hyper's pooled client, keep-alive) or a gRPC unary call (tonic's channel, with a codec
//! that writes the bytes as they are), on the exporter thread's runtime; in plain text to an
//! `http://` endpoint, over TLS (hyper-rustls' connector) to an `https://` one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::encode::percent_decode;
use super::{
    CollectorTls, ExportError, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY,
};
use crate::config::OtlpProtocol;

/// The gRPC method of the collector's trace service.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A connection to the collector. Built inside the runtime (tonic's lazy channel spawns its
/// worker there); it connects on the first export and again after a failure.
pub(super) enum Transport {
    Http {
        /// Boxed: the one transport of the exporter thread, whose variants differ in size.
        client: Box<HttpClient>,
        uri: http::Uri,
        headers: http::HeaderMap,
    },
    Grpc {
        client: tonic::client::Grpc<Channel>,
        timeout: Duration,
        /// The request buffer, handed back by the codec once written.
        returned: Arc<Mutex<Option<Vec<u8>>>>,
        metadata: MetadataMap,
    },
}

/// hyper's client, to an `http://` or an `https://` collector.
pub(super) enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// What a transport is built from, checked before the exporter's thread starts: the
/// resolved endpoint, its headers, and the TLS configuration of an `https://` one.
pub(super) struct Prepared {
    pub(super) endpoint: String,
    pub(super) headers: Headers,
    pub(super) tls: Option<rustls::ClientConfig>,
}

/// The headers of `OTEL_EXPORTER_OTLP_HEADERS` (`key=value,key=value`, both sides
/// percent-decoded and trimmed), checked when the exporter starts: as HTTP headers, and as
/// the gRPC metadata they become (names in lower case).
#[derive(Debug, Default)]
pub(super) struct Headers {
    pub(super) http: http::HeaderMap,
    pub(super) grpc: MetadataMap,
}

impl Headers {
    pub(super) fn parse(list: Option<&str>) -> Result<Headers, ExportError> {
        let mut headers = Headers::default();
        for (n, entry) in list.unwrap_or("").split(',').enumerate() {
            if entry.trim().is_empty() {
                continue;
            }
            // Its text is not repeated: it may be a credential.
            let Some((name, value)) = entry.split_once('=') else {
                return Err(ExportError::InvalidHeaders(format!(
                    "entry {} is not key=value",
                    n + 1
                )));
            };
            let (name, value) = (percent_decode(name.trim()), percent_decode(value.trim()));
            let bad = |what: &str| ExportError::InvalidHeaders(format!("`{name}`: {what}"));
            // http takes any byte but controls; gRPC metadata and most servers want ASCII.
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                return Err(bad("its value is not printable ASCII"));
            }
            let http_name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("not a valid header name"))?;
            let http_value = http::HeaderValue::from_str(&value)
                .map_err(|_| bad("its value is not printable ASCII"))?;
            let key = MetadataKey::<Ascii>::from_bytes(http_name.as_str().as_bytes())
                .map_err(|_| bad("not a valid gRPC metadata key"))?;
            let meta_value = MetadataValue::<Ascii>::try_from(value.as_str())
                .map_err(|_| bad("its value is not printable ASCII"))?;
            headers.http.append(http_name, http_value);
            headers.grpc.append(key, meta_value);
        }
        Ok(headers)
    }
}

/// The rustls configuration for an `https://` collector (the connector sets the ALPN
/// protocols): see [`crate::tls::collector_client_config`].
pub(super) fn tls_config(tls: &CollectorTls) -> Result<rustls::ClientConfig, ExportError> {
    let client = match (&tls.client_certificate, &tls.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(ExportError::Tls(format!(
                "{OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE} and {OTEL_EXPORTER_OTLP_CLIENT_KEY} go \
                 together, and only one of them is set"
            )));
        }
    };
    crate::tls::collector_client_config(tls.certificate.as_deref(), client)
        .map_err(|e| ExportError::Tls(e.to_string()))
}

impl Transport {
    /// A transport to the prepared endpoint (an `http://` or `https://` URL), sending its
    /// headers (see [`Headers`]) with every request.
    pub(super) fn new(
        protocol: OtlpProtocol,
        prepared: Prepared,
        timeout: Duration,
    ) -> Result<Transport, ExportError> {
        let build = |e: String| ExportError::Build(e);
        let Prepared {
            endpoint,
            headers,
            tls,
        } = prepared;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // The TLS connector hands it https:// URLs.
        connector.enforce_http(tls.is_none());
        let https = |config| {
            HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
        };
        match protocol {
            OtlpProtocol::Http => {
                let uri: http::Uri = endpoint.parse().map_err(|e| build(format!("{e}")))?;
                let mut builder = Client::builder(TokioExecutor::new());
                builder.pool_max_idle_per_host(1);
                let client = match tls {
                    None => HttpClient::Plain(builder.build(connector)),
                    Some(config) => HttpClient::Tls(
                        builder.build(https(config).enable_http1().wrap_connector(connector)),
                    ),
                };
                Ok(Transport::Http {
                    client: Box::new(client),
                    uri,
                    headers: headers.http,
                })
            }
            OtlpProtocol::Grpc => {
                let endpoint = Endpoint::from_shared(endpoint)
                    .map_err(|e| build(e.to_string()))?
                    .tcp_nodelay(true)
                    .connect_timeout(timeout)
                    .timeout(timeout);
                let channel = match tls {
                    None => endpoint.connect_lazy(),
                    // HTTP/2 is agreed on by ALPN (`h2`), as gRPC over TLS asks.
                    Some(config) => endpoint.connect_with_connector_lazy(
                        https(config).enable_http2().wrap_connector(connector),
                    ),
                };
                Ok(Transport::Grpc {
                    client: tonic::client::Grpc::new(channel),
                    timeout,
                    returned: Arc::new(Mutex::new(None)),
                    metadata: headers.grpc,
                })
            }
        }
    }

    /// Sends `body` (an encoded request). Returns the outcome and, when it could be taken
    /// back, the buffer for the next request.
    pub(super) async fn send(&mut self, body: Vec<u8>) -> (Result<(), String>, Option<Vec<u8>>) {
        match self {
            Transport::Http {
                client,
                uri,
                headers,
            } => {
                let body = Bytes::from(body);
                let result = match client.as_ref() {
                    HttpClient::Plain(client) => post(client, uri, headers, body.clone()).await,
                    HttpClient::Tls(client) => post(client, uri, headers, body.clone()).await,
                };
                // Unique again once hyper has dropped its handle: the allocation is reused.
                let back = body.try_into_mut().ok().map(Vec::from);
                (result, back)
            }
            Transport::Grpc {
                client,
                timeout,
                returned,
                metadata,
            } => {
                let result = grpc_export(client, *timeout, returned, metadata, body).await;
                let back = returned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                (result, back)
            }
        }
    }
}

async fn post<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Full<Bytes>>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<(), String> {
    let mut request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request.headers_mut().append(name, value.clone());
    }
    let response = client.request(request).await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    })?;
    let status = response.status();
    // Read the body to its end, so that the connection goes back to the pool.
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame.map_err(|e| format!("reading the response: {e}"))?;
    }
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {status}"))
    }
}

async fn grpc_export(
    client: &mut tonic::client::Grpc<Channel>,
    timeout: Duration,
    returned: &Arc<Mutex<Option<Vec<u8>>>>,
    metadata: &MetadataMap,
    body: Vec<u8>,
) -> Result<(), String> {
    client.ready().await.map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(body);
    *request.metadata_mut() = metadata.clone();
    request.set_timeout(timeout);
    let codec = RawCodec {
        returned: Arc::clone(returned),
    };
    client
        .unary::<Vec<u8>, (), _>(request, PathAndQuery::from_static(GRPC_EXPORT_PATH), codec)
        .await
        .map(drop)
        .map_err(|status| format!("{}: {}", status.code(), status.message()))
}

/// A codec for a request already encoded: its bytes are written as they are (and the buffer
/// handed back); the response (an `ExportTraceServiceResponse`, whose partial-success
/// details pglink does not use) is skipped.
struct RawCodec {
    returned: Arc<Mutex<Option<Vec<u8>>>>,
}

struct RawEncoder {
    returned: Arc<Mutex<Option<Vec<u8>>>>,
}

struct SkipDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = SkipDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder {
            returned: Arc::clone(&self.returned),
        }
    }

    fn decoder(&mut self) -> SkipDecoder {
        SkipDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        *self.returned.lock().unwrap_or_else(PoisonError::into_inner) = Some(item);
        Ok(())
    }
}

impl Decoder for SkipDecoder {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_percent_decoded_trimmed_and_checked() {
        let h = Headers::parse(Some(" a=b, X-Key = v%20w%2Cx ,,k=")).unwrap();
        let http: Vec<(String, String)> = h
            .http
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let want = [("a", "b"), ("x-key", "v w,x"), ("k", "")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(http, want);
        assert_eq!(h.grpc.len(), 3);
        assert_eq!(h.grpc.get("x-key").unwrap().to_str().unwrap(), "v w,x");
        assert!(Headers::parse(None).unwrap().http.is_empty());
        assert!(Headers::parse(Some(" , ")).unwrap().http.is_empty());
        for bad in ["novalue", "=v", "a b=c", "k=caf%C3%A9", "k=a\u{7f}"] {
            let err = Headers::parse(Some(bad)).unwrap_err();
            assert!(matches!(err, ExportError::InvalidHeaders(_)), "{bad}");
        }
        let err = Headers::parse(Some("a=1,secret")).unwrap_err().to_string();
        assert!(err.contains("entry 2") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn http_body_buffer_comes_back_without_a_copy() {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(b"request");
        let ptr = buf.as_ptr();
        let body = Bytes::from(buf);
        let sent = body.clone();
        drop(sent);
        let back = body.try_into_mut().ok().map(Vec::from).unwrap();
        assert_eq!(
            (back.as_ptr(), back.capacity(), &back[..]),
            (ptr, 4096, &b"request"[..])
        );
    }
}
