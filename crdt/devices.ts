/**
 * Enrolment. A device is enrolled when its public key appears in the trust statement's `nodes`
 * (root-signed) or in the `devices` document, which admin keys and operators scoped to
 * `devices` write (`rhizome enrol`): the Automerge change that adds the entry, signed by the
 * operator, is the voucher. Document shape:
 *
 * ```yaml
 * devices:
 *   <32-byte ed25519 public key, hex>:
 *     name: till-7
 *     labels: { site: berlin-3, role: pos }
 *     enrolledBy: <signer key hex>
 *     enrolledAt: 2026-11-23T21:00:00.000Z
 *     revoked: false        # true: revoked (`rhizome revoke-device`), for good
 * ```
 *
 * A revoked device is refused as a peer by every daemon that holds the entry, even one that has
 * it as a bootstrap peer, its sessions are closed and its status records ignored; a revoked key is
 * never enrolled again (give the device a new identity). Devices write no documents, so there is
 * nothing of theirs to cut.
 */
import type { Replica } from './replica.ts'
import type { TrustChain } from './trust.ts'

export const DEVICES_DOC = 'devices'

export interface DeviceEntry {
  name: string
  labels: Record<string, string>
  enrolledBy?: string
  enrolledAt?: string
  revoked?: boolean
}

export interface EnrolledDevice extends DeviceEntry {
  key: string
  source: 'trust' | 'devices'
}

function isEntry(v: unknown): v is DeviceEntry {
  const e = v as Partial<DeviceEntry>
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.name === 'string' &&
    typeof e.labels === 'object' &&
    e.labels !== null
  )
}

/** The public keys (hex) of revoked devices: refused as peers whatever else says. */
export function revokedDevices(devicesDoc: unknown): Set<string> {
  const out = new Set<string>()
  const devices = (devicesDoc as { devices?: Record<string, unknown> } | undefined)?.devices
  if (typeof devices !== 'object' || devices === null) return out
  for (const [key, v] of Object.entries(devices)) {
    if (/^[0-9a-f]{64}$/.test(key) && (v as Partial<DeviceEntry> | null)?.revoked === true) {
      out.add(key)
    }
  }
  return out
}

/** Every enrolled, unrevoked device, by public key hex. The `devices` document wins over the trust statement for a key in both. */
export function enrolledDevices(
  trust: TrustChain,
  devicesDoc: unknown
): Map<string, EnrolledDevice> {
  const out = new Map<string, EnrolledDevice>()
  for (const n of trust.latest.nodes) {
    out.set(n.key, { key: n.key, name: n.name, labels: { ...n.labels }, source: 'trust' })
  }
  const devices = (devicesDoc as { devices?: Record<string, unknown> } | undefined)?.devices
  if (typeof devices === 'object' && devices !== null) {
    for (const [key, v] of Object.entries(devices)) {
      if (!/^[0-9a-f]{64}$/.test(key) || !isEntry(v)) continue
      if (v.revoked === true) {
        out.delete(key)
        continue
      }
      const labels: Record<string, string> = {}
      // Labels come from a signed document, not from a type: keep scalar values, as text.
      for (const [k, l] of Object.entries(v.labels as Record<string, unknown>)) {
        if (typeof l === 'string' || typeof l === 'number' || typeof l === 'boolean') {
          labels[k] = String(l)
        }
      }
      out.set(key, {
        key,
        name: v.name,
        labels,
        enrolledBy: v.enrolledBy,
        enrolledAt: v.enrolledAt,
        source: 'devices'
      })
    }
  }
  return out
}

/** Every enrolled, unrevoked device of a replica's fleet: its trust chain and `devices` document. */
export async function enrolledDevicesOf(replica: Replica): Promise<Map<string, EnrolledDevice>> {
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  return enrolledDevices(replica.trust, devices)
}
