//! The detools sequential-patch applier (`ota::delta`) on patches made by the real detools:
//! the committed fixtures of `tests/fixtures/delta/` (remade by its `make.py`) and, when detools
//! is importable (always under OTA_REQUIRE_DETOOLS=required, where its absence fails), fresh
//! random pairs. Every patch is fed in pieces of 1, 7 and 4096 bytes into output buffers of 1, 13
//! and 5000 bytes and must give the new image byte for byte; hostile patches (truncated, flipped,
//! oversized, seeking outside the old image) end in an error, never a panic or a longer image;
//! a state saved mid-patch and restored continues to the same image; and the applier allocates
//! only when it is made.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::process::Command;

use common::delta::fixture;
use ota::delta::{
    Compression, DeltaBudget, DeltaError, OldImage, OldReadError, PatchApplier, PatchHeader, Stop,
    STATE_MAX,
};

/// Counts the allocations of the thread that asks (tests run in parallel threads).
struct ThreadCounting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    if COUNTING.with(Cell::get) {
        ALLOCS.with(|a| a.set(a.get() + 1));
        BYTES.with(|b| b.set(b.get() + bytes));
    }
}

unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        count(new);
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static GLOBAL: ThreadCounting = ThreadCounting;

/// (allocations, bytes) that `f` makes on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (a0, b0) = (ALLOCS.with(Cell::get), BYTES.with(Cell::get));
    COUNTING.with(|c| c.set(true));
    let value = f();
    COUNTING.with(|c| c.set(false));
    (
        value,
        ALLOCS.with(Cell::get) - a0,
        BYTES.with(Cell::get) - b0,
    )
}

/// A committed patch with its pair of images.
struct Fixture {
    name: String,
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

/// Every patch listed in the fixtures' MANIFEST.
fn fixtures() -> Vec<Fixture> {
    let manifest = String::from_utf8(fixture("MANIFEST")).expect("MANIFEST");
    let mut out = Vec::new();
    for line in manifest.lines().filter(|l| !l.starts_with('#')) {
        let file = line.split(' ').next().unwrap();
        let Some(stem) = file.strip_suffix(".patch") else {
            continue;
        };
        let pair = stem.split('.').next().unwrap();
        out.push(Fixture {
            name: stem.to_string(),
            old: fixture(&format!("{pair}.old")),
            new: fixture(&format!("{pair}.new")),
            patch: fixture(file),
        });
    }
    assert!(out.len() >= 10, "the fixtures are missing: run make.py");
    out
}

/// Applies `patch` to `old` fed `piece` bytes at a time into `out_len`-byte buffers, as an
/// engine would: the unconsumed bytes of a piece start the next one.
fn apply_with(
    budget: DeltaBudget,
    patch: &[u8],
    old: &mut dyn OldImage,
    piece: usize,
    out_len: usize,
) -> Result<Vec<u8>, DeltaError> {
    let mut applier = PatchApplier::new(budget);
    let mut out = vec![0u8; out_len];
    let mut new = Vec::new();
    let mut at = 0;
    let mut calls = 0usize;
    loop {
        let end = (at + piece).min(patch.len());
        let piece_len = end - at;
        let p = applier.feed(&patch[at..end], old, &mut out)?;
        assert!(p.consumed <= piece_len && p.produced <= out.len());
        new.extend_from_slice(&out[..p.produced]);
        at += p.consumed;
        if let Some(size) = applier.new_size() {
            assert!(new.len() as u64 <= size, "more than the header's new size");
        }
        match p.stop {
            Stop::Done => break,
            Stop::NeedPatch => {
                assert_eq!(p.consumed, piece_len, "asked for more with bytes left");
                if at == patch.len() {
                    break;
                }
            }
            Stop::OutFull => assert_eq!(p.produced, out_len),
        }
        calls += 1;
        assert!(calls <= 4 * (patch.len() + new.len()) + 8, "no progress");
    }
    if at < patch.len() {
        applier.feed(&patch[at..], old, &mut out)?;
    }
    let size = applier.finish()?;
    assert_eq!(size, new.len() as u64);
    assert_eq!(applier.patch_offset(), patch.len() as u64);
    Ok(new)
}

fn apply(patch: &[u8], old: &[u8], piece: usize, out_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut old = old;
    apply_with(DeltaBudget::default(), patch, &mut old, piece, out_len)
}

#[test]
fn fixtures_apply_byte_exact_in_any_pieces() {
    for f in fixtures() {
        let header = PatchHeader::parse(&f.patch).unwrap().unwrap();
        assert_eq!(header.new_size, f.new.len() as u64, "{}", f.name);
        let compression = if f.name.contains("heatshrink") {
            Compression::Heatshrink
        } else {
            Compression::None
        };
        assert_eq!(header.compression, compression, "{}", f.name);
        for piece in [1, 7, 4096] {
            for out_len in [1, 13, 5000] {
                let got = apply(&f.patch, &f.old, piece, out_len)
                    .unwrap_or_else(|e| panic!("{} piece {piece} out {out_len}: {e}", f.name));
                assert!(
                    got == f.new,
                    "{} piece {piece} out {out_len}: wrong image",
                    f.name
                );
            }
        }
    }
}

#[test]
fn heatshrink_parameters_come_from_the_patch() {
    for (file, window, lookahead) in [
        ("small-change.heatshrink.patch", 8, 7),
        ("small-change.heatshrink-w4-l3.patch", 4, 3),
        ("small-change.heatshrink-w11-l4.patch", 11, 4),
    ] {
        let patch = fixture(file);
        let h = PatchHeader::parse(&patch).unwrap().unwrap();
        assert_eq!(
            (h.window_bits, h.lookahead_bits),
            (window, lookahead),
            "{file}"
        );
    }
}

#[test]
fn a_window_over_the_budget_is_refused_before_any_byte() {
    let patch = fixture("small-change.heatshrink-w11-l4.patch");
    let old = fixture("small-change.old");
    let budget = DeltaBudget {
        max_window_bits: 10,
        old_chunk: 64,
    };
    let mut applier = PatchApplier::new(budget);
    let mut out = [0u8; 64];
    let e = applier.feed(&patch, &mut old.as_slice(), &mut out);
    assert_eq!(
        e,
        Err(DeltaError::WindowOverBudget {
            window_bits: 11,
            max_window_bits: 10
        })
    );
    assert_eq!(applier.produced(), 0);
    let mut old = old.as_slice();
    let eleven = DeltaBudget {
        max_window_bits: 11,
        old_chunk: 64,
    };
    assert!(apply_with(eleven, &patch, &mut old, 4096, 5000).is_ok());
}

/// An old image that fails the test if the applier reads outside it.
struct Guarded<'a>(&'a [u8]);

impl OldImage for Guarded<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        let at = usize::try_from(offset).unwrap();
        assert!(at + buf.len() <= self.0.len(), "read outside the old image");
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(buf.len())
    }
}

#[test]
fn truncated_patches_are_detected_at_every_offset() {
    for name in [
        "small-change.heatshrink",
        "empty-old.heatshrink",
        "unrelated.none",
    ] {
        let f = fixtures().into_iter().find(|f| f.name == name).unwrap();
        for cut in 0..f.patch.len() {
            let mut old = Guarded(&f.old);
            let r = apply_with(
                DeltaBudget::default(),
                &f.patch[..cut],
                &mut old,
                4096,
                5000,
            );
            assert!(
                matches!(r, Err(DeltaError::Truncated { .. })),
                "{name} cut at {cut}: {r:?}"
            );
        }
    }
}

#[test]
fn flipped_bytes_give_an_error_or_an_image_of_the_announced_size() {
    // The format has no checksum: a flipped data byte can only change the image, which the
    // digests catch. What must hold: no panic, no read outside the old image, never more than
    // the header's size, and errors where the structure breaks.
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "small-change.heatshrink")
        .unwrap();
    let (mut errors, mut images) = (0, 0);
    for at in 0..f.patch.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bad = f.patch.clone();
            bad[at] ^= mask;
            let mut old = Guarded(&f.old);
            match apply_with(DeltaBudget::default(), &bad, &mut old, 7, 13) {
                Ok(new) => {
                    let h = PatchHeader::parse(&bad).unwrap().unwrap();
                    assert_eq!(new.len() as u64, h.new_size);
                    images += 1;
                }
                Err(_) => errors += 1,
            }
        }
    }
    // The header's type byte and the parameter byte always break it.
    for (at, mask) in [(0usize, 0x10u8), (0, 0x80), (0, 0x01)] {
        let mut bad = f.patch.clone();
        bad[at] ^= mask;
        assert!(
            apply(&bad, &f.old, 4096, 5000).is_err(),
            "byte {at} ^ {mask:#x}"
        );
    }
    println!("flipped bytes: {errors} errors, {images} images of the announced size");
    assert!(errors > images, "{errors} errors, {images} images");
}

/// The sequential layout written out, for hand-made hostile patches: header (none), no
/// data-format section, then the runs.
fn none_patch(new_size: i64, runs: &[(&[u8], &[u8], i64)]) -> Vec<u8> {
    let mut p = vec![0x00];
    pack(&mut p, new_size);
    pack(&mut p, 0);
    for (diff, extra, seek) in runs {
        pack(&mut p, diff.len() as i64);
        p.extend_from_slice(diff);
        pack(&mut p, extra.len() as i64);
        p.extend_from_slice(extra);
        pack(&mut p, *seek);
    }
    p
}

/// detools' size field: bit 7 more, bit 6 sign and six bits, then seven bits a byte.
fn pack(out: &mut Vec<u8>, value: i64) {
    let mut m = value.unsigned_abs();
    let mut byte = if value < 0 { 0x40 } else { 0 } | (m & 0x3f) as u8;
    m >>= 6;
    while m > 0 {
        out.push(byte | 0x80);
        byte = (m & 0x7f) as u8;
        m >>= 7;
    }
    out.push(byte);
}

#[test]
fn hostile_sizes_and_seeks_end_in_their_errors() {
    let old = b"the old image, forty bytes long........";
    let old = &old[..];
    // A new size of 2^62 whose runs never come: truncated, after the bytes that did.
    let huge = none_patch(1 << 62, &[(b"", b"abc", 0)]);
    assert_eq!(
        apply(&huge, old, 7, 13),
        Err(DeltaError::Truncated {
            produced: 3,
            new_size: 1 << 62
        })
    );
    // A diff run of 2^62 bytes: past the new size.
    let mut p = vec![0x00];
    pack(&mut p, 10);
    pack(&mut p, 0);
    pack(&mut p, 1 << 62);
    assert!(matches!(
        apply(&p, old, 7, 13),
        Err(DeltaError::Oversize { len, .. }) if len == 1 << 62
    ));
    // A diff run within the new size but past the old image.
    let p = none_patch(100, &[(&[0; 50], b"", 0)]);
    assert!(matches!(
        apply(&p, old, 7, 13),
        Err(DeltaError::OldRange { len: 50, .. })
    ));
    // Seeks from offset 2: one before the start, far back, one past the end, far forward.
    let past_end = old.len() as i64 - 1;
    for seek in [-3, -(1 << 40), past_end, i64::MAX, -i64::MAX] {
        let p = none_patch(4, &[(&[0; 2], b"", seek), (&[0; 2], b"", 0)]);
        let r = apply(&p, old, 7, 13);
        assert!(
            matches!(r, Err(DeltaError::OldRange { len: 0, .. })),
            "seek {seek}: {r:?}"
        );
    }
    // Extra data past the new size.
    let p = none_patch(2, &[(b"", b"abc", 0)]);
    assert!(matches!(
        apply(&p, old, 1, 1),
        Err(DeltaError::Oversize { len: 3, .. })
    ));
    // A real patch against a shorter old image than it was made for.
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "small-change.heatshrink")
        .unwrap();
    let mut short = Guarded(&f.old[..1000]);
    assert!(matches!(
        apply_with(DeltaBudget::default(), &f.patch, &mut short, 4096, 5000),
        Err(DeltaError::OldRange { .. })
    ));
    // Trailing bytes after a complete patch.
    let mut long = f.patch.clone();
    long.extend_from_slice(&[0xff; 4]);
    assert!(matches!(
        apply(&long, &f.old, 4096, 5000),
        Err(DeltaError::TrailingData { .. })
    ));
}

#[test]
fn a_failing_or_short_old_image_read_is_its_own_error() {
    struct Flaky<'a> {
        image: &'a [u8],
        fail_at: u64,
        short: bool,
    }
    impl OldImage for Flaky<'_> {
        fn size(&self) -> u64 {
            self.image.len() as u64
        }
        fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
            if offset + buf.len() as u64 > self.fail_at {
                return if self.short {
                    Ok(0)
                } else {
                    Err(OldReadError { code: -5 })
                };
            }
            let at = offset as usize;
            buf.copy_from_slice(&self.image[at..at + buf.len()]);
            Ok(buf.len())
        }
    }
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "small-change.none")
        .unwrap();
    for short in [false, true] {
        let mut old = Flaky {
            image: &f.old,
            fail_at: 3000,
            short,
        };
        let r = apply_with(DeltaBudget::default(), &f.patch, &mut old, 4096, 5000);
        if short {
            assert!(
                matches!(r, Err(DeltaError::OldShort { got: 0, .. })),
                "{r:?}"
            );
        } else {
            assert!(
                matches!(r, Err(DeltaError::OldRead { code: -5, .. })),
                "{r:?}"
            );
        }
    }
}

/// Applies `patch`, saving the state every `every` calls and continuing in a fresh applier
/// restored from it (fed from the saved patch offset), as after a power loss.
fn apply_with_restarts(f: &Fixture, every: usize, piece: usize, out_len: usize) -> Vec<u8> {
    let budget = DeltaBudget::default();
    let mut applier = PatchApplier::new(budget);
    let mut state = vec![0u8; STATE_MAX];
    let mut out = vec![0u8; out_len];
    let mut new = Vec::new();
    let mut old = Guarded(&f.old);
    let mut calls = 0;
    while !applier.is_done() {
        if calls % every == every - 1 {
            let len = applier.save_state(&mut state);
            assert!(len > 0 && len <= budget.state_max());
            let saved_at = applier.patch_offset();
            let produced = applier.produced();
            applier = PatchApplier::restore(budget, &state[..len]).expect("restores");
            assert_eq!(applier.patch_offset(), saved_at);
            assert_eq!(applier.produced(), produced);
        }
        let at = applier.patch_offset() as usize;
        let end = (at + piece).min(f.patch.len());
        let p = applier.feed(&f.patch[at..end], &mut old, &mut out).unwrap();
        new.extend_from_slice(&out[..p.produced]);
        calls += 1;
        assert!(calls < 100_000);
    }
    applier.finish().unwrap();
    new
}

#[test]
fn a_state_saved_mid_patch_restores_to_the_same_image() {
    for f in fixtures() {
        for (every, piece, out_len) in [(3, 7, 13), (5, 1, 1), (2, 4096, 5000), (7, 64, 1)] {
            let got = apply_with_restarts(&f, every, piece, out_len);
            assert!(got == f.new, "{} every {every} piece {piece}", f.name);
        }
    }
}

#[test]
fn a_state_needs_a_budget_for_its_window() {
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "small-change.heatshrink-w11-l4")
        .unwrap();
    let budget = DeltaBudget::default();
    let mut applier = PatchApplier::new(budget);
    let mut out = [0u8; 100];
    applier
        .feed(&f.patch[..200], &mut f.old.as_slice(), &mut out)
        .unwrap();
    let mut state = vec![0u8; STATE_MAX];
    let len = applier.save_state(&mut state);
    assert_eq!(len, ota::delta::STATE_FIXED_LEN + 2048);
    let ten = DeltaBudget {
        max_window_bits: 10,
        ..budget
    };
    assert!(PatchApplier::restore(ten, &state[..len]).is_none());
    assert!(PatchApplier::restore(budget, &state[..len]).is_some());
}

#[test]
fn the_heap_is_taken_at_init_and_never_after() {
    let budget = DeltaBudget::default();
    let (mut applier, allocs, bytes) = counted(|| PatchApplier::new(budget));
    println!(
        "PatchApplier::new(DeltaBudget::default()): {allocs} allocations, {bytes} bytes of heap; \
         the applier itself {} bytes",
        std::mem::size_of::<PatchApplier>()
    );
    assert_eq!(bytes, budget.heap_bytes());
    assert_eq!(bytes, 4352);
    assert_eq!(allocs, 2);
    let f = fixtures()
        .into_iter()
        .find(|f| f.name == "inserted-block.heatshrink")
        .unwrap();
    let mut out = vec![0u8; 13];
    let mut state = vec![0u8; STATE_MAX];
    let mut new = Vec::with_capacity(f.new.len());
    let ((), allocs, _) = counted(|| {
        let mut old = f.old.as_slice();
        let mut at = 0;
        while !applier.is_done() {
            let len = applier.save_state(&mut state);
            assert!(applier.restore_in_place(&state[..len]));
            let end = (at + 7).min(f.patch.len());
            let p = applier.feed(&f.patch[at..end], &mut old, &mut out).unwrap();
            at += p.consumed;
            new.extend_from_slice(&out[..p.produced]);
        }
        applier.finish().unwrap();
        applier.reset();
    });
    assert_eq!(allocs, 0, "allocations while applying");
    assert!(new == f.new);
}

/// detools is importable by `python3`; panics under OTA_REQUIRE_DETOOLS=required when not.
fn detools(test: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", "import detools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("OTA_REQUIRE_DETOOLS").as_deref() == Ok("required") {
        panic!("{test}: detools is not importable and OTA_REQUIRE_DETOOLS=required (pip install detools)");
    }
    println!("SKIPPED {test}: detools is not importable (pip install detools; OTA_REQUIRE_DETOOLS=required makes this fail)");
    false
}

/// xorshift64*: reproducible random bytes from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Compressible bytes: runs and repeats among noise.
    fn image(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            match self.below(3) {
                0 => {
                    let n = 1 + self.below(40) as usize;
                    v.extend(self.bytes(n))
                }
                1 => v.extend(std::iter::repeat_n(
                    self.next() as u8,
                    1 + self.below(60) as usize,
                )),
                _ if !v.is_empty() => {
                    let from = self.below(v.len() as u64) as usize;
                    let len = (1 + self.below(80) as usize).min(v.len() - from);
                    v.extend_from_within(from..from + len);
                }
                _ => {}
            }
        }
        v.truncate(n);
        v
    }

    /// `old` edited: bytes changed, a block inserted, one removed, data appended.
    fn edit(&mut self, old: &[u8]) -> Vec<u8> {
        let mut new = old.to_vec();
        for _ in 0..self.below(20) {
            if !new.is_empty() {
                let at = self.below(new.len() as u64) as usize;
                new[at] = self.next() as u8;
            }
        }
        if self.below(2) == 0 {
            let at = self.below(new.len() as u64 + 1) as usize;
            let n = self.below(2000) as usize;
            let block = self.image(n);
            new.splice(at..at, block);
        }
        if self.below(2) == 0 && !new.is_empty() {
            let at = self.below(new.len() as u64) as usize;
            let len = (self.below(1500) as usize).min(new.len() - at);
            new.drain(at..at + len);
        }
        if self.below(2) == 0 {
            let n = self.below(3000) as usize;
            let tail = self.image(n);
            new.extend(tail);
        }
        new
    }
}

#[test]
fn fresh_patches_from_live_detools() {
    if !detools("fresh_patches_from_live_detools") {
        return;
    }
    let seed = std::env::var("OTA_DELTA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed} (OTA_DELTA_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("delta-live");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for case in 0..8 {
        let old = match case {
            0 => Vec::new(),
            _ => {
                let n = 1 + rng.below(20_000) as usize;
                rng.image(n)
            }
        };
        let new = match case {
            1 => {
                let n = rng.below(8000) as usize;
                rng.bytes(n)
            }
            _ => rng.edit(&old),
        };
        std::fs::write(dir.join("old.bin"), &old).unwrap();
        std::fs::write(dir.join("new.bin"), &new).unwrap();
        let window = 4 + rng.below(9) as u8;
        let lookahead = 3 + rng.below(u64::from(window - 3)) as u8;
        let algorithm = if case % 3 == 2 {
            "match-blocks"
        } else {
            "bsdiff"
        };
        for compression in ["none", "heatshrink"] {
            let out = Command::new("python3")
                .args([
                    "-m",
                    "detools",
                    "create_patch",
                    "--patch-type",
                    "sequential",
                ])
                .args(["--compression", compression, "--algorithm", algorithm])
                .args(["--heatshrink-window-sz2", &window.to_string()])
                .args(["--heatshrink-lookahead-sz2", &lookahead.to_string()])
                .args(["old.bin", "new.bin", "patch.bin"])
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "detools: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let patch = std::fs::read(dir.join("patch.bin")).unwrap();
            let what = format!(
                "case {case} ({} -> {} bytes, {algorithm}, {compression} w{window} l{lookahead}, patch {} bytes)",
                old.len(),
                new.len(),
                patch.len()
            );
            for (piece, out_len) in [(1, 1), (7, 13), (4096, 5000)] {
                let mut guarded = Guarded(&old);
                let got = apply_with(DeltaBudget::default(), &patch, &mut guarded, piece, out_len)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(got == new, "{what}: wrong image (piece {piece})");
            }
            let f = Fixture {
                name: what.clone(),
                old: old.clone(),
                new: new.clone(),
                patch,
            };
            assert!(apply_with_restarts(&f, 4, 5, 11) == new, "{what}: restarts");
        }
    }
}
