/**
 * A batch decoded from bytes is encoded again as those same bytes, without re-encoding: a batch
 * received from a peer is stored and relayed on, and neither pays for an encode.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { decodeBatch, encodeBatch } from '../crdt/signed-change.ts'
import { makeFleet } from './fixtures/fleet.ts'

test('a decoded batch encodes to the bytes it came from, not to a fresh copy', async () => {
  const fleet = await makeFleet({ replicas: 1, label: 'batch-bytes' })
  const batch = (await (
    await fleet.replicas[0]!.open('fleet')
  ).change(fleet.signer(0, fleet.admins[0]!), d => {
    d.x = 1
  }))!
  const bytes = encodeBatch(batch)
  assert.notEqual(encodeBatch(batch), bytes, 'a batch made here is encoded each time')
  const received = decodeBatch(bytes)
  assert.equal(encodeBatch(received), bytes, 'the received bytes themselves')
})
