//! The state of one upgrade's download, created whole when the upgrade is accepted and dropped
//! whole when the next one is, so nothing of one upgrade leaks into the next.
//!
//! Inline values only: replacing a [`Download`] allocates nothing (the engine allocates
//! nothing after init).

use std::sync::Arc;
use std::time::Instant;

use super::delta::DeltaCycle;
use super::gateway::Shelf;
use super::support::Quiet;
use crate::digest::{DigestKind, StreamDigest};
use crate::error::Error;
use crate::image::{ImagePolicy, ImageVerifier, VerifiedImage};
use crate::protocol::FailureCause;
use crate::retry::{Backoff, RetryPolicy};

/// The download of the accepted upgrade, from `accept_notice` to the next `accept_notice`
/// (reports about it may still follow its end).
pub(super) struct Download {
    /// Bytes of the image the caller has (the resume offset, then what `fetch_yield` returned).
    pub(super) fetched: u64,
    pub(super) digest: StreamDigest,
    /// Bytes the running digest covers (fetched, plus any fed by the firmware).
    pub(super) digest_bytes: u64,
    /// The image's own checks (MCUboot hash, signature, downgrade), fed the same bytes as the
    /// digest.
    pub(super) image: ImageVerifier,
    /// What the verifier found once the image passed every check.
    pub(super) image_info: Option<VerifiedImage>,
    /// Resumed from a record without the verifier's state, under a policy that asks for
    /// nothing: the image's own checks are skipped (the platform's digest decides).
    pub(super) image_unchecked: bool,
    /// Retries of this download (the policy is the session's).
    pub(super) backoff: Backoff,
    /// When the next reconnection may be attempted.
    pub(super) retry_at: Option<Instant>,
    /// When the download last delivered a byte (or connected).
    pub(super) last_progress: Instant,
    /// Times the server answered a Range request with the whole file.
    pub(super) restarts: u32,
    /// Fresh URLs asked for since the download last progressed.
    pub(super) url_requests: u32,
    /// The last `fetch_yield` returned 0: nothing yet, the SDK is still working on it.
    pub(super) last_yield_empty: bool,
    /// Things said once per upgrade (see [`Quiet`]).
    pub(super) quiet: Quiet,
    /// The last FetchYield waited its whole timeout for nothing: the next one reconnects.
    pub(super) stalled: bool,
    /// The firmware source holds the current request (see `Engine::request`).
    pub(super) source_open: bool,
    /// Bytes of a whole-file answer to a Range request still to be discarded (of the open
    /// request: `opened` sets it to 0 as each request starts).
    pub(super) skip: u64,
    /// The protocol's "download started" report went out.
    pub(super) upgrading_reported: bool,
    /// The breakpoint record already says "pending reboot" for this upgrade.
    pub(super) reboot_recorded: bool,
    /// All bytes arrived and the digest matched.
    pub(super) verified: bool,
    /// Streaming another session's kept copy of the image (its shelf, and that session's
    /// number) instead of downloading it.
    pub(super) local: Option<(Arc<Shelf>, u64)>,
    /// This download streamed (or streams) a kept image.
    pub(super) from_local: bool,
    /// The download must get one of the MQTT client's download slots before it opens the
    /// network (after a kept image failed, or a new cycle of an ended transfer).
    pub(super) needs_slot: bool,
    /// Whether this download is a delta patch, and how much of the new image the caller has.
    pub(super) delta: DeltaCycle,
    /// A patch's new image, hashed as it is handed out when the message names its SHA-256
    /// (`extData` `_delta_new_sha256`).
    pub(super) new_image_digest: StreamDigest,
    pub(super) cycle: Cycle,
}

impl Download {
    /// A download of an image of `size` bytes with a `kind` digest, from byte 0, retried by
    /// `retry`, checked under `policy`.
    pub(super) fn new(
        kind: DigestKind,
        size: u64,
        retry: RetryPolicy,
        policy: &ImagePolicy,
    ) -> Download {
        Download {
            fetched: 0,
            digest: StreamDigest::new(kind),
            digest_bytes: 0,
            image: ImageVerifier::new(policy).with_announced_size(size),
            image_info: None,
            image_unchecked: false,
            backoff: Backoff::new(retry),
            retry_at: None,
            // Set again when a request opens, before anything reads it.
            last_progress: Instant::now(),
            restarts: 0,
            url_requests: 0,
            last_yield_empty: false,
            quiet: Quiet::default(),
            stalled: false,
            source_open: false,
            skip: 0,
            upgrading_reported: false,
            reboot_recorded: false,
            verified: false,
            local: None,
            from_local: false,
            needs_slot: false,
            delta: DeltaCycle::new(false),
            new_image_digest: StreamDigest::new(DigestKind::Sha256),
            cycle: Cycle::new(),
        }
    }
}

/// What starts afresh with each cycle of a download: at `accept_notice`, and again at
/// `start_download` (Tencent's resume), which keeps the digest the firmware fed, the retry
/// count and the once-per-upgrade reports and log lines of the download.
pub(super) struct Cycle {
    /// The server's copy is larger than the announced size.
    pub(super) oversize: bool,
    /// The SDK already told the platform this upgrade failed; later reports would contradict it.
    pub(super) failure_reported: bool,
    /// What made the download fail, for failure reports that name a cause.
    pub(super) failure_cause: Option<FailureCause>,
    /// Aliyun: an expired URL waits until then for the fresh one the SDK asked for.
    pub(super) url_wait_until: Option<Instant>,
    /// The caller saw this cycle end (`is_fetch_finished` true, or `check_firmware`).
    pub(super) end_seen: bool,
    /// Why the cycle ended without a verified image; `fetch_yield` returns it from then on.
    pub(super) end_error: Option<Error>,
}

impl Cycle {
    pub(super) fn new() -> Cycle {
        Cycle {
            oversize: false,
            failure_reported: false,
            failure_cause: None,
            url_wait_until: None,
            end_seen: false,
            end_error: None,
        }
    }
}
