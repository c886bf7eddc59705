//! Firmware images and the upgrade notices that announce them.

/// A firmware image of `len` bytes, the same for the same seed (other seeds, other bytes); it
/// lives as long as the test process, as [`MemorySource`](ota::source::MemorySource) wants.
pub fn image(len: usize, seed: u8) -> &'static [u8] {
    let bytes = ota_cloud::generate_firmware_seeded(len, u64::from(seed));
    Box::leak(bytes.into_boxed_slice())
}

/// An Aliyun upgrade notice announcing `size` bytes with the MD5 `md5` at `url`, written out by
/// hand (not by the simulator that checks the device).
pub fn aliyun_notice_of(size: usize, md5: &str, url: &str, version: &str) -> String {
    format!(
        r#"{{"code":"1000","data":{{"size":{size},"version":"{version}","url":"{url}","md5":"{md5}"}},"id":1,"message":"success"}}"#
    )
}

/// An Aliyun upgrade notice for `image` at `url`.
pub fn aliyun_notice(image: &[u8], url: &str, version: &str) -> String {
    aliyun_notice_of(image.len(), &ota_cloud::md5_hex(image), url, version)
}
