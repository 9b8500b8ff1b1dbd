#!/usr/bin/env python3
"""Captures the CERTS cell a C tor relay sends as responder, for tests/ctor_certs.rs.

Usage: start a relay, e.g.
  tor --DataDirectory D --ORPort 127.0.0.1:PORT --SocksPort 0 --AssumeReachable 1 \
      --PublishServerDescriptor 0 -f /dev/null --defaults-torrc /dev/null
then run: capture_ctor_certs.py PORT OUTDIR
Writes ctor-0.4.9-certs-cell.bin (the CERTS cell body), ctor-0.4.9-tls-cert.der (the relay's
TLS certificate) and ctor-0.4.9-capture-time.txt (UNIX seconds).
"""
import socket, ssl, struct, sys, time

port, outdir = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
tls_cert = s.getpeercert(binary_form=True)
# VERSIONS: CircID(2)=0, CMD=7, LEN(2), versions 4 and 5.
s.sendall(struct.pack(">HBH", 0, 7, 4) + struct.pack(">HH", 4, 5))
buf = b""
def need(n):
    global buf
    while len(buf) < n:
        d = s.recv(65536)
        if not d:
            raise SystemExit("connection closed")
        buf += d
need(5)
_, cmd, ln = struct.unpack(">HBH", buf[:5])
assert cmd == 7, cmd
need(5 + ln)
buf = buf[5 + ln:]
# Link protocol >= 4: 4-byte circuit IDs from here on.
need(7)
_, cmd, ln = struct.unpack(">IBH", buf[:7])
assert cmd == 129, cmd  # CERTS
need(7 + ln)
body = buf[7:7 + ln]
now = int(time.time())
open(f"{outdir}/ctor-0.4.9-certs-cell.bin", "wb").write(body)
open(f"{outdir}/ctor-0.4.9-tls-cert.der", "wb").write(tls_cert)
open(f"{outdir}/ctor-0.4.9-capture-time.txt", "w").write(f"{now}\n")
print("captured", len(body), "bytes")
