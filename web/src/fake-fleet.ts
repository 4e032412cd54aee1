/**
 * A fabricated fleet behind the FleetSource interface: for screenshots of every view without
 * daemons, and for measuring how fast the overview of a large fleet shows (`#fake=100`).
 * Deterministic (seeded), so screenshots are comparable from run to run.
 */
import type {
  FleetSnapshot,
  FleetSource,
  HistoryItem,
  HistoryView,
  NodeStatus,
  SignerInfo
} from './fleet-source.ts'
import { SnapshotSource } from './snapshot-source.ts'

function rng(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

export function fakeFleet(count: number, seed = 7): FleetSnapshot {
  const rand = rng(seed)
  const hex = (n: number): string =>
    Array.from({ length: n }, () => Math.floor(rand() * 16).toString(16)).join('')
  const now = Date.now()
  const latest = [hex(64)]
  const previous = [hex(64)]
  const devicesHeads = [hex(64)]
  const sites = ['berlin-3', 'lisbon-1', 'oslo-2', 'austin-7']
  const roles = ['pos', 'kiosk', 'gateway']
  const nodes: NodeStatus[] = []
  const peerIds: string[] = []
  for (let i = 0; i < count; i++) peerIds.push('12D3KooW' + hex(44))
  for (let i = 0; i < count; i++) {
    const site = sites[i % sites.length] as string
    const role = roles[Math.floor(i / sites.length) % roles.length] as string
    const r = rand()
    const stale = r < 0.04
    const behind = !stale && r < 0.12
    const crashed = rand() < 0.06
    const peers: string[] = []
    // each node talks to a few others at its site
    for (let j = 1; j <= 3; j++) {
      const k = (i + j * sites.length) % count
      if (k !== i) peers.push(peerIds[k] as string)
    }
    nodes.push({
      node: hex(64),
      peerId: peerIds[i] as string,
      name: `${role === 'pos' ? 'till' : role}-${String(i + 1).padStart(3, '0')}`,
      labels: { site, role, arch: i % 5 === 0 ? 'amd64' : 'arm64' },
      revision: { fleet: latest, devices: devicesHeads },
      applied: { fleet: behind ? previous : latest, devices: devicesHeads },
      workloads: {
        agent: {
          state: 'running',
          healthy: true,
          restarts: 0,
          version: '1.4.2',
          pid: 1000 + i,
          log: ['agent: started', 'agent: heartbeat ok']
        },
        ...(role === 'pos'
          ? {
              till: {
                state: crashed ? 'crashed' : 'running',
                healthy: !crashed,
                restarts: crashed ? 4 : 0,
                version: behind ? '2.0.0' : '2.1.0',
                pid: crashed ? undefined : 2000 + i,
                log: crashed
                  ? [
                      'till: listening on :8080',
                      'till: uncaught TypeError: cannot read property "sku"',
                      'supervisor: restart 4 in 30 s'
                    ]
                  : ['till: listening on :8080', 'till: GET /health 200']
              }
            }
          : {})
      },
      files: { ok: true, drifted: [] },
      peers,
      errors: [],
      artifacts:
        role === 'pos'
          ? {
              ['sha256:' + '5e'.repeat(32)]: behind
                ? {
                    state: 'fetching',
                    name: 'till-model',
                    size: 268_435_456,
                    held: 100_663_296,
                    peers: 3,
                    rate: 8_388_608,
                    eta: 20
                  }
                : {
                    state: 'complete',
                    name: 'till-model',
                    size: 268_435_456,
                    held: 268_435_456,
                    peers: 0,
                    rate: 0
                  }
            }
          : {},
      startedAt: now - 3_600_000 * (1 + (i % 30)),
      at: stale ? now - 600_000 - i * 1000 : now - Math.floor(rand() * 8000),
      receivedAt: stale ? now - 600_000 : now - 1000,
      stale
    })
  }
  const fleet = {
    defaults: {
      files: { '/etc/motd': { content: 'Welcome to the Rhizome fleet\n', mode: 420 } },
      workloads: { agent: { command: ['/opt/agent/bin/agent'], version: '1.4.2' } }
    },
    groups: {
      tills: {
        selector: { role: 'pos' },
        config: {
          workloads: {
            till: {
              command: ['node', '/opt/till/server.js'],
              version: '2.1.0',
              env: { PORT: '8080' },
              health: { http: 'http://127.0.0.1:8080/health', intervalMs: 2000 }
            }
          }
        }
      }
    },
    nodes: { 'till-001': { files: { '/etc/motd': { content: 'Till one: front desk\n' } } } }
  }
  return {
    connection: {
      state: 'connected',
      address: '/ip4/10.0.4.12/tcp/4002/ws/p2p/' + (peerIds[0] ?? ''),
      admission: 'viewer',
      fleet: 'acme-retail',
      fleetId: hex(64),
      selfPeerId: '12D3KooW' + hex(44),
      connectedTo: peerIds.slice(0, 1)
    },
    nodes,
    docs: [
      { id: 'fleet', value: fleet, heads: latest },
      { id: 'devices', value: { devices: {} }, heads: devicesHeads }
    ],
    keys: {}
  }
}

export class FakeFleetSource extends SnapshotSource implements FleetSource {
  constructor(count: number) {
    super(fakeFleet(count))
  }

  async connect(): Promise<void> {}
  async disconnect(): Promise<void> {
    this.set({ ...this.state, connection: { state: 'disconnected', connectedTo: [] } })
  }

  async unlockKey(_text: string, passphrase: string): Promise<SignerInfo> {
    if (passphrase === '') throw new Error("type the key file's passphrase")
    const signer: SignerInfo = {
      label: 'ops-laptop',
      publicKey: 'ab'.repeat(32),
      fingerprint: '3f2a-91c0-7be4-0d18-a6e2',
      role: 'operator',
      name: 'alice',
      scope: ['fleet', 'site/*']
    }
    this.set({ ...this.state, signer })
    return signer
  }

  async forgetKey(): Promise<void> {
    this.set({ ...this.state, signer: undefined })
  }

  async publish(docId: string, value: Record<string, unknown>): Promise<{ heads: string[] }> {
    const heads = [Math.random().toString(16).slice(2).padEnd(64, '0')]
    this.set({
      ...this.state,
      docs: this.state.docs.map(d => (d.id === docId ? { ...d, value, heads } : d))
    })
    return { heads }
  }

  async validate(): Promise<void> {}

  async history(docId: string): Promise<HistoryView> {
    const t = Date.now()
    const items: HistoryItem[] = [
      {
        hash: 'c0ffee1' + '0'.repeat(57),
        docId,
        signer: 'ab'.repeat(32),
        signerName: 'alice',
        signerRole: 'operator',
        time: t - 120_000,
        message: 'till 2.1.0 to every till',
        diff: [
          '- groups.tills.config.workloads.till.version = 2.0.0',
          '+ groups.tills.config.workloads.till.version = 2.1.0'
        ]
      },
      {
        hash: 'beef002' + '0'.repeat(57),
        docId,
        signer: 'cd'.repeat(32),
        signerName: 'root-admin',
        signerRole: 'admin',
        time: t - 86_400_000,
        message: 'front desk motd',
        diff: ['+ nodes.till-001.files./etc/motd.content = "Till one: front desk\\n"']
      },
      {
        hash: 'a11ce03' + '0'.repeat(57),
        docId,
        signer: 'cd'.repeat(32),
        signerName: 'root-admin',
        signerRole: 'admin',
        time: t - 3 * 86_400_000,
        message: null,
        diff: [
          '+ defaults = {"files":{"/etc/motd":{"content":"Welcome to the Rhizome fleet\\n","mode":420}},"workloads":{"agent":{"command":["/opt/agent/bin/agent"],"version":"1.4.2"}}}'
        ]
      }
    ]
    return { items, next: null }
  }
}
