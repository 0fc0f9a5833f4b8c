// E2B's JS SDK, unchanged, against cell serve: sandboxes, pause/resume, commands, PTY, files,
// auth, teams.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { Sandbox, Template, CommandExitError, NotFoundError, SandboxNotFoundError, AuthenticationError, FileType, FilesystemEventType, TimeoutError } from 'e2b'
import { startServer } from './harness.mjs'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

let srv
let sbx // shared by the command and file tests

before(async () => {
  srv = await startServer()
  sbx = await Sandbox.create({ timeoutMs: 600_000, metadata: { suite: 'shared' }, envs: { SANDBOX_WIDE: 'yes' } })
})

after(async () => {
  if (sbx) await sbx.kill().catch(() => {})
  if (srv) {
    const { code, left } = await srv.stop()
    assert.equal(code, 0, 'cell serve exits 0 on SIGTERM')
    assert.deepEqual(left, [], 'no VM directory is left behind')
  }
})

test('create, getInfo, isRunning, kill', async () => {
  const s = await Sandbox.create('base', { timeoutMs: 60_000, metadata: { who: 'create-test' } })
  try {
    assert.match(s.sandboxId, /^[a-z0-9]+$/)
    const info = await s.getInfo()
    assert.equal(info.sandboxId, s.sandboxId)
    assert.equal(info.templateId, 'base')
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { who: 'create-test' })
    assert.ok(info.endAt.getTime() - info.startedAt.getTime() >= 55_000)
    assert.equal(await s.isRunning(), true)
  } finally {
    assert.equal(await s.kill(), true)
  }
  assert.equal(await s.isRunning(), false)
  assert.equal(await Sandbox.kill(s.sandboxId), false, 'killing twice reports not found')
  await assert.rejects(Sandbox.getInfo(s.sandboxId), SandboxNotFoundError)
  // A killed sandbox answers through the proxy as E2B's edge does.
  const r = await fetch(`${srv.url}/health`, { headers: { 'E2b-Sandbox-Id': s.sandboxId, 'E2b-Sandbox-Port': '49983' } })
  assert.equal(r.status, 502)
  const body = await r.json()
  assert.equal(body.code, 502)
  assert.equal(body.sandboxId, s.sandboxId)
  await assert.rejects(s.commands.run('true'))
})

test('list with metadata filter and pagination', async () => {
  const tag = randomBytes(4).toString('hex')
  const made = []
  try {
    for (let i = 0; i < 3; i++) made.push(await Sandbox.create({ timeoutMs: 120_000, metadata: { tag, i: String(i) } }))
    const pager = Sandbox.list({ query: { metadata: { tag } }, limit: 2 })
    const page1 = await pager.nextItems()
    assert.equal(page1.length, 2)
    assert.equal(pager.hasNext, true)
    const page2 = await pager.nextItems()
    assert.equal(page2.length, 1)
    assert.equal(pager.hasNext, false)
    const ids = [...page1, ...page2].map((s) => s.sandboxId).sort()
    assert.deepEqual(ids, made.map((s) => s.sandboxId).sort())
    const one = await Sandbox.list({ query: { metadata: { tag, i: '1' } } }).nextItems()
    assert.deepEqual(one.map((s) => s.sandboxId), [made[1].sandboxId])
    const running = await Sandbox.list({ query: { state: ['running'], metadata: { tag } } }).nextItems()
    assert.equal(running.length, 3)
  } finally {
    await Promise.all(made.map((s) => s.kill()))
  }
})

test('setTimeout shortens and the sandbox expires', async () => {
  const s = await Sandbox.create({ timeoutMs: 300_000 })
  await s.setTimeout(2_000)
  const info = await s.getInfo()
  assert.ok(info.endAt.getTime() - Date.now() < 3_000)
  await new Promise((r) => setTimeout(r, 3_500))
  assert.equal(await s.isRunning(), false)
  await assert.rejects(Sandbox.getInfo(s.sandboxId), SandboxNotFoundError)
})

test('pause and connect (resume) keep files and processes', async () => {
  const s = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    await s.files.write('kept.txt', 'still here')
    const bg = await s.commands.run('sleep 600', { background: true, timeoutMs: 0 }) // 0: it outlives the SDK's 60 s default
    assert.equal(await s.pause(), true)
    assert.equal((await s.getInfo()).state, 'paused')
    assert.equal(await s.pause(), false, 'pausing a paused sandbox reports false')
    const listed = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
    assert.ok(listed.some((x) => x.sandboxId === s.sandboxId))
    const back = await Sandbox.connect(s.sandboxId, { timeoutMs: 60_000 })
    assert.equal((await back.getInfo()).state, 'running')
    assert.equal(await back.files.read('kept.txt'), 'still here')
    const procs = await back.commands.list()
    assert.ok(procs.some((p) => p.pid === bg.pid), 'the background process survived the pause')
  } finally {
    await Sandbox.kill(s.sandboxId)
  }
})

test('a plain connect() keeps the sandbox\'s own timeout (the SDK sends none)', async () => {
  const s = await Sandbox.create({ timeoutMs: 900_000 })
  try {
    // A running sandbox: connect() without a timeout leaves its end where it was.
    const before = (await s.getInfo()).endAt.getTime()
    await Sandbox.connect(s.sandboxId)
    assert.equal((await s.getInfo()).endAt.getTime(), before, 'connect() moved a running sandbox\'s end')
    assert.equal(await s.pause(), true)
    const t0 = Date.now()
    const back = await Sandbox.connect(s.sandboxId) // resumes: 15 s used to be its whole new life
    const end = (await back.getInfo()).endAt.getTime()
    assert.ok(end >= t0 + 880_000 && end <= Date.now() + 901_000, `endAt ${new Date(end).toISOString()} is not ~900 s after the resume`)
    await new Promise((r) => setTimeout(r, 20_000))
    assert.equal((await back.commands.run('echo alive')).stdout, 'alive\n')
    assert.equal((await back.getInfo()).state, 'running')
  } finally {
    await Sandbox.kill(s.sandboxId)
  }
})

test('connect({ onResume: reboot }) boots the paused sandbox from its disk', async () => {
  const s = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    await s.files.write('kept.txt', 'on disk')
    await s.commands.run('sync')
    const bg = await s.commands.run('sleep 600', { background: true, timeoutMs: 0 })
    assert.equal(await s.pause(), true)
    const back = await Sandbox.connect(s.sandboxId, { onResume: 'reboot' })
    assert.equal(await back.files.read('kept.txt'), 'on disk')
    const procs = await back.commands.list()
    assert.ok(bg.pid > 0 && !procs.some((p) => (p.args || []).join(' ').includes('sleep 600')), 'a process outlived the reboot')
    const up = parseFloat((await back.commands.run('cut -d" " -f1 /proc/uptime')).stdout)
    assert.ok(up < 60, `uptime ${up} s: the guest was not rebooted`)
    assert.ok((await back.getInfo()).endAt.getTime() > Date.now() + 100_000, 'the reboot kept the sandbox\'s own timeout')
  } finally {
    await Sandbox.kill(s.sandboxId)
  }
})

test('lifecycle onTimeout pause: the sandbox is paused, not killed, at its timeout', async () => {
  const s = await Sandbox.create({ timeoutMs: 3_000, lifecycle: { onTimeout: 'pause' } })
  try {
    await s.files.write('x.txt', 'x')
    let state
    for (let i = 0; i < 100 && state !== 'paused'; i++) {
      await new Promise((r) => setTimeout(r, 200))
      state = (await Sandbox.getInfo(s.sandboxId)).state
    }
    assert.equal(state, 'paused')
    const back = await Sandbox.connect(s.sandboxId, { timeoutMs: 60_000 })
    assert.equal(await back.files.read('x.txt'), 'x')
  } finally {
    await Sandbox.kill(s.sandboxId)
  }
})

test('commands: stdout, stderr, exit code, env, cwd, user', async () => {
  const r = await sbx.commands.run('echo out; echo err >&2')
  assert.equal(r.stdout, 'out\n')
  assert.equal(r.stderr, 'err\n')
  assert.equal(r.exitCode, 0)
  const err = await sbx.commands.run('exit 3').catch((e) => e)
  assert.ok(err instanceof CommandExitError)
  assert.equal(err.exitCode, 3)
  assert.equal(err.message, 'exit status 3', "the error's message says how the command ended, as on E2B")
  const env = await sbx.commands.run('echo $FOO $SANDBOX_WIDE', { envs: { FOO: 'bar' } })
  assert.equal(env.stdout, 'bar yes\n')
  const cwd = await sbx.commands.run('pwd', { cwd: '/tmp' })
  assert.equal(cwd.stdout, '/tmp\n')
  assert.equal((await sbx.commands.run('pwd', { cwd: '~' })).stdout, '/home/user\n', '~ is the home, as on E2B')
  assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n')
  assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout, 'root\n')
  assert.equal((await sbx.commands.run('echo $HOME')).stdout, '/home/user\n')
  // E2B's own variables, as its envd sets them.
  assert.equal((await sbx.commands.run('echo $E2B_SANDBOX $E2B_SANDBOX_ID $E2B_TEMPLATE_ID')).stdout, `true ${sbx.sandboxId} base\n`)
  // A user added after envd started is found (envd's user cache follows /etc/passwd).
  await sbx.commands.run('useradd -m bob', { user: 'root' })
  assert.equal((await sbx.commands.run('whoami; echo $HOME', { user: 'bob' })).stdout, 'bob\n/home/bob\n')
  const py = await sbx.commands.run('python3 -c "print(6*7)"')
  assert.equal(py.stdout, '42\n')
})

test('commands: onStdout streams before the command ends', async () => {
  const seen = []
  const started = Date.now()
  const h = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.3; done', {
    background: true,
    onStdout: (d) => seen.push([d, Date.now() - started]),
  })
  const r = await h.wait()
  assert.equal(r.stdout, 'line1\nline2\nline3\n')
  assert.ok(seen.length >= 2, 'output arrives in several chunks')
  assert.ok(seen[0][1] < seen[seen.length - 1][1] - 300, 'the first chunk arrives well before the last')
})

test('commands: background, connect, sendStdin, kill, list', async () => {
  const h = await sbx.commands.run('read line; echo got:$line; sleep 600', { background: true, stdin: true })
  const procs = await sbx.commands.list()
  assert.ok(procs.some((p) => p.pid === h.pid))
  const out = []
  const again = await sbx.commands.connect(h.pid, { onStdout: (d) => out.push(d) })
  await sbx.commands.sendStdin(h.pid, 'hello\n')
  for (let i = 0; i < 100 && !out.join('').includes('got:hello'); i++) await new Promise((r) => setTimeout(r, 50))
  assert.equal(out.join(''), 'got:hello\n')
  assert.equal(await sbx.commands.kill(h.pid), true)
  const res = await again.wait().catch((e) => e)
  assert.ok(res instanceof CommandExitError)
  assert.equal(res.exitCode, 137)
  assert.equal(res.message, 'signal: killed')
  assert.equal(await sbx.commands.kill(h.pid), false, 'a dead process is not found')
})

test('commands: timeoutMs ends the command, as on E2B', async () => {
  await assert.rejects(sbx.commands.run('sleep 300; echo never', { timeoutMs: 1000 }), TimeoutError)
  let left
  for (let i = 0; i < 50; i++) {
    left = (await sbx.commands.list()).filter((p) => p.args.some((a) => a.includes('sleep 300')))
    if (left.length === 0) break
    await new Promise((r) => setTimeout(r, 100))
  }
  assert.deepEqual(left, [], 'the timed-out command is no longer running')
  // timeoutMs: 0 is no limit.
  assert.equal((await sbx.commands.run('sleep 1.5; echo done', { timeoutMs: 0 })).stdout, 'done\n')
})

test('pty: create, sendInput, resize', async () => {
  let out = ''
  const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += new TextDecoder().decode(d) } })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; tty\n'))
  for (let i = 0; i < 100 && !/\/dev\/pts\/\d+/.test(out); i++) await new Promise((r) => setTimeout(r, 50))
  assert.match(out, /24 80/)
  assert.match(out, /\/dev\/pts\/\d+/)
  assert.doesNotMatch(out, /no job control/)
  await sbx.pty.resize(t.pid, { cols: 120, rows: 40 })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode('stty size; exit 5\n'))
  const r = await t.wait().catch((e) => e)
  assert.match(out, /40 120/)
  assert.equal(r.exitCode, 5)
})

test('files: write and read text, bytes, 20 MB; exists, getInfo', async () => {
  await sbx.files.write('/home/user/hello.txt', 'hello world')
  assert.equal(await sbx.files.read('/home/user/hello.txt'), 'hello world')
  assert.equal(await sbx.files.read('hello.txt'), 'hello world', 'relative paths are from the home directory')
  const bytes = randomBytes(1000)
  await sbx.files.write('data/bin.dat', bytes)
  assert.deepEqual(Buffer.from(await sbx.files.read('data/bin.dat', { format: 'bytes' })), bytes)
  const big = randomBytes(20 << 20)
  await sbx.files.write('big.bin', big)
  const sum = (await sbx.commands.run('sha256sum big.bin')).stdout.split(' ')[0]
  assert.equal(sum, createHash('sha256').update(big).digest('hex'))
  const back = Buffer.from(await sbx.files.read('big.bin', { format: 'bytes' }))
  assert.equal(back.length, big.length)
  assert.ok(back.equals(big))
  assert.equal(await sbx.files.exists('hello.txt'), true)
  assert.equal(await sbx.files.exists('nope.txt'), false)
  const info = await sbx.files.getInfo('hello.txt')
  assert.equal(info.type, FileType.FILE)
  assert.equal(info.size, 11)
  assert.equal(info.owner, 'user')
  assert.equal(info.path, '/home/user/hello.txt')
  await assert.rejects(sbx.files.read('/nope/missing'), NotFoundError)
  // /proc's files say they are empty; their content comes whole.
  const cpu = await sbx.files.read('/proc/cpuinfo')
  assert.equal(cpu, (await sbx.commands.run('cat /proc/cpuinfo')).stdout)
  assert.match(cpu, /^processor\s*: 0/)
  const asRoot = await sbx.files.write('/root/secret.txt', 'x', { user: 'root' })
  assert.equal(asRoot.path, '/root/secret.txt')
  assert.equal((await sbx.commands.run('stat -c %U /root/secret.txt', { user: 'root' })).stdout, 'root\n')
})

test('files: several files in one write, each to its own path', async () => {
  const written = await sbx.files.write([
    { path: '/tmp/multi/a.txt', data: 'A' },
    { path: 'multi/b/c.txt', data: 'C' },
  ])
  assert.deepEqual(written.map((e) => e.path), ['/tmp/multi/a.txt', '/home/user/multi/b/c.txt'])
  assert.equal(await sbx.files.read('/tmp/multi/a.txt'), 'A')
  assert.equal(await sbx.files.read('multi/b/c.txt'), 'C')
})

test('files: list, makeDir, rename, remove, metadata', async () => {
  assert.equal(await sbx.files.makeDir('tree/a/b'), true)
  assert.equal(await sbx.files.makeDir('tree/a/b'), false, 'an existing directory is reported')
  await sbx.files.write('tree/a/one.txt', '1')
  await sbx.files.write('tree/two.txt', '22')
  const top = await sbx.files.list('tree')
  assert.deepEqual(top.map((e) => e.name).sort(), ['a', 'two.txt'])
  assert.equal(top.find((e) => e.name === 'a').type, FileType.DIR)
  const deep = await sbx.files.list('tree', { depth: 3 })
  assert.deepEqual(deep.map((e) => e.path).sort(), ['/home/user/tree/a', '/home/user/tree/a/b', '/home/user/tree/a/one.txt', '/home/user/tree/two.txt'])
  const moved = await sbx.files.rename('tree/two.txt', 'tree/a/b/three.txt')
  assert.equal(moved.path, '/home/user/tree/a/b/three.txt')
  assert.equal(await sbx.files.exists('tree/two.txt'), false)
  await sbx.files.remove('tree')
  assert.equal(await sbx.files.exists('tree'), false)
  await sbx.files.write('tagged.txt', 'm', { metadata: { owner: 'team-a' } })
  const info = await sbx.files.getInfo('tagged.txt')
  assert.deepEqual(info.metadata, { owner: 'team-a' })
})

test('files: watchDir reports events', async () => {
  await sbx.files.makeDir('watched')
  const events = []
  const w = await sbx.files.watchDir('watched', (e) => events.push(e), { recursive: true })
  try {
    await sbx.files.write('watched/new.txt', 'x')
    await sbx.files.makeDir('watched/sub')
    await new Promise((r) => setTimeout(r, 300))
    await sbx.files.write('watched/sub/deep.txt', 'y')
    await sbx.files.remove('watched/new.txt')
    for (let i = 0; i < 100 && !events.some((e) => e.type === FilesystemEventType.REMOVE); i++) await new Promise((r) => setTimeout(r, 50))
  } finally {
    await w.stop()
  }
  const seen = events.map((e) => `${e.type}:${e.name}`)
  assert.ok(seen.includes(`${FilesystemEventType.CREATE}:new.txt`), seen.join(' '))
  assert.ok(seen.includes(`${FilesystemEventType.CREATE}:sub/deep.txt`), seen.join(' '))
  assert.ok(seen.includes(`${FilesystemEventType.REMOVE}:new.txt`), seen.join(' '))
})

test('signed upload and download URLs', async () => {
  const hdr = { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49983' }
  // The URLs alone, as a browser would open them: with E2B_SANDBOX_URL they name no sandbox, and
  // cell serve finds the one whose token signed them.
  const up = await sbx.uploadUrl('/home/user/signed.txt')
  assert.match(up, /signature=v1_/)
  const form = new FormData()
  form.append('file', new Blob(['signed content']), 'signed.txt')
  const r1 = await fetch(up, { method: 'POST', body: form })
  assert.equal(r1.status, 200, await r1.clone().text())
  const down = await sbx.downloadUrl('/home/user/signed.txt', { useSignatureExpiration: 60 })
  const r2 = await fetch(down)
  assert.equal(r2.status, 200)
  assert.equal(await r2.text(), 'signed content')
  const other = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    await other.files.write('/home/user/signed.txt', 'the other sandbox')
    assert.equal(await (await fetch(await other.downloadUrl('/home/user/signed.txt'))).text(), 'the other sandbox')
    assert.equal(await (await fetch(down)).text(), 'signed content')
  } finally {
    await other.kill()
  }
  assert.equal((await fetch(down, { headers: hdr })).status, 200, 'with the headers too')
  // Tampering with the path, or no signature and no token, is refused.
  const bad = new URL(down)
  bad.searchParams.set('path', '/etc/shadow')
  assert.equal((await fetch(bad)).status, 401)
  assert.equal((await fetch(bad, { headers: hdr })).status, 401)
  const plain = new URL(down)
  plain.search = '?path=/home/user/signed.txt'
  assert.equal((await fetch(plain, { headers: hdr })).status, 401)
  // A wrong access token is refused by envd for RPCs too.
  const r3 = await fetch(`${srv.url}/process.Process/List`, {
    method: 'POST', body: '{}', headers: { ...hdr, 'Content-Type': 'application/json', 'X-Access-Token': 'wrong' },
  })
  assert.equal(r3.status, 401)
})

test('metrics', async () => {
  const m = await sbx.getMetrics()
  assert.ok(m.length >= 1)
  assert.ok(m[0].memTotal > 100 << 20)
  assert.ok(m[0].memUsed > 0 && m[0].memUsed < m[0].memTotal)
  assert.ok(m[0].diskTotal > 0 && m[0].diskUsed > 0)
  assert.equal(m[0].cpuCount, 2)
})

test('API key rejected and accepted; teams are isolated', async () => {
  await assert.rejects(Sandbox.list({ apiKey: 'e2b_' + '0'.repeat(40) }).nextItems(), AuthenticationError)
  const r = await fetch(`${srv.url}/v2/sandboxes`)
  assert.equal(r.status, 401)
  assert.equal((await r.json()).code, 401)
  const mine = await Sandbox.list().nextItems()
  assert.ok(mine.some((s) => s.sandboxId === sbx.sandboxId))
  const theirs = await Sandbox.list({ apiKey: srv.keyB }).nextItems()
  assert.ok(!theirs.some((s) => s.sandboxId === sbx.sandboxId), 'team B does not see team A')
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId, { apiKey: srv.keyB }), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(sbx.sandboxId, { apiKey: srv.keyB }), false)
  await assert.rejects(Sandbox.connect(sbx.sandboxId, { apiKey: srv.keyB }))
  assert.equal(await sbx.isRunning(), true, 'team B could not kill it')
})

test('snapshots: create from one, list, delete refused while used; fork', async () => {
  const s = await Sandbox.create({ timeoutMs: 300_000 })
  try {
    await s.files.write('from-source.txt', 'source')
    const snap = await s.createSnapshot()
    assert.match(snap.snapshotId, /^[a-z0-9]+$/)
    assert.equal(await s.isRunning(), true, 'the source keeps running')
    await s.files.write('after.txt', 'later') // not in the snapshot
    const listed = await Sandbox.listSnapshots({ sandboxId: s.sandboxId }).nextItems()
    assert.ok(listed.some((x) => x.snapshotId === snap.snapshotId))
    assert.equal(await Template.exists('base'), true)
    assert.equal(await Template.exists(snap.snapshotId), true, 'a snapshot is a template name of its team')
    assert.equal(await Template.exists(snap.snapshotId, { apiKey: srv.keyB }), false, 'not of another team')
    assert.equal(await Template.exists('no-such-template'), false)
    const c = await Sandbox.create(snap.snapshotId, { timeoutMs: 60_000 })
    assert.equal(await c.files.read('from-source.txt'), 'source')
    assert.equal(await c.files.exists('after.txt'), false)
    assert.equal((await c.commands.run('hostname')).stdout.trim(), c.sandboxId)
    await assert.rejects(Sandbox.deleteSnapshot(snap.snapshotId), /409|in use|used/)
    await c.kill()
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    // Another team cannot start from it or see it.
    await assert.rejects(Sandbox.create(snap.snapshotId, { apiKey: srv.keyB }))
    const forks = await s.fork({ count: 2, timeoutMs: 60_000 })
    assert.equal(forks.length, 2)
    for (const f of forks) {
      assert.ok(!(f instanceof Error), String(f))
      assert.equal(await f.files.read('after.txt'), 'later')
      const r = await f.commands.run('head -c 16 /dev/urandom | od -An -tx1')
      f.rand = r.stdout
      await f.kill()
    }
    assert.notEqual(forks[0].rand, forks[1].rand, 'forks do not share random state')
    // The fork's snapshot goes once no fork depends on it.
    const left = readdirSync(join(srv.home, 'templates'), { withFileTypes: true }).filter((d) => d.isDirectory())
    assert.deepEqual(left.map((d) => d.name), [], 'fork snapshot removed')
  } finally {
    await Sandbox.kill(s.sandboxId)
  }
})
