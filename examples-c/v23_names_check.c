/*
 * v23_names_check.c: compiled (never run) by the c_header_v23_names test. Uses every type and
 * constant name iotkit v2.3 firmware commonly spells, so a name missing from the generated
 * header fails a test instead of a customer's build.
 */
#include <stddef.h>
#include <stdint.h>

#include "iot_import.h"
#include "iot_export.h"

int v23_names_check(void);

int v23_names_check(void)
{
    iotx_conn_info_pt conn = NULL;
    iotx_mqtt_param_t params;
    iotx_mqtt_param_pt pparams = &params;
    iotx_mqtt_topic_info_t topic;
    iotx_mqtt_topic_info_pt ptopic = &topic;
    iotx_mqtt_event_msg_t event;
    iotx_mqtt_event_msg_pt pevent = &event;
    iotx_mqtt_event_handle_t handler;
    iotx_mqtt_qos_t qos = IOTX_MQTT_QOS1;
    iotx_mqtt_event_type_t type = IOTX_MQTT_EVENT_PUBLISH_RECEIVED;
    IOT_OTA_Err_t err = IOT_OTAE_NONE;
    IOT_OTA_State_t state = IOT_OTAS_FETCHING;
    IOT_OTA_Progress_t progress = IOT_OTAP_CHECK_FALIED;
    IOT_OTA_CmdType_t cmd = IOT_OTAG_CHECK_FIRMWARE;
    IOT_LogLevel level = IOT_LOG_DEBUG;
    char pk[PRODUCT_KEY_LEN + 1], dn[DEVICE_NAME_LEN + 1], ds[DEVICE_SECRET_LEN + 1];
    char fw[FIRMWARE_VERSION_MAXLEN], version[OTA_VERSION_LEN_MAX];

    (void)conn;
    (void)pparams;
    (void)ptopic;
    (void)pevent;
    (void)handler;
    (void)pk;
    (void)dn;
    (void)ds;
    (void)fw;
    (void)version;
    return (int)qos + (int)type + (int)err + (int)state + (int)progress + (int)cmd + (int)level
        + IOT_OTAP_BURN_FAILED + IOT_OTAP_FETCH_FAILED + IOT_OTAP_GENERAL_FAILED
        + IOT_OTAP_FETCH_PERCENTAGE_MIN + IOT_OTAP_FETCH_PERCENTAGE_MAX + IOT_OTAG_FETCHED_SIZE
        + IOT_OTAG_FILE_SIZE + IOT_OTAG_MD5SUM + IOT_OTAG_VERSION;
}
