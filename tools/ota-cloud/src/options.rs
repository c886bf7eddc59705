//! What an upgrade is, beyond its firmware: the platform whose cloud is played ([`Protocol`]) and
//! the options of its upgrade message ([`CloudOptions`]). Apart from `cloud.rs` so the parts of
//! the cloud (packages, the message builders) can name them without depending on the cloud.

use std::fmt;
use std::str::FromStr;

use crate::delta::OldImageClaim;
use crate::sagoo::{self, SignMethod};

/// The OTA platform whose cloud side is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Aliyun,
    Sagoo,
    Tencent,
    Ucloud,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Aliyun,
        Protocol::Sagoo,
        Protocol::Tencent,
        Protocol::Ucloud,
    ];

    /// The lower-case name used on the command line and in `OTA_PROTOCOL`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Aliyun => "aliyun",
            Protocol::Sagoo => "sagoo",
            Protocol::Tencent => "tencent",
            Protocol::Ucloud => "ucloud",
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Protocol, String> {
        match s.to_ascii_lowercase().as_str() {
            "aliyun" => Ok(Protocol::Aliyun),
            "sagoo" | "sagooiot" => Ok(Protocol::Sagoo),
            "tencent" => Ok(Protocol::Tencent),
            "ucloud" => Ok(Protocol::Ucloud),
            _ => Err(format!(
                "unknown protocol {s:?} (expected aliyun, sagoo, tencent or ucloud)"
            )),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the upgrade looks like beyond the firmware itself. Each field matters to some
/// protocols only; [`CloudOptions::check`] says whether a set of options fits a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudOptions {
    /// The module to upgrade (SagooIOT, UCloud); `None` is the default module, whose name the
    /// platform leaves out of the upgrade message.
    pub module: Option<String>,
    /// The digest announced by SagooIOT (`signMethod`); default MD5.
    pub sign_method: SignMethod,
    /// SagooIOT batch id sent as `extData.strategy`, which every progress report must echo;
    /// default `Some("batch-7")`, `None` leaves it out.
    pub strategy: Option<String>,
    /// UCloud: announce this `CurrentVersion` instead of the version the device reported, to
    /// test that the device refuses a task that does not upgrade from its running version.
    pub current_version: Option<String>,
    /// A delta upgrade's old image, announced in `extData` (Aliyun, SagooIOT; the others'
    /// messages have no `extData`): the device refuses a patch for another image than its own.
    pub delta_old: Option<OldImageClaim>,
}

impl Default for CloudOptions {
    fn default() -> CloudOptions {
        CloudOptions {
            module: None,
            sign_method: SignMethod::Md5,
            strategy: Some(sagoo::DEFAULT_STRATEGY.into()),
            current_version: None,
            delta_old: None,
        }
    }
}

impl CloudOptions {
    /// `Err` names an option that `protocol` has no use for.
    pub fn check(&self, protocol: Protocol) -> Result<(), String> {
        let only = |what: &str, ok: &[Protocol]| {
            if ok.contains(&protocol) {
                Ok(())
            } else {
                let names: Vec<&str> = ok.iter().map(|p| p.name()).collect();
                Err(format!(
                    "{what} applies to {} only, not {protocol}",
                    names.join(" and ")
                ))
            }
        };
        if self.module.is_some() {
            only("a module", &[Protocol::Sagoo, Protocol::Ucloud])?;
        }
        if self.module.as_deref() == Some("") {
            return Err("the module name is empty".into());
        }
        if self.sign_method != SignMethod::Md5 {
            only("a sign method other than md5", &[Protocol::Sagoo])?;
        }
        if self.current_version.is_some() {
            only("a current version", &[Protocol::Ucloud])?;
        }
        if self.delta_old.is_some() {
            only(
                "an old image announced in extData",
                &[Protocol::Aliyun, Protocol::Sagoo],
            )?;
        }
        Ok(())
    }
}
