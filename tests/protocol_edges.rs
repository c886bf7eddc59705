//! Protocol details the other suites do not reach: SagooIOT's `extData` given as a string that
//! does not fit, and the fixed-capacity string's capacity and swap.

use ota::protocol::{decode, FixedStr, Limits, NoticeError, UpgradeNotice};
use ota::Protocol;

#[test]
fn sagoo_ext_data_as_a_string_must_fit_its_limit() {
    let limits = Limits {
        ext_data: 16,
        ..Limits::default()
    };
    let mut notice = UpgradeNotice::new(&limits);
    let msg = |ext: &str| {
        format!(
            r#"{{"code":"200","data":{{"size":10,"version":"2.0","url":"http://h/f.bin","sign":"{}","signMethod":"MD5","extData":"{ext}"}},"id":"1","message":"success"}}"#,
            "0".repeat(32)
        )
    };
    // 16 bytes once unescaped: fits exactly.
    let fits = r#"{\"strategy\":\"1\"}"#;
    assert_eq!(
        decode(Protocol::Sagoo, msg(fits).as_bytes(), &limits, &mut notice).map(|_| ()),
        Ok(())
    );
    assert_eq!(notice.ext_data.as_str(), r#"{"strategy":"1"}"#);
    // One more byte does not, and the limit is named.
    let long = r#"{\"strategy\":\"12\"}"#;
    assert_eq!(
        decode(Protocol::Sagoo, msg(long).as_bytes(), &limits, &mut notice),
        Err(NoticeError::TooLong {
            field: "extData",
            len: 17,
            max: 16
        })
    );
}

#[test]
fn fixed_str_keeps_its_capacity_and_swaps_without_copying() {
    let mut a = FixedStr::with_capacity(8);
    let mut b = FixedStr::with_capacity(3);
    assert_eq!((a.capacity(), b.capacity()), (8, 3));
    a.set("abcdefgh").unwrap();
    b.set("xy").unwrap();
    let before = a.as_bytes().as_ptr();
    a.swap(&mut b);
    assert_eq!((a.as_str(), a.capacity()), ("xy", 3));
    assert_eq!((b.as_str(), b.capacity()), ("abcdefgh", 8));
    assert_eq!(
        b.as_bytes().as_ptr(),
        before,
        "the buffers moved, not the bytes"
    );
    let e = a.set("wxyz").unwrap_err();
    assert_eq!((e.len, e.max), (4, 3));
    assert_eq!(a.as_str(), "xy", "a refused set changes nothing");
    a.clear();
    assert_eq!((a.len(), a.capacity()), (0, 3));
}
