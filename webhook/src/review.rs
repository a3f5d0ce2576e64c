//! `AdmissionReview` (`admission.k8s.io/v1`) in and out.
//!
//! Well-formed Pod and Module reviews (compact JSON, as the API server writes them) are read in one pass by
//! [`parse_scanned`] with [`crate::scan`]; anything that reader declines goes through [`parse`].
//! [`parse`] reads in two steps: the body as JSON, then the fields one by one, so that a request whose uid is
//! readable always gets an answer carrying that uid (the API server treats a response with a missing or different
//! uid as a webhook failure, not as a denial). Only a body without a readable uid is answered with HTTP 400.
//! The response is written by hand: the patch is base64 (kube's `AdmissionResponse` serialises it as an array of
//! numbers, kube-rs issue 1781).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

use serde_json::value::RawValue;

use crate::scan::{Scan, once};

/// The only AdmissionReview version served (`admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Kind of the review object.
pub const KIND: &str = "AdmissionReview";

/// Group, version and kind of the object under review.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Gvk {
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl Gvk {
    /// Whether this is `group/version, Kind=kind`.
    pub fn is(&self, group: &str, version: &str, kind: &str) -> bool {
        self.group == group && self.version == version && self.kind == kind
    }
}

impl std::fmt::Display for Gvk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.kind)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.kind)
        }
    }
}

/// The admission operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// CREATE.
    Create,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// CONNECT.
    Connect,
}

impl Operation {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
        }
    }
}

/// A parsed admission request: what the handlers need, nothing more.
#[derive(Clone, Debug)]
pub struct Request {
    /// Request uid, echoed in the response.
    pub uid: String,
    /// Kind of the object.
    pub kind: Gvk,
    /// The operation.
    pub operation: Operation,
    /// Name of the object (empty on CREATE with generateName).
    pub name: String,
    /// Namespace of the request, if any.
    pub namespace: Option<String>,
    /// The new object, raw JSON (absent on DELETE).
    pub object: Option<Box<RawValue>>,
    /// The old object, raw JSON (UPDATE and DELETE).
    pub old_object: Option<Box<RawValue>>,
    /// The request will not be persisted.
    pub dry_run: bool,
}

/// Why a body is not a usable AdmissionReview.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not JSON, or not a JSON object (HTTP 400).
    #[error("failed to parse the AdmissionReview: {0}")]
    Json(String),
    /// No `request` object (HTTP 400).
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// No readable `request.uid` (HTTP 400).
    #[error("AdmissionReview request has no uid")]
    MissingUid,
    /// The uid is known but something else is wrong: answered with `allowed: false`, code 400.
    #[error("invalid AdmissionReview request {uid}: {reason}")]
    Invalid {
        /// The request uid.
        uid: String,
        /// What is wrong.
        reason: String,
    },
}

type Fields<'a> = HashMap<String, &'a RawValue>;

fn string(fields: &Fields<'_>, key: &str) -> Option<String> {
    fields
        .get(key)
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// The AdmissionReview fields the webhook reads, borrowed from the body. Unknown fields are skipped without being
/// kept; `object` and `oldObject` stay raw JSON until a handler decodes them into their types.
/// `O` is how `oldObject` is kept: serde_json's `RawValue`, or the scanner's text in [`parse_scanned`].
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>, O: Deserialize<'de>"))]
struct Envelope<'a, T, O = &'a RawValue> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default = "none")]
    request: Option<EnvelopeRequest<'a, T, O>>,
}

fn none<T>() -> Option<T> {
    None
}

/// `request`; `T` is what `object` is read as: raw JSON, or directly the handler's type.
#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>, O: Deserialize<'de>"))]
struct EnvelopeRequest<'a, T, O = &'a RawValue> {
    #[serde(borrow, default)]
    uid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<EnvelopeGvk<'a>>,
    #[serde(borrow, default)]
    operation: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default = "none")]
    object: Option<T>,
    #[serde(rename = "oldObject", default = "none")]
    old_object: Option<O>,
    #[serde(rename = "dryRun", default)]
    dry_run: Option<bool>,
}

#[derive(Deserialize, Default)]
struct EnvelopeGvk<'a> {
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
}

/// The tolerant reading: field by field, so that a request whose uid is readable gets an answer even when other
/// fields have the wrong type (they read as absent) or keys repeat (the last one wins, as in Go).
fn tolerant(body: &[u8]) -> Result<Envelope<'_, &RawValue>, ParseError> {
    let review: Fields<'_> = match serde_json::from_slice(body) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => {
            return Err(ParseError::Json("the body is not a JSON object".to_owned()));
        }
        Err(e) => return Err(ParseError::Json(e.to_string())),
    };
    let req: Fields<'_> = match review.get("request") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| ParseError::MissingRequest)?,
        None => return Err(ParseError::MissingRequest),
    };
    let owned = |fields: &Fields<'_>, key: &str| string(fields, key).map(Cow::Owned);
    let gvk = req
        .get("kind")
        .and_then(|raw| serde_json::from_str::<Fields<'_>>(raw.get()).ok())
        .map(|gvk| EnvelopeGvk {
            group: owned(&gvk, "group"),
            version: owned(&gvk, "version"),
            kind: owned(&gvk, "kind"),
        });
    let raw = |key: &str| req.get(key).copied().filter(|raw| raw.get() != "null");
    Ok(Envelope {
        api_version: owned(&review, "apiVersion"),
        kind: owned(&review, "kind"),
        request: Some(EnvelopeRequest {
            uid: owned(&req, "uid"),
            kind: gvk,
            operation: owned(&req, "operation"),
            name: owned(&req, "name"),
            namespace: owned(&req, "namespace"),
            object: raw("object"),
            old_object: raw("oldObject"),
            dry_run: Some(req.get("dryRun").is_some_and(|raw| raw.get() == "true")),
        }),
    })
}

/// Parses an AdmissionReview body.
///
/// The body is read once into borrowed fields (the common case: a well-formed review from the API server); when
/// that fails (wrong types, repeated keys, not JSON), the tolerant reading decides between an answer carrying the
/// uid and an HTTP 400. `object` and `oldObject` stay raw JSON until a handler decodes them into their types.
pub fn parse(body: &[u8]) -> Result<Request, ParseError> {
    let envelope = match serde_json::from_slice::<Envelope<'_, &RawValue>>(body) {
        Ok(e) if e.request.is_some() => e,
        _ => tolerant(body)?,
    };
    let (mut request, object) = check(envelope)?;
    request.object = match raw_object(object, "object") {
        Ok(object) => object,
        Err(reason) => {
            return Err(ParseError::Invalid {
                uid: request.uid,
                reason,
            });
        }
    };
    Ok(request)
}

/// `object` or `oldObject` as raw JSON; absent (or `null`, which both readings turn into `None`) stays `None`,
/// and anything but a JSON object is an error naming the field.
fn raw_object<R: RawJson>(raw: Option<R>, key: &str) -> Result<Option<Box<RawValue>>, String> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.text().starts_with('{') => raw
            .boxed()
            .map(Some)
            .ok_or_else(|| format!("request.{key} is not valid JSON")),
        Some(_) => Err(format!("request.{key} is not an object")),
    }
}

/// A JSON value kept as text by a decoder.
trait RawJson {
    fn text(&self) -> &str;
    fn boxed(&self) -> Option<Box<RawValue>>;
}

impl RawJson for &RawValue {
    fn text(&self) -> &str {
        self.get()
    }
    fn boxed(&self) -> Option<Box<RawValue>> {
        Some((*self).to_owned())
    }
}

/// A JSON value kept as its text by [`Scan`].
struct RawText<'a>(&'a str);

impl RawJson for RawText<'_> {
    fn text(&self) -> &str {
        self.0
    }
    fn boxed(&self) -> Option<Box<RawValue>> {
        RawValue::from_string(self.0.to_owned()).ok()
    }
}

/// Parses a well-formed AdmissionReview in one pass, reading `object` directly as a `T`: `None` when the body is
/// anything else (not JSON, wrong types, an object that is not a `T`, ...), and the caller then goes through
/// [`parse`] and its precise errors. The returned request has no raw `object`.
pub fn parse_as<T: serde::de::DeserializeOwned>(body: &[u8]) -> Option<(Request, Option<T>)> {
    // The envelope is read by the scanner, the object by the scanner's serde Deserializer where it stands (it
    // reads as serde_json does, or declines), and the scanner goes on after it.
    parse_scanned(body, |s| s.deserialize::<T>())
}

/// [`parse_as`] with the object read by `object` from the scanner (which must consume it).
pub fn parse_scanned<'a, T>(
    body: &'a [u8],
    object: impl FnOnce(&mut Scan<'a>) -> Option<T>,
) -> Option<(Request, Option<T>)> {
    // SIMD UTF-8 validation: a fifth of the instructions of `std::str::from_utf8` on the usual all-ASCII body.
    let text = simdutf8::basic::from_utf8(body).ok()?;
    let envelope = scan_envelope(text, object)?;
    envelope.request.as_ref()?;
    check(envelope).ok()
}

/// The fields of [`Envelope`] read by the scanner, exactly as serde reads them: `null` is absent, a repeated field
/// or a string with escapes is left to serde (`None`), unknown fields are skipped.
fn scan_envelope<'a, T>(
    text: &'a str,
    object: impl FnOnce(&mut Scan<'a>) -> Option<T>,
) -> Option<Envelope<'a, T, RawText<'a>>> {
    let mut s = Scan::new(text)?;
    let mut env = Envelope {
        api_version: None,
        kind: None,
        request: None,
    };
    let mut object = Some(object);
    let mut seen = 0;
    s.object(|s, key| {
        match key {
            "apiVersion" => {
                once(&mut seen, 0)?;
                env.api_version = s.opt_str()?.map(Cow::Borrowed);
            }
            "kind" => {
                once(&mut seen, 1)?;
                env.kind = s.opt_str()?.map(Cow::Borrowed);
            }
            "request" => {
                once(&mut seen, 2)?;
                if !s.null()? {
                    env.request = Some(scan_request(s, object.take()?)?);
                }
            }
            _ => s.skip()?,
        }
        Some(())
    })?;
    s.at_end().then_some(env)
}

fn scan_request<'a, T>(
    s: &mut Scan<'a>,
    object: impl FnOnce(&mut Scan<'a>) -> Option<T>,
) -> Option<EnvelopeRequest<'a, T, RawText<'a>>> {
    let mut req = EnvelopeRequest {
        uid: None,
        kind: None,
        operation: None,
        name: None,
        namespace: None,
        object: None,
        old_object: None,
        dry_run: None,
    };
    let mut object = Some(object);
    let mut seen = 0;
    s.object(|s, key| {
        let text = |s: &mut Scan<'a>| s.opt_str().map(|v| v.map(Cow::Borrowed));
        match key {
            "uid" => {
                once(&mut seen, 0)?;
                req.uid = text(s)?;
            }
            "kind" => {
                once(&mut seen, 1)?;
                if !s.null()? {
                    req.kind = Some(scan_gvk(s)?);
                }
            }
            "operation" => {
                once(&mut seen, 2)?;
                req.operation = text(s)?;
            }
            "name" => {
                once(&mut seen, 3)?;
                req.name = text(s)?;
            }
            "namespace" => {
                once(&mut seen, 4)?;
                req.namespace = text(s)?;
            }
            "object" => {
                once(&mut seen, 5)?;
                if !s.null()? {
                    req.object = Some(object.take()?(s)?);
                }
            }
            "oldObject" => {
                once(&mut seen, 6)?;
                if !s.null()? {
                    req.old_object = Some(RawText(s.raw()?));
                }
            }
            "dryRun" => {
                once(&mut seen, 7)?;
                req.dry_run = s.opt_bool()?;
            }
            _ => s.skip()?,
        }
        Some(())
    })?;
    Some(req)
}

fn scan_gvk<'a>(s: &mut Scan<'a>) -> Option<EnvelopeGvk<'a>> {
    let mut gvk = EnvelopeGvk::default();
    let mut seen = 0;
    s.object(|s, key| {
        let (bit, field) = match key {
            "group" => (0, &mut gvk.group),
            "version" => (1, &mut gvk.version),
            "kind" => (2, &mut gvk.kind),
            _ => return s.skip(),
        };
        once(&mut seen, bit)?;
        *field = s.opt_str()?.map(Cow::Borrowed);
        Some(())
    })?;
    Some(gvk)
}

/// The checks common to both readings; `object` is handed back untouched.
fn check<T, O: RawJson>(envelope: Envelope<'_, T, O>) -> Result<(Request, Option<T>), ParseError> {
    let req = envelope.request.ok_or(ParseError::MissingRequest)?;
    let uid = match req.uid {
        Some(uid) if !uid.is_empty() => uid.into_owned(),
        _ => return Err(ParseError::MissingUid),
    };
    let invalid = |reason: String| ParseError::Invalid {
        uid: uid.clone(),
        reason,
    };

    let api_version = envelope.api_version.unwrap_or_default();
    let kind = envelope.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(invalid(format!(
            "expected apiVersion {API_VERSION} and kind {KIND}, got {api_version:?} and {kind:?}"
        )));
    }

    let gvk = req
        .kind
        .ok_or_else(|| invalid("request.kind is missing".to_owned()))?;
    let gvk = Gvk {
        group: gvk.group.unwrap_or_default().into_owned(),
        version: gvk.version.unwrap_or_default().into_owned(),
        kind: gvk.kind.unwrap_or_default().into_owned(),
    };
    if gvk.version.is_empty() || gvk.kind.is_empty() {
        return Err(invalid(
            "request.kind needs a version and a kind".to_owned(),
        ));
    }

    let operation = match req.operation.as_deref() {
        Some("CREATE") => Operation::Create,
        Some("UPDATE") => Operation::Update,
        Some("DELETE") => Operation::Delete,
        Some("CONNECT") => Operation::Connect,
        other => {
            return Err(invalid(format!(
                "request.operation must be CREATE, UPDATE, DELETE or CONNECT, got {other:?}"
            )));
        }
    };

    let old_object = raw_object(req.old_object, "oldObject").map_err(invalid)?;

    let request = Request {
        kind: gvk,
        operation,
        name: req.name.map(Cow::into_owned).unwrap_or_default(),
        namespace: req.namespace.filter(|n| !n.is_empty()).map(Cow::into_owned),
        object: None,
        old_object,
        dry_run: req.dry_run.unwrap_or(false),
        uid,
    };
    Ok((request, req.object))
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// HTTP-like status code of a denial (403 for a rule violation, 400 for a malformed object).
    pub code: u16,
    /// Why it was denied.
    pub message: Option<String>,
    /// A JSON Patch to apply (only on allowed CREATE/UPDATE).
    pub patch: Option<crate::mutate::Patch>,
}

impl Verdict {
    /// Allowed, unchanged.
    pub fn allow() -> Self {
        Self {
            allowed: true,
            code: 200,
            message: None,
            patch: None,
        }
    }

    /// Allowed, with a patch (an empty patch is omitted).
    pub fn patch(patch: crate::mutate::Patch) -> Self {
        Self {
            patch: (!patch.0.is_empty()).then_some(patch),
            ..Self::allow()
        }
    }

    /// Denied by a rule (403 Forbidden).
    pub fn deny(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            code: 403,
            message: Some(message.into()),
            patch: None,
        }
    }

    /// Denied because the request or its object is malformed (400 Bad Request).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            code: 400,
            message: Some(message.into()),
            patch: None,
        }
    }

    /// A short word for logs and metrics: `allowed`, `patched` or `denied`.
    pub fn label(&self) -> &'static str {
        match (self.allowed, &self.patch) {
            (false, _) => "denied",
            (true, Some(_)) => "patched",
            (true, None) => "allowed",
        }
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        403 => "Forbidden",
        _ => "Unknown",
    }
}

/// Serialises the AdmissionReview answering `uid` with `verdict`, as JSON bytes.
///
/// Written directly rather than through a `serde_json::Value`: the strings that can hold anything (uid, message)
/// go through serde_json's escaping, the rest is fixed text, and the base64 patch needs no escaping.
pub fn response(uid: &str, verdict: &Verdict) -> Vec<u8> {
    let patch = verdict.patch.as_ref();
    let message = verdict.message.as_deref();
    let mut out = Vec::with_capacity(
        160 + uid.len()
            + message.map_or(0, str::len)
            + patch.map_or(0, |p| p.json_len() * 4 / 3 + 4),
    );
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(API_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(KIND.as_bytes());
    out.extend_from_slice(b"\",\"response\":{\"uid\":");
    push_json_str(&mut out, uid);
    out.extend_from_slice(if verdict.allowed {
        b",\"allowed\":true"
    } else {
        b",\"allowed\":false"
    });
    if !verdict.allowed || message.is_some() {
        out.extend_from_slice(b",\"status\":{\"status\":\"");
        out.extend_from_slice(if verdict.allowed {
            b"Success"
        } else {
            b"Failure"
        });
        out.extend_from_slice(format!("\",\"code\":{},\"reason\":\"", verdict.code).as_bytes());
        out.extend_from_slice(reason_for(verdict.code).as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        push_json_str(&mut out, message.unwrap_or_default());
        out.push(b'}');
    }
    if let Some(patch) = patch {
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\",\"patch\":\"");
        // SIMD base64 (a fifth of the cost of the base64 crate's engine on a 1 KiB patch, callgrind), shared
        // values copied from their precomputed base64.
        patch.to_base64(&mut out);
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
    out
}

/// Writes `s` as a JSON string. Uids and patch paths need no escaping: that is checked without early exit
/// (vectorised) and the text copied as is; anything else goes through serde_json's escaping.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use base64::Engine as _;
    use serde_json::{Value, json};

    use super::*;

    fn review(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "request": request}))
            .unwrap()
    }

    fn base_request() -> Value {
        json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "team",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "x-"}},
            "oldObject": null,
            "dryRun": true
        })
    }

    #[test]
    fn parses_a_pod_create() {
        let req = parse(&review(base_request())).unwrap();
        assert_eq!(req.uid, "u-1");
        assert!(req.kind.is("", "v1", "Pod"));
        assert_eq!(req.operation, Operation::Create);
        assert_eq!(req.namespace.as_deref(), Some("team"));
        assert_eq!(req.name, "");
        assert!(req.object.is_some());
        assert!(req.old_object.is_none());
        assert!(req.dry_run);
    }

    #[test]
    fn errors_without_uid_are_http_errors_and_with_uid_are_verdicts() {
        type Check = fn(&ParseError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (b"{not json".to_vec(), |e| matches!(e, ParseError::Json(_))),
            (b"[1,2]".to_vec(), |e| matches!(e, ParseError::Json(_))),
            (b"{}".to_vec(), |e| *e == ParseError::MissingRequest),
            (review(json!({"kind": {"version": "v1", "kind": "Pod"}})), |e| {
                *e == ParseError::MissingUid
            }),
            (review(json!({"uid": 7})), |e| *e == ParseError::MissingUid),
            (
                serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": KIND, "request": base_request()}))
                    .unwrap(),
                |e| matches!(e, ParseError::Invalid { uid, reason } if uid == "u-1" && reason.contains("admission.k8s.io/v1beta1")),
            ),
            (
                review({
                    let mut r = base_request();
                    r["operation"] = json!("PATCH");
                    r
                }),
                |e| matches!(e, ParseError::Invalid { reason, .. } if reason.contains("PATCH")),
            ),
            (
                review({
                    let mut r = base_request();
                    r["object"] = json!("a string");
                    r
                }),
                |e| matches!(e, ParseError::Invalid { reason, .. } if reason.contains("request.object")),
            ),
            (
                review({
                    let mut r = base_request();
                    r["kind"] = json!(3);
                    r
                }),
                |e| matches!(e, ParseError::Invalid { reason, .. } if reason.contains("request.kind")),
            ),
        ];
        for (i, (body, check)) in cases.iter().enumerate() {
            let err = parse(body).unwrap_err();
            assert!(check(&err), "case {i}: {err:?}");
        }
    }

    #[test]
    fn response_carries_uid_status_and_base64_patch() {
        let deny: Value =
            serde_json::from_slice(&response("u-9", &Verdict::deny("spec.x: bad"))).unwrap();
        assert_eq!(deny["apiVersion"], API_VERSION);
        assert_eq!(deny["kind"], KIND);
        assert_eq!(deny["response"]["uid"], "u-9");
        assert_eq!(deny["response"]["allowed"], false);
        assert_eq!(deny["response"]["status"]["code"], 403);
        assert_eq!(deny["response"]["status"]["message"], "spec.x: bad");
        assert!(deny["response"].get("patch").is_none());

        let patch = crate::mutate::Patch(vec![crate::mutate::AddOp::new("/a~1b".to_owned(), &1)]);
        let ok: Value = serde_json::from_slice(&response("u-9", &Verdict::patch(patch))).unwrap();
        assert_eq!(ok["response"]["allowed"], true);
        assert!(ok["response"].get("status").is_none());
        assert_eq!(ok["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(ok["response"]["patch"].as_str().unwrap())
            .unwrap();
        let back: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(back, json!([{"op": "add", "path": "/a~1b", "value": 1}]));

        let empty: Value = serde_json::from_slice(&response(
            "u",
            &Verdict::patch(crate::mutate::Patch(vec![])),
        ))
        .unwrap();
        assert_eq!(empty["response"]["allowed"], true);
        // Strings that need escaping stay valid JSON.
        let odd: Value = serde_json::from_slice(&response(
            "u\"\\\n",
            &Verdict::bad_request("bad \"x\"\n\u{1}"),
        ))
        .unwrap();
        assert_eq!(odd["response"]["uid"], "u\"\\\n");
        assert_eq!(odd["response"]["status"]["message"], "bad \"x\"\n\u{1}");
        assert_eq!(odd["response"]["status"]["code"], 400);
        assert_eq!(odd["response"]["status"]["reason"], "BadRequest");
        assert!(empty["response"].get("patch").is_none());
        assert!(empty["response"].get("patchType").is_none());
    }
}
