// The demo fleet's workload: a tiny HTTP service that says which node runs it and which
// version of its config it was started with. Plain JavaScript so any Node can run it.
import { createServer } from 'node:http'

const port = Number(process.env.PORT ?? 9001)
const startedAt = new Date().toISOString()
const server = createServer((req, res) => {
  const body = `<!doctype html><meta charset="utf-8"><title>hello</title>
<h1>${process.env.GREETING ?? 'Hello'} from ${process.env.RHIZOME_NODE_NAME ?? 'a node'}</h1>
<p>workload version ${process.env.RHIZOME_WORKLOAD_VERSION || '(none)'}; started ${startedAt}</p>\n`
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
  res.end(body)
})
server.listen(port, '127.0.0.1', () => {
  console.log(`hello-service listening on http://127.0.0.1:${port}/`)
})
const stop = () => {
  server.close()
  server.closeAllConnections()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
