//! The device plugin benchmark (`cargo xtask bench device-plugin`), against the kubelet simulator: idle RSS and CPU
//! with 10 Modules, time from a kmod appearing in the sys tree to its devices being allocatable, re-registration
//! after a kubelet restart (20 restarts), and Allocate round trips (1,000 sequential calls).

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::device_plugin::{HarnessError, Node, Plugin, module_yaml};
use crate::kubelet_sim::{KubeletSim, SimError};

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Harness failure.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// Simulator failure or timeout.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// /proc could not be read.
    #[error("failed to read /proc/{pid}/{file}")]
    Proc {
        /// The process.
        pid: u32,
        /// The file.
        file: &'static str,
    },
}

/// Percentiles of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// Sample size.
    pub n: usize,
}

impl Percentiles {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort();
        let n = v.len();
        let rank = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            p50: rank(0.5),
            p99: rank(0.99),
            max: v[n - 1],
            n,
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3?}  p99 {:.3?}  max {:.3?}  (n={})",
            self.p50, self.p99, self.max, self.n
        )
    }
}

/// The figures.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Resident set size after 2 s idle with 10 Modules, KiB.
    pub idle_rss_kib: u64,
    /// Peak resident set size over the whole run (VmHWM), KiB.
    pub peak_rss_kib: u64,
    /// CPU used over 5 s idle, percent of one core.
    pub idle_cpu_percent: f64,
    /// kmod appears -> devices allocatable.
    pub appear_to_allocatable: Percentiles,
    /// Kubelet restart -> registration accepted.
    pub reregistration: Percentiles,
    /// One Allocate round trip.
    pub allocate: Percentiles,
    /// The plugin's CPU time (user + system) per Allocate over the 1,000 calls, microseconds (10 ms tick
    /// resolution over the loop): its own share of a round trip, whatever the machine's load.
    pub allocate_cpu_us: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "idle RSS, 10 Modules:              {:.1} MiB (target <= 10 MiB)",
            self.idle_rss_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "peak RSS over the run:             {:.1} MiB",
            self.peak_rss_kib as f64 / 1024.0
        )?;
        writeln!(
            f,
            "idle CPU over 5 s:                 {:.2} % of a core",
            self.idle_cpu_percent
        )?;
        writeln!(
            f,
            "kmod appears -> allocatable:       {} (target <= 100 ms)",
            self.appear_to_allocatable
        )?;
        writeln!(
            f,
            "kubelet restart -> re-registered:  {} (target p99 <= 200 ms)",
            self.reregistration
        )?;
        writeln!(
            f,
            "Allocate round trip:               {} (target p99 <= 1 ms)",
            self.allocate
        )?;
        write!(
            f,
            "plugin CPU per Allocate:           {:.0} µs",
            self.allocate_cpu_us
        )
    }
}

fn proc_field(pid: u32, file: &'static str) -> Result<String, BenchError> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|_| BenchError::Proc { pid, file })
}

fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Result<u64, BenchError> {
    proc_field(pid, "status")?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or(BenchError::Proc {
            pid,
            file: "status",
        })
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, BenchError> {
    let stat = proc_field(pid, "stat")?;
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state(0) ... utime(11) stime(12).
    match (
        f.get(11).and_then(|v| v.parse::<u64>().ok()),
        f.get(12).and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(BenchError::Proc { pid, file: "stat" }),
    }
}

/// Runs the benchmark with the plugin binary `bin` (use a release build).
pub async fn run(bin: &Path) -> Result<BenchReport, BenchError> {
    let node = Node::new()?;
    let mut docs = Vec::new();
    for i in 0..5 {
        node.add_dev(&format!("bench{i}_0"))?;
        node.add_dev(&format!("bench{i}_1"))?;
        node.load(&format!("bench{i}"))?;
        docs.push(module_yaml(
            &format!("paths{i}"),
            Some(&format!("bench{i}")),
            "{}",
            &format!(
                "{{resourceName: example.com/paths{i}, paths: ['/dev/bench{i}_*'], shared: 2}}"
            ),
        ));
        docs.push(module_yaml(
            &format!("slots{i}"),
            None,
            "{}",
            &format!("{{resourceName: example.com/slots{i}, slots: 4}}"),
        ));
    }
    node.add_dev("late0")?;
    docs.push(module_yaml(
        "late",
        Some("late"),
        "{}",
        "{resourceName: example.com/late, paths: ['/dev/late*']}",
    ));
    node.write_modules("bench.yaml", &docs.join("---\n"))?;
    let mut sim = KubeletSim::start(&node.plugin_dir()).await?;
    let plugin = Plugin::start_with(bin, &node, "", &["--unhealthy-grace", "0s"])?;
    let pid = plugin.pid().ok_or(BenchError::Proc {
        pid: 0,
        file: "status",
    })?;
    sim.wait_until(Duration::from_secs(30), "10 Modules allocatable", |s| {
        (0..5).all(|i| {
            s.allocatable(&format!("example.com/paths{i}")) == 4
                && s.allocatable(&format!("example.com/slots{i}")) == 4
        })
    })
    .await?;

    // Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_kib = rss_kib(pid)?;
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks = cpu_ticks(pid)? - t0;
    let hz = 100.0; // USER_HZ on Linux
    let idle_cpu_percent = ticks as f64 / hz / 5.0 * 100.0;

    // kmod appears -> allocatable (20 rounds).
    let mut appear = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        node.load("late")?;
        sim.wait_until(Duration::from_secs(5), "late allocatable", |s| {
            s.allocatable("example.com/late") == 1
        })
        .await?;
        appear.push(t.elapsed());
        node.unload("late")?;
        sim.wait_until(Duration::from_secs(5), "late gone", |s| {
            s.allocatable("example.com/late") == 0
        })
        .await?;
    }

    // Re-registration after kubelet restarts.
    let mut rereg = Vec::new();
    let accepted = sim.with_state(|s| s.accepted("example.com/slots0"));
    for i in 1..=20 {
        let t = Instant::now();
        sim.restart().await?;
        sim.wait_until(Duration::from_secs(5), "re-registration", |s| {
            s.accepted("example.com/slots0") >= accepted + i
                && s.allocatable("example.com/slots0") == 4
        })
        .await?;
        let at = sim.with_state(|s| {
            s.registrations
                .iter()
                .filter(|r| r.resource == "example.com/slots0" && r.result.is_ok())
                .map(|r| r.at)
                .max()
        });
        rereg.push(at.map_or(t.elapsed(), |a| a.duration_since(t)));
    }
    sim.wait_until(Duration::from_secs(5), "all re-registered", |s| {
        s.allocatable("example.com/paths0") == 4
    })
    .await?;

    // Allocate round trips.
    let ids = vec!["bench0_0-0".to_owned()];
    let mut alloc = Vec::with_capacity(1000);
    let cpu_before = cpu_ticks(pid)?;
    for _ in 0..1000 {
        let t = Instant::now();
        sim.allocate_ids("example.com/paths0", &ids).await?;
        alloc.push(t.elapsed());
    }
    // USER_HZ ticks of 10 ms over 1,000 calls: 10 µs per tick per call.
    let allocate_cpu_us = (cpu_ticks(pid)? - cpu_before) as f64 * 10.0;
    let peak_rss_kib = status_kib(pid, "VmHWM:")?;
    sim.stop().await;
    drop(plugin);
    Ok(BenchReport {
        idle_rss_kib,
        peak_rss_kib,
        idle_cpu_percent,
        appear_to_allocatable: Percentiles::of(appear),
        reregistration: Percentiles::of(rereg),
        allocate: Percentiles::of(alloc),
        allocate_cpu_us,
    })
}
