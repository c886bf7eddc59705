//! Bad delta patches and failing old-image readers through the engine (issue 17), each over real
//! HTTP (the simulator's `FirmwareServer`) to firmware written like the iotkit sample: it
//! appends what FetchYield returns, never rewinds, reports FETCH_FAILED (-2) on every return
//! ≤ 0 and leaves only on IsFetchFinish. Every refusal must end the download with
//! `Error::Delta` (C: IOT_OTAE_DELTA_REFUSED), exactly one failure report, CHECK_FIRMWARE 0,
//! and nothing handed out that is not the new image's next byte or past its size.
//!
//! Announced digests are those of the bytes served, so the platform's digest passes and only
//! the applier can catch the fault. Not repeated here (tests/delta_upgrade.rs has them): a
//! patch made for a larger old image (a diff run past the old image's end), and a corrupted
//! patch announced with the good patch's digest.

mod common;

use common::delta::{aliyun_device, fixture, leaked, sample, DeltaSource, Sampled, SLOT};
use common::recorder::{failure_reports, Sent};
use ota::delta::{DeltaBudget, DeltaError, OldImage, OldReadError};
use ota::ota::DeltaOptions;
use ota::{Error, OtaSession};
use ota_cloud::FirmwareServer;

/// A device on Aliyun with `old` as its delta source, told to upgrade to `served` (served
/// as it is, announced with its own MD5).
fn device(
    served: &[u8],
    old: Box<dyn OldImage + Send>,
    options: DeltaOptions,
) -> (OtaSession, Sent, FirmwareServer) {
    let server = FirmwareServer::start(served.to_vec()).unwrap();
    // The running image's digest is declared, so the SDK does not read the old image at
    // set_delta_source (tests/delta_old_image.rs covers that read): the readers here misbehave
    // while the patch is applied. No message here names an old image, so it is never compared.
    let options = DeltaOptions {
        old_sha256: options.old_sha256.or(Some([0; 32])),
        ..options
    };
    let source = DeltaSource {
        image: old,
        options,
    };
    let (session, sent) = aliyun_device(&server, served, Some(source));
    (session, sent, server)
}

/// `old` in memory, as a delta source's image.
fn in_memory(old: &[u8]) -> Box<dyn OldImage + Send> {
    Box::new(leaked(old))
}

/// The checks every refused patch shares: the download ended with `Error::Delta` matching
/// `want` (and no other error before it), one failure report containing `desc`, no valid
/// verdict, no more bytes stored than the new image has (all of them when only the patch's
/// end is bad: the image bytes made before a refusal are handed out, the refusal comes with
/// the next call), and (`Some(new)`, when the patch is good up to where it is refused) those
/// bytes are the new image's first ones.
fn assert_refused(
    what: &str,
    s: &OtaSession,
    sent: &Sent,
    out: &Sampled,
    new: Option<&[u8]>,
    desc: &str,
    want: impl Fn(&DeltaError) -> bool,
) {
    assert!(!out.valid, "{what}: a refused patch is never valid");
    assert!(s.is_fetch_finished() && !s.is_fetching(), "{what}");
    match out.errors.first() {
        Some(Error::Delta(e)) if want(e) => {}
        other => panic!("{what}: first error {other:?}, all {:?}", out.errors),
    }
    assert!(
        matches!(s.last_error(), Some(Error::Delta(e)) if want(&e)),
        "{what}: last error {:?}",
        s.last_error()
    );
    let failures = failure_reports(sent);
    assert_eq!(failures.len(), 1, "{what}: {failures:?}");
    assert!(
        failures[0].contains(desc),
        "{what}: report {:?} lacks {desc:?}",
        failures[0]
    );
    assert!(
        (out.stored.len() as u64) <= s.file_size(),
        "{what}: {} bytes stored of a {}-byte image",
        out.stored.len(),
        s.file_size()
    );
    if let Some(new) = new {
        assert!(
            out.stored[..] == new[..out.stored.len()],
            "{what}: {} bytes stored that are not the new image's first",
            out.stored.len()
        );
    }
}

#[test]
fn a_truncated_patch_served_and_announced_as_it_is_fails_once() {
    let new = fixture("inserted-block.new");
    for (compression, cuts) in [
        // In the compressed stream's first run, mid-way, and a dozen bytes before the end.
        ("heatshrink", &[20usize, 300, 600][..]),
        // Inside the diff, inside the inserted block (extra), just before the end.
        ("none", &[10, 3000, 6700][..]),
    ] {
        let patch = fixture(&format!("inserted-block.{compression}.patch"));
        for &cut in cuts {
            for buf_len in [1, 5000] {
                let what = format!("{compression} cut at {cut}, {buf_len}-byte calls");
                let served = &patch[..cut];
                let (s, sent, _server) = device(
                    served,
                    in_memory(&fixture("inserted-block.old")),
                    DeltaOptions::for_slot(SLOT),
                );
                let out = sample(&s, buf_len);
                assert_refused(&what, &s, &sent, &out, Some(&new), "ends before", |e| {
                    matches!(e, DeltaError::Truncated { new_size: 6700, .. })
                });
                assert_eq!(s.file_size(), new.len() as u64, "{what}: FILE_SIZE");
            }
        }
    }
}

#[test]
fn a_corrupted_heatshrink_stream_with_its_own_digest_is_refused_by_the_applier() {
    // Bytes of inserted-block.heatshrink.patch (612 bytes; header 3 bytes, then the heatshrink
    // stream) flipped with 0xff, chosen by what the applier makes of them. Not every corruption
    // is detectable: a detools patch carries no digest of the new image, so most flips in
    // literal data make another image of the right size, which only the image's own checks
    // (signature, hash TLV) can refuse (docs/delta.md, "The old image's requirement").
    let patch = fixture("inserted-block.heatshrink.patch");
    let new = fixture("inserted-block.new");
    type Check = fn(&DeltaError) -> bool;
    let cases: [(usize, &str, Check); 5] = [
        (4, "malformed", |e| {
            matches!(
                e,
                DeltaError::BadSize { .. } | DeltaError::DataFormat { .. }
            )
        }),
        (8, "malformed", |e| {
            matches!(e, DeltaError::Oversize { new_size: 6700, .. })
        }),
        (19, "does not fit the running image", |e| {
            matches!(e, DeltaError::OldRange { old_size: 6000, .. })
        }),
        (209, "ends before", |e| {
            matches!(e, DeltaError::Truncated { new_size: 6700, .. })
        }),
        (609, "malformed", |e| {
            matches!(e, DeltaError::TrailingData { .. })
        }),
    ];
    for (at, desc, want) in cases {
        for buf_len in [7, 5000] {
            let what = format!("byte {at} flipped, {buf_len}-byte calls");
            let mut served = patch.clone();
            served[at] ^= 0xff;
            let (s, sent, _server) = device(
                &served,
                in_memory(&fixture("inserted-block.old")),
                DeltaOptions::for_slot(SLOT),
            );
            let out = sample(&s, buf_len);
            // Bytes made before the applier meets the corruption may already differ from the
            // new image (the corruption changed them): CHECK_FIRMWARE 0 is what tells.
            assert_refused(&what, &s, &sent, &out, None, desc, want);
            assert_eq!(s.file_size(), new.len() as u64, "{what}: FILE_SIZE");
        }
    }
}

/// A size field as detools writes it: bit 7 "more", bit 6 "negative" and six bits first, then
/// seven bits a byte.
fn size_field(v: i64) -> Vec<u8> {
    let mut m = v.unsigned_abs();
    let mut first = (m & 0x3f) as u8;
    if v < 0 {
        first |= 0x40;
    }
    m >>= 6;
    let mut out = vec![first];
    while m > 0 {
        *out.last_mut().unwrap() |= 0x80;
        out.push((m & 0x7f) as u8);
        m >>= 7;
    }
    out
}

/// An uncompressed sequential patch making `2 * run` bytes: a diff of `run` zero bytes (the
/// old image's first bytes), no extra, a seek of `seek`, then another such diff.
fn seeking_patch(run: usize, seek: i64) -> Vec<u8> {
    let mut p = vec![0x00];
    p.extend(size_field(2 * run as i64));
    p.push(0); // data-format size
    for adjustment in [seek, 0] {
        p.extend(size_field(run as i64));
        p.extend(std::iter::repeat_n(0u8, run));
        p.extend(size_field(0)); // extra
        p.extend(size_field(adjustment));
    }
    p
}

#[test]
fn a_seek_outside_the_old_image_is_refused() {
    let old = fixture("small-change.old");
    let run = 100;
    // Before the image's start; past its end (delta_upgrade.rs has a diff run past the end).
    for seek in [-1000i64, 10_000] {
        let what = format!("seek {seek}");
        let patch = seeking_patch(run, seek);
        let (s, sent, _server) = device(&patch, in_memory(&old), DeltaOptions::for_slot(SLOT));
        let out = sample(&s, 5000);
        let new: Vec<u8> = old[..run].iter().chain(&old[..run]).copied().collect();
        assert_refused(
            &what,
            &s,
            &sent,
            &out,
            Some(&new),
            "does not fit the running image",
            |e| {
                matches!(
                    e,
                    DeltaError::OldRange {
                        len: 0,
                        old_size: 6000,
                        ..
                    }
                )
            },
        );
    }
    // The same patch with a seek inside the image is applied: the refusal is the seek's.
    let patch = seeking_patch(run, -(run as i64));
    let (s, sent, _server) = device(&patch, in_memory(&old), DeltaOptions::for_slot(SLOT));
    let out = sample(&s, 5000);
    assert!(out.valid && out.errors.is_empty() && failure_reports(&sent).is_empty());
    assert!(out.stored[..run] == old[..run] && out.stored[run..] == old[..run]);
}

#[test]
fn a_patch_naming_a_new_image_larger_than_the_slot_is_handed_out_as_a_plain_image() {
    // What the code does (DeltaOptions::max_new_size: "a header naming more is not taken for a
    // patch"; docs/delta.md, "Recognising a patch", option (a)): the download is not taken for
    // a patch, so the firmware gets the bytes as they came, the platform's digest (of those
    // bytes) passes, and there is no delta error. The image's own checks are what would refuse
    // it as firmware.
    let patch = fixture("inserted-block.heatshrink.patch");
    let (s, sent, _server) = device(
        &patch,
        in_memory(&fixture("inserted-block.old")),
        DeltaOptions::for_slot(6699),
    );
    let out = sample(&s, 5000);
    assert!(out.stored == patch, "the patch's bytes, as served");
    assert_eq!(
        s.file_size(),
        patch.len() as u64,
        "FILE_SIZE is the download's"
    );
    assert!(out.errors.is_empty() && failure_reports(&sent).is_empty());
    assert!(
        out.valid,
        "the platform's digest is the only check, and it passes"
    );

    // One byte more of slot and the same download is a patch.
    let (s, sent, _server) = device(
        &patch,
        in_memory(&fixture("inserted-block.old")),
        DeltaOptions::for_slot(6700),
    );
    let out = sample(&s, 5000);
    assert!(out.stored == fixture("inserted-block.new") && out.valid);
    assert!(out.errors.is_empty() && failure_reports(&sent).is_empty());
}

#[test]
fn a_heatshrink_patch_with_a_window_over_the_budget_is_refused() {
    // IOT_OTA_SetDeltaSource: "A patch that ... needs a heatshrink window over 4 KiB ... ends
    // the download with IOT_OTAE_DELTA_REFUSED and one failure report". detools' default
    // window is 2^8; a budget of 2^7 is under it.
    let patch = fixture("inserted-block.heatshrink.patch");
    let new = fixture("inserted-block.new");
    let options = DeltaOptions {
        budget: DeltaBudget {
            max_window_bits: 7,
            ..DeltaBudget::DEFAULT
        },
        max_new_size: SLOT,
        old_sha256: None,
    };
    let (s, sent, _server) = device(&patch, in_memory(&fixture("inserted-block.old")), options);
    let out = sample(&s, 5000);
    assert_refused(
        "window 2^8, budget 2^7",
        &s,
        &sent,
        &out,
        Some(&new),
        "delta patch",
        |e| {
            matches!(
                e,
                DeltaError::WindowOverBudget {
                    window_bits: 8,
                    max_window_bits: 7
                }
            )
        },
    );
}

/// How a test's old-image reader misbehaves.
#[derive(Clone, Copy, Debug)]
enum Misread {
    /// The `n`-th read (from 1) fails with this code.
    Fails(u32, i32),
    /// The `n`-th read returns one byte less than asked (the bytes it wrote are right).
    Short(u32),
}

/// The old image in memory, read through a reader that misbehaves once.
struct FaultyOld {
    image: &'static [u8],
    reads: u32,
    misread: Misread,
}

impl FaultyOld {
    /// inserted-block.old, read through a reader that misbehaves as `misread` says.
    fn inserted_block(misread: Misread) -> Box<dyn OldImage + Send> {
        Box::new(FaultyOld {
            image: leaked(&fixture("inserted-block.old")),
            reads: 0,
            misread,
        })
    }
}

impl OldImage for FaultyOld {
    fn size(&self) -> u64 {
        self.image.len() as u64
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, OldReadError> {
        self.reads += 1;
        let at = offset as usize;
        buf.copy_from_slice(&self.image[at..at + buf.len()]);
        match self.misread {
            Misread::Fails(n, code) if n == self.reads => Err(OldReadError { code }),
            Misread::Short(n) if n == self.reads => Ok(buf.len() - 1),
            _ => Ok(buf.len()),
        }
    }
}

#[test]
fn an_old_image_reader_that_fails_or_reads_short_ends_the_download_once() {
    let new = fixture("inserted-block.new");
    for compression in ["heatshrink", "none"] {
        let patch = fixture(&format!("inserted-block.{compression}.patch"));
        for misread in [
            Misread::Fails(1, -5),
            Misread::Fails(4, -7),
            Misread::Short(1),
            Misread::Short(4),
        ] {
            for buf_len in [100, 5000] {
                let what = format!("{compression}, {misread:?}, {buf_len}-byte calls");
                let reader = FaultyOld::inserted_block(misread);
                let (s, sent, _server) = device(&patch, reader, DeltaOptions::for_slot(SLOT));
                let out = sample(&s, buf_len);
                let desc = "the old image could not be read";
                match misread {
                    Misread::Fails(_, code) => assert_refused(
                        &what,
                        &s,
                        &sent,
                        &out,
                        Some(&new),
                        desc,
                        |e| matches!(e, DeltaError::OldRead { code: c, .. } if *c == code),
                    ),
                    Misread::Short(_) => assert_refused(
                        &what,
                        &s,
                        &sent,
                        &out,
                        Some(&new),
                        desc,
                        |e| matches!(e, DeltaError::OldShort { wanted, got, .. } if *got + 1 == *wanted),
                    ),
                }
            }
        }
    }
}

#[test]
fn a_refused_patch_leaves_nothing_behind_for_the_next_upgrade() {
    // The first download is refused while patch bytes wait in the patch buffer (the reader's
    // first read fails); the platform then sends the upgrade again. The second download must
    // start from its own first byte: a patch, applied whole, valid.
    let new = fixture("inserted-block.new");
    for compression in ["none", "heatshrink"] {
        let patch = fixture(&format!("inserted-block.{compression}.patch"));
        let reader = FaultyOld::inserted_block(Misread::Fails(1, -1));
        let (s, sent, server) = device(&patch, reader, DeltaOptions::for_slot(SLOT));
        let out = sample(&s, 5000);
        assert_refused(
            compression,
            &s,
            &sent,
            &out,
            Some(&new),
            "could not be read",
            |e| matches!(e, DeltaError::OldRead { .. }),
        );
        let notice = common::firmware::aliyun_notice(&patch, &server.url(), "3.0.0");
        s.handle_message(s.downstream_topic(), notice.as_bytes())
            .unwrap();
        assert!(s.is_fetching(), "{compression}: the second upgrade starts");
        let again = sample(&s, 5000);
        assert!(again.errors.is_empty(), "{compression}: {:?}", again.errors);
        assert!(
            again.stored == new,
            "{compression}: the second download made {} bytes that are not the new image",
            again.stored.len()
        );
        assert!(again.valid, "{compression}");
        assert_eq!(failure_reports(&sent).len(), 1, "no second failure report");
    }
}
