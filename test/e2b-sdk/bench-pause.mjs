// Issue 28's table through E2B's JS SDK against cell serve: what pause, resume (connect),
// createSnapshot, a create from that snapshot and a fork cost after the sandbox wrote nothing,
// 500 MB or 2 GB to its disk, and a pause after 300 MB went through the page cache and was
// dropped. One JSON line per measurement: {name, written_mb, n, median_ms, min_ms, max_ms}.
// Run: npm run bench-pause (WRITES=0,500,2000 N=3 to choose).
import { Sandbox } from 'e2b'
import { startServer, time } from './harness.mjs'

function report(name, writtenMB, ms, extra = {}) {
  const s = [...ms].sort((a, b) => a - b)
  const r = (x) => Math.round(x * 10) / 10
  console.log(JSON.stringify({ name, written_mb: writtenMB, n: s.length, median_ms: r(s[Math.floor((s.length - 1) / 2)]), min_ms: r(s[0]), max_ms: r(s[s.length - 1]), ...extra }))
}

// Non-zero data (QEMU stores zeroes as holes), written through the guest's page cache and synced.
async function write(sbx, mb) {
  if (mb === 0) return
  const r = await sbx.commands.run(`yes cellcellcellcell | head -c ${mb}M > /home/user/written && sync`, { timeoutMs: 1_200_000, user: 'root' })
  if (r.exitCode !== 0) throw new Error(`writing ${mb} MB: ${r.stderr}`)
}

async function alive(sbx) {
  const r = await sbx.commands.run('echo ok')
  if (r.stdout.trim() !== 'ok') throw new Error(`the sandbox answered ${JSON.stringify(r.stdout)}`)
}

const n = Number(process.env.N || 3)
const writes = (process.env.WRITES || '0,500,2000').split(',').map(Number)
const srv = await startServer(['--disk-size', String(Math.max(4096, 2048 + 2 * Math.max(...writes)))])
try {
  for (const mb of writes) {
    const pause1 = []; const pause2 = []; const resume1 = []; const resume2 = []
    const snap = []; const fromSnap = []; const fork = []
    for (let i = 0; i < n; i++) {
      const sbx = await Sandbox.create({ timeoutMs: 1_800_000 })
      await write(sbx, mb)
      pause1.push(await time(() => sbx.pause()))
      resume1.push(await time(() => sbx.connect()))
      await alive(sbx)
      pause2.push(await time(() => sbx.pause()))
      resume2.push(await time(() => sbx.connect()))
      await alive(sbx)
      let snapshot
      snap.push(await time(async () => { snapshot = await sbx.createSnapshot() }))
      let child
      fromSnap.push(await time(async () => { child = await Sandbox.create(snapshot.snapshotId, { timeoutMs: 60_000 }) }))
      await alive(child)
      await child.kill()
      if (typeof sbx.fork === 'function') {
        let forked
        fork.push(await time(async () => { [forked] = await sbx.fork() }))
        if (forked instanceof Error) throw forked
        await alive(forked)
        await forked.kill()
      }
      await sbx.kill()
      await Sandbox.deleteSnapshot?.(snapshot.snapshotId).catch(() => {})
    }
    report('pause_first', mb, pause1)
    report('resume_first', mb, resume1)
    report('pause_second', mb, pause2)
    report('resume_second', mb, resume2)
    report('create_snapshot', mb, snap)
    report('create_from_snapshot', mb, fromSnap)
    if (fork.length) report('fork', mb, fork)
  }

  // A pause 5 s after 300 MB went through the page cache and was dropped, beside a clean one.
  const clean = []; const dropped = []
  for (let i = 0; i < n; i++) {
    for (const drop of [false, true]) {
      const sbx = await Sandbox.create({ timeoutMs: 600_000 })
      if (drop) {
        await write(sbx, 300)
        const r = await sbx.commands.run('rm /home/user/written && sync && echo 3 > /proc/sys/vm/drop_caches', { user: 'root' })
        if (r.exitCode !== 0) throw new Error(`dropping the cache: ${r.stderr}`)
      } else {
        await alive(sbx)
      }
      // The guest reports freed memory a few seconds after it was freed (free page reporting);
      // both arms wait alike.
      await new Promise((r) => setTimeout(r, 5000))
      ;(drop ? dropped : clean).push(await time(() => sbx.pause()))
      await sbx.kill()
    }
  }
  report('pause_clean', 0, clean)
  report('pause_after_dropped_300MB_cache', 300, dropped)
} finally {
  await srv.stop()
}
