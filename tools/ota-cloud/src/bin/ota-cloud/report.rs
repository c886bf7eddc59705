//! `--json`: the run's report as one JSON object, printed after the outcome line.

use ota_cloud::delta::DeltaSizes;
use ota_cloud::demo::DemoReport;
use ota_cloud::fleet::{FleetReport, Verdict};
use ota_cloud::RequestLog;
use ota_cloud::{Summary, TargetOutcome, UpgradeRecord};
use serde_json::{json, Value};

/// What the cloud saw of the run.
pub fn summary(s: &Summary) -> Value {
    let (outcome, failure_reports, failure_desc) = match &s.target_outcome {
        TargetOutcome::Success { .. } => ("success", 0, None),
        TargetOutcome::Failed { reports, desc, .. } => ("failed", *reports, Some(desc.as_str())),
        TargetOutcome::Timeout => ("timeout", 0, None),
    };
    json!({
        "protocol": s.protocol.name(),
        "outcome": outcome,
        "target_version": s.target().firmware.version,
        "failure_reports": failure_reports,
        "failure_desc": failure_desc,
        "success": s.is_success(),
        "violation": s.violation().map(|v| v.to_string()),
        "error": s.outcome.as_ref().err().map(|e| e.to_string()),
        "upgrades": s.upgrades.iter().map(upgrade).collect::<Vec<_>>(),
        "upgrade_messages_sent": s.upgrade_messages_sent,
        "version_replies_sent": s.version_replies_sent,
        "requests_received": s.requests_received,
        "requests_ignored": s.requests_ignored,
        "urls_renewed": s.urls_renewed,
        "task_id": s.task_id,
        "versions": s.versions,
        "progress": s.progress,
        "download_ms": s.download_time.map(|d| d.as_millis() as u64),
        "elapsed_ms": s.elapsed.as_millis() as u64,
    })
}

fn upgrade(u: &UpgradeRecord) -> Value {
    json!({
        "version": u.firmware.version,
        "url": u.firmware.url,
        "size": u.firmware.size,
        "md5": u.firmware.md5,
        "messages_sent": u.messages_sent,
        "failure_reports": u.failure_reports,
        "first_failure": u.first_failure.as_ref().map(|(code, desc)| json!({
            "code": code,
            "desc": desc,
        })),
        "superseded": u.superseded,
    })
}

/// The demo's verdict and what it measured, with the cloud's summary.
pub fn demo(r: &DemoReport) -> Value {
    json!({
        "success": r.success(),
        "identical": r.identical,
        "firmware_size": r.firmware_size,
        "output_size": r.output_size,
        "device_exit_code": r.device_status.and_then(|s| s.code()),
        "http_bytes": r.http_bytes,
        "http_requests": r.http_requests,
        "mb_per_s": r.mb_per_s(),
        "signed": r.signed.map(|s| s.key_type.name()),
        "tamper": r.signed.and_then(|s| s.tamper).map(|t| t.name()),
        "device_image": r.device_image,
        "device_refusal": r.device_refusal,
        "delta": delta(r.delta.as_ref()),
        "device_wrote_patch": r.delta.as_ref().map(|_| r.device_wrote_patch),
        "cloud": summary(&r.summary),
    })
}

/// A delta upgrade's sizes (`null` for a full image).
pub fn delta(d: Option<&DeltaSizes>) -> Value {
    d.map_or(Value::Null, |d| {
        json!({
            "old_size": d.old,
            "new_size": d.new,
            "patch_size": d.patch,
            "compression": d.compression,
            "saved_bytes": d.saved(),
        })
    })
}

/// `fleet --json`: every device's end, every image's count, the request log.
pub fn fleet(r: &FleetReport) -> Value {
    let (upgraded, failed, waiting) = r.counts();
    let devices: Vec<Value> = r
        .devices
        .iter()
        .map(|d| {
            let why = match d.verdict() {
                Verdict::Upgraded => None,
                Verdict::Failed(why) | Verdict::Waiting(why) => Some(why),
            };
            json!({
                "pk": d.device.id.product_key,
                "dn": d.device.id.device_name,
                "gateway": d.device.is_gateway,
                "state": d.state(),
                "why": why,
                "version": d.running_version(),
                "target_version": d.device.firmware.version,
                "image": r.image_of(d),
                "violation": d.summary.violation().map(|v| v.to_string()),
                "progress": d.summary.progress,
                "upgrade_messages_sent": d.summary.upgrade_messages_sent,
            })
        })
        .collect();
    let images: Vec<Value> = r
        .images
        .iter()
        .map(|i| {
            json!({
                "name": i.name,
                "size": i.size,
                "md5": i.md5,
                "sha256": i.sha256,
                "requests": i.requests,
                "requests_from_start": i.requests_from_start,
                "bytes_served": i.bytes_served,
                "full_downloads": i.full_downloads,
            })
        })
        .collect();
    json!({
        "protocol": r.protocol.name(),
        "success": r.success(),
        "upgraded": upgraded,
        "failed": failed,
        "waiting": waiting,
        "devices": devices,
        "images": images,
        "bytes_served": r.bytes_served,
        "requests": r.requests.iter().map(request).collect::<Vec<_>>(),
        "elapsed_ms": r.elapsed.as_millis() as u64,
    })
}

fn request(q: &RequestLog) -> Value {
    json!({
        "seq": q.seq,
        "method": q.method,
        "path": q.path,
        "range": q.range,
        "status": q.status,
        "bytes_sent": q.bytes_sent,
        "complete": q.complete,
    })
}
