//! The node's transport for event notifications: POSTs the engine's batches to the operator's
//! webhook targets (`--notify-webhook`) through the shared HTTP client.

use std::collections::BTreeMap;
use std::time::Duration;

/// Longest a POST may take (the engine bounds each delivery the same way).
const POST_TIMEOUT: Duration = meridian_engine::notify::REQUEST_TIMEOUT;

pub struct WebhookPoster {
    pub poster: meridian_http::client::Poster,
    /// `Authorization` values by target name (`Bearer <token>`), from `--notify-webhook-token`.
    pub authorizations: BTreeMap<String, String>,
}

#[async_trait::async_trait]
impl meridian_engine::notify::WebhookSender for WebhookPoster {
    async fn post(&self, target: &str, url: &str, body: bytes::Bytes) -> Result<(), String> {
        let authorization = self.authorizations.get(target).map(String::as_str);
        let status = self.poster.post(url, "application/json", authorization, body, POST_TIMEOUT).await?;
        if status.is_success() { Ok(()) } else { Err(format!("{url} answered {status}")) }
    }
}
