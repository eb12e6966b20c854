//! The signature a receiver verifies an alert by, in the style of GitHub's
//! `X-Hub-Signature-256` and Slack's signed requests:
//!
//! ```text
//! X-Scientist-Timestamp: <unix seconds when this try was sent>
//! X-Scientist-Signature-256: sha256=<lower-case hex of HMAC-SHA256(secret, "<timestamp>." + body)>
//! ```
//!
//! The signed payload is the timestamp header's value, a full stop, then the exact bytes of
//! the body: a receiver that also refuses old timestamps (say, more than 5 minutes away
//! from its clock) is safe from replays of a captured request.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-scientist-timestamp";
pub const SIGNATURE_HEADER: &str = "x-scientist-signature-256";

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Lower-case hex, as the header carries it.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HMAC itself: RFC 4231 test case 2 (key "Jefe").
    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want for nothing?");
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(hex(&mac.finalize().into_bytes()), expected);
    }

    /// The framing, against Python's own hmac:
    /// `python3 -c 'import hmac,hashlib; print(hmac.new(b"s3cret", b"1761159600.{\"a\":1}", hashlib.sha256).hexdigest())'`
    #[test]
    fn signs_timestamp_dot_body_as_python_verifies_it() {
        assert_eq!(
            signature(b"s3cret", 1_761_159_600, br#"{"a":1}"#),
            "sha256=e4baf6be970ae5070e94fd2e5f254b186b633bd8bf2d0024a77e4db701c8452f"
        );
    }
}
