//! The cloud's own moves during a run, tied to the download: once the firmware server has sent
//! a given share of the image, announce the same upgrade again (`--renotify-at`) or a different
//! one that supersedes it (`--supersede-at`).
//!
//! The share is counted by the server (bytes of the image written to sockets, over all
//! responses; [`FirmwareServer::on_image_sent`]), and the response that reaches it waits until
//! the broker has routed the announcement ([`Trigger::fire`]): the device has the message by
//! the time it can read the next byte, whatever the timing of the run.

use std::sync::Arc;

use crate::cloud::{Announcement, Cloud};
use crate::console;
use crate::http::FirmwareServer;
use crate::platform::Firmware;
use crate::{generate_firmware_seeded, NEXT_FIRMWARE_SEED};

/// The file name the superseding image is served under, next to [`crate::http::FILE_NAME`].
pub const NEXT_FILE_NAME: &str = "firmware-next.bin";

/// What the cloud announces on its own during a run; nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Milestones {
    /// `--supersede-at PERCENT[:VERSION]`.
    pub supersede: Option<Supersede>,
    /// `--renotify-at PERCENT`: announce the same upgrade again (same URL, version, digest,
    /// size) once PERCENT % of the image has been sent.
    pub renotify_at: Option<u8>,
}

/// Once `percent` % of the image has been sent, a different upgrade (another image of the same
/// size, at its own URL, with its own digest) supersedes the first and becomes the run's
/// target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Supersede {
    pub percent: u8,
    /// The new upgrade's version; `None` is the first one's with `.1` appended.
    pub version: Option<String>,
}

/// Parses a percentage `0`..=`100`.
pub fn parse_percent(v: &str) -> Result<u8, String> {
    match v.trim().parse::<u8>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{v:?} is not a percentage 0..100")),
    }
}

impl Supersede {
    /// Parses `PERCENT[:VERSION]`.
    pub fn parse(v: &str) -> Result<Supersede, String> {
        let (percent, version) = match v.split_once(':') {
            Some((p, "")) => return Err(format!("{p}: an empty VERSION")),
            Some((p, ver)) => (p, Some(ver.to_string())),
            None => (v, None),
        };
        Ok(Supersede {
            percent: parse_percent(percent)?,
            version,
        })
    }
}

/// The upgrade that supersedes the first one.
#[derive(Debug, Clone)]
pub struct NextUpgrade {
    pub firmware: Firmware,
    pub image: Arc<[u8]>,
}

/// The superseding image for `image`: the same size, other bytes (deterministic, so another
/// process can regenerate it).
pub fn next_image(image: &[u8]) -> Vec<u8> {
    generate_firmware_seeded(image.len(), NEXT_FIRMWARE_SEED)
}

/// Bytes of an image of `size` bytes that make `percent` % of it.
pub fn bytes_at(size: u64, percent: u8) -> u64 {
    size * u64::from(percent) / 100
}

impl Milestones {
    pub fn is_empty(&self) -> bool {
        self.supersede.is_none() && self.renotify_at.is_none()
    }

    /// Sets the milestones up for a run of `cloud` offering `firmware` from `server`: serves
    /// the superseding image (returned) and hooks the announcements to the server's count of
    /// bytes sent. `Err` when no different upgrade can be made (an empty image, or the same
    /// version).
    pub fn install(
        &self,
        cloud: &Cloud,
        server: &FirmwareServer,
        firmware: &Firmware,
    ) -> Result<Option<NextUpgrade>, String> {
        let size = server.image().len() as u64;
        if let Some(percent) = self.renotify_at {
            let trigger = cloud.trigger(Announcement::Again);
            server.on_image_sent(bytes_at(size, percent), move |sent| {
                console::say(&format!(
                    "cloud: {sent} bytes of the image sent ({percent} %): announcing it again"
                ));
                trigger.fire();
            });
        }
        let Some(supersede) = &self.supersede else {
            return Ok(None);
        };
        let version = supersede
            .version
            .clone()
            .unwrap_or_else(|| format!("{}.1", firmware.version));
        if version == firmware.version {
            return Err(format!(
                "the superseding upgrade needs a version other than {version}"
            ));
        }
        let image: Arc<[u8]> = next_image(server.image()).into();
        if image == *server.image() {
            return Err(format!(
                "no different image of {size} bytes to supersede the first with"
            ));
        }
        let url = server
            .add_image(NEXT_FILE_NAME, Arc::clone(&image))
            .map_err(|e| format!("cannot serve the superseding image: {e}"))?;
        let next = Firmware::new(version, url, &image);
        let trigger = cloud.trigger(Announcement::Supersede(next.clone()));
        let percent = supersede.percent;
        server.on_image_sent(bytes_at(size, percent), move |sent| {
            console::say(&format!(
                "cloud: {sent} bytes of the image sent ({percent} %): superseding it"
            ));
            trigger.fire();
        });
        Ok(Some(NextUpgrade {
            firmware: next,
            image,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_parse() {
        assert_eq!(
            Supersede::parse("50"),
            Ok(Supersede {
                percent: 50,
                version: None
            })
        );
        assert_eq!(
            Supersede::parse("0:3.0"),
            Ok(Supersede {
                percent: 0,
                version: Some("3.0".into())
            })
        );
        for bad in ["", "101", "-1", "x", "50:", "5.5"] {
            assert!(Supersede::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_percent("100"), Ok(100));
        assert!(parse_percent("1000").is_err());
    }

    #[test]
    fn the_next_image_differs_and_has_the_same_size() {
        let first = crate::generate_firmware(4096);
        let next = next_image(&first);
        assert_eq!(next.len(), first.len());
        assert_ne!(next, first);
        assert_eq!(next, next_image(&first));
        assert_eq!(bytes_at(50_000, 50), 25_000);
        assert_eq!(bytes_at(3, 50), 1);
    }
}
