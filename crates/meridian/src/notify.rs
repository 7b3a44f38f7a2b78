//! The node's transport for event notifications: POSTs the engine's batches to the operator's
//! webhook targets (`--notify-webhook`) through the shared HTTP client.

use std::time::Duration;

/// Longest a POST may take (the engine bounds each delivery the same way).
const POST_TIMEOUT: Duration = meridian_engine::notify::REQUEST_TIMEOUT;

pub struct WebhookPoster(pub meridian_http::client::Poster);

#[async_trait::async_trait]
impl meridian_engine::notify::WebhookSender for WebhookPoster {
    async fn post(&self, url: &str, body: bytes::Bytes) -> Result<(), String> {
        let status = self.0.post(url, "application/json", body, POST_TIMEOUT).await?;
        if status.is_success() { Ok(()) } else { Err(format!("{url} answered {status}")) }
    }
}
