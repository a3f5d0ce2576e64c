//! kmm-device-plugin: the kmm-rs node agent.
//!
//! One per node (DaemonSet). Its kubelet-facing half advertises the devices of loaded kernel modules over the
//! kubelet device plugin API v1beta1; its loading half reconciles the Modules that target the node.
