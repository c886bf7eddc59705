#!/usr/bin/env python3
"""A cloud that lies about the MD5, to test the firmware's verify-failure path end to end.

usage: bad_md5_cloud.py BROKER_PORT PRODUCT_KEY DEVICE_NAME [SIZE] [TIMEOUT_S]

Serves SIZE random bytes over HTTP on 127.0.0.1, answers the device's version report with an
Aliyun upgrade message whose md5 does not match, and exits 0 once the device reports
progress step -3 (verify failed), 1 on anything else or after TIMEOUT_S. Standard library only:
a minimal MQTT 3.1.1 client (QoS 0) is enough for one broker on localhost.
"""
import hashlib
import http.server
import json
import os
import socket
import struct
import sys
import threading
import time


def encode_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s):
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def packet(first_byte, body):
    return bytes([first_byte]) + encode_length(len(body)) + body


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def read_packet(sock):
    first = read_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = read_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, read_exact(sock, length)


def parse_publish(first, body):
    topic_len = struct.unpack("!H", body[:2])[0]
    topic = body[2:2 + topic_len].decode()
    rest = body[2 + topic_len:]
    if (first >> 1) & 0x03:  # QoS > 0 carries a packet id
        rest = rest[2:]
    return topic, rest


def serve_firmware(image):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d/firmware.bin" % server.server_address[1]


def main():
    port, pk, dn = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 100000
    deadline = time.monotonic() + (int(sys.argv[5]) if len(sys.argv) > 5 else 60)
    image = os.urandom(size)
    url = serve_firmware(image)
    wrong_md5 = hashlib.md5(image + b"x").hexdigest()

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    connect = mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + mqtt_string("bad-md5-cloud-%d" % os.getpid())
    sock.sendall(packet(0x10, connect))
    first, body = read_packet(sock)
    if first != 0x20 or body[1] != 0:
        print("cloud: broker refused the connection")
        return 1
    inform, progress = "/ota/device/inform/%s/%s" % (pk, dn), "/ota/device/progress/%s/%s" % (pk, dn)
    subscribe = struct.pack("!H", 1) + mqtt_string(inform) + b"\x00" + mqtt_string(progress) + b"\x00"
    sock.sendall(packet(0x82, subscribe))
    print("cloud: waiting for the device's version report on %s" % inform, flush=True)

    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            first, body = read_packet(sock)
        except socket.timeout:
            break
        if first >> 4 != 3:
            continue
        topic, payload = parse_publish(first, body)
        message = json.loads(payload)
        print("cloud: %s %s" % (topic, payload.decode()), flush=True)
        if topic == inform and message["params"]["version"] != "2.0.0":
            upgrade = {"code": "1000", "id": 1, "message": "success",
                       "data": {"size": size, "version": "2.0.0", "url": url, "md5": wrong_md5}}
            sock.sendall(packet(0x30, mqtt_string("/ota/device/upgrade/%s/%s" % (pk, dn)) + json.dumps(upgrade).encode()))
        elif topic == inform:
            print("cloud: FAIL: the device reported the new version despite the wrong md5")
            return 1
        elif topic == progress and str(message["params"]["step"]) == "-3":
            print("cloud: the device reported verify failure (-3), as it must")
            return 0
        elif topic == progress and int(message["params"]["step"]) < 0:
            print("cloud: FAIL: expected step -3, got %s" % message["params"]["step"])
            return 1
    print("cloud: FAIL: no verify-failure report before the deadline")
    return 1


if __name__ == "__main__":
    sys.exit(main())
