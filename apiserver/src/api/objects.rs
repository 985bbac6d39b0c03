//! Object metadata helpers: UIDs, generated names, timestamps, JSON access.
//! Per-kind rules are in [`super::strategy`], the API rules in `berth-api`.

use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult};

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS RNG failing is not recoverable; fall back to time-derived bytes.
    if getrandom::fill(&mut buf).is_err() {
        let t = jiff::Timestamp::now().as_nanosecond();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
    buf
}

/// A new random (version 4) UUID.
pub fn new_uid() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A 5-character suffix for `generateName` (kube's alphabet: no vowels, no
/// confusable characters).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(5)
        .into_iter()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The current time as an RFC 3339 timestamp with second precision (`2024-01-01T00:00:00Z`).
pub fn now_rfc3339() -> String {
    format_time(jiff::Timestamp::now())
}

/// Format a timestamp the way Kubernetes serialises `metav1.Time`.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parse a `metav1.Time`.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// A boolean query parameter as kube-apiserver decodes it
/// (apimachinery's `Convert_Slice_string_To_bool`, for a parameter that is
/// present): "0" and "false" in any case are false, everything else (`true`,
/// `True`, `1`, even the empty string) is true. The Python client sends
/// `watch=True`.
pub fn query_flag(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

/// `metadata` of an object as a mutable map (created when missing).
pub fn meta_mut(obj: &mut Value) -> ApiResult<&mut Map<String, Value>> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("the object is not a JSON object".into()))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    m.as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata is not a JSON object".into()))
}

/// A string at a JSON pointer, or "".
pub fn str_at<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(new_uid().len(), 36);
        assert_eq!(name_suffix().len(), 5);
    }
}
