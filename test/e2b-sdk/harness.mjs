// Starts `cell serve` on a free port with a fresh data directory (the guest image comes from
// CELL_IMAGE_HOME, the project's cache), creates API keys for two teams, and stops it all after.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import net from 'node:net'
import dns from 'node:dns/promises'

const root = resolve(import.meta.dirname, '../..')
export const cellBin = process.env.CELL_BIN || join(root, 'bin/cell')

async function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer()
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => res(port))
    })
    s.on('error', rej)
  })
}

export async function startServer(extraArgs = []) {
  const home = mkdtempSync(join(tmpdir(), 'cell-sdk-'))
  const imageHome = process.env.CELL_IMAGE_HOME || process.env.CELL_HOME || join(process.env.HOME || '/root', '.local/share/cell')
  const env = { ...process.env, CELL_HOME: home, CELL_IMAGE_HOME: imageHome }
  delete env.CELL_RUN_DIR
  const key = (team) => execFileSync(cellBin, ['apikey', 'create', '--team', team], { env }).toString().trim()
  const keyA = key('team-a')
  const keyB = key('team-b')
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const proc = spawn(cellBin, ['serve', '--listen', `127.0.0.1:${port}`, '--log-level', 'info', ...extraArgs], { env, stdio: ['ignore', 'inherit', 'pipe'] })
  let log = ''
  proc.stderr.on('data', (d) => { log += d.toString() })
  const exited = new Promise((res) => proc.on('exit', (code, sig) => res({ code, sig })))
  const deadline = Date.now() + 600_000 // the first start may build the guest image
  for (;;) {
    try {
      const r = await fetch(`${url}/health`)
      if (r.ok) break
    } catch {}
    if (proc.exitCode !== null) throw new Error(`cell serve exited: ${proc.exitCode}\n${log}`)
    if (Date.now() > deadline) throw new Error(`cell serve did not come up\n${log}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  process.env.E2B_API_URL = url
  process.env.E2B_SANDBOX_URL = url
  process.env.E2B_API_KEY = keyA
  return {
    url, keyA, keyB, home,
    log: () => log,
    async stop() {
      proc.kill('SIGTERM')
      const { code } = await exited
      const left = readdirSync(join(home, 'run'), { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)
      rmSync(home, { recursive: true, force: true })
      return { code, left }
    },
  }
}

// reservedOpenings are the --net-allow-reserved flags that let sandboxes reach host (by name)
// when it resolves to a reserved address, as this machine's egress proxy does: an operator
// here would open it the same way.
export async function reservedOpenings(host) {
  const args = []
  for (const { address } of await dns.lookup(host, { all: true, family: 4 })) {
    if (/^(10\.|127\.|169\.254\.|172\.(1[6-9]|2\d|3[01])\.|192\.168\.|192\.0\.2\.|198\.51\.100\.|203\.0\.113\.|100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.)/.test(address)) {
      args.push('--net-allow-reserved', `${address}/32`)
    }
  }
  return args
}

// report prints one benchmark's JSON line: {name, n, median_ms, p90_ms, min_ms, max_ms, …}.
export function report(name, ms, extra = {}) {
  const s = [...ms].sort((a, b) => a - b)
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))]
  const r = (x) => Math.round(x * 100) / 100
  console.log(JSON.stringify({ name, n: s.length, median_ms: r(q(0.5)), p90_ms: r(q(0.9)), min_ms: r(s[0]), max_ms: r(s[s.length - 1]), ...extra }))
}

// time is how long fn takes, in ms.
export async function time(fn) {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}
