//! The ways an encoded `ExportTraceServiceRequest` reaches the collector: an HTTP/1.1 POST
//! (hyper's pooled client, keep-alive) or a gRPC unary call (tonic's channel, with a codec
//! that writes the bytes as they are), both plain text, on the exporter thread's runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

use super::ExportError;
use crate::config::OtlpProtocol;

/// The gRPC method of the collector's trace service.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A connection to the collector. Built inside the runtime (tonic's lazy channel spawns its
/// worker there); it connects on the first export and again after a failure.
pub(super) enum Transport {
    Http {
        client: Client<HttpConnector, Full<Bytes>>,
        uri: http::Uri,
    },
    Grpc {
        client: tonic::client::Grpc<Channel>,
        timeout: Duration,
        /// The request buffer, handed back by the codec once written.
        returned: Arc<Mutex<Option<Vec<u8>>>>,
    },
}

impl Transport {
    /// A transport to `endpoint` (already resolved: an `http://` URL).
    pub(super) fn new(
        protocol: OtlpProtocol,
        endpoint: &str,
        timeout: Duration,
    ) -> Result<Transport, ExportError> {
        let build = |e: String| ExportError::Build(e);
        match protocol {
            OtlpProtocol::Http => {
                let uri: http::Uri = endpoint.parse().map_err(|e| build(format!("{e}")))?;
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(timeout));
                let client = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build(connector);
                Ok(Transport::Http { client, uri })
            }
            OtlpProtocol::Grpc => {
                let channel = Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|e| build(e.to_string()))?
                    .tcp_nodelay(true)
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok(Transport::Grpc {
                    client: tonic::client::Grpc::new(channel),
                    timeout,
                    returned: Arc::new(Mutex::new(None)),
                })
            }
        }
    }

    /// Sends `body` (an encoded request). Returns the outcome and, when it could be taken
    /// back, the buffer for the next request.
    pub(super) async fn send(&mut self, body: Vec<u8>) -> (Result<(), String>, Option<Vec<u8>>) {
        match self {
            Transport::Http { client, uri } => {
                let body = Bytes::from(body);
                let result = post(client, uri, body.clone()).await;
                // Unique again once hyper has dropped its handle: the allocation is reused.
                let back = body.try_into_mut().ok().map(Vec::from);
                (result, back)
            }
            Transport::Grpc {
                client,
                timeout,
                returned,
            } => {
                let result = grpc_export(client, *timeout, returned, body).await;
                let back = returned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                (result, back)
            }
        }
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
    body: Bytes,
) -> Result<(), String> {
    let request = http::Request::post(uri.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
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
    body: Vec<u8>,
) -> Result<(), String> {
    client.ready().await.map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(body);
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
