// Benchmarks through E2B's JS SDK against cell serve. Prints one JSON line per measurement:
// {name, n, median_ms, p90_ms, min_ms, max_ms}. Run: npm run bench (or make bench-sdk).
import { randomBytes } from 'node:crypto'
import { Sandbox } from 'e2b'
import { startServer, report, time } from './harness.mjs'



const n = Number(process.env.N || 30)
const srv = await startServer()
try {
  const creates = []
  for (let i = 0; i < 5; i++) {
    let s
    creates.push(await time(async () => { s = await Sandbox.create({ timeoutMs: 60_000 }) }))
    await s.kill()
  }
  report('sdk_create', creates)

  // Create and the first command (E2B runs it as `bash -l -c true`), as a user sees them.
  const firsts = []
  for (let i = 0; i < 5; i++) {
    let s
    firsts.push(await time(async () => {
      s = await Sandbox.create({ timeoutMs: 60_000 })
      await s.commands.run('true')
    }))
    await s.kill()
  }
  report('sdk_create_and_run_true', firsts)

  const sbx = await Sandbox.create({ timeoutMs: 600_000 })
  await sbx.commands.run('true') // warm
  const runs = []
  for (let i = 0; i < n; i++) runs.push(await time(() => sbx.commands.run('true')))
  report('sdk_commands_run_true', runs)

  const size = 100 << 20
  const data = randomBytes(size)
  const ups = []
  const downs = []
  for (let i = 0; i < 3; i++) {
    ups.push(await time(() => sbx.files.write('/tmp/big.bin', data)))
    downs.push(await time(async () => {
      const b = await sbx.files.read('/tmp/big.bin', { format: 'bytes' })
      if (b.length !== size) throw new Error(`read ${b.length} bytes`)
    }))
  }
  const mbps = (ms) => Math.round((size / 1e6) / (ms / 1000))
  report('sdk_upload_100MB', ups, { mb_per_s_median: mbps([...ups].sort((a, b) => a - b)[1]) })
  report('sdk_download_100MB', downs, { mb_per_s_median: mbps([...downs].sort((a, b) => a - b)[1]) })
  await sbx.kill()
} finally {
  await srv.stop()
}
