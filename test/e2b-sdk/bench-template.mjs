// Template benchmarks through E2B's JS SDK: create from a built template (a start command
// running) against create from base, interleaved; a rebuild with every layer cached; the build
// of fromBaseImage().aptInstall(['cowsay']) with its time per step; disk per layer. One JSON
// line per measurement. Run: npm run bench-template (N creates of each, default 20).
import { execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, writeFileSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox, Template, waitForPort } from 'e2b'
import { startServer, report, time, reservedOpenings } from './harness.mjs'





const n = Number(process.env.N || 20)
const srv = await startServer(await reservedOpenings('deb.debian.org'))
try {
  const ctx = mkdtempSync(join(tmpdir(), 'cell-bench-ctx-'))
  mkdirSync(join(ctx, 'app'))
  writeFileSync(join(ctx, 'app', 'index.html'), 'hello\n')
  const app = () => Template({ fileContextPath: ctx }).fromBaseImage()
    .copy('app', '/app').setWorkdir('/app').setEnvs({ MODE: 'bench' })
    .runCmd('echo built > built.txt')
    .setStartCmd('python3 -m http.server 8000', waitForPort(8000))
  const built = await time(() => Template.build(app(), 'bench-app'))
  report('template_build_uncached', [built], { steps: 4 })

  const rebuilds = []
  for (let i = 0; i < 5; i++) rebuilds.push(await time(() => Template.build(app(), 'bench-app')))
  report('template_rebuild_all_cached', rebuilds)

  // Side by side: create from base and from the template, alternating (each killed after).
  const base = []
  const tpl = []
  for (let i = 0; i < n; i++) {
    for (const [name, out] of [['base', base], ['bench-app', tpl]]) {
      let s
      out.push(await time(async () => { s = await Sandbox.create(name, { timeoutMs: 60_000 }) }))
      await s.kill()
    }
  }
  report('sdk_create_base', base)
  report('sdk_create_built_template', tpl, { ratio_to_base: Math.round((tpl.sort((a, b) => a - b)[tpl.length >> 1] / base.sort((a, b) => a - b)[base.length >> 1]) * 100) / 100 })

  // Disk per layer: layers share lower disk layers by hard links, so du over all of them at
  // once counts each file once; the memory files are each layer's own.
  const tdir = join(srv.home, 'templates')
  const layers = readdirSync(tdir).filter((d) => d.startsWith('layer-'))
  const files = (pred) => layers.flatMap((d) => readdirSync(join(tdir, d, 'snap')).filter(pred).map((f) => join(tdir, d, 'snap', f)))
  const du = (paths) => Number(execFileSync('du', ['-skc', ...paths]).toString().trim().split('\n').pop().split('\t')[0]) / 1024
  const qcow2 = du(files((f) => f.endsWith('.qcow2')))
  const mem = du(files((f) => f === 'mem'))
  console.log(JSON.stringify({ name: 'layer_disk', layers: layers.length, disk_layers_mib_per_layer: Math.round(qcow2 / layers.length * 10) / 10,
    memory_mib_per_layer: Math.round(mem / layers.length), total_mib: Math.round(du(layers.map((d) => join(tdir, d)))) }))

  // apt: where a package build's time goes (the log's timestamps per step).
  const entries = []
  const aptMs = await time(() => Template.build(Template().fromBaseImage().aptInstall(['cowsay']), 'bench-apt', { onBuildLogs: (e) => entries.push(e) }))
  const marks = entries.filter((e) => /^(RUN|building|done in|template saved|VM started|build finished)/.test(e.message)).map((e) => `${e.timestamp.toISOString().slice(11, 23)} ${e.message.slice(0, 80)}`)
  report('template_build_apt_cowsay', [aptMs], { marks })
} finally {
  const { code } = await srv.stop()
  if (code !== 0) process.exitCode = 1
}
