// The demo fleet's workload: a tiny HTTP service that says which node runs it and which
// version of its config it was started with. Plain JavaScript so any Node can run it.
import { serve } from './serve.mjs'

const startedAt = new Date().toISOString()
serve(
  9001,
  port => `hello-service listening on http://127.0.0.1:${port}/`,
  () => ({
    type: 'text/html; charset=utf-8',
    body: `<!doctype html><meta charset="utf-8"><title>hello</title>
<h1>${process.env.GREETING ?? 'Hello'} from ${process.env.RHIZOME_NODE_NAME ?? 'a node'}</h1>
<p>workload version ${process.env.RHIZOME_WORKLOAD_VERSION || '(none)'}; started ${startedAt}</p>\n`
  })
)
