"""Drives edgelb's control API with the official Alibaba Cloud Python SDK
(alibabacloud-ens20171110 12.1.0), unchanged: endpoint = the admin address,
protocol http, V3 signatures with a configured access key.

Run by `cargo test --test api sdk_interop` (tests/api.rs), which starts edgelb and
passes the addresses in EDGELB_* variables. Exits non-zero on the first failure.
"""
import os
import socket
import sys
import time

from alibabacloud_ens20171110 import models
from alibabacloud_ens20171110.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException
from alibabacloud_tea_openapi.utils_models import Config

ENV = os.environ
LB = ENV["EDGELB_LB"]
PORT = int(ENV["EDGELB_PORT"])
BACKEND_IP, BACKEND_PORT = ENV["EDGELB_BACKEND"].rsplit(":", 1)


def client(key_id, secret):
    return Client(Config(access_key_id=key_id, access_key_secret=secret,
                         endpoint=ENV["EDGELB_ENDPOINT"], protocol="http"))


def expect(what, got, want):
    if got != want:
        sys.exit(f"FAIL {what}: got {got!r}, want {want!r}")
    print(f"ok   {what}")


def expect_error(what, call, code):
    try:
        call()
    except ClientException as e:
        expect(what, (e.status_code, e.code), (400, code))
        return
    sys.exit(f"FAIL {what}: no error, want {code}")


ops = client(ENV["EDGELB_OPS_ID"], ENV["EDGELB_OPS_SECRET"])
ro = client(ENV["EDGELB_RO_ID"], ENV["EDGELB_RO_SECRET"])

r = ops.create_load_balancer_tcplistener(models.CreateLoadBalancerTCPListenerRequest(
    load_balancer_id=LB, listener_port=PORT, scheduler="wrr", description="from the SDK",
    health_check_interval=1))
expect("create: RequestId", len(r.body.request_id), 36)

r = ops.add_backend_servers(models.AddBackendServersRequest(
    load_balancer_id=LB,
    backend_servers=[models.AddBackendServersRequestBackendServers(
        server_id="i-echo", ip=BACKEND_IP, port=int(BACKEND_PORT), weight=100, type="ens")]))
expect("add: servers", [(s.server_id, s.port, s.weight) for s in r.body.backend_servers.backend_server],
       [("i-echo", int(BACKEND_PORT), 100)])

r = ops.describe_load_balancer_tcplistener_attribute(
    models.DescribeLoadBalancerTCPListenerAttributeRequest(load_balancer_id=LB, listener_port=PORT))
expect("describe: created Stopped", r.body.status, "Stopped")

ops.start_load_balancer_listener(models.StartLoadBalancerListenerRequest(
    load_balancer_id=LB, listener_port=PORT, listener_protocol="tcp"))
with socket.create_connection(("127.0.0.1", PORT), timeout=5) as conn:
    conn.sendall(b"through edgelb")
    got = b""
    while len(got) < 14:
        chunk = conn.recv(64)
        if not chunk:
            break
        got += chunk
expect("proxied a connection", got, b"through edgelb")

# Stay under the 10 calls/s of one access key.
time.sleep(1.1)

r = ops.describe_load_balancer_tcplistener_attribute(
    models.DescribeLoadBalancerTCPListenerAttributeRequest(load_balancer_id=LB, listener_port=PORT))
expect("describe: running", (r.body.status, r.body.listener_port, r.body.scheduler, r.body.description),
       ("Running", PORT, "wrr", "from the SDK"))

ops.set_load_balancer_tcplistener_attribute(models.SetLoadBalancerTCPListenerAttributeRequest(
    load_balancer_id=LB, listener_port=PORT, scheduler="wlc"))
r = ro.describe_load_balancer_tcplistener_attribute(
    models.DescribeLoadBalancerTCPListenerAttributeRequest(load_balancer_id=LB, listener_port=PORT))
expect("set: scheduler", r.body.scheduler, "wlc")

r = ro.describe_load_balancer_listeners(models.DescribeLoadBalancerListenersRequest(load_balancer_id=LB))
expect("list", [(l.listener_port, l.status) for l in r.body.listeners.listener], [(PORT, "Running")])

r = ro.describe_load_balancer_attribute(models.DescribeLoadBalancerAttributeRequest(load_balancer_id=LB))
expect("load balancer", (r.body.load_balancer_id, [b.server_id for b in r.body.backend_servers]), (LB, ["i-echo"]))

ops.stop_load_balancer_listener(models.StopLoadBalancerListenerRequest(load_balancer_id=LB, listener_port=PORT))
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    sys.exit("FAIL stop: the listener still accepts")
except OSError:
    print("ok   stop: refused")
ops.delete_load_balancer_listener(models.DeleteLoadBalancerListenerRequest(load_balancer_id=LB, listener_port=PORT))
expect_error("delete: gone", lambda: ro.describe_load_balancer_tcplistener_attribute(
    models.DescribeLoadBalancerTCPListenerAttributeRequest(load_balancer_id=LB, listener_port=PORT)),
    "ListenerNotFound")

time.sleep(1.1)
expect_error("bad port", lambda: ops.create_load_balancer_tcplistener(
    models.CreateLoadBalancerTCPListenerRequest(load_balancer_id=LB, listener_port=70000)),
    "InvalidListenerPort")
expect_error("wrong secret", lambda: client(ENV["EDGELB_OPS_ID"], "wrong").describe_load_balancer_listeners(
    models.DescribeLoadBalancerListenersRequest()), "SignatureDoesNotMatch")
expect_error("unknown key", lambda: client("nobody", "x").describe_load_balancer_listeners(
    models.DescribeLoadBalancerListenersRequest()), "InvalidAccessKeyId.NotFound")
expect_error("forbidden action", lambda: ro.delete_load_balancer_listener(
    models.DeleteLoadBalancerListenerRequest(load_balancer_id=LB, listener_port=PORT)), "NoPermission")
print("SDK interop: all passed")
