/**
 * Entry point. `#fake=<n>` shows a fabricated fleet of n nodes (screenshots, benchmark);
 * otherwise the real source: a libp2p peer in a Web Worker that joins the mesh through a daemon.
 */
import { render } from 'preact'
import { App } from './app.tsx'
import { FakeFleetSource } from './fake-fleet.ts'
import { WorkerFleetSource } from './worker-source.ts'
import { readHash } from './hash-params.ts'
import './styles.css'

const params = readHash()
const fake = params.get('fake')
const source =
  fake !== null
    ? new FakeFleetSource(Math.min(10_000, Number(fake) || 100))
    : new WorkerFleetSource()
const root = document.getElementById('app')
if (root !== null) render(<App source={source} />, root)
