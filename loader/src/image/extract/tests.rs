#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use std::io::Write;

/// Builds a tar with raw (unchecked) names, so hostile entries can be expressed.
pub(crate) struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    pub(crate) fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..path.len()].copy_from_slice(path.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub(crate) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(path, tar::EntryType::Regular, "", 0o644, data)
    }
    pub(crate) fn file_mode(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(path, tar::EntryType::Regular, "", mode, b"x")
    }
    pub(crate) fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Directory, "", 0o755, b"")
    }
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Symlink, target, 0o777, b"")
    }
    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Link, target, 0o644, b"")
    }
    pub(crate) fn chardev(&mut self, path: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Char, "", 0o644, b"")
    }
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn mappings() -> Vec<Mapping> {
    vec![
        Mapping::new("/opt/lib/modules/6.1", "lib/modules/6.1"),
        Mapping::new("/firmware", "firmware"),
    ]
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn run(layers: &[Vec<u8>], limits: Limits) -> (tempfile::TempDir, Result<Stats, ExtractError>) {
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("target");
    fs::create_dir(&root).unwrap();
    let mut x = Extractor::new(&root, mappings(), limits);
    let mut res = Ok(());
    for (i, l) in layers.iter().enumerate() {
        res = x.apply_layer(&format!("layer{i}"), l.as_slice());
        if res.is_err() {
            break;
        }
    }
    let res = res.and_then(|()| x.finish());
    (sandbox, res)
}

#[test]
fn extracts_selected_subtrees_only() {
    let layer = RawTar::new()
        .dir("opt/")
        .file("opt/lib/modules/6.1/a.ko", b"AAAA")
        .file("./opt/lib/modules/6.1/sub/b.ko", b"B")
        .symlink("opt/lib/modules/6.1/link.ko", "sub/b.ko")
        .symlink("opt/lib/modules/6.1/fwlink", "/firmware/fw.bin")
        .hardlink("opt/lib/modules/6.1/hard.ko", "opt/lib/modules/6.1/a.ko")
        .symlink("opt/lib/modules/6.1/host", "/host/lib/modules/6.1")
        .file("opt/lib/modules/6.2/other.ko", b"no")
        .file("firmware/fw.bin", b"FW")
        .file_mode("usr/bin/su", 0o4755)
        .chardev("dev/null")
        .finish();
    let (sb, res) = run(&[gzip(&layer)], Limits::default());
    let stats = res.unwrap();
    let root = sb.path().join("target");
    assert_eq!(
        tree(&root),
        [
            "firmware",
            "firmware/fw.bin",
            "lib",
            "lib/modules",
            "lib/modules/6.1",
            "lib/modules/6.1/a.ko",
            "lib/modules/6.1/fwlink",
            "lib/modules/6.1/hard.ko",
            "lib/modules/6.1/link.ko",
            "lib/modules/6.1/sub",
            "lib/modules/6.1/sub/b.ko",
        ]
    );
    assert_eq!(
        fs::read(root.join("lib/modules/6.1/link.ko")).unwrap(),
        b"B"
    );
    assert_eq!(
        fs::read(root.join("lib/modules/6.1/fwlink")).unwrap(),
        b"FW"
    );
    assert_eq!(
        fs::read_link(root.join("lib/modules/6.1/fwlink")).unwrap(),
        Path::new("../../../firmware/fw.bin")
    );
    assert_eq!(
        fs::read(root.join("lib/modules/6.1/hard.ko")).unwrap(),
        b"AAAA"
    );
    assert_eq!(stats.files, 3);
    assert_eq!(stats.links, 3);
    assert_eq!(stats.bytes, 7);
    assert_eq!(stats.skipped_host_links.len(), 1);
}

#[test]
fn whiteouts_apply_to_lower_layers() {
    let l1 = RawTar::new()
        .file("opt/lib/modules/6.1/a.ko", b"a")
        .file("opt/lib/modules/6.1/gone.ko", b"g")
        .file("opt/lib/modules/6.1/d/old.ko", b"o")
        .file("opt/lib/modules/6.1/d/keep/x.ko", b"x")
        .file("firmware/old.bin", b"f")
        .finish();
    let l2 = RawTar::new()
        .file("opt/lib/modules/6.1/.wh.gone.ko", b"")
        .file("opt/lib/modules/6.1/d/new.ko", b"n")
        .file("opt/lib/modules/6.1/d/.wh..wh..opq", b"")
        .file("opt/lib/modules/6.1/a.ko", b"A2")
        .file(".wh.firmware", b"")
        .finish();
    let (sb, res) = run(&[l1, gzip(&l2)], Limits::default());
    let stats = res.unwrap();
    let root = sb.path().join("target");
    assert_eq!(
        tree(&root),
        [
            "lib",
            "lib/modules",
            "lib/modules/6.1",
            "lib/modules/6.1/a.ko",
            "lib/modules/6.1/d",
            "lib/modules/6.1/d/new.ko",
        ]
    );
    assert_eq!(fs::read(root.join("lib/modules/6.1/a.ko")).unwrap(), b"A2");
    assert_eq!(stats.whiteouts, 3);
    // An opaque directory above the selection hides everything lower layers put there.
    let l3 = RawTar::new().file("opt/lib/.wh..wh..opq", b"").finish();
    let l1 = RawTar::new()
        .file("opt/lib/modules/6.1/a.ko", b"a")
        .finish();
    let (sb, res) = run(&[l1, l3], Limits::default());
    res.unwrap();
    assert_eq!(
        tree(&sb.path().join("target/lib/modules/6.1")),
        Vec::<String>::new()
    );
}

/// The hostile corpus: each archive is refused and nothing appears outside the target directory.
#[test]
fn hostile_archives_are_refused() {
    let many: Vec<u8> = {
        let mut t = RawTar::new();
        for i in 0..20 {
            t.file(&format!("opt/lib/modules/6.1/f{i}.ko"), b"x");
        }
        t.finish()
    };
    let small = Limits {
        max_file_size: 1000,
        max_total_size: 1500,
        max_files: 10,
        max_layer_stream: 1 << 20,
    };
    let zeros = vec![0u8; 4 << 20];
    let bomb = gzip(&RawTar::new().file("usr/share/zeros", &zeros).finish());
    assert!(
        bomb.len() < 64 << 10,
        "a real bomb: {} bytes compressed",
        bomb.len()
    );
    let cases: Vec<(&str, Vec<Vec<u8>>, Limits, &str)> = vec![
        (
            "traversal",
            vec![
                RawTar::new()
                    .file("opt/lib/modules/6.1/../../../../../../escape", b"x")
                    .finish(),
            ],
            Limits::default(),
            "'..'",
        ),
        (
            "absolute",
            vec![RawTar::new().file("/tmp/escape-absolute", b"x").finish()],
            Limits::default(),
            "absolute",
        ),
        (
            "symlink escape",
            vec![
                RawTar::new()
                    .symlink("opt/lib/modules/6.1/evil", "../../../../..")
                    .file("opt/lib/modules/6.1/evil/escape", b"x")
                    .finish(),
            ],
            Limits::default(),
            "leaves the extracted tree",
        ),
        (
            "absolute symlink escape",
            vec![
                RawTar::new()
                    .symlink("opt/lib/modules/6.1/etc", "/etc")
                    .finish(),
            ],
            Limits::default(),
            "leaves the extracted tree",
        ),
        (
            "write through symlink",
            vec![
                RawTar::new()
                    .dir("opt/lib/modules/6.1/sub")
                    .symlink("opt/lib/modules/6.1/d", "sub")
                    .file("opt/lib/modules/6.1/d/x.ko", b"x")
                    .finish(),
            ],
            Limits::default(),
            "parent directory is a symlink",
        ),
        (
            "hardlink escape",
            vec![
                RawTar::new()
                    .hardlink("opt/lib/modules/6.1/passwd", "etc/passwd")
                    .finish(),
            ],
            Limits::default(),
            "hardlink target",
        ),
        (
            "hardlink traversal",
            vec![
                RawTar::new()
                    .hardlink("opt/lib/modules/6.1/passwd", "../../etc/passwd")
                    .finish(),
            ],
            Limits::default(),
            "'..'",
        ),
        (
            "device node",
            vec![RawTar::new().chardev("opt/lib/modules/6.1/mem").finish()],
            Limits::default(),
            "device node",
        ),
        (
            "setuid",
            vec![
                RawTar::new()
                    .file_mode("opt/lib/modules/6.1/suid", 0o4755)
                    .finish(),
            ],
            Limits::default(),
            "setuid",
        ),
        (
            "setgid",
            vec![RawTar::new().file_mode("firmware/sgid", 0o2755).finish()],
            Limits::default(),
            "setuid",
        ),
        (
            "file too large",
            vec![
                RawTar::new()
                    .file("opt/lib/modules/6.1/big.ko", &[1u8; 1001])
                    .finish(),
            ],
            small,
            "larger than the limit",
        ),
        (
            "total size",
            vec![
                RawTar::new()
                    .file("opt/lib/modules/6.1/a.ko", &[1u8; 800])
                    .file("opt/lib/modules/6.1/b.ko", &[1u8; 800])
                    .finish(),
            ],
            small,
            "extracted size exceeds",
        ),
        ("file count", vec![many], small, "more than 10 files"),
        ("gzip bomb", vec![bomb], small, "decompresses to more than"),
    ];
    for (name, layers, limits, expect) in cases {
        let (sb, res) = run(&layers, limits);
        let err = match res {
            Ok(s) => panic!("{name}: accepted: {s:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(expect), "{name}: {err}");
        let outside: Vec<_> = tree(sb.path())
            .into_iter()
            .filter(|p| p != "target" && !p.starts_with("target/"))
            .collect();
        assert!(outside.is_empty(), "{name}: written outside: {outside:?}");
        assert!(!Path::new("/tmp/escape-absolute").exists());
    }
}

/// Links whose targets climb further physically than lexically (`y -> .`, `c1 -> y/..`, ...): they are
/// rewritten to their lexical meaning, so every link resolves inside the tree.
#[test]
fn symlink_chains_stay_inside() {
    let chain = RawTar::new()
        .symlink("opt/lib/modules/6.1/y", ".")
        .symlink("opt/lib/modules/6.1/c1", "y/..")
        .symlink("opt/lib/modules/6.1/c2", "c1/6.1/c1/..")
        .symlink("opt/lib/modules/6.1/c3", "c2/modules/6.1/c2/..")
        .symlink("opt/lib/modules/6.1/c4", "c3/lib/modules/6.1/c3/..")
        .finish();
    let (sb, res) = run(&[chain], Limits::default());
    res.unwrap();
    let root = sb.path().join("target").canonicalize().unwrap();
    for l in ["y", "c1", "c2", "c3", "c4"] {
        let p = root.join("lib/modules/6.1").join(l);
        if let Ok(real) = p.canonicalize() {
            assert!(real.starts_with(&root), "{l} -> {}", real.display());
        }
    }
}

/// The final check follows links physically and refuses a chain that escapes, however it was made.
#[test]
fn final_check_refuses_physical_escape() {
    let sandbox = tempfile::tempdir().unwrap();
    let root = sandbox.path().join("target");
    let p = root.join("lib/modules/6.1");
    fs::create_dir_all(&p).unwrap();
    for (l, t) in [
        ("y", "."),
        ("c1", "y/.."),
        ("c2", "c1/6.1/c1/.."),
        ("c3", "c2/modules/6.1/c2/.."),
        ("c4", "c3/lib/modules/6.1/c3/.."),
    ] {
        std::os::unix::fs::symlink(t, p.join(l)).unwrap();
    }
    let err = Extractor::new(&root, mappings(), Limits::default())
        .finish()
        .unwrap_err();
    assert!(err.to_string().contains("c4"), "{err}");
    fs::remove_file(p.join("c4")).unwrap();
    Extractor::new(&root, mappings(), Limits::default())
        .finish()
        .unwrap();
    std::os::unix::fs::symlink("c4", p.join("c5")).unwrap();
    std::os::unix::fs::symlink("c5", p.join("c4")).unwrap();
    let err = Extractor::new(&root, mappings(), Limits::default())
        .finish()
        .unwrap_err();
    assert!(err.to_string().contains("too many levels"), "{err}");
}

#[test]
fn zstd_layers() {
    let layer = RawTar::new()
        .file("opt/lib/modules/6.1/z.ko", b"zz")
        .finish();
    let z = zstd::encode_all(layer.as_slice(), 3).unwrap();
    let (sb, res) = run(&[z], Limits::default());
    res.unwrap();
    assert_eq!(
        fs::read(sb.path().join("target/lib/modules/6.1/z.ko")).unwrap(),
        b"zz"
    );
}

/// Within one layer, later entries replace earlier ones at the same path in entry order, even while the
/// writer thread is still creating the earlier files (file then dir, file then symlink, file then file,
/// a hardlink to a file just queued, a file turned into a parent directory), and large files arrive whole.
#[test]
fn same_layer_replacements_keep_entry_order() {
    let m = "opt/lib/modules/6.1";
    let big: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
    let layer = RawTar::new()
        .dir(&format!("{m}/"))
        .dir(&format!("{m}/d/"))
        .file(&format!("{m}/d/x"), b"file x")
        .dir(&format!("{m}/d/x/"))
        .file(&format!("{m}/d/x/inner.ko"), b"inner")
        .file(&format!("{m}/d/y"), b"file y")
        .symlink(&format!("{m}/d/y"), "x/inner.ko")
        .file(&format!("{m}/d/z"), b"first z")
        .file(&format!("{m}/d/z"), b"second z")
        .file(&format!("{m}/d/big.ko"), &big)
        .hardlink(&format!("{m}/d/big-link.ko"), &format!("{m}/d/big.ko"))
        .file(&format!("{m}/e"), b"e as a file")
        .file(&format!("{m}/e/f.ko"), b"e became a directory")
        .finish();
    for l in [layer.clone(), gzip(&layer)] {
        let (sb, res) = run(&[l], Limits::default());
        res.unwrap();
        let root = sb.path().join("target/lib/modules/6.1");
        assert!(root.join("d/x").is_dir());
        assert_eq!(fs::read(root.join("d/x/inner.ko")).unwrap(), b"inner");
        assert_eq!(
            fs::read_link(root.join("d/y")).unwrap(),
            Path::new("x/inner.ko")
        );
        assert_eq!(fs::read(root.join("d/z")).unwrap(), b"second z");
        assert_eq!(fs::read(root.join("d/big.ko")).unwrap(), big);
        assert_eq!(fs::read(root.join("d/big-link.ko")).unwrap(), big);
        assert_eq!(
            fs::read(root.join("e/f.ko")).unwrap(),
            b"e became a directory"
        );
        let mode = fs::metadata(root.join("d/big.ko"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}
