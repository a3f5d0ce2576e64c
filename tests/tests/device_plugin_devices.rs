//! The real kmm-device-plugin against the kubelet simulator over real unix sockets: devices appear with the kmod and
//! its device nodes, Allocate answers with device specs, env and mounts, shared devices are offered N times, an
//! unload turns devices Unhealthy and then drops them, a reload brings the same IDs back, Module edits apply, and
//! SIGTERM removes the sockets. Every change must reach the kubelet within 1 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kmm_e2e::device_plugin::{Node, Plugin, http_get, module_yaml};
use kmm_e2e::kubelet_sim::KubeletSim;

const SIMPLE: &str = "example.com/simple";
const SLOTS: &str = "example.com/slots";
const CHANGE: Duration = Duration::from_secs(1);
const STARTUP: Duration = Duration::from_secs(20);

fn modules(shared: u32) -> String {
    [
        module_yaml(
            "simple",
            Some("simple-kmod"),
            "{role: gpu}",
            &format!(
                "{{resourceName: {SIMPLE}, paths: ['/dev/simple_kmod*'], shared: {shared}, env: [{{name: SIMPLE_KMOD, value: '1'}}], mounts: [{{hostPath: /opt/lib, containerPath: /opt/lib, readOnly: true}}]}}"
            ),
        ),
        module_yaml("slots", None, "{}", &format!("{{resourceName: {SLOTS}, slots: 3}}")),
        module_yaml("elsewhere", None, "{role: storage}", "{resourceName: example.com/elsewhere, slots: 1}"),
    ]
    .join("---\n")
}

fn all(devices: &BTreeMap<String, String>, health: &str) -> bool {
    devices.values().all(|h| h == health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_follow_the_kmod_and_allocate_answers() {
    let node = Node::new().unwrap();
    node.write_modules("modules.yaml", &modules(2)).unwrap();
    let sim = KubeletSim::start(&node.plugin_dir()).await.unwrap();
    let mut plugin = Plugin::start(&node, "role=gpu,zone=a", &["--unhealthy-grace", "1s"]).unwrap();

    // Both matching Modules register; the kmod is not loaded, so `simple` offers nothing yet.
    sim.wait_until(STARTUP, "slots and simple registered", |s| {
        s.allocatable(SLOTS) == 3 && s.resources.contains_key(SIMPLE)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));
    assert_eq!(sim.with_state(|s| s.capacity(SIMPLE)), 0);
    let ids: Vec<String> = sim.with_state(|s| s.devices(SLOTS).into_keys().collect());
    assert_eq!(ids, ["slot-0", "slot-1", "slot-2"]);

    // The kmod loads and two device nodes appear: 2 devices x 2 shared copies.
    node.add_dev("simple_kmod0").unwrap();
    node.add_dev("simple_kmod1").unwrap();
    node.add_dev("unrelated").unwrap();
    let t = Instant::now();
    node.load("simple_kmod").unwrap();
    sim.wait_until(CHANGE, "simple devices healthy", |s| {
        s.allocatable(SIMPLE) == 4
    })
    .await
    .unwrap();
    println!("kmod load -> allocatable: {:?}", t.elapsed());
    if std::env::var_os("KMM_TEST_PLUGIN_LOG").is_some() {
        println!("{}", plugin.log());
    }
    let healthy = sim.with_state(|s| s.devices(SIMPLE));
    let ids: Vec<&str> = healthy.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "simple_kmod0-0",
            "simple_kmod0-1",
            "simple_kmod1-0",
            "simple_kmod1-1"
        ]
    );

    // Allocate two: the plugin prefers copies of different devices; specs, env and mounts come back.
    let (got, resp) = sim.allocate(SIMPLE, 2).await.unwrap();
    assert_eq!(got, ["simple_kmod0-0", "simple_kmod1-0"]);
    let specs: Vec<(&str, &str, &str)> = resp
        .devices
        .iter()
        .map(|d| {
            (
                d.host_path.as_str(),
                d.container_path.as_str(),
                d.permissions.as_str(),
            )
        })
        .collect();
    assert_eq!(
        specs,
        [
            ("/dev/simple_kmod0", "/dev/simple_kmod0", "rw"),
            ("/dev/simple_kmod1", "/dev/simple_kmod1", "rw")
        ]
    );
    assert_eq!(resp.envs.get("SIMPLE_KMOD").map(String::as_str), Some("1"));
    assert_eq!(resp.mounts.len(), 1);
    assert_eq!(
        (
            resp.mounts[0].host_path.as_str(),
            resp.mounts[0].container_path.as_str()
        ),
        ("/opt/lib", "/opt/lib")
    );
    assert!(resp.mounts[0].read_only);
    // Idempotent (init containers, checkpoint replay).
    assert_eq!(sim.allocate_ids(SIMPLE, &got).await.unwrap(), resp);
    // An unknown ID is an error naming it.
    let err = sim
        .allocate_ids(SIMPLE, &["simple_kmod9-0".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("simple_kmod9-0"), "{err}");
    // Slots: no device nodes, just the env-less, mount-less grant.
    let (slot_ids, slot_resp) = sim.allocate(SLOTS, 2).await.unwrap();
    assert_eq!(slot_ids.len(), 2);
    assert!(slot_resp.devices.is_empty());

    // Unload: Unhealthy at once, dropped after the 1 s grace.
    let t = Instant::now();
    node.unload("simple_kmod").unwrap();
    sim.wait_until(CHANGE, "simple devices unhealthy", |s| {
        s.capacity(SIMPLE) == 4 && all(&s.devices(SIMPLE), "Unhealthy")
    })
    .await
    .unwrap();
    println!("kmod unload -> unhealthy: {:?}", t.elapsed());
    let err = sim
        .allocate_ids(SIMPLE, &["simple_kmod0-1".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("simple_kmod0-1") && err.contains("unhealthy"),
        "{err}"
    );
    sim.wait_until(Duration::from_secs(3), "simple devices dropped", |s| {
        s.capacity(SIMPLE) == 0
    })
    .await
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "dropped before the grace period: {:?}",
        t.elapsed()
    );

    // Reload: the same IDs, Healthy.
    node.load("simple_kmod").unwrap();
    sim.wait_until(CHANGE, "simple devices back", |s| {
        s.allocatable(SIMPLE) == 4
    })
    .await
    .unwrap();
    let back: Vec<String> = sim.with_state(|s| s.devices(SIMPLE).into_keys().collect());
    assert_eq!(back, ids);

    // A device node vanishes: only its copies turn unhealthy.
    node.remove_dev("simple_kmod1").unwrap();
    sim.wait_until(CHANGE, "simple_kmod1 unhealthy", |s| {
        let d = s.devices(SIMPLE);
        d["simple_kmod1-0"] == "Unhealthy" && d["simple_kmod0-0"] == "Healthy"
    })
    .await
    .unwrap();
    node.add_dev("simple_kmod1").unwrap();
    sim.wait_until(CHANGE, "simple_kmod1 healthy", |s| {
        s.allocatable(SIMPLE) == 4
    })
    .await
    .unwrap();

    // The Module file is edited: three copies per device.
    node.write_modules("modules.yaml", &modules(3)).unwrap();
    sim.wait_until(CHANGE, "shared: 3", |s| s.allocatable(SIMPLE) == 6)
        .await
        .unwrap();

    // ListAndWatch sends only on change: a quiet second brings no message.
    let before = sim.with_state(|s| s.resources[SLOTS].updates);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.with_state(|s| s.resources[SLOTS].updates), before);

    // The Module whose selector does not match never registered.
    assert!(sim.with_state(|s| {
        s.registrations
            .iter()
            .all(|r| r.resource != "example.com/elsewhere")
    }));

    // Health, readiness and metrics.
    let addr = plugin.health_addr().expect("health address in the log");
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 200);
    let (code, metrics) = http_get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    for line in [
        "kmm_device_plugin_registrations_total{resource=\"example.com/simple\",result=\"ok\"} 1",
        "kmm_device_plugin_devices{resource=\"example.com/simple\",health=\"healthy\"} 6",
        "kmm_device_plugin_allocations_total{resource=\"example.com/simple\"} 2",
        "kmm_device_plugin_errors_total{kind=\"allocate\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // SIGTERM: exit 0, own sockets removed.
    let status = plugin.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", plugin.log());
    assert_eq!(node.plugin_dir_entries(), ["kubelet.sock"]);
    sim.stop().await;
}
