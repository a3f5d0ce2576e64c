#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::core::v1::{HostPathVolumeSource, Toleration, Volume};

use super::*;
use crate::devices::{DeviceEnv, DeviceMount};
use crate::module::{
    CommonContainerSpec, DeviceClassSpec, DevicePluginSpec, DraSpec, KernelMapping,
    LocalObjectReference, ModprobeArgs, ModuleLoaderSpec,
};

fn base() -> Module {
    serde_norway::from_str(
        r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: simple-kmod, namespace: default}
spec:
  selector: {node-role.kubernetes.io/worker: ""}
  moduleLoader:
    container:
      modprobe: {moduleName: simple-kmod}
      kernelMappings:
        - regexp: '^.*\.x86_64$'
          containerImage: registry.example/simple-kmod:${KERNEL_FULL_VERSION}
"#,
    )
    .unwrap()
}

fn container(m: &mut Module) -> &mut ModuleLoaderContainerSpec {
    &mut m.spec.module_loader.as_mut().unwrap().container
}

fn mapping(m: &mut Module, i: usize) -> &mut KernelMapping {
    &mut container(m).kernel_mappings[i]
}

fn sign(files: &[&str]) -> Sign {
    Sign {
        key_secret: LocalObjectReference { name: "k".into() },
        cert_secret: LocalObjectReference { name: "c".into() },
        files_to_sign: Some(files.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

fn toleration(key: &str, op: &str, value: &str, effect: &str, seconds: Option<i64>) -> Toleration {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Toleration {
        key: opt(key),
        operator: opt(op),
        value: opt(value),
        effect: opt(effect),
        toleration_seconds: seconds,
    }
}

fn host_path_volume(path: &str) -> Volume {
    Volume {
        name: "v".into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: None,
        }),
        ..Default::default()
    }
}

fn dra(driver: &str, classes: &[&str]) -> DraSpec {
    DraSpec {
        container: CommonContainerSpec {
            image: "dra:v1".into(),
            ..Default::default()
        },
        driver_name: driver.into(),
        device_classes: Some(
            classes
                .iter()
                .map(|n| DeviceClassSpec {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    }
}

type Mutation = fn(&mut Module);

/// Expected violations: (path, message fragment).
type Expected = &'static [(&'static str, &'static str)];

/// (case, mutation, expected (path, message fragment) pairs, in order). An empty list means the Module is valid.
const CASES: &[(&str, Mutation, Expected)] = &[
    ("the base module is valid", |_| {}, &[]),
    (
        "41 characters is the limit",
        |m| m.metadata.name = Some("n".repeat(34)),
        &[],
    ),
    (
        "name and namespace over 41 characters",
        |m| m.metadata.name = Some("n".repeat(35)),
        &[(
            "metadata.name",
            "combined length of 42 characters, which exceeds the maximum of 41",
        )],
    ),
    (
        "toleration with an invalid key",
        |m| m.spec.tolerations = Some(vec![toleration("bad key", "Exists", "", "", None)]),
        &[(
            "spec.tolerations[0].key",
            "failed to validate Module's tolerations: Toleration[0] invalid key 'bad key'",
        )],
    ),
    (
        "toleration with an empty key needs Exists",
        |m| m.spec.tolerations = Some(vec![toleration("", "Equal", "", "", None)]),
        &[(
            "spec.tolerations[0].operator",
            "Toleration[0] operator must be 'Exists' when key is empty",
        )],
    ),
    (
        "tolerationSeconds needs NoExecute",
        |m| m.spec.tolerations = Some(vec![toleration("k", "Exists", "", "NoSchedule", Some(5))]),
        &[(
            "spec.tolerations[0].effect",
            "effect must be 'NoExecute' when tolerationSeconds is set",
        )],
    ),
    (
        "Equal needs a valid label value",
        |m| m.spec.tolerations = Some(vec![toleration("k", "Equal", "not valid!", "", None)]),
        &[(
            "spec.tolerations[0].value",
            "invalid value 'not valid!' for Equal operator",
        )],
    ),
    (
        "Exists needs an empty value",
        |m| m.spec.tolerations = Some(vec![toleration("k", "Exists", "v", "", None)]),
        &[(
            "spec.tolerations[0].value",
            "value must be empty when operator is 'Exists'",
        )],
    ),
    (
        "unknown operator",
        |m| m.spec.tolerations = Some(vec![toleration("k", "In", "", "", None)]),
        &[(
            "spec.tolerations[0].operator",
            "invalid operator 'In', allowed values are ['Equal', 'Exists']",
        )],
    ),
    (
        "unknown effect",
        |m| m.spec.tolerations = Some(vec![toleration("k", "", "v", "Never", None)]),
        &[(
            "spec.tolerations[0].effect",
            "invalid effect 'Never', allowed values are",
        )],
    ),
    (
        "valid tolerations",
        |m| {
            m.spec.tolerations = Some(vec![
                toleration("", "Exists", "", "", None),
                toleration(
                    "node.kubernetes.io/unschedulable",
                    "Exists",
                    "",
                    "NoSchedule",
                    None,
                ),
                toleration("k", "", "v", "NoExecute", Some(30)),
            ])
        },
        &[],
    ),
    (
        "dra driverName is required",
        |m| m.spec.dra = Some(Box::new(dra("", &[]))),
        &[(
            "spec.dra.driverName",
            "failed to validate DRA: spec.dra.driverName is required",
        )],
    ),
    (
        "dra names must be DNS subdomains and unique",
        |m| {
            m.spec.dra = Some(Box::new(dra(
                "Bad_Driver",
                &["gpu.example.com", "", "Bad", "gpu.example.com"],
            )))
        },
        &[
            (
                "spec.dra.driverName",
                "spec.dra.driverName \"Bad_Driver\" is not a valid DNS subdomain",
            ),
            (
                "spec.dra.deviceClasses[1].name",
                "spec.dra.deviceClasses[1].name is required",
            ),
            (
                "spec.dra.deviceClasses[2].name",
                "spec.dra.deviceClasses[2].name \"Bad\" is not a valid DNS subdomain",
            ),
            (
                "spec.dra.deviceClasses[3].name",
                "spec.dra.deviceClasses[3].name \"gpu.example.com\" is a duplicate",
            ),
        ],
    ),
    (
        "hostPath volumes of the device plugin are limited",
        |m| {
            m.spec.device_plugin = Some(Box::new(DevicePluginSpec {
                container: CommonContainerSpec {
                    image: "dp:v1".into(),
                    ..Default::default()
                },
                volumes: Some(vec![
                    host_path_volume("/dev/../etc"),
                    host_path_volume("/var/lib/kubelet"),
                    host_path_volume("/devices"),
                ]),
                ..Default::default()
            }))
        },
        &[
            (
                "spec.devicePlugin.volumes[0].hostPath.path",
                "hostPath \"/dev/../etc\" is not allowed",
            ),
            (
                "spec.devicePlugin.volumes[2].hostPath.path",
                "hostPath \"/devices\" is not allowed",
            ),
        ],
    ),
    (
        "dra and devicePlugin are mutually exclusive",
        |m| {
            m.spec.dra = Some(Box::new(dra("gpu.example.com", &[])));
            m.spec.device_plugin = Some(Box::new(DevicePluginSpec {
                container: CommonContainerSpec {
                    image: "dp:v1".into(),
                    ..Default::default()
                },
                ..Default::default()
            }));
        },
        &[(
            "spec",
            "spec.dra and spec.devicePlugin are mutually exclusive",
        )],
    ),
    (
        "no moduleLoader is accepted",
        |m| m.spec.module_loader = None,
        &[],
    ),
    (
        "container sets both in-tree fields",
        |m| {
            container(m).in_tree_module_to_remove = Some("a".into());
            container(m).in_tree_modules_to_remove = Some(vec!["b".into()]);
        },
        &[(
            "spec.moduleLoader.container.inTreeModulesToRemove",
            "only one of the Container's fields: InTreeModulesToRemove or InTreeModuleToRemove can be defined",
        )],
    ),
    (
        "container image without tag or digest",
        |m| container(m).container_image = Some("registry.example/simple-kmod".into()),
        &[(
            "spec.moduleLoader.container.containerImage",
            "container image must explicitely set a tag or digest; got: registry.example/simple-kmod",
        )],
    ),
    (
        "a registry port counts as a tag, as upstream",
        |m| container(m).container_image = Some("host:5000/img".into()),
        &[],
    ),
    (
        "regexp and literal are mutually exclusive",
        |m| mapping(m, 0).literal = Some("6.1.0".into()),
        &[(
            "spec.moduleLoader.container.kernelMappings[0]",
            "failed to validate kernel mappings: regexp and literal are mutually exclusive properties at kernelMappings[0]",
        )],
    ),
    (
        "regexp or literal must be set",
        |m| mapping(m, 0).regexp = None,
        &[(
            "spec.moduleLoader.container.kernelMappings[0]",
            "regexp or literal must be set at kernelMappings[0]",
        )],
    ),
    (
        "invalid regexp",
        |m| mapping(m, 0).regexp = Some("(unclosed".into()),
        &[(
            "spec.moduleLoader.container.kernelMappings[0].regexp",
            "invalid regexp at index 0",
        )],
    ),
    (
        "missing image",
        |m| mapping(m, 0).container_image = String::new(),
        &[(
            "spec.moduleLoader.container.kernelMappings[0].containerImage",
            "missing spec.moduleLoader.container.kernelMappings[0].containerImage",
        )],
    ),
    (
        "the container image stands in for the mapping's",
        |m| {
            mapping(m, 0).container_image = String::new();
            container(m).container_image = Some("img:${KERNEL_FULL_VERSION}".into());
        },
        &[],
    ),
    (
        "mapping image without tag",
        |m| mapping(m, 0).container_image = "img".into(),
        &[(
            "spec.moduleLoader.container.kernelMappings[0].containerImage",
            "must explicitely set a tag or digest; got: img",
        )],
    ),
    (
        "mapping sets both in-tree fields",
        |m| {
            mapping(m, 0).in_tree_module_to_remove = Some("a".into());
            mapping(m, 0).in_tree_modules_to_remove = Some(vec![]);
        },
        &[(
            "spec.moduleLoader.container.kernelMappings[0].inTreeModulesToRemove",
            "only one of the KernelMapping fields: InTreeModulesToRemove or InTreeModuleToRemove can be defined",
        )],
    ),
    (
        "mapping and container use different in-tree fields",
        |m| {
            mapping(m, 0).in_tree_modules_to_remove = Some(vec!["a".into()]);
            container(m).in_tree_module_to_remove = Some("b".into());
        },
        &[(
            "spec.moduleLoader.container.kernelMappings[0].inTreeModulesToRemove",
            "only one type if field (InTreeModuleToRemove or InTreeModulesToRemove) can be defined in KenrelMapping or Container",
        )],
    ),
    (
        "moduleName and rawArgs together",
        |m| {
            container(m).modprobe.raw_args = Some(ModprobeArgs {
                load: Some(vec!["-v".into()]),
                unload: None,
            })
        },
        &[(
            "spec.moduleLoader.container.modprobe.rawArgs",
            "failed to validate modprobe: rawArgs cannot be set when moduleName is set",
        )],
    ),
    (
        "no moduleName needs both rawArgs",
        |m| {
            container(m).modprobe.module_name = None;
            container(m).modprobe.raw_args = Some(ModprobeArgs {
                load: Some(vec!["simple".into()]),
                unload: Some(vec![]),
            });
        },
        &[(
            "spec.moduleLoader.container.modprobe.rawArgs",
            "load and unload rawArgs must be set when moduleName is unset",
        )],
    ),
    (
        "rawArgs alone are valid",
        |m| {
            container(m).modprobe.module_name = None;
            container(m).modprobe.raw_args = Some(ModprobeArgs {
                load: Some(vec!["simple".into()]),
                unload: Some(vec!["-r".into(), "simple".into()]),
            });
        },
        &[],
    ),
    (
        "loading order needs two entries",
        |m| container(m).modprobe.modules_loading_order = Some(vec!["simple-kmod".into()]),
        &[(
            "spec.moduleLoader.container.modprobe.modulesLoadingOrder",
            "at least two values must be defined",
        )],
    ),
    (
        "loading order starts with moduleName and has no duplicates",
        |m| {
            container(m).modprobe.modules_loading_order =
                Some(vec!["a".into(), "b".into(), "a".into()])
        },
        &[
            (
                "spec.moduleLoader.container.modprobe.modulesLoadingOrder[0]",
                "the first element must be moduleName",
            ),
            (
                "spec.moduleLoader.container.modprobe.modulesLoadingOrder[2]",
                "\"a\": duplicate value in the loading order list",
            ),
        ],
    ),
    (
        "loading order needs moduleName",
        |m| {
            container(m).modprobe.module_name = None;
            container(m).modprobe.raw_args = Some(ModprobeArgs {
                load: Some(vec!["a".into()]),
                unload: Some(vec!["a".into()]),
            });
            container(m).modprobe.modules_loading_order = Some(vec!["a".into(), "b".into()]);
        },
        &[
            (
                "spec.moduleLoader.container.modprobe.modulesLoadingOrder",
                "if a loading order is defined, moduleName must be set",
            ),
            (
                "spec.moduleLoader.container.modprobe.modulesLoadingOrder[0]",
                "the first element must be moduleName",
            ),
        ],
    ),
    (
        "a valid loading order",
        |m| {
            container(m).modprobe.modules_loading_order =
                Some(vec!["simple-kmod".into(), "dep".into()])
        },
        &[],
    ),
    (
        "sign needs filesToSign",
        |m| container(m).sign = Some(Box::new(sign(&[]))),
        &[(
            "spec.moduleLoader.container.sign.filesToSign",
            "global Sign: filesToSign is required when Sign is set",
        )],
    ),
    (
        "filesToSign must be under dirName",
        |m| {
            container(m).sign = Some(Box::new(sign(&[
                "/opt/lib/modules/${KERNEL_FULL_VERSION}/a.ko",
                "/lib/a.ko",
            ])));
            mapping(m, 0).sign = Some(Box::new(sign(&["/optical/a.ko"])));
        },
        &[
            (
                "spec.moduleLoader.container.sign.filesToSign[1]",
                "global Sign: filesToSign[\"/lib/a.ko\"] must be under dirName \"/opt\"",
            ),
            (
                "spec.moduleLoader.container.kernelMappings[0].sign.filesToSign[0]",
                "kernelMappings[0].Sign: filesToSign[\"/optical/a.ko\"] must be under dirName \"/opt\"",
            ),
        ],
    ),
    (
        "filesToSign follow a custom dirName",
        |m| {
            container(m).modprobe.dir_name = "/modules".into();
            container(m).sign = Some(Box::new(sign(&["/modules/lib/modules/*/a.ko"])));
        },
        &[],
    ),
    (
        "devices need paths or slots, not both, not zero",
        |m| {
            m.spec.devices = Some(DevicesSpec {
                resource_name: Some("kubernetes.io/gpu".into()),
                paths: Some(vec!["dev/x".into(), "/dev/[".into()]),
                slots: Some(0),
                shared: Some(0),
                env: Some(vec![DeviceEnv {
                    name: "1X".into(),
                    value: String::new(),
                }]),
                mounts: Some(vec![DeviceMount {
                    host_path: "opt".into(),
                    container_path: "/opt".into(),
                    read_only: true,
                }]),
            })
        },
        &[
            (
                "spec.devices.resourceName",
                "the kubelet refuses extended resources in the kubernetes.io domain",
            ),
            ("spec.devices", "paths and slots are mutually exclusive"),
            ("spec.devices.paths[0]", "must be an absolute path"),
            ("spec.devices.paths[1]", "invalid glob"),
            ("spec.devices.shared", "must be at least 1"),
            ("spec.devices.slots", "must be at least 1"),
            (
                "spec.devices.env[0].name",
                "invalid environment variable name",
            ),
            (
                "spec.devices.mounts[0].hostPath",
                "must be an absolute path",
            ),
        ],
    ),
    (
        "devices with neither paths nor slots, and a resource name without domain",
        |m| {
            m.spec.devices = Some(DevicesSpec {
                resource_name: Some("gpu".into()),
                ..Default::default()
            })
        },
        &[
            (
                "spec.devices.resourceName",
                "must be a domain-prefixed name",
            ),
            ("spec.devices", "one of paths or slots must be set"),
        ],
    ),
    (
        "valid devices",
        |m| {
            m.spec.devices = Some(DevicesSpec {
                resource_name: Some("example.com/gpu".into()),
                paths: Some(vec!["/dev/simple_kmod*".into()]),
                shared: Some(4),
                ..Default::default()
            })
        },
        &[],
    ),
];

#[test]
fn module_rules_table() {
    for (case, mutate, want) in CASES {
        let mut m = base();
        mutate(&mut m);
        let got = validate_module(&m, None).err().unwrap_or_default();
        let got_pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got.len(), want.len(), "{case}: got {got_pairs:#?}");
        for ((path, msg), (want_path, want_msg)) in got_pairs.iter().zip(want.iter()) {
            assert_eq!(path, want_path, "{case}");
            assert!(
                msg.contains(want_msg),
                "{case}: {msg:?} does not contain {want_msg:?}"
            );
        }
    }
}

#[test]
fn every_violation_is_reported_at_once_in_upstream_order() {
    let mut m = base();
    m.metadata.name = Some("x".repeat(50));
    m.spec.tolerations = Some(vec![toleration("", "Equal", "", "", None)]);
    mapping(&mut m, 0).literal = Some("6.1.0".into());
    mapping(&mut m, 0).container_image = "untagged".into();
    container(&mut m).modprobe.modules_loading_order = Some(vec!["x".into()]);
    container(&mut m).sign = Some(Box::new(sign(&[])));
    let errors = validate_module(&m, None).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "metadata.name",
            "spec.tolerations[0].operator",
            "spec.moduleLoader.container.kernelMappings[0]",
            "spec.moduleLoader.container.kernelMappings[0].containerImage",
            "spec.moduleLoader.container.modprobe.modulesLoadingOrder",
            "spec.moduleLoader.container.modprobe.modulesLoadingOrder[0]",
            "spec.moduleLoader.container.sign.filesToSign",
        ]
    );
    let rendered = render(&errors);
    assert_eq!(rendered.lines().count(), 7);
    assert!(
        rendered
            .starts_with("metadata.name: module name and namespace have a combined length of 57")
    );
}

#[test]
fn dra_needs_kubernetes_1_34() {
    let mut m = base();
    m.spec.dra = Some(Box::new(dra("gpu.example.com", &[])));
    let old = KubeVersion {
        major: 1,
        minor: 33,
    };
    let errors = validate_module(&m, Some(old)).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains(
            "spec.dra requires Kubernetes 1.34 or later; current cluster version is 1.33"
        )
    );
    assert!(
        validate_module(
            &m,
            Some(KubeVersion {
                major: 1,
                minor: 34
            })
        )
        .is_ok()
    );
    // unknown version (the hub): the gate is skipped
    assert!(validate_module(&m, None).is_ok());
}

#[test]
fn version_may_not_appear_or_disappear_on_update() {
    let versioned = |v: Option<&str>| {
        let mut m = base();
        container(&mut m).version = v.map(str::to_owned);
        m
    };
    let cases = [
        (None, None, true),
        (Some("v1"), Some("v2"), true),
        (None, Some("v1"), false),
        (Some("v1"), None, false),
        (Some("v1"), Some(""), false),
        (Some(""), None, true),
    ];
    for (old, new, ok) in cases {
        let got = validate_module_update(&versioned(old), &versioned(new), None);
        assert_eq!(got.is_ok(), ok, "{old:?} -> {new:?}: {got:?}");
        if let Err(e) = got {
            assert_eq!(e[0].path, "spec.moduleLoader.container.version");
            assert!(
                e[0].message
                    .contains("cannot update to or from an empty version")
            );
        }
    }
    // without a moduleLoader on either side, the version rule does not apply
    let mut old = versioned(Some("v1"));
    old.spec.module_loader = None;
    assert!(validate_module_update(&old, &versioned(None), None).is_ok());
}

#[test]
fn managed_cluster_modules_use_the_module_rules_without_name_length() {
    let mut mcm = ManagedClusterModule::new(&"m".repeat(60), ManagedClusterModuleSpec::default());
    mcm.spec.spoke_namespace = "n".repeat(60);
    mcm.spec.module_spec = base().spec;
    assert!(validate_managed_cluster_module(&mcm).is_ok());
    mcm.spec.module_spec.dra = Some(Box::new(dra("gpu.example.com", &[])));
    assert!(
        validate_managed_cluster_module(&mcm).is_ok(),
        "no kube version on the hub"
    );
    mcm.spec
        .module_spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .kernel_mappings[0]
        .regexp = None;
    let errors = validate_managed_cluster_module(&mcm).unwrap_err();
    assert_eq!(
        errors[0].path,
        "spec.moduleSpec.moduleLoader.container.kernelMappings[0]"
    );
    let mut old = mcm.clone();
    old.spec
        .module_spec
        .module_loader
        .as_mut()
        .unwrap()
        .container
        .version = Some("v1".into());
    let errors = validate_managed_cluster_module_update(&old, &mcm).unwrap_err();
    assert_eq!(
        errors[0].path,
        "spec.moduleSpec.moduleLoader.container.version"
    );
}

#[test]
fn namespace_deletion_guard() {
    let labelled = [(NAMESPACE_CONTAINS_MODULES_LABEL.to_owned(), String::new())];
    let err = validate_namespace_deletion(labelled.iter().map(|(k, v)| (k, v))).unwrap_err();
    assert_eq!(
        err.message,
        "namespace contains one or more Module resources; delete those before deleting the namespace"
    );
    let other = [(
        "kmm.node.kubernetes.io/contains-modules".to_owned(),
        String::new(),
    )];
    assert!(validate_namespace_deletion(other.iter().map(|(k, v)| (k, v))).is_ok());
}

#[test]
fn preflight_kernel_version() {
    let cases = [
        ("", Some("kernelVersion cannot be empty")),
        ("6.1", Some("invalid kernelVersion 6.1")),
        ("6.1.0", None),
        ("5.14.0-70.el9.x86_64", None),
        ("6,1-0", None),
    ];
    for (kv, want) in cases {
        match (validate_preflight_kernel_version(kv), want) {
            (Ok(()), None) => {}
            (Err(e), Some(msg)) => assert_eq!(e.message, msg),
            (got, want) => panic!("{kv}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn loader_only_fields_are_not_needed_by_devices_only_modules() {
    let mut m = base();
    m.spec.module_loader = Some(Box::new(ModuleLoaderSpec::default()));
    // a moduleLoader without mappings and without moduleName: the modprobe rule fires, nothing panics
    let errors = validate_module(&m, None).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("load and unload rawArgs must be set"))
    );
}
