//! Kubernetes name validators (apimachinery `util/validation`), with its error texts.

use std::sync::LazyLock;

use regex::Regex;

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const ENV_VAR_NAME_FMT: &str = "[-._a-zA-Z][-._a-zA-Z0-9]*";

fn anchored(fmt: &str) -> Regex {
    // The patterns are constants above; a failure here is a programming error caught by the unit tests, so fall back
    // to a regex that matches nothing instead of panicking.
    Regex::new(&format!("^(?:{fmt})$")).unwrap_or_else(|_| never_matches())
}

fn never_matches() -> Regex {
    #[allow(clippy::unwrap_used)]
    Regex::new("[^\\s\\S]").unwrap()
}

static QUALIFIED_NAME: LazyLock<Regex> = LazyLock::new(|| anchored(QUALIFIED_NAME_FMT));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| anchored(LABEL_VALUE_FMT));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static ENV_VAR_NAME: LazyLock<Regex> = LazyLock::new(|| anchored(ENV_VAR_NAME_FMT));

/// `IsQualifiedName`: an optional DNS-1123 subdomain prefix and `/`, then a name of at most 63 characters.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match value.split('/').collect::<Vec<_>>()[..] {
        [name] => (None, name),
        [prefix, name] => (Some(prefix), name),
        _ => {
            errs.push(format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end \
                 with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for \
                 validation is '{QUALIFIED_NAME_FMT}') with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    }
    if !name.is_empty() && !QUALIFIED_NAME.is_match(name) {
        errs.push(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is \
             '{QUALIFIED_NAME_FMT}')"
        ));
    }
    errs
}

/// `IsValidLabelValue`: empty, or at most 63 characters of the label-value alphabet.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !LABEL_VALUE.is_match(value) {
        errs.push(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used \
             for validation is '{LABEL_VALUE_FMT}')"
        ));
    }
    errs
}

/// `IsDNS1123Subdomain`: a lowercase RFC 1123 subdomain of at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !DNS1123_SUBDOMAIN.is_match(value) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must \
             start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is \
             '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// `IsEnvVarName`: a C-like identifier that may also contain `-` and `.`, not `.` or `..` alone.
pub fn env_var_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if !ENV_VAR_NAME.is_match(value) {
        errs.push(format!(
            "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and \
             must not start with a digit (regex used for validation is '{ENV_VAR_NAME_FMT}')"
        ));
    }
    if value == "." || value == ".." {
        errs.push(format!("must not be '{value}'"));
    }
    errs
}

/// `IsExtendedResourceName` as the kubelet applies it to device plugin registrations: `domain/name`, not in the
/// `kubernetes.io` domain, not starting with `requests.`, and a qualified name.
pub fn extended_resource_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if !value.contains('/') {
        errs.push("must be a domain-prefixed name (e.g. 'example.com/gpu'): the kubelet refuses names without a domain".to_owned());
        return errs;
    }
    let domain = value.split('/').next().unwrap_or_default();
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        errs.push(format!(
            "the domain {domain:?} is reserved for native resources: the kubelet refuses extended resources in the \
             kubernetes.io domain"
        ));
    }
    if value.starts_with("requests.") {
        errs.push("must not start with 'requests.'".to_owned());
    }
    errs.extend(qualified_name(value));
    errs
}

/// Go's `filepath.Clean` on a Unix path: purely lexical.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in [
            "a",
            "node.kubernetes.io/unschedulable",
            "example.com/My_Name-1",
            "x/y",
        ] {
            assert!(
                qualified_name(ok).is_empty(),
                "{ok}: {:?}",
                qualified_name(ok)
            );
        }
        for bad in [
            "-a",
            "a/",
            "/a",
            "a/b/c",
            "Example.com/x",
            &"n".repeat(64),
            "a b",
        ] {
            assert!(!qualified_name(bad).is_empty(), "{bad} should be invalid");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "v1", "a.b-c_d", &"v".repeat(63)] {
            assert!(label_value(ok).is_empty(), "{ok}");
        }
        for bad in ["-v", "v-", "a b", &"v".repeat(64)] {
            assert!(!label_value(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        assert!(dns1123_subdomain("gpu.example.com").is_empty());
        assert!(!dns1123_subdomain("Gpu.example.com").is_empty());
        assert!(!dns1123_subdomain("").is_empty());
        assert!(!dns1123_subdomain(&"a".repeat(254)).is_empty());
    }

    #[test]
    fn extended_resources() {
        assert!(extended_resource_name("example.com/gpu").is_empty());
        assert!(extended_resource_name("kmm.sigs.x-k8s.io/default.simple-kmod").is_empty());
        assert!(!extended_resource_name("gpu").is_empty());
        assert!(!extended_resource_name("kubernetes.io/gpu").is_empty());
        assert!(!extended_resource_name("kmm.node.kubernetes.io/gpu").is_empty());
        assert!(!extended_resource_name("requests.example.com/gpu").is_empty());
    }

    #[test]
    fn env_names() {
        assert!(env_var_name("SIMPLE_KMOD").is_empty());
        assert!(!env_var_name("1ABC").is_empty());
        assert!(!env_var_name("..").is_empty());
    }

    #[test]
    fn clean_matches_go() {
        let cases = [
            ("", "."),
            ("/", "/"),
            ("/dev/../etc", "/etc"),
            ("/dev//null/", "/dev/null"),
            ("/../dev", "/dev"),
            ("a/../..", ".."),
            ("./a/./b", "a/b"),
            ("/var/lib/../../sys", "/sys"),
        ];
        for (input, want) in cases {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }
}
