# Runs ON the datastore host (ESXi shell: Python 3.5 to 3.8, standard library only).
# It is sent as the argument of `python -I -c`, so nothing is installed on the host.
# It must stay compatible with Python 3.5: no f-strings, no walrus, no type annotations.
#
# Protocol on stdin/stdout (all integers big-endian):
#   host -> client: magic b"ASTKHLP1", size u64, chunk_size u32, count u32,
#                   then per block: flag u8 (0 = all zero, 1 = data) + sha256 32 B.
#   client -> host: n u32, then n block indexes u32 (the blocks it lacks), ascending.
#   host -> client: per requested block: index u32, codec u8 (0 raw, 1 zlib), length u32, bytes.
#                   then the trailer b"ASTKDONE".
import hashlib
import struct
import sys
import zlib


def main(path, chunk_size):
    # type: (str, int) -> None
    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(0)
        count = (size + chunk_size - 1) // chunk_size
        out.write(b"ASTKHLP1" + struct.pack(">QII", size, chunk_size, count))
        for _ in range(count):
            block = f.read(chunk_size)
            if block.count(0) == len(block):
                out.write(b"\x00" + bytes(32))
            else:
                out.write(b"\x01" + hashlib.sha256(block).digest())
        out.flush()
        (n,) = struct.unpack(">I", inp.read(4))
        wanted = struct.unpack(">%dI" % n, inp.read(4 * n)) if n else ()
        for index in wanted:
            f.seek(index * chunk_size)
            block = f.read(chunk_size)
            packed = zlib.compress(block, 1)
            if len(packed) < len(block) * 0.9:
                out.write(struct.pack(">IBI", index, 1, len(packed)) + packed)
            else:
                out.write(struct.pack(">IBI", index, 0, len(block)) + block)
        out.write(b"ASTKDONE")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
