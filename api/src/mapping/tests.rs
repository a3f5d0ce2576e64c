#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::Module;

fn module(yaml: &str) -> Module {
    serde_norway::from_str(yaml).unwrap()
}

const MULTI: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: kmm-ci, namespace: ns1}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: kmm_ci_a}
      containerImage: registry.example/ci/${MOD_NAMESPACE}-${MOD_NAME}:${KERNEL_FULL_VERSION}
      registryTLS: {insecure: true}
      inTreeModulesToRemove: [a, b]
      build:
        dockerfileConfigMap: {name: base-dockerfile}
        buildArgs: [{name: ARG1, value: c1}, {name: KERNEL_VERSION, value: user}]
        secrets: [{name: s1}]
        selector: {builder: "true"}
      sign:
        keySecret: {name: key}
        certSecret: {name: cert}
        unsignedImage: registry.example/unsigned:${KERNEL_XYZ}
        filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/a.ko']
      kernelMappings:
        - literal: 6.1.0-28-amd64
          containerImage: "literal-image:${KERNEL_X}.${KERNEL_Y}.${KERNEL_Z}"
          inTreeModuleToRemove: single
        - regexp: '^.+\.el9_\d\.x86_64$'
          registryTLS: {insecureSkipTLSVerify: true}
          inTreeModulesToRemove: []
          build:
            dockerfileConfigMap: {name: el9-dockerfile}
            buildArgs: [{name: ARG1, value: m1}, {name: ZED, value: z}, {name: ALPHA, value: a}]
            secrets: [{name: s2}]
          sign:
            keySecret: {name: key-el9}
            certSecret: {name: cert-el9}
            filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/b.ko']
        - regexp: 'amd64'
"#;

#[test]
fn kernel_key_trims_one_plus() {
    for (input, want) in [
        ("6.1.0+", "6.1.0"),
        ("6.1.0++", "6.1.0+"),
        ("6.1.0", "6.1.0"),
        ("", ""),
    ] {
        assert_eq!(kernel_key(input), want);
    }
}

#[test]
fn normalization_and_dns_safety() {
    let cases = [
        (
            "5.14.0-70.13.1.el9_0.x86_64",
            "5.14.0-70.13.1.el9_0.x86_64",
            "5-14-0-70-13-1-el9-0-x86-64",
        ),
        (
            "6.1.0-28-amd64+rt~1",
            "6.1.0-28-amd64_rt_1",
            "6-1-0-28-amd64-rt-1",
        ),
        ("-6.1_", "-6.1_", "6-1"),
    ];
    for (input, normalized, dns) in cases {
        assert_eq!(normalize_kernel(input), normalized);
        assert_eq!(dns_safe_kernel(input), dns);
    }
}

#[test]
fn kernel_variables_table() {
    let vars = kernel_variables("5.14.0-70.13.1.el9_0.x86_64").unwrap();
    assert_eq!(vars["KERNEL_FULL_VERSION"], "5.14.0-70.13.1.el9_0.x86_64");
    assert_eq!(vars["KERNEL_VERSION"], "5.14.0-70.13.1.el9_0.x86_64");
    assert_eq!(vars["KERNEL_XYZ"], "5.14.0");
    assert_eq!(
        (
            vars["KERNEL_X"].as_str(),
            vars["KERNEL_Y"].as_str(),
            vars["KERNEL_Z"].as_str()
        ),
        ("5", "14", "0")
    );
    let vars = kernel_variables("6,1-2").unwrap();
    assert_eq!(vars["KERNEL_XYZ"], "6.1.2");
    for bad in ["6.1", "6", "", "6_1_0"] {
        assert_eq!(
            kernel_variables(bad),
            Err(MappingError::InvalidKernel {
                kernel: bad.to_owned()
            }),
            "{bad}"
        );
    }
}

#[test]
fn go_regexp_semantics() {
    let cases: &[(&str, &str, bool)] = &[
        // unanchored, like Go's MatchString
        ("el9", "5.14.0-70.el9.x86_64", true),
        ("^el9", "5.14.0-70.el9.x86_64", false),
        (r"^.+$", "6.1.0-28-amd64", true),
        // \d and \w are ASCII in Go
        (r"^\d+$", "١٢٣", false),
        (r"^\d+$", "123", true),
        (r"^\w+$", "héllo", false),
        (r"^[\d.]+$", "6.1", true),
        (r"^[^\d]+$", "abc", true),
        (r"\bamd64\b", "6.1.0-28-amd64", true),
        (r"\s", "a b", true),
        (r"\S+", "   ", false),
        (r"\.", "61", false),
        ("a.c", "aéc", true),
        (r"^\Q6.1.0+rt\E$", "6.1.0+rt", true),
        (r"^\Q6.1.0+rt\E$", "6x1x0rt", false),
        (r"^\Q6.1\E\.\d+$", "6.1.5", true),
        (r"\Q(unclosed", "x(unclosed", true),
    ];
    for (pattern, input, want) in cases {
        let re = compile_go_regexp(pattern).unwrap();
        assert_eq!(re.is_match(input), *want, "{pattern} against {input}");
    }
    assert!(compile_go_regexp("(").is_err());
    assert!(compile_go_regexp("").is_ok());
}

#[test]
fn first_match_wins_literal_then_regexp() {
    let m = module(MULTI);
    let mappings = &m
        .spec
        .module_loader
        .as_ref()
        .unwrap()
        .container
        .kernel_mappings;
    let cases = [
        ("6.1.0-28-amd64", Some(0)),
        ("5.14.0-70.13.1.el9_0.x86_64", Some(1)),
        ("6.1.0-27-amd64", Some(2)),
        ("4.18.0-372.el8.x86_64", None),
    ];
    for (kernel, want) in cases {
        match (find_mapping(mappings, kernel), want) {
            (Ok((idx, _)), Some(w)) => assert_eq!(idx, w, "{kernel}"),
            (Err(MappingError::NotFound { kernel: k }), None) => assert_eq!(k, kernel),
            (got, want) => panic!("{kernel}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn resolve_literal_mapping() {
    let r = resolve(&module(MULTI), "6.1.0-28-amd64+").unwrap();
    assert_eq!(r.mapping_index, 0);
    assert_eq!(r.kernel_version, "6.1.0-28-amd64");
    assert_eq!(r.container_image, "literal-image:6.1.0");
    assert_eq!(
        r.registry_tls,
        TlsOptions {
            insecure: true,
            insecure_skip_tls_verify: false
        }
    );
    // the deprecated singular field of the mapping replaces the container's list
    assert_eq!(r.in_tree_modules_to_remove, Some(vec!["single".to_owned()]));
    // container build only, with KMM's overrides: raw kernel, name and namespace, new names appended sorted
    let build = r.build.unwrap();
    assert_eq!(build.dockerfile_config_map.name, "base-dockerfile");
    let args: Vec<_> = build
        .build_args
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.value))
        .collect();
    assert_eq!(
        args,
        [
            ("ARG1", "c1"),
            ("KERNEL_VERSION", "6.1.0-28-amd64"),
            ("KERNEL_FULL_VERSION", "6.1.0-28-amd64"),
            ("MOD_NAME", "kmm-ci"),
            ("MOD_NAMESPACE", "ns1"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let sign = r.sign.unwrap();
    assert_eq!(
        sign.unsigned_image.as_deref(),
        Some("registry.example/unsigned:6.1.0")
    );
    assert_eq!(
        sign.files_to_sign.unwrap(),
        ["/opt/lib/modules/6.1.0-28-amd64/a.ko"]
    );
}

#[test]
fn resolve_regexp_mapping_merges_build_and_sign() {
    let r = resolve(&module(MULTI), "5.14.0-70.13.1.el9_0.x86_64").unwrap();
    assert_eq!(r.mapping_index, 1);
    assert_eq!(
        r.container_image,
        "registry.example/ci/ns1-kmm-ci:5.14.0-70.13.1.el9_0.x86_64"
    );
    // a mapping's registryTLS replaces the container's entirely
    assert_eq!(
        r.registry_tls,
        TlsOptions {
            insecure: false,
            insecure_skip_tls_verify: true
        }
    );
    // an empty mapping list is not nil: it replaces the container's list
    assert_eq!(r.in_tree_modules_to_remove, Some(vec![]));
    let build = r.build.unwrap();
    assert_eq!(build.dockerfile_config_map.name, "el9-dockerfile");
    assert_eq!(
        build
            .secrets
            .unwrap()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["s1", "s2"]
    );
    assert_eq!(build.selector.unwrap()["builder"], "true");
    let args: Vec<_> = build
        .build_args
        .unwrap()
        .into_iter()
        .map(|a| format!("{}={}", a.name, a.value))
        .collect();
    assert_eq!(
        args,
        [
            "ARG1=m1",
            "KERNEL_VERSION=5.14.0-70.13.1.el9_0.x86_64",
            "ALPHA=a",
            "ZED=z",
            "KERNEL_FULL_VERSION=5.14.0-70.13.1.el9_0.x86_64",
            "MOD_NAME=kmm-ci",
            "MOD_NAMESPACE=ns1"
        ]
    );
    let sign = r.sign.unwrap();
    assert_eq!(sign.key_secret.name, "key-el9");
    assert_eq!(sign.cert_secret.name, "cert-el9");
    // the mapping has no unsignedImage: the container's stays
    assert_eq!(
        sign.unsigned_image.as_deref(),
        Some("registry.example/unsigned:5.14.0")
    );
    assert_eq!(
        sign.files_to_sign.unwrap(),
        [
            "/opt/lib/modules/5.14.0-70.13.1.el9_0.x86_64/a.ko",
            "/opt/lib/modules/5.14.0-70.13.1.el9_0.x86_64/b.ko"
        ]
    );
}

#[test]
fn resolve_falls_back_to_container_settings() {
    let r = resolve(&module(MULTI), "6.1.0-27-amd64").unwrap();
    assert_eq!(r.mapping_index, 2);
    assert_eq!(
        r.container_image,
        "registry.example/ci/ns1-kmm-ci:6.1.0-27-amd64"
    );
    assert_eq!(
        r.in_tree_modules_to_remove,
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
}

#[test]
fn resolve_errors() {
    let m = module(MULTI);
    assert_eq!(
        resolve(&m, "4.18.0-372.el8.x86_64"),
        Err(MappingError::NotFound {
            kernel: "4.18.0-372.el8.x86_64".to_owned()
        })
    );
    // a kernel with fewer than three components is an error even when a mapping matches
    let mut short = m.clone();
    short
        .spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings[2]
        .regexp = Some(".*".to_owned());
    assert_eq!(
        resolve(&short, "6.1"),
        Err(MappingError::InvalidKernel {
            kernel: "6.1".to_owned()
        })
    );
    let mut no_loader = m.clone();
    no_loader.spec.module_loader = None;
    assert_eq!(
        resolve(&no_loader, "6.1.0"),
        Err(MappingError::NoModuleLoader)
    );
    let mut bad = m;
    bad.spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings[0]
        .regexp = Some("(".to_owned());
    bad.spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings[0]
        .literal = None;
    assert!(matches!(
        resolve(&bad, "6.1.0-28-amd64"),
        Err(MappingError::InvalidRegexp { index: 0, .. })
    ));
}

#[test]
fn mod_name_is_only_substituted_in_the_container_image() {
    let m = module(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: m, namespace: n}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: m}
      kernelMappings:
        - regexp: '.*'
          containerImage: 'img:${MOD_NAME}'
          sign:
            keySecret: {name: k}
            certSecret: {name: c}
            unsignedImage: 'u:${MOD_NAME}x${KERNEL_X}'
            filesToSign: ['/opt/${MOD_NAMESPACE}/a.ko']
"#,
    );
    let r = resolve(&m, "6.1.0").unwrap();
    assert_eq!(r.container_image, "img:m");
    let sign = r.sign.unwrap();
    assert_eq!(sign.unsigned_image.as_deref(), Some("u:x6"));
    assert_eq!(sign.files_to_sign.unwrap(), ["/opt//a.ko"]);
}

#[test]
fn envsubst_table() {
    let vars = |name: &str| match name {
        "A" => Some("alpha".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let cases: &[(&str, &str)] = &[
        ("plain", "plain"),
        ("$A", "alpha"),
        ("${A}", "alpha"),
        ("x${A}y", "xalphay"),
        ("$A.b", "alpha.b"),
        ("$Ab", ""),
        ("$UNSET", ""),
        ("${UNSET}", ""),
        ("$$A", "$A"),
        ("$${A}", "${A}"),
        ("a$", "a$"),
        ("$1", "$1"),
        ("$-x", "$-x"),
        ("${UNSET-def}", "def"),
        ("${EMPTY-def}", ""),
        ("${EMPTY:-def}", "def"),
        ("${A:-def}", "alpha"),
        ("${UNSET:=d}", "d"),
        ("${A+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${#A}", "5"),
        ("${UNSET:-${A}}", "alpha"),
        ("img:${A}-${UNSET}:tag", "img:alpha-:tag"),
    ];
    for (template, want) in cases {
        assert_eq!(envsubst(template, vars).unwrap(), *want, "{template}");
    }
    for bad in ["${A", "${}", "${1}", "${A%x}", "${#}"] {
        assert!(envsubst(bad, vars).is_err(), "{bad} should fail");
    }
}

#[test]
fn build_arg_overrides_match_upstream() {
    let arg = |n: &str, v: &str| BuildArg {
        name: n.to_owned(),
        value: v.to_owned(),
    };
    let got = apply_build_arg_overrides(
        vec![arg("b", "1"), arg("a", "2")],
        &[arg("z", "o1"), arg("a", "o2"), arg("c", "o3")],
    );
    assert_eq!(
        got,
        vec![
            arg("b", "1"),
            arg("a", "o2"),
            arg("c", "o3"),
            arg("z", "o1")
        ]
    );
    assert_eq!(apply_build_arg_overrides(vec![], &[]), vec![]);
}
