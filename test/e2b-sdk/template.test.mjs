// E2B's JS SDK, unchanged, builds templates against cell serve: Template.build with apt and npm
// packages, COPY of a local directory, ENV, WORKDIR, RUN, USER and a start command that is
// running in every sandbox of the template; rebuilds from the layer cache; the errors.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, copyFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox, Template, waitForPort } from 'e2b'
import { startServer, reservedOpenings } from './harness.mjs'

const domain = 'cell.test'
let srv
let port
let ctxDir


before(async () => {
  srv = await startServer(['--domain', domain, ...(await reservedOpenings('deb.debian.org')), ...(await reservedOpenings('registry.npmjs.org'))])
  port = new URL(srv.url).port
  ctxDir = mkdtempSync(join(tmpdir(), 'cell-tpl-ctx-'))
  mkdirSync(join(ctxDir, 'app', 'sub'), { recursive: true })
  writeFileSync(join(ctxDir, 'app', 'index.html'), 'hello from the template\n')
  writeFileSync(join(ctxDir, 'app', 'sub', 'data.txt'), 'nested\n')
  // The CAs this host trusts (where an egress proxy re-signs TLS, as on Cell's own machines, its
  // CA is among them): npm in the guest needs them to reach its registry.
  copyFileSync(process.env.NODE_EXTRA_CA_CERTS || '/etc/ssl/certs/ca-certificates.crt', join(ctxDir, 'host-cas.pem'))
})

after(async () => {
  rmSync(ctxDir, { recursive: true, force: true })
  if (srv) {
    const { code, left } = await srv.stop()
    assert.equal(code, 0)
    assert.deepEqual(left, [])
  }
})

const lookup = (_host, opts, cb) => (opts && opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4))

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { lookup }, (res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

function app(marker) {
  return Template({ fileContextPath: ctxDir })
    .fromBaseImage()
    .aptInstall(['cowsay'])
    .copy('host-cas.pem', '/opt/cas/host-cas.pem')
    .setEnvs({ NODE_EXTRA_CA_CERTS: '/opt/cas/host-cas.pem' })
    .npmInstall(['left-pad'], { g: true })
    .copy('app', '/app')
    .setWorkdir('/app')
    .setEnvs({ MODE: 'prod', GREETING: 'hi from $MODE', HOME_BIN: '$HOME/bin' })
    .runCmd(`echo ${marker} > /app/built.txt`)
    .setUser('user')
    .setStartCmd('python3 -m http.server 8000', waitForPort(8000))
}

test('Template.build: packages, files, env, workdir, user, and a server already listening', async () => {
  const logs = []
  const t0 = Date.now()
  const info = await Template.build(app('first'), 'my-app:v1', { onBuildLogs: (e) => logs.push(e) })
  const took = Date.now() - t0
  assert.ok(info.templateId, 'a template id')
  assert.ok(logs.some((e) => /RUN apt-get/.test(e.message)), 'the apt step is in the log')
  assert.ok(logs.some((e) => /RUN npm install -g left-pad/.test(e.message)), 'the npm step is in the log')
  console.log(`first build: ${took} ms, ${logs.length} log entries`)

  const sbx = await Sandbox.create('my-app:v1')
  try {
    const r = await sbx.commands.run('cat /app/index.html /app/sub/data.txt /app/built.txt; echo "$MODE|$GREETING|$HOME_BIN"; pwd; whoami; stat -c %U /app/index.html; node -e "console.log(require(\'/usr/local/lib/node_modules/left-pad\')(7, 3, 0))"; /usr/games/cowsay moo | tail -1')
    const lines = r.stdout.trim().split('\n')
    assert.equal(lines[0], 'hello from the template')
    assert.equal(lines[1], 'nested')
    assert.equal(lines[2], 'first')
    assert.equal(lines[3], 'prod|hi from prod|/home/user/bin', 'ENV values are expanded in the guest')
    assert.equal(lines[4], '/app', 'sandboxes start in the last WORKDIR')
    assert.equal(lines[5], 'user')
    assert.equal(lines[6], 'user', 'COPY gives the files to the current user')
    assert.equal(lines[7], '007', 'left-pad is installed globally by npm')
    assert.match(r.stdout, /\|\|/, 'cowsay is installed')
    // The start command runs in the sandbox from its first moment: no wait here.
    const gi = await sbx.getInfo()
    assert.equal(gi.templateId, info.templateId, 'a sandbox reports its template\'s id')
    assert.equal((await sbx.commands.run('echo $E2B_TEMPLATE_ID')).stdout.trim(), info.templateId)
    const res = await get(`http://${sbx.getHost(8000)}:${port}/index.html`)
    assert.equal(res.status, 200)
    assert.equal(res.body, 'hello from the template\n')
  } finally {
    await sbx.kill()
  }
  assert.equal(await Template.exists('my-app'), true)
  assert.equal(await Template.exists('my-app', { apiKey: srv.keyB }), false, 'not another team\'s')
})

test('a rebuild is all cache hits; changing one step rebuilds it and those after it; skipCache forces', async () => {
  const cachedLogs = []
  const t0 = Date.now()
  await Template.build(app('first'), 'my-app:v1', { onBuildLogs: (e) => cachedLogs.push(e.message) })
  const cachedMs = Date.now() - t0
  const cached = cachedLogs.filter((m) => m.startsWith('CACHED'))
  assert.equal(cached.length, 10, `9 steps and finalize cached:\n${cachedLogs.join('\n')}`)
  console.log(`cached rebuild: ${cachedMs} ms`)

  const changed = []
  await Template.build(app('second'), 'my-app:v2', { onBuildLogs: (e) => changed.push(e.message) })
  assert.equal(changed.filter((m) => m.startsWith('CACHED')).length, 7, `apt, the CAs, their env, npm, copy, workdir and env cached:\n${changed.join('\n')}`)
  const sbx = await Sandbox.create('my-app:v2')
  try {
    assert.equal((await sbx.commands.run('cat /app/built.txt')).stdout, 'second\n')
  } finally {
    await sbx.kill()
  }
  const v1 = await Sandbox.create('my-app:v1')
  try {
    assert.equal((await v1.commands.run('cat /app/built.txt')).stdout, 'first\n', 'v1 is still the first build')
  } finally {
    await v1.kill()
  }

  const forced = []
  await Template.build(Template().fromBaseImage().skipCache().runCmd('echo once > /tmp/x'), 'forced', { onBuildLogs: (e) => forced.push(e.message) })
  await Template.build(Template().fromBaseImage().skipCache().runCmd('echo once > /tmp/x'), 'forced', { onBuildLogs: (e) => forced.push(e.message) })
  assert.equal(forced.filter((m) => m.startsWith('CACHED')).length, 0, 'skipCache rebuilds')
})

test('fromTemplate builds on a team template; tags; delete refused while used', async () => {
  await Template.build(Template().fromTemplate('my-app:v1').runCmd('echo child > child.txt'), 'child')
  const sbx = await Sandbox.create('child')
  try {
    const r = await sbx.commands.run('cat /app/built.txt /app/child.txt; pwd')
    assert.equal(r.stdout, 'first\nchild\n/app\n', 'the parent\'s files, user and workdir carry over')
  } finally {
    await sbx.kill()
  }
  const assigned = await Template.assignTags('my-app:v1', ['stable'])
  assert.deepEqual(assigned.tags, ['stable'])
  const tags = (await Template.getTags('my-app')).map((t) => t.tag).sort()
  assert.deepEqual(tags, ['stable', 'v1', 'v2'])
  const stable = await Sandbox.create('my-app:stable')
  const del = await fetch(`${srv.url}/templates/my-app`, { method: 'DELETE', headers: { 'X-API-KEY': srv.keyA } })
  assert.equal(del.status, 409, 'a template a sandbox runs from cannot be deleted')
  await stable.kill()
  await Template.removeTags('my-app', 'stable')
  await assert.rejects(Sandbox.create('my-app:stable'), /404|not found/i)
  const del2 = await fetch(`${srv.url}/templates/child`, { method: 'DELETE', headers: { 'X-API-KEY': srv.keyA } })
  assert.equal(del2.status, 204)
  await assert.rejects(Sandbox.create('child'), /404|not found/i)
})

test('fromDockerfile: the SDK translates a Dockerfile into steps that Cell builds', async () => {
  const df = [
    'FROM e2bdev/base',
    'ENV GREETING=hello',
    'COPY app /opt/app',
    'WORKDIR /opt/app',
    'RUN echo "$GREETING from $(whoami)" > out.txt',
  ].join('\n')
  await Template.build(Template({ fileContextPath: ctxDir }).fromDockerfile(df), 'from-df')
  const sbx = await Sandbox.create('from-df')
  try {
    const r = await sbx.commands.run('cat out.txt index.html; pwd; whoami')
    // The SDK starts a Dockerfile as root in / and ends it as user: the RUN was root's.
    assert.equal(r.stdout, 'hello from root\nhello from the template\n/opt/app\nuser\n')
  } finally {
    await sbx.kill()
  }
})

test('a failing RUN names its step and shows its output', async () => {
  const t = Template().fromBaseImage().runCmd('echo fine').runCmd('echo about to fail; echo oops >&2; exit 3')
  await assert.rejects(Template.build(t, 'broken'), (err) => {
    assert.match(err.message, /exited with code 3/)
    assert.match(err.message, /oops/)
    return true
  })
  // The status says which step.
  const list = await (await fetch(`${srv.url}/templates`, { headers: { 'X-API-KEY': srv.keyA } })).json()
  const broken = list.find((x) => x.aliases.includes('broken'))
  assert.equal(broken.buildStatus, 'error')
  const st = await (await fetch(`${srv.url}/templates/${broken.templateID}/builds/${broken.buildID}/status`, { headers: { 'X-API-KEY': srv.keyA } })).json()
  assert.equal(st.reason.step, '2')
})

test('bad requests: names, bases, file hashes, uploads', async () => {
  const h = { 'X-API-KEY': srv.keyA, 'Content-Type': 'application/json' }
  const post = (path, body) => fetch(`${srv.url}${path}`, { method: 'POST', headers: h, body: JSON.stringify(body) })
  let r = await post('/v3/templates', { name: 'Bad Name!' })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /name/)
  r = await post('/v3/templates', { name: 'ok-name', cpuCount: 99 })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /cpuCount/)
  const created = await (await post('/v3/templates', { name: 'ok-name' })).json()
  r = await post(`/v2/templates/${created.templateID}/builds/${created.buildID}`, { fromTemplate: 'no-such-template', steps: [] })
  assert.equal(r.status, 404)
  r = await post(`/v2/templates/${created.templateID}/builds/${created.buildID}`, { fromImage: 'Python 3.12!', steps: [] })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /fromImage/)
  r = await post(`/v2/templates/${created.templateID}/builds/${created.buildID}`, { fromImage: 'python:3.12', fromImageRegistry: { type: 'aws' }, steps: [] })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /fromImageRegistry/)
  r = await post(`/v2/templates/${created.templateID}/builds/${created.buildID}`, { steps: [{ type: 'COPY', args: ['a', '/a'], filesHash: 'zz' }] })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /filesHash/)
  r = await post(`/v2/templates/${created.templateID}/builds/${created.buildID}`, { steps: [{ type: 'COPY', args: ['a', '/a'], filesHash: 'a'.repeat(64) }] })
  assert.equal(r.status, 400)
  assert.match((await r.json()).message, /not uploaded/)
  r = await fetch(`${srv.url}/templates/${created.templateID}/files/nothex`, { headers: h })
  assert.equal(r.status, 400)
  const files = await (await fetch(`${srv.url}/templates/${created.templateID}/files/${'b'.repeat(64)}`, { headers: h })).json()
  assert.equal(files.present, false)
  const bad = new URL(files.url)
  bad.searchParams.set('signature', '0'.repeat(64))
  r = await fetch(bad, { method: 'PUT', body: 'x' })
  assert.equal(r.status, 403, 'an upload URL not signed by Cell is refused')
  r = await fetch(files.url, { method: 'PUT', body: 'tar bytes' })
  assert.ok(r.ok, `the signed URL takes the upload: ${r.status}`)
  const again = await (await fetch(`${srv.url}/templates/${created.templateID}/files/${'b'.repeat(64)}`, { headers: h })).json()
  assert.equal(again.present, true)
  const other = await fetch(`${srv.url}/templates/${created.templateID}/files/${'b'.repeat(64)}`, { headers: { 'X-API-KEY': srv.keyB } })
  assert.equal(other.status, 404, 'another team does not see the template')
})

test('GET /v2/templates pages with limit and X-Next-Token, oldest first', async () => {
  const h = { 'X-API-KEY': srv.keyA }
  const all = await (await fetch(`${srv.url}/templates`, { headers: h })).json()
  assert.ok(all.length >= 3, `templates made by the tests above: ${all.length}`)
  const seen = []
  let token = ''
  for (let pages = 0; pages < 50; pages++) {
    const r = await fetch(`${srv.url}/v2/templates?limit=2${token ? `&nextToken=${encodeURIComponent(token)}` : ''}`, { headers: h })
    assert.equal(r.status, 200)
    const page = await r.json()
    assert.ok(page.length <= 2)
    seen.push(...page.map((t) => t.templateID))
    token = r.headers.get('x-next-token')
    if (!token) break
  }
  assert.deepEqual([...seen].sort(), all.map((t) => t.templateID).sort(), 'every template once')
  assert.equal(new Set(seen).size, seen.length)
  assert.equal((await fetch(`${srv.url}/v2/templates?limit=0`, { headers: h })).status, 400)
  assert.equal((await fetch(`${srv.url}/v2/templates?nextToken=nope`, { headers: h })).status, 400)
  const other = await (await fetch(`${srv.url}/v2/templates`, { headers: { 'X-API-KEY': srv.keyB } })).json()
  assert.ok(other.every((t) => !seen.includes(t.templateID)), 'not another team\'s')
})
