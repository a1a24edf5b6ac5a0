"""Exit 0 when a CQL native transport answers OPTIONS at host:port (argv)."""
import socket
import struct
import sys

host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=2) as s:
    # protocol v4 request: version, flags, stream, opcode OPTIONS (0x05), body length 0
    s.sendall(struct.pack(">BBhBI", 0x04, 0, 0, 0x05, 0))
    head = b""
    while len(head) < 9:
        chunk = s.recv(9 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    # response opcode SUPPORTED (0x06)
    sys.exit(0 if head[4] == 0x06 else 1)
