#!/usr/bin/env python3
"""Generates the wire-compatibility fixtures in tests/fixtures/ with an independent encoder.

The flows are built with Python classes generated (by grpcio-tools' protoc) from the
upstream Cilium Hubble API definitions, not from exfilwatch's own proto/ files, and
encoded by the protobuf runtime. Three files come out:

  wire/responses.bin   GetFlowsResponse messages, each behind a 4-byte little-endian length
  wire/expected.json   what each message must decode to, computed here from the objects
  flows.jsonl          the same responses as `hubble observe -o jsonpb` prints them

The committed fixtures are the output of one run; rerun only to extend them:

  pip install grpcio-tools
  python3 scripts/gen-wire-fixtures.py --protos PATH/TO/hubble-api/api/v1
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

NS = 1_000_000_000


def compile_protos(proto_root, out_dir):
    import grpc_tools
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = ["flow/flow.proto", "relay/relay.proto", "observer/observer.proto"]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files],
        check=True,
    )
    sys.path.insert(0, out_dir)


def build_responses():
    from flow import flow_pb2 as F
    from observer import observer_pb2 as O
    from relay import relay_pb2 as R
    from google.protobuf import any_pb2, wrappers_pb2

    def ts(msg, ns):
        msg.seconds, msg.nanos = divmod(ns, NS)

    def endpoint(ep, ns, pod, labels, identity, workload=None):
        ep.namespace, ep.pod_name, ep.identity = ns, pod, identity
        ep.labels.extend(labels)
        ep.ID = identity % 4000
        ep.cluster_name = "default"
        if workload:
            w = ep.workloads.add()
            w.name, w.kind = workload

    trainer_labels = ["k8s:app=llm-pretrain", "k8s:io.kubernetes.pod.namespace=ai-training"]
    base_ns = 1_764_115_200 * NS  # 2025-11-26T00:00:00Z
    out = []

    def response(flow, t):
        r = O.GetFlowsResponse()
        r.flow.CopyFrom(flow)
        r.node_name = flow.node_name
        ts(r.time, t)
        return r

    # 1. Forwarded all-reduce traffic, carrying many fields exfilwatch does not read.
    f = F.Flow()
    t = base_ns + 123_456_789
    ts(f.time, t)
    f.uuid = "0f8e2f1c-6a3b-4d7e-9c21-5b4a3f2e1d0c"
    f.emitter.name, f.emitter.version = "Hubble", "1.19.4"
    f.verdict = F.FORWARDED
    f.ethernet.source, f.ethernet.destination = "46:e5:ea:1f:95:ff", "d6:ec:b0:4a:ff:46"
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.1.10", "10.0.1.11", F.IPv4
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 41234, 29500
    f.l4.TCP.flags.PSH, f.l4.TCP.flags.ACK = True, True
    endpoint(f.source, "ai-training", "llm-pretrain-worker-0", trainer_labels, 41001, ("llm-pretrain", "PyTorchJob"))
    endpoint(f.destination, "ai-training", "llm-pretrain-worker-1", trainer_labels, 41001, ("llm-pretrain", "PyTorchJob"))
    f.Type = F.L3_L4
    f.node_name = "kind/gpu-node-a"
    f.node_labels.extend(["kubernetes.io/hostname=gpu-node-a"])
    f.source_names.extend(["ignored.example"])
    f.event_type.type, f.event_type.sub_type = 4, 3
    f.traffic_direction = F.EGRESS
    f.trace_observation_point = F.TO_STACK
    f.trace_reason = F.ESTABLISHED
    f.is_reply.value = False
    f.interface.index, f.interface.name = 7, "lxc1234"
    f.Summary = "TCP Flags: ACK, PSH"
    p = f.egress_allowed_by.add()
    p.name, p.namespace, p.kind, p.revision = "allow-allreduce", "ai-training", "CiliumNetworkPolicy", 3
    f.policy_log.extend(["allreduce"])
    f.aggregate.egress_flow_count = 2
    f.extensions.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/google.protobuf.StringValue",
                                      value=wrappers_pb2.StringValue(value="x").SerializeToString()))
    out.append(response(f, t))

    # 2. Default-deny drop of a probe to the production database; no UUID (pre-1.14 agent),
    #    drop reason only in the legacy numeric field.
    f = F.Flow()
    t = base_ns + 2 * NS
    ts(f.time, t)
    f.verdict = F.DROPPED
    f.drop_reason = 133
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.1.12", "10.0.5.20", F.IPv4
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 50000, 5432
    f.l4.TCP.flags.SYN = True
    endpoint(f.source, "ai-training", "llm-pretrain-worker-2", trainer_labels, 41001)
    endpoint(f.destination, "production", "orders-db-0", ["k8s:app=postgres"], 60100, ("orders-db", "StatefulSet"))
    f.Type = F.L3_L4
    f.node_name = "kind/gpu-node-b"
    f.event_type.type, f.event_type.sub_type = 1, 133
    f.traffic_direction = F.EGRESS
    f.reply = False
    out.append(response(f, t))

    # 3. Explicit deny of an upload over IPv6 to an unknown name, with the denying policy.
    f = F.Flow()
    t = base_ns + 3 * NS + 5
    ts(f.time, t)
    f.uuid = "A1B2C3D4-E5F6-4711-8899-AABBCCDDEEFF"
    f.verdict = F.DROPPED
    f.drop_reason = 181
    f.drop_reason_desc = F.POLICY_DENY
    f.IP.source, f.IP.destination, f.IP.ipVersion = "fd00:10:1::12", "2001:db8::77", F.IPv6
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 50001, 443
    f.l4.TCP.flags.SYN = True
    endpoint(f.source, "ai-training", "llm-pretrain-worker-2", trainer_labels, 41001)
    f.destination.identity = 2
    f.destination.labels.extend(["reserved:world"])
    f.destination_names.extend(["paste.example.net", "cdn.paste.example.net"])
    f.Type = F.L3_L4
    f.node_name = "kind/gpu-node-b"
    f.event_type.type = 5
    f.traffic_direction = F.EGRESS
    p = f.egress_denied_by.add()
    p.name, p.namespace, p.kind = "deny-unapproved-egress", "ai-training", "CiliumNetworkPolicy"
    p.labels.extend(["k8s:io.cilium.k8s.policy.name=deny-unapproved-egress"])
    p = f.ingress_denied_by.add()
    p.name, p.kind = "cluster-lockdown", "CiliumClusterwideNetworkPolicy"
    out.append(response(f, t))

    # 4. An L7 DNS response: TXT query answered NXDOMAIN, and an A answer's IPs.
    f = F.Flow()
    t = base_ns + 4 * NS
    ts(f.time, t)
    f.uuid = "5d6e7f80-9a1b-4c2d-8e3f-405162738495"
    f.verdict = F.FORWARDED
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.0.10", "10.0.1.10", F.IPv4
    f.l4.UDP.source_port, f.l4.UDP.destination_port = 53, 40000
    endpoint(f.source, "kube-system", "coredns-5d78c9869d-x7k2p", ["k8s:k8s-app=kube-dns"], 102, ("coredns", "Deployment"))
    endpoint(f.destination, "ai-training", "llm-pretrain-worker-0", trainer_labels, 41001)
    f.Type = F.L7
    f.node_name = "kind/gpu-node-a"
    f.l7.type = F.RESPONSE
    f.l7.latency_ns = 120000
    f.l7.dns.query = "aGVsbG8gd29ybGQ.exfil.example.com."
    f.l7.dns.ips.extend(["198.51.100.7", "2001:db8::7"])
    f.l7.dns.ttl = 30
    f.l7.dns.rcode = 3
    f.l7.dns.qtypes.extend(["TXT"])
    f.l7.dns.rrtypes.extend(["A"])
    f.l7.dns.observation_source = "proxy"
    f.event_type.type = 129
    f.traffic_direction = F.INGRESS
    f.is_reply.value = True
    out.append(response(f, t))

    # 5. ICMPv4 echo to the world, verdict AUDIT; node only in the envelope.
    f = F.Flow()
    t = base_ns + 5 * NS
    ts(f.time, t)
    f.uuid = "11111111-2222-4333-8444-555555555555"
    f.verdict = F.AUDIT
    f.drop_reason_desc = F.POLICY_DENIED
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.0.1.13", "192.0.2.1", F.IPv4
    f.l4.ICMPv4.type = 8
    endpoint(f.source, "ai-training", "llm-pretrain-worker-3", trainer_labels, 41001)
    f.destination.identity = 2
    f.destination.labels.extend(["reserved:world"])
    f.event_type.type = 5
    f.traffic_direction = F.EGRESS
    r = O.GetFlowsResponse()
    r.flow.CopyFrom(f)
    r.node_name = "kind/gpu-node-c"
    ts(r.time, t)
    out.append(r)

    # 6. Lost events: this reader fell behind the ring.
    r = O.GetFlowsResponse()
    r.lost_events.source = F.HUBBLE_RING_BUFFER
    r.lost_events.num_events_lost = 12_345_678_901
    r.lost_events.cpu.value = 3
    ts(r.lost_events.first, base_ns + 6 * NS)
    ts(r.lost_events.last, base_ns + 7 * NS)
    r.node_name = "kind/gpu-node-a"
    ts(r.time, base_ns + 7 * NS)
    out.append(r)

    # 7. Relay: a node became unavailable.
    r = O.GetFlowsResponse()
    r.node_status.state_change = R.NODE_UNAVAILABLE
    r.node_status.node_names.extend(["kind/gpu-node-b"])
    r.node_status.message = "connection refused"
    ts(r.time, base_ns + 8 * NS)
    out.append(r)
    return out, F, R


def uuid_text(u):
    return u.lower() if u else None


def ns_of(t):
    return t.seconds * NS + t.nanos


def expected(r, F, R):
    kind = r.WhichOneof("response_types")
    if kind == "lost_events":
        le = r.lost_events
        return {
            "kind": "lost", "source": F.LostEventSource.Name(le.source), "count": le.num_events_lost,
            "cpu": le.cpu.value if le.HasField("cpu") else None,
            "first_ns": ns_of(le.first), "last_ns": ns_of(le.last), "node": r.node_name,
        }
    if kind == "node_status":
        st = r.node_status
        return {"kind": "node_status", "state": R.NodeState.Name(st.state_change),
                "nodes": list(st.node_names), "message": st.message}
    f = r.flow
    proto = f.l4.WhichOneof("protocol") or ""

    def peer(ep, ip, port):
        w = ep.workloads[0] if ep.workloads else None
        return {
            "namespace": ep.namespace, "pod": ep.pod_name,
            "workload": w.name if w else "", "workload_kind": w.kind if w else "",
            "labels": list(ep.labels), "identity": ep.identity, "ip": ip or None, "port": port,
        }

    ports = (0, 0)
    flags = []
    if proto in ("TCP", "UDP", "SCTP"):
        l4 = getattr(f.l4, proto)
        ports = (l4.source_port, l4.destination_port)
        if proto == "TCP":
            flags = [n for n in ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"]
                     if getattr(l4.flags, n)]
    dns = None
    if f.l7.WhichOneof("record") == "dns":
        d = f.l7.dns
        dns = {"query": d.query, "rcode": d.rcode, "qtypes": list(d.qtypes), "ips": list(d.ips),
               "ttl": d.ttl, "response": f.l7.type == F.RESPONSE}
    is_reply = f.is_reply.value if f.HasField("is_reply") else (True if f.reply else None)
    return {
        "kind": "flow",
        "time_ns": ns_of(f.time) if f.HasField("time") else ns_of(r.time),
        "uuid": uuid_text(f.uuid),
        "verdict": F.Verdict.Name(f.verdict),
        "drop_reason": f.drop_reason_desc or f.drop_reason,
        "direction": F.TrafficDirection.Name(f.traffic_direction),
        "event_type": f.event_type.type, "event_sub_type": f.event_type.sub_type,
        "node": f.node_name or r.node_name,
        "source": peer(f.source, f.IP.source, ports[0]),
        "destination": peer(f.destination, f.IP.destination, ports[1]),
        "protocol": proto, "tcp_flags": flags,
        "destination_names": list(f.destination_names),
        "dns": dns,
        "egress_denied_by": [[p.namespace, p.name, p.kind] for p in f.egress_denied_by],
        "ingress_denied_by": [[p.namespace, p.name, p.kind] for p in f.ingress_denied_by],
        "is_reply": is_reply,
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protos", default=os.path.join(here, "..", "..", "shared", "reference", "hubble-api", "api", "v1"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    args = ap.parse_args()
    from google.protobuf import json_format

    with tempfile.TemporaryDirectory() as tmp:
        compile_protos(os.path.abspath(args.protos), tmp)
        responses, F, R = build_responses()
        os.makedirs(os.path.join(args.out, "wire"), exist_ok=True)
        with open(os.path.join(args.out, "wire", "responses.bin"), "wb") as out:
            for r in responses:
                data = r.SerializeToString()
                out.write(struct.pack("<I", len(data)))
                out.write(data)
        with open(os.path.join(args.out, "wire", "expected.json"), "w") as out:
            json.dump([expected(r, F, R) for r in responses], out, indent=1)
            out.write("\n")
        with open(os.path.join(args.out, "flows.jsonl"), "w") as out:
            for r in responses:
                out.write(json_format.MessageToJson(r, preserving_proto_field_name=True, indent=None))
                out.write("\n")
    print(f"wrote {len(responses)} responses to {args.out}")


if __name__ == "__main__":
    main()
