//! A registration the kubelet refuses: the plugin logs the kubelet's reason and retries, while the other Modules keep
//! working. kmm-api checks resource names exactly as the kubelet does, so a name the kubelet would refuse never
//! reaches it: such a Module, like one with an invalid devices section, is skipped with its field paths logged. The
//! refusal is the one a real kubelet makes for a valid name: it cannot dial the plugin's endpoint back
//! ([`KubeletSim::make_unreachable`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use kmm_e2e::device_plugin::{Node, Plugin, http_get, module_yaml};
use kmm_e2e::kubelet_sim::KubeletSim;

// Valid, but the kubelet cannot dial its endpoint.
const REFUSED: &str = "example.com/unreachable";
const GOOD: &str = "example.com/good";
// The kubelet refuses any name containing "kubernetes.io/"; so does kmm-api, and the plugin never registers it.
const NATIVE: &str = "example-kubernetes.io/gpu";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registration_is_logged_and_others_keep_working() {
    let node = Node::new().unwrap();
    let yaml = [
        module_yaml(
            "refused",
            None,
            "{}",
            &format!("{{resourceName: {REFUSED}, slots: 1}}"),
        ),
        module_yaml(
            "good",
            None,
            "{}",
            &format!("{{resourceName: {GOOD}, slots: 2, env: [{{name: GOOD, value: 'yes'}}]}}"),
        ),
        module_yaml(
            "native",
            None,
            "{}",
            &format!("{{resourceName: {NATIVE}, slots: 1}}"),
        ),
        module_yaml(
            "invalid",
            None,
            "{}",
            "{resourceName: example.com/invalid, slots: 0, paths: ['dev/x']}",
        ),
    ]
    .join("---\n");
    node.write_modules("m.yaml", &yaml).unwrap();
    let sim = KubeletSim::start(&node.plugin_dir()).await.unwrap();
    sim.make_unreachable(REFUSED);
    let plugin = Plugin::start(&node, "", &["--register-backoff-max", "500ms"]).unwrap();

    sim.wait_until(
        Duration::from_secs(20),
        "good registered, refused tried twice",
        |s| {
            s.allocatable(GOOD) == 2
                && s.registrations
                    .iter()
                    .filter(|r| r.resource == REFUSED && r.result.is_err())
                    .count()
                    >= 2
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", plugin.log()));

    // The kubelet's reason is in the plugin's log.
    let reason = sim.with_state(|s| {
        s.registrations
            .iter()
            .find(|r| r.resource == REFUSED)
            .and_then(|r| r.result.clone().err())
            .unwrap()
    });
    assert!(reason.contains("failed to dial device plugin"), "{reason}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while !plugin.log().contains(&reason) {
        assert!(
            Instant::now() < deadline,
            "reason not logged:\n{}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The invalid Modules are skipped, their fields named, and never registered.
    let log = plugin.log();
    assert!(
        log.contains("kmm/invalid")
            && log.contains("spec.devices.slots")
            && log.contains("spec.devices.paths[0]"),
        "{log}"
    );
    assert!(
        log.contains("kmm/native")
            && log.contains("spec.devices.resourceName")
            && log.contains("kubernetes.io/"),
        "{log}"
    );
    assert!(sim.with_state(|s| {
        s.registrations
            .iter()
            .all(|r| r.resource != "example.com/invalid" && r.resource != NATIVE)
    }));

    // The good Module keeps working.
    let (_, resp) = sim.allocate(GOOD, 2).await.unwrap();
    assert_eq!(resp.envs.get("GOOD").map(String::as_str), Some("yes"));
    let addr = plugin.health_addr().unwrap();
    let (code, body) = http_get(addr, "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains(REFUSED), "{body}");
    let (_, metrics) = http_get(addr, "/metrics").unwrap();
    assert!(
        metrics.contains(&format!(
            "kmm_device_plugin_registrations_total{{resource=\"{REFUSED}\",result=\"refused\"}}"
        )),
        "{metrics}"
    );
    sim.stop().await;
}
