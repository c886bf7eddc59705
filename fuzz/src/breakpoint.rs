//! The breakpoint-record reader (`ota::resume::Breakpoint::decode` / `load`) on arbitrary
//! bytes.
//!
//! Input: a mode byte, then the record. Mode 0 decodes the bytes as they are; modes 1 and 2 take
//! them as the body of a record (padded or cut to length) and append the right CRC, so the
//! fuzzer gets past the checksum and reaches the field checks (mode 2 also writes the magic and
//! format version). In those modes, bytes past the body choose the follow-up operations.
//! A record that decodes must encode back to the same bytes, restore a usable digest, survive
//! every update the engine makes, and any bit flip or truncation of it must be rejected.
//!
//! Mode byte 0xA5 (other modes keep their meaning) fuzzes a delta tail instead
//! (`decode_tail`): a budget, a patch offset, then tail bytes whose CRC is fixed up; a tail
//! that decodes must give states that restore, at the offsets it names.

use super::input::Input;
use ota::delta::{DeltaBudget, PatchApplier};
use ota::digest::StreamDigest;
use ota::protocol::{DigestKind, Limits, UpgradeNotice};
use ota::resume::{
    crc32, Breakpoint, BreakpointStore, LoadError, MemoryStore, RebootOutcome, RecordError,
    RecordState, DELTA_RECORD_LEN, FORMAT_VERSION, MAX_PACKAGE_FILES, RECORD_LEN, TEXT_MAX,
};

const CRC_AT: usize = RECORD_LEN - 4;
const MAGIC: &[u8; 6] = b"OTABP1";

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        check_bytes(data, &mut Input::new(&[]));
        return;
    };
    if mode == 0xA5 {
        check_tail(rest);
        return;
    }
    match mode % 3 {
        0 => check_bytes(rest, &mut Input::new(&[])),
        m => {
            let (body, params) = rest.split_at(rest.len().min(CRC_AT));
            let mut record = [0u8; RECORD_LEN];
            record[..body.len()].copy_from_slice(body);
            if m == 2 {
                record[..6].copy_from_slice(MAGIC);
                record[6] = FORMAT_VERSION;
            }
            let crc = crc32(&record[..CRC_AT]);
            record[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
            check_bytes(&record, &mut Input::new(params));
        }
    }
}

fn check_bytes(bytes: &[u8], params: &mut Input<'_>) {
    let decoded = Breakpoint::decode(bytes);
    check_load(bytes, decoded.as_ref().err().copied());
    match decoded {
        Ok(bp) => check_record(bytes, &bp, params),
        Err(e) => check_error(bytes, e),
    }
}

/// What the error says about the bytes is true.
fn check_error(bytes: &[u8], e: RecordError) {
    assert!(!e.to_string().is_empty());
    match e {
        RecordError::Missing => assert!(bytes.is_empty()),
        RecordError::Torn => {
            assert!(bytes.len() < RECORD_LEN);
            assert!(MAGIC.starts_with(&bytes[..bytes.len().min(6)]));
        }
        RecordError::UnknownVersion(v) => {
            assert!(v != FORMAT_VERSION && v != 1 && v != 2 && bytes.get(6) == Some(&v));
        }
        RecordError::Corrupt => assert!(!bytes.is_empty()),
    }
}

/// Loading through a store gives what decoding gives.
fn check_load(bytes: &[u8], decode_err: Option<RecordError>) {
    let mut store = MemoryStore::default();
    // A memory store holds a record with a delta tail too.
    if bytes.len() > DELTA_RECORD_LEN {
        assert!(
            store.save(bytes).is_err(),
            "a memory store took an oversize record"
        );
        return;
    }
    store.save(bytes).expect("a record-sized save");
    assert_eq!(store.contents(), bytes);
    let loaded = Breakpoint::load(&mut store);
    match decode_err {
        None => assert!(loaded.is_ok()),
        // Longer than a record: `load` reads one byte past one and refuses it.
        Some(_) if bytes.len() > RECORD_LEN => assert!(loaded.is_err()),
        Some(e) => assert_eq!(loaded.err(), Some(LoadError::Record(e))),
    }
}

fn check_record(bytes: &[u8], bp: &Breakpoint, params: &mut Input<'_>) {
    let mut out = [0u8; RECORD_LEN];
    assert_eq!(bp.encode(&mut out), RECORD_LEN);
    let earlier = match bytes.get(6) {
        Some(&1) => Some(520),
        Some(&2) => Some(808),
        _ => None,
    };
    if let Some(crc_at) = earlier {
        // A record of an earlier build (version 1 or 2) is written back as the current version:
        // the same fields, nothing in the new ones.
        assert_eq!(bytes.len(), crc_at + 4);
        assert_eq!(out[6], FORMAT_VERSION);
        assert_eq!(&out[..6], &bytes[..6]);
        assert_eq!(
            &out[7..crc_at],
            &bytes[7..crc_at],
            "a record of an earlier version changes when rewritten"
        );
        assert!(out[crc_at..RECORD_LEN - 4].iter().all(|&b| b == 0));
        assert!(!bp.is_package(), "earlier versions name no package");
    } else {
        assert_eq!(&out[..], bytes, "a decoded record encodes differently");
    }
    assert_eq!(Breakpoint::decode(&out).as_ref(), Ok(bp));
    check_fields(bp);
    check_digest(bp, params);
    check_reboot(bp);
    check_notice(bp);
    check_updates(bp, params);
    check_damage(bytes, params);
}

fn check_fields(bp: &Breakpoint) {
    assert!(bp.size() > 0 && bp.offset() <= bp.size());
    assert!(!bp.version().is_empty());
    for s in [bp.version(), bp.module(), bp.task_id(), bp.batch()] {
        assert!(s.len() <= TEXT_MAX);
    }
    assert_eq!(bp.digest().len(), bp.digest_kind().len());
    assert!(!bp.module_name().is_empty());
    let _ = (bp.url_identity(), bp.protocol(), format!("{bp:?}"));
    match bp.state() {
        RecordState::Downloading => {
            assert_eq!(bp.pending_version(), None);
            assert_eq!(bp.boots(), 0);
        }
        RecordState::PendingReboot | RecordState::PendingConfirm => {
            assert!(bp.pending_version().is_some_and(|v| !v.is_empty()));
            assert!(
                bp.digest_state().is_empty() && bp.image_state().is_empty(),
                "a flashed image keeps a digest or image state"
            );
            assert_eq!(
                bp.boots() > 0,
                bp.state() == RecordState::PendingConfirm,
                "boots are counted only while pending confirm"
            );
        }
    }
    if let Some(v) = bp.restore_image() {
        assert_eq!(v.received(), bp.offset());
    }
    match bp.file_count() {
        0 => assert!(!bp.is_package() && bp.file_index() == 0 && bp.package_identity() == 0),
        n => assert!(
            bp.is_package() && (2..=MAX_PACKAGE_FILES).contains(&n) && bp.file_index() < n,
            "package fields out of range"
        ),
    }
    let state = bp.digest_state().len();
    assert!(state == 0 || state == StreamDigest::state_len(bp.digest_kind()));
}

/// The recorded digest state restores to a digest that works and saves back the same state.
fn check_digest(bp: &Breakpoint, params: &mut Input<'_>) {
    let Some(mut d) = bp.restore_digest() else {
        return;
    };
    assert!(!bp.digest_state().is_empty());
    assert_eq!(d.kind(), bp.digest_kind());
    let mut state = [0u8; 128];
    let n = d.save_state(&mut state);
    assert_eq!(
        &state[..n],
        bp.digest_state(),
        "a restored digest saves another state"
    );
    assert_eq!(
        StreamDigest::state_bytes(bp.digest_kind(), bp.digest_state()),
        Some(bp.offset())
    );
    // Images are at most u32::MAX bytes; far below the digests' 2^64-bit length limit, more
    // bytes may be fed.
    if bp.offset() <= u64::from(u32::MAX) {
        d.update(params.bytes(300));
    }
    let mut sum = [0u8; 32];
    assert_eq!(d.current(&mut sum), bp.digest_kind().len());
    assert!(d.save_state(&mut state) > 0);
}

fn check_reboot(bp: &Breakpoint) {
    match bp.pending_version() {
        None => assert_eq!(bp.reboot_outcome(bp.version()), None),
        Some(v) => {
            assert_eq!(bp.reboot_outcome(v), Some(RebootOutcome::Succeeded));
            let other = format!("{v}+");
            assert_eq!(bp.reboot_outcome(&other), Some(RebootOutcome::Failed));
        }
    }
}

/// The record rebuilds the upgrade it names (when the fields fit the default limits).
fn check_notice(bp: &Breakpoint) {
    let limits = Limits::default();
    let mut n = UpgradeNotice::new(&limits);
    let fits = bp.version().len() <= limits.version
        && bp.module().len() <= limits.module
        && bp.task_id().len() <= limits.task_id
        && bp.batch().len() <= limits.task_id;
    match bp.fill_notice(&mut n) {
        Ok(()) => {
            assert!(fits);
            // A package's files are not recorded: its notice cannot be rebuilt whole.
            assert_eq!(
                bp.matches(&n),
                !bp.is_package(),
                "a single image's record does not match the notice it rebuilds"
            );
            assert_eq!(
                (n.task_id.as_str(), n.batch.as_str()),
                (bp.task_id(), bp.batch())
            );
        }
        Err(e) => assert!(!fits, "fill_notice: {e}"),
    }
}

fn round_trip(bp: &Breakpoint) {
    let mut out = [0u8; RECORD_LEN];
    bp.encode(&mut out);
    assert_eq!(
        Breakpoint::decode(&out).as_ref(),
        Ok(bp),
        "an updated record"
    );
}

/// The updates the engine makes keep a record decodable.
fn check_updates(bp: &Breakpoint, params: &mut Input<'_>) {
    let offset = match params.u8() % 4 {
        0 => bp.size(),
        1 => bp.offset(),
        2 => u64::from(params.u32()),
        _ => bp.size().saturating_add(1),
    };
    let downloading = bp.state() == RecordState::Downloading;
    let kind = bp.digest_kind();
    for digest in [None, Some(kind), Some(kind), Some(other(kind))] {
        // A digest over `offset` bytes when that is cheap, else over a few.
        let fed = match usize::try_from(offset) {
            Ok(n) if n <= 4096 && params.bool() => n,
            _ => usize::from(params.u8()),
        };
        let d = digest.map(|k| {
            let mut d = StreamDigest::new(k);
            d.update(&vec![0x3c; fed]);
            d
        });
        let mut next = bp.clone();
        let r = next.set_progress(offset, d.as_ref(), None);
        let digest_ok = match digest {
            None => true,
            Some(k) => k == kind && fed as u64 == offset,
        };
        let ok = downloading && offset <= bp.size() && digest_ok;
        assert_eq!(r.is_ok(), ok, "set_progress({offset}): {r:?}");
        if ok {
            assert_eq!(next.offset(), offset);
            assert_eq!(next.digest_state().is_empty(), digest.is_none());
            round_trip(&next);
        } else {
            assert_eq!(&next, bp, "a refused update changed the record");
        }
    }
    let version = String::from_utf8_lossy(params.bytes(80)).into_owned();
    let mut next = bp.clone();
    let r = next.set_pending_reboot(&version);
    let ok = !version.is_empty() && version.len() <= TEXT_MAX;
    assert_eq!(r.is_ok(), ok, "set_pending_reboot({version:?}): {r:?}");
    if ok {
        assert_eq!(next.pending_version(), Some(version.as_str()));
        assert!(next.digest_state().is_empty());
        round_trip(&next);
    } else {
        assert_eq!(&next, bp);
    }
}

fn other(kind: DigestKind) -> DigestKind {
    match kind {
        DigestKind::Md5 => DigestKind::Sha256,
        DigestKind::Sha256 => DigestKind::Md5,
    }
}

/// A torn write or a bit error in a valid record is never trusted.
fn check_damage(bytes: &[u8], params: &mut Input<'_>) {
    let mut store = MemoryStore::default();
    store.save(bytes).expect("a record-sized save");
    let index = usize::from(params.u16()) % bytes.len();
    let mask = 1u8 << (params.u8() % 8);
    store.flip(index, mask);
    let flipped = Breakpoint::load(&mut store);
    assert!(
        matches!(
            flipped,
            Err(LoadError::Record(
                RecordError::Corrupt | RecordError::UnknownVersion(_)
            ))
        ),
        "bit {mask:#x} of byte {index} flipped: {flipped:?}"
    );
    store.flip(index, mask);
    let keep = usize::from(params.u16()) % bytes.len();
    store.truncate(keep);
    let want = if keep == 0 {
        RecordError::Missing
    } else {
        RecordError::Torn
    };
    assert_eq!(
        Breakpoint::load(&mut store).err(),
        Some(LoadError::Record(want))
    );
}

/// A delta tail after a base record of zeros: never a panic; accepted only when its states
/// restore and cover the offsets it names.
fn check_tail(data: &[u8]) {
    let mut inp = Input::new(data);
    let budget = DeltaBudget {
        max_window_bits: 4 + inp.u8() % 12,
        old_chunk: 1 + usize::from(inp.u8()),
    };
    let patch_offset = u64::from(inp.u32());
    let body = inp.rest();
    let base = [0u8; RECORD_LEN];
    let mut tail = body.to_vec();
    // The CRC over the base and the tail's body, so the fuzzer reaches the field checks.
    let mut joined = base.to_vec();
    joined.extend_from_slice(body);
    tail.extend_from_slice(&crc32(&joined).to_le_bytes());
    let Ok(t) = ota::resume::decode_tail(&base, &tail, patch_offset, budget) else {
        return;
    };
    assert!(t.delivered <= t.new_size);
    let state = PatchApplier::inspect_state(budget, t.applier_state).expect("inspected");
    assert_eq!(
        (state.consumed, state.produced, state.new_size),
        (patch_offset, t.delivered, t.new_size)
    );
    let mut applier = PatchApplier::new(budget);
    assert!(applier.restore_in_place(t.applier_state));
    assert_eq!(applier.patch_offset(), patch_offset);
    if let Some(v) = t.restore_image() {
        assert_eq!(v.received(), t.delivered);
    }
    if let Some(d) = t.restore_new_digest() {
        assert_eq!(d.kind(), DigestKind::Sha256);
    }
    // Any bit flipped is refused (the CRC), and so is any cut.
    let mut flipped = tail.clone();
    let at = tail.len() / 2;
    flipped[at] ^= 0x40;
    assert!(ota::resume::decode_tail(&base, &flipped, patch_offset, budget).is_err());
    assert!(
        ota::resume::decode_tail(&base, &tail[..tail.len() - 1], patch_offset, budget).is_err()
    );
}
