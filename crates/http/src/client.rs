//! The HTTP client side every Meridian client shares (node-to-node fetches and forwarding, the
//! KV client, the admin CLI): `http://` and `https://` URLs through one connector that trusts
//! the system's roots plus an optional CA file.

use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::tls::ClientTls;

/// A connector for `http://` and `https://` URLs.
pub type Connector = HttpsConnector<HttpConnector>;

/// A connector with TCP_NODELAY and a connect timeout; `https://` URLs are verified against
/// `tls`. `http1_only` keeps ALPN to HTTP/1.1 for clients built without HTTP/2.
pub fn connector(tls: &ClientTls, connect_timeout: Duration, http1_only: bool) -> Connector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls.config()).clone()).https_or_http();
    if http1_only {
        builder.enable_http1().wrap_connector(http)
    } else {
        builder.enable_all_versions().wrap_connector(http)
    }
}

/// Posts bodies to `http://` and `https://` URLs and reports the answer's status: the client
/// of outgoing webhooks (event notifications).
#[derive(Clone)]
pub struct Poster {
    client: hyper_util::client::legacy::Client<Connector, http_body_util::Full<bytes::Bytes>>,
}

impl Poster {
    pub fn new(tls: &ClientTls, connect_timeout: Duration) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector(tls, connect_timeout, false));
        Poster { client }
    }

    /// POSTs `body` (of `content_type`, with `authorization` if any) to `url` and reads the
    /// answer's body away, all within `timeout`; the answer's status, or why there was none.
    pub async fn post(
        &self,
        url: &str,
        content_type: &str,
        authorization: Option<&str>,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<http::StatusCode, String> {
        let mut request = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let request =
            request.body(http_body_util::Full::new(body)).map_err(|e| format!("bad request to {url}: {e}"))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status();
            http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| format!("{url}: {e}"))?;
            Ok(status)
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no answer within {timeout:?}"))?
    }
}
