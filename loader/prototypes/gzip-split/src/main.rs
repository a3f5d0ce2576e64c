use split::*;
use std::time::Instant;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let frac: f64 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(0.5);
    let rounds: usize = std::env::args().nth(3).map(|s| s.parse().unwrap()).unwrap_or(5);
    let g = std::fs::read(&path).unwrap();
    let d = &g[gzip_data_start(&g)..];
    // correctness once
    let mut reference = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(g.as_slice()), &mut reference).unwrap();
    let (out, rep) = split_inflate(d, true, frac);
    assert!(out.unwrap() == reference, "split output differs");
    println!("check ok: {rep:?} (total {} bytes)", reference.len());
    drop(reference);
    for _ in 0..rounds {
        let (t, c) = (Instant::now(), cpu());
        let o = inflate_single(d, false);
        let (w1, c1) = (t.elapsed().as_secs_f64(), cpu() - c);
        let (t, c) = (Instant::now(), cpu());
        let (_, rep) = split_inflate(d, false, frac);
        let (w2, c2) = (t.elapsed().as_secs_f64(), cpu() - c);
        println!("single {:.1} ms wall {:.0} ms cpu ({} B) | split {:.1} ms wall {:.0} ms cpu, used_b {} a {} marked {} plain {} marker_blocks {}",
            w1 * 1e3, c1 * 1e3, o.n, w2 * 1e3, c2 * 1e3, rep.used_b, rep.a_bytes, rep.b_marked, rep.b_plain, rep.marker_blocks);
    }
}
