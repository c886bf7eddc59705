//! Losing the broker in the middle of a download (Mosquitto stopped and started again): the
//! HTTP download goes on, the client reconnects with backoff, re-subscribes, raises the
//! events, sends the progress held back while disconnected and reports its version again.
//! Needs Mosquitto: skipped without it, failed when OTA_REQUIRE_MOSQUITTO=required.

mod common;
use common::firmware::aliyun_notice;
use common::mosquitto::{self, Mosquitto};
use common::net::free_port;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ota::mqtt::{MqttEvent, QoS};
use ota::{MqttClient, MqttOptions, OtaConfig, OtaSession};
use ota_cloud::http::FirmwareServer;

#[test]
fn a_broker_restart_mid_download_loses_nothing() {
    let Some(binary) = mosquitto::binary_or_skip() else {
        return;
    };
    let port = free_port();
    let broker = Mosquitto::start(&binary, port);
    let image = ota_cloud::generate_firmware(3_000_000);
    let server = FirmwareServer::start(image.clone()).unwrap();

    let mqtt = MqttClient::connect(&MqttOptions::new("127.0.0.1", port, "loss-dev")).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    mqtt.on_event(move |e| log.lock().unwrap().push(*e));
    let session = OtaSession::attach(&mqtt, "pk", "loss-dev", OtaConfig::default()).unwrap();
    session.report_version("1.0.0").unwrap();
    mqtt.yield_for(Duration::from_millis(200)).unwrap();
    let notice = aliyun_notice(&image, &server.url(), "2.0.0");
    session
        .handle_message(session.downstream_topic(), notice.as_bytes())
        .unwrap();

    let mut broker = Some(broker);
    let mut watcher: Option<(MqttClient, Arc<Mutex<Vec<String>>>)> = None;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8 * 1024];
    let mut last = 0;
    let mut held_back = None;
    let mut stopped_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !session.is_fetch_finished() || watcher.is_none() || !mqtt.is_connected() {
        assert!(
            Instant::now() < deadline,
            "did not finish: events {:?}",
            events.lock().unwrap()
        );
        mqtt.yield_for(Duration::ZERO).unwrap();
        if session.is_fetching() {
            let n = session
                .fetch_yield(&mut buf, Duration::from_millis(100))
                .unwrap();
            got.extend_from_slice(&buf[..n]);
            // Slow the download down so the outage happens in the middle of it: pacing, not a
            // synchronisation.
            std::thread::sleep(Duration::from_millis(5));
            let percent = (session.fetched_size() * 100 / session.file_size()) as i32;
            if percent > last {
                session.report_progress(percent, None).unwrap();
                last = percent;
                if !mqtt.is_connected() {
                    held_back = Some(percent);
                }
            }
        }
        if last >= 20 && stopped_at.is_none() {
            broker.take().unwrap().stop();
            stopped_at = Some(Instant::now());
        }
        if let Some(t) = stopped_at {
            if watcher.is_none() && held_back.is_some() && t.elapsed() > Duration::from_millis(300)
            {
                // The broker comes back; a platform-side watcher listens before the device
                // reconnects (its backoff starts at half a second).
                broker = Some(Mosquitto::start(&binary, port));
                let w =
                    MqttClient::connect(&MqttOptions::new("127.0.0.1", port, "watcher")).unwrap();
                let seen = Arc::new(Mutex::new(Vec::new()));
                let s2 = seen.clone();
                let subscribed = Arc::new(AtomicBool::new(false));
                let acked = subscribed.clone();
                w.on_event(move |e| {
                    if matches!(e, MqttEvent::SubscribeAck { .. }) {
                        acked.store(true, Ordering::SeqCst);
                    }
                });
                w.subscribe("/ota/device/+/pk/loss-dev", QoS::AtLeastOnce, move |m| {
                    s2.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(m.payload).into_owned());
                })
                .unwrap();
                let until = Instant::now() + Duration::from_secs(5);
                while !subscribed.load(Ordering::SeqCst) {
                    assert!(Instant::now() < until, "the watcher was not subscribed");
                    w.yield_for(Duration::from_millis(10)).unwrap();
                }
                watcher = Some((w, seen));
            }
        }
        if let Some((w, _)) = &watcher {
            w.yield_for(Duration::ZERO).unwrap();
        }
    }
    assert!(got == image, "the download went on through the outage");
    assert!(session.check_firmware().unwrap());
    let events = events.lock().unwrap().clone();
    assert!(events.contains(&MqttEvent::Disconnected), "{events:?}");
    assert!(events.contains(&MqttEvent::Reconnected), "{events:?}");
    let (w, seen) = watcher.unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let held = held_back.unwrap();
    loop {
        mqtt.yield_for(Duration::from_millis(20)).unwrap();
        w.yield_for(Duration::from_millis(20)).unwrap();
        let seen = seen.lock().unwrap().clone();
        let version = seen.iter().any(|m| m.contains(r#""version":"1.0.0""#));
        let progress = seen
            .iter()
            .any(|m| m.contains(&format!(r#""step":"{held}""#)));
        if version && progress {
            break;
        }
        assert!(
            Instant::now() < until,
            "after reconnecting: held-back step {held} and version report expected, got {seen:?}"
        );
    }
    drop(broker);
}
