//! One POST of one alert to one webhook.

use sha2::{Digest, Sha256};

use super::sign::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER, hex};
use crate::time::Timestamp;

/// The header that carries `<run id>:<mark id>`, the same on every try of one alert.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// A webhook alerts are POSTed to.
#[derive(Clone)]
pub struct Webhook {
    url: reqwest::Url,
    fingerprint: String,
}

impl Webhook {
    /// An http or https URL.
    pub fn parse(text: &str) -> Result<Webhook, String> {
        let url =
            reqwest::Url::parse(text.trim()).map_err(|err| format!("{err}: write a URL such as https://host/path"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("not an http(s) URL with a host".to_owned());
        }
        // Short and one-way: a mark's `sentTo` names webhooks without revealing their URLs.
        let fingerprint = hex(&Sha256::digest(url.as_str().as_bytes())[..8]);
        Ok(Webhook { url, fingerprint })
    }

    /// What a mark's `sentTo` records for this webhook.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What logs and errors call it: its host, never the URL (Slack's carries its secret).
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or("?")
    }
}

/// By its host only, as everywhere it is shown.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("host", &self.host()).finish_non_exhaustive()
    }
}

/// POSTs `body` to `webhook`, signed with `secret` when there is one. Ok on a 2xx answer;
/// else why not, in words that name the webhook by its host only.
pub async fn post(
    client: &reqwest::Client,
    webhook: &Webhook,
    key: &str,
    body: &[u8],
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let mut request = client
        .post(webhook.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_HEADER, key)
        .body(body.to_vec());
    if let Some(secret) = secret {
        let timestamp = Timestamp::now().millis().div_euclid(1000);
        request = request
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, sign::signature(secret, timestamp, body));
    }
    let host = webhook.host();
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(format!("{host} answered {}", answer.status())),
        Err(err) => Err(format!("{host}: {}", crate::errors::chain(&err.without_url()))),
    }
}
