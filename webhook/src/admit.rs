//! Dispatch: a parsed request and the endpoint it came in on, to the pure handler of its kind.

use std::sync::Arc;

use kmm_api::validation::KubeVersion;

use crate::catalog::Catalog;
use crate::mutate::{MutateConfig, PodView, mutate_pod};
use crate::review::{Operation, ParseError, Request, Verdict};
use crate::validate;

/// The four admission endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate-module`.
    Module,
    /// `/validate-managedclustermodule`.
    ManagedClusterModule,
    /// `/validate-namespace`.
    Namespace,
    /// `/mutate-pod`.
    Pod,
}

impl Endpoint {
    /// Every endpoint with its paths: ours first, then upstream's alias (none for pods).
    pub const ROUTES: [(Endpoint, &'static str, Option<&'static str>); 4] = [
        (
            Endpoint::Module,
            "/validate-module",
            Some("/validate-kmm-sigs-x-k8s-io-v1beta1-module"),
        ),
        (
            Endpoint::ManagedClusterModule,
            "/validate-managedclustermodule",
            Some("/validate-hub-kmm-sigs-x-k8s-io-v1beta1-managedclustermodule"),
        ),
        (
            Endpoint::Namespace,
            "/validate-namespace",
            Some("/validate--v1-namespace"),
        ),
        (Endpoint::Pod, "/mutate-pod", None),
    ];

    /// Name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Module => "module",
            Self::ManagedClusterModule => "managedclustermodule",
            Self::Namespace => "namespace",
            Self::Pod => "pod",
        }
    }
}

/// What the handlers need besides the request.
#[derive(Clone)]
pub struct Context {
    /// The Modules of the cluster.
    pub catalog: Arc<dyn Catalog>,
    /// Init-container settings.
    pub mutate: MutateConfig,
    /// The cluster's Kubernetes version, when known (gates `spec.dra`).
    pub kube_version: Option<KubeVersion>,
}

/// Answers one request.
pub fn admit(endpoint: Endpoint, req: &Request, ctx: &Context) -> Verdict {
    match endpoint {
        Endpoint::Module => validate::module(req, ctx.kube_version),
        Endpoint::ManagedClusterModule => validate::managed_cluster_module(req),
        Endpoint::Namespace => validate::namespace(req),
        Endpoint::Pod => pod(req, ctx),
    }
}

fn pod(req: &Request, ctx: &Context) -> Verdict {
    pod_with(req, ctx, || {
        validate::decode(req.object.as_deref(), "object", "Pod")
    })
}

/// The Pod handler, given how to get the object (decoded only once the kind and operation call for it).
fn pod_with(
    req: &Request,
    ctx: &Context,
    object: impl FnOnce() -> Result<PodView, Verdict>,
) -> Verdict {
    if !req.kind.is("", "v1", "Pod") {
        return Verdict::bad_request(format!(
            "this endpoint mutates v1 Pod objects, got {}",
            req.kind
        ));
    }
    // Only CREATE is mutated; never a patch on DELETE (or anything else).
    if req.operation != Operation::Create {
        return Verdict::allow();
    }
    let pod = match object() {
        Ok(p) => p,
        Err(v) => return v,
    };
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    match mutate_pod(&pod, namespace, ctx.catalog.as_ref(), &ctx.mutate) {
        Ok(patch) => Verdict::patch(patch),
        Err(denial) => Verdict::deny(denial.to_string()),
    }
}

/// One pass over a well-formed review whose object is read directly as the endpoint's type (Pods and Modules,
/// the hot paths); `None` sends the body through the general path.
pub fn fast(endpoint: Endpoint, body: &[u8], ctx: &Context) -> Option<(Request, Verdict)> {
    match endpoint {
        Endpoint::Pod => {
            let (req, pod) = crate::review::parse_scanned(body, PodView::scan)?;
            let verdict = pod_with(&req, ctx, || pod.ok_or_else(|| validate::missing("object")));
            Some((req, verdict))
        }
        Endpoint::Module => {
            let (req, module) = crate::review::parse_as::<Box<kmm_api::Module>>(body)?;
            let verdict = validate::module_with(&req, ctx.kube_version, || {
                module.ok_or_else(|| validate::missing("object"))
            });
            Some((req, verdict))
        }
        Endpoint::ManagedClusterModule | Endpoint::Namespace => None,
    }
}

/// The outcome of one HTTP body: an AdmissionReview to send (HTTP 200), or an HTTP 400 with a message.
#[derive(Debug)]
pub enum Outcome {
    /// HTTP 200 with this AdmissionReview.
    Review {
        /// The request (absent when it could not be parsed past its uid).
        request: Option<Box<Request>>,
        /// The uid answered.
        uid: String,
        /// The verdict.
        verdict: Verdict,
        /// The serialised AdmissionReview (JSON).
        body: Vec<u8>,
    },
    /// HTTP 400: no uid to answer with.
    BadRequest(String),
}

/// Parses a body and answers it.
pub fn handle(endpoint: Endpoint, body: &[u8], ctx: &Context) -> Outcome {
    let (req, verdict) = match fast(endpoint, body, ctx) {
        Some(answered) => answered,
        None => match crate::review::parse(body) {
            Ok(req) => {
                let verdict = admit(endpoint, &req, ctx);
                (req, verdict)
            }
            Err(ParseError::Invalid { uid, reason }) => {
                let verdict = Verdict::bad_request(reason);
                let body = crate::review::response(&uid, &verdict);
                return Outcome::Review {
                    request: None,
                    uid,
                    verdict,
                    body,
                };
            }
            Err(e) => return Outcome::BadRequest(e.to_string()),
        },
    };
    let body = crate::review::response(&req.uid, &verdict);
    Outcome::Review {
        uid: req.uid.clone(),
        request: Some(Box::new(req)),
        verdict,
        body,
    }
}
