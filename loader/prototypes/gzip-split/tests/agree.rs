use split::*;
use std::io::{Read, Write};

fn gz(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn reference(g: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(g).read_to_end(&mut v).unwrap();
    v
}

fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = ["module", "kernel", "driver", "struct", "return", "static", "\\n", " ", "{", "}", "0x", "ELF"];
    let mut text = Vec::new();
    while text.len() < 6 << 20 {
        text.extend_from_slice(words[(rnd() % words.len() as u64) as usize].as_bytes());
        if rnd() % 13 == 0 {
            text.extend_from_slice(&rnd().to_le_bytes()[..(rnd() % 8) as usize]);
        }
    }
    let random: Vec<u8> = (0..3 << 20).map(|_| rnd() as u8).collect();
    let mut mixed = Vec::new();
    for i in 0..64 {
        if i % 3 == 0 {
            mixed.extend_from_slice(&random[i * 40000..i * 40000 + 40000]);
        } else {
            mixed.extend_from_slice(&text[i * 90000..i * 90000 + 90000]);
        }
    }
    let mut v = vec![("text".into(), text), ("random".into(), random), ("mixed".into(), mixed)];
    if let Ok(b) = std::fs::read("/dev/shm/bench-layer.gz") {
        let r = reference(&b);
        v.push(("bench-12MiB".into(), r[..12 << 20].to_vec()));
    }
    v
}

#[test]
fn split_equals_flate2_on_many_inputs() {
    let mut used = 0;
    let mut runs = 0;
    for (name, data) in inputs() {
        for level in [1, 6, 9] {
            let g = gz(&data, level);
            let want = reference(&g);
            let d = &g[gzip_data_start(&g)..];
            for frac in [0.2, 0.5, 0.8] {
                let (out, rep) = split_inflate(d, true, frac);
                assert!(out.unwrap() == want, "{name} level {level} frac {frac}: {rep:?}");
                eprintln!("{name} level {level} frac {frac}: {rep:?}");
                runs += 1;
                used += rep.used_b as usize;
            }
        }
    }
    eprintln!("{used} of {runs} runs used B");
    assert!(used > 0);
}

#[test]
fn false_candidates_are_discarded() {
    let data = &inputs()[0].1;
    let g = gz(data, 6);
    let want = reference(&g);
    let d = &g[gzip_data_start(&g)..];
    let mid = d.len() * 8 / 2;
    let cands = header_like(d, mid, mid + 200_000);
    let real = find_candidate(d, mid, 1 << 24).unwrap();
    assert!(cands.len() > 3, "{cands:?}");
    let (mut used, mut discarded) = (0, 0);
    for &c in cands.iter().take(40) {
        let (out, rep) = split_with(d, true, &|| Some(c));
        assert!(out.unwrap() == want, "candidate {c} (real {real}): {rep:?}");
        if rep.used_b { used += 1 } else { discarded += 1 }
    }
    eprintln!("{} header-like positions, {used} used (true boundaries), {discarded} discarded", cands.len().min(40));
    assert!(discarded > 0);
    // Positions that are not even header-like.
    for c in [mid + 1, mid + 7, real + 1, real - 1] {
        let (out, rep) = split_with(d, true, &|| Some(c));
        assert!(out.unwrap() == want);
        assert!(!rep.used_b || c == real);
    }
}
