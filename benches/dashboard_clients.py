"""N open dashboards, as the admin listener sees them: each holds the environment's event stream
open (Accept: text/event-stream) and polls like the page does during a promotion (environment
and plan every 2 s, figures every 5 s). Stdlib only (asyncio), so the load it adds to the
machine is small next to what it asks of switchyard. Runs until SIGTERM or SIGINT, then prints
one line: `streams=N polls=N errors=N`.

  python3 benches/dashboard_clients.py --admin 127.0.0.1:9090 --key KEY [--clients 50]
"""

import argparse
import asyncio
import signal

ENV = "/v1/models/{model}/environments/{env}"


async def request(host, port, path, key, accept="application/json"):
    r, w = await asyncio.open_connection(host, port)
    try:
        w.write((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Api-Key {key}\r\n"
                 f"Accept: {accept}\r\nConnection: close\r\n\r\n").encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        await r.read()  # to EOF: the answer is small
        return int(head[9:12])
    finally:
        w.close()


async def stream(host, port, path, key, stats):
    """Holds one event stream open, reading whatever comes; reconnects if it ends."""
    while True:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write((f"GET {path}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Api-Key {key}\r\n"
                     "Accept: text/event-stream\r\n\r\n").encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                stats["errors"] += 1
            stats["streams"] += 1
            while await r.read(4096):
                pass
        except (OSError, asyncio.IncompleteReadError):
            stats["errors"] += 1
        await asyncio.sleep(1)


async def poll(host, port, path, key, stats, i):
    await asyncio.sleep((i % 20) / 10)  # spread the clients over the period, as real tabs are
    tick = 0
    while True:
        targets = [path, path + "/plan"] + ([path + "/figures"] if tick % 5 == 0 else [])
        for t in targets:
            try:
                status = await request(host, port, t, key)
                stats["polls"] += 1
                if status != 200:
                    stats["errors"] += 1
            except (OSError, asyncio.IncompleteReadError):
                stats["errors"] += 1
        tick += 2
        await asyncio.sleep(2)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True, help="HOST:PORT of the admin listener")
    ap.add_argument("--key", required=True)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--model", default="default")
    ap.add_argument("--environment", default="production")
    a = ap.parse_args()
    host, port = a.admin.rsplit(":", 1)
    path = ENV.format(model=a.model, env=a.environment)
    stats = {"streams": 0, "polls": 0, "errors": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    tasks = []
    for i in range(a.clients):
        tasks.append(asyncio.create_task(stream(host, int(port), path, a.key, stats)))
        tasks.append(asyncio.create_task(poll(host, int(port), path, a.key, stats, i)))
    await stop.wait()
    for t in tasks:
        t.cancel()
    print(f"streams={stats['streams']} polls={stats['polls']} errors={stats['errors']}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
