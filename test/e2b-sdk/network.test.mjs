// E2B's JS SDK, unchanged, against cell serve: exposed ports (HTTP, WebSocket) at getHost's
// address, private traffic with the traffic token, and the egress policy set and changed
// through the SDK.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import WebSocket from 'ws'
import { Sandbox, CommandExitError } from 'e2b'
import { startServer } from './harness.mjs'

const domain = 'cell.test'
let srv
let port // cell serve's port: every sandbox host name is served there

before(async () => {
  srv = await startServer(['--domain', domain])
  port = new URL(srv.url).port
})

after(async () => {
  if (srv) {
    const { code, left } = await srv.stop()
    assert.equal(code, 0)
    assert.deepEqual(left, [])
  }
})

// Names under the sandbox domain resolve to cell serve (what a wildcard DNS record does).
const lookup = (_host, opts, cb) => (opts && opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4))

function get(url, headers = {}) {
  return new Promise((resolve, reject) => {
    http.get(url, { lookup, headers }, (res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

// getUntil retries while the guest's server is still starting (502: port not open).
async function getUntil(url, headers, want) {
  const deadline = Date.now() + 20_000
  for (;;) {
    const r = await get(url, headers)
    if (r.status === want || r.status !== 502 || Date.now() > deadline) return r
    await new Promise((res) => setTimeout(res, 200))
  }
}

const wsServer = `
import socket, base64, hashlib, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def handle(c):
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        data += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in data.split(b"\\r\\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: " + acc + b"\\r\\n\\r\\n")
    def recvn(n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x:
                raise EOFError
            b += x
        return b
    while True:
        h = recvn(2)
        op, ln = h[0] & 15, h[1] & 127
        if ln == 126:
            ln = int.from_bytes(recvn(2), "big")
        mask = recvn(4) if h[1] & 128 else bytes(4)
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(recvn(ln)))
        if op == 8:
            c.sendall(b"\\x88\\x00")
            break
        reply = b"echo:" + p
        c.sendall(bytes([128 | op, len(reply)]) + reply)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765))
s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
`

test('exposed ports: HTTP and WebSocket at getHost, closed port 502', async () => {
  const s = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    const host = s.getHost(8000)
    assert.equal(host, `8000-${s.sandboxId}.${domain}`)
    await s.files.write('/home/user/www/index.html', `hello from ${s.sandboxId}`)
    await s.commands.run('python3 -m http.server 8000 --directory /home/user/www', { background: true })
    const r = await getUntil(`http://${host}:${port}/index.html`, {}, 200)
    assert.equal(r.status, 200, r.body)
    assert.equal(r.body, `hello from ${s.sandboxId}`)

    const closed = await get(`http://${s.getHost(9999)}:${port}/`)
    assert.equal(closed.status, 502)
    const body = JSON.parse(closed.body)
    assert.equal(body.sandboxId, s.sandboxId)
    assert.match(body.message, /port is not open/)

    await s.files.write('/home/user/ws.py', wsServer)
    await s.commands.run('python3 /home/user/ws.py', { background: true })
    const wsURL = `ws://${s.getHost(8765)}:${port}/`
    let reply
    for (let i = 0; i < 50 && reply === undefined; i++) {
      reply = await new Promise((resolve) => {
        const ws = new WebSocket(wsURL, { lookup })
        ws.on('open', () => ws.send('over the proxy'))
        ws.on('message', (m) => { resolve(m.toString()); ws.close() })
        ws.on('error', () => resolve(undefined)) // not listening yet
      })
      if (reply === undefined) await new Promise((res) => setTimeout(res, 200))
    }
    assert.equal(reply, 'echo:over the proxy')
  } finally {
    await s.kill()
  }
})

test('allowPublicTraffic false: ports need the traffic access token', async () => {
  const s = await Sandbox.create({ timeoutMs: 120_000, network: { allowPublicTraffic: false } })
  try {
    assert.ok(s.trafficAccessToken, 'create returns a traffic access token')
    await s.commands.run('python3 -m http.server 8000 --directory /etc', { background: true })
    const url = `http://${s.getHost(8000)}:${port}/hostname`
    const ok = await getUntil(url, { 'e2b-traffic-access-token': s.trafficAccessToken }, 200)
    assert.equal(ok.status, 200, ok.body)
    assert.equal((await get(url)).status, 403)
    assert.equal((await get(url, { 'e2b-traffic-access-token': 'wrong' })).status, 403)
    const info = await s.getInfo()
    assert.equal(info.network.allowPublicTraffic, false)
  } finally {
    await s.kill()
  }
})

test('egress policy through the SDK: create without internet, updateNetwork, bad input', async () => {
  const s = await Sandbox.create({ timeoutMs: 120_000, allowInternetAccess: false })
  try {
    let info = await s.getInfo()
    assert.equal(info.allowInternetAccess, false)
    // No name resolves and nothing connects.
    await assert.rejects(s.commands.run('getent hosts registry.npmjs.org'), CommandExitError)
    await assert.rejects(s.commands.run('curl -sS --max-time 5 http://203.0.113.80/'), CommandExitError)
    // Allow one name: it resolves now; everything else stays closed.
    await s.updateNetwork({ allowOut: ['registry.npmjs.org'] })
    const r = await s.commands.run('getent hosts registry.npmjs.org')
    assert.match(r.stdout, /registry\.npmjs\.org/)
    await assert.rejects(s.commands.run('getent hosts example.org'), CommandExitError)
    info = await s.getInfo()
    assert.deepEqual(info.network.allowOut, ['registry.npmjs.org'])
    // A domain in denyOut is refused with a message naming the entry.
    await assert.rejects(s.updateNetwork({ denyOut: ['example.com'] }), /denyOut\[0\]/)
    await assert.rejects(Sandbox.create({ network: { denyOut: ['example.com'] } }), /denyOut\[0\].*domain/)
  } finally {
    await s.kill()
  }
})
