#!/usr/bin/env python3
"""Opens N keep-alive TLS connections to the gateway, sends one request on
each, and holds them idle; prints the gateway's RSS before and while they
are held, and per connection; then how many are still open HOLD seconds
(default 15) later.

    idle.py PID HOST PORT N TOKEN_FILE
"""
import asyncio, os, ssl, sys

pid, host, port, n, token_file = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
token = open(token_file).read().strip()


def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def one(ctx, held, sem):
    async with sem:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
        w.write(f"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        await r.readexactly(3)  # "ok\n"
        held.append((r, w))


async def main():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    before = rss_kib()
    held, sem = [], asyncio.Semaphore(200)
    t0 = asyncio.get_running_loop().time()
    await asyncio.gather(*(one(ctx, held, sem) for _ in range(n)))
    print(f"opened in {asyncio.get_running_loop().time() - t0:.1f} s")
    await asyncio.sleep(2)
    during = rss_kib()
    print(f"{len(held)} idle keep-alive TLS connections held; gateway RSS {before} KiB before, "
          f"{during} KiB with them open: {(during - before) * 1024 / max(len(held), 1):.0f} bytes per connection")
    # Still open after longer than the 10 s header read timeout: they are
    # idle between requests, which is idle_timeout's (60 s) business.
    hold = float(os.environ.get("HOLD", "15"))
    await asyncio.sleep(hold)
    still = sum(1 for r, _ in held if not r.at_eof())
    print(f"{still} of {len(held)} still open after {hold:.0f} s more; gateway RSS {rss_kib()} KiB")
    for _, w in held:
        w.close()


asyncio.run(main())
