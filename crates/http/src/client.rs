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
