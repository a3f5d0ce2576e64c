//! Kubelet and plugin restarts, with the real kmm-device-plugin and the kubelet simulator over real unix sockets:
//! 20 kubelet restarts give 20 re-registrations, each within 1 s, with the same device IDs; a kubelet that is not up
//! at start is waited for; a plugin killed with SIGKILL and started again registers again with the same IDs and
//! leaves no stale socket behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kmm_e2e::device_plugin::{Node, Plugin, http_get, module_yaml};
use kmm_e2e::kubelet_sim::KubeletSim;

const GPU: &str = "example.com/gpu";
const SLOTS: &str = "example.com/slots";
const STARTUP: Duration = Duration::from_secs(20);

fn two_modules() -> String {
    [
        module_yaml(
            "gpu",
            Some("gpu_kmod"),
            "{}",
            &format!("{{resourceName: {GPU}, paths: ['/dev/gpu*'], shared: 2}}"),
        ),
        module_yaml(
            "slots",
            None,
            "{}",
            &format!("{{resourceName: {SLOTS}, slots: 4}}"),
        ),
    ]
    .join("---\n")
}

fn snapshot(sim: &KubeletSim) -> BTreeMap<String, BTreeMap<String, String>> {
    sim.with_state(|s| {
        [GPU, SLOTS]
            .iter()
            .map(|r| (r.to_string(), s.devices(r)))
            .collect()
    })
}

fn setup() -> Node {
    let node = Node::new().unwrap();
    node.write_modules("m.yaml", &two_modules()).unwrap();
    node.add_dev("gpu0").unwrap();
    node.add_dev("gpu1").unwrap();
    node.load("gpu_kmod").unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kubelet_restarts_give_twenty_reregistrations_within_a_second() {
    let node = setup();
    let mut sim = KubeletSim::start(&node.plugin_dir()).await.unwrap();
    let plugin = Plugin::start(&node, "", &[]).unwrap();
    sim.wait_until(STARTUP, "both resources allocatable", |s| {
        s.allocatable(GPU) == 4 && s.allocatable(SLOTS) == 4
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));
    let ids = snapshot(&sim);

    let mut latencies = Vec::new();
    for i in 1..=20 {
        let t0 = Instant::now();
        sim.restart().await.unwrap();
        sim.wait_until(
            Duration::from_secs(1),
            &format!("re-registration after restart {i}"),
            |s| {
                s.accepted(GPU) == i + 1
                    && s.accepted(SLOTS) == i + 1
                    && s.allocatable(GPU) == 4
                    && s.allocatable(SLOTS) == 4
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));
        let last = sim.with_state(|s| {
            s.registrations
                .iter()
                .filter(|r| r.result.is_ok())
                .map(|r| r.at)
                .max()
                .unwrap()
        });
        latencies.push(last.duration_since(t0));
        assert_eq!(snapshot(&sim), ids, "device IDs changed after restart {i}");
    }
    latencies.sort();
    println!(
        "re-registration after kubelet restart: median {:?}, max {:?}",
        latencies[10], latencies[19]
    );
    assert!(latencies[19] <= Duration::from_secs(1));
    // Exactly one registration per restart (plus the first), none refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sim.with_state(|s| (s.accepted(GPU), s.accepted(SLOTS))),
        (21, 21)
    );
    let refused = sim.with_state(|s| s.registrations.iter().filter(|r| r.result.is_err()).count());
    assert_eq!(refused, 0);

    let (_, metrics) = http_get(plugin.health_addr().unwrap(), "/metrics").unwrap();
    assert!(
        metrics.contains("kmm_device_plugin_kubelet_restarts_total 20"),
        "{metrics}"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_that_is_not_up_yet_is_waited_for() {
    let node = setup();
    let plugin = Plugin::start(&node, "", &[]).unwrap();
    // The plugin serves its endpoints and retries registration meanwhile, without crashing.
    let deadline = Instant::now() + STARTUP;
    while node.plugin_dir_entries().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no sockets served:\n{}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let addr = plugin.health_addr().unwrap();
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 503);

    let t0 = Instant::now();
    let sim = KubeletSim::start(&node.plugin_dir()).await.unwrap();
    // The issue bounds re-registration after a kubelet restart by 1 s (tested above); a kubelet that was not up at
    // start is found by the capped retry backoff, so allow a few seconds on a loaded 2-core machine.
    sim.wait_until(
        Duration::from_secs(5),
        "registered once the kubelet is up",
        |s| s.allocatable(GPU) == 4 && s.allocatable(SLOTS) == 4,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));
    println!("kubelet up -> registered: {:?}", t0.elapsed());
    // The kubelet may consume ListAndWatch before the plugin has read the Register answer: wait briefly for ready.
    let deadline = Instant::now() + Duration::from_secs(2);
    while http_get(addr, "/readyz").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "not ready:\n{}", plugin.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_keeps_ids_and_leaves_no_stale_socket() {
    let node = setup();
    let sim = KubeletSim::start(&node.plugin_dir()).await.unwrap();
    let mut plugin = Plugin::start(&node, "", &[]).unwrap();
    sim.wait_until(STARTUP, "both resources allocatable", |s| {
        s.allocatable(GPU) == 4 && s.allocatable(SLOTS) == 4
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));
    let ids = snapshot(&sim);
    let sockets = node.plugin_dir_entries();
    assert_eq!(
        sockets,
        [
            "kmm-example.com_gpu.sock",
            "kmm-example.com_slots.sock",
            "kubelet.sock"
        ]
    );

    plugin.kill().unwrap();
    // The kubelet sees the streams end: nothing allocatable.
    sim.wait_until(Duration::from_secs(2), "streams ended", |s| {
        s.allocatable(GPU) == 0 && s.allocatable(SLOTS) == 0
    })
    .await
    .unwrap();
    // SIGKILL leaves the sockets behind; meanwhile the slots Module is removed.
    assert_eq!(node.plugin_dir_entries(), sockets);
    node.write_modules("m.yaml", two_modules().split("---\n").next().unwrap())
        .unwrap();

    let _plugin = Plugin::start(&node, "", &[]).unwrap();
    sim.wait_until(STARTUP, "gpu registered again", |s| {
        s.accepted(GPU) == 2 && s.allocatable(GPU) == 4
    })
    .await
    .unwrap();
    assert_eq!(sim.with_state(|s| s.devices(GPU)), ids[GPU]);
    assert_eq!(
        node.plugin_dir_entries(),
        ["kmm-example.com_gpu.sock", "kubelet.sock"]
    );
    sim.stop().await;
}
