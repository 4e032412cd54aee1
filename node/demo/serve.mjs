// A tiny HTTP service's life, shared by the demo's workload and the test workload: it listens on
// 127.0.0.1 at PORT (else `defaultPort`), answers every request with `respond`, and exits
// cleanly on SIGTERM or SIGINT (as the daemon stops a workload). Plain JavaScript so any Node
// can run it.
import { createServer } from 'node:http'

/**
 * @param {number} defaultPort
 * @param {(port: number) => string} listening the line printed once it listens
 * @param {() => { type: string, body: string }} respond
 */
export function serve(defaultPort, listening, respond) {
  const port = Number(process.env.PORT ?? defaultPort)
  const server = createServer((req, res) => {
    const { type, body } = respond()
    res.writeHead(200, { 'content-type': type })
    res.end(body)
  })
  server.listen(port, '127.0.0.1', () => {
    console.log(listening(port))
  })
  const stop = () => {
    server.close()
    server.closeAllConnections()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
