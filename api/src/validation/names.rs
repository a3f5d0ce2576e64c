//! Kubernetes name validators (apimachinery `util/validation`), with its error texts.
//!
//! The apimachinery regexps are small enough to check character by character; the `*_FMT` constants keep the
//! regexps for the error texts and the unit tests, which cross-check the checks against them. (The device plugin
//! validates every Module it reads with these: compiling the regexps there cost more resident memory than the rest of
//! validation together.)

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const ENV_VAR_NAME_FMT: &str = "[-._a-zA-Z][-._a-zA-Z0-9]*";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// One DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_dns1123_label(s: &str) -> bool {
    let lower_alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            lower_alnum(f) && lower_alnum(l) && b.iter().all(|c| lower_alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(is_dns1123_label)
}

/// `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(s: &str) -> bool {
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_');
    s.as_bytes()
        .first()
        .is_some_and(|f| !f.is_ascii_digit() && allowed(f))
        && s.as_bytes().iter().all(allowed)
}

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
    if !name.is_empty() && !is_qualified_name_part(name) {
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
    if !(value.is_empty() || is_qualified_name_part(value)) {
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
    if !is_dns1123_subdomain(value) {
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
    if !is_env_var_name(value) {
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

/// `IsExtendedResourceName` as the kubelet applies it to device plugin registrations
/// (k8s.io/kubernetes `pkg/apis/core/v1/helper`): not a native resource (`IsNativeResource`: the name has a `/` and
/// does not contain `kubernetes.io/` anywhere, so `example-kubernetes.io/gpu` is refused too), no `requests.` prefix,
/// and `requests.<name>` is a qualified name (so the domain has at most 244 characters).
pub fn extended_resource_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if !value.contains('/') {
        errs.push("must be a domain-prefixed name (e.g. 'example.com/gpu'): the kubelet refuses names without a domain".to_owned());
        return errs;
    }
    if value.contains("kubernetes.io/") {
        errs.push(
            "must not contain 'kubernetes.io/': the kubelet refuses extended resources in the kubernetes.io domain \
             (any name containing 'kubernetes.io/' counts as native)"
                .to_owned(),
        );
    }
    if value.starts_with("requests.") {
        errs.push("must not start with 'requests.'".to_owned());
    }
    errs.extend(
        qualified_name(&format!("requests.{value}"))
            .into_iter()
            .map(|e| format!("'requests.' + name: {e}")),
    );
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

    /// The kubelet's `IsExtendedResourceName` cases (k8s.io/kubernetes helper tests), the `kubernetes.io/`
    /// substring rule and the length of `requests.<name>`.
    #[test]
    fn extended_resources_as_the_kubelet_judges_them() {
        let domain_244 = format!("{}.com", "a".repeat(240));
        let domain_245 = format!("{}.com", "a".repeat(241));
        for (name, want) in [
            ("pod.alpha.kubernetes.io/opaque-int-resource-foo", false),
            ("kubernetes.io/resource-foo", false),
            ("foo", false),
            ("a/b", true),
            ("requests.foobar", false),
            ("c/d/", false),
            ("", false),
            ("example.com/gpu", true),
            ("nvidia.com/gpu", true),
            ("kmm.sigs.x-k8s.io/default.simple-kmod", true),
            ("hugepages-2Mi", false),
            ("cpu", false),
            ("kmm.node.kubernetes.io/gpu", false),
            // Contains "kubernetes.io/": the kubelet refuses it although the domain is not kubernetes.io.
            ("example-kubernetes.io/gpu", false),
            ("notkubernetes.io/gpu", false),
            // Not followed by "/": allowed.
            ("kubernetes.io.example.com/gpu", true),
            ("example.com/kubernetes.io", true),
            ("requests.example.com/gpu", false),
            ("Example.com/gpu", false),
            ("example.com/-gpu", false),
            ("example.com/GPU_1.x", true),
            (&format!("example.com/{}", "g".repeat(63)), true),
            (&format!("example.com/{}", "g".repeat(64)), false),
            // "requests." + name must be a qualified name: the domain loses 9 of its 253 characters.
            (&format!("{domain_244}/gpu"), true),
            (&format!("{domain_245}/gpu"), false),
        ] {
            assert_eq!(
                extended_resource_name(name).is_empty(),
                want,
                "{name}: {:?}",
                extended_resource_name(name)
            );
        }
    }

    /// The hand-written checks agree with the apimachinery regexps on generated strings.
    #[test]
    fn checks_agree_with_the_regexps() {
        let anchored = |fmt: &str| regex::Regex::new(&format!("^(?:{fmt})$")).unwrap();
        let qualified = anchored(QUALIFIED_NAME_FMT);
        let label = anchored(LABEL_VALUE_FMT);
        let subdomain = anchored(DNS1123_SUBDOMAIN_FMT);
        let env = anchored(ENV_VAR_NAME_FMT);
        const ALPHABET: &[u8] = b"aZ09-_./ \\";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..50_000 {
            let s: String = (0..next(8))
                .map(|_| match ALPHABET[next(ALPHABET.len())] {
                    b'\\' => '\u{e9}',
                    b => b as char,
                })
                .collect();
            assert_eq!(is_qualified_name_part(&s), qualified.is_match(&s), "{s:?}");
            assert_eq!(
                s.is_empty() || is_qualified_name_part(&s),
                label.is_match(&s),
                "{s:?}"
            );
            assert_eq!(is_dns1123_subdomain(&s), subdomain.is_match(&s), "{s:?}");
            assert_eq!(is_env_var_name(&s), env.is_match(&s), "{s:?}");
        }
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
