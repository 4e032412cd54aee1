/**
 * `rhizome dashboard`: print a URL that opens the browser dashboard on a daemon, with a fresh
 * one-time viewer token in it (the daemon issues it; the token admits one page load, for
 * VIEWER_TOKEN_TTL_MS). It opens nothing by itself: the URL may be for another machine's browser
 * (through an SSH tunnel, say).
 */
import type { Command } from 'commander'
import { daemonOption, say } from './cli-common.ts'
import { DaemonClient } from './daemon-client.ts'

async function cmdDashboard(opts: { daemon: string }): Promise<void> {
  const r = await new DaemonClient(opts.daemon).dashboard()
  say(r.url)
  say(
    `(one page load; the token expires at ${new Date(r.expiresAt).toLocaleTimeString()} if unused; run this again for another)`
  )
  if (r.joinsThrough === null) {
    // The page would open on its connect form with nothing to connect to.
    process.stderr.write(
      `rhizome: this daemon listens on no WebSocket address, and the dashboard joins the mesh over one: add one to "listen:" in its config (e.g. /ip4/127.0.0.1/tcp/4002/ws) and restart it, or enter another daemon's WebSocket address in the page\n`
    )
  }
}

export function registerDashboardCommand(program: Command, exitHelp: string): void {
  program
    .command('dashboard')
    .description(
      "print a URL for the browser dashboard with a new one-time viewer token (needs the daemon's API token)"
    )
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdDashboard)
}
