//! The link between the MQTT client and the OTA engine: the one module that knows both.
//!
//! The engine ([`crate::ota`]) takes an MQTT interface and knows no client: it publishes
//! through an [`Uplink`] and is handed the messages of its upgrade topic. The client
//! ([`crate::mqtt`]) knows no engine. Here an [`MqttUplink`] becomes the engine's `Uplink`, and
//! [`OtaSession::attach`] subscribes a session's upgrade topic on an [`MqttClient`] and hooks the
//! reconnections (the way AWS's OTA library takes its MQTT interface, rather than owning a client).

use crate::error::{Error, Result};
use crate::mqtt::{MqttClient, MqttUplink, QoS, QUEUE_PER_SESSION};
use crate::mqtt_source::MqttBlockSource;
use crate::ota::{Gateway, OtaConfig, OtaSession, Uplink};
use crate::source::{HttpSource, MqttDownloadConfig};

impl Uplink for MqttUplink {
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        self.publish_report(topic, payload)
    }

    fn authenticated(&self) -> bool {
        self.is_tls()
    }
}

impl Gateway {
    /// The gateway of the OTA sessions attached to `mqtt` (the same one for every call on
    /// the same client): its download slots and counts.
    pub fn of(mqtt: &MqttClient) -> Gateway {
        match mqtt.shared(Gateway::new) {
            Some(gateway) => (*gateway).clone(),
            // Nothing else is kept on a client: unreachable, and harmless if it were.
            None => Gateway::new(),
        }
    }
}

impl OtaSession {
    /// Creates a session that publishes through `mqtt`, downloads over HTTP(S), and subscribes
    /// to the protocol's upgrade topic on `mqtt`. The session joins the client's [`Gateway`]
    /// (its download slots and shared images). One session per device and client:
    /// [`Error::DeviceTaken`] while another session of the same device is attached (until it is
    /// detached or, in C, `IOT_OTA_Deinit`ed); [`Error::TooManySessions`] beyond
    /// [`crate::ota::MAX_SESSIONS_PER_CLIENT`].
    pub fn attach(
        mqtt: &MqttClient,
        product_key: &str,
        device_name: &str,
        config: OtaConfig,
    ) -> Result<OtaSession> {
        let mqtt_download = config.mqtt_download.clone();
        let source = HttpSource::new(config.http.clone()).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => {
                Error::InvalidParam("HTTPS CA is not a PEM certificate")
            }
            _ => Error::NoMemory,
        })?;
        let session = OtaSession::new(
            product_key,
            device_name,
            config,
            Box::new(mqtt.uplink()),
            Box::new(source),
        )?;
        session.join(&Gateway::of(mqtt))?;
        mqtt.reserve_requests(QUEUE_PER_SESSION);
        let feed = session.feed();
        let yield_break = mqtt.yield_break();
        // A second session of the same device would take the first one's messages.
        let subscribed =
            mqtt.subscribe_new(session.downstream_topic(), QoS::AtLeastOnce, move |msg| {
                if feed.deliver(msg.topic, msg.payload) {
                    // A download starts: let the firmware's yield loop get to FetchYield now.
                    yield_break.request();
                }
            });
        if let Err(e) = subscribed {
            return Err(match e {
                Error::InvalidState(_) => Error::DeviceTaken,
                e => e,
            });
        }
        let feed = session.feed();
        mqtt.on_reconnect(move || feed.reconnected());
        if let Some(download) = mqtt_download {
            if let Err(e) = session.enable_mqtt_download(mqtt, download) {
                let _ = session.detach(mqtt);
                return Err(e);
            }
        }
        Ok(session)
    }

    /// Lets the session download over MQTT (`dProtocol` `mqtt`, Aliyun and SagooIOT), in blocks
    /// of `config.block_size` requested on `/sys/{pk}/{dn}/thing/file/download` of `mqtt` (the
    /// client the session is attached to; no other connection). Makes the block buffer and
    /// subscribes the reply topic; a source enabled before is replaced. Before the first
    /// upgrade only.
    ///
    /// [`Error::InvalidParam`] on Tencent and UCloud, for a block size of 0, or one whose reply
    /// frame would not fit the client's `max_packet_size` (said now rather than at every
    /// block); download over MQTT is then off, whatever was enabled before.
    /// [`Error::InvalidState`] after an upgrade was accepted (nothing changes).
    pub fn enable_mqtt_download(
        &self,
        mqtt: &MqttClient,
        config: MqttDownloadConfig,
    ) -> Result<()> {
        self.check_mqtt_download_settable()?;
        // The old source holds the reply topic's subscription: it goes first.
        self.drop_mqtt_source();
        let source = MqttBlockSource::new(mqtt, self.product_key(), self.device_name(), config)?;
        self.set_mqtt_source(Box::new(source))
    }

    /// Unsubscribes the session's upgrade topic from `mqtt`, and the MQTT download's reply
    /// topic (the session stays usable, without download over MQTT).
    pub fn detach(&self, mqtt: &MqttClient) -> Result<()> {
        self.drop_mqtt_source();
        mqtt.unsubscribe(self.downstream_topic())
    }
}
