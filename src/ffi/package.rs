//! Packages of several files (SagooIOT and Aliyun `files`) through `IOT_OTA_Ioctl`: enabling
//! them, and which file the current cycle fetches. Over [`crate::ota::OtaSession::set_max_files`]
//! and the file queries. The firmware walks a package with the v2.3 loop, once per file:
//!
//! ```c
//! uint32_t count = 1, index = 0;
//! do {
//!     while (!IOT_OTA_IsFetching(h)) IOT_MQTT_Yield(pclient, 200);
//!     IOT_OTA_Ioctl(h, IOT_OTAG_FILE_COUNT, &count, 4);
//!     IOT_OTA_Ioctl(h, IOT_OTAG_FILE_INDEX, &index, 4);
//!     IOT_OTA_Ioctl(h, IOT_OTAG_FILE_NAME, name, sizeof name);   // where the file goes
//!     while (!IOT_OTA_IsFetchFinish(h)) { n = IOT_OTA_FetchYield(h, buf, len, 1); ... }
//!     IOT_OTA_Ioctl(h, IOT_OTAG_CHECK_FIRMWARE, &valid, 4);      // per file
//! } while (valid && index + 1 < count);
//! ```

use std::ffi::c_int;

use super::answer::{get_u32, put_u32, too_small};
use super::guard::put_c_str;
use super::ota::{reject, reject_saying, IOT_OTA_CmdType_t, OtaHandle};
use crate::error::Error;
use crate::mqtt_source::MqttBlockSource;
use crate::source::MqttDownloadConfig;

/// Query, `uint32_t`: files of the accepted upgrade (1 for a single image).
pub const IOT_OTAG_FILE_COUNT: IOT_OTA_CmdType_t = 33;
/// Query, `uint32_t`: the file the current cycle fetches, from 0. IOT_OTAG_FILE_SIZE,
/// IOT_OTAG_MD5SUM, IOT_OTAG_SHA256SUM, IOT_OTAG_SIGN_METHOD and IOT_OTAG_CHECK_FIRMWARE answer
/// for this file; IOT_OTA_ReportProgress takes its percent and reports the package's
/// byte-weighted progress. After a restart with a breakpoint store, the package resumes in the
/// file it stopped in (the files before it were judged good before the restart), at
/// IOT_OTAG_FETCHED_SIZE within that file.
pub const IOT_OTAG_FILE_INDEX: IOT_OTA_CmdType_t = 34;
/// Query, text: the current file's name in the package ("" for a single image).
pub const IOT_OTAG_FILE_NAME: IOT_OTA_CmdType_t = 35;
/// Configuration, `uint32_t` 0..=16, before the first upgrade: accept packages of up to that
/// many files (SagooIOT, Aliyun). 0, the default, refuses them (with a failure report), because
/// firmware that does not walk files would take the first file for the whole upgrade. Each file
/// slot costs about 6 KB (a URL's room in the three notices a handle keeps).
/// IOT_OTAE_INVALID_PARAM above 16 or on Tencent/UCloud; IOT_OTAE_INVALID_STATE once an upgrade
/// was accepted.
pub const IOT_OTAC_MAX_FILES: IOT_OTA_CmdType_t = 36;
/// Configuration, `uint32_t` bytes, before the first upgrade: download over MQTT (SagooIOT and
/// Aliyun `dProtocol` "mqtt") in blocks of that size, requested on
/// `/sys/{pk}/{dn}/thing/file/download` of this handle's MQTT connection (no other connection;
/// IOT_MQTT_Yield or FetchYield carries the replies). Allocates the block buffer and subscribes
/// the reply topic now; 0, the default, turns it off, and such upgrades are refused with a
/// failure report. The Link SDK's block is 5120 bytes. IOT_OTAE_INVALID_PARAM on Tencent/UCloud,
/// or when a block's reply frame (the block, about 512 bytes of header, the topic) would not fit
/// the connection's `read_buf_size` (the log names the largest block that fits);
/// IOT_OTAE_INVALID_STATE once an upgrade was accepted.
pub const IOT_OTAC_MQTT_BLOCK_SIZE: IOT_OTA_CmdType_t = 37;

/// Whether `kind` is one of this file's Ioctl types.
pub(crate) fn is_package_ioctl(kind: c_int) -> bool {
    (IOT_OTAG_FILE_COUNT..=IOT_OTAC_MQTT_BLOCK_SIZE).contains(&kind)
}

/// Answers one of this file's Ioctl types.
pub(crate) fn ioctl(h: &OtaHandle, kind: c_int, buf: &mut [u8]) -> c_int {
    let s = h.ota_session();
    match kind {
        IOT_OTAG_FILE_COUNT => put_u32(h, buf, s.file_count() as u64),
        IOT_OTAG_FILE_INDEX => put_u32(h, buf, s.file_index() as u64),
        IOT_OTAG_FILE_NAME => {
            let buf_len = buf.len();
            // Written under the session lock; a too-small buffer is recorded after it (recording
            // takes the lock again).
            let missing =
                s.with_file_name(|name| (!put_c_str(buf, name.as_bytes())).then_some(name.len()));
            match missing {
                None => 0,
                Some(len) => too_small(h, buf_len, len),
            }
        }
        IOT_OTAC_MAX_FILES => match get_u32(h, buf) {
            Ok(n) => match s.set_max_files(n as usize) {
                Ok(()) => 0,
                Err(e) => reject(h, "IOT_OTA_Ioctl(IOT_OTAC_MAX_FILES)", e),
            },
            Err(code) => code,
        },
        _ => match get_u32(h, buf) {
            Ok(n) => set_mqtt_block_size(h, n),
            Err(code) => code,
        },
    }
}

/// IOT_OTAC_MQTT_BLOCK_SIZE: `size` 0 turns download over MQTT off, else on in such blocks.
fn set_mqtt_block_size(h: &OtaHandle, size: u32) -> c_int {
    const WHAT: &str = "IOT_OTA_Ioctl(IOT_OTAC_MQTT_BLOCK_SIZE)";
    let s = h.ota_session();
    let Some(mqtt) = h.mqtt_client() else {
        return reject(
            h,
            WHAT,
            Error::InvalidParam("the handle has no MQTT connection"),
        );
    };
    if size == 0 {
        return match s.disable_mqtt_download() {
            Ok(()) => 0,
            Err(e) => reject(h, WHAT, e),
        };
    }
    let config = MqttDownloadConfig {
        block_size: size,
        ..MqttDownloadConfig::default()
    };
    match s.enable_mqtt_download(mqtt, config) {
        Ok(()) => 0,
        Err(e) => {
            let largest = MqttBlockSource::largest_block(mqtt, s.product_key(), s.device_name());
            if size <= largest {
                return reject(h, WHAT, e);
            }
            // The log line names the largest block that fits.
            let detail = format_args!(" ({size} bytes asked, at most {largest})");
            reject_saying(h, WHAT, e, detail)
        }
    }
}
