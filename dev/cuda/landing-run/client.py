"""Times the server from the client side (dev/cuda/landing-run/run.sh): request -> PNG,
request -> first streamed preview, then an out-of-memory request and a normal one after it."""
import json, os, sys, time, urllib.request, urllib.error

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8123"


def post(path, body, stream=False):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as e:
        return e


def wait_ready(limit=600):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            if urllib.request.urlopen(BASE + "/health", timeout=5).status == 200:
                return time.time() - t0
        except Exception:
            pass
        time.sleep(0.5)
    return None


ready = wait_ready()
print(f"serve: ready after {ready:.1f} s of waiting" if ready is not None else "serve: never ready")
body = {"prompt": "a capybara in a suit", "size": os.environ.get("QI_SIZE", "1024x1024"), "steps": 8, "seed": 1}
for k in range(3):
    t0 = time.time()
    r = post("/v1/images/generations", body)
    data = r.read()
    print(f"serve: request -> PNG (8 steps, 1024x1024) {time.time() - t0:.3f} s, HTTP {r.status}, {len(data)} bytes")
t0 = time.time()
r = post("/v1/images/generations", dict(body, seed=2, stream=True, partial_images=3))
events = []
for raw in r:
    line = raw.decode(errors="replace").strip()
    if line.startswith("event:"):
        events.append((time.time() - t0, line[6:].strip()))
for t, e in events:
    print(f"serve: stream event {e} at {t:.3f} s")
r = post("/v1/images/generations", {"prompt": "a cat", "size": "8192x8192", "steps": 2, "n": 4})
print(f"serve: 8192x8192 x4: HTTP {r.status}: {r.read().decode(errors='replace')[:700]}")
t0 = time.time()
r = post("/v1/images/generations", body)
r.read()
print(f"serve: the next request: HTTP {r.status} in {time.time() - t0:.3f} s")
print("serve: health", urllib.request.urlopen(BASE + "/health", timeout=5).read().decode())
