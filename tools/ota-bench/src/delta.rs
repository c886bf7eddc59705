//! Section 8 of the table: delta upgrades (issue 17), in memory.
//!
//! - A 1 MiB firmware-like old image and a new version of it (regions rewritten, a block
//!   inserted with the pointers after it moved, data appended), made here from a fixed seed;
//!   patches for the pair made by the real detools (`python3 -m detools create_patch`) with
//!   compression `none` and heatshrink at three windows.
//! - Apply throughput: `ota::delta::PatchApplier` fed the patch in 4096-byte pieces into a
//!   5000-byte FetchYield buffer, beside two baselines on the same bytes in the same run: a
//!   memcpy of the new image into that buffer, and its MD5 (the digest the device computes over
//!   the new image anyway).
//! - Sizes (old, new, patch, patch / new) and the applier's memory: its heap at init (counting
//!   allocator), no allocation while a whole patch is applied, saved halfway and resumed in a
//!   second applier (the bench fails otherwise), and the saved state's size.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use md5::Digest as _;
use ota::delta::{
    DeltaBudget, OldImage, PatchApplier, Stop, MAX_WINDOW_BITS, STATE_FIXED_LEN, STATE_MAX,
};

use super::{allocated_bytes, allocs, mb_s, set_counting, Campaign, Res, Three, MIB};

/// The old image's size: a firmware of the size delta upgrades are made for.
const OLD_LEN: usize = MIB;
/// Patch bytes per piece, as a download hands them over.
const PIECE: usize = 4096;
/// The FetchYield buffer (the iotkit sample's size).
const BUF_LEN: usize = 5000;
/// detools' default heatshrink lookahead, kept for every window so that only the window varies.
const LOOKAHEAD_BITS: u8 = 7;
/// The largest window detools makes a patch with: heatshrink's encoder loops forever at 15 on
/// inputs of 32 KiB or more (atomicobject/heatshrink issue 55; detools 0.53.0 with heatshrink2
/// 0.15.0 did not finish a 1 MiB patch in 10 minutes here).
const DETOOLS_MAX_WINDOW_BITS: u8 = 14;

// ---------------------------------------------------------------------------------------------
// The image pair.

/// splitmix64: the images are the same bytes in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes with the texture of code and data: a vocabulary of recurring sequences (instruction
/// patterns, constants, strings), zero padding and noise, so that they compress as firmware
/// does rather than not at all (`ota_cloud::generate_firmware` is noise).
fn firmware_like(rng: &mut Rng, vocabulary: &[Vec<u8>], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        match rng.below(8) {
            0..=1 => {
                let n = 1 + rng.below(32);
                out.extend((0..n).map(|_| rng.next() as u8));
            }
            2 => out.resize(out.len() + 1 + rng.below(48), 0),
            _ => out.extend_from_slice(&vocabulary[rng.below(vocabulary.len())]),
        }
    }
    out.truncate(len);
    out
}

/// What the new image changes: sizes printed with the table.
struct Edits {
    regions: usize,
    region_max: usize,
    inserted: usize,
    inserted_at: usize,
    pointer_every: usize,
    appended: usize,
}

const EDITS: Edits = Edits {
    regions: 12,
    region_max: 512,
    inserted: 24 * 1024,
    inserted_at: OLD_LEN * 2 / 5,
    pointer_every: 1024,
    appended: 48 * 1024,
};

/// The old image and its next version: [`EDITS`] regions of 16..=region_max bytes rewritten
/// (patched functions), a block of new code inserted, every `pointer_every`-th 32-bit word
/// after it moved by the block's length (the addresses the insertion shifts), data appended.
fn image_pair() -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(17);
    let vocabulary: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let n = 4 + rng.below(20);
            (0..n).map(|_| rng.next() as u8).collect()
        })
        .collect();
    let old = firmware_like(&mut rng, &vocabulary, OLD_LEN);
    let mut new = old.clone();
    for _ in 0..EDITS.regions {
        let len = 16 + rng.below(EDITS.region_max - 15);
        let at = rng.below(OLD_LEN - len);
        let code = firmware_like(&mut rng, &vocabulary, len);
        new[at..at + len].copy_from_slice(&code);
    }
    let block = firmware_like(&mut rng, &vocabulary, EDITS.inserted);
    let after = EDITS.inserted_at + EDITS.inserted;
    new.splice(EDITS.inserted_at..EDITS.inserted_at, block);
    for at in (after..new.len() - 4).step_by(EDITS.pointer_every) {
        let word = u32::from_le_bytes([new[at], new[at + 1], new[at + 2], new[at + 3]]);
        new[at..at + 4].copy_from_slice(&word.wrapping_add(EDITS.inserted as u32).to_le_bytes());
    }
    new.extend(firmware_like(&mut rng, &vocabulary, EDITS.appended));
    (old, new)
}

// ---------------------------------------------------------------------------------------------
// detools.

/// A patch of the pair: how detools makes it and the budget that applies it.
#[derive(Clone, Copy)]
struct Kind {
    /// heatshrink's window as a power of two; `None`: compression `none`.
    window_bits: Option<u8>,
    budget: DeltaBudget,
}

impl Kind {
    fn label(&self) -> String {
        match self.window_bits {
            None => "none".into(),
            Some(w) => format!("heatshrink w{w} l{LOOKAHEAD_BITS}"),
        }
    }

    /// Why this window: the row's note.
    fn note(&self) -> String {
        match self.window_bits {
            None => String::new(),
            Some(8) => "detools' default, its C library's only build".into(),
            Some(w) if w == DeltaBudget::DEFAULT.max_window_bits => {
                "the default budget's largest".into()
            }
            Some(w) => format!("budget max_window_bits {w}; detools makes no larger"),
        }
    }

    fn args(&self) -> Vec<String> {
        match self.window_bits {
            None => vec!["--compression".into(), "none".into()],
            Some(w) => vec![
                "--compression".into(),
                "heatshrink".into(),
                "--heatshrink-window-sz2".into(),
                w.to_string(),
                "--heatshrink-lookahead-sz2".into(),
                LOOKAHEAD_BITS.to_string(),
            ],
        }
    }

    fn file(&self) -> String {
        match self.window_bits {
            None => "none.patch".into(),
            Some(w) => format!("heatshrink-w{w}.patch"),
        }
    }
}

fn kinds() -> [Kind; 4] {
    let default = DeltaBudget::DEFAULT;
    let with_window = |w: u8| Kind {
        window_bits: Some(w),
        budget: DeltaBudget {
            max_window_bits: w.max(default.max_window_bits),
            ..default
        },
    };
    [
        Kind {
            window_bits: None,
            budget: default,
        },
        with_window(8),
        with_window(default.max_window_bits),
        with_window(DETOOLS_MAX_WINDOW_BITS),
    ]
}

/// detools' version when `python3` can import it; `Ok(None)` when not, an error then under
/// OTA_REQUIRE_DETOOLS=required (CI).
fn detools_version() -> Res<Option<String>> {
    let out = Command::new("python3")
        .args(["-c", "import detools; print(detools.__version__)"])
        .output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        return Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    if std::env::var("OTA_REQUIRE_DETOOLS").as_deref() == Ok("required") {
        return Err(
            "detools is not importable by python3 and OTA_REQUIRE_DETOOLS=required: the delta rows are required (pip install detools)"
                .into(),
        );
    }
    Ok(None)
}

/// The create_patch command line of the table's note.
const CREATE_PATCH: &str = "python3 -m detools create_patch --patch-type sequential";

/// `kind`'s patch from `dir`/old.bin to `dir`/new.bin, made by detools.
fn create_patch(dir: &Path, kind: Kind) -> Res<Vec<u8>> {
    let out = Command::new("python3")
        .args(CREATE_PATCH.split(' ').skip(1))
        .args(kind.args())
        .args(["old.bin", "new.bin", &kind.file()])
        .current_dir(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "detools create_patch ({}) failed: {}",
            kind.label(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(std::fs::read(dir.join(kind.file()))?)
}

// ---------------------------------------------------------------------------------------------
// Applying, in the FetchYield shape.

/// The download side of a delta FetchYield: the patch arrives in [`PIECE`]-byte pieces, and
/// what the applier did not consume of a piece waits in the download buffer for the next call.
struct PatchStream<'a> {
    patch: &'a [u8],
    /// The unconsumed rest of the current piece.
    at: usize,
    end: usize,
    /// The applier used the whole piece: the next call reads another.
    need_piece: bool,
}

impl<'a> PatchStream<'a> {
    /// The patch from `offset` on (0, or an applier's `patch_offset` after a restore).
    fn starting_at(patch: &'a [u8], offset: u64) -> PatchStream<'a> {
        let at = offset as usize;
        PatchStream {
            patch,
            at,
            end: at,
            need_piece: true,
        }
    }

    /// One FetchYield: fills `out` with new-image bytes (fewer only at the image's end) and
    /// returns how many. No allocation.
    fn fetch_yield(
        &mut self,
        applier: &mut PatchApplier,
        old: &mut dyn OldImage,
        out: &mut [u8],
    ) -> Res<usize> {
        let mut filled = 0;
        while filled < out.len() && !applier.is_done() {
            if self.need_piece {
                if self.end == self.patch.len() {
                    applier.finish()?;
                    return Err("the patch ended before the new image".into());
                }
                self.end = (self.at + PIECE).min(self.patch.len());
                self.need_piece = false;
            }
            let p = applier.feed(&self.patch[self.at..self.end], old, &mut out[filled..])?;
            self.at += p.consumed;
            filled += p.produced;
            self.need_piece = p.stop == Stop::NeedPatch;
        }
        Ok(filled)
    }
}

/// One pass over the whole patch with `applier` (reset first), each FetchYield's buffer handed
/// to `black_box` as a sink; the new image's length.
fn apply_pass(applier: &mut PatchApplier, patch: &[u8], old: &[u8], out: &mut [u8]) -> Res<u64> {
    applier.reset();
    let mut old = old;
    let mut stream = PatchStream::starting_at(patch, 0);
    while !applier.is_done() {
        let n = stream.fetch_yield(applier, &mut old, out)?;
        black_box(&out[..n]);
    }
    Ok(applier.finish()?)
}

/// What the checked pass of a patch found.
struct Checked {
    /// Allocations and bytes while the patch was applied, saved and restored (must be 0).
    allocations: usize,
    bytes: usize,
    /// `save_state`'s length halfway, and the patch offset it resumes at.
    state_len: usize,
    resume_at: u64,
    fetch_yields: usize,
}

/// Applies `patch` with the allocations counted and every FetchYield's bytes compared with
/// `new`; at the first FetchYield that ends at or past half of `new`, saves the state and goes
/// on in a second applier restored from it (`restore_in_place`), from the patch offset the
/// state names, as after a power loss. Fails on a wrong byte, a refused state or a patch left
/// unconsumed. Both appliers are made before counting starts; the progress bar must be off
/// (its ticker thread allocates).
fn checked_pass(kind: Kind, patch: &[u8], old: &[u8], new: &[u8]) -> Res<Checked> {
    let mut first = PatchApplier::new(kind.budget);
    let mut second = PatchApplier::new(kind.budget);
    let mut out = vec![0u8; BUF_LEN];
    let mut state = vec![0u8; STATE_MAX];
    let mut old_image = old;
    let before = (allocs(), allocated_bytes());
    set_counting(true);
    let walk = (|| -> Res<(usize, u64, usize)> {
        let (mut produced, mut fetch_yields) = (0usize, 0usize);
        let mut saved: Option<(usize, u64)> = None;
        let mut applier = &mut first;
        let mut stream = PatchStream::starting_at(patch, 0);
        while !applier.is_done() {
            let n = stream.fetch_yield(applier, &mut old_image, &mut out)?;
            fetch_yields += 1;
            if new.get(produced..produced + n) != Some(&out[..n]) {
                return Err(
                    format!("{}: wrong new-image bytes at {produced}", kind.label()).into(),
                );
            }
            produced += n;
            if saved.is_none() && produced * 2 >= new.len() {
                let len = applier.save_state(&mut state);
                if len == 0 || !second.restore_in_place(&state[..len]) {
                    return Err(
                        format!("{}: the state saved halfway was refused", kind.label()).into(),
                    );
                }
                saved = Some((len, second.patch_offset()));
                stream = PatchStream::starting_at(patch, second.patch_offset());
                applier = &mut second;
            }
        }
        let (state_len, resume_at) = saved.ok_or("the patch was never halfway")?;
        if applier.finish()? != new.len() as u64 || produced != new.len() {
            return Err(format!("{}: {produced} bytes of {}", kind.label(), new.len()).into());
        }
        if applier.patch_offset() != patch.len() as u64 {
            return Err(format!(
                "{}: {} of {} patch bytes consumed at the end",
                kind.label(),
                applier.patch_offset(),
                patch.len()
            )
            .into());
        }
        Ok((state_len, resume_at, fetch_yields))
    })();
    set_counting(false);
    let (allocations, bytes) = (allocs() - before.0, allocated_bytes() - before.1);
    let (state_len, resume_at, fetch_yields) = walk?;
    if allocations != 0 {
        return Err(format!(
            "{}: {allocations} allocations ({bytes} bytes) while applying the patch: the applier must not allocate after init",
            kind.label()
        )
        .into());
    }
    Ok(Checked {
        allocations,
        bytes,
        state_len,
        resume_at,
        fetch_yields,
    })
}

/// What `PatchApplier::new(budget)` allocates: (allocations, bytes).
fn heap_at_init(budget: DeltaBudget) -> (usize, usize) {
    let before = (allocs(), allocated_bytes());
    set_counting(true);
    let applier = PatchApplier::new(budget);
    set_counting(false);
    drop(black_box(applier));
    (allocs() - before.0, allocated_bytes() - before.1)
}

// ---------------------------------------------------------------------------------------------
// The section.

/// One measured row: its label and its three MB/s.
struct Row {
    label: String,
    runs: Three,
}

/// A patch of the pair and what its checked pass found.
struct Made {
    kind: Kind,
    patch_len: usize,
    checked: Checked,
}

pub struct Delta {
    detools: String,
    old_len: usize,
    new_len: usize,
    passes: usize,
    patches: Vec<Made>,
    /// memcpy, MD5, then one per patch.
    rows: Vec<Row>,
    /// (budget, allocations, bytes) of `PatchApplier::new`.
    init: Vec<(DeltaBudget, usize, usize)>,
}

/// Section 8's measurements; `Err` with why when detools is not installed (and not required).
/// `passes`: whole patches applied per run. Counts allocations: run it while no other thread
/// of the bench allocates (the caller runs it before the broker starts).
pub fn measure(passes: usize, work: &Path, c: &Campaign) -> Res<Result<Delta, String>> {
    let Some(detools) = detools_version()? else {
        return Ok(Err(
            "not run: detools is not importable by python3 (pip install detools; OTA_REQUIRE_DETOOLS=required makes this fail)"
                .into(),
        ));
    };
    let kinds = kinds();
    c.phase(
        &format!("delta: detools {detools} patches of a 1 MiB image pair"),
        kinds.len(),
    );
    let (old, new) = image_pair();
    let dir = work.join("delta");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("old.bin"), &old)?;
    std::fs::write(dir.join("new.bin"), &new)?;
    let mut patches = Vec::new();
    for kind in kinds {
        patches.push((kind, create_patch(&dir, kind)?));
        c.step();
    }
    // No progress bar while counting: its ticker thread allocates.
    c.finish();
    let budgets = [
        DeltaBudget::DEFAULT,
        DeltaBudget {
            max_window_bits: DETOOLS_MAX_WINDOW_BITS,
            ..DeltaBudget::DEFAULT
        },
        DeltaBudget {
            max_window_bits: MAX_WINDOW_BITS,
            ..DeltaBudget::DEFAULT
        },
    ];
    let init = budgets
        .iter()
        .map(|&b| {
            let (n, bytes) = heap_at_init(b);
            (b, n, bytes)
        })
        .collect();
    let mut made = Vec::new();
    for (kind, patch) in &patches {
        made.push(Made {
            kind: *kind,
            patch_len: patch.len(),
            checked: checked_pass(*kind, patch, &old, &new)?,
        });
    }

    let rows = throughput(&patches, &old, &new, passes, c)?;
    Ok(Ok(Delta {
        detools,
        old_len: old.len(),
        new_len: new.len(),
        passes,
        patches: made,
        rows,
        init,
    }))
}

/// The baselines and one apply row per patch, three runs round-robin, each run `passes` times
/// the new image: MB/s of new-image bytes.
fn throughput(
    patches: &[(Kind, Vec<u8>)],
    old: &[u8],
    new: &[u8],
    passes: usize,
    c: &Campaign,
) -> Res<Vec<Row>> {
    let mut out = vec![0u8; BUF_LEN];
    let mut appliers: Vec<PatchApplier> = patches
        .iter()
        .map(|(kind, _)| PatchApplier::new(kind.budget))
        .collect();
    let mut labels = vec![
        format!("baseline: memcpy of the new image into the {BUF_LEN}-byte buffer"),
        format!("baseline: MD5 of the new image, {BUF_LEN} bytes per update"),
    ];
    labels.extend(
        patches
            .iter()
            .map(|(kind, _)| format!("apply {}", kind.label())),
    );
    c.phase(
        &format!(
            "delta: apply throughput (3 runs of {} rows, round-robin, {passes} passes each)",
            labels.len()
        ),
        3 * labels.len(),
    );
    let total = passes * new.len();
    let mut runs = vec![Three::default(); labels.len()];
    for round in 0..3 {
        for (row, slot) in runs.iter_mut().enumerate() {
            let t = Instant::now();
            match row {
                0 => {
                    for _ in 0..passes {
                        for piece in new.chunks(BUF_LEN) {
                            out[..piece.len()].copy_from_slice(piece);
                            black_box(&out[..piece.len()]);
                        }
                    }
                }
                1 => {
                    for _ in 0..passes {
                        let mut md5 = md5::Md5::new();
                        for piece in new.chunks(BUF_LEN) {
                            md5.update(piece);
                        }
                        black_box(md5.finalize());
                    }
                }
                _ => {
                    let (kind, patch) = &patches[row - 2];
                    for _ in 0..passes {
                        let n = apply_pass(&mut appliers[row - 2], patch, old, &mut out)?;
                        if n != new.len() as u64 {
                            return Err(
                                format!("{}: {n} bytes of {}", kind.label(), new.len()).into()
                            );
                        }
                    }
                }
            }
            slot.0[round] = mb_s(total, t.elapsed().as_secs_f64());
            c.step();
        }
    }
    Ok(labels
        .into_iter()
        .zip(runs)
        .map(|(label, runs)| Row { label, runs })
        .collect())
}

fn min(t: &Three) -> f64 {
    t.0.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Section 8's lines (or the one saying why it did not run).
pub fn section(d: &Result<Delta, String>) -> Vec<String> {
    let title = "8. Delta upgrades (issue 17): detools sequential patches applied by ota::delta::PatchApplier, in memory";
    let d = match d {
        Ok(d) => d,
        Err(why) => return vec![String::new(), title.into(), format!("   {why}")],
    };
    let e = &EDITS;
    let mut out = vec![
        String::new(),
        title.into(),
        format!(
            "   old: {} bytes, firmware-like (a vocabulary of recurring sequences, zero padding, noise; fixed seed);",
            d.old_len
        ),
        format!(
            "   new: {} bytes = old with {} regions of 16-{} bytes rewritten, {} KiB of code inserted at byte {} with every",
            d.new_len,
            e.regions,
            e.region_max,
            e.inserted / 1024,
            e.inserted_at
        ),
        format!(
            "   {}th 32-bit word after it moved by its length (pointers), {} KiB appended",
            e.pointer_every,
            e.appended / 1024
        ),
        format!(
            "   patches: detools {} `{CREATE_PATCH} --compression none|heatshrink [--heatshrink-window-sz2 W --heatshrink-lookahead-sz2 {LOOKAHEAD_BITS}] old new patch`",
            d.detools
        ),
        format!("   {:<20} {:>12} {:>12}", "", "patch bytes", "patch / new"),
    ];
    for m in &d.patches {
        let note = m.kind.note();
        let line = format!(
            "   {:<20} {:>12} {:>12.4}   {}",
            m.kind.label(),
            m.patch_len,
            m.patch_len as f64 / d.new_len as f64,
            if note.is_empty() {
                String::new()
            } else {
                format!("({note})")
            }
        );
        out.push(line.trim_end().to_string());
    }
    out.extend([
        format!(
            "   apply: the patch in {PIECE}-byte pieces, each FetchYield filling a {BUF_LEN}-byte buffer (the unconsumed rest of a piece"
        ),
        "   waits for the next), the old image in memory, every buffer handed to a black_box; the baselines go over the new image's".into(),
        format!(
            "   bytes in the same {BUF_LEN}-byte buffers. MB/s of new-image bytes over {} passes per run ({} MB), 3 runs round-robin;",
            d.passes,
            d.passes * d.new_len / 1_000_000
        ),
        "   their median, min-max, and median / MD5's median (MD5: the digest the device computes over the new image anyway)".into(),
        format!(
            "   {:<66} {:>7} {:>7} {:>7} {:>7} {:>13} {:>7}",
            "", "run 1", "run 2", "run 3", "median", "min-max", "vs MD5"
        ),
    ]);
    let md5 = d.rows[1].runs.median();
    for r in &d.rows {
        let t = &r.runs;
        out.push(format!(
            "   {:<66} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>13} {:>7.3}",
            r.label,
            t.0[0],
            t.0[1],
            t.0[2],
            t.median(),
            format!("{:.1}-{:.1}", min(t), t.best()),
            t.median() / md5.max(1e-9)
        ));
    }
    out.push(format!(
        "   memory (counting allocator): PatchApplier::new, old_chunk {} (the applier itself, {} bytes, is the caller's):",
        DeltaBudget::DEFAULT.old_chunk,
        std::mem::size_of::<PatchApplier>()
    ));
    for (budget, n, bytes) in &d.init {
        let which = if *budget == DeltaBudget::DEFAULT {
            " (the default budget)"
        } else if budget.max_window_bits == MAX_WINDOW_BITS {
            " (the largest window)"
        } else {
            ""
        };
        out.push(format!(
            "   {:<46} {n} allocations, {bytes} bytes{}",
            format!("max_window_bits {}{which}", budget.max_window_bits),
            if *bytes == budget.heap_bytes() {
                " (= DeltaBudget::heap_bytes)".to_string()
            } else {
                format!(" (DeltaBudget::heap_bytes says {})", budget.heap_bytes())
            }
        ));
    }
    out.push(
        "   a whole patch applied, its state saved halfway (save_state) and resumed in a second applier (restore_in_place)".into(),
    );
    out.push(
        "   from the patch offset it names, every byte compared with the new image; allocations during it must be 0:".into(),
    );
    for m in &d.patches {
        let c = &m.checked;
        out.push(format!(
            "   {:<20} {} allocations ({} bytes) in {} FetchYields [OK]; state {} bytes ({STATE_FIXED_LEN} + window {}), resumed at patch byte {}",
            m.kind.label(),
            c.allocations,
            c.bytes,
            c.fetch_yields,
            c.state_len,
            c.state_len - STATE_FIXED_LEN,
            c.resume_at
        ));
    }
    out
}
