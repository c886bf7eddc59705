//! A session's side of its client's [`Gateway`]: whether its download may start now and from
//! where (the network, or another session's kept image), what it does when a kept image fails,
//! and the session API for gateways. The shared state itself is in `gateway.rs`.

use std::fmt::Write as _;

use super::gateway::{self, ImageId, Membership, Start};
use super::support::{DescText, Once};
use super::{Engine, Gateway, LocalImage, OtaSession, OtaState, Waiting};
use crate::error::{Error, Result};
use crate::log::Level;
use crate::ota_log;
use crate::protocol::{FailureCause, Report};

impl Engine {
    /// Starts the accepted upgrade's download if the sessions on the MQTT client let it: from
    /// the network, or from another session's kept copy of the same image.
    pub(super) fn try_start(&mut self) {
        let start = match &self.member {
            Some(member) => member.request_start(ImageId::of(&self.notice)),
            None => Start::Network,
        };
        match start {
            Start::Wait(why) => {
                if self.waiting != why {
                    ota_log!(
                        Level::Info,
                        "upgrade to {} waits: {}",
                        self.notice.version,
                        gateway::describe(why)
                    );
                }
                self.waiting = why;
                return;
            }
            Start::Local { shelf, holder } => {
                ota_log!(
                    Level::Info,
                    "upgrade to {}: streaming the image session #{holder} keeps instead of downloading it",
                    self.notice.version
                );
                self.download.local = Some((shelf, holder));
                self.download.from_local = true;
            }
            Start::Network => {}
        }
        self.waiting = Waiting::No;
        self.state = OtaState::Downloading;
        self.resume_from_record();
    }

    /// A different upgrade replaces the one waiting to start (which the platform is told
    /// failed, once: it was acknowledged but never downloaded).
    pub(super) fn replace_waiting(&mut self) {
        if let Some(member) = &self.member {
            member.cancel();
        }
        std::mem::swap(&mut self.notice, &mut self.scratch);
        let mut text = DescText::new();
        let _ = write!(text, "superseded by the upgrade to {}", self.notice.version);
        ota_log!(
            Level::Warning,
            "upgrade to {} replaces the waiting upgrade to {}",
            self.notice.version,
            self.scratch.version
        );
        let r = self.out.send(Report::Failure {
            cause: FailureCause::UpgradeFailed,
            desc: text.as_str(),
            notice: &self.scratch,
        });
        if let Err(e) = r {
            ota_log!(Level::Warning, "failure report not sent: {e}");
        }
        self.accept_notice();
    }

    /// Another session's kept image could not be streamed: the download goes on from the
    /// network at the same offset (a slot first), said once. Nothing of the kept image was
    /// handed out unless all of it matched the digest.
    pub(super) fn local_failed(&mut self, why: &'static str) {
        let Some((_, holder)) = self.download.local.take() else {
            return;
        };
        if why == gateway::LOCAL_MISMATCH {
            if let Some(member) = &self.member {
                member.image_unusable(holder);
            }
        }
        if self.download.quiet.first(Once::LocalFallback) {
            ota_log!(
                Level::Warning,
                "{why} (session #{holder}): downloading {} from the network at byte {}",
                self.notice.version,
                self.download.fetched
            );
        }
        self.download.from_local = false;
        self.download.needs_slot = self.member.is_some();
        self.abandon_request();
    }

    /// Tells the gateway the download's transfer ended (no-op for a session not attached).
    pub(super) fn transfer_ended(&mut self, verified: bool) {
        if let Some(member) = &self.member {
            member.transfer_ended(verified);
        }
    }
}

impl OtaSession {
    /// Joins the sessions sharing this MQTT client (`attach`): [`Error::TooManySessions`]
    /// beyond [`MAX_SESSIONS_PER_CLIENT`].
    pub(crate) fn join(&self, gateway: &Gateway) -> Result<()> {
        let member = gateway.0.join()?;
        self.engine().member = Some(member);
        Ok(())
    }

    /// The sessions sharing this session's MQTT client (None: not attached to one).
    pub fn gateway(&self) -> Option<Gateway> {
        self.engine().member.as_ref().map(Membership::gateway)
    }

    /// Declares that the firmware keeps each image this session verifies and reads it back
    /// through `image`: other sessions on the same MQTT client told to fetch the same image
    /// (same size and digest) stream it from there instead of downloading it again, and wait
    /// for this session's download of it rather than download it in parallel. The image is
    /// offered from [`check_firmware`](Self::check_firmware) true until this session accepts
    /// another upgrade (which then waits until every reader has finished), the source is
    /// withdrawn, or the session is dropped. [`Error::InvalidState`] for a session not
    /// attached to an MQTT client.
    pub fn set_local_image_source(&self, image: Box<dyn LocalImage>) -> Result<()> {
        self.set_source(Some(image))
    }

    /// Withdraws the source set by [`set_local_image_source`](Self::set_local_image_source)
    /// (after a read in progress ends); sessions reading the image go on from the network.
    pub fn withdraw_local_image_source(&self) -> Result<()> {
        self.set_source(None)
    }

    fn set_source(&self, image: Option<Box<dyn LocalImage>>) -> Result<()> {
        let e = self.engine();
        let Some(member) = e.member.as_ref() else {
            return Err(Error::InvalidState(
                "the session is not attached to an MQTT client",
            ));
        };
        let (group, id) = member.detached();
        // The reader is swapped without the engine's lock (a read may be in progress).
        drop(e);
        group.set_source(id, image);
        Ok(())
    }

    /// Why the accepted upgrade has not started ([`OtaState::Waiting`]); [`Waiting::No`] in
    /// every other state.
    pub fn waiting(&self) -> Waiting {
        let e = self.engine();
        match e.state {
            OtaState::Waiting => e.waiting,
            _ => Waiting::No,
        }
    }

    /// Whether the current (or last) download streams another session's kept image rather
    /// than the network (false again once it fell back to the network).
    pub fn from_local_image(&self) -> bool {
        self.engine().download.from_local
    }
}
