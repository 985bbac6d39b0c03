//! Fuzz targets for the parsers that take hostile input (issue 11): one
//! function per target, each taking arbitrary bytes. A target never panics on
//! any input; when it does, that is the bug (in the code under test, or in
//! one of the cheap invariants a target checks after parsing).
//!
//! - [`manifest`]: a static-pod manifest file, as the agent's file source
//!   reads it (`parse_manifest`, YAML and JSON);
//! - [`quantity`]: `berth-api`'s quantity parser, its canonical text, its
//!   rounding and its checked arithmetic;
//! - [`request`]: an API server create/update body (JSON or protobuf), decoded,
//!   checked and prepared as the handlers do, then validated;
//! - [`patch`]: JSON patch, merge patch and strategic merge patch;
//! - [`spdy`]: the SPDY/3 frame decoder with its zlib header blocks.
//!
//! The same functions are driven by `berth-fuzz` (stable toolchain, no
//! coverage), replayed by `tests/regressions.rs`, and called by the
//! cargo-fuzz targets in `fuzz/libfuzzer/` for coverage-guided runs by hand.

use std::path::{Path, PathBuf};

use berth_agent::source::manifest::{MAX_REASON_BYTES, parse_manifest};
use berth_agent::streaming::spdy::{self, Decoder, Encoder, Frame, RecvWindows, SendWindows};
use berth_api::quantity::{self, Quantity};
use berth_apiserver::api::handlers::decode_request_body;
use berth_apiserver::api::patch::{self, PatchType};
use berth_apiserver::api::resources::{RESOURCES, Resource};
use berth_apiserver::api::strategy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use serde_json::Value;

/// One fuzz target: its name (the corpus directory), its function, the
/// largest input the driver gives it, and tokens its format is made of.
pub struct Target {
    /// The name on the command line and of `corpus/<name>/`.
    pub name: &'static str,
    /// The function under test.
    pub run: fn(&[u8]),
    /// The largest input the driver makes (longer seeds are cut).
    pub max_len: usize,
    /// Format-aware tokens the driver inserts.
    pub dictionary: &'static [&'static [u8]],
}

/// Every target, in the order `--all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "manifest",
        run: manifest,
        max_len: 64 * 1024,
        dictionary: YAML_JSON_TOKENS,
    },
    Target {
        name: "quantity",
        run: quantity,
        max_len: 256,
        dictionary: QUANTITY_TOKENS,
    },
    Target {
        name: "request",
        run: request,
        max_len: 64 * 1024,
        dictionary: REQUEST_TOKENS,
    },
    Target {
        name: "patch",
        run: patch,
        max_len: 64 * 1024,
        dictionary: PATCH_TOKENS,
    },
    Target {
        name: "spdy",
        run: spdy,
        max_len: 64 * 1024,
        dictionary: SPDY_TOKENS,
    },
];

/// The target called `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The checked-in inputs of `target` under the fuzz directory `dir`: the
/// files of `corpus/<target>/`, then of `regressions/<target>/`, each sorted
/// by name (a missing directory has none). The driver starts from them and
/// `tests/regressions.rs` replays them, in this order.
pub fn input_files(dir: &Path, target: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        out.extend(paths);
    }
    out
}

const YAML_JSON_TOKENS: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!binary ",
    b"!!str ",
    b"!!int ",
    b"!!float ",
    b"!!map ",
    b"? ",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"|\n  ",
    b">-\n  ",
    b"- ",
    b": ",
    b"\n  ",
    b"\t",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"\"",
    b"'",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"~",
    b"true",
    b"yes",
    b"0o777",
    b"0644",
    b"0x7fffffff",
    b".inf",
    b".nan",
    b"1e309",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"apiVersion: v1\n",
    b"kind: Pod\n",
    b"metadata:\n  name: p\n",
    b"\"containers\":",
    b"containers:\n- name: c\n  image: i\n",
    b"resources:\n  limits:\n    cpu: ",
    b"ports:\n- containerPort: ",
    b"volumes:\n- name: v\n  hostPath:\n    path: /\n",
    b"env:\n- name: E\n  valueFrom:\n    fieldRef:\n      fieldPath: ",
    b"hostPort: 65536",
    b"activeDeadlineSeconds: -1",
    b"terminationGracePeriodSeconds: 9223372036854775807",
    b"uid: ",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"\xff",
];

const QUANTITY_TOKENS: &[&[u8]] = &[
    b"Ki",
    b"Mi",
    b"Gi",
    b"Ti",
    b"Pi",
    b"Ei",
    b"n",
    b"u",
    b"m",
    b"k",
    b"M",
    b"G",
    b"T",
    b"P",
    b"E",
    b"e",
    b"E+",
    b"e-",
    b"e1000",
    b"e-1000",
    b"e2147483647",
    b"e-2147483648",
    b".",
    b"-",
    b"+",
    b"0",
    b"9",
    b"000000000",
    b"999999999999999999999999999999999999999",
    b"170141183460469231731687303715884105727",
    b"0.000000001",
    b"0.0000000001",
    b"\n",
    b" ",
];

const REQUEST_TOKENS: &[&[u8]] = &[
    b"k8s\x00",
    b"\"apiVersion\":\"v1\",",
    b"\"kind\":\"Pod\",",
    b"\"kind\":\"ConfigMap\",",
    b"\"kind\":\"Secret\",",
    b"\"kind\":\"Namespace\",",
    b"\"metadata\":{\"name\":\"x\",\"namespace\":\"default\"},",
    b"\"labels\":{\"a\":\"b\"},",
    b"\"annotations\":{\"\":\"\"},",
    b"\"ownerReferences\":[{}],",
    b"\"finalizers\":[\"\"],",
    b"\"creationTimestamp\":\"1970-01-01T00:00:00Z\",",
    b"\"spec\":{\"containers\":[{\"name\":\"c\",\"image\":\"i\"}]}",
    b"\"resources\":{\"limits\":{\"cpu\":\"1e1000\"}}",
    b"\"overhead\":{\"memory\":\"-1\"}",
    b"\"data\":{\"k\":\"v\"}",
    b"\"stringData\":{\"k\":\"v\"}",
    b"\"type\":\"kubernetes.io/tls\"",
    b"\"rules\":[{\"verbs\":[\"*\"]}]",
    b"\"subjects\":[{\"kind\":\"User\"}]",
    b"\"roleRef\":{}",
    b"\"handler\":\"\"",
    b"\"status\":{\"phase\":\"\"}",
    b"\x0a\x00",
    b"\x12\x00",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x42\x05\x08\x80\x80\x80\x80\x10",
    b"\x0a\x80\x80\x80\x80\x10",
    b"null",
    b"[",
    b"{",
    b"}",
    b"]",
    b"\"",
    b",",
];

const PATCH_TOKENS: &[&[u8]] = &[
    b"merge\n",
    b"json\n",
    b"strategic\n",
    b"\n---\n",
    b"{\"op\":\"add\",\"path\":\"/a/-\",\"value\":1}",
    b"{\"op\":\"remove\",\"path\":\"/a/0\"}",
    b"{\"op\":\"replace\",\"path\":\"\",\"value\":{}}",
    b"{\"op\":\"move\",\"from\":\"/a\",\"path\":\"/a/b\"}",
    b"{\"op\":\"copy\",\"from\":\"/a\",\"path\":\"/b\"}",
    b"{\"op\":\"test\",\"path\":\"/a\",\"value\":null}",
    b"\"path\":\"/~1~0~2\"",
    b"\"path\":\"/a/18446744073709551616\"",
    b"\"path\":\"/a/01\"",
    b"\"$patch\":\"replace\"",
    b"\"$patch\":\"delete\"",
    b"\"$patch\":\"merge\"",
    b"\"$retainKeys\":[\"a\"]",
    b"\"$setElementOrder/containers\":[{\"name\":\"a\"}]",
    b"\"$deleteFromPrimitiveList/finalizers\":[\"a\"]",
    b"\"containers\":[{\"name\":\"a\"}]",
    b"\"ports\":[{\"containerPort\":80}]",
    b"\"env\":[{\"name\":\"E\",\"$patch\":\"delete\"}]",
    b"\"finalizers\":[\"a\"]",
    b"\"volumeMounts\":[{\"mountPath\":\"/\"}]",
    b"\"conditions\":[{\"type\":\"Ready\"}]",
    b"null",
    b"[",
    b"{",
    b"}",
    b"]",
    b",",
];

const SPDY_TOKENS: &[&[u8]] = &[
    // SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE heads.
    b"\x80\x03\x00\x01",
    b"\x80\x03\x00\x02",
    b"\x80\x03\x00\x03",
    b"\x80\x03\x00\x04",
    b"\x80\x03\x00\x06",
    b"\x80\x03\x00\x07",
    b"\x80\x03\x00\x08",
    b"\x80\x03\x00\x09",
    b"\x80\x02\x00\x01",
    b"\x00\x00\x00\x01",
    b"\x01\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x07",
    // zlib: a header naming SPDY's dictionary (Adler-32 e3c6a7c2), a sync flush.
    b"\x78\xbb\xe3\xc6\xa7\xc2",
    b"\x78\x9c",
    b"\x00\x00\xff\xff",
    b"\x01\x00\x00\xff\xff",
];

/// Whether a manifest error reason is within its documented bound (the
/// shortened text plus the "… (N more bytes not shown)" note and the joined
/// "also …" of further errors, each of those shortened as a whole).
fn reason_is_bounded(reason: &str) -> bool {
    reason.len() <= MAX_REASON_BYTES + 64
}

/// A static-pod manifest file, read as the agent's file source does: the same
/// bytes as `pod.yaml` (YAML) and as `pod.json` (JSON).
pub fn manifest(data: &[u8]) {
    for file in [
        "/etc/kubernetes/manifests/pod.yaml",
        "/etc/kubernetes/manifests/pod.json",
    ] {
        let path = Path::new(file);
        match parse_manifest(path, data, "node-1") {
            Ok(sourced) => {
                let meta = &sourced.pod.metadata;
                let name = meta.name.as_deref().unwrap_or("");
                assert!(
                    name.ends_with("-node-1"),
                    "a static pod's name ends with its node's: {name:?}"
                );
                let uid = meta.uid.as_deref().unwrap_or("");
                assert!(!uid.is_empty(), "a static pod always has a UID");
                let hash = meta
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("kubernetes.io/config.hash"));
                assert_eq!(
                    hash.map(String::as_str),
                    Some(uid),
                    "config.hash is the UID"
                );
                assert_eq!(
                    sourced
                        .pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref()),
                    Some("node-1"),
                    "a static pod is bound to its node"
                );
            }
            Err(e) => {
                assert!(
                    reason_is_bounded(&e.reason),
                    "a manifest error reason of {} bytes (limit {MAX_REASON_BYTES})",
                    e.reason.len()
                );
                if let Some(field) = &e.field {
                    assert!(
                        reason_is_bounded(field),
                        "a manifest error field of {} bytes",
                        field.len()
                    );
                }
            }
        }
    }
}

/// Parse one quantity and check what holds for every parsed quantity: its text
/// parses back to it, and the integer views agree with the `ApiQuantity` helpers.
fn check_quantity(text: &str) -> Option<Quantity> {
    let parsed = Quantity::parse(text);
    let api = ApiQuantity(text.to_string());
    assert_eq!(
        quantity::cpu_millis(&api).ok(),
        parsed.as_ref().ok().map(Quantity::milli_value),
        "cpu_millis({text:?}) is the parsed quantity's milli_value"
    );
    assert_eq!(
        quantity::int_value(&api).ok(),
        parsed.as_ref().ok().map(Quantity::value),
        "int_value({text:?}) is the parsed quantity's value"
    );
    let _ = quantity::non_negative_int_value(&api);
    let q = parsed.ok()?;
    let canonical = q.to_string();
    assert_eq!(
        Quantity::parse(&canonical),
        Ok(q),
        "{text:?} parses to {q:?}, whose text {canonical:?} must parse back to it"
    );
    assert_eq!(q.signum() == 0, q.is_zero());
    // Both round up: 1000 × (value − 1) < milli_value ≤ 1000 × value, unless
    // one of them saturated at the bounds of i64.
    let (milli, value) = (i128::from(q.milli_value()), i128::from(q.value()));
    let saturated = |v: i128| v == i128::from(i64::MAX) || v == i128::from(i64::MIN);
    if !saturated(milli) && !saturated(value) {
        assert!(
            1000 * (value - 1) < milli && milli <= 1000 * value,
            "{text:?}: milli_value {milli} and value {value} disagree"
        );
    }
    Some(q)
}

/// Quantity parsing: the input is one quantity, or two separated by a line
/// break or a space, whose order and checked sums are then checked too.
pub fn quantity(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (a, b) = match text.split_once(['\n', ' ']) {
        Some((a, b)) => (a, Some(b)),
        None => (text.as_ref(), None),
    };
    let qa = check_quantity(a);
    let qb = b.and_then(check_quantity);
    let (Some(qa), Some(qb)) = (qa, qb) else {
        return;
    };
    // Ordering: antisymmetric, consistent with equality, and monotone in the
    // rounded-up integer views.
    assert_eq!(qa.cmp(&qb), qb.cmp(&qa).reverse(), "{qa:?} <=> {qb:?}");
    assert_eq!(qa.cmp(&qb) == std::cmp::Ordering::Equal, qa == qb);
    if qa <= qb {
        assert!(
            qa.milli_value() <= qb.milli_value(),
            "{qa:?} <= {qb:?} in millis"
        );
        assert!(qa.value() <= qb.value(), "{qa:?} <= {qb:?} as integers");
    }
    // Checked arithmetic: commutative, and a sum minus one part is the other.
    let sum = qa.checked_add(&qb);
    assert_eq!(sum, qb.checked_add(&qa), "{qa:?} + {qb:?} commutes");
    if let Some(sum) = sum {
        assert_eq!(sum.checked_sub(&qb), Some(qa), "({qa:?} + {qb:?}) - {qb:?}");
        assert_eq!(Quantity::checked_sum([&qa, &qb]), Some(sum));
        if let Some(diff) = qa.checked_sub(&qb) {
            assert_eq!(diff.signum(), qa.cmp(&qb) as i32, "sign of {qa:?} - {qb:?}");
        }
    }
}

/// The resource a body names (`apiVersion` and `kind`), else one picked by the
/// body's length, so that every resource's decoding gets inputs.
fn resource_for(body: &[u8]) -> &'static Resource {
    let named = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        let kind = v.get("kind")?.as_str()?.to_string();
        let api_version = v.get("apiVersion")?.as_str()?.to_string();
        RESOURCES
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
    });
    named.unwrap_or(&RESOURCES[body.len() % RESOURCES.len()])
}

/// An API server create/update body (a protobuf one when it starts with
/// `k8s\0`, else JSON), decoded as the handlers do for the resource it names
/// (`fieldValidation` picked by its length), then prepared and validated as a
/// create, and the result decoded again as an update of itself.
pub fn request(data: &[u8]) {
    let protobuf_body = data.starts_with(b"k8s\x00");
    let res = if protobuf_body {
        berth_apiserver::api::protobuf::decode(data)
            .ok()
            .and_then(|v| {
                let kind = v.get("kind")?.as_str()?.to_string();
                RESOURCES.iter().find(|r| r.kind == kind)
            })
            .unwrap_or(&RESOURCES[data.len() % RESOURCES.len()])
    } else {
        resource_for(data)
    };
    let namespace = res.namespaced.then_some("default");
    let field_validation = [None, Some("Strict"), Some("Warn"), Some("Ignore")][data.len() % 4];
    let Ok((mut obj, _warnings)) =
        decode_request_body(res, namespace, field_validation, protobuf_body, data, None)
    else {
        return;
    };
    // Create: the strategy's defaults, then every validation.
    if res.strategy.prepare_for_create(&mut obj).is_err() {
        return;
    }
    let mut errs = match strategy::validate_meta(res, &obj) {
        Ok(errs) => errs,
        Err(_) => return,
    };
    match res.strategy.validate(&obj) {
        Ok(more) => errs.extend(more),
        Err(_) => return,
    }
    let _ = strategy::causes(errs);
    // Update: the created object sent back unchanged, as `kubectl replace` does.
    let Ok(body) = serde_json::to_vec(&obj) else {
        return;
    };
    if let Ok((new, _)) =
        decode_request_body(res, namespace, field_validation, false, &body, Some(&obj))
    {
        let _ = strategy::validate_meta_update(res, &obj, &new);
        let _ = res.strategy.validate_update(&obj, &new, false);
    }
}

/// Patch application. The input is a first line naming the patch type
/// (`merge`, `json`, `strategic`; anything else picks one by its length),
/// the target JSON, a line `---`, and the patch.
pub fn patch(data: &[u8]) {
    let (kind_line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let kind = match kind_line {
        b"merge" => PatchType::Merge,
        b"json" => PatchType::Json,
        b"strategic" => PatchType::Strategic,
        _ => [PatchType::Merge, PatchType::Json, PatchType::Strategic][data.len() % 3],
    };
    const SEPARATOR: &[u8] = b"\n---\n";
    let (target, patch_bytes) = match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&rest[..i], &rest[i + SEPARATOR.len()..]),
        None => (&b"{}"[..], rest),
    };
    let target: Value = serde_json::from_slice(target).unwrap_or(Value::Null);
    let Ok(patched) = patch::apply(kind, &target, patch_bytes) else {
        return;
    };
    if kind == PatchType::Merge {
        // RFC 7386: applying a merge patch twice is applying it once.
        let again = patch::apply(kind, &patched, patch_bytes);
        assert_eq!(
            again.ok().as_ref(),
            Some(&patched),
            "a merge patch applied twice differs from once"
        );
    }
    let _ = serde_json::to_vec(&patched);
}

/// The SPDY/3 frame decoder, as the connection's reader drives it: frames
/// decoded in order from the input in one header-decompression context. The
/// same bytes fed in pieces must decode to the same frames; each frame must
/// re-encode and decode back to itself; and the flow-control windows must
/// take whatever the frames say.
pub fn spdy(data: &[u8]) {
    let whole = decode_all(data, data.len().max(1));
    // Feed the bytes in small pieces, as reads off a socket arrive.
    let piece = usize::from(data.first().copied().unwrap_or(0) % 13) + 1;
    let pieces = decode_all(data, piece);
    assert_eq!(
        whole.len(),
        pieces.len(),
        "decoding in {piece}-byte pieces gave another number of frames"
    );
    for (a, b) in whole.iter().zip(&pieces) {
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "decoding in {piece}-byte pieces differs"),
            (Err(_), Err(_)) => {}
            _ => panic!("decoding in {piece}-byte pieces: {a:?} vs {b:?}"),
        }
    }

    let frames: Vec<&Frame> = whole.iter().filter_map(|r| r.as_ref().ok()).collect();
    for frame in &frames {
        if let Frame::SynStream { headers, .. }
        | Frame::SynReply { headers, .. }
        | Frame::Headers { headers, .. } = frame
        {
            let len = spdy::header_block(headers).len();
            assert!(
                len <= spdy::MAX_HEADER_BLOCK,
                "a header block of {len} bytes decoded (limit {})",
                spdy::MAX_HEADER_BLOCK
            );
        }
    }
    let mut encoder = Encoder::new().expect("a SPDY encoder");
    let mut decoder = Decoder::default();
    for frame in &frames {
        if matches!(frame, Frame::Unknown { .. }) {
            continue;
        }
        let bytes = match encoder.encode(frame) {
            Ok(b) => b,
            Err(spdy::Error::TooLarge { .. }) => continue,
            Err(e) => panic!("a decoded frame does not encode: {frame:?}: {e}"),
        };
        match decoder.decode(&bytes) {
            Ok(Some((again, n))) => {
                assert_eq!(n, bytes.len(), "a re-encoded frame's length");
                assert_eq!(&again, *frame, "a frame's round trip");
            }
            other => panic!("a re-encoded frame does not decode: {frame:?}: {other:?}"),
        }
    }

    let mut send = SendWindows::default();
    let mut recv = RecvWindows::default();
    for frame in frames {
        match frame {
            Frame::SynStream { stream_id, .. } => send.open(*stream_id),
            Frame::Settings { entries, .. } => send.on_settings(entries),
            Frame::WindowUpdate { stream_id, delta } => send.on_window_update(*stream_id, *delta),
            Frame::Data {
                stream_id, data, ..
            } => {
                let _ = send.available(*stream_id);
                send.consume(*stream_id, data.len());
                let _ = recv.consumed(*stream_id, data.len());
            }
            Frame::RstStream { stream_id, .. } => recv.close(*stream_id),
            _ => {}
        }
    }
}

/// Decode `data` as a connection's reader does when it arrives `piece` bytes
/// at a time: every frame (or the error that ends the connection), in order.
fn decode_all(data: &[u8], piece: usize) -> Vec<Result<Frame, String>> {
    let mut decoder = Decoder::default();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        let mut used = 0;
        loop {
            match decoder.decode(&buf[used..]) {
                Ok(Some((frame, n))) => {
                    assert!(n >= 8 && used + n <= buf.len(), "a frame's length {n}");
                    used += n;
                    out.push(Ok(frame));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
        buf.drain(..used);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_named_once() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(TARGETS[..i].iter().all(|u| u.name != t.name), "{}", t.name);
            assert!(find(t.name).is_some());
        }
    }

    #[test]
    fn empty_and_tiny_inputs() {
        for t in TARGETS {
            (t.run)(b"");
            (t.run)(b"\0");
            (t.run)(b"{}");
        }
    }
}
