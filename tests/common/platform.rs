//! The platform's side of an MQTT test: what it publishes to a device.

use std::time::Duration;

use ota::mqtt::QoS;
use ota::{MqttClient, OtaSession};

/// Publishes `message` once on `session`'s upgrade topic from the platform's `cloud` client and
/// sends it off (the device yields to get it).
pub fn send_upgrade(cloud: &MqttClient, session: &OtaSession, message: &str) {
    cloud
        .publish(
            session.downstream_topic(),
            QoS::AtLeastOnce,
            false,
            message.as_bytes(),
        )
        .unwrap();
    cloud.yield_for(Duration::ZERO).unwrap();
}
