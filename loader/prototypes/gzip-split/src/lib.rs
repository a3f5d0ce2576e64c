//! Prototype (not wired into kmm-loader): a 2-way speculative split of one DEFLATE stream for 2 cores.
//!
//! - Thread A inflates from the start with zlib-rs (`Z_BLOCK`, so it stops at every block boundary and knows
//!   its bit position from `total_in` and `data_type`).
//! - Thread B looks for a dynamic-Huffman block boundary from a given fraction of the compressed data on
//!   (`find_candidate`: BFINAL=0/BTYPE=2, a strict header with complete codes and an end-of-block code, one
//!   whole block decodable, a non-reserved block type after it), decodes with a small marker decoder (u16
//!   symbols; a reference into the unknown 32 KiB before its start becomes marker `256 + window index`)
//!   until its last 32 KiB are marker-free at a block boundary, then continues with zlib-rs raw inflate primed
//!   at that bit offset (`inflatePrime`) with those 32 KiB as dictionary (`inflateSetDictionary`).
//! - A stops when it reaches B's start exactly at a block boundary; B's markers are then resolved with A's
//!   last 32 KiB. If A passes B's start without a boundary there, or B fails, B's work is discarded and A
//!   goes on alone: the output is always the single-thread output (`tests/agree.rs`: flate2 agreement on
//!   text, random, mixed and bench data at levels 1/6/9 from three split points, and 40 forced false
//!   boundary candidates, all discarded).
//!
//! `cargo run --release -- LAYER.gz [FRACTION] [ROUNDS]` checks the split once against flate2, then times
//! single-thread inflate vs the split (B's output is counted, not kept: a pipeline must buffer it until A
//! reaches B's start, i.e. about half the layer's uncompressed size).
//! Limits seen: zlib level 1 writes fixed-Huffman blocks and incompressible data stored blocks, so B finds no
//! candidate there (A alone); on small-vocabulary text markers never clear and B stays in the (slower) marker
//! decoder to the end.
#![allow(clippy::all)]

use libz_rs_sys as z;
use std::mem::MaybeUninit;

pub const WINDOW: usize = 32768;

// ---------------------------------------------------------------- bit reader
pub struct Bits<'a> {
    data: &'a [u8],
    next: usize, // next byte to load
    buf: u64,
    cnt: u32,
}

impl<'a> Bits<'a> {
    pub fn at(data: &'a [u8], bitpos: usize) -> Self {
        let mut b = Bits { data, next: bitpos / 8, buf: 0, cnt: 0 };
        b.refill();
        let skip = (bitpos % 8) as u32;
        if b.cnt >= skip {
            b.buf >>= skip;
            b.cnt -= skip;
        }
        b
    }
    #[inline]
    fn refill(&mut self) {
        while self.cnt <= 56 {
            let byte = if self.next < self.data.len() { self.data[self.next] } else { 0 };
            self.buf |= (byte as u64) << self.cnt;
            self.next += 1;
            self.cnt += 8;
        }
    }
    /// Bit position of the next unread bit.
    pub fn pos(&self) -> usize {
        self.next * 8 - self.cnt as usize
    }
    pub fn past_end(&self) -> bool {
        self.pos() > self.data.len() * 8
    }
    #[inline]
    pub fn peek(&mut self, n: u32) -> u32 {
        if self.cnt < n {
            self.refill();
        }
        (self.buf & ((1u64 << n) - 1)) as u32
    }
    #[inline]
    pub fn consume(&mut self, n: u32) {
        self.buf >>= n;
        self.cnt -= n;
    }
    #[inline]
    pub fn get(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }
    fn align_byte(&mut self) {
        let r = self.cnt % 8;
        self.consume(r);
    }
}

// ---------------------------------------------------------------- Huffman
const FAST: u32 = 10;

/// Canonical Huffman decoder: a FAST-bit table plus a sorted fallback.
pub struct Huff {
    fast: Vec<u32>, // (sym << 4) | len, 0 = not in fast table
    counts: [u16; 16],
    symbols: Vec<u16>,
}

#[derive(Debug, PartialEq)]
pub enum Kraft {
    Complete,
    Incomplete,
    Over,
}

pub fn kraft(lens: &[u8]) -> Kraft {
    let mut left: i64 = 1;
    let mut counts = [0i64; 16];
    for &l in lens {
        counts[l as usize] += 1;
    }
    for l in 1..16 {
        left <<= 1;
        left -= counts[l];
        if left < 0 {
            return Kraft::Over;
        }
    }
    if left == 0 { Kraft::Complete } else { Kraft::Incomplete }
}

fn rev(mut v: u32, n: u32) -> u32 {
    let mut r = 0;
    for _ in 0..n {
        r = (r << 1) | (v & 1);
        v >>= 1;
    }
    r
}

impl Huff {
    pub fn new(lens: &[u8]) -> Huff {
        let mut counts = [0u16; 16];
        for &l in lens {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offs = [0u16; 16];
        for l in 1..16 {
            offs[l] = offs[l - 1] + counts[l - 1];
        }
        let mut symbols = vec![0u16; lens.len()];
        let mut o = offs;
        for (s, &l) in lens.iter().enumerate() {
            if l != 0 {
                symbols[o[l as usize] as usize] = s as u16;
                o[l as usize] += 1;
            }
        }
        // Fast table.
        let mut fast = vec![0u32; 1 << FAST];
        let mut code: u32 = 0;
        let mut idx = 0usize;
        for l in 1..=15u32 {
            for _ in 0..counts[l as usize] {
                if l <= FAST {
                    let r = rev(code, l);
                    let mut i = r;
                    while i < (1 << FAST) {
                        fast[i as usize] = ((symbols[idx] as u32) << 4) | l;
                        i += 1 << l;
                    }
                }
                code += 1;
                idx += 1;
            }
            code <<= 1;
        }
        Huff { fast, counts, symbols }
    }

    #[inline]
    pub fn decode(&self, b: &mut Bits) -> Option<u16> {
        let p = b.peek(15);
        let e = self.fast[(p & ((1 << FAST) - 1)) as usize];
        if e != 0 {
            b.consume(e & 15);
            return Some((e >> 4) as u16);
        }
        // Slow path (puff-style), bit by bit.
        let mut code: i32 = 0;
        let mut first: i32 = 0;
        let mut index: i32 = 0;
        for len in 1..16 {
            code |= ((p >> (len - 1)) & 1) as i32;
            let count = self.counts[len] as i32;
            if code - count < first {
                b.consume(len as u32);
                return Some(self.symbols[(index + (code - first)) as usize]);
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        None
    }
}

const LBASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258,
];
const LEXT: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DBASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DEXT: [u8; 30] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
const CLORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// Reads a dynamic block header (after BFINAL/BTYPE); strict checks (complete codes, EOB present).
pub fn dynamic_header(b: &mut Bits) -> Option<(Huff, Huff)> {
    let hlit = b.get(5) as usize + 257;
    let hdist = b.get(5) as usize + 1;
    let hclen = b.get(4) as usize + 4;
    if hlit > 286 || hdist > 30 {
        return None;
    }
    let mut cl = [0u8; 19];
    for i in 0..hclen {
        cl[CLORDER[i]] = b.get(3) as u8;
    }
    if kraft(&cl) != Kraft::Complete {
        return None;
    }
    let clh = Huff::new(&cl);
    let mut lens = vec![0u8; hlit + hdist];
    let mut i = 0;
    while i < hlit + hdist {
        let s = clh.decode(b)?;
        match s {
            0..=15 => {
                lens[i] = s as u8;
                i += 1;
            }
            16 => {
                if i == 0 {
                    return None;
                }
                let prev = lens[i - 1];
                let n = 3 + b.get(2) as usize;
                if i + n > lens.len() {
                    return None;
                }
                lens[i..i + n].fill(prev);
                i += n;
            }
            17 | 18 => {
                let n = if s == 17 { 3 + b.get(3) as usize } else { 11 + b.get(7) as usize };
                if i + n > lens.len() {
                    return None;
                }
                i += n;
            }
            _ => return None,
        }
    }
    let (ll, dl) = lens.split_at(hlit);
    if ll[256] == 0 || kraft(ll) != Kraft::Complete {
        return None;
    }
    // Distance codes: complete, or a single code (allowed incomplete), or none.
    let nd = dl.iter().filter(|&&l| l != 0).count();
    match kraft(dl) {
        Kraft::Complete => {}
        Kraft::Incomplete if nd <= 1 => {}
        _ => return None,
    }
    Some((Huff::new(ll), Huff::new(dl)))
}

fn fixed() -> (Huff, Huff) {
    let mut l = [0u8; 288];
    l[..144].fill(8);
    l[144..256].fill(9);
    l[256..280].fill(7);
    l[280..].fill(8);
    (Huff::new(&l), Huff::new(&[5u8; 30]))
}

// ---------------------------------------------------------------- marker decoder
/// Output of the marker decoder: symbols < 256 are bytes, >= 256 are `256 + index` into the unknown
/// 32 KiB window preceding the start.
pub struct Marked {
    pub out: Vec<u16>,
    last_marker: Option<usize>,
}

impl Marked {
    pub fn clean_tail(&self) -> bool {
        self.out.len() >= WINDOW && self.last_marker.is_none_or(|m| self.out.len() - m > WINDOW)
    }
}

/// Decodes one block at `b` into `m`. Returns Some(final) or None on invalid data.
pub fn marker_block(b: &mut Bits, m: &mut Marked, fixed_codes: &(Huff, Huff)) -> Option<bool> {
    let last = b.get(1) == 1;
    let ty = b.get(2);
    let dynamic;
    let (lit, dist) = match ty {
        0 => {
            b.align_byte();
            let len = b.get(16);
            let nlen = b.get(16);
            if len != !nlen & 0xffff {
                return None;
            }
            for _ in 0..len {
                m.out.push(b.get(8) as u16);
            }
            return if b.past_end() { None } else { Some(last) };
        }
        1 => (&fixed_codes.0, &fixed_codes.1),
        2 => {
            dynamic = dynamic_header(b)?;
            (&dynamic.0, &dynamic.1)
        }
        _ => return None,
    };
    loop {
        let s = lit.decode(b)? as usize;
        if s < 256 {
            m.out.push(s as u16);
        } else if s == 256 {
            break;
        } else {
            let s = s - 257;
            if s >= 29 {
                return None;
            }
            let len = LBASE[s] as usize + b.get(LEXT[s] as u32) as usize;
            let ds = dist.decode(b)? as usize;
            if ds >= 30 {
                return None;
            }
            let d = DBASE[ds] as usize + b.get(DEXT[ds] as u32) as usize;
            let n = m.out.len();
            for k in 0..len {
                let at = n + k;
                let v = if d > at {
                    // Before the start: a marker for window index WINDOW - (d - at).
                    if d - at > WINDOW {
                        return None;
                    }
                    256 + (WINDOW - (d - at)) as u16
                } else {
                    m.out[at - d]
                };
                if v >= 256 {
                    m.last_marker = Some(at);
                }
                m.out.push(v);
            }
        }
        if b.past_end() {
            return None;
        }
    }
    if b.past_end() { None } else { Some(last) }
}

/// Finds the first plausible dynamic-block start at or after bit `from`: a strict header and one whole block
/// decoded with markers, followed by a non-reserved block type. Returns its bit position.
pub fn find_candidate(data: &[u8], from: usize, limit: usize) -> Option<usize> {
    let fx = fixed();
    let end = (data.len() * 8).min(from + limit);
    for p in from..end {
        let mut b = Bits::at(data, p);
        if b.peek(3) != 0b100 {
            // BFINAL=0, BTYPE=10 (bits: final, then type LSB-first = 0,1)
            continue;
        }
        if dynamic_header(&mut Bits::at(data, p + 3)).is_none() {
            continue;
        }
        let mut m = Marked { out: Vec::new(), last_marker: None };
        match marker_block(&mut b, &mut m, &fx) {
            Some(false) => {
                let t = Bits::at(data, b.pos()).peek(3) >> 1;
                if t != 3 && !m.out.is_empty() {
                    return Some(p);
                }
            }
            _ => continue,
        }
    }
    None
}

// ---------------------------------------------------------------- zlib-rs FFI
pub struct Inflate {
    s: Box<z::z_stream>,
}

impl Inflate {
    pub fn raw() -> Inflate {
        let mut s: Box<MaybeUninit<z::z_stream>> = Box::new(MaybeUninit::zeroed());
        unsafe {
            let r = z::inflateInit2_(
                s.as_mut_ptr(),
                -15,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            );
            assert_eq!(r, z::Z_OK);
            Inflate { s: Box::from_raw(Box::into_raw(s) as *mut z::z_stream) }
        }
    }
    pub fn prime(&mut self, bits: i32, value: i32) {
        unsafe { assert_eq!(z::inflatePrime(&mut *self.s, bits, value), z::Z_OK) }
    }
    pub fn dictionary(&mut self, d: &[u8]) {
        unsafe { assert_eq!(z::inflateSetDictionary(&mut *self.s, d.as_ptr(), d.len() as u32), z::Z_OK) }
    }
    /// One call: returns (rc, consumed, produced, data_type).
    pub fn step(&mut self, input: &[u8], out: &mut [u8], flush: i32) -> (i32, usize, usize, i32) {
        self.s.next_in = input.as_ptr() as *mut u8;
        self.s.avail_in = input.len().min(u32::MAX as usize) as u32;
        self.s.next_out = out.as_mut_ptr();
        self.s.avail_out = out.len().min(u32::MAX as usize) as u32;
        let rc = unsafe { z::inflate(&mut *self.s, flush) };
        let used = input.len().min(u32::MAX as usize) - self.s.avail_in as usize;
        let made = out.len().min(u32::MAX as usize) - self.s.avail_out as usize;
        (rc, used, made, self.s.data_type)
    }
}

impl Drop for Inflate {
    fn drop(&mut self) {
        unsafe {
            z::inflateEnd(&mut *self.s);
        }
    }
}

/// Offset of the DEFLATE data in a gzip member (header parsed, no checks beyond the flags).
pub fn gzip_data_start(g: &[u8]) -> usize {
    let flags = g[3];
    let mut p = 10;
    if flags & 4 != 0 {
        p += 2 + u16::from_le_bytes([g[10], g[11]]) as usize;
    }
    if flags & 8 != 0 {
        while g[p] != 0 {
            p += 1;
        }
        p += 1;
    }
    if flags & 16 != 0 {
        while g[p] != 0 {
            p += 1;
        }
        p += 1;
    }
    if flags & 2 != 0 {
        p += 2;
    }
    p
}

/// Where output goes: a sink that counts, optionally keeping the bytes.
pub struct Out {
    pub keep: Option<Vec<u8>>,
    pub n: usize,
    pub tail: Vec<u8>, // last WINDOW bytes (only maintained when asked)
}

/// Thread A's inflater: from bit 0, stopping at block boundaries when asked.
pub struct A<'a> {
    deflate: &'a [u8],
    inf: Inflate,
    at: usize,
    pub out: Out,
    buf: Vec<u8>,
    pub done: bool,
}

impl<'a> A<'a> {
    pub fn new(deflate: &'a [u8], keep: bool) -> Self {
        A {
            deflate,
            inf: Inflate::raw(),
            at: 0,
            out: Out { keep: keep.then(Vec::new), n: 0, tail: Vec::new() },
            buf: vec![0u8; 1 << 20],
            done: false,
        }
    }

    /// Inflates until the end, or until a block boundary at bit `target()` (returns true there). `target`
    /// is read at each boundary (usize::MAX: not known yet).
    pub fn run(&mut self, target: &dyn Fn() -> usize, track_tail: bool) -> bool {
        let flush = if track_tail { z::Z_BLOCK } else { z::Z_NO_FLUSH };
        loop {
            let (rc, used, made, dt) = self.inf.step(&self.deflate[self.at..], &mut self.buf, flush);
            self.at += used;
            if let Some(k) = &mut self.out.keep {
                k.extend_from_slice(&self.buf[..made]);
            }
            self.out.n += made;
            if track_tail && made > 0 {
                let t = &mut self.out.tail;
                if made >= WINDOW {
                    t.clear();
                    t.extend_from_slice(&self.buf[made - WINDOW..made]);
                } else {
                    t.extend_from_slice(&self.buf[..made]);
                    if t.len() > 8 * WINDOW {
                        t.drain(..t.len() - WINDOW);
                    }
                }
            }
            if rc == z::Z_STREAM_END {
                self.done = true;
                return false;
            }
            assert!(rc == z::Z_OK || rc == z::Z_BUF_ERROR, "inflate error {rc}");
            if track_tail && dt & 128 != 0 && self.at > 0 {
                let pos = self.at * 8 - (dt & 7) as usize;
                if pos == target() {
                    return true;
                }
            }
            assert!(used > 0 || made > 0 || track_tail, "no progress");
        }
    }
}

/// Single-thread reference: the whole stream with zlib-rs.
pub fn inflate_single(deflate: &[u8], keep: bool) -> Out {
    let mut a = A::new(deflate, keep);
    a.run(&|| usize::MAX, false);
    a.out
}

/// B's result: its start bit, the marker part, and the plain part.
pub struct BPart {
    pub start: usize,
    pub marked: Vec<u16>,
    pub plain: Out,
    pub marker_blocks: usize,
}

/// B: from a candidate at bit `start`, marker-decode blocks until the tail is clean, then zlib-rs to the end.
pub fn decode_b(deflate: &[u8], start: usize, keep: bool, buf: &mut [u8]) -> Option<BPart> {
    let fx = fixed();
    let mut b = Bits::at(deflate, start);
    let mut m = Marked { out: Vec::with_capacity(1 << 20), last_marker: None };
    let mut blocks = 0;
    loop {
        let last = marker_block(&mut b, &mut m, &fx)?;
        blocks += 1;
        if last {
            return Some(BPart {
                start,
                marked: m.out,
                plain: Out { keep: keep.then(Vec::new), n: 0, tail: Vec::new() },
                marker_blocks: blocks,
            });
        }
        if m.clean_tail() {
            break;
        }
    }
    if std::env::var_os("SPLIT_TIMES").is_some() { let ss = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default(); eprintln!("B: marker phase done, {} symbols; schedstat {}", m.out.len(), ss.trim()); }
    // Switch: window = last WINDOW symbols (all bytes now).
    let window: Vec<u8> = m.out[m.out.len() - WINDOW..].iter().map(|&s| s as u8).collect();
    let pos = b.pos();
    let mut inf = Inflate::raw();
    let bits = (8 - pos % 8) % 8;
    if bits > 0 {
        inf.prime(bits as i32, (deflate[pos / 8] >> (pos % 8)) as i32);
    }
    inf.dictionary(&window);
    let mut at = pos.div_ceil(8);
    let mut plain = Out { keep: keep.then(Vec::new), n: 0, tail: Vec::new() };
    loop {
        let (rc, used, made, _) = inf.step(&deflate[at..], buf, z::Z_NO_FLUSH);
        at += used;
        if let Some(k) = &mut plain.keep {
            k.extend_from_slice(&buf[..made]);
        }
        plain.n += made;
        if rc == z::Z_STREAM_END {
            break;
        }
        if rc != z::Z_OK && rc != z::Z_BUF_ERROR {
            return None;
        }
        if used == 0 && made == 0 {
            return None;
        }
    }
    Some(BPart { start, marked: m.out, plain, marker_blocks: blocks })
}

/// Resolves B's markers with the 32 KiB A produced last.
pub fn resolve(marked: &[u16], window: &[u8]) -> Vec<u8> {
    let w = &window[window.len().saturating_sub(WINDOW)..];
    let pad = WINDOW - w.len(); // a stream shorter than the window: indices below pad are invalid
    marked
        .iter()
        .map(|&s| if s < 256 { s as u8 } else { w[(s as usize - 256) - pad] })
        .collect()
}

/// Figures of one split run.
#[derive(Debug, Default)]
pub struct Report {
    pub used_b: bool,
    pub b_start_bit: Option<usize>,
    pub a_bytes: usize,
    pub b_marked: usize,
    pub b_plain: usize,
    pub marker_blocks: usize,
}

const NONE: usize = usize::MAX - 1;

/// The whole split. With `keep`, returns the full output.
pub fn split_inflate(deflate: &[u8], keep: bool, from_fraction: f64) -> (Option<Vec<u8>>, Report) {
    let from = ((deflate.len() * 8) as f64 * from_fraction) as usize;
    split_with(deflate, keep, &|| find_candidate(deflate, from, 1 << 24))
}

/// The split with B starting where `pick` says (tests force false candidates through it).
pub fn split_with(
    deflate: &[u8],
    keep: bool,
    pick: &(dyn Fn() -> Option<usize> + Sync),
) -> (Option<Vec<u8>>, Report) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let target = AtomicUsize::new(usize::MAX);
    std::thread::scope(|sc| {
        let t0 = std::time::Instant::now();
        let target = &target;
        let hb = sc.spawn(move || {
            let c = pick();
            let tf = t0.elapsed();
            target.store(c.unwrap_or(NONE), Ordering::Release);
            let mut buf = vec![0u8; 1 << 20];
            let r = c.and_then(|c| decode_b(deflate, c, keep, &mut buf));
            if std::env::var_os("SPLIT_TIMES").is_some() { let ss = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default(); eprintln!("B: candidate at {:?} after {:.2} ms, done at {:.1} ms; schedstat (cpu ns, runqueue ns, slices) {}", c, tf.as_secs_f64()*1e3, t0.elapsed().as_secs_f64()*1e3, ss.trim()); }
            r
        });
        let mut a = A::new(deflate, keep);
        let reached = a.run(&|| target.load(Ordering::Acquire), true);
        if std::env::var_os("SPLIT_TIMES").is_some() { eprintln!("A: reached {reached} at {:.1} ms", t0.elapsed().as_secs_f64()*1e3); }
        let b = hb.join().ok().flatten();
        let mut rep = Report { b_start_bit: b.as_ref().map(|b| b.start), ..Default::default() };
        match (reached, b) {
            (true, Some(b)) => {
                rep.used_b = true;
                rep.a_bytes = a.out.n;
                rep.b_marked = b.marked.len();
                rep.b_plain = b.plain.n;
                rep.marker_blocks = b.marker_blocks;
                let out = a.out.keep.take().map(|mut v| {
                    v.extend(resolve(&b.marked, &a.out.tail));
                    v.extend(b.plain.keep.unwrap_or_default());
                    v
                });
                (out, rep)
            }
            (true, None) => {
                // B failed after A stopped at its start: A goes on alone.
                a.run(&|| NONE, true);
                rep.a_bytes = a.out.n;
                (a.out.keep.take(), rep)
            }
            (false, _) => {
                rep.a_bytes = a.out.n;
                (a.out.keep.take(), rep)
            }
        }
    })
}

/// Bit positions in [from, to) whose bits parse as a strict dynamic header (no block decode check): most are
/// not block starts.
pub fn header_like(data: &[u8], from: usize, to: usize) -> Vec<usize> {
    (from..to.min(data.len() * 8))
        .filter(|&p| {
            let mut b = Bits::at(data, p);
            if b.get(3) != 0b100 {
                return false;
            }
            let (hlit, hdist, hclen) = (b.get(5) + 257, b.get(5) + 1, b.get(4) as usize + 4);
            let mut cl = [0u8; 19];
            for i in 0..hclen {
                cl[CLORDER[i]] = b.get(3) as u8;
            }
            hlit <= 286 && hdist <= 30 && kraft(&cl) == Kraft::Complete
        })
        .collect()
}
