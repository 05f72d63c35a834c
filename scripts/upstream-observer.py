#!/usr/bin/env python3
"""An independent Hubble Observer server for interoperability checks.

Built at start-up from the upstream Cilium Hubble API definitions with grpcio-tools (not from
exfilwatch's proto/), it serves observer.Observer/GetFlows with the responses in
tests/fixtures/wire/responses.bin, applying the request's pod-prefix whitelist the way Hubble
does, then keeps a follow stream open. scripts/interop-upstream.sh drives it.

  python3 scripts/upstream-observer.py --protos HUBBLE_API/api/v1 --port 4245
"""

import argparse
import os
import struct
import sys
import tempfile
import time
from concurrent import futures

here = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--protos", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--responses", default=os.path.join(here, "..", "tests", "fixtures", "wire", "responses.bin"))
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    sys.argv = [sys.argv[0]]
    sys.path.insert(0, here)
    import importlib
    gen = importlib.import_module("gen-wire-fixtures")
    gen.compile_protos(os.path.abspath(args.protos), tmp)
    import grpc
    from observer import observer_pb2, observer_pb2_grpc

    raw = open(args.responses, "rb").read()
    responses = []
    while raw:
        (n,) = struct.unpack("<I", raw[:4])
        responses.append(observer_pb2.GetFlowsResponse.FromString(raw[4:4 + n]))
        raw = raw[4 + n:]

    def pods(ep):
        return f"{ep.namespace}/{ep.pod_name}"

    def passes(r, request):
        if r.WhichOneof("response_types") != "flow" or not request.whitelist:
            return True
        for flt in request.whitelist:
            src = not flt.source_pod or any(pods(r.flow.source).startswith(p) for p in flt.source_pod)
            dst = not flt.destination_pod or any(pods(r.flow.destination).startswith(p) for p in flt.destination_pod)
            if src and dst:
                return True
        return False

    class Observer(observer_pb2_grpc.ObserverServicer):
        def GetFlows(self, request, context):
            print(f"GetFlows follow={request.follow} whitelist={len(request.whitelist)}", flush=True)
            for r in responses:
                if passes(r, request):
                    yield r
            while request.follow and context.is_active():
                time.sleep(0.05)

        def ServerStatus(self, request, context):
            return observer_pb2.ServerStatusResponse(num_flows=len(responses), version="upstream-interop")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    observer_pb2_grpc.add_ObserverServicer_to_server(Observer(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"upstream observer on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
